"""PNG figures of reconstructions and training (matplotlib, Agg; written atomically).

matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import io
from typing import Mapping, Optional

import numpy as np

from ptycho.atomic import PathLike, atomic_write
from ptycho.physics.losses import LossSettings
from ptycho.training import History


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: PathLike) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    with atomic_write(path, "wb") as f:
        f.write(buf.getvalue())


def _panel(ax, image, title, cmap):
    im = ax.imshow(image, cmap=cmap)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def save_object_figure(path: PathLike, obj: np.ndarray, title: str = "reconstruction",
                       mask: Optional[np.ndarray] = None) -> None:
    """Amplitude and phase of a complex object side by side (``mask``: pixels to show)."""
    plt = _pyplot()
    amp, ph = np.abs(obj), np.angle(obj)
    if mask is not None:
        amp = np.where(mask, amp, np.nan)
        ph = np.where(mask, ph, np.nan)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    _panel(axes[0], amp, f"{title}: amplitude", "gray")
    _panel(axes[1], ph, f"{title}: phase (rad)", "twilight")
    _save(fig, path)


def save_comparison_figure(path: PathLike, obj, truth: np.ndarray,
                           mask: Optional[np.ndarray] = None) -> None:
    """Reconstructions (rows) against the ground truth (last row), amplitude and phase.

    ``obj``: one (H, W) object, or a mapping label -> object (e.g. the network's and the
    refined one). Each is shown as the metrics compare it: amplitude times its least-squares
    scale to the truth, phase less its mean offset from the truth, both over ``mask``, so
    that the global factors no measurement can fix do not hide the likeness.
    """
    from ptycho.metrics import align_amplitude, align_phase

    objects = dict(obj) if isinstance(obj, Mapping) else {"reconstruction": obj}
    plt = _pyplot()
    rows = len(objects) + 1
    fig, axes = plt.subplots(rows, 2, figsize=(10, 4.5 * rows), squeeze=False)
    t_amp, t_ph = np.abs(truth), np.angle(truth)
    shown = [(name, align_amplitude(np.abs(o), t_amp, mask), align_phase(np.angle(o), t_ph,
                                                                          mask=mask))
             for name, o in objects.items()] + [("ground truth", t_amp, t_ph)]
    for row, (name, amp, ph) in enumerate(shown):
        if mask is not None:
            amp = np.where(mask, amp, np.nan)
            ph = np.where(mask, ph, np.nan)
        _panel(axes[row, 0], amp, f"{name}: amplitude", "gray")
        _panel(axes[row, 1], ph, f"{name}: phase (rad)", "twilight")
    _save(fig, path)


def save_loss_figure(path: PathLike, history: History, settings: LossSettings) -> None:
    """Training (and validation) loss per epoch, log scale when positive.

    Draws the total and each term whose weight in ``settings`` is not 0 (a term with weight
    0 is computed but is not part of the loss, so it is left out), labelled with its weight.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [r.epoch for r in history.epochs]
    ax.plot(epochs, history.losses("total"), marker="o", label="train total")
    for key, weight in loss_term_weights(settings).items():
        if weight != 0:
            ax.plot(epochs, history.losses(key), marker="o",
                    label=f"train {key} (weight {weight:g})")
    val = history.losses("total", split="val")
    if val:
        ax.plot(epochs[:len(val)], val, marker="s", label="validation total")
    all_values = [v for line in ax.get_lines() for v in line.get_ydata()]
    if all_values and min(all_values) > 0:
        ax.set_yscale("log")
    ax.xaxis.get_major_locator().set_params(integer=True)   # epochs are whole numbers
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, path)


def loss_term_weights(settings: LossSettings) -> dict[str, float]:
    """The weight of each loss term, in the order the figure draws them.

    >>> loss_term_weights(LossSettings(nll_weight=1.0, mae_weight=0.0, realspace_weight=10.0))
    {'nll': 1.0, 'mae': 0.0, 'realspace': 10.0}
    """
    return {"nll": settings.nll_weight, "mae": settings.mae_weight,
            "realspace": settings.realspace_weight}

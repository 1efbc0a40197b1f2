"""Tests of ptycho.figures: what the figures draw (captured before they are written)."""

from __future__ import annotations

import pytest

from ptycho import figures
from ptycho.physics.losses import LossSettings
from ptycho.training import EpochRecord, History


def _history(val: bool = True) -> History:
    records = []
    for e in range(3):
        loss = {"nll": 10.0 - e, "mae": 0.5 - 0.1 * e, "realspace": 0.02, "total": 10.0 - e}
        records.append(EpochRecord(epoch=e, learning_rate=1e-3, loss=loss,
                                   val_loss=dict(loss) if val else None))
    return History(epochs=records)


@pytest.fixture
def drawn(monkeypatch):
    """The labels of the lines of the last figure saved, instead of writing a PNG."""
    got = {}

    def capture(fig, path):
        got["labels"] = [line.get_label() for line in fig.axes[0].get_lines()]
        got["path"] = path
        figures._pyplot().close(fig)

    monkeypatch.setattr(figures, "_save", capture)
    return got


def test_loss_figure_leaves_out_terms_whose_weight_is_zero(drawn):
    figures.save_loss_figure("loss.png", _history(), LossSettings(nll_weight=1.0, mae_weight=0.0))
    assert drawn["labels"] == ["train total", "train nll (weight 1)", "validation total"]
    figures.save_loss_figure("loss.png", _history(val=False),
                             LossSettings(nll_weight=0.0, mae_weight=2.0, realspace_weight=1000.0))
    assert drawn["labels"] == ["train total", "train mae (weight 2)",
                               "train realspace (weight 1000)"]


def test_write_outputs_needs_the_loss_settings_to_draw_a_history(tmp_path):
    import numpy as np

    from ptycho.workflows.cdi import write_outputs
    from ptycho.workflows.reconstruct import Reconstruction

    recon = Reconstruction(obj=np.ones((16, 16), np.complex64), coverage=np.ones((16, 16)),
                           positions=np.zeros((1, 1, 2)), patches=None, seconds=0.0, n_patterns=1)
    with pytest.raises(ValueError, match="loss_settings"):
        write_outputs(str(tmp_path), recon, _history())
    paths = write_outputs(str(tmp_path), recon, _history(), loss_settings=LossSettings())
    assert paths["loss_figure"].endswith("loss.png")

"""Loss functions of the PINN in float64 numpy (the reference).

All losses are means over every element. Amplitudes are square roots of photon counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def masked_mean(values: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean of ``values`` over the pixels where ``mask`` (broadcast to their shape) is nonzero.

    ``mask`` None: every pixel. Masked pixels do not reach the sum even if they hold NaN.

    >>> masked_mean(np.array([[1.0, np.nan], [3.0, 5.0]]), np.array([[1, 0], [1, 1]]))
    3.0
    """
    values = np.asarray(values)
    if mask is None:
        return float(np.mean(values))
    keep = np.broadcast_to(np.asarray(mask) != 0, values.shape)
    return float(np.sum(np.where(keep, values, 0.0)) / np.count_nonzero(keep))


def poisson_nll(pred_amplitude: np.ndarray, observed_amplitude: np.ndarray, eps: float,
                mask: np.ndarray | None = None) -> float:
    """Poisson negative log-likelihood of the observed counts given the predicted intensity.

    With ``I = pred**2`` and ``k = observed**2`` (photon counts) the per-pixel NLL is
    ``I - k log(I + eps) + log(k!)``. We report it relative to the saturated model
    (the same expression at ``I = k``), so that the loss is >= 0 up to O(eps) and 0 at a
    perfect prediction; the shift is a constant of the data, so gradients are the NLL's.
    The mean runs over the measured pixels (``mask`` nonzero; all when None).

    >>> float(poisson_nll(np.ones(4), np.ones(4), 1e-6)) == 0.0
    True
    """
    i = np.asarray(pred_amplitude, dtype=np.float64) ** 2
    k = np.asarray(observed_amplitude, dtype=np.float64) ** 2
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        per_pixel = i - k * np.log(i + eps) - (k - k * np.log(k + eps))
    return masked_mean(per_pixel, mask)


def mae(pred_amplitude: np.ndarray, observed_amplitude: np.ndarray,
        mask: np.ndarray | None = None) -> float:
    """Mean absolute error of amplitudes (sqrt counts) over the measured pixels."""
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(np.asarray(pred_amplitude, np.float64)
                      - np.asarray(observed_amplitude, np.float64))
    return masked_mean(diff, mask)


def realspace_consistency(patches: np.ndarray, constrained: np.ndarray) -> float:
    """Mean ``|p - p'|^2`` between the network's patches and their overlap-constrained version."""
    d = np.asarray(patches, np.complex128) - np.asarray(constrained, np.complex128)
    return float(np.mean(np.abs(d) ** 2))


@dataclass(frozen=True)
class LossSettings:
    """Weights and epsilon of the total loss, handed to the backends as plain numbers.

    ``total = nll_weight * poisson_nll + mae_weight * mae + realspace_weight * realspace``.
    """

    nll_weight: float = 1.0
    mae_weight: float = 0.0
    realspace_weight: float = 0.0
    epsilon: float = 1e-6

    def weighted_total(self, terms):
        """``nll_weight * nll + mae_weight * mae + realspace_weight * realspace`` of ``terms``
        (floats or framework scalars: the one place the weighting is written)."""
        return (self.nll_weight * terms["nll"] + self.mae_weight * terms["mae"]
                + self.realspace_weight * terms["realspace"])

    @classmethod
    def from_config(cls, training) -> "LossSettings":
        """From a :class:`ptycho.config.TrainingConfig`."""
        return cls(float(training.nll_weight), float(training.mae_weight),
                   float(training.realspace_weight), float(training.loss_epsilon))


def total_loss(pred_amplitude, observed_amplitude, patches, constrained,
               settings: LossSettings, mask: np.ndarray | None = None) -> dict[str, float]:
    """Every loss term and their weighted sum: keys ``nll``, ``mae``, ``realspace``, ``total``.

    ``mask``: the measured detector pixels (see :class:`ptycho.batch.Batch`); the pixel
    losses average over those only.
    """
    terms = {
        "nll": poisson_nll(pred_amplitude, observed_amplitude, settings.epsilon, mask),
        "mae": mae(pred_amplitude, observed_amplitude, mask),
        "realspace": realspace_consistency(patches, constrained),
    }
    terms["total"] = settings.weighted_total(terms)
    return terms

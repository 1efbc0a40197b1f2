"""The pty-chi adaptor (ptycho.iterative.pty_chi): our conventions handed to pty-chi.

The numpy half (intensities, probe scale, position origin) runs everywhere; the rest needs
pty-chi and is skipped with a reason without it (``pip install 'ptycho-pinn[reference]'``).
The forward-model tests are the delta/known-object checks: given the true object and our
probe, pty-chi's own forward model must predict exactly the counts our simulation made.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from ptycho.iterative import pty_chi as P
from ptycho.simulate import diffraction_intensity, simulate_dataset


def test_intensities_are_counts_and_the_probe_is_scaled_to_the_data():
    amp = np.random.default_rng(0).random((5, 8, 8)).astype(np.float32) * 30
    counts = P.intensities_for_ptychi(amp)
    np.testing.assert_allclose(counts, amp.astype(np.float64) ** 2, rtol=1e-6)
    probe = np.exp(1j * np.linspace(0, 3, 64)).reshape(8, 8) * np.hanning(8)[:, None]
    p, scale = P.probe_for_ptychi(probe, amp)
    assert p.shape == (1, 1, 8, 8) and p.dtype == np.complex64
    # pty-chi's unnormalised FFT of the probe alone (object of ones) gives the mean counts
    predicted = np.sum(np.abs(np.fft.fft2(p[0, 0].astype(np.complex128))) ** 2)
    assert predicted == pytest.approx(counts.sum(axis=(1, 2)).mean(), rel=1e-5)
    np.testing.assert_allclose(p[0, 0], probe * scale / 8, rtol=1e-6)
    with pytest.raises(ValueError, match="probe is zero"):
        P.probe_for_ptychi(np.zeros((8, 8)), amp)
    with pytest.raises(ValueError, match="no counts"):
        P.probe_for_ptychi(probe, np.zeros_like(amp))


def test_position_origin_maps_our_patch_centre_onto_ptychis():
    # ours: patch pixel N // 2 on the position; pty-chi: the centre (N - 1) / 2 on pos + origin
    for n in (32, 33, 64):
        origin = P.position_origin(n, margin=0)
        top_left_ours = 10 - n // 2
        top_left_ptychi = 10 + origin - (n - 1) / 2
        assert top_left_ptychi == top_left_ours
    assert P.position_origin(64) == P.MARGIN - 0.5


def test_seconds_to_reach_final_needs_the_curve_to_stay_close():
    curve = [{"seconds": s, "amplitude_ssim": a, "phase_ssim": 0.9}
             for s, a in ((1.0, 0.8), (2.0, 0.9), (3.0, 0.7), (4.0, 0.895), (5.0, 0.9))]
    assert P.seconds_to_reach_final(curve) == 4.0          # it left the band at 3 s
    assert P.seconds_to_reach_final([{"seconds": 1.0}]) is None
    assert P.seconds_to_reach_final([]) is None


# -- with pty-chi ------------------------------------------------------------------------------

def _ptychi():
    pytest.importorskip("ptychi", reason="pty-chi is not installed: pip install "
                                         "'ptycho-pinn[reference]'")
    return P.import_ptychi()


def _predicted_counts(raw, truth, probe_scale, origin_shift=(0.0, 0.0), swap_xy=False):
    """pty-chi's forward model on the true object: predicted counts in our (centred) layout."""
    api, task_cls = _ptychi()
    import torch

    n = raw.N
    h, w = truth.shape
    m = P.MARGIN
    options = P._options(api, "lsqml", 16, 0, "cpu", False)
    origin = P.position_origin(n)
    options.object_options.position_origin_coords = np.array(
        [origin + origin_shift[0], origin + origin_shift[1]])
    obj = np.ones((1, h + 2 * m, w + 2 * m), np.complex64)
    obj[0, m:m + h, m:m + w] = truth
    probe = (raw.probe * probe_scale / n).astype(np.complex64)[None, None]
    x, y = (raw.ycoords, raw.xcoords) if swap_xy else (raw.xcoords, raw.ycoords)
    with P._restore_global_state():
        task = task_cls(options, diffraction_data=P.intensities_for_ptychi(raw.diffraction),
                        object_data=obj, probe_data=probe, probe_position_x_px=x.copy(),
                        probe_position_y_px=y.copy())
        with torch.no_grad():
            y_pred = task.reconstructor.forward_model.forward(torch.arange(raw.n_patterns))
        return np.fft.fftshift(y_pred.cpu().numpy(), axes=(-2, -1))


@pytest.mark.slow      # importing pty-chi and its first task take ~10-30 s (torch._dynamo, sklearn)
@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad:UserWarning")
def test_ptychis_forward_model_reproduces_our_counts_on_an_integer_grid():
    # a non-square object and scan, so that swapping x and y or shifting by a pixel shows
    raw, truth = simulate_dataset(20, 32, object="grf", probe="defocus", step=(5.0, 3.0),
                                  nphotons=1e6, seed=3, noise=False, object_shape=(60, 72))
    assert np.array_equal(raw.xcoords, np.round(raw.xcoords))
    counts = raw.diffraction.astype(np.float64) ** 2
    expected = diffraction_intensity(truth, raw.probe, np.stack([raw.xcoords, raw.ycoords], 1))
    true_scale = math.sqrt(counts.sum() / expected.sum())    # the simulation's photon scale
    pred = _predicted_counts(raw, truth, true_scale)
    peak = counts.max()
    assert np.abs(pred - counts).max() < 2e-5 * peak
    for wrong in ({"origin_shift": (0.0, 1.0)}, {"origin_shift": (1.0, 0.0)},
                  {"origin_shift": (0.5, 0.5)}, {"swap_xy": True}):
        wrong_counts = _predicted_counts(raw, truth, true_scale, **wrong)
        assert np.abs(wrong_counts - counts).max() > 1e-2 * peak


@pytest.mark.slow
def test_reconstruct_ptychi_recovers_a_known_object_and_restores_torch_state():
    _ptychi()
    import random

    import torch

    from ptycho.metrics import compare_objects, metric_region
    from ptycho.stitching import scan_coverage

    raw, truth = simulate_dataset(49, 32, object="grf", probe="defocus", step=4.0,
                                  nphotons=1e9, seed=5)
    device, dtype = torch.get_default_device(), torch.get_default_dtype()
    torch_rng = torch.random.get_rng_state()
    np_rng, py_rng = np.random.get_state(), random.getstate()
    result = P.reconstruct_ptychi(raw, engine="rpie", epochs=12, batch_size=8, truth=truth,
                                  checkpoint_every=4)
    assert result.obj.shape == truth.shape and result.obj.dtype == np.complex64
    assert [c["epoch"] for c in result.curve] == [4, 8, 12]
    assert result.curve[-1]["seconds"] == pytest.approx(result.seconds)
    region = metric_region(scan_coverage(raw.probe, np.stack([raw.xcoords, raw.ycoords], 1),
                                         truth.shape))
    m = compare_objects(result.obj, truth, region=region)
    assert m["amplitude"]["ssim"] > 0.9 and m["phase"]["ssim"] > 0.9
    assert m["amplitude"]["ssim"] == pytest.approx(result.curve[-1]["amplitude_ssim"])
    assert result.seconds_to_final is not None and result.seconds_to_final <= result.seconds
    # pty-chi set torch's default device and dtype and seeded every RNG; all restored
    assert torch.get_default_device() == device and torch.get_default_dtype() == dtype
    assert torch.equal(torch.random.get_rng_state(), torch_rng)
    assert np.array_equal(np.random.get_state()[1], np_rng[1]) and random.getstate() == py_rng
    # a torchvision stand-in, if one was needed to import pty-chi, is gone again
    tv = sys.modules.get("torchvision")
    assert tv is None or getattr(tv, "__file__", None) is not None


def test_reconstruct_ptychi_rejects_bad_arguments():
    raw, truth = simulate_dataset(9, 16, nphotons=1e4, seed=0)
    with pytest.raises(ValueError, match="unknown pty-chi engine 'pie3'"):
        P.reconstruct_ptychi(raw, engine="pie3")
    with pytest.raises(ValueError, match="epochs must be an int >= 1"):
        P.reconstruct_ptychi(raw, epochs=0)
    with pytest.raises(ValueError, match="truth has shape"):
        P.reconstruct_ptychi(raw, truth=truth[:-1])
    with pytest.raises(ValueError, match="device"):
        P.reconstruct_ptychi(raw, device="tpu")

"""bfloat16 inference holds its stated bound against float32, in each backend.

``predict(precision="bfloat16")`` runs the convolution stack in bfloat16 (about twice the
throughput on a CPU with AVX512-BF16, see ``benchmarks/README.md``); the bound it keeps
against float32 with the same weights is the tolerance table's ``inference.bf16_vs_fp32``
(relative to the largest |patch|), and this test holds it on small networks of both
gridsizes, with a bounded and an unbounded amplitude activation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from parity.compare import compare_arrays
from parity.tolerances import tolerance
from ptycho.config import ModelConfig, TrainingConfig
from ptycho.data.grouping import group_data_for_training
from ptycho.simulate import simulate_dataset
from ptycho.weights import init_weights

BACKENDS = [pytest.param("tensorflow", marks=pytest.mark.tensorflow),
            pytest.param("torch", marks=pytest.mark.torch)]


@pytest.fixture(scope="module", params=[(1, "sigmoid"), (2, "swish")],
                ids=["gridsize1-sigmoid", "gridsize2-swish"])
def case(request):
    gridsize, activation = request.param
    cfg = ModelConfig(N=32, gridsize=gridsize, base_filters=8, n_filters_scale=1,
                      amp_activation=activation, match_intensity=activation == "sigmoid")
    tc = TrainingConfig(model=cfg, nphotons=1e6)
    raw, _ = simulate_dataset(24, 32, nphotons=1e6, seed=gridsize, scan="jitter")
    data = group_data_for_training(raw, tc)
    weights = init_weights(cfg, gridsize, data.probe, math.log(data.intensity_scale))
    return cfg, weights, data.diffraction


@pytest.mark.parametrize("backend", BACKENDS)
def test_bfloat16_predict_is_within_its_tolerance_of_float32(backend, case):
    from backends import get_backend

    cfg, weights, diffraction = case
    model = get_backend(backend).build_model(cfg, weights)
    f32 = model.predict(diffraction, batch_size=8)
    b16 = model.predict(diffraction, batch_size=8, precision="bfloat16")
    assert b16.dtype == np.complex64 and b16.shape == f32.shape
    tol = tolerance("inference.bf16_vs_fp32")
    diff = compare_arrays(b16, f32, tol, name=f"{backend} bf16 vs fp32")
    assert diff.ok, diff
    err = np.abs(b16 - f32).max() / np.abs(f32).max()
    assert err > 1e-5, "bfloat16 gave float32's numbers: the conv stack did not run in bfloat16"

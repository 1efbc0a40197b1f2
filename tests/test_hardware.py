"""bfloat16 on a CPU without bfloat16 arithmetic: read from the CPU's flags, said once asked.

Measured on an AVX2 CPU, bfloat16 ran 7-9x slower than float32 (``ptycho.hardware``); the
library still does what was asked, and warns where training and inference are asked for it.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from ptycho import hardware
from ptycho.config import TrainingConfig
from ptycho.errors import PerformanceWarning
from ptycho.training import fit
from ptycho.workflows.model import PtychoModel

AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu\n"
SAPPHIRE_RAPIDS = "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
NEOVERSE_V1 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    """Point the library at a cpuinfo file holding the given text."""
    def write(text: str) -> None:
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        monkeypatch.setattr(hardware, "CPUINFO", str(path))
    return write


def test_flags_come_from_the_first_processor_on_x86_and_arm():
    assert hardware.cpu_flags(AVX2.splitlines()) == {"fpu", "sse2", "avx", "avx2", "fma"}
    assert "bf16" in hardware.cpu_flags(NEOVERSE_V1.splitlines())
    assert hardware.cpu_flags(["processor\t: 0", "model name\t: something"]) is None


@pytest.mark.parametrize("text, emulated", [(AVX2, True), (SAPPHIRE_RAPIDS, False),
                                            (NEOVERSE_V1, False)],
                         ids=["avx2", "amx", "arm-bf16"])
def test_bfloat16_is_emulated_only_without_any_bfloat16_flag(text, emulated):
    assert hardware.bfloat16_emulated(hardware.cpu_flags(text.splitlines())) is emulated


def test_unknown_flags_are_not_called_emulated(monkeypatch):
    monkeypatch.setattr(hardware, "CPUINFO", "/nonexistent/cpuinfo")
    assert hardware.cpu_flags() is None and not hardware.bfloat16_emulated(None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hardware.warn_if_bfloat16_emulated("bfloat16", "training")


def test_the_warning_names_the_step_the_flags_and_the_way_out(cpuinfo):
    cpuinfo(AVX2)
    with pytest.warns(PerformanceWarning) as caught:
        hardware.warn_if_bfloat16_emulated("bfloat16", "inference")
    message = str(caught[0].message)
    assert "for inference" in message and "avx512_bf16" in message
    assert "precision='float32'" in message


@pytest.mark.parametrize("text, precision", [(AVX2, "float32"), (SAPPHIRE_RAPIDS, "bfloat16"),
                                             (NEOVERSE_V1, "bfloat16")])
def test_no_warning_for_float32_or_a_cpu_with_bfloat16(cpuinfo, text, precision):
    cpuinfo(text)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hardware.warn_if_bfloat16_emulated(precision, "training")


class _Model:
    """Just enough of a backend model for ``fit`` and ``PtychoModel.predict``."""

    def __init__(self):
        self.steps = 0
        self.precisions: list[str] = []

    def configure_training(self, config):
        pass

    def set_learning_rate(self, lr):
        pass

    def get_weights(self):
        return {"w": np.array(self.steps)}

    def set_weights(self, weights):
        self.steps = int(weights["w"])

    def train_step(self, batch):
        self.steps += 1
        return {"nll": 1.0, "mae": 1.0, "realspace": 0.0, "total": 1.0}

    def predict(self, diffraction, batch_size, precision):
        self.precisions.append(precision)
        return np.zeros(diffraction.shape, np.complex64)


class _Data:
    def __len__(self) -> int:
        return 4

    def batch(self, idx):
        return np.asarray(idx)


def test_training_and_inference_in_bfloat16_warn_and_still_run(cpuinfo):
    cpuinfo(AVX2)
    model, config = _Model(), TrainingConfig(nepochs=1, batch_size=2, precision="bfloat16")
    with pytest.warns(PerformanceWarning, match="for training"):
        history = fit(model, _Data(), config)
    assert model.steps == 2 and len(history.epochs) == 1
    wrapper = PtychoModel(model, config)
    with pytest.warns(PerformanceWarning, match="for inference"):
        out = wrapper.predict(np.ones((2, 1, 8, 8), np.float32), batch_size=2,
                              precision="bfloat16")
    assert out.shape == (2, 1, 8, 8) and model.precisions == ["bfloat16"]

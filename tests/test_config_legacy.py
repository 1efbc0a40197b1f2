"""The legacy params-dictionary bridge: one key table, the None policy, identity round trips."""

from __future__ import annotations

import dataclasses
import doctest
import pathlib
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ptycho.config.legacy as legacy
import ptycho.params as params
from ptycho.config import (LEGACY_KEYS, InferenceConfig, ModelConfig, TrainingConfig,
                           config_from_legacy, new_legacy_dict, update_legacy_dict)
from backends.registry import aliases
from ptycho.config.schema import (AMP_ACTIVATIONS, LR_SCHEDULES, POSITIVE_AMP_ACTIVATIONS,
                                  PRECISIONS)
from ptycho.errors import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[1]


def _floats(lo, hi, lo_open=False):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, exclude_min=lo_open)


_names = st.one_of(st.none(), st.text(min_size=1, max_size=8))


@st.composite
def model_configs(draw):
    activation = draw(st.sampled_from(AMP_ACTIVATIONS))
    probe_trainable = draw(st.booleans())
    return ModelConfig(
        N=draw(st.integers(2, 64)) * 8, gridsize=draw(st.integers(1, 4)),
        n_filters_scale=draw(st.integers(1, 16)), base_filters=draw(st.integers(1, 256)),
        amp_activation=activation, per_pattern_network=draw(st.booleans()),
        central_decoder=draw(st.booleans()),
        match_intensity=activation in POSITIVE_AMP_ACTIVATIONS and draw(st.booleans()),
        object_big=draw(st.booleans()), probe_big=draw(st.booleans()),
        probe_mask=draw(st.booleans()), pad_object=draw(st.booleans()),
        probe_scale=draw(_floats(0.0, 1e6, lo_open=True)),
        probe_trainable=probe_trainable, intensity_scale_trainable=draw(st.booleans()),
        backprop_estimate=not probe_trainable and draw(st.booleans()))


@st.composite
def training_configs(draw):
    model = draw(model_configs())
    lr = draw(_floats(0.0, 10.0, lo_open=True))
    nll = draw(_floats(0.0, 1e6))
    mae = draw(_floats(0.0, 1e6)) if nll > 0 else draw(_floats(1e-3, 1e6))
    nepochs = draw(st.integers(1, 1 << 20))
    return TrainingConfig(
        model=model, batch_size=draw(st.integers(1, 1 << 16)),
        nepochs=nepochs, average_epochs=draw(st.integers(0, nepochs)), learning_rate=lr,
        lr_schedule=draw(st.sampled_from(LR_SCHEDULES)),
        lr_decay_rate=draw(_floats(0.0, 1.0, lo_open=True)), lr_min=draw(_floats(0.0, lr)),
        early_stopping_patience=draw(st.one_of(st.none(), st.integers(1, 1000))),
        early_stopping_min_delta=draw(_floats(0.0, 1e30)),
        adam_beta1=draw(_floats(0.0, 0.999)), adam_beta2=draw(_floats(0.0, 0.9999)),
        adam_epsilon=draw(_floats(0.0, 1.0, lo_open=True)), nll_weight=nll, mae_weight=mae,
        realspace_weight=draw(_floats(0.0, 1e6)),
        loss_epsilon=draw(_floats(0.0, 1.0, lo_open=True)),
        nphotons=draw(_floats(0.0, 1e15, lo_open=True)),
        n_groups=draw(st.one_of(st.none(), st.integers(1, 10 ** 6))),
        neighbor_count=draw(st.integers(model.n_channels, 1024)),
        seed=draw(st.integers(0, 2 ** 32 - 1)), train_data_file=draw(_names),
        test_data_file=draw(_names), output_dir=draw(_names),
        backend=draw(st.sampled_from((None,) + tuple(aliases()))),
        tracking=draw(st.sampled_from((None, "mlflow"))),
        precision=draw(st.sampled_from(PRECISIONS)))


@st.composite
def inference_configs(draw):
    return InferenceConfig(
        model=draw(model_configs()), model_path=draw(_names), test_data_file=draw(_names),
        batch_size=draw(st.integers(1, 1 << 16)), precision=draw(st.sampled_from(PRECISIONS)),
        nphotons=draw(_floats(0.0, 1e15, lo_open=True)), seed=draw(st.integers(0, 2 ** 32 - 1)),
        output_dir=draw(_names), backend=draw(st.sampled_from((None,) + tuple(aliases()))))


top_configs = st.one_of(training_configs(), inference_configs())


def test_doctests():
    for module in (legacy, params):
        saved = dict(params.cfg)
        try:
            result = doctest.testmod(module)
        finally:
            params.cfg.clear()
            params.cfg.update(saved)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_table_covers_every_field_once():
    fields = set()
    for cls in (ModelConfig, TrainingConfig, InferenceConfig):
        fields |= {f.name for f in dataclasses.fields(cls) if f.name != "model"}
    assert set(LEGACY_KEYS) == fields
    assert len(set(LEGACY_KEYS.values())) == len(LEGACY_KEYS)  # no two fields share a key
    with pytest.raises(TypeError):
        LEGACY_KEYS["N"] = "n"  # read-only


@pytest.mark.parametrize("field, key", [
    ("N", "N"), ("gridsize", "gridsize"), ("n_filters_scale", "n_filters_scale"),
    ("amp_activation", "amp_activation"), ("object_big", "object.big"),
    ("probe_big", "probe.big"), ("probe_mask", "probe.mask"), ("pad_object", "pad_object"),
    ("probe_scale", "probe_scale"), ("probe_trainable", "probe.trainable"),
    ("intensity_scale_trainable", "intensity_scale.trainable"), ("batch_size", "batch_size"),
    ("nepochs", "nepochs"), ("nll_weight", "nll_weight"), ("mae_weight", "mae_weight"),
    ("realspace_weight", "realspace_weight"), ("nphotons", "nphotons"),
    ("n_groups", "n_groups"), ("neighbor_count", "K"), ("output_dir", "output_prefix"),
    ("train_data_file", "train_data_file_path"), ("test_data_file", "test_data_file_path"),
])
def test_documented_key_names(field, key):
    assert LEGACY_KEYS[field] == key


def test_update_writes_every_mapped_key_as_plain_values():
    cfg = TrainingConfig(model=ModelConfig(N=32, gridsize=2, probe_mask=True), n_groups=5,
                         early_stopping_patience=3, train_data_file="tr.npz",
                         test_data_file="te.npz", output_dir="out", backend="torch",
                         tracking="mlflow")
    d = {}
    out = update_legacy_dict(d, cfg)
    assert out is d
    expected = {LEGACY_KEYS[f] for f in LEGACY_KEYS} - {"model_path"}
    assert set(d) == expected
    assert d["object.big"] is True and d["probe.mask"] is True and d["K"] == 4
    assert d["output_prefix"] == "out" and d["N"] == 32 and d["n_groups"] == 5
    assert all(type(v) in (bool, int, float, str) for v in d.values())


def test_none_removes_the_key_so_stale_values_never_leak():
    d = update_legacy_dict({}, TrainingConfig(output_dir="a", n_groups=10))
    assert d["output_prefix"] == "a" and d["n_groups"] == 10
    update_legacy_dict(d, TrainingConfig(output_dir=None))
    assert "output_prefix" not in d and "n_groups" not in d
    assert config_from_legacy(d).output_dir is None


def test_owned_keys_of_the_other_class_are_removed_and_foreign_keys_kept():
    d = {"my_own_key": [1, 2], "object.big": "stale"}
    update_legacy_dict(d, TrainingConfig(nepochs=9))
    assert d["nepochs"] == 9 and d["object.big"] is True and d["my_own_key"] == [1, 2]
    update_legacy_dict(d, InferenceConfig(model_path="m.zip", batch_size=3))
    assert "nepochs" not in d and "K" not in d and "learning_rate" not in d
    assert d["model_path"] == "m.zip" and d["batch_size"] == 3 and d["my_own_key"] == [1, 2]
    update_legacy_dict(d, TrainingConfig())
    assert "model_path" not in d and d["precision"] == "float32"   # shared: training's now


@given(cfg=top_configs)
def test_round_trip_config_legacy_config_is_identity(cfg):
    assert config_from_legacy(new_legacy_dict(cfg), type(cfg)) == cfg


@given(first=top_configs, second=top_configs)
def test_reused_dict_reflects_only_the_last_config(first, second):
    d = update_legacy_dict({"foreign": 1}, first)
    update_legacy_dict(d, second)
    assert config_from_legacy(d, type(second)) == second
    assert d == dict(new_legacy_dict(second), foreign=1)


def test_numpy_scalars_from_old_code_are_accepted():
    d = {"N": np.int64(32), "probe_scale": np.float32(2.0), "object.big": np.bool_(False),
         "nphotons": np.float64(1e6), "K": np.int32(6)}
    cfg = config_from_legacy(d)
    assert cfg.model.N == 32 and type(cfg.model.N) is int
    assert cfg.model.object_big is False and cfg.nphotons == 1e6 and cfg.neighbor_count == 6


@pytest.mark.parametrize("d, msg", [
    ({"K": "four"}, r"legacy key 'K' \(neighbor_count\): expected an int, got str 'four'"),
    ({"object.big": "yes"}, r"legacy key 'object.big' \(object_big\): expected a bool, "
                            r"got str 'yes'"),
    ({"N": 30}, r"legacy key 'N' \(N\): ModelConfig.N must be a multiple of 8, got 30"),
    ({"N": 64.0}, r"legacy key 'N' \(N\): expected an int, got float 64.0"),
    ({"amp_activation": "tanh"}, r"legacy key 'amp_activation' \(amp_activation\): "
                                 r"ModelConfig.amp_activation must be one of"),
    ({"nll_weight": 0.0, "mae_weight": 0}, r"legacy key 'nll_weight' \(nll_weight\), "
                                           r"'mae_weight' \(mae_weight\): TrainingConfig: at "
                                           r"least one"),
    ({"output_prefix": 3}, r"legacy key 'output_prefix' \(output_dir\): expected a string, "
                           r"got int 3"),
    ({"nphotons": None}, r"legacy key 'nphotons' \(nphotons\): expected float, got None"),
    ({"gridsize": 3, "K": 4}, r"legacy key 'K' \(neighbor_count\): TrainingConfig."
                              r"neighbor_count must be >= gridsize\*\*2 = 9"),
])
def test_garbage_legacy_values_name_the_legacy_key(d, msg):
    with pytest.raises(ConfigError, match=msg):
        config_from_legacy(d)


def test_unowned_keys_are_ignored_and_missing_keys_take_defaults():
    cfg = config_from_legacy({"some.old.key": object(), "N": 32}, InferenceConfig)
    assert cfg == InferenceConfig(model=ModelConfig(N=32))


def test_bad_arguments():
    with pytest.raises(ConfigError, match=r"cfg must be a dict, got list"):
        update_legacy_dict([], TrainingConfig())
    with pytest.raises(ConfigError, match=r"config must be a TrainingConfig or InferenceConfig, "
                                          r"got ModelConfig"):
        update_legacy_dict({}, ModelConfig())
    with pytest.raises(ConfigError, match=r"cls must be TrainingConfig or InferenceConfig, "
                                          r"got 'ModelConfig'"):
        config_from_legacy({}, ModelConfig)


def test_params_get_set_and_update(monkeypatch):
    monkeypatch.setattr(params, "cfg", {})
    params.set("custom", 5)
    assert params.get("custom") == 5 and params.get("absent", "dflt") == "dflt"
    with pytest.raises(KeyError, match=r"no key 'absent'; present: \['custom'\]"):
        params.get("absent")
    out = params.update_from_config(TrainingConfig(nepochs=4))
    assert out is params.cfg and params.get("nepochs") == 4 and params.get("custom") == 5


_GLOBAL_USE = re.compile(r"params\.cfg|from ptycho\.params import|from ptycho import params|"
                         r"import ptycho\.params")


def test_library_never_reads_the_global_params_dict():
    allowed = {REPO / "ptycho" / "params.py", REPO / "ptycho" / "config" / "legacy.py"}
    scanned, offenders = 0, []
    for pkg in ("ptycho", "backends", "parity"):
        for path in sorted((REPO / pkg).rglob("*.py")):
            scanned += 1
            if path in allowed:
                continue
            for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if _GLOBAL_USE.search(line):
                    offenders.append(f"{path.relative_to(REPO)}:{no}: {line.strip()}")
    assert scanned > 10
    assert not offenders, "the library must not use the legacy global dict:\n" + "\n".join(
        offenders)

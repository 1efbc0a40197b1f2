"""Config (de)serialisation: dicts, JSON, YAML and files; strict reading, identity round trips."""

from __future__ import annotations

import contextlib
import dataclasses
import doctest
import json
import os

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

import ptycho.config.io as cio
from ptycho.config import (InferenceConfig, ModelConfig, TrainingConfig, config_from_dict,
                           config_to_dict, from_json, from_yaml, load_config, save_config,
                           to_json, to_yaml)
from backends.registry import aliases
from ptycho.config.schema import (AMP_ACTIVATIONS, LR_SCHEDULES, POSITIVE_AMP_ACTIVATIONS,
                                  PRECISIONS)
from ptycho.errors import ConfigError


def _floats(lo, hi, lo_open=False):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, exclude_min=lo_open)


_names = st.one_of(st.none(), st.text(min_size=1, max_size=12))


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


any_config = st.one_of(training_configs(), inference_configs(), model_configs())


def test_doctests():
    result = doctest.testmod(cio)
    assert result.attempted > 0 and result.failed == 0


@given(cfg=any_config)
def test_round_trips_are_identities(cfg):
    cls = type(cfg)
    assert config_from_dict(cls, config_to_dict(cfg)) == cfg
    assert from_json(to_json(cfg)) == cfg
    assert from_yaml(to_yaml(cfg)) == cfg
    assert from_json(to_json(cfg), cls) == cfg
    # the dict is plain data: JSON-serialisable as is
    assert json.loads(json.dumps(config_to_dict(cfg))) == config_to_dict(cfg)


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml", ".YAML"])
def test_file_round_trip_by_suffix(tmp_path, suffix):
    cfg = TrainingConfig(model=ModelConfig(N=32, gridsize=2, amp_activation="swish",
                                                   match_intensity=False),
                         nepochs=3, output_dir="runs/a", n_groups=12, learning_rate=2e-4)
    path = tmp_path / f"cfg{suffix}"
    save_config(cfg, path)
    assert os.listdir(tmp_path) == [path.name]
    assert load_config(path) == cfg
    assert load_config(str(path), TrainingConfig) == cfg


def test_dict_layout_nests_model_and_lists_fields_in_order():
    d = config_to_dict(InferenceConfig(model=ModelConfig(N=24)))
    assert list(d) == [f.name for f in dataclasses.fields(InferenceConfig)]
    assert d["model"]["N"] == 24 and "kind" not in d
    assert to_yaml(InferenceConfig()).startswith("kind: inference\n")


def test_unknown_keys_are_named_with_the_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown TrainingConfig keys: \['epochs', 'lr'\]; "
                                          r"valid keys: \['model', 'batch_size', 'nepochs'"):
        config_from_dict(TrainingConfig, {"epochs": 3, "lr": 0.1, "nepochs": 2})


def test_unknown_nested_model_key_names_the_path():
    with pytest.raises(ConfigError, match=r"unknown ModelConfig keys in 'model': \['grid'\]"):
        config_from_dict(TrainingConfig, {"model": {"grid": 2}})


@pytest.mark.parametrize("d, msg", [
    ({"nepochs": "5"}, r"TrainingConfig.nepochs must be an int, got str '5'"),
    ({"nepochs": 2.0}, r"TrainingConfig.nepochs must be an int, got float 2.0"),
    ({"learning_rate": True}, r"TrainingConfig.learning_rate must be a number, got bool"),
    ({"model": {"N": 30}}, r"ModelConfig.N must be a multiple of 8, got 30"),
    ({"model": {"object_big": "yes"}}, r"ModelConfig.object_big must be a bool, got str 'yes'"),
    ({"model": None}, r"TrainingConfig.model must be a ModelConfig, got NoneType"),
    ({"model": [1, 2]}, r"model: expected a mapping of ModelConfig fields, got list"),
    ({"lr_schedule": "linear"}, r"TrainingConfig.lr_schedule must be one of \['constant'"),
    ({"model": {"gridsize": 3}, "neighbor_count": 4},
     r"TrainingConfig.neighbor_count must be >= gridsize\*\*2 = 9, got 4"),
])
def test_wrong_values_raise_the_dataclass_validation_error(d, msg):
    with pytest.raises(ConfigError, match=msg):
        config_from_dict(TrainingConfig, d)


def test_ints_for_float_fields_are_stored_as_floats():
    cfg = config_from_dict(TrainingConfig, {"nphotons": 1000, "learning_rate": 1})
    assert isinstance(cfg.nphotons, float) and cfg.nphotons == 1000.0
    assert isinstance(cfg.learning_rate, float)


def test_yaml_reads_exponent_without_dot_as_float():
    cfg = from_yaml("kind: training\nnphotons: 1e9\nadam_epsilon: 1E-7\nmodel:\n  N: 32\n")
    assert cfg.nphotons == 1e9 and cfg.adam_epsilon == 1e-7 and cfg.model.N == 32


def test_kind_decides_and_must_agree_with_cls():
    assert isinstance(from_json('{"kind": "inference"}'), InferenceConfig)
    with pytest.raises(ConfigError, match=r"'kind' is 'inference' but a TrainingConfig "
                                          r"\(kind 'training'\) was requested"):
        from_json('{"kind": "inference"}', TrainingConfig)
    with pytest.raises(ConfigError, match=r"no 'kind' field .* and no cls given"):
        from_json('{"nepochs": 3}')
    with pytest.raises(ConfigError, match=r"'kind' must be one of \['training', 'inference', "
                                          r"'model'\], got 'train'"):
        from_yaml("kind: train\n")
    assert from_json('{"nepochs": 3}', TrainingConfig).nepochs == 3


def test_bad_documents():
    with pytest.raises(ConfigError, match=r"invalid JSON config: Expecting"):
        from_json('{"kind": "training",}')
    with pytest.raises(ConfigError, match=r"invalid YAML config"):
        from_yaml("kind: [training\n")
    with pytest.raises(ConfigError, match=r"expected a mapping at the top level, got list"):
        from_yaml("- 1\n- 2\n", TrainingConfig)
    with pytest.raises(ConfigError, match=r"config class must be one of .* got dict"):
        config_from_dict(dict, {})


def test_yaml_refuses_python_tags():
    doc = "kind: training\nnepochs: !!python/object/apply:os.getcwd []\n"
    with pytest.raises(ConfigError, match=r"invalid YAML config: could not determine a "
                                          r"constructor for the tag"):
        from_yaml(doc)


def test_bad_suffix_is_refused_and_nothing_written(tmp_path):
    for name in ("cfg.toml", "cfg"):
        with pytest.raises(ConfigError, match=r"expected a suffix in \['.json', '.yaml', "
                                              r"'.yml'\], got '(.toml|\(none\))'"):
            save_config(TrainingConfig(), tmp_path / name)
    assert os.listdir(tmp_path) == []
    (tmp_path / "x.ini").write_text("[a]\n")
    with pytest.raises(ConfigError, match=r"x.ini.*expected a suffix"):
        load_config(tmp_path / "x.ini")


def test_missing_file_and_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config file .*none.json' cannot be read"):
        load_config(tmp_path / "none.json")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: training\nnepochs: -1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml': TrainingConfig.nepochs must be in"):
        load_config(bad)


def test_saving_a_non_config_writes_nothing(tmp_path):
    with pytest.raises(ConfigError, match=r"expected a config class .* got dict"):
        save_config({"nepochs": 3}, tmp_path / "c.json")
    assert os.listdir(tmp_path) == []


def test_failed_save_keeps_old_file_and_leaves_no_partial(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    save_config(TrainingConfig(nepochs=1), path)
    before = path.read_text()

    real_atomic_write = cio.atomic_write

    @contextlib.contextmanager
    def failing_midway(target, mode):
        with real_atomic_write(target, mode) as f:
            class Half:
                def write(self, text):
                    f.write(text[: len(text) // 2])
                    f.flush()
                    raise OSError("disk full")
            yield Half()

    monkeypatch.setattr(cio, "atomic_write", failing_midway)
    with pytest.raises(OSError, match="disk full"):
        save_config(TrainingConfig(nepochs=2), path)
    assert path.read_text() == before and os.listdir(tmp_path) == ["c.yaml"]


@pytest.mark.parametrize("activation", ["swish", "relu"])
def test_intensity_match_refuses_an_amplitude_that_can_be_negative_or_zero(activation):
    with pytest.raises(ConfigError, match=rf"match_intensity needs a positive amplitude "
                                          rf".*amp_activation='{activation}'.*match_intensity=False"):
        ModelConfig(amp_activation=activation)
    assert not ModelConfig(amp_activation=activation, match_intensity=False).match_intensity

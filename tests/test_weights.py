"""The canonical weight spec and its seeded initialiser."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ptycho.config import ModelConfig
from ptycho.errors import WeightsError
from ptycho.weights import (conv_layers, init_weights, network_weight_spec, trainable_names,
                            validate_weights, weight_spec)

configs = st.builds(ModelConfig, N=st.sampled_from([16, 24, 32]), gridsize=st.integers(1, 3),
                    n_filters_scale=st.integers(1, 2), base_filters=st.integers(1, 4),
                    pad_object=st.booleans(), probe_big=st.booleans(),
                    central_decoder=st.booleans(), per_pattern_network=st.booleans(),
                    backprop_estimate=st.booleans(), skip_connections=st.booleans())


def _weights(cfg, seed=0):
    probe = np.ones((cfg.N, cfg.N), np.complex64)
    return init_weights(cfg, seed, probe, 1.5)


@given(configs)
def test_spec_shapes_chain(cfg):
    spec = network_weight_spec(cfg)
    assert spec["enc0.conv1.kernel"].shape[2] == cfg.network_channels * (
        3 if cfg.backprop_estimate else 1) == cfg.input_channels
    assert spec["amp.head.kernel"].shape[3] == cfg.network_channels
    assert spec["phase.head.kernel"].shape[3] == cfg.network_channels
    for name, entry in spec.items():
        if name.endswith(".kernel"):
            assert spec[name.replace(".kernel", ".bias")].shape == (entry.shape[3],)
    assert ("amp.border_head.kernel" in spec) == (cfg.pad_object and cfg.probe_big)
    central = cfg.pad_object and cfg.central_decoder
    assert ("amp.dec2.conv1.kernel" in spec) == (not central)
    assert "amp.dec1.conv2.kernel" in spec


@given(configs)
def test_conv_layers_chain_their_sides_and_channels(cfg):
    """Each conv's input channels are the previous conv's outputs (within a branch); a
    decoder doubles the side per level, up to N or, with a central decoder, N/2, where the
    main head runs; border heads run at N."""
    layers = {layer.name: layer for layer in conv_layers(cfg)}
    n, central = cfg.N, cfg.pad_object and cfg.central_decoder
    assert layers["enc0.conv1"].side == n and layers["enc2.conv2"].side == n // 4
    for branch in ("amp", "phase"):
        head = layers[f"{branch}.head"]
        assert head.side == (n // 2 if central else n)
        assert head.cin == layers[f"{branch}.dec{1 if central else 2}.conv2"].cout
        if f"{branch}.border_head" in layers:
            assert layers[f"{branch}.border_head"].side == n


@given(configs)
def test_skip_connections_feed_each_decoder_level_the_encoder_level_of_its_size(cfg):
    """A decoder level's first conv takes the up-sampled features (the previous level's, or
    the last encoder level's, output) plus, with skip connections, the encoder's output at
    the side it runs on; nothing else changes."""
    import dataclasses
    layers = {layer.name: layer for layer in conv_layers(cfg)}
    plain = {layer.name: layer for layer in conv_layers(
        dataclasses.replace(cfg, skip_connections=False))}
    assert list(layers) == list(plain)
    for branch in ("amp", "phase"):
        j, below = 0, layers["enc2.conv2"]
        while f"{branch}.dec{j}.conv1" in layers:
            first = layers[f"{branch}.dec{j}.conv1"]
            encoder = next(layers[f"enc{i}.conv2"] for i in range(3)
                           if layers[f"enc{i}.conv2"].side == first.side)
            assert first.cin == below.cout + (encoder.cout if cfg.skip_connections else 0)
            assert plain[first.name].cin == below.cout
            below, j = layers[f"{branch}.dec{j}.conv2"], j + 1
    changed = [n for n in layers if layers[n] != plain[n]]
    assert all(".dec" in n and n.endswith("conv1") for n in changed)
    assert bool(changed) == cfg.skip_connections


def test_skip_connections_cost_memory_in_the_estimate():
    from ptycho.model_memory import estimate_model_memory
    plain = estimate_model_memory(ModelConfig(N=32, base_filters=2))
    skip = estimate_model_memory(ModelConfig(N=32, base_filters=2, skip_connections=True))
    assert skip.parameter_bytes > plain.parameter_bytes
    assert skip.activation_bytes_per_group > plain.activation_bytes_per_group
    assert skip.inference_bytes_per_group > plain.inference_bytes_per_group


@given(configs, st.integers(0, 2 ** 32 - 1))
def test_init_is_seeded_and_valid(cfg, seed):
    a, b = _weights(cfg, seed), _weights(cfg, seed)
    assert list(a) == list(weight_spec(cfg))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    c = _weights(cfg, seed + 1 if seed < 2 ** 32 - 1 else 0)
    assert not np.array_equal(a["enc0.conv1.kernel"], c["enc0.conv1.kernel"])


def test_glorot_limit_and_zero_bias():
    cfg = ModelConfig(N=32, base_filters=4, n_filters_scale=1)
    w = _weights(cfg)
    k = w["enc1.conv1.kernel"]
    limit = np.sqrt(6.0 / (9 * (k.shape[2] + k.shape[3])))
    assert np.abs(k).max() <= limit and np.abs(k).max() > 0.8 * limit
    assert not w["enc1.conv1.bias"].any()
    assert w["log_intensity_scale"].shape == () and w["log_intensity_scale"] == np.float32(1.5)


@pytest.mark.parametrize("mutate, message", [
    (lambda w: w.pop("enc0.conv1.bias"), "missing entries \\['enc0.conv1.bias'\\]"),
    (lambda w: w.__setitem__("extra.kernel", np.zeros(3, np.float32)), "unexpected entries \\['extra.kernel'\\]"),
    (lambda w: w.__setitem__("enc0.conv1.kernel", np.zeros((3, 3, 2, 2), np.float32)),
     "'enc0.conv1.kernel': expected shape"),
    (lambda w: w.__setitem__("probe", np.ones((32, 32), np.float32)), "'probe': expected dtype complex64"),
    (lambda w: w["amp.head.bias"].__setitem__(0, np.nan), "'amp.head.bias': contains NaN"),
])
def test_validate_names_the_problem(mutate, message):
    cfg = ModelConfig(N=32, base_filters=2, n_filters_scale=1)
    w = _weights(cfg)
    mutate(w)
    with pytest.raises(WeightsError, match=message):
        validate_weights(cfg, w)


def test_trainable_names_follow_config():
    cfg = ModelConfig(N=32, base_filters=2, probe_trainable=True, intensity_scale_trainable=False)
    names = trainable_names(cfg)
    assert "probe" in names and "log_intensity_scale" not in names

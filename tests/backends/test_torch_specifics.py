"""What only the PyTorch backend has: its Adam is not torch.optim.Adam (epsilon sits
elsewhere), and with several intra-op threads a batch runs in shards on threads with the
results of one shard."""

from __future__ import annotations

import numpy as np
import pytest

from backend_testing import assert_close, batch, weights
from backends.common.adam import Adam
from ptycho.config import ModelConfig, TrainingConfig
from parity import reference as R
from parity.stages import gradient_scales
from parity.tolerances import tolerance
from ptycho.physics.losses import LossSettings

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def torchb():
    from backends import configure_process
    return configure_process("torch")


def test_adam_differs_from_torch_optim_adam(torchb):
    """torch.optim.Adam adds eps to sqrt(v_hat), Keras to sqrt(v): visible when eps ~ |g|."""
    import torch
    ops = torchb.ops
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(20).astype(np.float32)
    grads = [rng.standard_normal(20).astype(np.float32) * 1e-3 for _ in range(3)]
    p = ops.variable(w0, True)
    opt = Adam(ops, [p], 0.9, 0.999, 1e-3, 1e-2)
    q = torch.tensor(w0, requires_grad=True)
    topt = torch.optim.Adam([q], lr=1e-2, betas=(0.9, 0.999), eps=1e-3)
    for g in grads:
        opt.apply([torch.tensor(g)])
        q.grad = torch.tensor(g)
        topt.step()
    ours, theirs = ops.read(p) - w0, q.detach().numpy() - w0
    assert np.abs(ours - theirs).max() > 0.1 * np.abs(ours).max()


def test_batch_shards_on_threads_give_the_unsharded_results(torchb):
    """With two intra-op threads a batch runs as two shards on two threads; losses,
    gradients, an Adam step and predict match the one-thread, one-shard results to float32
    rounding (the same sums in another order)."""
    import torch

    ops = torchb.ops
    cfg = ModelConfig(N=16, gridsize=2, base_filters=2, n_filters_scale=1)
    tc = TrainingConfig(model=cfg, learning_rate=1e-3)
    b = batch(cfg, b=5, seed=3)
    settings = LossSettings.from_config(tc)
    results = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert len(ops.shards(torch.zeros(5))) == threads
            model = torchb.build_model(cfg, weights(cfg, seed=1))
            grads = model.gradients(b, settings)
            model.configure_training(tc)
            terms = model.train_step(b)
            results[threads] = (grads, terms, model.get_weights(),
                                model.predict(b.diffraction, batch_size=4))
            assert torch.get_num_threads() == threads      # restored after the shards ran
    finally:
        torch.set_num_threads(1)
    (g1, t1, w1, p1), (g2, t2, w2, p2) = results[1], results[2]
    # each entry's round-off is relative to the terms its sum adds up (the parity harness's
    # scales): log_intensity_scale's gradient, for one, is a near-cancellation (the
    # intensity match makes the loss almost blind to it)
    _, ref, mags = R.gradients(cfg, weights(cfg, seed=1), b, settings, magnitudes=True)
    scales = gradient_scales(ref, mags, tolerance("gradients.entry").rtol)
    for name in g1:
        assert_close(g2[name], g1[name], "gradients.entry", scale=scales[name])
    for k in t1:
        assert t2[k] == pytest.approx(t1[k], rel=1e-5, abs=1e-9), k
    for name in w1:     # Adam moves a weight by ~lr * sign(g): a gradient within rounding
        # of zero may take either sign, so the step agrees to 2 lr, and elsewhere far better
        assert np.abs(w2[name] - w1[name]).max() <= 2 * tc.learning_rate, name
    assert_close(p2, p1, "network.forward")


# torch.backends.mkldnn.flags() also sets oneDNN's TF32 switch, which warns on a CPU build
@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN:UserWarning")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("c_in", [1, 6])
def test_fused_conv_relu_equals_the_conv_then_the_relu(torchb, dtype, c_in):
    """On the CPU ``conv3x3_relu`` is oneDNN's convolution with a relu post-op at inference
    and in bfloat16 training: the same activations as ``relu(conv3x3(...))`` and, through
    its own backward, the same input, kernel and bias gradients as autograd's for the pair,
    whatever memory format the incoming gradient has (float32 training takes the pair)."""
    import torch
    import torch.nn.functional as F

    ops = torchb.ops
    dt = ops.DTYPES[dtype]
    gen = torch.Generator().manual_seed(c_in)
    x0 = torch.randn(3, c_in, 12, 12, generator=gen).contiguous(memory_format=ops.MEMORY_FORMAT)
    k0 = (0.3 * torch.randn(5, c_in, 3, 3, generator=gen)).contiguous(
        memory_format=ops.MEMORY_FORMAT)
    b0 = 0.1 * torch.randn(5, generator=gen)
    seed = torch.randn(3, 5, 12, 12, generator=gen)      # NCHW, as the heads' gradient is
    if dtype == "bfloat16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        # a CPU without oneDNN's bfloat16 kernels (AVX2 only): no fused op, torch's own
        # conv then the relu, which must give the pair's values just the same
        assert ops._fused_conv_relu_op(x0.to(dt)) is None
    else:
        assert ops._fused_conv_relu_op(x0.to(dt)) is not None, "this torch build lacks the fused op"

    def run(fn):
        x, k, b = (t.clone().requires_grad_() for t in (x0, k0, b0))
        y = fn(x.to(dt), k, b)
        (y.float() * seed).sum().backward()
        return [y.detach().float(), x.grad, k.grad, b.grad]

    def unfused(x, k, b):
        return F.relu(ops.conv3x3(x, k, b))

    fused, plain = run(ops.conv3x3_relu), run(unfused)
    assert float((plain[0] > 0).float().mean()) > 0.2        # the relu does cut
    for name, a, e in zip(("activations", "input grad", "kernel grad", "bias grad"),
                          fused, plain):
        np.testing.assert_array_equal(a.numpy(), e.numpy(), err_msg=name)
    with torch.inference_mode():
        np.testing.assert_array_equal(ops.conv3x3_relu(x0.to(dt), k0, b0).float().numpy(),
                                      plain[0].numpy())
    with torch.backends.mkldnn.flags(enabled=False):      # the user's switch is respected:
        assert ops._fused_conv_relu_op(x0.to(dt)) is None  # torch's own conv, then the relu
        for name, a, e in zip(("activations", "input grad", "kernel grad", "bias grad"),
                              run(ops.conv3x3_relu), run(unfused)):
            np.testing.assert_array_equal(a.numpy(), e.numpy(), err_msg=f"{name}, no oneDNN")

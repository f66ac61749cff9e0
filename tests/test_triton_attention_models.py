"""The attention kernels fire in real models, not only when Q, K and V are graph inputs.

zoo.GPT's causal self-attention and nn.MultiheadAttention (need_weights=False) project x once with
a packed qkv weight and split the result into heads (slice, reshape, transpose). Compiled with
backend="triton", inference is one `attention` kernel per layer reading the heads through strides
(no slice copies), and a training step is one `attention` and one `attention_bwd` kernel per
layer; the loss and every parameter gradient match the uncompiled reference (the interpreter's
rules, op by op).
"""
import numpy as np
import pytest

import avalon as av
from avalon import nn, zoo
from avalon.codegen.triton.cache import interpreting
from avalon.ir import to_numpy

pytestmark = pytest.mark.usefixtures("module_kernel_cache")

T = 32  # one block of the interpreter's default tiles; head dim 16


def _np(x):
    return np.asarray(to_numpy(x) if not isinstance(x, np.ndarray) else x, np.float64)


def _kinds(ins):
    """Fusion groups of the compiled graph by kind: 'attention', 'attention_bwd', other names."""
    names = [op.attrs.get("name", "") for op in ins.graph.ops if op.name == "fusion"]
    fwd = [n for n in names if n.startswith("fused_attention_") and "bwd" not in n]
    bwd = [n for n in names if n.startswith("fused_attention_bwd_")]
    return fwd, bwd


def _no_slice_copies(ins):
    """The heads are read through strides: no kernel only copies a slice of the qkv projection."""
    assert not [k for k in ins.kernels if k.startswith("slice")], list(ins.kernels)


# av.compile's GPU dots may be tf32 (~1e-3 relative: convolutions, or matmuls at precision "high"); the interpreter's are exact
GPU_TOL = 2e-2


def _tol(t: float) -> float:
    return t if interpreting() else max(t, GPU_TOL)


def _check_grads(got, want, tol):
    tol = _tol(tol)
    loss, grads = got
    loss_w, grads_w = want
    np.testing.assert_allclose(_np(loss), _np(loss_w), rtol=tol, atol=tol)
    assert set(grads) == set(grads_w) and grads
    for k in grads_w:
        np.testing.assert_allclose(_np(grads[k]), _np(grads_w[k]), rtol=tol, atol=tol, err_msg=k)


def test_gpt_forward_uses_one_attention_kernel_per_layer(rng):
    m = zoo.GPT(vocab_size=11, block_size=T, n_layer=2, n_head=2, n_embd=32)
    idx = rng.integers(0, 11, (2, T))
    f = av.compile(lambda m, i: m(i), backend="triton")
    ins = f.inspect(m, idx)
    fwd, bwd = _kinds(ins)
    assert len(fwd) == 2 and not bwd, [op.attrs.get("name") for op in ins.graph.ops]
    assert all("tl.dot(" in ins.kernels[n] for n in fwd)
    _no_slice_copies(ins)
    np.testing.assert_allclose(_np(f(m, idx)), _np(m(idx)), rtol=_tol(2e-4), atol=_tol(2e-4))


def test_gpt_training_step_uses_forward_and_backward_attention_kernels(rng):
    m = zoo.GPT(vocab_size=11, block_size=T, n_layer=2, n_head=2, n_embd=32)
    idx, tgt = rng.integers(0, 11, (2, T)), rng.integers(0, 11, (2, T))

    def step(m, i, t):
        return av.value_and_grad(zoo.gpt_loss)(m, i, t)

    f = av.compile(step, backend="triton")
    fwd, bwd = _kinds(f.inspect(m, idx, tgt))
    assert len(fwd) == 2 and len(bwd) == 2, (fwd, bwd)
    _check_grads(f(m, idx, tgt), step(m, idx, tgt), 2e-4)


def _mha(rng):
    m = nn.MultiheadAttention(32, 2, batch_first=True)
    x = rng.standard_normal((2, T, 32)).astype(np.float32)
    return m, x


@pytest.mark.parametrize("causal", [False, True])
def test_multihead_attention_forward_uses_the_attention_kernel(rng, causal):
    m, x = _mha(rng)
    mask = nn.Transformer.generate_square_subsequent_mask(T) if causal else None

    def fwd(m, x):
        return m(x, x, x, need_weights=False, attn_mask=mask, is_causal=causal)[0]

    f = av.compile(fwd, backend="triton")
    ins = f.inspect(m, x)
    got_fwd, bwd = _kinds(ins)
    assert len(got_fwd) == 1 and not bwd, list(ins.kernels)
    _no_slice_copies(ins)
    np.testing.assert_allclose(_np(f(m, x)), _np(fwd(m, x)), rtol=_tol(2e-4), atol=_tol(2e-4))


def test_multihead_attention_training_step_uses_forward_and_backward_kernels(rng):
    m, x = _mha(rng)
    w = rng.standard_normal((2, T, 32)).astype(np.float32)

    def step(m, x, w):
        return av.value_and_grad(lambda m, x, w: (m(x, x, x, need_weights=False)[0] * w).sum())(m, x, w)

    f = av.compile(step, backend="triton")
    fwd, bwd = _kinds(f.inspect(m, x, w))
    assert len(fwd) == 1 and len(bwd) == 1, list(f.inspect(m, x, w).kernels)
    _check_grads(f(m, x, w), step(m, x, w), 2e-4)


def test_attention_written_with_einsum_is_one_attention_kernel():
    """einsum keeps batch labels as leading matmul dims, so `bhqd,bhkd->bhqk` is the [B, H, L, S]
    matmul the attention matcher knows (it was flattened to 3-d and missed)."""
    rs = np.random.RandomState(0)
    q, k, v = [rs.randn(2, 2, 16, 8).astype(np.float32) for _ in range(3)]

    def attn(q, k, v):
        s = av.einsum("bhqd,bhkd->bhqk", q, k) * q.shape[-1] ** -0.5
        return av.einsum("bhqk,bhkd->bhqd", av.softmax(s, -1), v)
    c = av.compile(attn, backend="triton")
    assert sorted(c.inspect(q, k, v).kernels) == ["fused_attention_0"]
    np.testing.assert_allclose(c(q, k, v).numpy(), av.compile(attn)(q, k, v).numpy(), rtol=1e-5, atol=1e-6)


def test_grad_only_of_attention_gets_the_flash_kernels():
    """av.grad (no value) of a loss through attention: P V is dead in the gradient graph, put back
    so the forward and backward are each one kernel (the scores were stored L x S before)."""
    from avalon.nn import functional as F
    rs = np.random.RandomState(0)
    q, k, v, r = [rs.randn(2, 2, 16, 8).astype(np.float32) for _ in range(4)]
    g = av.grad(lambda q, k, v, r: (F.scaled_dot_product_attention(q, k, v, is_causal=True) * r).sum(),
                argnums=(0, 1, 2))
    c = av.compile(g, backend="triton")
    assert {"fused_attention_0", "fused_attention_bwd_1"} <= set(c.inspect(q, k, v, r).kernels)
    for got, want in zip(c(q, k, v, r), g(q, k, v, r)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-5)

"""The attention kernel kind: `F.scaled_dot_product_attention` becomes one flash-attention kernel.

The fusion policy finds the whole pattern (causal, bool and float masks, dropout) for the Triton
target, the kernel walks the keys in blocks with an online softmax (blocks of 32 over L = S = 64,
so two query blocks and two key steps), and its results match the reference interpreter,
dropout's random bits included. Graphs without the pattern, and the numpy target, fuse as before.
"""
import logging

import numpy as np
import pytest

import avalon as av
from avalon.codegen.triton import BlockPolicy
from avalon.codegen.triton.build import compile_graph
from avalon.codegen.triton.cache import interpreting
from avalon.codegen.triton.target import TRITON
from avalon.ir import to_numpy
from avalon.nn.attention import scaled_dot_product_attention as sdpa
from avalon.passes import DEFAULT_PIPELINE, PassManager

pytestmark = pytest.mark.usefixtures("module_kernel_cache")

# exact fp32 dots on a GPU too, whatever `av.set_float32_matmul_precision` says: these tests check the kernels' logic
BLOCKS = BlockPolicy.for_device(interpreting()).replace(mm_block=32, dot_precision="ieee")


def _inputs(rng, mode, B=1, H=2, L=64, S=64, E=16, Ev=16):
    q = rng.standard_normal((B, H, L, E)).astype(np.float32)
    k = rng.standard_normal((B, H, S, E)).astype(np.float32)
    v = rng.standard_normal((B, H, S, Ev)).astype(np.float32)
    extra = []
    if mode == "bool":
        m = rng.random((L, S)) < 0.6
        m[:, 0] = True
        extra = [m]
    elif mode == "float":
        extra = [rng.standard_normal((L, S)).astype(np.float32)]
    return [q, k, v, *extra]


def _fn(mode, p=0.3):
    def f(q, k, v, *m):
        if mode in ("bool", "float"):
            return sdpa(q, k, v, attn_mask=m[0])
        if mode == "dropout":
            return sdpa(q, k, v, dropout_p=p, is_causal=True)
        return sdpa(q, k, v, is_causal=mode == "causal")
    return f


def _optimize(g, target=TRITON):
    PassManager.parse(DEFAULT_PIPELINE, target=target).run(g)
    return g


def _run(mode, rng, **shape):
    args = _inputs(rng, mode, **shape)
    g = av.trace(_fn(mode), *args)
    if len(g.inputs) > len(args):
        args.append(np.int64(20240607))  # dropout's seed
    want = av.interpret(g, *args)[0]
    _optimize(g)
    cg = compile_graph(g, blocks=BLOCKS)
    return g, cg, to_numpy(cg(*args)[0]), want


def loop_body(src: str, header: str) -> str:
    """The lines of the loop opened by `header` in kernel source (AssertionError if absent)."""
    lines = src.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.strip() == header + ":")
    indent = len(lines[i]) - len(lines[i].lstrip())
    body = []
    for ln in lines[i + 1:]:
        if ln.strip() and len(ln) - len(ln.lstrip()) <= indent:
            break
        body.append(ln)
    return "\n".join(body)


@pytest.mark.parametrize("mode", ["none", "causal", "bool", "float", "dropout"])
def test_attention_is_one_flash_kernel_matching_the_reference(mode, rng):
    """With a mask given as an input, two small kernels go with it: which query rows see no key (a
    reduction of the mask) and their zeroing afterwards (torch's zeros where a softmax gives nan)."""
    g, cg, got, want = _run(mode, rng)
    (op,) = [o for o in g.ops if o.attrs.get("name") == "fused_attention_0"]
    assert [o.name for o in op.regions[0].ops].count("matmul") == 2
    assert len(g.ops) == (3 if mode in ("bool", "float") else 1)
    (launch,) = [ln for ln in cg.launches if ln.kernel.kind == "attention"]
    k = launch.kernel
    assert k.kind == "attention" and k.grid == (2, 2) and k.meta["BN"] == 32  # 2 query blocks x B*H
    if mode in ("causal", "dropout"):  # below the diagonal without the mask, then up to it with it
        below = "for n0 in range(0, (tl.program_id(0) * BM // BN) * BN, BN)"
        diag = "for n0 in range((tl.program_id(0) * BM // BN) * BN, tl.minimum((tl.program_id(0) + 1) * BM, 64), BN)"
        assert "iota" not in loop_body(k.source, below) and "iota" in loop_body(k.source, diag)
    else:
        assert "for n0 in range(0, 64, BN)" in k.source
    assert k.source.count("tl.store(") == 1
    assert not cg.fallbacks
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if mode == "dropout":  # the dropped probabilities really change the result
        q, k, v = _inputs(np.random.default_rng(0), mode)  # the same draws as `rng`
        plain = av.interpret(av.trace(_fn("causal"), q, k, v), q, k, v)[0]
        assert np.abs(plain - want).max() > 0.1


@pytest.mark.parametrize("mode", ["causal", "bool"])
def test_ragged_lengths_and_head_dims(mode, rng):
    """L, S, E, Ev not multiples of the blocks: masked lanes must not leak into the row sums."""
    _, cg, got, want = _run(mode, rng, B=2, H=1, L=40, S=40 if mode == "causal" else 56, E=12, Ev=20)
    assert [ln.kernel.kind for ln in cg.launches].count("attention") == 1
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_fully_masked_row_is_zeros_like_torch_and_the_reference(rng):
    q, k, v, m = _inputs(rng, "bool")
    m[5, :] = False
    g = av.trace(_fn("bool"), q, k, v, m)
    want = av.interpret(g, q, k, v, m)[0]
    cg = compile_graph(_optimize(g), blocks=BLOCKS)
    got = to_numpy(cg(q, k, v, m)[0])
    assert (want[:, :, 5] == 0).all() and (got[:, :, 5] == 0).all() and np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_numpy_target_fuses_as_before(rng):
    """The default target lists no attention kind: the same groups as without it."""
    g = _optimize(av.trace(_fn("causal"), *_inputs(rng, "causal")), target=None)
    assert [op.attrs.get("name", op.name) for op in g.ops] == [
        "fused_matmul_mul_0", "fused_where_max_sub_exp_sum_1", "matmul"]  # (the causal mask is cloned in)


def test_training_graph_that_reads_the_probabilities_says_why(rng, caplog):
    """A loss that reads P itself (not only through P V) needs the L x S probabilities stored: the
    policy refuses to outline the forward, says why on avalon.fusion, and greedy fusion runs."""
    q, k, v = _inputs(rng, "causal")

    def loss(q, k, v):
        o = _fn("causal")(q, k, v)
        p = av.ops.matmul(q, av.ops.transpose(k, -2, -1))
        return (o * v).sum() + (av.nn.functional.softmax(p, -1) * p).sum()

    g = av.trace(av.value_and_grad(loss, argnums=(0, 1, 2)), q, k, v)
    want = av.interpret(g, q, k, v)
    with caplog.at_level(logging.DEBUG, logger="avalon.fusion"):
        _optimize(g)
    assert any("not outlining" in r.message and "used outside it" in r.message for r in caplog.records)
    got = compile_graph(g, blocks=BLOCKS)(q, k, v)
    for x, y in zip(got, want):
        np.testing.assert_allclose(to_numpy(x), y, rtol=1e-4, atol=1e-4)


def test_policy_says_why_a_group_is_not_attention(rng):
    """A group holding the pattern but also yielding the probabilities is refused, with the reason."""
    from avalon.passes.target import KernelGroup
    g = av.trace(_fn("none"), *_inputs(rng, "none"))
    ops = list(g.ops)
    div = next(op for op in ops if op.name == "div")
    kind = TRITON.classify(KernelGroup.of(ops, [div.result, ops[-1].result]))
    assert kind.name == "attention" and not kind
    assert "L x S probabilities would have to be stored" in kind.reason
    assert TRITON.classify(KernelGroup.of(ops, [ops[-1].result])).ok


def test_a_causal_mask_shared_by_layers_stays_index_math_in_each_kernel(rng):
    """Two causal layers (forward and backward) share one traced mask after CSE. Index math over
    iotas is cloned into every group that reads it (`fusion_policy.generated`), so no kernel
    materializes the [L, S] mask and every attention kernel still sees the causal pattern (and
    skips the blocks above the diagonal); a shared mask used to be a tensor the kernels read."""
    q, k, v = _inputs(rng, "causal")

    def loss(q, k, v):
        o = sdpa(sdpa(q, k, v, is_causal=True), k, v, is_causal=True)
        return (o * o).sum()

    g = av.trace(av.value_and_grad(loss, argnums=(0, 1, 2)), q, k, v)
    want = av.interpret(g, q, k, v)
    _optimize(g)
    cg = compile_graph(g, blocks=BLOCKS)
    att = [ln.kernel for ln in cg.launches if ln.kernel.kind.startswith("attention")]
    assert [k.kind for k in att].count("attention") == 2 and [k.kind for k in att].count("attention_bwd") == 2
    assert all("tl.minimum(" in k.source for k in att)  # the causal walks stop at the diagonal
    assert not [ln.kernel.name for ln in cg.launches if "iota" in ln.kernel.name]
    for x, y in zip(cg(q, k, v), want):
        np.testing.assert_allclose(to_numpy(x), y, rtol=2e-4, atol=2e-4)

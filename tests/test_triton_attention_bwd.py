"""The attention backward: a training step's forward and backward each run as one flash kernel.

`prepare` (avalon/passes/attention_bwd.py) drops the max's exactly-zero tie term, rewrites the
softmax's row term through dO·O and recomputes the scores, so the forward kernel stores only the
row max and sum and the backward kernel recomputes P per tile. Gradients match the reference
interpreter in Triton's interpreter (blocks of 32 over L = S = 64: every loop runs twice), and no
kernel argument or planned buffer has the L x S shape. With dropout between P and V, both
kernels draw the same counter-based bits per (row, key) as the reference (the same seed).
"""
import logging

import numpy as np
import pytest
from test_triton_attention import loop_body

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
L = S = 64


def _inputs(rng, mode):
    q, k, v, w = (rng.standard_normal((1, 2, L, 16)).astype(np.float32) for _ in range(4))
    if mode == "bool":
        m = rng.random((L, S)) < 0.6
        m[:, 0] = True
        return [q, k, v, w, m]
    if mode == "float":
        return [q, k, v, w, rng.standard_normal((L, S)).astype(np.float32)]
    return [q, k, v, w]


def _loss(mode):
    def loss(q, k, v, w, *m):
        if mode in ("bool", "float"):
            o = sdpa(q, k, v, attn_mask=m[0])
        else:
            o = sdpa(q, k, v, is_causal=mode == "causal")
        return (o * w).sum()
    return loss


def _no_score_buffers(g, cg):
    """No kernel argument and no top-level value of the graph is a float (..., L, S) value other
    than a mask the caller passed in or one computed from it alone (a bool mask's negation is an
    L x S bool, not scores; a float mask whose rows that see no key are opened is the mask's)."""
    masks = {v for v in g.inputs if tuple(v.shape[-2:]) == (L, S)}
    for op in g.ops:  # values computed from the masks (and constants) alone
        if op.operands and all(o in masks or (o.op is not None and o.op.name == "constant") for o in op.operands):
            masks.update(op.results)

    def scores(v):
        return tuple(v.shape[-2:]) == (L, S) and v.dtype.is_float and v not in masks
    for ln in cg.launches:
        assert not [v.type for v in ln.args if scores(v)], ln.kernel.name
    assert not [r.type for op in g.ops for r in op.results if scores(r)]


@pytest.mark.parametrize("mode", ["causal", "bool", "float", "none"])
def test_training_step_gradients_are_two_flash_kernels(mode, rng, caplog):
    args = _inputs(rng, mode)
    g = av.trace(av.value_and_grad(_loss(mode), argnums=(0, 1, 2)), *args)
    want = av.interpret(g, *args)
    with caplog.at_level(logging.DEBUG, logger="avalon.fusion"):
        PassManager.parse(DEFAULT_PIPELINE, target=TRITON).run(g)
    names = [op.attrs.get("name", op.name) for op in g.ops if op.name == "fusion"]
    assert any(n.startswith("fused_attention_bwd_") for n in names), names
    assert any(n.startswith("fused_attention_") and "bwd" not in n for n in names), names
    cg = compile_graph(g, blocks=BLOCKS)
    kinds = [ln.kernel.kind for ln in cg.launches]
    assert kinds.count("attention") == 1 and kinds.count("attention_bwd") == 1 and not cg.fallbacks, kinds
    fwd = next(ln.kernel for ln in cg.launches if ln.kernel.kind == "attention")
    bwd = next(ln.kernel for ln in cg.launches if ln.kernel.kind == "attention_bwd")
    assert fwd.source.count("tl.store(") == 3  # O, the row max and the row sum
    if mode != "float":  # scores qk / 4: the scale joins log2(e) in both kernels' exp2 (additive masks: not)
        assert repr(0.25 * 1.4426950408889634) in fwd.source and repr(0.25 * 1.4426950408889634) in bwd.source
    assert bwd.grid == (2, 2) and "for m0 in range(" in bwd.source and "for n0 in range(" in bwd.source
    if mode == "causal":  # both walks stop at the diagonal; tiles below it are read without the mask
        below_q = "tl.minimum(((pid + 1) * BN + BM - 1) // BM * BM, 64)"
        assert "iota" in loop_body(bwd.source, f"for m0 in range((pid * BN // BM) * BM, {below_q}, BM)")
        assert "iota" not in loop_body(bwd.source, f"for m0 in range({below_q}, 64, BM)")
        assert "iota" not in loop_body(bwd.source, "for n0 in range(0, (pid * BM // BN) * BN, BN)")
        assert "iota" in loop_body(bwd.source, "for n0 in range((pid * BM // BN) * BN, tl.minimum((pid + 1) * BM, 64), BN)")
    _no_score_buffers(g, cg)
    got = cg(*args)
    for x, y in zip(got, want):
        np.testing.assert_allclose(to_numpy(x), y, rtol=2e-4, atol=2e-4)


def test_a_row_that_sees_no_key_gives_the_references_zeros(rng):
    """A fully masked row attends every key and is zeroed after (F.scaled_dot_product_attention's rule,
    torch's zeros): its gradients are zeros, as the reference's, and equal elsewhere; P and dP / l are
    multiplies by the row's 1 / l."""
    args = _inputs(rng, "bool")
    args[4][5, :] = False
    g = av.trace(av.value_and_grad(_loss("bool"), argnums=(0, 1, 2)), *args)
    want = av.interpret(g, *args)
    PassManager.parse(DEFAULT_PIPELINE, target=TRITON).run(g)
    cg = compile_graph(g, blocks=BLOCKS)
    bwd = next(ln.kernel for ln in cg.launches if ln.kernel.kind == "attention_bwd")
    body = loop_body(bwd.source, "for m0 in range(0, 64, BM)")
    assert body.count(" * inv_l") == 2, body  # P = e / l and dP / l: multiplies by the row's 1 / l
    got = cg(*args)
    assert all(np.isfinite(y).all() for y in want) and (want[1][..., 5, :] == 0).all()  # dQ of the masked row
    for x, y in zip(got, want):
        np.testing.assert_allclose(to_numpy(x), y, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
def test_small_causal_self_attention_model_parameter_grads(dropout_p, rng):
    """A causal self-attention block (qkv and output projections) trained one step: every
    parameter gradient matches the reference, and Q, K, V computed by split/reshape/transpose (one
    transpose of the heads' source for Vᵀ, after canonicalize) get both flash kernels."""
    B, T, C, H = 2, 64, 32, 2

    def loss(x, wqkv, wo, y):
        qkv = av.ops.matmul(x, wqkv)  # (B, T, 3C)
        q, k, v = (av.ops.transpose(av.ops.reshape(t, (B, T, H, C // H)), 1, 2)
                   for t in av.ops.split(qkv, C, -1))
        o = sdpa(q, k, v, is_causal=True, dropout_p=dropout_p)
        o = av.ops.reshape(av.ops.transpose(o, 1, 2), (B, T, C))
        return ((av.ops.matmul(o, wo) - y) ** 2).mean()

    x = rng.standard_normal((B, T, C)).astype(np.float32)
    wqkv = (rng.standard_normal((C, 3 * C)) / np.sqrt(C)).astype(np.float32)
    wo = (rng.standard_normal((C, C)) / np.sqrt(C)).astype(np.float32)
    y = rng.standard_normal((B, T, C)).astype(np.float32)
    g = av.trace(av.value_and_grad(loss, argnums=(1, 2)), x, wqkv, wo, y)
    args = [x, wqkv, wo, y] + ([np.int64(11)] if dropout_p else [])  # dropout: the seed, same on both
    assert len(g.inputs) == len(args)
    want = av.interpret(g, *args)
    PassManager.parse(DEFAULT_PIPELINE, target=TRITON).run(g)
    cg = compile_graph(g, blocks=BLOCKS)
    assert not cg.fallbacks
    kinds = [ln.kernel.kind for ln in cg.launches]
    assert kinds.count("attention") == 1 and kinds.count("attention_bwd") == 1, kinds
    _no_score_buffers(g, cg)
    got = cg(*args)
    for a, b in zip(got, want):
        np.testing.assert_allclose(to_numpy(a), b, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("mode", ["causal", "bool"])
def test_dropout_training_step_is_two_flash_kernels(mode, rng, caplog):
    """Dropout between P and V (p = 0.3): the forward and the backward are each one flash kernel;
    the backward recomputes P and the dropout mask per (row, key) from the same seed and counters,
    so the loss and dQ, dK, dV match the reference interpreter drawing the same bits."""
    args = _inputs(rng, mode)
    q, k, v, w, *m = args

    def loss(q, k, v, w, *m):
        o = sdpa(q, k, v, attn_mask=m[0], dropout_p=0.3) if m else sdpa(q, k, v, dropout_p=0.3, is_causal=True)
        return (o * w).sum()

    g = av.trace(av.value_and_grad(loss, argnums=(0, 1, 2)), *args)
    assert len(g.inputs) == len(args) + 1  # the dropout seed
    args = [*args, np.int64(7)]
    want = av.interpret(g, *args)
    with caplog.at_level(logging.DEBUG, logger="avalon.fusion"):
        PassManager.parse(DEFAULT_PIPELINE, target=TRITON).run(g)
    assert not any("dropout" in r.message and "not" in r.message for r in caplog.records)
    cg = compile_graph(g, blocks=BLOCKS)
    kinds = [ln.kernel.kind for ln in cg.launches]
    assert kinds.count("attention") == 1 and kinds.count("attention_bwd") == 1 and not cg.fallbacks, kinds
    bwd = next(ln.kernel for ln in cg.launches if ln.kernel.kind == "attention_bwd")
    assert "_avalon_random_bits" in bwd.source and "tl.trans(pd" in bwd.source
    _no_score_buffers(g, cg)
    got = cg(*args)
    for x, y in zip(got, want):
        np.testing.assert_allclose(to_numpy(x), y, rtol=2e-4, atol=2e-4)
    # the mask really drops: another seed gives other gradients
    other = cg(*args[:-1], np.int64(8))
    assert not np.allclose(to_numpy(other[3]), want[3], atol=1e-3)


def test_dropout_backward_is_refused_when_the_dropped_probabilities_are_read(rng, caplog):
    """A loss that also reads P' = dropout(P) itself: P's cotangent is not dropout's mirror of
    dO Vᵀ alone, so the backward is not fused (logged), and the graph still runs right."""
    from avalon.nn.functional import dropout, softmax
    q, k, v, w = _inputs(rng, "none")

    def loss(q, k, v, w):
        pd = dropout(softmax(av.ops.mul(av.ops.matmul(q, av.ops.transpose(k, -2, -1)), 0.25), -1), 0.3)
        return (av.ops.matmul(pd, v) * w).sum() + (pd * pd).sum()

    g = av.trace(av.value_and_grad(loss, argnums=(0, 1, 2)), q, k, v, w)
    args = [q, k, v, w, np.int64(7)]
    want = av.interpret(g, *args)
    with caplog.at_level(logging.DEBUG, logger="avalon.fusion"):
        PassManager.parse(DEFAULT_PIPELINE, target=TRITON).run(g)
    assert any("through dropout's mirror" in r.message for r in caplog.records)
    assert not any("attention" in str(op.attrs.get("name", "")) for op in g.ops)
    got = compile_graph(g, blocks=BLOCKS)(*args)
    for x, y in zip(got, want):
        np.testing.assert_allclose(to_numpy(x), y, rtol=1e-4, atol=1e-4)


def test_the_max_tie_term_is_kept_where_it_is_not_provably_zero(rng):
    """A loss reading the max itself: its cotangent is not a function of the softmax alone, so
    prepare leaves the graph's meaning alone (the gradient still matches the reference)."""
    q, k, v, w = _inputs(rng, "causal")

    def loss(q, k, v, w):
        s = av.ops.matmul(q, av.ops.transpose(k, -2, -1))
        return (sdpa(q, k, v) * w).sum() + av.ops.max(s, axis=-1).sum()

    g = av.trace(av.value_and_grad(loss, argnums=(0, 1)), q, k, v, w)
    want = av.interpret(g, q, k, v, w)
    PassManager.parse(DEFAULT_PIPELINE, target=TRITON).run(g)
    got = compile_graph(g, blocks=BLOCKS)(q, k, v, w)
    for x, y in zip(got, want):
        np.testing.assert_allclose(to_numpy(x), y, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["causal", "none"])
def test_the_backward_is_tuned_and_any_tile_shape_gives_the_gradients(mode, rng, tmp_path, monkeypatch):
    """The backward kernel is a tunable kind: its candidates (BM x BN, warps, stages) are timed like
    the forward's, and the winner, here 16 x 32 tiles (the causal walk then starts mid key block),
    computes the reference's gradients."""
    import avalon.codegen.triton.autotune as at
    from avalon.codegen.triton import KernelCache
    args = _inputs(rng, mode)
    g = av.trace(av.value_and_grad(_loss(mode), argnums=(0, 1, 2)), *args)
    want = av.interpret(g, *args)
    PassManager.parse(DEFAULT_PIPELINE, target=TRITON).run(g)
    cache = KernelCache(tmp_path)
    bwd = next(ln.kernel for ln in compile_graph(g, blocks=BLOCKS, cache=cache).launches
               if ln.kernel.kind == "attention_bwd")
    cands = at.candidates(bwd)
    assert len(cands) >= 4 and any(c.blocks["BM"] != c.blocks["BN"] for c in cands)
    pick = at.KernelConfig.of(dict(BM=16, BN=32, BE=bwd.meta["BE"], BV=bwd.meta["BV"]), 4, 2)
    own = at.CANDIDATES["attention_bwd"]
    monkeypatch.setitem(at.CANDIDATES, "attention_bwd", lambda k: own(k) + [pick])

    def timer(k, make_args):
        make_args()
        return 0.1 if at.config_of(k) == pick else 1.0

    cg = compile_graph(g, blocks=BLOCKS, cache=cache, tuner=at.Tuner(timer, force=True, device="test-gpu"))
    k = next(ln.kernel for ln in cg.launches if ln.kernel.kind == "attention_bwd")
    assert at.config_of(k) == pick and k.grid[0] == 4 and cg.tuning[k.name]["config"] == pick.label
    for x, y in zip(cg(*args), want):
        np.testing.assert_allclose(to_numpy(x), y, rtol=2e-4, atol=2e-4)

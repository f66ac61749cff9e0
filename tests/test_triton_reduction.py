"""Reduction kernels against the numpy reference: sum/max/argmax over any axes with pointwise
prologues and epilogues (hypothesis over shapes, axes and block sizes), softmax, log-softmax and
layer norm in persistent and looped form, nan and tie semantics, and the per-op fallback for a
group no single kernel can compute."""
import logging

import numpy as np
import pytest
from helpers import graph
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from avalon.codegen.triton import BlockPolicy
from avalon.codegen.triton.cache import interpreting
from avalon.codegen.triton.testing import check

INTERP = BlockPolicy.for_device(interpret=interpreting())  # the defaults of this machine
LOOPED = INTERP.replace(persistent_r=4, rblock=4, reduction_elems=8)  # forces loops and several programs


pytestmark = pytest.mark.usefixtures("module_kernel_cache")  # kernel files go to a temporary cache


@st.composite
def reductions(draw):
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=1, max_size=3)))
    rank = len(shape)
    op = draw(st.sampled_from(["sum", "max", "argmax"]))
    if op == "argmax":
        axes = [draw(st.integers(-rank, rank - 1))]
    else:
        axes = draw(st.lists(st.integers(0, rank - 1), min_size=1, max_size=rank, unique=True))
    keep = draw(st.booleans())
    g, b, (x,) = graph((shape, "f32"))
    pro = draw(st.sampled_from([None, "exp", "abs", "neg"]))
    v = b(pro, x) if pro else x
    attrs = {"axis": axes[0]} if op == "argmax" else {"axes": axes}
    r = b(op, v, keepdims=keep, **attrs)
    outs = [r]
    if op != "argmax" and keep and draw(st.booleans()):  # combine the row result with the row again
        outs.append(b("sub", v, b("broadcast", r, shape=list(shape))))
    elif op != "argmax" and draw(st.booleans()):
        outs.append(b("mul", r, r))
    g.set_outputs(outs)
    return g


@settings(max_examples=25, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(reductions(), st.sampled_from([INTERP, LOOPED]), st.integers(0, 2**16))
def test_random_reductions_match_the_reference(g, blocks, seed):
    cg = check(g, rng=np.random.default_rng(seed), blocks=blocks)
    assert len(cg.kernels) == 1


def softmax(b, x, shape, log=False):
    m = b("max", x, axes=[-1], keepdims=True)
    z = b("sub", x, b("broadcast", m, shape=list(shape)))
    e = b("exp", z)
    s = b("sum", e, axes=[-1], keepdims=True)
    if log:
        return b("sub", z, b("broadcast", b("log", s), shape=list(shape)))
    return b("div", e, b("broadcast", s, shape=list(shape)))


@pytest.mark.parametrize("blocks", [INTERP, LOOPED], ids=["persistent", "looped"])
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax(blocks, log):
    g, b, (x,) = graph(((6, 13), "f32"))
    g.set_outputs([softmax(b, x, (6, 13), log)])
    cg = check(g, blocks=blocks, rng=np.random.default_rng(1))
    src = cg.kernels["fused_0"]
    assert ("for roffset in range" in src) == (blocks is LOOPED)


@pytest.mark.parametrize("blocks", [INTERP, LOOPED], ids=["persistent", "looped"])
def test_layer_norm(blocks):
    n, d = 5, 12
    g, b, (x, gamma, beta) = graph(((n, d), "f32"), ((d,), "f32"), ((d,), "f32"))
    inv_d = b("broadcast", b.constant(1.0 / d), shape=[n, 1])
    mean = b("mul", b("sum", x, axes=[1], keepdims=True), inv_d)
    xc = b("sub", x, b("broadcast", mean, shape=[n, d]))
    var = b("mul", b("sum", b("mul", xc, xc), axes=[1], keepdims=True), inv_d)
    eps = b("broadcast", b.constant(1e-5), shape=[n, 1])
    inv = b("rsqrt", b("add", var, eps))
    y = b("mul", xc, b("broadcast", inv, shape=[n, d]))
    y = b("add", b("mul", y, b("broadcast", gamma, shape=[n, d])), b("broadcast", beta, shape=[n, d]))
    g.set_outputs([y, mean, inv])  # the backward pass wants the statistics too
    check(g, blocks=blocks, rtol=1e-5, atol=1e-5)


def test_reduction_over_leading_and_middle_axes_with_keepdims_false():
    g, b, (x,) = graph(((4, 3, 5), "f32"))
    s = b("sum", x, axes=[0, 2])  # (3,)
    m = b("max", x, axes=[0, 2])
    g.set_outputs([s, b("div", s, m)])
    check(g, blocks=LOOPED)


def test_full_reduction_to_a_scalar_loss():
    g, b, (x, t) = graph(((8, 10), "f32"), ((8, 10), "f32"))
    d = b("sub", x, t)
    loss = b("mul", b("sum", b("mul", d, d), axes=[0, 1]), b.constant(1 / 80))
    g.set_outputs([loss])
    check(g, blocks=LOOPED)
    check(g)


def test_nan_propagates_through_max_and_argmax_finds_the_first():
    g, b, (x,) = graph(((4, 6), "f32"))
    g.set_outputs([b("max", x, axes=[1]), b("argmax", x, axis=1), b("argmax", x, axis=1, keepdims=True)])
    x0 = np.array([[1, 3, 3, 0, 2, 3], [np.nan, 1, np.nan, 5, 0, 0],
                   [-np.inf] * 6, [0, 1, 2, 3, 4, np.inf]], np.float32)
    for blocks in (INTERP, LOOPED):
        check(g, [x0], blocks=blocks)


@pytest.mark.parametrize("dtype", ["i32", "i64", "i1", "f16"])
def test_integer_boolean_and_half_reductions(dtype, rng):
    g, b, (x,) = graph(((5, 9), dtype))
    g.set_outputs([b("sum", x, axes=[1]), b("max", x, axes=[0], keepdims=True), b("argmax", x, axis=1)])
    check(g, blocks=LOOPED, rtol=1e-3, atol=1e-3)


def test_cross_entropy_group_falls_back_to_one_kernel_per_op(caplog, rng):
    """log-softmax reduces rows, the loss sums everything: no one kernel does both, yet it runs."""
    n, c = 4, 7
    g, b, (x, y) = graph(((n, c), "f32"), ((n,), "i64"))
    logp = softmax(b, x, (n, c), log=True)
    picked = b("mul", logp, b("one_hot", y, num_classes=c, dtype="f32"))
    loss = b("neg", b("mul", b("sum", picked, axes=[0, 1]), b.constant(1 / n)))
    g.set_outputs([loss])
    with caplog.at_level(logging.INFO, logger="avalon.triton"):
        cg = check(g, [rng.standard_normal((n, c)).astype(np.float32), rng.integers(0, c, n)])
    assert "one kernel per op" in caplog.text
    assert len(cg.kernels) > 1 and "fused_0" not in cg.kernels


def test_row_result_without_keepdims_reshaped_back_onto_the_row():
    """sum(keepdims=False) -> reshape (n, 1) -> broadcast: the index algebra still sees "this row"."""
    g, b, (x,) = graph(((6, 2, 5), "f32"))
    s = b("sum", x, axes=[1, 2])  # (6,)
    back = b("broadcast", b("reshape", s, shape=[6, 1, 1]), shape=[6, 2, 5])
    g.set_outputs([b("div", x, back)])
    for blocks in (INTERP, LOOPED):
        cg = check(g, blocks=blocks)
        assert list(cg.kernels) == ["fused_0"]


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_half_precision_softmax_computes_in_f32(dtype):
    g, b, (x,) = graph(((4, 33), dtype))
    g.set_outputs([softmax(b, x, (4, 33), log=True)])
    check(g, blocks=LOOPED, rtol=1e-2, atol=1e-2)

"""Whatever grouping the fusion pass picks, the compiled graph computes what the reference does.

Contiguous runs of a small CNN's forward and backward ops (convolutions, pooling and their
gradients, matmul, reductions, shape ops) are wrapped in fusion ops at random, one or two groups,
sometimes nested; each group becomes one kernel or, when no kernel kind fits it, one kernel per op.
"""
import logging

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from avalon.codegen.triton.testing import check, fuse
from avalon.ir import Builder, Graph, TensorType

pytestmark = pytest.mark.usefixtures("module_kernel_cache")  # kernel files go to a temporary cache


def cnn_step() -> Graph:
    """conv -> bias -> relu -> pool -> linear -> log-softmax, a loss, and the backward of the pool and conv."""
    g = Graph("step")
    b = Builder(g)
    x = g.add_input(TensorType((2, 1, 8, 8), "f32"), "x")
    w = g.add_input(TensorType((3, 1, 3, 3), "f32"), "w")
    bias = g.add_input(TensorType((3,), "f32"), "bias")
    fc = g.add_input(TensorType((4, 27), "f32"), "fc")
    y = b("conv2d", x, w)  # 2, 3, 6, 6
    y = b("add", y, b("broadcast", b("reshape", bias, shape=[3, 1, 1]), shape=[2, 3, 6, 6]))
    r = b("relu", y)
    p = b("max_pool2d", r, kernel=[2, 2], stride=[2, 2])  # 2, 3, 3, 3
    h = b("reshape", p, shape=[2, 27])
    z = b("matmul", h, b("transpose", fc, perm=[1, 0]))  # 2, 4
    m = b("max", z, axes=[1], keepdims=True)
    zc = b("sub", z, b("broadcast", m, shape=[2, 4]))
    lse = b("log", b("sum", b("exp", zc), axes=[1], keepdims=True))
    logp = b("sub", zc, b("broadcast", lse, shape=[2, 4]))
    loss = b("neg", b("sum", logp, axes=[0, 1]))
    dp = b("reshape", b("matmul", b("exp", logp), fc), shape=[2, 3, 3, 3])  # a stand-in upstream gradient
    dr = b("max_pool2d_grad", r, dp, kernel=[2, 2], stride=[2, 2])
    dy = b("where", b("gt", y, b("broadcast", b.constant(0.0), shape=[2, 3, 6, 6])), dr,
           b("broadcast", b.constant(0.0), shape=[2, 3, 6, 6]))
    dw = b("conv2d_grad_weight", x, dy, weight_shape=[3, 1, 3, 3])
    dx = b("conv2d_grad_input", dy, w, input_shape=[2, 1, 8, 8])
    db = b("sum", dy, axes=[0, 2, 3])
    g.set_outputs([loss, dw, dx, db])
    return g


N_OPS = len(cnn_step().ops)


@settings(max_examples=20, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(st.lists(st.integers(0, N_OPS), min_size=2, max_size=4, unique=True).map(sorted), st.booleans())
def test_any_grouping_runs_and_matches_the_reference(cuts, nest):
    g = cnn_step()
    spans = list(zip(cuts[::2], cuts[1::2]))
    for k, (start, stop) in reversed(list(enumerate(spans))):  # later spans first: indices stay valid
        g = fuse(g, f"group_{k}", start, stop)
    if nest and spans:
        g = fuse(g, "outer", spans[0][0], spans[0][0] + 1)  # a fusion op inside a fusion op
    warnings: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = warnings.append
    log = logging.getLogger("avalon.triton")
    log.addHandler(handler)
    try:
        check(g, fused=None, kind="contraction", rtol=1e-4, atol=1e-4)
    finally:
        log.removeHandler(handler)
    # falling back is fine (and said, as a warning); an emitter crashing is a bug (and now an error)
    odd = [w.getMessage() for w in warnings if "one kernel per op instead" not in w.getMessage()]
    assert not odd, odd[0]


def test_whole_step_in_one_group_falls_back_but_runs():
    cg = check(cnn_step(), fused="everything", kind="contraction", rtol=1e-4, atol=1e-4)
    assert "everything" not in cg.kernels and len(cg.kernels) > 10

"""Pooling kernels and their gradients against the numpy reference, over kernel sizes, strides and
padding (hypothesis), with ties, -inf and nan windows, and fused with a producer."""
import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from avalon.codegen.triton.testing import check
from avalon.ir import Builder, Graph, TensorType

NO_SHRINK = [Phase.explicit, Phase.reuse, Phase.generate]  # every example compiles a kernel


pytestmark = pytest.mark.usefixtures("module_kernel_cache")  # kernel files go to a temporary cache


@st.composite
def pools(draw):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    h, w = draw(st.integers(max(1, kh - 2 * ph), 8)), draw(st.integers(max(1, kw - 2 * pw), 8))
    attrs = dict(kernel=[kh, kw], stride=[sh, sw], padding=[ph, pw])
    return (draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w), attrs


def pool_graph(kind, xs, attrs):
    g = Graph(kind)
    b = Builder(g)
    x = g.add_input(TensorType(xs, "f32"), "x")
    y = b(kind.replace("_grad", ""), x, **attrs)
    if not kind.endswith("grad"):
        g.set_outputs([y])
        return g
    g = Graph(kind)
    b = Builder(g)
    if kind == "max_pool2d_grad":
        x = g.add_input(TensorType(xs, "f32"), "x")
        dy = g.add_input(TensorType(y.shape, "f32"), "dy")
        g.set_outputs([b(kind, x, dy, **attrs)])
    else:
        dy = g.add_input(TensorType(y.shape, "f32"), "dy")
        g.set_outputs([b(kind, dy, input_shape=list(xs), **attrs)])
    return g


@settings(max_examples=12, deadline=None, phases=NO_SHRINK)
@given(pools(), st.sampled_from(["max_pool2d", "avg_pool2d", "max_pool2d_grad", "avg_pool2d_grad"]),
       st.booleans(), st.integers(0, 2**16))
def test_pools_and_grads(case, kind, include_pad, seed):
    xs, attrs = case
    if kind.startswith("avg"):
        attrs = dict(attrs, count_include_pad=include_pad)
    g = pool_graph(kind, xs, attrs)
    rng = np.random.default_rng(seed)
    ins = [np.round(rng.standard_normal(v.shape) * 2).astype(np.float32) for v in g.inputs]  # rounding makes ties
    check(g, ins)


def test_max_pool_windows_of_minus_inf_and_nan():
    g = pool_graph("max_pool2d_grad", (1, 1, 4, 4), dict(kernel=[2, 2], stride=[2, 2], padding=[1, 1]))
    x = np.full((1, 1, 4, 4), -np.inf, np.float32)
    x[0, 0, 1, 1] = np.nan
    x[0, 0, 2, 2:] = [3, 3]
    dy = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3) + 1
    check(g, [x, dy])
    check(pool_graph("max_pool2d", (1, 1, 4, 4), dict(kernel=[2, 2], stride=[2, 2], padding=[1, 1])), [x])


def test_relu_then_max_pool_is_one_kernel():
    g = Graph("f")
    b = Builder(g)
    x = g.add_input(TensorType((2, 3, 8, 8), "f32"), "x")
    bias = g.add_input(TensorType((3,), "f32"), "b")
    y = b("relu", b("add", x, b("broadcast", b("reshape", bias, shape=[3, 1, 1]), shape=[2, 3, 8, 8])))
    g.set_outputs([b("max_pool2d", y, kernel=[2, 2], stride=[2, 2])])
    cg = check(g)
    assert list(cg.kernels) == ["fused_0"] and "tl.static_range(2)" in cg.kernels["fused_0"]


def test_integer_avg_pool_truncates():
    g = Graph("f")
    b = Builder(g)
    x = g.add_input(TensorType((1, 2, 5, 5), "i32"), "x")
    g.set_outputs([b("avg_pool2d", x, kernel=[2, 2], stride=[1, 1])])
    check(g, [np.random.default_rng(0).integers(-20, 20, (1, 2, 5, 5)).astype(np.int32)])

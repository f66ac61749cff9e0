"""Contraction kernels against the numpy reference: matmul (batched, operands transposed inside the
group, epilogues of bias, activation and residual), conv2d and both gradients as implicit GEMMs over
strides, padding, dilation and groups (hypothesis), with tiles small enough to exercise the tile
grid and the K loop."""
import numpy as np
import pytest
from helpers import conv_graph, conv_out, graph
from hypothesis import Phase, example, given, settings
from hypothesis import strategies as st

from avalon.codegen.triton import BlockPolicy
from avalon.codegen.triton.cache import interpreting
from avalon.codegen.triton.testing import check

SMALL = BlockPolicy.for_device(interpreting()).replace(mm_block=16, mm_k=16)  # several tiles, several K steps
NO_SHRINK = [Phase.explicit, Phase.reuse, Phase.generate]  # every example compiles a kernel


pytestmark = pytest.mark.usefixtures("module_kernel_cache")  # kernel files go to a temporary cache


@pytest.mark.parametrize("m,k,n", [(20, 30, 40), (1, 1, 1), (33, 17, 5), (64, 48, 16)])
@pytest.mark.parametrize("blocks", [None, SMALL], ids=["big", "small"])
def test_matmul(m, k, n, blocks):
    g, b, (x, y) = graph(((m, k), "f32"), ((k, n), "f32"))
    g.set_outputs([b("matmul", x, y)])
    check(g, blocks=blocks, kind="contraction")


def test_linear_with_transposed_weight_bias_relu_and_residual():
    """x @ w.T + b, relu, + residual: the transpose is a strided read, the rest runs before the store."""
    g, b, (x, w, bias, res) = graph(((12, 24), "f32"), ((20, 24), "f32"), ((20,), "f32"), ((12, 20), "f32"))
    y = b("matmul", x, b("transpose", w, perm=[1, 0]))
    y = b("relu", b("add", y, b("broadcast", bias, shape=[12, 20])))
    g.set_outputs([b("add", y, res)])
    cg = check(g, blocks=SMALL, kind="contraction")
    src = cg.kernels["fused_0"]
    assert src.count("tl.dot(") == 1 and src.count("tl.store(") == 1


def test_linear_on_tokens_takes_bias_and_gelu_through_the_reshape():
    """A Linear on [batch, tokens, features]: the matmul runs on [rows, features] and a reshape
    (a row-major view: the same element under another index) leads to the bias and GELU. The
    `fuse` pass makes it one contraction kernel whose epilogue writes both the pre-activation (the
    backward's) and the activation, instead of a matmul kernel and a pointwise one re-reading it."""
    from avalon.passes import PassManager
    g, b, (x, w, bias) = graph(((2, 8, 24), "f32"), ((40, 24), "f32"), ((40,), "f32"))
    y = b("matmul", b("reshape", x, shape=[16, 24]), b("transpose", w, perm=[1, 0]))
    pre = b("add", b("reshape", y, shape=[2, 8, 40]), b("broadcast", bias, shape=[2, 8, 40]))
    act = b("mul", pre, b("sigmoid", b("mul", pre, b("constant", value=1.702, shape=[2, 8, 40], dtype="f32"))))
    g.set_outputs([pre, act])
    PassManager.parse("fuse").run(g)
    assert [op.name for op in g.ops] == ["fusion"], g
    cg = check(g, fused=None, blocks=SMALL, kind="contraction")
    assert cg.launches[0].kernel.kind == "contraction" and len(cg.launches) == 1


@pytest.mark.parametrize("ta,tb", [(True, False), (False, True), (True, True)])
def test_batched_matmul_with_transposed_operands(ta, tb):
    bsz, m, k, n = 3, 10, 7, 9
    g, b, (x, y) = graph(((bsz, k, m) if ta else (bsz, m, k), "f32"), ((bsz, n, k) if tb else (bsz, k, n), "f32"))
    a = b("transpose", x, perm=[0, 2, 1]) if ta else x
    c = b("transpose", y, perm=[0, 2, 1]) if tb else y
    g.set_outputs([b("tanh", b("matmul", a, c))])
    check(g, blocks=SMALL, kind="contraction")


def test_four_dim_batched_matmul_with_two_outputs():
    g, b, (x, y) = graph(((2, 3, 5, 4), "f32"), ((2, 3, 4, 6), "f32"))
    z = b("matmul", x, y)
    g.set_outputs([z, b("sigmoid", z)])
    check(g, kind="contraction")


@pytest.mark.parametrize("dtype", ["f16", "f64", "i32"])
def test_matmul_dtypes(dtype, rng):
    g, b, (x, y) = graph(((9, 18), dtype), ((18, 11), dtype))
    g.set_outputs([b("matmul", x, y)])
    tol = {"f16": 2e-3, "f64": 1e-12, "i32": 0}[dtype]
    check(g, blocks=SMALL, rtol=tol, atol=tol, rng=rng)


def test_prologue_cast_feeds_the_dot():
    g, b, (x, y) = graph(((8, 16), "f16"), ((16, 8), "f32"))
    g.set_outputs([b("matmul", b("cast", x, dtype="f32"), b("exp", y))])
    check(g, kind="contraction")


@st.composite
def convs(draw):
    n, groups = draw(st.integers(1, 2)), draw(st.sampled_from([1, 1, 2]))
    cg, og = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 9))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 9))
    attrs = dict(stride=[sh, sw], padding=[ph, pw], dilation=[dh, dw], groups=groups)
    return (n, cg * groups, h, w), (og * groups, cg, kh, kw), attrs


@settings(max_examples=15, deadline=None, phases=NO_SHRINK)
@given(convs(), st.integers(0, 2**16))
# one-pixel images: the input's address depends on the group id (a scalar) alone
@example(case=((1, 2, 1, 1), (2, 1, 2, 2), dict(stride=[1, 1], padding=[1, 2], dilation=[2, 1], groups=2)), seed=428)
def test_conv2d_with_bias_and_relu(case, seed):
    xs, ws, attrs = case
    g, b, (x, w, bias) = graph((xs, "f32"), (ws, "f32"), ((ws[0],), "f32"))
    y = b("conv2d", x, w, **attrs)
    bb = b("broadcast", b("reshape", bias, shape=[ws[0], 1, 1]), shape=list(y.shape))
    g.set_outputs([b("relu", b("add", y, bb))])
    check(g, blocks=SMALL, kind="contraction", rng=np.random.default_rng(seed))


@settings(max_examples=15, deadline=None, phases=NO_SHRINK)
@given(convs(), st.integers(0, 2**16))
def test_conv2d_grad_input(case, seed):
    xs, ws, attrs = case
    g, b, (dy, w) = graph((conv_out(xs, ws, attrs), "f32"), (ws, "f32"))
    g.set_outputs([b("conv2d_grad_input", dy, w, input_shape=list(xs), **attrs)])
    check(g, blocks=SMALL, kind="contraction", rng=np.random.default_rng(seed))


@settings(max_examples=15, deadline=None, phases=NO_SHRINK)
@given(convs(), st.integers(0, 2**16))
def test_conv2d_grad_weight(case, seed):
    xs, ws, attrs = case
    g, b, (x, dy) = graph((xs, "f32"), (conv_out(xs, ws, attrs), "f32"))
    g.set_outputs([b("conv2d_grad_weight", x, dy, weight_shape=list(ws), **attrs)])
    check(g, blocks=SMALL, kind="contraction", rng=np.random.default_rng(seed))


def test_lenet_sized_conv_in_one_tile_per_program():
    g, b, (x, w) = graph(((4, 1, 28, 28), "f32"), ((20, 1, 5, 5), "f32"))
    g.set_outputs([b("relu", b("conv2d", x, w))])
    cg = check(g, kind="contraction")
    assert cg.launches[0].kernel.grid == (cg.launches[0].kernel.grid[0], 1)


@settings(max_examples=12, deadline=None, phases=NO_SHRINK)
@given(convs(), st.sampled_from(["conv2d", "conv2d_grad_input", "conv2d_grad_weight"]), st.integers(0, 2**16))
def test_channels_last_images_take_their_taps_channel_first(case, kind, seed):
    """Images stored NHWC (the `layout` pass) order the contraction's taps (kh, kw, c), so a K block
    reads consecutive channels: the sum runs in another order, to the same values."""
    xs, ws, attrs = case
    g = conv_graph(kind, xs, ws, attrs, layout=(0, 2, 3, 1))
    check(g, blocks=SMALL, kind="contraction", rng=np.random.default_rng(seed))


@pytest.mark.parametrize("xs,ws,stride,padding", [
    ((2, 3, 9, 8), (4, 3, 3, 3), [2, 2], [1, 1]),  # ResNet's downsampling 3x3: 4 phases of 1, 2, 2, 4 taps
    ((2, 4, 7, 7), (6, 4, 1, 1), [2, 2], [0, 0]),  # the 1x1 shortcut: three phases no tap reaches (K = 0)
    ((1, 2, 10, 11), (2, 2, 2, 3), [3, 2], [2, 1]),  # a kernel smaller than the stride, uneven phases
])
def test_strided_grad_input_runs_one_gemm_per_stride_phase(xs, ws, stride, padding):
    """conv2d_grad_input at stride s reaches each input pixel from only the taps of its phase: one
    implicit GEMM per phase over those taps (a chain of functions in one kernel file), summing
    to the K of one whole-image GEMM instead of s*s times it; the residual add runs in each."""
    attrs = dict(stride=stride, padding=padding, dilation=[1, 1], groups=1)
    ys = conv_out(xs, ws, attrs)
    g, b, (dy, w, res) = graph((ys, "f32"), (ws, "f32"), (xs, "f32"))
    g.set_outputs([b("add", b("conv2d_grad_input", dy, w, input_shape=list(xs), **attrs), res)])
    cg = check(g, blocks=SMALL, kind="contraction")
    (ln,) = cg.launches
    chain = ln.kernel.chain()
    assert len(chain) == min(stride[0], xs[2]) * min(stride[1], xs[3]) and [p.kind for p in chain[1:]] == ["contraction_phase"] * (len(chain) - 1)
    assert sum(p.problem["k"] * p.problem["m"] for p in chain) < ws[0] * ws[2] * ws[3] * xs[0] * xs[2] * xs[3]
    assert cg.kernels["fused_0"].count("@triton.jit") == len(chain)

"""The numpy backend's generated code against the reference interpreter, its oracle.

Every op in the registry runs through generated code, alone and inside a fused group, on random
inputs of each dtype it takes; results must equal the interpreter's bit for bit except where the
generator reorders float sums (contractions: tight tolerances). Hypothesis draws op chains through
the default pipeline, and convolution/pooling shapes covering both im2col layouts.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import avalon as av
from avalon import optim, zoo
from avalon.codegen.numpy import GeneratedExecutable
from avalon.codegen.numpy.backend import NUMPY
from avalon.ir import OPS, Builder, Graph, TensorType, interpret, verify
from avalon.ir.fusion import outline
from avalon.passes import DEFAULT_PIPELINE, PassManager
from avalon.passes.testing import random_inputs

FLOAT = ("f32", "f64", "f16", "bf16")
Build = Callable[[Builder, Graph, str], list]


def _in(g: Graph, shape: tuple[int, ...], dtype: str, name: str | None = None):
    return g.add_input(TensorType(shape, dtype), name)


CASES: dict[str, tuple[Build, tuple[str, ...]]] = {}


def case(names: str, dtypes: tuple[str, ...] = FLOAT):
    def deco(fn: Build) -> Build:
        for n in names.split():
            CASES[n] = (fn, dtypes)
        return fn
    return deco


def _unary(name: str) -> Build:
    return lambda b, g, d: [b(name, _in(g, (3, 5), d))]


for _n in "exp log tanh sigmoid sqrt rsqrt erf sin cos stop_gradient".split():
    case(_n)(_unary(_n))
for _n in "neg abs relu sign".split():
    case(_n, (*FLOAT, "i32", "i64", "i1"))(_unary(_n))
for _n in "add sub mul maximum minimum div pow eq ne lt le gt ge".split():
    case(_n, (*FLOAT, "i32", "i64", "i1") if _n not in ("div", "pow") else (*FLOAT, "i32", "i64"))(
        lambda b, g, d, n=_n: [b(n, _in(g, (3, 5), d), _in(g, (3, 5), d))])
for _n in "logical_and logical_or".split():
    case(_n, ("i1",))(lambda b, g, d, n=_n: [b(n, _in(g, (3, 5), d), _in(g, (3, 5), d))])
case("logical_not", ("i1",))(_unary("logical_not"))


@case("where", (*FLOAT, "i64"))
def _where(b, g, d):
    c, x = _in(g, (3, 5), "i1"), _in(g, (3, 5), d)
    zero = b.constant(0, (3, 5), d)
    return [b("where", c, x, _in(g, (3, 5), d)), b("where", c, x, zero), b("where", c, zero, x)]


@case("check", (*FLOAT, "i64"))
def _check(b, g, d):  # (the condition holds: inputs have no nan; test_value_checks.py raises)
    x = _in(g, (3, 5), d)
    c = b("check", x, b("eq", x, x), message="x is nan")
    return [c, b("add", c, x)]


@case("cast", (*FLOAT, "i32", "i64", "i1"))
def _cast(b, g, d):
    x = _in(g, (3, 5), d)
    return [b("cast", x, dtype=t) for t in ("f32", "f64", "f16", "bf16", "i32", "i64", "i1")]


@case("constant broadcast", FLOAT)
def _constant(b, g, d):
    x = _in(g, (3, 5), d)
    dense = b("constant", value=np.arange(15.0).reshape(3, 5), shape=[3, 5], dtype=d)
    row = b("broadcast", _in(g, (5,), d), shape=[3, 5])
    return [b("add", x, b.constant(1.5, (3, 5), d)), b("mul", dense, row), row, b.constant(2.0, (2,), d)]


@case("sum max argmax", (*FLOAT, "i32", "i64"))
def _reduce(b, g, d):
    x = _in(g, (3, 4, 5), d)
    return [b("sum", x, axes=[0, 2]), b("max", x, axes=[1], keepdims=True), b("argmax", x, axis=2),
            b("sum", x, axes=[2], keepdims=True)]


@case("cumsum", ("f32", "f64", "i64"))
def _cumsum(b, g, d):
    x = _in(g, (3, 5), d)
    return [b("cumsum", x, axis=1), b("cumsum", x, axis=0, reverse=True)]


@case("sort argsort", ("f32", "f64", "i32", "i64"))
def _sort(b, g, d):
    x = _in(g, (3, 5), d)
    return [b(n, x, axis=ax, descending=desc) for n in ("sort", "argsort") for ax, desc in ((1, False), (0, True))]


@case("reshape transpose slice concat pad", FLOAT + ("i64",))
def _shapes(b, g, d):
    x = _in(g, (4, 6), d)
    return [b("reshape", x, shape=[6, 4]), b("transpose", x, perm=[1, 0]),
            b("slice", x, start=[1, 0], limit=[4, 6], step=[2, 3]), b("concat", x, x, axis=1),
            b("pad", x, low=[1, 0], high=[0, 2], value=1.5)]


@case("matmul", ("f32", "f64", "f16", "bf16"))
def _matmul(b, g, d):
    x, w = _in(g, (2, 3, 4), d), _in(g, (2, 4, 5), d)
    m = _in(g, (6, 4), d)
    return [b("matmul", x, w), b("matmul", m, b("transpose", _in(g, (5, 4), d), perm=[1, 0]))]


@case("conv2d conv2d_grad_input conv2d_grad_weight", ("f32", "f64", "f16"))
def _conv(b, g, d):
    x, w = _in(g, (2, 3, 7, 6), d), _in(g, (4, 3, 3, 2), d)
    geo = {"stride": [2, 1], "padding": [1, 0]}
    y = b("conv2d", x, w, **geo)
    dy = _in(g, tuple(y.type.shape), d)
    return [y, b("conv2d_grad_input", dy, w, input_shape=[2, 3, 7, 6], **geo),
            b("conv2d_grad_weight", x, dy, weight_shape=[4, 3, 3, 2], **geo),
            b("conv2d", x, _in(g, (6, 1, 3, 3), d), groups=3)]


@case("max_pool2d max_pool2d_grad avg_pool2d avg_pool2d_grad", ("f32", "f64", "bf16"))
def _pool(b, g, d):
    x = _in(g, (2, 3, 7, 6), d)
    tiles = b("max_pool2d", x, kernel=[2, 2], stride=[2, 2])
    over = b("max_pool2d", x, kernel=[3, 3], stride=[2, 2], padding=[1, 1])
    return [tiles, over, b("max_pool2d_grad", x, _in(g, tuple(tiles.type.shape), d), kernel=[2, 2], stride=[2, 2]),
            b("max_pool2d_grad", x, _in(g, tuple(over.type.shape), d), kernel=[3, 3], stride=[2, 2], padding=[1, 1]),
            b("avg_pool2d", x, kernel=[2, 3], stride=[1, 2]),
            b("avg_pool2d_grad", _in(g, (2, 3, 3, 3), d), kernel=[2, 2], stride=[2, 2], input_shape=[2, 3, 7, 6])]


@case("take one_hot random", ("f32",))
def _gather(b, g, d):
    x, idx = _in(g, (5, 3), d), _in(g, (2, 4), "i64")
    seed = _in(g, (), "i64")
    return [b("take", x, idx, axis=0), b("one_hot", idx, num_classes=5),
            b("random", seed, shape=[3, 4], distribution="normal", dtype=d),
            b("random", seed, shape=[5, 3], distribution="uniform", dtype=d),
            b("random", seed, shape=[7], distribution="uniform", dtype="bf16")]


@case("all_reduce")
def _all_reduce(b, g, d):  # one process: the identity
    return [b("all_reduce", _in(g, (3, 5), d)), b("all_reduce", _in(g, (2,), d), reduction="sum")]


@case("all_gather")
def _all_gather(b, g, d):  # one process: the identity
    return [b("all_gather", _in(g, (3, 5), d)), b("all_gather", _in(g, (2,), d))]


@case("index_add")
def _index_add(b, g, d):  # indices in {0, 1}: many duplicates
    v = _in(g, (6, 2, 3), d)
    return [b("index_add", v, _in(g, (6,), "i64"), size=4), b("index_add", _in(g, (5,), d), _in(g, (5,), "i32"), size=3)]


@case("index_max")
def _index_max(b, g, d):  # indices in {0, 1}: many duplicates
    v = _in(g, (6, 2, 3), d)
    return [b("index_max", v, _in(g, (6,), "i64"), size=4), b("index_max", _in(g, (5,), d), _in(g, (5,), "i32"), size=3)]


@case("svd eigh qr pinv", ("f32", "f64"))
def _factorizations(b, g, d):  # (the reference's numpy.linalg: the generated code calls it)
    x, y = _in(g, (2, 4, 3), d), _in(g, (3, 3), d)
    return [b("svd", x), b("svd", y, full_matrices=True), b("eigh", y), b("qr", x), b("qr", y, complete=True),
            b("pinv", x, rtol=1e-6), b("pinv", b("add", y, b("transpose", y, perm=[1, 0])), hermitian=True)]


@case("eig ldl_factor ldl_solve", ("f32", "f64"))
def _general_factorizations(b, g, d):  # geev, sytrf, sytrs through the reference (the generated code calls it)
    x, y, rhs = _in(g, (2, 3, 3), d), _in(g, (4, 4), d), _in(g, (4, 2), d)
    sym = b("add", y, b("transpose", y, perm=[1, 0]))
    packed = b("ldl_factor", sym)
    ld = b("slice", packed, start=[0, 0], limit=[4, 4], step=[1, 1])
    piv = b("reshape", b("cast", b("slice", packed, start=[4, 0], limit=[5, 4], step=[1, 1]), dtype="i32"), shape=[4])
    return [b("eig", x), b("eig", y), packed, b("ldl_solve", ld, piv, rhs)]


@case("bitcast", ("f32", "f16", "i32", "i8"))
def _bitcast(b, g, d):
    x = _in(g, (3, 4), d)
    return [b("bitcast", x, dtype={"f32": "i32", "f16": "i16", "i32": "f32", "i8": "ui8"}[d], source=d),
            b("bitcast", x, dtype="i8", source=d)]


@case("iota", ("f32", "i32", "i64"))
def _iota(b, g, d):
    return [b("iota", shape=[3, 4], axis=1, dtype=d), b("iota", shape=[2, 3, 2], axis=0, dtype=d)]


def test_every_op_in_the_registry_has_a_case():
    assert set(OPS) - {"fusion", "custom_vjp"} == set(CASES)  # (custom_vjp is inlined before any backend)


def _inputs(g: Graph, seed: int) -> list[np.ndarray]:
    args = random_inputs(g, seed)
    rng = np.random.default_rng(seed)
    for i, v in enumerate(g.inputs):  # keep gathers in range; log/sqrt see some negatives (nan) on purpose
        if v.type.dtype.is_int:
            args[i] = rng.integers(0, 2, v.type.shape).astype(v.type.dtype.np)
    return args


def _same(got: np.ndarray, want: np.ndarray, exact: bool, what: str) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, what
    if exact:
        assert np.array_equal(got, want, equal_nan=got.dtype.kind == "f"), what
    else:
        tol = {np.dtype(np.float64): 1e-12, np.dtype(np.float16): 2e-3}.get(got.dtype, 2e-6)
        scale = max(float(np.nanmax(np.abs(want))) if want.size else 0.0, 1.0)
        np.testing.assert_allclose(got, want, rtol=0, atol=tol * scale * 8, equal_nan=True, err_msg=what)


def check(g: Graph, seeds=(0, 1)) -> None:
    """Generated vs interpreted on random inputs; twice each, so reused buffers are exercised."""
    verify(g)
    exe = GeneratedExecutable(g)
    exact = not any(op.has_trait("contraction") for op in g.walk())
    for seed in seeds:
        args = _inputs(g, seed)
        want = interpret(g, *args)
        first = exe(*args)
        again = exe(*args)
        for k, (a, b2, w) in enumerate(zip(first, again, want)):
            _same(a, w, exact, f"output #{k} of\n{g}\n{exe.source}")
            assert np.array_equal(a, b2, equal_nan=True)


def _one_op_graph(name: str, dtype: str, fused: bool) -> Graph:
    build, _ = CASES[name]
    g = Graph("f")
    outs = build(Builder(g), g, dtype)
    g.set_outputs(outs)
    if fused:
        ops = [op for op in g.ops if op.name != "constant"]
        for op in ops:
            outline([op], f"fused_{op.name}")
    return g


@pytest.mark.parametrize("fused", [False, True], ids=["top", "fused"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_each_op_matches_the_interpreter(name, fused):
    for dtype in CASES[name][1]:
        check(_one_op_graph(name, dtype, fused))


UNARY = ["neg", "exp", "tanh", "sigmoid", "abs", "relu", "rsqrt", "log", "stop_gradient"]
BINARY = ["add", "sub", "mul", "maximum", "div", "gt"]


@st.composite
def chains(draw) -> Graph:
    """Random graphs of elementwise chains, broadcasts, reductions and matmuls, many outputs."""
    R, C = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    dtype = draw(st.sampled_from(["f32", "f64"]))
    g = Graph("f")
    b = Builder(g)
    vals = [g.add_input(TensorType((R, C), dtype), n) for n in "xy"]
    row, w = g.add_input(TensorType((C,), dtype), "row"), g.add_input(TensorType((C, C), dtype), "w")
    extra = []
    for _ in range(draw(st.integers(2, 12))):
        kind = draw(st.sampled_from(["unary", "binary", "binary", "reduce", "matmul", "where"]))
        a = draw(st.sampled_from(vals))
        other = draw(st.sampled_from([*vals, "row", "scalar"]))
        if other == "row":
            other = b("broadcast", row, shape=[R, C])
        elif other == "scalar":
            other = b.constant(draw(st.sampled_from([0.0, 0.5, -2.0])), (R, C), dtype)
        if kind == "unary":
            vals.append(b(draw(st.sampled_from(UNARY)), a))
        elif kind == "binary":
            op = draw(st.sampled_from(BINARY))
            v = b(op, a, other)
            vals.append(b("cast", v, dtype=dtype) if op == "gt" else v)
        elif kind == "where":
            vals.append(b("where", b("gt", a, other), a, other))
        elif kind == "reduce":
            axes = draw(st.sampled_from([[0], [1], [0, 1]]))
            red = b(draw(st.sampled_from(["sum", "max"])), a, axes=axes, keepdims=True)
            extra.append(red)
            vals.append(b(draw(st.sampled_from(BINARY[:4])), a, b("broadcast", red, shape=[R, C])))
        else:
            rhs = b("transpose", w, perm=[1, 0]) if draw(st.booleans()) else w
            vals.append(b("matmul", a, rhs))
    g.set_outputs(draw(st.lists(st.sampled_from(vals[2:] + extra), min_size=1, max_size=4)))
    return g


@settings(max_examples=60, deadline=None)
@given(chains(), st.booleans())
def test_random_op_chains_match_the_interpreter(g, optimize):
    if optimize:
        PassManager.parse(DEFAULT_PIPELINE, target=NUMPY).run(g)
    check(g, seeds=(0,))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(3, 18), st.integers(3, 18),
       st.integers(1, 3), st.integers(1, 3), st.integers(1, 2), st.integers(0, 1), st.integers(1, 2))
def test_convolutions_and_pooling_match_the_interpreter(n, c, o, h, w, kh, kw, s, p, dil):
    _check_conv(n, c, o, h, w, kh, kw, s, p, dil)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(1, 3), st.integers(1, 3), st.integers(5, 18), st.integers(5, 18),
       st.integers(1, 3), st.integers(1, 2), st.integers(0, 1), st.integers(1, 2), st.sampled_from([1, 300, 2000, 9000]))
def test_chunked_im2col_matches_the_interpreter(n, c, o, h, w, k, s, p, dil, budget):
    """im2col workspaces are filled a chunk of samples or output rows at a time; small budgets make
    several chunks (the last one partial) for both layouts."""
    from avalon.codegen.numpy import kernels
    saved = kernels.CHUNK_BYTES
    kernels.CHUNK_BYTES = budget
    try:
        _check_conv(n, c, o, h, w, k, k, s, p, dil)
    finally:
        kernels.CHUNK_BYTES = saved


def _check_conv(n, c, o, h, w, kh, kw, s, p, dil):
    if h + 2 * p < dil * (kh - 1) + 1 or w + 2 * p < dil * (kw - 1) + 1:
        return
    g = Graph("f")
    b = Builder(g)
    x, wt = _in(g, (n, c, h, w), "f32"), _in(g, (o, c, kh, kw), "f32")
    geo = {"stride": [s, s], "padding": [p, p], "dilation": [dil, dil]}
    y = b("conv2d", x, wt, **geo)
    dy = _in(g, tuple(y.type.shape), "f32")
    outs = [y, b("conv2d_grad_input", dy, wt, input_shape=[n, c, h, w], **geo),
            b("conv2d_grad_weight", x, dy, weight_shape=[o, c, kh, kw], **geo)]
    if h >= kh and w >= kh:
        pooled = b("max_pool2d", x, kernel=[kh, kh], stride=[kh, kh])
        outs += [pooled, b("max_pool2d_grad", x, b("relu", pooled), kernel=[kh, kh], stride=[kh, kh])]
    g.set_outputs(outs)
    check(g, seeds=(0,))


def test_splat_constants_of_any_shape_are_scalars():
    """A splat constant of a full shape (canonicalize folds broadcasts of splats into them) is a numpy
    scalar, not a dense global: a select against +0 is then the bit-pattern multiply, one pass."""
    g = Graph("f")
    b = Builder(g)
    x, y = _in(g, (3, 5), "f32"), _in(g, (3, 5), "f32")
    zeros, ones = b.constant(0.0, (3, 5), "f32"), b.constant(1.0, (3, 5), "f32")
    g.set_outputs([b("where", b("gt", x, y), x, zeros), b("add", x, ones)])
    e = GeneratedExecutable(g).emission
    assert not any(isinstance(v, np.ndarray) and v.size > 1 for v in e.consts.values())
    assert ".view(np.uint32)" in e.source
    check(g)


def test_large_planes_take_the_batch_first_layout():
    """LeNet's conv1 (24x24 planes) runs batch first, conv2 (8x8) batch last; both match."""
    g = Graph("f")
    b = Builder(g)
    x, w1, w2 = _in(g, (4, 1, 28, 28), "f32"), _in(g, (6, 1, 5, 5), "f32"), _in(g, (5, 6, 5, 5), "f32")
    y1 = b("conv2d", x, w1)
    y2 = b("conv2d", b("max_pool2d", y1, kernel=[2, 2], stride=[2, 2]), w2)
    g.set_outputs([y1, y2, b("conv2d_grad_weight", x, y1, weight_shape=[6, 1, 5, 5])])
    src = GeneratedExecutable(g).source
    assert "conv2d_bf" in src and "conv2d_bl" in src and "conv2d_grad_weight_bf" in src
    check(g)


def _train_step(model, opt, loss_fn):
    def step(m, o, *xs):
        loss, grads = av.value_and_grad(loss_fn)(m, *xs)
        o.step(grads)
        return loss
    return step


def _vae_loss(m, x):
    recon, mu, logvar = m(x)
    return zoo.vae_loss(recon, x, mu, logvar)


@pytest.mark.parametrize("which", ["lenet", "vae"])
def test_training_steps_match_the_interpreter(which, rng):
    """Two compiled steps on generated code and on the interpreter from the same weights and seeds."""
    from avalon.codegen.numpy import NumpyBackend, NumpyExecutable
    from avalon.compiler.backends import get_backend

    class Interpreted(NumpyBackend):
        name = "interpreted"

        def compile(self, graph):
            return NumpyExecutable(graph)

    if which == "lenet":
        make, loss_fn = zoo.LeNet, lambda m, x, y: zoo.nll(m(x), y)  # nll is a criterion
        batch = [rng.standard_normal((8, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 8)]
    else:
        make, loss_fn = zoo.VAE, _vae_loss
        batch = [rng.random((8, 784)).astype(np.float32)]
    results = []
    for backend in (get_backend("numpy"), Interpreted()):
        av.manual_seed(0)
        model = make()
        opt = optim.SGD(model, lr=0.01, momentum=0.9)
        step = av.compile(_train_step(model, opt, loss_fn), backend=backend)
        losses = [float(step(model, opt, *batch)) for _ in range(2)]
        results.append((losses, {k: v.numpy() for k, v in av.nn.named_parameters(model)}))
        if backend.name == "numpy":
            assert step.inspect(model, opt, *batch).source.startswith("def step(")
    (l1, p1), (l2, p2) = results
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    for k in p1:
        np.testing.assert_allclose(p1[k], p2[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_outputs_are_fresh_and_never_overwritten_by_the_next_call(rng):
    g = Graph("f")
    b = Builder(g)
    x = _in(g, (3, 4), "f32")
    e = b("exp", x)
    g.set_outputs([b("add", e, e), x, b("reshape", x, shape=[4, 3]), e, e])
    PassManager.parse(DEFAULT_PIPELINE, target=NUMPY).run(g)
    exe = GeneratedExecutable(g)
    a = rng.standard_normal((3, 4)).astype(np.float32)
    first = exe(a)
    kept = [o.copy() for o in first]
    exe(a + 1)
    for o, k in zip(first, kept):
        assert np.array_equal(o, k)
    assert not any(np.may_share_memory(o, a) for o in first)
    assert not np.may_share_memory(first[3], first[4])


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_sigmoid_with_one_exp_is_the_reference_bit_for_bit(dtype):
    """The generated sigmoid takes exp once (z = exp(-|x|), numerator max(z, [x >= 0])): it must
    equal the reference's exp(min(x, 0)) / (1 + exp(-|x|)) exactly, at the edges too."""
    g = Graph("f")
    b = Builder(g)
    x = _in(g, (64, 50), dtype)
    g.set_outputs([b("sigmoid", x)])
    exe = GeneratedExecutable(g)
    assert exe.source.count("np.exp(") == 1
    f = np.float32 if dtype == "f32" else np.float64
    edge = np.array([0.0, -0.0, np.nan, -np.nan, np.inf, -np.inf, 1e-45, -1e-45, 88.7, -88.7, 104.0, -104.0,
                     750.0, -750.0, 1.0, -1.0], f)
    xs = np.random.default_rng(0).standard_normal((64, 50)).astype(f) * 30
    xs.reshape(-1)[: edge.size] = edge
    got, = exe(xs)
    want, = interpret(g, xs)
    assert np.array_equal(got, want, equal_nan=True)


RANDOM_SEEDS = (0, 1, -1, 12345, -987654321, 2**31 - 1, -2**31, 2**32, 2**32 - 1, 0x1234_5678_9ABC_DEF0,
                -0x0FED_CBA9_8765_4321, 2**63 - 1, -2**63)
RANDOM_SHAPES = ((), (1,), (7,), (3, 5), (128, 20), (2, 0, 3), (3, 1, 11), (1, 257))


@pytest.mark.parametrize("fused", [False, True], ids=["top", "fused"])
@pytest.mark.parametrize("distribution", ["uniform", "normal"])
@pytest.mark.parametrize("dtype", FLOAT)
def test_random_is_generated_and_is_the_reference_bit_for_bit(dtype, distribution, fused):
    """The `random` emitter (kernels.random_uniform / random_normal) reproduces the reference rule
    exactly: odd and empty shapes, 0-d, i64 and i32 seeds (negative, past 2**32, the int64 extremes),
    twice per seed so the reused workspaces are exercised; no reference fallback for it."""
    g = Graph("f")
    b = Builder(g)
    seed, seed32 = _in(g, (), "i64"), _in(g, (), "i32")
    outs = [b("random", seed, shape=list(s), distribution=distribution, dtype=dtype) for s in RANDOM_SHAPES]
    outs.append(b("random", seed32, shape=[5, 3], distribution=distribution, dtype=dtype))
    g.set_outputs(outs)
    if fused:
        for op in list(g.ops):
            outline([op], f"fused_{op.name}")
    exe = GeneratedExecutable(g)
    assert "_ev('random'" not in exe.source
    assert exe.source.count(f"K.random_{distribution}(") == len(outs)
    for s in RANDOM_SEEDS:
        args = [np.array(s, np.int64), np.array(s, np.int64).astype(np.int32)]  # the i32 seed wraps
        want = interpret(g, *args)
        for got in (exe(*args), exe(*args)):
            for k, (a, w) in enumerate(zip(got, want)):
                assert a.dtype == w.dtype and a.shape == w.shape
                assert np.array_equal(a, w), f"seed {s}, output #{k} ({w.shape} {dtype} {distribution})"


def test_random_keys_from_runtime_seeds_are_the_references():
    """Generated code derives the keys per call with python ints (`fmix32_int`): the same words as
    the vectorized `fmix32` the reference hashes counters with, from a 0-d array or numpy scalar seed."""
    from avalon.ir.reference.gather import fmix32, fmix32_int, seed_keys
    words = np.random.default_rng(0).integers(0, 2**32, 5000, dtype=np.uint64).astype(np.uint32)
    words[:4] = [0, 1, 2**31, 2**32 - 1]
    assert [fmix32_int(int(w)) for w in words] == fmix32(words).tolist()
    seeds = [*RANDOM_SEEDS, *np.random.default_rng(1).integers(-2**63, 2**63 - 1, 200, dtype=np.int64).tolist()]
    for s in seeds:
        assert seed_keys(np.array(s, np.int64)) == seed_keys(np.int64(s)) == seed_keys(s), s

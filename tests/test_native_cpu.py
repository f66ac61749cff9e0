"""`backend="cpu"`: the numpy backend with groups' elementwise runs compiled to C loops, checked
against the reference interpreter within float tolerance (exp/log come from libmvec, ulps apart)."""
from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
from helpers import assert_same_training, train, vae_loss
from hypothesis import given, settings
from hypothesis import strategies as st
from test_numpy_codegen import _inputs, chains

from avalon import zoo
from avalon.codegen.numpy import GeneratedExecutable, native
from avalon.codegen.numpy.backend import NUMPY
from avalon.ir import Builder, Graph, TensorType, interpret
from avalon.ir.fusion import outline
from avalon.passes import DEFAULT_PIPELINE, PassManager

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                reason="backend='cpu' needs a C compiler")


@pytest.fixture(autouse=True)
def small_runs(monkeypatch, tmp_path):
    """Compile runs of any size, into a cache of this test's own."""
    monkeypatch.setattr(native, "MIN_ELEMENTS", 0)
    monkeypatch.setenv("AVALON_CACHE_DIR", str(tmp_path))


def _close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, what
    if got.dtype.kind != "f":
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    tol = 1e-12 if got.dtype == np.float64 else 2e-6
    scale = max(float(np.nanmax(np.abs(want[np.isfinite(want)]))) if np.isfinite(want).any() else 0.0, 1.0)
    np.testing.assert_allclose(got, want, rtol=tol * 4, atol=tol * scale * 8, equal_nan=True, err_msg=what)


def _check(g: Graph, seed: int = 0) -> GeneratedExecutable:
    exe = GeneratedExecutable(g, native=True)
    args = _inputs(g, seed)
    want = interpret(g, *args)
    for _ in range(2):  # twice: the buffers are reused
        for k, (a, w) in enumerate(zip(exe(*args), want)):
            _close(a, w, f"output #{k} of\n{g}\n{exe.source}")
    return exe


@settings(max_examples=40, deadline=None)
@given(chains())
def test_compiled_runs_match_the_interpreter(g):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(native, "MIN_ELEMENTS", 0)
        PassManager.parse(DEFAULT_PIPELINE, target=NUMPY).run(g)
        _check(g)


def _group(dtype: str = "f32") -> Graph:
    """Splats, a row broadcast, a column broadcast, a 0-d broadcast, selects, casts, bool outputs."""
    g = Graph("f")
    b = Builder(g)
    S = [6, 5]
    x, y = g.add_input(TensorType((6, 5), dtype), "x"), g.add_input(TensorType((6, 5), dtype), "y")
    row = b("broadcast", g.add_input(TensorType((5,), dtype), "row"), shape=S)
    col = b("broadcast", g.add_input(TensorType((6, 1), dtype), "col"), shape=S)
    s = b("broadcast", g.add_input(TensorType((), dtype), "s"), shape=S)
    t = b("sigmoid", b("add", b("mul", x, row), col))
    m = b("gt", t, b.constant(0.5, (6, 5), dtype))
    u = b("where", m, b("log", b("maximum", y, s)), b("exp", b("neg", t)))
    g.set_outputs([b("sub", u, b("tanh", x)), m, b("cast", m, dtype=dtype), b("minimum", u, row)])
    outline([op for op in g.ops if op.name != "constant"], "fused")
    return g


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_broadcasts_selects_and_casts_compile_and_match(dtype):
    exe = _check(_group(dtype))
    assert exe.emission.native and "run0(" in exe.source


def test_nan_and_edges_follow_numpy():
    """maximum/minimum propagate nan, comparisons with nan are false, as numpy's."""
    g = _group()
    exe = GeneratedExecutable(g, native=True)
    args = _inputs(g, 1)
    args[0].reshape(-1)[:4] = [np.nan, np.inf, -np.inf, 0.0]
    args[1].reshape(-1)[:3] = [np.nan, -1.0, 0.0]
    for k, (a, w) in enumerate(zip(exe(*args), interpret(g, *args))):
        _close(a, w, f"output #{k}")


def test_a_non_contiguous_input_is_read_through_a_copy():
    g = _group()
    exe = GeneratedExecutable(g, native=True)
    args = _inputs(g, 2)
    args[0] = np.asfortranarray(args[0])
    for a, w in zip(exe(*args), interpret(g, *args)):
        _close(a, w, "fortran-ordered input")


def test_without_a_compiler_it_runs_numpy_code_and_says_so(monkeypatch, caplog):
    from avalon.codegen.numpy import backend
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setattr(backend, "_warned_native", False)
    g = _group()
    exe = GeneratedExecutable(g, native=True)
    args = _inputs(g, 3)
    with caplog.at_level(logging.WARNING, logger="avalon.numpy"):
        got = exe(*args)
    assert "compiled loops unavailable" in caplog.text and "/nonexistent/cc" in caplog.text
    assert not exe.emission.native and "run0(" not in exe.source
    for a, w in zip(got, interpret(g, *args)):
        np.testing.assert_array_equal(a, w)  # plain generated numpy code: bit for bit


def test_a_cached_library_that_does_not_load_is_rebuilt():
    fns = ["void run0(void *p0) { ((float *)p0)[0] = 2.0f; }"]
    path = native.library_path(fns)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a shared library")  # a truncated or foreign file where the library belongs
    ns: dict = {}
    native.bind(native.build(fns), [1], ns)
    assert path.read_bytes()[:4] == b"\x7fELF"  # rebuilt in place
    out = np.zeros(1, np.float32)
    ns["run0"](out.ctypes.data)
    assert out[0] == 2.0


def test_a_cache_that_cannot_be_written_builds_privately_and_says_so_once(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("AVALON_CACHE_DIR", str(blocker / "cache"))  # mkdir under a file fails
    monkeypatch.setattr(native, "_warned_cache", False)
    with caplog.at_level(logging.WARNING, logger="avalon.numpy"):
        for value in (2.0, 3.0):
            ns: dict = {}
            native.bind(native.build([f"void run0(void *p0) {{ ((float *)p0)[0] = {value}f; }}"]), [1], ns)
            out = np.zeros(1, np.float32)
            ns["run0"](out.ctypes.data)
            assert out[0] == value
    assert caplog.text.count("cannot write the library cache") == 1


@pytest.mark.parametrize("which", ["lenet", "vae"])
def test_training_steps_match_the_interpreter(which, rng, monkeypatch):
    """Two compiled steps on backend='cpu' and on the interpreter from the same weights and seeds."""
    from avalon.codegen.numpy import NumpyBackend, NumpyExecutable

    class Interpreted(NumpyBackend):
        name = "interpreted"

        def compile(self, graph):
            return NumpyExecutable(graph)

    monkeypatch.setattr(native, "MIN_ELEMENTS", 64)
    if which == "lenet":
        make, loss_fn = zoo.LeNet, lambda m, x, y: zoo.nll(m(x), y)
        batch = [rng.standard_normal((4, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 4)]
    else:
        make, loss_fn, batch = zoo.VAE, vae_loss, [rng.random((8, 784)).astype(np.float32)]
    cpu = train(make, loss_fn, batch, "cpu", 2, 0.01, momentum=0.9)
    assert next(iter(cpu[0].cache.values())).executable.emission.native  # runs were compiled
    assert_same_training(cpu, train(make, loss_fn, batch, Interpreted(), 2, 0.01, momentum=0.9))


def test_bool_arithmetic_stays_numpy():
    """numpy's + on bools is or (True + True is True): a C loop would store 2, so it is not compiled."""
    g = Graph("f")
    b = Builder(g)
    x, y = g.add_input(TensorType((4, 5), "i1"), "x"), g.add_input(TensorType((4, 5), "i1"), "y")
    g.set_outputs([b("add", b("logical_and", x, y), y), b("maximum", x, b("logical_not", y))])
    outline(list(g.ops), "fused")
    exe = GeneratedExecutable(g, native=True)
    a, c = np.random.default_rng(0).random((2, 4, 5)) > 0.5
    for got, want in zip(exe(a, c), interpret(g, a, c)):
        np.testing.assert_array_equal(got, want)
    assert not exe.emission.native


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("hw,k", [((8, 6), 2), ((7, 9), 2), ((9, 9), 3), ((5, 4), 1)])
def test_compiled_max_pool_and_its_gradient_are_the_reference_bit_for_bit(dtype, hw, k):
    """Non-overlapping max pools as compiled loops: numpy's maximum chain (nan propagates) and dy to
    the first tap equal to the max, with ties, nan windows and rows no window covers."""
    g = Graph("f")
    b = Builder(g)
    h, w = hw
    x = g.add_input(TensorType((2, 3, h, w), dtype), "x")
    y = b("max_pool2d", x, kernel=[k, k], stride=[k, k], padding=[0, 0])
    dy = g.add_input(TensorType(y.type.shape, dtype), "dy")
    g.set_outputs([y, b("max_pool2d_grad", x, dy, kernel=[k, k], stride=[k, k], padding=[0, 0])])
    exe = GeneratedExecutable(g, native=True)
    assert len(exe.emission.native) == 2  # the pool and its gradient, both compiled
    rng = np.random.default_rng(k)
    xs = rng.integers(-2, 3, (2, 3, h, w)).astype(dtype.replace("f", "float"))  # many ties
    xs[0, 0, 0, 0] = np.nan
    xs[1, 2, -1, -1] = np.nan
    dys = rng.standard_normal(y.type.shape).astype(xs.dtype)
    for got, want in zip(exe(xs, dys), interpret(g, xs, dys)):
        assert np.array_equal(got, want, equal_nan=True)


# -- loop nests: backend='cpu' groups a whole chain with its sums, one compiled loop computes it -----------

def _cpu(g: Graph) -> GeneratedExecutable:
    """`g` through the default pipeline for the cpu target and the cpu backend's compile."""
    from avalon.codegen.numpy.backend import CpuBackend
    from avalon.codegen.numpy.loops import CPU
    PassManager.parse(DEFAULT_PIPELINE, target=CPU).run(g)
    return CpuBackend().compile(g)


def _near(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Sums add in another order (a double accumulator per loop, numpy's pairwise float sums): compare
    within a tolerance of the output's magnitude, not ulps."""
    assert got.dtype == want.dtype and got.shape == want.shape, what
    tol = 1e-10 if got.dtype == np.float64 else 5e-5
    finite = np.abs(want[np.isfinite(want)])
    scale = max(float(finite.max()) if finite.size else 0.0, 1.0)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale, equal_nan=True, err_msg=what)


@st.composite
def loop_nests(draw) -> Graph:
    """Elementwise chains over one shape with row and scalar broadcasts and selects, sums of chain
    values over drawn axes (kept or dropped), ops on the sums, and sums read back into the chain."""
    shape = draw(st.sampled_from([(3, 5), (4, 1, 6), (2, 3, 4), (1, 7), (6,), (5, 2, 1)]))
    dtype = draw(st.sampled_from(["f32", "f64"]))
    g = Graph("f")
    b = Builder(g)
    vals = [g.add_input(TensorType(shape, dtype), n) for n in "xy"]
    row = g.add_input(TensorType(shape[-1:], dtype), "row")
    outs = []
    for _ in range(draw(st.integers(3, 14))):
        kind = draw(st.sampled_from(["unary", "binary", "binary", "where", "sum", "sum", "read back"]))
        a = draw(st.sampled_from(vals))
        other = draw(st.sampled_from([*vals, "row", "scalar"]))
        if other == "row":
            other = b("broadcast", row, shape=list(shape))
        elif other == "scalar":
            other = b.constant(draw(st.sampled_from([0.5, -2.0, 3.0])), shape, dtype)
        axes = draw(st.lists(st.integers(0, len(shape) - 1), min_size=1, max_size=len(shape), unique=True))
        if kind == "unary":
            vals.append(b(draw(st.sampled_from(["neg", "exp", "tanh", "sigmoid", "abs", "relu", "log"])), a))
        elif kind == "binary":
            vals.append(b(draw(st.sampled_from(["add", "sub", "mul", "maximum", "div"])), a, other))
        elif kind == "where":
            vals.append(b("where", b("gt", a, other), a, other))
        elif kind == "sum":
            s = b("sum", a, axes=axes, keepdims=draw(st.booleans()))
            outs.append(b("mul", s, b.constant(0.5, s.type.shape, dtype)) if draw(st.booleans()) else s)
        else:  # a sum read back: the loop must end before the value reading it
            s = b("sum", a, axes=axes, keepdims=True)
            vals.append(b("sub", a, b("broadcast", s, shape=list(shape))))
    state = []
    if len(shape) > 1 and draw(st.booleans()):  # a column sum of a value read through `row`: row's type
        rows = b("broadcast", row, shape=list(shape))
        state = [b("sum", b("mul", draw(st.sampled_from(vals)), rows), axes=list(range(len(shape) - 1)),
                   keepdims=False)]
    g.set_outputs(state + draw(st.lists(st.sampled_from(vals[2:] + outs or vals), min_size=1, max_size=5)))
    return g


@settings(max_examples=60, deadline=None)
@given(loop_nests(), st.integers(0, 3), st.booleans())
def test_loops_with_sums_match_the_interpreter(g, seed, donate):
    """As compiled; with `donate`, each output also written into an input of its type (a state update)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(native, "MIN_ELEMENTS", 0)
        exe = _cpu(g)
        if donate:
            free = list(range(len(g.inputs)))
            for o, v in enumerate(g.outputs):
                j = next((j for j in free if g.inputs[j].type == v.type), None)
                if j is not None:
                    exe.donated = {**exe.donated, o: j}
                    free.remove(j)
        args = _inputs(g, seed)
        want = interpret(g, *[a.copy() for a in args])
        for _ in range(2):  # twice: sums must start from zero every call
            for k, (a, w) in enumerate(zip(exe(*[a.copy() for a in args]), want)):
                _near(a, w, f"output #{k} of\n{g}\n{exe.source}")


def _decoder_loss(dtype: str = "f32") -> Graph:
    """A VAE decoder's last layer and loss, by hand: bias + sigmoid, a clamped log-likelihood, its
    full sum, the gradient and its column sum (the bias gradient)."""
    g = Graph("f")
    b = Builder(g)
    n, k, m = 16, 8, 300
    h, w = g.add_input(TensorType((n, k), dtype), "h"), g.add_input(TensorType((k, m), dtype), "w")
    bias, x = g.add_input(TensorType((m,), dtype), "bias"), g.add_input(TensorType((n, m), dtype), "x")
    s = b("sigmoid", b("add", b("matmul", h, w), b("broadcast", bias, shape=[n, m])))
    one = b.constant(1.0, (n, m), dtype)
    floor = b.constant(-100.0, (n, m), dtype)
    ll = b("add", b("mul", x, b("maximum", b("log", s), floor)),
           b("mul", b("sub", one, x), b("maximum", b("log", b("sub", one, s)), floor)))
    loss = b("neg", b("sum", ll, axes=[0, 1], keepdims=False))
    dz = b("sub", s, x)
    g.set_outputs([loss, dz, b("sum", dz, axes=[0], keepdims=False)])
    return g


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_a_loss_and_its_gradient_are_one_group_and_one_loop(dtype):
    g = _decoder_loss(dtype)
    exe = _cpu(g)
    groups = [op for op in g.ops if op.name == "fusion"]
    assert len(groups) == 1, g  # the default kinds make three groups of it (see the next test)
    src = exe.source
    assert src.count("void run") == 1 and "reduction(+:a0)" in src and "+= " in src, src
    args = _inputs(g, 4)
    args[3] = np.random.default_rng(4).random((16, 300)).astype(args[3].dtype)  # targets in [0, 1)
    want = interpret(g, *args)
    for _ in range(2):
        for k, (a, w) in enumerate(zip(exe(*args), want)):
            _near(a, w, f"output #{k}")


def test_the_default_kinds_refuse_what_a_loop_takes():
    """The Triton kinds keep a contraction and reductions apart; the cpu target says why it takes them."""
    from avalon.codegen.numpy.loops import CPU, LOOP
    from avalon.passes.target import KernelGroup
    g = _decoder_loss()
    ops = [op for op in g.ops if op.name != "constant"]
    group = KernelGroup.of(ops, list(g.outputs))
    assert not NUMPY.classify(group) and "cannot share a kernel" in NUMPY.classify(group).reason
    assert CPU.classify(group).name == "loop" and CPU.classify(group).ok
    two = KernelGroup.of(ops + [op for op in ops if op.name == "matmul"], list(g.outputs))
    assert "one contraction" in next(LOOP.issues(two)).text


def test_a_sum_whose_storage_another_array_shares_stays_numpy(monkeypatch):
    """The loop zeroes a sum's storage first: if a dead value's slot was reused for it, numpy's passes run."""
    g = _decoder_loss()
    src = _cpu(g).source
    monkeypatch.setattr(native, "_overlap", lambda *a: True)
    exe2 = _cpu(_decoder_loss())
    assert "reduction(+:" in src and "reduction(+:" not in exe2.source
    args = _inputs(g, 5)
    for a, w in zip(exe2(*args), interpret(g, *args)):
        _near(a, w, "numpy passes")


def test_the_overlap_check_keeps_a_sum_alone_on_its_storage():
    """What the check above guards: a sum's result on a slot another name of the loop also uses (even of
    the same layout) is refused; alone on its slot, or elementwise names of one layout sharing one, pass."""
    from types import SimpleNamespace

    from avalon.codegen.numpy.generator import View
    t = TensorType((4, 5), "f32")
    gen = SimpleNamespace(views={"s0_1": View("slot", 0, t), "s0_2": View("slot", 0, t), "s1_3": View("slot", 1, t),
                                 "s2_4": View("slot", 2, TensorType((5,), "f32"))})
    loads_and_store = {"s0_1": ("p0", False), "s0_2": ("p1", True)}
    assert not native._overlap(gen, loads_and_store, set())  # same element, same index: in place is fine
    assert native._overlap(gen, loads_and_store, {"p1"})  # but a sum zeroes its storage first
    assert not native._overlap(gen, {"s0_1": ("p0", False), "s2_4": ("p1", True)}, {"p1"})
    other = {"s0_1": ("p0", False), "s0_2": ("p1", True)}
    gen.views["s0_2"] = View("slot", 0, TensorType((20,), "f32"))  # another shape on the slot, written
    assert native._overlap(gen, other, set())


def test_a_sum_written_into_a_donated_state_the_loop_reads_stays_numpy():
    """The loop zeroes a sum's storage first: a donated state read (broadcast) by the same loop must not
    be that storage (it would read zeros). numpy's passes read it all before the sum writes."""
    g = Graph("f")
    b = Builder(g)
    x, s = g.add_input(TensorType((4, 5), "f32"), "x"), g.add_input(TensorType((5,), "f32"), "s")
    y = b("mul", b("exp", x), b("broadcast", s, shape=[4, 5]))
    g.set_outputs([b("sum", y, axes=[0], keepdims=False)])
    exe = _cpu(g)
    exe.donated = {0: 1}
    xv, sv = _inputs(g, 6)
    want = interpret(g, xv, sv.copy())[0]
    _near(exe(xv, sv.copy())[0], want, exe.source)


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("n,c,h,o,k,s,p,d", [(16, 6, 12, 10, 5, 1, 0, 1), (8, 3, 9, 4, 3, 2, 1, 1), (4, 2, 11, 3, 3, 1, 2, 2)])
def test_compiled_col2im_is_the_numpy_scatter_bit_for_bit(dtype, n, c, h, o, k, s, p, d):
    """A batch-last conv input gradient's tap adds as one compiled loop, in numpy's tap order: the same
    sums as the numpy backend's (strides, padding, dilation)."""
    g = Graph("f")
    b = Builder(g)
    oh = (h + 2 * p - d * (k - 1) - 1) // s + 1
    dy, w = g.add_input(TensorType((n, o, oh, oh), dtype), "dy"), g.add_input(TensorType((o, c, k, k), dtype), "w")
    g.set_outputs([b("conv2d_grad_input", dy, w, input_shape=[n, c, h, h], stride=[s, s], padding=[p, p],
                     dilation=[d, d], groups=1)])
    args = _inputs(g, 7)
    compiled = GeneratedExecutable(g, native=True)
    got = compiled(*args)[0]
    assert "conv2d_grad_input_bl" in compiled.source and "run0)" in compiled.source  # the scatter was compiled
    np.testing.assert_array_equal(got, GeneratedExecutable(g)(*args)[0])
    _near(got, interpret(g, *args)[0], "vs the reference")


def test_a_vector_function_this_libmvec_lacks_falls_back_at_build_time():
    """tanh is in libmvec from glibc 2.35: where a declared vector function is missing, the build must
    fail at link time (-z defs) and retry with the older set, not build a library that cannot load."""
    fns = [r"""#ifndef AVALON_MVEC_BASIC
#pragma omp declare simd notinbranch
extern float avalon_not_in_any_libmvec(float);
#define F(x) avalon_not_in_any_libmvec(x)
#else
#define F(x) ((x) + 1.0f)
#endif
void run0(void *p0) { float *o = p0; _Pragma("omp simd") for (long i = 0; i < 64; i++) o[i] = F(o[i]); }"""]
    ns: dict = {}
    native.bind(native.build(fns), [1], ns)
    out = np.arange(64, dtype=np.float32)
    ns["run0"](out.ctypes.data)
    np.testing.assert_array_equal(out, np.arange(64, dtype=np.float32) + 1)


def test_tanh_runs_vectorized_and_matches():
    """GELU's tanh through libmvec (a scalar tanhf per element made GPT's GELU loops ~25x slower)."""
    g = Graph("f")
    b = Builder(g)
    x = g.add_input(TensorType((8, 600), "f32"), "x")
    g.set_outputs([b("mul", b("tanh", b("mul", x, b.constant(0.8, (8, 600), "f32"))), x)])
    outline([op for op in g.ops if op.name != "constant"], "fused")
    exe = _check(g)
    assert "tanhf(" in exe.source
    import ctypes.util
    mvec = ctypes.util.find_library("mvec")
    if mvec and hasattr(ctypes.CDLL(mvec), "_ZGVdN8v_tanhf"):  # glibc >= 2.35 on AVX2: the loop calls it
        lib = native.library_path([src for src, _ in exe.emission.native]).read_bytes()
        assert b"_ZGVdN8v_tanhf" in lib or b"_ZGVeN16v_tanhf" in lib or b"_ZGVbN4v_tanhf" in lib


def test_a_run_writing_in_place_through_a_transposed_view_falls_back_to_numpy():
    """layer_norm over a transposed conv output (Swin's patch embedding): the centring loop wrote
    x - mean in place into the transposed view, indexing it row-major (errors of ~6, silently)."""
    import avalon as av
    from avalon.nn import functional as F
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    w = rng.standard_normal((16, 3, 2, 2)).astype(np.float32)

    def f(x, w):
        return F.layer_norm(F.conv2d(x, w, stride=2).reshape(2, 16, 16).transpose(1, 2), (16,))
    want = av.compile(f, backend="numpy")(x, w).numpy()
    np.testing.assert_allclose(av.compile(f, backend="cpu")(x, w).numpy(), want, rtol=1e-5, atol=1e-5)

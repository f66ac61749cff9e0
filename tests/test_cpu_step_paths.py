"""backend='cpu' fast paths of real-model training steps (a narrow ResNet's convolutions and batch
norms, a GPT's embedding gradient, causal softmax and position iotas), each checked against the
reference interpreter on random inputs, with the shapes and layouts each path must refuse or handle."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from avalon.codegen.numpy import GeneratedExecutable, native
from avalon.codegen.numpy.backend import CpuBackend
from avalon.codegen.numpy.loops import CPU
from avalon.ir import Builder, Graph, TensorType, interpret
from avalon.passes import DEFAULT_PIPELINE, PassManager

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                reason="backend='cpu' needs a C compiler")


@pytest.fixture(autouse=True)
def own_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("AVALON_CACHE_DIR", str(tmp_path))


def _near(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Contractions and compiled sums add in another order: within a tolerance of the magnitude."""
    assert got.dtype == want.dtype and got.shape == want.shape, what
    tol = 1e-12 if got.dtype == np.float64 else 2e-6
    finite = np.abs(want[np.isfinite(want)])
    scale = max(float(finite.max()) if finite.size else 0.0, 1.0)
    np.testing.assert_allclose(got, want, rtol=tol * 8, atol=tol * scale * 8, equal_nan=True, err_msg=what)


def _conv_graph(kind: str, n: int, c: int, h: int, w: int, o: int, kh: int, kw: int, s: int, p: int, d: int,
                dtype: str, nhwc_input: bool = False) -> tuple[Graph, list[np.ndarray]]:
    """One conv2d / conv2d_grad_input / conv2d_grad_weight op and random inputs for it; with
    `nhwc_input` the image operand is an NHWC input transposed to NCHW in the graph (a strided view)."""
    oh, ow = ((h + 2 * p - d * (kh - 1) - 1) // s + 1, (w + 2 * p - d * (kw - 1) - 1) // s + 1)
    geo = dict(stride=[s, s], padding=[p, p], dilation=[d, d], groups=1)
    rng = np.random.default_rng(n * 1000 + c * 100 + o + kh)
    f = np.float32 if dtype == "f32" else np.float64
    g = Graph("f")
    b = Builder(g)

    def image(shape, name):
        if not nhwc_input:
            return g.add_input(TensorType(shape, dtype), name), rng.standard_normal(shape).astype(f)
        nhwc = (shape[0], shape[2], shape[3], shape[1])
        return b("transpose", g.add_input(TensorType(nhwc, dtype), name), perm=[0, 3, 1, 2]), \
            rng.standard_normal(nhwc).astype(f)
    if kind == "conv2d":
        (x, xv), wv = image((n, c, h, w), "x"), rng.standard_normal((o, c, kh, kw)).astype(f)
        g.set_outputs([b(kind, x, g.add_input(TensorType(wv.shape, dtype), "w"), **geo)])
        return g, [xv, wv]
    if kind == "conv2d_grad_input":
        (dy, dyv), wv = image((n, o, oh, ow), "dy"), rng.standard_normal((o, c, kh, kw)).astype(f)
        g.set_outputs([b(kind, dy, g.add_input(TensorType(wv.shape, dtype), "w"), input_shape=[n, c, h, w], **geo)])
        return g, [dyv, wv]
    (x, xv), dyv = image((n, c, h, w), "x"), rng.standard_normal((n, o, oh, ow)).astype(f)
    g.set_outputs([b(kind, x, g.add_input(TensorType(dyv.shape, dtype), "dy"), weight_shape=[o, c, kh, kw], **geo)])
    return g, [xv, dyv]


_ROWS = {"conv2d": "K.conv2d_rows(", "conv2d_grad_input": "K.conv2d_grad_input_rows(",
         "conv2d_grad_weight": "K.conv2d_grad_weight_rows("}


@pytest.mark.parametrize("kind", list(_ROWS))
@pytest.mark.parametrize("n,c,h,w,o,kh,kw,s,p,d,dtype,nhwc", [
    (2, 8, 9, 7, 8, 3, 3, 1, 1, 1, "f32", False),     # odd plane, padding
    (3, 9, 10, 11, 10, 3, 2, 2, 1, 1, "f64", False),  # non-square kernel, stride 2
    (2, 8, 12, 12, 9, 3, 3, 1, 2, 2, "f32", True),    # dilation (one run per tap), a strided NHWC operand
    (4, 10, 7, 9, 12, 2, 3, 3, 0, 2, "f64", False),   # stride 3 and dilation, positions no window reaches
    (3, 16, 8, 8, 16, 3, 3, 1, 1, 1, "f32", False),
])
def test_row_patch_convolutions_match_the_reference(kind, n, c, h, w, o, kh, kw, s, p, d, dtype, nhwc, monkeypatch):
    """Row patches (one GEMM per chunk of output positions, NHWC copies in C): several chunks, and
    the reference's values within float tolerance."""
    from avalon.codegen.numpy import kernels
    monkeypatch.setattr(kernels, "CHUNK_BYTES", 1 << 11)  # several chunks of positions, a partial last one
    g, args = _conv_graph(kind, n, c, h, w, o, kh, kw, s, p, d, dtype, nhwc)
    exe = GeneratedExecutable(g, native=True)
    want = interpret(g, *args)[0]
    for _ in range(2):  # the workspaces are reused
        _near(exe(*args)[0], want, exe.source)
    assert _ROWS[kind] in exe.source


@pytest.mark.parametrize("kind", list(_ROWS))
@pytest.mark.parametrize("c,o,k", [(3, 16, 3), (16, 4, 3), (16, 16, 1)])
def test_row_patches_refuse_few_channels_and_one_tap(kind, c, o, k):
    """Few input channels (short runs), few outputs (a thin GEMM) and 1x1 kernels (no patches to
    gain on) keep the batch-first / batch-last layouts, with the same values."""
    g, args = _conv_graph(kind, 2, c, 16, 16, o, k, k, 1, k // 2, 1, "f32")
    exe = GeneratedExecutable(g, native=True)
    _near(exe(*args)[0], interpret(g, *args)[0], exe.source)
    assert _ROWS[kind] not in exe.source
    assert "_rows(" not in exe.source


def test_row_patches_are_numpy_backend_free():
    """The numpy backend has no compiled copies: it never takes row patches."""
    g, args = _conv_graph("conv2d", 2, 8, 9, 9, 8, 3, 3, 1, 1, 1, "f32")
    exe = GeneratedExecutable(g)
    assert "_rows(" not in exe.source
    _near(exe(*args)[0], interpret(g, *args)[0], exe.source)


@pytest.mark.parametrize("idt", ["i32", "i64"])
@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_compiled_index_add_is_np_add_at_bit_for_bit(dtype, idt):
    """An embedding gradient (duplicate indices accumulate in index order) as one compiled loop: the
    numpy backend's np.add.at results exactly, the reference's too."""
    g = Graph("f")
    b = Builder(g)
    v = g.add_input(TensorType((40, 3, 5), dtype), "v")
    i = g.add_input(TensorType((40,), idt), "i")
    g.set_outputs([b("index_add", v, i, size=7)])
    rng = np.random.default_rng(3)
    args = [rng.standard_normal((40, 3, 5)).astype(np.float32 if dtype == "f32" else np.float64),
            rng.integers(0, 7, 40).astype(np.int32 if idt == "i32" else np.int64)]
    exe = GeneratedExecutable(g, native=True)
    assert ", run0)" in next(ln for ln in exe.source.splitlines() if "K.index_add(" in ln)
    for _ in range(2):  # the output is zeroed each call
        got = exe(*args)[0]
        np.testing.assert_array_equal(got, GeneratedExecutable(g)(*args)[0])
        np.testing.assert_array_equal(got, interpret(g, *args)[0])
    args[1][5] = 7
    with pytest.raises(Exception, match="index 7 is out of range for size 7"):
        exe(*args)


def test_iota_is_made_once():
    """An iota (no operands) is a global array of the generated module, not a reference-rule call
    per step; values are the reference's."""
    g = Graph("f")
    b = Builder(g)
    x = g.add_input(TensorType((4, 6), "f32"), "x")
    io = b("iota", shape=[4, 6], axis=1, dtype="f32")
    g.set_outputs([b("add", x, io), io])
    xv = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    for native_runs in (False, True):
        exe = GeneratedExecutable(g, native=native_runs)
        assert "_ev('iota'" not in exe.source
        for _ in range(2):
            got = exe(xv)
            got[1][...] = -1  # an output is the caller's: writing it must not change the next call's
        for a, w in zip(exe(xv), interpret(g, xv)):
            np.testing.assert_array_equal(a, w)


def _cpu(g: Graph) -> GeneratedExecutable:
    PassManager.parse(DEFAULT_PIPELINE, target=CPU).run(g)
    return CpuBackend().compile(g)


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_masked_softmax_exp_flushes_only_subnormal_results(dtype, monkeypatch):
    """A causal softmax's exp over -inf (and other arguments below ln of the smallest normal) runs
    the vector exp on a clamped argument: 0 there, nan still nan, every other value the reference's
    within float tolerance."""
    monkeypatch.setattr(native, "MIN_ELEMENTS", 0)
    g = Graph("f")
    b = Builder(g)
    x = g.add_input(TensorType((6, 16), dtype), "x")
    e = b("exp", b("sub", x, b("constant", value=0.5, shape=[6, 16], dtype=dtype)))
    g.set_outputs([b("sum", e, axes=[1], keepdims=False), e])
    f = np.float32 if dtype == "f32" else np.float64
    xv = np.random.default_rng(1).standard_normal((6, 16)).astype(f)
    lo = -87.0 if dtype == "f32" else -708.0
    xv[0, :8] = -np.inf
    xv[1, :5] = [lo - 10, lo - 0.2, lo + 0.6, lo + 5, -1e30]
    xv[2, 3] = np.nan
    exe = _cpu(g)
    assert "expz" in exe.source
    got = exe(xv)
    want = interpret(g, xv)
    for a, w in zip(got, want):
        _near(a, w, exe.source)
    assert (got[1][0, :8] == 0).all() and (got[1][1, [0, 1, 4]] == 0).all()
    assert got[1][1, 2] > 0 and got[1][1, 3] > 0  # above the clamp: normal results kept
    assert np.isnan(got[0][2]) and np.isnan(got[1][2, 3]) and not np.isnan(got[0][[0, 1, 3, 4, 5]]).any()


def test_batch_norm_scale_and_shift_join_the_compiled_run(monkeypatch):
    """(x - mean) * rstd * gamma + beta, relu: the (C,) parameters' reshapes to (1, C, 1, 1) no longer
    close the open run, so the whole chain is one compiled loop (no full-size numpy multiply)."""
    monkeypatch.setattr(native, "MIN_ELEMENTS", 0)
    n, c, h = 4, 6, 5
    g = Graph("f")
    b = Builder(g)
    x = g.add_input(TensorType((n, c, h, h), "f32"), "x")
    gamma, beta = (g.add_input(TensorType((c,), "f32"), k) for k in ("gamma", "beta"))
    full = [n, c, h, h]
    mean = b("mul", b("sum", x, axes=[0, 2, 3], keepdims=True), b("constant", value=1 / (n * h * h), shape=[1, c, 1, 1],
                                                                   dtype="f32"))
    xc = b("sub", x, b("broadcast", mean, shape=full))
    var = b("mul", b("sum", b("mul", xc, xc), axes=[0, 2, 3], keepdims=True),
            b("constant", value=1 / (n * h * h), shape=[1, c, 1, 1], dtype="f32"))
    rstd = b("rsqrt", b("add", var, b("constant", value=1e-5, shape=[1, c, 1, 1], dtype="f32")))
    xhat = b("mul", xc, b("broadcast", rstd, shape=full))
    y = b("mul", xhat, b("broadcast", b("reshape", gamma, shape=[1, c, 1, 1]), shape=full))
    y = b("add", y, b("broadcast", b("reshape", beta, shape=[1, c, 1, 1]), shape=full))
    g.set_outputs([b("relu", y), xhat])
    rng = np.random.default_rng(2)
    args = [rng.standard_normal(s).astype(np.float32) for s in ((n, c, h, h), (c,), (c,))]
    exe = _cpu(g)
    for a, w in zip(exe(*args), interpret(g, *args)):
        _near(a, w, exe.source)
    body = exe.source.split("# compiled runs")[0].splitlines()
    views = [ln.split(" = ")[0].strip() for ln in body if ".reshape((1, 6, 1, 1))" in ln]
    assert len(views) == 2, body
    calls = [ln for ln in body if ln.strip().startswith("run") and all(f"N.ptr({v})" in ln for v in views)]
    assert len(calls) == 1, "\n".join(body)  # gamma and beta read by one loop that also writes xhat
    assert not [ln for ln in body if "np.multiply(" in ln and any(v in ln for v in views)], body


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (300, 37), (5000, 1), (9, 2, 17)])
def test_compiled_row_max_matches_the_reference(dtype, shape, monkeypatch):
    """A softmax's max over the last axis as a compiled loop (vector lanes, then a scalar tail): the
    reference's values, a nan in a row propagates, -inf rows stay -inf; transposed operands are read
    through a contiguous copy; other axes stay numpy."""
    from avalon.codegen.numpy import ops
    monkeypatch.setattr(ops, "MAX_MIN_ELEMENTS", 0)
    f = np.float32 if dtype == "f32" else np.float64
    rng = np.random.default_rng(4)
    xv = rng.standard_normal(shape).astype(f)
    xv.reshape(-1, shape[-1])[1, -1] = np.nan
    xv.reshape(-1, shape[-1])[2, :] = -np.inf
    for transposed in (False, True):
        g = Graph("f")
        b = Builder(g)
        if transposed:
            perm = [*range(len(shape) - 2), len(shape) - 1, len(shape) - 2]
            x = b("transpose", g.add_input(TensorType(tuple(shape[p] for p in perm), dtype), "x"), perm=perm)
            arg = np.ascontiguousarray(xv.transpose(perm))
        else:
            x, arg = g.add_input(TensorType(shape, dtype), "x"), xv
        g.set_outputs([b("max", x, axes=[-1], keepdims=True), b("max", x, axes=[0], keepdims=False)])
        exe = GeneratedExecutable(g, native=True)
        got, want = exe(arg), interpret(g, arg)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        assert sum(ln.strip().startswith("run") for ln in exe.source.split("# compiled")[0].splitlines()) == 1


def test_hoisted_small_ops_never_overwrite_what_the_run_reads(monkeypatch):
    """Per-channel ops between a compiled run's ops move above the run; the last of them reads the
    channel factor s the run also reads, and must not write its result over s in place (it would,
    as s's last reader, were the run's reads not kept)."""
    monkeypatch.setattr(native, "MIN_ELEMENTS", 0)
    n, c, h = 3, 5, 4
    g = Graph("f")
    b = Builder(g)
    x, gr = (g.add_input(TensorType((n, c, h, h), "f32"), k) for k in ("x", "g"))
    full = [n, c, h, h]

    def k(v):
        return b("constant", value=v, shape=[1, c, 1, 1], dtype="f32")
    ss = b("sum", b("mul", x, x), axes=[0, 2, 3], keepdims=True)
    s = b("rsqrt", b("add", b("mul", ss, k(0.02)), k(1e-5)))
    y1 = b("mul", gr, b("broadcast", s, shape=full))
    t = b("mul", s, s)
    u = b("mul", s, t)  # s's last reader: s first, so in place it would take s's storage
    y2 = b("mul", y1, b("broadcast", u, shape=full))
    g.set_outputs([y2, b("sum", y2, axes=[0, 2, 3], keepdims=False)])
    rng = np.random.default_rng(5)
    args = [rng.standard_normal((n, c, h, h)).astype(np.float32) for _ in range(2)]
    exe = _cpu(g)
    body = exe.source.split("# compiled runs")[0]
    loop = [ln for ln in body.splitlines() if ln.strip().startswith("run") and "N.ptr(a1)" in ln]
    assert len(loop) == 1 and "np.multiply(a1" not in body, body  # y1 .. y2 and the sum: one loop
    for a, w in zip(exe(*args), interpret(g, *args)):
        _near(a, w, exe.source)

"""backend="cpu": gemm plus a scaled accumulator in a fused group -- the SGD update `P - s * (op(A) @
op(B))`, `P - M`, `P + M`, the momentum buffer `m * buf + (s *) M`, a backward `dmu @ W21 + dlogvar @
W22` -- as one BLAS gemm call (`avalon.codegen.numpy.blas`), checked against the interpreter and the
numpy backend within float tolerance (alpha and beta are folded into gemm's accumulation), whatever
reads the accumulator and where it goes."""
from __future__ import annotations

import logging
import os
import shutil
import types

import numpy as np
import pytest
from helpers import assert_same_training, train, vae_loss
from hypothesis import given, settings
from hypothesis import strategies as st

from avalon import zoo
from avalon.codegen.numpy import GeneratedExecutable, blas, native
from avalon.codegen.numpy.backend import NUMPY
from avalon.ir import Builder, Graph, TensorType, interpret
from avalon.ir.fusion import outline
from avalon.passes import DEFAULT_PIPELINE, PassManager

pytestmark = [
    pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                       reason="backend='cpu' needs a C compiler"),
    pytest.mark.skipif(blas.find() is None, reason="numpy's BLAS has no gemm of a known integer width here"),
]


@pytest.fixture(autouse=True)
def own_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("AVALON_CACHE_DIR", str(tmp_path))


class Spy:
    """Counts the gemm calls that reach BLAS (not Update's numpy fallback)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        self.alphas: list[float] = []
        self.betas: list[float] = []
        fns = blas.find()

        def wrap(fn):
            def call(*args):
                self.calls += 1
                self.alphas.append(args[6])
                self.betas.append(args[11])
                return fn(*args)
            return call
        spied = {k: wrap(f) for k, f in fns.items()}
        monkeypatch.setattr(blas, "find", lambda: spied)


def _close(got: np.ndarray, want: np.ndarray, what: str = "") -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, what
    tol = 1e-12 if got.dtype == np.float64 else 2e-6
    finite = np.abs(want[np.isfinite(want)])
    scale = max(float(finite.max()) if finite.size else 0.0, 1.0)
    np.testing.assert_allclose(got, want, rtol=tol * 8, atol=tol * scale * 16, equal_nan=True, err_msg=what)


def _update_graph(m: int, n: int, k: int, ta: bool, tb: bool, dtype: str = "f32", scalar_first: bool = True,
                  read_after: str = "none") -> Graph:
    """w - lr * (op(a) @ op(b)) in one fused group; `read_after` adds a read of w after the update in
    the group ("group") or after the group ("graph"), or makes the matmul read w itself ("operand")."""
    g = Graph("f")
    b = Builder(g)
    if read_after == "operand":  # square: w - lr * (w^T @ x)
        m = n = k
    a_in = g.add_input(TensorType((k, m) if ta else (m, k), dtype), "a")
    b_in = g.add_input(TensorType((n, k) if tb else (k, n), dtype), "b")
    lr = g.add_input(TensorType((), dtype), "lr")
    w = g.add_input(TensorType((m, n), dtype), "w")
    if read_after == "operand":
        a_in = w
    A = b("transpose", a_in, perm=[1, 0]) if ta else a_in
    B = b("transpose", b_in, perm=[1, 0]) if tb else b_in
    mm = b("matmul", A, B)
    s = b("broadcast", lr, shape=[m, n])
    new = b("sub", w, b("mul", s, mm) if scalar_first else b("mul", mm, s))
    outs = [new]
    if read_after == "group":
        outs.append(b("sum", b("mul", w, w), axes=[0, 1], keepdims=False))
    group = list(g.ops)
    if read_after == "graph":
        outs.append(b("sum", b("exp", w), axes=[0, 1], keepdims=False))
    g.set_outputs(outs)
    outline(group, "fused")
    return g


def _args(g: Graph, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for v in g.inputs:
        a = rng.standard_normal(v.type.shape).astype(v.type.dtype.np)
        out.append(a if v.type.shape else np.asarray(rng.uniform(0.05, 0.5), v.type.dtype.np))
    return out


def _run(g: Graph, donate: bool, seed: int = 0, args: list[np.ndarray] | None = None):
    exe = GeneratedExecutable(g, native=True)
    w = [i for i, v in enumerate(g.inputs) if v.name == "w"][0]
    if donate:
        exe.donated = {0: w}
    args = _args(g, seed) if args is None else args
    want = interpret(g, *[a.copy() for a in args])
    before = [a.copy() for a in args]
    got = exe(*args)
    for k, (a, x) in enumerate(zip(got, want)):
        _close(a, x, f"output #{k} of\n{g}\n{exe.source}")
    for i, (a, x) in enumerate(zip(args, before)):  # nothing but a donated weight is written
        if not (donate and i == w and exe.emission.donated):
            np.testing.assert_array_equal(a, x, err_msg=f"input #{i} changed\n{exe.source}")
    return exe, args, got


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6), st.booleans(), st.booleans(),
       st.sampled_from(["f32", "f64"]), st.booleans(), st.booleans())
def test_an_update_is_one_gemm_and_matches_the_interpreter(m, n, k, ta, tb, dtype, scalar_first, donate):
    with pytest.MonkeyPatch.context() as mp:
        spy = Spy(mp)
        g = _update_graph(m, n, k, ta, tb, dtype, scalar_first)
        exe, args, got = _run(g, donate, seed=m * 100 + n * 10 + k)
        assert "gemm" in exe.source and "np.matmul" not in exe.source, exe.source
        assert spy.calls == 1
        if donate:
            assert got[0] is args[3], exe.source  # written into the donated weight itself
        exe(*_args(g, 1))  # again: buffers and the call site are reused
        assert spy.calls == 2


@pytest.mark.parametrize("donate", [True, False])
@pytest.mark.parametrize("read_after", ["group", "graph"])
def test_a_weight_read_after_its_update_keeps_its_old_value_until_then(read_after, donate, monkeypatch):
    spy = Spy(monkeypatch)
    g = _update_graph(5, 7, 4, True, False, read_after=read_after)
    exe, args, got = _run(g, donate, seed=3)
    assert "gemm" in exe.source and spy.calls == 1
    if read_after == "graph" or not donate:
        assert got[0] is not args[3]
    for _ in range(2):  # the caller's write-back, then another step from the updated weight
        args[3] = got[0].copy()
        exe, args, got = _run(g, donate, args=args)


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_operands_computed_in_the_group_live_until_the_call(dtype, transposed, monkeypatch):
    """The gemm runs where the sub was: the matmul's operands, computed in the group, must keep their
    storage until then although ops between the matmul and the sub read them last (and would
    overwrite them in place) or need scratch of their size."""
    spy = Spy(monkeypatch)
    g = Graph("f")
    b = Builder(g)
    x = g.add_input(TensorType((6, 5) if transposed else (5, 6), dtype), "x")
    dy = g.add_input(TensorType((6, 4), dtype), "dy")
    lr = g.add_input(TensorType((), dtype), "lr")
    w = g.add_input(TensorType((5, 4), dtype), "w")
    h = b("tanh", b("exp", x))
    d = b("neg", dy)
    mm = b("matmul", b("transpose", h, perm=[1, 0]) if transposed else h, d)
    other = b("sigmoid", b("mul", b("abs", h), x))  # h's last reader in the IR: in place into h
    other2 = b("tanh", b("add", b("neg", d), dy))
    new = b("sub", w, b("mul", b("broadcast", lr, shape=[5, 4]), mm))
    g.set_outputs([new, b("sum", other, axes=[0, 1], keepdims=False), b("sum", other2, axes=[0], keepdims=False)])
    outline([op for op in g.ops if op.name != "sum"], "fused")
    for donate in (True, False):
        exe, args, got = _run(g, donate, seed=11)
        assert "gemm" in exe.source, exe.source
    assert spy.calls == 2


def test_a_matmul_reading_the_donated_weight_is_not_written_into_it(monkeypatch):
    """gemm must not write C while reading A from the same storage: left to numpy's lines."""
    spy = Spy(monkeypatch)
    g = _update_graph(4, 4, 4, True, False, read_after="operand")
    exe, args, got = _run(g, True)
    assert "gemm" not in exe.source and spy.calls == 0
    exe, args, got = _run(g, False)  # not donated: the update goes to its own buffer, so gemm is safe
    assert "gemm" in exe.source and spy.calls == 1


@pytest.mark.parametrize("ta", [False, True])
def test_operands_blas_cannot_describe_run_numpy(ta, monkeypatch):
    """Caller arrays with a row stride (BLAS's leading dimension), a column stride (no BLAS layout)
    or misaligned data, and a zero learning rate (BLAS may skip the product, the reference gets nan
    from inf): the same values either way, transposed in the group or not."""
    spy = Spy(monkeypatch)
    g = _update_graph(6, 5, 4, ta, False)
    base = _args(g, 7)
    big = np.random.default_rng(8).standard_normal((12, 13)).astype(np.float32)
    rows, cols = base[0].shape
    args = list(base)
    args[0] = big[: 2 * rows : 2, 1 : 1 + cols]  # rows 26 apart: lda = 26
    _run(g, True, args=[a.copy() if i else a for i, a in enumerate(args)])
    assert spy.calls == 1
    args[0] = big[:rows, : 2 * cols : 2]  # columns 2 apart
    _run(g, True, args=[a.copy() if i else a for i, a in enumerate(args)])
    args[0] = np.asfortranarray(base[0])  # a transposed layout: BLAS's other flag
    _run(g, True, args=[a.copy() if i else a for i, a in enumerate(args)])
    assert spy.calls == 2
    raw = np.zeros(4 * 4 * 5 + 1, np.uint8)[1:].view(np.float32).reshape(4, 5)  # not 4-byte aligned
    args = list(base)
    args[1] = raw
    np.copyto(raw, base[1])
    _run(g, False, args=args)
    args = [a.copy() for a in base]
    args[2] = np.zeros((), np.float32)
    args[0][0, 0] = np.inf
    exe, _, got = _run(g, True, args=args)
    assert np.isnan(got[0]).any()
    assert spy.calls == 2  # the strided rows and the Fortran-ordered operand reached BLAS, no other


def test_layouts():
    x = np.zeros((6, 8), np.float32)
    assert blas._layout(x, 4) == (blas.NO_TRANS, 8)
    assert blas._layout(x.T, 4) == (blas.TRANS, 8)
    assert blas._layout(x[:, :3], 4) == (blas.NO_TRANS, 8)
    assert blas._layout(x[:3].T, 4) == (blas.TRANS, 8)
    assert blas._layout(x[:, ::2], 4) is None
    assert blas._layout(x[::-1], 4) is None
    assert blas._layout(x[:1], 4) == (blas.NO_TRANS, 8)
    assert blas._layout(x[:, :1], 4) == (blas.NO_TRANS, 8)
    assert blas._layout(np.broadcast_to(x[:1], (6, 8)), 4) is None


def _fake_lib(symbols: dict[str, object]):
    return types.SimpleNamespace(**symbols)


class _Fn:
    def __init__(self, ret=None):
        self.ret = ret

    def __call__(self, *args):
        return self.ret


def test_only_symbols_of_a_known_integer_width_are_taken():
    ilp = b"OpenBLAS 0.3.31 USE64BITINT DYNAMIC_ARCH"
    lp = b"OpenBLAS 0.3.31 DYNAMIC_ARCH"
    gemms = {"scipy_cblas_sgemm64_": _Fn(), "scipy_cblas_dgemm64_": _Fn()}
    fns = blas._gemms(_fake_lib(gemms))  # the 64_ names of numpy's builds: ILP64 by name
    assert fns is not None and fns["float32"].argtypes[3] is blas.ctypes.c_int64
    assert blas._gemms(_fake_lib({**gemms, "scipy_openblas_get_config64_": _Fn(ilp)})) is not None
    assert blas._gemms(_fake_lib({**gemms, "scipy_openblas_get_config64_": _Fn(lp)})) is None  # name lies
    plain = {"cblas_sgemm": _Fn(), "cblas_dgemm": _Fn()}
    assert blas._gemms(_fake_lib(plain)) is None  # unknown width
    assert blas._gemms(_fake_lib({**plain, "openblas_get_config": _Fn(ilp)})) is None  # ILP64 without suffix
    fns = blas._gemms(_fake_lib({**plain, "openblas_get_config": _Fn(lp)}))
    assert fns is not None and fns["float64"].argtypes[3] is blas.ctypes.c_int
    assert blas._gemms(_fake_lib({"scipy_cblas_sgemm64_": _Fn()})) is None  # both precisions or none


def test_the_real_library_is_numpys_ilp64_openblas():
    fns = blas.find()
    assert {"float32", "float64"} <= set(fns)
    x = np.random.default_rng(0).standard_normal((3, 4))
    w = np.random.default_rng(1).standard_normal((3, 2))
    y = np.random.default_rng(2).standard_normal((4, 2))
    c = w.copy()
    blas.Update(fns["float64"], np.float64, 3, 2, 4)(x, y, np.float64(0.25), c, None, c)
    np.testing.assert_allclose(c, w - 0.25 * (x @ y), rtol=1e-13)


def test_without_blas_the_numpy_lines_stay_and_give_the_same_values(monkeypatch, caplog):
    g = _update_graph(5, 6, 3, True, False)
    args = _args(g, 4)
    with_blas = GeneratedExecutable(g, native=True)
    got = with_blas(*[a.copy() for a in args])
    assert "gemm" in with_blas.source
    monkeypatch.setattr(blas, "_candidates", lambda: [])
    blas.find.cache_clear()
    try:
        with caplog.at_level(logging.DEBUG, logger="avalon.numpy"):
            exe = GeneratedExecutable(g, native=True)
            plain = exe(*[a.copy() for a in args])
            GeneratedExecutable(g, native=True).source  # noqa: B018 - said once
    finally:
        blas.find.cache_clear()
    assert caplog.text.count("no OpenBLAS gemm") == 1
    assert "gemm" not in exe.source and "np.matmul" in exe.source
    _close(plain[0], got[0])
    _close(plain[0], interpret(g, *args)[0])


def _mlp_loss(m, x, y):
    return zoo.cross_entropy(m(x), y)


def _lenet_loss(m, x, y):
    return zoo.nll(m(x), y)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("which", ["vae", "mlp", "lenet"])
def test_sgd_steps_match_the_numpy_backend(which, momentum, rng, monkeypatch):
    """Several SGD steps, plain and with momentum, on backend='cpu' and on backend='numpy' from the same
    weights. Per Linear layer one gemm does the weight update (plain SGD: `W - lr * G` into W) or the momentum buffer (`0.9 * buf + G` into buf);
    the VAE's backward `dmu @ W21 + dlogvar @ W22` is one more."""
    monkeypatch.setattr(native, "MIN_ELEMENTS", 64)
    if which == "vae":
        make, loss_fn, layers, extra = (lambda: zoo.VAE(features=96, hidden=40, latent=6)), vae_loss, 5, 1
        batch = [rng.random((16, 96)).astype(np.float32)]
    elif which == "mlp":
        make, loss_fn, layers, extra = (lambda: zoo.MLP(in_features=30, hidden=(24, 16))), _mlp_loss, 3, 0
        batch = [rng.standard_normal((12, 30)).astype(np.float32), rng.integers(0, 10, 12)]
    else:  # the Linear layers only: the convolutions are not matmuls
        make, loss_fn, layers, extra = zoo.LeNet, _lenet_loss, 2, 0
        batch = [rng.standard_normal((4, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 4)]
    sites = layers + extra
    spy = Spy(monkeypatch)
    c, l1, p1 = train(make, loss_fn, batch, "cpu", 4, 0.05, momentum)
    exe = next(iter(c.cache.values())).executable
    assert exe.emission.stats.get("blas") == sites, exe.source
    assert spy.calls == 4 * sites
    # the momentum buffers: beta 0.9 (as float32); every other site adds into its accumulator
    assert sum(abs(b - 0.9) < 1e-6 for b in spy.betas) == (4 * layers if momentum else 0), spy.betas
    assert_same_training((c, l1, p1), train(make, loss_fn, batch, "numpy", 4, 0.05, momentum), prtol=1e-5)


def test_the_full_size_vae_step_uses_gemm_for_its_weights(rng, monkeypatch):
    spy = Spy(monkeypatch)
    x = rng.random((32, 784)).astype(np.float32)
    c, l1, p1 = train(zoo.VAE, vae_loss, [x], "cpu", 3, 1e-4)
    assert spy.calls == 3 * 6  # 5 updates, dmu @ W21 + dlogvar @ W22
    assert_same_training((c, l1, p1), train(zoo.VAE, vae_loss, [x], "numpy", 3, 1e-4), prtol=1e-5)


def test_the_numpy_backend_is_untouched(rng):
    g = _update_graph(5, 6, 3, True, False)
    PassManager.parse(DEFAULT_PIPELINE, target=NUMPY).run(g)
    exe = GeneratedExecutable(g)
    args = _args(g, 2)
    assert "gemm" not in exe.source
    for a, w in zip(exe(*[a.copy() for a in args]), interpret(g, *args)):
        np.testing.assert_array_equal(a, w)


# --- the other forms: alpha * op(A) @ op(B) + beta * P, signs folded in ---------------------------

FORMS = ["sub_scaled", "sub", "rsub", "add", "momentum", "momentum_scaled", "rsub_scaled_acc", "two_matmuls"]


def _form_graph(form: str, m: int, n: int, k: int, ta: bool, tb: bool, dtype: str, const_alpha: bool,
                const_beta: bool, swap: bool, factor_first: bool, read_after: bool) -> Graph:
    """One fused group computing `form` (the root's operands swapped where `swap`, each mul's factor
    first where `factor_first`), P the input `w` (or, for two_matmuls, `x2 @ y2` computed in the group),
    the factors runtime scalars `lr`/`mom` broadcast, or splat constants; `read_after` reads P again
    after the root in the group."""
    g = Graph("f")
    b = Builder(g)
    a_in = g.add_input(TensorType((k, m) if ta else (m, k), dtype), "a")
    b_in = g.add_input(TensorType((n, k) if tb else (k, n), dtype), "b")
    lr = g.add_input(TensorType((), dtype), "lr")
    mom = g.add_input(TensorType((), dtype), "mom")
    w = g.add_input(TensorType((m, n), dtype), "w")
    M = b("matmul", b("transpose", a_in, perm=[1, 0]) if ta else a_in,
          b("transpose", b_in, perm=[1, 0]) if tb else b_in)

    def factor(x, const: bool, value: float):
        return b.constant(value, (m, n), dtype) if const else b("broadcast", x, shape=[m, n])

    def scaled(x, f):
        return b("mul", f, x) if factor_first else b("mul", x, f)

    def root(name, p_side, t_side):
        return b(name, t_side, p_side) if swap else b(name, p_side, t_side)

    P = w
    if form == "two_matmuls":
        x2 = g.add_input(TensorType((m, 3), dtype), "x2")
        y2 = g.add_input(TensorType((3, n), dtype), "y2")
        P = b("exp", b("matmul", x2, y2)) if read_after else b("matmul", x2, y2)
    s = factor(lr, const_alpha, 0.375)
    f = factor(mom, const_beta, 0.875)
    if form == "sub_scaled":
        new = b("sub", P, scaled(M, s))
    elif form == "sub":
        new = b("sub", P, M)
    elif form == "rsub":
        new = b("sub", M, P)
    elif form in ("add", "two_matmuls"):
        new = root("add", P, M)
    elif form == "momentum":
        new = root("add", scaled(P, f), M)
    elif form == "momentum_scaled":
        new = root("add", scaled(P, f), scaled(M, s))
    else:  # rsub_scaled_acc: (s * M) - (m * P)
        new = b("sub", scaled(M, s), scaled(P, f))
    outs = [new]
    if read_after:
        outs.append(b("sum", b("mul", P, P), axes=[0, 1], keepdims=False))
    g.set_outputs(outs)
    outline(list(g.ops), "fused")
    return g


def _form_args(g: Graph, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for v in g.inputs:
        if v.type.shape:
            out.append(rng.standard_normal(v.type.shape).astype(v.type.dtype.np))
        else:  # a learning rate, a momentum: random, of either sign
            out.append(np.asarray(rng.choice([-1, 1]) * rng.uniform(0.05, 0.95), v.type.dtype.np))
    return out


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(FORMS), st.integers(1, 6), st.integers(1, 6), st.integers(1, 6), st.booleans(), st.booleans(),
       st.sampled_from(["f32", "f64"]), st.booleans(), st.booleans(), st.booleans(), st.booleans(), st.booleans(),
       st.booleans())
def test_every_form_is_one_gemm_and_matches_the_interpreter(form, m, n, k, ta, tb, dtype, const_alpha, const_beta,
                                                             swap, factor_first, read_after, donate):
    with pytest.MonkeyPatch.context() as mp:
        spy = Spy(mp)
        g = _form_graph(form, m, n, k, ta, tb, dtype, const_alpha, const_beta, swap, factor_first, read_after)
        args = _form_args(g, m * 100 + n * 10 + k)
        exe, args, got = _run(g, donate and form != "two_matmuls", args=args)
        assert "gemm" in exe.source and exe.emission.stats.get("blas") == 1, exe.source
        assert exe.source.count("np.matmul") == (form == "two_matmuls"), exe.source
        assert spy.calls == 1
        if donate and form != "two_matmuls" and not read_after:
            assert got[0] is args[4], exe.source  # written into the donated accumulator itself
        exe(*_form_args(g, 1))  # again: buffers and the call site are reused
        assert spy.calls == 2


def test_a_matmul_accumulator_dying_at_the_add_is_overwritten_in_place(monkeypatch):
    """`dmu @ W21 + dlogvar @ W22` inside a group: the first product's scratch is the call's C (no copy)."""
    spy = Spy(monkeypatch)
    g = Graph("f")
    b = Builder(g)
    dmu, w21 = g.add_input(TensorType((8, 3), "f32"), "dmu"), g.add_input(TensorType((3, 10), "f32"), "w21")
    dlv, w22 = g.add_input(TensorType((8, 3), "f32"), "dlv"), g.add_input(TensorType((3, 10), "f32"), "w22")
    g.add_input(TensorType((8, 10), "f32"), "w")  # unused: `_run` looks for it
    dh = b("add", b("matmul", dmu, w21), b("matmul", dlv, w22))
    g.set_outputs([b("sum", b("tanh", dh), axes=[0], keepdims=False)])
    outline(list(g.ops), "fused")
    exe, _, _ = _run(g, False, seed=5)
    call = next(line.strip() for line in exe.source.splitlines() if "gemm" in line)
    first = next(line for line in exe.source.splitlines() if "np.matmul" in line)
    acc = first.split("out=")[1].rstrip(")")
    assert call.endswith(f", {acc}, None, {acc})"), exe.source  # p is c
    assert spy.calls == 1


@pytest.mark.parametrize("form", ["momentum", "momentum_scaled", "sub_scaled", "rsub_scaled_acc"])
def test_zero_and_non_finite_factors_run_numpy(form, monkeypatch):
    """beta = 0: BLAS never reads C, so a nan or inf in P would be lost (the reference gets nan from
    0 * inf); alpha = 0: BLAS may skip the product, whose inf gives the reference nan; a non-finite
    factor may be applied before or after BLAS's sum. Each runs numpy's lines, with the reference's
    nan and inf; finite non-zero factors reach BLAS."""
    spy = Spy(monkeypatch)
    g = _form_graph(form, 4, 5, 3, False, True, "f32", False, False, False, True, False)
    names = [v.name for v in g.inputs]
    base = _form_args(g, 9)
    _run(g, True, args=[a.copy() for a in base])
    assert spy.calls == 1
    calls = 1
    for factor, value in (("mom", 0.0), ("lr", 0.0), ("mom", np.inf), ("lr", -np.inf), ("mom", np.nan)):
        if factor == "lr" and form == "momentum" or factor == "mom" and form == "sub_scaled":
            continue  # a factor the form does not have
        for poison in ("w", "a"):
            args = [a.copy() for a in base]
            args[names.index(factor)] = np.asarray(value, np.float32)
            args[names.index(poison)][0, 0] = np.inf
            args[names.index(poison)][-1, -1] = np.nan
            for donate in (True, False):
                _, _, got = _run(g, donate, args=[a.copy() for a in args])
                assert np.isnan(got[0]).any()
    assert spy.calls == calls


@pytest.mark.parametrize("read", ["acc", "factor"])
def test_a_read_the_call_moves_past_another_states_write_is_not_fused(read, monkeypatch):
    """`m * v` (or the factor `s`, a donated one-element state) is read, then another op of the group
    writes that state's donated array, then the add: a gemm there would read the new value. Left to
    numpy's lines; with the state not donated it is fused."""
    spy = Spy(monkeypatch)
    g = Graph("f")
    b = Builder(g)
    a = g.add_input(TensorType((4, 3), "f32"), "a")
    x = g.add_input(TensorType((3, 5), "f32"), "x")
    mom = g.add_input(TensorType((), "f32"), "mom")
    v = g.add_input(TensorType((4, 5), "f32"), "v")
    w = g.add_input(TensorType((4, 5), "f32"), "w")
    if read == "acc":  # v is read by the mul, written by the tanh (one pass), read by the call
        acc = b("mul", b("broadcast", mom, shape=[4, 5]), v)
        state, new_state = 3, b("tanh", b("mul", w, w))
        prod = b("matmul", a, x)
    else:  # mom is read by the broadcast, written by the add (one pass), read by the call
        s = b("broadcast", mom, shape=[4, 5])
        state, new_state = 2, b("add", mom, b.constant(1.0))
        acc, prod = w, b("mul", s, b("matmul", a, x))
    new_w = b("add", acc, prod)
    g.set_outputs([new_w, new_state])
    outline(list(g.ops), "fused")
    args = _form_args(g, 3)
    want = interpret(g, *[q.copy() for q in args])
    for donate, fused in (({0: 4, 1: state}, False), ({0: 4}, True)):
        exe = GeneratedExecutable(g, native=True)
        exe.donated = donate
        got = exe(*[q.copy() for q in args])
        assert exe.emission.donated == sorted(donate), exe.source
        for k, (y, z) in enumerate(zip(got, want)):
            _close(y, z, f"output #{k}\n{exe.source}")
        assert ("gemm" in exe.source) == fused, exe.source
    assert spy.calls == 1


@pytest.mark.parametrize("bias", ["broadcast", "splat", "argument"])
def test_a_broadcast_accumulator_stays_numpy(bias, monkeypatch):
    """`X @ W^T + b`: copying the broadcast bias into C for gemm to read back costs more than the add
    in the compiled loop (measured), so the forward Linear keeps np.matmul."""
    spy = Spy(monkeypatch)
    g = Graph("f")
    b = Builder(g)
    x = g.add_input(TensorType((6, 4), "f32"), "x")
    w = g.add_input(TensorType((5, 4), "f32"), "w")
    bb = g.add_input(TensorType((5,), "f32"), "b")
    acc = {"broadcast": lambda: b("broadcast", bb, shape=[6, 5]), "splat": lambda: b.constant(0.5, (6, 5)),
           "argument": lambda: b("broadcast", bb, shape=[6, 5])}[bias]()
    ops = list(g.ops)
    y = b("add", b("matmul", x, b("transpose", w, perm=[1, 0])), acc)
    g.set_outputs([b("tanh", y)])
    outline([o for o in g.ops if bias != "argument" or o not in ops], "fused")  # the broadcast outside: an argument
    exe, _, _ = _run(g, False, seed=2)
    assert "gemm" not in exe.source and spy.calls == 0, exe.source


def test_the_gemm_is_numpys_own_openblas_not_another_librarys(monkeypatch, tmp_path):
    """scipy ships its own OpenBLAS: calling it (it was first in /proc/self/maps) woke a second thread
    pool beside numpy's, and an LSTM step on two cores went from 9 to 80 ms. Only numpy's wheel copy, or
    the one OpenBLAS the process has loaded, is taken."""
    pytest.importorskip("scipy.special")  # loads scipy's OpenBLAS where scipy ships one
    found = blas._candidates()
    root = os.path.realpath(os.path.join(os.path.dirname(np.__file__), ".."))
    assert all(os.path.realpath(p).startswith(root) and "numpy" in p for p in found), found
    fake = tmp_path / "site" / "numpy"
    fake.mkdir(parents=True)
    monkeypatch.setattr(np, "__file__", str(fake / "__init__.py"))  # a numpy without bundled libraries
    loaded = [ln.split(maxsplit=5)[5].strip() for ln in open("/proc/self/maps") if "openblas" in ln.lower()
              and len(ln.split(maxsplit=5)) == 6]
    expected = sorted(set(loaded)) if len(set(loaded)) == 1 else []
    assert blas._candidates() == expected  # two loaded copies: ambiguous, numpy's lines stay

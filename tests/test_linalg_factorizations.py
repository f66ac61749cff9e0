"""torch.linalg's factorizations (svd, svdvals, eigh, eigvalsh, qr, pinv, lstsq, matrix_rank, cond and the
spectral matrix norms), end to end against torch: values on random matrices (hypothesis over shapes, float32
and float64), gradients of gauge-invariant losses (singular and eigen vectors are unique only up to sign,
which numpy's LAPACK may choose unlike torch's), eagerly and compiled on every backend (Triton's
interpreter runs them as host steps), under vmap and forward mode, and the errors.

The VJP rules themselves are checked op by op in test_autodiff_rules.py (finite differences and
torch.autograd), the JVP rules in test_forward_ad.py and the batching rules in test_vmap.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import avalon as av
from avalon import ir

pytestmark = pytest.mark.usefixtures("module_kernel_cache")


def _orth(rng, n):
    q, r = np.linalg.qr(rng.normal(size=(n, n)))
    return q * np.sign(np.diag(r))


def spectral(rng, batch, m, n, lo=0.5):
    """Matrices with singular values at least 0.5 apart (well-conditioned derivatives)."""
    k = min(m, n)
    out = np.empty(batch + (m, n))
    for i in np.ndindex(batch):
        s = lo + 0.7 * rng.permutation(k) + rng.uniform(0, 0.1, k)
        out[i] = _orth(rng, m)[:, :k] @ np.diag(s) @ _orth(rng, n)[:, :k].T
    return out


def symmetric(rng, batch, n):
    out = np.empty(batch + (n, n))
    for i in np.ndindex(batch):
        q = _orth(rng, n)
        out[i] = q @ np.diag(-1.2 + 0.7 * rng.permutation(n)) @ q.T
    return out


def close(a, b, tol):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max(initial=0))))


TOL = {"float32": 2e-5, "float64": 1e-11}

shapes = st.tuples(st.sampled_from([(), (3,), (2, 2)]), st.integers(1, 5), st.integers(1, 5))


# -- values -----------------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(shape=shapes, dtype=st.sampled_from(["float32", "float64"]), full=st.booleans(), seed=st.integers(0, 999))
def test_svd_factors_reconstruct_and_match_torchs_singular_values(shape, dtype, full, seed):
    batch, m, n = shape
    a = np.random.default_rng(seed).normal(size=batch + (m, n)).astype(dtype)
    u, s, vh = av.linalg.svd(a, full_matrices=full)
    tu, ts, tvh = torch.linalg.svd(torch.from_numpy(a), full_matrices=full)
    assert (u.shape, s.shape, vh.shape) == (tuple(tu.shape), tuple(ts.shape), tuple(tvh.shape))
    assert u.dtype == s.dtype == vh.dtype == getattr(av, dtype)
    k = min(m, n)
    tol = TOL[dtype]
    close(s.numpy(), ts.numpy(), tol)
    close((u.numpy()[..., :k] * s.numpy()[..., None, :]) @ vh.numpy()[..., :k, :], a, 10 * tol)
    close(np.swapaxes(u.numpy(), -1, -2) @ u.numpy(), np.broadcast_to(np.eye(u.shape[-1]), u.shape[:-2] + (u.shape[-1],) * 2), 10 * tol)
    close(vh.numpy() @ np.swapaxes(vh.numpy(), -1, -2), np.broadcast_to(np.eye(vh.shape[-2]), vh.shape[:-1] + (vh.shape[-2],)), 10 * tol)
    close(av.linalg.svdvals(a).numpy(), ts.numpy(), tol)


@settings(max_examples=25, deadline=None)
@given(shape=shapes, dtype=st.sampled_from(["float32", "float64"]), uplo=st.sampled_from(["L", "U"]),
       seed=st.integers(0, 999))
def test_eigh_reads_one_triangle_and_matches_torchs_eigenvalues(shape, dtype, uplo, seed):
    batch, n, _ = shape
    a = np.random.default_rng(seed).normal(size=batch + (n, n)).astype(dtype)  # not symmetric: one triangle is read
    lam, v = av.linalg.eigh(a, UPLO=uplo)
    tl = torch.linalg.eigvalsh(torch.from_numpy(a), UPLO=uplo)
    tol = TOL[dtype]
    close(lam.numpy(), tl.numpy(), tol)
    sym = np.triu(a) + np.swapaxes(np.triu(a, 1), -1, -2) if uplo == "U" else np.tril(a) + np.swapaxes(np.tril(a, -1), -1, -2)
    close((v.numpy() * lam.numpy()[..., None, :]) @ np.swapaxes(v.numpy(), -1, -2), sym, 20 * tol)
    close(av.linalg.eigvalsh(a, UPLO=uplo).numpy(), tl.numpy(), tol)


@settings(max_examples=25, deadline=None)
@given(shape=shapes, dtype=st.sampled_from(["float32", "float64"]), mode=st.sampled_from(["reduced", "complete", "r"]),
       seed=st.integers(0, 999))
def test_qr_is_torchs_up_to_the_signs_of_rs_rows(shape, dtype, mode, seed):
    batch, m, n = shape
    a = np.random.default_rng(seed).normal(size=batch + (m, n)).astype(dtype)
    q, r = av.linalg.qr(a, mode=mode)
    tq, tr = torch.linalg.qr(torch.from_numpy(a), mode=mode)
    assert (q.shape, r.shape) == (tuple(tq.shape), tuple(tr.shape))
    tol = TOL[dtype]
    close(np.abs(r.numpy()), np.abs(tr.numpy()), 10 * tol)
    assert np.all(np.tril(r.numpy(), -1) == 0)
    if mode != "r":
        close(q.numpy() @ r.numpy(), a, 10 * tol)


@settings(max_examples=20, deadline=None)
@given(shape=shapes, dtype=st.sampled_from(["float32", "float64"]), seed=st.integers(0, 999))
def test_pinv_lstsq_rank_cond_and_norms_match_torch(shape, dtype, seed):
    batch, m, n = shape
    rng = np.random.default_rng(seed)
    a = spectral(rng, batch, m, n).astype(dtype)
    t = torch.from_numpy(a)
    tol = TOL[dtype]
    close(av.linalg.pinv(a).numpy(), torch.linalg.pinv(t).numpy(), 100 * tol)
    close(av.pinverse(a).numpy(), torch.pinverse(t).numpy(), 100 * tol)
    if m > 1 and n > 1:  # rank deficient, with a cutoff far from the roundoff-sized singular value
        d = a.copy()
        d[..., -1] = d[..., 0]
        td = torch.from_numpy(d)
        close(av.linalg.pinv(d, rtol=1e-3).numpy(), torch.linalg.pinv(td, rtol=1e-3).numpy(), 100 * tol)
        assert np.array_equal(av.linalg.matrix_rank(d, rtol=1e-3).numpy(), torch.linalg.matrix_rank(td, rtol=1e-3).numpy())
        assert np.array_equal(av.linalg.matrix_rank(d, atol=1e-3).numpy(), torch.linalg.matrix_rank(td, atol=1e-3).numpy())
    assert np.array_equal(av.linalg.matrix_rank(a).numpy(), torch.linalg.matrix_rank(t).numpy())
    assert av.linalg.matrix_rank(a).dtype == av.int64
    for ord in ("nuc", 2, -2):
        close(av.linalg.matrix_norm(a, ord).numpy(), torch.linalg.matrix_norm(t, ord).numpy(), 10 * tol)
    b = rng.normal(size=batch + (m, 2)).astype(dtype)
    for driver in (None, "gelsd"):
        got, want = av.linalg.lstsq(a, b, driver=driver), torch.linalg.lstsq(t, torch.from_numpy(b), driver=driver)
        close(got.solution.numpy(), want.solution.numpy(), 1e3 * tol)
        assert np.array_equal(got.rank.numpy(), want.rank.numpy())
        assert got.singular_values.shape == tuple(want.singular_values.shape)
        if want.residuals.numel():
            close(got.residuals.numpy(), want.residuals.numpy(), 1e3 * tol)


def test_hermitian_variants_and_cond_match_torch():
    rng = np.random.default_rng(0)
    a = symmetric(rng, (2,), 4)
    t = torch.from_numpy(a)
    close(av.linalg.pinv(a, hermitian=True).numpy(), torch.linalg.pinv(t, hermitian=True).numpy(), 1e-10)
    assert np.array_equal(av.linalg.matrix_rank(a, hermitian=True).numpy(),
                          torch.linalg.matrix_rank(t, hermitian=True).numpy())
    for p in (None, 2, -2, "fro", "nuc", 1, float("inf")):
        close(av.linalg.cond(a, p).numpy(), torch.linalg.cond(t, p).numpy(), 1e-9)
    close(av.linalg.norm(a[0], "nuc").numpy(), torch.linalg.norm(t[0], "nuc").numpy(), 1e-12)
    close(av.norm(a[0], p="nuc").numpy(), torch.norm(t[0], p="nuc").numpy(), 1e-12)
    close(av.linalg.matrix_norm(a, 2, dim=(0, 2)).numpy(), torch.linalg.matrix_norm(t, 2, dim=(0, 2)).numpy(), 1e-12)
    close(av.linalg.matrix_norm(a, "nuc", keepdim=True).numpy(), torch.linalg.matrix_norm(t, "nuc", keepdim=True).numpy(),
          1e-12)


def test_torch_svd_and_qr_old_spellings():
    a = np.random.default_rng(1).normal(size=(2, 5, 3))
    t = torch.from_numpy(a)
    x = av.tensor(a)
    for some in (True, False):
        u, s, v = av.svd(x, some=some)
        tu, ts, tv = torch.svd(t, some=some)
        assert (u.shape, v.shape) == (tuple(tu.shape), tuple(tv.shape))
        close(s.numpy(), ts.numpy(), 1e-12)
        close((u.numpy()[..., :3] * s.numpy()[..., None, :]) @ np.swapaxes(v.numpy()[..., :3], -1, -2), a, 1e-12)
        q, r = x.qr(some=some)
        assert (q.shape, r.shape) == tuple(tuple(z.shape) for z in torch.qr(t, some=some))
    u, s, v = x.svd(compute_uv=False)
    assert u.shape == (2, 5, 5) and v.shape == (2, 3, 3) and not u.numpy().any()
    close(x.pinverse().numpy(), t.pinverse().numpy(), 1e-12)
    close(av.nuclear_norm(x[0]).numpy(), torch.linalg.matrix_norm(t[0], "nuc").numpy(), 1e-12)


def test_a_matrix_with_a_nan_is_refused_as_torch_and_the_primitive_gives_nan_factors_for_it_alone():
    a = np.random.default_rng(2).normal(size=(3, 4, 4))
    a[1, 2, 0] = np.nan
    with pytest.raises(torch.linalg.LinAlgError, match="non-finite"):
        torch.linalg.svdvals(torch.tensor(a))
    with pytest.raises(av.linalg.LinAlgError, match="failed to converge"):  # (silent_failures_11: it returned nan)
        av.linalg.svdvals(a)
    s = av.ops.bind("svd", av.tensor(a), full_matrices=False).numpy()[:, 4, :]  # the packed S row
    assert np.isnan(s[1]).all() and np.isfinite(s[[0, 2]]).all()
    close(s[[0, 2]], np.linalg.svd(a[[0, 2]], compute_uv=False), 1e-12)


# -- gradients of gauge-invariant losses, against torch -------------------------------------------------

def _losses(lib):
    """Each a function of one matrix that does not depend on the factors' signs."""
    la = lib.linalg
    return {
        "svd": lambda a: (lambda u, s, vh: (u * u).sum() * 0.3 + (s ** 3).sum() + ((u[..., :2] * s[..., None, :2]) @ vh[..., :2, :]).sin().sum()
                          + (vh * vh)[..., 0, :].sum())(*la.svd(a, full_matrices=False)),
        "svd_full": lambda a: (lambda u, s, vh: (u[..., :, :1] ** 2).sum() + s.sum() + (vh[..., :1, :] ** 4).sum())(
            *la.svd(a, full_matrices=True)),
        "procrustes": lambda a: (lambda u, s, vh: ((u @ vh) * a).sum())(*la.svd(a, full_matrices=False)),
        "nuclear_and_spectral": lambda a: la.matrix_norm(a, "nuc").sum() + la.matrix_norm(a, 2).sum() * 2
        - la.matrix_norm(a, -2).sum(),
        "eigh": lambda a: (lambda l, v: (l ** 2).sum() + (v * v * l[..., None, :]).cos().sum())(*la.eigh(a @ a.mT)),
        "whitening": lambda a: (lambda l, v: (v * (l + 3.0).rsqrt()[..., None, :]) @ v.mT)(*la.eigh(a.mT @ a))[..., :, 0].pow(2).sum(),
        "qr": lambda a: (lambda q, r: (q * q * 1.5).exp().sum() + (r * r).sum() + r.abs().diagonal(dim1=-2, dim2=-1).log().sum())(
            *la.qr(a)),
        "pinv": lambda a: (la.pinv(a) ** 2).sum() + la.pinv(a)[..., 0, :].sum(),
        "lstsq": lambda a: la.lstsq(a, (a[..., :, :1] * 0.5).sin()).solution.pow(2).sum(),
        "cond": lambda a: la.cond(a).sum(),
    }


@pytest.mark.parametrize("name", list(_losses(av)))
@pytest.mark.parametrize("shape", [(4, 3), (3, 4), (2, 3, 3)])
def test_gradients_match_torch_eagerly_and_compiled(name, shape):
    if name == "lstsq" and shape[-2] < shape[-1]:
        shape = shape[:-2] + (shape[-1], shape[-2])
    rng = np.random.default_rng(sum(map(ord, name)) + len(shape))
    a = spectral(rng, shape[:-2], *shape[-2:])
    ta = torch.tensor(a, requires_grad=True)
    tl = _losses(torch)[name](ta)
    (tg,) = torch.autograd.grad(tl, ta)
    fn = _losses(av)[name]
    loss, g = av.value_and_grad(fn)(av.tensor(a))
    close(loss.numpy(), tl.detach().numpy(), 1e-10)
    close(g.numpy(), tg.numpy(), 1e-8)
    for backend in ("numpy", "cpu"):
        cl, cg = av.compile(av.value_and_grad(fn), backend=backend)(av.tensor(a))
        close(cl.numpy(), loss.numpy(), 1e-12)
        close(cg.numpy(), g.numpy(), 1e-10)


def test_svdvals_of_an_orthogonal_matrix_has_torchs_finite_gradient():
    """Repeated singular values: the singular vectors are not unique, their sum's gradient is U V^T."""
    q = _orth(np.random.default_rng(3), 4)
    ta = torch.tensor(q, requires_grad=True)
    (tg,) = torch.autograd.grad(torch.linalg.svdvals(ta).sum() + torch.linalg.matrix_norm(ta, "nuc"), ta)
    g = av.grad(lambda a: av.linalg.svdvals(a).sum() + av.linalg.matrix_norm(a, "nuc"))(av.tensor(q))
    assert np.isfinite(g.numpy()).all()
    close(g.numpy(), tg.numpy(), 1e-12)
    gp = av.grad(lambda a: av.linalg.pinv(a).sum())(av.tensor(q))  # pinv's rule has no gaps to divide by
    (tp,) = torch.autograd.grad(torch.linalg.pinv(ta).sum(), ta)
    close(gp.numpy(), tp.numpy(), 1e-12)


def test_triton_backend_runs_factorizations_between_kernels():
    rng = np.random.default_rng(4)
    a = spectral(rng, (2,), 4, 3).astype(np.float32)

    def f(a):
        u, s, vh = av.linalg.svd(a, full_matrices=False)
        lam, v = av.linalg.eigh(a.mT @ a)
        return ((u * s[..., None, :]) @ vh).relu().sum() + lam.sum() + (v * v).sum() + av.linalg.pinv(a).sum() \
            + (av.linalg.qr(a).R ** 2).sum()

    want = av.compile(av.value_and_grad(f), backend="numpy")(av.tensor(a))
    got = av.compile(av.value_and_grad(f), backend="triton")(av.tensor(a))
    for x, y in zip(got, want):
        close(x.numpy(), y.numpy(), 1e-4)


# -- transformations ---------------------------------------------------------------------------------

def test_vmap_and_forward_mode_through_factorizations_match_torch_func():
    rng = np.random.default_rng(5)
    a = spectral(rng, (3,), 4, 3)

    def f(lib, x):
        s = lib.linalg.svdvals(x)
        lam = lib.linalg.eigvalsh(x.mT @ x + x[:3, :3])
        return s * s.sum() + lam + lib.linalg.qr(x)[1].abs().sum(0)

    want = torch.func.vmap(lambda x: f(torch, x))(torch.from_numpy(a))
    close(av.vmap(lambda x: f(av, x))(av.tensor(a)).numpy(), want.numpy(), 1e-10)
    jf = av.func.jacfwd(lambda x: f(av, x))(av.tensor(a[0]))
    jr = av.func.jacrev(lambda x: f(av, x))(av.tensor(a[0]))
    tj = torch.func.jacrev(lambda x: f(torch, x))(torch.from_numpy(a[0]))
    close(jf.numpy(), tj.numpy(), 1e-8)
    close(jr.numpy(), tj.numpy(), 1e-8)


def test_the_ir_prints_the_packed_factorization_and_parses_back():
    g = av.trace(lambda a: av.linalg.svd(a, full_matrices=False).S.sum(), av.tensor(np.eye(4, 3, dtype=np.float32)))
    text = str(g)
    assert "= svd %" in text and ": tensor<8x3xf32>" in text, text  # (of the nan-checked input)
    assert str(ir.parse(text)) == text


# -- errors ------------------------------------------------------------------------------------------

def test_bad_input_is_refused_with_torchs_message():
    with pytest.raises(RuntimeError, match="linalg.svd.*16-bit"):
        av.linalg.svd(av.ones((3, 3), dtype=av.float16))
    with pytest.raises(RuntimeError, match="Expected a floating point"):
        av.linalg.eigh(av.ones((3, 3), dtype=av.int64))
    with pytest.raises(RuntimeError, match="at least 2 dimensions"):
        av.linalg.qr(av.ones(3))
    with pytest.raises(RuntimeError, match="square"):
        av.linalg.eigh(av.ones((3, 2)))
    with pytest.raises(RuntimeError, match="UPLO"):
        av.linalg.eigh(av.eye(3), UPLO="X")
    with pytest.raises(RuntimeError, match="unrecognized mode"):
        av.linalg.qr(av.eye(3), mode="full")
    with pytest.raises(NotImplementedError, match="complex matrices"):
        av.linalg.svd(av.complex(av.eye(2), av.eye(2)))
    with pytest.raises(NotImplementedError, match="complex matrices"):  # (real eig: tests/test_import_gaps_4.py)
        av.linalg.eig(av.complex(av.eye(2), av.eye(2)))


def test_a_complete_qr_of_a_tall_matrix_has_no_gradient_as_in_torch():
    x = av.tensor(np.random.default_rng(6).normal(size=(4, 2)))
    with pytest.raises(NotImplementedError, match="mode='complete'.*4 x 2"):
        av.grad(lambda a: av.linalg.qr(a, mode="complete").Q.sum())(x)
    g = av.grad(lambda a: av.linalg.qr(a, mode="complete").R.sum())(av.tensor(np.random.default_rng(6).normal(size=(2, 4))))
    assert np.isfinite(g.numpy()).all()


def test_mlir_and_onnx_export_refuse_a_factorization_by_name():
    from avalon.mlir.linalg import LoweringError
    from avalon.trace import trace_call
    g = trace_call(lambda a: av.linalg.svdvals(a).sum(), (av.tensor(np.eye(3, dtype=np.float32)),)).graph
    with pytest.raises(LoweringError, match="'svd'.*LAPACK factorization"):
        av.mlir.to_mlir(g, "linalg") if hasattr(av, "mlir") else __import__("avalon.mlir", fromlist=["to_mlir"]).to_mlir(g, "linalg")


def test_an_exported_torch_model_with_factorizations_imports_and_agrees():
    class Whiten(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 3)

        def forward(self, a):
            h = self.lin(a)
            lam, v = torch.linalg.eigh(h.mT @ h + torch.eye(3))
            u, s, vh = torch.linalg.svd(h, full_matrices=False)
            q, r = torch.linalg.qr(h)
            return (v * v * lam.rsqrt()).sum() + torch.linalg.svdvals(h).sum() + (u * u).sum() + (r * r).sum() \
                + torch.linalg.pinv(h).sum() + torch.linalg.matrix_norm(h, "nuc") + torch.svd(h)[1].sum() \
                + torch.linalg.matrix_rank(h).sum() + (q * q)[:, 0].sum() + (vh * vh).sum()

    torch.manual_seed(0)
    m = Whiten().double()
    x = torch.tensor(spectral(np.random.default_rng(7), (), 5, 3))
    imported = av.from_torch(m, x)
    got = imported(av.tensor(x.numpy()))
    close(got.numpy(), m(x).detach().numpy(), 1e-10)


def test_the_smaller_linalg_functions_match_torch():
    rng = np.random.default_rng(8)
    a = rng.normal(size=(3, 4, 4))
    spd = a @ np.swapaxes(a, -1, -2) + 4 * np.eye(4)
    tl = torch.linalg.cholesky(torch.from_numpy(spd))
    b = rng.normal(size=(3, 4, 2))
    close(av.cholesky_solve(av.tensor(b), av.tensor(tl.numpy())).numpy(),
          torch.cholesky_solve(torch.from_numpy(b), tl).numpy(), 1e-12)
    close(av.cholesky_solve(av.tensor(b), av.tensor(tl.mT.numpy()), upper=True).numpy(),
          torch.cholesky_solve(torch.from_numpy(b), tl.mT, upper=True).numpy(), 1e-12)
    close(av.cholesky_inverse(av.tensor(tl[0].numpy())).numpy(), torch.cholesky_inverse(tl[0]).numpy(), 1e-12)
    close(av.cholesky(av.tensor(spd)).numpy(), torch.linalg.cholesky(torch.from_numpy(spd)).numpy(), 1e-12)
    bad = spd.copy()
    bad[1] = -np.eye(4)
    assert av.linalg.cholesky_ex(av.tensor(bad)).info.numpy().tolist() == [0, 1, 0]
    with pytest.raises(av.linalg.LinAlgError):
        av.linalg.cholesky_ex(av.tensor(bad), check_errors=True)
    assert av.linalg.inv_ex(av.tensor(spd)).info.numpy().tolist() == [0, 0, 0]
    close(av.linalg.solve_ex(av.tensor(spd), av.tensor(b)).result.numpy(),
          torch.linalg.solve(torch.from_numpy(spd), torch.from_numpy(b)).numpy(), 1e-12)
    x = rng.normal(size=(2, 3))
    close(av.linalg.vander(av.tensor(x), N=4).numpy(), torch.linalg.vander(torch.from_numpy(x), N=4).numpy(), 0)
    t = rng.normal(size=(4, 6, 24))
    close(av.linalg.tensorinv(av.tensor(t)).numpy(), torch.linalg.tensorinv(torch.from_numpy(t)).numpy(), 1e-10)
    m, y = rng.normal(size=(2, 3, 2, 3)), rng.normal(size=(2, 3))
    close(av.linalg.tensorsolve(av.tensor(m), av.tensor(y)).numpy(),
          torch.linalg.tensorsolve(torch.from_numpy(m), torch.from_numpy(y)).numpy(), 1e-10)
    close(av.linalg.diagonal(av.tensor(a), offset=1).numpy(), torch.linalg.diagonal(torch.from_numpy(a), offset=1).numpy(), 0)
    d = spectral(rng, (), 10, 5)
    _, s, v = av.pca_lowrank(av.tensor(d), q=3)
    _, ts, tv = torch.pca_lowrank(torch.from_numpy(d), q=3, niter=10)
    close(s.numpy(), ts.numpy(), 1e-8)
    close(np.abs(v.numpy()), np.abs(tv.numpy()), 1e-4)  # (torch's is randomized: approximate)
    _, s, _ = av.svd_lowrank(av.tensor(d), q=2)
    close(s.numpy(), torch.linalg.svdvals(torch.from_numpy(d))[:2].numpy(), 1e-12)

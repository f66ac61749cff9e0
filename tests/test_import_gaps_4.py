"""Import gaps closed, fourth round: the functions test_import_gaps_3 recorded as still without a rule,
eagerly, compiled and imported through torch.export (`av.from_torch`), against torch.

- linalg.lu / lu_factor / lu_factor_ex / lu_solve (left, adjoint), torch.lu_unpack / torch.lu /
  torch.lu_solve: partial-pivot elimination unrolled (avalon/ops/linalg_lu.py); pivots int32 1-based
  as LAPACK's; gradients of P, L, U and of lu_solve in B and LU by composition, against torch.autograd;
- linalg.eig / eigvals: one LAPACK primitive (`eig`), complex results; compared convention-free
  (sorted eigenvalues, A v = lambda v, unit-norm eigenvectors); gradients as torch's (later round);
- bincount: eager; traced with minlength or with values known while tracing, else a clear error;
- Tensor.view(dtype): a `bitcast` primitive, different element sizes resizing the last dim, torch's errors;
- fft.hfft2 / ihfft2 / hfftn / ihfftn with s, dim, norm, and gradients.

linalg.ldl_factor / ldl_solve have rules since (tests/test_leftover_gaps.py).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import rel

import avalon as av

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


class _Fn(nn.Module):
    def __init__(self, fn, p: torch.Tensor) -> None:
        super().__init__()
        self.fn, self.p = fn, nn.Parameter(p)

    def forward(self, *xs):
        return self.fn(self.p, *xs)


def _imported_matches(fn, p: torch.Tensor, *args: torch.Tensor, tol: float = 1e-10) -> None:
    """torch.export of `fn(p, *args)` imported: forward and the gradient of p (of sum(output * w), w
    fixed random weights) agree with torch, eagerly and under av.compile."""
    module = _Fn(fn, p.clone())
    imported = av.from_torch(module, *args)
    out = module(*args)
    a = tuple(x.numpy() for x in args)
    expected = out.detach().numpy()
    for run in (imported, av.compile(imported)):
        got = run(*a).numpy()
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert rel(got, expected) < tol if expected.dtype.kind == "f" else np.array_equal(got, expected)
    if not out.requires_grad:
        return
    w = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * w).sum().backward()
    grads = av.grad(lambda m, *xs: (m(*xs) * w.numpy()).sum())(imported, *a)
    assert rel(grads["p"], module.p.grad) < tol


def _crel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _well(rng, shape) -> np.ndarray:
    """Random square matrices, diagonally loaded: well-conditioned, never singular."""
    n = shape[-1]
    return rng.standard_normal(shape) + n * np.eye(n) * rng.choice([-1, 1], shape[:-1])[..., None]


# -- LU ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(4, 4), (2, 3, 5, 5), (5, 3), (2, 3, 5)])
def test_lu_factors_match_torch(shape):
    a = _rng(1).standard_normal(shape)
    ta = torch.tensor(a)
    for ours, theirs in zip(av.linalg.lu(a), torch.linalg.lu(ta)):
        assert rel(ours, theirs) < 1e-12
    lu, piv = av.linalg.lu_factor(a)
    tlu, tpiv = torch.linalg.lu_factor(ta)
    assert rel(lu, tlu) < 1e-12 and piv.dtype == av.int32 and np.array_equal(piv.numpy(), tpiv.numpy())
    lu3, piv3, info = av.linalg.lu_factor_ex(a)
    assert info.dtype == av.int32 and not info.numpy().any() and info.shape == tuple(shape[:-2])
    for ours, theirs in zip(av.lu_unpack(lu, piv), torch.lu_unpack(tlu, tpiv)):
        assert rel(ours, theirs) < 1e-12
    p, low, up = av.lu_unpack(lu, piv, unpack_data=False)
    assert rel(p, torch.lu_unpack(tlu, tpiv)[0]) < 1e-12 and low.numel() == up.numel() == 0
    old = av.lu(av.tensor(a), get_infos=True)
    assert np.array_equal(old[1].numpy(), tpiv.numpy()) and len(old) == 3


def test_lu_of_a_singular_matrix_reports_info_and_lu_factor_raises():
    a = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [1.0, 0.0, 1.0]])
    ours, theirs = av.linalg.lu_factor_ex(a), torch.linalg.lu_factor_ex(torch.tensor(a))
    for x, y in zip(ours, theirs):
        assert np.allclose(x.numpy(), y.numpy())
    with pytest.raises(RuntimeError, match="is zero"):
        av.linalg.lu_factor(a)
    with pytest.raises(RuntimeError, match="Expected a floating point"):
        av.linalg.lu(np.eye(3, dtype=np.int64))
    with pytest.raises(RuntimeError, match="pivoting"):
        av.linalg.lu(a, pivot=False)


@pytest.mark.parametrize("left,adjoint", [(True, False), (True, True), (False, False), (False, True)])
def test_lu_solve_matches_torch(left, adjoint):
    rng = _rng(2)
    a = _well(rng, (2, 4, 4))
    b = rng.standard_normal((2, 4, 3) if left else (2, 3, 4))
    tlu, tpiv = torch.linalg.lu_factor(torch.tensor(a))
    expected = torch.linalg.lu_solve(tlu, tpiv, torch.tensor(b), left=left, adjoint=adjoint)
    lu, piv = av.linalg.lu_factor(a)
    assert rel(av.linalg.lu_solve(lu, piv, b, left=left, adjoint=adjoint), expected) < 1e-12
    f = av.compile(lambda a, b: av.linalg.lu_solve(*av.linalg.lu_factor(a), b, left=left, adjoint=adjoint))
    assert rel(f(a, b), expected) < 1e-12
    if left and not adjoint:
        assert rel(av.lu_solve(b, lu, piv), expected) < 1e-12  # torch.lu_solve(b, LU, pivots)
    with pytest.raises(RuntimeError, match="Incompatible shapes"):
        av.linalg.lu_solve(lu, piv, b[..., :2, :2])


def test_lu_gradients_match_torch():
    """Gradients of P, L, U (weighted sums of each) and of lu_solve in B and in LU, float64."""
    rng = _rng(3)
    for shape in [(3, 4, 4), (5, 3), (3, 5)]:
        a = rng.standard_normal(shape)
        wl, wu = (rng.standard_normal(s.shape) for s in torch.linalg.lu(torch.tensor(a))[1:])
        ta = torch.tensor(a, requires_grad=True)
        _, tl, tu = torch.linalg.lu(ta)
        ((tl * torch.tensor(wl)).sum() + (tu * torch.tensor(wu)).sum()).backward()

        def f(x, wl, wu):
            _, lo, up = av.linalg.lu(x)
            return (lo * wl).sum() + (up * wu).sum()
        for g in (av.grad(f), av.compile(av.grad(f))) if shape == (3, 4, 4) else (av.grad(f),):
            assert rel(g(a, wl, wu), ta.grad) < 1e-10
    a, b = _well(rng, (2, 4, 4)), rng.standard_normal((2, 4, 2))
    tlu, tpiv = torch.linalg.lu_factor(torch.tensor(a))
    tlu.requires_grad_()
    tb = torch.tensor(b, requires_grad=True)
    (torch.linalg.lu_solve(tlu, tpiv, tb, adjoint=True) ** 2).sum().backward()
    lu, piv = av.linalg.lu_factor(a)
    glu, gb = av.grad(lambda m, y: (av.linalg.lu_solve(m, piv, y, adjoint=True) ** 2).sum(), argnums=(0, 1))(lu, b)
    assert rel(glu, tlu.grad) < 1e-10 and rel(gb, tb.grad) < 1e-10


def _lu_family(p, b):
    lu, piv = torch.linalg.lu_factor(p)
    lu2, _, info = torch.linalg.lu_factor_ex(p * 2)
    x = torch.linalg.lu_solve(lu, piv, b) + torch.linalg.lu_solve(lu, piv, b.T, left=False, adjoint=True).T
    return (sum(torch.linalg.lu(p)) + sum(torch.lu_unpack(lu, piv)) + lu * piv + lu2 + info
            + torch.linalg.lu(p[:, :3])[1].sum() + torch.linalg.lu(p[:3].T)[2].sum()) @ x


def test_lu_family_imports():
    """linalg_lu, linalg_lu_factor_ex (with its effect-ordered error check), linalg_lu_solve, lu_unpack."""
    _imported_matches(_lu_family, torch.tensor(_well(_rng(5), (4, 4))), torch.tensor(_rng(4).standard_normal((4, 3))))


# -- eig --------------------------------------------------------------------------------------------

def _check_eig(a: np.ndarray, w: np.ndarray, v: np.ndarray) -> None:
    """Eigenvalues as torch's (sorted), A v = w v, unit-norm eigenvectors (torch's normalization)."""
    tw = torch.linalg.eigvals(torch.tensor(a)).numpy()
    key = lambda z: np.sort_complex(np.round(z, 9))  # noqa: E731
    assert np.allclose(key(w.reshape(-1, w.shape[-1])), key(tw.reshape(-1, tw.shape[-1])), atol=1e-9)
    assert np.allclose(a @ v, v * w[..., None, :], atol=1e-9)
    assert np.allclose(np.linalg.norm(v, axis=-2), 1.0)


def test_eig_and_eigvals_eager_and_compiled():
    a = _rng(6).standard_normal((3, 5, 5))
    w, v = av.linalg.eig(a)
    assert isinstance(w, av.ComplexTensor) and w.shape == (3, 5) and v.shape == (3, 5, 5)
    _check_eig(a, w.numpy(), v.numpy())
    f = av.compile(lambda x: av.view_as_real(av.linalg.eigvals(x)))
    r = f(a).numpy()
    assert np.abs(r[..., 0] + 1j * r[..., 1] - w.numpy()).max() < 1e-12
    sym = a + np.swapaxes(a, -1, -2)  # real spectrum
    assert np.allclose(np.sort(av.linalg.eigvals(sym).real.numpy(), -1), np.linalg.eigvalsh(sym))
    with pytest.raises(RuntimeError, match="square"):
        av.linalg.eig(a[..., :3])


def test_eig_gradient_is_torchs():  # (it was a GradError; tests/test_leftover_gaps.py checks it further)
    a = _rng(7).standard_normal((4, 4))
    t = torch.tensor(a, requires_grad=True)
    torch.linalg.eigvals(t).real.sum().backward()
    assert rel(av.grad(lambda x: av.linalg.eigvals(x).real.sum())(a), t.grad) < 1e-12
    g = av.grad(lambda x: av.linalg.eigvals(x.detach()).real.sum() + (x ** 2).sum())(a)  # no path: fine
    assert rel(g, 2 * a) < 1e-15


def test_eig_imports():
    a = torch.tensor(_rng(8).standard_normal((2, 4, 4)))
    module = _Fn(lambda p, x: torch.view_as_real(torch.linalg.eig(x + p.detach())[1]).abs().sum(-1)
                 + torch.linalg.eigvals(x).abs().sum(-1)[:, None, None] * p, torch.eye(4, dtype=torch.float64))
    imported = av.from_torch(module, a)
    expected = module(a).detach().numpy()  # (|Re| + |Im| of eigenvectors: phase-free up to LAPACK's sign)
    for run in (imported, av.compile(imported)):
        assert rel(run(a.numpy()), expected) < 1e-10
    eigvecs = av.from_torch(_Fn(lambda p, x: torch.view_as_real(torch.linalg.eig(x * p)[1]),
                                torch.ones(4, 4, dtype=torch.float64)), a)(a.numpy()).numpy()
    v = eigvecs[..., 0] + 1j * eigvecs[..., 1]
    _check_eig(a.numpy(), np.einsum("bik,bij,bjk->bk", v.conj(), a.numpy(), v), v)  # (lambda_k = v_k^H A v_k)


# -- bincount ---------------------------------------------------------------------------------------

def test_bincount_eager_compiled_and_errors():
    rng = _rng(9)
    x = rng.integers(0, 7, 20)
    w = rng.standard_normal(20) + 3
    for kw in ({}, {"minlength": 10}, {"weights": w}, {"weights": w.astype(np.float32), "minlength": 3}):
        tkw = {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
        expected = torch.bincount(torch.tensor(x), **tkw)
        got = av.bincount(x, **kw)
        assert got.dtype == getattr(av, str(expected.dtype)[6:]) and rel(got, expected) < 1e-6
    f = av.compile(lambda x, w: av.bincount(x, w, minlength=8))
    assert rel(f(x, w), torch.bincount(torch.tensor(x), torch.tensor(w), minlength=8)) < 1e-12
    g = av.compile(lambda w: av.bincount(av.tensor([3, 1, 3]), w))  # values known while tracing
    assert np.allclose(g(np.array([1.0, 2.0, 3.0])).numpy(), [0.0, 2.0, 0.0, 4.0])
    with pytest.raises(ValueError, match="bincount of a traced tensor"):
        av.compile(lambda x: av.bincount(x))(x)
    with pytest.raises(RuntimeError, match="non-negative"):
        av.bincount(np.array([1, -1]))
    gw = av.grad(lambda w: (av.bincount(x, w) ** 2).sum())(w)  # (torch has no derivative for bincount)
    assert rel(gw, 2 * np.bincount(x, w)[x]) < 1e-12


def test_bincount_imports():
    x = torch.tensor(_rng(10).integers(0, 6, 15))
    _imported_matches(lambda p, x: torch.bincount(x, minlength=8) * p + torch.bincount(x, p.detach()[x], minlength=8),
                      torch.tensor(_rng(11).standard_normal(8)), x)


# -- view(dtype) ------------------------------------------------------------------------------------

_DTYPES = ["float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8"]


def _bits(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
        return t.numpy().view(np.uint8)
    if t.dtype == av.bfloat16:
        t = t.view(av.int16)
    return np.ascontiguousarray(t.numpy()).view(np.uint8)


@pytest.mark.parametrize("src", ["float32", "float64", "float16", "bfloat16", "int16"])
def test_view_dtype_reinterprets_bits_as_torch(src):
    # (non-negative: an int16 < 0 is a NaN as bf16, whose payload Avalon's bf16 (held in an f32) quiets)
    x = torch.tensor(np.abs(_rng(12).standard_normal((3, 8))) * 50).to(getattr(torch, src))
    ax = av.tensor(x.float().numpy()).to(getattr(av, src)) if src == "bfloat16" else av.tensor(x.numpy())
    for d in _DTYPES:
        expected = x.view(getattr(torch, d))
        got = ax.view(getattr(av, d))
        assert got.shape == tuple(expected.shape) and np.array_equal(_bits(got), _bits(expected)), d
        comp = av.compile(lambda t, d=d: t.view(getattr(av, d)))(ax)
        assert np.array_equal(_bits(comp), _bits(expected)), d
    assert np.array_equal(ax.view(av.uint8).view(getattr(av, src)).numpy(), ax.numpy())


def test_view_dtype_errors_are_torch_s():
    cases = [(lambda m: m.tensor(1.0).view(m.int16)),
             (lambda m: m.ones(3, 3).t().view(m.int16)),
             (lambda m: m.ones(3, 3, dtype=m.int16).view(m.float32)),
             (lambda m: m.ones(3, 4, dtype=m.int16)[:, 1:3].view(m.float32))]
    for case in cases:
        with pytest.raises(RuntimeError) as theirs:
            case(torch)
        with pytest.raises(RuntimeError) as ours:
            case(av)
        assert str(theirs.value) in str(ours.value), (ours.value, theirs.value)


def test_view_dtype_has_no_gradient_as_torch_and_imports():
    x = _rng(13).standard_normal((2, 4)).astype(np.float32)
    g = av.grad(lambda t: (t.view(av.int32).float() * t).sum())(x)
    assert np.array_equal(g.numpy(), x.view(np.int32).astype(np.float32))
    p = torch.tensor(_rng(14).standard_normal((3, 4)))
    _imported_matches(lambda p: (p.view(torch.int16) & 7)[..., :4] * p * (p.view(torch.int32)[..., ::2] & 1)
                      + p.float().view(torch.int16).view(torch.float32).double() * p, p)


# -- Hermitian FFTs ---------------------------------------------------------------------------------

def _cx(z: np.ndarray) -> av.ComplexTensor:
    return av.complex(av.tensor(z.real), av.tensor(z.imag))


_HFFT_ARGS = [{}, {"norm": "ortho"}, {"s": (5, 7), "dim": (0, 2), "norm": "forward"}, {"s": (3, 6)}, {"dim": (1,)}]


@pytest.mark.parametrize("args", _HFFT_ARGS)
def test_hermitian_ffts_match_torch(args):
    rng = _rng(15)
    z = rng.standard_normal((3, 4, 5)) + 1j * rng.standard_normal((3, 4, 5))
    r = rng.standard_normal((3, 4, 6))
    names = ["hfftn", "ihfftn"] + (["hfft2", "ihfft2"] if len(args.get("s") or args.get("dim") or (0, 0)) == 2
                                   and "dim" not in args else [])
    for name in names:
        inverse = name.startswith("i")
        tf, af = getattr(torch.fft, name), getattr(av.fft, name)
        x = torch.tensor(r if inverse else z, requires_grad=True)
        expected = tf(x, **args)
        w = torch.tensor(rng.standard_normal(expected.shape))
        loss = lambda y, m, w=w, inverse=inverse: (y.abs() * w).sum() if inverse else (y * w).sum()  # noqa: E731
        loss(expected, torch).backward()
        ax = av.tensor(r) if inverse else _cx(z)
        got = af(ax, **args)
        e = expected.detach().resolve_conj().numpy()
        assert _crel(got.numpy(), e) < 1e-12, name
        f = av.compile(lambda a, name=name: getattr(av.fft, name)(a, **args))
        assert _crel(f(ax).numpy(), e) < 1e-12, name
        wn = w.numpy()
        g = av.grad(lambda a, af=af, loss=loss, wn=wn: loss(af(a, **args), av, wn))(ax)
        assert _crel(g.numpy(), x.grad.resolve_conj().numpy()) < 1e-10, name


def test_hermitian_ffts_import():
    z = torch.tensor(_rng(16).standard_normal((3, 4, 5)))
    _imported_matches(lambda p, x: torch.fft.hfft2(torch.complex(x, x * p)) + torch.fft.hfftn(
        torch.complex(p * x, x), norm="ortho"), torch.tensor(_rng(17).standard_normal(5)), z)
    _imported_matches(lambda p, x: torch.view_as_real(torch.fft.ihfft2(x * p) + torch.fft.ihfftn(
        x + p, s=(3, 5), dim=(0, 2), norm="forward")), torch.tensor(_rng(18).standard_normal(5)), z)

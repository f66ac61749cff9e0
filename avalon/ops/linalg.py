"""`av.linalg`, torch.linalg's names: norms, and the small-matrix algebra of `matrices` (inverse,
determinants, solves, powers, exponentials, cross products), Cholesky factors and triangular solves
(unrolled over the matrix size: k steps of batched ops, for the small matrices of priors and
flows), and the LAPACK factorizations, each one primitive whose factors are packed into its result
(`svd`, `eigh`, `qr`, `pinv`; `avalon/ir/primitives.py`) with the derivative rules torch uses
(`avalon/autodiff/factorizations.py`): svd, svdvals, eigh, eigvalsh, qr, pinv, lstsq,
matrix_rank, cond, and the 2 and nuclear matrix norms.

Singular and eigen vectors are unique only up to sign (and rotation within repeated values); the
signs are LAPACK's as numpy calls it, which may differ from torch's MKL: a loss that depends on them
differs from torch's as the factorizations do. The LU family (`lu`, `lu_factor(_ex)`, `lu_solve`) and
the general (non-symmetric) eigensolvers `eig` and `eigvals`, whose results are complex, are in
`linalg_lu.py`."""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..ir import dtypes as dt
from ..ir.primitives import qr_layout, svd_layout
from ..ir.reference import LinAlgError as _LinAlgError
from ..tensor import Tensor
from .core import (
    _broadcast_shapes,
    _check_finite_result,
    _tensor,
    add,
    amax,
    amin,
    bind,
    broadcast_to,
    cast,
    div,
    eq,
    expand_dims,
    fail,
    ge,
    gt,
    matmul,
    maximum,
    mul,
    reshape,
    sqrt,
    stack,
    stop_gradient,
    sub,
    transpose,
    where,
)
from .core import abs as _abs
from .core import sum as _sum
from .creation import iota, ones_like, zeros
from .linalg_lu import (  # noqa: F401
    eig,
    eigvals,
    ldl_factor,
    ldl_factor_ex,
    ldl_solve,
    lu,
    lu_factor,
    lu_factor_ex,
    lu_solve,
    lu_unpack,
    torch_lu,
    torch_lu_solve,
)
from .matrices import chain_matmul as multi_dot
from .matrices import cross as _cross
from .matrices import det, inverse, matrix_exp, matrix_power, slogdet, solve
from .reductions import linalg_norm as norm
from .reductions import matrix_norm, vector_norm
from .shaping import movedim

inv = inverse


def cross(input: Any, other: Any, *, dim: int = -1) -> Tensor:
    """torch.linalg.cross: the cross product along `dim` (default the last)."""
    return _cross(input, other, dim)


def vecdot(x: Any, y: Any, *, dim: int = -1) -> Tensor:
    """torch.linalg.vecdot: sum(x * y) along `dim`, the operands broadcast."""
    return _sum(mul(x, y), dim)


def _square(fn: str, a: Tensor) -> None:
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        raise fail(RuntimeError(f"linalg.{fn}: A must be batches of square matrices, but they are "
                                f"{a.shape[-2] if a.ndim > 1 else 1} by {a.shape[-1] if a.ndim else 1} matrices"))


def _mT(x: Tensor) -> Tensor:
    return transpose(x, -1, -2)


def cholesky(A: Any, *, upper: bool = False, out: Any = None) -> Tensor:
    """torch.linalg.cholesky: L with A = L L^T for symmetric positive-definite (..., k, k) A, column
    by column. It reads A symmetrized, so its gradient is torch's symmetric one; a matrix that is
    not positive-definite raises torch's LinAlgError, eagerly or (a `check` op on the factor) when a
    compiled graph runs; `cholesky_ex` gives nan and an info code instead."""
    if out is not None:
        raise TypeError("linalg.cholesky: argument 'out' is not supported")
    a = _tensor(A)
    y = _cholesky(a, upper)
    if y.is_traced or a.is_traced:
        return _check_finite_result(y, [a], "linalg.cholesky: The factorization could not be completed because the "
                                            "input is not positive-definite")
    v, av_ = y.numpy(), a.numpy()
    if not np.isfinite(v).all() and np.isfinite(av_).all():  # (it used to return the nans silently)
        diag = np.isfinite(np.diagonal(v, axis1=-2, axis2=-1)).reshape(-1, a.shape[-1])
        order = int(np.argmin(diag.all(0))) + 1 if not diag.all() else a.shape[-1]
        raise fail(LinAlgError(f"linalg.cholesky: The factorization could not be completed because the input is "
                               f"not positive-definite (the leading minor of order {order} is not "
                               "positive-definite)"))
    return y


def _cholesky(A: Any, upper: bool = False) -> Tensor:
    a = _tensor(A)
    _square("cholesky", a)
    k = a.shape[-1]
    a = mul(0.5, add(a, _mT(a)))
    rows = reshape(iota((k,), 0, dt.int64), (1,) * (a.ndim - 2) + (k,))
    cols: list[Tensor] = []
    for j in range(k):
        v = a[..., :, j]
        if cols:
            done = stack(cols, -1)  # (..., k, j)
            v = sub(v, _sum(mul(done, expand_dims(done[..., j, :], -2)), -1))
        cols.append(where(ge(rows, j), div(v, sqrt(v[..., j:j + 1])), 0.0))
    lower = stack(cols, -1)
    return _mT(lower) if upper else lower


def solve_triangular(A: Any, B: Any, *, upper: bool, left: bool = True, unitriangular: bool = False,
                     out: Any = None) -> Tensor:
    """torch.linalg.solve_triangular: X with A X = B (X A = B with left=False) for triangular A,
    by substitution row by row; only A's triangle named by `upper` is read."""
    if out is not None:
        raise TypeError("linalg.solve_triangular: argument 'out' is not supported")
    a, b = _tensor(A), _tensor(B)
    _square("solve_triangular", a)
    if not left:  # X A = B  <=>  A^T X^T = B^T
        return _mT(solve_triangular(_mT(a), _mT(b), upper=not upper, unitriangular=unitriangular))
    k = a.shape[-1]
    if b.ndim < 2 or b.shape[-2] != k:
        raise fail(RuntimeError(f"linalg.solve_triangular: incompatible shapes of A and B for the equation AX = B "
                                f"({a.shape[-2]}x{a.shape[-1]} and {b.shape[-2] if b.ndim > 1 else 1}x{b.shape[-1]})"))
    xs: dict[int, Tensor] = {}
    order = range(k - 1, -1, -1) if upper else range(k)
    for i in order:
        r = b[..., i, :]
        known = sorted(xs)  # the rows already solved: above i (lower) or below it (upper)
        if known:
            coef = stack([a[..., i, j] for j in known], -1)  # (..., n)
            r = sub(r, _sum(mul(expand_dims(coef, -1), stack([xs[j] for j in known], -2)), -2))
        xs[i] = r if unitriangular else div(r, a[..., i, i:i + 1])
    return stack([xs[i] for i in range(k)], -2)


def householder_product(A: Any, tau: Any, *, out: Any = None) -> Tensor:
    """torch.linalg.householder_product (LAPACK's orgqr): the first n columns of H_1 ... H_k for
    (..., m, n) A and (..., k) tau, H_i = I - tau_i v_i v_i^T, v_i being column i of A below the
    diagonal with a 1 on it; k rank-one updates, differentiable (orthogonal's householder map)."""
    if out is not None:
        raise TypeError("linalg.householder_product: argument 'out' is not supported")
    a, t = _tensor(A), _tensor(tau)
    if a.ndim < 2 or a.shape[-2] < a.shape[-1]:
        raise fail(RuntimeError("torch.linalg.householder_product: input must have at least 2 dimensions and "
                                "input.shape[-2] must be greater than or equal to input.shape[-1]"))
    m, n = a.shape[-2], a.shape[-1]
    if t.ndim != a.ndim - 1 or t.shape[-1] > n or tuple(t.shape[:-1]) != tuple(a.shape[:-2]):
        raise fail(RuntimeError(f"torch.linalg.householder_product: tau of shape {tuple(t.shape)} does not fit "
                                f"input of shape {tuple(a.shape)} (batch dimensions equal, tau.shape[-1] <= "
                                "input.shape[-1])"))
    rows = iota((m,), 0, dt.int64)
    q = cast(eq(expand_dims(rows, -1), iota((m, n), 1, dt.int64)), a.dtype)  # the m x n identity
    for i in range(t.shape[-1] - 1, -1, -1):
        v = where(gt(rows, i), a[..., :, i], cast(eq(rows, i), a.dtype))  # (..., m)
        vq = _sum(mul(expand_dims(v, -1), q), -2)  # v^T Q: (..., n)
        q = sub(q, mul(expand_dims(expand_dims(t[..., i], -1), -1), mul(expand_dims(v, -1), expand_dims(vq, -2))))
    return q


class SVDResult(NamedTuple):
    """torch.return_types.linalg_svd."""
    U: Tensor
    S: Tensor
    Vh: Tensor


class SVDOldResult(NamedTuple):
    """torch.return_types.svd (torch.svd: V, not its transpose)."""
    U: Tensor
    S: Tensor
    V: Tensor


class EighResult(NamedTuple):
    """torch.return_types.linalg_eigh."""
    eigenvalues: Tensor
    eigenvectors: Tensor


class QRResult(NamedTuple):
    """torch.return_types.linalg_qr."""
    Q: Tensor
    R: Tensor


class LstsqResult(NamedTuple):
    """torch.return_types.linalg_lstsq."""
    solution: Tensor
    residuals: Tensor
    rank: Tensor
    singular_values: Tensor


def _lapack_operand(fn: str, A: Any, square: bool = False, empty: bool = False) -> Tensor:
    """A batch of float32/float64 matrices, or torch's error naming `fn` (`empty`: 0-row or 0-column
    matrices allowed, as the LU family's traced elimination takes them)."""
    if getattr(A, "_complex_pair", False):
        raise fail(NotImplementedError(f"linalg.{fn}: complex matrices are not supported (Avalon's factorizations "
                                       "are real); factor the real matrix [[Re, -Im], [Im, Re]] instead"))
    a = _tensor(A)
    if not a.dtype.is_float:
        raise fail(RuntimeError(f"linalg.{fn}: Expected a floating point or complex tensor as input. Got {a.dtype}"))
    if a.dtype not in (dt.float32, dt.float64):
        raise fail(RuntimeError(f"linalg.{fn}: \"linalg_{fn}_cpu\" not implemented for '{a.dtype}' (LAPACK has no "
                                "16-bit factorizations: cast to float32)"))
    if a.ndim < 2:
        raise fail(RuntimeError(f"linalg.{fn}: The input tensor A must have at least 2 dimensions."))
    if square:
        _square(fn, a)
    if 0 in a.shape[-2:] and not empty:
        raise fail(NotImplementedError(f"linalg.{fn}: empty matrices ({a.shape[-2]} by {a.shape[-1]}) are not "
                                       "supported"))
    return a


def _no_nan(a: Tensor, op: str = "svd") -> Tensor:
    """`a` checked (eagerly, and when a traced graph runs) to hold no nan: torch's SVD refuses one
    (LAPACK does not converge; every singular value was nan here, and matrix_rank's count 0)."""
    from .core import check_values, isnan, logical_not
    return check_values(a, logical_not(isnan(a)), f"linalg.{op}: The algorithm failed to converge because the input "
                        "matrix contained non-finite values.", "linalg")


def svd(A: Any, full_matrices: bool = True, *, driver: Any = None, out: Any = None) -> SVDResult:
    """torch.linalg.svd: (U, S, Vh) with A = U diag(S) Vh, S descending; `full_matrices` (torch's
    default) makes U m x m and Vh n x n, whose extra columns get no gradient (torch narrows them too)."""
    if out is not None:
        raise TypeError("linalg.svd: argument 'out' is not supported")
    a = _no_nan(_lapack_operand("svd", A))
    m, n = a.shape[-2:]
    cu, cv, _ = svd_layout(m, n, bool(full_matrices))
    packed = bind("svd", a, full_matrices=bool(full_matrices))
    return SVDResult(packed[..., :m, :cu], packed[..., m, :min(m, n)], _mT(packed[..., m + 1:, :cv]))


def svdvals(A: Any, *, driver: Any = None, out: Any = None) -> Tensor:
    """torch.linalg.svdvals: the singular values, descending (their gradient needs no singular vectors'
    gaps, so repeated values are fine)."""
    if out is not None:
        raise TypeError("linalg.svdvals: argument 'out' is not supported")
    a = _no_nan(_lapack_operand("svdvals", A))
    m = a.shape[-2]
    return bind("svd", a, full_matrices=False)[..., m, :]


def torch_svd(input: Any, some: bool = True, compute_uv: bool = True, *, out: Any = None) -> SVDOldResult:
    """torch.svd (deprecated in torch, still common): (U, S, V) with A = U diag(S) V^T; `some=False`
    gives the full U and V; without `compute_uv`, U and V are zero matrices of the full sizes."""
    if out is not None:
        raise TypeError("svd: argument 'out' is not supported")
    if not compute_uv:
        s = svdvals(input)
        a = _tensor(input)
        m, n = a.shape[-2:]
        return SVDOldResult(zeros(a.shape[:-2] + (m, m), dtype=a.dtype), s, zeros(a.shape[:-2] + (n, n), dtype=a.dtype))
    u, s, vh = svd(input, full_matrices=not some)
    return SVDOldResult(u, s, _mT(vh))


def _uplo(fn: str, UPLO: Any) -> bool:
    if UPLO not in ("L", "U", "l", "u"):
        raise fail(RuntimeError(f"linalg.{fn}: Expected UPLO argument to be 'L' or 'U', but got {UPLO}"))
    return UPLO in ("U", "u")


def eigh(A: Any, UPLO: str = "L", *, out: Any = None) -> EighResult:
    """torch.linalg.eigh: (eigenvalues ascending, eigenvectors as columns) of symmetric matrices, read
    from the lower triangle (the upper with UPLO='U')."""
    if out is not None:
        raise TypeError("linalg.eigh: argument 'out' is not supported")
    a = _lapack_operand("eigh", A, square=True)
    n = a.shape[-1]
    packed = bind("eigh", a, upper=_uplo("eigh", UPLO))
    return EighResult(packed[..., 0, :], packed[..., 1:, :n])


def eigvalsh(A: Any, UPLO: str = "L", *, out: Any = None) -> Tensor:
    """torch.linalg.eigvalsh: the eigenvalues of symmetric matrices, ascending."""
    if out is not None:
        raise TypeError("linalg.eigvalsh: argument 'out' is not supported")
    return eigh(A, UPLO).eigenvalues


def qr(A: Any, mode: str = "reduced", *, out: Any = None) -> QRResult:
    """torch.linalg.qr: A = Q R, Q with orthonormal columns, R upper triangular (Householder: R's
    diagonal may be negative, as LAPACK's and torch's); mode 'reduced', 'complete' or 'r' (Q empty)."""
    if out is not None:
        raise TypeError("linalg.qr: argument 'out' is not supported")
    if mode not in ("reduced", "complete", "r"):
        raise fail(RuntimeError(f"qr received unrecognized mode '{mode}' but expected one of 'reduced' (default), "
                                "'r', or 'complete'"))
    a = _lapack_operand("qr", A)
    m, n = a.shape[-2:]
    complete = mode == "complete"
    c, _ = qr_layout(m, n, complete)
    packed = bind("qr", a, complete=complete)
    r = packed[..., m:, :n]
    if mode == "r":
        return QRResult(zeros((0,), dtype=a.dtype), r)
    return QRResult(packed[..., :m, :c], r)


def torch_qr(input: Any, some: bool = True, *, out: Any = None) -> QRResult:
    """torch.qr (deprecated in torch): `some=False` is mode='complete'."""
    if out is not None:
        raise TypeError("qr: argument 'out' is not supported")
    return qr(input, "reduced" if some else "complete")


def _tolerance(fn: str, name: str, v: Any) -> float | None:
    """A tolerance given as a number (or a tensor of known value: one for the whole batch)."""
    if v is None:
        return None
    if isinstance(v, Tensor):
        if v.numel() != 1:
            raise fail(NotImplementedError(f"linalg.{fn}: a tensor {name} of {v.numel()} elements (one per matrix) "
                                           "is not supported; give one number"))
        v = float(v.item())  # (a traced tensor whose value depends on an input: item() says so, naming the line)
    return float(v)


def _tolerances(fn: str, a: Tensor, atol: Any, rtol: Any) -> tuple[float, float]:
    """torch's (atol, rtol): rtol defaults to eps * max(m, n) when atol is not given (or zero), else 0."""
    at, rt = _tolerance(fn, "atol", atol), _tolerance(fn, "rtol", rtol)
    if rt is None:
        eps = 2.220446049250313e-16 if a.dtype == dt.float64 else 1.1920928955078125e-07
        rt = eps * max(a.shape[-2:]) if not at else 0.0
    return at or 0.0, rt


def pinv(A: Any, rcond: Any = None, hermitian: bool = False, *, atol: Any = None, rtol: Any = None,
         out: Any = None) -> Tensor:
    """torch.linalg.pinv: the Moore-Penrose pseudo-inverse through the SVD (eigh with `hermitian`),
    singular values at most max(atol, rtol * largest) taken as zero; `rcond` is torch's older name
    for rtol. Its gradient is torch's (matmuls of A and A+, no division by singular value gaps)."""
    if out is not None:
        raise TypeError("linalg.pinv: argument 'out' is not supported")
    if rcond is not None:
        if rtol is not None:
            raise fail(RuntimeError("linalg.pinv: rcond and rtol cannot both be given (rcond is rtol's old name)"))
        rtol = rcond
    a = _lapack_operand("pinv", A, square=bool(hermitian))
    at, rt = _tolerances("pinv", a, atol, rtol)
    # torch's SVD refuses a nan; its eigh (hermitian) mostly fails to converge too (a LinAlgError), else
    # returns nan or, for a nan on the diagonal, zeros in silence: refused here always, as the SVD's
    a = _no_nan(a, "eigh" if hermitian else "svd")
    return bind("pinv", a, atol=at, rtol=rt, hermitian=bool(hermitian))


def pinverse(input: Any, rcond: float = 1e-15) -> Tensor:
    """torch.pinverse: pinv with rtol = rcond (1e-15 by default)."""
    return pinv(input, rtol=rcond)


def matrix_rank(A: Any, tol: Any = None, hermitian: bool = False, *, atol: Any = None, rtol: Any = None,
                out: Any = None) -> Tensor:
    """torch.linalg.matrix_rank: the number of singular values (|eigenvalues| with `hermitian`) above
    max(atol, rtol * largest), as int64; `tol` is torch's older name for atol."""
    if out is not None:
        raise TypeError("linalg.matrix_rank: argument 'out' is not supported")
    if tol is not None:
        atol, rtol = tol, 0.0 if rtol is None else rtol
    a = _lapack_operand("matrix_rank", A, square=bool(hermitian))
    at, rt = _tolerances("matrix_rank", a, atol, rtol)
    s = _abs(eigvalsh(a)) if hermitian else svdvals(a)
    cut = maximum(mul(amax(s, -1, keepdims=True), rt), at)
    return _sum(cast(gt(s, cut), dt.int64), -1)


def lstsq(A: Any, B: Any, rcond: Any = None, *, driver: str | None = None) -> LstsqResult:
    """torch.linalg.lstsq: the least-squares solution X minimizing |A X - B| (the minimum-norm one
    where A is rank deficient), as A+ B; its gradient is torch's (through pinv). `driver` picks
    which other fields are filled as torch's CPU drivers do: 'gelsy' (default) the rank; 'gelsd' and
    'gelss' also the singular values (no gradient flows through them, as torch marks them
    non-differentiable), and for m > n the residuals (computed for every matrix, where
    torch leaves them empty if one is rank deficient); 'gels' none."""
    drv = driver or "gelsy"
    if drv not in ("gels", "gelsy", "gelsd", "gelss"):
        raise fail(RuntimeError(f"torch.linalg.lstsq: parameter `driver` should be one of (gels, gelsy, gelsd, gelss), "
                                f"but got {driver}"))
    a = _lapack_operand("lstsq", A)
    b = _tensor(B)
    if b.dtype != a.dtype:
        raise fail(RuntimeError(f"torch.linalg.lstsq: Expected input and other to have the same dtype, but got "
                                f"input's dtype {a.dtype} and other's dtype {b.dtype}"))
    m, n = a.shape[-2:]
    vec = b.ndim == a.ndim - 1
    bm = expand_dims(b, -1) if vec else b
    if bm.ndim < 2 or bm.shape[-2] != m:
        raise fail(RuntimeError(f"torch.linalg.lstsq: input.size(-2) should match other.size(-2) ({m} vs "
                                f"{bm.shape[-2] if bm.ndim > 1 else bm.shape})"))
    batch = _broadcast_shapes("lstsq", a.shape[:-2], bm.shape[:-2])
    a = broadcast_to(a, batch + (m, n))
    bm = broadcast_to(bm, batch + bm.shape[-2:])
    rtol = _tolerance("lstsq", "rcond", rcond)
    if rtol is None or rtol < 0:
        rtol = (2.220446049250313e-16 if a.dtype == dt.float64 else 1.1920928955078125e-07) * max(m, n)
    a = _no_nan(a)  # (torch's lstsq refuses a nan too, with an internal assert)
    x = matmul(bind("pinv", a, atol=0.0, rtol=rtol, hermitian=False), bm)
    empty = zeros((0,), dtype=a.dtype)
    residuals = empty
    if drv in ("gelsd", "gelss") and m > n:
        d = sub(matmul(a, x), bm)
        residuals = _sum(mul(d, d), -2)
        if vec:
            residuals = reshape(residuals, batch)
    rank = zeros((0,), dtype=dt.int64) if drv == "gels" else matrix_rank(a, atol=0.0, rtol=rtol)
    # torch's lstsq marks its singular values (and rank) non-differentiable: constants to autodiff
    sv = stop_gradient(svdvals(a)) if drv in ("gelsd", "gelss") else empty
    return LstsqResult(reshape(x, x.shape[:-1]) if vec else x, residuals, rank, sv)


def cond(A: Any, p: Any = None, *, out: Any = None) -> Tensor:
    """torch.linalg.cond: the condition number in the `p` norm; None and 2 (-2) are the ratio of the
    largest to the smallest singular value (its inverse), the others |A|_p |A^-1|_p for square A."""
    if out is not None:
        raise TypeError("linalg.cond: argument 'out' is not supported")
    if p in (None, 2, -2):
        s = svdvals(A)
        big, small = amax(s, -1), amin(s, -1)
        return div(big, small) if p != -2 else div(small, big)
    a = _lapack_operand("cond", A, square=True)
    return mul(matrix_norm(a, p), matrix_norm(inverse(a), p))


def spectral_matrix_norm(x: Tensor, ord: Any, d0: int, d1: int, keepdim: bool) -> Tensor:
    """matrix_norm's 'nuc', 2 and -2 (the sum, largest and smallest singular value) over dims (d0, d1)."""
    s = svdvals(movedim(x, (d0, d1), (-2, -1)) if (d0, d1) != (x.ndim - 2, x.ndim - 1) else x)
    r = _sum(s, -1) if ord == "nuc" else amax(s, -1) if ord == 2 else amin(s, -1)
    if keepdim:
        for d in sorted((d0, d1)):
            r = expand_dims(r, d)
    return r


LinAlgError = _LinAlgError  # torch.linalg.LinAlgError; compiled checks raise a subclass (LinAlgCheckError)


class _ResultInfo(NamedTuple):
    result: Tensor
    info: Tensor


def _info(a: Tensor, value: Tensor, fn: str, check_errors: bool) -> _ResultInfo:
    """(value, LAPACK's info per matrix (0: success)) read off the result: non-finite where the input was
    finite means the factorization failed (a singular or non-positive-definite matrix). With check_errors
    that is torch's LinAlgError, eagerly at once, traced when the graph runs (both returned checked)."""
    from .core import check_values, isfinite, logical_not
    bad = logical_not(isfinite(value))
    for _ in range(value.ndim - a.ndim + 2):
        bad = bad.any(-1)
    info = cast(bad, dt.int32)
    msg = f"linalg.{fn}: the factorization failed for some matrix of the batch (info = 1)"
    if check_errors and not info.is_traced and bool(info.numpy().any()):
        raise fail(LinAlgError(msg))
    if check_errors and info.is_traced:
        ok = logical_not(bad)
        value = check_values(value, broadcast_to(reshape(ok, ok.shape + (1,) * (value.ndim - ok.ndim)), value.shape),
                             msg, "linalg")
        info = check_values(info, ok, msg, "linalg")
    return _ResultInfo(value, info)


def cholesky_ex(A: Any, *, upper: bool = False, check_errors: bool = False, out: Any = None) -> _ResultInfo:
    """torch.linalg.cholesky_ex: (L, info); info is 1 where A is not positive-definite (L has nans there)."""
    if out is not None:
        raise TypeError("linalg.cholesky_ex: argument 'out' is not supported")
    a = _tensor(A)
    chol = _cholesky(a, upper=upper)  # (not cholesky, which raises eagerly: info reports the failure here)
    return _info(a, chol, "cholesky_ex", check_errors)


def inv_ex(A: Any, *, check_errors: bool = False, out: Any = None) -> _ResultInfo:
    """torch.linalg.inv_ex: (inverse, info); a singular matrix gives info 1 where its values are traced
    (eagerly, linalg.inv itself says so)."""
    if out is not None:
        raise TypeError("linalg.inv_ex: argument 'out' is not supported")
    a = _tensor(A)
    inv_ = inverse(a)
    return _info(a, inv_, "inv_ex", check_errors)


def solve_ex(A: Any, B: Any, *, left: bool = True, check_errors: bool = False, out: Any = None) -> _ResultInfo:
    """torch.linalg.solve_ex: (solution, info)."""
    if out is not None:
        raise TypeError("linalg.solve_ex: argument 'out' is not supported")
    a = _tensor(A)
    x = solve(a, B, left=left)
    return _info(a, x, "solve_ex", check_errors)


def diagonal(A: Any, *, offset: int = 0, dim1: int = -2, dim2: int = -1) -> Tensor:
    """torch.linalg.diagonal: torch.diagonal with the last two dims by default."""
    from .shaping import diagonal as _diagonal
    return _diagonal(A, offset, dim1, dim2)


def vander(x: Any, *, N: int | None = None) -> Tensor:
    """torch.linalg.vander: increasing powers x^0 ... x^(N-1) in the last dim, batched over leading dims
    (torch.vander's columns reversed)."""
    v = _tensor(x)
    if v.ndim < 1:
        raise fail(RuntimeError("linalg.vander: x must have at least one dimension"))
    n = v.shape[-1] if N is None else int(N)
    if n <= 1:
        raise fail(RuntimeError(f"linalg.vander: N must be greater than 1, got {n}"))
    d = v.dtype if v.dtype.is_float else dt.int64
    v = cast(v, d)
    cols = [ones_like(v)]
    for _ in range(1, n):
        cols.append(mul(cols[-1], v))
    return stack(cols, -1)


def tensorinv(A: Any, ind: int = 2, *, out: Any = None) -> Tensor:
    """torch.linalg.tensorinv: the inverse of A seen as a matrix of its first `ind` dims by the rest."""
    if out is not None:
        raise TypeError("linalg.tensorinv: argument 'out' is not supported")
    a = _tensor(A)
    import math
    rows, cols = math.prod(a.shape[:ind]), math.prod(a.shape[ind:])
    if rows != cols:
        raise fail(RuntimeError(f"linalg.tensorinv: Expected self to satisfy the requirement prod(self.shape[ind:]) "
                                f"== prod(self.shape[:ind]), but got {cols} != {rows}"))
    return reshape(inverse(reshape(a, (rows, cols))), a.shape[ind:] + a.shape[:ind])


def tensorsolve(A: Any, B: Any, dims: Any = None, *, out: Any = None) -> Tensor:
    """torch.linalg.tensorsolve: X with tensordot(A, X, X.ndim) = B."""
    if out is not None:
        raise TypeError("linalg.tensorsolve: argument 'out' is not supported")
    import math
    a, b = _tensor(A), _tensor(B)
    if dims is not None:
        dims = [d % a.ndim for d in dims]
        a = movedim(a, dims, list(range(a.ndim - len(dims), a.ndim)))
    xshape = a.shape[b.ndim:]
    n = math.prod(b.shape)
    x = solve(reshape(a, (n, math.prod(xshape))), reshape(b, (n,)))
    return reshape(x, xshape)


def torch_cholesky(input: Any, upper: bool = False, *, out: Any = None) -> Tensor:
    """torch.cholesky (deprecated in torch): linalg.cholesky."""
    return cholesky(input, upper=upper, out=out)


def cholesky_solve(B: Any, L: Any, upper: bool = False, *, out: Any = None) -> Tensor:
    """torch.cholesky_solve(B, L): X with A X = B for A = L L^T (U^T U with `upper`), by two
    triangular solves."""
    if out is not None:
        raise TypeError("cholesky_solve: argument 'out' is not supported")
    lo = _tensor(L)
    if upper:
        lo = _mT(lo)
    y = solve_triangular(lo, B, upper=False)
    return solve_triangular(_mT(lo), y, upper=True)


def cholesky_inverse(L: Any, upper: bool = False, *, out: Any = None) -> Tensor:
    """torch.cholesky_inverse(L): A^-1 for A = L L^T (U^T U with `upper`)."""
    from .core import check_values, ne
    from .creation import eye
    from .shaping import diagonal as _diagonal
    lo = _tensor(L)
    n = lo.shape[-1]
    if lo.ndim >= 2 and lo.shape[-2] == n and n:  # torch's (LAPACK potri's) check: nans or infs were returned
        ok = reshape(ne(_diagonal(lo, 0, -2, -1), 0), lo.shape[:-2] + (1, n))
        lo = check_values(lo, broadcast_to(ok, lo.shape), "cholesky_inverse: a diagonal element is zero, the "
                          "inversion could not be completed because the input matrix is singular.", "linalg")
    return cholesky_solve(broadcast_to(eye(n, dtype=lo.dtype), lo.shape), lo, upper, out=out)


def svd_lowrank(A: Any, q: int | None = 6, niter: int = 2, M: Any = None) -> SVDOldResult:  # noqa: N803
    """torch.svd_lowrank: (U, S, V) of rank q. torch draws a randomized range finder; Avalon returns the
    exact truncated SVD, which that approximates (the best rank-q approximation: same S to torch's
    accuracy, vectors up to sign)."""
    a = _tensor(A)
    if M is not None:
        a = sub(a, _tensor(M))
    k = min(a.shape[-2:]) if q is None else int(q)
    u, s, vh = svd(a, full_matrices=False)
    return SVDOldResult(u[..., :k], s[..., :k], _mT(vh[..., :k, :]))


def pca_lowrank(A: Any, q: int | None = None, center: bool = True, niter: int = 2) -> SVDOldResult:
    """torch.pca_lowrank: the top-q principal directions of A's rows (centered by column means with
    `center`), q = min(6, m, n) by default; exact where torch's is randomized (see svd_lowrank)."""
    a = _tensor(A)
    k = min(6, *a.shape[-2:]) if q is None else int(q)
    if center:
        from .core import mean
        a = sub(a, mean(a, -2, keepdims=True))
    return svd_lowrank(a, k, niter)


__all__ = ["LinAlgError", "cholesky", "cholesky_ex", "cond", "cross", "det", "diagonal", "eig", "eigh", "eigvals",
           "eigvalsh", "householder_product", "inv", "inv_ex", "lstsq",
           "ldl_factor", "ldl_factor_ex", "ldl_solve", "lu", "lu_factor", "lu_factor_ex", "lu_solve", "matrix_exp",
           "matrix_norm", "matrix_power",
           "matrix_rank", "multi_dot", "norm", "pinv", "qr", "slogdet", "solve", "solve_ex", "solve_triangular", "svd",
           "svdvals", "tensorinv", "tensorsolve", "vander", "vecdot", "vector_norm"]

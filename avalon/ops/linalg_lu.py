"""torch's LU family: `linalg.lu`, `linalg.lu_factor`, `linalg.lu_factor_ex`, `linalg.lu_solve`,
`torch.lu_unpack` (and the deprecated `torch.lu`), and the general eigensolvers `linalg.eig` /
`linalg.eigvals`.

LU is Gaussian elimination with partial pivoting unrolled over the (static) matrix size, as
`ops/matrices.py` does for det and solve: min(m, n) steps of batched elementwise work, the pivot an
`argmax` of |column| (the first largest, as LAPACK's idamax), the row swap a selection. So it traces,
compiles and differentiates by composition: for fixed pivots the factors are smooth functions of A,
and their derivative is the one torch's analytic rule (linalg_lu_backward) computes. The pivots are
LAPACK's: int32, 1-based, row j swapped with row pivots[j] at step j; the compact LU holds L's
multipliers below the diagonal and U on and above it. Meant for the small matrices models carry.

`eig` is one primitive (`avalon/ir/primitives.py`, numpy's LAPACK geev, the same routine torch
calls), its complex eigenvalues and eigenvectors packed into one real result and returned as
`ComplexTensor`s; eigenvectors are LAPACK's (unit norm, each one's largest component real).
Its derivative is torch's linalg_eig_backward (avalon/autodiff/factorizations.py).

`ldl_factor` / `ldl_solve` are primitives too (LAPACK sytrf / sytrs, the routines torch calls), so
the packed LD and pivots are LAPACK's own; like torch's, they have no derivative.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from ..ir import dtypes as dt
from ..tensor import Tensor
from .core import (
    _broadcast_shapes,
    _tensor,
    abs,
    add,
    argmax,
    bind,
    broadcast_to,
    cast,
    concat,
    div,
    eq,
    expand_dims,
    fail,
    ge,
    gt,
    logical_and,
    matmul,
    mul,
    reshape,
    sub,
    sum,
    transpose,
    where,
)
from .creation import iota, zeros
from .shaping import narrow
from .sorting import take_along_dim


class LUResult(NamedTuple):
    """torch.return_types.linalg_lu (and lu_unpack's)."""
    P: Tensor
    L: Tensor
    U: Tensor


class LUFactorResult(NamedTuple):
    """torch.return_types.linalg_lu_factor."""
    LU: Tensor
    pivots: Tensor


class LUFactorExResult(NamedTuple):
    """torch.return_types.linalg_lu_factor_ex."""
    LU: Tensor
    pivots: Tensor
    info: Tensor


class EigResult(NamedTuple):
    """torch.return_types.linalg_eig."""
    eigenvalues: Any
    eigenvectors: Any


def _mT(x: Tensor) -> Tensor:
    return transpose(x, -1, -2)


def _operand(fn: str, A: Any) -> Tensor:
    """linalg.py's LAPACK operand check, empty matrices allowed (linalg imports this module at load)."""
    from .linalg import _lapack_operand
    return _lapack_operand(fn, A, empty=True)


def _swap(perm: Tensor, j: int, p: Tensor) -> Tensor:
    """perm (..., m) with entries j and p (..., 1) exchanged."""
    idx = iota((perm.shape[-1],), 0, dt.int64)
    at_j, at_p = narrow(perm, -1, j, 1), take_along_dim(perm, p, -1)
    return where(eq(idx, j), at_p, where(eq(idx, p), at_j, perm))


def _permutation(pivots: Tensor, m: int) -> Tensor:
    """The row order (..., m) int64 that LAPACK's 1-based pivots (..., k) describe: row i of L U is row
    perm[i] of A."""
    batch = tuple(pivots.shape[:-1])
    perm = broadcast_to(iota((m,), 0, dt.int64), batch + (m,))
    piv = sub(cast(pivots, dt.int64), 1)
    for j in range(pivots.shape[-1]):
        perm = _swap(perm, j, narrow(piv, -1, j, 1))
    return perm


def _perm_matrix(perm: Tensor, dtype: dt.DType) -> Tensor:
    """P with A = P L U: P[r, i] = 1 where perm[i] == r."""
    m = perm.shape[-1]
    return cast(eq(expand_dims(perm, -2), iota((m, 1), 0, dt.int64)), dtype)


def _factor(a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(compact LU, pivots int32 1-based (..., k), perm int64 (..., m)) of a (..., m, n)."""
    m, n = a.shape[-2:]
    batch = tuple(a.shape[:-2])
    rows, cols = iota((m, 1), 0, dt.int64), iota((1, n), 1, dt.int64)
    perm = broadcast_to(iota((m,), 0, dt.int64), batch + (m,))
    pivots = []
    x = a
    for j in range(min(m, n)):
        col = narrow(x, -1, j, 1)  # (..., m, 1)
        p = argmax(where(ge(rows, j), abs(col), -1.0), -2, keepdims=True)  # (..., 1, 1): the first largest
        at_p = eq(rows, p)
        row_j = narrow(x, -2, j, 1)
        row_p = sum(where(at_p, x, 0.0), -2, keepdims=True)
        x = where(eq(rows, j), row_p, where(at_p, row_j, x))
        pv = reshape(p, batch + (1,))
        perm = _swap(perm, j, pv)
        pivots.append(pv)
        piv = narrow(narrow(x, -2, j, 1), -1, j, 1)
        # a zero pivot (its column is zero below it too): LAPACK leaves the column alone and reports info
        safe = where(eq(piv, 0.0), 1.0, piv)
        f = where(gt(rows, j), div(narrow(x, -1, j, 1), safe), 0.0)  # (..., m, 1)
        upd = sub(x, mul(f, where(gt(cols, j), narrow(x, -2, j, 1), 0.0)))
        x = where(logical_and(gt(rows, j), eq(cols, j)), f, upd)
    piv = add(concat(pivots, -1), 1) if pivots else zeros(batch + (0,), dtype=dt.int64)
    return x, cast(piv, dt.int32), perm


def _unpack(lu: Tensor) -> tuple[Tensor, Tensor]:
    """(L (..., m, k) unit lower, U (..., k, n) upper) from a compact (..., m, n) LU."""
    m, n = lu.shape[-2:]
    k = min(m, n)
    rows, cols = iota((m, 1), 0, dt.int64), iota((1, n), 1, dt.int64)
    low = where(gt(rows, cols), lu, where(eq(rows, cols), 1.0, 0.0))
    up = where(ge(cols, rows), lu, 0.0)
    return narrow(low, -1, 0, k), narrow(up, -2, 0, k)


def _info(lu: Tensor) -> Tensor:
    """LAPACK's info: the 1-based index of the first zero on U's diagonal (0 if none), int32."""
    m, n = lu.shape[-2:]
    k = min(m, n)
    d = sum(where(eq(iota((m, 1), 0, dt.int64), iota((1, n), 1, dt.int64)), lu, 0.0), -2)  # (..., n)
    d = narrow(d, -1, 0, k)
    zero = eq(d, 0.0)
    first = add(argmax(cast(zero, dt.int32), -1), 1)
    return cast(where(sum(cast(zero, dt.int32), -1) > 0, first, 0), dt.int32)


def _checked_info(t: Tensor, info: Tensor, message: str, error: str = "linalg") -> Tensor:
    """`t` (a factor, its pivots or info) checked to come from matrices whose info is 0, when a traced
    graph runs (eagerly the callers raise at once): torch's error where it checks."""
    from .core import check_values
    ok = reshape(eq(info, 0), info.shape + (1,) * (t.ndim - info.ndim))
    return check_values(t, broadcast_to(ok, t.shape), message, error)


def lu_factor_ex(A: Any, *, pivot: bool = True, check_errors: bool = False, out: Any = None) -> LUFactorExResult:
    """torch.linalg.lu_factor_ex: (LU, pivots, info); info[b] = i > 0 where U[i-1, i-1] is exactly zero."""
    if out is not None:
        raise TypeError("linalg.lu_factor_ex: argument 'out' is not supported")
    a = _operand("lu_factor_ex", A)
    if not pivot:
        raise fail(RuntimeError("linalg.lu_factor: LU without pivoting is not implemented on the CPU"))
    lu, piv, _ = _factor(a)
    info = _info(lu)
    if check_errors and not info.is_traced and bool(info.numpy().any()):
        from .linalg import LinAlgError
        raise fail(LinAlgError(f"linalg.lu_factor_ex: U[{int(info.numpy().max())},{int(info.numpy().max())}] is "
                               "zero and using it on lu_solve would result in a division by zero"))
    if check_errors and info.is_traced:  # checked when the graph runs
        msg = "linalg.lu_factor_ex: a U[i,i] is zero and using it on lu_solve would result in a division by zero"
        lu, piv, info = (_checked_info(t, info, msg) for t in (lu, piv, info))
    return LUFactorExResult(lu, piv, info)


def lu_factor(A: Any, *, pivot: bool = True, out: Any = None) -> LUFactorResult:
    """torch.linalg.lu_factor: (LU, pivots) of A = P L U with partial pivoting; eagerly a singular
    matrix (a zero on U's diagonal) raises torch's error, as torch's check does."""
    if out is not None:
        raise TypeError("linalg.lu_factor: argument 'out' is not supported")
    lu, piv, info = lu_factor_ex(A, pivot=pivot)
    if not info.is_traced and bool(info.numpy().any()):
        from .linalg import LinAlgError
        i = int(info.numpy().max())
        raise fail(LinAlgError(f"torch.linalg.lu_factor: U[{i},{i}] is zero and using it on lu_solve would result "
                               "in a division by zero. If you still want to perform the factorization, consider "
                               "calling linalg.lu(A, pivot) or linalg.lu_factor_ex(A, pivot)"))
    if info.is_traced:  # checked when the graph runs (the factor of a singular matrix was returned in silence)
        msg = ("torch.linalg.lu_factor: a U[i,i] is zero and using it on lu_solve would result in a division by "
               "zero. If you still want to perform the factorization, consider calling linalg.lu(A, pivot) or "
               "linalg.lu_factor_ex(A, pivot)")
        lu, piv = _checked_info(lu, info, msg), _checked_info(piv, info, msg)
    return LUFactorResult(lu, piv)


def lu(A: Any, *, pivot: bool = True, out: Any = None) -> LUResult:
    """torch.linalg.lu: (P, L, U) with A = P L U, L (m, k) unit lower triangular, U (k, n) upper."""
    if out is not None:
        raise TypeError("linalg.lu: argument 'out' is not supported")
    a = _operand("lu", A)
    if not pivot:
        raise fail(RuntimeError("linalg.lu: LU without pivoting is not implemented on the CPU"))
    x, _, perm = _factor(a)
    low, up = _unpack(x)
    return LUResult(_perm_matrix(perm, a.dtype), low, up)


def lu_unpack(LU_data: Any, LU_pivots: Any, unpack_data: bool = True, unpack_pivots: bool = True,  # noqa: N803
              *, out: Any = None) -> LUResult:
    """torch.lu_unpack: (P, L, U) from lu_factor's (LU, pivots); what is not unpacked is empty."""
    if out is not None:
        raise TypeError("lu_unpack: argument 'out' is not supported")
    lu_ = _tensor(LU_data)
    piv = _tensor(LU_pivots)
    if lu_.ndim < 2:
        raise fail(RuntimeError("torch.lu_unpack: LU_data must have at least 2 dimensions"))
    m, n = lu_.shape[-2:]
    if piv.dtype is not dt.int32:
        raise fail(RuntimeError(f"torch.lu_unpack: LU_pivots is expected to be a contiguous tensor of torch.int32 "
                                f"dtype. Note: this function is intended to be used with the output produced by "
                                f"torch.linalg.lu_factor (got {piv.dtype})"))
    if tuple(piv.shape) != tuple(lu_.shape[:-2]) + (min(m, n),):
        raise fail(RuntimeError(f"torch.lu_unpack: LU_pivots of shape {tuple(piv.shape)} does not fit LU_data of "
                                f"shape {tuple(lu_.shape)} (expected {tuple(lu_.shape[:-2]) + (min(m, n),)})"))
    if unpack_pivots:  # torch's check, eagerly and when a traced graph runs (a wrong permutation otherwise)
        from .core import check_values, le, logical_and
        piv = check_values(piv, logical_and(ge(piv, 1), le(piv, m)), "torch.lu_unpack: pivots passed to lu_unpack "
                           "must be between 1 and LU.size(-2) inclusive. Did you properly pass the result of "
                           "lu_factor?")
    empty = zeros((0,), dtype=lu_.dtype)
    low, up = _unpack(lu_) if unpack_data else (empty, empty)
    p = _perm_matrix(_permutation(piv, m), lu_.dtype) if unpack_pivots else empty
    return LUResult(p, low, up)


def lu_solve(LU: Any, pivots: Any, B: Any, *, left: bool = True, adjoint: bool = False,  # noqa: N803
             out: Any = None) -> Tensor:
    """torch.linalg.lu_solve: X with A X = B for A = P L U given as lu_factor's (LU, pivots);
    `adjoint` solves A^T X = B, `left=False` X A = B. Two triangular solves around the permutation,
    differentiable in B and LU (only L's strict lower and U's upper triangle are read, as torch's)."""
    if out is not None:
        raise TypeError("linalg.lu_solve: argument 'out' is not supported")
    lu_, piv, b = _tensor(LU), _tensor(pivots), _tensor(B)
    if lu_.ndim < 2 or lu_.shape[-1] != lu_.shape[-2]:
        raise fail(RuntimeError("linalg.lu_solve: Expected LU to be square matrices"))
    n = lu_.shape[-1]
    if b.ndim < 2:
        raise fail(RuntimeError("linalg.lu_solve: Expected B to have at least 2 dimensions"))
    if (b.shape[-2] if left else b.shape[-1]) != n:
        side = "B.size(-2)" if left else "B.size(-1)"
        raise fail(RuntimeError(f"linalg.lu_solve: Incompatible shapes of A and B for the equation "
                                f"{'AX = B' if left else 'XA = B'}: LU is {n}x{n} and {side} is "
                                f"{b.shape[-2] if left else b.shape[-1]}"))
    if b.dtype != lu_.dtype:
        raise fail(RuntimeError(f"linalg.lu_solve: Expected LU and B to have the same dtype, but found LU of type "
                                f"{lu_.dtype} and B of type {b.dtype} instead"))
    # torch's pivot checks, eagerly and when a traced graph runs (an index error in the permutation otherwise)
    from .core import check_values, le
    piv = check_values(piv, ge(piv, 1), "linalg.lu_solve: Pivots given to lu_solve must all be greater or equal "
                       "to 1. Did you properly pass the result of lu_factor?")
    piv = check_values(piv, le(piv, n), "linalg.lu_solve: Pivots given to lu_solve must all be smaller or equal "
                       "to LU.size(-2). Did you properly pass the result of lu_factor?")
    if not left:  # X A = B  <=>  A^T X^T = B^T (and X A^T = B <=> A X^T = B^T)
        return _mT(lu_solve(lu_, piv, _mT(b), adjoint=not adjoint))
    from .linalg import solve_triangular
    batch = _broadcast_shapes("lu_solve", lu_.shape[:-2], b.shape[:-2])
    lu_ = broadcast_to(lu_, batch + (n, n))
    b = broadcast_to(b, batch + tuple(b.shape[-2:]))
    p = broadcast_to(_perm_matrix(_permutation(piv, n), lu_.dtype), batch + (n, n))
    if not adjoint:  # L U X = P^T B
        y = solve_triangular(lu_, matmul(_mT(p), b), upper=False, unitriangular=True)
        return solve_triangular(lu_, y, upper=True)
    # A^T X = U^T L^T P^T X = B
    y = solve_triangular(_mT(lu_), b, upper=False)
    return matmul(p, solve_triangular(_mT(lu_), y, upper=True, unitriangular=True))


def torch_lu(A: Any, pivot: bool = True, get_infos: bool = False, out: Any = None) -> tuple:
    """torch.lu (deprecated in torch): (LU, pivots), and info with `get_infos`."""
    if out is not None:
        raise TypeError("lu: argument 'out' is not supported")
    r = lu_factor_ex(A, pivot=pivot)
    return tuple(r) if get_infos else (r.LU, r.pivots)


def torch_lu_solve(b: Any, LU_data: Any, LU_pivots: Any, *, out: Any = None) -> Tensor:  # noqa: N803
    """torch.lu_solve (deprecated in torch): linalg.lu_solve(LU_data, LU_pivots, b)."""
    return lu_solve(LU_data, LU_pivots, b, out=out)


# -- general eigendecomposition ----------------------------------------------------------------------

def eig(A: Any, *, out: Any = None) -> EigResult:
    """torch.linalg.eig: complex eigenvalues (n,) and eigenvectors (columns, unit norm) of real square
    matrices, in LAPACK geev's order and phase (torch's on the CPU). Gradients are torch's
    (linalg_eig_backward; a loss of the eigenvectors' phase, which torch refuses, gets a nan gradient)."""
    if out is not None:
        raise TypeError("linalg.eig: argument 'out' is not supported")
    from ..complex import ComplexTensor
    a = _operand("eig", A)
    n = a.shape[-1]
    if a.shape[-2] != n:
        raise fail(RuntimeError(f"linalg.eig: A must be batches of square matrices, but they are {a.shape[-2]} by "
                                f"{n} matrices"))
    packed = bind("eig", a)  # rows [Re w; Im w; Re V (n rows); Im V (n rows)]
    w = ComplexTensor(packed[..., 0, :], packed[..., 1, :])
    v = ComplexTensor(packed[..., 2:2 + n, :], packed[..., 2 + n:, :])
    return EigResult(w, v)


def eigvals(A: Any, *, out: Any = None) -> Any:
    """torch.linalg.eigvals: the complex eigenvalues of real square matrices (LAPACK's order)."""
    if out is not None:
        raise TypeError("linalg.eigvals: argument 'out' is not supported")
    return eig(A).eigenvalues


# -- LDL^T (Bunch-Kaufman) ----------------------------------------------------------------------------

class LDLFactorResult(NamedTuple):
    """torch.return_types.linalg_ldl_factor."""
    LD: Tensor
    pivots: Tensor


class LDLFactorExResult(NamedTuple):
    """torch.return_types.linalg_ldl_factor_ex."""
    LD: Tensor
    pivots: Tensor
    info: Tensor


def ldl_factor_ex(A: Any, *, hermitian: bool = False, check_errors: bool = False, out: Any = None) -> LDLFactorExResult:
    """torch.linalg.ldl_factor_ex: (LD, pivots, info) of symmetric A (its lower triangle read), LAPACK sytrf's
    Bunch-Kaufman factorization P A P^T = L D L^T as torch returns it: LD holds L's multipliers below the
    diagonal and D's 1x1 and 2x2 blocks on and just below it (zeros above), pivots are int32, 1-based,
    negative for a 2x2 block; info[b] = i > 0 where D[i-1, i-1] is exactly zero. One primitive
    (`ldl_factor`), so the factor and pivots are LAPACK's own; like torch's, it has no derivative
    (differentiating through it raises). Real matrices: `hermitian` changes nothing for them."""
    if out is not None:
        raise TypeError("linalg.ldl_factor_ex: argument 'out' is not supported")
    a = _operand("ldl_factor_ex", A)
    n = a.shape[-1]
    if a.shape[-2] != n:
        raise fail(RuntimeError(f"torch.linalg.ldl_factor_ex: A must be batches of square matrices, but they are "
                                f"{a.shape[-2]} by {n} matrices"))
    packed = bind("ldl_factor", a)
    ld = narrow(packed, -2, 0, n)
    piv = cast(reshape(narrow(packed, -2, n, 1), a.shape[:-2] + (n,)), dt.int32)
    info = cast(reshape(narrow(narrow(packed, -2, n + 1, 1), -1, 0, 1), a.shape[:-2]), dt.int32)
    if check_errors and not info.is_traced and bool(info.numpy().any()):
        raise fail(RuntimeError(f"torch.linalg.ldl_factor_ex: Unknown error code: {int(info.numpy().max())}."))
    if check_errors and info.is_traced:  # checked when the graph runs
        msg = "torch.linalg.ldl_factor_ex: a D[i,i] is zero (LAPACK's info > 0)"
        ld, piv, info = (_checked_info(t, info, msg, "value") for t in (ld, piv, info))
    return LDLFactorExResult(ld, piv, info)


def ldl_factor(A: Any, *, hermitian: bool = False, out: Any = None) -> LDLFactorResult:
    """torch.linalg.ldl_factor: (LD, pivots) as ldl_factor_ex's; eagerly a singular D raises as torch does."""
    if out is not None:
        raise TypeError("linalg.ldl_factor: argument 'out' is not supported")
    ld, piv, info = ldl_factor_ex(A, hermitian=hermitian)
    if not info.is_traced and bool(info.numpy().any()):
        raise fail(RuntimeError(f"torch.linalg.ldl_factor: Unknown error code: {int(info.numpy().max())}."))
    if info.is_traced:  # checked when the graph runs
        msg = "torch.linalg.ldl_factor: a D[i,i] is zero (LAPACK's info > 0)"
        ld, piv = _checked_info(ld, info, msg, "value"), _checked_info(piv, info, msg, "value")
    return LDLFactorResult(ld, piv)


def ldl_solve(LD: Any, pivots: Any, B: Any, *, hermitian: bool = False, out: Any = None) -> Tensor:  # noqa: N803
    """torch.linalg.ldl_solve: X with A X = B from ldl_factor's (LD, pivots) (LAPACK sytrs), the batch
    dims broadcast. No derivative, as in torch."""
    if out is not None:
        raise TypeError("linalg.ldl_solve: argument 'out' is not supported")
    ld = _operand("ldl_solve", LD)
    piv, b = _tensor(pivots), _tensor(B)
    n = ld.shape[-1]
    if ld.shape[-2] != n:
        raise fail(RuntimeError(f"torch.linalg.ldl_solve: A must be batches of square matrices, but they are "
                                f"{ld.shape[-2]} by {n} matrices"))
    if b.ndim < 2:
        raise fail(RuntimeError("torch.linalg.ldl_solve: The input tensor B must have at least 2 dimensions."))
    if piv.dtype is not dt.int32:
        raise fail(RuntimeError(f"torch.linalg.ldl_solve: Expected pivots to be integers. Got {piv.dtype}"))
    if tuple(piv.shape) != tuple(ld.shape[:-1]):
        raise fail(RuntimeError(f"torch.linalg.ldl_solve: Expected LD.shape[:-1] and pivots.shape to be the same, "
                                f"but got pivots with shape {list(piv.shape)} instead"))
    if b.shape[-2] != n:
        raise fail(RuntimeError(f"Incompatible matrix sizes for torch.linalg.ldl_solve: each A matrix is {n} by {n} "
                                f"but each b matrix is {b.shape[-2]} by {b.shape[-1]}"))
    if b.dtype != ld.dtype:
        names = {dt.float64: "Double", dt.float32: "Float", dt.float16: "Half", dt.bfloat16: "BFloat16"}  # (torch's)
        bn, an = names.get(b.dtype, b.dtype), names.get(ld.dtype, ld.dtype)
        raise fail(RuntimeError(f"Expected b and A to have the same dtype, but found b of type {bn} and A of type "
                                f"{an} instead."))
    from .core import check_values, le
    # torch's checks, eagerly and when a traced graph runs (LAPACK read out of bounds otherwise)
    piv = check_values(piv, ge(abs(piv), 1), "torch.linalg.ldl_solve: Pivots given to ldl_solve must all satisfy "
                       "|pivot| >= 1. Did you properly pass the result of ldl_factor?")
    piv = check_values(piv, le(abs(piv), n), "torch.linalg.ldl_solve: Pivots given to ldl_solve must all satisfy "
                       "|pivot| <= LD.size(-2). Did you properly pass the result of ldl_factor?")
    batch = _broadcast_shapes("ldl_solve", ld.shape[:-2], b.shape[:-2])
    ld = broadcast_to(ld, batch + (n, n))
    piv = broadcast_to(piv, batch + (n,))
    b = broadcast_to(b, batch + tuple(b.shape[-2:]))
    return bind("ldl_solve", ld, piv, b)


__all__ = ["eig", "eigvals", "ldl_factor", "ldl_factor_ex", "ldl_solve", "lu", "lu_factor", "lu_factor_ex",
           "lu_solve", "lu_unpack"]

"""`av.linalg`, torch.linalg's names for what Avalon computes from its primitives: norms, and the
small-matrix algebra of `matrices` (inverse, determinants, solves, powers, exponentials, cross
products), Cholesky factors and triangular solves (unrolled over the matrix size: k steps of
batched ops, for the small matrices of priors and flows). The spectral factorizations (svd, qr,
eigh, ...) would each need a primitive of their own and are not here."""
from __future__ import annotations

from typing import Any

from ..ir import dtypes as dt
from ..tensor import Tensor
from .core import (
    _tensor,
    add,
    cast,
    div,
    eq,
    expand_dims,
    fail,
    ge,
    gt,
    mul,
    reshape,
    sqrt,
    stack,
    sub,
    transpose,
    where,
)
from .core import sum as _sum
from .creation import iota
from .matrices import chain_matmul as multi_dot
from .matrices import cross as _cross
from .matrices import det, inverse, matrix_exp, matrix_power, slogdet, solve
from .reductions import linalg_norm as norm
from .reductions import matrix_norm, vector_norm

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
    not positive-definite gives nan where torch raises (its values are unknown while tracing)."""
    if out is not None:
        raise TypeError("linalg.cholesky: argument 'out' is not supported")
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


__all__ = ["cholesky", "cross", "det", "householder_product", "inv", "matrix_exp", "matrix_norm", "matrix_power",
           "multi_dot", "norm", "slogdet", "solve", "solve_triangular", "vecdot", "vector_norm"]

"""torch's vector and matrix functions beyond matmul: `dot`, `vdot`, `inner`, `mv`, `cross`,
`kron`, `tensordot`, `chain_matmul`, `matrix_power`, `matrix_exp`, `inverse`, `det`, `logdet`,
`slogdet`, `triangular_solve`, `solve`, and the structured constructors `block_diag`,
`diag_embed`, `diagflat`, `vander`, `tril_indices`, `triu_indices`.

There is no factorization primitive, so the factorizations are the textbook algorithms unrolled
over the (static) matrix size, batched over leading dims: LU and Gauss-Jordan with partial
pivoting (the pivot an `argmax`, the row swap a selection), substitution for triangular systems.
n steps of O(n^2) elementwise work each: meant for the small matrices models carry (rotations,
covariances, flows' Jacobians), and differentiable by composition. `matrix_exp` is scaling and
squaring with a degree-18 Taylor polynomial (the 1-norm scaled to <= 1: error < 1e-17)."""
from __future__ import annotations

import builtins
import functools
import itertools
import math
from typing import Any, NamedTuple

import numpy as np

from ..ir import ShapeError
from ..ir import dtypes as dt
from ..ir.reference import LinAlgError
from ..tensor import Tensor, default_float_dtype
from .core import (
    DTypeNotImplementedError,
    _broadcast_shapes,
    _check_finite_result,
    _tensor,
    abs,
    add,
    amax,
    argmax,
    broadcast_to,
    cast,
    check_dim,
    concat,
    div,
    eq,
    expand_dims,
    fail,
    full,
    ge,
    gt,
    log,
    lt,
    matmul,
    maximum,
    mul,
    ne,
    neg,
    pad,
    permute,
    pow,
    reshape,
    result_dtype,
    same_dtype,
    sign,
    sub,
    sum,
    where,
)
from .creation import eye, iota
from .reductions import prod
from .shaping import _band, diag, diagonal, flip, movedim, narrow


class SlogdetResult(NamedTuple):
    sign: Tensor
    logabsdet: Tensor


class SolveResult(NamedTuple):
    """torch.triangular_solve's result: the solution and a copy of the coefficient matrix."""

    solution: Tensor
    cloned_coefficient: Tensor


# -- products -------------------------------------------------------------------------------------

def dot(input: Any, tensor: Any) -> Tensor:
    """The inner product of two 1-d tensors of one length."""
    a, b = _tensor(input), _tensor(tensor)
    if a.ndim != 1 or b.ndim != 1:
        raise fail(ShapeError(f"dot: 1D tensors expected, but got {a.ndim}D and {b.ndim}D tensors"))
    if a.shape[0] != b.shape[0]:
        raise fail(ShapeError(f"dot: inconsistent tensor size, expected tensor [{a.shape[0]}] and src "
                              f"[{b.shape[0]}] to have the same number of elements"))
    if a.dtype is not b.dtype:
        raise fail(TypeError(f"dot: expected both vectors to have same dtype, but found {a.dtype.name} and "
                             f"{b.dtype.name}"))
    if a.dtype is dt.bool_:
        raise fail(DTypeNotImplementedError("dot: \"dot\" not implemented for 'Bool'"))
    # integers: torch's dot keeps the operands' dtype (int32 stays int32, uint8 wraps), where sum promotes to int64
    return matmul(a, b) if a.dtype.is_float else cast(sum(mul(a, b)), a.dtype)


def vdot(input: Any, other: Any) -> Tensor:
    """torch.vdot: dot (no complex dtypes: vdot's conjugation is the identity), under torch's `other`."""
    return dot(input, other)


def inner(input: Any, other: Any) -> Tensor:
    """torch.inner: sums over the last dims (a number times a tensor for 0-d operands)."""
    a, b = _tensor(input), _tensor(other)
    if a.ndim == 0 or b.ndim == 0:
        return mul(a, b)
    if a.shape[-1] != b.shape[-1]:
        raise fail(ShapeError(f"inner() the last dimension must match on both input tensors but got shapes "
                              f"{list(a.shape)} and {list(b.shape)}"))
    return tensordot(a, b, ([a.ndim - 1], [b.ndim - 1]))


def mv(input: Any, vec: Any) -> Tensor:
    """Matrix (n, m) times vector (m,)."""
    a, v = _tensor(input), _tensor(vec)
    if a.ndim != 2 or v.ndim != 1:
        raise fail(ShapeError(f"mv: expected a 2-d matrix and a 1-d vector, got {a.shape} and {v.shape}"))
    return matmul(a, v)


def tensordot(a: Any, b: Any, dims: Any = 2, out: Any = None) -> Tensor:
    """torch.tensordot: contract the last `dims` dims of a with the first of b, or the dims listed
    as (dims_a, dims_b); one matmul after moving them together."""
    x, y = _tensor(a), _tensor(b)
    if isinstance(dims, (int, np.integer)):
        k = int(dims)
        if k < 0 or k > min(x.ndim, y.ndim):
            raise fail(ShapeError(f"tensordot expects dims >= 0 and <= the operands' ranks, got {k}"))
        da, db = list(range(x.ndim - k, x.ndim)), list(range(k))
    else:
        da, db = ([dims[0]] if isinstance(dims[0], int) else list(dims[0])), \
                 ([dims[1]] if isinstance(dims[1], int) else list(dims[1]))
        da = [check_dim("tensordot", d, x.ndim) for d in da]
        db = [check_dim("tensordot", d, y.ndim) for d in db]
    if len(da) != len(db) or any(x.shape[i] != y.shape[j] for i, j in zip(da, db)):
        raise fail(ShapeError(f"tensordot: contracted dimensions need to match, got {[x.shape[i] for i in da]} "
                              f"and {[y.shape[j] for j in db]}"))
    ra = [i for i in range(x.ndim) if i not in da]
    rb = [j for j in range(y.ndim) if j not in db]
    m = math.prod(x.shape[i] for i in da)
    xa = reshape(permute(x, ra + da), (math.prod(x.shape[i] for i in ra), m))
    yb = reshape(permute(y, db + rb), (m, math.prod(y.shape[j] for j in rb)))
    d = result_dtype(x, y)
    if not d.is_float:
        out_ = sum(mul(expand_dims(cast(xa, d), -1), expand_dims(cast(yb, d), 0)), 1)
    else:
        out_ = matmul(xa, yb)
    return reshape(out_, [x.shape[i] for i in ra] + [y.shape[j] for j in rb])


def chain_matmul(*matrices: Any) -> Tensor:
    """The product of 2-d matrices, left to right (torch.chain_matmul, linalg.multi_dot)."""
    if len(matrices) == 1 and isinstance(matrices[0], (list, tuple)):
        matrices = tuple(matrices[0])
    if not matrices:
        raise fail(ValueError("chain_matmul(): Expected one or more matrices"))
    return functools.reduce(matmul, [_tensor(m) for m in matrices])


def cross(input: Any, other: Any, dim: int | None = None) -> Tensor:
    """The 3-vector cross product along `dim` (default: the first dim of size 3, as torch.cross;
    linalg.cross uses -1), the operands broadcast."""
    a, b = _tensor(input), _tensor(other)
    shape = _broadcast_shapes("cross", a.shape, b.shape)
    d = same_dtype("cross", a, b)  # torch's rule: numpy would promote
    if d is dt.bool_:
        raise fail(NotImplementedError("cross: not implemented for bool tensors"))
    a, b = broadcast_to(cast(a, d), shape), broadcast_to(cast(b, d), shape)
    if dim is None:
        sizes3 = [k for k, s in enumerate(shape) if s == 3]
        if not sizes3:
            raise fail(ShapeError(f"cross: no dimension of size 3 in input (shape {shape})"))
        k = sizes3[0]
    else:
        k = check_dim("cross", dim, len(shape))
    if shape[k] != 3:
        raise fail(ShapeError(f"linalg.cross: inputs dimension {k} must have length 3. Got {shape[k]} and "
                              f"{shape[k]}"))
    a0, a1, a2 = (narrow(a, k, i, 1) for i in range(3))
    b0, b1, b2 = (narrow(b, k, i, 1) for i in range(3))
    return concat([sub(mul(a1, b2), mul(a2, b1)), sub(mul(a2, b0), mul(a0, b2)), sub(mul(a0, b1), mul(a1, b0))], k)


def kron(input: Any, other: Any) -> Tensor:
    """The Kronecker product: out[i * B + j] = a[i] * b[j] in every dim (ranks padded with 1s)."""
    a, b = _tensor(input), _tensor(other)
    n = max(a.ndim, b.ndim)
    sa, sb = (1,) * (n - a.ndim) + a.shape, (1,) * (n - b.ndim) + b.shape
    x = reshape(a, [v for s in sa for v in (s, 1)])
    y = reshape(b, [v for s in sb for v in (1, s)])
    return reshape(mul(x, y), [p * q for p, q in zip(sa, sb)])


# -- factorizations -------------------------------------------------------------------------------

def _square(fn: str, A: Any) -> Tensor:
    a = _tensor(A)
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        got = a.shape[-2:] if a.ndim >= 2 else a.shape
        raise fail(ShapeError(f"{fn}: A must be batches of square matrices, but they are {got} matrices"))
    return a if a.dtype.is_float else cast(a, default_float_dtype())


def _pivot(m: Tensor, k: int, rows: Tensor) -> tuple[Tensor, Tensor]:
    """Rows k and p swapped, p the row at or below k with the largest |m[p, k]|; (m, swapped?)."""
    col = narrow(m, -1, k, 1)  # (..., n, 1)
    cand = where(ge(rows, k), abs(col), -1.0)
    p = argmax(cand, -2, keepdims=True)  # (..., 1, 1)
    at_p = eq(rows, p)
    row_k = narrow(m, -2, k, 1)
    row_p = sum(where(at_p, m, 0.0), -2, keepdims=True)
    m = where(eq(rows, k), row_p, where(at_p, row_k, m))
    return m, ne(p, k)


def _lu_diag(a: Tensor) -> tuple[Tensor, Tensor]:
    """(the diagonal of U, the permutation's sign) of a = P L U with partial pivoting."""
    n = a.shape[-1]
    rows = iota((n, 1), 0)
    sgn = full(a.shape[:-2] + (1, 1), 1.0, a.dtype)
    m = a
    for k in range(n):
        m, swapped = _pivot(m, k, rows)
        sgn = where(swapped, neg(sgn), sgn)
        piv = narrow(narrow(m, -2, k, 1), -1, k, 1)
        safe = where(eq(piv, 0.0), 1.0, piv)
        f = where(gt(rows, k), div(narrow(m, -1, k, 1), safe), 0.0)
        m = sub(m, mul(f, narrow(m, -2, k, 1)))
    return diagonal(m, 0, -2, -1), reshape(sgn, a.shape[:-2])


def det(A: Any) -> Tensor:
    """The determinant (LU with partial pivoting)."""
    a = _square("det", A)
    u, sgn = _lu_diag(a)
    return mul(sgn, prod(u, -1))


def slogdet(A: Any) -> SlogdetResult:
    """(sign, log|det|) of square matrices; a singular one gives (0, -inf)."""
    a = _square("slogdet", A)
    u, sgn = _lu_diag(a)
    s = mul(sgn, prod(sign(u), -1))
    return SlogdetResult(s, sum(log(abs(u)), -1))


def logdet(A: Any) -> Tensor:
    """log(det(A)): nan where det < 0, -inf where A is singular."""
    s, la = slogdet(A)
    return where(lt(s, 0.0), math.nan, where(eq(s, 0.0), -math.inf, la))


def _gauss_jordan(fn: str, a: Tensor, b: Tensor) -> Tensor:
    """A^-1 B by Gauss-Jordan elimination with partial pivoting on [A | B]."""
    n = a.shape[-1]
    m = concat([a, b], -1)
    rows = iota((n, 1), 0)
    for k in range(n):
        m, _ = _pivot(m, k, rows)
        row = narrow(m, -2, k, 1)
        row = div(row, narrow(row, -1, k, 1))
        col = narrow(m, -1, k, 1)
        m = where(eq(rows, k), row, sub(m, mul(col, row)))
    out = narrow(m, -1, n, m.shape[-1] - n)
    if out.is_traced:  # checked when the graph runs
        return _check_finite_result(out, [a, b], f"{fn}: The input matrix is singular (a pivot is zero); the "
                                                 "inversion could not be completed")
    if out.numel() and not bool(np.isfinite(out.numpy()).all()) and \
            bool(np.isfinite(a.numpy()).all()) and bool(np.isfinite(b.numpy()).all()):
        raise fail(LinAlgError(f"{fn}: The input matrix is singular (a pivot is zero); the inversion could not "
                               "be completed"))
    return out


def inverse(input: Any) -> Tensor:
    """The inverse of square matrices (Gauss-Jordan with partial pivoting); a singular matrix is an
    error when its values are known, as torch's."""
    a = _square("inverse", input)
    n = a.shape[-1]
    return _gauss_jordan("inverse", a, broadcast_to(eye(n, dtype=a.dtype), a.shape))


inv = inverse


def solve(A: Any, B: Any, *, left: bool = True) -> Tensor:
    """torch.linalg.solve: X with A X = B (B a matrix or a vector per batch)."""
    a = _square("solve", A)
    b = cast(_tensor(B), a.dtype)
    if not left:
        return transpose_last(solve(transpose_last(a), transpose_last(b)))
    # torch's rule: a vector right-hand side is 1-d, or exactly A's shape without its last dim (a (4, 2) B
    # for a (2, 4, 4) A is a matrix, broadcast over the batch; it was read as a batch of vectors)
    vec = b.ndim == 1 or (b.ndim == a.ndim - 1 and b.shape == a.shape[:-1])
    bm = expand_dims(b, -1) if vec else b
    batch = _broadcast_shapes("solve", a.shape[:-2], bm.shape[:-2])
    x = _gauss_jordan("solve", broadcast_to(a, batch + a.shape[-2:]), broadcast_to(bm, batch + bm.shape[-2:]))
    return reshape(x, x.shape[:-1]) if vec else x


def transpose_last(x: Tensor) -> Tensor:
    return movedim(x, -1, -2)


def triangular_solve(input: Any, A: Any, upper: bool = True, transpose: bool = False,
                     unitriangular: bool = False) -> SolveResult:
    """torch.triangular_solve(b, A): X with A X = b for triangular A (upper unless `upper=False`;
    A^T X = b with `transpose`; ones on the diagonal with `unitriangular`), by substitution; only
    A's triangle is read. Returns (solution, a copy of A)."""
    b, a = _tensor(input), _square("triangular_solve", A)
    d = result_dtype(a, b)
    a, b = cast(a, d), cast(b, d)
    if b.ndim < 2:
        raise fail(ShapeError(f"triangular_solve: b must have at least 2 dims, got {b.shape}"))
    n = a.shape[-1]
    batch = _broadcast_shapes("triangular_solve", a.shape[:-2], b.shape[:-2])
    a2 = broadcast_to(a, batch + a.shape[-2:])
    b2 = broadcast_to(b, batch + b.shape[-2:])
    t = _band("triangular_solve", a2, 0, not upper)
    up = upper
    if transpose:
        t, up = transpose_last(t), not upper
    if unitriangular:
        rc = iota((n, n), 0)
        t = where(eq(rc, iota((n, n), 1)), 1.0, t)
    xs: list[Tensor | None] = [None] * n
    order = range(n - 1, -1, -1) if up else range(n)
    for i in order:
        row = narrow(t, -2, i, 1)  # (..., 1, n)
        rhs = narrow(b2, -2, i, 1)  # (..., 1, k)
        for j in (range(i + 1, n) if up else range(i)):
            rhs = sub(rhs, mul(narrow(row, -1, j, 1), xs[j]))
        xs[i] = div(rhs, narrow(row, -1, i, 1))
    return SolveResult(concat(xs, -2), a2)


def matrix_power(input: Any, n: int) -> Tensor:
    """A^n by repeated squaring; n = 0 the identity, n < 0 powers of the inverse."""
    a = _tensor(input)
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        raise fail(ShapeError(f"matrix_power: expected a batch of square matrices, got shape {a.shape}"))
    k = int(n)
    if k == 0:
        return broadcast_to(eye(a.shape[-1], dtype=a.dtype), a.shape)
    if k < 0:
        a, k = inverse(a), -k
    result = None
    base = a
    while k:
        if k & 1:
            result = base if result is None else matmul(result, base)
        k >>= 1
        if k:
            base = matmul(base, base)
    return result


_EXP_TERMS = 18
_TRACED_SQUARINGS = 32  # a traced matrix_exp handles 1-norms up to 2**32


def matrix_exp(A: Any) -> Tensor:
    """exp(A) by scaling and squaring: A / 2^s with 1-norm <= 1, a degree-18 Taylor polynomial,
    then s squarings (s per matrix; traced, at most 32: 1-norms up to 4e9), computed in f64 (the
    squarings multiply rounding errors by 2^s) and rounded back to A's dtype."""
    a0 = _square("matrix_exp", A)
    a = a0 if a0.dtype is dt.float64 else cast(a0, dt.float64)  # the squarings multiply rounding by 2^s
    n = a.shape[-1]
    norm = amax(sum(abs(a), -2), -1, keepdims=True)  # (..., 1): the 1-norm
    from .mathfn import ceil, log2
    s = maximum(ceil(log2(norm)), 0.0)
    s = expand_dims(s, -1)  # (..., 1, 1)
    from .core import stop_gradient
    s = stop_gradient(s)
    x = mul(a, pow(2.0, neg(s)) if s.dtype is not dt.float64 else pow(full((), 2.0, dt.float64), neg(s)))
    ident = broadcast_to(eye(n, dtype=a.dtype), a.shape)
    p = ident
    for k in range(_EXP_TERMS, 0, -1):  # Horner: I + X/1 (I + X/2 (I + ...))
        p = add(ident, div(matmul(x, p), float(k)))
    if s.is_traced:
        steps = _TRACED_SQUARINGS
    else:
        finite = s.numpy()[np.isfinite(s.numpy())]  # (a nan or inf matrix: its result is nan, as torch's)
        steps = int(finite.max()) if finite.size else 0
    for i in range(steps):
        p = where(gt(s, float(i)), matmul(p, p), p)
    return p if a0.dtype is dt.float64 else cast(p, a0.dtype)


# -- structured matrices --------------------------------------------------------------------------

def block_diag(*tensors: Any) -> Tensor:
    """The tensors (0-, 1- or 2-d) along the diagonal of one matrix, zeros elsewhere."""
    ts = []
    for i, t in enumerate(tensors):
        t = _tensor(t)
        if t.ndim > 2:
            raise fail(ShapeError(f"torch.block_diag: Input tensors must have 2 or fewer dimensions. Input {i} has "
                                  f"{t.ndim} dimensions"))
        ts.append(reshape(t, (1, 1)) if t.ndim == 0 else reshape(t, (1, -1)) if t.ndim == 1 else t)
    if not ts:
        return full((1, 0), 0.0, default_float_dtype())
    d = result_dtype(*ts)
    width = sum_int(t.shape[1] for t in ts)
    rows, at = [], 0
    for t in ts:
        rows.append(pad(cast(t, d), [(0, 0), (at, width - at - t.shape[1])]))
        at += t.shape[1]
    return concat(rows, 0)


def sum_int(xs: Any) -> int:
    return int(np.sum(list(xs), dtype=np.int64)) if xs else 0


def diag_embed(input: Any, offset: int = 0, dim1: int = -2, dim2: int = -1) -> Tensor:
    """torch.diag_embed: the last dim of `input` placed on the `offset` diagonal of new (dim1, dim2)
    planes (dims of the result), zeros elsewhere."""
    x = _tensor(input)
    if x.ndim == 0:
        x = reshape(x, (1,))
    k = int(offset)
    m = x.shape[-1]
    n = m + builtins.abs(k)
    v = pad(x, [(0, 0)] * (x.ndim - 1) + [(0, builtins.abs(k))])  # (..., n)
    rows, cols = iota((n, n), 0), iota((n, n), 1)
    vals = expand_dims(v, -1) if k >= 0 else expand_dims(v, -2)  # indexed by row (k >= 0) or by column
    zero = False if x.dtype is dt.bool_ else 0
    out = where(eq(sub(cols, rows), k), vals, zero)  # (..., n, n)
    nd = out.ndim
    d1, d2 = check_dim("diag_embed", dim1, nd), check_dim("diag_embed", dim2, nd)
    if d1 == d2:
        raise fail(ShapeError(f"diag_embed: diagonal dimensions cannot be identical {dim1}, {dim2}"))
    return movedim(out, [nd - 2, nd - 1], [d1, d2])


def diagflat(input: Any, offset: int = 0) -> Tensor:
    """The flattened input on the `offset` diagonal of a square matrix."""
    return diag(reshape(_tensor(input), (-1,)), offset)


def vander(x: Any, N: int | None = None, increasing: bool = False) -> Tensor:
    """The Vandermonde matrix: columns x^(N-1), ..., x, 1 (ascending powers with `increasing`);
    running products, so integer inputs stay exact (in i64, as torch)."""
    v = _tensor(x)
    if v.ndim != 1:
        raise fail(ShapeError(f"x must be a one-dimensional tensor, got shape {v.shape}"))
    n = v.shape[0] if N is None else int(N)
    if n < 0:
        raise fail(ValueError("N must be non-negative."))
    d = v.dtype if v.dtype.is_float else dt.int64
    v = cast(v, d)
    if n == 0:
        return full((v.shape[0], 0), 0, d)
    cols = [full((v.shape[0], 1), 1, d)]
    col = reshape(v, (-1, 1))
    for _ in range(1, n):
        cols.append(mul(cols[-1], col))
    out = concat(cols, 1)
    return out if increasing else flip(out, 1)


def _tri_indices(fn: str, np_fn: Any, row: int, col: int, offset: int, dtype: Any, device: Any) -> Tensor:
    from .core import dtype_arg, place
    for name, v in (("row", row), ("col", col)):
        if int(v) < 0:  # (numpy gives no indices: an empty result, silently)
            raise fail(RuntimeError(f"{fn}: {name} must be non-negative, got {int(v)}"))
    r, c = np_fn(int(row), int(offset), int(col))
    d = dtype_arg(fn, dtype) if dtype is not None else dt.int64
    if d.is_float or d is dt.bool_:
        raise fail(TypeError(f"{fn}: dtype must be an integer type, got {d.name}"))
    from ..trace import current_trace
    if current_trace() is not None and not r.size:
        return place(full((2, 0), 0, d), device)
    if current_trace() is not None:  # in a trace: ops of its graph, not an array it captured (which
        from . import floor_divide, ge, iota, le, remainder  # would compile the function again on every call), the
        from .indexing import _positions  # positions of a triangle's mask found as x[mask]'s are
        rows, cols = iota((int(row), int(col)), 0), iota((int(row), int(col)), 1)
        mask = (ge if fn == "tril_indices" else le)(add(rows, int(offset)), cols)
        at = _positions(reshape(mask, (int(row) * int(col),)), int(r.size))
        n = full(at.shape, int(col), dt.int64)
        out = concat([reshape(floor_divide(at, n), (1, -1)), reshape(remainder(at, n), (1, -1))], 0)
        return place(cast(out, d), device)
    return place(Tensor(np.stack([r, c]).astype(d.np).reshape(2, -1), d), device)


def tril_indices(row: int, col: int, offset: int = 0, *, dtype: Any = None, device: Any = None,
                 layout: Any = None) -> Tensor:
    """(2, N) row and column indices of the lower triangle of a row x col matrix, row-major."""
    return _tri_indices("tril_indices", np.tril_indices, row, col, offset, dtype, device)


def triu_indices(row: int, col: int, offset: int = 0, *, dtype: Any = None, device: Any = None,
                 layout: Any = None) -> Tensor:
    """(2, N) row and column indices of the upper triangle of a row x col matrix, row-major."""
    return _tri_indices("triu_indices", np.triu_indices, row, col, offset, dtype, device)


def combinations(input: Any, r: int = 2, with_replacement: bool = False) -> Tensor:
    """torch.combinations: the r-element combinations of a 1-d tensor's elements, one per row
    (itertools' order), gathered at static indices."""
    x = _tensor(input)
    if x.ndim != 1:
        raise fail(ShapeError(f"Expect a 1D vector, but got shape {list(x.shape)}"))
    gen = itertools.combinations_with_replacement if with_replacement else itertools.combinations
    idx = np.array(list(gen(range(x.shape[0]), int(r))), dtype=np.int64).reshape(-1, int(r))
    if idx.shape[0] == 0 or int(r) == 0:
        return full((0, int(r)) if int(r) else (0,), 0, x.dtype)
    from .core import take
    return take(x, Tensor(idx), 0)


def cartesian_prod(*tensors: Any) -> Tensor:
    """torch.cartesian_prod: every combination of one element from each 1-d tensor, one per row
    (one tensor: itself)."""
    ts = [_tensor(t) for t in tensors]
    if len(ts) == 1:
        return ts[0]
    from .shapes import meshgrid  # (shapes builds on nothing here)
    grids = meshgrid(*ts, indexing="ij")
    from .core import stack
    return stack([reshape(g, (-1,)) for g in grids], 1)


__all__ = ["SlogdetResult", "SolveResult", "block_diag", "cartesian_prod", "chain_matmul", "combinations", "cross",
           "det", "diag_embed", "diagflat", "dot", "inner", "inverse", "kron", "logdet", "matrix_exp", "matrix_power",
           "mv", "slogdet", "solve", "tensordot", "tril_indices", "triangular_solve", "triu_indices", "vander", "vdot"]

"""torch.* functions found missing by comparing `dir(torch)` with `dir(avalon)`: `nonzero_static`
(nonzero with a static size, so it traces and compiles, unlike `nonzero`), `adjoint`, the real
tensors' `resolve_conj`/`resolve_neg`/`conj_physical`, `detach_`, the `*_copy` forms of the view
functions (functionalization's names, which exported graphs call: each the view, copied), `frombuffer`,
`histogramdd`, `norm_except_dim` (weight norm's helper), the deprecated `lu`/`lu_solve`/`lu_unpack`
(an unrolled pivoted LU), `as_strided_scatter`, `frobenius_norm`, `orgqr`, `empty_strided`, `is_conj`,
`is_neg`, `conj_physical_` and the `unsafe_*` splits.

All are compositions of existing ops, so they trace, differentiate (where torch does) and compile."""
from __future__ import annotations

import builtins
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from ..ir import dtypes as dt
from ..tensor import Tensor
from .core import (
    _tensor,
    add,
    cast,
    check_dim,
    cumsum,
    dtype_arg,
    fail,
    floor_divide,
    full,
    ge,
    le,
    logical_and,
    minimum,
    remainder,
    reshape,
    slice_,
    stack,
    sum,
    unsupported,
    where,
)
from .creation import from_numpy, iota
from .reductions import vector_norm
from .scattering import index_add
from .sorting import scatter


def _need_tensor(fn: str, x: Any, arg: str = "input") -> Any:
    if not isinstance(x, Tensor) and not hasattr(x, "is_complex"):
        raise TypeError(f"{fn}(): argument '{arg}' (position 1) must be Tensor, not {type(x).__name__}")
    return x


# -- nonzero with a static size ------------------------------------------------------------------------

def nonzero_static(input: Any, *, size: int, fill_value: int = -1) -> Tensor:
    """torch.nonzero_static: the (size, ndim) int64 indices of the first `size` non-zero elements in
    row-major order, rows past the count filled with `fill_value`. The shape depends only on `size`,
    so unlike `nonzero` it works inside av.compile: each true element's running count is its row."""
    x = _tensor(input)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise TypeError(f"nonzero_static(): argument 'size' must be int, not {type(size).__name__}")
    size = int(size)
    if size < 0:
        raise fail(RuntimeError("nonzero_static: 'size' must be an non-negative integer"))
    if x.ndim == 0:
        return full((size, 0), 0, dt.int64)
    flat = reshape(cast(x, dt.bool_), (-1,))
    n = flat.shape[0]
    if n == 0:
        return full((size, x.ndim), int(fill_value), dt.int64)
    slot = minimum(where(flat, add(cumsum(cast(flat, dt.int64), 0), -1), size), size)  # falses and extras: spare
    found = slice_(scatter(full((size + 1,), -1, dt.int64), 0, slot, iota((n,))), [0], [size])
    coords, stride = [], n
    for extent in x.shape:
        stride //= extent
        coords.append(remainder(floor_divide(found, builtins.max(stride, 1)), extent))
    out = stack(coords, 1)
    return where(reshape(ge(found, 0), (size, 1)), out, full((), int(fill_value), dt.int64))


# -- conjugation and detaching: the real tensor itself ------------------------------------------------------

def adjoint(input: Any) -> Any:
    """torch.adjoint: the conjugate transpose of the last two dims, a view (`x.mH`)."""
    x = _need_tensor("adjoint", input)
    if x.ndim < 2:
        raise fail(RuntimeError(f"tensor.adjoint() is only supported on matrices or batches of matrices. Got "
                                f"{x.ndim}-D tensor."))
    return x.adjoint() if not isinstance(x, Tensor) else x.mH


def resolve_conj(input: Any) -> Any:
    """torch.resolve_conj: a conjugate view materialized; a real tensor is returned as is."""
    return _need_tensor("resolve_conj", input).resolve_conj()


def resolve_neg(input: Any) -> Any:
    """torch.resolve_neg: a negative view materialized; a real tensor is returned as is."""
    return _need_tensor("resolve_neg", input).resolve_neg()


def conj_physical(input: Any, *, out: Any = None) -> Any:
    """torch.conj_physical: the conjugate, computed; a real tensor's is itself."""
    unsupported("conj_physical", out=out)
    return _need_tensor("conj_physical", input).conj_physical()


def detach_(input: Any) -> Tensor:
    """torch.detach_(t): `t.detach_()`."""
    return _need_tensor("detach_", input).detach_()


def is_conj(input: Any) -> bool:
    """torch.is_conj: whether `input` is a lazily conjugated view; Avalon conjugates eagerly: False."""
    return bool(getattr(_need_tensor("is_conj", input), "is_conj", lambda: False)())


def is_neg(input: Any) -> bool:
    """torch.is_neg: whether `input` is a lazily negated view; never in Avalon."""
    _need_tensor("is_neg", input)
    return False


def conj_physical_(input: Any) -> Any:
    """torch.conj_physical_(t): t conjugated in place; a real tensor is unchanged."""
    x = _need_tensor("conj_physical_", input)
    return x if isinstance(x, Tensor) else x.conj_physical_()


def unsafe_chunk(input: Any, chunks: int, dim: int = 0) -> tuple[Tensor, ...]:
    """torch.unsafe_chunk: `chunk` (torch skips the views' version checks; Avalon has none to skip)."""
    return _need_tensor("unsafe_chunk", input).chunk(chunks, dim)


def unsafe_split(input: Any, split_size: Any, dim: int = 0) -> tuple[Tensor, ...]:
    """torch.unsafe_split: `split`."""
    return _need_tensor("unsafe_split", input).split(split_size, dim)


def unsafe_split_with_sizes(input: Any, split_sizes: Sequence[int], dim: int = 0) -> tuple[Tensor, ...]:
    """torch.unsafe_split_with_sizes: `split_with_sizes`."""
    return _need_tensor("unsafe_split_with_sizes", input).split(list(split_sizes), dim)


def frobenius_norm(input: Any, dim: Any, keepdim: bool = False, *, out: Any = None) -> Tensor:
    """torch.frobenius_norm: sqrt of the sum of squares over `dim` (required)."""
    unsupported("frobenius_norm", out=out)
    return vector_norm(_tensor(input), 2, dim, keepdim=keepdim)


def orgqr(input: Any, input2: Any, *, out: Any = None) -> Tensor:
    """torch.orgqr: torch.linalg.householder_product(input, tau)."""
    from .linalg import householder_product
    return householder_product(input, input2, out=out)


def empty_strided(size: Any, stride: Any, *, dtype: Any = None, layout: Any = None, device: Any = None,
                  requires_grad: bool = False, pin_memory: bool = False) -> Tensor:
    """torch.empty_strided: a new tensor of `size`; Avalon tensors are dense row-major, so `stride` only
    needs the size's length."""
    from .creation import empty
    if len(tuple(stride)) != len(tuple(size)):
        raise fail(RuntimeError("mismatch in length of strides and shape"))
    return empty(tuple(size), dtype=dtype, device=device)


def as_strided_scatter(input: Any, src: Any, size: Any, stride: Any, storage_offset: int | None = None) -> Tensor:
    """torch.as_strided_scatter: a copy of `input` (read as its contiguous storage) whose
    `as_strided(size, stride, storage_offset)` positions hold `src`; differentiable in both. The positions
    are ops of the graph (offset + sum of iota * stride), so a compiled call bakes in no index array."""
    x = _need_tensor("as_strided_scatter", input)
    size, stride = tuple(int(v) for v in size), tuple(int(v) for v in stride)
    s = _tensor(src)
    if tuple(s.shape) != size:
        raise fail(RuntimeError(f"expected src to have a size equal to the slice of self. src size = "
                                f"{list(s.shape)}, slice size = {list(size)}"))
    if len(stride) != len(size):
        raise fail(RuntimeError("mismatch in length of strides and shape"))
    off = int(storage_offset or 0)
    last = off + builtins.sum((n - 1) * st for n, st in zip(size, stride)) if all(size) else off
    if last >= x.numel() or off < 0:
        raise fail(RuntimeError(f"setStorage: sizes {list(size)}, strides {list(stride)}, storage offset {off} are "
                                f"out of bounds for storage of {x.numel()} elements"))
    pos = full(size, off, dt.int64)
    for d, st in enumerate(stride):
        pos = add(pos, iota(size, d) * st)
    flat = scatter(reshape(x, (-1,)), 0, reshape(pos, (-1,)), reshape(cast(s, x.dtype), (-1,)))
    return reshape(flat, tuple(x.shape))


# -- the *_copy view functions -------------------------------------------------------------------------

def _copied(r: Any) -> Any:
    return tuple(t.clone() for t in r) if isinstance(r, (tuple, list)) else r.clone()


def view_copy(input: Any, size: Any = None, *, dtype: Any = None) -> Tensor:
    """torch.view_copy: `input.view(size)` (or `.view(dtype)`), copied."""
    x = _need_tensor("view_copy", input)
    return _copied(x.view(dtype) if size is None and dtype is not None else x.view(size))


def permute_copy(input: Any, dims: Sequence[int]) -> Tensor:
    return _copied(_need_tensor("permute_copy", input).permute(*dims))


def expand_copy(input: Any, size: Sequence[int], *, implicit: bool = False) -> Tensor:
    return _copied(_need_tensor("expand_copy", input).expand(*size))


def diagonal_copy(input: Any, offset: int = 0, dim1: int = 0, dim2: int = 1) -> Tensor:
    return _copied(_need_tensor("diagonal_copy", input).diagonal(offset, dim1, dim2))


def transpose_copy(input: Any, dim0: int, dim1: int) -> Tensor:
    return _copied(_need_tensor("transpose_copy", input).transpose(dim0, dim1))


def t_copy(input: Any) -> Tensor:
    return _copied(_need_tensor("t_copy", input).t())


def squeeze_copy(input: Any, dim: Any = None) -> Tensor:
    x = _need_tensor("squeeze_copy", input)
    return _copied(x.squeeze() if dim is None else x.squeeze(dim))


def unsqueeze_copy(input: Any, dim: int) -> Tensor:
    return _copied(_need_tensor("unsqueeze_copy", input).unsqueeze(dim))


def unbind_copy(input: Any, dim: int = 0) -> tuple[Tensor, ...]:
    return _copied(_need_tensor("unbind_copy", input).unbind(dim))


def unfold_copy(input: Any, dimension: int, size: int, step: int) -> Tensor:
    return _copied(_need_tensor("unfold_copy", input).unfold(dimension, size, step))


def alias_copy(input: Any) -> Tensor:
    return _need_tensor("alias_copy", input).clone()


def detach_copy(input: Any) -> Tensor:
    return _need_tensor("detach_copy", input).detach().clone()


def as_strided_copy(input: Any, size: Any, stride: Any, storage_offset: int | None = None) -> Tensor:
    return _copied(_need_tensor("as_strided_copy", input).as_strided(size, stride, storage_offset))


def slice_copy(input: Any, dim: int = 0, start: int | None = None, end: int | None = None, step: int = 1) -> Tensor:
    """torch.slice_copy: `input[..., start:end:step]` along `dim`, copied."""
    x = _need_tensor("slice_copy", input)
    d = check_dim("slice_copy", dim, x.ndim)
    if step <= 0:
        raise fail(RuntimeError("slice step must be positive"))
    return x[(slice(None),) * d + (slice(start, end, step),)].clone()


def select_copy(input: Any, dim: int, index: int) -> Tensor:
    return _copied(_need_tensor("select_copy", input).select(dim, index))


def split_copy(input: Any, split_size: int, dim: int = 0) -> tuple[Tensor, ...]:
    return _copied(_need_tensor("split_copy", input).split(split_size, dim))


def split_with_sizes_copy(input: Any, split_sizes: Sequence[int], dim: int = 0) -> tuple[Tensor, ...]:
    return _copied(_need_tensor("split_with_sizes_copy", input).split(list(split_sizes), dim))


def narrow_copy(input: Any, dim: int, start: int, length: int, *, out: Any = None) -> Tensor:
    unsupported("narrow_copy", out=out)
    return _need_tensor("narrow_copy", input).narrow_copy(dim, start, length)


def view_as_real_copy(input: Any) -> Tensor:
    from ..complex import view_as_real
    return view_as_real(input).clone()


def view_as_complex_copy(input: Any) -> Any:
    from ..complex import view_as_complex
    return view_as_complex(input).clone()


def values_copy(input: Any) -> Tensor:
    """torch.values_copy: a sparse COO tensor's values, copied."""
    return input.values().clone()


def indices_copy(input: Any) -> Tensor:
    """torch.indices_copy: a sparse COO tensor's indices, copied."""
    return input.indices().clone()


# -- data from a buffer ------------------------------------------------------------------------------------

def frombuffer(buffer: Any, *, dtype: Any, count: int = -1, offset: int = 0, requires_grad: bool = False) -> Tensor:
    """torch.frombuffer: a 1-d tensor over an object with the buffer protocol (bytes, bytearray,
    array.array, mmap), sharing its memory when it is writable (as `from_numpy`)."""
    d = dtype_arg("frombuffer", dtype)
    if d is dt.bfloat16:
        raise NotImplementedError("frombuffer: bfloat16 has no numpy dtype to read the buffer as")
    nbytes = memoryview(buffer).nbytes
    size = d.np.itemsize
    if nbytes == 0 or count == 0:
        raise ValueError(f"both buffer length ({nbytes}) and count ({count}) must not be 0")
    if offset < 0 or offset >= nbytes:
        raise ValueError(f"offset ({offset} bytes) must be non-negative and no greater than buffer length "
                         f"({nbytes} bytes) minus 1")
    if count < 0:
        if (nbytes - offset) % size:
            raise ValueError(f"buffer length ({nbytes - offset} bytes) after offset ({offset} bytes) must be a "
                             f"multiple of element size ({size})")
        count = (nbytes - offset) // size
    elif offset + count * size > nbytes:
        raise ValueError(f"requested buffer length ({count} * {size} bytes) after offset ({offset} bytes) must not "
                         f"be greater than actual buffer length ({nbytes} bytes)")
    a = np.frombuffer(buffer, dtype=d.np, count=count, offset=offset)
    t = from_numpy(a) if a.flags.writeable else Tensor(a.copy(), d)
    if requires_grad:
        t.requires_grad_(True)
    return t


# -- histogramdd and norm_except_dim -----------------------------------------------------------------

class HistogramddResult(NamedTuple):
    """torch.return_types.histogramdd."""
    hist: Tensor
    bin_edges: tuple[Tensor, ...]


def histogramdd(input: Any, bins: Any = 10, *, range: Any = None, weight: Any = None,  # noqa: A002
                density: bool = False, out: Any = None) -> HistogramddResult:
    """torch.histogramdd: the D-dimensional histogram of the points in the last dim of `input`
    (N points of D coordinates): `bins` an int, one int per dim or one 1-d edge tensor per dim;
    `range` a flat (min_0, max_0, min_1, max_1, ...); each dim's edges as torch.histogram's, the
    last bin holding its right edge; points outside any dim's edges are not counted."""
    from .stats import histogram
    unsupported("histogramdd", out=out)
    x = _tensor(input)
    if not x.dtype.is_float:
        raise fail(RuntimeError(f"torch.histogramdd: input tensor and bins tensors should have the same dtype, "
                                f"and be floating point, got {x.dtype}"))
    if x.ndim < 1:
        raise fail(RuntimeError("torch.histogramdd: input tensor should have at least 1 dimension"))
    D = x.shape[-1]
    pts = reshape(x, (-1, D))
    n = pts.shape[0]
    per = list(bins) if isinstance(bins, (list, tuple)) else [bins] * D
    if len(per) != D:
        raise fail(RuntimeError(f"torch.histogramdd: expected {D} sequences of bin edges for each of the {D} "
                                f"dimensions of the input, but got {len(per)}"))
    if range is not None and len(range) != 2 * D:
        raise fail(RuntimeError(f"torch.histogramdd: for a {D}-dimensional histogram range should have {2 * D} "
                                f"elements, but got {len(range)}"))
    edges, linear, inside, counts = [], full((n,), 0, dt.int64), full((n,), True, dt.bool_), []
    for d, b in enumerate(per):
        col = pts[:, d]
        r = None if range is None else (range[2 * d], range[2 * d + 1])
        e = histogram(col, b if isinstance(b, (int, np.integer)) else _tensor(b), range=r).bin_edges
        nb = e.shape[0] - 1
        idx = sum(cast(ge(reshape(col, (n, 1)), reshape(e[1:nb], (1, nb - 1))), dt.int64), 1)
        inside = logical_and(inside, logical_and(ge(col, e[0]), le(col, e[nb])))
        linear = add(linear * nb, idx)
        edges.append(e)
        counts.append(nb)
    total = math.prod(counts)
    w = full((n,), 1.0, x.dtype) if weight is None else cast(reshape(_tensor(weight), (-1,)), x.dtype)
    if w.shape[0] != n:
        raise fail(RuntimeError(f"torch.histogramdd: expected weight to be of shape {tuple(x.shape[:-1])}, got "
                                f"{tuple(_tensor(weight).shape)}"))
    slot = where(inside, linear, total)  # points outside go to a spare bin
    hist = slice_(index_add(full((total + 1,), 0.0, x.dtype), 0, slot, w), [0], [total])
    hist = reshape(hist, tuple(counts))
    if density:
        vol = None
        for d, e in enumerate(edges):
            shape = [1] * D
            shape[d] = counts[d]
            wd = reshape(e[1:] - e[:-1], tuple(shape))
            vol = wd if vol is None else vol * wd
        hist = hist / (sum(hist) * vol)
    return HistogramddResult(hist, tuple(edges))


def norm_except_dim(v: Any, pow: float = 2, dim: int = 0) -> Tensor:  # noqa: A002 (torch's name)
    """torch.norm_except_dim (weight norm's): the `pow`-norm over every dim but `dim`, kept as size-1
    dims; `dim=-1` (exactly) the norm of the whole tensor, a 0-d tensor."""
    x = _tensor(v)
    if dim == -1:
        return vector_norm(x, pow)
    d = check_dim("norm_except_dim", dim, x.ndim)
    return vector_norm(x, pow, [i for i in builtins.range(x.ndim) if i != d], keepdim=True)


# -- LU: torch's deprecated torch.lu / lu_solve / lu_unpack ------------------------------------------------

class LUWithInfoResult(NamedTuple):
    """torch.return_types._lu_with_info."""
    LU: Tensor
    pivots: Tensor
    info: Tensor


class LUUnpackResult(NamedTuple):
    """torch.return_types.lu_unpack."""
    P: Tensor
    L: Tensor
    U: Tensor


def _lu_factor(a: Tensor, pivot: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Doolittle LU of (..., m, n) with partial pivoting as LAPACK's getf2 (the first largest |a| of the column
    below the diagonal; a zero pivot leaves its column unscaled and sets info), unrolled over min(m, n) steps
    of ops, so it traces and differentiates. Pivots are 1-based int32, as torch's."""
    from .core import abs as _abs
    from .core import argmax, broadcast_to, concat, div, eq, expand_dims, gt, mul, sub
    from .sorting import take_along_dim
    batch, (m, n) = tuple(a.shape[:-2]), a.shape[-2:]
    a = reshape(a, (-1, m, n))
    B, k = a.shape[0], builtins.min(m, n)
    rows, cols = iota((1, m), 1), iota((1, 1, n), 2)
    pivots, info = [], full((B,), 0, dt.int32)
    for j in builtins.range(k):
        if pivot:
            p = add(argmax(_abs(a[:, j:, j]), 1), j)                                     # (B,)
            pc = reshape(p, (B, 1))
            idx = where(eq(rows, j), pc, where(eq(rows, pc), j, rows))                   # rows j and p swapped
            a = take_along_dim(a, broadcast_to(expand_dims(idx, 2), (B, m, n)), 1)
        else:
            p = full((B,), j, dt.int64)
        pivots.append(p)
        if j + 1 == m:
            d = a[:, j, j]
            info = where(logical_and(eq(info, 0), eq(d, 0.0)), j + 1, info)
            continue
        d = reshape(a[:, j, j], (B, 1))
        zero = eq(d, 0.0)
        info = where(logical_and(eq(info, 0), reshape(zero, (B,))), j + 1, info)
        below = a[:, j + 1:, :]
        col = below[:, :, j]
        l = where(zero, col, div(col, where(zero, 1.0, d)))                              # (B, m-j-1)
        urow = where(gt(cols, j), expand_dims(a[:, j, :], 1), 0.0)                       # (B, 1, n)
        below = sub(below, mul(expand_dims(l, 2), urow))
        below = where(eq(cols, j), expand_dims(l, 2), below)
        a = concat([a[:, :j + 1, :], below], 1)
    piv = cast(add(stack(pivots, 1), 1), dt.int32) if k else full((B, 0), 0, dt.int32)
    return reshape(a, (*batch, m, n)), reshape(piv, (*batch, k)), reshape(info, batch)


def lu(A: Any, pivot: bool = True, get_infos: bool = False, out: Any = None) -> Any:
    """torch.lu (deprecated for torch.linalg.lu_factor): (LU, pivots) of a (batch of) matrices, L's unit
    diagonal implicit below U; with `get_infos` also info (0, or the 1-based index of a zero pivot)."""
    unsupported("lu", out=out)
    a = _tensor(A)
    if a.ndim < 2:
        raise fail(RuntimeError(f"torch.lu_factor: Expected tensor with 2 or more dimensions. Got size: "
                                f"{list(a.shape)} instead"))
    if not a.dtype.is_float:
        names = {"int64": "Long", "int32": "Int", "int16": "Short", "int8": "Char", "uint8": "Byte", "bool": "Bool"}
        raise NotImplementedError(f"\"lu_cpu\" not implemented for '{names.get(dt.PY_NAMES[a.dtype.name])}'")
    LU, piv, info = _lu_factor(a, pivot)
    return LUWithInfoResult(LU, piv, info) if get_infos else (LU, piv)


def _permutation(piv: Tensor, m: int) -> Tensor:
    """The row order (..., m) int64 that LAPACK's successive swaps (1-based `piv`) make of arange(m)."""
    batch = tuple(piv.shape[:-1])
    rows = iota((*batch, m), len(batch))
    p = cast(piv, dt.int64)
    perm = rows
    for i in builtins.range(piv.shape[-1]):
        t = add(p[..., i:i + 1], -1)                                                     # (..., 1)
        at_i, at_t = perm[..., i:i + 1], sum(where(rows == t, perm, 0), -1, keepdim=True)
        perm = where(rows == i, at_t, where(rows == t, at_i, perm))
    return perm


def lu_unpack(LU_data: Any, LU_pivots: Any, unpack_data: bool = True, unpack_pivots: bool = True, *,
              out: Any = None) -> LUUnpackResult:
    """torch.lu_unpack: (P, L, U) with A = P L U from torch.lu's (LU, pivots); what is not unpacked is an
    empty tensor, as torch's."""
    from .creation import eye
    from .shaping import tril, triu
    unsupported("lu_unpack", out=out)
    a, piv = _tensor(LU_data), _tensor(LU_pivots)
    m, n = a.shape[-2:]
    k = builtins.min(m, n)
    empty = full((0,), 0, a.dtype)
    if unpack_data:
        L = add(tril(a, -1)[..., :, :k], eye(m, k, dtype=a.dtype))
        U = triu(a)[..., :k, :]
    else:
        L = U = empty
    if unpack_pivots:  # torch's check, eagerly and when a traced graph runs (a wrong permutation otherwise)
        from .core import check_values, ge, le, logical_and
        piv = check_values(piv, logical_and(ge(piv, 1), le(piv, m)), "torch.lu_unpack: pivots passed to lu_unpack "
                           "must be between 1 and LU.size(-2) inclusive. Did you properly pass the result of "
                           "lu_factor?")
        perm = _permutation(piv, m)                                                      # A[perm] = L U
        P = cast(reshape(perm, (*perm.shape, 1)) == iota((1, m), 1), a.dtype)            # P^T[i, perm[i]] = 1
        P = P.transpose(-2, -1)
    else:
        P = empty
    return LUUnpackResult(P, L, U)


def lu_solve(b: Any, LU_data: Any, LU_pivots: Any, *, out: Any = None) -> Tensor:
    """torch.lu_solve (deprecated for torch.linalg.lu_solve, whose arguments are reversed): X with A X = b
    from torch.lu's factorization of A, by two triangular solves."""
    from .linalg import solve_triangular
    unsupported("lu_solve", out=out)
    B, a = _tensor(b), _tensor(LU_data)
    if B.ndim < 2:
        raise fail(RuntimeError("linalg.lu_solve: The input tensor B must have at least 2 dimensions."))
    from .core import check_values, ge, le
    piv, m = _tensor(LU_pivots), a.shape[-2]  # torch's checks, eagerly and when a traced graph runs
    piv = check_values(piv, ge(piv, 1), "lu_solve: Pivots given to lu_solve must all be greater or equal to 1. "
                       "Did you properly pass the result of lu_factor?")
    piv = check_values(piv, le(piv, m), "lu_solve: Pivots given to lu_solve must all be smaller or equal to "
                       "LU.size(-2). Did you properly pass the result of lu_factor?")
    perm = _permutation(piv, m)
    from .core import broadcast_to
    from .sorting import take_along_dim
    shape = tuple(np.broadcast_shapes(B.shape[:-2], a.shape[:-2]))
    Bb = broadcast_to(B, (*shape, *B.shape[-2:]))
    pb = broadcast_to(reshape(perm, (*perm.shape, 1)), (*shape, perm.shape[-1], B.shape[-1]))
    y = solve_triangular(a, take_along_dim(Bb, pb, -2), upper=False, unitriangular=True)
    return solve_triangular(a, y, upper=True)


__all__ = ["adjoint", "alias_copy", "as_strided_copy", "as_strided_scatter", "conj_physical", "conj_physical_",
           "detach_", "detach_copy", "diagonal_copy", "empty_strided", "expand_copy", "frobenius_norm", "frombuffer",
           "histogramdd", "indices_copy", "is_conj", "is_neg", "lu", "lu_solve", "lu_unpack", "narrow_copy", "orgqr",
           "unsafe_chunk", "unsafe_split", "unsafe_split_with_sizes",
           "nonzero_static", "norm_except_dim", "permute_copy", "resolve_conj", "resolve_neg", "select_copy",
           "slice_copy", "split_copy", "split_with_sizes_copy", "squeeze_copy", "t_copy", "transpose_copy",
           "unbind_copy", "unfold_copy", "unsqueeze_copy", "values_copy", "view_as_complex_copy", "view_as_real_copy",
           "view_copy"]

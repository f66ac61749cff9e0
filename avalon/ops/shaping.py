"""torch's shape and masking functions over the primitives: `cat`, `split`, `chunk`, `tril`,
`triu`, `masked_fill`, `bmm`, `flip`, `roll`, `repeat`, `diagonal`, ... (the masks of `tril`/`triu`
and the index of `flip` are `iota` formulas, so they stay index formulas in the graph; rolls and
diagonals are static slices, so their gradients are pads rather than scatters)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import views
from ..ir import ShapeError
from ..ir import dtypes as dt
from ..tensor import Tensor
from ..trace import located, user_location
from .core import (
    ArgumentError,
    IndexRangeError,
    _as_operand,
    _concat,
    _is_scalar,
    _shape_kw,
    _tensor,
    broadcast_to,
    cast,
    check_dim,
    check_dims,
    concat,
    div,
    expand_dims,
    fail,
    full,
    ge,
    le,
    matmul,
    pad,
    permute,
    reshape,
    slice_,
    sub,
    take,
    transpose,
    where,
)
from .core import sum as _sum
from .creation import arange, iota
from .dtype_kernels import refuses
from .indexing import _gather


def cat(tensors: Sequence[Any], dim: int = 0, *, axis: int | None = None, out: Any = None) -> Tensor:
    """torch.cat (`av.ops.concat` with torch's argument name)."""
    if out is not None:
        raise TypeError("cat: argument 'out' is not supported")
    return _concat("cat", tensors, dim if axis is None else axis)


concatenate = cat


def unsqueeze(input: Any, dim: int) -> Tensor:
    return expand_dims(input, dim)


def _dim(fn: str, x: Tensor, dim: int) -> int:
    """`dim` of `x` checked (torch's IndexError naming `fn` and the user's line) and made non-negative."""
    return check_dim(fn, dim, x.ndim)


def narrow(input: Any, dim: int, start: int, length: int) -> Tensor:
    """Elements start .. start + length - 1 along `dim`; `start` may be a 0-d integer tensor, as torch's."""
    x = _tensor(input)
    d = _dim("narrow", x, dim)
    if isinstance(start, Tensor):
        if start.ndim != 0 or start.dtype.is_float or start.dtype is dt.bool_:
            raise fail(RuntimeError("narrow: start must be an 0-dim integral Tensor."))
        start = int(start.item())
    if length < 0:
        raise fail(RuntimeError("narrow(): length must be non-negative."))
    start = start % x.shape[d] if start < 0 else start
    if start + length > x.shape[d]:
        raise fail(IndexRangeError(f"narrow: start ({start}) + length ({length}) exceeds dimension size "
                                   f"({x.shape[d]})"))
    lo, hi = [0] * x.ndim, list(x.shape)
    lo[d], hi[d] = start, start + length
    index = tuple(slice(a, b, 1) for a, b in zip(lo, hi))
    return views.link(x, slice_(x, lo, hi), views.Index(index))  # a view, as in torch (split, chunk too)


def split(tensor: Any, split_size_or_sections: int | Sequence[int] | None = None, dim: int = 0, *,
          split_size: int | Sequence[int] | None = None) -> tuple[Tensor, ...]:
    """torch.split: pieces of `split_size` along `dim` (the last may be smaller), or of the given sizes.
    `split_size=` is Tensor.split's name for the same argument."""
    if split_size is not None:
        if split_size_or_sections is not None:
            raise TypeError("split() got multiple values for argument 'split_size'")
        split_size_or_sections = split_size
    if split_size_or_sections is None:
        raise TypeError("split() missing 1 required positional argument: 'split_size_or_sections'")
    x = _tensor(tensor)
    d = _dim("split", x, dim)
    n = x.shape[d]
    if isinstance(split_size_or_sections, (list, tuple)):
        sizes = [int(s) for s in split_size_or_sections]
        if sum(sizes) != n or any(s < 0 for s in sizes):
            raise located(ArgumentError(f"split: sizes {sizes} do not add up to dimension {d}'s size {n}"),
                          user_location())
    else:
        size = int(split_size_or_sections)
        if size <= 0:
            raise ValueError(f"split: argument 'split_size' must be positive, got {size}")
        sizes = [min(size, n - s) for s in range(0, n, size)] or [0]
    out, at = [], 0
    for s in sizes:
        out.append(narrow(x, d, at, s))
        at += s
    return tuple(out)


def chunk(input: Any, chunks: int, dim: int = 0) -> tuple[Tensor, ...]:
    """torch.chunk: pieces of ceil(n / chunks) along `dim` (so possibly fewer than `chunks`)."""
    x = _tensor(input)
    if chunks <= 0:
        raise ValueError(f"chunk: argument 'chunks' must be positive, got {chunks}")
    n = x.shape[_dim("chunk", x, dim)]
    return split(x, max(math.ceil(n / chunks), 1), dim)


def _band(fn: str, input: Any, diagonal: int, keep_below: bool) -> Tensor:
    x = _tensor(input)
    if x.ndim < 2:
        raise located(ShapeError(f"{fn}: input tensor must have at least 2 dimensions, got {x.shape}"),
                      user_location())
    rc = x.shape[-2:]
    off = sub(iota(rc, 1), iota(rc, 0))  # column - row
    keep = le(off, int(diagonal)) if keep_below else ge(off, int(diagonal))
    return where(keep, x, False if x.dtype is dt.bool_ else 0)


def tril(input: Any, diagonal: int = 0) -> Tensor:
    """The lower triangle (column - row <= diagonal) of the last two dims; zeros above."""
    return _band("tril", input, diagonal, True)


def triu(input: Any, diagonal: int = 0) -> Tensor:
    """The upper triangle (column - row >= diagonal) of the last two dims; zeros below."""
    return _band("triu", input, diagonal, False)


def masked_fill(input: Any, mask: Any, value: Any) -> Tensor:
    """`value` where `mask` (broadcast to the input's shape) is true; the input's dtype is kept."""
    x = _tensor(input)
    m = _as_operand(mask)
    if not isinstance(m, Tensor) or m.dtype is not dt.bool_:
        raise TypeError("masked_fill: argument 'mask' must be a boolean tensor")
    v = _as_operand(value)
    if isinstance(v, Tensor) and v.ndim != 0:
        raise TypeError(f"masked_fill: argument 'value' must be a number or a 0-d tensor, got shape {v.shape}")
    v = full((), v, x.dtype) if _is_scalar(v) else cast(v, x.dtype)
    out = where(m, v, x)
    if out.shape != x.shape:
        raise located(ShapeError(f"masked_fill: mask of shape {m.shape} does not broadcast to {x.shape}"),
                      user_location())
    return out


def bmm(input: Any, mat2: Any) -> Tensor:
    """Batched (b, n, m) @ (b, m, p)."""
    a, b = _tensor(input), _tensor(mat2)
    if a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0]:
        raise located(ShapeError(f"bmm: expected 3-d tensors with equal batch sizes, got {a.shape} and {b.shape}"),
                      user_location())
    return matmul(a, b)


def mm(input: Any, mat2: Any) -> Tensor:
    a, b = _tensor(input), _tensor(mat2)
    if a.ndim != 2 or b.ndim != 2:
        raise located(ShapeError(f"mm: expected 2-d tensors, got {a.shape} and {b.shape}"), user_location())
    return matmul(a, b)


def t(input: Any) -> Tensor:
    """Transpose of a tensor of at most 2 dims (torch.t)."""
    x = _tensor(input)
    if x.ndim > 2:
        raise located(ShapeError(f"t: expects a tensor with <= 2 dimensions, got {x.ndim}"), user_location())
    return transpose(x) if x.ndim == 2 else x


def index_select(input: Any, dim: int, index: Any) -> Tensor:
    x = _tensor(input)
    d = _dim("index_select", x, dim)
    idx = index if isinstance(index, Tensor) else _tensor(index)
    if idx.ndim > 1:  # take would keep its dims: (n, m) indices give an extra dim instead of torch's error
        raise fail(IndexError(f"index_select(): Index is supposed to be a vector (0-d or 1-d), got shape {idx.shape}"))
    return take(x, reshape(idx, (1,)) if idx.ndim == 0 else idx, d)  # a 0-d index keeps the dim, as torch's


def reciprocal(input: Any) -> Tensor:
    return div(1.0, input)


def square(input: Any) -> Tensor:
    """torch.square, which is `pow(input, 2)`: a bool tensor's square is int64, as torch's (x * x would stay bool)."""
    x = _tensor(input)
    return x ** 2


def numel(input: Any) -> int:
    return _tensor(input).numel()


def is_tensor(obj: Any) -> bool:
    return isinstance(obj, Tensor)


def _dims_arg(dims: Any) -> list[int]:
    if isinstance(dims, (int, np.integer)):
        return [int(dims)]
    return [int(d) for d in dims]


def roll(input: Any, shifts: Any, dims: Any = None) -> Tensor:
    """torch.roll: elements shifted along `dims` and wrapped around (without dims: over the flattened
    tensor, then reshaped back). Each dim is two slices concatenated."""
    x = _tensor(input)
    if dims is None:
        s = _dims_arg(shifts)
        if len(s) != 1:
            raise ValueError("roll: without 'dims', 'shifts' must be a single int")
        return reshape(roll(reshape(x, (-1,)), s[0], 0), x.shape)
    shifts, dims = _dims_arg(shifts), _dims_arg(dims)
    if len(shifts) != len(dims):
        raise ValueError(f"roll: shifts and dims must align, got {len(shifts)} shifts and {len(dims)} dims")
    for s, d in zip(shifts, dims):
        d = _dim("roll", x, d)
        n = x.shape[d]
        s = s % n if n else 0
        if s:
            x = concat([narrow(x, d, n - s, s), narrow(x, d, 0, n - s)], d)
    return x


def _reverse(x: Tensor, d: int) -> Tensor:
    """`x` reversed along `d`: one `take` at index n - 1 - iota, a single load per element in a
    fused kernel (the slice primitive has no negative steps, and a chain of slices and concats
    would multiply the loads of every fused stage). Its gradient is `take`'s one-hot product."""
    n = x.shape[d]
    if n <= 1:
        return x
    return take(x, sub(n - 1, iota((n,), 0)), d)


def flip(input: Any, dims: Any) -> Tensor:
    """torch.flip: reverse the order of elements along each of `dims`."""
    x = _tensor(input)
    ds = check_dims("flip", _dims_arg(dims), x.ndim)
    for d in ds if x.ndim else ():  # a 0-d tensor is its own reverse
        x = _reverse(x, d)
    return x


def fliplr(input: Any) -> Tensor:
    """Reverse dim 1 (left/right); the tensor needs at least 2 dims."""
    x = _tensor(input)
    if x.ndim < 2:
        raise located(ShapeError("fliplr: input must be >= 2-d"), user_location())
    return flip(x, 1)


def flipud(input: Any) -> Tensor:
    """Reverse dim 0 (up/down); the tensor needs at least 1 dim."""
    x = _tensor(input)
    if x.ndim < 1:
        raise located(ShapeError("flipud: input must be >= 1-d"), user_location())
    return flip(x, 0)


def _sizes(fn: str, sizes: tuple) -> list[int]:
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = tuple(sizes[0])
    out = [int(s) for s in sizes]
    if any(s < 0 for s in out):
        raise ValueError(f"{fn}: negative repeat count in {tuple(out)}")
    return out


def repeat(input: Any, *sizes: Any, repeats: Any = None) -> Tensor:
    """Tensor.repeat: tile the tensor `sizes[i]` times along dim i (extra leading sizes add dims);
    the counts as arguments, a tuple or torch's `repeats=`. One broadcast between interleaved
    size-1 dims, then a reshape."""
    x = _tensor(input)
    reps = _sizes("repeat", _shape_kw("repeat", sizes, "repeats", repeats))
    if len(reps) < x.ndim:
        raise fail(ArgumentError(f"repeat: {len(reps)} repeat counts for a tensor of dimension {x.ndim}; give at "
                                 "least one per dimension"))
    shape = (1,) * (len(reps) - x.ndim) + x.shape
    inter = [v for s in shape for v in (1, s)]
    target = [v for r, s in zip(reps, shape) for v in (r, s)]
    y = broadcast_to(reshape(x, inter), target)
    return reshape(y, [r * s for r, s in zip(reps, shape)])


def tile(input: Any, dims: Any) -> Tensor:
    """torch.tile: `repeat`, with missing leading counts taken as 1."""
    x = _tensor(input)
    reps = _sizes("tile", (dims,))
    return repeat(x, [1] * (x.ndim - len(reps)) + reps)


def repeat_interleave(input: Any, repeats: Any = None, dim: int | None = None, *,
                      output_size: int | None = None) -> Tensor:
    """torch.repeat_interleave: each element (slice along `dim`; the flattened tensor without dim)
    repeated. An int repeats everything alike (a broadcast); per-element counts must be concrete,
    since they decide the result's shape, and gather with static indices."""
    if repeats is None:  # torch.repeat_interleave(repeats): each index repeated repeats[i] times
        counts = _as_operand(input)
        return repeat_interleave(arange(int(np.asarray(counts).shape[0])), counts, 0)
    x = _tensor(input)
    if dim is None:
        x, d = reshape(x, (-1,)), 0
    else:
        d = _dim("repeat_interleave", x, dim)
    n = x.shape[d] if x.ndim else 1
    if isinstance(repeats, Tensor) and repeats.is_traced and output_size is not None:
        return _repeat_interleave_traced(x, repeats, d, n, int(output_size))
    if isinstance(repeats, Tensor) and repeats.is_traced:
        raise TypeError("repeat_interleave: 'repeats' is a traced tensor, but the result's shape depends on its "
                        "values; pass output_size=(their sum), or the counts as an int, a list or a concrete tensor")
    reps = np.asarray(repeats).astype(np.int64).reshape(-1)
    if reps.size == 1:
        r = int(reps[0])
        if r < 0:
            raise ValueError("repeat_interleave: repeats must be non-negative")
        y = broadcast_to(expand_dims(x, d + 1), x.shape[:d + 1] + (r,) + x.shape[d + 1:])
        return reshape(y, x.shape[:d] + (n * r,) + x.shape[d + 1:])
    if reps.size != n or (reps < 0).any():
        raise ValueError(f"repeat_interleave: repeats must have {n} non-negative entries, got {reps.tolist()}")
    idx = np.repeat(np.arange(n, dtype=np.int64), reps)
    if output_size is not None and int(output_size) != idx.size:
        raise ValueError(f"repeat_interleave: output_size={output_size} but the repeats add up to {idx.size}")
    if idx.size == 0:
        return full(x.shape[:d] + (0,) + x.shape[d + 1:], 0, x.dtype)
    return _gather(x, Tensor(idx), d)


def _repeat_interleave_traced(x: Tensor, repeats: Tensor, d: int, n: int, size: int) -> Tensor:
    """repeat_interleave with traced counts and torch's static `output_size`: output j takes element
    #{k : cumsum(repeats)[k] <= j}; torch's checks (counts >= 0, summing to output_size) when the graph runs."""
    from .core import check_values, cumsum, eq, ge, le, sum
    r = reshape(repeats, (-1,))
    if r.dtype.is_float or r.ndim != 1 or r.shape[0] not in (1, n):
        raise TypeError(f"repeat_interleave: repeats must be an integer tensor of 1 or {n} counts, got {r.dtype.name} "
                        f"{tuple(repeats.shape)}")
    r = broadcast_to(cast(r, dt.int64), (n,))
    r = check_values(r, ge(r, 0), "repeat_interleave: repeats can not be negative")
    r = check_values(r, broadcast_to(eq(sum(r), size), (n,)), f"repeat_interleave: allocated size does not match "
                     f"required size (output_size={size} but the repeats add up to another total)")
    if size == 0 or n == 0:
        return full(x.shape[:d] + (0,) + x.shape[d + 1:], 0, x.dtype)
    ends = cumsum(r, 0)  # (n,)
    idx = sum(cast(le(reshape(ends, (1, n)), reshape(arange(size), (size, 1))), dt.int64), 1)  # (size,)
    return _gather(x, idx, d)


def _diagonal(x: Tensor, offset: int, dim1: int, dim2: int) -> Tensor:
    if x.ndim < 2:
        raise located(ShapeError(f"diagonal: needs at least 2 dims, got shape {x.shape}"), user_location())
    d1, d2 = _dim("diagonal", x, dim1), _dim("diagonal", x, dim2)
    if d1 == d2:
        raise located(ShapeError(f"diagonal: dim1 and dim2 cannot be the same dim ({d1})"), user_location())
    y = permute(x, [i for i in range(x.ndim) if i not in (d1, d2)] + [d1, d2])
    n, m = y.shape[-2:]
    r0, c0 = (0, offset) if offset >= 0 else (-offset, 0)
    size = max(0, min(n - r0, m - c0))
    if size == 0:
        r0 = c0 = 0
    batch = y.shape[:-2]
    z = [0] * len(batch)
    block = slice_(y, z + [r0, c0], list(batch) + [r0 + size, c0 + size])
    flat = reshape(block, batch + (size * size,))
    return slice_(flat, z + [0], list(batch) + [size * size], [1] * len(batch) + [size + 1])


def diagonal(input: Any, offset: int = 0, dim1: int = 0, dim2: int = 1) -> Tensor:
    """torch.diagonal: the diagonal of the (dim1, dim2) planes as a new last dim. The square block
    holding it, flattened, has the diagonal at every (L + 1)-th element: one strided slice."""
    x = _tensor(input)
    views._RAW[0] += 1
    try:
        y = _diagonal(x, int(offset), dim1, dim2)
    finally:
        views._RAW[0] -= 1
    return views.link(x, y, views.Diagonal(int(offset), _dim("diagonal", x, dim1), _dim("diagonal", x, dim2)))


def diag(input: Any, diagonal: int = 0) -> Tensor:
    """torch.diag: a 1-d tensor becomes a square matrix with it on the `diagonal`-th diagonal (each
    row padded with n zeros, then the first n*n elements read n per row), a 2-d one gives that diagonal."""
    x = _tensor(input)
    k = int(diagonal)
    if x.ndim == 2:
        return _diagonal(x, k, 0, 1)
    if x.ndim != 1:
        raise located(ShapeError(f"diag: expects a 1-d or 2-d tensor, got shape {x.shape}"), user_location())
    n = x.shape[0]
    m = n + abs(k)
    if n == 0:
        return full((m, m), 0, x.dtype)
    y = pad(reshape(x, (n, 1)), [(0, 0), (0, n)])
    y = reshape(slice_(reshape(y, (n * (n + 1),)), [0], [n * n]), (n, n))
    return pad(y, [(0, k), (k, 0)] if k >= 0 else [(-k, 0), (0, -k)]) if k else y


@refuses("trace", "trace", "bool")
def trace(input: Any) -> Tensor:
    """The sum of a matrix's main diagonal; integers sum as i64, as in torch."""
    x = _tensor(input)
    if x.ndim != 2:
        raise located(ShapeError(f"trace: expects a 2-d tensor, got shape {x.shape}"), user_location())
    d = diagonal(x)
    return _sum(d if x.dtype.is_float else cast(d, dt.int64))


def unbind(input: Any, dim: int = 0) -> tuple[Tensor, ...]:
    """The slices along `dim`, each without that dim."""
    x = _tensor(input)
    d = _dim("unbind", x, dim)
    rest = x.shape[:d] + x.shape[d + 1:]
    return tuple(reshape(narrow(x, d, i, 1), rest) for i in range(x.shape[d]))


def movedim(input: Any, source: Any, destination: Any) -> Tensor:
    """torch.movedim: dims `source` moved to positions `destination`, the others keeping their order."""
    x = _tensor(input)
    src = [_dim("movedim", x, s) for s in _dims_arg(source)]
    dst = [_dim("movedim", x, s) for s in _dims_arg(destination)]
    if len(src) != len(dst):
        raise ValueError("movedim: source and destination must have the same number of dims")
    for what, given, ds in (("source", source, src), ("destination", destination, dst)):
        if len(set(ds)) != len(ds):
            raise fail(ArgumentError(f"movedim: repeated dim in `{what}` ({_dims_arg(given)})"))
    order = [i for i in range(x.ndim) if i not in src]
    for t, s in sorted(zip(dst, src)):
        order.insert(t, s)
    return permute(x, order)


moveaxis = movedim


__all__ = ["bmm", "cat", "chunk", "concatenate", "diag", "diagonal", "flip", "fliplr", "flipud", "index_select",
           "is_tensor", "masked_fill", "mm", "moveaxis", "movedim", "narrow", "numel", "reciprocal", "repeat",
           "repeat_interleave", "roll", "split", "square", "t", "tile", "trace", "tril", "triu", "unbind",
           "unsqueeze"]

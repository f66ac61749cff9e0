"""torch's shape and masking functions over the primitives: `cat`, `split`, `chunk`, `tril`,
`triu`, `masked_fill`, `bmm`, ... (the masks of `tril`/`triu` are `iota` comparisons, so they stay
index formulas in the graph)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..ir import ShapeError
from ..ir import dtypes as dt
from ..tensor import Tensor
from ..trace import located, user_location
from .core import (
    _as_operand,
    _is_scalar,
    _tensor,
    cast,
    concat,
    div,
    expand_dims,
    full,
    ge,
    le,
    matmul,
    slice_,
    sub,
    take,
    transpose,
    where,
)
from .creation import iota


def cat(tensors: Sequence[Any], dim: int = 0, *, axis: int | None = None, out: Any = None) -> Tensor:
    """torch.cat (`av.ops.concat` with torch's argument name)."""
    if out is not None:
        raise TypeError("cat: argument 'out' is not supported")
    return concat(tensors, dim if axis is None else axis)


concatenate = cat


def unsqueeze(input: Any, dim: int) -> Tensor:
    return expand_dims(input, dim)


def _dim(fn: str, x: Tensor, dim: int) -> int:
    if not -max(x.ndim, 1) <= dim < max(x.ndim, 1):
        raise located(IndexError(f"{fn}: dim {dim} is out of range for a tensor of dimension {x.ndim}"),
                      user_location())
    return dim % max(x.ndim, 1)


def narrow(input: Any, dim: int, start: int, length: int) -> Tensor:
    """Elements start .. start + length - 1 along `dim`."""
    x = _tensor(input)
    d = _dim("narrow", x, dim)
    start = start % x.shape[d] if start < 0 else start
    if start + length > x.shape[d] or length < 0:
        raise located(IndexError(f"narrow: start ({start}) + length ({length}) exceeds dimension size "
                                 f"({x.shape[d]})"), user_location())
    lo, hi = [0] * x.ndim, list(x.shape)
    lo[d], hi[d] = start, start + length
    return slice_(x, lo, hi)


def split(tensor: Any, split_size_or_sections: int | Sequence[int], dim: int = 0) -> tuple[Tensor, ...]:
    """torch.split: pieces of `split_size` along `dim` (the last may be smaller), or of the given sizes."""
    x = _tensor(tensor)
    d = _dim("split", x, dim)
    n = x.shape[d]
    if isinstance(split_size_or_sections, (list, tuple)):
        sizes = [int(s) for s in split_size_or_sections]
        if sum(sizes) != n or any(s < 0 for s in sizes):
            raise located(ValueError(f"split: sizes {sizes} do not add up to dimension {d}'s size {n}"),
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
    return take(x, index, _dim("index_select", x, dim))


def reciprocal(input: Any) -> Tensor:
    return div(1.0, input)


def square(input: Any) -> Tensor:
    x = _tensor(input)
    return x * x


def numel(input: Any) -> int:
    return _tensor(input).numel()


def is_tensor(obj: Any) -> bool:
    return isinstance(obj, Tensor)


__all__ = ["bmm", "cat", "chunk", "concatenate", "index_select", "is_tensor", "masked_fill", "mm", "narrow", "numel",
           "reciprocal", "split", "square", "t", "tril", "triu", "unsqueeze"]

"""Tensor indexing with torch's (and numpy's basic) rules: `x[i]`, `x[:, 1:5:2]`, `x[..., None]`,
`x[:, [-1], :]`, `x[mask]` with a concrete boolean mask, and `x[idx] = v` as a functional update
built from `pad`, `concat`, `reshape` and `where`, so autodiff and fusion see through it."""
from __future__ import annotations

import builtins
import math
from typing import Any

import numpy as np

from .. import views
from ..ir import LiteralArray
from ..ir import dtypes as dt
from ..tensor import TRACING, Tensor, _mark_literal, _python_numbers
from .core import (
    _as_operand,
    _tensor,
    add,
    bind,
    broadcast_to,
    cast,
    concat,
    cumsum,
    expand_dims,
    fail,
    full,
    lt,
    ne,
    pad,
    reshape,
    slice_,
    where,
)
from .creation import in_range, iota


def _is_int_index(i: Any) -> bool:
    return isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_)) or (
        isinstance(i, Tensor) and i.ndim == 0 and not i.is_traced and not i.dtype.is_float
        and i.dtype is not dt.bool_)


def _is_array_index(i: Any) -> bool:
    return isinstance(i, (Tensor, np.ndarray, list, range))  # a range is a list, as torch reads it


def _literal_index(t: Tensor, i: Any) -> Tensor:
    """`t`, the index array made from the index `i`, marked literal data of the program when `i` is Python
    numbers (YOLOv5's `t[range(n), tcls[i]] = self.cp`, `x[[0, 1], [1, 0]]`), as `torch.tensor([-1])` is:
    a compiled graph keeps it, where an array captured from outside makes it trace again on every call."""
    if TRACING and (isinstance(i, (range, LiteralArray)) or _python_numbers(i)):
        _mark_literal(t)
    return t


def _concrete_array(i: Any) -> np.ndarray | None:
    """The values of a static index (a list, an array, an eager Tensor); None for a traced one."""
    if isinstance(i, Tensor):
        return None if i.is_traced else i.numpy()
    return np.asarray(i)


_FOLD_LIMIT = 512  # ops evaluated at most when folding a mask


def _folded(t: Tensor) -> np.ndarray | None:
    """The values of a traced tensor that no input of its graph feeds (`~th.eye(n, dtype=th.bool)`, a
    label mask from `th.arange`, in a loss being differentiated or compiled), computed while tracing,
    so indexing with it is indexing with a constant as torch's code means it; None when an input (the
    data, a parameter, a random seed) feeds it, or when more than `_FOLD_LIMIT` ops would run."""
    from ..ir.reference import evaluate
    memo: dict[int, np.ndarray] = {}
    todo, count = [t._value], 0
    while todo:  # post-order over the producers, without recursion
        v = todo[-1]
        if id(v) in memo:
            todo.pop()
            continue
        op = v.op
        if op is None or op.regions or len(op.results) != 1:
            return None  # a graph input, or an op the reference evaluates by region
        missing = [o for o in op.operands if id(o) not in memo]
        if missing:
            count += len(missing)
            if count > _FOLD_LIMIT:
                return None
            todo.extend(missing)
            continue
        memo[id(v)] = evaluate(op.name, op.attrs, [memo[id(o)] for o in op.operands], v.type)
        todo.pop()
    return memo[id(t._value)]


def _is_bool_mask(i: Any) -> bool:
    if isinstance(i, Tensor):
        return i.dtype is dt.bool_
    return _is_array_index(i) and np.asarray(i).dtype == np.bool_


def _mask_rank(i: Any) -> int:
    return i.ndim if isinstance(i, Tensor) else np.asarray(i).ndim


def _expand(index: tuple, ndim: int) -> tuple:
    """Replace the Ellipsis (or append) by enough full slices to index every dim."""
    if builtins.sum(1 for i in index if i is Ellipsis) > 1:
        raise fail(IndexError("an index can only have a single ellipsis ('...')"))
    n_real = builtins.sum(_mask_rank(i) if _is_bool_mask(i) else 1
                          for i in index if i is not None and i is not Ellipsis)
    if n_real > ndim:
        raise fail(IndexError(f"too many indices for tensor of dimension {ndim} (got {n_real})"))
    fill = (slice(None),) * (ndim - n_real)
    ell = [k for k, i in enumerate(index) if i is Ellipsis]
    if ell:
        return index[:ell[0]] + fill + index[ell[0] + 1:]
    return index + fill


_BYTE_MASK = ("indexing with dtype torch.uint8 is now deprecated, please use a dtype torch.bool instead. "
              "(avalon: as torch 2.13, a uint8 index tensor is a boolean mask)")


def _is_byte(i: Any) -> bool:
    return (isinstance(i, Tensor) and i.dtype is dt.uint8) or (isinstance(i, np.ndarray) and i.dtype == np.uint8)


def _byte_masks(index: tuple) -> tuple:
    """torch 2.13 reads a uint8 index tensor as a boolean mask (nonzero = selected), with its
    deprecation warning; the index with those entries made booleans."""
    if not any(_is_byte(i) for i in index):
        return index
    import warnings
    warnings.warn(_BYTE_MASK, UserWarning, stacklevel=4)
    return tuple((ne(i, 0) if isinstance(i, Tensor) else i != 0) if _is_byte(i) else i for i in index)


def _int_indices(i: Any, size: int, dim: int) -> Any:
    """An integer-array index with negatives wrapped and bounds checked when its values are known."""
    if (i.dtype if isinstance(i, (Tensor, np.ndarray)) else None) in (dt.int8, dt.int16, np.int8, np.int16):
        raise fail(IndexError("tensors used as indices must be long, int, byte or bool tensors"))
    arr = _concrete_array(i)
    if arr is None:
        idx = _as_operand(i)
        if idx.dtype.is_float or idx.dtype is dt.bool_:
            raise fail(IndexError("tensors used as indices must be integer or boolean tensors"))
        return where(lt(idx, 0), add(idx, size), idx)  # values known only when it runs: wrap negatives there
    if arr.dtype.kind not in "iu":
        if arr.size == 0:
            arr = arr.astype(np.int64)
        else:
            raise fail(IndexError(f"tensors used as indices must be integers, got {arr.dtype}"))
    bad = (arr < -size) | (arr >= size)
    if bad.any():
        raise fail(IndexError(f"index {int(arr[bad].reshape(-1)[0])} is out of bounds for dimension {dim} "
                         f"with size {size}"))
    leaf = _leaf_input(i) if isinstance(i, Tensor) and not (arr < 0).any() else None
    if leaf is not None:
        return leaf  # a model's index buffer (its values checked, and guarded): the graph reads its input
    return _literal_index(Tensor((arr % builtins.max(size, 1)).astype(np.int64)), i)


def getitem(x: Tensor, index: Any) -> Tensor:
    """Ints (negative ones count from the end), slices with positive steps, None, Ellipsis, one
    integer array or list (gathered along its axis with `take`) and concrete boolean masks."""
    if not isinstance(index, tuple):
        index = (index,)
    index = _mask_positions(_expand(_byte_masks(index), x.ndim))
    masks = [k for k, i in enumerate(index) if _is_bool_mask(i)]
    if masks:
        return _mask_index(x, index, masks)
    if builtins.sum(1 for i in index if _is_array_index(i) and not _is_int_index(i)) > 1:
        return _arrays_index(x, index)
    start, limit, step, kept = [], [], [], []
    array_at: int | None = None  # position among kept dims
    array_idx = None
    norm: list[Any] = []  # the index with concrete bounds, for a view's write-back (basic indexing only)
    for i in index:
        if i is None:
            norm.append(None)
            continue
        dim, size = len(start), x.shape[len(start)]
        if isinstance(i, slice):
            s, e, st = i.indices(size)
            if st < 1:
                raise fail(IndexError("negative slice steps are not supported (as in torch)"))
            e = builtins.max(e, s)
            start.append(s), limit.append(e), step.append(st)
            kept.append(len(range(s, e, st)))
            norm.append(slice(s, e, st))
        elif _is_int_index(i):
            j = int(i)
            if not -size <= j < size:
                raise fail(IndexError(f"index {j} is out of bounds for dimension {dim} with size {size}"))
            start.append(j % size), limit.append(j % size + 1), step.append(1)
            norm.append(j % size)
        elif _is_array_index(i):
            if array_at is not None:
                raise fail(IndexError("only one integer-array index is supported"))
            array_at, array_idx = len(kept), _int_indices(i, size, dim)
            start.append(0), limit.append(size), step.append(1)
            kept.append(size)
        else:
            raise fail(IndexError(f"unsupported index {i!r}"))
    views._RAW[0] += 1
    try:
        y = _basic(x, index, start, limit, step, kept, array_at, array_idx)
    finally:
        views._RAW[0] -= 1
    if array_at is not None:  # advanced indexing gives a copy, as in torch (`x[[0, 1]]` of 2 rows too)
        return y.clone() if y is x else y
    return views.link(x, y, views.Index(tuple(norm)))  # basic indexing is a view of x, as in torch


def _basic(x: Tensor, index: tuple, start: list[int], limit: list[int], step: list[int], kept: list[int],
           array_at: int | None, array_idx: Any) -> Tensor:
    """getitem's result from its slice bounds (and its one integer-array index, gathered)."""
    y = reshape(slice_(x, start, limit, step), kept)
    if array_at is not None:
        y = _gather(y, array_idx, array_at)
    if not any(i is None for i in index):
        return y
    shape, k = [], 0
    for i in index:
        if i is None:
            shape.append(1)
        elif _is_int_index(i):
            continue
        elif isinstance(i, slice):
            shape.append(y.shape[k])
            k += 1
        else:
            n = array_idx.ndim
            shape.extend(y.shape[k:k + n])
            k += n
    return reshape(y, shape)


def _gather(y: Tensor, idx: Tensor, axis: int) -> Tensor:
    """`take` along `axis`; a short static 1-d index becomes slices instead (a strided slice for an
    arithmetic progression, else one slice per index, concatenated), so `x[:, [-1]]` leaves no
    captured index array in a traced graph."""
    vals = None if idx.is_traced or idx.ndim != 1 or not 0 < idx.shape[0] <= 16 else idx.numpy().tolist()
    if vals is None:
        return bind("take", y, idx, axis=axis)
    steps = {b - a for a, b in zip(vals, vals[1:])}
    lo, hi = [0] * y.ndim, list(y.shape)
    if len(steps) <= 1 and min(steps, default=1) >= 1:
        st = min(steps, default=1)
        lo[axis], hi[axis] = vals[0], vals[-1] + 1
        return slice_(y, lo, hi, [st if d == axis else 1 for d in range(y.ndim)])
    pieces = []
    for v in vals:
        lo[axis], hi[axis] = v, v + 1
        pieces.append(slice_(y, list(lo), list(hi)))
    return concat(pieces, axis)


def _mask_positions(index: tuple) -> tuple:
    """torch's `x[mask, i]`: a boolean mask beside integer or integer-array indices stands for the integer arrays
    of its true positions (`mask.nonzero()`), which broadcast with the others; done when the mask's
    values are known (eagerly), a traced mask is left as it is."""
    if not any((_is_array_index(i) and not _is_bool_mask(i)) or _is_int_index(i) for i in index):
        return index
    out: list[Any] = []
    for i in index:
        m = _concrete_array(i) if _is_bool_mask(i) else None
        if m is None or m.ndim == 0 or (isinstance(i, Tensor) and _leaf_input(i) is not None):
            out.append(i)
        else:
            out.extend(Tensor(p.astype(np.int64)) for p in np.nonzero(m))
    return tuple(out)


def _arrays_index(x: Tensor, index: tuple) -> Tensor:
    """`x[i, j]`, `x[:, i, j]`, `x[i, :, j]`: several integer-array indices, broadcast together, as
    torch's advanced indexing: ints, slices and None apply first; the arrays' dims then become the
    broadcast shape, in place when they are adjacent, else first. One `take` of a linear index
    over the arrays' dims merged into one."""
    from .core import permute  # (core's permute is a view op; imported here as the rest of core is above)
    basic, at, pos = [], [], 0
    for i in index:
        if _is_array_index(i) and not _is_int_index(i):
            basic.append(slice(None))
            at.append((pos, i))
            pos += 1
        else:
            basic.append(i)
            pos += 0 if _is_int_index(i) else 1
    y = getitem(x, tuple(basic))
    dims = [d for d, _ in at]
    idx = [_int_indices(i, y.shape[d], d) for d, i in at]
    if dims != list(range(dims[0], dims[0] + len(dims))):  # apart: the broadcast dims go first
        y = permute(y, dims + [d for d in range(y.ndim) if d not in dims])
        dims = list(range(len(dims)))
    d0, sizes = dims[0], [y.shape[d] for d in dims]
    bshape = tuple(np.broadcast_shapes(*[i.shape for i in idx]))
    linear = None
    for k, i in enumerate(idx):
        term = cast(broadcast_to(in_range(i, sizes[k]), bshape), dt.int64)
        stride = math.prod(sizes[k + 1:])
        term = bind("mul", term, full(bshape, stride, dt.int64)) if stride != 1 else term
        linear = term if linear is None else add(linear, term)
    flat = reshape(y, y.shape[:d0] + (math.prod(sizes),) + y.shape[d0 + len(dims):])
    return bind("take", flat, linear, axis=d0)


def _mask_index(x: Tensor, index: tuple, masks: list[int]) -> Tensor:
    """`x[..., mask, ...]`: the dims the mask covers become one dim holding the selected elements,
    in row-major order. The mask must be concrete: the result's shape depends on its values."""
    if len(masks) > 1 or any(_is_array_index(i) and k not in masks for k, i in enumerate(index)):
        raise fail(IndexError("a boolean mask index cannot be combined with other array indices"))
    k = masks[0]
    m = _concrete_array(index[k])
    traced = None
    if m is None and isinstance(index[k], Tensor):
        m, traced = _folded(index[k]), index[k]
    elif isinstance(index[k], Tensor):
        traced = _leaf_input(index[k])  # a model's mask (its values guarded): positions found in the graph
    if m is None:
        err = fail(IndexError("indexing with a traced boolean mask: the result's shape would depend on the mask's "
                              "values; use av.where(mask, x, other) or x.masked_fill(mask, value) instead"))
        if len(index) == 1 and isinstance(index[0], Tensor) and index[0].shape == x.shape[:index[0].ndim]:
            return MaskedSelection(x.clone(), index[0], err)  # `x[mask] -= 1`: written back by setitem
        raise err
    d = builtins.sum(0 if i is None else 1 for i in index[:k])  # the first dim the mask covers
    shape = x.shape[d:d + m.ndim]
    if m.shape != shape:
        raise fail(IndexError(f"the shape of the mask {m.shape} does not match the shape of the indexed tensor "
                         f"{shape} at dimension {d}"))
    flat = reshape(x, x.shape[:d] + (math.prod(shape),) + x.shape[d + m.ndim:])
    at = np.flatnonzero(m) if traced is None else _positions(reshape(traced, (m.size,)), int(m.sum()))
    return getitem(flat, index[:k] + (at,) + index[k + 1:])


class MaskedSelection:
    """`x[mask]` of a traced boolean mask (over x's leading dims), whose shape would depend on the mask's values.
    What torch programs do with it in place is still defined: `l[(u > 0) * (l == u)] -= 1` (Rainbow's projection),
    `x[mask] *= 0.5`, `x[mask] = x[mask] + eps`: elementwise arithmetic with a Python number, then written back by
    `x[mask] = ...` with the same mask, which is `where(mask, op(x), x)` on every element. So the selection keeps
    all of x (`full`, a copy) and its mask; arithmetic with a number maps `full` (torch's in-place dtype rule for
    `-=`); `setitem` with the same mask writes it back. Any other use (its shape, a reduction, another op, another
    tensor operand) raises the IndexError that the indexing itself used to raise, naming av.where."""

    __array_priority__ = 1000  # numpy operands defer to the reflected operators below

    def __init__(self, full: Tensor, mask: Tensor, err: Exception):
        object.__setattr__(self, "_full", full)
        object.__setattr__(self, "_mask", mask)
        object.__setattr__(self, "_err", err)

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise self._err

    def __getattr__(self, name: str) -> Any:
        raise self._err

    def __setattr__(self, name: str, value: Any) -> None:
        raise self._err

    __array__ = __len__ = __iter__ = __bool__ = __index__ = __float__ = __int__ = __getitem__ = _refuse
    __setitem__ = __matmul__ = __rmatmul__ = __pow__ = __rpow__ = __eq__ = __ne__ = __lt__ = __le__ = _refuse
    __gt__ = __ge__ = __mod__ = __floordiv__ = __abs__ = _refuse
    __hash__ = None  # type: ignore[assignment]

    def _map(self, fn: Any, other: Any, inplace: str | None = None) -> MaskedSelection:
        if not isinstance(other, (bool, int, float, np.integer, np.floating)):  # a tensor's shape would have to match
            raise self._err
        full = Tensor.__dict__[inplace](self._full, other) if inplace else fn(self._full, other)
        return MaskedSelection(full, self._mask, self._err)

    def __add__(self, o: Any) -> MaskedSelection:
        return self._map(lambda a, b: a + b, o)

    def __radd__(self, o: Any) -> MaskedSelection:
        return self._map(lambda a, b: b + a, o)

    def __sub__(self, o: Any) -> MaskedSelection:
        return self._map(lambda a, b: a - b, o)

    def __rsub__(self, o: Any) -> MaskedSelection:
        return self._map(lambda a, b: b - a, o)

    def __mul__(self, o: Any) -> MaskedSelection:
        return self._map(lambda a, b: a * b, o)

    def __rmul__(self, o: Any) -> MaskedSelection:
        return self._map(lambda a, b: b * a, o)

    def __truediv__(self, o: Any) -> MaskedSelection:
        return self._map(lambda a, b: a / b, o)

    def __rtruediv__(self, o: Any) -> MaskedSelection:
        return self._map(lambda a, b: b / a, o)

    def __neg__(self) -> MaskedSelection:
        return MaskedSelection(-self._full, self._mask, self._err)

    def __iadd__(self, o: Any) -> MaskedSelection:
        return self._map(None, o, "__iadd__")

    def __isub__(self, o: Any) -> MaskedSelection:
        return self._map(None, o, "__isub__")

    def __imul__(self, o: Any) -> MaskedSelection:
        return self._map(None, o, "__imul__")

    def __itruediv__(self, o: Any) -> MaskedSelection:
        return self._map(None, o, "__itruediv__")


def _leaf_input(t: Tensor) -> Tensor | None:
    """`t` as the active trace's input when it is one (a tensor of a model being traced), so indexing
    with it reads the input, not a copy of its values baked into the graph as a constant."""
    from ..trace import current_trace
    tr = current_trace()
    v = tr.leaves.get(id(t)) if tr is not None else None
    return Tensor._traced(v, tr) if v is not None and v.op is None else None


def _positions(mask: Tensor, count: int) -> Tensor:
    """Where a traced 1-d mask known to hold `count` trues holds them, as ops of its graph (each true
    element's running count is its slot), so no index array is baked into the graph: it stays
    cached, as the mask's own ops are."""
    from .sorting import scatter  # (sorting builds on this module)
    slot = where(mask, add(cumsum(cast(mask, dt.int64), 0), -1), count)  # falses go to a spare slot
    return slice_(scatter(full((count + 1,), 0, dt.int64), 0, slot, iota((mask.shape[0],))), [0], [count])


def setitem(x: Any, index: Any, value: Any) -> Tensor:
    """`x` with `x[index] = value` applied, as a new Tensor (torch's in-place results, computed
    functionally): the value is broadcast to the indexed region, cast to x's dtype, spread to its
    positions with `concat` (strides) and `pad` (offsets), and selected with `where`."""
    x = _tensor(x)
    if not isinstance(index, tuple):
        index = (index,)
    if isinstance(value, MaskedSelection):  # `x[mask] -= 1` of a traced mask: the selection's values where it holds
        if len(index) != 1 or index[0] is not value._mask or x.shape != value._full.shape:
            raise value._err
        sel = broadcast_to(reshape(value._mask, value._mask.shape + (1,) * (x.ndim - value._mask.ndim)), x.shape)
        return where(sel, cast(value._full, x.dtype), x)
    if len(index) == 1 and _is_byte(index[0]) and not isinstance(_as_operand(value), Tensor):
        raise fail(RuntimeError("masked_fill_ only supports boolean masks, but got mask with dtype unsigned char"))
    index = _mask_positions(_byte_masks(index))
    if len(index) > 1 and _is_bool_mask(index[0]) and all(
            i is Ellipsis or (isinstance(i, slice) and i == slice(None)) for i in index[1:]):
        index = index[:1]  # x[mask, :] = v is x[mask] = v
    if len(index) == 1 and _is_bool_mask(index[0]):
        index_put_dtype(x, value, masked_fill=True)
        return _setitem_mask(x, _as_operand(index[0]), _as_operand(value))
    index = _expand(index, x.ndim)
    if builtins.sum(map(_is_bool_mask, index)) == 1 and all(
            (_is_bool_mask(i) and _mask_rank(i) > 0) or (isinstance(i, slice) and i == slice(None)) for i in index):
        index_put_dtype(x, value, masked_fill=True)
        return _setitem_inner_mask(x, index, value)
    if any(_is_array_index(i) and not _is_int_index(i) for i in index):
        index_put_dtype(x, value)
        return _setitem_arrays(x, index, value)
    specs, view, counts = [], [], []
    for i in index:
        if i is None:
            view.append(1)
            continue
        dim, size = len(specs), x.shape[len(specs)]
        if isinstance(i, slice):
            s, e, st = i.indices(size)
            if st < 1:
                raise fail(IndexError("setitem: negative slice steps are not supported"))
            n = len(range(s, builtins.max(e, s), st))
            specs.append((s, st, n)), view.append(n), counts.append(n)
        elif _is_int_index(i):
            j = int(i)
            if not -size <= j < size:
                raise fail(IndexError(f"index {j} is out of bounds for dimension {dim} with size {size}"))
            specs.append((j % size, 1, 1)), counts.append(1)
        else:
            raise fail(IndexError(f"setitem: unsupported index {i!r}"))
    v = _as_operand(value)
    v = full((), v, x.dtype) if not isinstance(v, Tensor) else cast(v, x.dtype)
    v = broadcast_to(reshape(v, _broadcastable(v.shape, tuple(view))), view)
    if 0 in counts:
        return x
    v = reshape(v, counts)
    kind = x.dtype if x.dtype is not dt.bool_ else dt.int32
    mask = full(counts, 1, kind)
    placed, where_ = _place(v, specs, x.shape), _place(mask, specs, x.shape)
    return where(ne(where_, 0), placed, x)


def index_put_dtype(x: Tensor, value: Any, masked_fill: bool = False) -> None:
    """torch's rule for `x[advanced index] = value` and index_put: a value tensor of x's dtype, where
    numpy casts in silence (an f64 value into an f32 tensor, floats into an int one). One element
    through a single boolean mask (`masked_fill`) is torch's masked_fill path, which casts; a basic
    index (`x[0] = v`) is a copy_, which casts too; numbers and numpy values are cast as ever."""
    if isinstance(value, Tensor) and value.dtype != x.dtype and not (masked_fill and value.numel() == 1):
        raise fail(TypeError(f"Index put requires the source and destination dtypes match, got {x.dtype.name} for "
                             f"the destination and {value.dtype.name} for the source; cast the value with .to(...)"))


def _setitem_mask(x: Tensor, mask: Tensor, v: Any) -> Tensor:
    """`x[mask] = v`, the mask over x's leading dims: `v` broadcasts to (number of trues,) + the other
    dims, as torch's (DQN's `next_state_values[non_final_mask] = target_net(states).max(1).values`).
    One row per true element is spread to them in row-major order by each one's running count, a
    gather, so the mask may be traced and `v` gets its gradient."""
    lead, rest = tuple(mask.shape), x.shape[mask.ndim:]
    if lead != x.shape[:mask.ndim]:
        raise fail(IndexError(f"The shape of the mask {list(lead)} at index 0 does not match the shape of the "
                              f"indexed tensor {list(x.shape)} at index 0"))
    sel = broadcast_to(reshape(mask, lead + (1,) * len(rest)), x.shape)
    if not isinstance(v, Tensor):
        return where(sel, v, x)
    v = cast(v, x.dtype)
    while v.ndim > len(rest) and v.shape[0] == 1:
        v = reshape(v, v.shape[1:])
    if v.ndim > len(rest) + 1:
        raise fail(RuntimeError(f"shape mismatch: value tensor of shape {list(v.shape)} cannot be broadcast to "
                                f"indexing result of shape [?, {', '.join(map(str, rest))}]"))
    if v.ndim <= len(rest):  # one value for every selected element
        return where(sel, broadcast_to(reshape(v, _broadcastable(v.shape, rest)), x.shape), x)
    k = v.shape[0]
    known = _concrete_array(mask)
    if known is not None and int(known.sum()) != k:
        raise fail(RuntimeError(f"shape mismatch: value tensor of shape {list(v.shape)} cannot be broadcast to "
                                f"indexing result of shape {[int(known.sum()), *rest]}"))
    if k == 0:  # no rows for no true elements: nothing is written, as torch's (airbench's crop of an unused offset)
        return x
    v = broadcast_to(reshape(v, (k,) + _broadcastable(v.shape[1:], rest)), (k,) + rest)
    flat = reshape(mask, (math.prod(lead),))
    slot = add(cumsum(cast(flat, dt.int64), 0), -1)
    slot = where(flat, where(lt(slot, k), slot, k - 1), 0)  # (unselected rows read row 0, then drop it)
    return where(sel, reshape(bind("take", v, slot, axis=0), x.shape), x)


def _setitem_inner_mask(x: Tensor, index: tuple, value: Any) -> Tensor:
    """`x[:, mask] = v` (full slices around one boolean mask over dims p..p+r-1, as Neel Nanda's SAE re_init writes
    `W_enc.data[:, dead] = new[:, dead]`): the masked dims moved to the front, `x[mask] = v` there, and moved back.
    The value broadcasts to x.shape[:p] + (number of trues,) + x.shape[p + r:], as torch's."""
    from .core import permute
    p = next(k for k, i in enumerate(index) if _is_bool_mask(i))
    mask = _as_operand(index[p])
    r = mask.ndim
    perm = list(range(p, p + r)) + list(range(p)) + list(range(p + r, x.ndim))
    v = _as_operand(value)
    if isinstance(v, Tensor):
        n = p + 1 + x.ndim - p - r
        if v.ndim > n:
            raise fail(RuntimeError(f"shape mismatch: value tensor of shape {list(v.shape)} cannot be broadcast to "
                                    f"the indexing result of rank {n}"))
        v = reshape(v, (1,) * (n - v.ndim) + tuple(v.shape))
        v = permute(v, [p] + list(range(p)) + list(range(p + 1, n)))
    out = _setitem_mask(permute(x, perm), mask, v)
    return permute(out, [int(k) for k in np.argsort(perm)])


def _setitem_arrays(x: Tensor, index: tuple, value: Any) -> Tensor:
    """`x[i] = value`, `x[i, j] = value`, `x[:, i, j] = value`: integer-array indices (ints beside them
    count as 0-d arrays) with full slices around them, as one `index_put` on x with the indexed dims
    moved to the front. The value broadcasts to torch's indexing result: the arrays' broadcast shape
    where the indexed dims are when they are adjacent, first when they are not (numpy's rule). Repeated
    positions keep the last value, as torch's CPU kernels do."""
    from .scattering import _broadcast_value, index_put  # (scattering builds on this module through sorting)
    adv = [k for k, i in enumerate(index) if not isinstance(i, slice)]
    if any(i is None or _is_bool_mask(i) or (isinstance(i, slice) and i.indices(x.shape[k]) != (0, x.shape[k], 1))
           for k, i in enumerate(index)):
        raise fail(IndexError("setitem: integer-array indices are supported with full slices beside them "
                              "(x[i] = v, x[i, j] = v, x[:, i] = v); for x[1:, i] = v use x.index_copy or "
                              "av.where with a mask"))
    arrays = [Tensor(np.int64(int(index[k]))) if _is_int_index(index[k]) else
              (index[k] if isinstance(index[k], Tensor) else _literal_index(Tensor(np.asarray(index[k])), index[k]))
              for k in adv]
    bshape = tuple(np.broadcast_shapes(*[a.shape for a in arrays]))
    v = _as_operand(value)
    v = full((), v, x.dtype) if not isinstance(v, Tensor) else cast(v, x.dtype)
    if adv == list(range(len(adv))):
        return index_put(x, arrays, _broadcast_value("setitem", v, bshape + x.shape[len(adv):]))
    rest = [k for k in range(x.ndim) if k not in adv]
    perm = adv + rest
    a0, nb = adv[0], len(bshape)
    if adv == list(range(a0, a0 + len(adv))):  # adjacent: the result has bshape in their place
        v = _broadcast_value("setitem", v, x.shape[:a0] + bshape + x.shape[adv[-1] + 1:])
        v = bind("transpose", v, perm=list(range(a0, a0 + nb)) + list(range(a0)) + list(range(a0 + nb, v.ndim)))
    else:
        v = _broadcast_value("setitem", v, bshape + tuple(x.shape[k] for k in rest))
    out = index_put(bind("transpose", x, perm=perm), arrays, v)
    return bind("transpose", out, perm=[perm.index(k) for k in range(x.ndim)])


def _broadcastable(src: tuple, dst: tuple) -> tuple:
    """`src` without the leading 1s torch ignores, after checking that it broadcasts to `dst`."""
    while len(src) > len(dst) and src[0] == 1:
        src = src[1:]
    try:
        ok = len(src) <= len(dst) and np.broadcast_shapes(src, dst) == dst
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"setitem: cannot assign a value of shape {src} to a region of shape {dst}")
    return src


def _place(v: Tensor, specs: list[tuple[int, int, int]], shape: tuple[int, ...]) -> Tensor:
    """A tensor of `shape` holding `v[i]` at `start + i * step` along each dim and zeros elsewhere."""
    for d, (start, step, n) in enumerate(specs):
        if step > 1:
            v = expand_dims(v, d + 1)
            gap = full(v.shape[:d + 1] + (step - 1,) + v.shape[d + 2:], 0, v.dtype)
            v = concat([v, gap], d + 1)
            v = reshape(v, v.shape[:d] + (n * step,) + v.shape[d + 2:])
            extent = builtins.min(n * step, shape[d] - start)
            if extent < n * step:
                lim = list(v.shape)
                lim[d] = extent
                v = slice_(v, [0] * v.ndim, lim)
        low = [0] * v.ndim
        high = [0] * v.ndim
        low[d], high[d] = start, shape[d] - start - v.shape[d]
        v = pad(v, [(lo, hi) for lo, hi in zip(low, high)])
    return v

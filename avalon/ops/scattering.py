"""torch's scatter-style reductions, the message passing of graph networks: `index_add`,
`scatter_reduce`, `index_reduce`, `index_put`, `index_copy`, `index_fill`, `bincount`.

Float sums (`index_add`, `scatter_reduce` 'sum'/'mean', `scatter_add`, `index_put(accumulate=True)`)
are the `index_add` primitive: one add per source element into the flattened result (atomics on
Triton), its gradient a gather, so a graph layer's message passing scales with its edges. Float
'amax'/'amin' (a graph attention's per-node softmax shift, max aggregation) are the `index_max`
primitive the same way (atomic maxima), the input's elements joining as candidates, its gradient
torch's even split among ties (take and index_add). The rest (integers, 'prod')
is built from the (index == position) masks of `sorting.gather`/`scatter`: an index of shape I
into a dim of size n gives an I + (n,) boolean mask, each target position reduces the source values
the mask selects (the `mul` tree of `prod`, `max`), and `where` keeps the input where no index
points. That is O(index elements x n) work, fused into one reduction on Triton; `where` never
multiplies an unselected value, so inf and nan stay where they are. Eagerly and on the numpy
backend the mask is materialized: right for small and medium graphs.

Gradients come from the primitives' own rules and are torch's: `amax`/`amin` reduce the input and
the sources as one maximum, whose rule splits the gradient evenly among all tied maxima, exactly
torch's rule; with `include_self=False` torch still counts a tying input in the split (and gives it
no gradient), so the input joins as a detached candidate only when it ties.
`scatter`/`index_copy`/`index_put` with repeated indices keep the last value, as torch's CPU kernels
do (torch calls the result undefined), through `sorting.scatter_last` (an `index_max` of the
positions, then a `take`), and every repeated entry gets the element's gradient, as in torch.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..ir import ShapeError
from ..ir import dtypes as dt
from ..tensor import Tensor
from .core import (
    ArgumentError,
    IndexRangeError,
    _as_operand,
    _tensor,
    add,
    amax,
    bind,
    broadcast_to,
    cast,
    concat,
    div,
    eq,
    expand_dims,
    fail,
    floor_divide,
    full,
    gt,
    logical_and,
    lt,
    maximum,
    mul,
    neg,
    pad,
    reshape,
    stop_gradient,
    sum,
    unsupported,
    where,
)
from .creation import in_range, iota
from .reductions import prod
from .shaping import _dim, movedim
from .sorting import _crop, _flat_targets, _hits, _index, _same_dtype, scatter, scatter_sum

REDUCTIONS = ("sum", "prod", "mean", "amax", "amin")


# -- the shared core: reduce the selected sources into each position --------------------------------

def _merge(x: Tensor, d: int, out: Tensor, ishape: tuple[int, ...]) -> Tensor:
    """`x` with `out` (the index's dims without d, then n) written over the region the index covers;
    positions beyond the index's extent in the other dims keep x."""
    y = movedim(out, -1, d)
    if y.shape == x.shape:
        return y
    placed = pad(y, [(0, t - s) for s, t in zip(y.shape, x.shape)])
    inside = None
    for k, s in enumerate(ishape):
        if k != d and s < x.shape[k]:
            c = lt(iota(x.shape, k), s)
            inside = c if inside is None else logical_and(inside, c)
    return where(inside, placed, x)


def _fill_low(d: dt.DType) -> Any:
    """The value no element is below: -inf, or the dtype's smallest integer."""
    return -math.inf if d.is_float else int(np.iinfo(d.np).min)


def _reduce_into(x: Tensor, d: int, ishape: tuple[int, ...], hit: Tensor, s: Tensor, reduce: str,
                 include_self: bool) -> Tensor:
    """The scatter reduction: `hit` (ishape + (n,), broadcastable) says which source element of `s`
    (ishape) goes to which position of x's dim d."""
    work = dt.int64 if x.dtype is dt.bool_ else x.dtype
    xw, sw = cast(x, work), cast(s, work)
    full_hit = broadcast_to(hit, ishape + (x.shape[d],))
    xr = movedim(_crop(xw, ishape, d), d, -1)  # the input at the targets: ishape without d, then n
    count = sum(full_hit, d)  # i64: how many sources each target receives
    covered = gt(count, 0)
    sv = expand_dims(sw, -1)
    if reduce in ("sum", "mean"):
        tot = sum(where(full_hit, sv, 0), d)
        if include_self:
            tot = add(xr, tot)
        if reduce == "sum":
            out = tot if include_self else where(covered, tot, xr)
        else:
            c = cast(add(count, 1) if include_self else maximum(count, 1), work)
            q = div(tot, c) if work.is_float else floor_divide(tot, c)  # torch floors integer means
            out = where(covered, q, xr)
    elif reduce == "prod":
        p = cast(prod(where(full_hit, sv, 1), d), work)
        out = mul(xr, p) if include_self else where(covered, p, xr)
    else:
        flip = reduce == "amin"  # the smallest is the negated largest of the negations
        xs, ss = (neg(xr), neg(sv)) if flip else (xr, sv)
        low = _fill_low(work)
        cand = where(full_hit, ss, low)
        if include_self:
            slot = xs
        else:  # torch splits among a tying input too, which gets no gradient itself
            top = stop_gradient(amax(cand, d))
            slot = stop_gradient(where(eq(xs, top), xs, low))
        m = amax(concat([expand_dims(slot, d), cand], d), d)
        m = neg(m) if flip else m
        out = m if include_self else where(covered, m, xr)
    return cast(_merge(xw, d, out, ishape), x.dtype)


def scatter_reduce(input: Any, dim: int, index: Any, src: Any, reduce: str, *, include_self: bool = True,
                   out: Any = None) -> Tensor:
    """torch.scatter_reduce: each src[..., j, ...] reduced into position index[..., j, ...] of `dim`
    with 'sum', 'prod', 'mean', 'amax' or 'amin', the input's own value taking part unless
    `include_self=False` (positions no index names keep the input either way). Integer means floor,
    as in torch; gradients are torch's (ties of amax/amin share the gradient evenly)."""
    unsupported("scatter_reduce", out=out)
    reduce = {"max": "amax", "min": "amin"}.get(reduce, reduce)  # torch's kernel takes these spellings too
    if reduce not in REDUCTIONS:
        raise fail(ArgumentError(f"scatter_reduce: reduce argument must be either sum, prod, mean, amax or amin, got "
                                 f"{reduce}"))
    x = _tensor(input)
    if x.ndim == 0:
        one = scatter_reduce(reshape(x, (1,)), 0, reshape(_tensor(index), (-1,)), reshape(_tensor(src), (-1,)),
                             reduce, include_self=include_self)
        return reshape(one, ())
    d = _dim("scatter_reduce", x, dim)
    idx = _index("scatter_reduce", x, d, index, x.shape[d])
    _same_dtype("scatter_reduce", x, src)
    s = _tensor(src)
    if s.ndim != x.ndim or any(a > b for a, b in zip(idx.shape, s.shape)):
        raise fail(ShapeError(f"scatter_reduce: index {idx.shape} must have the rank of src {s.shape} and be no "
                              "larger in any dim"))
    if idx.numel() == 0:
        return x
    if reduce in ("sum", "mean") and x.dtype.is_float:
        return _sum_into(x, d, idx, cast(_crop(s, idx.shape), x.dtype), reduce == "mean", bool(include_self))
    if reduce in ("amax", "amin") and x.dtype.is_float:
        return _max_into(x, d, idx, cast(_crop(s, idx.shape), x.dtype), reduce == "amin", bool(include_self))
    return _reduce_into(x, d, idx.shape, _hits(idx, x.shape[d]), _crop(s, idx.shape), reduce, bool(include_self))


def _sum_into(x: Tensor, d: int, idx: Tensor, s: Tensor, mean: bool, include_self: bool) -> Tensor:
    """Float 'sum' and 'mean' through the `index_add` primitive (one add per source element), the
    count of sources per position another index_add of ones (float32, or float64 for f64)."""
    tot = scatter_sum(x.shape, d, idx, s)
    if include_self and not mean:
        return add(x, tot)
    cdt = dt.float64 if x.dtype is dt.float64 else dt.float32
    count = scatter_sum(x.shape, d, idx, full(idx.shape, 1, cdt))
    covered = gt(count, 0)
    if include_self:
        tot = add(x, tot)
    if mean:
        tot = div(tot, cast(add(count, 1) if include_self else maximum(count, 1), x.dtype))  # no 0/0, even unused
    return where(covered, tot, x)


def _max_into(x: Tensor, d: int, idx: Tensor, s: Tensor, flip: bool, include_self: bool) -> Tensor:
    """Float 'amax' ('amin': of the negations) through the `index_max` primitive over the flattened
    input, whose gradient splits evenly among tied candidates as torch's: the input's elements are
    candidates too (one row each), and with include_self=False a tying input still counts in the
    split but gets nothing (a detached candidate), as the mask form below does."""
    n = x.numel()
    xv, sv = reshape(x, (-1,)), reshape(s, (-1,))
    xv, sv = (neg(xv), neg(sv)) if flip else (xv, sv)
    flat = _flat_targets(x.shape, d, idx)
    own = iota((n,), 0, dt.int64)
    if include_self:
        cand = xv
    else:
        top = stop_gradient(bind("index_max", sv, flat, size=n))
        cand = stop_gradient(where(eq(xv, top), xv, -math.inf))
    m = bind("index_max", concat([cand, sv]), concat([own, flat]), size=n)
    if not include_self:
        covered = gt(bind("index_add", full(sv.shape, 1, dt.float32), flat, size=n), 0)
        m = where(covered, m, xv)
    return reshape(neg(m) if flip else m, x.shape)


# -- one index vector along one dim ------------------------------------------------------------------

def _vector(fn: str, index: Any, size: int, dim: int, *, wrap: bool) -> Tensor:
    """A 0-d or 1-d integer index as a 1-d i64 tensor. Known values are checked against [0, size)
    (torch's index_add/index_copy) or, with `wrap`, [-size, size) and wrapped (index_fill,
    index_put); traced negative values wrap through a `where`."""
    idx = _as_operand(index)
    idx = idx if isinstance(idx, Tensor) else Tensor(np.asarray(idx))
    if idx.dtype.is_float or idx.dtype is dt.bool_:
        raise fail(TypeError(f"{fn}: argument 'index' must be an integer tensor, got {idx.dtype.name}"))
    if idx.ndim > 1:
        raise fail(IndexError(f"{fn}: Index is supposed to be a vector, got shape {idx.shape}"))
    idx = reshape(cast(idx, dt.int64), (-1,))
    if not idx.is_traced:
        v = idx.numpy()
        lo = -size if wrap else 0
        bad = (v < lo) | (v >= size)
        if bad.any():
            raise fail(IndexRangeError(f"{fn}: index {int(v[bad][0])} is out of bounds for dimension {dim} with size "
                                  f"{size}"))
        return Tensor(v % max(size, 1)) if wrap and (v < 0).any() else idx
    return in_range(where(lt(idx, 0), add(idx, size), idx) if wrap else idx, size)


def _along(fn: str, x: Tensor, dim: int, index: Any, source: Any) -> tuple[int, Tensor, Tensor]:
    """(dim, index vector, source) for index_add/index_copy, the source's shape checked as torch checks
    it: the input's, with index.numel() entries along dim."""
    d = _dim(fn, x, dim)
    idx = _vector(fn, index, x.shape[d], d, wrap=False)
    if isinstance(source, Tensor) and source.dtype is not x.dtype:  # (torch: an error, never a silent cast)
        raise fail(ArgumentError(f"{fn}(): self ({x.dtype.name}) and source ({source.dtype.name}) must have the same "
                                 "scalar type"))
    src = _tensor(source)
    want = x.shape[:d] + (idx.shape[0],) + x.shape[d + 1:]
    if src.shape != want:
        raise fail(ShapeError(f"{fn}: source {src.shape} must have the input's shape {x.shape} with "
                              f"{idx.shape[0]} (the number of indices) in dim {d}"))
    return d, idx, src


def _spread_index(idx: Tensor, d: int, shape: tuple[int, ...]) -> Tensor:
    """A 1-d index along dim d, repeated over the other dims of `shape`."""
    return broadcast_to(reshape(idx, [idx.shape[0] if k == d else 1 for k in range(len(shape))]), shape)


def index_add(input: Any, dim: int, index: Any, source: Any, *, alpha: Any = 1, out: Any = None) -> Tensor:
    """torch.index_add: `alpha * source[..., i, ...]` added into position index[i] of `dim`; repeated
    indices accumulate (the sum a graph network's nodes gather from their edges)."""
    unsupported("index_add", out=out)
    x = _tensor(input)
    if x.ndim == 0:
        return reshape(index_add(reshape(x, (1,)), 0, index, reshape(_tensor(source), (-1,)), alpha=alpha), ())
    d, idx, src = _along("index_add", x, dim, index, source)
    if idx.shape[0] == 0:
        return x
    if not (isinstance(alpha, (int, np.integer)) and alpha == 1):
        src = mul(src, alpha)
    if x.dtype.is_float and src.dtype is x.dtype:  # the `index_add` primitive: one add per source row
        rows = bind("index_add", movedim(src, d, 0), cast(idx, dt.int64), size=x.shape[d])
        return add(x, movedim(rows, 0, d))
    hit = reshape(_hits(idx, x.shape[d]), [idx.shape[0] if k == d else 1 for k in range(x.ndim)] + [x.shape[d]])
    return _reduce_into(x, d, src.shape, hit, src, "sum", True)


def index_reduce(input: Any, dim: int, index: Any, source: Any, reduce: str, *, include_self: bool = True,
                 out: Any = None) -> Tensor:
    """torch.index_reduce: the slices source[..., i, ...] reduced into position index[i] of `dim` with
    'prod', 'mean', 'amax' or 'amin' (scatter_reduce with the index spread over the other dims, so
    the same primitives, gradients and integer rules)."""
    unsupported("index_reduce", out=out)
    if reduce not in ("prod", "mean", "amax", "amin"):
        raise fail(ArgumentError(f"index_reduce(): Expected reduce to be one of prod, mean, amax or amin but got "
                                 f"{reduce}."))
    x = _tensor(input)
    if x.ndim == 0:
        return reshape(index_reduce(reshape(x, (1,)), 0, index, reshape(_tensor(source), (-1,)), reduce,
                                    include_self=include_self), ())
    d, idx, src = _along("index_reduce", x, dim, index, source)
    if idx.shape[0] == 0:
        return x
    return scatter_reduce(x, d, _spread_index(idx, d, src.shape), src, reduce, include_self=include_self)


def index_copy(input: Any, dim: int, index: Any, source: Any, *, out: Any = None) -> Tensor:
    """torch.index_copy: the slices source[..., i, ...] written at position index[i] of `dim` (a
    repeated index keeps the last, as on torch's CPU)."""
    unsupported("index_copy", out=out)
    x = _tensor(input)
    if x.ndim == 0:
        return reshape(index_copy(reshape(x, (1,)), 0, index, reshape(_tensor(source), (-1,))), ())
    d, idx, src = _along("index_copy", x, dim, index, source)
    if idx.shape[0] == 0:
        return x
    return scatter(x, d, _spread_index(idx, d, src.shape), src)


def index_fill(input: Any, dim: int, index: Any, value: Any) -> Tensor:
    """torch.index_fill: every slice at a position of `index` along `dim` set to `value` (a number or
    a 0-d tensor, which then gets the gradient of the filled elements); negative indices count from
    the end."""
    x = _tensor(input)
    d = _dim("index_fill", x, dim)
    n = x.shape[d] if x.ndim else 1
    idx = _vector("index_fill", index, n, d, wrap=True)
    v = _as_operand(value)
    if isinstance(v, Tensor):
        if v.ndim != 0:
            raise fail(ShapeError(f"index_fill: only supports a 0-dimensional value tensor, but got a value with "
                                  f"{v.ndim} dimension(s)"))
        v = cast(v, x.dtype)
    else:  # a number is stored as the input's dtype (2.5 into int32 is 2, 300 into int8 an error), as torch
        v = full((), v, x.dtype)
    if idx.shape[0] == 0:
        return x
    named = sum(_hits(idx, n), 0)  # how often each position is named
    if x.ndim == 0:
        return where(gt(reshape(named, ()), 0), v, x)
    mask = reshape(gt(named, 0), [n if k == d else 1 for k in range(x.ndim)])
    return where(mask, v, x)


# -- index_put: several index tensors, as x[i, j] = v ------------------------------------------------

def _is_mask(i: Any) -> bool:
    return (i.dtype is dt.bool_) if isinstance(i, Tensor) else np.asarray(i).dtype == np.bool_


def _index_list(x: Tensor, indices: Any) -> list[Tensor]:
    """The index tensors, a known boolean mask replaced by the integer indices of its true elements."""
    if isinstance(indices, (Tensor, np.ndarray)):
        indices = (indices,)
    out: list[Tensor] = []
    for i in indices:
        if i is None:
            raise fail(IndexError("index_put: None is not supported among the indices"))
        if _is_mask(i):
            if isinstance(i, Tensor) and i.is_traced:
                raise fail(IndexError("index_put: a boolean mask known only in a trace must be the only index (the "
                                      "positions it selects decide shapes otherwise)"))
            m = i.numpy() if isinstance(i, Tensor) else np.asarray(i)
            at = len(out)
            if m.shape != x.shape[at:at + m.ndim]:
                raise fail(IndexError(f"index_put: the shape of the mask {m.shape} does not match the shape of the "
                                      f"indexed tensor {x.shape[at:at + m.ndim]} at dimension {at}"))
            out += [Tensor(a.astype(np.int64)) for a in np.nonzero(m)]
        else:
            t = _as_operand(i)
            out.append(t if isinstance(t, Tensor) else Tensor(np.asarray(t)))
    return out


def _broadcast_value(fn: str, v: Tensor, shape: tuple[int, ...]) -> Tensor:
    """`v` broadcast to `shape` as torch broadcasts an assigned value (leading 1s dropped)."""
    vs = v.shape
    while len(vs) > len(shape) and vs[0] == 1:
        vs = vs[1:]
    try:
        ok = len(vs) <= len(shape) and np.broadcast_shapes(vs, shape) == shape
    except ValueError:
        ok = False
    if not ok:
        raise fail(ShapeError(f"{fn}: shape mismatch: value tensor of shape {v.shape} cannot be broadcast to "
                              f"indexing result of shape {shape}"))
    return broadcast_to(reshape(v, vs), shape)


def index_put(input: Any, indices: Any, values: Any, accumulate: bool = False) -> Tensor:
    """torch.index_put: `x[indices] = values` (the indices one integer tensor per leading dim,
    broadcast together, negatives counting from the end; or a boolean mask), with `accumulate=True`
    `x[indices] += values` where repeated indices all add (plain `+=` would keep one). A mask
    known only in a trace works when values broadcast to one selected row."""
    x = _tensor(input)
    seq = (indices,) if isinstance(indices, (Tensor, np.ndarray)) else tuple(indices)
    from .indexing import index_put_dtype  # (indexing builds on this module through sorting)
    index_put_dtype(x, values, masked_fill=not accumulate and len(seq) == 1
                    and getattr(_as_operand(seq[0]), "dtype", None) is dt.bool_)
    v = _as_operand(values)
    v = cast(v, x.dtype) if isinstance(v, Tensor) else full((), v, x.dtype)
    if len(seq) == 1 and isinstance(seq[0], Tensor) and seq[0].is_traced and seq[0].dtype is dt.bool_:
        m = seq[0]
        if m.shape != x.shape[:m.ndim]:
            raise fail(IndexError(f"index_put: the shape of the mask {m.shape} does not match the shape of the "
                                  f"indexed tensor {x.shape[:m.ndim]}"))
        row = _broadcast_value("index_put", v, x.shape[m.ndim:])
        vfull = broadcast_to(reshape(row, (1,) * m.ndim + row.shape), x.shape)
        me = reshape(m, m.shape + (1,) * (x.ndim - m.ndim))
        return where(me, add(x, vfull) if accumulate else vfull, x)
    idx = _index_list(x, seq)
    k = len(idx)
    if k > x.ndim:
        raise fail(IndexError(f"index_put: too many indices for tensor of dimension {x.ndim} (got {k})"))
    if k == 0:
        return add(x, _broadcast_value("index_put", v, x.shape)) if accumulate else \
            _broadcast_value("index_put", v, x.shape)
    try:
        bshape = tuple(np.broadcast_shapes(*[i.shape for i in idx]))
    except ValueError:
        raise fail(IndexError(f"index_put: shape mismatch: indexing tensors could not be broadcast together with "
                              f"shapes {', '.join(str(list(i.shape)) for i in idx)}")) from None
    rest = x.shape[k:]
    lin = None
    for j, i in enumerate(idx):
        stride = math.prod(x.shape[j + 1:k])
        flat = reshape(_vector("index_put", reshape(i, (-1,)), x.shape[j], j, wrap=True), i.shape)
        term = broadcast_to(flat, bshape)
        term = mul(term, stride) if stride != 1 else term
        lin = term if lin is None else add(lin, term)
    vals = _broadcast_value("index_put", v, bshape + rest)
    m = math.prod(bshape)
    if m == 0:
        return x
    xf = reshape(x, (math.prod(x.shape[:k]),) + rest)
    lf, vf = reshape(lin, (m,)), reshape(vals, (m,) + rest)
    out = index_add(xf, 0, lf, vf) if accumulate else index_copy(xf, 0, lf, vf)
    return reshape(out, x.shape)


# -- counting ---------------------------------------------------------------------------------------

def bincount(input: Any, weights: Any = None, minlength: int = 0) -> Tensor:
    """torch.bincount: how often each value 0, 1, ... occurs in a 1-d non-negative integer tensor
    (with `weights`, their sum per value: f32 weights give f32, others f64, as in torch). The
    result's length, max(input) + 1 or `minlength` if larger, must be static: eagerly (or for a traced
    tensor whose values the trace knows: built from literals or shapes) it is read from the values;
    any other traced input needs `minlength`, which is then the length: a value at or past it (where
    torch would grow the result) or a negative one (torch's error) raises when the graph runs."""
    x = _tensor(input)
    if x.ndim != 1 or x.dtype.is_float or x.dtype is dt.bool_:
        raise fail(RuntimeError(f"bincount only supports 1-d non-negative integral inputs, got a {x.ndim}-d "
                                f"{x.dtype.name} tensor"))
    minlength = int(minlength)
    if minlength < 0:
        raise fail(RuntimeError(f"bincount: minlength should be >= 0, got {minlength}"))
    known = None
    if x.is_traced:
        from ..tensor import TracerError
        try:
            known = x._concrete("bincount's input")
        except TracerError:
            pass
    if x.is_traced and known is None:
        if minlength == 0:
            raise fail(ValueError("bincount of a traced tensor: the number of bins, max(input) + 1, would depend "
                                  "on the values, but a compiled function's shapes are static; pass minlength=K "
                                  "(the result then has exactly K bins, and values >= K are not counted)"))
        n = minlength
        from .core import check_values, ge
        x = check_values(x, ge(x, 0), "bincount only supports 1-d non-negative integral inputs.")
        x = check_values(x, lt(x, n), f"bincount of a traced tensor with minlength={n}: a value is >= {n}, where "
                         f"torch's result would grow past the {n} bins a compiled function's static shape has")
    else:
        vals = np.asarray(known) if known is not None else x.numpy()
        if vals.size and vals.min() < 0:
            raise fail(RuntimeError("bincount only supports 1-d non-negative integral inputs."))
        n = max(int(vals.max()) + 1 if vals.size else 0, minlength)
    hit = _hits(x, n)  # (len, n)
    if weights is None:
        return sum(hit, 0) if x.shape[0] else full((n,), 0, dt.int64)
    w = _tensor(weights)
    if w.shape != x.shape:
        raise fail(ShapeError(f"bincount: weights {w.shape} should have the same length as input {x.shape}"))
    w = cast(w, dt.float32 if w.dtype is dt.float32 else dt.float64)
    if not x.shape[0]:
        return full((n,), 0, w.dtype)
    return sum(where(hit, expand_dims(w, -1), 0.0), 0)


__all__ = ["bincount", "index_add", "index_copy", "index_fill", "index_put", "index_reduce", "scatter_reduce"]

"""Sorting and data-dependent indexing with torch's names: `sort`, `argsort`, `topk`, `gather`,
`scatter`, `scatter_add`, `take_along_dim`, `multinomial`, `randperm`.

Sorting is two primitives, `sort` (the values) and `argsort` (the i64 indices), both stable along one
axis with attribute `descending`, nan the largest value (torch.sort with stable=True). Two ops rather
than one op with two results, because every rule table (reference, vjp, lowerings, exporters)
computes one result per op; and rather than `argsort` plus a `take` of the values, because the
values need a gradient rule of their own: `take`'s is a scatter-add written as a one-hot matmul,
O(n^2) in the flattened size, where `sort`'s gathers the cotangent at the inverse permutation (an
argsort of the indices): O(n log n). `torch.sort` records both ops on the same operand; whichever
the program does not use is dropped (DCE), and a gradient's argsort of the operand is the forward's
(CSE). On Triton each is one kernel: a block of rows per program, `tl.sort` of packed int64 keys
(the value's order-preserving bits high, the position low, so ties stay in order and the index
comes out of the same sort); see avalon/codegen/triton/sort.py.

That kernel holds an axis of up to `SORT_BLOCK` elements (after padding to a power of two). A
traced sort along a longer axis is the bitonic network below instead (`bitonic_sort`), which every
backend runs and differentiates: log2(N) * (log2(N) + 1) / 2 compare-exchange stages over the axis
padded to a power of two N, each a reshape, slices, comparisons and `where`s, O(n log^2 n) work,
its gradient the `where`s'. Every element carries a unique integer key (class * N + position) that
breaks ties, so the order is total: stable, nan after every number (first when descending, as in
torch) and padding after everything. Outside a trace the primitives run on the reference (numpy's
stable sort) at any length. The linalg (MLIR/IREE) lowering of the primitives is this network too
(upstream MLIR has no sort).

`gather` is one `take` on the flattened tensor (offsets from the index and iotas), float
`scatter_add` one `index_add` into the flattened result (the gradient of one is the other), and
the last-wins `scatter` an `index_max` of the entries' positions and a `take` (`scatter_last`):
work of one read or add per index element. Integer `scatter_add` selects along the indexed dim
with an (index == position) mask and a sum: O(index elements x dim size) work, one fused
reduction on Triton.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from .. import random as _rng
from ..ir import ShapeError
from ..ir import dtypes as dt
from ..tensor import Tensor
from ..trace import current_trace, located, user_location
from .core import (
    ArgumentError,
    DTypeNotImplementedError,
    IndexRangeError,
    _as_operand,
    _tensor,
    add,
    amax,
    bind,
    broadcast_to,
    cast,
    check_values,
    concat,
    cumsum,
    div,
    dtype_arg,
    eq,
    expand_dims,
    fail,
    full,
    ge,
    gt,
    isfinite,
    isnan,
    le,
    log,
    logical_and,
    logical_or,
    lt,
    maximum,
    minimum,
    mul,
    ne,
    neg,
    pad,
    random,
    reshape,
    slice_,
    stop_gradient,
    sub,
    sum,
    unsupported,
    where,
)
from .creation import _random, in_range, iota
from .dtype_kernels import refuses
from .shaping import _dim, movedim, narrow


class SortResult(NamedTuple):
    """What torch.sort and torch.topk return: the values and the index each came from."""

    values: Tensor
    indices: Tensor


SORT_BLOCK = 4096
"""The longest axis (padded to a power of two) a traced sort keeps as the `sort`/`argsort`
primitives: the Triton kernel sorts a whole row in one block of registers."""


def bitonic_sort(x: Tensor, dim: int, descending: bool) -> SortResult:
    """(values, i64 indices) of `x` sorted stably along `dim` by the bitonic network of primitives
    (see the module docstring); a bool `x` sorts as 0/1."""
    work = cast(x, dt.int32) if x.dtype is dt.bool_ else x
    v, i = _bitonic(movedim(work, dim, -1), bool(descending))
    return SortResult(movedim(cast(v, x.dtype), -1, dim), movedim(i, -1, dim))


def _bitonic(x: Tensor, descending: bool) -> tuple[Tensor, Tensor]:
    """(values, i64 indices) of `x` sorted stably along its last dim."""
    n = x.shape[-1]
    batch = x.shape[:-1]
    if n <= 1:
        return x, full(x.shape, 0, dt.int64)
    big = 1 << (n - 1).bit_length()
    normal = 1 if descending and x.dtype.is_float else 0  # class of numbers; nan is 1 - normal; padding 2
    cls = where(isnan(x), 1 - normal, normal) if x.dtype.is_float else full(x.shape, normal, dt.int64)
    widen = [(0, 0)] * len(batch) + [(0, big - n)]
    v = pad(x, widen) if big != n else x
    cls = pad(cast(cls, dt.int64), widen, 2.0) if big != n else cast(cls, dt.int64)
    key = add(mul(cls, big), iota(batch + (big,), len(batch)))
    lo_key, hi_key = normal * big, normal * big + big
    value_first = gt if descending else lt

    def before(va: Tensor, ka: Tensor, vb: Tensor, kb: Tensor) -> Tensor:
        """Whether element a sorts before b: by value between two numbers, else (and on ties) by key."""
        by_key = lt(ka, kb)
        numbers = logical_and(_within(ka, lo_key, hi_key), _within(kb, lo_key, hi_key))
        by_value = logical_or(value_first(va, vb), logical_and(eq(va, vb), by_key))
        return where(numbers, by_value, by_key)

    k = 2
    while k <= big:
        j = k // 2
        while j >= 1:
            # i = (block of 2k, direction bit k, pair group, pair bit j, offset): partners differ in bit j
            shape = batch + ((big // (2 * k), 2) if k < big else ()) + (k // (2 * j), 2, j)
            pair = len(shape) - 2
            vs, ks = reshape(v, shape), reshape(key, shape)
            lo_v, hi_v = narrow(vs, pair, 0, 1), narrow(vs, pair, 1, 1)
            lo_k, hi_k = narrow(ks, pair, 0, 1), narrow(ks, pair, 1, 1)
            swap = before(hi_v, hi_k, lo_v, lo_k)
            if k < big:  # blocks with direction bit 1 sort the other way (the order is total: no ties)
                swap = ne(swap, eq(iota(swap.shape, len(batch) + 1), 1))
            v = reshape(concat([where(swap, hi_v, lo_v), where(swap, lo_v, hi_v)], pair), batch + (big,))
            key = reshape(concat([where(swap, hi_k, lo_k), where(swap, lo_k, hi_k)], pair), batch + (big,))
            j //= 2
        k *= 2
    if big != n:
        v, key = narrow(v, -1, 0, n), narrow(key, -1, 0, n)
    pos = sub(key, mul(bind("div", key, full(key.shape, big, dt.int64)), big))  # key mod big
    return v, pos


def _within(k: Tensor, lo: int, hi: int) -> Tensor:
    return lt(k, hi) if lo == 0 else logical_and(ge(k, lo), lt(k, hi))


def sort(input: Any, dim: int = -1, descending: bool = False, stable: bool = False, *,
         out: Any = None) -> SortResult:
    """torch.sort: (values, indices) along `dim`, ascending unless `descending`; always stable
    (equal elements keep their order, which `stable=False` allows too); nan counts as largest."""
    unsupported("sort", out=out)
    x = _tensor(input)
    d = _dim("sort", x, dim)
    trivial = _trivial(x, d)
    if trivial is not None:
        return trivial
    if _too_long(x, d):
        return bitonic_sort(x, d, bool(descending))
    attrs = {"axis": d, "descending": bool(descending)}
    return SortResult(bind("sort", x, **attrs), bind("argsort", x, **attrs))


def _trivial(x: Tensor, d: int) -> SortResult | None:
    """A 0-d tensor or an axis of at most one element: already sorted."""
    if x.ndim == 0 or x.shape[d] <= 1:
        return SortResult(x, full(x.shape, 0, dt.int64))
    return None


def _too_long(x: Tensor, d: int) -> bool:
    """Whether a traced sort along `d` takes the bitonic network (see SORT_BLOCK)."""
    return current_trace() is not None and 1 << (x.shape[d] - 1).bit_length() > SORT_BLOCK


def argsort(input: Any, dim: int = -1, descending: bool = False, stable: bool = False) -> Tensor:
    """torch.argsort: the indices that sort `input` along `dim` (stable)."""
    x = _tensor(input)
    d = _dim("argsort", x, dim)
    if _trivial(x, d) is not None or _too_long(x, d):
        return sort(x, d, descending, stable).indices
    return bind("argsort", x, axis=d, descending=bool(descending))


def msort(input: Any) -> Tensor:
    """Sorted along dim 0."""
    return sort(input, 0).values


@refuses("topk", "topk", "bool", message="topk does not support bool dtypes on CPU")
def topk(input: Any, k: int, dim: int = -1, largest: bool = True, sorted: bool = True, *,  # noqa: A002
         out: Any = None) -> SortResult:
    """torch.topk: the k largest (smallest) elements along `dim` and their indices, in sorted order
    (also for `sorted=False`, which leaves the order to the implementation)."""
    unsupported("topk", out=out)
    x = _tensor(input)
    d = _dim("topk", x, dim)
    n = x.shape[d] if x.ndim else 1
    if not 0 <= int(k) <= n:
        raise located(IndexError(f"topk: k ({k}) is out of range for dimension {d} of size {n}"), user_location())
    v, i = sort(x, d, descending=bool(largest))
    if x.ndim == 0:
        return SortResult(v, i)
    # slices of the sorted values, but tensors of their own, as torch's (contiguous: `topk_inds.view(batch,
    # -1, 1)` in CenterNet's _topk), not views of a sort result nobody holds
    lim = [int(k) if a == d else s for a, s in enumerate(x.shape)]
    return SortResult(slice_(v, [0] * x.ndim, lim), slice_(i, [0] * x.ndim, lim))


# -- gather and scatter ---------------------------------------------------------------------------

def _index(fn: str, x: Tensor, d: int, index: Any, bound: int) -> Tensor:
    """`index` as an integer tensor with x's rank, its values checked when they are known."""
    idx = _as_operand(index)
    idx = idx if isinstance(idx, Tensor) else full((), int(idx), dt.int64)
    if idx.dtype.is_float or idx.dtype is dt.bool_:
        raise TypeError(f"{fn}: argument 'index' must be an integer tensor, got {idx.dtype.name}")
    if idx.ndim != x.ndim:
        raise located(ShapeError(f"{fn}: index {idx.shape} must have as many dims as the tensor {x.shape}"),
                      user_location())
    for k, (a, b) in enumerate(zip(idx.shape, x.shape)):
        if k != d and a > b:
            raise located(ShapeError(f"{fn}: index {idx.shape} is larger than {x.shape} in dim {k}"),
                          user_location())
    if not idx.is_traced and idx.numel():
        vals = idx.numpy()
        bad = (vals < 0) | (vals >= bound)
        if bad.any():
            raise located(IndexRangeError(f"{fn}: index {int(vals[bad].reshape(-1)[0])} is out of bounds for dimension "
                                     f"{d} with size {bound}"), user_location())
    return in_range(idx, bound)


def _crop(x: Tensor, shape: tuple[int, ...], keep: int | None = None) -> Tensor:
    """`x` cut to `shape` in every dim but `keep`."""
    lim = [x.shape[k] if k == keep else s for k, s in enumerate(shape)]
    return slice_(x, [0] * x.ndim, lim)


def _hits(idx: Tensor, n: int) -> Tensor:
    """(index.shape + (n,)) booleans: whether each index entry names position p (the last axis)."""
    return eq(expand_dims(idx, -1), iota(idx.shape + (n,), idx.ndim))


def gather(input: Any, dim: int, index: Any, *, sparse_grad: bool = False, out: Any = None) -> Tensor:
    """torch.gather: out[..., j, ...] = input[..., index[..., j, ...], ...] along `dim`, the index
    at most the input's size in the other dims; an index outside [0, size) is an IndexError when its
    values are known (in a compiled graph, the backend's index check)."""
    unsupported("gather", out=out)
    x = _tensor(input)
    d = _dim("gather", x, dim)
    if x.ndim == 0:
        x = reshape(x, (1,))
        return reshape(gather(x, 0, reshape(_tensor(index), (-1,))), ())
    n = x.shape[d]
    idx = _index("gather", x, d, index, n)
    if idx.numel() == 0:
        return full(idx.shape, 0, x.dtype)
    return reshape(bind("take", reshape(x, (-1,)), _flat_targets(x.shape, d, idx), axis=0), idx.shape)


def _spread(vals: Tensor, x: Tensor, d: int, fill: Any) -> Tensor:
    """(index dims without d, then n) values moved to dim d and padded to x's shape."""
    y = movedim(vals, -1, d)
    return pad(y, [(0, t - s) for s, t in zip(y.shape, x.shape)], float(fill))


def _flat_targets(shape: tuple[int, ...], d: int, idx: Tensor) -> Tensor:
    """The flat offsets, in a tensor of `shape`, that a scatter along `d` writes: index values along
    d, the index's own positions in the other dims (1-d, one per index element)."""
    strides = [math.prod(shape[k + 1:]) for k in range(len(shape))]
    flat = mul(cast(idx, dt.int64), strides[d])
    for k in range(len(shape)):
        if k != d and idx.shape[k] > 1:
            flat = add(flat, mul(iota(idx.shape, k), strides[k]))
    return reshape(flat, (-1,))


def scatter_sum(shape: tuple[int, ...], d: int, idx: Tensor, s: Tensor) -> Tensor:
    """Zeros of `shape` (s's float dtype) with each s[j] added at index[j] along d: one `index_add`
    primitive over the flattened result, so the work is one add per source element (atomics on
    Triton) where the (index == position) mask is index elements x dim size, and the gradient is
    the primitive's, a gather."""
    vals = reshape(s, (-1,))
    return reshape(bind("index_add", vals, _flat_targets(shape, d, idx), size=math.prod(shape)), shape)


def scatter_last(x: Tensor, d: int, idx: Tensor, s: Tensor) -> Tensor:
    """x with s[j] written at index[j] along d, the last entry winning where several name one element
    (torch's CPU order): the winner per element is the largest flat position aimed at it, an
    `index_max` of the positions (exact in float32 below 2^24 entries), then one `take` of the
    winners and a `where`: M + N work. Gradients are torch's: every entry aimed at an element gets
    that element's gradient, the losers too (torch's backward is a gather), through an `index_add`
    of s - stop_gradient(s), which is 0 in value (0 where s is not finite: those get none)."""
    m, n = idx.numel(), x.numel()
    pdt = dt.float32 if m < 1 << 24 else dt.float64
    flat = _flat_targets(x.shape, d, idx)
    last = bind("index_max", iota((m,), 0, pdt), flat, size=n)  # -inf: no entry
    pick = cast(maximum(last, 0), dt.int64)
    sv = reshape(s, (-1,))
    vals = bind("take", stop_gradient(sv) if sv.dtype.is_float else sv, pick, axis=0)
    if sv.dtype.is_float:
        vals = add(vals, bind("index_add", where(isfinite(sv), sub(sv, stop_gradient(sv)), 0), flat, size=n))
    return reshape(where(ge(last, 0), vals, reshape(x, (-1,))), x.shape)


def _same_dtype(fn: str, x: Tensor, src: Any) -> None:
    """torch's rule for the scatter/index family: a source tensor of another dtype is an error, not
    cast into the input (a float64 src into a float32 input, or floats into an integer one, which
    would truncate them)."""
    if isinstance(src, Tensor) and src.dtype is not x.dtype:
        raise fail(ArgumentError(f"{fn}(): Expected self.dtype to be equal to src.dtype, got self {x.dtype.name} and "
                                 f"src {src.dtype.name}; cast one with .to(...)"))


def scatter_add(input: Any, dim: int, index: Any, src: Any) -> Tensor:
    """torch.scatter_add: input with src[..., j, ...] added at position index[..., j, ...] of `dim`;
    repeated indices accumulate. The gradient of src is a gather of the incoming gradient."""
    x = _tensor(input)
    d = _dim("scatter_add", x, dim)
    n = x.shape[d]
    idx = _index("scatter_add", x, d, index, n)
    _same_dtype("scatter_add", x, src)
    s = _crop(cast(_tensor(src), x.dtype), idx.shape)
    if x.dtype.is_float and idx.numel():
        return add(x, scatter_sum(x.shape, d, idx, s))
    work = dt.int64 if x.dtype is dt.bool_ else x.dtype
    contrib = sum(where(_hits(idx, n), expand_dims(cast(s, work), -1), 0), d)
    return cast(add(cast(x, work), _spread(contrib, x, d, 0)), x.dtype)


def scatter(input: Any, dim: int, index: Any, src: Any = None, value: Any = None, *,
            reduce: str | None = None) -> Tensor:
    """torch.scatter: input with src[..., j, ...] (or the number `value`) written at position
    index[..., j, ...] of `dim`. Where several entries name one position the last one wins, as on
    torch's CPU. `reduce='add'` is scatter_add, `reduce='multiply'` scatter_reduce's 'prod'."""
    if src is not None and not isinstance(src, Tensor) and np.ndim(src) == 0:
        src, value = None, src  # torch.scatter(x, dim, index, 1.5): the value form
    if reduce == "add":
        x = _tensor(input)
        return scatter_add(x, dim, index, src if src is not None else full(_tensor(index).shape, value, x.dtype))
    if reduce == "multiply":
        from .scattering import scatter_reduce  # (scattering.py builds on this module)
        x = _tensor(input)
        return scatter_reduce(x, dim, index, src if src is not None else full(_tensor(index).shape, value, x.dtype),
                              "prod")
    if reduce is not None:
        raise fail(ArgumentError(f"scatter: reduce argument must be either add or multiply, got {reduce!r}"))
    x = _tensor(input)
    d = _dim("scatter", x, dim)
    n = x.shape[d]
    idx = _index("scatter", x, d, index, n)
    if src is None and value is None:
        raise TypeError("scatter: needs 'src' or 'value'")
    _same_dtype("scatter", x, src)
    s = full(idx.shape, value, x.dtype) if src is None else _crop(cast(_tensor(src), x.dtype), idx.shape)
    return scatter_last(x, d, idx, s) if idx.numel() else x


def take_along_dim(input: Any, indices: Any, dim: int | None = None, *, out: Any = None) -> Tensor:
    """torch.take_along_dim: gather along `dim` after broadcasting input and indices in the other
    dims (without dim, over the flattened input)."""
    unsupported("take_along_dim", out=out)
    x, idx = _tensor(input), _tensor(indices)
    if dim is None:
        return gather(reshape(x, (-1,)), 0, reshape(idx, (-1,)))
    if x.ndim != idx.ndim:
        raise located(ShapeError(f"take_along_dim: input {x.shape} and indices {idx.shape} must have the same "
                                 "number of dims"), user_location())
    d = _dim("take_along_dim", x, dim)
    shape = [max(a, b) for a, b in zip(x.shape, idx.shape)]
    xs = broadcast_to(x, [x.shape[k] if k == d else s for k, s in enumerate(shape)])
    ids = broadcast_to(idx, [idx.shape[k] if k == d else s for k, s in enumerate(shape)])
    return gather(xs, d, ids)


# -- random permutations and sampling ---------------------------------------------------------------

def randperm(n: int, *, dtype: Any = None, device: Any = None, generator: Any = None, requires_grad: bool = False,
             out: Any = None, layout: Any = None) -> Tensor:
    """A random permutation of 0 .. n-1 (the argsort of n uniform draws from Avalon's generator)."""
    unsupported("randperm", generator=generator, out=out, layout=layout)
    d = None if dtype is None else dtype_arg("randperm", dtype)
    if d is dt.bool_:
        raise fail(DTypeNotImplementedError("randperm: \"randperm\" not implemented for 'bool'"))
    if d is not None and not d.is_float and int(n) - 1 > dt.int_range(d)[1]:
        raise fail(RuntimeError(f"randperm: n - 1 = {int(n) - 1} cannot be converted to type "
                                f"{dt.PY_NAMES[d.name]} without overflow"))
    keys = _random("randperm", (int(n),), "uniform", dt.float64, None, None, None, None)
    p = argsort(keys)
    p = p if d is None else cast(p, d)
    return p if device is None else p.to(device)


def multinomial(input: Any, num_samples: int, replacement: bool = False, *, generator: Any = None,
                out: Any = None) -> Tensor:
    """torch.multinomial: `num_samples` category indices per row of non-negative weights, seeded by
    Avalon's generator (`av.manual_seed`). With replacement: inverse-CDF sampling, the count of
    cumulative weights at or below u * total. Without: the exponential race, the num_samples
    smallest of E_i / w_i with E_i ~ Exp(1), which draws in proportion to the weights."""
    unsupported("multinomial", generator=generator, out=out)
    p = _tensor(input)
    if p.ndim not in (1, 2):
        raise located(ShapeError(f"multinomial: prob_dist must be 1 or 2 dim, got shape {p.shape}"), user_location())
    rows = p if p.ndim == 2 else reshape(p, (1, p.shape[0]))
    rows = rows if rows.dtype.is_float else cast(rows, dt.float32)
    r, k = rows.shape
    s = int(num_samples)
    if s <= 0:
        raise ValueError("multinomial: cannot sample n_sample <= 0 samples")
    if not replacement and s > k:
        raise ValueError("multinomial: cannot sample n_sample > prob_dist.size(-1) samples without replacement")
    if rows.is_traced:  # checked when the graph runs
        rows = check_values(rows, logical_and(ge(rows, 0.0), isfinite(rows)),
                            "multinomial: probability tensor contains either `inf`, `nan` or element < 0")
        total = sum(rows, 1, keepdims=True)
        rows = check_values(rows, broadcast_to(gt(total, 0.0), rows.shape),
                            "multinomial: invalid multinomial distribution (sum of probabilities <= 0)")
        if not replacement:
            nz = sum(cast(gt(rows, 0.0), dt.int64), 1, keepdims=True)
            rows = check_values(rows, broadcast_to(ge(nz, s), rows.shape),
                                "multinomial: invalid multinomial distribution (with replacement=False, not enough "
                                "non-negative category to sample)")
    else:
        w = rows.numpy()
        if (w < 0).any() or not np.isfinite(w).all():
            raise ValueError("multinomial: probability tensor contains either `inf`, `nan` or element < 0")
        if (w.sum(-1) <= 0).any():
            raise ValueError("multinomial: invalid multinomial distribution (sum of probabilities <= 0)")
        if not replacement and ((w > 0).sum(-1) < s).any():
            raise ValueError("multinomial: invalid multinomial distribution (with replacement=False, not enough "
                             "non-negative category to sample)")
    if replacement:
        u = random(_rng.next_seed(), (r, s), "uniform", dt.float64)
        c = cumsum(cast(rows, dt.float64), 1)
        total = narrow(c, 1, k - 1, 1)
        below = le(expand_dims(c, 1), expand_dims(mul(u, total), 2))  # (r, s, k)
        picked = sum(below, 2)
        last = amax(where(gt(rows, 0.0), iota((r, k), 1), 0), 1, keepdims=True)  # never a zero-weight class
        out_ = minimum(picked, last)
    else:
        u = random(_rng.next_seed(), (r, k), "uniform", dt.float64)
        race = div(neg(log(sub(1.0, u))), cast(rows, dt.float64))
        out_ = narrow(argsort(race, 1), 1, 0, s)
    return out_ if p.ndim == 2 else reshape(out_, (s,))


__all__ = ["argsort", "gather", "msort", "multinomial", "randperm", "scatter", "scatter_add", "sort",
           "take_along_dim", "topk"]

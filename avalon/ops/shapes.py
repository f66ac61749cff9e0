"""torch's remaining shape, stacking and lookup functions over the primitives: `atleast_*d`,
`hstack`/`vstack`/`dstack`/`column_stack`, `meshgrid`, `broadcast_tensors`, `tensor_split`,
`unflatten`, `unfold` (sliding windows), `rot90`, `select`, `take` (torch's, over the flattened
tensor: `torch_take` here, `av.take` outside, since `ops.take` is the primitive's axis form),
`put`, `masked_scatter`, `unravel_index`, `isin`, `bucketize`, `searchsorted`, `trapezoid`,
`logspace`, `randint_like`, and dtype queries (`result_type`, `promote_types`, `can_cast`).

Windows and splits are static slices (strided where a step is given), so their gradients are pads;
lookups with computed positions (`take`, `masked_scatter`, `searchsorted`'s counts) are masks and
`gather`s, which every backend runs inside a trace too."""
from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..ir import ShapeError
from ..ir import dtypes as dt
from ..tensor import Tensor, default_float_dtype
from .core import (
    _as_operand,
    _broadcast_shapes,
    _is_scalar,
    _tensor,
    add,
    broadcast_to,
    cast,
    check_dim,
    check_values,
    concat,
    cumsum,
    dtype_arg,
    eq,
    expand_dims,
    fail,
    floor_divide,
    full,
    ge,
    le,
    logical_and,
    logical_not,
    lt,
    maximum,
    mul,
    pow,
    remainder,
    reshape,
    result_dtype,
    slice_,
    stack,
    sub,
    sum,
    transpose,
    unsupported,
    where,
)
from .creation import linspace, randint
from .indexing import getitem
from .reductions import any as any_
from .shaping import flip, movedim, narrow
from .sorting import gather, take_along_dim

# -- at least n dims, stacking --------------------------------------------------------------------

def _atleast(n: int, tensors: tuple) -> Any:
    many = len(tensors) != 1 or isinstance(tensors[0], (list, tuple))
    ts = list(tensors[0]) if len(tensors) == 1 and isinstance(tensors[0], (list, tuple)) else list(tensors)
    out = []
    for t in ts:
        x = _tensor(t)
        if x.ndim < n:
            if x.ndim == 0:
                shape = (1,) * n
            elif x.ndim == 1:
                shape = (1,) + x.shape + (1,) * (n - 2)
            else:
                shape = x.shape + (1,)
            x = reshape(x, shape)
        out.append(x)
    return tuple(out) if many else out[0]


def atleast_1d(*tensors: Any) -> Any:
    """Each tensor with at least 1 dim (0-d becomes (1,)); one argument gives one tensor."""
    return _atleast(1, tensors)


def atleast_2d(*tensors: Any) -> Any:
    """At least 2 dims: (n,) becomes (1, n)."""
    return _atleast(2, tensors)


def atleast_3d(*tensors: Any) -> Any:
    """At least 3 dims: (n,) becomes (1, n, 1), (m, n) becomes (m, n, 1)."""
    return _atleast(3, tensors)


def _list(fn: str, tensors: Any) -> list[Any]:
    if isinstance(tensors, (Tensor, np.ndarray)):
        raise fail(TypeError(f"{fn}(): argument 'tensors' must be a tuple or list of tensors, not "
                             f"{type(tensors).__name__}"))
    return list(tensors)


def hstack(tensors: Sequence[Any], *, out: Any = None) -> Tensor:
    """Joined along dim 1 (dim 0 when all are 1-d), after atleast_1d."""
    unsupported("hstack", out=out)
    ts = atleast_1d(_list("hstack", tensors))
    return concat(list(ts), 0 if ts[0].ndim == 1 else 1)


def vstack(tensors: Sequence[Any], *, out: Any = None) -> Tensor:
    """Joined along dim 0 after atleast_2d (1-d tensors become rows)."""
    unsupported("vstack", out=out)
    return concat(list(atleast_2d(_list("vstack", tensors))), 0)


row_stack = vstack


def dstack(tensors: Sequence[Any], *, out: Any = None) -> Tensor:
    """Joined along dim 2 after atleast_3d."""
    unsupported("dstack", out=out)
    return concat(list(atleast_3d(_list("dstack", tensors))), 2)


def column_stack(tensors: Sequence[Any], *, out: Any = None) -> Tensor:
    """0-d and 1-d tensors become columns, then everything is joined along dim 1."""
    unsupported("column_stack", out=out)
    ts = [_tensor(t) for t in _list("column_stack", tensors)]
    return concat([reshape(t, (-1, 1)) if t.ndim <= 1 else t for t in ts], 1)


def meshgrid(*tensors: Any, indexing: str | None = None) -> tuple[Tensor, ...]:
    """torch.meshgrid: coordinate grids of 0-d/1-d tensors; 'ij' (torch's default) or 'xy'
    (the first two dims swapped)."""
    ts = list(tensors[0]) if len(tensors) == 1 and isinstance(tensors[0], (list, tuple)) else list(tensors)
    ts = [reshape(_tensor(t), (-1,)) for t in ts]
    ix = indexing or "ij"
    if ix not in ("ij", "xy"):
        raise fail(ValueError(f"torch.meshgrid: indexing must be one of \"xy\" or \"ij\", but received: {ix}"))
    if not ts:
        return ()
    swap = ix == "xy" and len(ts) >= 2
    order = [1, 0] + list(range(2, len(ts))) if swap else list(range(len(ts)))
    shape = tuple(ts[k].shape[0] for k in order)
    out = []
    for k, t in enumerate(ts):
        pos = order.index(k)
        s = [1] * len(ts)
        s[pos] = t.shape[0]
        out.append(broadcast_to(reshape(t, s), shape))
    return tuple(out)


def broadcast_shapes(*shapes: Any) -> tuple[int, ...]:
    """The shape the given shapes (ints or tuples) broadcast to."""
    return _broadcast_shapes("broadcast_shapes", *[(s,) if isinstance(s, (int, np.integer)) else tuple(s)
                                                   for s in shapes])


def broadcast_tensors(*tensors: Any) -> tuple[Tensor, ...]:
    """Every tensor expanded to their common shape."""
    ts = [_tensor(t) for t in tensors]
    shape = _broadcast_shapes("broadcast_tensors", *[t.shape for t in ts])
    return tuple(t.expand(shape) for t in ts)


# -- reshaping and splitting ------------------------------------------------------------------------

def ravel(input: Any) -> Tensor:
    """The elements as one dim (a view where the tensor is contiguous)."""
    return reshape(input, (-1,))


def swapaxes(input: Any, axis0: int, axis1: int) -> Tensor:
    """transpose(x, axis0, axis1)."""
    return transpose(input, axis0, axis1)


def swapdims(input: Any, dim0: int, dim1: int) -> Tensor:
    """transpose(x, dim0, dim1) (torch.swapdims: swapaxes under torch's dim names)."""
    return transpose(input, dim0, dim1)


def unflatten(input: Any, dim: int, sizes: Sequence[int]) -> Tensor:
    """Dim `dim` split into `sizes` (one of them may be -1)."""
    x = _tensor(input)
    d = check_dim("unflatten", dim, x.ndim)
    sizes = [int(s) for s in sizes]
    if not sizes:
        raise fail(ValueError("unflatten: sizes must be non-empty"))
    known = math.prod(s for s in sizes if s != -1)
    if sizes.count(-1) > 1 or (-1 not in sizes and known != x.shape[d]) or (
            -1 in sizes and (known == 0 or x.shape[d] % known)):
        raise fail(ShapeError(f"unflatten: Provided sizes {sizes} don't multiply up to the size of dim {dim} "
                              f"({x.shape[d]}) in the input tensor"))
    return reshape(x, x.shape[:d] + tuple(sizes) + x.shape[d + 1:])


def tensor_split(input: Any, indices_or_sections: Any, dim: int = 0) -> tuple[Tensor, ...]:
    """torch.tensor_split: `n` pieces as equal as possible (the first n % size one longer), or
    pieces cut at the given indices; views of the input, as narrow's."""
    x = _tensor(input)
    d = check_dim("tensor_split", dim, x.ndim)
    n = x.shape[d]
    ios = indices_or_sections
    if isinstance(ios, Tensor):
        ios = int(ios.item()) if ios.ndim == 0 else [int(v) for v in ios.tolist()]
    if isinstance(ios, (int, np.integer)):
        k = int(ios)
        if k <= 0:
            raise fail(ValueError(f"tensor_split: number of sections must be larger than 0, got {k}"))
        q, r = divmod(n, k)
        bounds, at = [], 0
        for i in range(k):
            at += q + (1 if i < r else 0)
            bounds.append(at)
        bounds = bounds[:-1]
    else:
        bounds = [int(v) for v in ios]
    out, prev = [], 0
    for b in bounds + [None]:
        lo, hi, _ = slice(prev, b).indices(n)  # x[prev:b] along d, Python's slice rules (as torch's)
        out.append(narrow(x, d, min(lo, n), max(hi - lo, 0)))
        prev = b
    return tuple(out)


def unfold(input: Any, dimension: int, size: int, step: int) -> Tensor:
    """Tensor.unfold: the windows of `size` elements every `step` along `dimension`, as a new last
    dim (one strided slice per offset in the window, stacked: no gather). A view of `input`, as torch's
    (`views.Windows`: in-place writes through it reach `input`, and it reads writes to `input`)."""
    x = _tensor(input)
    if x.ndim == 0:
        x = reshape(x, (1,))
    d = check_dim("unfold", dimension, x.ndim)
    n, size, step = x.shape[d], int(size), int(step)
    if step <= 0:
        raise fail(ValueError(f"unfold: step is {step} but must be > 0"))
    if size > n or size < 0:
        raise fail(ShapeError(f"unfold: maximum size for tensor at dimension {d} is {n} but size is {size}"))
    from .. import views
    return views.link(input, _unfold(x, d, size, step), views.Windows(d, size, step))  # a view, as torch's


def _unfold(x: Tensor, d: int, size: int, step: int) -> Tensor:
    n = x.shape[d]
    nw = (n - size) // step + 1
    g = math.gcd(size, step)
    if g > 1 and size:
        return _unfold_chunks(x, d, size, step, nw, g)
    pieces = []
    for k in range(size):
        lo, hi, st = [0] * x.ndim, list(x.shape), [1] * x.ndim
        lo[d], hi[d], st[d] = k, k + (nw - 1) * step + 1, step
        pieces.append(slice_(x, lo, hi, st))
    if not pieces:
        return full(x.shape[:d] + (nw,) + x.shape[d + 1:] + (0,), 0, x.dtype)
    return stack(pieces, -1)


def _unfold_chunks(x: Tensor, d: int, size: int, step: int, nw: int, g: int) -> Tensor:
    """unfold in size / g slices instead of size: the covered span cut into chunks of g = gcd(size, step)
    elements, window w is chunks w s .. w s + r - 1 (s = step / g, r = size / g), so slice j (every s-th
    chunk from j) holds the j-th chunk of every window. An STFT's frames (n_fft 512, hop 128) are 4 slices
    rather than 512, and so is their gradient."""
    span, r, s = (nw - 1) * step + size, size // g, step // g
    lo, hi = [0] * x.ndim, list(x.shape)
    hi[d] = span
    chunks = reshape(slice_(x, lo, hi), x.shape[:d] + (span // g, g) + x.shape[d + 1:])
    pieces = []
    for j in range(r):
        lo, hi, st = [0] * chunks.ndim, list(chunks.shape), [1] * chunks.ndim
        lo[d], hi[d], st[d] = j, j + (nw - 1) * s + 1, s
        pieces.append(slice_(chunks, lo, hi, st))  # (..., nw, g, ...): chunk j of each window
    windows = concat(pieces, d + 1) if r > 1 else pieces[0]  # (..., nw, size, ...)
    return movedim(windows, d + 1, -1)


def rot90(input: Any, k: int = 1, dims: Sequence[int] = (0, 1)) -> Tensor:
    """Rotated by 90 degrees k times in the plane `dims`, from the first dim toward the second."""
    x = _tensor(input)
    dims = list(dims)
    if len(dims) != 2:
        raise fail(ValueError(f"expected total rotation dims == 2, but got dims = {len(dims)}"))
    if x.ndim < 2:
        raise fail(ValueError(f"expected total dims >= 2, but got total dims = {x.ndim}"))
    a, b = check_dim("rot90", dims[0], x.ndim), check_dim("rot90", dims[1], x.ndim)
    if a == b:
        raise fail(ValueError(f"expected rotation dims to be different, but got dim0 = {a} and dim1 = {b}"))
    k = int(k) % 4
    if k == 1:
        return transpose(flip(x, b), a, b)
    if k == 2:
        return flip(x, [a, b])
    if k == 3:
        return transpose(flip(x, a), a, b)
    return x.clone()


def select(input: Any, dim: int, index: int) -> Tensor:
    """x.select(dim, i): the slice at `index` along `dim`, without that dim (a view)."""
    x = _tensor(input)
    d = check_dim("select", dim, x.ndim)
    i = int(index)
    n = x.shape[d]
    if not -n <= i < n:
        raise fail(IndexError(f"select(): index {i} out of range for tensor of size {list(x.shape)} at dimension "
                              f"{d}"))
    return getitem(x, (slice(None),) * d + (i,))


# -- flat lookups ---------------------------------------------------------------------------------------

def _flat_index(fn: str, index: Any, numel: int) -> Tensor:
    """An integer index into a flattened tensor, negatives counting from the end; checked when known."""
    idx = _as_operand(index)
    idx = idx if isinstance(idx, Tensor) else full((), int(idx), dt.int64)
    if idx.dtype.is_float or idx.dtype is dt.bool_:
        raise fail(TypeError(f"{fn}(): Expected a long tensor for index, but got {idx.dtype.name}"))
    if not idx.is_traced and idx.numel():
        v = idx.numpy()
        bad = (v < -numel) | (v >= numel)
        if bad.any():
            raise fail(IndexError(f"{fn}: out of range: tried to access index {int(v[bad].reshape(-1)[0])} on a "
                                  f"tensor of {numel} elements."))
    idx = cast(idx, dt.int64)
    return where(lt(idx, 0), add(idx, numel), idx)


def torch_take(input: Any, index: Any) -> Tensor:
    """torch.take: the elements at `index` of the flattened input, in index's shape."""
    x = _tensor(input)
    flat = reshape(x, (-1,))
    idx = _flat_index("take", index, flat.shape[0])
    if idx.numel() == 0:
        return full(idx.shape, 0, x.dtype)
    return reshape(gather(flat, 0, reshape(idx, (-1,))), idx.shape)


def put(input: Any, index: Any, source: Any, accumulate: bool = False) -> Tensor:
    """Tensor.put: the flattened input with `source`'s elements written (added with `accumulate`)
    at `index`."""
    from .scattering import index_add, index_copy
    x = _tensor(input)
    flat = reshape(x, (-1,))
    idx = reshape(_flat_index("put", index, flat.shape[0]), (-1,))
    if isinstance(source, Tensor) and source.dtype is not x.dtype:  # torch: an error, not a silent cast
        raise fail(TypeError(f"put_(): self and source expected to have the same dtype, but got self.dtype = "
                             f"{x.dtype.name} and source.dtype = {source.dtype.name}"))
    src = reshape(cast(_tensor(source), x.dtype), (-1,))
    if src.shape[0] != idx.shape[0]:
        raise fail(ShapeError(f"put_(): Expected source and index to have the same number of elements, but got "
                              f"source.numel() = {src.shape[0]}, index.numel() = {idx.shape[0]}"))
    out = index_add(flat, 0, idx, src) if accumulate else index_copy(flat, 0, idx, src)
    return reshape(out, x.shape)


def masked_scatter(input: Any, mask: Any, source: Any) -> Tensor:
    """torch.masked_scatter: where `mask` (broadcast to the input) holds, the source's elements in
    row-major order; elsewhere the input. The k-th true position reads source.flatten()[k]: a
    running count of the mask and a gather, so it works in a trace too."""
    x = _tensor(input)
    m = _tensor(mask)
    if m.dtype is not dt.bool_:
        raise fail(TypeError(f"masked_scatter_: expected BoolTensor for mask, got {m.dtype.name}"))
    shape = _broadcast_shapes("masked_scatter", x.shape, m.shape)
    x, m = broadcast_to(x, shape), broadcast_to(m, shape)
    if isinstance(source, Tensor) and source.dtype is not x.dtype:  # torch: an error, not a silent cast
        raise fail(TypeError(f"masked_scatter_: expected self and source to have same dtypes but got "
                             f"{x.dtype.name} and {source.dtype.name}"))
    src = reshape(cast(_tensor(source), x.dtype), (-1,))
    mf = reshape(m, (-1,))
    if not mf.is_traced and int(mf.numpy().sum()) > src.shape[0]:
        raise fail(RuntimeError(f"masked_scatter: Number of elements of source < number of ones in mask "
                                f"({src.shape[0]} < {int(mf.numpy().sum())})"))
    if mf.is_traced and mf.shape[0]:  # the same check when the graph runs (the last source element was repeated)
        ones = sum(cast(mf, dt.int64))
        x = check_values(x, le(ones, src.shape[0]), f"masked_scatter: Number of elements of source < number of "
                         f"ones in mask (the source has {src.shape[0]})")
    if mf.shape[0] == 0 or src.shape[0] == 0:
        return x
    pos = sub(cumsum(mf, 0), 1)
    pos = where(mf, maximum(pos, 0), 0)
    pos = where(lt(pos, src.shape[0]), pos, src.shape[0] - 1)
    vals = reshape(gather(src, 0, pos), shape)
    return where(m, vals, x)


def unravel_index(indices: Any, shape: Any) -> tuple[Tensor, ...]:
    """torch.unravel_index: flat indices as one coordinate tensor per dim of `shape`."""
    idx = _tensor(indices)
    if idx.dtype.is_float or idx.dtype is dt.bool_:
        raise fail(TypeError(f"expected 'indices' to be integer dtype, but got {idx.dtype.name}"))
    shp = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    numel = math.prod(shp)
    if not idx.is_traced and idx.numel():
        v = idx.numpy()
        if ((v < -numel) | (v >= numel)).any():
            raise fail(ValueError(f"unravel_index: 'indices' must be in range [-{numel}, {numel - 1}]"))
    elif idx.numel():  # the same check when the graph runs
        idx = check_values(idx, logical_and(ge(idx, -numel), lt(idx, numel)),
                           f"unravel_index: 'indices' must be in range [-{numel}, {numel - 1}]")
    idx = cast(idx, dt.int64)
    idx = where(lt(idx, 0), add(idx, numel), idx)
    out = []
    for k in range(len(shp)):
        stride = math.prod(shp[k + 1:])
        c = floor_divide(idx, stride) if stride != 1 else idx
        out.append(remainder(c, shp[k]) if k else c)
    return tuple(out)


def isin(elements: Any, test_elements: Any, *, assume_unique: bool = False, invert: bool = False) -> Tensor:
    """Whether each element equals some test element (both may be numbers)."""
    e, t = _tensor(elements), reshape(_tensor(test_elements), (-1,))
    if t.shape[0] == 0:
        return full(e.shape, bool(invert), dt.bool_)
    hit = any_(eq(expand_dims(e, -1), t), -1)
    return logical_not(hit) if invert else hit


def _count_below(seq: Tensor, v: Tensor, right: bool) -> Tensor:
    """For each v, how many entries along seq's last dim are < v (<= v when `right`)."""
    cmp = le if right else lt
    return sum(cast(cmp(seq, v), dt.int64), -1)


def bucketize(input: Any, boundaries: Any, *, out_int32: bool = False, right: bool = False,
              out: Any = None) -> Tensor:
    """torch.bucketize: the index of each value's bucket among the sorted 1-d `boundaries`
    (boundaries[i-1] < x <= boundaries[i]; < on the right with `right`)."""
    unsupported("bucketize", out=out)
    x = _tensor(input)
    b = _tensor(boundaries)
    if b.ndim != 1:
        raise fail(ShapeError(f"bucketize: boundaries tensor must be 1 dimension, but got dim({b.ndim})"))
    d = result_dtype(x, b)
    r = _count_below(cast(b, d), expand_dims(cast(x, d), -1), right)
    return cast(r, dt.int32) if out_int32 else r


def searchsorted(sorted_sequence: Any, input: Any, *, out_int32: bool = False, right: bool = False,
                 side: str | None = None, sorter: Any = None, out: Any = None) -> Tensor:
    """torch.searchsorted: where each value would be inserted into the innermost dim of
    `sorted_sequence` to keep it sorted (the leftmost place; the rightmost with right=True or
    side='right'). The count of smaller entries: O(values x sequence) comparisons."""
    unsupported("searchsorted", out=out)
    seq = _tensor(sorted_sequence)
    scalar = _is_scalar(input)
    v = _tensor(input)
    if side is not None:
        if side not in ("left", "right"):
            raise fail(ValueError(f"torch.searchsorted(): side can only be 'left' or 'right' but got {side}"))
        if right and side == "left":
            raise fail(ValueError("torch.searchsorted(): side and right can't be set to opposites, got side of left "
                                  "while right was True"))
        right = side == "right"
    if sorter is not None:
        seq = take_along_dim(seq, _tensor(sorter), -1)
    d = result_dtype(seq, v)
    seq, v = cast(seq, d), cast(v, d)
    if seq.ndim == 1:
        r = _count_below(seq, expand_dims(v, -1), right)
    else:
        if v.ndim != seq.ndim or v.shape[:-1] != seq.shape[:-1]:
            raise fail(ShapeError(f"torch.searchsorted(): boundaries tensor should be 1 dimension or the first N-1 "
                                  f"dimensions of boundaries tensor and input value tensor must match, but we got "
                                  f"boundaries tensor {list(seq.shape)} and input value tensor {list(v.shape)}"))
        r = _count_below(expand_dims(seq, -2), expand_dims(v, -1), right)
    r = cast(r, dt.int32) if out_int32 else r
    return reshape(r, ()) if scalar else r


def trapezoid(y: Any, x: Any = None, *, dx: Any = None, dim: int = -1) -> Tensor:
    """The trapezoidal rule along `dim`: spacing `dx` (default 1) or sample points `x` (1-d along
    dim, or y's shape)."""
    yt = _tensor(y)
    d = check_dim("trapezoid", dim, yt.ndim)
    n = yt.shape[d]
    if not yt.dtype.is_float:
        yt = cast(yt, default_float_dtype())
    if n == 0:
        return sum(yt, d)
    mids = mul(add(narrow(yt, d, 1, n - 1), narrow(yt, d, 0, n - 1)), 0.5)
    if x is None or _is_scalar(x):
        step = 1.0 if x is None and dx is None else float(dx if dx is not None else x)
        return mul(sum(mids, d), step)
    xt = _tensor(x)
    if xt.ndim == 1:
        if xt.shape[0] != n:
            raise fail(ShapeError(f"trapezoid: There must be one `x` value for each sample point, got {xt.shape[0]} "
                                  f"and {n}"))
        xt = reshape(xt, [n if k == d else 1 for k in range(yt.ndim)])
    dxs = sub(narrow(xt, d if xt.ndim == yt.ndim else -1, 1, n - 1), narrow(xt, d if xt.ndim == yt.ndim else -1, 0,
                                                                              n - 1))
    return sum(mul(dxs, mids), d)


trapz = trapezoid


def cumulative_trapezoid(y: Any, x: Any = None, *, dx: Any = None, dim: int = -1) -> Tensor:
    """The running trapezoidal integral along `dim` (one element shorter)."""
    yt = _tensor(y)
    d = check_dim("cumulative_trapezoid", dim, yt.ndim)
    n = yt.shape[d]
    if not yt.dtype.is_float:
        yt = cast(yt, default_float_dtype())
    mids = mul(add(narrow(yt, d, 1, n - 1), narrow(yt, d, 0, n - 1)), 0.5)
    if x is None or _is_scalar(x):
        step = 1.0 if x is None and dx is None else float(dx if dx is not None else x)
        return cumsum(mul(mids, step), d)
    xt = _tensor(x)
    if xt.ndim == 1:
        xt = reshape(xt, [n if k == d else 1 for k in range(yt.ndim)])
    return cumsum(mul(sub(narrow(xt, d, 1, n - 1), narrow(xt, d, 0, n - 1)), mids), d)


# -- creation and dtypes ----------------------------------------------------------------------------

def logspace(start: Any, end: Any, steps: int, base: float = 10.0, *, dtype: Any = None, device: Any = None,
             requires_grad: bool = False, out: Any = None, layout: Any = None) -> Tensor:
    """base ** linspace(start, end, steps), in the default float dtype unless `dtype` says otherwise."""
    unsupported("logspace", out=out, layout=layout)
    d = dtype_arg("logspace", dtype) if dtype is not None else default_float_dtype()
    work = d if d.is_float else dt.float64
    e = linspace(start, end, steps, dtype=dt.float64)
    r = cast(pow(full((), float(base), dt.float64), e), work)
    if not d.is_float:
        from .core import trunc
        r = trunc(r)
    r = cast(r, d)
    return r if device is None else r.to(device)


def randint_like(input: Any, low: int = 0, high: int | None = None, *, dtype: Any = None, device: Any = None,
                 requires_grad: bool = False, memory_format: Any = None, generator: Any = None) -> Tensor:
    """torch.randint_like(x, high) or (x, low, high): uniform integers of x's shape, in x's dtype."""
    x = _tensor(input)
    if high is None:
        low, high = 0, low
    d = dtype_arg("randint_like", dtype) if dtype is not None else x.dtype
    r = randint(int(low), int(high), x.shape, dtype=d, generator=generator)  # (d's bounds checked there)
    return r if device is None else r.to(device)


def result_type(tensor1: Any, tensor2: Any) -> dt.DType:
    """The dtype torch's promotion gives an operation on the two (tensors or numbers)."""
    return result_dtype(_as_operand(tensor1), _as_operand(tensor2))


def promote_types(type1: Any, type2: Any) -> dt.DType:
    """The smallest dtype both convert to without losing category (torch.promote_types)."""
    return dt.promote(dtype_arg("promote_types", type1), dtype_arg("promote_types", type2))


def can_cast(from_: Any, to: Any) -> bool:
    """torch's casting rule: no float to integer or bool, no integer to bool; anything else
    (downcasts within a category included) is allowed."""
    a, b = dtype_arg("can_cast", from_), dtype_arg("can_cast", to)
    cat = {True: 2}.get(a.is_float, 1 if a.is_int else 0), {True: 2}.get(b.is_float, 1 if b.is_int else 0)
    return cat[0] <= cat[1]


def is_floating_point(input: Any) -> bool:
    """Whether the tensor's dtype is a floating one."""
    return _tensor(input).dtype.is_float


def set_printoptions(precision: int | None = None, threshold: int | None = None, edgeitems: int | None = None,
                     linewidth: int | None = None, profile: str | None = None, sci_mode: bool | None = None) -> None:
    """torch.set_printoptions for Tensor's repr: precision, threshold, edgeitems, linewidth,
    profile ('default', 'short', 'full'); sci_mode False suppresses scientific notation."""
    from ..tensor import PRINT_OPTIONS as opts
    if profile is not None:
        presets = {"default": (4, 1000, 3, 80), "short": (2, 1000, 2, 80), "full": (4, sys.maxsize, 3, 80)}
        if profile not in presets:
            raise ValueError(f"set_printoptions: profile must be 'default', 'short' or 'full', got {profile!r}")
        opts["precision"], opts["threshold"], opts["edgeitems"], opts["linewidth"] = presets[profile]
        opts["suppress"] = False
    for k, v in (("precision", precision), ("threshold", threshold), ("edgeitems", edgeitems),
                 ("linewidth", linewidth)):
        if v is not None:
            opts[k] = v
    if sci_mode is not None:
        opts["suppress"] = not sci_mode


__all__ = ["atleast_1d", "atleast_2d", "atleast_3d", "broadcast_shapes", "broadcast_tensors", "bucketize", "can_cast",
           "column_stack", "cumulative_trapezoid", "dstack", "hstack", "is_floating_point", "isin", "logspace",
           "masked_scatter", "meshgrid", "promote_types", "put", "randint_like", "ravel", "result_type", "rot90",
           "row_stack", "searchsorted", "select", "set_printoptions", "swapaxes", "swapdims", "tensor_split",
           "torch_take", "trapezoid", "trapz", "unflatten", "unfold", "unravel_index", "vstack"]

"""Views with torch's semantics on value tensors: functionalization.

In torch, `x[0]`, `x[:, 1:]`, `x.t()`, `x.view(-1)`, `x.unsqueeze(0)`, `x.narrow(...)`, `x.split(...)`,
`x.diagonal()`, `x.expand(...)` and `x.detach()` share `x`'s storage: an in-place op on the view
changes `x`, an in-place op on `x` changes what the view reads, whenever it is read. Avalon's tensors
are values (a numpy array, a GPU buffer, or an SSA value inside a trace), so the sharing is
functionalized, as torch's own functionalization pass does for its compilers:

- A view remembers its base (the first tensor of the chain that is not a view: views of views point
  at it) and the chain of steps that derives it from the base (`Index` for basic indexing and
  narrow/split/chunk/unbind, `Reshape` for view/reshape/flatten/squeeze/unsqueeze when torch's
  would be a view, `Permute` for transpose/permute/t/movedim, `Expand`, `Diagonal`, `Windows`, `Detach`), and
  its layout (sizes, strides and offset in the base's elements, as torch's strides), which decides
  as in torch whether a reshape is a view or a copy and whether `contiguous()` copies.
- An in-place op on a view computes the view's new value and writes it back into the base: each
  step's `put` is the base with that step's region replaced (`setitem` for indexing, the inverse
  permutation or reshape, a strided `setitem` for a diagonal), applied from the last step back to
  the base. The base then takes its new value as any in-place op does (`tensor._replace`: eagerly
  into its storage, in a trace as its new SSA value, recorded as a state update when the base is
  an argument or a model's tensor), so autodiff sees the write (`setitem` is `where`/`pad`).
- After any write to a base, its live views (weak references) are derived again from the new
  value (`refresh`), so a view taken before the write reads the write afterwards, and a view
  read after a write to another view of the same base sees it.

One mechanism serves eager execution and traces: eager views do not rely on numpy's aliasing
(strided slices and transposes are copies in numpy's contiguous storage, GPU tensors are torch
buffers, and traced values are SSA values, so aliasing could only ever cover part of the cases),
and eager ops do not hand out results that share an operand's memory (`ops.core.bind` copies
them), so an eager result never differs from a traced one. The cost: an eager in-place op on a
view rewrites its whole base (O(base), not O(view)). `.detach()`/`.data` additionally keep
sharing the base's array eagerly, as before, so writes that bypass Avalon's in-place ops (a
compiled call's buffers written in place) reach them too; a compiled call refreshes the live views
of every state tensor it updated, in place or not (`compiler.execute._write_back`).

Writes through an expanded view are refused, as torch refuses writes to a tensor whose elements
overlap; a write to a view of an expanded tensor that does not overlap itself writes memory as torch's
(`Expand.put`). `x.view(shape)` of a tensor torch could not view (a transposed one) raises torch's error
(`view`, below); `x.reshape(shape)` copies there, as torch's. The fills torch allows on such a tensor
(`fill_`, `zero_`, `masked_fill_`, `index_fill_`, `x[mask] = scalar`) write every element it reaches
(`fill_through`). An in-place op whose operand shares part of the written tensor's memory
(`x[1:].add_(x[:-1])`) is refused as torch refuses it, and also where torch would write in memory order
(`check_partial_overlap`).
"""
from __future__ import annotations

import math
import weakref
from typing import Any

from . import trace as _trace_mod
from .tensor import Tensor

Layout = tuple[tuple[int, ...], tuple[int, ...], int]
"""(sizes, strides, offset) of a view in its base's elements (the base is contiguous)."""

_RAW = [0]
"""Above 0 while steps are applied for write-back or refresh: the results are not views themselves."""


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    out, acc = [], 1
    for s in reversed(shape):
        out.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(out))


def is_contiguous(shape: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    """torch's rule: strides of size-1 dims do not matter, an empty tensor is contiguous."""
    if math.prod(shape) == 0:
        return True
    expected = 1
    for s, st in zip(reversed(shape), reversed(strides)):
        if s != 1:
            if st != expected:
                return False
            expected *= s
    return True


def compute_stride(old: tuple[int, ...], strides: tuple[int, ...], new: tuple[int, ...]) -> tuple[int, ...] | None:
    """The strides of `new` viewing a tensor of sizes `old` with `strides`, or None where torch's
    `view` fails and `reshape` copies (at::detail::computeStride)."""
    if not old:
        return (1,) * len(new)
    numel = math.prod(old)
    if numel == 0:
        return tuple(strides) if tuple(old) == tuple(new) else contiguous_strides(new)
    newstride = [0] * len(new)
    view_d = len(new) - 1
    chunk_base = strides[-1]
    tensor_numel = view_numel = 1
    for d in range(len(old) - 1, -1, -1):
        tensor_numel *= old[d]
        if d == 0 or (old[d - 1] != 1 and strides[d - 1] != tensor_numel * chunk_base):
            while view_d >= 0 and (view_numel < tensor_numel or new[view_d] == 1):
                newstride[view_d] = view_numel * chunk_base
                view_numel *= new[view_d]
                view_d -= 1
            if view_numel != tensor_numel:
                return None
            if d > 0:
                chunk_base = strides[d - 1]
                tensor_numel = view_numel = 1
    return tuple(newstride) if view_d == -1 else None


def view(x: Tensor, *shape: Any) -> Tensor:
    """`x.view(*shape)`: torch's view, which never copies: a shape whose elements the tensor's
    strides cannot reach (`x.t().view(-1)`) raises torch's RuntimeError instead of copying (use
    `reshape`). `x.view(dtype)` of the tensor's own dtype is the tensor; another dtype reinterprets its
    bits (the `bitcast` op, a copy here where torch shares storage; no gradient, as torch's), a
    different element size rescaling the last dim, with torch's errors."""
    ops = _ops()
    if len(shape) == 1 and not isinstance(shape[0], (tuple, list, int)) and not hasattr(shape[0], "__index__"):
        return _view_dtype(x, ops.dtype_arg("view", shape[0]))
    dims = list(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else list(shape)
    dims = [int(s) for s in dims]
    if dims.count(-1) == 1:
        known = math.prod(s for s in dims if s != -1)
        if known and x.numel() % known == 0:
            dims[dims.index(-1)] = x.numel() // known
    if -1 not in dims and math.prod(dims) == x.numel():
        sizes, strides, _ = layout_of(x)
        if compute_stride(tuple(sizes), tuple(strides), tuple(dims)) is None:
            raise ops.fail(RuntimeError(
                f"view size is not compatible with input tensor's size and stride (at least one dimension spans "
                f"across two contiguous subspaces). Use .reshape(...) instead. (view{tuple(dims)} of a tensor of "
                f"shape {x.shape} and strides {tuple(strides)})"))
    return ops.reshape(x, *shape)


_TORCH_NAMES = {"f32": "Float", "f64": "Double", "f16": "Half", "bf16": "BFloat16", "i64": "Long", "i32": "Int",
                "i16": "Short", "i8": "Char", "u8": "Byte", "i1": "Bool"}


def _view_dtype(x: Tensor, d: Any) -> Tensor:
    ops = _ops()
    if d is x.dtype:
        return x
    if getattr(x, "_complex_pair", False):
        raise ops.fail(NotImplementedError("view(dtype) of a complex tensor is not supported"))
    src, size = x.dtype, d.itemsize
    if size != src.itemsize:
        what = f"to view {_TORCH_NAMES.get(src.name, src.name)} as {_TORCH_NAMES.get(d.name, d.name)} (different " \
               "element sizes)"
        if x.ndim == 0:
            raise ops.fail(RuntimeError(f"self.dim() cannot be 0 {what}"))
        _, strides, offset = layout_of(x)
        if x.shape[-1] != 1 and strides[-1] != 1:
            raise ops.fail(RuntimeError(f"self.stride(-1) must be 1 {what}, but got {strides[-1]}"))
        if size > src.itemsize:
            ratio = size // src.itemsize
            if x.shape[-1] % ratio:
                raise ops.fail(RuntimeError(f"self.size(-1) must be divisible by {ratio} {what}, but got "
                                            f"{x.shape[-1]}"))
            if offset % ratio:
                raise ops.fail(RuntimeError(f"self.storage_offset() must be divisible by {ratio} {what}, but got "
                                            f"{offset}"))
    return ops.bind("bitcast", x, dtype=d, source=src)


def _ops() -> Any:
    from . import ops
    return ops


class Step:
    """One view op: `apply(x)` derives the view of `x`, `put(x, v)` is `x` with that view's elements
    replaced by `v`, `layout(l)` the view's layout from `x`'s (None: torch would copy)."""

    __slots__ = ()

    def apply(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def put(self, x: Tensor, v: Tensor) -> Tensor:
        raise NotImplementedError

    def layout(self, lay: Layout) -> Layout | None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(repr(getattr(self, s)) for s in self.__slots__)})"


class Index(Step):
    """Basic indexing: a full index of ints (non-negative), slices (start, stop, positive step) and None."""

    __slots__ = ("index",)

    def __init__(self, index: tuple) -> None:
        self.index = index

    def apply(self, x: Tensor) -> Tensor:
        return _ops().getitem(x, self.index)

    def put(self, x: Tensor, v: Tensor) -> Tensor:
        return _ops().setitem(x, self.index, v)

    def layout(self, lay: Layout) -> Layout:
        shape, strides, off = lay
        ns, nst, d = [], [], 0
        for i in self.index:
            if i is None:
                ns.append(1)
                nst.append(shape[d] * strides[d] if d < len(shape) else 1)
            elif isinstance(i, slice):
                n = len(range(i.start, i.stop, i.step))
                if n:
                    off += i.start * strides[d]
                ns.append(n)
                nst.append(strides[d] * i.step)
                d += 1
            else:
                off += i * strides[d]
                d += 1
        return tuple(ns), tuple(nst), off


class Reshape(Step):
    __slots__ = ("shape",)

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = tuple(shape)

    def apply(self, x: Tensor) -> Tensor:
        return _ops().reshape(x, self.shape)

    def put(self, x: Tensor, v: Tensor) -> Tensor:
        return _ops().reshape(v, x.shape)

    def layout(self, lay: Layout) -> Layout | None:
        st = compute_stride(lay[0], lay[1], self.shape)
        return None if st is None else (self.shape, st, lay[2])


class Permute(Step):
    __slots__ = ("perm",)

    def __init__(self, perm: tuple[int, ...]) -> None:
        self.perm = tuple(perm)

    def apply(self, x: Tensor) -> Tensor:
        return _ops().permute(x, list(self.perm))

    def put(self, x: Tensor, v: Tensor) -> Tensor:
        inv = [0] * len(self.perm)
        for i, p in enumerate(self.perm):
            inv[p] = i
        return _ops().permute(v, inv)

    def layout(self, lay: Layout) -> Layout:
        shape, strides, off = lay
        return tuple(shape[p] for p in self.perm), tuple(strides[p] for p in self.perm), off


class Expand(Step):
    """Its elements overlap: a write to the whole expanded tensor is refused, as torch refuses writes to a
    tensor whose elements overlap. A write to a view of it that does not overlap (FiLM's
    `zeros(...).unsqueeze(1).expand(n, m, ...)` written by `[:, 0] = feats`) is torch's write to memory: each
    element of `x` the view reaches takes the value written at its one position (`written`, from `write`),
    which every expanded copy of it then reads."""

    __slots__ = ("shape",)

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = tuple(shape)

    def apply(self, x: Tensor) -> Tensor:
        return _ops().broadcast_to(x, self.shape)

    def put(self, x: Tensor, v: Tensor, written: Any = None) -> Tensor:
        if math.prod(self.shape) == x.numel():
            return _ops().reshape(v, x.shape)
        if written is None:
            raise _ops().fail(RuntimeError(
                "unsupported operation: more than one element of the written-to tensor refers to a single memory "
                f"location (an in-place write through x.expand{self.shape} of a tensor of shape {x.shape}). Please "
                "clone() the tensor before performing the operation."))
        import numpy as np

        from .ir import LiteralArray
        ops = _ops()
        at = np.flatnonzero(written >= 0)
        src = written.reshape(-1)[at]
        picked = ops.getitem(ops.reshape(v, (-1,)), (src.view(LiteralArray),))
        flat = ops.setitem(ops.reshape(x, (-1,)), (at.view(LiteralArray),), picked)
        return ops.reshape(flat, x.shape)

    def written(self, x_shape: tuple[int, ...], later: tuple[Step, ...]) -> Any:
        """For each element of `x` (of `x_shape`), the flat position in the expanded tensor that the view
        `later` of it writes, or -1; None where the view's elements overlap in `x` (or it has no layout)."""
        import numpy as np
        lay: Layout | None = (self.shape, contiguous_strides(self.shape), 0)
        for s in later:
            lay = s.layout(lay) if lay is not None else None
        if lay is None:
            return None
        shape, strides, off = lay
        pos = np.full((), off, np.int64)
        for n, st in zip(shape, strides):
            pos = pos[..., None] + np.arange(n, dtype=np.int64) * st
        pos = pos.reshape(-1)
        _, xst, _ = self.layout((x_shape, contiguous_strides(x_shape), 0))
        grid = np.full((), 0, np.int64)
        for n, st in zip(self.shape, xst):
            grid = grid[..., None] + np.arange(n, dtype=np.int64) * st
        xpos = grid.reshape(-1)[pos]
        if len(np.unique(xpos)) != len(xpos):
            return None
        out = np.full(math.prod(x_shape), -1, np.int64)
        out[xpos] = pos
        return out.reshape(x_shape)

    def layout(self, lay: Layout) -> Layout:
        shape, strides, off = lay
        lead = len(self.shape) - len(shape)
        st = [0] * lead + [0 if s == 1 and n != 1 else t for s, t, n in zip(shape, strides, self.shape[lead:])]
        return self.shape, tuple(st), off


class Diagonal(Step):
    """torch.diagonal(x, offset, dim1, dim2) with non-negative dims."""

    __slots__ = ("offset", "dim1", "dim2")

    def __init__(self, offset: int, dim1: int, dim2: int) -> None:
        self.offset, self.dim1, self.dim2 = offset, dim1, dim2

    def _geometry(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        n, m = shape[self.dim1], shape[self.dim2]
        r0, c0 = (0, self.offset) if self.offset >= 0 else (-self.offset, 0)
        return r0, c0, max(0, min(n - r0, m - c0))

    def apply(self, x: Tensor) -> Tensor:
        return _ops().diagonal(x, self.offset, self.dim1, self.dim2)

    def put(self, x: Tensor, v: Tensor) -> Tensor:
        ops = _ops()
        r0, c0, size = self._geometry(x.shape)
        if size == 0:
            return x
        perm = [i for i in range(x.ndim) if i not in (self.dim1, self.dim2)] + [self.dim1, self.dim2]
        y = ops.permute(x, perm)
        batch, m = y.shape[:-2], y.shape[-1]
        flat = ops.reshape(y, batch + (y.shape[-2] * m,))
        start = r0 * m + c0
        diag = slice(start, start + (size - 1) * (m + 1) + 1, m + 1)  # every (m + 1)-th element from start
        flat = ops.setitem(flat, (slice(None),) * len(batch) + (diag,), v)
        return Permute(tuple(perm)).put(x, ops.reshape(flat, y.shape))

    def layout(self, lay: Layout) -> Layout:
        shape, strides, off = lay
        r0, c0, size = self._geometry(shape)
        keep = [i for i in range(len(shape)) if i not in (self.dim1, self.dim2)]
        if size:
            off += r0 * strides[self.dim1] + c0 * strides[self.dim2]
        return (tuple(shape[i] for i in keep) + (size,),
                tuple(strides[i] for i in keep) + (strides[self.dim1] + strides[self.dim2],), off)


class Windows(Step):
    """Tensor.unfold(dim, size, step) (dim non-negative): windows of `size` elements every `step` along `dim`
    as a new last dim, a view as torch's. A write through it reaches the base where its windows do not
    overlap (size <= step); overlapping windows are refused as torch refuses them."""

    __slots__ = ("dim", "size", "step")

    def __init__(self, dim: int, size: int, step: int) -> None:
        self.dim, self.size, self.step = dim, size, step

    def apply(self, x: Tensor) -> Tensor:
        return _ops().unfold(x, self.dim, self.size, self.step)

    def put(self, x: Tensor, v: Tensor) -> Tensor:
        import numpy as np
        ops = _ops()
        shape, strides, off = self.layout((tuple(x.shape), contiguous_strides(tuple(x.shape)), 0))
        pos = np.full(shape, off, np.int64)
        for d, (n, st) in enumerate(zip(shape, strides)):
            pos = pos + (np.arange(n, dtype=np.int64) * st).reshape([n if i == d else 1 for i in range(len(shape))])
        pos = pos.reshape(-1)
        if len(np.unique(pos)) != pos.size:
            raise ops.fail(RuntimeError(
                "unsupported operation: more than one element of the written-to tensor refers to a single memory "
                f"location (an in-place write through x.unfold({self.dim}, {self.size}, {self.step}), whose windows "
                "overlap). Please clone() the tensor before performing the operation."))
        from .ir import LiteralArray
        flat = ops.setitem(ops.reshape(x, (-1,)), (pos.view(LiteralArray),), ops.reshape(v, (-1,)))
        return ops.reshape(flat, x.shape)

    def layout(self, lay: Layout) -> Layout:
        shape, strides, off = lay
        if not shape:  # unfold of a 0-d tensor: a 1-element dim
            shape, strides = (1,), (1,)
        nw = (shape[self.dim] - self.size) // self.step + 1
        return (shape[:self.dim] + (nw,) + shape[self.dim + 1:] + (self.size,),
                strides[:self.dim] + (strides[self.dim] * self.step,) + strides[self.dim + 1:] + (strides[self.dim],),
                off)


class Detach(Step):
    """`.detach()` / `.data`: the same elements with no gradient. A write through it gives the base
    the written value, with no gradient to what was written, while later reads of the base still
    differentiate to it (the write is invisible to autodiff, as torch's writes through `.data` are)."""

    __slots__ = ()

    def apply(self, x: Tensor) -> Tensor:
        from .tensor import _detached
        return _detached(x)

    def put(self, x: Tensor, v: Tensor) -> Tensor:
        from .tensor import _keeps_gradient
        return _keeps_gradient(x, v)

    def layout(self, lay: Layout) -> Layout:
        return lay


class AsStrided(Step):
    """torch.as_strided from the base: the elements at offset + sum(i_k * stride_k) of the base's
    row-major storage (static positions, so one gather). Writing through it is refused where two
    elements share a position, as through an expand."""

    __slots__ = ("size", "stride", "offset")

    def __init__(self, size: tuple[int, ...], stride: tuple[int, ...], offset: int) -> None:
        self.size, self.stride, self.offset = tuple(size), tuple(stride), int(offset)

    def positions(self) -> Any:
        import numpy as np
        pos = np.full(self.size, self.offset, np.int64)
        for d, (n, st) in enumerate(zip(self.size, self.stride)):
            shape = [1] * len(self.size)
            shape[d] = n
            pos = pos + (np.arange(n, dtype=np.int64) * st).reshape(shape)
        from .ir import LiteralArray
        return pos.view(LiteralArray)  # made from Python ints: a compiled graph keeps it (no retrace per call)

    def apply(self, x: Tensor) -> Tensor:
        ops = _ops()
        pos = self.positions()
        return ops.reshape(ops.getitem(ops.reshape(x, (-1,)), (pos.reshape(-1),)), self.size)

    def put(self, x: Tensor, v: Tensor) -> Tensor:
        import numpy as np
        ops = _ops()
        pos = self.positions().reshape(-1)
        if len(np.unique(pos)) != pos.size:
            raise ops.fail(RuntimeError(
                "unsupported operation: more than one element of the written-to tensor refers to a single memory "
                f"location (an in-place write through as_strided{self.size, self.stride}). Please clone() the "
                "tensor before performing the operation."))
        flat = ops.setitem(ops.reshape(x, (-1,)), (pos,), ops.reshape(v, (-1,)))
        return ops.reshape(flat, x.shape)

    def layout(self, lay: Layout) -> Layout:
        return self.size, self.stride, self.offset


def as_strided(x: Tensor, size: Any, stride: Any, storage_offset: int | None = None) -> Tensor:
    """torch.as_strided: a view of `x`'s storage (its base's, for a view) with the given sizes, strides
    (in elements) and offset (x's own by default), reading and writing the base as torch's does."""
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride):
        raise _ops().fail(RuntimeError(f"mismatch in length of strides and shape ({len(stride)} and {len(size)})"))
    if any(s < 0 for s in stride) or any(n < 0 for n in size):
        raise _ops().fail(RuntimeError(f"as_strided: negative sizes or strides are not supported, got size {size} "
                                       f"and stride {stride}"))
    base = x._view.base if x._view is not None else x
    off = layout_of(x)[2] if storage_offset is None else int(storage_offset)
    step = AsStrided(size, stride, off)
    last = off + sum((n - 1) * st for n, st in zip(size, stride)) if all(size) else -1
    if last >= base.numel() or off < 0:
        raise _ops().fail(RuntimeError(f"setStorage: sizes {list(size)}, strides {list(stride)}, storage offset {off} "
                                       f"require {last + 1} elements, but the storage holds {base.numel()}"))
    _RAW[0] += 1
    try:
        out = step.apply(base)
    finally:
        _RAW[0] -= 1
    out._view = ViewOf(base, (step,), step.layout(layout_of(base)))
    _register(base, out)
    return out


class ViewOf:
    """What makes a tensor a view: its base, the steps from the base, and its layout."""

    __slots__ = ("base", "steps", "layout")

    def __init__(self, base: Tensor, steps: tuple[Step, ...], layout: Layout) -> None:
        self.base, self.steps, self.layout = base, steps, layout

    def __repr__(self) -> str:
        return f"ViewOf(steps={self.steps}, layout={self.layout})"


def layout_of(x: Tensor) -> Layout:
    return x._view.layout if x._view is not None else (x.shape, contiguous_strides(x.shape), 0)


def link(x: Any, out: Tensor, step: Step) -> Tensor:
    """Make `out` (just computed from `x` by `step`) a view of `x`'s base; returns `out`. A reshape
    torch would copy (its layout is None) leaves `out` a tensor of its own."""
    if _RAW[0] or out is x or not isinstance(x, Tensor) or not isinstance(out, Tensor):
        return out
    lay = step.layout(layout_of(x))
    if lay is None:
        return out
    base, steps = (x._view.base, x._view.steps) if x._view is not None else (x, ())
    out._view = ViewOf(base, steps + (step,), lay)
    _register(base, out)
    return out


def _register(base: Tensor, view: Tensor) -> None:
    refs = base._views
    if refs is None:
        refs = base._views = []
    elif len(refs) >= 16 and len(refs) & (len(refs) - 1) == 0:  # at powers of two: drop the dead ones
        refs[:] = [r for r in refs if r() is not None]
    refs.append(weakref.ref(view))


def derive(base: Tensor, steps: tuple[Step, ...]) -> Tensor:
    """The value of the view `steps` of `base` now (not a view itself)."""
    _RAW[0] += 1
    try:
        x = base
        for s in steps:
            x = s.apply(x)
        return x
    finally:
        _RAW[0] -= 1


def write(view: Tensor, new: Tensor) -> None:
    """The in-place write `view := new`: the base gets `new` in the view's elements, then every live
    view of the base (this one included) reads the base's new value."""
    from .tensor import _replace
    info = view._view
    tr = new._trace
    if tr is not None and view._trace is not tr and not _is_state(tr, info.base) and _is_state(tr, view):
        # state that is a view of a tensor the trace does not hold (`nn.Parameter(q.unsqueeze(2))` of a
        # temporary `q`): the write is the view's own state update, which reaches the base when it is
        # written back after the call (eagerly, through here), as torch's shared storage would
        tr.record_update(view, new)
        return
    if any(isinstance(s, (Windows, AsStrided)) for s in info.steps):
        _write_positions(view, new)
        return
    det = next((k for k in reversed(range(len(info.steps))) if isinstance(info.steps[k], Detach)), None)
    detached = None
    _RAW[0] += 1
    try:
        xs = [info.base]
        for s in info.steps[:-1]:
            xs.append(s.apply(xs[-1]))
        cur = new
        for k in reversed(range(len(info.steps))):
            s, x = info.steps[k], xs[k]
            if k == det:
                detached = cur
            if isinstance(s, Expand) and math.prod(s.shape) != x.numel():
                cur = s.put(x, cur, s.written(tuple(x.shape), info.steps[k + 1:]))
            else:
                cur = s.put(x, cur)
    finally:
        _RAW[0] -= 1
    _replace(info.base, cur)
    if detached is not None and detached._trace is not None:
        _rehistory(info.base, info.steps[det], det, detached)


def _write_positions(view: Tensor, new: Tensor) -> None:
    """The write through a chain holding an unfold or an as_strided, whose windows may share elements: the
    base's elements at the view's positions (from its layout) take `new`, refused where two elements of
    the view are one of the base (a write through overlapping windows), as torch refuses; a view of them
    that does not overlap itself (`x.unfold(0, 2, 1)[:, 0]`) writes as torch's."""
    import numpy as np

    from .ir import LiteralArray
    from .tensor import _keeps_gradient, _replace
    ops = _ops()
    info = view._view
    pos = _positions(*info.layout)
    if np.unique(pos).size != pos.size:
        raise ops.fail(RuntimeError(
            "unsupported operation: more than one element of the written-to tensor refers to a single memory "
            f"location (an in-place write through {' -> '.join(type(s).__name__ for s in info.steps)} whose "
            "elements overlap). Please clone() the tensor before performing the operation."))
    base = info.base
    _RAW[0] += 1
    try:
        flat = ops.setitem(ops.reshape(base, (-1,)), (pos.view(LiteralArray),), ops.reshape(new, (-1,)))
        cur = ops.reshape(flat, base.shape)
    finally:
        _RAW[0] -= 1
    if any(isinstance(s, Detach) for s in info.steps):
        cur = _keeps_gradient(base, cur)
    _replace(base, cur)


def _rehistory(base: Tensor, det: Step, k: int, detached: Tensor) -> None:
    """After a write through the detached tensor `base...detach()` (the step `det`, k-th of the chain): as
    torch's, that tensor and its views take the write's own history (`x.detach().add_(b)` differentiates to
    `b` where it is read afterwards), while the base takes the value only (`Detach.put`)."""
    tr = _trace_mod.current_trace()
    for r in base._views or ():
        v = r()
        if v is None or v._view is None or v._view.base is not base or len(v._view.steps) <= k \
                or v._view.steps[k] is not det or v._value is None or v._trace is not tr:
            continue
        _RAW[0] += 1
        try:
            val = detached
            for s in v._view.steps[k + 1:]:
                val = s.apply(val)
        finally:
            _RAW[0] -= 1
        _store(v, val, tr)


def overlaps(view: Tensor) -> bool:
    """Whether the view's chain holds an expand that repeats elements (its writes need the indexed view)."""
    info = view._view
    return any(isinstance(s, Expand) for s in info.steps) and math.prod(view.shape) > info.base.numel()


def _dense(shape: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    """torch's is_non_overlapping_and_dense: some permutation of the dims is contiguous."""
    dims = sorted((st, n) for n, st in zip(shape, strides) if n != 1)
    expected = 1
    for st, n in dims:
        if st != expected:
            return False
        expected *= n
    return True


def check_partial_overlap(out: Tensor, operands: Any, what: str) -> None:
    """torch's refusal of an in-place op whose operand shares some but not all of the written tensor's memory
    (`x[1:].add_(x[:-1])`, `x.copy_(x.t())`: at::assert_no_partial_overlap, whose result would depend on the
    order memory is written in). torch checks dense tensors only: where either is not dense
    (`x[:, 1:] += x[:, :-1]`, `x[:, 1:] = x[:, :-1]`) it writes in memory order, each element reading what
    the earlier ones wrote, which a value cannot reproduce: Avalon refuses there too where the elements
    the op reads and writes intersect, and computes where they are disjoint (`x[:, ::2].add_(x[:, 1::2])`)."""
    base = out._view.base if out._view is not None else out
    for o in operands:
        if not isinstance(o, Tensor) or o is out or (o._view.base if o._view is not None else o) is not base:
            continue
        (sa, sta, oa), (sb, stb, ob) = layout_of(out), layout_of(o)
        if not math.prod(sa) or not math.prod(sb):
            continue
        ea = oa + sum((n - 1) * st for n, st in zip(sa, sta)) + 1
        eb = ob + sum((n - 1) * st for n, st in zip(sb, stb)) + 1
        if (oa, ea) == (ob, eb) and tuple(sta) == tuple(stb):
            continue  # torch's full overlap (the same memory with the same strides): computed
        if _dense(sa, sta) and _dense(sb, stb):
            hit = oa < eb and ob < ea
        else:
            import numpy as np
            pa, pb = _positions(sa, sta, oa), _positions(sb, stb, ob)
            hit = not np.array_equal(pa, pb) and np.intersect1d(pa, pb).size > 0  # (equal: element for element)
        if hit:
            raise _ops().fail(RuntimeError(
                f"unsupported operation: some elements of the input tensor and the written-to tensor refer to a "
                f"single memory location ({what} of a tensor with part of its memory: torch refuses, or writes in "
                "memory order). Please clone() the tensor before performing the operation."))


def self_overlapping(view: Tensor) -> bool:
    """Whether elements of the view share memory (an expand, overlapping unfold windows, an as_strided)."""
    info = view._view
    if info is None or not any(isinstance(s, (Expand, Windows, AsStrided)) for s in info.steps):
        return False
    import numpy as np
    pos = _positions(*info.layout)
    return np.unique(pos).size != pos.size


def fill_through(view: Tensor, value: Any, mask: Tensor | None = None) -> Tensor:
    """`fill_`/`zero_`/`masked_fill_`/`index_fill_` of a view whose elements share memory, which torch allows
    (every copy of an element takes the same value): each base element the view reaches where `mask` (the
    view's shape, None: everywhere) is true at any of its copies takes `value`."""
    import numpy as np

    from .ir import LiteralArray
    from .tensor import _keeps_gradient, _replace
    ops = _ops()
    info = view._view
    base = info.base
    pos = _positions(*info.layout)
    flat = ops.reshape(base, (-1,))
    val = value
    if mask is None:
        new = ops.setitem(flat, (np.unique(pos).view(LiteralArray),), val)
    else:
        from .ir import dtypes
        m = ops.cast(ops.reshape(ops.broadcast_to(mask, view.shape), (-1,)), base.dtype if base.dtype.is_float
                     else dtypes.float32)
        hits = ops.index_add(ops.zeros(base.numel(), dtype=m.dtype), 0, pos.view(LiteralArray), m)
        new = ops.where(ops.gt(hits, 0), val, flat)
        if new.dtype is not base.dtype:
            new = ops.cast(new, base.dtype)
    new = ops.reshape(new, base.shape)
    if any(isinstance(s, Detach) for s in info.steps):
        new = _keeps_gradient(base, new)
    _replace(base, new)
    return view


def _positions(shape: tuple[int, ...], strides: tuple[int, ...], off: int) -> Any:
    import numpy as np
    pos = np.full((), off, np.int64)
    for n, st in zip(shape, strides):
        pos = pos[..., None] + np.arange(n, dtype=np.int64) * st
    return pos.reshape(-1)


def _is_state(tr: Any, t: Tensor) -> bool:
    """Whether `t` is state of the trace `tr`: one of its inputs (an argument's or a model's tensor), or
    already updated by it."""
    v = tr.leaves.get(id(t))
    return id(t) in tr.updated or (v is not None and any(v is x for x in tr.graph.inputs))


def refresh(base: Tensor) -> None:
    """Derive every live view of `base` again from its current value (after a write to it)."""
    refs = base._views
    if not refs:
        return
    tr = _trace_mod.current_trace()
    live = []
    for r in refs:
        v = r()
        if v is None or v._view is None or v._view.base is not base:
            continue
        if v._value is not None and v._trace is not tr:  # a tracer of a finished trace: it is never read again
            continue
        live.append(r)
        val = derive(base, v._view.steps)
        _store(v, val, tr)
    base._views = live


def _store(v: Tensor, val: Tensor, tr: Any) -> None:
    """Make the view `v` read `val`: its SSA value in a trace, its storage eagerly."""
    if val._value is not None:
        if v._value is not None:
            v._value = val._value
        elif tr is not None:  # an eager view of a tensor the trace updates: reads in the trace see the update
            tr.leaves[id(v)] = val._value
            tr._keep.append(v)
        return
    if v._value is not None:
        return
    from .tensor import _set_data
    _set_data(v, val)

"""torch's functions whose result's shape depends on the input's values: `nonzero`, `argwhere`,
`masked_select`, `unique`, `unique_consecutive`.

A traced function has one graph for every input of a signature, so these cannot be recorded: they
run eagerly (the values decide the shape there; a traced tensor whose value is known while tracing,
one that depends on no input, counts as eager) and, given a traced tensor, raise an error that
names the function and the static-shape alternative (a mask with `where`, `masked_fill`, a sum of
the mask, `bincount` with a fixed `minlength`). `masked_select` needs only its mask to be known:
with a concrete mask it works on a traced input too (the selection is a static gather)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..ir import dtypes as dt
from ..tensor import Tensor, _mark_literal
from .core import _broadcast_shapes, _tensor, broadcast_to, fail, reshape
from .indexing import _positions, getitem

_ALTERNATIVES = {
    "nonzero": "use a boolean mask instead (av.where(mask, x, 0), x.masked_fill(~mask, 0), mask.sum() for the "
               "count)",
    "argwhere": "use a boolean mask instead (av.where(mask, x, 0), mask.sum() for the count)",
    "masked_select": "use av.where(mask, x, 0) or x.masked_fill(~mask, 0) and reduce over the masked tensor "
                     "(a sum of the mask counts the selected elements)",
    "unique": "use a static-size formulation: av.bincount(x, minlength=n) for counts of values in [0, n), or "
              "av.sort(x) and a comparison of neighbours as a mask",
    "unique_consecutive": "use a mask of changes, x[1:] != x[:-1], with av.where",
}


def _concrete(fn: str, *xs: Tensor) -> None:
    """Refuse a traced tensor whose value the trace does not know: the result's shape would depend on it. A traced
    tensor that depends on no input (a mask built from shapes or from literal lengths) or only on a model's
    tensors has a value while tracing, as `Tensor.item()` reads it (`Tensor._concrete`), and is accepted."""
    from ..tensor import TracerError
    for x in xs:
        if isinstance(x, Tensor) and x.is_traced:
            try:
                if x._concrete(f"{fn}'s argument") is not None:
                    continue
            except TracerError:
                pass
            raise fail(TypeError(f"{fn}: the result's shape depends on the tensor's values, which a traced or compiled "
                                 f"function does not know (it records one graph for all inputs); call it eagerly, "
                                 f"outside av.compile/av.grad, or {_ALTERNATIVES[fn]}"))


def nonzero(input: Any, *, as_tuple: bool = False, out: Any = None) -> Any:
    """The indices of the non-zero elements: an (n, ndim) i64 tensor in row-major order, or with
    `as_tuple` one 1-d tensor per dim. Eager only (see the module docstring)."""
    if out is not None:
        raise TypeError("nonzero: argument 'out' is not supported")
    x = _tensor(input)
    _concrete("nonzero", x)
    a = x.numpy()

    def out(r: np.ndarray) -> Tensor:  # of a traced input known while tracing: literal data, as `_concrete` says
        t = Tensor(r)
        if x.is_traced:
            _mark_literal(t)
        return t
    if a.ndim == 0:
        idx = np.zeros((1 if a.item() else 0, 0), dtype=np.int64)
        return (out(np.zeros((idx.shape[0],), dtype=np.int64)),) if as_tuple else out(idx)
    parts = np.nonzero(a)
    if as_tuple:
        return tuple(out(p.astype(np.int64)) for p in parts)
    return out(np.stack(parts, 1).astype(np.int64).reshape(-1, a.ndim))


def argwhere(input: Any) -> Tensor:
    """nonzero(input) as an (n, ndim) tensor."""
    x = _tensor(input)
    _concrete("argwhere", x)
    return nonzero(x)


def masked_select(input: Any, mask: Any, *, out: Any = None) -> Tensor:
    """The elements where `mask` holds (both broadcast to one shape), as a 1-d tensor in row-major
    order; differentiable (a gather). The mask must be concrete."""
    if out is not None:
        raise TypeError("masked_select: argument 'out' is not supported")
    x, m = _tensor(input), _tensor(mask)
    _concrete("masked_select", m)
    if m.dtype is not dt.bool_:
        raise fail(TypeError(f"masked_select: expected BoolTensor for mask, got {m.dtype.name}"))
    shape = _broadcast_shapes("masked_select", x.shape, m.shape)
    xb = broadcast_to(x, shape)
    mb = np.broadcast_to(m.numpy(), shape)
    if m.is_traced:  # computed while tracing from no input (a mask of lengths): its positions found by ops of
        # the graph, as `x[mask]` finds them, so no index array is baked in (which would trace again on every call)
        return getitem(reshape(xb, (-1,)), (_positions(reshape(broadcast_to(m, shape), (-1,)), int(mb.sum())),))
    return getitem(reshape(xb, (-1,)), (np.flatnonzero(mb),))


def _as_out(a: np.ndarray, d: dt.DType) -> Tensor:
    return Tensor(np.ascontiguousarray(a).astype(d.np if d is not dt.bfloat16 else np.float32), d)


def unique(input: Any, sorted: bool = True, return_inverse: bool = False, return_counts: bool = False,  # noqa: A002
           dim: int | None = None) -> Any:
    """torch.unique: the distinct values (sorted; nan values stay distinct, as torch's), or the
    distinct slices along `dim`; with `return_inverse` where each element went, with
    `return_counts` how often each occurs. Eager only."""
    x = _tensor(input)
    _concrete("unique", x)
    a = x.numpy()
    if dim is None:
        vals, inv, counts = np.unique(a.reshape(-1), return_inverse=True, return_counts=True, equal_nan=False)
        inv = inv.reshape(a.shape)
    else:
        from .core import check_dim
        d = check_dim("unique", dim, a.ndim)
        vals, inv, counts = np.unique(a, return_inverse=True, return_counts=True, axis=d)
        inv = inv.reshape(-1)
    out = [_as_out(vals, x.dtype)]
    if return_inverse:
        out.append(Tensor(inv.astype(np.int64)))
    if return_counts:
        out.append(Tensor(counts.astype(np.int64)))
    return out[0] if len(out) == 1 else tuple(out)


def unique_consecutive(input: Any, return_inverse: bool = False, return_counts: bool = False,
                       dim: int | None = None) -> Any:
    """torch.unique_consecutive: each run of equal consecutive elements (slices along `dim`) kept
    once; with `return_inverse` the run each element belongs to, `return_counts` the run lengths."""
    x = _tensor(input)
    _concrete("unique_consecutive", x)
    a = x.numpy()
    if dim is None:
        flat = a.reshape(-1)
        change = np.ones(flat.shape[0], dtype=bool)
        change[1:] = flat[1:] != flat[:-1]
        vals = flat[change]
        inv_shape = a.shape
    else:
        from .core import check_dim
        d = check_dim("unique_consecutive", dim, a.ndim)
        moved = np.moveaxis(a, d, 0)
        change = np.ones(moved.shape[0], dtype=bool)
        if moved.shape[0] > 1:
            change[1:] = (moved[1:] != moved[:-1]).reshape(moved.shape[0] - 1, -1).any(1)
        vals = np.moveaxis(moved[change], 0, d)
        inv_shape = (moved.shape[0],)
    run = np.cumsum(change) - 1
    out = [_as_out(vals, x.dtype)]
    if return_inverse:
        out.append(Tensor(run.reshape(inv_shape).astype(np.int64)))
    if return_counts:
        out.append(Tensor(np.bincount(run, minlength=int(change.sum())).astype(np.int64) if run.size else
                          np.zeros((0,), dtype=np.int64)))
    return out[0] if len(out) == 1 else tuple(out)


__all__ = ["argwhere", "masked_select", "nonzero", "unique", "unique_consecutive"]

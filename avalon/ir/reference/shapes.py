"""Reference rules of constants, broadcast, reductions, scans and shape ops."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .core import rule


@rule("constant")
def _constant(attrs: dict) -> np.ndarray:
    """A python scalar splat to `shape`, or a dense array holding exactly prod(shape) values in
    row-major order (a one-element array is splat too), converted to `dtype`."""
    shape = tuple(attrs["shape"])
    want = attrs["dtype"].np
    with np.errstate(all="ignore"):
        v = np.asarray(attrs["value"]).astype(want)
    if v.size == 1:
        return np.full(shape, v.reshape(()), dtype=want)
    return v.reshape(shape).copy()


@rule("iota")
def _iota(attrs: dict) -> np.ndarray:
    """Each element's index along `axis` (0, 1, 2, ... repeated over the other dims)."""
    shape = tuple(attrs["shape"])
    ax = attrs["axis"] % len(shape) if shape else 0
    idx = np.arange(shape[ax] if shape else 1, dtype=attrs["dtype"].np)
    view = [1] * len(shape)
    if shape:
        view[ax] = shape[ax]
    return np.broadcast_to(idx.reshape(view), shape).copy()


@rule("broadcast")
def _broadcast(attrs: dict, x: np.ndarray) -> np.ndarray:
    """numpy broadcasting to `shape` (dims right-aligned; size-1 dims stretch), as a fresh array."""
    return np.broadcast_to(x, tuple(attrs["shape"])).copy()


def _reduce_axes(x: np.ndarray, axes: Sequence[int]) -> tuple[int, ...]:
    # a 0-d tensor reduced over "axis 0" is itself (the IR allows it; numpy does not)
    return tuple(sorted(a % x.ndim for a in axes)) if x.ndim else ()


@rule("sum")
def _sum(attrs: dict, x: np.ndarray) -> np.ndarray:
    """Sum over `axes` (an empty list sums nothing); numpy's pairwise summation in the operand's
    precision. Integers wrap; booleans count, so the i1 result is "any"."""
    return np.sum(x, axis=_reduce_axes(x, attrs["axes"]), keepdims=attrs["keepdims"])


@rule("max")
def _max(attrs: dict, x: np.ndarray) -> np.ndarray:
    """Max over `axes`; a nan anywhere in a reduced slice gives nan (like torch.amax)."""
    return np.max(x, axis=_reduce_axes(x, attrs["axes"]), keepdims=attrs["keepdims"])


@rule("argmax")
def _argmax(attrs: dict, x: np.ndarray) -> np.ndarray:
    """i64 index of the FIRST maximum along `axis` (nan counts as the maximum, first nan wins)."""
    if x.ndim == 0:
        return np.zeros((), np.int64)
    return np.argmax(x, axis=attrs["axis"] % x.ndim, keepdims=attrs["keepdims"]).astype(np.int64)


@rule("reshape")
def _reshape(attrs: dict, x: np.ndarray) -> np.ndarray:
    """Row-major reshape."""
    return np.reshape(x, tuple(attrs["shape"]))


@rule("transpose")
def _transpose(attrs: dict, x: np.ndarray) -> np.ndarray:
    """Result dim i is operand dim perm[i]."""
    return np.transpose(x, attrs["perm"])


@rule("slice")
def _slice(attrs: dict, x: np.ndarray) -> np.ndarray:
    """x[start:limit:step] per dim (static, in range, step >= 1; an empty `step` means all ones)."""
    step = attrs["step"] or [1] * x.ndim
    return x[tuple(slice(s, l, st) for s, l, st in zip(attrs["start"], attrs["limit"], step))]


@rule("concat")
def _concat(attrs: dict, *xs: np.ndarray) -> np.ndarray:
    return np.concatenate(xs, axis=attrs["axis"])


@rule("pad")
def _pad(attrs: dict, x: np.ndarray) -> np.ndarray:
    """Constant padding: `low[d]` values before and `high[d]` after dim d, all equal to `value`
    (converted to the operand's dtype)."""
    with np.errstate(all="ignore"):
        fill = np.asarray(attrs["value"]).astype(x.dtype)
    return np.pad(x, list(zip(attrs["low"], attrs["high"])), constant_values=fill)



@rule("cumsum")
def _cumsum(attrs: dict, x: np.ndarray) -> np.ndarray:
    """Inclusive running sum along `axis` (jax.lax.cumsum); `reverse` sums from the end of the axis.
    Sequential in the operand's precision (f16 was widened to f32 by `evaluate`); integers wrap."""
    if x.ndim == 0:
        return x.copy()
    ax = attrs["axis"] % x.ndim
    if attrs["reverse"]:
        return np.flip(np.cumsum(np.flip(x, ax), axis=ax, dtype=x.dtype), ax)
    return np.cumsum(x, axis=ax, dtype=x.dtype)

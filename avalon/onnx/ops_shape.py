"""ONNX shape, indexing and constant ops as Avalon ops; shapes fold to numpy constants."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import ops
from ..ir import dtypes as dt
from ..tensor import Tensor
from .table import Node, T, axis, ints, onnx_op, static


@onnx_op("Identity", "Dropout")
def identity(node: Node, x: Any, ratio: Any = None, training: Any = None) -> Any:
    if training is not None and bool(static(training, "training_mode").reshape(-1)[0]):
        r = 0.5 if ratio is None else float(static(ratio, "ratio").reshape(-1)[0])
        if r > 0:
            raise node.unsupported("training-mode dropout draws Avalon's own random mask, not onnx's")
    if node.op_type == "Dropout" and node.n_outputs > 1:
        return x, np.ones(T(x).shape, dtype=bool)
    return x


@onnx_op("Constant")
def constant(node: Node) -> np.ndarray:
    for k in ("value", "value_float", "value_int", "value_floats", "value_ints"):
        if k in node.attrs:
            v = node.attrs[k]
            return np.asarray(v, dtype=np.float32 if "float" in k else (np.int64 if "int" in k else None))
    raise node.unsupported(f"Constant with attributes {sorted(node.attrs)} is not supported")


@onnx_op("Shape")
def shape(node: Node, x: Any) -> np.ndarray:
    s = list(T(x).shape if not isinstance(x, np.ndarray) else x.shape)
    start, end = node.attr("start", 0), node.attr("end", None)
    return np.array(s[slice(start, end)], dtype=np.int64)


@onnx_op("Size")
def size(node: Node, x: Any) -> np.ndarray:
    return np.array(math.prod(np.shape(x) if isinstance(x, np.ndarray) else T(x).shape), dtype=np.int64)


@onnx_op("ConstantOfShape")
def constant_of_shape(node: Node, s: Any) -> Any:
    v = node.attr("value")
    v = np.zeros(1, np.float32) if v is None else np.asarray(v).reshape(-1)
    shp = ints(s, "shape")
    if any(d == 0 for d in shp):
        return np.zeros(shp, v.dtype)
    return ops.full(shp, v[0].item(), dt.dtype(v.dtype))


@onnx_op("Reshape")
def reshape(node: Node, x: Any, s: Any) -> Tensor:
    x = T(x)
    shp = ints(s, "shape")
    if not node.attr("allowzero", 0):
        shp = [x.shape[i] if d == 0 else d for i, d in enumerate(shp)]
    return ops.reshape(x, shp)


@onnx_op("Flatten")
def flatten(node: Node, x: Any) -> Tensor:
    x = T(x)
    a = axis(node.attr("axis", 1), x.ndim)
    return ops.reshape(x, (math.prod(x.shape[:a]), math.prod(x.shape[a:])))


@onnx_op("Transpose")
def transpose(node: Node, x: Any) -> Tensor:
    x = T(x)
    perm = node.attr("perm") or list(reversed(range(x.ndim)))
    return ops.permute(x, [int(p) for p in perm])


def _axes_arg(node: Node, axes_in: Any) -> list[int] | None:
    if axes_in is not None:
        return ints(axes_in, "axes")
    a = node.attr("axes")
    return None if a is None else list(a)


@onnx_op("Squeeze")
def squeeze(node: Node, x: Any, axes_in: Any = None) -> Tensor:
    x = T(x)
    axes = _axes_arg(node, axes_in)
    return ops.squeeze(x) if axes is None else ops.squeeze(x, tuple(axis(a, x.ndim) for a in axes))


@onnx_op("Unsqueeze")
def unsqueeze(node: Node, x: Any, axes_in: Any = None) -> Any:
    axes = _axes_arg(node, axes_in) or []
    rank = (x.ndim if isinstance(x, np.ndarray) else T(x).ndim) + len(axes)
    shp = list(x.shape if isinstance(x, np.ndarray) else T(x).shape)
    for a in sorted(axis(a, rank) for a in axes):
        shp.insert(a, 1)
    return x.reshape(shp) if isinstance(x, np.ndarray) else ops.reshape(T(x), shp)


@onnx_op("Concat")
def concat(node: Node, *xs: Any) -> Any:
    if all(isinstance(x, np.ndarray) for x in xs):
        return np.concatenate(xs, axis=node.attr("axis"))
    ts = [T(x) for x in xs]
    ts = [t for t in ts if t.numel() > 0] or ts[:1]
    return ops.concat(ts, axis(node.attr("axis"), ts[0].ndim))


@onnx_op("Split")
def split(node: Node, x: Any, sizes: Any = None) -> tuple:
    x = T(x)
    a = axis(node.attr("axis", 0), x.ndim)
    if sizes is not None:
        parts = ints(sizes, "split")
    elif node.attr("split") is not None:
        parts = list(node.attr("split"))
    else:
        n = node.attr("num_outputs", node.n_outputs)
        chunk = -(-x.shape[a] // n)
        parts = [chunk] * (x.shape[a] // chunk) + ([x.shape[a] % chunk] if x.shape[a] % chunk else [])
    return tuple(ops.split(x, parts, a))


@onnx_op("Slice")
def slice_(node: Node, x: Any, starts: Any, ends: Any, axes_in: Any = None, steps: Any = None) -> Any:
    shp = x.shape if isinstance(x, np.ndarray) else T(x).shape
    st, en = ints(starts, "starts"), ints(ends, "ends")
    ax = ints(axes_in, "axes") if axes_in is not None else list(range(len(st)))
    sp = ints(steps, "steps") if steps is not None else [1] * len(st)
    index = [slice(None)] * len(shp)
    for s, e, a, k in zip(st, en, ax, sp):
        a = axis(a, len(shp))
        n = shp[a]
        s = max(-n - 1, min(s, n)) if k < 0 else max(-n, min(s, n))
        e = max(-n - 1, min(e, n))
        index[a] = slice(s, e, k)
    if isinstance(x, np.ndarray):
        return x[tuple(index)]
    x = T(x)
    lo, hi, step, flip = [], [], [], []
    for d, sl in enumerate(index):
        s, e, k = sl.indices(shp[d])
        if k < 0:
            flip.append(d)
            count = max(0, -(-(s - e) // -k))
            s, e, k = s - (count - 1) * -k if count else 0, s + 1 if count else 0, -k
        count = max(0, -(-(e - s) // k))
        lo.append(s)
        hi.append(s + (count - 1) * k + 1 if count else s)
        step.append(k)
    out = ops.slice_(x, lo, hi, step)
    for d in flip:
        out = ops.take(out, ops.arange(out.shape[d] - 1, -1, -1), d)
    return out


@onnx_op("Gather")
def gather(node: Node, x: Any, idx: Any) -> Any:
    a = node.attr("axis", 0)
    if isinstance(x, np.ndarray) and isinstance(idx, np.ndarray):
        return np.take(x, idx, axis=a)
    x = T(x)
    a = axis(a, x.ndim)
    i = T(idx)
    i = ops.where(ops.lt(i, 0), ops.add(i, x.shape[a]), i)
    return ops.take(x, ops.cast(i, dt.int64), a)


@onnx_op("Expand")
def expand(node: Node, x: Any, s: Any) -> Tensor:
    x = T(x)
    return ops.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(ints(s, "shape"))))


@onnx_op("Tile")
def tile(node: Node, x: Any, reps: Any) -> Tensor:
    x = T(x)
    for d, r in enumerate(ints(reps, "repeats")):
        if r != 1:
            x = ops.concat([x] * r, d) if r > 0 else ops.slice_(x, [0] * x.ndim, [*x.shape[:d], 0, *x.shape[d + 1:]])
    return x


@onnx_op("Pad")
def pad(node: Node, x: Any, pads: Any = None, value: Any = None, axes_in: Any = None) -> Tensor:
    x = T(x)
    mode = node.attr("mode", "constant")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if mode not in ("constant", "edge", "reflect", "wrap"):
        raise node.unsupported(f"mode {mode!r} is not supported")
    p = ints(pads, "pads") if pads is not None else list(node.attr("pads"))
    ax = ints(axes_in, "axes") if axes_in is not None else list(range(x.ndim))
    k = len(ax)
    widths = [(0, 0)] * x.ndim
    for i, a in enumerate(ax):
        widths[axis(a, x.ndim)] = (p[i], p[i + k])
    v = float(static(value, "constant_value").reshape(-1)[0]) if value is not None else 0.0
    if any(lo < 0 or hi < 0 for lo, hi in widths):
        x = ops.slice_(x, [max(-lo, 0) for lo, _ in widths], [s - max(-hi, 0) for s, (_, hi) in zip(x.shape, widths)])
        widths = [(max(lo, 0), max(hi, 0)) for lo, hi in widths]
    if mode == "constant":
        return ops.pad(x, widths, v)
    from .ops_vision import literal
    for a, (lo, hi) in enumerate(widths):  # numpy's edge / reflect / wrap of the index range, one gather
        if lo or hi:
            if x.shape[a] == 0 or (mode == "reflect" and x.shape[a] == 1):
                raise node.unsupported(f"{mode} padding of an axis of length {x.shape[a]}")
            x = ops.take(x, literal(np.pad(np.arange(x.shape[a]), (lo, hi), mode=mode)), a)
    return x


@onnx_op("Range")
def range_(node: Node, start: Any, limit: Any, delta: Any) -> Any:
    s, l, d = (static(v, "range bound") for v in (start, limit, delta))
    r = np.arange(s.item(), l.item(), d.item()).astype(s.dtype)
    bf16 = isinstance(start, Tensor) and start.dtype.name == "bf16"  # held as float32: keep its dtype
    return ops.cast(Tensor(r), start.dtype) if bf16 else r


@onnx_op("Trilu")
def trilu(node: Node, x: Any, k: Any = None) -> Tensor:
    kk = int(static(k, "k").reshape(-1)[0]) if k is not None else 0
    return (ops.triu if node.attr("upper", 1) else ops.tril)(T(x), kk)


@onnx_op("EyeLike")
def eye_like(node: Node, x: Any) -> Tensor:
    from .dtypes import avalon_dtype
    x = T(x)
    d = avalon_dtype(node.attr("dtype"), node) if node.attr("dtype") is not None else x.dtype
    k = node.attr("k", 0)
    rows = ops.iota(x.shape, 0)
    cols = ops.iota(x.shape, 1)
    return ops.cast(ops.eq(ops.add(rows, k), cols), d)


@onnx_op("OneHot")
def one_hot(node: Node, idx: Any, depth: Any, values: Any) -> Tensor:
    n = int(static(depth, "depth").reshape(-1)[0])
    i = ops.cast(T(idx), dt.int64)
    i = ops.where(ops.lt(i, 0), ops.add(i, n), i)
    v = T(values)
    oh = ops.eq(ops.unsqueeze(i, -1), ops.iota(i.shape + (n,), i.ndim))  # out of range: all off
    a = node.attr("axis", -1)
    if a != -1 and a != oh.ndim - 1:
        oh = ops.permute(oh, [*range(axis(a, oh.ndim))] + [oh.ndim - 1] + list(range(axis(a, oh.ndim), oh.ndim - 1)))
    return ops.where(oh, ops.take(v, 1), ops.take(v, 0))

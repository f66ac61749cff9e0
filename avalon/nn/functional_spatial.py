"""torch.nn.functional's padding, resizing, adaptive pooling and 1-d convolution, as composites of
the primitives (`pad`, `slice`, `concat`, `take`, `conv2d`), so autodiff and fusion see through them.
Re-exported by `avalon.nn.functional`."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .. import ops
from ..ir import dtypes as dt
from ..tensor import Tensor


def _t(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else ops.core._tensor(x)


def pad(input: Any, pad: Sequence[int], mode: str = "constant", value: float | None = None) -> Tensor:
    """torch's pad order: (left, right) of the last dim first, then of the one before, ... Negative
    amounts crop. Only mode='constant' is supported."""
    if mode != "constant":
        raise NotImplementedError(f"pad: mode={mode!r} is not supported; use 'constant'")
    x = _t(input)
    pad = [int(p) for p in pad]
    if len(pad) % 2 or len(pad) // 2 > x.ndim:
        raise ValueError(f"pad: argument 'pad' must have an even length of at most 2 * {x.ndim}, got {len(pad)}")
    low, high = [0] * x.ndim, [0] * x.ndim
    for k in range(len(pad) // 2):
        low[x.ndim - 1 - k], high[x.ndim - 1 - k] = pad[2 * k], pad[2 * k + 1]
    start = [max(-lo, 0) for lo in low]
    limit = [s - max(-hi, 0) for s, hi in zip(x.shape, high)]
    if any(lo > li for lo, li in zip(start, limit)):
        raise ValueError(f"pad: {pad} crops more than the input's shape {x.shape}")
    x = ops.slice_(x, start, limit)
    return ops.pad(x, [(max(lo, 0), max(hi, 0)) for lo, hi in zip(low, high)], 0.0 if value is None else value)


def conv1d(input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
           groups: int = 1) -> Tensor:
    """(N, C, L) x (O, C/groups, K) cross-correlation: conv2d over a height-1 image."""
    from .functional import conv2d
    x, w = _t(input), _t(weight)
    unbatched = x.ndim == 2
    if unbatched:
        x = ops.expand_dims(x, 0)
    if x.ndim != 3 or w.ndim != 3:
        raise ValueError(f"conv1d: expected (N, C, L) input and (O, C/groups, K) weight, got {x.shape} and {w.shape}")
    one = lambda v: v[0] if isinstance(v, (tuple, list)) else v  # noqa: E731
    pad2 = padding if isinstance(padding, str) else (0, one(padding))
    y = conv2d(ops.expand_dims(x, 2), ops.expand_dims(w, 2), bias, (1, one(stride)), pad2, (1, one(dilation)), groups)
    y = ops.squeeze(y, 2)
    return ops.squeeze(y, 0) if unbatched else y


def _adaptive_windows(n: int, out: int) -> list[tuple[int, int]]:
    """torch's adaptive pooling windows: [floor(i n / out), ceil((i + 1) n / out))."""
    return [(i * n // out, -(-(i + 1) * n // out)) for i in range(out)]


def _adaptive(name: str, input: Any, output_size: Any, reduce: Any) -> Tensor:
    x = _t(input)
    if x.ndim not in (3, 4):
        raise ValueError(f"{name}: expected a 3-d or 4-d input, got shape {x.shape}")
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    oh, ow = (x.shape[-2] if size[0] is None else size[0]), (x.shape[-1] if size[1] is None else size[1])
    h, w = x.shape[-2:]
    if h % oh == 0 and w % ow == 0:  # equal windows: one reshape and one reduction
        y = ops.reshape(x, x.shape[:-2] + (oh, h // oh, ow, w // ow))
        return reduce(y, (-3, -1))
    rows = []
    for r0, r1 in _adaptive_windows(h, oh):
        cols = []
        for c0, c1 in _adaptive_windows(w, ow):
            win = x[..., r0:r1, c0:c1]
            cols.append(reduce(win, (-2, -1)))
        rows.append(ops.stack(cols, -1))
    return ops.stack(rows, -2)


def adaptive_avg_pool2d(input: Any, output_size: Any) -> Tensor:
    return _adaptive("adaptive_avg_pool2d", input, output_size, lambda y, ax: ops.mean(y, ax))


def adaptive_max_pool2d(input: Any, output_size: Any, return_indices: bool = False) -> Tensor:
    if return_indices:
        raise NotImplementedError("adaptive_max_pool2d: argument 'return_indices' is not supported")
    return _adaptive("adaptive_max_pool2d", input, output_size, lambda y, ax: ops.amax(y, ax))


def _resize_axis(x: Tensor, axis: int, out: int, scale: float | None, mode: str, align_corners: bool) -> Tensor:
    """Resample one axis; source positions come from `iota` in f32 as torch computes them
    (area_pixel_compute_source_index, nearest_idx), so nothing is a captured array."""
    n = x.shape[axis]
    i = ops.iota((out,), 0, dt.float32)
    r = 1.0 / scale if scale else n / out
    if mode == "nearest":
        return ops.take(x, ops.minimum(ops.cast(ops.mul(i, r), dt.int64), n - 1), axis)  # floor of >= 0
    if align_corners:
        src = ops.mul(i, (n - 1) / (out - 1) if out > 1 else 0.0)
    else:
        src = ops.maximum(ops.sub(ops.mul(ops.add(i, 0.5), r), 0.5), 0.0)
    lo = ops.minimum(ops.cast(src, dt.int64), n - 1)
    hi = ops.minimum(ops.add(lo, 1), n - 1)
    shape = [1] * x.ndim
    shape[axis] = out
    f1 = ops.reshape(ops.cast(ops.sub(src, ops.cast(lo, dt.float32)), x.dtype), shape)
    a, b = ops.take(x, lo, axis), ops.take(x, hi, axis)
    return ops.add(ops.mul(a, ops.sub(1.0, f1)), ops.mul(b, f1))


def interpolate(input: Any, size: Any = None, scale_factor: Any = None, mode: str = "nearest",
                align_corners: bool | None = None, recompute_scale_factor: bool | None = None,
                antialias: bool = False) -> Tensor:
    """Resize the spatial dims of (N, C, L) / (N, C, H, W) input: 'nearest', 'linear' or 'bilinear'
    (align_corners False or True), with torch's coordinate conventions."""
    x = _t(input)
    if antialias:
        raise NotImplementedError("interpolate: argument 'antialias' is not supported")
    if mode not in ("nearest", "linear", "bilinear"):
        raise NotImplementedError(f"interpolate: mode={mode!r} is not supported (nearest, linear, bilinear)")
    if mode == "nearest" and align_corners is not None:
        raise ValueError("interpolate: align_corners option can only be set with the interpolating modes")
    k = x.ndim - 2
    if k < 1 or (mode == "bilinear" and k != 2) or (mode == "linear" and k != 1):
        raise ValueError(f"interpolate: mode={mode!r} does not fit an input of shape {x.shape}")
    if (size is None) == (scale_factor is None):
        raise ValueError("interpolate: give exactly one of 'size' and 'scale_factor'")
    if size is not None:
        outs = [int(size)] * k if isinstance(size, int) else [int(s) for s in size]
        scales: list[float | None] = [None] * k
    else:
        sf = [float(scale_factor)] * k if isinstance(scale_factor, (int, float)) else [float(s) for s in scale_factor]
        outs = [int(math.floor(n * s)) for n, s in zip(x.shape[2:], sf)]
        scales = [None] * k if recompute_scale_factor else sf
    y = x
    for j in range(k):
        y = _resize_axis(y, 2 + j, outs[j], scales[j], mode, bool(align_corners))
    return y


def upsample(input: Any, size: Any = None, scale_factor: Any = None, mode: str = "nearest",
             align_corners: bool | None = None) -> Tensor:
    return interpolate(input, size, scale_factor, mode, align_corners)

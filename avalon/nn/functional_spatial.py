"""torch.nn.functional's padding, resizing, adaptive pooling and 1-d convolution, as composites of
the primitives (`pad`, `slice`, `concat`, `take`, `conv2d`), so autodiff and fusion see through them.
Re-exported by `avalon.nn.functional`."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import amp, ops
from ..ir import dtypes as dt
from ..ops.dtype_kernels import check_kernel
from ..tensor import Tensor


def _t(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else ops.core._tensor(x)


_PAD_MODES = ("constant", "reflect", "replicate", "circular")


def pad(input: Any, pad: Sequence[int], mode: str = "constant", value: float | None = None) -> Tensor:
    """torch's pad order: (left, right) of the last dim first, then of the one before, ...
    'constant' pads any dims with `value` (negative amounts crop); 'reflect', 'replicate' and
    'circular' pad the last 1, 2 or 3 dims of an input with 1 or 2 more (batch and channel), as torch.
    They are slices, a gather with iota-computed indices, broadcasts and one concat per padded dim,
    so gradients flow back into the mirrored or repeated entries."""
    if mode not in _PAD_MODES:
        raise NotImplementedError(f"pad: mode={mode!r} is not supported; use one of {', '.join(_PAD_MODES)}")
    x = _t(input)
    bad = next((p for p in pad if isinstance(p, (bool, np.bool_)) or not (
        isinstance(p, (int, np.integer)) or (isinstance(p, Tensor) and p.ndim == 0 and p.dtype.is_int))), None)
    if bad is not None:  # (int(1.5) truncated the amount in silence)
        raise ops.fail(TypeError(f"pad(): argument 'pad' must be tuple of ints, but found element of type "
                                 f"{type(bad).__name__} ({bad!r})"))
    pad = [int(p) for p in pad]
    if len(pad) % 2 or len(pad) // 2 > x.ndim:
        raise ValueError(f"pad: argument 'pad' must have an even length of at most 2 * {x.ndim}, got {len(pad)}")
    low, high = [0] * x.ndim, [0] * x.ndim
    for k in range(len(pad) // 2):
        low[x.ndim - 1 - k], high[x.ndim - 1 - k] = pad[2 * k], pad[2 * k + 1]
    if mode != "constant":
        return _pad_edges(x, pad, low, high, mode, value)
    start = [max(-lo, 0) for lo in low]
    limit = [s - max(-hi, 0) for s, hi in zip(x.shape, high)]
    if any(lo > li for lo, li in zip(start, limit)):
        raise ValueError(f"pad: {pad} crops more than the input's shape {x.shape}")
    x = ops.slice_(x, start, limit)
    return ops.pad(x, [(max(lo, 0), max(hi, 0)) for lo, hi in zip(low, high)], 0.0 if value is None else value)


def _pad_edges(x: Tensor, pad: list[int], low: list[int], high: list[int], mode: str, value: Any) -> Tensor:
    """The non-constant modes, with torch's checks: value unset, 1-3 padded dims, the input 1 or 2
    dims longer, reflect padding shorter than its dim, circular padding at most as long."""
    k = len(pad) // 2
    if value is not None and value != 0:
        raise ValueError(f'pad: padding mode "{mode}" doesn\'t take in value argument')
    if not 1 <= k <= 3 or x.ndim not in (k + 1, k + 2):
        raise NotImplementedError(f"pad: mode={mode!r} pads the last 1, 2 or 3 dims of a 2-5 d input (1 or 2 dims "
                                  f"more than the padded ones); got pad={tuple(pad)} for input shape {x.shape}")
    # negative amounts crop, as torch: 'circular' wraps the cropped input around, 'reflect' and
    # 'replicate' index the whole input (pad the positive amounts, then crop)
    crop = [(max(-lo, 0), max(-hi, 0)) for lo, hi in zip(low, high)]
    if mode == "circular" and min(pad) < 0:
        x = ops.slice_(x, [a for a, _ in crop], [n - b for n, (a, b) in zip(x.shape, crop)])
        crop = [(0, 0)] * x.ndim
    low, high = [max(lo, 0) for lo in low], [max(hi, 0) for hi in high]
    for axis in range(x.ndim - k, x.ndim):
        n, lo, hi = x.shape[axis], low[axis], high[axis]
        if mode == "reflect" and (lo >= n or hi >= n):
            raise ValueError(f"pad: padding size should be less than the corresponding input dimension, but got "
                             f"padding ({lo}, {hi}) at dimension {axis} of input {x.shape}")
        if mode == "circular" and (lo > n or hi > n):
            raise ValueError(f"pad: padding ({lo}, {hi}) at dimension {axis} of input {x.shape} causes wrapping "
                             "around more than once")
        if mode == "replicate" and n == 0 and (lo or hi):
            raise ValueError(f"pad: cannot replicate an empty dimension {axis} of input {x.shape}")
        parts = [_edge(x, axis, lo, mode, True)] if lo else []
        parts.append(x)
        if hi:
            parts.append(_edge(x, axis, hi, mode, False))
        if len(parts) > 1:
            x = ops.concat(parts, axis)
    if any(a or b for a, b in crop):
        if any(a + b >= n for n, (a, b) in zip(x.shape, crop) if a or b):  # torch's: at least 1 entry left
            raise ValueError(f"pad: {tuple(pad)} in mode {mode!r} leaves no entries of the input's shape")
        x = ops.slice_(x, [a for a, _ in crop], [n - b for n, (a, b) in zip(x.shape, crop)])
    return x


def _edge(x: Tensor, axis: int, amount: int, mode: str, left: bool) -> Tensor:
    """The `amount` entries that go before (left) or after the input along `axis`."""
    n = x.shape[axis]

    def cut(a: int, b: int) -> Tensor:
        start, limit = [0] * x.ndim, list(x.shape)
        start[axis], limit[axis] = a, b
        return ops.slice_(x, start, limit)

    if mode == "circular":
        return cut(n - amount, n) if left else cut(0, amount)
    if mode == "replicate":
        edge = cut(0, 1) if left else cut(n - 1, n)
        shape = list(x.shape)
        shape[axis] = amount
        return ops.broadcast_to(edge, shape)
    step = ops.iota((amount,), 0, dt.int64)  # reflect: x[amount], ..., x[1] / x[n-2], ..., x[n-1-amount]
    return ops.take(x, ops.sub(amount if left else n - 2, step), axis)


def conv_padding(padding: Any, kernel: Sequence[int], dilation: Sequence[int]) -> list[int]:
    """A conv layer's padding as F.pad's list (last dim first, each side twice), torch's
    `_reversed_padding_repeated_twice`; 'same' puts the odd extra entry at the end, as torch."""
    k = len(kernel)
    if padding == "valid":
        return [0] * 2 * k
    out: list[int] = []
    for i in reversed(range(k)):
        if padding == "same":
            total = dilation[i] * (kernel[i] - 1)
            out += [total // 2, total - total // 2]
        else:
            out += [padding[i], padding[i]]
    return out


def _single(v: Any, where: str, name: str) -> int:
    """torch's `_single`: an int or a 1-entry sequence of one (a float, which `int()` truncated,
    is an error, as in torch)."""
    from .functional import _int_entries
    if isinstance(v, (tuple, list)):
        if len(v) != 1:
            raise ValueError(f"{where}: argument '{name}' needs 1 entry, got {tuple(v)}")
        v = v[0]
    return _int_entries((v,), f"{where}: argument '{name}'")[0]


def _int_arg(v: Any, where: str, name: str) -> int:
    """An int argument; a float one is an error, as in torch."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ops.fail(TypeError(f"{where}(): argument '{name}' must be int, not {type(v).__name__}"))
    return int(v)


def _as_1d(where: str, input: Any) -> Tensor:
    """(C, L) or (N, C, L) input as a height-1 image, for the 2-d pooling ops."""
    x = _t(input)
    if x.ndim not in (2, 3):
        raise ValueError(f"{where}: expected a 2-d (C, L) or 3-d (N, C, L) input, got shape {x.shape}")
    return ops.expand_dims(x, -2)


def max_pool1d(input: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
               ceil_mode: bool = False, return_indices: bool = False) -> Tensor:
    """max_pool2d over a height-1 image."""
    from .functional import max_pool2d
    x = _as_1d("max_pool1d", input)
    if not return_indices:  # torch's max_pool1d_impl (with indices it runs max_pool2d, which takes integers)
        check_kernel("max_pool1d", "max_pool1d_impl", "integer", x)
    k = _single(kernel_size, "max_pool1d", "kernel_size")
    s = k if stride is None or stride == () or stride == [] else _single(stride, "max_pool1d", "stride")
    y = max_pool2d(x, (1, k), (1, s), (0, _single(padding, "max_pool1d", "padding")),
                   (1, _single(dilation, "max_pool1d", "dilation")), ceil_mode, return_indices)
    if return_indices:  # (values, indices): a height-1 plane's flat indices are the positions along L
        return ops.squeeze(y[0], -2), ops.squeeze(y[1], -2)
    return ops.squeeze(y, -2)


def avg_pool1d(input: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, ceil_mode: bool = False,
               count_include_pad: bool = True) -> Tensor:
    """avg_pool2d over a height-1 image."""
    from .functional import avg_pool2d
    x = _as_1d("avg_pool1d", input)
    k = _single(kernel_size, "avg_pool1d", "kernel_size")
    s = k if stride is None or stride == () or stride == [] else _single(stride, "avg_pool1d", "stride")
    y = avg_pool2d(x, (1, k), (1, s), (0, _single(padding, "avg_pool1d", "padding")), ceil_mode, count_include_pad)
    return ops.squeeze(y, -2)


def adaptive_avg_pool1d(input: Any, output_size: Any) -> Tensor:
    x = _as_1d("adaptive_avg_pool1d", input)
    size = (1, _single(output_size, "adaptive_avg_pool1d", "output_size"))
    return ops.squeeze(adaptive_avg_pool2d(x, size), -2)


def adaptive_max_pool1d(input: Any, output_size: Any, return_indices: bool = False) -> Tensor:
    x = _as_1d("adaptive_max_pool1d", input)
    size = (1, _single(output_size, "adaptive_max_pool1d", "output_size"))
    if return_indices:
        v, i = adaptive_max_pool2d(x, size, True)
        return ops.squeeze(v, -2), ops.squeeze(i, -2)
    return ops.squeeze(adaptive_max_pool2d(x, size), -2)


def pixel_shuffle(input: Any, upscale_factor: int) -> Tensor:
    """(*, C r^2, H, W) -> (*, C, H r, W r): one reshape, one transpose, one reshape."""
    x, r = _t(input), _int_arg(upscale_factor, "pixel_shuffle", "upscale_factor")  # (int(2.5) truncated a float)
    if x.ndim < 3 or r < 1 or x.shape[-3] % (r * r):  # (torch's RuntimeError; ArgumentError is a ValueError too)
        raise ops.fail(ops.ArgumentError(f"pixel_shuffle: expected an input of at least 3 dims whose channel dim (-3) "
                                         f"is divisible by upscale_factor**2 = {r * r}, got shape {x.shape}"))
    *lead, c, h, w = x.shape
    b = len(lead)
    y = ops.reshape(x, (*lead, c // (r * r), r, r, h, w))
    y = ops.permute(y, (*range(b), b, b + 3, b + 1, b + 4, b + 2))
    return ops.reshape(y, (*lead, c // (r * r), h * r, w * r))


def pixel_unshuffle(input: Any, downscale_factor: int) -> Tensor:
    """(*, C, H r, W r) -> (*, C r^2, H, W), the inverse of pixel_shuffle."""
    x, r = _t(input), _int_arg(downscale_factor, "pixel_unshuffle", "downscale_factor")  # (int(2.5) truncated a float)
    if x.ndim < 3 or r < 1 or x.shape[-2] % r or x.shape[-1] % r:
        raise ops.fail(ops.ArgumentError(f"pixel_unshuffle: expected an input of at least 3 dims whose height and "
                                         f"width are divisible by downscale_factor = {r}, got shape {x.shape}"))
    *lead, c, h, w = x.shape
    b = len(lead)
    y = ops.reshape(x, (*lead, c, h // r, r, w // r, r))
    y = ops.permute(y, (*range(b), b, b + 2, b + 4, b + 1, b + 3))
    return ops.reshape(y, (*lead, c * r * r, h // r, w // r))


def conv3d(input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
           groups: int = 1) -> Tensor:
    """(N, C, D, H, W) x (O, C/groups, kd, kh, kw) cross-correlation as a sum over the kd depth taps
    of conv2d over (N D_out, C, H, W) slices: no new primitive, so every backend, autodiff and the
    Triton conv kernels serve it. Padding may be an int, a triple, 'valid' or 'same'."""
    x, w = _t(input), _t(weight)
    if x.ndim == 4:
        return ops.squeeze(conv3d(ops.expand_dims(x, 0), w, bias, stride, padding, dilation, groups), 0)
    if x.ndim != 5 or w.ndim != 5:
        raise ValueError(f"conv3d: expected a 4-d or 5-d input and a 5-d weight, got {x.shape} and {w.shape}")
    from .functional import _check_conv
    _check_conv("conv3d", x, w, bias, groups)
    s, d = _triple(stride, "stride"), _triple(dilation, "dilation")
    if isinstance(padding, str):
        if padding not in ("valid", "same"):
            raise ValueError(f"Invalid padding string {padding!r}, should be one of {{'valid', 'same'}}")
        if padding == "same" and s != (1, 1, 1):
            raise ValueError("padding='same' is not supported for strided convolutions")
        x = pad(x, conv_padding(padding, w.shape[2:], d))
        p = (0, 0, 0)
    else:
        p = _triple(padding, "padding")
        x = ops.pad(x, [(0, 0), (0, 0), (p[0], p[0]), (0, 0), (0, 0)])
    n, c, depth, h, wd = x.shape
    kd = w.shape[2]
    dout = (depth - d[0] * (kd - 1) - 1) // s[0] + 1
    if dout < 1:
        raise ValueError(f"conv3d: input {x.shape} (padded) is smaller than the kernel {tuple(w.shape[2:])}")
    y = None
    for t in range(kd):
        a = t * d[0]
        xs = ops.slice_(x, [0, 0, a, 0, 0], [n, c, a + (dout - 1) * s[0] + 1, h, wd], [1, 1, s[0], 1, 1])
        xs = ops.reshape(ops.permute(xs, (0, 2, 1, 3, 4)), (n * dout, c, h, wd))
        wt = ops.reshape(ops.slice_(w, [0, 0, t, 0, 0], [w.shape[0], w.shape[1], t + 1, *w.shape[3:]]),
                         (w.shape[0], w.shape[1], *w.shape[3:]))
        yt = ops.conv2d(xs, wt, stride=s[1:], padding=p[1:], dilation=d[1:], groups=groups)
        y = yt if y is None else ops.add(y, yt)
    assert y is not None
    y = ops.permute(ops.reshape(y, (n, dout, *y.shape[1:])), (0, 2, 1, 3, 4))
    return y if bias is None else ops.add(y, ops.reshape(amp.autocast_bias(_t(bias)), (1, -1, 1, 1, 1)))


def _triple(v: Any, name: str, where: str = "conv3d") -> tuple[int, int, int]:
    from .functional import _int_entries
    if isinstance(v, (tuple, list)):
        t = _int_entries(v, f"{where}: argument '{name}'")
        if len(t) == 1:
            t = t * 3
        if len(t) != 3:
            raise ValueError(f"{where}: argument '{name}' needs 1 or 3 entries, got {t}")
        return t  # type: ignore[return-value]
    i = _int_entries((v,), f"{where}: argument '{name}'")[0]
    return i, i, i


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
    from .functional import _check_conv
    _check_conv("conv1d", x, w, bias, groups)
    pad2 = padding if isinstance(padding, str) else (0, _single(padding, "conv1d", "padding"))
    s1, d1 = _single(stride, "conv1d", "stride"), _single(dilation, "conv1d", "dilation")
    y = conv2d(ops.expand_dims(x, 2), ops.expand_dims(w, 2), bias, (1, s1), pad2, (1, d1), groups)
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
    if len(size) != 2:  # (a third entry was ignored in silence)
        raise ops.fail(RuntimeError(f"{name}: output_size must be 2, got {output_size!r}"))
    oh, ow = (x.shape[-2] if size[0] is None else size[0]), (x.shape[-1] if size[1] is None else size[1])
    h, w = x.shape[-2:]
    if oh == 0 or ow == 0:  # torch's empty output (the window arithmetic divided by zero)
        return ops.broadcast_to(x[..., :min(oh, 1), :min(ow, 1)], (*x.shape[:-2], oh, ow))
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
    """With `return_indices`, (values, indices into H*W): the 3-d pooling's over a depth of one."""
    check_kernel("adaptive_max_pool2d", "adaptive_max_pool2d", "integer", input)
    if return_indices:
        from .functional_3d import adaptive_max_pool3d_with_indices
        x = _t(input)
        if x.ndim not in (3, 4):
            raise ValueError(f"adaptive_max_pool2d: expected a 3-d or 4-d input, got shape {x.shape}")
        oh, ow = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        size = (1, x.shape[-2] if oh is None else oh, x.shape[-1] if ow is None else ow)
        v, i = adaptive_max_pool3d_with_indices(ops.expand_dims(x, -3), size)
        return ops.squeeze(v, -3), ops.squeeze(i, -3)
    return _adaptive("adaptive_max_pool2d", input, output_size, lambda y, ax: ops.amax(y, ax))


def _resize_axis(x: Tensor, axis: int, out: int, scale: float | None, mode: str, align_corners: bool) -> Tensor:
    """Resample one axis; source positions come from `iota` in the precision torch computes them
    (nearest_idx in f32; area_pixel_compute_source_index in the input's opmath type: f64 for f64
    input, else f32), so nothing is a captured array."""
    n = x.shape[axis]
    pos = dt.float64 if not mode.startswith("nearest") and x.dtype == dt.float64 else dt.float32
    i = ops.iota((out,), 0, pos)
    r = 1.0 / scale if scale else n / out
    if mode == "nearest":
        return ops.take(x, ops.minimum(ops.cast(ops.mul(i, r), dt.int64), n - 1), axis)  # floor of >= 0
    if mode == "nearest-exact":  # torch's nearest_neighbor_exact_compute_source_index: pixel centres
        return ops.take(x, ops.minimum(ops.cast(ops.mul(ops.add(i, 0.5), r), dt.int64), n - 1), axis)
    if align_corners:
        src = ops.mul(i, (n - 1) / (out - 1) if out > 1 else 0.0)
    elif mode == "bicubic":  # cubic=True: the source index is not clamped at 0
        src = ops.sub(ops.mul(ops.add(i, 0.5), r), 0.5)
    else:
        src = ops.maximum(ops.sub(ops.mul(ops.add(i, 0.5), r), 0.5), 0.0)
    shape = [1] * x.ndim
    shape[axis] = out
    if mode == "bicubic":
        return _cubic_axis(x, axis, src, pos, shape)
    lo = ops.minimum(ops.cast(src, dt.int64), n - 1)
    hi = ops.minimum(ops.add(lo, 1), n - 1)
    f1 = ops.reshape(ops.cast(ops.sub(src, ops.cast(lo, pos)), x.dtype), shape)
    a, b = ops.take(x, lo, axis), ops.take(x, hi, axis)
    return ops.add(ops.mul(a, ops.sub(1.0, f1)), ops.mul(b, f1))


def _aa_filter(v: np.ndarray, mode: str) -> np.ndarray:
    """torch's antialias filters: the triangle (bilinear) and Keys' cubic with a = -0.5 (PIL's; the
    non-antialiased bicubic uses -0.75)."""
    v = np.abs(v)
    if mode == "bilinear":
        return np.where(v < 1, 1 - v, 0).astype(v.dtype)
    a = v.dtype.type(-0.5)
    near = ((a + 2) * v - (a + 3)) * v * v + 1
    far = ((a * v - 5 * a) * v + 8 * a) * v - 4 * a
    return np.where(v < 1, near, np.where(v < 2, far, 0)).astype(v.dtype)


def _aa_taps(n: int, out: int, scale: float | None, mode: str, align_corners: bool,
             real: type) -> tuple[np.ndarray, np.ndarray]:
    """torch's _compute_weights_aa for one axis, in the precision torch computes them (`real`): output i
    reads inputs xmin .. xmin + xsize - 1 around center = s (i + 0.5), weighted by the filter at
    (j - center + 0.5) / s (downsampling stretches the filter's support by s), normalized to sum 1.
    Returns (out, K) source indices (clamped; their padding taps weigh 0) and weights."""
    if align_corners:
        s = real((n - 1) / (out - 1)) if out > 1 else real(0)
    else:
        s = real(1.0 / scale) if scale is not None and scale > 0 else real(n / out)
    half = real(2.0 if mode == "bicubic" else 1.0)
    support = half * s if s >= 1 else half
    inv = real(1) / s if s >= 1 else real(1)
    k = int(math.ceil(float(support))) * 2 + 1
    idx, wts = np.zeros((out, k), np.int64), np.zeros((out, k), real)
    for i in range(out):
        center = s * (real(i) + real(0.5))
        xmin = max(int(center - support + real(0.5)), 0)
        xsize = min(int(center + support + real(0.5)), n) - xmin
        j = np.arange(xsize)
        w = _aa_filter(((j + xmin).astype(real) - center + real(0.5)) * inv, mode)
        total = w.sum(dtype=real)
        if total != 0:
            w = w / total
        idx[i, :xsize], wts[i, :xsize] = j + xmin, w
        idx[i, xsize:] = min(xmin, n - 1)
    return idx, wts


def _resize_axis_aa(x: Tensor, axis: int, out: int, scale: float | None, mode: str, align_corners: bool) -> Tensor:
    """Antialiased bilinear / bicubic resampling of one axis, as torch's separable kernel: a gather of
    each output's K taps and their weighted sum (weights from static shapes: literal constants)."""
    from ..tensor import _mark_literal
    n = x.shape[axis]
    idx, wts = _aa_taps(n, out, scale, mode, align_corners, np.float64 if x.dtype == dt.float64 else np.float32)
    k = idx.shape[1]
    index = Tensor(idx.reshape(-1))
    weight = Tensor(wts.reshape((out, k) + (1,) * (x.ndim - axis - 1)))
    _mark_literal(index)
    _mark_literal(weight)
    g = ops.reshape(ops.take(x, index, axis), x.shape[:axis] + (out, k) + x.shape[axis + 1:])
    return ops.sum(ops.mul(g, ops.cast(weight, x.dtype)), axis + 1)


def _cubic_axis(x: Tensor, axis: int, src: Tensor, pos: Any, shape: list[int]) -> Tensor:
    """torch's bicubic along one axis (ViTs resize their position embeddings with it): Keys' cubic
    convolution with A = -0.75 over the 4 neighbours floor(src) - 1 .. floor(src) + 2, clamped into the
    axis (upsample_get_value_bounded), the index and fraction guarded as guard_index_and_lambda does."""
    n, A = x.shape[axis], -0.75
    idx = ops.minimum(ops.cast(ops.floor(src), dt.int64), n - 1)
    t = ops.clip(ops.sub(src, ops.cast(idx, pos)), 0.0, 1.0)

    def conv1(v: Tensor) -> Tensor:  # |v| <= 1: ((A + 2) v - (A + 3)) v^2 + 1
        return ops.add(ops.mul(ops.mul(ops.sub(ops.mul(v, A + 2), A + 3), v), v), 1.0)

    def conv2(v: Tensor) -> Tensor:  # 1 < |v| < 2: ((A v - 5A) v + 8A) v - 4A
        return ops.sub(ops.mul(ops.add(ops.mul(ops.sub(ops.mul(v, A), 5 * A), v), 8 * A), v), 4 * A)

    u = ops.sub(1.0, t)
    weights = (conv2(ops.add(t, 1.0)), conv1(t), conv1(u), conv2(ops.add(u, 1.0)))
    y = None
    for k, w in enumerate(weights):
        tap = ops.mul(ops.take(x, ops.clip(ops.add(idx, k - 1), 0, n - 1), axis),
                      ops.reshape(ops.cast(w, x.dtype), shape))
        y = tap if y is None else ops.add(y, tap)
    assert y is not None
    return y


def interpolate(input: Any, size: Any = None, scale_factor: Any = None, mode: str = "nearest",
                align_corners: bool | None = None, recompute_scale_factor: bool | None = None,
                antialias: bool = False) -> Tensor:
    """Resize the spatial dims of (N, C, L) / (N, C, H, W) / (N, C, D, H, W) input: 'nearest',
    'nearest-exact', 'area' (adaptive average pooling, as torch computes it), 'linear', 'bilinear',
    'bicubic' or 'trilinear' (align_corners False or True; one axis at a time), with torch's coordinate
    conventions."""
    x = _t(input)
    if antialias and (mode not in ("bilinear", "bicubic") or x.ndim != 4):
        raise NotImplementedError(f"interpolate: Anti-alias option is restricted to bilinear and bicubic modes and "
                                  f"requires a 4-D tensor as input (got mode={mode!r}, input of shape {x.shape})")
    if mode not in ("nearest", "nearest-exact", "area", "linear", "bilinear", "bicubic", "trilinear"):
        raise NotImplementedError(f"interpolate: mode={mode!r} is not supported (nearest, nearest-exact, area, linear, "
                                  "bilinear, bicubic, trilinear)")
    if mode in ("nearest", "nearest-exact", "area") and align_corners is not None:
        raise ValueError("interpolate: align_corners option can only be set with the interpolating modes")
    k = x.ndim - 2
    _check_resize_dtype(x, mode, k)
    if k < 1 or (mode in ("bilinear", "bicubic") and k != 2) or (mode == "linear" and k != 1) or (
            mode == "trilinear" and k != 3):
        raise ValueError(f"interpolate: mode={mode!r} does not fit an input of shape {x.shape}")
    if (size is None) == (scale_factor is None):
        raise ValueError("interpolate: give exactly one of 'size' and 'scale_factor'")
    spatial = list(x.shape[2:])
    if size is not None:
        from .functional import _int_entries
        outs = list(_int_entries((size,) * k if not isinstance(size, (tuple, list)) else size,
                                 "interpolate: argument 'size'"))  # (int(3.5) truncated a float size)
        if len(outs) != k:
            raise ops.fail(ValueError(
                f"interpolate: Input and output must have the same number of spatial dimensions, but got input with "
                f"spatial dimensions of {spatial} and output size of {tuple(size)}"))
        if recompute_scale_factor:  # (torch's error: it was ignored)
            raise ops.fail(ValueError("interpolate: recompute_scale_factor is not meaningful with an explicit size."))
        scales: list[float | None] = [None] * k
    else:
        sf = [float(scale_factor)] * k if isinstance(scale_factor, (int, float)) else [float(s) for s in scale_factor]
        if len(sf) != k:
            raise ops.fail(ValueError(
                f"interpolate: Input and scale_factor must have the same number of spatial dimensions, but got input "
                f"with spatial dimensions of {spatial} and scale_factor of shape {tuple(scale_factor)}"))
        outs = [int(math.floor(n * s)) for n, s in zip(x.shape[2:], sf)]
        scales = [None] * k if recompute_scale_factor else sf
    if min(outs + spatial) <= 0:  # (a zero scale would also divide by zero below)
        names = "DHW"[3 - k:] if k <= 3 else [f"d{i}" for i in range(k)]
        shown = [", ".join(f"{a}: {v}" for a, v in zip(names, vs)) for vs in (spatial, outs)]
        raise ops.fail(RuntimeError(f"interpolate: Input and output sizes should be greater than 0, but got input "
                                    f"({shown[0]}) output ({shown[1]})"))
    if mode == "area":
        if k > 3:
            raise NotImplementedError("interpolate: mode='area' is supported for 3-d, 4-d and 5-d input")
        if k == 3:
            from .functional_3d import adaptive_avg_pool3d
            return adaptive_avg_pool3d(x, tuple(outs))
        return (adaptive_avg_pool1d if k == 1 else adaptive_avg_pool2d)(x, outs[0] if k == 1 else tuple(outs))
    if antialias:
        return _resize_aa(x, outs, scales, mode, bool(align_corners))
    if x.dtype is dt.uint8 and mode in ("bilinear", "bicubic"):
        # torch resizes uint8 images to uint8 (was f32 for bilinear; bicubic cast its weights to uint8, giving
        # garbage): each axis in f32, the width first, rounded half up and clamped to an uint8 image between
        # and after, as torch's separable kernel. torch's weights are fixed-point, so a value can differ from
        # torch's by 1 (none at integer scale factors for bilinear; a few % at other sizes, and for bicubic).
        y = ops.cast(x, dt.float32)
        for j in (1, 0):
            y = _resize_axis(y, 2 + j, outs[j], scales[j], mode, bool(align_corners))
            y = ops.cast(ops.clip(ops.floor(ops.add(y, 0.5)), 0, 255), dt.uint8 if j == 0 else dt.float32)
        return y
    y = x
    for j in range(k):
        y = _resize_axis(y, 2 + j, outs[j], scales[j], mode, bool(align_corners))
    return y


def _check_resize_dtype(x: Tensor, mode: str, k: int) -> None:
    """torch's resize kernels take floats, and uint8 images for nearest, bilinear and bicubic only:
    an integer or bool input is refused (numpy resized it, linear modes into f32)."""
    if mode == "area":
        return  # adaptive average pooling refuses integers itself
    kernel = {"linear": "compute_indices_weights_linear", "trilinear": "compute_indices_weights_linear",
              "bicubic": "compute_indices_weights_cubic"}.get(mode)
    if kernel is None:
        kernel = ("upsample_bilinear2d_channels_last" if mode == "bilinear" else
                  "upsample_nearest2d_channels_last" if k == 2 else "compute_indices_weights_nearest")
    check_kernel("interpolate", kernel, "integer" if mode in ("linear", "trilinear") else "nonbyte", x)


def _resize_aa(x: Tensor, outs: Sequence[int], scales: Sequence[float | None], mode: str, align: bool) -> Tensor:
    """interpolate(antialias=True) of a 4-d input: the width first, then the height, each axis whose
    size changes (torch's separable_upsample_generic_Nd_kernel_impl order)."""
    if not x.dtype.is_float:
        raise NotImplementedError(f"interpolate: antialias=True is supported for floating inputs, got {x.dtype}")
    for axis in (3, 2):
        if x.shape[axis] != outs[axis - 2]:
            x = _resize_axis_aa(x, axis, outs[axis - 2], scales[axis - 2], mode, align)
    return x


def upsample(input: Any, size: Any = None, scale_factor: Any = None, mode: str = "nearest",
             align_corners: bool | None = None) -> Tensor:
    return interpolate(input, size, scale_factor, mode, align_corners)


# -- im2col and col2im --------------------------------------------------------------------------------

def _window_args(where: str, kernel_size: Any, dilation: Any, padding: Any, stride: Any) -> tuple:
    """kernel, dilation, padding and stride as (h, w) pairs, checked as torch checks them."""
    from .functional import _pair
    k, d, p, s = (_pair(v, where, n) for v, n in ((kernel_size, "kernel_size"), (dilation, "dilation"),
                                                   (padding, "padding"), (stride, "stride")))
    if min(k) < 1 or min(d) < 1 or min(s) < 1 or min(p) < 0:
        raise ValueError(f"{where}: kernel_size, dilation and stride must be positive and padding non-negative, got "
                         f"kernel_size={k}, dilation={d}, padding={p}, stride={s}")
    return k, d, p, s


def _blocks(where: str, size: Sequence[int], k, d, p, s) -> tuple[int, int]:
    """The number of sliding blocks along height and width."""
    out = [(size[i] + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(2)]
    if min(out) < 1:
        raise ops.fail(RuntimeError(f"{where}: given input with spatial size {tuple(size)}, kernel_size={k}, "
                                    f"dilation={d}, padding={p}, stride={s}, the calculated shape of the array of "
                                    f"sliding blocks is {tuple(out)}, but its components must be at least one"))
    return out[0], out[1]


def unfold(input: Any, kernel_size: Any, dilation: Any = 1, padding: Any = 0, stride: Any = 1) -> Tensor:
    """im2col: (N, C, H, W) -> (N, C kh kw, L), each column one sliding block (channel-major, then
    the kernel offsets row by row), L blocks in row-major order; (C, H, W) -> (C kh kw, L).

    Built as one pad, kh strided slices along the height, then kw along the width (kh + kw slices,
    not kh kw, so a 3x3 window traces to a dozen ops), stacked: copies, exact for every value
    (a convolution with one-hot kernels would turn inf into nan and be rounded to TF32 on a GPU)."""
    x = _t(input)
    check_kernel("unfold", "im2col_out_cpu", "int", x)
    if x.ndim == 3:
        return ops.squeeze(unfold(ops.expand_dims(x, 0), kernel_size, dilation, padding, stride), 0)
    if x.ndim != 4:
        raise ops.fail(ValueError(f"unfold: expected a 3-d or 4-d input, got shape {x.shape}"))
    k, d, p, s = _window_args("unfold", kernel_size, dilation, padding, stride)
    oh, ow = _blocks("unfold", x.shape[2:], k, d, p, s)
    if p != (0, 0):
        x = ops.pad(x, [(0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])])
    n, c, hp, wp = x.shape
    rows = [ops.slice_(x, [0, 0, i * d[0], 0], [n, c, i * d[0] + (oh - 1) * s[0] + 1, wp], [1, 1, s[0], 1])
            for i in range(k[0])]
    y = ops.stack(rows, 2) if k[0] > 1 else ops.expand_dims(rows[0], 2)                # (N, C, kh, oh, Wp)
    cols = [ops.slice_(y, [0, 0, 0, 0, j * d[1]], [n, c, k[0], oh, j * d[1] + (ow - 1) * s[1] + 1],
                       [1, 1, 1, 1, s[1]]) for j in range(k[1])]
    y = ops.stack(cols, 3) if k[1] > 1 else ops.expand_dims(cols[0], 3)                # (N, C, kh, kw, oh, ow)
    return ops.reshape(y, (n, c * k[0] * k[1], oh * ow))


def _place(y: Tensor, axis: int, m: int, offset: int, step: int, extent: int) -> Tensor:
    """`y`'s `m` entries along `axis` placed at offset, offset + step, ... of a zero axis of `extent`
    (the strided scatter, written as slice's gradient is: a new axis padded to the step, merged)."""
    if step > 1:
        shape = list(y.shape)
        y = ops.reshape(y, shape[:axis + 1] + [1] + shape[axis + 1:])
        y = ops.pad(y, [(0, 0)] * (axis + 1) + [(0, step - 1)] + [(0, 0)] * (len(shape) - axis - 1))
        y = ops.reshape(y, shape[:axis] + [m * step] + shape[axis + 1:])
        end = (m - 1) * step + 1
        if end != m * step:
            lim = list(y.shape)
            lim[axis] = end
            y = ops.slice_(y, [0] * len(lim), lim)
    used = (m - 1) * step + 1
    return ops.pad(y, [(0, 0)] * axis + [(offset, extent - offset - used)] + [(0, 0)] * (y.ndim - axis - 1))


def fold(input: Any, output_size: Any, kernel_size: Any, dilation: Any = 1, padding: Any = 0,
         stride: Any = 1) -> Tensor:
    """col2im, unfold's adjoint: (N, C kh kw, L) -> (N, C, H, W), overlapping entries summed;
    (C kh kw, L) -> (C, H, W). Each kernel column, then each kernel row, is placed with a strided
    pad and summed (kh + kw placements), the padding cropped at the end."""
    from .functional import _pair
    x = _t(input)
    check_kernel("fold", "col2im_out_cpu", "int", x)
    if x.ndim == 2:
        return ops.squeeze(fold(ops.expand_dims(x, 0), output_size, kernel_size, dilation, padding, stride), 0)
    if x.ndim != 3:
        raise ops.fail(ValueError(f"fold: expected a 2-d or 3-d input, got shape {x.shape}"))
    size = _pair(output_size, "fold", "output_size")
    k, d, p, s = _window_args("fold", kernel_size, dilation, padding, stride)
    n, ck, length = x.shape
    kk = k[0] * k[1]
    if ck % kk:
        raise ops.fail(RuntimeError(f"fold: expected size of input's dimension 1 to be divisible by the product of "
                                    f"kernel_size, but got input.size(1)={ck} and kernel_size={k}"))
    oh, ow = _blocks("fold", size, k, d, p, s)
    if oh * ow != length:
        raise ops.fail(RuntimeError(f"fold: given output_size={size}, kernel_size={k}, dilation={d}, padding={p}, "
                                    f"stride={s}, expected size of input's dimension 2 to match the calculated number "
                                    f"of sliding blocks {oh} * {ow} = {oh * ow}, but got input.size(2)={length}"))
    c = ck // kk
    hp, wp = size[0] + 2 * p[0], size[1] + 2 * p[1]
    y = ops.reshape(x, (n, c, k[0], k[1], oh, ow))
    acc = None
    for j in range(k[1]):
        col = ops.reshape(ops.slice_(y, [0, 0, 0, j, 0, 0], [n, c, k[0], j + 1, oh, ow]), (n, c, k[0], oh, ow))
        col = _place(col, 4, ow, j * d[1], s[1], wp)
        acc = col if acc is None else ops.add(acc, col)                               # (N, C, kh, oh, Wp)
    assert acc is not None
    out = None
    for i in range(k[0]):
        row = ops.reshape(ops.slice_(acc, [0, 0, i, 0, 0], [n, c, i + 1, oh, wp]), (n, c, oh, wp))
        row = _place(row, 2, oh, i * d[0], s[0], hp)
        out = row if out is None else ops.add(out, row)                               # (N, C, Hp, Wp)
    assert out is not None
    if p != (0, 0):
        out = ops.slice_(out, [0, 0, p[0], p[1]], [n, c, p[0] + size[0], p[1] + size[1]])
    return out


def channel_shuffle(input: Any, groups: int) -> Tensor:
    """(N, C, *) with C = g m -> the channels read as an (m, g) grid rather than (g, m) (ShuffleNet):
    one reshape, one transpose, one reshape."""
    x, g = _t(input), _int_arg(groups, "channel_shuffle", "groups")  # (int(2.5) truncated a float)
    if x.ndim < 3:
        raise ops.fail(RuntimeError(f"channel_shuffle: expected input of at least 3 dims, got shape {x.shape}"))
    c = x.shape[1]
    if g < 1 or c % g:
        raise ops.fail(RuntimeError(f"channel_shuffle: number of channels ({c}) must be divisible by groups ({g})"))
    n, rest = x.shape[0], x.shape[2:]
    y = ops.reshape(x, (n, g, c // g, *rest))
    return ops.reshape(ops.transpose(y, 1, 2), (n, c, *rest))


# -- sampling at data-dependent positions: affine_grid and grid_sample ---------------------------------

def affine_grid(theta: Any, size: Sequence[int], align_corners: bool | None = None) -> Tensor:
    """torch.nn.functional.affine_grid for 2-d spatial transforms: theta (N, 2, 3) and size
    (N, C, H, W) give the (N, H, W, 2) grid of normalized (x, y) sampling positions theta @ (x, y, 1)
    of every output pixel, as torch builds it (a base grid of linspaces times theta^T, one matmul);
    for 3-d ones, theta (N, 3, 4) and size (N, C, D, H, W) give the (N, D, H, W, 3) grid of (x, y, z)."""
    align = bool(align_corners) if align_corners is not None else False
    th = _t(theta)
    size = [int(s) for s in size]
    if len(size) == 5:
        return _affine_grid_3d(th, size, align)
    if len(size) != 4:
        raise NotImplementedError(f"affine_grid only supports 4D and 5D sizes, for 2D and 3D affine transforms, "
                                  f"respectively. Got size {tuple(size)}.")
    n, _, h, w = size
    if not th.dtype.is_float:
        raise ValueError(f"affine_grid: expected a floating-point theta, got {th.dtype}")
    if th.shape != (n, 2, 3):
        raise ValueError(f"affine_grid: expected a theta of shape (N, 2, 3) = ({n}, 2, 3) for size {tuple(size)}, "
                         f"got {th.shape}")
    if min(h, w) <= 0:
        raise ValueError(f"affine_grid: expected a non-empty spatial size, got size={tuple(size)}")

    def steps(k: int) -> Tensor:  # torch's _linspace_from_neg_one
        if k <= 1:
            return ops.zeros((k,), dtype=th.dtype)
        r = ops.linspace(-1.0, 1.0, k, dtype=th.dtype)
        return r if align else ops.mul(r, (k - 1) / k)

    xs = ops.broadcast_to(ops.reshape(steps(w), (1, w, 1)), (h, w, 1))
    ys = ops.broadcast_to(ops.reshape(steps(h), (h, 1, 1)), (h, w, 1))
    base = ops.reshape(ops.concat([xs, ys, ops.ones((h, w, 1), dtype=th.dtype)], 2), (1, h * w, 3))
    grid = ops.matmul(base, ops.transpose(th, 1, 2))  # (N, H*W, 2)
    return ops.reshape(grid, (n, h, w, 2))


def _grid_steps(k: int, dtype: dt.DType, align: bool) -> Tensor:
    """torch's _linspace_from_neg_one: k normalized positions of pixel centers in [-1, 1]."""
    if k <= 1:
        return ops.zeros((k,), dtype=dtype)
    r = ops.linspace(-1.0, 1.0, k, dtype=dtype)
    return r if align else ops.mul(r, (k - 1) / k)


def _affine_grid_3d(th: Tensor, size: list[int], align: bool) -> Tensor:
    """affine_grid's volumetric form: the (D, H, W, 4) base grid of (x, y, z, 1) times theta^T."""
    n, _, d, h, w = size
    if not th.dtype.is_float:
        raise ValueError(f"affine_grid: expected a floating-point theta, got {th.dtype}")
    if th.shape != (n, 3, 4):
        raise ValueError(f"Expected a batch of 3D affine matrices of shape Nx3x4 for size {tuple(size)}. Got "
                         f"{th.shape}.")
    if min(d, h, w) <= 0:
        raise ValueError(f"affine_grid: expected a non-empty spatial size, got size={tuple(size)}")
    shape = (d, h, w, 1)
    xs = ops.broadcast_to(ops.reshape(_grid_steps(w, th.dtype, align), (1, 1, w, 1)), shape)
    ys = ops.broadcast_to(ops.reshape(_grid_steps(h, th.dtype, align), (1, h, 1, 1)), shape)
    zs = ops.broadcast_to(ops.reshape(_grid_steps(d, th.dtype, align), (d, 1, 1, 1)), shape)
    base = ops.reshape(ops.concat([xs, ys, zs, ops.ones(shape, dtype=th.dtype)], 3), (1, d * h * w, 4))
    grid = ops.matmul(base, ops.transpose(th, 1, 2))  # (N, D*H*W, 3)
    return ops.reshape(grid, (n, d, h, w, 3))


_GRID_MODES = ("bilinear", "nearest", "bicubic")
_GRID_PADDING = ("zeros", "border", "reflection")


def _unnormalize(coord: Tensor, size: int, align: bool) -> Tensor:
    """[-1, 1] to pixel coordinates: -1 and 1 are the corner pixels' centers (align_corners) or
    their outer edges. Unaligned, torch's kernels round `(c + 1) * size / 2 - 0.5` once (an FMA on the
    CPU, a contracted `((c + 1) * size - 1) / 2` on CUDA); rounded twice, it differs in the last bit,
    and at a pixel center (the spatial transformer tutorial's identity theta) that bit picks the taps:
    the grid's gradient, a one-sided difference there, took the other side. See _fma_half."""
    if align:
        return ops.mul(ops.add(coord, 1.0), (size - 1) / 2)
    return _fma_half(ops.add(coord, 1.0), size)


def _fma_half(u: Tensor, size: int) -> Tensor:
    """u * (size / 2) - 0.5, rounded once (an FMA, from elementwise ops). Below float64, in float64
    (the product of the narrow u and size / 2 is exact there), then rounded back. In float64, u splits
    into hi, a multiple of 2^-25 by (u + 2^27) - 2^27, and lo = u - hi (exact): hi * s - 0.5 and lo * s
    are exact (each has a few more bits than s = size / 2), so their sum is the one rounding, also
    where a C compiler contracts a product and a sum into an FMA. The gradient is s (lo's and hi's
    parts cancel exactly)."""
    s = size / 2
    if u.dtype is not dt.float64:
        return ops.cast(ops.sub(ops.mul(ops.cast(u, dt.float64), s), 0.5), u.dtype)
    k = 2.0 ** 27
    hi = ops.sub(ops.add(u, k), k)
    lo = ops.sub(u, hi)
    return ops.add(ops.sub(ops.mul(hi, s), 0.5), ops.mul(lo, s))


def _reflect(coord: Tensor, twice_low: int, twice_high: int) -> Tensor:
    """torch's reflect_coordinates: fold `coord` into [low, high] by mirroring at both ends
    (abs, fmod and the parity of the number of flips; the gradient flips sign with the parity)."""
    if twice_low == twice_high:
        return ops.mul(coord, 0.0)
    low, span = twice_low / 2, (twice_high - twice_low) / 2
    c = ops.abs(ops.sub(coord, low))
    extra = ops.fmod(c, span)
    flips = ops.floor(ops.div(c, span))
    even = ops.eq(ops.remainder(flips, 2.0), 0.0)
    return ops.where(even, ops.add(extra, low), ops.add(ops.sub(span, extra), low))


def _source_index(coord: Tensor, size: int, padding_mode: str, align: bool) -> Tensor:
    """torch's grid_sampler_compute_source_index: the pixel coordinate of a normalized one, clipped
    (border) or mirrored then clipped (reflection) into the image; zeros leaves it as it is."""
    c = _unnormalize(coord, size, align)
    if padding_mode == "reflection":
        c = _reflect(c, 0, 2 * (size - 1)) if align else _reflect(c, -1, 2 * size - 1)
    if padding_mode in ("border", "reflection"):
        # torch's clip_coordinates_set_grad counts the borders as outside: no gradient at exactly
        # 0 or size - 1 (a pixel center that an identity grid hits), where clamp's would pass it
        inside = ops.logical_and(ops.gt(c, 0.0), ops.lt(c, float(size - 1)))
        c = ops.where(inside, c, ops.stop_gradient(ops.clamp(c, 0.0, float(size - 1))))
    return c


def _cubic_coeffs(t: Tensor) -> list[Tensor]:
    """torch's get_cubic_upsample_coefficients (A = -0.75) at the fractional offset t: the weights of
    the taps floor - 1 .. floor + 2."""
    A = -0.75

    def conv1(v: Tensor) -> Tensor:  # |v| <= 1: ((A + 2) v - (A + 3)) v^2 + 1
        return ops.add(ops.mul(ops.mul(ops.sub(ops.mul(v, A + 2), A + 3), v), v), 1.0)

    def conv2(v: Tensor) -> Tensor:  # 1 < |v| < 2: ((A v - 5A) v + 8A) v - 4A
        return ops.sub(ops.mul(ops.add(ops.mul(ops.sub(ops.mul(v, A), 5 * A), v), 8 * A), v), 4 * A)

    u = ops.sub(1.0, t)
    return [conv2(ops.add(t, 1.0)), conv1(t), conv1(u), conv2(ops.add(u, 1.0))]


def _bicubic_corners(ix: Tensor, iy: Tensor, h: int, w: int, padding_mode: str, align: bool) -> list:
    """grid_sample's bicubic taps, as torch's: the 4x4 pixels around the unpadded sample point, each
    tap's coordinate padded on its own (get_value_bounded: border clips it, reflection mirrors then
    clips it; zeros leaves it, and a tap outside reads 0), weighted by the cubic coefficients of the
    fractional offsets (through which the grid's gradient flows)."""
    fx, fy = ops.floor(ix), ops.floor(iy)
    wx, wy = _cubic_coeffs(ops.sub(ix, fx)), _cubic_coeffs(ops.sub(iy, fy))

    def tap(f: Tensor, k: int, size: int) -> Tensor:
        c = ops.stop_gradient(ops.add(f, float(k - 1)))
        if padding_mode == "reflection":
            c = _reflect(c, 0, 2 * (size - 1)) if align else _reflect(c, -1, 2 * size - 1)
        if padding_mode in ("border", "reflection"):
            c = ops.clamp(c, 0.0, float(size - 1))
        return ops.cast(c, dt.int64)

    xs, ys = [tap(fx, k, w) for k in range(4)], [tap(fy, k, h) for k in range(4)]
    return [(xs[i], ys[j], ops.mul(wx[i], wy[j])) for j in range(4) for i in range(4)]


def _nearbyint(c: Tensor) -> Tensor:
    """Round half to even (C's nearbyint, which torch's nearest mode uses), as i64."""
    f = ops.floor(c)
    d = ops.sub(c, f)
    fi = ops.cast(f, dt.int64)
    odd = ops.eq(ops.remainder(fi, 2), 1)
    up = ops.logical_or(ops.gt(d, 0.5), ops.logical_and(ops.eq(d, 0.5), odd))
    return ops.add(fi, ops.cast(up, dt.int64))


def grid_sample(input: Any, grid: Any, mode: str = "bilinear", padding_mode: str = "zeros",
                align_corners: bool | None = None) -> Tensor:
    """torch.nn.functional.grid_sample for 4-d inputs: input (N, C, H, W) read at grid (N, Ho, Wo, 2)
    (normalized (x, y) in [-1, 1]) -> (N, C, Ho, Wo); mode "bilinear", "nearest" or "bicubic", padding_mode
    "zeros", "border" or "reflection", torch's align_corners (False by default).

    A composite, so every backend runs it and autodiff differentiates it: the pixel coordinates are
    elementwise ops of the grid; the (up to 4) neighbours are read by ONE `take` from the image laid
    out as (N*H*W, C) at flat indices n*H*W + y*W + x (clamped into range, with a mask zeroing the
    taps outside the image), and the bilinear weights are products of the fractional offsets. The
    gradient w.r.t. input is `take`'s scatter-add; w.r.t. the grid it flows through the weights
    (nearest mode's is zero), as torch's is."""
    if mode not in _GRID_MODES:
        raise NotImplementedError(f"grid_sample: mode={mode!r} is not supported; use one of {', '.join(_GRID_MODES)}")
    if padding_mode not in _GRID_PADDING:
        raise ValueError(f"grid_sample: padding_mode={padding_mode!r} is not one of {', '.join(_GRID_PADDING)}")
    align = bool(align_corners) if align_corners is not None else False
    x, g = _t(input), _t(grid)
    if x.ndim == 5:
        return _grid_sample_3d(x, g, mode, padding_mode, align)
    # torch's errors are RuntimeErrors; ArgumentError is a ValueError too, as these were before
    if x.ndim != 4 or g.ndim != 4:
        raise ops.fail(ops.ArgumentError(
            f"grid_sample: expected a 4-d input (N, C, H, W) with a 4-d grid (N, Ho, Wo, 2), or a 5-d input "
            f"(N, C, D, H, W) with a 5-d grid (N, Do, Ho, Wo, 3), got input {x.shape} and grid {g.shape}"))
    if g.shape[0] != x.shape[0] or g.shape[3] != 2:
        raise ops.fail(ops.ArgumentError(
            f"grid_sample: expected grid of shape (N, Ho, Wo, 2) with N = {x.shape[0]} (the input's batch), got grid "
            f"{g.shape} for input {x.shape}"))
    check_kernel("grid_sample", "grid_sampler_2d_cpu_kernel_impl", "integer", x)
    if x.dtype is not g.dtype:
        raise ops.fail(ops.ArgumentError(f"grid_sample: expected input and grid of one floating dtype, got "
                                         f"{x.dtype} and {g.dtype}"))
    n, c, h, w = x.shape
    ho, wo = g.shape[1], g.shape[2]
    if min(h, w) <= 0:
        raise ops.fail(ops.ArgumentError(f"grid_sample: expected a non-empty spatial input, got {x.shape}"))
    gx = ops.reshape(ops.slice_(g, [0, 0, 0, 0], [n, ho, wo, 1]), (n, ho, wo))
    gy = ops.reshape(ops.slice_(g, [0, 0, 0, 1], [n, ho, wo, 2]), (n, ho, wo))
    if mode == "bicubic":  # (the taps' coordinates are padded, not the sample point's)
        ix, iy = _unnormalize(gx, w, align), _unnormalize(gy, h, align)
    else:
        ix, iy = _source_index(gx, w, padding_mode, align), _source_index(gy, h, padding_mode, align)
    if mode == "nearest":
        corners = [(_nearbyint(ix), _nearbyint(iy), None)]
    elif mode == "bicubic":
        corners = _bicubic_corners(ix, iy, h, w, padding_mode, align)
    else:
        fx, fy = ops.floor(ix), ops.floor(iy)
        x0, y0 = ops.cast(fx, dt.int64), ops.cast(fy, dt.int64)
        tx, ty = ops.sub(ix, fx), ops.sub(iy, fy)  # the fractional offsets; their gradient is 1
        sx, sy = ops.sub(1.0, tx), ops.sub(1.0, ty)
        x1, y1 = ops.add(x0, 1), ops.add(y0, 1)
        corners = [(x0, y0, ops.mul(sx, sy)), (x1, y0, ops.mul(tx, sy)), (x0, y1, ops.mul(sx, ty)),
                   (x1, y1, ops.mul(tx, ty))]
    batch = ops.mul(ops.iota((n, ho, wo), 0, dt.int64), h * w)
    flat, weights = [], []
    for cx, cy, wgt in corners:
        inside = ops.logical_and(ops.logical_and(ops.ge(cx, 0), ops.lt(cx, w)),
                                 ops.logical_and(ops.ge(cy, 0), ops.lt(cy, h)))
        at = ops.add(ops.add(batch, ops.mul(ops.clamp(cy, 0, h - 1), w)), ops.clamp(cx, 0, w - 1))
        flat.append(at)
        m = ops.cast(inside, x.dtype)
        weights.append(m if wgt is None else ops.mul(wgt, m))
    pixels = ops.reshape(ops.movedim(x, 1, 3), (n * h * w, c))           # (N*H*W, C)
    vals = ops.take(pixels, ops.stack(flat, 0), 0)                       # (K, N, Ho, Wo, C)
    wts = ops.expand_dims(ops.stack(weights, 0), -1)                     # (K, N, Ho, Wo, 1)
    out = ops.sum(ops.mul(vals, wts), 0)                                 # (N, Ho, Wo, C)
    return ops.movedim(out, 3, 1)


def _grid_sample_3d(x: Tensor, g: Tensor, mode: str, padding_mode: str, align: bool) -> Tensor:
    """grid_sample's volumetric form, as torch's grid_sampler_3d: input (N, C, D, H, W) read at grid
    (N, Do, Ho, Wo, 3) of normalized (x, y, z) -> (N, C, Do, Ho, Wo), trilinear ('bilinear': the 8
    corners of the cell, weighted by products of the fractional offsets) or nearest (round half to
    even); bicubic is 4-d only, as in torch. The same composite as the 4-d form: one `take` from the
    volume laid out as (N*D*H*W, C), taps outside it masked to zero; the gradients w.r.t. input and
    grid are autodiff's of it (nearest mode's grid gradient is zero, as torch's)."""
    if mode == "bicubic":
        raise ops.fail(RuntimeError("grid_sampler(): bicubic interpolation only supports 4D input"))
    if g.ndim != 5:
        raise ops.fail(RuntimeError(f"grid_sampler(): expected 5D input and grid with same number of dimensions, but "
                                    f"got input with sizes {list(x.shape)} and grid with sizes {list(g.shape)}"))
    if g.shape[4] != 3:
        raise ops.fail(RuntimeError(f"grid_sampler(): expected grid to have size 3 in last dimension, but got grid "
                                    f"with sizes {list(g.shape)}"))
    if g.shape[0] != x.shape[0]:
        raise ops.fail(RuntimeError(f"grid_sampler(): expected grid and input to have same batch size, but got input "
                                    f"with sizes {list(x.shape)} and grid with sizes {list(g.shape)}"))
    if not x.dtype.is_float or x.dtype is not g.dtype:
        raise ValueError(f"grid_sample: expected input and grid of one floating dtype, got {x.dtype} and {g.dtype}")
    n, c, d, h, w = x.shape
    do, ho, wo = g.shape[1:4]
    if min(d, h, w) <= 0:
        raise ValueError(f"grid_sample: expected a non-empty spatial input, got {x.shape}")
    out_shape = (n, do, ho, wo)

    def component(i: int) -> Tensor:
        return ops.reshape(ops.slice_(g, [0, 0, 0, 0, i], [n, do, ho, wo, i + 1]), out_shape)

    ix = _source_index(component(0), w, padding_mode, align)
    iy = _source_index(component(1), h, padding_mode, align)
    iz = _source_index(component(2), d, padding_mode, align)
    if mode == "nearest":
        corners: list[tuple[Tensor, Tensor, Tensor, Tensor | None]] = [
            (_nearbyint(ix), _nearbyint(iy), _nearbyint(iz), None)]
    else:
        lows, fracs = [], []
        for coord in (ix, iy, iz):
            f = ops.floor(coord)
            lows.append(ops.cast(f, dt.int64))
            t = ops.sub(coord, f)  # the fractional offset; its gradient is 1
            fracs.append((ops.sub(1.0, t), t))
        corners = []
        for k in range(8):
            bx, by, bz = k & 1, (k >> 1) & 1, (k >> 2) & 1
            wgt = ops.mul(ops.mul(fracs[0][bx], fracs[1][by]), fracs[2][bz])
            corners.append((ops.add(lows[0], bx), ops.add(lows[1], by), ops.add(lows[2], bz), wgt))
    batch = ops.mul(ops.iota(out_shape, 0, dt.int64), d * h * w)
    flat, weights = [], []
    for cx, cy, cz, wgt in corners:
        inside = ops.logical_and(ops.logical_and(ops.ge(cx, 0), ops.lt(cx, w)),
                                 ops.logical_and(ops.ge(cy, 0), ops.lt(cy, h)))
        inside = ops.logical_and(inside, ops.logical_and(ops.ge(cz, 0), ops.lt(cz, d)))
        at = ops.add(ops.add(batch, ops.mul(ops.clamp(cz, 0, d - 1), h * w)),
                     ops.add(ops.mul(ops.clamp(cy, 0, h - 1), w), ops.clamp(cx, 0, w - 1)))
        flat.append(at)
        m = ops.cast(inside, x.dtype)
        weights.append(m if wgt is None else ops.mul(wgt, m))
    voxels = ops.reshape(ops.movedim(x, 1, 4), (n * d * h * w, c))        # (N*D*H*W, C)
    vals = ops.take(voxels, ops.stack(flat, 0), 0)                        # (K, N, Do, Ho, Wo, C)
    wts = ops.expand_dims(ops.stack(weights, 0), -1)                      # (K, N, Do, Ho, Wo, 1)
    out = ops.sum(ops.mul(vals, wts), 0)                                  # (N, Do, Ho, Wo, C)
    return ops.movedim(out, 4, 1)

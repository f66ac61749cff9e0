"""torch.nn.functional's 3-d pooling and transposed convolution (video, volumetric and medical-imaging
models: 3-D U-Net, C3D, I3D), composed from the 2-d ops and the primitives, no new IR op, so they trace,
differentiate and compile on every backend. Re-exported by `avalon.nn.functional`.

Pooling over a box is separable: the max (or sum) over a (kd, kh, kw) window is the max over its kd
depth taps of the max over each (kh, kw) plane. So the 3-d pools run the 2-d pool once over every depth
slice of an (N C, D, H, W) view (no transpose), then reduce kd strided depth slices. The depth reduction
is an argmax and a gather, so a window's gradient goes to its first maximum in (d, h, w) order, and the
returned index is torch's flat index into D*H*W. The average pools' divisors are products of per-axis
counts (torch's, with `count_include_pad` and `ceil_mode`), so they separate too. Adaptive pooling
reduces one axis at a time over gathered windows (W, then H, then D, which again picks the first
maximum). conv_transpose3d is one conv_transpose2d over the (N D, C, H, W) slices with the kd depth
taps stacked on its output channels, each tap's result placed at its strided depth offset and summed."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import amp, ops
from ..ir import dtypes as dt
from ..ops.dtype_kernels import check_kernel
from ..tensor import Tensor
from .functional_more import _lp_finish, _lp_infinite, _unpool_size
from .functional_spatial import _place

__all__ = [
    "adaptive_avg_pool3d", "adaptive_max_pool3d", "adaptive_max_pool3d_with_indices", "avg_pool3d",
    "conv_transpose3d", "lp_pool3d", "max_pool3d", "max_pool3d_with_indices", "max_unpool3d",
]


def _t(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


def _err(msg: str) -> Exception:
    return ops.fail(RuntimeError(msg))


def _triple(where: str, name: str, v: Any) -> tuple[int, int, int]:
    """torch's _triple: an int, or a sequence of 1 or 3 ints."""
    if isinstance(v, (tuple, list)):
        if not all(isinstance(i, (int, np.integer)) for i in v):  # int() truncated a float in silence
            raise ops.fail(TypeError(f"{where}: {name} must be a tuple of ints, got {tuple(v)!r}"))
        t = tuple(int(i) for i in v)
        if len(t) == 1:
            t = t * 3
        if len(t) != 3:
            raise _err(f"{where}: {name} must either be a single int, or a tuple of three ints")
        return t  # type: ignore[return-value]
    if not isinstance(v, (int, np.integer)):
        raise _err(f"{where}: {name} must either be a single int, or a tuple of three ints, got {v!r}")
    return int(v), int(v), int(v)


def _pool_args(where: str, kernel_size: Any, stride: Any, padding: Any, dilation: Any = 1) -> tuple:
    k = _triple(where, "kernel_size", kernel_size)
    empty = stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0)
    s = k if empty else _triple(where, "stride", stride)
    p, d = _triple(where, "padding", padding), _triple(where, "dilation", dilation)
    if min(k) <= 0:
        raise _err(f"{where}: kernel size should be greater than zero, but got kT: {k[0]} kH: {k[1]} kW: {k[2]}")
    if min(s) <= 0:
        raise _err("stride should not be zero")
    if min(d) <= 0:
        raise _err(f"{where}: dilation should be greater than zero, but got dilationT: {d[0]} dilationH: {d[1]} "
                   f"dilationW: {d[2]}")
    if min(p) < 0 or any(p[i] > k[i] // 2 for i in range(3)):
        raise _err(f"pad should be at most half of effective kernel size, but got pad={p}, kernel_size={k} and "
                   f"dilation={d}")
    return k, s, p, d


def _batched(where: str, x: Tensor) -> tuple[Tensor, bool]:
    if x.ndim not in (4, 5) or x.numel() == 0:
        raise _err(f"{where}: non-empty 4D or 5D (batch mode) tensor expected for input, got shape {x.shape}")
    return (ops.expand_dims(x, 0), True) if x.ndim == 4 else (x, False)


def _out_size(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """torch's pooling_output_shape."""
    num = size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)
    out = num // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _geometry(where: str, x: Tensor, k, s, p, d, ceil_mode: bool) -> list[int]:
    out = [_out_size(x.shape[2 + i], k[i], s[i], p[i], d[i], ceil_mode) for i in range(3)]
    if min(out) < 1:
        c, size = x.shape[1], "x".join(str(v) for v in x.shape[2:])
        raise _err(f"Given input size: ({c}x{size}). Calculated output size: ({c}x{'x'.join(map(str, out))}). "
                   "Output size is too small")
    return out


def _depth_taps(y: Tensor, kd: int, s: int, p: int, d: int, dout: int, fill: float) -> Tensor:
    """(N, C, Dout, ..., kd): the kd depth taps of every output position of y (N, C, D, ...), y padded
    along D with `fill` (p before; p and any ceil-mode overhang after)."""
    extra = max(0, (dout - 1) * s + d * (kd - 1) + 1 - (y.shape[2] + 2 * p))
    if p or extra:
        y = ops.pad(y, [(0, 0), (0, 0), (p, p + extra)] + [(0, 0)] * (y.ndim - 3), value=fill)
    start, limit, step = [0] * y.ndim, list(y.shape), [1] * y.ndim
    step[2] = s
    taps = []
    for t in range(kd):
        start[2], limit[2] = t * d, t * d + (dout - 1) * s + 1
        taps.append(ops.slice_(y, start, limit, step))
    return ops.stack(taps, -1)


def _first_max(taps: Tensor) -> tuple[Tensor, Tensor]:
    """The first maximum along the last axis and its position (the gradient goes there only)."""
    at = ops.argmax(taps, -1, keepdims=True)
    return ops.squeeze(ops.take_along_dim(taps, at, -1), -1), ops.squeeze(at, -1)


def max_pool3d_with_indices(input: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
                            ceil_mode: bool = False, return_indices: bool = False) -> tuple[Tensor, Tensor]:
    """max_pool3d's (values, indices): each index is the window's first maximum's flat position in the
    input's D*H*W volume (int64), as torch's."""
    return _max_pool3d("max_pool3d_with_indices", input, kernel_size, stride, padding, dilation, ceil_mode, True)


def max_pool3d(input: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
               ceil_mode: bool = False, return_indices: bool = False) -> Any:
    """3-d max pooling of (N, C, D, H, W) or (C, D, H, W) input; with `return_indices`, (values, flat
    indices into D*H*W). The 2-d pool over the depth slices, then the first maximum of the kd taps."""
    return _max_pool3d("max_pool3d", input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def _max_pool3d(where: str, input: Any, kernel_size: Any, stride: Any, padding: Any, dilation: Any,
                ceil_mode: bool, return_indices: bool) -> Any:
    from .functional import max_pool2d
    x, unbatched = _batched(where, _t(input))
    k, s, p, d = _pool_args(where, kernel_size, stride, padding, dilation)
    dout, _, _ = _geometry(where, x, k, s, p, d, ceil_mode)
    n, c, depth, h, w = x.shape
    planes = ops.reshape(x, (n * c, depth, h, w))  # every depth slice is a channel of a 2-d pool
    args = (k[1:], s[1:], p[1:], d[1:], ceil_mode)
    if return_indices:
        v, hw = max_pool2d(planes, *args, return_indices=True)
        hw = ops.reshape(hw, (n, c, depth, *hw.shape[2:]))
    else:
        v = max_pool2d(planes, *args)
    v = ops.reshape(v, (n, c, depth, *v.shape[2:]))
    if k[0] == 1 and p[0] == 0:  # one tap: a strided slice
        values = ops.slice_(v, [0] * 5, [n, c, (dout - 1) * s[0] + 1, *v.shape[3:]], [1, 1, s[0], 1, 1])
        tap = None
    else:
        values, tap = _first_max(_depth_taps(v, k[0], s[0], p[0], d[0], dout, -math.inf))
    if not return_indices:
        return ops.squeeze(values, 0) if unbatched else values
    od = ops.mul(ops.iota((1, 1, dout, 1, 1), 2, dt.int64), s[0])
    if tap is None:
        hw = ops.slice_(hw, [0] * 5, [n, c, (dout - 1) * s[0] + 1, *hw.shape[3:]], [1, 1, s[0], 1, 1])
        pos = od
    else:
        hw = ops.squeeze(ops.take_along_dim(_depth_taps(hw, k[0], s[0], p[0], d[0], dout, 0),
                                            ops.expand_dims(tap, -1), -1), -1)
        pos = ops.add(ops.sub(od, p[0]), ops.mul(tap, d[0]))
    idx = ops.add(ops.mul(pos, h * w), hw)
    return (ops.squeeze(values, 0), ops.squeeze(idx, 0)) if unbatched else (values, idx)


def avg_pool3d(input: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: int | None = None) -> Tensor:
    """3-d average pooling with torch's divisor: the window's size clipped to the padded input
    (count_include_pad) or its count of input elements, never the ceil-mode overhang; or
    `divisor_override`. The 2-d pool's means over the depth slices, summed over the kd depth taps and
    divided by the depth count."""
    from .functional import avg_pool2d
    x, unbatched = _batched("avg_pool3d", _t(input))
    check_kernel("avg_pool3d", "avg_pool3d_out_frame", "nonlong", x)
    k, s, p, d = _pool_args("avg_pool3d", kernel_size, stride, padding)
    from .functional import _check_divisor
    _check_divisor("avg_pool3d", divisor_override)
    dout, _, _ = _geometry("avg_pool3d", x, k, s, p, d, ceil_mode)
    n, c, depth, h, w = x.shape
    planes = ops.reshape(x, (n * c, depth, h, w))
    v = avg_pool2d(planes, k[1:], s[1:], p[1:], ceil_mode, count_include_pad,
                   1 if divisor_override is not None else None)  # (sums with an override)
    v = ops.reshape(v, (n, c, depth, *v.shape[2:]))
    total = ops.sum(_depth_taps(v, k[0], s[0], p[0], 1, dout, 0.0), -1)
    if divisor_override is not None:
        y = ops.div(total, float(divisor_override))
    else:
        start = ops.sub(ops.mul(ops.iota((dout,), 0, dt.int64), s[0]), p[0])
        end = ops.minimum(ops.add(start, k[0]), depth + p[0])
        if not count_include_pad:
            start, end = ops.maximum(start, 0), ops.minimum(end, depth)
        count = ops.cast(ops.sub(end, start), v.dtype)
        y = ops.div(total, ops.reshape(count, (1, 1, dout, 1, 1)))
    return ops.squeeze(y, 0) if unbatched else y


def lp_pool3d(input: Any, norm_type: float, kernel_size: Any, stride: Any = None, ceil_mode: bool = False) -> Tensor:
    """3-d power-average pooling: (sum over each kd x kh x kw window of x^p)^(1/p), as torch computes
    it (an average pool of x^p times the window size)."""
    x = _t(input)
    k = _triple("lp_pool3d", "kernel_size", kernel_size)
    inf = _lp_infinite(x, norm_type, lambda a: max_pool3d(a, k, stride, 0, 1, ceil_mode))
    if inf is not None:
        return inf
    out = avg_pool3d(ops.pow(x, norm_type), k, stride, 0, ceil_mode)
    return _lp_finish(out, norm_type, k[0] * k[1] * k[2])


# -- adaptive pooling -------------------------------------------------------------------------------

def _adaptive_size(where: str, x: Tensor, output_size: Any) -> list[int]:
    if x.ndim not in (4, 5):
        raise _err(f"{where}(): Expected 4D or 5D tensor, but got: {list(x.shape)}")
    if isinstance(output_size, (tuple, list)):
        if len(output_size) != 3:
            raise _err(f"{where}: output_size must be 3")
        size = list(output_size)
    else:
        size = [output_size] * 3
    out = [x.shape[x.ndim - 3 + i] if v is None else int(v) for i, v in enumerate(size)]
    if min(out) < 0:
        raise _err(f"{where}: elements of output_size must be greater than or equal to 0 but received {tuple(out)}")
    for i in range(x.ndim - 4, x.ndim):
        if x.shape[i] == 0:
            raise _err(f"{where}(): Expected input to have non-zero size for non-batch dimensions, but input has "
                       f"sizes {list(x.shape)} with dimension {i} being empty")
    return out


def _windows(n: int, out: int) -> tuple[Tensor, Tensor]:
    """torch's adaptive windows [floor(i n / out), ceil((i + 1) n / out)) as an (out, L) index of
    each window's entries (the last one repeated to the longest window's length L) and each one's
    length."""
    length = max(-(-(i + 1) * n // out) - i * n // out for i in range(out))
    i = ops.iota((out, length), 0, dt.int64)
    start = ops.floor_divide(ops.mul(i, n), out)
    end = ops.floor_divide(ops.add(ops.mul(ops.add(i, 1), n), out - 1), out)
    at = ops.minimum(ops.add(start, ops.iota((out, length), 1, dt.int64)), ops.sub(end, 1))
    return at, ops.sub(end, start)


def _adaptive_axis(x: Tensor, axis: int, out: int, kind: str) -> tuple[Tensor, Tensor | None]:
    """Adaptive pooling along one axis: the window means ('avg'), or the first maxima and their
    positions along the axis ('max')."""
    n = x.shape[axis]
    if out == n:
        return x, (ops.iota(x.shape, axis, dt.int64) if kind == "max" else None)
    if n % out == 0:  # equal windows: a reshape
        wins = ops.reshape(x, x.shape[:axis] + (out, n // out) + x.shape[axis + 1:])
        step = n // out
    else:
        at, count = _windows(n, out)
        wins = ops.take(x, at, axis)  # (..., out, L, ...)
        step = 0
    if kind == "avg":
        if step:
            return ops.mean(wins, axis + 1), None
        shape = [1] * wins.ndim
        shape[axis:axis + 2] = list(at.shape)
        inside = ops.lt(ops.iota(at.shape, 1, dt.int64), count)
        weight = ops.div(ops.cast(inside, x.dtype), ops.cast(count, x.dtype))
        return ops.sum(ops.mul(wins, ops.reshape(weight, shape)), axis + 1), None
    j = ops.argmax(wins, axis + 1, keepdims=True)
    values = ops.squeeze(ops.take_along_dim(wins, j, axis + 1), axis + 1)
    j = ops.squeeze(j, axis + 1)
    shape = [1] * x.ndim
    shape[axis] = out
    first = ops.reshape(ops.mul(ops.iota((out,), 0, dt.int64), step) if step else
                        ops.floor_divide(ops.mul(ops.iota((out,), 0, dt.int64), n), out), shape)
    return values, ops.add(first, j)


def adaptive_avg_pool3d(input: Any, output_size: Any) -> Tensor:
    """Averages over torch's adaptive windows [floor(i n / out), ceil((i + 1) n / out)) of D, H and W
    (an int or a triple, None keeping that size), one axis at a time."""
    x = _t(input)
    out = _adaptive_size("adaptive_avg_pool3d", x, output_size)
    if min(out) == 0:
        return ops.zeros(x.shape[:-3] + tuple(out), dtype=x.dtype)
    for i in (2, 1, 0):
        x = _adaptive_axis(x, x.ndim - 3 + i, out[i], "avg")[0]
    return x


def adaptive_max_pool3d_with_indices(input: Any, output_size: Any, return_indices: bool = False) \
        -> tuple[Tensor, Tensor]:
    """adaptive_max_pool3d's (values, indices into D*H*W): W, then H, then D reduced, each keeping its
    first maximum, so a window's is its first in (d, h, w) order, as torch's."""
    x = _t(input)
    out = _adaptive_size("adaptive_max_pool3d", x, output_size)
    if min(out) == 0:
        shape = x.shape[:-3] + tuple(out)
        return ops.zeros(shape, dtype=x.dtype), ops.zeros(shape, dtype=dt.int64)
    a = x.ndim - 3  # the depth axis
    h, w = x.shape[-2:]
    v, iw = _adaptive_axis(x, a + 2, out[2], "max")
    v, ih = _adaptive_axis(v, a + 1, out[1], "max")
    assert iw is not None and ih is not None
    iw = ops.take_along_dim(iw, ih, a + 1)
    v, idd = _adaptive_axis(v, a, out[0], "max")
    assert idd is not None
    ih, iw = ops.take_along_dim(ih, idd, a), ops.take_along_dim(iw, idd, a)
    return v, ops.add(ops.add(ops.mul(idd, h * w), ops.mul(ih, w)), iw)


def adaptive_max_pool3d(input: Any, output_size: Any, return_indices: bool = False) -> Any:
    """Maxima over torch's adaptive windows of D, H and W; with `return_indices`, (values, flat indices
    into D*H*W). The gradient goes to each window's first maximum, as torch's."""
    check_kernel("adaptive_max_pool3d", "adaptive_max_pool3d_cpu", "integer", input)
    values, idx = adaptive_max_pool3d_with_indices(input, output_size)
    return (values, idx) if return_indices else values


# -- unpooling, transposed convolution -------------------------------------------------------------

def max_unpool3d(input: Any, indices: Any, kernel_size: Any, stride: Any = None, padding: Any = 0,
                 output_size: Any = None) -> Tensor:
    """The partial inverse of max_pool3d: each value goes to its flat index in a (D_out, H_out, W_out)
    volume of zeros (indices from `max_pool3d(..., return_indices=True)`)."""
    x, idx = _t(input), _t(indices)
    k = _triple("max_unpool3d", "kernel_size", kernel_size)
    s = k if stride is None else _triple("max_unpool3d", "stride", stride)
    p = _triple("max_unpool3d", "padding", padding)
    if x.ndim not in (4, 5):
        raise _err(f"Input to max_unpooling3d should be a 4d or 5d Tensor, but got a tensor with {x.ndim} "
                   "dimensions.")
    if idx.shape != x.shape:
        raise _err(f"Expected shape of indices to be same as that of the input tensor ({list(x.shape)}) but got "
                   f"indices tensor with shape: {list(idx.shape)}")
    if idx.dtype.is_float or idx.dtype is dt.bool_:
        raise _err(f"elements in indices should be type int64 but got: {idx.dtype.name}")
    size = _unpool_size("max_unpool3d", x, k, s, p, output_size)
    lead = x.shape[:-3]
    total = size[0] * size[1] * size[2]
    flat_x = ops.reshape(x, (*lead, -1))
    flat_i = ops.cast(ops.reshape(idx, (*lead, -1)), dt.int64)
    if not flat_i.is_traced and flat_i.numel():
        lo, hi = int(flat_i.numpy().min()), int(flat_i.numpy().max())
        if lo < 0 or hi >= total:
            raise _err(f"Found an invalid max index: {lo if lo < 0 else hi} (output volumes are of size "
                       f"{size[0]}x{size[1]}x{size[2]})")
    out = ops.scatter(ops.zeros((*lead, total), dtype=x.dtype), x.ndim - 3, flat_i, flat_x)
    return ops.reshape(out, (*lead, *size))


def conv_transpose3d(input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
                     output_padding: Any = 0, groups: int = 1, dilation: Any = 1) -> Tensor:
    """torch.nn.functional.conv_transpose3d: (N, C_in, D, H, W) (or unbatched) with weight
    (C_in, C_out/groups, kd, kh, kw) -> (N, C_out, D_out, H_out, W_out), each
    out = (in - 1)*stride - 2*padding + dilation*(k - 1) + output_padding + 1. One conv_transpose2d
    over the (N D, C_in, H, W) slices with the kd depth taps as extra output channels; tap t of input
    slice i lands at depth i*stride + t*dilation (a strided placement), the taps summed, then the
    padding cropped and the output padding appended as zeros."""
    from .conv_transpose import conv_transpose2d
    x, w = amp.lower_precision(_t(input), _t(weight))
    if x.ndim == 4:
        y = conv_transpose3d(ops.expand_dims(x, 0), w, bias, stride, padding, output_padding, groups, dilation)
        return ops.squeeze(y, 0)
    if x.ndim != 5:
        raise _err(f"Expected 4D (unbatched) or 5D (batched) input to conv_transpose3d, but got input of size: "
                   f"{list(x.shape)}")
    if w.ndim != 5:
        raise _err(f"conv_transpose3d: expected a 5-d weight (C_in, C_out/groups, kd, kh, kw), got {list(w.shape)}")
    check_kernel("conv_transpose3d", "slow_conv_transpose3d_out_cpu", "nonlong", x)  # (int64 computes, as torch)
    where = "conv_transpose3d"
    s, p, op, d = (_triple(where, n, v) for n, v in (("stride", stride), ("padding", padding),
                                                     ("output_padding", output_padding), ("dilation", dilation)))
    groups = int(groups)
    if groups < 1 or min(s) < 1 or min(d) < 1 or min(p) < 0 or min(op) < 0:
        raise _err(f"conv_transpose3d: need groups, stride, dilation >= 1 and padding, output_padding >= 0; got "
                   f"groups={groups}, stride={s}, dilation={d}, padding={p}, output_padding={op}")
    n, c, depth, h, wd = x.shape
    if w.shape[0] != c or c % groups:
        raise _err(f"Given transposed=1, weight of size {list(w.shape)}, expected input{list(x.shape)} to have "
                   f"{w.shape[0]} channels, but got {c} channels instead")
    from .functional import _check_bias
    _check_bias("conv_transpose3d", w, bias, w.shape[1] * groups)
    if any(op[i] >= max(s[i], d[i]) for i in range(3)):
        raise _err(f"output padding must be smaller than either stride or dilation, but got output_padding_depth: "
                   f"{op[0]} output_padding_height: {op[1]} output_padding_width: {op[2]} stride_depth: {s[0]} "
                   f"stride_height: {s[1]} stride_width: {s[2]} dilation_depth: {d[0]} dilation_height: {d[1]} "
                   f"dilation_width: {d[2]}")
    k = w.shape[2:]
    size = [(v - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + op[i] + 1 for i, v in enumerate((depth, h, wd))]
    if min(size) < 1:
        raise _err(f"Given input size per channel: ({depth} x {h} x {wd}). Calculated output size per channel: "
                   f"({size[0]} x {size[1]} x {size[2]}). Output size is too small")
    kd, cog = k[0], w.shape[1]
    w2 = ops.reshape(ops.permute(w, (0, 2, 1, 3, 4)), (c, kd * cog, k[1], k[2]))  # output channel t*cog + o
    xs = ops.reshape(ops.permute(x, (0, 2, 1, 3, 4)), (n * depth, c, h, wd))
    y2 = conv_transpose2d(xs, w2, None, s[1:], p[1:], op[1:], groups, d[1:])
    ho, wo = y2.shape[2:]
    y2 = ops.reshape(y2, (n, depth, groups, kd, cog, ho, wo))
    full = (depth - 1) * s[0] + d[0] * (kd - 1) + 1
    acc = None
    for t in range(kd):
        yt = ops.slice_(y2, [0, 0, 0, t, 0, 0, 0], [n, depth, groups, t + 1, cog, ho, wo])
        yt = _place(ops.reshape(yt, (n, depth, groups * cog, ho, wo)), 1, depth, t * d[0], s[0], full)
        acc = yt if acc is None else ops.add(acc, yt)
    assert acc is not None
    reach = min(size[0], full - p[0])  # output depths some tap reaches; the output padding after them is zero
    y = ops.narrow(acc, 1, p[0], reach)
    if reach < size[0]:
        y = ops.pad(y, [(0, 0), (0, size[0] - reach), (0, 0), (0, 0), (0, 0)])
    y = ops.permute(y, (0, 2, 1, 3, 4))
    if bias is None:
        return y
    return ops.add(y, ops.reshape(ops.cast(amp.autocast_bias(_t(bias)), y.dtype), (1, -1, 1, 1, 1)))

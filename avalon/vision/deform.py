"""torchvision's deformable convolution (`torchvision.ops.deform_conv2d` / `DeformConv2d`, DCNv1
and the modulated DCNv2) as a composite of Avalon ops, so it traces, compiles and differentiates
w.r.t. the input, offset, mask, weight and bias.

Semantics are torchvision's CPU kernel (`deform_conv2d_kernel.cpp`) and ONNX's DeformConv: output
position (oy, ox) and kernel tap (i, j) of offset group g sample every input channel of that group
at y = oy * stride_h - pad_h + i * dilation_h + offset[n, g*2K + 2(i*kw + j)] and
x = ox * stride_w - pad_w + j * dilation_w + offset[n, g*2K + 2(i*kw + j) + 1] (K = kh * kw), bilinearly
with corners outside the image reading zero, times mask[n, g*K + i*kw + j] (DCNv2); the sampled
columns then meet the weight as a grouped convolution does (weight groups C / weight.shape[1]).

The four corners of every sample are read by one `take` from the input laid out as
(N * G * H * W, C / G) and summed with their bilinear weights (which carry the mask and a zero for a
corner outside the image), so the input's gradient is `take`'s scatter-add and the offset's is the
bilinear weights' derivative -- torchvision's `deformable_col2im` / `col2im_coord` kernels; the
columns meet the weight in one batched matmul over the weight groups.
"""
from __future__ import annotations

from typing import Any

from .. import nn
from .. import ops as _o
from ..ir import dtypes as dt
from ..nn import init
from ..nn.layers import empty
from ..tensor import Tensor, default_float_dtype


def _t(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else _o.core._tensor(x)


def _pair(v: Any, name: str) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise ValueError(f"deform_conv2d: {name} must be an int or a pair of ints, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def deform_conv_core(x: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None, mask: Tensor | None,
                     stride: tuple[int, int], pad: tuple[int, int], dilation: tuple[int, int],
                     offset_groups: int) -> Tensor:
    """Deformable convolution of x (N, C, H, W) with weight (O, C / groups, kh, kw); the output size is
    the offset's (N, 2 * offset_groups * kh * kw, OH, OW) spatial size and `pad` the (top, left) padding
    (ONNX's asymmetric pads only change the output size). Shapes are checked by the callers."""
    n, c, h, w = x.shape
    o, cw, kh, kw = weight.shape
    oh, ow = offset.shape[2], offset.shape[3]
    g, wg = offset_groups, c // cw
    cg, k = c // g, kh * kw
    d = x.dtype
    if n == 0 or o == 0 or oh == 0 or ow == 0:
        return _o.zeros((n, o, oh, ow), dtype=d)
    off = _o.reshape(_o.cast(offset, d), (n, g, kh, kw, 2, oh, ow))
    dy = off[:, :, :, :, 0]                                              # (N, G, kh, kw, OH, OW)
    dx = off[:, :, :, :, 1]
    shape = (1, 1, kh, kw, oh, ow)
    y = dy + (_o.iota(shape, 2, d) * float(dilation[0]) + _o.iota(shape, 4, d) * float(stride[0]) - float(pad[0]))
    xx = dx + (_o.iota(shape, 3, d) * float(dilation[1]) + _o.iota(shape, 5, d) * float(stride[1]) - float(pad[1]))
    # the bilinear corners: (index, weight, inside the image) per axis; floor's gradient is zero, so
    # the coordinate's gradient is the weights' (torchvision's get_coordinate_weight)
    y0, x0 = _o.floor(y), _o.floor(xx)
    ly, lx = y - y0, xx - x0
    yi, xi = _o.cast(y0, dt.int64), _o.cast(x0, dt.int64)

    def taps(i0: Tensor, lo: Tensor, size: int) -> list[tuple[Tensor, Tensor, Tensor]]:
        out = []
        for idx, wt in ((i0, 1.0 - lo), (i0 + 1, lo)):
            ok = _o.logical_and(_o.ge(idx, 0), _o.lt(idx, size))
            out.append((_o.clamp(idx, 0, size - 1), wt, ok))
        return out

    base = (_o.iota((n, g, 1, 1, 1, 1), 0, dt.int64) * g + _o.iota((n, g, 1, 1, 1, 1), 1, dt.int64)) * (h * w)
    m = None if mask is None else _o.reshape(_o.cast(mask, d), (n, g, kh, kw, oh, ow))
    idx, wts = [], []
    for ry, wy, oky in taps(yi, ly, h):
        for rx, wx, okx in taps(xi, lx, w):
            wt = _o.where(_o.logical_and(oky, okx), wy * wx, 0.0)
            idx.append(base + ry * w + rx)
            wts.append(wt if m is None else wt * m)
    pixels = _o.reshape(_o.movedim(_o.reshape(x, (n, g, cg, h * w)), 2, 3), (n * g * h * w, cg))
    vals = _o.take(pixels, _o.stack(idx, 0), 0)                         # (4, N, G, kh, kw, OH, OW, C/G)
    cols = _o.sum(vals * _o.expand_dims(_o.stack(wts, 0), -1), 0)      # (N, G, kh, kw, OH, OW, C/G)
    cols = _o.permute(cols, (0, 1, 6, 2, 3, 4, 5))                     # channel c = g * C/G + its index
    cols = _o.reshape(cols, (n, wg, cw * k, oh * ow))
    wt = _o.reshape(_o.cast(weight, d), (1, wg, o // wg, cw * k))
    out = _o.reshape(_o.matmul(wt, cols), (n, o, oh, ow))
    if bias is not None:
        out = out + _o.reshape(_o.cast(bias, d), (1, o, 1, 1))
    return out


def deform_conv2d(input: Any, offset: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
                  dilation: Any = 1, mask: Any = None) -> Tensor:
    """Deformable convolution v2 (v1 without `mask`), torchvision's signature and semantics:
    input (N, C, H, W), offset (N, 2 * offset_groups * kh * kw, OH, OW) as (dy, dx) pairs per kernel
    tap, weight (O, C / groups, kh, kw), bias (O,), mask (N, offset_groups * kh * kw, OH, OW);
    offset_groups and groups are read from the shapes, as torchvision does. -> (N, O, OH, OW)."""
    x, off, w = _t(input), _t(offset), _t(weight)
    if x.ndim != 4 or not x.dtype.is_float:
        raise ValueError(f"deform_conv2d: expected a floating (N, C, H, W) input, got {x.dtype.name} {x.shape}")
    if w.ndim != 4 or off.ndim != 4:
        raise ValueError(f"deform_conv2d: weight and offset must be 4-d, got {w.shape} and {off.shape}")
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    dh, dw = _pair(dilation, "dilation")
    if sh <= 0 or sw <= 0 or dh <= 0 or dw <= 0 or ph < 0 or pw < 0:
        raise ValueError(f"deform_conv2d: stride {(sh, sw)} and dilation {(dh, dw)} must be positive, padding "
                         f"{(ph, pw)} non-negative")
    n, c, h, wd = x.shape
    o, cw, kh, kw = w.shape
    k = kh * kw
    groups = off.shape[1] // (2 * k) if k else 0
    if groups == 0 or off.shape[1] % (2 * k):
        raise RuntimeError(f"deform_conv2d: the shape of the offset tensor at dimension 1 is not valid. It should be "
                           f"a multiple of 2 * weight.size[2] * weight.size[3]. Got offset.shape[1]={off.shape[1]}, "
                           f"while 2 * weight.size[2] * weight.size[3]={2 * k}")
    if cw == 0 or c % cw or o % (c // cw):
        raise RuntimeError(f"deform_conv2d: the input's {c} channels and the weight {w.shape} do not make whole "
                           "weight groups (C must be a multiple of weight.shape[1], O of C / weight.shape[1])")
    if c % groups:
        raise RuntimeError(f"deform_conv2d: the input's {c} channels are not a multiple of the {groups} offset groups")
    oh = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    ow = (wd + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    if oh <= 0 or ow <= 0:
        raise RuntimeError(f"deform_conv2d: calculated output size too small - out_h: {oh} out_w: {ow}")
    if off.shape[0] != n or off.shape[2:] != (oh, ow):
        raise RuntimeError(f"deform_conv2d: offset {off.shape} does not match the batch {n} and the output size "
                           f"{(oh, ow)} (offset output dims must be the computed output dims)")
    m = None
    if mask is not None:
        m = _t(mask)
        if m.shape != (n, groups * k, oh, ow):
            raise RuntimeError(f"deform_conv2d: mask {m.shape} must be (N, offset_groups * kh * kw, OH, OW) = "
                               f"{(n, groups * k, oh, ow)}")
    b = None
    if bias is not None:
        b = _t(bias)
        if b.shape != (o,):
            raise RuntimeError(f"deform_conv2d: bias {b.shape} must be ({o},)")
    return deform_conv_core(x, off, w, b, m, (sh, sw), (ph, pw), (dh, dw), groups)


class DeformConv2d(nn.Module):
    """torchvision's DeformConv2d: weight (out, in / groups, kh, kw) and bias (out,) with Conv2d's
    default init; forward(input, offset, mask=None) -> deform_conv2d."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1, padding: Any = 0,
                 dilation: Any = 1, groups: int = 1, bias: bool = True) -> None:
        super().__init__()
        if in_channels % groups != 0:
            raise ValueError("in_channels must be divisible by groups")
        if out_channels % groups != 0:
            raise ValueError("out_channels must be divisible by groups")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        self.groups = groups
        d = default_float_dtype()
        self.weight = empty((out_channels, in_channels // groups, *self.kernel_size), d)
        self.bias = empty((out_channels,), d) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.conv_default_(self.weight, self.bias)

    def forward(self, input: Any, offset: Any, mask: Any = None) -> Tensor:
        return deform_conv2d(input, offset, self.weight, self.bias, stride=self.stride, padding=self.padding,
                             dilation=self.dilation, mask=mask)

    def __repr__(self) -> str:
        s = (f"{type(self).__name__}({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        s += f", padding={self.padding}" if self.padding != (0, 0) else ""
        s += f", dilation={self.dilation}" if self.dilation != (1, 1) else ""
        s += f", groups={self.groups}" if self.groups != 1 else ""
        s += ", bias=False" if self.bias is None else ""
        return s + ")"


__all__ = ["DeformConv2d", "deform_conv2d"]

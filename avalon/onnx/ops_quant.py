"""ONNX's integer and quantized ops (what onnxruntime's quantizer writes) as Avalon ops.

Integer products are computed in float64, exact for 8-bit operands (each product < 2^16, sums of
fewer than 2^37 terms), so every backend gives the int32 accumulator ONNX defines; QuantizeLinear,
DequantizeLinear and QLinearMatMul are in ops_math.
"""
from __future__ import annotations

from typing import Any

from .. import ops
from ..ir import dtypes as dt
from ..tensor import Tensor
from .ops_nn import conv_
from .table import Node, T, onnx_op


def _shifted(x: Any, zp: Any, shape: list[int] | None = None) -> Tensor:
    """x - zero_point in float64; `shape` reshapes a non-scalar zero point to broadcast."""
    x = ops.cast(T(x), dt.float64)
    if zp is None:
        return x
    z = ops.cast(T(zp), dt.float64)
    if z.numel() == 1:
        z = ops.reshape(z, ())
    elif shape is not None:
        z = ops.reshape(z, shape)
    return ops.sub(x, z)


def _saturate(d: Tensor, out: Any) -> Tensor:
    """Round half to even and clamp to `out`'s integer range."""
    lo, hi = dt.int_range(out)
    return ops.cast(ops.clamp(ops.round(d), float(lo), float(hi)), out)


def _scalar(v: Any) -> Tensor:
    return ops.cast(ops.reshape(T(v), ()), dt.float64)


@onnx_op("MatMulInteger")
def matmul_integer(node: Node, a: Any, b: Any, a_zp: Any = None, b_zp: Any = None) -> Tensor:
    """int32 (a - a_zp) @ (b - b_zp); a 1-d a_zp is per row of a, a 1-d b_zp per column of b."""
    a, b = T(a), T(b)
    za = a_zp if a_zp is None or T(a_zp).ndim != 1 else ops.reshape(T(a_zp), (-1, 1))
    return ops.cast(ops.matmul(_shifted(a, za), _shifted(b, b_zp)), dt.int32)


def _conv_weight_zp(w: Tensor, zp: Any) -> Tensor:
    """w - w_zp with a zero point per output channel (1-d, w.shape[0] long) or per tensor."""
    if zp is not None and T(zp).numel() > 1:
        return _shifted(w, zp, [-1] + [1] * (w.ndim - 1))
    return _shifted(w, zp)


@onnx_op("ConvInteger")
def conv_integer(node: Node, x: Any, w: Any, x_zp: Any = None, w_zp: Any = None) -> Tensor:
    """int32 convolution of the zero-point-shifted operands (Conv's attributes)."""
    w = T(w)
    return ops.cast(conv_(node, _shifted(x, x_zp), _conv_weight_zp(w, w_zp)), dt.int32)


@onnx_op("QLinearConv")
def qlinear_conv(node: Node, x: Any, x_scale: Any, x_zp: Any, w: Any, w_scale: Any, w_zp: Any, y_scale: Any,
                 y_zp: Any = None, bias: Any = None) -> Tensor:
    """The integer convolution (plus the int32 bias, which shares its scale x_scale * w_scale),
    rescaled by x_scale * w_scale / y_scale (w_scale per output channel or per tensor), shifted by
    y's zero point, rounded half to even and saturated to y's type (x's type without y_zp)."""
    x, w = T(x), T(w)
    acc = conv_(node, _shifted(x, x_zp), _conv_weight_zp(w, w_zp))
    if bias is not None:
        acc = ops.add(acc, ops.reshape(ops.cast(T(bias), dt.float64), [1, -1] + [1] * (acc.ndim - 2)))
    ws = ops.cast(T(w_scale), dt.float64)
    ws = ops.reshape(ws, ()) if ws.numel() == 1 else ops.reshape(ws, [1, -1] + [1] * (acc.ndim - 2))
    d = ops.mul(acc, ops.div(ops.mul(_scalar(x_scale), ws), _scalar(y_scale)))
    if y_zp is not None:
        d = ops.add(d, _scalar(y_zp))
    return _saturate(d, T(y_zp).dtype if y_zp is not None else x.dtype)


@onnx_op("DynamicQuantizeLinear")
def dynamic_quantize_linear(node: Node, x: Any) -> tuple[Tensor, Tensor, Tensor]:
    """uint8 quantization over x's range widened to hold 0: scale = (max - min) / 255 (1/255 when
    the range is empty), zero point = round(-min / scale) saturated; float32 arithmetic as ONNX."""
    x = T(x)
    f = dt.float32
    mx = ops.maximum(ops.amax(x), ops.full((), 0.0, f))
    mn = ops.minimum(ops.amin(x), ops.full((), 0.0, f))
    span = ops.sub(mx, mn)
    span = ops.where(ops.eq(span, ops.full((), 0.0, f)), ops.full((), 1.0, f), span)
    scale = ops.div(span, ops.full((), 255.0, f))
    zp = ops.round(ops.clamp(ops.sub(ops.full((), 0.0, f), ops.div(mn, scale)), 0.0, 255.0))
    y = ops.clamp(ops.add(ops.round(ops.div(x, scale)), zp), 0.0, 255.0)
    return ops.cast(y, dt.uint8), scale, ops.cast(zp, dt.uint8)


@onnx_op("Round")
def round_(node: Node, x: Any) -> Tensor:
    """Half to even, as numpy and torch (quantization graphs are its main users, hence here)."""
    return ops.round(T(x))

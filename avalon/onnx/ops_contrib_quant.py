"""onnxruntime's quantized `com.microsoft` ops: MatMulNBits (2/4/8-bit block-quantized weights, as
its weight-only quantizer and onnxruntime-genai's LLMs store them), the integer matmuls with a float
result, QGemm and the QLinear* element-wise and pooling ops of the QOperator format.

A QLinear op is its float op between a dequantize and a quantize (rounding half to even, saturating),
which is how onnxruntime defines them; the float op is the ONNX rule of the same name.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from .. import ops
from ..ir import dtypes as dt
from ..tensor import Tensor
from .ops_contrib import MS
from .ops_quant import _saturate, dynamic_quantize_linear
from .table import ONNX_OPS, Node, T, onnx_op, static


def _f32(v: Any) -> Tensor:
    return ops.cast(T(v), dt.float32)


def _dq(x: Any, scale: Any, zp: Any = None) -> Tensor:
    """(x - zp) * scale in float32 (scale and zp per tensor, or broadcastable)."""
    d = _f32(x)
    if zp is not None:
        d = ops.sub(d, _f32(zp))
    return ops.mul(d, _f32(scale))


def _q(y: Tensor, scale: Any, zp: Any, like: Any) -> Tensor:
    """round(y / scale) + zp, saturated to zp's integer type (else `like`'s)."""
    d = ops.round(ops.div(y, _f32(scale)))
    if zp is not None:
        d = ops.add(d, _f32(zp))
    return _saturate(d, T(zp).dtype if zp is not None else T(like).dtype)


def _unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The first `count` `bits`-wide unsigned values along the last axis of a byte array, low bits
    first within each byte (onnxruntime's packing)."""
    per = 8 // bits
    shifts = (np.arange(per) * bits).astype(np.uint8)
    vals = (packed[..., None] >> shifts) & np.uint8((1 << bits) - 1)
    return vals.reshape(*packed.shape[:-1], -1)[..., :count]


@onnx_op("MatMulNBits", domain=MS)
def matmul_nbits(node: Node, a: Any, b: Any, scales: Any, zero_points: Any = None, g_idx: Any = None,
                 bias: Any = None) -> Tensor:
    """A @ W^T + bias, W (N, K) dequantized from `bits`-wide blocks of `block_size` along K:
    (q - zero_point) * scale per block; zero points packed uint8, float, or 2^(bits-1) when absent.
    The packed weight must be a constant; dequantized once, a float32 weight in the graph."""
    bits, block = int(node.attr("bits", 4)), int(node.attr("block_size"))
    n, k = int(node.attr("N")), int(node.attr("K"))
    if bits not in (2, 4, 8):
        raise node.unsupported(f"{bits}-bit weights are not supported (2, 4 or 8)")
    if g_idx is not None or node.attr("weight_prepacked", 0):
        raise node.unsupported("g_idx and prepacked weights are not supported")
    blocks = -(-k // block)
    q = _unpack(np.asarray(static(b, "the packed weight")).reshape(n, blocks, -1), bits, block)  # (N, blocks, block)
    a = T(a)
    s = ops.reshape(_f32(scales), (n, blocks, 1))
    if zero_points is None:
        zp: Any = ops.full((), float(1 << (bits - 1)), dt.float32)
    elif T(zero_points).dtype is dt.uint8:
        zp = Tensor(_unpack(np.asarray(static(zero_points, "the zero points")).reshape(n, -1), bits, blocks)
                    .astype(np.float32).reshape(n, blocks, 1))
    else:
        zp = ops.reshape(_f32(zero_points), (n, blocks, 1))
    w = ops.mul(ops.sub(Tensor(q.astype(np.float32)), zp), s)
    w = ops.narrow(ops.reshape(w, (n, blocks * block)), 1, 0, k)
    y = ops.matmul(ops.cast(a, dt.float32), ops.transpose(w, 0, 1))
    if bias is not None:
        y = ops.add(y, _f32(bias))
    return ops.cast(y, a.dtype)


def _int_matmul(a: Any, b: Any, a_zp: Any, b_zp: Any) -> Tensor:
    """(a - a_zp) @ (b - b_zp) in float64, exact for 8-bit operands."""
    def shifted(x: Any, zp: Any) -> Tensor:
        x = ops.cast(T(x), dt.float64)
        return x if zp is None else ops.sub(x, ops.cast(T(zp), dt.float64))
    return ops.matmul(shifted(a, a_zp), shifted(b, b_zp))


@onnx_op("MatMulIntegerToFloat", domain=MS)
def matmul_integer_to_float(node: Node, a: Any, b: Any, a_scale: Any, b_scale: Any, a_zp: Any = None,
                            b_zp: Any = None, bias: Any = None) -> Tensor:
    y = ops.mul(ops.cast(_int_matmul(a, b, a_zp, b_zp), dt.float32), ops.mul(_f32(a_scale), _f32(b_scale)))
    return y if bias is None else ops.add(y, _f32(bias))


@onnx_op("DynamicQuantizeMatMul", domain=MS)
def dynamic_quantize_matmul(node: Node, a: Any, b: Any, b_scale: Any, b_zp: Any = None, bias: Any = None) -> Tensor:
    """A quantized to uint8 over its range (as DynamicQuantizeLinear), then MatMulIntegerToFloat."""
    qa, sa, za = dynamic_quantize_linear(node, a)
    return matmul_integer_to_float(node, qa, b, sa, b_scale, za, b_zp, bias)


@onnx_op("QGemm", domain=MS)
def qgemm(node: Node, a: Any, a_scale: Any, a_zp: Any, b: Any, b_scale: Any, b_zp: Any = None, c: Any = None,
          y_scale: Any = None, y_zp: Any = None) -> Tensor:
    """alpha * A' B' * a_scale * b_scale + C (int32 C shares that scale; b_scale per column or per
    tensor); quantized to y's scale and zero point when given, else float32."""
    a, b = T(a), T(b)
    if node.attr("transA", 0):
        a = ops.t(a)
    zb = b_zp
    if node.attr("transB", 0):
        b = ops.t(b)
    acc = _int_matmul(a, b, a_zp, zb)
    if c is not None:
        acc = ops.add(acc, ops.cast(T(c), dt.float64))
    scale = ops.mul(ops.cast(_f32(a_scale), dt.float64), ops.cast(_f32(b_scale), dt.float64))
    y = ops.cast(ops.mul(acc, ops.mul(scale, ops.full((), float(node.attr("alpha", 1.0)), dt.float64))), dt.float32)
    return y if y_scale is None else _q(y, y_scale, y_zp, a)


def _qlinear(name: str, n_in: int) -> Any:
    """The QLinear form of ONNX op `name` with `n_in` quantized inputs (each x, scale, zero point)
    and the output's scale and zero point last."""
    def rule(node: Node, *args: Any) -> Tensor:
        if name == "Softmax":  # its `opset` attribute says whether Softmax coerces to 2-d (before 13)
            node = replace(node, opset=int(node.attr("opset", node.opset)))
        args = args + (None,) * (3 * n_in + 2 - len(args))
        xs = [_dq(*args[3 * i:3 * i + 3]) for i in range(n_in)]
        return _q(ONNX_OPS[name](node, *xs), args[3 * n_in], args[3 * n_in + 1], args[0])
    return rule


for _op, _n in (("Add", 2), ("Mul", 2), ("Sigmoid", 1), ("LeakyRelu", 1), ("GlobalAveragePool", 1),
                ("AveragePool", 1), ("Softmax", 1)):
    onnx_op(f"QLinear{_op}", domain=MS)(_qlinear(_op, _n))


def _channels_first(node: Node, rule: Any) -> Any:
    """`rule` on NHWC input when channels_last is set (onnxruntime's QLinear pooling option)."""
    def wrapped(node: Node, x: Any, *rest: Any) -> Tensor:
        if not node.attr("channels_last", 0):
            return rule(node, x, *rest)
        x = T(x)
        order = (0, x.ndim - 1, *range(1, x.ndim - 1))
        back = (0, *range(2, x.ndim), 1)
        return ops.permute(rule(node, ops.permute(x, order), *rest), back)
    return wrapped


for _op in ("GlobalAveragePool", "AveragePool"):
    onnx_op(f"QLinear{_op}", domain=MS)(_channels_first(None, _qlinear(_op, 1)))


@onnx_op("QLinearConcat", domain=MS)
def qlinear_concat(node: Node, y_scale: Any, y_zp: Any, *rest: Any) -> Tensor:
    xs = [_dq(rest[i], rest[i + 1], rest[i + 2]) for i in range(0, len(rest), 3)]
    return _q(ops.concat(xs, int(node.attr("axis"))), y_scale, y_zp, rest[0])

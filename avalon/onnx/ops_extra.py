"""More ONNX ops mapped onto existing Avalon ops: Mod, GatherElements, Hardmax, RMSNormalization,
SpaceToDepth/DepthToSpace, Swish, IsNaN/IsInf, Sinh/Cosh."""
from __future__ import annotations

import math
from typing import Any

from .. import ops
from ..ir import dtypes as dt
from ..tensor import Tensor
from .table import Node, T, axis, onnx_op


def _c(x: Tensor, v: float) -> Tensor:
    return ops.full((), v, x.dtype)


@onnx_op("Mod")
def mod(node: Node, a: Any, b: Any) -> Tensor:
    """fmod=0: the remainder takes the divisor's sign (integers only); fmod=1: C's fmod (the dividend's)."""
    a, b = T(a), T(b)
    if node.attr("fmod", 0):
        q = ops.div(ops.cast(a, dt.float64), ops.cast(b, dt.float64))
        trunc = ops.mul(ops.sign(q), ops.floor(ops.abs(q)))
        return ops.cast(ops.sub(ops.cast(a, dt.float64), ops.mul(trunc, ops.cast(b, dt.float64))), a.dtype)
    if a.dtype.is_float:  # numpy's mod on inf/nan/-0 edges is not a - floor(a/b)*b; not taken
        raise node.unsupported("fmod=0 on floating-point inputs is not supported")
    # integer floor division through float64: exact while |a| < 2**53
    q = ops.cast(ops.floor(ops.div(ops.cast(a, dt.float64), ops.cast(b, dt.float64))), a.dtype)
    return ops.sub(a, ops.mul(q, b))


@onnx_op("GatherElements")
def gather_elements(node: Node, x: Any, idx: Any) -> Tensor:
    """A take from the flattened input at each index's linear offset (exact for every dtype)."""
    x, i = T(x), ops.cast(T(idx), dt.int64)
    a = axis(node.attr("axis", 0), x.ndim)
    i = ops.where(ops.lt(i, 0), ops.add(i, x.shape[a]), i)
    strides = [math.prod(x.shape[d + 1:]) for d in range(x.ndim)]
    lin = None
    for d in range(x.ndim):
        coord = i if d == a else ops.iota(i.shape, d)
        term = ops.mul(ops.cast(coord, dt.int64), strides[d])
        lin = term if lin is None else ops.add(lin, term)
    out = ops.take(ops.reshape(x, (-1,)), ops.reshape(lin, (-1,)), 0)
    return ops.reshape(out, i.shape)


@onnx_op("Hardmax")
def hardmax(node: Node, x: Any) -> Tensor:
    x = T(x)
    a = axis(node.attr("axis", -1), x.ndim)
    return ops.cast(ops.eq(ops.iota(x.shape, a), ops.argmax(x, a, True)), x.dtype)


@onnx_op("RMSNormalization")
def rms_norm(node: Node, x: Any, scale: Any) -> Tensor:
    x = T(x)
    a = axis(node.attr("axis", -1), x.ndim)
    xf = ops.cast(x, dt.float32) if node.attr("stash_type", 1) == 1 and x.dtype is not dt.float64 else x
    ms = ops.mean(ops.mul(xf, xf), list(range(a, x.ndim)), keepdims=True)
    y = ops.mul(xf, ops.rsqrt(ops.add(ms, _c(xf, node.attr("epsilon", 1e-5)))))
    return ops.mul(ops.cast(y, x.dtype), T(scale))


@onnx_op("SpaceToDepth")
def space_to_depth(node: Node, x: Any) -> Tensor:
    x, b = T(x), node.attr("blocksize")
    n, c, h, w = x.shape
    perm = (0, 3, 5, 1, 2, 4) if node.attr("mode", "DCR") == "DCR" else (0, 1, 3, 5, 2, 4)
    y = ops.permute(ops.reshape(x, (n, c, h // b, b, w // b, b)), perm)
    return ops.reshape(y, (n, c * b * b, h // b, w // b))


@onnx_op("DepthToSpace")
def depth_to_space(node: Node, x: Any) -> Tensor:
    x, b = T(x), node.attr("blocksize")
    n, c, h, w = x.shape
    if node.attr("mode", "DCR") == "DCR":
        y = ops.permute(ops.reshape(x, (n, b, b, c // (b * b), h, w)), (0, 3, 4, 1, 5, 2))
    else:
        y = ops.permute(ops.reshape(x, (n, c // (b * b), b, b, h, w)), (0, 1, 4, 2, 5, 3))
    return ops.reshape(y, (n, c // (b * b), h * b, w * b))


@onnx_op("Swish")
def swish(node: Node, x: Any) -> Tensor:
    x = T(x)
    return ops.mul(x, ops.sigmoid(ops.mul(x, _c(x, node.attr("alpha", 1.0)))))


@onnx_op("IsNaN")
def isnan(node: Node, x: Any) -> Tensor:
    x = T(x)
    return ops.ne(x, x)


@onnx_op("IsInf")
def isinf(node: Node, x: Any) -> Tensor:
    x = T(x)
    pos, neg = ops.eq(x, _c(x, math.inf)), ops.eq(x, _c(x, -math.inf))
    if not node.attr("detect_positive", 1):
        return neg
    if not node.attr("detect_negative", 1):
        return pos
    return ops.logical_or(pos, neg)


@onnx_op("Sinh", "Cosh")
def sinh_cosh(node: Node, x: Any) -> Tensor:
    x = T(x)
    e, ei = ops.exp(x), ops.exp(ops.neg(x))
    return ops.mul(ops.sub(e, ei) if node.op_type == "Sinh" else ops.add(e, ei), _c(x, 0.5))

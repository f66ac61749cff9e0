"""ONNX elementwise math, activations, comparisons, reductions, Einsum, Det, CumProd and the losses
(NegativeLogLikelihoodLoss, SoftmaxCrossEntropyLoss) as Avalon ops."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import ops
from ..ir import dtypes as dt
from ..nn import functional as F
from ..tensor import Tensor
from .table import Node, T, axis, ints, onnx_op

_UNARY = {"Abs": ops.abs, "Neg": ops.neg, "Exp": ops.exp, "Log": ops.log, "Sqrt": ops.sqrt,
          "Sigmoid": ops.sigmoid, "Tanh": ops.tanh, "Relu": ops.relu, "Erf": ops.erf, "Sin": ops.sin,
          "Cos": ops.cos, "Acos": ops.acos, "Asin": ops.asin, "Atan": ops.atan, "Acosh": ops.acosh,
          "Asinh": ops.asinh, "Atanh": ops.atanh, "Sign": ops.sign, "Not": ops.logical_not, "Softsign": F.softsign,
          "Reciprocal": lambda x: ops.div(1.0, x) if x.dtype.is_float else ops.reciprocal(x)}
for _name, _fn in _UNARY.items():
    onnx_op(_name)(lambda node, x, _fn=_fn: _fn(T(x)))


@onnx_op("Floor")
def floor(node: Node, x: Any) -> Tensor:
    return ops.floor(T(x))


@onnx_op("Ceil")
def ceil(node: Node, x: Any) -> Tensor:
    return ops.neg(ops.floor(ops.neg(T(x))))


@onnx_op("Tan")
def tan(node: Node, x: Any) -> Tensor:
    return ops.div(ops.sin(T(x)), ops.cos(T(x)))


def _same(x: Tensor, v: Any) -> Tensor:
    """A Python number as a 0-d tensor of x's dtype (ONNX attributes never promote)."""
    return ops.full((), v, x.dtype)


@onnx_op("Softplus")
def softplus(node: Node, x: Any) -> Tensor:
    x = T(x)
    return ops.add(ops.relu(x), ops.log(ops.add(ops.exp(ops.neg(ops.abs(x))), _same(x, 1.0))))


@onnx_op("LeakyRelu")
def leaky_relu(node: Node, x: Any) -> Tensor:
    x = T(x)
    return ops.where(ops.ge(x, _same(x, 0)), x, ops.mul(x, _same(x, node.attr("alpha", 0.01))))


@onnx_op("PRelu")
def prelu(node: Node, x: Any, slope: Any) -> Tensor:
    x = T(x)
    return ops.where(ops.ge(x, _same(x, 0)), x, ops.mul(x, T(slope)))


@onnx_op("Elu")
def elu(node: Node, x: Any) -> Tensor:
    x = T(x)
    a = node.attr("alpha", 1.0)
    return ops.where(ops.gt(x, _same(x, 0)), x, ops.mul(_same(x, a), ops.sub(ops.exp(x), _same(x, 1.0))))


@onnx_op("Celu")
def celu(node: Node, x: Any) -> Tensor:
    x = T(x)
    a = node.attr("alpha", 1.0)
    neg = ops.mul(_same(x, a), ops.sub(ops.exp(ops.div(ops.minimum(x, _same(x, 0)), _same(x, a))), _same(x, 1.0)))
    return ops.add(ops.relu(x), neg)


@onnx_op("Selu")
def selu(node: Node, x: Any) -> Tensor:
    x = T(x)
    a, g = node.attr("alpha", 1.67326319217681884765625), node.attr("gamma", 1.05070102214813232421875)
    inner = ops.where(ops.gt(x, _same(x, 0)), x, ops.mul(_same(x, a), ops.sub(ops.exp(x), _same(x, 1.0))))
    return ops.mul(inner, _same(x, g))


@onnx_op("ThresholdedRelu")
def thresholded_relu(node: Node, x: Any) -> Tensor:
    x = T(x)
    return ops.where(ops.gt(x, _same(x, node.attr("alpha", 1.0))), x, _same(x, 0))


@onnx_op("HardSigmoid")
def hard_sigmoid(node: Node, x: Any) -> Tensor:
    x = T(x)
    a, b = node.attr("alpha", 0.2), node.attr("beta", 0.5)
    return ops.clamp(ops.add(ops.mul(x, _same(x, a)), _same(x, b)), _same(x, 0.0), _same(x, 1.0))


@onnx_op("HardSwish")
def hard_swish(node: Node, x: Any) -> Tensor:
    x = T(x)
    return ops.mul(x, ops.clamp(ops.add(ops.mul(x, _same(x, 1 / 6)), _same(x, 0.5)), _same(x, 0.0), _same(x, 1.0)))


@onnx_op("Gelu")
def gelu(node: Node, x: Any) -> Tensor:
    return F.gelu(T(x), node.attr("approximate", "none"))


@onnx_op("Mish")
def mish(node: Node, x: Any) -> Tensor:
    x = T(x)
    return ops.mul(x, ops.tanh(softplus(node, x)))


@onnx_op("Clip")
def clip(node: Node, x: Any, lo: Any = None, hi: Any = None) -> Tensor:
    x = T(x)
    if node.opset < 11:
        lo, hi = node.attr("min"), node.attr("max")
    lo = None if lo is None else (_same(x, lo) if isinstance(lo, float) else ops.cast(T(lo), x.dtype))
    hi = None if hi is None else (_same(x, hi) if isinstance(hi, float) else ops.cast(T(hi), x.dtype))
    return x if lo is None and hi is None else ops.clamp(x, lo, hi)  # (ONNX's Clip without bounds is x)


# -- binary ---------------------------------------------------------------------------------

_BINARY = {"Add": ops.add, "Sub": ops.sub, "Mul": ops.mul, "Equal": ops.eq, "Less": ops.lt,
           "LessOrEqual": ops.le, "Greater": ops.gt, "GreaterOrEqual": ops.ge, "And": ops.logical_and,
           "Or": ops.logical_or, "Xor": ops.ne}
for _name, _fn in _BINARY.items():
    onnx_op(_name)(lambda node, a, b, _fn=_fn: _fn(T(a), T(b)))


@onnx_op("Div")
def div(node: Node, a: Any, b: Any) -> Tensor:
    a, b = T(a), T(b)
    if a.dtype.is_float:
        return ops.div(a, b)
    q = ops.div(ops.cast(a, dt.float64), ops.cast(b, dt.float64))  # integer division truncates
    return ops.cast(ops.mul(ops.sign(q), ops.floor(ops.abs(q))), a.dtype)


@onnx_op("Pow")
def pow_(node: Node, a: Any, b: Any) -> Tensor:
    a, b = T(a), T(b)
    out = ops.pow(ops.cast(a, dt.float64) if not a.dtype.is_float else a, ops.cast(b, a.dtype if a.dtype.is_float
                                                                                    else dt.float64))
    return ops.cast(out, a.dtype)


@onnx_op("Where")
def where(node: Node, c: Any, a: Any, b: Any) -> Tensor:
    return ops.where(T(c), T(a), T(b))


def _variadic(fn: Any) -> Any:
    def rule(node: Node, *xs: Any) -> Tensor:
        out = T(xs[0])
        for x in xs[1:]:
            out = fn(out, T(x))
        return out
    return rule


onnx_op("Sum")(_variadic(ops.add))
onnx_op("Max")(_variadic(ops.maximum))
onnx_op("Min")(_variadic(ops.minimum))


@onnx_op("Mean")
def mean_(node: Node, *xs: Any) -> Tensor:
    s = _variadic(ops.add)(node, *xs)
    return ops.div(s, _same(s, float(len(xs))))


# -- reductions -----------------------------------------------------------------------------

def _reduce_axes(node: Node, x: Tensor, axes_in: Any) -> list[int] | None:
    """The axes to reduce (None: every axis); `[]` with noop_with_empty_axes means none."""
    if axes_in is not None:
        axes = ints(axes_in, "axes")
    else:
        axes = list(node.attr("axes", []))
    if not axes:
        return [] if node.attr("noop_with_empty_axes", 0) else None
    return [axis(a, x.ndim) for a in axes]


def _reduction(fn: Any) -> Any:
    def rule(node: Node, x: Any, axes_in: Any = None) -> Tensor:
        x = T(x)
        axes = _reduce_axes(node, x, axes_in)
        if axes == []:
            return fn(x, None, True, identity=True)
        reduced = axes if axes is not None else range(x.ndim)
        keep = bool(node.attr("keepdims", 1))
        if fn in _EMPTY_IDENTITY and any(x.shape[a] == 0 for a in reduced):
            shape = [1 if d in reduced else n for d, n in enumerate(x.shape) if keep or d not in reduced]
            return ops.full(tuple(shape), _EMPTY_IDENTITY[fn](x.dtype), x.dtype)
        if x.dtype is dt.bool_ and fn in (_max, _min):
            return ops.cast(fn(ops.cast(x, dt.int32), axes, keep), dt.bool_)
        return fn(x, axes, keep)
    return rule


def _sum(x: Tensor, axes: Any, keep: bool, identity: bool = False) -> Tensor:
    """ONNX keeps the element type (torch's sum widens i32)."""
    return x if identity else ops.sum(x, axes, keep, dtype=None if x.dtype is dt.bool_ else x.dtype)


def _mean(x: Tensor, axes: Any, keep: bool, identity: bool = False) -> Tensor:
    return x if identity else ops.mean(x, axes, keep)


def _max(x: Tensor, axes: Any, keep: bool, identity: bool = False) -> Tensor:
    return x if identity else ops.amax(x, axes, keep)


def _min(x: Tensor, axes: Any, keep: bool, identity: bool = False) -> Tensor:
    return x if identity else ops.amin(x, axes, keep)


def _sum_square(x: Tensor, axes: Any, keep: bool, identity: bool = False) -> Tensor:
    return _sum(ops.mul(x, x), axes, keep, identity)


def _l1(x: Tensor, axes: Any, keep: bool, identity: bool = False) -> Tensor:
    return _sum(ops.abs(x), axes, keep, identity)


def _l2(x: Tensor, axes: Any, keep: bool, identity: bool = False) -> Tensor:
    s = _sum_square(ops.cast(x, dt.float32) if not x.dtype.is_float else x, axes, keep, identity)
    return ops.cast(ops.sqrt(s), x.dtype)


def _log_sum(x: Tensor, axes: Any, keep: bool, identity: bool = False) -> Tensor:
    return ops.log(_sum(x, axes, keep, identity))


def _log_sum_exp(x: Tensor, axes: Any, keep: bool, identity: bool = False) -> Tensor:
    if identity:
        return ops.log(ops.exp(x))
    return ops.logsumexp(x, axes if axes is not None else list(range(x.ndim)), keep)


def _prod(x: Tensor, axes: Any, keep: bool, identity: bool = False) -> Tensor:
    if identity:
        return x
    axes = list(range(x.ndim)) if axes is None else axes
    out = x
    for a in sorted(axes, reverse=True):  # a product by slices: exact, and fine for small axes
        parts = ops.split(out, 1, a)
        acc = parts[0]
        for p in parts[1:]:
            acc = ops.mul(acc, p)
        out = acc if keep else ops.squeeze(acc, a)
    return out


def _lowest(d: dt.DType) -> Any:
    return False if d is dt.bool_ else (-math.inf if d.is_float else dt.int_range(d)[0])


def _highest(d: dt.DType) -> Any:
    return True if d is dt.bool_ else (math.inf if d.is_float else dt.int_range(d)[1])


_EMPTY_IDENTITY = {_max: _lowest, _min: _highest, _prod: lambda d: 1, _log_sum_exp: lambda d: -math.inf}
"""What a reduction over an empty set gives (the spec: the op's identity, the dtype's min / max)."""

for _name, _fn in (("ReduceSum", _sum), ("ReduceMean", _mean), ("ReduceMax", _max), ("ReduceMin", _min),
                   ("ReduceSumSquare", _sum_square), ("ReduceL1", _l1), ("ReduceL2", _l2),
                   ("ReduceLogSum", _log_sum), ("ReduceLogSumExp", _log_sum_exp), ("ReduceProd", _prod)):
    onnx_op(_name)(_reduction(_fn))


def _arg(neg: bool) -> Any:
    def rule(node: Node, x: Any) -> Tensor:
        x = T(x)
        a = axis(node.attr("axis", 0), x.ndim)
        keep = bool(node.attr("keepdims", 1))
        if node.attr("select_last_index", 0):
            flipped = ops.take(x, ops.arange(x.shape[a] - 1, -1, -1), a)
            idx = (ops.argmin if neg else ops.argmax)(flipped, a, keep)
            return ops.sub(x.shape[a] - 1, idx)
        return (ops.argmin if neg else ops.argmax)(x, a, keep)
    return rule


onnx_op("ArgMax")(_arg(False))


@onnx_op("TopK")
def topk(node: Node, x: Any, k: Any = None) -> tuple:
    """The k largest (smallest) along `axis`, sorted; ties by lower index first, as ONNX specifies
    (Avalon's sort is stable). Opset < 10 gives k as an attribute."""
    x = T(x)
    a = axis(node.attr("axis", -1), x.ndim)
    n = int(ints(k, "K")[0]) if k is not None else int(node.attr("k"))
    return tuple(ops.topk(x, n, a, largest=bool(node.attr("largest", 1))))
onnx_op("ArgMin")(_arg(True))


def _softmax_like(fn: Any) -> Any:
    def rule(node: Node, x: Any) -> Tensor:
        x = T(x)
        if node.opset < 13:
            a = axis(node.attr("axis", 1), x.ndim)
            flat = ops.reshape(x, (math.prod(x.shape[:a]), -1))
            return ops.reshape(fn(flat, 1), x.shape)
        return fn(x, node.attr("axis", -1))
    return rule


onnx_op("Softmax")(_softmax_like(F.softmax))
onnx_op("LogSoftmax")(_softmax_like(F.log_softmax))


@onnx_op("CumSum")
def cumsum(node: Node, x: Any, ax: Any) -> Tensor:
    x = T(x)
    a = axis(ints(ax, "axis")[0], x.ndim)
    out = ops.cumsum(x, a, reverse=bool(node.attr("reverse", 0)), dtype=x.dtype)  # ONNX keeps i32
    if node.attr("exclusive", 0):
        out = ops.sub(out, x)
    return out


@onnx_op("CumProd")
def cumprod(node: Node, x: Any, ax: Any) -> Tensor:
    """Running products (reverse: from the end; exclusive: shifted by one, a 1 first)."""
    x = T(x)
    a = axis(ints(ax, "axis")[0], x.ndim)
    rev = bool(node.attr("reverse", 0))
    y = ops.flip(x, [a]) if rev else x
    if node.attr("exclusive", 0) and x.shape[a]:
        ones = ops.full(tuple(1 if d == a else n for d, n in enumerate(x.shape)), 1, x.dtype)
        y = ops.concat([ones, ops.narrow(y, a, 0, x.shape[a] - 1)], a)
    y = ops.cumprod(y, a, dtype=x.dtype)
    return ops.flip(y, [a]) if rev else y


@onnx_op("Einsum")
def einsum(node: Node, *xs: Any) -> Tensor:
    """Half-precision operands accumulate in float32, as onnx's reference does."""
    ts = [T(x) for x in xs]
    half = ts[0].dtype in (dt.float16, dt.bfloat16)
    out = ops.einsum(node.attr("equation").replace(" ", ""), *[ops.cast(t, dt.float32) if half else t for t in ts])
    return ops.cast(out, ts[0].dtype) if half else out


@onnx_op("Det")
def det(node: Node, x: Any) -> Tensor:
    return ops.linalg.det(T(x))


BFLOAT16 = 16  # onnx.TensorProto.BFLOAT16


@onnx_op("Cast")
def cast(node: Node, x: Any) -> Any:
    """A cast to bfloat16 is taken (Falcon computes its ALiBi slopes in bf16): it rounds as torch
    does, and its result stays an Avalon tensor, since numpy has no bf16 to fold it into. bf16
    initializers and graph inputs are still refused (onnx hands them over as ml_dtypes arrays)."""
    from .dtypes import avalon_dtype
    if node.attr("to") == BFLOAT16:
        return ops.cast(T(x), dt.bfloat16)
    d = avalon_dtype(node.attr("to"), node)
    if isinstance(x, np.ndarray):
        return x.astype(d.np)
    return ops.cast(T(x), d)


@onnx_op("CastLike")
def cast_like(node: Node, x: Any, like: Any) -> Tensor:
    return ops.cast(T(x), T(like).dtype)


for _name, _fn in (("BitwiseAnd", ops.bitwise_and), ("BitwiseOr", ops.bitwise_or), ("BitwiseXor", ops.bitwise_xor)):
    onnx_op(_name)(lambda node, a, b, _fn=_fn: _fn(T(a), T(b)))
onnx_op("BitwiseNot")(lambda node, x: ops.bitwise_not(T(x)))


@onnx_op("BitShift")
def bit_shift(node: Node, x: Any, y: Any) -> Tensor:
    """ONNX's shifts are torch's: a shift that is negative or past the width gives 0 (left) or the
    sign's fill (right, arithmetic on signed types)."""
    fn = ops.bitwise_left_shift if node.attr("direction") == "LEFT" else ops.bitwise_right_shift
    return fn(T(x), T(y))


def _quant_param(node: Node, v: Any, x: Tensor) -> Tensor:
    """A scale or zero point broadcastable against `x`: a scalar, a 1-d per-`axis` vector, or (with
    `block_size`) one value per block of `block_size` along `axis`, repeated over its block."""
    t = T(v)
    if t.numel() == 1:
        return ops.reshape(t, ())
    a = axis(node.attr("axis", 1), x.ndim)
    block = int(node.attr("block_size", 0) or 0)
    if not block:
        return ops.reshape(t, [t.numel() if d == a else 1 for d in range(x.ndim)])
    t = ops.repeat_interleave(t, block, dim=a)
    return ops.narrow(t, a, 0, x.shape[a]) if t.shape[a] != x.shape[a] else t


@onnx_op("QuantizeLinear")
def quantize_linear(node: Node, x: Any, scale: Any, zero_point: Any = None) -> Tensor:
    """saturate(round(x / scale) + zero_point), rounding half to even, in the zero point's integer
    type (else `output_dtype`, else uint8); 8/16-bit integer outputs (float8 and int4 are refused)."""
    from .dtypes import avalon_dtype
    x = T(x)
    out = T(zero_point).dtype if zero_point is not None else avalon_dtype(node.attr("output_dtype", 0) or 2, node)
    if not out.is_int:
        raise node.unsupported(f"quantizing to {out.name} is not supported (integer outputs only)")
    q = ops.round(ops.div(x, _quant_param(node, scale, x)))
    if zero_point is not None:
        q = ops.add(q, ops.cast(_quant_param(node, zero_point, x), q.dtype))
    lo, hi = dt.int_range(out)
    return ops.cast(ops.clamp(q, float(lo), float(hi)), out)


@onnx_op("DequantizeLinear")
def dequantize_linear(node: Node, x: Any, scale: Any, zero_point: Any = None) -> Tensor:
    """(x - zero_point) * scale, the difference in float32, the result in the scale's type (or
    `output_dtype`)."""
    from .dtypes import avalon_dtype
    x = T(x)
    if x.dtype.is_float:
        raise node.unsupported(f"dequantizing {x.dtype.name} (float8/int4 inputs) is not supported")
    s = _quant_param(node, scale, x)
    d = ops.cast(x, dt.float32)
    if zero_point is not None:
        d = ops.sub(d, ops.cast(_quant_param(node, zero_point, x), dt.float32))
    out = avalon_dtype(node.attr("output_dtype"), node) if node.attr("output_dtype") else s.dtype
    return ops.cast(ops.mul(d, s), out)


@onnx_op("QLinearMatMul")
def qlinear_matmul(node: Node, a: Any, a_scale: Any, a_zp: Any, b: Any, b_scale: Any, b_zp: Any, y_scale: Any,
                   y_zp: Any = None) -> Tensor:
    """The integer product of the zero-point-shifted operands (exact in float64), rescaled by
    a_scale * b_scale / y_scale, shifted by y's zero point, rounded half to even and saturated to
    y's type (per-tensor scales and zero points)."""
    a, b = T(a), T(b)
    if any(T(v).numel() != 1 for v in (a_scale, a_zp, b_scale, b_zp, y_scale) + ((y_zp,) if y_zp is not None else ())
           if v is not None):
        raise node.unsupported("per-row or per-column scales and zero points are not supported")

    def shifted(x: Tensor, zp: Any) -> Tensor:
        x = ops.cast(x, dt.float64)
        return x if zp is None else ops.sub(x, ops.cast(ops.reshape(T(zp), ()), dt.float64))
    c = ops.matmul(shifted(a, a_zp), shifted(b, b_zp))
    s = ops.div(ops.mul(ops.reshape(T(a_scale), ()), ops.reshape(T(b_scale), ())), ops.reshape(T(y_scale), ()))
    d = ops.mul(c, ops.cast(s, dt.float64))
    out = a.dtype
    if y_zp is not None:
        d, out = ops.add(d, ops.cast(ops.reshape(T(y_zp), ()), dt.float64)), T(y_zp).dtype
    lo, hi = dt.int_range(out)
    return ops.cast(ops.clamp(ops.round(d), float(lo), float(hi)), out)


# -- losses ---------------------------------------------------------------------------------

def _nll(node: Node, logp: Tensor, target: Any, weight: Any) -> Tensor:
    """-logp[n, target[n, d...], d...], weighted by weight[target] (0 where target == ignore_index);
    'mean' divides by the total weight, as the spec does (the count when unweighted)."""
    t = ops.cast(T(target), dt.int64)
    red = node.attr("reduction", "mean")
    if red not in ("none", "sum", "mean"):
        raise node.unsupported(f"reduction {red!r} is not supported (none, sum or mean)")
    ignore = node.attr("ignore_index")
    keep = ops.full(t.shape, True, dt.bool_) if ignore is None else ops.ne(t, ignore)
    safe = ops.where(keep, t, 0)  # ignored targets may lie outside [0, C)
    picked = ops.squeeze(ops.take_along_dim(logp, ops.unsqueeze(safe, 1), 1), 1)
    w = ops.cast(keep, logp.dtype) if weight is None else ops.where(keep, ops.take(T(weight), safe, 0), _same(logp, 0))
    loss = ops.neg(ops.mul(picked, w))
    if red == "none":
        return loss
    total = ops.sum(loss)
    return total if red == "sum" else ops.div(total, ops.sum(w))


@onnx_op("NegativeLogLikelihoodLoss")
def nll_loss(node: Node, x: Any, target: Any, weight: Any = None) -> Tensor:
    return _nll(node, T(x), target, weight)


@onnx_op("SoftmaxCrossEntropyLoss")
def softmax_cross_entropy_loss(node: Node, x: Any, target: Any, weight: Any = None) -> Any:
    """The NLL of log_softmax over the class axis (1); the second output is that log_softmax."""
    logp = F.log_softmax(T(x), 1)
    loss = _nll(node, logp, target, weight)
    return (loss, logp) if node.n_outputs > 1 else loss

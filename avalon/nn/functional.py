"""Functional ops with `torch.nn.functional`'s names, signatures and math.

Every function here is a composite of IR primitives through `avalon.ops`, so it runs eagerly, traces
into plain graph ops, and autodiff and fusion see through it (there is no softmax or loss primitive).
Numerically delicate pieces (log-sum-exp, softplus, log1p/expm1, BCE-with-logits) are written in their
stable forms, and every `where` keeps BOTH branches finite so that a reverse pass through the branch
that was not taken multiplies zeros by finite numbers, never by inf (which would give nan).

The losses live in avalon/nn/losses.py and are re-exported here, as torch's `F` holds both.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import amp, grad_mode, ops
from ..ir import dtypes as dt
from ..ir.reference import IndexOutOfRangeError
from ..ops.dtype_kernels import TORCH_NAMES, DTypeRuntimeError, check_kernel, refuses
from ..random import next_seed
from ..tensor import Tensor
from ..trace import assign

__all__ = [
    "avg_pool2d", "batch_norm", "binary_cross_entropy", "binary_cross_entropy_with_logits", "conv2d",
    "cross_entropy", "dropout", "elu", "embedding", "gelu", "group_norm", "hardsigmoid", "hardswish", "hardtanh",
    "huber_loss", "kl_div", "l1_loss", "layer_norm", "leaky_relu", "linear", "log_softmax", "logsigmoid",
    "max_pool2d", "mish", "mse_loss", "nll_loss", "normalize", "one_hot", "relu", "relu6", "selu", "sigmoid", "silu",
    "smooth_l1_loss", "softmax", "softmin", "softplus", "softsign", "tanh",
    "adaptive_avg_pool2d", "adaptive_max_pool2d", "conv1d", "interpolate", "pad", "upsample",
    "conv_transpose2d", "scaled_dot_product_attention",
    "adaptive_avg_pool1d", "adaptive_max_pool1d", "avg_pool1d", "bilinear", "celu", "conv3d", "cosine_similarity",
    "dropout1d", "dropout2d", "dropout3d", "embedding_bag", "glu", "hardshrink", "instance_norm", "max_pool1d",
    "pairwise_distance", "pixel_shuffle", "pixel_unshuffle", "prelu", "softshrink", "tanhshrink", "threshold",
    "cosine_embedding_loss", "gaussian_nll_loss", "hinge_embedding_loss", "margin_ranking_loss", "multi_margin_loss",
    "multilabel_margin_loss", "multilabel_soft_margin_loss", "poisson_nll_loss", "soft_margin_loss",
    "triplet_margin_loss", "triplet_margin_with_distance_loss", "channel_shuffle", "ctc_loss", "fold", "unfold",
    "affine_grid", "grid_sample", "relu_", "elu_", "leaky_relu_", "hardtanh_", "threshold_", "celu_", "selu_",
    "alpha_dropout", "conv_transpose1d", "feature_alpha_dropout", "gumbel_softmax", "local_response_norm",
    "lp_pool1d", "lp_pool2d", "max_pool2d_with_indices", "max_unpool1d", "max_unpool2d", "pdist", "rms_norm",
    "rrelu", "rrelu_",
    "adaptive_avg_pool3d", "adaptive_max_pool3d", "adaptive_max_pool3d_with_indices", "avg_pool3d",
    "conv_transpose3d", "lp_pool3d", "max_pool3d", "max_pool3d_with_indices", "max_unpool3d",
]

_Pair = int | Sequence[int]


def _t(x: Any) -> Tensor:
    """Tensors stay as they are; arrays, lists and scalars become Tensors."""
    return x if isinstance(x, Tensor) else Tensor(x)


def _pair(v: _Pair, where: str = "", name: str = "") -> tuple[int, int]:
    """An int or a 1- or 2-sequence of ints as a (height, width) pair; anything else is an error
    naming `where` (the layer or function) and the argument `name`, never a silent truncation."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v), int(v)
    arg = f"{where}: argument '{name}'" if where else f"argument {name!r}" if name else "a size argument"
    if isinstance(v, (str, bytes)) or not hasattr(v, "__len__"):
        raise ValueError(f"{arg} must be an int or a pair of ints, got {v!r}")
    t = _int_entries(v, arg)
    if len(t) not in (1, 2):
        raise ValueError(f"{arg} needs 1 or 2 entries, got {t}")
    return (t[0], t[0]) if len(t) == 1 else (t[0], t[1])


def _int_entries(v: Any, arg: str) -> tuple[int, ...]:
    """The entries of a size argument as ints; a float entry is an error, as in torch (`int(2.5)`
    truncated `kernel_size=(2.5, 2.5)` to 2 in silence)."""
    for i in v:
        if not isinstance(i, (int, np.integer)):
            raise ops.fail(TypeError(f"{arg} must be a tuple of ints, but found element of type "
                                     f"{type(i).__name__} ({i!r})"))
    return tuple(int(i) for i in v)


# -- numerically careful helpers ----------------------------------------------------------------

def _log1p(y: Tensor) -> Tensor:
    """log(1 + y), accurate for tiny y (Goldberg's trick: log(u) * y / (u - 1) with u = 1 + y)."""
    u = ops.add(y, 1.0)
    d = ops.sub(u, 1.0)
    exact = ops.eq(d, 0.0)
    return ops.where(exact, y, ops.mul(ops.log(u), ops.div(y, ops.where(exact, 1.0, d))))


def _expm1_nonpositive(x: Tensor) -> Tensor:
    """exp(x) - 1 for x <= 0, accurate to a few ulps at any precision (Kahan's trick:
    (u - 1) * x / log(u) with u = exp(x) cancels the rounding of u). x is clamped at -80, where
    the result is already -1 in f32 and f64, so u never underflows to 0 and log(u) stays finite."""
    xc = ops.maximum(x, -80.0)
    u = ops.exp(xc)
    d = ops.sub(u, 1.0)
    one = ops.eq(d, 0.0)  # u rounded to 1: expm1(x) = x to working precision
    return ops.where(one, xc, ops.div(ops.mul(d, xc), ops.where(one, 1.0, ops.log(u))))


def _softplus1(z: Tensor) -> Tensor:
    """log(1 + exp(z)) without overflow: max(z, 0) + log1p(exp(-|z|)). Both kinks take the z >= 0
    side at z = 0, so the gradient there is 1 - 1/2 = sigmoid(0), as torch's (relu and abs, whose
    derivatives are 0 at 0, made it 0: softplus, logsigmoid and BCE-with-logits at logit 0)."""
    pos = ops.ge(z, 0.0)
    return ops.add(ops.where(pos, z, 0.0), _log1p(ops.exp(ops.neg(ops.where(pos, z, ops.neg(z))))))


# -- activations --------------------------------------------------------------------------------

def _inplace(input: Any, out: Tensor, inplace: bool, name: str) -> Tensor:
    """torch's `inplace=True`: the result written into `input` (a tensor), which is returned, the
    same object, as torch returns it; through views too (`F.relu(x[:, 1:], inplace=True)` changes x)."""
    if not inplace or not isinstance(input, Tensor):
        return out
    from ..tensor import _update
    return _update(input, out, f"{name}(inplace=True)")


def relu(input: Any, inplace: bool = False) -> Tensor:
    return _inplace(input, ops.relu(_t(input)), inplace, "relu")


def relu6(input: Any, inplace: bool = False) -> Tensor:
    return hardtanh(input, 0.0, 6.0, inplace)


def hardtanh(input: Any, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False) -> Tensor:
    """clamp, but with torch's gradient: zero at the bounds themselves (hardtanh_backward's open
    interval; clamp's gradient passes at the bounds), so relu6 at 0 and 6 train as in torch."""
    if isinstance(min_val, (int, float)) and isinstance(max_val, (int, float)) and min_val > max_val:
        # torch refuses; the selects below would give max_val or min_val by position
        raise ops.fail(ValueError(f"hardtanh: min_val cannot be greater than max_val, got min_val={min_val} and "
                                  f"max_val={max_val}"))
    x = _t(input)
    check_kernel("hardtanh", "hardtanh", "bool", x, message="hardtanh: Bool inputs not supported for hardtanh")
    inside = ops.logical_and(ops.gt(x, min_val), ops.lt(x, max_val))
    clipped = ops.where(ops.le(x, min_val), min_val, ops.where(ops.ge(x, max_val), max_val, x))  # nan stays
    if not x.dtype.is_float:  # torch keeps an integer input's dtype (the float bounds promoted it to f32)
        clipped = ops.cast(clipped, x.dtype)
    return _inplace(input, ops.where(inside, x, ops.stop_gradient(clipped)), inplace, "hardtanh")


@refuses("leaky_relu", "leaky_relu_cpu", "integer")
def leaky_relu(input: Any, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:
    x = _t(input)
    return _inplace(input, ops.where(ops.gt(x, 0), x, ops.mul(x, negative_slope)), inplace, "leaky_relu")


@refuses("elu", "elu_cpu", "integer")
def elu(input: Any, alpha: float = 1.0, inplace: bool = False) -> Tensor:
    """x for x > 0, alpha * (exp(x) - 1) otherwise (the negative branch reads min(x, 0))."""
    x = _t(input)
    pos = ops.gt(x, 0)  # the negative branch reads x itself at 0 (min(x, 0) would halve its gradient there)
    out = ops.where(pos, x, ops.mul(_expm1_nonpositive(ops.where(pos, 0.0, x)), alpha))
    return _inplace(input, out, inplace, "elu")


@refuses("selu", "elu_cpu", "integer")
def selu(input: Any, inplace: bool = False) -> Tensor:
    alpha, scale = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
    return _inplace(input, ops.mul(elu(input, alpha), scale), inplace, "selu")


@refuses("gelu", "GeluKernelImpl", "integer")
def gelu(input: Any, approximate: str = "none") -> Tensor:
    """x * Phi(x) with the exact erf form, or torch's tanh approximation (`approximate='tanh'`)."""
    x = _t(input)
    if approximate == "none":
        return ops.mul(ops.mul(x, 0.5), ops.add(1.0, ops.erf(ops.mul(x, math.sqrt(0.5)))))
    if approximate == "tanh":
        inner = ops.mul(ops.add(x, ops.mul(ops.mul(ops.mul(x, x), x), 0.044715)), math.sqrt(2.0 / math.pi))
        return ops.mul(ops.mul(x, 0.5), ops.add(1.0, ops.tanh(inner)))
    raise ValueError(f"approximate argument must be either none or tanh, got {approximate!r}")


def sigmoid(input: Any) -> Tensor:
    return ops.sigmoid(_t(input))


def tanh(input: Any) -> Tensor:
    return ops.tanh(_t(input))


@refuses("silu", "silu_cpu", "integer")
def silu(input: Any, inplace: bool = False) -> Tensor:
    x = _t(input)
    return _inplace(input, ops.mul(x, ops.sigmoid(x)), inplace, "silu")


@refuses("mish", "mish_cpu", "integer")
def mish(input: Any, inplace: bool = False) -> Tensor:
    x = _t(input)
    return _inplace(input, ops.mul(x, ops.tanh(softplus(x))), inplace, "mish")


@refuses("hardsigmoid", "hardsigmoid_cpu", "integer")
def hardsigmoid(input: Any, inplace: bool = False) -> Tensor:
    """relu6(x + 3) / 6, with torch's zero gradient at x = -3 and 3. Inside, torch's CPU kernel multiplies
    the gradient by `1.0f / 6.0f`, 1/6 rounded to float32, in float32 and float64 alike, where dividing by 6
    differs by up to 3e-8 relative in float64 (an ulp in float32): there the value is h / 6 exactly and an
    exact zero, (h - stop_gradient(h)) * c, carries that gradient. (Half types compute in float32 and round,
    which dividing by 6 matches.)"""
    h = hardtanh(ops.add(_t(input), 3.0), 0.0, 6.0)
    out = ops.div(h, 6.0)
    if h.dtype in (dt.float32, dt.float64):
        out = ops.add(ops.stop_gradient(out), ops.mul(ops.sub(h, ops.stop_gradient(h)), _ONE_SIXTH_F32))
    return _inplace(input, out, inplace, "hardsigmoid")


_ONE_SIXTH_F32 = float(np.float32(1.0) / np.float32(6.0))  # torch's hardsigmoid_backward `one_sixth`


@refuses("hardswish", "hardswish_cpu", "integer")
def hardswish(input: Any, inplace: bool = False) -> Tensor:
    """x * hardsigmoid(x); torch's gradient is 0 for x <= -3 and 1 for x >= 3 (the product rule
    would give -0.5 and 1.5 there)."""
    x = _t(input)
    mid = ops.mul(x, ops.div(ops.add(x, 3.0), 6.0))
    return _inplace(input, ops.where(ops.le(x, -3.0), ops.mul(x, 0.0), ops.where(ops.ge(x, 3.0), x, mid)), inplace,
                    "hardswish")


def softsign(input: Any) -> Tensor:
    x = _t(input)
    return ops.div(x, ops.add(ops.abs(x), 1.0))


@refuses("softplus", "softplus_cpu", "integer")
def softplus(input: Any, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """log(1 + exp(beta * x)) / beta, and x itself where beta * x > threshold (like torch)."""
    x = _t(input)
    z = ops.mul(x, beta)
    soft = _softplus1(z) if beta == 1 else ops.div(_softplus1(z), beta)
    return ops.where(ops.gt(z, threshold), x, soft)


@refuses("logsigmoid", "log_sigmoid_cpu", "integer")
def logsigmoid(input: Any) -> Tensor:
    return ops.neg(_softplus1(ops.neg(_t(input))))


@refuses("celu", "elu_cpu", "integer")
def celu(input: Any, alpha: float = 1.0, inplace: bool = False) -> Tensor:
    """x for x > 0, alpha * (exp(x / alpha) - 1) otherwise."""
    x = _t(input)
    if alpha == 0:  # torch's check (x / alpha was nan or -inf)
        raise ops.fail(RuntimeError("celu: ZeroDivisionError: alpha cannot be 0 for CELU"))
    pos = ops.gt(x, 0)  # as in elu: the negative branch reads x itself at 0
    neg = ops.mul(_expm1_nonpositive(ops.div(ops.where(pos, 0.0, x), alpha)), alpha)
    return _inplace(input, ops.where(pos, x, neg), inplace, "celu")


@refuses("threshold", "threshold_cpu", "bool")
def threshold(input: Any, threshold: float, value: float, inplace: bool = False) -> Tensor:
    """x where x > threshold, else `value`."""
    x = _t(input)
    return _inplace(input, ops.where(ops.gt(x, threshold), x, value), inplace, "threshold")


_threshold = threshold  # (threshold_'s argument `threshold` hides the function)


def relu_(input: Tensor) -> Tensor:
    """torch's F.relu_: relu written into `input`, which is returned."""
    return relu(input, inplace=True)


def elu_(input: Tensor, alpha: float = 1.0) -> Tensor:
    return elu(input, alpha, inplace=True)


def leaky_relu_(input: Tensor, negative_slope: float = 0.01) -> Tensor:
    return leaky_relu(input, negative_slope, inplace=True)


def hardtanh_(input: Tensor, min_val: float = -1.0, max_val: float = 1.0) -> Tensor:
    return hardtanh(input, min_val, max_val, inplace=True)


def threshold_(input: Tensor, threshold: float, value: float) -> Tensor:
    return _threshold(input, threshold, value, inplace=True)


def celu_(input: Tensor, alpha: float = 1.0) -> Tensor:
    return celu(input, alpha, inplace=True)


def selu_(input: Tensor) -> Tensor:
    return selu(input, inplace=True)


def tanhshrink(input: Any) -> Tensor:
    x = _t(input)
    return ops.sub(x, ops.tanh(x))


@refuses("hardshrink", "hardshrink_cpu", "integer")
def hardshrink(input: Any, lambd: float = 0.5) -> Tensor:
    x = _t(input)
    return ops.where(ops.gt(ops.abs(x), lambd), x, 0.0)


@refuses("softshrink", "softshrink_check", "integer")
def softshrink(input: Any, lambd: float = 0.5) -> Tensor:
    x = _t(input)
    if lambd < 0:  # torch's check (a negative lambda overlapped the two branches)
        raise ops.fail(RuntimeError(f"softshrink: lambda must be in range [0, inf), but found {lambd}"))
    return ops.where(ops.gt(x, lambd), ops.sub(x, lambd), ops.where(ops.lt(x, -lambd), ops.add(x, lambd), 0.0))


@refuses("prelu", "prelu_cpu", "integer")
def prelu(input: Any, weight: Any) -> Tensor:
    """x for x > 0, weight * x otherwise; a weight of several entries is per channel (dim 1)."""
    x, w = _t(input), _t(weight)
    if w.ndim > 1:  # torch's check (a (2, 2) weight was flattened to 4 channels)
        raise ops.fail(RuntimeError(f"prelu: Expected `weight` to be a scalar or 1D tensor, but got: ndim = {w.ndim}"))
    if isinstance(weight, Tensor) and w.dtype != x.dtype and not amp.is_autocast_enabled(x.device.type):
        # torch's check (numpy promoted a float32 input with a float64 weight in silence)
        raise ops.fail(DTypeRuntimeError(f"prelu: Type promoting not supported. Got {x.dtype.name} input and "
                                 f"{w.dtype.name} weight"))
    if w.numel() > 1:
        if x.ndim < 2 or x.shape[1] != w.numel():
            raise ValueError(f"prelu: {w.numel()} weights need an input with as many channels (dim 1), got shape "
                             f"{x.shape}")
        w = ops.reshape(w, (1, -1) + (1,) * (x.ndim - 2))
    else:
        w = ops.reshape(w, ())
    return ops.where(ops.gt(x, 0), x, ops.mul(w, x))


@refuses("glu", "glu_cpu", "integer")
def glu(input: Any, dim: int = -1) -> Tensor:
    """a * sigmoid(b) for the two halves a, b of `dim`."""
    x = _t(input)
    d = ops.check_dim("glu", dim, x.ndim)
    if x.ndim == 0:
        raise ops.fail(ValueError("glu: does not support scalars because halving size must be even"))
    if x.shape[d] % 2:
        raise ValueError(f"glu: halving dimension must be even, but dimension {dim} is size {x.shape[d]}")
    a, b = ops.split(x, x.shape[d] // 2, d)
    return ops.mul(a, ops.sigmoid(b))


def _softmax_dim(name: str, ndim: int) -> int:
    """torch's deprecation warning for `F.softmax(x)` without dim, attributed to the user's line as torch's is
    (a fixed stacklevel named amp's autocast wrapper around F.softmax, so every call site shared one warning)."""
    from .losses import _user_stacklevel  # losses imports this module
    warnings.warn(f"Implicit dimension choice for {name} has been deprecated. Change the call to include dim=X "
                  "as an argument.", stacklevel=_user_stacklevel())
    return 0 if ndim in (0, 1, 3) else 1


def softmax(input: Any, dim: int | None = None, _stacklevel: int = 3, dtype: Any = None) -> Tensor:
    """exp(x - max) / sum(exp(x - max)) along `dim` (subtracting the max keeps exp finite): torch.softmax."""
    x = _t(input)
    return ops.softmax(x, _softmax_dim("softmax", x.ndim) if dim is None else dim, dtype)


def softmin(input: Any, dim: int | None = None, _stacklevel: int = 3, dtype: Any = None) -> Tensor:
    x = _t(input)
    if dim is None:
        dim = _softmax_dim("softmin", x.ndim)
    ops.check_dim("softmin", dim, x.ndim)
    return softmax(ops.neg(x), dim, dtype=dtype)


def log_softmax(input: Any, dim: int | None = None, _stacklevel: int = 3, dtype: Any = None) -> Tensor:
    """x - max - log(sum(exp(x - max))) along `dim`, the stable log-sum-exp form: torch.log_softmax."""
    x = _t(input)
    return ops.log_softmax(x, _softmax_dim("log_softmax", x.ndim) if dim is None else dim, dtype)


def _norm(x: Tensor, p: float, dim: Any, keepdim: bool) -> Tensor:
    """The p-norm along `dim` (torch.norm): p = 2, 1, inf, -inf, 0 (count of nonzeros) or any other."""
    if p == 2:  # sqrt with torch's zero gradient at a zero vector (sqrt's own is 0 * inf = nan)
        s = ops.sum(ops.mul(x, x), dim, keepdims=keepdim)
        pos = ops.gt(s, 0)
        return ops.where(pos, ops.sqrt(ops.where(pos, s, 1.0)), 0.0)
    if p == 1:
        return ops.sum(ops.abs(x), dim, keepdims=keepdim)
    if p == math.inf:
        return ops.amax(ops.abs(x), dim, keepdims=keepdim)
    if p == -math.inf:
        return ops.amin(ops.abs(x), dim, keepdims=keepdim)
    if p == 0:
        return ops.sum(ops.cast(ops.ne(x, 0), x.dtype), dim, keepdims=keepdim)
    return ops.pow(ops.sum(ops.pow(ops.abs(x), float(p)), dim, keepdims=keepdim), 1.0 / p)


def _normalized_by(x: Tensor, mean: Any, var: Any, eps: float, bshape: tuple) -> Tensor:
    """(x - mean) / sqrt(var + eps) with per-channel running statistics (batch and instance norm
    in evaluation)."""
    rm = ops.reshape(ops.cast(mean, x.dtype), bshape)
    rv = ops.reshape(ops.cast(var, x.dtype), bshape)
    return ops.mul(ops.sub(x, rm), ops.rsqrt(ops.add(rv, eps)))


def _per_channel(fn: str, x: Tensor, **named: Any) -> None:
    """torch's check that each of a norm's per-channel tensors has one entry per channel (dim 1 of
    `x`): before a reshape or a state assignment fails naming another op, or a (1,) one broadcasts."""
    c = x.shape[1]
    for name, v in named.items():
        if v is not None and _t(v).numel() != c:
            raise ops.fail(ops.ArgumentError(f"{fn}: {name} should contain {c} elements not {_t(v).numel()} "
                                             f"(input of shape {x.shape}, channels in dim 1)"))


def _norm_dtypes(fn: str, x: Tensor, **named: Any) -> bool:
    """torch's (CPU) rule for a norm's parameters and running statistics: those given share one dtype,
    the input's, or float32 under a float16/bfloat16 input (mixed mode: the output keeps the input's
    dtype). numpy would promote: an f32 input under f64 parameters ran, and returned, f64 in silence.
    Returns whether the call is mixed (the caller casts its result back to the input's dtype)."""
    ops.floating_input(fn, x)  # (torch has no integer kernels for the norms)
    given = [(n, _t(v).dtype) for n, v in named.items() if v is not None]
    if not given:
        return False
    first, pd = given[0]
    half = x.dtype in (dt.float16, dt.bfloat16)
    for n, d in given:
        if d != pd:
            raise ops.fail(TypeError(f"{fn}: mixed dtype: {first} is {pd.name} but {n} is {d.name}; the parameters "
                                     f"and running statistics must share one dtype (cast with .to(...))"))
        if d != x.dtype and not (half and d == dt.float32):
            raise ops.fail(DTypeRuntimeError(f"{fn}: mixed dtype: expected {n} to have the input's dtype {x.dtype.name}"
                                     f"{' (or float32)' if half else ''}, got {d.name}; cast the module or the "
                                     f"input with .to(...)"))
    return pd != x.dtype


def _accumulated(x: Tensor) -> Tensor:
    """A norm's float16/bfloat16 input in float32: torch's norm kernels compute their statistics, and the
    backward its sums, in float32 and round only the output (a float16 sum of squares overflows past 65504,
    making the output and the gradient nan); the caller casts its result back to the input's dtype."""
    return ops.cast(x, dt.float32) if x.dtype is dt.float16 or x.dtype is dt.bfloat16 else x


def _affine(y: Tensor, weight: Any, bias: Any, bshape: tuple) -> Tensor:
    """y * weight + bias, each per channel (broadcast through `bshape`) when given."""
    if weight is not None:
        y = ops.mul(y, ops.reshape(_t(weight), bshape))
    if bias is not None:
        y = ops.add(y, ops.reshape(_t(bias), bshape))
    return y


def normalize(input: Any, p: float = 2.0, dim: int = 1, eps: float = 1e-12) -> Tensor:
    """x / max(||x||_p, eps) along `dim`."""
    x = _t(input)
    if not x.dtype.is_float:  # torch's vector_norm refuses (numpy normalized integers into f32)
        raise ops.fail(DTypeRuntimeError(f"normalize: linalg.vector_norm: Expected a floating point or complex tensor "
                                         f"as input. Got {TORCH_NAMES[x.dtype.name]}"))
    ops.check_dims("normalize", dim, x.ndim)
    return ops.div(x, _clamped_norm(x, p, dim, eps))


def _clamped_norm(x: Tensor, p: float, dim: Any, eps: float) -> Tensor:
    """max(||x||_p, eps), keeping the dim; for p = 2 as sqrt(max(sum x^2, eps^2)), the same value
    whose gradient is finite (torch's) at a zero vector."""
    if p == 2:
        if x.dtype is dt.float16 or x.dtype is dt.bfloat16:  # torch's norm accumulates these in float32: a
            n = _clamped_norm(ops.cast(x, dt.float32), p, dim, eps)  # float16 sum of squares overflows
            return ops.cast(n, x.dtype)
        return ops.sqrt(ops.maximum(ops.sum(ops.mul(x, x), dim, keepdims=True), eps * eps))
    return ops.maximum(_norm(x, p, dim, True), eps)


def cosine_similarity(x1: Any, x2: Any, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """sum((x1 / max(||x1||, eps)) * (x2 / max(||x2||, eps))) along `dim`, torch's form (normalizing
    first keeps the result within [-1, 1]); x1 and x2 broadcast."""
    a, b = _t(x1), _t(x2)
    common = ops.result_dtype(a, b)
    if not common.is_float:  # torch refuses (numpy computed in f32)
        raise ops.fail(DTypeRuntimeError(f"cosine_similarity: expected common dtype to be floating point, yet common "
                                         f"dtype is {TORCH_NAMES[common.name]}"))
    ops.check_dim("cosine_similarity", dim, max(a.ndim, b.ndim))
    if a.shape != b.shape:  # torch broadcasts first: a norm over a size-1 (or missing) dim was a wrong value
        a, b = ops.broadcast_tensors(a, b)
    a = ops.div(a, _clamped_norm(a, 2, dim, eps))
    b = ops.div(b, _clamped_norm(b, 2, dim, eps))
    return ops.sum(ops.mul(a, b), dim)


def pairwise_distance(x1: Any, x2: Any, p: float = 2.0, eps: float = 1e-6, keepdim: bool = False) -> Tensor:
    """||x1 - x2 + eps||_p over the last dim of the broadcast inputs, as torch."""
    a, b = _t(x1), _t(x2)
    d = max(a.ndim, b.ndim) - 1
    return _norm(ops.add(ops.sub(a, b), eps), p, max(d, 0), keepdim)


def bilinear(input1: Any, input2: Any, weight: Any, bias: Any = None) -> Tensor:
    """y_o = x1^T W_o x2 + b_o over the last dims of (*, in1) and (*, in2) inputs; one matmul
    (x1 against W laid out as (in1, out * in2)), a product with x2 and a sum."""
    a, b, w = _t(input1), _t(input2), _t(weight)
    if w.ndim != 3 or a.shape[-1] != w.shape[1] or b.shape[-1] != w.shape[2] or a.shape[:-1] != b.shape[:-1]:
        raise ValueError(f"bilinear: inputs {a.shape} and {b.shape} do not fit weight {w.shape} "
                         "((*, in1), (*, in2) and (out, in1, in2))")
    o, i1, i2 = w.shape
    _check_bias("bilinear", w, bias, o)
    lead = a.shape[:-1]
    wm = ops.reshape(ops.permute(w, (1, 0, 2)), (i1, o * i2))
    t = ops.reshape(ops.matmul(ops.reshape(a, (-1, i1)), wm), (-1, o, i2))
    y = ops.reshape(ops.sum(ops.mul(t, ops.reshape(b, (-1, 1, i2))), 2), (*lead, o))
    return y if bias is None else ops.add(y, bias)


def one_hot(input: Any, num_classes: int = -1) -> Tensor:
    """Integer one-hot vectors (i64), like torch (whose binding takes `input=`, not its docs' `tensor=`).
    `num_classes=-1` needs concrete indices."""
    idx = _t(input)
    if idx.dtype != dt.int64:  # torch's check (int32 or uint8 indices ran; floats were truncated)
        raise ops.fail(RuntimeError(f"one_hot is only applicable to index tensor of type LongTensor (int64), got "
                                    f"{idx.dtype.name}"))
    if num_classes < 0:
        known = None
        if idx.is_traced:  # as bincount's minlength: the width would depend on the values
            from ..tensor import TracerError
            try:
                known = idx._concrete("one_hot's input")
            except TracerError:
                pass
            if known is None:
                raise ops.fail(ValueError(
                    "one_hot of a traced tensor without num_classes: the number of classes, max(input) + 1, would "
                    "depend on the values, but a traced or compiled function's shapes are static; pass "
                    "num_classes=K"))
        num_classes = int(np.max(known if known is not None else idx.numpy())) + 1
    return ops.one_hot(idx, num_classes, dtype=dt.int64)


# -- linear, convolution, pooling -----------------------------------------------------------------

def linear(input: Any, weight: Any, bias: Any = None) -> Tensor:
    """input @ weight.T + bias; leading batch dims are flattened into one matmul. Under autocast the
    bias is cast with the operands, so the result keeps the autocast dtype, as torch's."""
    x, w = _t(input), _t(weight)
    if w.ndim == 1:  # torch's x @ w.t() with a 1-d weight: a dot product over the last dim
        y = ops.matmul(x, w)
    elif x.ndim > 2:
        lead = x.shape[:-1]
        y = ops.matmul(ops.reshape(x, (-1, x.shape[-1])), ops.transpose(w))
        y = ops.reshape(y, (*lead, w.shape[0]))
    else:
        y = ops.matmul(x, ops.transpose(w))
    if bias is None:
        return y
    b = amp.autocast_bias(bias)
    if isinstance(b, Tensor):
        ops.same_dtype("linear", y, b)  # torch's rule for the bias too: numpy promoted the output in silence
    return ops.add(y, b)


def _check_conv(op: str, x: Tensor, w: Tensor, bias: Any, groups: int) -> None:
    """torch's conv argument checks, on the shapes the user gave (conv1d and conv3d run as conv2d
    on reshaped tensors, whose errors would name conv2d and shapes the user never wrote): the
    input's channels against the weight's, and a bias of exactly (out_channels,), which would
    otherwise broadcast a single value over every channel."""
    if x.ndim >= 2 and w.ndim == x.ndim and x.shape[1] != w.shape[1] * groups:
        raise ops.fail(ops.ArgumentError(
            f"{op}: Given groups={groups}, weight of size {list(w.shape)}, expected input{list(x.shape)} to have "
            f"{w.shape[1] * groups} channels, but got {x.shape[1]} channels instead"))
    if w.ndim >= 1 and w.shape[0] == 0:  # numpy made an empty output of it
        raise ops.fail(ops.ArgumentError(f"{op}: Given groups={groups}, expected weight to be at least 1 at "
                                         f"dimension 0, but got weight of size {list(w.shape)} instead"))
    if w.ndim >= 3 and 0 in w.shape[2:]:  # a kernel_size of 0: numpy made an output of the bias alone
        raise ops.fail(ops.ArgumentError(f"{op}: weight of size {list(w.shape)} has an empty kernel; "
                                         f"kernel_size must be at least 1"))
    if groups > 0 and w.ndim >= 1 and w.shape[0] % groups:
        raise ops.fail(ops.ArgumentError(f"{op}: Given groups={groups}, expected weight to be divisible by {groups} at "
                                         f"dimension 0, but got weight of size {list(w.shape)} instead"))
    _check_bias(op, w, bias, w.shape[0])
    check_kernel(op, "compute_columns3d" if op == "conv3d" else "slow_conv2d_cpu", "bool", x)
    if isinstance(bias, Tensor) and bias.dtype != x.dtype and not amp.is_autocast_enabled(x.device.type):
        # (numpy promoted the output in silence)
        raise ops.fail(DTypeRuntimeError(f"{op}: Input type ({x.dtype.name}) and bias type ({bias.dtype.name}) should "
                                         f"be the same; cast one with .to(...)"))


def _check_bias(op: str, w: Tensor, bias: Any, out: int) -> None:
    """A conv's (or bilinear's) bias must be exactly (out_channels,): a (1,) one would broadcast one
    value over every channel, silently."""
    if bias is not None and tuple(_t(bias).shape) != (out,):
        raise ops.fail(ops.ArgumentError(
            f"{op}: Given weight of size {list(w.shape)}, expected bias to be 1-dimensional with {out} "
            f"elements, but got bias of size {list(_t(bias).shape)} instead"))


def _unbatched(x: Tensor, fn) -> Tensor:
    """Run a 4-d op on a 3-d (C, H, W) input, as torch allows."""
    return ops.squeeze(fn(ops.expand_dims(x, 0)), 0)


def conv2d(input: Any, weight: Any, bias: Any = None, stride: _Pair = 1, padding: _Pair | str = 0,
           dilation: _Pair = 1, groups: int = 1) -> Tensor:
    """Cross-correlation of NCHW input with OIHW weight (torch's conv2d), plus a per-channel bias.
    `padding` may be 'valid' or 'same' (stride 1; odd totals pad one more at the bottom/right, as torch)."""
    x, w = _t(input), _t(weight)
    if x.ndim == 3:
        return _unbatched(x, lambda x4: conv2d(x4, w, bias, stride, padding, dilation, groups))
    _check_conv("conv2d", x, w, bias, groups)
    dh, dw = _pair(dilation)
    if isinstance(padding, str):
        if padding == "valid":
            padding = 0
        elif padding == "same":
            if _pair(stride) != (1, 1):
                raise ValueError("padding='same' is not supported for strided convolutions")
            th, tw = dh * (w.shape[2] - 1), dw * (w.shape[3] - 1)
            if th % 2 or tw % 2:
                x = ops.pad(x, [(0, 0), (0, 0), (th // 2, th - th // 2), (tw // 2, tw - tw // 2)])
                padding = 0
            else:
                padding = (th // 2, tw // 2)
        else:
            raise ValueError(f"Invalid padding string {padding!r}, should be one of {{'valid', 'same'}}")
    y = ops.conv2d(x, w, stride=_pair(stride), padding=_pair(padding), dilation=(dh, dw), groups=groups)
    if bias is None:
        return y
    return ops.add(y, ops.reshape(amp.autocast_bias(_t(bias)), (1, -1, 1, 1)))  # (autocast casts it too)


def _pool_geometry(size: int, k: int, s: int, p: int, ceil_mode: bool) -> tuple[int, int]:
    """(output size, extra high-side padding) of torch's pooling arithmetic."""
    if ceil_mode:
        out = -(-(size + 2 * p - k) // s) + 1
        if (out - 1) * s >= size + p:
            out -= 1
    else:
        out = (size + 2 * p - k) // s + 1
    return out, max(0, (out - 1) * s + k - (size + 2 * p))


def _pool_args(kernel_size: _Pair, stride: _Pair | None, padding: _Pair, where: str = "pooling") -> tuple:
    k = _pair(kernel_size, where, "kernel_size")
    s = k if stride is None or (not isinstance(stride, int) and len(stride) == 0) else _pair(stride, where, "stride")
    return k, s, _pair(padding, where, "padding")


@refuses("max_pool2d", "max_pool2d", "bool")
def max_pool2d(input: Any, kernel_size: _Pair, stride: _Pair | None = None, padding: _Pair = 0,
               dilation: _Pair = 1, ceil_mode: bool = False, return_indices: bool = False) -> Tensor:
    x = _t(input)
    if return_indices:  # (values, flat indices), from strided windows: functional_more
        return max_pool2d_with_indices(x, kernel_size, stride, padding, dilation, ceil_mode)
    if x.ndim == 3:
        return _unbatched(x, lambda x4: max_pool2d(x4, kernel_size, stride, padding, dilation, ceil_mode))
    if _pair(dilation) != (1, 1):  # the pooling primitive has no dilation: strided windows do it
        return max_pool2d_with_indices(x, kernel_size, stride, padding, dilation, ceil_mode)[0]
    k, s, p = _pool_args(kernel_size, stride, padding, "max_pool2d")
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"pad should be at most half of effective kernel size, but got pad={p} and kernel={k}")
    if not ceil_mode:
        return ops.max_pool2d(x, k, s, p)
    (_, eh), (_, ew) = (_pool_geometry(x.shape[2 + i], k[i], s[i], p[i], True) for i in range(2))
    x = ops.pad(x, [(0, 0), (0, 0), (p[0], p[0] + eh), (p[1], p[1] + ew)], value=-math.inf)
    return ops.max_pool2d(x, k, s, 0)


def _check_divisor(op: str, divisor_override: Any) -> None:
    """torch's: `divisor_override` is None or a nonzero int (a float one was used as given, and 0
    was a bare float ZeroDivisionError)."""
    if divisor_override is None:
        return
    if not isinstance(divisor_override, (int, np.integer)) or isinstance(divisor_override, bool):
        raise ops.fail(TypeError(f"{op}(): argument 'divisor_override' must be int, not "
                                 f"{type(divisor_override).__name__}"))
    if divisor_override == 0:
        raise ops.fail(RuntimeError(f"{op}: divisor must be not zero (divisor_override=0)"))


@refuses("avg_pool2d", "avg_pool2d", "nonlong")  # floats and int64 only
def avg_pool2d(input: Any, kernel_size: _Pair, stride: _Pair | None = None, padding: _Pair = 0,
               ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: int | None = None) -> Tensor:
    x = _t(input)
    if x.ndim == 3:
        return _unbatched(x, lambda x4: avg_pool2d(x4, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                                   divisor_override))
    k, s, p = _pool_args(kernel_size, stride, padding, "avg_pool2d")
    _check_divisor("avg_pool2d", divisor_override)
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"pad should be at most half of effective kernel size, but got pad={p} and kernel={k}")
    if not ceil_mode and divisor_override is None:
        return ops.avg_pool2d(x, k, s, p, count_include_pad)
    # General case: pool an explicitly padded input (zeros, plus the ceil-mode overhang), and divide
    # by torch's divisor, the pooled mask of the entries it counts (symmetric padding included or
    # not; never the overhang). Mask and divisor depend on shapes only, so they fold to constants.
    h, w = x.shape[2:]
    (_, eh), (_, ew) = (_pool_geometry(x.shape[2 + i], k[i], s[i], p[i], ceil_mode) for i in range(2))
    xp = ops.pad(x, [(0, 0), (0, 0), (p[0], p[0] + eh), (p[1], p[1] + ew)])
    means = ops.avg_pool2d(xp, k, s, 0)
    if divisor_override is not None:
        return ops.mul(means, float(k[0] * k[1]) / divisor_override)
    if count_include_pad:
        mask = ops.pad(ops.ones((1, 1, h + 2 * p[0], w + 2 * p[1]), x.dtype), [(0, 0), (0, 0), (0, eh), (0, ew)])
    else:
        mask = ops.pad(ops.ones((1, 1, h, w), x.dtype), [(0, 0), (0, 0), (p[0], p[0] + eh), (p[1], p[1] + ew)])
    return ops.div(means, ops.avg_pool2d(mask, k, s, 0))


# -- dropout, embedding -----------------------------------------------------------------------------

def dropout(input: Any, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p). The mask comes from the
    `random` op seeded by `avalon.random.next_seed()`, so a traced graph draws a fresh mask per run."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    x = _t(input)
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return _inplace(input, ops.cast(ops.mul(x, 0.0), x.dtype), inplace, "dropout")
    if not x.dtype.is_float:  # (the 1/(1-p) scaling made a float tensor of an integer one, silently)
        raise ops.fail(RuntimeError(f"dropout: input must be floating point in training mode, got {x.dtype!r} "
                                    "(result type Float can't be cast to the desired output type)"))
    keep = ops.ge(ops.random(next_seed(), x.shape, "uniform"), p)
    return _inplace(input, ops.where(keep, ops.mul(x, 1.0 / (1.0 - p)), 0.0), inplace, "dropout")


def _feature_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Zero whole channels: one draw per (sample, channel) of a (N, C, ...) input, broadcast over
    the rest, from the same seeded `random` op as `dropout`."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return ops.mul(x, 0.0)
    shape = x.shape[:2] + (1,) * (x.ndim - 2)
    keep = ops.broadcast_to(ops.ge(ops.random(next_seed(), shape, "uniform"), p), x.shape)
    return ops.where(keep, ops.mul(x, 1.0 / (1.0 - p)), 0.0)


def _channel_dropout(name: str, input: Any, p: float, training: bool, spatial: int, strict: bool) -> Tensor:
    """torch's dropout1d/2d/3d: an input with `spatial` + 2 dims is batched, one with `spatial` + 1
    is one sample (dropout2d reads a 3-d input as (N, C, L), as torch still does)."""
    x = _t(input)
    if x.ndim not in (spatial + 1, spatial + 2):
        msg = (f"{name}: expected a {spatial + 1}-d or {spatial + 2}-d input (channels, {spatial} spatial dims, "
               f"an optional batch dim), got shape {x.shape}")
        if strict:
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=3)
    if x.ndim == spatial + 1 and name == "dropout2d":
        warnings.warn("dropout2d: Received a 3D input to dropout2d and assuming that channel-wise 1D dropout "
                      "behavior is desired - input is interpreted as shape (N, C, L), as torch does. Use dropout1d "
                      "for that.", stacklevel=3)
    elif x.ndim == spatial + 1:
        return ops.squeeze(_feature_dropout(ops.expand_dims(x, 0), p, training), 0)
    return _feature_dropout(x, p, training)


def dropout1d(input: Any, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Zero whole channels of (N, C, L) or (C, L) input with probability p, scaling the rest by 1/(1-p)."""
    return _inplace(input, _channel_dropout("dropout1d", input, p, training, 1, True), inplace, "dropout1d")


def dropout2d(input: Any, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Zero whole channels of (N, C, H, W) input with probability p, scaling the rest by 1/(1-p)."""
    return _inplace(input, _channel_dropout("dropout2d", input, p, training, 2, False), inplace, "dropout2d")


def dropout3d(input: Any, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Zero whole channels of (N, C, D, H, W) or (C, D, H, W) input with probability p."""
    return _inplace(input, _channel_dropout("dropout3d", input, p, training, 3, False), inplace, "dropout3d")


def embedding(input: Any, weight: Any, padding_idx: int | None = None, max_norm: float | None = None,
              norm_type: float = 2.0, scale_grad_by_freq: bool = False, sparse: bool = False) -> Tensor:
    """Rows of `weight` at integer indices. As in torch, the `padding_idx` row is returned as it is
    but gets no gradient: lookups of it read the row through `stop_gradient`. With `max_norm`, the
    rows looked up whose `norm_type` norm exceeds it are first scaled in place in `weight` by
    max_norm / (norm + 1e-7) (torch's embedding_renorm_, under no_grad)."""
    rows = _embedding(input, weight, padding_idx, "embedding", max_norm, norm_type)
    return _scale_grad_by_freq(rows, _t(input)) if scale_grad_by_freq else rows


def _scale_grad_by_freq(rows: Tensor, idx: Tensor) -> Tensor:
    """`rows` (idx.shape + (D,)) with the gradient of each lookup divided by how often its index occurs
    in `idx` (torch's scale_grad_by_freq): the value is rows (rows + 0 * s, exactly, for finite rows),
    the gradient s * upstream. The counts compare every pair of lookups."""
    flat = ops.reshape(idx, (-1,))
    count = ops.sum(ops.cast(ops.eq(ops.expand_dims(flat, 1), ops.expand_dims(flat, 0)), rows.dtype), 1)
    s = ops.reshape(ops.div(1.0, count), idx.shape + (1,))
    fixed = ops.stop_gradient(rows)
    return ops.add(fixed, ops.mul(ops.sub(rows, fixed), s))


def _check_ids(idx: Tensor, n: int, who: str) -> None:
    """Known (eager) ids must be rows of the table: torch's IndexError, naming the layer and the id
    rather than the `take` that would fail inside it. Traced ids are checked when the graph runs."""
    if not idx.is_traced and idx.numel():
        v = idx.numpy()
        bad = (v < 0) | (v >= n)
        if bad.any():
            raise ops.fail(IndexOutOfRangeError(f"{who}: index {int(v[bad].flat[0])} is out of range [0, {n}) "
                                                "(index out of range in self)"))


def _check_index_dtype(idx: Tensor, who: str) -> None:
    """torch's embedding takes int64 and int32 indices only: floats, bool, uint8 and int16 are its
    RuntimeError (a DTypeRuntimeError, so `except TypeError` still catches it)."""
    if idx.dtype not in (dt.int64, dt.int32):
        raise ops.fail(DTypeRuntimeError(
            f"{who}: Expected tensor for argument #1 'indices' to have one of the following scalar types: Long, Int; "
            f"but got {idx.dtype.name}; cast the indices with .long()"))


def _embedding(input: Any, weight: Any, padding_idx: int | None, who: str, max_norm: float | None = None,
               norm_type: float = 2.0) -> Tensor:
    """embedding's lookup, named `who` (the function, or the Embedding layer that calls it) in errors."""
    idx = _t(input)
    _check_index_dtype(idx, who)
    if _t(weight).ndim != 2:  # (a 1-d weight gave scalars per index, and a 3-d one matrices)
        raise ops.fail(RuntimeError(f"{who}: 'weight' must be 2-D, got shape {_t(weight).shape}"))
    _check_ids(idx, _t(weight).shape[0], who)
    if max_norm is not None:
        if not isinstance(weight, Tensor):
            raise TypeError(f"{who}: max_norm renormalizes the weight in place, so it must be a tensor")
        _embedding_renorm(weight, idx, float(max_norm), float(norm_type))
    rows = ops.take(weight, idx, axis=0)
    if padding_idx is None:
        return rows
    n = _t(weight).shape[0]
    if not -n <= padding_idx < n:
        raise ValueError("padding_idx must be within num_embeddings")
    pad = ops.expand_dims(ops.eq(idx, padding_idx % n), -1)
    return ops.where(pad, ops.stop_gradient(rows), rows)


def _embedding_renorm(weight: Tensor, idx: Tensor, max_norm: float, norm_type: float) -> None:
    """torch.embedding_renorm_: the rows of `weight` at `idx` whose norm exceeds `max_norm` scaled by
    max_norm / (norm + 1e-7), in place and without gradient (later lookups still differentiate to
    `weight`, as torch's). A row looked up twice is written twice with the same value."""
    flat = ops.reshape(idx, (-1,))
    with grad_mode.no_grad():
        rows = ops.take(weight, flat, axis=0)
        norms = _norm(rows, norm_type, -1, True)
        scale = ops.where(ops.gt(norms, max_norm), ops.div(max_norm, ops.add(norms, 1e-7)), 1.0)
        weight[flat] = ops.mul(rows, scale)


def embedding_bag(input: Any, weight: Any, offsets: Any = None, max_norm: float | None = None,
                  norm_type: float = 2, scale_grad_by_freq: bool = False, mode: str = "mean", sparse: bool = False,
                  per_sample_weights: Any = None, include_last_offset: bool = False,
                  padding_idx: int | None = None) -> Tensor:
    """Sums, means or maxima of bags of embedding rows: the rows of a 2-d input, or the runs of a
    1-d input that `offsets` starts. Bag membership is a (bags, positions) mask compared from
    `offsets` and an iota, so offsets may be traced values; `padding_idx` entries count in no bag,
    and an empty bag gives zeros, as torch."""
    if mode not in ("sum", "mean", "max"):
        raise ValueError(f"embedding_bag: mode has to be one of sum, mean or max, got {mode!r}")
    if scale_grad_by_freq and mode == "max":
        raise ValueError("embedding_bag: max mode does not support scaling the gradient by the frequency")
    if per_sample_weights is not None and mode != "sum":
        raise NotImplementedError(f"embedding_bag: per_sample_weights was not None. per_sample_weights is only "
                                  f"supported for mode='sum' (got mode='{mode}')")
    idx, w = _t(input), _t(weight)
    if idx.dtype.is_float or idx.dtype is dt.bool_:  # (torch converts other integer indices with the offsets)
        raise ops.fail(DTypeRuntimeError(f"embedding_bag: Expected tensor for argument #1 'indices' to have one of "
                                         f"the following scalar types: Long, Int; but got {idx.dtype.name}"))
    if idx.dtype not in (dt.int64, dt.int32):  # uint8/int16 indices: torch converts them (take wants i32/i64)
        idx = ops.cast(idx, dt.int64)
    _check_ids(idx, w.shape[0], "embedding_bag")
    if max_norm is not None:  # as embedding's: every row looked up, in place
        if not isinstance(weight, Tensor):
            raise TypeError("embedding_bag: max_norm renormalizes the weight in place, so it must be a tensor")
        _embedding_renorm(w, idx, float(max_norm), float(norm_type))
    rows = ops.take(w, idx, axis=0)  # (B, L, D) or (L, D)
    if scale_grad_by_freq:
        rows = _scale_grad_by_freq(rows, idx)
    if idx.ndim == 2:
        if offsets is not None:
            raise ValueError("embedding_bag: if input is 2D, then offsets has to be None, as input is treated as "
                             "a mini-batch of fixed length sequences")
        member = ops.full(idx.shape, True, dt.bool_)
    elif idx.ndim == 1:
        if offsets is None:
            raise ValueError("embedding_bag: offsets has to be a 1D Tensor but got None")
        off = ops.cast(_t(offsets), dt.int64)
        n = idx.shape[0]
        if not off.is_traced and off.ndim == 1 and off.shape[0]:  # torch's checks (bags were cut at the wrong places)
            o = off.numpy()
            if o[0] != 0:
                raise ops.fail(RuntimeError(f"embedding_bag: offsets[0] has to be 0, i.e., the first sequence in the "
                                            f"mini-batch has to start from position 0. However, got {o[0]}"))
            if o[-1] > n:
                raise ops.fail(RuntimeError(f"embedding_bag: offsets[-1] can not be greater than input's length {n} "
                                            f"but got offsets[-1] of {o[-1]}"))
            if (np.diff(o) < 0).any():
                raise ops.fail(RuntimeError(f"embedding_bag: offsets must be non-decreasing, got {o.tolist()}"))
        elif off.ndim == 1 and off.shape[0]:  # the same checks when the graph runs
            first = ops.eq(off[:1], 0)
            off = ops.check_values(off, ops.broadcast_to(first, off.shape), "embedding_bag: offsets[0] has to be 0, "
                                   "i.e., the first sequence in the mini-batch has to start from position 0")
            off = ops.check_values(off, ops.le(off, n), f"embedding_bag: offsets[-1] can not be greater than input's "
                                   f"length {n}")
            if off.shape[0] > 1:
                step = ops.concat([ops.full((1,), True, dt.bool_), ops.ge(off[1:], off[:-1])])
                off = ops.check_values(off, step, "embedding_bag: offsets must be non-decreasing")
        if include_last_offset:
            starts, ends = off[:-1], off[1:]
        else:
            starts, ends = off, ops.concat([off[1:], ops.full((1,), n, dt.int64)])
        pos = ops.iota((starts.shape[0], n), 1, dt.int64)
        member = ops.logical_and(ops.ge(pos, ops.expand_dims(starts, 1)), ops.lt(pos, ops.expand_dims(ends, 1)))
        rows = ops.expand_dims(rows, 0)
    else:
        raise ValueError(f"embedding_bag: input has to be 1D or 2D Tensor, but got Tensor of dimension {idx.ndim}")
    if padding_idx is not None:
        member = ops.logical_and(member, ops.ne(idx, padding_idx % w.shape[0]))
    weights = ops.cast(member, w.dtype)
    if mode == "max":
        low = float(np.finfo(w.dtype.np).min)
        best = ops.amax(ops.where(ops.expand_dims(member, -1), rows, low), 1)
        return ops.where(ops.gt(ops.sum(weights, 1, keepdims=True), 0), best, 0.0)
    if per_sample_weights is not None:
        weights = ops.mul(weights, ops.cast(_t(per_sample_weights), w.dtype))
    total = ops.sum(ops.mul(rows, ops.expand_dims(weights, -1)), 1)
    if mode == "sum":
        return total
    return ops.div(total, ops.maximum(ops.sum(weights, 1, keepdims=True), 1.0))


# -- normalization -------------------------------------------------------------------------------

def batch_norm(input: Any, running_mean: Tensor | None, running_var: Tensor | None, weight: Any = None,
               bias: Any = None, training: bool = False, momentum: float | Tensor = 0.1,
               eps: float = 1e-5) -> Tensor:
    """Normalize over every axis but the channel axis 1. Training uses the batch statistics and,
    when running stats are given, updates them in place (`trace.assign`, so this also works under
    trace/grad/compile): running = (1 - momentum) * running + momentum * batch, with the UNBIASED
    batch variance, as torch. Eval normalizes with the running statistics."""
    x = _t(input)
    if x.ndim < 2:
        raise ValueError(f"batch_norm expects an input of at least 2 dims (N, C, ...), got {x.shape}")
    if training and eps <= 0.0:  # torch's checks (a zero-variance channel divided by zero)
        raise ops.fail(ValueError(f"batch_norm eps must be positive during training, but got {eps}"))
    if eps < 0.0:
        raise ops.fail(ValueError(f"batch_norm eps must be non-negative, but got {eps}"))
    c = x.shape[1]
    _per_channel("batch_norm", x, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    _norm_dtypes("batch_norm", x, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    out_dtype, x = x.dtype, _accumulated(x)
    axes = [0] + list(range(2, x.ndim))
    bshape = (1, c) + (1,) * (x.ndim - 2)
    if training:
        n = x.numel() // c if c else 0
        if n <= 1:
            raise ops.fail(ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}"
                                      " (batch norm in training mode needs a batch of more than one sample; call "
                                      ".eval() to use the running statistics)"))
        mean = ops.mean(x, axes, keepdims=True)
        centered = ops.sub(x, mean)
        var = ops.mean(ops.mul(centered, centered), axes, keepdims=True)
        keep = 1.0 - momentum if not isinstance(momentum, Tensor) else ops.sub(1.0, momentum)
        if running_mean is not None:
            new = ops.add(ops.mul(running_mean, keep), ops.mul(ops.reshape(mean, (c,)), momentum))
            assign(running_mean, ops.cast(new, running_mean.dtype))
        if running_var is not None:
            unbiased = ops.mul(ops.reshape(var, (c,)), n / (n - 1))
            new = ops.add(ops.mul(running_var, keep), ops.mul(unbiased, momentum))
            assign(running_var, ops.cast(new, running_var.dtype))
        y = ops.mul(centered, ops.rsqrt(ops.add(var, eps)))
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm in evaluation mode needs running_mean and running_var")
        y = _normalized_by(x, running_mean, running_var, eps, bshape)
    y = _affine(y, weight, bias, bshape)
    return ops.cast(y, out_dtype) if y.dtype is not out_dtype else y


def layer_norm(input: Any, normalized_shape: int | Sequence[int], weight: Any = None, bias: Any = None,
               eps: float = 1e-5) -> Tensor:
    """Normalize over the trailing `normalized_shape` dims with the biased variance, then scale/shift."""
    x = _t(input)
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    k = len(shape)
    if k == 0:  # (it normalized each element alone, or, now that an empty dim list is every dim, all of x)
        raise ValueError("layer_norm: Expected normalized_shape to be at least 1-dimensional, i.e., containing at "
                         "least one element, but got normalized_shape = []")
    if x.shape[x.ndim - k:] != shape:
        raise ops.fail(ValueError(f"layer_norm: normalized_shape {shape} does not match the trailing dims of input "
                                  f"{x.shape}"))
    for name, v in (("weight", weight), ("bias", bias)):  # a (1,) one would broadcast without a word
        if v is not None and tuple(_t(v).shape) != shape:
            raise ops.fail(ops.ArgumentError(
                f"layer_norm: Expected {name} to be of same shape as normalized_shape, but got {name} of shape "
                f"{list(_t(v).shape)} and normalized_shape = {list(shape)}"))
    _norm_dtypes("layer_norm", x, weight=weight, bias=bias)
    out_dtype, x = x.dtype, _accumulated(x)
    axes = list(range(x.ndim - k, x.ndim))
    centered = ops.sub(x, ops.mean(x, axes, keepdims=True))
    var = ops.mean(ops.mul(centered, centered), axes, keepdims=True)
    y = ops.mul(centered, ops.rsqrt(ops.add(var, eps)))
    if weight is not None:
        y = ops.mul(y, weight)
    if bias is not None:
        y = ops.add(y, bias)
    return ops.cast(y, out_dtype) if y.dtype is not out_dtype else y


def group_norm(input: Any, num_groups: int, weight: Any = None, bias: Any = None, eps: float = 1e-5) -> Tensor:
    """Normalize over each group of C/num_groups channels (and all spatial positions)."""
    x = _t(input)
    _group_norm_check("group_norm", x, num_groups, weight, bias)
    _norm_dtypes("group_norm", x, weight=weight, bias=bias)
    out_dtype, x = x.dtype, _accumulated(x)
    n, c = x.shape[:2]
    g = ops.reshape(x, (n, num_groups, -1))
    centered = ops.sub(g, ops.mean(g, 2, keepdims=True))
    var = ops.mean(ops.mul(centered, centered), 2, keepdims=True)
    y = ops.reshape(ops.mul(centered, ops.rsqrt(ops.add(var, eps))), x.shape)
    bshape = (1, c) + (1,) * (x.ndim - 2)
    if weight is not None:
        y = ops.mul(y, ops.reshape(_t(weight), bshape))
    if bias is not None:
        y = ops.add(y, ops.reshape(_t(bias), bshape))
    return ops.cast(y, out_dtype) if y.dtype is not out_dtype else y


def _group_norm_check(who: str, x: Tensor, num_groups: int, weight: Any, bias: Any) -> None:
    """torch's checks of group_norm's input, before the reshapes they would otherwise fail in."""
    if x.ndim < 2:
        raise ops.fail(ValueError(f"{who}: Expected at least 2 dimensions for input tensor (N, C, ...), got shape "
                                  f"{x.shape}"))
    c = x.shape[1]
    if num_groups <= 0 or c % num_groups:
        raise ops.fail(ops.ArgumentError(f"{who}: Expected number of channels in input to be divisible by num_groups, "
                                         f"but got input of shape {x.shape} and num_groups={num_groups}"))
    for name, v in (("weight", weight), ("bias", bias)):
        if v is not None and _t(v).shape != (c,):
            raise ops.fail(ops.ArgumentError(f"{who}: Expected {name} to be a vector of size equal to the number of "
                                             f"channels in input, but got {name} of shape {_t(v).shape} and input of "
                                             f"shape {x.shape}"))


def instance_norm(input: Any, running_mean: Tensor | None = None, running_var: Tensor | None = None,
                  weight: Any = None, bias: Any = None, use_input_stats: bool = True, momentum: float = 0.1,
                  eps: float = 1e-5) -> Tensor:
    """Normalize each (sample, channel) over its spatial positions. With `use_input_stats` the
    running statistics, when given, move towards the batch average of the per-instance mean and
    UNBIASED variance, as torch's (which runs batch norm over a (1, N C, ...) view); without,
    the running statistics normalize."""
    x = _t(input)
    if x.ndim < 3:
        raise ValueError(f"instance_norm expects an input of at least 3 dims (N, C, ...), got {x.shape}")
    c = x.shape[1]
    axes = list(range(2, x.ndim))
    _per_channel("instance_norm", x, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    # (torch checks all but running_mean, which it repeats per instance before its batch norm)
    _norm_dtypes("instance_norm", x, weight=weight, bias=bias, running_var=running_var)
    out_dtype, x = x.dtype, _accumulated(x)
    bshape = (1, c) + (1,) * (x.ndim - 2)
    if use_input_stats:
        count = math.prod(x.shape[2:])
        if count <= 1:
            raise ValueError(f"Expected more than 1 spatial element when training, got input size {x.shape}")
        mean = ops.mean(x, axes, keepdims=True)
        centered = ops.sub(x, mean)
        var = ops.mean(ops.mul(centered, centered), axes, keepdims=True)
        if running_mean is not None:
            new = ops.add(ops.mul(running_mean, 1.0 - momentum), ops.mul(ops.mean(ops.reshape(mean, x.shape[:2]), 0),
                                                                         momentum))
            assign(running_mean, ops.cast(new, running_mean.dtype))
        if running_var is not None:
            unbiased = ops.mean(ops.mul(ops.reshape(var, x.shape[:2]), count / (count - 1)), 0)
            new = ops.add(ops.mul(running_var, 1.0 - momentum), ops.mul(unbiased, momentum))
            assign(running_var, ops.cast(new, running_var.dtype))
        y = ops.mul(centered, ops.rsqrt(ops.add(var, eps)))
    else:
        if running_mean is None or running_var is None:
            raise ValueError("instance_norm without input statistics needs running_mean and running_var")
        y = _normalized_by(x, running_mean, running_var, eps, bshape)
    y = _affine(y, weight, bias, bshape)
    return ops.cast(y, out_dtype) if y.dtype is not out_dtype else y


# Last, because losses.py builds on the helpers above (`_t`, `log_softmax`, `_softplus1`).
# (conv_transpose.py imports avalon.nn.layers, which only needs the helpers above, defined by now.)
from .attention import scaled_dot_product_attention  # noqa: E402, F401  (torch's F holds it)
from .conv_transpose import conv_transpose2d  # noqa: E402, F401
from .functional_3d import (  # noqa: E402, F401  (3-d pooling and transposed convolution, from the 2-d ops)
    adaptive_avg_pool3d,
    adaptive_max_pool3d,
    adaptive_max_pool3d_with_indices,
    avg_pool3d,
    conv_transpose3d,
    lp_pool3d,
    max_pool3d,
    max_pool3d_with_indices,
    max_unpool3d,
)
from .functional_more import (  # noqa: E402, F401  (RMS/LRN norms, alpha dropout, rrelu, lp/unpool, pdist)
    alpha_dropout,
    conv_transpose1d,
    feature_alpha_dropout,
    gumbel_softmax,
    local_response_norm,
    lp_pool1d,
    lp_pool2d,
    max_pool2d_with_indices,
    max_unpool1d,
    max_unpool2d,
    pdist,
    rms_norm,
    rrelu,
    rrelu_,
)
from .functional_spatial import (  # noqa: E402  (they use conv2d from this module)
    adaptive_avg_pool1d,
    adaptive_avg_pool2d,
    adaptive_max_pool1d,
    adaptive_max_pool2d,
    affine_grid,
    avg_pool1d,
    channel_shuffle,
    conv1d,
    conv3d,
    fold,
    grid_sample,
    interpolate,
    max_pool1d,
    pad,
    pixel_shuffle,
    pixel_unshuffle,
    unfold,
    upsample,
)
from .losses import (  # noqa: E402
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    cosine_embedding_loss,
    cross_entropy,
    ctc_loss,
    gaussian_nll_loss,
    hinge_embedding_loss,
    huber_loss,
    kl_div,
    l1_loss,
    margin_ranking_loss,
    mse_loss,
    multi_margin_loss,
    multilabel_margin_loss,
    multilabel_soft_margin_loss,
    nll_loss,
    poisson_nll_loss,
    smooth_l1_loss,
    soft_margin_loss,
    triplet_margin_loss,
    triplet_margin_with_distance_loss,
)


def max_pool1d_with_indices(input: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
                            ceil_mode: bool = False, return_indices: bool = True) -> Any:
    """torch's F.max_pool1d_with_indices: max_pool1d's (values, indices)."""
    return max_pool1d(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices=True)


def adaptive_max_pool1d_with_indices(input: Any, output_size: Any, return_indices: bool = True) -> Any:
    """torch's F.adaptive_max_pool1d_with_indices: (values, indices)."""
    return adaptive_max_pool1d(input, output_size, return_indices=True)


def adaptive_max_pool2d_with_indices(input: Any, output_size: Any, return_indices: bool = True) -> Any:
    """torch's F.adaptive_max_pool2d_with_indices: (values, indices into H*W)."""
    return adaptive_max_pool2d(input, output_size, return_indices=True)


def upsample_nearest(input: Any, size: Any = None, scale_factor: Any = None) -> Tensor:
    """torch's deprecated F.upsample_nearest: interpolate(mode='nearest')."""
    return interpolate(input, size, scale_factor, mode="nearest")


def upsample_bilinear(input: Any, size: Any = None, scale_factor: Any = None) -> Tensor:
    """torch's deprecated F.upsample_bilinear: interpolate(mode='bilinear', align_corners=True)."""
    return interpolate(input, size, scale_factor, mode="bilinear", align_corners=True)


__all__ += ["adaptive_max_pool1d_with_indices", "adaptive_max_pool2d_with_indices", "max_pool1d_with_indices",
            "upsample_bilinear", "upsample_nearest"]

from .transformer import multi_head_attention_forward  # noqa: E402  (it reads nn.MultiheadAttention's forward)

__all__ += ["multi_head_attention_forward"]

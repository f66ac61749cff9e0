"""More of `torch.nn.functional`, for ported models: RMS norm, local response norm, Gumbel-softmax,
alpha dropout, randomized leaky ReLU, power-average pooling, pairwise distances, the 1-d transposed
convolution, max pooling with indices and its inverse (max unpooling).

Each is a composition of existing Avalon ops (no new primitive), with torch's signature, defaults,
dtype rules and error wording, so it runs eagerly, traces, compiles and differentiates like the rest
of `F`. Random draws use Avalon's seeded `random` op (`avalon.random.next_seed`), as `F.dropout`."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import ops
from ..ir import dtypes as dt
from ..ops.dtype_kernels import DTypeRuntimeError, check_kernel
from ..random import next_seed
from ..tensor import Tensor

__all__ = [
    "alpha_dropout", "conv_transpose1d", "feature_alpha_dropout", "gumbel_softmax", "local_response_norm",
    "lp_pool1d", "lp_pool2d", "max_pool2d_with_indices", "max_unpool1d", "max_unpool2d", "pdist", "rms_norm",
    "rrelu", "rrelu_",
]


def _t(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


def _F() -> Any:
    from . import functional
    return functional


def single(where: str, name: str, v: Any) -> int:
    """A 1-d op's int argument, given as an int or a 1-entry sequence (torch's `_single`)."""
    if isinstance(v, str):
        raise ValueError(f"{where}: argument '{name}' must be an int, got {v!r}")
    if isinstance(v, (tuple, list)):
        if len(v) != 1:
            raise ValueError(f"{where}: argument '{name}' needs 1 entry, got {tuple(v)}")
        v = v[0]
    return int(v)


# -- normalization --------------------------------------------------------------------------------

def rms_norm(input: Any, normalized_shape: int | Sequence[int], weight: Any = None,
             eps: float | None = None) -> Tensor:
    """x / sqrt(mean(x^2 over the trailing `normalized_shape` dims) + eps) * weight (torch 2.4+).
    Half-precision inputs compute in float32 (then cast back, before the weight), as torch's; `eps=None`
    is the machine epsilon of the dtype it computes in (float32's for them)."""
    x = _t(input)
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(int(s) for s in normalized_shape)
    k = len(shape)
    if k == 0:  # (torch's check; an empty dim list reads as every dim)
        raise ValueError("rms_norm: Expected normalized_shape to be at least 1-dimensional, i.e., containing at "
                         "least one element, but got normalized_shape = []")
    if x.ndim < k or x.shape[x.ndim - k:] != shape:
        raise ValueError(f"Given normalized_shape={list(shape)}, expected input with shape [*, "
                         f"{', '.join(map(str, shape))}], but got input of size{list(x.shape)}")
    if not x.dtype.is_float:
        raise TypeError(f"rms_norm: expected a floating-point input, got {x.dtype.name}")
    if weight is not None and tuple(_t(weight).shape) != shape:  # a (1,) weight would broadcast silently
        raise ops.fail(ops.ArgumentError(
            f"rms_norm: Expected weight to be of same shape as normalized_shape, but got weight of shape "
            f"{list(_t(weight).shape)} and normalized_shape = {list(shape)}"))
    work = ops.cast(x, dt.float32) if x.dtype in (dt.float16, dt.bfloat16) else x
    e = float(np.finfo(work.dtype.np).eps) if eps is None else float(eps)  # the computing dtype's, as torch
    axes = list(range(x.ndim - k, x.ndim))
    y = ops.mul(work, ops.rsqrt(ops.add(ops.mean(ops.mul(work, work), axes, keepdims=True), e)))
    y = ops.cast(y, x.dtype) if work is not x else y
    if weight is None:
        return y
    y = ops.mul(y, _t(weight))  # torch's result is of the input's dtype (a float64 weight promoted it)
    return y if y.dtype == x.dtype else ops.cast(y, x.dtype)


def local_response_norm(input: Any, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> Tensor:
    """AlexNet's normalization across channels: x / (k + alpha * mean of x^2 over `size` neighbouring
    channels, zero-padded)^beta, the window (size // 2 before, (size - 1) // 2 after), as torch."""
    x = _t(input)
    if x.ndim < 3:
        raise ValueError(f"Expected 3D or higher dimensionality input (got {x.ndim} dimensions)")
    # torch averages the squares with avg_pool2d (3-d input) or avg_pool3d, whose CPU kernels take
    # floats and int64 (avg_pool3d no f16/bf16); an int64 average is an integer division
    if x.ndim == 3:
        check_kernel("local_response_norm", "avg_pool2d", "nonlong", x)
    else:
        check_kernel("local_response_norm", "avg_pool3d_out_frame", "nonlong,half", x)
    if x.numel() == 0:
        return x
    c = x.shape[1]
    sq = ops.pad(ops.mul(x, x), [(0, 0), (size // 2, (size - 1) // 2)] + [(0, 0)] * (x.ndim - 2))
    total = ops.narrow(sq, 1, 0, c)
    for j in range(1, size):
        total = ops.add(total, ops.narrow(sq, 1, j, c))
    mean = ops.div(total, float(size)) if x.dtype.is_float else ops.floor_divide(total, size)
    div = ops.pow(ops.add(ops.mul(mean, alpha), k), beta)
    return ops.div(x, div)


# -- random activations and dropout -------------------------------------------------------------------

def _uniform(shape: Sequence[int], d: dt.DType) -> Tensor:
    return ops.random(next_seed(), tuple(shape), "uniform", d if d.is_float else dt.float32)


def gumbel_softmax(logits: Any, tau: float = 1.0, hard: bool = False, eps: float = 1e-10, dim: int = -1) -> Tensor:
    """softmax((logits + g) / tau) with g ~ Gumbel(0, 1) (g = -log(E), E ~ Exp(1)); `hard=True` returns
    the one-hot of its argmax in the forward pass with the soft sample's gradient (straight-through)."""
    x = _t(logits)
    if not x.dtype.is_float:  # torch's exponential_ refuses (numpy sampled into f32)
        raise ops.fail(DTypeRuntimeError(f"gumbel_softmax: Exponential distribution is a continuous probability "
                                         f"distribution. dtype must be a floating point but you specified "
                                         f"{x.dtype.name}"))
    expo = ops.neg(ops.log(ops.sub(1.0, _uniform(x.shape, x.dtype))))
    tiny = np.finfo(np.float16 if x.dtype is dt.float16 else np.float32).tiny
    expo = ops.maximum(ops.cast(expo, x.dtype), float(tiny))  # a draw of exactly 0 gives no inf
    gumbels = ops.div(ops.add(x, ops.neg(ops.log(expo))), tau)
    y_soft = _F().softmax(gumbels, dim)
    if not hard:
        return y_soft
    index = ops.argmax(y_soft, dim, keepdims=True)
    y_hard = ops.scatter(ops.zeros_like(y_soft), dim, index, value=1.0)
    return ops.add(ops.sub(y_hard, ops.stop_gradient(y_soft)), y_soft)


_SELU_ALPHA = 1.7580993408473766  # SELU's scale * alpha: the value SELU saturates at for large negative inputs


def _alpha_dropout(name: str, input: Any, p: float, training: bool, inplace: bool, feature: bool) -> Tensor:
    """ATen's alpha dropout: kept entries a * x, dropped ones the SELU saturation -alpha' mapped by the
    same affine map, so the output keeps zero mean and unit variance for SELU activations."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    x = _t(input)
    if feature and x.ndim < 2:
        raise RuntimeError("Feature dropout requires at least 2 dimensions in the input")
    if p == 0.0 or not training or x.numel() == 0:
        return x
    if p == 1.0:
        return _F()._inplace(input, ops.mul(x, 0.0), inplace, name)
    shape = x.shape[:2] + (1,) * (x.ndim - 2) if feature else x.shape
    keep = ops.cast(ops.ge(_uniform(shape, x.dtype), p), x.dtype)
    a = 1.0 / math.sqrt((_SELU_ALPHA * _SELU_ALPHA * p + 1) * (1 - p))
    b = ops.add(ops.mul(ops.sub(keep, 1.0), _SELU_ALPHA * a), _SELU_ALPHA * a * p)
    return _F()._inplace(input, ops.add(ops.mul(x, ops.mul(keep, a)), b), inplace, name)


def alpha_dropout(input: Any, p: float = 0.5, training: bool = False, inplace: bool = False) -> Tensor:
    """Dropout for self-normalizing (SELU) networks; note torch's default `training=False`."""
    return _alpha_dropout("alpha_dropout", input, p, training, inplace, feature=False)


def feature_alpha_dropout(input: Any, p: float = 0.5, training: bool = False, inplace: bool = False) -> Tensor:
    """Alpha dropout of whole channels (one draw per sample and channel of an (N, C, ...) input)."""
    return _alpha_dropout("feature_alpha_dropout", input, p, training, inplace, feature=True)


def rrelu(input: Any, lower: float = 1.0 / 8, upper: float = 1.0 / 3, training: bool = False,
          inplace: bool = False) -> Tensor:
    """Randomized leaky ReLU: negative entries times a slope drawn uniformly from [lower, upper] per
    element in training, times the fixed (lower + upper) / 2 in evaluation (torch's default)."""
    x = _t(input)
    if not x.dtype.is_float:
        raise TypeError(f"rrelu: expected a floating-point input, got {x.dtype.name}")
    if lower > upper:  # torch's check (the slopes were drawn from an empty range in silence)
        raise ops.fail(RuntimeError(f"rrelu: Lower bound should be less than or equal to the upper bound, got "
                                    f"lower={lower}, upper={upper}"))
    if training:
        slope = ops.add(ops.mul(ops.cast(_uniform(x.shape, x.dtype), x.dtype), upper - lower), lower)
    else:
        slope = (lower + upper) / 2.0
    return _F()._inplace(input, ops.where(ops.ge(x, 0.0), x, ops.mul(x, slope)), inplace, "rrelu")


def rrelu_(input: Tensor, lower: float = 1.0 / 8, upper: float = 1.0 / 3, training: bool = False) -> Tensor:
    return rrelu(input, lower, upper, training, inplace=True)


# -- pooling ----------------------------------------------------------------------------------------

def _lp_infinite(x: Tensor, norm_type: Any, max_pool: Any) -> Tensor | None:
    """torch's p = +-inf: the max (min) of |x| over each window (the power-average form gave 1s)."""
    if not isinstance(norm_type, (int, float)) or not math.isinf(norm_type):
        return None
    a = ops.abs(x)
    return max_pool(a) if norm_type > 0 else ops.neg(max_pool(ops.neg(a)))


def _lp_finish(out: Tensor, norm_type: float, count: int) -> Tensor:
    return ops.pow(ops.mul(ops.mul(ops.sign(out), _F().relu(ops.abs(out))), float(count)), 1.0 / norm_type)


def lp_pool1d(input: Any, norm_type: float, kernel_size: int, stride: Any = None, ceil_mode: bool = False) -> Tensor:
    """The p-norm of each window: (sum x^p)^(1/p), computed as torch (an average pool of x^p)."""
    x = _t(input)
    k = single("lp_pool1d", "kernel_size", kernel_size)
    inf = _lp_infinite(x, norm_type, lambda a: _F().max_pool1d(a, k, stride, 0, 1, ceil_mode))
    if inf is not None:
        return inf
    out = _F().avg_pool1d(ops.pow(x, norm_type), k, stride, 0, ceil_mode)
    return _lp_finish(out, norm_type, k)


def lp_pool2d(input: Any, norm_type: float, kernel_size: Any, stride: Any = None, ceil_mode: bool = False) -> Tensor:
    """2-d power-average pooling: (sum over each kh x kw window of x^p)^(1/p)."""
    x = _t(input)
    kh, kw = _F()._pair(kernel_size, "lp_pool2d", "kernel_size")
    inf = _lp_infinite(x, norm_type, lambda a: _F().max_pool2d(a, (kh, kw), stride, 0, 1, ceil_mode))
    if inf is not None:
        return inf
    out = _F().avg_pool2d(ops.pow(x, norm_type), (kh, kw), stride, 0, ceil_mode)
    return _lp_finish(out, norm_type, kh * kw)


def _pool_windows(x: Tensor, k: tuple[int, int], s: tuple[int, int], p: tuple[int, int], d: tuple[int, int],
                  ceil_mode: bool, fill: float) -> tuple[Tensor, tuple[int, int]]:
    """(N, C, OH, OW, kh*kw): every pooling window of `x` (padded with `fill`) along a new last axis,
    kernel offsets row by row; and (OH, OW). Strided slices, so exact for every value."""
    out, extra = [], []
    for i in range(2):
        eff = d[i] * (k[i] - 1) + 1
        size = x.shape[2 + i] + 2 * p[i] - eff
        o = (-(-size // s[i]) if ceil_mode else size // s[i]) + 1
        if ceil_mode and (o - 1) * s[i] >= x.shape[2 + i] + p[i]:
            o -= 1
        if o < 1:
            raise ValueError(f"max_pool2d: input {tuple(x.shape)} is too small for kernel {k} with padding {p} "
                             f"and dilation {d} (output size {o})")
        out.append(o)
        extra.append(max(0, (o - 1) * s[i] + eff - (x.shape[2 + i] + 2 * p[i])))
    xp = ops.pad(x, [(0, 0), (0, 0), (p[0], p[0] + extra[0]), (p[1], p[1] + extra[1])], value=fill)
    wins = []
    for i in range(k[0]):
        rows = ops.getitem(xp, (slice(None), slice(None), slice(i * d[0], i * d[0] + (out[0] - 1) * s[0] + 1, s[0])))
        for j in range(k[1]):
            wins.append(ops.getitem(rows, (slice(None), slice(None), slice(None),
                                           slice(j * d[1], j * d[1] + (out[1] - 1) * s[1] + 1, s[1]))))
    return ops.stack(wins, -1), (out[0], out[1])


def max_pool2d_with_indices(input: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
                            ceil_mode: bool = False, return_indices: bool = True) -> tuple[Tensor, Tensor]:
    """torch's max_pool2d(..., return_indices=True): the maxima and, for each, its flat index into the
    input's H*W plane (i64; the first maximum of a window, row by row). The gradient reaches the
    selected element, as torch's."""
    x = _t(input)
    if x.ndim == 3:
        v, i = max_pool2d_with_indices(ops.expand_dims(x, 0), kernel_size, stride, padding, dilation, ceil_mode)
        return ops.squeeze(v, 0), ops.squeeze(i, 0)
    if x.ndim != 4:
        raise ValueError(f"max_pool2d: expected 3D or 4D input, got {x.ndim}D input of shape {x.shape}")
    check_kernel("max_pool2d", "max_pool2d", "bool", x)  # integers compute, as torch's (they were refused)
    F = _F()
    k, s, p = F._pool_args(kernel_size, stride, padding, "max_pool2d")
    d = F._pair(dilation, "max_pool2d", "dilation")
    if min(d) <= 0:  # (numpy stacked the same element k times)
        raise ops.fail(RuntimeError(f"max_pool2d: dilation should be greater than zero, but got dilation={d}"))
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"pad should be at most half of effective kernel size, but got pad={p} and kernel={k}")
    low = -math.inf if x.dtype.is_float else dt.int_range(x.dtype)[0]
    wins, (oh, ow) = _pool_windows(x, k, s, p, d, ceil_mode, low)
    arg = ops.argmax(wins, -1, keepdims=True)
    values = ops.squeeze(ops.take_along_dim(wins, arg, -1), -1)
    arg = ops.squeeze(arg, -1)
    ki, kj = ops.floor_divide(arg, k[1]), ops.remainder(arg, k[1])
    rows = ops.add(ops.reshape(ops.arange(oh, dtype=dt.int64), (oh, 1)) * s[0] - p[0], ops.mul(ki, d[0]))
    cols = ops.add(ops.reshape(ops.arange(ow, dtype=dt.int64), (1, ow)) * s[1] - p[1], ops.mul(kj, d[1]))
    return values, ops.cast(ops.add(ops.mul(rows, x.shape[3]), cols), dt.int64)


def _unpool_size(who: str, x: Tensor, k: tuple, s: tuple, p: tuple, output_size: Any) -> list[int]:
    """torch's `_unpool_output_size`: (in - 1) * stride + kernel - 2 * padding, or an explicit size
    within a stride of it."""
    n = len(k)
    default = [(x.shape[x.ndim - n + i] - 1) * s[i] + k[i] - 2 * p[i] for i in range(n)]
    if output_size is None:
        return default
    size = [int(v) for v in output_size]
    if len(size) == n + 2:
        size = size[2:]
    elif len(size) == n + 1 and x.ndim == n + 1:
        size = size[1:]
    if len(size) != n:
        raise ValueError(f"{who}: output_size should be a sequence containing {n} or {n + 2} elements, but it "
                         f"has a length of '{len(output_size)}'")
    for i in range(n):
        lo, hi = default[i] - s[i], default[i] + s[i]
        if not lo < size[i] < hi:
            raise ValueError(f'{who}: invalid output_size "{list(size)}" (dim {i} must be between {lo} and {hi})')
    return size


def max_unpool2d(input: Any, indices: Any, kernel_size: Any, stride: Any = None, padding: Any = 0,
                 output_size: Any = None) -> Tensor:
    """The partial inverse of max_pool2d: each value goes to its flat index in an (H_out, W_out)
    plane of zeros (indices from `max_pool2d(..., return_indices=True)`)."""
    x, idx = _t(input), _t(indices)
    F = _F()
    k, s, p = F._pool_args(kernel_size, stride, padding, "max_unpool2d")
    if x.ndim not in (3, 4):
        raise ValueError(f"max_unpool2d: expected 3D or 4D input, got {x.ndim}D input of shape {x.shape}")
    if idx.shape != x.shape:
        raise ValueError(f"Expected shape of indices to be same as that of the input tensor ({list(x.shape)}) but "
                         f"got indices tensor with shape: {list(idx.shape)}")
    if idx.dtype.is_float or idx.dtype is dt.bool_:
        raise TypeError(f"elements in indices should be type int64 but got: {idx.dtype.name}")
    oh, ow = _unpool_size("max_unpool2d", x, k, s, p, output_size)
    lead = x.shape[:-2]
    flat_x = ops.reshape(x, (*lead, -1))
    flat_i = ops.cast(ops.reshape(idx, (*lead, -1)), dt.int64)
    if not flat_i.is_traced and flat_i.numel():
        lo, hi = int(flat_i.numpy().min()), int(flat_i.numpy().max())
        if lo < 0 or hi >= oh * ow:
            bad = lo if lo < 0 else hi
            raise IndexError(f"Found an invalid max index: {bad} (output volumes are of size {oh}x{ow})")
    out = ops.scatter(ops.zeros((*lead, oh * ow), dtype=x.dtype), x.ndim - 2, flat_i, flat_x)
    return ops.reshape(out, (*lead, oh, ow))


def max_unpool1d(input: Any, indices: Any, kernel_size: Any, stride: Any = None, padding: Any = 0,
                 output_size: Any = None) -> Tensor:
    """max_unpool2d over a height-1 plane: (N, C, L) or (C, L) values and indices into L_out."""
    x, idx = _t(input), _t(indices)
    if x.ndim not in (2, 3):
        raise ValueError(f"max_unpool1d: expected 2D or 3D input, got {x.ndim}D input of shape {x.shape}")
    k = single("max_unpool1d", "kernel_size", kernel_size)
    s = k if stride is None else single("max_unpool1d", "stride", stride)
    p = single("max_unpool1d", "padding", padding)
    size = _unpool_size("max_unpool1d", x, (k,), (s,), (p,), output_size)
    y = max_unpool2d(ops.expand_dims(x, -2), ops.expand_dims(idx, -2), (1, k), (1, s), (0, p), (1, size[0]))
    return ops.squeeze(y, -2)


# -- distances, transposed convolution -------------------------------------------------------------

def pdist(input: Any, p: float = 2.0) -> Tensor:
    """The p-norm distances between every pair of rows i < j of an (N, M) input, in row-major order
    of the pairs: N (N - 1) / 2 values (the condensed form of cdist(x, x))."""
    x = _t(input)
    if x.ndim != 2:
        raise RuntimeError(f"pdist only supports 2D tensors, got: {x.ndim}D")
    if p < 0:
        raise RuntimeError("pdist only supports non-negative p values")
    if not x.dtype.is_float:
        raise RuntimeError(f"pdist only supports floating-point dtypes, got {x.dtype.name}")
    n = x.shape[0]
    if n < 2:
        return ops.zeros((0,), dtype=x.dtype)
    i, j = _pair_rows(n)
    diff = ops.sub(ops.index_select(x, 0, i), ops.index_select(x, 0, j))
    return _F()._norm(diff, float(p), 1, False)


def _pair_rows(n: int) -> tuple[Tensor, Tensor]:
    """(i, j) of the pairs i < j of n rows in row-major order, computed from an iota (a constant index
    array would be data baked into a compiled graph, which then retraces on every call): pair k is in
    row i = floor((b - sqrt(b^2 - 8k)) / 2), b = 2n - 1, corrected by one either way for rounding,
    since the pairs before row r number start(r) = r n - r (r + 1) / 2."""
    k = ops.arange(n * (n - 1) // 2, dtype=dt.int64)
    b = 2 * n - 1
    root = ops.sqrt(ops.sub(float(b * b), ops.mul(ops.cast(k, dt.float64), 8.0)))
    i = ops.cast(ops.floor(ops.div(ops.sub(float(b), root), 2.0)), dt.int64)

    def start(r: Tensor) -> Tensor:
        return ops.sub(ops.mul(r, n), ops.floor_divide(ops.mul(r, ops.add(r, 1)), 2))

    i = ops.where(ops.gt(start(i), k), ops.sub(i, 1), i)
    i = ops.where(ops.le(start(ops.add(i, 1)), k), ops.add(i, 1), i)
    return i, ops.add(ops.sub(k, start(i)), ops.add(i, 1))


def conv_transpose1d(input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
                     output_padding: Any = 0, groups: int = 1, dilation: Any = 1) -> Tensor:
    """torch's conv_transpose1d: (N, C_in, L) (or (C_in, L)) with weight (C_in, C_out/groups, k) ->
    (N, C_out, (L - 1)*stride - 2*padding + dilation*(k - 1) + output_padding + 1), as conv_transpose2d
    over a height-1 image."""
    from .conv_transpose import conv_transpose2d
    x, w = _t(input), _t(weight)
    if x.ndim not in (2, 3) or w.ndim != 3:
        raise ValueError(f"conv_transpose1d: expected a 2-d or 3-d input and a 3-d weight, got {x.shape} and "
                         f"{w.shape}")
    s, p, op, d = (single("conv_transpose1d", n, v) for n, v in (("stride", stride), ("padding", padding),
                                          ("output_padding", output_padding), ("dilation", dilation)))
    if w.shape[0] != x.shape[-2]:  # (conv_transpose2d's error would name it and the height-1 shapes)
        raise ops.fail(ops.ArgumentError(f"conv_transpose1d: Given transposed=1, weight of size {list(w.shape)}, "
                                         f"expected input{list(x.shape)} to have {w.shape[0]} channels, but got "
                                         f"{x.shape[-2]} channels instead"))
    from .functional import _check_bias
    _check_bias("conv_transpose1d", w, bias, w.shape[1] * int(groups))
    y = conv_transpose2d(ops.expand_dims(x, -2), ops.expand_dims(w, -2), bias, (1, s), (0, p), (0, op), groups,
                         (1, d))
    return ops.squeeze(y, -2)

"""torch.nn / torch.nn.functional names found missing by comparing `dir(torch.nn)`, `dir(F)` and `dir(torch)`
with Avalon's: `F.linear_cross_entropy` and `nn.LinearCrossEntropyLoss` (torch 2.13), fractional max
pooling (`F.fractional_max_pool2d/3d`, `nn.FractionalMaxPool2d/3d`), `nn.CrossMapLRN2d`, the deprecated
`nn.NLLLoss2d` and `nn.Container`, `F.native_channel_shuffle`, `F.conv_tbc`, and the torch.* functions
`poisson`, `binomial`, `conv_tbc`, `native_channel_shuffle`, `max_pool1d_with_indices` (ATen's form) and
ATen's `convolution`, `grid_sampler`, `affine_grid_generator`, `native_layer_norm`, `native_dropout` and
the RNN cells `rnn_tanh_cell`, `rnn_relu_cell`, `lstm_cell`, `gru_cell`.

All are compositions of existing ops and samplers, so they trace, differentiate and compile."""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import ops
from .. import random as _rng
from ..autograd import Function
from ..distributions import _samplers
from ..ir import dtypes as dt
from ..tensor import Buffer, Tensor
from . import functional as F
from .functional_spatial import channel_shuffle
from .layers import Linear, NLLLoss, _buffer
from .module import Module
from .modules.loss import _WeightedLoss

# -- linear_cross_entropy ------------------------------------------------------------------------------


@dataclass
class LinearCrossEntropyOptions:
    """torch.nn.LinearCrossEntropyOptions: how torch chunks linear_cross_entropy to save memory. Avalon
    computes the reference path (the same values) whatever the options say: fusion decides its memory."""
    allow_retain_graph: bool = False
    batch_chunk_size: int | None = None
    chunking_method: str | None = "auto"
    acc_policy: str = "auto"
    acc_dtype: Any = None


def linear_cross_entropy(input: Any, linear_weight: Any, target: Any, *, linear_bias: Any = None, weight: Any = None,
                         reduction: str = "mean", ignore_index: int | None = None, label_smoothing: float = 0.0,
                         options: LinearCrossEntropyOptions | None = None) -> Tensor:
    """F.linear_cross_entropy: `cross_entropy(linear(input, linear_weight, linear_bias), target, ...)`,
    a weight of shape (C, d_1, ..., d_K, in_features) giving K-dimensional logits (N, C, d_1, ..., d_K);
    `ignore_index=None` is -100 for class indices and refused with probability targets, as torch's."""
    x, w, t = F._t(input), F._t(linear_weight), F._t(target)
    if x.ndim < 1 or x.ndim > 2:
        raise ops.fail(RuntimeError(f"expected input with dimensionality 1 or 2, got {x.ndim}"))
    if w.ndim < 2:
        raise ops.fail(RuntimeError(f"expected linear_weight with dimensionality at least 2, got {w.ndim}"))
    batches, in_features = tuple(x.shape[:-1]), x.shape[-1]
    if in_features != w.shape[-1]:
        raise ops.fail(RuntimeError("expected equal input and linear_weight last dimensions (in_features), "
                                    f"got {x.shape[-1]} and {w.shape[-1]}, respectively"))
    num_classes, out_features = w.shape[0], tuple(w.shape[1:-1])
    b = None if linear_bias is None else F._t(linear_bias)
    if b is not None and tuple(b.shape) != (num_classes, *out_features):
        raise ops.fail(RuntimeError(f"expected linear_bias shape {(num_classes, *out_features)}, got {tuple(b.shape)}"))
    if out_features and not batches:
        raise ops.fail(RuntimeError(f"K-dimensional loss defined by linear_weight shape {tuple(w.shape)} requires "
                                    f"batched input, (N, {in_features}), got unbatched input with shape "
                                    f"{tuple(x.shape)}"))
    logits_shape = (*batches, num_classes, *out_features)
    if tuple(t.shape) == logits_shape and ignore_index is not None:
        raise ops.fail(RuntimeError("ignore_index cannot be specified when target contains probabilities"))
    rows = math.prod(out_features, start=num_classes)
    if out_features:
        w = ops.reshape(w, (rows, in_features))
        b = None if b is None else ops.reshape(b, (rows,))
    logits = ops.reshape(F.linear(x, w, b), logits_shape)
    return F.cross_entropy(logits, t, weight, reduction=reduction,
                           ignore_index=-100 if ignore_index is None else ignore_index,
                           label_smoothing=label_smoothing)


class LinearCrossEntropyLoss(_WeightedLoss):
    """torch.nn.LinearCrossEntropyLoss: a bias-free (by default) Linear to `num_classes * prod(out_features)`
    logits, stored flat as torch's (`self.linear.weight` is (C * prod(out_features), in_features)), and
    the cross entropy of those logits shaped (N, C, *out_features)."""

    def __init__(self, in_features: int, num_classes: int, *, out_features: tuple[int, ...] = (), bias: bool = False,
                 device: Any = None, dtype: Any = None, reduction: str = "mean", weight: Any = None,
                 ignore_index: int | None = None, label_smoothing: float = 0.0,
                 options: LinearCrossEntropyOptions | None = None) -> None:
        if weight is not None and tuple(F._t(weight).shape) != (num_classes,):
            raise RuntimeError(f"expected weight shape to be {(num_classes,)}, got {tuple(F._t(weight).shape)}")
        if label_smoothing < 0 or label_smoothing > 1.0:
            raise RuntimeError(f"expected label_smoothing to be in range [0, 1], got {label_smoothing}")
        super().__init__(weight=weight, reduction=reduction)
        self.num_classes, self.out_features = num_classes, tuple(out_features)
        self.ignore_index, self.label_smoothing = ignore_index, label_smoothing
        self.linear = Linear(in_features, math.prod(self.out_features, start=num_classes), bias=bias, device=device,
                             dtype=dtype)
        self.options = options

    def forward(self, input: Any, target: Any) -> Tensor:
        w = ops.reshape(self.linear.weight, (self.num_classes, *self.out_features, self.linear.in_features))
        b = None if self.linear.bias is None else ops.reshape(self.linear.bias, (self.num_classes, *self.out_features))
        return linear_cross_entropy(input, w, target, linear_bias=b, weight=self.weight, reduction=self.reduction,
                                    ignore_index=self.ignore_index, label_smoothing=self.label_smoothing,
                                    options=self.options)

    def extra_repr(self) -> str:
        return (f"in_features={self.linear.in_features}, num_classes={self.num_classes}, "
                f"out_features={self.out_features}, bias={self.linear.bias is not None}, reduction={self.reduction}, "
                f"ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}, options={self.options}")


# -- fractional max pooling ------------------------------------------------------------------------------

_AXES = {2: ("height", "width"), 3: ("time", "height", "width")}


def _tuple(v: Any, n: int) -> tuple:
    return tuple(v) if isinstance(v, (list, tuple)) else (v,) * n


def _starts(u: Tensor, in_size: int, out_size: int, pool: int, d: dt.DType) -> Tensor:
    """torch's generate_intervals: window i starts at int((i + u) alpha) - int(u alpha), alpha =
    (in - pool) / (out - 1), in the samples' dtype; the last window ends at the input's end. u is
    (P,), the result (P, out) int64."""
    last = ops.full((u.shape[0], 1), in_size - pool, dt.int64)
    if out_size <= 1:
        return last[:, :out_size]
    alpha = float(d.np.type(in_size - pool) / d.np.type(out_size - 1)) if d is not dt.bfloat16 else \
        (in_size - pool) / (out_size - 1)
    i = ops.cast(ops.iota((1, out_size - 1), 1), d)
    uu = ops.reshape(u, (-1, 1))
    s = ops.sub(ops.cast(ops.trunc(ops.mul(ops.add(i, uu), alpha)), dt.int64),
                ops.cast(ops.trunc(ops.mul(uu, alpha)), dt.int64))
    return ops.concat([s, last], 1)


def _fractional_max_pool(fn: str, nd: int, input: Any, kernel_size: Any, output_size: Any, output_ratio: Any,
                         _random_samples: Any) -> tuple[Tensor, Tensor]:
    x = F._t(input)
    if output_size is None and output_ratio is None:
        raise ValueError(f"{fn} requires specifying either an output_size or an output_ratio")
    if x.ndim not in (nd + 1, nd + 2):
        raise ops.fail(RuntimeError(f"{fn}(): Expected {nd + 1}D or {nd + 2}D tensor, but got: {tuple(x.shape)}"))
    spatial = tuple(x.shape[-nd:])
    if output_size is None:
        if nd == 2 and isinstance(output_ratio, (list, tuple)) and len(output_ratio) > 2:
            raise ValueError(f"{fn} requires output_ratio to either be a single Int or tuple of Ints.")
        out = tuple(int(s * r) for s, r in zip(spatial, _tuple(output_ratio, nd)))
    else:
        out = tuple(int(o) for o in _tuple(output_size, nd))
    pool = tuple(int(k) for k in _tuple(kernel_size, nd))
    for axis, i, p, o in zip(_AXES[nd], spatial, pool, out):
        if o + p - 1 > i:
            where = f"{fn}()" if nd == 2 else f"{fn}_out()"
            raise ops.fail(RuntimeError(f"{where}: pool {axis} {p} too large relative to input {axis} {i}"))
    batched = x.ndim == nd + 2
    xb = x if batched else ops.expand_dims(x, 0)
    n, c = xb.shape[0], xb.shape[1]
    if _random_samples is None:
        u = ops.rand((n, c, nd), dtype=x.dtype if x.dtype.is_float else dt.float32)
    else:
        u = F._t(_random_samples)
        if u.ndim != 3:
            raise ops.fail(RuntimeError(f"Expect _random_samples to be 3D tensor, got: {u.ndim}D."))
        if u.dtype is not x.dtype:
            raise ops.fail(RuntimeError("Expect _random_samples to have the same dtype as input"))
        if u.shape[0] < n:
            raise ops.fail(RuntimeError("Expect _random_samples.size(0) no less then input batch size."))
        if u.shape[1] != c:
            raise ops.fail(RuntimeError("Expect _random_samples.size(1) equals to input channel size."))
        if u.shape[2] != nd:
            raise ops.fail(RuntimeError(f"Expect _random_samples.size(2) equals to {nd}; got {u.shape[2]}."))
    u = ops.reshape(ops.stop_gradient(u[:n]), (n * c, nd))
    # torch reads the samples as (W, H) in 2-d and (T, H, W) in 3-d
    order = (1, 0) if nd == 2 else (0, 1, 2)
    P = n * c
    flat = None  # (P, out..., k...) flat positions in the plane
    strides = [math.prod(spatial[a + 1:]) for a in range(nd)]
    for a in range(nd):
        st = _starts(u[:, order[a]], spatial[a], out[a], pool[a], u.dtype)          # (P, out_a)
        pos = ops.add(ops.expand_dims(st, -1), ops.reshape(ops.iota((pool[a],), 0), (1, 1, pool[a])))  # (P, o, k)
        shape = [P] + [1] * (2 * nd)
        shape[1 + a], shape[1 + nd + a] = out[a], pool[a]
        term = ops.mul(ops.reshape(pos, tuple(shape)), strides[a])
        flat = term if flat is None else ops.add(flat, term)
    full_shape = (P, *out, *pool)
    flat = ops.reshape(ops.broadcast_to(flat, full_shape), (P, math.prod(out), math.prod(pool)))
    plane = ops.reshape(xb, (P, math.prod(spatial)))
    vals = ops.reshape(ops.take_along_dim(plane, ops.reshape(flat, (P, -1)), 1), flat.shape)
    pick = ops.argmax(ops.stop_gradient(vals), 2, keepdims=True)
    index = ops.take_along_dim(flat, pick, 2)                                        # (P, O, 1)
    value = ops.take_along_dim(plane, ops.reshape(index, (P, -1)), 1)
    shape = (n, c, *out) if batched else (c, *out)
    return ops.reshape(value, shape), ops.reshape(index, shape)


def fractional_max_pool2d_with_indices(input: Any, kernel_size: Any, output_size: Any = None, output_ratio: Any = None,
                                       return_indices: bool = False, _random_samples: Any = None) -> Any:
    """F.fractional_max_pool2d_with_indices: (values, indices into H*W). The pooling regions are
    torch's from the same `_random_samples` (N, C, 2) in [0, 1): a window's start is
    int((i + u) alpha) - int(u alpha), alpha = (in - k) / (out - 1), u[..., 0] for the width and
    u[..., 1] for the height; without samples they are drawn from Avalon's generator."""
    return _fractional_max_pool("fractional_max_pool2d", 2, input, kernel_size, output_size, output_ratio,
                                _random_samples)


def fractional_max_pool2d(input: Any, kernel_size: Any, output_size: Any = None, output_ratio: Any = None,
                          return_indices: bool = False, _random_samples: Any = None) -> Any:
    r = fractional_max_pool2d_with_indices(input, kernel_size, output_size, output_ratio, return_indices,
                                           _random_samples)
    return r if return_indices else r[0]


def fractional_max_pool3d_with_indices(input: Any, kernel_size: Any, output_size: Any = None, output_ratio: Any = None,
                                       return_indices: bool = False, _random_samples: Any = None) -> Any:
    """F.fractional_max_pool3d_with_indices: (values, indices into T*H*W), samples (N, C, 3) read
    as (T, H, W)."""
    return _fractional_max_pool("fractional_max_pool3d", 3, input, kernel_size, output_size, output_ratio,
                                _random_samples)


def fractional_max_pool3d(input: Any, kernel_size: Any, output_size: Any = None, output_ratio: Any = None,
                          return_indices: bool = False, _random_samples: Any = None) -> Any:
    r = fractional_max_pool3d_with_indices(input, kernel_size, output_size, output_ratio, return_indices,
                                           _random_samples)
    return r if return_indices else r[0]


class _FractionalMaxPoolNd(Module):
    _nd = 2

    def __init__(self, kernel_size: Any, output_size: Any = None, output_ratio: Any = None,
                 return_indices: bool = False, _random_samples: Any = None) -> None:
        super().__init__()
        nd, name = self._nd, type(self).__name__
        if nd == 3 and ((isinstance(kernel_size, int) and kernel_size <= 0) or (
                isinstance(kernel_size, (tuple, list)) and not all(k > 0 for k in kernel_size))):
            raise ValueError(f"kernel_size must be greater than 0, but got {kernel_size}")
        self.kernel_size = _tuple(kernel_size, nd)
        self.return_indices = return_indices
        self._random_samples = _buffer(_random_samples)
        self.output_size = _tuple(output_size, nd) if output_size is not None else None
        self.output_ratio = _tuple(output_ratio, nd) if output_ratio is not None else None
        if output_size is None and output_ratio is None:
            raise ValueError(f"{name} requires specifying either an output size, or a pooling ratio")
        if output_size is not None and output_ratio is not None:
            raise ValueError("only one of output_size and output_ratio may be specified")
        if self.output_ratio is not None and not all(0 < r < 1 for r in self.output_ratio):
            raise ValueError(f"output_ratio must be between 0 and 1 (got {output_ratio})")

    def forward(self, input: Any) -> Any:
        f = fractional_max_pool2d if self._nd == 2 else fractional_max_pool3d
        return f(input, self.kernel_size, self.output_size, self.output_ratio, self.return_indices,
                 _random_samples=self._random_samples)


class FractionalMaxPool2d(_FractionalMaxPoolNd):
    """torch.nn.FractionalMaxPool2d (Graham's fractional max pooling): pseudo-random windows, drawn
    afresh at each call unless `_random_samples` fixes them."""
    _nd = 2


class FractionalMaxPool3d(_FractionalMaxPoolNd):
    """torch.nn.FractionalMaxPool3d."""
    _nd = 3


# -- legacy layers ---------------------------------------------------------------------------------------------

def _cross_map_window(channels: int, size: int, d: dt.DType) -> Tensor:
    """(C, C): which channels' squares each channel's scale sums in torch's legacy CrossMapLRN2d. Its
    running sum adds channel c + pre_pad - 1 and drops channel c - pre_pad only from c > pre_pad on, so
    channel 0 is never dropped: j <= c + pre_pad - 1 and (j == 0 or j >= c - pre_pad + 1), kept as torch
    computes it."""
    pre_pad = int((size - 1) / 2 + 1)
    c, j = ops.iota((channels, channels), 0), ops.iota((channels, channels), 1)
    inside = ops.logical_and(ops.le(j, ops.add(c, pre_pad - 1)),
                             ops.logical_or(ops.eq(j, 0), ops.ge(j, ops.add(c, 1 - pre_pad))))
    return ops.cast(inside, d)


def _cross_map_backward_window(channels: int, size: int, d: dt.DType) -> Tensor:
    """(C, C): which channels' ratios torch's legacy CrossMapLRN2d backward sums for channel c:
    c' in [c - p, c + size - 1 - p], p = int(size - (size - 1) / 2), as its padded running sum does."""
    p = int(size - (size - 1) / 2)
    c, j = ops.iota((channels, channels), 0), ops.iota((channels, channels), 1)
    return ops.cast(ops.logical_and(ops.ge(j, ops.add(c, -p)), ops.le(j, ops.add(c, size - 1 - p))), d)


class _CrossMapLRN2dFunction(Function):
    """torch's _cross_map_lrn2d: the forward as its running sum computes it, the gradient its hand-written
    backward (which is not the forward's exact derivative: torch's, kept so gradients match torch)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, size: int, alpha: float, beta: float, k: float) -> Tensor:
        scale = ops.einsum("cj,njhw->nchw", _cross_map_window(x.shape[1], size, x.dtype), ops.mul(x, x))
        scale = ops.add(ops.mul(scale, alpha / size), float(k))
        out = ops.mul(ops.pow(scale, -float(beta)), x)
        ctx.save_for_backward(x, scale, out)
        ctx.size, ctx.alpha, ctx.beta = size, alpha, beta
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple:
        x, scale, out = ctx.saved_tensors
        ratio = ops.div(ops.mul(grad, out), scale)
        acc = ops.einsum("cj,njhw->nchw", _cross_map_backward_window(x.shape[1], ctx.size, x.dtype), ratio)
        gx = ops.sub(ops.mul(ops.pow(scale, -float(ctx.beta)), grad),
                     ops.mul(ops.mul(x, acc), 2 * ctx.alpha * ctx.beta / ctx.size))
        return gx, None, None, None, None


class CrossMapLRN2d(Module):
    """torch.nn.CrossMapLRN2d (Lua torch's SpatialCrossMapLRN): x (k + alpha / size * sum of squares over
    neighbouring channels)^-beta on a 4-d input, the window as torch's legacy code sums it."""

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, input: Any) -> Tensor:
        x = F._t(input)
        if x.ndim != 4:
            raise ValueError(f"CrossMapLRN2d: Expected input to be 4D, got {x.ndim}D instead.")
        return _CrossMapLRN2dFunction.apply(x, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class NLLLoss2d(NLLLoss):
    """torch.nn.NLLLoss2d: NLLLoss under its deprecated name (NLLLoss takes (N, C, H, W) input)."""

    def __init__(self, weight: Any = None, size_average: bool | None = None, ignore_index: int = -100,
                 reduce: bool | None = None, reduction: str = "mean") -> None:
        warnings.warn("`NLLLoss2d` has been deprecated. Please use `NLLLoss` instead as a drop-in replacement and see "
                      "https://pytorch.org/docs/main/nn.html#torch.nn.NLLLoss for more details.", FutureWarning,
                      stacklevel=2)
        super().__init__(weight, size_average, ignore_index, reduce, reduction)


class Container(Module):
    """torch.nn.Container (deprecated): a Module holding the keyword arguments as submodules."""

    def __init__(self, **kwargs: Any) -> None:
        warnings.warn("`nn.Container` is deprecated. All of its functionality is now implemented in `nn.Module`. "
                      "Subclass that instead.", FutureWarning, stacklevel=2)
        super().__init__()
        for key, value in kwargs.items():
            self.add_module(key, value)


# -- lazy modules' placeholders ---------------------------------------------------------------------------

class _UninitializedTensorMixin:
    """A tensor with no shape yet (torch's lazy modules' placeholder): `materialize(shape)` gives it its
    shape and dtype, and it becomes a regular tensor (the same object, as torch's)."""

    __slots__ = ()
    cls_to_become: type = Tensor

    def materialize(self, shape: Any, device: Any = None, dtype: Any = None) -> None:
        shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
        d = self.dtype if dtype is None else ops.dtype_arg("materialize", dtype)
        self.data = ops.zeros(shape, dtype=d, device=device if device is not None else self.device)
        self.__class__ = self.cls_to_become

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


class UninitializedParameter(_UninitializedTensorMixin, Tensor):
    """torch.nn.UninitializedParameter: a parameter whose shape the first input decides (`materialize`)."""

    __slots__ = ()
    cls_to_become = Tensor

    def __init__(self, requires_grad: bool = True, device: Any = None, dtype: Any = None) -> None:
        d = ops.dtype_arg("UninitializedParameter", dtype) if dtype is not None else ops.get_default_dtype()
        Tensor.__init__(self, np.zeros((0,), d.np if d is not dt.bfloat16 else np.float32), d, device)
        if not requires_grad:
            self.requires_grad_(False)


class UninitializedBuffer(_UninitializedTensorMixin, Buffer):
    """torch.nn.UninitializedBuffer: a buffer whose shape the first input decides (`materialize`)."""

    __slots__ = ()
    cls_to_become = Buffer

    def __init__(self, requires_grad: bool = False, device: Any = None, dtype: Any = None,
                 persistent: bool = True) -> None:
        d = ops.dtype_arg("UninitializedBuffer", dtype) if dtype is not None else ops.get_default_dtype()
        Tensor.__init__(self, np.zeros((0,), d.np if d is not dt.bfloat16 else np.float32), d, device)
        self.persistent = persistent


# -- functional forms ----------------------------------------------------------------------------------------

def native_channel_shuffle(input: Any, groups: int) -> Tensor:
    """F.native_channel_shuffle / torch.native_channel_shuffle: channel_shuffle's values."""
    return channel_shuffle(input, groups)


def conv_tbc(input: Any, weight: Any, bias: Any, pad: int = 0) -> Tensor:
    """torch.conv_tbc (fairseq's): a 1-d convolution over (Time, Batch, Channels) input with a
    (kernel, in_channels, out_channels) weight, `pad` zeros on both ends of time."""
    x, w, b = F._t(input), F._t(weight), F._t(bias)
    if x.ndim != 3:
        raise ops.fail(RuntimeError("Input must have 3 dims: time, batch, in_channel"))
    if w.ndim != 3:
        raise ops.fail(RuntimeError("Weight tensor must have 3 dims: kernel_width, in_channels, out_channels."))
    if b.ndim != 1:
        raise ops.fail(RuntimeError("Bias must be 1-D"))
    if x.shape[2] != w.shape[1]:
        raise ops.fail(RuntimeError("Input dim 2 (input channels) is not == dim 1 in the weight tensor"))
    if w.shape[2] != b.shape[0]:
        raise ops.fail(RuntimeError("Bias size must equal dim 2 in the weight tensor (output channels)."))
    y = F.conv1d(ops.permute(x, (1, 2, 0)), ops.permute(w, (2, 1, 0)), b, padding=int(pad))
    return ops.permute(y, (2, 0, 1))


def max_pool1d_with_indices(input: Any, kernel_size: Any, stride: Any = (), padding: Any = 0, dilation: Any = 1,
                            ceil_mode: bool = False) -> tuple[Tensor, Tensor]:
    """torch.max_pool1d_with_indices (ATen's): (values, indices); an empty `stride` is the kernel."""
    return F.max_pool1d_with_indices(input, kernel_size, stride if stride not in ((), []) else None, padding,
                                     dilation, ceil_mode)


# -- ATen-level functions exported graphs and TorchScript-era code call ---------------------------------------

def convolution(input: Any, weight: Any, bias: Any, stride: Any, padding: Any, dilation: Any, transposed: bool,
                output_padding: Any, groups: int) -> Tensor:
    """torch.convolution (ATen's): conv1d/2d/3d or conv_transpose1d/2d/3d by the weight's rank and `transposed`."""
    w = F._t(weight)
    nd = w.ndim - 2
    if nd not in (1, 2, 3):
        raise ops.fail(RuntimeError(f"convolution: expected a 3-d, 4-d or 5-d weight, got {w.ndim}-d"))
    if transposed:
        f = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[nd - 1]
        return f(input, w, bias, stride, padding, output_padding, groups, dilation)
    return (F.conv1d, F.conv2d, F.conv3d)[nd - 1](input, w, bias, stride, padding, dilation, groups)


def grid_sampler(input: Any, grid: Any, interpolation_mode: int, padding_mode: int, align_corners: bool) -> Tensor:
    """torch.grid_sampler (ATen's): F.grid_sample with the modes as ints (0 bilinear, 1 nearest, 2 bicubic;
    0 zeros, 1 border, 2 reflection)."""
    return F.grid_sample(input, grid, ("bilinear", "nearest", "bicubic")[interpolation_mode],
                         ("zeros", "border", "reflection")[padding_mode], align_corners)


def affine_grid_generator(theta: Any, size: Sequence[int], align_corners: bool) -> Tensor:
    """torch.affine_grid_generator (ATen's): F.affine_grid."""
    return F.affine_grid(theta, size, align_corners)


def native_layer_norm(input: Any, normalized_shape: Sequence[int], weight: Any, bias: Any,
                      eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """torch.native_layer_norm: (layer_norm's output, the mean, 1/sqrt(biased var + eps)), the statistics
    shaped as the input with the normalized dims 1."""
    x = F._t(input)
    shape = (int(normalized_shape),) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    dims = list(range(x.ndim - len(shape), x.ndim))
    mean = ops.mean(x, dims, keepdim=True)
    rstd = ops.rsqrt(ops.add(ops.mean(ops.square(ops.sub(x, mean)), dims, keepdim=True), float(eps)))
    return F.layer_norm(x, shape, weight, bias, eps), mean, rstd


def native_dropout(input: Any, p: float, train: bool | None) -> tuple[Tensor, Tensor]:
    """torch.native_dropout: (x * mask / (1 - p), the bool mask) in training; (input, all-true) otherwise."""
    x = F._t(input)
    if not train:
        return x, ops.full(tuple(x.shape), True, dt.bool_)
    keep = ops.lt(ops.rand(tuple(x.shape), dtype=x.dtype if x.dtype.is_float else dt.float32), 1.0 - float(p))
    scale = 0.0 if p >= 1 else 1.0 / (1.0 - float(p))
    return ops.mul(ops.mul(x, ops.cast(keep, x.dtype)), scale), keep


def _cell_linear(x: Any, h: Any, w_ih: Any, w_hh: Any, b_ih: Any, b_hh: Any) -> tuple[Tensor, Tensor]:
    return F.linear(x, w_ih, b_ih), F.linear(h, w_hh, b_hh)


def rnn_tanh_cell(input: Any, hx: Any, w_ih: Any, w_hh: Any, b_ih: Any = None, b_hh: Any = None) -> Tensor:
    """torch.rnn_tanh_cell: one RNNCell step, tanh(W_ih x + b_ih + W_hh h + b_hh)."""
    gi, gh = _cell_linear(input, hx, w_ih, w_hh, b_ih, b_hh)
    return ops.tanh(ops.add(gi, gh))


def rnn_relu_cell(input: Any, hx: Any, w_ih: Any, w_hh: Any, b_ih: Any = None, b_hh: Any = None) -> Tensor:
    """torch.rnn_relu_cell: one RNNCell step with relu."""
    gi, gh = _cell_linear(input, hx, w_ih, w_hh, b_ih, b_hh)
    return ops.relu(ops.add(gi, gh))


def lstm_cell(input: Any, hx: Sequence[Any], w_ih: Any, w_hh: Any, b_ih: Any = None,
              b_hh: Any = None) -> tuple[Tensor, Tensor]:
    """torch.lstm_cell: one LSTMCell step, hx = (h, c), gates i, f, g, o; returns (h', c')."""
    h, c = hx
    gi, gh = _cell_linear(input, h, w_ih, w_hh, b_ih, b_hh)
    i, f, g, o = ops.chunk(ops.add(gi, gh), 4, -1)
    c = ops.add(ops.mul(ops.sigmoid(f), c), ops.mul(ops.sigmoid(i), ops.tanh(g)))
    return ops.mul(ops.sigmoid(o), ops.tanh(c)), c


def gru_cell(input: Any, hx: Any, w_ih: Any, w_hh: Any, b_ih: Any = None, b_hh: Any = None) -> Tensor:
    """torch.gru_cell: one GRUCell step, gates r, z, n (n = tanh(W_in x + b_in + r (W_hn h + b_hn)))."""
    gi, gh = _cell_linear(input, hx, w_ih, w_hh, b_ih, b_hh)
    ir, iz, in_ = ops.chunk(gi, 3, -1)
    hr, hz, hn = ops.chunk(gh, 3, -1)
    r, z = ops.sigmoid(ops.add(ir, hr)), ops.sigmoid(ops.add(iz, hz))
    n = ops.tanh(ops.add(in_, ops.mul(r, hn)))
    return ops.add(ops.mul(ops.sub(1.0, z), n), ops.mul(z, hx))


# -- random sampling ------------------------------------------------------------------------------------

_SCALAR_TYPES = {"int64": "Long", "int32": "Int", "int16": "Short", "int8": "Char", "uint8": "Byte", "bool": "Bool"}
"""ATen's ScalarType names, which torch's dtype errors print."""

def poisson(input: Any, generator: Any = None) -> Tensor:
    """torch.poisson: one Poisson(rate) draw per element of `input` (the rates), in its dtype; no
    gradient. Avalon's stream (`generator=` an av.Generator), torch's distribution."""
    x = F._t(input)
    if not x.dtype.is_float:
        name = _SCALAR_TYPES.get(dt.PY_NAMES[x.dtype.name])
        raise NotImplementedError(f"\"poisson_cpu\" not implemented for '{name}'")
    x = ops.check_values(x, ops.ge(x, 0.0), "poisson: invalid Poisson rate, expected rate to be non-negative")
    with _rng.using(generator, "poisson"):
        k = _samplers.poisson(x, tuple(x.shape))
    return ops.cast(k, x.dtype)


def binomial(count: Any, prob: Any, generator: Any = None) -> Tensor:
    """torch.binomial: one Binomial(count, prob) draw per element (the operands broadcast), in
    count's dtype; no gradient."""
    n, p = F._t(count), F._t(prob)
    for name, v in (("count", n), ("prob", p)):
        if not v.dtype.is_float:
            raise ValueError(f"binomial only supports floating-point dtypes for {name}, got: "
                             f"{_SCALAR_TYPES.get(dt.PY_NAMES[v.dtype.name])}")
    shape = tuple(np.broadcast_shapes(n.shape, p.shape))
    with _rng.using(generator, "binomial"):
        k = _samplers.binomial(n, p, shape)
    return ops.cast(k, n.dtype)


FUNCTIONAL = ["conv_tbc", "fractional_max_pool2d", "fractional_max_pool2d_with_indices", "fractional_max_pool3d",
              "fractional_max_pool3d_with_indices", "linear_cross_entropy", "native_channel_shuffle"]
"""The names `avalon.nn.functional` adds from here."""
MODULES = ["Container", "CrossMapLRN2d", "FractionalMaxPool2d", "FractionalMaxPool3d", "LinearCrossEntropyLoss",
           "LinearCrossEntropyOptions", "NLLLoss2d", "UninitializedBuffer", "UninitializedParameter"]
"""The names `avalon.nn` adds from here."""
TORCH = ["affine_grid_generator", "binomial", "conv_tbc", "convolution", "grid_sampler", "gru_cell", "lstm_cell",
         "max_pool1d_with_indices", "native_channel_shuffle", "native_dropout", "native_layer_norm", "poisson",
         "rnn_relu_cell", "rnn_tanh_cell"]
"""The torch.* names `avalon` adds from here."""
__all__ = sorted({*FUNCTIONAL, *MODULES, *TORCH})

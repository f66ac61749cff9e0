"""Layers with PyTorch's constructor signatures, parameter names, default initialization and math.

Each layer is a `Module` holding its parameters as plain `Tensor` attributes (`weight`, `bias`) and its
state as `Buffer`s (`running_mean`), so `state_dict()` keys match torch's and torch weights load as is.
Forward passes call `avalon.nn.functional`, so they trace into ordinary IR ops.
"""
from __future__ import annotations

import inspect
import math
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from .. import ops
from ..ir import dtypes as dt
from ..tensor import TRACING, Buffer, Tensor, _mark_literal, as_array, default_float_dtype
from ..trace import assign, current_trace
from . import functional as F
from . import init
from .containers import _Items
from .functional_spatial import conv_padding
from .losses import _legacy_reduction
from .module import Module

__all__ = [
    "AvgPool2d", "BCELoss", "BCEWithLogitsLoss", "BatchNorm1d", "BatchNorm2d", "Conv2d", "CrossEntropyLoss",
    "Dropout", "ELU", "Embedding", "Flatten", "GELU", "GroupNorm", "Hardsigmoid", "Hardswish", "Hardtanh",
    "HuberLoss", "Identity", "KLDivLoss", "L1Loss", "LayerNorm", "LeakyReLU", "Linear", "LogSigmoid", "LogSoftmax",
    "MSELoss", "MaxPool2d", "Mish", "ModuleList", "NLLLoss", "ReLU", "ReLU6", "SELU", "SiLU", "Sequential", "Sigmoid",
    "SmoothL1Loss", "Softmax", "Softmin", "Softplus", "Softsign", "Tanh", "Unflatten",
    "CELU", "Dropout1d", "Dropout2d", "Dropout3d", "GLU", "Hardshrink", "PReLU", "Softmax2d", "Softshrink",
    "Tanhshrink", "Threshold",
]


def _dtype(dtype: Any) -> dt.DType:
    d = default_float_dtype() if dtype is None else dt.dtype(dtype)  # av.set_default_dtype
    if not d.is_float:
        raise TypeError(f"layer parameters must be floating point, got {d}")
    return d


def empty(shape: Sequence[int], dtype: dt.DType, buffer: bool = False) -> Tensor:
    """A zero-filled parameter (or Buffer) that an initializer then fills. Made while tracing (a layer built in
    forward, slot-attention-pytorch's `nn.LayerNorm(x.shape[1:])(x)`), it is literal data of the program, as a tensor
    made from Python numbers is, until a random initializer fills it (`init._fill`)."""
    cls = Buffer if buffer else Tensor
    t = cls(np.zeros(tuple(shape), dtype.np), dtype=dtype)
    if TRACING and t.ndim:
        _mark_literal(t)
    return t


def _layer_dtype(layer: str, dtype: Any) -> dt.DType:
    """The parameter dtype, or an error that names the layer and the argument."""
    try:
        return _dtype(dtype)
    except (TypeError, ValueError, KeyError) as e:
        raise TypeError(f"{layer}: argument 'dtype' must be a floating-point dtype Avalon has, got {dtype!r} "
                        f"({e})") from None


def _place(module: Module, device: Any) -> None:
    if device is not None:
        module.to(device=device)


# -- linear and convolution ---------------------------------------------------------------------

class Identity(Module):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def forward(self, input: Any) -> Any:
        return input


class Linear(Module):
    """y = x W^T + b. Init as torch: W ~ kaiming_uniform(a=sqrt(5)) = U(±1/sqrt(in)), b ~ U(±1/sqrt(in))."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        d = _dtype(dtype)
        self.in_features, self.out_features = in_features, out_features
        self.weight = empty((out_features, in_features), d)
        self.bias = empty((out_features,), d) if bias else None
        self.reset_parameters()
        _place(self, device)

    def reset_parameters(self) -> None:
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.in_features
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input: Any) -> Tensor:
        return F.linear(input, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Conv2d(Module):
    """2-d cross-correlation over NCHW input; weight (out, in/groups, kh, kw), torch's init."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1, padding: Any = 0,
                 dilation: Any = 1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError("in_channels and out_channels must be divisible by groups")
        check_padding_mode("Conv2d", padding_mode, padding)
        d = _dtype(dtype)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = F._pair(kernel_size, "Conv2d", "kernel_size")
        self.stride = F._pair(stride, "Conv2d", "stride")
        self.dilation = F._pair(dilation, "Conv2d", "dilation")
        self.padding = padding if isinstance(padding, str) else F._pair(padding, "Conv2d", "padding")
        if self.padding == "same" and self.stride != (1, 1):
            raise ValueError("padding='same' is not supported for strided convolutions")
        self.padding_mode = padding_mode
        self.weight = empty((out_channels, in_channels // groups, *self.kernel_size), d)
        self.bias = empty((out_channels,), d) if bias else None
        self.reset_parameters()
        _place(self, device)

    def reset_parameters(self) -> None:
        init.conv_default_(self.weight, self.bias)

    def _conv_forward(self, input: Any, weight: Any, bias: Any) -> Tensor:
        """torch's: this layer's convolution with another weight and bias (QAT code passes the
        fake-quantized weight: `self._conv_forward(x, self.weight_fake_quant(self.weight), self.bias)`)."""
        if self.padding_mode != "zeros":  # as torch: pad in that mode, then an unpadded conv
            x = F.pad(input, conv_padding(self.padding, self.kernel_size, self.dilation), self.padding_mode)
            return F.conv2d(x, weight, bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, input: Any) -> Tensor:
        return self._conv_forward(input, self.weight, self.bias)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding!r}" if isinstance(self.padding, str) else f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s + (", bias=False" if self.bias is None else "")


def check_padding_mode(layer: str, padding_mode: str, padding: Any = 0) -> None:
    """torch's construction-time checks of a conv's padding_mode and of a padding string (which
    otherwise surfaced only at the first call)."""
    modes = ("zeros", "reflect", "replicate", "circular")
    if padding_mode not in modes:
        raise ValueError(f"{layer}: padding_mode must be one of {modes}, but got padding_mode='{padding_mode}'")
    if isinstance(padding, str) and padding not in ("valid", "same"):
        raise ValueError(f"{layer}: Invalid padding string {padding!r}, should be one of {{'valid', 'same'}}")


class _MaxPoolNd(Module):
    """Max pooling over the last 1, 2 or 3 dims (the subclass's `_fn`: F.max_pool1d/2d/3d)."""

    _fn: Any = None

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
                 return_indices: bool = False, ceil_mode: bool = False) -> None:
        super().__init__()
        self.kernel_size, self.padding = kernel_size, padding
        self.stride = stride if stride is not None else kernel_size
        self.dilation, self.return_indices, self.ceil_mode = dilation, return_indices, ceil_mode

    def forward(self, input: Any) -> Any:
        return type(self)._fn(input, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                              self.return_indices)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class MaxPool2d(_MaxPoolNd):
    _fn = staticmethod(F.max_pool2d)


class _AvgPoolNd(Module):
    """Average pooling over the last 2 or 3 dims (the subclass's `_fn`: F.avg_pool2d/3d)."""

    _fn: Any = None

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0, ceil_mode: bool = False,
                 count_include_pad: bool = True, divisor_override: int | None = None) -> None:
        super().__init__()
        self.kernel_size, self.padding = kernel_size, padding
        self.stride = stride if stride is not None else kernel_size
        self.ceil_mode, self.count_include_pad, self.divisor_override = ceil_mode, count_include_pad, divisor_override

    def forward(self, input: Any) -> Tensor:
        return type(self)._fn(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                              self.count_include_pad, self.divisor_override)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(_AvgPoolNd):
    _fn = staticmethod(F.avg_pool2d)


# -- normalization --------------------------------------------------------------------------------

class _NormBase(Module):
    """torch.nn.modules.batchnorm._NormBase: the common base of the batch and instance norms, so that
    `isinstance(m, _NormBase)` finds every one of them (SlowFast's and timm's no-weight-decay groups)."""


class _BatchNorm(_NormBase):
    """Shared by BatchNorm1d/2d. Training mode normalizes with the batch statistics and updates the
    running ones (unbiased variance, `momentum`, or a cumulative average when momentum is None);
    eval mode uses the running statistics. `num_batches_tracked` counts training calls, as torch."""

    _dims: tuple[int, ...] = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        d = _dtype(dtype)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.weight = empty((num_features,), d) if affine else None
        self.bias = empty((num_features,), d) if affine else None
        if track_running_stats:
            self.running_mean = empty((num_features,), d, buffer=True)
            self.running_var = empty((num_features,), d, buffer=True)
            self.num_batches_tracked = Buffer(np.array(0, np.int64), dtype=dt.int64)
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None
        self.reset_parameters()
        _place(self, device)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            init.zeros_(self.running_mean)
            init.ones_(self.running_var)
            init.zeros_(self.num_batches_tracked)

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            init.zeros_(self.bias)

    def forward(self, input: Any) -> Tensor:
        x = F._t(input)
        if x.ndim not in self._dims:
            want = " or ".join(f"{d}D" for d in self._dims)
            raise ops.fail(ValueError(f"{type(self).__name__}: expected {want} input (got {x.ndim}D input of shape "
                                      f"{x.shape})"))
        if x.shape[1] != self.num_features:
            raise ops.fail(ValueError(f"{type(self).__name__}({self.num_features}): input {x.shape} has {x.shape[1]} "
                                      "channels"))
        factor: Any = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            count = ops.add(self.num_batches_tracked, 1)
            assign(self.num_batches_tracked, count)
            if self.momentum is None:
                factor = ops.div(1.0, ops.cast(count, x.dtype))
        use_batch = self.training or self.running_mean is None
        track = not self.training or self.track_running_stats
        return F.batch_norm(x, self.running_mean if track else None, self.running_var if track else None,
                            self.weight, self.bias, use_batch, factor, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch norm over (N, C) or (N, C, L) input."""

    _dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch norm over (N, C, H, W) input."""

    _dims = (4,)


class LayerNorm(Module):
    def __init__(self, normalized_shape: int | Sequence[int], eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        d = _dtype(dtype)
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape, self.eps, self.elementwise_affine = shape, eps, elementwise_affine
        self.weight = init.ones_(empty(shape, d)) if elementwise_affine else None
        self.bias = empty(shape, d) if elementwise_affine and bias else None
        _place(self, device)

    def forward(self, input: Any) -> Tensor:
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class GroupNorm(Module):
    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        if num_groups <= 0 or num_channels % num_groups:
            raise ValueError(f"GroupNorm: num_channels ({num_channels}) must be divisible by num_groups ({num_groups})")
        d = _dtype(dtype)
        self.num_groups, self.num_channels, self.eps, self.affine = num_groups, num_channels, eps, affine
        self.weight = init.ones_(empty((num_channels,), d)) if affine else None
        self.bias = empty((num_channels,), d) if affine else None
        _place(self, device)

    def forward(self, input: Any) -> Tensor:
        x = F._t(input)
        if x.ndim >= 2 and x.shape[1] != self.num_channels:  # the layer's own words, before group_norm's
            raise ops.fail(ops.ArgumentError(f"GroupNorm({self.num_groups}, {self.num_channels}): expected input with "
                                             f"{self.num_channels} channels (dim 1), got input of shape {x.shape}"))
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"


# -- dropout, embedding, reshaping -------------------------------------------------------------------

class _DropoutNd(Module):
    """What the dropout layers share (torch's _DropoutNd): p, checked, and inplace."""

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p, self.inplace = p, inplace

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"


class Dropout(_DropoutNd):
    """Zeroes elements with probability p in training mode (scaling the rest by 1/(1-p)); identity in eval."""

    def forward(self, input: Any) -> Tensor:
        return F.dropout(input, self.p, self.training, self.inplace)


class Dropout1d(Dropout):
    """Zeroes whole channels of (N, C, L) or (C, L) input with probability p in training mode."""

    def forward(self, input: Any) -> Tensor:
        return F.dropout1d(input, self.p, self.training, self.inplace)


class Dropout2d(Dropout):
    """Zeroes whole channels of (N, C, H, W) input with probability p in training mode."""

    def forward(self, input: Any) -> Tensor:
        return F.dropout2d(input, self.p, self.training, self.inplace)


class Dropout3d(Dropout):
    """Zeroes whole channels of (N, C, D, H, W) or (C, D, H, W) input with probability p in training mode."""

    def forward(self, input: Any) -> Tensor:
        return F.dropout3d(input, self.p, self.training, self.inplace)


class Embedding(Module):
    """A lookup table of `num_embeddings` rows; init N(0, 1) with the `padding_idx` row zeroed, as torch."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 max_norm: float | None = None, norm_type: float = 2.0, scale_grad_by_freq: bool = False,
                 sparse: bool = False, _weight: Any = None, _freeze: bool = False, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError("padding_idx must be within num_embeddings")
            padding_idx %= num_embeddings
        d = _dtype(dtype)
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.max_norm, self.norm_type = max_norm, norm_type
        self.scale_grad_by_freq, self.sparse = scale_grad_by_freq, sparse
        if _weight is None:
            self.weight = empty((num_embeddings, embedding_dim), d)
            self.reset_parameters()
        else:
            self.weight = Tensor(np.array(as_array(_weight), copy=True), dtype=d)
            if self.weight.shape != (num_embeddings, embedding_dim):
                raise ValueError("Shape of weight does not match num_embeddings and embedding_dim")
        _place(self, device)

    def reset_parameters(self) -> None:
        init.normal_(self.weight)
        if self.padding_idx is not None:
            arr = self.weight.numpy().copy()
            arr[self.padding_idx] = 0
            assign(self.weight, Tensor(arr, dtype=self.weight.dtype))

    @classmethod
    def from_pretrained(cls, embeddings: Any, freeze: bool = True, padding_idx: int | None = None,
                        **kwargs: Any) -> Embedding:
        """A table holding a copy of `embeddings`; `freeze=True` (the default, as torch) sets the weight's
        `requires_grad` to False, so `av.grad` and the optimizers leave it alone (it was ignored, and a
        fine-tuning loop trained the pretrained table)."""
        w = as_array(embeddings)
        if w.ndim != 2:  # (a 1-d table failed on w.shape[1] with a bare IndexError)
            raise ValueError(f"Embedding.from_pretrained: Embeddings parameter is expected to be 2-dimensional "
                             f"(num_embeddings, embedding_dim), got shape {w.shape}")
        layer = cls(w.shape[0], w.shape[1], padding_idx, _weight=w, **kwargs)
        layer.weight.requires_grad_(not freeze)
        return layer

    def forward(self, input: Any) -> Tensor:
        who = f"Embedding({self.num_embeddings}, {self.embedding_dim})"  # errors name the layer
        rows = F._embedding(input, self.weight, self.padding_idx, who, self.max_norm, self.norm_type)
        return F._scale_grad_by_freq(rows, F._t(input)) if self.scale_grad_by_freq else rows

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        s += f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        s += f", max_norm={self.max_norm}" if self.max_norm is not None else ""
        return s + (f", norm_type={self.norm_type}" if self.norm_type != 2 else "")


class Flatten(Module):
    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, input: Any) -> Tensor:
        return ops.flatten(F._t(input), self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Unflatten(Module):
    def __init__(self, dim: int, unflattened_size: Sequence[int]) -> None:
        super().__init__()
        self.dim, self.unflattened_size = dim, tuple(unflattened_size)

    def forward(self, input: Any) -> Tensor:
        x = F._t(input)
        d = ops.check_dim("unflatten", self.dim, x.ndim)
        sizes = self.unflattened_size
        if -1 not in sizes and math.prod(sizes) != x.shape[d]:
            raise ops.fail(ops.ArgumentError(
                f"unflatten: Provided sizes {list(sizes)} don't multiply up to the size of dim {self.dim} "
                f"({x.shape[d]}) in the input tensor of shape {x.shape}"))
        return ops.reshape(x, x.shape[:d] + sizes + x.shape[d + 1:])


# -- containers --------------------------------------------------------------------------------------

class _Indexed(_Items):
    """Sequential and ModuleList: items keyed "0", "1", ... (or a given OrderedDict's keys), so
    parameter names are torch's (`0.weight`). Only registered items are layers (constructor
    arguments, append/insert/extend, add_module, indexing, Modules assigned as attributes, as torch
    registers them); a subclass's plain attributes (`self.out_channels = 16`) are not."""

    _auto = Module

    def __iter__(self) -> Iterator[Any]:
        return iter([v for _, v in self._items()])

    def _key(self, idx: int) -> str:
        keys = self._keys()
        if isinstance(idx, Tensor) and not isinstance(idx, bool):
            idx = idx.__index__()  # torch's operator.index: a one-element integer tensor (Mixtral's expert_hit)
        if not isinstance(idx, (int, np.integer)) or isinstance(idx, bool):
            raise TypeError(f"{type(self).__name__} indices must be integers or slices, not {type(idx).__name__}")
        if not -len(keys) <= idx < len(keys):
            raise IndexError(f"index {idx} is out of range")
        return keys[idx]

    def _get(self, idx: int | slice) -> Any:
        if isinstance(idx, slice):
            return [v for _, v in self._items()[idx]]
        return self.__dict__[self._key(idx)]

    def __setitem__(self, idx: int, module: Any) -> None:
        self._set(self._key(idx), module)

    def __delitem__(self, idx: int | slice) -> None:
        """Remove items and renumber the rest 0, 1, ..., as torch does."""
        items = self._items()
        gone = {k for k, _ in (items[idx] if isinstance(idx, slice) else [(self._key(idx), None)])}
        self._reset([v for k, v in items if k not in gone])

    def append(self, module: Any) -> _Indexed:
        self._set(str(len(self)), module)
        return self

    def extend(self, modules: Iterable[Any]) -> _Indexed:
        for m in list(modules):
            self.append(m)
        return self

    def insert(self, index: int, module: Any) -> _Indexed:
        """Put `module` before position `index`, shifting the items after it up one key, as torch."""
        n = len(self)
        if not -n <= index <= n:
            raise IndexError(f"Index out of range: {index}")
        if index < 0:
            index += n
        values = [v for _, v in self._items()]
        values.insert(index, module)
        if all(k == str(i) for i, k in enumerate(self._keys())):
            for i in range(index, n + 1):
                self._set(str(i), values[i])
        else:
            self._reset(values)
        return self

    def pop(self, idx: int = -1) -> Any:
        v = self._get(idx)
        del self[idx]
        return v

    def __iadd__(self, other: Iterable[Any]) -> _Indexed:
        return self.extend(other)


class Sequential(_Indexed):
    """Applies its modules (or any callables) in order. `Sequential(OrderedDict(...))` names them."""

    def __init__(self, *args: Any) -> None:
        super().__init__()
        if len(args) == 1 and isinstance(args[0], (OrderedDict, dict)):
            for k, m in args[0].items():
                self._set(k, m)
        else:
            for i, m in enumerate(args):
                self._set(str(i), m)

    def _set(self, key: Any, value: Any) -> None:
        """A layer must be callable: a string such as "relu" is refused here, as torch refuses a
        non-Module, instead of failing only when the Sequential is first called."""
        if not callable(value):
            raise ops.fail(TypeError(f"Sequential: item {key!r} is a {type(value).__name__} ({value!r}), which is not "
                                     f"a Module subclass or callable; pass a layer such as nn.ReLU()"))
        super()._set(key, value)

    def __getitem__(self, idx: int | slice) -> Any:
        if isinstance(idx, slice):  # torch keeps the keys of a slice
            return Sequential(OrderedDict(self._items()[idx]))
        return self._get(idx)

    def __add__(self, other: Sequential) -> Sequential:
        return Sequential(*self, *other)

    def __mul__(self, n: int) -> Sequential:
        return Sequential(*(list(self) * n))

    def forward(self, input: Any) -> Any:
        for m in self:
            input = m(input)
        return input


class ModuleList(_Indexed):
    def __init__(self, modules: Iterable[Any] | None = None) -> None:
        super().__init__()
        for m in modules or ():
            self.append(m)

    def _set(self, key: Any, value: Any) -> None:
        from .containers import _module_item
        super()._set(key, _module_item("ModuleList", key, value))

    def __getitem__(self, idx: int | slice) -> Any:
        got = self._get(idx)
        return ModuleList(got) if isinstance(idx, slice) else got

    def __add__(self, other: Iterable[Any]) -> ModuleList:
        return ModuleList([*self, *other])


# -- activations -------------------------------------------------------------------------------------

class _Activation(Module):
    _fn: Any = None
    _args: tuple[str, ...] = ()
    _repr_inplace = True  # torch's Hardswish, Hardsigmoid and Mish do not print their inplace flag

    def forward(self, input: Any) -> Tensor:
        args = (getattr(self, a) for a in self._args)
        if getattr(self, "inplace", False):  # torch's inplace=True: the input is written and returned
            return type(self)._fn(input, *args, inplace=True)
        return type(self)._fn(input, *args)

    def extra_repr(self) -> str:
        return ", ".join([f"{a}={getattr(self, a)}" for a in self._args]
                         + (["inplace=True"] if self._repr_inplace and getattr(self, "inplace", False) else []))


def _activation(name: str, fn: Any, args: tuple[tuple[str, Any], ...] = (), doc: str = "") -> type:
    names = tuple(a for a, _ in args)
    takes_inplace = "inplace" in inspect.signature(fn).parameters

    def __init__(self, *pos: Any, inplace: bool = False, **kw: Any) -> None:
        Module.__init__(self)
        vals = dict(args)
        for a, v in zip(names, pos):
            vals[a] = v
        for a, v in kw.items():
            if a not in vals:
                raise TypeError(f"{name}() got an unexpected keyword argument {a!r}")
            vals[a] = v
        for a in names:
            setattr(self, a, vals[a])
        if takes_inplace:
            self.inplace = bool(inplace)
        elif inplace:
            raise TypeError(f"{name}() got an unexpected keyword argument 'inplace'")

    return type(name, (_Activation,), {"__init__": __init__, "_fn": staticmethod(fn), "_args": names,
                                       "__doc__": doc or f"Module form of `functional.{fn.__name__}`.",
                                       "__module__": __name__})


ReLU = _activation("ReLU", F.relu)
ReLU6 = _activation("ReLU6", F.relu6)
Sigmoid = _activation("Sigmoid", F.sigmoid)
Tanh = _activation("Tanh", F.tanh)
SiLU = _activation("SiLU", F.silu)
Mish = _activation("Mish", F.mish)
SELU = _activation("SELU", F.selu)
Hardswish = _activation("Hardswish", F.hardswish)
Hardsigmoid = _activation("Hardsigmoid", F.hardsigmoid)
LogSigmoid = _activation("LogSigmoid", F.logsigmoid)
Softsign = _activation("Softsign", F.softsign)
LeakyReLU = _activation("LeakyReLU", F.leaky_relu, (("negative_slope", 0.01),))
ELU = _activation("ELU", F.elu, (("alpha", 1.0),))
GELU = _activation("GELU", F.gelu, (("approximate", "none"),))
Hardtanh = _activation("Hardtanh", F.hardtanh, (("min_val", -1.0), ("max_val", 1.0)))
Softplus = _activation("Softplus", F.softplus, (("beta", 1.0), ("threshold", 20.0)))
Softmax = _activation("Softmax", F.softmax, (("dim", None),))
Softmin = _activation("Softmin", F.softmin, (("dim", None),))
LogSoftmax = _activation("LogSoftmax", F.log_softmax, (("dim", None),))
CELU = _activation("CELU", F.celu, (("alpha", 1.0),))
Tanhshrink = _activation("Tanhshrink", F.tanhshrink)
Hardshrink = _activation("Hardshrink", F.hardshrink, (("lambd", 0.5),))
Softshrink = _activation("Softshrink", F.softshrink, (("lambd", 0.5),))
GLU = _activation("GLU", F.glu, (("dim", -1),))
Hardswish._repr_inplace = Hardsigmoid._repr_inplace = Mish._repr_inplace = False


class Threshold(Module):
    """x where x > threshold, else value (both required, as in torch)."""

    def __init__(self, threshold: float, value: float, inplace: bool = False) -> None:
        super().__init__()
        self.threshold, self.value, self.inplace = threshold, value, inplace

    def forward(self, input: Any) -> Tensor:
        return F.threshold(input, self.threshold, self.value, self.inplace)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, value={self.value}" + (", inplace=True" if self.inplace else "")


class Softmax2d(Module):
    """Softmax over the channels of (N, C, H, W) or (C, H, W) input (dim -3)."""

    def forward(self, input: Any) -> Tensor:
        x = F._t(input)
        if x.ndim not in (3, 4):
            raise ValueError(f"Softmax2d: expected a 3-d or 4-d input, got shape {x.shape}")
        return F.softmax(x, -3)


class PReLU(Module):
    """max(0, x) + weight * min(0, x) with a learned slope: one shared (num_parameters=1) or one
    per channel, all starting at `init`, as torch."""

    def __init__(self, num_parameters: int = 1, init: float = 0.25, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        self.num_parameters, self.init = num_parameters, init
        self.weight = empty((num_parameters,), _layer_dtype("PReLU", dtype))
        self.reset_parameters()
        _place(self, device)

    def reset_parameters(self) -> None:
        init.constant_(self.weight, self.init)

    def forward(self, input: Any) -> Tensor:
        return F.prelu(input, self.weight)

    def extra_repr(self) -> str:
        return f"num_parameters={self.num_parameters}"


# -- losses ------------------------------------------------------------------------------------------

def _buffer(x: Any) -> Buffer | None:
    """Loss weights are buffers, as in torch (in the state dict, never trained). A loss built inside a
    traced function (`BCEWithLogitsLoss(pos_weight=w)` in the step) holds the weight's traced value:
    copying its data would bake one call's values in, or fail for a traced argument."""
    if x is None:
        return None
    t = x if isinstance(x, Tensor) else Tensor(x)
    tr = current_trace()
    if tr is not None and (t.is_traced or id(t) in tr.leaves):
        return Buffer._traced(tr.value_of(t), tr)
    return Buffer(t.numpy().copy(), dtype=t.dtype)


class _Loss(Module):
    def __init__(self, size_average: bool | None = None, reduce: bool | None = None, reduction: str = "mean") -> None:
        super().__init__()
        # the string as given: the loss function reads it at each call (torch keeps 'elementwise_mean' too)
        self.reduction = _legacy_reduction(size_average, reduce, reduction, elementwise_mean=False)


class L1Loss(_Loss):
    def forward(self, input: Any, target: Any) -> Tensor:
        return F.l1_loss(input, target, reduction=self.reduction)


class MSELoss(_Loss):
    def forward(self, input: Any, target: Any) -> Tensor:
        return F.mse_loss(input, target, reduction=self.reduction)


class NLLLoss(_Loss):
    def __init__(self, weight: Any = None, size_average: bool | None = None, ignore_index: int = -100,
                 reduce: bool | None = None, reduction: str = "mean") -> None:
        super().__init__(size_average, reduce, reduction)
        self.weight, self.ignore_index = _buffer(weight), ignore_index

    def forward(self, input: Any, target: Any) -> Tensor:
        return F.nll_loss(input, target, self.weight, ignore_index=self.ignore_index, reduction=self.reduction)


class CrossEntropyLoss(_Loss):
    def __init__(self, weight: Any = None, size_average: bool | None = None, ignore_index: int = -100,
                 reduce: bool | None = None, reduction: str = "mean", label_smoothing: float = 0.0) -> None:
        super().__init__(size_average, reduce, reduction)
        self.weight, self.ignore_index, self.label_smoothing = _buffer(weight), ignore_index, label_smoothing

    def forward(self, input: Any, target: Any) -> Tensor:
        return F.cross_entropy(input, target, self.weight, ignore_index=self.ignore_index, reduction=self.reduction,
                               label_smoothing=self.label_smoothing)


class BCELoss(_Loss):
    def __init__(self, weight: Any = None, size_average: bool | None = None, reduce: bool | None = None,
                 reduction: str = "mean") -> None:
        super().__init__(size_average, reduce, reduction)
        self.weight = _buffer(weight)

    def forward(self, input: Any, target: Any) -> Tensor:
        return F.binary_cross_entropy(input, target, self.weight, reduction=self.reduction)


class BCEWithLogitsLoss(_Loss):
    def __init__(self, weight: Any = None, size_average: bool | None = None, reduce: bool | None = None,
                 reduction: str = "mean", pos_weight: Any = None) -> None:
        super().__init__(size_average, reduce, reduction)
        self.weight, self.pos_weight = _buffer(weight), _buffer(pos_weight)

    def forward(self, input: Any, target: Any) -> Tensor:
        return F.binary_cross_entropy_with_logits(input, target, self.weight, reduction=self.reduction,
                                                  pos_weight=self.pos_weight)


class KLDivLoss(_Loss):
    def __init__(self, size_average: bool | None = None, reduce: bool | None = None, reduction: str = "mean",
                 log_target: bool = False) -> None:
        super().__init__(size_average, reduce, reduction)
        self.log_target = log_target

    def forward(self, input: Any, target: Any) -> Tensor:
        return F.kl_div(input, target, reduction=self.reduction, log_target=self.log_target)


class SmoothL1Loss(_Loss):
    def __init__(self, size_average: bool | None = None, reduce: bool | None = None, reduction: str = "mean",
                 beta: float = 1.0) -> None:
        super().__init__(size_average, reduce, reduction)
        self.beta = beta

    def forward(self, input: Any, target: Any) -> Tensor:
        return F.smooth_l1_loss(input, target, reduction=self.reduction, beta=self.beta)


class HuberLoss(_Loss):
    def __init__(self, reduction: str = "mean", delta: float = 1.0) -> None:
        super().__init__(reduction=reduction)
        self.delta = delta

    def forward(self, input: Any, target: Any) -> Tensor:
        return F.huber_loss(input, target, reduction=self.reduction, delta=self.delta)

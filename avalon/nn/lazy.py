"""torch's lazy layers (LazyLinear, LazyConv1d/2d/3d, LazyConvTranspose1d/2d/3d, LazyBatchNorm1d/2d/3d,
LazyInstanceNorm1d/2d/3d): the input size (in_features, in_channels, num_features) is read from the
first input, and the parameters are made then.

As in torch, the first call builds the regular layer's parameters with its initialization and turns
the module into that layer (`type(m)` becomes `Linear`, `Conv2d`, ...). Parameters are values in
Avalon, and `av.grad`/`av.compile` take them as the graph's inputs, so they must exist before a trace
starts: materialize with one eager call (torch's "dry run"); a first call inside a trace is refused."""
from __future__ import annotations

from typing import Any

from ..tensor import Tensor
from ..trace import current_trace
from .conv_transpose import ConvTranspose2d
from .layers import BatchNorm1d, BatchNorm2d, Conv2d, Linear
from .layers_3d import BatchNorm3d, ConvTranspose3d
from .layers_extra import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d
from .layers_more import ConvTranspose1d
from .module import Module
from .spatial import Conv1d, Conv3d

__all__ = ["LazyBatchNorm1d", "LazyBatchNorm2d", "LazyBatchNorm3d", "LazyConv1d", "LazyConv2d", "LazyConv3d",
           "LazyConvTranspose1d", "LazyConvTranspose2d", "LazyConvTranspose3d", "LazyInstanceNorm1d",
           "LazyInstanceNorm2d", "LazyInstanceNorm3d", "LazyLinear"]


class _LazyMixin(Module):
    """Holds the constructor's arguments until the first input fixes the missing size."""

    cls_to_become: type = Module
    _size_arg = ""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self._lazy_kwargs = kwargs
        self.weight = self.bias = None

    def _input_size(self, x: Tensor) -> int:
        raise NotImplementedError

    def has_uninitialized_params(self) -> bool:
        return "_lazy_kwargs" in self.__dict__

    def initialize_parameters(self, input: Any, *args: Any, **kwargs: Any) -> None:
        """Make the parameters for `input`'s size and become `cls_to_become` (torch's hook)."""
        if not self.has_uninitialized_params():
            return
        x = input if isinstance(input, Tensor) else Tensor(input)
        name = type(self).__name__
        if current_trace() is not None:
            raise RuntimeError(f"{name}: its parameters are created at the first call, which here is inside "
                               f"av.trace/grad/compile; call the model once eagerly on an example input "
                               f"first (torch's dry run), so the parameters exist before tracing")
        size = self._input_size(x)
        kw = self.__dict__.pop("_lazy_kwargs")
        training = self.training
        self.__dict__.pop("weight", None)
        self.__dict__.pop("bias", None)
        cls = self.cls_to_become
        self.__class__ = cls
        cls.__init__(self, size, **kw)
        self.training = training

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not args:
            raise RuntimeError(f"{type(self).__name__}: needs an input to infer its size")
        self.initialize_parameters(*args)  # after which `self` is the regular layer
        return Module.__call__(self, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self._size_arg}=<uninitialized>, " + ", ".join(f"{k}={v!r}" for k, v in self._lazy_kwargs.items())


class LazyLinear(_LazyMixin):
    """Linear whose in_features is the first input's last dim."""

    cls_to_become = Linear
    _size_arg = "in_features"

    def __init__(self, out_features: int, bias: bool = True, device: Any = None, dtype: Any = None) -> None:
        super().__init__(out_features=out_features, bias=bias, device=device, dtype=dtype)
        self.in_features, self.out_features = 0, out_features

    def _input_size(self, x: Tensor) -> int:
        if x.ndim < 1:
            raise ValueError("LazyLinear: expected an input with at least 1 dimension, got a 0-d tensor")
        return x.shape[-1]


class _LazyConv(_LazyMixin):
    _spatial = 2
    _size_arg = "in_channels"

    def __init__(self, out_channels: int, kernel_size: Any, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__(out_channels=out_channels, kernel_size=kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias, padding_mode=padding_mode, device=device,
                         dtype=dtype)
        self.in_channels, self.out_channels = 0, out_channels

    def _input_size(self, x: Tensor) -> int:
        """torch's `_get_in_channels`: dim 0 of an unbatched input, else dim 1."""
        if x.ndim not in (self._spatial + 1, self._spatial + 2):
            raise ValueError(f"{type(self).__name__}: expected a {self._spatial + 1}-d (unbatched) or "
                             f"{self._spatial + 2}-d input, got shape {x.shape}")
        return x.shape[0] if x.ndim == self._spatial + 1 else x.shape[1]


class LazyConv1d(_LazyConv):
    """Conv1d whose in_channels is the first input's channel count."""

    cls_to_become = Conv1d
    _spatial = 1


class LazyConv2d(_LazyConv):
    """Conv2d whose in_channels is the first input's channel count."""

    cls_to_become = Conv2d
    _spatial = 2


class _LazyBatchNorm(_LazyMixin):
    _size_arg = "num_features"

    def __init__(self, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device: Any = None, dtype: Any = None) -> None:
        super().__init__(eps=eps, momentum=momentum, affine=affine, track_running_stats=track_running_stats,
                         device=device, dtype=dtype)
        self.num_features = 0

    def _input_size(self, x: Tensor) -> int:
        if x.ndim < 2:
            raise ValueError(f"{type(self).__name__}: expected an (N, C, ...) input, got shape {x.shape}")
        return x.shape[1]


class LazyBatchNorm1d(_LazyBatchNorm):
    """BatchNorm1d whose num_features is the first input's dim 1."""

    cls_to_become = BatchNorm1d


class LazyBatchNorm2d(_LazyBatchNorm):
    """BatchNorm2d whose num_features is the first input's dim 1."""

    cls_to_become = BatchNorm2d


class LazyBatchNorm3d(_LazyBatchNorm):
    """BatchNorm3d whose num_features is the first input's dim 1."""

    cls_to_become = BatchNorm3d


class LazyConv3d(_LazyConv):
    """Conv3d whose in_channels is the first input's channel count."""

    cls_to_become = Conv3d
    _spatial = 3


class _LazyConvTranspose(_LazyConv):
    """A transposed convolution whose in_channels is the first input's channel count (torch's
    argument order: output_padding after padding, dilation after bias)."""

    def __init__(self, out_channels: int, kernel_size: Any, stride: Any = 1, padding: Any = 0,
                 output_padding: Any = 0, groups: int = 1, bias: bool = True, dilation: Any = 1,
                 padding_mode: str = "zeros", device: Any = None, dtype: Any = None) -> None:
        _LazyMixin.__init__(self, out_channels=out_channels, kernel_size=kernel_size, stride=stride, padding=padding,
                            output_padding=output_padding, groups=groups, bias=bias, dilation=dilation,
                            padding_mode=padding_mode, device=device, dtype=dtype)
        self.in_channels, self.out_channels = 0, out_channels


class LazyConvTranspose1d(_LazyConvTranspose):
    """ConvTranspose1d whose in_channels is the first input's channel count."""

    cls_to_become = ConvTranspose1d
    _spatial = 1


class LazyConvTranspose2d(_LazyConvTranspose):
    """ConvTranspose2d whose in_channels is the first input's channel count."""

    cls_to_become = ConvTranspose2d
    _spatial = 2


class LazyConvTranspose3d(_LazyConvTranspose):
    """ConvTranspose3d whose in_channels is the first input's channel count."""

    cls_to_become = ConvTranspose3d
    _spatial = 3


class _LazyInstanceNorm(_LazyBatchNorm):
    """An instance norm whose num_features is the first input's dim 1, as torch's (which reads dim 1
    of an unbatched input too; the layer then rejects it). Note torch's defaults here: affine=True and
    track_running_stats=True, unlike the InstanceNorm layers'."""

    def __init__(self, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device: Any = None, dtype: Any = None, *,
                 bias: bool = True) -> None:
        _LazyMixin.__init__(self, eps=eps, momentum=momentum, affine=affine, track_running_stats=track_running_stats,
                            device=device, dtype=dtype, bias=bias)
        self.num_features = 0


class LazyInstanceNorm1d(_LazyInstanceNorm):
    """InstanceNorm1d whose num_features is the first input's dim 1."""

    cls_to_become = InstanceNorm1d


class LazyInstanceNorm2d(_LazyInstanceNorm):
    """InstanceNorm2d whose num_features is the first input's dim 1."""

    cls_to_become = InstanceNorm2d


class LazyInstanceNorm3d(_LazyInstanceNorm):
    """InstanceNorm3d whose num_features is the first input's dim 1."""

    cls_to_become = InstanceNorm3d

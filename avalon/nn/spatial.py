"""Spatial layers with torch's signatures, parameters and init: Conv1d and Conv3d, 1-d and adaptive
pooling, padding layers, pixel (un)shuffle and upsampling."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..tensor import Tensor
from . import functional as F
from . import init
from .functional_spatial import _triple, conv_padding
from .layers import _dtype, _MaxPoolNd, _place, check_padding_mode, empty
from .module import Module


def _single(v: Any, where: str = "Conv1d", name: str = "kernel_size") -> int:
    """torch's `_single`, strict: one int (a 2-tuple or a float, which `int(v[0])` truncated in
    silence, is an error, as in torch)."""
    from .functional_spatial import _single as single
    return single(v, where, name)


class Conv1d(Module):
    """1-d cross-correlation over (N, C, L) input; weight (out, in/groups, k), torch's init."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1, padding: Any = 0,
                 dilation: Any = 1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError("Conv1d: in_channels and out_channels must be divisible by groups")
        check_padding_mode("Conv1d", padding_mode, padding)
        d = _dtype(dtype)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = (_single(kernel_size, "Conv1d", "kernel_size"),)
        self.stride, self.dilation = (_single(stride, "Conv1d", "stride"),), (_single(dilation, "Conv1d", "dilation"),)
        self.padding = padding if isinstance(padding, str) else (_single(padding, "Conv1d", "padding"),)
        if self.padding == "same" and self.stride != (1,):
            raise ValueError("Conv1d: padding='same' is not supported for strided convolutions")
        self.padding_mode = padding_mode
        self.weight = empty((out_channels, in_channels // groups, self.kernel_size[0]), d)
        self.bias = empty((out_channels,), d) if bias else None
        self.reset_parameters()
        _place(self, device)

    def reset_parameters(self) -> None:
        init.conv_default_(self.weight, self.bias)

    def _conv_forward(self, input: Any, weight: Any, bias: Any) -> Tensor:  # torch's (Conv2d's says why)
        if self.padding_mode != "zeros":  # as torch: pad in that mode, then an unpadded conv
            x = F.pad(input, conv_padding(self.padding, self.kernel_size, self.dilation), self.padding_mode)
            return F.conv1d(x, weight, bias, self.stride, 0, self.dilation, self.groups)
        return F.conv1d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, input: Any) -> Tensor:
        return self._conv_forward(input, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"


class AdaptiveAvgPool2d(Module):
    def __init__(self, output_size: Any) -> None:
        super().__init__()
        self.output_size = output_size

    def forward(self, input: Any) -> Tensor:
        return F.adaptive_avg_pool2d(input, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class AdaptiveMaxPool2d(Module):
    def __init__(self, output_size: Any, return_indices: bool = False) -> None:
        super().__init__()
        self.output_size, self.return_indices = output_size, return_indices

    def forward(self, input: Any) -> Tensor:
        return F.adaptive_max_pool2d(input, self.output_size, self.return_indices)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class Upsample(Module):
    """F.interpolate as a layer: 'nearest', 'linear', 'bilinear', 'trilinear' (and the others F.interpolate takes)."""

    def __init__(self, size: Any = None, scale_factor: Any = None, mode: str = "nearest",
                 align_corners: bool | None = None, recompute_scale_factor: bool | None = None) -> None:
        super().__init__()
        self.size, self.scale_factor, self.mode = size, scale_factor, mode
        self.align_corners, self.recompute_scale_factor = align_corners, recompute_scale_factor

    def forward(self, input: Any) -> Tensor:
        return F.interpolate(input, self.size, self.scale_factor, self.mode, self.align_corners,
                             self.recompute_scale_factor)

    def extra_repr(self) -> str:
        return f"size={self.size}, scale_factor={self.scale_factor}, mode={self.mode!r}"


class Conv3d(Module):
    """3-d cross-correlation over (N, C, D, H, W) input; weight (out, in/groups, kd, kh, kw), torch's init.
    It runs as conv2d over depth slices (`F.conv3d`), fine for small depth kernels."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1, padding: Any = 0,
                 dilation: Any = 1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError("Conv3d: in_channels and out_channels must be divisible by groups")
        check_padding_mode("Conv3d", padding_mode, padding)
        d = _dtype(dtype)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _triple(kernel_size, "kernel_size")
        self.stride, self.dilation = _triple(stride, "stride"), _triple(dilation, "dilation")
        self.padding = padding if isinstance(padding, str) else _triple(padding, "padding")
        if self.padding == "same" and self.stride != (1, 1, 1):
            raise ValueError("Conv3d: padding='same' is not supported for strided convolutions")
        self.padding_mode = padding_mode
        self.weight = empty((out_channels, in_channels // groups, *self.kernel_size), d)
        self.bias = empty((out_channels,), d) if bias else None
        self.reset_parameters()
        _place(self, device)

    def reset_parameters(self) -> None:
        init.conv_default_(self.weight, self.bias)

    def _conv_forward(self, input: Any, weight: Any, bias: Any) -> Tensor:  # torch's (Conv2d's says why)
        if self.padding_mode != "zeros":
            x = F.pad(input, conv_padding(self.padding, self.kernel_size, self.dilation), self.padding_mode)
            return F.conv3d(x, weight, bias, self.stride, 0, self.dilation, self.groups)
        return F.conv3d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, input: Any) -> Tensor:
        return self._conv_forward(input, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"


class MaxPool1d(_MaxPoolNd):
    _fn = staticmethod(F.max_pool1d)


class AvgPool1d(Module):
    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0, ceil_mode: bool = False,
                 count_include_pad: bool = True) -> None:
        super().__init__()
        self.kernel_size = (_single(kernel_size, "AvgPool1d", "kernel_size"),)
        self.padding = (_single(padding, "AvgPool1d", "padding"),)
        self.stride = (_single(stride, "AvgPool1d", "stride"),) if stride is not None else self.kernel_size
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad

    def forward(self, input: Any) -> Tensor:
        return F.avg_pool1d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool1d(Module):
    def __init__(self, output_size: Any) -> None:
        super().__init__()
        self.output_size = output_size

    def forward(self, input: Any) -> Tensor:
        return F.adaptive_avg_pool1d(input, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class AdaptiveMaxPool1d(Module):
    def __init__(self, output_size: Any, return_indices: bool = False) -> None:
        super().__init__()
        self.output_size, self.return_indices = output_size, return_indices

    def forward(self, input: Any) -> Tensor:
        return F.adaptive_max_pool1d(input, self.output_size, self.return_indices)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class PixelShuffle(Module):
    """(*, C r^2, H, W) -> (*, C, H r, W r), as in sub-pixel convolution upsamplers."""

    def __init__(self, upscale_factor: int) -> None:
        super().__init__()
        self.upscale_factor = upscale_factor

    def forward(self, input: Any) -> Tensor:
        return F.pixel_shuffle(input, self.upscale_factor)

    def extra_repr(self) -> str:
        return f"upscale_factor={self.upscale_factor}"


class PixelUnshuffle(Module):
    """(*, C, H r, W r) -> (*, C r^2, H, W), the inverse of PixelShuffle."""

    def __init__(self, downscale_factor: int) -> None:
        super().__init__()
        self.downscale_factor = downscale_factor

    def forward(self, input: Any) -> Tensor:
        return F.pixel_unshuffle(input, self.downscale_factor)

    def extra_repr(self) -> str:
        return f"downscale_factor={self.downscale_factor}"


class _PadNd(Module):
    """Shared by the padding layers: `padding` is an int (every side) or torch's tuple of
    (left, right[, top, bottom[, front, back]]); forward is `F.pad` in the layer's mode."""

    _dims = 1
    _mode = "constant"

    def __init__(self, padding: int | Sequence[int], value: float = 0.0) -> None:
        super().__init__()
        n = 2 * self._dims
        self.padding = (int(padding),) * n if isinstance(padding, int) else tuple(int(p) for p in padding)
        if len(self.padding) != n:
            raise ValueError(f"{type(self).__name__}: padding needs an int or {n} ints, got {padding!r}")
        if self._mode == "constant":
            self.value = value

    def forward(self, input: Any) -> Tensor:
        x = F._t(input)
        if x.ndim not in (self._dims + 1, self._dims + 2):
            raise ValueError(f"{type(self).__name__}: expected a {self._dims + 1}-d or {self._dims + 2}-d input, "
                             f"got shape {x.shape}")
        if self._mode == "constant":
            return F.pad(x, self.padding, "constant", self.value)
        return F.pad(x, self.padding, self._mode)

    def extra_repr(self) -> str:
        return f"{self.padding}" + (f", value={self.value}" if self._mode == "constant" else "")


def _pad_layer(name: str, dims: int, mode: str, zero: bool = False) -> type:
    def __init__(self: _PadNd, padding: int | Sequence[int], *rest: Any) -> None:
        if zero and rest:
            raise TypeError(f"{name}() takes 1 positional argument (padding)")
        if mode == "constant" and not zero and len(rest) != 1:
            raise TypeError(f"{name}() needs the arguments (padding, value)")
        _PadNd.__init__(self, padding, *rest)

    doc = f"Pads the last {dims} dim(s) " + ("with zeros" if zero else f"in F.pad's {mode!r} mode") + "."
    return type(name, (_PadNd,), {"__init__": __init__, "_dims": dims, "_mode": mode, "__doc__": doc,
                                  "__module__": __name__})


ZeroPad1d = _pad_layer("ZeroPad1d", 1, "constant", zero=True)
ZeroPad2d = _pad_layer("ZeroPad2d", 2, "constant", zero=True)
ZeroPad3d = _pad_layer("ZeroPad3d", 3, "constant", zero=True)
ConstantPad1d = _pad_layer("ConstantPad1d", 1, "constant")
ConstantPad2d = _pad_layer("ConstantPad2d", 2, "constant")
ConstantPad3d = _pad_layer("ConstantPad3d", 3, "constant")
ReflectionPad1d = _pad_layer("ReflectionPad1d", 1, "reflect")
ReflectionPad2d = _pad_layer("ReflectionPad2d", 2, "reflect")
ReflectionPad3d = _pad_layer("ReflectionPad3d", 3, "reflect")
ReplicationPad1d = _pad_layer("ReplicationPad1d", 1, "replicate")
ReplicationPad2d = _pad_layer("ReplicationPad2d", 2, "replicate")
ReplicationPad3d = _pad_layer("ReplicationPad3d", 3, "replicate")
CircularPad1d = _pad_layer("CircularPad1d", 1, "circular")
CircularPad2d = _pad_layer("CircularPad2d", 2, "circular")
CircularPad3d = _pad_layer("CircularPad3d", 3, "circular")


class UpsamplingNearest2d(Upsample):
    def __init__(self, size: Any = None, scale_factor: Any = None) -> None:
        super().__init__(size, scale_factor, mode="nearest")


class UpsamplingBilinear2d(Upsample):
    """Bilinear upsampling with align_corners=True, as torch's (deprecated) layer."""

    def __init__(self, size: Any = None, scale_factor: Any = None) -> None:
        super().__init__(size, scale_factor, mode="bilinear", align_corners=True)


__all__ = [
    "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "AvgPool1d", "CircularPad1d",
    "CircularPad2d", "CircularPad3d", "ConstantPad1d", "ConstantPad2d", "ConstantPad3d", "Conv1d", "Conv3d",
    "MaxPool1d", "PixelShuffle", "PixelUnshuffle", "ReflectionPad1d", "ReflectionPad2d", "ReflectionPad3d",
    "ReplicationPad1d", "ReplicationPad2d", "ReplicationPad3d", "Upsample", "UpsamplingBilinear2d",
    "UpsamplingNearest2d", "ZeroPad1d", "ZeroPad2d", "ZeroPad3d",
]

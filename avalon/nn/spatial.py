"""Conv1d, adaptive pooling and Upsample layers with torch's signatures, parameters and init."""
from __future__ import annotations

from typing import Any

from ..tensor import Tensor
from . import functional as F
from . import init
from .layers import _dtype, _place, empty
from .module import Module


def _single(v: Any) -> int:
    return int(v[0]) if isinstance(v, (tuple, list)) else int(v)


class Conv1d(Module):
    """1-d cross-correlation over (N, C, L) input; weight (out, in/groups, k), torch's init."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1, padding: Any = 0,
                 dilation: Any = 1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError("Conv1d: in_channels and out_channels must be divisible by groups")
        if padding_mode != "zeros":
            raise NotImplementedError(f"Conv1d(padding_mode={padding_mode!r}) is not supported; use 'zeros'")
        d = _dtype(dtype)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride, self.dilation = (_single(kernel_size),), (_single(stride),), (_single(dilation),)
        self.padding = padding if isinstance(padding, str) else (_single(padding),)
        self.padding_mode = padding_mode
        self.weight = empty((out_channels, in_channels // groups, self.kernel_size[0]), d)
        self.bias = empty((out_channels,), d) if bias else None
        self.reset_parameters()
        _place(self, device)

    def reset_parameters(self) -> None:
        init.conv_default_(self.weight, self.bias)

    def forward(self, input: Any) -> Tensor:
        return F.conv1d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

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
        if return_indices:
            raise NotImplementedError("AdaptiveMaxPool2d: argument 'return_indices' is not supported")
        self.output_size = output_size

    def forward(self, input: Any) -> Tensor:
        return F.adaptive_max_pool2d(input, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class Upsample(Module):
    """F.interpolate as a layer: 'nearest', 'linear' or 'bilinear'."""

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


__all__ = ["AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "Conv1d", "Upsample"]

"""torch's 3-d layers for video and volumetric models: MaxPool3d, AvgPool3d, AdaptiveAvgPool3d,
AdaptiveMaxPool3d, LPPool3d, MaxUnpool3d, ConvTranspose3d and BatchNorm3d, with torch's constructor
signatures, attributes, parameter and buffer names (so torch state dicts load) and initialization;
their forwards are `avalon.nn.functional_3d`'s ops."""
from __future__ import annotations

from typing import Any

from ..tensor import Tensor
from . import functional_3d as F3
from .conv_transpose import _ConvTransposeNd
from .layers import _AvgPoolNd, _BatchNorm, _MaxPoolNd
from .layers_more import LPPool1d, MaxUnpool2d
from .module import Module

__all__ = [
    "AdaptiveAvgPool3d", "AdaptiveMaxPool3d", "AvgPool3d", "BatchNorm3d", "ConvTranspose3d", "LPPool3d", "MaxPool3d",
    "MaxUnpool3d",
]


class MaxPool3d(_MaxPoolNd):
    """3-d max pooling; `return_indices=True` returns (values, flat indices into D*H*W) for MaxUnpool3d."""

    _fn = staticmethod(F3.max_pool3d)


class AvgPool3d(_AvgPoolNd):
    _fn = staticmethod(F3.avg_pool3d)


class AdaptiveAvgPool3d(Module):
    def __init__(self, output_size: Any) -> None:
        super().__init__()
        self.output_size = output_size

    def forward(self, input: Any) -> Tensor:
        return F3.adaptive_avg_pool3d(input, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class AdaptiveMaxPool3d(Module):
    def __init__(self, output_size: Any, return_indices: bool = False) -> None:
        super().__init__()
        self.output_size, self.return_indices = output_size, return_indices

    def forward(self, input: Any) -> Any:
        return F3.adaptive_max_pool3d(input, self.output_size, self.return_indices)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class LPPool3d(LPPool1d):
    """3-d power-average pooling: (sum over each window of x^p)^(1/p)."""

    def forward(self, input: Any) -> Tensor:
        return F3.lp_pool3d(input, float(self.norm_type), self.kernel_size, self.stride, self.ceil_mode)


class MaxUnpool3d(MaxUnpool2d):
    """Inverse of MaxPool3d(return_indices=True): `unpool(values, indices, output_size=None)`."""

    _fn = staticmethod(F3.max_unpool3d)


def _triple(name: str, v: Any) -> tuple[int, int, int]:
    return F3._triple("ConvTranspose3d", name, v)


class ConvTranspose3d(_ConvTransposeNd):
    """The adjoint of Conv3d as a layer: weight (in, out/groups, kd, kh, kw), bias (out,), torch's init."""

    _fn = staticmethod(F3.conv_transpose3d)
    _tuple = staticmethod(_triple)


class BatchNorm3d(_BatchNorm):
    """Batch norm over (N, C, D, H, W) input."""

    _dims = (5,)

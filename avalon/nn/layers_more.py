"""More of torch.nn's layers for ported models: RMSNorm, LocalResponseNorm, AlphaDropout,
FeatureAlphaDropout, RReLU, LPPool1d/2d, MaxUnpool1d/2d and ConvTranspose1d, with torch's constructor
signatures, parameter names and initialization; their forwards are `avalon.nn.functional_more`."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..tensor import Tensor
from . import functional_more as FM
from . import init
from .conv_transpose import _ConvTransposeNd
from .layers import _DropoutNd, _dtype, _place, empty
from .module import Module

__all__ = [
    "AlphaDropout", "ConvTranspose1d", "FeatureAlphaDropout", "LPPool1d", "LPPool2d", "LocalResponseNorm",
    "MaxUnpool1d", "MaxUnpool2d", "RMSNorm", "RReLU",
]


class RMSNorm(Module):
    """Root-mean-square norm over the trailing `normalized_shape` dims with a learned scale (ones)."""

    def __init__(self, normalized_shape: int | Sequence[int], eps: float | None = None,
                 elementwise_affine: bool = True, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape, self.eps, self.elementwise_affine = shape, eps, elementwise_affine
        self.weight = init.ones_(empty(shape, _dtype(dtype))) if elementwise_affine else None
        _place(self, device)

    def reset_parameters(self) -> None:
        if self.weight is not None:
            init.ones_(self.weight)

    def forward(self, x: Any) -> Tensor:
        return FM.rms_norm(x, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class LocalResponseNorm(Module):
    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, input: Any) -> Tensor:
        return FM.local_response_norm(input, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class AlphaDropout(_DropoutNd):
    """Alpha dropout in training mode (keeps SELU's zero mean, unit variance); identity in eval."""

    def forward(self, input: Any) -> Tensor:
        return FM.alpha_dropout(input, self.p, self.training, self.inplace)


class FeatureAlphaDropout(_DropoutNd):
    """Alpha dropout of whole channels of an (N, C, ...) input."""

    def forward(self, input: Any) -> Tensor:
        return FM.feature_alpha_dropout(input, self.p, self.training, self.inplace)


class RReLU(Module):
    """Leaky ReLU with a random slope in [lower, upper] per element in training, their mean in eval."""

    def __init__(self, lower: float = 1.0 / 8, upper: float = 1.0 / 3, inplace: bool = False) -> None:
        super().__init__()
        self.lower, self.upper, self.inplace = lower, upper, inplace

    def forward(self, input: Any) -> Tensor:
        return FM.rrelu(input, self.lower, self.upper, self.training, self.inplace)

    def extra_repr(self) -> str:
        return f"lower={self.lower}, upper={self.upper}{', inplace=True' if self.inplace else ''}"


class LPPool1d(Module):
    def __init__(self, norm_type: float, kernel_size: Any, stride: Any = None, ceil_mode: bool = False) -> None:
        super().__init__()
        self.norm_type, self.kernel_size, self.stride, self.ceil_mode = norm_type, kernel_size, stride, ceil_mode

    def forward(self, input: Any) -> Tensor:
        return FM.lp_pool1d(input, float(self.norm_type), self.kernel_size, self.stride, self.ceil_mode)

    def extra_repr(self) -> str:
        return (f"norm_type={self.norm_type}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"ceil_mode={self.ceil_mode}")


class LPPool2d(LPPool1d):
    def forward(self, input: Any) -> Tensor:
        return FM.lp_pool2d(input, float(self.norm_type), self.kernel_size, self.stride, self.ceil_mode)


class MaxUnpool2d(Module):
    """Inverse of MaxPool2d(return_indices=True): `unpool(values, indices, output_size=None)`."""

    _fn = staticmethod(FM.max_unpool2d)

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0) -> None:
        super().__init__()
        self.kernel_size, self.padding = kernel_size, padding
        self.stride = stride if stride is not None else kernel_size

    def forward(self, input: Any, indices: Any, output_size: Any = None) -> Tensor:
        return self._fn(input, indices, self.kernel_size, self.stride, self.padding, output_size)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxUnpool1d(MaxUnpool2d):
    """Inverse of MaxPool1d(return_indices=True)."""

    _fn = staticmethod(FM.max_unpool1d)


class ConvTranspose1d(_ConvTransposeNd):
    """The adjoint of Conv1d as a layer: weight (in, out/groups, k), bias (out,), torch's init."""

    _fn = staticmethod(FM.conv_transpose1d)

    @staticmethod
    def _tuple(name: str, v: Any) -> tuple[int]:
        return (FM.single("ConvTranspose1d", name, v),)

"""einops on Avalon: `einops.rearrange` / `reduce` / `repeat` / `einsum` / `pack` / `unpack` of
`av.Tensor`s, eagerly and inside traced functions, and einops' layers for Avalon models.

einops picks a backend per tensor type among the subclasses of its `AbstractBackend` whose
framework is imported; `EinopsBackend` is that subclass for `av.Tensor` (Avalon defines it when it
is imported and einops is installed). Every backend method is an Avalon op (reshape, permute,
expand, the reductions, einsum), so einops' patterns trace into ordinary IR: a `rearrange` is a
reshape and a transpose in the graph, differentiable and compiled like any other.

`from einops.layers.torch import Rearrange, Reduce, EinMix` ports as
`from avalon.nn import Rearrange, Reduce, EinMix` (lucidrains' ViT and MLP-Mixer code builds its
patch embedding with `Rearrange`); their weights keep torch's names (`weight`, `bias`).
"""
from __future__ import annotations

from typing import Any

from einops._backends import AbstractBackend
from einops.layers import RearrangeMixin, ReduceMixin
from einops.layers._einmix import _EinmixMixin

from .. import ops
from ..ir import dtypes as dt
from ..tensor import Tensor, tensor
from .module import Module, Parameter


class EinopsBackend(AbstractBackend):
    """einops' operations as Avalon ops (the module docstring)."""

    framework_name = "avalon"

    def is_appropriate_type(self, tensor: Any) -> bool:
        return isinstance(tensor, Tensor)

    def from_numpy(self, x: Any) -> Tensor:
        return tensor(x)

    def to_numpy(self, x: Tensor) -> Any:
        return x.numpy()

    def arange(self, start: int, stop: int) -> Tensor:
        return ops.arange(start, stop, dtype=dt.int64)

    def shape(self, x: Tensor) -> tuple:
        return tuple(x.shape)

    def reshape(self, x: Tensor, shape: Any) -> Tensor:
        return ops.reshape(x, tuple(shape))

    def transpose(self, x: Tensor, axes: Any) -> Tensor:
        return ops.permute(x, tuple(axes))

    def reduce(self, x: Tensor, operation: str, axes: Any) -> Tensor:
        axes = tuple(axes)
        if operation in ("min", "max"):
            return getattr(ops, "a" + operation)(x, dim=axes)
        if operation in ("sum", "mean"):
            return getattr(ops, operation)(x, dim=axes)
        if operation in ("prod", "any", "all"):  # one dimension at a time, the last first
            for i in sorted(axes, reverse=True):
                x = getattr(ops, operation)(x, dim=i)
            return x
        raise NotImplementedError(f"einops reduction {operation!r} on Avalon tensors")

    def stack_on_zeroth_dimension(self, tensors: list) -> Tensor:
        return ops.stack(tensors)

    def add_axis(self, x: Tensor, new_position: int) -> Tensor:
        return ops.unsqueeze(x, new_position)

    def add_axes(self, x: Tensor, n_axes: int, pos2len: dict) -> Tensor:
        """New axes broadcast (a view, as torch's expand), not copied."""
        sizes = [-1] * n_axes
        for pos, length in pos2len.items():
            x = ops.unsqueeze(x, pos)
            sizes[pos] = length
        return x.expand(*sizes)

    def tile(self, x: Tensor, repeats: Any) -> Tensor:
        return x.repeat(*repeats)

    def concat(self, tensors: list, axis: int) -> Tensor:
        return ops.cat(tensors, axis)

    def is_float_type(self, x: Tensor) -> bool:
        return x.dtype.is_float

    def layers(self) -> Any:
        import sys
        return sys.modules[__name__]

    def einsum(self, pattern: str, *x: Tensor) -> Tensor:
        return ops.einsum(pattern, *x)


class Rearrange(RearrangeMixin, Module):
    """einops.layers.torch.Rearrange: `einops.rearrange(x, pattern, **axes_lengths)` as a layer."""

    def forward(self, input: Tensor) -> Tensor:
        return self._apply_recipe(input)


class Reduce(ReduceMixin, Module):
    """einops.layers.torch.Reduce: `einops.reduce(x, pattern, reduction, **axes_lengths)` as a layer."""

    def forward(self, input: Tensor) -> Tensor:
        return self._apply_recipe(input)


class EinMix(_EinmixMixin, Module):
    """einops.layers.torch.EinMix: an einsum with a learned weight (and bias), torch's initialization
    (uniform in +-bound) and parameter names."""

    def _create_parameters(self, weight_shape: Any, weight_bound: float, bias_shape: Any, bias_bound: float) -> None:
        self.weight = Parameter(ops.zeros(*weight_shape).uniform_(-weight_bound, weight_bound))
        self.bias = None if bias_shape is None else Parameter(ops.zeros(*bias_shape).uniform_(-bias_bound,
                                                                                               bias_bound))

    def _create_rearrange_layers(self, pre_reshape_pattern: str | None, pre_reshape_lengths: dict | None,
                                 post_reshape_pattern: str | None, post_reshape_lengths: dict | None) -> None:
        self.pre_rearrange = (None if pre_reshape_pattern is None
                              else Rearrange(pre_reshape_pattern, **(pre_reshape_lengths or {})))
        self.post_rearrange = (None if post_reshape_pattern is None
                               else Rearrange(post_reshape_pattern, **(post_reshape_lengths or {})))

    def forward(self, input: Tensor) -> Tensor:
        if self.pre_rearrange is not None:
            input = self.pre_rearrange(input)
        result = ops.einsum(self.einsum_pattern, input, self.weight)
        if self.bias is not None:
            result = result + self.bias
        if self.post_rearrange is not None:
            result = self.post_rearrange(result)
        return result


__all__ = ["EinopsBackend", "EinMix", "Rearrange", "Reduce"]

"""torch.nn.utils.fusion: fold an eval-mode batch norm into the convolution or linear layer before
it (inference: one layer instead of two), with torch's formulas, and `skip_init`."""
from __future__ import annotations

import copy
from typing import Any

from .. import ops
from ..tensor import Tensor
from .module import Parameter

__all__ = ["fuse_conv_bn_eval", "fuse_conv_bn_weights", "fuse_linear_bn_eval", "fuse_linear_bn_weights", "skip_init"]


def fuse_conv_bn_weights(conv_w: Tensor, conv_b: Tensor | None, bn_rm: Tensor, bn_rv: Tensor, bn_eps: float,
                         bn_w: Tensor | None, bn_b: Tensor | None, transpose: bool = False) -> tuple[Tensor, Tensor]:
    """(weight, bias) of a convolution computing conv then batch norm (running statistics):
    w * gamma / sqrt(var + eps) per output channel, (b - mean) * gamma / sqrt(var + eps) + beta."""
    dtype = conv_w.dtype
    conv_b = ops.zeros_like(bn_rm) if conv_b is None else conv_b
    bn_w = ops.ones_like(bn_rm) if bn_w is None else bn_w
    bn_b = ops.zeros_like(bn_rm) if bn_b is None else bn_b
    rsqrt = ops.rsqrt(ops.add(bn_rv, bn_eps))
    shape = (1, -1) + (1,) * (conv_w.ndim - 2) if transpose else (-1,) + (1,) * (conv_w.ndim - 1)
    w = ops.cast(ops.mul(conv_w, ops.reshape(ops.mul(bn_w, rsqrt), shape)), dtype)
    b = ops.cast(ops.add(ops.mul(ops.mul(ops.sub(conv_b, bn_rm), rsqrt), bn_w), bn_b), dtype)
    return Parameter(w, conv_w.requires_grad), Parameter(b, conv_b.requires_grad)


def fuse_conv_bn_eval(conv: Any, bn: Any, transpose: bool = False) -> Any:
    """A copy of `conv` whose output is `bn(conv(x))` for `bn` in eval mode (both must be in eval)."""
    if conv.training or bn.training:
        raise AssertionError("Fusion only for eval!")
    fused = copy.deepcopy(conv)
    if bn.running_mean is None or bn.running_var is None:
        raise AssertionError("fuse_conv_bn_eval: the batch norm tracks no running statistics")
    fused.weight, fused.bias = fuse_conv_bn_weights(fused.weight, fused.bias, bn.running_mean, bn.running_var, bn.eps,
                                                    bn.weight, bn.bias, transpose)
    return fused


def fuse_linear_bn_weights(linear_w: Tensor, linear_b: Tensor | None, bn_rm: Tensor, bn_rv: Tensor, bn_eps: float,
                           bn_w: Tensor, bn_b: Tensor) -> tuple[Tensor, Tensor]:
    """(weight, bias) of a linear layer computing linear then an eval-mode batch norm."""
    linear_b = ops.zeros_like(bn_rm) if linear_b is None else linear_b
    scale = ops.mul(bn_w, ops.rsqrt(ops.add(bn_rv, bn_eps)))
    w = ops.mul(linear_w, ops.unsqueeze(scale, -1))
    b = ops.add(ops.mul(ops.sub(linear_b, bn_rm), scale), bn_b)
    return Parameter(w, linear_w.requires_grad), Parameter(b, linear_b.requires_grad)


def fuse_linear_bn_eval(linear: Any, bn: Any) -> Any:
    """A copy of `linear` whose output is `bn(linear(x))` for `bn` in eval mode (both must be in eval)."""
    if linear.training or bn.training:
        raise AssertionError("Fusion only for eval!")
    if not (linear.out_features == bn.num_features or bn.num_features == 1):
        raise AssertionError("To fuse, linear.out_features must equal bn.num_features OR bn.num_features must be 1")
    if bn.running_mean is None or bn.running_var is None:
        raise AssertionError("fuse_linear_bn_eval: the batch norm tracks no running statistics")
    fused = copy.deepcopy(linear)
    fused.weight, fused.bias = fuse_linear_bn_weights(fused.weight, fused.bias, bn.running_mean, bn.running_var,
                                                      bn.eps, bn.weight, bn.bias)
    return fused


def skip_init(module_cls: type, *args: Any, **kwargs: Any) -> Any:
    """torch.nn.utils.skip_init: the module, its parameters' values unspecified (here: initialized as
    usual, which any "uninitialized" contract allows; torch makes them on the meta device)."""
    if "device" not in __import__("inspect").signature(module_cls).parameters:
        raise RuntimeError("Module must support a 'device' arg to skip initialization")
    return module_cls(*args, **kwargs)

"""Transposed 2-d convolution: `F.conv_transpose2d` and `ConvTranspose2d`, torch's signatures and math.

A transposed convolution is the adjoint of a convolution: its forward IS conv2d's gradient with
respect to its input, with the transposed-conv weight (in, out/groups, kh, kw) read as the OIHW weight
of that conv2d (O = our input channels, I*groups = our output channels). So it binds the existing
`conv2d_grad_input` primitive, which already has a numpy reference, a vjp (conv2d and
conv2d_grad_weight) and a Triton lowering; no new op is needed.

`output_padding` chooses among the output sizes that the strided forward conv maps onto the same
input size. The primitive requires that size to map back exactly, which holds for output_padding <
stride; torch also allows stride <= output_padding < dilation: then the op runs unpadded along that
axis and the padding is cropped here, with zero rows appended where no kernel tap reaches.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import amp, ops
from ..ops.dtype_kernels import DTypeRuntimeError, check_kernel
from ..tensor import Tensor
from . import functional as F
from . import init
from .layers import _layer_dtype, _place, empty
from .module import Module

__all__ = ["ConvTranspose2d", "conv_transpose2d"]


def _t(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


def _pair(name: str, v: Any) -> tuple[int, int]:
    if isinstance(v, str):
        raise ValueError(f"conv_transpose2d: argument '{name}' must be an int or a pair of ints, got {v!r} "
                         "(torch has no string padding for transposed convolutions either)")
    return F._pair(v, "conv_transpose2d", name)


def conv_transpose2d(input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
                     output_padding: Any = 0, groups: int = 1, dilation: Any = 1) -> Tensor:
    """torch.nn.functional.conv_transpose2d: input (N, C_in, H, W) (or unbatched (C_in, H, W)), weight
    (C_in, C_out/groups, kh, kw) -> (N, C_out, H_out, W_out) with
    H_out = (H - 1)*stride - 2*padding + dilation*(kh - 1) + output_padding + 1."""
    x, w = amp.lower_precision(_t(input), _t(weight))  # torch's autocast lower-precision list holds it
    if x.ndim == 3:
        y = conv_transpose2d(ops.expand_dims(x, 0), w, bias, stride, padding, output_padding, groups, dilation)
        return ops.squeeze(y, 0)
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"conv_transpose2d: expected a 3-d or 4-d input and a 4-d weight, got {x.shape} and "
                         f"{w.shape}")
    # torch computes in floats and int64 only (Avalon refused int64, and would have computed int32)
    check_kernel("conv_transpose2d", "slow_conv_transpose2d_out_cpu", "nonlong", x)
    b = _t(bias) if bias is not None and not amp.is_autocast_enabled(x.device.type) else None
    if w.dtype != x.dtype or (isinstance(bias, Tensor) and b is not None and b.dtype != x.dtype):
        # torch's check, as conv's (numpy promoted the output in silence)
        raise ops.fail(DTypeRuntimeError(
            f"conv_transpose: Input type ({x.dtype.name}) and weight type ({w.dtype.name})"
            f"{'' if b is None else f' and bias type ({b.dtype.name})'} should be the same; cast one with .to(...)"))
    s, p, op, d = (_pair(n, v) for n, v in (("stride", stride), ("padding", padding),
                                              ("output_padding", output_padding), ("dilation", dilation)))
    groups = int(groups)
    if groups < 1 or min(s) < 1 or min(d) < 1 or min(p) < 0 or min(op) < 0:
        raise ValueError(f"conv_transpose2d: need groups, stride, dilation >= 1 and padding, output_padding >= 0; "
                         f"got groups={groups}, stride={s}, dilation={d}, padding={p}, output_padding={op}")
    n, c, h, wd = x.shape
    if w.shape[0] != c or c % groups:
        raise ValueError(f"conv_transpose2d: input {x.shape} has {c} channels; weight {w.shape} with "
                         f"groups={groups} expects weight.shape[0] == {c}, divisible by groups")
    F._check_bias("conv_transpose2d", w, bias, w.shape[1] * groups)
    for i in range(2):
        if op[i] >= max(s[i], d[i]):
            raise ValueError(f"conv_transpose2d: output_padding {op} must be smaller than stride {s} or "
                             f"dilation {d}")
    k = w.shape[2:]
    full = [(hw - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + 1 for i, hw in enumerate((h, wd))]
    if min(full[0] + op[0], full[1] + op[1]) < 1:
        raise ValueError(f"conv_transpose2d: padding {p} leaves no output for input {x.shape} and kernel {k}")
    # Per axis: output_padding < stride is exact in the primitive. Otherwise (stride <= output_padding <
    # dilation) run it unpadded, crop `padding` rows from the front ourselves, and append the zero
    # rows no kernel tap reaches.
    exact = [op[i] < s[i] for i in range(2)]
    pp = [p[i] if exact[i] else 0 for i in range(2)]
    size = [(hw - 1) * s[i] - 2 * pp[i] + d[i] * (k[i] - 1) + 1 + (op[i] if exact[i] else 0)
            for i, hw in enumerate((h, wd))]
    if min(size) < 1 or any(size[i] <= p[i] for i in range(2) if not exact[i]):
        raise ValueError(f"conv_transpose2d: padding {p} leaves no output for input {x.shape} and kernel {k}")
    y = ops.bind("conv2d_grad_input", x, ops.cast(w, x.dtype), input_shape=[n, w.shape[1] * groups, *size],
                 stride=list(s), padding=pp, dilation=list(d), groups=groups)
    for i in range(2):
        if not exact[i]:
            out = full[i] + op[i]
            y = ops.narrow(y, 2 + i, p[i], min(out, size[i] - p[i]))
            if out > size[i] - p[i]:
                y = ops.pad(y, [(0, 0)] * (2 + i) + [(0, out - (size[i] - p[i]))] + [(0, 0)] * (1 - i))
    if bias is None:
        return y
    return ops.add(y, ops.reshape(ops.cast(amp.autocast_bias(_t(bias)), y.dtype), (1, -1, 1, 1)))


class _ConvTransposeNd(Module):
    """What ConvTranspose1d and ConvTranspose2d share (torch's _ConvTransposeNd): weight (in, out/groups,
    *kernel), bias (out,), torch's init (kaiming_uniform(a=sqrt(5)), whose fan-in torch reads from
    weight.shape[1] * prod(kernel)), and torch's output_size rule. A subclass names its functional
    form (`_fn`) and how an argument becomes a tuple of its spatial rank (`_tuple`)."""

    _fn: Any = None

    @staticmethod
    def _tuple(name: str, v: Any) -> tuple[int, ...]:
        raise NotImplementedError

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1, padding: Any = 0,
                 output_padding: Any = 0, groups: int = 1, bias: bool = True, dilation: Any = 1,
                 padding_mode: str = "zeros", device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        name = type(self).__name__
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{name}: in_channels and out_channels must be divisible by groups")
        if padding_mode != "zeros":
            raise ValueError(f"{name}: argument 'padding_mode' only supports 'zeros', got {padding_mode!r}")
        d = _layer_dtype(name, dtype)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = self._tuple("kernel_size", kernel_size)
        self.stride, self.padding = self._tuple("stride", stride), self._tuple("padding", padding)
        self.output_padding = self._tuple("output_padding", output_padding)
        self.dilation = self._tuple("dilation", dilation)
        self.padding_mode = padding_mode
        self.weight = empty((in_channels, out_channels // groups, *self.kernel_size), d)
        self.bias = empty((out_channels,), d) if bias else None
        self.reset_parameters()
        _place(self, device)

    def reset_parameters(self) -> None:
        init.conv_default_(self.weight, self.bias)

    def _output_padding(self, x: Tensor, output_size: Sequence[int] | None) -> tuple[int, ...]:
        """torch's rule: an explicit output_size picks the output_padding that reaches it."""
        if output_size is None:
            return self.output_padding
        n = len(self.kernel_size)
        size = [int(i) for i in output_size][-n:]
        if len(size) != n:
            raise ValueError(f"{type(self).__name__}: output_size needs {n} spatial entries, got {output_size}")
        pads = []
        for i in range(n):
            lo = ((x.shape[-n + i] - 1) * self.stride[i] - 2 * self.padding[i]
                  + self.dilation[i] * (self.kernel_size[i] - 1) + 1)
            hi = lo + self.stride[i] - 1
            if not lo <= size[i] <= hi:
                raise ValueError(f"{type(self).__name__}: requested output_size {tuple(size)} is not reachable; "
                                 f"dim {i} must lie in [{lo}, {hi}]")
            pads.append(size[i] - lo)
        return tuple(pads)

    def forward(self, input: Any, output_size: Sequence[int] | None = None) -> Tensor:
        x = _t(input)
        return type(self)._fn(x, self.weight, self.bias, self.stride, self.padding,
                              self._output_padding(x, output_size), self.groups, self.dilation)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        n = len(self.kernel_size)
        for name, default in (("padding", (0,) * n), ("output_padding", (0,) * n), ("dilation", (1,) * n)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + (", bias=False" if self.bias is None else "")


class ConvTranspose2d(_ConvTransposeNd):
    """The adjoint of Conv2d as a layer; weight (in, out/groups, kh, kw), bias (out,)."""

    _fn = staticmethod(conv_transpose2d)
    _tuple = staticmethod(_pair)

"""Convolution and pooling in the forms importers meet (1-d and 2-d, asymmetric padding, ceil mode,
transposed convolution), built on the 2-d primitives so autodiff and fusion see ordinary ops."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .. import ops
from ..tensor import Tensor
from .model import UnsupportedOp


def _spatial(name: str, x: Tensor, dims: tuple[int, ...] = (1, 2)) -> int:
    n = x.ndim - 2
    if n not in dims:
        raise UnsupportedOp(f"{name}: only {'-, '.join(map(str, dims))}-d inputs are supported, got shape {x.shape}")
    return n


def _as2d(v: Sequence[int], n: int, fill: int) -> list[int]:
    return [fill] + list(v) if n == 1 else list(v)


def conv(x: Tensor, w: Tensor, b: Tensor | None, stride: Sequence[int], pad_lo: Sequence[int],
         pad_hi: Sequence[int], dilation: Sequence[int], groups: int, transposed: bool = False,
         output_padding: Sequence[int] = ()) -> Tensor:
    """N-d convolution (cross-correlation) or transposed convolution with per-side padding.
    A transposed convolution is `conv2d_grad_input` with its weight read as a conv weight."""
    n = _spatial("conv", x, (1, 2, 3))
    if n == 3:
        return _conv3d(x, w, b, stride, pad_lo, pad_hi, dilation, groups, transposed, output_padding)
    if n == 1:
        x, w = ops.unsqueeze(x, 2), ops.unsqueeze(w, 2)
    s, lo, hi, d = _as2d(stride, n, 1), _as2d(pad_lo, n, 0), _as2d(pad_hi, n, 0), _as2d(dilation, n, 1)
    if not transposed:
        if lo != hi:
            x = ops.pad(x, [(0, 0), (0, 0)] + [(a, c) for a, c in zip(lo, hi)])
            lo = [0, 0]
        y = ops.conv2d(x, w, s, lo, d, groups)
    else:
        op = _as2d(output_padding or [0] * n, n, 0)
        nb, _, h, wd = x.shape
        full = [(size - 1) * st + dl * (k - 1) + 1 + o for size, st, dl, k, o in zip((h, wd), s, d, w.shape[2:], op)]
        cout = w.shape[1] * groups
        y = ops.bind("conv2d_grad_input", x, ops.cast(w, x.dtype), input_shape=[nb, cout, *full], stride=s,
                     padding=[0, 0], dilation=d, groups=int(groups))
        if any(lo) or any(hi):
            y = ops.slice_(y, [0, 0, lo[0], lo[1]], [nb, cout, full[0] - hi[0], full[1] - hi[1]])
    if b is not None:
        y = ops.add(y, ops.reshape(b, (1, -1, 1, 1)))
    return ops.squeeze(y, 2) if n == 1 else y


def _conv3d(x: Tensor, w: Tensor, b: Tensor | None, stride: Sequence[int], lo: Sequence[int],
            hi: Sequence[int], dilation: Sequence[int], groups: int, transposed: bool,
            output_padding: Sequence[int]) -> Tensor:
    """3-d convolution: the per-side padding (or, transposed, the cropping and output padding) around
    F.conv3d / F.conv_transpose3d without padding of their own."""
    from ..nn.functional_3d import conv_transpose3d
    from ..nn.functional_spatial import conv3d
    if not transposed:
        x = ops.pad(x, [(0, 0), (0, 0)] + [(int(a), int(c)) for a, c in zip(lo, hi)])
        return conv3d(x, w, b, list(stride), 0, list(dilation), groups)
    y = conv_transpose3d(x, w, None, list(stride), 0, 0, groups, list(dilation))
    op = list(output_padding or [0] * 3)
    if any(op):
        y = ops.pad(y, [(0, 0), (0, 0)] + [(0, int(o)) for o in op])
    y = ops.slice_(y, [0, 0, *lo], [*y.shape[:2], *(size - h for size, h in zip(y.shape[2:], hi))])
    return y if b is None else ops.add(y, ops.reshape(b, (1, -1, 1, 1, 1)))


def _ceil_extra(size: int, k: int, s: int, lo: int, hi: int, d: int = 1) -> int:
    """Extra high-side padding that makes a floor-mode pool produce the ceil-mode output size."""
    eff = d * (k - 1) + 1
    out = math.ceil((size + lo + hi - eff) / s) + 1
    if (out - 1) * s >= size + lo:
        out -= 1
    return max(0, (out - 1) * s + eff - (size + lo + hi))


def pool(kind: str, x: Tensor, kernel: Sequence[int], stride: Sequence[int], pad_lo: Sequence[int],
         pad_hi: Sequence[int], ceil_mode: bool = False, count_include_pad: bool = True,
         dilation: Sequence[int] | None = None) -> Tensor:
    """Max or average pooling, 1-d or 2-d, per-side padding and ceil mode."""
    n = _spatial(f"{kind}_pool", x)
    if dilation is not None and any(int(v) != 1 for v in dilation):
        raise UnsupportedOp(f"{kind}_pool: dilation {list(dilation)} is not supported")
    if n == 1:
        x = ops.unsqueeze(x, 2)
    k, s = _as2d(kernel, n, 1), _as2d(stride, n, 1)
    lo, hi = _as2d(pad_lo, n, 0), _as2d(pad_hi, n, 0)
    extra = [_ceil_extra(x.shape[2 + i], k[i], s[i], lo[i], hi[i]) if ceil_mode else 0 for i in range(2)]
    if kind == "max":
        if lo == hi and not any(extra) and all(p <= kk // 2 for p, kk in zip(lo, k)):
            y = ops.max_pool2d(x, k, s, lo)
        else:
            xp = ops.pad(x, [(0, 0), (0, 0)] + [(lo[i], hi[i] + extra[i]) for i in range(2)], float("-inf"))
            y = ops.max_pool2d(xp, k, s, 0)
    else:
        simple = lo == hi and not any(extra) and all(p <= kk // 2 for p, kk in zip(lo, k))
        if simple and (count_include_pad or not any(lo)):
            y = ops.avg_pool2d(x, k, s, lo, count_include_pad=True)
        else:
            widths = [(0, 0), (0, 0)] + [(lo[i], hi[i] + extra[i]) for i in range(2)]
            xp = ops.pad(x, widths)
            if count_include_pad:
                ones = ops.pad(ops.ones(x.shape[:2] + tuple(x.shape[2 + i] + lo[i] + hi[i] for i in range(2)),
                                        dtype=x.dtype), [(0, 0), (0, 0), (0, extra[0]), (0, extra[1])])
            else:
                ones = ops.pad(ops.ones(x.shape, dtype=x.dtype), widths)
            y = ops.div(ops.avg_pool2d(xp, k, s, 0), ops.avg_pool2d(ones, k, s, 0))
    return ops.squeeze(y, 2) if n == 1 else y


def pairs(v: Any, n: int) -> list[int]:
    """An int or a sequence as `n` ints (torch's `_pair` and friends)."""
    if isinstance(v, (int, float)):
        return [int(v)] * n
    v = [int(i) for i in v]
    return v * n if len(v) == 1 else v

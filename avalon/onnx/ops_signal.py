"""ONNX's signal ops: DFT and STFT on `avalon.fft` (ONNX holds complex values as a trailing dim of 2,
which is `view_as_real`'s layout), the windows (HannWindow, HammingWindow, BlackmanWindow) and
MelWeightMatrix, whose operands are sizes known when the model loads, so they are constants."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import fft, ops
from ..complex import ComplexTensor, view_as_real
from ..tensor import Tensor
from .dtypes import avalon_dtype
from .table import Node, T, axis, ints, onnx_op


def _signal(node: Node, x: Tensor) -> Tensor | ComplexTensor:
    """ONNX's [..., 1] (real) or [..., 2] (real, imaginary) signal as a real tensor or a ComplexTensor."""
    if x.shape[-1] == 1:
        return ops.squeeze(x, -1)
    if x.shape[-1] == 2:
        return ComplexTensor(x[..., 0], x[..., 1])
    raise node.unsupported(f"the last dim of a signal must be 1 (real) or 2 (complex), got shape {x.shape}")


@onnx_op("DFT")
def dft(node: Node, x: Any, dft_length: Any = None, axis_in: Any = None) -> Tensor:
    """The transform along `axis` (an attribute to opset 19, an input from 20; it counts the trailing
    dim of 2), forward or inverse (scaled by 1/n), all frequencies or the non-negative ones (onesided:
    a real input's rfft; inverse, a one-sided spectrum's real irfft)."""
    x = T(x)
    if not x.dtype.is_float:
        raise node.unsupported(f"DFT of a {x.dtype.name} tensor: a floating-point signal is needed")
    if axis_in is not None:
        a = ints(axis_in, "DFT's axis")[0]
    else:
        a = int(node.attr("axis", 1 if node.opset < 20 else -2))
    a = axis(a, x.ndim)
    if a >= x.ndim - 1:
        raise node.unsupported(f"axis {a} is the trailing (real, imaginary) dim of a rank-{x.ndim} signal")
    inverse, onesided = bool(node.attr("inverse", 0)), bool(node.attr("onesided", 0))
    z = _signal(node, x)
    n = ints(dft_length, "DFT's dft_length")[0] if dft_length is not None else None
    if inverse and onesided:
        y = fft.irfft(z, n=n, dim=a)
        return ops.expand_dims(y, -1)
    if inverse:
        y = fft.ifft(z, n=n, dim=a)
    elif onesided:
        if isinstance(z, ComplexTensor):  # ONNX's reference: the full transform, cut to n // 2 + 1
            full = fft.fft(z, n=n, dim=a)
            y = full.narrow(a, 0, full.shape[a] // 2 + 1)
        else:
            y = fft.rfft(z, n=n, dim=a)
    else:
        y = fft.fft(z, n=n, dim=a)
    return view_as_real(y)


@onnx_op("STFT")
def stft(node: Node, x: Any, frame_step: Any, window: Any = None, frame_length: Any = None) -> Tensor:
    """Frames of frame_length every frame_step along the signal axis (no centering or padding),
    windowed, each transformed: [batch, frames, bins, 2]."""
    x = T(x)
    step = ints(frame_step, "STFT's frame_step")[0]
    w = T(window) if window is not None else None
    length = ints(frame_length, "STFT's frame_length")[0] if frame_length is not None else \
        w.shape[0] if w is not None else x.shape[-2]
    if w is not None and w.shape[0] != length:
        raise node.unsupported(f"window of {w.shape[0]} points for frames of {length}")
    z = _signal(node, x)  # (batch, samples) real or complex
    parts = (z.real, z.imag) if isinstance(z, ComplexTensor) else (z,)
    framed = [ops.unfold(p, -1, length, step) for p in parts]  # (batch, frames, length)
    if w is not None:
        framed = [ops.mul(f, ops.cast(w, f.dtype)) for f in framed]
    onesided = bool(node.attr("onesided", 1))
    if len(framed) == 2:
        full = fft.fft(ComplexTensor(*framed), dim=-1)
        y = full.narrow(-1, 0, length // 2 + 1) if onesided else full
    else:
        y = fft.rfft(framed[0], dim=-1) if onesided else fft.fft(framed[0], dim=-1)
    return view_as_real(y)


def _window(node: Node, size: Any, formula: Any) -> Tensor:
    """formula(n, N) over n = 0 .. size - 1 with N = size (periodic, the default) or size - 1, in
    float64, as the output_datatype (float32 by default)."""
    size_ = ints(size, f"{node.op_type}'s size")[0]
    big_n = size_ if node.attr("periodic", 1) else size_ - 1
    n = np.arange(size_, dtype=np.float64)
    values = formula(n, big_n) if size_ > 1 else np.ones(size_)
    return Tensor(values, dtype=avalon_dtype(int(node.attr("output_datatype", 1)), node))


@onnx_op("HannWindow")
def hann_window(node: Node, size: Any) -> Tensor:
    return _window(node, size, lambda n, N: np.sin(np.pi * n / N) ** 2)


@onnx_op("HammingWindow")
def hamming_window(node: Node, size: Any) -> Tensor:
    """ONNX's Hamming coefficients: alpha = 25/46 and beta = 21/46 (not torch's rounded 0.54/0.46)."""
    return _window(node, size, lambda n, N: 25 / 46 - 21 / 46 * np.cos(2 * np.pi * n / N))


@onnx_op("BlackmanWindow")
def blackman_window(node: Node, size: Any) -> Tensor:
    return _window(node, size, lambda n, N: 0.42 - 0.5 * np.cos(2 * np.pi * n / N) + 0.08 * np.cos(4 * np.pi * n / N))


@onnx_op("MelWeightMatrix")
def mel_weight_matrix(node: Node, num_mel_bins: Any, dft_length: Any, sample_rate: Any, lower_edge_hertz: Any,
                      upper_edge_hertz: Any) -> Tensor:
    """The (dft_length // 2 + 1, num_mel_bins) triangular filters on the HTK mel scale, as ONNX defines
    them: num_mel_bins + 2 edges evenly spaced in mel, each mapped to the DFT bin floor((n + 1) f / rate)."""
    bins, n = ints(num_mel_bins, "num_mel_bins")[0], ints(dft_length, "dft_length")[0]
    rate = ints(sample_rate, "sample_rate")[0]
    lo, hi = (float(np.asarray(v).reshape(-1)[0]) for v in (lower_edge_hertz, upper_edge_hertz))

    def mel(f: float) -> float:
        return 2595 * math.log1p(f / 700) / math.log(10)
    edges = np.arange(bins + 2) * ((mel(hi) - mel(lo)) / (bins + 2)) + mel(lo)
    edges = (((n + 1) * (700 * np.expm1(edges / 2595 * math.log(10)))) // rate).astype(int)
    out = np.zeros((n // 2 + 1, bins))
    for i in range(bins):
        left, center, right = edges[i], edges[i + 1], edges[i + 2]
        if center == left:
            out[center, i] = 1
        else:
            out[left:center + 1, i] = (np.arange(left, center + 1) - left) / (center - left)
        if right > center:
            out[center:right, i] = (right - np.arange(center, right)) / (right - center)
    return Tensor(out, dtype=avalon_dtype(int(node.attr("output_datatype", 1)), node))

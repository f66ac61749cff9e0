"""torch.stft and torch.istft (`av.stft`, `av.istft`): short-time Fourier transforms over `avalon.fft`.

Frames are cut by `unfold` (a strided view), windowed and transformed by `fft.rfft`; the inverse
transforms each frame back, windows it again and overlap-adds the frames with `F.fold`, divided by the
summed squared window (the window envelope), as torch does. Both are built from differentiable ops, so
a spectral loss (multi-resolution STFT losses of vocoders) trains through them and compiles.
"""
from __future__ import annotations

import warnings
from typing import Any

from .. import fft, ops
from ..complex import ComplexTensor, _lift, view_as_real
from ..ir import dtypes as dt
from ..tensor import Tensor
from . import functional_spatial as _spatial


def _window(fn: str, window: Any, win_length: int, n_fft: int, dtype: dt.DType) -> Tensor:
    """The window (ones when None) of win_length points, zero-padded on both sides to n_fft."""
    if not 0 < win_length <= n_fft:
        raise RuntimeError(f"{fn}: expected 0 < win_length <= n_fft, but got win_length={win_length}")
    w = ops.ones((win_length,), dtype=dtype) if window is None else window
    if not isinstance(w, Tensor):
        w = ops.as_tensor(w)
    if w.ndim != 1 or w.shape[0] != win_length:
        raise RuntimeError(f"{fn}: expected a 1D window tensor of size equal to win_length={win_length}, but got "
                           f"window with size {tuple(w.shape)}")
    left = (n_fft - win_length) // 2
    if left or win_length < n_fft:
        w = ops.concatenate([ops.zeros((left,), dtype=w.dtype), w,
                             ops.zeros((n_fft - win_length - left,), dtype=w.dtype)])
    return ops.cast(w, dtype) if w.dtype != dtype else w


def stft(input: Any, n_fft: int, hop_length: int | None = None, win_length: int | None = None, window: Any = None,
         center: bool = True, pad_mode: str = "reflect", normalized: bool = False, onesided: bool | None = None,
         return_complex: bool | None = None, align_to_window: bool | None = None) -> Any:
    """torch.stft: (B?, n_fft // 2 + 1 (or n_fft), frames) complex; `return_complex=False` gives torch's
    deprecated (..., 2) real form."""
    if isinstance(input, ComplexTensor):
        raise NotImplementedError("stft of a complex signal is not supported; transform its real and imaginary "
                                  "parts separately")
    x = input if isinstance(input, Tensor) else ops.as_tensor(input)
    if return_complex is None:
        raise RuntimeError("stft requires the return_complex parameter be given for real inputs, and will further "
                           "require that return_complex=True in a future PyTorch release.")
    if x.ndim not in (1, 2):
        raise RuntimeError(f"stft: expected a 1D or 2D tensor, got shape {tuple(x.shape)}")
    if not x.dtype.is_float:
        x = ops.cast(x, ops.get_default_dtype())
    batched = x.ndim == 2
    x = x if batched else ops.expand_dims(x, 0)
    hop = n_fft // 4 if hop_length is None else int(hop_length)
    win = n_fft if win_length is None else int(win_length)
    if hop <= 0:
        raise RuntimeError(f"stft: expected hop_length > 0, but got hop_length={hop}")
    w = _window("stft", window, win, n_fft, x.dtype)
    if center:
        p = n_fft // 2
        x = ops.squeeze(_spatial.pad(ops.expand_dims(x, 1), (p, p), mode=pad_mode), 1)
    if not 0 < n_fft <= x.shape[-1]:
        raise RuntimeError(f"stft: expected 0 < n_fft <= {x.shape[-1]}, but got n_fft={n_fft}")
    frames = ops.unfold(x, -1, n_fft, hop) * w  # (B, T, n_fft)
    norm = "ortho" if normalized else "backward"
    spec = fft.rfft(frames, norm=norm) if onesided is not False else fft.fft(frames, norm=norm)
    spec = spec.transpose(-1, -2)
    spec = spec if batched else spec.squeeze(0)
    if not return_complex:
        warnings.warn("stft with return_complex=False is deprecated: use return_complex=True and av.view_as_real",
                      UserWarning, stacklevel=2)
        return view_as_real(spec)
    return spec


def istft(input: Any, n_fft: int, hop_length: int | None = None, win_length: int | None = None, window: Any = None,
          center: bool = True, normalized: bool = False, onesided: bool | None = None, length: int | None = None,
          return_complex: bool = False) -> Tensor:
    """torch.istft: the signal whose stft is `input`, by inverse transforms of the frames, windowed
    overlap-add and division by the summed squared window."""
    if return_complex:
        raise NotImplementedError("istft with return_complex=True is not supported")
    z = _lift(input)
    batched = z.ndim == 3
    if z.ndim not in (2, 3):
        raise RuntimeError(f"istft: expected a 2D or 3D complex tensor, got shape {tuple(z.shape)}")
    z = z if batched else z.unsqueeze(0)
    hop = n_fft // 4 if hop_length is None else int(hop_length)
    win = n_fft if win_length is None else int(win_length)
    w = _window("istft", window, win, n_fft, z.real.dtype)
    frames_ct = z.transpose(-1, -2)  # (B, T, freq)
    norm = "ortho" if normalized else "backward"
    one = onesided if onesided is not None else frames_ct.shape[-1] != n_fft
    frames = fft.irfft(frames_ct, n=n_fft, norm=norm) if one else fft.ifft(frames_ct, n=n_fft, norm=norm).real
    frames = frames * w  # (B, T, n_fft)
    n_frames = frames.shape[1]
    total = n_fft + hop * (n_frames - 1)

    def overlap_add(cols: Tensor) -> Tensor:  # (B, n_fft, T) -> (B, total)
        return ops.reshape(_spatial.fold(cols, (1, total), (1, n_fft), stride=(1, hop)), (cols.shape[0], total))
    y = overlap_add(ops.transpose(frames, (0, 2, 1)))
    env = overlap_add(ops.broadcast_to(ops.reshape(w * w, (1, n_fft, 1)), (1, n_fft, n_frames)))
    start = n_fft // 2 if center else 0
    end = total - n_fft // 2 if center else total
    if length is not None:
        end = start + int(length)
    y, env = y[:, start:min(end, total)], env[:, start:min(end, total)]
    nola = "istft: window overlap add min: the window envelope is zero somewhere (NOLA fails)"
    if env.is_traced:  # a traced window: checked when the graph runs (y / 0 was inf or nan in silence)
        env = ops.check_values(env, ops.ge(ops.abs(env), 1e-11), nola)
    elif bool((ops.abs(env) < 1e-11).any()):
        raise RuntimeError(nola)
    y = y / env
    if length is not None and y.shape[-1] < length:
        y = _spatial.pad(y, (0, int(length) - y.shape[-1]))
    return y if batched else ops.squeeze(y, 0)


__all__ = ["istft", "stft"]


# torch's Tensor.stft / Tensor.istft (a ComplexTensor's istft is istft of it): installed here, where the
# functions live, since the tensor class sits below this layer
Tensor.stft = lambda self, *args, **kwargs: stft(self, *args, **kwargs)  # type: ignore[attr-defined]
ComplexTensor.istft = lambda self, *args, **kwargs: istft(self, *args, **kwargs)  # type: ignore[attr-defined]

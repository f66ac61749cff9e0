"""`avalon.fft`: torch.fft's transforms (fft, ifft, rfft, irfft, hfft, ihfft and their 2-d and n-d forms,
fftfreq, rfftfreq, fftshift, ifftshift) and `av.stft`, on `ComplexTensor` pairs (avalon/complex.py).

Why matrix products: a DFT of length n along one axis is a product with the n x n matrix of
cos/sin(2 pi jk / n), which the IR already has (matmul), so every backend compiles it, autodiff
differentiates it, and nothing below the frontend is new (padding to n is fewer rows of the matrix,
truncating fewer columns). Up to `DIRECT_MAX` points a transform is that one product; a longer one is
split as Cooley and Tukey's four-step FFT does (n = n1 n2: transforms of n1 and n2 points around a
pointwise twiddle, recursively), O(n (n1 + n2)) work in GEMMs, which is how FFTs are done on tensor
cores. The matrices come from float64 angles of exact integer products jk mod n; eagerly they are built
once with numpy, while tracing from n-entry tables in the graph (nothing captured), which
`av.compile` hoists out of the per-call work (avalon/compiler/hoist.py). On the CPU, pocketfft
(torch.fft) stays faster: `benchmarks/fft_bench.py` measures how much. On GPUs, under
`av.set_float32_matmul_precision("high")` the products run in TF32 (~1e-3 relative), where cuFFT stays
float32.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import ops as _ops
from .complex import ComplexTensor, _lift
from .ir import dtypes as dt
from .tensor import Tensor
from .trace import current_trace

_NORMS = ("backward", "ortho", "forward")


def _scale(norm: str | None, n: int, inverse: bool, fn: str) -> float:
    """The factor a transform of length n applies: "backward" scales the inverse by 1/n, "forward"
    the forward transform, "ortho" both by 1/sqrt(n)."""
    norm = "backward" if norm is None else norm
    if norm not in _NORMS:
        raise ValueError(f'{fn}: Invalid normalization mode: "{norm}" (expected one of {", ".join(_NORMS)})')
    if norm == "ortho":
        return 1 / math.sqrt(n)
    return 1.0 / n if (norm == "backward") == inverse else 1.0


def _matrices(rows: int, cols: int, n: int, dtype: dt.DType, cos_scale: float, sin_scale: float,
              weights: bool = False) -> tuple[Tensor, Tensor]:
    """cos and sin of 2 pi jk / n for j < rows, k < cols (rows of the input, columns of the output),
    exact zeros where the angle is a multiple of pi/2, scaled in float64; with `weights`, row k times
    2 but for k = 0 and k = n / 2 (irfft's Hermitian halves). Eagerly the pair is built once with numpy
    and cached; while tracing, from n-entry tables of cos and sin gathered at jk mod n (n transcendentals,
    not rows x cols), so nothing is captured and the graph is cached."""
    if current_trace() is None:
        return _numpy_matrices(rows, cols, n, dtype, cos_scale, sin_scale, weights)
    m = _ops.iota((n,), 0, dt.int64)
    ang = _ops.cast(m, dt.float64) * (2 * math.pi / n)
    zero = _ops.zeros_like(ang)
    cos_t = _ops.where((4 * m) % (2 * n) == n, zero, _ops.cos(ang) * cos_scale)  # m = n/4 or 3n/4
    sin_t = _ops.where((2 * m) % n == 0, zero, _ops.sin(ang) * sin_scale)  # m = 0 or n/2
    idx = _ops.reshape((_ops.iota((rows, cols), 0, dt.int64) * _ops.iota((rows, cols), 1, dt.int64)) % n, (-1,))
    cos, sin = (_ops.reshape(_ops.take(t, idx, 0), (rows, cols)) for t in (cos_t, sin_t))
    if weights:
        k = _ops.iota((rows, 1), 0, dt.int64)
        w = _ops.where((k == 0) | (2 * k == n), _ops.full((rows, 1), 1.0, dt.float64),
                       _ops.full((rows, 1), 2.0, dt.float64))
        cos, sin = cos * w, sin * w
    return _ops.cast(cos, dtype), _ops.cast(sin, dtype)


@functools.lru_cache(maxsize=64)
def _numpy_matrices(rows: int, cols: int, n: int, dtype: dt.DType, cos_scale: float, sin_scale: float,
                    weights: bool) -> tuple[Tensor, Tensor]:
    m = (np.arange(rows, dtype=np.int64)[:, None] * np.arange(cols, dtype=np.int64)[None, :]) % n
    ang = m * (2 * math.pi / n)
    cos = np.where((4 * m) % (2 * n) == n, 0.0, np.cos(ang) * cos_scale)
    sin = np.where((2 * m) % n == 0, 0.0, np.sin(ang) * sin_scale)
    if weights:
        k = np.arange(rows)[:, None]
        w = np.where((k == 0) | (2 * k == n), 1.0, 2.0)
        cos, sin = cos * w, sin * w
    return Tensor(cos, dtype=dtype), Tensor(sin, dtype=dtype)


def _check_dim(fn: str, dim: int, ndim: int) -> int:
    if not -ndim <= dim < max(ndim, 1):
        raise IndexError(f"{fn}: Dimension out of range (expected to be in range of [{-ndim}, {ndim - 1}], "
                         f"but got {dim})")
    return dim % ndim


def _length(fn: str, n: Any, default: int) -> int:
    n = default if n is None else int(n)
    if n < 1:
        raise RuntimeError(f"{fn}: Invalid number of data points ({n}) specified")
    return n


def _along(x: Tensor, dim: int, f: Any) -> Tensor:
    """f applied to x with `dim` moved last (f maps the last axis), moved back."""
    last = x.ndim - 1
    y = f(x if dim == last else _ops.movedim(x, dim, last))
    return y if dim == last else _ops.movedim(y, last, dim)


def _real_input(fn: str, x: Any) -> Tensor:
    if isinstance(x, ComplexTensor):
        raise RuntimeError(f"{fn} expects a real input tensor, but got a complex one (use fft for complex input)")
    x = x if isinstance(x, Tensor) else _ops.as_tensor(x)
    return x if x.dtype.is_float else _ops.cast(x, _ops.get_default_dtype())


def _complex_input(x: Any) -> ComplexTensor:
    z = _lift(x if isinstance(x, (ComplexTensor, Tensor)) else _ops.as_tensor(x))
    if not z.real.dtype.is_float:
        d = _ops.get_default_dtype()
        z = ComplexTensor(_ops.cast(z.real, d), _ops.cast(z.imag, d))
    return z


DIRECT_MAX = 128
"""Transforms up to this many points are one product with the DFT matrix; longer ones split (below)."""


def _factor(n: int) -> int | None:
    """n1 of the split n = n1 n2 (the largest divisor of n up to sqrt(n), at least 4), or None for a
    direct transform (short, or n has no such divisor: a prime, twice a prime)."""
    if n <= DIRECT_MAX:
        return None
    n1 = max((d for d in range(4, math.isqrt(n) + 1) if n % d == 0), default=None)
    return n1


def _pad_last(x: Tensor, n: int) -> Tensor:
    if x.shape[-1] == n:
        return x
    if x.shape[-1] > n:
        return x[..., :n]
    return _ops.concatenate([x, _ops.zeros((*x.shape[:-1], n - x.shape[-1]), dtype=x.dtype)], -1)


def _dft(re: Tensor, im: Tensor | None, n: int, inverse: bool, s: float, cols: int | None = None
         ) -> tuple[Tensor, Tensor]:
    """(real, imaginary) of s * sum_j z_j e^{-+ 2 pi i jk / n} along the last axis (zero-padded or cut to n
    points; `im` None for a real signal), for the first `cols` frequencies k (all n by default).

    Short transforms are one product with the DFT matrix; a long one is split as Cooley and Tukey's
    four-step FFT does, n = n1 n2 with j = n2 j1 + j2 and k = k1 + n1 k2: n2 transforms of n1 points,
    a pointwise twiddle e^{-+ 2 pi i j2 k1 / n}, then n1 transforms of n2 points, each again a product
    (or split): O(n (n1 + n2)) multiply-adds instead of O(n^2), still GEMMs."""
    cols = n if cols is None else cols
    n1 = _factor(n)
    if n1 is None:
        rows = min(re.shape[-1], n)
        cut = (lambda y: y[..., :rows]) if rows < re.shape[-1] else (lambda y: y)
        if im is None:  # the forward sign goes into the matrix: -(x @ sin) made the exact zeros of the
            # zero and Nyquist frequencies -0.0 (torch's are +0.0, so angle() gave -pi where torch gives pi)
            cos, sin = _matrices(rows, cols, n, re.dtype, s, s if inverse else -s)
            return cut(re) @ cos, cut(re) @ sin
        cos, sin = _matrices(rows, cols, n, re.dtype, s, s)
        both = cut(_ops.stack([re, im], 0))
        c, si = both @ cos, both @ sin
        if inverse:  # e^{+i theta}
            return c[0] - si[1], c[1] + si[0]
        return c[0] + si[1], c[1] - si[0]
    n2 = n // n1
    lead = re.shape[:-1]

    def grid(x: Tensor) -> Tensor:  # (..., n) -> (..., n2, n1): [j2, j1] = x[n2 j1 + j2]
        return _ops.transpose(_ops.reshape(_pad_last(x, n), (*lead, n1, n2)), (*range(len(lead)), len(lead) + 1,
                                                                                 len(lead)))
    a, b = _dft(grid(re), None if im is None else grid(im), n1, inverse, s)  # [j2, k1]
    cos, sin = _matrices(n2, n1, n, re.dtype, 1.0, 1.0)  # the twiddles, cos and sin of 2 pi j2 k1 / n
    if inverse:
        a, b = a * cos - b * sin, b * cos + a * sin
    else:
        a, b = a * cos + b * sin, b * cos - a * sin
    swap = (*range(len(lead)), len(lead) + 1, len(lead))
    a, b = _dft(_ops.transpose(a, swap), _ops.transpose(b, swap), n2, inverse, 1.0)  # [k1, k2]
    a, b = (_ops.reshape(_ops.transpose(t, swap), (*lead, n)) for t in (a, b))  # k = k1 + n1 k2
    return (a, b) if cols == n else (a[..., :cols], b[..., :cols])


def _c2c(fn: str, x: Any, n: Any, dim: int, norm: str | None, inverse: bool) -> ComplexTensor:
    z = _complex_input(x)
    d = _check_dim(fn, dim, z.ndim)
    n = _length(fn, n, z.shape[d])
    s = _scale(norm, n, inverse, fn)
    last = z.ndim - 1
    re, im = (t if d == last else _ops.movedim(t, d, last) for t in (z.real, z.imag))
    re, im = _dft(re, im, n, inverse, s)
    return ComplexTensor(*(t if d == last else _ops.movedim(t, last, d) for t in (re, im)))


def _r2c(fn: str, x: Any, n: Any, dim: int, norm: str | None, inverse: bool) -> ComplexTensor:
    """The transform of a real input at its n // 2 + 1 non-negative frequencies."""
    x = _real_input(fn, x)
    d = _check_dim(fn, dim, x.ndim)
    n = _length(fn, n, x.shape[d])
    s = _scale(norm, n, inverse, fn)
    last = x.ndim - 1
    re, im = _dft(x if d == last else _ops.movedim(x, d, last), None, n, inverse, s, cols=n // 2 + 1)
    return ComplexTensor(*(t if d == last else _ops.movedim(t, last, d) for t in (re, im)))


def _c2r(fn: str, x: Any, n: Any, dim: int, norm: str | None, inverse: bool) -> Tensor:
    """The real signal of n points whose non-negative frequencies `x` holds (the rest by Hermitian
    symmetry): x_j = sum_k w_k Re(X_k e^{+- 2 pi i jk / n}), w_k = 2 but for the zero and Nyquist
    frequencies, whose imaginary parts are ignored, as torch and numpy do. Long signals: the real part
    of the full spectrum's transform, its upper half the conjugate mirror of the lower."""
    z = _complex_input(x)
    d = _check_dim(fn, dim, z.ndim)
    m = z.shape[d]
    n = _length(fn, n, 2 * (m - 1))
    s = _scale(norm, n, inverse, fn)
    last = z.ndim - 1
    re, im = (t if d == last else _ops.movedim(t, d, last) for t in (z.real, z.imag))
    if _factor(n) is None:
        rows = min(m, n // 2 + 1)
        cos, sin = _matrices(rows, n, n, re.dtype, s, -s if inverse else s, weights=True)
        y = re[..., :rows] @ cos + im[..., :rows] @ sin
    else:
        half = n // 2 + 1
        re, im = _pad_last(re, half), _pad_last(im, half)
        if n > 2:  # X[n - k] = conj(X[k]) for 0 < k < (n + 1) / 2
            re = _ops.concatenate([re, _ops.flip(re[..., 1:(n + 1) // 2], (-1,))], -1)
            im = _ops.concatenate([im, -_ops.flip(im[..., 1:(n + 1) // 2], (-1,))], -1)
        y = _dft(re, im, n, inverse, s)[0]
    return y if d == last else _ops.movedim(y, last, d)


# -- one dimension ---------------------------------------------------------------------------------

def fft(input: Any, n: int | None = None, dim: int = -1, norm: str | None = None) -> ComplexTensor:
    """torch.fft.fft: the discrete Fourier transform along `dim`, zero-padded or cut to `n` points."""
    return _c2c("fft", input, n, dim, norm, inverse=False)


def ifft(input: Any, n: int | None = None, dim: int = -1, norm: str | None = None) -> ComplexTensor:
    """torch.fft.ifft: the inverse transform (scaled by 1/n by default)."""
    return _c2c("ifft", input, n, dim, norm, inverse=True)


def rfft(input: Any, n: int | None = None, dim: int = -1, norm: str | None = None) -> ComplexTensor:
    """torch.fft.rfft: the transform of a real signal, its n // 2 + 1 non-negative frequencies."""
    return _r2c("rfft", input, n, dim, norm, inverse=False)


def irfft(input: Any, n: int | None = None, dim: int = -1, norm: str | None = None) -> Tensor:
    """torch.fft.irfft: the real signal of n = 2 (m - 1) points (or `n`) from its m non-negative frequencies."""
    return _c2r("irfft", input, n, dim, norm, inverse=True)


def hfft(input: Any, n: int | None = None, dim: int = -1, norm: str | None = None) -> Tensor:
    """torch.fft.hfft: the (real) transform of a Hermitian-symmetric signal given by its first half."""
    return _c2r("hfft", input, n, dim, norm, inverse=False)


def ihfft(input: Any, n: int | None = None, dim: int = -1, norm: str | None = None) -> ComplexTensor:
    """torch.fft.ihfft: the inverse of hfft, the first n // 2 + 1 points of a real signal's inverse transform."""
    return _r2c("ihfft", input, n, dim, norm, inverse=True)


# -- several dimensions ------------------------------------------------------------------------------

def _dims_and_sizes(fn: str, x: Any, s: Sequence[int] | None, dim: Any, default_last: int | None) -> tuple[list, list]:
    """torch's (s, dim) rules: dim defaults to the last len(s) dims, or to `default_last` dims (all when None)."""
    ndim = x.ndim
    if dim is None:
        count = len(s) if s is not None else (ndim if default_last is None else default_last)
        dims = list(range(ndim - count, ndim))
    else:
        dims = [dim] if isinstance(dim, int) else list(dim)
    dims = [_check_dim(fn, d, ndim) for d in dims]
    if len(set(dims)) != len(dims):
        raise RuntimeError(f"{fn}: dims must be unique, got {tuple(dims)}")
    if s is not None and len(s) != len(dims):
        raise RuntimeError(f"{fn}: When given, dim and shape arguments must have the same length (got s={tuple(s)}, "
                           f"dim={tuple(dims)})")
    sizes = list(s) if s is not None else [None] * len(dims)
    return dims, [None if v == -1 else v for v in sizes]


def _nd_c2c(fn: str, x: Any, s: Any, dim: Any, norm: Any, inverse: bool, default_last: int | None) -> ComplexTensor:
    z = _complex_input(x)
    dims, sizes = _dims_and_sizes(fn, z, s, dim, default_last)
    for d, n in zip(dims, sizes):
        z = _c2c(fn, z, n, d, norm, inverse)
    return z


def fft2(input: Any, s: Sequence[int] | None = None, dim: Sequence[int] = (-2, -1), norm: str | None = None):
    """torch.fft.fft2: fft over the last two dims (or `dim`)."""
    return _nd_c2c("fft2", input, s, dim, norm, False, 2)


def ifft2(input: Any, s: Sequence[int] | None = None, dim: Sequence[int] = (-2, -1), norm: str | None = None):
    return _nd_c2c("ifft2", input, s, dim, norm, True, 2)


def fftn(input: Any, s: Sequence[int] | None = None, dim: Any = None, norm: str | None = None) -> ComplexTensor:
    """torch.fft.fftn: fft over `dim` (default: all dims, or the last len(s))."""
    return _nd_c2c("fftn", input, s, dim, norm, False, None)


def ifftn(input: Any, s: Sequence[int] | None = None, dim: Any = None, norm: str | None = None) -> ComplexTensor:
    return _nd_c2c("ifftn", input, s, dim, norm, True, None)


def _nd_r2c(fn: str, x: Any, s: Any, dim: Any, norm: Any, default_last: int | None,
            inverse: bool = False) -> ComplexTensor:
    """rfftn (ihfftn with `inverse`: the one-sided half of ifftn of a real signal)."""
    x = _real_input(fn, x)
    dims, sizes = _dims_and_sizes(fn, x, s, dim, default_last)
    z = _r2c(fn, x, sizes[-1], dims[-1], norm, inverse=inverse)  # the last dim halves, the others are full
    for d, n in zip(dims[:-1], sizes[:-1]):
        z = _c2c(fn, z, n, d, norm, inverse=inverse)
    return z


def _nd_c2r(fn: str, x: Any, s: Any, dim: Any, norm: Any, default_last: int | None, inverse: bool = True) -> Tensor:
    """irfftn (hfftn without `inverse`: the forward transform of a signal Hermitian-symmetric in every
    transformed dim, given by its half along the last one; the other dims' transforms keep that symmetry
    in the last dim, so they go first)."""
    z = _complex_input(x)
    dims, sizes = _dims_and_sizes(fn, z, s, dim, default_last)
    for d, n in zip(dims[:-1], sizes[:-1]):
        z = _c2c(fn, z, n, d, norm, inverse=inverse)
    return _c2r(fn, z, sizes[-1], dims[-1], norm, inverse=inverse)


def rfft2(input: Any, s: Sequence[int] | None = None, dim: Sequence[int] = (-2, -1), norm: str | None = None):
    """torch.fft.rfft2: rfft over the last dim of `dim`, fft over the other."""
    return _nd_r2c("rfft2", input, s, dim, norm, 2)


def irfft2(input: Any, s: Sequence[int] | None = None, dim: Sequence[int] = (-2, -1), norm: str | None = None):
    """torch.fft.irfft2: the inverse of rfft2 (`s` gives the output's sizes; the last defaults to 2 (m - 1))."""
    return _nd_c2r("irfft2", input, s, dim, norm, 2)


def rfftn(input: Any, s: Sequence[int] | None = None, dim: Any = None, norm: str | None = None) -> ComplexTensor:
    return _nd_r2c("rfftn", input, s, dim, norm, None)


def irfftn(input: Any, s: Sequence[int] | None = None, dim: Any = None, norm: str | None = None) -> Tensor:
    return _nd_c2r("irfftn", input, s, dim, norm, None)


def hfft2(input: Any, s: Sequence[int] | None = None, dim: Sequence[int] = (-2, -1), norm: str | None = None) -> Tensor:
    """torch.fft.hfft2: the real 2-d transform of a Hermitian-symmetric signal given by the half of its last dim."""
    return _nd_c2r("hfft2", input, s, dim, norm, 2, inverse=False)


def ihfft2(input: Any, s: Sequence[int] | None = None, dim: Sequence[int] = (-2, -1), norm: str | None = None):
    """torch.fft.ihfft2: the inverse of hfft2, ifft2 of a real signal at the n // 2 + 1 first points of the last dim."""
    return _nd_r2c("ihfft2", input, s, dim, norm, 2, inverse=True)


def hfftn(input: Any, s: Sequence[int] | None = None, dim: Any = None, norm: str | None = None) -> Tensor:
    """torch.fft.hfftn: hfft over `dim` (default: all dims, or the last len(s)); the last one is the halved one."""
    return _nd_c2r("hfftn", input, s, dim, norm, None, inverse=False)


def ihfftn(input: Any, s: Sequence[int] | None = None, dim: Any = None, norm: str | None = None) -> ComplexTensor:
    """torch.fft.ihfftn: the inverse of hfftn (ifftn of a real signal, one-sided in the last dim)."""
    return _nd_r2c("ihfftn", input, s, dim, norm, None, inverse=True)


# -- frequencies and shifts --------------------------------------------------------------------------

def _freq_args(name: str, n: int, d: float, dtype: Any) -> tuple[Any, float]:
    """The result dtype (torch refuses an integer one: every frequency would truncate) and torch's
    scale 1 / (n d), which is inf (nan at frequency 0) when n or d is 0 rather than a ZeroDivisionError."""
    dtype = dt.dtype(dtype) if dtype is not None else _ops.get_default_dtype()
    if not dtype.is_float:
        raise RuntimeError(f"{name} requires a floating point or complex dtype, got {dtype}")
    nd = n * d
    return dtype, (1.0 / nd if nd != 0 else math.copysign(math.inf, nd))


def fftfreq(n: int, d: float = 1.0, *, dtype: Any = None, device: Any = None, **kw: Any) -> Tensor:
    """torch.fft.fftfreq: [0, 1, ..., (n - 1) // 2, -(n // 2), ..., -1] / (d n)."""
    dtype, scale = _freq_args("fftfreq", n, d, dtype)
    k = _ops.arange(n, dtype=dt.int64)
    k = _ops.where(k <= (n - 1) // 2, k, k - n)
    with np.errstate(invalid="ignore"):
        return _ops.place(_ops.cast(_ops.cast(k, dt.float64) * scale, dtype), device)


def rfftfreq(n: int, d: float = 1.0, *, dtype: Any = None, device: Any = None, **kw: Any) -> Tensor:
    """torch.fft.rfftfreq: [0, 1, ..., n // 2] / (d n)."""
    dtype, scale = _freq_args("rfftfreq", n, d, dtype)
    k = _ops.arange(n // 2 + 1, dtype=dt.float64)
    with np.errstate(invalid="ignore"):
        return _ops.place(_ops.cast(k * scale, dtype), device)


def _shift(x: Any, dim: Any, sign: int) -> Any:
    dims = list(range(x.ndim)) if dim is None else [dim] if isinstance(dim, int) else list(dim)
    shifts = [sign * (x.shape[d] // 2) if sign > 0 else -(x.shape[d] // 2) for d in dims]
    return x.roll(shifts, dims)


def fftshift(input: Any, dim: Any = None) -> Any:
    """torch.fft.fftshift: the zero frequency moved to the middle."""
    return _shift(input, dim, 1)


def ifftshift(input: Any, dim: Any = None) -> Any:
    """torch.fft.ifftshift: the inverse of fftshift."""
    return _shift(input, dim, -1)


__all__ = ["fft", "fft2", "fftfreq", "fftn", "fftshift", "hfft", "hfft2", "hfftn", "ifft", "ifft2", "ifftn",
           "ifftshift", "ihfft", "ihfft2", "ihfftn", "irfft", "irfft2", "irfftn", "rfft", "rfft2", "rfftfreq", "rfftn"]

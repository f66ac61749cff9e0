"""Reference rules of pooling (ceil_mode=False; windows never run past the padded input)."""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .core import REFERENCE, rule  # noqa: F401  (REFERENCE: tests reach the rules through this module)


def _pool_windows(x: np.ndarray, attrs: dict, fill: Any) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, OH, OW, KH*KW) windows of x padded with `fill`, and a (OH, OW, KH*KW) mask of the
    window entries that are real input rather than padding. Window entries are in row-major order."""
    (kh, kw), (sh, sw), (ph, pw) = attrs["kernel"], attrs["stride"], attrs["padding"]
    n, c, h, w = x.shape
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    win = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, : sh * (oh - 1) + 1 : sh, : sw * (ow - 1) + 1 : sw]
    valid = np.zeros((h + 2 * ph, w + 2 * pw), bool)
    valid[ph : ph + h, pw : pw + w] = True
    vwin = sliding_window_view(valid, (kh, kw))[: sh * (oh - 1) + 1 : sh, : sw * (ow - 1) + 1 : sw]
    return win.reshape(n, c, oh, ow, kh * kw), vwin.reshape(oh, ow, kh * kw)


def _lowest(dtype: np.dtype) -> Any:
    if dtype.kind == "f":
        return -np.inf
    if dtype.kind == "b":
        return False
    return np.iinfo(dtype).min


@rule("max_pool2d")
def _max_pool2d(attrs: dict, x: np.ndarray) -> np.ndarray:
    """Max over each kernel window; padding counts as -inf (never wins); a nan in a window gives nan."""
    taps = _tiles(x, attrs)
    if taps is not None:
        return functools.reduce(np.maximum, taps)
    win, _ = _pool_windows(x, attrs, _lowest(x.dtype))
    return win.max(axis=-1)


@rule("max_pool2d_grad")
def _max_pool2d_grad(attrs: dict, x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """dx of max_pool2d: each window's dy goes to its FIRST maximum in row-major window order
    (PyTorch's CPU choice; nan counts as the maximum), padding never receives gradient even when
    every real entry is -inf, and overlapping windows accumulate."""
    kw, (sh, sw), (ph, pw) = attrs["kernel"][1], attrs["stride"], attrs["padding"]
    n, c, h, w = x.shape
    taps = _tiles(x, attrs)
    if taps is not None:
        return _max_pool2d_grad_tiles(attrs, x, taps, dy)
    win, valid = _pool_windows(x, attrs, _lowest(x.dtype))
    m = win.max(axis=-1, keepdims=True)
    hit = valid & (win == m)
    if x.dtype.kind == "f":
        hit |= valid & np.isnan(m) & np.isnan(win)
    k = np.argmax(hit, axis=-1)  # first hit; every window has one
    oh, ow = k.shape[2:]
    rows = np.arange(oh)[:, None] * sh + k // kw - ph
    cols = np.arange(ow)[None, :] * sw + k % kw - pw
    flat = (np.arange(n * c).reshape(n, c, 1, 1) * h + rows) * w + cols
    # overlapping windows accumulate: bincount sums the scattered values (far faster than np.add.at)
    dx = np.bincount(flat.ravel(), weights=dy.ravel().astype(np.float64), minlength=n * c * h * w)
    return dx.reshape(n, c, h, w)


def _tiles(x: np.ndarray, attrs: dict) -> list[np.ndarray] | None:
    """For the common pooling case — windows that tile the input (stride == kernel, no padding) —
    one strided view per window tap, in row-major tap order (x[..., i::kh, j::kw] cropped to whole
    windows); else None. Elementwise work over these views is much faster than reducing a tiny
    trailing window axis."""
    (kh, kw), (sh, sw), (ph, pw) = attrs["kernel"], attrs["stride"], attrs["padding"]
    if (kh, kw) != (sh, sw) or ph or pw:
        return None
    h, w = x.shape[2:]
    oh, ow = h // kh, w // kw
    return [x[:, :, i : i + kh * oh : kh, j : j + kw * ow : kw] for i in range(kh) for j in range(kw)]


def _max_pool2d_grad_tiles(attrs: dict, x: np.ndarray, taps: list[np.ndarray], dy: np.ndarray) -> np.ndarray:
    """Non-overlapping windows need no accumulation: dy goes to the first tap (row-major) equal to
    its window's maximum (nan counts as the maximum, as in the general rule). The nan test only
    runs when some window holds a nan."""
    kh, kw = attrs["kernel"]
    m = functools.reduce(np.maximum, taps)
    nan_m = np.isnan(m) if x.dtype.kind == "f" else None
    if nan_m is not None and not nan_m.any():
        nan_m = None
    dx = np.zeros(x.shape, dy.dtype)
    bits = np.dtype(f"u{dy.dtype.itemsize}")  # dy's bit patterns times 0/1: where(hit, dy, 0), no branch
    taken = np.zeros(m.shape, bool)
    for t, tap in enumerate(taps):
        hit = tap == m
        if nan_m is not None:
            hit |= nan_m & np.isnan(tap)
        hit = np.greater(hit, taken, out=hit)  # hit and not taken
        taken |= hit
        i, j = divmod(t, kw)
        plane = dx.view(bits)[:, :, i : i + kh * m.shape[2] : kh, j : j + kw * m.shape[3] : kw]
        np.multiply(dy.view(bits), hit, out=plane)
    return dx


def _avg_divisor(valid: np.ndarray, attrs: dict) -> np.ndarray:
    kh, kw = attrs["kernel"]
    if attrs["count_include_pad"]:
        return np.full(valid.shape[:2], kh * kw, np.int64)
    return valid.sum(axis=-1)


@rule("avg_pool2d")
def _avg_pool2d(attrs: dict, x: np.ndarray) -> np.ndarray:
    """Mean over each window, padding as zeros. The divisor is KH*KW with count_include_pad (the
    default, like torch), else the number of real input entries in the window. Integer inputs
    average in float64 and truncate toward zero."""
    win, valid = _pool_windows(x, attrs, 0)
    acc = x.dtype if x.dtype.kind == "f" else np.float64
    return (win.sum(axis=-1, dtype=acc) / _avg_divisor(valid, attrs)).astype(acc, copy=False)


@rule("avg_pool2d_grad")
def _avg_pool2d_grad(attrs: dict, dy: np.ndarray) -> np.ndarray:
    """dx of avg_pool2d: each window spreads dy / divisor evenly over its entries; padding
    entries' share is dropped, overlapping windows accumulate."""
    (kh, kw), (sh, sw), (ph, pw) = attrs["kernel"], attrs["stride"], attrs["padding"]
    n, c, h, w = attrs["input_shape"]
    _, valid = _pool_windows(np.zeros((1, 1, h, w), bool), attrs, False)
    oh, ow = dy.shape[2:]
    acc = dy.dtype if dy.dtype.kind == "f" else np.float64
    share = (dy / _avg_divisor(valid, attrs)).astype(acc, copy=False)
    dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), acc)
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw] += share
    return dxp[:, :, ph : ph + h, pw : pw + w]


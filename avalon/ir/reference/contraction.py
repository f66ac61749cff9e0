"""Reference rules of the contractions: matmul, and conv2d with its two gradient forms (im2col)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .core import rule


@rule("matmul")
def _matmul(attrs: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(..., M, K) @ (..., K, N) with equal batch dims."""
    return np.matmul(x, y)


def _conv_geometry(attrs: dict) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], int]:
    return tuple(attrs["stride"]), tuple(attrs["padding"]), tuple(attrs["dilation"]), attrs["groups"]


def _patches(x: np.ndarray, kh: int, kw: int, oh: int, ow: int, attrs: dict) -> np.ndarray:
    """The conv2d input patches as a (groups, Cg*KH*KW, OH*OW*N) matrix, batch innermost.

    Entry [g, (c, i, j), (p, q, n)] is x_padded[n, g*Cg + c, p*sh + i*dh, q*sw + j*dw], so conv2d is
    one matmul per group. It is filled by one slice copy per kernel tap (i, j); with the batch last
    each copy moves runs of OW*N contiguous values, and numpy's cost per run, not memory bandwidth,
    is what dominates an im2col of small images.
    """
    (sh, sw), (ph, pw), (dh, dw), g = _conv_geometry(attrs)
    n, c, h, w = x.shape
    xp = np.zeros((c, h + 2 * ph, w + 2 * pw, n), x.dtype)
    xp[:, ph : ph + h, pw : pw + w] = x.transpose(1, 2, 3, 0)
    cols = np.empty((c, kh, kw, oh, ow, n), x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = xp[:, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw]
    return cols.reshape(g, (c // g) * kh * kw, oh * ow * n)


def _batch_last(dy: np.ndarray, g: int) -> np.ndarray:
    """dy (N, O, OH, OW) as the (groups, O/groups, OH*OW*N) matrix that matches `_patches`' columns."""
    n, o, oh, ow = dy.shape
    return np.ascontiguousarray(dy.transpose(1, 2, 3, 0)).reshape(g, o // g, oh * ow * n)


def _batch_first(y: np.ndarray, n: int) -> np.ndarray:
    """A (C, H, W, N) array back in NCHW, contiguous (later elementwise ops run fastest on it).
    No reshape(-1, ...): with batch 0 the -1 would be ambiguous."""
    assert y.ndim == 4 and y.shape[3] == n
    return np.ascontiguousarray(y.transpose(3, 0, 1, 2))


@rule("conv2d")
def _conv2d(attrs: dict, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Cross-correlation, NCHW input and OIHW weight, like torch.nn.functional.conv2d:
    y[n, o, p, q] = sum_{c, i, j} x_pad[n, g(o)*Cg + c, p*sh + i*dh, q*sw + j*dw] * w[o, c, i, j],
    zero padding, group g(o) = o // (O / groups). Computed as im2col + one matmul per group."""
    n = x.shape[0]
    o, cg, kh, kw = w.shape
    g = attrs["groups"]
    oh, ow = _conv_out_hw(x.shape[2:], (kh, kw), attrs)
    cols = _patches(x, kh, kw, oh, ow, attrs)  # g, Cg*KH*KW, OH*OW*N
    y = np.matmul(w.reshape(g, o // g, cg * kh * kw), cols)  # g, Og, OH*OW*N
    return _batch_first(y.reshape(o, oh, ow, n), n)


def _conv_out_hw(hw: Sequence[int], k: Sequence[int], attrs: dict) -> tuple[int, int]:
    (sh, sw), (ph, pw), (dh, dw), _ = _conv_geometry(attrs)
    return ((hw[0] + 2 * ph - dh * (k[0] - 1) - 1) // sh + 1,
            (hw[1] + 2 * pw - dw * (k[1] - 1) - 1) // sw + 1)


@rule("conv2d_grad_input")
def _conv2d_grad_input(attrs: dict, dy: np.ndarray, w: np.ndarray) -> np.ndarray:
    """dL/dx of conv2d given dL/dy and the weight: the adjoint of conv2d's im2col. One matmul per
    group gives the gradient of every patch entry (w^T @ dy); each kernel tap's slice is then added
    back where `_patches` read it, in a padded buffer that is cropped at the end. Input rows/columns
    no window reads (stride leftovers) stay 0."""
    n, c, h, wd = attrs["input_shape"]
    o, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw), g = _conv_geometry(attrs)
    oh, ow = dy.shape[2:]
    wg = w.reshape(g, o // g, cg * kh * kw)
    dcols = np.matmul(wg.transpose(0, 2, 1), _batch_last(dy, g)).reshape(c, kh, kw, oh, ow, n)
    dxp = np.zeros((c, h + 2 * ph, wd + 2 * pw, n), dcols.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[:, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw] += dcols[:, i, j]
    return _batch_first(dxp[:, ph : ph + h, pw : pw + wd], n)


@rule("conv2d_grad_weight")
def _conv2d_grad_weight(attrs: dict, x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """dL/dw of conv2d given the input and dL/dy: dw[o, c, i, j] = sum over n, p, q of
    dy[n, o, p, q] * x_pad[n, g(o)*Cg + c, p*sh + i*dh, q*sw + j*dw], i.e. dy @ im2col(x)^T per group."""
    o, cg, kh, kw = attrs["weight_shape"]
    g = attrs["groups"]
    oh, ow = dy.shape[2:]
    cols = _patches(x, kh, kw, oh, ow, attrs)  # g, Cg*KH*KW, OH*OW*N
    return np.matmul(_batch_last(dy, g), cols.transpose(0, 2, 1)).reshape(o, cg, kh, kw)


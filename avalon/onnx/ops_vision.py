"""ONNX image ops (resizing, sampling grids, 3-d convolution and pooling, ROI ops) as Avalon ops."""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import ops
from ..ir import dtypes as dt
from ..tensor import Tensor, _mark_literal
from .table import Node, T, axis, ints, onnx_op, static


def literal(a: np.ndarray) -> Tensor:
    """A constant computed from static shapes and attributes: literal data of the program, which a
    compiled graph keeps (not an array captured from outside, which would force a retrace per call)."""
    t = Tensor(np.asarray(a))
    _mark_literal(t)
    return t


def _s(node: Node, key: str, default: str) -> str:
    v = node.attr(key, default)
    return v.decode() if isinstance(v, bytes) else v


# -- Resize / Upsample ----------------------------------------------------------------------
# Resize is separable: each resized axis is a 1-d resampling whose source indices and weights depend
# only on static shapes, so they are computed here with numpy (mirroring onnx's reference) and the
# model sees one gather and a weighted sum per axis -- ordinary ops that trace and differentiate.

Coeffs = Callable[[float, float], np.ndarray]


def _nearest(rounding: str) -> Coeffs:
    def f(r: float, scale: float) -> np.ndarray:
        if r == 1 or rounding == "ceil":  # r == 1: the source coordinate is an integer
            return np.array([0.0, 1.0])
        if rounding == "floor":
            return np.array([1.0, 0.0])
        up = r > 0.5 if rounding == "round_prefer_floor" else r >= 0.5
        return np.array([0.0, 1.0]) if up else np.array([1.0, 0.0])
    return f


def _cubic_kernel(x: np.ndarray, a: float) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def _linear(antialias: bool) -> Coeffs:
    def f(r: float, scale: float) -> np.ndarray:
        if not antialias:
            return np.array([1 - r, r])
        s = min(scale, 1.0)
        start = int(np.floor(-1 / s) + 1)
        c = np.clip(1 - np.abs((np.arange(start, 2 - start) - r) * s), 0, 1)
        return c / c.sum()
    return f


def _cubic(a: float, antialias: bool) -> Coeffs:
    def f(r: float, scale: float) -> np.ndarray:
        s = min(scale, 1.0) if antialias else 1.0
        start = int(np.floor(-2 / s) + 1) if antialias else -1
        c = _cubic_kernel(s * (np.arange(start, 2 - start) - r), a)
        return c / c.sum() if antialias else c
    return f


def _source_coords(mode: str, out: int, size: int, scale: float, roi: tuple[float, float]) -> np.ndarray:
    """Each output index's coordinate in the input (ONNX's coordinate_transformation_mode)."""
    y = np.arange(out, dtype=np.float64)
    width = scale * size
    if mode == "align_corners":
        return np.zeros(out) if width == 1 else y * (size - 1) / (width - 1)
    if mode == "asymmetric":
        return y / scale
    if mode == "tf_crop_and_resize":
        lo, hi = roi
        x = np.full(out, (hi - lo) * (size - 1) / 2) if width == 1 else y * (hi - lo) * (size - 1) / (width - 1)
        return x + lo * (size - 1)
    if mode == "pytorch_half_pixel":
        return np.full(out, -0.5) if width == 1 else (y + 0.5) / scale - 0.5
    if mode == "half_pixel":
        return (y + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        return size / 2 * (1 - out / width) + (y + 0.5) / scale - 0.5
    raise ValueError(mode)


def _axis_weights(coeffs: Coeffs, mode: str, out: int, size: int, scale: float, roi: tuple[float, float],
                  exclude_outside: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The (out, size) resampling matrix of one axis, and which outputs are extrapolated (or None)."""
    x = _source_coords(mode, out, size, scale, roi)
    base = np.floor(x)
    ratios = np.where(x == base, 1.0, x - base)
    c = np.stack([coeffs(float(r), scale) for r in ratios]) if out else np.zeros((0, 2))
    n = c.shape[1]
    # the n taps nearest x, ties to the left (onnx's reference, edge-padded)
    xp = x + math.ceil(n / 2)
    p = np.floor(xp)
    frac = xp - p
    if n % 2 == 0:
        first = p + np.where(frac == 0, -(n // 2), -(n // 2) + 1)
    else:
        first = p - (n - 1) // 2 + (frac > 0.5)
    idx = first[:, None].astype(np.int64) + np.arange(n) - math.ceil(n / 2)
    if exclude_outside:
        c = np.where((idx < 0) | (idx >= size), 0.0, c)
        total = c.sum(-1, keepdims=True)
        c = c / np.where(total == 0, 1.0, total)
    w = np.zeros((out, size))
    np.add.at(w, (np.repeat(np.arange(out), n), np.clip(idx, 0, size - 1).reshape(-1)), c.reshape(-1))
    extrapolated = (x < 0) | (x > size - 1) if mode == "tf_crop_and_resize" else None
    return w, extrapolated


def _resample(x: Tensor, ax: int, w: np.ndarray) -> Tensor:
    """y[.., o, ..] = sum_i w[o, i] x[.., i, ..] as one gather of each row's nonzero taps and a sum."""
    out = w.shape[0]
    nz = w != 0
    k = max(1, int(nz.sum(1).max(initial=0)))
    order = np.argsort(~nz, axis=1, kind="stable")[:, :k]  # each row's nonzero columns first
    taps = np.take_along_axis(w, order, 1)
    if k == 1 and np.all(taps == 1):
        return ops.take(x, literal(order[:, 0].astype(np.int64)), ax)
    g = ops.take(x, literal(order.reshape(-1).astype(np.int64)), ax)
    g = ops.reshape(g, x.shape[:ax] + (out, k) + x.shape[ax + 1:])
    wt = ops.cast(literal(taps.reshape((out, k) + (1,) * (x.ndim - ax - 1))), x.dtype)
    return ops.sum(ops.mul(g, wt), ax + 1)


def resize(node: Node, x: Tensor, scales: list[float] | None, sizes: list[int] | None, roi: list[float] | None,
           mode: str, coord: str, rounding: str) -> Tensor:
    """Resize with full-rank scales and/or sizes and roi (2 * rank) or None."""
    r = x.ndim
    antialias = bool(node.attr("antialias", 0))
    if mode == "nearest":
        if antialias:
            raise node.unsupported("antialias is not defined for mode 'nearest'")
        coeffs = _nearest(rounding)
    elif mode == "linear":
        coeffs = _linear(antialias)
    elif mode == "cubic":
        coeffs = _cubic(float(node.attr("cubic_coeff_a", -0.75)), antialias)
    else:
        raise node.unsupported(f"mode {mode!r} is not supported")
    if mode != "nearest" and not x.dtype.is_float:
        raise node.unsupported(f"{mode} resizing of {x.dtype} needs a rounding rule ONNX leaves open")
    if coord == "tf_crop_and_resize" and roi is None:
        raise node.unsupported("tf_crop_and_resize needs the roi input")
    if scales is None:
        scales = [o / s for o, s in zip(sizes, x.shape)]
    if sizes is None:
        sizes = [int(s * n) for s, n in zip(scales, x.shape)]
    roi = roi or [0.0] * r + [1.0] * r
    extrap = float(node.attr("extrapolation_value", 0.0))
    for a in range(r):
        box = (float(roi[a]), float(roi[a + r]))
        if math.isclose(scales[a], 1.0) and sizes[a] == x.shape[a] and (coord != "tf_crop_and_resize" or (
                math.isclose(box[0], 0.0) and math.isclose(box[1], 1.0))):
            continue
        w, outside = _axis_weights(coeffs, coord, sizes[a], x.shape[a], float(scales[a]), box,
                                   bool(node.attr("exclude_outside", 0)))
        x = _resample(x, a, w)
        if outside is not None and outside.any():
            mask = literal(outside.reshape((-1,) + (1,) * (r - a - 1)))
            x = ops.where(mask, ops.full((), extrap, x.dtype), x)
    return x


def _floats(v: Any) -> list[float] | None:
    """An optional operand as floats; None when omitted or empty (ONNX's way of leaving it out)."""
    if v is None:
        return None
    a = np.asarray(static(v, "scales/roi"), np.float64).reshape(-1)
    return [float(f) for f in a] if a.size else None


@onnx_op("Resize")
def resize_(node: Node, x: Any, roi: Any = None, scales: Any = None, sizes: Any = None) -> Tensor:
    x = T(x)
    if node.opset < 11:  # Resize-10: (X, scales), asymmetric coordinates, nearest rounds down
        return _upsample(node, x, _floats(roi))
    r = x.ndim
    roi_, sc = _floats(roi), _floats(scales)
    sz = ints(sizes, "sizes") if sizes is not None and np.asarray(static(sizes, "sizes")).size else None
    if (sc is None) == (sz is None):
        raise node.unsupported("exactly one of scales and sizes must be given")
    axes = [axis(a, r) for a in node.attr("axes", range(r))]
    full_sc = [1.0] * r if sc is not None else None
    full_sz = list(x.shape) if sz is not None else None
    full_roi = [0.0] * r + [1.0] * r if roi_ is not None else None
    for i, a in enumerate(axes):
        if full_sc is not None:
            full_sc[a] = sc[i]
        if full_sz is not None:
            full_sz[a] = sz[i]
        if full_roi is not None:
            full_roi[a], full_roi[a + r] = roi_[i], roi_[i + len(axes)]
    policy = _s(node, "keep_aspect_ratio_policy", "stretch")
    if full_sz is not None and policy != "stretch":
        if policy not in ("not_larger", "not_smaller"):
            raise node.unsupported(f"keep_aspect_ratio_policy {policy!r} is not supported")
        ratios = [full_sz[a] / x.shape[a] for a in axes]
        s = min(ratios) if policy == "not_larger" else max(ratios)
        full_sc = [s if a in axes else 1.0 for a in range(r)]
        full_sz = [int(s * x.shape[a] + 0.5) if a in axes else x.shape[a] for a in range(r)]
    coord = _s(node, "coordinate_transformation_mode", "half_pixel")
    return resize(node, x, full_sc, full_sz, full_roi, _s(node, "mode", "nearest"), coord,
                  _s(node, "nearest_mode", "round_prefer_floor"))


def _upsample(node: Node, x: Tensor, scales: list[float] | None) -> Tensor:
    """Upsample (opset 7-9) and Resize-10: asymmetric coordinates, nearest rounds down."""
    scales = scales or [float(v) for v in node.attr("scales", [])]
    if len(scales) != x.ndim:
        raise node.unsupported(f"scales {scales} do not match rank {x.ndim}")
    mode = _s(node, "mode", "nearest")
    if mode == "nearest" and any(s < 1 for s in scales):
        raise node.unsupported("nearest downsampling before opset 11 has no agreed rounding rule")
    sizes = [int(s * n) for s, n in zip(scales, x.shape)]
    return resize(node, x, scales, sizes, None, mode, "asymmetric", "floor")


@onnx_op("Upsample")
def upsample(node: Node, x: Any, scales: Any = None) -> Tensor:
    return _upsample(node, T(x), _floats(scales))


# -- GridSample / AffineGrid ----------------------------------------------------------------
# N-d (2-d and 3-d) sampling as onnx's reference does it: the source coordinate is padded (clamped
# or mirrored) when it falls outside the image, then each tap's index is padded again; taps are read
# by one gather from the image laid out as (N * prod(spatial), C) and summed with their weights.
# One departure: cubic + border clamps only the taps, not the source coordinate, as torch and
# onnxruntime do (the reference clamps both; no node test case covers that combination).

def _reflect(v: Tensor, lo: float, hi: float) -> Tensor:
    """Mirror `v` at lo and hi until it lies in [lo, hi] (onnx's _gs_reflect, elementwise)."""
    span = hi - lo
    if span <= 0:
        return ops.full_like(v, lo)
    below, above = ops.lt(v, lo), ops.gt(v, hi)
    dx = ops.where(below, ops.sub(lo, v), ops.sub(v, hi))
    flips = ops.trunc(ops.div(dx, span))
    r = ops.sub(dx, ops.mul(flips, span))
    even = ops.eq(ops.remainder(flips, 2.0), 0.0)
    low_side = ops.where(even, ops.add(r, lo), ops.sub(hi, r))  # reflected from below
    high_side = ops.where(even, ops.sub(hi, r), ops.add(r, lo))
    return ops.where(below, low_side, ops.where(above, high_side, v))


def _cubic_weights(t: Tensor) -> list[Tensor]:
    """Keys' cubic convolution weights (a = -0.75) of taps -1, 0, 1, 2 at fractional offset t."""
    a = -0.75
    def near(u: Tensor) -> Tensor:
        return ops.add(ops.mul(ops.mul(ops.sub(ops.mul(u, a + 2), a + 3), u), u), 1.0)
    def far(u: Tensor) -> Tensor:
        return ops.sub(ops.mul(ops.add(ops.mul(ops.sub(ops.mul(u, a), 5 * a), u), 8 * a), u), 4 * a)
    s = ops.sub(1.0, t)
    return [far(ops.add(t, 1.0)), near(t), near(s), far(ops.add(s, 1.0))]


def grid_sample(x: Tensor, grid: Tensor, mode: str, padding: str, align: bool) -> Tensor:
    """ONNX GridSample: x (N, C, *S) read at grid (N, *O, len(S)) (normalized, last coordinate first)."""
    n, c, *dims = x.shape
    out = grid.shape[1:-1]
    k = len(dims)
    per_dim: list[list[tuple[Tensor, Tensor | None]]] = []  # per spatial dim: (index, weight) taps
    valid: list[list[Tensor | None]] = []
    for i, d in enumerate(dims):
        g = ops.squeeze(ops.slice_(grid, [0] * (k + 1) + [k - 1 - i], [n, *out, k - i]), -1)
        v = ops.mul(ops.add(g, 1.0), (d - 1) / 2) if align else ops.div(ops.sub(ops.mul(ops.add(g, 1.0), d), 1.0), 2.0)
        if mode == "nearest":
            v = ops.round(v)
        lo, hi = (0.0, d - 1.0) if align else (-0.5, d - 0.5)
        if padding == "border" and mode != "cubic":  # cubic clamps only its taps: torch and onnxruntime
            v = ops.where(ops.logical_or(ops.lt(v, lo), ops.gt(v, hi)), ops.clamp(v, 0.0, d - 1.0), v)
        elif padding == "reflection":
            v = _reflect(v, lo, hi)
        if mode == "nearest":
            taps = [(v, None)]
        else:
            f = ops.floor(v)
            t = ops.sub(v, f)
            if mode == "linear":
                taps = [(f, ops.sub(1.0, t)), (ops.add(f, 1.0), t)]
            else:
                taps = [(ops.add(f, float(o)), w) for o, w in zip((-1, 0, 1, 2), _cubic_weights(t))]
        dim_taps, dim_valid = [], []
        for idx, w in taps:
            if padding == "reflection":
                idx = _reflect(idx, lo, hi)
            ii = ops.cast(idx, dt.int64)  # truncation, as the reference's int()
            dim_valid.append(ops.logical_and(ops.ge(ii, 0), ops.lt(ii, d)) if padding == "zeros" else None)
            dim_taps.append((ops.clamp(ii, 0, d - 1), w))
        per_dim.append(dim_taps)
        valid.append(dim_valid)
    strides = [int(np.prod(dims[i + 1:])) for i in range(k)]
    base = ops.mul(ops.iota((n, *out), 0, dt.int64), int(np.prod(dims)))
    flat, weights = [], []
    for combo in itertools.product(*(range(len(t)) for t in per_dim)):
        at, w, ok = base, None, None
        for i, j in enumerate(combo):
            idx, wi = per_dim[i][j]
            at = ops.add(at, ops.mul(idx, strides[i]))
            w = wi if w is None else (w if wi is None else ops.mul(w, wi))
            m = valid[i][j]
            ok = m if ok is None else (ok if m is None else ops.logical_and(ok, m))
        if ok is not None:
            m = ops.cast(ok, x.dtype)
            w = m if w is None else ops.mul(w, m)
        flat.append(at)
        weights.append(w)
    pixels = ops.reshape(ops.movedim(x, 1, -1), (-1, c))                 # (N * prod(S), C)
    vals = ops.take(pixels, ops.stack(flat, 0), 0)                       # (K, N, *O, C)
    if weights[0] is None:
        y = ops.squeeze(vals, 0)
    else:
        y = ops.sum(ops.mul(vals, ops.expand_dims(ops.stack(weights, 0), -1)), 0)
    return ops.movedim(y, -1, 1)


_GRID_MODE = {"bilinear": "linear", "bicubic": "cubic", "linear": "linear", "cubic": "cubic", "nearest": "nearest"}


@onnx_op("GridSample")
def grid_sample_(node: Node, x: Any, grid: Any) -> Tensor:
    x, grid = T(x), T(grid)
    mode = _s(node, "mode", "linear" if node.opset >= 20 else "bilinear")
    padding = _s(node, "padding_mode", "zeros")
    if mode not in _GRID_MODE or padding not in ("zeros", "border", "reflection"):
        raise node.unsupported(f"mode {mode!r} / padding_mode {padding!r} is not supported")
    if not x.dtype.is_float:
        raise node.unsupported(f"{x.dtype} input is not supported")
    if grid.shape[-1] != x.ndim - 2 or grid.shape[0] != x.shape[0]:
        raise node.unsupported(f"grid {grid.shape} does not match input {x.shape}")
    return grid_sample(x, ops.cast(grid, x.dtype), _GRID_MODE[mode], padding, bool(node.attr("align_corners", 0)))


@onnx_op("AffineGrid")
def affine_grid(node: Node, theta: Any, size: Any) -> Tensor:
    """theta (N, k, k + 1) applied to every output position's normalized (x, y[, z], 1)."""
    theta = T(theta)
    n, _, *dims = ints(size, "size")
    align = bool(node.attr("align_corners", 0))
    lines = [np.linspace(-1, 1, d) if align else (np.arange(d) * 2 + 1) / d - 1 for d in dims]
    mesh = list(np.meshgrid(*lines, indexing="ij"))[::-1]  # x (the last dim) first
    base = np.stack(mesh + [np.ones(dims)], -1).reshape(1, -1, len(dims) + 1)
    grid = ops.matmul(ops.cast(literal(base), theta.dtype), ops.transpose(theta, 1, 2))
    return ops.reshape(grid, (n, *dims, len(dims)))


# -- pooling by gathered windows --------------------------------------------------------------
# The forms the 2-d pooling primitives do not cover (3-d, dilations, MaxPool's Indices, LpPool):
# every window's input positions are computed here (static shapes), read by one gather, and reduced.

def window_taps(size: list[int], k: list[int], s: list[int], d: list[int], lo: list[int], hi: list[int],
                ceil: bool) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """(output shape, (P, K) flat row-major input index of each window tap (-1 outside the input),
    the same in column-major order, (P, K) whether a tap is inside the padded input)."""
    coords, inside, padded = [], [], []
    for n, kk, ss, dd, a, b in zip(size, k, s, d, lo, hi):
        span = (n + a + b - dd * (kk - 1) - 1) / ss + 1
        out = int(np.floor(span))
        if ceil:
            out = int(np.ceil(span))
            if (out - 1) * ss >= n + a:  # the last window must start inside the input or the low padding
                out -= 1
        c = np.arange(out)[:, None] * ss - a + np.arange(kk)[None, :] * dd
        coords.append(c)
        inside.append((c >= 0) & (c < n))
        padded.append(c < n + b)
    r = len(size)

    def grid(parts: list[np.ndarray], combine: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
        acc = None
        for i, p in enumerate(parts):  # dims (out_0, .., out_r-1, k_0, .., k_r-1)
            shape = [1] * (2 * r)
            shape[i], shape[r + i] = p.shape
            v = p.reshape(shape)
            acc = v if acc is None else combine(acc, v)
        return acc.reshape(int(np.prod([p.shape[0] for p in parts])), -1)

    strides = [int(np.prod(size[i + 1:])) for i in range(r)]
    cm = [int(np.prod(size[:i])) for i in range(r)]
    ok = grid(inside, np.logical_and)
    flat = np.where(ok, grid([c * st for c, st in zip(coords, strides)], np.add), -1)
    flat_cm = np.where(ok, grid([c * st for c, st in zip(coords, cm)], np.add), -1)
    return [c.shape[0] for c in coords], flat, flat_cm, grid(padded, np.logical_and)


def gathered_pool(kind: str, x: Tensor, k: list[int], s: list[int], d: list[int], lo: list[int], hi: list[int],
                  ceil: bool, include_pad: bool = False, p: float = 2.0, storage_order: int = 0) -> Any:
    """'max' (-> values, ONNX Indices), 'avg' or 'lp' pooling of x (N, C, *S) over gathered windows."""
    n, c, *size = x.shape
    out, flat, flat_cm, padded = window_taps(size, k, s, d, lo, hi, ceil)
    pk = flat.shape
    ok = flat >= 0
    xs = ops.reshape(x, (n, c, -1))
    g = ops.reshape(ops.take(xs, literal(np.maximum(flat, 0).reshape(-1)), 2), (n, c, *pk))
    valid = literal(ok)
    if kind == "max":
        fill = -math.inf if x.dtype.is_float else dt.int_range(x.dtype)[0]
        g = ops.where(valid, g, ops.full((), fill, x.dtype))
        at = ops.argmax(g, -1, keepdims=True)  # the first maximum, as the reference
        values = ops.reshape(ops.take_along_dim(g, at, -1), (n, c, *out))
        pos = literal(flat_cm if storage_order else flat)
        pos = ops.take_along_dim(ops.broadcast_to(pos, (n, c, *pk)), at, -1)
        base = ops.mul(ops.add(ops.mul(ops.iota((n, c, pk[0], 1), 0, dt.int64), c),
                               ops.iota((n, c, pk[0], 1), 1, dt.int64)), int(np.prod(size)))
        return values, ops.reshape(ops.add(pos, base), (n, c, *out))
    zero = ops.full((), 0.0, x.dtype)
    if kind == "lp":
        g = ops.pow(ops.abs(g), float(p))
    total = ops.sum(ops.where(valid, g, zero), -1)
    if kind == "avg":
        count = (padded if include_pad else ok).sum(-1).astype(np.float64)
        y = ops.div(total, ops.cast(literal(count), x.dtype))
    else:  # the p-norm of the window's input entries (onnx's test cases and onnxruntime)
        y = ops.pow(total, 1.0 / float(p))
    return ops.reshape(y, (n, c, *out))


@onnx_op("LpPool")
def lp_pool(node: Node, x: Any) -> Tensor:
    from .ops_nn import _geometry
    x = T(x)
    k = list(node.attr("kernel_shape"))
    s, d, lo, hi = _geometry(node, x, k)
    return gathered_pool("lp", x, k, s, d, lo, hi, bool(node.attr("ceil_mode", 0)), p=float(node.attr("p", 2)))


@onnx_op("MaxUnpool")
def max_unpool(node: Node, x: Any, idx: Any, output_shape: Any = None) -> Tensor:
    """Each value goes to its flat index in a tensor of zeros of the inferred shape (as the pool's
    input), which `output_shape` then pads at the end (onnx's reference and test cases)."""
    x, idx = T(x), T(idx)
    k = list(node.attr("kernel_shape"))
    r = len(k)
    s = list(node.attr("strides", [1] * r))
    pads = list(node.attr("pads", [0] * 2 * r))
    shape = list(x.shape[:2]) + [(v - 1) * st + kk - pads[i] - pads[i + r]
                                 for i, (v, st, kk) in enumerate(zip(x.shape[2:], s, k))]
    flat = ops.scatter(ops.zeros((int(np.prod(shape)),), dtype=x.dtype), 0,
                       ops.reshape(ops.cast(idx, dt.int64), (-1,)), ops.reshape(x, (-1,)))
    y = ops.reshape(flat, tuple(shape))
    if output_shape is not None:
        want = ints(output_shape, "output_shape")
        if len(want) != len(shape) or any(w < v for w, v in zip(want, shape)):
            raise node.unsupported(f"output_shape {want} is smaller than the inferred {shape}")
        y = ops.pad(y, [(0, w - v) for w, v in zip(want, shape)])
    return y


# -- cropping, col2im, RoiAlign ------------------------------------------------------------

@onnx_op("CenterCropPad")
def center_crop_pad(node: Node, x: Any, shape: Any) -> Tensor:
    """Each listed axis centre-cropped or zero-padded to its new length (the extra odd one at the end)."""
    x = T(x)
    want = ints(shape, "shape")
    for a, n in zip([axis(a, x.ndim) for a in node.attr("axes", range(x.ndim))], want):
        size = x.shape[a]
        if n < size:
            x = ops.narrow(x, a, (size - n) // 2, n)
        elif n > size:
            lo = (n - size) // 2
            x = ops.pad(x, [(0, 0)] * a + [(lo, n - size - lo)] + [(0, 0)] * (x.ndim - a - 1))
    return x


@onnx_op("Col2Im")
def col2im(node: Node, x: Any, image_shape: Any, block_shape: Any) -> Tensor:
    """(N, C * prod(block), L) -> (N, C, *image): every block entry added at its image position
    (one scatter-add; taps in the padding go to a spare slot that is dropped)."""
    x = T(x)
    image, block = ints(image_shape, "image_shape"), ints(block_shape, "block_shape")
    r = len(image)
    d = list(node.attr("dilations", [1] * r))
    s = list(node.attr("strides", [1] * r))
    pads = list(node.attr("pads", [0] * 2 * r))
    out, flat, _, _ = window_taps(image, block, s, d, pads[:r], pads[r:], False)
    n, ck, length = x.shape
    kk = int(np.prod(block))
    if ck % kk or int(np.prod(out)) != length:
        raise node.unsupported(f"input {x.shape} does not match image {image} and block {block}")
    c, total = ck // kk, int(np.prod(image))
    cols = ops.reshape(ops.transpose(ops.reshape(x, (n, c, kk, length)), 2, 3), (n, c, length * kk))
    at = literal(np.where(flat < 0, total, flat).reshape(1, 1, -1))
    y = ops.scatter_add(ops.zeros((n, c, total + 1), dtype=x.dtype), 2, ops.broadcast_to(at, cols.shape), cols)
    return ops.reshape(ops.slice_(y, [0, 0, 0], [n, c, total]), (n, c, *image))


@onnx_op("RoiAlign")
def roi_align(node: Node, x: Any, rois: Any, batch_indices: Any) -> Tensor:
    from ..vision.ops import roi_align as tv_roi_align
    x, rois = T(x), T(rois)
    mode = _s(node, "mode", "avg")
    if mode not in ("avg", "max"):
        raise node.unsupported(f"mode {mode!r} is not supported")
    coord = _s(node, "coordinate_transformation_mode", "half_pixel" if node.opset >= 16 else "output_half_pixel")
    boxes = ops.concat([ops.cast(ops.reshape(T(batch_indices), (-1, 1)), rois.dtype), rois], 1)
    size = (int(node.attr("output_height", 1)), int(node.attr("output_width", 1)))
    scale, ratio = float(node.attr("spatial_scale", 1.0)), int(node.attr("sampling_ratio", 0))
    if mode == "max":
        return roi_align_max(x, boxes, size, scale, ratio, coord == "half_pixel")
    return tv_roi_align(x, boxes, size, scale, ratio, coord == "half_pixel")


def roi_align_max(x: Tensor, boxes: Tensor, size: tuple[int, int], scale: float, sampling_ratio: int,
                  aligned: bool) -> Tensor:
    """RoiAlign's mode 'max' as onnx's reference and onnxruntime compute it: the samples of a bin are
    roi_align's (vision.ops), but each bin is the maximum over its samples of the largest of the 4
    *weighted* corner values w_i * v_i (not of the interpolated values); a sample outside [-1, size]
    has zero weights (so counts as 0), and no division by the sample count."""
    from ..vision.ops import _features, roi_corner_samples
    x = _features(x, "RoiAlign")
    rois = ops.stop_gradient(boxes)
    ph, pw = size
    k, c = rois.shape[0], x.shape[1]
    if k == 0:
        return ops.zeros((0, c, ph, pw), dtype=x.dtype)
    corner_vals, wts, gy, gx = roi_corner_samples(x, rois, ph, pw, scale, sampling_ratio, aligned, "RoiAlign")
    gh, gw = wts.shape[3], wts.shape[5]
    vals = ops.amax(corner_vals * ops.expand_dims(wts, -1), 0)   # (K, PH, GH, PW, GW, C)
    # samples past a RoI's own (adaptive) count do not exist: they must not enter the maximum
    real = ops.logical_and(ops.lt(ops.iota((1, 1, gh, 1, 1), 2, x.dtype), ops.reshape(gy, (k, 1, 1, 1, 1))),
                           ops.lt(ops.iota((1, 1, 1, 1, gw), 4, x.dtype), ops.reshape(gx, (k, 1, 1, 1, 1))))
    vals = ops.where(ops.expand_dims(real, -1), vals, -math.inf)
    out = ops.amax(vals, (2, 4))                                                 # (K, PH, PW, C)
    empty = ops.logical_or(ops.le(gy, 0.0), ops.le(gx, 0.0))                      # no samples: 0 (the reference)
    out = ops.where(ops.reshape(empty, (k, 1, 1, 1)), 0.0, out)
    return ops.movedim(out, 3, 1)


# -- DeformConv -----------------------------------------------------------------------------

@onnx_op("DeformConv")
def deform_conv(node: Node, x: Any, w: Any, offset: Any, b: Any = None, mask: Any = None) -> Tensor:
    """ONNX DeformConv (2-d) as torchvision's deform_conv2d (the same sampling and layout); ONNX's
    asymmetric pads shift the taps by the leading pads and size the output (the offset's shape)."""
    from ..vision.deform import deform_conv_core
    x, w, offset = T(x), T(w), T(offset)
    if x.ndim != 4:
        raise node.unsupported(f"{x.ndim - 2}-d DeformConv is not supported (2-d only, as onnx's reference)")
    if not x.dtype.is_float:
        raise node.unsupported(f"{x.dtype} input is not supported")
    k = list(node.attr("kernel_shape", w.shape[2:]))
    if tuple(k) != tuple(w.shape[2:]):
        raise node.unsupported(f"kernel_shape {k} does not match the weight {w.shape}")
    s = list(node.attr("strides", [1, 1]))
    d = list(node.attr("dilations", [1, 1]))
    pads = list(node.attr("pads", [0, 0, 0, 0]))
    group, og = int(node.attr("group", 1)), int(node.attr("offset_group", 1))
    n, c, h, wd = x.shape
    if c != w.shape[1] * group or w.shape[0] % group:
        raise node.unsupported(f"X {x.shape} and W {w.shape} do not make {group} groups")
    if c % og or offset.shape[1] != og * 2 * k[0] * k[1]:
        raise node.unsupported(f"offset {offset.shape} does not match offset_group {og} and kernel {k}")
    out = [(size + pads[i] + pads[i + 2] - (d[i] * (k[i] - 1) + 1)) // s[i] + 1 for i, size in enumerate((h, wd))]
    if offset.ndim != 4 or offset.shape[0] != n or list(offset.shape[2:]) != out:
        raise node.unsupported(f"offset {offset.shape} does not match the output size {out}")
    if mask is not None:
        mask = T(mask)
        if mask.shape != (n, og * k[0] * k[1], *out):
            raise node.unsupported(f"mask {mask.shape} does not match the output {out}")
    return deform_conv_core(x, offset, w, None if b is None else T(b), mask, (s[0], s[1]), (pads[0], pads[1]),
                            (d[0], d[1]), og)


@onnx_op("GlobalLpPool")
def global_lp_pool(node: Node, x: Any) -> Tensor:
    """(sum of |x|^p over the spatial axes)^(1/p), kept as size-1 axes."""
    x = T(x)
    p = float(node.attr("p", 2))
    s = ops.sum(ops.pow(ops.abs(x), ops.full((), p, x.dtype)), list(range(2, x.ndim)), keepdims=True)
    return ops.pow(s, ops.full((), 1.0 / p, x.dtype))

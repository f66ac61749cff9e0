"""The numpy reference semantics of every primitive op: the oracle all other backends are checked against.

`REFERENCE[name](attrs, *arrays) -> np.ndarray` computes one op. Rules aim to be obviously correct
first and reasonably fast second. A rule returns *a* numpy array of the right shape; `evaluate`
turns it into the op's exact result type. Call `evaluate` (not the raw rule) whenever the result
must match what the interpreter or a backend produces — the constant folder, for instance.

Conventions shared by every rule (`evaluate` applies them, so rules stay simple):

* Low-precision floats compute in f32 and round once: f16 operands are widened to f32 (exact) before
  the rule runs, and the result is rounded to the result type afterwards. bf16 has no numpy type; it
  is stored as float32 holding bf16-representable values, and results are rounded to bf16 with
  round-to-nearest-even (`round_bf16`). This is what torch and Triton do (compute in f32, round on store).
* Booleans in arithmetic (neg, abs, relu, sign, add, sub, ...) act as the integers 0/1 and the
  result is cast back to i1 (non-zero is true), so `add` is "or", `mul` is "and", `sub` is "xor".
* Floating-point errors are IEEE: x/0 = ±inf, log(-1) = nan, overflow = inf; nothing warns.
* Layouts (`TensorType.layout`) do not change values; arrays here are always the logical shape.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from avalon.ir import dtypes as dt
from avalon.ir.types import TensorType

Rule = Callable[..., np.ndarray]
REFERENCE: dict[str, Rule] = {}


def rule(*names: str) -> Callable[[Rule], Rule]:
    """Register `fn` as the reference rule of each op in `names`."""
    def deco(fn: Rule) -> Rule:
        for n in names:
            REFERENCE[n] = fn
        return fn
    return deco


# ---------------------------------------------------------------------------------------------
# dtype plumbing


def round_bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 values to the nearest bfloat16 (ties to even), returned as float32.

    bf16 is the top 16 bits of an f32, so rounding is integer arithmetic on the bit pattern: add
    0x7FFF plus the lowest kept bit, then clear the low 16 bits. Overflow correctly carries into
    inf. NaNs are kept as quiet NaNs of the same sign (the carry could otherwise turn them into inf).
    """
    x = np.array(x, dtype=np.float32, copy=None, order="C", ndmin=0)
    bits = x.reshape(-1).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    nan = (bits | np.uint32(0x00400000)) & np.uint32(0xFFFF0000)
    return np.where(np.isnan(x.reshape(-1)), nan, rounded).view(np.float32).reshape(x.shape)


def to_result(value: Any, type: TensorType) -> np.ndarray:
    """`value` as an array of exactly `type`'s numpy dtype and shape (bf16 rounded).

    Casts follow numpy's `astype`: float -> int truncates toward zero (like torch; nan/inf or
    out-of-range values give an unspecified integer, as in C), anything -> bool is "non-zero".
    """
    a = np.asarray(value)
    want = type.dtype.np
    if a.dtype != want:
        with np.errstate(all="ignore"):
            a = a.astype(want)
    if type.dtype == dt.bfloat16:
        a = round_bf16(a)
    if a.shape != type.shape:
        raise RuntimeError(f"reference rule produced shape {a.shape}, but the op's type is {type}")
    return a


# ops where booleans behave as integers 0/1 (see the module docstring)
_BOOL_AS_INT = frozenset({"neg", "abs", "relu", "sign", "add", "sub", "mul", "div", "pow", "maximum",
                          "minimum", "sum", "avg_pool2d", "avg_pool2d_grad"})


def _widen(name: str, a: np.ndarray) -> np.ndarray:
    if a.dtype == np.float16:
        return a.astype(np.float32)
    if a.dtype == np.bool_ and name in _BOOL_AS_INT:
        return a.astype(np.int64)
    return a


def evaluate(name: str, attrs: dict[str, Any], arrays: Sequence[np.ndarray], result_type: TensorType) -> np.ndarray:
    """Run op `name`'s rule and return a result of exactly `result_type` (see the module docstring)."""
    fn = REFERENCE.get(name)
    if fn is None:
        raise NotImplementedError(f"the numpy reference has no rule for op '{name}'")
    args = [_widen(name, np.asarray(a)) for a in arrays]
    with np.errstate(all="ignore"):
        out = fn(attrs, *args)
    return to_result(out, result_type)


# ---------------------------------------------------------------------------------------------
# elementwise


@rule("neg")
def _neg(attrs: dict, x: np.ndarray) -> np.ndarray:
    """-x (integers wrap around)."""
    return np.negative(x)


@rule("abs")
def _abs(attrs: dict, x: np.ndarray) -> np.ndarray:
    """|x| (abs of the most negative integer wraps to itself, as in two's complement)."""
    return np.abs(x)


@rule("exp")
def _exp(attrs: dict, x: np.ndarray) -> np.ndarray:
    return np.exp(x)


@rule("log")
def _log(attrs: dict, x: np.ndarray) -> np.ndarray:
    """Natural log: log(0) = -inf, log(x < 0) = nan."""
    return np.log(x)


@rule("tanh")
def _tanh(attrs: dict, x: np.ndarray) -> np.ndarray:
    return np.tanh(x)


@rule("sigmoid")
def _sigmoid(attrs: dict, x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)), evaluated through exp(-|x|) so it never overflows: for x >= 0 it is
    1 / (1 + z), for x < 0 it is z / (1 + z), with z = exp(-|x|) in (0, 1]. Both cases are the one
    quotient exp(min(x, 0)) / (1 + z), with no branch (np.where on random signs is slow)."""
    return (np.exp(np.minimum(x, 0)) / (1 + np.exp(-np.abs(x)))).astype(x.dtype, copy=False)


@rule("relu")
def _relu(attrs: dict, x: np.ndarray) -> np.ndarray:
    """max(x, 0); nan stays nan (like torch.relu)."""
    return np.maximum(x, np.zeros((), x.dtype))


@rule("sqrt")
def _sqrt(attrs: dict, x: np.ndarray) -> np.ndarray:
    return np.sqrt(x)


@rule("rsqrt")
def _rsqrt(attrs: dict, x: np.ndarray) -> np.ndarray:
    """1 / sqrt(x): rsqrt(0) = inf, rsqrt(x < 0) = nan."""
    return (1 / np.sqrt(x)).astype(x.dtype, copy=False)


_ERF = np.frompyfunc(math.erf, 1, 1)


@rule("erf")
def _erf(attrs: dict, x: np.ndarray) -> np.ndarray:
    """The error function, from `math.erf` in float64 element by element: slow but exact to f64
    rounding, which is what an oracle is for (numpy has no erf and scipy is not a dependency)."""
    return np.asarray(_ERF(x.astype(np.float64)), dtype=np.float64).reshape(x.shape)


@rule("sign")
def _sign(attrs: dict, x: np.ndarray) -> np.ndarray:
    """-1, 0 or 1 computed as (x > 0) - (x < 0): sign(nan) = 0 and sign(-0.0) = 0, like torch.sign."""
    return (x > 0).astype(x.dtype) - (x < 0).astype(x.dtype)


@rule("add")
def _add(attrs: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x + y (integers wrap around)."""
    return np.add(x, y)


@rule("sub")
def _sub(attrs: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.subtract(x, y)


@rule("mul")
def _mul(attrs: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.multiply(x, y)


@rule("div")
def _div(attrs: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """True division for floats (IEEE: x/0 = ±inf, 0/0 = nan). For integers the quotient truncates
    toward zero, as in C and Triton (-7 / 2 = -3, not numpy's floor -4); integer division by zero
    gives 0 here and is undefined on other backends."""
    if x.dtype.kind != "i":
        return np.true_divide(x, y)
    q = np.floor_divide(x, y)
    inexact = (y != 0) & (np.remainder(x, y) != 0) & ((x < 0) != (y < 0))
    return q + inexact.astype(q.dtype)


@rule("pow")
def _pow(attrs: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x ** y. Floats: IEEE pow (negative base with a non-integer exponent is nan). Integers: the
    exact power, wrapping on overflow; a negative exponent truncates the real result toward zero
    (1 for x = 1, ±1 for x = -1, otherwise 0, including x = 0)."""
    if x.dtype.kind != "i":
        return np.power(x, y)
    neg = y < 0
    out = np.power(x, np.where(neg, 0, y))
    odd = (y % 2) != 0
    small = np.where(x == 1, 1, np.where(x == -1, np.where(odd, -1, 1), 0)).astype(x.dtype)
    return np.where(neg, small, out)


@rule("maximum")
def _maximum(attrs: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Elementwise max; a nan in either operand gives nan (like torch.maximum)."""
    return np.maximum(x, y)


@rule("minimum")
def _minimum(attrs: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Elementwise min; a nan in either operand gives nan (like torch.minimum)."""
    return np.minimum(x, y)


_COMPARE = {"eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal,
            "gt": np.greater, "ge": np.greater_equal}


def _compare(fn: Callable) -> Rule:
    def compare(attrs: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return fn(x, y)
    compare.__doc__ = f"IEEE comparison ({fn.__name__}) giving i1: every comparison with nan is false except ne."
    return compare


for _name, _fn in _COMPARE.items():
    REFERENCE[_name] = _compare(_fn)


@rule("logical_and")
def _logical_and(attrs: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.logical_and(x, y)


@rule("logical_or")
def _logical_or(attrs: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.logical_or(x, y)


@rule("logical_not")
def _logical_not(attrs: dict, x: np.ndarray) -> np.ndarray:
    return np.logical_not(x)


def _select(c: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """np.where(c, x, y), bit for bit, for x and y of one numeric dtype, as y ^ ((x ^ y) * c) on the
    bit patterns: c = 1 gives y ^ x ^ y = x, c = 0 gives y. np.where branches per element, and a
    random mask (a relu's, a max-pool's hits) mispredicts half the time: this is about 4x faster
    there. All in place in one fresh array (fresh large arrays cost page faults)."""
    if c.dtype != np.bool_ or x.dtype != y.dtype or x.dtype.kind not in "biuf":
        return np.where(c, x, y)
    u = np.dtype(f"u{x.dtype.itemsize}")
    out = np.empty(np.broadcast_shapes(c.shape, x.shape, y.shape), u)
    np.bitwise_xor(x.view(u), y.view(u), out=out)
    np.multiply(out, c, out=out)
    return np.bitwise_xor(out, y.view(u), out=out).view(x.dtype)


@rule("where")
def _where(attrs: dict, c: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x where c else y (both sides are computed already; a nan on the unselected side is harmless)."""
    return _select(c, x, y)


@rule("stop_gradient")
def _stop_gradient(attrs: dict, x: np.ndarray) -> np.ndarray:
    """x itself (a copy): the op only matters to autodiff."""
    return np.array(x, copy=True)


@rule("cast")
def _cast(attrs: dict, x: np.ndarray) -> np.ndarray:
    """Convert to attrs['dtype']: float -> int truncates toward zero (like torch; nan, inf and
    out-of-range values give an unspecified integer), x -> bool is x != 0 (nan is true),
    to bf16 rounds to nearest even."""
    return to_result(x, TensorType(x.shape, attrs["dtype"]))


# ---------------------------------------------------------------------------------------------
# constants, broadcast, reductions, shape ops


@rule("constant")
def _constant(attrs: dict) -> np.ndarray:
    """A python scalar splat to `shape`, or a dense array holding exactly prod(shape) values in
    row-major order (a one-element array is splat too), converted to `dtype`."""
    shape = tuple(attrs["shape"])
    want = attrs["dtype"].np
    with np.errstate(all="ignore"):
        v = np.asarray(attrs["value"]).astype(want)
    if v.size == 1:
        return np.full(shape, v.reshape(()), dtype=want)
    return v.reshape(shape).copy()


@rule("broadcast")
def _broadcast(attrs: dict, x: np.ndarray) -> np.ndarray:
    """numpy broadcasting to `shape` (dims right-aligned; size-1 dims stretch), as a fresh array."""
    return np.broadcast_to(x, tuple(attrs["shape"])).copy()


def _reduce_axes(x: np.ndarray, axes: Sequence[int]) -> tuple[int, ...]:
    # a 0-d tensor reduced over "axis 0" is itself (the IR allows it; numpy does not)
    return tuple(sorted(a % x.ndim for a in axes)) if x.ndim else ()


@rule("sum")
def _sum(attrs: dict, x: np.ndarray) -> np.ndarray:
    """Sum over `axes` (an empty list sums nothing); numpy's pairwise summation in the operand's
    precision. Integers wrap; booleans count, so the i1 result is "any"."""
    return np.sum(x, axis=_reduce_axes(x, attrs["axes"]), keepdims=attrs["keepdims"])


@rule("max")
def _max(attrs: dict, x: np.ndarray) -> np.ndarray:
    """Max over `axes`; a nan anywhere in a reduced slice gives nan (like torch.amax)."""
    return np.max(x, axis=_reduce_axes(x, attrs["axes"]), keepdims=attrs["keepdims"])


@rule("argmax")
def _argmax(attrs: dict, x: np.ndarray) -> np.ndarray:
    """i64 index of the FIRST maximum along `axis` (nan counts as the maximum, first nan wins)."""
    if x.ndim == 0:
        return np.zeros((), np.int64)
    return np.argmax(x, axis=attrs["axis"] % x.ndim, keepdims=attrs["keepdims"]).astype(np.int64)


@rule("reshape")
def _reshape(attrs: dict, x: np.ndarray) -> np.ndarray:
    """Row-major reshape."""
    return np.reshape(x, tuple(attrs["shape"]))


@rule("transpose")
def _transpose(attrs: dict, x: np.ndarray) -> np.ndarray:
    """Result dim i is operand dim perm[i]."""
    return np.transpose(x, attrs["perm"])


@rule("slice")
def _slice(attrs: dict, x: np.ndarray) -> np.ndarray:
    """x[start:limit:step] per dim (static, in range, step >= 1; an empty `step` means all ones)."""
    step = attrs["step"] or [1] * x.ndim
    return x[tuple(slice(s, l, st) for s, l, st in zip(attrs["start"], attrs["limit"], step))]


@rule("concat")
def _concat(attrs: dict, *xs: np.ndarray) -> np.ndarray:
    return np.concatenate(xs, axis=attrs["axis"])


@rule("pad")
def _pad(attrs: dict, x: np.ndarray) -> np.ndarray:
    """Constant padding: `low[d]` values before and `high[d]` after dim d, all equal to `value`
    (converted to the operand's dtype)."""
    with np.errstate(all="ignore"):
        fill = np.asarray(attrs["value"]).astype(x.dtype)
    return np.pad(x, list(zip(attrs["low"], attrs["high"])), constant_values=fill)


# ---------------------------------------------------------------------------------------------
# contractions


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
    """A (C, H, W, N) array back in NCHW, contiguous (later elementwise ops run fastest on it)."""
    return np.ascontiguousarray(y.reshape(-1, *y.shape[-3:-1], n).transpose(3, 0, 1, 2))


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


# ---------------------------------------------------------------------------------------------
# pooling (ceil_mode=False; windows never run past the padded input)


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


# ---------------------------------------------------------------------------------------------
# gather, one-hot


@rule("take")
def _take(attrs: dict, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """numpy.take along `axis`: result shape x.shape[:axis] + idx.shape + x.shape[axis+1:].
    Indices must lie in [0, size): negative indices do NOT wrap (backends need no special case),
    and an out-of-range index raises IndexError."""
    ax = attrs["axis"] % x.ndim
    size = x.shape[ax]
    bad = (idx < 0) | (idx >= size)
    if bad.any():
        raise IndexError(f"take: index {int(idx[bad].flat[0])} is out of range for axis {ax} of size {size}")
    return np.take(x, idx, axis=ax)


@rule("one_hot")
def _one_hot(attrs: dict, idx: np.ndarray) -> np.ndarray:
    """out[..., k] = 1 where idx[...] == k else 0, as `dtype`; an index outside [0, num_classes)
    raises ValueError (silently giving an all-zero row would hide label bugs)."""
    k = attrs["num_classes"]
    bad = (idx < 0) | (idx >= k)
    if bad.any():
        raise ValueError(f"one_hot: index {int(idx[bad].flat[0])} is out of range for num_classes={k}")
    return (idx[..., None] == np.arange(k)).astype(attrs["dtype"].np)


# ---------------------------------------------------------------------------------------------
# random numbers: counter-based so every backend reproduces them bit for bit

_M32 = 0xFFFFFFFF


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer: a bijection on uint32 with full avalanche.
    h ^= h >> 16; h *= 0x85EBCA6B; h ^= h >> 13; h *= 0xC2B2AE35; h ^= h >> 16 (all mod 2**32)."""
    h = np.asarray(h, dtype=np.uint32)
    with np.errstate(over="ignore"):  # wrapping mod 2**32 is the point; numpy warns on 0-d inputs
        h = h ^ (h >> np.uint32(16))
        h = h * np.uint32(0x85EBCA6B)
        h = h ^ (h >> np.uint32(13))
        h = h * np.uint32(0xC2B2AE35)
        return h ^ (h >> np.uint32(16))


def seed_keys(seed: int) -> tuple[int, int]:
    """The two per-call uint32 keys derived from a seed (python ints, so an emitter can bake them in
    or compute them the same way on the device):
    s = lo32(seed) ^ hi32(seed) of the seed as a two's-complement int64;
    k1 = fmix32(s), k2 = fmix32(s ^ 0x9E3779B9)."""
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    s = (seed & _M32) ^ (seed >> 32)
    return int(fmix32(np.uint32(s))), int(fmix32(np.uint32(s ^ 0x9E3779B9)))


def random_bits(seed: int, n: int, offset: int = 0) -> np.ndarray:
    """n uint32 random words for counters offset .. offset+n-1.

    The exact formula, all arithmetic on uint32 wrapping mod 2**32 (shifts are logical):
        k1, k2 = seed_keys(seed)                   # see seed_keys
        bits(i) = fmix32(fmix32(i + k1) ^ k2)       # i = counter, as uint32
    Two hash rounds keyed differently make streams of different seeds unrelated (with one round,
    seed s' would just replay seed s at shifted counters). Counters past 2**32 wrap.
    """
    k1, k2 = seed_keys(seed)
    i = (np.arange(n, dtype=np.uint64) + np.uint64(offset)).astype(np.uint32)
    return fmix32(fmix32(i + np.uint32(k1)) ^ np.uint32(k2))


# uniform precision per result dtype: the number of top bits used, so u is exact and < 1 in the dtype
UNIFORM_BITS = {"f16": 11, "bf16": 8, "f32": 24, "f64": 24}


def uniform_from_bits(bits: np.ndarray, nbits: int = 24) -> np.ndarray:
    """u = (bits >> (32 - nbits)) * 2**-nbits, exactly representable, in [0, 1) (float64 array)."""
    return (bits >> np.uint32(32 - nbits)).astype(np.float64) * 2.0 ** -nbits


@rule("random")
def _random(attrs: dict, seed: np.ndarray) -> np.ndarray:
    """Counter-based random numbers: element i (row-major flat index) of a `shape` tensor from seed s.

    uniform: u_i = (bits(i) >> (32 - b)) * 2**-b with b = UNIFORM_BITS[dtype] (24 for f32/f64, 11 for
             f16, 8 for bf16), so every value is exact in the dtype and lies in [0, 1). Bit-exact.
    normal:  Box-Muller, cos branch, from 24-bit uniforms at counters 2i and 2i+1:
             u1 = 1 - uniform24(bits(2i)) in (0, 1] (no log 0), u2 = uniform24(bits(2i + 1)),
             z_i = sqrt(-2 log u1) * cos(2 pi u2), evaluated in float64 then rounded to dtype; other
             backends agree up to the rounding of their log/cos/sqrt.
    """
    shape = tuple(attrs["shape"])
    n = math.prod(shape)
    s = int(np.asarray(seed).reshape(()))
    if attrs["distribution"] == "uniform":
        out = uniform_from_bits(random_bits(s, n), UNIFORM_BITS[attrs["dtype"].name])
    else:
        bits = random_bits(s, 2 * n)
        u1 = 1.0 - uniform_from_bits(bits[0::2])
        u2 = uniform_from_bits(bits[1::2])
        out = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return out.reshape(shape)

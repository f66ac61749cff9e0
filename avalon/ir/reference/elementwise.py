"""Reference rules of the elementwise ops (see `core` for the conventions `evaluate` applies)."""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from avalon.ir import dtypes as dt
from avalon.ir.types import TensorType

from .core import REFERENCE, ReferenceFn, rule, to_result


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


@rule("sin")
def _sin(attrs: dict, x: np.ndarray) -> np.ndarray:
    return np.sin(x)


@rule("cos")
def _cos(attrs: dict, x: np.ndarray) -> np.ndarray:
    return np.cos(x)


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
    if x.dtype.kind not in "iu":
        return np.true_divide(x, y)
    q = np.floor_divide(x, y)
    inexact = (y != 0) & (np.remainder(x, y) != 0) & ((x < 0) != (y < 0))
    return q + inexact.astype(q.dtype)


def float_power(x: np.ndarray, y: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """np.power through its general loop whatever the operands' layout. numpy takes a scalar, 0-d or
    stride-0 exponent of 0.5, 2 or -1 through sqrt/square/reciprocal, which differ from its pow loop
    in the last bit and at -0/-inf (sqrt(-inf) is nan, pow(-inf, 0.5) is inf), so a broadcast
    constant exponent would give other bits than the same values materialized. The exponent is made
    a contiguous 1-d array of the result's size (0-d included), so every caller (this rule, the
    numpy backend's emitted code) gets the same bits."""
    shape = np.broadcast_shapes(np.shape(x), np.shape(y))
    r = np.power(np.broadcast_to(x, shape).reshape(-1), np.array(np.broadcast_to(y, shape), order="C").reshape(-1))
    r = r.reshape(shape)
    if out is None:
        return r
    np.copyto(out, r)
    return out


@rule("pow")
def _pow(attrs: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x ** y. Floats: IEEE pow (negative base with a non-integer exponent is nan), computed by
    `float_power` whatever the exponent's layout. Integers: the
    exact power, wrapping on overflow; a negative exponent truncates the real result toward zero
    (1 for x = 1, ±1 for x = -1, otherwise 0, including x = 0)."""
    if x.dtype.kind not in "iu":
        return float_power(x, y)
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



def _compare(fn: Callable) -> ReferenceFn:
    def compare(attrs: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return fn(x, y)
    compare.__doc__ = f"IEEE comparison ({fn.__name__}) giving i1: every comparison with nan is false except ne."
    return compare


REFERENCE.update(eq=_compare(np.equal), ne=_compare(np.not_equal), lt=_compare(np.less),
                 le=_compare(np.less_equal), gt=_compare(np.greater), ge=_compare(np.greater_equal))


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


class LinAlgError(RuntimeError):
    """torch.linalg.LinAlgError (a RuntimeError): a factorization or inverse that cannot be completed
    (`avalon.linalg.LinAlgError`)."""


class ValueCheckError(ValueError, RuntimeError):
    """A value a `check` op guards is outside what its op accepts (binary_cross_entropy's input
    outside [0, 1]), found while a graph runs, on any backend. A RuntimeError as torch's, and a
    ValueError so the backends name the user's line as they do for IndexOutOfRangeError."""


class LinAlgCheckError(ValueCheckError, LinAlgError):
    """A `check` op of kind "linalg" failed (a matrix not positive-definite, a singular one): torch's
    LinAlgError, so ported `except torch.linalg.LinAlgError:` fallbacks catch it."""


CHECK_ERRORS: dict[str, type[ValueCheckError]] = {"value": ValueCheckError, "linalg": LinAlgCheckError}
"""The exception a `check` op raises, by its `error` attribute."""


def check_error(error: str, message: str) -> ValueCheckError:
    """The exception of a failed `check` op (every backend raises this one)."""
    return CHECK_ERRORS[error](message)


@rule("check")
def _check(attrs: dict, x: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """x itself (a copy), after raising its error (ValueCheckError) if any element of ok is false."""
    if not ok.all():
        raise check_error(attrs["error"], attrs["message"])
    return np.array(x, copy=True)


@rule("stop_gradient")
def _stop_gradient(attrs: dict, x: np.ndarray) -> np.ndarray:
    """x itself (a copy): the op only matters to autodiff."""
    return np.array(x, copy=True)


@rule("bitcast")
def _bitcast(attrs: dict, x: np.ndarray) -> np.ndarray:
    """The operand's bytes (row-major) read as attrs['dtype']; bf16 is the top half of its f32 holder."""
    src, dst = attrs["source"], attrs["dtype"]
    a = np.ascontiguousarray(x).reshape(x.shape if x.ndim else (1,))
    if src == dt.bfloat16:
        bits = (a.astype(np.float32).view(np.uint32) >> np.uint32(16)).astype(np.uint16)
    else:
        bits = a.astype(src.np)
    out = (bits.view(np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32) if dst == dt.bfloat16 \
        else bits.view(dst.np)
    return out.reshape(()) if x.ndim == 0 else out


@rule("cast")
def _cast(attrs: dict, x: np.ndarray) -> np.ndarray:
    """Convert to attrs['dtype']: float -> int truncates toward zero (like torch; nan, inf and
    out-of-range values give an unspecified integer), x -> bool is x != 0 (nan is true),
    to bf16 rounds to nearest even."""
    return to_result(x, TensorType(x.shape, attrs["dtype"]))


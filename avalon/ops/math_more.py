"""More of torch's pointwise math for ported code: the inverse hyperbolic functions, erfc, exp2,
sinc, copysign, fmax/fmin, gcd/lcm, ldexp, logaddexp2, i0, mvlgamma, frexp, nextafter, and the
alias names torch keeps (greater, less_equal, multiply, subtract, arcsinh, ...).

All are compositions of existing ops (so they trace, compile and differentiate), in the input's
floating dtype (integers and bools promote to the default float dtype, as torch), written where it
matters in forms that keep full relative precision:
- asinh/acosh/atanh go through log1p near their zeros and log(2|x|) where x^2 would overflow;
- erfc uses 1 - erf below 1 and, above, Cephes' rational approximations times exp(-x^2) with x^2
  split into an exact and a small part, so erfc(26) ~ 1e-296 keeps its digits;
- i0 sums its power series below 15 and the asymptotic series above (scaled by exp(x/2) twice);
- gcd runs Euclid's steps: until done eagerly, the worst case (92 steps for i64) inside a trace."""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from ..ir import dtypes as dt
from ..tensor import Tensor, default_float_dtype
from .core import (
    _as_operand,
    _prepare,
    _tensor,
    abs,
    add,
    cast,
    div,
    eq,
    erf,
    exp,
    fail,
    floor,
    floor_divide,
    full,
    ge,
    gt,
    isinf,
    isnan,
    le,
    log,
    logical_and,
    logical_or,
    lt,
    maximum,
    minimum,
    mul,
    ne,
    neg,
    pow,
    remainder,
    result_dtype,
    sin,
    sqrt,
    sub,
    where,
)
from .dtype_kernels import refuses
from .mathfn import _absg, _back, _float, _horner, _wide, lgamma, log2, logaddexp, signbit
from .pointwise import log1p

__all__ = [
    "acosh", "arccosh", "arcsinh", "arctanh", "asinh", "atanh", "copysign", "erfc", "exp2", "fmax", "fmin", "frexp",
    "gcd", "greater", "greater_equal", "i0", "lcm", "ldexp", "less", "less_equal", "logaddexp2", "multiply",
    "mvlgamma", "nextafter", "not_equal", "positive", "sinc", "subtract",
]

_LN2 = math.log(2.0)


# -- aliases --------------------------------------------------------------------------------------

greater, greater_equal, less, less_equal, not_equal, multiply = gt, ge, lt, le, ne, mul  # torch's other names


def subtract(input: Any, other: Any, *, alpha: Any = 1) -> Tensor:
    """torch.subtract: input - alpha * other."""
    return sub(input, other if alpha == 1 else mul(other, alpha))


def positive(input: Any) -> Tensor:
    """torch.positive: the tensor itself (bools refused, as torch)."""
    x = _tensor(input)
    if x.dtype is dt.bool_:
        raise fail(RuntimeError("The `+` operator, on a bool tensor is not supported."))
    return x


# -- inverse hyperbolic ---------------------------------------------------------------------------

def _big(x: Tensor) -> float:
    """Past this |x|, x^2 + 1 rounds to x^2 (and x^2 may overflow): log(2|x|) is exact."""
    return 2.0 ** 28 if x.dtype is dt.float64 else 2.0 ** 13


def asinh(input: Any) -> Tensor:
    """sign(x) log1p(|x| + x^2 / (1 + sqrt(1 + x^2))), and log(2|x|) for huge |x|."""
    x, back = _wide(_float(input))
    a = _absg(x)
    big = gt(a, _big(x))
    s = where(big, 1.0, a)
    small = log1p(add(s, div(mul(s, s), add(1.0, sqrt(add(1.0, mul(s, s)))))))
    y = where(big, add(log(where(big, a, 1.0)), _LN2), small)
    return _back(where(lt(x, 0.0), neg(y), y), back)


def acosh(input: Any) -> Tensor:
    """log1p(t + sqrt(2t + t^2)) with t = x - 1 (exact near 1), log(2x) for huge x; nan below 1."""
    x, back = _wide(_float(input))
    big = gt(x, _big(x))
    t = sub(where(big, 2.0, x), 1.0)
    tt = where(lt(t, 0.0), math.nan, t)
    small = log1p(add(tt, sqrt(add(mul(tt, 2.0), mul(tt, tt)))))
    return _back(where(big, add(log(where(big, x, 1.0)), _LN2), small), back)


def atanh(input: Any) -> Tensor:
    """sign(x) 0.5 log1p(2|x| / (1 - |x|)) (on |x|, so log1p's argument has no cancellation near -1):
    +-inf at +-1, nan past them."""
    x, back = _wide(_float(input))
    a = _absg(x)
    y = mul(log1p(div(mul(a, 2.0), sub(1.0, a))), 0.5)
    return _back(where(lt(x, 0.0), neg(y), y), back)


arcsinh, arccosh, arctanh = asinh, acosh, atanh


# -- exponential and error functions ----------------------------------------------------------------

_ERFC_P = [2.46196981473530512524e-10, 5.64189564831068821977e-1, 7.46321056442269912687e0,
           4.86371970985681366614e1, 1.96520832956077098242e2, 5.26445194995477358631e2,
           9.34528527171957607540e2, 1.02755188689515710272e3, 5.57535335369399327526e2]
_ERFC_Q = [1.0, 1.32281951154744992508e1, 8.67072140885989742329e1, 3.54937778887819891062e2,
           9.75708501743205489753e2, 1.82390916687909736289e3, 2.24633760818710981792e3,
           1.65666309194161350182e3, 5.57535340817727675546e2]
_ERFC_R = [5.64189583547755073984e-1, 1.27536670759978104416e0, 5.01905042251180477414e0,
           6.16021097993053585195e0, 7.40974269950448939160e0, 2.97886665372100240670e0]
_ERFC_S = [1.0, 2.26052863220117276590e0, 9.39603524938001434673e0, 1.20489539808096656605e1,
           1.70814450747565897222e1, 9.60896809063285878198e0, 3.36907645100081516050e0]


def _exp_neg_square(a: Tensor) -> Tensor:
    """exp(-a^2) to a few ulps: a = hi + lo with hi a multiple of 1/16, so hi^2 is exact."""
    hi = div(floor(mul(a, 16.0)), 16.0)
    lo = sub(a, hi)
    return mul(exp(neg(mul(hi, hi))), exp(neg(mul(lo, add(mul(hi, 2.0), lo)))))


def erfc(input: Any) -> Tensor:
    """1 - erf(x), keeping its relative precision where it is tiny (large x)."""
    x, back = _wide(_float(input))
    a = _absg(x)
    tail = ge(a, 1.0)
    at = where(tail, minimum(a, 30.0), 1.0)  # erfc(30) underflows to 0 in every dtype; keeps inf out
    mid = div(_horner(at, _ERFC_P), _horner(at, _ERFC_Q))
    far = div(_horner(at, _ERFC_R), _horner(at, _ERFC_S))
    t = mul(_exp_neg_square(at), where(lt(at, 8.0), mid, far))
    t = where(lt(x, 0.0), sub(2.0, t), t)
    return _back(where(tail, t, sub(1.0, erf(where(tail, 0.0, x)))), back)


def exp2(input: Any) -> Tensor:
    """2 ** x (exact at integers)."""
    x = _float(input)
    return pow(full((), 2.0, x.dtype), x)


def sinc(input: Any) -> Tensor:
    """sin(pi x) / (pi x), 1 at 0 (gradient 0 there, as torch). Half precision computes in f32, as
    torch's: pi x overflowed float16 (nan for |x| > 20860) and rounded sin(pi x) away from 0 at integers."""
    x, back = _wide(_float(input))
    zero = eq(x, 0.0)
    px = mul(where(zero, 1.0, x), math.pi)
    return _back(where(zero, 1.0, div(sin(px), px)), back)


def ldexp(input: Any, other: Any) -> Tensor:
    """input * 2 ** other (torch's definition), in a floating dtype."""
    a, b = _float_pair("ldexp", input, other)
    return mul(a, pow(full((), 2.0, a.dtype), b))


@refuses("logaddexp2", "logaddexp2_cpu", "integer", (0, 1))
def logaddexp2(input: Any, other: Any) -> Tensor:
    """log2(2^a + 2^b), through logaddexp in natural units."""
    a, b = _float_pair("logaddexp2", input, other)
    return div(logaddexp(mul(a, _LN2), mul(b, _LN2)), _LN2)


def _float_pair(name: str, input: Any, other: Any) -> list[Tensor]:
    d = result_dtype(_as_operand(input), _as_operand(other))
    return _prepare(name, input, other, dtype=d if d.is_float else default_float_dtype())


def copysign(input: Any, other: Any) -> Tensor:
    """|input| with the sign of `other` (-0.0 counts as negative); a float result, as torch."""
    a, b = _float_pair("copysign", input, other)
    m = where(eq(a, 0.0), 0.0, _absg(a))  # +0.0 for -0.0 (and, as torch's, no gradient at 0)
    return where(signbit(b), neg(m), m)


def _nan_ignoring(name: str, input: Any, other: Any, first: Any) -> Tensor:
    """`input` where first(input, other) holds or `other` is nan, else `other`: ties (0.0 and -0.0
    too) and their gradient go to `input`, as torch's."""
    a, b = _prepare(name, input, other)
    keep = first(a, b)
    return where(logical_or(keep, isnan(b)) if a.dtype.is_float else keep, a, b)


def fmax(input: Any, other: Any) -> Tensor:
    """The elementwise maximum, a nan losing to a number (nan only where both are)."""
    return _nan_ignoring("fmax", input, other, ge)


def fmin(input: Any, other: Any) -> Tensor:
    """The elementwise minimum, a nan losing to a number."""
    return _nan_ignoring("fmin", input, other, le)


# -- integers ---------------------------------------------------------------------------------------

def _int_pair(name: str, input: Any, other: Any) -> tuple[Tensor, Tensor]:
    a, b = _prepare(name, input, other)
    if a.dtype.is_float or a.dtype is dt.bool_:
        raise fail(NotImplementedError(f"\"{name}_cpu\" not implemented for '{a.dtype.name}'"))
    return a, b


def gcd(input: Any, other: Any) -> Tensor:
    """The greatest common divisor, >= 0 (gcd(0, 0) = 0), by Euclid's steps on |a|, |b|."""
    a, b = _int_pair("gcd", input, other)
    a, b = abs(a), abs(b)
    steps = 92 if a.dtype is dt.int64 else 46  # Fibonacci worst case for the dtype's range
    for _ in range(steps):
        if not a.is_traced and not b.is_traced and not bool(np.any(b.numpy())):
            break
        zero = eq(b, 0)
        a, b = where(zero, a, b), where(zero, b, remainder(a, where(zero, 1, b)))
    return a


def lcm(input: Any, other: Any) -> Tensor:
    """|a / gcd(a, b) * b|, 0 when either is 0."""
    a, b = _int_pair("lcm", input, other)
    g = gcd(a, b)
    zero = eq(g, 0)
    return abs(mul(floor_divide(a, where(zero, 1, g)), b))


# -- special functions ----------------------------------------------------------------------------

_I0_SERIES = [1.0 / math.factorial(k) ** 2 for k in range(60, -1, -1)]
_I0_ASYMPTOTIC = [1.0]
for _k in range(1, 30):
    _I0_ASYMPTOTIC.append(_I0_ASYMPTOTIC[-1] * (2 * _k - 1) ** 2 / (_k * 8.0))
_I0_ASYMPTOTIC.reverse()


def i0(input: Any) -> Tensor:
    """The modified Bessel function of the first kind, order 0: sum (x^2/4)^k / k!^2 below 15,
    e^x / sqrt(2 pi x) * sum ((2k-1)!!)^2 / (k! (8x)^k) above."""
    x, back = _wide(_float(input))
    a = _absg(x)
    near = lt(a, 15.0)
    an = where(near, a, 0.0)
    series = _horner(mul(mul(an, an), 0.25), _I0_SERIES)
    af = where(near, 15.0, a)
    h = exp(mul(af, 0.5))
    asym = mul(mul(h, div(h, sqrt(mul(af, 2.0 * math.pi)))), _horner(div(1.0, af), _I0_ASYMPTOTIC))
    return _back(where(near, series, asym), back)


@refuses("mvlgamma", "mvlgamma", "bool", message="mvlgamma: The input tensor may not be a boolean tensor.")
def mvlgamma(input: Any, p: int) -> Tensor:
    """The multivariate log-gamma of dimension p: sum_i lgamma(x - i/2) + p (p - 1)/4 log(pi). Like
    torch 2.x, elements at or below (p - 1) / 2 are not refused: lgamma's values there are summed."""
    x = _float(input)
    if p < 1:
        raise fail(RuntimeError("p has to be greater than or equal to 1"))
    total = lgamma(x)
    for i in range(1, p):
        total = add(total, lgamma(sub(x, i / 2.0)))
    return add(total, p * (p - 1) / 4.0 * math.log(math.pi))


class FrexpResult(NamedTuple):
    """torch.return_types.frexp: (mantissa, exponent)."""

    mantissa: Tensor
    exponent: Tensor


def frexp(input: Any) -> FrexpResult:
    """x = mantissa * 2 ** exponent with 0.5 <= |mantissa| < 1 (0, inf and nan: mantissa x, exponent 0);
    the exponent is int32, as torch."""
    x = _tensor(input)
    if not x.dtype.is_float:
        raise fail(RuntimeError(f"torch.frexp() only supports floating-point dtypes, got {x.dtype.name}"))
    a = abs(x)
    special = logical_or(logical_or(eq(a, 0.0), isinf(a)), isnan(a))
    af = where(special, 1.0, a)
    e = add(floor(log2(af)), 1.0)
    e = where(ge(_scale_down(af, e), 1.0), add(e, 1.0), e)  # log2's rounding, either way
    e = where(lt(_scale_down(af, e), 0.5), sub(e, 1.0), e)
    e = where(special, 0.0, e)
    m = where(special, x, _scale_down(x, e))
    return FrexpResult(m, cast(e, dt.int32))


def _scale_down(x: Tensor, e: Tensor) -> Tensor:
    """x / 2^e, exactly, for e up to the dtype's exponent range either way: in two halves, since
    2^e alone overflows (e = max exponent + 1, frexp of the largest floats) or underflows."""
    two = full((), 2.0, x.dtype)
    half = floor(mul(e, 0.5))
    return div(div(x, pow(two, half)), pow(two, sub(e, half)))


def nextafter(input: Any, other: Any) -> Tensor:
    """The next representable value after `input` toward `other` (`other` where they are equal)."""
    x, y = _prepare("nextafter", input, other)
    if not x.dtype.is_float:
        raise fail(NotImplementedError(f"\"nextafter_cpu\" not implemented for '{x.dtype.name}'"))
    info = np.finfo(x.dtype.np)
    mant, lowest = int(info.nmant) + 1, int(np.log2(float(info.smallest_subnormal)))
    m, e = frexp(x)
    ef = cast(e, x.dtype)
    up = gt(y, x)
    toward_zero = ne(up, gt(x, 0.0))
    step_e = maximum(sub(ef, float(mant)), float(lowest))
    step_e = where(logical_and(toward_zero, eq(abs(m), 0.5)), maximum(sub(step_e, 1.0), float(lowest)), step_e)
    step = pow(full((), 2.0, x.dtype), step_e)
    out = where(up, add(x, step), sub(x, step))
    tiny = full((), float(info.smallest_subnormal), x.dtype)  # (a Python float would pass through f32)
    out = where(eq(x, 0.0), where(up, tiny, neg(tiny)), out)
    big = full((), float(info.max), x.dtype)
    out = where(isinf(x), where(gt(x, 0.0), big, neg(big)), out)
    out = where(eq(out, 0.0), mul(x, 0.0), out)  # a step onto zero keeps x's sign (-0.0 from below)
    out = where(eq(x, y), y, out)
    return where(logical_or(isnan(x), isnan(y)), math.nan, out)


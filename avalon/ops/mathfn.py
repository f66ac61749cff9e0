"""torch's remaining pointwise math, composed from the elementwise primitives so every backend
runs (and autodiff differentiates) them: trigonometric and hyperbolic functions, rounding, log2 /
log10, the special functions `lgamma`, `digamma`, `erfinv`, and bitwise operations on integers.

Approximations and why:
- `atan` is Cephes' rational approximation (range-reduced by tan(3pi/8) and 0.66), accurate to
  f64 rounding; `atan2`, `asin` and `acos` reduce to it on a ratio in [0, 1] (no division by zero).
- `lgamma` and `digamma` shift the argument past 8 with the recurrence, then use Stirling's
  series; negative arguments use the reflection formulas with sin(pi r), r = x - round(x), so
  poles stay exact.
- `erfinv` starts from Giles' single-precision approximation and takes Newton steps on the `erf`
  primitive: f64 accuracy, and the gradient 1 / erf'(y) comes out of the last step.
- Bitwise ops split integers into their bits along a new trailing axis (floor division by powers of
  two, two's complement sign bit), combine, and sum the bits back: O(bits) memory, O(1) ops.
Half-precision inputs of the special functions compute in f32 and round back."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..ir import dtypes as dt
from ..tensor import Tensor, default_float_dtype
from .core import (
    DTypeNotImplementedError,
    _as_operand,
    _is_scalar,
    _prepare,
    _tensor,
    abs,
    add,
    cast,
    clamp,
    concat,
    cos,
    div,
    eq,
    erf,
    exp,
    expand_dims,
    fail,
    floor,
    floor_divide,
    full,
    ge,
    gt,
    isinf,
    isnan,
    log,
    logical_and,
    logical_not,
    logical_or,
    lt,
    maximum,
    mul,
    ne,
    neg,
    pow,
    remainder,
    result_dtype,
    sign,
    sin,
    slice_,
    sqrt,
    stop_gradient,
    sub,
    sum,
    trunc,
    where,
)
from .dtype_kernels import DTypeRuntimeError, refuses
from .pointwise import expm1, log1p

_LN2 = math.log(2.0)
_LN10 = math.log(10.0)


def _float(x: Any) -> Tensor:
    """`x` as a floating tensor (integers and bools in the default float dtype, as torch)."""
    x = _tensor(x)
    return x if x.dtype.is_float else cast(x, default_float_dtype())


def _wide(x: Tensor) -> tuple[Tensor, Any]:
    """Half-precision inputs of the special functions compute in f32; returns (work, dtype to give back)."""
    if x.dtype in (dt.float16, dt.bfloat16):
        return cast(x, dt.float32), x.dtype
    return x, None


def _back(y: Tensor, d: Any) -> Tensor:
    return y if d is None else cast(y, d)


def _horner(z: Tensor, coeffs: list[float]) -> Tensor:
    """coeffs[0] * z^(n-1) + ... + coeffs[-1]."""
    p = full(z.shape, coeffs[0], z.dtype)
    for c in coeffs[1:]:
        p = add(mul(p, z), c)
    return p


def _exact_limit(d: dt.DType) -> float:
    """Floats at least this large are integers."""
    return 2.0 ** (52 if d is dt.float64 else 23 if d is dt.float32 else 10)


# -- rounding -------------------------------------------------------------------------------------

@refuses("ceil", "ceil_vml_cpu", "bool")
def ceil(input: Any) -> Tensor:
    """The smallest integer >= x (integers unchanged): -floor(-x)."""
    x = _tensor(input)
    return x if not x.dtype.is_float else neg(floor(neg(x)))


def _round_even(x: Tensor) -> Tensor:
    """Round half to even (torch.round, numpy's rint): floor, then up past .5 and on .5 to the even one."""
    f = floor(x)
    d = sub(x, f)  # exact: x and floor(x) share an exponent range
    half = mul(f, 0.5)
    odd = ne(floor(half), half)
    up = logical_or(gt(d, 0.5), logical_and(eq(d, 0.5), odd))
    r = where(up, add(f, 1.0), f)
    return where(eq(r, 0.0), mul(x, 0.0), r)  # a zero keeps x's sign: round(-0.3) is -0.0


def round(input: Any, *, decimals: int = 0) -> Tensor:  # noqa: A001
    """torch.round: half to even; `decimals` scales by 10**decimals first (as torch: x * 10^d
    rounded, / 10^d; negative d: x / 10^-d rounded, * 10^-d). Integers are unchanged; torch refuses
    them with `decimals` (which would otherwise be ignored in silence) and refuses bools."""
    x = _tensor(input)
    if x.dtype is dt.bool_ or (not x.dtype.is_float and decimals != 0):
        raise fail(NotImplementedError(f"round: not implemented for {x.dtype.name} tensors"
                                       f"{' with decimals' if x.dtype is not dt.bool_ else ''} (torch's "
                                       f"round_cpu); cast to a floating dtype first"))
    if not x.dtype.is_float:
        return x
    d = int(decimals)
    if d == 0:
        return _round_even(x)
    if d > 0:
        p = float(10 ** d)
        return div(_round_even(mul(x, p)), p)
    p = float(10 ** -d)
    return mul(_round_even(div(x, p)), p)


@refuses("frac", "frac_cpu", "integer")
def frac(input: Any) -> Tensor:
    """x - trunc(x), with x's sign."""
    x = _tensor(input)
    return sub(x, trunc(x))


# -- logs, powers, angles -------------------------------------------------------------------------

def _log_base(x: Tensor, base: float, ln_base: float) -> Tensor:
    """log(x) / log(base), exact at exact powers of the base (log2(8) is 3, not 3.0000000000000004)."""
    y = div(log(x), ln_base)
    r = _round_even(y)
    exact = logical_and(eq(stop_gradient(pow(full((), base, x.dtype), r)), x), lt(_absg(y), math.inf))
    return where(exact, add(r, sub(y, stop_gradient(y))), y)


def log2(input: Any) -> Tensor:
    """Base-2 logarithm (exact at powers of two)."""
    return _log_base(_float(input), 2.0, _LN2)


def log10(input: Any) -> Tensor:
    """Base-10 logarithm (exact at powers of ten)."""
    return _log_base(_float(input), 10.0, _LN10)


def float_power(input: Any, exponent: Any) -> Tensor:
    """torch.float_power: pow computed in f64."""
    a = cast(_as_operand(input), dt.float64) if not _is_scalar(input) else float(input)
    b = cast(_as_operand(exponent), dt.float64) if not _is_scalar(exponent) else float(exponent)
    if _is_scalar(a) and _is_scalar(b):
        a = full((), a, dt.float64)
    return pow(a, b)


def deg2rad(input: Any) -> Tensor:
    return mul(_float(input), math.pi / 180.0)


def rad2deg(input: Any) -> Tensor:
    return mul(_float(input), 180.0 / math.pi)


def negative(input: Any) -> Tensor:
    """torch.negative: -x."""
    return neg(input)


absolute = abs


def logit(input: Any, eps: float | None = None) -> Tensor:
    """log(x / (1 - x)), x first clamped to [eps, 1 - eps] when `eps` is given. With eps > 0.5 the
    bounds cross, and torch's kernel tests the low one first: x < eps gives eps, else x > 1 - eps gives
    1 - eps (where clamp would give 1 - eps everywhere); the gradient is zero outside [eps, 1 - eps]."""
    x = _float(input)
    if eps is not None:
        lo, hi = float(eps), 1.0 - float(eps)
        x = clamp(x, lo, hi) if lo <= hi else where(lt(x, lo), lo, where(gt(x, hi), hi, x))
    return log(div(x, sub(1.0, x)))


def xlogy(input: Any, other: Any) -> Tensor:
    """x * log(y), 0 where x is 0 (unless y is nan), with torch's gradients (d/dx = log y, zero
    where x is 0 and y <= 0)."""
    d = result_dtype(_as_operand(input), _as_operand(other))
    d = d if d.is_float else default_float_dtype()
    x, y = _prepare("xlogy", input, other, dtype=d)
    at_zero = logical_and(eq(x, 0.0), logical_not(isnan(y)))
    fine = logical_and(gt(y, 0.0), lt(y, math.inf))
    ys = where(logical_and(at_zero, logical_not(fine)), 1.0, y)
    return mul(x, log(ys))


@refuses("hypot", "hypot_cpu", "integer", (0, 1))
def hypot(input: Any, other: Any) -> Tensor:
    """sqrt(a^2 + b^2) without overflow: max * sqrt(1 + (min / max)^2); inf if either is inf."""
    d = result_dtype(_as_operand(input), _as_operand(other))
    a, b = _prepare("hypot", input, other, dtype=d if d.is_float else default_float_dtype())
    aa, ab = _absg(a), _absg(b)
    big = ge(aa, ab)
    m, n = where(big, aa, ab), where(big, ab, aa)
    zero = eq(m, 0.0)
    ms = where(zero, 1.0, m)
    r = div(n, ms)
    out = where(zero, 0.0, mul(m, sqrt(add(1.0, mul(r, r)))))
    return where(logical_or(isinf(a), isinf(b)), math.inf, out)


def _absg(x: Tensor) -> Tensor:
    """|x| as a selection: gradient 1 at 0 (abs's would be 0), which keeps compositions right there."""
    return where(lt(x, 0.0), neg(x), x)


@refuses("logaddexp", "logaddexp_cpu", "integer", (0, 1))
def logaddexp(input: Any, other: Any) -> Tensor:
    """log(exp(a) + exp(b)): m + log1p(exp(a - m) + exp(b - m) - 1) with m = max(a, b) held constant
    (one of the exps is exactly 1, so this is log1p(exp(-|a - b|)) in value, and the gradient is
    the softmax weights, 1/2 each at a tie)."""
    d = result_dtype(_as_operand(input), _as_operand(other))
    a, b = _prepare("logaddexp", input, other, dtype=d if d.is_float else default_float_dtype())
    m = stop_gradient(maximum(a, b))
    inf = isinf(m)
    ms = where(inf, 0.0, m)
    val = add(ms, log1p(sub(add(exp(sub(a, ms)), exp(sub(b, ms))), 1.0)))
    return where(inf, m, val)


def heaviside(input: Any, values: Any) -> Tensor:
    """0 where x < 0, `values` where x == 0, 1 where x > 0 (nan gives 0, as torch's CPU). Two
    tensors of different dtypes are torch's error (it does not promote here)."""
    if isinstance(input, Tensor) and isinstance(values, Tensor) and input.dtype != values.dtype:
        raise fail(DTypeRuntimeError("heaviside is not yet implemented for tensors with different dtypes."))
    x, v = _prepare("heaviside", input, values)
    return where(eq(x, 0), v, cast(gt(x, 0), x.dtype))


def signbit(input: Any) -> Tensor:
    """Whether the sign bit is set: x < 0, and -0.0 (1 / -0.0 is -inf). A nan reads as positive:
    without a bit-cast primitive its sign bit is not observable."""
    x = _tensor(input)
    if x.dtype is dt.bool_:
        return full(x.shape, False, dt.bool_)
    if not x.dtype.is_float:
        return lt(x, 0)
    return logical_or(lt(x, 0.0), logical_and(eq(x, 0.0), lt(div(1.0, x), 0.0)))


# -- trigonometric and hyperbolic -----------------------------------------------------------------

def tan(input: Any) -> Tensor:
    """sin(x) / cos(x)."""
    x = _float(input)
    return div(sin(x), cos(x))


def _half_exp(ax: Tensor) -> Tensor:
    """exp(ax) / 2 for ax >= 0: exp(ax) * 0.5 (exact halving) where exp(ax) is finite, exp(ax - t) *
    (exp(t) / 2) past t (ax - t exact), so cosh and sinh overflow only where they do themselves."""
    t = {dt.float64: 709.0, dt.float16: 11.0}.get(ax.dtype, 88.0)  # exp(t) / 2 fits the dtype (f16's max: 65504)
    big = gt(ax, t)
    return mul(exp(where(big, sub(ax, t), ax)), where(big, full((), math.exp(t) / 2, ax.dtype), 0.5))


def cosh(input: Any) -> Tensor:
    """exp(|x|) / 2 + exp(-|x|) / 2, the first halved before it can overflow."""
    x = _float(input)
    ax = _absg(x)
    return add(_half_exp(ax), mul(exp(neg(ax)), 0.5))


def sinh(input: Any) -> Tensor:
    """(expm1(x) - expm1(-x)) / 2 for |x| < 1 (no cancellation near 0), else sign * (exp(|x|) / 2
    - exp(-|x|) / 2)."""
    x = _float(input)
    small = lt(_absg(x), 1.0)
    xs = where(small, x, 0.0)
    near = mul(sub(expm1(xs), expm1(neg(xs))), 0.5)
    xl = where(small, 1.0, x)
    axl = _absg(xl)
    far = sub(_half_exp(axl), mul(exp(neg(axl)), 0.5))
    return where(small, near, where(lt(xl, 0.0), neg(far), far))


_ATAN_P = [-8.750608600031904122785e-1, -1.615753718733365076637e1, -7.500855792314704667340e1,
           -1.228866684490136173410e2, -6.485021904942025371773e1]
_ATAN_Q = [1.0, 2.485846490142306297962e1, 1.650270098316988542046e2, 4.328810604912902668951e2,
           4.853903996359136964868e2, 1.945506571482613964425e2]
_T3P8 = 2.41421356237309504880  # tan(3 pi / 8)
_MOREBITS = 6.123233995736765886130e-17  # pi/2 - its double


def _atan_nonneg(x: Tensor, *, bounded: bool = False) -> Tensor:
    """Cephes atan for x >= 0 (inf included); `bounded`: x is known to lie in [0, 1]."""
    big = gt(x, _T3P8) if not bounded else None
    mid = gt(x, 0.66)
    if big is not None:
        mid = logical_and(mid, logical_not(big))
    xm = where(mid, x, 0.0)
    r = where(mid, div(sub(xm, 1.0), add(xm, 1.0)), x)
    base = where(mid, full((), math.pi / 4, x.dtype), 0.0)
    extra = where(mid, full((), 0.5 * _MOREBITS, x.dtype), 0.0)
    if big is not None:
        xb = where(big, x, 1.0)
        r = where(big, div(-1.0, xb), r)
        base = where(big, math.pi / 2, base)
        extra = where(big, _MOREBITS, extra)
    z = mul(r, r)
    poly = div(mul(z, _horner(z, _ATAN_P)), _horner(z, _ATAN_Q))
    return add(base, add(add(mul(r, poly), r), extra))


def atan(input: Any) -> Tensor:
    """Arctangent (Cephes' rational approximation; odd: atan(-x) = -atan(x))."""
    x0 = _float(input)
    x, d = _wide(x0)
    negx = lt(x, 0.0)
    r = _atan_nonneg(where(negx, neg(x), x))
    return _back(where(negx, neg(r), r), d)


def atan2(input: Any, other: Any) -> Tensor:
    """The angle of (other, input) = (x, y) in [-pi, pi], with C's signed zeros and infinities:
    atan of min(|x|, |y|) / max(|x|, |y|) in [0, 1], then reflected into the octant."""
    dd = result_dtype(_as_operand(input), _as_operand(other))
    y, x = _prepare("atan2", input, other, dtype=dd if dd.is_float else default_float_dtype())
    y, back = _wide(y)
    x, _ = _wide(x)
    ay, ax = _absg(y), _absg(x)
    swap = gt(ay, ax)
    num, den = where(swap, ax, ay), where(swap, ay, ax)
    both_inf = logical_and(isinf(x), isinf(y))
    zero = eq(den, 0.0)
    t = div(where(zero, 0.0, num), where(zero, 1.0, den))
    t = where(both_inf, 1.0, t)
    r = _atan_nonneg(t, bounded=True)
    r = where(swap, sub(math.pi / 2, r), r)
    r = where(signbit(x), sub(math.pi, r), r)
    r = where(signbit(y), neg(r), r)
    return _back(r, back)


arctan2 = atan2


def asin(input: Any) -> Tensor:
    """atan2(x, sqrt((1 - x)(1 + x))); nan outside [-1, 1]."""
    x = _float(input)
    return atan2(x, sqrt(mul(sub(1.0, x), add(1.0, x))))


def acos(input: Any) -> Tensor:
    """atan2(sqrt((1 - x)(1 + x)), x); nan outside [-1, 1]."""
    x = _float(input)
    return atan2(sqrt(mul(sub(1.0, x), add(1.0, x))), x)


arcsin, arccos, arctan = asin, acos, atan


# -- special functions ----------------------------------------------------------------------------

_SHIFT = 8  # lgamma/digamma shift arguments below this past it with the recurrence


def _nearest_int_gap(x: Tensor) -> Tensor:
    """r = x - round(x) in [-0.5, 0.5]: sin(pi x) = +-sin(pi r), tan(pi x) = tan(pi r), exactly
    where x is huge (it is an integer there)."""
    r = sub(x, floor(add(x, 0.5)))
    return where(ge(_absg(x), _exact_limit(x.dtype)), 0.0, r)


def _lgamma_pos(x: Tensor) -> Tensor:
    """lgamma for x > 0: Stirling's series at z = x (+ 8 below 8, minus log of the shifted product)."""
    small = lt(x, float(_SHIFT))
    xs = where(small, x, 1.0)
    prod = xs
    for i in range(1, _SHIFT):
        prod = mul(prod, add(xs, float(i)))
    z = where(small, add(x, float(_SHIFT)), x)
    w = div(1.0, z)
    w2 = mul(w, w)
    series = mul(w, _horner(w2, [1.0 / 156, -691.0 / 360360, 1.0 / 1188, -1.0 / 1680, 1.0 / 1260, -1.0 / 360,
                                 1.0 / 12]))
    st = add(sub(mul(sub(z, 0.5), log(z)), z), add(0.5 * math.log(2 * math.pi), series))
    return where(small, sub(st, log(prod)), st)


def lgamma(input: Any) -> Tensor:
    """log|Gamma(x)|: Stirling past 8, the recurrence below, reflection for x < 0
    (log(pi / |sin(pi x)|) - lgamma(1 - x)); inf at 0, the negative integers and +-inf."""
    x0 = _float(input)
    x, d = (x0, None) if x0.dtype is dt.float64 else (cast(x0, dt.float64), x0.dtype)  # (cancellation near 1, 2)
    negx = lt(x, 0.0)
    pos = where(negx, sub(1.0, x), where(gt(x, 0.0), x, 1.0))
    finite = logical_not(isinf(pos))
    lp = _lgamma_pos(where(finite, pos, 1.0))
    s = _absg(sin(mul(_nearest_int_gap(where(negx, x, 0.5)), math.pi)))
    refl = sub(sub(math.log(math.pi), log(s)), lp)
    out = where(negx, refl, lp)
    out = where(logical_or(eq(x, 0.0), isinf(x)), math.inf, out)
    return _back(where(isnan(x), math.nan, out), d)


def _digamma_pos(x: Tensor) -> Tensor:
    """digamma for x >= 0 (-inf at 0): asymptotic series at z >= 8, minus sum 1/(x + i) below."""
    small = lt(x, float(_SHIFT))
    xs = where(small, x, 1.0)
    acc = div(1.0, xs)
    for i in range(1, _SHIFT):
        acc = add(acc, div(1.0, add(xs, float(i))))
    z = where(small, add(x, float(_SHIFT)), x)
    w = div(1.0, z)
    w2 = mul(w, w)
    series = mul(w2, _horner(w2, [-1.0 / 12, 691.0 / 32760, -1.0 / 132, 1.0 / 240, -1.0 / 252, 1.0 / 120,
                                  -1.0 / 12]))
    psi = add(sub(log(z), mul(w, 0.5)), series)
    return where(small, sub(psi, acc), psi)


def digamma(input: Any) -> Tensor:
    """psi(x) = d/dx lgamma(x): the asymptotic series past 8, the recurrence below, reflection
    psi(1 - x) - pi / tan(pi x) for x < 0; -inf at 0 (+inf at -0.0), nan at the negative integers."""
    x0 = _float(input)
    x, d = _wide(x0)
    negx = lt(x, 0.0)
    pos = where(negx, sub(1.0, x), x)
    finite = logical_not(isinf(pos))
    lp = _digamma_pos(where(finite, pos, 1.0))
    r = _nearest_int_gap(where(negx, x, 0.25))
    rs = where(eq(r, 0.0), 0.25, r)
    refl = sub(lp, div(math.pi, div(sin(mul(rs, math.pi)), cos(mul(rs, math.pi)))))
    out = where(negx, where(eq(r, 0.0), math.nan, refl), lp)
    out = where(eq(x, math.inf), math.inf, where(eq(x, -math.inf), math.nan, out))
    out = where(logical_and(eq(x, 0.0), signbit(x)), math.inf, out)
    return _back(out, d)


_GILES_SMALL = [2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087,
                -0.00125372503, -0.00417768164, 0.246640727, 1.50140941]
_GILES_BIG = [-0.000200214257, 0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773, -0.0076224613,
              0.00943887047, 1.00167406, 2.83297682]


def erfinv(input: Any) -> Tensor:
    """The inverse of erf on (-1, 1); +-inf at +-1, nan outside. Giles' approximation, then
    Newton steps x -= (erf(x) - y) * sqrt(pi)/2 * exp(x^2) (two in f64, one otherwise)."""
    y0 = _float(input)
    y, d = _wide(y0)
    edge = eq(_absg(y), 1.0)
    ys = where(logical_or(edge, isnan(y)), 0.0, y)
    ys = stop_gradient(ys)
    w = neg(log(mul(sub(1.0, ys), add(1.0, ys))))
    lo = lt(w, 5.0)
    p_small = _horner(sub(where(lo, w, 2.5), 2.5), _GILES_SMALL)
    p_big = _horner(sub(sqrt(where(lo, 9.0, w)), 3.0), _GILES_BIG)
    x = mul(where(lo, p_small, p_big), ys)
    yv = where(logical_or(edge, isnan(y)), 0.0, y)  # the gradient flows through the Newton steps
    c = math.sqrt(math.pi) / 2
    from .math_more import erfc  # (math_more builds on this module)
    ay = _absg(yv)
    tail = gt(ay, 0.5)
    logq = log(where(tail, sub(1.0, ay), 1.0))  # 1 - |y| is exact for |y| > 0.5
    for _ in range(3 if y.dtype is dt.float64 else 1):
        # In the tails (|y| > 0.5) Newton's step solves log(erfc(|x|)) = log(1 - |y|): erf(x) - y
        # cancels there and Giles' start is off beyond float32's range (erfinv(1 - 2**-52) came out
        # 5.41 for 5.81), while erfc keeps its relative precision and log(erfc) is nearly quadratic.
        ex = mul(c, exp(mul(x, x)))
        q = erfc(_absg(x))
        tail_step = mul(sign(yv), mul(mul(sub(log(where(tail, q, 1.0)), logq), q), ex))
        x = where(tail, add(x, tail_step), sub(x, mul(sub(erf(x), yv), ex)))
    out = where(edge, mul(sign(y), math.inf), x)
    out = where(logical_or(gt(_absg(y), 1.0), isnan(y)), math.nan, out)
    return _back(out, d)


# -- bitwise --------------------------------------------------------------------------------------

def _bitwise_operands(fn: str, a: Any, b: Any) -> tuple[Tensor, Tensor]:
    x, y = _prepare(fn, a, b)
    if x.dtype.is_float:
        raise fail(DTypeNotImplementedError(f"{fn}: not implemented for floating tensors ({x.dtype.name}); "
                                            "torch's bitwise ops take integers and bools"))
    return x, y


def _bits(x: Tensor) -> tuple[Tensor, Tensor, int]:
    """(value bits along a new trailing axis, sign bit, number of value bits) of an integer tensor:
    a signed type's bits below its sign bit (two's complement), all 8 of a uint8."""
    nb = x.dtype.bits - (0 if x.dtype.is_unsigned else 1)
    low = remainder(floor_divide(expand_dims(x, -1), _powers_of_two(nb, x.dtype)), 2)
    return low, lt(x, 0), nb


def _powers_of_two(n: int, d: dt.DType) -> Tensor:
    """[1, 2, 4, ..., 2 ** (n - 1)] in dtype `d`, doubled up from a splat: a dense array would be
    data captured in a traced graph, which `av.compile` traces anew on every call."""
    pw = full((1,), 1, d)
    while pw.shape[0] < n:
        pw = concat([pw, mul(pw, dt.wrap(1 << pw.shape[0], d))])  # (a wrapped entry past n is cut off)
    return slice_(pw, [0], [n]) if pw.shape[0] != n else pw


def _from_bits(low: Tensor, sgn: Tensor, d: dt.DType, nb: int) -> Tensor:
    v = sum(mul(cast(low, dt.int64), _powers_of_two(nb, dt.int64)), -1)
    if not d.is_unsigned:
        v = add(v, where(sgn, -(1 << nb), 0))
    return cast(v, d)


def _bitwise(fn: str, a: Any, b: Any, on_bool: Any, on_bits: Any) -> Tensor:
    x, y = _bitwise_operands(fn, a, b)
    if x.dtype is dt.bool_:
        return on_bool(x, y)
    lx, sx, nb = _bits(x)
    ly, sy, _ = _bits(y)
    return _from_bits(on_bits(lx, ly), on_bool(sx, sy), x.dtype, nb)


def bitwise_and(input: Any, other: Any) -> Tensor:
    """Bitwise AND of integers (logical AND of bools)."""
    return _bitwise("bitwise_and", input, other, logical_and, mul)


def bitwise_or(input: Any, other: Any) -> Tensor:
    """Bitwise OR of integers (logical OR of bools)."""
    return _bitwise("bitwise_or", input, other, logical_or, lambda p, q: sub(add(p, q), mul(p, q)))


def bitwise_xor(input: Any, other: Any) -> Tensor:
    """Bitwise XOR of integers (logical XOR of bools)."""
    return _bitwise("bitwise_xor", input, other, ne, lambda p, q: cast(ne(p, q), p.dtype))


def bitwise_not(input: Any) -> Tensor:
    """~x: -x - 1 for integers (two's complement), logical NOT for bools."""
    x = _tensor(input)
    if x.dtype.is_float:
        raise fail(DTypeNotImplementedError(f"bitwise_not: not implemented for floating tensors ({x.dtype.name})"))
    return logical_not(x) if x.dtype is dt.bool_ else sub(neg(x), 1)


def _shift_operands(fn: str, a: Any, b: Any) -> tuple[Tensor, Any]:
    """The shifted value in the promoted integer dtype, and the shift amount: a Python int as it is
    (it does not take part in the promotion beyond a scalar's), a tensor in that dtype too."""
    if _is_scalar(b) and not isinstance(b, (bool, np.bool_)) and isinstance(b, (int, np.integer)):
        x = _as_operand(a)
        x = full((), x, result_dtype(x)) if _is_scalar(x) else x
        if x.dtype is dt.bool_:  # torch promotes: a bool tensor shifted by an int is i64
            x = cast(x, result_dtype(x, b))
        if x.dtype.is_float or x.dtype is dt.bool_:
            raise fail(DTypeNotImplementedError(f"{fn}: not implemented for {dt.PY_NAMES[x.dtype.name]} tensors"))
        return x, int(b)
    x, k = _prepare(fn, a, b)
    if x.dtype.is_float or x.dtype is dt.bool_:
        raise fail(DTypeNotImplementedError(f"{fn}: not implemented for {dt.PY_NAMES[x.dtype.name]} tensors"))
    return x, k


def _by_powers(x: Tensor, k: Tensor, step: Any) -> Tensor:
    """x shifted by a tensor of amounts 0 <= k < bits: one conditional `step(v, 2 ** 2 ** j)` per
    bit j of k (the factors fit the dtype: at most 2 ** 32, and 16 for 8 bits)."""
    j = 0
    while (1 << j) < x.dtype.bits:
        on = eq(remainder(floor_divide(k, 1 << j), 2), 1)
        x = where(on, step(x, 1 << (1 << j)), x)
        j += 1
    return x


def bitwise_left_shift(input: Any, other: Any) -> Tensor:
    """x << k (torch's `<<`): the low bits of x * 2**k in x's (promoted) integer dtype, 0 where k is
    negative or at least the dtype's width, as torch's CPU kernels."""
    x, k = _shift_operands("bitwise_left_shift", input, other)
    bits = x.dtype.bits
    if isinstance(k, int):
        return mul(x, dt.wrap(1 << k, x.dtype)) if 0 <= k < bits else full(x.shape, 0, x.dtype)
    ok = logical_and(ge(k, 0), lt(k, bits))
    v = _by_powers(x, where(ok, k, 0), lambda v, f: mul(v, dt.wrap(f, x.dtype)))
    return where(ok, v, full((), 0, x.dtype))


def bitwise_right_shift(input: Any, other: Any) -> Tensor:
    """x >> k (torch's `>>`): arithmetic for signed dtypes (floor(x / 2**k)), logical for uint8; a
    negative shift or one past the dtype's width gives the sign's fill (-1 or 0), as torch's."""
    x, k = _shift_operands("bitwise_right_shift", input, other)
    top = x.dtype.bits - (0 if x.dtype.is_unsigned else 1)  # shifts from here on leave only the fill
    fill = where(lt(x, 0), full((), -1, x.dtype), full((), 0, x.dtype)) if not x.dtype.is_unsigned else (
        full(x.shape, 0, x.dtype))
    if isinstance(k, int):
        return floor_divide(x, 1 << k) if 0 <= k < top else fill
    ok = logical_and(ge(k, 0), lt(k, top))
    return where(ok, _by_powers(x, where(ok, k, 0), floor_divide), fill)


def logical_xor(input: Any, other: Any) -> Tensor:
    """True where exactly one of the two is non-zero."""
    a, b = _tensor(input), _tensor(other)
    ta = a if a.dtype is dt.bool_ else ne(a, 0)
    tb = b if b.dtype is dt.bool_ else ne(b, 0)
    return ne(ta, tb)


def clamp_min(input: Any, min: Any) -> Tensor:  # noqa: A002
    """clamp(x, min=min)."""
    return clamp(input, min=min)


def clamp_max(input: Any, max: Any) -> Tensor:  # noqa: A002
    """clamp(x, max=max)."""
    return clamp(input, max=max)


def nan_to_num(input: Any, nan: float = 0.0, posinf: float | None = None, neginf: float | None = None, *,
               out: Any = None) -> Tensor:
    """nan, +inf and -inf replaced (by 0 and the dtype's largest and lowest finite values by default).
    `out=` (EDM's `nan_to_num(p.grad, ..., out=p.grad)`) writes the result into that tensor, as its in-place
    methods do (same shape; every reference to it sees the write), and returns it."""
    if out is not None:
        from ..tensor import _update
        if not isinstance(out, Tensor):
            raise TypeError(f"nan_to_num(): argument 'out' must be Tensor, not {type(out).__name__}")
        return _update(out, nan_to_num(input, nan, posinf, neginf), "nan_to_num(out=)")
    x = _tensor(input)
    if not x.dtype.is_float:
        return x
    info = np.finfo(np.float32 if x.dtype is dt.bfloat16 else x.dtype.np)
    big = float(info.max) if x.dtype is not dt.bfloat16 else 3.3895313892515355e38
    hi = big if posinf is None else float(posinf)
    lo = -big if neginf is None else float(neginf)
    y = where(isnan(x), float(nan), x)
    y = where(eq(x, math.inf), hi, y)
    return where(eq(x, -math.inf), lo, y)


def isposinf(input: Any) -> Tensor:
    x = _tensor(input)
    return eq(x, math.inf) if x.dtype.is_float else full(x.shape, False, dt.bool_)


def isneginf(input: Any) -> Tensor:
    x = _tensor(input)
    return eq(x, -math.inf) if x.dtype.is_float else full(x.shape, False, dt.bool_)


def isreal(input: Any) -> Tensor:
    """Avalon has no complex dtypes: every element is real."""
    return full(_tensor(input).shape, True, dt.bool_)


def sgn(input: Any) -> Tensor:
    return sign(input)


__all__ = ["absolute", "acos", "arccos", "arcsin", "arctan", "arctan2", "asin", "atan", "atan2", "bitwise_and",
           "bitwise_left_shift", "bitwise_not", "bitwise_or", "bitwise_right_shift", "bitwise_xor",
           "ceil", "clamp_max", "clamp_min", "cosh", "deg2rad",
           "digamma", "erfinv", "float_power", "frac", "heaviside", "hypot", "isneginf", "isposinf", "isreal",
           "lgamma", "log10", "log2", "logaddexp", "logical_xor", "logit", "nan_to_num", "negative", "rad2deg",
           "round", "sgn", "signbit", "sinh", "tan", "xlogy"]

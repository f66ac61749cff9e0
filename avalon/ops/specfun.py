"""The special functions of torch.special that Avalon had no op for, composed from the elementwise
primitives (so they trace, compile, differentiate and run on every backend); `avalon.special`
gathers them under torch's names with torch's signatures.

Most are ports of the algorithms torch itself runs (aten/src/ATen/native/Math.h, derived from the
Cephes Math Library, 3-clause BSD, Stephen L. Moshier): the same Chebyshev series (Clenshaw's
recurrence), rational approximations, branch points and special values, so they agree with torch to
a few ulps. Where torch's code loops until a term falls below machine epsilon (zeta, airy_ai), the
loop runs a fixed number of times and an element stops accumulating where torch's would have
stopped. Differences from torch's code:
- `erfcx` uses Cephes' erfc rationals (which are erfc(x) exp(x^2) for x >= 1) instead of the
  Faddeeva package's 100-piece table, torch's continued fraction past 50, and exp(x^2) with x^2 split
  into an exact and a small part for negative x;
- `zeta` with q < 0 needs as many direct terms as -q: eagerly they are counted from the values, in
  a trace the bound is q >= -_TRACED_Q_MIN (elements below it are nan);
- `polygamma(1, x)` is zeta(2, x) (torch has a separate trigamma: the two agree to ~1e-15), and n!
  is exact (torch: exp(lgamma(n + 1))).
The orthogonal polynomials run the three-term recurrence up to the largest n (which must be known:
a Python number or a concrete tensor, not a traced one) and pick each element's n.
float32 zeta/polygamma compute in float64 (torch accumulates them in double too); half-precision
inputs compute in float32 and round back."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..ir import dtypes as dt
from ..tensor import Tensor, default_float_dtype
from .core import (
    _as_operand,
    _prepare,
    add,
    broadcast_to,
    cast,
    cos,
    div,
    eq,
    exp,
    fail,
    floor,
    full,
    ge,
    gt,
    isinf,
    isnan,
    le,
    log,
    logical_and,
    logical_not,
    logical_or,
    lt,
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
    trunc,
    where,
)
from .dtype_kernels import refuses
from .math_more import _ERFC_P, _ERFC_Q, _ERFC_R, _ERFC_S, erfc
from .mathfn import _absg, _back, _float, _horner, _wide, acos, digamma
from .pointwise import log1p

_SQRT1_2 = math.sqrt(0.5)
_INV_SQRT_PI = 1.0 / math.sqrt(math.pi)
_TWO_OVER_PI = 2.0 / math.pi
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _unary(input: Any) -> tuple[Tensor, Any]:
    return _wide(_float(input))


def _float_pair(name: str, input: Any, other: Any) -> list[Tensor]:
    d = result_dtype(_as_operand(input), _as_operand(other))
    return _prepare(name, input, other, dtype=d if d.is_float else default_float_dtype())


def _cheb(y: Tensor, coeffs: list[float]) -> Tensor:
    """Cephes' chbevl: sum' coeffs[i] T_i(y / 2), coefficients highest order first (Clenshaw)."""
    b0 = full(y.shape, coeffs[0], y.dtype)
    b1 = full(y.shape, 0.0, y.dtype)
    b2 = b1
    for c in coeffs[1:]:
        b2 = b1
        b1 = b0
        b0 = add(sub(mul(y, b1), b2), c)
    return mul(sub(b0, b2), 0.5)


def _signed(x: Tensor, v: Tensor) -> Tensor:
    return where(lt(x, 0.0), neg(v), v)


# -- entropy, xlog1py -------------------------------------------------------------------------------

def entr(input: Any) -> Tensor:
    """-x log(x) for x > 0, 0 at 0, -inf for x < 0 (nan stays nan)."""
    x, back = _unary(input)
    pos = gt(x, 0.0)
    xs = where(pos, x, 1.0)
    out = where(pos, neg(mul(xs, log(xs))), where(eq(x, 0.0), 0.0, -math.inf))
    return _back(where(isnan(x), x, out), back)


def xlog1py(input: Any, other: Any) -> Tensor:
    """x * log1p(y), 0 where x is 0 (unless y is nan); torch's gradients."""
    x, y = _float_pair("xlog1py", input, other)
    at_zero = logical_and(eq(x, 0.0), logical_not(isnan(y)))
    fine = logical_and(gt(y, -1.0), lt(y, math.inf))
    ys = where(logical_and(at_zero, logical_not(fine)), 0.0, y)
    return mul(x, log1p(ys))


# -- error function family ----------------------------------------------------------------------------

def _exp_square(a: Tensor) -> Tensor:
    """exp(a^2) to a few ulps: a = hi + lo with hi a multiple of 1/16, so hi^2 is exact."""
    hi = div(floor(mul(a, 16.0)), 16.0)
    lo = sub(a, hi)
    return mul(exp(mul(hi, hi)), exp(mul(lo, add(mul(hi, 2.0), lo))))


def _erfcx(x: Tensor) -> Tensor:
    a = _absg(x)
    near = lt(a, 1.0)
    xn = where(near, x, 0.0)
    v_near = mul(exp(mul(xn, xn)), erfc(xn))
    am = where(near, 1.0, minimum(a, 50.0))
    rational = where(lt(am, 8.0), div(_horner(am, _ERFC_P), _horner(am, _ERFC_Q)),
                     div(_horner(am, _ERFC_R), _horner(am, _ERFC_S)))
    huge = gt(a, 5e7)
    af = where(lt(a, 50.0), 50.0, where(huge, 1.0, a))
    a2 = mul(af, af)
    cf = div(mul(add(mul(a2, add(a2, 4.5)), 2.0), _INV_SQRT_PI), mul(af, add(mul(a2, add(a2, 5.0)), 3.75)))
    cf = where(huge, div(_INV_SQRT_PI, where(huge, a, 1.0)), cf)
    pos = where(lt(a, 50.0), rational, cf)  # erfcx(|x|) for |x| >= 1
    overflow = lt(x, -26.7)
    an = where(logical_and(lt(x, 0.0), logical_not(overflow)), a, 0.0)
    negative = sub(mul(_exp_square(an), 2.0), pos)
    far = where(lt(x, 0.0), where(overflow, math.inf, negative), pos)
    return where(near, v_near, where(isnan(x), x, far))


@refuses("erfcx", "erfcx_cpu", "half")
def erfcx(input: Any) -> Tensor:
    """exp(x^2) erfc(x) without overflow or underflow: exp(x^2) erfc(x) for |x| < 1, Cephes' rational
    erfc(x) exp(x^2) for 1 <= x < 50, a continued fraction beyond (1 / (sqrt(pi) x) past 5e7),
    2 exp(x^2) - erfcx(-x) for x <= -1 (inf below -26.7)."""
    x, back = _unary(input)
    return _back(_erfcx(x), back)


def ndtr(input: Any) -> Tensor:
    """The standard normal CDF: erfc(-x / sqrt 2) / 2 (full relative precision in the left tail)."""
    x, back = _unary(input)
    return _back(mul(erfc(mul(x, -_SQRT1_2)), 0.5), back)


@refuses("log_ndtr", "log_ndtr_cpu", "half")
def log_ndtr(input: Any) -> Tensor:
    """log of the normal CDF: log(erfcx(-t) / 2) - t^2 for x < -1 (t = x / sqrt 2; stable far into the
    left tail), log1p(-erfc(t) / 2) otherwise, as torch."""
    x, back = _unary(input)
    left = lt(x, -1.0)
    t = mul(x, _SQRT1_2)
    tl = where(left, t, -1.0)
    tr = where(left, 0.0, t)
    lo = sub(log(mul(_erfcx(neg(tl)), 0.5)), mul(tl, tl))
    hi = log1p(mul(erfc(tr), -0.5))
    return _back(where(left, lo, hi), back)


_NDTRI_P0 = [-5.99633501014107895267E1, 9.80010754185999661536E1, -5.66762857469070293439E1,
             1.39312609387279679503E1, -1.23916583867381258016E0]
_NDTRI_Q0 = [1.0, 1.95448858338141759834E0, 4.67627912898881538453E0, 8.63602421390890590575E1,
             -2.25462687854119370527E2, 2.00260212380060660359E2, -8.20372256168333339912E1,
             1.59056225126211695515E1, -1.18331621121330003142E0]
_NDTRI_P1 = [4.05544892305962419923E0, 3.15251094599893866154E1, 5.71628192246421288162E1,
             4.40805073893200834700E1, 1.46849561928858024014E1, 2.18663306850790267539E0,
             -1.40256079171354495875E-1, -3.50424626827848203418E-2, -8.57456785154685413611E-4]
_NDTRI_Q1 = [1.0, 1.57799883256466749731E1, 4.53907635128879210584E1, 4.13172038254672030440E1,
             1.50425385692907503408E1, 2.50464946208309415979E0, -1.42182922854787788574E-1,
             -3.80806407691578277194E-2, -9.33259480895457427372E-4]
_NDTRI_P2 = [3.23774891776946035970E0, 6.91522889068984211695E0, 3.93881025292474443415E0,
             1.33303460815807542389E0, 2.01485389549179081538E-1, 1.23716634817820021358E-2,
             3.01581553508235416007E-4, 2.65806974686737550832E-6, 6.23974539184983293730E-9]
_NDTRI_Q2 = [1.0, 6.02427039364742014255E0, 3.67983563856160859403E0, 1.37702099489081330271E0,
             2.16236993594496635890E-1, 1.34204006088543189037E-2, 3.28014464682127739104E-4,
             2.89247864745380683936E-6, 6.79019408009981274425E-9]
_EXP_M2 = 0.13533528323661269189  # exp(-2)


@refuses("ndtri", "ndtri_cpu", "half")
def ndtri(input: Any) -> Tensor:
    """The inverse of the normal CDF (Cephes' ndtri, as torch): a rational function of y - 1/2 in the
    middle, of 1 / sqrt(-2 log y) in the tails; -inf at 0, inf at 1, nan outside [0, 1]."""
    y0, back = _unary(input)
    flip = gt(y0, 1.0 - _EXP_M2)
    y = where(flip, sub(1.0, y0), y0)
    central = gt(y, _EXP_M2)
    yc = sub(where(central, y, 0.5), 0.5)
    y2 = mul(yc, yc)
    mid = mul(add(yc, mul(yc, div(mul(y2, _horner(y2, _NDTRI_P0)), _horner(y2, _NDTRI_Q0)))), 2.50662827463100050242)
    ok = logical_and(gt(y, 0.0), logical_not(central))
    yt = where(ok, y, 0.1)
    xt = sqrt(mul(log(yt), -2.0))
    x0 = sub(xt, div(log(xt), xt))
    z = div(1.0, xt)
    x1 = where(lt(xt, 8.0), div(mul(z, _horner(z, _NDTRI_P1)), _horner(z, _NDTRI_Q1)),
               div(mul(z, _horner(z, _NDTRI_P2)), _horner(z, _NDTRI_Q2)))
    tail = sub(x0, x1)
    tail = where(flip, tail, neg(tail))
    out = where(central, mid, tail)
    out = where(eq(y0, 0.0), -math.inf, where(eq(y0, 1.0), math.inf, out))
    out = where(logical_or(lt(y0, 0.0), gt(y0, 1.0)), math.nan, out)
    return _back(where(isnan(y0), y0, out), back)


# -- modified Bessel functions ------------------------------------------------------------------------

_I0_A = [-4.41534164647933937950E-18, 3.33079451882223809783E-17, -2.43127984654795469359E-16,
         1.71539128555513303061E-15, -1.16853328779934516808E-14, 7.67618549860493561688E-14,
         -4.85644678311192946090E-13, 2.95505266312963983461E-12, -1.72682629144155570723E-11,
         9.67580903537323691224E-11, -5.18979560163526290666E-10, 2.65982372468238665035E-9,
         -1.30002500998624804212E-8, 6.04699502254191894932E-8, -2.67079385394061173391E-7,
         1.11738753912010371815E-6, -4.41673835845875056359E-6, 1.64484480707288970893E-5,
         -5.75419501008210370398E-5, 1.88502885095841655729E-4, -5.76375574538582365885E-4,
         1.63947561694133579842E-3, -4.32430999505057594430E-3, 1.05464603945949983183E-2,
         -2.37374148058994688156E-2, 4.93052842396707084878E-2, -9.49010970480476444210E-2,
         1.71620901522208775349E-1, -3.04682672343198398683E-1, 6.76795274409476084995E-1]
_I0_B = [-7.23318048787475395456E-18, -4.83050448594418207126E-18, 4.46562142029675999901E-17,
         3.46122286769746109310E-17, -2.82762398051658348494E-16, -3.42548561967721913462E-16,
         1.77256013305652638360E-15, 3.81168066935262242075E-15, -9.55484669882830764870E-15,
         -4.15056934728722208663E-14, 1.54008621752140982691E-14, 3.85277838274214270114E-13,
         7.18012445138366623367E-13, -1.79417853150680611778E-12, -1.32158118404477131188E-11,
         -3.14991652796324136454E-11, 1.18891471078464383424E-11, 4.94060238822496958910E-10,
         3.39623202570838634515E-9, 2.26666899049817806459E-8, 2.04891858946906374183E-7,
         2.89137052083475648297E-6, 6.88975834691682398426E-5, 3.36911647825569408990E-3,
         8.04490411014108831608E-1]
_I1_A = [2.77791411276104639959E-18, -2.11142121435816608115E-17, 1.55363195773620046921E-16,
         -1.10559694773538630805E-15, 7.60068429473540693410E-15, -5.04218550472791168711E-14,
         3.22379336594557470981E-13, -1.98397439776494371520E-12, 1.17361862988909016308E-11,
         -6.66348972350202774223E-11, 3.62559028155211703701E-10, -1.88724975172282928790E-9,
         9.38153738649577178388E-9, -4.44505912879632808065E-8, 2.00329475355213526229E-7,
         -8.56872026469545474066E-7, 3.47025130813767847674E-6, -1.32731636560394358279E-5,
         4.78156510755005422638E-5, -1.61760815825896745588E-4, 5.12285956168575772895E-4,
         -1.51357245063125314899E-3, 4.15642294431288815669E-3, -1.05640848946261981558E-2,
         2.47264490306265168283E-2, -5.29459812080949914269E-2, 1.02643658689847095384E-1,
         -1.76416518357834055153E-1, 2.52587186443633654823E-1]
_I1_B = [7.51729631084210481353E-18, 4.41434832307170791151E-18, -4.65030536848935832153E-17,
         -3.20952592199342395980E-17, 2.96262899764595013876E-16, 3.30820231092092828324E-16,
         -1.88035477551078244854E-15, -3.81440307243700780478E-15, 1.04202769841288027642E-14,
         4.27244001671195135429E-14, -2.10154184277266431302E-14, -4.08355111109219731823E-13,
         -7.19855177624590851209E-13, 2.03562854414708950722E-12, 1.41258074366137813316E-11,
         3.25260358301548823856E-11, -1.89749581235054123450E-11, -5.58974346219658380687E-10,
         -3.83538038596423702205E-9, -2.63146884688951950684E-8, -2.51223623787020892529E-7,
         -3.88256480887769039346E-6, -1.10588938762623716291E-4, -9.76109749136146840777E-3,
         7.78576235018280120474E-1]
_K0_A = [1.37446543561352307156e-16, 4.25981614279661018399e-14, 1.03496952576338420167e-11,
         1.90451637722020886025e-09, 2.53479107902614945675e-07, 2.28621210311945178607e-05,
         1.26461541144692592338e-03, 3.59799365153615016266e-02, 3.44289899924628486886e-01,
         -5.35327393233902768720e-01]
_K0_B = [5.30043377268626276149e-18, -1.64758043015242134646e-17, 5.21039150503902756861e-17,
         -1.67823109680541210385e-16, 5.51205597852431940784e-16, -1.84859337734377901440e-15,
         6.34007647740507060557e-15, -2.22751332699166985548e-14, 8.03289077536357521100e-14,
         -2.98009692317273043925e-13, 1.14034058820847496303e-12, -4.51459788337394416547e-12,
         1.85594911495471785253e-11, -7.95748924447710747776e-11, 3.57739728140030116597e-10,
         -1.69753450938905987466e-09, 8.57403401741422608519e-09, -4.66048989768794782956e-08,
         2.76681363944501510342e-07, -1.83175552271911948767e-06, 1.39498137188764993662e-05,
         -1.28495495816278026384e-04, 1.56988388573005337491e-03, -3.14481013119645005427e-02,
         2.44030308206595545468e+00]
_K1_A = [-7.02386347938628759343e-18, -2.42744985051936593393e-15, -6.66690169419932900609e-13,
         -1.41148839263352776110e-10, -2.21338763073472585583e-08, -2.43340614156596823496e-06,
         -1.73028895751305206302e-04, -6.97572385963986435018e-03, -1.22611180822657148235e-01,
         -3.53155960776544875667e-01, 1.52530022733894777053e+00]
_K1_B = [-5.75674448366501715755e-18, 1.79405087314755922667e-17, -5.68946255844285935196e-17,
         1.83809354436663880070e-16, -6.05704724837331885336e-16, 2.03870316562433424052e-15,
         -7.01983709041831346144e-15, 2.47715442448130437068e-14, -8.97670518232499435011e-14,
         3.34841966607842919884e-13, -1.28917396095102890680e-12, 5.13963967348173025100e-12,
         -2.12996783842756842877e-11, 9.21831518760500529508e-11, -4.19035475934189648750e-10,
         2.01504975519703286596e-09, -1.03457624656780970260e-08, 5.74108412545004946722e-08,
         -3.50196060308781257119e-07, 2.40648494783721712015e-06, -1.93619797416608296024e-05,
         1.95215518471351631108e-04, -2.85781685962277938680e-03, 1.03923736576817238437e-01,
         2.72062619048444266945e+00]


def _i_parts(x: Tensor, a_coeffs: list[float], b_coeffs: list[float]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(|x|, |x| <= 8, the [0, 8] series at |x| / 2 - 2, the (8, inf) series at 32 / |x| - 2)."""
    a = _absg(x)
    small = le(a, 8.0)
    near = _cheb(sub(mul(where(small, a, 0.0), 0.5), 2.0), a_coeffs)
    ab = where(small, 8.0, a)
    far = _cheb(sub(div(32.0, ab), 2.0), b_coeffs)
    return a, small, near, far


def _i1e_coeffs(d: dt.DType) -> tuple[list[float], list[float]]:
    return (_I1_A, _I1_B) if d is dt.float64 else (_I1_A[12:], _I1_B[18:])  # torch's float tables


def i0e(input: Any) -> Tensor:
    """exp(-|x|) I0(x): Cephes' Chebyshev series on [0, 8] and (8, inf)."""
    x, back = _unary(input)
    a, small, near, far = _i_parts(x, _I0_A, _I0_B)
    return _back(where(small, near, div(far, sqrt(where(small, 1.0, a)))), back)


def i1e(input: Any) -> Tensor:
    """exp(-|x|) I1(x): Cephes' Chebyshev series, odd."""
    x, back = _unary(input)
    ca, cb = _i1e_coeffs(x.dtype)
    a, small, near, far = _i_parts(x, ca, cb)
    out = where(small, mul(near, a), div(far, sqrt(where(small, 1.0, a))))
    return _back(_signed(x, out), back)


def i1(input: Any) -> Tensor:
    """I1(x): exp(|x|) times i1e's series (inf past exp's range, nan at +-inf as torch)."""
    x, back = _unary(input)
    ca, cb = _i1e_coeffs(x.dtype)
    a, small, near, far = _i_parts(x, ca, cb)
    ea = exp(a)
    out = where(small, mul(mul(ea, a), near), div(mul(ea, far), sqrt(where(small, 1.0, a))))
    return _back(_signed(x, out), back)


def _mod_i0(x: Tensor) -> Tensor:
    a, small, near, far = _i_parts(x, _I0_A, _I0_B)
    ea = exp(a)
    return where(small, mul(ea, near), div(mul(ea, far), sqrt(where(small, 1.0, a))))


def _mod_i1(x: Tensor) -> Tensor:
    a, small, near, far = _i_parts(x, _I1_A, _I1_B)
    ea = exp(a)
    out = where(small, mul(mul(near, a), ea), div(mul(ea, far), sqrt(where(small, 1.0, a))))
    return _signed(x, out)


@refuses("modified_bessel_i0", "modified_bessel_i0_cpu", "half")
def modified_bessel_i0(input: Any) -> Tensor:
    """I0(x), torch's modified_bessel_i0 (Cephes' series times exp(|x|); nan at +-inf)."""
    x, back = _unary(input)
    return _back(_mod_i0(x), back)


@refuses("modified_bessel_i1", "modified_bessel_i1_cpu", "half")
def modified_bessel_i1(input: Any) -> Tensor:
    """I1(x), torch's modified_bessel_i1 (Cephes' series; nan at +-inf)."""
    x, back = _unary(input)
    return _back(_mod_i1(x), back)


def _k(x: Tensor, order: int, scaled: bool) -> Tensor:
    """K0 / K1 (times exp(x) when scaled): Cephes' series in x^2 - 2 with the I log term on (0, 2], the
    series at 8 / x - 2 beyond; inf at 0, nan below."""
    small = le(x, 2.0)
    xs = where(logical_and(small, gt(x, 0.0)), x, 1.0)
    if order == 0:
        near = sub(_cheb(sub(mul(xs, xs), 2.0), _K0_A), mul(log(mul(xs, 0.5)), _mod_i0(xs)))
    else:
        near = add(mul(log(mul(xs, 0.5)), _mod_i1(xs)), div(_cheb(sub(mul(xs, xs), 2.0), _K1_A), xs))
    if scaled:
        near = mul(near, exp(xs))
    xb = where(small, 4.0, x)
    far = div(_cheb(sub(div(8.0, xb), 2.0), _K0_B if order == 0 else _K1_B), sqrt(xb))
    if not scaled:
        far = mul(exp(neg(xb)), far)
    out = where(small, near, far)
    out = where(eq(x, 0.0), math.inf, where(lt(x, 0.0), math.nan, out))
    return where(isnan(x), x, out)


@refuses("modified_bessel_k0", "modified_bessel_k0_cpu", "half")
def modified_bessel_k0(input: Any) -> Tensor:
    """K0(x) for x >= 0 (Cephes, as torch)."""
    x, back = _unary(input)
    return _back(_k(x, 0, False), back)


@refuses("modified_bessel_k1", "modified_bessel_k1_cpu", "half")
def modified_bessel_k1(input: Any) -> Tensor:
    """K1(x) for x >= 0 (Cephes, as torch)."""
    x, back = _unary(input)
    return _back(_k(x, 1, False), back)


@refuses("scaled_modified_bessel_k0", "scaled_modified_bessel_k0_cpu", "half")
def scaled_modified_bessel_k0(input: Any) -> Tensor:
    """exp(x) K0(x) (Cephes, as torch)."""
    x, back = _unary(input)
    return _back(_k(x, 0, True), back)


@refuses("scaled_modified_bessel_k1", "scaled_modified_bessel_k1_cpu", "half")
def scaled_modified_bessel_k1(input: Any) -> Tensor:
    """exp(x) K1(x) (Cephes, as torch)."""
    x, back = _unary(input)
    return _back(_k(x, 1, True), back)


# -- Bessel functions of the first and second kind ------------------------------------------------------

_J0_PP = [7.96936729297347051624e-04, 8.28352392107440799803e-02, 1.23953371646414299388e+00,
          5.44725003058768775090e+00, 8.74716500199817011941e+00, 5.30324038235394892183e+00,
          9.99999999999999997821e-01]
_J0_PQ = [9.24408810558863637013e-04, 8.56288474354474431428e-02, 1.25352743901058953537e+00,
          5.47097740330417105182e+00, 8.76190883237069594232e+00, 5.30605288235394617618e+00,
          1.00000000000000000218e+00]
_J0_QP = [-1.13663838898469149931e-02, -1.28252718670509318512e+00, -1.95539544257735972385e+01,
          -9.32060152123768231369e+01, -1.77681167980488050595e+02, -1.47077505154951170175e+02,
          -5.14105326766599330220e+01, -6.05014350600728481186e+00]
_J0_QQ = [6.43178256118178023184e+01, 8.56430025976980587198e+02, 3.88240183605401609683e+03,
          7.24046774195652478189e+03, 5.93072701187316984827e+03, 2.06209331660327847417e+03,
          2.42005740240291393179e+02]
_J0_RP = [-4.79443220978201773821e+09, 1.95617491946556577543e+12, -2.49248344360967716204e+14,
          9.70862251047306323952e+15]
_J0_RQ = [4.99563147152651017219e+02, 1.73785401676374683123e+05, 4.84409658339962045305e+07,
          1.11855537045356834862e+10, 2.11277520115489217587e+12, 3.10518229857422583814e+14,
          3.18121955943204943306e+16, 1.71086294081043136091e+18]
_J1_PP = [7.62125616208173112003e-04, 7.31397056940917570436e-02, 1.12719608129684925192e+00,
          5.11207951146807644818e+00, 8.42404590141772420927e+00, 5.21451598682361504063e+00,
          1.00000000000000000254e+00]
_J1_PQ = [5.71323128072548699714e-04, 6.88455908754495404082e-02, 1.10514232634061696926e+00,
          5.07386386128601488557e+00, 8.39985554327604159757e+00, 5.20982848682361821619e+00,
          9.99999999999999997461e-01]
_J1_QP = [5.10862594750176621635e-02, 4.98213872951233449420e+00, 7.58238284132545283818e+01,
          3.66779609360150777800e+02, 7.10856304998926107277e+02, 5.97489612400613639965e+02,
          2.11688757100572135698e+02, 2.52070205858023719784e+01]
_J1_QQ = [7.42373277035675149943e+01, 1.05644886038262816351e+03, 4.98641058337653607651e+03,
          9.56231892404756170795e+03, 7.99704160447350683650e+03, 2.82619278517639096600e+03,
          3.36093607810698293419e+02]
_J1_RP = [-8.99971225705559398224e+08, 4.52228297998194034323e+11, -7.27494245221818276015e+13,
          3.68295732863852883286e+15]
_J1_RQ = [6.20836478118054335476e+02, 2.56987256757748830383e+05, 8.35146791431949253037e+07,
          2.21511595479792499675e+10, 4.74914122079991414898e+12, 7.84369607876235854894e+14,
          8.95222336184627338078e+16, 5.32278620332680085395e+18]
_Y0_YP = [1.55924367855235737965e+04, -1.46639295903971606143e+07, 5.43526477051876500413e+09,
          -9.82136065717911466409e+11, 8.75906394395366999549e+13, -3.46628303384729719441e+15,
          4.42733268572569800351e+16, -1.84950800436986690637e+16]
_Y0_YQ = [1.04128353664259848412e+03, 6.26107330137134956842e+05, 2.68919633393814121987e+08,
          8.64002487103935000337e+10, 2.02979612750105546709e+13, 3.17157752842975028269e+15,
          2.50596256172653059228e+17]
_Y1_YP = [1.26320474790178026440e+09, -6.47355876379160291031e+11, 1.14509511541823727583e+14,
          -8.12770255501325109621e+15, 2.02439475713594898196e+17, -7.78877196265950026825e+17]
_Y1_YQ = [5.94301592346128195359e+02, 2.35564092943068577943e+05, 7.34811944459721705660e+07,
          1.87601316108706159478e+10, 3.88231277496238566008e+12, 6.20557727146953693363e+14,
          6.87141087355300489866e+16, 3.97270608116560655612e+18]
_PIO4 = 0.785398163397448309615660845819875721
_3PIO4 = 2.356194490192344928846982537459627163


def _hankel(a: Tensor, order: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(P, 5/a * Q, phase, sqrt(2 / (pi a))) of the large-argument form, a > 5."""
    if order == 0:
        w = div(25.0, mul(a, a))
        pp, pq, qp, qq, phase = _J0_PP, _J0_PQ, _J0_QP, _J0_QQ, _PIO4
    else:
        w = mul(div(5.0, a), div(5.0, a))
        pp, pq, qp, qq, phase = _J1_PP, _J1_PQ, _J1_QP, _J1_QQ, _3PIO4
    p = div(_horner(w, pp), _horner(w, pq))
    q = mul(div(5.0, a), div(_horner(w, qp), _horner(w, qq)))
    return p, q, sub(a, phase), div(_SQRT_2_OVER_PI, sqrt(a))


def _j0(x: Tensor) -> Tensor:
    a = _absg(x)
    small = le(a, 5.0)
    s = where(small, a, 0.0)
    z = mul(s, s)
    near = div(mul(mul(sub(z, 5.78318596294678452118e+00), sub(z, 3.04712623436620863991e+01)),
                   _horner(z, _J0_RP)), _horner(z, _J0_RQ))
    near = where(lt(s, 1e-5), sub(1.0, div(z, 4.0)), near)
    b = where(small, 6.0, a)
    p, q, t, c = _hankel(b, 0)
    far = mul(sub(mul(p, cos(t)), mul(q, sin(t))), c)
    return where(small, near, far)


def _j1(x: Tensor) -> Tensor:
    a = _absg(x)
    small = le(a, 5.0)
    s = where(small, a, 0.0)
    z = mul(s, s)
    near = mul(mul(mul(div(_horner(z, _J1_RP), _horner(z, _J1_RQ)), s), sub(z, 1.46819706421238932572e+01)),
               sub(z, 4.92184563216946036703e+01))
    b = where(small, 6.0, a)
    p, q, t, c = _hankel(b, 1)
    far = mul(sub(mul(p, cos(t)), mul(q, sin(t))), c)
    return _signed(x, where(small, near, far))


@refuses("bessel_j0", "bessel_j0_cpu", "half")
def bessel_j0(input: Any) -> Tensor:
    """J0(x): Cephes' rational approximation on [0, 5], the Hankel asymptotic form beyond."""
    x, back = _unary(input)
    return _back(_j0(x), back)


@refuses("bessel_j1", "bessel_j1_cpu", "half")
def bessel_j1(input: Any) -> Tensor:
    """J1(x): Cephes' rational approximation on [0, 5], the Hankel asymptotic form beyond; odd."""
    x, back = _unary(input)
    return _back(_j1(x), back)


def _y(x: Tensor, order: int) -> Tensor:
    small = le(x, 5.0)
    s = where(logical_and(small, gt(x, 0.0)), x, 1.0)
    z = mul(s, s)
    if order == 0:
        near = add(div(_horner(z, _Y0_YP), _horner(z, _Y0_YQ)), mul(mul(log(s), _TWO_OVER_PI), _j0(s)))
    else:
        near = add(mul(s, div(_horner(z, _Y1_YP), _horner(z, _Y1_YQ))),
                   mul(sub(mul(_j1(s), log(s)), div(1.0, s)), _TWO_OVER_PI))
    b = where(small, 6.0, x)
    p, q, t, c = _hankel(b, order)
    far = mul(add(mul(p, sin(t)), mul(q, cos(t))), c)
    out = where(small, near, far)
    out = where(eq(x, 0.0), -math.inf, where(lt(x, 0.0), math.nan, out))
    return where(isnan(x), x, out)


@refuses("bessel_y0", "bessel_y0_cpu", "half")
def bessel_y0(input: Any) -> Tensor:
    """Y0(x) for x >= 0 (Cephes, as torch): -inf at 0, nan below."""
    x, back = _unary(input)
    return _back(_y(x, 0), back)


@refuses("bessel_y1", "bessel_y1_cpu", "half")
def bessel_y1(input: Any) -> Tensor:
    """Y1(x) for x >= 0 (Cephes, as torch): -inf at 0, nan below."""
    x, back = _unary(input)
    return _back(_y(x, 1), back)


@refuses("spherical_bessel_j0", "spherical_bessel_j0_cpu", "half")
def spherical_bessel_j0(input: Any) -> Tensor:
    """sin(x) / x, its Taylor polynomial below 0.5; 0 at +-inf."""
    x, back = _unary(input)
    a = _absg(x)
    small = lt(a, 0.5)
    xs = where(small, x, 1.0)
    z = mul(xs, xs)
    series = add(1.0, mul(z, _horner(z, [1.0 / 6227020800.0, -1.0 / 39916800.0, 1.0 / 362880.0, -1.0 / 5040.0,
                                         1.0 / 120.0, -1.0 / 6.0])))
    xl = where(logical_or(small, isinf(x)), 1.0, x)
    out = where(small, series, div(sin(xl), xl))
    return _back(where(isinf(x), 0.0, out), back)


_AI_AN = [3.46538101525629032477e-01, 1.20075952739645805542e+01, 7.62796053615234516538e+01,
          1.68089224934630576269e+02, 1.59756391350164413639e+02, 7.05360906840444183113e+01,
          1.40264691163389668864e+01, 9.99999999999999995305e-01]
_AI_AD = [5.67594532638770212846e-01, 1.47562562584847203173e+01, 8.45138970141474626562e+01,
          1.77318088145400459522e+02, 1.64234692871529701831e+02, 7.14778400825575695274e+01,
          1.40959135607834029598e+01, 1.00000000000000000470e+00]
_AI_AFN = [-1.31696323418331795333e-01, -6.26456544431912369773e-01, -6.93158036036933542233e-01,
           -2.79779981545119124951e-01, -4.91900132609500318020e-02, -4.06265923594885404393e-03,
           -1.59276496239262096340e-04, -2.77649108155232920844e-06, -1.67787698489114633780e-08]
_AI_AFD = [1.33560420706553243746e+01, 3.26825032795224613948e+01, 2.67367040941499554804e+01,
           9.18707402907259625840e+00, 1.47529146771666414581e+00, 1.15687173795188044134e-01,
           4.40291641615211203805e-03, 7.54720348287414296618e-05, 4.51850092970580378464e-07]
_AI_AGN = [1.97339932091685679179e-02, 3.91103029615688277255e-01, 1.06579897599595591108e+00,
           9.39169229816650230044e-01, 3.51465656105547619242e-01, 6.33888919628925490927e-02,
           5.85804113048388458567e-03, 2.82851600836737019778e-04, 6.98793669997260967291e-06,
           8.11789239554389293311e-08, 3.41551784765923618484e-10]
_AI_AGD = [9.30892908077441974853e+00, 1.98352928718312140417e+01, 1.55646628932864612953e+01,
           5.47686069422975497931e+00, 9.54293611618961883998e-01, 8.64580826352392193095e-02,
           4.12656523824222607191e-03, 1.01259085116509135510e-04, 1.17166733214413521882e-06,
           4.91834570062930015649e-09]
_AIRY_TERMS = 16  # |x| < 2.09: the Maclaurin terms fall below f64 epsilon by the 12th


@refuses("airy_ai", "airy_ai_cpu", "half")
def airy_ai(input: Any) -> Tensor:
    """Ai(x) (Cephes, as torch): the Maclaurin series on (-2.09, 2.09), the modulus-phase asymptotic
    form below, the exponentially decaying one above (0 past 103.892); nan at +-inf."""
    x, back = _unary(input)
    eps = float(np.finfo(np.float64 if x.dtype is dt.float64 else np.float32).eps)
    lo, hi = lt(x, -2.09), ge(x, 2.09)
    # x < -2.09
    xn = where(lo, x, -3.0)
    r = sqrt(neg(xn))
    zeta_n = div(mul(mul(xn, -2.0), r), 3.0)
    z = div(1.0, zeta_n)
    zz = mul(z, z)
    f = add(1.0, div(mul(zz, _horner(zz, _AI_AFN)), _horner(zz, _AI_AFD)))
    g = div(mul(z, _horner(zz, _AI_AGN)), _horner(zz, _AI_AGD))
    t = add(zeta_n, 0.25 * math.pi)
    left = mul(div(0.564189583547756286948, sqrt(r)), sub(mul(sin(t), f), mul(cos(t), g)))
    # x >= 2.09
    xp = where(hi, minimum(x, 104.0), 3.0)
    zeta_p = div(mul(mul(xp, 2.0), sqrt(xp)), 3.0)
    iz = div(1.0, zeta_p)
    right = div(mul(div(_horner(iz, _AI_AN), _horner(iz, _AI_AD)), 0.564189583547756286948),
                mul(mul(sqrt(sqrt(xp)), 2.0), exp(zeta_p)))
    right = where(gt(x, 103.892), 0.0, right)
    # the Maclaurin series, each element stopping where torch's loop does
    xm = where(logical_or(lo, hi), 0.0, x)
    zc = mul(mul(xm, xm), xm)
    fs, gs = full(x.shape, 1.0, x.dtype), xm
    m, n, k = fs, xm, 1.0
    active = full(x.shape, True, dt.bool_)
    for _ in range(_AIRY_TERMS):
        m = div(mul(m, zc), k + 1.0)
        n = div(mul(n, zc), k + 2.0)
        m = div(m, k + 2.0)
        n = div(n, k + 3.0)
        k += 3.0
        fs = where(active, add(fs, m), fs)
        gs = where(active, add(gs, n), gs)
        active = logical_and(active, gt(_absg(div(m, fs)), eps))
    mid = sub(mul(fs, 0.355028053887817239260), mul(gs, 0.258819403792806798405))
    out = where(lo, left, where(hi, right, mid))
    return _back(where(isinf(x), math.nan, out), back)


# -- Hurwitz zeta and polygamma --------------------------------------------------------------------

_ZETA_A = [12.0, -720.0, 30240.0, -1209600.0, 47900160.0, -1.8924375803183791606e9, 7.47242496e10,
           -2.950130727918164224e12, 1.1646782814350067249e14, -4.5979787224074726105e15,
           1.8152105401943546773e17, -7.1661652561756670113e18]
_MACHEP = 1.11022302462515654042E-16
_TRACED_Q_MIN = 32.0  # in a trace, zeta(x, q) with q < -32 is nan (the direct sum's length is static)


def _direct_terms(q: Tensor) -> tuple[int, float]:
    """How many direct terms zeta needs (torch's loop runs while i < 9 or q + i <= 9) and, in a trace,
    the smallest q that count covers."""
    if q.is_traced:
        return int(10 + _TRACED_Q_MIN), -_TRACED_Q_MIN
    v = np.asarray(q.numpy(), dtype=np.float64)
    v = v[np.isfinite(v)]
    qmin = float(v.min()) if v.size else 1.0
    return max(9, int(math.floor(10.0 - min(qmin, 1.0)))), -math.inf


def _zeta(x: Tensor, q: Tensor) -> Tensor:
    """Cephes' zeta in f64, with torch's special values."""
    shape = tuple(np.broadcast_shapes(x.shape, q.shape))
    x, q = broadcast_to(x, shape), broadcast_to(q, shape)
    terms, qmin = _direct_terms(q)
    q_int = eq(q, floor(q))
    pole = logical_and(le(q, 0.0), q_int)
    bad = logical_or(logical_or(le(x, 1.0), pole), logical_and(le(q, 0.0), ne(x, floor(x))))
    bad = logical_or(bad, logical_or(lt(q, qmin), logical_or(isinf(x), isinf(q))))
    xs = where(bad, 2.0, x)
    qs = where(bad, 1.0, q)
    nx = neg(xs)
    s = pow(qs, nx)
    done = full(shape, False, dt.bool_)
    w, b = qs, s
    for i in range(1, terms + 1):
        running = logical_and(logical_not(done), logical_or(full(shape, i - 1 < 9, dt.bool_),
                                                           le(add(qs, float(i - 1)), 9.0)))
        ai = add(qs, float(i))
        bi = pow(ai, nx)
        s = where(running, add(s, bi), s)
        w = where(running, ai, w)
        b = where(running, bi, b)
        done = logical_or(done, logical_and(running, logical_and(lt(mul(s, -_MACHEP), bi), lt(bi, mul(s, _MACHEP)))))
    xe = where(done, 2.0, xs)  # converged elements skip the Euler-Maclaurin tail (it may diverge there)
    tail = sub(add(s, div(mul(b, w), sub(xe, 1.0))), mul(b, 0.5))
    s = where(done, s, tail)
    a = full(shape, 1.0, dt.float64)
    k = 0.0
    for coef in _ZETA_A:
        a = mul(a, add(xe, k))
        b = div(b, w)
        t = div(mul(a, b), coef)
        s = where(done, s, add(s, t))
        done = logical_or(done, lt(_absg(div(t, s)), _MACHEP))
        k += 1.0
        a = mul(a, add(xe, k))
        b = div(b, w)
        k += 1.0
    out = where(logical_or(bad, logical_or(isnan(x), isnan(q))), math.nan, s)
    out = where(eq(x, math.inf), where(lt(q, 1.0), math.inf, where(eq(q, 1.0), 1.0, math.nan)), out)
    out = where(pole, math.inf, out)
    return where(lt(x, 1.0), math.nan, where(eq(x, 1.0), math.inf, out))


@refuses("zeta", "zeta_cpu", "half", (0, 1))
def zeta(input: Any, other: Any) -> Tensor:
    """The Hurwitz zeta function sum_k (q + k)^-x (x = input, q = other): Cephes' direct sum past 9 and
    the Euler-Maclaurin tail with Bernoulli numbers, in float64. inf at x = 1 and at q = 0, -1, ...;
    nan for x < 1 and for q < 0 with a non-integer x."""
    x, q = _float_pair("zeta", input, other)
    d = x.dtype
    out = _zeta(cast(x, dt.float64), cast(q, dt.float64))
    return out if d is dt.float64 else cast(out, d)


def polygamma(n: int, input: Any) -> Tensor:
    """The n-th derivative of digamma: digamma for n = 0, (-1)^(n+1) n! zeta(n + 1, x) above."""
    if isinstance(n, Tensor):
        n = int(n.item())
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise fail(RuntimeError(f"polygamma(n, x) does not support negative or non-integer n, got {n!r}"))
    n = int(n)
    x0 = _float(input)
    if n == 0:
        return digamma(x0)
    x = cast(x0, dt.float64)
    out = mul(_zeta(full(x.shape, float(n + 1), dt.float64), x), float(math.factorial(n)) * (-1.0) ** (n + 1))
    if n == 1:  # torch's trigamma at +-inf
        out = where(isinf(x), where(gt(x, 0.0), 0.0, math.nan), out)
    return out if x0.dtype is dt.float64 else cast(out, x0.dtype)


# -- orthogonal polynomials ----------------------------------------------------------------------------

def _poly_operands(name: str, input: Any, n: Any) -> tuple[Tensor, Tensor, int, Any]:
    """(x, n as integers in x's dtype (torch truncates a float n), the largest n); n must be known."""
    if isinstance(n, Tensor) and n.is_traced:
        raise fail(ValueError(f"{name}: the degree n is traced; the recurrence's length must be known when the "
                              "graph is built: pass n as a number or a concrete tensor (captured, not an input)"))
    x, nt = _float_pair(name, input, n)
    x, back = _wide(x)
    nt = cast(nt, x.dtype)
    nv = np.asarray(nt.numpy(), dtype=np.float64)
    nv = nv[np.isfinite(nv)]
    nmax = int(np.trunc(nv.max())) if nv.size else 0
    shape = tuple(np.broadcast_shapes(x.shape, nt.shape))
    return broadcast_to(x, shape), broadcast_to(trunc(nt), shape), max(nmax, 0), back


def _run(x: Tensor, n: Tensor, nmax: int, q1: Tensor, step: Any) -> Tensor:
    """p_n by the recurrence p_{k} = step(k, p_{k-1}, p_{k-2}), each element's n selected (0 for n < 0)."""
    p, q = full(x.shape, 1.0, x.dtype), q1
    out = where(eq(n, 0.0), p, full(x.shape, 0.0, x.dtype))
    out = where(eq(n, 1.0), q, out)
    for k in range(2, nmax + 1):
        p, q = q, step(k, q, p)
        out = where(eq(n, float(k)), q, out)
    return out


def _odd(n: Tensor) -> Tensor:
    return ne(remainder(n, 2.0), 0.0)


def _pm(n: Tensor, v: Any) -> Tensor:
    """v for even n, -v for odd."""
    return where(_odd(n), neg(v), v)


def _finish(out: Tensor, n: Tensor, back: Any) -> Tensor:
    return _back(where(lt(n, 0.0), 0.0, out), back)


def _chebyshev(name: str, input: Any, n: Any, kind: str, shifted: bool) -> Tensor:
    x, nt, nmax, back = _poly_operands(name, input, n)
    y = sub(add(x, x), 1.0) if shifted else x
    two_y = add(y, y)
    q1 = {"t": y, "u": two_y, "v": sub(two_y, 1.0), "w": add(two_y, 1.0)}[kind]
    out = _run(x, nt, nmax, q1, lambda k, q, p: sub(mul(two_y, q), p))
    # the trigonometric forms inside (-1, 1) for larger n
    limit = (4 if kind == "w" else 6) if shifted else (6 if kind == "t" else 8)
    inside = lt(_absg(y), 1.0)
    ys = where(inside, y, 0.5)
    th = acos(ys)
    n1 = add(nt, 1.0)
    nh = add(nt, 0.5)
    if kind == "t":
        trig = cos(mul(nt, th))
    elif kind == "u":
        st = sin(th)
        nz = ne(st, 0.0)
        trig = where(nz, div(sin(mul(n1, th)), where(nz, st, 1.0)), div(mul(n1, cos(mul(n1, th))), ys))
    elif kind == "v":
        ok = ne(sin(div(th, 2.0)), 1.0)
        trig = where(ok, div(cos(mul(nh, th)), cos(div(th, 2.0))), _pm(nt, add(add(nt, nt), 1.0)))
    else:
        ok = ne(cos(div(th, 2.0)), 1.0)
        sh = sin(div(th, 2.0))
        fallback = where(gt(ys, 0.0), add(add(nt, nt), 1.0), _pm(nt, 1.0)) if not shifted else _pm(nt, 1.0)
        trig = where(ok, div(sin(mul(nh, th)), where(ok, sh, 1.0)), fallback)
    out = where(logical_and(gt(nt, float(limit)), inside), trig, out)
    # the end points
    two_n1 = add(add(nt, nt), 1.0)
    if shifted:
        at_one, at_zero = eq(x, 1.0), eq(x, 0.0)
        one_val = {"t": 1.0, "u": n1, "v": 1.0, "w": two_n1}[kind]
        zero_val = {"t": _pm(nt, 1.0), "u": _pm(nt, n1), "v": _pm(nt, two_n1), "w": _pm(nt, 1.0)}[kind]
        out = where(at_zero, zero_val, out)
        out = where(at_one, one_val, out)
    else:
        edge = eq(_absg(x), 1.0)
        plus = gt(x, 0.0)
        if kind == "t":
            val = where(plus, 1.0, _pm(nt, 1.0))
        elif kind == "u":
            val = where(plus, n1, _pm(nt, n1))
        elif kind == "v":
            val = where(plus, 1.0, _pm(nt, two_n1))
        else:
            val = where(plus, two_n1, _pm(nt, 1.0))
        out = where(edge, val, out)
    return _finish(out, nt, back)


@refuses("chebyshev_polynomial_t", "chebyshev_polynomial_t_cpu", "half", (0, 1))
def chebyshev_polynomial_t(input: Any, n: Any) -> Tensor:
    """T_n(x): the recurrence, cos(n acos x) for n > 6 inside (-1, 1), +-1 at +-1."""
    return _chebyshev("chebyshev_polynomial_t", input, n, "t", False)


@refuses("chebyshev_polynomial_u", "chebyshev_polynomial_u_cpu", "half", (0, 1))
def chebyshev_polynomial_u(input: Any, n: Any) -> Tensor:
    """U_n(x): the recurrence, sin((n+1) t) / sin t (t = acos x) for n > 8 inside (-1, 1)."""
    return _chebyshev("chebyshev_polynomial_u", input, n, "u", False)


@refuses("chebyshev_polynomial_v", "chebyshev_polynomial_v_cpu", "half", (0, 1))
def chebyshev_polynomial_v(input: Any, n: Any) -> Tensor:
    """V_n(x): the recurrence, cos((n+1/2) t) / cos(t/2) for n > 8 inside (-1, 1)."""
    return _chebyshev("chebyshev_polynomial_v", input, n, "v", False)


@refuses("chebyshev_polynomial_w", "chebyshev_polynomial_w_cpu", "half", (0, 1))
def chebyshev_polynomial_w(input: Any, n: Any) -> Tensor:
    """W_n(x): the recurrence, sin((n+1/2) t) / sin(t/2) for n > 8 inside (-1, 1)."""
    return _chebyshev("chebyshev_polynomial_w", input, n, "w", False)


@refuses("shifted_chebyshev_polynomial_t", "shifted_chebyshev_polynomial_t_cpu", "half", (0, 1))
def shifted_chebyshev_polynomial_t(input: Any, n: Any) -> Tensor:
    """T*_n(x) = T_n(2x - 1)."""
    return _chebyshev("shifted_chebyshev_polynomial_t", input, n, "t", True)


@refuses("shifted_chebyshev_polynomial_u", "shifted_chebyshev_polynomial_u_cpu", "half", (0, 1))
def shifted_chebyshev_polynomial_u(input: Any, n: Any) -> Tensor:
    """U*_n(x) = U_n(2x - 1)."""
    return _chebyshev("shifted_chebyshev_polynomial_u", input, n, "u", True)


@refuses("shifted_chebyshev_polynomial_v", "shifted_chebyshev_polynomial_v_cpu", "half", (0, 1))
def shifted_chebyshev_polynomial_v(input: Any, n: Any) -> Tensor:
    """V*_n(x) = V_n(2x - 1)."""
    return _chebyshev("shifted_chebyshev_polynomial_v", input, n, "v", True)


@refuses("shifted_chebyshev_polynomial_w", "shifted_chebyshev_polynomial_w_cpu", "half", (0, 1))
def shifted_chebyshev_polynomial_w(input: Any, n: Any) -> Tensor:
    """W*_n(x) = W_n(2x - 1)."""
    return _chebyshev("shifted_chebyshev_polynomial_w", input, n, "w", True)


def _hermite(name: str, input: Any, n: Any, physicists: bool) -> Tensor:
    x, nt, nmax, back = _poly_operands(name, input, n)
    limit = 512 if x.dtype is dt.float64 else 128
    if physicists:
        out = _run(x, nt, min(nmax, limit), add(x, x), lambda k, q, p: sub(mul(add(x, x), q), mul(p, 2.0 * (k - 1))))
    else:
        out = _run(x, nt, min(nmax, limit), x, lambda k, q, p: sub(mul(x, q), mul(p, float(k - 1))))
    out = where(gt(nt, float(limit)), math.nan, out)
    return _finish(out, nt, back)


@refuses("hermite_polynomial_h", "hermite_polynomial_h_cpu", "half", (0, 1))
def hermite_polynomial_h(input: Any, n: Any) -> Tensor:
    """The physicists' Hermite polynomial H_n(x) (nan past n = 512 in f64, 128 in f32, as torch)."""
    return _hermite("hermite_polynomial_h", input, n, True)


@refuses("hermite_polynomial_he", "hermite_polynomial_he_cpu", "half", (0, 1))
def hermite_polynomial_he(input: Any, n: Any) -> Tensor:
    """The probabilists' Hermite polynomial He_n(x) (nan past n = 512 in f64, 128 in f32, as torch)."""
    return _hermite("hermite_polynomial_he", input, n, False)


@refuses("laguerre_polynomial_l", "laguerre_polynomial_l_cpu", "half", (0, 1))
def laguerre_polynomial_l(input: Any, n: Any) -> Tensor:
    """L_n(x) by ((2k + 1 - x) L_k - k L_{k-1}) / (k + 1); 1 at x = 0."""
    x, nt, nmax, back = _poly_operands("laguerre_polynomial_l", input, n)
    omx = sub(1.0, x)
    out = _run(x, nt, nmax, omx,
               lambda k, q, p: div(sub(mul(add(omx, float(2 * (k - 1))), q), mul(p, float(k - 1))), float(k)))
    out = where(eq(x, 0.0), 1.0, out)
    return _finish(out, nt, back)


@refuses("legendre_polynomial_p", "legendre_polynomial_p_cpu", "half", (0, 1))
def legendre_polynomial_p(input: Any, n: Any) -> Tensor:
    """P_n(x) by ((2k + 1) x P_k - k P_{k-1}) / (k + 1); +-1 at +-1."""
    x, nt, nmax, back = _poly_operands("legendre_polynomial_p", input, n)
    out = _run(x, nt, nmax, x,
               lambda k, q, p: div(sub(mul(mul(x, float(2 * k - 1)), q), mul(p, float(k - 1))), float(k)))
    edge = eq(_absg(x), 1.0)
    out = where(edge, where(gt(x, 0.0), 1.0, _pm(nt, 1.0)), out)
    return _finish(out, nt, back)


__all__ = ["polygamma"]

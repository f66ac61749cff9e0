"""More of torch's API, checked against torch: the pointwise math of avalon/ops/math_more.py (inverse
hyperbolics, erfc, exp2, sinc, i0, mvlgamma, ldexp, logaddexp2, copysign, fmax/fmin, nextafter, frexp,
gcd/lcm and torch's alias names), the fused products of avalon/ops/products_more.py (addmv, addr,
baddbmm, addbmm, aminmax), and avalon/nn's functional_more/layers_more/lazy (rms_norm,
local_response_norm, lp_pool, max_pool2d with indices, max_unpool, pdist, conv_transpose1d, the alpha
dropouts, rrelu, gumbel_softmax, their layers, and the lazy layers).

Values on random inputs (never zeros; float64 with relative error where precision matters, with the
extremes each formula has to survive), gradients through `av.grad` against torch.autograd, a compiled
(numpy backend) run of a representative subset, random layers by their statistics and structure, and
the errors bad input gets."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import avalon as av
import avalon.nn.functional as F
from avalon import nn, optim
from avalon.ops import math_more, products_more

# Data baked into a compiled graph (a closure's array, or an index table a function builds) makes it
# retrace on every call: here that warning is an error, so these functions build none.
pytestmark = pytest.mark.filterwarnings("error:.*uses arrays that are not among its arguments:UserWarning")

RNG = np.random.default_rng(20240917)
OPS = av.ops
T = torch.tensor


def close(ours, theirs, tol: float, whole: bool = False) -> None:
    """Same shape and dtype as torch's, nan where torch has nan, relative error below tol (`tol=0`:
    exactly torch's values, signed zeros included): elementwise, or relative to the largest entry
    (`whole`, for sums, whose small entries may be cancellations)."""
    o = ours.numpy() if isinstance(ours, av.Tensor) else np.asarray(ours)
    t = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    assert o.shape == t.shape, (o.shape, t.shape)
    if isinstance(theirs, torch.Tensor):
        assert o.dtype == t.dtype, (o.dtype, t.dtype)
    if o.dtype.kind in "biu":
        np.testing.assert_array_equal(o, t)
        return
    o, t = o.astype(np.float64), t.astype(np.float64)
    assert np.array_equal(np.isnan(o), np.isnan(t)), (o, t)
    same = (o == t) | np.isnan(t)
    if tol == 0:
        assert same.all() and np.array_equal(np.signbit(o[same & ~np.isnan(t)]), np.signbit(t[same & ~np.isnan(t)]))
        return
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.abs(t[np.isfinite(t)]).max(initial=0.0) if whole else np.abs(t)
        err = np.where(same, 0.0, np.abs(o - t) / np.maximum(scale, np.finfo(np.float64).tiny))
    assert err.max(initial=0.0) < tol, (err.max(), o.flat[err.argmax()], t.flat[err.argmax()])


def check_grad(f_av, f_torch, *arrays, tol: float = 1e-10, consts=()) -> None:
    """The gradient of sum(w * f(*arrays)) (w random) w.r.t. every array, ours through `av.grad` and
    torch's through autograd; `consts` are further (integer) arguments, not differentiated."""
    out = f_torch(*[T(a) for a in arrays], *[T(c) for c in consts])
    w = RNG.standard_normal(tuple(out.shape))
    ts = [T(a).requires_grad_() for a in arrays]
    (f_torch(*ts, *[T(c) for c in consts]) * T(w)).sum().backward()
    n = len(arrays)

    def loss(w, *xs):
        return OPS.sum(OPS.mul(f_av(*xs), w))

    grads = av.grad(loss, argnums=tuple(range(1, n + 1)))(av.tensor(w), *[av.tensor(a) for a in arrays],
                                                          *[av.tensor(c) for c in consts])
    for g, t in zip(grads, ts):
        close(g, t.grad, tol, whole=True)


# -- names ----------------------------------------------------------------------------------------

NEW_OPS = sorted({*math_more.__all__, *products_more.__all__})


def test_new_ops_are_torch_names_functions_and_methods():
    x = av.tensor(RNG.standard_normal(3))
    for name in NEW_OPS:
        assert hasattr(torch, name), name
        assert callable(getattr(OPS, name)), name
        assert hasattr(x, name) and hasattr(torch.Tensor, name), name
        if hasattr(torch.Tensor, name + "_"):
            assert hasattr(x, name + "_"), name + "_"
    for name in ("alpha_dropout", "conv_transpose1d", "feature_alpha_dropout", "gumbel_softmax",
                 "local_response_norm", "lp_pool1d", "lp_pool2d", "max_unpool1d", "max_unpool2d", "pdist",
                 "rms_norm", "rrelu", "rrelu_"):
        assert callable(getattr(F, name)) and hasattr(TF, name), name
    for name in ("AlphaDropout", "ConvTranspose1d", "FeatureAlphaDropout", "LocalResponseNorm", "LPPool1d",
                 "LPPool2d", "MaxUnpool1d", "MaxUnpool2d", "RMSNorm", "RReLU", "LazyLinear", "LazyConv1d",
                 "LazyConv2d", "LazyBatchNorm1d", "LazyBatchNorm2d"):
        assert hasattr(nn, name) and hasattr(torch.nn, name), name


def test_new_ops_are_exported_as_av_names():
    """`import avalon as av` ports `torch.erfc(x)` as `av.erfc(x)`."""
    def unwrapped(f):  # av.multiply & co. also take complex operands (avalon/complex.py's wrapper)
        return f.__wrapped__ if getattr(f, "_complex_rule", None) else f
    missing = [name for name in NEW_OPS if unwrapped(getattr(av, name, None)) is not getattr(OPS, name)]
    assert not missing, f"not exported from avalon/__init__.py: {missing}"


# -- unary math -------------------------------------------------------------------------------------

def _data(kind: str) -> np.ndarray:
    r = RNG
    if kind == "real":  # with the tiny, huge and special values these formulas must survive
        extra = [1e-20, -1e-300, 5e-324, 1e-8, 0.5, -3.0, 7.9, 8.1, 14.99, 15.01, 26.0, -26.5, 1e10, -1e200, 1e300,
                 np.inf, -np.inf, np.nan, 0.0, -0.0]
        return np.concatenate([r.standard_normal(60) * 4, extra])
    if kind == "ge1":
        return np.concatenate([r.uniform(1, 12, 60), [1.0, 1 + 1e-12, 1 + 1e-6, 1e10, 1e300, np.inf, 0.5, np.nan]])
    if kind == "unit":
        return np.concatenate([r.uniform(-1, 1, 60), [1e-20, -1e-9, 1 - 1e-12, -(1 - 1e-9), 1.0, -1.0, 1.5, np.nan]])
    raise AssertionError(kind)


UNARY = [  # name, input kind, float64 relative tolerance, float32 tolerance
    ("asinh", "real", 1e-15, 1e-6), ("acosh", "ge1", 1e-15, 1e-6), ("atanh", "unit", 1e-15, 1e-6),
    ("erfc", "real", 4e-15, 1e-6), ("exp2", "real", 1e-15, 1e-6), ("sinc", "real", 2e-15, 1e-6),
    ("i0", "real", 2e-14, 2e-6),
]


@pytest.mark.parametrize("name,kind,tol64,tol32", UNARY, ids=[u[0] for u in UNARY])
def test_unary_math_matches_torch(name, kind, tol64, tol32):
    x = _data(kind)
    want = getattr(torch, name)(T(x))
    close(getattr(OPS, name)(x), want, tol64)
    close(getattr(av.tensor(x), name)(), want, tol64)
    with np.errstate(over="ignore"):
        x32 = x.astype(np.float32)
    if name in ("i0", "exp2"):
        x32 = x32[np.abs(x32) < 80]  # beyond: torch's own f32 overflows early
    elif name == "erfc":
        x32 = x32[~(x32 > 9)]  # beyond: subnormal results, whose relative precision is the subnormals' own
    close(getattr(OPS, name)(x32), getattr(torch, name)(T(x32)), tol32)
    ints = np.array([1, 2, 3, 5])
    close(getattr(OPS, name)(ints), getattr(torch, name)(T(ints)), 1e-6)  # integers compute in float32


def test_inverse_hyperbolic_aliases_and_in_place():
    x = RNG.standard_normal(6)
    for alias, name in (("arcsinh", "asinh"), ("arccosh", "acosh"), ("arctanh", "atanh")):
        assert getattr(OPS, alias) is getattr(OPS, name)
    y = av.tensor(x.copy())
    assert y.asinh_() is y
    close(y, torch.asinh(T(x)), 1e-15)
    y = av.tensor(x.copy())
    y.erfc_()
    close(y, torch.erfc(T(x)), 1e-14)


# -- binary math ------------------------------------------------------------------------------------

def _pair() -> tuple[np.ndarray, np.ndarray]:
    a = np.concatenate([RNG.standard_normal(40) * 3, [0.0, -0.0, 0.0, 1.0, np.inf, -np.inf, np.nan, 2.0, -1.0, 5.0]])
    b = np.concatenate([RNG.standard_normal(40) * 3, [-0.0, 0.0, 2.0, np.nan, 1.0, np.inf, 3.0, np.nan, -0.0, 5.0]])
    return a, b


@pytest.mark.parametrize("name,tol", [("logaddexp2", 1e-14), ("copysign", 0), ("fmax", 0), ("fmin", 0),
                                      ("nextafter", 0)])
def test_binary_math_matches_torch(name, tol):
    a, b = _pair()
    want = getattr(torch, name)(T(a), T(b))  # logaddexp2 crosses zero: its error is relative to the largest
    close(getattr(OPS, name)(a, b), want, tol, whole=True)
    close(getattr(av.tensor(a), name)(av.tensor(b)), want, tol, whole=True)
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    close(getattr(OPS, name)(a32, b32), getattr(torch, name)(T(a32), T(b32)), 2e-6 if tol else 0, whole=True)


def test_nextafter_at_the_edges_of_every_float_range():
    for d in (np.float64, np.float32):
        info = np.finfo(d)
        x = np.array([0.0, -0.0, info.smallest_subnormal, -info.smallest_subnormal, info.tiny, -info.tiny, 1.0, 1.0,
                      0.5, -0.5, 2.0, info.max, -info.max, info.max, np.inf, -np.inf, 3.0], d)
        y = np.array([1.0, -1.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, np.inf, -np.inf, 0.0, 0.0, 0.0, 3.0], d)
        close(OPS.nextafter(x, y), torch.nextafter(T(x), T(y)), 0)


def test_ldexp_and_the_float_dtype_of_integer_arguments():
    x, e = RNG.standard_normal(12), RNG.integers(-40, 40, 12)
    close(OPS.ldexp(x, e), torch.ldexp(T(x), T(e)), 0)
    close(av.tensor(x).ldexp(av.tensor(e)), torch.ldexp(T(x), T(e)), 0)
    x32 = x.astype(np.float32)
    close(OPS.ldexp(x32, e), torch.ldexp(T(x32), T(e)), 0)  # float32 stays float32
    close(OPS.ldexp(np.arange(1, 5), np.arange(4)), torch.ldexp(T(np.arange(1, 5)), T(np.arange(4))), 0)
    close(OPS.copysign(np.arange(1, 5), np.array([-1, 1, -1, 1])),
          torch.copysign(T(np.arange(1, 5)), T(np.array([-1, 1, -1, 1]))), 0)  # a float result, as torch


def test_frexp_matches_torch_for_every_magnitude():
    for d in (np.float64, np.float32):
        info = np.finfo(d)
        x = np.concatenate([RNG.standard_normal(30) * 1e3, [0.0, -0.0, np.inf, -np.inf, np.nan, info.max, -info.max,
                                                            info.tiny, info.smallest_subnormal, 0.5, 1.0, -1.0, 3.0]])
        x = x.astype(d)
        m, e = OPS.frexp(x)
        tm, te = torch.frexp(T(x))
        close(m, tm, 0)
        close(e, te, 0)
        assert str(e.dtype) == "i32"
        mm, ee = av.tensor(x).frexp()
        close(mm, tm, 0)


def test_gcd_and_lcm_on_signed_integers():
    a = np.concatenate([RNG.integers(-10**6, 10**6, 40), [0, 0, 7, -12, 2**40, 1]])
    b = np.concatenate([RNG.integers(-10**6, 10**6, 40), [0, 5, 0, 18, 2**20 * 3, -1]])
    for name in ("gcd", "lcm"):
        want = getattr(torch, name)(T(a), T(b))
        close(getattr(OPS, name)(a, b), want, 0)
        close(getattr(av.tensor(a), name)(av.tensor(b)), want, 0)
        a32, b32 = (a % 10**4).astype(np.int32), (b % 10**4).astype(np.int32)
        close(getattr(OPS, name)(a32, b32), getattr(torch, name)(T(a32), T(b32)), 0)
    x = av.tensor(np.array([12, 18]))
    x.gcd_(av.tensor(np.array([8, 27])))
    assert x.tolist() == [4, 9]


@pytest.mark.parametrize("p", [1, 2, 3, 5])
def test_mvlgamma_matches_torch(p):
    x = RNG.uniform(0.1, 9, 30)  # below (p - 1) / 2 too: torch 2.x sums lgamma's values there
    close(OPS.mvlgamma(x, p), torch.mvlgamma(T(x), p), 1e-13, whole=True)  # a sum: it crosses zero
    close(av.tensor(x).mvlgamma(p), torch.mvlgamma(T(x), p), 1e-13, whole=True)


def test_alias_names_match_torch():
    a, b = RNG.standard_normal((3, 4)), RNG.standard_normal(4)
    a[0, 0] = b[0]
    for name in ("greater", "greater_equal", "less", "less_equal", "not_equal", "multiply"):
        want = getattr(torch, name)(T(a), T(b))
        close(getattr(OPS, name)(a, b), want, 0)
        close(getattr(av.tensor(a), name)(av.tensor(b)), want, 0)
    close(OPS.subtract(a, b, alpha=2.5), torch.subtract(T(a), T(b), alpha=2.5), 1e-15, whole=True)
    close(av.tensor(a).subtract(av.tensor(b)), torch.subtract(T(a), T(b)), 0)
    ia, ib = np.array([3, 4, 5]), np.array([1, -2, 7])
    close(OPS.subtract(ia, ib, alpha=3), torch.subtract(T(ia), T(ib), alpha=3), 0)
    x = av.tensor(a)
    assert OPS.positive(x) is x and x.positive() is x
    y = av.tensor(a.copy())
    y.greater_(0.0)  # in place: the comparison's result in y's dtype, as torch
    close(y, T(a).greater_(0.0), 0)


# -- fused products, aminmax ----------------------------------------------------------------------

PRODUCTS = [  # name, input shape, operand shapes
    ("addmv", (3,), ((3, 4), (4,))), ("addmv", (1,), ((3, 4), (4,))),
    ("addr", (3, 4), ((3,), (4,))), ("addr", (4,), ((3,), (4,))),
    ("baddbmm", (2, 3, 5), ((2, 3, 4), (2, 4, 5))), ("baddbmm", (3, 5), ((2, 3, 4), (2, 4, 5))),
    ("addbmm", (3, 5), ((2, 3, 4), (2, 4, 5))), ("addbmm", (5,), ((2, 3, 4), (2, 4, 5))),
]


@pytest.mark.parametrize("name,ishape,shapes", PRODUCTS, ids=[f"{p[0]}-{len(p[1])}d" for p in PRODUCTS])
def test_fused_products_match_torch(name, ishape, shapes):
    inp = RNG.standard_normal(ishape)
    a, b = (RNG.standard_normal(s) for s in shapes)
    fa, ft = getattr(OPS, name), getattr(torch, name)
    close(fa(inp, a, b), ft(T(inp), T(a), T(b)), 1e-14, whole=True)
    close(getattr(av.tensor(inp), name)(a, b, beta=0.5, alpha=-2.0), ft(T(inp), T(a), T(b), beta=0.5, alpha=-2.0),
          1e-14, whole=True)
    bad = inp.copy()
    bad.flat[0] = np.nan  # beta = 0 ignores the input, its nan too
    close(fa(bad, a, b, beta=0), ft(T(bad), T(a), T(b), beta=0), 1e-14, whole=True)
    check_grad(lambda i, x, y: fa(i, x, y, beta=0.5, alpha=2.0), lambda i, x, y: ft(i, x, y, beta=0.5, alpha=2.0),
               inp, a, b)
    y = av.tensor(RNG.standard_normal(fa(inp, a, b).shape))
    want = getattr(T(y.numpy()), name + "_")(T(a), T(b), alpha=3.0)
    assert getattr(y, name + "_")(a, b, alpha=3.0) is y
    close(y, want, 1e-14, whole=True)


@pytest.mark.parametrize("dim,keepdim", [(None, False), (None, True), (0, False), (1, True), (-1, False)])
def test_aminmax_matches_torch(dim, keepdim):
    x = np.round(RNG.standard_normal((3, 4, 5)), 1) + 0.0  # ties (no -0.0: which zero wins is no contract)
    kw = {} if dim is None else {"dim": dim}
    got, want = OPS.aminmax(x, keepdim=keepdim, **kw), torch.aminmax(T(x), keepdim=keepdim, **kw)
    close(got.min, want.min, 0)
    close(got.max, want.max, 0)
    mn, mx = av.tensor(x).aminmax(keepdim=keepdim, **kw)
    close(mx, want.max, 0)
    ints = RNG.integers(-9, 9, (4, 5))
    close(OPS.aminmax(ints, **kw).max, torch.aminmax(T(ints), **kw).max, 0)
    if dim is not None:
        check_grad(lambda a: OPS.add(OPS.aminmax(a, dim=dim).min, OPS.aminmax(a, dim=dim).max),
                   lambda a: torch.aminmax(a, dim=dim).min + torch.aminmax(a, dim=dim).max, RNG.standard_normal((3, 4)))
    assert OPS.aminmax(np.ones((2, 0)), dim=0).min.shape == (0,)


# -- gradients of the math ----------------------------------------------------------------------------

GRADS = [  # name, avalon, torch, inputs
    ("asinh", OPS.asinh, torch.asinh, lambda: [RNG.standard_normal((3, 4)) * 3]),
    ("acosh", OPS.acosh, torch.acosh, lambda: [RNG.uniform(1.1, 5, (3, 4))]),
    ("atanh", OPS.atanh, torch.atanh, lambda: [RNG.uniform(-0.95, 0.95, (3, 4))]),
    ("erfc", OPS.erfc, torch.erfc, lambda: [RNG.standard_normal((3, 4)) * 2]),
    ("exp2", OPS.exp2, torch.exp2, lambda: [RNG.standard_normal((3, 4))]),
    ("sinc", OPS.sinc, torch.sinc, lambda: [np.concatenate([RNG.standard_normal(7), [0.0]])]),
    ("i0", OPS.i0, torch.i0, lambda: [RNG.standard_normal((3, 4)) * 8]),
    ("mvlgamma", lambda x: OPS.mvlgamma(x, 3), lambda x: torch.mvlgamma(x, 3), lambda: [RNG.uniform(1.5, 6, (3, 4))]),
    ("logaddexp2", OPS.logaddexp2, torch.logaddexp2, lambda: [RNG.standard_normal((3, 4)), RNG.standard_normal(4)]),
    ("copysign", OPS.copysign, torch.copysign, lambda: [RNG.standard_normal((3, 4)), RNG.standard_normal((3, 4))]),
    ("fmax", OPS.fmax, torch.fmax, lambda: [RNG.standard_normal((3, 4)), RNG.standard_normal((3, 4))]),
    ("fmin", OPS.fmin, torch.fmin, lambda: [RNG.standard_normal((3, 4)), RNG.standard_normal((3, 4))]),
    ("multiply", OPS.multiply, torch.multiply, lambda: [RNG.standard_normal((3, 4)), RNG.standard_normal(4)]),
    ("subtract", lambda a, b: OPS.subtract(a, b, alpha=-1.5), lambda a, b: torch.subtract(a, b, alpha=-1.5),
     lambda: [RNG.standard_normal((3, 4)), RNG.standard_normal(4)]),
]


@pytest.mark.parametrize("name,f,g,make", GRADS, ids=[g[0] for g in GRADS])
def test_math_gradients_match_torch(name, f, g, make):
    check_grad(f, g, *make(), tol=1e-12)


def test_ldexp_gradient_is_two_to_the_exponent():
    x, e = RNG.standard_normal((2, 4)), np.array([3, 0, -1, -5])
    # torch's own backward computes 2**other in the exponent's integer dtype (2**-1 == 0), so the
    # reference here is the derivative itself; with non-negative exponents torch agrees
    got = av.grad(lambda x, e: OPS.sum(OPS.ldexp(x, e)))(av.tensor(x), av.tensor(e))
    close(got, np.broadcast_to(2.0 ** e, x.shape), 0)
    check_grad(OPS.ldexp, torch.ldexp, x, consts=(np.array([3, 0, 1, 5]),), tol=0)


def test_compiled_math_and_products_match_torch():
    x, y = RNG.standard_normal((4, 5)) * 4, RNG.standard_normal((4, 5))
    a, b = RNG.integers(-500, 500, 16).astype(np.int32), RNG.integers(-500, 500, 16).astype(np.int32)
    b1, b2, c = RNG.standard_normal((2, 3, 4)), RNG.standard_normal((2, 4, 5)), RNG.standard_normal((3, 5))

    def ours(x, y, a, b, b1, b2, c):
        m, e = OPS.frexp(x)
        return (OPS.addbmm(c, b1, b2, beta=0.5), OPS.erfc(x), OPS.i0(x), OPS.acosh(OPS.add(OPS.abs(x), 1.0)),
                OPS.nextafter(x, y), m, e, OPS.logaddexp2(x, y), OPS.gcd(a, b), OPS.lcm(a, b),
                OPS.aminmax(x, dim=1).max)

    def theirs(x, y, a, b, b1, b2, c):
        m, e = torch.frexp(x)
        return (torch.addbmm(c, b1, b2, beta=0.5), torch.erfc(x), torch.i0(x), torch.acosh(x.abs() + 1.0),
                torch.nextafter(x, y), m, e, torch.logaddexp2(x, y), torch.gcd(a, b), torch.lcm(a, b),
                torch.aminmax(x, dim=1).max)

    args = (x, y, a, b, b1, b2, c)
    compiled = av.compile(ours, backend="numpy")
    (got, *pointwise), (want, *exact) = compiled(*[av.tensor(v) for v in args]), theirs(*[T(v) for v in args])
    close(got, want, 1e-14, whole=True)  # a sum
    for got, want in zip(pointwise, exact):
        close(got, want, 1e-14)


# -- nn.functional: values ----------------------------------------------------------------------------

def test_rms_norm_matches_torch():
    x = RNG.standard_normal((2, 3, 4, 5))
    w = RNG.standard_normal((4, 5))
    close(F.rms_norm(x, (4, 5), w, 1e-5), TF.rms_norm(T(x), (4, 5), T(w), 1e-5), 1e-14)
    close(F.rms_norm(x, 5), TF.rms_norm(T(x), (5,)), 1e-14)  # eps=None: the dtype's epsilon
    x32 = x.astype(np.float32)
    close(F.rms_norm(x32, [5]), TF.rms_norm(T(x32), [5]), 1e-6)
    small = x32 * 1e-2  # half precision computes in float32, with float32's epsilon: it matters at this scale
    for d, td, ulp in ((av.bfloat16, torch.bfloat16, 2 ** -7), (av.float16, torch.float16, 2 ** -10)):
        got = F.rms_norm(av.tensor(small).to(d), 5, av.tensor(w[0]).to(d))
        want = TF.rms_norm(T(small).to(td), (5,), T(w[0].astype(np.float32)).to(td))
        assert str(got.dtype) == {torch.bfloat16: "bf16", torch.float16: "f16"}[td]
        close(got.float(), want.float(), 2 * ulp, whole=True)
    check_grad(lambda a, b: F.rms_norm(a, (4, 5), b), lambda a, b: TF.rms_norm(a, (4, 5), b), x, w, tol=1e-12)


@pytest.mark.parametrize("shape,size", [((2, 5, 3, 4), 1), ((2, 5, 3, 4), 2), ((2, 5, 3, 4), 3), ((2, 6, 7), 4),
                                        ((1, 4, 2, 2, 3), 3)])
def test_local_response_norm_matches_torch(shape, size):
    x = RNG.standard_normal(shape)
    args = (size, 0.1, 0.75, 2.0)
    close(F.local_response_norm(x, *args), TF.local_response_norm(T(x), *args), 1e-14)
    check_grad(lambda a: F.local_response_norm(a, *args), lambda a: TF.local_response_norm(a, *args), x, tol=1e-12)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_lp_pool_matches_torch(p):
    x = RNG.uniform(0.1, 2.0, (2, 3, 5, 7))  # positive: odd powers of negative sums are nan in torch too
    for kw in ({"kernel_size": 2}, {"kernel_size": (2, 3), "stride": (1, 2)}, {"kernel_size": 2, "ceil_mode": True}):
        close(F.lp_pool2d(x, p, **kw), TF.lp_pool2d(T(x), p, **kw), 1e-14)
    x1 = x[0]
    for kw in ({"kernel_size": 3}, {"kernel_size": 3, "stride": 2}, {"kernel_size": 2, "ceil_mode": True}):
        close(F.lp_pool1d(x1, p, **kw), TF.lp_pool1d(T(x1), p, **kw), 1e-14)
    check_grad(lambda a: F.lp_pool2d(a, p, 2), lambda a: TF.lp_pool2d(a, p, 2), x, tol=1e-12)
    check_grad(lambda a: F.lp_pool1d(a, p, 3, 2), lambda a: TF.lp_pool1d(a, p, 3, 2), x1, tol=1e-12)


POOLS = [{"kernel_size": 2}, {"kernel_size": 3, "stride": 2, "padding": 1},
         {"kernel_size": (2, 3), "stride": 1, "dilation": (1, 2)}, {"kernel_size": 2, "ceil_mode": True},
         {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True, "dilation": 2}]


@pytest.mark.parametrize("kw", POOLS, ids=[str(i) for i in range(len(POOLS))])
def test_max_pool2d_with_indices_matches_torch(kw):
    x = np.round(RNG.standard_normal((2, 3, 7, 8)), 1) + 0.0  # ties: the first maximum, row by row, as torch
    want_v, want_i = TF.max_pool2d(T(x), return_indices=True, **kw)
    v, i = F.max_pool2d(x, return_indices=True, **kw)
    close(v, want_v, 0)
    close(i, want_i, 0)
    v, i = F.max_pool2d_with_indices(x[0], **kw)  # unbatched
    close(i, TF.max_pool2d(T(x[0]), return_indices=True, **kw)[1], 0)
    close(F.max_pool2d(x, **kw), TF.max_pool2d(T(x), **kw), 0)  # dilation without indices too
    v, i = nn.MaxPool2d(return_indices=True, **kw)(x)
    close(i, want_i, 0)
    xg = RNG.standard_normal((2, 3, 7, 8))
    check_grad(lambda a: F.max_pool2d(a, return_indices=True, **kw)[0],
               lambda a: TF.max_pool2d(a, return_indices=True, **kw)[0], xg, tol=1e-14)  # overlaps: sums


def test_max_pool1d_returns_indices_too():
    x = RNG.standard_normal((2, 3, 11))
    for kw in ({"kernel_size": 2}, {"kernel_size": 3, "stride": 2, "padding": 1}, {"kernel_size": 2, "dilation": 3}):
        v, i = F.max_pool1d(x, return_indices=True, **kw)
        tv, ti = TF.max_pool1d(T(x), return_indices=True, **kw)
        close(v, tv, 0)
        close(i, ti, 0)
        close(nn.MaxPool1d(return_indices=True, **kw)(x[0])[1], torch.nn.MaxPool1d(return_indices=True, **kw)(T(x[0]))[1],
              0)


def test_max_unpool_inverts_max_pool_as_torch():
    x = RNG.standard_normal((2, 3, 6, 8))
    v, i = TF.max_pool2d(T(x), 2, return_indices=True)
    va, ia = av.tensor(v.numpy()), av.tensor(i.numpy())
    close(F.max_unpool2d(va, ia, 2), TF.max_unpool2d(v, i, 2), 0)
    close(F.max_unpool2d(va, ia, 2, output_size=(7, 9)), TF.max_unpool2d(v, i, 2, output_size=(7, 9)), 0)
    close(F.max_unpool2d(va[0], ia[0], 2), TF.max_unpool2d(v[0], i[0], 2), 0)
    close(nn.MaxUnpool2d(2)(va, ia, output_size=[2, 3, 7, 9]), torch.nn.MaxUnpool2d(2)(v, i, output_size=[2, 3, 7, 9]),
          0)
    check_grad(lambda a, j: F.max_unpool2d(a, j, 2), lambda a, j: TF.max_unpool2d(a, j, 2), v.numpy(),
               consts=(i.numpy(),), tol=0)
    # ours pooled, ours unpooled: the round trip keeps each window's maximum in place
    pv, pi = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    close(F.max_unpool2d(pv, pi, 3, 2, 1, output_size=x.shape[2:]), TF.max_unpool2d(T(pv.numpy()), T(pi.numpy()), 3, 2, 1,
                                                                                   output_size=x.shape[2:]), 0)
    x1 = RNG.standard_normal((2, 3, 9))
    v1, i1 = TF.max_pool1d(T(x1), 3, 2, return_indices=True)
    va1, ia1 = av.tensor(v1.numpy()), av.tensor(i1.numpy())
    close(F.max_unpool1d(va1, ia1, 3, 2), TF.max_unpool1d(v1, i1, 3, 2), 0)
    close(F.max_unpool1d(va1, ia1, 3, 2, output_size=[10]), TF.max_unpool1d(v1, i1, 3, 2, output_size=[10]), 0)
    close(nn.MaxUnpool1d(3, 2)(va1[0], ia1[0]), torch.nn.MaxUnpool1d(3, 2)(v1[0], i1[0]), 0)
    v1, i1 = TF.max_pool1d(T(x1), 3, 2, padding=1, return_indices=True)  # padding: the output's size shrinks
    close(F.max_unpool1d(av.tensor(v1.numpy()), av.tensor(i1.numpy()), 3, 2, 1), TF.max_unpool1d(v1, i1, 3, 2, 1), 0)


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0, 2.0, 3.0, math.inf])
def test_pdist_matches_torch(p):
    x = RNG.standard_normal((6, 4))
    close(F.pdist(x, p), TF.pdist(T(x), p), 1e-14)
    if p:
        check_grad(lambda a: F.pdist(a, p), lambda a: TF.pdist(a, p), x, tol=1e-11)
    close(F.pdist(x[:1], p), TF.pdist(T(x[:1]), p), 0)  # one row: no pairs


CONVT = [((2, 4, 7), (4, 3, 3), {}), ((2, 4, 7), (4, 3, 3), {"stride": 2, "padding": 1, "output_padding": 1}),
         ((2, 4, 6), (4, 2, 2), {"groups": 2, "dilation": 2, "stride": 3}), ((4, 5), (4, 3, 3), {"stride": (2,)})]


@pytest.mark.parametrize("xs,ws,kw", CONVT, ids=[str(i) for i in range(len(CONVT))])
def test_conv_transpose1d_matches_torch(xs, ws, kw):
    x, w = RNG.standard_normal(xs), RNG.standard_normal(ws)
    b = RNG.standard_normal(ws[1] * kw.get("groups", 1))
    close(F.conv_transpose1d(x, w, b, **kw), TF.conv_transpose1d(T(x), T(w), T(b), **kw), 1e-13, whole=True)
    check_grad(lambda a, c, d: F.conv_transpose1d(a, c, d, **kw), lambda a, c, d: TF.conv_transpose1d(a, c, d, **kw),
               x, w, b, tol=1e-12)


def test_compiled_nn_functions_match_torch():
    x = RNG.uniform(0.1, 2, (2, 4, 6, 6))
    w = RNG.standard_normal((4, 2, 3))

    def ours(x, w):
        v, i = F.max_pool2d(x, 3, 2, 1, return_indices=True)
        return (F.rms_norm(x, 6), F.local_response_norm(x, 3), F.lp_pool2d(x, 2.0, 2), v, i,
                F.max_unpool2d(v, i, 3, 2, 1, output_size=(6, 6)), F.pdist(x[0, 0]),
                F.conv_transpose1d(x[:, :, 0], w, stride=2))

    def theirs(x, w):
        v, i = TF.max_pool2d(x, 3, 2, 1, return_indices=True)
        return (TF.rms_norm(x, (6,)), TF.local_response_norm(x, 3), TF.lp_pool2d(x, 2.0, 2), v, i,
                TF.max_unpool2d(v, i, 3, 2, 1, output_size=(6, 6)), TF.pdist(x[0, 0]),
                TF.conv_transpose1d(x[:, :, 0], w, stride=2))

    compiled = av.compile(ours, backend="numpy")
    for got, want in zip(compiled(av.tensor(x), av.tensor(w)), theirs(T(x), T(w))):
        close(got, want, 1e-13, whole=True)


# -- random functions: statistics and structure ------------------------------------------------------

SELU_ALPHA = 1.0507009873554805 * 1.6732632423543772


def _alpha_affine(p: float) -> tuple[float, float]:
    a = 1.0 / math.sqrt((SELU_ALPHA ** 2 * p + 1) * (1 - p))
    return a, SELU_ALPHA * a * p


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_alpha_dropout_keeps_zero_mean_unit_variance(p):
    av.manual_seed(1)
    x = RNG.standard_normal((200, 100))
    y = F.alpha_dropout(x, p, training=True).numpy()
    a, b = _alpha_affine(p)
    kept = np.isclose(y, a * x + b, rtol=0, atol=1e-12)
    assert abs(kept.mean() - (1 - p)) < 0.01
    np.testing.assert_allclose(y[~kept], -SELU_ALPHA * a + b, rtol=1e-12)  # one value for every dropped entry
    assert abs(y.mean()) < 0.03 and abs(y.std() - 1.0) < 0.03
    t = TF.alpha_dropout(T(x), p, training=True).numpy()  # torch's statistics agree
    assert abs(t.std() - y.std()) < 0.03
    close(F.alpha_dropout(x, p), x, 0)  # training=False by default, as torch: the input itself
    close(F.alpha_dropout(x, 0.0, training=True), x, 0)
    close(F.alpha_dropout(x, 1.0, training=True), TF.alpha_dropout(T(x), 1.0, training=True), 0)
    x2 = av.tensor(x.copy())
    assert F.alpha_dropout(x2, p, True, inplace=True) is x2 and not np.array_equal(x2.numpy(), x)


def test_feature_alpha_dropout_drops_whole_channels():
    av.manual_seed(2)
    x = RNG.standard_normal((16, 32, 3, 3))
    y = F.feature_alpha_dropout(x, 0.5, training=True).numpy()
    a, b = _alpha_affine(0.5)
    kept = np.isclose(y, a * x + b, rtol=0, atol=1e-12)
    per_channel = kept.reshape(16, 32, -1)
    assert np.all(per_channel.all(-1) | ~per_channel.any(-1))  # a channel is kept or dropped whole
    assert 0.4 < per_channel.all(-1).mean() < 0.6
    close(F.feature_alpha_dropout(x, 0.5), x, 0)
    layer = nn.FeatureAlphaDropout(0.5)
    layer.eval()
    close(layer(x), x, 0)


def test_rrelu_slopes_in_training_and_the_mean_slope_in_eval():
    av.manual_seed(3)
    x = RNG.standard_normal((100, 50))
    y = F.rrelu(x, 0.1, 0.3, training=True).numpy()
    neg = x < 0
    slope = y[neg] / x[neg]
    assert slope.min() >= 0.1 - 1e-6 and slope.max() <= 0.3 + 1e-6
    assert abs(slope.mean() - 0.2) < 0.005 and slope.std() > 0.05  # uniform in [lower, upper], per element
    np.testing.assert_array_equal(y[~neg], x[~neg])
    close(F.rrelu(x), TF.rrelu(T(x)), 1e-15)
    close(F.rrelu(x, 0.05, 0.25), TF.rrelu(T(x), 0.05, 0.25), 1e-15)
    check_grad(F.rrelu, TF.rrelu, x[:3], tol=1e-15)
    layer = nn.RReLU(0.1, 0.3)
    layer.eval()
    close(layer(x), torch.nn.RReLU(0.1, 0.3).eval()(T(x)), 1e-15)
    z = av.tensor(x.copy())
    assert F.rrelu_(z) is z
    close(z, TF.rrelu(T(x)), 1e-15)


def test_gumbel_softmax_samples():
    av.manual_seed(4)
    probs = np.array([0.1, 0.2, 0.7])
    logits = np.tile(np.log(probs), (4000, 1))
    soft = F.gumbel_softmax(logits, tau=0.5).numpy()
    np.testing.assert_allclose(soft.sum(-1), 1.0, rtol=1e-12)
    assert soft.min() >= 0
    hard = F.gumbel_softmax(logits, hard=True).numpy()
    assert set(np.unique(hard)) <= {0.0, 1.0} and np.all(hard.sum(-1) == 1)
    np.testing.assert_allclose(hard.mean(0), probs, atol=0.03)  # argmax of logits + Gumbel ~ Categorical(probs)
    soft_dim0 = F.gumbel_softmax(logits[:5].T, dim=0).numpy()
    np.testing.assert_allclose(soft_dim0.sum(0), 1.0, rtol=1e-12)
    # straight-through: the hard sample's gradient is the soft sample's
    w = np.array([1.0, 2.0, 3.0])

    def loss(lg, w):
        return OPS.sum(OPS.mul(F.gumbel_softmax(lg, hard=True), w))

    g = av.grad(loss)(av.tensor(np.log(probs)), av.tensor(w)).numpy()
    assert np.all(np.isfinite(g)) and np.any(g != 0) and abs(g.sum()) < 1e-12  # softmax's gradient sums to 0
    compiled = av.compile(lambda lg: F.gumbel_softmax(lg, hard=True), backend="numpy")
    draws = np.stack([compiled(av.tensor(logits[:50])).numpy() for _ in range(2)])
    assert np.all(draws.sum(-1) == 1) and not np.array_equal(draws[0], draws[1])  # fresh draws per call


# -- layers -------------------------------------------------------------------------------------------

LAYERS = [
    ("RMSNorm", (6,), {}), ("RMSNorm", ([5, 6],), {"eps": 1e-3, "elementwise_affine": False}),
    ("ConvTranspose1d", (4, 6, 3, 2, 1, 1, 2), {}), ("ConvTranspose1d", (4, 6, 3), {"bias": False, "dilation": 2}),
    ("LocalResponseNorm", (3,), {}), ("AlphaDropout", (0.2,), {}), ("FeatureAlphaDropout", (0.2,), {}),
    ("RReLU", (0.1, 0.3), {}), ("LPPool1d", (2, 3), {}), ("LPPool2d", (2, 2), {"stride": 1}),
    ("MaxUnpool1d", (2,), {}), ("MaxUnpool2d", (2,), {}),
]


@pytest.mark.parametrize("name,args,kw", LAYERS, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(LAYERS)])
def test_layers_have_torch_parameters_and_repr(name, args, kw):
    ours, theirs = getattr(nn, name)(*args, **kw), getattr(torch.nn, name)(*args, **kw)
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    if not name.startswith("MaxUnpool"):  # torch prints those sizes as tuples
        assert repr(ours) == repr(theirs)


def test_layers_forward_as_torch_with_torch_weights():
    x = RNG.standard_normal((2, 4, 7)).astype(np.float32)
    for ours, theirs, inp in (
            (nn.ConvTranspose1d(4, 6, 3, 2, 1, 1, 2), torch.nn.ConvTranspose1d(4, 6, 3, 2, 1, 1, 2), x),
            (nn.RMSNorm(7), torch.nn.RMSNorm(7), x), (nn.LocalResponseNorm(2), torch.nn.LocalResponseNorm(2), x),
            (nn.LPPool1d(2, 3), torch.nn.LPPool1d(2, 3), np.abs(x)), (nn.LPPool2d(1, 2), torch.nn.LPPool2d(1, 2), x[None])):
        with torch.no_grad():
            for p in theirs.parameters():
                p.copy_(T(RNG.standard_normal(tuple(p.shape)).astype(np.float32)))
        ours.load_state_dict(theirs.state_dict())
        close(ours(inp), theirs(T(inp)), 1e-5, whole=True)
    for d in (nn.AlphaDropout(0.5), nn.FeatureAlphaDropout(0.5)):  # identity in eval
        d.eval()
        close(d(x), x, 0)
    d = nn.AlphaDropout(0.5)
    assert not np.array_equal(d(x).numpy(), x)  # training by default


def test_conv_transpose1d_layer_init_and_output_size():
    layer = nn.ConvTranspose1d(40, 60, 5)
    bound = 1 / math.sqrt(60 * 5)  # torch's fan-in of a transposed conv: weight.shape[1] * k
    w, b = np.abs(layer.weight.numpy()), np.abs(layer.bias.numpy())  # both U(-bound, bound), as torch's
    assert w.max() <= bound * 1.0001 and b.max() <= bound * 1.0001 and b.max() > 0.5 * bound
    assert abs(w.mean() - bound / 2) < 0.02 * bound  # 12000 draws: the mean's spread is 0.003 bound
    layer = nn.ConvTranspose1d(4, 6, 3, stride=2)
    x = RNG.standard_normal((2, 4, 7)).astype(np.float32)
    assert layer(x, output_size=[16]).shape == (2, 6, 16)
    assert layer(x, output_size=(2, 6, 15)).shape == (2, 6, 15)
    with pytest.raises(ValueError, match="not reachable"):
        layer(x, output_size=[17])


# -- lazy layers --------------------------------------------------------------------------------------

LAZY = [("LazyLinear", (5,), {}, (3, 7)), ("LazyLinear", (5,), {"bias": False}, (2, 3, 7)),
        ("LazyConv1d", (5, 3), {"padding": 1}, (2, 4, 9)), ("LazyConv1d", (4, 3), {"groups": 2}, (4, 9)),
        ("LazyConv2d", (5, 3), {"stride": 2}, (2, 3, 6, 6)), ("LazyBatchNorm1d", (), {}, (4, 6)),
        ("LazyBatchNorm2d", (), {"affine": False}, (4, 3, 2, 2))]


@pytest.mark.parametrize("name,args,kw,shape", LAZY, ids=[f"{n}-{i}" for i, (n, *_) in enumerate(LAZY)])
def test_lazy_layers_infer_sizes_on_the_first_call(name, args, kw, shape):
    ours, theirs = getattr(nn, name)(*args, **kw), getattr(torch.nn, name)(*args, **kw)
    assert ours.has_uninitialized_params()
    x = RNG.standard_normal(shape).astype(np.float32)
    y, want = ours(x), theirs(T(x))
    assert y.shape == tuple(want.shape)
    assert type(ours).__name__ == type(theirs).__name__ == name[4:]  # it became the regular layer, as torch's
    assert [(n, tuple(p.shape)) for n, p in ours.named_parameters()] == \
        [(n, tuple(p.shape)) for n, p in theirs.named_parameters()]
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    ours.load_state_dict(theirs.state_dict())
    close(ours(x), theirs(T(x)), 1e-5, whole=True)


def test_lazy_model_trains_as_torch_after_a_dry_run():
    def build(m):
        return m.Sequential(m.LazyConv2d(4, 3), m.LazyBatchNorm2d(), m.ReLU(), m.Flatten(), m.LazyLinear(3))

    ours, theirs = build(nn), build(torch.nn)
    x, y = RNG.standard_normal((4, 2, 5, 5)).astype(np.float32), RNG.integers(0, 3, 4)

    def loss(m, x, y):
        return F.cross_entropy(m(x), y)

    with pytest.raises(RuntimeError, match="dry run"):  # parameters are the graph's inputs: made before a trace
        av.grad(loss)(ours, av.tensor(x), av.tensor(y))
    ours.eval()
    ours(x)
    ours.train()
    theirs(T(x))
    ours.load_state_dict(theirs.state_dict())
    value, grads = av.value_and_grad(loss)(ours, av.tensor(x), av.tensor(y))
    want = TF.cross_entropy(theirs(T(x)), T(y))
    want.backward()
    close(value, want, 1e-5)
    for name, p in theirs.named_parameters():
        np.testing.assert_allclose(grads[name].numpy(), p.grad.numpy(), rtol=1e-4, atol=1e-6)
    optim.SGD(ours, lr=0.1).step(grads)
    torch.optim.SGD(theirs.parameters(), lr=0.1).step()
    for name, v in ours.state_dict().items():  # weights and batch norm's running statistics
        np.testing.assert_allclose(v.numpy(), theirs.state_dict()[name].numpy(), rtol=1e-4, atol=1e-6)


# -- errors -------------------------------------------------------------------------------------------

_V, _M = np.ones(3), np.ones((3, 4))

ERRORS = [
    (lambda: OPS.gcd(np.ones(2), np.ones(2)), NotImplementedError, "gcd_cpu"),
    (lambda: OPS.lcm(np.array([True]), np.array([False])), NotImplementedError, "lcm_cpu"),
    (lambda: OPS.nextafter(np.arange(2), np.arange(2)), NotImplementedError, "nextafter_cpu"),
    (lambda: OPS.frexp(np.arange(3)), RuntimeError, "floating-point"),
    (lambda: OPS.positive(np.array([True])), RuntimeError, "bool tensor"),
    (lambda: OPS.mvlgamma(np.ones(2) * 3, 0), RuntimeError, "p has to be greater than or equal to 1"),
    (lambda: OPS.addmv(_V, _M, _M), RuntimeError, "vector \\+ matrix @ vector expected, got 1, 2, 2"),
    (lambda: OPS.addmv(np.ones((2, 3)), _M, np.ones(4)), RuntimeError, "must broadcast"),
    (lambda: OPS.addr(_M, _M, np.ones(4)), RuntimeError, "Expected 1-D argument vec1, but got 2-D"),
    (lambda: OPS.baddbmm(_M, _M, np.ones((1, 4, 2))), RuntimeError, "batch1 must be a 3D tensor"),
    (lambda: OPS.addbmm(_M, np.ones((2, 3, 4)), np.ones((3, 4, 5))), RuntimeError, "first two dimensions of batch2"),
    (lambda: OPS.aminmax(np.ones(0)), RuntimeError, "empty dimension"),
    (lambda: OPS.aminmax(np.ones((2, 0)), dim=1), RuntimeError, "empty dimension"),
    (lambda: F.rms_norm(np.ones((2, 3)), 4), ValueError, "normalized_shape"),
    (lambda: F.rms_norm(np.ones((2, 3), np.int64), 3), TypeError, "floating-point"),
    (lambda: F.local_response_norm(np.ones((2, 3)), 2), ValueError, "3D or higher"),
    (lambda: F.pdist(np.ones((2, 3, 4))), RuntimeError, "2D tensors"),
    (lambda: F.pdist(np.ones((2, 3)), -1.0), RuntimeError, "non-negative"),
    (lambda: F.alpha_dropout(np.ones(3), 1.5, True), ValueError, "between 0 and 1"),
    (lambda: nn.AlphaDropout(-0.1), ValueError, "between 0 and 1"),
    (lambda: F.feature_alpha_dropout(np.ones(3), 0.5, True), RuntimeError, "at least 2 dimensions"),
    (lambda: F.rrelu(np.ones(3, np.int64)), TypeError, "floating-point"),
    (lambda: F.max_pool2d(np.ones((1, 1, 4, 4)), 2, padding=2, return_indices=True), ValueError, "half"),
    (lambda: F.max_pool2d_with_indices(np.ones((4, 4)), 2), ValueError, "3D or 4D"),
    (lambda: F.max_unpool2d(np.ones((1, 1, 2, 2)), np.array([[[[0, 1], [2, 16]]]]), 2), IndexError,
     "invalid max index: 16"),
    (lambda: F.max_unpool2d(np.ones((1, 1, 2, 2)), np.zeros((1, 1, 2, 1), np.int64), 2), ValueError,
     "shape of indices"),
    (lambda: F.max_unpool2d(np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2)), 2), TypeError, "int64"),
    (lambda: F.max_unpool2d(np.ones((1, 1, 2, 2)), np.zeros((1, 1, 2, 2), np.int64), 2, output_size=(9, 4)),
     ValueError, "invalid output_size"),
    (lambda: F.max_unpool1d(np.ones(3), np.zeros(3, np.int64), 2), ValueError, "2D or 3D"),
    (lambda: F.conv_transpose1d(np.ones((1, 2, 3, 4)), np.ones((2, 1, 3))), ValueError, "3-d weight"),
    (lambda: F.conv_transpose1d(np.ones((1, 2, 5)), np.ones((2, 1, 3)), stride=(1, 2)), ValueError, "needs 1 entry"),
    (lambda: F.conv_transpose1d(np.ones((1, 2, 5)), np.ones((2, 1, 3)), padding="same"), ValueError, "must be an int"),
    (lambda: nn.ConvTranspose1d(3, 4, 2, groups=2), ValueError, "divisible by groups"),
    (lambda: nn.ConvTranspose1d(2, 4, 2, padding_mode="reflect"), ValueError, "only supports 'zeros'"),
    (lambda: nn.LazyLinear(3)(np.float32(1.0)), ValueError, "at least 1 dimension"),
    (lambda: nn.LazyConv2d(3, 2)(np.ones((2, 3))), ValueError, "4-d input"),
    (lambda: nn.LazyBatchNorm1d()(np.ones(3)), ValueError, r"\(N, C, ...\) input"),
]


@pytest.mark.parametrize("call,exc,match", ERRORS, ids=[str(i) for i in range(len(ERRORS))])
def test_bad_input_gets_a_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_add_and_sub_take_torchs_alpha():
    """torch.add(x, y, alpha=a) = x + a * y (and sub), as functions, methods and in place; the
    gradient reaches `other` scaled by alpha; a float alpha with integer tensors is torch's error."""
    x, y = RNG.standard_normal((3, 4)), RNG.standard_normal(4)
    tx, ty = torch.tensor(x, requires_grad=True), torch.tensor(y, requires_grad=True)
    want = torch.add(tx, ty, alpha=-0.7) * 2 - torch.sub(tx, ty, alpha=3) + tx.add(ty, alpha=0.5)
    want.sum().backward()

    def f(a, b):
        return av.add(a, b, alpha=-0.7) * 2 - av.sub(a, b, alpha=3) + a.add(b, alpha=0.5)
    got = f(av.tensor(x), av.tensor(y))
    np.testing.assert_allclose(got.numpy(), want.detach().numpy(), rtol=1e-12)
    gx, gy = av.grad(lambda a, b: f(a, b).sum(), argnums=(0, 1))(av.tensor(x), av.tensor(y))
    np.testing.assert_allclose(gx.numpy(), tx.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(gy.numpy(), ty.grad.numpy(), rtol=1e-12)
    i = av.tensor(np.arange(4))
    assert av.add(i, i, alpha=3).numpy().tolist() == torch.add(torch.arange(4), torch.arange(4), alpha=3).tolist()
    with pytest.raises(RuntimeError, match="alpha must not be a floating point number"):
        av.sub(i, i, alpha=0.5)
    z = av.tensor(x.copy())
    z.sub_(av.tensor(y), alpha=2)
    np.testing.assert_allclose(z.numpy(), x - 2 * y, rtol=1e-12)

"""Samplers written with Avalon's random ops, so they draw afresh inside `av.compile` as eagerly, and
the implicit reparameterization gradient of Gamma draws.

Rejection samplers (Marsaglia-Tsang for Gamma, Hormann's PTRS and BTRS for Poisson and Binomial,
Best-Fisher for von Mises) run a fixed number of rounds at once, vectorized over a leading axis, and
keep each element's first accepted candidate: a graph has static shapes and no loops. The rounds
follow each method's worst acceptance rate per round (Marsaglia-Tsang 0.95: 8 rounds; PTRS 0.75: 14;
BTRS 0.71: 16; Best-Fisher 0.66: 18), so an element with no accepted candidate is rarer than 1e-8
(it then takes a central value: the mode, or the mean direction). Poisson and Binomial means below
10 draw by inversion over the first 40 values of the pmf (the tail past them is below 1e-11).
Everything runs in float64 and is cast back.

`rsample` of Gamma (and of Beta, Dirichlet, Chi2 and StudentT through it) is reparameterized
implicitly (Figurnov et al. 2018), as torch's `_standard_gamma` is: for a draw x ~ Gamma(alpha, 1)
the gradient is dx/dalpha = -(dF/dalpha)(x; alpha) / f(x; alpha), F the CDF and f the density. It is
computed here to ~1e-12 relative (torch's approximation: ~1e-4): for x < 1 from the series
P(alpha, x) = x^alpha / Gamma(alpha) sum (-x)^n / (n! (alpha + n)); otherwise as an integral,
dx/dalpha = x^(1-alpha) e^x int_0^x t^(alpha-1) e^(-t) (psi(alpha) - log t) dt (or minus the
same integral over (x, inf), whichever is the tail), mapped to s = |log(t/x)| and summed with
48-point Gauss-Legendre over the range where the integrand is above e^-40 of its value at x.
The gradient is a custom one (`avalon.autograd.Function`: the identity on the draw forward, the
implicit gradient backward), so a compiled function that only samples never computes it; second
derivatives differentiate the gradient's own expression in alpha (torch's is `once_differentiable`).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import ops
from ..autograd import Function
from ..ir import dtypes as dt
from ..tensor import Tensor, values_fixed

_f64 = dt.float64
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(48)
_SERIES_TERMS = 24
_LOG_FACTORIALS = [math.lgamma(n + 1) for n in range(_SERIES_TERMS + 1)]
_TAIL = 40.0  # the quadrature's range: where the integrand is above e^-40 of its value at x
_INVERSION_TERMS = 40


def _constant(values: np.ndarray) -> Tensor:
    """A small float64 vector of known values, built from scalars (a dense array constant would read,
    inside a compiled function, as captured data)."""
    return ops.stack([ops.full((), float(v), _f64) for v in values])


def _first_accepted(ok: Tensor, candidates: Tensor, fallback: Tensor) -> Tensor:
    """Each element's first candidate (over axis 0, the rounds) that `ok` accepts, else `fallback`."""
    idx = ops.argmax(ops.cast(ok, dt.int32), 0, keepdims=True)
    chosen = ops.squeeze(ops.take_along_dim(candidates, idx, 0), 0)
    return ops.where(ops.any(ok, 0), chosen, fallback)


def _rand(shape: tuple[int, ...]) -> Tensor:
    return ops.rand(shape, dtype=_f64)


def standard_gamma_log(alpha: Tensor, shape: tuple[int, ...], rounds: int = 8) -> Tensor:
    """log of draws from Gamma(alpha, 1) of `shape` (alpha broadcast to it), without gradient: Marsaglia
    and Tsang's method, alpha < 1 boosted by U^(1/alpha) as torch (and numpy) do."""
    a = ops.broadcast_to(ops.cast(ops.stop_gradient(alpha), _f64), shape)
    boost = ops.lt(a, 1.0)
    ab = ops.where(boost, a + 1.0, a)
    d = ab - 1.0 / 3.0
    c = 1.0 / ops.sqrt(9.0 * d)
    z = ops.randn((rounds,) + tuple(shape), dtype=_f64)
    u = 1.0 - _rand((rounds,) + tuple(shape))
    y = 1.0 + c * z
    ypos = ops.gt(y, 0.0)
    v = ops.where(ypos, y * y * y, 1.0)
    zz = z * z
    ok = ops.logical_and(ypos, ops.logical_or(ops.lt(u, 1.0 - 0.0331 * zz * zz),
                                              ops.lt(ops.log(u), 0.5 * zz + d * (1.0 - v + ops.log(v)))))
    log_v = _first_accepted(ok, ops.log(v), ops.zeros_like(a))
    log_x = ops.log(d) + log_v
    u0 = 1.0 - _rand(tuple(shape))
    return ops.where(boost, log_x + ops.log(u0) / ops.where(boost, a, 1.0), log_x)


def _gamma_grad_series(a: Tensor, log_x: Tensor) -> Tensor:
    """(dx/dalpha) / x for x < 1, from the alternating series of the regularized lower incomplete gamma."""
    x = ops.exp(log_x)
    t1, t3 = 1.0 / a, ops.zeros_like(a)
    power = ops.ones_like(a)
    for n in range(1, _SERIES_TERMS):
        power = power * ops.neg(x)
        t1 = t1 + power / (math.exp(_LOG_FACTORIALS[n]) * (a + float(n)))
        t3 = t3 + power / (math.exp(_LOG_FACTORIALS[n - 1]) * ops.square(a + float(n)))
    return ops.neg(ops.exp(x)) * ((log_x - ops.digamma(a + 1.0)) * t1 + t3 / a)


def _tail_quadrature(a: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Nodes s, weights w and exponents phi (trailing axis) of int_0^inf e^phi(s) ds, the integral of
    t^(a-1) e^-t over the tail of t = x e^-s (x <= a, `left`) or t = x e^s (x > a), relative to its
    value at t = x; the range ends where the integrand is below e^-40 (bounds of the concave exponent)."""
    left = ops.le(x, a)
    b_left, b_right = ops.abs(a - x), ops.abs(x - a)
    s1 = 2.0 * _TAIL / (b_left + ops.sqrt(b_left * b_left + (4.0 / 3.0 * _TAIL) * x))
    s_left = ops.where(ops.le(s1, 1.0), s1, (_TAIL + x) / a)
    s_right = 2.0 * _TAIL / (b_right + ops.sqrt(b_right * b_right + (2.0 * _TAIL) * x))
    span = ops.expand_dims(ops.where(left, s_left, s_right), -1)
    s = span * _constant((_GL_NODES + 1.0) / 2.0)
    w = span * _constant(_GL_WEIGHTS / 2.0)
    ae, xe, le = ops.expand_dims(a, -1), ops.expand_dims(x, -1), ops.expand_dims(left, -1)
    phi_left = ops.neg(ae * s) - xe * ops.expm1(ops.neg(s))
    phi_right = ae * s - xe * ops.expm1(ops.minimum(s, 700.0))
    return s, w, ops.where(le, phi_left, phi_right), le


def _gamma_grad_quadrature(a: Tensor, log_x: Tensor) -> Tensor:
    """(dx/dalpha) / x for x >= 1 (see the module's docstring)."""
    s, w, phi, le = _tail_quadrature(a, ops.exp(log_x))
    lxe, psi = ops.expand_dims(log_x, -1), ops.expand_dims(ops.digamma(a), -1)
    return ops.sum(w * ops.exp(phi) * ops.where(le, s + psi - lxe, lxe + s - psi), -1)


def regularized_gamma_p(a: Tensor, x: Tensor) -> Tensor:
    """P(a, x) = gamma(a, x) / Gamma(a), the Gamma(a, 1) CDF at x (torch.special.gammainc), written with
    Avalon's ops so it differentiates: the series below x = 1, the tail quadrature above."""
    shape = tuple(np.broadcast_shapes(a.shape, x.shape))
    a, x = ops.broadcast_to(a, shape), ops.broadcast_to(x, shape)
    pos = ops.gt(x, 0.0)
    small = ops.lt(x, 1.0)
    xs = ops.where(ops.logical_and(small, pos), x, 0.5)
    t1, power = 1.0 / a, ops.ones_like(xs)
    for n in range(1, _SERIES_TERMS):
        power = power * ops.neg(xs)
        t1 = t1 + power / (math.exp(_LOG_FACTORIALS[n]) * (a + float(n)))
    series = ops.exp(a * ops.log(xs) - ops.lgamma(a)) * t1
    xq = ops.where(small, 1.0, x)
    _, w, phi, le = _tail_quadrature(a, xq)
    tail = ops.exp(a * ops.log(xq) - xq - ops.lgamma(a)) * ops.sum(w * ops.exp(phi), -1)
    quad = ops.where(ops.squeeze(le, -1), tail, 1.0 - tail)
    return ops.where(pos, ops.where(small, series, quad), 0.0)


def standard_gamma_log_grad(alpha: Tensor, log_x: Tensor) -> Tensor:
    """d log(x) / d alpha for draws x ~ Gamma(alpha, 1), given log x (float64, no gradient)."""
    a = ops.broadcast_to(ops.cast(ops.stop_gradient(alpha), _f64), log_x.shape)
    small = ops.lt(log_x, 0.0)
    series = _gamma_grad_series(a, ops.where(small, log_x, -1.0))
    quad = _gamma_grad_quadrature(a, ops.where(small, 0.0, log_x))
    g = ops.where(small, series, quad)
    return ops.where(ops.isfinite(g), g, 0.0)


class _ImplicitGammaGrad(Function):
    """log x (a Gamma(alpha, 1) draw, given) as a function of alpha: forward is the identity on the
    draw; backward (and jvp) the implicit gradient, computed only when a gradient is asked for."""

    @staticmethod
    def forward(ctx: Any, log_x: Tensor, alpha: Tensor) -> Tensor:
        ctx.save_for_backward(log_x, alpha)
        ctx.save_for_forward(log_x, alpha)
        return ops.add(log_x, 0.0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor]:
        log_x, alpha = ctx.saved_tensors
        return None, ops.mul(grad, ops.cast(standard_gamma_log_grad(alpha, log_x), alpha.dtype))

    @staticmethod
    def jvp(ctx: Any, t_log_x: Any, t_alpha: Any) -> Tensor:
        log_x, alpha = ctx.saved_tensors
        return ops.mul(t_alpha, ops.cast(standard_gamma_log_grad(alpha, log_x), alpha.dtype))


def reparameterized_gamma_log(alpha: Tensor, shape: tuple[int, ...]) -> Tensor:
    """log of Gamma(alpha, 1) draws of `shape` in alpha's dtype, whose gradient with respect to alpha
    is the implicit reparameterization one (computed only under differentiation)."""
    log_x = standard_gamma_log(alpha, shape)
    log_x = ops.maximum(log_x, math.log(float(np.finfo(alpha.dtype.np).tiny)))
    value = ops.stop_gradient(ops.cast(log_x, alpha.dtype))
    if not alpha.dtype.is_float or values_fixed(alpha):  # no gradient can be asked for (not traced, not a leaf)
        return value
    return _ImplicitGammaGrad.apply(value, ops.broadcast_to(alpha, tuple(shape)))


def _inversion(log_pmf_terms: Tensor, u: Tensor) -> Tensor:
    """The count of cumulative probabilities (over the trailing axis) below u: inverse-CDF sampling."""
    cdf = ops.cumsum(ops.exp(log_pmf_terms), -1)
    return ops.cast(ops.sum(ops.lt(cdf, ops.expand_dims(u, -1)), -1), _f64)


def poisson(rate: Tensor, shape: tuple[int, ...], rounds: int = 14) -> Tensor:
    """Poisson(rate) draws of `shape` (float64): inversion below 10, Hormann's PTRS from 10 on."""
    lam = ops.broadcast_to(ops.cast(ops.stop_gradient(rate), _f64), shape)
    small = ops.lt(lam, 10.0)
    ls = ops.where(small, lam, 1.0)
    k = ops.arange(_INVERSION_TERMS, dtype=_f64)
    lse = ops.expand_dims(ls, -1)
    log_pmf = ops.xlogy(k, lse) - lse - ops.lgamma(k + 1.0)
    k_small = _inversion(log_pmf, _rand(tuple(shape)))
    lb = ops.where(small, 10.0, lam)
    slam, loglam = ops.sqrt(lb), ops.log(lb)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    invalpha = 1.1239 + 1.1328 / (b - 3.4)
    vr = 0.9277 - 3.6224 / (b - 2.0)
    rs = (rounds,) + tuple(shape)
    uu = _rand(rs) - 0.5
    vv = _rand(rs)
    us = 0.5 - ops.abs(uu)
    kk = ops.floor((2.0 * a / us + b) * uu + lb + 0.43)
    quick = ops.logical_and(ops.ge(us, 0.07), ops.le(vv, vr))
    reject = ops.logical_or(ops.lt(kk, 0.0), ops.logical_and(ops.lt(us, 0.013), ops.gt(vv, us)))
    kc = ops.maximum(kk, 0.0)
    lhs = ops.log(vv) + ops.log(invalpha) - ops.log(a / (us * us) + b)
    ok = ops.logical_or(quick, ops.logical_and(ops.logical_not(reject),
                                               ops.le(lhs, ops.neg(lb) + kc * loglam - ops.lgamma(kc + 1.0))))
    k_large = _first_accepted(ok, kc, ops.floor(lb))
    out = ops.where(small, k_small, k_large)
    return ops.where(ops.gt(lam, 0.0), out, 0.0)


def binomial(total_count: Tensor, probs: Tensor, shape: tuple[int, ...], rounds: int = 16) -> Tensor:
    """Binomial(n, p) draws of `shape` (float64), from min(p, 1 - p) and flipped back: inversion for
    n min(p, 1-p) < 10, Hormann's BTRS from 10 on (accepting with the exact pmf ratio)."""
    n = ops.broadcast_to(ops.cast(ops.stop_gradient(total_count), _f64), shape)
    p0 = ops.broadcast_to(ops.cast(ops.stop_gradient(probs), _f64), shape)
    flip = ops.gt(p0, 0.5)
    p = ops.where(flip, 1.0 - p0, p0)
    small = ops.lt(n * p, 10.0)
    # inversion: log pmf(k) = n log q + sum_{j<k} log((n - j) / (j + 1) * p / q), zero past n
    ps = ops.clamp(ops.where(small, p, 0.25), 1e-300, 0.5)
    ns = ops.where(small, n, 1.0)
    j = ops.arange(_INVERSION_TERMS - 1, dtype=_f64)
    ne, pe = ops.expand_dims(ns, -1), ops.expand_dims(ps, -1)
    log_ratio = (ops.log(ops.maximum(ne - j, 1e-300)) - ops.log(j + 1.0)
                 + ops.log(pe) - ops.log1p(ops.neg(pe)))
    log_q = ops.log1p(ops.neg(pe))
    log_pmf = ops.concat([ne * log_q, ne * log_q + ops.cumsum(log_ratio, -1)], -1)
    log_pmf = ops.where(ops.le(ops.arange(_INVERSION_TERMS, dtype=_f64), ne), log_pmf, -math.inf)
    k_small = ops.minimum(_inversion(log_pmf, _rand(tuple(shape))), ns)
    # BTRS
    nb = ops.where(small, 100.0, n)
    pb = ops.where(small, 0.25, p)
    qb = 1.0 - pb
    spq = ops.sqrt(nb * pb * qb)
    b = 1.15 + 2.53 * spq
    a = -0.0873 + 0.0248 * b + 0.01 * pb
    c = nb * pb + 0.5
    alpha = (2.83 + 5.1 / b) * spq
    vr = 0.92 - 4.2 / b
    m = ops.floor((nb + 1.0) * pb)
    log_r = ops.log(pb) - ops.log(qb)
    rs = (rounds,) + tuple(shape)
    uu = _rand(rs) - 0.5
    vv = _rand(rs)
    us = 0.5 - ops.abs(uu)
    kk = ops.floor((2.0 * a / us + b) * uu + c)
    in_range = ops.logical_and(ops.ge(kk, 0.0), ops.le(kk, nb))
    kc = ops.clamp(kk, ops.zeros_like(nb), ops.broadcast_to(nb, rs))
    quick = ops.logical_and(ops.ge(us, 0.07), ops.le(vv, vr))
    log_ratio = (ops.lgamma(m + 1.0) + ops.lgamma(nb - m + 1.0) - ops.lgamma(kc + 1.0) - ops.lgamma(nb - kc + 1.0)
                 + (kc - m) * log_r)
    ok = ops.logical_and(in_range, ops.logical_or(quick, ops.le(ops.log(vv * alpha / (a / (us * us) + b)), log_ratio)))
    k_large = _first_accepted(ok, kc, m)
    out = ops.where(small, k_small, k_large)
    out = ops.where(flip, n - out, out)
    out = ops.where(ops.le(p0, 0.0), 0.0, ops.where(ops.ge(p0, 1.0), n, out))
    return ops.where(ops.le(n, 0.0), 0.0, out)


def von_mises(loc: Tensor, concentration: Tensor, shape: tuple[int, ...], rounds: int = 18) -> Tensor:
    """von Mises draws of `shape` (float64) in [-pi, pi): Best and Fisher's rejection method."""
    kappa = ops.broadcast_to(ops.cast(ops.stop_gradient(concentration), _f64), shape)
    mu = ops.broadcast_to(ops.cast(ops.stop_gradient(loc), _f64), shape)
    tau = 1.0 + ops.sqrt(1.0 + 4.0 * kappa * kappa)
    rho = (tau - ops.sqrt(2.0 * tau)) / (2.0 * kappa)
    r = ops.where(ops.lt(kappa, 1e-5), 1.0 / kappa + kappa, (1.0 + rho * rho) / (2.0 * rho))
    rs = (rounds,) + tuple(shape)
    u1, u2, u3 = _rand(rs), _rand(rs), _rand(rs)
    z = ops.cos(math.pi * u1)
    f = (1.0 + r * z) / (r + z)
    cc = kappa * (r - f)
    ok = ops.logical_or(ops.gt(cc * (2.0 - cc) - u2, 0.0), ops.ge(ops.log(cc / u2) + 1.0 - cc, 0.0))
    cand = ops.sign(u3 - 0.5) * ops.acos(ops.clamp(f, -1.0, 1.0))
    x = _first_accepted(ok, cand, ops.zeros_like(mu))
    return ops.remainder(x + math.pi + mu, 2 * math.pi) - math.pi

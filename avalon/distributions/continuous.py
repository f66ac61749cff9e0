"""Continuous distributions of torch.distributions under torch's names, arguments and formulas:
Exponential, Laplace, Cauchy, Gamma, Chi2, StudentT, Beta, Dirichlet, ContinuousBernoulli, VonMises
and LowRankMultivariateNormal. log_prob, cdf, entropy and the moments are Avalon expressions (they
trace and differentiate); `rsample` is reparameterized where torch's is: location-scale draws for
Exponential, Laplace and Cauchy, the implicit Gamma gradient for Gamma, Chi2, StudentT, Beta and
Dirichlet (see `_samplers`), the inverse CDF for ContinuousBernoulli. VonMises samples (no gradient),
as torch's.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import ops
from ..tensor import Tensor
from . import _samplers, constraints
from .core import (
    Distribution,
    ExponentialFamily,
    _bce_with_logits,
    _broadcast_all,
    _clamp_probs,
    _one_of,
    _param,
    _tri_solve,
)

__all__ = ["Beta", "Cauchy", "Chi2", "ContinuousBernoulli", "Dirichlet", "Exponential", "Gamma", "Laplace",
           "LowRankMultivariateNormal", "StudentT", "VonMises"]

EULER_GAMMA = 0.57721566490153286060


def _rand(shape: tuple[int, ...], like: Tensor) -> Tensor:
    return ops.rand(shape, dtype=like.dtype)


class Exponential(ExponentialFamily):
    """Exponential(rate): rate * exp(-rate * x) on x >= 0; rsample = -log(1 - u) / rate."""

    arg_constraints = {"rate": constraints.positive}
    support = constraints.nonnegative
    has_rsample = True
    _expand_params = {"rate": 0}

    _mean_carrier_measure = 0

    @property
    def _natural_params(self) -> tuple[Tensor]:
        return (ops.neg(self.rate),)

    def _log_normalizer(self, x: Tensor) -> Tensor:
        return ops.neg(ops.log(ops.neg(x)))

    def __init__(self, rate: Any, validate_args: bool | None = None) -> None:
        (self.rate,) = _broadcast_all(rate)
        super().__init__(self.rate.shape, (), validate_args)
        self.rate = self._check_constraint("rate", self.rate)

    @property
    def mean(self) -> Tensor:
        return ops.reciprocal(self.rate)

    @property
    def mode(self) -> Tensor:
        return ops.zeros_like(self.rate)

    @property
    def stddev(self) -> Tensor:
        return ops.reciprocal(self.rate)

    @property
    def variance(self) -> Tensor:
        return ops.pow(self.rate, -2.0)

    def rsample(self, sample_shape: Any = ()) -> Tensor:
        u = _rand(self._extended_shape(sample_shape), self.rate)
        return ops.neg(ops.log1p(ops.neg(u))) / self.rate

    def log_prob(self, value: Any) -> Tensor:
        v = self._validate_sample(_param(value))
        return ops.log(self.rate) - self.rate * v

    def cdf(self, value: Any) -> Tensor:
        v = self._validate_sample(_param(value))
        return 1.0 - ops.exp(ops.neg(self.rate) * v)

    def icdf(self, value: Any) -> Tensor:
        return ops.neg(ops.log1p(ops.neg(_param(value)))) / self.rate

    def entropy(self) -> Tensor:
        return 1.0 - ops.log(self.rate)


class Laplace(Distribution):
    """Laplace(loc, scale): exp(-|x - loc| / scale) / (2 scale)."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real
    has_rsample = True
    _expand_params = {"loc": 0, "scale": 0}

    def __init__(self, loc: Any, scale: Any, validate_args: bool | None = None) -> None:
        self.loc, self.scale = _broadcast_all(loc, scale)
        super().__init__(self.loc.shape, (), validate_args)
        self.loc = self._check_constraint("loc", self.loc)
        self.scale = self._check_constraint("scale", self.scale)

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def mode(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        return 2.0 * self.scale * self.scale

    @property
    def stddev(self) -> Tensor:
        return (2 ** 0.5) * self.scale

    def rsample(self, sample_shape: Any = ()) -> Tensor:
        eps = float(np.finfo(self.loc.dtype.np).eps)
        u = _rand(self._extended_shape(sample_shape), self.loc) * (2.0 - eps) + (eps - 1.0)
        return self.loc - self.scale * ops.sign(u) * ops.log1p(ops.neg(ops.abs(u)))

    def log_prob(self, value: Any) -> Tensor:
        v = self._validate_sample(_param(value))
        return ops.neg(ops.log(2.0 * self.scale)) - ops.abs(v - self.loc) / self.scale

    def cdf(self, value: Any) -> Tensor:
        v = self._validate_sample(_param(value))
        d = v - self.loc
        return 0.5 - 0.5 * ops.sign(d) * ops.expm1(ops.neg(ops.abs(d)) / self.scale)

    def icdf(self, value: Any) -> Tensor:
        term = _param(value) - 0.5
        return self.loc - self.scale * ops.sign(term) * ops.log1p(-2.0 * ops.abs(term))

    def entropy(self) -> Tensor:
        return 1.0 + ops.log(2.0 * self.scale)


class Cauchy(Distribution):
    """Cauchy(loc, scale): 1 / (pi scale (1 + ((x - loc) / scale)^2)); rsample = loc + scale tan(pi (u - 1/2))."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real
    has_rsample = True
    _expand_params = {"loc": 0, "scale": 0}

    def __init__(self, loc: Any, scale: Any, validate_args: bool | None = None) -> None:
        self.loc, self.scale = _broadcast_all(loc, scale)
        super().__init__(self.loc.shape, (), validate_args)
        self.loc = self._check_constraint("loc", self.loc)
        self.scale = self._check_constraint("scale", self.scale)

    @property
    def mean(self) -> Tensor:
        return ops.full(self._extended_shape(), math.nan, self.loc.dtype)

    @property
    def mode(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        return ops.full(self._extended_shape(), math.inf, self.loc.dtype)

    def rsample(self, sample_shape: Any = ()) -> Tensor:
        u = _rand(self._extended_shape(sample_shape), self.loc)
        return self.loc + ops.tan(math.pi * (u - 0.5)) * self.scale

    def log_prob(self, value: Any) -> Tensor:
        v = self._validate_sample(_param(value))
        z = (v - self.loc) / self.scale
        return -math.log(math.pi) - ops.log(self.scale) - ops.log1p(z * z)

    def cdf(self, value: Any) -> Tensor:
        v = self._validate_sample(_param(value))
        return ops.atan((v - self.loc) / self.scale) / math.pi + 0.5

    def icdf(self, value: Any) -> Tensor:
        return ops.tan(math.pi * (_param(value) - 0.5)) * self.scale + self.loc

    def entropy(self) -> Tensor:
        return math.log(4 * math.pi) + ops.log(self.scale)


class Gamma(ExponentialFamily):
    """Gamma(concentration, rate): rate^a x^(a-1) e^(-rate x) / Gamma(a). `rsample` is reparameterized
    implicitly (the gradient of a draw with respect to the concentration is -dF/da / f, as torch's)."""

    arg_constraints = {"concentration": constraints.positive, "rate": constraints.positive}
    support = constraints.nonnegative
    has_rsample = True
    _expand_params = {"concentration": 0, "rate": 0}

    _mean_carrier_measure = 0

    @property
    def _natural_params(self) -> tuple[Tensor, Tensor]:
        return self.concentration - 1.0, ops.neg(self.rate)

    def _log_normalizer(self, x: Tensor, y: Tensor) -> Tensor:
        return ops.lgamma(x + 1.0) + (x + 1.0) * ops.log(ops.neg(ops.reciprocal(y)))

    def __init__(self, concentration: Any, rate: Any, validate_args: bool | None = None) -> None:
        self.concentration, self.rate = _broadcast_all(concentration, rate)
        super().__init__(self.concentration.shape, (), validate_args)
        self.concentration = self._check_constraint("concentration", self.concentration, constraints.positive)
        self.rate = self._check_constraint("rate", self.rate, constraints.positive)

    @property
    def mean(self) -> Tensor:
        return self.concentration / self.rate

    @property
    def mode(self) -> Tensor:
        return ops.clamp((self.concentration - 1.0) / self.rate, min=0.0)

    @property
    def variance(self) -> Tensor:
        return self.concentration / (self.rate * self.rate)

    def rsample(self, sample_shape: Any = ()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        x = ops.exp(_samplers.reparameterized_gamma_log(self.concentration, shape)) / self.rate
        tiny = float(np.finfo(x.dtype.np).tiny)
        return x + ops.stop_gradient(ops.maximum(x, tiny) - x)  # torch clamps the value, not the gradient

    def log_prob(self, value: Any) -> Tensor:
        v = self._validate_sample(_param(value))
        a = self.concentration
        return ops.xlogy(a, self.rate) + ops.xlogy(a - 1.0, v) - self.rate * v - ops.lgamma(a)

    def cdf(self, value: Any) -> Tensor:
        v = self._validate_sample(_param(value))
        return _samplers.regularized_gamma_p(self.concentration, self.rate * v)

    def entropy(self) -> Tensor:
        a = self.concentration
        return a - ops.log(self.rate) + ops.lgamma(a) + (1.0 - a) * ops.digamma(a)


class Chi2(Gamma):
    """Chi2(df) = Gamma(df / 2, 1/2)."""

    arg_constraints = {"df": constraints.positive}

    def __init__(self, df: Any, validate_args: bool | None = None) -> None:
        (df_t,) = _broadcast_all(df)
        self._set_validate_args(validate_args)
        df_t = self._check_constraint("df", df_t)  # (before Gamma's check of df / 2, which names "concentration")
        super().__init__(0.5 * df_t, ops.full_like(df_t, 0.5), validate_args=validate_args)

    @property
    def df(self) -> Tensor:
        return self.concentration * 2.0


class StudentT(Distribution):
    """StudentT(df, loc=0, scale=1); rsample = loc + scale * z / sqrt(chi2 / df) (the chi-square draw
    reparameterized implicitly)."""

    arg_constraints = {"df": constraints.positive, "loc": constraints.real, "scale": constraints.positive}
    support = constraints.real
    has_rsample = True
    _expand_params = {"df": 0, "loc": 0, "scale": 0}
    _expand_dists = ("_chi2",)

    def __init__(self, df: Any, loc: Any = 0.0, scale: Any = 1.0, validate_args: bool | None = None) -> None:
        self.df, self.loc, self.scale = _broadcast_all(df, loc, scale)
        super().__init__(self.df.shape, (), validate_args)
        self.df = self._check_constraint("df", self.df)
        self.loc = self._check_constraint("loc", self.loc)
        self.scale = self._check_constraint("scale", self.scale)
        self._chi2 = Chi2(self.df, validate_args=False)

    @property
    def mean(self) -> Tensor:
        return ops.where(ops.le(self.df, 1.0), math.nan, self.loc)

    @property
    def mode(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        df = self.df
        big = ops.gt(df, 2.0)
        v = self.scale * self.scale * df / ops.where(big, df - 2.0, 1.0)
        return ops.where(big, v, ops.where(ops.gt(df, 1.0), math.inf, math.nan))

    def rsample(self, sample_shape: Any = ()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        x = ops.randn(shape, dtype=self.df.dtype)
        z = self._chi2.rsample(sample_shape)
        return self.loc + self.scale * x * ops.rsqrt(z / self.df)

    def log_prob(self, value: Any) -> Tensor:
        v = self._validate_sample(_param(value))
        y = (v - self.loc) / self.scale
        df = self.df
        z = (ops.log(self.scale) + 0.5 * ops.log(df) + 0.5 * math.log(math.pi) + ops.lgamma(0.5 * df)
             - ops.lgamma(0.5 * (df + 1.0)))
        return -0.5 * (df + 1.0) * ops.log1p(y * y / df) - z

    def entropy(self) -> Tensor:
        df = self.df
        lbeta = ops.lgamma(0.5 * df) + math.lgamma(0.5) - ops.lgamma(0.5 * (df + 1.0))
        return (ops.log(self.scale) + 0.5 * (df + 1.0) * (ops.digamma(0.5 * (df + 1.0)) - ops.digamma(0.5 * df))
                + 0.5 * ops.log(df) + lbeta)


class Dirichlet(ExponentialFamily):
    """Dirichlet(concentration): over the simplex of the last dim. `rsample` normalizes Gamma draws
    (their log, through a softmax), each reparameterized implicitly: a pathwise gradient as JAX's and
    TensorFlow's, unbiased like torch's (whose per-draw gradient differs: it goes through the Beta
    marginals)."""

    arg_constraints = {"concentration": constraints.independent(constraints.positive, 1)}
    support = constraints.simplex
    has_rsample = True
    _expand_params = {"concentration": 1}

    @property
    def _natural_params(self) -> tuple[Tensor]:
        return (self.concentration,)

    def _log_normalizer(self, x: Tensor) -> Tensor:
        return ops.sum(ops.lgamma(x), -1) - ops.lgamma(ops.sum(x, -1))

    def __init__(self, concentration: Any, validate_args: bool | None = None) -> None:
        c = _param(concentration)
        if c.ndim < 1:
            raise ValueError("`concentration` parameter must be at least one-dimensional.")
        super().__init__(c.shape[:-1], c.shape[-1:], validate_args)
        self.concentration = self._check_constraint("concentration", c)

    def rsample(self, sample_shape: Any = ()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        return ops.softmax(_samplers.reparameterized_gamma_log(self.concentration, shape), -1)

    def log_prob(self, value: Any) -> Tensor:
        v = self._validate_sample(_param(value))
        c = self.concentration
        return (ops.sum(ops.xlogy(c - 1.0, v), -1) + ops.lgamma(ops.sum(c, -1))
                - ops.sum(ops.lgamma(c), -1))

    @property
    def mean(self) -> Tensor:
        return self.concentration / ops.sum(self.concentration, -1, keepdims=True)

    @property
    def mode(self) -> Tensor:
        c = self.concentration
        cm1 = ops.clamp(c - 1.0, min=0.0)
        mode = cm1 / ops.sum(cm1, -1, keepdims=True)
        all_small = ops.expand_dims(ops.all(ops.lt(c, 1.0), -1), -1)
        peak = ops.one_hot(ops.argmax(ops.where(ops.isnan(mode), math.inf, mode), -1), c.shape[-1], c.dtype)
        return ops.where(all_small, peak, mode)

    @property
    def variance(self) -> Tensor:
        c = self.concentration
        c0 = ops.sum(c, -1, keepdims=True)
        return c * (c0 - c) / (c0 * c0 * (c0 + 1.0))

    def entropy(self) -> Tensor:
        c = self.concentration
        k = c.shape[-1]
        a0 = ops.sum(c, -1)
        return (ops.sum(ops.lgamma(c), -1) - ops.lgamma(a0) - (k - a0) * ops.digamma(a0)
                - ops.sum((c - 1.0) * ops.digamma(c), -1))


class Beta(ExponentialFamily):
    """Beta(concentration1, concentration0) on [0, 1], a two-component Dirichlet (rsample likewise)."""

    arg_constraints = {"concentration1": constraints.positive, "concentration0": constraints.positive}
    support = constraints.unit_interval
    has_rsample = True
    _expand_dists = ("_dirichlet",)

    @property
    def _natural_params(self) -> tuple[Tensor, Tensor]:
        return self.concentration1, self.concentration0

    def _log_normalizer(self, x: Tensor, y: Tensor) -> Tensor:
        return ops.lgamma(x) + ops.lgamma(y) - ops.lgamma(x + y)

    def __init__(self, concentration1: Any, concentration0: Any, validate_args: bool | None = None) -> None:
        c1, c0 = _broadcast_all(concentration1, concentration0)
        # the user's parameters are checked (named) before the Dirichlet built on them checks their stack
        self._set_validate_args(validate_args)
        c1 = self._check_constraint("concentration1", c1)
        c0 = self._check_constraint("concentration0", c0)
        self._dirichlet = Dirichlet(ops.stack([c1, c0], -1), validate_args=validate_args)
        super().__init__(self._dirichlet.batch_shape, (), validate_args)

    @property
    def concentration1(self) -> Tensor:
        return ops.select(self._dirichlet.concentration, -1, 0)

    @property
    def concentration0(self) -> Tensor:
        return ops.select(self._dirichlet.concentration, -1, 1)

    @property
    def mean(self) -> Tensor:
        return self.concentration1 / (self.concentration1 + self.concentration0)

    @property
    def mode(self) -> Tensor:
        return ops.select(self._dirichlet.mode, -1, 0)

    @property
    def variance(self) -> Tensor:
        total = self.concentration1 + self.concentration0
        return self.concentration1 * self.concentration0 / (total * total * (total + 1.0))

    def rsample(self, sample_shape: Any = ()) -> Tensor:
        return ops.select(self._dirichlet.rsample(sample_shape), -1, 0)

    def log_prob(self, value: Any) -> Tensor:
        v = self._validate_sample(_param(value))
        return self._dirichlet.log_prob(ops.stack([v, 1.0 - v], -1))

    def entropy(self) -> Tensor:
        return self._dirichlet.entropy()


class ContinuousBernoulli(ExponentialFamily):
    """ContinuousBernoulli(probs=None, logits=None, lims=(0.499, 0.501)) on [0, 1] (Loaiza-Ganem and
    Cunningham 2019), with torch's Taylor expansions near probs = 1/2; rsample is the inverse CDF."""

    arg_constraints = {"probs": constraints.unit_interval, "logits": constraints.real}
    support = constraints.unit_interval
    has_rsample = True
    _expand_params = {"_param": 0}

    _mean_carrier_measure = 0

    @property
    def _natural_params(self) -> tuple[Tensor]:
        return (self.logits,)

    def _log_normalizer(self, x: Tensor) -> Tensor:
        out = ops.logical_or(ops.le(x, self._lims[0] - 0.5), ops.gt(x, self._lims[1] - 0.5))
        cut = ops.where(out, x, self._lims[0] - 0.5)
        log_norm = ops.log(ops.abs(ops.expm1(cut))) - ops.log(ops.abs(cut))
        taylor = 0.5 * x + ops.pow(x, 2.0) / 24.0 - ops.pow(x, 4.0) / 2880.0
        return ops.where(out, log_norm, taylor)

    def __init__(self, probs: Any = None, logits: Any = None, lims: tuple[float, float] = (0.499, 0.501),
                 validate_args: bool | None = None) -> None:
        _one_of("ContinuousBernoulli", probs, logits)
        self._from_probs = probs is not None
        (p,) = _broadcast_all(probs if self._from_probs else logits)
        super().__init__(p.shape, (), validate_args)
        if self._from_probs:
            p = _clamp_probs(self._check_constraint("probs", p))
        self._param, self._lims = p, lims

    @property
    def probs(self) -> Tensor:
        return self._param if self._from_probs else _clamp_probs(ops.sigmoid(self._param))

    @property
    def logits(self) -> Tensor:
        if not self._from_probs:
            return self._param
        p = _clamp_probs(self._param)
        return ops.log(p) - ops.log1p(ops.neg(p))

    @property
    def param_shape(self) -> tuple[int, ...]:
        return self._param.shape

    def _outside_unstable_region(self) -> Tensor:
        p = self.probs
        return ops.logical_or(ops.le(p, self._lims[0]), ops.gt(p, self._lims[1]))

    def _cut_probs(self) -> Tensor:
        return ops.where(self._outside_unstable_region(), self.probs, self._lims[0])

    def _cont_bern_log_norm(self) -> Tensor:
        cut = self._cut_probs()
        below = ops.where(ops.le(cut, 0.5), cut, 0.0)
        above = ops.where(ops.ge(cut, 0.5), cut, 1.0)
        log_norm = ops.log(ops.abs(ops.log1p(ops.neg(cut)) - ops.log(cut))) - ops.where(
            ops.le(cut, 0.5), ops.log1p(-2.0 * below), ops.log(2.0 * above - 1.0))
        x = ops.square(self.probs - 0.5)
        taylor = math.log(2.0) + (4.0 / 3.0 + 104.0 / 45.0 * x) * x
        return ops.where(self._outside_unstable_region(), log_norm, taylor)

    @property
    def mean(self) -> Tensor:
        cut = self._cut_probs()
        mus = cut / (2.0 * cut - 1.0) + 1.0 / (ops.log1p(ops.neg(cut)) - ops.log(cut))
        x = self.probs - 0.5
        taylor = 0.5 + (1.0 / 3.0 + 16.0 / 45.0 * x * x) * x
        return ops.where(self._outside_unstable_region(), mus, taylor)

    @property
    def variance(self) -> Tensor:
        cut = self._cut_probs()
        vs = cut * (cut - 1.0) / ops.square(1.0 - 2.0 * cut) + 1.0 / ops.square(ops.log1p(ops.neg(cut)) - ops.log(cut))
        x = ops.square(self.probs - 0.5)
        taylor = 1.0 / 12.0 - (1.0 / 15.0 - 128.0 / 945.0 * x) * x
        return ops.where(self._outside_unstable_region(), vs, taylor)

    def sample(self, sample_shape: Any = ()) -> Tensor:
        return ops.stop_gradient(self.rsample(sample_shape))

    def rsample(self, sample_shape: Any = ()) -> Tensor:
        return self.icdf(_rand(self._extended_shape(sample_shape), self._param))

    def log_prob(self, value: Any) -> Tensor:
        v = self._validate_sample(_param(value))
        logits, v = _broadcast_all(self.logits, v)
        return ops.neg(_bce_with_logits(logits, v)) + self._cont_bern_log_norm()

    def cdf(self, value: Any) -> Tensor:
        v = self._validate_sample(_param(value))
        cut = self._cut_probs()
        cdfs = (ops.pow(cut, v) * ops.pow(1.0 - cut, 1.0 - v) + cut - 1.0) / (2.0 * cut - 1.0)
        unbounded = ops.where(self._outside_unstable_region(), cdfs, v)
        return ops.where(ops.le(v, 0.0), 0.0, ops.where(ops.ge(v, 1.0), 1.0, unbounded))

    def icdf(self, value: Any) -> Tensor:
        v = _param(value)
        cut = self._cut_probs()
        inv = ((ops.log1p(ops.neg(cut) + v * (2.0 * cut - 1.0)) - ops.log1p(ops.neg(cut)))
               / (ops.log(cut) - ops.log1p(ops.neg(cut))))
        return ops.where(self._outside_unstable_region(), inv, v)

    def entropy(self) -> Tensor:
        log_p0, log_p1 = ops.log1p(ops.neg(self.probs)), ops.log(self.probs)
        return self.mean * (log_p0 - log_p1) - self._cont_bern_log_norm() - log_p0


# log I_0 and log I_1 (modified Bessel functions of the first kind): the power series below 15, the
# asymptotic series e^x / sqrt(2 pi x) sum_k (-1)^k prod_j (4 nu^2 - (2j - 1)^2) / (k! (8x)^k) above
_BESSEL_SERIES_TERMS = 40
_BESSEL_ASYMPTOTIC_TERMS = 30


def _bessel_asymptotic(order: int) -> list[float]:
    mu, c, out = 4.0 * order * order, 1.0, [1.0]
    for k in range(1, _BESSEL_ASYMPTOTIC_TERMS):
        c *= -(mu - (2 * k - 1) ** 2) / (k * 8.0)
        out.append(c)
    return out


def _log_bessel_i(x: Tensor, order: int) -> Tensor:
    """log I_order(x) for x > 0, order 0 or 1, accurate to f64 rounding and finite for large x."""
    near = ops.lt(x, 15.0)
    xn = ops.where(near, x, 1.0)
    q = xn * xn * 0.25
    total, term = ops.zeros_like(xn), ops.ones_like(xn)
    for k in range(_BESSEL_SERIES_TERMS):
        total = total + term
        term = term * q / float((k + 1) * (k + 1 + order))
    series = ops.log(total) + (ops.log(0.5 * xn) if order else 0.0)
    xf = ops.where(near, 15.0, x)
    inv, acc = 1.0 / xf, ops.zeros_like(xf)
    for c in reversed(_bessel_asymptotic(order)):
        acc = acc * inv + c
    asym = xf - 0.5 * ops.log(2.0 * math.pi * xf) + ops.log(acc)
    return ops.where(near, series, asym)


class VonMises(Distribution):
    """VonMises(loc, concentration): the circular normal exp(k cos(x - loc)) / (2 pi I0(k)); mean and
    variance are the circular ones, as torch's. `sample` is Best and Fisher's rejection method (no
    rsample, as in torch)."""

    arg_constraints = {"loc": constraints.real, "concentration": constraints.positive}
    support = constraints.real
    _expand_params = {"loc": 0, "concentration": 0}

    def __init__(self, loc: Any, concentration: Any, validate_args: bool | None = None) -> None:
        self.loc, self.concentration = _broadcast_all(loc, concentration)
        super().__init__(self.loc.shape, (), validate_args)
        self.loc = self._check_constraint("loc", self.loc)
        self.concentration = self._check_constraint("concentration", self.concentration)

    def log_prob(self, value: Any) -> Tensor:
        v = self._validate_sample(_param(value))
        return (self.concentration * ops.cos(v - self.loc) - math.log(2 * math.pi)
                - _log_bessel_i(self.concentration, 0))

    def sample(self, sample_shape: Any = ()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        return ops.cast(_samplers.von_mises(self.loc, self.concentration, shape), self.loc.dtype)

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def mode(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        k = self.concentration
        return 1.0 - ops.exp(_log_bessel_i(k, 1) - _log_bessel_i(k, 0))


def _batch_mv(m: Tensor, v: Tensor) -> Tensor:
    return ops.squeeze(ops.matmul(m, ops.expand_dims(v, -1)), -1)


def _tri_solve_vec(lower: Tensor, v: Tensor) -> Tensor:
    """lower^-1 v, batched over the broadcast of both."""
    n = lower.shape[-1]
    batch = tuple(np.broadcast_shapes(lower.shape[:-2], v.shape[:-1]))
    sol = _tri_solve(ops.broadcast_to(lower, batch + (n, n)), ops.expand_dims(ops.broadcast_to(v, batch + (n,)), -1))
    return ops.squeeze(sol, -1)


def _capacitance_tril(w: Tensor, d: Tensor) -> Tensor:
    """cholesky(I + W^T D^-1 W)."""
    m = w.shape[-1]
    wt_dinv = ops.swapaxes(w, -1, -2) / ops.expand_dims(d, -2)
    k = ops.matmul(wt_dinv, w) + ops.eye(m, dtype=w.dtype)
    return ops.linalg.cholesky(k)


def _lowrank_logdet(w: Tensor, d: Tensor, cap_tril: Tensor) -> Tensor:
    return 2.0 * ops.sum(ops.log(ops.diagonal(cap_tril, 0, -2, -1)), -1) + ops.sum(ops.log(d), -1)


def _lowrank_mahalanobis(w: Tensor, d: Tensor, x: Tensor, cap_tril: Tensor) -> Tensor:
    wt_dinv = ops.swapaxes(w, -1, -2) / ops.expand_dims(d, -2)
    wt_dinv_x = _batch_mv(wt_dinv, x)
    return ops.sum(x * x / d, -1) - ops.sum(ops.square(_tri_solve_vec(cap_tril, wt_dinv_x)), -1)


class LowRankMultivariateNormal(Distribution):
    """LowRankMultivariateNormal(loc, cov_factor, cov_diag): covariance W W^T + diag(D), with log_prob
    and entropy through the m x m capacitance matrix (Woodbury), as torch's."""

    arg_constraints = {"loc": constraints.real_vector, "cov_factor": constraints.independent(constraints.real, 2),
                       "cov_diag": constraints.independent(constraints.positive, 1)}
    support = constraints.real_vector
    has_rsample = True
    _expand_params = {"loc": 1, "cov_diag": 1, "cov_factor": 2}

    def __init__(self, loc: Any, cov_factor: Any, cov_diag: Any, validate_args: bool | None = None) -> None:
        loc, cov_factor, cov_diag = _param(loc), _param(cov_factor), _param(cov_diag)
        if loc.ndim < 1:
            raise ValueError("loc must be at least one-dimensional.")
        event_shape = loc.shape[-1:]
        if cov_factor.ndim < 2:
            raise ValueError("cov_factor must be at least two-dimensional, with optional leading batch dimensions")
        if cov_factor.shape[-2:-1] != event_shape:
            raise ValueError(f"cov_factor must be a batch of matrices with shape {event_shape[0]} x m")
        if cov_diag.shape[-1:] != event_shape:
            raise ValueError(f"cov_diag must be a batch of vectors with shape {event_shape}")
        try:
            shape = tuple(np.broadcast_shapes(loc.shape + (1,), cov_factor.shape, cov_diag.shape + (1,)))
        except ValueError as e:
            raise ValueError(f"Incompatible batch shapes: loc {loc.shape}, cov_factor {cov_factor.shape}, "
                             f"cov_diag {cov_diag.shape}") from e
        super().__init__(shape[:-2], event_shape, validate_args)
        loc = self._check_constraint("loc", loc)
        cov_factor = self._check_constraint("cov_factor", cov_factor)
        cov_diag = self._check_constraint("cov_diag", cov_diag)
        self.loc = ops.broadcast_to(loc, shape[:-1])
        self.cov_diag = ops.broadcast_to(cov_diag, shape[:-1])
        self.cov_factor = ops.broadcast_to(cov_factor, shape)
        self._unbroadcasted_cov_factor, self._unbroadcasted_cov_diag = cov_factor, cov_diag
        self._capacitance_tril = _capacitance_tril(cov_factor, cov_diag)

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def mode(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        w, d = self._unbroadcasted_cov_factor, self._unbroadcasted_cov_diag
        return ops.broadcast_to(ops.sum(w * w, -1) + d, self._batch_shape + self._event_shape)

    @property
    def scale_tril(self) -> Tensor:
        n = self._event_shape[0]
        d_sqrt = ops.expand_dims(ops.sqrt(self._unbroadcasted_cov_diag), -1)
        dw = self._unbroadcasted_cov_factor / d_sqrt
        k = ops.matmul(dw, ops.swapaxes(dw, -1, -2)) + ops.eye(n, dtype=dw.dtype)
        return ops.broadcast_to(d_sqrt * ops.linalg.cholesky(k), self._batch_shape + self._event_shape * 2)

    @property
    def covariance_matrix(self) -> Tensor:
        w = self._unbroadcasted_cov_factor
        cov = ops.matmul(w, ops.swapaxes(w, -1, -2)) + ops.diag_embed(self._unbroadcasted_cov_diag)
        return ops.broadcast_to(cov, self._batch_shape + self._event_shape * 2)

    @property
    def precision_matrix(self) -> Tensor:
        w, d = self._unbroadcasted_cov_factor, self._unbroadcasted_cov_diag
        wt_dinv = ops.swapaxes(w, -1, -2) / ops.expand_dims(d, -2)
        cap = self._capacitance_tril
        batch = tuple(np.broadcast_shapes(cap.shape[:-2], wt_dinv.shape[:-2]))
        a = _tri_solve(ops.broadcast_to(cap, batch + cap.shape[-2:]),
                       ops.broadcast_to(wt_dinv, batch + wt_dinv.shape[-2:]))
        prec = ops.diag_embed(ops.reciprocal(d)) - ops.matmul(ops.swapaxes(a, -1, -2), a)
        return ops.broadcast_to(prec, self._batch_shape + self._event_shape * 2)

    def rsample(self, sample_shape: Any = ()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        w_shape = shape[:-1] + self.cov_factor.shape[-1:]
        eps_w = ops.randn(w_shape, dtype=self.loc.dtype)
        eps_d = ops.randn(shape, dtype=self.loc.dtype)
        return (self.loc + _batch_mv(self._unbroadcasted_cov_factor, eps_w)
                + ops.sqrt(self._unbroadcasted_cov_diag) * eps_d)

    def log_prob(self, value: Any) -> Tensor:
        v = self._validate_sample(_param(value))
        w, d, cap = self._unbroadcasted_cov_factor, self._unbroadcasted_cov_diag, self._capacitance_tril
        m = _lowrank_mahalanobis(w, d, v - self.loc, cap)
        log_det = _lowrank_logdet(w, d, cap)
        return -0.5 * (self._event_shape[0] * math.log(2 * math.pi) + log_det + m)

    def entropy(self) -> Tensor:
        w, d, cap = self._unbroadcasted_cov_factor, self._unbroadcasted_cov_diag, self._capacitance_tril
        h = 0.5 * (self._event_shape[0] * (1.0 + math.log(2 * math.pi)) + _lowrank_logdet(w, d, cap))
        return ops.broadcast_to(h, self._batch_shape)


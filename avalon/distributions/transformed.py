"""TransformedDistribution and the distributions torch builds from it: LogNormal, HalfNormal, HalfCauchy,
Gumbel, Weibull, Pareto, Kumaraswamy, and the relaxed (Concrete / Gumbel-softmax) ones,
RelaxedBernoulli and RelaxedOneHotCategorical with their logit-space bases LogitRelaxedBernoulli and
ExpRelaxedCategorical. Under torch's names, arguments and formulas.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import ops
from ..tensor import Tensor
from . import constraints
from .continuous import EULER_GAMMA, Cauchy, Exponential
from .core import (
    Categorical,
    Distribution,
    Independent,
    Normal,
    Uniform,
    _broadcast_all,
    _clamp_probs,
    _one_of,
    _param,
    _shape,
)
from .transforms import (
    AbsTransform,
    AffineTransform,
    ComposeTransform,
    ExpTransform,
    PowerTransform,
    SigmoidTransform,
    Transform,
    _sum_rightmost,
)

__all__ = ["ExpRelaxedCategorical", "Gumbel", "HalfCauchy", "HalfNormal", "Kumaraswamy", "LogNormal",
           "LogitRelaxedBernoulli", "Pareto", "RelaxedBernoulli", "RelaxedOneHotCategorical",
           "TransformedDistribution", "Weibull"]


class TransformedDistribution(Distribution):
    """TransformedDistribution(base_distribution, transforms): draws of the base pushed through the
    transforms in order; log_prob inverts them and subtracts their log|det J|. rsample is reparameterized
    when the base's is (SAC's `TransformedDistribution(Normal(mu, std), [TanhTransform(cache_size=1)])`)."""

    arg_constraints: dict[str, constraints.Constraint] = {}

    def __init__(self, base_distribution: Distribution, transforms: Transform | list[Transform],
                 validate_args: bool | None = None) -> None:
        if isinstance(transforms, Transform):
            self.transforms = [transforms]
        elif isinstance(transforms, list):
            if not all(isinstance(t, Transform) for t in transforms):
                raise ValueError("transforms must be a Transform or a list of Transforms")
            self.transforms = transforms
        else:
            raise ValueError(f"transforms must be a Transform or list, but was {transforms}")
        base_shape = base_distribution.batch_shape + base_distribution.event_shape
        base_event_dim = len(base_distribution.event_shape)
        transform = ComposeTransform(self.transforms)
        if len(base_shape) < transform.domain.event_dim:
            raise ValueError(f"base_distribution needs to have shape with size at least {transform.domain.event_dim}, "
                             f"but got {base_shape}.")
        forward_shape = transform.forward_shape(base_shape)
        expanded_base_shape = transform.inverse_shape(forward_shape)
        if base_shape != expanded_base_shape:
            cut_base = len(expanded_base_shape) - base_event_dim
            base_distribution = base_distribution.expand(expanded_base_shape[:cut_base])
        reinterpreted = transform.domain.event_dim - base_event_dim
        if reinterpreted > 0:
            base_distribution = Independent(base_distribution, reinterpreted)
        self.base_dist = base_distribution
        event_dim = max(transform.codomain.event_dim,
                        base_event_dim + transform.codomain.event_dim - transform.domain.event_dim)
        cut = len(forward_shape) - event_dim
        super().__init__(forward_shape[:cut], forward_shape[cut:], validate_args)

    def expand(self, batch_shape: Any, _instance: Any = None) -> Distribution:
        shape = _shape(batch_shape)
        full = shape + self._event_shape
        for t in reversed(self.transforms):
            full = t.inverse_shape(full)
        new = super().expand(shape)
        new.base_dist = self.base_dist.expand(full[:len(full) - len(self.base_dist.event_shape)])
        return new

    @constraints.dependent_property(is_discrete=False)
    def support(self) -> Any:
        if not self.transforms:
            return self.base_dist.support
        s = self.transforms[-1].codomain
        if len(self._event_shape) > s.event_dim:
            s = constraints.independent(s, len(self._event_shape) - s.event_dim)
        return s

    @property
    def has_rsample(self) -> bool:  # type: ignore[override]
        return self.base_dist.has_rsample

    def sample(self, sample_shape: Any = ()) -> Tensor:
        x = self.base_dist.sample(sample_shape)
        for t in self.transforms:
            x = t(x)
        return ops.stop_gradient(x)

    def rsample(self, sample_shape: Any = ()) -> Tensor:
        x = self.base_dist.rsample(sample_shape)
        for t in self.transforms:
            x = t(x)
        return x

    def log_prob(self, value: Any) -> Tensor:
        y = self._validate_sample(value if isinstance(value, Tensor) else _param(value))
        event_dim = len(self._event_shape)
        log_prob: Any = 0.0
        for t in reversed(self.transforms):
            x = t.inv(y)
            event_dim += t.domain.event_dim - t.codomain.event_dim
            log_prob = ops.sub(log_prob, _sum_rightmost(t.log_abs_det_jacobian(x, y), event_dim - t.domain.event_dim))
            y = x
        return ops.add(log_prob, _sum_rightmost(self.base_dist.log_prob(y),
                                                event_dim - len(self.base_dist.event_shape)))

    def _monotonize_cdf(self, value: Any) -> Any:
        sign: Any = 1
        for t in self.transforms:
            sign = sign * t.sign
        if isinstance(sign, int) and sign == 1:
            return value
        return ops.add(ops.mul(sign, ops.sub(value, 0.5)), 0.5)

    def cdf(self, value: Any) -> Tensor:
        v = _param(value)
        for t in self.transforms[::-1]:
            v = t.inv(v)
        v = self.base_dist._validate_sample(v)
        return self._monotonize_cdf(self.base_dist.cdf(v))

    def icdf(self, value: Any) -> Tensor:
        v = self.base_dist.icdf(self._monotonize_cdf(_param(value)))
        for t in self.transforms:
            v = t(v)
        return v


class LogNormal(TransformedDistribution):
    """LogNormal(loc, scale): exp of Normal(loc, scale)."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.positive

    def __init__(self, loc: Any, scale: Any, validate_args: bool | None = None) -> None:
        super().__init__(Normal(loc, scale, validate_args=validate_args), ExpTransform(), validate_args=validate_args)

    @property
    def loc(self) -> Tensor:
        return self.base_dist.loc

    @property
    def scale(self) -> Tensor:
        return self.base_dist.scale

    @property
    def mean(self) -> Tensor:
        return ops.exp(self.loc + self.scale * self.scale / 2.0)

    @property
    def mode(self) -> Tensor:
        return ops.exp(self.loc - self.scale * self.scale)

    @property
    def variance(self) -> Tensor:
        s2 = self.scale * self.scale
        return ops.expm1(s2) * ops.exp(2.0 * self.loc + s2)

    def entropy(self) -> Tensor:
        return self.base_dist.entropy() + self.loc


class HalfNormal(TransformedDistribution):
    """HalfNormal(scale): |Normal(0, scale)|."""

    arg_constraints = {"scale": constraints.positive}
    support = constraints.nonnegative

    def __init__(self, scale: Any, validate_args: bool | None = None) -> None:
        self._set_validate_args(validate_args)
        scale = self._check_constraint("scale", _broadcast_all(scale)[0])
        super().__init__(Normal(0.0, scale, validate_args=False), AbsTransform(), validate_args=validate_args)

    @property
    def scale(self) -> Tensor:
        return self.base_dist.scale

    @property
    def mean(self) -> Tensor:
        return self.scale * math.sqrt(2 / math.pi)

    @property
    def mode(self) -> Tensor:
        return ops.zeros_like(self.scale)

    @property
    def variance(self) -> Tensor:
        return self.scale * self.scale * (1 - 2 / math.pi)

    def log_prob(self, value: Any) -> Tensor:
        v = self._validate_sample(_param(value))
        return ops.where(ops.ge(v, 0.0), self.base_dist.log_prob(v) + math.log(2), -math.inf)

    def cdf(self, value: Any) -> Tensor:
        v = self._validate_sample(_param(value))
        return 2.0 * self.base_dist.cdf(v) - 1.0

    def icdf(self, prob: Any) -> Tensor:
        return self.base_dist.icdf((_param(prob) + 1.0) / 2.0)

    def entropy(self) -> Tensor:
        return self.base_dist.entropy() - math.log(2)


class HalfCauchy(TransformedDistribution):
    """HalfCauchy(scale): |Cauchy(0, scale)|."""

    arg_constraints = {"scale": constraints.positive}
    support = constraints.nonnegative

    def __init__(self, scale: Any, validate_args: bool | None = None) -> None:
        self._set_validate_args(validate_args)
        scale = self._check_constraint("scale", _broadcast_all(scale)[0])
        super().__init__(Cauchy(0.0, scale, validate_args=False), AbsTransform(), validate_args=validate_args)

    @property
    def scale(self) -> Tensor:
        return self.base_dist.scale

    @property
    def mean(self) -> Tensor:
        return ops.full(self._extended_shape(), math.inf, self.scale.dtype)

    @property
    def mode(self) -> Tensor:
        return ops.zeros_like(self.scale)

    @property
    def variance(self) -> Tensor:
        return self.base_dist.variance

    def log_prob(self, value: Any) -> Tensor:
        v = self._validate_sample(_param(value))
        return ops.where(ops.ge(v, 0.0), self.base_dist.log_prob(v) + math.log(2), -math.inf)

    def cdf(self, value: Any) -> Tensor:
        v = self._validate_sample(_param(value))
        return 2.0 * self.base_dist.cdf(v) - 1.0

    def icdf(self, prob: Any) -> Tensor:
        return self.base_dist.icdf((_param(prob) + 1.0) / 2.0)

    def entropy(self) -> Tensor:
        return self.base_dist.entropy() - math.log(2)


def _unit_uniform(like: Tensor, numbers: bool, low: float, high: float, validate_args: Any) -> Uniform:
    if numbers:
        return Uniform(low, high, validate_args=validate_args)
    return Uniform(ops.full_like(like, low), ops.full_like(like, high), validate_args=validate_args)


class Gumbel(TransformedDistribution):
    """Gumbel(loc, scale): loc - scale * log(-log U)."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real
    _expand_params = {"loc": 0, "scale": 0}

    def __init__(self, loc: Any, scale: Any, validate_args: bool | None = None) -> None:
        numbers = isinstance(loc, (int, float)) and isinstance(scale, (int, float))
        self.loc, self.scale = _broadcast_all(loc, scale)
        self._set_validate_args(validate_args)
        self.loc = self._check_constraint("loc", self.loc)
        self.scale = self._check_constraint("scale", self.scale)
        finfo = np.finfo(self.loc.dtype.np)
        base = _unit_uniform(self.loc, numbers, float(finfo.tiny), 1 - float(finfo.eps), validate_args)
        transforms = [ExpTransform().inv, AffineTransform(loc=0, scale=ops.neg(ops.ones_like(self.scale))),
                      ExpTransform().inv, AffineTransform(loc=self.loc, scale=ops.neg(self.scale))]
        super().__init__(base, transforms, validate_args=validate_args)

    def log_prob(self, value: Any) -> Tensor:
        v = self._validate_sample(_param(value))
        y = (self.loc - v) / self.scale
        return (y - ops.exp(y)) - ops.log(self.scale)

    @property
    def mean(self) -> Tensor:
        return self.loc + self.scale * EULER_GAMMA

    @property
    def mode(self) -> Tensor:
        return self.loc

    @property
    def stddev(self) -> Tensor:
        return (math.pi / math.sqrt(6)) * self.scale

    @property
    def variance(self) -> Tensor:
        return ops.square(self.stddev)

    def entropy(self) -> Tensor:
        return ops.log(self.scale) + (1 + EULER_GAMMA)


class Weibull(TransformedDistribution):
    """Weibull(scale, concentration): scale * E^(1/concentration), E ~ Exponential(1)."""

    arg_constraints = {"scale": constraints.positive, "concentration": constraints.positive}
    support = constraints.positive
    _expand_params = {"scale": 0, "concentration": 0, "concentration_reciprocal": 0}

    def __init__(self, scale: Any, concentration: Any, validate_args: bool | None = None) -> None:
        self.scale, self.concentration = _broadcast_all(scale, concentration)
        self._set_validate_args(validate_args)
        self.scale = self._check_constraint("scale", self.scale)
        self.concentration = self._check_constraint("concentration", self.concentration)
        self.concentration_reciprocal = ops.reciprocal(self.concentration)
        base = Exponential(ops.ones_like(self.scale), validate_args=validate_args)
        transforms = [PowerTransform(exponent=self.concentration_reciprocal), AffineTransform(loc=0, scale=self.scale)]
        super().__init__(base, transforms, validate_args=validate_args)

    @property
    def mean(self) -> Tensor:
        return self.scale * ops.exp(ops.lgamma(1.0 + self.concentration_reciprocal))

    @property
    def mode(self) -> Tensor:
        k = self.concentration
        return self.scale * ops.pow((k - 1.0) / k, ops.reciprocal(k))

    @property
    def variance(self) -> Tensor:
        r = self.concentration_reciprocal
        return self.scale * self.scale * (ops.exp(ops.lgamma(1.0 + 2.0 * r)) - ops.exp(2.0 * ops.lgamma(1.0 + r)))

    def entropy(self) -> Tensor:
        r = self.concentration_reciprocal
        return EULER_GAMMA * (1.0 - r) + ops.log(self.scale * r) + 1.0


class Pareto(TransformedDistribution):
    """Pareto(scale, alpha): scale * exp(E), E ~ Exponential(alpha); support x >= scale."""

    arg_constraints = {"alpha": constraints.positive, "scale": constraints.positive}
    _expand_params = {"scale": 0, "alpha": 0}

    def __init__(self, scale: Any, alpha: Any, validate_args: bool | None = None) -> None:
        self.scale, self.alpha = _broadcast_all(scale, alpha)
        self._set_validate_args(validate_args)
        # the user's alpha is checked (named) before the Exponential built on it checks it as its rate
        self.alpha = self._check_constraint("alpha", self.alpha)
        self.scale = self._check_constraint("scale", self.scale)
        base = Exponential(self.alpha, validate_args=validate_args)
        super().__init__(base, [ExpTransform(), AffineTransform(loc=0, scale=self.scale)], validate_args=validate_args)

    @property
    def mean(self) -> Tensor:
        a = ops.clamp(self.alpha, min=1.0)
        return a * self.scale / (a - 1.0)

    @property
    def mode(self) -> Tensor:
        return self.scale

    @property
    def variance(self) -> Tensor:
        a = ops.clamp(self.alpha, min=2.0)
        return self.scale * self.scale * a / (ops.square(a - 1.0) * (a - 2.0))

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self) -> constraints.Constraint:
        return constraints.greater_than_eq(self.scale)

    def entropy(self) -> Tensor:
        return ops.log(self.scale / self.alpha) + (1.0 + ops.reciprocal(self.alpha))


def _kumaraswamy_moment(a: Tensor, b: Tensor, n: int) -> Tensor:
    arg1 = 1.0 + n / a
    return b * ops.exp(ops.lgamma(arg1) + ops.lgamma(b) - ops.lgamma(arg1 + b))


class Kumaraswamy(TransformedDistribution):
    """Kumaraswamy(concentration1, concentration0): a b x^(a-1) (1 - x^a)^(b-1) on [0, 1], the draw
    (1 - (1 - U)^(1/b))^(1/a)."""

    arg_constraints = {"concentration1": constraints.positive, "concentration0": constraints.positive}
    support = constraints.unit_interval
    _expand_params = {"concentration1": 0, "concentration0": 0}

    def __init__(self, concentration1: Any, concentration0: Any, validate_args: bool | None = None) -> None:
        self.concentration1, self.concentration0 = _broadcast_all(concentration1, concentration0)
        self._set_validate_args(validate_args)
        self.concentration1 = self._check_constraint("concentration1", self.concentration1)
        self.concentration0 = self._check_constraint("concentration0", self.concentration0)
        base = Uniform(ops.full_like(self.concentration0, 0.0), ops.full_like(self.concentration0, 1.0),
                       validate_args=validate_args)
        transforms = [PowerTransform(exponent=ops.reciprocal(self.concentration0)),
                      AffineTransform(loc=1.0, scale=-1.0),
                      PowerTransform(exponent=ops.reciprocal(self.concentration1))]
        super().__init__(base, transforms, validate_args=validate_args)

    @property
    def mean(self) -> Tensor:
        return _kumaraswamy_moment(self.concentration1, self.concentration0, 1)

    @property
    def mode(self) -> Tensor:
        """((a - 1) / (a b - 1))^(1/a), nan where a or b is below 1. (torch 2.x writes log1p(-b) for
        log(a - 1) here, which is nan wherever b > 1.)"""
        a, b = self.concentration1, self.concentration0
        ok = ops.logical_and(ops.ge(a, 1.0), ops.ge(b, 1.0))
        m = ops.pow(ops.where(ok, (a - 1.0) / (a * b - 1.0), 1.0), ops.reciprocal(a))
        return ops.where(ok, m, math.nan)

    @property
    def variance(self) -> Tensor:
        return _kumaraswamy_moment(self.concentration1, self.concentration0, 2) - ops.square(self.mean)

    def entropy(self) -> Tensor:
        t1 = 1.0 - ops.reciprocal(self.concentration1)
        t0 = 1.0 - ops.reciprocal(self.concentration0)
        h0 = ops.digamma(self.concentration0 + 1.0) + EULER_GAMMA
        return t0 + t1 * h0 - ops.log(self.concentration1) - ops.log(self.concentration0)


def _temperature(temperature: Any, like: Tensor) -> Tensor:
    t = temperature if isinstance(temperature, Tensor) else (
        ops.full((), float(temperature), like.dtype) if isinstance(temperature, (int, float)) else _param(temperature))
    return t if t.dtype.is_float else ops.cast(t, like.dtype)


class LogitRelaxedBernoulli(Distribution):
    """LogitRelaxedBernoulli(temperature, probs=None, logits=None): the logit of a RelaxedBernoulli draw,
    (logit(U) + logits) / temperature."""

    arg_constraints = {"probs": constraints.unit_interval, "logits": constraints.real}
    support = constraints.real
    has_rsample = True
    _expand_params = {"_param": 0}

    def __init__(self, temperature: Any, probs: Any = None, logits: Any = None,
                 validate_args: bool | None = None) -> None:
        _one_of("LogitRelaxedBernoulli", probs, logits)
        self._from_probs = probs is not None
        (self._param,) = _broadcast_all(probs if self._from_probs else logits)
        self.temperature = _temperature(temperature, self._param)
        super().__init__(self._param.shape, (), validate_args)
        if self._from_probs:
            self._param = self._check_constraint("probs", self._param)

    @property
    def probs(self) -> Tensor:
        return self._param if self._from_probs else ops.sigmoid(self._param)

    @property
    def logits(self) -> Tensor:
        if not self._from_probs:
            return self._param
        p = _clamp_probs(self._param)
        return ops.log(p) - ops.log1p(ops.neg(p))

    @property
    def param_shape(self) -> tuple[int, ...]:
        return self._param.shape

    def rsample(self, sample_shape: Any = ()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        probs = _clamp_probs(ops.broadcast_to(self.probs, shape))
        u = _clamp_probs(ops.rand(shape, dtype=probs.dtype))
        return (ops.log(u) - ops.log1p(ops.neg(u)) + ops.log(probs) - ops.log1p(ops.neg(probs))) / self.temperature

    def log_prob(self, value: Any) -> Tensor:
        v = self._validate_sample(_param(value))
        logits, v = _broadcast_all(self.logits, v)
        diff = logits - v * self.temperature
        return ops.log(self.temperature) + diff - 2.0 * ops.log1p(ops.exp(diff))


class _Relaxed(TransformedDistribution):
    """A relaxed distribution: its temperature, logits and probs are its base distribution's."""

    temperature = property(lambda self: self.base_dist.temperature)
    logits = property(lambda self: self.base_dist.logits)
    probs = property(lambda self: self.base_dist.probs)


class RelaxedBernoulli(_Relaxed):
    """RelaxedBernoulli(temperature, probs=None, logits=None): the Concrete relaxation of a Bernoulli on
    (0, 1), reparameterized: sigmoid((logit(U) + logits) / temperature)."""

    arg_constraints = {"probs": constraints.unit_interval, "logits": constraints.real}
    support = constraints.unit_interval

    def __init__(self, temperature: Any, probs: Any = None, logits: Any = None,
                 validate_args: bool | None = None) -> None:
        base = LogitRelaxedBernoulli(temperature, probs, logits, validate_args=validate_args)
        super().__init__(base, SigmoidTransform(), validate_args=validate_args)


class ExpRelaxedCategorical(Distribution):
    """ExpRelaxedCategorical(temperature, probs=None, logits=None): the log of a RelaxedOneHotCategorical
    draw, log_softmax((logits + Gumbel noise) / temperature)."""

    arg_constraints = {"probs": constraints.simplex, "logits": constraints.real_vector}
    support = constraints.real_vector
    has_rsample = True
    _expand_dists = ("_categorical",)

    def __init__(self, temperature: Any, probs: Any = None, logits: Any = None,
                 validate_args: bool | None = None) -> None:
        self._categorical = Categorical(probs, logits, validate_args=validate_args)
        self.temperature = _temperature(temperature, self._categorical._param)
        super().__init__(self._categorical.batch_shape, self._categorical.param_shape[-1:], validate_args)

    @property
    def param_shape(self) -> tuple[int, ...]:
        return self._categorical.param_shape

    @property
    def logits(self) -> Tensor:
        return self._categorical.logits

    @property
    def probs(self) -> Tensor:
        return self._categorical.probs

    def rsample(self, sample_shape: Any = ()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        logits = self.logits
        u = _clamp_probs(ops.rand(shape, dtype=logits.dtype))
        gumbels = ops.neg(ops.log(ops.neg(ops.log(u))))
        scores = (logits + gumbels) / self.temperature
        return scores - ops.logsumexp(scores, -1, keepdims=True)

    def log_prob(self, value: Any) -> Tensor:
        k = self._categorical._num_events
        v = self._validate_sample(_param(value))
        logits, v = _broadcast_all(self.logits, v)
        log_scale = math.lgamma(k) + (k - 1) * ops.log(self.temperature)
        score = logits - v * self.temperature
        score = ops.sum(score - ops.logsumexp(score, -1, keepdims=True), -1)
        return score + log_scale


class RelaxedOneHotCategorical(_Relaxed):
    """RelaxedOneHotCategorical(temperature, probs=None, logits=None): the Concrete / Gumbel-softmax
    relaxation of a one-hot categorical on the simplex, reparameterized:
    softmax((logits + Gumbel noise) / temperature)."""

    arg_constraints = {"probs": constraints.simplex, "logits": constraints.real_vector}
    support = constraints.simplex

    def __init__(self, temperature: Any, probs: Any = None, logits: Any = None,
                 validate_args: bool | None = None) -> None:
        base = ExpRelaxedCategorical(temperature, probs, logits, validate_args=validate_args)
        super().__init__(base, ExpTransform(), validate_args=validate_args)

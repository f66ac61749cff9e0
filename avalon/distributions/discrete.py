"""Discrete distributions of torch.distributions under torch's names, arguments and formulas: Poisson,
Binomial, Geometric, NegativeBinomial, Multinomial and OneHotCategoricalStraightThrough. Samples are
floats of the parameter's dtype (torch's), drawn by Avalon's random ops (so afresh inside
`av.compile`), without gradient; log_prob and entropy differentiate in the parameters (a REINFORCE
or count-regression loss). OneHotCategoricalStraightThrough's rsample passes the probabilities'
gradient through the one-hot draw (Bengio et al. 2013), as torch's.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import ops
from ..tensor import Tensor
from . import _samplers, constraints
from .continuous import Gamma
from .core import (
    Categorical,
    Distribution,
    ExponentialFamily,
    OneHotCategorical,
    _bce_with_logits,
    _broadcast_all,
    _check_traced,
    _clamp_probs,
    _known,
    _one_of,
    _param,
    _shape,
    _softplus,
)

__all__ = ["Binomial", "Geometric", "Multinomial", "NegativeBinomial", "OneHotCategoricalStraightThrough", "Poisson"]


def _probs_to_logits(p: Tensor) -> Tensor:
    pc = _clamp_probs(p)
    return ops.log(pc) - ops.log1p(ops.neg(pc))


def _log_sigmoid(x: Tensor) -> Tensor:
    return ops.neg(_softplus(ops.neg(x)))


class _BinaryParam(Distribution):
    """A distribution given `probs` or `logits` of one binary event (torch's is_binary conversions)."""

    _expand_params = {"_param": 0}

    def _set_param(self, probs: Any, logits: Any, *more: Any) -> list[Tensor]:
        _one_of(type(self).__name__, probs, logits)
        self._from_probs = probs is not None
        out = _broadcast_all(probs if self._from_probs else logits, *more)
        self._param = out[0]
        return out[1:]

    @property
    def probs(self) -> Tensor:
        return self._param if self._from_probs else ops.sigmoid(self._param)

    @property
    def logits(self) -> Tensor:
        return _probs_to_logits(self._param) if self._from_probs else self._param

    @property
    def param_shape(self) -> tuple[int, ...]:
        return self._param.shape


class Poisson(ExponentialFamily):
    """Poisson(rate): rate^k e^-rate / k! on k = 0, 1, ..."""

    arg_constraints = {"rate": constraints.nonnegative}
    support = constraints.nonnegative_integer
    _expand_params = {"rate": 0}

    @property
    def _natural_params(self) -> tuple[Tensor]:
        return (ops.log(self.rate),)

    def _log_normalizer(self, x: Tensor) -> Tensor:
        return ops.exp(x)

    def __init__(self, rate: Any, validate_args: bool | None = None) -> None:
        (self.rate,) = _broadcast_all(rate)
        super().__init__(self.rate.shape, (), validate_args)
        self.rate = self._check_constraint("rate", self.rate)

    @property
    def mean(self) -> Tensor:
        return self.rate

    @property
    def mode(self) -> Tensor:
        return ops.floor(self.rate)

    @property
    def variance(self) -> Tensor:
        return self.rate

    def sample(self, sample_shape: Any = ()) -> Tensor:
        return ops.cast(_samplers.poisson(self.rate, self._extended_shape(sample_shape)), self.rate.dtype)

    def log_prob(self, value: Any) -> Tensor:
        v = self._validate_sample(_param(value))
        rate, v = _broadcast_all(self.rate, v)
        return ops.xlogy(v, rate) - rate - ops.lgamma(v + 1.0)


def _count_values(total_count: Any) -> np.ndarray | None:
    """total_count's values as given (before broadcasting, which a trace records), when known."""
    if isinstance(total_count, (int, float, np.integer, np.floating, np.ndarray)):
        return np.asarray(total_count, np.float64)
    return _known(total_count) if isinstance(total_count, Tensor) else None


def _total_count_value(vals: np.ndarray | None, what: str) -> int:
    if vals is None:
        raise NotImplementedError(f"Binomial.{what} needs total_count's value (its number of terms); it is traced "
                                  "here: pass total_count as a Python number or a constant")
    n = int(vals.max()) if vals.size else 0
    if vals.size and vals.min() != n:
        raise NotImplementedError(f"Inhomogeneous total count not supported by `{what}`.")
    return n


class Binomial(_BinaryParam):
    """Binomial(total_count=1, probs=None, logits=None): successes in total_count trials."""

    arg_constraints = {"total_count": constraints.nonnegative_integer, "probs": constraints.unit_interval,
                       "logits": constraints.real}
    has_enumerate_support = True
    _expand_params = {"_param": 0, "total_count": 0}

    def __init__(self, total_count: Any = 1, probs: Any = None, logits: Any = None,
                 validate_args: bool | None = None) -> None:
        self._count_values = _count_values(total_count)
        (n,) = self._set_param(probs, logits, total_count)
        self.total_count = ops.cast(n, self._param.dtype) if n.dtype != self._param.dtype else n
        super().__init__(self._param.shape, (), validate_args)
        self.total_count = self._check_constraint("total_count", self.total_count)
        if self._from_probs:
            self._param = self._check_constraint("probs", self._param)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self) -> constraints.Constraint:
        return constraints.integer_interval(0, self.total_count)

    @property
    def mean(self) -> Tensor:
        return self.total_count * self.probs

    @property
    def mode(self) -> Tensor:
        return ops.minimum(ops.floor((self.total_count + 1.0) * self.probs), self.total_count)

    @property
    def variance(self) -> Tensor:
        p = self.probs
        return self.total_count * p * (1.0 - p)

    def sample(self, sample_shape: Any = ()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        return ops.cast(_samplers.binomial(self.total_count, self.probs, shape), self._param.dtype)

    def log_prob(self, value: Any) -> Tensor:
        v = self._validate_sample(_param(value))
        n, logits = self.total_count, self.logits
        # torch's _clamp_by_zero: max(logits, 0) with the gradient 1/2 at 0 (a plain clamp's 1 there gave
        # d/dprobs -12 where the true derivative, torch's, is -2: Binomial(5, probs=0.5).log_prob(2))
        by_zero = (ops.clamp(logits, min=0.0) + logits - ops.clamp(logits, max=0.0)) / 2.0
        normalize = (n * by_zero + n * ops.log1p(ops.exp(ops.neg(ops.abs(logits))))
                     - ops.lgamma(n + 1.0))
        return v * logits - ops.lgamma(v + 1.0) - ops.lgamma(n - v + 1.0) - normalize

    def entropy(self) -> Tensor:
        lp = self.log_prob(self.enumerate_support(False))
        return ops.neg(ops.sum(ops.exp(lp) * lp, 0))

    def enumerate_support(self, expand: bool = True) -> Tensor:
        n = _total_count_value(self._count_values, "enumerate_support")
        values = ops.reshape(ops.arange(n + 1, dtype=self._param.dtype), (n + 1,) + (1,) * len(self._batch_shape))
        return ops.broadcast_to(values, (n + 1,) + self._batch_shape) if expand else values


class Geometric(_BinaryParam):
    """Geometric(probs=None, logits=None): failures before the first success, k = 0, 1, ..."""

    arg_constraints = {"probs": constraints.unit_interval, "logits": constraints.real}
    support = constraints.nonnegative_integer

    def __init__(self, probs: Any = None, logits: Any = None, validate_args: bool | None = None) -> None:
        self._set_param(probs, logits)
        super().__init__(self._param.shape, (), validate_args)
        if self._from_probs:
            self._param = self._check_constraint("probs", self._param)
            vals = _known(self._param) if self._validate_args else None
            if self._validate_args and vals is None:
                self._param = _check_traced(self._param, self._param > 0,
                                            f"Expected parameter probs (Tensor of shape {self._param.shape}) of "
                                            f"distribution {self!r} to be positive but found invalid values")
            elif vals is not None and not np.all(vals > 0):
                raise ValueError(f"Expected parameter probs (Tensor of shape {self._param.shape}) of distribution "
                                 f"{self!r} to be positive but found invalid values:\n{vals[~(vals > 0)]}")

    @property
    def mean(self) -> Tensor:
        return 1.0 / self.probs - 1.0

    @property
    def mode(self) -> Tensor:
        return ops.zeros_like(self.probs)

    @property
    def variance(self) -> Tensor:
        p = self.probs
        return (1.0 / p - 1.0) / p

    def sample(self, sample_shape: Any = ()) -> Tensor:
        p = ops.stop_gradient(self.probs)
        tiny = float(np.finfo(p.dtype.np).tiny)
        u = ops.clamp(ops.rand(self._extended_shape(sample_shape), dtype=p.dtype), min=tiny)
        return ops.floor(ops.log(u) / ops.log1p(ops.neg(p)))

    def log_prob(self, value: Any) -> Tensor:
        v = self._validate_sample(_param(value))
        v, p = _broadcast_all(v, self.probs)
        p_safe = ops.where(ops.logical_and(ops.eq(p, 1.0), ops.eq(v, 0.0)), 0.0, p)
        return v * ops.log1p(ops.neg(p_safe)) + ops.log(self.probs)

    def entropy(self) -> Tensor:
        return _bce_with_logits(self.logits, self.probs) / self.probs


class NegativeBinomial(_BinaryParam):
    """NegativeBinomial(total_count, probs=None, logits=None): successes before total_count failures,
    each trial a success with probability probs; sampled as Poisson(Gamma(total_count, exp(-logits)))."""

    arg_constraints = {"total_count": constraints.greater_than_eq(0), "probs": constraints.half_open_interval(0.0, 1.0),
                       "logits": constraints.real}
    support = constraints.nonnegative_integer
    _expand_params = {"_param": 0, "total_count": 0}

    def __init__(self, total_count: Any, probs: Any = None, logits: Any = None,
                 validate_args: bool | None = None) -> None:
        (n,) = self._set_param(probs, logits, total_count)
        self.total_count = ops.cast(n, self._param.dtype) if n.dtype != self._param.dtype else n
        super().__init__(self._param.shape, (), validate_args)
        self.total_count = self._check_constraint("total_count", self.total_count)
        if self._from_probs:
            self._param = self._check_constraint("probs", self._param)

    @property
    def mean(self) -> Tensor:
        return self.total_count * ops.exp(self.logits)

    @property
    def mode(self) -> Tensor:
        return ops.clamp(ops.floor((self.total_count - 1.0) * ops.exp(self.logits)), min=0.0)

    @property
    def variance(self) -> Tensor:
        return self.mean / ops.sigmoid(ops.neg(self.logits))

    def sample(self, sample_shape: Any = ()) -> Tensor:
        gamma = Gamma(ops.stop_gradient(self.total_count), ops.exp(ops.neg(ops.stop_gradient(self.logits))),
                      validate_args=False)
        rate = gamma.sample(sample_shape)
        return ops.cast(_samplers.poisson(rate, rate.shape), self._param.dtype)

    def log_prob(self, value: Any) -> Tensor:
        v = self._validate_sample(_param(value))
        n, logits = self.total_count, self.logits
        log_unnormalized = n * _log_sigmoid(ops.neg(logits)) + v * _log_sigmoid(logits)
        log_normalization = ops.neg(ops.lgamma(n + v)) + ops.lgamma(1.0 + v) + ops.lgamma(n)
        log_normalization = ops.where(ops.eq(n + v, 0.0), 0.0, log_normalization)
        return log_unnormalized - log_normalization


class Multinomial(Distribution):
    """Multinomial(total_count=1, probs=None, logits=None): counts of total_count categorical draws."""

    arg_constraints = {"probs": constraints.simplex, "logits": constraints.real_vector}
    _expand_dists = ("_categorical",)

    def __init__(self, total_count: int = 1, probs: Any = None, logits: Any = None,
                 validate_args: bool | None = None) -> None:
        if not isinstance(total_count, (int, np.integer)):
            raise NotImplementedError("inhomogeneous total_count is not supported")
        self.total_count = int(total_count)
        self._categorical = Categorical(probs=probs, logits=logits, validate_args=validate_args)
        super().__init__(self._categorical.batch_shape, self._categorical.param_shape[-1:], validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=1)
    def support(self) -> constraints.Constraint:
        return constraints.multinomial(self.total_count)

    @property
    def logits(self) -> Tensor:
        return self._categorical.logits

    @property
    def probs(self) -> Tensor:
        return self._categorical.probs

    @property
    def param_shape(self) -> tuple[int, ...]:
        return self._categorical.param_shape

    @property
    def mean(self) -> Tensor:
        return self.probs * float(self.total_count)

    @property
    def variance(self) -> Tensor:
        p = self.probs
        return float(self.total_count) * p * (1.0 - p)

    def sample(self, sample_shape: Any = ()) -> Tensor:
        shape = _shape(sample_shape)
        k = self._event_shape[0]
        draws = self._categorical.sample((self.total_count,) + shape)  # (n,) + sample + batch
        return ops.sum(ops.one_hot(draws, k, self._categorical._param.dtype), 0)

    def log_prob(self, value: Any) -> Tensor:
        v = self._validate_sample(_param(value))
        logits, v = _broadcast_all(self.logits, v)
        logits = ops.where(ops.logical_and(ops.eq(v, 0.0), ops.eq(logits, -math.inf)), 0.0, logits)
        return ops.lgamma(ops.sum(v, -1) + 1.0) - ops.sum(ops.lgamma(v + 1.0), -1) + ops.sum(logits * v, -1)

    def entropy(self) -> Tensor:
        n = float(self.total_count)
        term1 = n * self._categorical.entropy() - math.lgamma(n + 1.0)
        if self.total_count == 0:
            return term1
        p = self.probs  # batch + (K,)
        support = ops.reshape(ops.arange(1, self.total_count + 1, dtype=p.dtype),
                              (self.total_count,) + (1,) * p.ndim)
        binomial = Binomial(n, probs=p, validate_args=False)
        weights = ops.lgamma(support + 1.0)
        return term1 + ops.sum(ops.exp(binomial.log_prob(support)) * weights, [0, -1])


class OneHotCategoricalStraightThrough(OneHotCategorical):
    """OneHotCategorical whose rsample is the one-hot draw with the probabilities' gradient (straight
    through: `sample + probs - stop_gradient(probs)`)."""

    has_rsample = True

    def rsample(self, sample_shape: Any = ()) -> Tensor:
        samples = self.sample(sample_shape)
        probs = self._categorical.probs
        return samples + (probs - ops.stop_gradient(probs))

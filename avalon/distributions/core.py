"""The base class and the first distributions of `avalon.distributions`: torch.distributions'
Categorical, OneHotCategorical, Bernoulli, Normal, Uniform, MultivariateNormal, Independent and
MixtureSameFamily, with `kl_divergence`, under torch's names, arguments and formulas.

Sampling draws from Avalon's seeded generator through the `random` op (`av.multinomial` for the
categorical ones), so inside `av.compile` every call draws afresh, as eagerly, and `av.manual_seed`
repeats a run. `rsample` (Normal, Uniform) is reparameterized: the gradient flows through loc and
scale. `sample` carries no gradient. `log_prob`, `entropy` and the KL divergences are ordinary
differentiable expressions, so a REINFORCE loss `-(dist.log_prob(actions) * returns).sum()`
differentiates under `av.grad` like torch's autograd.

Arguments are checked as torch checks them (`validate_args`, on by default, as in torch): known
values at once, with torch's ValueError showing them; traced ones (av.compile, av.grad, compiled
steps) by `check` ops carrying the same message, which raise ValueCheckError (a ValueError) when the
graph runs. validate_args=False adds no check.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .. import ops
from ..ir import dtypes as dt
from ..ops import linalg
from ..tensor import Tensor, values_fixed
from . import constraints

__all__ = ["Bernoulli", "Categorical", "Distribution", "ExponentialFamily", "Independent", "MixtureSameFamily",
           "MultivariateNormal", "Normal", "OneHotCategorical", "Uniform", "kl_divergence", "register_kl"]


def _param(x: Any) -> Tensor:
    t = x if isinstance(x, Tensor) else ops.as_tensor(x)
    return t if t.dtype.is_float else ops.cast(t, dt.float32)


def _broadcast_all(*values: Any) -> list[Tensor]:
    """torch's broadcast_all: numbers become tensors of the first tensor's float dtype (float32 when
    all are numbers), then everything broadcasts to one shape."""
    tensors = [v for v in values if isinstance(v, (Tensor, np.ndarray)) or hasattr(v, "detach")]
    d = _param(tensors[0]).dtype if tensors else dt.float32
    ts = [_param(v) if (isinstance(v, (Tensor, np.ndarray)) or hasattr(v, "detach")) else ops.full((), float(v), d)
          for v in values]
    shape = tuple(np.broadcast_shapes(*[t.shape for t in ts]))
    return [ops.broadcast_to(t, shape) for t in ts]


def _shape(sample_shape: Any) -> tuple[int, ...]:
    if isinstance(sample_shape, (int, np.integer)):
        return (int(sample_shape),)
    return tuple(int(s) for s in sample_shape)


def _known(t: Tensor) -> np.ndarray | None:
    """The values of `t` when they are concrete (not traced, nor a model's tensor being traced)."""
    return t.numpy() if values_fixed(t) else None


def _constraint_tensors(c: Any) -> list[Tensor]:
    """The tensors a constraint reads (its bounds), its base constraints' included."""
    out: list[Tensor] = []
    for b in vars(c).values():
        if isinstance(b, Tensor):
            out.append(b)
        elif isinstance(b, constraints.Constraint):
            out += _constraint_tensors(b)
        elif isinstance(b, list):
            out += [t for x in b if isinstance(x, constraints.Constraint) for t in _constraint_tensors(x)]
    return out


def _check_traced(t: Tensor, ok: Any, msg: str) -> Tensor:
    """`t` behind a `check` op raising ValueCheckError(msg) (a ValueError, as torch's) where `ok` is false
    when the graph runs. `ok` is over t's leading (batch) dims, a constraint having reduced the event
    dims: it is expanded back to t's shape (reduced to one flag where it broadcasts beyond t, as when a
    value broadcasts against the parameters)."""
    ok = ok if isinstance(ok, Tensor) else ops.as_tensor(np.asarray(ok))
    if ok.dtype is not dt.bool_:
        ok = ops.cast(ok, dt.bool_)
    if ok.ndim < t.ndim:
        ok = ops.reshape(ok, ok.shape + (1,) * (t.ndim - ok.ndim))
    try:
        fits = np.broadcast_shapes(ok.shape, t.shape) == t.shape
    except ValueError:
        fits = False
    if not fits:
        ok = ops.all(ok)
    return ops.check_values(t, ok, msg)


def _clamp_probs(p: Tensor) -> Tensor:
    """torch's clamp_probs: probabilities kept in [eps, 1 - eps] before a logarithm."""
    eps = float(np.finfo(p.dtype.np).eps)
    return ops.clamp(p, eps, 1 - eps)


def _bce_with_logits(x: Tensor, z: Tensor) -> Tensor:
    """torch's binary_cross_entropy_with_logits (no reduction), in its stable form; the gradients are
    sigmoid(x) - z for the logits and -x for the target, torch's."""
    m = ops.clamp(ops.neg(x), min=0.0)
    return ops.add(ops.add(ops.mul(ops.sub(1.0, z), x), m), ops.log(ops.add(ops.exp(ops.neg(m)),
                                                                           ops.exp(ops.sub(ops.neg(x), m)))))


def _softplus(x: Tensor) -> Tensor:
    """torch's softplus (beta 1, threshold 20): x past the threshold, else log(1 + exp(x))."""
    big = ops.gt(x, 20.0)
    return ops.where(big, x, ops.log1p(ops.exp(ops.where(big, 0.0, x))))


class Distribution:
    """A batch of probability distributions: `batch_shape` independent ones, each over values of
    `event_shape`. Subclasses give the formulas; this class gives torch's shared surface."""

    has_rsample = False
    has_enumerate_support = False
    _validate_default = True
    arg_constraints: dict[str, constraints.Constraint] = {}
    support: Any = None
    # `expand`: the tensor attributes broadcast to the new batch shape, each with its number of trailing
    # (event) dims; and the distributions held, expanded to the new batch shape
    _expand_params: dict[str, int] = {}
    _expand_dists: tuple[str, ...] = ()

    def __init__(self, batch_shape: Sequence[int] = (), event_shape: Sequence[int] = (),
                 validate_args: bool | None = None) -> None:
        self._batch_shape, self._event_shape = tuple(batch_shape), tuple(event_shape)
        self._set_validate_args(validate_args)

    def _set_validate_args(self, validate_args: bool | None) -> None:
        """Decide on argument checks before `__init__` (a subclass checking its parameters before it
        builds on them: the checked tensors are the ones it uses)."""
        self._validate_args = self._validate_default if validate_args is None else bool(validate_args)

    @staticmethod
    def set_default_validate_args(value: bool) -> None:
        """Switch argument checks on or off for distributions made later (torch's global switch)."""
        Distribution._validate_default = bool(value)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return self._batch_shape

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self._event_shape

    def _extended_shape(self, sample_shape: Any = ()) -> tuple[int, ...]:
        return _shape(sample_shape) + self._batch_shape + self._event_shape

    def _check(self, name: str, t: Tensor, ok: Any, constraint: str, *deps: Any) -> Tensor:
        """torch's parameter check: a ValueError naming the parameter and the constraint it breaks.
        `ok` is a Constraint or a function of the values that works on numpy arrays and on Tensors
        (`deps`: the other tensors it reads). Known values are checked now (the message shows them);
        traced ones by a `check` op when the graph runs: use the tensor returned."""
        if not self._validate_args:
            return t
        msg = (f"Expected parameter {name} (Tensor of shape {t.shape}) of distribution {type(self).__name__} "
               f"to satisfy the constraint {constraint}, but found invalid values")
        return self._checked(t, ok, msg, deps)

    def _check_sample(self, value: Tensor, ok: Any, support: str, *deps: Any, result: Tensor | None = None) -> Tensor:
        """torch's check of a `log_prob`/`cdf` value (as `_check`); returns the (checked) value, or the
        checked `result` computed from it where the value enters it only through comparisons (which a
        gradient-only graph would not keep)."""
        if not self._validate_args:
            return value if result is None else result
        self._check_sample_shape(value)
        msg = (f"Expected value argument (Tensor of shape {value.shape}) to be within the support ({support}) of "
               f"the distribution {type(self).__name__}, but found invalid values")
        return self._checked(value, ok, msg, deps, result)

    def _check_sample_shape(self, value: Tensor) -> None:
        """torch's shape checks of a `log_prob`/`cdf` value (shapes are static: eagerly and traced alike):
        its right-most dims are the event shape, and the rest broadcasts with the batch shape."""
        shape, event = tuple(value.shape), self._event_shape
        if shape[len(shape) - len(event):] != event or len(shape) < len(event):
            raise ValueError(f"The right-most size of value must match event_shape: {shape} vs {event}.")
        expected = self._batch_shape + event
        if any(i != 1 and j != 1 and i != j for i, j in zip(reversed(shape), reversed(expected))):
            raise ValueError(f"Value is not broadcastable with batch_shape+event_shape: {shape} vs {expected}.")

    @staticmethod
    def _checked(t: Tensor, ok: Any, msg: str, deps: Sequence[Any], result: Tensor | None = None) -> Tensor:
        if isinstance(ok, constraints.Constraint):
            deps = (*deps, *_constraint_tensors(ok))
            ok = ok.check
        if values_fixed(t) and all(values_fixed(d) for d in deps if isinstance(d, Tensor)):
            vals = t.numpy()
            if not np.all(np.asarray(ok(vals))):
                raise ValueError(f"{msg}:\n{vals}")
            return t if result is None else result
        return _check_traced(t if result is None else result, ok(t), msg)

    def _check_constraint(self, name: str, t: Tensor, constraint: constraints.Constraint | None = None) -> Tensor:
        """The parameter check against `arg_constraints[name]` (or `constraint`); returns the (checked) tensor."""
        c = self.arg_constraints[name] if constraint is None else constraint
        return self._check(name, t, c, repr(c))

    def _validate_sample(self, value: Any) -> Any:
        """torch's check of a `log_prob`/`cdf` value against `support`; returns the (checked) value."""
        if not self._validate_args or self.support is None or constraints.is_dependent(self.support):
            return value
        v = value if isinstance(value, Tensor) else ops.as_tensor(value)
        support = self.support
        # a traced bound (Binomial's total_count) is named by its parameter: its values are not known yet
        names = {id(t): k.lstrip("_") for k, t in vars(self).items() if isinstance(t, Tensor)}
        with constraints.bound_names(names):
            text = repr(support)
        return self._check_sample(v, support, text)

    def expand(self, batch_shape: Any, _instance: Any = None) -> Distribution:
        """This distribution with its parameters broadcast to `batch_shape` (torch's expand: the new
        batch dims repeat the old parameters; nothing is copied)."""
        shape = _shape(batch_shape)
        new = copy.copy(self)
        for name, k in self._expand_params.items():
            t = self.__dict__.get(name)
            if isinstance(t, Tensor):
                setattr(new, name, ops.broadcast_to(t, shape + (t.shape[t.ndim - k:] if k else ())))
        for name in self._expand_dists:
            setattr(new, name, getattr(self, name).expand(shape))
        new._batch_shape = shape
        return new

    def sample(self, sample_shape: Any = ()) -> Tensor:
        """A draw of shape sample_shape + batch_shape + event_shape, without gradient."""
        return ops.stop_gradient(self.rsample(sample_shape))

    def rsample(self, sample_shape: Any = ()) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no reparameterized sampling (rsample); use sample")

    def sample_n(self, n: int) -> Tensor:
        return self.sample((n,))

    def log_prob(self, value: Any) -> Tensor:
        raise NotImplementedError

    def entropy(self) -> Tensor:
        raise NotImplementedError

    def cdf(self, value: Any) -> Tensor:
        raise NotImplementedError

    def icdf(self, value: Any) -> Tensor:
        raise NotImplementedError

    def enumerate_support(self, expand: bool = True) -> Tensor:
        raise NotImplementedError

    def perplexity(self) -> Tensor:
        return ops.exp(self.entropy())

    @property
    def mean(self) -> Tensor:
        raise NotImplementedError

    @property
    def mode(self) -> Tensor:
        raise NotImplementedError

    @property
    def variance(self) -> Tensor:
        raise NotImplementedError

    @property
    def stddev(self) -> Tensor:
        return ops.sqrt(self.variance)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(batch_shape={self._batch_shape}, event_shape={self._event_shape})"


class ExponentialFamily(Distribution):
    """The base class of exponential families, p(x; theta) = exp(<t(x), theta> - F(theta) + k(x)), as
    torch's: a subclass gives its natural parameters theta (`_natural_params`), the log normalizer F
    (`_log_normalizer`) and E[k(x)] (`_mean_carrier_measure`), and `entropy` is then the Bregman form
    F(theta) - <theta, grad F(theta)> - E[k(x)] (with `kl_divergence` between two members of one family
    likewise). grad F comes from `av.grad`; unlike torch's (which detaches the natural parameters), the
    entropy stays differentiable in the distribution's parameters."""

    @property
    def _natural_params(self) -> tuple[Tensor, ...]:
        raise NotImplementedError

    def _log_normalizer(self, *natural_params: Tensor) -> Tensor:
        raise NotImplementedError

    @property
    def _mean_carrier_measure(self) -> Any:
        raise NotImplementedError

    def _log_normalizer_and_grads(self) -> tuple[list[Tensor], Tensor, tuple[Tensor, ...]]:
        from ..compiler import grad  # (imported late: the compiler imports this package)
        nparams = list(self._natural_params)
        fn = lambda *ps: ops.sum(self._log_normalizer(*ps))  # noqa: E731
        grads = grad(fn, argnums=tuple(range(len(nparams))))(*nparams)
        return nparams, self._log_normalizer(*nparams), grads

    def entropy(self) -> Tensor:
        nparams, lg_normal, grads = self._log_normalizer_and_grads()
        result = ops.sub(lg_normal, self._mean_carrier_measure)
        for p, g in zip(nparams, grads):
            result = ops.sub(result, ops.sum(ops.reshape(ops.mul(p, g), self._batch_shape + (-1,)), -1))
        return result


class Normal(ExponentialFamily):
    """Normal(loc, scale): Gaussians, reparameterized (`rsample` = loc + eps * scale)."""

    has_rsample = True
    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real
    _expand_params = {"loc": 0, "scale": 0}

    _mean_carrier_measure = 0

    @property
    def _natural_params(self) -> tuple[Tensor, Tensor]:
        var = ops.mul(self.scale, self.scale)
        return ops.div(self.loc, var), ops.mul(-0.5, ops.reciprocal(var))

    def _log_normalizer(self, x: Tensor, y: Tensor) -> Tensor:
        return ops.add(ops.div(ops.mul(-0.25, ops.mul(x, x)), y), ops.mul(0.5, ops.log(ops.div(-math.pi, y))))

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
    def stddev(self) -> Tensor:
        return self.scale

    @property
    def variance(self) -> Tensor:
        return ops.mul(self.scale, self.scale)

    def rsample(self, sample_shape: Any = ()) -> Tensor:
        eps = ops.randn(self._extended_shape(sample_shape), dtype=self.loc.dtype)
        return ops.add(self.loc, ops.mul(eps, self.scale))

    def log_prob(self, value: Any) -> Tensor:
        v = self._validate_sample(_param(value))  # (a NaN value gave NaN where torch refuses it)
        var = self.variance
        return ops.sub(ops.sub(ops.div(ops.neg(ops.mul(ops.sub(v, self.loc), ops.sub(v, self.loc))), ops.mul(var, 2.0)),
                               ops.log(self.scale)), math.log(math.sqrt(2 * math.pi)))

    def entropy(self) -> Tensor:
        return ops.add(0.5 + 0.5 * math.log(2 * math.pi), ops.log(self.scale))

    def cdf(self, value: Any) -> Tensor:
        v = self._validate_sample(_param(value))
        z = ops.div(ops.sub(v, self.loc), ops.mul(self.scale, math.sqrt(2)))
        return ops.mul(0.5, ops.add(1.0, ops.erf(z)))

    def icdf(self, value: Any) -> Tensor:
        return ops.add(self.loc, ops.mul(ops.mul(self.scale, ops.erfinv(ops.sub(ops.mul(_param(value), 2.0), 1.0))),
                                         math.sqrt(2)))


class Uniform(Distribution):
    """Uniform(low, high) on [low, high), reparameterized (`rsample` = low + u * (high - low))."""

    has_rsample = True
    arg_constraints = {"low": constraints.dependent(is_discrete=False, event_dim=0),
                       "high": constraints.dependent(is_discrete=False, event_dim=0)}
    _expand_params = {"low": 0, "high": 0}

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self) -> constraints.Constraint:
        return constraints.interval(self.low, self.high)

    def __init__(self, low: Any, high: Any, validate_args: bool | None = None) -> None:
        self.low, self.high = _broadcast_all(low, high)
        super().__init__(self.low.shape, (), validate_args)
        self.low = self._check("low", self.low, constraints.less_than(self.high), "LessThan(upper_bound=high)")

    @property
    def mean(self) -> Tensor:
        return ops.div(ops.add(self.high, self.low), 2.0)

    @property
    def mode(self) -> Tensor:
        return ops.mul(self.high, math.nan)

    @property
    def stddev(self) -> Tensor:
        return ops.div(ops.sub(self.high, self.low), 12 ** 0.5)

    @property
    def variance(self) -> Tensor:
        w = ops.sub(self.high, self.low)
        return ops.div(ops.mul(w, w), 12.0)

    def rsample(self, sample_shape: Any = ()) -> Tensor:
        u = ops.rand(self._extended_shape(sample_shape), dtype=self.low.dtype)
        return ops.add(self.low, ops.mul(u, ops.sub(self.high, self.low)))

    def log_prob(self, value: Any) -> Tensor:
        v = _param(value)
        inside = ops.cast(ops.logical_and(ops.le(self.low, v), ops.gt(self.high, v)), self.low.dtype)
        out = ops.sub(ops.log(inside), ops.log(ops.sub(self.high, self.low)))
        # (v enters only through comparisons: the result carries the check, so a gradient keeps it)
        return self._check_sample(v, constraints.interval(self.low, self.high), "Interval(low, high)", result=out)

    def entropy(self) -> Tensor:
        return ops.log(ops.sub(self.high, self.low))

    def cdf(self, value: Any) -> Tensor:
        v = self._check_sample(_param(value), constraints.interval(self.low, self.high),
                               "Interval(low, high)")  # as log_prob (and torch)
        return ops.clamp(ops.div(ops.sub(v, self.low), ops.sub(self.high, self.low)), 0.0, 1.0)

    def icdf(self, value: Any) -> Tensor:
        return ops.add(ops.mul(_param(value), ops.sub(self.high, self.low)), self.low)


def _one_of(name: str, probs: Any, logits: Any) -> None:
    if (probs is None) == (logits is None):
        raise ValueError("Either `probs` or `logits` must be specified, but not both.")


class Bernoulli(ExponentialFamily):
    """Bernoulli(probs=None, logits=None): 1 with probability `probs` (or sigmoid(logits)), else 0.
    Samples are floats of the parameter's dtype, as in torch."""

    arg_constraints = {"probs": constraints.unit_interval, "logits": constraints.real}
    support = constraints.boolean
    has_enumerate_support = True
    _expand_params = {"_param": 0}

    _mean_carrier_measure = 0

    @property
    def _natural_params(self) -> tuple[Tensor]:
        p = self.probs
        return (ops.sub(ops.log(p), ops.log1p(ops.neg(p))),)

    def _log_normalizer(self, x: Tensor) -> Tensor:
        return ops.log1p(ops.exp(x))

    def __init__(self, probs: Any = None, logits: Any = None, validate_args: bool | None = None) -> None:
        _one_of("Bernoulli", probs, logits)
        self._from_probs = probs is not None
        (p,) = _broadcast_all(probs if self._from_probs else logits)
        self._param = p
        super().__init__(p.shape, (), validate_args)
        self._param = self._check_constraint("probs" if self._from_probs else "logits", p)

    @property
    def probs(self) -> Tensor:
        return self._param if self._from_probs else ops.sigmoid(self._param)

    @property
    def logits(self) -> Tensor:
        if not self._from_probs:
            return self._param
        p = _clamp_probs(self._param)
        return ops.sub(ops.log(p), ops.log1p(ops.neg(p)))

    @property
    def mean(self) -> Tensor:
        return self.probs

    @property
    def mode(self) -> Tensor:
        p = self.probs
        return ops.where(ops.eq(p, 0.5), math.nan, ops.cast(ops.ge(p, 0.5), p.dtype))

    @property
    def variance(self) -> Tensor:
        p = self.probs
        return ops.mul(p, ops.sub(1.0, p))

    def sample(self, sample_shape: Any = ()) -> Tensor:
        p = ops.stop_gradient(self.probs)
        shape = self._extended_shape(sample_shape)
        u = ops.rand(shape, dtype=p.dtype)
        return ops.cast(ops.lt(u, ops.broadcast_to(p, shape)), p.dtype)

    def log_prob(self, value: Any) -> Tensor:
        v = _param(value)
        v = self._validate_sample(v)
        logits, v = _broadcast_all(self.logits, v)
        return ops.neg(_bce_with_logits(logits, v))

    def entropy(self) -> Tensor:
        return _bce_with_logits(self.logits, self.probs)

    def enumerate_support(self, expand: bool = True) -> Tensor:
        values = ops.reshape(ops.arange(2, dtype=self._param.dtype), (2,) + (1,) * len(self._batch_shape))
        return ops.broadcast_to(values, (2,) + self._batch_shape) if expand else values


class Categorical(Distribution):
    """Categorical(probs=None, logits=None): an index in [0, K) over the last dim of `probs`
    (normalized to sum to 1) or `logits` (normalized by logsumexp). Samples are int64."""

    arg_constraints = {"probs": constraints.simplex, "logits": constraints.real_vector}
    has_enumerate_support = True
    _expand_params = {"_param": 1}

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self) -> constraints.Constraint:
        return constraints.integer_interval(0, self._num_events - 1)

    def __init__(self, probs: Any = None, logits: Any = None, validate_args: bool | None = None) -> None:
        _one_of("Categorical", probs, logits)
        self._from_probs = probs is not None
        p = _param(probs if self._from_probs else logits)
        if p.ndim < 1:
            raise ValueError(f"`{'probs' if self._from_probs else 'logits'}` parameter must be at least "
                             "one-dimensional.")
        self._num_events = p.shape[-1]
        super().__init__(p.shape[:-1], (), validate_args)
        if self._from_probs:
            # torch checks the normalized probs: a row of zeros (nan after normalizing) is refused,
            # a row of all-negative weights normalizes to a simplex and is accepted
            self._param = ops.div(p, ops.sum(p, -1, keepdims=True))
            self._param = self._check_constraint("probs", self._param)
        else:
            self._param = ops.sub(p, ops.logsumexp(p, -1, keepdims=True))
            self._param = self._check_constraint("logits", self._param)  # (torch checks the normalized logits)

    @property
    def probs(self) -> Tensor:
        return self._param if self._from_probs else ops.softmax(self._param, -1)

    @property
    def logits(self) -> Tensor:
        return ops.log(_clamp_probs(self._param)) if self._from_probs else self._param

    @property
    def param_shape(self) -> tuple[int, ...]:
        return self._param.shape

    @property
    def mean(self) -> Tensor:
        return ops.full(self._extended_shape(), math.nan, self._param.dtype)

    @property
    def variance(self) -> Tensor:
        return ops.full(self._extended_shape(), math.nan, self._param.dtype)

    @property
    def mode(self) -> Tensor:
        return ops.argmax(self.probs, -1)

    def sample(self, sample_shape: Any = ()) -> Tensor:
        shape = _shape(sample_shape)
        n = max(math.prod(shape), 1)
        probs_2d = ops.reshape(ops.stop_gradient(self.probs), (-1, self._num_events))
        draws = ops.transpose(ops.multinomial(probs_2d, n, True))  # (n, batch)
        return ops.reshape(draws, self._extended_shape(shape))

    def log_prob(self, value: Any) -> Tensor:
        v = ops.as_tensor(value)
        v = self._validate_sample(v)
        v = ops.cast(v, dt.int64)
        shape = tuple(np.broadcast_shapes(v.shape, self._batch_shape))
        log_pmf = ops.broadcast_to(self.logits, shape + (self._num_events,))
        picked = ops.gather(log_pmf, -1, ops.expand_dims(ops.broadcast_to(v, shape), -1))
        return ops.reshape(picked, shape)

    def entropy(self) -> Tensor:
        low = float(np.finfo(self._param.dtype.np).min)
        logits = ops.clamp(self.logits, min=low)
        return ops.neg(ops.sum(ops.mul(logits, self.probs), -1))

    def enumerate_support(self, expand: bool = True) -> Tensor:
        """The values 0 .. K-1, shaped (K,) + (1,) * len(batch_shape) (broadcast over the batch by default)."""
        k = self._num_events
        values = ops.reshape(ops.arange(k), (k,) + (1,) * len(self._batch_shape))
        return ops.broadcast_to(values, (k,) + self._batch_shape) if expand else values


class OneHotCategorical(Distribution):
    """OneHotCategorical(probs=None, logits=None): a Categorical whose samples and values are
    one-hot vectors of length K (the event), floats of the parameter's dtype."""

    arg_constraints = {"probs": constraints.simplex, "logits": constraints.real_vector}
    support = constraints.one_hot
    has_enumerate_support = True
    _expand_dists = ("_categorical",)

    def __init__(self, probs: Any = None, logits: Any = None, validate_args: bool | None = None) -> None:
        self._categorical = Categorical(probs, logits, validate_args)
        k = self._categorical._num_events
        super().__init__(self._categorical.batch_shape, (k,), validate_args)

    @property
    def probs(self) -> Tensor:
        return self._categorical.probs

    @property
    def logits(self) -> Tensor:
        return self._categorical.logits

    @property
    def mean(self) -> Tensor:
        return self.probs

    @property
    def mode(self) -> Tensor:
        p = self.probs
        return ops.one_hot(ops.argmax(p, -1), p.shape[-1], p.dtype)

    @property
    def variance(self) -> Tensor:
        p = self.probs
        return ops.mul(p, ops.sub(1.0, p))

    def sample(self, sample_shape: Any = ()) -> Tensor:
        p = self._categorical._param
        return ops.one_hot(self._categorical.sample(sample_shape), self._event_shape[0], p.dtype)

    def log_prob(self, value: Any) -> Tensor:
        v = _param(value)
        v = self._validate_sample(v)
        return self._categorical.log_prob(ops.argmax(v, -1))

    def entropy(self) -> Tensor:
        return self._categorical.entropy()

    def enumerate_support(self, expand: bool = True) -> Tensor:
        k = self._event_shape[0]
        eye = ops.eye(k, dtype=self._categorical._param.dtype)
        values = ops.reshape(eye, (k,) + (1,) * len(self._batch_shape) + (k,))
        return ops.broadcast_to(values, (k,) + self._batch_shape + (k,)) if expand else values


# -- KL divergence ------------------------------------------------------------------------------------

_KL: dict[tuple[type, type], Callable[[Any, Any], Tensor]] = {}


class Independent(Distribution):
    """Independent(base, n): the last `n` batch dims of `base` read as event dims (a diagonal Gaussian
    over vectors: `Independent(Normal(loc, scale), 1)`), so log_prob and entropy sum over them."""

    def __init__(self, base_distribution: Distribution, reinterpreted_batch_ndims: int,
                 validate_args: bool | None = None) -> None:
        n, shape = int(reinterpreted_batch_ndims), base_distribution.batch_shape
        if n < 0:  # (torch slices with it: batch dims that are no longer the batch, and sums that mean nothing)
            raise ValueError(f"Expected reinterpreted_batch_ndims >= 0, actual {n}")
        if n > len(shape):
            raise ValueError(f"Expected reinterpreted_batch_ndims <= len(base_distribution.batch_shape), actual {n} "
                             f"vs {len(shape)}")
        self.base_dist, self.reinterpreted_batch_ndims = base_distribution, n
        self.has_rsample = base_distribution.has_rsample
        super().__init__(shape[:len(shape) - n], shape[len(shape) - n:] + base_distribution.event_shape,
                         validate_args)

    def _sum(self, t: Tensor) -> Tensor:
        n = self.reinterpreted_batch_ndims
        return ops.sum(t, list(range(t.ndim - n, t.ndim))) if n else t

    @property
    def support(self) -> Any:
        s, n = self.base_dist.support, self.reinterpreted_batch_ndims
        return constraints.independent(s, n) if n and s is not None else s

    def expand(self, batch_shape: Any, _instance: Any = None) -> Independent:
        shape = _shape(batch_shape)
        new = copy.copy(self)
        new.base_dist = self.base_dist.expand(shape + self._event_shape[:self.reinterpreted_batch_ndims])
        new._batch_shape = shape
        return new

    @property
    def has_enumerate_support(self) -> bool:  # type: ignore[override]
        return False if self.reinterpreted_batch_ndims else self.base_dist.has_enumerate_support

    @property
    def mean(self) -> Tensor:
        return self.base_dist.mean

    @property
    def mode(self) -> Tensor:
        return self.base_dist.mode

    @property
    def variance(self) -> Tensor:
        return self.base_dist.variance

    def sample(self, sample_shape: Any = ()) -> Tensor:
        return self.base_dist.sample(sample_shape)

    def rsample(self, sample_shape: Any = ()) -> Tensor:
        return self.base_dist.rsample(sample_shape)

    def log_prob(self, value: Any) -> Tensor:
        return self._sum(self.base_dist.log_prob(value))

    def entropy(self) -> Tensor:
        return self._sum(self.base_dist.entropy())


class MixtureSameFamily(Distribution):
    """MixtureSameFamily(mixture_distribution, component_distribution): a mixture of the k components
    that the rightmost batch dim of `component_distribution` indexes, weighted by the Categorical
    `mixture_distribution` (a mixture density network's `MixtureSameFamily(Categorical(logits=pi),
    Independent(Normal(mu, sigma), 1))`). log_prob is the logsumexp over components of their log_prob
    plus the log weights; `sample` draws a component per element and takes its draw (no gradient)."""

    def __init__(self, mixture_distribution: Categorical, component_distribution: Distribution,
                 validate_args: bool | None = None) -> None:
        if not isinstance(mixture_distribution, Categorical):
            raise ValueError(" The Mixture distribution needs to be an  instance of torch.distributions.Categorical")
        if not isinstance(component_distribution, Distribution):
            raise ValueError("The Component distribution needs to be an instance of torch.distributions.Distribution")
        mdbs, cdbs = mixture_distribution.batch_shape, component_distribution.batch_shape[:-1]
        for size1, size2 in zip(reversed(mdbs), reversed(cdbs)):
            if size1 != 1 and size2 != 1 and size1 != size2:
                raise ValueError(f"`mixture_distribution.batch_shape` ({mdbs}) is not compatible with "
                                 f"`component_distribution.batch_shape`({cdbs})")
        km, kc = mixture_distribution.logits.shape[-1], component_distribution.batch_shape[-1]
        if km != kc:
            raise ValueError(f"`mixture_distribution component` ({km}) does not equal "
                             f"`component_distribution.batch_shape[-1]` ({kc})")
        self._mixture_distribution, self._component_distribution = mixture_distribution, component_distribution
        self._num_component, self._event_ndims = km, len(component_distribution.event_shape)
        super().__init__(cdbs, component_distribution.event_shape, validate_args)

    @property
    def support(self) -> Any:
        return self._component_distribution.support

    def expand(self, batch_shape: Any, _instance: Any = None) -> MixtureSameFamily:
        shape = _shape(batch_shape)
        new = copy.copy(self)
        new._component_distribution = self._component_distribution.expand(shape + (self._num_component,))
        new._mixture_distribution = self._mixture_distribution.expand(shape)
        new._batch_shape = shape
        return new

    @property
    def mixture_distribution(self) -> Categorical:
        return self._mixture_distribution

    @property
    def component_distribution(self) -> Distribution:
        return self._component_distribution

    def _pad(self, x: Tensor) -> Tensor:
        return ops.expand_dims(x, -1 - self._event_ndims)

    def _pad_mixture_dimensions(self, x: Tensor) -> Tensor:
        cat_batch_ndims = len(self._mixture_distribution.batch_shape)
        pad_ndims = 0 if cat_batch_ndims == 1 else len(self.batch_shape) - cat_batch_ndims
        return ops.reshape(x, x.shape[:-1] + (1,) * pad_ndims + x.shape[-1:] + (1,) * self._event_ndims)

    @property
    def mean(self) -> Tensor:
        probs = self._pad_mixture_dimensions(self._mixture_distribution.probs)
        return ops.sum(ops.mul(probs, self._component_distribution.mean), -1 - self._event_ndims)

    @property
    def variance(self) -> Tensor:
        """The law of total variance: E[Var(Y|X)] + Var(E[Y|X])."""
        probs = self._pad_mixture_dimensions(self._mixture_distribution.probs)
        comp = self._component_distribution
        mean_cond_var = ops.sum(ops.mul(probs, comp.variance), -1 - self._event_ndims)
        dev = ops.pow(ops.sub(comp.mean, self._pad(self.mean)), 2.0)
        return ops.add(mean_cond_var, ops.sum(ops.mul(probs, dev), -1 - self._event_ndims))

    def cdf(self, value: Any) -> Tensor:
        cdf_x = self._component_distribution.cdf(self._pad(_param(value)))
        return ops.sum(ops.mul(cdf_x, self._mixture_distribution.probs), -1)

    def log_prob(self, value: Any) -> Tensor:
        log_prob_x = self._component_distribution.log_prob(self._pad(_param(value)))  # [S, B, k]
        log_mix_prob = ops.log_softmax(self._mixture_distribution.logits, -1)  # [B, k]
        return ops.logsumexp(ops.add(log_prob_x, log_mix_prob), -1)  # [S, B]

    def sample(self, sample_shape: Any = ()) -> Tensor:
        shape = _shape(sample_shape)
        gather_dim = len(shape) + len(self.batch_shape)
        mix_sample = self._mixture_distribution.sample(shape)  # [S, B]
        comp_samples = ops.stop_gradient(self._component_distribution.sample(shape))  # [S, B, k, E]
        idx = ops.reshape(mix_sample, mix_sample.shape + (1,) * (self._event_ndims + 1))
        idx = ops.broadcast_to(idx, comp_samples.shape[:gather_dim] + (1,) + self.event_shape)
        return ops.squeeze(ops.gather(comp_samples, gather_dim, idx), gather_dim)

    def __repr__(self) -> str:
        return f"MixtureSameFamily(\n  {self._mixture_distribution},\n  {self._component_distribution})"


def _cholesky(a: Tensor) -> Tensor:
    return linalg.cholesky(a)


def _tri_solve(lower: Tensor, b: Tensor) -> Tensor:
    return linalg.solve_triangular(lower, b, upper=False)


class MultivariateNormal(Distribution):
    """MultivariateNormal(loc, covariance_matrix= | precision_matrix= | scale_tril=): correlated
    Gaussians over vectors, through the lower Cholesky factor of the covariance, as torch's;
    reparameterized (`rsample` = loc + scale_tril @ eps)."""

    has_rsample = True
    arg_constraints = {"loc": constraints.real_vector, "covariance_matrix": constraints.positive_definite,
                       "precision_matrix": constraints.positive_definite, "scale_tril": constraints.lower_cholesky}
    support = constraints.real_vector
    _expand_params = {"loc": 1}

    def __init__(self, loc: Any, covariance_matrix: Any = None, precision_matrix: Any = None, scale_tril: Any = None,
                 validate_args: bool | None = None) -> None:
        if (covariance_matrix is not None) + (precision_matrix is not None) + (scale_tril is not None) != 1:
            raise ValueError("Exactly one of covariance_matrix or precision_matrix or scale_tril may be specified.")
        loc = _param(loc)
        if loc.ndim < 1:
            raise ValueError("loc must be at least one-dimensional.")
        given = _param(next(m for m in (covariance_matrix, precision_matrix, scale_tril) if m is not None))
        if given.ndim < 2:
            name = ("covariance_matrix" if covariance_matrix is not None else
                    "precision_matrix" if precision_matrix is not None else "scale_tril")
            raise ValueError(f"{name} matrix must be at least two-dimensional, with optional leading batch dimensions")
        batch = tuple(np.broadcast_shapes(given.shape[:-2], loc.shape[:-1]))
        k = loc.shape[-1]
        super().__init__(batch, (k,), validate_args)
        loc = self._check_constraint("loc", loc)
        if scale_tril is not None:
            tril = self._check_constraint("scale_tril", given)
        else:
            # torch's ValueError names the matrix and the constraint (its cholesky would raise a LinAlgError
            # only with validate_args=False): a traced matrix is checked symmetric with a Cholesky factor
            # before the factorization reads it
            name = "covariance_matrix" if covariance_matrix is not None else "precision_matrix"
            given = self._check_constraint(name, given)
            tril = _cholesky(given if covariance_matrix is not None else ops.inverse(given))
        self.loc = ops.broadcast_to(loc, batch + (k,))
        self._unbroadcasted_scale_tril = tril

    @property
    def scale_tril(self) -> Tensor:
        return ops.broadcast_to(self._unbroadcasted_scale_tril, self._batch_shape + self._event_shape * 2)

    @property
    def covariance_matrix(self) -> Tensor:
        lt = self._unbroadcasted_scale_tril
        return ops.broadcast_to(ops.matmul(lt, ops.swapaxes(lt, -1, -2)), self._batch_shape + self._event_shape * 2)

    @property
    def precision_matrix(self) -> Tensor:
        return ops.inverse(self.covariance_matrix)

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def mode(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        lt = self._unbroadcasted_scale_tril
        return ops.broadcast_to(ops.sum(ops.mul(lt, lt), -1), self._batch_shape + self._event_shape)

    def _half_log_det(self) -> Tensor:
        return ops.sum(ops.log(ops.diagonal(self._unbroadcasted_scale_tril, 0, -2, -1)), -1)

    def rsample(self, sample_shape: Any = ()) -> Tensor:
        eps = ops.randn(self._extended_shape(sample_shape), dtype=self.loc.dtype)
        return ops.add(self.loc, ops.squeeze(ops.matmul(self._unbroadcasted_scale_tril, ops.expand_dims(eps, -1)), -1))

    def log_prob(self, value: Any) -> Tensor:
        diff = ops.sub(self._validate_sample(_param(value)), self.loc)
        k = self._event_shape[0]
        lt = ops.broadcast_to(self._unbroadcasted_scale_tril, diff.shape[:-1] + (k, k))
        m = ops.sum(ops.square(ops.squeeze(_tri_solve(lt, ops.expand_dims(diff, -1)), -1)), -1)
        return ops.sub(ops.mul(-0.5, ops.add(m, k * math.log(2 * math.pi))), self._half_log_det())

    def entropy(self) -> Tensor:
        h = ops.add(0.5 * self._event_shape[0] * (1.0 + math.log(2 * math.pi)), self._half_log_det())
        return ops.broadcast_to(h, self._batch_shape)


def register_kl(type_p: type, type_q: type) -> Callable:
    """Decorator: `@register_kl(P, Q) def kl(p, q): ...` makes kl_divergence(p, q) use it."""
    def deco(fn: Callable[[Any, Any], Tensor]) -> Callable[[Any, Any], Tensor]:
        _KL[(type_p, type_q)] = fn
        return fn
    return deco


def kl_divergence(p: Distribution, q: Distribution) -> Tensor:
    """KL(p || q), batched, from the rule registered for the closest pair of classes."""
    best, rank = None, None
    for (tp, tq), fn in _KL.items():
        if isinstance(p, tp) and isinstance(q, tq):
            r = (type(p).__mro__.index(tp), type(q).__mro__.index(tq))
            if rank is None or r < rank:
                best, rank = fn, r
    if best is None:
        raise NotImplementedError(f"No KL(p || q) is implemented for p = {type(p).__name__}, q = {type(q).__name__}")
    return best(p, q)


@register_kl(Categorical, Categorical)
def _kl_categorical(p: Categorical, q: Categorical) -> Tensor:
    t = ops.mul(p.probs, ops.sub(p.logits, q.logits))
    t = ops.where(ops.eq(ops.broadcast_to(q.probs, t.shape), 0.0), math.inf, t)
    t = ops.where(ops.eq(ops.broadcast_to(p.probs, t.shape), 0.0), 0.0, t)
    return ops.sum(t, -1)


@register_kl(OneHotCategorical, OneHotCategorical)
def _kl_onehot(p: OneHotCategorical, q: OneHotCategorical) -> Tensor:
    return _kl_categorical(p._categorical, q._categorical)


@register_kl(Normal, Normal)
def _kl_normal(p: Normal, q: Normal) -> Tensor:
    ratio = ops.div(p.scale, q.scale)
    var_ratio = ops.mul(ratio, ratio)
    d = ops.div(ops.sub(p.loc, q.loc), q.scale)
    return ops.mul(0.5, ops.sub(ops.sub(ops.add(var_ratio, ops.mul(d, d)), 1.0), ops.log(var_ratio)))


@register_kl(Bernoulli, Bernoulli)
def _kl_bernoulli(p: Bernoulli, q: Bernoulli) -> Tensor:
    pp, qp = p.probs, q.probs
    t1 = ops.mul(pp, ops.sub(_softplus(ops.neg(q.logits)), _softplus(ops.neg(p.logits))))
    t1 = ops.where(ops.eq(pp, 0.0), 0.0, ops.where(ops.eq(qp, 0.0), math.inf, t1))
    t2 = ops.mul(ops.sub(1.0, pp), ops.sub(_softplus(q.logits), _softplus(p.logits)))
    t2 = ops.where(ops.eq(pp, 1.0), 0.0, ops.where(ops.eq(qp, 1.0), math.inf, t2))
    return ops.add(t1, t2)


@register_kl(Uniform, Uniform)
def _kl_uniform(p: Uniform, q: Uniform) -> Tensor:
    result = ops.log(ops.div(ops.sub(q.high, q.low), ops.sub(p.high, p.low)))
    outside = ops.logical_or(ops.gt(q.low, p.low), ops.lt(q.high, p.high))
    return ops.where(outside, math.inf, result)


@register_kl(Independent, Independent)
def _kl_independent(p: Independent, q: Independent) -> Tensor:
    if p.reinterpreted_batch_ndims != q.reinterpreted_batch_ndims:
        raise NotImplementedError("KL(p || q) of Independent distributions over different event dims")
    return p._sum(kl_divergence(p.base_dist, q.base_dist))


@register_kl(MultivariateNormal, MultivariateNormal)
def _kl_mvn(p: MultivariateNormal, q: MultivariateNormal) -> Tensor:
    """0.5 (tr(Sq^-1 Sp) + |Lq^-1 (mu_q - mu_p)|^2 - k) + log|Lq| - log|Lp|, through triangular solves."""
    k = p.event_shape[0]
    shape = tuple(np.broadcast_shapes(p.batch_shape, q.batch_shape))
    lq = ops.broadcast_to(q._unbroadcasted_scale_tril, shape + (k, k))
    lp = ops.broadcast_to(p._unbroadcasted_scale_tril, shape + (k, k))
    tr = ops.sum(ops.square(_tri_solve(lq, lp)), [-2, -1])
    d = ops.expand_dims(ops.sub(ops.broadcast_to(q.loc, shape + (k,)), ops.broadcast_to(p.loc, shape + (k,))), -1)
    maha = ops.sum(ops.square(_tri_solve(lq, d)), [-2, -1])
    return ops.add(ops.mul(0.5, ops.sub(ops.add(tr, maha), float(k))), ops.sub(q._half_log_det(), p._half_log_det()))

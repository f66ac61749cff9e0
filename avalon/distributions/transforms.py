"""`avalon.distributions.transforms`: torch.distributions.transforms under torch's names.

A transform is an invertible (or, for `AbsTransform` and `SoftmaxTransform`, not) map y = t(x) with
`t.inv` (its inverse, itself a transform), `log_abs_det_jacobian(x, y)`, `sign`, `domain` and
`codomain` constraints and the shape maps `forward_shape` / `inverse_shape`. `TransformedDistribution`
pushes a base distribution through a list of them: SAC's squashed Gaussian is
`TransformedDistribution(Normal(mu, std), [TanhTransform(cache_size=1)])`. With `cache_size=1` a
transform remembers its last (x, y) pair, so `log_prob` of the sample it just made inverts nothing
(tanh's inverse at +-1 would be infinite). Everything is written with Avalon's ops: it traces,
compiles and differentiates.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import ops
from ..tensor import Tensor
from . import constraints
from .core import _broadcast_all, _softplus

__all__ = ["AbsTransform", "AffineTransform", "CatTransform", "ComposeTransform", "CorrCholeskyTransform",
           "CumulativeDistributionTransform", "ExpTransform", "IndependentTransform", "LowerCholeskyTransform",
           "PositiveDefiniteTransform", "PowerTransform", "ReshapeTransform", "SigmoidTransform", "SoftmaxTransform",
           "SoftplusTransform", "StackTransform", "StickBreakingTransform", "TanhTransform", "Transform",
           "identity_transform"]


def _sum_rightmost(value: Any, dim: int) -> Any:
    """Sum over the rightmost `dim` dims (nothing when dim is 0)."""
    if dim == 0 or not isinstance(value, Tensor):
        return value
    return ops.sum(value, list(range(value.ndim - dim, value.ndim)))


def _same(a: Any, b: Any) -> bool:
    """torch's `(a == b).all()` for numbers or tensors of known values (a traced one: only itself)."""
    if a is b:
        return True
    try:
        return bool(np.all((a.numpy() if isinstance(a, Tensor) else np.asarray(a))
                           == (b.numpy() if isinstance(b, Tensor) else np.asarray(b))))
    except Exception:
        return False


def _shape_of(x: Any) -> tuple[int, ...]:
    return tuple(x.shape) if isinstance(x, Tensor) else ()


class Transform:
    """y = t(x), invertible where `bijective`: `t(x)`, `t.inv(y)`, `t.log_abs_det_jacobian(x, y)`."""

    bijective = False
    domain: Any = constraints.real
    codomain: Any = constraints.real

    def __init__(self, cache_size: int = 0) -> None:
        if cache_size not in (0, 1):
            raise ValueError("cache_size must be 0 or 1")
        self._cache_size = cache_size
        self._inv: Transform | None = None
        self._cached_x_y: tuple[Any, Any] = (None, None)

    @property
    def event_dim(self) -> int:
        if self.domain.event_dim == self.codomain.event_dim:
            return self.domain.event_dim
        raise ValueError("Please use either .domain.event_dim or .codomain.event_dim")

    @property
    def inv(self) -> Transform:
        """The inverse transform (made once and kept)."""
        inv = self._inv
        if inv is None:
            inv = _InverseTransform(self)
            self._inv = inv
        return inv

    @property
    def sign(self) -> Any:
        """+1 or -1 for a monotone increasing or decreasing transform (a tensor when it varies)."""
        raise NotImplementedError

    def with_cache(self, cache_size: int = 1) -> Transform:
        if self._cache_size == cache_size:
            return self
        if type(self).__init__ is Transform.__init__:
            return type(self)(cache_size=cache_size)
        raise NotImplementedError(f"{type(self)}.with_cache is not implemented")

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = object.__hash__

    def __call__(self, x: Any) -> Any:
        if self._cache_size == 0:
            return self._call(x)
        x_old, y_old = self._cached_x_y
        if x is x_old:
            return y_old
        y = self._call(x)
        self._cached_x_y = (x, y)
        return y

    def _inv_call(self, y: Any) -> Any:
        if self._cache_size == 0:
            return self._inverse(y)
        x_old, y_old = self._cached_x_y
        if y is y_old:
            return x_old
        x = self._inverse(y)
        self._cached_x_y = (x, y)
        return x

    def _call(self, x: Any) -> Any:
        raise NotImplementedError

    def _inverse(self, y: Any) -> Any:
        raise NotImplementedError

    def log_abs_det_jacobian(self, x: Any, y: Any) -> Tensor:
        raise NotImplementedError

    def forward_shape(self, shape: Any) -> tuple[int, ...]:
        return tuple(shape)

    def inverse_shape(self, shape: Any) -> tuple[int, ...]:
        return tuple(shape)

    def __repr__(self) -> str:
        return self.__class__.__name__ + "()"


class _InverseTransform(Transform):
    """`t.inv`: calls t's inverse; its jacobian is minus t's at (y, x)."""

    def __init__(self, transform: Transform) -> None:
        super().__init__(cache_size=transform._cache_size)
        self._inv = transform

    @property  # type: ignore[override]
    def domain(self) -> Any:
        return self._inv.codomain

    @property  # type: ignore[override]
    def codomain(self) -> Any:
        return self._inv.domain

    @property  # type: ignore[override]
    def bijective(self) -> bool:
        return self._inv.bijective

    @property
    def sign(self) -> Any:
        return self._inv.sign

    @property
    def inv(self) -> Transform:
        return self._inv

    def with_cache(self, cache_size: int = 1) -> Transform:
        return self.inv.with_cache(cache_size).inv

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _InverseTransform) and self._inv == other._inv

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self._inv!r})"

    def __call__(self, x: Any) -> Any:
        return self._inv._inv_call(x)

    def log_abs_det_jacobian(self, x: Any, y: Any) -> Tensor:
        return ops.neg(self._inv.log_abs_det_jacobian(y, x))

    def forward_shape(self, shape: Any) -> tuple[int, ...]:
        return self._inv.inverse_shape(shape)

    def inverse_shape(self, shape: Any) -> tuple[int, ...]:
        return self._inv.forward_shape(shape)


class ComposeTransform(Transform):
    """The transforms `parts` applied in order; its jacobian sums theirs over the right event dims."""

    def __init__(self, parts: list[Transform], cache_size: int = 0) -> None:
        if cache_size:
            parts = [part.with_cache(cache_size) for part in parts]
        super().__init__(cache_size=cache_size)
        self.parts = list(parts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ComposeTransform) and self.parts == other.parts

    __hash__ = object.__hash__

    @property  # type: ignore[override]
    def domain(self) -> Any:
        if not self.parts:
            return constraints.real
        domain = self.parts[0].domain
        event_dim = self.parts[-1].codomain.event_dim
        for part in reversed(self.parts):
            event_dim += part.domain.event_dim - part.codomain.event_dim
            event_dim = max(event_dim, part.domain.event_dim)
        return constraints.independent(domain, event_dim - domain.event_dim) if event_dim > domain.event_dim \
            else domain

    @property  # type: ignore[override]
    def codomain(self) -> Any:
        if not self.parts:
            return constraints.real
        codomain = self.parts[-1].codomain
        event_dim = self.parts[0].domain.event_dim
        for part in self.parts:
            event_dim += part.codomain.event_dim - part.domain.event_dim
            event_dim = max(event_dim, part.codomain.event_dim)
        return constraints.independent(codomain, event_dim - codomain.event_dim) \
            if event_dim > codomain.event_dim else codomain

    @property  # type: ignore[override]
    def bijective(self) -> bool:
        return all(p.bijective for p in self.parts)

    @property
    def sign(self) -> Any:
        sign: Any = 1
        for p in self.parts:
            sign = sign * p.sign
        return sign

    @property
    def inv(self) -> Transform:
        inv = self._inv
        if inv is None:
            inv = ComposeTransform([p.inv for p in reversed(self.parts)])
            self._inv = inv
            inv._inv = self
        return inv

    def with_cache(self, cache_size: int = 1) -> Transform:
        if self._cache_size == cache_size:
            return self
        return ComposeTransform(self.parts, cache_size=cache_size)

    def __call__(self, x: Any) -> Any:
        for part in self.parts:
            x = part(x)
        return x

    def log_abs_det_jacobian(self, x: Any, y: Any) -> Tensor:
        if not self.parts:
            return ops.zeros_like(x)
        xs = [x]
        for part in self.parts[:-1]:
            xs.append(part(xs[-1]))
        xs.append(y)
        total: Any = None
        event_dim = self.domain.event_dim
        for part, a, b in zip(self.parts, xs[:-1], xs[1:]):
            term = _sum_rightmost(part.log_abs_det_jacobian(a, b), event_dim - part.domain.event_dim)
            total = term if total is None else ops.add(total, term)
            event_dim += part.codomain.event_dim - part.domain.event_dim
        return total

    def forward_shape(self, shape: Any) -> tuple[int, ...]:
        for part in self.parts:
            shape = part.forward_shape(shape)
        return tuple(shape)

    def inverse_shape(self, shape: Any) -> tuple[int, ...]:
        for part in reversed(self.parts):
            shape = part.inverse_shape(shape)
        return tuple(shape)

    def __repr__(self) -> str:
        return self.__class__.__name__ + "(\n    " + ",\n    ".join(repr(p) for p in self.parts) + "\n)"


identity_transform = ComposeTransform([])


class IndependentTransform(Transform):
    """`base_transform` with its rightmost `reinterpreted_batch_ndims` dims read as event dims (the
    jacobian is summed over them)."""

    def __init__(self, base_transform: Transform, reinterpreted_batch_ndims: int, cache_size: int = 0) -> None:
        super().__init__(cache_size=cache_size)
        self.base_transform = base_transform.with_cache(cache_size)
        self.reinterpreted_batch_ndims = int(reinterpreted_batch_ndims)

    def with_cache(self, cache_size: int = 1) -> Transform:
        if self._cache_size == cache_size:
            return self
        return IndependentTransform(self.base_transform, self.reinterpreted_batch_ndims, cache_size=cache_size)

    @property  # type: ignore[override]
    def domain(self) -> Any:
        return constraints.independent(self.base_transform.domain, self.reinterpreted_batch_ndims)

    @property  # type: ignore[override]
    def codomain(self) -> Any:
        return constraints.independent(self.base_transform.codomain, self.reinterpreted_batch_ndims)

    @property  # type: ignore[override]
    def bijective(self) -> bool:
        return self.base_transform.bijective

    @property
    def sign(self) -> Any:
        return self.base_transform.sign

    def _call(self, x: Any) -> Any:
        if x.ndim < self.domain.event_dim:
            raise ValueError("Too few dimensions on input")
        return self.base_transform(x)

    def _inverse(self, y: Any) -> Any:
        if y.ndim < self.codomain.event_dim:
            raise ValueError("Too few dimensions on input")
        return self.base_transform.inv(y)

    def log_abs_det_jacobian(self, x: Any, y: Any) -> Tensor:
        return _sum_rightmost(self.base_transform.log_abs_det_jacobian(x, y), self.reinterpreted_batch_ndims)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.base_transform!r}, {self.reinterpreted_batch_ndims})"

    def forward_shape(self, shape: Any) -> tuple[int, ...]:
        return self.base_transform.forward_shape(shape)

    def inverse_shape(self, shape: Any) -> tuple[int, ...]:
        return self.base_transform.inverse_shape(shape)


class ReshapeTransform(Transform):
    """The rightmost dims of shape `in_shape` reshaped to `out_shape` (jacobian zero)."""

    bijective = True

    def __init__(self, in_shape: Any, out_shape: Any, cache_size: int = 0) -> None:
        self.in_shape, self.out_shape = tuple(int(s) for s in in_shape), tuple(int(s) for s in out_shape)
        if math.prod(self.in_shape) != math.prod(self.out_shape):
            raise ValueError("in_shape, out_shape have different numbers of elements")
        super().__init__(cache_size=cache_size)

    @property  # type: ignore[override]
    def domain(self) -> Any:
        return constraints.independent(constraints.real, len(self.in_shape))

    @property  # type: ignore[override]
    def codomain(self) -> Any:
        return constraints.independent(constraints.real, len(self.out_shape))

    def with_cache(self, cache_size: int = 1) -> Transform:
        if self._cache_size == cache_size:
            return self
        return ReshapeTransform(self.in_shape, self.out_shape, cache_size=cache_size)

    def _call(self, x: Any) -> Any:
        return ops.reshape(x, x.shape[:x.ndim - len(self.in_shape)] + self.out_shape)

    def _inverse(self, y: Any) -> Any:
        return ops.reshape(y, y.shape[:y.ndim - len(self.out_shape)] + self.in_shape)

    def log_abs_det_jacobian(self, x: Any, y: Any) -> Tensor:
        return ops.zeros(x.shape[:x.ndim - len(self.in_shape)], dtype=x.dtype)

    def forward_shape(self, shape: Any) -> tuple[int, ...]:
        shape = tuple(shape)
        if len(shape) < len(self.in_shape):
            raise ValueError("Too few dimensions on input")
        cut = len(shape) - len(self.in_shape)
        if shape[cut:] != self.in_shape:
            raise ValueError(f"Shape mismatch: expected {shape[cut:]} but got {self.in_shape}")
        return shape[:cut] + self.out_shape

    def inverse_shape(self, shape: Any) -> tuple[int, ...]:
        shape = tuple(shape)
        if len(shape) < len(self.out_shape):
            raise ValueError("Too few dimensions on input")
        cut = len(shape) - len(self.out_shape)
        if shape[cut:] != self.out_shape:
            raise ValueError(f"Shape mismatch: expected {shape[cut:]} but got {self.out_shape}")
        return shape[:cut] + self.in_shape


class ExpTransform(Transform):
    """y = exp(x)."""

    domain, codomain, bijective, sign = constraints.real, constraints.positive, True, +1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExpTransform)

    __hash__ = object.__hash__

    def _call(self, x: Any) -> Any:
        return ops.exp(x)

    def _inverse(self, y: Any) -> Any:
        return ops.log(y)

    def log_abs_det_jacobian(self, x: Any, y: Any) -> Tensor:
        return x


class PowerTransform(Transform):
    """y = x ** exponent, on positive x."""

    domain, codomain, bijective = constraints.positive, constraints.positive, True

    def __init__(self, exponent: Any, cache_size: int = 0) -> None:
        super().__init__(cache_size=cache_size)
        (self.exponent,) = _broadcast_all(exponent)

    def with_cache(self, cache_size: int = 1) -> Transform:
        if self._cache_size == cache_size:
            return self
        return PowerTransform(self.exponent, cache_size=cache_size)

    @property
    def sign(self) -> Any:
        return ops.sign(self.exponent)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PowerTransform):
            return False
        return _same(self.exponent, other.exponent)

    __hash__ = object.__hash__

    def _call(self, x: Any) -> Any:
        return ops.pow(x, self.exponent)

    def _inverse(self, y: Any) -> Any:
        return ops.pow(y, ops.reciprocal(self.exponent))

    def log_abs_det_jacobian(self, x: Any, y: Any) -> Tensor:
        return ops.log(ops.abs(ops.div(ops.mul(self.exponent, y), x)))

    def forward_shape(self, shape: Any) -> tuple[int, ...]:
        return tuple(np.broadcast_shapes(tuple(shape), self.exponent.shape))

    def inverse_shape(self, shape: Any) -> tuple[int, ...]:
        return tuple(np.broadcast_shapes(tuple(shape), self.exponent.shape))


def _clipped_sigmoid(x: Tensor) -> Tensor:
    finfo = np.finfo(x.dtype.np)
    return ops.clamp(ops.sigmoid(x), float(finfo.tiny), 1.0 - float(finfo.eps))


class SigmoidTransform(Transform):
    """y = sigmoid(x), kept in [tiny, 1 - eps] as torch's."""

    domain, codomain, bijective, sign = constraints.real, constraints.unit_interval, True, +1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SigmoidTransform)

    __hash__ = object.__hash__

    def _call(self, x: Any) -> Any:
        return _clipped_sigmoid(x)

    def _inverse(self, y: Any) -> Any:
        finfo = np.finfo(y.dtype.np)
        y = ops.clamp(y, float(finfo.tiny), 1.0 - float(finfo.eps))
        return ops.sub(ops.log(y), ops.log1p(ops.neg(y)))

    def log_abs_det_jacobian(self, x: Any, y: Any) -> Tensor:
        return ops.sub(ops.neg(_softplus(ops.neg(x))), _softplus(x))


class SoftplusTransform(Transform):
    """y = log(1 + exp(x))."""

    domain, codomain, bijective, sign = constraints.real, constraints.positive, True, +1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SoftplusTransform)

    __hash__ = object.__hash__

    def _call(self, x: Any) -> Any:
        return _softplus(x)

    def _inverse(self, y: Any) -> Any:
        return ops.add(ops.log(ops.neg(ops.expm1(ops.neg(y)))), y)

    def log_abs_det_jacobian(self, x: Any, y: Any) -> Tensor:
        return ops.neg(_softplus(ops.neg(x)))


class TanhTransform(Transform):
    """y = tanh(x), with the stable log|dy/dx| = 2 (log 2 - x - softplus(-2x)). Give it
    `cache_size=1` when log_prob is taken of its own samples (SAC): atanh(+-1) is infinite."""

    domain, codomain, bijective, sign = constraints.real, constraints.interval(-1.0, 1.0), True, +1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TanhTransform)

    __hash__ = object.__hash__

    def _call(self, x: Any) -> Any:
        return ops.tanh(x)

    def _inverse(self, y: Any) -> Any:
        return ops.atanh(y)

    def log_abs_det_jacobian(self, x: Any, y: Any) -> Tensor:
        return ops.mul(2.0, ops.sub(ops.sub(math.log(2.0), x), _softplus(ops.mul(-2.0, x))))


class AbsTransform(Transform):
    """y = |x| (not invertible: the inverse returns y)."""

    domain, codomain = constraints.real, constraints.positive

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AbsTransform)

    __hash__ = object.__hash__

    def _call(self, x: Any) -> Any:
        return ops.abs(x)

    def _inverse(self, y: Any) -> Any:
        return y


class AffineTransform(Transform):
    """y = loc + scale * x, over `event_dim` rightmost dims (their log|scale| are summed)."""

    bijective = True

    def __init__(self, loc: Any, scale: Any, event_dim: int = 0, cache_size: int = 0) -> None:
        super().__init__(cache_size=cache_size)
        self.loc, self.scale, self._event_dim = loc, scale, int(event_dim)

    @property
    def event_dim(self) -> int:
        return self._event_dim

    @property  # type: ignore[override]
    def domain(self) -> Any:
        return constraints.real if self._event_dim == 0 else constraints.independent(constraints.real, self._event_dim)

    @property  # type: ignore[override]
    def codomain(self) -> Any:
        return self.domain

    def with_cache(self, cache_size: int = 1) -> Transform:
        if self._cache_size == cache_size:
            return self
        return AffineTransform(self.loc, self.scale, self._event_dim, cache_size=cache_size)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AffineTransform) and _same(self.loc, other.loc) and _same(self.scale, other.scale)

    __hash__ = object.__hash__

    @property
    def sign(self) -> Any:
        if isinstance(self.scale, (int, float)):
            return 1 if float(self.scale) > 0 else -1 if float(self.scale) < 0 else 0
        return ops.sign(self.scale)

    def _call(self, x: Any) -> Any:
        return ops.add(self.loc, ops.mul(self.scale, x))

    def _inverse(self, y: Any) -> Any:
        return ops.div(ops.sub(y, self.loc), self.scale)

    def log_abs_det_jacobian(self, x: Any, y: Any) -> Tensor:
        shape = tuple(x.shape)
        if isinstance(self.scale, (int, float)):
            result = ops.full(shape, math.log(abs(float(self.scale))), x.dtype)
        else:
            result = ops.log(ops.abs(self.scale))
        if self._event_dim:
            result = ops.sum(ops.reshape(result, result.shape[:result.ndim - self._event_dim] + (-1,)), -1)
            shape = shape[:len(shape) - self._event_dim]
        return ops.broadcast_to(result, shape)

    def forward_shape(self, shape: Any) -> tuple[int, ...]:
        return tuple(np.broadcast_shapes(tuple(shape), _shape_of(self.loc), _shape_of(self.scale)))

    def inverse_shape(self, shape: Any) -> tuple[int, ...]:
        return self.forward_shape(shape)


class SoftmaxTransform(Transform):
    """Vectors to the simplex by exp and normalizing (not bijective; the inverse is log)."""

    domain, codomain = constraints.real_vector, constraints.simplex

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SoftmaxTransform)

    __hash__ = object.__hash__

    def _call(self, x: Any) -> Any:
        probs = ops.exp(ops.sub(x, ops.amax(x, -1, keepdims=True)))
        return ops.div(probs, ops.sum(probs, -1, keepdims=True))

    def _inverse(self, y: Any) -> Any:
        return ops.log(y)

    def forward_shape(self, shape: Any) -> tuple[int, ...]:
        if len(shape) < 1:
            raise ValueError("Too few dimensions on input")
        return tuple(shape)

    def inverse_shape(self, shape: Any) -> tuple[int, ...]:
        if len(shape) < 1:
            raise ValueError("Too few dimensions on input")
        return tuple(shape)


def _stick_offset(k: int, x: Tensor) -> Tensor:
    """log(k - i) for i = 0 .. k-1: the offsets that make x = 0 the simplex's centre."""
    return ops.log(ops.sub(float(k), ops.arange(k, dtype=x.dtype)))


class StickBreakingTransform(Transform):
    """Vectors of length K - 1 to the simplex of length K by stick breaking (bijective)."""

    domain, codomain, bijective = constraints.real_vector, constraints.simplex, True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StickBreakingTransform)

    __hash__ = object.__hash__

    def _call(self, x: Any) -> Any:
        z = _clipped_sigmoid(ops.sub(x, _stick_offset(x.shape[-1], x)))
        z_cumprod = ops.cumprod(ops.sub(1.0, z), -1)
        pad = [(0, 0)] * (x.ndim - 1)
        return ops.mul(ops.pad(z, pad + [(0, 1)], 1.0), ops.pad(z_cumprod, pad + [(1, 0)], 1.0))

    def _inverse(self, y: Any) -> Any:
        k = y.shape[-1] - 1
        y_crop = ops.narrow(y, -1, 0, k)
        sf = ops.clamp(ops.sub(1.0, ops.cumsum(y_crop, -1)), min=float(np.finfo(y.dtype.np).tiny))
        return ops.add(ops.sub(ops.log(y_crop), ops.log(sf)), _stick_offset(k, y))

    def log_abs_det_jacobian(self, x: Any, y: Any) -> Tensor:
        x = ops.sub(x, _stick_offset(x.shape[-1], x))
        log_sigmoid = ops.neg(_softplus(ops.neg(x)))
        return ops.sum(ops.add(ops.add(ops.neg(x), log_sigmoid), ops.log(ops.narrow(y, -1, 0, y.shape[-1] - 1))), -1)

    def forward_shape(self, shape: Any) -> tuple[int, ...]:
        if len(shape) < 1:
            raise ValueError("Too few dimensions on input")
        return tuple(shape[:-1]) + (shape[-1] + 1,)

    def inverse_shape(self, shape: Any) -> tuple[int, ...]:
        if len(shape) < 1:
            raise ValueError("Too few dimensions on input")
        return tuple(shape[:-1]) + (shape[-1] - 1,)


class CumulativeDistributionTransform(Transform):
    """y = distribution.cdf(x) (to the unit interval); the jacobian is the density."""

    bijective, codomain, sign = True, constraints.unit_interval, +1

    def __init__(self, distribution: Any, cache_size: int = 0) -> None:
        super().__init__(cache_size=cache_size)
        self.distribution = distribution

    @property  # type: ignore[override]
    def domain(self) -> Any:
        return self.distribution.support

    def with_cache(self, cache_size: int = 1) -> Transform:
        if self._cache_size == cache_size:
            return self
        return type(self)(self.distribution, cache_size=cache_size)

    def _call(self, x: Any) -> Any:
        return self.distribution.cdf(x)

    def _inverse(self, y: Any) -> Any:
        return self.distribution.icdf(y)

    def log_abs_det_jacobian(self, x: Any, y: Any) -> Tensor:
        return self.distribution.log_prob(x)


def _tril_rows(n: int, diag: int) -> list[tuple[int, int]]:
    """(row, count) of the entries of an n x n matrix on or below diagonal `diag`, row by row."""
    return [(i, min(n, i + diag + 1)) for i in range(n) if i + diag + 1 > 0]


def tril_matrix_to_vec(mat: Tensor, diag: int = 0) -> Tensor:
    """torch.distributions.utils.tril_matrix_to_vec: the entries on and below diagonal `diag`, row by row
    (slices joined, so it traces with no index constant and differentiates)."""
    n = mat.shape[-1]
    if diag < -n or diag >= n:
        raise ValueError(f"diag ({diag}) provided is outside [{-n}, {n - 1}].")
    rows = [ops.narrow(ops.select(mat, -2, i), -1, 0, k) for i, k in _tril_rows(n, diag)]
    return ops.concat(rows, -1) if rows else ops.zeros(mat.shape[:-2] + (0,), dtype=mat.dtype)


def vec_to_tril_matrix(vec: Tensor, diag: int = 0) -> Tensor:
    """torch.distributions.utils.vec_to_tril_matrix: the D x D matrix with `vec` on and below diagonal
    `diag`, row by row, and zeros elsewhere (rows sliced from `vec` and padded)."""
    m = vec.shape[-1]
    n = (-(1 + 2 * diag) + ((1 + 2 * diag) ** 2 + 8 * m + 4 * abs(diag) * (diag + 1)) ** 0.5) / 2
    if round(n) - n > float(np.finfo(vec.dtype.np).eps):
        raise ValueError(f"The size of last dimension is {m} which cannot be expressed as the lower triangular part "
                         "of a square D x D matrix.")
    n = round(n)
    counts = dict(_tril_rows(n, diag))
    rows, start = [], 0
    lead = [(0, 0)] * (vec.ndim - 1)
    for i in range(n):
        k = counts.get(i, 0)
        row = ops.narrow(vec, -1, start, k) if k else ops.zeros(vec.shape[:-1] + (0,), dtype=vec.dtype)
        rows.append(ops.pad(row, lead + [(0, n - k)], 0.0))
        start += k
    return ops.stack(rows, -2)


class CorrCholeskyTransform(Transform):
    """Unconstrained vectors of length D(D-1)/2 to Cholesky factors of D x D correlation matrices (lower
    triangular, positive diagonal, unit rows), by a signed stick breaking of tanh(x) row by row, as
    torch's. `log_abs_det_jacobian` is that of x against the strictly lower part of y."""

    domain, bijective = constraints.real_vector, True
    codomain = constraints.corr_cholesky

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CorrCholeskyTransform)

    __hash__ = object.__hash__

    def _call(self, x: Any) -> Any:
        eps = float(np.finfo(x.dtype.np).eps)
        x = ops.clamp(ops.tanh(x), -1.0 + eps, 1.0 - eps)
        r = vec_to_tril_matrix(x, diag=-1)
        z1m_cumprod_sqrt = ops.cumprod(ops.sqrt(ops.sub(1.0, ops.mul(r, r))), -1)
        n = r.shape[-1]
        r = ops.add(r, ops.eye(n, dtype=r.dtype))
        pad = [(0, 0)] * (r.ndim - 1) + [(1, 0)]
        return ops.mul(r, ops.pad(ops.narrow(z1m_cumprod_sqrt, -1, 0, n - 1), pad, 1.0))

    def _inverse(self, y: Any) -> Any:
        n = y.shape[-1]
        y_cumsum = ops.sub(1.0, ops.cumsum(ops.mul(y, y), -1))
        pad = [(0, 0)] * (y.ndim - 1) + [(1, 0)]
        y_cumsum_shifted = ops.pad(ops.narrow(y_cumsum, -1, 0, n - 1), pad, 1.0)
        t = ops.div(tril_matrix_to_vec(y, diag=-1), ops.sqrt(tril_matrix_to_vec(y_cumsum_shifted, diag=-1)))
        return ops.div(ops.sub(ops.log1p(t), ops.log1p(ops.neg(t))), 2.0)

    def log_abs_det_jacobian(self, x: Any, y: Any) -> Tensor:
        y1m_cumsum = ops.sub(1.0, ops.cumsum(ops.mul(y, y), -1))
        stick_breaking_logdet = ops.mul(0.5, ops.sum(ops.log(tril_matrix_to_vec(y1m_cumsum, diag=-2)), -1))
        tanh_logdet = ops.mul(-2.0, ops.sum(ops.sub(ops.add(x, _softplus(ops.mul(-2.0, x))), math.log(2.0)), -1))
        return ops.add(stick_breaking_logdet, tanh_logdet)

    def forward_shape(self, shape: Any) -> tuple[int, ...]:
        if len(shape) < 1:
            raise ValueError("Too few dimensions on input")
        n = shape[-1]
        d = round((0.25 + 2 * n) ** 0.5 + 0.5)
        if d * (d - 1) // 2 != n:
            raise ValueError("Input is not a flattened lower-diagonal number")
        return tuple(shape[:-1]) + (d, d)

    def inverse_shape(self, shape: Any) -> tuple[int, ...]:
        if len(shape) < 2:
            raise ValueError("Too few dimensions on input")
        if shape[-2] != shape[-1]:
            raise ValueError("Input is not square")
        d = shape[-1]
        return tuple(shape[:-2]) + (d * (d - 1) // 2,)


def _lower_cholesky(x: Tensor) -> Tensor:
    return ops.add(ops.tril(x, -1), ops.diag_embed(ops.exp(ops.diagonal(x, 0, -2, -1))))


class LowerCholeskyTransform(Transform):
    """Unconstrained matrices to lower triangular ones with a positive diagonal: the strictly lower part
    kept, the diagonal exponentiated (not bijective and no log_abs_det_jacobian, as torch's)."""

    domain = constraints.independent(constraints.real, 2)
    codomain = constraints.lower_cholesky

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LowerCholeskyTransform)

    __hash__ = object.__hash__

    def _call(self, x: Any) -> Any:
        return _lower_cholesky(x)

    def _inverse(self, y: Any) -> Any:
        return ops.add(ops.tril(y, -1), ops.diag_embed(ops.log(ops.diagonal(y, 0, -2, -1))))


class PositiveDefiniteTransform(Transform):
    """Unconstrained matrices to positive definite ones, L L^T with L = LowerCholeskyTransform()(x); the
    inverse goes through the Cholesky factor (no log_abs_det_jacobian, as torch's)."""

    domain = constraints.independent(constraints.real, 2)
    codomain = constraints.positive_definite

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PositiveDefiniteTransform)

    __hash__ = object.__hash__

    def _call(self, x: Any) -> Any:
        low = _lower_cholesky(x)
        return ops.matmul(low, ops.swapaxes(low, -1, -2))

    def _inverse(self, y: Any) -> Any:
        return LowerCholeskyTransform().inv(ops.linalg.cholesky(y))


def _check_dim(dim: int, t: Tensor, length: int, what: str = "tensor") -> None:
    if not -t.ndim <= dim < t.ndim:
        raise AssertionError(f"dim {dim} out of range for {what} with {t.ndim} dimensions")
    if t.shape[dim] != length:
        raise AssertionError(f"x.size({dim}) = {t.shape[dim]} must equal length {length}")


class CatTransform(Transform):
    """The transforms `tseq` applied to consecutive pieces of `dim` (of lengths `lengths`, 1 each by
    default), the results joined as torch.cat joins them."""

    def __init__(self, tseq: Any, dim: int = 0, lengths: Any = None, cache_size: int = 0) -> None:
        if not all(isinstance(t, Transform) for t in tseq):
            raise AssertionError("All elements of tseq must be Transform instances")
        if cache_size:
            tseq = [t.with_cache(cache_size) for t in tseq]
        super().__init__(cache_size=cache_size)
        self.transforms = list(tseq)
        self.lengths = [1] * len(self.transforms) if lengths is None else [int(n) for n in lengths]
        if len(self.lengths) != len(self.transforms):
            raise AssertionError(f"lengths ({len(self.lengths)}) must match transforms ({len(self.transforms)})")
        self.dim = dim

    @property
    def event_dim(self) -> int:
        return max(t.event_dim for t in self.transforms)

    @property
    def length(self) -> int:
        return sum(self.lengths)

    def with_cache(self, cache_size: int = 1) -> Transform:
        if self._cache_size == cache_size:
            return self
        return CatTransform(self.transforms, self.dim, self.lengths, cache_size)

    def _pieces(self, t: Tensor) -> list[Tensor]:
        out, start = [], 0
        for n in self.lengths:
            out.append(ops.narrow(t, self.dim, start, n))
            start += n
        return out

    def _call(self, x: Any) -> Any:
        _check_dim(self.dim, x, self.length)
        return ops.concat([t(p) for t, p in zip(self.transforms, self._pieces(x))], self.dim)

    def _inverse(self, y: Any) -> Any:
        _check_dim(self.dim, y, self.length)
        return ops.concat([t.inv(p) for t, p in zip(self.transforms, self._pieces(y))], self.dim)

    def log_abs_det_jacobian(self, x: Any, y: Any) -> Tensor:
        _check_dim(self.dim, x, self.length, "x")
        _check_dim(self.dim, y, self.length, "y")
        event_dim = self.event_dim
        terms = []
        for t, xp, yp in zip(self.transforms, self._pieces(x), self._pieces(y)):
            term = t.log_abs_det_jacobian(xp, yp)
            if t.event_dim < event_dim:
                term = _sum_rightmost(term, event_dim - t.event_dim)
            terms.append(term)
        dim = self.dim - x.ndim if self.dim >= 0 else self.dim
        dim += event_dim
        if dim < 0:
            return ops.concat(terms, dim)
        total = terms[0]
        for term in terms[1:]:
            total = ops.add(total, term)
        return total

    @property  # type: ignore[override]
    def bijective(self) -> bool:
        return all(t.bijective for t in self.transforms)

    @property  # type: ignore[override]
    def domain(self) -> Any:
        return constraints.cat([t.domain for t in self.transforms], self.dim, self.lengths)

    @property  # type: ignore[override]
    def codomain(self) -> Any:
        return constraints.cat([t.codomain for t in self.transforms], self.dim, self.lengths)


class StackTransform(Transform):
    """The transforms `tseq` applied to the slices of `dim`, one each, the results joined as torch.stack
    joins them."""

    def __init__(self, tseq: Any, dim: int = 0, cache_size: int = 0) -> None:
        if not all(isinstance(t, Transform) for t in tseq):
            raise AssertionError("All elements of tseq must be Transform instances")
        if cache_size:
            tseq = [t.with_cache(cache_size) for t in tseq]
        super().__init__(cache_size=cache_size)
        self.transforms = list(tseq)
        self.dim = dim

    def with_cache(self, cache_size: int = 1) -> Transform:
        if self._cache_size == cache_size:
            return self
        return StackTransform(self.transforms, self.dim, cache_size)

    def _slice(self, z: Tensor) -> list[Tensor]:
        return [ops.select(z, self.dim, i) for i in range(z.shape[self.dim])]

    def _call(self, x: Any) -> Any:
        _check_dim(self.dim, x, len(self.transforms))
        return ops.stack([t(p) for p, t in zip(self._slice(x), self.transforms)], self.dim)

    def _inverse(self, y: Any) -> Any:
        _check_dim(self.dim, y, len(self.transforms))
        return ops.stack([t.inv(p) for p, t in zip(self._slice(y), self.transforms)], self.dim)

    def log_abs_det_jacobian(self, x: Any, y: Any) -> Tensor:
        _check_dim(self.dim, x, len(self.transforms), "x")
        _check_dim(self.dim, y, len(self.transforms), "y")
        return ops.stack([t.log_abs_det_jacobian(xp, yp)
                          for xp, yp, t in zip(self._slice(x), self._slice(y), self.transforms)], self.dim)

    @property  # type: ignore[override]
    def bijective(self) -> bool:
        return all(t.bijective for t in self.transforms)

    @property  # type: ignore[override]
    def domain(self) -> Any:
        return constraints.stack([t.domain for t in self.transforms], self.dim)

    @property  # type: ignore[override]
    def codomain(self) -> Any:
        return constraints.stack([t.codomain for t in self.transforms], self.dim)

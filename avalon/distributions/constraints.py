"""`avalon.distributions.constraints`: torch.distributions.constraints' objects under torch's names.

A constraint says where a parameter or a value may lie (`Normal.arg_constraints["scale"]` is
`positive`, `Beta.support` is `unit_interval`); `check(value)` is a boolean tensor, computed with
Avalon's ops, over the batch (`event_dim` trailing dims are reduced, as in torch). Distributions
check their arguments and `log_prob` values against them (eagerly, or through `check` ops), and
`avalon.distributions.transforms` give each transform a `domain` and `codomain`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import ops
from ..ops import linalg
from ..tensor import Tensor, values_fixed

__all__ = ["Constraint", "boolean", "cat", "corr_cholesky", "dependent", "dependent_property", "greater_than",
           "greater_than_eq", "half_open_interval", "independent", "integer_interval", "interval", "is_dependent",
           "less_than", "lower_cholesky", "lower_triangular", "multinomial", "nonnegative", "nonnegative_integer",
           "one_hot", "positive", "positive_definite", "positive_integer", "positive_semidefinite", "real",
           "real_vector", "simplex", "square", "stack", "symmetric", "unit_interval"]


def _t(value: Any) -> Any:
    """The value to check: numpy arrays stay numpy (argument checks run on known values, apart from
    any trace), anything else becomes a Tensor (checks then are Avalon ops)."""
    if isinstance(value, (np.ndarray, np.generic)):
        return np.asarray(value)
    return value if isinstance(value, Tensor) else ops.as_tensor(value)


# names of traced bound tensors for `_bound_repr` (id -> the distribution's attribute name), set by
# `bound_names` while a message is written
_BOUND_NAMES: dict[int, str] = {}


class bound_names:
    """Within `with bound_names({id(t): "total_count"}):` a constraint's repr names a traced bound tensor
    (whose values a message written at trace time cannot show) by its parameter."""

    def __init__(self, names: dict[int, str]) -> None:
        self.names, self.old = names, {}

    def __enter__(self) -> None:
        global _BOUND_NAMES
        self.old, _BOUND_NAMES = _BOUND_NAMES, {**_BOUND_NAMES, **self.names}

    def __exit__(self, *exc: Any) -> None:
        global _BOUND_NAMES
        _BOUND_NAMES = self.old


def _bound_repr(b: Any) -> str:
    """A constraint's bound in its repr as torch writes it: a number as is, known tensor values as torch
    prints them (`tensor([4., 4., 4.])`, four decimals unless all are integral), a traced tensor by the
    parameter it is (`bound_names`), else by its shape."""
    if not isinstance(b, Tensor):
        return str(b)
    if not values_fixed(b):
        return _BOUND_NAMES.get(id(b), f"<traced tensor of shape {tuple(b.shape)}>")
    v = np.asarray(b.numpy(), np.float64)
    finite = v[np.isfinite(v)]
    integral = finite.size == 0 or bool(np.all(finite == np.round(finite)))
    body = np.array2string(v, separator=", ", precision=0 if integral else 4,
                           floatmode="maxprec" if integral else "fixed", prefix="tensor(") if v.ndim else (
        f"{v:.0f}." if integral and np.isfinite(v) else f"{v:.4f}" if np.isfinite(v) else str(v))
    return f"tensor({body})"


def _bound(b: Any, like: Any) -> Any:
    """A bound of the constraint in the value's kind (a Tensor bound as numpy for a numpy value)."""
    if isinstance(like, np.ndarray) and isinstance(b, Tensor):
        return b.numpy()
    return b


def _all(x: Any, dims: Any) -> Any:
    if isinstance(x, np.ndarray):
        return np.all(x, axis=tuple(dims) if isinstance(dims, list) else dims)
    return ops.all(x, dims)


def _sum(x: Any, dim: int) -> Any:
    return np.sum(x, dim) if isinstance(x, np.ndarray) else ops.sum(x, dim)


def _tril(x: Any) -> Any:
    return np.tril(x) if isinstance(x, np.ndarray) else ops.tril(x)


def _diagonal(x: Any) -> Any:
    return np.diagonal(x, 0, -2, -1) if isinstance(x, np.ndarray) else ops.diagonal(x, 0, -2, -1)


def _full(shape: tuple[int, ...], value: bool, like: Any) -> Any:
    return np.full(shape, value) if isinstance(like, np.ndarray) else ops.full(shape, value)


class Constraint:
    """A region of values: `check(value)` is a boolean tensor of value's batch shape."""

    is_discrete = False
    event_dim = 0

    def check(self, value: Any) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.__class__.__name__[1:] + "()"


class _Dependent(Constraint):
    """A placeholder for a support that depends on other values (torch's `constraints.dependent`)."""

    def __init__(self, *, is_discrete: bool = False, event_dim: int = 0) -> None:
        self._is_discrete, self._event_dim = is_discrete, event_dim

    @property
    def is_discrete(self) -> bool:  # type: ignore[override]
        return self._is_discrete

    @property
    def event_dim(self) -> int:  # type: ignore[override]
        return self._event_dim

    def __call__(self, *, is_discrete: Any = None, event_dim: Any = None) -> _Dependent:
        return _Dependent(is_discrete=self._is_discrete if is_discrete is None else is_discrete,
                          event_dim=self._event_dim if event_dim is None else event_dim)

    def check(self, value: Any) -> Tensor:
        raise ValueError("Cannot determine validity of dependent constraint")


def is_dependent(constraint: Any) -> bool:
    return isinstance(constraint, _Dependent)


class _DependentProperty(property, _Dependent):
    """`@constraints.dependent_property`: a property (a support computed from the parameters) that is
    also a dependent constraint when read from the class."""

    def __init__(self, fn: Any = None, *, is_discrete: bool = False, event_dim: int = 0) -> None:
        property.__init__(self, fn)
        _Dependent.__init__(self, is_discrete=is_discrete, event_dim=event_dim)

    def __call__(self, fn: Any) -> _DependentProperty:  # type: ignore[override]
        return _DependentProperty(fn, is_discrete=self._is_discrete, event_dim=self._event_dim)


dependent_property = _DependentProperty


class _IndependentConstraint(Constraint):
    """A constraint over `reinterpreted_batch_ndims` more event dims: true where all of them are."""

    def __init__(self, base_constraint: Constraint, reinterpreted_batch_ndims: int) -> None:
        self.base_constraint, self.reinterpreted_batch_ndims = base_constraint, int(reinterpreted_batch_ndims)

    @property
    def is_discrete(self) -> bool:  # type: ignore[override]
        return self.base_constraint.is_discrete

    @property
    def event_dim(self) -> int:  # type: ignore[override]
        return self.base_constraint.event_dim + self.reinterpreted_batch_ndims

    def check(self, value: Any) -> Tensor:
        result = self.base_constraint.check(value)
        n = self.reinterpreted_batch_ndims
        if result.ndim < n:
            raise ValueError(f"Expected value.dim() >= {self.event_dim} but got {_t(value).ndim}")
        return _all(result, list(range(result.ndim - n, result.ndim))) if n else result

    def __repr__(self) -> str:
        return f"{self.__class__.__name__[1:]}({self.base_constraint!r}, {self.reinterpreted_batch_ndims})"


class _Boolean(Constraint):
    is_discrete = True

    def check(self, value: Any) -> Tensor:
        v = _t(value)
        return (v == 0) | (v == 1)


class _OneHot(Constraint):
    is_discrete, event_dim = True, 1

    def check(self, value: Any) -> Tensor:
        v = _t(value)
        return _all((v == 0) | (v == 1), -1) & (_sum(v, -1) == 1)


def _is_integer(v: Any) -> Any:
    return v % 1 == 0


class _IntegerInterval(Constraint):
    is_discrete = True

    def __init__(self, lower_bound: Any, upper_bound: Any) -> None:
        self.lower_bound, self.upper_bound = lower_bound, upper_bound

    def check(self, value: Any) -> Tensor:
        v = _t(value)
        return _is_integer(v) & (v >= _bound(self.lower_bound, v)) & (v <= _bound(self.upper_bound, v))

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__[1:]}(lower_bound={_bound_repr(self.lower_bound)}, "
                f"upper_bound={_bound_repr(self.upper_bound)})")


class _IntegerGreaterThan(Constraint):
    is_discrete = True

    def __init__(self, lower_bound: Any) -> None:
        self.lower_bound = lower_bound

    def check(self, value: Any) -> Tensor:
        v = _t(value)
        return _is_integer(v) & (v >= _bound(self.lower_bound, v))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__[1:]}(lower_bound={_bound_repr(self.lower_bound)})"


class _Real(Constraint):
    def check(self, value: Any) -> Tensor:
        v = _t(value)
        return v == v  # False for NaNs


class _GreaterThan(Constraint):
    def __init__(self, lower_bound: Any) -> None:
        self.lower_bound = lower_bound

    def check(self, value: Any) -> Tensor:
        v = _t(value)
        return v > _bound(self.lower_bound, v)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__[1:]}(lower_bound={_bound_repr(self.lower_bound)})"


class _GreaterThanEq(_GreaterThan):
    def check(self, value: Any) -> Tensor:
        v = _t(value)
        return v >= _bound(self.lower_bound, v)


class _LessThan(Constraint):
    def __init__(self, upper_bound: Any) -> None:
        self.upper_bound = upper_bound

    def check(self, value: Any) -> Tensor:
        v = _t(value)
        return v < _bound(self.upper_bound, v)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__[1:]}(upper_bound={_bound_repr(self.upper_bound)})"


class _Interval(Constraint):
    def __init__(self, lower_bound: Any, upper_bound: Any) -> None:
        self.lower_bound, self.upper_bound = lower_bound, upper_bound

    def check(self, value: Any) -> Tensor:
        v = _t(value)
        return (v >= _bound(self.lower_bound, v)) & (v <= _bound(self.upper_bound, v))

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__[1:]}(lower_bound={_bound_repr(self.lower_bound)}, "
                f"upper_bound={_bound_repr(self.upper_bound)})")


class _HalfOpenInterval(_Interval):
    def check(self, value: Any) -> Tensor:
        v = _t(value)
        return (v >= _bound(self.lower_bound, v)) & (v < _bound(self.upper_bound, v))


class _Simplex(Constraint):
    event_dim = 1

    def check(self, value: Any) -> Tensor:
        v = _t(value)
        return _all(v >= 0, -1) & (abs(_sum(v, -1) - 1.0) < 1e-6)


class _Multinomial(Constraint):
    is_discrete, event_dim = True, 1

    def __init__(self, upper_bound: Any) -> None:
        self.upper_bound = upper_bound

    def check(self, value: Any) -> Tensor:
        v = _t(value)
        return _all(v >= 0, -1) & (_sum(v, -1) <= _bound(self.upper_bound, v))


class _LowerTriangular(Constraint):
    event_dim = 2

    def check(self, value: Any) -> Tensor:
        v = _t(value)
        return _all(_tril(v) == v, [-2, -1])


class _LowerCholesky(Constraint):
    event_dim = 2

    def check(self, value: Any) -> Tensor:
        v = _t(value)
        return _all(_tril(v) == v, [-2, -1]) & _all(_diagonal(v) > 0, -1)


class _Square(Constraint):
    event_dim = 2

    def check(self, value: Any) -> Tensor:
        v = _t(value)
        return _full(v.shape[:-2], v.shape[-2] == v.shape[-1], v)


class _Symmetric(_Square):
    def check(self, value: Any) -> Tensor:
        v = _t(value)
        if v.shape[-2] != v.shape[-1]:
            return _full(v.shape[:-2], False, v)
        vt = np.swapaxes(v, -1, -2) if isinstance(v, np.ndarray) else ops.swapaxes(v, -1, -2)
        return _all(abs(v - vt) <= 1e-6 + 1e-5 * abs(vt), [-2, -1])  # torch's isclose(v, v.mT, atol=1e-6)


def positive_definite_np(m: np.ndarray) -> np.ndarray:
    """Which matrices of a batch have a Cholesky factor (numpy's, on known values)."""
    flat = m.reshape((-1,) + m.shape[-2:])
    ok = np.zeros(len(flat), bool)
    for i, a in enumerate(flat):
        try:
            np.linalg.cholesky(a)
            ok[i] = True
        except np.linalg.LinAlgError:
            pass
    return ok.reshape(m.shape[:-2])


class _PositiveDefinite(_Symmetric):
    def check(self, value: Any) -> Any:
        """Symmetric with a Cholesky factor (decided on the values: numpy's, as torch's cholesky_ex;
        traced, a factor without nan: linalg.cholesky_ex's)."""
        v = _t(value)
        if isinstance(v, Tensor) and not values_fixed(v):
            factor = linalg.cholesky_ex(ops.stop_gradient(v))[0]
            return super().check(v) & ops.all(ops.isfinite(factor), [-2, -1])
        m = v if isinstance(v, np.ndarray) else v.numpy()
        sym = np.asarray(super().check(m))
        out = sym & positive_definite_np(m)
        return out if isinstance(v, np.ndarray) else ops.as_tensor(out)


class _PositiveSemidefinite(_Symmetric):
    def check(self, value: Any) -> Any:
        """Symmetric with no negative eigenvalue (decided on the values, as torch's eigvalsh)."""
        v = _t(value)
        m = v if isinstance(v, np.ndarray) else v.numpy()
        sym = np.asarray(super().check(m))
        out = sym & np.all(np.linalg.eigvalsh(m) >= 0, -1) if sym.all() else sym
        return out if isinstance(v, np.ndarray) else ops.as_tensor(out)


class _CorrCholesky(Constraint):
    """Lower Cholesky factors of correlation matrices: lower triangular, positive diagonal, rows of unit
    norm (within 10 * eps * n, as torch's)."""

    event_dim = 2

    def check(self, value: Any) -> Any:
        v = _t(value)
        tol = float(np.finfo(v.dtype if isinstance(v, np.ndarray) else v.dtype.np).eps) * v.shape[-1] * 10
        if isinstance(v, np.ndarray):
            unit = np.all(np.abs(np.linalg.norm(v, axis=-1) - 1.0) <= tol, -1)
        else:
            unit = ops.all(ops.le(ops.abs(ops.sqrt(ops.sum(ops.square(ops.stop_gradient(v)), -1)) - 1.0), tol), -1)
        return _LowerCholesky().check(v) & unit


class _Cat(Constraint):
    """Constraints applied to consecutive pieces of `dim` (lengths `lengths`), as torch.cat joins them."""

    def __init__(self, cseq: list[Constraint], dim: int = 0, lengths: list[int] | None = None) -> None:
        self.cseq, self.dim = list(cseq), dim
        self.lengths = [1] * len(self.cseq) if lengths is None else list(lengths)

    @property
    def is_discrete(self) -> bool:  # type: ignore[override]
        return any(c.is_discrete for c in self.cseq)

    @property
    def event_dim(self) -> int:  # type: ignore[override]
        return max(c.event_dim for c in self.cseq)

    def check(self, value: Any) -> Tensor:
        v, checks, start = _t(value), [], 0
        for c, n in zip(self.cseq, self.lengths):
            checks.append(c.check(ops.narrow(v, self.dim, start, n)))
            start += n
        return ops.concat(checks, self.dim)


class _Stack(Constraint):
    """Constraints applied to the slices of `dim`, as torch.stack joins them."""

    def __init__(self, cseq: list[Constraint], dim: int = 0) -> None:
        self.cseq, self.dim = list(cseq), dim

    @property
    def is_discrete(self) -> bool:  # type: ignore[override]
        return any(c.is_discrete for c in self.cseq)

    @property
    def event_dim(self) -> int:  # type: ignore[override]
        dim = max(c.event_dim for c in self.cseq)
        return dim + 1 if self.dim + dim < 0 else dim

    def check(self, value: Any) -> Tensor:
        v = _t(value)
        return ops.stack([c.check(ops.select(v, self.dim, i)) for i, c in enumerate(self.cseq)], self.dim)


dependent = _Dependent()
independent = _IndependentConstraint
boolean = _Boolean()
one_hot = _OneHot()
nonnegative_integer = _IntegerGreaterThan(0)
positive_integer = _IntegerGreaterThan(1)
integer_interval = _IntegerInterval
real = _Real()
real_vector = independent(real, 1)
positive = _GreaterThan(0.0)
nonnegative = _GreaterThanEq(0.0)
greater_than = _GreaterThan
greater_than_eq = _GreaterThanEq
less_than = _LessThan
multinomial = _Multinomial
unit_interval = _Interval(0.0, 1.0)
interval = _Interval
half_open_interval = _HalfOpenInterval
simplex = _Simplex()
lower_triangular = _LowerTriangular()
lower_cholesky = _LowerCholesky()
square = _Square()
symmetric = _Symmetric()
positive_definite = _PositiveDefinite()
positive_semidefinite = _PositiveSemidefinite()
corr_cholesky = _CorrCholesky()
cat = _Cat
stack = _Stack

"""More of torch.distributions under torch's names, arguments and formulas: InverseGamma (Gamma through
PowerTransform(-1)), FisherSnedecor (a ratio of Gamma draws), GeneralizedPareto (the inverse CDF),
LogisticNormal (Normal through StickBreakingTransform), Wishart (an ExponentialFamily: Bartlett
decomposition for rsample, log_prob with the multivariate log-gamma) and LKJCholesky (the onion
method). log_prob, cdf, entropy and the moments are Avalon expressions (they trace and
differentiate); `rsample` is reparameterized where torch's is (InverseGamma, FisherSnedecor and
Wishart through the implicit Gamma gradient, GeneralizedPareto through its inverse CDF, LogisticNormal
through its Normal); LKJCholesky samples without gradient, as torch's.
"""
from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import numpy as np

from .. import ops
from ..tensor import Tensor
from . import constraints
from .continuous import Beta, Chi2, Gamma
from .core import (
    Distribution,
    ExponentialFamily,
    Normal,
    _broadcast_all,
    _check_traced,
    _known,
    _param,
    _shape,
)
from .transformed import TransformedDistribution
from .transforms import PowerTransform, StickBreakingTransform, vec_to_tril_matrix

__all__ = ["FisherSnedecor", "GeneralizedPareto", "InverseGamma", "LKJCholesky", "LogisticNormal", "Wishart"]


class InverseGamma(TransformedDistribution):
    """InverseGamma(concentration, rate): 1 / X for X ~ Gamma(concentration, rate)."""

    arg_constraints = {"concentration": constraints.positive, "rate": constraints.positive}
    support = constraints.positive

    def __init__(self, concentration: Any, rate: Any, validate_args: bool | None = None) -> None:
        base = Gamma(concentration, rate, validate_args=validate_args)
        neg_one = ops.full((), -1.0, base.rate.dtype)
        super().__init__(base, PowerTransform(neg_one), validate_args=validate_args)

    @property
    def concentration(self) -> Tensor:
        return self.base_dist.concentration

    @property
    def rate(self) -> Tensor:
        return self.base_dist.rate

    @property
    def mean(self) -> Tensor:
        c = self.concentration
        return ops.where(ops.gt(c, 1.0), self.rate / ops.where(ops.gt(c, 1.0), c - 1.0, 1.0), math.inf)

    @property
    def mode(self) -> Tensor:
        return self.rate / (self.concentration + 1.0)

    @property
    def variance(self) -> Tensor:
        c = self.concentration
        big = ops.gt(c, 2.0)
        cs = ops.where(big, c, 3.0)
        return ops.where(big, ops.square(self.rate) / (ops.square(cs - 1.0) * (cs - 2.0)), math.inf)

    def entropy(self) -> Tensor:
        c = self.concentration
        return c + ops.log(self.rate) + ops.lgamma(c) - (1.0 + c) * ops.digamma(c)


class FisherSnedecor(Distribution):
    """FisherSnedecor(df1, df2): (X1 / df1) / (X2 / df2) for chi-square X1, X2; rsample through two
    implicitly reparameterized Gamma draws."""

    arg_constraints = {"df1": constraints.positive, "df2": constraints.positive}
    support = constraints.positive
    has_rsample = True
    _expand_params = {"df1": 0, "df2": 0}
    _expand_dists = ("_gamma1", "_gamma2")

    def __init__(self, df1: Any, df2: Any, validate_args: bool | None = None) -> None:
        self.df1, self.df2 = _broadcast_all(df1, df2)
        self._gamma1 = Gamma(self.df1 * 0.5, self.df1, validate_args=False)
        self._gamma2 = Gamma(self.df2 * 0.5, self.df2, validate_args=False)
        super().__init__(self.df1.shape, (), validate_args)
        self.df1 = self._check_constraint("df1", self.df1)
        self.df2 = self._check_constraint("df2", self.df2)

    @property
    def mean(self) -> Tensor:
        df2 = ops.where(ops.le(self.df2, 2.0), math.nan, self.df2)
        return df2 / (df2 - 2.0)

    @property
    def mode(self) -> Tensor:
        m = (self.df1 - 2.0) / self.df1 * self.df2 / (self.df2 + 2.0)
        return ops.where(ops.le(self.df1, 2.0), math.nan, m)

    @property
    def variance(self) -> Tensor:
        df1, df2 = self.df1, ops.where(ops.le(self.df2, 4.0), math.nan, self.df2)
        return 2.0 * ops.square(df2) * (df1 + df2 - 2.0) / (df1 * ops.square(df2 - 2.0) * (df2 - 4.0))

    def rsample(self, sample_shape: Any = ()) -> Tensor:
        x1 = self._gamma1.rsample(sample_shape)
        x2 = self._gamma2.rsample(sample_shape)
        tiny = float(np.finfo(x2.dtype.np).tiny)
        return ops.clamp(x1 / ops.clamp(x2, min=tiny), min=tiny)

    def log_prob(self, value: Any) -> Tensor:
        v = self._validate_sample(_param(value))
        ct1, ct2 = self.df1 * 0.5, self.df2 * 0.5
        ct3 = self.df1 / self.df2
        t1 = ops.lgamma(ct1 + ct2) - ops.lgamma(ct1) - ops.lgamma(ct2)
        t2 = ct1 * ops.log(ct3) + (ct1 - 1.0) * ops.log(v)
        t3 = (ct1 + ct2) * ops.log1p(ct3 * v)
        return t1 + t2 - t3


def _isclose_zero(c: Tensor) -> Tensor:
    """torch.isclose(c, 0.0) with its default tolerances: |c| <= 1e-8."""
    return ops.le(ops.abs(c), 1e-8)


class GeneralizedPareto(Distribution):
    """GeneralizedPareto(loc, scale, concentration): the tail law of TensorFlow Probability and torch,
    on [loc, inf) (concentration >= 0) or [loc, loc - scale / concentration] (concentration < 0);
    rsample is the inverse CDF."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive, "concentration": constraints.real}
    has_rsample = True
    _expand_params = {"loc": 0, "scale": 0, "concentration": 0}

    def __init__(self, loc: Any, scale: Any, concentration: Any, validate_args: bool | None = None) -> None:
        self.loc, self.scale, self.concentration = _broadcast_all(loc, scale, concentration)
        super().__init__(self.loc.shape, (), validate_args)
        self.loc = self._check_constraint("loc", self.loc)
        self.scale = self._check_constraint("scale", self.scale)
        self.concentration = self._check_constraint("concentration", self.concentration)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self) -> constraints.Constraint:
        c = self.concentration
        upper = ops.where(ops.lt(c, 0.0), self.loc - self.scale / ops.where(ops.lt(c, 0.0), c, -1.0), math.inf)
        return constraints.interval(self.loc, upper)

    def _z(self, x: Tensor) -> Tensor:
        return (x - self.loc) / self.scale

    def _safe_conc(self) -> tuple[Tensor, Tensor]:
        eq_zero = _isclose_zero(self.concentration)
        return eq_zero, ops.where(eq_zero, 1.0, self.concentration)

    def rsample(self, sample_shape: Any = ()) -> Tensor:
        return self.icdf(ops.rand(self._extended_shape(sample_shape), dtype=self.loc.dtype))

    def log_prob(self, value: Any) -> Tensor:
        v = self._validate_sample(_param(value))
        z = self._z(v)
        eq_zero, safe = self._safe_conc()
        y = 1.0 / safe + ops.ones_like(z)
        where_nonzero = ops.where(ops.eq(y, 0.0), y, y * ops.log1p(safe * z))
        return ops.neg(ops.log(self.scale)) - ops.where(eq_zero, z, where_nonzero)

    def log_survival_function(self, value: Any) -> Tensor:
        v = self._validate_sample(_param(value))
        z = self._z(v)
        eq_zero, safe = self._safe_conc()
        return ops.where(eq_zero, ops.neg(z), ops.neg(ops.log1p(safe * z)) / safe)

    def log_cdf(self, value: Any) -> Tensor:
        return ops.log1p(ops.neg(ops.exp(self.log_survival_function(value))))

    def cdf(self, value: Any) -> Tensor:
        return ops.exp(self.log_cdf(value))

    def icdf(self, value: Any) -> Tensor:
        eq_zero, safe = self._safe_conc()
        logu = ops.log1p(ops.neg(_param(value)))
        where_nonzero = self.loc + self.scale / safe * ops.expm1(ops.neg(safe) * logu)
        return ops.where(eq_zero, self.loc - self.scale * logu, where_nonzero)

    @property
    def mean(self) -> Tensor:
        valid = ops.lt(self.concentration, 1.0)
        safe = ops.where(valid, self.concentration, 0.5)
        return ops.where(valid, self.loc + self.scale / (1.0 - safe), math.nan)

    @property
    def variance(self) -> Tensor:
        valid = ops.lt(self.concentration, 0.5)
        safe = ops.where(valid, self.concentration, 0.25)
        return ops.where(valid, ops.square(self.scale) / (ops.square(1.0 - safe) * (1.0 - 2.0 * safe)), math.nan)

    @property
    def mode(self) -> Tensor:
        return self.loc

    def entropy(self) -> Tensor:
        return ops.broadcast_to(ops.log(self.scale) + self.concentration + 1.0, self._batch_shape)


class LogisticNormal(TransformedDistribution):
    """LogisticNormal(loc, scale): a Normal(loc, scale) vector of length K - 1 stick-broken onto the
    simplex of length K."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.simplex

    def __init__(self, loc: Any, scale: Any, validate_args: bool | None = None) -> None:
        base = Normal(loc, scale, validate_args=validate_args)
        if not base.batch_shape:
            base = base.expand((1,))
        super().__init__(base, StickBreakingTransform(), validate_args=validate_args)

    @property
    def loc(self) -> Tensor:
        return self.base_dist.base_dist.loc

    @property
    def scale(self) -> Tensor:
        return self.base_dist.base_dist.scale


_LOG_2 = math.log(2)


def _mvdigamma(x: Tensor, p: int) -> Tensor:
    """The multivariate digamma: sum_i digamma(x - i / 2), i < p."""
    vals = _known(x)
    if vals is not None and not np.all(vals > (p - 1) / 2):
        raise AssertionError("Wrong domain for multivariate digamma function.")
    half = ops.div(ops.arange(p, dtype=x.dtype), 2.0)
    return ops.sum(ops.digamma(ops.expand_dims(x, -1) - half), -1)


def _precision_to_scale_tril(p: Tensor) -> Tensor:
    """torch's: the lower Cholesky factor of P^-1 through the Cholesky factor of P flipped."""
    lf = ops.linalg.cholesky(ops.flip(p, (-2, -1)))
    l_inv = ops.swapaxes(ops.flip(lf, (-2, -1)), -2, -1)
    eye = ops.broadcast_to(ops.eye(p.shape[-1], dtype=p.dtype), l_inv.shape)
    return ops.linalg.solve_triangular(l_inv, eye, upper=False)


class Wishart(ExponentialFamily):
    """Wishart(df, covariance_matrix= | precision_matrix= | scale_tril=): positive definite p x p
    matrices, sum of df outer products of N(0, Sigma) vectors (df real, > p - 1). Everything goes through
    the lower Cholesky factor of Sigma, as torch's; `rsample` is the Bartlett decomposition (chi-square
    diagonal, implicitly reparameterized, and normal entries below it), `log_prob` uses the
    multivariate log-gamma."""

    support = constraints.positive_definite
    has_rsample = True
    _mean_carrier_measure = 0

    @property
    def arg_constraints(self) -> dict[str, constraints.Constraint]:  # type: ignore[override]
        return {"covariance_matrix": constraints.positive_definite, "precision_matrix": constraints.positive_definite,
                "scale_tril": constraints.lower_cholesky,
                "df": constraints.greater_than(self._event_shape[-1] - 1)}

    def __init__(self, df: Any, covariance_matrix: Any = None, precision_matrix: Any = None, scale_tril: Any = None,
                 validate_args: bool | None = None) -> None:
        if (covariance_matrix is not None) + (scale_tril is not None) + (precision_matrix is not None) != 1:
            raise AssertionError("Exactly one of covariance_matrix or precision_matrix or scale_tril may be specified.")
        param = _param(next(p for p in (covariance_matrix, precision_matrix, scale_tril) if p is not None))
        if param.ndim < 2:
            raise ValueError("scale_tril must be at least two-dimensional, with optional leading batch dimensions")
        if isinstance(df, (int, float)):
            batch_shape = param.shape[:-2]
            self.df = ops.full((), float(df), param.dtype)
        else:
            df_t = _param(df)
            batch_shape = tuple(np.broadcast_shapes(param.shape[:-2], df_t.shape))
            self.df = ops.broadcast_to(df_t, batch_shape)
        event_shape = param.shape[-2:]
        p = event_shape[-1]
        vals = _known(self.df)
        if vals is not None and np.any(vals <= p - 1):
            raise ValueError(f"Value of df={df} expected to be greater than ndim - 1 = {p - 1}.")
        if vals is not None and np.any(vals < p):
            warnings.warn("Low df values detected. Singular samples are highly likely to occur for "
                          "ndim - 1 < df < ndim.", stacklevel=2)
        super().__init__(batch_shape, event_shape, validate_args)
        self._batch_dims = [-(x + 1) for x in range(len(self._batch_shape))]
        name = ("scale_tril" if scale_tril is not None else
                "covariance_matrix" if covariance_matrix is not None else "precision_matrix")
        param = self._check_constraint(name, param)
        if vals is None and self._validate_args:  # traced df: checked when the graph runs
            self.df = _check_traced(self.df, self.df > p - 1, f"Value of df expected to be greater than ndim - 1 = "
                                                              f"{p - 1}.")
        if scale_tril is not None:
            self._unbroadcasted_scale_tril = param
        elif covariance_matrix is not None:
            self._unbroadcasted_scale_tril = ops.linalg.cholesky(param)
        else:
            self._unbroadcasted_scale_tril = _precision_to_scale_tril(param)
        self._dist_chi2 = self._chi2()

    def _chi2(self) -> Chi2:
        p = self._event_shape[-1]
        offsets = ops.arange(p, dtype=self._unbroadcasted_scale_tril.dtype)
        return Chi2(ops.expand_dims(self.df, -1) - offsets, validate_args=False)

    def expand(self, batch_shape: Any, _instance: Any = None) -> Wishart:
        shape = _shape(batch_shape)
        new = copy.copy(self)
        new._unbroadcasted_scale_tril = ops.broadcast_to(self._unbroadcasted_scale_tril, shape + self._event_shape)
        new.df = ops.broadcast_to(self.df, shape)
        new._batch_shape = shape
        new._batch_dims = [-(x + 1) for x in range(len(shape))]
        new._dist_chi2 = new._chi2()
        return new

    @property
    def scale_tril(self) -> Tensor:
        return ops.broadcast_to(self._unbroadcasted_scale_tril, self._batch_shape + self._event_shape)

    @property
    def covariance_matrix(self) -> Tensor:
        lt = self._unbroadcasted_scale_tril
        return ops.broadcast_to(ops.matmul(lt, ops.swapaxes(lt, -2, -1)), self._batch_shape + self._event_shape)

    @property
    def precision_matrix(self) -> Tensor:
        lt = self._unbroadcasted_scale_tril
        eye = ops.broadcast_to(ops.eye(self._event_shape[-1], dtype=lt.dtype), lt.shape)
        return ops.broadcast_to(ops.cholesky_solve(eye, lt), self._batch_shape + self._event_shape)

    def _df_matrix(self) -> Tensor:
        return ops.reshape(self.df, self._batch_shape + (1, 1))

    @property
    def mean(self) -> Tensor:
        return self._df_matrix() * self.covariance_matrix

    @property
    def mode(self) -> Tensor:
        factor = self.df - float(self._event_shape[-1]) - 1.0
        factor = ops.where(ops.le(factor, 0.0), math.nan, factor)
        return ops.reshape(factor, self._batch_shape + (1, 1)) * self.covariance_matrix

    @property
    def variance(self) -> Tensor:
        v = self.covariance_matrix
        d = ops.diagonal(v, 0, -2, -1)
        return self._df_matrix() * (ops.square(v) + ops.expand_dims(d, -1) * ops.expand_dims(d, -2))

    def _bartlett_sampling(self, sample_shape: tuple[int, ...]) -> Tensor:
        p = self._event_shape[-1]
        eps = float(np.finfo(self._unbroadcasted_scale_tril.dtype.np).eps)
        diag = ops.clamp(ops.sqrt(self._dist_chi2.rsample(sample_shape)), min=eps)
        below = ops.randn(sample_shape + self._batch_shape + (p * (p - 1) // 2,), dtype=diag.dtype)
        # the strictly lower entries row by row (torch's tril_indices order), the chi draws on the diagonal
        noise = ops.add(vec_to_tril_matrix(below, diag=-1), ops.diag_embed(diag)) if p > 1 else ops.diag_embed(diag)
        chol = ops.matmul(self._unbroadcasted_scale_tril, noise)
        return ops.matmul(chol, ops.swapaxes(chol, -2, -1))

    def rsample(self, sample_shape: Any = (), max_try_correction: int | None = None) -> Tensor:
        """A Bartlett draw. Where its values are known (eagerly), singular draws (likely only for
        p - 1 < df < p) are drawn again, up to `max_try_correction` (10) times, as torch does; a traced
        draw is not corrected."""
        shape = _shape(sample_shape)
        sample = self._bartlett_sampling(shape)
        vals = _known(sample)
        if vals is None:
            return sample
        singular = ~constraints.positive_definite_np(vals)
        if self._batch_shape:
            singular = singular.any(axis=tuple(self._batch_dims))
        if singular.any():
            warnings.warn("Singular sample detected.", stacklevel=2)
            tries = 10 if max_try_correction is None else max_try_correction
            for _ in range(tries):
                mask = ops.as_tensor(singular.reshape(singular.shape + (1,) * (len(self._batch_shape) + 2)))
                sample = ops.where(mask, self._bartlett_sampling(shape), sample)
                singular = ~constraints.positive_definite_np(sample.numpy())
                if self._batch_shape:
                    singular = singular.any(axis=tuple(self._batch_dims))
                if not singular.any():
                    break
        return sample

    def log_prob(self, value: Any) -> Tensor:
        v = self._validate_sample(_param(value))
        nu, p = self.df, self._event_shape[-1]
        lt = self._unbroadcasted_scale_tril
        half_log_det = ops.sum(ops.log(ops.diagonal(lt, 0, -2, -1)), -1)
        batch = tuple(np.broadcast_shapes(v.shape[:-2], lt.shape[:-2]))
        solved = ops.cholesky_solve(ops.broadcast_to(v, batch + (p, p)), ops.broadcast_to(lt, batch + (p, p)))
        return (ops.neg(nu) * (p * _LOG_2 / 2 + half_log_det) - ops.mvlgamma(nu / 2.0, p)
                + (nu - p - 1.0) / 2.0 * ops.slogdet(v).logabsdet
                - ops.sum(ops.diagonal(solved, 0, -2, -1), -1) / 2.0)

    def entropy(self) -> Tensor:
        nu, p = self.df, self._event_shape[-1]
        half_log_det = ops.sum(ops.log(ops.diagonal(self._unbroadcasted_scale_tril, 0, -2, -1)), -1)
        h = ((p + 1) * (p * _LOG_2 / 2 + half_log_det) + ops.mvlgamma(nu / 2.0, p)
             - (nu - p - 1.0) / 2.0 * _mvdigamma(nu / 2.0, p) + nu * p / 2.0)
        return ops.broadcast_to(h, self._batch_shape)

    @property
    def _natural_params(self) -> tuple[Tensor, Tensor]:
        p = self._event_shape[-1]
        return ops.neg(self.precision_matrix) / 2.0, (self.df - p - 1.0) / 2.0

    def _log_normalizer(self, x: Tensor, y: Tensor) -> Tensor:
        p = self._event_shape[-1]
        return ((y + (p + 1) / 2) * (ops.neg(ops.slogdet(-2.0 * x).logabsdet) + _LOG_2 * p)
                + ops.mvlgamma(y + (p + 1) / 2, p))


class LKJCholesky(Distribution):
    """LKJCholesky(dim, concentration=1.0): lower Cholesky factors L of dim x dim correlation matrices,
    with density proportional to det(L L^T)^(concentration - 1); `sample` is the onion method
    (Lewandowski, Kurowicka and Joe 2009) as torch's (and NumPyro's), without gradient (no rsample)."""

    arg_constraints = {"concentration": constraints.positive}
    support = constraints.corr_cholesky
    _expand_params = {"concentration": 0}
    _expand_dists = ("_beta",)

    def __init__(self, dim: int, concentration: Any = 1.0, validate_args: bool | None = None) -> None:
        if dim < 2:
            raise ValueError(f"Expected dim to be an integer greater than or equal to 2. Found dim={dim}.")
        self.dim = int(dim)
        (self.concentration,) = _broadcast_all(concentration)
        super().__init__(self.concentration.shape, (self.dim, self.dim), validate_args)
        self.concentration = self._check_constraint("concentration", self.concentration)
        c = self.concentration
        marginal_conc = c + 0.5 * (self.dim - 2)
        offset = ops.concat([ops.zeros((1,), dtype=c.dtype), ops.arange(self.dim - 1, dtype=c.dtype)], 0)
        beta_conc1 = offset + 0.5
        beta_conc0 = ops.expand_dims(marginal_conc, -1) - 0.5 * offset
        c1, c0 = _broadcast_all(beta_conc1, beta_conc0)
        self._beta = Beta(c1, c0, validate_args=False)

    def expand(self, batch_shape: Any, _instance: Any = None) -> LKJCholesky:
        shape = _shape(batch_shape)
        new = copy.copy(self)
        new.concentration = ops.broadcast_to(self.concentration, shape)
        new._beta = self._beta.expand(shape + (self.dim,))
        new._batch_shape = shape
        return new

    def rsample(self, sample_shape: Any = ()) -> Tensor:
        raise NotImplementedError("LKJCholesky has no reparameterized sampling (rsample); use sample")

    def sample(self, sample_shape: Any = ()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        y = ops.expand_dims(ops.stop_gradient(self._beta.sample(sample_shape)), -1)
        u_normal = ops.tril(ops.randn(shape, dtype=y.dtype), -1)
        norm = ops.sqrt(ops.sum(ops.square(u_normal), -1, keepdims=True))
        first_row = ops.eq(ops.reshape(ops.arange(self.dim), (self.dim, 1)), 0)  # all zeros: torch fills it with 0
        u_hypersphere = ops.where(first_row, 0.0, u_normal / ops.where(first_row, 1.0, norm))
        w = ops.sqrt(y) * u_hypersphere
        tiny = float(np.finfo(w.dtype.np).tiny)
        diag_elems = ops.sqrt(ops.clamp(1.0 - ops.sum(ops.square(w), -1), min=tiny))
        return ops.stop_gradient(w + ops.diag_embed(diag_elems))

    def log_prob(self, value: Any) -> Tensor:
        v = self._validate_sample(_param(value))
        c, dim = self.concentration, self.dim
        diag_elems = ops.narrow(ops.diagonal(v, 0, -2, -1), -1, 1, dim - 1)
        order = 2.0 * ops.expand_dims(c - 1.0, -1) + (float(dim) - ops.arange(2, dim + 1, dtype=c.dtype))
        unnormalized_log_pdf = ops.sum(order * ops.log(diag_elems), -1)
        dm1 = dim - 1
        alpha = c + 0.5 * dm1
        denominator = ops.lgamma(alpha) * dm1
        numerator = ops.mvlgamma(alpha - 0.5, dm1)
        pi_constant = 0.5 * dm1 * math.log(math.pi)
        return unnormalized_log_pdf - (pi_constant + numerator - denominator)

"""`avalon.distributions.kl`: `kl_divergence`, `register_kl` and torch's closed forms between the
distributions of `avalon.distributions` (same family and across families, with torch's inf where
p's support leaves q's), written with Avalon's ops so they differentiate (a VAE's KL term).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import ops
from ..tensor import Tensor
from .continuous import (
    EULER_GAMMA,
    Beta,
    Cauchy,
    ContinuousBernoulli,
    Dirichlet,
    Exponential,
    Gamma,
    Laplace,
    LowRankMultivariateNormal,
    _lowrank_logdet,
    _lowrank_mahalanobis,
    _tri_solve_vec,
)
from .core import (
    Bernoulli,
    ExponentialFamily,
    MultivariateNormal,
    Normal,
    Uniform,
    _kl_normal,
    _known,
    _tri_solve,
    kl_divergence,
    register_kl,
)
from .discrete import Binomial, Geometric, Poisson
from .transformed import Gumbel, HalfNormal, Pareto, TransformedDistribution

__all__ = ["kl_divergence", "register_kl"]


def _inf_like(t: Tensor) -> Tensor:
    return ops.full(t.shape, math.inf, t.dtype)


def _x_log_x(t: Tensor) -> Tensor:
    return ops.xlogy(t, t)


def _trace_xxt(m: Tensor) -> Tensor:
    return ops.sum(ops.square(m), [-2, -1])


@register_kl(Beta, Beta)
def _kl_beta_beta(p: Beta, q: Beta) -> Tensor:
    sp, sq = p.concentration1 + p.concentration0, q.concentration1 + q.concentration0
    t1 = ops.lgamma(q.concentration1) + ops.lgamma(q.concentration0) + ops.lgamma(sp)
    t2 = ops.lgamma(p.concentration1) + ops.lgamma(p.concentration0) + ops.lgamma(sq)
    t3 = (p.concentration1 - q.concentration1) * ops.digamma(p.concentration1)
    t4 = (p.concentration0 - q.concentration0) * ops.digamma(p.concentration0)
    t5 = (sq - sp) * ops.digamma(sp)
    return t1 - t2 + t3 + t4 + t5


@register_kl(Binomial, Binomial)
def _kl_binomial_binomial(p: Binomial, q: Binomial) -> Tensor:
    pn, qn = _known(p.total_count), _known(q.total_count)
    if pn is not None and qn is not None and (pn < qn).any():
        raise NotImplementedError("KL between Binomials where q.total_count > p.total_count is not implemented")
    pp, qp = p.probs, q.probs
    kl = p.total_count * (pp * (p.logits - q.logits) + ops.log1p(ops.neg(pp)) - ops.log1p(ops.neg(qp)))
    return ops.where(ops.gt(p.total_count, q.total_count), math.inf, kl)


@register_kl(ContinuousBernoulli, ContinuousBernoulli)
def _kl_cb_cb(p: ContinuousBernoulli, q: ContinuousBernoulli) -> Tensor:
    t1 = p.mean * (p.logits - q.logits)
    t2 = p._cont_bern_log_norm() + ops.log1p(ops.neg(p.probs))
    t3 = ops.neg(q._cont_bern_log_norm()) - ops.log1p(ops.neg(q.probs))
    return t1 + t2 + t3


@register_kl(Dirichlet, Dirichlet)
def _kl_dirichlet_dirichlet(p: Dirichlet, q: Dirichlet) -> Tensor:
    sp, sq = ops.sum(p.concentration, -1), ops.sum(q.concentration, -1)
    t1 = ops.lgamma(sp) - ops.lgamma(sq)
    t2 = ops.sum(ops.lgamma(p.concentration) - ops.lgamma(q.concentration), -1)
    t3 = p.concentration - q.concentration
    t4 = ops.digamma(p.concentration) - ops.expand_dims(ops.digamma(sp), -1)
    return t1 - t2 + ops.sum(t3 * t4, -1)


@register_kl(Exponential, Exponential)
def _kl_exponential_exponential(p: Exponential, q: Exponential) -> Tensor:
    ratio = q.rate / p.rate
    return ops.neg(ops.log(ratio)) + ratio - 1.0


@register_kl(Gamma, Gamma)
def _kl_gamma_gamma(p: Gamma, q: Gamma) -> Tensor:
    t1 = q.concentration * ops.log(p.rate / q.rate)
    t2 = ops.lgamma(q.concentration) - ops.lgamma(p.concentration)
    t3 = (p.concentration - q.concentration) * ops.digamma(p.concentration)
    t4 = (q.rate - p.rate) * (p.concentration / p.rate)
    return t1 + t2 + t3 + t4


@register_kl(Gumbel, Gumbel)
def _kl_gumbel_gumbel(p: Gumbel, q: Gumbel) -> Tensor:
    ct1, ct2, ct3 = p.scale / q.scale, q.loc / q.scale, p.loc / q.scale
    t1 = ops.neg(ops.log(ct1)) - ct2 + ct3
    t2 = ct1 * EULER_GAMMA
    t3 = ops.exp(ct2 + ops.lgamma(1.0 + ct1) - ct3)
    return t1 + t2 + t3 - (1 + EULER_GAMMA)


@register_kl(Geometric, Geometric)
def _kl_geometric_geometric(p: Geometric, q: Geometric) -> Tensor:
    return ops.neg(p.entropy()) - ops.log1p(ops.neg(q.probs)) / p.probs - q.logits


@register_kl(HalfNormal, HalfNormal)
def _kl_halfnormal_halfnormal(p: HalfNormal, q: HalfNormal) -> Tensor:
    return _kl_normal(p.base_dist, q.base_dist)


@register_kl(Laplace, Laplace)
def _kl_laplace_laplace(p: Laplace, q: Laplace) -> Tensor:
    scale_ratio = p.scale / q.scale
    loc_abs_diff = ops.abs(p.loc - q.loc)
    return (ops.neg(ops.log(scale_ratio)) + loc_abs_diff / q.scale
            + scale_ratio * ops.exp(ops.neg(loc_abs_diff) / p.scale) - 1.0)


def _same_event(p: Any, q: Any, what: str) -> None:
    if p.event_shape != q.event_shape:
        raise ValueError(f"KL-divergence between two {what} with different event shapes cannot be computed")


def _wt_dinv(q: LowRankMultivariateNormal) -> Tensor:
    return ops.swapaxes(q._unbroadcasted_cov_factor, -1, -2) / ops.expand_dims(q._unbroadcasted_cov_diag, -2)


def _cap_solve(q: LowRankMultivariateNormal, rhs: Tensor) -> Tensor:
    cap = q._capacitance_tril
    batch = tuple(np.broadcast_shapes(cap.shape[:-2], rhs.shape[:-2]))
    return _tri_solve(ops.broadcast_to(cap, batch + cap.shape[-2:]), ops.broadcast_to(rhs, batch + rhs.shape[-2:]))


@register_kl(LowRankMultivariateNormal, LowRankMultivariateNormal)
def _kl_lowrank_lowrank(p: LowRankMultivariateNormal, q: LowRankMultivariateNormal) -> Tensor:
    _same_event(p, q, "Low Rank Multivariate Normals")
    qw, qd, pw, pd = q._unbroadcasted_cov_factor, q._unbroadcasted_cov_diag, p._unbroadcasted_cov_factor, \
        p._unbroadcasted_cov_diag
    term1 = _lowrank_logdet(qw, qd, q._capacitance_tril) - _lowrank_logdet(pw, pd, p._capacitance_tril)
    term3 = _lowrank_mahalanobis(qw, qd, q.loc - p.loc, q._capacitance_tril)
    a = _cap_solve(q, _wt_dinv(q))
    term21 = ops.sum(pd / qd, -1)
    term22 = _trace_xxt(pw * ops.expand_dims(ops.rsqrt(qd), -1))
    term23 = _trace_xxt(a * ops.expand_dims(ops.sqrt(pd), -2))
    term24 = _trace_xxt(ops.matmul(a, pw))
    return 0.5 * (term1 + term21 + term22 - term23 - term24 + term3 - p.event_shape[0])


def _mvn_half_logdet(p: MultivariateNormal) -> Tensor:
    return ops.sum(ops.log(ops.diagonal(p._unbroadcasted_scale_tril, 0, -2, -1)), -1)


@register_kl(MultivariateNormal, LowRankMultivariateNormal)
def _kl_mvn_lowrank(p: MultivariateNormal, q: LowRankMultivariateNormal) -> Tensor:
    _same_event(p, q, "(Low Rank) Multivariate Normals")
    qw, qd = q._unbroadcasted_cov_factor, q._unbroadcasted_cov_diag
    term1 = _lowrank_logdet(qw, qd, q._capacitance_tril) - 2.0 * _mvn_half_logdet(p)
    term3 = _lowrank_mahalanobis(qw, qd, q.loc - p.loc, q._capacitance_tril)
    a = _cap_solve(q, _wt_dinv(q))
    lp = p._unbroadcasted_scale_tril
    term21 = _trace_xxt(lp * ops.expand_dims(ops.rsqrt(qd), -1))
    term22 = _trace_xxt(ops.matmul(a, lp))
    return 0.5 * (term1 + term21 - term22 + term3 - p.event_shape[0])


@register_kl(LowRankMultivariateNormal, MultivariateNormal)
def _kl_lowrank_mvn(p: LowRankMultivariateNormal, q: MultivariateNormal) -> Tensor:
    _same_event(p, q, "(Low Rank) Multivariate Normals")
    pw, pd = p._unbroadcasted_cov_factor, p._unbroadcasted_cov_diag
    term1 = 2.0 * _mvn_half_logdet(q) - _lowrank_logdet(pw, pd, p._capacitance_tril)
    lq = q._unbroadcasted_scale_tril
    term3 = ops.sum(ops.square(_tri_solve_vec(lq, q.loc - p.loc)), -1)
    n = p.event_shape[0]
    batch = tuple(np.broadcast_shapes(lq.shape[:-2], pw.shape[:-2]))
    lqb = ops.broadcast_to(lq, batch + (n, n))
    term21 = _trace_xxt(_tri_solve(lqb, ops.broadcast_to(pw, batch + pw.shape[-2:])))
    term22 = _trace_xxt(_tri_solve(lqb, ops.broadcast_to(ops.diag_embed(ops.sqrt(pd)), batch + (n, n))))
    return 0.5 * (term1 + term21 + term22 + term3 - n)


@register_kl(Pareto, Pareto)
def _kl_pareto_pareto(p: Pareto, q: Pareto) -> Tensor:
    scale_ratio, alpha_ratio = p.scale / q.scale, q.alpha / p.alpha
    result = q.alpha * ops.log(scale_ratio) - ops.log(alpha_ratio) + alpha_ratio - 1.0
    return ops.where(ops.lt(p.scale, q.scale), math.inf, result)


@register_kl(Poisson, Poisson)
def _kl_poisson_poisson(p: Poisson, q: Poisson) -> Tensor:
    return p.rate * (ops.log(p.rate) - ops.log(q.rate)) - (p.rate - q.rate)


@register_kl(TransformedDistribution, TransformedDistribution)
def _kl_transformed_transformed(p: TransformedDistribution, q: TransformedDistribution) -> Tensor:
    if p.transforms != q.transforms or p.event_shape != q.event_shape:
        raise NotImplementedError
    return kl_divergence(p.base_dist, q.base_dist)


@register_kl(Cauchy, Cauchy)
def _kl_cauchy_cauchy(p: Cauchy, q: Cauchy) -> Tensor:
    t1 = ops.log(ops.square(p.scale + q.scale) + ops.square(p.loc - q.loc))
    return t1 - ops.log(4.0 * p.scale * q.scale)


# -- across families ------------------------------------------------------------------------------

@register_kl(Bernoulli, Poisson)
def _kl_bernoulli_poisson(p: Bernoulli, q: Poisson) -> Tensor:
    return ops.neg(p.entropy()) - (p.probs * ops.log(q.rate) - q.rate)


@register_kl(Beta, ContinuousBernoulli)
@register_kl(Uniform, ContinuousBernoulli)
def _kl_to_continuous_bernoulli(p: Any, q: ContinuousBernoulli) -> Tensor:
    result = ops.neg(p.entropy()) - p.mean * q.logits - ops.log1p(ops.neg(q.probs)) - q._cont_bern_log_norm()
    if isinstance(p, Uniform):
        outside = ops.logical_or(ops.ge(p.high, 1.0), ops.le(p.low, 0.0))
        return ops.where(outside, math.inf, result)
    return result


@register_kl(Beta, Pareto)
@register_kl(ContinuousBernoulli, Pareto)
def _kl_unit_pareto(p: Any, q: Pareto) -> Tensor:
    return _inf_like(p.mean)


@register_kl(Beta, Exponential)
def _kl_beta_exponential(p: Beta, q: Exponential) -> Tensor:
    return ops.neg(p.entropy()) - ops.log(q.rate) + q.rate * (p.concentration1 / (p.concentration1 + p.concentration0))


@register_kl(Beta, Gamma)
def _kl_beta_gamma(p: Beta, q: Gamma) -> Tensor:
    c1, c0 = p.concentration1, p.concentration0
    t2 = ops.lgamma(q.concentration) - q.concentration * ops.log(q.rate)
    t3 = (q.concentration - 1.0) * (ops.digamma(c1) - ops.digamma(c1 + c0))
    t4 = q.rate * c1 / (c1 + c0)
    return ops.neg(p.entropy()) + t2 - t3 + t4


@register_kl(Beta, Normal)
def _kl_beta_normal(p: Beta, q: Normal) -> Tensor:
    c1, c0 = p.concentration1, p.concentration0
    e = c1 / (c1 + c0)
    var = q.scale * q.scale
    t2 = 0.5 * ops.log(var * 2.0 * math.pi)
    t3 = (e * (1.0 - e) / (c1 + c0 + 1.0) + e * e) * 0.5
    return ops.neg(p.entropy()) + t2 + (t3 - q.loc * e + q.loc * q.loc * 0.5) / var


@register_kl(Beta, Uniform)
def _kl_beta_uniform(p: Beta, q: Uniform) -> Tensor:
    result = ops.neg(p.entropy()) + ops.log(q.high - q.low)
    return ops.where(ops.logical_or(ops.gt(q.low, 0.0), ops.lt(q.high, 1.0)), math.inf, result)


@register_kl(ContinuousBernoulli, Exponential)
def _kl_cb_exponential(p: ContinuousBernoulli, q: Exponential) -> Tensor:
    return ops.neg(p.entropy()) - ops.log(q.rate) + q.rate * p.mean


@register_kl(ContinuousBernoulli, Normal)
def _kl_cb_normal(p: ContinuousBernoulli, q: Normal) -> Tensor:
    t2 = 0.5 * (math.log(2.0 * math.pi) + ops.square(q.loc / q.scale)) + ops.log(q.scale)
    t3 = (p.variance + ops.square(p.mean) - 2.0 * q.loc * p.mean) / (2.0 * ops.square(q.scale))
    return ops.neg(p.entropy()) + t2 + t3


@register_kl(ContinuousBernoulli, Uniform)
def _kl_cb_uniform(p: ContinuousBernoulli, q: Uniform) -> Tensor:
    result = ops.neg(p.entropy()) + ops.log(q.high - q.low)
    return ops.where(ops.logical_or(ops.ge(q.low, 0.0), ops.le(q.high, 1.0)), math.inf, result)


@register_kl(Exponential, Beta)
@register_kl(Exponential, ContinuousBernoulli)
@register_kl(Exponential, Pareto)
@register_kl(Exponential, Uniform)
def _kl_exponential_infinity(p: Exponential, q: Any) -> Tensor:
    return _inf_like(p.rate)


@register_kl(Exponential, Gamma)
def _kl_exponential_gamma(p: Exponential, q: Gamma) -> Tensor:
    ratio = q.rate / p.rate
    return (ops.neg(q.concentration) * ops.log(ratio) + ratio + ops.lgamma(q.concentration)
            + q.concentration * EULER_GAMMA - (1 + EULER_GAMMA))


@register_kl(Exponential, Gumbel)
def _kl_exponential_gumbel(p: Exponential, q: Gumbel) -> Tensor:
    srp = p.rate * q.scale
    lsr = q.loc / q.scale
    return ops.log(srp) - 1.0 - lsr + ops.exp(lsr) * srp / (srp + 1.0) + ops.reciprocal(srp)


@register_kl(Exponential, Normal)
def _kl_exponential_normal(p: Exponential, q: Normal) -> Tensor:
    var = q.scale * q.scale
    r2 = p.rate * p.rate
    t1 = 0.5 * ops.log(r2 * var * 2.0 * math.pi)
    return t1 - 1.0 + (ops.reciprocal(r2) - q.loc / p.rate + q.loc * q.loc * 0.5) / var


@register_kl(Gamma, Beta)
@register_kl(Gamma, ContinuousBernoulli)
@register_kl(Gamma, Pareto)
@register_kl(Gamma, Uniform)
def _kl_gamma_infinity(p: Gamma, q: Any) -> Tensor:
    return _inf_like(p.concentration)


@register_kl(Gamma, Exponential)
def _kl_gamma_exponential(p: Gamma, q: Exponential) -> Tensor:
    return ops.neg(p.entropy()) - ops.log(q.rate) + q.rate * p.concentration / p.rate


@register_kl(Gamma, Gumbel)
def _kl_gamma_gumbel(p: Gamma, q: Gumbel) -> Tensor:
    a = p.concentration
    bsp = p.rate * q.scale
    lsr = q.loc / q.scale
    t1 = (a - 1.0) * ops.digamma(a) - ops.lgamma(a) - a
    t2 = ops.log(bsp) + a / bsp
    t3 = ops.exp(lsr) * ops.pow(1.0 + ops.reciprocal(bsp), ops.neg(a)) - lsr
    return t1 + t2 + t3


@register_kl(Gamma, Normal)
def _kl_gamma_normal(p: Gamma, q: Normal) -> Tensor:
    a = p.concentration
    var = q.scale * q.scale
    b2 = p.rate * p.rate
    t1 = 0.5 * ops.log(b2 * var * 2.0 * math.pi) - a - ops.lgamma(a)
    t2 = 0.5 * (a * a + a) / b2
    t3 = q.loc * a / p.rate
    t4 = 0.5 * q.loc * q.loc
    return t1 + (a - 1.0) * ops.digamma(a) + (t2 - t3 + t4) / var


@register_kl(Gumbel, Beta)
@register_kl(Gumbel, ContinuousBernoulli)
@register_kl(Gumbel, Exponential)
@register_kl(Gumbel, Gamma)
@register_kl(Gumbel, Pareto)
@register_kl(Gumbel, Uniform)
def _kl_gumbel_infinity(p: Gumbel, q: Any) -> Tensor:
    return _inf_like(p.loc)


@register_kl(Gumbel, Normal)
def _kl_gumbel_normal(p: Gumbel, q: Normal) -> Tensor:
    ratio = p.scale / q.scale
    t1 = ops.log(ratio / math.sqrt(2 * math.pi))
    t2 = ops.square(math.pi * ratio * 0.5) / 3.0
    t3 = ops.square((p.loc + p.scale * EULER_GAMMA - q.loc) / q.scale) * 0.5
    return ops.neg(t1) + t2 + t3 - (EULER_GAMMA + 1)


@register_kl(Laplace, Beta)
@register_kl(Laplace, ContinuousBernoulli)
@register_kl(Laplace, Exponential)
@register_kl(Laplace, Gamma)
@register_kl(Laplace, Pareto)
@register_kl(Laplace, Uniform)
def _kl_laplace_infinity(p: Laplace, q: Any) -> Tensor:
    return _inf_like(p.loc)


@register_kl(Laplace, Normal)
def _kl_laplace_normal(p: Laplace, q: Normal) -> Tensor:
    var = q.scale * q.scale
    ratio = p.scale * p.scale / var
    t1 = 0.5 * ops.log(2.0 * ratio / math.pi)
    return (ops.neg(t1) + ratio + (0.5 * p.loc * p.loc - p.loc * q.loc + 0.5 * q.loc * q.loc) / var - 1.0)


@register_kl(Normal, Beta)
@register_kl(Normal, ContinuousBernoulli)
@register_kl(Normal, Exponential)
@register_kl(Normal, Gamma)
@register_kl(Normal, Pareto)
@register_kl(Normal, Uniform)
def _kl_normal_infinity(p: Normal, q: Any) -> Tensor:
    return _inf_like(p.loc)


@register_kl(Normal, Gumbel)
def _kl_normal_gumbel(p: Normal, q: Gumbel) -> Tensor:
    msr = p.loc / q.scale
    vsr = ops.square(p.scale / q.scale)
    lsr = q.loc / q.scale
    t1 = ops.log(vsr) * 0.5
    t2 = msr - lsr
    t3 = ops.exp(ops.neg(msr) + 0.5 * vsr + lsr)
    return ops.neg(t1) + t2 + t3 - (0.5 * (1 + math.log(2 * math.pi)))


@register_kl(Normal, Laplace)
def _kl_normal_laplace(p: Normal, q: Laplace) -> Tensor:
    loc_diff = p.loc - q.loc
    ratio = p.scale / q.scale
    lds = loc_diff / p.scale
    t2 = math.sqrt(2 / math.pi) * p.scale * ops.exp(-0.5 * lds * lds)
    t3 = loc_diff * ops.erf(math.sqrt(0.5) * lds)
    return ops.neg(ops.log(ratio)) + (t2 + t3) / q.scale - (0.5 * (1 + math.log(0.5 * math.pi)))


@register_kl(Pareto, Beta)
@register_kl(Pareto, ContinuousBernoulli)
@register_kl(Pareto, Uniform)
def _kl_pareto_infinity(p: Pareto, q: Any) -> Tensor:
    return _inf_like(p.scale)


@register_kl(Pareto, Exponential)
def _kl_pareto_exponential(p: Pareto, q: Exponential) -> Tensor:
    srp = p.scale * q.rate
    result = ops.log(p.alpha / srp) - ops.reciprocal(p.alpha) + p.alpha * srp / (p.alpha - 1.0) - 1.0
    return ops.where(ops.le(p.alpha, 1.0), math.inf, result)


@register_kl(Pareto, Gamma)
def _kl_pareto_gamma(p: Pareto, q: Gamma) -> Tensor:
    common = ops.log(p.scale) + ops.reciprocal(p.alpha)
    t1 = ops.log(p.alpha) - common
    t2 = ops.lgamma(q.concentration) - q.concentration * ops.log(q.rate)
    t3 = (1.0 - q.concentration) * common
    t4 = q.rate * p.alpha * p.scale / (p.alpha - 1.0)
    return ops.where(ops.le(p.alpha, 1.0), math.inf, t1 + t2 + t3 + t4 - 1.0)


@register_kl(Pareto, Normal)
def _kl_pareto_normal(p: Pareto, q: Normal) -> Tensor:
    var = 2.0 * q.scale * q.scale
    common = p.scale / (p.alpha - 1.0)
    t1 = ops.log(math.sqrt(2 * math.pi) * q.scale * p.alpha / p.scale)
    t2 = ops.reciprocal(p.alpha)
    t3 = p.alpha * common * common / (p.alpha - 2.0)
    t4 = ops.square(p.alpha * common - q.loc)
    return ops.where(ops.le(p.alpha, 2.0), math.inf, t1 - t2 + (t3 + t4) / var - 1.0)


@register_kl(Poisson, Bernoulli)
@register_kl(Poisson, Binomial)
def _kl_poisson_infinity(p: Poisson, q: Any) -> Tensor:
    return _inf_like(p.rate)


@register_kl(Uniform, Beta)
def _kl_uniform_beta(p: Uniform, q: Beta) -> Tensor:
    common = p.high - p.low
    t1 = ops.log(common)
    t2 = (q.concentration1 - 1.0) * (_x_log_x(p.high) - _x_log_x(p.low) - common) / common
    t3 = (q.concentration0 - 1.0) * (_x_log_x(1.0 - p.high) - _x_log_x(1.0 - p.low) + common) / common
    t4 = ops.lgamma(q.concentration1) + ops.lgamma(q.concentration0) - ops.lgamma(q.concentration1 + q.concentration0)
    result = t3 + t4 - t1 - t2
    return ops.where(ops.logical_or(ops.gt(p.high, 1.0), ops.lt(p.low, 0.0)), math.inf, result)


@register_kl(Uniform, Exponential)
def _kl_uniform_exponential(p: Uniform, q: Exponential) -> Tensor:
    result = q.rate * (p.high + p.low) / 2.0 - ops.log((p.high - p.low) * q.rate)
    return ops.where(ops.lt(p.low, 0.0), math.inf, result)


@register_kl(Uniform, Gamma)
def _kl_uniform_gamma(p: Uniform, q: Gamma) -> Tensor:
    common = p.high - p.low
    t1 = ops.log(common)
    t2 = ops.lgamma(q.concentration) - q.concentration * ops.log(q.rate)
    t3 = (1.0 - q.concentration) * (_x_log_x(p.high) - _x_log_x(p.low) - common) / common
    t4 = q.rate * (p.high + p.low) / 2.0
    return ops.where(ops.lt(p.low, 0.0), math.inf, ops.neg(t1) + t2 + t3 + t4)


@register_kl(Uniform, Gumbel)
def _kl_uniform_gumbel(p: Uniform, q: Gumbel) -> Tensor:
    common = q.scale / (p.high - p.low)
    hld, lld = (p.high - q.loc) / q.scale, (p.low - q.loc) / q.scale
    t1 = ops.log(common) + 0.5 * (hld + lld)
    t2 = common * (ops.exp(ops.neg(hld)) - ops.exp(ops.neg(lld)))
    return t1 - t2


@register_kl(Uniform, Normal)
def _kl_uniform_normal(p: Uniform, q: Normal) -> Tensor:
    common = p.high - p.low
    t1 = ops.log(math.sqrt(math.pi * 2) * q.scale / common)
    t2 = common * common / 12.0
    t3 = ops.square((p.high + p.low - 2.0 * q.loc) / 2.0)
    return t1 + 0.5 * (t2 + t3) / (q.scale * q.scale)


@register_kl(Uniform, Pareto)
def _kl_uniform_pareto(p: Uniform, q: Pareto) -> Tensor:
    width = p.high - p.low
    t1 = ops.log(q.alpha * ops.pow(q.scale, q.alpha) * width)
    t2 = (_x_log_x(p.high) - _x_log_x(p.low) - width) / width
    return ops.where(ops.lt(p.low, q.scale), math.inf, t2 * (q.alpha + 1.0) - t1)


@register_kl(ExponentialFamily, ExponentialFamily)
def _kl_expfamily_expfamily(p: ExponentialFamily, q: ExponentialFamily) -> Tensor:
    """The Bregman divergence of the log normalizer, F(theta_q) - F(theta_p) - <theta_q - theta_p, grad F(theta_p)>,
    for two members of one family without a closed form of their own (torch's fallback)."""
    if type(p) is not type(q):
        raise NotImplementedError("The cross KL-divergence between different exponential families cannot be "
                                  "computed using Bregman divergences")
    p_nparams, lg_normal, grads = p._log_normalizer_and_grads()
    q_nparams = q._natural_params
    result = ops.sub(q._log_normalizer(*q_nparams), lg_normal)
    for pnp, qnp, g in zip(p_nparams, q_nparams, grads):
        term = ops.mul(ops.sub(qnp, pnp), g)  # summed over its own dims past the batch (torch sums the
        # rightmost len(event_shape), which for a parameter of the batch's shape, as Wishart's df, crosses the batch)
        shape = tuple(np.broadcast_shapes(p.batch_shape, q.batch_shape))
        result = ops.sub(result, ops.sum(ops.reshape(ops.broadcast_to(term, shape + term.shape[len(shape):])
                                                     if term.ndim >= len(shape) else term, shape + (-1,)), -1))
    return result

"""`avalon.distributions`: torch.distributions under torch's names, arguments and formulas.

Distributions: Bernoulli, Beta, Binomial, Categorical, Cauchy, Chi2, ContinuousBernoulli, Dirichlet,
Exponential, FisherSnedecor, Gamma, GeneralizedPareto, Geometric, Gumbel, HalfCauchy, HalfNormal,
Independent, InverseGamma, Kumaraswamy, Laplace, LKJCholesky, LogisticNormal, LogNormal,
LowRankMultivariateNormal, MixtureSameFamily, Multinomial, MultivariateNormal, NegativeBinomial, Normal,
OneHotCategorical, OneHotCategoricalStraightThrough, Pareto, Poisson, RelaxedBernoulli,
RelaxedOneHotCategorical (with LogitRelaxedBernoulli and ExpRelaxedCategorical), StudentT,
TransformedDistribution, Uniform, VonMises, Weibull and Wishart, with the ExponentialFamily base
class (Bernoulli, Beta, Chi2, ContinuousBernoulli, Dirichlet, Exponential, Gamma, Normal, Poisson and
Wishart are members, as in torch); `kl_divergence` / `register_kl` with torch's closed forms; the
`constraints` and `transforms` submodules (ExpTransform, AffineTransform, TanhTransform,
CorrCholeskyTransform, CatTransform, StackTransform, ...
`TransformedDistribution(Normal(mu, std), [TanhTransform(cache_size=1)])` is SAC's squashed Gaussian).

Sampling draws from Avalon's seeded generator through the `random` op, so inside `av.compile` every
call draws afresh, as eagerly, and `av.manual_seed` repeats a run (the streams are Avalon's, not
torch's). Rejection samplers (Gamma, Beta, Dirichlet, Poisson, Binomial, VonMises) run a fixed number of
vectorized rounds (`_samplers`). `rsample` is reparameterized where torch's is: location-scale and
inverse-CDF draws differentiate directly, Gamma draws (and Chi2, StudentT, Beta, Dirichlet through
them) carry the implicit reparameterization gradient -dF/dalpha / f, computed to ~1e-12. `sample`
carries no gradient. `log_prob`, `cdf`, `entropy` and the KL divergences are ordinary differentiable
expressions, so a REINFORCE loss `-(dist.log_prob(actions) * returns).sum()` differentiates under
`av.grad` like torch's autograd.

Arguments are checked as torch checks them (`validate_args`, on by default, as in torch) wherever
their values are known: eagerly, not for traced values inside a compiled function.
"""
from . import constraints, kl, transforms
from .constraints import Constraint
from .continuous import (
    Beta,
    Cauchy,
    Chi2,
    ContinuousBernoulli,
    Dirichlet,
    Exponential,
    Gamma,
    Laplace,
    LowRankMultivariateNormal,
    StudentT,
    VonMises,
)
from .core import (
    Bernoulli,
    Categorical,
    Distribution,
    ExponentialFamily,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
    OneHotCategorical,
    Uniform,
    kl_divergence,
    register_kl,
)
from .discrete import Binomial, Geometric, Multinomial, NegativeBinomial, OneHotCategoricalStraightThrough, Poisson
from .extra import FisherSnedecor, GeneralizedPareto, InverseGamma, LKJCholesky, LogisticNormal, Wishart
from .transformed import (
    ExpRelaxedCategorical,
    Gumbel,
    HalfCauchy,
    HalfNormal,
    Kumaraswamy,
    LogitRelaxedBernoulli,
    LogNormal,
    Pareto,
    RelaxedBernoulli,
    RelaxedOneHotCategorical,
    TransformedDistribution,
    Weibull,
)
from .transforms import (
    AbsTransform,
    AffineTransform,
    CatTransform,
    ComposeTransform,
    CorrCholeskyTransform,
    CumulativeDistributionTransform,
    ExpTransform,
    IndependentTransform,
    LowerCholeskyTransform,
    PositiveDefiniteTransform,
    PowerTransform,
    ReshapeTransform,
    SigmoidTransform,
    SoftmaxTransform,
    SoftplusTransform,
    StackTransform,
    StickBreakingTransform,
    TanhTransform,
    Transform,
    identity_transform,
)

__all__ = ["AbsTransform", "AffineTransform", "Bernoulli", "Beta", "Binomial", "CatTransform", "Categorical",
           "Cauchy", "Chi2", "ComposeTransform", "Constraint", "ContinuousBernoulli", "CorrCholeskyTransform",
           "CumulativeDistributionTransform", "Dirichlet", "Distribution", "ExpRelaxedCategorical", "ExpTransform",
           "Exponential", "ExponentialFamily", "FisherSnedecor", "Gamma", "GeneralizedPareto", "Geometric",
           "Gumbel", "HalfCauchy", "HalfNormal", "Independent", "IndependentTransform", "InverseGamma",
           "Kumaraswamy", "LKJCholesky", "Laplace", "LogNormal", "LogisticNormal", "LogitRelaxedBernoulli",
           "LowRankMultivariateNormal", "LowerCholeskyTransform", "MixtureSameFamily", "Multinomial",
           "MultivariateNormal", "NegativeBinomial", "Normal", "OneHotCategorical",
           "OneHotCategoricalStraightThrough", "Pareto", "Poisson", "PositiveDefiniteTransform", "PowerTransform",
           "RelaxedBernoulli", "RelaxedOneHotCategorical", "ReshapeTransform", "SigmoidTransform",
           "SoftmaxTransform", "SoftplusTransform", "StackTransform", "StickBreakingTransform", "StudentT",
           "TanhTransform", "Transform", "TransformedDistribution", "Uniform", "VonMises", "Weibull", "Wishart",
           "constraints", "identity_transform", "kl", "kl_divergence", "register_kl", "transforms"]

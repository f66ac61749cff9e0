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
their values are known, and by `check` ops (ValueCheckError) when a compiled or differentiated graph runs.
"""
import sys as _sys
import types as _types

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

# torch's per-family submodules (`torch.distributions.one_hot_categorical.OneHotCategorical`,
# `from torch.distributions.normal import Normal`), which ported code names: each a module holding its classes
_TORCH_SUBMODULES = {
    "bernoulli": ("Bernoulli",), "beta": ("Beta",), "binomial": ("Binomial",), "categorical": ("Categorical",),
    "cauchy": ("Cauchy",), "chi2": ("Chi2",), "continuous_bernoulli": ("ContinuousBernoulli",),
    "dirichlet": ("Dirichlet",), "distribution": ("Distribution",), "exp_family": ("ExponentialFamily",),
    "exponential": ("Exponential",), "fishersnedecor": ("FisherSnedecor",),
    "generalized_pareto": ("GeneralizedPareto",), "gamma": ("Gamma",), "geometric": ("Geometric",),
    "gumbel": ("Gumbel",), "half_cauchy": ("HalfCauchy",), "half_normal": ("HalfNormal",),
    "independent": ("Independent",), "inverse_gamma": ("InverseGamma",), "kumaraswamy": ("Kumaraswamy",),
    "laplace": ("Laplace",), "lkj_cholesky": ("LKJCholesky",), "log_normal": ("LogNormal",),
    "logistic_normal": ("LogisticNormal",), "lowrank_multivariate_normal": ("LowRankMultivariateNormal",),
    "mixture_same_family": ("MixtureSameFamily",), "multinomial": ("Multinomial",),
    "multivariate_normal": ("MultivariateNormal",), "negative_binomial": ("NegativeBinomial",),
    "normal": ("Normal",), "one_hot_categorical": ("OneHotCategorical", "OneHotCategoricalStraightThrough"),
    "pareto": ("Pareto",), "poisson": ("Poisson",),
    "relaxed_bernoulli": ("RelaxedBernoulli", "LogitRelaxedBernoulli"),
    "relaxed_categorical": ("RelaxedOneHotCategorical", "ExpRelaxedCategorical"), "studentT": ("StudentT",),
    "transformed_distribution": ("TransformedDistribution",), "uniform": ("Uniform",),
    "von_mises": ("VonMises",), "weibull": ("Weibull",), "wishart": ("Wishart",),
}
for _name, _classes in _TORCH_SUBMODULES.items():
    _module = _types.ModuleType(f"{__name__}.{_name}", f"torch.distributions.{_name}'s classes")
    for _cls in _classes:
        setattr(_module, _cls, globals()[_cls])
    _module.__all__ = list(_classes)
    globals()[_name] = _sys.modules[_module.__name__] = _module
del _name, _classes, _module, _cls

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

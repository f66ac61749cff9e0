"""Distributions check traced parameters and values as they check known ones: torch raises a ValueError
for an invalid parameter (Normal's negative scale) or a `log_prob` value outside the support, and Avalon
raises the same message eagerly and (a `check` op, ValueCheckError: a ValueError) when a compiled
function, a gradient or a compiled step runs, instead of computing nan or a meaningless number in silence.
validate_args=False adds no check op."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.distributions as td

import avalon as av
from avalon import distributions as ad
from avalon.ir.reference import LinAlgError, ValueCheckError

pytestmark = pytest.mark.usefixtures("torch_validates")  # (dynamo switches torch's validation off process-wide)

F32 = np.float32
POS3 = np.array([0.5, 1.5, 2.0], F32)
NEG3 = np.array([0.5, -1.0, 2.0], F32)
REAL3 = np.array([0.3, -0.7, 1.1], F32)
UNIT3 = np.array([0.2, 0.5, 0.9], F32)
SIMPLEX23 = np.array([[0.2, 0.3, 0.5], [0.6, 0.1, 0.3]], F32)
PD = np.array([[2.0, 0.5], [0.5, 1.0]], F32)
NOT_PD = np.array([[1.0, 2.0], [2.0, 1.0]], F32)


def _param_msg(name, shape, dist, constraint):
    return re.escape(f"Expected parameter {name} (Tensor of shape {shape}) of distribution {dist} to satisfy the "
                     f"constraint {constraint}, but found invalid values")


def _value_msg(shape, support, dist):
    return re.escape(f"Expected value argument (Tensor of shape {shape}) to be within the support ({support}) of the "
                     f"distribution {dist}, but found invalid values")


# (id, fn(D, p) -> a tensor (D: torch.distributions or avalon.distributions, p: the parameters), valid parameters,
#  the invalid ones replacing them, the message (a regex), the float parameter differentiated)
CASES = [
    ("Normal-scale", lambda D, p: D.Normal(p["loc"], p["scale"]).log_prob(p["x"]),
     dict(loc=REAL3, scale=POS3, x=UNIT3), dict(scale=NEG3), _param_msg("scale", (3,), "Normal", "GreaterThan(lower_bound=0.0)"), "loc"),
    ("Normal-value-nan", lambda D, p: D.Normal(p["loc"], p["scale"]).log_prob(p["x"]),
     dict(loc=REAL3, scale=POS3, x=UNIT3), dict(x=np.array([0.1, np.nan, 0.2], F32)), _value_msg((3,), "Real()", "Normal"),
     "loc"),
    ("Normal-cdf-nan", lambda D, p: D.Normal(p["loc"], p["scale"]).cdf(p["x"]),
     dict(loc=REAL3, scale=POS3, x=UNIT3), dict(x=np.array([0.1, np.nan, 0.2], F32)), _value_msg((3,), "Real()", "Normal"),
     "scale"),
    ("Categorical-probs", lambda D, p: D.Categorical(probs=p["p"]).entropy(),
     dict(p=SIMPLEX23), dict(p=np.array([[0.2, 0.3, 0.5], [0.5, -1.0, 2.0]], F32)),
     _param_msg("probs", (2, 3), "Categorical", "Simplex()"), "p"),
    ("Categorical-value", lambda D, p: D.Categorical(probs=p["p"]).log_prob(p["v"]),
     dict(p=SIMPLEX23, v=np.array([0, 2], np.int64)), dict(v=np.array([0, 3], np.int64)),
     _value_msg((2,), "IntegerInterval(lower_bound=0, upper_bound=2)", "Categorical"), "p"),
    ("Bernoulli-probs", lambda D, p: D.Bernoulli(probs=p["p"]).log_prob(p["v"]),
     dict(p=UNIT3, v=np.array([0.0, 1.0, 1.0], F32)), dict(p=np.array([0.2, 1.5, 0.3], F32)),
     _param_msg("probs", (3,), "Bernoulli", "Interval(lower_bound=0.0, upper_bound=1.0)"), "p"),
    ("Bernoulli-value", lambda D, p: D.Bernoulli(probs=p["p"]).log_prob(p["v"]),
     dict(p=UNIT3, v=np.array([0.0, 1.0, 1.0], F32)), dict(v=np.array([0.0, 1.0, 2.0], F32)),
     _value_msg((3,), "Boolean()", "Bernoulli"), "p"),
    ("Bernoulli-logits-nan", lambda D, p: D.Bernoulli(logits=p["l"]).entropy(),
     dict(l=REAL3), dict(l=np.array([0.2, np.nan, 0.3], F32)), _param_msg("logits", (3,), "Bernoulli", "Real()"), "l"),
    ("Beta-concentration", lambda D, p: D.Beta(p["a"], p["b"]).log_prob(p["x"]),
     dict(a=POS3, b=POS3[::-1].copy(), x=UNIT3), dict(a=NEG3),  # (torch's names its inner Dirichlet's stack;
     _param_msg("concentration1", (3,), "Beta", "GreaterThan(lower_bound=0.0)"), "b"),  # Avalon the user's parameter)
    ("Gamma-rate", lambda D, p: D.Gamma(p["a"], p["r"]).log_prob(p["x"]),
     dict(a=POS3, r=POS3, x=POS3), dict(r=NEG3), _param_msg("rate", (3,), "Gamma", "GreaterThan(lower_bound=0.0)"), "a"),
    ("Gamma-value", lambda D, p: D.Gamma(p["a"], p["r"]).log_prob(p["x"]),
     dict(a=POS3, r=POS3, x=POS3), dict(x=NEG3), _value_msg((3,), "GreaterThanEq(lower_bound=0.0)", "Gamma"), "a"),
    ("Dirichlet-concentration", lambda D, p: D.Dirichlet(p["c"]).log_prob(p["x"]),
     dict(c=SIMPLEX23 * 3, x=SIMPLEX23), dict(c=np.array([[1.0, 2.0, 3.0], [1.0, -2.0, 3.0]], F32)),
     _param_msg("concentration", (2, 3), "Dirichlet", "IndependentConstraint(GreaterThan(lower_bound=0.0), 1)"), "c"),
    ("Dirichlet-value", lambda D, p: D.Dirichlet(p["c"]).log_prob(p["x"]),
     dict(c=SIMPLEX23 * 3, x=SIMPLEX23), dict(x=SIMPLEX23 * 2), _value_msg((2, 3), "Simplex()", "Dirichlet"), "c"),
    ("MVN-covariance", lambda D, p: D.MultivariateNormal(p["m"], covariance_matrix=p["c"]).log_prob(p["x"]),
     dict(m=REAL3[:2], c=PD, x=UNIT3[:2]), dict(c=NOT_PD),
     _param_msg("covariance_matrix", (2, 2), "MultivariateNormal", "PositiveDefinite()"), "c"),
    ("MVN-precision", lambda D, p: D.MultivariateNormal(p["m"], precision_matrix=p["c"]).log_prob(p["x"]),
     dict(m=REAL3[:2], c=PD, x=UNIT3[:2]), dict(c=NOT_PD),
     _param_msg("precision_matrix", (2, 2), "MultivariateNormal", "PositiveDefinite()"), "m"),
    ("MVN-scale_tril", lambda D, p: D.MultivariateNormal(p["m"], scale_tril=p["c"]).log_prob(p["x"]),
     dict(m=REAL3[:2], c=np.linalg.cholesky(PD), x=UNIT3[:2]), dict(c=np.array([[1.0, 0.0], [0.5, -1.0]], F32)),
     _param_msg("scale_tril", (2, 2), "MultivariateNormal", "LowerCholesky()"), "c"),
    ("Uniform-low-high", lambda D, p: D.Uniform(p["lo"], p["hi"]).entropy(),
     dict(lo=REAL3, hi=REAL3 + 1), dict(hi=REAL3 - 0.5),
     _param_msg("low", (3,), "Uniform", "LessThan(upper_bound=high)"), "hi"),
    ("Uniform-value", lambda D, p: D.Uniform(p["lo"], p["hi"]).log_prob(p["x"]),
     dict(lo=REAL3, hi=REAL3 + 1, x=REAL3 + 0.5), dict(x=REAL3 + 2), _value_msg((3,), "Interval(low, high)", "Uniform"),
     "hi"),
    ("Uniform-cdf", lambda D, p: D.Uniform(p["lo"], p["hi"]).cdf(p["x"]),
     dict(lo=REAL3, hi=REAL3 + 1, x=REAL3 + 0.5), dict(x=REAL3 - 2), _value_msg((3,), "Interval(low, high)", "Uniform"),
     "hi"),
    ("Binomial-probs", lambda D, p: D.Binomial(5, probs=p["p"]).log_prob(p["k"]),
     dict(p=UNIT3, k=np.array([0.0, 2.0, 5.0], F32)), dict(p=np.array([0.2, -0.1, 0.3], F32)),
     _param_msg("probs", (3,), "Binomial", "Interval(lower_bound=0.0, upper_bound=1.0)"), "p"),
    ("Binomial-value", lambda D, p: D.Binomial(5, probs=p["p"]).log_prob(p["k"]),
     dict(p=UNIT3, k=np.array([0.0, 2.0, 5.0], F32)), dict(k=np.array([0.0, 2.0, 6.0], F32)),
     re.escape("Expected value argument (Tensor of shape (3,)) to be within the support (IntegerInterval(lower_bound=0, "
               "upper_bound=") + ".*" + re.escape(") of the distribution Binomial, but found invalid values"), "p"),
    ("Poisson-rate", lambda D, p: D.Poisson(p["r"]).log_prob(p["k"]),
     dict(r=POS3, k=np.array([0.0, 2.0, 5.0], F32)), dict(r=NEG3),
     _param_msg("rate", (3,), "Poisson", "GreaterThanEq(lower_bound=0.0)"), "r"),
    ("Poisson-value", lambda D, p: D.Poisson(p["r"]).log_prob(p["k"]),
     dict(r=POS3, k=np.array([0.0, 2.0, 5.0], F32)), dict(k=np.array([0.0, 1.5, 5.0], F32)),
     _value_msg((3,), "IntegerGreaterThan(lower_bound=0)", "Poisson"), "r"),
    ("OneHotCategorical-value", lambda D, p: D.OneHotCategorical(probs=p["p"]).log_prob(p["v"]),
     dict(p=SIMPLEX23, v=np.eye(3, dtype=F32)[[2, 0]]), dict(v=np.array([[1, 1, 0], [1, 0, 0]], F32)),
     _value_msg((2, 3), "OneHot()", "OneHotCategorical"), "p"),
    ("Exponential-rate", lambda D, p: D.Exponential(p["r"]).log_prob(p["x"]),
     dict(r=POS3, x=POS3), dict(r=NEG3), _param_msg("rate", (3,), "Exponential", "GreaterThan(lower_bound=0.0)"), "r"),
    ("Laplace-scale", lambda D, p: D.Laplace(p["m"], p["s"]).cdf(p["x"]),
     dict(m=REAL3, s=POS3, x=UNIT3), dict(s=NEG3), _param_msg("scale", (3,), "Laplace", "GreaterThan(lower_bound=0.0)"),
     "m"),
    ("LogNormal-value", lambda D, p: D.LogNormal(p["m"], p["s"]).log_prob(p["x"]),
     dict(m=REAL3, s=POS3, x=POS3), dict(x=NEG3), _value_msg((3,), "GreaterThan(lower_bound=0.0)", "LogNormal"), "m"),
    ("StudentT-df", lambda D, p: D.StudentT(p["df"], p["m"], p["s"]).log_prob(p["x"]),
     dict(df=POS3 + 2, m=REAL3, s=POS3, x=UNIT3), dict(df=NEG3),
     _param_msg("df", (3,), "StudentT", "GreaterThan(lower_bound=0.0)"), "m"),
    ("HalfNormal-scale", lambda D, p: D.HalfNormal(p["s"]).log_prob(p["x"]),
     dict(s=POS3, x=POS3), dict(s=NEG3), _param_msg("scale", (3,), "HalfNormal", "GreaterThan(lower_bound=0.0)"), "s"),
    ("Independent-Normal", lambda D, p: D.Independent(D.Normal(p["m"], p["s"]), 1).log_prob(p["x"]),
     dict(m=REAL3, s=POS3, x=UNIT3), dict(s=NEG3), _param_msg("scale", (3,), "Normal", "GreaterThan(lower_bound=0.0)"),
     "m"),
    ("Mixture-weights", lambda D, p: D.MixtureSameFamily(D.Categorical(probs=p["w"]), D.Normal(p["m"], p["s"]))
     .log_prob(p["x"]), dict(w=UNIT3 / UNIT3.sum(), m=REAL3, s=POS3, x=UNIT3[:, None]), dict(w=NEG3),
     _param_msg("probs", (3,), "Categorical", "Simplex()"), "m"),
    ("Geometric-probs-zero", lambda D, p: D.Geometric(probs=p["p"]).log_prob(p["k"]),
     dict(p=UNIT3, k=np.array([0.0, 2.0, 5.0], F32)), dict(p=np.array([0.2, 0.0, 0.3], F32)),
     re.escape("Expected parameter probs (Tensor of shape (3,)) of distribution Geometric") + ".* to be positive", "p"),
]
IDS = [c[0] for c in CASES]


def _torch(fn, params, grad_of=None):
    ts = {k: torch.tensor(v, requires_grad=(k == grad_of)) for k, v in params.items()}
    out = fn(td, ts)
    if grad_of is None:
        return out.detach().numpy()
    out.sum().backward()
    return out.detach().numpy(), ts[grad_of].grad.numpy()


def _av_fn(fn, names):
    return lambda *args: fn(ad, dict(zip(names, args)))


def _close(a, b, tol=2e-5):
    np.testing.assert_allclose(np.asarray(a.numpy() if isinstance(a, av.Tensor) else a), b, rtol=tol, atol=tol)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_invalid_parameters_and_values_raise_eagerly_and_compiled(case):
    _, fn, valid, bad, msg, _ = case
    params = {**valid, **bad}
    with pytest.raises(ValueError):  # the oracle refuses it
        _torch(fn, params)
    with pytest.raises(ValueError, match=msg):
        fn(ad, {k: av.tensor(v) for k, v in params.items()})
    names = list(valid)
    f = av.compile(_av_fn(fn, names))
    _close(f(*[av.tensor(valid[k]) for k in names]), _torch(fn, valid))  # the same values as before
    with pytest.raises(ValueCheckError, match=msg):
        f(*[av.tensor(params[k]) for k in names])
    _close(f(*[av.tensor(valid[k]) for k in names]), _torch(fn, valid))  # and still, after the error


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_invalid_parameters_and_values_raise_under_grad(case):
    _, fn, valid, bad, msg, wrt = case
    names = list(valid)
    k = names.index(wrt)
    g = av.grad(lambda *args: _av_fn(fn, names)(*args).sum(), argnums=k)
    ref_value, ref_grad = _torch(fn, valid, grad_of=wrt)
    _close(g(*[valid[n] for n in names]), ref_grad, 1e-4)
    with pytest.raises(ValueCheckError, match=msg):
        g(*[{**valid, **bad}[n] for n in names])


@pytest.mark.parametrize("name", ["Normal-scale", "Categorical-value", "MVN-covariance", "Uniform-value"])
def test_invalid_raise_on_the_cpu_backend(name):
    _, fn, valid, bad, msg, _ = CASES[IDS.index(name)]
    names = list(valid)
    f = av.compile(_av_fn(fn, names), backend="cpu")
    _close(f(*[av.tensor(valid[k]) for k in names]), _torch(fn, valid))
    with pytest.raises(ValueCheckError, match=msg):
        f(*[av.tensor({**valid, **bad}[k]) for k in names])


def test_a_compiled_training_step_refuses_a_negative_scale_as_torch():
    """A Gaussian policy's scale from a parameter times an input: the step matches torch's, and with a
    negative scale raises as torch's, updating nothing."""
    model = av.nn.Module()
    model.loc = av.nn.Parameter(av.tensor(REAL3))
    model.scale = av.nn.Parameter(av.tensor(POS3))
    opt = av.optim.SGD(model.parameters(), lr=0.1)

    def step(m, o, x, k):
        loss, grads = av.value_and_grad(lambda mm: -ad.Normal(mm.loc, mm.scale * k).log_prob(x).sum())(m)
        o.step(grads)
        return loss

    f = av.compile(step)
    tl, ts = torch.tensor(REAL3, requires_grad=True), torch.tensor(POS3, requires_grad=True)
    t_loss = -td.Normal(tl, ts).log_prob(torch.tensor(UNIT3)).sum()
    t_loss.backward()
    _close(f(model, opt, av.tensor(UNIT3), av.tensor(np.ones(3, F32))), t_loss.detach().numpy())
    _close(model.loc.numpy(), (tl - 0.1 * tl.grad).detach().numpy())
    before = model.scale.numpy().copy()
    sign = np.array([1.0, -1.0, 1.0], F32)
    with pytest.raises(ValueError):
        td.Normal(tl, ts * torch.tensor(sign))
    with pytest.raises(ValueCheckError, match=_param_msg("scale", (3,), "Normal", "GreaterThan(lower_bound=0.0)")):
        f(model, opt, av.tensor(UNIT3), av.tensor(sign))
    assert np.array_equal(model.scale.numpy(), before)  # nothing was updated by the failed step


def test_a_non_positive_definite_covariance_is_torchs_value_error_not_a_linalg_error():
    """torch's MultivariateNormal checks covariance_matrix against `positive_definite` (a ValueError) before
    its Cholesky factorization would raise a LinAlgError: compiled, the constraint's check reads the matrix
    first; with validate_args=False the factorization's own LinAlgError remains, as torch's."""
    fn = CASES[IDS.index("MVN-covariance")][1]
    f = av.compile(lambda m, c, x: fn(ad, dict(m=m, c=c, x=x)))
    args = [av.tensor(REAL3[:2]), av.tensor(NOT_PD), av.tensor(UNIT3[:2])]
    with pytest.raises(ValueCheckError) as e:
        f(*args)
    assert not isinstance(e.value, LinAlgError)
    g = av.compile(lambda m, c, x: ad.MultivariateNormal(m, covariance_matrix=c, validate_args=False).log_prob(x))
    with pytest.raises(torch.linalg.LinAlgError):
        td.MultivariateNormal(torch.tensor(REAL3[:2]), covariance_matrix=torch.tensor(NOT_PD), validate_args=False)
    with pytest.raises(LinAlgError):
        g(*args)


@pytest.mark.parametrize("name", ["Normal-scale", "Categorical-probs", "Bernoulli-value", "Uniform-value", "Gamma-rate",
                                  "Dirichlet-value", "MVN-covariance", "Poisson-value", "StudentT-df", "HalfNormal-scale"])
def test_validate_args_false_adds_no_check_op(name):
    _, fn, valid, _, _, _ = CASES[IDS.index(name)]
    names = list(valid)
    args = [av.tensor(valid[k]) for k in names]
    f = _av_fn(fn, names)
    ours = r'= check .*message = "(Expected|Value of df)'  # (a cholesky's own LinAlgError check stays, as torch's)
    assert re.search(ours, str(av.trace(f, *args)))  # (checked by default)
    ad.Distribution.set_default_validate_args(False)
    torch_default = td.Distribution._validate_args
    td.Distribution.set_default_validate_args(False)
    try:
        text = str(av.trace(f, *args))
        assert not re.search(ours, text), text
        expected = _torch(fn, valid)
        _close(av.compile(f)(*args), expected)
    finally:
        ad.Distribution.set_default_validate_args(True)
        td.Distribution.set_default_validate_args(torch_default)


def test_validate_args_false_argument_adds_no_check_op_and_computes():
    f = lambda m, s, x: ad.Normal(m, s, validate_args=False).log_prob(x)  # noqa: E731
    args = [av.tensor(REAL3), av.tensor(NEG3), av.tensor(UNIT3)]
    assert "= check " not in str(av.trace(f, *args))
    expected = td.Normal(torch.tensor(REAL3), torch.tensor(NEG3), validate_args=False).log_prob(torch.tensor(UNIT3))
    _close(av.compile(f)(*args), expected.numpy())  # (nan where the scale is negative, as torch's)

"""The rest of torch.distributions in `avalon.distributions`, against torch on random float64
parameters: log_prob, entropy, moments, cdf/icdf, shapes and expand (one table); gradients of
log_prob + entropy through av.grad against torch's autograd; samplers' shapes and means (2000 draws,
within 4.5 standard errors); rsample gradients against the implicit-function identity
dx/dtheta = -(dF/dtheta)(x) / f(x) evaluated by torch at Avalon's draws (the Gamma family against
torch's `_standard_gamma_grad` and an mpmath reference); transforms; KL divergences."""
import math

import mpmath
import numpy as np
import pytest
import torch
import torch.distributions as td
from helpers import T

import avalon as av
from avalon import distributions as ad
from avalon.distributions import constraints, transforms

RNG = np.random.default_rng(7)


def close(a, b, tol=1e-9):
    a = a.numpy() if isinstance(a, av.Tensor) else np.asarray(a)
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def pos(*shape, lo=0.5, hi=2.0):
    return RNG.uniform(lo, hi, shape)


def norm(*shape):
    return RNG.standard_normal(shape)


def unit(*shape):
    return RNG.uniform(0.05, 0.95, shape)


def simplex(*shape):
    return RNG.dirichlet(np.ones(shape[-1]), shape[:-1])


# (name, parameters (arrays become tensors, Python numbers stay), a value for log_prob, options)
CASES = [
    ("Exponential", dict(rate=pos(2, 3)), pos(4, 2, 3), {}),
    ("Laplace", dict(loc=norm(3), scale=pos(3)), norm(2, 3), {}),
    ("Cauchy", dict(loc=norm(3), scale=pos(3)), norm(2, 3), {}),
    ("Gamma", dict(concentration=pos(3, lo=0.5, hi=4), rate=pos(3)), pos(2, 3, lo=0.1, hi=3), {}),
    ("Chi2", dict(df=pos(3, lo=1, hi=6)), pos(3, lo=0.1, hi=5), {"grad": False}),  # (Gamma's expressions)
    ("StudentT", dict(df=pos(4, lo=0.5, hi=6), loc=norm(4), scale=pos(4)), norm(4), {}),
    ("Beta", dict(concentration1=pos(3, lo=0.5, hi=3), concentration0=pos(3, lo=0.5, hi=3)), unit(2, 3),
     {"grad": False}),  # (Dirichlet's expressions)
    ("Dirichlet", dict(concentration=pos(2, 4, lo=0.5, hi=3)), simplex(2, 4), {}),
    ("ContinuousBernoulli", dict(probs=np.array([0.1, 0.4995, 0.7, 0.5004])), unit(4), {}),
    ("ContinuousBernoulli", dict(logits=norm(3)), unit(3), {"grad": False}),
    ("VonMises", dict(loc=norm(3), concentration=np.array([0.5, 3.0, 40.0])), norm(3), {"tol": 2e-6}),
    ("LowRankMultivariateNormal", dict(loc=norm(2, 3), cov_factor=norm(2, 3, 2), cov_diag=pos(2, 3)), norm(4, 2, 3),
     {}),
    ("LogNormal", dict(loc=norm(3), scale=pos(3)), pos(2, 3), {}),
    ("HalfNormal", dict(scale=pos(3)), pos(3), {}),
    ("HalfCauchy", dict(scale=pos(3)), pos(3), {}),
    ("Gumbel", dict(loc=norm(3), scale=pos(3)), norm(3), {}),
    ("Weibull", dict(scale=pos(3), concentration=pos(3, lo=0.6, hi=3)), pos(3), {}),
    ("Pareto", dict(scale=pos(3, lo=0.5, hi=1), alpha=pos(3, lo=2.5, hi=4)), pos(3, lo=1.0, hi=3), {}),
    ("Kumaraswamy", dict(concentration1=pos(3, lo=1.2, hi=3), concentration0=pos(3, lo=1.2, hi=3)), unit(3),
     {"skip": ("mode",)}),  # torch's Kumaraswamy.mode is nan for concentration0 > 1 (see Kumaraswamy.mode)
    ("Poisson", dict(rate=pos(3, lo=0.5, hi=8)), RNG.integers(0, 8, (2, 3)).astype(float), {}),
    ("Binomial", dict(total_count=np.array([3.0, 7.0, 10.0]), probs=unit(3)), np.array([1.0, 7.0, 4.0]),
     {"grad": False}),
    ("Binomial", dict(total_count=6, logits=norm(3)), np.array([0.0, 2.0, 6.0]), {}),
    ("Geometric", dict(probs=unit(3)), np.array([0.0, 3.0, 1.0]), {}),
    ("Geometric", dict(logits=norm(3)), np.array([2.0, 0.0, 5.0]), {"grad": False}),
    ("NegativeBinomial", dict(total_count=pos(3, lo=1, hi=5), logits=norm(3)), np.array([0.0, 3.0, 9.0]), {}),
    ("Multinomial", dict(total_count=5, probs=simplex(2, 3)), np.array([[1.0, 3.0, 1.0], [0.0, 0.0, 5.0]]),
     {"tol": 1e-7}),  # torch's Multinomial.entropy takes lgamma(n + 1) of an int64 tensor: in float32
    ("OneHotCategoricalStraightThrough", dict(logits=norm(2, 3)), np.eye(3)[[0, 2]], {}),
    ("RelaxedBernoulli", dict(temperature=np.array(0.7), probs=unit(3)), unit(3), {}),
    ("RelaxedBernoulli", dict(temperature=np.array([0.5, 1.5, 2.0]), logits=norm(3)), unit(3), {"grad": False}),
    ("RelaxedOneHotCategorical", dict(temperature=np.array(0.5), logits=norm(2, 4)), simplex(2, 4), {}),
    ("RelaxedOneHotCategorical", dict(temperature=np.array(1.3), probs=simplex(3)), simplex(3), {}),
]
IDS = [f"{c[0]}-{'-'.join(k for k in c[1] if k not in ('total_count', 'temperature'))}" for c in CASES]


def build(lib, name, ps, tensor):
    return getattr(lib, name)(**{k: tensor(v) if isinstance(v, np.ndarray) else v for k, v in ps.items()})


def torch_attr(d, attr, *args):
    try:
        out = getattr(d, attr)
        return out(*args) if callable(out) else out
    except (NotImplementedError, AttributeError):
        return None


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_values_and_gradients_match_torch(case):
    name, ps, value, opts = case
    tol = opts.get("tol", 1e-9)
    ours, theirs = build(ad, name, ps, av.tensor), build(td, name, ps, T)
    assert ours.batch_shape == tuple(theirs.batch_shape) and ours.event_shape == tuple(theirs.event_shape)
    assert ours.has_rsample == theirs.has_rsample
    close(ours.log_prob(av.tensor(value)), theirs.log_prob(T(value)), tol)
    for attr in ("mean", "variance", "stddev", "mode", "entropy", "probs", "logits", "df", "temperature"):
        want = torch_attr(theirs, attr) if attr not in opts.get("skip", ()) else None
        if want is not None and isinstance(want, torch.Tensor):
            got = getattr(ours, attr)
            close(got() if callable(got) else got, want, tol)
    for attr, arg in (("cdf", value), ("icdf", unit(*np.shape(value)))):
        want = torch_attr(theirs, attr, T(arg))
        if want is not None:
            close(getattr(ours, attr)(av.tensor(arg)), want, max(tol, 1e-8))
    # expand: the parameters broadcast to a larger batch
    big = (2,) + ours.batch_shape
    e, te = ours.expand(big), theirs.expand(big)
    assert e.batch_shape == tuple(te.batch_shape) and e.event_shape == tuple(te.event_shape)
    one = value[(0,) * (value.ndim - len(ours.batch_shape) - len(ours.event_shape))]  # batch + event shaped
    close(e.log_prob(av.tensor(one)), te.log_prob(T(one)), tol)
    # gradients of log_prob (weighted) + entropy with respect to every float parameter
    if not opts.get("grad", True):
        return
    keys = [k for k, v in ps.items() if isinstance(v, np.ndarray)]
    w = RNG.standard_normal(tuple(theirs.log_prob(T(value)).shape))
    tps = {k: (T(v).requires_grad_() if k in keys else T(v)) if isinstance(v, np.ndarray) else v for k, v in ps.items()}
    d = getattr(td, name)(**tps)
    has_entropy = torch_attr(theirs, "entropy") is not None
    tloss = (d.log_prob(T(value)) * T(w)).sum() + (d.entropy().sum() if has_entropy else 0)
    tgrads = torch.autograd.grad(tloss, [tps[k] for k in keys])
    fixed = {k: v for k, v in ps.items() if k not in keys}  # Python numbers

    def objective(value, w, *xs):
        dist = getattr(ad, name)(**fixed, **dict(zip(keys, xs)))
        return (dist.log_prob(value) * w).sum() + (dist.entropy().sum() if has_entropy else 0.0)
    grads = av.grad(objective, argnums=tuple(range(2, 2 + len(keys))))(value, w, *[ps[k] for k in keys])
    for g, tg in zip(grads, tgrads):
        close(g, tg, max(tol, 1e-8))


# -- samplers: shapes, dtypes, means ----------------------------------------------------------------------

SAMPLED = [
    ("Exponential", dict(rate=np.array([0.5, 2.0]))),
    ("Laplace", dict(loc=np.array([0.0, 2.0]), scale=np.array([1.0, 0.3]))),
    ("Gamma", dict(concentration=np.array([0.3, 1.0, 7.5]), rate=np.array([1.0, 2.0, 0.5]))),
    ("Chi2", dict(df=np.array([1.0, 5.0]))),
    ("StudentT", dict(df=np.array([5.0, 9.0]), loc=np.array([1.0, -1.0]), scale=np.array([2.0, 0.5]))),
    ("Beta", dict(concentration1=np.array([0.4, 2.0]), concentration0=np.array([0.7, 5.0]))),
    ("Dirichlet", dict(concentration=np.array([[0.3, 1.0, 4.0], [2.0, 2.0, 2.0]]))),
    ("ContinuousBernoulli", dict(probs=np.array([0.2, 0.5, 0.9]))),
    ("VonMises", dict(loc=np.array([0.5, -2.0]), concentration=np.array([4.0, 20.0]))),
    ("LowRankMultivariateNormal", dict(loc=np.array([1.0, -1.0, 0.0]), cov_factor=np.array([[1.0], [0.5], [-1.0]]),
                                       cov_diag=np.array([0.5, 1.0, 0.2]))),
    ("LogNormal", dict(loc=np.array([0.0, 0.5]), scale=np.array([0.3, 0.5]))),
    ("HalfNormal", dict(scale=np.array([1.0, 3.0]))),
    ("Gumbel", dict(loc=np.array([0.0, 1.0]), scale=np.array([1.0, 2.0]))),
    ("Weibull", dict(scale=np.array([1.0, 2.0]), concentration=np.array([0.8, 3.0]))),
    ("Pareto", dict(scale=np.array([1.0, 2.0]), alpha=np.array([4.0, 6.0]))),
    ("Kumaraswamy", dict(concentration1=np.array([0.5, 2.0]), concentration0=np.array([2.0, 3.0]))),
    ("Poisson", dict(rate=np.array([0.0, 0.7, 9.5, 40.0]))),
    ("Binomial", dict(total_count=np.array([0.0, 5.0, 20.0, 300.0]), probs=np.array([0.3, 0.6, 0.75, 0.4]))),
    ("Geometric", dict(probs=np.array([0.2, 0.9]))),
    ("NegativeBinomial", dict(total_count=np.array([2.0, 5.5]), probs=np.array([0.3, 0.6]))),
    ("Multinomial", dict(total_count=6, probs=np.array([[0.2, 0.3, 0.5], [0.6, 0.4, 0.0]]))),
    ("OneHotCategoricalStraightThrough", dict(probs=np.array([0.1, 0.6, 0.3]))),
    ("RelaxedBernoulli", dict(temperature=np.array(0.5), probs=np.array([0.3, 0.8]))),
    ("RelaxedOneHotCategorical", dict(temperature=np.array(0.5), probs=np.array([0.2, 0.3, 0.5]))),
]


@pytest.mark.parametrize("name, ps", SAMPLED, ids=[s[0] for s in SAMPLED])
def test_samples_have_torch_shapes_and_means(name, ps):
    av.manual_seed(11)
    n = 2000
    ours, theirs = build(ad, name, ps, av.tensor), build(td, name, ps, T)
    s = ours.sample((n,))
    want = theirs.sample((n,))
    assert s.shape == tuple(want.shape) and s.dtype == av.float64, (s.shape, want.shape, s.dtype)
    assert ours.sample().shape == tuple(theirs.sample().shape)
    if ours.has_rsample:
        assert ours.rsample((3, 2)).shape == tuple(theirs.rsample((3, 2)).shape)
    x = s.numpy()
    assert np.isfinite(x).all()
    if name == "VonMises":  # circular: the mean direction and the circular variance 1 - |E exp(i(x - loc))|
        z = np.exp(1j * (x - ps["loc"])).mean(0)
        assert np.all(np.abs(np.angle(z)) < 0.05) and np.all(x >= -math.pi) and np.all(x < math.pi)
        close(1.0 - np.abs(z), theirs.variance, 0.02)
        return
    if name == "RelaxedBernoulli" or name == "RelaxedOneHotCategorical":  # no closed form: torch's own draws
        close(x.mean(0), want.numpy().mean(0), 0.05)
        return
    mean, sd = theirs.mean.numpy(), theirs.stddev.numpy()
    se = sd / math.sqrt(n)
    assert np.all(np.abs(x.mean(0) - mean) <= 4.5 * se + 1e-12), (x.mean(0), mean, se)
    if name in ("Poisson", "Binomial", "Geometric", "NegativeBinomial", "Multinomial"):
        assert np.all(x == np.round(x)) and np.all(x >= 0)
    if name == "Multinomial":
        assert np.all(x.sum(-1) == 6) and np.all(x[:, 1, 2] == 0)
    if name == "Binomial":
        assert np.all(x <= ps["total_count"])


def _chi2_ok(x, log_pmf):
    """Counts of the integer draws x against a pmf: the chi-square statistic over the cells expecting
    more than 5, within 6 standard deviations of its mean."""
    k = np.arange(int(x.max()) + 40)
    expected = np.exp(log_pmf(k)) * len(x)
    counts = np.bincount(x.astype(int), minlength=len(k))[:len(k)]
    m = expected > 5
    chi2, df = ((counts[m] - expected[m]) ** 2 / expected[m]).sum(), m.sum() - 1
    return chi2 < df + 6 * math.sqrt(2 * df)


def test_rejection_samplers_follow_their_distribution():
    """Poisson and Binomial draws (inversion below a mean of 10, PTRS / BTRS above) against their pmf;
    Gamma draws (Marsaglia-Tsang, boosted below 1) against their CDF (Kolmogorov-Smirnov)."""
    av.manual_seed(5)
    n = 5000
    lgam = np.vectorize(math.lgamma)
    x = ad.Poisson(av.tensor([3.0, 25.0])).sample((n,)).numpy()
    for j, lam in enumerate((3.0, 25.0)):
        assert _chi2_ok(x[:, j], lambda k, lam=lam: k * math.log(lam) - lam - lgam(k + 1.0)), lam
    x = ad.Binomial(av.tensor([12.0, 200.0]), av.tensor([0.35, 0.7])).sample((n,)).numpy()
    for j, (c, p) in enumerate(((12.0, 0.35), (200.0, 0.7))):
        def log_pmf(k, c=c, p=p):
            kk = np.minimum(k, c)
            out = lgam(c + 1) - lgam(kk + 1) - lgam(c - kk + 1) + kk * math.log(p) + (c - kk) * math.log1p(-p)
            return np.where(k <= c, out, -np.inf)
        assert _chi2_ok(x[:, j], log_pmf), (c, p)
    x = ad.Gamma(av.tensor([0.2, 3.0]), 1.0).sample((n,)).numpy()
    for j, a in enumerate((0.2, 3.0)):
        xs = np.sort(x[:, j])
        cdf = torch.special.gammainc(torch.tensor(a, dtype=torch.float64), T(xs)).numpy()
        ks = max((np.arange(1, n + 1) / n - cdf).max(), (cdf - np.arange(n) / n).max())
        assert ks * math.sqrt(n) < 1.95, a  # p > 0.001


def test_samplers_draw_afresh_inside_compile():
    def draw(a, rate):
        return ad.Gamma(a, 1.0).sample((4,)), ad.Poisson(rate).sample((4,)), ad.Dirichlet(a).rsample()
    f = av.compile(draw, backend="numpy")
    a, rate = np.array([0.5, 2.0]), np.array([3.0, 30.0])
    av.manual_seed(2)
    first, second = f(a, rate), f(a, rate)
    for x, y in zip(first, second):
        assert x.shape == y.shape and not np.array_equal(x.numpy(), y.numpy())
    av.manual_seed(2)
    assert all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(first, f(a, rate)))


# -- rsample gradients ---------------------------------------------------------------------------------

RSAMPLED = [
    ("Exponential", dict(rate=np.array([0.5, 2.0]))),
    ("Laplace", dict(loc=np.array([0.3, -1.0]), scale=np.array([1.5, 0.4]))),
    ("Cauchy", dict(loc=np.array([0.3, -1.0]), scale=np.array([1.5, 0.4]))),
    ("LogNormal", dict(loc=np.array([0.1, -0.4]), scale=np.array([0.6, 1.2]))),
    ("HalfNormal", dict(scale=np.array([0.6, 1.2]))),
    ("HalfCauchy", dict(scale=np.array([0.6, 1.2]))),
    ("Gumbel", dict(loc=np.array([0.1, -0.4]), scale=np.array([0.6, 1.2]))),
    ("Weibull", dict(scale=np.array([0.7, 2.0]), concentration=np.array([0.9, 2.5]))),
    ("Pareto", dict(scale=np.array([0.7, 2.0]), alpha=np.array([1.5, 3.0]))),
    ("Kumaraswamy", dict(concentration1=np.array([0.7, 2.0]), concentration0=np.array([1.5, 3.0]))),
    ("ContinuousBernoulli", dict(probs=np.array([0.2, 0.8]))),
    ("Uniform", dict(low=np.array([-1.0, 0.5]), high=np.array([0.5, 3.0]))),
]


@pytest.mark.parametrize("name, ps", RSAMPLED, ids=[r[0] for r in RSAMPLED])
def test_rsample_gradients_are_the_implicit_ones(name, ps):
    """d sum(w * x) / d theta at Avalon's draws x, against sum(w * -(dF/dtheta)(x) / f(x)) by torch's autograd."""
    keys = list(ps)
    w = RNG.standard_normal((50, 2))

    def loss(w, *xs):
        x = getattr(ad, name)(**dict(zip(keys, xs))).rsample((50,))
        return (x * w).sum(), x
    av.manual_seed(3)
    (_, x), grads = av.value_and_grad(loss, argnums=tuple(range(1, 1 + len(keys))), has_aux=True)(w, *ps.values())
    tps = {k: T(v).requires_grad_() for k, v in ps.items()}
    d = getattr(td, name)(**tps)
    xt = T(x.numpy())
    cdf = d.cdf(xt)
    density = d.log_prob(xt).exp().detach()
    want = torch.autograd.grad((cdf * T(-w) / density).sum(), list(tps.values()))
    for g, tg in zip(grads, want):
        close(g, tg, 1e-7)


def _gamma_grad_reference(a, x):
    mpmath.mp.dps = 30
    d_cdf = mpmath.diff(lambda s: mpmath.gammainc(s, 0, x, regularized=True), a)
    return float(-d_cdf / mpmath.exp((a - 1) * mpmath.log(x) - x - mpmath.loggamma(a)))


def test_gamma_family_rsample_gradients_are_the_implicit_reparameterization():
    """A Gamma draw's gradient in its concentration against torch's `_standard_gamma_grad` (an
    approximation good to ~1e-4) and an exact reference (mpmath); Beta, Dirichlet and StudentT draws
    through it: their expected gradients d E[x] / d alpha over 3000 draws against the closed forms."""
    conc = np.array([[0.05, 0.6, 1.0, 4.5, 30.0, 800.0], [0.3, 1.7, 2.5, 9.0, 0.9, 60.0]])
    rate = np.array([1.0, 2.0, 0.5, 1.0, 3.0, 1.0])
    a, b, c = np.array([0.7, 3.0]), np.array([2.0, 1.5]), np.array([0.5, 1.0, 2.5])

    def loss(conc, rate, a, b, c, df):
        x = ad.Gamma(conc, rate).rsample()
        means = (ad.Beta(a, b).rsample((3000,)).mean(0).sum() + ad.Dirichlet(c).rsample((3000,))[:, 0].mean()
                 + ad.StudentT(df).rsample((200,)).abs().mean())
        return x.sum() + means, x
    av.manual_seed(4)
    (_, x), (g_conc, g_rate, ga, gb, gc, gdf) = av.value_and_grad(loss, argnums=(0, 1, 2, 3, 4, 5), has_aux=True)(
        conc, rate, a, b, c, np.array([3.0]))
    x, g_conc = x.numpy(), g_conc.numpy()
    std = x * rate
    close(g_conc, torch._standard_gamma_grad(T(conc), T(std)).numpy() / rate, 1e-3)
    close(g_rate, (-x / rate).sum(0))
    for i, j in ((0, 0), (0, 2), (1, 3), (0, 5)):
        assert abs(g_conc[i, j] * rate[j] - _gamma_grad_reference(conc[i, j], std[i, j])) <= 1e-9 * abs(g_conc[i, j])
    close(ga, b / (a + b) ** 2, 0.1)
    close(gb, -a / (a + b) ** 2, 0.1)
    c0 = c.sum()
    close(gc, np.array([(c0 - c[0]) / c0 ** 2, -c[0] / c0 ** 2, -c[0] / c0 ** 2]), 0.08)
    assert np.isfinite(gdf.numpy()).all() and gdf.numpy()[0] != 0
    # a model's parameter as the concentration (a leaf of the trace, not a traced value) gets its gradient
    model = av.nn.Module()
    model.alpha = av.nn.Parameter(av.tensor(np.array([0.4, 3.0])))
    g = av.grad(lambda m: ad.Gamma(m.alpha, 1.0).rsample((5,)).sum())(model)
    assert sorted(g) == ["alpha"] and np.all(g["alpha"].numpy() > 0)


def test_gamma_cdf_and_relaxed_rsample_gradients():
    a, x = np.array([0.3, 2.0, 9.0, 150.0]), np.array([0.2, 2.5, 7.0, 160.0])
    close(ad.Gamma(av.tensor(a), 1.0).cdf(av.tensor(x)), torch.special.gammainc(T(a), T(x)), 1e-10)
    tx = T(x).requires_grad_()
    torch.special.gammainc(T(a), tx).sum().backward()
    close(av.grad(lambda x, a: ad.Gamma(a, 1.0).cdf(x).sum())(x, a), tx.grad, 1e-9)
    # Gumbel-softmax: the noise is recovered from the soft draw (tau log y - logits, up to a constant per row)
    logits, tau, w = RNG.standard_normal((5, 4)), np.array(0.7), RNG.standard_normal((5, 4))

    def loss(logits, tau, w):
        y = ad.RelaxedOneHotCategorical(tau, logits=logits).rsample()
        return (y * w).sum(), y
    (_, y), (gl, gt) = av.value_and_grad(loss, argnums=(0, 1), has_aux=True)(logits, tau, w)
    noise = T(tau * np.log(y.numpy()) - logits)
    tl, tt = T(logits).requires_grad_(), T(tau).requires_grad_()
    (torch.softmax((tl + noise) / tt, -1) * T(w)).sum().backward()
    close(gl, tl.grad, 1e-8)
    close(gt, tt.grad, 1e-8)
    probs = RNG.uniform(0.2, 0.8, 4)

    def loss_b(probs, tau):
        y = ad.RelaxedBernoulli(tau, probs=probs).rsample()
        return (y * y).sum(), y
    (_, y), (gp, gt) = av.value_and_grad(loss_b, argnums=(0, 1), has_aux=True)(probs, tau)
    yv = y.numpy()
    noise = T(tau * np.log(yv / (1 - yv)) - np.log(probs / (1 - probs)))
    tp, tt = T(probs).requires_grad_(), T(tau).requires_grad_()
    ((torch.sigmoid((torch.log(tp / (1 - tp)) + noise) / tt)) ** 2).sum().backward()
    close(gp, tp.grad, 1e-7)
    close(gt, tt.grad, 1e-7)
    # straight through: the one-hot draw forward, the probabilities' gradient backward
    lg = RNG.standard_normal(3)
    g = av.grad(lambda lg, w: (ad.OneHotCategoricalStraightThrough(logits=lg).rsample() * w).sum())(
        lg, np.array([1.0, 2.0, 3.0]))
    tl = T(lg).requires_grad_()
    (torch.softmax(tl, -1) * T([1.0, 2.0, 3.0])).sum().backward()
    close(g, tl.grad)


def test_sac_squashed_gaussian_log_prob_and_gradient():
    """SAC's policy: a = tanh(u), u ~ Normal(mu, std) reparameterized, log pi(a) through the cached
    TanhTransform, the loss alpha log pi - Q(a); torch on the same pre-tanh draw as the oracle."""
    mu, log_std = RNG.standard_normal((6, 2)) * 0.5, RNG.uniform(-1, 0, (6, 2))
    q_w = RNG.standard_normal(2)

    def run(mu, log_std, q_w):
        dist = ad.TransformedDistribution(ad.Normal(mu, log_std.exp()), [transforms.TanhTransform(cache_size=1)])
        u = dist.base_dist.rsample()
        a = dist.transforms[0](u)
        logp = dist.log_prob(a).sum(-1)
        return (0.2 * logp - (a * q_w).sum(-1)).mean(), (u, logp)
    (_, (u, logp)), (g_mu, g_ls) = av.value_and_grad(run, argnums=(0, 1), has_aux=True)(mu, log_std, q_w)
    tm, ts = T(mu).requires_grad_(), T(log_std).requires_grad_()
    eps = T((u.numpy() - mu) / np.exp(log_std))
    tdist = td.TransformedDistribution(td.Normal(tm, ts.exp()), [td.TanhTransform(cache_size=1)])
    tu = tm + ts.exp() * eps
    ta = tdist.transforms[0](tu)
    tlogp = tdist.log_prob(ta).sum(-1)
    (0.2 * tlogp - (ta * T(q_w)).sum(-1)).mean().backward()
    close(logp, tlogp, 1e-8)
    close(g_mu, tm.grad, 1e-8)
    close(g_ls, ts.grad, 1e-8)
    d = ad.TransformedDistribution(ad.Normal(av.tensor(mu), av.tensor(np.exp(log_std))), transforms.TanhTransform())
    assert d.support.lower_bound == -1.0 and d.has_rsample and d.sample((3,)).shape == (3, 6, 2)


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# -- transforms ------------------------------------------------------------------------------------------

TRANSFORMS = [
    ("ExpTransform", (), norm(3, 2)),
    ("AffineTransform", (RNG.standard_normal(2), RNG.uniform(-2, 2, 2)), norm(3, 2)),
    ("SigmoidTransform", (), norm(3, 2)),
    ("TanhTransform", (), norm(3, 2)),
    ("SoftplusTransform", (), norm(3, 2)),
    ("PowerTransform", (np.array([0.5, 2.5]),), pos(3, 2)),
    ("StickBreakingTransform", (), norm(3, 2)),
]


@pytest.mark.parametrize("name, args, x", TRANSFORMS, ids=[t[0] for t in TRANSFORMS])
def test_transforms_match_torch(name, args, x):
    ours = getattr(transforms, name)(*[av.tensor(a) for a in args])
    theirs = getattr(td.transforms, name)(*[T(a) for a in args])
    y, ty = ours(av.tensor(x)), theirs(T(x))
    close(y, ty)
    close(ours.inv(y), theirs.inv(ty))
    close(ours.log_abs_det_jacobian(av.tensor(x), y), theirs.log_abs_det_jacobian(T(x), ty))
    close(ours.inv.log_abs_det_jacobian(y, av.tensor(x)), theirs.inv.log_abs_det_jacobian(ty, T(x)))
    assert ours.domain.event_dim == theirs.domain.event_dim and ours.codomain.event_dim == theirs.codomain.event_dim
    assert ours.bijective == theirs.bijective and ours.inv.inv is ours
    assert ours.forward_shape((4, 3, 2)) == tuple(theirs.forward_shape(torch.Size((4, 3, 2))))
    assert ours.inverse_shape((4, 3, 2)) == tuple(theirs.inverse_shape(torch.Size((4, 3, 2))))
    sign = theirs.sign if name != "StickBreakingTransform" else None
    if sign is not None:
        close(np.asarray(ours.sign.numpy() if isinstance(ours.sign, av.Tensor) else ours.sign, float),
              np.asarray(sign.numpy() if isinstance(sign, torch.Tensor) else sign, float))
    # the log-det-jacobian differentiates as torch's
    tx = T(x).requires_grad_()
    tl = theirs.log_abs_det_jacobian(tx, theirs(tx)).sum()
    want = tl.backward() or tx.grad if tl.requires_grad else np.zeros_like(x)
    def ladj(x, *args):
        t = getattr(transforms, name)(*args)
        return t.log_abs_det_jacobian(x, t(x)).sum()
    with pytest.warns() if not tl.requires_grad else _no_warning():  # (a constant jacobian: "depends on none")
        close(av.grad(ladj)(x, *args), want)


def test_composed_reshaped_and_independent_transforms():
    x = norm(4, 6)
    parts = [transforms.AffineTransform(0.5, 2.0), transforms.ExpTransform(), transforms.PowerTransform(av.tensor(0.5))]
    t = transforms.ComposeTransform(parts)
    tt = td.ComposeTransform([td.AffineTransform(0.5, 2.0), td.ExpTransform(), td.PowerTransform(T(0.5))])
    close(t(av.tensor(x)), tt(T(x)))
    close(t.inv(t(av.tensor(x))), x)
    close(t.log_abs_det_jacobian(av.tensor(x), t(av.tensor(x))), tt.log_abs_det_jacobian(T(x), tt(T(x))))
    it, tit = transforms.IndependentTransform(t, 1), td.IndependentTransform(tt, 1)
    close(it.log_abs_det_jacobian(av.tensor(x), it(av.tensor(x))), tit.log_abs_det_jacobian(T(x), tit(T(x))))
    assert it.domain.event_dim == 1 and it.sign == 1
    r, tr = transforms.ReshapeTransform((6,), (2, 3)), td.ReshapeTransform((6,), (2, 3))
    assert r(av.tensor(x)).shape == (4, 2, 3) and r.forward_shape((4, 6)) == (4, 2, 3)
    close(r.log_abs_det_jacobian(av.tensor(x), r(av.tensor(x))), tr.log_abs_det_jacobian(T(x), tr(T(x))))
    s, ts_ = transforms.SoftmaxTransform(), td.SoftmaxTransform()
    close(s(av.tensor(x)), ts_(T(x)))
    assert transforms.identity_transform(av.tensor(x)) is not None and transforms.ExpTransform() == transforms.ExpTransform()
    # a logistic-normal over the simplex, log_prob through StickBreakingTransform against torch
    loc, scale, v = norm(3), pos(3), simplex(2, 4)
    d = ad.TransformedDistribution(ad.Independent(ad.Normal(av.tensor(loc), av.tensor(scale)), 1),
                                   transforms.StickBreakingTransform())
    tdist = td.TransformedDistribution(td.Independent(td.Normal(T(loc), T(scale)), 1), td.StickBreakingTransform())
    assert d.event_shape == (4,) and d.batch_shape == ()
    close(d.log_prob(av.tensor(v)), tdist.log_prob(T(v)))
    assert isinstance(ad.constraints.simplex, constraints.Constraint)
    assert constraints.positive.check(av.tensor([1.0, -1.0])).numpy().tolist() == [True, False]
    assert repr(constraints.interval(0.0, 1.0)) == repr(torch.distributions.constraints.interval(0.0, 1.0))


# -- KL divergences ----------------------------------------------------------------------------------------

def _params(name):
    return {
        "Normal": dict(loc=norm(3), scale=pos(3)), "Exponential": dict(rate=pos(3)),
        "Gamma": dict(concentration=pos(3, lo=0.5, hi=3), rate=pos(3)),
        "Beta": dict(concentration1=pos(3), concentration0=pos(3)), "Laplace": dict(loc=norm(3), scale=pos(3)),
        "Gumbel": dict(loc=norm(3), scale=pos(3)), "Cauchy": dict(loc=norm(3), scale=pos(3)),
        "Pareto": dict(scale=pos(3, lo=0.5, hi=1), alpha=pos(3, lo=2.5, hi=4)),
        "Poisson": dict(rate=pos(3)), "Geometric": dict(probs=unit(3)), "HalfNormal": dict(scale=pos(3)),
        "LogNormal": dict(loc=norm(3), scale=pos(3)), "ContinuousBernoulli": dict(probs=unit(3)),
        "Uniform": dict(low=RNG.uniform(0.1, 0.3, 3), high=RNG.uniform(0.6, 0.9, 3)),
        "Bernoulli": dict(probs=unit(3)), "Binomial": dict(total_count=np.full(3, 5.0), probs=unit(3)),
        "Dirichlet": dict(concentration=pos(3, 4)), "Chi2": dict(df=pos(3, lo=1, hi=5)),
        "LowRankMultivariateNormal": dict(loc=norm(2, 3), cov_factor=norm(2, 3, 2), cov_diag=pos(2, 3)),
        "MultivariateNormal": dict(loc=norm(2, 3), scale_tril=np.tril(norm(2, 3, 3), -1) + np.eye(3) * pos(2, 1, 3)),
    }[name]


KL_PAIRS = [("Beta", "Beta"), ("Binomial", "Binomial"), ("ContinuousBernoulli", "ContinuousBernoulli"),
            ("Dirichlet", "Dirichlet"), ("Exponential", "Exponential"), ("Gamma", "Gamma"), ("Chi2", "Chi2"),
            ("Gumbel", "Gumbel"), ("Geometric", "Geometric"), ("HalfNormal", "HalfNormal"), ("Laplace", "Laplace"),
            ("Pareto", "Pareto"), ("Poisson", "Poisson"), ("LogNormal", "LogNormal"), ("Cauchy", "Cauchy"),
            ("LowRankMultivariateNormal", "LowRankMultivariateNormal"),
            ("MultivariateNormal", "LowRankMultivariateNormal"), ("LowRankMultivariateNormal", "MultivariateNormal"),
            ("Bernoulli", "Poisson"), ("Beta", "ContinuousBernoulli"), ("Beta", "Exponential"), ("Beta", "Gamma"),
            ("Beta", "Normal"), ("Beta", "Uniform"), ("Beta", "Pareto"), ("ContinuousBernoulli", "Exponential"),
            ("ContinuousBernoulli", "Normal"), ("ContinuousBernoulli", "Uniform"), ("Exponential", "Gamma"),
            ("Exponential", "Gumbel"), ("Exponential", "Normal"), ("Exponential", "Uniform"), ("Gamma", "Exponential"),
            ("Gamma", "Gumbel"), ("Gamma", "Normal"), ("Gumbel", "Normal"), ("Gumbel", "Gamma"), ("Laplace", "Normal"),
            ("Normal", "Gumbel"), ("Normal", "Laplace"), ("Normal", "Gamma"), ("Pareto", "Exponential"),
            ("Pareto", "Gamma"), ("Pareto", "Normal"), ("Poisson", "Binomial"), ("Uniform", "Beta"),
            ("Uniform", "ContinuousBernoulli"), ("Uniform", "Exponential"), ("Uniform", "Gamma"),
            ("Uniform", "Gumbel"), ("Uniform", "Normal"), ("Uniform", "Pareto")]


def test_kl_divergences_match_torch():
    for p_name, q_name in KL_PAIRS:
        pp, qp = _params(p_name), _params(q_name)
        ours = ad.kl_divergence(build(ad, p_name, pp, av.tensor), build(ad, q_name, qp, av.tensor))
        want = td.kl_divergence(build(td, p_name, pp, T), build(td, q_name, qp, T))
        close(ours, want, 1e-8)
    for p_name, q_name in (("Exponential", "Beta"), ("Gamma", "Uniform"), ("Gumbel", "Exponential"),
                           ("Laplace", "Gamma"), ("Normal", "Pareto"), ("Pareto", "ContinuousBernoulli"),
                           ("Poisson", "Bernoulli"), ("ContinuousBernoulli", "Pareto")):
        pp, qp = _params(p_name), _params(q_name)
        assert np.all(np.isinf(ad.kl_divergence(build(ad, p_name, pp, av.tensor), build(ad, q_name, qp, av.tensor))
                               .numpy())), (p_name, q_name)
    # the inf conventions: supports that do not nest
    a64 = lambda x: av.tensor(np.array(x))  # noqa: E731
    close(ad.kl_divergence(ad.Pareto(a64([0.5, 2.0]), a64([3.0, 3.0])), ad.Pareto(a64([1.0, 1.0]), a64([3.0, 3.0]))),
          td.kl_divergence(td.Pareto(T([0.5, 2.0]), T([3.0, 3.0])), td.Pareto(T([1.0, 1.0]), T([3.0, 3.0]))))
    # gradients: a Beta-Beta and a Dirichlet-Dirichlet KL (a VAE's regularizer)
    a, b = pos(3), pos(3)
    ta, tb = T(a).requires_grad_(), T(b).requires_grad_()
    td.kl_divergence(td.Beta(ta, tb), td.Beta(T(b), T(a))).sum().backward()
    ga, gb = av.grad(lambda a, b: ad.kl_divergence(ad.Beta(a, b), ad.Beta(b.detach(), a.detach())).sum(),
                     argnums=(0, 1))(a, b)
    close(ga, ta.grad, 1e-8)
    close(gb, tb.grad, 1e-8)
    with pytest.raises(NotImplementedError):
        ad.kl_divergence(ad.Poisson(1.0), ad.Normal(0.0, 1.0))


def test_arguments_and_values_are_checked_as_in_torch():
    with pytest.raises(ValueError, match="rate"):
        ad.Exponential(av.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="concentration"):
        ad.Dirichlet(av.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="scale"):
        ad.HalfNormal(-1.0)
    with pytest.raises(ValueError, match="Either"):
        ad.Binomial(3, probs=av.tensor(0.5), logits=av.tensor(0.0))
    with pytest.raises(ValueError, match="support"):
        ad.Poisson(av.tensor([1.0])).log_prob(av.tensor([1.5]))
    with pytest.raises(ValueError, match="support"):
        ad.Beta(av.tensor(2.0), av.tensor(2.0)).log_prob(av.tensor(1.5))
    ad.Exponential(av.tensor(-1.0), validate_args=False)
    assert ad.Gamma(1.0, 2.0).batch_shape == () and ad.Gamma(1.0, 2.0).rate.dtype == av.float32
    assert ad.Beta.support is constraints.unit_interval and ad.Poisson.arg_constraints["rate"] is constraints.nonnegative
    assert ad.Binomial(av.tensor([3.0, 5.0]), probs=av.tensor([0.5, 0.5])).support.upper_bound.shape == (2,)

"""InverseGamma, FisherSnedecor, GeneralizedPareto, LogisticNormal, Wishart, LKJCholesky, the
ExponentialFamily base class and the Cat / Stack / CorrCholesky / LowerCholesky / PositiveDefinite
transforms of `avalon.distributions`, against torch.distributions on random float64 parameters:
log_prob, entropy, moments, cdf/icdf, shapes and expand; gradients of log_prob + entropy through av.grad
against torch's autograd; samplers' shapes and moments (fixed seeds); a compiled log_prob; argument
checks."""
import math
import warnings

import numpy as np
import pytest
import torch
import torch.distributions as td
from helpers import T
from test_distributions_more import close

import avalon as av
from avalon import distributions as ad
from avalon.distributions import constraints, transforms

RNG = np.random.default_rng(17)


@pytest.fixture(autouse=True)
def _torch_float64():
    """torch's GeneralizedPareto compares its concentration with a float32 `torch.tensor(0.0)`, which fails
    for float64 parameters unless float64 is torch's default dtype."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def pos(*shape, lo=0.5, hi=2.0):
    return RNG.uniform(lo, hi, shape)


def norm(*shape):
    return RNG.standard_normal(shape)


def spd(*shape):
    """Random symmetric positive definite matrices of shape (..., n, n)."""
    a = RNG.standard_normal(shape)
    return a @ np.swapaxes(a, -1, -2) + shape[-1] * np.eye(shape[-1])


def corr_chol(*shape):
    """Random Cholesky factors of correlation matrices (..., n, n), through torch's transform."""
    n = shape[-1]
    return td.CorrCholeskyTransform()(T(RNG.standard_normal(shape[:-2] + (n * (n - 1) // 2,)))).numpy()


def tril_chol(*shape):
    return np.linalg.cholesky(spd(*shape))


# (name, parameters: arrays become tensors, other values stay, a value for log_prob, options)
CASES = [
    ("InverseGamma", dict(concentration=np.array([0.7, 1.5, 2.5, 4.0]), rate=pos(4)), pos(2, 4, lo=0.2, hi=3), {}),
    ("FisherSnedecor", dict(df1=np.array([1.5, 3.0, 6.0, 9.0]), df2=np.array([1.5, 3.5, 5.0, 12.0])),
     pos(2, 4, lo=0.1, hi=4), {}),
    ("GeneralizedPareto", dict(loc=norm(3), scale=pos(3), concentration=np.array([0.3, 0.8, 1.4])),
     None, {"gp": True}),
    ("GeneralizedPareto", dict(loc=norm(3), scale=pos(3), concentration=np.array([-0.4, -0.1, 0.0])),
     None, {"gp": True}),
    ("LogisticNormal", dict(loc=norm(2, 3), scale=pos(2, 3)), RNG.dirichlet(np.ones(4), (5, 2)), {}),
    ("LogisticNormal", dict(loc=norm(3), scale=pos(3)), RNG.dirichlet(np.ones(4), 2), {}),
    ("Wishart", dict(df=np.array([3.5, 6.0]), covariance_matrix=spd(2, 3, 3)), spd(4, 2, 3, 3), {}),
    ("Wishart", dict(df=np.array(4.2), precision_matrix=spd(2, 3, 3)), spd(2, 3, 3), {}),
    ("Wishart", dict(df=5.0, scale_tril=tril_chol(2, 2)), spd(3, 2, 2), {"tril": True}),
    ("LKJCholesky", dict(dim=3, concentration=np.array([0.5, 1.0, 2.5])), corr_chol(2, 3, 3, 3), {}),
    ("LKJCholesky", dict(dim=4, concentration=np.array(1.7)), corr_chol(3, 4, 4), {}),
]
IDS = [f"{c[0]}-{'-'.join(k for k in c[1] if k != 'dim')}-{i}" for i, c in enumerate(CASES)]


def build(lib, name, ps, tensor):
    return getattr(lib, name)(**{k: tensor(v) if isinstance(v, np.ndarray) else v for k, v in ps.items()})


def torch_attr(d, attr, *args):
    try:
        out = getattr(d, attr)
        return out(*args) if callable(out) else out
    except (NotImplementedError, AttributeError):
        return None


def _gp_value(ps):
    """Values inside a GeneralizedPareto's support (below loc - scale / concentration when negative)."""
    c = ps["concentration"]
    top = np.where(c < 0, -1.0 / np.where(c < 0, c, -1.0), 5.0)
    return ps["loc"] + ps["scale"] * RNG.uniform(0.02, 0.95, (2, 3)) * top


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_values_and_gradients_match_torch(case):
    name, ps, value, opts = case
    if opts.get("gp"):
        value = _gp_value(ps)
    tol = opts.get("tol", 1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (Wishart's low-df warning, both sides)
        ours, theirs = build(ad, name, ps, av.tensor), build(td, name, ps, T)
    assert ours.batch_shape == tuple(theirs.batch_shape) and ours.event_shape == tuple(theirs.event_shape)
    assert ours.has_rsample == theirs.has_rsample
    assert isinstance(ours, ad.ExponentialFamily) == isinstance(theirs, td.ExponentialFamily)
    close(ours.log_prob(av.tensor(value)), theirs.log_prob(T(value)), tol)
    for attr in ("mean", "variance", "stddev", "mode", "entropy", "concentration", "rate", "loc", "scale",
                 "covariance_matrix", "precision_matrix", "scale_tril"):
        want = torch_attr(theirs, attr)
        if isinstance(want, torch.Tensor):
            got = getattr(ours, attr)
            close(got() if callable(got) else got, want, max(tol, 1e-8))
    u = RNG.uniform(0.05, 0.95, np.shape(value))
    for attr, arg in (("cdf", value), ("icdf", u)):
        want = torch_attr(theirs, attr, T(arg))
        if want is not None:
            close(getattr(ours, attr)(av.tensor(arg)), want, max(tol, 1e-8))
    # expand: the parameters broadcast to a larger batch
    big = (2,) + ours.batch_shape
    e, te = ours.expand(big), theirs.expand(big)
    assert e.batch_shape == tuple(te.batch_shape) and e.event_shape == tuple(te.event_shape)
    one = value[(0,) * (value.ndim - len(ours.batch_shape) - len(ours.event_shape))]
    close(e.log_prob(av.tensor(one)), te.log_prob(T(one)), tol)
    # gradients of log_prob (weighted) + entropy with respect to every float parameter
    keys = [k for k, v in ps.items() if isinstance(v, np.ndarray)]
    w = RNG.standard_normal(tuple(theirs.log_prob(T(value)).shape))
    tps = {k: (T(v).requires_grad_() if k in keys else v) for k, v in ps.items()}
    d = getattr(td, name)(**tps)
    has_entropy = torch_attr(theirs, "entropy") is not None
    tloss = (d.log_prob(T(value)) * T(w)).sum() + (d.entropy().sum() if has_entropy else 0)
    tgrads = torch.autograd.grad(tloss, [tps[k] for k in keys])
    fixed = {k: v for k, v in ps.items() if k not in keys}

    def objective(value, w, *xs):
        dist = getattr(ad, name)(**fixed, **dict(zip(keys, xs)))
        return (dist.log_prob(value) * w).sum() + (dist.entropy().sum() if has_entropy else 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grads = av.grad(objective, argnums=tuple(range(2, 2 + len(keys))))(value, w, *[ps[k] for k in keys])
    for k, g, tg in zip(keys, grads, tgrads):
        if k in ("covariance_matrix", "precision_matrix"):  # a symmetric argument: its symmetric part
            g, tg = g.numpy(), tg.numpy()
            g, tg = g + np.swapaxes(g, -1, -2), tg + np.swapaxes(tg, -1, -2)
        if opts.get("tril") and k == "scale_tril":
            # torch's cholesky_solve backward also fills the (unused) upper triangle of the factor
            g, tg = np.tril(g.numpy()), np.tril(tg.numpy())
        close(g, tg, max(tol, 1e-8))


def test_cdf_gradients_and_generalized_pareto_survival():
    loc, scale, conc = norm(3), pos(3), np.array([-0.3, 0.0, 0.6])
    x = _gp_value(dict(loc=loc, scale=scale, concentration=conc))
    ours = ad.GeneralizedPareto(av.tensor(loc), av.tensor(scale), av.tensor(conc))
    theirs = td.GeneralizedPareto(T(loc), T(scale), T(conc))
    close(ours.log_survival_function(av.tensor(x)), theirs.log_survival_function(T(x)))
    close(ours.log_cdf(av.tensor(x)), theirs.log_cdf(T(x)))
    assert ours.support.upper_bound.numpy()[1] == math.inf
    close(ours.support.upper_bound.numpy()[0], loc[0] + scale[0] / 0.3)
    tp = [T(v).requires_grad_() for v in (loc, scale, conc)]
    want = torch.autograd.grad(td.GeneralizedPareto(*tp).cdf(T(x)).sum(), tp)
    got = av.grad(lambda a, b, c, x: ad.GeneralizedPareto(a, b, c).cdf(x).sum(), argnums=(0, 1, 2))(loc, scale, conc, x)
    for g, tg in zip(got, want):
        close(g, tg, 1e-8)
    # InverseGamma's cdf (through the Gamma's, monotone decreasing transform) and its gradient in the rate
    c, r, y = pos(3, lo=0.5, hi=3), pos(3), pos(3)
    close(ad.InverseGamma(av.tensor(c), av.tensor(r)).cdf(av.tensor(y)), td.InverseGamma(T(c), T(r)).cdf(T(y)))
    tr = T(r).requires_grad_()
    want = torch.autograd.grad(td.InverseGamma(T(c), tr).cdf(T(y)).sum(), tr)[0]
    close(av.grad(lambda r, c, y: ad.InverseGamma(c, r).cdf(y).sum())(r, c, y), want, 1e-8)


# -- transforms ------------------------------------------------------------------------------------------

def _transform_pair(name):
    if name == "CatTransform":
        mk = lambda lib: lib.CatTransform([lib.ExpTransform(), lib.AffineTransform(1.0, 3.0),  # noqa: E731
                                           lib.SigmoidTransform()], dim=1, lengths=[2, 1, 3])
        return mk(transforms), mk(td.transforms), norm(4, 6)
    if name == "CatTransform-event":  # pieces with event dims: the jacobians are summed, not joined
        mk = lambda lib: lib.CatTransform([lib.IndependentTransform(lib.ExpTransform(), 1),  # noqa: E731
                                           lib.AffineTransform(0.5, -2.0)], dim=-1, lengths=[2, 3])
        return mk(transforms), mk(td.transforms), norm(4, 5)
    if name == "StackTransform":
        mk = lambda lib: lib.StackTransform([lib.ExpTransform(), lib.TanhTransform(),  # noqa: E731
                                             lib.AffineTransform(0.5, -2.0)], dim=-1)
        return mk(transforms), mk(td.transforms), norm(4, 2, 3)
    if name == "CorrCholeskyTransform":
        return transforms.CorrCholeskyTransform(), td.CorrCholeskyTransform(), norm(3, 6)
    if name == "CorrCholeskyTransform-2":
        return transforms.CorrCholeskyTransform(), td.CorrCholeskyTransform(), norm(2, 5, 1)
    return getattr(transforms, name)(), getattr(td.transforms, name)(), norm(2, 3, 3)


TRANSFORMS = ["CatTransform", "CatTransform-event", "StackTransform", "CorrCholeskyTransform",
              "CorrCholeskyTransform-2", "LowerCholeskyTransform", "PositiveDefiniteTransform"]


@pytest.mark.parametrize("name", TRANSFORMS)
def test_transforms_match_torch(name):
    ours, theirs, x = _transform_pair(name)
    y, ty = ours(av.tensor(x)), theirs(T(x))
    close(y, ty)
    close(ours.inv(y), theirs.inv(ty))
    assert ours.bijective == theirs.bijective and ours.inv.inv is ours
    assert ours.domain.event_dim == theirs.domain.event_dim and ours.codomain.event_dim == theirs.codomain.event_dim
    if name.startswith("Corr"):
        assert ours.forward_shape(x.shape) == tuple(theirs.forward_shape(torch.Size(x.shape)))
        assert ours.inverse_shape(y.shape) == tuple(theirs.inverse_shape(torch.Size(y.shape)))
        assert np.all(constraints.corr_cholesky.check(y).numpy())
        assert np.all(td.constraints.corr_cholesky.check(T(y.numpy())).numpy())
    if name.startswith(("Lower", "Positive")):  # torch gives these no jacobian
        with pytest.raises(NotImplementedError):
            ours.log_abs_det_jacobian(av.tensor(x), y)
        assert ours == getattr(transforms, name)()
        check = constraints.lower_cholesky if name.startswith("Lower") else constraints.positive_definite
        assert np.all(np.asarray(check.check(y.numpy())))
        return
    close(ours.log_abs_det_jacobian(av.tensor(x), y), theirs.log_abs_det_jacobian(T(x), ty))
    close(ours.inv.log_abs_det_jacobian(y, av.tensor(x)), theirs.inv.log_abs_det_jacobian(ty, T(x)))
    # the jacobian and the forward map differentiate as torch's
    tx = T(x).requires_grad_()
    tw = T(RNG.standard_normal(tuple(ty.shape)))
    tl = theirs.log_abs_det_jacobian(tx, theirs(tx)).sum() + (theirs(tx) * tw).sum()
    want = torch.autograd.grad(tl, tx)[0]
    got = av.grad(lambda x, w: ours.log_abs_det_jacobian(x, ours(x)).sum() + (ours(x) * w).sum())(x, tw.numpy())
    close(got, want)


def test_corr_cholesky_jacobian_is_the_volume_change():
    """log|det J| of x -> the strictly lower part of y, against a finite-difference Jacobian."""
    x = norm(6)
    t = transforms.CorrCholeskyTransform()
    f = lambda v: transforms.tril_matrix_to_vec(t(av.tensor(v)), diag=-1).numpy()  # noqa: E731
    h = 1e-6
    jac = np.stack([(f(x + h * e) - f(x - h * e)) / (2 * h) for e in np.eye(6)], 1)
    close(t.log_abs_det_jacobian(av.tensor(x), t(av.tensor(x))), np.log(abs(np.linalg.det(jac))), 1e-6)
    v = norm(2, 6)
    close(transforms.vec_to_tril_matrix(av.tensor(v)), np.stack([np.tril(np.ones((3, 3)))] * 2) * 0 +
          td.utils.vec_to_tril_matrix(T(v)).numpy())
    close(transforms.tril_matrix_to_vec(av.tensor(spd(3, 3)), -1).shape, (3,))


# -- sampling ------------------------------------------------------------------------------------------------

def _within(x, mean, sd, k=4.5):
    se = sd / math.sqrt(len(x))
    assert np.all(np.abs(x.mean(0) - mean) <= k * se + 1e-12), (x.mean(0), mean, se)


SAMPLED = [
    ("InverseGamma", dict(concentration=np.array([3.0, 6.5]), rate=np.array([1.0, 2.0]))),
    ("FisherSnedecor", dict(df1=np.array([3.0, 8.0]), df2=np.array([9.0, 12.0]))),
    ("GeneralizedPareto", dict(loc=np.array([0.0, 1.0, -1.0]), scale=np.array([1.0, 0.5, 2.0]),
                               concentration=np.array([0.2, 0.0, -0.5]))),
    ("LogisticNormal", dict(loc=np.array([0.5, -1.0, 0.0]), scale=np.array([1.0, 0.5, 2.0]))),
    ("Wishart", dict(df=np.array([4.0, 7.5]), covariance_matrix=spd(2, 3, 3))),
    ("LKJCholesky", dict(dim=4, concentration=np.array([0.8, 3.0]))),
]


@pytest.mark.parametrize("name, ps", SAMPLED, ids=[s[0] for s in SAMPLED])
def test_samples_have_torch_shapes_and_moments(name, ps):
    av.manual_seed(11)
    n = 2000
    ours, theirs = build(ad, name, ps, av.tensor), build(td, name, ps, T)
    s = ours.sample((n,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch's Wishart warns of singular samples at every draw)
        want = theirs.sample((n,))
        assert ours.sample().shape == tuple(theirs.sample().shape)
        if ours.has_rsample:
            assert ours.rsample((3, 2)).shape == tuple(theirs.rsample((3, 2)).shape)
    assert s.shape == tuple(want.shape) and s.dtype == av.float64, (s.shape, want.shape)
    x = s.numpy()
    assert np.isfinite(x).all()
    assert np.all(np.asarray(ours.support.check(x) if name != "GeneralizedPareto"
                             else ours.support.check(s).numpy()))
    if name == "LogisticNormal":  # back through the stick breaking: Normal(loc, scale) draws
        z = td.StickBreakingTransform().inv(T(x)).numpy()
        _within(z, ps["loc"], ps["scale"])
        close(z.std(0), ps["scale"], 0.1)
        return
    if name == "LKJCholesky":  # each correlation of L L^T: 2 Beta(a, a) - 1, a = eta - 1 + d / 2
        c = np.einsum("...ij,...kj->...ik", x, x)
        close(np.diagonal(c, 0, -2, -1), np.ones((n, 2, 4)), 1e-9)
        r = c[:, :, 2, 0]
        sd = 1.0 / np.sqrt(2 * ps["concentration"] + 4 - 1)
        _within(r, 0.0, sd)
        close(r.std(0), sd, 0.05)
        assert np.allclose(x, np.tril(x)) and np.all(np.diagonal(x, 0, -2, -1) > 0)
        return
    mean, sd = theirs.mean.numpy(), theirs.stddev.numpy()
    _within(x, mean, sd)
    if name == "Wishart":
        close(x.var(0), theirs.variance.numpy(), 0.3 * theirs.variance.numpy().max())


def test_rsample_gradients():
    """GeneralizedPareto and InverseGamma draws differentiate as the implicit-function identity
    dx/dtheta = -(dF/dtheta)(x) / f(x) (torch's autograd at Avalon's draws); a Wishart draw L A A^T L^T
    differentiates in L as finite differences at the same seed."""
    ps = dict(loc=np.array([0.3, -1.0]), scale=np.array([1.5, 0.4]), concentration=np.array([0.4, -0.3]))
    w = RNG.standard_normal((50, 2))

    def loss(w, *xs):
        x = ad.GeneralizedPareto(*xs).rsample((50,))
        return (x * w).sum(), x
    av.manual_seed(3)
    (_, x), grads = av.value_and_grad(loss, argnums=(1, 2, 3), has_aux=True)(w, *ps.values())
    tps = [T(v).requires_grad_() for v in ps.values()]
    d = td.GeneralizedPareto(*tps)
    xt = T(x.numpy())
    want = torch.autograd.grad((d.cdf(xt) * T(-w) / d.log_prob(xt).exp().detach()).sum(), tps)
    for g, tg in zip(grads, want):
        close(g, tg, 1e-7)
    # InverseGamma: x = rate / G, so dx/drate = x / rate
    c, r = np.array([2.0, 5.0]), np.array([0.7, 3.0])
    av.manual_seed(4)
    (_, x), g = av.value_and_grad(lambda r, c: ((y := ad.InverseGamma(c, r).rsample((40,))).sum(), y),
                                  has_aux=True)(r, c)
    close(g, (x.numpy() / r).sum(0), 1e-9)
    # Wishart: the Bartlett draw in the factor, against central differences of the same (traced) draws
    lt, df = tril_chol(3, 3), np.array(5.0)
    wv = RNG.standard_normal((4, 3, 3))
    vg = av.value_and_grad(lambda lt, df, wv: (ad.Wishart(df, scale_tril=lt).rsample((4,)) * wv).sum())

    def draw(lt):
        av.manual_seed(9)
        return vg(lt, df, wv)
    g = draw(lt)[1].numpy()
    h, fd = 1e-6, np.zeros((3, 3))
    for i, j in zip(*np.tril_indices(3)):
        e = np.zeros((3, 3))
        e[i, j] = h
        fd[i, j] = (draw(lt + e)[0].numpy() - draw(lt - e)[0].numpy()) / (2 * h)
    close(np.tril(g), fd, 1e-6)


# -- the exponential family, compile, checks -------------------------------------------------------------------

def test_exponential_family_bregman_entropy_and_kl():
    members = [ad.Normal(av.tensor(norm(3)), av.tensor(pos(3))),
               ad.Gamma(av.tensor(pos(3)), av.tensor(pos(3))),
               ad.Exponential(av.tensor(pos(3))), ad.Bernoulli(av.tensor(RNG.uniform(0.1, 0.9, 3))),
               ad.ContinuousBernoulli(av.tensor(RNG.uniform(0.1, 0.9, 3))),
               ad.Wishart(av.tensor(pos(2, lo=3, hi=6)), covariance_matrix=av.tensor(spd(2, 3, 3)))]
    for d in members:
        close(ad.ExponentialFamily.entropy(d), d.entropy(), 1e-8)
    for name in ("Beta", "Dirichlet", "Poisson", "Chi2", "Wishart"):
        assert issubclass(getattr(ad, name), ad.ExponentialFamily)
    assert not issubclass(ad.StudentT, ad.ExponentialFamily)
    # the Bregman KL (torch's fallback: no closed form for Wishart)
    # (one matrix each: torch sums the df term over its last two dims, across a batch)
    dfp, dfq, cp, cq = pos(lo=3, hi=6), pos(lo=3, hi=6), spd(3, 3), spd(3, 3)
    want = td.kl_divergence(td.Wishart(T(dfp), covariance_matrix=T(cp)), td.Wishart(T(dfq), covariance_matrix=T(cq)))
    got = ad.kl_divergence(ad.Wishart(av.tensor(dfp), covariance_matrix=av.tensor(cp)),
                           ad.Wishart(av.tensor(dfq), covariance_matrix=av.tensor(cq)))
    close(got, want, 1e-8)
    # and its gradient in q's parameters
    tq = T(cq).requires_grad_()
    tg = torch.autograd.grad(td.kl_divergence(td.Wishart(T(dfp), covariance_matrix=T(cp)),
                                              td.Wishart(T(dfq), covariance_matrix=tq)).sum(), tq)[0].numpy()
    g = av.grad(lambda q, dfp, cp, dfq: ad.kl_divergence(ad.Wishart(dfp, covariance_matrix=cp),
                                                         ad.Wishart(dfq, covariance_matrix=q)).sum())(
        cq, np.asarray(dfp), cp, np.asarray(dfq)).numpy()
    close(g + np.swapaxes(g, -1, -2), tg + np.swapaxes(tg, -1, -2), 1e-8)


def test_compiled_log_prob_matches_eager_and_torch():
    def lp(df, cov, x, eta, corr):
        return ad.Wishart(df, covariance_matrix=cov).log_prob(x) + ad.LKJCholesky(3, eta).log_prob(corr)
    f = av.compile(lp, backend="numpy")
    df, cov, x, eta, corr = pos(2, lo=3, hi=5), spd(2, 3, 3), spd(2, 3, 3), pos(2), corr_chol(2, 3, 3)
    want = (td.Wishart(T(df), covariance_matrix=T(cov)).log_prob(T(x))
            + td.LKJCholesky(3, T(eta)).log_prob(T(corr)))
    close(f(df, cov, x, eta, corr), want)
    close(f(df + 1.0, cov, x, eta, corr), td.Wishart(T(df + 1.0), covariance_matrix=T(cov)).log_prob(T(x))
          + td.LKJCholesky(3, T(eta)).log_prob(T(corr)))
    g = av.compile(lambda a, b, c, v: ad.GeneralizedPareto(a, b, c).log_prob(v), backend="numpy")
    loc, scale, conc = norm(3), pos(3), np.array([0.2, 0.0, -0.2])
    v = _gp_value(dict(loc=loc, scale=scale, concentration=conc))
    close(g(loc, scale, conc, v), td.GeneralizedPareto(T(loc), T(scale), T(conc)).log_prob(T(v)))


def test_arguments_and_values_are_checked_as_in_torch():
    with pytest.raises(ValueError, match="concentration"):
        ad.InverseGamma(av.tensor([1.0, -1.0]), av.tensor(1.0))
    with pytest.raises(ValueError, match="df2"):
        ad.FisherSnedecor(av.tensor([1.0]), av.tensor([0.0]))
    with pytest.raises(ValueError, match="scale"):
        ad.GeneralizedPareto(0.0, av.tensor(-1.0), 0.5)
    with pytest.raises(ValueError, match="support"):
        ad.GeneralizedPareto(av.tensor(0.0), av.tensor(1.0), av.tensor(-0.5)).log_prob(av.tensor(3.0))
    with pytest.raises(ValueError, match="support"):
        ad.InverseGamma(av.tensor(2.0), av.tensor(1.0)).log_prob(av.tensor(-1.0))
    with pytest.raises(ValueError, match="scale"):
        ad.LogisticNormal(av.tensor([0.0, 1.0]), av.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="support"):
        ad.LogisticNormal(av.tensor([0.0, 1.0]), av.tensor([1.0, 2.0])).log_prob(av.tensor([0.5, 0.6, 0.2]))
    with pytest.raises(ValueError, match="df"):
        ad.Wishart(av.tensor(1.5), covariance_matrix=av.tensor(np.eye(3)))
    with pytest.raises(ValueError, match="covariance_matrix"):
        ad.Wishart(4.0, covariance_matrix=av.tensor(np.array([[1.0, 2.0], [2.0, 1.0]])))
    with pytest.raises(AssertionError, match="Exactly one"):
        ad.Wishart(4.0)
    with pytest.warns(UserWarning, match="Low df"):
        ad.Wishart(av.tensor(2.5), covariance_matrix=av.tensor(np.eye(3)))
    with pytest.raises(ValueError, match="support"):
        ad.Wishart(4.0, covariance_matrix=av.tensor(np.eye(2))).log_prob(av.tensor(-np.eye(2)))
    with pytest.raises(ValueError, match="dim"):
        ad.LKJCholesky(1, 1.0)
    with pytest.raises(ValueError, match="concentration"):
        ad.LKJCholesky(3, av.tensor(-0.5))
    with pytest.raises(ValueError, match="support"):
        ad.LKJCholesky(2, av.tensor(1.0)).log_prob(av.tensor(np.array([[1.0, 0.0], [0.5, 0.5]])))
    with pytest.raises(NotImplementedError):
        ad.LKJCholesky(3, 1.0).rsample()
    ad.InverseGamma(av.tensor(-1.0), av.tensor(1.0), validate_args=False)
    assert ad.LKJCholesky.support is constraints.corr_cholesky and ad.Wishart.support is constraints.positive_definite
    assert ad.Wishart(4.0, covariance_matrix=av.tensor(np.eye(3))).arg_constraints["df"].lower_bound == 2
    assert np.asarray(constraints.positive_semidefinite.check(np.array([[1.0, 1.0], [1.0, 1.0]])))
    with pytest.raises(AssertionError, match="lengths"):
        transforms.CatTransform([transforms.ExpTransform()], lengths=[1, 2])

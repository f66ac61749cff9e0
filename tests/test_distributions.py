"""`avalon.distributions` against torch.distributions: log_prob, entropy, moments and KL divergences
(values and gradients, float64), sample statistics over many draws, fresh draws inside av.compile,
and a REINFORCE gradient through log_prob."""
import numpy as np
import pytest
import torch
import torch.distributions as td
from helpers import T

import avalon as av
from avalon import distributions as ad

RNG = np.random.default_rng(0)


def close(a, b, tol=1e-9):
    a = a.numpy() if isinstance(a, av.Tensor) else np.asarray(a)
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def params(kind):
    """(constructor name, parameter arrays, a value array for log_prob) per distribution kind."""
    logits = RNG.standard_normal((3, 4))
    if kind == "categorical_logits":
        return "Categorical", {"logits": logits}, RNG.integers(0, 4, (5, 3))
    if kind == "categorical_probs":
        return "Categorical", {"probs": RNG.random((3, 4)) + 0.1}, RNG.integers(0, 4, (3,))
    if kind == "onehot":
        return "OneHotCategorical", {"logits": logits}, np.eye(4)[RNG.integers(0, 4, (2, 3))]
    if kind == "bernoulli_probs":
        return "Bernoulli", {"probs": RNG.uniform(0.05, 0.95, (2, 3))}, RNG.integers(0, 2, (2, 3)).astype(np.float64)
    if kind == "bernoulli_logits":
        return "Bernoulli", {"logits": RNG.standard_normal((4,)) * 2}, RNG.integers(0, 2, (3, 4)).astype(np.float64)
    if kind == "normal":
        return "Normal", {"loc": RNG.standard_normal((2, 3)), "scale": RNG.uniform(0.5, 2, (2, 3))}, \
            RNG.standard_normal((4, 2, 3))
    return "Uniform", {"low": RNG.uniform(-2, -1, (3,)), "high": RNG.uniform(1, 2, (3,))}, RNG.uniform(-1, 1, (2, 3))


KINDS = ["categorical_logits", "categorical_probs", "onehot", "bernoulli_probs", "bernoulli_logits", "normal",
         "uniform"]


@pytest.mark.parametrize("kind", KINDS)
def test_log_prob_entropy_moments_and_gradients_match_torch(kind):
    name, ps, value = params(kind)
    ours = getattr(ad, name)(**{k: av.tensor(v) for k, v in ps.items()})
    theirs = getattr(td, name)(**{k: T(v) for k, v in ps.items()})
    assert ours.batch_shape == tuple(theirs.batch_shape) and ours.event_shape == tuple(theirs.event_shape)
    close(ours.log_prob(av.tensor(value)), theirs.log_prob(T(value)))
    close(ours.entropy(), theirs.entropy())
    for attr in ("mean", "variance", "stddev", "mode", "probs", "logits"):
        if hasattr(theirs, attr) and hasattr(ours, attr):
            close(getattr(ours, attr), getattr(theirs, attr))
    # gradients of log_prob + entropy with respect to every parameter
    w = RNG.standard_normal(tuple(theirs.log_prob(T(value)).shape))
    tps = {k: T(v).requires_grad_() for k, v in ps.items()}
    d = getattr(td, name)(**tps)
    ((d.log_prob(T(value)) * T(w)).sum() + d.entropy().sum()).backward()

    def objective(value, w, *xs):
        dist = getattr(ad, name)(**dict(zip(ps, xs)))
        return (dist.log_prob(value) * w).sum() + dist.entropy().sum()
    grads = av.grad(objective, argnums=tuple(range(2, 2 + len(ps))))(value, w, *ps.values())
    for g, k in zip(grads, ps):
        close(g, tps[k].grad)
    # and compiled: the same log_prob
    f = av.compile(lambda value, *xs: getattr(ad, name)(**dict(zip(ps, xs))).log_prob(value), backend="numpy")
    close(f(value, *ps.values()), theirs.log_prob(T(value)))


def test_numbers_as_parameters_are_float32_as_in_torch():
    n = ad.Normal(0.0, 2.0)
    assert n.loc.dtype == av.float32 and n.batch_shape == ()
    close(n.log_prob(av.tensor(np.float32(0.5))), td.Normal(0.0, 2.0).log_prob(torch.tensor(0.5)), 1e-6)
    b = ad.Bernoulli(probs=0.5)
    assert b.sample((3,)).shape == (3,) and b.sample().dtype == av.float32


def test_sample_statistics():
    av.manual_seed(0)
    n = 40000
    loc, scale = np.array([1.0, -2.0]), np.array([0.5, 3.0])
    s = ad.Normal(av.tensor(loc), av.tensor(scale)).sample((n,)).numpy()
    assert s.shape == (n, 2)
    assert np.all(np.abs(s.mean(0) - loc) < 4 * scale / np.sqrt(n)), s.mean(0)
    np.testing.assert_allclose(s.std(0), scale, rtol=0.03)
    u = ad.Uniform(av.tensor(-1.0), av.tensor(3.0)).rsample((n,)).numpy()
    assert u.min() >= -1 and u.max() < 3 and abs(u.mean() - 1) < 0.05 and abs(u.var() - 16 / 12) < 0.05
    p = np.array([0.2, 0.9])
    b = ad.Bernoulli(probs=av.tensor(p)).sample((n,)).numpy()
    assert set(np.unique(b)) <= {0.0, 1.0}
    np.testing.assert_allclose(b.mean(0), p, atol=0.015)
    probs = np.array([[0.1, 0.2, 0.7], [0.5, 0.5, 0.0]])
    c = ad.Categorical(probs=av.tensor(probs)).sample((n,))
    assert c.shape == (n, 2) and c.dtype == av.int64
    freq = np.stack([np.bincount(c.numpy()[:, r], minlength=3) / n for r in range(2)])
    np.testing.assert_allclose(freq, probs, atol=0.015)
    oh = ad.OneHotCategorical(probs=av.tensor(probs[0])).sample((n,)).numpy()
    assert oh.shape == (n, 3) and (oh.sum(-1) == 1).all()
    np.testing.assert_allclose(oh.mean(0), probs[0], atol=0.015)


def test_sampling_inside_compile_draws_afresh_and_repeats_under_manual_seed():
    def draw(loc, logits):
        return ad.Normal(loc, 1.0).rsample((3,)), ad.Categorical(logits=logits).sample((50,))
    f = av.compile(draw, backend="numpy")
    loc, logits = np.zeros(2, np.float32), np.zeros(4, np.float32)
    av.manual_seed(3)
    a1, c1 = f(loc, logits)
    a2, c2 = f(loc, logits)
    assert a1.shape == (3, 2) and c1.shape == (50,)
    assert not np.array_equal(a1.numpy(), a2.numpy()) and not np.array_equal(c1.numpy(), c2.numpy())
    av.manual_seed(3)
    b1, d1 = f(loc, logits)
    assert np.array_equal(a1.numpy(), b1.numpy()) and np.array_equal(c1.numpy(), d1.numpy())


def test_rsample_is_reparameterized():
    av.manual_seed(0)
    loc, scale = np.array([0.5, -1.0]), np.array([2.0, 0.5])

    def f(loc, scale):
        return ad.Normal(loc, scale).rsample((1000,)).sum()
    av.manual_seed(1)
    g_loc, g_scale = av.grad(f, argnums=(0, 1))(loc, scale)
    av.manual_seed(1)
    x = av.compile(lambda l, s: ad.Normal(l, s).rsample((1000,)), backend="numpy")(loc, scale).numpy()
    close(g_loc, np.full(2, 1000.0))
    close(g_scale, ((x - loc) / scale).sum(0), 1e-6)
    with pytest.warns(UserWarning, match="depends on none"):  # sample() carries no gradient
        assert np.all(av.grad(lambda l: ad.Normal(l, 1.0).sample((5,)).sum())(loc).numpy() == 0)


def test_reinforce_gradient_matches_torch():
    """A softmax policy over 4 actions for 3 states, one compiled step: sample actions, weight their
    log-probabilities by the returns, differentiate; torch's autograd on the same actions is the oracle."""
    theta = RNG.standard_normal((3, 4))
    returns = RNG.standard_normal((8, 3))

    def reinforce_loss(theta, actions, returns):
        dist = ad.Categorical(logits=theta)
        return -(dist.log_prob(actions) * returns).mean() - 0.01 * dist.entropy().sum()

    def step(theta, returns):
        actions = ad.Categorical(logits=theta).sample((8,))  # (8, 3), a fresh draw per call
        loss, grad = av.value_and_grad(reinforce_loss)(theta, actions, returns)
        return loss, grad, actions

    compiled = av.compile(step, backend="numpy")
    for _ in range(2):
        loss, grad, actions = compiled(theta, returns)
        tt = T(theta).requires_grad_()
        tdist = td.Categorical(logits=tt)
        tloss = -(tdist.log_prob(T(actions.numpy())) * T(returns)).mean() - 0.01 * tdist.entropy().sum()
        tloss.backward()
        close(loss, tloss)
        close(grad, tt.grad)
    loss, grad = av.value_and_grad(reinforce_loss)(theta, actions, returns)  # eagerly too
    close(grad, tt.grad)


def test_kl_divergence_matches_torch():
    pairs = [("Categorical", {"logits": (3, 4)}), ("Normal", {"loc": (2, 3), "scale": (2, 3)}),
             ("Bernoulli", {"probs": (5,)}), ("OneHotCategorical", {"probs": (2, 4)})]
    for name, shapes in pairs:
        def make(lib, mod, vals, name=name):
            return getattr(mod, name)(**{k: lib(v) for k, v in vals.items()})
        vp = {k: RNG.uniform(0.1, 0.9, s) for k, s in shapes.items()}
        vq = {k: RNG.uniform(0.1, 0.9, s) for k, s in shapes.items()}
        want = td.kl_divergence(make(T, td, vp), make(T, td, vq))
        close(ad.kl_divergence(make(av.tensor, ad, vp), make(av.tensor, ad, vq)), want)
    # zeros in the probabilities: torch's inf and 0 conventions
    p, q = np.array([0.0, 0.5, 0.5]), np.array([0.5, 0.5, 0.0])
    close(ad.kl_divergence(ad.Categorical(probs=av.tensor(p)), ad.Categorical(probs=av.tensor(q))),
          td.kl_divergence(td.Categorical(probs=T(p)), td.Categorical(probs=T(q))))
    close(ad.kl_divergence(ad.Bernoulli(probs=av.tensor([0.0, 1.0, 0.3])), ad.Bernoulli(probs=av.tensor([0.5, 0.2, 1.0]))),
          td.kl_divergence(td.Bernoulli(probs=torch.tensor([0.0, 1.0, 0.3])),
                           td.Bernoulli(probs=torch.tensor([0.5, 0.2, 1.0]))), 1e-6)
    lo, hi = np.array([0.0, -1.0]), np.array([1.0, 2.0])
    close(ad.kl_divergence(ad.Uniform(av.tensor(lo), av.tensor(hi)), ad.Uniform(av.tensor(lo - 1), av.tensor(hi - 1))),
          td.kl_divergence(td.Uniform(T(lo), T(hi)), td.Uniform(T(lo - 1), T(hi - 1))))
    # the gradient of a Gaussian KL (a VAE's regularizer)
    mu, sd = RNG.standard_normal(4), RNG.uniform(0.5, 2, 4)
    tm, ts = T(mu).requires_grad_(), T(sd).requires_grad_()
    td.kl_divergence(td.Normal(tm, ts), td.Normal(0.0, 1.0)).sum().backward()
    gm, gs = av.grad(lambda m, s: ad.kl_divergence(ad.Normal(m, s), ad.Normal(0.0, 1.0)).sum(), argnums=(0, 1))(mu, sd)
    close(gm, tm.grad)
    close(gs, ts.grad)
    with pytest.raises(NotImplementedError):
        ad.kl_divergence(ad.Normal(0.0, 1.0), ad.Categorical(logits=av.zeros(3)))  # torch registers none either


def test_arguments_are_checked_as_in_torch():
    with pytest.raises(ValueError, match="scale"):
        ad.Normal(0.0, -1.0)
    with pytest.raises(ValueError, match="probs"):
        ad.Bernoulli(probs=av.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="Either"):
        ad.Categorical(probs=av.tensor([0.5, 0.5]), logits=av.tensor([0.0, 0.0]))
    with pytest.raises(ValueError, match="support"):
        ad.Categorical(logits=av.zeros(3)).log_prob(av.tensor(3))
    ad.Normal(0.0, -1.0, validate_args=False)  # unchecked when asked

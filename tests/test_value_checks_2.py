"""Value checks, round 2: torch's value-dependent errors kept eagerly, under av.compile and av.grad.
Real() parameters (a nan loc / logits) are checked as torch checks them; a distribution built on an
inner one names the parameter the user passed (Chi2's df, Beta's concentration1, Pareto's alpha); a
traced support bound is named by its parameter (its values are not known when the message is written);
MultivariateNormal.log_prob checks its value's shape and support; SyncBatchNorm's global count check
holds in a traced graph; pinv(hermitian=True) refuses a nan; lu_solve refuses pivots out of range."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.distributions as td

import avalon as av
from avalon import distributions as ad
from avalon import nn
from avalon.ir.reference import LinAlgError, ValueCheckError
from avalon.ir.reference.collective import set_collective

pytestmark = pytest.mark.usefixtures("torch_validates")

F32 = np.float32
RNG = np.random.default_rng(7)
REAL3 = RNG.standard_normal(3).astype(F32)
POS3 = (RNG.random(3) + 0.5).astype(F32)
NAN3 = np.array([0.3, np.nan, 1.1], F32)
NEG3 = np.array([0.5, -1.0, 2.0], F32)


def _msg(name, shape, dist, constraint):
    return re.escape(f"Expected parameter {name} (Tensor of shape {shape}) of distribution {dist} to satisfy the "
                     f"constraint {constraint}, but found invalid values")


# (id, fn(D, a, b, x) -> log_prob, valid (a, b, x), the invalid one (index, value), the message)
CASES = [
    ("Normal-loc-nan", lambda D, a, b, x: D.Normal(a, b).log_prob(x), (REAL3, POS3, REAL3), (0, NAN3),
     _msg("loc", (3,), "Normal", "Real()")),
    ("Laplace-loc-nan", lambda D, a, b, x: D.Laplace(a, b).log_prob(x), (REAL3, POS3, REAL3), (0, NAN3),
     _msg("loc", (3,), "Laplace", "Real()")),
    ("StudentT-loc-nan", lambda D, a, b, x: D.StudentT(b + 2, a, b).log_prob(x), (REAL3, POS3, REAL3), (0, NAN3),
     _msg("loc", (3,), "StudentT", "Real()")),
    ("Categorical-logits-nan", lambda D, a, b, x: D.Categorical(logits=a * b).entropy(), (REAL3, POS3, REAL3),
     (0, NAN3), _msg("logits", (3,), "Categorical", "IndependentConstraint(Real(), 1)")),
    ("MVN-loc-nan", lambda D, a, b, x: D.MultivariateNormal(a, scale_tril=_diag(D, b)).log_prob(x),
     (REAL3, POS3, REAL3), (0, NAN3), _msg("loc", (3,), "MultivariateNormal", "IndependentConstraint(Real(), 1)")),
    ("MVN-value-nan", lambda D, a, b, x: D.MultivariateNormal(a, scale_tril=_diag(D, b)).log_prob(x),
     (REAL3, POS3, REAL3), (2, NAN3),
     re.escape("Expected value argument (Tensor of shape (3,)) to be within the support "
               "(IndependentConstraint(Real(), 1)) of the distribution MultivariateNormal")),
    ("Chi2-df", lambda D, a, b, x: D.Chi2(b).log_prob(x), (REAL3, POS3, POS3), (1, NEG3),
     _msg("df", (3,), "Chi2", "GreaterThan(lower_bound=0.0)")),
    ("Beta-concentration1", lambda D, a, b, x: D.Beta(b, b + 1).log_prob(x / 4), (REAL3, POS3, POS3), (1, NEG3 - 1),
     _msg("concentration1", (3,), "Beta", "GreaterThan(lower_bound=0.0)")),
    ("Pareto-alpha", lambda D, a, b, x: D.Pareto(b, a * a + 1).log_prob(x + 3), (REAL3, POS3, POS3), (0, NAN3),
     _msg("alpha", (3,), "Pareto", "GreaterThan(lower_bound=0.0)")),
]
IDS = [c[0] for c in CASES]


def _diag(D, b):
    return (b.diag_embed() if hasattr(b, "diag_embed") else av.diag_embed(b))


def _torch(fn, args, grad=False):
    ts = [torch.tensor(a, requires_grad=(grad and i == 1)) for i, a in enumerate(args)]
    out = fn(td, *ts)
    if not grad:
        return out.detach().numpy()
    out.sum().backward()
    return ts[1].grad.numpy()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_invalid_raise_eagerly_compiled_and_under_grad_as_torch(case):
    _, fn, valid, (k, bad_value), msg = case
    bad = list(valid)
    bad[k] = bad_value
    with pytest.raises(ValueError):  # the oracle refuses it
        _torch(fn, bad)
    with pytest.raises(ValueError, match=msg):
        fn(ad, *[av.tensor(a) for a in bad])
    f = av.compile(lambda a, b, x: fn(ad, a, b, x), backend="numpy")
    np.testing.assert_allclose(f(*[av.tensor(a) for a in valid]).numpy(), _torch(fn, valid), rtol=2e-5, atol=2e-5)
    with pytest.raises(ValueCheckError, match=msg):
        f(*[av.tensor(a) for a in bad])
    g = av.grad(lambda a, b, x: fn(ad, a, b, x).sum(), argnums=1)
    np.testing.assert_allclose(g(*valid).numpy(), _torch(fn, valid, grad=True), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueCheckError, match=msg):
        g(*bad)


def test_binomial_support_message_torchs_eagerly_and_names_total_count_traced():
    p, k = av.tensor(np.array([0.2, 0.5, 0.9], F32)), av.tensor(np.array([0.0, 5.0, 1.0], F32))
    with pytest.raises(ValueError) as t:
        td.Binomial(4, probs=torch.tensor(p.numpy())).log_prob(torch.tensor(k.numpy()))
    torch_support = re.search(r"support \((.*?)\) of", str(t.value)).group(1)
    assert torch_support == "IntegerInterval(lower_bound=0, upper_bound=tensor([4., 4., 4.]))"
    with pytest.raises(ValueError, match=re.escape(f"support ({torch_support}) of the distribution Binomial")):
        ad.Binomial(4, probs=p).log_prob(k)
    f = av.compile(lambda n, p, k: ad.Binomial(n, probs=p).log_prob(k))
    with pytest.raises(ValueCheckError, match=re.escape("(IntegerInterval(lower_bound=0, upper_bound=total_count))")):
        f(av.tensor(np.full(3, 4.0, F32)), p, k)
    np.testing.assert_allclose(f(av.tensor(np.full(3, 6.0, F32)), p, k).numpy(),
                               td.Binomial(6, probs=torch.tensor(p.numpy())).log_prob(torch.tensor(k.numpy())).numpy(),
                               rtol=1e-5)


@pytest.mark.parametrize("shape,err", [((3,), "The right-most size of value must match event_shape: (3,) vs (2,)."),
                                       ((4, 3, 2), "Value is not broadcastable with batch_shape+event_shape: "
                                                   "(4, 3, 2) vs (2, 2).")])
def test_mvn_log_prob_value_shape_checked_as_torch(shape, err):
    loc, tril = RNG.standard_normal((2, 2)).astype(F32), np.diag(POS3[:2]).astype(F32)
    x = RNG.standard_normal(shape).astype(F32)
    with pytest.raises(ValueError, match=re.escape(err.split(":")[0])):
        td.MultivariateNormal(torch.tensor(loc), scale_tril=torch.tensor(tril)).log_prob(torch.tensor(x))
    with pytest.raises(ValueError, match=re.escape(err)):
        ad.MultivariateNormal(av.tensor(loc), scale_tril=av.tensor(tril)).log_prob(av.tensor(x))
    with pytest.raises(ValueError, match=re.escape(err)):
        av.compile(lambda m, t, v: ad.MultivariateNormal(m, scale_tril=t).log_prob(v))(
            av.tensor(loc), av.tensor(tril), av.tensor(x))


class _AloneInAGroup:
    """A stand-in process group of two ranks, the other one holding no samples (sums unchanged)."""

    def world_size(self, group):
        return 2

    def all_reduce_array(self, x, reduction, group):
        return np.asarray(x)

    def all_reduce_tensor_(self, x, reduction, group):
        pass


def test_sync_batch_norm_global_count_checked_when_a_traced_graph_runs():
    old = set_collective(_AloneInAGroup())
    try:
        bn = nn.SyncBatchNorm(3)
        f = av.compile(lambda m, x: m(x))
        x2 = RNG.standard_normal((2, 3)).astype(F32)
        ref = torch.nn.BatchNorm1d(3)(torch.tensor(x2)).detach().numpy()
        np.testing.assert_allclose(f(bn, av.tensor(x2)).numpy(), ref, rtol=1e-4, atol=1e-5)
        with pytest.raises(ValueError):
            torch.nn.BatchNorm1d(3)(torch.tensor(x2[:1]))
        with pytest.raises(ValueError, match="expected more than 1 value per channel over all processes"):
            bn(av.tensor(x2[:1]))
        with pytest.raises(ValueCheckError, match="expected more than 1 value per channel over all processes"):
            f(bn, av.tensor(x2[:1]))
    finally:
        set_collective(old)


def test_pinv_hermitian_refuses_a_nan_eagerly_and_compiled():
    b = RNG.standard_normal((3, 3)).astype(F32)
    a = b @ b.T + np.eye(3, dtype=F32)
    f = av.compile(lambda m: av.linalg.pinv(m, hermitian=True))
    np.testing.assert_allclose(f(av.tensor(a)).numpy(), torch.linalg.pinv(torch.tensor(a), hermitian=True).numpy(),
                               rtol=1e-4, atol=1e-5)
    for i, j in [(0, 1), (2, 2)]:  # torch: a LinAlgError off the diagonal; zeros in silence on it
        bad = a.copy()
        bad[i, j] = bad[j, i] = np.nan
        with pytest.raises(LinAlgError, match="linalg.eigh: The algorithm failed to converge"):
            av.linalg.pinv(av.tensor(bad), hermitian=True)
        with pytest.raises(LinAlgError, match="linalg.eigh: The algorithm failed to converge"):
            f(av.tensor(bad))
    with pytest.raises(torch.linalg.LinAlgError):
        bad = a.copy()
        bad[0, 1] = bad[1, 0] = np.nan
        torch.linalg.pinv(torch.tensor(bad), hermitian=True)


@pytest.mark.parametrize("pivots,msg", [([0, 2, 3], "must all be greater or equal to 1"),
                                        ([1, 4, 3], "must all be smaller or equal to LU.size(-2)")])
def test_lu_solve_pivots_out_of_range_as_torch(pivots, msg):
    a = (RNG.standard_normal((3, 3)) + 3 * np.eye(3)).astype(F32)
    b = RNG.standard_normal((3, 2)).astype(F32)
    lu, piv = torch.linalg.lu_factor(torch.tensor(a))
    bad = torch.tensor(pivots, dtype=torch.int32)
    with pytest.raises(RuntimeError, match=re.escape(msg)):
        torch.linalg.lu_solve(lu, bad, torch.tensor(b))
    f = av.compile(lambda l, p, r: av.linalg.lu_solve(l, p, r))
    args = [av.tensor(lu.numpy()), av.tensor(piv.numpy()), av.tensor(b)]
    np.testing.assert_allclose(f(*args).numpy(), torch.linalg.lu_solve(lu, piv, torch.tensor(b)).numpy(),
                               rtol=1e-4, atol=1e-5)
    args[1] = av.tensor(np.array(pivots, np.int32))
    with pytest.raises(RuntimeError, match=re.escape(msg)):
        av.linalg.lu_solve(*args)
    with pytest.raises(ValueCheckError, match=re.escape(msg)):
        f(*args)

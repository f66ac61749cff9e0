"""The margin, embedding, likelihood and CTC losses (and their modules) against torch: values in every
reduction, and gradients with respect to every float input (a random projection of 'none'); and
F.unfold / F.fold / F.channel_shuffle with their modules, values and gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import T, rel

import avalon as av
from avalon import nn
from avalon.nn import functional as F

REDUCTIONS = ["mean", "sum", "none"]


def check(fn, floats: list[np.ndarray], consts: tuple = (), tol: float = 1e-10) -> None:
    """fn(F, *floats, *consts) with F = avalon.nn.functional against F = torch.nn.functional (ported
    code is the same text): the value, and gradients w.r.t. every array in `floats`, in float64. A
    non-scalar loss is projected on fixed random weights before differentiating; `consts` (targets,
    weights) are passed as arguments and not differentiated."""
    tx = [torch.tensor(a, requires_grad=True) for a in floats]
    want = fn(TF, *tx, *[T(c) for c in consts])
    proj = np.random.default_rng(99).standard_normal(tuple(want.shape))
    (want * torch.tensor(proj)).sum().backward()

    def objective(*xs):
        return av.ops.sum(fn(F, *xs[:-1]) * xs[-1])

    args = [av.tensor(a) for a in floats] + [av.tensor(c) for c in consts]
    got = fn(F, *args)
    assert got.shape == tuple(want.shape) and got.dtype == av.float64
    assert rel(got, want) < tol, (got.numpy(), want.detach().numpy())
    _, grads = av.value_and_grad(objective, argnums=tuple(range(len(floats))))(*args, av.tensor(proj))
    for i, (g, t) in enumerate(zip(grads, tx)):
        assert rel(g, t.grad) < tol, (i, g.numpy(), t.grad.numpy())


@pytest.fixture
def rng():
    return np.random.default_rng(3)


def _pm1(rng, shape):
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_margin_ranking(reduction, rng):
    a, b, y = rng.standard_normal(7), rng.standard_normal(7), _pm1(rng, 7)
    check(lambda F, a, b, y: F.margin_ranking_loss(a, b, y, 0.3, reduction=reduction), [a, b], (y,))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_hinge_embedding(reduction, rng):
    x, y = rng.standard_normal((4, 5)) * 2, _pm1(rng, (4, 5))
    y[0, 0] = 0.0  # neither 1 nor -1: torch's formula gives both terms
    check(lambda F, x, y: F.hinge_embedding_loss(x, y, 1.5, reduction=reduction), [x], (y,))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_soft_margin(reduction, rng):
    x, y = rng.standard_normal((3, 6)) * 3, _pm1(rng, (3, 6))
    check(lambda F, x, y: F.soft_margin_loss(x, y, reduction=reduction), [x], (y,))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_multilabel_soft_margin(reduction, rng):
    x, y = rng.standard_normal((4, 5)) * 3, (rng.random((4, 5)) < 0.4).astype(np.float64)
    w = rng.uniform(0.5, 2, 5)
    check(lambda F, x, y: F.multilabel_soft_margin_loss(x, y, reduction=reduction), [x], (y,))
    check(lambda F, x, y, w: F.multilabel_soft_margin_loss(x, y, w, reduction=reduction), [x], (y, w))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("batched", [True, False])
def test_cosine_embedding(reduction, batched, rng):
    shape = (6, 4) if batched else (4,)
    a, b = rng.standard_normal(shape), rng.standard_normal(shape)
    y = _pm1(rng, shape[:-1])
    check(lambda F, a, b, y: F.cosine_embedding_loss(a, b, y, 0.2, reduction=reduction), [a, b], (y,))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("p", [1, 2])
def test_multi_margin(reduction, p, rng):
    x, t, w = rng.standard_normal((6, 5)), rng.integers(0, 5, 6), rng.uniform(0.5, 2, 5)
    check(lambda F, x, t: F.multi_margin_loss(x, t, p, 0.7, reduction=reduction), [x], (t,))
    check(lambda F, x, t, w: F.multi_margin_loss(x, t, p, 0.7, w, reduction=reduction), [x], (t, w))


def test_multi_margin_unbatched(rng):
    x = rng.standard_normal(5)
    for reduction in REDUCTIONS:
        check(lambda F, x, t, r=reduction: F.multi_margin_loss(x, t, reduction=r), [x], (np.array(2),))
    with pytest.raises(IndexError, match="out of bounds"):
        F.multi_margin_loss(av.tensor(rng.standard_normal((2, 3))), av.tensor(np.array([0, 3])))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_multilabel_margin(reduction, rng):
    x = rng.standard_normal((4, 5))
    t = np.array([[3, 0, -1, 1, 2], [1, 2, 4, 0, 3], [-1, 1, 2, 3, 0], [2, 2, -1, -1, -1]])  # padded, full, none, dup
    check(lambda F, x, t: F.multilabel_margin_loss(x, t, reduction=reduction), [x], (t,))
    check(lambda F, x, t: F.multilabel_margin_loss(x, t, reduction=reduction), [x[0]], (t[0],))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("p,swap", [(2, False), (1, True), (3, False)])
def test_triplet_margin(reduction, p, swap, rng):
    a, pos, neg = (rng.standard_normal((5, 4)) for _ in range(3))
    check(lambda F, a, pos, neg: F.triplet_margin_loss(a, pos, neg, 1.5, p, 1e-6, swap, reduction=reduction),
          [a, pos, neg])
    check(lambda F, a, pos, neg: F.triplet_margin_loss(a, pos, neg, 1.5, reduction=reduction),
          [a[0], pos[0], neg[0]])


def test_triplet_margin_with_distance(rng):
    a, pos, neg = (rng.standard_normal((5, 4)) for _ in range(3))
    check(lambda F, a, pos, neg: F.triplet_margin_with_distance_loss(
        a, pos, neg, distance_function=lambda x, y: 1.0 - F.cosine_similarity(x, y), margin=0.5, swap=True),
        [a, pos, neg])
    check(lambda F, a, pos, neg: F.triplet_margin_with_distance_loss(a, pos, neg, reduction="none"), [a, pos, neg])
    with pytest.raises(ValueError, match="margin must be greater than 0"):
        F.triplet_margin_loss(av.tensor(a), av.tensor(pos), av.tensor(neg), margin=0.0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("log_input,full", [(True, False), (False, False), (True, True), (False, True)])
def test_poisson_nll(reduction, log_input, full, rng):
    x = rng.standard_normal((4, 5)) if log_input else rng.uniform(0.1, 3, (4, 5))
    t = rng.poisson(2.0, (4, 5)).astype(np.float64)
    check(lambda F, x, t: F.poisson_nll_loss(x, t, log_input, full, reduction=reduction), [x], (t,))
    # torch's gradient w.r.t. a zero target is nan with full=True (0 times log 0); Avalon's is 0
    check(lambda F, x, t: F.poisson_nll_loss(x, t, log_input, full, reduction=reduction), [x, t + 1.0])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("var_shape", [(4, 3), (4,), (4, 1)])
@pytest.mark.parametrize("full", [False, True])
def test_gaussian_nll(reduction, var_shape, full, rng):
    x, t = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    v = rng.uniform(0.2, 2, var_shape)
    v.flat[0] = 1e-9  # below eps: clamped, with torch's gradient (the clamp is invisible to it)
    check(lambda F, x, t, v: F.gaussian_nll_loss(x, t, v, full, reduction=reduction), [x, t, v])
    check(lambda F, x, t: F.gaussian_nll_loss(x, t, 0.7, full, reduction=reduction), [x, t])


def test_gaussian_nll_errors(rng):
    x = av.tensor(rng.standard_normal((4, 3)))
    with pytest.raises(ValueError, match="negative"):
        F.gaussian_nll_loss(x, x, av.tensor(-np.ones((4, 3))))
    with pytest.raises(ValueError, match="incorrect size"):
        F.gaussian_nll_loss(x, x, av.tensor(np.ones((2, 2))))


def test_legacy_flags_and_bad_reduction(rng):
    x, y = rng.standard_normal(6), _pm1(rng, 6)
    check(lambda F, x, y: F.soft_margin_loss(x, y, size_average=False), [x], (y,))
    check(lambda F, x, y: F.margin_ranking_loss(x, y, y, reduce=False), [x], (y,))
    with pytest.raises(ValueError, match="not a valid value for reduction"):
        F.hinge_embedding_loss(av.tensor(x), av.tensor(y), reduction="batchmean")


MODULES = [
    ("MarginRankingLoss", dict(margin=0.2), 3),
    ("HingeEmbeddingLoss", dict(margin=0.5), 2),
    ("SoftMarginLoss", dict(), 2),
    ("MultiLabelSoftMarginLoss", dict(), 2),
    ("CosineEmbeddingLoss", dict(margin=0.1), 3),
    ("MultiMarginLoss", dict(p=2, margin=0.5), 2),
    ("MultiLabelMarginLoss", dict(), 2),
    ("TripletMarginLoss", dict(margin=0.5, p=1.0, swap=True), 3),
    ("TripletMarginWithDistanceLoss", dict(margin=0.5), 3),
    ("PoissonNLLLoss", dict(log_input=False, full=True), 2),
    ("GaussianNLLLoss", dict(full=True), 3),
    ("CTCLoss", dict(zero_infinity=True), 4),
]


def _module_inputs(name: str, rng) -> list[np.ndarray]:
    if name in ("MultiMarginLoss",):
        return [rng.standard_normal((4, 5)), rng.integers(0, 5, 4)]
    if name == "MultiLabelMarginLoss":
        return [rng.standard_normal((2, 4)), np.array([[1, 3, -1, 0], [2, -1, 0, 0]])]
    if name == "MultiLabelSoftMarginLoss":
        return [rng.standard_normal((4, 5)), (rng.random((4, 5)) < 0.5).astype(np.float64)]
    if name == "CosineEmbeddingLoss":
        return [rng.standard_normal((4, 5)), rng.standard_normal((4, 5)), _pm1(rng, 4)]
    if name == "MarginRankingLoss":
        return [rng.standard_normal(4), rng.standard_normal(4), _pm1(rng, 4)]
    if name in ("HingeEmbeddingLoss", "SoftMarginLoss"):
        return [rng.standard_normal((4, 5)), _pm1(rng, (4, 5))]
    if name == "PoissonNLLLoss":
        return [rng.uniform(0.1, 2, (4, 5)), rng.poisson(2.0, (4, 5)).astype(np.float64)]
    if name == "CTCLoss":
        x, tg, il, tl = _ctc_case(rng)
        return [TF.log_softmax(T(x), 2).numpy(), tg, il, tl]
    if name == "GaussianNLLLoss":
        return [rng.standard_normal((4, 5)), rng.standard_normal((4, 5)), rng.uniform(0.5, 2, (4, 5))]
    return [rng.standard_normal((4, 5)) for _ in range(3)]


@pytest.mark.parametrize("name,kw,nargs", MODULES, ids=[m[0] for m in MODULES])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_modules(name, kw, nargs, reduction, rng):
    xs = _module_inputs(name, rng)
    got = getattr(nn, name)(**kw, reduction=reduction)(*[av.tensor(x) for x in xs])
    want = getattr(torch.nn, name)(**kw, reduction=reduction)(*[T(x) for x in xs])
    assert rel(got, want) < 1e-10


def test_module_weight_is_a_buffer(rng):
    w = rng.uniform(0.5, 2, 5)
    for m in (nn.MultiMarginLoss(weight=w), nn.MultiLabelSoftMarginLoss(weight=w)):
        assert [k for k, _ in nn.named_parameters(m)] == []
        assert list(nn.state_dict(m)) == ["weight"]


def test_losses_trace_and_compile(rng):
    """Every loss is composed of graph ops: a compiled call gives the eager value."""
    x, t = rng.standard_normal((4, 5)), rng.integers(0, 5, 4)
    tl = np.array([[1, 3, -1, 0, 0], [2, -1, 0, 0, 0], [0, 1, 2, 3, 4], [4, -1, 0, 0, 0]])

    def losses(x, t, tl):
        return (F.multi_margin_loss(x, t) + F.multilabel_margin_loss(x, tl) + F.soft_margin_loss(x, x)
                + F.poisson_nll_loss(x, x * x, full=True))

    args = (av.tensor(x), av.tensor(t), av.tensor(tl))
    np.testing.assert_allclose(av.compile(losses)(*args).numpy(), losses(*args).numpy(), rtol=1e-12)


# -- CTC ----------------------------------------------------------------------------------------------

def _ctc_case(rng):
    t, n, c, s = 12, 4, 5, 4
    x = rng.standard_normal((t, n, c))
    tg = rng.integers(1, c, (n, s))
    tg[1, 1] = tg[1, 0]          # a repeated label needs a blank between
    tg[3] = [1, 1, 1, 0]         # ... so 3 frames cannot hold it: an impossible alignment (inf)
    il, tl = np.array([12, 10, 12, 3]), np.array([4, 3, 0, 3])
    return x, tg, il, tl


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ctc_loss(reduction, rng):
    """Gradients through log_softmax: torch's kernel returns the gradient w.r.t. the logits (its
    log_probs gradient carries an extra exp(log_probs)), so that is where both agree."""
    x, tg, il, tl = _ctc_case(rng)
    check(lambda F, x, tg, il, tl: F.ctc_loss(F.log_softmax(x, 2), tg, il, tl, reduction=reduction,
                                              zero_infinity=True), [x], (tg, il, tl))
    got = F.ctc_loss(F.log_softmax(av.tensor(x), 2), av.tensor(tg), av.tensor(il), av.tensor(tl), reduction=reduction)
    want = TF.ctc_loss(TF.log_softmax(T(x), 2), T(tg), T(il), T(tl), reduction=reduction)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12)  # inf where impossible


def test_ctc_loss_forms(rng):
    """Concatenated targets with tuple lengths, unbatched input, blank elsewhere, and the module."""
    x, tg, il, tl = _ctc_case(rng)
    lp = TF.log_softmax(T(x), 2)
    cat = np.concatenate([tg[i, :tl[i]] for i in range(len(tl))])
    got = F.ctc_loss(F.log_softmax(av.tensor(x), 2), av.tensor(cat), tuple(il), tuple(tl), reduction="none")
    want = TF.ctc_loss(lp, T(cat), tuple(il), tuple(tl), reduction="none")
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12)
    got = F.ctc_loss(F.log_softmax(av.tensor(x[:, 0]), 1), av.tensor(tg[0]), av.tensor(np.int64(12)),
                     av.tensor(np.int64(4)))
    want = TF.ctc_loss(lp[:, 0], T(tg[0]), torch.tensor(12), torch.tensor(4))
    assert rel(got, want) < 1e-12
    tg4 = np.where(tg == 4, 0, tg)  # blank = 4
    got = nn.CTCLoss(blank=4, zero_infinity=True)(F.log_softmax(av.tensor(x), 2), av.tensor(tg4), av.tensor(il),
                                                  av.tensor(tl))
    want = torch.nn.CTCLoss(blank=4, zero_infinity=True)(lp, T(tg4), T(il), T(tl))
    assert rel(got, want) < 1e-12


def test_ctc_loss_compiles_float32(rng):
    x, tg, il, tl = _ctc_case(rng)
    x = x.astype(np.float32)

    def loss(x, tg, il, tl):
        return F.ctc_loss(F.log_softmax(x, 2), tg, il, tl, zero_infinity=True)

    args = (av.tensor(x), av.tensor(tg), av.tensor(il), av.tensor(tl))
    got = av.compile(loss)(*args)
    assert got.dtype == av.float32
    want = TF.ctc_loss(TF.log_softmax(T(x), 2), T(tg), T(il), T(tl), zero_infinity=True)
    assert rel(got, want) < 1e-5


# -- unfold, fold, channel shuffle ------------------------------------------------------------------------

WINDOWS = [  # input shape, kernel_size, dilation, padding, stride
    ((2, 3, 7, 8), 3, 1, 0, 1),
    ((2, 3, 7, 8), (2, 3), (1, 2), (1, 0), (2, 3)),
    ((1, 2, 5, 5), 1, 1, 0, 1),
    ((3, 6, 6), 2, 2, 1, 2),
    ((1, 1, 9, 10), (3, 2), 1, 2, (3, 1)),
]


@pytest.mark.parametrize("shape,k,d,p,s", WINDOWS)
def test_unfold_fold(shape, k, d, p, s, rng):
    x = rng.standard_normal(shape)
    check(lambda F, x: F.unfold(x, k, d, p, s), [x], tol=1e-15)
    cols = TF.unfold(T(x), k, d, p, s).numpy()
    cols = rng.standard_normal(cols.shape)
    check(lambda F, c: F.fold(c, shape[-2:], k, d, p, s), [cols], tol=1e-15)
    m = nn.Unfold(k, d, p, s)
    assert rel(m(av.tensor(x)), torch.nn.Unfold(k, d, p, s)(T(x))) == 0
    f = nn.Fold(shape[-2:], k, d, p, s)
    assert rel(f(av.tensor(cols)), torch.nn.Fold(shape[-2:], k, d, p, s)(T(cols))) < 1e-15


def test_unfold_is_a_copy():
    """inf and nan come through as themselves (a one-hot convolution would give nan around an inf)."""
    x = np.arange(32.0).reshape(1, 2, 4, 4)
    x[0, 0, 1, 1], x[0, 1, 2, 2] = np.inf, np.nan
    np.testing.assert_array_equal(F.unfold(av.tensor(x), 2).numpy(), TF.unfold(T(x), 2).numpy())


def test_unfold_fold_errors(rng):
    x = av.tensor(rng.standard_normal((1, 2, 3, 3)))
    with pytest.raises(RuntimeError, match="at least one"):
        F.unfold(x, 4)
    with pytest.raises(RuntimeError, match="divisible by the product of kernel_size"):
        F.fold(av.tensor(rng.standard_normal((1, 5, 4))), (3, 3), 2)
    with pytest.raises(RuntimeError, match="sliding blocks"):
        F.fold(av.tensor(rng.standard_normal((1, 8, 5))), (3, 3), 2)


def test_channel_shuffle(rng):
    x = rng.standard_normal((2, 6, 3, 4))
    check(lambda F, x: F.channel_shuffle(x, 3), [x], tol=1e-15)
    assert rel(nn.ChannelShuffle(2)(av.tensor(x)), torch.nn.ChannelShuffle(2)(T(x))) == 0
    with pytest.raises(RuntimeError, match="divisible by groups"):
        F.channel_shuffle(av.tensor(x), 4)

"""Loss functions and loss modules against torch, including reductions, weights and edge values."""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import T, rel
from hypothesis import given
from hypothesis import strategies as st

from avalon import nn
from avalon.nn import functional as F

REDUCTIONS = ["mean", "sum", "none"]


@pytest.fixture
def rng():
    return np.random.default_rng(7)


# -- class-index losses -------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("shape", [(6, 5), (3, 5, 2, 4), (5,)])
def test_cross_entropy(reduction, weighted, smoothing, shape, rng):
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    c = shape[1] if len(shape) > 1 else shape[0]
    tshape = (shape[0], *shape[2:]) if len(shape) > 1 else ()
    t = rng.integers(0, c, tshape)
    if len(shape) > 1:
        t.flat[0] = -100  # ignored
    w = rng.uniform(0.5, 2, c).astype(np.float32) if weighted else None
    got = F.cross_entropy(x, t, w, reduction=reduction, label_smoothing=smoothing)
    want = TF.cross_entropy(T(x), T(t), None if w is None else T(w), reduction=reduction, label_smoothing=smoothing)
    assert rel(got, want) < 1e-5


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_cross_entropy_probability_targets(reduction, smoothing, rng):
    x = rng.standard_normal((4, 6, 3)).astype(np.float32)
    p = rng.uniform(size=(4, 6, 3)).astype(np.float32)
    p /= p.sum(1, keepdims=True)
    w = rng.uniform(0.5, 2, 6).astype(np.float32)
    got = F.cross_entropy(x, p, w, reduction=reduction, label_smoothing=smoothing)
    want = TF.cross_entropy(T(x), T(p), T(w), reduction=reduction, label_smoothing=smoothing)
    assert rel(got, want) < 1e-5


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ignore_index", [-100, 2])
def test_nll_loss(reduction, ignore_index, rng):
    x = rng.standard_normal((8, 5)).astype(np.float64)
    t = rng.integers(0, 5, 8)
    w = rng.uniform(0.5, 2, 5)
    for weight in (None, w):
        got = F.nll_loss(x, t, weight, ignore_index=ignore_index, reduction=reduction)
        want = TF.nll_loss(T(x), T(t), None if weight is None else T(weight), ignore_index=ignore_index,
                           reduction=reduction)
        assert rel(got, want) < 1e-12


def test_nll_loss_legacy_flags(rng):
    x = rng.standard_normal((4, 3)).astype(np.float32)
    t = rng.integers(0, 3, 4)
    with pytest.warns(UserWarning):
        want = TF.nll_loss(T(x), T(t), size_average=False)
    assert rel(F.nll_loss(x, t, size_average=False), want) < 1e-6


def test_class_target_errors(rng):
    x = rng.standard_normal((4, 3)).astype(np.float32)
    with pytest.raises(TypeError, match="integer"):
        F.nll_loss(x, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="shape"):
        F.cross_entropy(x, np.zeros(5, np.int64))
    with pytest.raises(ValueError, match="out of range"):
        F.cross_entropy(x, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="reduction"):
        F.nll_loss(x, np.zeros(4, np.int64), reduction="avg")


# -- regression losses ----------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name,kw", [("mse_loss", {}), ("l1_loss", {}), ("smooth_l1_loss", {}),
                                     ("smooth_l1_loss", {"beta": 0.5}), ("smooth_l1_loss", {"beta": 0.0}),
                                     ("huber_loss", {}), ("huber_loss", {"delta": 0.3})])
def test_regression_losses(name, kw, reduction, rng):
    x, y = rng.standard_normal((2, 3, 4)).astype(np.float32) * 2
    assert rel(getattr(F, name)(x, y, reduction=reduction, **kw),
               getattr(TF, name)(T(x), T(y), reduction=reduction, **kw)) < 1e-5


@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3), seed=st.integers(0, 2**16),
       reduction=st.sampled_from(REDUCTIONS))
def test_mse_over_shapes(shape, seed, reduction):
    r = np.random.default_rng(seed)
    x, y = r.standard_normal((2, *shape))
    assert rel(F.mse_loss(x, y, reduction=reduction), TF.mse_loss(T(x), T(y), reduction=reduction)) < 1e-12


# -- binary losses ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy(reduction, rng):
    p = rng.uniform(0.01, 0.99, (5, 4)).astype(np.float32)
    p[0, :3] = [0.0, 1.0, 1e-30]  # log clamps at -100, like torch
    t = rng.uniform(size=(5, 4)).astype(np.float32)
    w = rng.uniform(0.5, 2, (5, 4)).astype(np.float32)
    for weight in (None, w):
        got = F.binary_cross_entropy(p, t, weight, reduction=reduction)
        want = TF.binary_cross_entropy(T(p), T(t), None if weight is None else T(weight), reduction=reduction)
        assert rel(got, want) < 1e-5
    with pytest.raises(ValueError, match="target size"):
        F.binary_cross_entropy(p, t[:, :2])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_binary_cross_entropy_with_logits_is_stable(reduction, dtype, rng):
    x = (rng.standard_normal((6, 4)) * 5).astype(dtype)
    x[0] = [-200.0, -40.0, 40.0, 200.0]  # no overflow at extreme logits
    t = rng.integers(0, 2, (6, 4)).astype(dtype)
    pw = rng.uniform(0.5, 3, 4).astype(dtype)
    w = rng.uniform(0.5, 2, (6, 4)).astype(dtype)
    for weight, pos in ((None, None), (w, None), (None, pw), (w, pw)):
        got = F.binary_cross_entropy_with_logits(x, t, weight, reduction=reduction, pos_weight=pos)
        want = TF.binary_cross_entropy_with_logits(T(x), T(t), None if weight is None else T(weight),
                                                   reduction=reduction, pos_weight=None if pos is None else T(pos))
        assert np.isfinite(got.numpy()).all()
        assert rel(got, want) < (1e-5 if dtype == np.float32 else 1e-12)


# -- KL divergence ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "sum", "none", "batchmean"])
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div(reduction, log_target, rng):
    x = TF.log_softmax(T(rng.standard_normal((4, 5))), 1).numpy()
    p = rng.uniform(size=(4, 5))
    p[0, 0] = 0.0  # 0 log 0 = 0
    p /= p.sum(1, keepdims=True)
    t = np.log(p + 1e-3) if log_target else p
    got = F.kl_div(x, t, reduction=reduction, log_target=log_target)
    want = TF.kl_div(T(x), T(t), reduction=reduction, log_target=log_target)
    assert rel(got, want) < 1e-12


# -- modules ---------------------------------------------------------------------------------------------

def test_loss_modules_match_torch(rng):
    x = rng.standard_normal((6, 4)).astype(np.float32)
    y = rng.standard_normal((6, 4)).astype(np.float32)
    t = rng.integers(0, 4, 6)
    p = rng.uniform(0.05, 0.95, (6, 4)).astype(np.float32)
    b = rng.integers(0, 2, (6, 4)).astype(np.float32)
    w = rng.uniform(0.5, 2, 4).astype(np.float32)
    cases = [
        (nn.CrossEntropyLoss(w, label_smoothing=0.1), torch.nn.CrossEntropyLoss(T(w), label_smoothing=0.1), x, t),
        (nn.NLLLoss(reduction="sum"), torch.nn.NLLLoss(reduction="sum"), x, t),
        (nn.MSELoss(), torch.nn.MSELoss(), x, y),
        (nn.L1Loss(reduction="none"), torch.nn.L1Loss(reduction="none"), x, y),
        (nn.BCELoss(), torch.nn.BCELoss(), p, b),
        (nn.BCEWithLogitsLoss(pos_weight=w), torch.nn.BCEWithLogitsLoss(pos_weight=T(w)), x, b),
        (nn.KLDivLoss(reduction="batchmean"), torch.nn.KLDivLoss(reduction="batchmean"), x, p / p.sum(1, keepdims=True)),
        (nn.SmoothL1Loss(beta=0.5), torch.nn.SmoothL1Loss(beta=0.5), x, y),
        (nn.HuberLoss(delta=0.5), torch.nn.HuberLoss(delta=0.5), x, y),
    ]
    for ours, theirs, a, b_ in cases:
        assert list(nn.state_dict(ours)) == list(theirs.state_dict()), type(ours).__name__
        assert rel(ours(a, b_), theirs(T(a), T(b_))) < 1e-5, type(ours).__name__

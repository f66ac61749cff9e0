"""Gradients through nn layers and functional ops (av.grad over the composites) against torch's
backward, in float64 so that only real differences show."""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import as_numpy, rel

import avalon as av
from avalon import nn
from avalon.nn import functional as F

rng = np.random.default_rng(5)


def T(x, grad=False):
    return torch.tensor(np.array(x), requires_grad=grad)


def pair(name, *args, **kwargs):
    theirs = getattr(torch.nn, name)(*args, **kwargs).double()
    ours = getattr(nn, name)(*args, **kwargs).double()
    nn.load_state_dict(ours, theirs.state_dict())
    return ours, theirs


def out0(y):
    return y[0] if isinstance(y, tuple) else y


LAYERS = [
    ("Linear", (5, 4), {}, (3, 5)),
    ("Conv2d", (4, 6, 3), {"stride": 2, "padding": 1, "groups": 2}, (2, 4, 7, 7)),
    ("MaxPool2d", (2,), {}, (2, 3, 6, 6)),
    ("AvgPool2d", (3,), {"stride": 2, "padding": 1, "count_include_pad": False}, (2, 3, 7, 7)),
    ("AvgPool2d", (3,), {"stride": 2, "padding": 1, "ceil_mode": True}, (2, 3, 8, 8)),
    ("MaxPool2d", (3,), {"stride": 2, "ceil_mode": True}, (2, 3, 8, 8)),
    ("BatchNorm1d", (4,), {}, (6, 4)),
    ("BatchNorm2d", (3,), {}, (4, 3, 3, 3)),
    ("LayerNorm", (5,), {}, (2, 3, 5)),
    ("GroupNorm", (2, 4), {}, (2, 4, 3, 3)),
    ("RNN", (3, 4), {"num_layers": 2}, (5, 2, 3)),
    ("LSTM", (3, 4), {"bidirectional": True}, (5, 2, 3)),
    ("GRU", (3, 4), {"batch_first": True}, (2, 5, 3)),
]


@pytest.mark.parametrize("name,args,kwargs,shape", LAYERS, ids=[f"{c[0]}{i}" for i, c in enumerate(LAYERS)])
def test_layer_gradients_match_torch(name, args, kwargs, shape):
    ours, theirs = pair(name, *args, **kwargs)
    x = rng.standard_normal(shape) * 2 + 0.5
    r = rng.standard_normal(as_numpy(out0(theirs(T(x)))).shape)  # weights the outputs: no symmetric cancellation
    nn.load_state_dict(ours, theirs.state_dict())  # torch's forward above moved its running stats back in step

    def loss(model, x, r):
        return (out0(model(x)) * r).sum()

    value, (g_model, g_x) = av.value_and_grad(loss, argnums=(0, 1))(ours, x, r)
    tx = T(x, grad=True)
    tl = (out0(theirs(tx)) * T(r)).sum()
    tl.backward()
    assert rel(value, tl) < 1e-10
    assert rel(g_x, tx.grad) < 1e-10
    assert set(g_model) == {n for n, _ in theirs.named_parameters()}
    for n, p in theirs.named_parameters():
        assert rel(g_model[n], p.grad) < 1e-10, n
    for n, b in theirs.named_buffers():  # running statistics updated under grad too
        assert rel(ours.state_dict()[n], b) < 1e-12, n


def test_embedding_gradient_accumulates_repeated_rows():
    ours, theirs = pair("Embedding", 6, 3)
    idx = np.array([[0, 2, 2], [5, 0, 2]])
    r = rng.standard_normal((2, 3, 3))
    g = av.grad(lambda m, idx, r: (m(idx) * r).sum())(ours, idx, r)
    (theirs(T(idx)) * T(r)).sum().backward()
    assert rel(g["weight"], theirs.weight.grad) < 1e-12


@pytest.mark.parametrize("padding_idx", [2, -4])
def test_embedding_padding_row_gets_no_gradient(padding_idx):
    """torch semantics: lookups of the padding row return its current (here non-zero) values, but the
    row's gradient is zero; every other row's gradient is unchanged."""
    ours, theirs = pair("Embedding", 6, 3, padding_idx=padding_idx)
    with torch.no_grad():
        theirs.weight[2] = torch.tensor([1.5, -2.0, 0.25], dtype=torch.float64)
    nn.load_state_dict(ours, theirs.state_dict())
    idx = np.array([[0, 2, 2], [5, 0, 2]])
    r = rng.standard_normal((2, 3, 3))
    assert rel(ours(idx), theirs(T(idx))) == 0
    assert rel(F.embedding(idx, ours.weight, padding_idx=padding_idx), theirs(T(idx))) == 0
    g = av.grad(lambda m, idx, r: (m(idx) * r).sum())(ours, idx, r)
    (theirs(T(idx)) * T(r)).sum().backward()
    assert rel(g["weight"], theirs.weight.grad) < 1e-12
    assert not as_numpy(g["weight"])[2].any() and as_numpy(g["weight"])[[0, 5]].all()
    gw = av.grad(lambda w, idx, r: (F.embedding(idx, w, padding_idx=padding_idx) * r).sum())(ours.weight, idx, r)
    assert rel(gw, theirs.weight.grad) < 1e-12


FUNCS = [
    ("relu", {}), ("leaky_relu", {"negative_slope": 0.1}), ("elu", {}), ("selu", {}), ("gelu", {}),
    ("gelu", {"approximate": "tanh"}), ("sigmoid", {}), ("tanh", {}), ("softplus", {}), ("silu", {}), ("mish", {}),
    ("logsigmoid", {}), ("softsign", {}), ("hardswish", {}), ("softmax", {"dim": 1}), ("log_softmax", {"dim": 1}),
]


@pytest.mark.parametrize("name,kw", FUNCS, ids=[f"{n}{k}" for n, k in FUNCS])
def test_activation_gradients_are_finite_and_match_torch(name, kw):
    x = np.concatenate([rng.standard_normal((4, 8)) * 3, [[-800, -100, -30, -1e-4, 1e-4, 30, 100, 800]]])
    r = rng.standard_normal(x.shape)
    g = av.grad(lambda x, r: (getattr(F, name)(x, **kw) * r).sum())(x, r)
    tx = T(x, grad=True)
    (getattr(TF, name)(tx, **kw) * T(r)).sum().backward()
    assert np.isfinite(g.numpy()).all()
    np.testing.assert_allclose(g.numpy(), tx.grad.numpy(), rtol=1e-9, atol=1e-12)


LOSSES = [
    ("cross_entropy", lambda x, t, p: F.cross_entropy(x, t, label_smoothing=0.1, ignore_index=1),
     lambda x, t, p: TF.cross_entropy(x, t, label_smoothing=0.1, ignore_index=1)),
    ("cross_entropy_probs", lambda x, t, p: F.cross_entropy(x, p), lambda x, t, p: TF.cross_entropy(x, p)),
    ("nll_loss", lambda x, t, p: F.nll_loss(x, t, reduction="sum"), lambda x, t, p: TF.nll_loss(x, t, reduction="sum")),
    ("mse_loss", lambda x, t, p: F.mse_loss(x, p), lambda x, t, p: TF.mse_loss(x, p)),
    ("l1_loss", lambda x, t, p: F.l1_loss(x, p), lambda x, t, p: TF.l1_loss(x, p)),
    ("smooth_l1", lambda x, t, p: F.smooth_l1_loss(x, p, beta=0.5), lambda x, t, p: TF.smooth_l1_loss(x, p, beta=0.5)),
    ("bce", lambda x, t, p: F.binary_cross_entropy(F.sigmoid(x), p),
     lambda x, t, p: TF.binary_cross_entropy(torch.sigmoid(x), p)),
    ("bce_logits", lambda x, t, p: F.binary_cross_entropy_with_logits(x * 100, p, pos_weight=p[0] + 1),
     lambda x, t, p: TF.binary_cross_entropy_with_logits(x * 100, p, pos_weight=p[0] + 1)),
    ("kl_div", lambda x, t, p: F.kl_div(F.log_softmax(x, 1), p, reduction="batchmean"),
     lambda x, t, p: TF.kl_div(TF.log_softmax(x, 1), p, reduction="batchmean")),
]


@pytest.mark.parametrize("name,ours,theirs", LOSSES, ids=[c[0] for c in LOSSES])
def test_loss_gradients_match_torch(name, ours, theirs):
    x = rng.standard_normal((6, 5))
    t = rng.integers(0, 5, 6)
    p = rng.uniform(size=(6, 5))
    p /= p.sum(1, keepdims=True)
    g = av.grad(ours)(x, t, p)
    tx = T(x, grad=True)
    theirs(tx, T(t), T(p)).backward()
    assert np.isfinite(g.numpy()).all()
    assert rel(g, tx.grad) < 1e-10


def test_dropout_gradient_is_the_mask_scaled():
    x = rng.standard_normal((50, 40))

    def f(x):
        y = F.dropout(x, 0.3)
        return y.sum(), y

    (_, y), g = av.value_and_grad(f, has_aux=True)(x)
    np.testing.assert_allclose(g.numpy(), (y.numpy() != 0) / 0.7, rtol=1e-12)


def test_binary_cross_entropy_gradients_are_torchs_at_saturated_probabilities():
    """The input gradient is torch's hand-written (x - t) / max(x (1 - x), 1e-12), finite (and the
    same as torch's) at x = 0 and 1; the target gradient is torch's wherever torch's is finite."""
    p = np.array([0.0, 1.0, 0.3, 1e-30, 0.999, 0.5])
    t = np.array([1.0, 0.0, 1.0, 0.5, 0.2, 0.7])
    w = np.array([1.0, 2.0, 0.5, 1.5, 3.0, 1.0])
    for reduction in ("sum", "mean", "none"):
        def f(p, t, reduction=reduction):
            loss = F.binary_cross_entropy(p, t, w, reduction=reduction)
            return loss if reduction != "none" else (loss * np.arange(1.0, 7.0)).sum()
        value, (gp, gt) = av.value_and_grad(f, argnums=(0, 1))(p, t)
        tp, tt = T(p).requires_grad_(), T(t).requires_grad_()
        tl = TF.binary_cross_entropy(tp, tt, T(w), reduction=reduction)
        tl = tl if reduction != "none" else (tl * torch.arange(1.0, 7.0, dtype=torch.float64)).sum()
        tl.backward()
        assert rel(value, tl.detach()) < 1e-12
        assert np.isfinite(gp.numpy()).all() and np.isfinite(gt.numpy()).all()
        np.testing.assert_allclose(gp.numpy(), tp.grad.numpy(), rtol=1e-7)
        finite = np.isfinite(tt.grad.numpy())
        np.testing.assert_allclose(gt.numpy()[finite], tt.grad.numpy()[finite], rtol=1e-12)

"""torch.nn surface for ported models: buffers, ModuleDict/ParameterList/ParameterDict, apply, tied
weights in state_dict, the RNN cells, Conv1d, adaptive pooling, pad and interpolate, and a small
attention model written in upstream idioms, checked against torch (forward, loss and every parameter
gradient with torch's state_dict loaded) eagerly, through av.compile and in Triton's interpreter."""
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import T, rel

import avalon as av
from avalon import nn
from avalon.nn import functional as F

pytestmark = pytest.mark.usefixtures("module_kernel_cache")


def pair(ours_cls, theirs_cls, *args, **kw):
    theirs = theirs_cls(*args, **kw).double()
    ours = ours_cls(*args, **kw).double()
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def check_grads(ours, theirs, fwd_ours, fwd_theirs, tol=1e-9):
    """Loss value and every parameter gradient of `ours` against `theirs` (state dicts equal)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the test's data is captured by `fwd_ours` on purpose
        value, g = av.value_and_grad(fwd_ours)(ours)
    tl = fwd_theirs(theirs)
    tl.backward()
    assert rel(value, tl) < tol
    tgrads = {k: p.grad for k, p in theirs.named_parameters()}
    assert set(g) == set(tgrads), (set(g), set(tgrads))
    for k, p in tgrads.items():
        assert rel(g[k], p) < tol, k


# -- module surface ---------------------------------------------------------------------------------

def tiny(lib, tlib):
    class Tiny(lib.Module):
        def __init__(self):
            super().__init__()
            self.h = lib.ModuleDict({"wte": lib.Embedding(7, 4), "proj": lib.Linear(4, 4)})
            self.head = lib.Linear(4, 7, bias=False)
            self.head.weight = self.h["wte"].weight  # tied, as GPT-style models do
            self.scales = lib.ParameterList([lib.Parameter(tlib.ones(4) * 0.5)])
            self.extra = lib.ParameterDict({"gain": lib.Parameter(tlib.ones(4) * 2.0)})
            self.register_buffer("mask", tlib.tril(tlib.ones(3, 3)))
            self.register_buffer("cache", tlib.zeros(2), persistent=False)
    return Tiny()


def test_state_dict_keys_match_torch_with_buffers_containers_and_tied_weights():
    theirs, ours = tiny(torch.nn, torch), tiny(nn, av)
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert sorted(n for n, _ in ours.named_buffers()) == sorted(n for n, _ in theirs.named_buffers())
    ours.load_state_dict(theirs.state_dict())  # strict: every key fits
    theirs.load_state_dict({k: torch.from_numpy(np.array(v.numpy())) for k, v in ours.state_dict().items()})
    ours.mask = av.ones(3, 3)  # reassigning a buffer keeps it a buffer
    assert "mask" not in dict(ours.named_parameters()) and "mask" in ours.state_dict()


def test_apply_visits_children_first_like_torch():
    def build(lib):
        return lib.Sequential(lib.Linear(2, 3), lib.Sequential(lib.ReLU(), lib.Linear(3, 1)))
    seen_ours, seen_theirs = [], []
    build(nn).apply(lambda m: seen_ours.append(type(m).__name__))
    build(torch.nn).apply(lambda m: seen_theirs.append(type(m).__name__))
    assert seen_ours == seen_theirs


@pytest.mark.parametrize("name", ["RNNCell", "LSTMCell", "GRUCell"])
def test_rnn_cells_match_torch(name):
    ours, theirs = pair(getattr(nn, name), getattr(torch.nn, name), 3, 5)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    rng = np.random.default_rng(2)
    x, h = rng.standard_normal((4, 3)), rng.standard_normal((4, 5))
    hx = (h, h * 0.5) if name == "LSTMCell" else h
    thx = (T(h), T(h) * 0.5) if name == "LSTMCell" else T(h)
    out = lambda y: y[0] + 2 * y[1] if isinstance(y, tuple) else y  # noqa: E731
    w = rng.standard_normal((4, 5))
    check_grads(ours, theirs, lambda m: (out(m(x, hx)) * w).sum(), lambda m: (out(m(T(x), thx)) * T(w)).sum())
    assert rel(out(ours(x[0])), out(theirs(T(x[0])))) < 1e-12  # unbatched, zero state


def test_conv1d_matches_torch():
    ours, theirs = pair(nn.Conv1d, torch.nn.Conv1d, 4, 6, 3, stride=2, padding=1, groups=2)
    x = np.random.default_rng(3).standard_normal((2, 4, 9))
    check_grads(ours, theirs, lambda m: (m(x) ** 2).sum(), lambda m: (m(T(x)) ** 2).sum())


@pytest.mark.parametrize("size", [2, (3, 2), (5, 7), (1, 1)])
def test_adaptive_pooling_matches_torch(size):
    x = np.random.default_rng(4).standard_normal((2, 3, 5, 7))
    for ours, theirs in ((nn.AdaptiveAvgPool2d(size), torch.nn.AdaptiveAvgPool2d(size)),
                         (nn.AdaptiveMaxPool2d(size), torch.nn.AdaptiveMaxPool2d(size))):
        assert rel(ours(x), theirs(T(x))) < 1e-12


@pytest.mark.parametrize("pad", [(1, 2), (0, 1, 2, 0), (-1, 2, 1, -2), (1, 1, 1, 1, 1, 1)])
def test_pad_matches_torch_order(pad):
    x = np.random.default_rng(5).standard_normal((2, 3, 4))
    assert rel(F.pad(x, pad, value=0.5), TF.pad(T(x), pad, value=0.5)) < 1e-12


@pytest.mark.parametrize("kw", [
    {"scale_factor": 2, "mode": "nearest"}, {"size": (5, 3), "mode": "nearest"},
    {"scale_factor": 2, "mode": "bilinear", "align_corners": False},
    {"size": (7, 5), "mode": "bilinear", "align_corners": True},
    {"size": (3, 2), "mode": "bilinear", "align_corners": False},
    {"scale_factor": 1.5, "mode": "bilinear", "align_corners": False}])
def test_interpolate_matches_torch(kw):
    x = np.random.default_rng(6).standard_normal((1, 2, 4, 3))
    assert rel(F.interpolate(x, **kw), TF.interpolate(T(x), **kw)) < 1e-6
    assert rel(nn.Upsample(**kw)(x), torch.nn.Upsample(**kw)(T(x))) < 1e-6


def test_gelu_embedding_and_errors():
    x = np.random.default_rng(7).standard_normal((3, 4))
    for approx in ("none", "tanh"):
        assert rel(F.gelu(x, approximate=approx), TF.gelu(T(x), approximate=approx)) < 1e-12
    w = np.random.default_rng(8).standard_normal((5, 3))
    idx = np.array([[0, 4], [-1 % 5, 2]])
    assert rel(F.embedding(idx, w), TF.embedding(T(idx), T(w))) < 1e-12
    assert rel(F.pad(x, (1, 1), mode="reflect"), TF.pad(T(x), (1, 1), mode="reflect")) < 1e-12
    with pytest.raises(NotImplementedError, match="Anti-alias option is restricted"):  # (bicubic's works now)
        F.interpolate(x[None, None], scale_factor=2, mode="nearest", antialias=True)


# -- a small model in upstream idioms ---------------------------------------------------------------

def make_model(lib, F_, av_or_torch, block_size=6, d=8, heads=2, vocab=11):
    """A causal self-attention language model written the way upstream code writes one."""
    class Attention(lib.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = lib.Linear(d, 3 * d)
            self.c_proj = lib.Linear(d, d)
            self.register_buffer("bias", av_or_torch.tril(av_or_torch.ones(block_size, block_size))
                                 .view(1, 1, block_size, block_size))

        def forward(self, x):
            B, L, C = x.size()
            q, k, v = self.c_attn(x).split(d, dim=2)
            q = q.view(B, L, heads, C // heads).transpose(1, 2)
            k = k.view(B, L, heads, C // heads).transpose(1, 2)
            v = v.view(B, L, heads, C // heads).transpose(1, 2)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(self.bias[:, :, :L, :L] == 0, float("-inf"))
            att = F_.softmax(att, dim=-1)
            y = (att @ v).transpose(1, 2).contiguous().view(B, L, C)
            return self.c_proj(y)

    class Model(lib.Module):
        def __init__(self):
            super().__init__()
            self.transformer = lib.ModuleDict(dict(
                wte=lib.Embedding(vocab, d), ln=lib.LayerNorm(d), attn=Attention(),
                mlp=lib.Sequential(lib.Linear(d, 2 * d), lib.GELU(approximate="tanh"), lib.Linear(2 * d, d))))
            pe = av_or_torch.zeros(block_size, d)
            pos = av_or_torch.arange(0, block_size).unsqueeze(1).float()
            div = av_or_torch.exp(av_or_torch.arange(0, d, 2).float() * (-math.log(1000.0) / d))
            pe[:, 0::2] = av_or_torch.sin(pos * div)
            pe[:, 1::2] = av_or_torch.cos(pos * div)
            self.register_buffer("pe", pe.unsqueeze(0))
            self.lm_head = lib.Linear(d, vocab, bias=False)
            self.transformer.wte.weight = self.lm_head.weight
            self.apply(self._init_weights)

        def _init_weights(self, module):
            if isinstance(module, lib.Linear):
                lib.init.normal_(module.weight, mean=0.0, std=0.1)
                if module.bias is not None:
                    lib.init.zeros_(module.bias)

        def forward(self, idx, targets):
            t = self.transformer
            x = t.wte(idx) + self.pe[:, :idx.shape[1]]
            x = x + t.attn(t.ln(x))
            x = x + t.mlp(x)
            logits = self.lm_head(x)
            loss = F_.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
            last = logits[:, [-1], :]
            return loss + 0.1 * (last ** 2).mean()

    return Model()


def _model_pair():
    torch.manual_seed(0)
    theirs = make_model(torch.nn, TF, torch).double()
    ours = make_model(nn, F, av).double()
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _data():
    rng = np.random.default_rng(9)
    return rng.integers(0, 11, (2, 5)), rng.integers(0, 11, (2, 5))


def test_attention_model_in_upstream_idioms_matches_torch_eagerly():
    ours, theirs = _model_pair()
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    idx, tgt = _data()
    check_grads(ours, theirs, lambda m: m(av.tensor(idx), av.tensor(tgt)), lambda m: m(T(idx), T(tgt)))


@pytest.mark.parametrize("backend", ["numpy", "triton"])
def test_attention_model_compiled_matches_torch(backend):
    ours, theirs = _model_pair()
    if backend == "triton":
        ours.float()
        theirs.float()
    idx, tgt = _data()
    tl = theirs(T(idx), T(tgt))
    tl.backward()
    step = av.compile(av.value_and_grad(lambda m, i, t: m(i, t)), backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # arange, tril, x[:, [-1]]: ops of the graph, no captured arrays
        value, g = step(ours, idx, tgt)
    tol = 1e-9 if backend == "numpy" else 1e-4
    assert rel(value, tl) < tol
    for k, p in theirs.named_parameters():
        assert rel(g[k], p.grad) < tol, k


@pytest.mark.parametrize("name", ["hardtanh", "relu6", "hardsigmoid", "hardswish"])
def test_piecewise_activations_at_their_kinks_match_torch(name):
    """Values (nan and inf included) and torch's one-sided gradients exactly at the bounds, where
    clamp's gradient or the product rule would differ (relu6 at 0 and 6, hardswish at -3 and 3)."""
    x = np.array([-3.0, -1.0, 0.0, 1.0, 3.0, 6.0, -7.5, 0.25, np.nan, np.inf, -np.inf])
    ours, theirs = getattr(F, name), getattr(TF, name)
    np.testing.assert_array_equal(ours(x).numpy(), theirs(T(x)).numpy())
    tx = T(x[:8]).requires_grad_()
    (tg,) = torch.autograd.grad(theirs(tx).sum(), tx)
    np.testing.assert_allclose(av.grad(lambda v: ours(v).sum())(x[:8]).numpy(), tg.numpy(), rtol=1e-7, atol=1e-7)


def test_norm_based_functions_have_torchs_finite_gradient_at_a_zero_vector():
    """sqrt's gradient at 0 is 0 * inf = nan; torch clamps (normalize, cosine_similarity) or takes
    the zero subgradient (the 2-norm), and so do these."""
    x = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, -3.0]])
    y = np.array([[1.0, 1.0, 1.0], [0.5, -1.0, 2.0]])
    w = np.array([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]])
    cases = [(lambda lib, F_, x: F_.cosine_similarity(x, lib.tensor(y)).sum()),
             (lambda lib, F_, x: (F_.normalize(x, dim=1) * lib.tensor(w)).sum()),
             (lambda lib, F_, x: F_.pairwise_distance(x, x * 0.0, eps=0.0).sum())]
    for f in cases:
        tx = T(x).requires_grad_()
        (tg,) = torch.autograd.grad(f(torch, TF, tx), tx)
        g = av.grad(lambda v, f=f: f(av, F, v))(x).numpy()
        assert np.isfinite(g).all()
        np.testing.assert_allclose(g, tg.numpy(), rtol=1e-7)

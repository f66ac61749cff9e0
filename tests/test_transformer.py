"""MultiheadAttention and the Transformer layers against torch's, with torch's state_dict loaded:
forward, attention weights, loss and every parameter gradient, eagerly (hypothesis over masks and
layouts), through av.compile(backend="numpy"), and in Triton's interpreter for a tiny model. The
models are written as upstream code writes them (an `init_weights` applied with `.apply`, a
positional-encoding buffer filled by slice assignment, masks from `tril` or
`generate_square_subsequent_mask`)."""
import math
import warnings

import numpy as np
import pytest
import torch
from helpers import T, rel
from hypothesis import given, settings
from hypothesis import strategies as st

import avalon as av
from avalon import nn
from avalon.nn import functional as F

pytestmark = pytest.mark.usefixtures("module_kernel_cache")


def randomize(lib):
    """An init function for `.apply`: every weight and bias random, so no comparison sits on zeros."""
    def init(m):
        for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "weight"):
            if getattr(m, name, None) is not None:
                lib.init.normal_(getattr(m, name), std=0.4)
        for name in ("in_proj_bias", "bias"):
            if getattr(m, name, None) is not None and not isinstance(getattr(m, name), bool):
                lib.init.uniform_(getattr(m, name), -0.5, 0.5)
    return init


def pair(ours_cls, theirs_cls, *args, **kw):
    theirs = theirs_cls(*args, **kw).double()
    theirs.apply(randomize(torch.nn))
    ours = ours_cls(*args, **kw).double()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def check_grads(ours, theirs, fwd_ours, fwd_theirs, tol=1e-9):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        value, g = av.value_and_grad(fwd_ours)(ours)
        tl = fwd_theirs(theirs)
    tl.backward()
    assert rel(value, tl) < tol
    tgrads = {k: p.grad for k, p in theirs.named_parameters()}
    assert set(g) == set(tgrads)
    for k, p in tgrads.items():
        assert rel(g[k], p) < tol, k


def masks(rng, kind, n, L, S, heads):
    """(attn_mask, key_padding_mask) in torch's convention: True or -inf = may not attend. Every row
    keeps at least its first key, so no row is fully masked (tests/test_triton_attention.py checks that case
    for F.scaled_dot_product_attention: zeros, as torch's)."""
    kpm = rng.random((n, S)) < 0.4
    kpm[:, 0] = False
    bool_am = rng.random((L, S)) < 0.4
    bool_am[:, 0] = False
    float_am = np.where(bool_am, -np.inf, rng.standard_normal((L, S)))
    per_head = np.where(rng.random((n * heads, L, S)) < 0.3, -np.inf, rng.standard_normal((n * heads, L, S)))
    per_head[..., 0] = 0.0
    return {"none": (None, None), "kpm": (None, kpm), "bool": (bool_am, None), "float": (float_am, None),
            "bool+kpm": (bool_am, kpm), "float+kpm": (float_am, kpm), "per_head": (per_head, None),
            "float_kpm": (None, np.where(kpm, -np.inf, 0.0))}[kind]


@settings(max_examples=20, deadline=None)
@given(st.booleans(), st.booleans(), st.sampled_from(["none", "kpm", "bool", "float", "bool+kpm", "float+kpm",
                                                      "per_head", "float_kpm"]),
       st.booleans(), st.booleans(), st.integers(1, 4), st.integers(1, 4), st.integers(0, 2**31))
def test_multihead_attention_forward_and_weights_match_torch(batch_first, cross_dims, mask, need_weights, average,
                                                             L, S, seed):
    kw = {"kdim": 3, "vdim": 5} if cross_dims else {}
    heads = 2
    torch.manual_seed(seed % 1000)
    ours, theirs = pair(nn.MultiheadAttention, torch.nn.MultiheadAttention, 4, heads, batch_first=batch_first, **kw)
    rng = np.random.default_rng(seed)
    n = 2
    shape = (lambda t, e: (n, t, e)) if batch_first else (lambda t, e: (t, n, e))
    q, k, v = (rng.standard_normal(shape(t, e)) for t, e in ((L, 4), (S, kw.get("kdim", 4)), (S, kw.get("vdim", 4))))
    if not cross_dims and S == L and seed % 2:
        k = v = q  # self-attention: the packed projection
    am, kpm = masks(rng, mask, n, L, S, heads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch on mixed bool/float masks
        yt, wt = theirs(T(q), T(k), T(v), key_padding_mask=None if kpm is None else T(kpm),
                        attn_mask=None if am is None else T(am), need_weights=need_weights,
                        average_attn_weights=average)
    yo, wo = ours(q, k, v, key_padding_mask=kpm, attn_mask=am, need_weights=need_weights,
                  average_attn_weights=average)
    assert rel(yo, yt) < 1e-12
    if need_weights:
        assert rel(wo, wt) < 1e-12
    else:
        assert wo is None and wt is None


def test_multihead_attention_gradients_unbatched_and_causal_hint():
    torch.manual_seed(0)
    ours, theirs = pair(nn.MultiheadAttention, torch.nn.MultiheadAttention, 6, 3, batch_first=True)
    rng = np.random.default_rng(1)
    x, r, rw = rng.standard_normal((2, 5, 6)), rng.standard_normal((2, 5, 6)), rng.standard_normal((3, 5, 5))
    causal_t = torch.nn.Transformer.generate_square_subsequent_mask(5, dtype=torch.float64)
    causal_o = nn.Transformer.generate_square_subsequent_mask(5, dtype=av.float64)
    assert np.array_equal(causal_o.numpy(), causal_t.numpy())

    def fo(m):
        y, w = m(x, x, x, attn_mask=causal_o, is_causal=True, need_weights=False)
        y2, w2 = m(x[0], x[0], x[0], attn_mask=~np.tril(np.ones((5, 5), bool)), average_attn_weights=False)
        return (y * r).sum() + (y2 * r[1]).sum() + (w2 * rw).sum()

    def ft(m):
        y, w = m(T(x), T(x), T(x), attn_mask=causal_t, is_causal=True, need_weights=False)
        y2, w2 = m(T(x[0]), T(x[0]), T(x[0]), attn_mask=~torch.tril(torch.ones(5, 5, dtype=torch.bool)),
                   average_attn_weights=False)
        return (y * T(r)).sum() + (y2 * T(r[1])).sum() + (w2 * T(rw)).sum()
    check_grads(ours, theirs, fo, ft)


# -- encoder / decoder stacks -------------------------------------------------------------------------

@pytest.mark.parametrize("norm_first,activation,batch_first", [
    (False, "relu", False), (True, "gelu", True), (False, F.gelu, True)])
def test_transformer_matches_torch(norm_first, activation, batch_first):
    act_t = torch.nn.functional.gelu if callable(activation) else activation
    torch.manual_seed(0)
    kw = dict(d_model=8, nhead=2, num_encoder_layers=2, num_decoder_layers=1, dim_feedforward=12, dropout=0.0,
              batch_first=batch_first, norm_first=norm_first)
    theirs = torch.nn.Transformer(activation=act_t, **kw).double()
    theirs.apply(randomize(torch.nn))
    ours = nn.Transformer(activation=activation, **kw).double()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    rng = np.random.default_rng(3)
    S, L, n = 5, 4, 2
    src = rng.standard_normal((n, S, 8) if batch_first else (S, n, 8))
    tgt = rng.standard_normal((n, L, 8) if batch_first else (L, n, 8))
    r = rng.standard_normal((n, L, 8) if batch_first else (L, n, 8))
    kpm = np.zeros((n, S), bool)
    kpm[1, 3:] = True
    tgt_mask_t = torch.nn.Transformer.generate_square_subsequent_mask(L, dtype=torch.float64)
    tgt_mask_o = nn.Transformer.generate_square_subsequent_mask(L, dtype=av.float64)
    check_grads(
        ours, theirs,
        lambda m: (m(src, tgt, tgt_mask=tgt_mask_o, src_key_padding_mask=kpm, memory_key_padding_mask=kpm,
                     tgt_is_causal=True) * r).sum(),
        lambda m: (m(T(src), T(tgt), tgt_mask=tgt_mask_t, src_key_padding_mask=T(kpm),
                     memory_key_padding_mask=T(kpm), tgt_is_causal=True) * T(r)).sum())


def word_language_model(lib, av_or_torch, ntoken=13, d=8, nhead=2, nhid=12, nlayers=2, max_len=16):
    """The shape of pytorch/examples' word-language-model TransformerModel, written here from scratch:
    a sinusoidal positional-encoding buffer, an encoder stack with a causal mask, a decoder Linear."""
    class PositionalEncoding(lib.Module):
        def __init__(self):
            super().__init__()
            pe = av_or_torch.zeros(max_len, d)
            position = av_or_torch.arange(0, max_len, dtype=av_or_torch.float).unsqueeze(1)
            div_term = av_or_torch.exp(av_or_torch.arange(0, d, 2).float() * (-math.log(10000.0) / d))
            pe[:, 0::2] = av_or_torch.sin(position * div_term)
            pe[:, 1::2] = av_or_torch.cos(position * div_term)
            self.register_buffer("pe", pe.unsqueeze(0).transpose(0, 1))

        def forward(self, x):
            return x + self.pe[:x.size(0), :]

    class TransformerModel(lib.Module):
        def __init__(self):
            super().__init__()
            self.pos_encoder = PositionalEncoding()
            layer = lib.TransformerEncoderLayer(d, nhead, nhid, dropout=0.0)
            self.transformer_encoder = lib.TransformerEncoder(layer, nlayers)
            self.encoder = lib.Embedding(ntoken, d)
            self.decoder = lib.Linear(d, ntoken)
            self.init_weights()

        def init_weights(self):
            lib.init.uniform_(self.encoder.weight, -0.1, 0.1)
            lib.init.uniform_(self.decoder.weight, -0.1, 0.1)
            self.apply(randomize(lib))

        def forward(self, src, targets):
            L = src.size(0)
            mask = av_or_torch.log(av_or_torch.tril(av_or_torch.ones(L, L)))  # 0 below, -inf above
            x = self.pos_encoder(self.encoder(src) * math.sqrt(d))
            out = self.decoder(self.transformer_encoder(x, mask))
            return lib.functional.cross_entropy(out.view(-1, ntoken), targets.view(-1))
    return TransformerModel()


def _lm_pair():
    torch.manual_seed(0)
    theirs = word_language_model(torch.nn, torch).double()
    ours = word_language_model(nn, av).double()
    ours.load_state_dict(theirs.state_dict())
    rng = np.random.default_rng(4)
    return ours, theirs, rng.integers(0, 13, (6, 2)), rng.integers(0, 13, (6, 2))


def test_word_language_model_matches_torch_eagerly():
    ours, theirs, src, tgt = _lm_pair()
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    check_grads(ours, theirs, lambda m: m(av.tensor(src), av.tensor(tgt)), lambda m: m(T(src), T(tgt)))


@pytest.mark.parametrize("backend", ["numpy", "triton"])
def test_encoder_compiled_matches_torch(backend):
    """The language model through av.compile; in Triton's interpreter a tiny one (f32)."""
    ours, theirs, src, tgt = _lm_pair()
    if backend == "triton":
        ours, theirs = ours.float(), theirs.float()
    tl = theirs(T(src), T(tgt))
    tl.backward()
    step = av.compile(av.value_and_grad(lambda m, s, t: m(s, t)), backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # masks and positions are ops of the graph, no captured arrays
        value, g = step(ours, src, tgt)
    tol = 1e-9 if backend == "numpy" else 1e-4
    assert rel(value, tl) < tol
    for k, p in theirs.named_parameters():
        assert rel(g[k], p.grad) < tol, k


def test_dropout_follows_training_mode():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 12, dropout=0.5, batch_first=True)
    x = np.random.default_rng(5).standard_normal((2, 3, 8)).astype(np.float32)
    layer.eval()
    a, b = layer(x).numpy(), layer(x).numpy()
    np.testing.assert_array_equal(a, b)
    layer.train()
    assert np.abs(layer(x).numpy() - a).max() > 1e-3


def test_bad_arguments_are_clear_errors():
    assert nn.MultiheadAttention(8, 2, add_bias_kv=True).bias_k.shape == (1, 1, 8)  # (see test_layer_gaps.py)
    with pytest.raises(ValueError, match="MultiheadAttention: embed_dim .* divisible by num_heads"):
        nn.MultiheadAttention(8, 3)
    with pytest.raises(TypeError, match="TransformerEncoderLayer: argument 'dtype'"):
        nn.TransformerEncoderLayer(8, 2, dtype=av.int32)
    with pytest.raises(ValueError, match="TransformerDecoderLayer: argument 'activation'"):
        nn.TransformerDecoderLayer(8, 2, activation="swish")
    mha = nn.MultiheadAttention(4, 2, batch_first=True)
    x = np.ones((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match="is_causal.*needs attn_mask"):
        mha(x, x, x, is_causal=True)
    with pytest.raises(TypeError, match="only bool and floating types of attn_mask"):
        mha(x, x, x, attn_mask=np.ones((3, 3), np.int64))
    with pytest.raises(ValueError, match="2-d attn_mask"):
        mha(x, x, x, attn_mask=np.ones((3, 4), bool))
    with pytest.raises(ValueError, match="key_padding_mask must have shape"):
        mha(x, x, x, key_padding_mask=np.zeros((3, 3), bool))
    with pytest.raises(ValueError, match="Transformer: the feature number"):
        nn.Transformer(8, 2, 1, 1, 8)(np.ones((3, 2, 8)), np.ones((3, 2, 4)))


def test_init_follows_torch():
    """MultiheadAttention: xavier-uniform in-projection, zero biases; Transformer: every matrix
    re-initialized xavier-uniform (wider than a Linear's default kaiming bound 1/sqrt(fan_in))."""
    mha = nn.MultiheadAttention(8, 2)
    w = mha.in_proj_weight.numpy()
    bound = math.sqrt(6 / (8 + 24))
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert not mha.in_proj_bias.numpy().any() and not mha.out_proj.bias.numpy().any()
    lin = nn.Transformer(8, 2, 1, 1, 32).encoder.layers[0].linear1.weight.numpy()
    assert np.abs(lin).max() > 1 / math.sqrt(8) and np.abs(lin).max() <= math.sqrt(6 / 40)

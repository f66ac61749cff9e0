"""Gaps closed to torch's behaviour, each checked against torch (the oracle) on seeded random inputs, forward and
gradients of the inputs and of every parameter (torch's weights loaded), eagerly and through `av.compile`:

1. `nn.MultiheadAttention(add_bias_kv=True)` / `add_zero_attn=True` (and `F.multi_head_attention_forward`'s
   bias_k / bias_v / add_zero_attn): the extra key/value positions, the extra mask column, the weights.
2. `nn.LSTM(proj_size=p)`: `weight_hr_l{k}{_reverse}`, h of p features, multi-layer, bidirectional, batch_first,
   unbatched and packed input, hx given or not.
3. 5-d `F.grid_sample` (trilinear and nearest, every padding mode, both align_corners) and `F.affine_grid`.
4. Loss arguments: `reduction='elementwise_mean'` (torch warns and computes the mean where its loss reads the
   string through `_Reduction.get_enum`, and raises ValueError elsewhere) and `label_smoothing` outside [0, 1]
   (negative: torch smooths nothing; above 1: RuntimeError).
5. `torch.logit(x, eps)` with eps > 0.5, where the clamp's bounds cross.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import T, rel, torch_raises

import avalon as av
from avalon import nn
from avalon.nn import functional as F


def _flat(out) -> list:
    """The tensors of a (nested) layer output, Nones dropped (MultiheadAttention's weights without need_weights)."""
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    return [] if out is None else [out]


def _like_torch(tm, am, call, xs, tol=2e-5, gtol=5e-5, compiled=True):
    """`call(lib, model, *xs)` (lib torch.nn or avalon.nn) against torch: every output, and the gradients of
    sum(out_i * w_i) (random w_i) with respect to every parameter and every floating-point input, eagerly and,
    with `compiled`, through av.compile (numpy backend)."""
    tm.zero_grad(set_to_none=True)
    tx = [T(x).requires_grad_() if x.dtype.kind == "f" else T(x) for x in xs]
    touts = _flat(call(torch.nn, tm, *tx))
    rng = np.random.default_rng(1)
    ws = [rng.standard_normal(tuple(o.shape)).astype(xs[0].dtype) for o in touts]
    sum((o * T(w)).sum() for o, w in zip(touts, ws)).backward()
    k = len(xs)

    def loss(m, *args):
        outs = _flat(call(nn, m, *args[:k]))
        assert len(outs) == len(ws)
        total = None
        for o, w in zip(outs, args[k:]):
            s = (o * w).sum()
            total = s if total is None else total + s
        return total

    wrt = (0,) + tuple(i + 1 for i, x in enumerate(xs) if x.dtype.kind == "f")
    forward = lambda m, *a: tuple(_flat(call(nn, m, *a)))  # noqa: E731
    runs = [(forward, av.grad(loss, argnums=wrt))]
    if compiled:
        runs.append((av.compile(forward, backend="numpy"), av.compile(av.grad(loss, argnums=wrt), backend="numpy")))
    want_p = {name: p.grad for name, p in tm.named_parameters()}
    for fwd, grad in runs:
        outs = fwd(am, *xs)
        assert len(outs) == len(touts)
        for a, b in zip(outs, touts):
            assert rel(a, b) < tol
        gs = grad(am, *xs, *ws)
        assert sorted(gs[0]) == sorted(want_p)
        for name, g in want_p.items():
            assert rel(gs[0][name], g) < gtol, name
        for g, i in zip(gs[1:], wrt[1:]):
            assert rel(g, tx[i - 1].grad) < gtol


def _randomized(tm) -> None:
    """Every parameter of a torch module drawn at random (no zero biases), seeded by the caller."""
    with torch.no_grad():
        for p in tm.parameters():
            p.copy_(torch.randn_like(p) * 0.5)


def _loaded(tm, am):
    nn.load_state_dict(am, tm.state_dict())
    assert [n for n, _ in am.named_parameters()] == [n for n, _ in tm.named_parameters()]
    return am


# -- 1. MultiheadAttention: add_bias_kv, add_zero_attn ---------------------------------------------------------------

MHA_CONFIGS = [
    dict(add_bias_kv=True),
    dict(add_zero_attn=True),
    dict(add_bias_kv=True, add_zero_attn=True, batch_first=True),
    dict(add_bias_kv=True, add_zero_attn=True, kdim=3, vdim=5),
]


@pytest.mark.parametrize("cfg", MHA_CONFIGS, ids=lambda c: "-".join(c))
def test_mha_bias_kv_zero_attn_like_torch(cfg):
    torch.manual_seed(0)
    e, heads, n, tgt, src = 8, 2, 2, 3, 4
    tm = torch.nn.MultiheadAttention(e, heads, **cfg)
    _randomized(tm)
    am = _loaded(tm, nn.MultiheadAttention(e, heads, **cfg))
    assert am.bias_k is None or am.bias_k.shape == (1, 1, e)
    bf = cfg.get("batch_first", False)
    rng = np.random.default_rng(0)

    def seq(length, feat):
        return rng.standard_normal((n, length, feat) if bf else (length, n, feat)).astype(np.float32)

    q, k, v = seq(tgt, e), seq(src, cfg.get("kdim", e)), seq(src, cfg.get("vdim", e))
    kpm = np.array([[False, False, True, False], [True, False, False, False]])
    float_mask = rng.standard_normal((tgt, src)).astype(np.float32)
    bool_mask3 = rng.standard_normal((n * heads, tgt, src)) > 1.0
    bool_mask3[:, :, 1] = False
    cases = [
        ((q, k, v), lambda m, q, k, v: m(q, k, v)),
        ((q, k, v, kpm, float_mask), lambda m, q, k, v, p, a: m(q, k, v, key_padding_mask=p, attn_mask=a,
                                                                   average_attn_weights=False)),
        ((q, k, v, kpm, bool_mask3), lambda m, q, k, v, p, a: m(q, k, v, key_padding_mask=p, attn_mask=a)),
        ((q, k, v, kpm), lambda m, q, k, v, p: m(q, k, v, key_padding_mask=p, need_weights=False)),
    ]
    for i, (xs, f) in enumerate(cases):
        _like_torch(tm, am, lambda lib, m, *a, f=f: f(m, *a), list(xs), compiled=i == 2)
    # the weights have the extra columns
    _, w = am(q, k, v, average_attn_weights=False)
    extra = int(cfg.get("add_bias_kv", False)) + int(cfg.get("add_zero_attn", False))
    assert w.shape == (n, heads, tgt, src + extra)


def test_mha_self_attention_and_unbatched_with_bias_kv():
    torch.manual_seed(1)
    tm = torch.nn.MultiheadAttention(4, 2, add_bias_kv=True, add_zero_attn=True)
    _randomized(tm)
    am = _loaded(tm, nn.MultiheadAttention(4, 2, add_bias_kv=True, add_zero_attn=True))
    x = np.random.default_rng(2).standard_normal((3, 2, 4)).astype(np.float32)
    _like_torch(tm, am, lambda lib, m, x: m(x, x, x), [x], compiled=False)
    _like_torch(tm, am, lambda lib, m, x: m(x, x, x), [x[:, 0]], compiled=False)  # unbatched (L, E)


def test_mha_bias_kv_init_and_state_dict_names():
    am = nn.MultiheadAttention(6, 3, add_bias_kv=True)
    tm = torch.nn.MultiheadAttention(6, 3, add_bias_kv=True)
    assert list(nn.state_dict(am)) == list(tm.state_dict())
    assert float(np.abs(am.bias_k.numpy()).max()) > 0  # xavier-normal, as torch (not zeros)


def test_functional_multi_head_attention_forward_bias_kv():
    torch.manual_seed(3)
    e, heads = 6, 2
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((s, 2, e)).astype(np.float32) for s in (3, 4, 4))
    w_in, b_in = rng.standard_normal((3 * e, e)).astype(np.float32) * 0.4, rng.standard_normal(3 * e).astype(np.float32)
    bk, bv = rng.standard_normal((1, 1, e)).astype(np.float32), rng.standard_normal((1, 1, e)).astype(np.float32)
    w_out, b_out = rng.standard_normal((e, e)).astype(np.float32) * 0.4, rng.standard_normal(e).astype(np.float32)
    kpm = np.array([[False, True, False, False], [False, False, False, True]])

    def f(fn, mask, *a):
        q, k, v, w_in, b_in, bk, bv, w_out, b_out = a
        return fn(q, k, v, e, heads, w_in, b_in, bk, bv, True, 0.0, w_out, b_out, training=False,
                  key_padding_mask=mask, average_attn_weights=False)

    args = [q, k, v, w_in, b_in, bk, bv, w_out, b_out]
    ta = [T(a).requires_grad_() for a in args]
    to = f(TF.multi_head_attention_forward, T(kpm), *ta)
    ao = f(F.multi_head_attention_forward, kpm, *args)
    assert rel(ao[0], to[0]) < 2e-5 and rel(ao[1], to[1]) < 2e-5
    (to[0].sum() + (to[1] * 2).sum()).backward()
    gs = av.grad(lambda mask, *a: (lambda o: o[0].sum() + (o[1] * 2).sum())(
        f(F.multi_head_attention_forward, mask, *a)), argnums=tuple(range(1, len(args) + 1)))(kpm, *args)
    for g, t in zip(gs, ta):
        assert rel(g, t.grad) < 5e-5
    with pytest.raises(torch_raises(lambda: TF.multi_head_attention_forward(
            T(q), T(k), T(v), e, heads, T(w_in), T(b_in), T(bk), None, False, 0.0, T(w_out), T(b_out)))):
        F.multi_head_attention_forward(q, k, v, e, heads, w_in, b_in, bk, None, False, 0.0, w_out, b_out)


# -- 2. LSTM with proj_size -------------------------------------------------------------------------------------------

LSTM_CONFIGS = [
    (dict(num_layers=2, bidirectional=True), True, True),
    (dict(batch_first=True, num_layers=2), False, False),
    (dict(bias=False, bidirectional=True), True, False),
]


@pytest.mark.parametrize("cfg, with_hx, compiled", LSTM_CONFIGS, ids=["2layer-bi-hx", "batch_first", "nobias-bi"])
def test_lstm_proj_size_like_torch(cfg, with_hx, compiled):
    torch.manual_seed(4)
    hidden, proj, n, steps = 5, 3, 2, 4
    tm = torch.nn.LSTM(3, hidden, proj_size=proj, **cfg)
    am = _loaded(tm, nn.LSTM(3, hidden, proj_size=proj, **cfg))
    assert tuple(am.weight_hr_l0.shape) == (proj, hidden) and tuple(am.weight_hh_l0.shape) == (4 * hidden, proj)
    d = 2 if cfg.get("bidirectional") else 1
    layers = cfg.get("num_layers", 1)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((n, steps, 3) if cfg.get("batch_first") else (steps, n, 3)).astype(np.float32)
    if with_hx:
        h0 = rng.standard_normal((layers * d, n, proj)).astype(np.float32)
        c0 = rng.standard_normal((layers * d, n, hidden)).astype(np.float32)
        _like_torch(tm, am, lambda lib, m, x, h, c: m(x, (h, c)), [x, h0, c0], compiled=compiled)
    else:
        _like_torch(tm, am, lambda lib, m, x: m(x), [x], compiled=compiled)
    out, (h, c) = am(x)
    assert out.shape[-1] == d * proj and h.shape == (layers * d, n, proj) and c.shape == (layers * d, n, hidden)


def test_lstm_proj_size_packed_and_unbatched():
    torch.manual_seed(5)
    tm = torch.nn.LSTM(3, 4, proj_size=2, bidirectional=True)
    am = _loaded(tm, nn.LSTM(3, 4, proj_size=2, bidirectional=True))
    x = np.random.default_rng(5).standard_normal((4, 2, 3)).astype(np.float32)

    def packed(lib, m, x):
        out, hc = m(lib.utils.rnn.pack_padded_sequence(x, [4, 2]))
        return lib.utils.rnn.pad_packed_sequence(out)[0], hc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: "LSTM with projections is not supported with oneDNN"
        _like_torch(tm, am, packed, [x], compiled=True)
        _like_torch(tm, am, lambda lib, m, x: m(x), [x[:, 0]], compiled=False)  # unbatched (L, H_in)


def test_lstm_proj_size_errors_and_repr():
    for make in (lambda lib: lib.LSTM(3, 4, proj_size=4), lambda lib: lib.LSTM(3, 4, proj_size=-1),
                 lambda lib: lib.GRU(3, 4, proj_size=2), lambda lib: lib.RNN(3, 4, proj_size=2)):
        with pytest.raises(torch_raises(lambda make=make: make(torch.nn))):
            make(nn)
    assert repr(nn.LSTM(3, 4, proj_size=2)) == repr(torch.nn.LSTM(3, 4, proj_size=2))
    m = nn.LSTM(3, 4, num_layers=2, proj_size=2)
    assert m._all_weights == torch.nn.LSTM(3, 4, num_layers=2, proj_size=2)._all_weights
    bound = 1 / math.sqrt(4)
    assert float(np.abs(m.weight_hr_l1.numpy()).max()) <= bound


# -- 3. volumetric grid_sample / affine_grid --------------------------------------------------------------------------

GRID_CASES = [(mode, pad, align) for mode in ("bilinear", "nearest") for pad in ("zeros", "border", "reflection")
              for align in (False, True)]
COMPILED_GRID = {("bilinear", "reflection", False), ("nearest", "border", True)}


@pytest.mark.parametrize("mode, pad, align", GRID_CASES)
def test_grid_sample_5d_like_torch(mode, pad, align):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 3, 4, 5))
    g = rng.uniform(-1.3, 1.3, (2, 2, 3, 4, 3))  # past the borders too

    def f(lib, x, g):
        return (TF if lib is torch else F).grid_sample(x, g, mode=mode, padding_mode=pad, align_corners=align)

    tx, tg = T(x).requires_grad_(), T(g).requires_grad_()
    want = f(torch, tx, tg)
    w = rng.standard_normal(tuple(want.shape))
    (want * T(w)).sum().backward()
    loss = lambda x, g, w: (f(av, x, g) * w).sum()  # noqa: E731
    runs = [(lambda x, g: f(av, x, g), av.grad(loss, argnums=(0, 1)))]
    if (mode, pad, align) in COMPILED_GRID:
        runs.append((av.compile(lambda x, g: f(av, x, g), backend="numpy"),
                     av.compile(av.grad(loss, argnums=(0, 1)), backend="numpy")))
    for fwd, grad in runs:
        assert rel(fwd(x, g), want) < 1e-12
        gx, gg = grad(x, g, w)
        assert rel(gx, tx.grad) < 1e-12
        if mode == "bilinear":
            assert rel(gg, tg.grad) < 1e-12
        else:  # torch's nearest grid gradient is zero, as Avalon's
            assert float(np.abs(gg.numpy()).max()) == 0.0 == float(tg.grad.abs().max())
    # float32 as well
    assert rel(f(av, x.astype(np.float32), g.astype(np.float32)), want) < 1e-5


@pytest.mark.parametrize("align", [False, True])
def test_affine_grid_5d_then_grid_sample_like_torch(align):
    rng = np.random.default_rng(7)
    theta = (np.eye(3, 4)[None] + 0.2 * rng.standard_normal((2, 3, 4))).astype(np.float32)
    x = rng.standard_normal((2, 2, 3, 4, 5)).astype(np.float32)
    size = (2, 2, 3, 4, 5)

    def f(lib, theta, x):
        fn = TF if lib is torch else F
        return fn.grid_sample(x, fn.affine_grid(theta, size, align_corners=align), align_corners=align)

    assert rel(F.affine_grid(theta, size, align_corners=align), TF.affine_grid(T(theta), size, align_corners=align)) \
        < 1e-6
    assert F.affine_grid(theta, (2, 1, 1, 4, 5), align_corners=align).shape == (2, 1, 4, 5, 3)
    tt, tx = T(theta).requires_grad_(), T(x).requires_grad_()
    want = f(torch, tt, tx)
    w = rng.standard_normal(tuple(want.shape)).astype(np.float32)
    (want * T(w)).sum().backward()
    loss = lambda theta, x, w: (f(av, theta, x) * w).sum()  # noqa: E731
    runs = [(lambda t, x: f(av, t, x), av.grad(loss, argnums=(0, 1)))]
    if align:
        runs.append((av.compile(lambda t, x: f(av, t, x), backend="numpy"),
                     av.compile(av.grad(loss, argnums=(0, 1)), backend="numpy")))
    for fwd, grad in runs:
        assert rel(fwd(theta, x), want) < 1e-5
        gt, gx = grad(theta, x, w)
        assert rel(gt, tt.grad) < 1e-4 and rel(gx, tx.grad) < 1e-5


def test_grid_sample_5d_errors():
    rng = np.random.default_rng(13)
    x, g = rng.standard_normal((1, 2, 3, 4, 5)).astype(np.float32), rng.uniform(-1, 1, (1, 2, 2, 2, 3))
    g = g.astype(np.float32)
    th34, th23 = rng.standard_normal((1, 3, 4)).astype(np.float32), rng.standard_normal((1, 2, 3)).astype(np.float32)
    cases = [  # (fn, as_tensor)
        lambda fn, c: fn.grid_sample(c(x), c(g), mode="bicubic", align_corners=False),
        lambda fn, c: fn.grid_sample(c(x), c(g[..., 0, :]), align_corners=False),
        lambda fn, c: fn.grid_sample(c(x), c(g[..., :2]), align_corners=False),
        lambda fn, c: fn.affine_grid(c(th34), (1, 2, 3, 4), align_corners=False),
        lambda fn, c: fn.affine_grid(c(th23), (1, 2, 3, 4, 5), align_corners=False),
        lambda fn, c: fn.affine_grid(c(th34), (1, 2, 3, 4, 5, 6), align_corners=False),
    ]
    for case in cases:
        with pytest.raises(torch_raises(lambda case=case: case(TF, T))):
            case(F, av.tensor)


# -- 4. loss arguments: reduction='elementwise_mean', label_smoothing outside [0, 1] ----------------------------------

def _loss_cases():
    rng = np.random.default_rng(8)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    x, y = f32(4, 5), f32(4, 5)
    cls = rng.integers(0, 5, 4)
    prob = rng.uniform(0.05, 0.95, (4, 5)).astype(np.float32)
    bits = rng.integers(0, 2, (4, 5)).astype(np.float32)
    sign = np.where(rng.standard_normal((4, 5)) > 0, 1.0, -1.0).astype(np.float32)
    lab = np.array([1.0, -1.0, 1.0, -1.0], np.float32)
    var = rng.uniform(0.2, 1.5, (4, 5)).astype(np.float32)
    mlm = np.array([[1, 2, -1, 0, 0], [0, -1, 0, 0, 0], [4, 3, 2, -1, 0], [2, -1, 1, 1, 1]])
    lp = np.log(rng.dirichlet(np.ones(4), (6, 2))).astype(np.float32)
    return [  # name, module, float args, other args
        ("l1_loss", "L1Loss", (x, y), ()), ("mse_loss", "MSELoss", (x, y), ()),
        ("cross_entropy", "CrossEntropyLoss", (x,), (cls,)), ("nll_loss", "NLLLoss", (x,), (cls,)),
        ("binary_cross_entropy", "BCELoss", (prob,), (bits,)),
        ("binary_cross_entropy_with_logits", "BCEWithLogitsLoss", (x,), (bits,)),
        ("kl_div", "KLDivLoss", (x,), (prob,)), ("poisson_nll_loss", "PoissonNLLLoss", (x,), (var,)),
        ("gaussian_nll_loss", "GaussianNLLLoss", (x, y), (var,)), ("smooth_l1_loss", "SmoothL1Loss", (x, y), ()),
        ("huber_loss", "HuberLoss", (x, y), ()), ("soft_margin_loss", "SoftMarginLoss", (x,), (sign,)),
        ("multilabel_soft_margin_loss", "MultiLabelSoftMarginLoss", (x,), (bits,)),
        ("multilabel_margin_loss", "MultiLabelMarginLoss", (x,), (mlm,)),
        ("multi_margin_loss", "MultiMarginLoss", (x,), (cls,)), ("hinge_embedding_loss", "HingeEmbeddingLoss", (x,),
                                                                 (sign,)),
        ("cosine_embedding_loss", "CosineEmbeddingLoss", (x, y), (lab,)),
        ("margin_ranking_loss", "MarginRankingLoss", (x[:, 0], y[:, 0]), (lab,)),
        ("triplet_margin_loss", "TripletMarginLoss", (x, y, f32(4, 5)), ()),
        ("triplet_margin_with_distance_loss", "TripletMarginWithDistanceLoss", (x, y, f32(4, 5)), ()),
        ("ctc_loss", "CTCLoss", (lp,), (np.array([[1, 2, 1], [3, 1, 0]]), np.array([6, 5]), np.array([3, 2]))),
    ]


def _caught(fn):
    """(result or exception type, [(warning category, message)])."""
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001 - the type is compared with torch's
            out = type(e)
    return out, [(w.category, str(w.message)) for w in got]


@pytest.mark.parametrize("case", _loss_cases(), ids=lambda c: c[0])
def test_reduction_elementwise_mean_like_torch(case):
    name, module, floats, others = case
    for make in (lambda lib, fn, red: lambda *a: getattr(fn, name)(*a, reduction=red),
                 lambda lib, fn, red: lambda *a: getattr(lib, module)(reduction=red)(*a)):
        want, twarn = _caught(lambda make=make: make(torch.nn, TF, "elementwise_mean")(*map(T, floats + others)))
        got, awarn = _caught(lambda make=make: make(nn, F, "elementwise_mean")(*floats, *others))
        if isinstance(want, type):
            assert got is want and not twarn and not awarn, (got, want)
            continue
        assert [c for c, _ in awarn] == [c for c, _ in twarn] == [UserWarning]
        assert awarn[0][1] == twarn[0][1]  # "reduction='elementwise_mean' is deprecated. Please use ..."
        assert rel(got, want) < 1e-5
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mean = make(nn, F, "mean")(*floats, *others)
            assert rel(got, mean) == 0.0
            if name == "l1_loss":  # gradient and the compiled form, once
                g = av.grad(lambda a, b, make=make: make(nn, F, "elementwise_mean")(a, b))(*floats)
                assert rel(g, av.grad(lambda a, b: F.l1_loss(a, b))(*floats)) == 0.0
                run = av.compile(lambda a, b, make=make: make(nn, F, "elementwise_mean")(a, b),
                                  backend="numpy")
                assert rel(run(*floats), want) < 1e-6
    # an unknown string raises as torch's
    with pytest.raises(torch_raises(lambda: getattr(TF, name)(*map(T, floats + others), reduction="bogus"))):
        getattr(F, name)(*floats, *others, reduction="bogus")


@pytest.mark.parametrize("smoothing", [-0.1, -5.0, float("nan")])
def test_cross_entropy_negative_label_smoothing_like_torch(smoothing):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 5, 2))
    cls = rng.integers(0, 5, (4, 2))
    cls[1, 0] = -100
    probs = rng.dirichlet(np.ones(5), (4, 2)).transpose(0, 2, 1).copy()
    weight = rng.uniform(0.5, 1.5, 5)
    full = smoothing == -0.1  # every combination once; the other values with a weighted mean
    for t in (cls, probs):
        for w in ((None, weight) if full else (weight,)):
            for red in (("mean", "sum", "none") if full else ("mean",)):
                tx = T(x).requires_grad_()
                want = TF.cross_entropy(tx, T(t), None if w is None else T(w), reduction=red, label_smoothing=smoothing)
                want.sum().backward()
                got = F.cross_entropy(x, t, w, reduction=red, label_smoothing=smoothing)
                assert rel(got, want) < 1e-12
                g = av.grad(lambda a, t=t, w=w, red=red: F.cross_entropy(
                    a, t, w, reduction=red, label_smoothing=smoothing).sum())(x)
                assert rel(g, tx.grad) < 1e-12
    m = nn.CrossEntropyLoss(label_smoothing=smoothing)
    assert rel(av.compile(lambda a, b: m(a, b), backend="numpy")(x, cls),
               torch.nn.CrossEntropyLoss(label_smoothing=smoothing)(T(x), T(cls))) < 1e-12


def test_label_smoothing_above_one_raises_like_torch():
    x, t = np.random.default_rng(10).standard_normal((3, 4)).astype(np.float32), np.array([0, 3, 1])
    for ls in (1.5, 1.0000001):
        kind = torch_raises(lambda ls=ls: TF.cross_entropy(T(x), T(t), label_smoothing=ls))
        assert kind is RuntimeError
        with pytest.raises(kind, match="label_smoothing must be between 0.0 and 1.0"):
            F.cross_entropy(x, t, label_smoothing=ls)
        m = nn.CrossEntropyLoss(label_smoothing=ls)  # as torch: accepted here, refused when called
        with pytest.raises(kind):
            m(x, t)
    # LinearCrossEntropyLoss checks at construction (torch's RuntimeError, also for negative values)
    for ls in (-0.1, 1.5):
        with pytest.raises(torch_raises(lambda ls=ls: torch.nn.LinearCrossEntropyLoss(4, 3, label_smoothing=ls))):
            nn.LinearCrossEntropyLoss(4, 3, label_smoothing=ls)
    w = np.random.default_rng(11).standard_normal((5, 4)).astype(np.float32)
    assert rel(F.linear_cross_entropy(x, w, t, label_smoothing=-0.1),
               TF.linear_cross_entropy(T(x), T(w), T(t), label_smoothing=-0.1)) < 1e-6


# -- 5. logit with eps > 0.5 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("eps", [0.6, 0.5, 0.9, 0.3, 1e-6, None])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logit_eps_like_torch(eps, dtype):
    rng = np.random.default_rng(12)
    x = np.concatenate([rng.uniform(0.01, 0.99, 12), [0.1, 0.3, 0.4, 0.5, 0.6, 0.7, 0.9]]).astype(dtype)
    tx = T(x).requires_grad_()
    want = torch.logit(tx, eps)
    want.sum().backward()
    tol = 1e-6 if dtype == np.float32 else 1e-14
    assert rel(av.logit(x, eps), want) < tol
    assert rel(av.special.logit(x, eps), want) < tol
    assert rel(av.tensor(x).logit(eps), want) < tol
    assert rel(av.compile(lambda a: av.logit(a, eps), backend="numpy")(x), want) < tol
    g = av.grad(lambda a: av.logit(a, eps).sum())(x)
    assert rel(g, tx.grad) < tol
    assert rel(av.compile(av.grad(lambda a: av.logit(a, eps).sum()), backend="numpy")(x), tx.grad) < tol

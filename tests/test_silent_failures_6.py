"""Silent failures, round 6 (after test_silent_failures_5.py): the ARGUMENTS of avalon.nn's layers and of
avalon.nn.functional, swept against torch (every layer name torch.nn and avalon.nn share; edge values of
each constructor argument; functional options). Some thousands of cases, most already agreeing (conv and
transposed conv geometry, interpolate in every mode, fold/unfold, grid_sample, MultiheadAttention's masks,
the Transformer layers, the RNN family, the norms, the losses' reductions). What did not, fixed here:
a float or a wrong-length size argument (`Conv1d(stride=2.0)`, `Conv1d(kernel_size=(3, 3))`,
`AvgPool1d((2, 2))`, `conv3d(padding=1.0)`, `max_pool3d(kernel_size=2.5)`) was truncated by `int()` or cut to
its first entry; `Conv1d`/`Conv3d` took `padding='same'` with a stride; a conv with 0 output channels
or a 0-size kernel ran; `divisor_override=1.5` was used as given; `max_pool(dilation=0)` ran;
adaptive pooling to 0 divided by zero and to 3 sizes in 2-d ignored one; reflect/replicate/circular
padding refused negative amounts (torch crops); `cosine_similarity` of broadcasting inputs normalized
before broadcasting (wrong values); `embedding` took a 1-d weight; `kl_div` of a negative target gave
a finite loss (torch: nan); `lp_pool` with p = inf gave 1s; an integer `attn_mask` was added as a bias;
`EmbeddingBag` offsets not starting at 0, decreasing or past the input; batch norm with eps <= 0;
CELU alpha = 0, softshrink lambda < 0, rrelu lower > upper; RNN `dropout=True` and `input_size=0`;
`pixel_shuffle(x, 2.0)`; a 2-d PReLU weight; `linear` with a 1-d weight and a 3-d input; an integer or
differently typed class weight in nll/cross entropy; a multi_margin weight longer than the classes;
transposed convs and PReLU of mixed dtypes (numpy promoted); rms_norm's result promoted by a float64
weight (torch keeps the input's dtype); `Embedding(Bag).from_pretrained(freeze=True)` left the table
trainable; `interpolate(size=3.5)`; `one_hot` of int32 indices. Left as they are (clear errors, or
torch's own quirks): MultiheadAttention add_bias_kv/add_zero_attn, LSTM proj_size and 5-d
grid_sample/affine_grid (NotImplementedError), a negative label_smoothing, the deprecated
reduction='elementwise_mean'. torch is the oracle.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import avalon as av
import avalon.nn as nn
import avalon.nn.functional as F


def _a(t):
    return av.tensor(t.detach().numpy())


def _close(a, t, tol=1e-6):
    a = np.asarray(a.numpy())
    t = t.detach().numpy()
    assert a.shape == t.shape, (a.shape, t.shape)
    np.testing.assert_allclose(a, t, rtol=tol, atol=tol, equal_nan=True)


def _both_raise(tfn, afn, exc=Exception):
    with pytest.raises(Exception):  # noqa: B017 (torch's error types vary by version)
        tfn()
    with pytest.raises(exc):
        afn()


@pytest.mark.parametrize("make,shape", [
    (lambda m: m.Conv1d(4, 4, 3, stride=2.0), (2, 4, 8)),
    (lambda m: m.Conv1d(4, 4, 3, padding=1.0), (2, 4, 8)),
    (lambda m: m.Conv1d(4, 4, 3, stride=(1, 1)), (2, 4, 8)),
    (lambda m: m.Conv1d(4, 4, 3, padding=(1, 1)), (2, 4, 8)),
    (lambda m: m.Conv1d(4, 4, 2.5), (2, 4, 8)),
    (lambda m: m.Conv3d(4, 4, 2.5), (1, 4, 5, 5, 5)),
    (lambda m: m.Conv3d(4, 4, 3, stride=2.0), (1, 4, 5, 5, 5)),
    (lambda m: m.AvgPool1d((2, 2)), (2, 4, 8)),
    (lambda m: m.AvgPool1d(2.5), (2, 4, 8)),
    (lambda m: m.MaxPool1d(2.5), (2, 4, 8)),
    (lambda m: m.MaxPool3d(2, stride=2.0), (1, 4, 5, 5, 5)),
    (lambda m: m.AvgPool3d(2.5), (1, 4, 5, 5, 5)),
    (lambda m: m.AvgPool2d(2, divisor_override=1.5), (2, 4, 6, 6)),
    (lambda m: m.AvgPool3d(2, divisor_override=1.5), (1, 4, 5, 5, 5)),
    (lambda m: m.PixelShuffle(2.0), (1, 8, 3, 3)),
    (lambda m: m.PixelUnshuffle(2.0), (1, 2, 6, 6)),
])
def test_float_or_wrong_length_size_arguments_refused(make, shape):
    """int() truncated them (or the first entry was taken); torch refuses at construction or first call."""
    x = torch.randn(*shape)
    with pytest.raises(Exception):  # noqa: B017 (TypeError, ValueError or RuntimeError, by where it fails)
        make(torch.nn)(x)
    with pytest.raises((TypeError, ValueError, RuntimeError)):
        make(nn)(_a(x))


@pytest.mark.parametrize("name,shape", [("Conv1d", (2, 4, 7)), ("Conv3d", (1, 4, 5, 5, 5))])
def test_same_padding_with_stride_refused_at_construction(name, shape):
    with pytest.raises(ValueError, match="strided"):
        getattr(torch.nn, name)(4, 4, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="strided"):
        getattr(nn, name)(4, 4, 3, stride=2, padding="same")


@pytest.mark.parametrize("f,w", [("conv1d", (0, 4, 3)), ("conv2d", (0, 4, 3, 3)), ("conv2d", (4, 4, 0, 0)),
                                 ("conv1d", (4, 4, 0))])
def test_conv_with_no_output_channels_or_empty_kernel_refused(f, w):
    x = torch.randn((2, 4) + (6,) * (len(w) - 2))
    wt = torch.randn(*w)
    _both_raise(lambda: getattr(TF, f)(x, wt), lambda: getattr(F, f)(_a(x), _a(wt)))


def test_max_pool_dilation_zero_refused():
    x = torch.randn(2, 3, 7, 7)
    _both_raise(lambda: TF.max_pool2d(x, 2, dilation=0), lambda: F.max_pool2d(_a(x), 2, dilation=0))
    _both_raise(lambda: TF.max_pool1d(x[:, :, 0], 2, dilation=0), lambda: F.max_pool1d(_a(x[:, :, 0]), 2, dilation=0))


@pytest.mark.parametrize("name,size,shape", [("adaptive_avg_pool2d", 0, (2, 3, 7, 7)),
                                             ("adaptive_max_pool2d", (0, 3), (2, 3, 7, 7)),
                                             ("adaptive_avg_pool1d", 0, (2, 3, 7))])
def test_adaptive_pool_to_zero_is_empty(name, size, shape):
    x = torch.randn(*shape)
    _close(getattr(F, name)(_a(x), size), getattr(TF, name)(x, size))


def test_adaptive_pool_2d_with_three_sizes_refused():
    x = torch.randn(2, 3, 7, 7)
    _both_raise(lambda: TF.adaptive_avg_pool2d(x, (4, 4, 4)), lambda: F.adaptive_avg_pool2d(_a(x), (4, 4, 4)))
    _both_raise(lambda: TF.adaptive_max_pool2d(x, (4, 4, 4)), lambda: F.adaptive_max_pool2d(_a(x), (4, 4, 4)))


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("pad", [[-1, 2], [2, -1], [-1, -1], [-2, 1, 1, -1], [-1, 0, 2, -2]])
def test_negative_padding_crops_in_every_mode(mode, pad):
    torch.manual_seed(0)
    x = torch.randn((2, 3) + (5, 6)[2 - len(pad) // 2:], dtype=torch.float64)
    _close(F.pad(_a(x), pad, mode=mode), TF.pad(x, pad, mode=mode))


@pytest.mark.parametrize("mode", ["Reflection", "Replication", "Circular"])
def test_negative_padding_layers(mode):
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    _close(getattr(nn, f"{mode}Pad2d")((-1, 2, 1, -1))(_a(x)), getattr(torch.nn, f"{mode}Pad2d")((-1, 2, 1, -1))(x))


@pytest.mark.parametrize("a,b,dim", [((3, 4), (1, 4), 0), ((3, 1), (3, 4), 1), ((2, 3, 4), (3, 4), 1),
                                     ((3, 4), (4,), 0)])
def test_cosine_similarity_broadcasts_before_normalizing(a, b, dim):
    torch.manual_seed(0)
    x, y = torch.randn(*a, dtype=torch.float64), torch.randn(*b, dtype=torch.float64)
    _close(F.cosine_similarity(_a(x), _a(y), dim=dim), TF.cosine_similarity(x, y, dim=dim))
    _close(nn.CosineSimilarity(dim)(_a(x), _a(y)), torch.nn.CosineSimilarity(dim)(x, y))


def test_embedding_weight_must_be_2d():
    i, w = torch.tensor([[1, 2]]), torch.randn(10)
    _both_raise(lambda: TF.embedding(i, w), lambda: F.embedding(_a(i), _a(w)), RuntimeError)


def test_kl_div_negative_target_is_nan_as_torch():
    x = torch.randn(2, 3, dtype=torch.float64)
    t = torch.tensor([[-0.5, 0.0, 0.3], [0.2, -1.0, 2.0]], dtype=torch.float64)
    _close(F.kl_div(_a(x), _a(t), reduction="none"), TF.kl_div(x, t, reduction="none"))
    g = av.grad(lambda a, b: F.kl_div(a, b, reduction="sum"))(_a(x), _a(t.abs()))
    xt = x.clone().requires_grad_()
    TF.kl_div(xt, t.abs(), reduction="sum").backward()
    _close(g, xt.grad)


@pytest.mark.parametrize("p", [math.inf, -math.inf])
@pytest.mark.parametrize("d", [1, 2, 3])
def test_lp_pool_infinite_norm_is_max_pool(p, d):
    torch.manual_seed(0)
    x = torch.randn((2, 3) + (6,) * d, dtype=torch.float64)
    f = f"lp_pool{d}d"
    _close(getattr(F, f)(_a(x), p, 2, stride=2), getattr(TF, f)(x, p, 2, stride=2))


def test_sdpa_integer_mask_refused():
    q = torch.randn(2, 3, 8, dtype=torch.float64)
    m = torch.ones(3, 3, dtype=torch.long)
    _both_raise(lambda: TF.scaled_dot_product_attention(q, q, q, attn_mask=m),
                lambda: F.scaled_dot_product_attention(_a(q), _a(q), _a(q), attn_mask=_a(m)), RuntimeError)
    m32 = torch.randn(3, 3)  # a float32 mask is allowed with any query dtype, as torch
    _close(F.scaled_dot_product_attention(_a(q), _a(q), _a(q), attn_mask=_a(m32)),
           TF.scaled_dot_product_attention(q, q, q, attn_mask=m32))


@pytest.mark.parametrize("offsets", [[1, 3], [0, 4, 9]])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_bad_offsets_refused(offsets, mode):
    torch.manual_seed(0)
    w, i, o = torch.randn(10, 4), torch.randint(0, 10, (7,)), torch.tensor(offsets)
    _both_raise(lambda: TF.embedding_bag(i, w, o, mode=mode),
                lambda: F.embedding_bag(_a(i), _a(w), _a(o), mode=mode), RuntimeError)


def test_embedding_bag_decreasing_offsets_refused():
    w, i, o = torch.randn(10, 4), torch.randint(0, 10, (7,)), torch.tensor([0, 4, 2])
    with pytest.raises(RuntimeError):
        TF.embedding_bag(i, w, o, mode="sum")
    with pytest.raises(RuntimeError, match="non-decreasing"):
        F.embedding_bag(_a(i), _a(w), _a(o), mode="sum")


@pytest.mark.parametrize("eps,training", [(0.0, True), (-1.0, True), (-1.0, False)])
def test_batch_norm_eps_checked(eps, training):
    x = torch.randn(3, 4, 5)
    tm, am = torch.nn.BatchNorm1d(4, eps=eps), nn.BatchNorm1d(4, eps=eps)
    tm.train(training)
    am.train(training)
    _both_raise(lambda: tm(x), lambda: am(_a(x)), ValueError)


def test_batch_norm_eps_zero_in_eval_computes():
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    r = torch.ones(4, dtype=torch.float64)
    _close(F.batch_norm(_a(x), _a(r * 0), _a(r), eps=0.0), TF.batch_norm(x, r * 0, r, eps=0.0))


def test_activation_argument_checks():
    x = torch.randn(2, 3)
    _both_raise(lambda: TF.celu(x, alpha=0.0), lambda: F.celu(_a(x), alpha=0.0), RuntimeError)
    _both_raise(lambda: TF.softshrink(x, -0.5), lambda: F.softshrink(_a(x), -0.5), RuntimeError)
    _both_raise(lambda: TF.rrelu(x, 0.3, 0.1), lambda: F.rrelu(_a(x), 0.3, 0.1), RuntimeError)
    _both_raise(lambda: TF.prelu(x, torch.rand(2, 2)), lambda: F.prelu(_a(x), _a(torch.rand(2, 2))), RuntimeError)


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_rnn_constructor_checks(name):
    for kw in (dict(dropout=True), dict(input_size=0)):
        args = dict(input_size=4, hidden_size=3)
        args.update(kw)
        with pytest.raises(ValueError):
            getattr(torch.nn, name)(**args)
        with pytest.raises(ValueError):
            getattr(nn, name)(**args)


def test_linear_with_a_1d_weight():
    x, w = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    _close(F.linear(_a(x), _a(w)), TF.linear(x, w))  # (a reshape error before)
    _close(F.linear(_a(x[0]), _a(w)), TF.linear(x[0], w))


@pytest.mark.parametrize("f", ["nll_loss", "cross_entropy"])
@pytest.mark.parametrize("wdtype", [torch.long, torch.float32])
def test_class_weight_dtype_checked(f, wdtype):
    x, t = torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 2, 1, 2])
    w = torch.ones(3, dtype=wdtype)
    _both_raise(lambda: getattr(TF, f)(x, t, weight=w), lambda: getattr(F, f)(_a(x), _a(t), weight=_a(w)),
                TypeError)


def test_multi_margin_weight_size_checked():
    x, t, w = torch.randn(4, 3), torch.tensor([0, 2, 1, 2]), torch.rand(4)
    _both_raise(lambda: TF.multi_margin_loss(x, t, weight=w), lambda: F.multi_margin_loss(_a(x), _a(t), weight=_a(w)),
                ValueError)
    w3 = torch.rand(3)
    _close(F.multi_margin_loss(_a(x), _a(t), weight=_a(w3)), TF.multi_margin_loss(x, t, weight=w3), 1e-5)


@pytest.mark.parametrize("name,shape", [("ConvTranspose1d", (2, 4, 7)), ("ConvTranspose2d", (2, 4, 5, 5)),
                                        ("ConvTranspose3d", (1, 4, 3, 3, 3))])
@pytest.mark.parametrize("mdt,idt", [(torch.float32, torch.float64), (torch.float64, torch.float32)])
def test_conv_transpose_mixed_dtypes_refused(name, shape, mdt, idt):
    """numpy promoted the output in silence; torch refuses, as for the forward convolutions."""
    tm, am = getattr(torch.nn, name)(4, 3, 3, dtype=mdt), getattr(nn, name)(4, 3, 3, dtype=mdt)
    x = torch.randn(*shape, dtype=idt)
    _both_raise(lambda: tm(x), lambda: am(_a(x)), TypeError)


@pytest.mark.parametrize("mdt,idt", [(torch.float32, torch.float64), (torch.float64, torch.float32)])
def test_prelu_mixed_dtypes_refused(mdt, idt):
    x = torch.randn(2, 4, 3, dtype=idt)
    _both_raise(lambda: torch.nn.PReLU(4, dtype=mdt)(x), lambda: nn.PReLU(4, dtype=mdt)(_a(x)), TypeError)


@pytest.mark.parametrize("wdt,idt", [(torch.float64, torch.float32), (torch.float32, torch.float64)])
def test_rms_norm_keeps_the_input_dtype(wdt, idt):
    torch.manual_seed(0)
    x, w = torch.randn(3, 5, dtype=idt), torch.rand(5, dtype=wdt)
    a, t = F.rms_norm(_a(x), (5,), _a(w)), TF.rms_norm(x, (5,), w)
    _close(a, t, 1e-5)  # (compares the numpy dtypes too)
    assert np.asarray(a.numpy()).dtype == t.numpy().dtype


@pytest.mark.parametrize("freeze", [True, False])
def test_from_pretrained_freeze_is_honoured(freeze):
    """`freeze` was accepted and ignored: a fine-tuning loop trained the pretrained table."""
    w = np.random.default_rng(0).standard_normal((6, 3))
    idx = np.array([1, 2, 2])
    for tcls, cls in ((torch.nn.Embedding, nn.Embedding), (torch.nn.EmbeddingBag, nn.EmbeddingBag)):
        t, a = tcls.from_pretrained(torch.tensor(w), freeze=freeze), cls.from_pretrained(w, freeze=freeze)
        assert a.weight.requires_grad == t.weight.requires_grad == (not freeze)
        grads = av.grad(lambda m: (m(av.tensor(idx[None])) ** 2).sum())(a)
        assert ("weight" in grads) == (not freeze)


def test_interpolate_float_size_and_one_hot_int32_refused():
    x = torch.randn(1, 2, 5, 6)
    _both_raise(lambda: TF.interpolate(x, size=(3.5, 4)), lambda: F.interpolate(_a(x), size=(3.5, 4)), TypeError)
    i = torch.tensor([1, 2], dtype=torch.int32)
    _both_raise(lambda: TF.one_hot(i, 4), lambda: F.one_hot(_a(i), 4), RuntimeError)

"""torch.* names ported code calls directly, checked against torch 2.13: the torch.* forms of
nn.functional's ops (avalon/nn/torch_functions.py: `torch.conv2d`, `torch.layer_norm(..., cudnn_enable)`,
`torch.batch_norm`'s positional signature, `torch.embedding(weight, indices)`, the losses' int
`reduction`, ...), avalon/ops/torch_aliases.py (clone, fill, normal, range, hsplit, the scatters, the
windows, the torch.X_ in-place functions, queries) and the Tensor methods added with them (cov, kron,
new, nbytes, ...).

Values on random float64 inputs, gradients through `av.grad` against torch.autograd, a compiled
(numpy backend) run of a representative subset, random functions by their statistics, and the
errors torch gives bad input."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import avalon as av
from avalon.ops import torch_aliases

pytestmark = pytest.mark.filterwarnings("error:.*uses arrays that are not among its arguments:UserWarning")

RNG = np.random.default_rng(20251113)
OPS = av.ops


def T(x):
    return torch.from_numpy(np.array(x))


def close(ours, theirs, tol: float = 1e-12) -> None:
    """Same shape and dtype as torch's; error relative to the largest magnitude below tol."""
    o = ours.numpy() if isinstance(ours, av.Tensor) else np.asarray(ours)
    t = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    assert o.shape == t.shape, (o.shape, t.shape)
    if isinstance(theirs, torch.Tensor):
        assert o.dtype == t.dtype, (o.dtype, t.dtype)
    if o.dtype.kind in "biu" or tol == 0:
        np.testing.assert_array_equal(o, t)
        return
    o, t = o.astype(np.float64), t.astype(np.float64)
    scale = max(np.abs(t).max(initial=0.0), 1e-300)
    assert np.abs(o - t).max(initial=0.0) / scale < tol, (o, t)


class G:
    """An argument differentiated (a float64 array)."""

    def __init__(self, a):
        self.a = np.asarray(a, np.float64)


def r(*shape):
    return RNG.standard_normal(shape)


def u(lo, hi, *shape):
    return RNG.uniform(lo, hi, shape)


def _args(lib, args, diffs=None, consts=None):
    """args for `lib` (av or torch): G slots from `diffs`, other arrays from `consts` (else tensors of
    their values); the rest as they are."""
    di, ci = iter(diffs or ()), iter(consts or ())
    out = []
    for a in args:
        if isinstance(a, (G, np.ndarray)):
            given = next(di if isinstance(a, G) else ci, None)
            v = a.a if isinstance(a, G) else a
            out.append(given if given is not None else (av.tensor(v) if lib is av else T(v)))
        else:
            out.append(a)
    return out


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def compare(name, args, kw=None, tol=1e-12, grad=True, first=False):
    """Values against torch's (the first result only with `first`), then the gradient of sum(w * out)
    (out's first result) for every G argument; the other arrays are arguments of the differentiated
    function too (not closed over)."""
    kw = kw or {}
    ours, theirs = getattr(av, name)(*_args(av, args), **kw), getattr(torch, name)(*_args(torch, args), **kw)
    if first:
        ours, theirs = ours[0], theirs[0]
    if isinstance(theirs, (tuple, list)):
        assert len(ours) == len(theirs)
        for o, t in zip(ours, theirs):
            close(o, t, tol)
    else:
        close(ours, theirs, tol)
    if not grad or not any(isinstance(a, G) for a in args):
        return
    gs = [a.a for a in args if isinstance(a, G)]
    cs = [a for a in args if isinstance(a, np.ndarray)]
    w = RNG.standard_normal(tuple(_first(theirs).shape))
    ts = [T(g).requires_grad_() for g in gs]
    (_first(getattr(torch, name)(*_args(torch, args, ts), **kw)) * T(w)).sum().backward()

    def loss(w, *xs):
        out = getattr(av, name)(*_args(av, args, xs[:len(gs)], xs[len(gs):]), **kw)
        return OPS.sum(OPS.mul(_first(out), w))

    grads = av.grad(loss, argnums=tuple(range(1, len(gs) + 1)))(av.tensor(w), *[av.tensor(g) for g in gs],
                                                               *[av.tensor(c) for c in cs])
    for g, t in zip(grads, ts):
        close(g, t.grad if t.grad is not None else torch.zeros_like(t), tol)


_IDX = RNG.integers(0, 6, (2, 4))
_BAG = np.array([0, 5, 2, 2, 4, 1, 3])
_SIGN = np.where(RNG.standard_normal(6) > 0, 1.0, -1.0)
_LP = torch.log_softmax(T(r(6, 2, 4)), -1).numpy()

FUNCTIONAL = [  # (id, torch name, args, kwargs)
    ("conv1d", "conv1d", [G(r(2, 3, 8)), G(r(4, 3, 3)), G(r(4)), 2, 1], {}),
    ("conv2d_same", "conv2d", [G(r(2, 3, 6, 6)), G(r(4, 3, 3, 3)), G(r(4))], {"padding": "same"}),
    ("conv2d_groups", "conv2d", [G(r(1, 4, 7, 7)), G(r(4, 2, 3, 3)), None, 1, 1, 2, 2], {}),
    ("conv3d", "conv3d", [G(r(1, 2, 4, 4, 4)), G(r(3, 2, 2, 2, 2)), None, 2], {}),
    ("conv_transpose1d", "conv_transpose1d", [G(r(2, 3, 5)), G(r(3, 4, 3)), G(r(4)), 2, 1, 1], {}),
    ("conv_transpose2d", "conv_transpose2d", [G(r(1, 2, 4, 4)), G(r(2, 3, 3, 3)), None, 2, 1], {}),
    ("max_pool1d", "max_pool1d", [G(r(2, 3, 9)), 3, 2, 1], {}),
    ("max_pool2d", "max_pool2d", [G(r(2, 3, 6, 6)), 2], {}),
    ("avg_pool1d", "avg_pool1d", [G(r(2, 3, 9)), 3, 2, 1, False, False], {}),
    ("adaptive_avg_pool1d", "adaptive_avg_pool1d", [G(r(2, 3, 10)), 4], {}),
    ("adaptive_max_pool1d", "adaptive_max_pool1d", [G(r(2, 3, 10)), 4], {}),
    ("layer_norm", "layer_norm", [G(r(2, 3, 4)), [3, 4], G(r(3, 4)), G(r(3, 4)), 1e-5, False], {}),
    ("group_norm", "group_norm", [G(r(2, 4, 3)), 2, G(r(4)), G(r(4)), 1e-5, True], {}),
    ("instance_norm", "instance_norm", [G(r(2, 3, 5)), G(r(3)), G(r(3)), None, None, True, 0.1, 1e-5, False], {}),
    ("batch_norm_train", "batch_norm", [G(r(4, 3, 5)), G(r(3)), G(r(3)), None, None, True, 0.1, 1e-5, False], {}),
    ("batch_norm_eval", "batch_norm", [G(r(4, 3)), G(r(3)), G(r(3)), r(3), u(0.5, 2, 3), False, 0.1, 1e-5, True], {}),
    ("embedding", "embedding", [G(r(6, 3)), _IDX, 2], {}),
    ("embedding_bag_mean", "embedding_bag", [G(r(6, 3)), _BAG, np.array([0, 3, 3]), False, 1], {}),
    ("embedding_bag_max", "embedding_bag", [G(r(6, 3)), _BAG, np.array([0, 3]), False, 2], {}),
    ("embedding_bag_sum_psw", "embedding_bag", [G(r(6, 3)), _BAG, np.array([0, 4]), False, 0, False,
                                                u(0.5, 2, 7)], {}),
    ("embedding_bag_max_empty", "embedding_bag", [G(r(6, 3)), _BAG, np.array([0, 3, 3]), False, 2, False, None,
                                                  False, 2], {}),
    ("embedding_bag_pad", "embedding_bag", [G(r(6, 3)), _BAG, np.array([0, 2, 7]), False, 1, False, None, True,
                                            2], {}),
    ("dropout_eval", "dropout", [G(r(3, 4)), 0.3, False], {}),
    ("alpha_dropout_eval", "alpha_dropout", [G(r(3, 4)), 0.3, False], {}),
    ("feature_alpha_dropout_eval", "feature_alpha_dropout", [G(r(3, 4)), 0.3, False], {}),
    ("bilinear", "bilinear", [G(r(4, 3)), G(r(4, 5)), G(r(2, 3, 5)), G(r(2))], {}),
    ("cosine_similarity", "cosine_similarity", [G(r(4, 5)), G(r(4, 5)), 1], {}),
    ("pairwise_distance", "pairwise_distance", [G(r(4, 5)), G(r(4, 5)), 3.0, 1e-6, True], {}),
    ("pdist", "pdist", [G(r(5, 3)), 1.5], {}),
    ("pixel_shuffle", "pixel_shuffle", [G(r(1, 8, 2, 3)), 2], {}),
    ("pixel_unshuffle", "pixel_unshuffle", [G(r(1, 2, 4, 6)), 2], {}),
    ("channel_shuffle", "channel_shuffle", [G(r(1, 6, 2, 2)), 3], {}),
    ("prelu", "prelu", [G(r(2, 3, 4)), G(r(3))], {}),
    ("selu", "selu", [G(r(3, 4))], {}),
    ("celu", "celu", [G(r(3, 4)), 0.7], {}),
    ("rrelu_eval", "rrelu", [G(r(3, 4)), 0.1, 0.3], {}),
    ("threshold", "threshold", [G(r(3, 4)), 0.1, -2.0], {}),
    ("hardshrink", "hardshrink", [G(r(3, 4)), 0.3], {}),
    ("kl_div_default_none", "kl_div", [G(r(3, 4)), G(u(0.1, 1, 3, 4))], {}),
    ("kl_div_mean", "kl_div", [G(r(3, 4)), G(u(0.1, 1, 3, 4)), 1], {}),
    ("kl_div_none_logt", "kl_div", [G(r(3, 4)), G(r(3, 4)), 0], {"log_target": True}),
    ("kl_div_sum", "kl_div", [G(r(3, 4)), G(u(0.1, 1, 3, 4)), 2], {}),
    ("bce_with_logits", "binary_cross_entropy_with_logits", [G(r(3, 4)), G(u(0, 1, 3, 4)), u(0.5, 2, 4),
                                                             u(0.5, 2, 4), 1], {}),
    ("bce_with_logits_none", "binary_cross_entropy_with_logits", [G(r(3, 4)), G(u(0, 1, 3, 4))], {}),
    ("cosine_embedding_loss", "cosine_embedding_loss", [G(r(6, 5)), G(r(6, 5)), _SIGN, 0.2, 1], {}),
    ("margin_ranking_loss", "margin_ranking_loss", [G(r(6)), G(r(6)), _SIGN, 0.1, 2], {}),
    ("hinge_embedding_loss", "hinge_embedding_loss", [G(r(6)), _SIGN, 1.0, 0], {}),
    ("triplet_margin_loss", "triplet_margin_loss", [G(r(4, 5)), G(r(4, 5)), G(r(4, 5)), 1.0, 2.0, 1e-6, True, 1],
     {}),
    ("poisson_nll_log", "poisson_nll_loss", [G(r(6)), RNG.integers(0, 5, 6).astype(float), True, True, 1e-8, 1], {}),
    ("poisson_nll", "poisson_nll_loss", [G(u(0.1, 3, 6)), RNG.integers(0, 5, 6).astype(float), False, False, 1e-8, 2],
     {}),
    ("ctc_loss", "ctc_loss", [_LP, RNG.integers(1, 4, (2, 3)), np.array([6, 5]), np.array([3, 2]), 0, 1, False],
     {}),  # (its gradient: test_ctc_loss_gradient_through_log_softmax)
    ("ctc_loss_none", "ctc_loss", [_LP, RNG.integers(1, 4, (2, 3)), np.array([6, 5]), np.array([3, 2])], {}),
    ("rms_norm", "rms_norm", [G(r(2, 3, 4)), [4], G(r(4)), 1e-6], {}),
    ("constant_pad_nd", "constant_pad_nd", [G(r(2, 3)), [1, -1, 2, 0], 2.5], {}),
    ("select_scatter", "select_scatter", [G(r(3, 4)), G(r(4)), 0, 1], {}),
    ("slice_scatter", "slice_scatter", [G(r(4, 5)), G(r(4, 2)), 1, 1, None, 2], {}),
    ("diagonal_scatter", "diagonal_scatter", [G(r(3, 4)), G(r(3)), 1], {}),
    ("diagonal_scatter_dims", "diagonal_scatter", [G(r(3, 4, 5)), G(r(4, 3)), -1, 2, 0], {}),
    ("fill_tensor", "fill", [G(r(2, 3)), G(np.array(1.5))], {}),
    ("rsub", "rsub", [G(r(3)), G(r(2, 3))], {"alpha": 2}),
    ("clone", "clone", [G(r(3))], {}),
]


@pytest.mark.parametrize("case", FUNCTIONAL, ids=[c[0] for c in FUNCTIONAL])
def test_values_and_gradients_match_torch(case):
    key, name, args, kw = case
    # (F.celu's expm1 is good to ~1e-8; torch's CPU embedding_bag leaves its 3 index results unfilled in sum mode)
    compare(name, args, kw, tol={"ctc_loss": 1e-9, "celu": 1e-7}.get(name, 1e-12), first=key.endswith("_psw"))


def test_ctc_loss_gradient_through_log_softmax():
    """torch's CTC backward gives the gradient for log-probabilities that came from log_softmax (not the
    plain derivative in log_probs), so the gradients compare with respect to the logits."""
    logits, tg = r(6, 2, 4), RNG.integers(1, 4, (2, 3))
    lengths = (np.array([6, 5]), np.array([3, 2]))
    x = T(logits).requires_grad_()
    torch.ctc_loss(x.log_softmax(-1), T(tg), *map(T, lengths), 0, 1).backward()
    g = av.grad(lambda z, t, a, b: av.ctc_loss(av.log_softmax(z, -1), t, a, b, 0, 1))(
        av.tensor(logits), av.tensor(tg), *map(av.tensor, lengths))
    close(g, x.grad, 1e-9)


def test_every_name_is_a_torch_name():
    names = {c[1] for c in FUNCTIONAL} | set(torch_aliases.__all__) | set(av.nn.torch_functions.__all__)
    for n in sorted(names):
        assert hasattr(torch, n) and callable(getattr(av, n)), n
    x = av.tensor(r(3, 3))
    for n in ("cov", "corrcoef", "diagflat", "dist", "kron", "hsplit", "vsplit", "dsplit", "split_with_sizes",
              "select_scatter", "slice_scatter", "diagonal_scatter", "is_complex", "is_signed", "is_cpu", "itemsize",
              "nbytes", "is_nonzero", "is_same_size", "hardshrink", "prelu", "new", "addmm_", "arccos_", "fix_"):
        assert hasattr(torch.Tensor, n) and hasattr(x, n), n
    assert av.concatenate.__wrapped__ is OPS.cat and av.fix is OPS.trunc  # (av.cat takes complex operands too)


def test_compiled_functions_match_torch():
    x, w, b = r(2, 3, 6, 6), r(4, 3, 3, 3), r(4)
    s, t = r(4, 5), u(0.1, 1, 4, 5)

    def ours(x, w, b, s, t):
        y = av.conv2d(x, w, b, 1, 1)
        y = av.batch_norm(y, None, None, None, None, True, 0.1, 1e-5, True)
        y = av.layer_norm(y, [6], None, None, 1e-5, True)
        return (y, av.kl_div(s, t, 2), av.diagonal_scatter(s, t[0, :4], 1),
                av.select_scatter(s, t[1], 0, 2), av.hann_window(8, dtype=av.float64),
                av.kaiser_window(5, False, 6.0, dtype=av.float64), av.hsplit(s, [2])[1])

    def theirs(x, w, b, s, t):
        y = torch.conv2d(x, w, b, 1, 1)
        y = torch.batch_norm(y, None, None, None, None, True, 0.1, 1e-5, True)
        y = torch.layer_norm(y, [6], None, None, 1e-5, True)
        return (y, torch.kl_div(s, t, 2), torch.diagonal_scatter(s, t[0, :4], 1),
                torch.select_scatter(s, t[1], 0, 2), torch.hann_window(8, dtype=torch.float64),
                torch.kaiser_window(5, False, 6.0, dtype=torch.float64), torch.hsplit(s, [2])[1])

    args = (x, w, b, s, t)
    compiled = av.compile(ours, backend="numpy")
    for got, want in zip(compiled(*[av.tensor(a) for a in args]), theirs(*[T(a) for a in args])):
        close(got, want, 1e-12)


def test_batch_and_instance_norm_update_running_statistics_as_torch():
    x, wt, bs = r(4, 3, 5), r(3), r(3)
    for fn in ("batch_norm", "instance_norm"):
        rm, rv = r(3), u(0.5, 2, 3)
        ours_m, ours_v, th_m, th_v = av.tensor(rm), av.tensor(rv), T(rm), T(rv)
        y = getattr(av, fn)(av.tensor(x), av.tensor(wt), av.tensor(bs), ours_m, ours_v, True, 0.3, 1e-5, False)
        z = getattr(torch, fn)(T(x), T(wt), T(bs), th_m, th_v, True, 0.3, 1e-5, False)
        close(y, z), close(ours_m, th_m), close(ours_v, th_v)


# -- windows, ranges, creation ----------------------------------------------------------------------

@pytest.mark.parametrize("name,extra", [("hann_window", ()), ("hamming_window", ()), ("hamming_window", (0.5, 0.4)),
                                        ("blackman_window", ()), ("bartlett_window", ()), ("kaiser_window", ()),
                                        ("kaiser_window", (5.0,))])
def test_windows_match_torch(name, extra):
    for n in (0, 1, 2, 7, 8):
        for periodic in (True, False):
            for d, td, tol in ((av.float64, torch.float64, 1e-14), (av.float32, torch.float32, 1e-6)):
                ours, theirs = getattr(av, name)(n, periodic, *extra, dtype=d), getattr(torch, name)(
                    n, periodic, *extra, dtype=td)
                assert ours.dtype is d and ours.shape == tuple(theirs.shape)
                np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=0, atol=tol)  # (torch's f32 rounding)
    assert getattr(av, name)(6).dtype is av.float32  # periodic, the default dtype


def test_range_scalar_tensor_asarray_concatenate():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for args, kw in (((0, 5), {}), ((1, 2, 0.3), {}), ((5, 0, -2), {}), ((0, 4), {"dtype": torch.int64}),
                         ((0, 0), {}), ((-1.5, 2.25, 0.75), {"dtype": torch.float64})):
            akw = {k: av.int64 if v is torch.int64 else av.float64 for k, v in kw.items()}
            close(av.range(*args, **akw), torch.range(*args, **kw), 1e-7)
    assert sum("torch.range is deprecated" in str(w.message) for w in caught) == 12
    for s, d in ((3, None), (True, None), (2.5, av.float64), (3, av.int32)):
        td = {None: None, av.float64: torch.float64, av.int32: torch.int32}[d]
        close(av.scalar_tensor(s, dtype=d), torch.scalar_tensor(s, dtype=td))
    a = np.arange(6.0)
    shared = av.asarray(a)
    a[0] = 7.0
    assert shared.numpy()[0] == 7.0 and av.asarray(a, copy=True).numpy() is not a
    x = av.tensor([1.0, 2.0])
    assert av.asarray(x) is x and av.asarray(x, copy=True) is not x
    for obj in ([1, 2], [1.0, 2], 3, True, np.zeros(2, np.float32)):
        close(av.asarray(obj), torch.asarray(obj))
    close(av.asarray([1, 2], dtype=av.float64), torch.asarray([1, 2], dtype=torch.float64))
    p, q = r(2, 1), r(2, 3)
    close(av.concatenate([p, q], axis=1), torch.concatenate([T(p), T(q)], axis=1))
    close(av.concatenate([p, q], 1), torch.concatenate([T(p), T(q)], 1))


# -- splits, queries, Tensor methods ---------------------------------------------------------------

def test_splits_match_torch_and_are_views():
    x = r(4, 6, 4)
    for name, arg in (("hsplit", 2), ("hsplit", [1, 4]), ("vsplit", 2), ("vsplit", [3]), ("dsplit", 4),
                      ("dsplit", [1, 1, 3])):
        ours, theirs = getattr(av, name)(av.tensor(x), arg), getattr(torch, name)(T(x), arg)
        assert len(ours) == len(theirs)
        for o, t in zip(ours, theirs):
            close(o, t, 0)
        for o, t in zip(getattr(av.tensor(x), name)(arg), theirs):
            close(o, t, 0)
    for o, t in zip(av.hsplit(av.tensor(x[0, 0]), 2), torch.hsplit(T(x[0, 0]), 2)):  # 1-d: along dim 0
        close(o, t, 0)
    for o, t in zip(av.tensor(x).split_with_sizes([1, 2, 3], 1), torch.split_with_sizes(T(x), [1, 2, 3], 1)):
        close(o, t, 0)
    y = av.tensor(x.copy())
    av.hsplit(y, 2)[1].fill_(0.0)  # a view: writes reach the base, as torch's
    assert (y.numpy()[:, 3:] == 0).all() and (y.numpy()[:, :3] == x[:, :3]).all()


def test_queries_match_torch():
    for d in ("float32", "float64", "bfloat16", "float16", "int64", "int32", "int16", "int8", "uint8", "bool"):
        a, t = av.zeros(2, 3, dtype=getattr(av, d if d != "bool" else "bool_")), torch.zeros(2, 3,
                                                                                          dtype=getattr(torch, d))
        assert (av.is_signed(a), a.is_signed(), a.itemsize, a.nbytes, a.is_cpu, av.is_complex(a),
                a.is_complex()) == (torch.is_signed(t), t.is_signed(), t.itemsize, t.nbytes, t.is_cpu,
                                    torch.is_complex(t), t.is_complex()), d
        assert av.typename(a) == torch.typename(t)
    assert av.is_nonzero(av.tensor([[2.0]])) and not av.tensor([0]).is_nonzero()
    assert av.is_same_size(av.zeros(2, 3), av.ones(2, 3)) and not av.zeros(2).is_same_size(av.zeros(3))
    assert av.typename(3) == torch.typename(3) == "int" and av.typename(av.nn.Linear) == "avalon.nn.layers.Linear"


def test_tensor_methods_match_torch():
    x, y, m = r(3, 5), r(3, 5), r(2, 3)
    ax, tx = av.tensor(x), T(x)
    close(ax.cov(), tx.cov()), close(ax.cov(correction=0), tx.cov(correction=0)), close(ax.corrcoef(), tx.corrcoef())
    close(av.tensor(x[0]).diagflat(1), T(x[0]).diagflat(1), 0), close(ax.dist(av.tensor(y), 3), tx.dist(T(y), 3))
    close(ax.kron(av.tensor(m)), tx.kron(T(m))), close(ax.hardshrink(0.7), tx.hardshrink(0.7), 0)
    close(ax.prelu(av.tensor(np.array([0.3]))), tx.prelu(T(np.array([0.3]))))
    close(ax.select_scatter(av.tensor(y[0]), 0, -1), tx.select_scatter(T(y[0]), 0, -1), 0)
    close(ax.slice_scatter(av.tensor(y[:2]), 0, 1), tx.slice_scatter(T(y[:2]), 0, 1), 0)
    close(ax.diagonal_scatter(av.tensor(y[0, :3])), tx.diagonal_scatter(T(y[0, :3])), 0)
    for new_args in ((), (2, 3), ((2, 3),)):  # torch's memory is uninitialized, Avalon's zeros
        t_args = (torch.Size(new_args[0]),) if new_args and isinstance(new_args[0], tuple) else new_args
        assert ax.new(*new_args).shape == tuple(tx.new(*t_args).shape) and ax.new(*new_args).dtype is av.float64
    for data in ([2.5, 3], np.array([1, 2])):
        close(ax.new(data), tx.new(data), 0)
    close(av.tensor(np.arange(3)).new([2.7, -1]), T(np.arange(3)).new([2.7, -1]), 0)
    assert ax.new(ax) is ax
    for name, args in (("arccos_", ()), ("arcsin_", ()), ("arctan_", ()), ("arctan2_", (y,)), ("absolute_", ()),
                       ("fix_", ()), ("divide_", (y,)), ("true_divide_", (y,)), ("sgn_", ()), ("cumsum_", (1,)),
                       ("cumprod_", (0,)), ("eq_", (x,)), ("ne_", (y,)), ("lt_", (y,)), ("le_", (y,)), ("gt_", (y,)),
                       ("ge_", (x,)), ("addmm_", (r(3, 2), r(2, 5)))):
        base = np.clip(x, -0.9, 0.9)
        ours, theirs = av.tensor(base.copy()), T(base.copy())
        assert getattr(ours, name)(*[av.tensor(a) if isinstance(a, np.ndarray) else a for a in args]) is ours
        getattr(theirs, name)(*[T(a) if isinstance(a, np.ndarray) else a for a in args])
        close(ours, theirs, 1e-13)


_POS = u(0.1, 0.9, 3, 4)
INPLACE = {"acosh_": (_POS + 1, ()), "arccosh_": (_POS + 1, ()), "clamp_": (_POS, (0.3, 0.6)),
           "clip_": (_POS, (0.3, 0.6)), "clamp_max_": (_POS, (0.5,)), "clamp_min_": (_POS, (0.5,)),
           "fill_": (_POS, (2.5,)), "xlogy_": (_POS, (u(0.1, 2, 3, 4),)), "ldexp_": (_POS, (RNG.integers(-3, 3, 4),)),
           "addmv_": (r(4), (r(4, 5), r(5))), "gcd_": (RNG.integers(1, 50, 6), (RNG.integers(1, 50, 6),)),
           "lcm_": (RNG.integers(1, 50, 6), (RNG.integers(1, 50, 6),)), "nan_to_num_": (_POS, (0.0,)),
           "index_put_": (_POS, ((np.array([0, 2]), np.array([1, 3])), np.array([7.0, 8.0])))}


@pytest.mark.parametrize("name", torch_aliases.INPLACE_FUNCTIONS)
def test_in_place_functions_write_their_input_as_torch(name):
    x, args = INPLACE.get(name, (_POS, ()))

    def conv(a, lib):
        if isinstance(a, tuple):
            return tuple(conv(v, lib) for v in a)
        return (av.tensor(a) if lib is av else T(a)) if isinstance(a, np.ndarray) else a

    ours, theirs = av.tensor(x.copy()), T(x.copy())
    assert getattr(av, name)(ours, *conv(args, av)) is ours
    getattr(torch, name)(theirs, *conv(args, torch))
    close(ours, theirs, 1e-14)


def test_nn_in_place_functions_write_their_input():
    x = r(3, 4)
    for name, args in (("selu_", ()), ("celu_", (0.5,)), ("threshold_", (0.2, -1.0)), ("rrelu_", (0.1, 0.3)),
                       ("dropout_", (0.5, False)), ("alpha_dropout_", (0.5, False)),
                       ("feature_alpha_dropout_", (0.5, False)), ("feature_dropout_", (0.5, False))):
        ours, theirs = av.tensor(x.copy()), T(x.copy())
        assert getattr(av, name)(ours, *args) is ours
        getattr(torch, name)(theirs, *args)
        close(ours, theirs, 1e-14)
    y = av.tensor(x.copy())
    assert av.dropout_(y, 0.5, True) is y and ((y.numpy() == 0) | np.isclose(y.numpy(), 2 * x)).all()


# -- random functions ---------------------------------------------------------------------------------

def test_normal_overloads_statistics_dtypes_and_no_gradient():
    av.manual_seed(0)
    m, s = np.linspace(-3, 3, 4)[:, None], np.array([0.5, 1.0, 2.0])
    z = av.normal(av.tensor(np.repeat(m, 4000, 1)[:, None, :].repeat(3, 1)),
                  av.tensor(np.repeat(s[:, None], 4000, 1))).numpy()
    assert z.shape == (4, 3, 4000) and z.dtype == np.float64
    assert np.abs(z.mean(-1) - m).max() < 0.15 and np.abs(z.std(-1) / s - 1).max() < 0.06
    assert av.normal(av.zeros(3, 1), av.ones(4)).shape == (3, 4)
    assert av.normal(av.zeros(5, dtype=av.float64)).dtype is av.float64
    assert av.normal(2.0, av.ones(3, dtype=av.float64)).dtype is av.float64
    assert av.normal(av.zeros(2), std=2.0).dtype is av.float32
    big = av.normal(1.0, 3.0, (20000,), dtype=av.float64).numpy()
    assert big.dtype == np.float64 and abs(big.mean() - 1) < 0.1 and abs(big.std() - 3) < 0.1
    assert av.normal(0.0, 1.0, size=(2, 3)).dtype is av.float32
    g1, g2 = av.Generator().manual_seed(5), av.Generator().manual_seed(5)
    close(av.normal(0.0, 1.0, (6,), generator=g1), av.normal(0.0, 1.0, (6,), generator=g2).numpy(), 0)
    with pytest.warns(UserWarning, match="depends on none of the tensors"):
        grads = av.grad(lambda a, b: av.normal(a, b).sum(), argnums=(0, 1))(av.ones(3), av.ones(3))
    assert all((g.numpy() == 0).all() for g in grads)  # torch.normal passes no gradient either
    compiled = av.compile(lambda a, b: av.normal(a, b), backend="numpy")
    d1, d2 = compiled(av.zeros(50), av.ones(50)), compiled(av.zeros(50), av.ones(50))
    assert not np.array_equal(d1.numpy(), d2.numpy())  # fresh draws per call


def test_random_nn_functions_in_training():
    x = u(1, 2, 4, 6, 50)
    d = av.dropout(av.tensor(x), 0.25, True).numpy()
    assert abs((d == 0).mean() - 0.25) < 0.03 and np.allclose(d[d != 0], (x / 0.75)[d != 0])
    f = av.feature_dropout(av.tensor(x), 0.5, True).numpy()
    assert set(np.unique((f == 0).all(-1) | np.isclose(f, 2 * x).all(-1))) == {True}
    a = av.alpha_dropout(av.tensor(r(20000)), 0.2, True).numpy()
    assert abs(a.mean()) < 0.05 and abs(a.std() - 1) < 0.05  # alpha dropout keeps zero mean, unit variance
    g1, g2 = av.Generator().manual_seed(1), av.Generator().manual_seed(1)
    rr = av.rrelu(av.tensor(-x), 0.1, 0.3, True, g1).numpy()
    assert ((rr <= -0.1 * x + 1e-12) & (rr >= -0.3 * x - 1e-12)).all()
    close(av.rrelu(av.tensor(-x), 0.1, 0.3, True, g2), rr, 0)


# -- errors -------------------------------------------------------------------------------------------

def _z(lib, *shape, dtype="float32"):
    return lib.zeros(shape, dtype=getattr(lib, dtype if (lib is torch or dtype != "bool") else "bool_"))


ERRORS = [  # (id, call(lib), the exception torch raises)
    ("hsplit_0d", lambda L: L.hsplit(_z(L), 2), RuntimeError),
    ("hsplit_uneven", lambda L: L.hsplit(_z(L, 4, 5), 2), RuntimeError),
    ("vsplit_1d", lambda L: L.vsplit(_z(L, 6), 2), RuntimeError),
    ("dsplit_2d", lambda L: L.dsplit(_z(L, 6, 2), 2), RuntimeError),
    ("split_with_sizes_sum", lambda L: L.split_with_sizes(_z(L, 5), [2, 2]), RuntimeError),
    ("select_scatter_shape", lambda L: L.select_scatter(_z(L, 4, 5), L.ones(4), 0, 1), RuntimeError),
    ("select_scatter_index", lambda L: L.select_scatter(_z(L, 4, 5), L.ones(5), 0, 4), IndexError),
    ("slice_scatter_shape", lambda L: L.slice_scatter(_z(L, 4, 5), L.ones(3, 5), 0, 1, None, 2), RuntimeError),
    ("diagonal_scatter_shape", lambda L: L.diagonal_scatter(_z(L, 4, 5), L.ones(3)), RuntimeError),
    ("is_nonzero_many", lambda L: L.is_nonzero(_z(L, 2)), RuntimeError),
    ("is_nonzero_empty", lambda L: L.is_nonzero(_z(L, 0)), RuntimeError),
    ("is_complex_int", lambda L: L.is_complex(1), TypeError),
    ("fill_1d_value", lambda L: L.fill(_z(L, 2), L.ones(2)), RuntimeError),
    ("rsub_bools", lambda L: L.rsub(_z(L, 2, dtype="bool"), _z(L, 2, dtype="bool")), RuntimeError),
    ("rsub_float_alpha", lambda L: L.rsub(_z(L, 2, dtype="int64"), 2, alpha=1.5), RuntimeError),
    ("range_step0", lambda L: L.range(0, 5, 0), RuntimeError),
    ("range_sign", lambda L: L.range(5, 0, 1), RuntimeError),
    ("range_no_end", lambda L: L.range(5), TypeError),
    ("window_negative", lambda L: L.hann_window(-1), RuntimeError),
    ("window_int", lambda L: L.blackman_window(4, dtype=L.int64), RuntimeError),
    ("normal_neg_std", lambda L: L.normal(_z(L, 3), -1.0), RuntimeError),
    ("normal_neg_stds", lambda L: L.normal(_z(L, 3), L.tensor([1.0, -1.0, 1.0])), RuntimeError),
    ("normal_no_size", lambda L: L.normal(0, 1), TypeError),
    ("normal_tensor_size", lambda L: L.normal(_z(L, 2), 1.0, (3,)), TypeError),
    ("normal_int", lambda L: L.normal(_z(L, 3, dtype="int64"), 1.0), NotImplementedError),
    ("kl_div_str", lambda L: L.kl_div(_z(L, 3), _z(L, 3), reduction="mean"), TypeError),
    ("dropout_no_train", lambda L: L.dropout(_z(L, 3), 0.5), TypeError),
    ("prelu_channels", lambda L: L.prelu(_z(L, 2, 4), L.ones(3)), RuntimeError),
    ("asarray_list_alias", lambda L: L.asarray([1, 2], copy=False), ValueError),
    ("asarray_cast_alias", lambda L: L.asarray(np.zeros(2), dtype=L.float32, copy=False), ValueError),
    ("new_float", lambda L: _z(L, 2).new(2.5), TypeError),
    ("new_other_dtype", lambda L: _z(L, 2).new(_z(L, 2, dtype="int64")), TypeError),
]


@pytest.mark.parametrize("call,exc", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_errors_are_torch_errors(call, exc):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(exc):
            call(torch)
        with pytest.raises(exc):
            call(av)

"""avalon.nn.functional against torch.nn.functional on random inputs (torch is the oracle)."""
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import T, as_numpy, rel
from hypothesis import given
from hypothesis import strategies as st

import avalon as av
from avalon.compiler.execute import feed
from avalon.nn import functional as F
from avalon.trace import trace_call


def close(a, b, tol=1e-5):
    """Whole-result relative error below tol AND every element close (nan where torch has nan)."""
    a_, b_ = as_numpy(a).astype(np.float64), as_numpy(b).astype(np.float64)
    assert a_.shape == b_.shape, (a_.shape, b_.shape)
    assert np.array_equal(np.isnan(a_), np.isnan(b_))
    assert rel(np.nan_to_num(a_), np.nan_to_num(b_)) < tol
    np.testing.assert_allclose(a_, b_, rtol=tol, atol=tol * max(np.abs(np.nan_to_num(b_)).max(), 1e-30) * 1e-2)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def traced_equals_eager(fn, *args, tol=1e-6):
    """The traced graph, run by the interpreter, gives the eager result."""
    eager = fn(*args)
    tr = trace_call(fn, args)
    out = av.interpret(tr.graph, *feed(tr.leaves))[0]
    assert rel(out, eager) <= tol
    return tr.graph


# -- activations ----------------------------------------------------------------------------------

ACTIVATIONS = [
    ("relu", {}), ("relu6", {}), ("hardtanh", {"min_val": -0.5, "max_val": 0.7}), ("leaky_relu", {}),
    ("leaky_relu", {"negative_slope": 0.2}), ("elu", {}), ("elu", {"alpha": 1.7}), ("selu", {}), ("gelu", {}),
    ("gelu", {"approximate": "tanh"}), ("sigmoid", {}), ("tanh", {}), ("softplus", {}),
    ("softplus", {"beta": 2.0, "threshold": 5.0}), ("silu", {}), ("mish", {}), ("hardsigmoid", {}),
    ("hardswish", {}), ("softsign", {}), ("logsigmoid", {}),
]


@pytest.mark.parametrize("name,kw", ACTIVATIONS, ids=[f"{n}{kw}" for n, kw in ACTIVATIONS])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation_matches_torch(name, kw, dtype, rng):
    x = np.concatenate([rng.standard_normal(200) * 3, [-100, -30, -5, -1e-3, -1e-7, 0, 1e-7, 1e-3, 5, 19.9, 30, 100]])
    x = x.astype(dtype)
    got = getattr(F, name)(x, **kw)
    want = getattr(TF, name)(T(x), **kw)
    assert got.dtype == av.ir.dtypes.dtype(dtype)
    close(got, want, 1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("name", ["softmax", "log_softmax", "softmin"])
def test_softmax_family(name, dim, rng):
    x = (rng.standard_normal((4, 5, 6)) * 30).astype(np.float32)  # large logits: needs the max shift
    close(getattr(F, name)(x, dim=dim), getattr(TF, name)(T(x), dim=dim))


def test_softmax_implicit_dim_warns_and_matches_torch(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    with pytest.warns(UserWarning, match="Implicit dimension"):
        got = F.softmax(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        close(got, TF.softmax(T(x)))


def test_log_softmax_is_stable_for_huge_logits():
    x = np.array([[1e4, 0.0, -1e4]], np.float32)
    out = F.log_softmax(x, dim=1).numpy()
    assert np.isfinite(out).all()
    close(out, TF.log_softmax(T(x), dim=1))


def test_gelu_rejects_unknown_approximation():
    with pytest.raises(ValueError, match="approximate"):
        F.gelu(np.ones(3, np.float32), approximate="fast")


def test_normalize_and_one_hot(rng):
    x = rng.standard_normal((4, 6)).astype(np.float32)
    for p in (1.0, 2.0, 3.0):
        close(F.normalize(x, p=p, dim=1), TF.normalize(T(x), p=p, dim=1))
    idx = np.array([0, 3, 2])
    np.testing.assert_array_equal(F.one_hot(idx, 5).numpy(), TF.one_hot(T(idx), 5).numpy())
    np.testing.assert_array_equal(F.one_hot(idx).numpy(), TF.one_hot(T(idx)).numpy())


# -- linear, convolution, pooling ---------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(5,), (4, 5), (2, 3, 5)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear(shape, bias, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((7, 5)).astype(np.float32)
    b = rng.standard_normal(7).astype(np.float32) if bias else None
    close(F.linear(x, w, b), TF.linear(T(x), T(w), None if b is None else T(b)))


@given(n=st.integers(1, 2), cg=st.integers(1, 3), og=st.integers(1, 3), groups=st.sampled_from([1, 2]),
       hw=st.tuples(st.integers(3, 9), st.integers(3, 9)), k=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       stride=st.tuples(st.integers(1, 2), st.integers(1, 2)), pad=st.tuples(st.integers(0, 2), st.integers(0, 2)),
       dil=st.tuples(st.integers(1, 2), st.integers(1, 2)), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_conv2d_matches_torch(n, cg, og, groups, hw, k, stride, pad, dil, bias, seed):
    r = np.random.default_rng(seed)
    if any(hw[i] + 2 * pad[i] < dil[i] * (k[i] - 1) + 1 for i in range(2)):
        return
    x = r.standard_normal((n, cg * groups, *hw)).astype(np.float32)
    w = r.standard_normal((og * groups, cg, *k)).astype(np.float32)
    b = r.standard_normal(og * groups).astype(np.float32) if bias else None
    got = F.conv2d(x, w, b, stride, pad, dil, groups)
    want = TF.conv2d(T(x), T(w), None if b is None else T(b), stride, pad, dil, groups)
    assert rel(got, want) < 1e-5


@pytest.mark.parametrize("k,dil", [((3, 3), 1), ((2, 4), 1), ((2, 3), 2)])
def test_conv2d_same_and_valid_padding(k, dil, rng):
    x = rng.standard_normal((2, 3, 7, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, *k)).astype(np.float32)
    for padding in ("same", "valid"):
        got = F.conv2d(x, w, padding=padding, dilation=dil)
        assert rel(got, TF.conv2d(T(x), T(w), padding=padding, dilation=dil)) < 1e-5
    with pytest.raises(ValueError):
        F.conv2d(x, w, padding="same", stride=2)


def test_conv2d_unbatched(rng):
    x = rng.standard_normal((3, 6, 6)).astype(np.float32)
    w = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    assert rel(F.conv2d(x, w, padding=1), TF.conv2d(T(x), T(w), padding=1)) < 1e-5


@given(hw=st.tuples(st.integers(4, 9), st.integers(4, 9)), k=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       stride=st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))),
       pad=st.tuples(st.integers(0, 1), st.integers(0, 1)), ceil=st.booleans(), include_pad=st.booleans(),
       divisor=st.one_of(st.none(), st.integers(1, 5)), seed=st.integers(0, 2**16))
def test_pooling_matches_torch(hw, k, stride, pad, ceil, include_pad, divisor, seed):
    pad = tuple(min(p, kk // 2) for p, kk in zip(pad, k))
    x = np.random.default_rng(seed).standard_normal((2, 3, *hw)).astype(np.float32)
    got = F.max_pool2d(x, k, stride, pad, ceil_mode=ceil)
    assert rel(got, TF.max_pool2d(T(x), k, stride, pad, ceil_mode=ceil)) == 0
    got = F.avg_pool2d(x, k, stride, pad, ceil, include_pad, divisor)
    want = TF.avg_pool2d(T(x), k, stride, pad, ceil, include_pad, divisor)
    assert rel(got, want) < 1e-6


def test_pooling_errors_and_unbatched(rng):
    x = rng.standard_normal((3, 6, 6)).astype(np.float32)
    assert rel(F.max_pool2d(x, 2), TF.max_pool2d(T(x), 2)) == 0
    with pytest.raises(ValueError, match="half"):
        F.max_pool2d(x, 2, padding=2)
    assert rel(F.max_pool2d(x, 2, dilation=2), TF.max_pool2d(T(x), 2, dilation=2)) == 0  # strided windows


# -- dropout, embedding ----------------------------------------------------------------------------

@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_mask_fraction_and_scaling(p):
    x = np.full((200, 100), 3.0, np.float32)
    y = F.dropout(x, p, training=True).numpy()
    kept = y != 0
    assert abs(1 - kept.mean() - p) < 0.02
    np.testing.assert_allclose(y[kept], 3.0 / (1 - p), rtol=1e-6)
    assert F.dropout(x, p, training=False).numpy() is x or np.array_equal(F.dropout(x, p, training=False).numpy(), x)
    y2 = F.dropout(x, p, training=True).numpy()
    assert not np.array_equal(y2 != 0, kept)  # a fresh mask per call


def test_dropout_edge_probabilities():
    x = np.ones((4, 4), np.float32)
    np.testing.assert_array_equal(F.dropout(x, 0.0).numpy(), x)
    np.testing.assert_array_equal(F.dropout(x, 1.0).numpy(), np.zeros_like(x))
    with pytest.raises(ValueError):
        F.dropout(x, 1.5)


def test_dropout_traced_draws_fresh_masks_per_seed():
    x = np.ones((64, 64), np.float32)
    tr = trace_call(lambda x: F.dropout(x, 0.5), (x,))
    assert [v.name for v in tr.graph.inputs][-1] == "rng_seed"
    assert "random" in [op.name for op in tr.graph.ops]
    a = av.interpret(tr.graph, x, np.int64(1))[0]
    b = av.interpret(tr.graph, x, np.int64(2))[0]
    assert not np.array_equal(a, b)
    assert abs((a == 0).mean() - 0.5) < 0.05 and set(np.unique(a)) == {0.0, 2.0}


def test_embedding(rng):
    w = rng.standard_normal((10, 4)).astype(np.float32)
    idx = rng.integers(0, 10, (3, 5))
    close(F.embedding(idx, w), TF.embedding(T(idx), T(w)))
    with pytest.raises(TypeError):
        F.embedding(idx.astype(np.float32), w)


# -- normalization -------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (2, 3, 4, 5)])
def test_batch_norm_training_updates_running_stats_like_torch(shape, rng):
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(np.float32)
    w, b = rng.standard_normal(3).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    rm, rv = av.Buffer(np.zeros(3, np.float32)), av.Buffer(np.ones(3, np.float32))
    trm, trv = torch.zeros(3), torch.ones(3)
    got = F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.3)
    want = TF.batch_norm(T(x), trm, trv, T(w), T(b), training=True, momentum=0.3)
    close(got, want)
    close(rm, trm)
    close(rv, trv)  # unbiased variance in the running estimate
    close(F.batch_norm(x, rm, rv, w, b), TF.batch_norm(T(x), trm, trv, T(w), T(b)))


def test_batch_norm_errors():
    with pytest.raises(ValueError, match="more than 1 value"):
        F.batch_norm(np.ones((1, 3), np.float32), None, None, training=True)
    with pytest.raises(ValueError, match="running_mean"):
        F.batch_norm(np.ones((2, 3), np.float32), None, None, training=False)


@pytest.mark.parametrize("nshape", [(5,), (4, 5)])
def test_layer_norm(nshape, rng):
    x = (rng.standard_normal((2, 3, 4, 5)) * 3 + 1).astype(np.float32)
    w, b = rng.standard_normal(nshape).astype(np.float32), rng.standard_normal(nshape).astype(np.float32)
    close(F.layer_norm(x, nshape, w, b), TF.layer_norm(T(x), nshape, T(w), T(b)))
    close(F.layer_norm(x, nshape), TF.layer_norm(T(x), nshape))
    with pytest.raises(ValueError, match="normalized_shape"):
        F.layer_norm(x, (3,))


def test_group_norm(rng):
    x = rng.standard_normal((2, 6, 4, 3)).astype(np.float32)
    w, b = rng.standard_normal(6).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    close(F.group_norm(x, 3, w, b), TF.group_norm(T(x), 3, T(w), T(b)))


# -- graphs --------------------------------------------------------------------------------------------

def test_functionals_trace_to_primitives(rng):
    x = rng.standard_normal((4, 6)).astype(np.float32)
    g = traced_equals_eager(lambda x: F.softmax(x, dim=1), x)
    assert {op.name for op in g.ops} <= {"max", "sub", "exp", "sum", "div", "broadcast"}
    traced_equals_eager(lambda x: F.gelu(x), x)
    traced_equals_eager(lambda x: F.softplus(x, 2.0), x)
    traced_equals_eager(lambda x: F.layer_norm(x, (6,)), x)
    t = rng.integers(0, 6, 4)
    traced_equals_eager(lambda x, t: F.cross_entropy(x, t, label_smoothing=0.1), x, t)
    traced_equals_eager(lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True), rng.standard_normal((1, 2, 7, 7)))

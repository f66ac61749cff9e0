"""Silent failures, round 5 (after test_silent_failures_4.py): distributions, lr schedulers, av.func,
checkpoints, data loading, fft and the special functions, probed against torch on random inputs.
Schedulers, func transforms, KL pairs and the loaders already agreed; what did not, fixed here:
an empty dim list in torch's reductions (sum, mean, amax, amin, var, std, logsumexp, the norms) is
every dim, where Avalon (numpy's `axis=()`) reduced nothing; `av.save` of a list, a tuple, a tensor
or a dict with int keys came back as a state dict (torch tensors in a list were dropped); a
Categorical of an all-zero row normalized to nan unchecked; erfinv lost digits near +-1 in float64;
sinc of float16 overflowed pi x; logsumexp of bools failed; fftfreq with an integer dtype truncated
every frequency and divided by zero for n = 0 or d = 0; default_convert made a 0-d array 1-d.
torch is the oracle."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import avalon as av
import avalon.distributions as D
import avalon.utils.data as data
from avalon import nn


def _np(x):
    return np.asarray(x.detach().numpy() if isinstance(x, torch.Tensor) else x.numpy())


# -- reductions: an empty dim list is every dim ------------------------------------------------------

@pytest.mark.parametrize("fn", ["sum", "mean", "amax", "amin", "nansum", "nanmean", "var", "std", "norm"])
@pytest.mark.parametrize("dim", [(), []])
@pytest.mark.parametrize("keepdim", [False, True])
def test_empty_dim_list_reduces_every_dim(fn, dim, keepdim):
    x = np.random.default_rng(0).normal(size=(2, 3))
    want = getattr(torch, fn)(torch.tensor(x), dim=dim, keepdim=keepdim)
    got = getattr(av, fn)(av.tensor(x), dim=dim, keepdim=keepdim)
    assert got.shape == tuple(want.shape)
    np.testing.assert_allclose(_np(got), _np(want), rtol=1e-12)


def test_empty_dim_list_methods_and_norms():
    x = np.random.default_rng(1).normal(size=(4,))
    t, a = torch.tensor(x), av.tensor(x)
    rest = tuple(range(1, a.ndim))  # () for a 1-d tensor: the classic "all but the batch dim"
    np.testing.assert_allclose(_np(a.sum(rest)), _np(t.sum(rest)), rtol=1e-12)
    np.testing.assert_allclose(_np(a.mean(dim=rest)), _np(t.mean(dim=rest)), rtol=1e-12)
    np.testing.assert_allclose(_np(av.linalg.vector_norm(a, dim=())), _np(torch.linalg.vector_norm(t, dim=())))
    np.testing.assert_allclose(_np(av.logsumexp(a, dim=(), keepdim=True)),
                               _np(torch.logsumexp(t, dim=(), keepdim=True)), rtol=1e-12)
    assert av.count_nonzero(a, dim=()).shape == ()
    b = np.array([[True, False], [False, False]])  # any / all keep x, as torch's do
    assert av.any(av.tensor(b), dim=()).shape == tuple(torch.any(torch.tensor(b), dim=()).shape) == (2, 2)


def test_internal_reductions_over_no_dims_still_reduce_nothing():
    v = np.array([3.0, -4.0])  # weight norm of a 1-d weight: the norm of each element
    from avalon.nn.parametrizations import norm_except_dim
    np.testing.assert_allclose(_np(norm_except_dim(av.tensor(v), 2, 0)), _np(torch.norm_except_dim(torch.tensor(v), 2, 0)))
    x = np.random.default_rng(2).normal(size=(2, 3))
    np.testing.assert_allclose(_np(av.einsum("ij->ij", av.tensor(x))), x)
    with pytest.raises(RuntimeError, match="normalized_shape"):
        torch.nn.functional.layer_norm(torch.tensor(x), ())
    with pytest.raises(ValueError, match="normalized_shape"):
        nn.functional.layer_norm(av.tensor(x), ())


def test_logsumexp_of_bools_and_ints():
    b = np.array([[True, False, True], [False, False, True]])
    for v in (b, b.astype(np.int64)):
        want, got = torch.logsumexp(torch.tensor(v), 1), av.logsumexp(av.tensor(v), 1)
        assert got.dtype == av.float32 and want.dtype == torch.float32
        np.testing.assert_allclose(_np(got), _np(want), rtol=1e-6)


# -- checkpoints: torch.save's round trip -------------------------------------------------------------

@pytest.mark.parametrize("kind", ["list", "tuple", "tensor", "int_keys", "str", "none"])
def test_save_load_round_trips_what_torch_round_trips(tmp_path, kind):
    t = np.random.default_rng(3).normal(size=(2, 3)).astype(np.float32)
    obj = {"list": [torch.tensor(t), torch.tensor(t * 2)], "tuple": (torch.tensor(t), 3),
           "tensor": torch.tensor(t), "int_keys": {0: torch.tensor(t), 1: torch.tensor(t + 1)},
           "str": "hello", "none": None}[kind]
    torch.save(obj, tmp_path / "t.pt")
    want = torch.load(tmp_path / "t.pt")
    av.save(obj, tmp_path / "a.safetensors")
    got = av.load(tmp_path / "a.safetensors")
    assert type(got) is type(want) or (isinstance(want, torch.Tensor) and isinstance(got, av.Tensor))
    flat_w = want if isinstance(want, (list, tuple)) else list(want.values()) if isinstance(want, dict) else [want]
    flat_g = got if isinstance(got, (list, tuple)) else list(got.values()) if isinstance(got, dict) else [got]
    if isinstance(want, dict):
        assert list(got) == list(want)
    assert len(flat_g) == len(flat_w)
    for w, g in zip(flat_w, flat_g):
        if isinstance(w, torch.Tensor):
            np.testing.assert_array_equal(_np(g), _np(w))
        else:
            assert g == w


def test_save_of_a_model_is_still_its_state_dict(tmp_path):
    m = nn.Linear(3, 2)
    av.save([m.weight, m.bias], tmp_path / "p.safetensors")  # a list of tensors: a list back
    assert isinstance(av.load(tmp_path / "p.safetensors"), list)
    av.save(nn.Sequential(nn.Linear(3, 2)), tmp_path / "m.safetensors")
    assert list(av.load(tmp_path / "m.safetensors")) == ["0.weight", "0.bias"]


# -- distributions ------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _torch_validates(torch_validates):
    """torch's oracle with validation on (conftest's `torch_validates`)."""


def test_categorical_checks_the_normalized_probs():
    p = np.array([[0.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    with pytest.raises(ValueError, match="Simplex"):
        torch.distributions.Categorical(torch.tensor(p))
    with pytest.raises(ValueError, match="Simplex"):
        D.Categorical(av.tensor(p))
    neg = -np.array([[0.2, 0.3, 0.5]])  # all negative weights normalize to a simplex: torch accepts them
    want = torch.distributions.Categorical(torch.tensor(neg), validate_args=True).probs
    np.testing.assert_allclose(_np(D.Categorical(av.tensor(neg), validate_args=True).probs), _np(want))


# -- special functions ---------------------------------------------------------------------------------

def test_erfinv_keeps_float64_precision_near_one():
    rng = np.random.default_rng(4)
    y = np.concatenate([1 - 10.0 ** -rng.uniform(1, 16, 200), [1 - 2.0 ** -52, -(1 - 2.0 ** -53), 0.7, -0.3]])
    np.testing.assert_allclose(_np(av.special.erfinv(av.tensor(y))), _np(torch.special.erfinv(torch.tensor(y))),
                               rtol=1e-8)
    g = av.grad(lambda x: av.special.erfinv(x).sum())(av.tensor(np.array([0.3, 0.9, -0.95, 0.999999])))
    t = torch.tensor([0.3, 0.9, -0.95, 0.999999], dtype=torch.float64, requires_grad=True)
    torch.special.erfinv(t).sum().backward()
    np.testing.assert_allclose(_np(g), _np(t.grad), rtol=1e-7)


def test_sinc_of_float16_computes_in_float32():
    x = np.array([30000.0, -60000.0, 100.0, 3.3, 0.1, 1e-4, 20000.5, 0.0], dtype=np.float16)
    want, got = torch.special.sinc(torch.tensor(x)), av.special.sinc(av.tensor(x))
    assert got.dtype == av.float16
    np.testing.assert_array_equal(_np(got), _np(want))


# -- fft frequencies ------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", ["fftfreq", "rfftfreq"])
def test_fftfreq_edges(fn):
    for n, d in [(0, 1.0), (3, 0.0), (4, 0.0), (5, 0.1), (6, 2.0)]:
        want, got = getattr(torch.fft, fn)(n, d), getattr(av.fft, fn)(n, d)
        assert got.shape == tuple(want.shape) and got.dtype == av.float32
        np.testing.assert_allclose(_np(got), _np(want), rtol=1e-6)
    with pytest.raises(RuntimeError, match="floating point"):
        getattr(torch.fft, fn)(6, 0.5, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="floating point"):
        getattr(av.fft, fn)(6, 0.5, dtype=av.int64)


# -- data ------------------------------------------------------------------------------------------------

def test_default_convert_keeps_0d_arrays_0d():
    for v in (np.float32(1.5), np.array(2.0), np.int64(3)):
        want, got = torch.utils.data.default_convert(v), data.default_convert(v)
        assert got.shape == tuple(want.shape) == ()
    loader = list(data.DataLoader([np.float32(i) for i in range(3)], batch_size=None))
    assert [b.shape for b in loader] == [()] * 3
    batch = data.default_collate([np.array(1.0), np.array(2.0)])
    assert batch.shape == tuple(torch.utils.data.default_collate([np.array(1.0), np.array(2.0)]).shape) == (2,)


@pytest.mark.parametrize("name, method", [("Normal", "log_prob"), ("Normal", "cdf"), ("Laplace", "cdf"),
                                          ("Cauchy", "cdf")])
def test_real_support_refuses_nan_values(name, method):
    loc, scale = np.array([0.3, -1.0]), np.array([1.5, 0.7])
    value = np.array([np.nan, 0.2])
    with pytest.raises(ValueError, match="support"):
        getattr(getattr(torch.distributions, name)(torch.tensor(loc), torch.tensor(scale)), method)(torch.tensor(value))
    with pytest.raises(ValueError, match="support"):
        getattr(getattr(D, name)(av.tensor(loc), av.tensor(scale)), method)(av.tensor(value))
    ok = np.array([0.1, 0.2])  # inside the support both compute the same
    want = getattr(getattr(torch.distributions, name)(torch.tensor(loc), torch.tensor(scale)), method)(torch.tensor(ok))
    got = getattr(getattr(D, name)(av.tensor(loc), av.tensor(scale)), method)(av.tensor(ok))
    np.testing.assert_allclose(_np(got), _np(want), rtol=1e-12)


@pytest.mark.parametrize("value", [np.array([3.0, 0.5]), np.array([np.nan, 0.5]), np.array([-2.0, 0.5])])
def test_uniform_cdf_checks_its_support(value):
    low, high = np.array([0.0, 0.0]), np.array([1.0, 2.0])
    with pytest.raises(ValueError, match="support"):
        torch.distributions.Uniform(torch.tensor(low), torch.tensor(high)).cdf(torch.tensor(value))
    with pytest.raises(ValueError, match="support"):
        D.Uniform(av.tensor(low), av.tensor(high)).cdf(av.tensor(value))
    np.testing.assert_allclose(_np(D.Uniform(av.tensor(low), av.tensor(high), validate_args=False).cdf(av.tensor(value))),
                               _np(torch.distributions.Uniform(torch.tensor(low), torch.tensor(high),
                                                               validate_args=False).cdf(torch.tensor(value))))


def test_independent_refuses_a_negative_reinterpreted_batch_ndims():
    v = np.random.default_rng(6).normal(size=(4, 2, 3))
    t = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(2, 3), torch.ones(2, 3)), -1)
    # torch slices with -1: its log_prob's shape is not sample shape + batch shape, a sum that means nothing
    assert tuple(t.log_prob(torch.tensor(v, dtype=torch.float32)).shape) != (4,) + tuple(t.batch_shape)
    with pytest.raises(ValueError, match="reinterpreted_batch_ndims"):
        D.Independent(D.Normal(av.zeros(2, 3), av.ones(2, 3)), -1)

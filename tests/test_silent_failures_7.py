"""Round 7 of the silent-failure hunt: the dtype and argument edges of Tensor methods and top-level
functions (reductions with dtype=, integer overflow, NaN and ties, rounding, division modes, bitwise
ops and shifts, indexing and scatters, creation functions, shape functions), swept against torch on
seeded random inputs. What did not agree, fixed here: trunc/round/floor/div(rounding_mode='trunc')
lost the sign of a zero result (trunc(-0.3) is -0.0); a bool tensor shifted by an int raised (torch:
i64); histc/histogram of data with inf or nan, or a reversed range, gave zeros (torch raises);
scatter_reduce refused torch's 'max'/'min' spellings; narrow refused a 0-d tensor start and took a
negative length for an out-of-range one; av.tensor of a list of numpy scalars ignored their dtypes
([np.float64(1), 2.0] was f32, [np.int8(1)] i64); arange(np.int32(5)) counted in f32; randint and
randperm wrapped values past an integer dtype silently; Tensor.flip(0, 2) and broadcast_to's -1
raised. Exception types now match torch's where torch raises NotImplementedError for a dtype
(bitwise ops and shifts of floats, histc of integers) or RuntimeError for an index out of range
(gather, scatter, index_add, index_select, narrow). torch is the oracle."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import torch_raises

import avalon as av

RNG = np.random.default_rng(7)
F32 = RNG.standard_normal((3, 5)).astype(np.float32)
F32[1, 2] = -0.0
I8 = np.array([-128, 127, -1, 0, 5, -7, 100, -100], dtype=np.int8)
BOOL = np.array([True, False, True])
TIES = np.array([[1, 3, 3, 0, 3], [2, 2, 2, 2, 2]], dtype=np.float32)
INF = np.array([1.0, 2.0, np.inf], dtype=np.float32)
NAN = np.array([1.0, np.nan, 3.0], dtype=np.float32)
GDUP = np.array([[0, 0, 1, 1, 0], [2, 2, 2, 0, 0]])


def _run(mod, expr: str, arrays: dict):
    env = {k: (torch.from_numpy(v.copy()) if mod is torch else av.tensor(v)) for k, v in arrays.items()}
    env.update(T=mod, np=np)
    return eval(expr, env)  # noqa: S307 - the table's own expressions


def _same(t, a) -> None:
    if isinstance(t, (tuple, list)):
        assert len(t) == len(a)
        for p, q in zip(t, a):
            _same(p, q)
        return
    if not isinstance(t, torch.Tensor):
        assert t == a
        return
    want = t.numpy()
    got = a.numpy()
    assert str(t.dtype).replace("torch.", "") == repr(a.dtype).replace("av.", "")
    assert got.shape == want.shape
    if want.dtype.kind == "f":
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, equal_nan=True)
        zero = want == 0
        np.testing.assert_array_equal(np.signbit(got[zero]), np.signbit(want[zero]))  # -0.0 kept
    else:
        np.testing.assert_array_equal(got, want)


AGREE = [
    # the sign of a zero result
    "x.trunc()", "x.round()", "x.round(decimals=1)", "x.round(decimals=-1)", "x.floor()", "x.ceil()", "x.frac()",
    "x.div(3, rounding_mode='trunc')", "x.div(-3, rounding_mode='trunc')", "T.fix(x)",
    # reductions' dtypes and integer overflow
    "i.sum()", "i.cumsum(0)", "i.prod()", "i.cumprod(0)", "i.sum(dtype=T.int8)", "i.cumsum(0, dtype=T.float32)",
    "i.mean(dtype=T.float64)", "i.abs()", "-i", "i.pow(2)", "i << 9", "i >> 8", "i // -3", "i % -3", "i.fmod(-3)",
    # bool shifts promote to i64
    "b << 2", "b >> 1", "b.bitwise_left_shift(3)", "T.bitwise_right_shift(b, 1)", "3 << b",
    "T.argsort(t, dim=1, stable=True)", "t.unique(return_inverse=True, return_counts=True)", "t.unique(dim=1)",
    "x.scatter_reduce(1, g, x[:2], 'max')", "x.scatter_reduce(1, g, x[:2], 'min', include_self=False)",
    "x.narrow(1, T.tensor(1), 2)", "x.narrow(1, T.tensor(-2), 2)", "T.narrow(x, 0, T.tensor(2), 1)",
    "x.flip(0, 1)", "x.flip((0,))", "T.broadcast_to(x, (-1, 5))", "T.broadcast_to(x[:1], (2, 4, -1))",
    "t.histc(3, 0, 3)", "T.histogram(t, 3)",
    # dtype inference of numpy scalars
    "T.tensor([np.float64(1.5), 2.0])", "T.tensor([np.int8(3), np.int8(4)])", "T.tensor([np.uint8(3), np.int8(3)])",
    "T.tensor([np.int32(3), 4.0])", "T.tensor([np.int16(3), 4])", "T.tensor([[np.float16(1)], [np.float64(2)]])",
    "T.tensor([True, np.int8(3)])", "T.tensor([1, 2.5])", "T.arange(np.int32(5))", "T.arange(np.float64(2.5))",
    "T.arange(np.int64(1), np.int64(7), np.int64(2))",
    "T.randint(0, 256, (3,), dtype=T.uint8).dtype == T.uint8", "T.randperm(128, dtype=T.int8).dtype == T.int8",
]


@pytest.mark.parametrize("expr", AGREE)
def test_values_and_dtypes_match_torch(expr):
    arrays = dict(x=F32, i=I8, b=BOOL, t=TIES, g=GDUP)
    _same(_run(torch, expr, arrays), _run(av, expr, arrays))


RAISE = [
    "n.histc(4)", "f.histc(4)", "t.histc(4, min=3, max=1)", "t.histc(4, min=0, max=float('inf'))",
    "T.histogram(f, 3)", "T.histogram(n, 3)", "T.histogram(t, 3, range=(3.0, 1.0))",
    "x.narrow(1, 2, -1)", "x.narrow(1, 3, 3)", "x.narrow(1, T.tensor(1.0), 2)", "x.narrow(1, T.tensor([1]), 2)",
    "x.scatter_reduce(1, g, x[:2], 'add')",
    "T.randint(0, 300, (3,), dtype=T.uint8)", "T.randint(-1, 5, (3,), dtype=T.uint8)", "T.randint(0, 3, (3,), dtype=T.bool)",
    "T.randint(0, 2 ** 40, (2,), dtype=T.int32)", "T.randint_like(i, 300)",
    "T.randperm(129, dtype=T.int8)", "T.randperm(257, dtype=T.uint8)", "T.randperm(3, dtype=T.bool)",
    "T.broadcast_to(x, (-1, 3, 5))",
    # torch's exception types: NotImplementedError for a dtype, RuntimeError for an index out of range
    "x & 3", "x | x", "x ^ x", "~x", "x << 2", "x >> 1", "b << b", "i << 2.5", "i.histc(4)",
    "x.gather(1, T.tensor([[5]]))", "x.scatter(1, T.tensor([[-1]]), 1.0)", "x.index_select(1, T.tensor([-1]))",
    "x.index_add(0, T.tensor([7]), x[:1])",
]


@pytest.mark.parametrize("expr", RAISE)
def test_raises_as_torch(expr):
    arrays = dict(x=F32, i=I8.astype(np.uint8), b=BOOL, t=TIES, f=INF, n=NAN, g=GDUP)
    want = torch_raises(lambda: _run(torch, expr, arrays))
    with pytest.raises(want):
        _run(av, expr, arrays)


def test_compiled_histc_still_runs():
    """The range checks read eager values only: a traced range is unknown and passes through."""
    y = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    got = av.compile(lambda t: av.histc(t, 4))(av.tensor(y))
    np.testing.assert_array_equal(got.numpy(), torch.histc(torch.from_numpy(y), 4).numpy())


def test_trunc_keeps_zero_sign_compiled():
    x = np.array([-0.3, 0.3, -0.0, -1.7, 2.5e30, np.nan], dtype=np.float32)
    got = av.compile(lambda t: (av.trunc(t), av.round(t)))(av.tensor(x))
    for g, w in zip(got, (torch.trunc(torch.from_numpy(x)), torch.round(torch.from_numpy(x)))):
        np.testing.assert_array_equal(np.signbit(g.numpy()), np.signbit(w.numpy()))
        np.testing.assert_array_equal(g.numpy(), w.numpy())

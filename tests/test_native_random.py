"""`backend="cpu"`: the `random` op as one compiled C call (`avalon.codegen.numpy.native_random`),
against the reference interpreter: uniform bit for bit, normal within a few ulps (log and cos from
libmvec); bf16/f16 stay on the numpy kernels, bit for bit."""
from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
from helpers import assert_same_training, train, vae_loss
from hypothesis import given, settings
from hypothesis import strategies as st
from test_numpy_codegen import RANDOM_SEEDS

from avalon import nn, zoo
from avalon.codegen.numpy import GeneratedExecutable, native
from avalon.ir import Builder, Graph, TensorType, interpret
from avalon.ir.fusion import outline

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                reason="backend='cpu' needs a C compiler")

SHAPES = ((), (1,), (3,), (7,), (3, 5), (128, 20), (2, 0, 3), (3, 1, 11), (1, 257), (1001,))
"""0-d, empty, and sizes that are no multiple of the vector width (the loops' scalar tails)."""


@pytest.fixture(autouse=True)
def own_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("AVALON_CACHE_DIR", str(tmp_path))


def _agree(got: np.ndarray, want: np.ndarray, distribution: str, what: str) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, what
    if distribution == "uniform" or want.dtype.itemsize < 4:
        assert np.array_equal(got, want), what
    elif want.dtype == np.float64:  # libmvec's log/cos: a few ulps from numpy's
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14, err_msg=what)
    else:  # the float64 result's ulps rarely move its rounding to float32, and then by one
        np.testing.assert_array_max_ulp(got, want, maxulp=1)


def _graph(shapes, dtypes, distributions, seed_dtype: str = "i64") -> Graph:
    g = Graph("f")
    b = Builder(g)
    seed = g.add_input(TensorType((), seed_dtype), "seed")
    g.set_outputs([b("random", seed, shape=list(s), distribution=d, dtype=t)
                   for s in shapes for t in dtypes for d in distributions])
    return g


def _check(g: Graph, seeds, fused: bool = False) -> GeneratedExecutable:
    if fused:
        for op in list(g.ops):
            outline([op], f"fused_{op.name}")
    exe = GeneratedExecutable(g, native=True)
    dists = [op.attrs["distribution"] for op in g.walk() if op.name == "random"]
    for s in seeds:
        args = [np.array(s, np.int64).astype(g.inputs[0].type.dtype.np)]  # an i32 seed wraps
        want = interpret(g, *args)
        for got in (exe(*args), exe(*args)):  # twice: the outputs' buffers are reused
            for k, (a, w) in enumerate(zip(got, want)):
                _agree(a, w, dists[k], f"seed {s}, output #{k} {w.shape} {w.dtype} {dists[k]}")
    return exe


@pytest.mark.parametrize("fused", [False, True], ids=["top", "fused"])
@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_compiled_random_matches_the_interpreter(dtype, fused):
    """Every f32/f64 random op is one compiled call (no numpy kernel, no reference fallback), for i64
    and i32 seeds: negative, past 2**32, the int64 extremes."""
    for seed_dtype in ("i64", "i32"):
        g = _graph(SHAPES, [dtype], ["uniform", "normal"], seed_dtype)
        exe = _check(g, RANDOM_SEEDS, fused)
        assert "K.random_" not in exe.source and "_ev('random'" not in exe.source
        assert [a for _, a in exe.emission.native] == ["puu"] * 2 * len(SHAPES)


def test_the_values_are_random_and_distributed():
    """Not zeros, not one value: the compiled numbers look like their distributions (and differ per seed)."""
    g = _graph([(100_003,)], ["f32", "f64"], ["uniform", "normal"])
    exe = _check(g, [0, 123456789])
    u32, n32, u64, n64 = exe(np.array(7, np.int64))
    for u in (u32, u64):
        assert 0.0 <= u.min() < 1e-3 and 1 - 1e-3 < u.max() < 1.0 and abs(u.mean() - 0.5) < 0.01
    for z in (n32, n64):
        assert abs(z.mean()) < 0.02 and abs(z.std() - 1.0) < 0.02 and z.min() < -3.5 and z.max() > 3.5
    assert not np.array_equal(u64, exe(np.array(8, np.int64))[2])


@settings(max_examples=20, deadline=None)
@given(shape=st.lists(st.integers(1, 13), max_size=3),
       seeds=st.lists(st.integers(-2**63, 2**63 - 1), min_size=1, max_size=4))
def test_any_small_shape_and_seed(shape, seeds):
    _check(_graph([tuple(shape)], ["f32", "f64"], ["uniform", "normal"]), seeds)


def test_bf16_and_f16_stay_on_the_numpy_kernels():
    g = _graph([(3, 5), (7,)], ["bf16", "f16", "f32"], ["uniform", "normal"])
    exe = _check(g, RANDOM_SEEDS[:5])
    assert exe.source.count("K.random_") == 8 and len(exe.emission.native) == 4


def test_a_constant_seed_and_a_dropout_group():
    """A seed folded to a constant, and a dropout mask fused with its elementwise consumers (the
    random call before the group's compiled run, their functions numbered in order)."""
    g = Graph("f")
    b = Builder(g)
    x = g.add_input(TensorType((9, 31), "f32"), "x")
    u = b("random", b.constant(42, (), "i64"), shape=[9, 31], distribution="uniform", dtype="f32")
    keep = b("ge", u, b.constant(0.3, (9, 31), "f32"))
    y = b("where", keep, b("mul", x, b.constant(1 / 0.7, (9, 31), "f32")), b.constant(0.0, (9, 31), "f32"))
    g.set_outputs([b("add", b("exp", y), y), u])
    outline([op for op in g.ops if op.name != "constant"], "fused")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(native, "MIN_ELEMENTS", 0)
        exe = GeneratedExecutable(g, native=True)
        xs = np.random.default_rng(0).standard_normal((9, 31)).astype(np.float32)
        (got_y, got_u), (want_y, want_u) = exe(xs), interpret(g, xs)
    assert [a for _, a in exe.emission.native][0] == "puu" and len(exe.emission.native) == 2
    assert np.array_equal(got_u, want_u) and 0 < (got_y == 1.0).sum() < got_y.size  # some dropped: exp(0) + 0
    np.testing.assert_allclose(got_y, want_y, rtol=1e-6, atol=1e-6)  # libmvec exp, then a sum that cancels


def test_without_a_compiler_random_runs_the_numpy_kernels(monkeypatch, caplog):
    from avalon.codegen.numpy import backend
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setattr(backend, "_warned_native", False)
    g = _graph([(3, 5), (1001,)], ["f32", "f64"], ["uniform", "normal"])
    exe = GeneratedExecutable(g, native=True)
    with caplog.at_level(logging.WARNING, logger="avalon.numpy"):
        got = exe(np.array(5, np.int64))
    assert "compiled loops unavailable" in caplog.text
    assert not exe.emission.native and exe.source.count("K.random_") == 8
    for a, w in zip(got, interpret(g, np.array(5, np.int64))):
        assert np.array_equal(a, w)  # the numpy kernels: bit for bit


class _DropoutMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.drop, self.fc2 = nn.Linear(30, 64), nn.Dropout(0.4), nn.Linear(64, 10)

    def forward(self, x):
        return self.fc2(self.drop(nn.functional.relu(self.fc1(x))))


@pytest.mark.parametrize("which", ["dropout", "vae"])
def test_training_steps_match_the_numpy_backend(which, rng):
    """Three steps on backend='cpu' (its random ops compiled) and on backend='numpy' from the same
    weights and seeds: the same masks and noise, so the same losses and weights within float tolerance."""
    if which == "dropout":
        make = _DropoutMLP
        def loss_fn(m, x, y):
            return zoo.nll(nn.functional.log_softmax(m(x), -1), y)
        batch = [rng.standard_normal((32, 30)).astype(np.float32), rng.integers(0, 10, 32)]
    else:
        make, loss_fn, batch = zoo.VAE, vae_loss, [rng.random((128, 784)).astype(np.float32)]
    lr = 1e-3 if which == "dropout" else 1e-5  # the VAE's loss sums 128 rows
    cpu, plain = (train(make, loss_fn, batch, b, 3, lr, momentum=0.9) for b in ("cpu", "numpy"))
    exe = next(iter(cpu[0].cache.values())).executable
    assert "puu" in [a for _, a in exe.emission.native] and "K.random_" not in exe.source
    assert "K.random_" in next(iter(plain[0].cache.values())).executable.source
    assert len(set(cpu[1])) == 3  # the steps learn (and draw fresh masks)
    assert_same_training(cpu, plain)

"""av.set_default_dtype(float64), as torch's: Python floats, creation functions and new layers'
parameters follow it; an MLP built under it matches torch's float64 MLP to 1e-12, eagerly, in
gradients and compiled; the default goes back to float32 after each test."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import rel

import avalon as av
from avalon import nn
from avalon.nn import functional as F


@pytest.fixture
def float64_default():
    av.set_default_dtype(av.float64)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    av.set_default_dtype(av.float32)
    torch.set_default_dtype(prev)


def test_default_is_float32_and_only_float_dtypes_are_taken():
    assert av.get_default_dtype() is av.float32 and av.tensor(1.5).dtype is av.float32
    with pytest.raises(TypeError, match="float32 and float64"):
        av.set_default_dtype(av.int64)
    with pytest.raises(TypeError, match="float32 and float64"):
        av.set_default_dtype(av.float16)
    assert av.get_default_dtype() is av.float32


def test_values_and_creation_follow_the_default(float64_default):
    assert av.get_default_dtype() is av.float64
    av.set_default_dtype(torch.float64)  # torch's dtype objects are taken too
    made = {"tensor(1.5)": av.tensor(1.5), "tensor([1., 2.])": av.tensor([1.0, 2.0]), "zeros": av.zeros(2, 3),
            "ones": av.ones(2), "empty": av.empty(2), "arange(0.5, 3)": av.arange(0.5, 3), "linspace": av.linspace(0, 1, 5),
            "eye": av.eye(3), "rand": av.rand(2), "randn": av.randn(2), "full(1.5)": av.full((2,), 1.5),
            "int * 0.5": av.tensor([1, 2]) * 0.5, "int + 1.0": av.tensor([1, 2]) + 1.0}
    for name, t in made.items():
        assert t.dtype is av.float64, name
    # what is not a float default keeps its dtype, as in torch
    assert av.arange(3).dtype is av.int64 and av.tensor([1, 2]).dtype is av.int64
    assert av.tensor(np.ones(2, np.float32)).dtype is av.float32
    assert (av.tensor(np.ones(2, np.float32)) * 0.5).dtype is av.float32
    np.testing.assert_array_equal(av.linspace(0, 1, 5).numpy(), torch.linspace(0, 1, 5).numpy())
    np.testing.assert_array_equal(av.arange(0.5, 3, 0.7).numpy(), torch.arange(0.5, 3, 0.7).numpy())


def test_mlp_built_under_float64_matches_torch(float64_default, rng):
    av.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 3))
    for name, p in nn.named_parameters(model):
        assert p.dtype is av.float64, name
    tmodel = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.GELU(),
                                 torch.nn.Linear(16, 3))
    assert all(p.dtype == torch.float64 for p in tmodel.parameters())
    tmodel.load_state_dict({k: torch.tensor(v.numpy()) for k, v in nn.state_dict(model).items()})
    x = rng.standard_normal((7, 5))
    y = rng.integers(0, 3, 7)

    out = model(av.tensor(x))
    want = tmodel(torch.tensor(x))
    assert out.dtype is av.float64
    assert rel(out, want) < 1e-12

    def objective(m, x, y):
        return F.cross_entropy(m(x), y) + 0.5 * av.ops.sum(m(x) ** 2) / 7.0  # Python floats: the default dtype

    tloss = torch.nn.functional.cross_entropy(tmodel(torch.tensor(x)), torch.tensor(y)) + \
        0.5 * (tmodel(torch.tensor(x)) ** 2).sum() / 7.0
    tloss.backward()
    for compiled in (False, True):
        fn = av.value_and_grad(objective)
        fn = av.compile(fn, backend="cpu") if compiled else fn
        loss, grads = fn(model, av.tensor(x), av.tensor(y))
        assert loss.dtype is av.float64
        assert rel(loss, tloss) < 1e-12
        for k, p in tmodel.named_parameters():
            assert grads[k].dtype is av.float64
            assert rel(grads[k], p.grad) < 1e-12, (compiled, k)


def test_compiled_function_retraces_when_the_default_changes(float64_default):
    f = av.compile(lambda x: x + av.zeros(2), backend="numpy")
    x = av.tensor(np.ones(2, np.float32))
    assert f(x).dtype is av.float64  # f32 + a default-dtype (f64) zeros
    av.set_default_dtype(av.float32)
    assert f(x).dtype is av.float32  # not the trace made under float64

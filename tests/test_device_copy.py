"""`copy.deepcopy` of a model shares its (frozen) Device, and in-place updates compare devices by
equality, so a copied model initializes and trains like the original, eagerly and compiled."""
from __future__ import annotations

import copy

import numpy as np

import avalon as av
from avalon import nn, optim
from avalon.device import CPU, Device
from avalon.nn import functional as F
from avalon.train import make_train_step


def _data() -> tuple[av.Tensor, av.Tensor]:
    rng = np.random.default_rng(0)
    return (av.tensor(rng.standard_normal((5, 3)), dtype=av.float32),
            av.tensor(rng.standard_normal((5, 4)), dtype=av.float32))


def test_device_copies_are_itself():
    d = Device("cuda", 1)
    assert copy.copy(d) is d and copy.deepcopy(d) is d and copy.deepcopy(CPU) is CPU


def test_deepcopied_model_inits_and_trains_eagerly_and_compiled():
    x, y = _data()
    for compiled in (False, True):
        model = copy.deepcopy(nn.Linear(3, 4))
        nn.init.normal_(model.weight)  # failed: assign compared devices with `is CPU`
        before = model.weight.numpy().copy()
        opt = optim.SGD(model, lr=0.1)
        if compiled:
            av.compile(make_train_step(F.mse_loss))(model, opt, x, y)
        else:
            _, g = av.value_and_grad(lambda m, a, b: F.mse_loss(m(a), b))(model, x, y)
            opt.step(g)
        assert not np.allclose(model.weight.numpy(), before)  # the step landed in the copied tensor
        assert model.weight.device == CPU and model.bias.device == x.device


def test_assign_into_a_tensor_with_an_equal_but_distinct_device():
    """A Device made elsewhere (equal, not the CPU singleton) still takes the numpy path."""
    t = av.tensor(np.zeros(3, np.float32))
    t._device = Device("cpu")
    assert t._device is not CPU and t._device == CPU
    nn.init.constant_(t, 2.0)
    np.testing.assert_array_equal(t.numpy(), np.full(3, 2.0, np.float32))

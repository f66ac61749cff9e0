"""Adagrad, Adamax, NAdam and RAdam against torch.optim: ten steps on the same parameters and
gradients, eagerly and inside av.compile, in float64; parameter groups, schedulers between compiled
steps (no retrace), state_dict round trips."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import twin_mlps

import avalon as av
from avalon import optim

SHAPES = {"w": (4, 3), "b": (3,), "layers.0.k": (2, 2, 3)}
STEPS = 10


class Inner:
    def __init__(self, k):
        self.k = av.tensor(k, dtype=av.float64)


class Holder:
    def __init__(self, arrays):
        self.w = av.tensor(arrays["w"], dtype=av.float64)
        self.b = av.tensor(arrays["b"], dtype=av.float64)
        self.layers = [Inner(arrays["layers.0.k"])]


CASES = [
    ("Adagrad", dict()),
    ("Adagrad", dict(lr=0.1, lr_decay=0.05, weight_decay=0.1, initial_accumulator_value=0.3, eps=1e-6)),
    ("Adagrad", dict(lr=0.05, maximize=True)),
    ("Adamax", dict()),
    ("Adamax", dict(lr=0.01, betas=(0.3, 0.9), eps=1e-5, weight_decay=0.1)),
    ("NAdam", dict()),
    ("NAdam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, momentum_decay=0.01)),
    ("NAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    ("RAdam", dict()),
    ("RAdam", dict(lr=0.01, betas=(0.8, 0.9), weight_decay=0.1)),  # rho_t passes 5 within the ten steps
    ("RAdam", dict(lr=0.01, betas=(0.6, 0.8), weight_decay=0.1, decoupled_weight_decay=True)),
]
IDS = [f"{n}-{'-'.join(kw) or 'default'}" for n, kw in CASES]


def _setup(seed: int):
    rng = np.random.default_rng(seed)
    arrays = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    grads = [{k: rng.standard_normal(s) for k, s in SHAPES.items()} for _ in range(STEPS)]
    return arrays, grads


def _torch_run(name, groups_or_kw, arrays, grads, groups=None):
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in arrays.items()}
    if groups is None:
        opt = getattr(torch.optim, name)(list(tp.values()), **groups_or_kw)
    else:
        opt = getattr(torch.optim, name)([{**g, "params": [tp[k] for k in g["params"]]} for g in groups],
                                         **groups_or_kw)
    out = []
    for g in grads:
        for k, p in tp.items():
            p.grad = torch.tensor(g[k])
        opt.step()
        out.append({k: p.detach().numpy().copy() for k, p in tp.items()})
    return out


def _grads(g):
    return {k: av.tensor(v, dtype=av.float64) for k, v in g.items()}


def _train_step(model, opt, g):
    opt.step(g)
    return av.ops.sum(model.b)


def _assert_close(model, want, step):
    got = dict(av.named_parameters(model))
    for k, w in want.items():
        err = np.abs(got[k].numpy() - w).max() / np.abs(w).max()
        assert err < 1e-10, f"step {step} {k}: rel err {err:.2e}"


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_matches_torch_eager_and_compiled(name, kw):
    arrays, grads = _setup(0)
    expected = _torch_run(name, kw, arrays, grads)
    eager_model, compiled_model = Holder(arrays), Holder(arrays)
    eager = getattr(optim, name)(eager_model, **kw)
    compiled = getattr(optim, name)(compiled_model, **kw)
    step = av.compile(_train_step)
    for i, g in enumerate(grads):
        eager.step(_grads(g))
        step(compiled_model, compiled, _grads(g))
        _assert_close(eager_model, expected[i], i + 1)
        _assert_close(compiled_model, expected[i], i + 1)
    assert step.cache_info().misses == 1  # one trace serves every step (step-dependent scalars are tensors)
    assert eager.steps == compiled.steps == STEPS


@pytest.mark.parametrize("name", ["Adagrad", "Adamax", "NAdam", "RAdam"])
def test_param_groups(name):
    arrays, grads = _setup(1)
    groups = [{"params": ["w", "layers.0.k"], "lr": 0.03, "weight_decay": 0.1}, {"params": ["b"]}]
    expected = _torch_run(name, dict(lr=0.01), arrays, grads, groups)
    model = Holder(arrays)
    named = dict(av.named_parameters(model))
    opt = getattr(optim, name)([{**g, "params": [(k, named[k]) for k in g["params"]]} for g in groups], lr=0.01)
    assert opt.param_groups[0]["lr"] == 0.03 and opt.param_groups[1]["lr"] == 0.01
    step = av.compile(_train_step)
    for i, g in enumerate(grads):
        step(model, opt, _grads(g))
        _assert_close(model, expected[i], i + 1)
    assert step.cache_info().misses == 1


@pytest.mark.parametrize("name", ["Adagrad", "Adamax", "NAdam", "RAdam"])
def test_scheduler_between_compiled_steps_does_not_retrace(name):
    arrays, grads = _setup(2)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in arrays.items()}
    topt = getattr(torch.optim, name)(list(tp.values()), lr=0.05)
    tsched = torch.optim.lr_scheduler.StepLR(topt, step_size=2, gamma=0.5)
    model = Holder(arrays)
    opt = getattr(optim, name)(model, lr=0.05)
    sched = optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    step = av.compile(_train_step)
    for i, g in enumerate(grads):
        for k, p in tp.items():
            p.grad = torch.tensor(g[k])
        topt.step()
        tsched.step()
        step(model, opt, _grads(g))
        sched.step()
        assert opt.param_groups[0]["lr"] == topt.param_groups[0]["lr"]
        _assert_close(model, {k: p.detach().numpy() for k, p in tp.items()}, i + 1)
    assert step.cache_info().misses == 1


@pytest.mark.parametrize("name,kw", [c for c in CASES if c[1]], ids=[i for i, c in zip(IDS, CASES) if c[1]])
def test_state_dict_roundtrip(name, kw):
    """Four steps, save, load into a fresh optimizer of a copy of the model, six more: torch's ten."""
    arrays, grads = _setup(3)
    expected = _torch_run(name, kw, arrays, grads)
    model = Holder(arrays)
    opt = getattr(optim, name)(model, **kw)
    for g in grads[:4]:
        opt.step(_grads(g))
    saved = {k: v.numpy().copy() for k, v in opt.state_dict().items()}
    if name == "NAdam":
        assert "param_groups.0.mu_product" in saved
    if name == "Adagrad":
        assert "state.w.sum" in saved
    copy = Holder({k: p.numpy() for k, p in av.named_parameters(model)})
    fresh = getattr(optim, name)(copy, **kw)
    fresh.load_state_dict(saved)
    assert fresh.steps == 4
    for i, g in enumerate(grads[4:], 5):
        fresh.step(_grads(g))
        _assert_close(copy, expected[i - 1], i)


def test_adagrad_initial_accumulator_value_and_checks():
    arrays, _ = _setup(4)
    opt = optim.Adagrad(Holder(arrays), initial_accumulator_value=0.25)
    np.testing.assert_array_equal(opt.state["w"]["sum"].numpy(), np.full((4, 3), 0.25))
    with pytest.raises(ValueError, match="lr_decay"):
        optim.Adagrad(Holder(arrays), lr_decay=-1.0)
    with pytest.raises(ValueError, match="betas"):
        optim.NAdam(Holder(arrays), betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="momentum_decay"):
        optim.NAdam(Holder(arrays), momentum_decay=-0.1)
    assert repr(optim.RAdam(Holder(arrays), lr=0.01)).startswith("RAdam(lr=0.01, betas=(0.9, 0.999)")
    assert "lr_decay=0" in repr(optim.Adagrad(Holder(arrays)))


def test_nadam_mu_product_is_float32_as_torch():
    """torch keeps NAdam's running momentum product in a float32 scalar (the default dtype) and so
    rounds it every step; matching torch to 1e-10 needs the same rounding."""
    arrays, grads = _setup(5)
    model = Holder(arrays)
    opt = optim.NAdam(model)
    opt.step(_grads(grads[0]))
    mu = opt.hyperparameters[0]["mu_product"]
    assert mu.dtype == av.float32
    assert float(mu) == np.float32(0.9 * (1.0 - 0.5 * 0.96 ** 0.004))


def test_with_av_grad_and_compiled_training_step():
    """A whole compiled training step (forward, backward, RAdam update) follows torch's loop."""
    from avalon import nn
    from avalon.nn import functional as F

    model, tmodel, x, y = twin_mlps()
    opt = optim.RAdam(model, lr=0.05, weight_decay=0.1)
    topt = torch.optim.RAdam(tmodel.parameters(), lr=0.05, weight_decay=0.1)

    def train_step(model, opt, x, y):
        loss, grads = av.value_and_grad(lambda m, x, y: F.cross_entropy(m(x), y))(model, x, y)
        opt.step(grads)
        return loss

    step = av.compile(train_step)
    for _ in range(8):
        step(model, opt, av.tensor(x), av.tensor(y))
        topt.zero_grad()
        torch.nn.functional.cross_entropy(tmodel(torch.tensor(x)), torch.tensor(y)).backward()
        topt.step()
    for k, v in tmodel.state_dict().items():
        np.testing.assert_allclose(nn.state_dict(model)[k].numpy(), v.numpy(), rtol=1e-9, atol=1e-12, err_msg=k)

"""Rprop, ASGD, Adafactor, SparseAdam and Muon against torch.optim in float64: three steps on two
parameter groups with a scheduler halving the lr between steps, eagerly and inside av.compile
(numpy and cpu backends, one trace each); per-parameter steps (a parameter without a gradient);
state_dict round trips; torch's own optimizer state dict; SparseAdam on an nn.Embedding(sparse=True)
(torch's sparse gradients, Avalon's dense ones); torch's constructor signatures and checks."""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

import avalon as av
from avalon import nn, optim
from avalon.nn import functional as F

SHAPES = {"w": (4, 3), "b": (3,), "k": (2, 2, 3)}
SHAPES_2D = {"w": (4, 3), "b": (3, 5), "k": (5, 2)}  # Muon takes matrices only
STEPS = 3
CASES = [
    ("Rprop", dict()),
    ("Rprop", dict(lr=0.1, etas=(0.3, 1.5), step_sizes=(1e-3, 0.2), maximize=True)),
    ("ASGD", dict()),
    ("ASGD", dict(lr=0.05, lambd=0.1, alpha=0.5, t0=0.0, weight_decay=0.1, maximize=True)),  # mu < 1: averaging
    ("Adafactor", dict()),
    ("Adafactor", dict(lr=0.05, beta2_decay=-0.5, eps=(1e-3, 1e-2), d=1.5, weight_decay=0.1, maximize=True)),
    ("SparseAdam", dict()),
    ("SparseAdam", dict(lr=0.01, betas=(0.8, 0.9), eps=1e-6, maximize=True)),
    ("Muon", dict()),
    ("Muon", dict(lr=0.02, weight_decay=0.0, momentum=0.3, nesterov=False, adjust_lr_fn="match_rms_adamw",
                  ns_steps=3)),
]
IDS = [f"{n}-{'-'.join(kw) or 'default'}" for n, kw in CASES]
NAMES = ["Rprop", "ASGD", "Adafactor", "SparseAdam", "Muon"]
TOL = {"Muon": 1e-7}  # its update is bfloat16: a float32 sum order may round a value the other way


class Net:
    def __init__(self, arrays):
        for k, v in arrays.items():
            setattr(self, k, av.tensor(v, dtype=av.float64))


def _data(name, seed, plan=(None,) * STEPS):
    """Parameters and per-step gradients (`plan`: the names without a gradient in each step). Some
    rows of each gradient are zero, the rows an embedding lookup would not touch."""
    shapes = SHAPES_2D if name == "Muon" else SHAPES
    rng = np.random.default_rng(seed)
    arrays = {k: rng.standard_normal(s) for k, s in shapes.items()}
    grads = [{k: rng.standard_normal(s) * (rng.random(s[:1] + (1,) * (len(s) - 1)) < 0.6)
              for k, s in shapes.items() if k != skip} for skip in plan]
    return arrays, grads


def _groups(params, lr):
    return [{"params": [params["w"], params["k"]]}, {"params": [params["b"]], "lr": lr * 0.5}]


def _torch(name, kw, arrays, grads, sched=False, upto=None):
    """torch's parameters after each step (or its parameters and optimizer after `upto` steps)."""
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in arrays.items()}
    opt = getattr(torch.optim, name)(_groups(tp, kw.get("lr", 1e-2)), **kw)
    sch = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5) if sched else None
    out = []
    for g in grads[:upto]:
        for k, p in tp.items():
            t = torch.tensor(g[k]) if k in g else None
            p.grad = t.to_sparse(1) if name == "SparseAdam" and t is not None else t
        opt.step()
        if sch:
            sch.step()
        out.append({k: p.detach().numpy().copy() for k, p in tp.items()})
    return (tp, opt) if upto is not None else out


def _ours(name, kw, arrays):
    net = Net(arrays)
    named = dict(av.named_parameters(net))
    return net, getattr(optim, name)(_groups({k: (k, t) for k, t in named.items()}, kw.get("lr", 1e-2)), **kw)


def _step(net, opt, g):
    opt.step(g)
    return av.ops.sum(net.w)


def _g(g):
    return {k: av.tensor(v, dtype=av.float64) for k, v in g.items()}


def _close(name, net, want, where):
    for k, w in want.items():
        err = np.abs(getattr(net, k).numpy() - w).max() / np.abs(w).max()
        assert err < TOL.get(name, 1e-12), f"{where} {k}: rel err {err:.2e}"


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_matches_torch_eager_and_compiled_with_a_scheduler(name, kw):
    """Two groups, StepLR halving the lr after every step: the compiled steps read the new lr
    without tracing again (the cpu backend for the non-default cases: its code is numpy's, compiled)."""
    arrays, grads = _data(name, 0)
    want = _torch(name, kw, arrays, grads, sched=True)
    backends = ("numpy", "cpu") if kw else ("numpy",)
    runs = [(_ours(name, kw, arrays), fn) for fn in (_step, *(av.compile(_step, backend=b) for b in backends))]
    scheds = [optim.lr_scheduler.StepLR(opt, 1, gamma=0.5) for (_, opt), _ in runs]
    for i, g in enumerate(grads):
        for ((net, opt), fn), sch in zip(runs, scheds):
            fn(net, opt, _g(g))
            sch.step()
            _close(name, net, want[i], f"step {i + 1} ({getattr(fn, 'backend', 'eager')})")
    for (_, opt), fn in runs[1:]:
        assert fn.cache_info().misses == 1
        assert opt.param_groups[1]["lr"] == kw.get("lr", 1e-2) * 0.5 ** (STEPS + 1)


@pytest.mark.parametrize("name", NAMES)
def test_per_parameter_steps_as_torch(name):
    """'b' has no gradient in the first step: torch counts its steps (and creates ASGD's eta, Rprop's
    step sizes) from its first gradient on; so does this."""
    arrays, grads = _data(name, 1, plan=("b", None, None))
    want = _torch(name, {}, arrays, grads)
    net, opt = _ours(name, {}, arrays)
    for i, g in enumerate(grads):
        opt.step(_g(g))
        _close(name, net, want[i], f"step {i + 1}")
    assert int(opt.state_dict()["state.b.step"]) == 2 and opt.steps == 3


SLOTS = {"Rprop": ["state.w.prev", "state.w.step_size"], "ASGD": ["state.w.ax", "param_groups.0.eta",
         "param_groups.1.mu"], "Adafactor": ["state.w.row_var", "state.w.col_var", "state.b.variance"],
         "SparseAdam": ["state.w.exp_avg", "state.w.exp_avg_sq"], "Muon": ["state.w.momentum_buffer"]}


@pytest.mark.parametrize("name,kw", CASES[1::2], ids=IDS[1::2])
def test_state_dict_roundtrip(name, kw):
    """Two steps, save, load into a fresh optimizer of a copy of the model, one more: torch's three."""
    arrays, grads = _data(name, 2)
    want = _torch(name, kw, arrays, grads)
    net, opt = _ours(name, kw, arrays)
    for g in grads[:2]:
        opt.step(_g(g))
    saved = {k: v.numpy().copy() for k, v in opt.state_dict().items()}
    assert set(SLOTS[name]) <= set(saved)
    copy, fresh = _ours(name, kw, {k: p.numpy() for k, p in av.named_parameters(net)})
    fresh.load_state_dict(saved)
    assert fresh.steps == 2
    fresh.step(_g(grads[2]))
    _close(name, copy, want[2], "step 3")


@pytest.mark.parametrize("name,kw", CASES[1::2], ids=IDS[1::2])
def test_loads_torchs_state_dict(name, kw):
    """torch's optimizer after two steps, 'b' without a gradient in the first (so its step, and ASGD's
    eta and mu, differ from the others'), loaded with its weights: the next step, compiled, is torch's.
    The per-parameter state has torch's slot names."""
    arrays, grads = _data(name, 3, plan=("b", None, None))
    want = _torch(name, kw, arrays, grads)
    tp, topt = _torch(name, kw, arrays, grads, upto=2)
    net, opt = _ours(name, kw, {k: p.detach().numpy() for k, p in tp.items()})
    opt.load_state_dict(topt.state_dict())
    for k, p in tp.items():
        assert set(topt.state[p]) - {"step", "eta", "mu"} == set(opt.state[k]), k
    step = _step if name == "Muon" else av.compile(_step, backend="numpy")  # (Muon's one buffer: eagerly, quicker)
    step(net, opt, _g(grads[2]))
    _close(name, net, want[2], "step 3")


def test_sparse_adam_on_a_sparse_embedding_as_torch():
    """torch's nn.Embedding(sparse=True) gives SparseAdam sparse gradients of the looked-up rows;
    Avalon's gives dense ones, and SparseAdam updates the rows where they are nonzero: the same
    rows, moments and weights, in a compiled training step."""
    av.manual_seed(0)
    model = nn.Embedding(10, 4, sparse=True).double()
    tmodel = torch.nn.Embedding(10, 4, sparse=True).double()
    tmodel.load_state_dict({k: torch.tensor(v.numpy()) for k, v in nn.state_dict(model).items()})
    opt, topt = optim.SparseAdam(model.parameters(), lr=0.1), torch.optim.SparseAdam(tmodel.parameters(), lr=0.1)
    rng = np.random.default_rng(4)

    def train(m, opt, idx, y):
        loss, grads = av.value_and_grad(lambda m, idx, y: F.mse_loss(m(idx), y))(m, idx, y)
        opt.step(grads)
        return loss

    step = av.compile(train, backend="numpy")
    for _ in range(STEPS):
        idx, y = rng.integers(0, 6, (5,)), rng.standard_normal((5, 4))  # rows 6..9 never looked up
        step(model, opt, av.tensor(idx), av.tensor(y))
        topt.zero_grad()
        torch.nn.functional.mse_loss(tmodel(torch.tensor(idx)), torch.tensor(y)).backward()
        assert tmodel.weight.grad.is_sparse
        topt.step()
    tw = tmodel.weight.detach().numpy()
    np.testing.assert_allclose(model.weight.numpy(), tw, rtol=1e-12, atol=1e-14)
    tstate = topt.state[tmodel.weight]
    for slot in ("exp_avg", "exp_avg_sq"):
        np.testing.assert_allclose(opt.state["weight"][slot].numpy(), tstate[slot].numpy(), rtol=1e-12, atol=1e-15)
    assert not opt.state["weight"]["exp_avg"].numpy()[6:].any()
    assert step.cache_info().misses == 1


@pytest.mark.parametrize("name", NAMES)
def test_torchs_constructor_signature(name):
    ours = inspect.signature(getattr(optim, name)).parameters
    theirs = inspect.signature(getattr(torch.optim, name)).parameters
    assert [(p.name, p.kind, p.default) for p in ours.values()] == \
        [(p.name, p.kind, p.default) for p in theirs.values()]


def test_torchs_checks():
    arrays, _ = _data("Adam", 5)
    with pytest.raises(ValueError, match="Muon only supports 2D parameters"):
        optim.Muon(Net(arrays))  # 'b' is a vector, 'k' 3-d
    with pytest.raises(ValueError, match="Adjust learning rate function"):
        optim.Muon([("w", Net(arrays).w)], adjust_lr_fn="rms")
    with pytest.raises(ValueError, match="Invalid eta values"):
        optim.Rprop(Net(arrays), etas=(1.2, 0.5))
    with pytest.raises(ValueError, match="beta2_decay should be <= 0"):
        optim.Adafactor(Net(arrays), beta2_decay=0.5)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        optim.SparseAdam(Net(arrays), lr=0.0)
    opt = optim.Adafactor(Net(arrays))
    assert opt.param_groups[0]["eps"] == (None, 1e-3) and opt.state["k"]["row_var"].shape == (2, 2, 1)
    assert repr(optim.ASGD(Net(arrays))).startswith("ASGD(lr=0.01, lambd=0.0001, alpha=0.75")

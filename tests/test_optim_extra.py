"""optim.Adadelta and optim.LBFGS against torch.optim (float64 trajectories), and LBFGS's closure contract."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import twin_mlps

import avalon as av
from avalon import nn, optim
from avalon.nn import functional as F


def _mse(m, x, y):
    return F.mse_loss(m(x), y)


def _regression(seed: int = 3):
    """A small float64 regression (a tanh MLP: not quadratic, so the line search branches) for both."""
    model, tmodel, x, _ = twin_mlps(seed)
    y = np.random.default_rng(seed + 1).standard_normal((6, 3))
    return model, tmodel, x, y


def _params(model) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in nn.state_dict(model).items()}


def _close(model, tmodel, tol: float) -> float:
    worst = 0.0
    for k, t in tmodel.state_dict().items():
        a = nn.state_dict(model)[k].numpy()
        worst = max(worst, float(np.max(np.abs(a - t.detach().numpy()))))
    assert worst < tol, worst
    return worst


@pytest.mark.parametrize("kw", [{}, {"lr": 0.5, "rho": 0.8, "weight_decay": 0.1}, {"maximize": True, "eps": 1e-4}])
def test_adadelta_follows_torch(kw):
    model, tmodel, x, y = _regression()
    opt, topt = optim.Adadelta(model, **kw), torch.optim.Adadelta(tmodel.parameters(), **kw)
    assert opt.param_groups[0]["lr"] == topt.param_groups[0]["lr"]  # torch's default lr is 1.0
    tx, ty = torch.tensor(x), torch.tensor(y)
    for _ in range(5):
        _, grads = av.value_and_grad(_mse)(model, av.tensor(x), av.tensor(y))
        opt.step(grads)
        topt.zero_grad()
        torch.nn.functional.mse_loss(tmodel(tx), ty).backward()
        topt.step()
    _close(model, tmodel, 1e-12)
    for name, st in opt.state.items():  # torch's state, under torch's names
        tp = dict(tmodel.named_parameters())[name]
        for slot in ("square_avg", "acc_delta"):
            np.testing.assert_allclose(st[slot].numpy(), topt.state[tp][slot].numpy(), rtol=1e-10, atol=1e-14)


def test_adadelta_compiled_step_matches_eager_and_checks_rho():
    a, _, x, y = _regression()
    b = av.nn.Sequential(av.nn.Linear(5, 8), av.nn.Tanh(), av.nn.Linear(8, 3)).double()
    nn.load_state_dict(b, nn.state_dict(a))
    oa, ob = optim.Adadelta(model=a, weight_decay=0.01), optim.Adadelta(b.parameters(), weight_decay=0.01)

    def step(m, o, x, y):
        loss, g = av.value_and_grad(_mse)(m, x, y)
        o.step(g)
        return loss
    compiled = av.compile(step)
    for _ in range(3):
        step(a, oa, av.tensor(x), av.tensor(y))
        compiled(b, ob, av.tensor(x), av.tensor(y))
    for k, v in _params(a).items():
        np.testing.assert_allclose(_params(b)[k], v, rtol=1e-12, atol=1e-14)
    assert compiled.cache_info().entries == 1
    with pytest.raises(ValueError, match="rho"):
        optim.Adadelta(a, rho=1.5)


def _lbfgs_run(kw: dict, steps: int) -> tuple:
    model, tmodel, x, y = _regression()
    opt = optim.LBFGS(model, **kw)
    topt = torch.optim.LBFGS(tmodel.parameters(), **kw)
    tx, ty = torch.tensor(x), torch.tensor(y)
    evals = [0, 0]

    def closure():
        evals[0] += 1
        return av.value_and_grad(_mse)(model, av.tensor(x), av.tensor(y))

    def tclosure():
        evals[1] += 1
        topt.zero_grad()
        loss = torch.nn.functional.mse_loss(tmodel(tx), ty)
        loss.backward()
        return loss
    losses = []
    for _ in range(steps):
        got = opt.step(closure)
        want = topt.step(tclosure)
        losses.append((float(got), want.item()))
    return model, tmodel, opt, topt, evals, losses


@pytest.mark.parametrize("kw", [
    {"line_search_fn": None, "lr": 0.5, "max_iter": 4},
    {"line_search_fn": "strong_wolfe", "max_iter": 5},
    {"line_search_fn": "strong_wolfe", "history_size": 2, "max_iter": 6, "max_eval": 9},
    {"line_search_fn": None, "lr": 0.3, "history_size": 3, "max_iter": 7},
])
def test_lbfgs_follows_torchs_trajectory_in_float64(kw):
    model, tmodel, opt, topt, evals, losses = _lbfgs_run(kw, steps=4)
    assert evals[0] == evals[1]  # the same number of closure evaluations: the same branches taken
    for got, want in losses:
        assert abs(got - want) <= 1e-10 * max(1.0, abs(want))
    _close(model, tmodel, 1e-10)
    tstate = topt.state[topt._params[0]]
    assert opt.state_lbfgs["n_iter"] == tstate["n_iter"] and opt.state_lbfgs["func_evals"] == tstate["func_evals"]
    assert len(opt.state_lbfgs["old_dirs"]) == len(tstate["old_dirs"]) <= kw.get("history_size", 100)
    assert losses[-1][0] < losses[0][0]  # it did optimize


def test_lbfgs_state_dict_resumes_the_same_trajectory():
    kw = {"line_search_fn": "strong_wolfe", "max_iter": 3, "history_size": 4}
    model, tmodel, opt, topt, _, _ = _lbfgs_run(kw, steps=2)
    x, y = _regression()[2:]
    clone = av.nn.Sequential(av.nn.Linear(5, 8), av.nn.Tanh(), av.nn.Linear(8, 3)).double()
    nn.load_state_dict(clone, nn.state_dict(model))
    resumed = optim.LBFGS(clone, **kw)
    resumed.load_state_dict(opt.state_dict())
    for m, o in ((model, opt), (clone, resumed)):
        o.step(lambda m=m: av.value_and_grad(_mse)(m, av.tensor(x), av.tensor(y)))
    for k, v in _params(model).items():
        np.testing.assert_array_equal(_params(clone)[k], v)
    assert resumed.state_lbfgs["n_iter"] == opt.state_lbfgs["n_iter"]


def test_lbfgs_closure_contract_and_limits():
    model, _, x, y = _regression()
    opt = optim.LBFGS(model.parameters())
    with pytest.raises(TypeError, match=r"must return \(loss, grads\).*value_and_grad"):
        opt.step(lambda: _mse(model, av.tensor(x), av.tensor(y)))  # torch's closure returns only the loss
    with pytest.raises(TypeError, match="takes a closure"):
        opt.step(av.value_and_grad(_mse)(model, av.tensor(x), av.tensor(y))[1])  # gradients, not a closure
    with pytest.raises(ValueError, match="strong_wolfe"):
        optim.LBFGS(model, line_search_fn="backtracking")
    with pytest.raises(ValueError, match="parameter groups"):
        optim.LBFGS([{"params": list(model.named_parameters())[:2]}, {"params": list(model.named_parameters())[2:]}])

    def inside(m, o, x, y):
        o.step(lambda: av.value_and_grad(_mse)(m, x, y))
        return _mse(m, x, y)
    with pytest.raises(RuntimeError, match="runs eagerly"):
        av.compile(inside)(model, opt, av.tensor(x), av.tensor(y))
    # a compiled closure is fine: the gradient program is compiled once, the search runs eagerly
    vg = av.compile(av.value_and_grad(_mse))
    before = _mse(model, av.tensor(x), av.tensor(y)).item()
    first = opt.step(lambda: vg(model, av.tensor(x), av.tensor(y)))
    assert abs(float(first) - before) < 1e-12 and _mse(model, av.tensor(x), av.tensor(y)).item() < before

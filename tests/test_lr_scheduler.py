"""`avalon.optim.lr_scheduler` and `opt.param_groups` against torch: every scheduler's rates (and
OneCycleLR's / CyclicLR's momentum) step by step on random hyperparameters, state dicts, and
compiled training steps that take the new rates as inputs (one trace, torch's trajectory). Also
what optimizers accept as `params` (model.parameters(), named pairs, groups) and what they refuse."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import avalon as av
from avalon import nn, optim
from avalon.nn import functional as F
from avalon.optim import lr_scheduler

pytestmark = [pytest.mark.filterwarnings("ignore:Detected call of"), pytest.mark.filterwarnings("ignore:The epoch"),
              pytest.mark.filterwarnings("ignore:To get the last learning rate")]

STEPS = 30


def _pair(opt_name: str, lrs: tuple[float, float], **kw):
    """The same two-group optimizer in Avalon and in torch (tiny parameters: only rates are compared)."""
    av_groups = [{"params": [av.tensor(np.ones(2))], "lr": lrs[0]}, {"params": [av.tensor(np.ones(3))], "lr": lrs[1]}]
    t_groups = [{"params": [torch.ones(2, requires_grad=True)], "lr": lrs[0]},
                {"params": [torch.ones(3, requires_grad=True)], "lr": lrs[1]}]
    return getattr(optim, opt_name)(av_groups, **kw), getattr(torch.optim, opt_name)(t_groups, **kw)


def _draw(seed: int) -> dict:
    r = np.random.default_rng(seed)
    return dict(gamma=float(r.uniform(0.5, 0.99)), step=int(r.integers(2, 7)), eta=float(r.uniform(0, 1e-3)),
                ms=sorted(int(m) for m in r.choice(np.arange(1, STEPS), 3, replace=False)),
                f=float(r.uniform(0.1, 0.9)), f2=float(r.uniform(0.5, 1.0)), it=int(r.integers(3, 12)),
                power=float(r.uniform(0.5, 3)), tmax=int(r.integers(5, 20)), t0=int(r.integers(2, 6)),
                tmult=int(r.integers(1, 3)), max_lr=float(r.uniform(0.05, 0.5)), pct=float(r.uniform(0.2, 0.5)),
                div=float(r.uniform(5, 30)), fdiv=float(r.uniform(10, 1e4)), lam=float(r.uniform(0.9, 1.0)))


class Scale:
    """A callable object as a lambda: its attributes are part of the scheduler's state."""

    def __init__(self, rate: float):
        self.rate = rate

    def __call__(self, epoch: int) -> float:
        return self.rate ** epoch


# name -> (optimizer, kwargs, make(module, opt, hyperparameters))
SCHEDULERS = {
    "LambdaLR": ("SGD", {}, lambda M, o, h: M.LambdaLR(o, [lambda e: h["lam"] ** e, Scale(h["gamma"])])),
    "MultiplicativeLR": ("SGD", {}, lambda M, o, h: M.MultiplicativeLR(o, lambda e: h["lam"])),
    "StepLR": ("SGD", {}, lambda M, o, h: M.StepLR(o, step_size=h["step"], gamma=h["gamma"])),
    "MultiStepLR": ("SGD", {}, lambda M, o, h: M.MultiStepLR(o, milestones=h["ms"], gamma=h["gamma"])),
    "ConstantLR": ("SGD", {}, lambda M, o, h: M.ConstantLR(o, factor=h["f"], total_iters=h["it"])),
    "LinearLR": ("SGD", {}, lambda M, o, h: M.LinearLR(o, start_factor=h["f"], end_factor=h["f2"], total_iters=h["it"])),
    "ExponentialLR": ("SGD", {}, lambda M, o, h: M.ExponentialLR(o, gamma=h["gamma"])),
    "CosineAnnealingLR": ("SGD", {}, lambda M, o, h: M.CosineAnnealingLR(o, T_max=h["tmax"], eta_min=h["eta"])),
    "CosineAnnealingWarmRestarts": ("SGD", {}, lambda M, o, h: M.CosineAnnealingWarmRestarts(
        o, T_0=h["t0"], T_mult=h["tmult"], eta_min=h["eta"])),
    "PolynomialLR": ("SGD", {}, lambda M, o, h: M.PolynomialLR(o, total_iters=h["it"], power=h["power"])),
    "SequentialLR": ("SGD", {}, lambda M, o, h: M.SequentialLR(
        o, [M.LinearLR(o, start_factor=h["f"], total_iters=h["it"]), M.ExponentialLR(o, gamma=h["gamma"]),
            M.CosineAnnealingLR(o, T_max=h["tmax"])], milestones=[h["it"], h["it"] + 8])),
    "ChainedScheduler": ("SGD", {}, lambda M, o, h: M.ChainedScheduler(
        [M.ConstantLR(o, factor=h["f"], total_iters=h["it"]), M.ExponentialLR(o, gamma=h["gamma"])])),
    "OneCycleLR-SGD-cos": ("SGD", dict(momentum=0.9), lambda M, o, h: M.OneCycleLR(
        o, max_lr=[h["max_lr"], h["max_lr"] / 2], total_steps=STEPS, pct_start=h["pct"], div_factor=h["div"],
        final_div_factor=h["fdiv"])),
    "OneCycleLR-Adam-linear-3phase": ("Adam", {}, lambda M, o, h: M.OneCycleLR(
        o, max_lr=h["max_lr"], epochs=3, steps_per_epoch=10, pct_start=h["pct"], anneal_strategy="linear",
        three_phase=True, base_momentum=0.8, max_momentum=0.92)),
    "CyclicLR-triangular2": ("SGD", dict(momentum=0.9), lambda M, o, h: M.CyclicLR(
        o, base_lr=h["eta"], max_lr=h["max_lr"], step_size_up=h["step"], mode="triangular2")),
    "CyclicLR-exp_range-Adam": ("Adam", {}, lambda M, o, h: M.CyclicLR(
        o, base_lr=[h["eta"], h["eta"]], max_lr=h["max_lr"], step_size_up=h["step"], step_size_down=h["it"],
        mode="exp_range", gamma=h["lam"])),
}


def _momenta(opt) -> list:
    return [g["betas"][0] if "betas" in g else g["momentum"] for g in opt.param_groups]


def _assert_same_rates(a, t, what: str) -> None:
    np.testing.assert_allclose([g["lr"] for g in a.param_groups], [g["lr"] for g in t.param_groups],
                               rtol=1e-13, atol=0, err_msg=what)
    np.testing.assert_allclose(_momenta(a), _momenta(t), rtol=1e-13, atol=0, err_msg=what)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_rates_match_torch(name, seed):
    opt_name, kw, make = SCHEDULERS[name]
    h = _draw(seed)
    a_opt, t_opt = _pair(opt_name, (0.1, 0.03), **kw)
    a, t = make(lr_scheduler, a_opt, h), make(torch.optim.lr_scheduler, t_opt, h)
    _assert_same_rates(a_opt, t_opt, "after construction")
    for i in range(STEPS):
        a.step()
        t.step()
        _assert_same_rates(a_opt, t_opt, f"step {i + 1}")
        np.testing.assert_allclose(a.get_last_lr(), t.get_last_lr(), rtol=1e-13, atol=0)
    if hasattr(t, "base_lrs"):
        np.testing.assert_allclose(a.base_lrs, t.base_lrs, rtol=1e-13, atol=0)
    assert getattr(a, "last_epoch", None) == getattr(t, "last_epoch", None)


@pytest.mark.parametrize("name", ["StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "PolynomialLR",
                                  "LinearLR", "ConstantLR", "CosineAnnealingWarmRestarts"])
def test_step_with_an_epoch_uses_the_closed_form(name):
    opt_name, kw, make = SCHEDULERS[name]
    h = _draw(3)
    a_opt, t_opt = _pair(opt_name, (0.1, 0.03), **kw)
    a, t = make(lr_scheduler, a_opt, h), make(torch.optim.lr_scheduler, t_opt, h)
    for epoch in [3, 7, 2, 11, 25] + ([4.5, 13.25] if name == "CosineAnnealingWarmRestarts" else []):
        a.step(epoch)
        t.step(epoch)
        _assert_same_rates(a_opt, t_opt, f"epoch {epoch}")


def test_reduce_lr_on_plateau_matches_torch():
    metrics = np.random.default_rng(4).uniform(0.5, 1.0, 60).cumsum()[::-1] % 1.7  # plateaus and improvements
    for kw in [dict(patience=2, factor=0.5, cooldown=1, min_lr=[1e-3, 0.0]),
               dict(mode="max", threshold_mode="abs", threshold=0.05, patience=1, factor=0.3)]:
        a_opt, t_opt = _pair("SGD", (0.1, 0.03))
        a, t = lr_scheduler.ReduceLROnPlateau(a_opt, **kw), torch.optim.lr_scheduler.ReduceLROnPlateau(t_opt, **kw)
        for m in metrics:
            a.step(av.tensor(m))  # a loss tensor as it comes out of a step
            t.step(m)
            _assert_same_rates(a_opt, t_opt, f"metric {m}")
        assert a.get_last_lr() == t.get_last_lr() and a.num_bad_epochs == t.num_bad_epochs


@pytest.mark.parametrize("name", ["LambdaLR", "OneCycleLR-Adam-linear-3phase", "SequentialLR",
                                  "CosineAnnealingWarmRestarts", "CyclicLR-triangular2"])
def test_state_dict_round_trip(name):
    """Scheduler and optimizer state saved mid-run and loaded into fresh ones (built first, as in
    torch) continue exactly as the run that was never interrupted."""
    opt_name, kw, make = SCHEDULERS[name]
    h = _draw(5)
    a_opt, _ = _pair(opt_name, (0.1, 0.03), **kw)
    a = make(lr_scheduler, a_opt, h)
    for _ in range(9):
        a.step()
    saved_sched = a.state_dict()
    saved_opt = {k: v.numpy().copy() for k, v in a_opt.state_dict().items()}
    b_opt, _ = _pair(opt_name, (0.5, 0.5), **kw)
    b = make(lr_scheduler, b_opt, h)
    if name == "LambdaLR":
        b.lr_lambdas[1].rate = 0.0  # the callable object's state comes back; the lambda's is not saved
    b_opt.load_state_dict(saved_opt)
    b.load_state_dict(saved_sched)
    if name == "LambdaLR":
        assert b.lr_lambdas[1].rate == h["gamma"]
    _assert_same_rates(b_opt, a_opt, "after loading")
    for i in range(10):
        a.step()
        b.step()
        _assert_same_rates(b_opt, a_opt, f"step {i + 1} after loading")


# -- compiled steps read the rates the scheduler sets ------------------------------------------------

def _models():
    av.manual_seed(0)
    a = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    b = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    t = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    weights = {k: v.numpy().copy() for k, v in nn.state_dict(a).items()}
    nn.load_state_dict(b, weights)
    t.load_state_dict({k: torch.tensor(v) for k, v in weights.items()})
    return a, b, t


def _objective(m, x, y):
    return F.cross_entropy(m(x), y)


def _train_step(m, opt, x, y):
    loss, grads = av.value_and_grad(_objective)(m, x, y)
    opt.step(grads)
    return loss


def _data():
    rng = np.random.default_rng(7)
    return rng.standard_normal((6, 5)), rng.integers(0, 3, 6)


@pytest.mark.parametrize("opt_name,kw,sched", [
    ("SGD", dict(lr=0.1), lambda M, o: M.OneCycleLR(o, max_lr=0.3, total_steps=6)),  # momentum 0 -> cycled
    ("Adam", dict(lr=0.05, weight_decay=0.01), lambda M, o: M.OneCycleLR(o, max_lr=0.1, total_steps=6,
                                                                           three_phase=True)),
    ("RMSprop", dict(lr=0.01, centered=True), lambda M, o: M.StepLR(o, step_size=2, gamma=0.5)),
])
def test_compiled_step_follows_the_schedule_without_retracing(opt_name, kw, sched):
    """Eager, compiled and torch trajectories agree while a scheduler changes lr (and momentum or
    beta1) every step; the compiled step is traced once."""
    X, Y = _data()
    x, y = av.tensor(X), av.tensor(Y)
    m_eager, m_comp, tm = _models()
    o_eager, o_comp = getattr(optim, opt_name)(m_eager.parameters(), **kw), getattr(optim, opt_name)(m_comp, **kw)
    t_opt = getattr(torch.optim, opt_name)(tm.parameters(), **kw)
    s_eager, s_comp = sched(lr_scheduler, o_eager), sched(lr_scheduler, o_comp)
    t_sched = sched(torch.optim.lr_scheduler, t_opt)
    step = av.compile(_train_step)
    for i in range(5):
        le, lc = float(_train_step(m_eager, o_eager, x, y)), float(step(m_comp, o_comp, x, y))
        t_opt.zero_grad()
        lt = torch.nn.functional.cross_entropy(tm(torch.tensor(X)), torch.tensor(Y))
        lt.backward()
        t_opt.step()
        for s in (s_eager, s_comp, t_sched):
            s.step()
        np.testing.assert_allclose([le, lc], lt.item(), rtol=1e-10, err_msg=f"loss at step {i + 1}")
    for k, v in tm.state_dict().items():
        np.testing.assert_allclose(nn.state_dict(m_eager)[k].numpy(), v.numpy(), rtol=1e-9, atol=1e-12, err_msg=k)
        np.testing.assert_allclose(nn.state_dict(m_comp)[k].numpy(), v.numpy(), rtol=1e-9, atol=1e-12, err_msg=k)
    info = step.cache_info()
    assert (info.misses, info.entries) == (1, 1), info


def test_user_writes_to_param_groups_reach_the_compiled_step():
    """`for g in opt.param_groups: g['lr'] = x` as torch code does it, without retracing; a write that
    changes the update's ops (weight decay from 0) traces once more, and matches torch too."""
    X, Y = _data()
    x, y = av.tensor(X), av.tensor(Y)
    _, m, tm = _models()
    opt = optim.SGD([{"params": m[0].named_parameters(prefix="0")}, {"params": m[2].named_parameters(prefix="2")}],
                    lr=0.1, momentum=0.5)
    t_opt = torch.optim.SGD([{"params": tm[0].parameters()}, {"params": tm[2].parameters()}], lr=0.1, momentum=0.5)
    step = av.compile(_train_step)
    schedule = [(0.2, 0.05, 0.0), (0.01, 0.3, 0.0), (0.1, 0.1, 0.01), (0.05, 0.2, 0.01)]
    for lr0, lr1, wd in schedule:
        for o in (opt, t_opt):
            o.param_groups[0]["lr"], o.param_groups[1]["lr"] = lr0, lr1
            for g in o.param_groups:
                g["weight_decay"] = wd
        loss = float(step(m, opt, x, y))
        t_opt.zero_grad()
        lt = torch.nn.functional.cross_entropy(tm(torch.tensor(X)), torch.tensor(Y))
        lt.backward()
        t_opt.step()
        np.testing.assert_allclose(loss, lt.item(), rtol=1e-10)
    for k, v in tm.state_dict().items():
        np.testing.assert_allclose(nn.state_dict(m)[k].numpy(), v.numpy(), rtol=1e-9, atol=1e-12, err_msg=k)
    assert step.cache_info().misses == 2  # once, and once more when weight decay became nonzero


def test_scheduler_inside_a_traced_step_is_an_error():
    _, m, _ = _models()
    opt = optim.SGD(m, lr=0.1)
    sched = lr_scheduler.StepLR(opt, step_size=1)
    X, Y = _data()

    def step(m, opt, x, y):
        loss = _train_step(m, opt, x, y)
        sched.step()
        return loss

    with pytest.raises(RuntimeError, match="between calls"):
        av.compile(step)(m, opt, av.tensor(X), av.tensor(Y))


def test_warns_when_the_scheduler_steps_before_the_optimizer():
    opt, _ = _pair("SGD", (0.1, 0.1))
    sched = lr_scheduler.ExponentialLR(opt, gamma=0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sched.step()
    assert any("before `optimizer.step()`" in str(w.message) for w in caught)


# -- what optimizers take as params ------------------------------------------------------------------

def test_params_forms_match_torch_including_groups():
    """model.parameters(), named pairs and groups with per-group options (no weight decay for
    biases) give torch's trajectory; a subset optimizer ignores the other gradients."""
    X, Y = _data()
    x, y = av.tensor(X), av.tensor(Y)
    grad = av.grad(_objective)
    _, m, tm = _models()
    decay = [(n, p) for n, p in m.named_parameters() if n.endswith("weight")]
    no_decay = [(n, p) for n, p in m.named_parameters() if n.endswith("bias")]
    opt = optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "lr": 0.02}], lr=0.05)
    t_opt = torch.optim.AdamW([{"params": [p for n, p in tm.named_parameters() if n.endswith("weight")]},
                               {"params": [p for n, p in tm.named_parameters() if n.endswith("bias")],
                                "weight_decay": 0.0, "lr": 0.02}], lr=0.05)
    for _ in range(3):
        opt.step(grad(m, x, y))
        t_opt.zero_grad()
        torch.nn.functional.cross_entropy(tm(torch.tensor(X)), torch.tensor(Y)).backward()
        t_opt.step()
    for k, v in tm.state_dict().items():
        np.testing.assert_allclose(nn.state_dict(m)[k].numpy(), v.numpy(), rtol=1e-9, atol=1e-12, err_msg=k)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]
    assert opt.param_groups[1]["param_names"] == ["0.bias", "2.bias"]

    head = optim.SGD(m[2].named_parameters(prefix="2"), lr=0.1)  # fine-tuning the last layer only
    before = m[0].weight.numpy().copy()
    head.step(grad(m, x, y))
    np.testing.assert_array_equal(m[0].weight.numpy(), before)

    whole = optim.SGD(m.parameters(), lr=0.1)  # the generator tells its model: names as av.grad's
    assert list(whole.params) == [n for n, _ in m.named_parameters()]
    whole.step(grad(m, x, y))


def test_params_that_cannot_be_matched_say_what_to_pass():
    X, Y = _data()
    _, m, _ = _models()
    grads = av.grad(_objective)(m, av.tensor(X), av.tensor(Y))
    bare = optim.SGD(list(m.parameters()), lr=0.1)
    before = {n: p.numpy().copy() for n, p in m.named_parameters()}
    bare.step(grads)  # av.grad's dict knows each gradient's tensor: matched by identity
    for n, p in m.named_parameters():
        np.testing.assert_allclose(p.numpy(), before[n] - 0.1 * grads[n].numpy(), rtol=1e-6, err_msg=n)
    with pytest.raises(KeyError, match=r"named_parameters\(\)"):
        bare.step(dict(grads))  # a plain dict's names cannot be matched to bare tensors
    bare.step([grads[n] for n, _ in m.named_parameters()])  # by position works
    sub = optim.SGD(m[2].parameters(), lr=0.1)  # over a submodule: the rest's gradients are ignored, as torch's
    held = {n: p.numpy().copy() for n, p in m.named_parameters()}
    sub.step(grads)
    for n, p in m.named_parameters():
        want = held[n] - 0.1 * grads[n].numpy() if n.startswith("2.") else held[n]
        np.testing.assert_allclose(p.numpy(), want, rtol=1e-6, err_msg=n)
    groups = optim.SGD([{"params": m[0].parameters()}, {"params": m[2].parameters()}], lr=0.1)  # names collide:
    held = {n: p.numpy().copy() for n, p in m.named_parameters()}  # known by position (as torch), matched by identity
    groups.step(grads)
    for n, p in m.named_parameters():
        np.testing.assert_allclose(p.numpy(), held[n] - 0.1 * grads[n].numpy(), rtol=1e-6, err_msg=n)
    with pytest.raises(TypeError, match="torch tensors"):
        optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(TypeError, match="value_and_grad"):
        bare.step()
    gen = m.parameters()
    list(gen)
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD(gen, lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        optim.SGD([{"params": [m[0].weight]}, {"params": [m[0].weight]}], lr=0.1)
    bare.zero_grad()  # torch loops call it; nothing to clear


def test_optimizer_state_dict_carries_the_hyperparameters():
    """A scheduler's momentum survives a save and load (buffers created for it), and a state dict
    of an earlier Avalon (no param_groups keys) still loads."""
    a_opt, _ = _pair("SGD", (0.1, 0.03))  # momentum 0: no buffers yet
    lr_scheduler.OneCycleLR(a_opt, max_lr=0.2, total_steps=10)
    saved = {k: v.numpy().copy() for k, v in a_opt.state_dict().items()}
    assert saved["param_groups.1.momentum"] == 0.95 and "state.0.momentum_buffer" in saved
    b_opt, _ = _pair("SGD", (0.5, 0.5))
    b_opt.load_state_dict(saved)
    assert [g["momentum"] for g in b_opt.param_groups] == [0.95, 0.95]
    assert [g["lr"] for g in b_opt.param_groups] == [g["lr"] for g in a_opt.param_groups]
    old = {k: v for k, v in saved.items() if not k.startswith("param_groups.")}
    b_opt.load_state_dict(old)
    with pytest.raises(KeyError, match="unexpected"):
        b_opt.load_state_dict({**saved, "param_groups.7.lr": 1.0})

"""Per-parameter step counts, as torch's `state[p]["step"]`: a parameter counts only the steps that
give it a gradient, so one that starts later (a layer unfrozen after some steps, a head the loss
skips every other step, a group added with `add_param_group`, a group with no gradient for a step)
gets torch's bias corrections. Against torch in float64, eagerly and inside `av.compile`, whose
traces stay bounded (a split of a step class traces once more, then the cache hits); state_dict
round trips mid-run and torch's state dicts with differing per-parameter steps."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from helpers import rel

import avalon as av
from avalon import nn, optim
from avalon.nn import functional as F

SHAPES = {"a": (3, 2), "b": (2,), "h1": (2, 2), "h2": (2,)}
LR1 = 0.05  # group 1's lr (group 0 takes the optimizer's)
KW = {
    "Adam": dict(lr=0.1),
    "AdamW": dict(lr=0.1, weight_decay=0.1, amsgrad=True),
    "NAdam": dict(lr=0.1),
    "RAdam": dict(lr=0.1, betas=(0.8, 0.9)),  # rho_t passes 5 at step 4: both of torch's branches
    "Adamax": dict(lr=0.1),
    "Adagrad": dict(lr=0.1, lr_decay=0.1),
    "SGD": dict(lr=0.1, momentum=0.9, dampening=0.1),  # the control (its buffer starts at the first grad)
}
ALL = frozenset(SHAPES)
HEAD1, HEAD2 = frozenset({"a", "b", "h1"}), frozenset({"a", "b", "h2"})
PLANS = {  # what has a gradient in each step ("add": group 1 joins by add_param_group)
    "unfreeze": [ALL - {"a"}] * 2 + [ALL] * 3,
    "alternate": [HEAD1, HEAD2] * 3,
    "idle_group": [ALL, ALL, frozenset({"a", "b"}), ALL, ALL],
    "add_group": [frozenset({"a", "b"})] * 2 + ["add"] + [ALL] * 3,
}


class Net:
    def __init__(self, arrays):
        for k, v in arrays.items():
            setattr(self, k, av.tensor(v, dtype=av.float64))


def _data(plan, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    grads = [{k: rng.standard_normal(SHAPES[k]) for k in sorted(have)} for have in plan if have != "add"]
    return arrays, grads


def _torch(name, arrays, plan, grads, upto=None):
    """torch's run: the parameters after each step (and the optimizer, after `upto` steps if given)."""
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in arrays.items()}
    late = "add" in plan
    groups = [{"params": [tp["a"], tp["b"]]}] + ([] if late else [{"params": [tp["h1"], tp["h2"]], "lr": LR1}])
    opt = getattr(torch.optim, name)(groups, **KW[name])
    out, it = [], iter(grads)
    for item in plan:
        if item == "add":
            opt.add_param_group({"params": [tp["h1"], tp["h2"]], "lr": LR1})
            continue
        if upto is not None and len(out) == upto:
            return tp, opt
        g = next(it)
        for k, p in tp.items():
            p.grad = torch.tensor(g[k]) if k in g else None
        opt.step()
        out.append({k: p.detach().numpy().copy() for k, p in tp.items()})
    return out


def _ours(name, arrays, plan, late):
    net = Net(arrays)
    groups = [{"params": [("a", net.a), ("b", net.b)]}]
    if not late:
        groups.append({"params": [("h1", net.h1), ("h2", net.h2)], "lr": LR1})
    return net, getattr(optim, name)(groups, **KW[name])


def _step(net, opt, g):
    opt.step(g)
    return av.ops.sum(net.b)


def _tensors(g):
    return {k: av.tensor(v, dtype=av.float64) for k, v in g.items()}


def _close(net, want, what):
    for k, w in want.items():
        r = rel(getattr(net, k), w)
        assert r < 1e-12, f"{what}: {k} rel {r:.2e}"


@pytest.mark.parametrize("plan", list(PLANS))
@pytest.mark.parametrize("name", list(KW))
def test_steps_per_parameter_as_torch_eagerly_and_compiled(name, plan):
    arrays, grads = _data(PLANS[plan])
    want = _torch(name, arrays, PLANS[plan], grads)
    for mode in ("eager", "compiled"):
        net, opt = _ours(name, arrays, PLANS[plan], "add" in PLANS[plan])
        step = av.compile(_step, backend="numpy") if mode == "compiled" else _step
        it = iter(grads)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing baked in, no constant captured
            for item in PLANS[plan]:
                if item == "add":
                    opt.add_param_group({"params": [("h1", net.h1), ("h2", net.h2)], "lr": LR1})
                    continue
                step(net, opt, _tensors(next(it)))
                k = opt.steps
                _close(net, want[k - 1], f"{mode} step {k}")
        assert opt.steps == len(want)
        if mode == "compiled":
            info = step.cache_info()
            assert info.misses <= 5, info  # a trace per split and per set of gradients, not per call
            assert all(e.guards is None for e in step.cache.values())  # no value read, nothing guarded


def test_compiled_step_stops_tracing_once_the_classes_are_settled():
    """Alternating heads: the classes split in the first two steps (traces 1, 2), each head's step
    traces once with the settled classes (3, 4), and every later call hits."""
    arrays, grads = _data([HEAD1, HEAD2] * 6)
    net, opt = _ours("Adam", arrays, [], False)
    step = av.compile(_step, backend="numpy")
    for g in grads[:6]:
        step(net, opt, _tensors(g))
    misses = step.cache_info().misses
    for g in grads[6:]:
        step(net, opt, _tensors(g))
    assert step.cache_info().misses == misses
    assert (misses, step.cache_info().hits) == (4, 8)
    want = _torch("Adam", arrays, [HEAD1, HEAD2] * 6, grads)
    _close(net, want[-1], "step 12")
    sd = opt.state_dict()
    assert int(sd["step"]) == 12 and int(sd["state.h1.step"]) == 6 and int(sd["state.h2.step"]) == 6
    assert "state.a.step" not in sd  # a and b take every step: the optimizer's count


def test_every_parameter_with_a_gradient_keeps_one_count():
    """The common case adds nothing: no step class, no state key, one count."""
    arrays, grads = _data([ALL] * 3)
    net, opt = _ours("NAdam", arrays, [], False)
    for g in grads:
        opt.step(_tensors(g))
    assert opt._step_classes == ()
    assert not any(k.endswith((".step", ".mu_product")) for k in opt.state_dict() if k.startswith("state."))


@pytest.mark.parametrize("name", ["Adam", "NAdam", "RAdam", "Adagrad", "SGD"])
@pytest.mark.parametrize("plan", ["unfreeze", "alternate", "add_group"])
def test_state_dict_round_trip_mid_run(name, plan):
    """Saved after the classes split, loaded into a fresh optimizer: it goes on as torch does."""
    arrays, grads = _data(PLANS[plan])
    want = _torch(name, arrays, PLANS[plan], grads)
    net, opt = _ours(name, arrays, PLANS[plan], "add" in PLANS[plan])
    it, done = iter(grads), 0
    fresh = None
    for item in PLANS[plan]:
        target, o = (fresh if fresh is not None else (net, opt))
        if item == "add":
            o.add_param_group({"params": [("h1", target.h1), ("h2", target.h2)], "lr": LR1})
            continue
        o.step(_tensors(next(it)))
        done += 1
        _close(target, want[done - 1], f"step {done}")
        if done == 3 and fresh is None:
            saved = {k: v.numpy().copy() for k, v in o.state_dict().items()}
            copy = Net({k: getattr(target, k).numpy() for k in SHAPES})
            o2 = getattr(optim, name)([{"params": [("a", copy.a), ("b", copy.b)]},
                                       {"params": [("h1", copy.h1), ("h2", copy.h2)], "lr": LR1}], **KW[name])
            o2.load_state_dict(saved)
            assert o2.steps == 3
            assert {k: float(v) for k, v in o2.state_dict().items() if k.endswith("step")} == \
                {k: float(v) for k, v in saved.items() if k.endswith("step")}
            fresh = (copy, o2)
    assert done == len(want)


@pytest.mark.parametrize("name", ["Adam", "AdamW", "NAdam", "RAdam", "Adamax", "Adagrad", "SGD"])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_torch_state_dict_with_differing_steps_continues_as_torch(name, compiled):
    """torch's optimizer after a frozen layer's first step (steps 1 and 3, NAdam's mu_products
    differing too): loaded with its weights, the next steps match torch's."""
    plan = [ALL - {"a"}] * 2 + [ALL] * 4
    arrays, grads = _data(plan)
    want = _torch(name, arrays, plan, grads)
    tp, topt = _torch(name, arrays, plan, grads, upto=3)
    steps = {int(s["step"]) for s in topt.state_dict()["state"].values() if "step" in s}
    assert name == "SGD" or steps == {1, 3}
    net = Net({k: p.detach().numpy() for k, p in tp.items()})
    opt = getattr(optim, name)([{"params": [("a", net.a), ("b", net.b)]},
                                {"params": [("h1", net.h1), ("h2", net.h2)], "lr": LR1}], **KW[name])
    opt.load_state_dict(topt.state_dict())
    assert opt.steps == (1 if name == "SGD" else 3)  # SGD keeps no count: "has stepped"
    step = av.compile(_step, backend="numpy") if compiled else _step
    for k in range(3, len(plan)):
        step(net, opt, _tensors(grads[k]))
        _close(net, want[k], f"step {k + 1}")
    if compiled:
        assert step.cache_info().misses == 1


def test_torch_state_dict_of_a_parameter_that_never_stepped():
    """A parameter without state in torch's dict (no gradient yet) starts at step 0 here too."""
    plan = [ALL - {"a"}] * 2 + [ALL] * 2
    arrays, grads = _data(plan)
    want = _torch("Adam", arrays, plan, grads)
    tp, topt = _torch("Adam", arrays, plan, grads, upto=2)
    assert len(topt.state_dict()["state"]) == 3
    net = Net({k: p.detach().numpy() for k, p in tp.items()})
    opt = optim.Adam([{"params": [("a", net.a), ("b", net.b)]},
                      {"params": [("h1", net.h1), ("h2", net.h2)], "lr": LR1}], **KW["Adam"])
    opt.load_state_dict(topt.state_dict())
    assert int(opt.state_dict()["state.a.step"]) == 0 and opt.steps == 2
    for k in range(2, 4):
        opt.step(_tensors(grads[k]))
        _close(net, want[k], f"step {k + 1}")


def test_two_heads_alternating_in_a_compiled_training_step_as_torch():
    """av.value_and_grad leaves the head the loss did not use out of the gradients, as torch leaves
    its .grad None; AdamW then counts each head's own steps, in a compiled step as eagerly."""
    torch.manual_seed(0)

    def build(lib):
        return lib.ModuleDict({"body": lib.Linear(3, 4), "h0": lib.Linear(4, 2), "h1": lib.Linear(4, 1)})

    theirs = build(torch.nn).double()
    ours = build(nn).to(av.float64)
    nn.load_state_dict(ours, theirs.state_dict())
    opt = optim.AdamW(ours.parameters(), lr=0.05)
    topt = torch.optim.AdamW(theirs.parameters(), lr=0.05)
    rng = np.random.default_rng(3)

    def loss_of(m, x, which):
        z = F.relu(m["body"](x))
        return (m[f"h{which}"](z) ** 2).mean()

    def train(m, opt, x, which):
        loss, grads = av.value_and_grad(loss_of)(m, x, which)
        opt.step(grads)
        return loss

    step = av.compile(train, backend="numpy")
    for it in range(8):
        x = rng.standard_normal((5, 3))
        which = it % 2
        topt.zero_grad(set_to_none=True)
        tz = torch.relu(theirs["body"](torch.tensor(x)))
        (theirs[f"h{which}"](tz) ** 2).mean().backward()
        topt.step()
        step(ours, opt, av.tensor(x), which)
    for k, p in theirs.named_parameters():
        assert rel(dict(nn.named_parameters(ours))[k], p.detach().numpy()) < 1e-12, k
    assert step.cache_info().misses <= 4


def test_two_steps_in_one_compiled_call_the_second_splitting():
    """A GAN-like function stepping twice per call: the class split in the second step starts from
    the count the first step wrote in the same graph (a state update, not the stale storage)."""
    plan = [ALL, ALL - {"a"}] * 3
    arrays, grads = _data(plan)
    want = _torch("NAdam", arrays, plan, grads)
    net, opt = _ours("NAdam", arrays, plan, False)

    def two(net, opt, g1, g2):
        opt.step(g1)
        opt.step(g2)
        return av.ops.sum(net.b)

    step = av.compile(two, backend="numpy")
    for k in range(0, len(plan), 2):
        step(net, opt, _tensors(grads[k]), _tensors(grads[k + 1]))
        _close(net, want[k + 1], f"step {k + 2}")
    assert step.cache_info().misses == 2
    assert int(opt.state_dict()["state.a.step"]) == 3 and opt.steps == 6

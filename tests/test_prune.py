"""`avalon.nn.utils.prune` against torch.nn.utils.prune in float64: masks (L1, Ln structured,
global, custom, iterative), torch's state-dict layout both ways, outputs and gradients w.r.t.
`weight_orig`, SGD/Adam training eagerly and compiled, remove(), is_pruned, random methods' counts
and structure, and torch's errors for bad amounts."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.utils.prune as TP
from helpers import T, rel

import avalon as av
from avalon import nn, optim
from avalon.nn.utils import prune as P

TOL = 1e-10


def make(lib, seed=0):
    """A small conv + linear net (conv weight 4-d for structured pruning along several dims)."""
    class Net(lib.Module):
        def __init__(self):
            super().__init__()
            self.conv = lib.Conv2d(2, 4, 3)
            self.fc = lib.Linear(4 * 3 * 3, 3)

        def forward(self, x):
            return self.fc(self.conv(x).tanh().flatten(1))
    return Net()


def pair(seed=0):
    torch.manual_seed(seed)
    theirs = make(torch.nn).double()
    ours = make(nn).double()
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def same_state(ours, theirs):
    sd = theirs.state_dict()
    assert list(ours.state_dict()) == list(sd)
    for k, v in ours.state_dict().items():
        assert rel(v, sd[k]) < TOL or np.abs(v.numpy() - sd[k].numpy()).max() == 0, k


def both(ours, theirs, fn):
    """Apply the same pruning calls (fn(prune_module, model)) to both."""
    fn(P, ours)
    fn(TP, theirs)


PRUNINGS = {
    "l1_int": lambda p, m: p.l1_unstructured(m.fc, "weight", amount=7),
    "l1_float": lambda p, m: p.l1_unstructured(m.conv, "weight", amount=0.37),
    "ln2_dim0": lambda p, m: p.ln_structured(m.conv, "weight", amount=2, n=2, dim=0),
    "ln1_dim1": lambda p, m: p.ln_structured(m.conv, "weight", amount=0.5, n=1, dim=1),
    "ln2_dim1_fc": lambda p, m: p.ln_structured(m.fc, "weight", amount=0.3, n=2, dim=1),
    "global": lambda p, m: p.global_unstructured([(m.conv, "weight"), (m.fc, "weight"), (m.fc, "bias")],
                                                 pruning_method=p.L1Unstructured, amount=0.4),
    "custom": lambda p, m: p.custom_from_mask(m.fc, "bias", mask=(T if p is TP else av.tensor)(
        np.array([1.0, 0.0, 1.0]))),
    "iterative": lambda p, m: (p.l1_unstructured(m.conv, "weight", amount=10),
                               p.l1_unstructured(m.conv, "weight", amount=0.2),
                               p.ln_structured(m.conv, "weight", amount=1, n=1, dim=0),
                               p.l1_unstructured(m.fc, "bias", amount=1)),
    "global_after": lambda p, m: (p.l1_unstructured(m.fc, "weight", amount=5),
                                  p.global_unstructured([(m.conv, "weight"), (m.fc, "weight")],
                                                        pruning_method=p.L1Unstructured, amount=20)),
}


def check_grads(ours, theirs, x):
    out_t = theirs(T(x))
    r = np.random.default_rng(1).standard_normal(tuple(out_t.shape))
    theirs.zero_grad()
    (out_t.tanh() * T(r)).sum().backward()
    lo, grads = av.value_and_grad(lambda m, x, r: (m(x).tanh() * r).sum())(ours, av.tensor(x), av.tensor(r))
    tg = {n: p.grad for n, p in theirs.named_parameters()}
    assert list(grads) == list(tg)
    for n, g in tg.items():
        assert rel(grads[n], g) < TOL, n
    assert rel(ours(av.tensor(x)), out_t) < TOL


@pytest.mark.parametrize("case", list(PRUNINGS))
def test_masks_state_outputs_and_grads_match_torch(case):
    ours, theirs = pair()
    both(ours, theirs, PRUNINGS[case])
    same_state(ours, theirs)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    for name in ("conv", "fc"):
        for t in ("weight", "bias"):
            assert rel(getattr(getattr(ours, name), t), getattr(getattr(theirs, name), t).detach()) < TOL
    check_grads(ours, theirs, np.random.default_rng(2).standard_normal((2, 2, 5, 5)))


def test_torch_state_dict_loads_after_same_pruning():
    ours, theirs = pair()
    both(ours, theirs, PRUNINGS["iterative"])
    with torch.no_grad():
        for p in theirs.parameters():
            p.mul_(1.3)
    ours.load_state_dict(theirs.state_dict())
    same_state(ours, theirs)
    assert "weight" not in vars(ours.conv) and "conv.weight" not in ours.state_dict()


@pytest.mark.parametrize("opt_name", ["SGD", "Adam"])
@pytest.mark.parametrize("compiled", [False, True])
def test_training_matches_torch(opt_name, compiled):
    ours, theirs = pair()
    both(ours, theirs, PRUNINGS["iterative"])
    kw = {"lr": 0.1, "momentum": 0.9} if opt_name == "SGD" else {"lr": 0.01}
    opt_o = getattr(optim, opt_name)(ours.parameters(), **kw)
    opt_t = getattr(torch.optim, opt_name)(theirs.parameters(), **kw)
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((4, 2, 5, 5)), rng.standard_normal((4, 3))

    def step(m, opt, x, y):
        loss, grads = av.value_and_grad(lambda m, x, y: ((m(x) - y) ** 2).mean())(m, x, y)
        opt.step(grads)
        return loss

    run = av.compile(step, backend="numpy") if compiled else step
    for _ in range(3):
        lo = run(ours, opt_o, av.tensor(x), av.tensor(y))
        opt_t.zero_grad()
        lt = ((theirs(T(x)) - T(y)) ** 2).mean()
        lt.backward()
        opt_t.step()
        assert rel(lo, lt) < 1e-9
    same_state(ours, theirs)
    mask = ours.conv.weight_mask.numpy()
    assert (ours.conv.weight.numpy()[mask == 0] == 0).all() and (mask == 0).any()


def test_remove_makes_a_plain_parameter_with_pruned_values():
    ours, theirs = pair()
    both(ours, theirs, PRUNINGS["iterative"])
    orig = ours.conv.weight_orig
    assert P.is_pruned(ours) and TP.is_pruned(theirs)
    for p in (P, TP):
        m = ours if p is P else theirs
        p.remove(m.conv, "weight")
        p.remove(m.fc, "bias")
    assert type(ours.conv) is nn.Conv2d and type(ours.fc) is nn.Linear
    assert ours.conv.weight is orig  # torch keeps the Parameter object too
    same_state(ours, theirs)
    assert not P.is_pruned(ours) and not TP.is_pruned(theirs)
    with pytest.raises(ValueError, match="has to be pruned before pruning can be removed"):
        P.remove(ours.conv, "weight")


def test_random_methods_counts_and_structure():
    av.manual_seed(0)
    m = nn.Conv2d(3, 6, 3)
    P.random_unstructured(m, "weight", amount=0.3)
    n = m.weight.numel()
    assert int((m.weight_mask.numpy() == 0).sum()) == round(0.3 * n)
    P.random_unstructured(m, "weight", amount=5)  # 5 more, among the entries still kept
    assert int((m.weight_mask.numpy() == 0).sum()) == round(0.3 * n) + 5
    m2 = nn.Conv2d(3, 6, 3)
    P.random_structured(m2, "weight", amount=2, dim=0)
    mask = m2.weight_mask.numpy()
    per_channel = mask.reshape(6, -1)
    assert ((per_channel == 0).all(1) | (per_channel == 1).all(1)).all()
    assert int((per_channel == 0).all(1).sum()) == 2
    P.random_structured(m2, "weight", amount=0.5, dim=1)
    cols = m2.weight_mask.numpy().transpose(1, 0, 2, 3).reshape(3, -1)
    assert int((cols == 0).all(1).sum()) == 2
    m3 = nn.Linear(3, 2)
    P.identity(m3, "weight")
    assert (m3.weight_mask.numpy() == 1).all() and list(m3.state_dict()) == ["bias", "weight_orig", "weight_mask"]


@pytest.mark.parametrize("call", [
    lambda p, m: p.l1_unstructured(m, "weight", amount=-1),
    lambda p, m: p.l1_unstructured(m, "weight", amount=1.5),
    lambda p, m: p.l1_unstructured(m, "weight", amount=100),
    lambda p, m: p.ln_structured(m, "weight", amount=5, n=2, dim=0),
    lambda p, m: p.random_unstructured(m, "weight", amount="a"),
    lambda p, m: p.ln_structured(m, "bias", amount=1, n=2, dim=0),
])
def test_errors_match_torch(call):
    tm, om = torch.nn.Linear(4, 3), nn.Linear(4, 3)
    with pytest.raises(Exception) as te:
        call(TP, tm)
    with pytest.raises(type(te.value)) as oe:
        call(P, om)
    assert str(oe.value) == str(te.value).replace("torch.Size([3])", "(3,)")  # (shapes as tuples)
    assert not P.is_pruned(om) and type(om) is nn.Linear and list(om.state_dict()) == ["weight", "bias"]


def test_prune_method_and_deepcopy():
    import copy
    m = nn.Linear(4, 3).double()
    P.l1_unstructured(m, "weight", amount=4)
    c = copy.deepcopy(m)
    P.remove(c, "weight")
    assert P.is_pruned(m) and not P.is_pruned(c) and rel(m.weight, c.weight) < TOL
    w = av.tensor(np.random.default_rng(0).standard_normal((3, 4)))
    pruned = P.L1Unstructured(amount=0.5).prune(w)
    assert int((pruned.numpy() == 0).sum()) == 6

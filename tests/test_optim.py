"""Optimizers against torch.optim, step by step, on random parameters and gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import twin_mlps

import avalon as av
from avalon import optim
from avalon.compiler.execute import run_traced
from avalon.trace import signature, trace_call

SHAPES = {"w": (4, 3), "b": (3,), "layers.0.k": (2, 2, 3)}


class Holder:
    """A plain object holding parameters (models need no base class)."""

    def __init__(self, arrays: dict[str, np.ndarray], dtype=av.float64):
        self.w = av.tensor(arrays["w"], dtype=dtype)
        self.b = av.tensor(arrays["b"], dtype=dtype)
        self.layers = [Inner(arrays["layers.0.k"], dtype)]


class Inner:
    def __init__(self, k, dtype):
        self.k = av.tensor(k, dtype=dtype)


CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1)),
    ("Adam", dict()),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, amsgrad=True)),
    ("Adam", dict(lr=0.01, weight_decay=0.05, amsgrad=True)),
    ("AdamW", dict()),
    ("AdamW", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    ("RMSprop", dict()),
    ("RMSprop", dict(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.01, momentum=0.9)),
    ("RMSprop", dict(lr=0.01, centered=True)),
    ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.01)),
]


def _setup(seed: int):
    rng = np.random.default_rng(seed)
    arrays = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    grads = [{k: rng.standard_normal(s) for k, s in SHAPES.items()} for _ in range(6)]
    return arrays, grads


def _torch_run(name, kw, arrays, grads):
    tp = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in arrays.items()}
    opt = getattr(torch.optim, name)(list(tp.values()), **kw)
    out = []
    for g in grads:
        for k, p in tp.items():
            p.grad = torch.tensor(g[k])
        opt.step()
        out.append({k: p.detach().numpy().copy() for k, p in tp.items()})
    return out


@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}-{'-'.join(kw) or 'default'}" for n, kw in CASES])
def test_matches_torch(name, kw):
    arrays, grads = _setup(0)
    expected = _torch_run(name, kw, arrays, grads)
    model = Holder(arrays)
    opt = getattr(optim, name)(model, **kw)
    for i, g in enumerate(grads):
        opt.step({k: av.tensor(v, dtype=av.float64) for k, v in g.items()})
        got = dict(av.named_parameters(model))
        for k, want in expected[i].items():
            np.testing.assert_allclose(got[k].numpy(), want, rtol=1e-6, atol=1e-12, err_msg=f"step {i + 1} {k}")
    assert opt.steps == len(grads)


@pytest.mark.parametrize("name,kw", CASES[1::2], ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES[1::2])])
def test_traced_step_matches_eager(name, kw):
    """The same `step` under a trace records state updates; running the graph repeatedly (the
    optimizer's state fed as graph inputs each time) gives the eager trajectory."""
    arrays, grads = _setup(1)
    eager_model, traced_model = Holder(arrays), Holder(arrays)
    eager, traced = getattr(optim, name)(eager_model, **kw), getattr(optim, name)(traced_model, **kw)

    def step(model, opt, g):
        opt.step(g)
        return ops_sum(model)

    def ops_sum(model):
        return sum(av.ops.sum(p) for _, p in av.named_parameters(model))

    g0 = {k: av.tensor(v, dtype=av.float64) for k, v in grads[0].items()}
    tr = trace_call(step, (traced_model, traced, g0))
    names = [v.name for v in tr.graph.inputs]
    assert "step_count" in names and any(n.startswith("state.") for n in names), names
    for g in grads:
        eager.step({k: av.tensor(v, dtype=av.float64) for k, v in g.items()})
        gt = {k: av.tensor(v, dtype=av.float64) for k, v in g.items()}
        _, leaves = signature(step, (traced_model, traced, gt))
        run_traced(tr, tr.graph, lambda *xs: av.interpret(tr.graph, *xs), [x for _, x in leaves])
    for (k, a), (_, b) in zip(av.named_parameters(eager_model), av.named_parameters(traced_model)):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-12, err_msg=k)
    assert traced.steps == eager.steps == len(grads)


def test_float32_close_to_torch():
    arrays, grads = _setup(2)
    expected = _torch_run("Adam", dict(lr=0.01), {k: v.astype(np.float32) for k, v in arrays.items()}, grads)
    model = Holder(arrays, dtype=av.float32)
    opt = optim.Adam(model, lr=0.01)
    for g in grads:
        opt.step({k: av.tensor(v, dtype=av.float32) for k, v in g.items()})
    for k, p in av.named_parameters(model):
        assert p.dtype == av.float32
        np.testing.assert_allclose(p.numpy(), expected[-1][k], rtol=1e-5, atol=1e-6)


def test_lr_setter_and_missing_grads():
    arrays, grads = _setup(3)
    model = Holder(arrays)
    opt = optim.SGD(model, lr=0.1)
    opt.lr = 0.5
    assert opt.lr == 0.5
    before = model.b.numpy().copy()
    opt.step({"w": grads[0]["w"]})  # no gradient for b: left alone, like torch's grad=None
    np.testing.assert_array_equal(model.b.numpy(), before)
    np.testing.assert_allclose(model.w.numpy(), arrays["w"] - 0.5 * grads[0]["w"])


def test_single_tensor_model():
    p = av.tensor(np.ones(3))
    opt = optim.SGD(p, lr=0.5)
    opt.step(av.tensor(np.full(3, 2.0)))
    np.testing.assert_allclose(p.numpy(), 0.0)


def test_errors():
    arrays, _ = _setup(4)
    model = Holder(arrays)
    with pytest.raises(KeyError, match="unknown parameters"):
        optim.Adam(model).step({"nope": np.zeros(3)})
    with pytest.raises(ValueError, match="shape"):
        optim.Adam(model).step({"b": np.zeros(4)})
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD(model, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="no parameters"):
        optim.SGD(object(), lr=0.1)
    with pytest.raises(ValueError, match="learning rate"):
        optim.Adam(model, lr=-1)


def test_closed_over_optimizer_is_an_error():
    """Reading state as constants would silently freeze it; the optimizer must be an argument."""
    arrays, grads = _setup(5)
    model = Holder(arrays)
    opt = optim.Adam(model)

    def step(model, g):
        opt.step(g)
        return av.ops.sum(model.b)

    with pytest.raises(RuntimeError, match="as an argument"):
        trace_call(step, (model, {k: av.tensor(v, dtype=av.float64) for k, v in grads[0].items()}))


def test_state_dict_roundtrip():
    arrays, grads = _setup(6)
    a, b = Holder(arrays), Holder(arrays)
    oa, ob = optim.Adam(a, lr=0.01), optim.Adam(b, lr=0.01)
    oa.step(grads[0])
    ob.load_state_dict({k: v.numpy().copy() for k, v in oa.state_dict().items()})
    for k, v in av.named_parameters(a):
        dict(av.named_parameters(b))[k]._data[...] = v.numpy()
    oa.step(grads[1])
    ob.step(grads[1])
    for (_, x), (_, y) in zip(av.named_parameters(a), av.named_parameters(b)):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    assert "Adam(lr=0.01" in repr(oa)


def test_with_av_grad_on_a_model_matches_torch():
    """The optimizer fed by av.grad on an nn model follows torch's training loop."""
    from avalon import nn
    from avalon.nn import functional as F

    model, tmodel, x, y = twin_mlps()
    opt = optim.AdamW(model, lr=0.05, weight_decay=0.1)
    topt = torch.optim.AdamW(tmodel.parameters(), lr=0.05, weight_decay=0.1)
    loss_fn = av.grad(lambda m, x, y: F.cross_entropy(m(x), y))
    for _ in range(3):
        opt.step(loss_fn(model, av.tensor(x), av.tensor(y)))
        topt.zero_grad()
        torch.nn.functional.cross_entropy(tmodel(torch.tensor(x)), torch.tensor(y)).backward()
        topt.step()
    for k, v in tmodel.state_dict().items():
        np.testing.assert_allclose(nn.state_dict(model)[k].numpy(), v.numpy(), rtol=1e-6, atol=1e-12, err_msg=k)


def test_designs_spellings_still_work_beside_torchs():
    """DESIGN names the first argument `model`; torch names it `params` and puts dampening 4th,
    where DESIGN's signature lists nesterov: a bool there is an error, not dampening = 1."""
    m = av.nn.Linear(2, 2)
    for cls in (optim.SGD, optim.Adam, optim.AdamW, optim.RMSprop, optim.Adagrad):
        assert cls(model=m, lr=0.1).params.keys() == cls(m, lr=0.1).params.keys()
    assert optim.SGD(model=m, lr=0.1, momentum=0.9, nesterov=True).nesterov is True
    with pytest.raises(TypeError, match="nesterov=True by keyword"):
        optim.SGD(m, 0.1, 0.9, True)

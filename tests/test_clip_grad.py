"""`nn.utils.clip_grad_norm_` / `clip_grad_value_` on Avalon's functional gradients against torch's
on `.grad`: the total norm, the clipped values (in place: `opt.step(grads)` sees them), inside
compiled steps (no branch on the norm, one trace), and a clear error when given the parameters."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import avalon as av
from avalon import nn, optim
from avalon.nn import functional as F
from avalon.optim import lr_scheduler

SHAPES = [(4, 3), (3,), (2, 2, 5)]


def _grads(seed: int, scale: float, dtype=np.float64):
    r = np.random.default_rng(seed)
    return [(r.standard_normal(s) * scale).astype(dtype) for s in SHAPES]


def _torch_clip(arrays, fn, *args, **kw):
    params = [torch.zeros(a.shape, dtype=torch.from_numpy(a).dtype, requires_grad=True) for a in arrays]
    for p, a in zip(params, arrays):
        p.grad = torch.tensor(a)
    out = fn(params, *args, **kw)
    return out, [p.grad.numpy() for p in params]


@pytest.mark.parametrize("norm_type", [2.0, 1, math.inf, 3.0, 0.5, -math.inf])
@pytest.mark.parametrize("scale", [0.01, 10.0])  # below and above max_norm
def test_clip_grad_norm_matches_torch(norm_type, scale):
    arrays = _grads(int(scale * 7) + len(str(norm_type)), scale)
    grads = {f"p{i}": av.tensor(a) for i, a in enumerate(arrays)}
    objects = dict(grads)
    total = nn.utils.clip_grad_norm_(grads, max_norm=1.5, norm_type=norm_type)
    t_total, t_grads = _torch_clip(arrays, torch.nn.utils.clip_grad_norm_, 1.5, norm_type=norm_type)
    assert isinstance(total, av.Tensor) and total.shape == () and total.dtype == av.float64
    np.testing.assert_allclose(float(total), float(t_total), rtol=1e-12)
    for (k, g), want in zip(grads.items(), t_grads):
        assert g is objects[k]  # clipped in place, in the dict's own tensors
        np.testing.assert_allclose(g.numpy(), want, rtol=1e-12, atol=1e-15, err_msg=k)


def test_clip_grad_norm_float32_list_and_tensor():
    arrays = _grads(3, 5.0, np.float32)
    grads = [av.tensor(a) for a in arrays]
    total = nn.utils.clip_grad_norm_(grads, 2.0)
    t_total, t_grads = _torch_clip(arrays, torch.nn.utils.clip_grad_norm_, 2.0)
    assert total.dtype == av.float32
    np.testing.assert_allclose(float(total), float(t_total), rtol=1e-6)
    for g, want in zip(grads, t_grads):
        np.testing.assert_allclose(g.numpy(), want, rtol=1e-6, atol=1e-7)
    one = av.tensor(arrays[0])
    nn.utils.clip_grad_norm_(one, 0.1)
    np.testing.assert_allclose(np.linalg.norm(one.numpy()), 0.1, rtol=1e-4)
    assert float(nn.utils.clip_grad_norm_({}, 1.0)) == 0.0


def test_clip_grad_value_matches_torch():
    arrays = _grads(4, 2.0)
    grads = {f"p{i}": av.tensor(a) for i, a in enumerate(arrays)}
    assert nn.utils.clip_grad_value_(grads, 0.7) is None
    _, t_grads = _torch_clip(arrays, torch.nn.utils.clip_grad_value_, 0.7)
    for g, want in zip(grads.values(), t_grads):
        np.testing.assert_array_equal(g.numpy(), want)


def test_nonfinite_norm():
    grads = {"a": av.tensor(np.array([1.0, np.inf])), "b": av.tensor(np.ones(2))}
    with pytest.raises(RuntimeError, match="non-finite"):
        nn.utils.clip_grad_norm_(grads, 1.0, error_if_nonfinite=True)
    assert math.isinf(float(nn.utils.clip_grad_norm_(grads, 1.0)))  # scaled by the inf norm, as torch does

    def step(g):
        return nn.utils.clip_grad_norm_(g, 1.0, error_if_nonfinite=True)

    f = av.compile(step)  # checked when the compiled step runs (was refused while tracing)
    assert float(f(av.tensor(np.ones(3)))) == pytest.approx(math.sqrt(3))
    with pytest.raises(RuntimeError, match="non-finite"):
        f(av.tensor(np.array([1.0, np.nan, 2.0])))


def test_parameters_instead_of_grads_say_what_to_pass():
    model = nn.Linear(3, 2)
    for wrong in (model.parameters(), model.named_parameters(), model, list(model.named_parameters())):
        with pytest.raises(TypeError, match=r"value_and_grad\(objective\)"):
            nn.utils.clip_grad_norm_(wrong, 1.0)
    with pytest.raises(TypeError, match="value_and_grad"):
        nn.utils.clip_grad_value_(model.parameters(), 1.0)


def _objective(m, x, y):
    return F.cross_entropy(m(x), y)


def _train_step(m, opt, x, y):
    loss, grads = av.value_and_grad(_objective)(m, x, y)
    norm = nn.utils.clip_grad_norm_(grads, 0.4)
    nn.utils.clip_grad_value_(grads, 0.05)
    opt.step(grads)
    return loss, norm


def test_training_with_clipping_and_a_scheduler_matches_torch():
    """Five steps eager and compiled (one trace) with clipping by norm and by value and a cosine
    schedule, from the same weights as torch: the same losses, norms and weights."""
    av.manual_seed(1)
    m_eager = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 4)).double()
    m_comp = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 4)).double()
    tm = torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.ReLU(), torch.nn.Linear(10, 4)).double()
    weights = {k: v.numpy().copy() for k, v in nn.state_dict(m_eager).items()}
    nn.load_state_dict(m_comp, weights)
    tm.load_state_dict({k: torch.tensor(v) for k, v in weights.items()})
    rng = np.random.default_rng(2)
    X, Y = rng.standard_normal((8, 6)) * 3, rng.integers(0, 4, 8)
    x, y = av.tensor(X), av.tensor(Y)
    opts = [optim.SGD(m.parameters(), lr=0.2, momentum=0.9, nesterov=True) for m in (m_eager, m_comp)]
    scheds = [lr_scheduler.CosineAnnealingLR(o, T_max=5, eta_min=0.01) for o in opts]
    t_opt = torch.optim.SGD(tm.parameters(), lr=0.2, momentum=0.9, nesterov=True)
    t_sched = torch.optim.lr_scheduler.CosineAnnealingLR(t_opt, T_max=5, eta_min=0.01)
    step = av.compile(_train_step)
    for i in range(5):
        (le, ne), (lc, nc) = _train_step(m_eager, opts[0], x, y), step(m_comp, opts[1], x, y)
        t_opt.zero_grad()
        lt = torch.nn.functional.cross_entropy(tm(torch.tensor(X)), torch.tensor(Y))
        lt.backward()
        nt = torch.nn.utils.clip_grad_norm_(tm.parameters(), 0.4)
        torch.nn.utils.clip_grad_value_(tm.parameters(), 0.05)
        t_opt.step()
        for s in (*scheds, t_sched):
            s.step()
        np.testing.assert_allclose([float(le), float(lc)], lt.item(), rtol=1e-10, err_msg=f"loss {i + 1}")
        np.testing.assert_allclose([float(ne), float(nc)], nt.item(), rtol=1e-10, err_msg=f"norm {i + 1}")
    assert float(nt) > 0.4  # the clipping did clip
    for k, v in tm.state_dict().items():
        for m in (m_eager, m_comp):
            np.testing.assert_allclose(nn.state_dict(m)[k].numpy(), v.numpy(), rtol=1e-9, atol=1e-12, err_msg=k)
    info = step.cache_info()
    assert (info.misses, info.entries) == (1, 1), info

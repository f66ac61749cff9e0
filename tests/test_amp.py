"""Mixed precision against torch: autocast'd layers (dtypes, values within bfloat16's precision,
float32 gradients of float32 parameters) and GradScaler's skip-on-inf and scale updates, eagerly
and in compiled steps."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from helpers import rel

import avalon as av
from avalon import nn, optim
from avalon.nn import functional as F

BF16 = 1e-2  # a few bfloat16 ulps (2^-8 relative) of the largest entry


def _copy(av_model, torch_model):
    torch_model.load_state_dict({k: torch.tensor(v.numpy()) for k, v in nn.state_dict(av_model).items()})
    return torch_model


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# -- autocast ---------------------------------------------------------------------------------------

LAYERS = [
    ("Linear", lambda: (nn.Linear(16, 8), torch.nn.Linear(16, 8)), (5, 16)),
    ("Linear3d", lambda: (nn.Linear(16, 8), torch.nn.Linear(16, 8)), (2, 5, 16)),
    ("Conv2d", lambda: (nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(3, 4, 3, padding=1)), (2, 3, 6, 6)),
    ("Conv1d", lambda: (nn.Conv1d(3, 4, 3, stride=2), torch.nn.Conv1d(3, 4, 3, stride=2)), (2, 3, 9)),
    ("Conv3d", lambda: (nn.Conv3d(2, 3, 2), torch.nn.Conv3d(2, 3, 2)), (1, 2, 4, 4, 4)),
]


@pytest.mark.parametrize("name,make,shape", LAYERS, ids=[n for n, _, _ in LAYERS])
def test_autocast_layer_matches_torch(name, make, shape, rng):
    av.manual_seed(1)
    layer, tlayer = make()
    _copy(layer, tlayer)
    x = rng.standard_normal(shape).astype(np.float32)
    tx = torch.tensor(x)
    with torch.autocast("cpu"):
        want = tlayer(tx)
    with av.autocast("cpu"):
        got = layer(av.tensor(x))
    assert want.dtype == torch.bfloat16 and got.dtype == av.bfloat16
    assert rel(got, want.float()) < BF16

    proj = rng.standard_normal(tuple(want.shape)).astype(np.float32)
    (want.float() * torch.tensor(proj)).sum().backward()

    def objective(m, x, p):
        with av.autocast("cpu"):
            out = m(x)
        return av.ops.sum(out.float() * p)

    _, grads = av.value_and_grad(objective)(layer, av.tensor(x), av.tensor(proj))
    for k, p in tlayer.named_parameters():
        assert grads[k].dtype == av.float32  # the master weight's dtype
        assert rel(grads[k], p.grad) < BF16, k


def test_autocast_ops_and_promotion(rng):
    x = av.tensor(rng.standard_normal((3, 4)).astype(np.float32))
    w = av.tensor(rng.standard_normal((4, 5)).astype(np.float32))
    tx, tw = torch.tensor(x.numpy()), torch.tensor(w.numpy())
    with av.autocast("cpu"), torch.autocast("cpu"):
        pairs = [(x @ w, tx @ tw), (av.mm(x, w), torch.mm(tx, tw)),
                 (av.bmm(x[None], w[None]), torch.bmm(tx[None], tw[None])),
                 (av.einsum("ij,jk->ik", x, w), torch.einsum("ij,jk->ik", tx, tw)),
                 ((x @ w) + x[:, :1], (tx @ tw) + tx[:, :1]),        # normal promotion: bf16 + f32 is f32
                 (av.relu(x @ w), torch.relu(tx @ tw)),  # on no list: the input's dtype
                 (x.double() @ w.double(), tx.double() @ tw.double())]  # float64 is never cast
        for got, want in pairs:
            assert got.dtype == av.ir.dtype(want.dtype), (got.dtype, want.dtype)
            assert rel(got, want.float()) < BF16
        with av.autocast("cpu", enabled=False):
            assert (x @ w).dtype == av.float32
        assert av.is_autocast_enabled("cpu") and not av.is_autocast_enabled()
    assert not av.is_autocast_enabled("cpu")
    assert (x @ w).dtype == av.float32


def test_autocast_float16_decorator_and_settings(rng):
    x = av.tensor(rng.standard_normal((3, 4)).astype(np.float32))

    @av.autocast("cpu", dtype=av.float16)
    def f(x):
        return x @ x.T

    assert f(x).dtype == av.float16
    assert (x @ x.T).dtype == av.float32
    assert av.get_autocast_dtype("cpu") == av.bfloat16 and av.get_autocast_dtype("cuda") == av.float16
    assert av.amp.autocast is av.autocast
    with pytest.warns(UserWarning, match="target dtype is not supported"):
        ctx = av.autocast("cpu", dtype=av.float32)
    with ctx:
        assert (x @ x.T).dtype == av.float32
    with pytest.raises(RuntimeError, match="unsupported autocast device_type"):
        av.autocast("tpu")
    if not av.cuda.is_available():  # torch's warning, and CPU tensors are never cast by a CUDA autocast
        with pytest.warns(UserWarning, match="CUDA is not available"):
            ctx = av.autocast("cuda")
        with ctx:
            assert (x @ x.T).dtype == av.float32


def test_autocast_inside_compiled_training_step(rng):
    """The casts are graph ops: a compiled step with autocast inside gives the eager result, and
    the float32 parameters stay float32 through the update."""
    av.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    twin = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    nn.load_state_dict(twin, {k: v.numpy().copy() for k, v in nn.state_dict(model).items()})
    x, y = av.tensor(rng.standard_normal((4, 6)).astype(np.float32)), av.tensor(rng.integers(0, 3, 4))

    def objective(m, x, y):
        with av.autocast("cpu"):
            logits = m(x)
        assert logits.dtype == av.bfloat16
        return F.cross_entropy(logits.float(), y)

    def train_step(m, opt, x, y):
        loss, grads = av.value_and_grad(objective)(m, x, y)
        opt.step(grads)
        return loss

    graph = av.trace(av.value_and_grad(objective), model, x, y)
    assert any(op.name == "cast" and op.results[0].type.dtype == av.bfloat16 for op in graph.ops)
    step = av.compile(train_step)
    o1, o2 = optim.SGD(model, lr=0.1), optim.SGD(twin, lr=0.1)
    for _ in range(3):
        a, b = step(model, o1, x, y), train_step(twin, o2, x, y)
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)
    for (k, p), (_, q) in zip(nn.named_parameters(model), nn.named_parameters(twin)):
        assert p.dtype == av.float32
        np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=1e-5, atol=1e-7, err_msg=k)


# -- GradScaler -------------------------------------------------------------------------------------

W0, B0 = np.random.default_rng(5).standard_normal((3, 4)), np.random.default_rng(6).standard_normal(4)


class Params:
    def __init__(self):
        self.w = av.tensor(W0.astype(np.float32))
        self.b = av.tensor(B0.astype(np.float32))


def _grad_stream(n: int = 9):
    rng = np.random.default_rng(4)
    grads = [{"w": rng.standard_normal((3, 4)).astype(np.float32), "b": rng.standard_normal(4).astype(np.float32)}
             for _ in range(n)]
    grads[2]["w"][0, 0] = np.inf
    grads[5]["b"][1] = np.nan
    grads[6]["w"][1, 1] = -np.inf
    return grads


def _torch_scaler_run(grads, **kw):
    tw, tb = torch.tensor(W0.astype(np.float32), requires_grad=True), torch.tensor(B0.astype(np.float32),
                                                                                   requires_grad=True)
    opt = torch.optim.Adam([tw, tb], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", **kw)
    out = []
    for g in grads:
        scaler.scale(torch.tensor(1.0))  # (torch creates its scale lazily here)
        s = scaler.get_scale()
        tw.grad, tb.grad = torch.tensor(g["w"] * s), torch.tensor(g["b"] * s)
        scaler.step(opt)
        scaler.update()
        out.append((scaler.get_scale(), scaler._get_growth_tracker(), tw.detach().numpy().copy(),
                    tb.detach().numpy().copy()))
    return out


@pytest.mark.parametrize("compiled", [False, True])
def test_grad_scaler_skips_and_updates_like_torch(compiled):
    """Scaled gradients with an inf or nan at steps 3, 6 and 7: the step is skipped and the scale
    backs off; after `growth_interval` clean steps it grows, as torch's, step by step."""
    grads = _grad_stream()
    want = _torch_scaler_run(grads, init_scale=8.0, growth_interval=2)
    model = Params()
    opt = optim.Adam(model, lr=0.1)
    scaler = av.amp.GradScaler("cpu", init_scale=8.0, growth_interval=2)

    def train_step(model, opt, scaler, grads):
        scaler.step(opt, grads)
        scaler.update()
        return av.ops.sum(model.b)

    step = av.compile(train_step) if compiled else train_step
    for i, (g, (scale, tracker, tw, tb)) in enumerate(zip(grads, want)):
        s = scaler.get_scale()
        step(model, opt, scaler, {k: av.tensor(v * s) for k, v in g.items()})
        assert scaler.get_scale() == scale and scaler._get_growth_tracker() == tracker, i
        np.testing.assert_allclose(model.w.numpy(), tw, rtol=1e-6, atol=1e-6, err_msg=str(i))
        np.testing.assert_allclose(model.b.numpy(), tb, rtol=1e-6, atol=1e-6, err_msg=str(i))
    assert opt.steps == len(grads) - 3  # the skipped steps leave the step count alone, as torch's
    if compiled:
        assert step.cache_info().misses == 1


def test_grad_scaler_compiled_step_with_eager_update():
    """The found-inf flag is state: a compiled step followed by an eager update() agrees with torch."""
    grads = _grad_stream()
    want = _torch_scaler_run(grads, init_scale=4.0, growth_interval=3, backoff_factor=0.25, growth_factor=4.0)
    model = Params()
    opt = optim.Adam(model, lr=0.1)
    scaler = av.amp.GradScaler("cpu", init_scale=4.0, growth_interval=3, backoff_factor=0.25, growth_factor=4.0)
    step = av.compile(lambda model, opt, scaler, grads: scaler.step(opt, grads) or av.ops.sum(model.w))
    for g, (scale, tracker, tw, _) in zip(grads, want):
        s = scaler.get_scale()
        step(model, opt, scaler, {k: av.tensor(v * s) for k, v in g.items()})
        scaler.update()
        assert (scaler.get_scale(), scaler._get_growth_tracker()) == (scale, tracker)
        np.testing.assert_allclose(model.w.numpy(), tw, rtol=1e-6, atol=1e-6)


def test_grad_scaler_end_to_end_with_autocast(rng):
    """torch's recipe (autocast forward, scaled loss, unscale, clip, step, update) against Avalon's
    spelling with gradients as values; an inf input at step 2 overflows and is skipped by both."""
    av.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    tmodel = _copy(model, torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)))
    xs = [rng.standard_normal((4, 6)).astype(np.float32) for _ in range(4)]
    xs[1][0, 0] = np.inf
    ys = [rng.standard_normal((4, 2)).astype(np.float32) for _ in range(4)]

    topt = torch.optim.SGD(tmodel.parameters(), lr=0.05)
    tscaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1)
    opt = optim.SGD(model, lr=0.05)
    scaler = av.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1)

    def objective(m, x, y, scaler):
        with av.autocast("cpu"):
            out = m(x)
        return scaler.scale(F.mse_loss(out.float(), y))

    def train_step(m, opt, scaler, x, y):
        loss, grads = av.value_and_grad(objective)(m, x, y, scaler)
        scaler.unscale_(grads)
        nn.utils.clip_grad_norm_(grads, 1.0)
        scaler.step(opt, grads)
        scaler.update()
        return loss

    step = av.compile(train_step)
    for x, y in zip(xs, ys):
        topt.zero_grad()
        with torch.autocast("cpu"):
            out = tmodel(torch.tensor(x))
        tscaler.scale(torch.nn.functional.mse_loss(out.float(), torch.tensor(y))).backward()
        tscaler.unscale_(topt)
        torch.nn.utils.clip_grad_norm_(tmodel.parameters(), 1.0)
        tscaler.step(topt)
        tscaler.update()
        step(model, opt, scaler, av.tensor(x), av.tensor(y))
        assert scaler.get_scale() == tscaler.get_scale()
        for k, v in tmodel.state_dict().items():
            np.testing.assert_allclose(nn.state_dict(model)[k].numpy(), v.numpy(), rtol=BF16, atol=1e-4, err_msg=k)
    assert step.cache_info().misses == 1
    assert opt.steps == 3


def test_grad_scaler_scale_unscale_and_errors(rng):
    scaler = av.amp.GradScaler("cpu", init_scale=4.0)
    loss = av.tensor(np.float32(1.5))
    assert float(scaler.scale(loss)) == 6.0
    h = av.tensor(np.ones(3, np.float16))
    assert scaler.scale(h).dtype == av.float16 and scaler.scale(loss.half()).dtype == av.float32  # torch's dtypes
    a, b = scaler.scale([loss, loss])
    assert float(a) == float(b) == 6.0
    g = {"w": av.tensor(np.full(3, 8.0, np.float32)), "b": None}
    scaler.unscale_(g)
    np.testing.assert_array_equal(g["w"].numpy(), 2.0)
    with pytest.raises(RuntimeError, match="already been called"):
        scaler.unscale_(g)
    with pytest.raises(ValueError, match="FP16"):
        scaler.unscale_({"w": av.tensor(np.ones(3, np.float16))})
    with pytest.raises(AssertionError, match="No inf checks"):
        av.amp.GradScaler("cpu").update()
    with pytest.raises(ValueError, match="growth factor"):
        av.amp.GradScaler("cpu", growth_factor=1.0)
    model = Params()
    opt = optim.SGD(model, lr=0.1)
    s2 = av.amp.GradScaler("cpu")
    grads = {"w": av.tensor(np.ones((3, 4), np.float32)), "b": av.tensor(np.ones(4, np.float32))}
    s2.step(opt, grads)
    with pytest.raises(RuntimeError, match="step\\(\\) has already been called"):
        s2.step(opt, grads)


def test_grad_scaler_must_be_an_argument_when_traced():
    scaler = av.amp.GradScaler("cpu")
    with pytest.raises(RuntimeError, match="as an argument"):
        av.trace(lambda x: scaler.scale(av.ops.sum(x)), av.tensor(np.ones(3, np.float32)))


def test_grad_scaler_state_dict_and_disabled():
    scaler = av.amp.GradScaler("cpu", init_scale=32.0, growth_interval=5)
    tscaler = torch.amp.GradScaler("cpu", init_scale=32.0, growth_interval=5)
    tscaler.scale(torch.tensor(1.0))
    assert scaler.state_dict() == tscaler.state_dict()
    other = av.amp.GradScaler("cpu")
    other.load_state_dict({**scaler.state_dict(), "scale": 2.0, "_growth_tracker": 3})
    assert (other.get_scale(), other._get_growth_tracker(), other.get_growth_interval()) == (2.0, 3, 5)
    with pytest.raises(RuntimeError, match="state dict is empty"):
        other.load_state_dict({})
    off = av.amp.GradScaler("cpu", enabled=False)
    loss = av.tensor(np.float32(3.0))
    assert off.scale(loss) is loss and off.get_scale() == 1.0 and off.state_dict() == {}
    model = Params()
    off.step(optim.SGD(model, lr=1.0), {"w": av.tensor(np.ones((3, 4), np.float32))})
    np.testing.assert_allclose(model.w.numpy(), W0.astype(np.float32) - 1.0)
    off.update()
    if not av.cuda.is_available():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert not av.amp.GradScaler().is_enabled()  # device="cuda" without a GPU: torch's warning
        assert any("CUDA is not available" in str(w.message) for w in caught)


def test_compiled_function_called_inside_and_outside_autocast(rng):
    x = av.tensor(rng.standard_normal((3, 4)).astype(np.float32))
    f = av.compile(lambda x: x @ x.T)
    with av.autocast("cpu"):
        assert f(x).dtype == av.bfloat16
    assert f(x).dtype == av.float32

"""`av.grad` / `av.value_and_grad` end to end: gradients of small models equal torch's, the
structure of the returned gradients, errors, caching, nesting inside `av.trace`, state updates,
auxiliary outputs and second derivatives. Models here are written with `avalon.ops` only."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import avalon as av
import avalon.ir as ir
from avalon import ops
from avalon.autodiff import GradError, grad_graph
from avalon.ir import Block, Builder, Graph, TensorType
from avalon.trace import assign


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


class Linear:
    def __init__(self, rng, i, o, dtype):
        self.weight = av.tensor(rng.normal(size=(o, i)) / np.sqrt(i), dtype)
        self.bias = av.tensor(rng.normal(size=o) * 0.1, dtype)

    def __call__(self, x):
        return x @ self.weight.T + self.bias


class Conv:
    def __init__(self, rng, cin, cout, k, dtype):
        self.weight = av.tensor(rng.normal(size=(cout, cin, k, k)) / np.sqrt(cin * k * k), dtype)
        self.bias = av.tensor(rng.normal(size=cout) * 0.1, dtype)

    def __call__(self, x):
        return ops.conv2d(x, self.weight) + self.bias.reshape(1, -1, 1, 1)


class MLP:
    def __init__(self, rng, dtype):
        self.layers = [Linear(rng, 6, 16, dtype), Linear(rng, 16, 5, dtype)]

    def __call__(self, x):
        return self.layers[1](ops.tanh(self.layers[0](x)))


class LeNet:
    def __init__(self, rng, dtype):
        self.conv1, self.conv2 = Conv(rng, 1, 4, 3, dtype), Conv(rng, 4, 6, 3, dtype)
        self.fc1, self.fc2 = Linear(rng, 24, 16, dtype), Linear(rng, 16, 10, dtype)

    def __call__(self, x):
        x = ops.max_pool2d(ops.relu(self.conv1(x)), 2)
        x = ops.max_pool2d(ops.relu(self.conv2(x)), 2)
        x = x.reshape(x.shape[0], 24)
        return log_softmax(self.fc2(ops.relu(self.fc1(x))))


def log_softmax(x):
    return x - ops.logsumexp(x, axis=-1, keepdims=True)


def nll(logp, labels):
    return -(logp * ops.one_hot(labels, logp.shape[-1], logp.dtype)).sum() / logp.shape[0]


def cross_entropy(model, x, y):
    return nll(log_softmax(model(x)) if isinstance(model, MLP) else model(x), y)


# -- torch twins ---------------------------------------------------------------------------

def torch_params(model):
    return {n: torch.tensor(t.numpy(), requires_grad=True) for n, t in av.named_parameters(model)}


def torch_mlp(p, x):
    h = torch.tanh(x @ p["layers.0.weight"].T + p["layers.0.bias"])
    return h @ p["layers.1.weight"].T + p["layers.1.bias"]


def torch_lenet(p, x):
    x = F.max_pool2d(F.relu(F.conv2d(x, p["conv1.weight"], p["conv1.bias"])), 2)
    x = F.max_pool2d(F.relu(F.conv2d(x, p["conv2.weight"], p["conv2.bias"])), 2)
    x = F.relu(x.reshape(x.shape[0], 24) @ p["fc1.weight"].T + p["fc1.bias"])
    return x @ p["fc2.weight"].T + p["fc2.bias"]


def lenet_data(rng, dtype, n=3):
    return av.tensor(rng.normal(size=(n, 1, 14, 14)), dtype), av.tensor(rng.integers(0, 10, n))


@pytest.mark.parametrize("dtype,tol", [(av.float32, 1e-4), (av.float64, 1e-10)])
@pytest.mark.parametrize("kind", ["mlp", "lenet"])
def test_model_gradients_match_torch(kind, dtype, tol):
    rng = np.random.default_rng(0)
    if kind == "mlp":
        model, fwd = MLP(rng, dtype), torch_mlp
        x, y = av.tensor(rng.normal(size=(4, 6)), dtype), av.tensor(rng.integers(0, 5, 4))
    else:
        model, fwd = LeNet(rng, dtype), torch_lenet
        x, y = lenet_data(rng, dtype)
    value, grads = av.value_and_grad(cross_entropy)(model, x, y)
    p = torch_params(model)
    want = F.cross_entropy(fwd(p, torch.tensor(x.numpy())), torch.tensor(y.numpy()))
    want.backward()
    assert value.shape == () and value.dtype == dtype
    assert rel_err(value.numpy(), want.item()) < tol
    assert list(grads) == [n for n, _ in av.named_parameters(model)]
    for name, g in grads.items():
        assert isinstance(g, av.Tensor) and g.shape == p[name].shape and g.dtype == dtype
        assert rel_err(g.numpy(), p[name].grad.numpy()) < tol, name


def test_argnums_tuple_gives_a_tuple_of_tensors():
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=s) for s in [(3, 4), (4,), (4, 2)]]

    def f(x, b, w):
        return (ops.sigmoid(x + b) @ w).sum()

    gx, gw = av.grad(f, argnums=(0, 2))(*xs)
    tx, tb, tw = (torch.tensor(a, requires_grad=True) for a in xs)
    (torch.sigmoid(tx + tb) @ tw).sum().backward()
    np.testing.assert_allclose(gx.numpy(), tx.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(gw.numpy(), tw.grad.numpy(), rtol=1e-12)
    (gb,) = av.grad(f, argnums=(1,))(*xs)
    np.testing.assert_allclose(gb.numpy(), tb.grad.numpy(), rtol=1e-12)
    assert isinstance(av.grad(f, argnums=1)(*xs), av.Tensor)


def test_structures_give_dicts_of_dotted_names_without_buffers_or_integers():
    rng = np.random.default_rng(2)
    model = MLP(rng, av.float64)
    model.stats = av.Buffer(np.ones(5))
    model.steps = av.tensor(np.array(3))
    params = {"w": av.tensor(rng.normal(size=(5,))), "inner": [av.tensor(rng.normal(size=()))]}

    def f(model, params, x):
        return (model(x) * params["w"] * model.stats).sum() * params["inner"][0]

    gm, gp = av.grad(f, argnums=(0, 1))(model, params, rng.normal(size=(2, 6)))
    assert list(gm) == ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"]
    assert list(gp) == ["w", "inner.0"] and gp["inner.0"].shape == ()


def test_integer_inputs_get_no_gradient():
    rng = np.random.default_rng(3)
    table = rng.normal(size=(7, 3))
    idx = av.tensor(np.array([[1, 4], [4, 6]]))

    def f(table, idx):
        return (ops.take(table, idx) ** 3).sum()

    g_table, g_idx = av.grad(f, argnums=(0, 1))(table, idx)
    assert g_idx is None
    t = torch.tensor(table, requires_grad=True)
    (F.embedding(torch.tensor(idx.numpy()), t) ** 3).sum().backward()
    np.testing.assert_allclose(g_table.numpy(), t.grad.numpy(), rtol=1e-12)  # row 4 is used twice


def test_errors_are_clear():
    x = np.ones((3, 4))
    with pytest.raises(ValueError, match=r"shape \(3, 4\)"):
        av.grad(lambda x: x * 2)(x)
    with pytest.raises(TypeError, match="has_aux=True"):
        av.grad(lambda x: (x.sum(), x))(x)
    with pytest.raises(TypeError, match="floating-point"):
        av.grad(lambda x: (x > 0).sum())(x)
    with pytest.raises(TypeError, match="argnums"):
        av.grad(lambda x: x.sum(), argnums=1)(x)
    with pytest.raises(TypeError, match="argnums must be"):
        av.grad(lambda x: x.sum(), argnums="x")


def test_one_element_losses_are_scalars():
    g = av.grad(lambda x: x.sum(axis=1, keepdims=True))(np.ones((1, 3)))
    np.testing.assert_array_equal(g.numpy(), np.ones((1, 3)))


def test_the_graph_is_traced_once_per_signature():
    calls = []

    def f(x, w):
        calls.append(1)
        return ops.tanh(x @ w).sum()

    vg = av.value_and_grad(f, argnums=1)
    rng = np.random.default_rng(4)
    for _ in range(3):
        x, w = rng.normal(size=(2, 3)), rng.normal(size=(3, 4))
        tw = torch.tensor(w, requires_grad=True)
        torch.tanh(torch.tensor(x) @ tw).sum().backward()
        np.testing.assert_allclose(vg(x, w)[1].numpy(), tw.grad.numpy(), rtol=1e-12)
    assert len(calls) == 1 and len(vg.cache) == 1
    vg(rng.normal(size=(5, 3)), rng.normal(size=(3, 4)))
    assert len(calls) == 2 and len(vg.cache) == 2


def test_changing_a_models_python_state_retraces():
    class Scaled:
        def __init__(self):
            self.w = av.tensor(np.array([1.0, 2.0]))
            self.training = True

        def __call__(self, x):
            return (x * self.w * (2.0 if self.training else 1.0)).sum()

    m = Scaled()
    g = av.grad(lambda m, x: m(x))
    x = np.array([3.0, 4.0])
    np.testing.assert_allclose(g(m, x)["w"].numpy(), [6.0, 8.0])
    m.training = False
    np.testing.assert_allclose(g(m, x)["w"].numpy(), [3.0, 4.0])


def test_captured_arrays_are_not_baked_into_a_cached_graph():
    data = np.array([1.0, 2.0])
    g = av.grad(lambda w: (w * data).sum())
    with pytest.warns(UserWarning, match="traced again"):
        np.testing.assert_allclose(g(np.ones(2)).numpy(), [1.0, 2.0])
    data[:] = [5.0, 6.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_allclose(g(np.ones(2)).numpy(), [5.0, 6.0])


def test_trace_of_value_and_grad_is_one_graph_of_forward_and_backward():
    rng = np.random.default_rng(5)
    model = LeNet(rng, av.float32)
    x, y = lenet_data(rng, av.float32)
    vg = av.value_and_grad(cross_entropy)
    g = av.trace(vg, model, x, y)
    ir.verify(g)
    names = [op.name for op in g.ops]
    for op in ("conv2d", "max_pool2d", "conv2d_grad_weight", "conv2d_grad_input", "max_pool2d_grad"):
        assert op in names
    assert [v.name for v in g.inputs] == [n for n, _ in av.named_parameters(model)] + ["x", "y"]
    assert len(g.outputs) == 1 + len(list(av.named_parameters(model)))
    value, grads = vg(model, x, y)
    outs = av.interpret(g, *[t for _, t in av.named_parameters(model)], x, y)
    np.testing.assert_allclose(outs[0], value.numpy(), rtol=1e-6)
    for got, want in zip(outs[1:], grads.values()):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-7)


def test_gradient_graph_of_lenet_verifies_and_round_trips():
    rng = np.random.default_rng(6)
    model = LeNet(rng, av.float32)
    x, y = lenet_data(rng, av.float32)
    fwd = av.trace(cross_entropy, model, x, y)
    n = len(list(av.named_parameters(model)))
    g = grad_graph(fwd, list(range(n)))
    ir.verify(g)
    text = str(g)
    assert str(ir.parse(text)) == text
    assert [v.name for v in g.inputs] == [v.name for v in fwd.inputs]
    assert len(g.outputs) == 1 + n
    with pytest.raises(GradError, match="only floating-point"):
        grad_graph(fwd, [n + 1])  # the labels


class RunningMean:
    """A batch-norm-like layer: normalizes by the batch mean and tracks a running mean (a Buffer)."""

    def __init__(self):
        self.weight = av.tensor(np.array([1.0, 2.0, 3.0]))
        self.running_mean = av.Buffer(np.zeros(3))

    def __call__(self, x):
        m = x.mean(axis=0)
        assign(self.running_mean, self.running_mean * 0.9 + m * 0.1)
        return ((x - m) * self.weight).sum() + (x * x).sum()


def test_state_updates_are_applied_after_the_call():
    layer = RunningMean()
    x = np.arange(6.0).reshape(2, 3)
    value, grads = av.value_and_grad(lambda layer, x: layer(x))(layer, x)
    np.testing.assert_allclose(layer.running_mean.numpy(), 0.1 * x.mean(axis=0))
    assert list(grads) == ["weight"]
    np.testing.assert_allclose(grads["weight"].numpy(), np.zeros(3), atol=1e-12)  # (x - mean) sums to 0
    av.grad(lambda layer, x: layer(x))(layer, x)
    np.testing.assert_allclose(layer.running_mean.numpy(), 0.19 * x.mean(axis=0))
    g = av.trace(av.grad(lambda layer, x: layer(x)), layer, x)
    assert len(g.outputs) == 1 + 1  # the gradient of weight, then the running-mean update


def test_has_aux_returns_the_auxiliary_value():
    def f(x):
        return (x * x).sum(), {"double": x * 2, "n": 3}

    (value, aux), g = av.value_and_grad(f, has_aux=True)(np.array([1.0, 2.0]))
    assert value.item() == 5.0 and aux["n"] == 3
    np.testing.assert_allclose(aux["double"].numpy(), [2.0, 4.0])
    g2, aux2 = av.grad(f, has_aux=True)(np.array([1.0, 2.0]))
    np.testing.assert_allclose(g.numpy(), [2.0, 4.0])
    np.testing.assert_allclose(g2.numpy(), g.numpy())


def test_second_derivatives_match_torch():
    rng = np.random.default_rng(7)
    x, w, v = rng.normal(size=(2, 2, 6, 6)), rng.normal(size=(3, 2, 3, 3)), rng.normal(size=(3, 2, 3, 3))

    def f(x, w):
        return (ops.tanh(ops.conv2d(x, w, padding=1)) ** 2).sum()

    def hvp(x, w):  # d/dw <grad_w f, v>
        return (av.grad(f, argnums=1)(x, w) * v).sum()

    got = av.grad(hvp, argnums=(0, 1))(x, w)
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    (gw,) = torch.autograd.grad((torch.tanh(F.conv2d(tx, tw, padding=1)) ** 2).sum(), tw, create_graph=True)
    want = torch.autograd.grad((gw * torch.tensor(v)).sum(), (tx, tw))
    for a, b in zip(got, want):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-12)


def test_fusion_regions_are_differentiated_through():
    t = TensorType((3,), av.float64)
    g = Graph("fused")
    x, y = g.add_input(t, "x"), g.add_input(t, "y")
    region = Block([t, t])
    rb = Builder(region)
    region.set_terminator("yield", [rb("mul", rb("exp", region.args[0]), region.args[1])])
    b = Builder(g)
    z = b.fusion("fused_exp_mul_0", [x, y], region).result
    g.set_outputs([b("sum", z, axes=[0])])
    gg = grad_graph(g, [0, 1])
    ir.verify(gg)
    assert not any(op.regions for op in gg.ops)
    xv, yv = np.array([0.1, 0.2, 0.3]), np.array([1.0, 2.0, 3.0])
    _, gx, gy = av.interpret(gg, xv, yv)
    np.testing.assert_allclose(gx, np.exp(xv) * yv)
    np.testing.assert_allclose(gy, np.exp(xv))


def test_non_differentiable_ops_stop_the_gradient_and_unused_inputs_get_zeros():
    x = np.array([-1.5, 0.5, 2.0])

    def f(x, unused):
        mask = ops.cast(x > 0, av.float64)
        return (x * mask).sum() + ops.cast(ops.argmax(x), av.float64) + (ops.sign(x) * x).sum()

    gx, gu = av.grad(f, argnums=(0, 1))(x, np.ones(2))
    np.testing.assert_allclose(gx.numpy(), (x > 0) + np.sign(x))
    np.testing.assert_array_equal(gu.numpy(), np.zeros(2))


def test_python_float_arguments_and_random_ops():
    assert av.grad(lambda x: x * x * x)(2.0).item() == pytest.approx(12.0)
    x = np.linspace(1.0, 2.0, 16)

    def dropout_sum(x):
        keep = ops.random(av.random.next_seed(), x.shape) > 0.5
        return ops.where(keep, x * 2.0, 0.0).sum()

    value, g = av.value_and_grad(dropout_sum)(x)
    assert set(np.unique(g.numpy())) <= {0.0, 2.0}
    np.testing.assert_allclose(value.numpy(), (g.numpy() * x).sum())


def test_a_missing_rule_is_named(monkeypatch):
    from avalon.autodiff import VJP
    monkeypatch.delitem(VJP, "exp")
    g = av.trace(lambda x: ops.exp(x).sum(), np.ones(3))
    with pytest.raises(NotImplementedError, match="no VJP rule for op 'exp'"):
        grad_graph(g)


def test_wrt_defaults_to_every_float_input():
    g = av.trace(lambda x, i, w: (ops.take(x, i) * w).sum(), np.ones((4, 2)), np.array([0, 3]), np.ones(2))
    gg = grad_graph(g)
    assert [v.type for v in gg.outputs[1:]] == [g.inputs[0].type, g.inputs[2].type]


def test_a_failing_cleanup_pass_is_an_error_naming_it(monkeypatch):
    """The gradient path runs its pipeline through the driver: nothing falls back silently."""
    import avalon.compiler.gradients as grad_mod
    from avalon import passes

    monkeypatch.setattr(passes.registry, "PASSES", dict(passes.registry.PASSES))

    @passes.register("explode")
    def explode(graph):
        raise RuntimeError("kaput")

    monkeypatch.setattr(grad_mod, "GRAD_PIPELINE", "cse,explode")
    with pytest.raises(RuntimeError, match="kaput") as e:
        av.grad(lambda x: (x * x).sum())(np.ones(3))
    assert any("while running pass 'explode'" in n for n in getattr(e.value, "__notes__", []))


def test_gradients_share_the_compile_driver():
    """value_and_grad is a compiled function: same cache, inspection and pipeline as av.compile."""
    from avalon.compiler import GRAD_PIPELINE, Compiled

    def loss(w, x):
        return ops.tanh(x @ w).sum()

    vg = av.value_and_grad(loss)
    w, x = np.ones((3, 2)), np.ones((4, 3))
    assert isinstance(vg, Compiled) and vg.__name__ == "value_and_grad_loss"
    insp = vg.inspect(w, x)
    assert insp.pipeline == GRAD_PIPELINE and [r.name for r in insp.passes] == ["canonicalize", "cse", "dce"]
    assert insp.graph.name == "value_and_grad_loss" and len(insp.graph.outputs) == 2
    vg(w, x)
    assert vg.cache_info().entries == len(vg.cache) == 1


def test_a_clone_of_a_model_weight_is_differentiated_and_read_afresh():
    """`w = m.weight.clone()` inside a traced function is the weight's traced value: it was the eager
    copy, baked in as a constant (zero gradients, a retrace every call)."""
    from avalon import nn
    m = nn.Linear(3, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = av.grad(lambda m: (m.weight.clone() ** 2).sum())(m)
        np.testing.assert_allclose(g["weight"].numpy(), 2 * m.weight.numpy(), rtol=1e-6)

        def f(m, x):
            w = m.weight.clone()
            w.add_(1.0)  # the copy only
            return (x @ w.t()).sum()

        step = av.compile(f)
        x = av.tensor(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32))
        before = m.weight.numpy().copy()
        np.testing.assert_allclose(float(step(m, x)), float(f(m, x)), rtol=1e-5)
        np.testing.assert_array_equal(m.weight.numpy(), before)
        m.weight.mul_(2.0)
        np.testing.assert_allclose(float(step(m, x)), float(f(m, x)), rtol=1e-5)

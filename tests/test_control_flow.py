"""torch.cond and torch.while_loop as `av.cond` / `av.while_loop`, with torch as the oracle."""
import numpy as np
import pytest
import torch

import avalon as av


def _branches(lib):
    def true_fn(x, y):
        return {"s": (x * y).sin(), "n": x.sum()}

    def false_fn(x, y):
        return {"s": x.cos() - y, "n": (x * 2).sum()}
    return true_fn, false_fn


def test_cond_runs_one_branch_eagerly_and_selects_under_a_trace_with_torchs_values_and_gradients():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((2, 3, 4)).astype(np.float32)
    ours, theirs = _branches(av), _branches(torch)
    for sign in (1.0, -1.0):
        xs = x * sign

        def loss(lib, fns, a, b):
            out = lib.cond(a.sum() > 0, *fns, (a, b))
            return (out["s"] * out["n"]).sum()
        ta, tb = torch.tensor(xs, requires_grad=True), torch.tensor(y, requires_grad=True)
        want = loss(torch, theirs, ta, tb)
        wa, wb = torch.autograd.grad(want, (ta, tb))
        eager = loss(av, ours, av.tensor(xs), av.tensor(y))
        value, (ga, gb) = av.value_and_grad(lambda a, b: loss(av, ours, a, b), argnums=(0, 1))(xs, y)
        compiled = av.compile(lambda a, b: loss(av, ours, a, b))(xs, y)
        for got in (eager, value, compiled):
            np.testing.assert_allclose(got.numpy(), want.item(), rtol=1e-4)
        np.testing.assert_allclose(ga.numpy(), wa.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(gb.numpy(), wb.numpy(), rtol=1e-5, atol=1e-6)
    assert av.cond(False, lambda: 1, lambda: 2) == 2  # a Python predicate: one branch, anything returned


def test_cond_checks_torchs_rules():
    x = av.tensor(np.ones(3, np.float32))
    step = av.compile(lambda x, f: av.cond(x.sum() > 0, lambda v: v, f, (x,)))
    with pytest.raises(TypeError, match="output 0 is f32\\[3\\] from true_fn but f32\\[1\\] from false_fn"):
        step(x, lambda v: v[:1])
    with pytest.raises(TypeError, match="same structure"):
        step(x, lambda v: (v, v))
    with pytest.raises(ValueError, match="one element"):
        av.cond(x > 0, lambda: x, lambda: x)
    with pytest.raises(TypeError, match="must be a boolean, got f32"):
        av.cond(x.sum(), lambda: x, lambda: x)
    with pytest.raises(TypeError, match="tuple or list"):
        av.cond(True, lambda v: v, lambda v: v, x)


def test_while_loop_unrolls_a_loop_known_while_tracing_and_refuses_a_traced_test():
    def body(i, x):
        return i + 1, x * 0.5 + i

    def run(lib, x):
        return lib.while_loop(lambda i, x: i < 4, body, (lib.tensor(0), x))
    x = np.random.default_rng(1).standard_normal(5).astype(np.float32)
    want = run(torch, torch.tensor(x))
    for got in (run(av, av.tensor(x)), av.compile(lambda x: run(av, x))(x)):
        assert int(got[0]) == 4
        np.testing.assert_allclose(got[1].numpy(), want[1].numpy(), rtol=1e-6)
    g = av.grad(lambda x: run(av, x)[1].sum())(x)
    np.testing.assert_allclose(g.numpy(), np.full(5, 0.5 ** 4, np.float32))
    with pytest.raises(ValueError, match="iteration 0 depends on traced values"):
        av.compile(lambda x: av.while_loop(lambda v: v.sum() < 10, lambda v: (v * 2,), (x,)))(np.abs(x) + 1)
    with pytest.raises(TypeError, match="carried value 0 is f32\\[5\\] but body_fn returned f32\\[4\\]"):
        av.while_loop(lambda v: v.sum() < 100, lambda v: (v[1:],), (av.tensor(np.abs(x) + 1),))


def test_torch_cond_and_while_loop_import_from_torch_export():
    """torch.export keeps torch.cond and torch.while_loop as higher-order ops over subgraphs; the import
    runs each subgraph through the same ATen rules: values and gradients of both predicate signs, eager
    and compiled, are torch's."""
    torch.manual_seed(0)

    class Gated(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 3)

        def forward(self, x):
            y = torch.cond(x.sum() > 0, lambda x: self.lin(x).sin(), lambda x: x.cos() * 2, (x,))
            _, z = torch.while_loop(lambda i, z: i < 3, lambda i, z: (i + 1, z * 0.5 + self.lin.bias),
                                    (torch.tensor(0), y))
            return z

    m = Gated()
    model = av.from_torch(m, torch.randn(2, 3))
    step = av.compile(lambda mm, x: mm(x))
    for sign in (1.0, -1.0):
        x = np.abs(np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)) * sign
        want = m(torch.tensor(x)).detach().numpy()
        np.testing.assert_allclose(model(x).numpy(), want, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(step(model, x).numpy(), want, rtol=1e-6, atol=1e-7)
        grads = av.grad(lambda mm, x: mm(x).sum())(model, x)
        m.zero_grad()
        m(torch.tensor(x)).sum().backward()
        for name, p in m.named_parameters():
            np.testing.assert_allclose(grads[name].numpy(), p.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_torch_scan_imports_unrolled():
    """torch's scan higher-order op (a recurrence over a dimension, here reversed over dim 1) imports
    unrolled: carries and stacked outputs, and the gradient of the weight it closes over, are torch's."""
    from torch._higher_order_ops.scan import scan

    torch.manual_seed(0)

    class Decay(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(4))

        def forward(self, x):
            def step(c, xi):
                c = c * 0.5 + xi * self.w
                return c, c.sin()
            return scan(step, torch.zeros(3, 4), x, dim=1, reverse=True)

    m = Decay()
    model = av.from_torch(m, torch.randn(3, 5, 4))
    x = np.random.default_rng(0).standard_normal((3, 5, 4)).astype(np.float32)
    for got, want in zip(model(x), m(torch.tensor(x))):
        np.testing.assert_allclose(got.numpy(), want.detach().numpy(), rtol=1e-6, atol=1e-7)
    g = av.grad(lambda mm, x: sum(o.sum() for o in mm(x)))(model, x)
    sum(o.sum() for o in m(torch.tensor(x))).backward()
    np.testing.assert_allclose(g["w"].numpy(), m.w.grad.numpy(), rtol=1e-5)

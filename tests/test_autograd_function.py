"""User-defined gradients (`av.autograd.Function`, `av.custom_vjp`) against torch.autograd.Function:
values and gradients eagerly, under av.grad, compiled (numpy and Triton), inside a model trained
with an optimizer, with several outputs, saved tensors and ctx attributes, higher derivatives,
the IR op's text round trip, and the errors torch gives."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import avalon as av
from avalon.ir import parse, verify
from avalon.trace import trace_call


def _both(lib):
    """The same three Functions written against torch or Avalon (only the base class differs)."""

    class GradReverse(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x, lam):
            ctx.lam = lam
            return x.view_as(x)

        @staticmethod
        def backward(ctx, g):
            return -ctx.lam * g, None

    class StraightThroughRound(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.round()

        @staticmethod
        def backward(ctx, g):
            return g

    class ClippedSoftplus(lib.autograd.Function):
        """Two outputs, a saved tensor, a tensor kept on ctx, a non-tensor and an integer argument."""

        @staticmethod
        def forward(ctx, x, w, k, clip):
            e = (x * w).exp()
            ctx.save_for_backward(e, None, w)
            ctx.x = x
            ctx.clip = clip
            return (1 + e).log() * k, e.sum(-1)

        @staticmethod
        def backward(ctx, g1, g2):
            e, none, w = ctx.saved_tensors
            assert none is None
            s = e / (1 + e)
            gx = ((g1 * s + g2[..., None] * e) * w).clamp(-ctx.clip, ctx.clip)
            gw = ((g1 * s + g2[..., None] * e) * ctx.x).sum(0)
            return gx, gw, None, None

    return GradReverse, StraightThroughRound, ClippedSoftplus


def _loss(lib, fns, x, w, k, r):
    rev, st, cs = fns
    a, b = cs.apply(x, w, k, 0.7)
    return (rev.apply(a, 0.5) * r).sum() + b.sum() + st.apply(x * 3).pow(2).sum()


@pytest.mark.parametrize("backend", [None, "numpy", "triton"])
def test_gradients_match_torch_autograd_function(backend):
    rng = np.random.default_rng(0)
    x, w, r = rng.standard_normal((5, 4)), rng.standard_normal(4), rng.standard_normal((5, 4))
    k = np.arange(1, 5)
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    tl = _loss(torch, _both(torch), tx, tw, torch.tensor(k), torch.tensor(r))
    tl.backward()
    fns = _both(av)
    f = av.value_and_grad(lambda x, w, k, r: _loss(av, fns, x, w, k, r), argnums=(0, 1))
    f = f if backend is None else av.compile(f, backend=backend)
    loss, (gx, gw) = f(av.tensor(x), av.tensor(w), av.tensor(k), av.tensor(r))
    np.testing.assert_allclose(float(loss), tl.item(), rtol=1e-12)
    np.testing.assert_allclose(gx.numpy(), tx.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(gw.numpy(), tw.grad.numpy(), rtol=1e-9, atol=1e-12)
    eager = _loss(av, fns, av.tensor(x), av.tensor(w), av.tensor(k), av.tensor(r))  # outside a trace: forward
    np.testing.assert_allclose(float(eager), tl.item(), rtol=1e-12)


def test_a_model_with_a_custom_function_trains_like_torch():
    """Domain-adversarial training's gradient reversal inside a module, two compiled SGD steps."""
    torch.manual_seed(0)

    def make(lib, nn):
        rev = _both(lib)[0]

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.feat, self.head, self.adv = nn.Linear(6, 8), nn.Linear(8, 3), nn.Linear(8, 2)

            def forward(self, x):
                h = self.feat(x).tanh()
                return self.head(h), self.adv(rev.apply(h, 0.3))
        return Net()

    tm, m = make(torch, torch.nn), make(av, av.nn)
    av.nn.load_state_dict(m, tm.state_dict())
    rng = np.random.default_rng(1)
    x, y, d = rng.standard_normal((7, 6)), rng.integers(0, 3, 7), rng.integers(0, 2, 7)
    tm.double()
    m = m.double()
    topt, opt = torch.optim.SGD(tm.parameters(), lr=0.1), av.optim.SGD(m.parameters(), lr=0.1)

    def loss_fn(lib, model, x, y, d):
        out, adv = model(x)
        return lib.nn.functional.cross_entropy(out, y) + lib.nn.functional.cross_entropy(adv, d)

    def step(model, opt, x, y, d):
        loss, g = av.value_and_grad(lambda mm, x, y, d: loss_fn(av, mm, x, y, d))(model, x, y, d)
        opt.step(g)
        return loss

    cstep = av.compile(step)
    for _ in range(2):
        loss = cstep(m, opt, av.tensor(x), av.tensor(y), av.tensor(d))
        topt.zero_grad()
        tl = loss_fn(torch, tm, torch.tensor(x), torch.tensor(y), torch.tensor(d))
        tl.backward()
        topt.step()
        np.testing.assert_allclose(float(loss), tl.item(), rtol=1e-10)
    for name, p in tm.named_parameters():
        np.testing.assert_allclose(dict(m.named_parameters())[name].numpy(), p.detach().numpy(), rtol=1e-10,
                                   err_msg=name)


def test_jax_style_custom_vjp_and_second_derivatives():
    @av.custom_vjp
    def f(x, y):
        return x.sin() * y

    def f_fwd(x, y):
        return f(x, y), {"c": x.cos(), "s": x.sin(), "y": y}

    def f_bwd(res, g):
        return res["c"] * res["y"] * g, res["s"] * g

    f.defvjp(f_fwd, f_bwd)
    x, y = np.linspace(-1, 1, 5), np.linspace(0.5, 2, 5)
    gx, gy = av.grad(lambda x, y: f(x, y).sum(), argnums=(0, 1))(av.tensor(x), av.tensor(y))
    np.testing.assert_allclose(gx.numpy(), np.cos(x) * y, rtol=1e-12)
    np.testing.assert_allclose(gy.numpy(), np.sin(x), rtol=1e-12)
    # d/dx of the custom gradient differentiates its backward's ops: d(cos(x) y)/dx = -sin(x) y
    hx = av.grad(lambda x, y: av.grad(lambda x: f(x, y).sum())(x).sum())(av.tensor(x), av.tensor(y))
    np.testing.assert_allclose(hx.numpy(), -np.sin(x) * y, rtol=1e-12)
    np.testing.assert_allclose(f(av.tensor(x), av.tensor(y)).numpy(), np.sin(x) * y, rtol=1e-12)


def test_the_op_prints_parses_and_verifies_until_autodiff_inlines_it():
    rev = _both(av)[0]
    x = np.ones((2, 3))
    kept = trace_call(lambda x: (rev.apply(x, 2.0) * x).sum(), (av.tensor(x),), keep_custom=True).graph
    text = str(kept)
    assert "custom_vjp" in text and "yield" in text, text
    again = verify(parse(text))
    assert str(again) == text
    plain = av.trace(lambda x: (rev.apply(x, 2.0) * x).sum(), x)  # every other consumer: the forward inlined
    assert "custom_vjp" not in str(plain)
    assert "custom_vjp" not in str(av.trace(av.grad(lambda x: (rev.apply(x, 2.0) * x).sum()), x))


def test_errors_are_torchs():
    class TooFew(av.autograd.Function):
        @staticmethod
        def forward(ctx, x, y):
            return x * y

        @staticmethod
        def backward(ctx, g):
            return g

    class BadShape(av.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.sum()

        @staticmethod
        def backward(ctx, g):
            return g.expand(5)

    x = av.tensor(np.ones(3))
    with pytest.raises(TypeError, match="incorrect number of gradients"):
        av.grad(lambda x: TooFew.apply(x, x).sum())(x)
    with pytest.raises(ValueError, match="invalid gradient at index 0"):
        av.grad(lambda x: BadShape.apply(x))(x)
    with pytest.raises(RuntimeError, match="apply"):
        TooFew()(x)
    with pytest.raises(RuntimeError, match="av.grad"):
        av.autograd.grad(x, x)

"""Round 12 of the silent-failure hunt: torch's AUTOGRAD API as ported code uses it, differential against
torch 2.13 (CPU, float64) on seeded random inputs, eagerly and under av.value_and_grad / av.compile.

Avalon's gradients are values (av.grad), so torch's tape API (`backward()`, `.grad`, `register_hook`,
`retain_grad`, `torch.autograd.grad`, backward hooks) is refused with a message saying what to write
instead; those refusals were checked, not changed. Swept (223 cases): the gradient switches
(no_grad / enable_grad / set_grad_enabled / inference_mode nested, as decorators, on generators),
autograd.Function (saved tensors, None grads, wrong counts and shapes, mark_non_differentiable,
needs_input_grad, non-tensor inputs and outputs, kwargs, double backward), Module forward hooks (order,
prepend, kwargs, removal, always_call, under value_and_grad and compile), torch.func's transforms,
torch.autograd.functional and the requires_grad / detach_ surface. What disagreed, fixed here:
`@no_grad` / `@enable_grad` / `@inference_mode` without parentheses made a context object, so the
decorated function returned a function instead of its value; a decorated generator ran its body with
gradients on; `set_grad_enabled("no")` switched by truthiness; `backward` of an autograd.Function
returning a transposed or flattened gradient of the right size was reshaped silently (torch refuses),
while one of a shape the input broadcasts to was refused (torch sums it back); a gradient for a
non-tensor input was dropped (torch refuses); `mark_non_differentiable` outputs sent their gradient into
backward (torch gives zeros); non-tensor outputs of forward and `apply(..., key=value)` were refused;
`requires_grad=True` of an integer tensor in av.tensor / zeros / arange / randint / *_like / new_* was
dropped (torch refuses); `requires_grad_("no")` switched gradients on; `detach_()` of a view ran (torch
refuses: it cuts the base's gradient); `ctx.mark_dirty` was refused (now the caller's tensor becomes the
output, its gradient through backward); torch.autograd.functional (jacobian, hessian, vjp, jvp, vhp, hvp),
`from torch.autograd.function import once_differentiable`, `is_inference_mode_enabled`, the
`torch.autograd.no_grad`-style aliases were missing, and `retain_grad()` failed with a bare AttributeError.
Left as they are: `needs_input_grad` is True for every float tensor argument (a traced value cannot tell
whether it will be differentiated), global module hooks (`register_module_forward_hook`) do not exist."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import avalon as av

RNG = np.random.default_rng(12)
X = RNG.standard_normal((2, 3))
W = RNG.standard_normal((2, 3))
V3 = RNG.standard_normal(3)
X3 = RNG.standard_normal(3)


def torch_grads(f, *arrs):
    ts = [torch.tensor(a, requires_grad=True) for a in arrs]
    out = f(torch, *ts)
    gs = torch.autograd.grad(out, ts, allow_unused=True, materialize_grads=True)
    return float(out.detach()), [g.numpy() for g in gs]


def assert_grads_match(f, *arrs):
    """f(L, *tensors) -> scalar: value and gradients of torch and of Avalon (eager and compiled) agree."""
    tv, tg = torch_grads(f, *arrs)
    for compiled in (False, True):
        g = av.value_and_grad(lambda *xs: f(av, *xs), argnums=tuple(range(len(arrs))))
        if compiled:
            g = av.compile(g)
        v, gs = g(*(av.tensor(a) for a in arrs))
        np.testing.assert_allclose(float(v.numpy()), tv, rtol=1e-10)
        for a, b in zip(gs, tg):
            np.testing.assert_allclose(a.numpy(), b, rtol=1e-10, atol=1e-12)


# -- gradient switches -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["no_grad", "enable_grad", "inference_mode"])
def test_mode_decorator_without_parentheses_returns_the_value(name):
    for L in (torch, av):
        deco = getattr(L, name)
        f = deco(lambda a, L=L: (a, L.is_grad_enabled()))
        assert f(7) == (7, name == "enable_grad")
        assert L.is_grad_enabled()


@pytest.mark.parametrize("make", [lambda L: L.no_grad(), lambda L: L.no_grad, lambda L: L.inference_mode(),
                                  lambda L: L.set_grad_enabled(False)])
def test_decorated_generator_runs_under_the_mode(make):
    for L in (torch, av):
        @make(L)
        def gen(L=L):
            yield L.is_grad_enabled()
            yield L.is_grad_enabled()
        it = gen()
        assert next(it) is False
        assert L.is_grad_enabled()  # the caller's mode between steps
        assert next(it) is False


def test_set_grad_enabled_takes_a_bool_only():
    for L in (torch, av):
        for bad in ("no", None):
            with pytest.raises(TypeError, match="must be bool"):
                L.set_grad_enabled(bad)
        assert L.is_grad_enabled()


def test_inference_mode_state_and_aliases():
    for L in (torch, av):
        assert not L.is_inference_mode_enabled()
        with L.inference_mode():
            assert L.is_inference_mode_enabled() and not L.is_grad_enabled()
            with L.inference_mode(False):
                assert not L.is_inference_mode_enabled() and L.is_grad_enabled()
        assert not L.is_inference_mode_enabled()
        assert L.autograd.no_grad is L.no_grad and L.autograd.set_grad_enabled is L.set_grad_enabled
        assert L.autograd.grad_mode.enable_grad is L.enable_grad
        assert type(L.no_grad().clone()).__name__ == "no_grad"


def _noparen(L, x, w):
    @L.no_grad
    def h(a):
        return a * w
    return (h(x) * x).sum()


def _gen(L, x, w):
    @L.no_grad()
    def h(a):
        yield a * w
        yield a.sin()
    return sum((t * x).sum() for t in h(x))


def _enable_inside(L, x, w):
    @L.enable_grad
    def h(a):
        return a * w
    with L.no_grad():
        y = h(x)
    return (y * x).sum()


@pytest.mark.parametrize("f", [_noparen, _gen, _enable_inside])
def test_mode_decorators_cut_gradients_as_torch(f):
    assert_grads_match(f, X, W)


# -- autograd.Function -------------------------------------------------------------------------------

def fn_class(L, fwd, bwd):
    return type("F", (L.autograd.Function,), {"forward": staticmethod(fwd), "backward": staticmethod(bwd)})


def _mul_f(ctx, x, w):
    ctx.save_for_backward(x, w)
    return x * w


@pytest.mark.parametrize("bad", [lambda g: g.t().contiguous(), lambda g: g.reshape(-1), lambda g: g.sum(0)])
def test_function_gradient_of_a_wrong_shape_is_refused(bad):
    def bwd(ctx, g):
        x, w = ctx.saved_tensors
        return bad(g * w), g * x
    for L in (torch, av):
        F = fn_class(L, _mul_f, bwd)
        with pytest.raises(RuntimeError, match="invalid gradient at index 0"):
            if L is torch:
                x = torch.tensor(X, requires_grad=True)
                F.apply(x, torch.tensor(W)).sum().backward()
            else:
                av.grad(lambda x, F=F: F.apply(x, av.tensor(W)).sum())(av.tensor(X))


def test_function_gradient_the_input_broadcasts_to_is_summed():
    def bwd(ctx, g):
        x, w = ctx.saved_tensors
        return (g * w).expand(4, 2, 3), (g * x).unsqueeze(0)
    assert_grads_match(lambda L, x, w: (fn_class(L, _mul_f, bwd).apply(x, w) * x).sum(), X, W)


def test_function_gradient_for_a_number_is_refused():
    def fwd(ctx, x, k):
        ctx.k = k
        return x * k

    def bwd(ctx, g):
        return g * ctx.k, g.sum()
    for L in (torch, av):
        F = fn_class(L, fwd, bwd)
        with pytest.raises(RuntimeError, match="different than None at position 2"):
            if L is torch:
                F.apply(torch.tensor(X, requires_grad=True), 3.0).sum().backward()
            else:
                av.grad(lambda x, F=F: F.apply(x, 3.0).sum())(av.tensor(X))


def _nd_f(ctx, x):
    i = x.argmax(dim=1).to(x.dtype)
    ctx.mark_non_differentiable(i)
    ctx.save_for_backward(x)
    return x.max(dim=1).values, i


def _nd_b(ctx, gm, gi):
    (x,) = ctx.saved_tensors
    onehot = (x == x.max(dim=1, keepdim=True).values).to(x.dtype)
    return onehot * gm.unsqueeze(1) + gi.unsqueeze(1) * 100.0  # gi must be zeros, as torch gives


def test_mark_non_differentiable_output_sends_no_gradient():
    def f(L, x, w):
        m, i = fn_class(L, _nd_f, _nd_b).apply(x)
        return (m * 2).sum() + (i * w[:, 0]).sum()
    assert_grads_match(f, X, W)


def test_function_non_tensor_outputs_and_kwargs():
    def fwd(ctx, x, scale=2.0):
        ctx.scale = scale
        return x * scale, 5

    def bwd(ctx, g, g_count):
        assert g_count is None
        return g * ctx.scale, None
    assert_grads_match(lambda L, x, w: (fn_class(L, fwd, bwd).apply(x, scale=3.0)[0] * w).sum(), X, W)
    assert fn_class(av, fwd, bwd).apply(av.tensor(X))[1] == 5


# -- requires_grad, detach_ ------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda L: L.tensor([1, 2], requires_grad=True),
    lambda L: L.zeros(2, dtype=L.int64, requires_grad=True),
    lambda L: L.arange(3, requires_grad=True),
    lambda L: L.full((2,), 3, requires_grad=True),
    lambda L: L.randint(0, 3, (2,), requires_grad=True),
    lambda L: L.zeros_like(L.tensor([1, 2]), requires_grad=True),
    lambda L: L.tensor([1, 2]).new_ones(2, requires_grad=True),
])
def test_requires_grad_of_an_integer_tensor_is_refused(make):
    for L in (torch, av):
        with pytest.raises(RuntimeError, match="floating point and complex dtype can require gradients"):
            make(L)
    assert av.zeros(2, dtype=av.float64, requires_grad=True).requires_grad


def test_requires_grad_flag_and_detach_of_a_view():
    for L in (torch, av):
        x = L.tensor(X)
        with pytest.raises(TypeError, match="must be bool"):
            x.requires_grad_("no")
        with pytest.raises(RuntimeError, match="Can't detach views in-place"):
            x[0].detach_()
        assert tuple(x.detach().detach_().shape) == (2, 3)
        assert x.argmax().requires_grad is False


# -- torch.autograd.functional ----------------------------------------------------------------------

def _call_functional(L, name, *args, **kw):
    out = getattr(L.autograd.functional, name)(*args, **kw)
    flat = []

    def walk(v):
        if isinstance(v, (tuple, list)):
            for u in v:
                walk(u)
        else:
            flat.append(np.asarray(v.detach().numpy() if isinstance(v, torch.Tensor) else v.numpy()))
    walk(out)
    return flat


@pytest.mark.parametrize("name,make", [
    ("jacobian", lambda L, t: (lambda x, y: (x * y.exp()).tanh(), (t(X3), t(V3)))),
    ("jacobian", lambda L, t: (lambda x: (x.sin(), x.sum()), t(X3))),
    ("hessian", lambda L, t: (lambda x, y: (x * y.exp() * x).sum(), (t(X3), t(V3)))),
    ("vjp", lambda L, t: (lambda x: x.sin() * x, t(X3), t(V3))),
    ("vjp", lambda L, t: (lambda x: (x.sin() * x).sum(), t(X3))),
    ("jvp", lambda L, t: (lambda x, y: x * y.cos(), (t(X3), t(V3)), (t(V3), t(X3)))),
    ("hvp", lambda L, t: (lambda x, y: (x * y.exp() * x).sum(), (t(X3), t(V3)), (t(V3), t(X3)))),
    ("vhp", lambda L, t: (lambda x: (x.sin() * x).sum(), t(X3), t(V3))),
])
def test_autograd_functional_matches_torch(name, make):
    want = _call_functional(torch, name, *make(torch, torch.tensor))
    got = _call_functional(av, name, *make(av, av.tensor))
    assert len(want) == len(got)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_autograd_functional_refusals():
    for L in (torch, av):
        F, x = L.autograd.functional, L.tensor(X3)
        with pytest.raises(RuntimeError, match="v can only be None"):
            F.vjp(lambda a: a.sin(), x)
        with pytest.raises(TypeError, match="must be either a Tensor or a tuple of Tensors"):
            F.jacobian(lambda a, b: a * b, [x, x])
        with pytest.raises(RuntimeError, match="single element"):
            F.hessian(lambda a: a.sin(), x)
    with pytest.raises(NotImplementedError, match="strict"):
        av.autograd.functional.jacobian(lambda a: a * 2, av.tensor(X3), strict=True)
    jac = av.compile(lambda x: av.autograd.functional.jacobian(lambda a: a.sin() * a, x))(av.tensor(X3))
    want = torch.autograd.functional.jacobian(lambda a: a.sin() * a, torch.tensor(X3))
    np.testing.assert_allclose(jac.numpy(), want.numpy(), rtol=1e-10)


def _dirty_f(ctx, x, w):
    x.add_(w)
    ctx.mark_dirty(x)
    ctx.save_for_backward(w)
    return x, x * w


def _dirty_b(ctx, g1, g2):
    (w,) = ctx.saved_tensors
    return g1 + g2 * w + 1.0, g1 * 0.5


def test_mark_dirty_makes_the_callers_tensor_the_output():
    def f(L, x, w):
        y = x * 1.0
        out, prod = fn_class(L, _dirty_f, _dirty_b).apply(y, w)
        assert out is y
        return (out * w).sum() + prod.sum() + (y * x).sum()
    assert_grads_match(f, X, W)

    def not_returned(ctx, x):
        x.mul_(2)
        ctx.mark_dirty(x)
        return x * 3
    for L in (torch, av):
        F = fn_class(L, not_returned, lambda ctx, g: g)
        with pytest.raises(RuntimeError, match="marked as dirty during the forward method were not returned"):
            if L is torch:
                F.apply(torch.tensor(X, requires_grad=True) * 1.0)
            else:
                av.grad(lambda x, F=F: F.apply(x * 1.0).sum())(av.tensor(X))


def test_tape_api_is_refused_by_name():
    x = av.tensor(X)
    for call, name in [(lambda: x.retain_grad(), "retain_grad"), (lambda: x.backward(), "backward"),
                       (lambda: x.register_hook(lambda g: g), "register_hook"),
                       (lambda: x.register_post_accumulate_grad_hook(print), "register_post_accumulate_grad_hook")]:
        with pytest.raises(RuntimeError, match=name):
            call()


def test_torch_autograd_submodules_import():
    from avalon.autograd.function import Function, once_differentiable
    from avalon.autograd.functional import hvp, jacobian
    from avalon.autograd.grad_mode import no_grad
    assert Function is av.autograd.Function and no_grad is av.no_grad
    assert jacobian is av.autograd.functional.jacobian and hvp is av.autograd.functional.hvp

    class Cube(Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x ** 3

        @staticmethod
        @once_differentiable
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 3 * x * x * g
    # first derivative as torch's; the second (torch refuses it) is the true one here, not a silent zero
    x = av.tensor(X3)
    np.testing.assert_allclose(av.grad(lambda a: Cube.apply(a).sum())(x).numpy(), 3 * X3 ** 2, rtol=1e-12)
    second = av.grad(lambda a, v: (av.grad(lambda b: Cube.apply(b).sum())(a) * v).sum())(x, av.tensor(V3))
    np.testing.assert_allclose(second.numpy(), 6 * X3 * V3, rtol=1e-12)

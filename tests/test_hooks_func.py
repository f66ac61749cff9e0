"""Forward hooks on `avalon.nn.Module` and `avalon.func` (functional_call, grad, grad_and_value, vjp,
stack_module_state), against torch's in float64 on random inputs.

Each program is written once over `lib` (torch.nn or avalon.nn) and `th` (torch or avalon), as the
ported programs of test_port_programs*.py are, and run on both from torch's weights."""
from __future__ import annotations

import contextlib
import functools
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import T, rel

import avalon as av
from avalon import func, nn, optim
from avalon.nn import functional as F
from avalon.utils.hooks import RemovableHandle

pytestmark = pytest.mark.usefixtures("module_kernel_cache")


def make_mlp(lib, th, n_in: int = 3, hidden: int = 5, n_out: int = 2):
    class MLP(lib.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = lib.Linear(n_in, hidden)
            self.fc2 = lib.Linear(hidden, n_out)

        def forward(self, x, scale=1.0):
            return self.fc2(th.tanh(self.fc1(x))) * scale

    return MLP()


def pair(make=make_mlp, seed: int = 0):
    torch.manual_seed(seed)
    theirs = make(torch.nn, torch).double()
    ours = make(nn, av).to(av.float64)
    av.nn.load_state_dict(ours, theirs.state_dict())
    return ours, theirs


def data(*shapes, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) + 0.1 for s in shapes]


def close(a, b, tol: float = 1e-12):
    assert rel(a, b) < tol, rel(a, b)


@contextlib.contextmanager
def strict():
    """Nothing captured or baked in while tracing: those warnings are errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# -- forward hooks ---------------------------------------------------------------------------------

def hooked_run(lib, th, model, x):
    """Hooks that change inputs, kwargs and outputs, with and without kwargs, on both sides."""
    model.fc1.register_forward_pre_hook(lambda m, args: args[0] * 2)  # a non-tuple: wrapped in one
    model.fc2.register_forward_hook(lambda m, args, out: out + args[0].sum())
    model.register_forward_pre_hook(lambda m, args, kwargs: (args, {**kwargs, "scale": 3.0}), with_kwargs=True)
    model.register_forward_hook(lambda m, args, kwargs, out: out * kwargs["scale"], with_kwargs=True)
    model.register_forward_pre_hook(lambda m, args: None)  # None: the arguments as they were
    return model(x, scale=0.5)


def test_hooks_change_inputs_kwargs_and_outputs():
    ours, theirs = pair()
    (x,) = data((4, 3))
    want = hooked_run(torch.nn, torch, theirs, T(x))
    got = hooked_run(nn, av, ours, av.tensor(x))
    close(got, want.detach())
    # the same hooks, traced: a compiled function and a compiled model run them while tracing
    with strict():
        close(av.compile(lambda m, x: m(x, scale=0.5), backend="numpy")(ours, av.tensor(x)), want.detach())
    plain, tplain = pair()
    for m in (plain, tplain):
        m.fc2.register_forward_hook(lambda m, args, out: out + args[0].sum())
    close(av.compile(plain, backend="numpy")(av.tensor(x)), tplain(T(x)).detach())


def order_run(lib, model, x):
    seen = []

    def mark(tag):
        return lambda *a: seen.append(tag)

    lin = model.fc1
    ha = lin.register_forward_hook(mark("a"))
    hb = lin.register_forward_hook(mark("b"))
    lin.register_forward_hook(mark("c"), prepend=True)
    lin.register_forward_pre_hook(mark("pre1"))
    lin.register_forward_pre_hook(mark("pre0"), prepend=True)
    model(x)
    seen.append("|")
    hb.remove()
    hb.remove()  # twice is fine
    model(x)
    seen.append("|")
    with lin.register_forward_hook(mark("ctx")) as h:
        assert isinstance(h.id, int)
        model(x)
    seen.append("|")
    model(x)
    return seen, ha.id < hb.id


def test_hook_order_prepend_remove_and_context_manager():
    ours, theirs = pair()
    (x,) = data((2, 3))
    got = order_run(nn, ours, av.tensor(x))
    want = order_run(torch.nn, theirs, T(x))
    assert got == want
    assert got[0] == ["pre0", "pre1", "c", "a", "b", "|", "pre0", "pre1", "c", "a", "|", "pre0", "pre1", "c", "a",
                      "ctx", "|", "pre0", "pre1", "c", "a"]
    assert isinstance(ours.fc1.register_forward_hook(lambda *a: None), RemovableHandle)


def always_call_run(lib, x):
    class Boom(lib.Module):
        def forward(self, x):
            raise ValueError("boom")

    m, seen = Boom(), []
    m.register_forward_hook(lambda mod, args, out: seen.append(("plain", out)))
    m.register_forward_hook(lambda mod, args, out: seen.append(("always", out)), always_call=True)
    m.register_forward_hook(lambda mod, args, kw, out: seen.append(("always_kw", sorted(kw), out)), always_call=True,
                            with_kwargs=True)

    def bad(mod, args, out):
        raise KeyError("in the hook")

    m.register_forward_hook(bad, always_call=True)
    with pytest.raises(ValueError, match="boom"), pytest.warns(UserWarning, match="always_call=True"):
        m(x)
    return seen


def test_always_call_hooks_run_when_forward_raises():
    (x,) = data((2, 3))
    assert always_call_run(nn, av.tensor(x)) == always_call_run(torch.nn, T(x)) == [("always", None),
                                                                                     ("always_kw", [], None)]


def test_pre_hook_with_kwargs_must_return_a_pair():
    for lib, th in ((nn, av), (torch.nn, torch)):
        m = lib.Linear(3, 2)
        m.register_forward_pre_hook(lambda mod, args, kwargs: args, with_kwargs=True)
        with pytest.raises(RuntimeError, match=r"forward pre-hook must return None or a tuple of \(new_args, "):
            m(th.ones(1, 3) if th is torch else av.ones(1, 3))


def extract(lib, model, feats: dict):
    """The feature-extraction pattern: a hook stores an activation the loss then reads."""
    return model.fc1.register_forward_hook(lambda m, args, out: feats.__setitem__("fc1", out))


def feature_loss(model, x, feats):
    out = model(x)
    return (out ** 2).mean() + (feats["fc1"] ** 2).mean()


def test_feature_extraction_eager_compiled_and_under_grad():
    ours, theirs = pair()
    x, x2 = data((4, 3), (4, 3))
    tf: dict = {}
    extract(torch.nn, theirs, tf)
    want = feature_loss(theirs, T(x), tf)
    tgrads = torch.autograd.grad(want, list(theirs.parameters()))
    want2 = feature_loss(theirs, T(x2), tf).item()

    of: dict = {}
    extract(nn, ours, of)
    close(feature_loss(ours, av.tensor(x), of), want.detach())  # eagerly

    with strict():
        step = av.compile(lambda model, x: feature_loss(model, x, of), backend="numpy")
        close(step(ours, av.tensor(x)), want.detach())
        close(step(ours, av.tensor(x2)), want2)  # a cache hit: the hook ran when tracing, its use is in the graph
        assert step.cache_info().misses == 1

        loss, grads = av.value_and_grad(lambda model, x: feature_loss(model, x, of))(ours, av.tensor(x))
    close(loss, want.detach())
    for (name, _), g in zip(theirs.named_parameters(), tgrads):
        close(grads[name], g)


def test_adding_or_removing_a_hook_traces_again():
    ours, _ = pair()
    (x,) = data((4, 3))
    f = av.compile(lambda model, x: model(x).sum(), backend="numpy")
    base = float(f(ours, av.tensor(x)))
    h = ours.fc2.register_forward_hook(lambda m, args, out: out * 2)
    assert float(f(ours, av.tensor(x))) == pytest.approx(2 * base, rel=1e-12)
    assert f.cache_info().misses == 2
    f(ours, av.tensor(x))
    assert f.cache_info().misses == 2 and f.cache_info().hits == 1
    h.remove()
    assert float(f(ours, av.tensor(x))) == pytest.approx(base, rel=1e-12)
    assert f.cache_info().misses == 2  # no hooks again: the first trace is reused
    pre = ours.register_forward_pre_hook(lambda m, args: (args[0] + 1,))
    f(ours, av.tensor(x))
    assert f.cache_info().misses == 3
    pre.remove()
    # a compiled model (its own tensors and settings come first in the signature) is guarded too
    g = av.compile(ours, backend="numpy")
    y = g(av.tensor(x))
    with ours.fc1.register_forward_pre_hook(lambda m, args: args[0] * 0.5):
        close(g(av.tensor(x)), ours(av.tensor(x)))
        assert g.cache_info().misses == 2
    close(g(av.tensor(x)), y)
    assert g.cache_info().misses == 2


def test_an_activation_a_hook_keeps_from_a_compiled_call_says_what_happened():
    """A hook storing an activation runs while tracing: what it keeps is a graph value that outlived
    its trace (JAX's leaked tracer). Reading it names that, and how to get the value instead."""
    ours, _ = pair()
    (x,) = data((4, 3))
    acts = {}
    ours.fc1.register_forward_hook(lambda m, args, out: acts.__setitem__("fc1", out.detach()))
    f = av.compile(lambda model, x: model(x).sum(), backend="numpy")
    f(ours, av.tensor(x))
    with pytest.raises(av.TracerError, match=r"kept after that trace ended by something outside .*forward hook"):
        acts["fc1"].numpy()
    ours(av.tensor(x))  # eagerly, the hook keeps a value
    close(acts["fc1"], ours.fc1(av.tensor(x)))


def test_hook_tables_are_not_state():
    """A hook object that keeps the activations it saw holds tensors; they are not the model's."""
    ours, theirs = pair()
    (x,) = data((4, 3))

    class Saver:
        def __init__(self):
            self.outputs = []

        def __call__(self, module, args, out):
            self.outputs.append(out)

    saver = Saver()
    names = [n for n, _ in ours.named_parameters()]
    ours.fc1.register_forward_hook(saver)
    ours.register_forward_pre_hook(lambda m, args: None, with_kwargs=False)
    ours(av.tensor(x))
    ours(av.tensor(x))
    assert len(saver.outputs) == 2
    assert [n for n, _ in ours.named_parameters()] == names
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    _, grads = av.value_and_grad(lambda m, x: m(x).sum())(ours, av.tensor(x))
    assert sorted(grads) == sorted(names)


@pytest.mark.parametrize("method", ["register_full_backward_hook", "register_backward_hook",
                                    "register_full_backward_pre_hook"])
def test_backward_hooks_say_how_to_get_an_activation_gradient(method):
    ours, _ = pair()
    with pytest.raises(RuntimeError, match=r"gradients are values.*split the model.*av\.grad"):
        getattr(ours, method)(lambda *a: None)


# -- functional_call ---------------------------------------------------------------------------------

def new_params(model, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(tuple(p.shape)) for k, p in model.named_parameters()}


def test_functional_call_matches_torch_and_restores():
    ours, theirs = pair()
    (x,) = data((4, 3))
    p = new_params(theirs)
    want = torch.func.functional_call(theirs, {k: T(v) for k, v in p.items()}, (T(x),), {"scale": 2.0})
    own = dict(ours.named_parameters())
    before = {k: v.numpy().copy() for k, v in own.items()}
    got = func.functional_call(ours, {k: av.tensor(v) for k, v in p.items()}, (av.tensor(x),), {"scale": 2.0})
    close(got, want.detach())
    assert all(a is b for a, b in zip(own.values(), dict(ours.named_parameters()).values()))
    assert all(np.array_equal(before[k], v.numpy()) for k, v in ours.named_parameters())
    # one key: the rest are the module's own; a bare argument is wrapped in a tuple; torch's older name
    one = {"fc2.bias": av.tensor(p["fc2.bias"])}
    want1 = torch.func.functional_call(theirs, {"fc2.bias": T(p["fc2.bias"])}, T(x))
    close(func.functional_call(ours, one, av.tensor(x)), want1.detach())
    close(av.nn.utils.stateless.functional_call(ours, one, av.tensor(x)), want1.detach())
    from avalon.nn.utils.stateless import functional_call
    close(functional_call(ours, one, (av.tensor(x),)), want1.detach())
    assert av.func.functional_call is func.functional_call


def test_functional_call_restores_after_an_exception():
    ours, _ = pair()
    p = {k: av.tensor(v) for k, v in new_params(ours).items()}
    own = dict(ours.named_parameters())
    with pytest.raises(Exception, match="do not align"):
        func.functional_call(ours, p, (av.ones(4, 7, dtype=p["fc1.weight"].dtype),))  # a shape error inside forward
    assert dict(ours.named_parameters()) == own and all(a is b for a, b in zip(own.values(),
                                                                                dict(ours.named_parameters()).values()))
    with pytest.raises(AttributeError):
        func.functional_call(ours, {"fc1.weight": p["fc1.weight"], "nope.weight": p["fc2.weight"]},
                             (av.ones(4, 3, dtype=av.float64),))
    assert ours.fc1.weight is own["fc1.weight"]
    assert "extra" not in vars(ours)
    func.functional_call(ours, {"extra": av.ones(2)}, (av.ones(1, 3, dtype=ours.fc1.weight.dtype),))  # not strict
    assert "extra" not in vars(ours)


def test_functional_call_strict_wording():
    ours, theirs = pair()
    p = new_params(theirs)
    del p["fc1.bias"]
    p["fc3.weight"] = p["fc2.weight"]
    msgs = []
    for model, mk, x in ((theirs, T, T(np.ones((1, 3)))), (ours, av.tensor, av.ones(1, 3, dtype=av.float64))):
        with pytest.raises(RuntimeError) as e:
            func.functional_call(model, {k: mk(v) for k, v in p.items()}, (x,), strict=True) if model is ours else \
                torch.func.functional_call(model, {k: mk(v) for k, v in p.items()}, (x,), strict=True)
        msgs.append(str(e.value))
    assert msgs[0] == msgs[1]
    assert "Unexpected key(s): 'fc3.weight'." in msgs[1] and "Missing key(s): 'fc1.bias'." in msgs[1]


def make_tied(lib, th):
    class Tied(lib.Module):
        def __init__(self):
            super().__init__()
            self.emb = lib.Linear(3, 4, bias=False)
            self.dec = lib.Linear(3, 4)
            self.dec.weight = self.emb.weight

        def forward(self, x):
            return self.emb(x) * self.dec(x)

    return Tied()


def test_functional_call_tie_weights():
    ours, theirs = pair(make_tied)
    (x, w) = data((2, 3), (4, 3))
    for tie in (True, False):
        want = torch.func.functional_call(theirs, {"emb.weight": T(w)}, (T(x),), tie_weights=tie)
        got = func.functional_call(ours, {"emb.weight": av.tensor(w)}, (av.tensor(x),), tie_weights=tie)
        close(got, want.detach())
    assert ours.dec.weight is ours.emb.weight
    two = (av.tensor(w), av.tensor(w * 2))
    with pytest.raises(ValueError, match="which are tied. Consider using tie_weights=False"):
        func.functional_call(ours, {"emb.weight": two[0], "dec.weight": two[1]}, (av.tensor(x),))
    func.functional_call(ours, {"emb.weight": two[0], "dec.weight": two[0]}, (av.tensor(x),))  # the same: fine


@functools.cache
def bn_net_class(lib):
    """One class per library (stack_module_state wants models of one class)."""
    class Net(lib.Module):
        def __init__(self):
            super().__init__()
            self.fc = lib.Linear(3, 4)
            self.bn = lib.BatchNorm1d(4)

        def forward(self, x):
            return self.bn(self.fc(x))

    return Net


def make_bn(lib, th):
    return bn_net_class(lib)().eval()


def test_functional_call_tuple_of_dicts():
    ours, theirs = pair(make_bn)
    (x, mean, var) = data((5, 3), (4,), (4,))
    var = np.abs(var) + 0.5
    p = new_params(theirs)
    want = torch.func.functional_call(theirs, ({k: T(v) for k, v in p.items()},
                                               {"bn.running_mean": T(mean), "bn.running_var": T(var)}), (T(x),))
    got = func.functional_call(ours, ({k: av.tensor(v) for k, v in p.items()},
                                      {"bn.running_mean": av.tensor(mean), "bn.running_var": av.tensor(var)}),
                               (av.tensor(x),))
    close(got, want.detach())
    assert isinstance(ours.bn.running_mean, av.Buffer)
    with pytest.raises(ValueError, match="appeared in multiple dictionaries"):
        func.functional_call(ours, ({"fc.bias": av.ones(4)}, {"fc.bias": av.ones(4)}), (av.tensor(x),))


def test_gradients_with_respect_to_a_params_dict():
    ours, theirs = pair()
    x, y = data((6, 3), (6, 2))
    p = new_params(theirs)
    tp = {k: T(v).requires_grad_() for k, v in p.items()}
    tloss = TF.mse_loss(torch.func.functional_call(theirs, tp, (T(x),)), T(y))
    tg = dict(zip(tp, torch.autograd.grad(tloss, list(tp.values()))))

    def loss_fn(params, x, y):
        return F.mse_loss(func.functional_call(ours, params, (x,)), y)

    ap = {k: av.tensor(v) for k, v in p.items()}
    with strict():
        loss, g = av.value_and_grad(loss_fn)(ap, av.tensor(x), av.tensor(y))
        g2 = func.grad(loss_fn)(ap, av.tensor(x), av.tensor(y))
    close(loss, tloss.detach())
    assert sorted(g) == sorted(tg) == sorted(g2)
    for k in tg:
        close(g[k], tg[k])
        close(g2[k], tg[k])


# -- MAML: second order through functional_call -----------------------------------------------------

INNER_LR = 0.1


def make_regressor(lib, th):
    return lib.Sequential(lib.Linear(2, 6), lib.Tanh(), lib.Linear(6, 1))


def maml_tasks(n: int = 3):
    return [data((5, 2), (5, 1), (5, 2), (5, 1), seed=10 + i) for i in range(n)]


def torch_maml(model, tasks):
    params = dict(model.named_parameters())
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for xs, ys, xq, yq in tasks:
        inner = TF.mse_loss(torch.func.functional_call(model, params, (T(xs),)), T(ys))
        g = torch.autograd.grad(inner, list(params.values()), create_graph=True)
        adapted = {k: p - INNER_LR * gi for (k, p), gi in zip(params.items(), g)}
        loss = TF.mse_loss(torch.func.functional_call(model, adapted, (T(xq),)), T(yq))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("mode", ["eager", "numpy"])
def test_maml_matches_torch(mode):
    ours, theirs = pair(make_regressor, seed=3)
    tasks = maml_tasks()
    want = torch_maml(theirs, tasks)

    def inner_loss(params, x, y):
        return F.mse_loss(func.functional_call(ours, params, (x,)), y)

    def outer_loss(params, xs, ys, xq, yq):
        g = av.grad(inner_loss)(params, xs, ys)
        adapted = {k: p - INNER_LR * g[k] for k, p in params.items()}
        return F.mse_loss(func.functional_call(ours, adapted, (xq,)), yq)

    def step(params, opt, xs, ys, xq, yq):
        loss, grads = av.value_and_grad(outer_loss)(params, xs, ys, xq, yq)
        opt.step(grads)
        return loss

    params = dict(ours.named_parameters())
    opt = optim.Adam(ours.parameters(), lr=0.01)
    run = step if mode == "eager" else av.compile(step, backend="numpy")
    with strict():
        got = [float(run(params, opt, *map(av.tensor, task))) for task in tasks]
    assert np.allclose(got, want, rtol=1e-10, atol=0), (got, want)
    sd = theirs.state_dict()
    for k, v in ours.state_dict().items():
        close(v, sd[k], 1e-10)
    if mode == "numpy":
        assert run.cache_info().misses == 1


# -- stack_module_state, grad, grad_and_value, vjp -----------------------------------------------------

def test_stack_module_state():
    pairs = [pair(make_bn, seed=s) for s in range(3)]
    params, buffers = func.stack_module_state([o for o, _ in pairs])
    tparams, tbuffers = torch.func.stack_module_state([t for _, t in pairs])
    assert list(params) == list(tparams) and list(buffers) == list(tbuffers)
    for k in tparams:
        close(params[k], tparams[k].detach())
        assert params[k].requires_grad
    for k in tbuffers:
        close(buffers[k], tbuffers[k])
    assert params["fc.weight"] is not pairs[0][0].fc.weight
    with pytest.raises(RuntimeError, match="same training/eval mode"):
        func.stack_module_state([pairs[0][0], make_bn(nn, av).train()])
    with pytest.raises(RuntimeError, match="at least one model"):
        func.stack_module_state([])


def shape_of(x):
    """A pytree's structure, its tensors as '*'."""
    if isinstance(x, (tuple, list)):
        return type(x).__name__, [shape_of(v) for v in x]
    if isinstance(x, dict):
        return {k: shape_of(v) for k, v in x.items()}
    return "*"


def leaves(x):
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in leaves(v)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in leaves(v)]
    return [x]


def fn_of(th):
    def f(x, d):
        return (th.sin(x) @ d["w"]).pow(2).sum() + (d["v"][0] * x).sum()
    return f


def test_grad_and_grad_and_value_match_torch_func():
    a, b, c = data((3, 4), (4,), (4,), seed=5)
    args = lambda mk: (mk(a), {"w": mk(b), "v": [mk(c)]})  # noqa: E731
    for argnums in (0, 1, (0, 1)):
        got = func.grad(fn_of(av), argnums=argnums)(*args(av.tensor))
        want = torch.func.grad(fn_of(torch), argnums=argnums)(*args(T))
        assert shape_of(got) == shape_of(want)
        for g, w in zip(leaves(got), leaves(want)):
            close(g, w)

    def with_aux(th):
        return lambda x: ((x.exp() * x).sum(), x * 2)

    (ga, (va, aux)) = func.grad_and_value(with_aux(av), has_aux=True)(av.tensor(a))
    (gt, (vt, auxt)) = torch.func.grad_and_value(with_aux(torch), has_aux=True)(T(a))
    close(ga, gt)
    close(va, vt)
    close(aux, auxt)
    g, aux = func.grad(with_aux(av), has_aux=True)(av.tensor(a))
    close(g, gt)
    gv, v = func.grad_and_value(lambda x: (x ** 3).sum())(av.tensor(a))
    close(gv, 3 * a ** 2)
    close(v, (a ** 3).sum())
    # a Buffer is differentiated too, as torch.func differentiates any tensor it is given
    close(func.grad(lambda t: (t * t).sum())(av.Buffer(a)), 2 * a)
    with pytest.raises(RuntimeError, match="to return a scalar Tensor"):
        func.grad(lambda x: x * 2)(av.tensor(a))


def test_vjp_matches_torch_func():
    a, b, c1, c2, c3 = data((3, 4), (4,), (3, 4), (4,), (3, 4), seed=6)

    def f(x, y):
        return x.sin() * y, x.cos().sum(0) * y

    out, fn = func.vjp(f, av.tensor(a), av.tensor(b))
    tout, tfn = torch.func.vjp(f, T(a), T(b))
    for o, t in zip(out, tout):
        close(o, t)
    got, want = fn((av.tensor(c1), av.tensor(c2))), tfn((T(c1), T(c2)))
    assert isinstance(got, tuple) and len(got) == 2
    for g, w in zip(got, want):
        close(g, w)

    def g_aux(x):
        return x.tanh() * 3, {"x": x}

    out, fn, aux = func.vjp(g_aux, av.tensor(a), has_aux=True)
    tout, tfn, taux = torch.func.vjp(g_aux, T(a), has_aux=True)
    close(out, tout)
    close(aux["x"], taux["x"])
    (got,), (want,) = fn(av.tensor(c3)), tfn(T(c3))
    close(got, want)
    with pytest.raises(RuntimeError, match="Mismatch in shape"):
        fn(av.ones(4))


def test_replace_all_batch_norm_modules_lets_vmap_map_a_training_model(rng):
    """torch.func.replace_all_batch_norm_modules_: no running statistics (the same state-dict keys as
    torch's afterwards), batch statistics per example under vmap, as torch.func.vmap gives."""
    def make(lib):
        return lib.Sequential(lib.Conv2d(1, 3, 3), lib.BatchNorm2d(3), lib.ReLU(), lib.Flatten(), lib.Linear(48, 2))
    torch.manual_seed(0)
    theirs, ours = make(torch.nn).double(), make(nn).to(av.float64)
    av.nn.load_state_dict(ours, theirs.state_dict())
    assert torch.func.replace_all_batch_norm_modules_(theirs) is theirs
    assert func.replace_all_batch_norm_modules_(ours) is ours
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    x = rng.standard_normal((4, 2, 1, 6, 6))
    params = {k: v.detach() for k, v in theirs.named_parameters()}
    want = torch.func.vmap(lambda p, xb: torch.func.functional_call(theirs, p, (xb,)), in_dims=(None, 0))(
        params, torch.tensor(x))
    got = func.vmap(lambda p, xb: func.functional_call(ours, p, (xb,)), in_dims=(None, 0))(
        dict(ours.named_parameters()), av.tensor(x))
    assert rel(got.numpy(), want.detach().numpy()) < 1e-12


def test_linearize_functionalize_and_debug_unwrap(rng):
    x, t = rng.standard_normal(3), rng.standard_normal(3)
    out, jvp_fn = func.linearize(lambda x: av.sin(x) * x, av.tensor(x))
    tout, tjvp = torch.func.linearize(lambda x: torch.sin(x) * x, torch.tensor(x))
    assert rel(out.numpy(), tout.numpy()) < 1e-14
    assert rel(jvp_fn(av.tensor(t)).numpy(), tjvp(torch.tensor(t)).numpy()) < 1e-14

    def f(a):
        b = a.clone()
        b.add_(1.0)
        return b * 2
    assert rel(func.functionalize(f)(av.tensor(x)).numpy(), (x + 1) * 2) < 1e-14
    with pytest.raises(RuntimeError, match="invalid argument for remove"):
        func.functionalize(f, remove="views")
    y = av.tensor(x)
    assert func.debug_unwrap(y) is y

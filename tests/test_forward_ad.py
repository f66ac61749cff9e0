"""Forward-mode autodiff: `avalon.autodiff.jvp_graph` with its JVP rule table, and the torch.func API
built on it (`avalon.func.jvp`, `jacfwd`, `hessian`).

Every op's rule runs on its sample graph (tests/mlir_samples.py), made float64, and is checked two
ways: against central differences (the definition of a derivative) and against the op's VJP rule by
the transpose identity `<J t, u> = <t, J^T u>` (so the two tables follow the same conventions at
kinks and ties). Inputs keep away from kinks (0 for relu/abs/sign/casts, ties in maximum, max,
max_pool2d and sort); positive operands where an op needs them. Then the user-facing functions
against torch.func on small models, composed with vmap, av.grad and av.compile.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from mlir_samples import all_samples

import avalon as av
from avalon import func, nn
from avalon.autodiff import JVP, GradError, grad_graph, jvp_graph
from avalon.autodiff.rules import NOT_IMPLEMENTED
from avalon.ir import Builder, Graph, interpret, parse, print_graph, verify
from avalon.ir import dtypes as dt
from avalon.ir.clone import inline_regions

SAMPLES = {n: g for n, g in all_samples().items() if n != "random" and any(v.dtype.is_float for v in g.inputs)}
POSITIVE = {"log", "sqrt", "rsqrt", "pow"}  # (pow: x > 0, so both partial derivatives exist)
EPS = 1e-6


def _retype(block) -> None:
    for a in block.args:
        if a.dtype.is_float:
            a.type = a.type.with_dtype(dt.float64)
    for op in block.ops:
        for r in op.results:
            if r.dtype.is_float:
                r.type = r.type.with_dtype(dt.float64)
        d = op.attrs.get("dtype")
        if d is not None and dt.dtype(d).is_float:
            op.attrs["dtype"] = dt.float64
        for region in op.regions:
            _retype(region)


def _f64(g: Graph) -> Graph:
    """The sample with every floating-point type float64 (casts to f16 become f64 -> f64)."""
    g = g.clone()
    _retype(g.body)
    verify(g)
    return g


def _inputs(g: Graph, name: str, rng: np.random.Generator) -> list[np.ndarray]:
    out = []
    for v in g.inputs:
        t = v.type
        if t.dtype.is_float:
            z = rng.standard_normal(t.shape)
            out.append(np.abs(z) + 0.5 if name in POSITIVE else np.sign(z) * (np.abs(z) + 0.1))
        elif t.dtype.is_int:
            out.append(rng.integers(0, 4, size=t.shape).astype(t.dtype.np))
        else:
            out.append(rng.random(t.shape) < 0.5)
    return out


def _pairing(g: Graph, name: str) -> Graph:
    """`sum_k <output_k, u_k>` over the float outputs, the u_k new inputs after g's."""
    p = g.clone()
    b = Builder(p)
    total = None
    for k, v in enumerate([v for v in p.outputs if v.dtype.is_float]):
        u = p.add_input(v.type, f"u{k}")
        term = b("sum", b("mul", v, u), axes=list(range(v.type.rank)))
        total = term if total is None else b("add", total, term)
    p.set_outputs([total])
    return p


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_op_jvp_matches_central_differences_and_its_vjp(name):
    if name == "bitcast":  # a reinterpretation of bits (no float64 form of its sample): no derivative, as torch's
        jg = jvp_graph(SAMPLES[name], [0])  # view(dtype); the float result's tangent is a zero constant
        verify(jg)
        tangent = jg.outputs[len(SAMPLES[name].outputs):]
        assert tangent and all(v.op is not None and v.op.name == "constant" and v.op.attrs["value"] == 0.0
                               for v in tangent)
        return
    if name in NOT_IMPLEMENTED:  # (a derivative Avalon does not compute: forward mode says so)
        with pytest.raises(GradError, match="not implemented"):
            jvp_graph(_f64(SAMPLES[name]), [0])
        return
    g = _f64(SAMPLES[name])
    if name == "custom_vjp":  # (it has no jvp region, which forward mode refuses: its forward's ops here)
        inline_regions(g.body, "custom_vjp")
    rng = np.random.default_rng(0)
    wrt = [i for i, v in enumerate(g.inputs) if v.dtype.is_float]
    jg = jvp_graph(g, wrt)
    verify(jg)
    assert [v.type for v in jg.inputs] == [v.type for v in g.inputs] + [g.inputs[i].type for i in wrt]
    floats = [k for k, v in enumerate(g.outputs) if v.dtype.is_float]
    assert [v.type for v in jg.outputs] == [v.type for v in g.outputs] + [g.outputs[k].type for k in floats]

    xs = _inputs(g, name, rng)
    ts = [rng.standard_normal(g.inputs[i].shape) for i in wrt]
    got = interpret(jg, *xs, *ts)
    n = len(g.outputs)
    for k, y in enumerate(interpret(g, *xs)):
        np.testing.assert_array_equal(got[k], y)  # the primal outputs are untouched
    jt = got[n:]

    plus, minus = list(xs), list(xs)
    for i, t in zip(wrt, ts):
        plus[i], minus[i] = xs[i] + EPS * t, xs[i] - EPS * t
    fp, fm, f0 = interpret(g, *plus), interpret(g, *minus), interpret(g, *xs)
    for j, k in enumerate(floats):
        finite = np.isfinite(f0[k])  # (index_max: a row no value reaches is -inf, its tangent 0)
        fd = np.where(finite, (np.where(finite, fp[k], 0) - np.where(finite, fm[k], 0)) / (2 * EPS), 0.0)
        if name == "stop_gradient":
            fd = np.zeros_like(fd)  # it blocks derivatives by definition, as jax.lax.stop_gradient's jvp
        tol = 1e-6 * (1 + np.abs(fd).max(initial=0))
        assert np.abs(jt[j] - fd).max(initial=0) <= tol, f"{name}: output {k} against central differences"

    if name != "stop_gradient" and floats:
        _check_transpose(g, name, xs, ts, jt, rng)


def _check_transpose(g: Graph, name: str, xs: list, ts: list, jt: list, rng: np.random.Generator) -> None:
    """<J t, u> = <t, J^T u>, J^T u from the VJP rules (grad_graph of the pairing with u)."""
    wrt = [i for i, v in enumerate(g.inputs) if v.dtype.is_float]
    us = [rng.standard_normal(v.shape) for v in g.outputs if v.dtype.is_float]
    if name == "eig":  # (no cotangent on Im V: a loss of the eigenvectors' phase has no gradient, as in torch)
        us = [np.concatenate([u[..., :2 + u.shape[-1], :], 0 * u[..., 2 + u.shape[-1]:, :]], -2) for u in us]
    jtu = interpret(grad_graph(_pairing(g, name), wrt), *xs, *us)[1:1 + len(wrt)]
    lhs = sum(float(np.sum(a * u)) for a, u in zip(jt, us))
    rhs = sum(float(np.sum(t * a)) for t, a in zip(ts, jtu))
    assert abs(lhs - rhs) <= 1e-9 * (1 + abs(lhs)), f"{name}: <J t, u> = {lhs} but <t, J^T u> = {rhs}"


@pytest.mark.parametrize("name", ["relu", "abs", "maximum", "minimum", "max", "max_pool2d", "pow", "sort",
                                  "index_max"])
def test_conventions_at_kinks_and_ties_are_the_vjp_rules_transposed(name):
    """Inputs on the kinks: small integers (zeros, ties everywhere; pow's 0 ** 0 and 0 ** y). The
    VJP rules follow torch there (tests/test_autodiff_rules.py); the JVP rules are their transposes."""
    g = _f64(SAMPLES[name])
    rng = np.random.default_rng(1)
    lo, hi = (0, 3) if name == "pow" else (-1, 2)
    xs = [rng.integers(lo, hi, v.shape).astype(np.float64) if v.dtype.is_float else x
          for v, x in zip(g.inputs, _inputs(g, name, rng))]
    if name in ("maximum", "minimum"):
        xs[1][0] = xs[0][0]  # a row of ties
    wrt = [i for i, v in enumerate(g.inputs) if v.dtype.is_float]
    ts = [rng.standard_normal(g.inputs[i].shape) for i in wrt]
    jt = interpret(jvp_graph(g, wrt), *xs, *ts)[len(g.outputs):]
    assert all(np.isfinite(t).all() for t in jt)
    _check_transpose(g, name, xs, ts, jt, rng)


def test_every_differentiable_op_has_a_rule_or_is_exempt():
    from avalon.autodiff import NON_DIFFERENTIABLE, VJP
    assert set(VJP) <= set(JVP) | NON_DIFFERENTIABLE  # every op with a gradient has a tangent


# -- the transform itself ---------------------------------------------------------------------------

def _graph() -> Graph:
    return parse("""
func @f(%x: tensor<3xf64>, %i: tensor<3xi64>, %y: tensor<3xf64>) -> (tensor<3xf64>, tensor<i64>, tensor<3xf64>) {
  %0 = sin %x : tensor<3xf64>
  %1 = mul %0, %y : tensor<3xf64>
  %2 = argmax %x {axis = 0} : tensor<i64>
  %3 = cast %i {dtype = f64} : tensor<3xf64>
  return %1, %2, %3
}""")


def test_jvp_graph_layout_round_trips_and_refuses_what_has_no_tangent():
    g = _graph()
    jg = jvp_graph(g, [0])
    verify(jg)
    assert jg.name == "jvp_f" and [v.name for v in jg.inputs] == ["x", "i", "y", "x_dot"]
    assert len(jg.outputs) == 5  # 3 outputs, then tangents of the two float ones (the i64 gets none)
    again = parse(print_graph(jg))
    x, y, t = np.array([0.1, 0.2, 0.3]), np.array([1.0, 2.0, 3.0]), np.array([1.0, -1.0, 0.5])
    i = np.arange(3)
    for got in (interpret(jg, x, i, y, t), interpret(again, x, i, y, t)):
        np.testing.assert_allclose(got[3], np.cos(x) * y * t)
        np.testing.assert_array_equal(got[4], np.zeros(3))  # independent of x: zeros
    only = jvp_graph(g, [0, 2], outputs=[0], name="dx")
    assert only.name == "dx" and len(only.outputs) == 4
    with pytest.raises(GradError, match="only floating-point inputs"):
        jvp_graph(g, [1])
    with pytest.raises(GradError, match="no tangent"):
        jvp_graph(g, [0], outputs=[1])
    with pytest.raises(GradError, match="out of range"):
        jvp_graph(g, [7])


def _exp_function(lib):
    """torch.func's style of autograd.Function (forward without ctx, setup_context), with a forward-mode
    rule that is deliberately 3x the true one, so a result that used it shows."""
    class Exp(lib.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(x):
            return lib.exp(x)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(output)
            ctx.save_for_forward(output)

        @staticmethod
        def backward(ctx, g):
            (r,) = ctx.saved_tensors
            return g * r

        @staticmethod
        def jvp(ctx, t):
            (r,) = ctx.saved_tensors
            return 3.0 * t * r
    return Exp


def test_forward_mode_uses_a_user_defined_jvp_and_refuses_a_function_without_one(rng):
    """torch's `Function.jvp` (what save_for_forward kept as ctx.saved_tensors) is the tangent rule, in
    jvp, jacfwd, compiled and under a gradient (reverse over forward reaches the input through the
    saved values); a Function with only a backward is refused (torch and JAX refuse it too), since
    its backward may deliberately differ from its forward's derivative (a straight-through estimator)."""
    ours, theirs = _exp_function(av), _exp_function(torch)
    x, t = rng.standard_normal(4), rng.standard_normal(4)
    cases = [
        (lambda: func.jvp(ours.apply, (av.tensor(x),), (av.tensor(t),))[1],
         lambda: torch.func.jvp(theirs.apply, (_t(x),), (_t(t),))[1]),
        (lambda: func.jacfwd(ours.apply)(av.tensor(x)), lambda: torch.func.jacfwd(theirs.apply)(_t(x))),
        (lambda: av.compile(lambda x, t: func.jvp(ours.apply, (x,), (t,))[1])(x, t),
         lambda: torch.func.jvp(theirs.apply, (_t(x),), (_t(t),))[1]),
        (lambda: av.grad(lambda x, t: func.jvp(ours.apply, (x,), (t,))[1].sum())(av.tensor(x), av.tensor(t)),
         lambda: torch.func.grad(lambda x: torch.func.jvp(theirs.apply, (x,), (_t(t),))[1].sum())(_t(x))),
        (lambda: av.grad(lambda x: ours.apply(x).sum())(av.tensor(x)),
         lambda: torch.func.grad(lambda x: theirs.apply(x).sum())(_t(x))),
    ]
    for got, want in cases:
        np.testing.assert_allclose(got().numpy(), want().numpy(), rtol=1e-12)

    class Round(av.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.round()

        @staticmethod
        def backward(ctx, g):
            return g  # straight through: not the forward's derivative
    with pytest.raises(GradError, match=r"reached Round .*no forward-mode rule: give the autograd.Function a `jvp"):
        func.jvp(Round.apply, (av.tensor(x),), (av.tensor(t),))
    with pytest.raises(GradError, match="no forward-mode rule"):
        jvp_graph(all_samples()["custom_vjp"], [0])


# -- torch.func's API against torch.func --------------------------------------------------------------

def _t(x):
    return torch.tensor(np.asarray(x.numpy() if isinstance(x, av.Tensor) else x))


def _close(ours, theirs, tol=1e-10):
    a, b = np.asarray(ours.numpy()), theirs.detach().numpy()
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.abs(a - b).max(initial=0) <= tol * max(1.0, np.abs(b).max(initial=0))


def _models():
    def make(lib):
        class Conv(lib.Module):
            def __init__(self):
                super().__init__()
                self.conv = lib.Conv2d(2, 3, 3, padding=1)
                self.pool = lib.MaxPool2d(2)
                self.fc = lib.Linear(12, 3)

            def forward(self, x):
                return self.fc(self.pool(self.conv(x).tanh()).flatten(1))
        return (lib.Sequential(lib.Linear(4, 5), lib.Tanh(), lib.Linear(5, 2)).double(), Conv().double())
    torch.manual_seed(0)
    theirs = make(torch.nn)
    ours = make(nn)
    for o, t in zip(ours, theirs):
        av.nn.load_state_dict(o, t.state_dict())
    return ours, theirs


def test_jvp_jacfwd_and_hessian_of_models_match_torch_func():
    (mlp, conv), (tmlp, tconv) = _models()
    rng = np.random.default_rng(3)
    x, tx = rng.standard_normal((2, 4)), rng.standard_normal((2, 4))
    img, timg = rng.standard_normal((1, 2, 4, 4)), rng.standard_normal((1, 2, 4, 4))

    # a model as the function: its own parameters are constants
    for m, tm, a, ta in ((mlp, tmlp, x, tx), (conv, tconv, img, timg)):
        out, jt = func.jvp(m, (av.tensor(a),), (av.tensor(ta),))
        want_out, want = torch.func.jvp(tm, (_t(a),), (_t(ta),))
        _close(out, want_out)
        _close(jt, want)
        _close(func.jacfwd(m)(av.tensor(a)), torch.func.jacfwd(tm)(_t(a)))

    # the parameters as primals too (functional_call), a dict of tangents
    params = {k: av.tensor(v.detach().numpy()) for k, v in tmlp.named_parameters()}
    tparams = {k: v.detach() for k, v in tmlp.named_parameters()}
    dirs = {k: rng.standard_normal(tuple(v.shape)) for k, v in tparams.items()}
    out, jt = func.jvp(lambda p, x: func.functional_call(mlp, p, (x,)), (params, av.tensor(x)),
                       ({k: av.tensor(v) for k, v in dirs.items()}, av.tensor(tx)))
    _, want = torch.func.jvp(lambda p, x: torch.func.functional_call(tmlp, p, (x,)), (tparams, _t(x)),
                             ({k: _t(v) for k, v in dirs.items()}, _t(tx)))
    _close(jt, want)

    # the Hessian of a scalar loss w.r.t. the parameters, jacfwd(jacrev) as torch's
    def loss(lib, fc):
        return lambda p, x: (fc(tmlp if lib is torch else mlp, p, (x,)) ** 2).sum()

    h = func.hessian(loss(av, func.functional_call), argnums=0)(params, av.tensor(x))
    want = torch.func.hessian(loss(torch, torch.func.functional_call), argnums=0)(tparams, _t(x))
    for a in want:
        for b in want[a]:
            _close(h[a][b], want[a][b])


def test_jvp_options_match_torch_func():
    x, t = np.array([0.3, -1.2, 2.0]), np.array([1.0, 0.5, -2.0])

    def f(lib):
        return lambda x: ((lib.sin(x), x.argmax()), {"aux": x * 2})

    out, jt, aux = func.jvp(f(av), (av.tensor(x),), (av.tensor(t),), has_aux=True)
    wout, wjt, waux = torch.func.jvp(f(torch), (_t(x),), (_t(t),), has_aux=True)
    _close(jt[0], wjt[0])
    _close(jt[1], wjt[1])  # an integer output's tangent: zeros of its type
    assert jt[1].dtype == av.int64
    _close(aux["aux"], waux["aux"])
    jac, aux = func.jacfwd(lambda x: (av.sin(x), x.sum()), has_aux=True)(av.tensor(x))
    wjac, waux = torch.func.jacfwd(lambda x: (torch.sin(x), x.sum()), has_aux=True)(_t(x))
    _close(jac, wjac)
    _close(aux, waux)
    with pytest.raises(RuntimeError, match="independent of the inputs"):
        func.jvp(lambda x: av.ones(3) + x.argmax(), (av.tensor(x),), (av.tensor(t),), strict=True)
    with pytest.raises(RuntimeError, match="same python structure"):
        func.jvp(av.sin, (av.tensor(x),), ())
    f32 = func.jvp(av.sin, (av.tensor(x.astype(np.float32)),), (av.tensor(t),))[1]  # tangent cast to f32
    assert f32.dtype == av.float32


# -- composition: vmap, av.grad, av.compile --------------------------------------------------------------

def _f(x, w):
    return av.tanh(x @ w).sum() + (av.sin(x) ** 2).sum()


def test_jvp_composes_with_vmap_and_grad():
    """(Tensors are passed as arguments, not closed over: closed-over arrays are baked into each
    graph, which the driver warns about.)"""
    rng = np.random.default_rng(5)
    xs, ts, w = rng.standard_normal((4, 3)), rng.standard_normal((4, 3)), rng.standard_normal((3, 2))
    W, zero = av.tensor(w), av.zeros(3, 2, dtype=av.float64)
    tw = _t(w)

    # vmap of jvp: per-example directional derivatives, one batched graph
    def one(x, t, w):
        return func.jvp(lambda x, w: av.tanh(x @ w), (x, w), (t, av.zeros_like(w)))[1]

    batched = av.vmap(one, in_dims=(0, 0, None))(av.tensor(xs), av.tensor(ts), W)
    want = torch.func.vmap(lambda x, t: torch.func.jvp(lambda x: torch.tanh(x @ tw), (x,), (t,))[1])(_t(xs), _t(ts))
    _close(batched, want)
    # jvp of a vmapped function
    mapped = av.vmap(lambda x, w: av.tanh(x @ w), in_dims=(0, None))
    _close(func.jvp(mapped, (av.tensor(xs), W), (av.tensor(ts), zero))[1], want)

    # forward-over-reverse Hessian-vector product equals reverse-over-reverse (and torch's)
    x, v = av.tensor(xs[0]), av.tensor(ts[0])
    _, (hvp, _) = func.jvp(av.grad(_f, argnums=(0, 1)), (x, W), (v, zero))
    rr = av.grad(lambda x, w, v: (av.grad(_f)(x, w) * v).sum())(x, W, v)
    np.testing.assert_allclose(hvp.numpy(), rr.numpy(), rtol=1e-12, atol=1e-12)

    def tf(x):
        return torch.tanh(x @ tw).sum() + (torch.sin(x) ** 2).sum()

    _close(hvp, torch.func.jvp(torch.func.grad(tf), (_t(xs[0]),), (_t(ts[0]),))[1])
    # reverse-over-forward: the gradient of a directional derivative is the same product
    ro = av.grad(lambda x, w, v: func.jvp(_f, (x, w), (v, av.zeros_like(w)))[1])(x, W, v)
    np.testing.assert_allclose(ro.numpy(), rr.numpy(), rtol=1e-12, atol=1e-12)


def test_jvp_inside_compile_is_inlined_into_one_graph():
    rng = np.random.default_rng(6)
    x, t, w = rng.standard_normal(3), rng.standard_normal(3), rng.standard_normal((3, 2))

    @av.compile
    def step(x, t, w):
        out, jt = func.jvp(lambda x: _f(x, w), (x,), (t,))
        return out, jt

    out, jt = step(av.tensor(x), av.tensor(t), av.tensor(w))
    want_out, want = func.jvp(_f, (av.tensor(x), av.tensor(w)), (av.tensor(t), av.zeros(3, 2, dtype=av.float64)))
    np.testing.assert_allclose(out.numpy(), want_out.numpy(), rtol=1e-12)
    np.testing.assert_allclose(jt.numpy(), want.numpy(), rtol=1e-12)
    insp = step.inspect(av.tensor(x), av.tensor(t), av.tensor(w))
    traced = insp.traced_graph
    assert len(traced.inputs) == 3 and len(traced.outputs) == 2  # one graph: the jvp is inlined, not called
    names = {op.name for op in traced.walk()}
    assert {"sin", "cos", "tanh", "matmul"} <= names  # the primal ops and their tangents' side by side
    step(av.tensor(x), av.tensor(t), av.tensor(w))
    assert step.cache_info().hits >= 1


def test_forward_over_reverse_equals_reverse_over_forward_on_a_traced_conv_net():
    """The graph transforms compose directly: jvp_graph of grad_graph of a traced model gives the
    Hessian-vector product, and so does grad_graph of jvp_graph's tangent <grad f, v>."""
    from avalon.trace import trace_call
    conv = _models()[0][1]
    rng = np.random.default_rng(9)
    img, v = rng.standard_normal((1, 2, 4, 4)), rng.standard_normal((1, 2, 4, 4))
    traced = trace_call(lambda m, x: (m(x) ** 2).sum(), (conv, av.tensor(img)))
    g, k = traced.graph, len(traced.graph.inputs) - 1  # the model's parameters first, then the image
    feed = [p.numpy() for p in traced.leaves[:k]] + [img, v]
    hv1 = interpret(jvp_graph(grad_graph(g, [k]), [k]), *feed)[-1]  # forward over reverse
    pairing = jvp_graph(g, [k])
    pairing.set_outputs([pairing.outputs[1]])  # d/dx <grad f, v> = H v: reverse over forward
    hv2 = interpret(grad_graph(pairing, [k]), *feed)[1]
    np.testing.assert_allclose(hv1, hv2, rtol=1e-10, atol=1e-12)
    assert np.abs(hv1).max() > 0

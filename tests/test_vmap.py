"""av.vmap: every primitive's batching rule against a loop over examples (the reference interpreter),
and the user-facing transform against torch.func.vmap: per-example gradients, model ensembles, nested
maps, in_dims / out_dims, keyword arguments, randomness, custom gradients, compiled and differentiated
vmaps, and the errors torch gives."""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
from helpers import rel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlir_samples import all_samples

import avalon as av
from avalon import nn
from avalon.batching import BatchingError, batch_graph
from avalon.compiler import VmapError
from avalon.ir import interpret, verify
from avalon.passes.testing import random_inputs

B = 3
SAMPLES = {n: g for n, g in all_samples().items() if g.inputs and n != "random"}


def _configs(g):
    """Every input mapped in front; each input alone mapped; every input mapped last."""
    n = len(g.inputs)
    single = [[0 if i == j else None for i in range(n)] for j in range(n)] if n > 1 else []
    return [[0] * n, *single, [v.type.rank for v in g.inputs]]


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_op_batches_like_a_loop_over_examples(name):
    from avalon.batching import transform
    g = SAMPLES[name]
    for axes in _configs(g):
        examples = [random_inputs(g, k) for k in range(B)]
        shared = random_inputs(g, 99)
        inputs = [np.stack([e[i] for e in examples], axis=ax) if ax is not None else shared[i]
                  for i, ax in enumerate(axes)]
        per = [[e[i] if ax is not None else shared[i] for i, ax in enumerate(axes)] for e in examples]
        out_axes = [k % (v.type.rank + 1) for k, v in enumerate(g.outputs)]  # mapped dims land anywhere
        bg = batch_graph(g, axes, B, out_axes)
        verify(bg)
        got = interpret(bg, *inputs)
        for k, outs in enumerate(zip(*[interpret(g, *p) for p in per])):
            want = np.stack(outs, axis=out_axes[k])
            assert got[k].shape == want.shape and got[k].dtype == want.dtype, (axes, k)
            np.testing.assert_allclose(got[k], want, rtol=1e-5, atol=1e-6, err_msg=f"{name} {axes} output {k}")
    assert name not in transform._said  # batched by its rule, not unrolled


def test_random_numbers_follow_randomness():
    g = all_samples()["random"]
    seed = np.array(1234, np.int64)
    with pytest.raises(RuntimeError, match="randomness error mode"):
        batch_graph(g, [None], B, [0, 0, 0])
    same = interpret(batch_graph(g, [None], B, [0, 0, 0], randomness="same"), seed)
    one = interpret(g, seed)
    for s, o in zip(same, one):
        assert s.shape == (B, *o.shape) and all(np.array_equal(s[k], o) for k in range(B))
    diff = interpret(batch_graph(g, [None], B, [0, 0, 0], randomness="different"), seed)
    for d, o in zip(diff, one):
        assert d.shape == (B, *o.shape) and not np.array_equal(d[0], d[1])


def test_an_op_without_a_rule_runs_once_per_example(caplog):
    from avalon.ir import OPS, REFERENCE, Builder, Graph, TensorType, define_op
    define_op("rowsum_", 1, lambda ts, a: [ts[0].with_shape(ts[0].shape[:1])])
    REFERENCE["rowsum_"] = lambda attrs, x: x.sum(1)
    try:
        g = Graph("f")
        x = g.add_input(TensorType((2, 3), "f32"), "x")
        g.set_outputs([Builder(g)("rowsum_", x)])
        xs = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
        with caplog.at_level(logging.INFO, logger="avalon.vmap"):
            (got,) = interpret(batch_graph(g, [0], 4, [0]), xs)
        np.testing.assert_allclose(got, xs.sum(2), rtol=1e-6)
        assert "no batching rule for 'rowsum_'" in caplog.text
    finally:
        OPS.pop("rowsum_")
        REFERENCE.pop("rowsum_")


# -- the user-facing transform against torch.func.vmap --------------------------------------------------

def _t(x):
    return torch.tensor(np.asarray(x.numpy() if isinstance(x, av.Tensor) else x))


def _close(ours, theirs, tol=1e-12):
    a, b = np.asarray(ours.numpy()), theirs.detach().numpy()
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.abs(a - b).max(initial=0) <= tol * max(1.0, np.abs(b).max(initial=0))


@settings(max_examples=15, deadline=None)
@given(b=st.integers(1, 4), m=st.integers(1, 5), n=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_matches_torch_vmap_on_a_composite_function(b, m, n, seed):
    rng = np.random.default_rng(seed)
    x, w, v = rng.standard_normal((b, m)), rng.standard_normal((m, n)), rng.standard_normal((n, b))

    def f(lib, x, w, v):  # x: one row; v: one column (mapped at dim 1)
        h = lib.tanh(x @ w) * v
        return lib.softmax(h, 0), (h ** 2).sum() + lib.cumsum(h, 0)[-1]

    ours = av.vmap(lambda x, w, v: f(av, x, w, v), in_dims=(0, None, 1))(av.tensor(x), av.tensor(w), av.tensor(v))
    theirs = torch.func.vmap(lambda x, w, v: f(torch, x, w, v), in_dims=(0, None, 1))(_t(x), _t(w), _t(v))
    for o, t in zip(ours, theirs):
        _close(o, t)


_NETS: dict = {}


def _net(lib):
    if lib not in _NETS:  # one class per library (stack_module_state wants models of one class)
        class Net(lib.Module):
            def __init__(self):
                super().__init__()
                self.conv = lib.Conv2d(2, 3, 3, padding=1)
                self.pool = lib.MaxPool2d(2)
                self.fc = lib.Linear(3 * 3 * 3, 4)

            def forward(self, x):
                return self.fc(self.pool(self.conv(x).relu()).flatten(1))
        _NETS[lib] = Net
    return _NETS[lib]().double()


def _nets():
    torch.manual_seed(0)
    theirs = _net(torch.nn)
    ours = _net(nn)
    av.nn.load_state_dict(ours, theirs.state_dict())
    return ours, theirs


def test_per_example_gradients_of_a_conv_net_match_torch_func():
    ours, theirs = _nets()
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((5, 2, 6, 6)), rng.integers(0, 4, 5)

    def loss(model, x, y):
        return nn.functional.cross_entropy(model(x[None]), y[None])

    per = av.vmap(av.grad(loss), in_dims=(None, 0, 0))(ours, av.tensor(x), av.tensor(y))
    params = {k: v.detach() for k, v in theirs.named_parameters()}

    def tloss(p, x, y):
        return torch.nn.functional.cross_entropy(torch.func.functional_call(theirs, p, (x[None],)), y[None])

    want = torch.func.vmap(torch.func.grad(tloss), in_dims=(None, 0, 0))(params, _t(x), _t(y))
    assert sorted(per) == sorted(want)
    for k in want:
        _close(per[k], want[k])
    # one batched graph: the convolution's weight gradient is one grouped op, not five
    ops = [op for op in av.vmap(av.grad(loss), in_dims=(None, 0, 0)).inspect(ours, av.tensor(x), av.tensor(y))
           .graph.walk() if op.name.startswith("conv2d")]
    assert len(ops) == 2 and {op.attrs["groups"] for op in ops} == {1, 5}


def test_an_ensemble_maps_over_stacked_weights():
    rng = np.random.default_rng(2)
    p = {"w": rng.standard_normal((4, 3, 5)), "b": rng.standard_normal((4, 5))}
    x = rng.standard_normal((6, 3))

    def f(lib, p, x):
        return lib.tanh(x @ p["w"] + p["b"]).sum(-1)

    ours = av.vmap(lambda p, x: f(av, p, x), in_dims=({"w": 0, "b": 0}, None))(
        {k: av.tensor(v) for k, v in p.items()}, av.tensor(x))
    theirs = torch.func.vmap(lambda p, x: f(torch, p, x), in_dims=({"w": 0, "b": 0}, None))(
        {k: _t(v) for k, v in p.items()}, _t(x))
    _close(ours, theirs)


def test_nested_maps_dims_and_keywords():
    rng = np.random.default_rng(3)
    a, b, c = rng.standard_normal(3), rng.standard_normal(4), rng.standard_normal((3, 4, 5))
    outer = av.vmap(av.vmap(lambda x, y: x * y, in_dims=(None, 0)), in_dims=(0, None))
    np.testing.assert_allclose(outer(av.tensor(a), av.tensor(b)).numpy(), np.outer(a, b), rtol=1e-15)
    both = av.vmap(lambda x: (x, x.sum()), in_dims=2, out_dims=(1, 0))(av.tensor(c))
    theirs = torch.func.vmap(lambda x: (x, x.sum()), in_dims=2, out_dims=(1, 0))(_t(c))
    for o, t in zip(both, theirs):
        _close(o, t)
    scaled = av.vmap(lambda x, scale=1.0: x * scale, in_dims=-1)
    np.testing.assert_allclose(scaled(av.tensor(c), scale=2.5).numpy(), np.moveaxis(c, -1, 0) * 2.5, rtol=1e-15)


def test_vmap_compiles_and_differentiates_as_one_graph():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 5))
    softmax_rows = av.compile(lambda x: av.vmap(lambda r: av.softmax(r, 0))(x))
    _close(softmax_rows(av.tensor(x)), torch.softmax(_t(x), 1), 1e-14)
    g = av.grad(lambda x: av.vmap(lambda r: (r ** 3).sum() * r[0])(x).sum())(av.tensor(x))
    tx = _t(x).requires_grad_()
    torch.func.vmap(lambda r: (r ** 3).sum() * r[0])(tx).sum().backward()
    _close(g, tx.grad)


class _Round(av.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.round()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x.abs() < 1.0) * 3.0


class _TRound(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x.round()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x.abs() < 1.0) * 3.0


def test_custom_gradients_survive_vmap_both_ways():
    x = np.random.default_rng(5).standard_normal((4, 5)) * 1.5
    want = torch.func.vmap(torch.func.grad(lambda r: (_TRound.apply(r) * r).sum()))(_t(x))

    def f(r):
        return (_Round.apply(r) * r).sum()

    _close(av.vmap(av.grad(f))(av.tensor(x)), want)
    _close(av.grad(lambda x: av.vmap(f)(x).sum())(av.tensor(x)), want)


def test_dropout_needs_a_randomness_mode():
    x = av.tensor(np.random.default_rng(6).standard_normal((4, 50)))

    def drop(r):
        return nn.functional.dropout(r, 0.5, True)

    with pytest.raises(RuntimeError, match="randomness error mode.*test_vmap.py"):
        av.vmap(drop)(x)
    diff = av.vmap(drop, randomness="different")(x).numpy() == 0
    same = av.vmap(drop, randomness="same")(x).numpy() == 0
    assert not (diff[0] == diff[1]).all() and (same[0] == same[1]).all()
    assert 0 < same.mean() < 1


def test_errors_say_what_is_wrong():
    x = av.tensor(np.ones((3, 4)) * np.arange(4))
    with pytest.raises(VmapError, match=r"same size in the mapped dimension, got sizes \[3, 4\]"):
        av.vmap(lambda a, b: a + b.sum())(x, av.tensor(np.ones((4, 2))))
    with pytest.raises(VmapError, match="in_dim=0 for argument 1, but it is of type float"):
        av.vmap(lambda a, s: a * s)(x, 2.0)
    with pytest.raises(VmapError, match="At least one of the inputs must be batched"):
        av.vmap(lambda a: a, in_dims=None)(x)
    with pytest.raises(VmapError, match="in_dim=2 for a, but it has dimension 2"):
        av.vmap(lambda a: a, in_dims=2)(x)
    with pytest.raises(BatchingError, match="out_dims=None for output 0"):
        av.vmap(lambda a: a, out_dims=None)(x)
    with pytest.raises(VmapError, match="in_dims has structure of length 1 but inputs has 2"):
        av.vmap(lambda a, b: a, in_dims=(0,))(x, x)
    bn = nn.BatchNorm1d(4).double()  # (x is f64: torch refuses f32 norm parameters on it)
    with pytest.raises(VmapError, match="writes state"):
        av.vmap(lambda a: bn(av.stack([a, 2 * a])))(x)
    with pytest.raises(VmapError, match="is a model"):
        av.vmap(lambda m, a: m(a[None]), in_dims=(0, 0))(bn, x)


# -- torch.func's transforms built on vmap ---------------------------------------------------------------

def test_jacobians_hessians_and_jvps_match_torch_func():
    from avalon import func
    rng = np.random.default_rng(7)
    w, x, t = rng.standard_normal((3, 4)), rng.standard_normal(4), rng.standard_normal(4)

    def f(lib):
        return lambda w, x: {"y": lib.tanh(w @ x) * x[:3], "s": (x ** 2).sum() * w[0, 0]}

    ours = func.jacrev(f(av), argnums=(0, 1))(av.tensor(w), av.tensor(x))
    theirs = torch.func.jacrev(f(torch), argnums=(0, 1))(_t(w), _t(x))
    for k in theirs:
        for a, b in zip(ours[k], theirs[k]):
            _close(a, b)
    fwd = func.jacfwd(lambda x: av.sin(x) * x.sum())(av.tensor(x))
    _close(fwd, torch.func.jacfwd(lambda x: torch.sin(x) * x.sum())(_t(x)))

    def g(lib):
        return lambda x: (lib.tanh(x) ** 3).sum() * x[0]

    _close(func.hessian(g(av))(av.tensor(x)), torch.func.hessian(g(torch))(_t(x)))
    out, jt = func.jvp(lambda x: av.sin(x) * x.sum(), (av.tensor(x),), (av.tensor(t),))
    _, want = torch.func.jvp(lambda x: torch.sin(x) * x.sum(), (_t(x),), (_t(t),))
    _close(jt, want)


def test_the_torch_func_tutorials_port():
    """Per-sample gradients (functional_call + grad + vmap) and model ensembling (stack_module_state
    + vmap over the stacked weights), written as torch.func's tutorials write them."""
    import copy

    from avalon import func
    ours, theirs = _nets()
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((4, 2, 6, 6)), rng.integers(0, 4, 4)

    def per_sample(lib, fn, model, x, y):
        params = {k: v.detach() for k, v in model.named_parameters()}
        buffers = {k: v.detach() for k, v in model.named_buffers()}

        def compute_loss(params, buffers, sample, target):
            pred = fn.functional_call(model, (params, buffers), (sample.unsqueeze(0),))
            return lib.nn.functional.cross_entropy(pred, target.unsqueeze(0))

        return fn.vmap(fn.grad(compute_loss), in_dims=(None, None, 0, 0))(params, buffers, x, y)

    got = per_sample(av, func, ours, av.tensor(x), av.tensor(y))
    want = per_sample(torch, torch.func, theirs, _t(x), _t(y))
    for k in want:
        _close(got[k], want[k])

    def ensemble(fn, models, x):
        params, buffers = fn.stack_module_state(models)
        base = copy.deepcopy(models[0])
        return fn.vmap(lambda p, b, x: fn.functional_call(base, (p, b), (x,)), in_dims=(0, 0, None))(params, buffers, x)

    torch.manual_seed(1)
    theirs2 = _net(torch.nn)
    ours2 = _net(nn)
    av.nn.load_state_dict(ours2, theirs2.state_dict())
    _close(ensemble(func, [ours, ours2], av.tensor(x)), ensemble(torch.func, [theirs, theirs2], _t(x)))


# -- random programs: vmap against a loop over examples ---------------------------------------------------

@settings(max_examples=int(os.environ.get("AVALON_VMAP_EXAMPLES", "60")), deadline=None,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_random_programs_map_like_a_loop(data):
    """Programs of the backend fuzzer (tests/test_fuzz_backends.py: broadcasting, reductions, shape ops,
    matmuls, convolutions, gathers and scatters, casts), each input mapped at a random dimension or
    shared, against the same program run eagerly once per example. `AVALON_VMAP_EXAMPLES=600` (and
    HYPOTHESIS_PROFILE=explore) for a long local run."""
    from test_fuzz_backends import AVALON, TOL, programs
    prog = data.draw(programs(), label="program")
    size = data.draw(st.integers(1, 3), label="size")
    dims = [data.draw(st.one_of(st.none(), st.integers(0, a.ndim)), label=f"in_dim{i}")
            for i, a in enumerate(prog.inputs)]
    if all(d is None for d in dims):
        dims[0] = 0
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    examples = []
    for k in range(size):  # floats moved a little per example; integers (indices) kept valid as drawn
        examples.append([a + (rng.standard_normal(a.shape) * 0.1).astype(a.dtype)
                         if a.dtype.kind == "f" and k and d is not None else a for a, d in zip(prog.inputs, dims)])
    batched = [np.stack([e[i] for e in examples], axis=d) if d is not None else prog.inputs[i]
               for i, d in enumerate(dims)]
    fn = prog.fn(AVALON)
    want = [[np.asarray(o.numpy()) for o in fn(*[av.tensor(x) for x in e])] for e in examples]
    got = av.vmap(fn, in_dims=tuple(dims))(*[av.tensor(x) for x in batched])
    rtol, atol = TOL[prog.float_dtype]
    for j, g in enumerate(got):
        w = np.stack([want[k][j] for k in range(size)])
        g = np.asarray(g.numpy())
        assert g.shape == w.shape and g.dtype == w.dtype, (j, g.shape, w.shape, g.dtype, w.dtype, str(prog))
        if w.dtype.kind == "f":
            scale = max(np.abs(w[np.isfinite(w)]).max(initial=0), 1.0)
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol * scale, equal_nan=True, err_msg=str(prog))
        else:
            np.testing.assert_array_equal(g, w, err_msg=str(prog))


@pytest.mark.parametrize("chunk", [1, 3, 7, 10])
def test_chunk_size_maps_chunks_and_concatenates_like_torch(rng, chunk):
    """torch's chunk_size: the same values (mapped dim 1 in, out_dims last and 0), a chunked vmap
    differentiated and compiled, and "same" randomness shared across chunks."""
    x, w = rng.standard_normal((3, 7, 4)), rng.standard_normal((4, 5))

    def f(lib):
        return lambda x, w: (lib.tanh(x @ w), (x * x).sum(0))
    got = av.vmap(f(av), in_dims=(1, None), out_dims=(-1, 0), chunk_size=chunk)(x, w)
    want = torch.vmap(f(torch), in_dims=(1, None), out_dims=(-1, 0), chunk_size=chunk)(torch.tensor(x), torch.tensor(w))
    for a, b in zip(got, want):
        assert a.shape == tuple(b.shape) and rel(a.numpy(), b.numpy()) < 1e-12

    def loss(lib, w, x, vm):
        return vm(lambda xi, w: lib.tanh(xi @ w).sum() * xi.sum(), in_dims=(1, None), chunk_size=chunk)(x, w).sum()
    g = av.compile(av.grad(lambda w, x: loss(av, w, x, av.vmap)))(w, x)
    tw = torch.tensor(w, requires_grad=True)
    loss(torch, tw, torch.tensor(x), torch.vmap).backward()
    assert rel(g.numpy(), tw.grad.numpy()) < 1e-12
    noise = av.vmap(lambda xi: xi.sum() + av.rand(64, dtype=av.float64), in_dims=1, randomness="same",
                    chunk_size=chunk)(x).numpy() - x.sum((0, 2))[:, None]
    assert np.abs(noise - noise[:1]).max() < 1e-12 and noise.std() > 0.1  # (64 uniforms: std ~0.29)

"""av.compile: one trace per signature, cached; pipelines; inspect; state updates; nesting; backends."""
import sys
import warnings

import numpy as np
import pytest

import avalon as av
from avalon import optim
from avalon.compiler import BackendUnavailable, Compiled, Inspection
from avalon.compiler.testing import group_chains
from avalon.nn import functional as F
from avalon.passes import DEFAULT_PIPELINE, PassManager, PassRecord, PipelineError


def _arr(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def Counting():  # noqa: N802  (reads like a class at the call sites)
    """A function that counts how often it is traced. (A closure, not an object with a counter
    attribute: the plain attributes of models among the arguments are part of the signature.)"""
    traces = [0]

    def f(x, w):
        traces[0] += 1
        f.traces = traces[0]
        return av.ops.relu(x @ w) + 1.0

    f.traces = 0
    return f


def test_result_matches_eager_and_keeps_output_structure(rng):
    def f(x, w):
        h = x @ w
        return {"h": h, "pair": (av.ops.relu(h), h.sum())}

    x, w = _arr(rng, 3, 4), _arr(rng, 4, 5)
    out = av.compile(f)(x, w)
    want = f(av.tensor(x), av.tensor(w))
    assert set(out) == {"h", "pair"} and isinstance(out["pair"], tuple)
    assert isinstance(out["h"], av.Tensor)
    np.testing.assert_allclose(out["h"].numpy(), want["h"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(out["pair"][1].numpy(), want["pair"][1].numpy(), rtol=1e-5)


def test_traced_once_per_signature_and_retraced_when_it_changes(rng):
    fn = Counting()
    c = av.compile(fn)
    x, w = _arr(rng, 3, 4), _arr(rng, 4, 5)
    for _ in range(3):
        c(x, w)
    assert fn.traces == 1 and c.cache_info() == (2, 1, 1)
    c(_arr(rng, 3, 4), _arr(rng, 4, 5))           # new values, same signature
    assert fn.traces == 1
    c(_arr(rng, 6, 4), w)                          # new shape
    assert fn.traces == 2
    c(x.astype(np.float64), w.astype(np.float64))  # new dtypes
    assert fn.traces == 3
    c(av.tensor(x.astype(np.float64)), av.tensor(w.astype(np.float64)))
    c(av.tensor(x.astype(np.float64)), av.tensor(w.astype(np.float64)))
    assert fn.traces == 3  # Tensors and numpy arrays of one dtype share a signature
    info = c.cache_info()
    assert info.misses == 3 and info.entries == 3 and info.hits == 5
    c.cache_clear()
    assert c.cache_info() == (0, 0, 0)


def test_static_arguments_and_model_flags_are_part_of_the_signature(rng):
    calls = []

    def f(x, k):
        calls.append(k)
        return x * float(k)

    c = av.compile(f)
    x = _arr(rng, 2, 2)
    np.testing.assert_allclose(c(x, 2).numpy(), 2 * x)
    np.testing.assert_allclose(c(x, 3).numpy(), 3 * x)
    c(x, 3)
    assert calls == [2, 3]

    drop = av.nn.Dropout(0.5)
    cd = av.compile(lambda m, x: m(x))
    y = np.ones((64, 64), np.float32)
    assert (cd(drop, y).numpy() == 0).any()       # training: some dropped
    drop.eval()
    np.testing.assert_array_equal(cd(drop, y).numpy(), y)  # eval() compiles anew
    assert cd.cache_info().entries == 2


def test_random_ops_get_a_fresh_seed_each_call():
    drop = av.nn.Dropout(0.5)
    c = av.compile(lambda m, x: m(x))
    y = np.ones((32, 32), np.float32)
    a, b = c(drop, y).numpy(), c(drop, y).numpy()
    assert c.cache_info().entries == 1 and not np.array_equal(a, b)


def test_pipeline_default_string_and_pass_manager(rng):
    x, w = _arr(rng, 3, 4), _arr(rng, 4, 5)
    c = av.compile(Counting())
    assert [r.name for r in c.inspect(x, w).passes] == [n.split("{")[0] for n in DEFAULT_PIPELINE.split(",")]
    c2 = av.compile(Counting(), pipeline="cse,layout")
    assert [r.name for r in c2.inspect(x, w).passes] == ["cse", "layout"]
    pm = PassManager(["canonicalize", group_chains], verify_each=True)
    c3 = av.compile(Counting(), pipeline=pm)
    insp = c3.inspect(x, w)
    assert [r.name for r in insp.passes] == ["canonicalize", "group-chains"]
    assert insp.pipeline == "canonicalize,group-chains"
    np.testing.assert_allclose(c3(x, w).numpy(), np.maximum(x @ w, 0) + 1, rtol=1e-5)
    with pytest.raises(PipelineError, match="unknown pass 'nope'"):
        av.compile(Counting(), pipeline="cse,nope")
    with pytest.raises(TypeError, match="pipeline must be"):
        av.compile(Counting(), pipeline=3)


def test_inspect_shows_passes_graphs_and_kernels(rng):
    x, w = _arr(rng, 3, 4), _arr(rng, 4, 5)
    fn = Counting()
    c = av.compile(fn, pipeline=PassManager(["canonicalize", "cse", group_chains, "memory-plan"]))
    insp = c.inspect(x, w)
    assert isinstance(insp, Inspection) and fn.traces == 1 and c.cache_info() == (0, 1, 1)
    assert c.inspect(x, w) is insp and c.cache_info() == (1, 1, 1)  # same signature, nothing recompiled
    assert all(isinstance(r, PassRecord) and r.ms >= 0 for r in insp.passes)
    grouped = insp.passes[2]
    assert grouped.name == "group-chains" and grouped.changed and "fusion @fused_relu_0" in grouped.ir_after
    assert insp.passes[-1].ir_after == str(insp.graph)
    assert "fusion" not in str(insp.traced_graph) and "fusion" in str(insp.graph)
    # numpy generates no code: each group's region is shown as a standalone function
    assert list(insp.kernels) == ["fused_relu_0"]
    assert insp.kernels["fused_relu_0"].startswith("func @fused_relu_0(")
    av.ir.parse(insp.kernels["fused_relu_0"])
    assert insp.memory_plan.is_current(insp.graph)
    text = str(insp)
    for part in ("compiled @", "on numpy", "x: tensor<3x4xf32>", "group-chains", "fused_relu_0", "memory plan"):
        assert part in text
    assert "Inspection @" in repr(insp) and "compiled" in repr(c)
    assert insp.compile_ms >= insp.trace_ms >= 0


def test_compiled_training_step_matches_eager_steps(rng):
    """Parameter and optimizer-state updates (extra graph outputs) are written back every call."""
    from avalon.demo import Net

    def loss_fn(model, x, y):
        return F.nll_loss(model(x), y)

    def step(model, opt, x, y):
        loss, grads = av.value_and_grad(loss_fn)(model, x, y)
        opt.step(grads)
        return loss

    x = rng.standard_normal((4, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 4)
    runs = {}
    for mode in ("eager", "compiled"):
        av.manual_seed(0)
        net = Net()
        opt = optim.Adam(net, lr=1e-3, eps=1e-4)  # (at eps=1e-8 an element whose gradient is ~1e-8 moves by
        # lr * sign(g): BLAS rounding decides it, and a different CPU kernel flipped one of 400,000)
        run = step if mode == "eager" else av.compile(step)
        losses = [float(run(net, opt, x, y)) for _ in range(3)]
        runs[mode] = (losses, {k: v.numpy().copy() for k, v in av.named_parameters(net)}, opt.steps)
        if mode == "compiled":
            assert run.cache_info() == (2, 1, 1)
    (le, pe, se), (lc, pc, sc) = runs["eager"], runs["compiled"]
    assert se == sc == 3 and lc[2] < lc[0]
    np.testing.assert_allclose(lc, le, rtol=1e-4)
    for k in pe:
        np.testing.assert_allclose(pc[k], pe[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_batch_norm_running_stats_update_under_compile(rng):
    bn_e, bn_c = av.nn.BatchNorm1d(3), av.nn.BatchNorm1d(3)
    c = av.compile(lambda m, x: m(x))
    for _ in range(2):
        x = _arr(rng, 8, 3)
        np.testing.assert_allclose(c(bn_c, x).numpy(), bn_e(av.tensor(x)).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn_c.running_mean.numpy(), bn_e.running_mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(bn_c.running_var.numpy(), bn_e.running_var.numpy(), rtol=1e-5)
    assert c.cache_info().entries == 1


@pytest.mark.parametrize("wrap", ["compile", "value_and_grad"])
def test_reads_after_a_state_update_see_it_as_eager_does(wrap, rng):
    """Batch norm called twice in one traced call (a GAN's discriminator on real and fake) updates
    its statistics twice, and a model evaluated after `opt.step` in the same compiled step sees
    the new weights: a later read in the trace is the updated value, not the graph input."""
    x1, x2 = _arr(rng, 8, 3) + 2, _arr(rng, 8, 3) - 2

    def two(m, a, b):
        return (m(a) * m(a)).sum() + m(b).sum()
    eager, traced = av.nn.BatchNorm1d(3), av.nn.BatchNorm1d(3)
    two(eager, av.tensor(x1), av.tensor(x2))
    run = av.compile(two) if wrap == "compile" else av.value_and_grad(two)
    run(traced, x1, x2)
    for k in ("running_mean", "running_var"):
        np.testing.assert_allclose(getattr(traced, k).numpy(), getattr(eager, k).numpy(), rtol=1e-5, err_msg=k)
    assert int(traced.num_batches_tracked.numpy()) == 3

    def step(m, opt, x):
        _, g = av.value_and_grad(lambda m, x: (m(x) ** 2).sum())(m, x)
        opt.step(g)
        return m(x).sum()  # after the step
    x = _arr(rng, 4, 3)
    outs = []
    for mode in ("eager", "compiled"):
        m = av.nn.Linear(3, 2)
        av.nn.load_state_dict(m, {"weight": np.full((2, 3), 0.5, np.float32), "bias": np.ones(2, np.float32)})
        opt = optim.SGD(m, lr=0.1)
        outs.append(float((step if mode == "eager" else av.compile(step))(m, opt, x)))
        assert av.nn.state_dict(m)["weight"].numpy()[0, 0] != 0.5
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5)


def test_inside_another_trace_it_inlines(rng):
    fn = Counting()
    c = av.compile(fn)
    x, w = _arr(rng, 3, 4), _arr(rng, 4, 5)
    g = av.trace(lambda x, w: c(x, w) * 2.0, x, w)
    assert {op.name for op in g.ops} >= {"matmul", "relu", "mul"} and c.cache_info() == (0, 0, 0)
    (out,) = av.interpret(g, x, w)
    np.testing.assert_allclose(out, 2 * (np.maximum(x @ w, 0) + 1), rtol=1e-5)
    gw = av.grad(lambda w, x: c(x, w).sum())(w, x)
    np.testing.assert_allclose(gw.numpy(), x.T @ (x @ w > 0).astype(np.float32), rtol=1e-5)


def test_compiled_model_and_method_decorator(rng):
    class Lin:
        def __init__(self):
            self.w = av.tensor(_arr(rng, 4, 2))

        @av.compile
        def apply(self, x):
            return x @ self.w

        def __call__(self, x):
            return av.ops.relu(x @ self.w)

    m = Lin()
    x = _arr(rng, 3, 4)
    np.testing.assert_allclose(m.apply(x).numpy(), x @ m.w.numpy(), rtol=1e-6)
    cm = av.compile(m)
    np.testing.assert_allclose(cm(x).numpy(), np.maximum(x @ m.w.numpy(), 0), rtol=1e-6)
    assert cm.__self__ is m and cm.__name__ == "lin"
    g = av.trace(cm, x)  # the model's parameters come first, as for the model itself
    assert [v.name for v in g.inputs] == ["w", "x"]
    assert isinstance(av.compile(backend="numpy")(lambda x: x), Compiled)


def test_captured_arrays_are_compiled_every_call(rng):
    data = _arr(rng, 2, 2)
    c = av.compile(lambda x: x + data)
    with pytest.warns(UserWarning, match="compiled again on every call"):
        c(_arr(rng, 2, 2))
    data[...] = 5.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_allclose(c(np.zeros((2, 2), np.float32)).numpy(), 5.0)
    assert c.cache_info().entries == 0


def test_errors():
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        av.compile(lambda x: x, backend="tpu")
    with pytest.raises(TypeError, match="expects a callable"):
        av.compile(3)
    with pytest.raises(TypeError, match="positionally"):
        av.compile(lambda x: x)(x=np.ones(2))


def test_missing_triton_backend_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "avalon.codegen.triton", None)  # import fails
    c = av.compile(lambda x: x * 2.0, backend="triton")
    with pytest.raises(BackendUnavailable, match="backend='triton' needs avalon.codegen.triton"):
        c(np.ones(3, np.float32))


def test_triton_backend_matches_numpy(rng):
    pytest.importorskip("triton")
    try:
        import avalon.codegen.triton  # noqa: F401
    except ImportError as e:
        pytest.skip(f"Triton backend not importable: {e}")

    def f(x, w, b):
        return av.ops.relu(x @ w.T + b).sum(axis=1)

    x, w, b = _arr(rng, 8, 16), _arr(rng, 4, 16), _arr(rng, 4)
    c = av.compile(f, backend="triton", pipeline="canonicalize,cse,dce,layout,memory-plan")
    out = c(x, w, b)
    np.testing.assert_allclose(out.numpy(), av.compile(f)(x, w, b).numpy(), rtol=1e-4, atol=1e-5)
    insp = c.inspect(x, w, b)
    assert insp.backend == "triton" and insp.kernels
    assert all("@triton.jit" in src for src in insp.kernels.values())
    assert "layout = [1, 0]" in str(insp.graph)  # w.T read through swapped strides, no copy kernel


def test_a_gradient_inlined_into_a_compile_is_not_compiled_on_its_own():
    """Inside an enclosing trace the gradient program is inlined unoptimized (the enclosing pipeline runs
    on the whole graph); a later call outside any trace still compiles it and agrees."""
    rng = np.random.default_rng(3)
    w = av.Tensor(rng.standard_normal((4, 3)).astype(np.float32))
    x = rng.standard_normal((5, 4)).astype(np.float32)
    vg = av.value_and_grad(lambda w, x: (F.tanh(x @ w) ** 2).sum())

    step = av.compile(lambda w, x: vg(w, x))
    loss, g = step(w, x)
    assert len(vg.cache) == 0
    loss2, g2 = vg(w, x)
    assert len(vg.cache) == 1
    np.testing.assert_allclose(loss.numpy(), loss2.numpy(), rtol=1e-5)
    np.testing.assert_allclose(g.numpy(), g2.numpy(), rtol=1e-5)


def test_state_changed_inside_a_compiled_call_persists_as_eagerly(rng):
    """An argument updated in place, a buffer updated in place and a model attribute rebound to a
    new value (`self.count = self.count + 1`) all keep their new values after the call, as in
    torch; a traced tensor stored in a new attribute is written back after the call (plain state:
    neither trained nor saved), never a tracer leak."""
    class Counter(av.nn.Module):
        def __init__(self, rebind):
            super().__init__()
            self.register_buffer("count", av.tensor(np.zeros((), np.float32)))
            self.rebind = rebind
            self.fc = av.nn.Linear(2, 2)

        def forward(self, x):
            if self.rebind:
                self.count = self.count + 1.0
            else:
                self.count.add_(1.0)
            return self.fc(x)

    for rebind in (False, True):
        m = Counter(rebind)
        count = m.count
        f = av.compile(lambda m, x: m(x))
        for _ in range(3):
            f(m, _arr(rng, 1, 2))
        assert m.count is count and float(m.count.numpy()) == 3.0
    x = av.tensor(np.zeros(2, np.float32))
    out = av.compile(lambda x: x.add_(1.0) * 2)(x)
    np.testing.assert_array_equal(x.numpy(), [1, 1])
    np.testing.assert_array_equal(out.numpy(), [2, 2])

    class Leaky(av.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = av.nn.Linear(2, 2)

        def forward(self, x):
            self.last = self.fc(x)
            return self.last
    m = Leaky()
    x = _arr(rng, 1, 2)
    out = av.compile(lambda m, x: m(x))(m, x)  # written back after the call, as torch keeps it
    assert not m.last.is_traced
    np.testing.assert_allclose(m.last.numpy(), out.numpy())
    np.testing.assert_allclose(m.last.numpy(), m.fc(av.tensor(x)).numpy(), rtol=1e-6)
    assert "last" not in m.state_dict() and "last" not in dict(m.named_parameters())


SCALE = 1.0


def test_python_numbers_read_from_closures_and_globals_are_part_of_the_key(rng):
    """`lambda x: x * scale`: the number is baked into the trace, so changing it retraces instead
    of silently reusing the old constant (torch.compile guards on the same)."""
    global SCALE
    x = _arr(rng, 3)
    k = 2

    def f(x):
        return x * SCALE + k
    c = av.compile(f)
    np.testing.assert_allclose(c(x).numpy(), x + 2, rtol=1e-6)
    SCALE, k = 5.0, 3
    try:
        np.testing.assert_allclose(c(x).numpy(), 5 * x + 3, rtol=1e-6)
        assert c.cache_info().entries == 2
        c(x)
        assert c.cache_info().hits == 1
    finally:
        SCALE = 1.0


def test_every_in_place_write_of_a_step_persists_and_data_writes_through(rng):
    """EMA / mean-teacher (`t.mul_(d).add_(s, alpha=1 - d)` under no_grad), WGAN clipping after the
    step, a soft update through `.data`: each later write of the same tensor counts (only the first
    did), and `.data` / `.detach()` share the tensor's storage as in torch."""
    student, teacher = av.nn.Linear(3, 2), av.nn.Linear(3, 2)

    def ema(student, teacher, d):
        with av.no_grad():
            for t, s in zip(teacher.parameters(), student.parameters()):
                t.mul_(d).add_(s, alpha=1 - d)
            teacher.weight.data.clamp_(-0.1, 0.1)
        return teacher.weight.sum()
    w_s, w_t = student.weight.numpy().copy(), teacher.weight.numpy().copy()
    b_s, b_t = student.bias.numpy().copy(), teacher.bias.numpy().copy()
    c = av.compile(ema)
    for _ in range(2):
        c(student, teacher, 0.9)
        w_t, b_t = np.clip(0.9 * w_t + 0.1 * w_s, -0.1, 0.1), 0.9 * b_t + 0.1 * b_s
    np.testing.assert_allclose(teacher.weight.numpy(), w_t, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(teacher.bias.numpy(), b_t, rtol=1e-5, atol=1e-7)
    x = av.tensor(np.zeros(3, np.float32))
    x.detach().add_(1.0)
    x.data.mul_(3.0)
    np.testing.assert_array_equal(x.numpy(), [3, 3, 3])


def test_a_closed_over_layer_switched_to_eval_retraces(rng):
    drop = av.nn.Dropout(0.5)
    f = av.compile(lambda x: drop(x))
    x = np.ones((64, 64), np.float32)
    assert (f(x).numpy() == 0).mean() > 0.3
    drop.eval()
    np.testing.assert_array_equal(f(x).numpy(), x)


def test_named_tuples_go_in_and_come_out_of_compiled_functions():
    """torch's (values, indices) results and a user's namedtuple of tensors: the structure had no rule
    for tuple subclasses, so `return x.max(1)` from a compiled function raised."""
    from collections import namedtuple

    x = av.tensor(np.random.default_rng(0).standard_normal((3, 4)))
    r = av.compile(lambda x: av.max(x, 1))(x)
    want = av.max(x, 1)
    assert type(r) is type(want)
    np.testing.assert_array_equal(r.values.numpy(), want.values.numpy())
    np.testing.assert_array_equal(r.indices.numpy(), want.indices.numpy())
    Pair = namedtuple("Pair", "w b")
    p = Pair(av.tensor(np.ones((3, 2))), av.tensor(np.arange(3.0)))
    out = av.compile(lambda p: Pair(p.w * 2, p.w.sum() + p.b))(p)
    assert type(out) is Pair
    np.testing.assert_array_equal(out.b.numpy(), [6.0, 7.0, 8.0])
    np.testing.assert_array_equal(av.vmap(lambda p, s: p.w.sum() * s + p.b, in_dims=(0, None))(p, av.tensor(2.0))
                                  .numpy(), [4.0, 5.0, 6.0])


def test_values_read_from_a_model_keep_a_few_versions_per_signature():
    """A queue pointer read with `int(self.ptr)` (MoCo's enqueue) is baked into the trace; cycling among
    four positions compiles each once and then reuses them (one version per signature traced every
    step), and a value never seen still traces anew."""
    from avalon import nn

    class Queue(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("ptr", av.zeros((), dtype=av.int64))
            self.register_buffer("queue", av.zeros(8))

        def forward(self, x):
            p = int(self.ptr)
            self.queue[p:p + 2] = x
            self.ptr.fill_((p + 2) % 8)
            return self.queue.sum()

    m, want = Queue(), np.zeros(8, np.float32)
    step = av.compile(lambda m, x: m(x))
    for i in range(12):
        x = np.random.default_rng(i).standard_normal(2).astype(np.float32)
        want[2 * (i % 4):2 * (i % 4) + 2] = x
        assert abs(float(step(m, av.tensor(x))) - want.sum()) < 1e-5
    np.testing.assert_array_equal(m.queue.numpy(), want)
    assert step.cache_info() == (8, 4, 1)
    m.ptr.fill_(1)  # a position none of the versions read
    step(m, av.tensor(np.ones(2, np.float32)))
    assert step.cache_info().misses == 5 and m.queue.numpy()[1:3].tolist() == [1.0, 1.0]


def test_retracing_says_what_changed_and_warns_past_eight_signatures(caplog):
    """A hand-written optimizer's `group['lr']` set every step is part of the signature: the function
    traces every call. torch.compile warns at its recompile limit; Avalon warns at 8, 16, ...
    signatures naming the change, and the `avalon.compile` channel names every retrace's."""
    import logging
    import warnings

    from avalon import nn

    class Lion:  # a torch-style optimizer written by hand: its rate is a Python float
        def __init__(self, params, lr):
            self.param_groups = [{"params": list(params), "lr": lr}]

        def step(self, grads):
            for g in self.param_groups:
                for p, d in zip(g["params"], grads):
                    p.data.add_(d.sign(), alpha=-g["lr"])

    m, x = nn.Linear(4, 2), np.ones((3, 4), np.float32)
    opt = Lion(m.parameters(), 0.1)
    step = av.compile(lambda model, o, x: o.step(list(av.grad(lambda mm, x: mm(x).sum())(model, x).values())))
    with warnings.catch_warnings(record=True) as seen, caplog.at_level(logging.INFO, logger="avalon.compile"):
        warnings.simplefilter("always")
        for i in range(9):
            opt.param_groups[0]["lr"] = 0.1 / (i + 1)
            step(m, opt, x)
        step(m, opt, np.ones((5, 4), np.float32))
    said = [str(w.message) for w in seen if "different signatures" in str(w.message)]
    assert len(said) == 1 and "for 8 different signatures" in said[0], said
    assert "argument 1 (o): param_groups.0.lr = 0.0125 (was 0.014285714285714287)" in said[0]
    assert "x: shape (5, 4) f32 on cpu (was shape (3, 4) f32 on cpu)" in caplog.text
    assert step.cache_info().entries == 10

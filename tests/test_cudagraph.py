"""CUDA-graph replay (`avalon.codegen.triton.cudagraph`), driven on the CPU through Triton's
interpreter with a fake graph: capture records the launch sequence (with torch's allocators
forbidden, as allocating inside a real capture would be a bug), replay reruns it. Checked: results
match the reference call after call, inputs go through the static buffers, outputs never alias
across calls, any capture failure or mismatch falls back to plain launches with one warning,
and `AVALON_CUDA_GRAPHS=0` turns it off."""
import contextlib
import logging
import os

import numpy as np
import pytest
import torch

import avalon as av
from avalon import nn, optim
from avalon.codegen.triton import compile_graph, cudagraph
from avalon.ir import Builder, Graph, TensorType, interpret, to_numpy


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("AVALON_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(cudagraph.ENV, raising=False)


_ALLOCATORS = ("empty", "empty_like", "empty_strided", "zeros", "zeros_like", "ones", "full", "from_numpy")


@contextlib.contextmanager
def no_allocation():
    def forbidden(*a, **k):
        raise AssertionError("allocation inside a captured region")

    saved = {n: getattr(torch, n) for n in _ALLOCATORS}
    for n in _ALLOCATORS:
        setattr(torch, n, forbidden)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(torch, n, f)


class FakeGraphs:
    """A `cudagraph.Capture`: `fail` raises at capture, `noop` replays nothing, `break_after`
    raises from the n-th replay on."""

    def __init__(self, fail: Exception | None = None, noop: bool = False, break_after: int | None = None):
        self.fail, self.noop, self.break_after = fail, noop, break_after
        self.captures = self.replays = 0
        self.run = None

    def __call__(self, run, device):
        self.captures += 1
        if self.fail is not None:
            raise self.fail
        with no_allocation():
            run()  # (a real capture records without running; running here checks the region allocates nothing)
        self.run = run
        return self

    def replay(self):
        self.replays += 1
        if self.break_after is not None and self.replays > self.break_after:
            raise RuntimeError("replay failed")
        if not self.noop:
            with no_allocation():
                self.run()


def small_graph():
    """Two inputs, an output that is an input (copied), a duplicated result and a reshape view."""
    g = Graph("f")
    x = g.add_input(TensorType((4, 8), "f32"), "x")
    w = g.add_input(TensorType((8, 3), "f32"), "w")
    b = Builder(g)
    h = b("tanh", b("matmul", x, w))
    y = b("add", h, b("exp", h))
    g.set_outputs([y, x, y, b("reshape", h, shape=[12]), b("sum", y, axes=[0])])
    return g


def inputs(rng):
    return [rng.standard_normal((4, 8)).astype(np.float32), rng.standard_normal((8, 3)).astype(np.float32)]


def check_outputs(g, outs, ins):
    # on a real GPU the matmul may run in tf32 (about 1e-3 relative: `av.set_float32_matmul_precision`); the interpreter computes full fp32
    rtol, atol = (1e-5, 1e-6) if os.environ.get("TRITON_INTERPRET") == "1" else (1e-2, 1e-3)
    for o, r in zip(outs, interpret(g, *ins)):
        np.testing.assert_allclose(to_numpy(o), r, rtol=rtol, atol=atol)


def test_replays_match_the_reference_call_after_call_and_never_alias(rng):
    g = small_graph()
    cg = compile_graph(g)
    fake = cg.capture = FakeGraphs()
    history = []
    for _ in range(5):
        ins = inputs(rng)
        outs = cg(*[torch.from_numpy(a) for a in ins])
        check_outputs(g, outs, ins)
        history.append((ins, outs, [to_numpy(o).copy() for o in outs]))
    runner = cg._runners[str(cg.device)]
    assert runner.state == "captured" and fake.captures == 1
    assert fake.replays == 1 + 3  # the capture's check, then calls 3, 4, 5
    # earlier results are untouched by later calls, and no two results share memory
    for _, outs, copies in history:
        for o, c in zip(outs, copies):
            np.testing.assert_array_equal(to_numpy(o), c)
    ptrs = [o.data_ptr() for _, outs, _ in history for o in outs]
    assert len(set(ptrs)) == len(ptrs)
    statics = {t.data_ptr() for _, ts in runner._program for t in ts}
    assert not statics & set(ptrs)


def test_inputs_are_copied_into_the_static_buffers(rng):
    g = small_graph()
    cg = compile_graph(g)
    cg.capture = FakeGraphs()
    for _ in range(3):
        ins = inputs(rng)
        xs = [torch.from_numpy(a) for a in ins]
        cg(*xs)
    runner = cg._runners[str(cg.device)]
    for static, x in zip(runner._inputs, xs):
        assert static.data_ptr() != x.data_ptr()
        np.testing.assert_array_equal(to_numpy(static), to_numpy(x))
    # a transposed (non-contiguous) input is laid out by the input adaptation, then copied in
    ins = inputs(rng)
    xt = torch.from_numpy(np.ascontiguousarray(ins[0].T)).t()
    check_outputs(g, cg(xt, torch.from_numpy(ins[1])), ins)
    # host arrays work too
    ins = inputs(rng)
    check_outputs(g, cg(*ins), ins)


@pytest.mark.parametrize("fake", [FakeGraphs(fail=RuntimeError("operation not permitted when stream is capturing")),
                                  FakeGraphs(noop=True)], ids=["capture-raises", "replay-does-nothing"])
def test_a_failed_capture_falls_back_to_plain_launches_with_one_warning(rng, caplog, fake):
    g = small_graph()
    cg = compile_graph(g)
    cg.capture = fake
    with caplog.at_level(logging.WARNING, logger="avalon.triton"):
        for _ in range(4):
            ins = inputs(rng)
            check_outputs(g, cg(*[torch.from_numpy(a) for a in ins]), ins)
    runner = cg._runners[str(cg.device)]
    assert runner.state == "off" and fake.captures == 1
    lines = [r for r in caplog.records if r.name == "avalon.triton"]
    assert len(lines) == 1 and "CUDA graphs off for @f" in lines[0].getMessage()


def test_a_failing_replay_falls_back_and_the_call_is_rerun(rng, caplog):
    g = small_graph()
    cg = compile_graph(g)
    cg.capture = FakeGraphs(break_after=2)
    with caplog.at_level(logging.WARNING, logger="avalon.triton"):
        for _ in range(5):
            ins = inputs(rng)
            check_outputs(g, cg(*[torch.from_numpy(a) for a in ins]), ins)
    assert cg._runners[str(cg.device)].state == "off"
    assert "replay failed" in caplog.text


def test_disabled_by_environment(rng, monkeypatch):
    monkeypatch.setenv(cudagraph.ENV, "0")
    g = small_graph()
    cg = compile_graph(g)
    fake = cg.capture = FakeGraphs()
    for _ in range(3):
        ins = inputs(rng)
        check_outputs(g, cg(*ins), ins)
    assert cg._runners[str(cg.device)] is None and fake.captures == 0


def test_default_is_on_for_cuda_only(monkeypatch):
    assert cudagraph.capture_for(torch.device("cpu")) is None
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert cudagraph.capture_for(torch.device("cuda", 0)) is cudagraph.torch_capture
    monkeypatch.setenv(cudagraph.ENV, "off")
    assert cudagraph.capture_for(torch.device("cuda", 0)) is None


class MLP:
    def __init__(self):
        self.fc1 = nn.Linear(6, 16)
        self.fc2 = nn.Linear(16, 3)

    def __call__(self, x):
        return self.fc2(nn.functional.relu(self.fc1(x)))


def test_compiled_training_steps_through_replays_match_the_numpy_backend(rng, monkeypatch):
    """Under `av.compile` the state updates are scratch outputs (handed over in static buffers and
    written back at once): parameters and momentum after several replayed steps equal the
    reference backend's."""
    fake = FakeGraphs()
    default = cudagraph.capture_for
    monkeypatch.setattr(cudagraph, "capture_for", lambda device, override=None: default(device, fake))

    def loss_fn(m, x, y):
        return nn.functional.cross_entropy(m(x), y)

    def step(m, opt, x, y):
        loss, grads = av.value_and_grad(loss_fn)(m, x, y)
        opt.step(grads)
        return loss

    batches = [(rng.standard_normal((8, 6)).astype(np.float32), rng.integers(0, 3, 8)) for _ in range(5)]
    runs = {}
    for backend in ("numpy", "triton"):
        av.manual_seed(0)
        m = MLP()
        opt = optim.SGD(m, lr=0.1, momentum=0.9)
        c = av.compile(step, backend=backend)
        losses = [c(m, opt, x, y).item() for x, y in batches]
        runs[backend] = (losses, {k: v.numpy().copy() for k, v in nn.state_dict(m).items()},
                         {k: v.numpy().copy() for k, v in opt.state_dict().items()})
        if backend == "triton":
            cg = next(iter(c._cache.values())).executable.compiled
            assert cg.scratch_outputs and cg._runners[str(cg.device)].state == "captured"
    assert fake.replays == 1 + 3
    (ln, pn, on), (lt, pt, ot) = runs["numpy"], runs["triton"]
    np.testing.assert_allclose(lt, ln, rtol=1e-5)
    for k in pn:
        np.testing.assert_allclose(pt[k], pn[k], rtol=1e-5, atol=1e-6, err_msg=k)
    for k in on:
        np.testing.assert_allclose(ot[k], on[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.skipif(not torch.cuda.is_available() or cudagraph.interpreting(), reason="needs a GPU")
def test_real_cuda_graphs_capture_and_replay(rng):
    g = small_graph()
    cg = compile_graph(g)
    for _ in range(4):
        ins = inputs(rng)
        check_outputs(g, cg(*[torch.from_numpy(a).cuda() for a in ins]), ins)
    runner = cg._runners[str(cg.device)]
    assert runner.state == "captured" and runner.replays == 2, runner.failed


def test_state_is_reported_per_device(rng):
    g = small_graph()
    cg = compile_graph(g)
    cg.capture = FakeGraphs(fail=RuntimeError("no\nsecond line of a long CUDA error"))
    cg(*inputs(rng))
    assert cg.cuda_graphs == {str(cg.device): "warming up"}
    cg(*inputs(rng))
    assert cg.cuda_graphs == {str(cg.device): "off: RuntimeError: no"}

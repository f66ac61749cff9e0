"""The `all_reduce` op, the `bucket-all-reduce` pass and `avalon.distributed` within one process.

A fake process group (`FakeGroup`) stands in for torch.distributed: it plays a second rank whose
operand is a fixed elementwise function of ours, so a reduction has a known, non-trivial result
that every backend and every rewrite must reproduce. Two real processes: tests/test_ddp.py."""
from __future__ import annotations

import numpy as np
import pytest

import avalon as av
import avalon.distributed as dist
from avalon import ir, optim, zoo
from avalon.ir import Builder, Graph, TensorType, interpret, parse, verify
from avalon.ir.reference.collective import set_collective
from avalon.passes import PassManager
from avalon.train import make_train_step


class FakeGroup:
    """Two ranks; the other one holds 2*x + 1 where we hold x."""

    calls = 0

    def world_size(self, group: str) -> int:
        return 2

    def _reduce(self, a: np.ndarray, reduction: str) -> np.ndarray:
        FakeGroup.calls += 1
        total = a + (2 * a + 1)
        return total / 2 if reduction == "mean" else total

    def all_reduce_array(self, x, reduction, group):
        return self._reduce(np.asarray(x, dtype=np.float64), reduction).astype(x.dtype)

    def all_reduce_tensor_(self, x, reduction, group):
        a = x.numpy()
        a[...] = self._reduce(a.astype(np.float64), reduction)


@pytest.fixture
def fake():
    old = set_collective(FakeGroup())
    FakeGroup.calls = 0
    yield
    set_collective(old)


def _graph(types) -> Graph:
    g = Graph("step")
    for i, t in enumerate(types):
        g.add_input(t if isinstance(t, TensorType) else TensorType(t, ir.float32), f"x{i}")
    return g


def _chain(shapes, reduction="mean") -> Graph:
    """g = x_i * 3 for each input, all_reduce each, then one use of each result."""
    g = _graph(shapes)
    b = Builder(g)
    reduced = [b("all_reduce", b("mul", x, b("constant", value=3.0, shape=list(x.shape))), reduction=reduction)
               for x in g.inputs]
    g.set_outputs([b("add", r, x) for r, x in zip(reduced, g.inputs)])
    return g


def _inputs(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


# -- the op -------------------------------------------------------------------------------------

def test_all_reduce_is_declared_with_its_attributes_and_checks_its_operand():
    t = TensorType((3, 4), ir.float32)
    assert ir.infer_types("all_reduce", [t], {"reduction": "sum", "group": "world"}) == [t]
    with pytest.raises(ir.ShapeError, match="reduction must be one of"):
        ir.infer_types("all_reduce", [t], {"reduction": "max", "group": "world"})
    with pytest.raises(ir.ShapeError, match="floating-point"):
        ir.infer_types("all_reduce", [TensorType((3,), ir.int32)], {"reduction": "mean", "group": "world"})
    assert not ir.lookup("all_reduce").traits  # not pure (never merged, dropped or folded), never fused


def test_all_reduce_prints_and_parses_back():
    g = _chain([(2, 3)], reduction="sum")
    text = str(g)
    assert "all_reduce" in text and 'reduction = "sum"' in text
    assert str(parse(text)) == text


def test_reference_is_the_identity_on_one_process_and_the_group_collective_otherwise(fake):
    x = _inputs([(4, 5)])[0]
    g = _chain([(4, 5)])
    (got,) = interpret(g, x)
    np.testing.assert_allclose(got, (3 * x + 2 * 3 * x + 1) / 2 + x, rtol=1e-6)
    set_collective(None)
    (alone,) = interpret(g, x)
    np.testing.assert_allclose(alone, 3 * x + x, rtol=1e-6)


def test_cse_dce_and_canonicalize_keep_every_collective():
    g = _graph([(3,)])
    b = Builder(g)
    c = b("constant", value=1.0, shape=[3])
    r1, r2 = b("all_reduce", c), b("all_reduce", c)  # same operand twice, and a constant one
    b("all_reduce", g.inputs[0])  # result unused: still communication every rank takes part in
    g.set_outputs([b("add", r1, r2)])
    PassManager.parse("canonicalize,cse,dce").run(g)
    assert sum(op.name == "all_reduce" for op in g.ops) == 3


def test_vjp_is_an_all_reduce_of_the_cotangent(fake):
    x = _inputs([(5,)])[0]

    def f(x, w):
        return (dist.all_reduce(x * x, op="sum") * w).sum()

    g = av.grad(f)(av.tensor(x), av.tensor(np.arange(5, dtype=np.float32))).numpy()
    # y = x^2 + (2 x^2 + 1) (sum over the fake ranks); the cotangent w = arange(5) is all-reduced too:
    # w + (2 w + 1), then times d(x^2)/dx = 2x
    w = np.arange(5, dtype=np.float32)
    np.testing.assert_allclose(g, (w + 2 * w + 1) * 2 * x, rtol=1e-5)


# -- the bucket pass ----------------------------------------------------------------------------

SHAPES = [(3, 4), (5,), (), (2, 2, 2), (7,)]


def test_bucket_pass_fuses_all_reduces_into_flat_buffers():
    g = _chain(SHAPES)
    before = str(g)
    assert PassManager.parse("bucket-all-reduce").run(g)
    verify(g)
    after = str(g)
    assert before.count("all_reduce") == 5 and after.count("all_reduce") == 1, after
    n = sum(int(np.prod(s)) for s in SHAPES)
    assert "all_reduce %" in after and f"tensor<{n}xf32>" in after and "concat" in after and "slice" in after


def test_bucket_size_caps_each_buffer():
    g = _chain(SHAPES)
    PassManager.parse("bucket-all-reduce{bytes=64}").run(g)  # 16 floats per bucket at most
    sizes = [op.operands[0].type.numel for op in g.ops if op.name == "all_reduce"]
    assert sum(sizes) == sum(int(np.prod(s)) for s in SHAPES) and max(sizes) <= 16 and len(sizes) == 3, sizes
    with pytest.raises(Exception, match="bytes must be positive"):
        PassManager.parse("bucket-all-reduce{bytes=0}").run(_chain(SHAPES))


def test_bucket_pass_computes_what_the_unbucketed_graph_does(fake):
    xs = _inputs(SHAPES, seed=3)
    g = _chain(SHAPES)
    want = interpret(g, *xs)
    calls = FakeGroup.calls
    PassManager.parse("bucket-all-reduce,canonicalize,cse,dce").run(g)
    FakeGroup.calls = 0
    got = interpret(g, *xs)
    assert calls == 5 and FakeGroup.calls == 1
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_bucket_pass_leaves_an_all_reduce_whose_result_is_read_before_the_next_one():
    g = _graph([(3,), (3,)])
    b = Builder(g)
    r1 = b("all_reduce", g.inputs[0])
    r2 = b("all_reduce", b("add", r1, g.inputs[1]))  # depends on r1: cannot share its buffer
    g.set_outputs([r2])
    assert not PassManager.parse("bucket-all-reduce").run(g)


def test_bucket_pass_keeps_dtypes_and_reductions_apart():
    g = _graph([(3,), TensorType((3,), ir.float64), (3,)])
    b = Builder(g)
    outs = [b("all_reduce", g.inputs[0]), b("all_reduce", g.inputs[1]), b("all_reduce", g.inputs[2], reduction="sum")]
    g.set_outputs(outs)
    assert not PassManager.parse("bucket-all-reduce").run(g)


# -- compiled training steps --------------------------------------------------------------------

def _mlp_step_args(seed=0):
    av.manual_seed(seed)
    model = zoo.MLP(8, (6,), 3)
    rng = np.random.default_rng(seed)
    return model, optim.SGD(model, lr=0.1), rng.standard_normal((4, 8)).astype(np.float32), rng.integers(0, 3, 4)


PIPELINE = "canonicalize,cse,dce,bucket-all-reduce,fuse,memory-plan"


def test_compiled_step_carries_the_communication_between_gradient_and_update():
    step = av.compile(make_train_step(zoo.cross_entropy, all_reduce=True), pipeline=PIPELINE)
    insp = step.inspect(*_mlp_step_args())
    traced = [op for op in insp.traced_graph.ops if op.name == "all_reduce"]
    assert len(traced) == 4  # one per parameter as traced ...
    final = [op for op in insp.graph.ops if op.name == "all_reduce"]
    assert len(final) == 1  # ... one bucket after the pass, at top level: never inside a fused kernel
    assert not any(inner.name == "all_reduce" for op in insp.graph.ops if op.regions for inner in op.regions[0].walk())
    # gradients flow into it and the updated parameters out of it
    names = [op.name for op in insp.graph.ops]
    k = names.index("all_reduce")
    assert any(op.regions for op in insp.graph.ops[:k]) and any(op.regions for op in insp.graph.ops[k + 1:])
    assert "all_reduce" in insp.passes[-1].ir_after


@pytest.mark.parametrize("backend", ["numpy", "triton"])
def test_compiled_step_with_a_group_on_each_backend(fake, backend):
    """The step's update uses the reduced gradient: compare against the same step computed with the
    fake group's reduction applied to torch-free eager gradients."""
    model, opt, x, y = _mlp_step_args()
    ref_model, ref_opt, _, _ = _mlp_step_args()
    grads = av.grad(lambda m, x, y: zoo.cross_entropy(m(x), y))(ref_model, av.tensor(x), av.tensor(y))
    reduced = {k: (v.numpy() + 2 * v.numpy() + 1) / 2 for k, v in grads.items()}
    ref_opt.step({k: av.tensor(v) for k, v in reduced.items()})

    step = av.compile(make_train_step(zoo.cross_entropy, all_reduce=True), backend=backend, pipeline=PIPELINE)
    step(model, opt, x, y)
    assert FakeGroup.calls >= 1
    for (n, p), (_, q) in zip(zoo_params(model), zoo_params(ref_model)):
        np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6, err_msg=n)


def zoo_params(model):
    from avalon.tree import named_parameters
    return [(n, t.numpy()) for n, t in named_parameters(model)]


# -- avalon.distributed without a group ---------------------------------------------------------

def test_one_process_api():
    assert not dist.is_initialized() and dist.rank() == 0 and dist.world_size() == 1
    tree = {"a": av.tensor(np.arange(3.0)), "b": [np.ones((2, 2), np.float32)]}
    out = dist.all_reduce(tree)
    np.testing.assert_array_equal(out["a"].numpy(), np.arange(3.0))
    np.testing.assert_array_equal(out["b"][0].numpy(), np.ones((2, 2)))
    with pytest.raises(ValueError, match="op must be one of"):
        dist.all_reduce(tree, op="max")
    dist.barrier()  # nothing to wait for


def test_eager_all_reduce_makes_one_collective_per_dtype(fake, monkeypatch):
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    tree = {"a": av.tensor(np.arange(3.0, dtype=np.float32)), "b": av.tensor(np.ones((2, 2), np.float32)),
            "c": av.tensor(np.arange(2.0))}
    out = dist.all_reduce(tree, op="sum")
    assert FakeGroup.calls == 2
    for k, v in tree.items():
        np.testing.assert_allclose(out[k].numpy(), 3 * v.numpy() + 1)
        assert out[k].dtype == v.dtype


def test_init_without_torchrun_environment_says_how_to_launch(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        dist.init()


def test_save_and_load_carry_model_optimizer_and_extra_state(tmp_path):
    model, opt, x, y = _mlp_step_args()
    av.fit(model, x, y, zoo.cross_entropy, epochs=1, batch_size=2, optimizer=opt, progress=False)
    path = tmp_path / "ckpt.safetensors"
    dist.save(model, path, opt, extra={"epoch": np.int64(3)})
    other, other_opt, _, _ = _mlp_step_args(seed=1)
    extra = dist.load(path, other, other_opt)
    assert int(extra["epoch"]) == 3 and other_opt.steps == opt.steps == 2
    for (_, p), (_, q) in zip(zoo_params(model), zoo_params(other)):
        np.testing.assert_array_equal(p, q)


def test_fit_resumes_from_its_checkpoint_as_if_never_interrupted(tmp_path):
    from avalon import nn

    def run(epochs, **kw):
        av.manual_seed(5)
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3))
        rng = np.random.default_rng(0)
        x, y = rng.standard_normal((12, 6)).astype(np.float32), rng.integers(0, 3, 12)
        h = av.fit(model, x, y, zoo.cross_entropy, epochs=epochs, batch_size=5, optimizer=optim.Adam(model, lr=0.01),
                   progress=False, **kw)
        return h, zoo_params(model)

    full_h, full_p = run(4)
    ckpt = str(tmp_path / "fit.safetensors")
    run(2, checkpoint=ckpt, seed=None)  # "interrupted" after epoch 2 (seed=None: the global generator's)
    h, p = run(4, checkpoint=ckpt, resume=True)
    assert h == full_h
    for (n, a), (_, b) in zip(p, full_p):
        np.testing.assert_array_equal(a, b, err_msg=n)


def test_all_reduce_keeps_grads_and_save_carries_plain_extra_state(tmp_path):
    """`dist.all_reduce(grads)` stays av.grad's Grads (an optimizer over filtered bare tensors
    matches by it: it raised KeyError after the all-reduce), and `extra=` takes a scheduler's
    state_dict (plain values) as well as arrays."""
    from avalon import nn
    from avalon.optim import lr_scheduler
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    for p in m[0].parameters():
        p.requires_grad = False
    opt = optim.SGD(filter(lambda p: p.requires_grad, m.parameters()), lr=0.1)
    _, g = av.value_and_grad(lambda m, x: (m(x) ** 2).sum())(m, np.ones((2, 3), np.float32))
    reduced = dist.all_reduce(g)
    assert type(reduced) is type(g) and reduced.params is g.params
    before = m[2].weight.numpy().copy()
    opt.step(reduced)
    np.testing.assert_allclose(m[2].weight.numpy(), before - 0.1 * g["2.weight"].numpy(), rtol=1e-6)
    sched = lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    sched.step()
    path = tmp_path / "ck.safetensors"
    dist.save(m, path, opt, extra={"sched": sched.state_dict(), "epoch": np.int64(1)})
    extra = dist.load(path, m, opt)
    assert extra["sched"] == sched.state_dict() and int(extra["epoch"]) == 1

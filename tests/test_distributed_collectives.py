"""The `all_gather` primitive, torch.distributed's functional surface in `avalon.distributed`
(`all_reduce` in place, `broadcast`, `all_gather`, `all_gather_into_tensor`, `reduce_scatter_tensor`,
`nn.all_gather`) and `ZeroRedundancyOptimizer`.

In one process: every rule of `all_gather` (the identity with one process; with a fake second rank, as
tests/test_distributed.py fakes one, the values and gradients of two). In two real processes (gloo on
localhost, launched as torchrun would, as tests/test_ddp.py does; this file is its own worker): each
rank's results against torch.distributed run the same way in the same processes, torch as the oracle.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import launch_ranks

import avalon as av
import avalon.distributed as dist
from avalon import ir, optim
from avalon.ir import Builder, Graph, TensorType, interpret, parse, verify
from avalon.ir.reference.collective import set_collective

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent


class FakeGroup:
    """Two ranks; we are `rank`, and the other one holds 2*x + 1 where we hold x."""

    def __init__(self, rank: int = 0):
        self._rank = rank

    def world_size(self, group):
        return 2

    def rank(self, group):
        return self._rank

    def _other(self, a):
        return (2 * a.astype(np.float64) + 1).astype(a.dtype)

    def all_reduce_array(self, x, reduction, group):
        t = x.astype(np.float64) + self._other(x).astype(np.float64)
        return (t / 2 if reduction == "mean" else t).astype(x.dtype)

    def all_reduce_tensor_(self, x, reduction, group):
        x.numpy()[...] = self.all_reduce_array(x.numpy(), reduction, group)

    def all_gather_array(self, x, group):
        parts = [x, self._other(x)] if self._rank == 0 else [self._other(x), x]
        return np.concatenate(parts, axis=0)

    def all_gather_tensor_(self, out, x, group):
        out.numpy()[...] = self.all_gather_array(x.numpy(), group)


@pytest.fixture(params=[0, 1])
def fake(request):
    old = set_collective(FakeGroup(request.param))
    yield request.param
    set_collective(old)


def _gather_graph(shape=(2, 3), n=1) -> Graph:
    g = Graph("gather")
    x = g.add_input(TensorType(shape, ir.float32), "x")
    g.set_outputs([Builder(g)("all_gather", x, world_size=n)])
    return g


# -- the primitive, one process -------------------------------------------------------------------

def test_all_gather_is_declared_not_pure_and_round_trips():
    t = TensorType((2, 3), ir.float32)
    assert ir.infer_types("all_gather", [t], {"world_size": 4, "group": "world"}) == [TensorType((8, 3), ir.float32)]
    assert ir.infer_types("all_gather", [TensorType((5,), ir.int64)], {"world_size": 1, "group": "world"}) == [TensorType((5,), ir.int64)]
    with pytest.raises(ir.ShapeError, match="rank >= 1"):
        ir.infer_types("all_gather", [TensorType((), ir.float32)], {"world_size": 1, "group": "world"})
    with pytest.raises(ir.ShapeError, match="world_size"):
        ir.infer_types("all_gather", [t], {"world_size": 0, "group": "world"})
    assert not ir.lookup("all_gather").traits  # never merged, dropped, folded or fused (all_reduce's reasons)
    g = _gather_graph(n=2)
    text = str(g)
    assert "all_gather" in text and "world_size = 2" in text and "tensor<4x3xf32>" in text
    verify(parse(text))


def test_cli_lists_every_rule_and_nothing_is_missing():
    r = subprocess.run([sys.executable, "-m", "avalon.cli", "ops", "all_gather"], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    for kind in ("reference", "vjp", "batch", "triton", "linalg", "jvp", "onnx_export"):
        assert kind in r.stdout, r.stdout
    from avalon.ir.registry import missing_rules
    assert missing_rules() == {}


def test_one_process_rules_are_the_identity():
    from avalon.autodiff import grad_graph, jvp_graph
    from avalon.batching import batch_graph
    from avalon.mlir.linalg import to_linalg_mlir
    from avalon.onnx.exporter import graph_to_onnx
    x = np.arange(6.0, dtype=np.float32).reshape(2, 3)
    g = _gather_graph()
    np.testing.assert_array_equal(interpret(g, x)[0], x)
    np.testing.assert_array_equal(av.compile(lambda t: dist.nn.all_gather(t)[0] * 2, backend="triton")(x), 2 * x)
    assert "all_gather" not in to_linalg_mlir(g)  # the identity
    assert {n.op_type for n in graph_to_onnx(g).graph.node} == {"Identity"}
    assert any(op.name == "all_gather" for op in jvp_graph(g, [0]).ops)
    assert grad_graph is not None and batch_graph is not None
    f = av.vmap(lambda t: dist.nn.all_gather(t)[0] + 1)
    np.testing.assert_array_equal(f(np.stack([x, 2 * x])).numpy(), np.stack([x, 2 * x]) + 1)
    gx = av.grad(lambda t: (dist.nn.all_gather(t)[0] ** 2).sum())(av.tensor(x))
    np.testing.assert_allclose(gx.numpy(), 2 * x)


def test_a_graph_traced_for_two_processes_refuses_one():
    with pytest.raises(RuntimeError, match="group of 2"):
        interpret(_gather_graph(n=2), np.zeros((2, 3), np.float32))


# -- the primitive over a fake second rank ---------------------------------------------------------

def test_two_rank_reference_vjp_batching_and_triton(fake):
    r = fake
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    other = 2 * x + 1
    want = np.concatenate([x, other] if r == 0 else [other, x])
    np.testing.assert_array_equal(interpret(_gather_graph(n=2), x)[0], want)
    np.testing.assert_array_equal(np.concatenate([t.numpy() for t in dist.nn.all_gather(av.tensor(x))]), want)
    # vjp: loss = sum(w * gathered) on every rank; d/dx_r = sum over ranks of rows r of w (the fake's other
    # rank's cotangent of those rows is, by the fake's all_reduce, 2*w_rows + 1)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    gx = av.grad(lambda t, w: (av.cat(dist.nn.all_gather(t), 0) * w).sum())(av.tensor(x), av.tensor(w))
    rows = w[2 * r:2 * r + 2]
    np.testing.assert_allclose(gx.numpy(), rows + (2 * rows + 1), rtol=1e-6)
    # batching: the same as a loop over examples
    xs = rng.standard_normal((3, 2, 3)).astype(np.float32)
    batched = av.vmap(lambda t: av.cat(dist.nn.all_gather(t), 0))(xs).numpy()
    for i in range(3):
        np.testing.assert_array_equal(batched[i], interpret(_gather_graph(n=2), xs[i])[0])
    # triton host step (interpreter): the gathered storage
    got = av.compile(lambda t: av.cat(dist.nn.all_gather(t), 0) + 0, backend="triton")(x)
    np.testing.assert_array_equal(np.asarray(got), want)


def test_two_rank_graphs_have_no_linalg_or_onnx_form(fake):
    from avalon.mlir.linalg import to_linalg_mlir
    from avalon.onnx.exporter import graph_to_onnx
    with pytest.raises(NotImplementedError, match="2 processes"):
        to_linalg_mlir(_gather_graph(n=2))
    with pytest.raises(NotImplementedError, match="2 processes"):
        graph_to_onnx(_gather_graph(n=2))


# -- torch's surface, one process ------------------------------------------------------------------

def test_torch_surface_in_one_process():
    assert dist.get_rank() == 0 and dist.get_world_size() == 1 and not dist.is_initialized()
    x = av.tensor(np.arange(6.0, dtype=np.float32).reshape(2, 3))
    t = av.tensor(x.numpy().copy())
    assert dist.all_reduce(t) is None and dist.all_reduce(t, op=dist.ReduceOp.AVG) is None  # torch's form: in place
    assert dist.all_reduce(t, async_op=True).wait()
    np.testing.assert_array_equal(t.numpy(), x.numpy())
    assert isinstance(dist.all_reduce({"a": t})["a"], av.Tensor)  # Avalon's form: a new tree
    assert isinstance(dist.all_reduce(t, "sum"), av.Tensor)
    outs = [av.zeros((2, 3))]
    dist.all_gather(outs, x)
    big = av.zeros((2, 3))
    dist.all_gather_into_tensor(big, x)
    rs = av.zeros((2, 3))
    dist.reduce_scatter_tensor(rs, x)
    b = av.tensor(x.numpy().copy())
    dist.broadcast(b, src=0)
    for got in (outs[0], big, rs, b):
        np.testing.assert_array_equal(got.numpy(), x.numpy())
    assert [v.shape for v in dist.nn.all_gather(x)] == [(2, 3)]
    dist.barrier()

    def step(t):
        out = av.zeros((2, 3))
        dist.all_gather_into_tensor(out, t)
        dist.all_reduce(out)
        return out
    np.testing.assert_array_equal(av.compile(step)(x.numpy()), x.numpy())


def test_zero_in_one_process_is_the_optimizer():
    from avalon import nn
    av.manual_seed(0)
    a = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 2))
    b = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 2))
    nn.load_state_dict(b, nn.state_dict(a))
    za = dist.optim.ZeroRedundancyOptimizer(a.parameters(), optimizer_class=optim.AdamW, lr=0.1)
    ob = optim.AdamW(b.parameters(), lr=0.1)
    x = np.ones((3, 4), np.float32)
    for _ in range(2):
        for m, o in ((a, za), (b, ob)):
            o.step(av.grad(lambda m, x: (m(x) ** 2).sum())(m, x))
    for (n, p), q in zip(nn.state_dict(a).items(), nn.state_dict(b).values()):
        np.testing.assert_array_equal(p.numpy(), q.numpy(), err_msg=n)
    za.consolidate_state_dict()
    sd = za.state_dict()
    assert set(sd) == set(ob.state_dict())
    za.load_state_dict(sd)


def test_zero_param_groups_are_the_global_groups_a_scheduler_sets():
    """torch's ZeRO shows every group on every rank (a rank may own none of a group's parameters) and
    passes their hyperparameters on to its local optimizer: a per-group LambdaLR follows them."""
    from avalon import nn
    av.manual_seed(0)
    a = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 2))
    b = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 2))
    nn.load_state_dict(b, nn.state_dict(a))

    def groups(m):
        return [{"params": m[0].parameters(), "lr": 0.1}, {"params": m[1].parameters(), "lr": 0.02, "weight_decay": 0.5}]
    za = dist.optim.ZeroRedundancyOptimizer(groups(a), optimizer_class=optim.AdamW, lr=0.3, betas=(0.8, 0.9))
    ob = optim.AdamW(groups(b), lr=0.3, betas=(0.8, 0.9))
    assert [len(g["params"]) for g in za.param_groups] == [2, 2]
    assert [g["lr"] for g in za.param_groups] == [0.1, 0.02] and za.param_groups[1]["weight_decay"] == 0.5
    assert za.param_groups[0]["betas"] == (0.8, 0.9) and za.lr == 0.1
    scheds = [optim.lr_scheduler.LambdaLR(o, [lambda e: 0.5 ** e, lambda e: 1.0 + e]) for o in (za, ob)]
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    for _ in range(3):
        for m, o, sch in ((a, za, scheds[0]), (b, ob, scheds[1])):
            o.step(av.grad(lambda m, x: (m(x) ** 2).sum())(m, x))
            sch.step()
    assert [g["lr"] for g in za.param_groups] == [g["lr"] for g in ob.param_groups] == [0.1 / 8, 0.08]
    for (n, p), q in zip(nn.state_dict(a).items(), nn.state_dict(b).values()):
        np.testing.assert_array_equal(p.numpy(), q.numpy(), err_msg=n)
    with pytest.raises(TypeError, match="fixed"):
        za.param_groups[0]["params"] = []
    step = av.compile(lambda m, o, x: o.step(av.grad(lambda m, x: (m(x) ** 2).sum())(m, x)))
    for _ in range(3):  # the groups' rates are the local optimizer's tensors: one trace for every rate
        step(a, za, x)
        scheds[0].step()
        za.lr = za.lr * 0.9
    assert step.cache_info().entries == 1


# -- two processes, torch as the oracle ---------------------------------------------------------------

def _launch(out: Path, timeout: float = 120) -> list[subprocess.CompletedProcess]:
    return launch_ranks([str(HERE), "worker", str(out)], timeout, TRITON_INTERPRET="1")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("collectives")
    results = _launch(out)
    for r, res in enumerate(results):
        assert res.returncode == 0, f"rank {r} failed:\n{res.stderr[-4000:]}"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_two_ranks_match_torch_distributed(two_ranks):
    print({k: [m[k] for m in two_ranks] for k in two_ranks[0] if k.startswith("simclr")})
    for r, m in enumerate(two_ranks):
        for key in ("all_gather", "all_gather_into_tensor", "broadcast", "all_reduce_sum", "all_reduce_max",
                    "all_reduce_avg", "reduce_scatter", "compiled_collectives", "triton_all_gather"):
            assert m[key] == 0.0, (r, key, m[key])  # bit for bit
        for key in ("simclr_loss", "simclr_grad", "simclr_compiled_grad", "simclr_triton_grad"):
            assert m[key] < 1e-5, (r, key, m[key])
        assert m["simclr_grads_differ_across_ranks"]


def test_zero_matches_adamw_and_shards_its_state(two_ranks):
    parts = [m["zero_partition"] for m in two_ranks]
    torch_parts = [sorted(names) for names in two_ranks[0]["torch_zero_partition"]]
    assert parts[0] == parts[1] and [sorted(names) for names in parts[0]] == torch_parts  # torch's partition
    print({k: [m[k] for m in two_ranks] for k in ("zero_vs_adamw_eager", "zero_vs_torch_zero",
                                                    "zero_compiled_vs_adamw", "zero_compiled_all_gathers")})
    for r, m in enumerate(two_ranks):
        assert m["zero_vs_adamw_eager"] == 0.0 and m["zero_vs_torch_zero"] < 1e-6, m  # 3 eager steps
        assert m["zero_compiled_vs_adamw"] == 0.0 and m["zero_compiled_all_gathers"] > 0, m  # then 2 compiled
        assert m["zero_state_params"] == sorted(parts[0][r]), m  # only its partition's state
        assert m["zero_steps_changed_weights"]
    assert two_ranks[0]["consolidated_matches_adamw"] == 0.0


# -- the worker (each rank runs this file) ---------------------------------------------------------------

def _maxdiff(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def _worker(out: Path) -> None:  # noqa: PLR0915
    import torch
    import torch.distributed as tdist
    import torch.distributed.nn.functional as tnn
    from torch.distributed.optim import ZeroRedundancyOptimizer as TorchZero

    from avalon import nn
    from avalon.nn import functional as F

    dist.init_process_group("gloo")
    r, n = dist.get_rank(), dist.get_world_size()
    assert (r, n) == (tdist.get_rank(), tdist.get_world_size()) == (int(os.environ["RANK"]), 2)
    m: dict = {}
    rng = np.random.default_rng(10 + r)
    x = rng.standard_normal((3, 4)).astype(np.float32)

    got = [av.zeros((3, 4)) for _ in range(n)]
    dist.all_gather(got, av.tensor(x))
    want = [torch.zeros(3, 4) for _ in range(n)]
    tdist.all_gather(want, torch.from_numpy(x.copy()))
    m["all_gather"] = max(_maxdiff(g.numpy(), w.numpy()) for g, w in zip(got, want))

    worst = 0.0
    for dtype in (np.float32, np.float16, np.int64, np.bool_):
        v = (rng.standard_normal((2, 3)) * 5).astype(dtype)
        big = av.zeros((2 * n, 3), dtype=av.tensor(v).dtype)
        dist.all_gather_into_tensor(big, av.tensor(v))
        tbig = torch.zeros((2 * n, 3), dtype=torch.from_numpy(v).dtype)
        tdist.all_gather_into_tensor(tbig, torch.from_numpy(v.copy()))
        worst = max(worst, _maxdiff(big.numpy(), tbig.numpy()))
        assert big.numpy().dtype == v.dtype
    m["all_gather_into_tensor"] = worst

    b, tb = av.tensor(x.copy()), torch.from_numpy(x.copy())
    dist.broadcast(b, src=1)
    tdist.broadcast(tb, src=1)
    m["broadcast"] = _maxdiff(b.numpy(), tb.numpy())

    for op, top, key in ((dist.ReduceOp.SUM, tdist.ReduceOp.SUM, "all_reduce_sum"),
                         (dist.ReduceOp.MAX, tdist.ReduceOp.MAX, "all_reduce_max")):
        a, ta = av.tensor(x.copy()), torch.from_numpy(x.copy())
        assert dist.all_reduce(a, op=op) is None
        tdist.all_reduce(ta, op=top)
        m[key] = _maxdiff(a.numpy(), ta.numpy())
    a, ta = av.tensor(x.copy()), torch.from_numpy(x.copy())
    dist.all_reduce(a, op=dist.ReduceOp.AVG)
    tdist.all_reduce(ta)  # (gloo has no AVG: torch's sum divided by the group's size, as Avalon divides)
    m["all_reduce_avg"] = _maxdiff(a.numpy(), (ta / n).numpy())

    y = rng.standard_normal((2 * n, 3)).astype(np.float32)
    rs = av.zeros((2, 3))
    dist.reduce_scatter_tensor(rs, av.tensor(y))
    tall = torch.from_numpy(y.copy())
    tdist.all_reduce(tall)  # (gloo has no reduce_scatter: the oracle is torch's sum and this rank's rows)
    m["reduce_scatter"] = _maxdiff(rs.numpy(), tall[2 * r:2 * r + 2].numpy())

    def collectives(t):  # torch's call forms inside a compiled function: IR ops, written in place
        gathered = av.zeros((3 * n, 4))
        dist.all_gather_into_tensor(gathered, t)
        s = t * 1
        dist.all_reduce(s)
        c = t * 1
        dist.broadcast(c, src=0)
        return gathered, s, c
    step = av.compile(collectives)
    outs = step(x)
    names = {op.name for op in step.inspect(x).graph.ops}
    assert "all_gather" in names and "all_reduce" in names, names
    tg = torch.zeros(3 * n, 4)
    tdist.all_gather_into_tensor(tg, torch.from_numpy(x.copy()))
    ts = torch.from_numpy(x.copy())
    tdist.all_reduce(ts)
    tc = torch.from_numpy(x.copy())
    tdist.broadcast(tc, src=0)
    m["compiled_collectives"] = max(_maxdiff(np.asarray(o), t.numpy()) for o, t in zip(outs, (tg, ts, tc)))
    m["triton_all_gather"] = _maxdiff(np.asarray(av.compile(lambda t: av.cat(dist.nn.all_gather(t), 0) + 0,
                                                            backend="triton")(x)), tg.numpy())

    # SimCLR (NT-Xent) over features gathered from every rank, gradients through the gather
    B, D, E, tau = 4, 6, 5, 0.5
    w0 = np.random.default_rng(0).standard_normal((D, E)).astype(np.float32)  # the same encoder on every rank
    v1, v2 = (rng.standard_normal((B, D)).astype(np.float32) for _ in range(2))
    labels = (np.arange(B) + n * B + r * B).astype(np.int64)

    def avalon_loss(w, v1, v2):
        z1, z2 = F.normalize(v1 @ w, dim=1), F.normalize(v2 @ w, dim=1)
        everything = av.cat([*dist.nn.all_gather(z1), *dist.nn.all_gather(z2)], 0)
        return F.cross_entropy(z1 @ everything.T / tau, av.tensor(labels))

    tw = torch.from_numpy(w0.copy()).requires_grad_()
    tz1 = torch.nn.functional.normalize(torch.from_numpy(v1) @ tw, dim=1)
    tz2 = torch.nn.functional.normalize(torch.from_numpy(v2) @ tw, dim=1)
    tall = torch.cat([*tnn.all_gather(tz1), *tnn.all_gather(tz2)], 0)
    tloss = torch.nn.functional.cross_entropy(tz1 @ tall.T / tau, torch.from_numpy(labels))
    tloss.backward()
    loss, gw = av.value_and_grad(avalon_loss)(av.tensor(w0), v1, v2)
    m["simclr_loss"] = _maxdiff(loss.numpy(), tloss.detach().numpy())
    m["simclr_grad"] = _maxdiff(gw.numpy(), tw.grad.numpy())
    cw = av.compile(av.grad(avalon_loss))(w0, v1, v2)
    m["simclr_compiled_grad"] = _maxdiff(np.asarray(cw), tw.grad.numpy())
    tw_ = av.compile(av.grad(avalon_loss), backend="triton")(w0, v1, v2)
    m["simclr_triton_grad"] = _maxdiff(np.asarray(tw_), tw.grad.numpy())
    both = [None, None]
    dist.all_gather_object(both, tw.grad.numpy().tolist())
    m["simclr_grads_differ_across_ranks"] = not np.allclose(both[0], both[1])  # the gather's gradient matters

    # ZeroRedundancyOptimizer over AdamW vs a plain AdamW (and torch's ZeRO) on the same averaged gradients
    def model():
        av.manual_seed(3)
        return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 7), nn.ReLU(), nn.Linear(7, 3))
    zm, am = model(), model()
    init = {k: v.numpy().copy() for k, v in nn.state_dict(zm).items()}
    zero = dist.optim.ZeroRedundancyOptimizer(zm.parameters(), optimizer_class=optim.AdamW, lr=0.05,
                                              weight_decay=0.1)
    plain = optim.AdamW(am.parameters(), lr=0.05, weight_decay=0.1)
    tparams = [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in init.values()]
    tzero = TorchZero(tparams, optimizer_class=torch.optim.AdamW, lr=0.05, weight_decay=0.1)
    index = {id(p): i for i, p in enumerate(tparams)}
    names = list(init)
    m["torch_zero_partition"] = [[names[index[id(p)]] for g in groups for p in g["params"]]
                                 for groups in tzero._partition_parameters()]
    m["zero_partition"] = zero.partition

    def objective(mod, xb, yb):
        return ((mod(xb) - yb) ** 2).mean()
    for _ in range(3):
        xb = rng.standard_normal((8, 5)).astype(np.float32)
        yb = rng.standard_normal((8, 3)).astype(np.float32)
        gz = dist.all_reduce(av.grad(objective)(zm, xb, yb))  # the mean over ranks (Avalon's tree form)
        ga = dist.all_reduce(av.grad(objective)(am, xb, yb))
        zero.step(gz)
        plain.step(ga)
        for p, k in zip(tparams, names):
            p.grad = torch.from_numpy(np.ascontiguousarray(gz[k].numpy()))
        tzero.step()
    zs = nn.state_dict(zm)
    m["zero_vs_torch_zero"] = max(_maxdiff(zs[k].numpy(), p.detach().numpy()) for k, p in zip(names, tparams))
    m["zero_vs_adamw_eager"] = max(_maxdiff(zs[k].numpy(), nn.state_dict(am)[k].numpy()) for k in names)
    def train_step(mod, opt, xb, yb):  # a compiled step: the owners' broadcasts are all_gather ops in its IR
        opt.step(dist.all_reduce(av.grad(objective)(mod, xb, yb)))
    zstep, astep = av.compile(train_step), av.compile(train_step)
    for _ in range(2):
        xb = rng.standard_normal((8, 5)).astype(np.float32)
        yb = rng.standard_normal((8, 3)).astype(np.float32)
        zstep(zm, zero, xb, yb)
        astep(am, plain, xb, yb)
    m["zero_compiled_all_gathers"] = sum(op.name == "all_gather" for op in zstep.inspect(zm, zero, xb, yb).graph.ops)
    zs, as_ = nn.state_dict(zm), nn.state_dict(am)
    m["zero_compiled_vs_adamw"] = max(_maxdiff(zs[k].numpy(), as_[k].numpy()) for k in names)
    m["zero_steps_changed_weights"] = all(not np.allclose(zs[k].numpy(), init[k]) for k in names)
    m["zero_state_params"] = sorted(zero.state)
    zero.consolidate_state_dict(to=0)
    if r == 0:
        sd, ref = zero.state_dict(), plain.state_dict()
        assert set(sd) == set(ref), sorted(set(sd) ^ set(ref))
        m["consolidated_matches_adamw"] = max(_maxdiff(sd[k].numpy(), ref[k].numpy()) for k in ref)
        full = sd
    else:
        with pytest.raises(RuntimeError, match="consolidate"):
            zero.state_dict()
        full = None
    box = [full and {k: v.numpy() for k, v in full.items()}]
    dist.broadcast_object_list(box, src=0)
    zero.load_state_dict(box[0])  # every rank keeps its partition's part
    dist.barrier()
    (out / f"rank{r}.json").write_text(json.dumps(m))
    dist.destroy_process_group()


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    _worker(Path(sys.argv[2]))

"""One rank of tests/test_distributed_ports.py: torch DDP training scripts ported to Avalon by renaming
imports, run side by side with the torch originals in the same two processes (gloo, CPU, the same
process group: torch DDP and Avalon both use it), compared step by step. torch is the oracle only.

`python tests/distributed_ports_worker.py MODE OUT` with torchrun's environment. Every check is
recorded, not raised (a rank that raised mid-way would leave its peer waiting): OUT/rank<r>.json holds
{"failures": [...], "checks": n}.

Modes:
  ports     1. "Getting started with DDP" (env://, DistributedSampler + set_epoch, DDP, accumulation
               under no_sync, a checkpoint saved on rank 0 and loaded everywhere after a barrier)
            2. a SimCLR/CLIP contrastive loss over features gathered with gradients (the GatherLayer
               idiom and distributed.nn.functional.all_gather), all_reduce of a metric with AVG/MAX
            3. SyncBatchNorm + DDP(find_unused_parameters=True) + ZeroRedundancyOptimizer, with the
               consolidate_state_dict/state_dict/load_state_dict round trip
  faults    4. a collective before init_process_group, DDP over frozen parameters, mismatched shapes
               across the ranks, a rank raising while the other waits (bounded by the group timeout)
  world-size  rank 1 started with another WORLD_SIZE: a clear error from init_process_group
"""
from __future__ import annotations

import datetime
import json
import os
import sys
import time
import traceback

import numpy as np
import torch
import torch.distributed as tdist
import torch.nn as tnn
import torch.nn.functional as TF

import avalon as av
import avalon.distributed as dist
import avalon.nn.functional as F
from avalon import nn, optim
from avalon.nn.parallel import DistributedDataParallel as DDP
from avalon.utils.data import DataLoader, DistributedSampler, TensorDataset

FAILURES: list[str] = []
CHECKS = [0]


def close(what: str, got, want, rtol=1e-9, atol=1e-10) -> None:
    CHECKS[0] += 1
    got = got.numpy() if hasattr(got, "numpy") and not isinstance(got, np.ndarray) else got
    got = np.asarray(got.detach().numpy() if isinstance(got, torch.Tensor) else got, np.float64)
    want = np.asarray(want.detach().numpy() if isinstance(want, torch.Tensor) else want, np.float64)
    if got.shape != want.shape or not np.allclose(got, want, rtol=rtol, atol=atol):
        diff = np.max(np.abs(got - want)) if got.shape == want.shape else f"shapes {got.shape} vs {want.shape}"
        FAILURES.append(f"{what}: differs from torch ({diff})")


def check(what: str, ok: bool) -> None:
    CHECKS[0] += 1
    if not ok:
        FAILURES.append(what)


def copy_into(av_model, t_model) -> None:
    """Avalon's parameters and buffers := torch's (float64)."""
    nn.load_state_dict(av_model, {k: v.detach().numpy() for k, v in t_model.state_dict().items()})


# -- 1. getting started with DDP ------------------------------------------------------------------

def getting_started(r: int, out: str) -> None:
    world = dist.get_world_size()
    torch.manual_seed(0)
    tnet = tnn.Sequential(tnn.Linear(10, 10), tnn.ReLU(), tnn.Linear(10, 5)).double()
    with torch.no_grad():  # each rank starts elsewhere: DDP gives everyone rank 0's weights
        for p in tnet.parameters():
            p.add_(0.1 * r)
    net = nn.Sequential(nn.Linear(10, 10, dtype=av.float64), nn.ReLU(), nn.Linear(10, 5, dtype=av.float64))
    copy_into(net, tnet)
    tddp = tnn.parallel.DistributedDataParallel(tnet)
    ddp = DDP(net)
    topt = torch.optim.SGD(tddp.parameters(), lr=0.05, momentum=0.9)
    opt = optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((22, 10)), rng.standard_normal((22, 5))
    dataset = TensorDataset(av.tensor(X), av.tensor(Y))
    sampler = DistributedSampler(dataset, shuffle=True, seed=3)
    loader = DataLoader(dataset, batch_size=3, sampler=sampler)
    loss_fn, tloss_fn = nn.MSELoss(), tnn.MSELoss()
    step = av.value_and_grad(lambda m, x, y: loss_fn(m(x), y))
    accum = 2
    seen = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        idx = list(sampler)
        seen.append(idx)
        acc = None
        for i, (x, y) in enumerate(loader):
            rows = idx[3 * i:3 * i + 3]
            close(f"1: epoch {epoch} batch {i} rows", x.numpy(), X[rows])
            tx, ty = torch.from_numpy(X[rows]), torch.from_numpy(Y[rows])
            last = (i + 1) % accum == 0 or i == len(loader) - 1
            if not last:
                with tddp.no_sync():
                    tl = tloss_fn(tddp(tx), ty)
                    tl.backward()
            else:
                tl = tloss_fn(tddp(tx), ty)
                tl.backward()
            # the port: gradients are values; each micro-batch's gradient under no_sync, summed, then
            # averaged once (what torch's synchronized backward does to the accumulated .grad)
            with ddp.no_sync():
                loss, g = step(ddp, x, y)
            close(f"1: epoch {epoch} batch {i} loss", loss, tl)
            acc = g if acc is None else {k: acc[k] + g[k] for k in acc}
            if last:
                acc = dist.all_reduce(acc)
                for name, p in tddp.named_parameters():
                    close(f"1: epoch {epoch} batch {i} grad {name}", acc[name], p.grad)
                topt.step()
                topt.zero_grad()
                opt.step(acc)
                opt.zero_grad()
                acc = None
        for name, p in tddp.named_parameters():
            close(f"1: epoch {epoch} param {name}", ddp.state_dict()[name], p)
    everyone = [None] * world
    dist.all_gather_object(everyone, seen)
    for epoch in range(2):
        union = sorted(i for s in everyone for i in s[epoch])
        check(f"1: epoch {epoch}: the ranks' samples cover the dataset (padded)", set(union) == set(range(22))
              and len(union) == 22 + (-22) % world)
    check("1: set_epoch changes the order", seen[0] != seen[1])

    # a checkpoint on rank 0, loaded on every rank after a barrier (the tutorial's map_location)
    path = os.path.join(out, "ddp_checkpoint.safetensors")
    if dist.get_rank() == 0:
        av.save(ddp.state_dict(), path)
    dist.barrier()
    fresh = DDP(nn.Sequential(nn.Linear(10, 10, dtype=av.float64), nn.ReLU(), nn.Linear(10, 5, dtype=av.float64)))
    fresh.load_state_dict(av.load(path, map_location={"cuda:0": f"cuda:{r}"}))
    for name, t in tddp.state_dict().items():
        close(f"1: checkpoint {name}", fresh.state_dict()[name], t)
    dist.barrier()
    if r == 0:
        os.remove(path)


# -- 2. contrastive loss over gathered features --------------------------------------------------

class TGatherLayer(torch.autograd.Function):
    """The GatherLayer of SimCLR/VICReg code bases, in torch."""

    @staticmethod
    def forward(ctx, x):
        output = [torch.zeros_like(x) for _ in range(tdist.get_world_size())]
        tdist.all_gather(output, x)
        return tuple(output)

    @staticmethod
    def backward(ctx, *grads):
        all_gradients = torch.stack(grads)
        tdist.all_reduce(all_gradients)
        return all_gradients[tdist.get_rank()]


class GatherLayer(av.autograd.Function):
    """The same, ported by renaming."""

    @staticmethod
    def forward(ctx, x):
        output = [av.zeros_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(output, x)
        return tuple(output)

    @staticmethod
    def backward(ctx, *grads):
        all_gradients = av.stack(grads)
        dist.all_reduce(all_gradients)
        return all_gradients[dist.get_rank()]


def contrastive(r: int) -> None:
    from avalon.distributed.nn.functional import all_gather as nn_all_gather
    B, T = 4, 0.5
    torch.manual_seed(1)
    tnet = tnn.Linear(6, 4).double()
    net = nn.Linear(6, 4, dtype=av.float64)
    copy_into(net, tnet)
    x = np.random.default_rng(10 + r).standard_normal((B, 6))
    tx = torch.from_numpy(x)

    def tloss(gather):
        z = TF.normalize(tnet(tx), dim=1)
        allz = torch.cat(gather(z), dim=0)
        logits = z @ allz.T / T
        labels = torch.arange(B) + r * B
        return TF.cross_entropy(logits, labels)

    def loss(model, x, gather):
        z = F.normalize(model(x), dim=1)
        allz = av.cat(gather(z), dim=0)
        logits = z @ allz.T / T
        labels = av.arange(B) + dist.get_rank() * B
        return F.cross_entropy(logits, labels)

    def t_open_clip(z):  # open_clip's gather_features without gather_with_grad: only this rank's rows differentiate
        gathered = [torch.zeros_like(z) for _ in range(tdist.get_world_size())]
        tdist.all_gather(gathered, z)
        gathered[tdist.get_rank()] = z
        return gathered

    def open_clip(z):
        gathered = [av.zeros_like(z) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, z)
        gathered[dist.get_rank()] = z
        return gathered

    import torch.distributed.nn.functional as tdnnf
    for label, tg, ag in (("GatherLayer", TGatherLayer.apply, GatherLayer.apply),
                          ("nn.functional.all_gather", tdnnf.all_gather, nn_all_gather),
                          ("all_gather + this rank's own features", t_open_clip, open_clip)):
        tnet.zero_grad()
        tl = tloss(tg)
        tl.backward()
        for how, fn in (("eager", av.value_and_grad(loss)), ("compiled", av.compile(av.value_and_grad(loss)))):
            try:
                value, g = fn(net, av.tensor(x), ag)
            except Exception as e:  # noqa: BLE001 - recorded; the peer must not be left waiting
                FAILURES.append(f"2: {label} {how}: {type(e).__name__}: {e}")
                continue
            close(f"2: {label} {how} loss", value, tl)
            for name, p in tnet.named_parameters():
                close(f"2: {label} {how} grad {name}", g[name], p.grad)

    # a metric reduced over the ranks: torch's AVG (not on gloo: the oracle is SUM / world) and MAX
    acc = np.array([0.25 + r, 3.0 - r])
    m = av.tensor(acc)
    dist.all_reduce(m, op=dist.ReduceOp.AVG)
    t = torch.from_numpy(acc.copy())
    tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    close("2: all_reduce AVG", m, t / tdist.get_world_size())
    m = av.tensor(acc)
    dist.all_reduce(m, op=dist.ReduceOp.MAX)
    t = torch.from_numpy(acc.copy())
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    close("2: all_reduce MAX", m, t)
    m, t = av.tensor(acc), torch.from_numpy(acc.copy())  # the metric summed on rank 0 for logging
    dist.reduce(m, dst=0)
    tdist.reduce(t, dst=0)
    if r == 0:
        close("2: reduce to rank 0", m, t)
    n = dist.get_world_size()
    mine, got, want = acc * (r + 2), [av.zeros(2, dtype=av.float64) for _ in range(n)], [torch.zeros(2).double() for _ in range(n)]
    dist.gather(av.tensor(mine), got if r == 0 else None, dst=0)
    tdist.gather(torch.from_numpy(mine), want if r == 0 else None, dst=0)
    if r == 0:
        for i in range(n):
            close(f"2: gather to rank 0, rank {i}'s", got[i], want[i])
    parts = [np.full(3, 10.0 * i + 1) for i in range(n)]
    m, t = av.zeros(3, dtype=av.float64), torch.zeros(3).double()
    dist.scatter(m, [av.tensor(p) for p in parts] if r == 1 else None, src=1)
    tdist.scatter(t, [torch.from_numpy(p) for p in parts] if r == 1 else None, src=1)
    close("2: scatter from rank 1", m, t)
    s = av.tensor(float(r + 1))  # a 0-d loss, as `loss.detach()` is all-reduced for logging
    dist.all_reduce(s)
    close("2: all_reduce of a 0-d tensor", s, np.float64(3.0))


# -- 3. SyncBatchNorm, unused parameters, ZeRO ----------------------------------------------------

class TNet(tnn.Module):
    def __init__(self):
        super().__init__()
        self.conv = tnn.Conv2d(2, 3, 3, bias=False)
        self.bn = tnn.BatchNorm2d(3)
        self.head = tnn.Linear(12, 2)
        self.aux = tnn.Linear(12, 2)
        self.register_buffer("floor", torch.tensor([-float("inf"), -5.0], dtype=torch.float64))
        self.register_buffer("keep", torch.tensor([True, True]))

    def forward(self, x, use_aux):
        h = torch.relu(self.bn(self.conv(x))).flatten(1)
        y = torch.maximum(self.head(h), self.floor).masked_fill(~self.keep, 0.0)
        return y + self.aux(h) if use_aux else y


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, bias=False, dtype=av.float64)
        self.bn = nn.BatchNorm2d(3, dtype=av.float64)
        self.head = nn.Linear(12, 2, dtype=av.float64)
        self.aux = nn.Linear(12, 2, dtype=av.float64)
        self.register_buffer("floor", av.tensor([-float("inf"), -5.0], dtype=av.float64))
        self.register_buffer("keep", av.tensor([True, True]))

    def forward(self, x, use_aux):
        h = F.relu(self.bn(self.conv(x))).flatten(1)
        y = av.maximum(self.head(h), self.floor).masked_fill(~self.keep, 0.0)
        return y + self.aux(h) if use_aux else y


def sync_bn_zero(r: int) -> None:
    from torch.distributed.optim import ZeroRedundancyOptimizer as TZeRO

    from avalon.distributed.optim import ZeroRedundancyOptimizer
    torch.manual_seed(2)
    tmodel = TNet().double()
    with torch.no_grad():
        tmodel.bn.running_mean.add_(r)  # broadcast_buffers: rank 0's at every forward
    model = Net()
    copy_into(model, tmodel)
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    check("3: convert_sync_batchnorm", type(model.bn).__name__ == "SyncBatchNorm")
    # torch's SyncBatchNorm runs on GPUs only: the oracle is its definition, one torch process on the
    # global batch (every rank's rows) with plain batch norm, rank 0's weights, the same ZeRO optimizer
    with torch.no_grad():
        for t in tmodel.state_dict().values():
            tdist.broadcast(t, src=0)
    ddp = DDP(model, find_unused_parameters=True, broadcast_buffers=True)
    if r == 1:  # changed after wrapping: every forward gives each rank rank 0's buffers, bit for bit
        model.floor.copy_(av.tensor([-float("inf"), 100.0], dtype=av.float64))
        model.keep.copy_(av.tensor([False, True]))
    topt = TZeRO(tmodel.parameters(), optimizer_class=torch.optim.Adam, lr=0.01)
    opt = ZeroRedundancyOptimizer(ddp.parameters(), optimizer_class=optim.Adam, lr=0.01)
    rng = np.random.default_rng(20)  # the same on every rank: the global batch
    world = dist.get_world_size()
    step = av.compile(av.value_and_grad(lambda m, x, y, aux: F.mse_loss(m(x, aux), y)))  # compiled, this one

    def one(s, zero, tzero):
        x, y = rng.standard_normal((3 * world, 2, 4, 4)), rng.standard_normal((3 * world, 2))
        use_aux = s % 2 == 1
        tl = TF.mse_loss(tmodel(torch.from_numpy(x), use_aux), torch.from_numpy(y))
        tl.backward()
        mine = slice(3 * r, 3 * r + 3)
        loss, g = step(ddp, av.tensor(x[mine]), av.tensor(y[mine]), use_aux)
        close(f"3: step {s} loss", dist.all_reduce(loss, "mean"), tl)
        for name, p in tmodel.named_parameters():
            name = "module." + name
            if p.grad is None:
                check(f"3: step {s} {name} has no gradient, as torch's", name not in g)
            else:
                close(f"3: step {s} grad {name}", g[name], p.grad)
        tzero.step()
        tzero.zero_grad(set_to_none=True)
        zero.step(g)
        for name, t in tmodel.state_dict().items():
            close(f"3: step {s} state {name}", ddp.state_dict()["module." + name], t)

    for s in range(3):
        one(s, opt, topt)
    topt.consolidate_state_dict(to=0)
    opt.consolidate_state_dict(to=0)
    state = [None]
    if r == 0:
        tsd = topt.state_dict()
        sd = opt.state_dict()
        names = ["module." + n for n, _ in tmodel.named_parameters()]
        for i, name in enumerate(names):
            for slot in ("exp_avg", "exp_avg_sq"):
                close(f"3: consolidated {name} {slot}", sd[f"state.{name}.{slot}"], tsd["state"][i][slot])
        state = [{k: np.asarray(v.numpy()) for k, v in sd.items()}]
    dist.broadcast_object_list(state, src=0)
    opt2 = ZeroRedundancyOptimizer(ddp.parameters(), optimizer_class=optim.Adam, lr=0.01)
    opt2.load_state_dict(state[0])
    for s in range(3, 5):
        one(s, opt2, topt)


# -- 4. error paths (run with TORCH_DISTRIBUTED_DEBUG=DETAIL, torch's switch for comparing the ranks' calls) --

def before_init() -> None:
    try:
        dist.all_reduce(av.tensor(np.ones(2)))
        FAILURES.append("4: a collective before init_process_group did not raise")
    except RuntimeError as e:
        check(f"4: before init, torch's error: {e}", "init_process_group" in str(e))
    try:
        dist.barrier()
        FAILURES.append("4: a barrier before init_process_group did not raise")
    except RuntimeError as e:
        check(f"4: before init, torch's error: {e}", "init_process_group" in str(e))


def faults(r: int) -> None:
    frozen = nn.Linear(3, 2)
    for p in frozen.parameters():
        p.requires_grad_(False)
    try:
        DDP(frozen)
        FAILURES.append("4: DDP of a model with nothing to train did not raise")
    except Exception as e:  # noqa: BLE001
        check(f"4: DDP of a frozen model: torch's error, got {type(e).__name__}: {e}",
              isinstance(e, RuntimeError) and "requires a gradient" in str(e))
    part = nn.Linear(3, 2, dtype=av.float64)  # a frozen bias: DDP averages the weight's gradient only
    part.bias.requires_grad_(False)
    ddp = DDP(part)
    g = av.grad(lambda m, x: (m(x) ** 2).sum())(ddp, av.tensor(np.full((1, 3), float(r + 1))))
    check(f"4: a frozen parameter has no gradient: {sorted(g)}", sorted(g) == ["module.weight"])

    t = av.tensor(np.ones(3 + r))  # a different shape on each rank
    try:
        dist.all_reduce(t)
        FAILURES.append("4: all_reduce of mismatched shapes did not raise")
    except Exception as e:  # noqa: BLE001
        check(f"4: mismatched shapes: a clear error, got {type(e).__name__}: {e}",
              isinstance(e, dist.DistributedError) and "different shapes" in str(e) and "died" not in str(e))

    # a rank raising while the others wait: it does not exit at once (its handler is slow); the others
    # fail within the group's timeout, naming themselves, instead of waiting forever
    if r == 1:
        raise RuntimeError("rank 1 fails in its own code")
    started = time.monotonic()
    try:
        dist.all_reduce(av.tensor(np.ones(2)))
        FAILURES.append("4: the collective with a failed peer returned")
    except dist.DistributedError as e:
        check(f"4: the error names the rank: {e}", "rank 0" in str(e))
    check(f"4: bounded by the group timeout ({time.monotonic() - started:.1f}s)", time.monotonic() - started < 10)


def main(mode: str, out: str) -> None:
    r = int(os.environ["RANK"])
    timeout = 8
    if mode == "faults":
        before_init()
        timeout = 3
    if mode == "world-size":  # rank 1 was started with another WORLD_SIZE
        os.environ["WORLD_SIZE"] = str(2 + r)
        timeout = 2
    try:
        # torch's per-device backend string; the tutorial's env:// (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)
        dist.init_process_group("cpu:gloo,cuda:nccl", init_method="env://", timeout=datetime.timedelta(seconds=timeout))
    except Exception as e:  # noqa: BLE001
        check(f"4: world size mismatch: a clear error, got {type(e).__name__}: {e}",
              mode == "world-size" and "WORLD_SIZE=" in str(e) and "same WORLD_SIZE" in str(e))
        json.dump({"failures": FAILURES, "checks": CHECKS[0]}, open(os.path.join(out, f"rank{r}.json"), "w"))
        return
    sections = {"ports": [getting_started, contrastive, sync_bn_zero], "faults": [faults], "world-size": []}
    for fn in sections[mode]:
        try:
            fn(r, out) if fn is getting_started else fn(r)
        except Exception:  # noqa: BLE001
            if mode != "faults" or r != 1:
                FAILURES.append(f"{fn.__name__} raised:\n{traceback.format_exc()}")
            json.dump({"failures": FAILURES, "checks": CHECKS[0]}, open(os.path.join(out, f"rank{r}.json"), "w"))
            if mode == "faults":
                time.sleep(4)  # a slow exception handler: the peer must not wait for it
            raise SystemExit(1) from None
    json.dump({"failures": FAILURES, "checks": CHECKS[0]}, open(os.path.join(out, f"rank{r}.json"), "w"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

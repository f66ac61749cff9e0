"""One rank of the SyncBatchNorm / DistributedSampler tests (tests/test_sync_batchnorm.py): run as a
subprocess with torchrun's environment and `python tests/syncbn_worker.py OUT`; writes
OUT/rank<r>.npz. The global batch is made from a fixed seed on every rank (ranks hold uneven
slices of it, 3 and 5 samples); the test compares against torch's plain BatchNorm on all of it."""
from __future__ import annotations

import os
import sys

import numpy as np

import avalon as av
import avalon.distributed as dist
from avalon import nn, optim
from avalon.nn import functional as F
from avalon.utils.data import DataLoader, DistributedSampler, TensorDataset

C, SPLIT, MOMENTUM = 3, (0, 3, 8), 0.3  # rank r holds samples SPLIT[r]:SPLIT[r+1]
N_FIT, B_FIT = 16, 4  # fit: samples; per-rank batch


def global_data() -> dict[str, np.ndarray]:
    """The global batch (channel means far from 0, so a one-pass variance would show) and the rest."""
    rng = np.random.default_rng(0)
    n = SPLIT[-1]
    return {"x": rng.standard_normal((n, C, 4, 5)) * [[[2.0]], [[0.5]], [[1.0]]] + [[[30.0]], [[-4.0]], [[0.5]]],
            "g": rng.standard_normal((n, C, 4, 5)), "weight": rng.uniform(0.5, 1.5, C), "bias": rng.standard_normal(C),
            "x2d": rng.standard_normal((n, C)) * 3 + 1, "g2d": rng.standard_normal((n, C))}


def make_bn(d: dict, momentum: float | None = MOMENTUM) -> nn.SyncBatchNorm:
    bn = nn.SyncBatchNorm(C, momentum=momentum, dtype="float64")
    nn.load_state_dict(bn, {"weight": d["weight"], "bias": d["bias"]}, strict=False)
    return bn


def objective(bn, x, g):
    return (bn(x) * g).sum()


class Net:
    """A small CNN with batch norm, converted to SyncBatchNorm for the data-parallel fit."""

    def __init__(self):
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 6 * 6, 4)

    def __call__(self, x):
        return self.fc(nn.relu(self.bn(self.conv(x))).reshape(x.shape[0], -1))


def fit(batch: int) -> dict[str, np.ndarray]:
    """Train the SyncBatchNorm CNN 2 epochs (one process with batch 2b is the reference)."""
    av.manual_seed(11)
    model = nn.SyncBatchNorm.convert_sync_batchnorm(Net())
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((N_FIT, 1, 8, 8)) + 2).astype(np.float32)
    y = rng.integers(0, 4, N_FIT)
    history = av.fit(model, x, y, F.cross_entropy, epochs=2, batch_size=batch, seed=7, progress=False,
                     optimizer=optim.SGD(model, lr=0.1, momentum=0.9))
    out = {k: np.asarray(v.numpy()) for k, v in nn.state_dict(model).items()}
    out["history"] = np.asarray(history)
    return out


def main(out: str) -> None:
    dist.init(timeout=float(os.environ.get("AVALON_DIST_TIMEOUT", "30")))
    r = dist.rank()
    d = global_data()
    mine = slice(SPLIT[r], SPLIT[r + 1])
    x, g = d["x"][mine], d["g"][mine]
    res: dict[str, np.ndarray] = {}

    # eager forward (running stats updated once), then av.grad (traced, interpreted: updated twice)
    bn = make_bn(d)
    res["y"] = bn(x).numpy()
    res["mean1"], res["var1"] = bn.running_mean.numpy().copy(), bn.running_var.numpy().copy()
    grads, gx = av.grad(objective, argnums=(0, 1))(bn, av.tensor(x), av.tensor(g))
    res["gx"], res["gw"], res["gb"] = gx.numpy(), grads["weight"].numpy(), grads["bias"].numpy()
    summed = dist.all_reduce(grads, op="sum")  # what DDP's gradient all-reduce adds up
    res["gw_sum"], res["gb_sum"] = summed["weight"].numpy(), summed["bias"].numpy()
    res["mean2"], res["var2"] = bn.running_mean.numpy(), bn.running_var.numpy()
    res["count"] = np.asarray(int(bn.num_batches_tracked.numpy()))
    bn.eval()
    res["y_eval"] = bn(x).numpy()  # running statistics, no collective

    # the same under av.compile (numpy backend), on a fresh layer
    bn_c = make_bn(d)
    step = av.compile(lambda m, x, g: av.value_and_grad(objective, argnums=(0, 1))(m, x, g))
    insp = step.inspect(bn_c, av.tensor(x), av.tensor(g))
    res["compiled_all_reduces"] = np.asarray(sum(op.name == "all_reduce" for op in insp.graph.ops))
    _, (grads_c, gx_c) = step(bn_c, av.tensor(x), av.tensor(g))
    res["c_gx"], res["c_gw"], res["c_gb"] = gx_c.numpy(), grads_c["weight"].numpy(), grads_c["bias"].numpy()
    res["c_mean"], res["c_var"] = bn_c.running_mean.numpy(), bn_c.running_var.numpy()

    # (N, C) input, momentum=None (cumulative average), two steps
    bn1 = make_bn(d, momentum=None)
    x2, g2 = d["x2d"][mine], d["g2d"][mine]
    bn1(x2)
    _, gx2 = av.grad(objective, argnums=(0, 1))(bn1, av.tensor(x2), av.tensor(g2))
    res["gx2d"], res["mean2d"], res["var2d"] = gx2.numpy(), bn1.running_mean.numpy(), bn1.running_var.numpy()

    # DistributedSampler with the group's defaults, through a DataLoader
    ds = TensorDataset(np.arange(11, dtype=np.int64))
    sampler = DistributedSampler(ds, shuffle=True, seed=3)
    sampler.set_epoch(2)
    res["sampled"] = np.concatenate([b[0].numpy() for b in DataLoader(ds, batch_size=4, sampler=sampler)])
    res["sampler_replicas"] = np.asarray([sampler.num_replicas, sampler.rank])

    # the data-parallel fit of a converted model
    res.update({f"fit.{k}": v for k, v in fit(B_FIT).items()})
    np.savez(os.path.join(out, f"rank{r}.npz"), **res)
    dist.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])

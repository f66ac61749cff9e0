"""One rank of the data-parallel tests (tests/test_ddp.py): run as a subprocess with torchrun's
environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and `python tests/ddp_worker.py MODE OUT`.

Modes:
  train   the equivalence configurations (MLP and CNN; SGD and Adam) and an uninterrupted
          4-epoch run of the resumable model; writes OUT/<config>.rank<r>.npz
  die     fit 4 epochs with a checkpoint, but rank 1 leaves after epoch 2 (os._exit): rank 0 must
          fail with a DistributedError, not hang
  resume  fit 4 epochs, resuming from the checkpoint `die` left
"""
from __future__ import annotations

import os
import sys

import numpy as np

import avalon as av
import avalon.distributed as dist
from avalon import nn, optim
from avalon.nn import functional as F

N, B = 16, 4  # samples; per-rank batch


class CNN:
    def __init__(self):
        self.conv = nn.Conv2d(1, 3, 3)
        self.fc = nn.Linear(3 * 3 * 3, 4)

    def __call__(self, x):
        h = nn.maxpool2d(nn.relu(self.conv(x)), (2, 2))
        return self.fc(h.reshape(x.shape[0], -1))


def mlp():
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))


def droppy():
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 4))


def data(kind: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, 1, 8, 8) if kind == "cnn" else (N, 6)).astype(np.float32)
    return x, rng.integers(0, 4, N)


def make(kind: str, opt: str, init_seed: int):
    av.manual_seed(init_seed)
    model = {"mlp": mlp, "cnn": CNN, "droppy": droppy}[kind]()
    o = optim.SGD(model, lr=0.1, momentum=0.9) if opt == "sgd" else optim.Adam(model, lr=0.01)
    return model, o


def run(kind: str, opt: str, batch: int, epochs: int, init_seed: int, **kw) -> tuple[dict, list[float]]:
    """Train one configuration; every rank starts from a different init (rank 0's is broadcast)."""
    model, o = make(kind, opt, init_seed)
    x, y = data(kind)
    history = av.fit(model, x, y, F.cross_entropy, epochs=epochs, batch_size=batch, optimizer=o, seed=7,
                     progress=False, **kw)
    return {k: np.asarray(v.numpy()) for k, v in nn.state_dict(model).items()}, history


CONFIGS = [("mlp", "sgd"), ("mlp", "adam"), ("cnn", "sgd"), ("cnn", "adam")]


def wrapper_run(rank: int, world: int, init_seed: int, steps: int = 2) -> dict:
    """A custom loop as torch scripts write it, `model = DistributedDataParallel(model)`: each rank takes
    its B samples of every 2B; with world 1, the plain model on the whole 2B (the reference)."""
    from avalon.nn.parallel import DistributedDataParallel
    av.manual_seed(init_seed)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    model = DistributedDataParallel(net) if world > 1 else net
    opt = optim.SGD(model, lr=0.1, momentum=0.9)
    step = av.compile(av.value_and_grad(lambda m, xb, yb: F.cross_entropy(m(xb), yb)))
    x, y = data("mlp")
    for s in range(steps):
        lo = s * 2 * B + (rank * B if world > 1 else 0)
        hi = lo + (B if world > 1 else 2 * B)
        _, grads = step(model, x[lo:hi], y[lo:hi])
        opt.step(grads)
    return {k: np.asarray(v.numpy()) for k, v in nn.state_dict(net).items()}


def broadcast_buffers_run(rank: int) -> dict:
    """Every rank's batch norm running mean made different after wrapping; a forward (compiled, in eval
    mode) gives every rank rank 0's buffers first, as torch's DDP(broadcast_buffers=True) does."""
    from avalon.nn.parallel import DistributedDataParallel
    av.manual_seed(5)
    net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8))
    model = DistributedDataParallel(net)
    net[1].running_mean.fill_(float(rank + 1))
    model.eval()
    y = av.compile(lambda m, x: m(x))(model, data("mlp")[0][:4])
    return {"y": np.asarray(y.numpy()), "running_mean": np.asarray(net[1].running_mean.numpy())}


def main(mode: str, out: str) -> None:
    dist.init(timeout=float(os.environ.get("AVALON_DIST_TIMEOUT", "30")))
    r = dist.rank()
    if mode == "train":
        for kind, opt in CONFIGS:
            params, history = run(kind, opt, B, 2, init_seed=100 + r)
            np.savez(os.path.join(out, f"{kind}-{opt}.rank{r}.npz"), history=history, **params)
        params, history = run("droppy", "adam", B, 4, init_seed=100 + r)
        np.savez(os.path.join(out, f"full.rank{r}.npz"), history=history, **params)
        np.savez(os.path.join(out, f"wrapper.rank{r}.npz"), **wrapper_run(r, dist.world_size(), init_seed=100 + r))
        np.savez(os.path.join(out, f"buffers.rank{r}.npz"), **broadcast_buffers_run(r))
    elif mode == "die":
        ckpt = os.path.join(out, "ckpt.safetensors")
        if r == 1:
            run("droppy", "adam", B, 2, init_seed=100 + r, checkpoint=ckpt)
            sys.stdout.flush()
            os._exit(3)  # a rank that dies: no goodbye to the group
        run("droppy", "adam", B, 4, init_seed=100 + r, checkpoint=ckpt)
    elif mode == "resume":
        params, history = run("droppy", "adam", B, 4, init_seed=200 + r, checkpoint=os.path.join(out, "ckpt.safetensors"),
                              resume=True)
        np.savez(os.path.join(out, f"resumed.rank{r}.npz"), history=history, **params)
    else:
        raise SystemExit(f"unknown mode {mode}")
    dist.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

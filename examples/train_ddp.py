"""Data-parallel training over torch.distributed: each process trains on its shard of every epoch.

    torchrun --nproc-per-node 2 examples/train_ddp.py [--epochs 5] [--batch-size 32] [--checkpoint ddp.safetensors]
    python examples/train_ddp.py          # one process: the same script, no group

Each rank gets `--batch-size` samples per step (so two ranks take steps of 2x that), rank 0's initial
weights are broadcast, the gradients are averaged inside the compiled step (`all_reduce` in its IR)
and every rank ends with the same model and history. With `--checkpoint`, the model, the optimizer
and the data position are saved after every epoch and a relaunch resumes from there.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import avalon as av
import avalon.distributed as dist
from avalon import optim, zoo
from avalon.train import predict


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32, help="per process")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default=None, help="save after every epoch; resume from it when it exists")
    args = p.parse_args(argv)

    if "RANK" in os.environ:  # started by torchrun
        dist.init()
    av.manual_seed(args.seed + dist.rank())  # different on purpose: fit broadcasts rank 0's weights
    X, y, X_test, y_test = zoo.datasets.digits(8, normalize="standard")
    model = zoo.MLP(in_features=64, hidden=(128, 64), num_classes=10)
    started = time.perf_counter()
    history = av.fit(model, X, y, zoo.cross_entropy, epochs=args.epochs, batch_size=args.batch_size,
                     optimizer=optim.Adam(model, lr=args.lr), seed=args.seed, checkpoint=args.checkpoint,
                     resume=args.checkpoint is not None)
    seconds = time.perf_counter() - started
    acc = float((predict(model, X_test).argmax(axis=1) == y_test).mean())
    if dist.rank() == 0:
        print(f"{dist.world_size()} process(es), {args.batch_size} samples each per step: final loss "
              f"{history[-1]:.4f}, test accuracy {acc:.3f}, {seconds:.1f}s")
    if dist.is_initialized():
        dist.shutdown()
    return acc


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()

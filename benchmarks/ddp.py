"""Data-parallel training steps per second on 1 and 2 processes (gloo, this machine's CPUs), and the
share of a step spent in collectives.

    python benchmarks/ddp.py [--steps 60] [--batch 64] [--backend numpy]

Each configuration runs in fresh processes launched as torchrun would (environment variables, a free
port on localhost). A worker compiles the training step of an MLP on 8x8 digits-sized inputs (with
`all_reduce` of the gradients, bucketed, under a group), warms up, then times `--steps` steps;
collective time is measured around the process group hook the `all_reduce` op calls. Reported per
configuration: steps/s of each process, samples/s of all processes together (its ratio to one
process is the speedup), and collective ms per step and share. On a GPU machine the same with NCCL
needs one GPU per process.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker(steps: int, batch: int, backend: str) -> dict:
    import numpy as np

    import avalon as av
    import avalon.distributed as dist
    from avalon import optim, zoo
    from avalon.distributed.fit import DataParallel
    from avalon.ir.reference import collective as hook_module
    from avalon.train import make_train_step

    if "RANK" in os.environ:
        dist.init(timeout=120)
    spent = [0.0]
    inner = hook_module.collective()
    if inner is not None:
        class Timed:
            def world_size(self, group):
                return inner.world_size(group)

            def all_reduce_array(self, x, reduction, group):
                t = time.perf_counter()
                try:
                    return inner.all_reduce_array(x, reduction, group)
                finally:
                    spent[0] += time.perf_counter() - t

            def all_reduce_tensor_(self, x, reduction, group):
                t = time.perf_counter()
                try:
                    inner.all_reduce_tensor_(x, reduction, group)
                finally:
                    spent[0] += time.perf_counter() - t
        hook_module.set_collective(Timed())
    av.manual_seed(0)
    model = zoo.MLP(in_features=64, hidden=(256, 256), num_classes=10)
    opt = optim.SGD(model, lr=0.01, momentum=0.9)
    group = DataParallel.create()
    step = av.compile(make_train_step(zoo.cross_entropy, all_reduce=group is not None), backend=backend,
                      pipeline=group.pipeline() if group is not None else None)
    rng = np.random.default_rng(dist.rank())
    x = rng.standard_normal((batch, 64)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    for _ in range(5):
        step(model, opt, x, y)
    n_coll = sum(op.name == "all_reduce" for op in step.inspect(model, opt, x, y).graph.ops)
    dist.barrier()
    spent[0] = 0.0
    t0 = time.perf_counter()
    for _ in range(steps):
        step(model, opt, x, y)
    seconds = time.perf_counter() - t0
    out = {"rank": dist.rank(), "world": dist.world_size(), "seconds": seconds, "collective_s": spent[0],
           "collectives_per_step": n_coll}
    if dist.is_initialized():
        dist.shutdown()
    return out


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(world: int, args: argparse.Namespace) -> list[dict]:
    port = _port()
    procs = []
    for r in range(world):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
        if world > 1:
            env.update(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port))
        cmd = [sys.executable, __file__, "--worker", "--steps", str(args.steps), "--batch", str(args.batch),
               "--backend", args.backend]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        if p.returncode != 0:
            raise SystemExit(f"a worker failed (exit {p.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=64, help="per process")
    p.add_argument("--backend", default="numpy")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.steps, args.batch, args.backend)))
        return
    print(f"MLP 64-256-256-10, batch {args.batch} per process, {args.steps} steps, backend {args.backend}, "
          f"gloo on {os.cpu_count()} CPU core(s); no GPU here, so no NCCL numbers")
    base = None
    for world in (1, 2):
        res = run(world, args)
        sps = min(args.steps / r["seconds"] for r in res)  # the group moves at its slowest rank's pace
        samples = sps * args.batch * world
        base = base or samples
        coll = max(r["collective_s"] for r in res) / args.steps * 1e3
        share = max(r["collective_s"] / r["seconds"] for r in res)
        print(f"  {world} process(es): {sps:7.1f} steps/s per process, {samples:8.0f} samples/s total "
              f"({samples / base:.2f}x), {res[0]['collectives_per_step']} collective(s)/step, "
              f"{coll:.2f} ms/step in collectives ({share:.0%} of a step)")


if __name__ == "__main__":
    main()

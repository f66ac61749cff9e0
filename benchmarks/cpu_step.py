"""CPU training-step benchmark: Avalon's generated numpy code vs torch eager (and torch.compile /
jax.jit when installed), in one process, rounds interleaved, 2 threads, medians.

    OPENBLAS_CORETYPE= OPENBLAS_L2_SIZE= python benchmarks/cpu_step.py [--rounds 10] [--steps 5] [--threads 2]

(unset both OpenBLAS variables for this command only: they pin an older kernel on some CPUs.)
Each round times `--steps` steps of every contender in turn, so machine noise hits all alike; the
table reports the median step time (wall clock, and CPU time of the process, which a loaded machine
disturbs less) and its ratio to torch eager. `--threads` sets torch's threads and, through
threadpoolctl when installed, numpy's BLAS threads. It also reports the time to the first Avalon step
(trace + grad + passes + codegen + one run; the BLAS library already initialized by one small matmul)
and, with tracemalloc, the peak memory a steady Avalon LeNet step holds against the memory plan's
live-set bound plus the parameters.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import tracemalloc

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from train_step import TorchVAE, torch_lenet, torch_vae_loss  # noqa: E402

import avalon as av  # noqa: E402
from avalon import nn, optim, zoo  # noqa: E402


def _avalon(make, loss_fn, batch, lr):
    model = make()
    opt = optim.SGD(model, lr=lr)

    def step(m, o, *xs):
        loss, grads = av.value_and_grad(loss_fn)(m, *xs)
        o.step(grads)
        return loss
    compiled = av.compile(step)
    t0 = time.perf_counter()
    compiled(model, opt, *batch)
    first = time.perf_counter() - t0
    return (lambda: compiled(model, opt, *batch)), first, (compiled, model, opt)


def _torch(tm, tloss, batch, lr, compile_=False):
    topt = torch.optim.SGD(tm.parameters(), lr=lr)
    tb = [torch.from_numpy(b) for b in batch]
    fwd = torch.compile(lambda *a: tloss(tm, *a)) if compile_ else (lambda *a: tloss(tm, *a))

    def step():
        topt.zero_grad(set_to_none=True)
        fwd(*tb).backward()
        topt.step()
    return step


def _lenet_loss(m, x, y):
    return zoo.nll(m(x), y)


def _vae_loss(m, x):
    recon, mu, logvar = m(x)
    return zoo.vae_loss(recon, x, mu, logvar)


def memory(make, loss_fn, batch, lr) -> dict:
    """Peak bytes traced during one steady step of the compiled LeNet step (its buffers, scratch and
    fresh outputs are all allocated inside the traced window), against plan bound + parameters."""
    tracemalloc.start()
    run, _, (compiled, model, opt) = _avalon(make, loss_fn, batch, lr)
    run()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    run()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    insp = compiled.inspect(model, opt, *batch)
    exe = next(iter(compiled._cache.values())).executable
    params = sum(p.numpy().nbytes for _, p in nn.named_parameters(model))
    plan = insp.memory_plan
    return {"peak_step_bytes": peak - base + exe.emission.resident_bytes, "resident": exe.emission.resident_bytes,
            "live_bound": plan.live_peak_bytes, "params": params,
            "bound": 1.5 * (plan.live_peak_bytes + params)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--torch-compile", action="store_true", help="also time torch.compile (slow cold compile)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads)
    except ImportError:
        pass
    a = np.ones((64, 64), np.float32)
    a @ a  # initialize the BLAS library (its thread pool) before timing a first step
    rng = np.random.default_rng(0)
    work = {
        "LeNet bs64": (zoo.LeNet, _lenet_loss, [rng.standard_normal((64, 1, 28, 28)).astype(np.float32),
                                            rng.integers(0, 10, 64)], torch_lenet,
                       lambda m, a, b: torch.nn.functional.nll_loss(m(a), b), 0.01),
        "VAE bs128": (zoo.VAE, _vae_loss, [rng.random((128, 784)).astype(np.float32)], TorchVAE, torch_vae_loss,
                      1e-5),
    }
    rows = {}
    for name, (make, loss_fn, batch, tmake, tloss, lr) in work.items():
        run, first, _ = _avalon(make, loss_fn, batch, lr)
        tb = [b if b.dtype != np.int64 else b for b in batch]
        cont = {"avalon": run, "torch eager": _torch(tmake(), tloss, tb, lr)}
        if args.torch_compile:
            cont["torch.compile"] = _torch(tmake(), tloss, tb, lr, compile_=True)
        times: dict[str, list[float]] = {k: [] for k in cont}
        cpu: dict[str, list[float]] = {k: [] for k in cont}
        for f in cont.values():
            f()  # warm
        for _ in range(args.rounds):
            for k, f in cont.items():
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(args.steps):
                    f()
                times[k].append((time.perf_counter() - t0) / args.steps * 1e3)
                cpu[k].append((time.process_time() - c0) / args.steps * 1e3)
        rows[name] = ({k: statistics.median(v) for k, v in times.items()},
                      {k: statistics.median(v) for k, v in cpu.items()}, first)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, load "
          f"{os.getloadavg()[0]:.1f}; python {platform.python_version()}, numpy {np.__version__}, torch "
          f"{torch.__version__}, {args.threads} threads")
    for name, (med, cmed, first) in rows.items():
        base, cbase = med["torch eager"], cmed["torch eager"]
        cells = ", ".join(f"{k} {v:.2f} ms ({v / base:.2f}x; cpu {cmed[k]:.2f} ms, {cmed[k] / cbase:.2f}x)"
                          for k, v in med.items())
        print(f"{name}: {cells}; first Avalon step {first:.3f} s")
    m = memory(*work["LeNet bs64"][:3], 0.01)
    mib = 2**20
    print(f"LeNet memory: step peak {m['peak_step_bytes'] / mib:.2f} MiB (resident buffers+scratch "
          f"{m['resident'] / mib:.2f} MiB); plan live-set bound {m['live_bound'] / mib:.2f} MiB + params "
          f"{m['params'] / mib:.2f} MiB; 1.5x that = {m['bound'] / mib:.2f} MiB")


if __name__ == "__main__":
    main()

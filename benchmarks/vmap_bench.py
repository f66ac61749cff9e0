"""Per-example gradients on the CPU: `av.vmap(av.grad(loss))` compiled, against torch.func's
`vmap(grad(...))` and a torch loop over examples, in one process, rounds interleaved, medians.

    python benchmarks/vmap_bench.py [--rounds 10] [--reps 5] [--threads 2] [--models mlp,cnn]

The models are the ones DP-SGD tutorials use: an MNIST MLP (784-128-10, batch 64) and a small CNN
(two 5x5 convolutions with max pooling, then two linear layers, 28x28 inputs, batch 32), float32.
Both sides start from the same weights, and the script checks that the per-example gradients agree
(relative 1e-4) before timing. Each round times `--reps` calls of every contender in turn after an
untimed one; the table reports median milliseconds per call and the ratio to torch.func.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import avalon as av  # noqa: E402
from avalon import nn  # noqa: E402


def _mlp(lib):
    return lib.Sequential(lib.Flatten(), lib.Linear(784, 128), lib.ReLU(), lib.Linear(128, 10))


def _cnn(lib):
    return lib.Sequential(lib.Conv2d(1, 16, 5), lib.ReLU(), lib.MaxPool2d(2), lib.Conv2d(16, 32, 5), lib.ReLU(),
                          lib.MaxPool2d(2), lib.Flatten(), lib.Linear(32 * 4 * 4, 64), lib.ReLU(), lib.Linear(64, 10))


MODELS = {"mlp": (_mlp, 64), "cnn": (_cnn, 32)}


def contenders(name: str, rng: np.random.Generator) -> dict:
    make, batch = MODELS[name]
    torch.manual_seed(0)
    theirs = make(torch.nn)
    ours = make(nn)
    av.nn.load_state_dict(ours, theirs.state_dict())
    x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    params = {k: v.detach() for k, v in theirs.named_parameters()}

    def tloss(p, x, y):
        return torch.nn.functional.cross_entropy(torch.func.functional_call(theirs, p, (x[None],)), y[None])

    tper = torch.func.vmap(torch.func.grad(tloss), in_dims=(None, 0, 0))

    def loop():
        out = []
        for i in range(batch):
            theirs.zero_grad()
            torch.nn.functional.cross_entropy(theirs(tx[i:i + 1]), ty[i:i + 1]).backward()
            out.append([p.grad.clone() for p in theirs.parameters()])
        return out

    def loss(m, x, y):
        return nn.functional.cross_entropy(m(x[None]), y[None])

    per = av.vmap(av.grad(loss), in_dims=(None, 0, 0))
    ax, ay = av.tensor(x), av.tensor(y)
    out = {"torch.func vmap(grad)": lambda: tper(params, tx, ty), "torch loop": loop}
    for backend in ("numpy", "cpu"):
        step = av.compile(lambda m, x, y: per(m, x, y), backend=backend)
        t0 = time.perf_counter()
        got = step(ours, ax, ay)
        first = time.perf_counter() - t0
        want = tper(params, tx, ty)
        for k, w in want.items():
            err = np.abs(got[k].numpy() - w.numpy()).max() / max(np.abs(w.numpy()).max(), 1e-12)
            assert err < 1e-4, (name, backend, k, err)
        print(f"{name}: avalon {backend} first call {first:.2f} s (trace, batching, passes, codegen, one run)")
        out[f"avalon {backend}"] = (lambda s=step: s(ours, ax, ay))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="mlp,cnn")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    av.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {a.threads} threads; "
          f"torch {torch.__version__}, numpy {np.__version__}")
    for name in a.models.split(","):
        cs = contenders(name, rng)
        times: dict[str, list[float]] = {k: [] for k in cs}
        for _ in range(a.rounds):
            for k, fn in cs.items():
                fn()
                t0 = time.perf_counter()
                for _ in range(a.reps):
                    fn()
                times[k].append((time.perf_counter() - t0) / a.reps * 1e3)
        base = statistics.median(times["torch.func vmap(grad)"])
        print(f"\n{name} (batch {MODELS[name][1]}): median ms per call of {a.rounds} rounds x {a.reps}")
        for k, ts in times.items():
            m = statistics.median(ts)
            print(f"  {k:<24} {m:9.2f} ms   {m / base:5.2f}x torch.func")


if __name__ == "__main__":
    main()

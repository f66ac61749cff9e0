"""Eager dispatch cost: one small op at a time on the reference interpreter, against torch eager, in
one process, rounds interleaved, medians.

    python benchmarks/eager_overhead.py [--rounds 7] [--reps 2000] [--threads 1] [--clock wall|cpu]

Ported code runs eagerly first (a notebook, a debugging session, a data pipeline), so the cost of one
call matters there even though training steps are compiled. The shapes are tiny (4x4 to 16x64) on
purpose: the time is the dispatch (argument checks, promotion, type inference, the numpy call), not
arithmetic. Each round times `--reps` calls of every row in turn after a warm-up; the table reports
median microseconds per call and the ratio to torch. `--clock cpu` times the process's CPU time
instead of the wall clock: on a shared machine whose other jobs take the core now and then, it
measures the work rather than the waiting (both sides run on one thread). The last rows are a small
MLP's forward and loss (eager), and its `av.value_and_grad` step against torch's forward, backward
and SGD step.
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
import avalon.nn.functional as F  # noqa: E402
from avalon import nn  # noqa: E402


def _rows(rng: np.random.Generator) -> dict[str, tuple]:
    """name -> (avalon call, torch call), each a zero-argument function."""
    a_np, b_np = rng.standard_normal((2, 4, 4)).astype(np.float32)
    w_np = rng.standard_normal((64, 32)).astype(np.float32)
    x_np = rng.standard_normal((16, 32)).astype(np.float32)
    img = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    k = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    A = {n: av.tensor(v) for n, v in dict(a=a_np, b=b_np, w=w_np, x=x_np, img=img, k=k).items()}
    T = {n: torch.from_numpy(v.copy()) for n, v in dict(a=a_np, b=b_np, w=w_np, x=x_np, img=img, k=k).items()}

    def pair(fa, ft):
        return (lambda: fa(A), lambda: ft(T))

    rows = {
        "a + b": pair(lambda t: t["a"] + t["b"], lambda t: t["a"] + t["b"]),
        "a * 0.5": pair(lambda t: t["a"] * 0.5, lambda t: t["a"] * 0.5),
        "a.exp()": pair(lambda t: t["a"].exp(), lambda t: t["a"].exp()),
        "a @ b": pair(lambda t: t["a"] @ t["b"], lambda t: t["a"] @ t["b"]),
        "a.sum(1)": pair(lambda t: t["a"].sum(1), lambda t: t["a"].sum(1)),
        "relu(a)": pair(lambda t: F.relu(t["a"]), lambda t: torch.relu(t["a"])),
        "linear 16x32 -> 64": pair(lambda t: F.linear(t["x"], t["w"]),
                                   lambda t: torch.nn.functional.linear(t["x"], t["w"])),
        "softmax(x, -1)": pair(lambda t: F.softmax(t["x"], -1), lambda t: torch.softmax(t["x"], -1)),
        "conv2d 3->4, 8x8": pair(lambda t: F.conv2d(t["img"], t["k"], padding=1),
                                 lambda t: torch.nn.functional.conv2d(t["img"], t["k"], padding=1)),
    }
    rows.update(_mlp_rows(rng))
    return rows


def _mlp(lib):
    return lib.Sequential(lib.Linear(32, 64), lib.ReLU(), lib.Linear(64, 64), lib.ReLU(), lib.Linear(64, 10))


def _mlp_rows(rng: np.random.Generator) -> dict[str, tuple]:
    x = rng.standard_normal((16, 32)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    tm = _mlp(torch.nn)
    am = _mlp(nn)
    am.load_state_dict(tm.state_dict())
    tx, ty, ax, ay = torch.from_numpy(x), torch.from_numpy(y), av.tensor(x), av.tensor(y)
    topt = torch.optim.SGD(tm.parameters(), lr=1e-3)
    aopt = av.optim.SGD(am.parameters(), lr=1e-3)

    def loss_fn(m, x, y):
        return F.cross_entropy(m(x), y)

    vg = av.value_and_grad(loss_fn)

    def a_step():
        _, g = vg(am, ax, ay)
        aopt.step(g)

    def t_step():
        topt.zero_grad()
        torch.nn.functional.cross_entropy(tm(tx), ty).backward()
        topt.step()

    return {"MLP forward + loss": (lambda: loss_fn(am, ax, ay), lambda: torch.nn.functional.cross_entropy(tm(tx), ty)),
            "MLP value_and_grad + SGD": (a_step, t_step)}


def _time(f, reps: int, clock=time.perf_counter) -> float:
    t = clock()
    for _ in range(reps):
        f()
    return (clock() - t) / reps * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--reps", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = p.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    rows = _rows(np.random.default_rng(0))
    times: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n in rows}
    for fa, ft in rows.values():  # warm-up: first calls trace, fill caches, load kernels
        for _ in range(20):
            fa(), ft()
    for _ in range(args.rounds):
        for n, (fa, ft) in rows.items():
            reps = args.reps if "MLP" not in n else max(args.reps // 20, 5)
            times[n][0].append(_time(fa, reps, clock))
            times[n][1].append(_time(ft, reps, clock))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {load:.1f}, "
          f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__} "
          f"({args.threads} thread(s)); medians of {args.rounds} rounds, microseconds per call ({args.clock} clock)")
    print(f"| {'call':28s} | {'Avalon eager':>12s} | {'torch eager':>11s} | {'Avalon / torch':>14s} |")
    print(f"|{'-' * 30}|{'-' * 14}|{'-' * 13}|{'-' * 16}|")
    for n, (ta, tt) in times.items():
        ma, mt = statistics.median(ta), statistics.median(tt)
        print(f"| {n:28s} | {ma:12.1f} | {mt:11.1f} | {ma / mt:14.1f} |")


if __name__ == "__main__":
    main()

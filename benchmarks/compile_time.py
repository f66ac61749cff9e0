"""Compile-time benchmark: value_and_grad of a deep MLP through trace, grad, DEFAULT_PIPELINE and numpy
codegen, per phase, at several depths, so the scaling (depth 256 / depth 64) shows whether each phase
is linear in the graph size.

    python benchmarks/compile_time.py [--depths 64 256 1800] [--profile DEPTH] [--dnc 3 12] [--repeat 3]

Times are wall-clock seconds of one cold run per depth (the ratios are what matter on a shared
machine; absolute times move with its load). `--profile DEPTH` prints a cProfile of that depth.
`--dnc T...` times the `fuse` pass (process CPU seconds, median of `--repeat` runs) on the training
step of tests/test_port_programs_42.py's differentiable neural computer unrolled over T time steps
(thousands of ops, where a forward op and its backward are far apart; needs torch for that file).
"""
from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402

import avalon as av  # noqa: E402
from avalon import zoo  # noqa: E402
from avalon.autodiff import grad_graph  # noqa: E402
from avalon.codegen.numpy.backend import NumpyBackend  # noqa: E402
from avalon.passes import DEFAULT_PIPELINE, PassManager  # noqa: E402
from avalon.passes.manager import paused_gc  # noqa: E402
from avalon.trace import trace_call  # noqa: E402


def phases(depth: int, width: int = 16, batch: int = 8) -> dict[str, float]:
    """Seconds per phase for an MLP of `depth` hidden layers, plus the op counts; with the garbage
    collector paused, as `av.compile` does while it compiles."""
    with paused_gc():
        return _phases(depth, width, batch)


def _phases(depth: int, width: int, batch: int) -> dict[str, float]:
    model = zoo.MLP(width, [width] * depth, 10)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, width)).astype(np.float32)
    y = rng.integers(0, 10, batch)

    def loss(m, a, b):
        return zoo.cross_entropy(m(a), b)

    out: dict[str, float] = {}
    t0 = time.perf_counter()
    traced = trace_call(loss, (model, x, y))
    t1 = time.perf_counter()
    g = grad_graph(traced.graph, list(range(len(traced.graph.inputs) - 2)))
    t2 = time.perf_counter()
    out["ops"] = len(g.ops)
    backend = NumpyBackend()
    pm = PassManager.parse(DEFAULT_PIPELINE, target=backend.target)
    pm.run(g)
    t3 = time.perf_counter()
    out.update({f"pass {r.name}": r.ms / 1e3 for r in pm.records})
    exe = backend.compile(g)
    _ = exe.source
    t4 = time.perf_counter()
    out.update(trace=t1 - t0, grad=t2 - t1, passes=t3 - t2, codegen=t4 - t3, total=t4 - t0)
    return out


def _lenet_loss(m, a, b):
    return zoo.nll(m(a), b)


def first_step() -> float:
    """Seconds to the first LeNet training step through `av.compile` (trace + grad + passes + codegen + run)."""
    rng = np.random.default_rng(0)
    model = zoo.LeNet()
    opt = av.optim.SGD(model, lr=0.01)
    x = rng.standard_normal((64, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 64)

    def step(m, o, a, b):
        loss, grads = av.value_and_grad(_lenet_loss)(m, a, b)
        o.step(grads)
        return loss
    t0 = time.perf_counter()
    av.compile(step)(model, opt, x, y)
    return time.perf_counter() - t0


def dnc_fuse(steps: int, repeat: int = 3) -> tuple[int, float]:
    """(ops, median process CPU seconds of the `fuse` pass) on the DNC's training step over `steps` steps."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from test_port_programs_42 import dnc

    from avalon import nn
    from avalon.nn import functional as F
    model = dnc(nn, F, av)
    opt = av.optim.RMSprop(model.parameters(), lr=1e-3, momentum=0.9, eps=1e-8)
    rng = np.random.default_rng(0)
    x = av.tensor((rng.random((2, steps, 4)) < 0.5).astype(np.float32))
    y = av.tensor((rng.random((2, steps, 4)) < 0.5).astype(np.float32))

    def step(m, o, a, b):
        loss, grads = av.value_and_grad(lambda m, a, b: F.binary_cross_entropy_with_logits(m(a)[0], b))(m, a, b)
        o.step(grads)
        return loss
    graph = av.compile(step, backend="numpy", pipeline="canonicalize,cse,dce").inspect(model, opt, x, y).graph
    times = []
    for _ in range(repeat):
        g = graph.clone()
        pm = PassManager.parse("fuse")
        with paused_gc():
            t0 = time.process_time()
            pm.run(g)
            times.append(time.process_time() - t0)
    return len(graph.ops), sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--depths", type=int, nargs="*", default=[64, 256, 1800])
    ap.add_argument("--profile", type=int, default=0, help="print a cProfile of this depth")
    ap.add_argument("--dnc", type=int, nargs="*", default=[], help="time `fuse` on the DNC over these step counts")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}; "
          f"python {platform.python_version()}, numpy {np.__version__}")
    phases(8)  # warm imports and caches
    rows = {}
    for d in args.depths:
        rows[d] = r = phases(d)
        print(f"depth {d:5d}: {int(r['ops']):6d} ops  trace {r['trace']:.3f}  grad {r['grad']:.3f}  "
              f"passes {r['passes']:.3f}  codegen {r['codegen']:.3f}  total {r['total']:.3f} s  ("
              + ", ".join(f"{k[5:]} {v:.3f}" for k, v in r.items() if k.startswith("pass ")) + ")")
    if 64 in rows and 256 in rows:
        a, b = rows[64], rows[256]
        print("depth 256 / depth 64: " + "  ".join(f"{k} {b[k] / max(a[k], 1e-9):.2f}x"
                                                   for k in ("ops", "trace", "grad", "passes", "codegen", "total")))
        print("  per pass: " + "  ".join(f"{k[5:]} {b[k] / max(a[k], 1e-9):.2f}x" for k in a if k.startswith("pass ")))
    print(f"first LeNet training step (cold, numpy backend): {first_step():.3f} s")
    for t in args.dnc:
        n, s = dnc_fuse(t, args.repeat)
        print(f"DNC over {t} steps: {n} ops, fuse {s:.3f} s CPU (median of {args.repeat})")
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        phases(args.profile)
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(40)


if __name__ == "__main__":
    main()

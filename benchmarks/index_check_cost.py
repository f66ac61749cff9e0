"""What the Triton backend's index checks cost (issue 13): a LeNet training step with and without.

    python benchmarks/index_check_cost.py [--reps 50] [--batch 64]

Kernels that read at data-dependent indices (take, one_hot: the NLL labels) record an index out of
range in a small device buffer, and the runtime reads it after the launches (one 8-byte-per-check
device-to-host copy, which waits for the kernels). This times a compiled LeNet value-and-grad +
SGD step twice in one process, with the checks as built and with them switched off (the check
after the launches skipped; the masked stores stay in the kernels, they are a few instructions),
and reports the median step times and their ratio. The issue's budget is < 2% of a step. Needs a
CUDA GPU to mean anything (in Triton's interpreter everything is ~100x slower); no GPU was
available when this was written, so the figure is still to be measured.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402

import avalon as av  # noqa: E402
from avalon import optim, zoo  # noqa: E402
from avalon.codegen.triton import runtime  # noqa: E402


def _time_steps(checks: bool, reps: int, batch: int) -> float:
    av.manual_seed(0)
    rng = np.random.default_rng(0)
    model = zoo.LeNet()
    opt = optim.SGD(model, lr=0.01)
    dev = "cuda" if av.best_available_device().type == "cuda" else "cpu"
    av.to_device(model, dev)
    x = av.tensor(rng.standard_normal((batch, 1, 28, 28)).astype(np.float32), device=dev)
    y = av.tensor(rng.integers(0, 10, batch), device=dev)

    def step(model, opt, x, y):
        loss, grads = av.value_and_grad(lambda m, a, t: zoo.nll(m(a), t))(model, x, y)
        opt.step(grads)
        return loss

    compiled = av.compile(step, backend="triton")
    real = runtime.CompiledGraph._check_indices
    if not checks:
        runtime.CompiledGraph._check_indices = lambda self, ws: None
    try:
        for _ in range(3):
            float(compiled(model, opt, x, y))
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            float(compiled(model, opt, x, y))  # the loss on the host: both variants sync once
            times.append(time.perf_counter() - t0)
    finally:
        runtime.CompiledGraph._check_indices = real
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args()
    off = _time_steps(False, a.reps, a.batch)
    on = _time_steps(True, a.reps, a.batch)
    print(f"LeNet step (batch {a.batch}): checks off {off * 1e3:.3f} ms, on {on * 1e3:.3f} ms, "
          f"cost {100 * (on / off - 1):+.2f}% (budget < 2%)")


if __name__ == "__main__":
    main()

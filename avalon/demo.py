"""`avalon demo`: the README's walk-through in one command — a LeNet written as a plain class is
traced, printed, optimized with the standard pipeline (each pass's time and effect shown), run on the
numpy reference interpreter and checked against eager execution; then compiled with the Triton
backend, whose fused kernels are listed (one shown in full) and run: on a GPU when there is one, in
Triton's interpreter on the CPU otherwise (the same kernels, far slower). It ends with where to go
next. Batch 2 keeps the interpreter's part to a couple of seconds."""
from __future__ import annotations

import re
import sys
import time

import numpy as np

import avalon as av
from avalon.nn import Conv2d, Linear, logsoftmax, maxpool2d, relu


class Net:  # a plain class: no base class is needed
    def __init__(self):
        self.conv1 = Conv2d(1, 20, 5)
        self.conv2 = Conv2d(20, 50, 5)
        self.fc1 = Linear(4 * 4 * 50, 500)
        self.fc2 = Linear(500, 10)

    def __call__(self, x):
        x = maxpool2d(relu(self.conv1(x)), (2, 2))
        x = maxpool2d(relu(self.conv2(x)), (2, 2))
        x = x.reshape(x.shape[0], 4 * 4 * 50)
        x = relu(self.fc1(x))
        return logsoftmax(self.fc2(x))


def _rule(title: str) -> None:
    print(f"\n── {title} " + "─" * max(0, 74 - len(title)))


def main(batch: int = 2) -> None:
    av.random.manual_seed(0)
    net = Net()
    x = np.random.default_rng(0).standard_normal((batch, 1, 28, 28)).astype(np.float32)

    graph = av.trace(net, x)
    _rule(f"traced IR: {len(graph.ops)} ops")
    print(graph)

    pm = av.passes.PassManager.parse(av.passes.DEFAULT_PIPELINE, verify_each=True)
    pm.run(graph)
    _rule(f"passes: {av.passes.DEFAULT_PIPELINE}")
    for r in pm.records:
        print(f"  {r.name:<14} {r.ms:8.2f} ms   {'changed' if r.changed else 'no change'}")
    _rule(f"optimized IR: {len(graph.ops)} ops")
    print(graph)

    params = [t for _, t in av.named_parameters(net)]
    times = []
    for _ in range(3):  # the best of three: the first call also warms numpy up
        t0 = time.perf_counter()
        (out,) = av.interpret(graph, *params, x)
        times.append(time.perf_counter() - t0)
    ms = min(times) * 1e3
    eager = net(av.tensor(x)).numpy()
    _rule("reference interpreter")
    print(f"  ran in {ms:.1f} ms; log-probabilities of sample 0:\n  {np.array2string(out[0], precision=3)}")
    err = float(np.max(np.abs(out - eager)) / np.max(np.abs(eager)))
    print(f"  largest relative difference from eager execution: {err:.2e}")
    print(f"  predicted classes: {out.argmax(axis=1).tolist()}")

    _triton(net, x, out, ms)
    _next_steps()


def _triton(net: Net, x: np.ndarray, ref: np.ndarray, ref_ms: float) -> None:
    """Compile the model with the Triton backend, list its kernels, show one, run them and time it."""
    dev = av.best_available_device()
    where = f"on {dev}" if dev != av.device("cpu") else "in Triton's interpreter on the CPU (no GPU here)"
    _rule("Triton kernels")
    print(f"  compiling for the Triton backend and running {where} ...", flush=True)
    av.to_device(net, dev)
    xd = av.tensor(x, device=dev)
    forward = av.compile(net, backend="triton")
    t0 = time.perf_counter()
    got = forward(xd).numpy()
    first = time.perf_counter() - t0
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        got = forward(xd).numpy()  # to the host: the time includes the kernels finishing
        runs.append(time.perf_counter() - t0)
    kernels = forward.inspect(xd).kernels
    print(f"  {len(kernels)} kernels, one per fused group of the optimized IR:")
    for name, src in kernels.items():
        kind = re.search(r"^# Avalon (\w+) kernel", src, re.M)
        print(f"    {name:<32} {kind.group(1) if kind else ''}")
    err = float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))
    print(f"  first call {first:.2f} s (trace, passes, code generation, kernels); then "
          f"{min(runs) * 1e3:.0f} ms per call (the numpy reference interpreter: {ref_ms:.1f} ms)")
    print(f"  largest relative difference from the reference interpreter: {err:.2e}")
    shown = next((k for k in kernels if k.startswith("fused_conv2d")), next(iter(kernels)))
    _rule(f"one kernel: {shown}")
    print(kernels[shown].rstrip())


def _next_steps() -> None:
    _rule("where next")
    for cmd, what in [
        ("python examples/train_lenet.py --epochs 3", "train this LeNet on digits (av.fit, one compiled step)"),
        ("docs/tour.md", "one model followed through every pass down to its kernels"),
        ("avalon trace avalon.demo:Net --input 2x1x28x28:f32 > lenet.avalon",
         "this IR in a file, for `avalon opt`, `kernels` and `run`"),
        ("AVALON_DEBUG_DIR=dump/ python your_script.py", "every compile's IR per pass, fusion log and kernels"),
        ("docs/writing-a-pass.md", "write your own pass and run it in a pipeline"),
    ]:
        print(f"  {cmd}\n      {what}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""`avalon demo`: the README's walk-through in one command — a LeNet written as a plain class is
traced, printed, optimized with the standard pipeline (each pass's time and effect shown) and run
on the numpy reference interpreter, checked against eager execution."""
from __future__ import annotations

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
    t0 = time.perf_counter()
    (out,) = av.interpret(graph, *params, x)
    ms = (time.perf_counter() - t0) * 1e3
    eager = net(av.tensor(x)).numpy()
    _rule("reference interpreter")
    print(f"  ran in {ms:.1f} ms; log-probabilities of sample 0:\n  {np.array2string(out[0], precision=3)}")
    err = float(np.max(np.abs(out - eager)) / np.max(np.abs(eager)))
    print(f"  largest relative difference from eager execution: {err:.2e}")
    print(f"  predicted classes: {out.argmax(axis=1).tolist()}")


if __name__ == "__main__":
    main()

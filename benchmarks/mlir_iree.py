"""Compile time and training-step time through IREE, against the numpy backend and torch eager.

    python benchmarks/mlir_iree.py [--reps 20] [--only lenet|vae] [--out results.json]

LeNet (batch 64, NLL) and the MLP VAE (batch 128, BCE + KL), one step = forward + backward + SGD
update, compiled whole with `av.compile(step, backend=...)`; torch runs eagerly with the same
weights and data (2 threads, like IREE's local-task and numpy's BLAS on this 2-core machine).
Avalon rows time the first call (trace + passes + codegen/IREE compile: "compile s") and the
median of `--reps` steps after warm-up. IREE rows differ only in compiler flags:

* generic:   `--iree-llvmcpu-target-cpu=generic` (plain x86-64: SSE2 only, no AVX/FMA);
* host:      `--iree-llvmcpu-target-cpu=host`;
* host+dt:   host plus data tiling and microkernels (`--iree-opt-data-tiling --iree-llvmcpu-enable-ukernels=all`);
* host+O3:   host plus `--iree-opt-level=O3` (what backend="iree" uses by default).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from train_step import TorchVAE, loaded, torch_lenet, torch_vae_loss  # noqa: E402

import avalon as av  # noqa: E402
from avalon import nn, optim, zoo  # noqa: E402

DEMOTE = "--iree-input-demote-f64-to-f32=false"
IREE_FLAGS = {
    "iree generic": (["--iree-llvmcpu-target-cpu=generic", DEMOTE], []),
    "iree host": (["--iree-llvmcpu-target-cpu=host", DEMOTE], []),
    "iree host+dt": (["--iree-llvmcpu-target-cpu=host", DEMOTE],
                     ["--iree-opt-data-tiling=true", "--iree-llvmcpu-enable-ukernels=all"]),
    "iree host+O3": (["--iree-llvmcpu-target-cpu=host", DEMOTE], ["--iree-opt-level=O3"]),
}


def median_ms(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def avalon_row(label, backend, make_model, loss_fn, batch, reps, lr):
    def step(model, opt, *xs):
        loss, grads = av.value_and_grad(loss_fn)(model, *xs)
        opt.step(grads)
        return loss

    av.manual_seed(0)
    model = make_model()
    opt = optim.SGD(model, lr=lr)
    compiled = av.compile(step, backend=backend)
    t0 = time.perf_counter()
    loss = float(compiled(model, opt, *batch))
    first = time.perf_counter() - t0
    ms = median_ms(lambda: compiled(model, opt, *batch), reps)
    return {"config": label, "compile_s": first, "step_ms": ms, "first_loss": loss}


def bench(name, make_model, loss_fn, tmodel, tloss, batch, reps, lr, configs):
    rows = []
    for label in configs:
        if label == "numpy":
            backend = "numpy"
        else:
            from avalon.codegen.iree import IreeBackend
            base, extra = IREE_FLAGS[label]
            backend = IreeBackend(extra_flags=extra, base=base)
        try:
            rows.append({"model": name, **avalon_row(label, backend, make_model, loss_fn, batch, reps, lr)})
        except Exception as e:  # a flag set IREE cannot compile the step with: say so in the table
            first = str(e).strip().splitlines()
            why = next((ln for ln in first if "error:" in ln), first[0] if first else type(e).__name__)
            rows.append({"model": name, "config": label, "compile_s": float("nan"), "step_ms": float("nan"),
                         "error": why.strip()[:160]})
        print(rows[-1], flush=True)
    topt = torch.optim.SGD(tmodel.parameters(), lr=lr)
    tbatch = [torch.from_numpy(b) for b in batch]

    def torch_step():
        topt.zero_grad(set_to_none=True)
        tloss(tmodel, *tbatch).backward()
        topt.step()
    rows.append({"model": name, "config": "torch eager", "compile_s": 0.0, "step_ms": median_ms(torch_step, reps)})
    print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--only", default=None, help="lenet or vae")
    ap.add_argument("--configs", default="numpy," + ",".join(IREE_FLAGS), help="comma-separated")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    configs = args.configs.split(",")
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    rows = []
    if args.only in (None, "lenet"):
        tm = torch_lenet()
        names = [n for n, _ in nn.named_parameters(zoo.LeNet())]
        weights = dict(zip(names, [v.detach() for v in tm.state_dict().values()]))
        x = rng.standard_normal((64, 1, 28, 28)).astype(np.float32)
        y = rng.integers(0, 10, 64).astype(np.int64)
        rows += bench("LeNet bs64", loaded(zoo.LeNet, weights, "cpu"), lambda m, a, b: zoo.nll(m(a), b), tm,
                      lambda m, a, b: torch.nn.functional.nll_loss(m(a), b), [x, y], args.reps, 0.01, configs)
    if args.only in (None, "vae"):
        tm = TorchVAE()
        weights = {k: v.detach() for k, v in tm.state_dict().items()}
        x = rng.random((128, 784)).astype(np.float32)

        def vae_loss(m, a):
            recon, mu, logvar = m(a)
            return zoo.vae_loss(recon, a, mu, logvar)
        rows += bench("VAE bs128", loaded(zoo.VAE, weights, "cpu"), vae_loss, tm, torch_vae_loss, [x], args.reps,
                      1e-5, configs)
    print("\n| workload | config | compile s | step ms |\n|---|---|---|---|")
    for r in rows:
        extra = f" ({r['error']})" if "error" in r else ""
        print(f"| {r['model']} | {r['config']} | {r['compile_s']:.2f} | {r['step_ms']:.2f}{extra} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

"""Cold compile of every kernel of LeNet's training step for sm_90, serially vs in a pool.

    python benchmarks/parallel_compile.py [--workers N] [--model lenet|vae] [--dry-run]

No GPU needed: each kernel goes through `aot.compile_for_target` (Triton's whole pipeline down to
PTX and cubin) with a fresh Triton cache per mode, so every mode compiles everything. Modes:
serial; a thread pool (what `compile_graph` does on a GPU, `autotune.warm_up`); a process pool
(the upper bound, free of the GIL). This is the first-call cost issue 16 wants under 3 s.
Each mode runs in its own subprocess (TRITON_INTERPRET is read when a kernel is decorated, and the
Triton cache directory when it compiles). `--dry-run`: two kernels of a tiny graph, to check the script.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)


def step_kernels(model: str, dry: bool) -> list:
    """The training step's kernels (compiled-mode `@triton.jit` functions, not run)."""
    import numpy as np

    import avalon as av
    from avalon import optim, zoo
    from avalon.codegen.triton import compile_graph
    if dry:
        from avalon.ir import Builder, Graph, TensorType
        g = Graph("f")
        b = Builder(g)
        x, w = g.add_input(TensorType((32, 16), "f32"), "x"), g.add_input(TensorType((16, 32), "f32"), "w")
        g.set_outputs([b("relu", b("matmul", x, w)), b("sum", x, axes=[1], keepdims=False)])
        return [ln.kernel for ln in compile_graph(g).launches]
    rng = np.random.default_rng(0)
    if model == "lenet":
        net, batch = zoo.LeNet(), [rng.standard_normal((64, 1, 28, 28)).astype(np.float32),
                                   rng.integers(0, 10, 64).astype(np.int64)]

        def loss_fn(m, a, y):
            return zoo.nll(m(a), y)
    else:
        net, batch = zoo.VAE(), [rng.random((128, 784)).astype(np.float32)]

        def loss_fn(m, a):
            recon, mu, logvar = m(a)
            return zoo.vae_loss(recon, a, mu, logvar)
    opt = optim.SGD(net, lr=0.01)

    def step(m, o, *xs):
        loss, grads = av.value_and_grad(loss_fn)(m, *xs)
        o.step(grads)
        return loss

    insp = av.compile(step, backend="triton").inspect(net, opt, *batch)
    return [p for ln in compile_graph(insp.graph).launches if ln.kernel.kind != "host"
            for p in ln.kernel.chain()]  # a split kernel's epilogue (and stride phases) compile too


def _compile_one(spec: tuple) -> float:
    """(name, source, params, meta, grid, warps, stages) -> seconds; rebuilt here for process pools."""
    from avalon.codegen.triton import KernelCache
    from avalon.codegen.triton.aot import compile_for_target
    from avalon.codegen.triton.kernel import Kernel
    name, source, params, meta, grid, warps, stages = spec
    k = Kernel(name, "any", source, params, meta, grid, num_warps=warps, num_stages=stages)
    k.fn = KernelCache().load(name, source)
    t0 = time.perf_counter()
    compile_for_target(k)
    return time.perf_counter() - t0


def run_mode(mode: str, workers: int, model: str, dry: bool) -> dict:
    assert os.environ.get("TRITON_INTERPRET") == "0"
    specs = [(k.name, k.source, k.params, k.meta, k.grid, k.num_warps, k.num_stages)
             for k in step_kernels(model, dry)]
    t0 = time.perf_counter()
    if mode == "serial":
        each = [_compile_one(s) for s in specs]
    else:
        pool = ThreadPoolExecutor if mode == "threads" else ProcessPoolExecutor
        with pool(workers) as p:
            each = list(p.map(_compile_one, specs))
    wall = time.perf_counter() - t0
    return {"mode": mode, "workers": 1 if mode == "serial" else workers, "kernels": len(specs),
            "wall_s": round(wall, 2), "sum_s": round(sum(each), 2), "max_s": round(max(each), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--model", default="lenet", choices=["lenet", "vae"])
    ap.add_argument("--modes", default="serial,threads,processes")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--_mode", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._mode:
        print(json.dumps(run_mode(args._mode, args.workers, args.model, args.dry_run)))
        return
    rows = []
    for mode in args.modes.split(","):
        with tempfile.TemporaryDirectory() as tmp:  # cold: nothing in Triton's (or Avalon's) cache
            env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": os.path.join(tmp, "triton"),
                   "AVALON_CACHE_DIR": os.path.join(tmp, "avalon"), "PYTHONPATH": ROOT}
            cmd = [sys.executable, __file__, "--_mode", mode, "--workers", str(args.workers), "--model", args.model]
            proc = subprocess.run(cmd + (["--dry-run"] if args.dry_run else []), env=env, capture_output=True,
                                  text=True, timeout=900)
            if proc.returncode != 0:
                sys.exit(f"{mode} failed:\n{proc.stderr[-3000:]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    serial = next((r["wall_s"] for r in rows if r["mode"] == "serial"), None)
    print(f"{'mode':<10} {'workers':>7} {'kernels':>7} {'wall s':>8} {'sum s':>8} {'max s':>7} {'speedup':>8}")
    for r in rows:
        sp = f"{serial / r['wall_s']:.2f}" if serial and r["wall_s"] else "-"
        print(f"{r['mode']:<10} {r['workers']:>7} {r['kernels']:>7} {r['wall_s']:>8.2f} {r['sum_s']:>8.2f} "
              f"{r['max_s']:>7.2f} {sp:>8}")
    print(f"{args.model} training step, sm_90 PTX+cubin, {os.cpu_count()} CPUs")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

"""What the GPU would run, read off the sm_90 PTX, without a GPU: instructions per K step.

    python benchmarks/ptx_report.py [--only conv,gemm,attention] [--arch 90]
    python benchmarks/ptx_report.py --step lenet|vae|gpt|resnet    # every kernel of a training step
    python benchmarks/ptx_report.py --candidates --only gemm        # every config the tuner would time

A contraction's K loop is where its time goes. When the loop body holds many more instructions than
its tensor-core work can hide (index arithmetic, bounds masks, one address per gathered element),
the kernel is issue-bound, whatever its tiles. Per kernel of a few representative contractions
(ResNet's 3x3 conv forward and both gradients, NCHW and NHWC, a plain GEMM in f16 and TF32, and
gpu_bench's causal f16 attention forward and backward), compiled with the GPU block policy
through `aot.compile_for_target`, this prints:

* `loop`: PTX instructions in each innermost loop (one K step; comments, labels and `.loc` lines
  left out; a causal attention kernel has two loops a phase, below and on the diagonal). The
  4096^3 f16 GEMM's is the yardstick (~70);
* `mma`: tensor-core instructions in the longest (Hopper's `wgmma`, or `mma.sync` for tiles under 64
  rows); `cp16` / `cp4`: 16-byte and 4-byte `cp.async` copies into shared memory per K step and
  thread (4-byte ones are gathers: an address and a predicate each);
* grid, tiles and K steps per program;
* `sass`: the machine instructions of each innermost loop in the sm_90 code (`cuobjdump -sass`),
  where a PTX division or `ex2` with its range checks counts as the several instructions it is
  (the whole kernel's count where it has no loop).

`--candidates` compiles every config the autotuner would time for each case's kernels and flags
those whose shared memory no H100 block gets (a candidate that cannot launch costs a first call a
compile and times nothing). `--step` does the same as the default for every function of one of
gpu_bench's training steps (value-and-grad + SGD, the GPU policy's tiles), ranked by
`autotune.estimated_us` (a roofline guess), with the K steps each program runs (`steps`): the
static half of "which kernels dominate".

Static counts, not timings: they say where a kernel stands against the yardstick, the GPU run says
what it costs. Run with TRITON_INTERPRET unset (a GPU-less machine otherwise interprets).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ["TRITON_INTERPRET"] = "0"
os.environ.setdefault("AVALON_COMPILE_WORKERS", "1")

import avalon as av  # noqa: E402
from avalon.codegen.triton import compile_graph  # noqa: E402
from avalon.codegen.triton.aot import compile_each, compile_for_target  # noqa: E402
from avalon.codegen.triton.testing import fuse  # noqa: E402
from avalon.ir import Builder, Graph, TensorType  # noqa: E402

NHWC = (0, 2, 3, 1)
DOTS = ("contraction", "attention", "attention_bwd")  # the kinds with a K loop
av.set_float32_matmul_precision("high")  # as gpu_bench: float32 matmuls on TF32 tensor cores


def sass_loops(cubin: bytes) -> str:
    """Machine instructions in each innermost loop of the kernel's sm_90 code (`cuobjdump -sass`,
    shipped in Triton's wheel; a loop is a backward branch), "/"-separated, or the whole kernel's
    count where it has no loop: what ptxas made of the PTX, where a PTX `div.full.f32` or `ex2`
    with its range checks is several instructions. "" when no cuobjdump is found."""
    import shutil
    import subprocess

    import triton
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    tool = tool if os.path.exists(tool) else shutil.which("cuobjdump")
    if not tool:
        return ""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, check=False).stdout
    ins = [(int(a, 16), text) for a, text in re.findall(r"/\*([0-9a-f]{4,})\*/\s+(.*?);", sass)]
    loops = []
    for a, text in ins:
        target = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", text)
        if target and int(target.group(1), 16) < a:
            loops.append((int(target.group(1), 16), a))
    inner = [lo for lo in loops if not any(o != lo and lo[0] <= o[0] and o[1] <= lo[1] for o in loops)]
    counts = [sum(1 for a, _ in ins if lo <= a <= hi) for lo, hi in sorted(inner)]
    return "/".join(map(str, counts)) if counts else str(len(ins))


def stats(ck) -> dict:
    """`loop_stats` of a compiled kernel's PTX, and its SASS loops (`sass`)."""
    return {**loop_stats(ck.asm["ptx"]), "sass": sass_loops(ck.asm["cubin"])}


def loop_stats(ptx: str) -> dict:
    """Counts over each innermost loop of `ptx` (a K loop has no inner loop): `loops`, the
    instruction count of every loop in source order (a causal attention kernel has one below the
    diagonal and one on it, per phase), and the copy and tensor-core counts of the longest."""
    lines = ptx.splitlines()
    found = []
    for start in [i for i, ln in enumerate(lines) if "Inner Loop Header" in ln]:
        end = next(i for i in range(start + 1, len(lines)) if re.search(r"\bbra(\.uni)?\s+\$L__BB\d+_\d+;", lines[i]))
        body = [ln.strip() for ln in lines[start:end]]
        body = [ln for ln in body if ln and not ln.startswith(("//", ".loc", "$", "{", "}"))]
        found.append({"loop": len(body), "mma": sum(ln.startswith(("wgmma.mma_async", "mma.sync")) for ln in body),
                      "cp16": sum(ln.startswith("cp.async") and ", 0x10," in ln for ln in body),
                      "cp4": sum(ln.startswith("cp.async") and ", 0x4," in ln for ln in body)})
    if not found:
        return {"loop": 0, "loops": "0", "mma": 0, "cp16": 0, "cp4": 0}
    top = max(found, key=lambda f: f["loop"])
    return {**top, "loops": "/".join(str(f["loop"]) for f in found)}


def _conv_graph(op: str, n: int, c: int, hw: int, stride: int, layout: tuple | None) -> Graph:
    g = Graph(op)
    b = Builder(g)
    out_hw = (hw + 2 - 3) // stride + 1
    attrs = {"stride": [stride, stride], "padding": [1, 1], "dilation": [1, 1], "groups": 1}
    x_t = TensorType((n, c, hw, hw), "f32", layout=layout)
    dy_t = TensorType((n, c, out_hw, out_hw), "f32", layout=layout)
    w_t = TensorType((c, c, 3, 3), "f32")
    if op == "conv2d":
        r = b("conv2d", g.add_input(x_t, "x"), g.add_input(w_t, "w"), **attrs)
    elif op == "conv2d_grad_input":
        r = b("conv2d_grad_input", g.add_input(dy_t, "dy"), g.add_input(w_t, "w"), input_shape=[n, c, hw, hw], **attrs)
    else:
        r = b("conv2d_grad_weight", g.add_input(x_t, "x"), g.add_input(dy_t, "dy"), weight_shape=[c, c, 3, 3],
              **attrs)
    if layout is not None and op != "conv2d_grad_weight":
        r.type = r.type.with_layout(list(layout))
    g.set_outputs([r])
    return g


def cases(only: set[str]) -> list[tuple[str, Graph]]:
    """(name, graph ready for `compile_graph`) per case of `only` (gemm, conv, attention)."""
    out = []
    if "gemm" in only:
        for d in ("f16", "f32"):
            g = Graph("gemm")
            b = Builder(g)
            g.set_outputs([b("matmul", g.add_input(TensorType((4096, 4096), d), "a"),
                             g.add_input(TensorType((4096, 4096), d), "b"))])
            out.append((f"matmul 4096^3 {d}", fuse(g, g.name)))
    if "conv" in only:
        for op in ("conv2d", "conv2d_grad_input", "conv2d_grad_weight"):
            for layout in (None, NHWC):
                for stride in (1, 2) if op == "conv2d_grad_input" else (1,):
                    name = f"{op} 64ch 32x32 bs128 s{stride} {'nhwc' if layout else 'nchw'}"
                    g = _conv_graph(op, 128, 64, 32, stride, layout)
                    out.append((name, fuse(g, g.name)))
    if "attention" in only:  # gpu_bench's attention row: causal, f16, forward and backward kernels
        import numpy as np

        import avalon as av
        from avalon.codegen.triton.target import TRITON
        from avalon.nn.attention import scaled_dot_product_attention as sdpa
        from avalon.passes import DEFAULT_PIPELINE, PassManager
        q = np.zeros((8, 16, 1024, 64), np.float16)
        g = av.trace(av.value_and_grad(lambda q, k, v: av.ops.sum(sdpa(q, k, v, is_causal=True)),
                                       argnums=(0, 1, 2)), q, q, q)
        PassManager.parse(DEFAULT_PIPELINE, target=TRITON).run(g)
        out.append(("attention causal f16 B8 H16 L1024 E64", g))
    return out


STEPS = {"lenet": 0, "vae": 1, "gpt": 2, "resnet": 3}


def step_kernels(which: str) -> list:
    """Every function of gpu_bench's `which` training step, as the GPU policy builds them."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import gpu_bench

    import avalon as av
    from avalon import optim
    gpu_bench.DEV = "cpu"  # tracing only: nothing runs
    _, make, loss_fn, batch, *_ = gpu_bench.workloads()[STEPS[which]]
    av.manual_seed(0)
    model = make()
    opt = optim.SGD(model, lr=1e-5)

    def step(m, o, *xs):
        loss, grads = av.value_and_grad(loss_fn)(m, *xs)
        o.step(grads)
        return loss
    g = av.compile(step, backend="triton").inspect(model, opt, *batch).graph
    return [k for ln in compile_graph(g).launches for k in ln.kernel.chain()]


def k_steps(k) -> int | str:
    """K steps (or reduction chunks) one program runs, where the kernel has a loop."""
    m, p = k.meta, k.problem
    if "k" in p and "BK" in m:
        return -(-m.get("KCHUNK", p["k"]) // m["BK"])
    if "r" in p and "RBLOCK" in m:
        return -(-m.get("RCHUNK", p["r"]) // m["RBLOCK"])
    return ""


def report_step(which: str, arch: int) -> None:
    from avalon.codegen.triton.autotune import estimated_us
    ks = step_kernels(which)
    seen: dict[str, dict] = {}
    rows = []
    for k in ks:
        if k.code not in seen:  # kernels equal but for their name share one compiled function
            seen[k.code] = stats(compile_for_target(k, arch))
        rows.append((estimated_us(k), k, seen[k.code]))
    rows.sort(key=lambda r: -r[0])
    print(f"{which}: {len(ks)} launches, {len(seen)} distinct functions; ranked by the roofline guess")
    print(f"{'kernel':<40} {'kind':<22} {'est us':>7} {'grid':<16} {'steps':>5} {'loop':>15} {'mma':>4} "
          f"{'cp16':>4} {'cp4':>4} {'sass':>15}")
    for us, k, s in rows:
        print(f"{k.name[:40]:<40} {k.kind:<22} {us:>7.1f} {str(k.grid):<16} {k_steps(k):>5} {s['loops']:>15} "
              f"{s['mma']:>4} {s['cp16']:>4} {s['cp4']:>4} {s['sass']:>15}", flush=True)


def report_candidates(name: str, g: Graph, arch: int) -> None:
    """Every config the autotuner would time for `g`'s kernels, compiled instead of timed: its loop,
    its shared memory, and "NO LAUNCH" where that exceeds what a block gets on an H100."""
    from avalon.codegen.triton import KernelCache
    from avalon.codegen.triton.autotune import SMEM_BYTES, Tuner, config_of

    tried = []

    def static(k, make_args) -> float:  # kept, then all compiled at once in a process pool
        tried.append(k)
        return 1.0
    with tempfile.TemporaryDirectory() as records:  # no stored verdict: every candidate is compiled anew
        compile_graph(g, tuner=Tuner(static, KernelCache(records), force=True, device=f"sm_{arch}"))
    for k, ck in zip(tried, compile_each(tried, arch)):
        if ck.error:
            print(f"{name:<44} {config_of(k).label:<52} FAILED {ck.error}", flush=True)
            continue
        s = stats(ck)
        print(f"{name:<44} {config_of(k).label:<52} {ck.shared // 1024:>5} {s['loops']:>9} {s['mma']:>5} "
              f"{s['cp16']:>4} {s['cp4']:>4} {s['sass']:>15}{'  NO LAUNCH' if ck.shared > SMEM_BYTES else ''}",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="gemm,conv,attention")
    ap.add_argument("--step", choices=sorted(STEPS))
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--candidates", action="store_true", help="every autotuning candidate of the --only cases")
    args = ap.parse_args()
    if args.candidates:
        print(f"{'case':<44} {'candidate':<52} {'KiB':>5} {'loop':>9} {'mma':>5} {'cp16':>4} {'cp4':>4} {'sass':>15}")
        for name, g in cases(set(args.only.split(","))):
            report_candidates(name, g, args.arch)
        return
    if args.step:
        report_step(args.step, args.arch)
        return
    print(f"{'case':<44} {'kernel':<28} {'grid':<16} {'tiles':<22} {'loop':>9} {'mma':>5} {'cp16':>4} {'cp4':>4} "
          f"{'sass':>15}")
    for name, g in cases(set(args.only.split(","))):
        cg = compile_graph(g)
        for k in [k for ln in cg.launches if ln.kernel.kind in DOTS for k in ln.kernel.chain()]:
            s = stats(compile_for_target(k, args.arch))
            tiles = " ".join(f"{m}={k.meta[m]}" for m in ("BM", "BN", "BK", "SPLIT_K") if m in k.meta)
            print(f"{name:<44} {k.name[:28]:<28} {str(k.grid):<16} {tiles:<22} {s['loops']:>9} {s['mma']:>5} "
                  f"{s['cp16']:>4} {s['cp4']:>4} {s['sass']:>15}", flush=True)
            name = ""


if __name__ == "__main__":
    main()

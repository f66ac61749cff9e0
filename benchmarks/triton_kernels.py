"""Generated Triton kernels on a GPU: correct first, then timed against torch in the same run.

    python benchmarks/triton_kernels.py [--out results.json] [--quick]

Part 1 checks a representative kernel of each kind against the numpy reference (fresh random
inputs, fp64 relative error). Part 2 times the kernel alone (triton.testing.do_bench, median of
CUDA-event timings) and the whole CompiledGraph call, against the torch op(s) computing the same:

* fused bias + relu over 16M fp32 (bandwidth-bound: GB/s of the bytes that must move);
* softmax over 4096 rows of 4096 (persistent form) and 8192 (looped form) fp32;
* matmul 4096^3, fp16 and fp32 (tf32 on the tensor cores), with a fused bias + relu epilogue;
* conv2d as implicit GEMM (LeNet's second conv at batch 256, a ResNet 3x3 at batch 64);
* max-pool 2x2.

Ratios are against torch measured in the same process; tests never assert on time. Needs a
CUDA GPU (TRITON_INTERPRET unset).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.pop("TRITON_INTERPRET", None)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402

from avalon.codegen.triton import BlockPolicy, compile_graph  # noqa: E402
from avalon.codegen.triton.runtime import launch  # noqa: E402
from avalon.codegen.triton.testing import fuse  # noqa: E402
from avalon.ir import (  # noqa: E402
    Builder,
    Graph,
    TensorType,
    interpret,  # noqa: E402
)


def graph(*types):
    g = Graph("f")
    return g, Builder(g), [g.add_input(TensorType(s, d), f"x{i}") for i, (s, d) in enumerate(types)]


def rel_err(out, ref) -> float:
    a = out.detach().float().cpu().numpy().astype(np.float64)
    r = np.asarray(ref, np.float64)
    return float(np.linalg.norm(a - r) / max(np.linalg.norm(r), 1e-30))


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


# --- cases: (name, graph, torch function of the same inputs, bytes that must move, flops) -----------
def cases(quick: bool):
    out = []
    n = 1 << 22 if quick else 1 << 24
    g, b, (x, bias) = graph(((n // 1024, 1024), "f32"), ((1024,), "f32"))
    g.set_outputs([b("relu", b("add", x, b("broadcast", bias, shape=[n // 1024, 1024])))])
    out.append(("bias_relu_f32", fuse(g, "fused_add_relu_0"), lambda x, b: torch.relu(x + b), 8 * n, 0))

    for cols in (4096, 8192):
        rows = 1024 if quick else 4096
        g, b, (x,) = graph(((rows, cols), "f32"))
        m = b("max", x, axes=[1], keepdims=True)
        e = b("exp", b("sub", x, b("broadcast", m, shape=[rows, cols])))
        g.set_outputs([b("div", e, b("broadcast", b("sum", e, axes=[1], keepdims=True), shape=[rows, cols]))])
        out.append((f"softmax_{rows}x{cols}", fuse(g, "fused_softmax_0"), lambda x: torch.softmax(x, 1),
                    8 * rows * cols, 0))
        # the same with the whole row in one block (one read of x instead of three)
        out.append((f"softmax_{rows}x{cols}_persistent", fuse(g, "fused_softmax_0"), lambda x: torch.softmax(x, 1),
                    8 * rows * cols, 0, dict(persistent_r=cols, reduction_elems=cols)))

    s = 2048 if quick else 4096
    for dt in ("f16", "f32"):
        g, b, (x, w, bias) = graph(((s, s), dt), ((s, s), dt), ((s,), dt))
        y = b("matmul", x, b("transpose", w, perm=[1, 0]))
        g.set_outputs([b("relu", b("add", y, b("broadcast", bias, shape=[s, s])))])
        out.append((f"linear_relu_{dt}_{s}", fuse(g, "fused_linear_relu_0"),
                    lambda x, w, b: torch.relu(torch.nn.functional.linear(x, w, b)), 0, 2 * s ** 3))
        # tile sweep (--case sweep): BM=BN, BK, pipeline stages, warps
        for bm, bk, st, wp in ((128, 64, 3, 8), (128, 64, 4, 8), (128, 64, 4, 4), (256, 64, 3, 8), (64, 64, 4, 4)):
            out.append((f"linear_relu_{dt}_{s}_sweep_{bm}x{bk}_s{st}_w{wp}", fuse(g, "fused_linear_relu_0"),
                        lambda x, w, b: torch.relu(torch.nn.functional.linear(x, w, b)), 0, 2 * s ** 3,
                        dict(mm_block=bm, mm_k=bk, mm_stages=st, mm_warps=wp)))

    for name, xs, ws, pad in (("conv_lenet2_b256", (256, 20, 12, 12), (50, 20, 5, 5), 0),
                              ("conv_resnet3x3_b64", (64, 64, 56, 56), (64, 64, 3, 3), 1)):
        g, b, (x, w) = graph((xs, "f32"), (ws, "f32"))
        y = b("conv2d", x, w, padding=[pad, pad])
        g.set_outputs([b("relu", y)])
        oh = xs[2] + 2 * pad - ws[2] + 1
        flops = 2 * xs[0] * ws[0] * oh * oh * ws[1] * ws[2] * ws[3]
        out.append((name, fuse(g, "fused_conv_relu_0"),
                    lambda x, w, p=pad: torch.relu(torch.nn.functional.conv2d(x, w, padding=p)), 0, flops))
        for bm, bk, st, wp in ((128, 64, 3, 8), (64, 64, 4, 4), (128, 32, 4, 4)):
            out.append((f"{name}_sweep_{bm}x{bk}_s{st}_w{wp}", fuse(g, "fused_conv_relu_0"),
                        lambda x, w, p=pad: torch.relu(torch.nn.functional.conv2d(x, w, padding=p)), 0, flops,
                        dict(mm_block=bm, mm_k=bk, mm_stages=st, mm_warps=wp)))

    g, b, (x,) = graph(((128, 64, 56, 56), "f32"))
    g.set_outputs([b("max_pool2d", x, kernel=[2, 2], stride=[2, 2])])
    out.append(("maxpool2x2", g, lambda x: torch.nn.functional.max_pool2d(x, 2), 4 * 128 * 64 * 56 * 56 * 5 // 4, 0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tf32", default="tf32", choices=["tf32", "ieee"])
    ap.add_argument("--case", default=None, help="run only the cases whose name contains this")
    args = ap.parse_args()
    torch.manual_seed(0)
    policy = BlockPolicy.for_device(interpret=False).replace(dot_precision=args.tf32)
    results = []
    for name, g, ref_fn, nbytes, flops, *over in cases(args.quick):
        if (args.case and args.case not in name) or ("sweep" in name and "sweep" not in (args.case or "")):
            continue
        try:
            results.append(run_case(name, g, ref_fn, nbytes, flops, policy.replace(**over[0]) if over else policy))
        except Exception as e:  # a tile that does not fit (shared memory) is a result too
            print(json.dumps(dict(case=name, error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")))
    if args.out:
        with open(args.out, "a") as f:
            for r in results:
                f.write(json.dumps(dict(r, device=torch.cuda.get_device_name())) + "\n")
    print(f"\n{'case':44} {'err':>8} {'kernel ms':>10} {'call ms':>8} {'torch ms':>9} {'x torch':>8}  rate")
    for r in results:
        rate = (f"{r['kernel_GBps']:.0f} GB/s (torch {r['torch_GBps']:.0f})" if "kernel_GBps" in r else
                f"{r['kernel_TFLOPs']:.0f} TFLOP/s (torch {r['torch_TFLOPs']:.0f})")
        print(f"{r['case']:44} {r['rel_err']:8.1e} {r['kernel_ms']:10.3f} {r['call_ms']:8.3f} {r['torch_ms']:9.3f} "
              f"{r['speedup_vs_torch']:8.2f}  {rate}")


def run_case(name, g, ref_fn, nbytes, flops, policy) -> dict:
    """Compile, check, and time one case."""
    dev = torch.device("cuda")
    t0 = time.perf_counter()
    cg = compile_graph(g, blocks=policy)
    ins = [torch.randn(v.shape, device=dev).to(getattr(torch, {"f16": "float16", "f32": "float32"}[v.dtype.name]))
           for v in g.inputs]
    outs = cg(*ins)
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - t0
    # correctness: fp64 reference on the CPU for small-enough cases, torch on the GPU otherwise
    ref = ref_fn(*ins)
    err = rel_err(outs[0], ref.float().cpu().numpy())
    if np.prod(g.inputs[0].shape) <= 1 << 20:
        err = max(err, rel_err(outs[0], interpret(g, *[i.float().cpu().numpy().astype(v.dtype.np)
                                                       for i, v in zip(ins, g.inputs)])[0]))
    ln = cg.launches[-1]
    k = ln.kernel
    by_value = {id(v): t for v, t in zip(g.inputs, ins)} | {id(g.outputs[0]): outs[0]}
    tensors = [by_value[id(v)] for v in ln.args]  # the kernel's parameter order, not the graph's
    t_kernel = bench(lambda k=k, t=tensors: launch(k, t))
    t_call = bench(lambda cg=cg, ins=ins: cg(*ins))
    t_torch = bench(lambda f=ref_fn, ins=ins: f(*ins))
    row = dict(case=name, kernels=list(cg.kernels), rel_err=err, compile_s=round(compile_s, 2),
               kernel_ms=t_kernel, call_ms=t_call, torch_ms=t_torch, speedup_vs_torch=t_torch / t_kernel,
               meta=k.meta, num_warps=k.num_warps)
    if nbytes:
        row["kernel_GBps"] = nbytes / t_kernel / 1e6
        row["torch_GBps"] = nbytes / t_torch / 1e6
    if flops:
        row["kernel_TFLOPs"] = flops / t_kernel / 1e9
        row["torch_TFLOPs"] = flops / t_torch / 1e9
    print(json.dumps(row), flush=True)
    return row




if __name__ == "__main__":
    main()

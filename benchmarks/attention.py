"""The fused attention kernel on a GPU against torch's F.scaled_dot_product_attention and against
Avalon's unfused path (the same graph compiled without the attention kind: Q Kᵀ, softmax and P V as
three kernels with the L x S scores in memory), all measured in the same run.

    python benchmarks/attention.py [--out results.json] [--quick] [--train] [--dry]

`--train` times a training step instead: forward + backward (dQ, dK, dV of sum(O * W)) as
Avalon's two flash kernels (`attention` storing the row max and sum, `attention_bwd` recomputing
P) against torch's F.scaled_dot_product_attention forward + autograd backward. `--dry` runs the
same code paths without a GPU (tiny shapes, Triton's interpreter, numpy in place of torch's
timings) to check the script itself.

For each case it first checks the fused result against the unfused one and against torch (fp64
relative error; dropout cases are checked against the unfused path only, which draws the same
bits), then times the CompiledGraph calls and torch (triton.testing.do_bench, median ms) and
reports TFLOP/s (4·B·H·L·S·E, halved for causal) and ratios. Needs a CUDA GPU; tests never
assert on time.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
DRY = "--dry" in sys.argv
if DRY:
    os.environ["TRITON_INTERPRET"] = "1"
else:
    os.environ.pop("TRITON_INTERPRET", None)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402

import avalon as av  # noqa: E402
from avalon.codegen.triton import compile_graph  # noqa: E402
from avalon.codegen.triton.target import TRITON  # noqa: E402
from avalon.nn.attention import scaled_dot_product_attention as sdpa  # noqa: E402
from avalon.passes import DEFAULT_PIPELINE, PassManager  # noqa: E402
from avalon.passes.target import Target  # noqa: E402

UNFUSED = Target("triton-no-attention",
                 kinds=tuple(k for k in TRITON.kinds if k not in ("attention", "attention_bwd")))


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.double(), b.double()
    return float((a64 - b64).norm() / max(float(b64.norm()), 1e-30))


def compiled(fn, args, target):
    g = av.trace(fn, *args)
    PassManager.parse(DEFAULT_PIPELINE, target=target).run(g)
    return compile_graph(g, target=target)


def cases(quick: bool):
    shapes = [(4, 16, 1024, 64)] if quick else [(4, 16, 1024, 64), (2, 16, 4096, 64), (1, 16, 4096, 128)]
    for b, h, n, e in shapes:
        for dtype in ("float16", "float32"):
            for mode in ("none", "causal", "bool", "dropout"):
                yield b, h, n, e, dtype, mode


def run_case(b, h, n, e, dtype, mode) -> dict:
    dev = torch.device("cuda")
    td = getattr(torch, dtype)
    gen = torch.Generator(device=dev).manual_seed(0)
    q, k, v = (torch.randn(b, h, n, e, device=dev, dtype=td, generator=gen) for _ in range(3))
    extra, kw = [], {}
    if mode == "bool":
        m = torch.rand(n, n, device=dev, generator=gen) < 0.5
        m[:, 0] = True
        extra, kw = [m], {"attn_mask": m}
    elif mode == "causal":
        kw = {"is_causal": True}
    elif mode == "dropout":
        kw = {"dropout_p": 0.1, "is_causal": True}

    def fn(q, k, v, *m):
        return sdpa(q, k, v, **({"attn_mask": m[0]} if m else kw))

    # trace on small numpy stand-ins of the right shapes and dtypes
    np_args = [np.zeros(tuple(x.shape), np.dtype(dtype) if x.dtype != torch.bool else bool) for x in (q, k, v, *extra)]
    fused, unfused = compiled(fn, np_args, TRITON), compiled(fn, np_args, UNFUSED)
    args = [q, k, v, *extra]
    if len(fused.graph.inputs) > len(args):
        args.append(torch.tensor(1234, dtype=torch.int64, device=dev))
    out_f, out_u = fused(*args)[0], unfused(*args)[0]
    row = dict(shape=[b, h, n, e], dtype=dtype, mode=mode,
               kinds=sorted({ln.kernel.kind for ln in fused.launches}),
               err_vs_unfused=rel_err(out_f, out_u))
    if mode != "dropout":
        row["err_vs_torch"] = rel_err(out_f, torch.nn.functional.scaled_dot_product_attention(q, k, v, **kw))
    flops = 4 * b * h * n * n * e / (2 if kw.get("is_causal") else 1)
    t_f = bench(lambda: fused(*args))
    t_u = bench(lambda: unfused(*args))
    t_t = bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, **kw))
    row.update(ms_fused=t_f, ms_unfused=t_u, ms_torch=t_t, tflops_fused=flops / t_f / 1e9,
               speedup_vs_unfused=t_u / t_f, ratio_vs_torch=t_t / t_f)
    return row


def train_cases(quick: bool, dry: bool):
    if dry:
        yield 1, 2, 64, 16, "float32", "causal"
        return
    shapes = [(4, 16, 1024, 64)] if quick else [(4, 16, 1024, 64), (2, 16, 4096, 64), (1, 16, 4096, 128)]
    for b, h, n, e in shapes:
        for dtype in ("float16", "float32"):
            for mode in ("none", "causal"):
                yield b, h, n, e, dtype, mode


def run_train_case(b, h, n, e, dtype, mode, dry=False) -> dict:
    """Forward + backward: Avalon's training step vs torch's sdpa + autograd (same loss)."""
    causal = mode == "causal"

    def loss(q, k, v, w):
        return (sdpa(q, k, v, is_causal=causal) * w).sum()

    step = av.value_and_grad(loss, argnums=(0, 1, 2))
    rng = np.random.default_rng(0)
    host = [rng.standard_normal((b, h, n, e)).astype(dtype) for _ in range(4)]
    fused, unfused = compiled(step, host, TRITON), compiled(step, host, UNFUSED)
    kinds = sorted({ln.kernel.kind for ln in fused.launches})
    if dry:  # the interpreter: check the results against the reference, time nothing
        got, ref = fused(*host), unfused(*host)
        err = max(float(np.abs(np.asarray(av.ir.to_numpy(x), np.float64) - np.asarray(av.ir.to_numpy(y))).max())
                  for x, y in zip(got, ref))
        return dict(shape=[b, h, n, e], dtype=dtype, mode=mode, kinds=kinds, err_vs_unfused=err, train=True)
    dev = torch.device("cuda")
    td = getattr(torch, dtype)
    gen = torch.Generator(device=dev).manual_seed(0)
    q, k, v, w = (torch.randn(b, h, n, e, device=dev, dtype=td, generator=gen) for _ in range(4))
    got, ref = fused(q, k, v, w), unfused(q, k, v, w)
    qt, kt, vt = (x.detach().clone().requires_grad_() for x in (q, k, v))

    def torch_step():
        out = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
        return torch.autograd.grad((out * w).sum(), (qt, kt, vt))

    tg = torch_step()
    row = dict(shape=[b, h, n, e], dtype=dtype, mode=mode, kinds=kinds, train=True,
               err_vs_unfused=max(rel_err(x, y) for x, y in zip(got[1:], ref[1:])),
               err_vs_torch=max(rel_err(x, y) for x, y in zip(got[1:], tg)))
    flops = 4 * b * h * n * n * e * 3.5 / (2 if causal else 1)  # fwd 2 matmuls, bwd 5 (one recomputed)
    t_f = bench(lambda: fused(q, k, v, w))
    t_u = bench(lambda: unfused(q, k, v, w))
    t_t = bench(torch_step)
    row.update(ms_fused=t_f, ms_unfused=t_u, ms_torch=t_t, tflops_fused=flops / t_f / 1e9,
               speedup_vs_unfused=t_u / t_f, ratio_vs_torch=t_t / t_f)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--train", action="store_true", help="time forward + backward (training step)")
    ap.add_argument("--dry", action="store_true", help="no GPU: tiny shapes in the interpreter, no timings")
    a = ap.parse_args()
    if a.dry:
        rows = [run_train_case(*c, dry=True) for c in train_cases(True, True)]
        print(json.dumps(rows))
        bad = [r for r in rows if "attention_bwd" not in r["kinds"] or r["err_vs_unfused"] > 1e-3]
        sys.exit(f"dry run failed: {bad}" if bad else 0)
    if not torch.cuda.is_available():
        sys.exit("benchmarks/attention.py needs a CUDA GPU")
    rows = []
    if a.train:
        for case in train_cases(a.quick, False):
            try:
                r = run_train_case(*case)
            except Exception as e:  # report and go on
                r = dict(case=list(case), train=True, error=f"{type(e).__name__}: {e}")
            rows.append(r)
            print(r)
        if a.out:
            with open(a.out, "w") as f:
                json.dump(rows, f, indent=1)
        return
    print(f"{'shape':>20} {'dtype':>8} {'mode':>8} {'fused ms':>9} {'unfused':>9} {'torch':>9} {'x unfused':>9} "
          f"{'x torch':>8} {'err':>8}")
    for case in cases(a.quick):
        try:
            r = run_case(*case)
        except Exception as e:  # report and go on: one failing case should not hide the others
            r = dict(case=list(case), error=f"{type(e).__name__}: {e}")
            print(r)
            rows.append(r)
            continue
        rows.append(r)
        print(f"{str(r['shape']):>20} {r['dtype']:>8} {r['mode']:>8} {r['ms_fused']:9.3f} {r['ms_unfused']:9.3f} "
              f"{r['ms_torch']:9.3f} {r['speedup_vs_unfused']:9.2f} {r['ratio_vs_torch']:8.2f} "
              f"{r.get('err_vs_torch', r['err_vs_unfused']):8.1e}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

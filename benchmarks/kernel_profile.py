"""Which kernels dominate a compiled step on the GPU, and how close each runs to the card's peak
(issue 16: "the kernels a profile says dominate each step, with their achieved fraction of peak").

`profile(compiled, run)` runs `run` (one call of `compiled`, an `av.compile`d step) a few times
under torch.profiler, sums each kernel's GPU time, and `rows` divides each Avalon kernel's work
(`autotune.work`: FLOPs and bytes from its problem sizes) by it: achieved TFLOP/s and TB/s, and
the larger of the two fractions of the card's datasheet peak (H100 / H200 SXM; other cards get the
rates only). Time in kernels that are not Avalon's (copies, memsets) is one "not Avalon's" row.
The static counterpart, with no GPU, is `ptx_report.py --step`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from avalon.codegen.triton.autotune import work
from avalon.codegen.triton.kernel import Kernel
from avalon.precision import dot_precisions

# dense tensor-core FLOP/s by operand type, plain float32 FLOP/s, HBM bytes/s (SXM datasheets)
PEAKS = {"H200": {"f16": 989e12, "tf32": 495e12, "f32": 67e12, "hbm": 4.8e12},
         "H100": {"f16": 989e12, "tf32": 495e12, "f32": 67e12, "hbm": 3.35e12}}


def launched(compiled: Any) -> dict[str, Kernel]:
    """Every kernel the signatures `compiled` (an `av.compile` result) has compiled may launch, by
    name (a split's epilogue and stride phases included)."""
    out: dict[str, Kernel] = {}
    for entry in compiled.cache.values():
        cg = getattr(entry.executable, "compiled", None)
        for ln in getattr(cg, "launches", []):
            out.update((k.name, k) for k in ln.kernel.chain())
    return out


def gpu_times_us(run: Callable[[], Any], reps: int) -> dict[str, float]:
    """Microseconds of GPU time per kernel name over `reps` calls of `run` (on a machine without
    CUDA, the CPU profile's device times: none, so every table is empty there)."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    cuda = torch.cuda.is_available()
    with torch_profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            run()
        if cuda:
            torch.cuda.synchronize()
    out: dict[str, float] = {}
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None)
        t = getattr(e, "cuda_time_total", 0.0) if t is None else t
        if t > 0:
            out[e.key] = out.get(e.key, 0.0) + float(t)
    return out


def _operands(k: Kernel) -> str:
    """The peak that applies to `k`'s products: "f16" (16-bit operands), "tf32" or "f32"."""
    size = k.problem.get("itemsize") or (k.params[0][1].itemsize if k.params else 4)
    if size <= 2:
        return "f16"
    matmul, conv = dot_precisions()
    return "tf32" if (conv if "conv" in k.name else matmul) == "tf32" else "f32"


def rows(times_us: dict[str, float], kernels: dict[str, Kernel], reps: int, gpu: str) -> list[dict]:
    """One row per Avalon kernel the profile saw, slowest first: us per step, share of the step's
    GPU time, achieved TFLOP/s and TB/s and, on a card in PEAKS, the fraction of peak it reaches
    and whether compute or memory is the nearer roof."""
    total = sum(times_us.values()) or 1.0
    peak = next((p for card, p in PEAKS.items() if card in gpu), None)
    out, other = [], 0.0
    for name, t in times_us.items():
        k = kernels.get(name)
        if k is None:
            other += t
            continue
        s = t / reps * 1e-6
        flops, nbytes = work(k)
        r = {"kernel": name, "kind": k.kind, "us": t / reps, "share": t / total,
             "tflops": flops / s / 1e12, "tbps": nbytes / s / 1e12}
        if peak:
            compute, memory = flops / s / peak[_operands(k)], nbytes / s / peak["hbm"]
            r.update(of_peak=max(compute, memory), bound="compute" if compute >= memory else "memory")
        out.append(r)
    out.sort(key=lambda r: -r["us"])
    if other:
        out.append({"kernel": "(not Avalon's)", "kind": "", "us": other / reps, "share": other / total})
    return out


def profile(compiled: Any, run: Callable[[], Any], gpu: str, reps: int = 5) -> list[dict]:
    return rows(gpu_times_us(run, reps), launched(compiled), reps, gpu)


def table(rs: list[dict], top: int = 6) -> str:
    """The `top` rows as text, one kernel a line."""
    if not any(r["kind"] for r in rs):
        return ("    (no kernel of this step in the profile: no CUDA here, or the profiler missed the CUDA graph's "
                "replays; AVALON_CUDA_GRAPHS=0 launches them one by one)")
    lines = []
    for r in rs[:top]:
        peak = f"{r['of_peak']:.0%} of {r['bound']} peak" if "of_peak" in r else ""
        rate = f"{r['tflops']:.1f} TFLOP/s {r['tbps']:.2f} TB/s" if "tflops" in r else ""
        lines.append(f"    {r['kernel'][:44]:<44} {r['kind']:<20} {r['us']:>8.1f} us {r['share']:>5.0%}  "
                     f"{rate}  {peak}")
    return "\n".join(lines)

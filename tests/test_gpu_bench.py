"""The GPU driver's dry run: every section of benchmarks/gpu_bench.py runs on the CPU with tiny
shapes in the interpreter, so a GPU session never loses its minutes to a typo or a stale API."""
import os
import subprocess
import sys

import numpy as np


def test_gpu_bench_dry_run_runs_every_section(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1", "AVALON_CACHE_DIR": str(tmp_path / "avalon"),
           "PYTHONPATH": os.getcwd()}
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, "benchmarks/gpu_bench.py", "--dry-run", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import json
    got = json.loads(out.read_text())
    assert not got["failed"]
    sections = {r["section"] for r in got["rows"]}
    assert sections == {"steps", "gemm", "conv", "attention", "pointwise", "index", "first_call", "layout", "remat", "vmap",
                        "scatter"}
    assert all(r["avalon_ms"] > 0 and r["baseline_ms"] > 0 for r in got["rows"])
    assert len(got["profile"]) == 4  # each step's kernel profile (empty without CUDA)


def test_kernel_profile_rows_divide_each_kernels_work_by_its_time(rng):
    """`benchmarks/kernel_profile.py` with GPU times made up: the step's kernels slowest first, each
    with its share, rates and fraction of the card's peak; other kernels' time in one row."""
    sys.path.insert(0, os.path.join(os.getcwd(), "benchmarks"))
    import kernel_profile as kp

    import avalon as av
    from avalon.codegen.triton.autotune import work
    f = av.compile(lambda x, w: av.relu(x @ w).sum(), backend="triton")
    x, w = rng.standard_normal((64, 32)).astype(np.float32), rng.standard_normal((32, 48)).astype(np.float32)
    f(x, w)
    kernels = kp.launched(f)
    mm = next(k for k in kernels.values() if k.kind == "contraction")
    red = next(k for k in kernels.values() if k.kind != "contraction")
    times = {mm.name: 30.0, red.name: 90.0, "Memset (Device)": 30.0}  # us over 3 steps
    rs = kp.rows(times, kernels, 3, "NVIDIA H200")
    assert [r["kernel"] for r in rs] == [red.name, mm.name, "(not Avalon's)"]
    assert [round(r["us"], 6) for r in rs] == [30.0, 10.0, 10.0] and abs(sum(r["share"] for r in rs) - 1) < 1e-9
    flops, nbytes = work(mm)
    r = rs[1]
    assert flops > 0 and abs(r["tflops"] - flops / 10e-6 / 1e12) < 1e-9
    compute, memory = flops / 10e-6 / 67e12, nbytes / 10e-6 / 4.8e12  # "highest": float32 products
    assert abs(r["of_peak"] - max(compute, memory)) < 1e-12
    assert r["bound"] == ("compute" if compute >= memory else "memory")
    assert "of_peak" not in kp.rows(times, kernels, 3, "some other card")[0]
    assert red.name[:20] in kp.table(rs)

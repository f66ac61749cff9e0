"""The GPU driver's dry run: every section of benchmarks/gpu_bench.py runs on the CPU with tiny
shapes in the interpreter, so a GPU session never loses its minutes to a typo or a stale API."""
import os
import subprocess
import sys


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
    assert sections == {"steps", "gemm", "conv", "attention", "pointwise", "index", "first_call", "layout", "remat"}
    assert all(r["avalon_ms"] > 0 and r["baseline_ms"] > 0 for r in got["rows"])

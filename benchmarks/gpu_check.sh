#!/usr/bin/env bash
# The one prepared GPU check (issue 16; see benchmarks/gpu_notes.md): Triton differential tests on
# CUDA (interpreter off, tf32-aware tolerances), then benchmarks/gpu_bench.py, which autotunes as it
# compiles and prints one table (training steps vs torch eager and torch.compile, GEMM, conv,
# attention, pointwise, index checks, first call, layout) with the GPU's name. About 8 minutes.
#   bash benchmarks/gpu_check.sh [OUTDIR]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
unset TRITON_INTERPRET
export TRITON_INTERPRET=0
export AVALON_CACHE_DIR=${AVALON_CACHE_DIR:-$out/avalon-cache}  # tuning winners land here: keep it
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
# every failure is listed (no -x: one early failure must not hide the rest), each as it happens (-v),
# so a run the timeout cuts still names them; the whole log is kept
timeout 180 python3 -m pytest -v -p no:cacheprovider --maxfail=30 tests/test_triton_*.py tests/test_autotune.py \
  --deselect tests/test_triton_aot.py --deselect tests/test_triton_attention_aot.py > "$out/tests.log" 2>&1
grep -E " FAILED| ERROR|[0-9]+ passed|[0-9]+ failed" "$out/tests.log" | tail -32
AVALON_LOG=autotune timeout 330 python3 benchmarks/gpu_bench.py --out "$out/gpu_bench.json" 2> "$out/autotune.log"
echo "rows: $out/gpu_bench.json; tuning log: $out/autotune.log"

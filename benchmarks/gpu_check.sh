#!/usr/bin/env bash
# The one prepared GPU check: Triton differential tests on CUDA (interpreter off, tf32-aware
# tolerances), then the training-step benchmark against PyTorch eager. Prints a short table.
#   bash benchmarks/gpu_check.sh [OUTDIR]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
unset TRITON_INTERPRET
export TRITON_INTERPRET=0
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
python3 -m pytest -q -x -p no:cacheprovider tests/test_triton_*.py --deselect tests/test_triton_aot.py 2>&1 | tail -3
python3 benchmarks/train_step.py --device cuda --reps 30 --out "$out/train_step.json"

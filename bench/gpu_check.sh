#!/usr/bin/env bash
# The one prepared GPU check (run on a lent GPU machine; exits 0 at once without a GPU):
#   1. pytest -m gpu (the CUDA kernels against the references);
#   2. the GPU section of bench/kernels.py (time and bandwidth, bench/results/kernels.json);
#   3. training throughput of the tiny models on the GPU, fp32 and bf16
#      (bench/results/throughput_<model>_<amp>_cuda.json).
# Usage: bench/gpu_check.sh [python]   (default: .venv/bin/python if present, else python3)
set -u
cd "$(dirname "$0")/.."
PY=${1:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check: no CUDA device visible to $PY; nothing to run"
  exit 0
fi
status=0
[ -f data/shapes/val/instances.json ] || "$PY" -m tutorial data || status=1
"$PY" -m pytest -m gpu -q -p no:cacheprovider || status=1
"$PY" bench/kernels.py --skip-builds || status=1
for model in detr_tiny deformable_detr_tiny dab_detr_tiny dn_detr_tiny dino_tiny rtdetr_tiny rtdetr_mamba_tiny dense_tiny; do
  for amp in fp32 bf16; do
    "$PY" bench/throughput.py --model "$model" --device cuda --amp "$amp" --steps 20 || status=1
  done
done
exit $status

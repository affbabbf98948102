#!/usr/bin/env bash
# One short GPU check, about two minutes on an H100/H200:
#  1. a tiny MiniLM full fine-tune (seq 128) on CUDA with our bf16 loop and a plain fp32 loop, printing samples/s,
#     achieved TFLOP/s and MFU against the GPU's nominal dense bf16 peak (or the measured matmul roofline when the
#     GPU is not in the table below);
#  2. one short trial of each text strategy (head, lora, full) through stages.training's own classes on CUDA.
#
#   bash benchmarks/gpu_check.sh            # extra args go to benchmarks/throughput.py, e.g. --batch-size 128
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check: no CUDA device visible to torch ($("$PY" -c 'import torch; print("torch", torch.__version__, "cuda build", torch.version.cuda)' 2>/dev/null || echo "torch not importable")); nothing to check" >&2
  exit 2
fi

gpu=$("$PY" -c 'import torch; print(torch.cuda.get_device_name())')
# nominal dense bf16 tensor-core peaks (TFLOP/s, SXM parts); MFU is reported against these
case "$gpu" in
  *H200*|*H100*) peak=989 ;;
  *A100*) peak=312 ;;
  *L40S*) peak=362 ;;
  *) peak= ;;
esac
echo "gpu_check: $gpu (nominal bf16 peak: ${peak:-unknown, MFU against the measured matmul roofline} TFLOP/s)"
"$PY" benchmarks/throughput.py --device cuda --setups ours,plain --batch-size 256 --steps 10 --warmup 3 \
  --threads 4 ${peak:+--peak-tflops "$peak"} "$@"
echo
"$PY" benchmarks/strategies_check.py --device cuda --n-train 2048 --n-val 256 --threads 4

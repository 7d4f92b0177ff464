#!/bin/sh
# Issue 11 on a GPU machine, in one call (the device is lent for minutes): the rows of BENCHMARKS.md
# that need a GPU. Run from the repository root: sh benchmarks/gpu_check.sh [OUT]
# Prints everything; nothing is tuned to the card. Expect 5–8 minutes on an H100.
set -e
PY=${PY:-.venv/bin/python}
OUT=${1:-bench-out/gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
# seed preset: training and inference img/s at 256² (bars: ≥ 1,450 train, ≥ 5,000 infer on an H100)
$PY benchmarks/preset_speed.py --presets seed standard small --precisions fp32 bf16+channels_last \
    --batch 32 --steps 20 --device cuda
# the loop against the bare step (bar: ratio ≥ 0.90), with the GPU cache feeder
$PY benchmarks/train_throughput.py --preset seed --epochs 3 --device cuda --out "$OUT/throughput-seed"
$PY benchmarks/train_throughput.py --preset small --epochs 3 --device cuda --out "$OUT/throughput-small"
# torch.compile: does it pay here?
$PY benchmarks/train_throughput.py --preset seed --epochs 3 --device cuda --compile --out "$OUT/throughput-seed-compile" || true
# the CUDA paths of the feeders and DDP over NCCL on one GPU per process (needs 2 GPUs; skipped otherwise)
$PY -m pytest -q -p no:warnings tests/test_feeder.py tests/test_distributed.py tests/test_precision.py

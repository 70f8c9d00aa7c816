#!/usr/bin/env bash
# The GPU checks of the throughput work, as one script for a GPU machine (e.g. the device tool):
#   1. the step and the engine on CUDA, fp32 and AMP bf16, channels_last on (the default) and off;
#   2. a full 60,000-image Fashion-MNIST epoch of MobileNetV3-Small with the data resident on the GPU
#      (target: <= 3 s per epoch).
# Usage: bash benchmarks/gpu_check.sh [DATA_DIR] [OUT_DIR]
#   DATA_DIR: Fashion-MNIST IDX files (default: the usual places; --synthetic data when none is found)
#   OUT_DIR:  where the Markdown and JSON results go (default: gpu-check/)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR="${1:-}"
OUT="${2:-gpu-check}"
mkdir -p "$OUT"
python3 -m pip install -q -e '.[test]' 2>/dev/null || python3 -m pip install -q -e .
DATA=(--synthetic)
if [ -n "$DATA_DIR" ]; then DATA=(--data-dir "$DATA_DIR"); fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
for AMP in none bf16; do
  python3 benchmarks/bench_throughput.py --device cuda --amp "$AMP" --in-chans 1 --batch-size 256 \
    --steps 20 --repeats 5 --engine-repeats 1 --skip-engine --json "$OUT/step-$AMP.json" | tee "$OUT/step-$AMP.md"
  python3 benchmarks/bench_throughput.py --device cuda --amp "$AMP" --in-chans 1 --batch-size 256 \
    --skip-step --full-epoch --engine-repeats 1 "${DATA[@]}" --json "$OUT/epoch-$AMP.json" | tee "$OUT/epoch-$AMP.md"
done

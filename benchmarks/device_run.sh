#!/usr/bin/env bash
# The accelerator report (benchmarks/device_report.py) as one command.
#
# Here, once (writes the 40 MB float16 weights the device host reads; the
# file is git-ignored, so the device tool must carry it):
#   bash benchmarks/device_run.sh --prepare
# On the GPU host, from the repository root (no network, no cached weights):
#   COMMIT=<sha> bash benchmarks/device_run.sh [output directory]
# The output directory (default: $OUT, else benchmarks/results) gets
# device-<date>.json and the log; the JSON is rewritten after each section.
# Extra flags after the directory go to device_report.py.
set -euo pipefail
cd "$(dirname "$0")/.."
weights=weights/.vgg19_float16.npz
export PYTHONPATH=. PYTHONUNBUFFERED=1
if [[ "${1:-}" == --prepare ]]; then
  python3 benchmarks/encode_throughput.py --export_weights="$weights"
  exit
fi
out=${1:-${OUT:-benchmarks/results}}
shift || true
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
  > "$out/device-gpu.txt" 2>&1 || true
python3 benchmarks/device_report.py --weights="$weights" \
  --json="$out/device-$(date +%F).json" ${COMMIT:+--commit="$COMMIT"} "$@" \
  2>&1 | tee "$out/device-log.txt"

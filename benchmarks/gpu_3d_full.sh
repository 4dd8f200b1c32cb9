#!/usr/bin/env bash
# The 3d-full preset end to end on a GPU machine, with its JSON, wall time and memory brought back.
#
#   bash benchmarks/gpu_3d_full.sh [OUT]      # OUT defaults to gpu-3d-full
#
# Needs a Python with dualattn and a CUDA build of torch (pinned so that 2.13.0 satisfies it). Training and
# the models' forwards and backwards run on the GPU (accelerator "auto"); data generation (the synthetic volumes
# are rendered with NumPy and SciPy) and the metrics' bookkeeping (NumPy, scikit-learn, the interval bootstrap)
# stay on the CPU, which is why the machine's CPU count still matters. Writes OUT/demo/ (the demo folder),
# OUT/demo_3d_full.json (benchmarks/demo_summary.py) and OUT/machine.txt (GPU name, peak GPU memory, peak RSS).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu-3d-full}"
PYTHON="${PYTHON:-python}"
mkdir -p "$OUT"
"$PYTHON" - <<'PY' > "$OUT/machine.txt"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda)
print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
PY
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader -l 5 > "$OUT/gpu_memory.csv" &
  SMI=$!
  trap 'kill $SMI 2>/dev/null || true' EXIT
fi
/usr/bin/time -v "$PYTHON" -m dualattn demo --preset 3d-full --out "$OUT/demo" 2> "$OUT/time.txt"
"$PYTHON" benchmarks/demo_summary.py "$OUT/demo" --out "$OUT/demo_3d_full.json"
grep -E "Elapsed|Maximum resident" "$OUT/time.txt" >> "$OUT/machine.txt"
if [ -f "$OUT/gpu_memory.csv" ]; then
  awk -F', ' '{gsub(/ MiB/,"",$2); if ($2+0 > m) m = $2+0} END {print "peak GPU memory (MiB)", m}' \
    "$OUT/gpu_memory.csv" >> "$OUT/machine.txt"
fi
cat "$OUT/machine.txt"

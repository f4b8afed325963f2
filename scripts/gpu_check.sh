#!/usr/bin/env bash
# The GPU check of issue 7, for a lent GPU, in one call of about 6 minutes (at most ~8):
#   bash scripts/gpu_check.sh            # results in $OUT/ (the device machine's folder) or runs/gpu-check/
#
# It measures the card's bf16 and float32 peak with large matrix products, trains a ~10M and a ~50M
# parameter model for SECONDS_PER_MODEL (default 60) each with what vslm picks on CUDA (bf16
# autocast, SDPA flash kernels, torch.compile, pinned non-blocking copies) and records tokens/s, MFU
# against the measured and the nominal bf16 peak (989 TFLOP/s dense on an H200/H100 SXM), compile
# time and peak memory; then trains the GPU Shakespeare recipe (built-in config gpu-shakespeare)
# until validation loss 1.47, for at most SHAKESPEARE_SECONDS (default 150).
#
# Needs: a Python with a CUDA build of torch and vslm's dependencies (pydantic, tokenizers,
# safetensors, rich, tomli-w, numpy); vslm itself runs from src/, nothing is installed, nothing is
# downloaded. The 10M/50M models train on the embedded story generator. The Shakespeare part needs
# tiny Shakespeare: $VSLM_DATA_DIR/tinyshakespeare/input.txt, or .data/tinyshakespeare/input.txt in
# this checkout (copy ../shared/data/tinyshakespeare there and carry `.data` to the device), or
# ../shared/data; without it that part is skipped with a message, the rest still runs.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
RESULTS=${OUT:-runs/gpu-check}
mkdir -p "$RESULTS"
export VSLM_CACHE_DIR=${VSLM_CACHE_DIR:-${TMPDIR:-/tmp}/vslm-gpu-check-cache}  # token shards: not in $OUT

for d in "${VSLM_DATA_DIR:-}" "$PWD/.data" "$PWD/../shared/data" "$PWD/shared/data"; do
  if [ -n "$d" ] && [ -f "$d/tinyshakespeare/input.txt" ]; then export VSLM_DATA_DIR="$d"; break; fi
done
echo "data folder: ${VSLM_DATA_DIR:-none found (the Shakespeare part will be skipped)}"

"$PY" - <<'PYEOF' || exit 3
import importlib.util, sys
missing = [m for m in ("torch", "numpy", "pydantic", "tokenizers", "safetensors", "rich", "tomli_w")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_check: missing Python packages {missing}; install them (pip install -e .) and rerun")
import torch
if not torch.cuda.is_available():
    sys.exit(f"gpu_check: torch {torch.__version__} sees no CUDA device")
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
PYEOF

command -v nvidia-smi >/dev/null && nvidia-smi > "$RESULTS/nvidia-smi.txt" 2>&1
"$PY" -m vslm bench gpu --seconds "${SECONDS_PER_MODEL:-60}" \
  --shakespeare-seconds "${SHAKESPEARE_SECONDS:-150}" --json-out "$RESULTS/gpu_check.json" 2>&1 \
  | tee "$RESULTS/gpu_check.log"
status=${PIPESTATUS[0]}
echo "results: $RESULTS/gpu_check.json (exit $status)"
exit "$status"

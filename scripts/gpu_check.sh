#!/usr/bin/env bash
# The GPU check of issues 7 and 22, for a lent GPU, in two calls of at most ~8 minutes each:
#   PARTS=bench bash scripts/gpu_check.sh      # ~4 min: peak, 10M/50M MFU, Shakespeare to 1.47
#   PARTS=dynamics bash scripts/gpu_check.sh   # ~6 min: dynamics-induction at 492M tokens per model
# (PARTS unset: both, one after the other). Results in $OUT/ (the device machine's folder) or
# runs/gpu-check/.
#
# It measures the card's bf16 and float32 peak with large matrix products, trains a ~10M and a ~50M
# parameter model for SECONDS_PER_MODEL (default 30) each with what vslm picks on CUDA (bf16
# autocast, SDPA flash kernels, torch.compile, pinned non-blocking copies) and records tokens/s, MFU
# against the measured and the nominal bf16 peak (989 TFLOP/s dense on an H200/H100 SXM), compile
# time and peak memory; then trains the GPU Shakespeare recipe (built-in config gpu-shakespeare)
# until validation loss 1.47, for at most SHAKESPEARE_SECONDS (default 90). The dynamics part trains
# `dynamics-induction` (1- and 2-layer attention-only, one seed) with a 1024-token BPE on 200 MB of
# the embedded stories for DYNAMICS_STEPS (default 30000) steps of 64 x 256 tokens: 492M tokens per
# model, the run docs/EXPERIMENTS-LOG.md (2026-11-29) names; the H200 trained 82M tokens in ~30 s.
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
PARTS=${PARTS:-bench dynamics}
status=0
for part in $PARTS; do
  case "$part" in
    bench)
      "$PY" -m vslm bench gpu --seconds "${SECONDS_PER_MODEL:-30}" \
        --shakespeare-seconds "${SHAKESPEARE_SECONDS:-90}" --json-out "$RESULTS/gpu_check.json" 2>&1 \
        | tee "$RESULTS/gpu_check.log"
      s=${PIPESTATUS[0]}
      echo "results: $RESULTS/gpu_check.json (exit $s)" ;;
    dynamics)
      # no periodic checkpoints (checkpoint_every=0 keeps only the final one, small for these models) and no
      # TensorBoard: what comes back is the metrics, probes, report and that last checkpoint
      "$PY" -m vslm experiment dynamics-induction --seeds 1 --out "$RESULTS/dynamics-induction" \
        data.tokenizer=bpe data.vocab_size=1024 data.max_bytes=200000000 \
        train.steps="${DYNAMICS_STEPS:-30000}" train.batch_size=64 model.context=256 \
        train.checkpoint_every=0 logging.tensorboard=false 2>&1 | tee "$RESULTS/dynamics-induction.log"
      s=${PIPESTATUS[0]}
      echo "results: $RESULTS/dynamics-induction/results.md (exit $s)" ;;
    *) echo "gpu_check: unknown part '$part' (PARTS: bench, dynamics)"; s=2 ;;
  esac
  [ "$s" -ne 0 ] && status=$s
done
exit "$status"

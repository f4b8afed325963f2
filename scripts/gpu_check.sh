#!/usr/bin/env bash
# The GPU check of issues 7 and 22, for a lent GPU, in one call of at most TOTAL_SECONDS (580):
#   bash scripts/gpu_check.sh                  # both parts, one after the other
#   PARTS=bench bash scripts/gpu_check.sh      # peak, 10M/50M MFU, Shakespeare to 1.47 (BENCH_TIMEOUT s, else
#                                              # what is left of TOTAL_SECONDS)
#   PARTS=dynamics bash scripts/gpu_check.sh   # dynamics-induction at 491.5M tokens per model (DYNAMICS_TIMEOUT:
#                                              # what is left of TOTAL_SECONDS; DYNAMICS_SEEDS, DYNAMICS_JOBS)
#   PARTS="shakespeare models" RECIPES=adamw-2000 REPEAT=3 MODELS=50M-batch256 bash scripts/gpu_check.sh
#                                              # the two halves of bench, with other choices (vslm bench gpu --help);
#                                              # PROFILE=50M: where the 50M model's step goes, by kind of kernel;
#                                              # each model also gets its kernel ceiling (bench_gpu.kernel_ceiling)
# Each part is cut off at its timeout and keeps what it wrote by then. Results in $OUT/ (the device
# machine's folder: at most 7 files) or runs/gpu-check/.
#
# It measures the card's bf16 and float32 peak with large matrix products, trains a ~10M and a ~50M
# parameter model for SECONDS_PER_MODEL (default 20) each with what vslm picks on CUDA (bf16 autocast,
# SDPA flash kernels, torch.compile, pinned non-blocking copies), the 50M model also at batch 128 and
# with CUDA graphs, and records tokens/s, MFU against the measured and the nominal bf16 peak (989
# TFLOP/s dense on an H200/H100 SXM), compile time and peak memory; then trains the GPU Shakespeare
# recipe (built-in config gpu-shakespeare) and two shorter schedules of it until validation loss 1.47,
# each for at most SHAKESPEARE_SECONDS (default 40). The dynamics part trains `dynamics-induction` (1-
# and 2-layer attention-only, one seed) with a 1024-token BPE on 200 MB of the embedded stories for
# DYNAMICS_STEPS (default 7500) steps of DYNAMICS_BATCH (default 256) x 256 tokens: 491.5M tokens per
# model, the ~0.5B that docs/EXPERIMENTS-LOG.md (2026-11-29) and issue 22 name.
#
# Needs: a Python with a CUDA build of torch and vslm's dependencies (pydantic, tokenizers,
# safetensors, rich, tomli-w, numpy); vslm itself runs from src/. The lent machine's image lacks pydantic and
# tomli-w and reaches no registry: run `bash scripts/gpu_wheels.sh` here first and carry `.whl`; their wheels
# are installed into a temporary folder put on PYTHONPATH (nothing else is installed, nothing downloaded). The 10M/50M models train on the embedded story generator. The Shakespeare part needs
# tiny Shakespeare: $VSLM_DATA_DIR/tinyshakespeare/input.txt, or .data/tinyshakespeare/input.txt in
# this checkout (copy ../shared/data/tinyshakespeare there and carry `.data` to the device), or
# ../shared/data; without it that part is skipped with a message, the rest still runs.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
if compgen -G ".whl/*.whl" >/dev/null; then  # carried wheels (scripts/gpu_wheels.sh): packages the image lacks
  site=${TMPDIR:-/tmp}/vslm-gpu-site
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
    || { echo "gpu_check: installing the carried wheels (.whl) failed" >&2; exit 3; }
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
RESULTS=${OUT:-runs/gpu-check}
mkdir -p "$RESULTS"
export VSLM_CACHE_DIR=${VSLM_CACHE_DIR:-${TMPDIR:-/tmp}/vslm-gpu-check-cache}  # token shards: not in $OUT

for d in "${VSLM_DATA_DIR:-}" "$PWD/.data" "$PWD/../shared/data" "$PWD/shared/data"; do
  if [ -n "$d" ] && [ -f "$d/tinyshakespeare/input.txt" ]; then export VSLM_DATA_DIR="$d"; break; fi
done
echo "data folder: ${VSLM_DATA_DIR:-none found (the Shakespeare part will be skipped)}"

"$PY" - <<'PYEOF' || exit 3
import importlib, sys
missing = []
for m in ("torch", "numpy", "pydantic", "tokenizers", "safetensors", "rich", "tomli_w", "vslm.commands.bench_gpu"):
    try:  # imported, not only found: a wheel of the wrong Python, or a dependency too old, fails here, in seconds
        importlib.import_module(m)
    except Exception as e:
        missing.append(f"{m} ({type(e).__name__}: {str(e)[:120]})")
if missing:
    sys.exit(f"gpu_check: cannot import {missing}; here: pip install -e .; on the lent machine: carry the "
             "wheels of scripts/gpu_wheels.sh as .whl")
import torch
if not torch.cuda.is_available():
    sys.exit(f"gpu_check: torch {torch.__version__} sees no CUDA device")
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
PYEOF

command -v nvidia-smi >/dev/null && nvidia-smi > "$RESULTS/nvidia-smi.txt" 2>&1
PARTS=${PARTS:-bench dynamics}
TOTAL_SECONDS=${TOTAL_SECONDS:-580}  # the whole script: the device tool's one call may run 600 s
status=0
for part in $PARTS; do
  case "$part" in
    bench|models|shakespeare)
      # bench: the default models, then the default recipes; models or shakespeare: one of the two, MODELS and
      # RECIPES (comma-separated) choosing, REPEAT runs of each recipe. `timeout` keeps the part inside its share
      # of the call (BENCH_TIMEOUT, else what is left); its JSON is written after every model and recipe.
      name=$([ "$part" = bench ] && echo gpu_check || echo "gpu_$part")
      choice=()
      [ "$part" = models ] && choice=(--recipes none ${MODELS:+--models "$MODELS"} ${PROFILE:+--profile "$PROFILE"})
      [ "$part" = shakespeare ] && choice=(--models none ${RECIPES:+--recipes "$RECIPES"} --repeat "${REPEAT:-1}")
      budget=$((TOTAL_SECONDS - SECONDS - 10))  # what the call has left, or BENCH_TIMEOUT if less
      [ "$budget" -gt "${BENCH_TIMEOUT:-$budget}" ] && budget=$BENCH_TIMEOUT
      if [ "$budget" -lt 1 ]; then  # (timeout 0 would mean no limit at all)
        echo "gpu_check: no time left for $part (TOTAL_SECONDS $TOTAL_SECONDS), skipped"; status=1; continue
      fi
      [ "$budget" -lt 30 ] && [ -z "${BENCH_TIMEOUT:-}" ] && budget=30  # a floor, unless BENCH_TIMEOUT says less
      timeout --kill-after=15 "$budget" "$PY" -m vslm bench gpu --seconds "${SECONDS_PER_MODEL:-20}" "${choice[@]}" \
        --shakespeare-seconds "${SHAKESPEARE_SECONDS:-40}" --json-out "$RESULTS/$name.json" 2>&1 \
        | tee "$RESULTS/$name.log"
      s=${PIPESTATUS[0]}
      echo "results: $RESULTS/$name.json (exit $s)" ;;
    dynamics)
      # The corpus first (one build, then both runs train at once on the GPU: --jobs 2; these models are too
      # small to fill it). 256 x 256 tokens a step for 7500 steps: 491.5M tokens a model, the ~0.5B of issue 22,
      # in a quarter of the launches of 64 x 256. No periodic checkpoints (only the final one, small for these
      # models) and no TensorBoard. The run folders are deeper than the device tool brings back: they travel
      # as one archive, with results.md and results.json beside it.
      started=$SECONDS
      budget=$((TOTAL_SECONDS - SECONDS - 20))  # what the call has left, less packing, or DYNAMICS_TIMEOUT if less
      [ "$budget" -gt "${DYNAMICS_TIMEOUT:-$budget}" ] && budget=$DYNAMICS_TIMEOUT
      dyn="$RESULTS/dynamics-induction"
      {
        if [ "$budget" -lt 30 ]; then
          echo "gpu_check: $budget s left of TOTAL_SECONDS=$TOTAL_SECONDS: the dynamics part is skipped"; false
        else
          timeout --kill-after=15 "$budget" "$PY" -m vslm data prepare stories --tokenizer bpe --vocab-size 1024 \
            --max-bytes 200000000 --quiet &&
          left=$((budget - (SECONDS - started))) && [ "$left" -gt 10 ] &&
          timeout --kill-after=15 "$left" "$PY" -m vslm experiment dynamics-induction --seeds "${DYNAMICS_SEEDS:-1}" \
            --jobs "${DYNAMICS_JOBS:-2}" \
            --out "$dyn" data.tokenizer=bpe data.vocab_size=1024 data.max_bytes=200000000 \
            train.steps="${DYNAMICS_STEPS:-7500}" train.batch_size="${DYNAMICS_BATCH:-256}" model.context=256 \
            train.checkpoint_every=0 logging.tensorboard=false
        fi
      } 2>&1 | tee "$RESULTS/dynamics-induction.log"
      s=${PIPESTATUS[0]}
      # cut off: the worker processes outlive their parent; stop them before their folders are packed
      { [ "$s" -eq 124 ] || [ "$s" -eq 137 ]; } && pkill -TERM -f "multiprocessing.spawn" && sleep 3
      # on the device the archive leaves the checkpoints out: the tool brings back at most 16 MiB a file, and
      # six runs' checkpoints passed that on 2026-12-04 (the metrics and probes are what the results need)
      [ -d "$dyn" ] && tar -czf "$RESULTS/dynamics-induction.tar.gz" ${OUT:+--exclude=checkpoints} \
        -C "$RESULTS" dynamics-induction
      for f in results.md results.json; do [ -f "$dyn/$f" ] && cp "$dyn/$f" "$RESULTS/dynamics-$f"; done
      [ -n "${OUT:-}" ] && rm -rf "$dyn"  # the archive holds it; the device tool brings back at most 8 files
      echo "results: $RESULTS/dynamics-results.md, all of it in $RESULTS/dynamics-induction.tar.gz (exit $s)" ;;
    *) echo "gpu_check: unknown part '$part' (PARTS: bench, models, shakespeare, dynamics)"; s=2 ;;
  esac
  [ "$s" -ne 0 ] && status=$s
done
exit "$status"

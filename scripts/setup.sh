#!/usr/bin/env bash
# Creates the virtual environment VENV with Python PY and installs vslm into it (editable, with dev tools).
# PyTorch: a torch already importable by PY (a CUDA build, say) is kept: the venv sees it. Otherwise the
# CPU build torch==2.13.0 is installed (on the study group's machines its wheel lies on disk: no download).
# Every other package is installed at the version in constraints.txt, the versions the suite last passed
# on; VSLM_CONSTRAINTS=FILE takes another file, VSLM_CONSTRAINTS= none (the newest releases: `make constraints`).
set -euo pipefail
VENV=${1:-.venv}
PY=${2:-python3}
CONSTRAINTS=${VSLM_CONSTRAINTS-constraints.txt}
PIN=()
if [ -n "$CONSTRAINTS" ]; then
  PIN=(-c "$CONSTRAINTS")
fi

if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup: vslm needs Python 3.11 or newer; $PY is $("$PY" --version 2>&1)" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  if "$PY" -c 'import torch' 2>/dev/null; then
    echo "setup: keeping the torch $("$PY" -c 'import torch; print(torch.__version__)') that $PY already has"
    "$PY" -m venv --system-site-packages "$VENV"
  else
    "$PY" -m venv "$VENV"
  fi
fi
if "$VENV/bin/python" -c 'import torch' 2>/dev/null &&
   ! "$VENV/bin/python" -c 'import sys, torch; sys.exit(tuple(map(int, torch.__version__.split(".")[:2])) < (2, 9))'; then
  echo "setup: vslm needs torch 2.9 or newer (torch.optim.Muon); $VENV sees torch" \
       "$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')" >&2
  exit 1
fi
if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q ${PIN[@]+"${PIN[@]}"} "torch==2.13.0"
fi
"$VENV/bin/python" -m pip install -q ${PIN[@]+"${PIN[@]}"} -e ".[dev]"
echo "setup: ready ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"

#!/usr/bin/env bash
# The Python packages vslm needs that the lent GPU machine's image lacks (its package list: the device tool's
# KINDS.md; nothing can be downloaded there), as wheels in .whl/ of this checkout, at the versions
# constraints.txt pins, for the image's python3 (CPython 3.12, x86_64 Linux). Run here, where pip reaches the
# package registry; then carry `.whl` with the call: scripts/gpu_check.sh installs them into a temporary
# folder of its own (nothing else changes there). About 3 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES=(pydantic pydantic_core annotated-types typing-inspection typing_extensions tomli_w)
rm -rf .whl && mkdir -p .whl
for name in "${PACKAGES[@]}"; do
  pin=$(grep -iE "^${name//[-_]/[-_]}==" constraints.txt) || { echo "gpu_wheels: $name is not in constraints.txt" >&2; exit 1; }
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$pin"
done
ls .whl

#!/usr/bin/env bash
# Builds everything and runs every test: the CPU suite always, the GPU suite when a GPU is present
# (on a machine without one, each GPU test reports itself as skipped, with the reason).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
bik_build
cd "$BUILD_DIR"
echo "== CPU tests"
ctest -L cpu --output-on-failure -j "$JOBS"
echo "== GPU tests"
if bik_has_gpu; then
  ctest -L gpu --output-on-failure
else
  echo "no GPU on this machine: the GPU tests below report as skipped"
  ctest -L gpu --output-on-failure
fi
echo "== Python tests (tests/python: reference checks against Hugging Face transformers, PyTorch drop-in)"
if PY="$(bash "$BIK_ROOT/scripts/torch_python.sh")"; then
  BIK_BIN="$BUILD_DIR/bik" "$PY" -m pytest "$BIK_ROOT/tests/python" -q -rs
else
  echo "no torch venv (BIK_SKIP_TORCH=1?): the Python tests are skipped"
fi

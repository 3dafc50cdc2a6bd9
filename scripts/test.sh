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

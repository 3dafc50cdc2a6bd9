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
echo "== Python: the PyTorch extension (src/torch), then tests/python"
if PY="$(bash "$BIK_ROOT/scripts/torch_python.sh")"; then
  # The extension's own build folder; its CUDA kernels only with BIK_TORCH_CUDA=ON (the tests here use
  # CPU tensors, and the main build above already compiles the same CUDA sources).
  TORCH_BUILD="${BUILD_DIR}-torch"
  if [ ! -f "$TORCH_BUILD/CMakeCache.txt" ]; then
    gen=()
    command -v ninja >/dev/null && gen=(-G Ninja)
    cmake -S "$BIK_ROOT" -B "$TORCH_BUILD" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DBIK_TORCH=ON \
      -DBIK_CUDA="${BIK_TORCH_CUDA:-OFF}" -DPython3_EXECUTABLE="$PY"
  fi
  cmake --build "$TORCH_BUILD" -j "$JOBS" --target bik_torch
  BIK_TORCH_LIB="$TORCH_BUILD/src/torch/libbik_torch.so" BIK_BIN="$BUILD_DIR/bik" \
    "$PY" -m pytest "$BIK_ROOT/tests/python" -q -rs
  # The documented install works: pip builds the package into the venv, and it loads from outside the tree.
  echo "== pip install . (CPU kernels), then import from outside the repository"
  "$PY" -m pip install -q --disable-pip-version-check -C cmake.define.BIK_CUDA=OFF "$BIK_ROOT"
  (cd / && env -u BIK_TORCH_LIB "$PY" -c "
import torch, bik.torch as bt
a, b = torch.randn(33, 64), torch.randn(64, 48)
with bt.set_batch_invariant_mode():
    full, one = a @ b, a[5:6] @ b
assert torch.equal(full[5:6], one) and bt.counters()['mm'][0] >= 2, bt.counters()
print('installed bik.torch:', bt.library_path())
")
else
  echo "no torch venv (BIK_SKIP_TORCH=1?): the Python tests are skipped"
fi

#!/usr/bin/env bash
# The determinism demo. Until the inference engine lands, it shows the kernel level: every bik op gives
# bitwise-identical rows alone and inside batches of many sizes, while OpenBLAS's sgemm, run through the
# same harness, does not. Runs on the GPU when one is present, else on the CPU.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
bik_build
BIK="$BUILD_DIR/bik"
backend=cpu
if bik_has_gpu && "$BIK" info | grep -q "^cuda devices: [1-9]"; then backend=cuda; fi
"$BIK" info
echo
echo "== bik kernels: rows alone vs inside batches ($backend)"
"$BIK" check kernels --backend "$backend" --cases "${CASES:-30000}"
echo
echo "== negative control: OpenBLAS sgemm through the same harness (diffs expected)"
if "$BIK" check kernels --backend cpu --ops matmul --variant openblas --cases 3000; then
  echo "demo: the negative control found no diffs; the harness would prove nothing" >&2
  exit 1
fi
echo
echo "demo: bik rows are batch-invariant; OpenBLAS rows are not."

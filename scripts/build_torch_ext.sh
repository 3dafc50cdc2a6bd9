#!/usr/bin/env bash
# Builds the PyTorch extension (libbik_torch.so, docs/torch.md) against a chosen torch release, in a venv of
# its own, for another machine that runs that torch but cannot build the extension itself or fetch
# packages (bench/device_suite.sh takes the result as BIK_TORCH_PREBUILT). The CUDA registrations need the
# CUDA toolkit here (nvcc); the build stops if CMake turns them off.
#
# usage: scripts/build_torch_ext.sh TORCH_VERSION OUT_DIR [CUDA_ARCHS]
#   TORCH_VERSION  a torch release on PyPI whose CUDA matches the toolkit, e.g. 2.11.0
#   OUT_DIR        receives libbik_torch.so (the build tree is OUT_DIR/build)
#   CUDA_ARCHS     CMake CUDA architectures (default "90a-real;80-real")
set -euo pipefail
if [ $# -lt 2 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
version="$1"
out="$2"
archs="${3:-90a-real;80-real}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${BIK_CACHE:-$HOME/.cache/bik}/torch-$version"

command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ] ||
  { echo "build_torch_ext: no nvcc: the CUDA registrations need the CUDA toolkit" >&2; exit 1; }
if ! [ -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, numpy" >/dev/null 2>&1; then
  echo "build_torch_ext: installing torch==$version into $venv (several GB)"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q "torch==$version" numpy
fi
"$venv/bin/python" -c "import torch; print('build_torch_ext: torch', torch.__version__, 'CUDA', torch.version.cuda)"

mkdir -p "$out"
gen="Unix Makefiles"
command -v ninja >/dev/null 2>&1 && gen=Ninja
log=$(cmake -S "$root" -B "$out/build" -G "$gen" -DBIK_TORCH=ON -DCMAKE_BUILD_TYPE=Release \
  -DPython3_EXECUTABLE="$venv/bin/python" -DCMAKE_CUDA_ARCHITECTURES="$archs" 2>&1) ||
  { echo "$log" >&2; exit 1; }
grep -q "CUDA registrations: ON" <<<"$log" ||
  { echo "$log" | grep "bik:" >&2; echo "build_torch_ext: CUDA registrations are off" >&2; exit 1; }
cmake --build "$out/build" -j "$(nproc)" --target bik_torch
cp "$out/build/src/torch/libbik_torch.so" "$out/"
echo "build_torch_ext: $out/libbik_torch.so (torch $version, archs $archs)"

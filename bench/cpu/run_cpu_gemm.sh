#!/usr/bin/env bash
# Runs `bik bench cpu-gemm` twice on this host: with the default micro-kernels (AVX-512 where the CPU has
# it) and with the AVX2 ones, writing bench/results/cpu_gemm_<host>.{json,md} and ..._avx2.{json,md}.
# usage: bench/cpu/run_cpu_gemm.sh [path/to/bik] [extra bench options...]
set -euo pipefail
cd "$(dirname "$0")/../.."
BIK=${1:-build/bik}
shift || true
if [ ! -x "$BIK" ]; then
  echo "bik binary not found at $BIK (build first: cmake --build build)" >&2
  exit 2
fi
HOST=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | tr -cs 'A-Za-z0-9' '_' | sed 's/^_//;s/_$//' | tr 'A-Z' 'a-z')_$(nproc)c
"$BIK" bench cpu-gemm --host "$HOST" "$@"
"$BIK" bench cpu-gemm --kernels avx2 --json "bench/results/cpu_gemm_${HOST}_avx2.json" \
  --md "bench/results/cpu_gemm_${HOST}_avx2.md" "$@"

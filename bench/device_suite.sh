#!/usr/bin/env bash
# The GPU side of the project in one go, for a CUDA machine: every GPU test, the invariance harness on
# CUDA, the engine's needle check on CUDA (batch-invariant on, then off), and the benchmarks. Each step
# has its own time limit and log; the script goes on after a failed step and prints a summary at the end.
#
# usage: bench/device_suite.sh BIN_DIR OUT_DIR [steps...]
#   BIN_DIR holds bik and bik_tests_gpu (and lib/ with shared libraries the machine may lack)
#   steps: tests check engine ops gemm attention serve serve_graphs gemm_energy hf torch tp tp_serve (default:
#          the first seven, in that order; hf and torch need torch + transformers (+ pytest), tp and tp_serve
#          need 2+ GPUs)
#   attention: bik bench attention and torch SDPA (bench/torch_attention.py), burst and, for
#          BIK_ATTENTION_SUSTAIN seconds a case (default 3, 0: none), under sustained load (attention_GPU.*)
#   gemm_energy: the serving shapes (q|k|v, o-proj, down, the 8B lm-head; gate|up with its activation) at
#          M = 64, 128, 256, 384 under sustained load, time and energy per call against cuBLASLt
#          (gemm_sustain_GPU.json/.md, gemm_gated_sustain_GPU.json/.md; bik bench gemm --sustain)
#   serve: Qwen3-8B dummy weights, BIK_SERVE_REQUESTS requests (default 1000), batch-invariant on then off
#   torch: builds the PyTorch extension (docs/torch.md) from this tree with CMake into /tmp/bik-torch-build
#          (no pip: it would fetch scikit-build-core; BIK_CUDA_ARCHS overrides the archs, default that of
#          CMakeLists.txt) unless $BIK_TORCH_PREBUILT names one built against the same torch (e.g. by
#          scripts/build_torch_ext.sh on another machine); then
#          tests/python/test_torch_mode.py on CUDA tensors, bench/torch_mode_speed.py
#          (torch_mode_GPU.json/.md/.png, GPU the card, e.g. h100) and python -m bik.bisect under the mode
#          (hf_bisect_mode_on.json)
set -uo pipefail
bin="$(cd "$1" && pwd)"
out="$2"
shift 2
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(tests check engine ops gemm attention serve)
mkdir -p "$out"
export LD_LIBRARY_PATH="$bin/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
commit="${BIK_COMMIT:-$(git -C "$root" rev-parse --verify -q HEAD 2>/dev/null || echo unknown)}"
summary=()

step() {  # step NAME LIMIT_S command... (the command may be a function of this script)
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  echo "== $name (limit ${limit}s)"
  if declare -F "$1" > /dev/null; then
    # shellcheck disable=SC2016  # the inner shell expands its own arguments
    timeout "$limit" bash -c "$(declare -f "$1"); "'"$@"' _ "$@" > "$out/$name.log" 2>&1
  else
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
  fi
  local rc=$?
  summary+=("$(printf '%-18s rc=%-3s %4ss' "$name" "$rc" "$((SECONDS - t0))")")
  tail -n 25 "$out/$name.log"
  return $rc
}

# backtrace_at SECONDS command...: runs the command; if it still runs after SECONDS, prints the backtrace
# of every thread (cuda-gdb attached; a hang shows where each thread waits), then kills it.
backtrace_at() {
  local after=$1
  shift
  "$@" &
  local pid=$! i
  for ((i = 0; i < after; ++i)); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "== still running after ${after}s: backtraces"
    timeout 50 cuda-gdb -p "$pid" -batch -ex "info threads" -ex "thread apply all bt 30" 2>&1 | tail -c 40000
    kill -9 "$pid"
  fi
  wait "$pid"
}

nvidia-smi -L | tee "$out/gpu.txt"
# Result names end in the GPU's model (ops_h100, ops_h200, ...; "gpu" when nvidia-smi names none of these),
# so runs on different cards never share a file name. BIK_GPU_TAG overrides it.
gpu_tag="${BIK_GPU_TAG:-$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 |
  grep -oiE 'h100|h200|h20|b200|gh200|a100|a10g|l40s|l4|rtx ?[0-9]+' | head -n 1 | tr 'A-Z ' 'a-z_')}"
gpu_tag="${gpu_tag:-gpu}"
for s in "${steps[@]}"; do
  case "$s" in
    tests)
      BIK_GEMM_TRIALS=${BIK_GEMM_TRIALS:-4} step gpu_tests 480 "$bin/bik_tests_gpu" ;;
    check)
      step check_cuda 120 "$bin/bik" check kernels --backend cuda --cases 100000 --json "$out/check_cuda.json" ;;
    engine)
      step engine_cuda 120 bash "$root/bench/engine_needle.sh" "$bin/bik" "$root/bench/data/small_llama_config.json" cuda ;;
    ops)
      step bench_ops 150 "$bin/bik" bench ops --out "$out" --name "ops_${gpu_tag}" --commit "$commit" &&
        step torch_ops 120 python3 "$root/bench/torch_ops.py" "$out/ops_${gpu_tag}.json" ;;
    gemm)
      step bench_gemm 300 "$bin/bik" bench gemm --out "$out" --name "gemm_${gpu_tag}" --commit "$commit" ;;
    gemm_energy)
      step bench_gemm_energy 300 "$bin/bik" bench gemm --sustain 2 --shapes 0,1,3,8 --m 64,128,256,384 --out "$out" \
        --name "gemm_sustain_${gpu_tag}" --commit "$commit"
      step bench_gemm_gated_energy 120 "$bin/bik" bench gemm --gated --sustain 2 --shapes 2 --m 64,128,256,384 \
        --out "$out" --name "gemm_gated_sustain_${gpu_tag}" --commit "$commit"
      step plot_gemm_energy 60 bash -c "python3 '$root/bench/plot_gemm.py' '$out/gemm_sustain_${gpu_tag}.json';
        python3 '$root/bench/plot_gemm.py' '$out/gemm_gated_sustain_${gpu_tag}.json'" ;;
    attention)
      # Burst timings, and each case again back to back for BIK_ATTENTION_SUSTAIN seconds (default 3; 0: none) on
      # both sides, at the power limit (time, energy per call, power, SM clock; plot_attention.py's second table).
      sus="${BIK_ATTENTION_SUSTAIN:-3}"
      step bench_attention 450 "$bin/bik" bench attention --sustain "$sus" --out "$out" --name "attention_${gpu_tag}" \
        --commit "$commit" &&
        step torch_attention 400 python3 "$root/bench/torch_attention.py" "$out/attention_${gpu_tag}.json" --sustain "$sus" &&
        step plot_attention 60 python3 "$root/bench/plot_attention.py" "$out/attention_${gpu_tag}.json" ;;
    serve)
      step bench_serve 420 "$bin/bik" bench serve --dummy-weights "$root/bench/data/qwen3_8b_config.json" --device cuda \
        --requests "${BIK_SERVE_REQUESTS:-1000}" --kv-cache-mib 16384 --out "$out" --name "serve_${gpu_tag}" --commit "$commit" ;;
    serve_graphs)
      # The serve workload with decode steps as CUDA graphs (compare with serve_GPU of the same run).
      step bench_serve_graphs 420 "$bin/bik" bench serve --dummy-weights "$root/bench/data/qwen3_8b_config.json" \
        --device cuda --cuda-graphs on --requests "${BIK_SERVE_REQUESTS:-1000}" --kv-cache-mib 16384 --out "$out" \
        --name "serve_graphs_${gpu_tag}" --commit "$commit" ;;
    hf)
      # The engine on CUDA against transformers (tests skip what the machine lacks, e.g. the GGUF model),
      # then python -m bik.bisect on a seeded Qwen3 under stock torch on the GPU.
      step hf_reference 400 env BIK_BIN="$bin/bik" BIK_DEVICE=cuda python3 -m pytest -q -rs \
        "$root/tests/python/test_hf_reference.py"
      step hf_bisect_stock 200 env PYTHONPATH="$root/python" python3 -m bik.bisect --config-init qwen3 --config-size medium --device cuda \
        --batch 31 --json "$out/hf_bisect_stock.json" ;;
    torch)
      # Configure + build only the extension target; fails when CMake turned the CUDA registrations off
      # (no nvcc or a CPU-only torch), since the tests would then only skip.
      # BIK_TORCH_PREBUILT=PATH: a libbik_torch.so built elsewhere against the same torch (with CUDA
      # registrations), which saves the build here.
      tbuild=/tmp/bik-torch-build
      tlib="${BIK_TORCH_PREBUILT:-$tbuild/src/torch/libbik_torch.so}"
      tgen="Unix Makefiles"
      command -v ninja >/dev/null 2>&1 && tgen=Ninja
      # shellcheck disable=SC2016  # the inner script expands its own arguments
      if [ -n "${BIK_TORCH_PREBUILT:-}" ] || step torch_build 600 bash -c '
          log=$(cmake -S "$1" -B "$2" -G "$3" -DBIK_TORCH=ON -DCMAKE_BUILD_TYPE=Release \
                -DPython3_EXECUTABLE="$(command -v python3)" -DCMAKE_CUDA_ARCHITECTURES="$4" 2>&1)
          rc=$?; echo "$log"; [ $rc -eq 0 ] || exit $rc
          grep -q "CUDA registrations: ON" <<<"$log" || { echo "torch_build: no CUDA registrations"; exit 3; }
          cmake --build "$2" -j 16 --target bik_torch' _ "$root" "$tbuild" "$tgen" "${BIK_CUDA_ARCHS:-80-real;90a-real}"
      then
        step torch_tests 400 env BIK_TORCH_LIB="$tlib" BIK_TEST_DEVICE=cuda python3 -m pytest -q -rs \
          "$root/tests/python/test_torch_mode.py"
        step torch_speed 400 env BIK_TORCH_LIB="$tlib" python3 "$root/bench/torch_mode_speed.py" --device cuda --time-budget 300 \
          --commit "$commit" --out "$out" --name "torch_mode_${gpu_tag}"
        step hf_bisect_mode_on 200 env PYTHONPATH="$root/python" BIK_TORCH_LIB="$tlib" python3 -m bik.bisect \
          --config-init qwen3 --config-size medium --device cuda --batch 31 --mode on --json "$out/hf_bisect_mode_on.json"
      fi ;;
    tp)
      # Needs 2+ GPUs: the TP tests (NCCL ranks against TP = 1) and the engine's output for --tp 1, 2; a
      # step still running near its limit gets every thread's backtrace (cuda-gdb) in NAME.log first.
      step tp_tests 400 backtrace_at 340 "$bin/bik_tests_gpu" --gtest_filter='GpuTp*:EngineCudaTp2.*'
      step tp_generate 300 backtrace_at 240 bash "$root/tests/cli_generate_tp_invariance.sh" "$bin/bik" \
        "$root/tests/data/engine/tiny_llama_tp_config.json" cuda "1 2" ;;
    tp_serve)
      # The serve workload of the `serve` step over two GPUs (compare with serve_GPU of the same machine).
      step bench_serve_tp2 420 backtrace_at 400 "$bin/bik" bench serve --dummy-weights "$root/bench/data/qwen3_8b_config.json" \
        --device cuda --tp 2 --requests "${BIK_SERVE_REQUESTS:-1000}" --kv-cache-mib 16384 --out "$out" \
        --name "serve_tp2_${gpu_tag}" --commit "$commit" ;;
    *) echo "unknown step $s" >&2 ;;
  esac
done
echo "== summary (commit $commit)"
printf '%s\n' "${summary[@]}" | tee "$out/summary.txt"

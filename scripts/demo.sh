#!/usr/bin/env bash
# The determinism demo, on the embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF) and on the GPU
# when one is present, else the CPU:
#   1. kernel level: every bik op gives bitwise-identical rows alone and inside batches of many sizes,
#      while OpenBLAS's sgemm, run through the same harness, does not;
#   2. engine level: `bik serve` answers many identical requests, fired concurrently among background
#      requests, with ONE unique completion (bitwise-identical logprobs); then the same server with
#      --batch-invariant off (batch-variant GEMMs) and the same audit, which shows the divergence.
# Knobs (environment): REQUESTS (default 1000 on a GPU, 400 on the CPU), MAX_TOKENS (100 / 32),
# CONCURRENCY (256 / 64), CASES (kernel cases, 30000), PORT (8917); BIK_BIN=PATH runs that prebuilt bik
# instead of setting up and building this tree (logs then go to BUILD_DIR, created if missing).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if [ -n "${BIK_BIN:-}" ]; then
  [ -x "$BIK_BIN" ] || { echo "demo: BIK_BIN=$BIK_BIN is not an executable" >&2; exit 1; }
  BIK="$BIK_BIN"
  mkdir -p "$BUILD_DIR"
else
  bik_build
  BIK="$BUILD_DIR/bik"
fi

device=cpu
if bik_has_gpu && "$BIK" info | grep -q "^cuda devices: [1-9]"; then device=cuda; fi
if [ "$device" = cuda ]; then
  requests=${REQUESTS:-1000} max_tokens=${MAX_TOKENS:-100} concurrency=${CONCURRENCY:-256}
else
  requests=${REQUESTS:-400} max_tokens=${MAX_TOKENS:-32} concurrency=${CONCURRENCY:-64}
fi
port=${PORT:-8917}
model=$(bash "$BIK_ROOT/scripts/model_path.sh")

"$BIK" info
echo
echo "== 1. kernels: rows alone vs inside batches ($device)"
"$BIK" check kernels --backend "$device" --cases "${CASES:-30000}"
echo
echo "== negative control: OpenBLAS sgemm through the same harness (diffs expected)"
if "$BIK" check kernels --backend cpu --ops matmul --variant openblas --cases 3000 > "$BUILD_DIR/demo_openblas.log" 2>&1
then
  cat "$BUILD_DIR/demo_openblas.log"
  echo "demo: the negative control found no diffs; the harness would prove nothing" >&2
  exit 1
fi
grep -E "^(op|mm|addmm|bmm|total) " "$BUILD_DIR/demo_openblas.log" || true
tail -n 1 "$BUILD_DIR/demo_openblas.log"

server_pid=""
stop_server() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}
trap stop_server EXIT

# serve_and_audit on|off: prints the audit report; returns the audit's exit status.
serve_and_audit() {
  local bi=$1 log="$BUILD_DIR/demo_serve_$1.log"
  "$BIK" serve --model "$model" --device "$device" --batch-invariant "$bi" --port "$port" > "$log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 120); do
    if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=1)" \
         2>/dev/null; then break; fi
    if ! kill -0 "$server_pid" 2>/dev/null; then
      echo "demo: bik serve exited; its log ($log):" >&2
      cat "$log" >&2
      exit 1
    fi
    sleep 1
  done
  local rc=0
  "$BIK" audit --endpoint "http://127.0.0.1:$port" --requests "$requests" --concurrency "$concurrency" \
    --max-tokens "$max_tokens" --json "$BUILD_DIR/demo_audit_$bi.json" || rc=$?
  stop_server
  return $rc
}

echo
echo "== 2. engine: $requests identical requests against bik serve, batch-invariant ON ($device)"
if ! serve_and_audit on; then
  echo "demo: the batch-invariant server gave more than one completion per prompt" >&2
  exit 1
fi
echo
echo "== the same with --batch-invariant off (batch-variant GEMMs: divergence expected)"
off_rc=0
serve_and_audit off || off_rc=$?
if [ "$off_rc" -eq 2 ]; then
  echo "demo: the audit of the batch-variant server failed to run" >&2
  exit 1
fi
echo
if [ "$off_rc" -eq 1 ]; then
  echo "demo: batch-invariant on -> one completion per prompt; off -> divergent completions."
else
  echo "demo: batch-invariant on -> one completion per prompt; off -> no divergence seen at this load" \
       "(raise REQUESTS/MAX_TOKENS to load the server harder)."
fi

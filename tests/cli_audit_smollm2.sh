#!/usr/bin/env bash
# bik audit against bik serve on the embedded SmolLM2-135M (CPU): with batch invariance on the verdict is
# PASS (exit 0, one completion per prompt and mode); with --batch-invariant off (OpenBLAS, split-K by rows) the same
# audit must FAIL (exit 1), so the verdict is shown to be able to fail on this model and load.
# usage: cli_audit_smollm2.sh BIK MODEL_PATH_SCRIPT   (exit 77, a skip, when the model is not installed)
set -uo pipefail
bik="$1"
model=$(bash "$2" 2>/dev/null) || { echo "SmolLM2 GGUF not installed (scripts/setup.sh): skipped"; exit 77; }
tmp=$(mktemp -d)
port=$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

audit() {  # audit on|off: starts the server, runs the audit, prints its exit status last
  "$bik" serve --model "$model" --port "$port" --batch-invariant "$1" > "$tmp/serve_$1.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 120); do
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=1)" \
      2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || { cat "$tmp/serve_$1.log"; echo "bik serve exited"; return 3; }
    sleep 1
  done
  local rc=0
  "$bik" audit --endpoint "http://127.0.0.1:$port" --requests 160 --concurrency 48 --max-tokens 32 \
    --timeout 300 || rc=$?
  kill "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  pid=""
  return $rc
}

audit on
on=$?
audit off
off=$?
echo "audit exit status: batch-invariant on $on, off $off"
[ "$on" -eq 0 ] || { echo "FAIL: the batch-invariant server did not pass"; exit 1; }
[ "$off" -eq 1 ] || { echo "FAIL: the audit did not catch the batch-variant server (exit $off)"; exit 1; }
echo "PASS: on -> PASS verdict, off -> FAIL verdict"

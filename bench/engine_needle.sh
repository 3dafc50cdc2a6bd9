#!/usr/bin/env bash
# Engine needle check on any device: one prompt generated alone, then hidden twice among 40 other prompts
# (smaller chunks, so the step batches differ). With --batch-invariant on its token ids and logprobs
# must be identical (exit 1 otherwise); with off the script reports whether they diverged.
# usage: bench/engine_needle.sh BIK CONFIG_JSON [cpu|cuda]
set -euo pipefail
bik="$1"
config="$2"
device="${3:-cpu}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$tmp/batch.txt" <<'PY'
import sys
lines = [f"background prompt {i}: " + "lorem ipsum dolor " * (1 + (i * 7) % 13) for i in range(40)]
lines[3] = lines[27] = "the needle prompt: what comes next?"
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
PY
common=(--dummy-weights "$config" --device "$device" --max-tokens 48 --temperature 0.8 --seed 11 --ignore-eos --json)
for bi in on off; do
  "$bik" generate "${common[@]}" --batch-invariant "$bi" --prompt "the needle prompt: what comes next?" \
    --chunk-size 512 > "$tmp/alone_$bi.json"
  "$bik" generate "${common[@]}" --batch-invariant "$bi" --prompts-file "$tmp/batch.txt" --chunk-size 96 \
    > "$tmp/batch_$bi.json"
done
python3 - "$tmp" "$device" <<'PY'
import json, sys
tmp, device = sys.argv[1], sys.argv[2]
status = 0
for bi in ("on", "off"):
    alone = json.load(open(f"{tmp}/alone_{bi}.json"))["requests"][0]
    batch = json.load(open(f"{tmp}/batch_{bi}.json"))["requests"]
    for i in (3, 27):
        r = batch[i]
        same_ids = r["ids"] == alone["ids"]
        same_lp = r["logprobs"] == alone["logprobs"]
        first = next((k for k, (a, b) in enumerate(zip(r["logprobs"], alone["logprobs"])) if a != b), None)
        print(f"{device} batch-invariant {bi}: needle at row {i}: ids {'identical' if same_ids else 'DIFFER'}, "
              f"logprobs {'bitwise identical' if same_lp else f'differ from token {first}'}")
        if bi == "on" and not (same_ids and same_lp):
            status = 1
sys.exit(status)
PY

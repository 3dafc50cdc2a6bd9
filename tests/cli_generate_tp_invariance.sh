#!/bin/sh
# bik generate --tp K: with the K-chunk tree (the default of --tp), TP = 1, 2, 4 and 8 print the same ids
# and logprobs for a batch of prompts (chunked prefill, sampled tokens).
# usage: cli_generate_tp_invariance.sh BIK CONFIG_JSON
set -eu
bik="$1"
config="$2"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '%s\n' "first prompt" "the needle prompt" "another, longer prompt that spans several blocks" "x" > "$tmp/p.txt"
set -- --dummy-weights "$config" --prompts-file "$tmp/p.txt" --max-tokens 12 --temperature 1 --seed 3 \
  --ignore-eos --chunk-size 7 --json
for k in 1 2 4 8; do
  "$bik" generate "$@" --tp "$k" > "$tmp/tp$k.json"
done
python3 - "$tmp" <<'PY'
import json, sys
runs = {k: json.load(open(f"{sys.argv[1]}/tp{k}.json"))["requests"] for k in (1, 2, 4, 8)}
key = lambda reqs: [(r["ids"], r["logprobs"]) for r in reqs]
for k in (2, 4, 8):
    if key(runs[k]) != key(runs[1]):
        sys.exit(f"--tp {k} differs from --tp 1")
print("--tp 1, 2, 4, 8: identical ids and logprobs")
PY

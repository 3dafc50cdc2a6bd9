#!/bin/sh
# bik generate --tp K: with the K-chunk tree (the default of --tp), TP = 1, 2, 4 and 8 print the same ids
# and logprobs for a batch of prompts (chunked prefill, sampled tokens).
# usage: cli_generate_tp_invariance.sh BIK CONFIG_JSON [DEVICE [SIZES]]
#   DEVICE: cpu (default; ranks are threads) or cuda (one GPU per rank); SIZES: default "1 2 4 8"
set -eu
bik="$1"
config="$2"
device="${3:-cpu}"
sizes="${4:-1 2 4 8}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '%s\n' "first prompt" "the needle prompt" "another, longer prompt that spans several blocks" "x" > "$tmp/p.txt"
set -- --dummy-weights "$config" --prompts-file "$tmp/p.txt" --max-tokens 12 --temperature 1 --seed 3 \
  --ignore-eos --chunk-size 7 --json --device "$device"
for k in $sizes; do
  "$bik" generate "$@" --tp "$k" > "$tmp/tp$k.json"
done
python3 - "$tmp" $sizes <<'PY'
import json, sys
sizes = [int(k) for k in sys.argv[2:]]
runs = {k: json.load(open(f"{sys.argv[1]}/tp{k}.json"))["requests"] for k in sizes}
key = lambda reqs: [(r["ids"], r["logprobs"]) for r in reqs]
for k in sizes[1:]:
    if key(runs[k]) != key(runs[sizes[0]]):
        sys.exit(f"--tp {k} differs from --tp {sizes[0]}")
print(f"--tp {', '.join(map(str, sizes))}: identical ids and logprobs")
PY

#!/bin/sh
# bik generate end to end: a prompt's ids and logprobs are identical alone (one big chunk, roomy cache)
# and inside a batch of other prompts (chunks of 5 tokens, a cache small enough to force preemption).
# usage: cli_generate_invariance.sh BIK CONFIG_JSON
set -eu
bik="$1"
config="$2"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '%s\n' "first other prompt" "the needle prompt" \
  "another, longer prompt that spans several blocks of the cache" "x" "the needle prompt" > "$tmp/batch.txt"
set -- --dummy-weights "$config" --max-tokens 16 --temperature 1 --seed 7 --ignore-eos --json
"$bik" generate "$@" --prompt "the needle prompt" --chunk-size 512 > "$tmp/alone.json"
"$bik" generate "$@" --prompts-file "$tmp/batch.txt" --chunk-size 5 --block-size 4 --num-blocks 24 > "$tmp/batch.json"
python3 - "$tmp/alone.json" "$tmp/batch.json" <<'PY'
import json, sys
alone = json.load(open(sys.argv[1]))["requests"][0]
batch = json.load(open(sys.argv[2]))
preempted = batch["stats"]["preemptions"]
for i in (1, 4):
    r = batch["requests"][i]
    if (r["ids"], r["logprobs"]) != (alone["ids"], alone["logprobs"]):
        sys.exit(f"request {i} differs from the same prompt alone:\n{r['ids']}\n{alone['ids']}")
print(f"needle identical alone and in the batch ({preempted} preemptions)")
PY

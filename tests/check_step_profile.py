#!/usr/bin/env python3
"""Checks the step profile of a `bik bench serve` JSON: per mode, the buckets (scheduled tokens a step)
are disjoint and ascending, their steps and tokens add up to the run's steps and scheduled tokens, and
their seconds to at most the run's wall time. Prints "step profile ok" or exits 1 naming what is wrong."""
import json
import sys


def main(path, md_path):
    j = json.load(open(path))
    for r in j["results"]:
        mode = "on" if r["batch_invariant"] else "off"
        prof = r["step_profile"]
        if not prof:
            sys.exit(f"{mode}: no step profile")
        prev_hi = 0
        for b in prof:
            lo, hi = b["tokens"]
            if not (prev_hi < lo <= hi) or b["steps"] <= 0 or b["seconds"] < 0:
                sys.exit(f"{mode}: bad bucket {b} after tokens <= {prev_hi}")
            if not (lo * b["steps"] <= b["scheduled_tokens"]):
                sys.exit(f"{mode}: bucket {b} holds fewer tokens than its steps need")
            prev_hi = hi
        steps = sum(b["steps"] for b in prof)
        tokens = sum(b["scheduled_tokens"] for b in prof)
        seconds = sum(b["seconds"] for b in prof)
        if steps != r["steps"] or tokens != r["scheduled_tokens"]:
            sys.exit(f"{mode}: profile has {steps} steps / {tokens} tokens, the run {r['steps']} / "
                     f"{r['scheduled_tokens']}")
        if not (0 < seconds <= r["wall_s"] * 1.0001):
            sys.exit(f"{mode}: profile seconds {seconds} against wall {r['wall_s']}")
    if "Steps by scheduled tokens" not in open(md_path).read():
        sys.exit("the markdown has no step table")
    print("step profile ok")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

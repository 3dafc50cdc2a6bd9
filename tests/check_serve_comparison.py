#!/usr/bin/env python3
"""Checks the on / off comparison of a `bik bench serve` JSON and its table against the runs it summarises:
the medians of output tok/s per mode and their ratio, and on / off - 1 (percent) for each two consecutive
runs of different modes (runs 2i and 2i + 1), with their mean and standard deviation; the markdown states
them. Usage: check_serve_comparison.py JSON MD PAIRS (the pairs the modes make). Prints "comparison ok" or
exits 1 naming what is wrong."""
import json
import statistics
import sys


def close(a, b, tol=1e-9):
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def main(path, md_path, want_pairs):
    j = json.load(open(path))
    rs = j["results"]
    on = [r["output_tok_s"] for r in rs if r["batch_invariant"]]
    off = [r["output_tok_s"] for r in rs if not r["batch_invariant"]]
    c = j.get("comparison")
    if not on or not off:
        if c is not None:
            sys.exit("a comparison where one mode never ran")
        print("comparison ok (one mode)")
        return
    if c is None:
        sys.exit("no comparison although both modes ran")
    if not close(c["on_median_output_tok_s"], statistics.median(on)) or \
       not close(c["off_median_output_tok_s"], statistics.median(off)):
        sys.exit(f"medians {c['on_median_output_tok_s']} / {c['off_median_output_tok_s']} against "
                 f"{statistics.median(on)} / {statistics.median(off)}")
    if not close(c["median_ratio"], statistics.median(on) / statistics.median(off)):
        sys.exit(f"median ratio {c['median_ratio']}")
    pairs = []
    for i in range(0, len(rs) - 1, 2):
        a, b = rs[i], rs[i + 1]
        if a["batch_invariant"] == b["batch_invariant"]:
            continue
        o, f = (a, b) if a["batch_invariant"] else (b, a)
        pairs.append(100 * (o["output_tok_s"] / f["output_tok_s"] - 1))
    if len(pairs) != want_pairs or len(c["pairs_pct"]) != want_pairs:
        sys.exit(f"{len(c['pairs_pct'])} pairs in the comparison, {len(pairs)} in the runs, {want_pairs} expected")
    if not all(close(x, y) for x, y in zip(c["pairs_pct"], pairs)):
        sys.exit(f"pairs {c['pairs_pct']} against {pairs}")
    if pairs and not close(c["pair_mean_pct"], statistics.mean(pairs)):
        sys.exit(f"pair mean {c['pair_mean_pct']} against {statistics.mean(pairs)}")
    if len(pairs) > 1 and not close(c["pair_sd_pct"], statistics.stdev(pairs)):
        sys.exit(f"pair standard deviation {c['pair_sd_pct']} against {statistics.stdev(pairs)}")
    if len(pairs) < 2 and "pair_sd_pct" in c:
        sys.exit("a standard deviation of fewer than two pairs")
    md = open(md_path).read()
    line = (f"On against off: median output tok/s {statistics.median(on):.0f} against {statistics.median(off):.0f} "
            f"(x{statistics.median(on) / statistics.median(off):.4f})")
    if line not in md:
        sys.exit(f"the table does not say: {line}")
    said = f"in {len(pairs)} pairs of consecutive on / off runs on - off {statistics.mean(pairs):+.2f}%"
    if pairs and said not in md:
        sys.exit(f"the table does not say: {said}")
    print("comparison ok")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))

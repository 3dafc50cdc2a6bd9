#!/usr/bin/env python3
"""Sums the kernel times of an `ncu --csv --metrics gpu__time_duration.sum` log by kernel and launch shape.

usage: python3 bench/ncu_summary.py LOG[.xz] [LOG ...]
Prints, per log, the total GPU time and the kernels (name, grid, block) that took most of it, with their
launch count and mean time. Kernel names lose their template arguments, except that the GEMM tile
(BM, BN, stages) is kept.
"""
import collections
import csv
import lzma
import re
import sys


def rows_of(path):
    opener = lzma.open if path.endswith(".xz") else open
    with opener(path, "rt", errors="replace") as f:
        return [line for line in f if line.startswith('"')]


def main(paths):
    for path in paths:
        total, count = collections.Counter(), collections.Counter()
        unit = "?"
        for r in csv.DictReader(rows_of(path)):
            if r["Metric Name"] != "gpu__time_duration.sum":
                continue
            unit = r["Metric Unit"]
            name = r["Kernel Name"]
            tile = re.search(r"Config<(\d+), (\d+), (\d+)(?:, \d+)?>", name)
            for drop in ("void ", "(anonymous namespace)::", "<unnamed>::", "bik::cuda::", "bik::"):
                name = name.replace(drop, "")
            short = re.sub(r"<.*", "", name)
            if tile:
                short += " %sx%s/%s" % tile.groups()
                if re.search(r"Config<[^>]*>, [^,]+, 1>", r["Kernel Name"]):
                    short += " cluster"
            key = (short[:60], r["Grid Size"], r["Block Size"])
            total[key] += float(r["Metric Value"].replace(",", ""))
            count[key] += 1
        scale = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3}.get(unit, 1.0)
        all_us = sum(total.values()) * scale
        print(f"{path}: {sum(count.values())} kernels, {all_us:.0f} us")
        print(f"{'us total':>10} {'share':>6} {'launches':>8} {'us mean':>9}  kernel, grid, block")
        for key, t in total.most_common(25):
            print(f"{t * scale:10.0f} {100 * t * scale / all_us:5.1f}% {count[key]:8d} {t * scale / count[key]:9.1f}  "
                  f"{key[0]} {key[1]} {key[2]}")
        print()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])

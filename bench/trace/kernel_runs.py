"""Per-kernel in-place times from a kernel trace of bench/trace/ktrace.cpp, for benchmarks that launch one
kernel in a loop (bik bench ops): consecutive launches of the same kernel and grid form a run, and each run
of at least 10 launches prints its median duration, the median idle gap before the next launch, and the
median launch-to-launch period. The gap is what the loop spends outside the kernel (host work, a
synchronising call).

usage: python3 bench/trace/kernel_runs.py TRACE.txt
"""
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import trace_file  # noqa: E402


def runs(rows, names, max_gap_ns=200000):
    out = []
    for s, e, i, gx, gy in rows:
        key = (names.get(i, str(i)), gx, gy)
        if out and out[-1][0] == key and s - out[-1][1][-1][1] < max_gap_ns:
            out[-1][1].append((s, e))
        else:
            out.append((key, [(s, e)]))
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    rows, names = trace_file.read(sys.argv[1])
    for (name, gx, gy), lst in runs(rows, names):
        if len(lst) < 10:
            continue
        dur = [(e - s) / 1000 for s, e in lst]
        gap = [(lst[j + 1][0] - lst[j][1]) / 1000 for j in range(len(lst) - 1)]
        period = [(lst[j + 1][0] - lst[j][0]) / 1000 for j in range(len(lst) - 1)]
        print(f"{name[:100]}  grid {gx}x{gy}  launches {len(lst)}  kernel median {statistics.median(dur):.2f} us"
              f"  gap {statistics.median(gap):.2f}  period {statistics.median(period):.2f}")


if __name__ == "__main__":
    main()

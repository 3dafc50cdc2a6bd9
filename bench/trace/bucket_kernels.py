# Each role's kernels in the steps of one bucket of tokens a step, for every serving run of a kernel trace of
# `bik bench serve` (bench/trace/ktrace.cpp): the median gap from the end of the kernel before to the
# kernel's start (negative: launched programmatically, before the kernel ahead had ended), the median
# duration, and the median time added to the wall time (gap + duration: what serve_runs.py charges, a
# step's host gap aside). A kernel launched programmatically starts at its predecessor's exit and waits on
# the device, so its duration holds what a plain launch spends before its start; compare the sums.
# Usage: bucket_kernels.py TRACE STEPS [BUCKET]   (STEPS: the workload's steps a run; BUCKET default 256)
import collections, os, statistics, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import trace_file  # noqa: E402
from roles import run_bounds, walk  # noqa: E402


def main():
    if len(sys.argv) < 3:
        sys.exit('usage: bucket_kernels.py TRACE STEPS [BUCKET]')
    rows, names = trace_file.read(sys.argv[1])
    nsteps, want = int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else '256'
    for r, (lo, hi) in enumerate(run_bounds(rows, names, nsteps)):
        per = collections.defaultdict(list)
        for i, role, cur, _, added in walk(rows, names, lo, hi):
            if cur != want or i == 0:
                continue
            s, e = rows[i][0], rows[i][1]
            if 'splitKreduce' in names[rows[i][2]]:
                role += ' (split-K sum)'  # cuBLAS's second kernel, apart from its GEMM
            per[role].append(((s - rows[i - 1][1]) / 1e3, (e - s) / 1e3, added / 1e3))
        print(f'run {r}: steps of {want} tokens (us; medians)')
        print(f'   {"role":28s} {"launches":>8s} {"gap":>8s} {"duration":>9s} {"added":>8s}')
        for role, v in sorted(per.items(), key=lambda kv: -sum(x[2] for x in kv[1])):
            med = [statistics.median(x[j] for x in v) for j in range(3)]
            print(f'   {role[:28]:28s} {len(v):8d} {med[0]:8.2f} {med[1]:9.2f} {med[2]:8.2f}')


if __name__ == '__main__':
    main()

# Where a serving run's steps of one size spend their time, role by role: for each run of a kernel trace of
# `bik bench serve` (bench/trace/ktrace.cpp; runs cut by their step count as in serve_runs.py) and the steps
# whose tokens fall in one bucket of roles.py ("256", "193-255", ...), each role's launches a step, its mean
# kernel time (busy), its mean time from the end of the kernel before it to its own end (wall, what it adds
# to the run's span), and the difference a step (gap: idle time before its launches where positive; overlap
# with the kernel before, a programmatic launch, where negative). bucket_kernels.py gives the same roles'
# medians a launch; this one the means and the step's totals, which add up to the steps' wall time.
# Usage: step_walls.py TRACE STEPS BUCKET
import argparse, collections
import trace_file
from roles import run_bounds, walk


def bucket_walls(rows, names, lo, hi, want):
    """(steps in bucket `want`, {role: [launches, busy ns, wall ns]}) for kernels lo..hi-1."""
    acc = collections.defaultdict(lambda: [0, 0, 0])
    steps = 0
    for i, role, cur, first, d in walk(rows, names, lo, hi):
        if cur != want:
            continue
        steps += first
        a = acc[role]
        a[0] += 1
        a[1] += rows[i][1] - rows[i][0]
        a[2] += d
    return steps, acc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('trace')
    ap.add_argument('steps', type=int)
    ap.add_argument('bucket')
    args = ap.parse_args()
    rows, names = trace_file.read(args.trace)
    for r, (lo, hi) in enumerate(run_bounds(rows, names, args.steps)):
        nst, acc = bucket_walls(rows, names, lo, hi, args.bucket)
        if nst == 0:
            print(f"run {r}: no steps of {args.bucket}")
            continue
        tb = sum(a[1] for a in acc.values())
        tw = sum(a[2] for a in acc.values())
        print(f"run {r}: {nst} steps of {args.bucket}: wall {tw / 1e6 / nst:.3f} ms/step busy {tb / 1e6 / nst:.3f} "
              f"(gaps+overlap {(tw - tb) / 1e6 / nst:.3f})")
        for role in sorted(acc, key=lambda k: -acc[k][2]):
            c, b, w = acc[role]
            print(f"   {role:22s} n/step {c / nst:6.1f} busy {b / 1e3 / c:8.2f} us wall {w / 1e3 / c:8.2f} us  "
                  f"gap/step {(w - b) / 1e3 / nst:8.1f} us")


if __name__ == '__main__':
    main()

# Kernel time by role for each serving run in a kernel trace of `bik bench serve` (bench/trace/ktrace.cpp),
# and the difference between two runs by role and by tokens a step. Runs are cut by their step count (the
# workload's steps, from the serve table; every run of one workload takes the same steps), so a warm-up run
# and the timed run after it, which no idle gap separates, come apart. Each kernel is charged the time from
# the end of the kernel before it to its own end ("excl" in kernel_roles.py), so roles sum to the run's span
# and a step's host-side gap falls to the embedding that opens it. The fused activation of the gated GEMM
# and a separate silu_and_mul are both counted as gate|up, and cuBLAS's split-K reduce as its GEMM; a GEMM
# no role fits stays 'gemm lm-head/other'.
# Usage: serve_runs.py TRACE STEPS [--diff A B] [--layers N] [--kernels]
#   --diff A B: run A - run B by role and tokens a step (runs numbered from 0), and each GEMM's and
#               attention's time a layer (a step's time over --layers, 36 unless given: Qwen3-8B);
#   --kernels:  with --diff, each GEMM role's kernels (name, launches, median duration) by tokens a step.
import argparse, collections, re
import trace_file
from roles import run_bounds, walk


def run_times(rows, names, lo, hi):
    """Per-role and per-(role, bucket) time in ns of kernels lo..hi-1, the steps per bucket."""
    t, tb, steps = collections.Counter(), collections.Counter(), collections.Counter()
    for _, role, cur, first, d in walk(rows, names, lo, hi):
        if first:
            steps[cur] += 1
        role = {'silu_and_mul': 'gemm gate|up'}.get(role, role)
        t[role] += d
        tb[(role, cur)] += d
        tb[('all', cur)] += d
    return t, tb, steps


def kernels_of(rows, names, lo, hi):
    """(role, bucket, kernel name) -> durations in us of the GEMM kernels of kernels lo..hi-1."""
    out = collections.defaultdict(list)
    for i, role, cur, _, _ in walk(rows, names, lo, hi):
        if role.startswith('gemm'):
            s, e, k = rows[i][0], rows[i][1], rows[i][2]
            out[(role, cur, re.sub(r'bik::cuda::gemm_detail::sm90::', '', names[k]))].append((e - s) / 1e3)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('trace')
    ap.add_argument('steps', type=int)
    ap.add_argument('--diff', nargs=2, type=int)
    ap.add_argument('--layers', type=int, default=36)
    ap.add_argument('--kernels', action='store_true')
    args = ap.parse_args()
    rows, names = trace_file.read(args.trace)
    nsteps = args.steps
    runs = []
    for lo, hi in run_bounds(rows, names, nsteps):
        runs.append(run_times(rows, names, lo, hi) + ((rows[hi - 1][1] - rows[lo][0]) / 1e6, lo, hi))
    for r, (t, _, _, span, _, _) in enumerate(runs):
        print(f"run {r}: span {span:.1f} ms")
        for role, v in sorted(t.items(), key=lambda kv: -kv[1]):
            print(f"   {v / 1e6:9.1f} ms  {role}")
    if not args.diff:
        return
    a, b = args.diff
    layers = args.layers
    (_, tba, sta, spa, _, _), (_, tbb, stb, spb, _, _) = runs[a], runs[b]
    bks = sorted({k for k in sta}, key=lambda x: int(x.split('-')[0]))
    roles = sorted({r for r, _ in tba} | {r for r, _ in tbb}, key=lambda r: -(sum(tba[(r, k)] for k in bks)))
    print(f"\nrun {a} - run {b}: {spa - spb:.1f} ms; ms by tokens a step (steps: " +
          ", ".join(f"{k} {sta[k]}" for k in bks) + ")")
    print(f"   {'':22s}" + "".join(f"{k:>10s}" for k in bks) + f"{'total':>10s}")
    for r in roles:
        d = [(tba[(r, k)] - tbb[(r, k)]) / 1e6 for k in bks]
        print(f"   {r[:22]:22s}" + "".join(f"{x:10.2f}" for x in d) + f"{sum(d):10.2f}")
    print(f"\nus a layer (a step's time / {layers} layers), run {a} / run {b}:")
    for r in roles:
        if not r.startswith('gemm') and r != 'attention':
            continue
        print(f"   {r[:22]:22s}" + "".join(f" {tba[(r, k)] / 1e3 / sta[k] / layers:5.1f}/{tbb[(r, k)] / 1e3 / stb[k] / layers:<5.1f}"
                                        for k in bks))

    if not args.kernels:
        return
    for r in (a, b):
        print(f"\nrun {r}: GEMM kernels by role and tokens a step (launches, median us)")
        ks = kernels_of(rows, names, runs[r][4], runs[r][5])
        for key in sorted(ks, key=lambda x: (x[0], int(x[1].split('-')[0]), x[2])):
            v = sorted(ks[key])
            print(f"   {key[0]:18s} {key[1]:9s} n={len(v):6d} {v[len(v) // 2]:8.1f}  {key[2][:150]}")


if __name__ == '__main__':
    main()
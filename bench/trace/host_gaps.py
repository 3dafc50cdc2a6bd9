# Where a serving run's host time goes: with a kernel trace (KTRACE_OUT) and its host-call records
# (KTRACE_API_OUT, bench/trace/ktrace.cpp) of one `bik bench serve` process, for each run (cut by its step
# count, as serve_runs.py does) the CUDA calls before its first kernel (back to the run before it: engine
# teardown and set-up, the first step's preparation) and during its first steps, by name: count, total and
# longest duration; then each run's calls over the whole run by total duration.
# Usage: host_gaps.py TRACE API STEPS [--first N] [--top K]
import argparse, bisect, collections
import trace_file
from roles import run_bounds, step_starts


def read_api(path):
    out = []
    for line in open(path):
        f = line.rstrip('\n').split(' ', 3)
        if len(f) == 4: out.append((int(f[0]), int(f[1]), f[2], f[3]))
    out.sort()
    return out


def table(title, recs, top):
    by = collections.defaultdict(list)
    for s, e, k, n in recs: by[(k, n)].append(e - s)
    print(title)
    for (k, n), d in sorted(by.items(), key=lambda kv: -sum(kv[1]))[:top]:
        print(f"   {k} {n[:48]:48} n={len(d):7} total {sum(d) / 1e6:9.2f} ms  max {max(d) / 1e3:9.1f} us")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('trace')
    ap.add_argument('api')
    ap.add_argument('steps', type=int)
    ap.add_argument('--first', type=int, default=4, help='steps counted as the run\'s first (default 4)')
    ap.add_argument('--top', type=int, default=12)
    args = ap.parse_args()
    rows, names = trace_file.read(args.trace)
    api = read_api(args.api)
    starts = step_starts(rows, names)
    bounds = run_bounds(rows, names, args.steps, starts)
    n = args.steps
    keys = [a[0] for a in api]
    prev_end = None
    for r, (lo, hi) in enumerate(bounds):
        first_hi = starts[r * n + args.first] if r * n + args.first < len(starts) else hi
        t_first, t_after, t_end = rows[lo][0], rows[first_hi][0], max(x[1] for x in rows[lo:hi])
        print(f"run {r}: span {(t_end - t_first) / 1e6:.1f} ms; its first {args.first} steps' kernels "
              f"{(t_after - t_first) / 1e6:.1f} ms")
        if prev_end is not None:
            w = api[bisect.bisect_left(keys, prev_end):bisect.bisect_left(keys, t_first)]
            table(f"  before its first kernel ({(t_first - prev_end) / 1e6:.1f} ms after the run before it):", w,
                  args.top)
            # The last calls before the first kernel, in order: what the first kernel waited for.
            print("  the last calls before its first kernel (ms before it):")
            for s, e, k, nm in w[-12:]:
                print(f"     {(t_first - s) / 1e6:8.2f}  {(e - s) / 1e3:9.1f} us  {k} {nm[:60]}")
        w = api[bisect.bisect_left(keys, t_first):bisect.bisect_left(keys, t_after)]
        table(f"  during its first {args.first} steps:", w, args.top)
        w = api[bisect.bisect_left(keys, t_first):bisect.bisect_left(keys, t_end)]
        table("  over the run:", w, args.top)
        prev_end = t_end


if __name__ == '__main__':
    main()

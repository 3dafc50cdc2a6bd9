# Kernel time by role in a transformer layer from a kernel trace of bench/trace/ktrace.cpp (lines
# "start end id gridX gridY", "#names", "id name"): the GEMMs after each attention launch are o-proj, gate|up,
# down, then the next layer's q|k|v (or the lm-head, after the last layer). Steps are told apart by the token
# embedding that opens each (an embedding launch followed by rms_norm; its grid's y is the step's token count),
# so each role's time is also given per bucket of tokens a step. Usage: kernel_roles.py TRACE PARTS (the trace
# is cut into PARTS at its largest gaps between kernels, e.g. between serving runs; parts of fewer than 1000
# kernels are skipped). A third argument "excl" charges each kernel the time from the end of the kernel before
# it to its own end instead of its duration: kernels that overlap (programmatic launches) or leave gaps are
# then counted by what they add to the wall time, and the roles sum to the span.
import sys, collections
import trace_file
from roles import bucket, walk
rows, names = trace_file.read(sys.argv[1])
nparts = int(sys.argv[2])
excl = len(sys.argv) > 3 and sys.argv[3] == 'excl'
gaps = sorted(((rows[i + 1][0] - rows[i][1], i) for i in range(len(rows) - 1)), reverse=True)[:nparts - 1]
cuts = sorted(i + 1 for _, i in gaps)
parts, prev = [], 0
for c in cuts + [len(rows)]:
    parts.append(rows[prev:c]); prev = c
for pi, part in enumerate(parts):
    if len(part) < 1000: continue
    t = collections.Counter(); n = collections.Counter(); tb = collections.Counter(); steps = collections.Counter()
    for i, role, cur, first, excl_ns in walk(part, names, 0, len(part)):
        if first:
            steps[cur] += 1
        d = excl_ns if excl else part[i][1] - part[i][0]
        t[role] += d; n[role] += 1; tb[(role, cur)] += d
    total = sum(t.values())
    print(f"part {pi}: {len(part)} kernels, span {(part[-1][1]-part[0][0])/1e6:.1f} ms, kernel time {total/1e6:.1f} ms")
    for r, v in sorted(t.items(), key=lambda kv: -kv[1]):
        print(f"   {v/1e6:9.1f} ms  n={n[r]:7d}  mean {v/n[r]/1e3:7.1f} us  {r}")
    bks = [b for b in [bucket(x) for x in [1, 65, 129, 193, 256, 257, 321, 385, 513, 1025, 2049]] if steps[b]]
    if bks:
        print("   ms a step by tokens a step: " + ", ".join(f"{b}: {steps[b]} steps" for b in bks))
        main = [r for r, _ in sorted(t.items(), key=lambda kv: -kv[1])[:8]]
        print("   " + " " * 22 + "".join(f"{b:>10s}" for b in bks))
        for r in main:
            print(f"   {r[:22]:22s}" + "".join(f"{tb[(r, b)] / 1e6 / steps[b]:10.3f}" for b in bks))

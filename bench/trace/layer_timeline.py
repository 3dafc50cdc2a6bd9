# One layer of a serving trace (bench/trace/ktrace.cpp format) kernel by kernel: start and end relative to the
# layer's first kernel, duration, and the gap from the end of the kernels before (negative: the kernel started
# before its predecessor ended, a programmatic launch). Usage: layer_timeline.py TRACE TOKENS [NTH]: the NTH
# (default 40) step of TOKENS tokens (told by its embedding's grid y), from its 3rd attention launch on.
import sys
import trace_file
rows, names = trace_file.read(sys.argv[1])
tokens, nth = int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 40
steps = [i for i, r in enumerate(rows) if 'embedding' in names[r[2]] and r[4] == tokens]
i = steps[min(nth, len(steps) - 1)]
seen = 0
while seen < 3:
    i += 1
    if 'attention_kernel' in names[rows[i][2]]: seen += 1
t0, prev_end = rows[i][0], rows[i - 1][1]
for s, e, k, gx, gy in rows[i:i + 13]:
    name = names[k].split('(')[0]
    print(f"start {(s - t0) / 1e3:8.2f} end {(e - t0) / 1e3:8.2f} dur {(e - s) / 1e3:7.2f} "
          f"gap {(s - prev_end) / 1e3:7.2f} grid {gx:5d}  {name[:40]}..{name[-40:]}")
    prev_end = max(prev_end, e)

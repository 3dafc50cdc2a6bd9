# Kernel time by role in a transformer layer from a kernel trace of bench/trace/ktrace.cpp (lines
# "start end id", "#names", "id name"): the GEMMs after each attention launch are o-proj, gate|up, down,
# then the next layer's q|k|v (or the lm-head, after the last layer). Usage: kernel_roles.py TRACE PARTS
# (the trace is cut into PARTS at its largest gaps between kernels, e.g. between serving runs; parts of
# fewer than 1000 kernels are skipped).
import sys, collections
rows, names, in_names = [], {}, False
for line in open(sys.argv[1]):
    if line.startswith('#names'):
        in_names = True; continue
    if in_names:
        i, n = line.rstrip('\n').split(' ', 1); names[int(i)] = n
    else:
        s, e, i = line.split(); rows.append((int(s), int(e), int(i)))
rows.sort()
# parts: split at the largest gaps (argv[2] parts)
nparts = int(sys.argv[2])
gaps = sorted(((rows[i + 1][0] - rows[i][1], i) for i in range(len(rows) - 1)), reverse=True)[:nparts - 1]
cuts = sorted(i + 1 for _, i in gaps)
parts, prev = [], 0
for c in cuts + [len(rows)]:
    parts.append(rows[prev:c]); prev = c
roles = ['o-proj', 'gate|up', 'down', 'qkv']
for pi, part in enumerate(parts):
    if len(part) < 1000: continue
    t = collections.Counter(); n = collections.Counter()
    gemm_i = 3
    for s, e, k in part:
        name = names[k]
        d = e - s
        if 'attention_kernel' in name or 'fold_kernel' in name:
            if 'attention_kernel' in name: gemm_i = -1
            role = 'attention'
        elif 'splitKreduce' in name:
            role = 'gemm ' + roles[min(gemm_i, 3)] if gemm_i >= 0 else 'gemm ?'
        elif 'gemm_kernel' in name or 'nvjet' in name:
            gemm_i += 1
            role = 'gemm ' + (roles[gemm_i] if gemm_i < 4 else 'lm-head/other')
            if gemm_i == 3 and d > 150000: role = 'gemm lm-head'
        elif 'silu' in name: role = 'silu_and_mul'
        elif 'rms_norm' in name: role = 'rms_norm'
        elif 'rope' in name: role = 'rope'
        elif 'write_kv' in name: role = 'write_kv'
        elif 'sample' in name or 'logprob' in name or 'argmax' in name or 'softmax' in name: role = 'sampling/logprobs'
        else: role = 'other: ' + name[:60]
        t[role] += d; n[role] += 1
    total = sum(t.values())
    print(f"part {pi}: {len(part)} kernels, span {(part[-1][1]-part[0][0])/1e6:.1f} ms, kernel time {total/1e6:.1f} ms")
    for r, v in sorted(t.items(), key=lambda kv: -kv[1]):
        print(f"   {v/1e6:9.1f} ms  n={n[r]:7d}  mean {v/n[r]/1e3:7.1f} us  {r}")

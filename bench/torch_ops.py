#!/usr/bin/env python3
"""Times PyTorch's own ops on the cases of a `bik bench ops` JSON and writes the times into it.

Same method as the C++ bench: per case, warm-up, then a CUDA graph of `launches` calls rotating over
`input_sets` input sets, replayed `repeats` times between events; the median replay time over the
launches is the time of one call. Ops without a single torch kernel use the composition an engine's
native path uses (silu(gate) * up; rotary as gather + slices + products + cat; residual add then
rms_norm). Also records a copy kernel's bandwidth (torch's copy_ over 1 GiB) next to cudaMemcpy's.

usage: python3 bench/torch_ops.py bench/results/ops_h100.json [--repeats 15]
"""
import argparse
import json
import statistics

import torch
import torch.nn.functional as F

DT = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def rand(shape, dtype, scale=1.0):
    return (torch.randn(shape, device="cuda", dtype=torch.float32) * scale).to(dtype)


def rope_table(max_pos, rot, theta=10000.0):
    inv = 1.0 / (theta ** (torch.arange(0, rot, 2, dtype=torch.float64, device="cuda") / rot))
    ang = torch.arange(max_pos, dtype=torch.float64, device="cuda")[:, None] * inv[None, :]
    return torch.cat([ang.cos(), ang.sin()], dim=1).float()


def make(case, sets):
    """Returns fn(i) running torch's version of the case on input set i, or None if there is none."""
    op, s = case["op"], case["shape"]
    dt = DT.get(case["dtype"])
    if op in ("rms_norm", "rms_norm_residual"):
        m, n = s["m"], s["n"]
        xs = [rand((m, n), dt) for _ in range(sets)]
        rs = [rand((m, n), dt) for _ in range(sets)] if op == "rms_norm_residual" else None
        w = rand((n,), dt, 0.2)
        if rs is None:
            return lambda i: F.rms_norm(xs[i], (n,), w, 1e-6)

        def fused(i):
            h = xs[i] + rs[i]
            return F.rms_norm(h, (n,), w, 1e-6), h
        return fused
    if op == "layer_norm":
        m, n = s["m"], s["n"]
        xs = [rand((m, n), dt) for _ in range(sets)]
        w, b = rand((n,), dt, 0.2), rand((n,), dt, 0.2)
        return lambda i: F.layer_norm(xs[i], (n,), w, b, 1e-5)
    if op in ("softmax", "log_softmax"):
        m, n = s["m"], s["n"]
        xs = [rand((m, n), dt, 3.0) for _ in range(sets)]
        if case["out_dtype"] == "f32" and dt == torch.float16:  # torch's fused half_to_float path
            f = torch._log_softmax if op == "log_softmax" else torch._softmax
            return lambda i: f(xs[i], -1, True)
        f = torch.log_softmax if op == "log_softmax" else torch.softmax  # bf16 -> f32: torch casts first
        return lambda i: f(xs[i], -1, dtype=DT[case["out_dtype"]])
    if op == "sum":
        m, n = s["m"], s["n"]
        xs = [rand((m, n), dt) for _ in range(sets)]
        return lambda i: xs[i].sum(-1, dtype=torch.float32)
    if op == "sum_dim0":
        xs = [rand((s["k"], s["n"]), dt) for _ in range(sets)]
        return lambda i: xs[i].sum(0, dtype=torch.float32)
    if op == "argmax":
        m, n = s["m"], s["n"]
        xs = [rand((m, n), dt, 3.0) for _ in range(sets)]
        return lambda i: xs[i].argmax(-1)
    if op == "silu_and_mul":
        m, d = s["m"], s["d"]
        xs = [rand((m, 2 * d), dt, 2.0) for _ in range(sets)]
        return lambda i: F.silu(xs[i][:, :d]) * xs[i][:, d:]
    if op == "rotary_neox":
        t, hq, hk, d, rot, max_pos = s["t"], s["hq"], s["hk"], s["d"], s["rot"], s["max_pos"]
        qs = [rand((t, hq, d), dt) for _ in range(sets)]
        ks = [rand((t, hk, d), dt) for _ in range(sets)]
        pos = torch.randint(0, max_pos, (t,), device="cuda")
        table = rope_table(max_pos, rot)

        def rope(i):
            cs = table[pos]
            cos, sin = cs.chunk(2, dim=-1)
            cos, sin = cos[:, None, :].to(dt), sin[:, None, :].to(dt)
            outs = []
            for x in (qs[i], ks[i]):
                x1, x2 = x[..., : rot // 2], x[..., rot // 2: rot]
                outs.append(torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1))
            return outs
        return rope
    if op == "embedding":
        t, vocab, d = s["t"], s["vocab"], s["d"]
        table = rand((vocab, d), dt)
        ids = [torch.randint(0, vocab, (t,), device="cuda") for _ in range(sets)]
        return lambda i: F.embedding(ids[i], table)
    return None


def time_graph(fn, sets, launches, repeats):
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(max(3, sets)):
            fn(i % sets)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(launches):
            fn(i % sets)
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        g.replay()
        e1.record()
        e1.synchronize()
        times.append(e0.elapsed_time(e1) / launches)
    del g
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("json")
    ap.add_argument("--repeats", type=int, default=15)
    a = ap.parse_args()
    with open(a.json) as f:
        j = json.load(f)
    j["torch_version"] = torch.__version__
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda").fill_(7)
    dst = torch.empty_like(src)
    t = time_graph(lambda i: dst.copy_(src), 1, 5, a.repeats)
    j["copy_gbps_torch_copy_kernel"] = 2 * (1 << 30) / (t * 1e-3) / 1e9
    del src, dst
    print(f"torch copy_ kernel: {j['copy_gbps_torch_copy_kernel']:.0f} GB/s (cudaMemcpy: {j['copy_gbps']:.0f} GB/s)")
    for r in j["results"]:
        torch.cuda.empty_cache()
        fn = make(r, r["input_sets"])
        if fn is None:
            r["torch_ms"] = None
            continue
        try:
            r["torch_ms"] = time_graph(fn, r["input_sets"], r["launches"], a.repeats)
        except Exception as e:  # record, keep going
            r["torch_ms"] = None
            r["torch_error"] = str(e)[:200]
        fn = None
        tm = r["torch_ms"]
        print(f"{r['op']:<18} {json.dumps(r['shape']):<60} bik {r['bik_ms']*1e3:9.2f} us  torch "
              + (f"{tm*1e3:9.2f} us  x{tm / r['bik_ms']:.2f}" if tm else "-"), flush=True)
    with open(a.json, "w") as f:
        json.dump(j, f, indent=1)
    print("updated", a.json)


if __name__ == "__main__":
    main()

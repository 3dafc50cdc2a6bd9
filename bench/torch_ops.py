#!/usr/bin/env python3
"""Times PyTorch's own ops on the cases of a `bik bench ops` JSON and writes the times into it.

Same method as the C++ bench: per case, warm-up, then a CUDA graph of `launches` calls rotating over
`input_sets` input sets, replayed `repeats` times between events; the median replay time over the
launches is the time of one call. Cases whose public call the C++ bench also times as a plain loop
(`"call_timing": "loop"`: sample and logprobs, whose kernels it times in a graph, `bik_ms`, and whose calls,
logprobs waiting for its kernel in each, as a loop, `call_ms`) and cases it could only time as a loop
(`"timing": "loop"`) are timed as a loop here: `launches` calls issued one after another between two events,
no graph; torch's time is then compared with `call_ms` where there is one. Ops without a single torch kernel use the
composition an engine's native path uses (silu(gate) * up; rotary as gather + slices + products + cat;
residual add then rms_norm; the sampler's temperature / top-k / top-p / softmax / exponential race;
log_softmax + topk + gather for logprobs); such cases record the composition under "torch_impl".
Also records a copy kernel's bandwidth (torch's copy_ over 1 GiB) next to cudaMemcpy's.

BIK_TORCH_DEVICE (default cuda) places the inputs of make() elsewhere, e.g. cpu, to exercise the
compositions without a GPU; timing needs cuda.

usage: python3 bench/torch_ops.py bench/results/ops_h100.json [--repeats 15]
"""
import argparse
import json
import os
import statistics

import torch
import torch.nn.functional as F

DT = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
DEV = os.environ.get("BIK_TORCH_DEVICE", "cuda")

# What torch runs for ops that have no single torch kernel and whose composition is not obvious from
# the op's name; written to the case as "torch_impl" and shown as a footnote of the table.
TORCH_IMPL = {
    "sample_topk_topp": "logits / temperature; torch.topk(k) (sorted); top-p on those k: softmax, cumsum, "
                        "drop a token once the mass before it reaches p (first kept); softmax; exponential "
                        "race (probs / Exp(1) noise from one torch.Generator, argmax); gather of the index. "
                        "Parameters are device tensors made once; one generator for the batch, not one "
                        "seed per row",
    "sample_temperature": "softmax(logits / temperature); exponential race (probs / Exp(1) noise from one "
                          "torch.Generator, argmax)",
    "logprobs_top20": "torch.log_softmax(logits.float()); torch.topk(20); gather of the chosen token's logprob",
}


def rand(shape, dtype, scale=1.0):
    return (torch.randn(shape, device=DEV, dtype=torch.float32) * scale).to(dtype)


def rope_table(max_pos, rot, theta=10000.0):
    inv = 1.0 / (theta ** (torch.arange(0, rot, 2, dtype=torch.float64, device=DEV) / rot))
    ang = torch.arange(max_pos, dtype=torch.float64, device=DEV)[:, None] * inv[None, :]
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
        pos = torch.randint(0, max_pos, (t,), device=DEV)
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
        ids = [torch.randint(0, vocab, (t,), device=DEV) for _ in range(sets)]
        return lambda i: F.embedding(ids[i], table)
    if op == "sample_topk_topp":
        # The bench's parameters (tools/bench_ops.cpp): every row temperature 0.8, top_k 50, top_p 0.9.
        # An engine keeps them as per-row device tensors; here every row holds the same values.
        m, n = s["m"], s["n"]
        xs = [rand((m, n), dt, 3.0) for _ in range(sets)]
        temp = torch.full((m, 1), 0.8, device=DEV)
        top_k = torch.full((m, 1), 50, dtype=torch.long, device=DEV)
        top_p = torch.full((m, 1), 0.9, device=DEV)
        k_max = 50  # the batch's largest k, known on the host when the batch is built: no sync for it
        gen = torch.Generator(device=DEV)
        gen.manual_seed(0)

        def sample(i):
            x = xs[i] / temp  # out of place: the input sets are reused across calls
            # top-k first: every later step works on the k largest only (torch.topk returns them sorted)
            vals, idx = torch.topk(x, k_max, dim=-1)
            vals.masked_fill_(torch.arange(k_max, device=DEV)[None, :] >= top_k, float("-inf"))
            # top-p on the distribution renormalised after top-k: keep the smallest prefix whose mass
            # reaches p, i.e. drop a token once the mass before it reaches p (the first always stays)
            probs = vals.softmax(-1)
            drop = (probs.cumsum(-1) - probs) >= top_p
            drop[:, 0] = False
            vals.masked_fill_(drop, float("-inf"))
            # draw from the softmax of what is kept: argmax of probs / Exp(1) noise (no host sync,
            # unlike a multinomial with a validity check)
            probs = vals.softmax(-1)
            noise = torch.empty_like(probs).exponential_(generator=gen)
            return idx.gather(1, probs.div_(noise).argmax(-1, keepdim=True))
        return sample
    if op == "sample_temperature":
        m, n = s["m"], s["n"]
        xs = [rand((m, n), dt, 3.0) for _ in range(sets)]
        gen = torch.Generator(device=DEV)
        gen.manual_seed(0)

        def sample_t(i):
            probs = (xs[i] / 0.8).softmax(-1)
            noise = torch.empty_like(probs).exponential_(generator=gen)
            return probs.div_(noise).argmax(-1)
        return sample_t
    if op == "logprobs_top20":
        m, n = s["m"], s["n"]
        xs = [rand((m, n), dt, 3.0) for _ in range(sets)]
        tok = torch.randint(0, n, (m, 1), generator=torch.Generator().manual_seed(9)).to(DEV)  # fixed ids

        def logprobs(i):
            lp = torch.log_softmax(xs[i].float(), -1)
            top_vals, top_ids = torch.topk(lp, 20, dim=-1)
            return lp.gather(1, tok).squeeze(1), top_ids, top_vals
        return logprobs
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


def time_loop(fn, sets, launches, repeats):
    """The C++ bench's method for calls that wait for the host: warm-up, then `launches` plain calls
    rotating over the input sets between two events, `repeats` times; the median over the launches."""
    for i in range(max(3, sets)):
        fn(i % sets)
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for i in range(launches):
            fn(i % sets)
        e1.record()
        e1.synchronize()
        times.append(e0.elapsed_time(e1) / launches)
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
        if r["op"] in TORCH_IMPL:
            r["torch_impl"] = TORCH_IMPL[r["op"]]
        timer = time_loop if "loop" in (r.get("timing"), r.get("call_timing")) else time_graph
        try:
            r["torch_ms"] = timer(fn, r["input_sets"], r["launches"], a.repeats)
        except Exception as e:  # record, keep going
            r["torch_ms"] = None
            r["torch_error"] = str(e)[:200]
        fn = None
        tm, bik = r["torch_ms"], r.get("call_ms", r["bik_ms"])
        print(f"{r['op']:<18} {json.dumps(r['shape']):<60} bik {bik*1e3:9.2f} us  torch "
              + (f"{tm*1e3:9.2f} us  x{tm / bik:.2f}" if tm else "-"), flush=True)
    with open(a.json, "w") as f:
        json.dump(j, f, indent=1)
    print("updated", a.json)


if __name__ == "__main__":
    main()

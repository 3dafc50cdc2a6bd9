#!/usr/bin/env python3
"""Times torch's scaled_dot_product_attention on the cases of a `bik bench attention` JSON and writes
the times into it.

Same shapes as the C++ bench (Hq 32, Hkv 8, head_dim 128, bf16), but contiguous K/V (SDPA has no paged
cache): prefill q [B, Hq, n, D], k/v [B, Hkv, n, D], is_causal=True; decode q [B, Hq, 1, D] over k/v
[B, Hkv, ctx, D]. GQA through enable_gqa=True (no K/V repeat is timed). Method: warm-up, then a CUDA
graph of `launches` calls replayed `repeats` times between events; the median replay time / launches.
Also records torch's own copy bandwidth (copy_ over 1 GiB, read + write).

usage: python3 bench/torch_attention.py bench/results/attention_h100.json [--repeats 15]
"""
import argparse
import json
import statistics

import torch
import torch.nn.functional as F


def time_graph(fn, launches, repeats):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(launches):
            fn()
    g.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(repeats):
        e0 = torch.cuda.Event(enable_timing=True)
        e1 = torch.cuda.Event(enable_timing=True)
        e0.record()
        g.replay()
        e1.record()
        e1.synchronize()
        ts.append(e0.elapsed_time(e1) / launches)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("json")
    ap.add_argument("--repeats", type=int, default=15)
    a = ap.parse_args()
    with open(a.json) as f:
        j = json.load(f)
    cfg = j["config"]
    hq, hkv, d = cfg["q_heads"], cfg["kv_heads"], cfg["head_dim"]
    dt = torch.bfloat16
    j["torch"] = torch.__version__
    x = torch.empty(1 << 29, dtype=torch.int16, device="cuda").fill_(3)
    y = torch.empty_like(x)
    t = time_graph(lambda: y.copy_(x), 5, a.repeats)
    j["torch_copy_gbps"] = 2.0 * (1 << 30) / (t * 1e-3) / 1e9
    del x, y
    print(f"torch {torch.__version__}: copy_ {j['torch_copy_gbps']:.0f} GB/s")
    print(f"{'mode':8} {'batch':>6} {'ctx':>6} | {'sdpa us':>10} {'bik us':>10} {'bik/sdpa':>8}")
    for r in j["results"]:
        b, n, ql = r["batch"], r["ctx"], r["q_len"]
        try:
            q = (torch.rand((b, hq, ql, d), device="cuda") * 8 - 4).to(dt)
            k = (torch.rand((b, hkv, n, d), device="cuda") * 3 - 1.5).to(dt)
            v = (torch.rand((b, hkv, n, d), device="cuda") * 2 - 1).to(dt)
            causal = r["mode"] == "prefill"
            fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
            launches = 3 if r["flops"] > 1e11 else 20
            t = time_graph(fn, launches, a.repeats)
            r["torch_ms"] = t
            r["torch_tflops"] = r["flops"] / (t * 1e-3) / 1e12
            r["torch_gbps"] = r["kv_bytes"] / (t * 1e-3) / 1e9
            print(f"{r['mode']:8} {b:6d} {n:6d} | {t * 1e3:10.1f} {r['bik_ms'] * 1e3:10.1f} {t / r['bik_ms']:8.2f}",
                  flush=True)
            del q, k, v
            torch.cuda.empty_cache()
        except Exception as e:  # record and go on: one failure must not lose the other cases
            r["torch_error"] = str(e)[:200]
            print(f"{r['mode']:8} {b:6d} {n:6d} | failed: {str(e)[:120]}", flush=True)
        with open(a.json, "w") as f:
            json.dump(j, f, indent=1)


if __name__ == "__main__":
    main()

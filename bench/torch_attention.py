#!/usr/bin/env python3
"""Times torch's scaled_dot_product_attention on the cases of a `bik bench attention` JSON and writes
the times into it.

Same shapes as the C++ bench (Hq 32, Hkv 8, head_dim 128, bf16), but contiguous K/V (SDPA has no paged
cache): prefill q [B, Hq, n, D], k/v [B, Hkv, n, D], is_causal=True; decode q [B, Hq, 1, D] over k/v
[B, Hkv, ctx, D]. GQA through enable_gqa=True (no K/V repeat is timed). Method: warm-up, then a CUDA
graph of `launches` calls replayed `repeats` times between events; the median replay time / launches.
Also records torch's own copy bandwidth (copy_ over 1 GiB, read + write).
--sustain S: for each case the C++ bench also ran under sustained load (a "sustained" entry), SDPA's graph
is replayed back to back the same way (S / 2 seconds, then an S-second window): time per call from the
host clock between chunk completions, energy per call from NVML's total-energy counter (the driver's
libnvidia-ml through ctypes; left out where it cannot be read), mean power and SM clock.

usage: python3 bench/torch_attention.py bench/results/attention_h100.json [--repeats 15] [--sustain S]
"""
import argparse
import ctypes
import json
import statistics
import time

import torch
import torch.nn.functional as F


def capture(fn, launches):
    """Three warm-up calls of fn on a side stream, then `launches` calls captured into a CUDA graph."""
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
    return g


def time_graph(fn, launches, repeats):
    g = capture(fn, launches)
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


class Nvml:
    """The GPU's total-energy counter (mJ) and SM clock through the driver's NVML library; ok is False
    where it cannot be loaded or read (then no energy is reported)."""

    def __init__(self):
        self.ok = False
        try:
            lib = ctypes.CDLL("libnvidia-ml.so.1")
            if lib.nvmlInit_v2() != 0:
                return
            # The device torch runs on, by PCI address (NVML's indices ignore CUDA_VISIBLE_DEVICES).
            p = torch.cuda.get_device_properties(torch.cuda.current_device())
            bus_id = f"{p.pci_domain_id:04x}:{p.pci_bus_id:02x}:{p.pci_device_id:02x}.0".encode()
            h = ctypes.c_void_p()
            if lib.nvmlDeviceGetHandleByPciBusId_v2(ctypes.c_char_p(bus_id), ctypes.byref(h)) != 0:
                return
            self.lib, self.h = lib, h
            self.ok = self.energy_mj() is not None
        except (OSError, AttributeError):
            self.ok = False

    def energy_mj(self):
        e = ctypes.c_ulonglong()
        return e.value if self.lib.nvmlDeviceGetTotalEnergyConsumption(self.h, ctypes.byref(e)) == 0 else None

    def sm_mhz(self):
        m = ctypes.c_uint()
        return m.value if self.lib.nvmlDeviceGetClockInfo(self.h, 1, ctypes.byref(m)) == 0 else None


def sustain_graph(fn, launches, warm, seconds, nvml):
    """fn's calls captured `launches` to a graph, replayed back to back (chunks of ~20 ms, two queued ahead of
    the one waited for) for `warm` seconds, then over a `seconds` window: ms per call, and where NVML reads,
    mJ per call, mean W and mean SM MHz of samples every 50 ms (the C++ bench's sustain_graph, bench_util.h)."""
    g = capture(fn, launches)
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    g.replay()
    e1.record()
    e1.synchronize()
    per_chunk = max(1, int(20.0 / max(e0.elapsed_time(e1), 1e-3)))
    ring = [torch.cuda.Event() for _ in range(3)]
    issued, done = [0], [0]

    def issue():
        for _ in range(per_chunk):
            g.replay()
        ring[issued[0] % 3].record()
        issued[0] += 1

    def wait_one():
        ring[done[0] % 3].synchronize()
        done[0] += 1

    issue()
    issue()
    t0 = time.monotonic()
    while time.monotonic() - t0 < warm:
        wait_one()
        issue()
    wait_one()
    issue()
    en0 = nvml.energy_mj() if nvml.ok else None
    first, w0, mhz, last = done[0], time.monotonic(), [], -1.0
    while time.monotonic() - w0 < seconds:
        wait_one()
        issue()
        if nvml.ok and time.monotonic() - last >= 0.05:  # an SM clock sample every 50 ms, as the C++ bench
            last = time.monotonic()
            m = nvml.sm_mhz()
            if m is not None:
                mhz.append(m)
    wait_one()
    en1 = nvml.energy_mj() if nvml.ok else None
    elapsed = time.monotonic() - w0
    calls = (done[0] - first) * per_chunk * launches
    torch.cuda.synchronize()
    out = {"ms": elapsed * 1e3 / calls, "energy": en0 is not None and en1 is not None}
    if out["energy"]:
        out["mj"] = (en1 - en0) / calls
        out["watts"] = (en1 - en0) * 1e-3 / elapsed
        out["sm_mhz"] = statistics.mean(mhz) if mhz else 0.0
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("json")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--sustain", type=float, default=0.0,
                    help="also time SDPA back to back for S seconds where the C++ bench did (0..60)")
    a = ap.parse_args()
    if not 0 <= a.sustain <= 60:
        ap.error(f"--sustain {a.sustain}: expected 0..60 seconds")
    nvml = Nvml() if a.sustain > 0 else None
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
            if a.sustain > 0 and "sustained" in r:
                o = sustain_graph(fn, launches, a.sustain / 2, a.sustain, nvml)
                r["torch_sustained"] = o
                b_ms = r["sustained"]["ms"]
                line = f"{'':8} {'':6} {'':6}   sustained: sdpa {o['ms'] * 1e3:.1f} us, bik {b_ms * 1e3:.1f} us, " \
                       f"bik/sdpa {o['ms'] / b_ms:.2f}"
                if o["energy"]:
                    line += f"; sdpa {o['mj']:.3f} mJ a call, {o['watts']:.0f} W, {o['sm_mhz']:.0f} MHz"
                print(line, flush=True)
            del q, k, v
            torch.cuda.empty_cache()
        except Exception as e:  # record and go on: one failure must not lose the other cases
            r["torch_error"] = str(e)[:200]
            print(f"{r['mode']:8} {b:6d} {n:6d} | failed: {str(e)[:120]}", flush=True)
        with open(a.json, "w") as f:
            json.dump(j, f, indent=1)


if __name__ == "__main__":
    main()

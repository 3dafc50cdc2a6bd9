#!/usr/bin/env python3
"""Renders a `bik bench ops` JSON (with torch times from bench/torch_ops.py) as a markdown table and a plot.

usage: python3 bench/plot_ops.py bench/results/ops_h100.json [--baseline earlier.json]
       -> ops_h100.md and ops_h100.png beside it; with a baseline, the table gains its bik times
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def size_of(r):
    s = r["shape"]
    rows = s.get("m", s.get("t", "-"))
    rest = ", ".join(f"{k}={v}" for k, v in s.items() if k not in ("m", "t"))
    return rows, rest


def call_of(r):
    """The time torch's op is compared with: the public call's where the bench timed it apart (call_ms:
    sample and logprobs, whose bik_ms is their kernel's), else bik_ms."""
    return r.get("call_ms", r["bik_ms"])


def key_of(r):
    return (r["op"], r["dtype"], r["out_dtype"], json.dumps(r["shape"], sort_keys=True))


def main():
    path = sys.argv[1]
    with open(path) as f:
        j = json.load(f)
    before = {}
    if "--baseline" in sys.argv:
        with open(sys.argv[sys.argv.index("--baseline") + 1]) as f:
            b = json.load(f)
        before = {key_of(r): r for r in b["results"]}
    base = os.path.splitext(path)[0]
    res = j["results"]
    ceiling = j["copy_gbps"]
    lines = [
        f"# bik CUDA memory-bound ops on {j['gpu']}",
        "",
        f"commit `{j['commit']}`, {j['date']}, torch {j.get('torch_version', '-')}",
        "",
        f"Copy ceiling: cudaMemcpy D2D {j['copy_gbps_memcpy']:.0f} GB/s"
        + (f", torch copy_ kernel {j['copy_gbps_torch_copy_kernel']:.0f} GB/s" if "copy_gbps_torch_copy_kernel" in j else "")
        + " (1 GiB, bytes read + written). `% copy` is against cudaMemcpy.",
        "",
        f"Method: {j['method']}.",
        "",
    ]
    for note in j.get("notes", []):
        lines += [f"- {note}"]
    if j.get("notes"):
        lines += [""]
    if before:
        lines += [f"Baseline (`before us`, `before %`): commit `{b['commit']}`, {b['date']}, on {b['gpu']}.", ""]
    calls = any("call_ms" in r for r in res)
    head = "| op | dtype | rows | shape | bik us |" + (" call us |" if calls else "") + " GB/s | % copy | torch us | torch / bik |"
    rule = "|---|---|---:|---|---:|" + ("---:|" if calls else "") + "---:|---:|---:|---:|"
    if before:
        head += " before us | before % |"
        rule += "---:|---:|"
    lines += [head, rule]
    # Cases whose torch time is a composition (torch_ops.py records it as "torch_impl"): numbered
    # footnotes under the table, the number beside the torch time.
    impls = list(dict.fromkeys((r["op"], r["torch_impl"]) for r in res if r.get("torch_impl")))
    for r in res:
        rows, rest = size_of(r)
        tm = r.get("torch_ms")
        mark = f" [{r['source']}]" if r.get("source") else ""
        tmark = f" [t{impls.index((r['op'], r['torch_impl'])) + 1}]" if r.get("torch_impl") else ""
        lines.append(
            f"| {r['op']}{mark} | {r['dtype']}->{r['out_dtype']} | {rows} | {rest} | {r['bik_ms']*1e3:.2f} | "
            + ((f"{r['call_ms']*1e3:.2f} | " if "call_ms" in r else "- | ") if calls else "")
            + f"{r['bik_gbps']:.0f} | {100*r['frac_of_copy']:.1f} | "
            + (f"{tm*1e3:.2f}{tmark} | {tm / call_of(r):.2f} |" if tm else "- | - |")
            + ((f" {before[key_of(r)]['bik_ms']*1e3:.2f} | {100*before[key_of(r)]['frac_of_copy']:.1f} |"
                if key_of(r) in before else " - | - |") if before else "")
        )
    if impls:
        lines += [""] + [f"- [t{k + 1}] {op}, torch ran: {impl}." for k, (op, impl) in enumerate(impls)]
    # Summary: the largest size of each op.
    largest = {}
    for r in res:
        if r["op"] not in largest or r["bytes"] > largest[r["op"]]["bytes"]:
            largest[r["op"]] = r
    lines += ["", "Largest size per op:", ""]
    lines += ["| op | % copy | torch / bik |" + (" before % | before torch / bik |" if before else ""),
              "|---|---:|---:|" + ("---:|---:|" if before else "")]
    for op, r in largest.items():
        tm = r.get("torch_ms")
        line = f"| {op} | {100*r['frac_of_copy']:.1f} | " + (f"{tm / call_of(r):.2f} |" if tm else "- |")
        if before:
            o = before.get(key_of(r))
            otm = o.get("torch_ms") if o else None
            line += (f" {100*o['frac_of_copy']:.1f} |" if o else " - |") + (f" {otm / call_of(o):.2f} |" if otm else " - |")
        lines.append(line)
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")

    fig, axes = plt.subplots(1, 2, figsize=(15, 5.5))
    ops = list(dict.fromkeys(r["op"] for r in res))
    colors = plt.get_cmap("tab20")(range(len(ops)))
    for op, color in zip(ops, colors):
        rs = [r for r in res if r["op"] == op]
        mb = [r["bytes"] / 1e6 for r in rs]
        axes[0].plot(mb, [100 * r["frac_of_copy"] for r in rs], "o-", color=color, label=op)
        pts = [(r["bytes"] / 1e6, r["torch_ms"] / call_of(r)) for r in rs if r.get("torch_ms")]
        if pts:
            axes[1].plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, label=op)
    axes[0].axhline(85, color="gray", ls="--", lw=1)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("bytes moved per call (MB)")
    axes[0].set_ylabel(f"% of copy bandwidth ({ceiling:.0f} GB/s)")
    axes[0].set_title("bik achieved bandwidth")
    axes[1].axhline(1.0, color="gray", ls="--", lw=1)
    axes[1].set_xscale("log")
    axes[1].set_xlabel("bytes moved per call (MB)")
    axes[1].set_ylabel("torch time / bik time (>1: bik faster)")
    axes[1].set_title(f"vs PyTorch {j.get('torch_version', '')}")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"{j['gpu']}  {j['commit'][:12]}  {j['date']}")
    fig.tight_layout()
    fig.savefig(base + ".png", dpi=110)
    print("wrote", base + ".md", base + ".png")


if __name__ == "__main__":
    main()

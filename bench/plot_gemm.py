#!/usr/bin/env python3
"""Renders a `bik bench gemm` JSON: a markdown table (<name>.md) and a plot of the speed ratio against
cuBLASLt versus M, one line per shape (<name>.png), next to the JSON. Runs with --sweep add a table of
every tile, runs with --sustain one of time and energy per call at the power limit.

usage: python3 bench/plot_gemm.py bench/results/gemm_h100.json
Numbers come from the JSON only; nothing is edited by hand.
"""
import json
import statistics
import sys
from pathlib import Path


def summary(rows, pred):
    r = [x["ratio"] for x in rows if pred(x["m"])]
    if not r:
        return "n/a"
    worst = min(rows, key=lambda x: x["ratio"] if pred(x["m"]) else 1e9)
    return (f"worst {min(r):.3f} ({worst['shape']}, M={worst['m']}), median {statistics.median(r):.3f}, "
            f"{sum(1 for v in r if v >= (0.95 if pred(1 << 20) else 1.0))}/{len(r)} at target")


def sustained_section(j):
    """The --sustain table (each side back to back at the power limit; energy per call from NVML), with the
    --tiles runs after it; no lines when the run had no --sustain."""
    rows = [r for r in j["results"] if "sustained" in r]
    if not rows:
        return []
    out = ["", "## Sustained load (--sustain): time and energy per call at the power limit", "",
           f"- {j.get('sustain_method', '')}",
           "- energy ratio = baseline mJ / BIK mJ (> 1: BIK spends less); figures move by several percent from "
           "run to run", "",
           "| shape | M | BIK us | baseline us | BIK mJ | baseline mJ | energy ratio | BIK W | baseline W | "
           "BIK MHz | baseline MHz |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        s = r["sustained"]
        if "bik_mj" in s:
            out.append(f"| {r['shape']} | {r['m']} | {s['bik_ms'] * 1e3:.2f} | {s['base_ms'] * 1e3:.2f} | "
                       f"{s['bik_mj']:.3f} | {s['base_mj']:.3f} | {s['energy_ratio']:.3f} | {s['bik_watts']:.0f} | "
                       f"{s['base_watts']:.0f} | {s['bik_sm_mhz']:.0f} | {s['base_sm_mhz']:.0f} |")
        else:
            out.append(f"| {r['shape']} | {r['m']} | {s['bik_ms'] * 1e3:.2f} | {s['base_ms'] * 1e3:.2f} | - | - | - | "
                       "- | - | - | - |")
    tiled = [r for r in rows if r.get("sustained_tiles")]
    if tiled:
        out += ["", "| shape | M | tile | us | mJ | W | MHz |", "|---|---:|---|---:|---:|---:|---:|"]
        for r in tiled:
            for tile, t in r["sustained_tiles"].items():
                e = (f"{t['mj']:.3f} | {t['watts']:.0f} | {t['sm_mhz']:.0f}" if "mj" in t else "- | - | -")
                out.append(f"| {r['shape']} | {r['m']} | {tile} | {t['ms'] * 1e3:.2f} | {e} |")
    return out


def markdown_gated(j):
    """The table of a `bik bench gemm --gated` run (mm_silu_and_mul against cuBLASLt then silu_and_mul)."""
    rows = j["results"]
    out = [f"# Gated GEMM (mm_silu_and_mul): BIK vs cuBLASLt + silu_and_mul on {j['gpu']}", ""]
    out.append(f"- commit `{j['commit']}`, {j['date']}, dtype {j['dtype']}, {j['sms']} SMs")
    out.append(f"- layout: {j['layout']}")
    out.append(f"- timing: {j['method']}")
    out.append(f"- baseline: {j['baseline']}")
    out.append("- ratio = baseline time / BIK time (> 1: BIK faster); N is the weight's 2 d rows.")
    out.append("")
    out.append("| shape | K | N | M | BIK us | baseline us | BIK TFLOP/s | ratio | BIK tile |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        out.append(f"| {r['shape']} | {r['k']} | {r['n']} | {r['m']} | {r['bik_ms'] * 1e3:.1f} | "
                   f"{r['cublaslt_ms'] * 1e3:.1f} | {r['bik_tflops']:.1f} | {r['ratio']:.3f} | {r['bik_config']} |")
    modes = [m for m in ("0", "1", "2", "2c", "2c192") if any(m in r.get("glu_swap_ms", {}) for r in rows)]
    if modes:
        out += ["", "## Every BIK_GEMM_GLU_SWAP mode (us; - where the mode does not apply)", "",
                "| shape | M | " + " | ".join(modes) + " | baseline |", "|---|---:|" + "---:|" * (len(modes) + 1)]
        for r in rows:
            t = r.get("glu_swap_ms", {})
            cells = [f"{t[m] * 1e3:.1f}" if t.get(m) is not None else "-" for m in modes]
            out.append(f"| {r['shape']} | {r['m']} | " + " | ".join(cells) + f" | {r['cublaslt_ms'] * 1e3:.1f} |")
    out += sustained_section(j)
    return "\n".join(out) + "\n"


def markdown_qkv(j):
    """--qkv: qkv_projection fused, as BIK's calls, and as cuBLASLt's product then the same calls."""
    rows = j["results"]
    hq, hk, d = rows[0]["qkv_heads"]
    out = [f"# qkv_projection (q|k|v product, q/k norms, rotation, KV-cache write): BIK vs cuBLASLt on {j['gpu']}",
           ""]
    out.append(f"- commit `{j['commit']}`, {j['date']}, dtype {j['dtype']}, {j['sms']} SMs; heads {hq} q, {hk} kv, "
               f"D = {d}")
    out.append(f"- layout: {j['layout']}")
    out.append(f"- timing: {j['method']}")
    out.append(f"- baseline: {j['baseline']}")
    out.append("- fused: one GEMM kernel whose epilogue finishes the heads; calls: BIK's product and the same four "
               "kernels (BIK_QKV_FUSED=0); ratio = baseline time / fused time (> 1: BIK faster)")
    out.append("")
    out.append("| shape | K | N | M | fused us | calls us | baseline us | ratio | calls / fused | BIK path |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        out.append(f"| {r['shape']} | {r['k']} | {r['n']} | {r['m']} | {r['bik_ms'] * 1e3:.1f} | "
                   f"{r['bik_calls_ms'] * 1e3:.1f} | {r['cublaslt_ms'] * 1e3:.1f} | {r['ratio']:.3f} | "
                   f"{r['calls_ratio']:.3f} | {r['bik_config']} |")
    out += sustained_section(j)
    return "\n".join(out) + "\n"


def markdown(j):
    rows = j["results"]
    if rows and rows[0].get("gated"):
        return markdown_gated(j)
    if rows and "qkv_heads" in rows[0]:
        return markdown_qkv(j)
    out = [f"# GEMM: BIK vs cuBLASLt on {j['gpu']}", ""]
    out.append(f"- commit `{j['commit']}`, {j['date']}, dtype {j['dtype']}, {j['sms']} SMs, "
               f"L2 {j['l2_bytes'] / 2**20:.0f} MiB")
    if "copy_gbps" in j:
        out.append(f"- device-to-device copy (read + write): {j['copy_gbps']:.0f} GB/s")
    out.append(f"- layout: {j['layout']}")
    out.append(f"- timing: {j['method']}")
    out.append(f"- baseline: {j['baseline']}")
    out.append("- ratio = cuBLASLt time / BIK time (> 1: BIK faster). Targets: >= 0.95 for M >= 256, "
               ">= 1.0 for M < 256.")
    out.append(f"- M >= 256: {summary(rows, lambda m: m >= 256)}")
    out.append(f"- M < 256: {summary(rows, lambda m: m < 256)}")
    out.append("")
    out.append("| shape | K | N | M | BIK us | cuBLASLt us | BIK TFLOP/s | BIK GB/s | ratio | BIK tile |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        out.append(f"| {r['shape']} | {r['k']} | {r['n']} | {r['m']} | {r['bik_ms'] * 1e3:.1f} | "
                   f"{r['cublaslt_ms'] * 1e3:.1f} | {r['bik_tflops']:.1f} | {r['bik_gbps']:.0f} | "
                   f"{r['ratio']:.3f} | {r['bik_config']} |")
    if any("sm90_tile_ms" in r for r in rows):
        # JSON objects come back with sorted keys ("128x128" before "64x32"): order the tiles by family
        # (plain, "swap", "pair"), then (BM, BN).
        def tile_key(x):
            family = next((f for f in ("swap", "pair") if x.startswith(f)), "")
            bm, bn = x[len(family):].split("x")
            return (("", "swap", "pair").index(family), int(bm), int(bn))
        tiles = sorted({x for r in rows for x in r.get("sm90_tile_ms", {})}, key=tile_key)
        out += ["", "## Every wgmma tile (us; * = the tile the table picks)", "",
                "| shape | M | " + " | ".join(tiles) + " | cuBLASLt |",
                "|---|---:|" + "---:|" * (len(tiles) + 1)]
        for r in rows:
            t = r.get("sm90_tile_ms")
            if not t:
                continue
            picked = r["bik_config"].split()[1] if len(r["bik_config"].split()) > 1 else ""
            cells = [f"{t[x] * 1e3:.1f}{'*' if x == picked else ''}" if x in t else "" for x in tiles]
            out.append(f"| {r['shape']} | {r['m']} | " + " | ".join(cells) + f" | {r['cublaslt_ms'] * 1e3:.1f} |")
    out += sustained_section(j)
    return "\n".join(out) + "\n"


def plot(j, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    shapes = []
    for r in j["results"]:
        if r["shape"] not in shapes:
            shapes.append(r["shape"])
    for s in shapes:
        rs = [r for r in j["results"] if r["shape"] == s]
        ax.plot([r["m"] for r in rs], [r["ratio"] for r in rs], marker="o", ms=3,
                label=f"{s} ({rs[0]['k']}->{rs[0]['n']})")
    ax.set_xscale("log", base=2)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(0.95, color="k", lw=0.8, ls="--")
    ax.axvline(256, color="grey", lw=0.6, ls=":")
    ax.set_xlabel("M (rows)")
    ax.set_ylabel("speed vs cuBLASLt (cuBLASLt time / BIK time)")
    ax.set_title(f"BIK batch-invariant GEMM vs cuBLASLt, {j['dtype']}, {j['gpu']}\n{j['commit'][:12]} {j['date']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    src = Path(sys.argv[1])
    j = json.loads(src.read_text())
    src.with_suffix(".md").write_text(markdown(j))
    plot(j, src.with_suffix(".png"))
    print(f"wrote {src.with_suffix('.md')} and {src.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

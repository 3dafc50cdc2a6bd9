#!/usr/bin/env python3
"""Renders a `bik bench attention` JSON (with bench/torch_attention.py's SDPA times added): a markdown
table (<name>.md) and a plot (<name>.png) next to the JSON: prefill TFLOP/s and decode GB/s of KV read
against context length, BIK solid, torch SDPA dashed, one colour per batch size. Cases timed under
sustained load on both sides (`--sustain S` of both benches) get a second table: time, energy per call,
power and SM clock of each side at the power limit.

usage: python3 bench/plot_attention.py bench/results/attention_h100.json
Numbers come from the JSON only; nothing is edited by hand.
"""
import json
import statistics
import sys
from pathlib import Path


def ratio(r):
    return r["torch_ms"] / r["bik_ms"] if "torch_ms" in r else None


def sustained_ratio(r):
    if "sustained" in r and "torch_sustained" in r:
        return r["torch_sustained"]["ms"] / r["sustained"]["ms"]
    return None


def prefill_summary(rows, speed, label, what):
    """The prefill speed lines of a table: min, median and max (`label` after "speed vs SDPA"), then the cases
    under the 0.8x target with the ratio unrounded enough to show it; none where no prefill has a speed."""
    pre = [r for r in rows if r["mode"] == "prefill" and speed(r)]
    if not pre:
        return []
    sp = [speed(r) for r in pre]
    low = [f"{r['batch']} x {r['ctx']} ({speed(r):.3f})" for r in pre if speed(r) < 0.8]
    return [f"- prefill speed vs SDPA {label}: min {min(sp):.2f}, median {statistics.median(sp):.2f}, "
            f"max {max(sp):.2f}",
            f"- prefill below 0.8x SDPA ({what}): " + (", ".join(low) if low else "none")]


def sustained_table(j):
    rows = [r for r in j["results"] if sustained_ratio(r)]
    if not rows:
        return []
    out = ["", "## Under sustained load", "",
           f"- method: {j.get('sustain_method', 'n/a')}; SDPA the same way (bench/torch_attention.py --sustain)",
           "- a burst of replays (the table above) runs at whatever clock the GPU boosts to; a stream of work, as "
           "in serving, runs at the power limit, where a call's energy sets its time. speed = SDPA time / BIK "
           "time; energy = SDPA mJ / BIK mJ (> 1: BIK spends less)"]
    out += prefill_summary(rows, sustained_ratio, "under sustained load", "sustained")
    out += ["", "| mode | batch | ctx | BIK us | SDPA us | speed | BIK mJ | SDPA mJ | energy | BIK W | SDPA W "
            "| BIK MHz | SDPA MHz |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def e(o, k, f):
        return f.format(o[k]) if o.get("energy") else "-"

    for r in rows:
        b, t = r["sustained"], r["torch_sustained"]
        en = f"{t['mj'] / b['mj']:.2f}" if b.get("energy") and t.get("energy") else "-"
        out.append(f"| {r['mode']} | {r['batch']} | {r['ctx']} | {b['ms'] * 1e3:.1f} | {t['ms'] * 1e3:.1f} | "
                   f"{sustained_ratio(r):.2f} | {e(b, 'mj', '{:.3f}')} | {e(t, 'mj', '{:.3f}')} | {en} | "
                   f"{e(b, 'watts', '{:.0f}')} | {e(t, 'watts', '{:.0f}')} | {e(b, 'sm_mhz', '{:.0f}')} | "
                   f"{e(t, 'sm_mhz', '{:.0f}')} |")
    return out


def markdown(j):
    rows = j["results"]
    c = j["config"]
    out = [f"# Paged attention: BIK vs torch SDPA on {j['gpu']}", ""]
    out.append(f"- commit `{j['commit']}`, {j['date']}, {j['sms']} SMs, torch {j.get('torch', 'n/a')}")
    out.append(f"- Hq {c['q_heads']}, Hkv {c['kv_heads']}, head_dim {c['head_dim']}, {c['dtype']}, "
               f"paged KV with block size {c['block_size']} ({c.get('blocks', 'shuffled')} blocks); "
               "SDPA on contiguous K/V")
    out.append(f"- timing: {j['method']}")
    out.append(f"- copy ceiling (cudaMemcpy D2D, read + write): {j['copy_gbps']:.0f} GB/s"
               + (f"; torch copy_: {j['torch_copy_gbps']:.0f} GB/s" if "torch_copy_gbps" in j else ""))
    out.append("- speed = SDPA time / BIK kernel time (> 1: BIK faster). Targets: prefill >= 0.8; decode >= 80% "
               "of the copy ceiling at long context.")
    out += prefill_summary(rows, ratio, "(burst)", "burst")
    longd = [r for r in rows if r["mode"] == "decode" and r["ctx"] >= 8192]
    if longd:
        fr = [r["bik_frac_of_copy"] for r in longd]
        out.append(f"- decode at context >= 8192: {min(fr) * 100:.0f}%..{max(fr) * 100:.0f}% of the copy ceiling")
    out.append("")
    out.append("| mode | batch | ctx | BIK kernel us | BIK call us | SDPA us | speed | BIK TFLOP/s | SDPA TFLOP/s "
               "| BIK GB/s | % copy |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        t = r.get("torch_ms")
        out.append(f"| {r['mode']} | {r['batch']} | {r['ctx']} | {r['bik_ms'] * 1e3:.1f} | "
                   f"{r['bik_call_ms'] * 1e3:.1f} | {t * 1e3:.1f} | {ratio(r):.2f} | " if t else
                   f"| {r['mode']} | {r['batch']} | {r['ctx']} | {r['bik_ms'] * 1e3:.1f} | "
                   f"{r['bik_call_ms'] * 1e3:.1f} | n/a | n/a | ")
        out[-1] += (f"{r['bik_tflops']:.1f} | {r.get('torch_tflops', float('nan')):.1f} | {r['bik_gbps']:.0f} | "
                    f"{r['bik_frac_of_copy'] * 100:.0f}% |")
    out += sustained_table(j)
    return "\n".join(out) + "\n"


def plot(j, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(13, 5))
    for i, mode in enumerate(["prefill", "decode"]):
        rows = [r for r in j["results"] if r["mode"] == mode]
        key = "tflops" if mode == "prefill" else "gbps"
        for k, b in enumerate(sorted({r["batch"] for r in rows})):
            rs = sorted((r for r in rows if r["batch"] == b), key=lambda r: r["ctx"])
            col = f"C{k}"
            ax[i].plot([r["ctx"] for r in rs], [r["bik_" + key] for r in rs], "-o", color=col, label=f"BIK b={b}")
            ts = [r for r in rs if "torch_ms" in r]
            if ts:
                ax[i].plot([r["ctx"] for r in ts], [r["torch_" + key] for r in ts], "--x", color=col,
                           label=f"SDPA b={b}")
        if mode == "decode":
            ax[i].axhline(j["copy_gbps"], color="k", lw=0.8, label="copy ceiling")
            ax[i].axhline(0.8 * j["copy_gbps"], color="k", lw=0.8, ls=":", label="80% of copy")
        ax[i].set_xscale("log", base=2)
        ax[i].set_xlabel("context length")
        ax[i].set_ylabel("TFLOP/s" if mode == "prefill" else "GB/s of K+V read")
        ax[i].set_title(f"{mode} ({j['gpu']})")
        ax[i].grid(alpha=0.3)
        ax[i].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    p = Path(sys.argv[1])
    j = json.loads(p.read_text())
    p.with_suffix(".md").write_text(markdown(j))
    try:
        plot(j, p.with_suffix(".png"))
    except ImportError as e:
        print(f"no plot: {e}")
    print(f"wrote {p.with_suffix('.md')}")


if __name__ == "__main__":
    main()

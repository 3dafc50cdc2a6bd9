"""bench/plot_attention.py's markdown on synthetic `bik bench attention` JSON: the burst table, and the
sustained-load table for the cases both benches ran with --sustain (energy columns '-' without NVML)."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import plot_attention  # noqa: E402

HEAD = {"gpu": "GPU X", "commit": "abc", "date": "2026-01-01T00:00:00Z", "sms": 132, "method": "M",
        "copy_gbps": 2800.0, "config": {"q_heads": 32, "kv_heads": 8, "head_dim": 128, "block_size": 16,
                                        "dtype": "bf16"}}  # JSON from before --blocks: shuffled blocks


def row(mode, b, ctx, bik_ms, torch_ms, **extra):
    r = {"mode": mode, "batch": b, "ctx": ctx, "bik_ms": bik_ms, "bik_call_ms": bik_ms * 1.1, "bik_tflops": 400.0,
         "bik_gbps": 100.0, "bik_frac_of_copy": 0.04, "torch_ms": torch_ms, "torch_tflops": 500.0}
    r.update(extra)
    return r


def test_burst_table_without_sustained_runs():
    md = plot_attention.markdown(dict(HEAD, results=[row("prefill", 16, 2048, 1.3, 0.975)]))
    assert "- prefill speed vs SDPA (burst): min 0.75, median 0.75, max 0.75" in md
    assert "- prefill below 0.8x SDPA (burst): 16 x 2048 (0.750)" in md
    assert "| prefill | 16 | 2048 | 1300.0 | 1430.0 | 975.0 | 0.75 | 400.0 | 500.0 | 100 | 4% |" in md
    assert "Under sustained load" not in md


def test_sustained_table():
    s1 = {"ms": 1.4, "energy": True, "mj": 980.0, "watts": 700.0, "sm_mhz": 1875.0}
    t1 = {"ms": 1.12, "energy": True, "mj": 800.0, "watts": 692.0, "sm_mhz": 1680.0}
    s2 = {"ms": 1.2, "energy": False}
    t2 = {"ms": 1.032, "energy": True, "mj": 700.0, "watts": 690.0, "sm_mhz": 1700.0}
    rows = [row("prefill", 16, 2048, 1.3, 0.975, sustained=s1, torch_sustained=t1),
            row("prefill", 1, 8192, 1.12, 0.89, sustained=s2, torch_sustained=t2),
            row("decode", 8, 8192, 0.08, 0.07, sustained={"ms": 0.08, "energy": False})]  # no SDPA side: left out
    md = plot_attention.markdown(dict(HEAD, sustain_method="each 3 s", results=rows))
    assert "## Under sustained load" in md
    assert "- prefill speed vs SDPA under sustained load: min 0.80, median 0.83, max 0.86" in md
    assert "- prefill below 0.8x SDPA (sustained): none" in md  # 0.800 and 0.860: at or above the target
    assert "| prefill | 16 | 2048 | 1400.0 | 1120.0 | 0.80 | 980.000 | 800.000 | 0.82 | 700 | 692 | 1875 | 1680 |" in md
    assert "| prefill | 1 | 8192 | 1200.0 | 1032.0 | 0.86 | - | 700.000 | - | - | 690 | - | 1700 |" in md
    assert "| decode | 8 | 8192 | 80.0 |" not in md.split("## Under sustained load")[1]


def test_block_layout_named():
    md = plot_attention.markdown(dict(HEAD, results=[row("prefill", 1, 512, 0.014, 0.013)]))
    assert "paged KV with block size 16 (shuffled blocks)" in md
    cfg = dict(HEAD["config"], blocks="in-order")
    md = plot_attention.markdown(dict(HEAD, config=cfg, results=[row("prefill", 1, 512, 0.014, 0.013)]))
    assert "paged KV with block size 16 (in-order blocks)" in md
    assert "- prefill below 0.8x SDPA (burst): none" in md

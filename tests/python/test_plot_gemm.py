"""bench/plot_gemm.py's markdown on synthetic `bik bench gemm` JSON: the plain table, and the gated table
(`--gated`: no bandwidth column, the BIK_GEMM_GLU_SWAP modes with '-' where a mode did not apply)."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import plot_gemm  # noqa: E402

HEAD = {"gpu": "GPU X", "commit": "abc", "date": "2026-01-01T00:00:00Z", "dtype": "bf16", "sms": 132,
        "l2_bytes": 50 << 20, "layout": "L", "method": "M", "baseline": "B"}


def test_plain_rows():
    j = dict(HEAD, results=[{"shape": "qkv", "k": 4096, "n": 6144, "m": 256, "bik_ms": 0.025, "cublaslt_ms": 0.024,
                             "bik_tflops": 500.0, "bik_gbps": 2000.0, "ratio": 0.96, "bik_config": "sm90 64x192 tma"}])
    md = plot_gemm.markdown(j)
    assert md.startswith("# GEMM: BIK vs cuBLASLt on GPU X")
    assert "| qkv | 4096 | 6144 | 256 | 25.0 | 24.0 | 500.0 | 2000 | 0.960 | sm90 64x192 tma |" in md


def test_sweep_orders_tiles_by_family_then_shape():
    t = {"64x32": 0.03, "128x128": 0.02, "swap64x144": 0.025, "pair192x80": 0.021, "pair192x64": 0.022}
    j = dict(HEAD, results=[{"shape": "qkv", "k": 4096, "n": 6144, "m": 352, "bik_ms": 0.021, "cublaslt_ms": 0.028,
                             "bik_tflops": 500.0, "bik_gbps": 2000.0, "ratio": 1.33, "bik_config": "sm90 pair192x80 tma",
                             "sm90_tile_ms": t}])
    md = plot_gemm.markdown(j)
    assert "| shape | M | 64x32 | 128x128 | swap64x144 | pair192x64 | pair192x80 | cuBLASLt |" in md
    assert "| qkv | 352 | 30.0 | 20.0 | 25.0 | 22.0 | 21.0* | 28.0 |" in md


def test_gated_rows_and_modes():
    rows = [{"shape": "gate-up", "k": 4096, "n": 24576, "m": 264, "gated": True, "bik_ms": 0.1042,
             "cublaslt_ms": 0.0984, "bik_tflops": 510.0, "ratio": 0.944, "bik_config": "glu-swap 2c192 x 144",
             "glu_swap_ms": {"0": 0.1176, "1": None, "2": 0.1192, "2c": 0.1102, "2c192": 0.1042}}]
    md = plot_gemm.markdown(dict(HEAD, results=rows))
    assert md.startswith("# Gated GEMM (mm_silu_and_mul): BIK vs cuBLASLt + silu_and_mul on GPU X")
    assert "| gate-up | 4096 | 24576 | 264 | 104.2 | 98.4 | 510.0 | 0.944 | glu-swap 2c192 x 144 |" in md
    assert "| shape | M | 0 | 1 | 2 | 2c | 2c192 | baseline |" in md
    assert "| gate-up | 264 | 117.6 | - | 119.2 | 110.2 | 104.2 | 98.4 |" in md


def test_sustained_rows_and_tiles():
    s = {"bik_ms": 0.02543, "base_ms": 0.02424, "ratio": 0.953, "bik_mj": 17.987, "base_mj": 16.594,
         "energy_ratio": 0.923, "bik_watts": 707.0, "base_watts": 685.0, "bik_sm_mhz": 1462.0, "base_sm_mhz": 1402.0}
    tiles = {"128x64": {"ms": 0.03535, "mj": 24.353, "watts": 689.0, "sm_mhz": 1775.0}, "64x192": {"ms": 0.0253}}
    j = dict(HEAD, sustain_method="each side 2 s", results=[
        {"shape": "qkv", "k": 4096, "n": 6144, "m": 256, "bik_ms": 0.021, "cublaslt_ms": 0.021, "bik_tflops": 600.0,
         "bik_gbps": 2600.0, "ratio": 0.99, "bik_config": "sm90 64x192 tma", "sustained": s,
         "sustained_tiles": tiles}])
    md = plot_gemm.markdown(j)
    assert "## Sustained load (--sustain)" in md and "- each side 2 s" in md
    assert "| qkv | 256 | 25.43 | 24.24 | 17.987 | 16.594 | 0.923 | 707 | 685 | 1462 | 1402 |" in md
    assert "| qkv | 256 | 128x64 | 35.35 | 24.353 | 689 | 1775 |" in md
    assert "| qkv | 256 | 64x192 | 25.30 | - | - | - |" in md  # a tile without an NVML reading


def test_no_sustained_section_without_sustain():
    j = dict(HEAD, results=[{"shape": "qkv", "k": 4096, "n": 6144, "m": 256, "bik_ms": 0.025, "cublaslt_ms": 0.024,
                             "bik_tflops": 500.0, "bik_gbps": 2000.0, "ratio": 0.96, "bik_config": "sm90 64x192 tma"}])
    assert "Sustained" not in plot_gemm.markdown(j)

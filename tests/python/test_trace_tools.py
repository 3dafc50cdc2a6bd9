"""bench/trace/serve_runs.py and kernel_roles.py on a synthetic kernel trace whose times are known: two
serving runs of two steps each (so the runs come apart by step count, with no gap between them), the
GEMM roles counted from the attention launch, and each kernel charged from the end of the one before."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRACE_DIR = os.path.join(ROOT, "bench", "trace")
sys.path.insert(0, TRACE_DIR)

import roles  # noqa: E402
import serve_runs  # noqa: E402
import trace_file  # noqa: E402

NAMES = ["embedding_kernel", "rms_norm_kernel", "gemm_kernel<qkv>", "attention_kernel_ws", "gemm_kernel<o>",
         "gemm_kernel<gate_up>", "gemm_kernel<down>", "gemm_kernel<lm_head>", "sample_kernel"]


def step(t, tokens, gemm_us):
    """One step's kernels from time t (ns): embedding (grid y = tokens), norm, q|k|v, attention, o-proj,
    gate|up, down, lm-head (long: 200 us), sampling; a 1 us gap between kernels. Returns rows and the end."""
    rows = []
    plan = [(0, 2), (1, 3), (2, gemm_us), (3, 10), (4, gemm_us), (5, gemm_us), (6, gemm_us), (7, 200), (8, 5)]
    for k, us in plan:
        rows.append((t, t + us * 1000, k, 1, tokens if k == 0 else 1))
        t += us * 1000 + 1000
    return rows, t


def write_trace(path, steps=2):
    rows, t = [], 0
    # run 0: `steps` steps of 256 tokens with 20 us GEMMs; run 1: as many with 30 us GEMMs
    for gemm_us in [20] * steps + [30] * steps:
        r, t = step(t, 256, gemm_us)
        rows += r
    with open(path, "w") as f:
        for s, e, k, gx, gy in rows:
            f.write(f"{s} {e} {k} {gx} {gy}\n")
        f.write("#names\n")
        for i, n in enumerate(NAMES):
            f.write(f"{i} {n}\n")


def test_roles_by_position_after_attention():
    state = {"gemm": 3}
    got = [roles.role_of(n, state, 1000) for n in NAMES[2:8]]
    assert got == ["gemm lm-head/other", "attention", "gemm o-proj", "gemm gate|up", "gemm down", "gemm qkv"]
    assert roles.bucket(256) == "256" and roles.bucket(200) == "193-255" and roles.bucket(1) == "1-64"


def test_long_heads_kernel_is_qkv_not_lm_head():
    # A prefill step's q|k|v GEMM with the heads epilogue runs past 150 us; its mangled name (head size 128,
    # then the split flag) keeps it q|k|v, where a plain GEMM that long in that place is the lm-head.
    pre = "_ZN3bik4cuda11gemm_detail4sm9011gemm_kernelINS2_6ConfigILi128ELi256ELi4ELb0ELb0ELb0EEE13__nv_bfloat16Lb0E"
    tail = "ELb0EEEvNS2_6ParamsE14CUtensorMap_stS8_"
    heads, plain = pre + "Li128" + tail, pre + "Li0" + tail
    assert roles.role_of(heads, {"gemm": 2}, 182000) == "gemm qkv"
    assert roles.role_of(plain, {"gemm": 2}, 182000) == "gemm lm-head"
    assert roles.role_of(pre + "Li128EEEvN", {"gemm": 2}, 1) == "gemm qkv"  # names without the split flag


def test_prefill_step_tokens_from_the_norm_grid():
    # The embedding's grid y stops at 512; the rms_norm after it has one CTA a token (grid x): a step of 2048
    # tokens is bucket 1025-2048, not 385-512; with the token count in the embedding's grid alone, that one.
    rows = [(0, 10, 0, 4, 512), (11, 20, 1, 2048, 1), (21, 30, 0, 4, 256), (31, 40, 1, 1, 1)]
    assert roles.step_tokens(rows, 0) == 2048 and roles.bucket(roles.step_tokens(rows, 0)) == "1025-2048"
    assert roles.step_tokens(rows, 2) == 256


def test_runs_split_by_steps_and_diff(tmp_path):
    path = str(tmp_path / "trace.txt")
    write_trace(path)
    rows, names = trace_file.read(path)
    starts = [i for i in range(len(rows)) if roles.is_step_start(rows, names, i)]
    assert len(starts) == 4
    t0, tb0, st0 = serve_runs.run_times(rows, names, starts[0], starts[2])
    t1, tb1, st1 = serve_runs.run_times(rows, names, starts[2], len(rows))
    assert st0["256"] == 2 and st1["256"] == 2
    # Each kernel is charged its duration plus the 1 us gap before it (the first kernel of a run: none).
    assert t0["gemm o-proj"] == 2 * 21000 and t1["gemm o-proj"] == 2 * 31000
    assert t0["gemm down"] == 2 * 21000 and t1["gemm down"] == 2 * 31000
    assert t1["attention"] == 2 * 11000
    # A step's first GEMM is its first layer's q|k|v (roles.new_step), the one after the last layer the lm-head.
    assert t0["gemm qkv"] == 2 * 21000 and t0["gemm lm-head"] == 2 * 201000
    assert "gemm lm-head/other" not in t0
    # The run's kernels sum to its span (the first kernel's start to the last one's end).
    span1 = rows[-1][1] - rows[starts[2]][0]
    assert sum(t1.values()) == span1
    out = subprocess.run([sys.executable, os.path.join(TRACE_DIR, "serve_runs.py"), path, "2", "--diff", "1", "0",
                          "--layers", "1"], capture_output=True, text=True, check=True).stdout
    assert "run 1 - run 0: 0.1 ms" in out  # 5 GEMMs of the step 10 us longer, two steps: 100 us
    line = next(l for l in out.splitlines() if l.strip().startswith("gemm down") and "/" not in l)
    assert line.split()[-1] == "0.02"
    per_layer = next(l for l in out.splitlines() if l.strip().startswith("gemm down") and "/" in l)
    assert "31.0/21.0" in per_layer.replace(" ", "")


def test_kernel_roles_excl_sums_to_span(tmp_path):
    path = str(tmp_path / "trace.txt")
    write_trace(path, steps=60)  # kernel_roles.py skips parts of fewer than 1000 kernels
    out = subprocess.run([sys.executable, os.path.join(TRACE_DIR, "kernel_roles.py"), path, "1", "excl"],
                         capture_output=True, text=True, check=True).stdout
    first = out.splitlines()[0]
    span, kernel_time = first.split("span ")[1].split(" ms")[0], first.split("kernel time ")[1].split(" ms")[0]
    assert span == kernel_time


def test_host_gaps_reports_calls_before_a_runs_first_kernel(tmp_path):
    # Two runs of two steps; between them (after run 0's last kernel, before run 1's first) a 5 ms host call,
    # and one launch call during run 1's first step: host_gaps.py lists the first under "before its first
    # kernel" (with its distance from that kernel) and the second under the run's first steps.
    path, api = str(tmp_path / "trace.txt"), str(tmp_path / "api.txt")
    write_trace(path)
    rows, names = trace_file.read(path)
    starts = [i for i in range(len(rows)) if roles.is_step_start(rows, names, i)]
    first1 = rows[starts[2]][0]
    end0 = rows[starts[2] - 1][1]
    assert first1 > end0
    with open(api, "w") as f:
        f.write(f"{end0 + 10} {end0 + 10 + 5000000} R cudaMemcpy_v3020\n")
        f.write(f"{first1 + 5} {first1 + 2005} R cudaLaunchKernelExC_v11060\n")
    out = subprocess.run([sys.executable, os.path.join(TRACE_DIR, "host_gaps.py"), path, api, "2", "--first", "1"],
                         capture_output=True, text=True, check=True).stdout
    run1 = out[out.index("run 1:"):]
    before, during = run1[:run1.index("during its first")], run1[run1.index("during its first"):]
    assert "cudaMemcpy_v3020" in before and "total      5.00 ms" in before
    assert "cudaLaunchKernelExC_v11060" in during and "cudaMemcpy" not in during.split("over the run")[0]


def test_step_walls_busy_wall_and_gap_by_role(tmp_path):
    # Two runs of two 256-token steps, a 1 us gap before every kernel: each role's wall is its kernel time plus
    # 1 us, but a run's first kernel (its first step's embedding) is charged from its own start.
    path = str(tmp_path / "trace.txt")
    write_trace(path)
    out = subprocess.run([sys.executable, os.path.join(TRACE_DIR, "step_walls.py"), path, "2", "256"],
                         capture_output=True, text=True, check=True).stdout
    runs = out.split("run 1:")
    assert runs[0].startswith("run 0: 2 steps of 256") and runs[1].startswith(" 2 steps of 256")

    def role(run_text, name):
        line = next(l for l in run_text.splitlines() if l.strip().startswith(name))
        f = line.split()
        return [float(f[i + 1]) for i, w in enumerate(f) if w in ("n/step", "busy", "wall", "gap/step")]

    assert role(runs[0], "attention") == [1.0, 10.0, 11.0, 1.0]
    assert role(runs[0], "gemm o-proj") == [1.0, 20.0, 21.0, 1.0]
    assert role(runs[1], "gemm o-proj") == [1.0, 30.0, 31.0, 1.0]
    assert role(runs[0], "embedding") == [1.0, 2.0, 2.5, 0.5]
    # 300 us (run 1: 340) of kernels a step and 9 gaps of 1 us a step, less the one before each run's first
    # kernel (a run is charged from its first kernel's start): 8.5 us a step.
    assert "busy 0.300 (gaps+overlap 0.009)" in runs[0] and "busy 0.340 (gaps+overlap 0.009)" in runs[1]
    other = subprocess.run([sys.executable, os.path.join(TRACE_DIR, "step_walls.py"), path, "2", "1-64"],
                           capture_output=True, text=True, check=True).stdout
    assert other.splitlines() == ["run 0: no steps of 1-64", "run 1: no steps of 1-64"]

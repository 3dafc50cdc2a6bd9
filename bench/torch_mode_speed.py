#!/usr/bin/env python3
"""Speed of bik's batch-invariant mode against stock torch, op by op and for a Qwen3 forward pass.

    $(scripts/torch_python.sh) bench/torch_mode_speed.py --device cpu --small --out /tmp/torch_mode --name cpu_small
    python3 bench/torch_mode_speed.py --device cuda --commit $(git rev-parse --short HEAD) --out bench/results --name torch_mode_h100

Writes into the --out folder NAME.json (device name, torch version, commit, date, one record per case),
NAME.md (a table: median milliseconds of stock torch and of the mode, and mode/stock: > 1 means the mode is
slower) and NAME.png (mode/stock per case; skipped, saying so, when matplotlib is not installed). Each case
is timed for stock torch and then for the mode in the same process, on the same tensors: warm-up calls, then
the median of --reps timed calls, each between two torch.cuda.synchronize() on CUDA. The extension is
$BIK_TORCH_LIB with python/ (the repository's package), else an installed `bik`, else build-*/src/torch/.
Shapes: the linear layers of an 8B Llama/Qwen3-class model (hidden 4096,
intermediate 14336, vocab 151936) at several token counts, softmax, log_softmax, layer_norm, rms_norm, attention and
a Qwen3 forward pass from a config. --small shrinks every shape for a quick CPU run.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def import_bik_torch():
    if not os.environ.get("BIK_TORCH_LIB"):
        try:
            import bik.torch as bt  # installed with pip install .
            bt.library_path()
            return bt
        except (ImportError, OSError):
            pass
        import glob
        found = sorted(glob.glob(os.path.join(ROOT, "build-*/src/torch/libbik_torch*.so")))
        if not found:
            sys.exit("bik.torch is not installed, BIK_TORCH_LIB is not set and no build-*/src/torch/libbik_torch.so "
                     "was found")
        os.environ["BIK_TORCH_LIB"] = found[0]
    sys.path.insert(0, os.path.join(ROOT, "python"))
    import bik.torch as bt
    bt.library_path()
    return bt


def timed(fn, device, warmup, reps):
    """Median milliseconds of `reps` calls after `warmup` calls; on CUDA each call is timed between two
    synchronizations, so the time covers the kernels, not only their launch."""
    import torch
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def paged(fn):
    """fn with BIK_TORCH_PAGED_ATTENTION=1 (SDPA's opt-in paged kernel, docs/torch.md) while it runs."""
    def run():
        old = os.environ.get("BIK_TORCH_PAGED_ATTENTION")
        os.environ["BIK_TORCH_PAGED_ATTENTION"] = "1"
        try:
            return fn()
        finally:
            if old is None:
                del os.environ["BIK_TORCH_PAGED_ATTENTION"]
            else:
                os.environ["BIK_TORCH_PAGED_ATTENTION"] = old
    return run


def cases(args):
    import torch
    import torch.nn.functional as F

    dev, dt = args.device, getattr(torch, args.dtype)
    g = torch.Generator(device=dev).manual_seed(0)  # on the device: the large inputs are quick to make

    def rnd(*shape):
        return torch.randn(*shape, generator=g, device=dev).to(dt)

    if args.small:
        hidden, inter, vocab, tokens = 256, 768, 2048, [1, 16, 128]
        heads, kv_heads, head_dim, ctx = 4, 2, 64, 128
    else:
        hidden, inter, vocab, tokens = 4096, 14336, 151936, [1, 16, 128, 1024, 4096]
        heads, kv_heads, head_dim, ctx = 32, 8, 128, 2048
    linear_shapes = {"qkv": (hidden + 2 * kv_heads * head_dim, hidden), "o_proj": (hidden, heads * head_dim),
                     "gate_up": (2 * inter, hidden), "down": (hidden, inter), "lm_head": (vocab, hidden)}
    for name, (n, k) in linear_shapes.items():
        w = rnd(n, k)
        for m in tokens:
            x = rnd(m, k)
            yield f"linear {name} M={m} N={n} K={k}", (lambda x=x, w=w: F.linear(x, w))
    for m in tokens[-2:]:
        x = rnd(m, vocab)
        yield f"softmax [{m}, {vocab}]", (lambda x=x: torch.softmax(x, -1))
        yield f"log_softmax f32 [{m}, {vocab}]", (lambda x=x: torch.log_softmax(x, -1, dtype=torch.float32))
    for m in tokens[-2:]:
        x, w, b = rnd(m, hidden), rnd(hidden), rnd(hidden)
        yield f"layer_norm [{m}, {hidden}]", (lambda x=x, w=w, b=b: F.layer_norm(x, (hidden,), w, b))
        yield f"rms_norm [{m}, {hidden}]", (lambda x=x, w=w: F.rms_norm(x, (hidden,), w, 1e-6))
    for lq in (1, min(ctx, tokens[-1])):
        q = rnd(1, heads, lq, head_dim)
        k, v = rnd(1, kv_heads, ctx, head_dim), rnd(1, kv_heads, ctx, head_dim)
        # a decode row (q=1) over the context, and a prefill (q = kv: the paged kernel's shape)
        kk, vv = (k, v) if lq == 1 else (k[:, :, :lq], v[:, :, :lq])
        fn = (lambda q=q, k=kk, v=vv, c=lq > 1: F.scaled_dot_product_attention(q, k, v, is_causal=c, enable_gqa=True))
        kv_len = kk.shape[2]
        yield f"sdpa q={lq} kv={kv_len} H={heads}/{kv_heads} D={head_dim}", fn
        if dt != torch.float32:
            yield f"sdpa q={lq} kv={kv_len} H={heads}/{kv_heads} D={head_dim} (paged)", paged(fn)
    try:
        import transformers
    except ImportError:
        return
    cfg = transformers.Qwen3Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=inter // 4 if args.small else inter,
        num_hidden_layers=2, num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
        max_position_embeddings=max(4096, ctx))
    torch.manual_seed(0)
    model = transformers.Qwen3ForCausalLM._from_config(cfg, attn_implementation="sdpa", torch_dtype=dt).to(dev).eval()
    for batch, length in ((1, 64), (8, 64)) if args.small else ((1, 512), (8, 512), (32, 1)):
        ids = torch.randint(0, vocab, (batch, length), generator=g, device=dev)

        def forward(ids=ids):
            with torch.no_grad():
                return model(ids).logits

        yield f"qwen3 2-layer forward batch={batch} len={length}", forward
        if dt != torch.float32:
            yield f"qwen3 2-layer forward batch={batch} len={length} (paged SDPA)", paged(forward)


def write_plot(path, records, title):
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed: no plot ({path})")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["case"] for r in records]
    ratios = [r["mode_over_stock"] for r in records]
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(records) + 1.5))
    ys = range(len(records))
    ax.barh(ys, ratios, color=["tab:red" if q > 1 else "tab:green" for q in ratios])
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(list(ys))
    ax.set_yticklabels(names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("mode / stock time (median; > 1: the mode is slower)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--small", action="store_true", help="small shapes (quick CPU runs)")
    ap.add_argument("--reps", type=int, default=None, help="timed calls per case (default 5 on CPU, 50 on CUDA)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 2 on CPU, 5 on CUDA)")
    ap.add_argument("--time-budget", type=float, default=None,
                    help="seconds after which the remaining cases are skipped (listed in the outputs)")
    ap.add_argument("--commit", default=os.environ.get("BIK_COMMIT", "unknown"), help="commit (or $BIK_COMMIT)")
    ap.add_argument("--out", default=".", help="output folder (created)")
    ap.add_argument("--name", default=None, help="file name without extension (default torch_mode_DEVICE)")
    args = ap.parse_args()

    import torch
    bt = import_bik_torch()
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch.cuda.is_available() is False")
    if args.device == "cuda" and not bt.has_cuda():
        sys.exit(f"{bt.library_path()} has no CUDA registrations (built without CUDA; see docs/torch.md)")
    reps = args.reps or (5 if args.device == "cpu" else 50)
    warmup = args.warmup if args.warmup is not None else (2 if args.device == "cpu" else 5)
    name = args.name or f"torch_mode_{args.device}"
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, name)
    if args.device == "cuda":
        device_name = torch.cuda.get_device_name()
    else:
        device_name = f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
    print(f"{device_name}, torch {torch.__version__}, {args.dtype}, extension {bt.library_path()}", flush=True)

    meta = {"device": device_name, "device_kind": args.device, "dtype": args.dtype, "small": args.small,
            "torch": torch.__version__, "cuda": torch.version.cuda if args.device == "cuda" else None,
            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32) if args.device == "cuda" else None,
            "extension": bt.library_path(), "commit": args.commit, "reps": reps, "warmup": warmup,
            "statistic": "median ms per call", "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    records, skipped = [], []
    start = time.perf_counter()
    for case, fn in cases(args):
        if args.time_budget and time.perf_counter() - start > args.time_budget:
            skipped.append(case)
            print(f"{case:55s} skipped: --time-budget {args.time_budget:g} s spent", flush=True)
            continue
        stock = timed(fn, args.device, warmup, reps)
        bt.reset_counters()
        with bt.set_batch_invariant_mode():
            mode = timed(fn, args.device, warmup, reps)
        on_stock = {op: c[1] for op, c in bt.counters().items() if c[1]}
        records.append({"case": case, "stock_ms": stock, "mode_ms": mode, "mode_over_stock": mode / stock,
                        "fallbacks": on_stock})
        print(f"{case:55s} stock {stock:9.3f} ms  mode {mode:9.3f} ms  mode/stock {mode / stock:6.2f}", flush=True)
        write_tables(base, meta, records, skipped, complete=False)  # a run stopped midway keeps what it timed
    write_tables(base, meta, records, skipped, complete=True)
    written = [base + ".json", base + ".md"]
    if write_plot(base + ".png", records, f"bik mode vs stock torch, {args.dtype}, {device_name}"):
        written.append(base + ".png")
    print("wrote " + ", ".join(written))


def write_tables(base, meta, records, skipped, complete):
    """NAME.json and NAME.md from the cases timed so far; `complete` is False while the run goes on."""
    meta = dict(meta, complete=complete, skipped=skipped)
    with open(base + ".json", "w") as f:
        json.dump({"meta": meta, "results": records}, f, indent=1)
    reps, warmup = meta["reps"], meta["warmup"]
    lines = [f"# bik batch-invariant mode vs stock torch ({meta['dtype']})", "",
             f"{meta['device']}, torch {meta['torch']}, commit `{meta['commit']}`, {meta['date']}.", "",
             f"Median of {reps} calls after {warmup} warm-up calls"
             + (", each between two torch.cuda.synchronize()" if meta["device_kind"] == "cuda" else "")
             + "; stock and mode timed one after the other in the same run. mode/stock > 1: the mode is slower.",
             "", "| case | stock ms | mode ms | mode/stock |", "|---|---:|---:|---:|"]
    for r in records:
        note = f" (fallbacks: {r['fallbacks']})" if r["fallbacks"] else ""
        lines.append(f"| {r['case']}{note} | {r['stock_ms']:.3f} | {r['mode_ms']:.3f} | {r['mode_over_stock']:.2f} |")
    if skipped:
        lines += ["", f"Not timed (time budget spent): {', '.join(skipped)}."]
    if not complete:
        lines += ["", "The run stopped before its last case: this table is partial."]
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

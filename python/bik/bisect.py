"""Divergence bisection for a Hugging Face transformers model under PyTorch.

The Python counterpart of `bik bisect` (which does the same for the engine's own models): run one prompt
alone and at one row of a batch of other prompts of the same length, capture the output of every module
for the prompt's row in both runs, and name the first module, in forward order, whose bits differ. That
module holds the op whose reduction order changed with the batch.

    python -m bik.bisect --model Qwen/Qwen3-0.6B --prompt-ids 1,2,3 --batch 15
    python -m bik.bisect --config-init qwen3 --batch 31 --mode on    # seeded tiny model, BIK kernels

Exit code 0: every module's output agrees bit for bit; 1: a divergence; 2: bad input.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import asdict, dataclass, field


@dataclass
class Comparison:
    index: int          # forward order (the order in which modules finished)
    name: str           # module path, e.g. "model.layers.3.mlp.down_proj"
    kind: str           # module class
    shape: list
    dtype: str
    differing: int      # elements whose bits differ
    max_abs: float
    max_rel: float
    first_index: list = field(default_factory=list)  # multi-index of the first differing element


@dataclass
class Report:
    batch: int
    position: int
    prompt_ids: list
    modules: list       # [Comparison], every captured module in forward order
    first: Comparison | None

    def to_json(self) -> dict:
        d = asdict(self)
        d["first"] = asdict(self.first) if self.first else None
        return d


def _first_tensor(out):
    import torch
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for o in out:
            t = _first_tensor(o)
            if t is not None:
                return t
    if hasattr(out, "logits") and isinstance(out.logits, torch.Tensor):
        return out.logits
    if hasattr(out, "last_hidden_state") and isinstance(out.last_hidden_state, torch.Tensor):
        return out.last_hidden_state
    return None


def capture(model, input_ids, row: int):
    """Runs model(input_ids) and returns [(name, class, output row `row`)] in the order modules finish.

    The row is copied to the CPU; it is None for outputs without a leading batch dimension."""
    import torch
    records = []
    batch = input_ids.shape[0]

    def hook(name):
        def fn(module, args, out):
            t = _first_tensor(out)
            keep = t is not None and t.dim() > 0 and t.shape[0] == batch and t.is_floating_point()
            records.append((name, type(module).__name__, t[row].detach().to("cpu", copy=True) if keep else None))
        return fn

    handles = [m.register_forward_hook(hook(n or "<model>")) for n, m in model.named_modules()]
    try:
        with torch.no_grad():
            model(input_ids)
    finally:
        for h in handles:
            h.remove()
    return records


def _bits(t):
    import torch
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}
    return t.contiguous().view(ints[t.element_size()])


def compare(alone, batched) -> list:
    if [r[0] for r in alone] != [r[0] for r in batched]:
        raise RuntimeError("the two runs did not call the same modules in the same order")
    out = []
    for i, ((name, kind, a), (_, _, b)) in enumerate(zip(alone, batched)):
        if a is None or b is None:  # not per-row (e.g. a rotary table shared by the batch)
            continue
        if a.shape != b.shape or a.dtype != b.dtype:
            raise RuntimeError(f"{name}: alone {tuple(a.shape)} {a.dtype} vs batched {tuple(b.shape)} {b.dtype}")
        diff = _bits(a) != _bits(b)
        n = int(diff.sum())
        max_abs = max_rel = 0.0
        first = []
        if n:
            af, bf = a.double(), b.double()
            d = (af - bf).abs()
            max_abs = float(d.max())
            max_rel = float((d / af.abs().clamp_min(1e-30)).max())
            first = [int(v) for v in (diff.nonzero()[0] if diff.dim() else [])]
        out.append(Comparison(i, name, kind, list(a.shape), str(a.dtype).replace("torch.", ""), n,
                              max_abs, max_rel, first))
    return out


def bisect(model, prompt_ids, batch: int = 15, position: int | None = None, seed: int = 0) -> Report:
    """Prompt alone vs at row `position` of a batch of `batch` other prompts (random ids, same length)."""
    import torch
    if batch < 0:
        raise ValueError(f"batch must be >= 0, got {batch}")
    if not prompt_ids:
        raise ValueError("the prompt has no tokens")
    vocab = model.config.vocab_size
    bad = [t for t in prompt_ids if not 0 <= t < vocab]
    if bad:
        raise ValueError(f"prompt ids {bad[:5]} are outside the vocabulary [0, {vocab})")
    g = torch.Generator().manual_seed(seed)
    if position is None:
        position = int(torch.randint(0, batch + 1, (1,), generator=g))
    if not 0 <= position <= batch:
        raise ValueError(f"position must be in [0, {batch}], got {position}")
    device = next(model.parameters()).device
    prompt = torch.tensor([prompt_ids], dtype=torch.long)
    others = torch.randint(0, vocab, (batch, len(prompt_ids)), generator=g)
    batched = torch.cat([others[:position], prompt, others[position:]], 0)
    alone = capture(model, prompt.to(device), 0)
    together = capture(model, batched.to(device), position)
    mods = compare(alone, together)
    first = next((m for m in mods if m.differing), None)
    return Report(batch, position, list(prompt_ids), mods, first)


# --config-size: "tiny" is quick on a CPU; "medium" has the widths of a 1-2B model (hidden 2048), where a
# GPU library GEMM picks its kernel by the number of rows: at hidden 256 cuBLAS on an H100 used one kernel
# for 24 and for 768 rows, so stock torch showed no divergence there.
CONFIG_SIZES = {
    "tiny": dict(vocab_size=1024, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024),
    "medium": dict(vocab_size=32768, hidden_size=2048, intermediate_size=6144, num_hidden_layers=4,
                   num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=1024),
}


def tiny_model(arch: str, dtype, seed: int = 0, size: str = "tiny"):
    """A seeded, config-initialised model of a supported family (no download); `size` from CONFIG_SIZES."""
    import torch
    import transformers
    if size not in CONFIG_SIZES:
        raise ValueError(f"--config-size: '{size}' is not one of {', '.join(CONFIG_SIZES)}")
    common = CONFIG_SIZES[size]
    configs = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
               "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
               "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM)}
    if arch not in configs:
        raise ValueError(f"--config-init: '{arch}' is not one of {', '.join(configs)}")
    cfg_cls, model_cls = configs[arch]
    torch.manual_seed(seed)
    return model_cls(cfg_cls(**common)).to(dtype).eval()


def format_report(r: Report) -> str:
    lines = [f"prompt: {len(r.prompt_ids)} tokens, alone vs at row {r.position} of {r.batch + 1} prompts"]
    if r.first is None:
        lines.append(f"no divergence: all {len(r.modules)} module outputs are bitwise identical")
        return "\n".join(lines)
    f = r.first
    lines.append(f"first divergence: {f.name} ({f.kind}), output {f.shape} {f.dtype}: {f.differing} elements "
                 f"differ, max abs {f.max_abs:.3g}, max rel {f.max_rel:.3g}, first at {f.first_index}")
    before = [m for m in r.modules if m.index < f.index]
    lines.append(f"{len(before)} module outputs before it agree bit for bit; "
                 f"{sum(1 for m in r.modules if m.differing)} of {len(r.modules)} differ in all")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bik.bisect", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a Hugging Face model folder or hub id (loaded with AutoModelForCausalLM)")
    src.add_argument("--config-init", metavar="ARCH", help="seeded random small model: llama, qwen2 or qwen3")
    p.add_argument("--config-size", choices=sorted(CONFIG_SIZES), default="tiny",
                   help="widths of the --config-init model: tiny (hidden 256, default) or medium (hidden 2048)")
    p.add_argument("--prompt", help="prompt text (needs the model's tokenizer)")
    p.add_argument("--prompt-ids", help="comma-separated token ids (default: 24 seeded random ids)")
    p.add_argument("--batch", type=int, default=15, help="other prompts in the batch (default 15)")
    p.add_argument("--position", type=int, help="the prompt's row (default: random from --seed)")
    p.add_argument("--seed", type=int, default=0, help="seed of the other prompts, the position, the model")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--mode", choices=["on", "off"], default="off",
                   help="on: run under bik.torch.set_batch_invariant_mode() (needs the built extension)")
    p.add_argument("--json", help="write the report (every module's comparison) as JSON")
    a = p.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("bik.bisect: torch is not installed", file=sys.stderr)
        return 2
    dtype = getattr(torch, a.dtype)
    try:
        if a.model:
            import transformers
            try:  # transformers >= 5 calls it dtype, earlier versions torch_dtype
                model = transformers.AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype).eval()
            except TypeError:
                model = transformers.AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=dtype).eval()
        else:
            model = tiny_model(a.config_init, dtype, a.seed, a.config_size)
        model = model.to(a.device)
        if a.prompt is not None and a.prompt_ids is not None:
            raise ValueError("give --prompt or --prompt-ids, not both")
        if a.prompt is not None:
            if not a.model:
                raise ValueError("--prompt needs --model (a tokenizer); use --prompt-ids with --config-init")
            import transformers
            ids = transformers.AutoTokenizer.from_pretrained(a.model)(a.prompt)["input_ids"]
        elif a.prompt_ids is not None:
            try:
                ids = [int(t) for t in a.prompt_ids.split(",") if t.strip()]
            except ValueError:
                raise ValueError(f"--prompt-ids: '{a.prompt_ids}' is not a comma-separated list of integers")
        else:
            g = torch.Generator().manual_seed(a.seed + 1)
            ids = torch.randint(0, model.config.vocab_size, (24,), generator=g).tolist()
        ctx = contextlib.nullcontext()
        if a.mode == "on":
            from bik import torch as bik_torch
            ctx = bik_torch.set_batch_invariant_mode(True)
        with ctx:
            report = bisect(model, ids, a.batch, a.position, a.seed)
    except (ValueError, OSError, ImportError, RuntimeError) as e:
        print(f"bik.bisect: {e}", file=sys.stderr)
        return 2
    print(f"bik.bisect: {a.model or 'config-init ' + a.config_init} on {a.device}, {a.dtype}, "
          f"batch-invariant mode {a.mode}")
    print(format_report(report))
    if a.json:
        import datetime
        import os
        gpu = torch.cuda.get_device_name() if str(a.device).startswith("cuda") else None
        run = {"model": a.model or f"config-init {a.config_init} ({a.config_size})", "device": a.device, "gpu": gpu,
               "dtype": a.dtype, "mode": a.mode, "torch": torch.__version__,
               "commit": os.environ.get("BIK_COMMIT", "unknown"),
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        with open(a.json, "w") as f:
            json.dump(dict(run=run, **report.to_json()), f, indent=1)
    return 1 if report.first else 0


def _cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    sys.exit(main())

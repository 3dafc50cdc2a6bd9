"""The engine's logits against Hugging Face transformers on the same weights.

Each test runs `bik bisect --dump` (the engine's forward of one prompt, every op's output written to disk),
reads the lm_head rows (F32 logits of every prompt position) and compares them with transformers' logits
for the same token ids, computed in float32 from the same weights on the CPU. The engine (on the CPU, or
on CUDA with BIK_DEVICE=cuda) keeps activations in BF16 between ops (F32 inside each), so the comparison
is a tolerance, not bits: cosine similarity per position, the largest absolute difference relative to
the logits' spread, and the same top-1 token at every position. A control feeds the engine's logits of a
different prompt to the same comparison and requires it to fail, so the tolerance is known to be tight
enough to catch a wrong model.
"""
import json
import os
import pathlib
import subprocess

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (scripts/setup.sh installs it)")
transformers = pytest.importorskip("transformers", reason="transformers is not installed")

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIK = pathlib.Path(os.environ.get("BIK_BIN", ROOT / "build" / "bik"))
DEVICE = os.environ.get("BIK_DEVICE", "cpu")  # where the engine runs: cpu, or cuda on a GPU machine


def bik_logits(model_args, prompt, tmp_path):
    if not BIK.exists():
        pytest.skip(f"bik binary not found at {BIK} (set BIK_BIN or build first)")
    out = tmp_path / "dump"
    cmd = [str(BIK), "bisect", *model_args, "--device", DEVICE, "--prompt", prompt, "--batch", "1",
           "--dump", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    index = json.loads((out / "index.json").read_text())
    lm = [t for t in index["tensors"] if t["name"] == "lm_head"]
    assert len(lm) == 1 and lm[0]["dtype"] == "f32", index["tensors"][-1]
    logits = np.fromfile(out / lm[0]["alone"], dtype=np.float32).reshape(lm[0]["shape"])
    return index["prompt_ids"], logits


def cuda_devices():
    """The number of CUDA devices the bik binary sees (its `info` line), 0 when it cannot tell."""
    if not BIK.exists():
        return 0
    r = subprocess.run([str(BIK), "info"], capture_output=True, text=True, timeout=120)
    for line in r.stdout.splitlines():
        if line.startswith("cuda devices:"):
            return int(line.split(":")[1])
    return 0


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def agreement(ours, ref):
    """(min cosine, max |diff| / std(ref), top-1 equal at every position)."""
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    cos = (ours * ref).sum(-1) / (np.linalg.norm(ours, axis=-1) * np.linalg.norm(ref, axis=-1))
    rel = float(np.abs(ours - ref).max() / ref.std())
    top1 = bool((ours.argmax(-1) == ref.argmax(-1)).all())
    return float(cos.min()), rel, top1


def check_close(ours, ref, min_cos, max_rel):
    cos, rel, top1 = agreement(ours, ref)
    print(f"min cosine {cos:.6f}, max |diff| / std {rel:.4f}, top-1 equal {top1}")
    assert cos >= min_cos, f"cosine {cos} < {min_cos}"
    assert rel <= max_rel, f"max |diff| / std {rel} > {max_rel}"
    assert top1, "the top-1 token differs at some position"


def check_control_fails(ours_other, ref, min_cos, max_rel):
    n = min(len(ours_other), len(ref))
    cos, rel, top1 = agreement(ours_other[:n], ref[:n])
    assert cos < min_cos or rel > max_rel or not top1, "the comparison cannot tell two prompts apart"


PROMPT = "The capital of France is Paris. The capital of Germany is"
OTHER = "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)"


def test_smollm2_gguf_matches_transformers(tmp_path):
    r = subprocess.run(["bash", str(ROOT / "scripts" / "model_path.sh")], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("the embedded SmolLM2 GGUF is not installed (scripts/setup.sh)")
    pytest.importorskip("gguf", reason="transformers needs the gguf package to read GGUF")
    gguf_path = pathlib.Path(r.stdout.strip())
    ids, ours = bik_logits(["--model", str(gguf_path)], PROMPT, tmp_path / "a")
    # transformers dequantises the same Q4_1 blocks; float32 compute is the reference.
    model = transformers.AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32).eval()
    ref = hf_logits(model, ids)
    check_close(ours, ref, min_cos=0.999, max_rel=0.2)
    # The tokenizer read from the same GGUF by transformers gives the engine's ids.
    tok = transformers.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    assert tok(PROMPT, add_special_tokens=False)["input_ids"] == ids
    _, other = bik_logits(["--model", str(gguf_path)], OTHER, tmp_path / "b")
    check_control_fails(other, ref, min_cos=0.999, max_rel=0.2)


def tiny_config(arch):
    common = dict(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  rms_norm_eps=1e-6, initializer_range=0.08, tie_word_embeddings=False)
    if arch == "llama":
        return transformers.LlamaConfig(**common, rope_theta=50000.0)
    if arch == "qwen2":  # tied embeddings, as the small Qwen2 models have
        return transformers.Qwen2Config(**{**common, "tie_word_embeddings": True}, rope_theta=1000000.0)
    if arch == "qwen3":
        return transformers.Qwen3Config(**common, head_dim=128, rope_theta=1000000.0)
    raise ValueError(arch)


MODEL_CLASSES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


@pytest.mark.parametrize("arch,tp", [("llama", 1), ("qwen2", 1), ("qwen3", 1), ("llama", 2), ("qwen3", 2)])
def test_safetensors_folder_matches_transformers(arch, tp, tmp_path):
    """A config-initialised HF model (seeded, BF16 weights) saved with save_pretrained and loaded by bik;
    tp > 1: the model split over that many tensor-parallel ranks (the K-chunk tree) against the same
    reference."""
    if DEVICE == "cuda" and tp > 1 and cuda_devices() < tp:
        pytest.skip(f"--tp {tp} on CUDA needs {tp} GPUs (one rank per GPU); this machine shows {cuda_devices()}")
    torch.manual_seed(1234)
    model = getattr(transformers, MODEL_CLASSES[arch])(tiny_config(arch)).to(torch.bfloat16).eval()
    if arch == "qwen2":  # make the q/k/v biases matter
        with torch.no_grad():
            for layer in model.model.layers:
                for p in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    p.bias.normal_(0.0, 0.5)
    if arch == "qwen3":  # per-head q/k norm weights away from 1
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_norm.weight.uniform_(0.5, 1.5)
                layer.self_attn.k_norm.weight.uniform_(0.5, 1.5)
    folder = tmp_path / arch
    if arch == "qwen2":  # several shards and model.safetensors.index.json, as large checkpoints come
        model.save_pretrained(folder, safe_serialization=True, max_shard_size="300KB")
        assert len(list(folder.glob("model-*.safetensors"))) > 1 and (folder / "model.safetensors.index.json").exists()
    else:
        model.save_pretrained(folder, safe_serialization=True)
    prompt = "Batch invariance: the same prompt, the same bits, whatever else runs."  # bytes become ids
    tp_args = ["--tp", str(tp)] if tp > 1 else []
    ids, ours = bik_logits(["--model", str(folder), *tp_args], prompt, tmp_path / "a")
    assert ids[: len(prompt)] == list(prompt.encode())[: len(ids)]
    ref_bf16 = hf_logits(model, ids)
    ref = hf_logits(model.float(), ids)  # .float() converts in place: the BF16 run comes first
    # The yardstick: transformers' own BF16 forward against its F32 forward. The engine (BF16 activations,
    # F32 inside each op) must stay within a small multiple of that error. Random tiny models have near
    # ties among their logits, so the top-1 token is not compared here (the SmolLM2 test does).
    base_cos, base_rel, _ = agreement(ref_bf16, ref)
    min_cos, max_rel = 1.0 - 4.0 * (1.0 - base_cos), 3.0 * base_rel
    print(f"transformers bf16 vs f32: min cosine {base_cos:.6f}, max |diff| / std {base_rel:.4f}")
    cos, rel, _ = agreement(ours, ref)
    print(f"bik vs transformers f32: min cosine {cos:.6f}, max |diff| / std {rel:.4f}")
    assert cos >= min_cos, f"cosine {cos} < {min_cos} (4x transformers' own bf16 error)"
    assert rel <= max_rel, f"max |diff| / std {rel} > {max_rel} (3x transformers' own bf16 error)"
    _, other = bik_logits(["--model", str(folder), *tp_args], OTHER, tmp_path / "b")
    check_control_fails(other, ref, min_cos, max_rel)

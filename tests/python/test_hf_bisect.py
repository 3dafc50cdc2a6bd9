"""python -m bik.bisect: names the first module of an HF transformers model whose bits change with the batch."""
import os
import pathlib
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (scripts/setup.sh installs it)")
pytest.importorskip("transformers", reason="transformers is not installed")

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))
from bik import bisect as hb  # noqa: E402


def make_batch_variant(linear):
    """Replaces linear.forward by one whose reduction depends on the number of rows: small batches the
    library's float32 GEMM, large ones a float64 GEMM rounded once to float32 (another rounding of every
    sum). A split of K into two halves would be the textbook variant, but a BLAS that blocks K at the same
    half (MKL on some x86 CPUs at K = 2816) gives it the very same bits, and the check would prove nothing."""
    def forward(x):
        rows = x.reshape(-1, x.shape[-1]).shape[0]
        if rows <= 32:
            return torch.nn.functional.linear(x, linear.weight, linear.bias)
        bias = None if linear.bias is None else linear.bias.double()
        return torch.nn.functional.linear(x.double(), linear.weight.double(), bias).to(x.dtype)
    linear.forward = forward


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_names_the_injected_batch_variant_module(arch):
    model = hb.tiny_model(arch, torch.float32, seed=3)
    make_batch_variant(model.model.layers[2].mlp.down_proj)
    ids = list(range(5, 29))
    r = hb.bisect(model, ids, batch=7, position=3, seed=1)
    assert r.first is not None, hb.format_report(r)
    assert r.first.name == "model.layers.2.mlp.down_proj", hb.format_report(r)
    assert r.first.differing > 0 and r.first.max_abs > 0
    before = [m for m in r.modules if m.index < r.first.index]
    assert before and all(m.differing == 0 for m in before)
    # Everything downstream of the variant module inherits the difference, up to the logits.
    assert r.modules[-1].differing > 0
    assert "first divergence: model.layers.2.mlp.down_proj" in hb.format_report(r)


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"))
    return subprocess.run([sys.executable, "-m", "bik.bisect", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_reports_and_writes_json(tmp_path):
    out = tmp_path / "r.json"
    r = run_cli("--config-init", "qwen3", "--batch", "5", "--dtype", "float32", "--json", str(out))
    # Stock torch may or may not vary on this CPU: 0 (no divergence) and 1 (a divergence) are both reports.
    assert r.returncode in (0, 1), r.stderr
    assert "alone vs at row" in r.stdout
    import json
    rep = json.loads(out.read_text())
    assert rep["batch"] == 5 and len(rep["prompt_ids"]) == 24 and len(rep["modules"]) > 20
    assert (rep["first"] is None) == (r.returncode == 0)
    assert rep["run"]["mode"] == "off" and rep["run"]["dtype"] == "float32" and rep["run"]["date"]


@pytest.mark.parametrize("args,message", [
    (["--config-init", "gpt2"], "not one of"),
    (["--config-init", "llama", "--prompt-ids", "1,2,99999"], "outside the vocabulary"),
    (["--config-init", "llama", "--prompt-ids", "1,x"], "not a comma-separated list"),
    (["--config-init", "llama", "--batch", "-1"], "batch must be >= 0"),
    (["--config-init", "llama", "--batch", "3", "--position", "9"], "position must be in [0, 3]"),
    (["--config-init", "llama", "--prompt", "hi"], "--prompt needs --model"),
    (["--config-init", "llama", "--config-size", "huge"], "invalid choice: 'huge'"),
])
def test_cli_bad_input_is_a_clear_error(args, message):
    r = run_cli(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr


def test_medium_config_size_has_the_widths_it_names():
    model = hb.tiny_model("llama", torch.float32, seed=1, size="medium")
    assert model.config.hidden_size == 2048 and model.config.intermediate_size == 6144
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (2048, 2048)
    with pytest.raises(ValueError, match="not one of"):
        hb.tiny_model("llama", torch.float32, size="huge")


def test_mode_on_agrees_where_the_stock_kernels_are_made_variant():
    """Under the BIK mode the linear layers run BIK's GEMM, so an all-layers variant stock path is bypassed."""
    try:
        from bik import torch as bik_torch
        bik_torch.is_batch_invariant_mode_enabled()
    except Exception as e:  # the extension is built by pip install / scripts/test.sh
        pytest.skip(f"bik.torch is not available: {e}")
    model = hb.tiny_model("qwen3", torch.bfloat16, seed=5)
    with bik_torch.set_batch_invariant_mode(True):
        r = hb.bisect(model, list(range(3, 40)), batch=33, position=17, seed=2)
    assert r.first is None, hb.format_report(r)

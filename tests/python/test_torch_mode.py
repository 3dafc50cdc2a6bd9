"""bik.torch: the API, each op against stock torch, each op's rows bitwise equal alone and inside batches,
the loud fallback, negative controls on stock torch, and a Qwen3 model from transformers.

The tensors and models live on the device named by BIK_TEST_DEVICE: "cpu" (the default) or "cuda" (every
test then skips, saying why, when torch sees no GPU or the extension was built without CUDA).

Run: $(scripts/torch_python.sh) -m pytest tests/python -q
     BIK_TEST_DEVICE=cuda BIK_TORCH_LIB=/path/to/libbik_torch.so python3 -m pytest tests/python/test_torch_mode.py -q -rs
"""
import contextlib
import os
import subprocess
import sys
import warnings

import pytest

from conftest import ROOT, load_bik_torch

bt = load_bik_torch()
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

DEVICE = os.environ.get("BIK_TEST_DEVICE", "cpu").strip().lower() or "cpu"
if DEVICE not in ("cpu", "cuda"):
    raise ValueError(f"BIK_TEST_DEVICE={DEVICE!r}: expected cpu or cuda")
if DEVICE == "cuda":
    if not torch.cuda.is_available():
        pytest.skip(f"BIK_TEST_DEVICE=cuda, but torch.cuda.is_available() is False (torch {torch.__version__}, "
                    f"built for CUDA {torch.version.cuda})", allow_module_level=True)
    if not bt.has_cuda():
        pytest.skip(f"BIK_TEST_DEVICE=cuda, but {bt.library_path()} was built without CUDA registrations "
                    "(no nvcc, BIK_CUDA=OFF or a CPU-only torch when it was built)", allow_module_level=True)

# Batch sizes of the row tests (docs/invariance.md): 1..17, around powers of two, and larger.
BATCHES = list(range(1, 18)) + [31, 32, 33, 64, 100]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
TOL = {torch.float32: (2e-5, 2e-5), torch.bfloat16: (2e-2, 2e-2), torch.float16: (2e-3, 2e-3)}


@pytest.fixture(autouse=True)
def _mode_off_around_each_test():
    bt.disable_batch_invariant_mode()
    yield
    bt.disable_batch_invariant_mode()


def bits_equal(a, b):
    """Bitwise equality (NaNs included), dtype and shape included."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))



def test_extension_loads_the_shared_cxx_runtime():
    """The module must use torch's libstdc++, not a private static copy (which crashes in counters())."""
    lib = bt.library_path()
    try:
        dyn = subprocess.run(["readelf", "-d", lib], capture_output=True, text=True, check=True).stdout
    except FileNotFoundError:
        pytest.skip("readelf (binutils) is not installed: cannot read the extension's NEEDED entries")
    needed = [line.split("[", 1)[1].rstrip("]") for line in dyn.splitlines() if "(NEEDED)" in line]
    assert any(n.startswith(("libstdc++.so", "libc++.so")) for n in needed), (lib, needed)
    bt.reset_counters()
    assert bt.counters()["mm"] == (0, 0)  # the string-returning op that crashed with a private runtime

def ran_on_bik(op, fn):
    """Runs fn with the mode on; asserts that aten::op ran on bik and never on the stock kernel."""
    bt.reset_counters()
    with bt.set_batch_invariant_mode():
        out = fn()
    on_bik, on_stock = bt.counters()[op]
    assert on_bik > 0 and on_stock == 0, f"aten::{op}: {on_bik} calls on bik, {on_stock} on the stock kernel"
    return out


def close(got, want, dtype):
    rtol, atol = TOL[dtype]
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    torch.testing.assert_close(got.float(), want.float(), rtol=rtol, atol=atol, equal_nan=True)


# ---- API ----------------------------------------------------------------------------------------------------
def test_enable_disable_and_query():
    assert not bt.is_batch_invariant_mode_enabled()
    bt.enable_batch_invariant_mode()
    assert bt.is_batch_invariant_mode_enabled()
    bt.enable_batch_invariant_mode()  # idempotent
    assert bt.is_batch_invariant_mode_enabled()
    bt.disable_batch_invariant_mode()
    assert not bt.is_batch_invariant_mode_enabled()


def test_context_manager_restores_the_previous_state_and_nests():
    with bt.set_batch_invariant_mode():
        assert bt.is_batch_invariant_mode_enabled()
        with bt.set_batch_invariant_mode(False):
            assert not bt.is_batch_invariant_mode_enabled()
            with bt.set_batch_invariant_mode(True):
                assert bt.is_batch_invariant_mode_enabled()
            assert not bt.is_batch_invariant_mode_enabled()
        assert bt.is_batch_invariant_mode_enabled()
    assert not bt.is_batch_invariant_mode_enabled()
    bt.enable_batch_invariant_mode()
    with pytest.raises(ValueError):
        with bt.set_batch_invariant_mode(False):
            assert not bt.is_batch_invariant_mode_enabled()
            raise ValueError("restores on exceptions too")
    assert bt.is_batch_invariant_mode_enabled()


def test_disable_restores_the_stock_kernels():
    x, w = torch.randn(3, 64).to(DEVICE), torch.randn(64, 64).to(DEVICE)
    bt.reset_counters()
    with bt.set_batch_invariant_mode():
        x @ w
    x @ w
    assert bt.counters()["mm"] == (1, 0)


@pytest.mark.parametrize("module", ["bik", "bik.torch"])
@pytest.mark.parametrize("value,expected", [("1", True), ("0", False), (None, False)])
def test_environment_variable_enables_at_import(module, value, expected):
    env = dict(os.environ)
    env.pop("BIK_BATCH_INVARIANT", None)
    if value is not None:
        env["BIK_BATCH_INVARIANT"] = value
    if env.get("BIK_TORCH_LIB"):  # the repository's package with a built extension (conftest.py)
        env["PYTHONPATH"] = os.pathsep.join(p for p in [os.path.join(ROOT, "python"), env.get("PYTHONPATH")] if p)
    code = f"import {module}, bik.torch as bt; print(bt.is_batch_invariant_mode_enabled())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(expected)


# ---- accuracy, dtypes and shapes against stock torch -------------------------------------------------------
def both(fn):
    """(result with the mode on, result of stock torch)."""
    with bt.set_batch_invariant_mode():
        got = fn()
    return got, fn()


@pytest.mark.parametrize("dtype", DTYPES)
def test_mm_bmm_matmul_linear(dtype):
    torch.manual_seed(1)
    a, b = torch.randn(13, 40).to(DEVICE, dtype), torch.randn(40, 24).to(DEVICE, dtype)
    close(*both(lambda: torch.mm(a, b)), dtype)
    close(*both(lambda: torch.mm(a, b.t().contiguous().t())), dtype)  # [K, N] as a transposed view
    close(*both(lambda: torch.mm(a[:, ::2], b[::2])), dtype)  # strided K
    close(*both(lambda: torch.mm(a[:, :0], b[:0])), dtype)  # K = 0
    x, y = torch.randn(3, 9, 40).to(DEVICE, dtype), torch.randn(3, 40, 17).to(DEVICE, dtype)
    close(*both(lambda: torch.bmm(x, y)), dtype)
    close(*both(lambda: torch.bmm(x, y[:1].expand(3, 40, 17))), dtype)  # batch stride 0
    close(*both(lambda: torch.bmm(x.transpose(1, 2).contiguous().transpose(1, 2), y)), dtype)
    w = torch.randn(24, 40).to(DEVICE, dtype)
    bias = torch.randn(24).to(DEVICE, dtype)
    close(*both(lambda: torch.matmul(x, y)), dtype)
    x4 = torch.randn(2, 3, 5, 40).to(DEVICE, dtype)
    close(*both(lambda: torch.matmul(x4, w.t())), dtype)
    close(*both(lambda: F.linear(x, w)), dtype)
    close(*both(lambda: F.linear(a, w, bias)), dtype)
    close(*both(lambda: F.linear(x, w, bias)), dtype)
    ran_on_bik("mm", lambda: F.linear(x, w))
    ran_on_bik("bmm", lambda: torch.matmul(x, y))


@pytest.mark.parametrize("dtype", DTYPES)
def test_addmm_beta_alpha_and_bias_shapes(dtype):
    torch.manual_seed(2)
    a, b = torch.randn(11, 32).to(DEVICE, dtype), torch.randn(32, 20).to(DEVICE, dtype)
    for self_t in [torch.randn(20), torch.randn(1, 20), torch.randn(11, 20), torch.randn(20).expand(11, 20),
                   torch.randn(11, 1), torch.randn(1)]:
        self_t = self_t.to(DEVICE, dtype)
        for beta, alpha in [(1, 1), (0.5, 2.0), (0.0, 1.0), (1.0, -0.25)]:
            close(*both(lambda: torch.addmm(self_t, a, b, beta=beta, alpha=alpha)), dtype)
            ran_on_bik("addmm", lambda: torch.addmm(self_t, a, b, beta=beta, alpha=alpha))
    # baddbmm, the form attention code uses to add a mask: self broadcast to [B, M, N].
    x, y = torch.randn(3, 7, 32).to(DEVICE, dtype), torch.randn(3, 32, 9).to(DEVICE, dtype)
    for self_t in [torch.randn(3, 7, 9), torch.randn(1, 7, 9), torch.randn(9), torch.randn(7, 1)]:
        self_t = self_t.to(DEVICE, dtype)
        for beta, alpha in [(1, 1), (0.5, 2.0), (0.0, 1.0)]:
            close(*both(lambda: torch.baddbmm(self_t, x, y, beta=beta, alpha=alpha)), dtype)
            ran_on_bik("baddbmm", lambda: torch.baddbmm(self_t, x, y, beta=beta, alpha=alpha))
    nan_self = torch.full((20,), float("nan")).to(DEVICE, dtype)
    got, want = both(lambda: torch.addmm(nan_self, a, b, beta=0))
    assert not got.isnan().any()
    close(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_and_log_softmax(dtype):
    torch.manual_seed(3)
    x = (torch.randn(4, 6, 37) * 4).to(DEVICE, dtype)
    for dim in [-1, 0, 1, 2]:
        close(*both(lambda: torch.softmax(x, dim)), dtype)
        close(*both(lambda: torch.log_softmax(x, dim)), dtype)
        close(*both(lambda: F.softmax(x.transpose(0, 2), dim)), dtype)
    close(*both(lambda: torch.softmax(torch.tensor(1.5).to(DEVICE, dtype), 0)), dtype)
    ran_on_bik("_softmax", lambda: torch.softmax(x, -1))
    ran_on_bik("_log_softmax", lambda: torch.log_softmax(x, 1))
    got, want = both(lambda: torch.log_softmax(x, -1, dtype=torch.float32))
    close(got, want, torch.float32)
    if dtype != torch.float32:
        # half_to_float: stock torch takes it only on CUDA; bik computes it on the CPU too.
        got = ran_on_bik("_log_softmax", lambda: torch.ops.aten._log_softmax(x, -1, True))
        close(got, torch.log_softmax(x.float(), -1), torch.float32)
        got = ran_on_bik("_softmax", lambda: torch.ops.aten._softmax(x, 0, True))
        close(got, torch.softmax(x.float(), 0), torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mean_and_sum(dtype):
    torch.manual_seed(4)
    x = torch.randn(3, 5, 7, 9).to(DEVICE, dtype)
    cases = [dict(dim=-1), dict(dim=1, keepdim=True), dict(dim=(0, 2)), dict(dim=(1, -1), keepdim=True),
             dict(dim=None), dict(dim=-1, dtype=torch.float32), dict(dim=(0, 3), dtype=torch.float32, keepdim=True)]
    for kw in cases:
        close(*both(lambda: torch.mean(x, **kw) if kw.get("dim") is not None else x.mean(**{k: v for k, v in kw.items() if k != "dim"})), dtype)
        close(*both(lambda: torch.sum(x, **kw) if kw.get("dim") is not None else x.sum(**{k: v for k, v in kw.items() if k != "dim"})), dtype)
    close(*both(lambda: x.transpose(1, 3).mean(-1)), dtype)
    close(*both(lambda: x.sum(dim=[])), dtype)
    close(*both(lambda: x[:, :0].sum(1)), dtype)
    close(*both(lambda: x[:, :0].mean(1)), dtype)
    close(*both(lambda: torch.tensor(2.5).to(DEVICE, dtype).sum(0)), dtype)
    ran_on_bik("mean.dim", lambda: x.mean(-1, keepdim=True))
    ran_on_bik("sum.dim_IntList", lambda: x.sum((0, 2)))
    # An integer input cast by dtype= is summed by bik in the float dtype.
    ints = torch.randint(-5, 5, (6, 10)).to(DEVICE)
    got, want = both(lambda: ints.sum(-1, dtype=torch.float32))
    close(got, want, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm(dtype):
    torch.manual_seed(5)
    x = torch.randn(4, 3, 32).to(DEVICE, dtype)
    for w in [None, torch.randn(32).to(DEVICE, dtype), torch.randn(32).to(DEVICE)]:
        for eps in [None, 1e-6]:
            close(*both(lambda: F.rms_norm(x, (32,), w, eps)), dtype)
            ran_on_bik("rms_norm", lambda: F.rms_norm(x, (32,), w, eps))
    w2 = torch.randn(3, 32).to(DEVICE, dtype)
    close(*both(lambda: F.rms_norm(x, (3, 32), w2, 1e-5)), dtype)
    close(*both(lambda: F.rms_norm(x.transpose(0, 1), (32,), None, 1e-5)), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_native_layer_norm(dtype):
    torch.manual_seed(6)
    x = (torch.randn(4, 5, 48) * 3 + 1).to(DEVICE, dtype)
    params = [(None, None), (torch.randn(48).to(DEVICE, dtype), torch.randn(48).to(DEVICE, dtype)),
              (torch.randn(48).to(DEVICE), torch.randn(48).to(DEVICE)), (torch.randn(48).to(DEVICE, dtype), None)]
    for w, b in params:
        for shape in [(48,), (5, 48)]:
            ww = None if w is None else w.expand(*shape[:-1], 48).contiguous()
            bb = None if b is None else b.expand(*shape[:-1], 48).contiguous()
            try:
                want = torch.native_layer_norm(x, shape, ww, bb, 1e-5)
            except RuntimeError:
                # Stock CUDA takes no mixed dtypes (bf16/f16 input, float32 weight); the CPU kernel does. The
                # mode then must either refuse too or agree with the CPU kernel in float32.
                with bt.set_batch_invariant_mode():
                    try:
                        got = torch.native_layer_norm(x, shape, ww, bb, 1e-5)
                    except RuntimeError:
                        continue
                ref = torch.native_layer_norm(x.cpu().float(), shape, None if ww is None else ww.cpu().float(),
                                              None if bb is None else bb.cpu().float(), 1e-5)
                close(got[0].cpu().float(), ref[0].to(dtype).float(), dtype)
                continue
            with bt.set_batch_invariant_mode():
                got = torch.native_layer_norm(x, shape, ww, bb, 1e-5)
            for g, s in zip(got, want):
                assert g.dtype == s.dtype and g.shape == s.shape, (g.dtype, g.shape, s.dtype, s.shape)
            close(got[0], want[0], dtype)
            close(got[1].float(), want[1].float(), dtype)
            close(got[2].float(), want[2].float(), dtype)
            close(*both(lambda: F.layer_norm(x, shape, ww, bb)), dtype)
    ran_on_bik("native_layer_norm", lambda: F.layer_norm(x, (48,)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_scaled_dot_product_attention(dtype):
    torch.manual_seed(7)
    B, H, Hkv, L, S, D = 2, 4, 2, 7, 7, 16
    q = torch.randn(B, L, H, D).to(DEVICE, dtype).transpose(1, 2)  # the strided layout HF models pass
    k, v = torch.randn(B, Hkv, S, D).to(DEVICE, dtype), torch.randn(B, Hkv, S, D).to(DEVICE, dtype)
    kf, vf = k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1)
    sdpa = F.scaled_dot_product_attention
    close(*both(lambda: sdpa(q, kf, vf)), dtype)
    close(*both(lambda: sdpa(q, kf, vf, is_causal=True)), dtype)
    close(*both(lambda: sdpa(q, k, v, is_causal=True, enable_gqa=True)), dtype)
    close(*both(lambda: sdpa(q, kf, vf, scale=0.3)), dtype)
    close(*both(lambda: sdpa(q[:, :, :3], kf, vf, is_causal=True)), dtype)  # L < S, top-left causal
    bool_mask = (torch.rand(B, 1, L, S) > 0.3).to(DEVICE)
    bool_mask[..., 0] = True
    close(*both(lambda: sdpa(q, kf, vf, attn_mask=bool_mask)), dtype)
    float_mask = torch.randn(L, S).to(DEVICE, dtype)
    close(*both(lambda: sdpa(q, kf, vf, attn_mask=float_mask)), dtype)
    dead = bool_mask.clone()
    dead[0, 0, 2] = False  # a query row with no visible key: zeros, as torch's CPU kernel gives (its CUDA
    with bt.set_batch_invariant_mode():  # kernels give other values for such a row, which has no defined
        got = sdpa(q, kf, vf, attn_mask=dead)  # answer), so the reference is the CPU kernel in float32
    want = sdpa(q.cpu().float(), kf.cpu().float(), vf.cpu().float(), attn_mask=dead.cpu())
    assert (got[0, :, 2] == 0).all()
    close(got.cpu().float(), want.to(dtype).float(), dtype)
    close(*both(lambda: sdpa(q[0], kf[0], vf[0], is_causal=True)), dtype)  # 3-D
    ran_on_bik("scaled_dot_product_attention", lambda: sdpa(q, k, v, is_causal=True, enable_gqa=True))


@contextlib.contextmanager
def paged_attention(on=True):
    """BIK_TORCH_PAGED_ATTENTION=1 for the duration (the extension reads it at every call)."""
    old = os.environ.get("BIK_TORCH_PAGED_ATTENTION")
    os.environ["BIK_TORCH_PAGED_ATTENTION"] = "1" if on else "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ["BIK_TORCH_PAGED_ATTENTION"]
        else:
            os.environ["BIK_TORCH_PAGED_ATTENTION"] = old


def with_paged(fn):
    def run(*args):
        with paged_attention():
            return fn(*args)
    return run


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("D", [64, 128])
def test_sdpa_prefill_and_decode_shapes_take_the_paged_kernel(dtype, D):
    """With BIK_TORCH_PAGED_ATTENTION=1, the shapes HF models pass in prefill (L == S, is_causal) and
    decode (L == 1, no mask) run bik's paged attention kernel; other shapes the matrix path. Both match
    stock torch. Without the variable every call takes the matrix path."""
    torch.manual_seed(8)
    B, H, Hkv, S = 3, 8, 2, 37
    q = torch.randn(B, S, H, D).to(DEVICE, dtype).transpose(1, 2)
    k, v = torch.randn(B, Hkv, S, D).to(DEVICE, dtype), torch.randn(B, Hkv, S, D).to(DEVICE, dtype)
    kf, vf = k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1)
    sdpa = F.scaled_dot_product_attention
    cases = {
        "prefill": lambda: sdpa(q, kf, vf, is_causal=True),
        "prefill_gqa": lambda: sdpa(q, k, v, is_causal=True, enable_gqa=True),
        "prefill_scale": lambda: sdpa(q, kf, vf, is_causal=True, scale=0.05),
        "decode": lambda: sdpa(q[:, :, -1:], kf, vf),
        "decode_gqa": lambda: sdpa(q[:, :, -1:], k, v, enable_gqa=True),
        "decode_3d": lambda: sdpa(q[0, :, -1:], kf[0], vf[0]),
    }
    for name, fn in cases.items():
        with paged_attention():
            close(*both(fn), dtype)
            bt.reset_counters()
            with bt.set_batch_invariant_mode():
                fn()
            assert bt.counters()["scaled_dot_product_attention[paged]"][0] == 1, name
        bt.reset_counters()
        with bt.set_batch_invariant_mode():
            fn()
        assert bt.counters()["scaled_dot_product_attention[paged]"][0] == 0, name
    # A masked call and a non-causal prefill stay on the matrix path.
    with paged_attention():
        for fn in (lambda: sdpa(q, kf, vf), lambda: sdpa(q, kf, vf, attn_mask=torch.ones(S, S, dtype=torch.bool,
                                                                                      device=q.device))):
            bt.reset_counters()
            with bt.set_batch_invariant_mode():
                fn()
            assert bt.counters()["scaled_dot_product_attention[paged]"][0] == 0
            assert bt.counters()["scaled_dot_product_attention"][0] == 1


# ---- rows alone vs inside batches, bitwise ----------------------------------------------------------------
def batch_invariance_diffs(row_fn, make_rows, target, batches=BATCHES, seed=0):
    """Places `target` (one row of the batched dim) at a random position among random neighbours for
    each batch size; returns the batch sizes whose result for the target differs in any bit from the
    target alone."""
    gen = torch.Generator().manual_seed(seed)
    alone = row_fn(target)
    diffs = []
    for m in batches:
        batch = make_rows(m, gen)
        pos = int(torch.randint(0, m, (1,), generator=gen))
        batch[pos:pos + 1] = target
        out = row_fn(batch)[pos:pos + 1]
        if not bits_equal(out, alone):
            diffs.append(m)
    return diffs


def row_cases(dtype):
    torch.manual_seed(11)
    K, N = 96, 80
    w = torch.randn(N, K).to(DEVICE, dtype)
    bias = torch.randn(N).to(DEVICE, dtype)
    w3 = torch.randn(3, K, 24).to(DEVICE, dtype)
    gamma = torch.randn(K).to(DEVICE, dtype)
    D, S = 16, 9
    kv = torch.randn(2, 4, S, D).to(DEVICE, dtype)
    kv64 = torch.randn(2, 4, 45, 64).to(DEVICE, dtype)
    sdpa = F.scaled_dot_product_attention
    return {
        # name: (function of rows, row shape)
        "mm": (lambda x: x @ w.t(), (K,)),
        "linear": (lambda x: F.linear(x, w, bias), (K,)),
        "addmm_beta_alpha": (lambda x: torch.addmm(bias, x, w.t(), beta=0.5, alpha=2.0), (K,)),
        "bmm": (lambda x: torch.bmm(x.unsqueeze(0).expand(3, -1, -1), w3).transpose(0, 1), (K,)),
        "baddbmm": (lambda x: torch.baddbmm(bias[:24], x.unsqueeze(1), w3[:1].expand(x.shape[0], K, 24), beta=0.5,
                                            alpha=2.0).squeeze(1), (K,)),
        "matmul_3d": (lambda x: torch.matmul(x.view(x.shape[0], 1, K), w.t()), (K,)),
        "softmax": (lambda x: torch.softmax(x, -1), (K,)),
        "log_softmax": (lambda x: torch.log_softmax(x, -1), (K,)),
        "softmax_dim0": (lambda x: torch.softmax(x.t(), 0).t(), (K,)),
        "mean": (lambda x: x.mean(-1, keepdim=True), (K,)),
        "sum": (lambda x: x.sum(-1), (K,)),
        "sum_f32": (lambda x: x.sum(-1, dtype=torch.float32), (K,)),
        "rms_norm": (lambda x: F.rms_norm(x, (K,), gamma, 1e-6), (K,)),
        "layer_norm": (lambda x: F.layer_norm(x, (K,), gamma, bias[:1].expand(K).contiguous()), (K,)),
        # attention: the batched dim is the sequence; each has its own keys and values
        "sdpa_causal": (lambda x: sdpa(x, torch.cat([kv[:1]] * x.shape[0]) + x[:, :1, :1, :1],
                                      torch.cat([kv[1:]] * x.shape[0]), is_causal=True), (4, S, D)),
        "sdpa_gqa": (lambda x: sdpa(x, (x[:, :2] * 0.5).contiguous(), x[:, 2:], enable_gqa=True), (4, S, D)),
        "sdpa_mask": (lambda x: sdpa(x, x, x, attn_mask=torch.ones(S, S, dtype=torch.bool, device=x.device).tril(1)),
                      (4, S, D)),
        # head size 64, BIK_TORCH_PAGED_ATTENTION=1: prefill and decode shapes take the paged kernel for
        # f16/bf16 (f32: the matrix path)
        "sdpa_paged_prefill": (with_paged(lambda x: sdpa(x, (x[:, :2] * 0.5).contiguous(), x[:, 2:], is_causal=True,
                                              enable_gqa=True)), (4, S, 64)),
        "sdpa_paged_decode": (with_paged(lambda x: sdpa(x, kv64[0].expand(x.shape[0], -1, -1, -1) + x[:, :1, :, :1],
                                                        kv64[1].expand(x.shape[0], -1, -1, -1))), (4, 1, 64)),
    }


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_are_bitwise_equal_alone_and_in_batches(dtype):
    failures = {}
    for name, (fn, row_shape) in row_cases(dtype).items():
        make = lambda m, g, rs=row_shape: torch.randn(m, *rs, generator=g).to(DEVICE, dtype)
        target = torch.randn(1, *row_shape, generator=torch.Generator().manual_seed(5)).to(DEVICE, dtype)
        with bt.set_batch_invariant_mode():
            for seed in range(2):
                diffs = batch_invariance_diffs(fn, make, target, seed=seed)
                if diffs:
                    failures[f"{name} seed {seed}"] = diffs
    assert not failures, f"rows differ with the mode on: {failures}"


def test_mode_kernels_run_for_every_row_case():
    for name, (fn, row_shape) in row_cases(torch.float32).items():
        bt.reset_counters()
        with bt.set_batch_invariant_mode():
            fn(torch.randn(5, *row_shape).to(DEVICE))
        counts = bt.counters()
        assert sum(c[0] for c in counts.values()) > 0, name
        assert all(c[1] == 0 for c in counts.values()), (name, counts)


# ---- negative controls: the same harness catches stock torch -----------------------------------------------
def test_negative_control_stock_gemm_varies_with_batch():
    """The harness must catch stock torch's GEMM and see nothing with the mode on.

    CPU: stock f32 GEMM (MKL / oneDNN) takes another path for one row than for many, so a row's bits change
    with the batch size (K = N = 64). bf16 GEMMs of the shapes tried did not vary on the CPU: the rounding
    to bf16 hides the difference.
    CUDA: cuBLAS picks its kernel (GEMV, tile shape, split-K) from M, so the reduction order of a row
    changes with the batch; f32 (no TF32, torch's default) and bf16 with K = N = 4096 (an 8B model's
    hidden size), batch sizes 1..100 and 2048. With the mode no size may differ, in either dtype; without
    it f32 must differ somewhere, and bf16 is only printed (its rounding can hide a changed order)."""
    if DEVICE == "cpu":
        torch.manual_seed(12)
        w = torch.randn(64, 64)
        make = lambda m, g: torch.randn(m, 64, generator=g)
        target = torch.randn(1, 64)
        for fn in (lambda x: x @ w.t(), lambda x: F.linear(x, w)):
            stock = batch_invariance_diffs(fn, make, target)
            assert stock, "stock torch's CPU GEMM did not vary on this machine: the control has no teeth here"
            with bt.set_batch_invariant_mode():
                assert batch_invariance_diffs(fn, make, target) == []
        return
    torch.manual_seed(12)
    K = N = 4096
    batches = BATCHES + [2048]
    stock = {}
    for dtype in (torch.float32, torch.bfloat16):
        w = torch.randn(N, K).to(DEVICE, dtype)
        make = lambda m, g, dt=dtype: torch.randn(m, K, generator=g).to(DEVICE, dt)
        target = torch.randn(1, K).to(DEVICE, dtype)
        for name, fn in (("x @ w.t()", lambda x, w=w: x @ w.t()), ("F.linear", lambda x, w=w: F.linear(x, w))):
            stock[(dtype, name)] = batch_invariance_diffs(fn, make, target, batches)
            with bt.set_batch_invariant_mode():
                assert batch_invariance_diffs(fn, make, target, batches) == [], (dtype, name)
    print(f"stock torch on {torch.cuda.get_device_name()}, K = N = {K}: a row differs from the row alone at "
          f"batch sizes {stock}")
    for name in ("x @ w.t()", "F.linear"):
        assert stock[(torch.float32, name)], (
            f"stock cuBLAS f32 {name} (K = N = {K}) gave a row the same bits alone and in batches {batches}: "
            "the control has no teeth on this GPU")


# Row 0 of a @ b from a[:1] vs from the full product. CPU: f32, 512 x 1024 @ 1024 x 512. CUDA: the example
# of Thinking Machines' "Defeating Nondeterminism in LLM Inference" (B = 2048, D = 4096), in f32 as there
# and in bf16.
PRODUCT_DTYPES = [torch.float32] if DEVICE == "cpu" else [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", PRODUCT_DTYPES)
def test_first_row_of_a_product_alone_vs_in_the_full_product(dtype):
    """The classic demonstration: row 0 of a @ b computed from a[:1] vs taken from the full product.
    Stock torch differs (CPU: MKL / oneDNN; CUDA: cuBLAS); the mode gives a difference of exactly 0."""
    if DEVICE == "cpu":
        a = torch.linspace(-100, 100, 512 * 1024).reshape(512, 1024)
        b = torch.linspace(-100, 100, 1024 * 512).reshape(1024, 512)
    else:
        B, D = 2048, 4096
        a = torch.linspace(-1000, 1000, B * D, device=DEVICE).reshape(B, D).to(dtype)
        b = torch.linspace(-1000, 1000, D * D, device=DEVICE).reshape(D, D).to(dtype)

    # Row 0 of a[:m] @ b against row 0 of the full product, for several row counts m: a library GEMM picks
    # its kernel (tile, split-K) by the shape, so it may agree at m = 1 and differ at another m (cuBLAS on an
    # H100 gave identical bf16 rows at m = 1 for these sizes).
    row_counts = [1] if DEVICE == "cpu" else [1, 2, 3, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]

    def diffs():
        full = torch.mm(a, b)[:1].float()
        return {m: (torch.mm(a[:m], b)[:1].float() - full).abs().max().item() for m in row_counts}

    with bt.set_batch_invariant_mode():
        on = diffs()
    assert all(d == 0.0 for d in on.values()), on
    stock = diffs()
    print(f"stock torch {dtype} on {DEVICE}: max |(a[:m] @ b)[:1] - (a @ b)[:1]| by m: {stock}")
    assert max(stock.values()) > 0.0, (f"stock torch's {dtype} GEMM on {DEVICE} gave the same row for a{list(a.shape)} "
                                       f"@ b{list(b.shape)} at every m in {row_counts}: the control has no teeth "
                                       f"on this machine")


def test_negative_control_split_reduction_is_caught():
    """A deliberately batch-variant sum (the row is split into as many chunks as there are rows) must be
    caught by the same harness, with or without the mode."""

    def split_by_m_sum(x):
        chunks = max(1, min(x.shape[0], x.shape[1]))
        parts = [c.sum(-1, keepdim=True) for c in x.tensor_split(chunks, dim=1)]
        out = parts[0]
        for p in parts[1:]:
            out = out + p
        return out

    make = lambda m, g: torch.randn(m, 333, generator=g).to(DEVICE)
    target = torch.randn(1, 333, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    with bt.set_batch_invariant_mode():
        assert batch_invariance_diffs(split_by_m_sum, make, target)


# ---- the loud fallback --------------------------------------------------------------------------------------
def bik_warnings(record):
    return [w for w in record if "bik batch-invariant mode" in str(w.message)]


def test_float64_mm_falls_back_with_one_warning_and_a_correct_result():
    bt._reset_fallback_warnings()
    a = torch.randn(5, 8, dtype=torch.float64).to(DEVICE)
    b = torch.randn(8, 3, dtype=torch.float64).to(DEVICE)
    bt.reset_counters()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with bt.set_batch_invariant_mode():
            r1 = a @ b
            r2 = torch.mm(a, b)
    got = bik_warnings(record)
    assert len(got) == 1, [str(w.message) for w in record]
    assert "aten::mm" in str(got[0].message) and "NOT batch-invariant" in str(got[0].message)
    assert torch.equal(r1, a @ b) and torch.equal(r2, a @ b)
    assert bt.counters()["mm"] == (0, 2)


def test_fallback_warns_once_per_op_and_integers_are_silent():
    bt._reset_fallback_warnings()
    x = torch.randn(4, 6, dtype=torch.float64).to(DEVICE)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with bt.set_batch_invariant_mode():
            for _ in range(3):
                torch.softmax(x, -1)
                x.sum(-1)
                F.scaled_dot_product_attention(x[None, None].float(), x[None, None].float(), x[None, None].float(),
                                               dropout_p=0.5)
            ints = torch.randint(0, 9, (4, 6)).to(DEVICE)
            ints.sum(-1)
            if DEVICE == "cpu":  # stock torch has no integer mm on CUDA (it raises there, mode or not)
                ints @ ints.t()
    names = sorted(str(w.message).split("aten::")[1].split(" ")[0] for w in bik_warnings(record))
    assert names == ["_softmax", "scaled_dot_product_attention", "sum.dim_IntList"], names


# ---- a transformers Qwen3 model -----------------------------------------------------------------------------
# The seeded Qwen3 of the model tests. On CUDA it is wider: with K = 64 cuBLAS has little room to change a
# row's reduction order with the batch, and the control without the mode needs it to.
QWEN3_SIZES = {
    "cpu": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                head_dim=16),
    "cuda": dict(vocab_size=2048, hidden_size=1024, intermediate_size=3072, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=64),
}


# Head size 64: with f16/bf16, prefill and decode attention take the paged kernel (the CUDA sizes already do).
QWEN3_HD64 = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=64)


def qwen3(dtype, sizes=None):
    transformers = pytest.importorskip("transformers")
    config = transformers.Qwen3Config(**(sizes or QWEN3_SIZES[DEVICE]), num_hidden_layers=2, max_position_embeddings=128,
                                      rms_norm_eps=1e-6, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.Qwen3ForCausalLM._from_config(config, attn_implementation="sdpa", torch_dtype=dtype)
    return model.to(DEVICE).eval()


PROMPT_LEN = 12


def qwen3_diffs(model, batches, seed=0, positions=None, length=PROMPT_LEN):
    """Logits of a prompt alone vs inside batches of same-length random prompts; batch sizes that differ."""
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, model.config.vocab_size, (1, length), generator=gen).to(DEVICE)
    with torch.no_grad():
        alone = model(prompt).logits
        diffs = []
        for m in batches:
            batch = torch.randint(0, model.config.vocab_size, (m, length), generator=gen).to(DEVICE)
            where = positions(m) if positions else [int(torch.randint(0, m, (1,), generator=gen))]
            for p in where:
                batch[p] = prompt[0]
            logits = model(batch).logits
            if not all(bits_equal(logits[p:p + 1], alone) for p in where):
                diffs.append(m)
    return diffs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_qwen3_logits_bitwise_equal_alone_and_in_batches_2_to_64(dtype):
    model = qwen3(dtype)
    bt.reset_counters()
    with bt.set_batch_invariant_mode():
        diffs = qwen3_diffs(model, range(2, 65))
        # The prompt at the first, last and a middle position of one batch.
        diffs += qwen3_diffs(model, [9, 33], seed=1, positions=lambda m: [0, m // 2, m - 1])
        # One-token prompts: the GEMMs of the prompt alone have one row (the control below varies there).
        diffs += qwen3_diffs(model, [2, 3, 4, 8, 16, 17, 32, 33, 64], seed=2, length=1)
    assert diffs == [], f"logits differ with the mode on at batch sizes {diffs}"
    counts = bt.counters()
    for op in ("mm", "scaled_dot_product_attention", "mean.dim"):
        assert counts[op][0] > 0, (op, counts)
    floats_on_stock = {op: c for op, c in counts.items() if c[1] and op not in ("sum.dim_IntList",)}
    assert not floats_on_stock, floats_on_stock


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("paged", [False, True])
def test_qwen3_head_size_64_prefill_and_generate_bitwise_alone_and_in_batches(dtype, paged):
    """Inside a real model: prefill logits alone vs in batches, and greedy generation with the KV cache
    (decode steps of one query row) alone vs in a batch, step by step. The default path holds even when
    padding elsewhere in the batch makes the model pass an attention mask (token 0 is the pad id here);
    the paged kernel (BIK_TORCH_PAGED_ATTENTION=1) holds when no row pads, and is not used otherwise,
    since a masked call takes the other path (docs/torch.md)."""
    model = qwen3(dtype, QWEN3_HD64)
    gen = torch.Generator().manual_seed(3)
    prompt = torch.randint(1, 512, (1, 10), generator=gen).to(DEVICE)
    others = torch.randint(1, 512, (6, 10), generator=gen).to(DEVICE)
    if not paged:
        others[1, :3] = 0  # a left-padded neighbour: the batched calls carry a mask
    batch = torch.cat([others[:2], prompt, others[2:]])
    kw = dict(max_new_tokens=8, do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    bt.reset_counters()
    with paged_attention(paged), bt.set_batch_invariant_mode(), torch.no_grad():
        diffs = qwen3_diffs(model, [2, 3, 5, 8, 17, 32, 64])
        alone = model.generate(prompt, **kw)
        batched = model.generate(batch, **kw)
    assert diffs == [], f"prefill logits differ with the mode on at batch sizes {diffs}"
    assert torch.equal(alone.sequences[0], batched.sequences[2])
    for step, (a, b) in enumerate(zip(alone.logits, batched.logits)):
        assert bits_equal(a[0:1], b[2:3]), f"decode step {step}: logits differ"
    assert (bt.counters()["scaled_dot_product_attention[paged]"][0] > 0) == paged


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_qwen3_without_the_mode(dtype):
    """Negative control: the same test with stock torch.

    CPU: stock GEMMs (MKL / oneDNN) were seen to vary only between one row and several, so a 12-token
    prompt gives the same logits alone and in batches; a one-token prompt (one GEMM row alone) differs in
    f32. bf16 did not differ on the CPU (the rounding to bf16 hides it), which is printed rather than
    asserted.
    CUDA: cuBLAS picks its GEMM kernel from M, so the logits must differ in f32 and in bf16 for some batch
    size in 2..64, with the 12-token or the one-token prompt (the model there has hidden size 1024)."""
    model = qwen3(dtype)
    batches = [2, 3, 4, 8, 16, 17, 32, 33, 64] if DEVICE == "cpu" else list(range(2, 65))
    long_prompt = qwen3_diffs(model, batches)
    one_token = qwen3_diffs(model, batches, seed=2, length=1)
    print(f"stock torch {dtype} on {DEVICE}: logits differ at batch sizes {long_prompt} ({PROMPT_LEN} tokens), "
          f"{one_token} (1 token)")
    if DEVICE == "cpu":
        if dtype == torch.float32:
            assert one_token, "stock torch did not vary: the Qwen3 control has no teeth on this machine"
        return
    size = QWEN3_SIZES[DEVICE]
    assert long_prompt or one_token, (
        f"stock torch {dtype} on {torch.cuda.get_device_name()} gave bitwise-equal logits alone and in every "
        f"batch of 2..64 (Qwen3, 2 layers, hidden {size['hidden_size']}, intermediate "
        f"{size['intermediate_size']}, {size['num_attention_heads']}/{size['num_key_value_heads']} heads, "
        f"SDPA; a {PROMPT_LEN}-token and a 1-token prompt at random positions): the control has no teeth here")

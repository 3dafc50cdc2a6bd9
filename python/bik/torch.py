"""Batch-invariant mode for PyTorch.

While the mode is on, these aten ops run BIK's kernels on CPU tensors (and CUDA tensors in a CUDA build):
mm, addmm, bmm, baddbmm, _softmax, _log_softmax, mean.dim, sum.dim_IntList, rms_norm, native_layer_norm and
scaled_dot_product_attention; torch.matmul, nn.Linear, F.softmax, F.layer_norm and friends reach them
through torch's own decompositions. Each output row's bits then depend only on the reduced sizes, never
on the batch. A call the kernels cannot take (float64, complex, sparse, dropout, ...) runs torch's stock
kernel and warns once per op, naming it. The mode is process-wide. See docs/torch.md.
"""
import contextlib
import glob
import os
import threading

import torch

__all__ = [
    "set_batch_invariant_mode",
    "enable_batch_invariant_mode",
    "disable_batch_invariant_mode",
    "is_batch_invariant_mode_enabled",
    "counters",
    "reset_counters",
    "has_cuda",
    "library_path",
]

_load_lock = threading.Lock()
_library_path = None


def _find_library():
    """The extension: $BIK_TORCH_LIB, else libbik_torch*.so next to this file (where pip installs it)."""
    env = os.environ.get("BIK_TORCH_LIB")
    if env:
        if not os.path.isfile(env):
            raise ImportError(f"BIK_TORCH_LIB={env} does not exist")
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    found = sorted(glob.glob(os.path.join(here, "libbik_torch*.so")))
    if not found:
        raise ImportError(
            "bik.torch: the compiled extension libbik_torch.so is not installed next to "
            f"{__file__}; build it with `pip install .` or point BIK_TORCH_LIB at it"
        )
    return found[0]


def _ops():
    global _library_path
    if _library_path is None:
        with _load_lock:
            if _library_path is None:
                path = _find_library()
                torch.ops.load_library(path)
                _library_path = path
    return torch.ops.bik


def library_path() -> str:
    """Path of the loaded extension."""
    _ops()
    return _library_path


def _set(enabled: bool) -> bool:
    """Sets the mode; returns the previous state."""
    return bool(_ops()._set_enabled(bool(enabled)))


def enable_batch_invariant_mode() -> None:
    _set(True)


def disable_batch_invariant_mode() -> None:
    _set(False)


def is_batch_invariant_mode_enabled() -> bool:
    return bool(_ops()._is_enabled())


@contextlib.contextmanager
def set_batch_invariant_mode(enabled: bool = True):
    """Context manager: the mode is `enabled` inside, and whatever it was before afterwards."""
    previous = _set(enabled)
    try:
        yield
    finally:
        _set(previous)


def counters() -> dict:
    """{aten op: (calls run by bik, calls run by the stock kernel)} since the last reset."""
    out = {}
    for line in _ops()._counters().splitlines():
        name, on_bik, on_stock = line.split()
        out[name] = (int(on_bik), int(on_stock))
    return out


def reset_counters() -> None:
    _ops()._reset_counters()


def has_cuda() -> bool:
    """Whether the extension was built with its CUDA registrations."""
    return bool(_ops()._has_cuda())


def _reset_fallback_warnings() -> None:
    """Lets every op warn again on its next fallback (for tests)."""
    _ops()._reset_fallback_warnings()


# `import bik.torch` with BIK_BATCH_INVARIANT=1 enables the mode even when `bik` was imported before.
if os.environ.get("BIK_BATCH_INVARIANT", "").strip().lower() in ("1", "true", "yes", "on"):
    enable_batch_invariant_mode()

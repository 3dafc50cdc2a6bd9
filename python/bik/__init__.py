"""BIK: batch-invariant kernels.

`bik.torch` registers BIK's kernels for PyTorch's aten ops (docs/torch.md):

    import bik.torch
    with bik.torch.set_batch_invariant_mode():
        logits = model(input_ids).logits

Setting the environment variable BIK_BATCH_INVARIANT=1 turns the mode on when `bik` is imported.
"""
import os as _os

__version__ = "0.1.0"

_ENV = "BIK_BATCH_INVARIANT"


def _env_enabled() -> bool:
    return _os.environ.get(_ENV, "").strip().lower() in ("1", "true", "yes", "on")


if _env_enabled():
    from . import torch as _bik_torch

    _bik_torch.enable_batch_invariant_mode()

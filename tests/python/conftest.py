"""Finds the package for the tests: the extension built in build-torch/ with python/ (the repository's
sources), else an installed `bik` (pip install .). Tests skip, saying why, when torch
or the extension is absent."""
import glob
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _local_library():
    for pattern in ("build-torch/src/torch/libbik_torch*.so", "build-*/src/torch/libbik_torch*.so"):
        found = sorted(glob.glob(os.path.join(ROOT, pattern)))
        if found:
            return found[0]
    return None


if not os.environ.get("BIK_TORCH_LIB"):
    lib = _local_library()
    if lib:
        os.environ["BIK_TORCH_LIB"] = lib
if os.environ.get("BIK_TORCH_LIB"):
    sys.path.insert(0, os.path.join(ROOT, "python"))


def load_bik_torch():
    """Returns the bik.torch module, or skips the calling test module with the reason."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        pytest.skip(f"torch is not installed: {e}", allow_module_level=True)
    try:
        import bik.torch as bt

        bt.library_path()
    except (ImportError, OSError, RuntimeError) as e:
        pytest.skip(f"the bik torch extension is not built or installed: {e}", allow_module_level=True)
    return bt

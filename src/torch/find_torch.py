"""Prints what the extension's build needs to know about the torch it will run with, one item per line:
include dir, lib dir, C++ ABI flag, CUDA version ('' for a CPU build), torch version.

Under pip's build isolation (plain `pip install .`) the build runs with the target environment's
interpreter but without its site-packages on sys.path; the target environment's torch is the one the
package will be imported with, so that is the one to compile against: its site-packages are added back.
"""
import os
import sys
import sysconfig

try:
    import torch
except ImportError:
    for key in ("purelib", "platlib"):
        path = sysconfig.get_paths()[key]
        if path not in sys.path:
            sys.path.append(path)
    import torch

d = os.path.dirname(torch.__file__)
print(os.path.join(d, "include"))
print(os.path.join(d, "lib"))
print(int(torch._C._GLIBCXX_USE_CXX11_ABI))
print(torch.version.cuda or "")
print(torch.__version__)

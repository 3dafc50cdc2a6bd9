import faulthandler
import sys

import torch

faulthandler.enable()
sys.path.insert(0, "python")
import bik.torch as bt  # noqa: E402

step = sys.argv[1] if len(sys.argv) > 1 else "all"
print("abi", torch._C._GLIBCXX_USE_CXX11_ABI, "lib", bt.library_path(), flush=True)
print("c0", bt.counters()["mm"], flush=True)
x, w = torch.randn(3, 64, device="cuda"), torch.randn(64, 64, device="cuda")
print("c1", bt.counters()["mm"], flush=True)
with bt.set_batch_invariant_mode():
    if step != "nomm":
        y = x @ w
print("mode off", flush=True)
torch.cuda.synchronize()
print("synced", flush=True)
print("raw", repr(torch.ops.bik._is_enabled()), flush=True)
print("c2", bt.counters()["mm"], flush=True)

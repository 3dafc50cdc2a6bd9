import sys, torch
print("torch", torch.__version__, torch.version.cuda, "abi", torch._C._GLIBCXX_USE_CXX11_ABI, flush=True)
torch.ops.load_library(sys.argv[1])
print("loaded", flush=True)
print("enabled", torch.ops.bik._is_enabled(), flush=True)
print("has_cuda", torch.ops.bik._has_cuda(), flush=True)
s = torch.ops.bik._counters()
print("counters ok", len(s), flush=True)

// CUDA ops whose kernels do not exist yet: calling one with GPU tensors is a clear error, never a
// silent fallback. Each kernel that lands removes its entry here.
#include "bik/error.h"
#include "core/backend.h"

namespace bik::cuda {
namespace {
[[noreturn]] void no_cuda(const char* what) {
  throw Error(std::string(what) + ": the CUDA backend has no kernel for this op yet; use CPU tensors");
}
}  // namespace

void gemm(const GemmArgs&, Stream) { no_cuda("matmul"); }
}  // namespace bik::cuda

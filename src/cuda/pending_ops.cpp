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

void rms_norm(const TensorView&, const TensorView&, const TensorView&, float, const std::optional<TensorView>&,
              Stream) {
  no_cuda("rms_norm");
}
void layer_norm(const TensorView&, const TensorView&, const std::optional<TensorView>&,
                const std::optional<TensorView>&, float, Stream) {
  no_cuda("layer_norm");
}
void softmax(const TensorView&, const TensorView&, bool, Stream) { no_cuda("softmax"); }
void reduce(const ReduceArgs&, Stream) { no_cuda("sum/mean"); }
void argmax(const TensorView&, const TensorView&, Stream) { no_cuda("argmax"); }
void silu_and_mul(const TensorView&, const TensorView&, Stream) { no_cuda("silu_and_mul"); }
void rotary_embedding(const TensorView&, const TensorView&, const TensorView&, const TensorView&, bool, Stream) {
  no_cuda("rotary_embedding");
}
void embedding(const TensorView&, const TensorView&, const TensorView&, Stream) { no_cuda("embedding"); }
}  // namespace bik::cuda

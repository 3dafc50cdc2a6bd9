// Linked instead of src/cuda/ when the library is built without the CUDA toolkit.
#include "bik/device.h"
#include "bik/graph.h"
#include "bik/error.h"
#include "core/backend.h"
#include "core/memory.h"

namespace bik {
namespace {
[[noreturn]] void no_cuda(const char* what) {
  throw Error(std::string(what) + ": this build of bik has no CUDA backend (configure on a machine with nvcc)");
}
}  // namespace

bool cuda_built() { return false; }
int cuda_device_count() { return 0; }
DeviceProps cuda_device_props(int index) {
  throw Error("cuda_device_props(" + std::to_string(index) + "): this build of bik has no CUDA backend");
}

CudaStream::CudaStream(Device device) : device_(device) { no_cuda("CudaStream"); }
CudaStream::~CudaStream() = default;
void CudaStream::wait_for_default() const { no_cuda("CudaStream"); }
void CudaStream::default_waits() const { no_cuda("CudaStream"); }
CudaGraph::~CudaGraph() = default;
void CudaGraph::begin_capture(Stream) { no_cuda("CudaGraph"); }
void CudaGraph::end_capture(Stream) { no_cuda("CudaGraph"); }
void CudaGraph::launch(Stream) const { no_cuda("CudaGraph"); }

namespace cuda {
void* malloc_bytes(int, int64_t) { no_cuda("cuda allocation"); }
void free_bytes(int, void*) {}
void memcpy_bytes(void*, int, const void*, int, int64_t) { no_cuda("cuda copy"); }
void memset_bytes(void*, int, uint8_t, int64_t) { no_cuda("cuda memset"); }
void memset_bytes_async(void*, int, uint8_t, int64_t, void*) { no_cuda("cuda memset"); }
void synchronize(int) { no_cuda("cuda synchronize"); }

// Unreachable in practice (no CUDA tensor can be allocated), but the dispatcher links against them.
void gemm(const GemmArgs&, Stream) { no_cuda("gemm"); }
void gemm_silu_and_mul(const GemmArgs&, Stream) { no_cuda("mm_silu_and_mul"); }
bool qkv_projection_fused(const QkvProjection&, Stream) { no_cuda("qkv_projection"); }
void rms_norm(const TensorView&, const TensorView&, const TensorView&, float, const std::optional<TensorView>&,
              Stream) {
  no_cuda("rms_norm");
}
void layer_norm(const TensorView&, const TensorView&, const std::optional<TensorView>&,
                const std::optional<TensorView>&, float, const TensorView*, const TensorView*, Stream) {
  no_cuda("layer_norm");
}
void softmax(const TensorView&, const TensorView&, bool, Stream) { no_cuda("softmax"); }
void reduce(const ReduceArgs&, Stream) { no_cuda("sum/mean"); }
void argmax(const TensorView&, const TensorView&, Stream) { no_cuda("argmax"); }
void silu_and_mul(const TensorView&, const TensorView&, Stream) { no_cuda("silu_and_mul"); }
void sum_partials(const TensorView&, const TensorView&, const std::optional<TensorView>&, Stream) {
  no_cuda("sum_partials");
}
void rotary_embedding(const TensorView&, const TensorView&, const TensorView&, const TensorView&, bool, Stream) {
  no_cuda("rotary_embedding");
}
void embedding(const TensorView&, const TensorView&, const TensorView&, bool, Stream) { no_cuda("embedding"); }
void sample(const TensorView&, const TensorView&, const SamplingParams*, Stream) { no_cuda("sample"); }
void logprobs(const TensorView&, const TensorView&, const TensorView&, const TensorView&, const TensorView&, Stream) {
  no_cuda("logprobs");
}
void write_kv_cache(const TensorView&, const TensorView&, const TensorView&, const TensorView&, const TensorView&,
                    Stream) {
  no_cuda("write_kv_cache");
}
void paged_attention(const AttentionArgs&, Stream) { no_cuda("paged_attention"); }

}  // namespace cuda
}  // namespace bik

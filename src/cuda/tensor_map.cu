#include "cuda/tensor_map.h"

#include <cuda_runtime.h>

#include "bik/error.h"

namespace bik::cuda {

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder(const char* what) {
  static void* fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      f = nullptr;
    return f;
  }();
  BIK_CHECK(fn != nullptr, what, ": the driver has no cuTensorMapEncodeTiled");
  return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
}

}  // namespace bik::cuda

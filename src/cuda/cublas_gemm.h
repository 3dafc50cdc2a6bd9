// cuBLASLt as a reference: the speed to beat in `bik bench gemm`, and a negative control for the
// invariance tests. It takes the library's default heuristic (first algorithm, workspace allowed), whose
// kernel choice, tiling and split-K change with M: it is expected to be batch-variant.
#pragma once
#include "core/backend.h"

namespace bik::cuda {

// Same contract as bik::cuda::gemm (f32/f16/bf16 inputs, out input dtype or f32, optional bias), but the
// K dimension of a, w and out's N dimension must be contiguous.
void cublaslt_gemm(const GemmArgs& g, Stream s);

}  // namespace bik::cuda

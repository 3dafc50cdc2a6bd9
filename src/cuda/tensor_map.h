// The driver's tensor-map encoder (cuTensorMapEncodeTiled), looked up once through the runtime, for the
// kernels that copy boxes with the Hopper copy engine (the sm_90 GEMM, the column sums).
#pragma once
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled

namespace bik::cuda {

// Throws (naming `what`) when the driver has no such entry point.
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder(const char* what);

}  // namespace bik::cuda

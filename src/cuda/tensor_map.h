// The driver's tensor-map encoder, shared by the kernels whose operands the copy engine (TMA) loads.
#pragma once
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled

namespace bik::cuda {

// cuTensorMapEncodeTiled (a host function that fills a TMA descriptor), looked up once; throws an error
// naming `op` when the driver has none.
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder(const char* op);

}  // namespace bik::cuda

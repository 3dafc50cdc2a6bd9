// Host-side plumbing shared by the GEMM families: the device facts that pick a configuration, the
// translation of GemmArgs into a kernel's Problem, and one-time kernel attributes.
#pragma once
#include <cuda_runtime.h>

#include <string>

#include "core/backend.h"
#include "cuda/check.cuh"
#include "cuda/device_info.h"
#include "cuda/gemm_common.cuh"

namespace bik::cuda::gemm_detail {

using cuda::DeviceInfo;
using cuda::use_device;
using cuda::allow_dynamic_smem;

Problem make_problem(const GemmArgs& g);
inline cudaStream_t stream_of(Stream s) { return static_cast<cudaStream_t>(s.handle); }

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }
// Whether a K-major operand can be copied in 16-byte pieces: unit K stride, rows and batches a whole
// number of 8 elements apart (16 bytes of f16/bf16), 16-byte aligned base. Strides of dimensions of
// extent 1 are never used, so they do not count.
inline bool vector_rows(const void* base, int64_t sk, int64_t s_row, int rows, int64_t s_batch, int batch) {
  return sk == 1 && aligned16(base) && (rows == 1 || s_row % 8 == 0) && (batch == 1 || s_batch % 8 == 0);
}


std::string sm80_config_name(const Problem& p, const DeviceInfo& d);
std::string sm90_config_name(const Problem& p, const DeviceInfo& d);
std::string sm90_gated_config_name(const Problem& p, const DeviceInfo& d);  // p: the [M, 2 d] product
std::string f32_config_name(const Problem& p, const DeviceInfo& d);

}  // namespace bik::cuda::gemm_detail

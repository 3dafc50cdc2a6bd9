#include "cuda/device_info.h"

#include <cuda_runtime.h>

#include <deque>
#include <mutex>
#include <set>
#include <utility>

#include "cuda/check.cuh"
#include "cuda/tensor_map.h"

namespace bik::cuda {

const DeviceInfo& use_device(int index) {
  static std::mutex mu;
  static std::deque<DeviceInfo> cache;  // a deque: growing it keeps the references handed out valid (the
                                        // ranks of tensor parallelism call this from several threads)
  int current = -1;
  BIK_CUDA_CHECK(cudaGetDevice(&current));
  if (current != index) BIK_CUDA_CHECK(cudaSetDevice(index));
  std::lock_guard<std::mutex> lock(mu);
  if (int(cache.size()) <= index) cache.resize(size_t(index) + 1);
  DeviceInfo& d = cache[size_t(index)];
  if (d.arch == 0) {
    int major = 0, minor = 0;
    BIK_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, index));
    BIK_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, index));
    BIK_CUDA_CHECK(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, index));
    BIK_CUDA_CHECK(cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, index));
    d.index = index;
    d.arch = major * 10 + minor;
  }
  return d;
}

void allow_dynamic_smem(const void* kernel, int device, int bytes) {
  static std::mutex mu;
  static std::set<std::pair<const void*, int>> done;
  std::lock_guard<std::mutex> lock(mu);
  if (done.count({kernel, device})) return;
  BIK_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  done.insert({kernel, device});
}

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder(const char* op) {
  static void* fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      f = nullptr;
    }
    return f;
  }();
  BIK_CHECK(fn != nullptr, op, ": the driver has no cuTensorMapEncodeTiled");
  return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
}

}  // namespace bik::cuda

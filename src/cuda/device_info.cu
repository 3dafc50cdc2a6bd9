#include "cuda/device_info.h"

#include <cuda_runtime.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <utility>

#include "cuda/check.cuh"

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
    BIK_CUDA_CHECK(cudaDeviceGetAttribute(&d.l2_bytes, cudaDevAttrL2CacheSize, index));
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

bool kernel_built_for(const void* kernel, int device, int arch) {
  static std::mutex mu;
  static std::map<std::pair<const void*, int>, bool> cache;
  std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_pair(kernel, device);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  cudaFuncAttributes attr{};
  const cudaError_t e = cudaFuncGetAttributes(&attr, kernel);
  if (e != cudaSuccess) (void)cudaGetLastError();  // no image for this device
  const bool ok = e == cudaSuccess && attr.ptxVersion >= arch && attr.binaryVersion >= arch;
  cache[key] = ok;
  return ok;
}

namespace {
std::atomic<uint64_t> g_programmatic_launches{0};
}

bool programmatic_launch(const void* kernel) {
  const char* e = std::getenv("BIK_PDL");
  if (e != nullptr && std::strcmp(e, "0") == 0) return false;
  int device = 0;
  BIK_CUDA_CHECK(cudaGetDevice(&device));
  return kernel_built_for(kernel, device, 90);
}

uint64_t programmatic_launches() { return g_programmatic_launches.load(std::memory_order_relaxed); }
void count_programmatic_launch() { g_programmatic_launches.fetch_add(1, std::memory_order_relaxed); }

}  // namespace bik::cuda

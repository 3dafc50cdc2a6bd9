#include "bik/device.h"
#include "core/memory.h"
#include "cuda/check.cuh"

namespace bik {

bool cuda_built() { return true; }

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: report zero, clear the sticky error
    return 0;
  }
  return n;
}

DeviceProps cuda_device_props(int index) {
  int n = cuda_device_count();
  BIK_CHECK(index >= 0 && index < n, "cuda_device_props: device ", index, " does not exist (", n, " CUDA devices)");
  cudaDeviceProp p{};
  BIK_CUDA_CHECK(cudaGetDeviceProperties(&p, index));
  DeviceProps d;
  d.name = p.name;
  d.cc_major = p.major;
  d.cc_minor = p.minor;
  d.sm_count = p.multiProcessorCount;
  d.smem_per_block_optin = int(p.sharedMemPerBlockOptin);
  d.smem_per_sm = int(p.sharedMemPerMultiprocessor);
  d.global_mem = (long long)p.totalGlobalMem;
  d.l2_bytes = p.l2CacheSize;
  return d;
}

namespace cuda {

void* malloc_bytes(int device, int64_t bytes) {
  BIK_CUDA_CHECK(cudaSetDevice(device));
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, size_t(bytes));
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw Error(detail::concat("cuda: cannot allocate ", bytes, " bytes on cuda:", device, ": ",
                               cudaGetErrorString(e)));
  }
  return p;
}
void free_bytes(int, void* p) { cudaFree(p); }
void memcpy_bytes(void* dst, const void* src, int64_t bytes, int kind) {
  cudaMemcpyKind k = kind == 0 ? cudaMemcpyHostToDevice : kind == 1 ? cudaMemcpyDeviceToHost : cudaMemcpyDeviceToDevice;
  BIK_CUDA_CHECK(cudaMemcpy(dst, src, size_t(bytes), k));
}
void memset_bytes(void* dst, uint8_t byte, int64_t bytes) { BIK_CUDA_CHECK(cudaMemset(dst, byte, size_t(bytes))); }
void synchronize(int device) {
  BIK_CUDA_CHECK(cudaSetDevice(device));
  BIK_CUDA_CHECK(cudaDeviceSynchronize());
}

}  // namespace cuda
}  // namespace bik

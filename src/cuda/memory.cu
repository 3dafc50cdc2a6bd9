#include <cstdint>
#include <mutex>
#include <vector>

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

// Device memory comes from each device's stream-ordered pool (cudaMallocAsync / cudaFreeAsync on the
// legacy default stream, which the ops run on), with the pool keeping what is freed. Two reasons, both
// measured on the device: cudaFree waits for the whole device, which stalls the host for every tensor an
// engine step releases; and with several GPUs in one process (tensor parallelism over NCCL) cudaMalloc and
// cudaFree of a peer-enabled device also wait on the other GPUs, so a rank that frees a tensor while its
// peer's all-gather is in flight deadlocks. Pool allocations are neither: no device wait, no peer mapping.
// The calling thread's current device is kept.
namespace {
class KeepDevice {
 public:
  explicit KeepDevice(int device) {  // never throws (also used by deleters); a failed switch shows up
    if (cudaGetDevice(&previous_) != cudaSuccess) previous_ = device;  // in the call that follows it
    if (previous_ != device) cudaSetDevice(device);
  }
  ~KeepDevice() {
    int now = -1;
    if (cudaGetDevice(&now) == cudaSuccess && now != previous_) cudaSetDevice(previous_);
  }
  KeepDevice(const KeepDevice&) = delete;
  KeepDevice& operator=(const KeepDevice&) = delete;

 private:
  int previous_ = 0;
};

void keep_freed_memory(int device) {  // once per device: the pool holds on to freed memory
  static std::mutex mu;
  static std::vector<bool> done;
  std::lock_guard<std::mutex> lock(mu);
  if (int(done.size()) <= device) done.resize(size_t(device) + 1, false);
  if (done[size_t(device)]) return;
  cudaMemPool_t pool = nullptr;
  BIK_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
  uint64_t keep = UINT64_MAX;
  BIK_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
  done[size_t(device)] = true;
}
}  // namespace

void* malloc_bytes(int device, int64_t bytes) {
  KeepDevice keep(device);
  keep_freed_memory(device);
  void* p = nullptr;
  cudaError_t e = cudaMallocAsync(&p, size_t(bytes), nullptr);
  if (e == cudaErrorMemoryAllocation) {
    // The pool may hold freed blocks of other sizes: hand them back to the driver and try once more.
    cudaGetLastError();
    cudaMemPool_t pool = nullptr;
    BIK_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
    BIK_CUDA_CHECK(cudaDeviceSynchronize());
    BIK_CUDA_CHECK(cudaMemPoolTrimTo(pool, 0));
    e = cudaMallocAsync(&p, size_t(bytes), nullptr);
  }
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw Error(detail::concat("cuda: cannot allocate ", bytes, " bytes on cuda:", device, ": ",
                               cudaGetErrorString(e)));
  }
  return p;
}
void free_bytes(int device, void* p) {
  KeepDevice keep(device);
  cudaFreeAsync(p, nullptr);
}
void memcpy_bytes(void* dst, int dst_device, const void* src, int src_device, int64_t bytes) {
  if (dst_device >= 0 && src_device >= 0 && dst_device != src_device) {
    std::vector<char> host(static_cast<size_t>(bytes));
    memcpy_bytes(host.data(), -1, src, src_device, bytes);
    memcpy_bytes(dst, dst_device, host.data(), -1, bytes);
    return;
  }
  KeepDevice keep(dst_device >= 0 ? dst_device : src_device);
  const cudaMemcpyKind k = src_device < 0   ? cudaMemcpyHostToDevice
                           : dst_device < 0 ? cudaMemcpyDeviceToHost
                                            : cudaMemcpyDeviceToDevice;
  BIK_CUDA_CHECK(cudaMemcpy(dst, src, size_t(bytes), k));
}
void memset_bytes(void* dst, int device, uint8_t byte, int64_t bytes) {
  KeepDevice keep(device);
  BIK_CUDA_CHECK(cudaMemset(dst, byte, size_t(bytes)));
}
void memset_bytes_async(void* dst, int device, uint8_t byte, int64_t bytes, void* stream) {
  KeepDevice keep(device);
  BIK_CUDA_CHECK(cudaMemsetAsync(dst, byte, size_t(bytes), static_cast<cudaStream_t>(stream)));
}
void synchronize(int device) {
  KeepDevice keep(device);
  BIK_CUDA_CHECK(cudaDeviceSynchronize());
}

}  // namespace cuda
}  // namespace bik

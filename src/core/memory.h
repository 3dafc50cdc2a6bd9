// Raw device memory, implemented by src/cuda/memory.cu (or src/core/cuda_stub.cpp without CUDA).
#pragma once
#include <cstdint>

namespace bik::cuda {
void* malloc_bytes(int device, int64_t bytes);
void free_bytes(int device, void* p);
// dst_device / src_device: the CUDA device index of each side, -1 for host memory (not both -1). The copy
// runs on the device that holds the memory (pool memory is not reachable from another device's context);
// between two different devices it goes through the host.
void memcpy_bytes(void* dst, int dst_device, const void* src, int src_device, int64_t bytes);
void memset_bytes(void* dst, int device, uint8_t byte, int64_t bytes);
// Ordered on `stream` (a cudaStream_t; nullptr: the default stream), without waiting for it.
void memset_bytes_async(void* dst, int device, uint8_t byte, int64_t bytes, void* stream);
void synchronize(int device);
}  // namespace bik::cuda

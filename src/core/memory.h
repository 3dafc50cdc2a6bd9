// Raw device memory, implemented by src/cuda/memory.cu (or src/core/cuda_stub.cpp without CUDA).
#pragma once
#include <cstdint>

namespace bik::cuda {
void* malloc_bytes(int device, int64_t bytes);
void free_bytes(int device, void* p);
// kind: 0 host->device, 1 device->host, 2 device->device
void memcpy_bytes(void* dst, const void* src, int64_t bytes, int kind);
void memset_bytes(void* dst, uint8_t byte, int64_t bytes);
void synchronize(int device);
}  // namespace bik::cuda

// Random operands on the device for the GEMM tests and benchmark: generating gigabytes on the host and
// copying them over would cost more than the GEMMs being checked.
#include "cuda/gemm.h"
#include "cuda/gemm_host.h"

namespace bik::cuda {
namespace {

__device__ __forceinline__ uint64_t mix(uint64_t x) {  // splitmix64 finaliser
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

template <typename T>
__global__ void fill_kernel(T* data, int64_t rows, int64_t cols, int64_t row_stride, uint64_t seed) {
  const int64_t total = rows * cols;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i - r * cols;
    const uint64_t h = mix(seed * 0x9e3779b97f4a7c15ull + uint64_t(i));
    const float u = float(h >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f;  // [-1, 1), 24 random bits
    data[r * row_stride + c] = gemm_detail::from_f32<T>(u);
  }
}

}  // namespace

void gemm_fill_uniform(const TensorView& t, uint64_t seed, Stream s) {
  BIK_CHECK(t.device.is_cuda(), "gemm_fill_uniform: tensor must be on a CUDA device, got ", t.str());
  if (t.numel() == 0) return;
  gemm_detail::use_device(t.device.index);
  // Rows of the last dim; every leading dim must be packed on top of the (possibly padded) row stride.
  const int64_t cols = t.shape[t.ndim - 1];
  BIK_CHECK(t.stride[t.ndim - 1] == 1, "gemm_fill_uniform: last dim must be contiguous, got ", t.str());
  const int64_t row_stride = t.ndim >= 2 ? t.stride[t.ndim - 2] : cols;
  for (int d = t.ndim - 3; d >= 0; --d)
    BIK_CHECK(t.stride[d] == t.stride[d + 1] * t.shape[d + 1], "gemm_fill_uniform: leading dims must be packed, got ",
              t.str());
  const int64_t rows = t.numel() / cols;
  const int blocks = int(std::min<int64_t>((rows * cols + 255) / 256, 65536));
  cudaStream_t st = gemm_detail::stream_of(s);
  switch (t.dtype) {
    case DType::F32: fill_kernel<float><<<blocks, 256, 0, st>>>(t.ptr<float>(), rows, cols, row_stride, seed); break;
    case DType::F16: fill_kernel<__half><<<blocks, 256, 0, st>>>(t.ptr<__half>(), rows, cols, row_stride, seed); break;
    case DType::BF16:
      fill_kernel<__nv_bfloat16><<<blocks, 256, 0, st>>>(t.ptr<__nv_bfloat16>(), rows, cols, row_stride, seed);
      break;
    default: throw Error("gemm_fill_uniform: float tensors only");
  }
  BIK_CUDA_LAUNCH_CHECK();
}

}  // namespace bik::cuda

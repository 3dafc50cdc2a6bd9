// The per-element arithmetic of rms_norm's output and of the rotary embedding, as every CUDA kernel that
// applies them computes it: the norm kernels (norm.cu), the rope kernels (elementwise.cu) and the q|k|v
// GEMM's heads epilogue (gemm_heads.cuh). One definition each, so the fused kernel and the calls it replaces
// cannot round differently; every step is an explicitly rounded intrinsic, so no contraction into an FMA
// can differ between the kernels that inline them.
#pragma once

namespace bik::cuda {

// 1 / sqrt(mean of squares + eps) from a row's sum of squares ss over n elements.
__device__ __forceinline__ float rms_rstd(float ss, float n, float eps) {
  return __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(ss, n), eps)));
}

// The rotation of the pair (a, b) by the angle whose cosine and sine are c and s.
__device__ __forceinline__ void rotate_pair(float a, float b, float c, float s, float& ra, float& rb) {
  ra = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
  rb = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
}

}  // namespace bik::cuda

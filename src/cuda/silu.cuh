// silu(g) * up for one element, in F32, as every CUDA kernel that applies it computes it: silu_and_mul
// (elementwise.cu) and the gated epilogue of the Hopper GEMM (gemm_sm90.cuh). One definition, so the
// fused product and the two calls it replaces cannot round differently. Each step is an explicitly
// rounded intrinsic, so no contraction into an FMA can differ between the kernels that inline it; for
// g -> -inf, exp overflows to inf and the quotient goes to -0 instead of inf * 0 = NaN.
#pragma once

namespace bik::cuda {

__device__ __forceinline__ float silu_mul(float g, float up) {
  return __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), up);
}

}  // namespace bik::cuda

// 2^x by the hardware's approximation (ex2.approx.ftz.f32: relative error about 2^-22, results below
// 2^-126 flushed to 0): one instruction, a pure function of x on a given architecture. Shared by the
// attention kernels' softmax, the softmax statistics and the sampler's prune test.
#pragma once

namespace bik::cuda {

__device__ __forceinline__ float ex2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

}  // namespace bik::cuda

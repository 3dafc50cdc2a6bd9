// Helpers shared by the GEMM GPU tests.
#pragma once
#include <optional>

#include "bik/device.h"
#include "bik/tensor.h"
#include "core/backend.h"
#include "cuda/gemm.h"

namespace bik::test {

inline Device gpu() { return Device::cuda(0); }
inline Tensor dev(const Shape& s, DType t) { return Tensor::empty(s, t, gpu()); }
// A GPU tensor of uniform values from `seed` (filled on the device).
inline Tensor dev_filled(const Shape& s, DType t, uint64_t seed) {
  Tensor x = dev(s, t);
  cuda::gemm_fill_uniform(x, seed);
  return x;
}

inline GemmArgs make_args(const TensorView& out, const TensorView& a, const TensorView& w,
                          const std::optional<TensorView>& bias) {
  GemmArgs g;
  g.a = as3d(a);
  g.w = as3d(w);
  g.out = as3d(out);
  g.bias = bias;
  g.batch = g.a.shape[0];
  g.m = g.a.shape[1];
  g.k = g.a.shape[2];
  g.n = g.w.shape[1];
  return g;
}

}  // namespace bik::test

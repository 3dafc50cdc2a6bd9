// Helpers shared by the GEMM GPU tests.
#pragma once
#include <cstring>
#include <optional>
#include <string>
#include <vector>

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

// Elements of x and y (any devices, any strides, equal shapes and dtypes) whose bytes differ.
inline int64_t differing(const TensorView& x, const TensorView& y) {
  const Tensor hx = Tensor::empty(x.sizes(), x.dtype), hy = Tensor::empty(y.sizes(), y.dtype);
  copy(hx, x);
  copy(hy, y);
  const size_t es = size_t(dtype_size(x.dtype));
  const auto* px = static_cast<const unsigned char*>(hx.data());
  const auto* py = static_cast<const unsigned char*>(hy.data());
  int64_t n = 0;
  for (int64_t i = 0; i < hx.numel(); ++i) n += std::memcmp(px + size_t(i) * es, py + size_t(i) * es, es) != 0;
  return n;
}

// The sm_90 tile names (cuda::gemm_sm90_tiles) that start with `prefix`: "128x" for the two-consumer
// tiles, "swap" for the swapped ones.
inline std::vector<std::string> sm90_tiles_named(const std::string& prefix) {
  std::vector<std::string> t;
  for (const std::string& name : cuda::gemm_sm90_tiles())
    if (name.rfind(prefix, 0) == 0) t.push_back(name);
  return t;
}

inline std::string shape_str(int64_t m, int64_t n, int64_t k) {
  return "M=" + std::to_string(m) + " N=" + std::to_string(n) + " K=" + std::to_string(k);
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

// The batched operands of the bmm tests: A [B, m, k], its own weights W [B, n, k], and one weight
// [1, n, k] broadcast to every batch (w_shared: batch stride 0).
struct BatchedOperands {
  Tensor a, w, w1;
  TensorView w_shared;
};
inline BatchedOperands batched_operands(DType dt, int64_t B, int64_t m, int64_t n, int64_t k) {
  BatchedOperands b{dev_filled({B, m, k}, dt, 11), dev_filled({B, n, k}, dt, 12), dev_filled({1, n, k}, dt, 13), {}};
  b.w_shared = b.w1.view();
  b.w_shared.shape[0] = B;
  b.w_shared.stride[0] = 0;
  return b;
}

}  // namespace bik::test

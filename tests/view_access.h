// Element access on tensor views of any layout, for tests that compare layouts and build inputs by hand.
#pragma once
#include <cstdint>
#include <cstring>

#include "bik/tensor.h"

namespace bik::test_fixtures {

// Offset in elements of flat (row-major) index `flat`.
inline int64_t offset_of(const TensorView& t, int64_t flat) {
  int64_t off = 0;
  for (int d = t.ndim - 1; d >= 0; --d) {
    off += (flat % t.shape[d]) * t.stride[d];
    flat /= t.shape[d];
  }
  return off;
}
inline char* addr(const TensorView& t, int64_t flat) {
  return static_cast<char*>(t.data) + offset_of(t, flat) * dtype_size(t.dtype);
}
inline double get(const TensorView& t, int64_t flat) {
  const char* p = addr(t, flat);
  switch (t.dtype) {
    case DType::F16: return to_float(*reinterpret_cast<const f16*>(p));
    case DType::BF16: return to_float(*reinterpret_cast<const bf16*>(p));
    case DType::I32: return *reinterpret_cast<const int32_t*>(p);
    default: return *reinterpret_cast<const float*>(p);
  }
}
// Rounds through F32 to the view's dtype (I32 truncates).
inline void set(const TensorView& t, int64_t flat, double v) {
  char* p = addr(t, flat);
  switch (t.dtype) {
    case DType::F16: *reinterpret_cast<f16*>(p) = to_f16(float(v)); break;
    case DType::BF16: *reinterpret_cast<bf16*>(p) = to_bf16(float(v)); break;
    case DType::I32: *reinterpret_cast<int32_t*>(p) = int32_t(v); break;
    default: *reinterpret_cast<float*>(p) = float(v);
  }
}
// The bytes of element `flat`, for bitwise comparisons across layouts.
inline uint32_t bits_at(const TensorView& t, int64_t flat) {
  uint32_t u = 0;
  std::memcpy(&u, addr(t, flat), size_t(dtype_size(t.dtype)));
  return u;
}

}  // namespace bik::test_fixtures

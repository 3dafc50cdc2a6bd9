// Walks a tensor [..., n] as rows of n elements, whatever its strides.
#pragma once
#include <cstdint>

#include "bik/tensor.h"

namespace bik {

struct Rows {
  int64_t count = 1;        // product of leading dims
  int64_t n = 1;            // last dim
  int64_t elem_stride = 1;  // stride of the last dim
  int lead = 0;             // number of leading dims
  std::array<int64_t, kMaxDims> shape{}, stride{};

  explicit Rows(const TensorView& t) {
    lead = t.ndim > 0 ? t.ndim - 1 : 0;
    n = t.ndim > 0 ? t.shape[t.ndim - 1] : 1;
    elem_stride = t.ndim > 0 ? t.stride[t.ndim - 1] : 1;
    for (int d = 0; d < lead; ++d) {
      shape[d] = t.shape[d];
      stride[d] = t.stride[d];
      count *= t.shape[d];
    }
  }
  // Element offset of the first element of row r (row-major order over the leading dims).
  int64_t offset(int64_t r) const {
    int64_t off = 0;
    for (int d = lead - 1; d >= 0; --d) {
      off += (r % shape[d]) * stride[d];
      r /= shape[d];
    }
    return off;
  }
};

}  // namespace bik

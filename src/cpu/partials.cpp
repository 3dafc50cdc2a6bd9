// sum_partials on the CPU: the fixed adjacent-pairs tree over P partials, element by element. Threads
// split rows; each element's tree is the same whatever thread computes it.
#include "core/backend.h"
#include "cpu/parallel.h"
#include "cpu/row_reduce.h"

namespace bik::cpu {

void sum_partials(const TensorView& out, const TensorView& partials, const std::optional<TensorView>& bias, Stream) {
  const int64_t p = partials.shape[0], m = partials.shape[1], n = partials.shape[2];
  std::vector<float> bias_f;
  if (bias) {
    bias_f.resize(size_t(n));
    load_row(bias_f.data(), bias->data, bias->dtype, n, bias->stride[0]);
  }
  parallel_for(m, rows_grain(p * n), [&](int64_t begin, int64_t end) {
    std::vector<float> work(size_t(p * n));
    auto out_buf = row_buffer(n);
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t j = 0; j < p; ++j)
        load_row(work.data() + j * n, elem_ptr(partials.data, DType::F32, j * partials.stride[0] + r * partials.stride[1]),
                 DType::F32, n, partials.stride[2]);
      // Level by level: slot j takes slots 2j and 2j + 1 of the level below.
      for (int64_t width = p / 2; width >= 1; width /= 2)
        for (int64_t j = 0; j < width; ++j) {
          float* dst = work.data() + j * n;
          const float* a = work.data() + 2 * j * n;
          const float* b = a + n;
          for (int64_t i = 0; i < n; ++i) dst[i] = a[i] + b[i];
        }
      RowOut o(out.data, out.dtype, r * out.stride[0], n, out.stride[1], out_buf.data());
      if (bias)
        for (int64_t i = 0; i < n; ++i) o.data[i] = work[size_t(i)] + bias_f[size_t(i)];
      else
        for (int64_t i = 0; i < n; ++i) o.data[i] = work[size_t(i)];
      o.finish();
    }
  });
}

}  // namespace bik::cpu

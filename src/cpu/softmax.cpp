// Softmax and log-softmax over the last dim on the CPU: one thread per row, three passes over the row
// (max, sum of exponentials in the row plan's order, output).
#include <cmath>
#include <vector>

#include "core/backend.h"
#include "core/rows.h"
#include "cpu/parallel.h"
#include "cpu/row_reduce.h"

namespace bik::cpu {

void softmax(const TensorView& out, const TensorView& x, bool log, Stream) {
  const Rows xr(x), outr(out);
  const int64_t n = xr.n;
  check_row_plan(x.dtype, n);

  parallel_for(xr.count, rows_grain(n), [&](int64_t begin, int64_t end) {
    auto x_buf = row_buffer(n);
    auto out_buf = row_buffer(n);
    for (int64_t r = begin; r < end; ++r) {
      const float* v = row_floats(x.data, x.dtype, xr.offset(r), n, xr.elem_stride, x_buf.data());
      // Subtracting the max keeps every exponential in [0, 1]; a row of -inf gives NaN, as in torch.
      const float max = row_max(v, n);
      RowOut o(out.data, out.dtype, outr.offset(r), n, outr.elem_stride, out_buf.data());
      if (log) {
        // Only the sum is needed; o.data may alias v (in place on contiguous f32), so nothing is stored
        // until the final pass, which reads v[i] before writing o.data[i].
        const float log_sum = std::log(row_sum_exp(v, n, max, nullptr));
        for (int64_t i = 0; i < n; ++i) o.data[i] = v[i] - max - log_sum;
      } else {
        // The exponentials are kept in the output row and scaled in place: exp runs once per element.
        const float sum = row_sum_exp(v, n, max, o.data);
        for (int64_t i = 0; i < n; ++i) o.data[i] = o.data[i] / sum;
      }
      o.finish();
    }
  });
}

}  // namespace bik::cpu

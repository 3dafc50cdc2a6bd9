// RMSNorm and LayerNorm on the CPU. Each row is handled start to finish by one thread; its sums follow
// the row plan (cpu/row_reduce.h), so a row's bits never depend on the other rows or the thread count.
#include <cmath>
#include <vector>

#include "core/backend.h"
#include "core/rows.h"
#include "cpu/parallel.h"
#include "cpu/row_reduce.h"

namespace bik::cpu {
namespace {

// A weight or bias vector [n], widened once per call instead of once per row.
std::vector<float> load_vector(const TensorView& v) {
  auto out = row_buffer(v.shape[0]);
  load_row(out.data(), v.data, v.dtype, v.shape[0], v.stride[0]);
  return out;
}

}  // namespace

void rms_norm(const TensorView& out, const TensorView& x, const TensorView& weight, float eps,
              const std::optional<TensorView>& residual, Stream) {
  const Rows xr(x), outr(out);
  const Rows resr(residual ? *residual : x);
  const int64_t n = xr.n;
  check_row_plan(x.dtype, n);
  const std::vector<float> w = load_vector(weight);

  parallel_for(xr.count, rows_grain(n), [&](int64_t begin, int64_t end) {
    auto x_buf = row_buffer(n);
    auto res_buf = row_buffer(n);
    auto out_buf = row_buffer(n);
    for (int64_t r = begin; r < end; ++r) {
      const float* v = row_floats(x.data, x.dtype, xr.offset(r), n, xr.elem_stride, x_buf.data());
      if (residual) {
        // residual := round(x + residual). The norm reads the rounded sum, i.e. exactly what is stored,
        // so a later layer re-reading the residual sees the same values this norm used.
        void* res = elem_ptr(residual->data, residual->dtype, resr.offset(r));
        float* s = res_buf.data();
        load_row(s, res, residual->dtype, n, resr.elem_stride);
        for (int64_t i = 0; i < n; ++i) s[i] = v[i] + s[i];
        round_row(s, n, residual->dtype);
        store_row(res, residual->dtype, n, resr.elem_stride, s);
        v = s;
      }
      const float mean_sq = row_sum_squares(v, n) / float(n);
      const float rstd = 1.0f / std::sqrt(mean_sq + eps);
      RowOut o(out.data, out.dtype, outr.offset(r), n, outr.elem_stride, out_buf.data());
      for (int64_t i = 0; i < n; ++i) o.data[i] = v[i] * rstd * w[size_t(i)];
      o.finish();
    }
  });
}

void layer_norm(const TensorView& out, const TensorView& x, const std::optional<TensorView>& weight,
                const std::optional<TensorView>& bias, float eps, const TensorView* mean_out,
                const TensorView* rstd_out, Stream) {
  const Rows xr(x), outr(out);
  const Rows mr(mean_out ? *mean_out : x), rr(rstd_out ? *rstd_out : x);
  const int64_t n = xr.n;
  check_row_plan(x.dtype, n);
  // A missing weight is a weight of ones (multiplying by 1 is exact); a missing bias is skipped rather
  // than added as zero, because -0 + 0 would turn a -0 result into +0.
  const std::vector<float> w = weight ? load_vector(*weight) : std::vector<float>(static_cast<size_t>(n), 1.0f);
  const std::vector<float> b = bias ? load_vector(*bias) : std::vector<float>();

  parallel_for(xr.count, rows_grain(n), [&](int64_t begin, int64_t end) {
    auto x_buf = row_buffer(n);
    auto out_buf = row_buffer(n);
    for (int64_t r = begin; r < end; ++r) {
      const float* v = row_floats(x.data, x.dtype, xr.offset(r), n, xr.elem_stride, x_buf.data());
      // Two passes: the variance sums squared deviations from the finished mean, which stays accurate
      // when the mean is large compared with the spread (E[x^2] - mean^2 would cancel).
      const float mean = row_sum(v, n) / float(n);
      const float var = row_sum_squared_dev(v, n, mean) / float(n);
      const float rstd = 1.0f / std::sqrt(var + eps);
      if (mean_out) static_cast<float*>(mean_out->data)[mr.offset(r)] = mean;
      if (rstd_out) static_cast<float*>(rstd_out->data)[rr.offset(r)] = rstd;
      RowOut o(out.data, out.dtype, outr.offset(r), n, outr.elem_stride, out_buf.data());
      if (bias)
        for (int64_t i = 0; i < n; ++i) o.data[i] = (v[i] - mean) * rstd * w[size_t(i)] + b[size_t(i)];
      else
        for (int64_t i = 0; i < n; ++i) o.data[i] = (v[i] - mean) * rstd * w[size_t(i)];
      o.finish();
    }
  });
}

}  // namespace bik::cpu

// Softmax and log-softmax over the last dim: one row per CTA, three passes (max, sum of exponentials,
// output), the two reductions by the CTA tree of rows.cuh. The max is exact in any order; the sum's
// order is the plan's halving tree, fixed by n and the dtype.
#include "core/backend.h"
#include "cuda/rows.cuh"
#include "cuda/softmax.cuh"

namespace bik::cuda {
namespace {

template <class Tx, class To>
__global__ void __launch_bounds__(kMaxRowThreads) softmax_kernel(To* out, DevRows out_rows, const Tx* x, DevRows x_rows, int64_t rows, int64_t n,
                               bool log) {
  constexpr int V = 16 / sizeof(Tx);
  extern __shared__ float smem[];
  const int t = threadIdx.x;
  const int64_t L = int64_t(blockDim.x) * V;
  const bool cached = n <= L * kCachedChunks;

  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const Tx* xr = x + x_rows.offset(r);
    const bool x_vec = x_rows.elem_stride == 1 && aligned16_dev(xr);
    float xs[kCachedChunks][V];
    if (cached) {
#pragma unroll
      for (int c = 0; c < kCachedChunks; ++c) {
        int64_t i0 = c * L + int64_t(t) * V;
        if (i0 < n) load_chunk<V>(xr, x_rows.elem_stride, n, i0, x_vec, xs[c]);
      }
    }
    const RowStats st = row_softmax_stats<V>(xr, x_rows.elem_stride, n, x_vec, cached, xs, smem);
    const float log_sum = log ? logf(st.sum) : 0.0f;

    To* orow = out + out_rows.offset(r);
    const bool o_vec = out_rows.elem_stride == 1 && aligned16_dev(orow);
    auto emit = [&](int64_t i0, const float (&xv)[V]) {
      float o[V];
#pragma unroll
      for (int k = 0; k < V; ++k) {
        float d = __fsub_rn(xv[k], st.max);
        o[k] = log ? __fsub_rn(d, log_sum) : __fdiv_rn(expf(d), st.sum);
      }
      store_chunk<V>(orow, out_rows.elem_stride, n, i0, o_vec, o);
    };
    if (cached) {
#pragma unroll
      for (int c = 0; c < kCachedChunks; ++c) {
        int64_t i0 = c * L + int64_t(t) * V;
        if (i0 < n) emit(i0, xs[c]);
      }
    } else {
      for (int64_t i0 = int64_t(t) * V; i0 < n; i0 += L) {
        float xv[V];
        load_chunk<V>(xr, x_rows.elem_stride, n, i0, x_vec, xv);
        emit(i0, xv);
      }
    }
  }
}

}  // namespace

void softmax(const TensorView& out, const TensorView& x, bool log, Stream s) {
  const int64_t n = x.size(-1), rows = x.numel() / n;
  dispatch_float(x.dtype, [&](auto xt) {
    using Tx = decltype(xt);
    constexpr int V = 16 / sizeof(Tx);
    auto launch = [&](auto ot) {
      using To = decltype(ot);
      int threads = row_threads(n, V);
      size_t smem = (size_t(threads) * V + 1) * sizeof(float);
      softmax_kernel<Tx, To><<<grid_for(rows), threads, smem, stream_of(s)>>>(
          out.ptr<To>(), DevRows(out), x.ptr<const Tx>(), DevRows(x), rows, n, log);
      BIK_CUDA_LAUNCH_CHECK();
    };
    if (out.dtype == DType::F32) launch(float{});
    else launch(Tx{});
  });
}

}  // namespace bik::cuda

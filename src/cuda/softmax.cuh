// The statistics of a softmax row (max and sum of exp(x - max)), shared by softmax.cu and the
// top-logprobs kernel of sample.cu so that both see the very same bits for a row.
#pragma once
#include "cuda/rows.cuh"

namespace bik::cuda {

struct RowStats {
  float max, sum;
};

// Called by every thread of a CTA of blockDim.x threads. When `cached`, xs holds this thread's chunks
// (c * L + t * V for c < kCachedChunks, L = blockDim.x * V); otherwise the row is read from xr.
template <int V, class Tx>
__device__ __forceinline__ RowStats row_softmax_stats(const Tx* xr, int64_t stride, int64_t n, bool vec, bool cached,
                                                      const float (&xs)[kCachedChunks][V], float* smem) {
  const int t = threadIdx.x;
  const int64_t L = int64_t(blockDim.x) * V;
  float acc[V];
#pragma unroll
  for (int k = 0; k < V; ++k) acc[k] = -INFINITY;
  MaxOp mx;
  if (cached) {
#pragma unroll
    for (int c = 0; c < kCachedChunks; ++c) {
      int64_t i0 = c * L + int64_t(t) * V;
#pragma unroll
      for (int k = 0; k < V; ++k)
        if (i0 + k < n) acc[k] = mx(acc[k], xs[c][k]);
    }
  } else {
    for (int64_t i0 = int64_t(t) * V; i0 < n; i0 += L) {
      float xv[V];
      load_chunk<V>(xr, stride, n, i0, vec, xv);
#pragma unroll
      for (int k = 0; k < V; ++k)
        if (i0 + k < n) acc[k] = mx(acc[k], xv[k]);
    }
  }
  const float m = block_tree<V>(acc, smem, mx);

#pragma unroll
  for (int k = 0; k < V; ++k) acc[k] = 0.0f;
  if (cached) {
#pragma unroll
    for (int c = 0; c < kCachedChunks; ++c) {
      int64_t i0 = c * L + int64_t(t) * V;
#pragma unroll
      for (int k = 0; k < V; ++k)
        if (i0 + k < n) acc[k] = __fadd_rn(acc[k], expf(__fsub_rn(xs[c][k], m)));
    }
  } else {
    for (int64_t i0 = int64_t(t) * V; i0 < n; i0 += L) {
      float xv[V];
      load_chunk<V>(xr, stride, n, i0, vec, xv);
#pragma unroll
      for (int k = 0; k < V; ++k)
        if (i0 + k < n) acc[k] = __fadd_rn(acc[k], expf(__fsub_rn(xv[k], m)));
    }
  }
  const float s = block_tree<V>(acc, smem, AddOp{});
  return RowStats{m, s};
}

}  // namespace bik::cuda

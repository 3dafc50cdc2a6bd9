// The statistics of a softmax row (max and sum of exp(x - max)), shared by softmax.cu and the
// top-logprobs kernel of sampling.cu so that both see the very same bits for a row.
//
// One read of the row gives both. The plan's lanes (core/policy.h) are taken V at a time, as the chunk
// of one plan thread: chunk i0 = p * L + tau * V of plan thread tau, for passes p = 0, 1, ... in order.
// Each plan thread keeps a running maximum m of the chunks it has seen and, per lane, s = the sum of
// exp(x - m) (stat_exp) over that lane's elements; when a chunk raises m, the V sums are first scaled by
// exp(m_old - m_new). Then M = the row's maximum (exact in any order), each lane's term is
// s * exp(m - M), and S = the terms summed by the plan's halving tree. Every step is a function of the
// lanes' contents and of n and the dtype, never of where the row sits or which kernel layout holds it.
#pragma once
#include <cooperative_groups.h>

#include "cuda/ex2.cuh"
#include "cuda/rows.cuh"

namespace bik::cuda {

struct RowStats {
  float max, sum;
};

// Max under a total order: NaN (canonical) above everything, +0 above -0. Commutative and associative
// to the bit, so any tree gives the same M. Written as selects, not early returns: the returns compiled
// to a branch and a reconvergence per comparison (about nine instructions where these take six).
struct SoftmaxMaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const {
    const float larger = a > b ? a : b;
    const float equal = __uint_as_float(__float_as_uint(a) & __float_as_uint(b));  // +0 over -0
    const float r = a == b ? equal : larger;
    return a != a || b != b ? __uint_as_float(0x7fffffffu) : r;
  }
};

// max.NaN (sm_80 and later): the larger of a and b, and the canonical NaN (0x7fffffff, SoftmaxMaxOp's)
// when either is NaN. Which zero it gives for a +0 / -0 pair is not SoftmaxMaxOp's order, so a zero result
// is redone with SoftmaxMaxOp; any other result is the order's (equal nonzero floats have the same bits).
__device__ __forceinline__ float max_nan(float a, float b) {
  float r;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}

// The largest element of a chunk under SoftmaxMaxOp's order, the value that folding the chunk with it
// gives: max_nan's tree (one instruction a step, NaN on top), with the order's +0 over -0 redone with
// SoftmaxMaxOp on the rare chunk whose maximum is zero.
template <int V>
__device__ __forceinline__ float chunk_max(const float (&x)[V]) {
  float r = x[0];
#pragma unroll
  for (int k = 1; k < V; ++k) r = max_nan(r, x[k]);
  if (r == 0.0f) {
    SoftmaxMaxOp mx;
    r = x[0];
#pragma unroll
    for (int k = 1; k < V; ++k) r = mx(r, x[k]);
  }
  return r;
}

// The exponential of the statistics: exp(d) as 2^(d log2 e), the product rounded once and the power
// taken by ex2_approx. Two instructions where expf takes nine: every element of a row passes through it.
// The rounding of the product is relative to d, so the terms near the maximum (d near 0), which carry the
// sum, keep their accuracy. A pure function of d on a given architecture: the same bits wherever the row
// sits.
__device__ __forceinline__ float stat_exp(float d) { return ex2_approx(__fmul_rn(d, 1.44269504088896341f)); }

// Takes one chunk of a plan thread into its running statistics (m, s[V]). Elements past the row end
// must arrive as -inf: they change neither m nor s (stat_exp(-inf) = 0 is added to s). When the maximum
// grows (or turns NaN) the sums are scaled by stat_exp(m - mn). F32 chunks (V = 4) take chunk_max and the
// scale as a select, exactly 1 when the maximum stays (which leaves the sums as they are): most warps
// have a lane whose maximum grows, so the branch ran anyway; on an H200 f32 softmax 2048 x 32000 took
// 179.6 us against 191.6. 16-bit chunks (V = 8) keep SoftmaxMaxOp's fold and the branch: there both
// forms slowed log_softmax bf16 2048 x 151936 (679.5 and 688.4 us against 664.4;
// logs_h200/69b3223_absorb_ab.log). The same m and s either way.
template <int V>
__device__ __forceinline__ void absorb_chunk(float& m, float (&s)[V], const float (&x)[V]) {
  if constexpr (V == 4) {
    const float c = chunk_max<V>(x);
    float mn = max_nan(m, c);
    if (mn == 0.0f) mn = SoftmaxMaxOp{}(m, c);
    const float grown = stat_exp(__fsub_rn(m, mn));
    const float scale = __float_as_uint(mn) != __float_as_uint(m) ? grown : 1.0f;
#pragma unroll
    for (int k = 0; k < V; ++k) s[k] = __fmul_rn(s[k], scale);
    m = mn;
  } else {
    SoftmaxMaxOp mx;
    float cm = x[0];
#pragma unroll
    for (int k = 1; k < V; ++k) cm = mx(cm, x[k]);
    const float mn = mx(m, cm);
    if (__float_as_uint(mn) != __float_as_uint(m)) {  // a larger maximum (or NaN): rescale the sums
      const float scale = stat_exp(__fsub_rn(m, mn));
#pragma unroll
      for (int k = 0; k < V; ++k) s[k] = __fmul_rn(s[k], scale);
      m = mn;
    }
  }
  if (m != -INFINITY) {  // while m is -inf every element seen is -inf and adds nothing
#pragma unroll
    for (int k = 0; k < V; ++k) s[k] = __fadd_rn(s[k], stat_exp(__fsub_rn(x[k], m)));
  }
}

// A lane's term of the sum once the row's maximum M is known.
__device__ __forceinline__ float softmax_lane_term(float m, float s, float M) {
  return m == -INFINITY ? 0.0f : __fmul_rn(s, stat_exp(__fsub_rn(m, M)));
}

// M and S from every plan thread's running (m, s[V]) (absorb_chunk): the plan's trees over the CTA.
// Called by every thread of a CTA of blockDim.x threads, one plan thread each; smem as below.
template <int V>
__device__ __forceinline__ RowStats finish_row_stats(float m, const float (&s)[V], float* smem) {
  float mm[1] = {m};
  const float M = block_tree<1>(mm, smem, SoftmaxMaxOp{});
  float acc[V];
#pragma unroll
  for (int k = 0; k < V; ++k) acc[k] = softmax_lane_term(m, s[k], M);
  const float S = block_tree<V>(acc, smem, AddOp{});
  return RowStats{M, S};
}

// Called by every thread of a CTA of blockDim.x threads, one plan thread each (blockDim.x * V = the
// plan's lanes). When `cached`, xs holds this thread's chunks (c * L + t * V for c < kCachedChunks,
// L = blockDim.x * V); otherwise the row is read from xr. smem: blockDim.x * V + 1 floats.
template <int V, class Tx>
__device__ __forceinline__ RowStats row_softmax_stats(const Tx* xr, int64_t stride, int64_t n, bool vec, bool cached,
                                                      const float (&xs)[kCachedChunks][V], float* smem) {
  const int t = threadIdx.x;
  const int64_t L = int64_t(blockDim.x) * V;
  float m = -INFINITY, s[V];
#pragma unroll
  for (int k = 0; k < V; ++k) s[k] = 0.0f;
  auto take = [&](int64_t i0, const float (&xv)[V]) {
    float c[V];
#pragma unroll
    for (int k = 0; k < V; ++k) c[k] = i0 + k < n ? xv[k] : -INFINITY;
    absorb_chunk<V>(m, s, c);
  };
  if (cached) {
#pragma unroll
    for (int c = 0; c < kCachedChunks; ++c) {
      const int64_t i0 = c * L + int64_t(t) * V;
      if (i0 < n) take(i0, xs[c]);
    }
  } else {
    for (int64_t i0 = int64_t(t) * V; i0 < n; i0 += L) {
      float xv[V];
      load_chunk<V>(xr, stride, n, i0, vec, xv);
      take(i0, xv);
    }
  }
  return finish_row_stats<V>(m, s, smem);
}

// A CTA of a row's cluster as a row group of all its threads; the rows go along grid y.
__device__ __forceinline__ RowGroup cluster_row_group() {
  RowGroup rg;
  rg.W = int(blockDim.x) >> 5;
  rg.G = int(blockDim.x);
  rg.tg = threadIdx.x;
  rg.first = blockIdx.y;
  rg.step = gridDim.y;
  return rg;
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// The statistics of a row held by a cluster of K CTAs of G = rg.G threads each, one plan thread a thread:
// thread tg of CTA c is plan thread c G + tg (the CTA index is the top bits of the plan thread). m and
// s[V] are this plan thread's running statistics (absorb_chunk). M: this CTA's maximum, then the
// cluster's (exact in any order). S: the plan's tree over lanes j = c G V + tg V + v, whose first log2 K
// steps (w = L / 2 .. G V, the top bits: c) pair CTAs: every CTA folds the K CTAs' terms of its (tg, v)
// the same way, then runs the remaining steps (the G / 32 warps, shuffles, v) on the result. Shared
// memory: scratch (G V floats, the in-CTA tree), terms (G V floats) and cmax (1 float), the last two
// read by the whole cluster. Every thread of the cluster calls; all get the result.
template <int V, int K>
__device__ __forceinline__ RowStats cluster_row_stats(float m, const float (&s)[V], float* scratch, float* terms,
                                                     float* cmax, const RowGroup& rg,
                                                     cooperative_groups::cluster_group& cluster) {
  const int G = rg.G;
  float mm[1][1] = {{m}};
  const float cm = group_tree<1, 1>(mm, scratch, rg, SoftmaxMaxOp{});
  if (rg.tg == 0) *cmax = cm;
  cluster.sync();
  float M = *cluster.map_shared_rank(cmax, 0);
#pragma unroll
  for (int q = 1; q < K; ++q) M = SoftmaxMaxOp{}(M, *cluster.map_shared_rank(cmax, q));
#pragma unroll
  for (int k = 0; k < V; ++k) terms[k * G + rg.tg] = softmax_lane_term(m, s[k], M);
  cluster.sync();
  float b[K][V];
#pragma unroll
  for (int q = 0; q < K; ++q) {
    const float* tq = cluster.map_shared_rank(terms, q);
#pragma unroll
    for (int k = 0; k < V; ++k) b[q][k] = tq[k * G + rg.tg];
  }
  cluster.sync();  // no CTA rewrites its terms or maximum (next row) or exits while others read them
#pragma unroll
  for (int h = K / 2; h >= 1; h /= 2)
#pragma unroll
    for (int q = 0; q < h; ++q)
#pragma unroll
      for (int k = 0; k < V; ++k) b[q][k] = __fadd_rn(b[q][k], b[q + h][k]);
  float acc[1][V];
#pragma unroll
  for (int k = 0; k < V; ++k) acc[0][k] = b[0][k];
  const float S = group_tree<V, 1>(acc, scratch, rg, AddOp{});
  return RowStats{M, S};
}
#endif

}  // namespace bik::cuda

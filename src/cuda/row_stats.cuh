// Row statistics of f32 logits over chunks of 64 columns (experimental: cuda/row_stats.h), computed in the
// epilogue of the sm_90 GEMM that produces the logits (tile_row_stats) or from logits in memory
// (row_stats.cu's row_chunk_stats_kernel), with the same operations in the same order, so the two give the
// same bits:
//
// Chunk c of a row holds columns [64 c, 64 c + 64) below N. Its columns go to four lanes as the wgmma D
// fragment holds them: lane t (0..3) takes columns 8 j + 2 t + e for j = 0..7, e = 0..1, in that order.
//   best  = the first maximum (NaN first, then the larger value, equal values to the lower column; an
//           exact total order, so any reduction gives it): value m and column i;
//   sum   = with m = -inf: 0; else per lane s_t = sum, in the lane's order, of ex2((x - m) * log2 e)
//           (F32 subtract and multiply, each rounded; the hardware's ex2.approx), then (s_0 + s_1) +
//           (s_2 + s_3).
// An entry is a float4 {m, sum, i (int bits), 0}. Nothing depends on the tile that held the chunk, the
// row's place in the batch or M: a row's entries are a function of its logits.
//
// The fold (row_stats.cu's row_stats_fold_kernel) takes a row's entries in lanes of 32: lane l the chunks l, l + 32, ...
// in increasing order; the row's best is the best of the chunks' (exact); with M its value, lane l sums
// s_c * ex2((m_c - M) * log2 e) in its order (nothing with M = -inf), then the lanes by the xor butterfly
// 16, 8, 4, 2, 1 (every lane the same sum). The row's log-sum-exp is then M + log(S).
#pragma once
#include <climits>
#include <cmath>
#include <cstdint>

#include "cuda/ex2.cuh"

namespace bik::cuda::row_stats {

constexpr int kChunk = 64;
constexpr float kLog2e = 1.4426950408889634f;

struct Best {
  float v;
  int i;
};

// (a, ia) before (b, ib): a NaN before a number; else the larger value; equal values (-0 and +0 too) by
// the lower column.
__device__ __forceinline__ bool before(float a, int ia, float b, int ib) {
  const bool an = a != a, bn = b != b;
  if (an != bn) return an;
  if (!an && a != b) return a > b;
  return ia < ib;
}
__device__ __forceinline__ void offer(Best& b, float x, int i) {
  if (before(x, i, b.v, b.i)) b = Best{x, i};
}
__device__ __forceinline__ float term(float x, float m) { return ex2_approx(__fmul_rn(__fsub_rn(x, m), kLog2e)); }

// One warp's 16 rows x BN columns of f32 sums in the wgmma D layout (acc[4 j + 2 h + e]: row lane / 4 + 8 h
// of the warp's block, column 8 j + 2 (lane % 4) + e), rows from row0, columns from col0 (a multiple of
// 64): the entries of its chunks, stats[row * ld + col / 64], for rows below m_rows and chunks that start
// below n_cols. Every lane of the warp must call.
template <int BN>
__device__ __forceinline__ void tile_row_stats(const float (&acc)[BN / 2], float4* stats, int64_t ld, int m_rows,
                                               int n_cols, int row0, int col0, int lane) {
  static_assert(BN % kChunk == 0, "whole chunks of 64 columns");
  const int t = lane & 3;
#pragma unroll
  for (int q = 0; q < BN / kChunk; ++q) {
    const int c0 = col0 + kChunk * q;
    if (c0 >= n_cols) break;  // the same for every lane
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      Best b{-INFINITY, INT_MAX};
#pragma unroll
      for (int jj = 0; jj < 8; ++jj)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int col = c0 + 8 * jj + 2 * t + e;
          if (col < n_cols) offer(b, acc[4 * (8 * q + jj) + 2 * h + e], col);
        }
#pragma unroll
      for (int off = 1; off <= 2; off <<= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, b.v, off);
        const int oi = __shfl_xor_sync(0xffffffffu, b.i, off);
        offer(b, ov, oi);
      }
      float s = 0.0f;
      if (b.v != -INFINITY) {
#pragma unroll
        for (int jj = 0; jj < 8; ++jj)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int col = c0 + 8 * jj + 2 * t + e;
            if (col < n_cols) s = __fadd_rn(s, term(acc[4 * (8 * q + jj) + 2 * h + e], b.v));
          }
      }
      s = __fadd_rn(s, __shfl_xor_sync(0xffffffffu, s, 1));
      s = __fadd_rn(s, __shfl_xor_sync(0xffffffffu, s, 2));
      const int row = row0 + (lane >> 2) + 8 * h;
      if (t == 0 && row < m_rows)
        stats[int64_t(row) * ld + c0 / kChunk] = make_float4(b.v, s, __int_as_float(b.i), 0.0f);
    }
  }
}

}  // namespace bik::cuda::row_stats

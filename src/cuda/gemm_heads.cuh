// The q|k|v projection's epilogue on the sm_90 GEMM (gemm_sm90.cuh, kernels with kHeadDim > 0): the
// product's columns are q heads, then k heads, then v heads, D columns each, and a tile's BN columns
// hold whole heads (BN a multiple of D). Instead of storing the [M, (Hq + 2 Hk) D] product, each consumer
// thread finishes its heads where the wgmma left them and writes q to q_out and k, v into the KV cache:
//   h = round(sum + bias)                         as a store of the plain product rounds it;
//   q, k heads: h = round((h * rstd) * w)         rms_norm's formula, rstd from rms_norm's tree (below)
//                                                 by rms_rstd (head_math.cuh, the norm kernels' too);
//               h = round(rotate(h, cos, sin))    rotate_pair, as the rope kernels, on the same floats;
//   then q_out[t, head] = h, or k_cache / v_cache[slot, head] = h (write_kv_cache's copy; slot -1 skips).
// So every element holds the bits of mm, rms_norm, rotary_embedding and write_kv_cache run one after the
// other (qkv_projection's composed path), and the product, the normed heads and the rotated copies never
// reach memory.
//
// rms_norm's sum of squares over a row of D <= 256 16-bit elements is policy::row_reduce_plan's tree on 256
// lanes: lane i holds fma(h_i, h_i, 0) for i < D and 0 past D, and lanes combine by halving,
// lane[j] += lane[j + w] for w = 128, 64, ..., 1. In the wgmma D layout a thread holds elements
// i = 8 c + 2 (lane % 4) + e (c < D / 8, e = 0, 1) of its two rows, so the steps w >= D add +0 (identities,
// left out: finish_head), the steps w = D / 2 .. 8 pair groups c and c + w / 8 inside the thread, w = 4 and
// w = 2 pair the threads lane ^ 2 and lane ^ 1 of the row's quad (a butterfly: both get the same sum, IEEE
// addition being commutative), and w = 1 adds e = 0 and e = 1: the same additions on the same values as the
// norm kernel's lanes.
// The neox rotation pairs i with i + D / 2 (groups c and c + D / 16, the same thread), the interleaved one
// i with i + 1 (e = 0 and 1): no value crosses a thread.
#pragma once
#include <cstdint>

#include "cuda/gemm_common.cuh"
#include "cuda/head_math.cuh"

namespace bik::cuda::gemm_detail {

struct HeadsEpilogue {
  void* q_out = nullptr;  // element i of q head h of row t at t * q_s0 + h * q_s1 + i
  int64_t q_s0 = 0, q_s1 = 0;
  void* k_cache = nullptr;  // [slots, kv_heads, D], contiguous
  void* v_cache = nullptr;
  const int32_t* slots = nullptr;  // [M], -1: the row is not stored in the caches
  int64_t slot_s = 1;
  const int32_t* pos = nullptr;  // [M]
  int64_t pos_s = 1;
  const float* cos_sin = nullptr;  // [max_pos, D]: cos in [0, D / 2), sin in [D / 2, D); rows of cs_s0
  int64_t cs_s0 = 0, max_pos = 0;
  const void* q_norm = nullptr;  // [D], contiguous, T or F32 (q_norm_f32); null: no norm
  const void* k_norm = nullptr;
  int q_norm_f32 = 0, k_norm_f32 = 0;
  float eps = 0.f;
  int q_heads = 0, kv_heads = 0;
  int neox = 1;
};

#if defined(__CUDA_ARCH__)
// Element pair (i, i + 1) of a [D] parameter vector in T or F32, as floats.
template <typename T>
__device__ __forceinline__ float2 param_pair(const void* p, bool f32, int i) {
  if (f32) return *reinterpret_cast<const float2*>(static_cast<const float*>(p) + i);
  const typename Pair<T>::type v = *reinterpret_cast<const typename Pair<T>::type*>(static_cast<const T*>(p) + i);
  return make_float2(to_f32(v.x), to_f32(v.y));
}


// A pair of values rounded to T (one cvt for both) and back to floats: what a store of the pair and a
// load of it give.
template <typename T>
__device__ __forceinline__ float2 round_pair(float a, float b) {
  const typename Pair<T>::type v = Pair<T>::make(a, b);
  return make_float2(to_f32(v.x), to_f32(v.y));
}

// The halving steps inside a thread: s[c] += s[c + H] for c < H, then H / 2, ... 1 (each step's count a
// template argument, so every index is known at compile time and s stays in registers).
template <int H, int G>
__device__ __forceinline__ void fold_groups(float2 (&s)[G]) {
#pragma unroll
  for (int c = 0; c < H; ++c) s[c] = make_float2(__fadd_rn(s[c].x, s[c + H].x), __fadd_rn(s[c].y, s[c + H].y));
  if constexpr (H > 1) fold_groups<H / 2>(s);
}

// The cache slots and positions of a thread's two rows of a warp's 16 (row0..): loaded when the tile starts,
// so the loads are in flight during the main loop. -1 for rows past M.
struct HeadRows {
  int32_t slot[2], pos[2];
};
__device__ __forceinline__ HeadRows head_rows(const Problem& p, const HeadsEpilogue& e, int row0, int lane) {
  HeadRows h;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + (lane >> 2) + 8 * r;
    h.slot[r] = row < p.m ? __ldg(e.slots + int64_t(row) * e.slot_s) : -1;
    h.pos[r] = row < p.m ? __ldg(e.pos + int64_t(row) * e.pos_s) : -1;
  }
  return h;
}

// A thread's two rows in the epilogue: whether they exist, their cache slots and their rotary table rows
// (offset by the thread's first column, 2 (lane % 4)).
struct RowState {
  bool live[2], rotate[2];
  int32_t slot[2];
  int64_t row[2];
  const float* cs[2];
};
__device__ __forceinline__ RowState row_state(const Problem& p, const HeadsEpilogue& e, const HeadRows& hr, int row0,
                                              int lane) {
  RowState rs;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + (lane >> 2) + 8 * r;
    rs.live[r] = row < p.m;  // the same in the 4 lanes of a quad
    rs.row[r] = row;
    rs.slot[r] = hr.slot[r];
    const int64_t pos = hr.pos[r];
    // A position outside the table leaves the row unrotated, as rotary_embedding's kernels do.
    rs.rotate[r] = pos >= 0 && pos < e.max_pos;
    rs.cs[r] = e.cos_sin + (rs.rotate[r] ? pos : 0) * e.cs_s0 + 2 * (lane & 3);
  }
  return rs;
}

// x[r][at + c] = round(sum + bias) of groups first + c (c < N) of the D layout (columns col0 + 8 (first + c) +
// 2 (lane % 4) + {0, 1}), as a store of the plain product rounds them; `at` is a compile-time constant at
// every call, so x stays in registers.
// The bias test is made once, outside the loops: inside them the compiler computed every element's bias
// address before testing it, some 20 instructions a pair without a bias. (Not for 128 accumulators a thread,
// the 128 x 256 tile, where ptxas then spilled.)
template <typename T, int N, int kBN, int W = N>
__device__ __forceinline__ void rounded_groups(const Problem& p, const float (&acc)[kBN / 2], int first, int col0,
                                               int quad, float2 (&x)[2][W], int at = 0) {
  if (kBN / 2 < 128 && p.bias == nullptr) {
#pragma unroll
    for (int c = 0; c < N; ++c)
#pragma unroll
      for (int r = 0; r < 2; ++r)
        x[r][at + c] = round_pair<T>(acc[4 * (first + c) + 2 * r], acc[4 * (first + c) + 2 * r + 1]);
    return;
  }
#pragma unroll
  for (int c = 0; c < N; ++c) {
    const int g = first + c, n = col0 + 8 * g + 2 * quad;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float s0 = acc[4 * g + 2 * r], s1 = acc[4 * g + 2 * r + 1];
      x[r][at + c] = p.bias != nullptr ? round_pair<T>(add_bias<T>(p, n, s0), add_bias<T>(p, n + 1, s1))
                                       : round_pair<T>(s0, s1);
    }
  }
}

// Finishes one head of a thread's two rows, x[r][c] its rounded product (elements 8 c + 2 (lane % 4) + {0, 1}):
// a v head goes to the cache as it is; a q or k head is normalised (when it has a norm), rotated, and goes to
// q_out or the cache. Every lane of the warp calls it (the quad shuffles).
template <typename T, int D>
__device__ __forceinline__ void finish_head(const HeadsEpilogue& e, const RowState& rs, int head, int quad,
                                            float2 (&x)[2][D / 8]) {
  constexpr int G = D / 8;
  using P2 = typename Pair<T>::type;
  const int kv = head - e.q_heads;  // >= 0: a k head (< kv_heads) or a v head
  if (kv >= e.kv_heads) {           // v: as it is, into the cache
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      if (!rs.live[r] || rs.slot[r] < 0) continue;
      T* dst = static_cast<T*>(e.v_cache) + (int64_t(rs.slot[r]) * e.kv_heads + (kv - e.kv_heads)) * D + 2 * quad;
#pragma unroll
      for (int c = 0; c < G; ++c) *reinterpret_cast<P2*>(dst + 8 * c) = Pair<T>::make(x[r][c].x, x[r][c].y);
    }
    return;
  }
  const bool is_q = kv < 0;
  const void* norm = is_q ? e.q_norm : e.k_norm;
  if (norm != nullptr) {  // the same in every lane
    const bool f32 = is_q ? e.q_norm_f32 != 0 : e.k_norm_f32 != 0;
    float2 w[G];
#pragma unroll
    for (int c = 0; c < G; ++c) w[c] = param_pair<T>(norm, f32, 8 * c + 2 * quad);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float2 s[G];
#pragma unroll
      for (int c = 0; c < G; ++c)
        s[c] = make_float2(__fmaf_rn(x[r][c].x, x[r][c].x, 0.f), __fmaf_rn(x[r][c].y, x[r][c].y, 0.f));
      // The steps w = 128 .. D add the lanes past D, which hold +0: s + 0 is s, bit for bit, for every value
      // fma(h, h, 0) takes (+0, positive, +inf or the canonical NaN), so they are left out.
      fold_groups<G / 2>(s);  // w = D / 2 .. 8: groups c and c + w / 8
      // w = 4 and 2: lanes quad ^ 2 and quad ^ 1 of the row; w = 1: the pair's two elements.
      s[0].x = __fadd_rn(s[0].x, __shfl_xor_sync(0xffffffffu, s[0].x, 2));
      s[0].y = __fadd_rn(s[0].y, __shfl_xor_sync(0xffffffffu, s[0].y, 2));
      s[0].x = __fadd_rn(s[0].x, __shfl_xor_sync(0xffffffffu, s[0].x, 1));
      s[0].y = __fadd_rn(s[0].y, __shfl_xor_sync(0xffffffffu, s[0].y, 1));
      const float ss = __fadd_rn(s[0].x, s[0].y);
      const float rstd = rms_rstd(ss, float(D), e.eps);
#pragma unroll
      for (int c = 0; c < G; ++c)
        x[r][c] = round_pair<T>(__fmul_rn(__fmul_rn(x[r][c].x, rstd), w[c].x),
                                __fmul_rn(__fmul_rn(x[r][c].y, rstd), w[c].y));
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (!rs.rotate[r]) continue;
    if (e.neox) {
#pragma unroll
      for (int c = 0; c < G / 2; ++c) {
        const float2 co = __ldg(reinterpret_cast<const float2*>(rs.cs[r] + 8 * c));
        const float2 si = __ldg(reinterpret_cast<const float2*>(rs.cs[r] + D / 2 + 8 * c));
        float a0, b0, a1, b1;
        rotate_pair(x[r][c].x, x[r][c + G / 2].x, co.x, si.x, a0, b0);
        rotate_pair(x[r][c].y, x[r][c + G / 2].y, co.y, si.y, a1, b1);
        x[r][c] = round_pair<T>(a0, a1);
        x[r][c + G / 2] = round_pair<T>(b0, b1);
      }
    } else {
      // Elements 2 j and 2 j + 1 with j = 4 c + lane % 4: rs.cs[r] points 2 (lane % 4) past the row's start.
      const float* co = rs.cs[r] - quad;
      const float* si = co + D / 2;
#pragma unroll
      for (int c = 0; c < G; ++c) {
        float a, b;
        rotate_pair(x[r][c].x, x[r][c].y, __ldg(co + 4 * c), __ldg(si + 4 * c), a, b);
        x[r][c] = round_pair<T>(a, b);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    T* dst = nullptr;
    if (is_q && rs.live[r])
      dst = static_cast<T*>(e.q_out) + rs.row[r] * e.q_s0 + int64_t(head) * e.q_s1;
    else if (!is_q && rs.slot[r] >= 0)
      dst = static_cast<T*>(e.k_cache) + (int64_t(rs.slot[r]) * e.kv_heads + kv) * D;
    if (dst == nullptr) continue;
#pragma unroll
    for (int c = 0; c < G; ++c) *reinterpret_cast<P2*>(dst + 8 * c + 2 * quad) = Pair<T>::make(x[r][c].x, x[r][c].y);
  }
}

// One warp's 16 rows (row0..) by BN columns (col0.., whole heads) of finished sums in the wgmma D layout
// (acc[4 c + 2 r + e]: row lane / 4 + 8 r, column 8 c + 2 (lane % 4) + e), finished as described at the top
// of this file; hr from head_rows for the same rows. Every lane of the warp calls it (the quad shuffles);
// rows past M store nothing. Every loop has a trip count known at compile time, so the values stay in
// registers.
template <class Cfg, typename T, int D>
__device__ __forceinline__ void store_tile_heads(const Problem& p, const HeadsEpilogue& e, const HeadRows& hr,
                                                 const float (&acc)[Cfg::BN / 2], int row0, int col0, int lane) {
  static_assert(!Cfg::kSwapped && Cfg::BN % D == 0 && D % 16 == 0 && D <= 256, "whole heads of 16-column groups");
  constexpr int G = D / 8;  // groups of 8 columns a head
  const int quad = lane & 3;
  const RowState rs = row_state(p, e, hr, row0, lane);
#pragma unroll
  for (int hh = 0; hh < Cfg::BN / D; ++hh) {
    const int col_h = col0 + hh * D;
    if (col_h >= p.n) continue;  // the same in every lane
    float2 x[2][G];
    rounded_groups<T, G, Cfg::BN>(p, acc, hh * G, col0, quad, x);
    finish_head<T, D>(e, rs, col_h / D, quad, x);
  }
}

#endif

}  // namespace bik::cuda::gemm_detail

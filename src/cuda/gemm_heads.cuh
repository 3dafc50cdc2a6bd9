// The q|k|v projection's epilogue on the sm_90 GEMM (gemm_sm90.cuh, kernels with kHeadDim > 0): the
// product's columns are q heads, then k heads, then v heads, D columns each, and a tile's BN columns
// hold whole heads (BN a multiple of D). Instead of storing the [M, (Hq + 2 Hk) D] product, each consumer
// thread finishes its heads where the wgmma left them and writes q to q_out and k, v into the KV cache:
//   h = round(sum + bias)                         as a store of the plain product rounds it;
//   q, k heads: h = round((h * rstd) * w)         rms_norm's formula, rstd from rms_norm's tree (below);
//               h = round(rotate(h, cos, sin))    rotary_embedding's, on the same floats;
//   then q_out[t, head] = h, or k_cache / v_cache[slot, head] = h (write_kv_cache's copy; slot -1 skips).
// So every element holds the bits of mm, rms_norm, rotary_embedding and write_kv_cache run one after the
// other (qkv_projection's composed path), and the product, the normed heads and the rotated copies never
// reach memory.
//
// rms_norm's sum of squares over a row of D <= 256 16-bit elements is policy::row_reduce_plan's tree on 256
// lanes: lane i holds fma(h_i, h_i, 0) for i < D and 0 past D, and lanes combine by halving,
// lane[j] += lane[j + w] for w = 128, 64, ..., 1. In the wgmma D layout a thread holds elements
// i = 8 c + 2 (lane % 4) + e (c < D / 8, e = 0, 1) of its two rows, so the steps w >= D add 0, the steps
// w = D / 2 .. 8 pair groups c and c + w / 8 inside the thread, w = 4 and w = 2 pair the threads lane ^ 2
// and lane ^ 1 of the row's quad (a butterfly: both get the same sum, IEEE addition being commutative),
// and w = 1 adds e = 0 and e = 1: the same additions on the same values as the norm kernel's lanes.
// The neox rotation pairs i with i + D / 2 (groups c and c + D / 16, the same thread), the interleaved one
// i with i + 1 (e = 0 and 1): no value crosses a thread.
#pragma once
#include <cstdint>

#include "cuda/gemm_common.cuh"

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

__device__ __forceinline__ void rotate_pair(float a, float b, float c, float s, float& ra, float& rb) {
  ra = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
  rb = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
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

// One warp's 16 rows (row0..) by BN columns (col0.., whole heads) of finished sums in the wgmma D layout
// (acc[4 c + 2 r + e]: row lane / 4 + 8 r, column 8 c + 2 (lane % 4) + e), finished as described at the
// top of this file. Every lane of the warp calls it (the quad shuffles), rows past M store nothing. Every
// loop has a trip count known at compile time, so the values stay in registers.
template <class Cfg, typename T, int D>
__device__ __forceinline__ void store_tile_heads(const Problem& p, const HeadsEpilogue& e,
                                                 const float (&acc)[Cfg::BN / 2], int row0, int col0, int lane) {
  static_assert(!Cfg::kSwapped && Cfg::BN % D == 0 && D % 16 == 0 && D <= 256, "whole heads of 16-column groups");
  constexpr int G = D / 8;  // groups of 8 columns a head
  constexpr int kZeroSteps = D <= 128 ? (D == 128 ? 1 : D == 64 ? 2 : 3) : 0;  // steps w = 128 .. D (w >= D)
  static_assert((128 >> (kZeroSteps - 1)) == D || D == 256, "the 256-lane tree's steps past D");
  using P2 = typename Pair<T>::type;
  const int quad = lane & 3;
  // The thread's two rows: whether they exist, their cache slots and their rotary table rows.
  bool live[2], rotate[2];
  int32_t slot[2];
  int64_t row_of[2];
  const float* cs[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + (lane >> 2) + 8 * r;
    live[r] = row < p.m;  // the same in the 4 lanes of a quad
    row_of[r] = row;
    slot[r] = live[r] ? __ldg(e.slots + int64_t(row) * e.slot_s) : -1;
    const int64_t pos = live[r] ? __ldg(e.pos + int64_t(row) * e.pos_s) : -1;
    // A position outside the table leaves the row unrotated, as rotary_embedding's kernels do.
    rotate[r] = pos >= 0 && pos < e.max_pos;
    cs[r] = e.cos_sin + (rotate[r] ? pos : 0) * e.cs_s0 + 2 * quad;
  }
#pragma unroll
  for (int hh = 0; hh < Cfg::BN / D; ++hh) {
    const int col_h = col0 + hh * D;
    if (col_h >= p.n) continue;  // the same in every lane
    const int head = col_h / D;
    // h = round(sum + bias), as a store of the plain product rounds it.
    float2 x[2][G];
    if (p.bias != nullptr) {
#pragma unroll
      for (int c = 0; c < G; ++c) {
        const int n = col_h + 8 * c + 2 * quad;
#pragma unroll
        for (int r = 0; r < 2; ++r)
          x[r][c] = round_pair<T>(add_bias<T>(p, n, acc[4 * (hh * G + c) + 2 * r]),
                                  add_bias<T>(p, n + 1, acc[4 * (hh * G + c) + 2 * r + 1]));
      }
    } else {
#pragma unroll
      for (int c = 0; c < G; ++c)
#pragma unroll
        for (int r = 0; r < 2; ++r)
          x[r][c] = round_pair<T>(acc[4 * (hh * G + c) + 2 * r], acc[4 * (hh * G + c) + 2 * r + 1]);
    }
    const int kv = head - e.q_heads;  // >= 0: a k head (< kv_heads) or a v head
    if (kv >= e.kv_heads) {           // v: as it is, into the cache
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        if (!live[r] || slot[r] < 0) continue;
        T* dst = static_cast<T*>(e.v_cache) + (int64_t(slot[r]) * e.kv_heads + (kv - e.kv_heads)) * D + 2 * quad;
#pragma unroll
        for (int c = 0; c < G; ++c) *reinterpret_cast<P2*>(dst + 8 * c) = Pair<T>::make(x[r][c].x, x[r][c].y);
      }
      continue;
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
#pragma unroll
        for (int k = 0; k < kZeroSteps; ++k)  // w = 128 .. D: the partners past D hold 0
#pragma unroll
          for (int c = 0; c < G; ++c) s[c] = make_float2(__fadd_rn(s[c].x, 0.f), __fadd_rn(s[c].y, 0.f));
        fold_groups<G / 2>(s);  // w = D / 2 .. 8: groups c and c + w / 8
        // w = 4 and 2: lanes quad ^ 2 and quad ^ 1 of the row; w = 1: the pair's two elements.
        s[0].x = __fadd_rn(s[0].x, __shfl_xor_sync(0xffffffffu, s[0].x, 2));
        s[0].y = __fadd_rn(s[0].y, __shfl_xor_sync(0xffffffffu, s[0].y, 2));
        s[0].x = __fadd_rn(s[0].x, __shfl_xor_sync(0xffffffffu, s[0].x, 1));
        s[0].y = __fadd_rn(s[0].y, __shfl_xor_sync(0xffffffffu, s[0].y, 1));
        const float ss = __fadd_rn(s[0].x, s[0].y);
        const float rstd = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(ss, float(D)), e.eps)));
#pragma unroll
        for (int c = 0; c < G; ++c)
          x[r][c] = round_pair<T>(__fmul_rn(__fmul_rn(x[r][c].x, rstd), w[c].x),
                                  __fmul_rn(__fmul_rn(x[r][c].y, rstd), w[c].y));
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      if (!rotate[r]) continue;
      if (e.neox) {
#pragma unroll
        for (int c = 0; c < G / 2; ++c) {
          const float2 co = __ldg(reinterpret_cast<const float2*>(cs[r] + 8 * c));
          const float2 si = __ldg(reinterpret_cast<const float2*>(cs[r] + D / 2 + 8 * c));
          float a0, b0, a1, b1;
          rotate_pair(x[r][c].x, x[r][c + G / 2].x, co.x, si.x, a0, b0);
          rotate_pair(x[r][c].y, x[r][c + G / 2].y, co.y, si.y, a1, b1);
          x[r][c] = round_pair<T>(a0, a1);
          x[r][c + G / 2] = round_pair<T>(b0, b1);
        }
      } else {
        // Elements 2 j and 2 j + 1 with j = 4 c + lane % 4: cs[r] points 2 (lane % 4) past the row's start.
        const float* co = cs[r] - quad, * si = cs[r] - quad + D / 2;
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
      if (is_q && live[r])
        dst = static_cast<T*>(e.q_out) + row_of[r] * e.q_s0 + int64_t(head) * e.q_s1;
      else if (!is_q && slot[r] >= 0)
        dst = static_cast<T*>(e.k_cache) + (int64_t(slot[r]) * e.kv_heads + kv) * D;
      if (dst == nullptr) continue;
#pragma unroll
      for (int c = 0; c < G; ++c)
        *reinterpret_cast<P2*>(dst + 8 * c + 2 * quad) = Pair<T>::make(x[r][c].x, x[r][c].y);
    }
  }
}
#endif

}  // namespace bik::cuda::gemm_detail

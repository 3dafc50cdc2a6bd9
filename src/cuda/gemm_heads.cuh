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

// One warp's 16 rows (row0..) by BN columns (col0.., whole heads) of finished sums in the wgmma D layout
// (acc[4 c + 2 r + e]: row lane / 4 + 8 r, column 8 c + 2 (lane % 4) + e), finished as described at the
// top of this file. Every lane of the warp calls it (the quad shuffles), rows past M store nothing.
template <class Cfg, typename T, int D>
__device__ __forceinline__ void store_tile_heads(const Problem& p, const HeadsEpilogue& e,
                                                 const float (&acc)[Cfg::BN / 2], int row0, int col0, int lane) {
  static_assert(!Cfg::kSwapped && Cfg::BN % D == 0 && D % 16 == 0 && D <= 256, "whole heads of 16-column groups");
  constexpr int G = D / 8;  // groups of 8 columns a head
  using P2 = typename Pair<T>::type;
  const int quad = lane & 3;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + (lane >> 2) + 8 * r;
    const bool live = row < p.m;  // the same in the 4 lanes of a quad
    const int32_t slot = live ? e.slots[int64_t(row) * e.slot_s] : -1;
    const int64_t pos = live ? e.pos[int64_t(row) * e.pos_s] : -1;
    // A position outside the table leaves the row unrotated, as rotary_embedding's kernels do.
    const bool rotate = pos >= 0 && pos < e.max_pos;
    const float* cs = e.cos_sin + (rotate ? pos : 0) * e.cs_s0;
#pragma unroll
    for (int hh = 0; hh < Cfg::BN / D; ++hh) {
      const int col_h = col0 + hh * D;
      if (col_h >= p.n) break;  // the same in every lane
      const int head = col_h / D;
      float x[G][2];
#pragma unroll
      for (int c = 0; c < G; ++c)
#pragma unroll
        for (int j = 0; j < 2; ++j)
          x[c][j] = to_f32(from_f32<T>(add_bias<T>(p, col_h + 8 * c + 2 * quad + j, acc[4 * (hh * G + c) + 2 * r + j])));
      const int kv = head - e.q_heads;  // >= 0: a k head (< kv_heads) or v head
      if (kv >= e.kv_heads) {           // v: as it is, into the cache
        if (live && slot >= 0) {
          T* dst = static_cast<T*>(e.v_cache) + (int64_t(slot) * e.kv_heads + (kv - e.kv_heads)) * D + 2 * quad;
#pragma unroll
          for (int c = 0; c < G; ++c) *reinterpret_cast<P2*>(dst + 8 * c) = Pair<T>::make(x[c][0], x[c][1]);
        }
        continue;
      }
      const bool is_q = kv < 0;
      const void* norm = is_q ? e.q_norm : e.k_norm;
      if (norm != nullptr) {  // the same in every lane
        float s[G][2];
#pragma unroll
        for (int c = 0; c < G; ++c)
#pragma unroll
          for (int j = 0; j < 2; ++j) s[c][j] = __fmaf_rn(x[c][j], x[c][j], 0.f);
#pragma unroll
        for (int w = 128; w >= D; w /= 2)  // partners past D hold 0
#pragma unroll
          for (int c = 0; c < G; ++c)
#pragma unroll
            for (int j = 0; j < 2; ++j) s[c][j] = __fadd_rn(s[c][j], 0.f);
#pragma unroll
        for (int w = D / 2; w >= 8; w /= 2)
#pragma unroll
          for (int c = 0; c < w / 8; ++c)
#pragma unroll
            for (int j = 0; j < 2; ++j) s[c][j] = __fadd_rn(s[c][j], s[c + w / 8][j]);
#pragma unroll
        for (int m = 2; m >= 1; m /= 2)
#pragma unroll
          for (int j = 0; j < 2; ++j) s[0][j] = __fadd_rn(s[0][j], __shfl_xor_sync(0xffffffffu, s[0][j], m));
        const float ss = __fadd_rn(s[0][0], s[0][1]);
        const float rstd = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(ss, float(D)), e.eps)));
        const bool f32 = is_q ? e.q_norm_f32 != 0 : e.k_norm_f32 != 0;
#pragma unroll
        for (int c = 0; c < G; ++c) {
          const float2 wv = live ? param_pair<T>(norm, f32, 8 * c + 2 * quad) : make_float2(0.f, 0.f);
          x[c][0] = to_f32(from_f32<T>(__fmul_rn(__fmul_rn(x[c][0], rstd), wv.x)));
          x[c][1] = to_f32(from_f32<T>(__fmul_rn(__fmul_rn(x[c][1], rstd), wv.y)));
        }
      }
      if (rotate) {
        if (e.neox) {
#pragma unroll
          for (int c = 0; c < G / 2; ++c) {
            const int i = 8 * c + 2 * quad;
            const float2 co = *reinterpret_cast<const float2*>(cs + i), si = *reinterpret_cast<const float2*>(cs + D / 2 + i);
            float a0, b0, a1, b1;
            rotate_pair(x[c][0], x[c + G / 2][0], co.x, si.x, a0, b0);
            rotate_pair(x[c][1], x[c + G / 2][1], co.y, si.y, a1, b1);
            x[c][0] = to_f32(from_f32<T>(a0)), x[c + G / 2][0] = to_f32(from_f32<T>(b0));
            x[c][1] = to_f32(from_f32<T>(a1)), x[c + G / 2][1] = to_f32(from_f32<T>(b1));
          }
        } else {
#pragma unroll
          for (int c = 0; c < G; ++c) {
            const int pair = 4 * c + quad;  // elements 2 pair and 2 pair + 1
            float a, b;
            rotate_pair(x[c][0], x[c][1], cs[pair], cs[D / 2 + pair], a, b);
            x[c][0] = to_f32(from_f32<T>(a)), x[c][1] = to_f32(from_f32<T>(b));
          }
        }
      }
      T* dst = nullptr;
      if (is_q && live)
        dst = static_cast<T*>(e.q_out) + int64_t(row) * e.q_s0 + int64_t(head) * e.q_s1;
      else if (!is_q && live && slot >= 0)
        dst = static_cast<T*>(e.k_cache) + (int64_t(slot) * e.kv_heads + kv) * D;
      if (dst != nullptr) {
#pragma unroll
        for (int c = 0; c < G; ++c)
          *reinterpret_cast<P2*>(dst + 8 * c + 2 * quad) = Pair<T>::make(x[c][0], x[c][1]);
      }
    }
  }
}
#endif

}  // namespace bik::cuda::gemm_detail

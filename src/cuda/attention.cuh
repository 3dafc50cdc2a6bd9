// Paged causal attention kernel: one kernel for prefill and decode, mma.sync m16n8k16 for Q K^T and P V.
//
// Work unit: one CTA = one sequence, one KV head, up to 64 query rows (query token x query head of the
// KV head's group), and either every split its rows need (in-kernel fold, "prefill" mode) or a single
// split (split-parallel, "decode" mode; a second kernel folds the partials). Each of the 4 warps owns 16
// rows and walks every key of every tile for them, so a row's arithmetic never depends on which warp,
// CTA or mode computes it, nor on the other rows:
//  - the key tiles are the plan's: 64 keys from the split start, splits of the plan's grid (p.split);
//  - Q K^T: each score is one F32 accumulator fed by mma over head_dim in steps of 16 from d = 0;
//  - keys past a row's position score -inf and get p = 0 exactly (their V rows are zero-filled past the
//    block's last position and real cached values otherwise, so p * v is an exact zero either way);
//  - max, sum and the rescale per tile: fixed thread-local order, then the fixed 4-lane shuffle tree;
//  - P (rounded to the input dtype) times V: mma over the tile's keys in increasing 16-key steps;
//  - a tile past a row's position (another row of the CTA needed it) changes nothing: alpha = 1, p = 0;
//  - the fold of split results (fold_coef + fold) is the same inlined code in both modes.
// Every F32 operation of the softmax path is an explicit round-to-nearest intrinsic, so no fused
// multiply-add is formed differently in the two kernels (the library builds with --fmad=true).
// This kernel serves sm_80..sm_89 (and sm_90 when BIK_ATTENTION_SM90=0 is set, for A/B comparisons);
// sm_90 runs the same plan and softmax with wgmma (attention_sm90.cuh) in both modes.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "core/split_grid.h"
#include "cuda/ex2.cuh"
#include "cuda/launch.cuh"

namespace bik::cuda::attn {

constexpr int kWarps = 4, kThreads = kWarps * 32;
constexpr int kRows = kWarps * 16;  // query rows per CTA
constexpr int kBK = 64;             // keys per tile (policy key_tile)

struct Params {
  void* out;
  const void* q;
  const void* k_cache;
  const void* v_cache;
  int64_t q_s0, q_s1, o_s0, o_s1;  // token and head strides (elements)
  int64_t cache_tok, cache_blk;    // cache strides of one token slot and one block (elements)
  const int32_t* block_tables;
  int64_t bt_s0, bt_s1;
  const int32_t* seq_lens;
  int64_t sl_s;
  const int32_t* qsl;
  int64_t qsl_s;
  int num_seqs, q_heads, kv_heads, group, block_size, tok_per_cta;
  int split_len;     // split.len, where the kernels for launches within the short splits read it
  int group_mul;     // ceil(2^16 / group): row_token's multiplier
  float scale_log2;  // softmax scale * log2(e): scores are kept in log2 units
  // Split-parallel mode: partials per (row, head, split): (m, l) and acc[D].
  float* part_ml;
  float* part_acc;
  int max_splits;
  int splits_per_cta;  // split-parallel mode, run_keys = 0: consecutive splits one CTA walks
  // Variants 3-6 on a persistent grid: `units` > 0 CTA work units of a virtual grid (grid_x, grid_y,
  // grid_z), unit u at (u % grid_x, u / grid_x % grid_y, u / (grid_x grid_y)), CTA b taking units b,
  // b + gridDim.x, ... in static rounds (unless unit_counter is set); 0: one CTA a unit (blockIdx).
  int units, grid_x, grid_y;
  // On a persistent grid: unit_counter (zeroed before the launch) hands the units out dynamically, in the
  // grouped order of order_group CTA columns (attention_kernel_ws's unit_at); nullptr: the static rounds.
  int* unit_counter;
  int order_group;
  // The fields above keep their places from before the long splits: with the grid in split_len's place, the
  // warp-specialised prefill kernels at D = 128 spilled 12 bytes in ptxas (none with this layout).
  policy::SplitGrid split;  // the plan's splits (core/split_grid.h)
  // Split-parallel mode, the splits of CTA z: with run_keys > 0 (variants 3-6, contexts reaching the long
  // splits; a multiple of the long split length) the splits in keys [z * run_keys, (z + 1) * run_keys),
  // from split z * run_short below the long splits' start, else z * run_long + run_base (the host's
  // quotients: no division in the kernel); else splits z * splits_per_cta .. (z + 1) * splits_per_cta - 1
  // (1 a CTA but for variants 3-6).
  int run_keys, run_short, run_long, run_base;
};

// The plan's split grid as a kernel instantiation reads it (policy::SplitView): kLong for launches with a
// context past the long splits' start, the uniform arithmetic on split_len otherwise.
template <bool kLong>
__device__ __forceinline__ policy::SplitView<kLong> split_view(const Params& p) {
  return {p.split, p.split_len};
}

// Row r (< kRows) of a CTA's query rows belongs to token r / group and head r % group of the KV head's
// group. The quotient without an integer division: with group_mul = ceil(2^16 / group) = (2^16 + e) / group,
// 0 <= e < group, r * group_mul / 2^16 = r / group + r e / 2^16 / group, and r e < 64 * 64 < 2^16 keeps that
// below the next multiple of 1 / group, so the shift gives floor(r / group) for every r < 64, group <= 64.
__device__ __forceinline__ int row_token(const Params& p, int r) { return (r * p.group_mul) >> 16; }
// Row r as (token within the CTA's tokens, head within the KV head's group): r = tok * group + head.
struct RowPos {
  int tok, head;
};
__device__ __forceinline__ RowPos row_pos(const Params& p, int r) {
  const int tr = row_token(p, r);
  return {tr, r - tr * p.group};
}

// The plan's last step on CUDA (core/policy.h): out = A * (1 / L), the reciprocal rounded once per row, so a
// row's D outputs cost one multiply each instead of a division (the CPU divides: at most 2 F32 ulps apart).
__device__ __forceinline__ float out_value(float A, float inv_l) { return __fmul_rn(A, inv_l); }

// The fold of the plan: (M, L, A) <- (M, L, A) merged with a split's (m, l, acc).
struct FoldCoef {
  float m, ca, cb;
};
__device__ __forceinline__ FoldCoef fold_coef(float M, float m) {
  const float mn = fmaxf(M, m);
  return {mn, ex2_approx(__fsub_rn(M, mn)), ex2_approx(__fsub_rn(m, mn))};
}
__device__ __forceinline__ float fold(float A, float a, const FoldCoef& c) {
  return __fmaf_rn(A, c.ca, __fmul_rn(a, c.cb));
}

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, int bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  } else {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
}

// Shared memory: rows of D halves (D / 8 chunks of 16 bytes), chunk index XOR (row % 8) so that the 8
// rows one ldmatrix phase reads land in 8 different bank groups.
template <int D>
__device__ __forceinline__ uint32_t swz(int r, int c) {
  return uint32_t(r * (D * 2) + ((c ^ (r & 7)) << 4));
}

template <int D>
struct Smem {
  static constexpr int kTile = kBK * D * 2;  // bytes of one K or V tile
  static constexpr int kQ = kRows * D * 2;
  static constexpr int kAcc = kRows * D * 4;  // folded accumulators (in-kernel fold mode)
  static constexpr int kOffK = kQ, kOffV = kQ + 2 * kTile, kOffAcc = kQ + 4 * kTile;
  static constexpr int bytes(bool split) { return split ? kOffAcc : kOffAcc + kAcc; }
};

template <typename T, int D, bool kSplit>
__global__ void __launch_bounds__(kThreads) attention_kernel(const Params p) {
  pdl_wait();
  extern __shared__ __align__(128) uint8_t smem[];
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  constexpr int KT = D / 16;      // k-steps of Q K^T
  constexpr int NT = D / 8;       // n8 tiles of the output
  using S = Smem<D>;

  const int seq = blockIdx.x / p.kv_heads, kvh = blockIdx.x % p.kv_heads;
  const int q0 = p.qsl[int64_t(seq) * p.qsl_s];
  const int q_len = p.qsl[int64_t(seq + 1) * p.qsl_s] - q0;
  const int tok0 = blockIdx.y * p.tok_per_cta;
  if (tok0 >= q_len) return;
  const int ntok = min(p.tok_per_cta, q_len - tok0);
  const int ctx = p.seq_lens[int64_t(seq) * p.sl_s];
  const int pos0 = ctx - q_len + tok0;  // absolute position of the CTA's first token
  const int pmax = pos0 + ntok - 1;
  const policy::SplitGrid& sg = p.split;
  int kb_begin, kb_last;  // tiles [kb_begin, kb_last] (key positions of the tile starts)
  if constexpr (kSplit) {
    kb_begin = sg.begin(blockIdx.z);
    if (kb_begin > pmax) return;
    kb_last = min(sg.begin(blockIdx.z + 1) - 1, pmax) / kBK * kBK;
  } else {
    kb_begin = 0;
    kb_last = pmax / kBK * kBK;
  }
  const int valid_rows = ntok * p.group;

  const uint32_t sq = smem_u32(smem), sk = sq + S::kOffK, sv = sq + S::kOffV;
  const T* kc = static_cast<const T*>(p.k_cache);
  const T* vc = static_cast<const T*>(p.v_cache);
  const int32_t* bt = p.block_tables + int64_t(seq) * p.bt_s0;

  // Q rows: row r = token (r / group), head kvh * group + r % group; rows past the CTA's tokens are 0.
  for (int i = threadIdx.x; i < kRows * kChunks; i += kThreads) {
    const int r = i / kChunks, c = i % kChunks;
    const bool live = r < valid_rows;
    const T* src = static_cast<const T*>(p.q);
    if (live) {
      const RowPos rp = row_pos(p, r);
      src += int64_t(q0 + tok0 + rp.tok) * p.q_s0 + int64_t(kvh * p.group + rp.head) * p.q_s1 + c * 8;
    }
    cp_async_16(sq + swz<D>(r, c), src, live ? 16 : 0);
  }
  auto load_tile = [&](int stage, int kb) {
    for (int i = threadIdx.x; i < kBK * kChunks; i += kThreads) {
      const int r = i / kChunks, c = i % kChunks;
      const int kp = kb + r;
      const bool live = kp <= pmax;  // keys past every row's position: zero-filled, never read
      int64_t off = 0;
      if (live) {
        const int64_t blk = bt[int64_t(kp / p.block_size) * p.bt_s1];
        off = blk * p.cache_blk + int64_t(kp % p.block_size) * p.cache_tok + int64_t(kvh) * D + c * 8;
      }
      cp_async_16(sk + stage * S::kTile + swz<D>(r, c), kc + off, live ? 16 : 0);
      cp_async_16(sv + stage * S::kTile + swz<D>(r, c), vc + off, live ? 16 : 0);
    }
  };
  load_tile(0, kb_begin);
  cp_async_commit();

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, cq = lane & 3;
  const bool warp_live = warp * 16 < valid_rows;
  // This thread's two rows (g and g + 8 of the warp's 16) and their positions (-1: no row).
  int pos_r[2];
  int row_id[2];  // global (token, head) index, for partials and output
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = warp * 16 + g + h * 8;
    const RowPos rp = row_pos(p, r);
    pos_r[h] = r < valid_rows ? pos0 + rp.tok : -1;
    row_id[h] = r < valid_rows ? (q0 + tok0 + rp.tok) * p.q_heads + kvh * p.group + rp.head : 0;
  }

  uint32_t qf[KT][4];
  float o[NT][4];
  float m_run[2], l_run[2];  // the current split's running max (log2 units) and sum
  float M_f[2], L_f[2];      // folded over the finished splits (in-kernel fold mode)
  float* acc_f = reinterpret_cast<float*>(smem + S::kOffAcc) + warp * (16 * D);
  const float kNegInf = -__int_as_float(0x7f800000);

  int stage = 0;
  for (int kb = kb_begin; kb <= kb_last; kb += kBK, stage ^= 1) {
    if (kb + kBK <= kb_last) load_tile(stage ^ 1, kb + kBK);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const bool split_start = sg.starts_at(kb);
    const bool split_end = sg.starts_at(kb + kBK) || kb == kb_last;
    if (kb == kb_begin && warp_live) {
#pragma unroll
      for (int kk = 0; kk < KT; ++kk) {
        const int r = warp * 16 + (lane & 15);
        ldmatrix_x4(qf[kk], sq + swz<D>(r, kk * 2 + (lane >> 4)));
      }
    }
    if (warp_live) {
      if (split_start) {
#pragma unroll
        for (int h = 0; h < 2; ++h) m_run[h] = kNegInf, l_run[h] = 0.f;
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) o[n][e] = 0.f;
      }
      const uint32_t skt = sk + stage * S::kTile, svt = sv + stage * S::kTile;
      // S = Q K^T for the tile's 64 keys: 8 n8 tiles.
      float s[8][4];
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[j][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < KT; ++kk) {
#pragma unroll
        for (int j2 = 0; j2 < 4; ++j2) {
          uint32_t t[4];
          const int r = j2 * 16 + (lane & 7) + ((lane >> 4) << 3);
          ldmatrix_x4(t, skt + swz<D>(r, kk * 2 + ((lane >> 3) & 1)));
          mma_16816<T>(s[2 * j2], qf[kk], t[0], t[1]);
          mma_16816<T>(s[2 * j2 + 1], qf[kk], t[2], t[3]);
        }
      }
      // Mask (raw scores), the tile's raw max (in any order: max is exact), the running max in scaled
      // units (rounding is monotonic for a positive scale, so max of the scaled = scaled max).
      float pm[2][4];
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int c = 0; c < 4; ++c) pm[h][c] = kNegInf;
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int h = e >> 1, key = kb + j * 8 + cq * 2 + (e & 1);
          s[j][e] = key <= pos_r[h] ? s[j][e] : kNegInf;
          pm[h][(j & 1) * 2 + (e & 1)] = fmaxf(pm[h][(j & 1) * 2 + (e & 1)], s[j][e]);
        }
      float mt[2], alpha[2], tsum[2] = {0.f, 0.f};
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        mt[h] = fmaxf(fmaxf(pm[h][0], pm[h][1]), fmaxf(pm[h][2], pm[h][3]));
        mt[h] = fmaxf(mt[h], __shfl_xor_sync(0xffffffffu, mt[h], 1));
        mt[h] = fmaxf(mt[h], __shfl_xor_sync(0xffffffffu, mt[h], 2));
        mt[h] = fmaxf(m_run[h], __fmul_rn(mt[h], p.scale_log2));
        const float m_use = mt[h] == kNegInf ? 0.f : mt[h];  // a row with no key yet: keep p = 0
        // An unchanged max rescales by exactly 1, so a tile with no key for this row is a no-op.
        alpha[h] = m_run[h] == m_use ? 1.f : ex2_approx(__fsub_rn(m_run[h], m_use));
        mt[h] = -m_use;
      }
      // p = 2^(x * scale - max), one rounding: fma(x, scale, -max).
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int h = e >> 1;
          s[j][e] = ex2_approx(__fmaf_rn(s[j][e], p.scale_log2, mt[h]));
          tsum[h] = __fadd_rn(tsum[h], s[j][e]);
        }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        tsum[h] = __fadd_rn(tsum[h], __shfl_xor_sync(0xffffffffu, tsum[h], 1));
        tsum[h] = __fadd_rn(tsum[h], __shfl_xor_sync(0xffffffffu, tsum[h], 2));
        l_run[h] = __fmaf_rn(l_run[h], alpha[h], tsum[h]);
        m_run[h] = -mt[h];
      }
#pragma unroll
      for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[n][e] = __fmul_rn(o[n][e], alpha[e >> 1]);
      // O += P V, 16 keys per step in increasing order.
#pragma unroll
      for (int k2 = 0; k2 < 4; ++k2) {
        uint32_t pa[4];
        pa[0] = pack2<T>(s[2 * k2][0], s[2 * k2][1]);
        pa[1] = pack2<T>(s[2 * k2][2], s[2 * k2][3]);
        pa[2] = pack2<T>(s[2 * k2 + 1][0], s[2 * k2 + 1][1]);
        pa[3] = pack2<T>(s[2 * k2 + 1][2], s[2 * k2 + 1][3]);
#pragma unroll
        for (int dp = 0; dp < NT / 2; ++dp) {
          uint32_t t[4];
          const int r = k2 * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
          ldmatrix_x4_trans(t, svt + swz<D>(r, dp * 2 + (lane >> 4)));
          mma_16816<T>(o[2 * dp], pa, t[0], t[1]);
          mma_16816<T>(o[2 * dp + 1], pa, t[2], t[3]);
        }
      }
      if (split_end) {
        const int j = sg.index(kb), j_begin = sg.begin(j);
        if constexpr (kSplit) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            if (pos_r[h] < j_begin) continue;  // the row has no key in this split
            const int64_t base = int64_t(row_id[h]) * p.max_splits + j;
            if (cq == 0) {
              p.part_ml[base * 2] = m_run[h];
              p.part_ml[base * 2 + 1] = l_run[h];
            }
#pragma unroll
            for (int n = 0; n < NT; ++n)
              *reinterpret_cast<float2*>(p.part_acc + base * D + n * 8 + cq * 2) =
                  make_float2(o[n][h * 2], o[n][h * 2 + 1]);
          }
        } else {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            if (pos_r[h] < j_begin) continue;
            if (j == 0) {
              M_f[h] = m_run[h];
              L_f[h] = l_run[h];
#pragma unroll
              for (int n = 0; n < NT; ++n)
#pragma unroll
                for (int e = 0; e < 2; ++e) acc_f[(n * 4 + h * 2 + e) * 32 + lane] = o[n][h * 2 + e];
            } else {
              const FoldCoef fc = fold_coef(M_f[h], m_run[h]);
              L_f[h] = fold(L_f[h], l_run[h], fc);
              M_f[h] = fc.m;
#pragma unroll
              for (int n = 0; n < NT; ++n)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                  float& A = acc_f[(n * 4 + h * 2 + e) * 32 + lane];
                  A = fold(A, o[n][h * 2 + e], fc);
                }
            }
          }
        }
      }
    }
    __syncthreads();  // the stage read here is refilled by the next iteration's prefetch
  }
  cp_async_wait<0>();

  if constexpr (!kSplit) {
    if (!warp_live) return;
    T* out = static_cast<T*>(p.out);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = warp * 16 + g + h * 8;
      if (r >= valid_rows) continue;
      const RowPos rp = row_pos(p, r);
      T* orow = out + int64_t(q0 + tok0 + rp.tok) * p.o_s0 + int64_t(kvh * p.group + rp.head) * p.o_s1;
      const float inv_l = __frcp_rn(L_f[h]);
#pragma unroll
      for (int n = 0; n < NT; ++n) {
        const float a0 = out_value(acc_f[(n * 4 + h * 2) * 32 + lane], inv_l);
        const float a1 = out_value(acc_f[(n * 4 + h * 2 + 1) * 32 + lane], inv_l);
        *reinterpret_cast<uint32_t*>(orow + n * 8 + cq * 2) = pack2<T>(a0, a1);
      }
    }
  }
}

// Split-parallel mode, second pass: one CTA per (query row, head), thread d folds element d over the
// row's splits 0..split.index(pos) in increasing order with the same fold as the in-kernel mode. kLong:
// split_view's.
template <typename T, int D, bool kLong = true>
__global__ void __launch_bounds__(D) fold_kernel(const Params p) {
  pdl_wait();
  const int row = blockIdx.x;  // token * q_heads + head
  const int t = row / p.q_heads, head = row % p.q_heads;
  int lo = 0, hi = p.num_seqs;  // the sequence owning token t: qsl[seq] <= t < qsl[seq + 1]
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (p.qsl[int64_t(mid) * p.qsl_s] <= t)
      lo = mid;
    else
      hi = mid;
  }
  int seq = lo;
  while (p.qsl[int64_t(seq + 1) * p.qsl_s] <= t) ++seq;  // skips sequences with no rows
  const int q0 = p.qsl[int64_t(seq) * p.qsl_s], q_len = p.qsl[int64_t(seq + 1) * p.qsl_s] - q0;
  const int pos = p.seq_lens[int64_t(seq) * p.sl_s] - q_len + (t - q0);
  const int nsplit = split_view<kLong>(p).index(pos) + 1;
  const int d = threadIdx.x;
  const int64_t base = int64_t(row) * p.max_splits;
  const float* ml = p.part_ml + base * 2;
  const float* acc = p.part_acc + base * D + d;
  float M = ml[0], Lsum = ml[1], A = acc[0];
  // The fold is a chain, but its inputs are not: each round issues the loads of the next kBatch splits'
  // partials, then folds them in increasing order as before (one load in flight at a time left this
  // kernel waiting on memory latency for most of a long decode). The empty asm keeps the compiler from
  // sinking the loads back next to their folds; loads past the last split are not issued (a prefill
  // step in this mode folds millions of rows of one or two splits).
  constexpr int kBatch = 16;
  if (nsplit <= 4) {  // few splits (prefill rows in this mode): the plain loop, without a round's setup
    for (int j = 1; j < nsplit; ++j) {
      const FoldCoef fc = fold_coef(M, ml[2 * j]);
      Lsum = fold(Lsum, ml[2 * j + 1], fc);
      M = fc.m;
      A = fold(A, acc[int64_t(j) * D], fc);
    }
  }
  for (int j0 = nsplit <= 4 ? nsplit : 1; j0 < nsplit; j0 += kBatch) {
    float mb[kBatch] = {}, lb[kBatch] = {}, ab[kBatch] = {};
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      if (j0 + u < nsplit) {
        const int j = j0 + u;
        mb[u] = ml[2 * j];
        lb[u] = ml[2 * j + 1];
        ab[u] = acc[int64_t(j) * D];
      }
    }
    asm volatile("" ::: "memory");
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      if (j0 + u < nsplit) {
        const FoldCoef fc = fold_coef(M, mb[u]);
        Lsum = fold(Lsum, lb[u], fc);
        M = fc.m;
        A = fold(A, ab[u], fc);
      }
    }
  }
  T* out = static_cast<T*>(p.out) + int64_t(t) * p.o_s0 + int64_t(head) * p.o_s1;
  const float v = out_value(A, __frcp_rn(Lsum));
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    out[d] = __float2bfloat16_rn(v);
  else
    out[d] = __float2half_rn(v);
}

}  // namespace bik::cuda::attn

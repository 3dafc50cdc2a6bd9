// Paged causal attention on Hopper (sm_90a): the plan and the softmax of attention.cuh, with the tensor-core
// products done by warpgroup MMA (wgmma) instead of mma.sync.
//
// Same work unit, same plan (attention.cuh's header comment is the contract): one CTA = one sequence, one
// KV head, 64 query rows, 64-key tiles from the split start, the splits of the plan's grid, the fold of
// split results in increasing split order, the in-kernel fold ("prefill") and split-parallel ("decode")
// modes running the same per-split code. The CTA is one warpgroup (4 warps x 16 rows); what changes is
// the arithmetic engine, and it changes for BOTH modes on sm_90, never with the mode or the batch:
//  - S = Q K^T: wgmma m64n64k16, Q and K tiles in shared memory (SS), K steps of 16 over head_dim from
//    d = 0, each adding into the same F32 accumulator of the score;
//  - O += P V: wgmma m64n(D)k16 with P from registers (RS: the score accumulators rounded to the input
//    dtype, which is exactly how the mma.sync kernel forms P) and V from shared memory, in increasing
//    16-key steps;
//  - the softmax between them is attention.cuh's code line by line: the wgmma accumulator of m64nN gives
//    each thread rows lane/4 and lane/4 + 8 of its warp's 16 and columns 8j + 2(lane%4) + {0, 1}, the
//    pattern of mma.sync m16n8 repeated over N/8, so the thread-local order and the 4-lane shuffle tree
//    are unchanged.
// wgmma and mma.sync may round differently, so which engine runs is a function of the device alone:
// wgmma on every sm_90 device whose build has sm_90a code, for every mode and batch. BIK_ATTENTION_SM90=0
// in the environment forces the mma.sync kernel on sm_90 (read at each call; for A/B benchmarks only,
// a process must not mix the two engines if it wants invariant outputs).
//
// Six wgmma variants run the same arithmetic (the helpers below hold all of it), so their outputs are
// bitwise equal and any of them may serve any call: variant 1 (attention_kernel, BIK_ATTENTION_SM90=1)
// runs each tile's steps in sequence; variant 2 (attention_kernel_pipelined, BIK_ATTENTION_SM90=2)
// overlaps the softmax of tile j with the tensor-core work of S(j + 1) and P V(j - 1) and keeps K one tile
// ahead of V in its copy ring; variant 3 (attention_kernel_ws) is warp-specialised: a producer
// warpgroup gathers K and V into a deep mbarrier ring shared by two consumer warpgroups, each running
// variant 1's per-tile sequence on its own 64 query rows; variant 4 (BIK_ATTENTION_SM90=4) is variant 3
// with S(j + 1) issued right behind P V(j) in each consumer; variant 5 (BIK_ATTENTION_SM90=5) is variant
// 4 with the two consumers taking turns at the tensor cores (named-barrier ping-pong), so one's softmax
// overlaps the other's products (the default on sm_90); variant 6 (BIK_ATTENTION_SM90=6) is variant 3
// with variant 2's schedule in each consumer and the fold's accumulators in shared memory. Only the
// schedule differs; tests/gpu/test_attention_cuda.cpp compares them with memcmp.
//
// Shared memory (all tiles 64 rows x D halves, each cut into panels of 64 columns = 128-byte rows, in the
// 128-byte swizzle: 16-byte chunk c of row r at chunk c ^ (r % 8), panels 8 KB apart and 1024-aligned):
//  - Q [64 rows][D]: the A operand of Q K^T, K-major;
//  - K [64 keys][D] x stages: the B operand of Q K^T, K-major (N = keys);
//  - V [64 keys][D] x stages: the B operand of P V, MN-major (N = d contiguous), read with the transpose
//    bit: descriptor leading byte offset = panel stride (next 64 columns of d), stride byte offset =
//    1024 (next 8 keys).
// Loads: cp.async of 16-byte chunks gathered through the block table (each key row from its block), into
// the swizzled layout; stages in a ring (wait, proxy fence, barrier, then refill the stage freed by the
// previous tile; variant 2's ring is described at PipeLayout). Keys past every row's position are
// zero-filled; rows past the CTA's queries are zeros.
#pragma once
#include "cuda/attention.cuh"
#include "cuda/gemm_sm90_wgmma.cuh"
#include "cuda/sm90_sync.cuh"
#include "cuda/vec_io.cuh"

#include <type_traits>

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define BIK_ATTN_SM90_DEVICE_CODE 1  // wgmma exists only in the sm_90a pass
#endif

namespace bik::cuda::attn::sm90 {

using gemm_detail::sm90::Wgmma;  // SS form, both operands K-major: S = Q K^T

template <int D>
struct Layout {
  static constexpr int kPanel = kBK * 128;        // 64 rows of 128 bytes
  static constexpr int kTile = (D / 64) * kPanel;  // one Q, K or V tile
  // D = 128: 2 stages keep a CTA at 81 KB, so two CTAs (two warpgroups) share an SM and one's softmax
  // overlaps the other's wgmma. D = 64 tiles are half the size: 3 stages.
  static constexpr int kStages = D == 128 ? 2 : 3;
  static constexpr int kOffK = kTile, kOffV = kOffK + kStages * kTile;
  static constexpr int kBytes = kOffV + kStages * kTile + 1024;  // + slack to align the base to 1024
  // Byte offset of 16-byte chunk c (columns 8c..8c+7) of row r inside a tile.
  __device__ __forceinline__ static uint32_t off(int r, int c) {
    return uint32_t((c >> 3) * kPanel + r * 128 + (((c & 7) ^ (r & 7)) << 4));
  }
};

// wgmma.mma_async m64nNk16, F32 accumulate, A (16-bit) from registers in the accumulator pattern of
// m64n16 (a[0]: row lane/4, k 2(lane%4)..+1; a[1]: row + 8; a[2], a[3]: the same at k + 8), B from shared
// memory MN-major (transpose bit set). Scale-d is 1: every instruction adds into the accumulators.
template <int N, typename T>
struct WgmmaRS;

// One specialisation per width and input type, from the register and operand lists of
// gemm_sm90_wgmma.cuh: R = N / 2 accumulators, then a[0..3] (operands R..A3), desc_b (B) and scale-d (P),
// written out as literals because PTX names operands by number.
#define BIK_WGMMA_RS_TYPE(N, R, A1, A2, A3, B, P, T, PTX)                                                  \
  template <>                                                                                             \
  struct WgmmaRS<N, T> {                                                                                  \
    __device__ __forceinline__ static void mma(float (&d)[R], const uint32_t (&a)[4], uint64_t desc_b) {  \
      asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #P ", 0;\n"                                       \
                   "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." PTX "." PTX " {" BIK_WGMMA_REGS_##R   \
                   "}, {%" #R ", %" #A1 ", %" #A2 ", %" #A3 "}, %" #B ", p, 1, 1, 1;\n}\n"                  \
                   : BIK_WGMMA_D_##R                                                                      \
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));                    \
    }                                                                                                     \
  };
#define BIK_WGMMA_RS(N, R, A1, A2, A3, B, P)                     \
  BIK_WGMMA_RS_TYPE(N, R, A1, A2, A3, B, P, __nv_bfloat16, "bf16") \
  BIK_WGMMA_RS_TYPE(N, R, A1, A2, A3, B, P, __half, "f16")

BIK_WGMMA_RS(64, 32, 33, 34, 35, 36, 37)
BIK_WGMMA_RS(128, 64, 65, 66, 67, 68, 69)

#ifdef BIK_ATTN_SM90_DEVICE_CODE
using sm90_sync::fence_proxy_async;
using sm90_sync::pin;
using sm90_sync::wgmma_commit;
using sm90_sync::wgmma_fence;
using sm90_sync::wgmma_wait;

// mbarrier ring of the warp-specialised variant (the arrive releases, the wait acquires, CTA scope).
using sm90_sync::mbar_arrive;
using sm90_sync::mbar_init;
using sm90_sync::mbar_wait;
// One arrival on `bar`, made by the hardware once every cp.async this thread has issued so far has
// landed (noinc: it is one of the arrivals the barrier was initialised to expect).
__device__ __forceinline__ void mbar_arrive_on_copies(uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }
// Barrier `id` (1..15) among `threads` threads (a multiple of 32); id 0 is __syncthreads.
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
// Counts this warp's threads as arrived at barrier `id` of `threads` without waiting for the others.
__device__ __forceinline__ void named_barrier_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// Shared-memory matrix descriptor in the 128-byte swizzle: start address, leading and stride byte offsets
// (16-byte units, 14 bits each), base offset 0 (every pattern starts 1024-aligned), layout type 1 (128B).
//  - K-major (Q, K): 8-row groups 1024 bytes apart (stride); the leading offset is unused (1).
//  - MN-major (V): next 64 columns of N one panel further (leading), next 8 keys 1024 bytes on (stride).
__device__ __forceinline__ uint64_t desc_sw128(uint32_t addr, uint32_t lead_bytes, uint32_t stride_bytes) {
  return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t((lead_bytes >> 4) & 0x3FFF) << 16) |
         (uint64_t((stride_bytes >> 4) & 0x3FFF) << 32) | (uint64_t(1) << 62);
}
#endif

// ---- Pieces shared by the two variants. The arithmetic lives only here, so both kernels run the same
// instructions on the same values in the same order per row and their outputs are bitwise equal. ----

#ifdef BIK_ATTN_SM90_DEVICE_CODE
// The CTA's work unit: exactly attention.cuh's.
struct WorkUnit {
  int seq, kvh, q0, tok0, pos0, pmax, kb_begin, kb_last, valid_rows;
};

// Split-parallel mode: the first split of CTA z's run (Params::run_keys); run z's splits end where run
// z + 1's begin. kLong: the instantiation for launches reaching the long splits (policy::SplitView); the
// other one has runs of splits_per_cta splits only.
template <bool kLong>
__device__ __forceinline__ int run_first_split(const Params& p, int z) {
  if (!kLong || p.run_keys == 0) return z * p.splits_per_cta;
  return z * p.run_keys < p.split.long_from ? z * p.run_short : z * p.run_long + p.run_base;
}

// Fills w for query block `qblock` (64 rows) of the sequence bx / kv_heads (bx, bz: the CTA's grid x and
// z); false when there is nothing to do (past its sequence's queries, or a split past every row).
template <bool kSplit, bool kLong = true>
__device__ __forceinline__ bool work_unit(const Params& p, WorkUnit& w, int qblock, int bx, int bz) {
  w.seq = bx / p.kv_heads;
  w.kvh = bx % p.kv_heads;
  w.q0 = p.qsl[int64_t(w.seq) * p.qsl_s];
  const int q_len = p.qsl[int64_t(w.seq + 1) * p.qsl_s] - w.q0;
  w.tok0 = qblock * p.tok_per_cta;
  if (w.tok0 >= q_len) return false;
  const int ntok = min(p.tok_per_cta, q_len - w.tok0);
  const int ctx = p.seq_lens[int64_t(w.seq) * p.sl_s];
  w.pos0 = ctx - q_len + w.tok0;  // absolute position of the CTA's first token
  w.pmax = w.pos0 + ntok - 1;
  if constexpr (kSplit && !kLong) {  // tiles [kb_begin, kb_last] (key positions of the tile starts)
    const int span = p.splits_per_cta * p.split_len;  // the CTA's consecutive splits
    w.kb_begin = bz * span;
    if (w.kb_begin > w.pmax) return false;
    w.kb_last = min(w.kb_begin + span - 1, w.pmax) / kBK * kBK;
  } else if constexpr (kSplit) {
    const int j0 = run_first_split<true>(p, bz), j1 = run_first_split<true>(p, bz + 1);  // splits j0 .. j1 - 1
    w.kb_begin = p.split.begin(j0);
    if (j0 >= j1 || w.kb_begin > w.pmax) return false;
    w.kb_last = min(p.split.begin(j1) - 1, w.pmax) / kBK * kBK;
  } else {
    w.kb_begin = 0;
    w.kb_last = w.pmax / kBK * kBK;
  }
  w.valid_rows = ntok * p.group;
  return true;
}

// Q rows: row r = token (r / group), head kvh * group + r % group; rows past the CTA's tokens are 0.
// Fixed trip counts: a thread keeps its chunk column c and steps rows by kThreads / kChunks, so the
// swizzled destination is a constant plus a multiple of 1024 bytes. tid: the thread's index in its
// warpgroup (all 128 threads of it call this). kUnroll: copies whose addresses are formed at once (the
// warp-specialised producer, on 40 registers, takes 2: with all of them its source pointers spill).
template <typename T, int D, int kUnroll = kRows * (D / 8) / kThreads>
__device__ __forceinline__ void load_q(const Params& p, const WorkUnit& w, uint32_t sq, int tid) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
#pragma unroll kUnroll
  for (int it = 0; it < kRows * kChunks / kThreads; ++it) {
    const int i = tid + it * kThreads;
    const int r = i / kChunks, c = i % kChunks;
    const bool live = r < w.valid_rows;
    const T* src = static_cast<const T*>(p.q);
    if (live) {
      const RowPos rp = row_pos(p, r);
      src += int64_t(w.q0 + w.tok0 + rp.tok) * p.q_s0 + int64_t(w.kvh * p.group + rp.head) * p.q_s1 + c * 8;
    }
    cp_async_16(sq + Layout<D>::off(r, c), src, live ? 16 : 0);
  }
}

// This thread's two rows (g and g + 8 of its warp's 16): position (-1: no row) and global (token, head)
// index for partials and output. Every warp takes part in every wgmma (they are warpgroup-wide); a row
// with no query has Q = 0, every key masked, p = 0, and is never stored.
__device__ __forceinline__ void thread_rows(const Params& p, const WorkUnit& w, int tid, int (&pos_r)[2],
                                            int (&row_id)[2]) {
  const int warp = tid >> 5, g = (tid & 31) >> 2;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = warp * 16 + g + h * 8;
    const RowPos rp = row_pos(p, r);
    pos_r[h] = r < w.valid_rows ? w.pos0 + rp.tok : -1;
    row_id[h] = r < w.valid_rows ? (w.q0 + w.tok0 + rp.tok) * p.q_heads + w.kvh * p.group + rp.head : 0;
  }
}

// Accumulator patterns (m64nN): s[4j + e] is row g + 8 (e / 2), key kb + 8j + 2cq + e % 2 (attention.cuh's
// s[j][e]); o[4n + e] is row g + 8 (e / 2), column 8n + 2cq + e % 2 (its o[n][e]).

// The score accumulators start at zero and every k-step adds into them (scale-d = 1).
__device__ __forceinline__ void zero_scores(float (&s)[32]) {
#pragma unroll
  for (int i = 0; i < 32; ++i) s[i] = 0.f;
  pin(s);
}

// S = Q K^T for one 64-key tile into zeroed accumulators (zero_scores): head_dim in k-steps of 16 from
// d = 0. Issued, not committed: the caller commits, waits and pins s.
template <typename T, int D>
__device__ __forceinline__ void qk_issue(float (&s)[32], uint32_t sq, uint32_t sk) {
  wgmma_fence();
  // Each k-step's descriptors are the tiles' plus the step's byte offset / 16 in the address field
  // (shared addresses stay below 2^18, so the 14-bit field never carries).
  const uint64_t dq = desc_sw128(sq, 16, 1024), dk = desc_sw128(sk, 16, 1024);
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint32_t at = (kk >> 2) * Layout<D>::kPanel + (kk & 3) * 32;  // 16 halves = 32 bytes per k-step
    Wgmma<64, T>::mma(s, dq + (at >> 4), dk + (at >> 4));
  }
}

// Mask, running max, p = 2^(x * scale - max), running sum: attention.cuh's code. Leaves p in s and the
// factor the tile rescales the running output by in alpha.
// kMask = false is the same arithmetic for a tile whose every key is at or before every row's position
// (the mask keeps each of them as it is, so leaving it out changes no bit); it saves the key
// index, compare and select per score, which otherwise cost as many instructions as the softmax itself.
// Rows with no query (pos_r = -1) are not masked there either: their Q is zero, so their scores are
// finite, and their results are never stored.
template <bool kMask>
__device__ __forceinline__ void softmax_tile_body(float (&s)[32], int kb, int cq, const int (&pos_r)[2],
                                                  float scale_log2, float (&m_run)[2], float (&l_run)[2],
                                                  float (&alpha)[2]) {
  const float kNegInf = -__int_as_float(0x7f800000);
  // Key kb + 8j + 2cq + (e & 1) is at or before row h's position iff 8j + (e & 1) <= lim[h].
  const int lim[2] = {pos_r[0] - kb - 2 * cq, pos_r[1] - kb - 2 * cq};
  // The tile's raw max per row, in four independent chains (max is exact in any order).
  float pm[2][4];
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int c = 0; c < 4; ++c) pm[h][c] = kNegInf;
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int h = e >> 1;
      float& x = s[4 * j + e];
      if constexpr (kMask) x = j * 8 + (e & 1) <= lim[h] ? x : kNegInf;
      pm[h][(j & 1) * 2 + (e & 1)] = fmaxf(pm[h][(j & 1) * 2 + (e & 1)], x);
    }
  float mt[2], tsum[2] = {0.f, 0.f};
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    mt[h] = fmaxf(fmaxf(pm[h][0], pm[h][1]), fmaxf(pm[h][2], pm[h][3]));
    mt[h] = fmaxf(mt[h], __shfl_xor_sync(0xffffffffu, mt[h], 1));
    mt[h] = fmaxf(mt[h], __shfl_xor_sync(0xffffffffu, mt[h], 2));
    mt[h] = fmaxf(m_run[h], __fmul_rn(mt[h], scale_log2));  // monotonic rounding: the scaled max
    const float m_use = mt[h] == kNegInf ? 0.f : mt[h];  // a row with no key yet: keep p = 0
    // An unchanged max rescales by exactly 1, so a tile with no key for this row is a no-op.
    alpha[h] = m_run[h] == m_use ? 1.f : ex2_approx(__fsub_rn(m_run[h], m_use));
    mt[h] = -m_use;
  }
  // p = 2^(x * scale - max) with one rounding: fma(x, scale, -max).
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int h = e >> 1;
      float& x = s[4 * j + e];
      x = ex2_approx(__fmaf_rn(x, scale_log2, mt[h]));
      tsum[h] = __fadd_rn(tsum[h], x);
    }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    tsum[h] = __fadd_rn(tsum[h], __shfl_xor_sync(0xffffffffu, tsum[h], 1));
    tsum[h] = __fadd_rn(tsum[h], __shfl_xor_sync(0xffffffffu, tsum[h], 2));
    l_run[h] = __fmaf_rn(l_run[h], alpha[h], tsum[h]);
    m_run[h] = -mt[h];
  }
}
// `masked`: some key of the tile is past the first row's position (the tile reaches the CTA's diagonal).
__device__ __forceinline__ void softmax_tile(float (&s)[32], int kb, int cq, const int (&pos_r)[2], float scale_log2,
                                             float (&m_run)[2], float (&l_run)[2], float (&alpha)[2],
                                             bool masked = true) {
  if (masked)
    softmax_tile_body<true>(s, kb, cq, pos_r, scale_log2, m_run, l_run, alpha);
  else
    softmax_tile_body<false>(s, kb, cq, pos_r, scale_log2, m_run, l_run, alpha);
}

// P = the tile's probabilities rounded to T, in the A-fragment pattern: P's fragment for keys 16k2.. is
// the score pattern of those 16 columns: (s[8k2], s[8k2 + 1]) row g, (s[8k2 + 2], ..3) row g + 8, then
// the same 8 keys on.
template <typename T>
__device__ __forceinline__ void pack_p(uint32_t (&pa)[4][4], const float (&s)[32]) {
#pragma unroll
  for (int k2 = 0; k2 < 4; ++k2) {
#pragma unroll
    for (int r = 0; r < 4; ++r) pa[k2][r] = pack2<T>(s[8 * k2 + 2 * r], s[8 * k2 + 2 * r + 1]);
    pin(pa[k2]);
  }
}

// O *= alpha, per row.
template <int R>
__device__ __forceinline__ void rescale_o(float (&o)[R], const float (&alpha)[2]) {
#pragma unroll
  for (int i = 0; i < R; ++i) o[i] = __fmul_rn(o[i], alpha[(i >> 1) & 1]);
  pin(o);
}

// A split's first tile starts O at zero (what rescaling the zeros would give: alpha is 0 or 1 there);
// any other tile rescales it. `start` is uniform over the warpgroup.
template <int R>
__device__ __forceinline__ void start_or_rescale_o(float (&o)[R], const float (&alpha)[2], bool start) {
  if (start) {
#pragma unroll
    for (int i = 0; i < R; ++i) o[i] = 0.f;
    pin(o);
  } else {
    rescale_o(o, alpha);
  }
}

// O += P V, 16 keys per step in increasing order. Issued, not committed; wgmma reads pa and o
// asynchronously, so neither may be touched before the group completes.
template <typename T, int D>
__device__ __forceinline__ void pv_issue(float (&o)[D / 2], const uint32_t (&pa)[4][4], uint32_t sv) {
  wgmma_fence();
  const uint64_t dv = desc_sw128(sv, Layout<D>::kPanel, 1024);
#pragma unroll
  for (int k2 = 0; k2 < 4; ++k2)  // keys 16k2.. start 16 rows (2048 bytes) into the V tile
    WgmmaRS<D, T>::mma(o, pa[k2], dv + (k2 * 16 * 128 >> 4));
}

// The per-row part of the in-kernel fold of split j (finish_split's comment): the coefficients, which
// rows have a key in the split, and the folded (M, L).
template <bool kAllLive>
__device__ __forceinline__ void fold_rows(int j, int j_begin, const int (&pos_r)[2], const float (&m)[2],
                                          const float (&l)[2], float (&M_f)[2], float (&L_f)[2], FoldCoef (&fc)[2],
                                          bool (&live)[2]) {
  const bool first = j == 0;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    live[h] = kAllLive || pos_r[h] >= j_begin;
    fc[h] = fold_coef(M_f[h], m[h]);
    fc[h].m = first ? m[h] : fc[h].m;
    fc[h].ca = first ? 0.f : fc[h].ca;
    fc[h].cb = first ? 1.f : fc[h].cb;
    L_f[h] = live[h] ? fold(L_f[h], l[h], fc[h]) : L_f[h];
    M_f[h] = live[h] ? fc[h].m : M_f[h];
  }
}

// The end of split j for this thread's rows, from the split's (m, l) and its finished o: the partials
// (split-parallel mode) or the fold into (M_f, L_f, accf) in increasing split order (in-kernel fold).
// The fold starts from fold_start's state: split 0 takes the coefficients (ca, cb) = (0, 1), so
// A = fma(-0, 0, x * 1) = x and L = fma(0, 0, l * 1) = l exactly, the split's own values, as the fold
// kernel takes split 0's partials; the coefficients are selected per row, the arithmetic per element
// is the same for every split. A row with no key in split j keeps its fold (a select per element);
// kAllLive (every row of the warpgroup has a key in split j: any split but a CTA's last, whose start
// may lie inside the CTA's tokens) leaves those selects out.
template <int D, bool kSplit, bool kAllLive = false, bool kLong = true>
__device__ __forceinline__ void finish_split(const Params& p, int j, int cq, const int (&pos_r)[2],
                                             const int (&row_id)[2], const float (&m)[2], const float (&l)[2],
                                             const float (&o)[D / 2], float (&accf)[kSplit ? 1 : D / 2],
                                             float (&M_f)[2], float (&L_f)[2]) {
  const int j_begin = split_view<kLong>(p).begin(j);
  if constexpr (kSplit) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if (pos_r[h] < j_begin) continue;  // the row has no key in this split
      const int64_t pbase = int64_t(row_id[h]) * p.max_splits + j;
      if (cq == 0) {
        p.part_ml[pbase * 2] = m[h];
        p.part_ml[pbase * 2 + 1] = l[h];
      }
#pragma unroll
      for (int n = 0; n < D / 8; ++n)
        *reinterpret_cast<float2*>(p.part_acc + pbase * D + n * 8 + cq * 2) =
            make_float2(o[4 * n + 2 * h], o[4 * n + 2 * h + 1]);
    }
  } else {
    // Written as selects (the fold is computed and dropped where it does not apply) so the compiler
    // keeps accf in place: as branches it holds two copies of it and runs out of registers at D = 128.
    FoldCoef fc[2];
    bool live[2];
    fold_rows<kAllLive>(j, j_begin, pos_r, m, l, M_f, L_f, fc, live);
#pragma unroll
    for (int i = 0; i < D / 2; ++i) {
      const int h = (i >> 1) & 1;  // o[4n + 2h + e] belongs to row h
      const float An = fold(accf[i], o[i], fc[h]);
      accf[i] = live[h] ? An : accf[i];
    }
  }
}

// The same fold with the folded accumulators in shared memory (variant 6): this thread's D / 2 values
// as D / 8 float4s, `acc` pointing at its first, the next one kThreads float4s on (a warp touches 512
// consecutive bytes per access). Same coefficients, same per-element arithmetic, same order.
template <int D, bool kAllLive = false>
__device__ __forceinline__ void fold_split_smem(float4* acc, int j, int j_begin, const int (&pos_r)[2],
                                                const float (&m)[2], const float (&l)[2], const float (&o)[D / 2],
                                                float (&M_f)[2], float (&L_f)[2]) {
  FoldCoef fc[2];
  bool live[2];
  fold_rows<kAllLive>(j, j_begin, pos_r, m, l, M_f, L_f, fc, live);
#pragma unroll
  for (int i4 = 0; i4 < D / 8; ++i4) {
    float4 a = acc[i4 * kThreads];
    float* av = &a.x;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int i = 4 * i4 + e, h = (i >> 1) & 1;
      const float An = fold(av[e], o[i], fc[h]);
      av[e] = live[h] ? An : av[e];
    }
    acc[i4 * kThreads] = a;
  }
}

// The in-kernel fold's state before split 0 (finish_split): accf = -0, so that fma(-0, 0, x) = x for
// every x, +0 included; M_f and L_f are replaced by split 0's values.
template <int R>
__device__ __forceinline__ void fold_start(float (&accf)[R], float (&M_f)[2], float (&L_f)[2]) {
#pragma unroll
  for (int i = 0; i < R; ++i) accf[i] = -0.f;
  M_f[0] = M_f[1] = 0.f;
  L_f[0] = L_f[1] = 0.f;
}

// Row r of the work unit's query rows in out (its D values are contiguous).
template <typename T>
__device__ __forceinline__ T* out_row(const Params& p, const WorkUnit& w, int r) {
  const RowPos rp = row_pos(p, r);
  return static_cast<T*>(p.out) + int64_t(w.q0 + w.tok0 + rp.tok) * p.o_s0 +
         int64_t(w.kvh * p.group + rp.head) * p.o_s1;
}

// In-kernel fold mode: out = accf * (1 / L_f) (out_value), rounded to T, for this thread's live rows.
template <typename T, int D>
__device__ __forceinline__ void store_out(const Params& p, const WorkUnit& w, int tid, int cq,
                                          const float (&accf)[D / 2], const float (&L_f)[2]) {
  const int warp = tid >> 5, g = (tid & 31) >> 2;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = warp * 16 + g + h * 8;
    if (r >= w.valid_rows) continue;
    T* orow = out_row<T>(p, w, r);
    const float inv_l = __frcp_rn(L_f[h]);
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      const float a0 = out_value(accf[4 * n + 2 * h], inv_l);
      const float a1 = out_value(accf[4 * n + 2 * h + 1], inv_l);
      *reinterpret_cast<uint32_t*>(orow + n * 8 + cq * 2) = pack2<T>(a0, a1);
    }
  }
}

// store_out's values for the warp-specialised kernels, staged through the consumer's Q buffer `sbuf` (the
// caller has seen every wgmma of its warpgroup complete, so nothing reads Q any more) so that a warp
// writes its 16 rows in whole 16-byte chunks: each row's D values are contiguous in out, and a copy
// instruction covers 32 / (D / 8) whole rows, where store_out sends 4-byte pieces of 8 rows at once (two
// 32-byte sectors a row per instruction, 32 instructions a thread; in a 16 x 512 prefill the consumers
// spent ~15% of their stall samples behind those stores: logs_h200/9ae5a99_ncu_prefill_16_512_*). The
// staging uses Layout's swizzle: the 32 lanes' 4-byte writes of one n land in 32 distinct banks, each
// quarter-warp's 16-byte reads in 8 distinct chunk positions. out's rows are 16-byte aligned on CUDA
// (paged_attention checks it). The values and their rounding are store_out's.
template <typename T, int D>
__device__ __forceinline__ void store_out_staged(const Params& p, const WorkUnit& w, int tid, int cq,
                                                 const float (&accf)[D / 2], const float (&L_f)[2], uint32_t sbuf) {
  const int warp = tid >> 5, lane = tid & 31, g = lane >> 2;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = warp * 16 + g + h * 8;
    const float inv_l = __frcp_rn(L_f[h]);
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      const uint32_t v = pack2<T>(out_value(accf[4 * n + 2 * h], inv_l), out_value(accf[4 * n + 2 * h + 1], inv_l));
      asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(sbuf + Layout<D>::off(r, n) + cq * 4), "r"(v) : "memory");
    }
  }
  __syncwarp();  // the warp's 16 rows are its own: only its lanes wrote them
  constexpr int kChunks = D / 8, kRowsPerOp = 32 / kChunks, kOps = 16 / kRowsPerOp;
  // Every read first, into registers of their own, then every store: read and store alternating, each read
  // waited for the store before it to release the registers it reuses (the stores queue behind each other).
  uint4 v[kOps];
#pragma unroll
  for (int it = 0; it < kOps; ++it) {
    const int r = warp * 16 + it * kRowsPerOp + lane / kChunks, c = lane % kChunks;
    asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v[it].x), "=r"(v[it].y), "=r"(v[it].z), "=r"(v[it].w)
                 : "r"(sbuf + Layout<D>::off(r, c))
                 : "memory");
  }
#pragma unroll
  for (int it = 0; it < kOps; ++it) {
    const int r = warp * 16 + it * kRowsPerOp + lane / kChunks, c = lane % kChunks;
    if (r < w.valid_rows) st_global_16(out_row<T>(p, w, r) + c * 8, v[it]);
  }
  __syncwarp();  // every lane's reads are done before lane 0 hands the buffer back (qempty)
}
#endif  // BIK_ATTN_SM90_DEVICE_CODE

// ---- Variant 1 (BIK_ATTENTION_SM90 unset or 1): each tile runs copies -> S wgmma -> softmax -> P V wgmma
// in sequence; the only overlap is between the two CTAs an SM holds. ----
template <typename T, int D, bool kSplit>
__global__ void __launch_bounds__(kThreads, 2) attention_kernel(const Params p) {
  pdl_wait();
#ifdef BIK_ATTN_SM90_DEVICE_CODE
  using Ly = Layout<D>;
  constexpr int S = Ly::kStages;
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  constexpr int kO = D / 2;       // O accumulators per thread (m64nD)
  extern __shared__ __align__(1024) uint8_t smem[];

  WorkUnit w;
  if (!work_unit<kSplit>(p, w, blockIdx.y, blockIdx.x, blockIdx.z)) return;
  const policy::SplitGrid& sg = p.split;
  const uint32_t base = (smem_u32(smem) + 1023u) & ~1023u;
  const uint32_t sq = base;
  auto sk = [&](int s) { return base + Ly::kOffK + s * Ly::kTile; };
  auto sv = [&](int s) { return base + Ly::kOffV + s * Ly::kTile; };
  const T* kc = static_cast<const T*>(p.k_cache);
  const T* vc = static_cast<const T*>(p.v_cache);
  const int32_t* bt = p.block_tables + int64_t(w.seq) * p.bt_s0;

  load_q<T, D>(p, w, sq, threadIdx.x);
  // One K and V tile: key row kb + r from its block of the block table. (Unrolled by 2 only: a full
  // unroll hoists every block-table read and spills registers at D = 128.)
  auto load_tile = [&](int stage, int kb) {
#pragma unroll 2
    for (int it = 0; it < kBK * kChunks / kThreads; ++it) {
      const int i = threadIdx.x + it * kThreads;
      const int r = i / kChunks, c = i % kChunks;
      const int kp = kb + r;
      const bool live = kp <= w.pmax;  // keys past every row's position: zero-filled
      int64_t off = 0;
      if (live) {
        const int64_t blk = bt[int64_t(kp / p.block_size) * p.bt_s1];
        off = blk * p.cache_blk + int64_t(kp % p.block_size) * p.cache_tok + int64_t(w.kvh) * D + c * 8;
      }
      cp_async_16(sk(stage) + Ly::off(r, c), kc + off, live ? 16 : 0);
      cp_async_16(sv(stage) + Ly::off(r, c), vc + off, live ? 16 : 0);
    }
  };
  // Prologue: group 0 = Q and tile 0; groups 1..S-2 = the next tiles (empty past the last one).
  load_tile(0, w.kb_begin);
  cp_async_commit();
#pragma unroll
  for (int t = 1; t < S - 1; ++t) {
    if (w.kb_begin + t * kBK <= w.kb_last) load_tile(t, w.kb_begin + t * kBK);
    cp_async_commit();
  }

  const int cq = threadIdx.x & 3;
  int pos_r[2], row_id[2];
  thread_rows(p, w, threadIdx.x, pos_r, row_id);
  float s[32];
  uint32_t pa[4][4];
  float o[kO];
  float accf[kSplit ? 1 : kO];  // folded over the finished splits (in-kernel fold mode)
  float m_run[2], l_run[2];     // the current split's running max (log2 units) and sum
  float M_f[2], L_f[2];
  fold_start(accf, M_f, L_f);
  const float kNegInf = -__int_as_float(0x7f800000);

  int stage = 0;
  for (int kb = w.kb_begin; kb <= w.kb_last; kb += kBK, stage = stage + 1 == S ? 0 : stage + 1) {
    // Tile kb has landed (this thread's copies), is visible to the async proxy, and every thread is past
    // the previous tile, whose stage the refill below overwrites.
    cp_async_wait<S - 2>();
    fence_proxy_async();
    __syncthreads();
    {
      const int kn = kb + (S - 1) * kBK;
      const int sn = stage + S - 1 >= S ? stage - 1 : stage + S - 1;
      if (kn <= w.kb_last) load_tile(sn, kn);
      cp_async_commit();
    }
    const bool split_start = sg.starts_at(kb);
    const bool split_end = sg.starts_at(kb + kBK) || kb == w.kb_last;
    if (split_start) {
#pragma unroll
      for (int h = 0; h < 2; ++h) m_run[h] = kNegInf, l_run[h] = 0.f;
#pragma unroll
      for (int i = 0; i < kO; ++i) o[i] = 0.f;
    }
    zero_scores(s);
    qk_issue<T, D>(s, sq, sk(stage));
    wgmma_commit();
    wgmma_wait<0>();
    pin(s);
    float alpha[2];
    softmax_tile(s, kb, cq, pos_r, p.scale_log2, m_run, l_run, alpha);
    rescale_o(o, alpha);
    pack_p<T>(pa, s);
    pv_issue<T, D>(o, pa, sv(stage));
    wgmma_commit();
    wgmma_wait<0>();
    pin(o);
    if (split_end) finish_split<D, kSplit>(p, sg.index(kb), cq, pos_r, row_id, m_run, l_run, o, accf, M_f, L_f);
  }
  cp_async_wait<0>();
  if constexpr (!kSplit) store_out<T, D>(p, w, threadIdx.x, cq, accf, L_f);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 900
  __trap();  // sm_90 code without the sm_90a features: the host only launches this where sm_90a was built
#endif
}

// ---- Variant 2 (BIK_ATTENTION_SM90=2): the same pieces, software-pipelined inside the warpgroup. ----
//
// Step j (entered with S(j) complete in `cur`, `nxt` zeroed, P V(j - 1) in flight):
//   copies of K(j + 1) and V(j) landed -> proxy fence -> barrier -> refill the copy ring;
//   issue S(j + 1) into `nxt`         (the tensor cores now hold P V(j - 1) and S(j + 1))
//   softmax of tile j on `cur`        (overlaps both)
//   wait for both; end tile j - 1's split if it ended; O *= alpha_j; P(j) from `cur`; zero `cur` for
//   S(j + 2); issue P V(j)            (it runs through the next step's barrier and copies)
// Accumulator registers are read or written by other instructions only while no wgmma is in flight (the
// rescale, the zeroing, the split's end), and every step issues the same wgmmas: otherwise ptxas cannot
// follow the in-flight groups and serialises every wgmma (ptxas -v: C7514 / C7515; a wait_group 1 that
// retires P V(j - 1) before the softmax is enough to trigger it).
// Per row this is variant 1's sequence of operations on the same values: S(j + 1) reads only Q and K;
// tile j's (m, l) update precedes P V(j); O is rescaled by alpha_j after P V(j - 1) and before P V(j);
// a split's (m, l) are kept (m_end, l_end) past the next tile's reset until its O is complete. The two
// score buffers swap roles every step (the loop body is written out twice so both stay in registers).
//
// Copies: S(j + 1) needs K(j + 1) while P V(j) needs V(j), so K runs one tile ahead of V: copy group G_t
// carries K(t + 1) and V(t) (the first group: Q and K(0)), K and V have separate rings, and step j waits
// for G_j, then issues G_{j + kAhead}. Its K(j + kAhead + 1) takes the stage of K(j), whose S completed in
// step j - 1; its V(j + kAhead) takes the stage of V(j - 2), whose P V completed in step j - 1 (P V(j - 1)
// is still reading V(j - 1)). The barrier at the top of step j orders both refills after every warp's wait.
template <int D>
struct PipeLayout {
  // D = 128: one group ahead keeps a CTA at 97 KB (two per SM); D = 64: two ahead, 65 KB.
  static constexpr int kAhead = D == 128 ? 1 : 2;
  static constexpr int kStagesK = kAhead + 1;  // K(j + 1 .. j + kAhead + 1) after the refill of step j
  static constexpr int kStagesV = kAhead + 2;  // V(j - 1 .. j + kAhead): P V(j - 1) still reads V(j - 1)
  static constexpr int kTile = Layout<D>::kTile;
  static constexpr int kOffK = kTile, kOffV = kOffK + kStagesK * kTile;
  static constexpr int kBytes = kOffV + kStagesV * kTile + 1024;  // + slack to align the base to 1024
};

template <typename T, int D, bool kSplit>
__global__ void __launch_bounds__(kThreads, 2) attention_kernel_pipelined(const Params p) {
  pdl_wait();
#ifdef BIK_ATTN_SM90_DEVICE_CODE
  using Ly = PipeLayout<D>;
  constexpr int A = Ly::kAhead, SK = Ly::kStagesK, SV = Ly::kStagesV;
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  constexpr int kO = D / 2;       // O accumulators per thread (m64nD)
  extern __shared__ __align__(1024) uint8_t smem[];

  WorkUnit w;
  if (!work_unit<kSplit>(p, w, blockIdx.y, blockIdx.x, blockIdx.z)) return;
  const policy::SplitGrid& sg = p.split;
  const int n = (w.kb_last - w.kb_begin) / kBK + 1;  // tiles
  const uint32_t base = (smem_u32(smem) + 1023u) & ~1023u;
  const uint32_t sq = base;
  auto sk = [&](int t) { return base + Ly::kOffK + (t % SK) * Ly::kTile; };  // stage of K(t)
  auto sv = [&](int t) { return base + Ly::kOffV + (t % SV) * Ly::kTile; };  // stage of V(t)
  const int32_t* bt = p.block_tables + int64_t(w.seq) * p.bt_s0;

  // Rows kb..kb + 63 of one cache (K or V) into a tile: key row kb + r from its block of the block table,
  // keys past every row's position zero-filled.
  auto load_rows = [&](const void* cache, uint32_t dst, int kb) {
    const T* src = static_cast<const T*>(cache);
#pragma unroll 2
    for (int it = 0; it < kBK * kChunks / kThreads; ++it) {
      const int i = threadIdx.x + it * kThreads;
      const int r = i / kChunks, c = i % kChunks;
      const int kp = kb + r;
      const bool live = kp <= w.pmax;
      int64_t off = 0;
      if (live) {
        const int64_t blk = bt[int64_t(kp / p.block_size) * p.bt_s1];
        off = blk * p.cache_blk + int64_t(kp % p.block_size) * p.cache_tok + int64_t(w.kvh) * D + c * 8;
      }
      cp_async_16(dst + Layout<D>::off(r, c), src + off, live ? 16 : 0);
    }
  };
  // Copy group G_t: K(t + 1) and V(t), each only if the tile exists (an empty group otherwise, so that the
  // group count, and with it every wait below, is the same at every step).
  auto load_group = [&](int t) {
    if (t + 1 < n) load_rows(p.k_cache, sk(t + 1), w.kb_begin + (t + 1) * kBK);
    if (t < n) load_rows(p.v_cache, sv(t), w.kb_begin + t * kBK);
    cp_async_commit();
  };

  // Prologue: Q and K(0) in their own group, then G_0 .. G_{A-1}; S(0) once Q and K(0) have landed.
  load_q<T, D>(p, w, sq, threadIdx.x);
  load_rows(p.k_cache, sk(0), w.kb_begin);
  cp_async_commit();
#pragma unroll
  for (int t = 0; t < A; ++t) load_group(t);
  cp_async_wait<A>();
  fence_proxy_async();
  __syncthreads();

  const int cq = threadIdx.x & 3;
  int pos_r[2], row_id[2];
  thread_rows(p, w, threadIdx.x, pos_r, row_id);
  float sa[32], sb[32];  // the scores of the current and the next tile, swapping roles every step
  uint32_t pa[4][4];     // P of the tile whose P V is in flight
  float o[kO];
  float accf[kSplit ? 1 : kO];  // folded over the finished splits (in-kernel fold mode)
  float m_run[2], l_run[2];     // the current split's running max (log2 units) and sum
  float m_end[2], l_end[2];     // a finished split's (m, l), kept until its O is complete
  float M_f[2], L_f[2];
  fold_start(accf, M_f, L_f);
  const float kNegInf = -__int_as_float(0x7f800000);

  zero_scores(sa);
  qk_issue<T, D>(sa, sq, sk(0));
  wgmma_commit();
  wgmma_wait<0>();
  pin(sa);
  zero_scores(sb);

  auto step = [&](int j, float (&cur)[32], float (&nxt)[32]) {
    const int kb = w.kb_begin + j * kBK;
    // G_j (K(j + 1), V(j)) has landed and is visible to the async proxy, and every warp is past the waits
    // of S(j) and P V(j - 2): the stages the refill overwrites (PipeLayout's comment) are free.
    cp_async_wait<A - 1>();
    fence_proxy_async();
    __syncthreads();
    load_group(j + A);

    // Past the last tile the product is still issued, on Q as its own B operand, and thrown away: with
    // a conditional issue ptxas can no longer prove which wgmmas are in flight and serialises them all.
    qk_issue<T, D>(nxt, sq, j + 1 < n ? sk(j + 1) : sq);
    wgmma_commit();
    const bool split_start = sg.starts_at(kb);  // for j > 0 also the end of tile j - 1's split
    if (split_start) {
#pragma unroll
      for (int h = 0; h < 2; ++h) m_end[h] = m_run[h], l_end[h] = l_run[h], m_run[h] = kNegInf, l_run[h] = 0.f;
    }
    float alpha[2];
    softmax_tile(cur, kb, cq, pos_r, p.scale_log2, m_run, l_run, alpha);

    wgmma_wait<0>();  // P V(j - 1) and S(j + 1)
    pin(o);
    pin(nxt);
#pragma unroll
    for (int k2 = 0; k2 < 4; ++k2) pin(pa[k2]);  // P(j - 1) stays in its registers until here
    pack_p<T>(pa, cur);  // first: `cur` is dead from here to its zeroing, which eases the split's end
    if (split_start && j > 0)
      finish_split<D, kSplit>(p, sg.index(kb - kBK), cq, pos_r, row_id, m_end, l_end, o, accf, M_f, L_f);
#pragma unroll
    for (int i = 0; i < kO; ++i) o[i] = split_start ? 0.f : o[i];  // a select: no second copy of o
    rescale_o(o, alpha);
    zero_scores(cur);  // S(j + 2)'s accumulators
    pv_issue<T, D>(o, pa, sv(j));
    wgmma_commit();
  };
  for (int j = 0; j < n; j += 2) {
    step(j, sa, sb);
    if (j + 1 < n) step(j + 1, sb, sa);
  }
  wgmma_wait<0>();
  pin(o);
  finish_split<D, kSplit>(p, sg.index(w.kb_last), cq, pos_r, row_id, m_run, l_run, o, accf, M_f, L_f);
  cp_async_wait<0>();
  if constexpr (!kSplit) store_out<T, D>(p, w, threadIdx.x, cq, accf, L_f);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 900
  __trap();  // sm_90 code without the sm_90a features: the host only launches this where sm_90a was built
#endif
}

// ---- Variants 3, 4 and 5 (BIK_ATTENTION_SM90=3, 4, 5): warp-specialised, two query blocks per CTA. ----
//
// CTA = 3 warpgroups: warpgroups 0 and 1 are consumers, each running variant 1's per-tile sequence for
// its own 64-row query block (blocks 2y' and 2y' + 1 of one sequence and KV head); warpgroup 2 is the
// producer, which only copies K and V tiles into a ring of shared-memory stages that both consumers read.
// Per row nothing changes: a consumer's work unit is exactly the one variant 1's CTA for that block
// computes (same tiles from the same start, same split ends, same helpers in the same order), and
// wgmma is a warpgroup operation whose result for a row depends only on that row's operands. What the
// rows share is the copy of each tile; its keys run to the larger of the two blocks' last positions, so
// a block sees real cached keys where variant 1 had zeros past its own last position. Those keys are
// past every one of the block's rows: they score -inf by the mask (whatever K holds) and get p = 0
// exactly, and 0 times a finite cached value is an exact zero, as for the keys between a row's
// position and its block's end in variant 1. Keys past both blocks are zero-filled as before.
//
// Why it is faster than variant 1: the consumers never compute an address or read the block table (the
// block-table reads and index arithmetic of the gather ran on variant 1's critical path between
// its tensor-core steps), the ring is kStages deep instead of 2..3, each K/V byte copied serves 128
// query rows instead of 64, and the two consumers' tensor-core work and softmax interleave on the SM.
//
// Ring protocol (stage s = t % kStages for stream tile t, parity (t / kStages) & 1):
//  - full[s]: 128 arrivals, one per producer thread, made by the copy hardware once that thread's copies
//    of the tile have landed (cp.async.mbarrier.arrive.noinc), so the producer never waits on a copy.
//    Each consumer thread then issues the proxy fence before its wgmma (the async proxy) reads the
//    stage: the bytes were written through the generic proxy and are visible to it via the barrier;
//  - empty[s]: 8 arrivals, lane 0 of each consumer warp once its P V of the tile has completed (wait
//    group 0), i.e. every wgmma reading the stage is done; the producer waits for it before refilling.
// A consumer whose block ends before the stream does keeps waiting and releasing the remaining tiles
// without computing, so every phase of every barrier gets its arrivals. Tile t's stage needs only tile
// t - kStages released, and each consumer releases its tiles in order, so the ring cannot deadlock; the
// producer runs up to kStages tiles ahead of the slower consumer.
//
// Registers: 384 threads at one CTA per SM start at 168; the producer drops to 40 and the consumers rise
// to 232 (setmaxnreg), which is variant 1's state (O, the fold, the scores and P) without its copy code.
// The grid's y runs over pairs of query blocks from the last (longest causal rows) to the first.
//
// The schedules differ only in the consumers' order of issue (WsSchedule):
//  - kSequential (variant 3): each tile's S, softmax and P V in sequence, as variant 1;
//  - kOverlap (variant 4): S(t + 1) goes to the tensor cores right behind P V(t), before either is waited
//    for, instead of after P V(t) has completed; the registers stay within the same 232 (ptxas: no
//    spills, the two groups stay asynchronous);
//  - kPingPong (variant 5): variant 4's per-warpgroup sequence, with the two consumers taking turns at
//    the tensor cores (the ping-pong below), so one's softmax runs while the other's products do.
//
// Ping-pong. Left alone, the two consumers drift into step: both run their softmax at once (the tensor
// cores idle), then both queue their products (the MUFU and FMA pipes idle). Variant 5 orders the issue
// with two named barriers, kTurnBar + c for consumer c, each of 256 threads: consumer c waits on its own
// (bar.sync, 128 threads) before it issues, and right after its last commit of the turn it arrives on
// its partner's (bar.arrive, the other 128). A turn is one issue of wgmma groups: turn 0 issues S(0),
// turn k >= 1 issues P V(k - 1) and S(k) (the last turn P V alone, as in variant 4). The turns alternate
// strictly, 0, 1, 0, 1, ...: consumer 1 arrives once before its first turn, which opens consumer 0's
// turn 0, and consumer c's turn k needs its partner's turn k - 1 + c. The
// tensor cores run the groups in the order issued, so while consumer 0's softmax of tile k runs, the
// cores work through consumer 1's turn k, and the other way round.
// Unequal work: both consumers take exactly n + 1 turns, n the stream's tile count (the common
// count of the ring). A consumer with fewer tiles (the lower causal block, a block with no key in the
// split, a block past its sequence's queries) takes empty turns after its own (bar.sync then bar.arrive,
// nothing issued), each paired with releasing one remaining ring tile, so its partner's turns always
// find their arrival. Consumer 1 skips the arrival of its turn n (consumer 0 has no turn n + 1), so no
// barrier is left with a partial count when the CTA exits.
// Why it cannot hang: order the turns as g = 2k + c. Turn g waits for (a) the arrival of turn g - 1
// and (b) the ring tile it reads (k for S(k), or k - 1 for an empty turn's release, both waited for
// before the bar.sync), whose copy the producer starts once both consumers have released tile k - S,
// which each does right after its turn k - S + 1 (g' <= 2(k - S + 1) + 1 < g for S >= 2). So every turn
// waits only on turns before it in this order, and the first (consumer 0's turn 0) only on the producer
// and consumer 1's opening arrival, which waits on nothing.
// Per row the order of operations is variant 4's (hence variant 1's); only the moment of issue moves.
enum class WsSchedule { kSequential, kOverlap, kPingPong, kPipelined };
constexpr int kTurnBar = 3;   // named barriers 3 and 4 (0 is __syncthreads)
constexpr int kStoreBar = 1;  // 1 and 2: consumer c's warpgroup before its staged output store
constexpr int kUnitBar = 5;   // the producer warpgroup's hand-out of a dynamically fetched unit

// kAccSmem (variant 6): the in-kernel fold's accumulators live in shared memory (kOffAcc: per consumer,
// D / 8 float4s per thread, thread-interleaved), which frees the registers for a second score buffer;
// the ring loses a stage (D = 128) to make room.
//
// Q buffers (kQBufs; 1 for variant 6, whose shared memory holds the fold): the producer also copies each
// unit's Q rows (both consumers' blocks) into buffer u % kQBufs and writes the unit's description (tile
// count, stream start, each block's WorkUnit) into that buffer's slot, so a consumer starts a unit with
// one barrier wait instead of reading the sequence metadata and copying Q itself; with two buffers that
// happens while the consumers still work on the unit before. qfull[b]: 128 arrivals made by the copy
// hardware once each producer thread's copies have landed (noinc), plus one plain arrive of producer
// thread 0 after its slot stores (release); qempty[b]: lane 0 of each consumer warp once its unit is done.
// After its last unit the producer fills one more slot with n = 0 (plain arrivals only): the consumers' end.
template <int D, bool kAccSmem = false>
struct WsLayout {
  static constexpr int kConsumers = 2;
  static constexpr int kThreads = 128 * (kConsumers + 1);
  static constexpr int kTile = Layout<D>::kTile;
  static constexpr int kStages = D == 128 ? (kAccSmem ? 4 : 5) : 8;
  static constexpr int kQBufs = kAccSmem ? 1 : 2;
  static constexpr int kOffK = kQBufs * kConsumers * kTile;  // Q of buffer b, consumer c at (b * kConsumers + c) * kTile
  static constexpr int kOffV = kOffK + kStages * kTile;
  static constexpr int kOffAcc = kOffV + kStages * kTile;
  static constexpr int kAccBytes = kAccSmem ? kConsumers * attn::kThreads * (D / 2) * 4 : 0;
  // full[kStages], empty[kStages], qfull[kQBufs], qempty[kQBufs]
  static constexpr int kOffBar = kOffAcc + kAccBytes;
  static constexpr int kSlotBytes = 128;  // one unit's description (UnitSlot)
  static constexpr int kOffSlot = kOffBar + (2 * kStages + 2 * kQBufs) * 8;
  static constexpr int kOffHandout = kOffSlot + kQBufs * kSlotBytes;  // two ints: the dynamic hand-out
  static constexpr int kBytes = kOffHandout + 16 + 1024;               // + slack to align the base to 1024
  static_assert(kBytes <= 227 * 1024, "one CTA per SM must fit");
};

template <typename T, int D, bool kSplit, WsSchedule kSchedule, bool kLong = true>
__global__ void __launch_bounds__(WsLayout<D>::kThreads, 1) attention_kernel_ws(const Params p) {
  pdl_wait();
#ifdef BIK_ATTN_SM90_DEVICE_CODE
  using Ly = WsLayout<D, kSchedule == WsSchedule::kPipelined>;
  constexpr int S = Ly::kStages, C = Ly::kConsumers;
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  constexpr int kO = D / 2;       // O accumulators per thread (m64nD)
  extern __shared__ __align__(1024) uint8_t smem[];

  // The CTA's work units: itself (blockIdx), or on a persistent grid (p.units > 0) one unit of each round
  // of gridDim.x consecutive units of the virtual grid, in that order for every role: unit blockIdx.x of
  // even rounds, gridDim.x - 1 - blockIdx.x of odd ones, so the CTA that took a round's first (longest)
  // unit takes the next round's last; or, with p.unit_counter set, whichever unit the counter gives the
  // producer next (the grouped order of unit_at). The producer streams the next unit's tiles into the ring
  // while the consumers finish the current one; the ring's and the barriers' phases carry on from unit to
  // unit, and the consumers learn each unit from its slot. A unit's work is the same either way, so are
  // its bits.
  const bool persistent = p.units > 0;
  const int rounds = persistent ? (p.units + int(gridDim.x) - 1) / int(gridDim.x) : 1;
  auto unit_of_round = [&](int r) {
    return r * int(gridDim.x) + (r & 1 ? int(gridDim.x) - 1 - int(blockIdx.x) : int(blockIdx.x));
  };
  // Unit u: its grid coordinates, query blocks qb0 .. qb0 + C - 1 and the key stream that covers all of
  // them: n tiles from the common start kb_first (0, or the start of the unit's run of splits) to the last
  // tile any of them needs, with pmax_all the last position of any of its rows; n = 0: nothing to do.
  struct Unit {
    int bx, bz, qb0, kb_first, pmax_all, n;
  };
  auto unit_at = [&](int ui) {
    Unit u;
    int by;
    if (persistent && p.order_group > 0) {
      // Grouped order (the dynamic hand-out): groups of order_group CTA columns (sequence x KV head), each
      // group's units row by row of the virtual grid (longest causal rows first), so the units in flight
      // at once read the K/V of a few columns and find them in L2. The persistent grid is never split (z = 0).
      const int G = p.order_group, per = G * p.grid_y, gi = ui / per, rr = ui - gi * per;
      const int gsz = min(G, p.grid_x - gi * G);
      by = rr / gsz, u.bx = gi * G + rr % gsz, u.bz = 0;
    } else if (persistent) {
      u.bx = ui % p.grid_x, by = ui / p.grid_x % p.grid_y, u.bz = ui / (p.grid_x * p.grid_y);
    } else {
      u.bx = int(blockIdx.x), by = int(blockIdx.y), u.bz = int(blockIdx.z);
    }
    const int gy = persistent ? p.grid_y : int(gridDim.y);
    u.qb0 = (gy - 1 - by) * C;
    u.kb_first = kSplit ? split_view<kLong>(p).begin(run_first_split<kLong>(p, u.bz)) : 0;
    int kb_end = -1;
    u.pmax_all = -1;
#pragma unroll
    for (int c = 0; c < C; ++c) {
      WorkUnit w;
      if (work_unit<kSplit, kLong>(p, w, u.qb0 + c, u.bx, u.bz))
        kb_end = max(kb_end, w.kb_last), u.pmax_all = max(u.pmax_all, w.pmax);
    }
    u.n = kb_end < 0 ? 0 : (kb_end - u.kb_first) / kBK + 1;
    return u;
  };
  // Round r's unit into `un`; false when the round has no work for this CTA (past the last unit, or n = 0).
  auto round_unit = [&](int r, Unit& un) {
    const int ui = unit_of_round(r);
    if (persistent && ui >= p.units) return false;
    un = unit_at(ui);
    return un.n != 0;
  };
  if (!persistent && unit_at(0).n == 0) return;  // uniform over the CTA, before any barrier

  const uint32_t base = (smem_u32(smem) + 1023u) & ~1023u;
  auto sk = [&](int s) { return base + Ly::kOffK + s * Ly::kTile; };
  auto sv = [&](int s) { return base + Ly::kOffV + s * Ly::kTile; };
  auto full = [&](int s) { return base + Ly::kOffBar + s * 8; };         // producer -> consumers
  auto empty = [&](int s) { return base + Ly::kOffBar + (S + s) * 8; };  // consumers -> producer
  constexpr int QB = Ly::kQBufs;
  auto sq_of = [&](int b, int c) { return base + (b * C + c) * Ly::kTile; };
  auto qfull = [&](int b) { return base + Ly::kOffBar + (2 * S + b) * 8; };
  auto qempty = [&](int b) { return base + Ly::kOffBar + (2 * S + QB + b) * 8; };
  struct UnitSlot {
    int n, kb_first;
    WorkUnit w[C];
  };
  static_assert(sizeof(UnitSlot) <= Ly::kSlotBytes, "a unit's description fits its slot");
  auto slot = [&](int b) -> UnitSlot& {
    return *reinterpret_cast<UnitSlot*>(smem + (base - smem_u32(smem)) + Ly::kOffSlot + b * Ly::kSlotBytes);
  };
  if (threadIdx.x == 0) {
#pragma unroll
    for (int s = 0; s < S; ++s) {
      mbar_init(full(s), 128);
      mbar_init(empty(s), C * 4);
    }
#pragma unroll
    for (int b = 0; b < QB; ++b) {
      mbar_init(qfull(b), 128 + 1);
      mbar_init(qempty(b), C * 4);
    }
  }
  __syncthreads();

  // The warpgroup index through a broadcast from lane 0, which the compiler knows is the same in every
  // lane of a warp: the consumers' shared-memory addresses and wgmma descriptors then stay in uniform
  // registers instead of being moved there before every wgmma.
  const int wg = __shfl_sync(0xffffffffu, int(threadIdx.x / 128), 0), tid = threadIdx.x % 128, lane = tid & 31;
  if (wg == C) {
    // ---- producer: K and V tiles of the stream into the ring ----
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
    const T* kc = static_cast<const T*>(p.k_cache);
    const T* vc = static_cast<const T*>(p.v_cache);
    // Warp pw copies rows 16pw .. 16pw + 15 of each tile. Lane l (and l + 16) looks up row 16pw + l % 16
    // in the block table; each copy instruction then covers kRowsPerOp whole rows (consecutive lanes,
    // consecutive 16-byte chunks of a row), taking the row's offset from its lane by a shuffle.
    constexpr int kRowsPerOp = 32 / kChunks;
    const int pw = tid >> 5, c = lane % kChunks;
    int s = 0, phase = 0;
    int uq = 0;  // units handed to the consumers so far
    // Dynamic hand-out (p.unit_counter set, persistent grid only): the CTA's next unit is the counter's
    // next value, fetched by producer thread 0 one unit ahead (its latency overlaps the unit before) and
    // passed to the warpgroup through shared memory (two words, alternating, behind named barrier
    // kUnitBar); the CTAs then take the units in order as they free up, whatever their lengths.
    // (The flag and the words' address are re-derived where used: the producer runs on 40 registers. Split
    // launches never take the persistent grid, and their kernels leave this code out.)
    int ahead = 0;
    if (!kSplit && persistent && p.unit_counter != nullptr && tid == 0) ahead = atomicAdd(p.unit_counter, 1);
    for (int r = 0;; ++r) {
      Unit un;
      if (!kSplit && persistent && p.unit_counter != nullptr) {
        const uint32_t word = base + Ly::kOffHandout + (r & 1) * 4;
        if (tid == 0) {
          asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(word), "r"(ahead) : "memory");
          ahead = atomicAdd(p.unit_counter, 1);  // the next one, used at the next round
        }
        named_barrier_sync(kUnitBar, 128);
        int ui;
        asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(ui) : "r"(word) : "memory");
        if (ui >= p.units) break;
        un = unit_at(ui);
        if (un.n == 0) continue;
      } else {
        if (r >= rounds) break;
        if (!round_unit(r, un)) continue;
      }
      const int kb_first = un.kb_first, pmax_all = un.pmax_all, n = un.n;
      {
        // The unit's Q rows and description into Q buffer qb, once the consumers are done with its last unit.
        const int qb = uq % QB;
        mbar_wait(qempty(qb), ((uq / QB) & 1) ^ 1);  // immediate for the first QB units
        if (tid == 0) slot(qb).n = n, slot(qb).kb_first = kb_first;
        // One block at a time (the producer runs on 40 registers): its work unit again (valid_rows 0 when
        // it has nothing to do: its Q rows are zero-filled), into the slot, and its Q rows.
#pragma unroll 1
        for (int cc = 0; cc < C; ++cc) {
          WorkUnit w;
          if (!work_unit<kSplit, kLong>(p, w, un.qb0 + cc, un.bx, un.bz)) w.valid_rows = 0;
          if (tid == 0) slot(qb).w[cc] = w;
          load_q<T, D, 2>(p, w, sq_of(qb, cc), tid);
        }
        mbar_arrive_on_copies(qfull(qb));
        if (tid == 0) mbar_arrive(qfull(qb));  // after the slot's stores
        ++uq;
      }
      const int32_t* bt = p.block_tables + int64_t(un.bx / p.kv_heads) * p.bt_s0;
      const int kvh = un.bx % p.kv_heads;
      // Element offset of row 16pw + lane % 16 of tile t in either cache; -1 past every row's position.
      auto row_offset = [&](int t) -> int64_t {
        const int kp = kb_first + t * kBK + pw * 16 + (lane & 15);
        if (kp > pmax_all) return -1;
        const int64_t blk = bt[int64_t(kp / p.block_size) * p.bt_s1];
        return blk * p.cache_blk + int64_t(kp % p.block_size) * p.cache_tok + int64_t(kvh) * D;
      };
      if (p.block_size % 16 == 0) {
        // Block sizes that are multiples of 16: a warp's 16 rows of a tile lie in one cache block, so the
        // warp looks the block up once a tile and each lane steps its own pointers down the block's rows:
        // copy `it` covers rows 2it and 2it + 1 of the warp (lanes 0-15 and 16-31, chunk c = lane % 16 of
        // D = 128; kRowsPerOp rows of D / 8 chunks for D = 64), the same rows, chunks and destinations as
        // the gather below, without its per-copy shuffles and 64-bit offset arithmetic. Rows past pmax_all
        // are zero-filled as there; their source stays inside the warp's block (or block 0 when the whole
        // warp is past pmax_all), so no address outside the caches is formed.
        const int64_t tok_stride = p.cache_tok * int64_t(sizeof(T));  // bytes between a block's rows
        const int r_lane = lane / kChunks;                              // the lane's row within a copy
        const int bs = p.block_size, step_blocks = kBK / bs, step_rows = kBK % bs;
        // The warp's first key position kpw of tile t as (table index, row in the block), advanced by one
        // tile (kBK keys) per step instead of divided out each time.
        int kpw = kb_first + pw * 16, bi = kpw / bs, br = kpw % bs;
        // Tile t's block is read from the table one tile ahead: the read overlaps the wait for a free stage
        // and the copies of tile t - 1 instead of delaying the copies of tile t.
        int blk = kpw > pmax_all ? 0 : bt[int64_t(bi) * p.bt_s1];
        for (int t = 0; t < n; ++t, kpw += kBK) {
          const int64_t off =
              int64_t(blk) * p.cache_blk + int64_t(br + r_lane) * p.cache_tok + int64_t(kvh) * D + c * 8;
          bi += step_blocks, br += step_rows;
          if (br >= bs) br -= bs, ++bi;
          if (t + 1 < n) blk = kpw + kBK > pmax_all ? 0 : bt[int64_t(bi) * p.bt_s1];
          const char* ksrc = reinterpret_cast<const char*>(kc + off);
          const char* vsrc = reinterpret_cast<const char*>(vc + off);
          mbar_wait(empty(s), phase ^ 1);  // tile t - S released (immediate for the first S tiles)
#pragma unroll
          for (int it = 0; it < 16 / kRowsPerOp; ++it) {
            const int rl = it * kRowsPerOp + r_lane;
            const uint32_t dst = Layout<D>::off(pw * 16 + rl, c);
            const int bytes = kpw + rl <= pmax_all ? 16 : 0;
            cp_async_16(sk(s) + dst, ksrc + it * kRowsPerOp * tok_stride, bytes);
            cp_async_16(sv(s) + dst, vsrc + it * kRowsPerOp * tok_stride, bytes);
          }
          mbar_arrive_on_copies(full(s));
          if (++s == S) s = 0, phase ^= 1;
        }
        continue;
      }
      int64_t off = row_offset(0);
      for (int t = 0; t < n; ++t) {
        mbar_wait(empty(s), phase ^ 1);  // tile t - S released (immediate for the first S tiles)
#pragma unroll
        for (int it = 0; it < 16 / kRowsPerOp; ++it) {
          const int rl = it * kRowsPerOp + lane / kChunks;
          const int64_t o = __shfl_sync(0xffffffffu, off, rl);
          const uint32_t dst = Layout<D>::off(pw * 16 + rl, c);
          const int64_t src = o < 0 ? 0 : o + c * 8;
          cp_async_16(sk(s) + dst, kc + src, o < 0 ? 0 : 16);
          cp_async_16(sv(s) + dst, vc + src, o < 0 ? 0 : 16);
        }
        mbar_arrive_on_copies(full(s));
        if (t + 1 < n) off = row_offset(t + 1);  // the block-table read overlaps the copies in flight
        if (++s == S) s = 0, phase ^= 1;
      }
    }
    {
      // The end: a slot with no tiles.
      const int qb = uq % QB;
      mbar_wait(qempty(qb), ((uq / QB) & 1) ^ 1);
      if (tid == 0) slot(qb).n = 0;
      mbar_arrive(qfull(qb));
      if (tid == 0) mbar_arrive(qfull(qb));
    }
    cp_async_wait_all();  // no copy outlives its thread
    return;
  }

  // ---- consumers: warpgroup wg runs variant 1's loop for query block qb0 + wg over its prefix of the
  // stream, then releases the stream's remaining tiles ----
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
  constexpr bool kPingPong = kSchedule == WsSchedule::kPingPong;
  int s = 0, phase = 0;  // the ring's position, carried from unit to unit
  for (int uq = 0;; ++uq) {
    // The producer's next unit: its description and (once this consumer's Q bytes have landed) its Q.
    const int qb = uq % QB;
    mbar_wait(qfull(qb), (uq / QB) & 1);
    const int n = slot(qb).n;
    if (n == 0) break;  // the producer has no more units
    const int kb_first = slot(qb).kb_first;
    const WorkUnit w = slot(qb).w[wg];
    // Variant 5's turns (the comment above WsSchedule); no-ops for the other schedules.
    [[maybe_unused]] int turn = 0;  // turns this consumer has taken
    [[maybe_unused]] auto turn_begin = [&] {
      if constexpr (kPingPong) named_barrier_sync(kTurnBar + wg, 256);
    };
    [[maybe_unused]] auto turn_end = [&] {
      if constexpr (kPingPong) {
        if (wg == 0 || turn < n) named_barrier_arrive(kTurnBar + 1 - wg, 256);  // consumer 0 has no turn n + 1
        ++turn;
      }
    };
    if constexpr (kPingPong) {
      static_assert(C == 2, "the ping-pong alternates two consumers");
      if (wg == 1) named_barrier_arrive(kTurnBar, 256);  // opens consumer 0's turn 0
    }
    const bool mine = w.valid_rows > 0;  // uniform over the warpgroup
    int t = 0;
    if (mine) {
      const policy::SplitView<kLong> sg = split_view<kLong>(p);
      const uint32_t sq = sq_of(qb, wg);
      fence_proxy_async();  // Q's bytes (generic-proxy copies, seen through qfull) before the wgmmas read them

      const int cq = tid & 3;
      int pos_r[2], row_id[2];
      thread_rows(p, w, tid, pos_r, row_id);
      float sc[32];
      uint32_t pa[4][4];
      float o[kO];
      // Folded over the finished splits (in-kernel fold mode; variant 6 keeps them in shared memory).
      float accf[kSplit || kSchedule == WsSchedule::kPipelined ? 1 : kO];
      float m_run[2], l_run[2];     // the current split's running max (log2 units) and sum
      float M_f[2], L_f[2];
      fold_start(accf, M_f, L_f);
      const float kNegInf = -__int_as_float(0x7f800000);
      // The tile's place in the plan's splits, counted instead of divided out of kb: the split's index and
      // the tile's index in it (the stream starts at a split start). On the long grid a split's tile count
      // is read from the grid where it is needed, and after the last tile the last split is js, or js - 1
      // where that tile ended its split (tis wrapped); on the uniform grid both are the quotients they
      // always were.
      int js = sg.index(kb_first), tis = 0;
      const int uniform_tps = sg.len / kBK;
      auto tps = [&] {
        if constexpr (kLong)
          return sg.length(js) / kBK;
        else
          return uniform_tps;
      };
      auto last_split = [&] {
        if constexpr (kLong)
          return js - (tis == 0);
        else
          return w.kb_last / sg.len;
      };

      if constexpr (kSchedule == WsSchedule::kPipelined) {
        // Variant 6: S(t + 1) is issued before the softmax of tile t, which then runs while the tensor
        // cores compute S(t + 1) and P V(t - 1) (variant 2's schedule, here with the producer warpgroup's
        // ring and the fold's accumulators in shared memory). Step t, entered with S(t) complete in `cur`
        // and P V(t - 1) in flight:
        //   wait for tile t + 1's copies, issue S(t + 1) into `nxt` (on Q past the last tile, dropped);
        //   softmax of tile t (a split start first keeps the ending split's (m, l) in m_end, l_end);
        //   wait for both groups; release tile t - 1's stage; P(t) from `cur`; at a split start, fold
        //   the split that ended with tile t - 1 (its O is complete now); O zeroed or rescaled; zero
        //   `cur` for S(t + 2); issue P V(t).
        // Accumulator registers are touched only while no wgmma is in flight and every step issues the
        // same groups (variant 2's comment says why). Per row the order of operations is variant 1's.
        float4* acc = reinterpret_cast<float4*>(smem + (base - smem_u32(smem)) + Ly::kOffAcc) +
                      wg * (kO / 4) * attn::kThreads + tid;
        if constexpr (!kSplit) {
#pragma unroll
          for (int i4 = 0; i4 < kO / 4; ++i4) acc[i4 * attn::kThreads] = make_float4(-0.f, -0.f, -0.f, -0.f);
        }
        float sb[32];
        float m_end[2] = {0.f, 0.f}, l_end[2] = {0.f, 0.f};  // a finished split's (m, l) until its O is done
        const int n_mine = (w.kb_last - kb_first) / kBK + 1;
        mbar_wait(full(s), phase);
        fence_proxy_async();
        int st_cur = s, st_prev = s;  // stages of tiles t and t - 1
        if (++s == S) s = 0, phase ^= 1;
        zero_scores(sc);
        qk_issue<T, D>(sc, sq, sk(st_cur));
        wgmma_commit();
        wgmma_wait<0>();
        pin(sc);
        zero_scores(sb);
        auto step = [&](int j, float (&cur)[32], float (&nxt)[32]) {
          const int kb = kb_first + j * kBK;
          const bool more = j + 1 < n_mine;
          int st_nxt = st_cur;
          if (more) {
            mbar_wait(full(s), phase);
            fence_proxy_async();
            st_nxt = s;
            if (++s == S) s = 0, phase ^= 1;
          }
          qk_issue<T, D>(nxt, sq, more ? sk(st_nxt) : sq);
          wgmma_commit();
          const bool split_start = tis == 0;
          if (split_start) {
#pragma unroll
            for (int h = 0; h < 2; ++h) m_end[h] = m_run[h], l_end[h] = l_run[h], m_run[h] = kNegInf, l_run[h] = 0.f;
          }
          float alpha[2];
          softmax_tile(cur, kb, cq, pos_r, p.scale_log2, m_run, l_run, alpha, kb + kBK - 1 > w.pos0);
          wgmma_wait<0>();  // P V(t - 1) and S(t + 1)
          pin(o);
          pin(nxt);
#pragma unroll
          for (int k2 = 0; k2 < 4; ++k2) pin(pa[k2]);  // P(t - 1) stays in its registers until here
          if (j > 0 && lane == 0) mbar_arrive(empty(st_prev));  // P V(t - 1) was its stage's last reader
          pack_p<T>(pa, cur);
          if (split_start && j > 0) {  // the split of tile t - 1 ended, and it was not the last one
            if constexpr (kSplit)
              finish_split<D, true, false, kLong>(p, js - 1, cq, pos_r, row_id, m_end, l_end, o, accf, M_f, L_f);
            else
              fold_split_smem<D, true>(acc, js - 1, sg.begin(js - 1), pos_r, m_end, l_end, o, M_f, L_f);
          }
          start_or_rescale_o(o, alpha, split_start);
          zero_scores(cur);  // S(t + 2)'s accumulators
          pv_issue<T, D>(o, pa, sv(st_cur));
          wgmma_commit();
          st_prev = st_cur, st_cur = st_nxt;
          if (++tis == tps()) tis = 0, ++js;
        };
        for (int j = 0; j < n_mine; j += 2) {
          step(j, sc, sb);
          if (j + 1 < n_mine) step(j + 1, sb, sc);
        }
        wgmma_wait<0>();
        pin(o);
        if (lane == 0) mbar_arrive(empty(st_prev));  // the last tile's stage
        t = n_mine;
        // The last split (per-row selects: its start may lie inside the block's tokens), then the output.
        if constexpr (kSplit) {
          finish_split<D, true, false, kLong>(p, last_split(), cq, pos_r, row_id, m_run, l_run, o, accf, M_f, L_f);
        } else {
          const int jl = last_split();
          fold_split_smem<D>(acc, jl, sg.begin(jl), pos_r, m_run, l_run, o, M_f, L_f);
          float af[kO];
#pragma unroll
          for (int i4 = 0; i4 < kO / 4; ++i4) {
            const float4 a = acc[i4 * attn::kThreads];
            af[4 * i4] = a.x, af[4 * i4 + 1] = a.y, af[4 * i4 + 2] = a.z, af[4 * i4 + 3] = a.w;
          }
          store_out<T, D>(p, w, tid, cq, af, L_f);
        }
      } else if constexpr (kSchedule == WsSchedule::kSequential) {
        for (int kb = kb_first; kb <= w.kb_last; kb += kBK) {
          mbar_wait(full(s), phase);
          fence_proxy_async();  // the stage's bytes (generic-proxy writes) before the wgmma reads them
          const bool split_start = tis == 0;
          const bool split_end = tis == tps() - 1 || kb == w.kb_last;
          if (split_start) {
#pragma unroll
            for (int h = 0; h < 2; ++h) m_run[h] = kNegInf, l_run[h] = 0.f;
          }
          zero_scores(sc);
          qk_issue<T, D>(sc, sq, sk(s));
          wgmma_commit();
          wgmma_wait<0>();
          pin(sc);
          float alpha[2];
          softmax_tile(sc, kb, cq, pos_r, p.scale_log2, m_run, l_run, alpha, kb + kBK - 1 > w.pos0);
          start_or_rescale_o(o, alpha, split_start);
          pack_p<T>(pa, sc);
          pv_issue<T, D>(o, pa, sv(s));
          wgmma_commit();
          wgmma_wait<0>();
          pin(o);
          if (lane == 0) mbar_arrive(empty(s));  // this warp's wgmmas reading the stage are done
          if (++s == S) s = 0, phase ^= 1;
          ++t;
          if (split_end && kb != w.kb_last)
            finish_split<D, kSplit, true, kLong>(p, js, cq, pos_r, row_id, m_run, l_run, o, accf, M_f, L_f);
          if (++tis == tps()) tis = 0, ++js;
        }
      } else {
        // Variant 4: S(t + 1) is issued right behind P V(t), so the tensor cores run both back to back
        // and the softmax of tile t + 1 starts once both are done. Per row the order of operations is
        // variant 1's: S(t + 1) reads only Q and K(t + 1); everything else happens in the same sequence.
        // The last tile's step is written out separately without S(t + 1): with a conditional issue ptxas
        // can no longer tell which wgmmas are in flight and serialises them all.
        // Variant 5: the same sequence, each issue inside a turn (turn_begin / turn_end, no-ops for
        // variant 4), P V(t) moved into turn t + 1 next to S(t + 1). Everything a turn's products need
        // (the ring tile, P, the rescaled O, the zeroed scores) is ready before the turn is taken, so the
        // partner waits on this consumer only for the issue itself.
        mbar_wait(full(s), phase);
        fence_proxy_async();
        zero_scores(sc);
        turn_begin();  // turn 0: S(0)
        qk_issue<T, D>(sc, sq, sk(s));
        wgmma_commit();
        turn_end();
        wgmma_wait<0>();
        pin(sc);
        // The last tile is the same step written out once more without S(t + 1) (kLast): a product issued
        // on a condition inside the loop would make ptxas serialise every wgmma, and issuing it on Q and
        // dropping it cost a unit half a tile's products (a tenth of the tensor-core work of a 16 x 512
        // prefill, whose units walk 4.5 tiles on average).
        auto tile = [&](const int kb, auto last_tag) {
          constexpr bool kLast = decltype(last_tag)::value;
          const bool split_start = tis == 0;
          if (split_start) {
#pragma unroll
            for (int h = 0; h < 2; ++h) m_run[h] = kNegInf, l_run[h] = 0.f;
          }
          float alpha[2];
          softmax_tile(sc, kb, cq, pos_r, p.scale_log2, m_run, l_run, alpha, kb + kBK - 1 > w.pos0);
          start_or_rescale_o(o, alpha, split_start);
          pack_p<T>(pa, sc);
          if constexpr (!kPingPong) {
            pv_issue<T, D>(o, pa, sv(s));
            wgmma_commit();
          }
          const int s_next = s + 1 == S ? 0 : s + 1;
          const int phase_next = s + 1 == S ? phase ^ 1 : phase;
          if constexpr (!kLast) {
            mbar_wait(full(s_next), phase_next);
            fence_proxy_async();
            zero_scores(sc);  // S(t + 1)'s accumulators (P(t) is in pa)
          }
          turn_begin();  // variant 5's turn t + 1: P V(t), S(t + 1)
          if constexpr (kPingPong) {
            pv_issue<T, D>(o, pa, sv(s));
            wgmma_commit();
          }
          if constexpr (!kLast) {
            qk_issue<T, D>(sc, sq, sk(s_next));
            wgmma_commit();
          }
          turn_end();
          wgmma_wait<0>();  // P V(t) and S(t + 1)
          pin(o);
          if constexpr (!kLast) pin(sc);
#pragma unroll
          for (int k2 = 0; k2 < 4; ++k2) pin(pa[k2]);  // P(t) stays in its registers until P V(t) is done
          if (lane == 0) mbar_arrive(empty(s));
          s = s_next, phase = phase_next;
          ++t;
          if constexpr (!kLast) {  // a split ending here (the last tile's ends after the loop)
            if (tis == tps() - 1)
              finish_split<D, kSplit, true, kLong>(p, js, cq, pos_r, row_id, m_run, l_run, o, accf, M_f, L_f);
          }
          if (++tis == tps()) tis = 0, ++js;
        };
        for (int kb = kb_first; kb < w.kb_last; kb += kBK) tile(kb, std::false_type{});
        tile(w.kb_last, std::true_type{});
      }
      if constexpr (kSchedule != WsSchedule::kPipelined) {
        // The last split ends after the loop (its start may lie inside the block's tokens: per-row selects).
        finish_split<D, kSplit, false, kLong>(p, last_split(), cq, pos_r, row_id, m_run, l_run, o, accf, M_f, L_f);
        if constexpr (!kSplit) {
          // Staged where the block has rows in more than one warp (prefill); a decode's few rows (group x
          // its queries) go straight out, without the barrier and the round trip through shared memory,
          // which cost 128 x 512 decodes ~2% (logs_h200/630010c_attention_order_store_ab.log).
          if (w.valid_rows > 16) {
            // Every warp of the warpgroup past its last wgmma (the products read Q as one warpgroup operand).
            named_barrier_sync(kStoreBar + wg, 128);
            store_out_staged<T, D>(p, w, tid, cq, accf, L_f, sq);
          } else {
            store_out<T, D>(p, w, tid, cq, accf, L_f);
          }
        }
      }
    }
    if constexpr (kPingPong) {
      // The remaining turns up to n, each empty turn k after releasing ring tile k - 1 (here t == turn - 1
      // once turn > 0: a consumer that computed took turns 0..t, one without a block none).
      for (; turn <= n;) {
        if (turn > 0) {
          mbar_wait(full(s), phase);
          if (lane == 0) mbar_arrive(empty(s));
          if (++s == S) s = 0, phase ^= 1;
          ++t;
        }
        turn_begin();
        turn_end();  // advances turn
      }
    } else {
      for (; t < n; ++t) {
        mbar_wait(full(s), phase);
        if (lane == 0) mbar_arrive(empty(s));
        if (++s == S) s = 0, phase ^= 1;
      }
    }
    // Every wgmma of this warp that read the unit's Q has completed: the buffer and its slot may take the
    // producer's next unit but one.
    if (lane == 0) mbar_arrive(qempty(qb));
  }
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 900
  __trap();  // sm_90 code without the sm_90a features: the host only launches this where sm_90a was built
#endif
}

}  // namespace bik::cuda::attn::sm90

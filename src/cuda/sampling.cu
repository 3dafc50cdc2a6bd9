// Sampling (temperature, top-k, top-p, min-p, Gumbel-max with Philox) and logprobs on CUDA, following
// the definition of src/cpu/sampling.cpp. Three shapes of kernel, one definition:
//   - streaming (sample_stream_kernel, logprobs_stream_kernel, logprobs_cluster_kernel): the row is read
//     once; a CTA keeps the k largest keys it has seen in shared memory (StreamBuffer) and everything
//     after the top-k / top-n cut happens inside them; a row may be split over a cluster of CTAs;
//   - sample_cluster_kernel: a cluster of 8 CTAs holds the row in shared memory and selects by digits;
//   - sample_kernel / logprobs_kernel: one CTA a row, reading the row once per pass.
// The host takes the streaming kernels whenever every row of the batch fits them.
//
// Nothing here sums floats in an order that could vary. Maxima and "best score" reductions are exact
// (a strict total order on (value, index)). Top-k and top-p find their cut by a radix select over a
// 64-bit key that orders the row exactly as the CPU's sort does (larger value first, NaN above all,
// ties by lower index); the histograms count with integer atomics (aggregated per warp), which give the
// same totals in any order. Top-p's probability mass is summed in 2^-40 fixed point for the same reason:
// integer sums are associative. The random number of vocabulary index i is Philox(seed, position,
// i / 4)[i % 4], the generator of core/philox.h shared with the CPU, so a row's token depends on its
// logits and params alone, wherever it sits in the batch. Rows without a filter take the plain draw
// (core/plain_draw.h): a Gumbel score a group of 16 tokens from the group's mass, whose 16 weights are
// summed by one fixed tree in every kernel, then the Gumbel-max inside the winning group.
//
// Where the result may differ from the CPU: logf/exp on the device (and the plain draw's hardware
// exponential) may round differently from the host's libm by an ulp, and top-p's mass is summed in fixed
// point rather than double; either can move the chosen token only when two candidates are within such a
// rounding of each other.
#include <cooperative_groups.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

#include "bik/sampling.h"
#include "core/backend.h"
#include "core/philox.h"
#include "core/plain_draw.h"
#include "cuda/device_info.h"
#include "cuda/rows.cuh"
#include "cuda/sampling.h"
#include "cuda/softmax.cuh"

namespace bik::cuda {
namespace {

namespace cg = cooperative_groups;

// ---- keys ---------------------------------------------------------------------------------------------
// An unsigned key with the order of the CPU's "Descending" (larger first, NaN above everything), with
// -0 and +0 equal. Larger key = earlier in that order.
__device__ __forceinline__ uint32_t value_key(float v) {
  if (v != v) return 0xFFFFFFFFu;
  const uint32_t u = v == 0.0f ? 0u : __float_as_uint(v);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
// Value key in the high half, reversed index in the low half: distinct for distinct indices, and
// equal values order by lower index first.
__device__ __forceinline__ uint64_t order_key(float v, int64_t i) {
  return (uint64_t(value_key(v)) << 32) | uint64_t(0xFFFFFFFFu - uint32_t(i));
}
__device__ __forceinline__ int64_t key_index(uint64_t k) { return int64_t(0xFFFFFFFFu - uint32_t(k)); }

// ---- radix select ---------------------------------------------------------------------------------------
// Walking a row's elements in decreasing key order, finds the first element at which the running sum of
// weights reaches the target; returns a threshold T such that the elements with key >= T are exactly
// that prefix of the order. 8 bits of the key per pass over the row; stops as soon as the crossing bin
// holds one element. `relative`: the target is `value` times the total weight of the visited elements.
struct SelectSmem {
  unsigned long long weight[256];
  unsigned count[256];
  unsigned long long prefix, above;
  int done;
};

// Each warp adds to a bin once per group of its lanes that fall in that bin (__match_any_sync): the
// top bits of a row's keys are nearly all alike, and one shared atomic per element serialises there.
// kWeighted = false: every element weighs 1 and the counts are the weights.
template <bool kWeighted, class Visit>
__device__ uint64_t select_desc(const Visit& visit, bool relative, double value, SelectSmem& sm) {
  uint64_t prefix = 0, above = 0;
  double target = value;
  for (int shift = 56; shift >= 0; shift -= 8) {
    const uint64_t hi_mask = shift == 56 ? 0 : ~0ull << (shift + 8);
    for (int b = threadIdx.x; b < 256; b += blockDim.x) {
      sm.weight[b] = 0;
      sm.count[b] = 0;
    }
    __syncthreads();
    visit([&](uint64_t key, uint64_t w) {
      if ((key & hi_mask) == prefix) {
        const int d = int(key >> shift) & 255;
        const unsigned grp = __match_any_sync(__activemask(), d);
        const bool leader = (threadIdx.x & 31) == __ffs(grp) - 1;
        if constexpr (kWeighted) {
          // w < 2^41: 24 low bits and the rest, each summed over at most 32 lanes without overflow.
          const unsigned lo = __reduce_add_sync(grp, unsigned(w & 0xFFFFFFu));
          const unsigned hi = __reduce_add_sync(grp, unsigned(w >> 24));
          if (leader) {
            atomicAdd(&sm.count[d], unsigned(__popc(grp)));
            const uint64_t total = (uint64_t(hi) << 24) + lo;
            if (total != 0) atomicAdd(&sm.weight[d], (unsigned long long)total);
          }
        } else if (leader) {
          atomicAdd(&sm.count[d], unsigned(__popc(grp)));
        }
      }
    });
    __syncthreads();
    if (threadIdx.x < 32) {
      // Lane l holds bins 255 - 8l down to 248 - 8l: lanes in increasing order walk the keys downwards.
      const int lane = threadIdx.x;
      uint64_t own = 0;
      auto weight = [&](int b) -> uint64_t { return kWeighted ? uint64_t(sm.weight[b]) : uint64_t(sm.count[b]); };
      for (int q = 0; q < 8; ++q) own += weight(255 - 8 * lane - q);
      uint64_t incl = own;
      for (int o = 1; o < 32; o *= 2) {
        const uint64_t y = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += y;
      }
      if (relative && shift == 56) target = value * double(__shfl_sync(0xffffffffu, incl, 31));
      uint64_t cum = above + incl - own;
      int found = -1;
      for (int q = 0; q < 8; ++q) {
        const int b = 255 - 8 * lane - q;
        const uint64_t w = weight(b);
        if (sm.count[b] > 0 && double(cum + w) >= target) {
          found = b;
          break;
        }
        cum += w;
      }
      const unsigned ballot = __ballot_sync(0xffffffffu, found >= 0);
      if (ballot == 0) {
        // Only reachable through rounding of the target: keep the whole remaining range.
        if (lane == 0) {
          sm.prefix = prefix;
          sm.above = above;
          sm.done = 1;
        }
      } else if (lane == __ffs(ballot) - 1) {
        sm.prefix = prefix | (uint64_t(found) << shift);
        sm.above = cum;
        sm.done = sm.count[found] == 1 || shift == 0;
      }
    }
    __syncthreads();
    prefix = sm.prefix;
    above = sm.above;
    const bool done = sm.done != 0;
    __syncthreads();
    if (done) break;
  }
  return prefix;
}

// The largest v of the warp's lanes, in every lane (all 32 lanes call).
__device__ __forceinline__ uint64_t warp_max_u64(uint64_t v) {
  for (int o = 16; o >= 1; o /= 2) {
    const uint64_t y = __shfl_xor_sync(0xffffffffu, v, o);
    v = y > v ? y : v;
  }
  return v;
}

// select_desc for at most blockDim.x (and kSelectSmall) keys in shared memory: keys[0, m), of which those >= lo are visited,
// with weights w[j] (kWeighted) or 1. The same threshold, found by counting instead of by digits: key
// j's running weight is the weight of the visited keys above it, and the first key in decreasing order
// whose running weight with its own reaches the target is the largest key of those that do. (The keys
// ranked as the kept set: any threshold between that key and the next one keeps the same set.) One
// pass of m shared-memory reads a thread (m^2 in all) and three barriers, where select_desc takes up to
// eight digit passes of four barriers each. Falls back to lo (keep every visited key) if no key reaches the target,
// as select_desc keeps its whole range.
constexpr unsigned kSelectSmall = 256;  // select_small's cost grows as m^2: above this select_desc is faster

template <bool kWeighted>
__device__ uint64_t select_small(const uint64_t* keys, const uint64_t* w, unsigned m, uint64_t lo, bool relative,
                                 double value, SelectSmem& sm) {
  const unsigned j = threadIdx.x;
  const bool mine = j < m && keys[j] >= lo;
  const uint64_t key = mine ? keys[j] : 0;
  const uint64_t wj = mine ? (kWeighted ? w[j] : 1) : 0;
  if (threadIdx.x == 0) {
    sm.prefix = 0;
    sm.above = 0;
  }
  __syncthreads();
  // Shared 64-bit atomics are compare-and-swap loops: each warp sums (and below, maximises) over its
  // lanes first and adds once, where one atomic a lane spun through dozens of retries a warp.
  if (relative) {
    uint64_t ws = wj;
    for (int o = 16; o >= 1; o /= 2) ws += __shfl_xor_sync(0xffffffffu, ws, o);
    if ((threadIdx.x & 31) == 0 && ws != 0) atomicAdd(&sm.above, (unsigned long long)ws);
  }
  // Keys above key are >= lo too. Four loads of the shared keys (broadcasts: every lane reads the same
  // key) are issued before their compares, so a pass waits for the shared-memory latency once per four
  // keys instead of once per key (the top-k sampler's cuts spent a fifth of its warp samples waiting at
  // the barrier below for these loops). Eight in flight grew the logprobs cluster kernels' stack frames
  // (8 -> 16 bytes, sm_90a) and slowed their 64-row batches. Integer counts: the same totals in any order.
  uint64_t above = 0;
  if (mine) {
    constexpr unsigned kAhead = 4;
    unsigned i = 0;
    if constexpr (kWeighted) {  // top-p over at most k keys: the plain loop (64-bit weights in flight spill)
      for (; i < m; ++i) above += keys[i] > key ? w[i] : 0;
    } else {
      unsigned count = 0;  // at most m
      for (; i + kAhead <= m; i += kAhead) {
        uint64_t kk[kAhead];
#pragma unroll
        for (unsigned u = 0; u < kAhead; ++u) kk[u] = keys[i + u];
#pragma unroll
        for (unsigned u = 0; u < kAhead; ++u) count += kk[u] > key;
      }
      for (; i < m; ++i) count += keys[i] > key;
      above = count;
    }
  }
  __syncthreads();
  const double target = relative ? value * double(sm.above) : value;
  const uint64_t reach = warp_max_u64(mine && double(above + wj) >= target ? key : 0);
  if ((threadIdx.x & 31) == 0 && reach != 0) atomicMax(&sm.prefix, (unsigned long long)reach);
  __syncthreads();
  const uint64_t r = sm.prefix;
  __syncthreads();
  return r != 0 ? r : lo;
}

// ---- best of a CTA ----------------------------------------------------------------------------------------
struct Best {
  float v;
  int64_t i;
};
constexpr int64_t kNone = INT64_MAX;

struct BestSmem {
  float v[32];
  int64_t i[32];
};

// The element that beats every other (rows.cuh's order); every thread gets it.
__device__ Best block_best(Best b, BestSmem& sm) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  for (int w = 16; w >= 1; w /= 2) {
    const float ov = __shfl_down_sync(0xffffffffu, b.v, w);
    const int64_t oi = __shfl_down_sync(0xffffffffu, b.i, w);
    if (beats(ov, oi, b.v, b.i)) b = Best{ov, oi};
  }
  if (lane == 0) {
    sm.v[warp] = b.v;
    sm.i[warp] = b.i;
  }
  __syncthreads();
  if (warp == 0) {
    b = lane < nw ? Best{sm.v[lane], sm.i[lane]} : Best{-INFINITY, kNone};
    for (int w = 16; w >= 1; w /= 2) {
      const float ov = __shfl_down_sync(0xffffffffu, b.v, w);
      const int64_t oi = __shfl_down_sync(0xffffffffu, b.i, w);
      if (beats(ov, oi, b.v, b.i)) b = Best{ov, oi};
    }
    if (lane == 0) {
      sm.v[0] = b.v;
      sm.i[0] = b.i;
    }
  }
  __syncthreads();
  b = Best{sm.v[0], sm.i[0]};
  __syncthreads();
  return b;
}

// Calls f(i0, x) for each chunk x of V elements [i0, i0 + V) of a row that this thread owns
// (elements past n read as 0; callers skip them).
template <int V, class T, class F>
__device__ __forceinline__ void for_chunks(const T* row, int64_t stride, int64_t n, bool vec, F&& f) {
  const int64_t L = int64_t(blockDim.x) * V;
  for (int64_t i0 = int64_t(threadIdx.x) * V; i0 < n; i0 += L) {
    float x[V];
    load_chunk<V>(row, stride, n, i0, vec, x);
    f(i0, x);
  }
}

// ---- sample ---------------------------------------------------------------------------------------------
struct RowParams {
  float temperature;
  int32_t top_k;
  float top_p;
  int32_t prune;     // PruneMode of the launch (the same for every row)
  double log_min_p;  // log(min_p) computed on the host, as the CPU does; -inf when min_p = 0
  uint64_t seed;
  int64_t position;
};

// A row of the plain draw (core/plain_draw.h): temperature > 0 and no filter.
__host__ __device__ inline bool is_plain(const RowParams& p, int64_t n) {
  return p.temperature != 0 && !(p.top_k > 0 && p.top_k < n) && p.top_p >= 1.0f && !(p.log_min_p > -INFINITY);
}

// A launch's row params: up to N rows travel in the kernel's parameters (no upload, no wait for the
// host), more from device memory. ParamsArg: 48 rows; the streaming kernel also has a form for up to
// 768 rows (30 KB of parameters, below the 32 KB limit), so batches of up to 768 rows never wait.
template <int N>
struct ParamsArgN {
  static constexpr int kRows = N;
  const RowParams* dev = nullptr;  // null: the rows are in `inl`
  RowParams inl[N];
  __device__ __forceinline__ RowParams get(int64_t r) const { return dev != nullptr ? dev[r] : inl[r]; }
};
constexpr int kInlineParams = 48;
using ParamsArg = ParamsArgN<kInlineParams>;
using ParamsArgLarge = ParamsArgN<768>;
static_assert(sizeof(RowParams) == 40 && sizeof(ParamsArgLarge) < 32764, "the large form fits a launch's parameters");

// exp(z - zmax) in units of 2^-40: at most 2^40 per element, so up to 2^23 elements sum without overflow.
__device__ __forceinline__ uint64_t fixed_mass(float z, float zmax) {
  return __double2ull_rn(exp(double(z) - double(zmax)) * 0x1p40);
}

// The Gumbel score of a scaled logit z whose index drew the random word w: z - log(-log u).
__device__ __forceinline__ float gumbel_score(float z, uint32_t w) {
  return __fadd_rn(z, -logf(-logf(philox::to_unit(w))));
}

// Pruning the Gumbel draw: most elements drawn lose to the best score already seen, and telling so
// from the uniform u costs one hardware exponential instead of the two correctly rounded logarithms
// (and the division of z) of their score. The scores that are formed are the exact ones, so the token
// is the same with pruning on or off (BIK_SAMPLE_PRUNE=0); `Loose` prunes elements that may still win
// by up to 8.0, the negative control of the test that compares the two. (A thread's draw is bounded by
// its own best so far, which the winner of a long row usually beats by several units, so a control that
// pruned within 1.0 would seldom change a token.)
enum PruneMode : int32_t { kPruneOff = 0, kPruneOn = 1, kPruneLoose = 2 };

// The Gumbel noise g(u) = -log(-log u) is increasing, so z + g(u) < b exactly when u < exp(-exp(-(b - z)))
// (for any sign of b - z). prune_base(bound) lowers the bound by a margin m = 2^-10 (1 + |bound|), far
// above the rounding of d = b - z, of the score's sum and of gumbel_score's logarithms (a few 2^-23
// relative). gumbel_loses tests the weaker 1 - u > exp(-d), which implies u < 1 - exp(-d) <=
// exp(-exp(-d)), with one hardware exponential and no integer conversion: 1 - u is to_unit(~w) exactly
// (u = (2m + 1) 2^-24 with m = w >> 9, and (~w) >> 9 = 2^23 - 1 - m), and the test takes the lower bound
// ((~w) >> 9) 2^-23 of it, whose 1 + that is the float with the bits 0x3f800000 | (~w) >> 9. It is
// compared with r = 1 + 2^-23 + exp(-d) (1 + 2^-16), one rounding (at most 2^-24 below), so passing
// means 1 - u > exp(-d) (1 + 2^-16): the raise of 2^-16 is above the error of ex2.approx and of its
// rounded argument (< 2^-17 while exp(-d) is a normal float; it is +inf or flushed to 0 beyond, which
// never prunes or prunes correctly). So gumbel_loses(zhi, prune_base(bound), w) implies
// gumbel_score(z, w) < bound for every z <= zhi. It prunes only d > 0. The base is -inf when pruning is
// off (exp(-d) is then +inf), NaN for an infinite bound (never prunes).
__device__ __forceinline__ float prune_base(float bound, int32_t mode) {
  if (mode == kPruneOff) return -INFINITY;
  if (mode == kPruneLoose) return __fadd_rn(bound, 8.0f);
  return __fsub_rn(bound, __fmul_rn(0x1p-10f, __fadd_rn(1.0f, fabsf(bound))));
}
__device__ __forceinline__ bool gumbel_loses(float zhi, float base, uint32_t w) {
  constexpr float kLog2e = 1.4426950408889634f;
  const float d = __fsub_rn(base, zhi);
  const float r = __fmaf_rn(ex2_approx(__fmul_rn(-d, kLog2e)), 1.0f + 0x1p-16f, 1.0f + 0x1p-23f);
  return __uint_as_float(0x3f800000u | (~w >> 9)) > r;  // 1 + a lower bound of 1 - u
}

// The Gumbel draw over one Philox block, vocabulary indices [4 j, 4 j + 4): the indices with keep[k] take
// part with scaled logits z[k], and best keeps the winner (beats' order). The block's random words are
// drawn only when one of them takes part; a score that surely loses to best is not formed.
__device__ __forceinline__ void gumbel_block(Best& best, const RowParams& p, int64_t j, const float (&z)[4],
                                             const bool (&keep)[4]) {
  if (!(keep[0] || keep[1] || keep[2] || keep[3])) return;
  const philox::U32x4 rnd = philox::sampling_block(p.seed, p.position, j);
  const float base = prune_base(best.v, p.prune);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if (!keep[k] || gumbel_loses(z[k], base, rnd.v[k])) continue;
    const float score = gumbel_score(z[k], rnd.v[k]);
    if (beats(score, 4 * j + k, best.v, best.i)) best = Best{score, 4 * j + k};
  }
}

// ---- the plain draw (core/plain_draw.h) -------------------------------------------------------------------
// Every kernel forms a group's weights, sum and score with these, in this order, so they agree bit for bit.
using plain_draw::kGroup;

// e = 2^((x - xm) c) for a counted x <= xm: one hardware exponential (2^0 = 1 exactly).
__device__ __forceinline__ float plain_weight(float x, float xm, float c) {
  return ex2_approx(__fmul_rn(__fsub_rn(x, xm), c));
}
// score_g = xm c + log2(s) + N(u_g).
__device__ __forceinline__ float plain_score(float xm, float s, float c, const RowParams& p, int64_t g) {
  const float u = philox::to_unit(philox::group_block(p.seed, p.position, g).v[0]);
  return __fadd_rn(__fadd_rn(__fmul_rn(xm, c), log2f(s)), -log2f(-logf(u)));
}

// Group g of a row, read from memory: its score as Best{score, 16 g} (nothing when no logit of it counts),
// and the largest of its logits (NaN skipped) raised into xmax.
template <class T>
__device__ Best plain_group(const T* xr, int64_t ls1, int64_t n, bool vec, int64_t g, float c, const RowParams& p,
                            float& xmax) {
  constexpr int V = 16 / sizeof(T);
  const int64_t i0 = g * kGroup;
  float x[kGroup];
#pragma unroll
  for (int q = 0; q < kGroup / V; ++q) {
    float chunk[V];
    load_chunk<V>(xr, ls1, n, i0 + q * V, vec, chunk);
#pragma unroll
    for (int k = 0; k < V; ++k) x[q * V + k] = chunk[k];
  }
  float xm = -INFINITY;
#pragma unroll
  for (int k = 0; k < kGroup; ++k) {
    if (i0 + k >= n) continue;
    xmax = fmaxf(xmax, x[k]);
    if (isfinite(x[k])) xm = fmaxf(xm, x[k]);
  }
  if (xm == -INFINITY) return Best{-INFINITY, kNone};
  float e[kGroup];
#pragma unroll
  for (int k = 0; k < kGroup; ++k) e[k] = i0 + k < n && isfinite(x[k]) ? plain_weight(x[k], xm, c) : 0.0f;
  return Best{plain_score(xm, plain_draw::tree16(e), c, p, g), i0};
}

// The token inside the winning group, whose first index is i0: the Gumbel-max of its counted logits with
// the per-token stream. One warp; every lane calls and gets the token.
template <class T>
__device__ int64_t plain_pick(const T* xr, int64_t ls1, int64_t n, int64_t i0, const RowParams& p) {
  const int lane = threadIdx.x & 31;
  const int64_t i = i0 + lane;
  Best b{-INFINITY, kNone};
  if (lane < kGroup && i < n) {
    const float x = to_f32(xr[i * ls1]);
    if (isfinite(x)) {
      const philox::U32x4 r = philox::sampling_block(p.seed, p.position, i >> 2);
      const int k = int(i & 3);  // selects, not an index into a local array
      b = Best{gumbel_score(__fdiv_rn(x, p.temperature), k == 0 ? r.v[0] : k == 1 ? r.v[1] : k == 2 ? r.v[2] : r.v[3]), i};
    }
  }
  for (int o = 16; o >= 1; o /= 2) {
    const float ov = __shfl_xor_sync(0xffffffffu, b.v, o);
    const int64_t oi = __shfl_xor_sync(0xffffffffu, b.i, o);
    if (beats(ov, oi, b.v, b.i)) b = Best{ov, oi};
  }
  return b.i;
}

// The first maximum of z = x / T (NaN as -inf) over the indices [lo, hi) this thread owns (a stride of
// blockDim.x), from memory: the token of a row whose largest logit rules the draw out.
template <class T>
__device__ Best first_max_z(const T* xr, int64_t ls1, int64_t lo, int64_t hi, float temp) {
  Best top{-INFINITY, kNone};
  for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
    const float x = to_f32(xr[i * ls1]);
    const float z = x != x ? -INFINITY : __fdiv_rn(x, temp);
    if (beats(z, i, top.v, top.i)) top = Best{z, i};
  }
  return top;
}

// The plain draw of one row by the CTAs that share it (a CTA, or a cluster of them), each scoring the groups
// of its slice [lo, hi) (whole groups) from memory. `reduce` is the best over every thread of those CTAs
// (every one of them calls it); the CTA with `writes` picks and stores the token.
template <class T, class Reduce>
__device__ void plain_row(int32_t* out, const T* xr, int64_t ls1, int64_t n, bool vec, int64_t lo, int64_t hi,
                          const RowParams& p, bool writes, Reduce&& reduce) {
  const float c = plain_draw::scale(p.temperature);
  float xmax = -INFINITY;
  Best best{-INFINITY, kNone};
  for (int64_t g = lo / kGroup + threadIdx.x; g * kGroup < hi; g += blockDim.x) {
    const Best b = plain_group(xr, ls1, n, vec, g, c, p, xmax);
    if (beats(b.v, b.i, best.v, best.i)) best = b;
  }
  best = reduce(best);
  xmax = reduce(Best{xmax, kNone}).v;
  if (isfinite(__fmul_rn(xmax, c))) {
    if (writes && threadIdx.x < 32) {
      const int64_t tok = plain_pick(xr, ls1, n, best.i, p);
      if (threadIdx.x == 0) *out = int32_t(tok);
    }
    return;
  }
  const Best top = reduce(first_max_z(xr, ls1, lo, hi, p.temperature));
  if (writes && threadIdx.x == 0) *out = int32_t(top.i);
}

// One row by the whole CTA, straight from memory: every pass (the maximum, each select's digits, the
// Gumbel draw) reads the row again. Any params, any blockDim.x.
template <class T>
__device__ __noinline__ void sample_row_generic(int32_t* out, const T* xr, int64_t ls1, int64_t n, bool vec, const RowParams& p,
                                   SelectSmem& sel, BestSmem& bsm) {
  constexpr int V = 16 / sizeof(T);
  static_assert(V % 4 == 0, "a chunk holds whole Philox blocks");
  if (p.temperature == 0) {  // greedy: the first maximum of the raw logits (NaN first)
    Best b{-INFINITY, kNone};
    for_chunks<V>(xr, ls1, n, vec, [&](int64_t i0, const float (&x)[V]) {
#pragma unroll
      for (int k = 0; k < V; ++k)
        if (i0 + k < n && beats(x[k], i0 + k, b.v, b.i)) b = Best{x[k], i0 + k};
    });
    b = block_best(b, bsm);
    if (threadIdx.x == 0) *out = int32_t(b.i);
    return;
  }

  const float temp = p.temperature;
  auto zval = [temp](float x) { return x != x ? -INFINITY : __fdiv_rn(x, temp); };

  if (is_plain(p, n)) {  // the plain draw: a thread a group
    plain_row(out, xr, ls1, n, vec, 0, n, p, true, [&](Best b) { return block_best(b, bsm); });
    return;
  }

  // The largest z and its first index (z has no NaN, so this is the CPU's first_max of z).
  Best top{-INFINITY, kNone};
  for_chunks<V>(xr, ls1, n, vec, [&](int64_t i0, const float (&x)[V]) {
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const float z = zval(x[k]);
      if (i0 + k < n && beats(z, i0 + k, top.v, top.i)) top = Best{z, i0 + k};
    }
  });
  top = block_best(top, bsm);
  const float zmax = top.v;
  if (!isfinite(zmax)) {  // nothing has a positive probability (or +inf dominates)
    if (threadIdx.x == 0) *out = int32_t(top.i);
    return;
  }

  uint64_t thr = 0;  // kept: order_key(z, i) >= thr
  if (p.top_k > 0 && p.top_k < n) {
    auto visit = [&](auto&& f) {
      for_chunks<V>(xr, ls1, n, vec, [&](int64_t i0, const float (&x)[V]) {
#pragma unroll
        for (int k = 0; k < V; ++k)
          if (i0 + k < n) f(order_key(zval(x[k]), i0 + k), uint64_t(1));
      });
    };
    thr = select_desc<false>(visit, false, double(p.top_k), sel);
  }
  if (p.top_p < 1.0f) {
    const uint64_t lo = thr;
    auto visit = [&](auto&& f) {
      for_chunks<V>(xr, ls1, n, vec, [&](int64_t i0, const float (&x)[V]) {
#pragma unroll
        for (int k = 0; k < V; ++k) {
          if (i0 + k >= n) continue;
          const float z = zval(x[k]);
          const uint64_t key = order_key(z, i0 + k);
          if (key >= lo) f(key, fixed_mass(z, zmax));
        }
      });
    };
    const uint64_t tp = select_desc<true>(visit, true, double(p.top_p), sel);
    thr = tp > thr ? tp : thr;
  }

  // Gumbel-max over the kept set.
  Best best{-INFINITY, kNone};
  for_chunks<V>(xr, ls1, n, vec, [&](int64_t i0, const float (&x)[V]) {
#pragma unroll
    for (int q = 0; q < V / 4; ++q) {
      float z[4];
      bool keep[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int64_t i = i0 + 4 * q + k;
        z[k] = zval(x[4 * q + k]);
        keep[k] = i < n && z[k] != -INFINITY && order_key(z[k], i) >= thr &&
                  !(double(z[k]) - double(zmax) < p.log_min_p);
      }
      gumbel_block(best, p, (i0 >> 2) + q, z, keep);
    }
  });
  best = block_best(best, bsm);
  if (threadIdx.x == 0) *out = int32_t(best.i != kNone ? best.i : top.i);
}

template <class T>
__global__ void __launch_bounds__(kMaxRowThreads)
    sample_kernel(int32_t* tokens, int64_t tok_stride, const T* logits, int64_t ls0, int64_t ls1, int64_t rows,
                  int64_t n, const __grid_constant__ ParamsArg params) {
  __shared__ SelectSmem sel;
  __shared__ BestSmem bsm;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = logits + r * ls0;
    sample_row_generic<T>(tokens + r * tok_stride, xr, ls1, n, ls1 == 1 && aligned16_dev(xr), params.get(r), sel, bsm);
  }
}

// ---- sample, one row over a cluster of CTAs (sm_90) ------------------------------------------------------
// The same definition as sample_kernel, for rows of few tokens where one CTA a row leaves the GPU idle:
// a cluster of kSampleCluster CTAs takes a row, each CTA a slice of it, and keeps its slice's z in
// shared memory, so the row is read from memory once and every later pass (the selects' digits, the
// Gumbel draw) reads shared memory. What the CTAs combine is exact: maxima and best scores under a
// strict total order, and integer histograms, summed across the cluster through distributed shared
// memory. So every CTA of a cluster reaches the same threshold, and the token is the one sample_kernel
// picks, bit for bit.
constexpr int kSampleCluster = 8;
constexpr int kSampleThreads = 512;

struct ClusterSmem {
  unsigned long long weight[256];  // the bins summed over the cluster
  unsigned count[256];
  float best_v;  // this CTA's best, read by the others
  int64_t best_i;
};

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// The best of the cluster; every thread of every CTA gets it. Every thread of the cluster must call.
__device__ Best cluster_best(Best b, BestSmem& bsm, ClusterSmem& cx, cg::cluster_group& cluster) {
  b = block_best(b, bsm);
  if (threadIdx.x == 0) {
    cx.best_v = b.v;
    cx.best_i = b.i;
  }
  cluster.sync();
  for (unsigned j = 0; j < cluster.num_blocks(); ++j) {
    const ClusterSmem* o = cluster.map_shared_rank(&cx, j);
    const float ov = o->best_v;
    const int64_t oi = o->best_i;
    if (beats(ov, oi, b.v, b.i)) b = Best{ov, oi};
  }
  cluster.sync();  // cx may be written again
  return b;
}

// select_desc over the whole row held by a cluster: each CTA counts its slice into its own bins, the
// bins are summed over the cluster, and every CTA walks the same sums to the same prefix.
template <bool kWeighted, class Visit>
__device__ uint64_t cluster_select_desc(const Visit& visit, bool relative, double value, SelectSmem& sm,
                                        ClusterSmem& cx, cg::cluster_group& cluster) {
  uint64_t prefix = 0, above = 0;
  double target = value;
  for (int shift = 56; shift >= 0; shift -= 8) {
    const uint64_t hi_mask = shift == 56 ? 0 : ~0ull << (shift + 8);
    for (int b = threadIdx.x; b < 256; b += blockDim.x) {
      sm.weight[b] = 0;
      sm.count[b] = 0;
    }
    __syncthreads();
    visit([&](uint64_t key, uint64_t w) {
      if ((key & hi_mask) == prefix) {
        const int d = int(key >> shift) & 255;
        const unsigned grp = __match_any_sync(__activemask(), d);
        const bool leader = (threadIdx.x & 31) == __ffs(grp) - 1;
        if constexpr (kWeighted) {
          const unsigned lo = __reduce_add_sync(grp, unsigned(w & 0xFFFFFFu));
          const unsigned hi = __reduce_add_sync(grp, unsigned(w >> 24));
          if (leader) {
            atomicAdd(&sm.count[d], unsigned(__popc(grp)));
            const uint64_t total = (uint64_t(hi) << 24) + lo;
            if (total != 0) atomicAdd(&sm.weight[d], (unsigned long long)total);
          }
        } else if (leader) {
          atomicAdd(&sm.count[d], unsigned(__popc(grp)));
        }
      }
    });
    cluster.sync();  // every CTA's bins complete
    for (int b = threadIdx.x; b < 256; b += blockDim.x) {
      unsigned long long w = 0;
      unsigned c = 0;
      for (unsigned j = 0; j < cluster.num_blocks(); ++j) {
        const SelectSmem* o = cluster.map_shared_rank(&sm, j);
        c += o->count[b];
        if constexpr (kWeighted) w += o->weight[b];
      }
      cx.count[b] = c;
      cx.weight[b] = w;
    }
    cluster.sync();  // no CTA clears its bins while another still reads them
    if (threadIdx.x < 32) {
      const int lane = threadIdx.x;
      uint64_t own = 0;
      auto weight = [&](int b) -> uint64_t { return kWeighted ? uint64_t(cx.weight[b]) : uint64_t(cx.count[b]); };
      for (int q = 0; q < 8; ++q) own += weight(255 - 8 * lane - q);
      uint64_t incl = own;
      for (int o = 1; o < 32; o *= 2) {
        const uint64_t y = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += y;
      }
      if (relative && shift == 56) target = value * double(__shfl_sync(0xffffffffu, incl, 31));
      uint64_t cum = above + incl - own;
      int found = -1;
      for (int q = 0; q < 8; ++q) {
        const int b = 255 - 8 * lane - q;
        const uint64_t w = weight(b);
        if (cx.count[b] > 0 && double(cum + w) >= target) {
          found = b;
          break;
        }
        cum += w;
      }
      const unsigned ballot = __ballot_sync(0xffffffffu, found >= 0);
      if (ballot == 0) {
        if (lane == 0) {
          sm.prefix = prefix;
          sm.above = above;
          sm.done = 1;
        }
      } else if (lane == __ffs(ballot) - 1) {
        sm.prefix = prefix | (uint64_t(found) << shift);
        sm.above = cum;
        sm.done = cx.count[found] == 1 || shift == 0;
      }
    }
    __syncthreads();
    prefix = sm.prefix;
    above = sm.above;
    const bool done = sm.done != 0;
    __syncthreads();
    if (done) break;
  }
  return prefix;
}
#endif

// grid (kSampleCluster, rows), clusters of kSampleCluster CTAs along x; CTA `rank` holds the elements
// [rank * slice, (rank + 1) * slice) of its row (slice: a multiple of 16, whole groups of the plain draw),
// z in dynamic shared memory (rows of the plain draw read their groups from memory instead).
template <class T>
__global__ void __launch_bounds__(kSampleThreads, 2)  // two CTAs an SM: one works while the other waits at a barrier
    sample_cluster_kernel(int32_t* tokens, int64_t tok_stride, const T* logits, int64_t ls0, int64_t ls1, int64_t rows,
                          int64_t n, int64_t slice, const __grid_constant__ ParamsArg params) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int V = 16 / sizeof(T);
  constexpr int kU = 16 / V;  // chunks a thread loads at once: 16 values in flight
  extern __shared__ float zs[];
  __shared__ SelectSmem sel;
  __shared__ BestSmem bsm;
  __shared__ ClusterSmem cx;
  cg::cluster_group cluster = cg::this_cluster();
  const int64_t lo = int64_t(cluster.block_rank()) * slice;
  const int64_t hi = lo + slice < n ? lo + slice : n;
  const int64_t step = int64_t(blockDim.x) * V;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const RowParams p = params.get(r);
    const T* xr = logits + r * ls0;
    const bool vec = ls1 == 1 && aligned16_dev(xr);
    const bool greedy = p.temperature == 0;
    const float temp = p.temperature;
    auto zval = [temp](float x) { return x != x ? -INFINITY : __fdiv_rn(x, temp); };

    if (!greedy && is_plain(p, n)) {  // the plain draw: a thread a group of the slice (whole groups)
      plain_row(tokens + r * tok_stride, xr, ls1, n, vec, lo, hi, p, cluster.block_rank() == 0,
                [&](Best b) { return cluster_best(b, bsm, cx, cluster); });
      continue;
    }

    // The slice, once from memory: z (or x when greedy) into shared memory, and its best.
    Best top{-INFINITY, kNone};
    for (int64_t i0 = lo + int64_t(threadIdx.x) * V; i0 < hi; i0 += kU * step) {
      float x[kU][V];
#pragma unroll
      for (int u = 0; u < kU; ++u)
        if (i0 + u * step < hi) load_chunk<V>(xr, ls1, n, i0 + u * step, vec, x[u]);
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const int64_t c0 = i0 + u * step;
        if (c0 >= hi) continue;
#pragma unroll
        for (int k = 0; k < V; ++k) {
          if (c0 + k >= hi) continue;
          const float z = greedy ? x[u][k] : zval(x[u][k]);
          zs[c0 + k - lo] = z;
          if (beats(z, c0 + k, top.v, top.i)) top = Best{z, c0 + k};
        }
      }
    }
    top = cluster_best(top, bsm, cx, cluster);  // also orders the stores to zs before the reads below
    int32_t* out = tokens + r * tok_stride;
    const bool first = cluster.block_rank() == 0 && threadIdx.x == 0;
    if (greedy || !isfinite(top.v)) {  // greedy, or nothing has a positive probability
      if (first) *out = int32_t(top.i);
      continue;
    }
    const float zmax = top.v;

    // This thread's elements of the slice, from shared memory.
    auto for_slice = [&](auto&& f) {
      for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) f(i, zs[i - lo]);
    };
    uint64_t thr = 0;  // kept: order_key(z, i) >= thr
    if (p.top_k > 0 && p.top_k < n) {
      auto visit = [&](auto&& f) { for_slice([&](int64_t i, float z) { f(order_key(z, i), uint64_t(1)); }); };
      thr = cluster_select_desc<false>(visit, false, double(p.top_k), sel, cx, cluster);
    }
    if (p.top_p < 1.0f) {
      const uint64_t lo_key = thr;
      auto visit = [&](auto&& f) {
        for_slice([&](int64_t i, float z) {
          const uint64_t key = order_key(z, i);
          if (key >= lo_key) f(key, fixed_mass(z, zmax));
        });
      };
      const uint64_t tp = cluster_select_desc<true>(visit, true, double(p.top_p), sel, cx, cluster);
      thr = tp > thr ? tp : thr;
    }

    // Gumbel-max over the kept set, Philox blocks of 4 indices (lo is a multiple of 4).
    Best best{-INFINITY, kNone};
    for (int64_t b0 = lo + 4 * int64_t(threadIdx.x); b0 < hi; b0 += 4 * int64_t(blockDim.x)) {
      float z[4];
      bool keep[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int64_t i = b0 + k;
        z[k] = i < hi ? zs[i - lo] : -INFINITY;
        keep[k] = i < hi && z[k] != -INFINITY && order_key(z[k], i) >= thr &&
                  !(double(z[k]) - double(zmax) < p.log_min_p);
      }
      gumbel_block(best, p, b0 >> 2, z, keep);
    }
    best = cluster_best(best, bsm, cx, cluster);
    if (first) *out = int32_t(best.i != kNone ? best.i : top.i);
  }
#endif
}

// ---- streaming top-k -----------------------------------------------------------------------------------
// The row is read once, in tiles; each CTA keeps in shared memory a running superset of the k largest
// keys it has read: buf[0, fill), and thr, below which a key cannot be among the k largest any more (k
// keys at or above it have been seen). Keys at or above thr are appended while streaming; when the
// buffer could not take another tile it is cut to exactly its k largest keys (a radix select), which
// raises thr. Keys are distinct (the index is in the low bits), so "the k largest" is a set: the order
// in which threads appended, and where the cuts fell, change nothing but the time taken.
constexpr int kStreamMaxK = 1024;   // the largest k a streaming kernel keeps
constexpr int kStreamPerThread = 16;  // elements a thread takes per tile (U chunks of V)

// Capacity of a buffer for CTAs of `threads`: a tile on top of the k largest always fits. The dynamic
// shared memory of a streaming kernel starts with the buffer and the spare room of a cut.
__host__ __device__ constexpr int stream_cap(int threads) { return threads * kStreamPerThread + kStreamMaxK; }
__host__ __device__ constexpr int stream_keys(int threads) { return stream_cap(threads) + kStreamMaxK; }

struct StreamSmem {
  uint64_t tile_bar;  // sm_90: the tiles' barrier, one arrive a warp (see StreamBuffer)
  unsigned added[3];  // keys appended during tile t, in added[t % 3] (see StreamBuffer)
  unsigned kept;
  unsigned fill;      // published for the cluster's merge
};

// The float whose value_key is the key's high half (the inverse of value_key; -0 comes back as +0).
__device__ __forceinline__ float key_value(uint64_t key) {
  const uint32_t v = uint32_t(key >> 32);
  return __uint_as_float((v & 0x80000000u) ? (v & 0x7FFFFFFFu) : ~v);
}

// Cuts buf[0, fill) to its k largest keys (fill > k) and returns the k-th largest: the new thr. The kept
// keys go to `spare` (room for kStreamMaxK keys) in any order, then back to the front of buf. Every
// thread calls with the same fill, after a barrier that completed every append; ends with a barrier.
__device__ uint64_t stream_cut(uint64_t* buf, uint64_t* spare, unsigned fill, int64_t k, SelectSmem& sel,
                               StreamSmem& ss) {
  auto visit = [&](auto&& f) {
    for (unsigned j = threadIdx.x; j < fill; j += blockDim.x) f(buf[j], uint64_t(1));
  };
  const uint64_t t = fill <= kSelectSmall && fill <= blockDim.x
                         ? select_small<false>(buf, nullptr, fill, 1, false, double(k), sel)
                         : select_desc<false>(visit, false, double(k), sel);
  if (threadIdx.x == 0) ss.kept = 0;
  __syncthreads();
  for (unsigned j = threadIdx.x; j < fill; j += blockDim.x) {
    const uint64_t key = buf[j];
    if (key >= t) spare[atomicAdd(&ss.kept, 1u)] = key;
  }
  __syncthreads();
  for (unsigned j = threadIdx.x; j < unsigned(k); j += blockDim.x) buf[j] = spare[j];
  __syncthreads();
  return t;
}

// Calls tile(t, b, L, x) for each tile t of [lo, hi) by every thread, x holding this thread's U chunks of
// the tile (all their loads issued first): chunk u starts at b + u L and holds data when b + u L < hi.
// Chunk i0 = lo + (t U + u) L + t0: with L = blockDim.x V and t0 = threadIdx.x V (stream_tiles) the lanes
// of the plan's order when lo = 0 (softmax.cuh); a cluster's CTAs pass the plan's L and their threads'
// offsets. Elements past hi (inside a chunk that straddles it) are the caller's to skip. A tile whose
// chunks all lie inside the row of a 16-byte path comes in U plain 16-byte loads from one address (no
// bounds test, stride or dtype branch a chunk); the same values as load_chunk's.
template <int V, int U, class T, class Tile>
__device__ __forceinline__ void stream_tiles_at(const T* xr, int64_t ls1, int64_t n, int64_t lo, int64_t hi, bool vec,
                                                int64_t L, int64_t t0, Tile&& tile) {
  const int64_t span = U * L;
  const int64_t tiles = hi > lo ? (hi - lo + span - 1) / span : 0;
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t b = lo + t * span + t0;
    float x[U][V];
    if (vec && b + (U - 1) * L + V <= n && b + (U - 1) * L < hi) {
      const uint4* p = reinterpret_cast<const uint4*>(xr + b);
      const int64_t step = L / V;  // 16-byte vectors between a thread's chunks
      uint4 raw[U];
#pragma unroll
      for (int u = 0; u < U; ++u) raw[u] = p[u * step];
#pragma unroll
      for (int u = 0; u < U; ++u) unpack<T, V>(raw[u], x[u]);
    } else {
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (b + u * L < hi) load_chunk<V>(xr, ls1, n, b + u * L, vec, x[u]);
    }
    tile(t, b, L, x);
  }
}
template <int V, int U, class T, class Tile>
__device__ __forceinline__ void stream_tiles(const T* xr, int64_t ls1, int64_t n, int64_t lo, int64_t hi, bool vec,
                                             Tile&& tile) {
  stream_tiles_at<V, U>(xr, ls1, n, lo, hi, vec, int64_t(blockDim.x) * V, int64_t(threadIdx.x) * V, tile);
}

// The running buffer of one CTA. In each tile every thread appends its chunks' keys (offer_tile), then
// the tile ends with a barrier, after which the tile's appends are counted (absorb(t): added[t % 3]; the
// counter of tile t + 2 is zeroed there: its last readers, tile t - 1's, have all passed this tile's
// barrier), and the buffer is cut when another tile might not fit or once it holds max(kEarlyCut, 2k)
// keys. In tile 0, seed() first raises thr to the k-th largest of the threads' own largest keys (k
// distinct keys are at or above it), so the first tile does not flood the buffer.
// kSplit, on sm_90: the barrier is split. tile_end(t) only arrives on an mbarrier (one arrive a warp,
// after the warp's appends) and settle(), at the start of the next tile's offer or before the buffer is
// read, waits for it and absorbs. By then the next tile's loads are in flight (stream_tiles_at issues
// them before calling the tile), where a __syncthreads at the tile's end held every warp with no load
// outstanding (H200, 151936 f32 logits, top-k 50 + top-p, with the path kernel below: 256 rows 74.0
// against 81.6 us a call, 64 rows 43.3 against 52.2; logs_h200/75accef_sampling_split2_ab.log).
// Otherwise tile_end is that __syncthreads and absorbs at once. The logprobs kernels keep it: the
// barrier's state across the tile made the 512-thread kernel spill its sums in every tile (160 against
// 102 us a call; _split_ab.log). The appends, counts, cuts and thr are the same either way, and with
// them the buffer's keys.
// fill, thr and floor are the same in every thread.
constexpr int64_t kEarlyCut = 128;  // StreamBuffer::absorb cuts from max(kEarlyCut, 2k) keys on

template <bool kSplit>
struct StreamBuffer {
  uint64_t* buf;  // stream_cap keys, then kStreamMaxK spare
  StreamSmem* ss;
  SelectSmem* sel;
  int64_t k;
  unsigned cap, tile;
  unsigned fill = 0;
  uint64_t thr = 0;

  int64_t pending = -1;  // sm_90: the tile whose end was arrived at and not yet waited for
  uint32_t parity = 0;   // sm_90: the parity of the tile barrier's next phase

  // Every thread calls, before the row's first tile. The barrier is set up anew for each row: the
  // leading __syncthreads holds thread 0 until every thread has waited for the last row's phases.
  __device__ void begin() {
    __syncthreads();
    if (threadIdx.x < 3) ss->added[threadIdx.x] = 0;
    if (kSplit && threadIdx.x == 0) bulk_bar_init_count(&ss->tile_bar, blockDim.x / 32);
    fill = 0;
    thr = 0;
    pending = -1;
    parity = 0;
    __syncthreads();
  }
  // The value part of thr as a float (-inf while thr = 0): an element of a smaller value is below thr.
  __device__ __forceinline__ float floor() const { return thr == 0 ? -INFINITY : key_value(thr); }
  // The maxima of groups of g lanes (g a power of two <= 32, as large as leaves k groups): fewer
  // candidates make a cheaper select, and k distinct keys are still at or above the k-th largest.
  __device__ void seed(uint64_t own_max) {
    unsigned g = 32;
    while (g > 1 && int64_t(blockDim.x / g) < k) g /= 2;
    for (unsigned o = 1; o < g; o *= 2) {
      const uint64_t y = __shfl_xor_sync(0xffffffffu, own_max, o);
      own_max = y > own_max ? y : own_max;
    }
    const unsigned m = blockDim.x / g;
    const bool leader = threadIdx.x % g == 0;
    uint64_t* spare = buf + cap;  // m <= blockDim.x <= kStreamMaxK keys
    if (leader) spare[threadIdx.x / g] = own_max;
    const int have = __syncthreads_count(leader && own_max != 0);
    if (have < k) return;
    if (m <= kSelectSmall) {
      thr = select_small<false>(spare, nullptr, m, 1, false, double(k), *sel);
    } else {
      auto visit = [&](auto&& f) {
        if (leader && own_max != 0) f(own_max, uint64_t(1));
      };
      thr = select_desc<false>(visit, false, double(k), *sel);
    }
  }
  template <int V>
  __device__ __forceinline__ void append(int64_t t, const uint64_t (&key)[V], const bool (&valid)[V]) {
    unsigned c = 0;
#pragma unroll
    for (int j = 0; j < V; ++j) c += valid[j] && key[j] >= thr;
    if (c == 0) return;
    unsigned pos = fill + atomicAdd(&ss->added[unsigned(t) % 3u], c);
#pragma unroll
    for (int j = 0; j < V; ++j)
      if (valid[j] && key[j] >= thr) buf[pos++] = key[j];
  }
  // Every thread calls once its appends of tile t are done.
  __device__ void tile_end(int64_t t) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if constexpr (kSplit) {
      __syncwarp();  // the warp's appends before its arrive (which releases them to the waiting threads)
      if ((threadIdx.x & 31) == 0) bulk_arrive(&ss->tile_bar);
      pending = t;
      return;
    }
#endif
    __syncthreads();
    absorb(t);
  }
  // Every thread calls, at the same point of the row: waits for the end of the pending tile, if any.
  __device__ void settle() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (!kSplit || pending < 0) return;
    bulk_wait(&ss->tile_bar, parity);
    parity ^= 1u;
    const int64_t t = pending;
    pending = -1;
    absorb(t);
#endif
  }
  // After the barrier that ends tile t.
  __device__ void absorb(int64_t t) {
    fill += ss->added[unsigned(t) % 3u];
    if (threadIdx.x == 0) ss->added[(unsigned(t) + 2u) % 3u] = 0;
    // Cut when another tile might not fit, and also as soon as the buffer holds a few times k keys: the
    // raised thr rules out more of the following tiles, which is worth more than the cut (one select_small
    // over at most kSelectSmall keys while 2k <= kEarlyCut).
    if (fill > cap - tile || (int64_t(fill) > k && int64_t(fill) >= (2 * k > kEarlyCut ? 2 * k : kEarlyCut))) cut();
  }
  // To exactly the k largest (when there are more). Every thread calls, after the row's last tile.
  __device__ void cut() {
    settle();
    if (int64_t(fill) <= k) return;
    thr = stream_cut(buf, buf + cap, fill, k, *sel, *ss);
    fill = unsigned(k);
  }
};

// A lower bound under which z = x / temp (rounded) is surely below zt, for x * inv (inv = 1 / temp
// rounded): the two differ by less than 2^-21 |z| (three roundings), well inside the 2^-18 margin.
__device__ __forceinline__ float z_floor(float zt) {
  return zt == -INFINITY ? -INFINITY : __fsub_rn(__fsub_rn(zt, __fmul_rn(fabsf(zt), 0x1p-18f)), 0x1p-100f);
}

// Offers this thread's elements of tile t to the buffer (every thread calls; ends with tile_end): the
// ranked value of element x is value(x) (its key order_key(value(x), i)); in tile 0 thr is seeded first.
// ruled_out(x, bound), with bound = bound_of(floor()) once a tile, must hold only for elements whose key
// is surely below thr: those are dropped without forming their key.
template <int V, int U, class SB, class Value, class BoundOf, class RuledOut>
__device__ __forceinline__ void offer_tile(SB& sb, int64_t t, int64_t b0, int64_t L, int64_t hi,
                                           const float (&x)[U][V], Value value, BoundOf bound_of,
                                           RuledOut ruled_out) {
  auto keys = [&](int u, uint64_t (&key)[V], bool (&valid)[V]) {
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const int64_t i = b0 + u * L + j;
      valid[j] = i < hi;
      key[j] = order_key(value(x[u][j]), i);
    }
  };
  sb.settle();  // the end of tile t - 1 (its fill and any cut) before this tile's bound and appends
  if (t == 0) {  // seed thr from the threads' own largest keys
    uint64_t own = 0;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      uint64_t key[V];
      bool valid[V];
      keys(u, key, valid);
#pragma unroll
      for (int j = 0; j < V; ++j)
        if (valid[j] && key[j] > own) own = key[j];
    }
    sb.seed(own);
  }
  const float bound = bound_of(sb.floor());
  // kWhole: every chunk of the tile lies before hi (all tiles but a slice's last), so no element needs
  // its index compared; the index is formed only for a key.
  auto offer = [&](auto whole) {
    constexpr bool kWhole = decltype(whole)::value;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (!kWhole && b0 + u * L >= hi) continue;
      // Only the elements not ruled out form their key (for sampling a division each): a warp then runs
      // an element's key when one of its lanes needs that element, not every key of a chunk with one.
      bool cand[V];
      bool any = false;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        cand[j] = (kWhole || b0 + u * L + j < hi) && !ruled_out(x[u][j], bound);
        any |= cand[j];
      }
      if (!any) continue;
      uint64_t key[V];
#pragma unroll
      for (int j = 0; j < V; ++j) {
        key[j] = 0;
        if (cand[j]) key[j] = order_key(value(x[u][j]), b0 + u * L + j);
      }
      sb.append<V>(t, key, cand);
    }
  };
  if (b0 + (U - 1) * L + V <= hi) offer(std::true_type{});
  else offer(std::false_type{});
  sb.tile_end(t);
}

// The largest key of buf[0, count) (0 when empty); every thread gets it.
__device__ uint64_t block_max_key(const uint64_t* buf, unsigned count, StreamSmem& ss, uint64_t* scratch) {
  uint64_t m = 0;
  for (unsigned j = threadIdx.x; j < count; j += blockDim.x) m = buf[j] > m ? buf[j] : m;
  m = warp_max_u64(m);
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = m;
  __syncthreads();
  m = 0;
  for (unsigned w = 0; w < (blockDim.x >> 5); ++w) m = scratch[w] > m ? scratch[w] : m;
  __syncthreads();
  return m;
}

// ---- sample, streaming (one read of the row) -------------------------------------------------------------
// For the rows whose definition needs no more than the k largest keys, or no filter at all:
//   greedy          the best raw logit;
//   top-k (k <= kStreamMaxK), then optional top-p and min-p: everything after the top-k cut happens
//                   inside the k largest keys, and the largest z is the first of them;
//   no filter       the Gumbel draw needs no threshold: the best z and the best score in one pass.
// A row is taken by a cluster of C CTAs (C = 1: a plain launch), CTA j streaming the slice
// [j slice, (j + 1) slice). Top-k: each CTA keeps its slice's k largest keys (a superset of the row's k
// largest inside it), CTA 0 gathers the C buffers through distributed shared memory and finishes the
// row alone. Every other combination is exact (the best of a total order), so the token is the one
// sample_kernel picks, bit for bit. Rows of other params (top-p or min-p without top-k, larger k) are
// left to sample_row_generic on CTA 0; the host sends a batch holding such rows to the other kernels.
constexpr int kStreamThreads = 512;

enum class RowPath { Greedy, TopK, Plain, Generic };
__host__ __device__ inline RowPath row_path(const RowParams& p, int64_t n, int C) {
  if (p.temperature == 0) return RowPath::Greedy;
  if (p.top_k > 0 && p.top_k < n)
    return p.top_k <= kStreamMaxK && int64_t(C) * p.top_k <= stream_cap(kStreamThreads) ? RowPath::TopK
                                                                                          : RowPath::Generic;
  if (p.top_p >= 1.0f && !(p.log_min_p > -INFINITY)) return RowPath::Plain;
  return RowPath::Generic;
}

// kOnly >= 0: every row of the launch takes that RowPath (the host checked), and the kernel holds that
// path's code alone: fewer live registers to share among the paths, so fewer spills in the stream loops.
// kAnyPath: each row's path from its params.
constexpr int kAnyPath = -1;

template <class T, class Params, int kOnly>
__global__ void __launch_bounds__(kStreamThreads, 2)
    sample_stream_kernel(int32_t* tokens, int64_t tok_stride, const T* logits, int64_t ls0, int64_t ls1, int64_t rows,
                         int64_t n, int64_t slice, const __grid_constant__ Params params) {
  constexpr int V = 16 / sizeof(T), U = kStreamPerThread / V;
  static_assert(V % 4 == 0, "a chunk holds whole Philox blocks");
  extern __shared__ uint64_t buf[];
  __shared__ SelectSmem sel;
  __shared__ BestSmem bsm;
  __shared__ ClusterSmem cx;
  __shared__ StreamSmem ss;
  __shared__ uint64_t scratch[32];
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cg::cluster_group cluster = cg::this_cluster();
  const int C = int(cluster.num_blocks()), rank = int(cluster.block_rank());
#else
  const int C = 1, rank = 0;
  (void)cx;
#endif
  // The best of the row's CTAs; every thread of every CTA of the cluster calls.
  auto row_best = [&](Best b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (C > 1) return cluster_best(b, bsm, cx, cluster);
#endif
    return block_best(b, bsm);
  };
  const int64_t lo = int64_t(rank) * slice;
  const int64_t hi = lo + slice < n ? lo + slice : n;
  const unsigned cap = unsigned(stream_cap(kStreamThreads));
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const RowParams p = params.get(r);
    const T* xr = logits + r * ls0;
    const bool vec = ls1 == 1 && aligned16_dev(xr);
    int32_t* out = tokens + r * tok_stride;
    const bool first = rank == 0 && threadIdx.x == 0;
    const float temp = p.temperature;
    auto zval = [temp](float x) { return x != x ? -INFINITY : __fdiv_rn(x, temp); };
    auto no_tile_end = [](int64_t) {};

    switch (kOnly != kAnyPath ? RowPath(kOnly) : row_path(p, n, C)) {
      case RowPath::Generic:
        if (rank == 0) sample_row_generic<T>(out, xr, ls1, n, vec, p, sel, bsm);
        break;

      case RowPath::Greedy: {
        Best b{-INFINITY, kNone};
        stream_tiles<V, U>(xr, ls1, n, lo, hi, vec, [&](int64_t, int64_t b0, int64_t L, const float (&x)[U][V]) {
#pragma unroll
          for (int u = 0; u < U; ++u)
#pragma unroll
            for (int k = 0; k < V; ++k) {
              const int64_t i = b0 + u * L + k;
              if (i < hi && beats(x[u][k], i, b.v, b.i)) b = Best{x[u][k], i};
            }
        });
        b = row_best(b);
        if (first) *out = int32_t(b.i);
        break;
      }

      case RowPath::Plain: {
        // The plain draw (core/plain_draw.h). A lane's chunk of V logits is part of a group of 16, which
        // P = 16 / V adjacent lanes hold (the tile's chunks start at multiples of 16, slices are whole
        // groups): those lanes form the group's maximum and its weights' sum by shuffles, their own V
        // weights first (tree16's subtrees), and then each lane of the warp scores one of the tile's 32
        // groups, one Philox block and one Gumbel score a lane. The largest logit (NaN skipped) decides
        // whether the draw stands (step 5).
        constexpr int P = kGroup / V, kPerU = 32 / P;  // lanes a group, groups a chunk row of the warp
        static_assert(U * kPerU == 32, "a warp's tile holds one group a lane");
        const float c = plain_draw::scale(temp);
        const int lane = int(threadIdx.x & 31);
        float xmax = -INFINITY;
        Best best{-INFINITY, kNone};
        stream_tiles<V, U>(xr, ls1, n, lo, hi, vec, [&](int64_t, int64_t b0, int64_t L, const float (&x)[U][V]) {
          float gm[U], gs[U];
          // kWhole: every chunk of the tile lies before hi, so no element's index is compared.
          auto groups = [&](auto whole) {
            constexpr bool kWhole = decltype(whole)::value;
#pragma unroll
            for (int u = 0; u < U; ++u) {
              bool cnt[V];
              float m = -INFINITY;
#pragma unroll
              for (int k = 0; k < V; ++k) {
                const bool in = kWhole || b0 + u * L + k < hi;
                if (in) xmax = fmaxf(xmax, x[u][k]);  // fmaxf passes over NaN
                cnt[k] = in && isfinite(x[u][k]);
                if (cnt[k]) m = fmaxf(m, x[u][k]);
              }
#pragma unroll
              for (int o = 1; o < P; o *= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
              float e[V];
#pragma unroll
              for (int k = 0; k < V; ++k) e[k] = cnt[k] ? plain_weight(x[u][k], m, c) : 0.0f;
#pragma unroll
              for (int w = 1; w < V; w *= 2)
#pragma unroll
                for (int k = 0; k < V; k += 2 * w) e[k] = e[k] + e[k + w];
              float sum = e[0];
#pragma unroll
              for (int o = 1; o < P; o *= 2) sum = sum + __shfl_xor_sync(0xffffffffu, sum, o);
              gm[u] = m;
              gs[u] = sum;
            }
          };
          // The lanes of a warp shuffle inside `groups`, so they all take one form of it: the whole-tile form
          // only where it holds for every lane (the warp at the row's end takes the checked form).
          if (__all_sync(0xffffffffu, b0 + (U - 1) * L + V <= hi)) groups(std::true_type{});
          else groups(std::false_type{});
          // Lane l scores group q = l % kPerU of chunk row uq = l / kPerU, which lane P q holds.
          const int uq = lane / kPerU, q = lane % kPerU;
          float m = -INFINITY, sum = 0.0f;
#pragma unroll
          for (int u = 0; u < U; ++u) {
            const float mu = __shfl_sync(0xffffffffu, gm[u], P * q), su = __shfl_sync(0xffffffffu, gs[u], P * q);
            if (u == uq) m = mu, sum = su;
          }
          if (m != -INFINITY) {
            const int64_t i0 = b0 + int64_t(P * q - lane) * V + int64_t(uq) * L;  // the group's first index
            const float score = plain_score(m, sum, c, p, i0 / kGroup);
            if (beats(score, i0, best.v, best.i)) best = Best{score, i0};
          }
        });
        best = row_best(best);
        xmax = row_best(Best{xmax, kNone}).v;
        if (isfinite(__fmul_rn(xmax, c))) {
          if (rank == 0 && threadIdx.x < 32) {
            const int64_t tok = plain_pick(xr, ls1, n, best.i, p);
            if (threadIdx.x == 0) *out = int32_t(tok);
          }
          break;
        }
        // Nothing has a positive probability, or +inf dominates: the first maximum of z.
        Best top{-INFINITY, kNone};
        stream_tiles<V, U>(xr, ls1, n, lo, hi, vec, [&](int64_t, int64_t b0, int64_t L, const float (&x)[U][V]) {
#pragma unroll
          for (int u = 0; u < U; ++u)
#pragma unroll
            for (int k = 0; k < V; ++k) {
              const int64_t i = b0 + u * L + k;
              const float z = zval(x[u][k]);
              if (i < hi && beats(z, i, top.v, top.i)) top = Best{z, i};
            }
        });
        top = row_best(top);
        if (first) *out = int32_t(top.i);
        break;
      }

      case RowPath::TopK: {
        const int64_t k = p.top_k;
        const float inv = __frcp_rn(temp);
        StreamBuffer<true> sb{buf, &ss, &sel, k, cap, unsigned(U * kStreamThreads * V)};
        sb.begin();
        // Keys below thr have z below floor(); x * inv below z_floor of it rules z out without a division.
        stream_tiles<V, U>(xr, ls1, n, lo, hi, vec, [&](int64_t t, int64_t b0, int64_t L, const float (&x)[U][V]) {
          offer_tile<V, U>(
              sb, t, b0, L, hi, x, zval, [](float fl) { return z_floor(fl); },
              [inv](float xv, float zlo) { return __fmul_rn(xv, inv) < zlo; });
        });
        sb.cut();
        unsigned total = sb.fill;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        if (C > 1) {  // CTA 0 appends the other CTAs' k largest to its own
          if (threadIdx.x == 0) ss.fill = sb.fill;
          cluster.sync();
          if (rank == 0) {
            for (int j = 1; j < C; ++j) {
              const uint64_t* other = cluster.map_shared_rank(buf, j);
              const unsigned of = cluster.map_shared_rank(&ss, j)->fill;
              for (unsigned q = threadIdx.x; q < of; q += blockDim.x) buf[total + q] = other[q];
              total += of;
            }
          }
          cluster.sync();  // no CTA moves on (and refills its buffer) while CTA 0 still reads it
          if (rank != 0) break;
          __syncthreads();
        }
#endif
        // CTA 0 holds every key the definition can reach: the row's k largest are among `total`.
        const uint64_t top_key = block_max_key(buf, total, ss, scratch);
        const float zmax = key_value(top_key);
        const int64_t top_i = key_index(top_key);
        if (!isfinite(zmax)) {
          if (threadIdx.x == 0) *out = int32_t(top_i);
          break;
        }
        const unsigned cnt = total;
        uint64_t thr = 0;
        const bool small = cnt <= kSelectSmall && cnt <= blockDim.x;  // the weights fit the spare room
        if (int64_t(cnt) > k) {
          auto visit = [&](auto&& f) {
            for (unsigned j = threadIdx.x; j < cnt; j += blockDim.x) f(buf[j], uint64_t(1));
          };
          thr = small ? select_small<false>(buf, nullptr, cnt, 1, false, double(k), sel)
                      : select_desc<false>(visit, false, double(k), sel);
        }
        if (p.top_p < 1.0f) {
          const uint64_t lo_key = thr;
          uint64_t tp;
          if (small) {
            uint64_t* w = buf + cap;
            if (threadIdx.x < cnt) {
              const uint64_t key = buf[threadIdx.x];
              w[threadIdx.x] = key >= lo_key ? fixed_mass(key_value(key), zmax) : 0;
            }
            __syncthreads();
            tp = select_small<true>(buf, w, cnt, lo_key, true, double(p.top_p), sel);
          } else {
            auto visit = [&](auto&& f) {
              for (unsigned j = threadIdx.x; j < cnt; j += blockDim.x) {
                const uint64_t key = buf[j];
                if (key >= lo_key) f(key, fixed_mass(key_value(key), zmax));
              }
            };
            tp = select_desc<true>(visit, true, double(p.top_p), sel);
          }
          thr = tp > thr ? tp : thr;
        }
        Best best{-INFINITY, kNone};
        for (unsigned j = threadIdx.x; j < cnt; j += blockDim.x) {
          const uint64_t key = buf[j];
          const float z = key_value(key);
          if (key < thr || z == -INFINITY || double(z) - double(zmax) < p.log_min_p) continue;
          const int64_t i = key_index(key);
          const float score = gumbel_score(z, philox::sampling_block(p.seed, p.position, i >> 2).v[i & 3]);
          if (beats(score, i, best.v, best.i)) best = Best{score, i};
        }
        best = block_best(best, bsm);
        if (threadIdx.x == 0) *out = int32_t(best.i != kNone ? best.i : top_i);
        break;
      }
    }
    __syncthreads();  // shared memory is reused by the next row
  }
}

// ---- logprobs -----------------------------------------------------------------------------------------------
// The row's log_softmax with the bits of cuda::softmax(log = true) into F32 (same statistics, same
// expression), the chosen token's value, and the top n: the n largest logits (order_key: NaN first, then
// larger, ties by lower index), whose logprobs are then in decreasing order too (log_softmax is monotone).
// Ranking by the logits rather than by the rounded logprobs leaves no ties to rounding, so the set can be
// found in the same read as the statistics (logprobs_stream_kernel). logprobs_kernel: rows of small plans,
// where every pass reads the row again.
constexpr int kMaxTopN = 1024;
static_assert(kMaxTopN <= kStreamMaxK, "the streaming buffer holds the top n");

// Thread 0's view of the row's token: its index and logit, read as soon as the row's stream ends, before
// the reductions and cuts of the row's last steps, so that the two dependent loads complete behind them
// instead of after them. ok: the token lies in the vocabulary (else x is not read).
struct Chosen {
  float x = 0.0f;
  bool ok = false;
};
template <class T>
__device__ __forceinline__ Chosen chosen_of(const T* xr, int64_t ls1, int64_t n, const int32_t* tokens,
                                            int64_t tok_stride, int64_t r) {
  Chosen c;
  if (threadIdx.x == 0) {
    const int32_t tk = tokens[r * tok_stride];
    c.ok = tk >= 0 && tk < n;
    if (c.ok) c.x = to_f32(xr[tk * ls1]);
  }
  return c;
}

// A row's outputs from its statistics and (top_n > 0) the row's top_n keys in buf[0, top_n) in any
// order: the chosen token's logprob (thread 0, from chosen_of; a token outside the vocabulary raises
// *bad), and the top ids and values, each key's rank the number of larger keys (keys are distinct). A
// top value is the logit its key holds (key_value) when that is finite and not zero; a zero (whose sign
// the key does not keep) or a NaN (whose payload it does not keep) is read from the row again.
template <class T>
__device__ void logprobs_outputs(const RowStats& st, const uint64_t* buf, unsigned cnt, const T* xr, int64_t ls1,
                                 int64_t r, float* chosen, int64_t chosen_stride, int32_t* top_ids,
                                 int64_t ids0, int64_t ids1, float* top_vals, int64_t vals0, int64_t vals1,
                                 const Chosen& ch, int* bad) {
  const float log_sum = logf(st.sum);
  auto lp = [&](float x) { return __fsub_rn(__fsub_rn(x, st.max), log_sum); };
  if (threadIdx.x == 0) {
    if (ch.ok) {
      chosen[r * chosen_stride] = lp(ch.x);
    } else {
      chosen[r * chosen_stride] = NAN;
      *static_cast<volatile int*>(bad) = 1;  // host memory: the host finds the first such row
    }
  }
  for (unsigned c = threadIdx.x; c < cnt; c += blockDim.x) {
    const uint64_t key = buf[c];
    int rank = 0;
    for (unsigned j = 0; j < cnt; ++j) rank += buf[j] > key;
    const int64_t i = key_index(key);
    float x = key_value(key);
    if (!(isfinite(x) && x != 0.0f)) x = to_f32(xr[i * ls1]);
    top_ids[r * ids0 + rank * ids1] = int32_t(i);
    top_vals[r * vals0 + rank * vals1] = lp(x);
  }
}

template <class T>
__global__ void __launch_bounds__(kMaxRowThreads)
    logprobs_kernel(float* chosen, int64_t chosen_stride, int32_t* top_ids, int64_t ids0, int64_t ids1,
                    float* top_vals, int64_t vals0, int64_t vals1, const T* logits, int64_t ls0, int64_t ls1,
                    const int32_t* tokens, int64_t tok_stride, int64_t rows, int64_t n, int64_t top_n, int* bad) {
  constexpr int V = 16 / sizeof(T);
  extern __shared__ float smem[];
  __shared__ SelectSmem sel;
  __shared__ uint64_t cand[kMaxTopN];
  __shared__ unsigned ncand;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = logits + r * ls0;
    const bool vec = ls1 == 1 && aligned16_dev(xr);
    const float unused[kCachedChunks][V] = {};
    const Chosen ch = chosen_of(xr, ls1, n, tokens, tok_stride, r);
    const RowStats st = row_softmax_stats<V>(xr, ls1, n, vec, false, unused, smem);
    if (top_n == 0) {
      logprobs_outputs<T>(st, cand, 0, xr, ls1, r, chosen, chosen_stride, top_ids, ids0, ids1, top_vals, vals0,
                          vals1, ch, bad);
      continue;
    }

    auto visit = [&](auto&& f) {
      for_chunks<V>(xr, ls1, n, vec, [&](int64_t i0, const float (&x)[V]) {
#pragma unroll
        for (int k = 0; k < V; ++k)
          if (i0 + k < n) f(order_key(x[k], i0 + k), uint64_t(1));
      });
    };
    const uint64_t thr = select_desc<false>(visit, false, double(top_n), sel);
    if (threadIdx.x == 0) ncand = 0;
    __syncthreads();
    for_chunks<V>(xr, ls1, n, vec, [&](int64_t i0, const float (&x)[V]) {
#pragma unroll
      for (int k = 0; k < V; ++k) {
        if (i0 + k >= n) continue;
        const uint64_t key = order_key(x[k], i0 + k);
        if (key >= thr) {
          const unsigned slot = atomicAdd(&ncand, 1u);
          if (slot < unsigned(top_n)) cand[slot] = key;
        }
      }
    });
    __syncthreads();
    // Keys are distinct, so the ranks do not depend on the order in which the candidates were gathered.
    const unsigned m = ncand < unsigned(top_n) ? ncand : unsigned(top_n);
    logprobs_outputs<T>(st, cand, m, xr, ls1, r, chosen, chosen_stride, top_ids, ids0, ids1, top_vals, vals0, vals1,
                        ch, bad);
    __syncthreads();  // cand and ncand are reused by the next row
  }
}

// The streaming logprobs pass, shared by the one-CTA and the cluster kernels: each thread absorbs its
// chunks into (m, s) in the plan's order and offers its keys (order_key of the logit) to the CTA's buffer.
// NG plan threads a thread (logprobs_half_kernel: 2): chunk u of a tile goes to plan thread u % NG.
template <int V, int U, int NG = 1>
struct LogprobsTile {
  float (&m)[NG];
  float (&s)[NG][V];
  StreamBuffer<false>& sb;
  int64_t n, top_n;

  __device__ __forceinline__ void operator()(int64_t t, int64_t b0, int64_t L, const float (&x)[U][V]) const {
    if (b0 + (U - 1) * L + V <= n) {  // a whole tile (all tiles but the row's last): one bounds test
#pragma unroll
      for (int u = 0; u < U; ++u) absorb_chunk<V>(m[u % NG], s[u % NG], x[u]);
    } else {
#pragma unroll
      for (int u = 0; u < U; ++u) {  // the statistics, chunk by chunk in the plan's order
        const int64_t i0 = b0 + u * L;
        if (i0 + V <= n) {  // a whole chunk: no element past the row end
          absorb_chunk<V>(m[u % NG], s[u % NG], x[u]);
        } else if (i0 < n) {
          float c[V];
#pragma unroll
          for (int k = 0; k < V; ++k) c[k] = i0 + k < n ? x[u][k] : -INFINITY;
          absorb_chunk<V>(m[u % NG], s[u % NG], c);
        }
      }
    }
    if (top_n == 0) return;
    // An element whose logit is below floor() is below thr (NaN is not).
    offer_tile<V, U>(
        sb, t, b0, L, n, x, [](float xv) { return xv; }, [](float fl) { return fl; },
        [](float xv, float xlo) { return xv < xlo; });
  }
};

// One read of the row for the statistics (this CTA is the plan: blockDim.x plan threads taking their
// chunks in the plan's order, as row_softmax_stats does) and for the top n (a streaming buffer of
// blockDim.x >= 256 threads). Dynamic shared memory: stream_keys(blockDim.x) keys, then the tree's
// blockDim.x V + 1 floats.
template <class T>
__global__ void __launch_bounds__(kMaxRowThreads)
    logprobs_stream_kernel(float* chosen, int64_t chosen_stride, int32_t* top_ids, int64_t ids0, int64_t ids1,
                           float* top_vals, int64_t vals0, int64_t vals1, const T* logits, int64_t ls0, int64_t ls1,
                           const int32_t* tokens, int64_t tok_stride, int64_t rows, int64_t n, int64_t top_n,
                           int* bad) {
  constexpr int V = 16 / sizeof(T), U = kStreamPerThread / V;
  extern __shared__ uint64_t dyn[];
  __shared__ SelectSmem sel;
  __shared__ StreamSmem ss;
  const unsigned cap = unsigned(stream_cap(int(blockDim.x)));
  uint64_t* buf = dyn;
  float* tree = reinterpret_cast<float*>(dyn + stream_keys(int(blockDim.x)));
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = logits + r * ls0;
    const bool vec = ls1 == 1 && aligned16_dev(xr);
    float m[1] = {-INFINITY}, s[1][V];
#pragma unroll
    for (int k = 0; k < V; ++k) s[0][k] = 0.0f;
    StreamBuffer<false> sb{buf, &ss, &sel, top_n, cap, blockDim.x * unsigned(kStreamPerThread)};
    if (top_n > 0) sb.begin();
    stream_tiles<V, U>(xr, ls1, n, 0, n, vec, LogprobsTile<V, U>{m, s, sb, n, top_n});
    const Chosen ch = chosen_of(xr, ls1, n, tokens, tok_stride, r);
    const RowStats st = finish_row_stats<V>(m[0], s[0], tree);
    if (top_n > 0) sb.cut();
    logprobs_outputs<T>(st, buf, top_n > 0 ? sb.fill : 0, xr, ls1, r, chosen, chosen_stride, top_ids, ids0, ids1,
                        top_vals, vals0, vals1, ch, bad);
    __syncthreads();  // the buffer and the tree are reused by the next row
  }
}

// The same pass for rows of the largest plan (1024 plan threads) on 512 threads, two plan threads a thread:
// thread tg holds plan threads tg and tg + 512 (lane groups 0 and 1 of a 512-thread RowGroup). With
// L' = 512 V its chunk p L' + tg V is plan thread tg's chunk p / 2 for even p and plan thread tg + 512's
// chunk (p - 1) / 2 for odd p (U is even, so chunk u of a tile goes to plan thread u % 2), each plan
// thread's chunks in increasing order; the trees are group_tree's over the two groups, the plan's tree.
// Same statistics, same keys, so the same bits as logprobs_stream_kernel; two CTAs an SM, so 256 rows
// run in one wave on 132 SMs where 1024-thread CTAs (one an SM) take two.
// Dynamic shared memory: stream_keys(512) keys, then 512 V floats for the trees.
constexpr int kHalfThreads = kMaxRowThreads / 2;

template <class T>
__global__ void __launch_bounds__(kHalfThreads, 2)
    logprobs_half_kernel(float* chosen, int64_t chosen_stride, int32_t* top_ids, int64_t ids0, int64_t ids1,
                         float* top_vals, int64_t vals0, int64_t vals1, const T* logits, int64_t ls0, int64_t ls1,
                         const int32_t* tokens, int64_t tok_stride, int64_t rows, int64_t n, int64_t top_n, int* bad) {
  constexpr int V = 16 / sizeof(T), U = kStreamPerThread / V;
  static_assert(U % 2 == 0, "a tile's chunks alternate between the thread's two plan threads");
  extern __shared__ uint64_t dyn[];
  __shared__ SelectSmem sel;
  __shared__ StreamSmem ss;
  const unsigned cap = unsigned(stream_cap(kHalfThreads));
  uint64_t* buf = dyn;
  float* tree = reinterpret_cast<float*>(dyn + stream_keys(kHalfThreads));
  const RowGroup rg = row_group(kHalfThreads / 32);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = logits + r * ls0;
    const bool vec = ls1 == 1 && aligned16_dev(xr);
    float m[2] = {-INFINITY, -INFINITY}, s[2][V];
#pragma unroll
    for (int g = 0; g < 2; ++g)
#pragma unroll
      for (int k = 0; k < V; ++k) s[g][k] = 0.0f;
    StreamBuffer<false> sb{buf, &ss, &sel, top_n, cap, unsigned(kHalfThreads) * unsigned(kStreamPerThread)};
    if (top_n > 0) sb.begin();
    stream_tiles<V, U>(xr, ls1, n, 0, n, vec, LogprobsTile<V, U, 2>{m, s, sb, n, top_n});
    const Chosen ch = chosen_of(xr, ls1, n, tokens, tok_stride, r);
    float mm[2][1] = {{m[0]}, {m[1]}};
    const float M = group_tree<1, 2>(mm, tree, rg, SoftmaxMaxOp{});
    float acc[2][V];
#pragma unroll
    for (int g = 0; g < 2; ++g)
#pragma unroll
      for (int k = 0; k < V; ++k) acc[g][k] = softmax_lane_term(m[g], s[g][k], M);
    const float S = group_tree<V, 2>(acc, tree, rg, AddOp{});
    if (top_n > 0) sb.cut();
    logprobs_outputs<T>(RowStats{M, S}, buf, top_n > 0 ? sb.fill : 0, xr, ls1, r, chosen, chosen_stride, top_ids,
                        ids0, ids1, top_vals, vals0, vals1, ch, bad);
    __syncthreads();  // the buffer and the trees' scratch are reused by the next row
  }
}

// The same row on a cluster of K CTAs of G = 1024 / K threads (sm_90, the largest plan): thread tg of
// CTA c is plan thread c G + tg (softmax.cuh's cluster_row_stats), so the statistics keep their bits,
// and each CTA keeps the top n of its lanes; CTA 0 gathers the K buffers through distributed shared
// memory, cuts them to the row's top n and writes the outputs. A row is read by K SMs at once.
// Dynamic shared memory: stream_keys(G) keys, then 2 G V + 1 floats (tree scratch, terms, maximum).
template <class T, int K>
__global__ void __launch_bounds__(kMaxRowThreads / K, K)
    logprobs_cluster_kernel(float* chosen, int64_t chosen_stride, int32_t* top_ids, int64_t ids0, int64_t ids1,
                            float* top_vals, int64_t vals0, int64_t vals1, const T* logits, int64_t ls0, int64_t ls1,
                            const int32_t* tokens, int64_t tok_stride, int64_t rows, int64_t n, int64_t top_n,
                            int* bad) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int V = 16 / sizeof(T), U = kStreamPerThread / V;
  extern __shared__ uint64_t dyn[];
  __shared__ SelectSmem sel;
  __shared__ StreamSmem ss;
  cg::cluster_group cluster = cg::this_cluster();
  const int c = int(cluster.block_rank());
  const int G = int(blockDim.x);
  const unsigned cap = unsigned(stream_cap(G));
  uint64_t* buf = dyn;
  float* scratch = reinterpret_cast<float*>(dyn + stream_keys(G));
  float* terms = scratch + G * V;
  float* cmax = terms + G * V;
  const RowGroup rg = cluster_row_group();
  const int64_t L = int64_t(K) * G * V, t0 = (int64_t(c) * G + threadIdx.x) * V;
  for (int64_t r = rg.first; r < rows; r += rg.step) {
    const T* xr = logits + r * ls0;
    const bool vec = ls1 == 1 && aligned16_dev(xr);
    float m[1] = {-INFINITY}, s[1][V];
#pragma unroll
    for (int k = 0; k < V; ++k) s[0][k] = 0.0f;
    StreamBuffer<false> sb{buf, &ss, &sel, top_n, cap, unsigned(G) * unsigned(kStreamPerThread)};
    if (top_n > 0) sb.begin();
    stream_tiles_at<V, U>(xr, ls1, n, 0, n, vec, L, t0, LogprobsTile<V, U>{m, s, sb, n, top_n});
    const Chosen ch = c == 0 ? chosen_of(xr, ls1, n, tokens, tok_stride, r) : Chosen{};
    const RowStats st = cluster_row_stats<V, K>(m[0], s[0], scratch, terms, cmax, rg, cluster);
    unsigned total = 0;
    if (top_n > 0) {
      sb.cut();
      total = sb.fill;
      if (threadIdx.x == 0) ss.fill = sb.fill;
      cluster.sync();
      if (c == 0) {  // K top-n buffers: at most K kMaxTopN <= cap keys
        for (int j = 1; j < K; ++j) {
          const uint64_t* other = cluster.map_shared_rank(buf, j);
          const unsigned of = cluster.map_shared_rank(&ss, j)->fill;
          for (unsigned q = threadIdx.x; q < of; q += blockDim.x) buf[total + q] = other[q];
          total += of;
        }
      }
      cluster.sync();  // no CTA refills its buffer (next row) or exits while CTA 0 still reads it
    }
    if (c == 0) {
      if (top_n > 0 && int64_t(total) > top_n) {
        __syncthreads();
        stream_cut(buf, buf + cap, total, top_n, sel, ss);
        total = unsigned(top_n);
      }
      logprobs_outputs<T>(st, buf, total, xr, ls1, r, chosen, chosen_stride, top_ids, ids0, ids1, top_vals, vals0,
                          vals1, ch, bad);
    }
    __syncthreads();  // the buffer and the tree are reused by the next row
  }
#endif
}

// The flag a logprobs kernel raises for a token outside the vocabulary: one int of pinned host memory
// a thread, mapped into the device's address space, cleared by the host before each launch. The call
// then waits for its kernel alone, with no allocation, memset or copy queued around it (each cost the
// GPU idle time between calls). A thread's calls each wait before returning, so they never share it.
struct BadFlag {
  int* host = nullptr;
  ~BadFlag() {
    if (host != nullptr) (void)cudaFreeHost(host);  // at thread exit; the context may be gone already
  }
};
// Clears this thread's flag; returns it (host) and its address on the device (dev).
struct FlagPtrs {
  volatile int* host;
  int* dev;
};
FlagPtrs bad_flag_for_launch() {
  thread_local BadFlag flag;
  if (flag.host == nullptr)
    BIK_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&flag.host), sizeof(int),
                                 cudaHostAllocMapped | cudaHostAllocPortable));
  *static_cast<volatile int*>(flag.host) = 0;
  int* dev = nullptr;
  BIK_CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&dev), flag.host, 0));
  return FlagPtrs{flag.host, dev};
}

}  // namespace

void sample(const TensorView& tokens, const TensorView& logits, const SamplingParams* params, Stream s) {
  const int64_t rows = logits.shape[0], n = logits.shape[1];
  BIK_CHECK(n < (int64_t(1) << 23), "sample: the CUDA backend handles vocabularies below 2^23 entries, got ", n);
  // BIK_SAMPLE_PRUNE=0: every kept element's score is formed (tests compare); `loose`: the negative control.
  int32_t prune = kPruneOn;
  if (const char* e = std::getenv("BIK_SAMPLE_PRUNE")) {
    const std::string v = e;
    BIK_CHECK(v == "0" || v == "1" || v == "loose", "BIK_SAMPLE_PRUNE must be 0, 1 or loose, got '", v, "'");
    prune = v == "0" ? kPruneOff : v == "1" ? kPruneOn : kPruneLoose;
  }
  std::vector<RowParams> host(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    const SamplingParams& p = params[r];
    const double log_min_p = p.min_p > 0 ? std::log(double(p.min_p)) : -INFINITY;
    host[size_t(r)] = RowParams{p.temperature, p.top_k, p.top_p, prune, log_min_p, p.seed, p.position};
  }
  cudaStream_t st = stream_of(s);
  const DeviceInfo& info = use_device(logits.device.index);
  // BIK_SAMPLE_CLUSTER=0: one CTA a row everywhere (tests compare the two).
  const bool cluster_ok = info.arch >= 90 && env_switch_on("BIK_SAMPLE_CLUSTER");
  // The streaming kernel's CTAs a row: the most (up to a cluster of 8, sm_90) that leave every CTA an SM
  // of its own; on an H200, f32 rows of 151936 with top-k 50 took 30 us at 1 row on 8 CTAs, 57 us at 64
  // rows on 2 (87 on 8) and 99 us at 256 rows on 1 (268 on 8; bench/results/logs_h200/34c1743_sample_ctas.log).
  // BIK_SAMPLE_STREAM=0: never; BIK_SAMPLE_STREAM_CTAS=1|2|4|8 fixes the count (tests).
  int ctas = 1;
  if (cluster_ok) {
    while (ctas < 8 && rows * ctas * 2 <= int64_t(info.sms)) ctas *= 2;
    if (const char* e = std::getenv("BIK_SAMPLE_STREAM_CTAS")) {
      const int want = std::atoi(e);
      BIK_CHECK(want == 1 || want == 2 || want == 4 || want == 8, "BIK_SAMPLE_STREAM_CTAS must be 1, 2, 4 or 8, got '",
                e, "'");
      ctas = want;
    }
  }
  bool streaming = env_switch_on("BIK_SAMPLE_STREAM");
  for (int64_t r = 0; r < rows && streaming; ++r) streaming = row_path(host[size_t(r)], n, ctas) != RowPath::Generic;
  // The params travel in the launch itself when they fit it; otherwise they are uploaded from pageable
  // memory, and the call waits for the stream before `host` goes out of scope.
  ParamsArg args;
  ParamsArgLarge large;
  const bool use_large = streaming && rows > ParamsArg::kRows && rows <= ParamsArgLarge::kRows;
  RowParams* dev = nullptr;
  if (rows <= ParamsArg::kRows) {
    for (int64_t r = 0; r < rows; ++r) args.inl[r] = host[size_t(r)];
  } else if (use_large) {
    for (int64_t r = 0; r < rows; ++r) large.inl[r] = host[size_t(r)];
  } else {
    const size_t bytes = host.size() * sizeof(RowParams);
    BIK_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&dev), bytes, st));
    BIK_CUDA_CHECK(cudaMemcpyAsync(dev, host.data(), bytes, cudaMemcpyHostToDevice, st));
    args.dev = dev;
  }
  dispatch_float(logits.dtype, [&](auto lt) {
    using T = decltype(lt);
    if (streaming) {
      auto launch = [&](const auto& pa, auto only) {
        auto kernel = sample_stream_kernel<T, std::decay_t<decltype(pa)>, decltype(only)::value>;
        const int smem = stream_keys(kStreamThreads) * int(sizeof(uint64_t));
        allow_dynamic_smem(reinterpret_cast<const void*>(kernel), info.index, smem);
        // whole chunks, Philox blocks and groups of the plain draw
        const int64_t slice = ((n + ctas - 1) / ctas + kGroup - 1) / kGroup * kGroup;
        if (ctas > 1 && launch_row_clusters(kernel, ctas, kStreamThreads, size_t(smem), st, rows, tokens.ptr<int32_t>(),
                                            tokens.stride[0], logits.ptr<const T>(), logits.stride[0],
                                            logits.stride[1], rows, n, slice, pa))
          return;
        // One CTA a row (no cluster of that size fits this device): every row's path is the same at C = 1.
        kernel<<<dim3(1, unsigned(rows < 65535 ? rows : 65535)), kStreamThreads, smem, st>>>(
            tokens.ptr<int32_t>(), tokens.stride[0], logits.ptr<const T>(), logits.stride[0], logits.stride[1], rows,
            n, n, pa);
        BIK_CUDA_LAUNCH_CHECK();
      };
      // A batch whose rows all take the plain draw runs that path's kernel, and so does one whose rows all
      // take the top-k path, for f32 logits. (ptxas, sm_90a: spill stores / loads of the f32 kernel 76 / 116
      // bytes, plain-only 24 / 16, top-k-only 32 / 32; the 16-bit kernels 36-40 / 76-80, plain-only none,
      // top-k-only 172 / 184, so they keep the general kernel for top-k.)
      RowPath common = row_path(host[0], n, ctas);
      for (int64_t r = 1; r < rows; ++r)
        if (row_path(host[size_t(r)], n, ctas) != common) common = RowPath::Generic;
      constexpr int kTopKOnly = sizeof(T) == 4 ? int(RowPath::TopK) : kAnyPath;  // no such kernel for 16-bit
      auto launch_for = [&](const auto& pa) {
        if (common == RowPath::Plain) launch(pa, std::integral_constant<int, int(RowPath::Plain)>{});
        else if (common == RowPath::TopK) launch(pa, std::integral_constant<int, kTopKOnly>{});
        else launch(pa, std::integral_constant<int, kAnyPath>{});
      };
      if (use_large) launch_for(large);
      else launch_for(args);
      return;
    }
    // A cluster a row when each CTA's slice of z fits its shared memory.
    const int64_t slice = ((n + kSampleCluster - 1) / kSampleCluster + kGroup - 1) / kGroup * kGroup;
    const int max_dyn = info.smem_optin - 8192;
    if (cluster_ok && slice * int64_t(sizeof(float)) <= max_dyn) {
      auto kernel = sample_cluster_kernel<T>;
      allow_dynamic_smem(reinterpret_cast<const void*>(kernel), info.index, max_dyn);
      // No room for such a cluster on this device: the one-CTA-a-row kernel below.
      if (launch_row_clusters(kernel, kSampleCluster, kSampleThreads, size_t(slice) * sizeof(float), st, rows,
                              tokens.ptr<int32_t>(), tokens.stride[0], logits.ptr<const T>(), logits.stride[0],
                              logits.stride[1], rows, n, slice, args))
        return;
    }
    const int threads = row_threads(n, 16 / int(sizeof(T)));
    sample_kernel<T><<<grid_for(rows), threads, 0, st>>>(tokens.ptr<int32_t>(), tokens.stride[0],
                                                          logits.ptr<const T>(), logits.stride[0], logits.stride[1],
                                                          rows, n, args);
    BIK_CUDA_LAUNCH_CHECK();
  });
  if (dev != nullptr) {
    BIK_CUDA_CHECK(cudaFreeAsync(dev, st));
    // The host copy of the params must outlive the transfer.
    BIK_CUDA_CHECK(cudaStreamSynchronize(st));
  }
}

void logprobs_launch(const TensorView& chosen, const TensorView& top_ids, const TensorView& top_vals,
                     const TensorView& logits, const TensorView& tokens, int* bad, Stream s) {
  const int64_t rows = logits.shape[0], n = logits.shape[1], top_n = top_ids.shape[1];
  BIK_CHECK(top_n <= kMaxTopN, "logprobs: the CUDA backend returns at most ", kMaxTopN, " top logprobs, asked for ",
            top_n);
  cudaStream_t st = stream_of(s);
  const DeviceInfo& info = use_device(logits.device.index);
  dispatch_float(logits.dtype, [&](auto lt) {
    using T = decltype(lt);
    constexpr int V = 16 / sizeof(T);
    const int threads = row_threads(n, V);
    const size_t tree = (size_t(threads) * V + 1) * sizeof(float);
    // One read of the row (BIK_LOGPROBS_STREAM=0: the select passes of logprobs_kernel).
    auto stream_smem = [](int t) { return size_t(stream_keys(t)) * sizeof(uint64_t) + (size_t(t) * V + 1) * sizeof(float); };
    const size_t smem_max = std::min(stream_smem(kMaxRowThreads), size_t(info.smem_optin) - 8192);
    const size_t smem = stream_smem(threads);
    const bool stream = threads >= 256 && smem <= smem_max && env_switch_on("BIK_LOGPROBS_STREAM");
    // The largest plan on sm_90 while the rows leave SMs idle: a cluster of K CTAs a row, so a row is read
    // by K SMs (K = 4 while rows x 4 <= SMs, 2 while rows x 2 <= SMs; on an H200 1 row took 58 us on 4,
    // 73 on one CTA; 64 rows 71 us on 2, 78 on one; 256 rows 134 us on one, 160 on 2: logs_h200/
    // 34c1743_logprobs_cluster.log). The one-CTA
    // kernel if the cluster cannot be placed. BIK_LOGPROBS_CLUSTER=0: never; 2 / 4: that K for every
    // row count (tests).
    const int64_t sms = info.sms;
    const char* env_k = std::getenv("BIK_LOGPROBS_CLUSTER");
    const int cluster_k = env_k != nullptr ? (env_k[0] == '0' ? 0 : env_k[0] == '2' ? 2 : 4)
                          : rows * 4 <= sms ? 4 : rows * 2 <= sms ? 2 : 0;
    if (stream && info.arch >= 90 && threads == kMaxRowThreads && cluster_k > 0) {
      auto launch = [&](auto kc) {
        constexpr int K = decltype(kc)::value, G = kMaxRowThreads / K;
        auto kernel = logprobs_cluster_kernel<T, K>;
        const size_t csmem = size_t(stream_keys(G)) * sizeof(uint64_t) + (2 * size_t(G) * V + 1) * sizeof(float);
        allow_dynamic_smem(reinterpret_cast<const void*>(kernel), info.index, int(csmem));
        return launch_row_clusters(kernel, K, G, csmem, st, rows, chosen.ptr<float>(), chosen.stride[0],
                                   top_ids.ptr<int32_t>(), top_ids.stride[0], top_ids.stride[1], top_vals.ptr<float>(),
                                   top_vals.stride[0], top_vals.stride[1], logits.ptr<const T>(), logits.stride[0],
                                   logits.stride[1], tokens.ptr<const int32_t>(), tokens.stride[0], rows, n, top_n,
                                   bad);
      };
      if (cluster_k == 2 ? launch(std::integral_constant<int, 2>{}) : launch(std::integral_constant<int, 4>{}))
        return;
    }
    // The one-CTA-a-row kernels share one signature: launch `kernel` with `block` threads and `bytes` of
    // dynamic shared memory.
    auto run = [&](auto kernel, int block, size_t bytes) {
      kernel<<<grid_for(rows), block, bytes, st>>>(
          chosen.ptr<float>(), chosen.stride[0], top_ids.ptr<int32_t>(), top_ids.stride[0], top_ids.stride[1],
          top_vals.ptr<float>(), top_vals.stride[0], top_vals.stride[1], logits.ptr<const T>(), logits.stride[0],
          logits.stride[1], tokens.ptr<const int32_t>(), tokens.stride[0], rows, n, top_n, bad);
    };
    // F32 rows of the largest plan otherwise: the same pass on 512 threads, two CTAs an SM (H200, 256 rows
    // of 151936, top 20: 114 against 130 us on 1024 threads; logs_h200/4f4d492_sampling_ab.log; 16-bit
    // rows, not measured, keep the 1024-thread kernel). BIK_LOGPROBS_HALF=0 keeps it for F32 too (tests
    // compare the two).
    if constexpr (sizeof(T) == 4) {
      if (stream && threads == kMaxRowThreads && env_switch_on("BIK_LOGPROBS_HALF")) {
        auto kernel = logprobs_half_kernel<T>;
        const size_t hsmem =
            size_t(stream_keys(kHalfThreads)) * sizeof(uint64_t) + size_t(kHalfThreads) * V * sizeof(float);
        allow_dynamic_smem(reinterpret_cast<const void*>(kernel), info.index, int(hsmem));
        run(kernel, kHalfThreads, hsmem);
        BIK_CUDA_LAUNCH_CHECK();
        return;
      }
    }
    if (stream) {
      auto kernel = logprobs_stream_kernel<T>;
      // One setting for every plan size (the attribute is set once a kernel).
      allow_dynamic_smem(reinterpret_cast<const void*>(kernel), info.index, int(smem_max));
      run(kernel, threads, smem);
    } else {
      run(logprobs_kernel<T>, threads, tree);
    }
    BIK_CUDA_LAUNCH_CHECK();
  });
}

void logprobs(const TensorView& chosen, const TensorView& top_ids, const TensorView& top_vals,
              const TensorView& logits, const TensorView& tokens, Stream s) {
  const int64_t rows = logits.shape[0], n = logits.shape[1];
  use_device(logits.device.index);
  const FlagPtrs flag = bad_flag_for_launch();  // after use_device: its device address for that device
  logprobs_launch(chosen, top_ids, top_vals, logits, tokens, flag.dev, s);
  BIK_CUDA_CHECK(cudaStreamSynchronize(stream_of(s)));
  if (*flag.host != 0) {
    // Some row's token is outside the vocabulary: name the first, from a copy of the tokens.
    std::vector<int32_t> host(static_cast<size_t>(rows));
    BIK_CUDA_CHECK(cudaMemcpy2D(host.data(), sizeof(int32_t), tokens.ptr<const int32_t>(),
                                size_t(tokens.stride[0]) * sizeof(int32_t), sizeof(int32_t), size_t(rows),
                                cudaMemcpyDeviceToHost));
    for (int64_t r = 0; r < rows; ++r)
      if (host[size_t(r)] < 0 || host[size_t(r)] >= n)
        throw Error(detail::concat("logprobs: tokens[", r, "] = ", host[size_t(r)], " is outside the vocabulary [0, ",
                                   n, ")"));
  }
}

}  // namespace bik::cuda

// bik::cuda::write_kv_cache and bik::cuda::paged_attention (kernels: cuda/attention.cuh, mma.sync, and
// cuda/attention_sm90.cuh, wgmma).
//
// Engine choice: a function of the device alone. sm_90 runs a wgmma kernel (when the build carries its
// sm_90a code, as the default CMAKE_CUDA_ARCHITECTURES does), every other architecture the mma.sync
// kernel; the two may round differently, so the choice never looks at the batch or the mode.
// On sm_90 the default is the warp-specialised wgmma kernel with ping-pong consumers (variant 5: a producer
// warpgroup feeding two 64-row consumer warpgroups that take turns at the tensor cores), the fastest
// measured for prefill (bench/results/logs_h200/998b4f4_*), and for split-parallel launches (few long
// decodes) the same kernel without the turns (variant 4), faster there (variant_from_env).
// BIK_ATTENTION_SM90 picks another for A/B benchmarks (read at each call): 0 the mma.sync kernel, 1 the
// one-warpgroup wgmma kernel, 2 its software-pipelined form, 3 the warp-specialised kernel running each
// tile in sequence, 4 the latter with S(j + 1) issued behind P V(j), 6 the warp-specialised kernel with
// S(j + 1) overlapping the softmax of tile j. Variants 1 to 6 give bitwise the same outputs (same
// arithmetic per row, another schedule), so they may be switched freely.
//
// Launch choice: the in-kernel fold (one CTA per 64 query rows walks all their splits) when there are
// enough such CTAs to fill the GPU or a split launch would not finish first (split_pays: short contexts);
// otherwise split-parallel (one CTA per split, then fold_kernel; the
// warp-specialised variants give a CTA a run of consecutive splits in decode-like steps, sized by
// split_run below, so a CTA keeps its copy ring full across them instead of filling and draining it for
// every split). The two modes run the same per-split code and the same fold, and a split's partials are
// the same whichever CTA computes them, so the choice, which depends on the batch, never changes a bit
// (tests/gpu/test_attention_cuda.cpp runs both on the same rows). On the persistent grid (launch_sm90) the
// units go to the CTAs in static rounds, or, for prefills whose K/V read by several units exceed the L2,
// from a counter in groups of columns (BIK_ATTENTION_ORDER); a unit's bits do not depend on the CTA that
// computes it.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "core/backend.h"
#include "core/policy.h"
#include "cuda/attention.cuh"
#include "cuda/attention_dispatch.h"
#include "cuda/attention_sm90.cuh"
#include "cuda/check.cuh"
#include "cuda/device_info.h"
#include "cuda/launch.cuh"
#include "cuda/rows.cuh"

namespace bik::cuda {
namespace {

template <typename T, int D>
void launch(const attn::Params& p, dim3 grid, bool split, int device, cudaStream_t st, int64_t rows) {
  using S = attn::Smem<D>;
  if (split) {
    auto k = attn::attention_kernel<T, D, true>;
    allow_dynamic_smem(reinterpret_cast<const void*>(k), device, S::bytes(true));
    launch_kernel(k, grid, attn::kThreads, S::bytes(true), st, p);
    BIK_CUDA_LAUNCH_CHECK();
    launch_kernel(attn::fold_kernel<T, D>, unsigned(rows), D, 0, st, p);
    BIK_CUDA_LAUNCH_CHECK();
  } else {
    auto k = attn::attention_kernel<T, D, false>;
    allow_dynamic_smem(reinterpret_cast<const void*>(k), device, S::bytes(false));
    launch_kernel(k, grid, attn::kThreads, S::bytes(false), st, p);
    BIK_CUDA_LAUNCH_CHECK();
  }
}

constexpr int kOrderGroup = 8;
}  // namespace

int attention_order_group(int64_t shared_kv_bytes, int64_t column_kv_bytes, int64_t l2_bytes) {
  if (shared_kv_bytes <= l2_bytes) return 0;
  const int64_t fit = column_kv_bytes > 0 ? l2_bytes / 2 / column_kv_bytes : kOrderGroup;
  return int(std::clamp<int64_t>(fit, 1, kOrderGroup));
}

namespace {
// BIK_ATTENTION_ORDER (read at each call, for A/B timing and tests): "0" -> 0, the persistent grid's static
// rounds (CTA b takes unit b of even rounds, gridDim.x - 1 - b of odd ones, in the virtual grid's order)
// for every step; a number G >= 1 -> G, the dynamic hand-out in groups of G CTA columns
// (attention_kernel_ws's unit_at) for every step; anything else or unset -> -1, the rule in launch_sm90
// (attention_order_group: groups of at most kOrderGroup columns where the K/V read by several units
// exceed the L2, else the static rounds).
// Which CTA computes a unit never changes its bits.
int order_from_env() {
  const char* e = std::getenv("BIK_ATTENTION_ORDER");
  if (e == nullptr || *e == '\0') return -1;
  char* end = nullptr;
  const long v = std::strtol(e, &end, 10);
  return *end == '\0' && v >= 0 && v <= (1 << 20) ? int(v) : -1;
}

// Split-parallel mode of the warp-specialised kernel: the key span of one CTA's run of splits
// (Params::run_keys: CTA z takes the splits whose first key lies in [z * span, (z + 1) * span)), for `cols`
// CTA columns (sequence x KV head; one query block each) of contexts up to max_seq_len on `sms` SMs (one
// CTA per SM). Spans are whole short splits; minimises waves x (longest run + 1): the time of the last
// wave in short splits, the 1 standing for a CTA's start (barriers, Q, the first copies in flight), which
// a longer run pays less often. A run is its span of keys but where it takes long splits: those starting
// in its span, each whole (so the run across the long splits' start, and spans shorter than a long
// split, can exceed the span). multiple_of > 0: spans of a multiple of that many keys only. Only the
// launch shape depends on it, never a split's partials.
int split_run(int64_t cols, const policy::SplitGrid& grid, int64_t max_seq_len, int sms, int64_t multiple_of) {
  const int64_t units = (max_seq_len + grid.len - 1) / grid.len;
  auto run_keys = [&](int64_t span, int64_t z) {  // keys of run z, clipped to the longest context
    const int64_t lo = z * span, hi = std::min<int64_t>((z + 1) * span, max_seq_len);
    if (lo >= hi) return int64_t(0);
    const int j0 = grid.first_from(int(lo)), j1 = grid.first_from(int(hi));
    return j0 >= j1 ? 0 : std::min<int64_t>(grid.begin(j1), max_seq_len) - grid.begin(j0);
  };
  // Candidate spans of g short splits, g a multiple of `step` (multiple_of is a multiple of grid.len).
  const int64_t step = multiple_of > 0 ? multiple_of / grid.len : 1;
  int64_t best = step * grid.len, best_cost = -1;
  for (int64_t g = step; g <= std::min<int64_t>(units, 4096); g += step) {
    const int64_t span = g * grid.len, runs = (max_seq_len + span - 1) / span;
    // The longest run: any short-only run is one span; check the runs around the long splits' start (a
    // few spans on, so every phase of the span against the long split length appears) and the last two.
    int64_t longest = std::min(span, max_seq_len);
    const int64_t zl = grid.long_from / span, period = grid.long_len / grid.len + 2;
    for (int64_t z = zl; z < std::min(runs, zl + period); ++z) longest = std::max(longest, run_keys(span, z));
    for (int64_t z = std::max<int64_t>(0, runs - 2); z < runs; ++z) longest = std::max(longest, run_keys(span, z));
    const int64_t cost = (cols * runs + sms - 1) / sms * (longest / grid.len + 1);
    if (best_cost < 0 || cost < best_cost) best_cost = cost, best = span;
  }
  return int(best);
}

// Whether the split-parallel launch should finish before the in-kernel fold, counted in key tiles on
// the longest path: the fold mode's longest CTA walks the longest context's tiles, once per wave of its
// `ctas` CTAs; a split CTA walks at most longest_split / 64 tiles per wave of ctas x splits CTAs, and the
// fold kernel with the partials' round trip costs about kFoldTiles more. Only the launch mode depends
// on it, never a bit. On an H200 a 512-token prefill alone took 34.6 us split and 16.7 us unsplit, 32
// decodes of 512 tokens 30.3 against 27.9, while 8 decodes of 2048 tokens took 26.7 split and 37.2
// unsplit (logs_h200/6a430a3_split_*.log).
bool split_pays(int64_t ctas, int64_t max_seq_len, int64_t splits, int64_t longest_split, int sms) {
  constexpr int64_t kFoldTiles = 4;
  auto waves = [&](int64_t n) { return (n + sms - 1) / sms; };
  const int64_t unsplit = (max_seq_len + attn::kBK - 1) / attn::kBK * waves(ctas);
  const int64_t per_split = longest_split / attn::kBK * waves(ctas * splits) + kFoldTiles;
  return per_split <= unsplit;
}

// The warp-specialised kernel of one schedule. long_grid: the instantiation that reads the plan's whole
// split grid, for launches with a context past the long splits' start; otherwise the one with a uniform
// grid's arithmetic (policy::SplitView), which cuts every position below that start at the same places, so
// both give the same bits there. Only the default schedules (variants 4 and 5) have the second
// instantiation; variants 3 and 6 always run the first, so the tests that compare the variants on short
// contexts compare the two (GpuAttentionSm90.WarpSpecializedKernelEqualsDefaultBitwise). The long
// splits' launch arithmetic in every kernel made split-launched decodes of 2048 and 8192 keys ~0.6 us
// slower on an H200 (logs_h200/d879780_attention_longsplits_ab.log).
template <typename T, int D, attn::sm90::WsSchedule S>
void (*ws_kernel(bool split, bool long_grid))(attn::Params) {
  namespace k90 = attn::sm90;
  if constexpr (S == k90::WsSchedule::kOverlap || S == k90::WsSchedule::kPingPong) {
    if (!long_grid)
      return split ? k90::attention_kernel_ws<T, D, true, S, false> : k90::attention_kernel_ws<T, D, false, S, false>;
  }
  return split ? k90::attention_kernel_ws<T, D, true, S, true> : k90::attention_kernel_ws<T, D, false, S, true>;
}

// The wgmma kernels (variant 1: attention_kernel, 2: attention_kernel_pipelined, 3 to 6:
// attention_kernel_ws with the schedules kSequential, kOverlap, kPingPong, kPipelined): same Params, same
// fold kernel for the split-parallel mode. A CTA of variants 3 to 6 takes two query blocks, so their grid
// has half as many in y (the kernel maps y to the pair).
template <typename T, int D>
void launch_sm90(attn::Params p, dim3 grid, bool split, int variant, const DeviceInfo& dev, int order_group,
                 cudaStream_t st, int64_t rows, int64_t max_seq_len) {
  namespace k90 = attn::sm90;
  const int sms = dev.sms;
  // BIK_ATTENTION_LONG_GRID=2 (read at each call, for tests and A/B timing): the long grid's kernels and
  // launch arithmetic for every launch; the bits are the same
  // (GpuAttentionSm90.ShortContextKernelsEqualTheLongGridOnes).
  const bool long_grid = max_seq_len > p.split.long_from || env_switch_level("BIK_ATTENTION_LONG_GRID") == 2;
  int bytes = k90::Layout<D>::kBytes, threads = attn::kThreads;
  void (*k)(attn::Params) = nullptr;
  int* counter = nullptr;  // the persistent grid's unit counter (stream-ordered, freed behind the launch)
  if (variant == 2) {
    bytes = k90::PipeLayout<D>::kBytes;
    k = split ? k90::attention_kernel_pipelined<T, D, true> : k90::attention_kernel_pipelined<T, D, false>;
  } else if (variant >= 3 && variant <= 6) {
    using Ws = k90::WsLayout<D>;
    using k90::WsSchedule;
    bytes = variant == 6 ? k90::WsLayout<D, true>::kBytes : Ws::kBytes, threads = Ws::kThreads;
    // Runs of splits only where every CTA column has all of its splits to do: one query block per
    // sequence (decode-like steps). With longer queries the causal blocks before a split's start have
    // nothing in it, and one CTA a split spreads the remaining work better.
    // A run's first split is a product in the kernel, never a division (with first_from's divisions on
    // every CTA's start a decode of 1 x 8192 took 16.7 us against 15.0 on an H200,
    // logs_h200/f3a8503_attention_longsplits_ab.log): runs counted in splits within the short splits,
    // runs of a multiple of the long split length past them.
    if (split && grid.y == 1) {
      const int64_t span =
          split_run(int64_t(grid.x) * grid.y, p.split, max_seq_len, sms, long_grid ? p.split.long_len : 0);
      if (long_grid) {
        p.run_keys = int(span);
        p.run_short = int(span / p.split.len);
        p.run_long = int(span / p.split.long_len);
        p.run_base = p.split.short_count - p.split.long_from / p.split.long_len;
        grid.z = unsigned((max_seq_len + span - 1) / span);
      } else {
        p.splits_per_cta = int(span / p.split.len);
        grid.z = (grid.z + unsigned(p.splits_per_cta) - 1) / unsigned(p.splits_per_cta);
      }
    }
    const bool prefill_like = grid.y > 1;  // some sequence has more than one query block
    grid.y = (grid.y + Ws::kConsumers - 1) / Ws::kConsumers;
    // More CTAs than SMs, no split launch, and contexts of at most 4096 or more than one query block per
    // sequence: a persistent grid of one CTA an SM walking the same units (attention_kernel_ws), so a
    // unit's start and end overlap its neighbours' work. On an H200 it took prefill 16 x 512 from 196 to
    // 188 us, 16 x 2048 from 1670-1785 to 1630, 4 x 512 and 4 x 2048 3-4% down, decode 256 x 4096 1107 ->
    // 1090, while decode 64 x 8192 was ~1% slower (logs_h200/d92aa2e_attention_persistent_ab.log), hence
    // the bound for decode-like steps; since the producer copies each unit's Q ahead (6c867f4) it also took
    // prefill 1 x 8192 from 1176-1178 to 1130-1133 us and 4 x 8192 from 5147-5157 to 5015-5052
    // (logs_h200/21be1d7_attention_prefill_knobs.log), hence any context for prefill. Split launches keep
    // one CTA a unit: the persistent grid's device tests cover the in-kernel fold only.
    // BIK_ATTENTION_PERSISTENT (read at each call): 0 keeps one CTA a unit, 2 takes the persistent grid for
    // any context (still not for split launches); the bits are the same
    // (GpuAttentionSm90.PersistentGridKeepsTheBits).
    const int level = env_switch_level("BIK_ATTENTION_PERSISTENT");
    const int64_t units = int64_t(grid.x) * grid.y * grid.z;
    if (!split && units > sms && units < (int64_t(1) << 31) &&
        (level == 2 || (level == 1 && (max_seq_len <= 4096 || prefill_like)))) {
      p.units = int(units), p.grid_x = int(grid.x), p.grid_y = int(grid.y);
      grid = dim3(unsigned(sms), 1, 1);
      // Steps whose K/V read by more than one unit (the sequences with more than one pair of query blocks,
      // so only prefill-like steps have any) exceed the L2 (order_group > 0, from attention_order_group):
      // the units are handed out by a counter in the grouped order (order_from_env overrides it). In the
      // virtual grid's order each round's units belong to as many columns as the round has CTAs, so every
      // round reads their K/V again from DRAM.
      // On an H200 (60 MB of L2) it took prefill 16 x 2048 from 1364-1436 to 1292-1303 us and 4 x 8192 from
      // 5034-5039 to 4789-4792, while short steps lost to the counter's start (prefill 4 x 512 38 -> 43 us)
      // and decodes, whose units share no K/V, gained nothing from the order (128 x 512 77 -> 87:
      // logs_h200/630010c_attention_order_store_ab.log, 90b8813_attention_ab.log); so decodes, and steps
      // mixing decodes with a short prefill chunk, keep the static rounds. A group's columns hold at most
      // half the L2 (attention_order_group): the units in flight stream a column's K/V from different
      // offsets, so all of it is live. Prefill 1 x 32768 (16 MB a column) took 18597-18610 us in groups of 8,
      // 18441 in 4, 18311-18364 in 2, 18320 in 1, while 4 x 8192 (4 MB) was within 1% for 1 to 8 and 16 x
      // 2048 and 4 x 2048 were fastest in 8 (logs_h200/b08d459_attention_order_long_ab.log).
      const int forced = order_from_env();
      const int group = forced >= 0 ? forced : order_group;
      if (group > 0) {
        BIK_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&counter), sizeof(int), st));
        BIK_CUDA_CHECK(cudaMemsetAsync(counter, 0, sizeof(int), st));
        p.unit_counter = counter, p.order_group = std::min(group, p.grid_x);
      }
    }
    if (variant == 3)
      k = ws_kernel<T, D, WsSchedule::kSequential>(split, true);
    else if (variant == 4)
      k = ws_kernel<T, D, WsSchedule::kOverlap>(split, long_grid);
    else if (variant == 5)
      k = ws_kernel<T, D, WsSchedule::kPingPong>(split, long_grid);
    else
      k = ws_kernel<T, D, WsSchedule::kPipelined>(split, true);
  } else {
    k = split ? k90::attention_kernel<T, D, true> : k90::attention_kernel<T, D, false>;
  }
  allow_dynamic_smem(reinterpret_cast<const void*>(k), dev.index, bytes);
  launch_kernel(k, grid, unsigned(threads), bytes, st, p);
  BIK_CUDA_LAUNCH_CHECK();
  if (counter) BIK_CUDA_CHECK(cudaFreeAsync(counter, st));
  if (split) {
    auto fold = long_grid ? attn::fold_kernel<T, D, true> : attn::fold_kernel<T, D, false>;
    launch_kernel(fold, unsigned(rows), D, 0, st, p);
    BIK_CUDA_LAUNCH_CHECK();
  }
}

// Whether the sm_90a kernel exists for this device: an image compiled from compute_90(a) or later that
// the device loads. (The kernel body exists only in the sm_90a pass; an sm_90 build without the "a"
// features traps instead of returning garbage.) Cached per device.
bool sm90_kernel_loadable(int device) {
  return kernel_built_for(reinterpret_cast<const void*>(attn::sm90::attention_kernel<__nv_bfloat16, 128, false>),
                          device, 90);
}

// BIK_ATTENTION_SM90: "0" -> 0 (mma.sync), "1" -> 1 (one-warpgroup wgmma), "2" -> 2 (pipelined wgmma),
// "4" -> 4 (warp-specialised, S(j + 1) behind P V(j)), "5" -> 5 (4 with ping-pong consumers), "6" -> 6
// (warp-specialised, S(j + 1) overlapping the softmax of tile j), "3" -> 3 (warp-specialised, each tile in
// sequence); anything else or unset -> the default: 4 for a split-parallel launch, 5 otherwise. On an H200
// the split launches of few long decodes ran faster without the ping-pong (1 x 8192 14.7 us against 15.3,
// 1 x 32768 50.5 against 51.0, 1 x 2048 10.0 against 10.3, 8 x 8192 the same), while 32 x 2048, which does
// not split, took 71.0 against 70.0 (logs_h200/028257c_attention_decode_variants.log). The variants give the
// same bits, so the choice may follow the launch mode.
int variant_from_env(bool split) {
  const char* e = std::getenv("BIK_ATTENTION_SM90");
  if (e != nullptr)
    for (int v : {0, 1, 2, 3, 4, 5, 6})
      if (std::strcmp(e, std::to_string(v).c_str()) == 0) return v;
  return split ? 4 : 5;
}

// BIK_ATTENTION_SPLIT (read at each call, for A/B timing): "0" -> 0 (never split), "1" -> 1 (split
// wherever the partials fit); anything else or unset -> -1 (the launch rule). Either mode gives the same bits.
int split_from_env() {
  const char* e = std::getenv("BIK_ATTENTION_SPLIT");
  if (e != nullptr && (std::strcmp(e, "0") == 0 || std::strcmp(e, "1") == 0)) return e[0] - '0';
  return -1;
}

template <typename T>
__global__ void write_kv_kernel(T* kc, T* vc, const T* k, const T* v, int64_t k_s0, int64_t k_s1, int64_t k_s2,
                                int64_t v_s0, int64_t v_s1, int64_t v_s2, const int32_t* slots, int64_t slot_s,
                                int heads, int d) {
  pdl_wait();
  const int64_t t = blockIdx.x;
  const int32_t slot = slots[t * slot_s];
  if (slot < 0) return;
  const int n = heads * d;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const int h = i / d, e = i % d;
    kc[int64_t(slot) * n + i] = k[t * k_s0 + h * k_s1 + e * k_s2];
    vc[int64_t(slot) * n + i] = v[t * v_s0 + h * v_s1 + e * v_s2];
  }
}

}  // namespace

void write_kv_cache(const TensorView& k_cache, const TensorView& v_cache, const TensorView& k, const TensorView& v,
                    const TensorView& slot_mapping, Stream s) {
  use_device(k.device.index);
  const int64_t T = k.shape[0];
  const int heads = int(k.shape[1]), d = int(k.shape[2]);
  const int threads = std::min(1024, std::max(32, (heads * d + 31) / 32 * 32));
  cudaStream_t st = static_cast<cudaStream_t>(s.handle);
  auto go = [&](auto tag) {
    using T_ = decltype(tag);
    launch_kernel(write_kv_kernel<T_>, unsigned(T), threads, 0, st, k_cache.ptr<T_>(), v_cache.ptr<T_>(),
                  k.ptr<const T_>(), v.ptr<const T_>(), k.stride[0], k.stride[1], k.stride[2], v.stride[0], v.stride[1],
                  v.stride[2], slot_mapping.ptr<const int32_t>(), slot_mapping.stride[0], heads, d);
    BIK_CUDA_LAUNCH_CHECK();
  };
  if (k.dtype == DType::BF16)
    go(__nv_bfloat16{});
  else
    go(__half{});
}

void paged_attention(const AttentionArgs& a, Stream s) {
  const int device = a.q.device.index;
  const DeviceInfo& dev = use_device(device);
  const policy::AttentionPlan plan = policy::attention_plan({policy::Backend::CUDA, dev.arch}, a.q.dtype, a.head_dim);
  BIK_CHECK(plan.key_tile == attn::kBK, "paged_attention: the CUDA kernel is built for key tiles of ", attn::kBK,
            ", the plan says ", plan.key_tile);
  const policy::SplitGrid sg = a.split_len > 0 ? policy::uniform_split_grid(a.split_len) : plan.splits;
  BIK_CHECK(sg.len % attn::kBK == 0, "paged_attention: split length ", sg.len, " is not a multiple of the key tile");
  BIK_CHECK(a.tokens * a.q_heads < (int64_t(1) << 31) && a.max_seq_len < (int64_t(1) << 30),
            "paged_attention: sizes out of range for the CUDA kernel (T ", a.tokens, ", heads ", a.q_heads, ")");
  cudaStream_t st = static_cast<cudaStream_t>(s.handle);

  attn::Params p{};
  p.out = a.out.data;
  p.q = a.q.data;
  p.k_cache = a.k_cache.data;
  p.v_cache = a.v_cache.data;
  p.q_s0 = a.q.stride[0], p.q_s1 = a.q.stride[1];
  p.o_s0 = a.out.stride[0], p.o_s1 = a.out.stride[1];
  p.cache_tok = a.kv_heads * a.head_dim;
  p.cache_blk = a.block_size * p.cache_tok;
  p.block_tables = a.block_tables.ptr<const int32_t>();
  p.bt_s0 = a.block_tables.stride[0], p.bt_s1 = a.block_tables.stride[1];
  p.seq_lens = a.seq_lens.ptr<const int32_t>();
  p.sl_s = a.seq_lens.stride[0];
  p.qsl = a.query_start_loc.ptr<const int32_t>();
  p.qsl_s = a.query_start_loc.stride[0];
  p.num_seqs = int(a.num_seqs);
  p.q_heads = int(a.q_heads);
  p.kv_heads = int(a.kv_heads);
  p.group = int(a.q_heads / a.kv_heads);
  p.group_mul = ((1 << 16) + p.group - 1) / p.group;
  p.block_size = int(a.block_size);
  p.tok_per_cta = attn::kRows / p.group;
  p.split = sg;
  p.split_len = sg.len;
  p.run_keys = 0;
  p.splits_per_cta = 1;
  p.scale_log2 = a.scale * 1.4426950408889634f;

  // CTAs of the in-kernel fold mode; split-parallel when they cannot fill the GPU, the contexts are longer
  // than a split (its partials cost ~ (q_heads / kv_heads) / split length of the KV bytes), and the split
  // launch is expected to finish first (split_pays).
  // Also the K/V bytes of the sequences whose blocks take more than one unit of the warp-specialised kernels
  // (two query blocks a unit): read by several units, they and the largest of those sequences' K/V for one
  // KV head (one column of the grid) decide the persistent grid's hand-out (order_group, for launch_sm90).
  int64_t ctas = 0, shared_kv_positions = 0, column_positions = 0;
  for (int64_t i = 0; i < a.num_seqs; ++i) {
    const int64_t q_len = a.host_query_start_loc[size_t(i + 1)] - a.host_query_start_loc[size_t(i)];
    const int64_t qblocks_i = (q_len + p.tok_per_cta - 1) / p.tok_per_cta;
    ctas += qblocks_i * a.kv_heads;
    if (qblocks_i > 2) {
      shared_kv_positions += a.host_seq_lens[size_t(i)];
      column_positions = std::max<int64_t>(column_positions, a.host_seq_lens[size_t(i)]);
    }
  }
  const int64_t position_bytes = a.head_dim * 2 * dtype_size(a.k_cache.dtype);  // one key and one value
  const int64_t shared_kv_bytes = shared_kv_positions * a.kv_heads * position_bytes;
  const int64_t column_kv_bytes = column_positions * position_bytes;
  const int order_group = attention_order_group(shared_kv_bytes, column_kv_bytes, int64_t(dev.l2_bytes));
  const int64_t max_splits = sg.count(int(a.max_seq_len));
  const int64_t rows = a.tokens * a.q_heads;
  const int64_t part_bytes = rows * max_splits * (a.head_dim + 2) * 4;
  const bool fits = max_splits > 1 && part_bytes <= (int64_t(1) << 30) && max_splits <= 65535;
  const int forced = split_from_env();
  const bool split = fits && (forced >= 0 ? forced == 1
                                          : ctas < 2 * int64_t(dev.sms) &&
                                                split_pays(ctas, a.max_seq_len, max_splits,
                                                           sg.longest(int(a.max_seq_len)), dev.sms));
  const int64_t qblocks = (a.max_q_len + p.tok_per_cta - 1) / p.tok_per_cta;
  BIK_CHECK(qblocks <= 65535 && a.num_seqs * a.kv_heads < (int64_t(1) << 31),
            "paged_attention: too many query rows for one launch");
  dim3 grid(unsigned(a.num_seqs * a.kv_heads), unsigned(qblocks), split ? unsigned(max_splits) : 1u);

  void* part = nullptr;
  if (split) {
    BIK_CUDA_CHECK(cudaMallocAsync(&part, size_t(part_bytes), st));
    p.max_splits = int(max_splits);
    p.part_ml = static_cast<float*>(part);
    p.part_acc = p.part_ml + rows * max_splits * 2;
  }
  const bool bf = a.q.dtype == DType::BF16;
  const int variant = dev.arch == 90 && sm90_kernel_loadable(device) ? variant_from_env(split) : 0;
  if (variant != 0) {
    if (a.head_dim == 128) {
      if (bf)
        launch_sm90<__nv_bfloat16, 128>(p, grid, split, variant, dev, order_group, st, rows, a.max_seq_len);
      else
        launch_sm90<__half, 128>(p, grid, split, variant, dev, order_group, st, rows, a.max_seq_len);
    } else {
      if (bf)
        launch_sm90<__nv_bfloat16, 64>(p, grid, split, variant, dev, order_group, st, rows, a.max_seq_len);
      else
        launch_sm90<__half, 64>(p, grid, split, variant, dev, order_group, st, rows, a.max_seq_len);
    }
  } else if (a.head_dim == 128) {
    if (bf)
      launch<__nv_bfloat16, 128>(p, grid, split, device, st, rows);
    else
      launch<__half, 128>(p, grid, split, device, st, rows);
  } else {
    if (bf)
      launch<__nv_bfloat16, 64>(p, grid, split, device, st, rows);
    else
      launch<__half, 64>(p, grid, split, device, st, rows);
  }
  if (part) BIK_CUDA_CHECK(cudaFreeAsync(part, st));
}

bool attention_wgmma_available(int device) {
  return use_device(device).arch == 90 && sm90_kernel_loadable(device);
}

bool attention_uses_wgmma(int device) { return attention_wgmma_variant(device) != 0; }

int attention_wgmma_variant(int device, bool split_launch) {
  return attention_wgmma_available(device) ? variant_from_env(split_launch) : 0;
}

}  // namespace bik::cuda

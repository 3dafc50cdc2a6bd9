// Softmax and log-softmax over the last dim: one row group (rows.cuh) per row, two passes over the row
// (the statistics, then the output) with the statistics of softmax.cuh. The max is exact in any order;
// the sum's order is the plan's halving tree, fixed by n and the dtype; row groups only move the plan's
// lanes between threads, never a bit of a result.
//
// Rows in the common layout (rows.cuh, flat_rows) run a kernel of 16-byte loads without per-element
// bounds, which keeps rows of up to U L elements (U = 4 for F32, 2 for 16-bit types) in registers
// between the passes (one read of the row); longer rows are read twice, U passes' chunks in flight
// per thread, except the rows of softmax_resident_kernel (below), which one CTA keeps in registers
// (F32 n <= 32768, 16-bit n <= 65536; on sm_90 with more rows than SMs softmax_prefetch_kernel, which
// also prefetches each CTA's next row into shared memory). Any other layout runs the general kernel,
// same lanes, same order, same bits.
//
// On sm_90, rows of the largest plan (1024 plan threads: n > 4096 for F32, n > 8192 for 16-bit types)
// on the 16-byte path run on a thread-block cluster of kClusterCtas CTAs a row: CTA c holds lane group
// g = c of the plan's four (the top bits of the lane index), so a row is read by 4x the threads and a
// single row no longer waits on one SM. The CTAs trade their maxima and their lanes' terms through
// distributed shared memory; the terms' first two tree steps (across lane groups, the top bits) are
// folded in the plan's order by every CTA alike, then the rest of the tree inside each CTA. Same lanes,
// same order, same bits as the one-CTA kernels. The same kernel runs on clusters of 2 CTAs of 512 threads
// (CTA c holds lane groups 2c and 2c + 1, i.e. the top bit of the plan thread) for the rows of the
// resident range while twice the rows fit the SMs but four times do not: one CTA a row would leave half
// of the SMs idle, four-CTA clusters no longer fit.
#include <cooperative_groups.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <tuple>

#include "core/backend.h"
#include "cuda/device_info.h"
#include "cuda/rows.cuh"
#include "cuda/softmax.cuh"

namespace bik::cuda {
namespace {

namespace cg = cooperative_groups;

constexpr int kClusterCtas = 4;  // = the lane groups of flat_shape for the largest plan

// A chunk's outputs from the row's statistics: exp(x - M) / S, or x - M - log S, each one rounding.
template <int V>
__device__ __forceinline__ void softmax_outputs(const float (&v)[V], float M, float S, float log_sum, bool log,
                                                float (&o)[V]) {
#pragma unroll
  for (int k = 0; k < V; ++k) {
    const float d = __fsub_rn(v[k], M);
    o[k] = log ? __fsub_rn(d, log_sum) : __fdiv_rn(expf(d), S);
  }
}

// The row's statistics from the lane groups' running maxima m and sums s: the maximum M and the sum S of
// the lanes' terms, each by the plan's tree, and log S for log_softmax (0 otherwise).
struct RowStatsLog {
  float M, S, log_sum;
};
template <int V, int NG>
__device__ __forceinline__ RowStatsLog row_stats(const float (&m)[NG], const float (&s)[NG][V], float* smem,
                                                const RowGroup& rg, bool log) {
  float mm[NG][1];
#pragma unroll
  for (int g = 0; g < NG; ++g) mm[g][0] = m[g];
  const float M = group_tree<1, NG>(mm, smem, rg, SoftmaxMaxOp{});
  float acc[NG][V];
#pragma unroll
  for (int g = 0; g < NG; ++g)
#pragma unroll
    for (int k = 0; k < V; ++k) acc[g][k] = softmax_lane_term(m[g], s[g][k], M);
  const float S = group_tree<V, NG>(acc, smem, rg, AddOp{});
  return RowStatsLog{M, S, log ? logf(S) : 0.0f};
}

// kCtas: the CTAs an SM the launch bounds aim at. 3 (16-bit flat rows of four lane groups only, see
// softmax()): one pass in flight a thread instead of two, so three CTAs fit an SM's registers. A thread's
// chunks and their order are the same for any U, so are the bits.
template <class Tx, class To, int NG, bool kFlat, int kCtas = 2>
__global__ void __launch_bounds__(kMaxGroupThreads, kCtas)
    softmax_kernel(To* out, DevRows out_rows, int64_t out_stride, const Tx* x, DevRows x_rows, int64_t x_stride,
                   int64_t rows, int64_t n, bool log, int W) {
  constexpr int V = 16 / sizeof(Tx);
  static_assert(kCtas == 2 || (kCtas == 3 && sizeof(Tx) == 2 && kFlat), "three CTAs: 16-bit flat rows");
  // Passes a thread has in flight on the flat path (chunks: U * NG, held as raw 16-byte values).
  constexpr int U = sizeof(Tx) == 4 ? 4 : kCtas == 3 ? 1 : 2;
  extern __shared__ float smem[];
  const RowGroup rg = row_group(W);
  // Chunk (pass p, group g) of this thread: p * L + g * GV + t0, the chunk of plan thread g * G + tg.
  const int64_t GV = int64_t(rg.G) * V, L = GV * NG, t0 = int64_t(rg.tg) * V;

  for (int64_t r = rg.first; r < rows; r += rg.step) {
    const Tx* xr = kFlat ? x + r * x_stride : x + x_rows.offset(r);
    To* orow = kFlat ? out + r * out_stride : out + out_rows.offset(r);
    const int64_t xs = x_rows.elem_stride, os = out_rows.elem_stride;
    const bool x_vec = xs == 1 && aligned16_dev(xr), o_vec = os == 1 && aligned16_dev(orow);
    // The general kernel's chunk as floats, -inf past the row end (the statistics then skip it).
    auto load = [&](int64_t i0, float (&v)[V]) {
      load_chunk<V>(xr, xs, n, i0, x_vec, v);
#pragma unroll
      for (int k = 0; k < V; ++k)
        if (i0 + k >= n) v[k] = -INFINITY;
    };

    // Pass 1: the statistics.
    float m[NG], s[NG][V];
#pragma unroll
    for (int g = 0; g < NG; ++g) {
      m[g] = -INFINITY;
#pragma unroll
      for (int k = 0; k < V; ++k) s[g][k] = 0.0f;
    }
    uint4 raw[U][NG];  // flat: U passes' chunks; the whole row when n <= U L
    // Flat path: the chunks of passes base / L .. + U - 1 into raw, zeros past the row end.
    auto load_passes = [&](int64_t base) {
#pragma unroll
      for (int p = 0; p < U; ++p)
#pragma unroll
        for (int g = 0; g < NG; ++g) {
          const int64_t i0 = base + p * L + g * GV + t0;
          raw[p][g] = i0 < n ? ld16(xr + i0) : make_uint4(0, 0, 0, 0);
        }
    };
    if constexpr (kFlat) {
      for (int64_t base = 0; base < n; base += U * L) {
        load_passes(base);
#pragma unroll
        for (int p = 0; p < U; ++p)
#pragma unroll
          for (int g = 0; g < NG; ++g)
            if (base + p * L + g * GV + t0 < n) {
              float v[V];
              unpack<Tx, V>(raw[p][g], v);
              absorb_chunk<V>(m[g], s[g], v);
            }
      }
    } else {
      for (int64_t base = t0; base < n; base += L) {
        float v[NG][V];
#pragma unroll
        for (int g = 0; g < NG; ++g)
          if (base + g * GV < n) load(base + g * GV, v[g]);
#pragma unroll
        for (int g = 0; g < NG; ++g)
          if (base + g * GV < n) absorb_chunk<V>(m[g], s[g], v[g]);
      }
    }
    const auto [M, S, log_sum] = row_stats<V, NG>(m, s, smem, rg, log);

    // Pass 2: the output, blocks of U passes from the row's end back: the block pass 1 read last is still
    // in raw, and the blocks read just before it are the likeliest still in L2. Each output is one
    // element's expression, so the order of the stores never changes a bit.
    if constexpr (kFlat) {
      const int64_t last = n > 0 ? (n - 1) / (U * L) : -1;  // the last block, which raw holds
      for (int64_t blk = last; blk >= 0; --blk) {
        const int64_t base = blk * U * L;
        if (blk != last) load_passes(base);
#pragma unroll
        for (int p = 0; p < U; ++p)
#pragma unroll
          for (int g = 0; g < NG; ++g) {
            const int64_t i0 = base + p * L + g * GV + t0;
            if (i0 < n) {
              float v[V], o[V];
              unpack<Tx, V>(raw[p][g], v);
              softmax_outputs<V>(v, M, S, log_sum, log, o);
              store_flat<To, V>(orow + i0, o);
            }
          }
      }
    } else {
      for (int64_t base = t0; base < n; base += L) {
        float v[NG][V];
#pragma unroll
        for (int g = 0; g < NG; ++g)
          if (base + g * GV < n) load(base + g * GV, v[g]);
#pragma unroll
        for (int g = 0; g < NG; ++g)
          if (base + g * GV < n) {
            float o[V];
            softmax_outputs<V>(v[g], M, S, log_sum, log, o);
            store_chunk<V>(orow, os, n, base + g * GV, o_vec, o);
          }
      }
    }
  }
}

// One row per cluster of K CTAs (grid K x row slots), each CTA G = blockDim.x = 1024 / K threads, one
// plan thread each: thread tg of CTA c is plan thread c * G + tg, its chunks p * L + c * G * V + tg * V
// (L = K G V, the plan's lanes). K = 4: CTA c holds lane group c of flat_shape's four (G = 256); K = 2:
// lane groups 2c and 2c + 1 (G = 512). Either way the CTA index is the top bits of the plan thread.
// U passes in flight a thread (64 registers of chunks for F32, 32 for 16-bit types; the launch bounds
// give 128 registers a thread for either K: 1024 / K threads, K / 2 CTAs an SM), so rows of up to
// U L = 65536 elements stay in registers between the passes.
// Dynamic smem: 2 G V + 1 floats (tree scratch, this CTA's lane terms, this CTA's maximum).
template <class Tx, class To, int K>
__global__ void __launch_bounds__(kMaxRowThreads / K, K / 2)
    softmax_cluster_kernel(To* out, int64_t out_stride, const Tx* x, int64_t x_stride, int64_t rows, int64_t n,
                           bool log) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  static_assert(K == 2 || K == 4, "clusters of 2 or 4 CTAs");
  constexpr int V = 16 / sizeof(Tx);
  constexpr int U = sizeof(Tx) == 4 ? 16 : 8;
  extern __shared__ float smem[];
  cg::cluster_group cluster = cg::this_cluster();
  const int c = int(cluster.block_rank());
  const int G = blockDim.x;
  float* scratch = smem;            // group_tree: G * V floats
  float* terms = smem + G * V;      // this CTA's lane terms, terms[v * G + tg], read by the whole cluster
  float* cmax = smem + 2 * G * V;   // this CTA's maximum, read by the whole cluster
  const RowGroup rg = cluster_row_group();
  const int64_t GV = int64_t(G) * V, L = GV * K, t0 = int64_t(c) * GV + int64_t(rg.tg) * V;
  const bool cached = n <= U * L;

  for (int64_t r = rg.first; r < rows; r += rg.step) {
    const Tx* xr = x + r * x_stride;
    To* orow = out + r * out_stride;

    // Pass 1: this plan thread's statistics, chunks in increasing pass order.
    float m = -INFINITY, s[V];
#pragma unroll
    for (int k = 0; k < V; ++k) s[k] = 0.0f;
    uint4 raw[U];  // U passes' chunks; the whole row's when cached
    auto load_passes = [&](int64_t base) {  // zeros past the row end
#pragma unroll
      for (int p = 0; p < U; ++p) {
        const int64_t i0 = base + p * L + t0;
        raw[p] = i0 < n ? ld16(xr + i0) : make_uint4(0, 0, 0, 0);
      }
    };
    for (int64_t base = 0; base < n; base += U * L) {
      load_passes(base);
#pragma unroll
      for (int p = 0; p < U; ++p)
        if (base + p * L + t0 < n) {
          float v[V];
          unpack<Tx, V>(raw[p], v);
          absorb_chunk<V>(m, s, v);
        }
    }

    // The row's statistics over the cluster (softmax.cuh).
    const RowStats st = cluster_row_stats<V, K>(m, s, scratch, terms, cmax, rg, cluster);
    const float M = st.max, S = st.sum;
    const float log_sum = log ? logf(S) : 0.0f;

    // Pass 2: this CTA's lanes of the output.
    for (int64_t base = 0; base < n; base += U * L) {
      if (!cached) load_passes(base);
#pragma unroll
      for (int p = 0; p < U; ++p) {
        const int64_t i0 = base + p * L + t0;
        if (i0 < n) {
          float v[V], o[V];
          unpack<Tx, V>(raw[p], v);
          softmax_outputs<V>(v, M, S, log_sum, log, o);
          store_flat<To, V>(orow + i0, o);
        }
      }
    }
  }
#endif
}

// ---- rows held on chip -------------------------------------------------------------------------------------
// Rows of the largest plan (1024 plan threads, L = 1024 V lanes) that the kernels above read twice
// (F32 16384 < n, 16-bit 16384 < n) but that fit kResidentPasses passes (F32 n <= 32768, 16-bit n <= 65536):
// one CTA of kResidentThreads threads a row, each thread kResidentNg lane groups, so thread tg holds plan
// threads g * kResidentThreads + tg (g < kResidentNg) and loads every chunk of the row it will ever need at
// once (kResidentPasses x kResidentNg 16-byte values, 64 registers). The row is read once and written
// once. Chunks, lanes, their order and the tree are those of softmax_kernel (the flat path with U =
// kResidentPasses), so the bits are the same; only where the chunks wait between the passes differs.
// A CTA takes a whole SM's registers, so an SM runs one row at a time: the loads of all its chunks are in
// flight together (128 KiB for F32 n = 32000), which keeps HBM busy without a second CTA.
constexpr int kResidentThreads = 512;
constexpr int kResidentNg = kMaxRowThreads / kResidentThreads;
constexpr int kResidentPasses = 8;

// One resident row from the registers: the statistics (each plan thread's chunks in increasing pass
// order), the max and sum trees, and the output. raw[p][g] is the chunk of pass p, lane group g that
// thread rg.tg owns (zeros past the row end, never used); how it got there is the caller's business, so
// softmax_resident_kernel and softmax_prefetch_kernel share the arithmetic and give the same bits.
template <class Tx, class To>
__device__ __forceinline__ void softmax_resident_row(const uint4 (&raw)[kResidentPasses][kResidentNg], To* orow,
                                                     int64_t n, float* scratch, const RowGroup& rg, bool log) {
  constexpr int V = 16 / sizeof(Tx), NG = kResidentNg, P = kResidentPasses;
  const int64_t GV = int64_t(kResidentThreads) * V, L = GV * NG, t0 = int64_t(rg.tg) * V;
  float m[NG], s[NG][V];
#pragma unroll
  for (int g = 0; g < NG; ++g) {
    m[g] = -INFINITY;
#pragma unroll
    for (int k = 0; k < V; ++k) s[g][k] = 0.0f;
  }
#pragma unroll
  for (int p = 0; p < P; ++p)
#pragma unroll
    for (int g = 0; g < NG; ++g)
      if (p * L + g * GV + t0 < n) {
        float v[V];
        unpack<Tx, V>(raw[p][g], v);
        absorb_chunk<V>(m[g], s[g], v);
      }
  const auto [M, S, log_sum] = row_stats<V, NG>(m, s, scratch, rg, log);

  // The output, from the registers.
#pragma unroll
  for (int p = 0; p < P; ++p)
#pragma unroll
    for (int g = 0; g < NG; ++g) {
      const int64_t i0 = p * L + g * GV + t0;
      if (i0 < n) {
        float v[V], o[V];
        unpack<Tx, V>(raw[p][g], v);
        softmax_outputs<V>(v, M, S, log_sum, log, o);
        store_flat<To, V>(orow + i0, o);
      }
    }
}

template <class Tx, class To>
__global__ void __launch_bounds__(kResidentThreads, 1)
    softmax_resident_kernel(To* out, int64_t out_stride, const Tx* x, int64_t x_stride, int64_t rows, int64_t n,
                            bool log) {
  constexpr int V = 16 / sizeof(Tx), NG = kResidentNg, P = kResidentPasses;
  extern __shared__ float smem[];
  const RowGroup rg = row_group(kResidentThreads / 32);  // one CTA a row
  const int64_t GV = int64_t(kResidentThreads) * V, L = GV * NG, t0 = int64_t(rg.tg) * V;

  for (int64_t r = rg.first; r < rows; r += rg.step) {
    const Tx* xr = x + r * x_stride;
    To* orow = out + r * out_stride;

    // Every chunk of the row this thread owns: pass p, lane group g (zeros past the row end, never used).
    uint4 raw[P][NG];
#pragma unroll
    for (int p = 0; p < P; ++p)
#pragma unroll
      for (int g = 0; g < NG; ++g) {
        const int64_t i0 = p * L + g * GV + t0;
        raw[p][g] = ld16_if(xr + i0, i0 < n);
      }

    softmax_resident_row<Tx, To>(raw, orow, n, smem, rg, log);
  }
}

// ---- resident rows with the next row prefetched (sm_90) -----------------------------------------------------
// softmax_resident_kernel on a persistent grid (one CTA an SM, rows r = blockIdx.x + k gridDim.x): an SM's
// loads of one row no longer wait for the compute and the stores of the one before. The copy engine brings
// row r into a shared-memory buffer (cp.async.bulk, one mbarrier phase a row); each thread moves its chunks
// from there to registers (the chunks and registers of softmax_resident_kernel), the CTA syncs, and thread
// 0 starts the copy of the CTA's next row into the same buffer; the statistics, the trees and the output
// of row r then run from the registers while that copy is in flight. The chunks, lanes, their order and
// the tree are softmax_resident_kernel's, and a chunk's bytes are the row's bytes whichever way they came,
// so the bits are the same.
// Dynamic smem: kPrefetchHead bytes (the mbarrier), the tree's scratch (kResidentThreads V floats), then
// the row buffer (n * sizeof(Tx) bytes, 16-byte aligned: flat rows are a whole number of 16-byte vectors).
constexpr int kPrefetchHead = 128;

template <class Tx>
constexpr size_t prefetch_scratch_bytes() {
  return size_t(kResidentThreads) * (16 / sizeof(Tx)) * sizeof(float);
}

template <class Tx, class To>
__global__ void __launch_bounds__(kResidentThreads, 1)
    softmax_prefetch_kernel(To* out, int64_t out_stride, const Tx* x, int64_t x_stride, int64_t rows, int64_t n,
                            bool log) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int V = 16 / sizeof(Tx), NG = kResidentNg, P = kResidentPasses;
  extern __shared__ __align__(128) unsigned char prefetch_smem[];
  uint64_t* bar = reinterpret_cast<uint64_t*>(prefetch_smem);
  float* scratch = reinterpret_cast<float*>(prefetch_smem + kPrefetchHead);
  unsigned char* buf = prefetch_smem + kPrefetchHead + prefetch_scratch_bytes<Tx>();
  const RowGroup rg = row_group(kResidentThreads / 32);  // one CTA a row
  const int64_t GV = int64_t(kResidentThreads) * V, L = GV * NG, t0 = int64_t(rg.tg) * V;
  const uint32_t row_bytes = uint32_t(n * int64_t(sizeof(Tx)));

  if (rg.tg == 0) bulk_bar_init(bar);
  __syncthreads();  // the barrier is initialised before anyone waits on it
  if (rg.tg == 0 && rg.first < rows) bulk_copy_row(buf, x + rg.first * x_stride, row_bytes, bar);

  uint32_t parity = 0;  // the k-th row of this CTA completes phase k
  for (int64_t r = rg.first; r < rows; r += rg.step, parity ^= 1) {
    To* orow = out + r * out_stride;

    // Row r has landed: every chunk of it this thread owns (pass p, lane group g), as in
    // softmax_resident_kernel (zeros past the row end, never used).
    bulk_wait(bar, parity);
    uint4 raw[P][NG];
    lds_row_chunks<P, NG, Tx>(raw, buf, L, GV, t0, n);
    // Every thread has read the buffer (and passed the wait of this phase): it may take the next row.
    __syncthreads();
    if (rg.tg == 0 && r + rg.step < rows) {
      bulk_after_reads();
      bulk_copy_row(buf, x + (r + rg.step) * x_stride, row_bytes, bar);
    }

    softmax_resident_row<Tx, To>(raw, orow, n, scratch, rg, log);
  }
#endif
}

// Whether softmax() runs softmax_resident_kernel for rows of n elements of `dtype` on the 16-byte path:
// the rows of the largest plan longer than the other kernels keep in registers, up to kResidentPasses
// passes. A function of (n, dtype) and the switch alone.
bool softmax_resident_applies(int64_t n, DType dtype) {
  const int V = int(16 / dtype_size(dtype));
  const int64_t L = int64_t(kMaxRowThreads) * V;
  const int64_t cached = (dtype == DType::F32 ? 4 : 2) * L;  // softmax_kernel's U L
  return env_switch_on("BIK_SOFTMAX_RESIDENT") && row_threads(n, V) == kMaxRowThreads && n > cached &&
         n <= kResidentPasses * L;
}

// CTAs of `kernel` an SM holds at `threads` threads and `smem` bytes of dynamic shared memory, cached per
// (kernel, device, threads, smem).
int ctas_per_sm(const void* kernel, int threads, size_t smem, int device) {
  static std::mutex mu;
  static std::map<std::tuple<const void*, int, int, size_t>, int> cache;
  std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_tuple(kernel, device, threads, smem);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  int n = 0;
  BIK_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, smem));
  cache[key] = n;
  return n;
}

}  // namespace

void softmax(const TensorView& out, const TensorView& x, bool log, Stream s) {
  const int64_t n = x.size(-1), rows = x.numel() / n;
  const FlatRows fx = flat_rows(x), fo = flat_rows(out);
  const bool flat = fx.ok && fo.ok;
  dispatch_float(x.dtype, [&](auto xt) {
    using Tx = decltype(xt);
    constexpr int V = 16 / sizeof(Tx);
    const GroupShape gs = flat_shape(row_threads(n, V));
    const size_t smem = gs.W > 1 ? size_t(32 * gs.W) * V * sizeof(float) : 0;
    // The cluster kernel for the largest plan (1024 plan threads): its four lane groups, one a CTA. It
    // gives the bits of the one-CTA kernel (OpsCuda.SoftmaxClusterMatchesOneCta), so the choice may follow
    // the row count: on an H200 (bench/results/ops_h200.md and logs_h200x2/5147631_*) the cluster took
    // f32 n=32000 from 24 to 10 us at 1 row and 26 to 22 us at 64 rows, but 69 -> 101 us at 512 rows, where
    // one CTA a row already fills the GPU. So: clusters while the rows fit the SMs one a SM.
    // BIK_SOFTMAX_CLUSTER=0 keeps every row on one CTA (tests compare the two).
    const DeviceInfo& dev = use_device(x.device.index);
    const bool cluster_ok = flat && gs.NG == kClusterCtas && gs.W * 32 == kMaxGroupThreads && rows > 0 &&
                            env_switch_on("BIK_SOFTMAX_CLUSTER") && dev.arch >= 90;
    const bool cluster = cluster_ok && rows <= dev.sms;
    // Rows the one-CTA and cluster kernels would read twice but that fit one CTA's registers: read once
    // (softmax_resident_kernel), unless every row's cluster gets SMs of its own (rows * 4 <= SMs), where
    // the cluster is faster (H200, f32 n=32000: 1 row 10.1 us on the cluster, 13.7 resident; 64 rows 21.5
    // and 15.4; logs_h200x2/0907d85_*). BIK_SOFTMAX_RESIDENT=0 restores the choice below
    // (OpsCuda.SoftmaxResidentMatchesOtherKernels compares the bits).
    // More rows than SMs: the persistent kernel that prefetches each CTA's next row (sm_90; the same
    // bits, OpsCuda.SoftmaxPrefetchMatchesResident). BIK_SOFTMAX_PREFETCH=0 keeps softmax_resident_kernel,
    // =2 takes the prefetching kernel for every row count, the cluster's included (tests).
    const int prefetch_level = env_switch_level("BIK_SOFTMAX_PREFETCH");
    const bool resident = flat && softmax_resident_applies(n, x.dtype);
    // Rows of the resident range that twice but not four times fit the SMs (SMs / 4 < rows <= SMs / 2, e.g.
    // 64 rows on 132 SMs): one CTA a row leaves half of the SMs idle and four-CTA clusters no longer fit,
    // so a cluster of two 512-thread CTAs a row (the cluster kernel with K = 2: same lanes, same tree, same
    // bits, OpsCudaSmall.SoftmaxCluster2*). BIK_SOFTMAX_CLUSTER2=0 keeps the choice below, =2 takes the
    // two-CTA cluster for every row count and every row of the largest plan (tests); BIK_SOFTMAX_CLUSTER=0
    // and BIK_SOFTMAX_PREFETCH=2 turn it off. If the device cannot place the cluster, the choice below.
    const int cluster2_level = env_switch_level("BIK_SOFTMAX_CLUSTER2");
    if (cluster_ok && prefetch_level != 2 && cluster2_level > 0 &&
        (cluster2_level == 2 || (resident && rows * 2 <= dev.sms && rows * kClusterCtas > dev.sms))) {
      constexpr int kPairThreads = kMaxRowThreads / 2;
      auto launch_pair = [&](auto ot) {
        using To = decltype(ot);
        return launch_row_clusters(softmax_cluster_kernel<Tx, To, 2>, 2, kPairThreads,
                                   (size_t(2 * kPairThreads) * V + 1) * sizeof(float), stream_of(s), rows,
                                   out.ptr<To>(), fo.stride, x.ptr<const Tx>(), fx.stride, rows, n, log);
      };
      if (out.dtype == DType::F32 ? launch_pair(float{}) : launch_pair(Tx{})) return;
    }
    if (resident && (prefetch_level == 2 || !(cluster_ok && rows * kClusterCtas <= dev.sms))) {
      if (rows == 0) return;
      const size_t psmem = kPrefetchHead + prefetch_scratch_bytes<Tx>() + size_t(n) * sizeof(Tx);
      const size_t psmem_max = kPrefetchHead + prefetch_scratch_bytes<Tx>() +
                               size_t(kResidentPasses) * kMaxRowThreads * 16;  // the longest resident row
      const bool prefetch = dev.arch >= 90 && prefetch_level > 0 && (prefetch_level == 2 || rows > dev.sms) &&
                            psmem_max <= size_t(dev.smem_optin);
      auto launch_resident = [&](auto ot) {
        using To = decltype(ot);
        if (prefetch) {
          auto kernel = softmax_prefetch_kernel<Tx, To>;
          allow_dynamic_smem(reinterpret_cast<const void*>(kernel), dev.index, int(psmem_max));
          const int64_t ctas = rows < dev.sms ? rows : dev.sms;
          kernel<<<unsigned(ctas), kResidentThreads, psmem, stream_of(s)>>>(out.ptr<To>(), fo.stride,
                                                                            x.ptr<const Tx>(), fx.stride, rows, n, log);
          BIK_CUDA_LAUNCH_CHECK();
          return;
        }
        const size_t rsmem = size_t(kResidentThreads) * V * sizeof(float);
        softmax_resident_kernel<Tx, To><<<grid_for(rows), kResidentThreads, rsmem, stream_of(s)>>>(
            out.ptr<To>(), fo.stride, x.ptr<const Tx>(), fx.stride, rows, n, log);
        BIK_CUDA_LAUNCH_CHECK();
      };
      if (out.dtype == DType::F32) launch_resident(float{});
      else launch_resident(Tx{});
      return;
    }
    auto launch = [&](auto ot) {
      using To = decltype(ot);
      // No room for such a cluster on this device: the one-CTA kernels below (same bits).
      if (cluster && launch_row_clusters(softmax_cluster_kernel<Tx, To, kClusterCtas>, kClusterCtas, gs.W * 32,
                                         (size_t(2 * 32 * gs.W) * V + 1) * sizeof(float), stream_of(s), rows,
                                         out.ptr<To>(), fo.stride, x.ptr<const Tx>(), fx.stride, rows, n, log))
        return;
      dispatch_flat_ng(gs.NG, [&](auto ng) {
        constexpr int NG = decltype(ng)::value;
        auto kernel = flat ? softmax_kernel<Tx, To, NG, true> : softmax_kernel<Tx, To, NG, false>;
        if constexpr (sizeof(Tx) == 2 && NG == 4) {
          // 16-bit rows of four lane groups that are read twice (longer than the resident range, or too few
          // rows for it) with one pass in flight, three CTAs an SM, when that grid's waves, each taken as
          // 1.2 of the two-CTA grid's, are fewer: on an H200 (bench/results/logs_h200/
          // 26c945f_softmax_occupancy_ab.log) log_softmax bf16 151936 took 726 against 811 us at 2048
          // rows, 262 against 249 at 512 (the second wave of 396 slots half empty). BIK_SOFTMAX_THREE=0
          // never, =2 always (OpsCuda.SoftmaxThreeCtasKeepsBits compares the two).
          const int three = env_switch_level("BIK_SOFTMAX_THREE");
          // Only rows the two-CTA kernel reads twice too (longer than its two passes of lanes): shorter ones
          // it keeps in registers between the passes, which one pass in flight would not.
          const bool read_twice = n > int64_t(2) * gs.threads * V * NG;
          if (flat && read_twice && three > 0) {
            auto kernel3 = softmax_kernel<Tx, To, 4, true, 3>;
            bool use3 = three == 2;
            if (three == 1) {
              const int per2 = ctas_per_sm(reinterpret_cast<const void*>(kernel), gs.threads, smem, dev.index);
              const int per3 = ctas_per_sm(reinterpret_cast<const void*>(kernel3), gs.threads, smem, dev.index);
              const int64_t slots2 = int64_t(per2) * dev.sms, slots3 = int64_t(per3) * dev.sms;
              if (slots2 > 0 && slots3 > slots2) {
                const int64_t waves2 = (rows + slots2 - 1) / slots2, waves3 = (rows + slots3 - 1) / slots3;
                use3 = waves3 * 6 < waves2 * 5;
              }
            }
            if (use3) kernel = kernel3;
          }
        }
        kernel<<<group_grid(rows, gs.W), gs.threads, smem, stream_of(s)>>>(
            out.ptr<To>(), DevRows(out), fo.stride, x.ptr<const Tx>(), DevRows(x), fx.stride, rows, n, log, gs.W);
        BIK_CUDA_LAUNCH_CHECK();
      });
    };
    if (out.dtype == DType::F32) launch(float{});
    else launch(Tx{});
  });
}

}  // namespace bik::cuda

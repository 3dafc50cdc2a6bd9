// Sum / mean over any set of dims, and argmax over the last dim: one output element per row group
// (rows.cuh) when the reduced elements form one run, a column kernel when they lie far apart with the
// outputs adjacent, else one output element per CTA.
//
// sum/mean: the reduced dims are flattened in row-major order into one index i in [0, n), and the CTA
// tree of rows.cuh sums over i exactly as it sums a row of a norm. When the reduced dims collapse to
// one contiguous run the 16-byte path applies (reduce_flat_kernel when the rows are in the common
// layout, or on sm_90 reduce_ring_kernel for many one-warp rows); otherwise each element's offset is
// computed from i.
// argmax is exact in any order (a strict total order on (value, index)), so only its result is fixed.
#include <cooperative_groups.h>

#include <atomic>
#include <climits>
#include <cstdlib>
#include <mutex>
#include <set>
#include <type_traits>
#include <utility>

#include "core/backend.h"
#include "cuda/device_info.h"
#include "cuda/reduce.h"
#include "cuda/rows.cuh"
#include "cuda/tensor_map.h"

namespace bik::cuda {
namespace {

namespace cg = cooperative_groups;

// Row-major index -> element offset over up to kMaxDims dims.
struct DimIndex {
  int nd = 0;
  int64_t shape[kMaxDims] = {};
  int64_t stride[kMaxDims] = {};
  __device__ __forceinline__ int64_t offset(int64_t i) const {
    int64_t off = 0;
#pragma unroll
    for (int d = kMaxDims - 1; d >= 0; --d) {
      if (d < nd) {
        off += (i % shape[d]) * stride[d];
        i /= shape[d];
      }
    }
    return off;
  }
};

DimIndex dim_index(const int64_t* shape, const int64_t* stride, int nd) {
  DimIndex r;
  r.nd = nd;
  for (int d = 0; d < nd; ++d) {
    r.shape[d] = shape[d];
    r.stride[d] = stride[d];
  }
  return r;
}

// Drops size-1 dims and merges neighbours that are laid out as one run (stride[d] = stride[d+1] *
// shape[d+1]); the flattened row-major index is unchanged by this.
DimIndex collapse(const int64_t* shape, const int64_t* stride, int nd) {
  DimIndex r;
  for (int d = 0; d < nd; ++d) {
    if (shape[d] == 1) continue;
    if (r.nd > 0 && r.stride[r.nd - 1] == stride[d] * shape[d]) {
      r.shape[r.nd - 1] *= shape[d];
      r.stride[r.nd - 1] = stride[d];
      continue;
    }
    r.shape[r.nd] = shape[d];
    r.stride[r.nd] = stride[d];
    ++r.nd;
  }
  return r;
}

template <class Tx, class To>
__global__ void __launch_bounds__(kMaxRowThreads) reduce_kernel(To* out, DimIndex out_idx, const Tx* x, DimIndex kept_idx, DimIndex red_idx,
                              int64_t rows, int64_t n, bool mean) {
  constexpr int V = 16 / sizeof(Tx);
  extern __shared__ float smem[];
  const int t = threadIdx.x;
  const int64_t L = int64_t(blockDim.x) * V;
  // One run of the reduced elements (or none): plain strided rows, 16-byte loads when contiguous.
  const bool simple = red_idx.nd <= 1;
  const int64_t stride = red_idx.nd == 1 ? red_idx.stride[0] : 1;

  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const Tx* xr = x + kept_idx.offset(r);
    const bool vec = simple && stride == 1 && aligned16_dev(xr);
    float acc[V];
#pragma unroll
    for (int k = 0; k < V; ++k) acc[k] = 0.0f;
    for (int64_t i0 = int64_t(t) * V; i0 < n; i0 += L) {
      float v[V];
      if (simple) {
        load_chunk<V>(xr, stride, n, i0, vec, v);
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) v[k] = i0 + k < n ? to_f32(xr[red_idx.offset(i0 + k)]) : 0.0f;
      }
#pragma unroll
      for (int k = 0; k < V; ++k)
        if (i0 + k < n) acc[k] = __fadd_rn(acc[k], v[k]);
    }
    float total = block_tree<V>(acc, smem, AddOp{});
    if (mean) total = __fdiv_rn(total, float(n));
    if (t == 0) out[out_idx.offset(r)] = from_f32<To>(total);
  }
}

// The reduced elements form one run (stride `stride`): a row group (rows.cuh) per output, the same
// lanes and tree as reduce_kernel and the norms, with NG chunks of each pass in flight per thread.
// 4 lane groups at most: measured on the H100 as fast as 8 at 16384 x 4096 bf16, faster at 1 row.
constexpr int kRunMaxNg = 4;
template <class Tx, class To, int NG>
__global__ void __launch_bounds__(256) reduce_run_kernel(To* out, DimIndex out_idx, const Tx* x, DimIndex kept_idx,
                                                         int64_t stride, int64_t rows, int64_t n, bool mean, int W) {
  constexpr int V = 16 / sizeof(Tx);
  extern __shared__ float smem[];
  const RowGroup rg = row_group(W);
  const int64_t GV = int64_t(rg.G) * V, L = GV * NG, t0 = int64_t(rg.tg) * V;
  for (int64_t r = rg.first; r < rows; r += rg.step) {
    const Tx* xr = x + kept_idx.offset(r);
    const bool vec = stride == 1 && aligned16_dev(xr);
    float acc[NG][V];
#pragma unroll
    for (int g = 0; g < NG; ++g)
#pragma unroll
      for (int k = 0; k < V; ++k) acc[g][k] = 0.0f;
#pragma unroll 2
    for (int64_t base = t0; base < n; base += L) {
      uint4 raw[NG];
#pragma unroll
      for (int g = 0; g < NG; ++g) raw[g] = load_raw(xr, stride, n, base + g * GV, vec);
#pragma unroll
      for (int g = 0; g < NG; ++g) {
        float v[V];
        unpack<Tx, V>(raw[g], v);
        const int64_t i0 = base + g * GV;
#pragma unroll
        for (int k = 0; k < V; ++k)
          if (i0 + k < n) acc[g][k] = __fadd_rn(acc[g][k], v[k]);
      }
    }
    float total = group_tree<V, NG>(acc, smem, rg, AddOp{});
    if (mean) total = __fdiv_rn(total, float(n));
    if (rg.tg == 0) out[out_idx.offset(r)] = from_f32<To>(total);
  }
}

// The common layout (rows.cuh, flat_rows): every row contiguous, 16-byte aligned, a whole number of
// 16-byte vectors, row r at x + r * x_stride. Same lanes, order and tree as reduce_run_kernel (a flat row
// has no partial chunk, so a chunk is added whole or not at all), with kFlatChunks chunks in flight per
// thread: U passes of NG lane groups loaded before any is added, no per-element bounds, no 64-bit index
// arithmetic per row. Rows of up to 256 plan threads (bf16 n <= 4096, f32 n <= 2048) take one warp each
// (up to 8 lane groups a thread, no barrier); longer rows 4 lane groups on 4 or 8 warps.
constexpr int kFlatChunks = 16;
template <class Tx, class To, int NG, int U>
__global__ void __launch_bounds__(kMaxGroupThreads)
    reduce_flat_kernel(To* out, DimIndex out_idx, const Tx* x, int64_t x_stride, int64_t rows, int64_t n, bool mean,
                       int W) {
  constexpr int V = 16 / sizeof(Tx);
  extern __shared__ float smem[];
  const RowGroup rg = row_group(W);
  const int64_t GV = int64_t(rg.G) * V, L = GV * NG, t0 = int64_t(rg.tg) * V;
  for (int64_t r = rg.first; r < rows; r += rg.step) {
    const Tx* xr = x + r * x_stride;
    float acc[NG][V];
#pragma unroll
    for (int g = 0; g < NG; ++g)
#pragma unroll
      for (int k = 0; k < V; ++k) acc[g][k] = 0.0f;
    for (int64_t base = 0; base < n; base += U * L) {
      uint4 raw[U][NG];
#pragma unroll
      for (int p = 0; p < U; ++p)
#pragma unroll
        for (int g = 0; g < NG; ++g) {
          const int64_t i0 = base + p * L + g * GV + t0;
          raw[p][g] = ld16_if(xr + i0, i0 < n);
        }
#pragma unroll
      for (int p = 0; p < U; ++p)
#pragma unroll
        for (int g = 0; g < NG; ++g)
          if (base + p * L + g * GV + t0 < n) {
            float v[V];
            unpack<Tx, V>(raw[p][g], v);
#pragma unroll
            for (int k = 0; k < V; ++k) acc[g][k] = __fadd_rn(acc[g][k], v[k]);
          }
    }
    float total = group_tree<V, NG>(acc, smem, rg, AddOp{});
    if (mean) total = __fdiv_rn(total, float(n));
    if (rg.tg == 0) out[out_idx.offset(r)] = from_f32<To>(total);
  }
}

// ---- one-warp rows with the next rows prefetched (sm_90) -------------------------------------------------
// reduce_flat_kernel's one-warp rows (up to 256 plan threads: the whole row, at most 512 V elements = 8 KiB,
// is one batch of U x NG chunks a thread) on a persistent grid whose warps fetch their rows through a ring of
// kRingStages shared-memory buffers filled by the copy engine (cp.async.bulk, one mbarrier a stage). The
// bytes in flight an SM are then set by the ring (stages x warps x row bytes), not by the registers a thread
// can hold for its loads, and a warp's next rows arrive while it adds and folds the current one. Warp w's
// k-th row r = first + k step sits in stage k % kRingStages, completing that stage's phase k / kRingStages.
// Each lane copies its chunks from the stage to registers, the warp syncs, lane 0 hands the stage to row
// r + kRingStages step, and the lanes add exactly as reduce_flat_kernel does (same chunks, lanes, order and
// tree), so the bits are the same.
// Dynamic smem: kRingHead bytes (the warps' mbarriers), then per warp kRingStages buffers of `stage` bytes
// (the row's bytes rounded up to 128).
constexpr int kRingStages = 2;
constexpr int kRingHead = 128;
constexpr int kRingCtasPerSm = 4;  // the launch bounds: at most 128 registers a thread
// Shorter rows stay on reduce_flat_kernel: a copy of a few hundred bytes a row would cost the copy engine
// more than it saves.
constexpr int64_t kRingMinBytes = 2048;
static_assert(kWarpRowsPerCta * kRingStages * 8 <= kRingHead, "the ring's mbarriers fit the head");

template <class Tx, class To, int NG, int U>
__global__ void __launch_bounds__(32 * kWarpRowsPerCta, kRingCtasPerSm)
    reduce_ring_kernel(To* out, DimIndex out_idx, const Tx* x, int64_t x_stride, int64_t rows, int64_t n, bool mean,
                       uint32_t stage) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int V = 16 / sizeof(Tx);
  extern __shared__ __align__(128) unsigned char ring_smem[];
  const int warp = threadIdx.x >> 5;
  uint64_t* bars = reinterpret_cast<uint64_t*>(ring_smem) + warp * kRingStages;
  unsigned char* bufs = ring_smem + kRingHead + size_t(warp) * kRingStages * stage;
  const RowGroup rg = row_group(1);
  const int64_t GV = int64_t(rg.G) * V, L = GV * NG, t0 = int64_t(rg.tg) * V;
  const uint32_t row_bytes = uint32_t(n * int64_t(sizeof(Tx)));

  if (rg.tg == 0)
    for (int st = 0; st < kRingStages; ++st) bulk_bar_init(&bars[st]);
  __syncwarp();  // the lanes see the barriers initialised before they wait on them
  if (rg.tg == 0)
    for (int st = 0; st < kRingStages; ++st) {
      const int64_t r = rg.first + st * rg.step;
      if (r < rows) bulk_copy_row(bufs + size_t(st) * stage, x + r * x_stride, row_bytes, &bars[st]);
    }

  int st = 0;
  uint32_t parity = 0;
  for (int64_t r = rg.first; r < rows; r += rg.step) {
    const unsigned char* buf = bufs + size_t(st) * stage;
    bulk_wait(&bars[st], parity);
    uint4 raw[U][NG];
    lds_row_chunks<U, NG, Tx>(raw, buf, L, GV, t0, n);
    // Every lane has read the stage (and passed this phase's wait): it may take row r + kRingStages step.
    __syncwarp();
    const int64_t next = r + kRingStages * rg.step;
    if (rg.tg == 0 && next < rows) {
      bulk_after_reads();
      bulk_copy_row(bufs + size_t(st) * stage, x + next * x_stride, row_bytes, &bars[st]);
    }
    if (++st == kRingStages) {
      st = 0;
      parity ^= 1;
    }

    float acc[NG][V];
#pragma unroll
    for (int g = 0; g < NG; ++g)
#pragma unroll
      for (int k = 0; k < V; ++k) acc[g][k] = 0.0f;
#pragma unroll
    for (int p = 0; p < U; ++p)
#pragma unroll
      for (int g = 0; g < NG; ++g)
        if (p * L + g * GV + t0 < n) {
          float v[V];
          unpack<Tx, V>(raw[p][g], v);
#pragma unroll
          for (int k = 0; k < V; ++k) acc[g][k] = __fadd_rn(acc[g][k], v[k]);
        }
    float total = group_tree<V, NG>(acc, static_cast<float*>(nullptr), rg, AddOp{});
    if (mean) total = __fdiv_rn(total, float(n));
    if (rg.tg == 0) out[out_idx.offset(r)] = from_f32<To>(total);
  }
#endif
}

// Whether the rows of x (kept dims collapsed to `kept_run`, reduced run of n contiguous elements) are in
// the common layout, and the distance between them.
bool reduce_flat_rows(const TensorView& x, const DimIndex& kept_run, int64_t n, int64_t& x_stride) {
  const int64_t es = dtype_size(x.dtype);
  if (n <= 0 || (n * es) % 16 != 0 || !aligned16(x.data) || kept_run.nd > 1) return false;
  x_stride = kept_run.nd == 1 ? kept_run.stride[0] : 0;
  return (x_stride * es) % 16 == 0;
}

// Launch shape of reduce_flat_kernel for `plan_threads` plan threads: a function of (n, dtype) alone.
GroupShape reduce_flat_shape(int plan_threads) {
  GroupShape s;
  if (plan_threads <= 256) {
    s.W = 1;
    s.NG = plan_threads / 32;
    s.threads = 32 * kWarpRowsPerCta;
  } else {
    s.NG = 4;
    s.W = plan_threads / (32 * s.NG);
    s.threads = 32 * s.W;
  }
  return s;
}

// ---- sum / mean with the reduced elements far apart and the outputs adjacent (e.g. over dim 0) ------------
// x seen as [n, cols]: output `col` sums x[i, col] over i < n, the reduced index i at stride `stride`,
// the columns contiguous. The order is the plan's, exactly as the row kernels sum a row of n: L lanes,
// lane j sums the elements i = j (mod L) in increasing i, then the halving tree over the lanes.
//
// The tree splits along residues. Its steps of width w >= C (C a power of two dividing L) only pair
// lanes of one class j = c (mod C), so each class's subtree is finished alone and the C class values
// are folded last by the steps w = C/2 .. 1. Inside class c the lanes are j = c + m C, m < M = L / C,
// and the steps pair m with m + w', w' = M/2 .. 1: the same shape again. A CTA takes one class of a
// tile of columns; its thread (tx, g) keeps the NL lanes m = g + m2 kColTy (m2 < NL), folds them in
// registers (steps w' >= kColTy), and the kColTy threads of a column fold in shared memory (w' < kColTy).
// With C > 1 the class values go to a [C, cols] buffer and a second kernel folds them.
//
// So C, the tile, the threads and NL only say where each step of the plan runs, never which step it is:
// they may follow the number of columns and the GPU freely. A warp reads two reduced indices of 256
// contiguous bytes each, so the loads stay whole 32-byte sectors however far apart the indices are.
// reduce_cols_kernel may widen the tile W times (a thread then holds W chunks, kColTx chunks apart, so
// each load instruction still covers 256 contiguous bytes and a warp's W loads of a reduced index
// W x 256): columns never meet, so the width is free as well.
constexpr int kColTx = 16;     // threads across a tile's columns, 16 bytes each
constexpr int kColTy = 16;     // threads across a class's lanes
constexpr int kColMaxNl = 8;   // lanes a thread keeps in registers (NL x W chunks a thread, W the width)
constexpr int kColMaxWide = 4;
constexpr int kColMaxC = 256;  // classes at most (the fold kernel's shared memory)
constexpr int kColFoldCols = 32;

// V elements of the columns [col0, col0 + V) at one reduced index (columns at or past `cols` read 0).
template <class Tx>
__device__ __forceinline__ uint4 load_cols(const Tx* p, int64_t col0, int64_t cols, bool vec) {
  constexpr int V = 16 / sizeof(Tx);
  if (vec && col0 + V <= cols) return *reinterpret_cast<const uint4*>(p);
  uint4 u = make_uint4(0, 0, 0, 0);
  Tx* e = reinterpret_cast<Tx*>(&u);
#pragma unroll
  for (int k = 0; k < V; ++k)
    if (col0 + k < cols) e[k] = p[k];
  return u;
}

// The steps w' = kColTy / 2 .. 1 across the kColTy threads of a column, in shared memory, from each
// thread's folded lanes in part[g][]. On return part[0][cc] is the class value of the tile's column cc,
// seen by every thread of the CTA.
template <int kTile>
__device__ __forceinline__ void cols_fold_threads(float (&part)[kColTy][kTile]) {
  for (int w = kColTy / 2; w >= 1; w /= 2) {
    __syncthreads();
    for (int idx = threadIdx.x; idx < w * kTile; idx += blockDim.x) {
      const int gg = idx / kTile, cc = idx % kTile;
      part[gg][cc] = __fadd_rn(part[gg][cc], part[gg + w][cc]);
    }
  }
  __syncthreads();
}

// The end of a tile's class: the steps w' = (NL / 2 .. 1) kColTy inside the thread (its lanes m2 and
// m2 + h), then cols_fold_threads.
template <int NL, int V>
__device__ __forceinline__ void cols_fold_lanes(float (&acc)[NL][V], float (&part)[kColTy][kColTx * V], int tx,
                                                int g) {
#pragma unroll
  for (int h = NL / 2; h >= 1; h /= 2)
#pragma unroll
    for (int m2 = 0; m2 < h; ++m2)
#pragma unroll
      for (int k = 0; k < V; ++k) acc[m2][k] = __fadd_rn(acc[m2][k], acc[m2 + h][k]);
#pragma unroll
  for (int k = 0; k < V; ++k) part[g][tx * V + k] = acc[0][k];
  cols_fold_threads<kColTx * V>(part);
}

// The same for a tile W chunks wide: chunk q of thread tx holds the tile's columns (q kColTx + tx) V + k.
template <int NL, int W, int V>
__device__ __forceinline__ void cols_fold_lanes(float (&acc)[NL][W][V], float (&part)[kColTy][kColTx * V * W],
                                                int tx, int g) {
#pragma unroll
  for (int h = NL / 2; h >= 1; h /= 2)
#pragma unroll
    for (int m2 = 0; m2 < h; ++m2)
#pragma unroll
      for (int q = 0; q < W; ++q)
#pragma unroll
        for (int k = 0; k < V; ++k) acc[m2][q][k] = __fadd_rn(acc[m2][q][k], acc[m2 + h][q][k]);
#pragma unroll
  for (int q = 0; q < W; ++q)
#pragma unroll
    for (int k = 0; k < V; ++k) part[g][(q * kColTx + tx) * V + k] = acc[0][q][k];
  cols_fold_threads<kColTx * V * W>(part);
}

// Tile `tile`'s class values: to partial [C, cols] (C > 1, folded later), or, for a single class, the output.
template <class To, int kTile>
__device__ __forceinline__ void cols_store(const float (&part0)[kTile], float* partial, To* out,
                                           const DimIndex& out_idx, int64_t cols, int64_t n, int64_t C, int64_t c,
                                           int64_t tile, bool mean) {
  for (int cc = threadIdx.x; cc < kTile; cc += blockDim.x) {
    const int64_t col = tile * kTile + cc;
    if (col >= cols) continue;
    float total = part0[cc];
    if (C > 1) {
      partial[c * cols + col] = total;
    } else {
      if (mean) total = __fdiv_rn(total, float(n));
      out[out_idx.offset(col)] = from_f32<To>(total);
    }
  }
}

// W: the tile's width in chunks a thread (kColTx V W columns a CTA). classes_fast: the grid is [C, tiles]
// instead of [tiles, C], so that CTAs launched together take one tile's classes (neighbouring reduced
// indices over a narrow band of columns) rather than one class's tiles (whole rows).
template <class Tx, class To, int NL, int W>
__global__ void __launch_bounds__(kColTx * kColTy, 2)  // two CTAs an SM: 16 warps with 8 loads each in flight
    reduce_cols_kernel(float* partial, To* out, DimIndex out_idx, const Tx* x, int64_t stride, int64_t cols, int64_t n,
                       int64_t L, bool vec, bool mean, bool classes_fast) {
  constexpr int V = 16 / sizeof(Tx);
  constexpr int kTile = kColTx * V * W;  // columns a CTA
  constexpr int kChunkCols = kColTx * V;  // columns between a thread's chunks
  __shared__ float part[kColTy][kTile];
  const int tx = threadIdx.x % kColTx, g = threadIdx.x / kColTx;
  const int64_t C = classes_fast ? gridDim.x : gridDim.y, c = classes_fast ? blockIdx.x : blockIdx.y;
  const int64_t tile = classes_fast ? blockIdx.y : blockIdx.x;
  const int64_t col0 = tile * kTile + tx * V;  // chunk q starts at column col0 + q kChunkCols
  const Tx* xc = x + col0;
  int64_t j[NL];  // this thread's lanes
#pragma unroll
  for (int m2 = 0; m2 < NL; ++m2) j[m2] = c + (g + int64_t(m2) * kColTy) * C;

  float acc[NL][W][V];
#pragma unroll
  for (int m2 = 0; m2 < NL; ++m2)
#pragma unroll
    for (int q = 0; q < W; ++q)
#pragma unroll
      for (int k = 0; k < V; ++k) acc[m2][q][k] = 0.0f;
  // Pass `base` holds element base + j of each lane j: every lane adds its elements in increasing i.
  for (int64_t base = 0; base < n; base += L) {
    uint4 raw[NL][W];
#pragma unroll
    for (int m2 = 0; m2 < NL; ++m2) {
      const int64_t i = base + j[m2];
#pragma unroll
      for (int q = 0; q < W; ++q)
        raw[m2][q] = i < n ? load_cols(xc + i * stride + q * kChunkCols, col0 + q * kChunkCols, cols, vec)
                           : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int m2 = 0; m2 < NL; ++m2) {
      if (base + j[m2] >= n) continue;
#pragma unroll
      for (int q = 0; q < W; ++q) {
        float v[V];
        unpack<Tx, V>(raw[m2][q], v);
#pragma unroll
        for (int k = 0; k < V; ++k) acc[m2][q][k] = __fadd_rn(acc[m2][q][k], v[k]);
      }
    }
  }
  cols_fold_lanes<NL, W, V>(acc, part, tx, g);
  cols_store<To, kTile>(part[0], partial, out, out_idx, cols, n, C, c, tile, mean);
}

// ---- the column kernel with its loads staged in shared memory (an A/B variant) ------------------------------
// reduce_cols_kernel keeps a thread's NL loads of a pass in registers, next to its NL V accumulators, so
// registers cap the bytes an SM has in flight (2 CTAs x 256 threads x 8 x 16 bytes = 64 KiB for bf16, NL =
// 8). This kernel copies `passes` passes of a thread's lanes at a time into shared memory (cp.async, 16
// bytes each: passes x NL x 4 KiB a CTA) and adds them from there once they have landed: the same elements,
// each lane's in increasing i, the same tree, so the same bits (OpsCudaSmall.SumColumns*).
// With `in_cluster` the grid's C classes of a tile are one thread-block cluster (sm_90, C <= 16): after the
// lanes' fold every CTA holds its class value of the tile's columns in shared memory, and CTA c finishes
// columns [c kTile / C, (c + 1) kTile / C) of the tile by the steps w = C/2 .. 1 over the C CTAs' values
// (distributed shared memory), exactly as reduce_cols_fold_kernel does: no partials, no second kernel.
constexpr int kColMaxCluster = 16;  // the largest cluster sm_90 runs (8 without the non-portable opt-in)

__device__ __forceinline__ void cols_cp_async16(void* smem_dst, const void* src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(uint32_t(__cvta_generic_to_shared(smem_dst))),
               "l"(src)
               : "memory");
#endif
}
// Waits for this thread's copies; they are then visible to this thread (no other thread reads them).
__device__ __forceinline__ void cols_cp_async_wait_all() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;\n" ::: "memory");
#endif
}

template <class Tx, class To, int NL>
__global__ void __launch_bounds__(kColTx * kColTy, 2)
    reduce_cols_staged_kernel(float* partial, To* out, DimIndex out_idx, const Tx* x, int64_t stride, int64_t cols,
                              int64_t n, int64_t L, bool vec, bool mean, int passes, bool in_cluster) {
  constexpr int V = 16 / sizeof(Tx);
  constexpr int kTile = kColTx * V;
  constexpr int kThreads = kColTx * kColTy;
  __shared__ float part[kColTy][kTile];
  extern __shared__ uint4 cols_stage[];  // slot q of thread t: cols_stage[q * kThreads + t], q = p NL + m2
  const int tx = threadIdx.x % kColTx, g = threadIdx.x / kColTx;
  const int64_t C = gridDim.y, c = blockIdx.y;
  const int64_t col0 = int64_t(blockIdx.x) * kTile + tx * V;
  const Tx* xc = x + col0;
  const bool whole = vec && col0 + V <= cols;  // this thread's chunks are whole aligned 16-byte vectors
  uint4* slots = cols_stage + threadIdx.x;
  int64_t j[NL];
#pragma unroll
  for (int m2 = 0; m2 < NL; ++m2) j[m2] = c + (g + int64_t(m2) * kColTy) * C;

  float acc[NL][V];
#pragma unroll
  for (int m2 = 0; m2 < NL; ++m2)
#pragma unroll
    for (int k = 0; k < V; ++k) acc[m2][k] = 0.0f;
  const int64_t batch = int64_t(passes) * L;
  for (int64_t base = 0; base < n; base += batch) {
    // Passes base / L .. + passes - 1 of this thread's lanes into its slots, all in flight at once.
    for (int p = 0; p < passes; ++p)
#pragma unroll
      for (int m2 = 0; m2 < NL; ++m2) {
        const int64_t i = base + p * L + j[m2];
        if (i >= n) continue;
        uint4* dst = slots + (p * NL + m2) * kThreads;
        if (whole)
          cols_cp_async16(dst, xc + i * stride);
        else
          *dst = load_cols(xc + i * stride, col0, cols, false);
      }
    cols_cp_async_wait_all();
    // Each lane's elements in increasing i: pass p before p + 1, batch before batch.
    for (int p = 0; p < passes; ++p)
#pragma unroll
      for (int m2 = 0; m2 < NL; ++m2) {
        if (base + p * L + j[m2] >= n) continue;
        float v[V];
        unpack<Tx, V>(slots[(p * NL + m2) * kThreads], v);
#pragma unroll
        for (int k = 0; k < V; ++k) acc[m2][k] = __fadd_rn(acc[m2][k], v[k]);
      }
  }
  cols_fold_lanes<NL, V>(acc, part, tx, g);
  if (!in_cluster) {
    cols_store<To, kTile>(part[0], partial, out, out_idx, cols, n, C, c, int64_t(blockIdx.x), mean);
    return;
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();  // every CTA's class values are in its shared memory
  const int per = kTile / int(C);
  if (int(threadIdx.x) < per) {
    const int cc = int(c) * per + int(threadIdx.x);
    float v[kColMaxCluster];
#pragma unroll
    for (int q = 0; q < kColMaxCluster; ++q) v[q] = q < C ? *cluster.map_shared_rank(&part[0][cc], q) : 0.0f;
    // The steps w = C/2 .. 1 (C a power of two): value[q] += value[q + w] for q < w. Spelled out with
    // compile-time w so that v stays in registers.
    auto step = [&](auto wc) {
      constexpr int w = decltype(wc)::value;
      if (w < C)
#pragma unroll
        for (int q = 0; q < w; ++q) v[q] = __fadd_rn(v[q], v[q + w]);
    };
    static_assert(kColMaxCluster == 16, "the steps below start at 16 / 2");
    step(std::integral_constant<int, 8>{});
    step(std::integral_constant<int, 4>{});
    step(std::integral_constant<int, 2>{});
    step(std::integral_constant<int, 1>{});
    const int64_t col = int64_t(blockIdx.x) * kTile + cc;
    if (col < cols) {
      float total = v[0];
      if (mean) total = __fdiv_rn(total, float(n));
      out[out_idx.offset(col)] = from_f32<To>(total);
    }
  }
  cluster.sync();  // no CTA exits while another reads its shared memory
#endif
}

// The last steps of the plan, w = C/2 .. 1, over the class values partial [C, cols].
template <class To>
__global__ void __launch_bounds__(256)
    reduce_cols_fold_kernel(To* out, DimIndex out_idx, const float* partial, int64_t cols, int C, int64_t n,
                            bool mean) {
  __shared__ float s[kColMaxC][kColFoldCols];
  const int64_t col0 = int64_t(blockIdx.x) * kColFoldCols;
  for (int idx = threadIdx.x; idx < C * kColFoldCols; idx += blockDim.x) {
    const int c = idx / kColFoldCols, l = idx % kColFoldCols;
    s[c][l] = col0 + l < cols ? partial[c * cols + col0 + l] : 0.0f;
  }
  for (int w = C / 2; w >= 1; w /= 2) {
    __syncthreads();
    for (int idx = threadIdx.x; idx < w * kColFoldCols; idx += blockDim.x) {
      const int c = idx / kColFoldCols, l = idx % kColFoldCols;
      s[c][l] = __fadd_rn(s[c][l], s[c + w][l]);
    }
  }
  __syncthreads();
  if (threadIdx.x < kColFoldCols && col0 + threadIdx.x < cols) {
    float total = s[0][threadIdx.x];
    if (mean) total = __fdiv_rn(total, float(n));
    out[out_idx.offset(col0 + threadIdx.x)] = from_f32<To>(total);
  }
}

// The same steps w = C/2 .. 1 for C <= 16 classes, one column a thread in registers: each thread loads its
// column's C values at once (coalesced across the threads) and folds them with the very additions of
// reduce_cols_fold_kernel, in the same order, with no shared memory and no barrier.
template <class To, int C>
__global__ void __launch_bounds__(256)
    reduce_cols_fold_reg_kernel(To* out, DimIndex out_idx, const float* partial, int64_t cols, int64_t n, bool mean) {
  const int64_t col = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= cols) return;
  float v[C];
#pragma unroll
  for (int c = 0; c < C; ++c) v[c] = partial[c * cols + col];
#pragma unroll
  for (int w = C / 2; w >= 1; w /= 2)
#pragma unroll
    for (int c = 0; c < w; ++c) v[c] = __fadd_rn(v[c], v[c + w]);
  float total = v[0];
  if (mean) total = __fdiv_rn(total, float(n));
  out[out_idx.offset(col)] = from_f32<To>(total);
}

// ---- the column sum fed by the copy engine (sm_90) ---------------------------------------------------------
// One CTA takes a tile of 128 bytes of columns (kCols = 128 / sizeof(Tx)) over the whole reduced dim and
// every class of the plan, with C = L / 16: class c holds the lanes j = c + m C, m < 16. The copy engine
// brings boxes of [16 m][8 classes][the tile's 128 bytes] through a view of x as [n / C][C][cols] (n a
// multiple of C): box (g, p) holds pass p (reduced indices c + (m + 16 p) C) of classes 8g .. 8g + 7.
// Consumer warp w takes class 8g + w of every group g; its lane (tx, ty) the 16 bytes tx of the lanes
// m = ty + 4k (k < 4), adding the passes in increasing p, so each lane sums its elements in increasing
// index. The class's steps w' = 8, 4 run inside the thread (lanes k and k + 2, then k and k + 1), w' = 2, 1
// across the warp (lanes 16 and 8 apart), and the class value goes to shared memory; once every class is
// there the CTA folds them by the steps w = C/2 .. 1 and writes the tile's outputs. The lanes, their order
// and the tree are reduce_cols_kernel's, so the bits are too, with no partials and no second kernel; a
// producer warp keeps up to `stages` boxes in flight, so the bytes an SM waits on do not depend on its
// registers. Reduced indices past n in the last pass arrive as zeros, which leave a lane's sum as it is
// (a sum that starts at +0 is never -0, and s + 0 = s for every other s).
constexpr int kTmaM = 16;                                 // lanes of a class: C = L / 16
constexpr int kTmaClasses = 8;                            // classes a box, one a consumer warp
constexpr int kTmaBoxBytes = kTmaM * kTmaClasses * 128;  // 16 KiB
constexpr int kTmaThreads = 32 * (kTmaClasses + 1);       // the consumer warps and the producer warp
constexpr int kTmaMaxStages = 4;

template <class Tx, class To>
__global__ void __launch_bounds__(kTmaThreads, 2)
    reduce_cols_tma_kernel(const __grid_constant__ CUtensorMap map, To* out, DimIndex out_idx, int64_t cols,
                           int64_t n, int C, int passes, int stages, bool mean) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int V = 16 / sizeof(Tx);
  constexpr int kCols = 128 / sizeof(Tx);
  extern __shared__ unsigned char tma_dyn[];
  // `stages` boxes (128-byte aligned for the copy engine), the C x kCols class values, then the barriers.
  unsigned char* boxes_at = tma_dyn + ((128 - (bulk_smem_addr(tma_dyn) & 127)) & 127);
  float* cls = reinterpret_cast<float*>(boxes_at + size_t(stages) * kTmaBoxBytes);
  uint64_t* full = reinterpret_cast<uint64_t*>(cls + size_t(C) * kCols);
  uint64_t* empty = full + stages;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int64_t col0 = int64_t(blockIdx.x) * kCols;
  const int boxes = C / kTmaClasses * passes;
  if (threadIdx.x == 0)
    for (int s = 0; s < stages; ++s) {
      bulk_bar_init_count(full + s, 1);
      bulk_bar_init_count(empty + s, kTmaClasses);
    }
  __syncthreads();
  // Box b = g passes + p sits in stage s = b % stages for its use b / stages (counters, not divisions).
  if (warp == kTmaClasses) {
    if (lane == 0)
      for (int b = 0, s = 0, use = 0, g = 0, p = 0; b < boxes; ++b) {
        if (use > 0) {  // every consumer warp has read the box this stage held in its previous use
          bulk_wait(empty + s, uint32_t((use - 1) & 1));
          bulk_after_reads();
        }
        bulk_expect(full + s, kTmaBoxBytes);
        bulk_tensor3d_g2s(boxes_at + size_t(s) * kTmaBoxBytes, &map, int(col0), g * kTmaClasses, p * kTmaM, full + s);
        if (++p == passes) p = 0, ++g;
        if (++s == stages) s = 0, ++use;
      }
  } else {
    const int tx = lane % 8, ty = lane / 8;
    float acc[4][V];
#pragma unroll
    for (int k = 0; k < 4; ++k)
#pragma unroll
      for (int j = 0; j < V; ++j) acc[k][j] = 0.0f;
    for (int b = 0, s = 0, use = 0, g = 0, p = 0; b < boxes; ++b) {
      bulk_wait(full + s, uint32_t(use & 1));
      const unsigned char* box = boxes_at + size_t(s) * kTmaBoxBytes;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        float v[V];
        unpack<Tx, V>(*reinterpret_cast<const uint4*>(box + ((ty + 4 * k) * kTmaClasses + warp) * 128 + tx * 16), v);
#pragma unroll
        for (int j = 0; j < V; ++j) acc[k][j] = __fadd_rn(acc[k][j], v[j]);
      }
      __syncwarp();
      if (lane == 0) bulk_arrive(empty + s);
      if (++s == stages) s = 0, ++use;
      if (++p < passes) continue;
      // Class 8 g + warp is summed: its steps w' = 8, 4, 2, 1.
#pragma unroll
      for (int j = 0; j < V; ++j) {
        acc[0][j] = __fadd_rn(acc[0][j], acc[2][j]);
        acc[1][j] = __fadd_rn(acc[1][j], acc[3][j]);
        acc[0][j] = __fadd_rn(acc[0][j], acc[1][j]);
        acc[0][j] = __fadd_rn(acc[0][j], __shfl_xor_sync(0xffffffffu, acc[0][j], 16));
        acc[0][j] = __fadd_rn(acc[0][j], __shfl_xor_sync(0xffffffffu, acc[0][j], 8));
      }
      if (ty == 0)
#pragma unroll
        for (int j = 0; j < V; ++j) cls[(g * kTmaClasses + warp) * kCols + tx * V + j] = acc[0][j];
#pragma unroll
      for (int k = 0; k < 4; ++k)
#pragma unroll
        for (int j = 0; j < V; ++j) acc[k][j] = 0.0f;
      p = 0;
      ++g;
    }
  }
  // Every class value is in shared memory: the steps w = C/2 .. 1, then the tile's outputs.
  for (int w = C / 2; w >= 1; w /= 2) {
    __syncthreads();
    for (int idx = int(threadIdx.x); idx < w * kCols; idx += int(blockDim.x)) {
      const int c = idx / kCols, j = idx % kCols;
      cls[c * kCols + j] = __fadd_rn(cls[c * kCols + j], cls[(c + w) * kCols + j]);
    }
  }
  __syncthreads();
  for (int j = int(threadIdx.x); j < kCols; j += int(blockDim.x)) {
    if (col0 + j >= cols) continue;
    float total = cls[j];
    if (mean) total = __fdiv_rn(total, float(n));
    out[out_idx.offset(col0 + j)] = from_f32<To>(total);
  }
#endif
}

// ---- argmax -----------------------------------------------------------------------------------------
// The winner under rows.cuh's strict total order (`beats`) is the same whatever the grouping, so a row
// may be cut into pieces at any boundaries: few rows are spread over many CTAs (a piece each, the
// pieces' winners folded by a second kernel), many rows take one CTA each and write the result at once.
// A winner travels between the kernels as one 64-bit key that orders exactly as `beats`: the value in
// the high half (NaN above all, -0 equal to +0), the reversed index in the low half.
constexpr int kArgmaxThreads = 256;
constexpr int kArgmaxUnroll = 4;  // chunks a thread has in flight

__device__ __forceinline__ uint64_t argmax_key(float v, int32_t i) {
  uint32_t hi = 0xFFFFFFFFu;
  if (v == v) {
    const uint32_t u = v == 0.0f ? 0u : __float_as_uint(v);
    hi = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  }
  return (uint64_t(hi) << 32) | uint64_t(0xFFFFFFFFu - uint32_t(i));
}

// piece: elements a CTA (a multiple of V); gridDim.x pieces a row, rows in y (grid-stride).
template <class Tx>
__global__ void __launch_bounds__(kArgmaxThreads)
    argmax_kernel(int32_t* out, DimIndex out_idx, unsigned long long* partial, const Tx* x, DevRows x_rows,
                  int64_t rows, int64_t n, int64_t piece) {
  constexpr int V = 16 / sizeof(Tx);
  __shared__ float sv[kArgmaxThreads / 32];
  __shared__ int32_t si[kArgmaxThreads / 32];
  const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
  const int64_t step = int64_t(kArgmaxThreads) * V;
  const int64_t lo = int64_t(blockIdx.x) * piece, hi = lo + piece < n ? lo + piece : n;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const Tx* xr = x + x_rows.offset(r);
    const bool vec = x_rows.elem_stride == 1 && aligned16_dev(xr);
    // A thread visits its elements in increasing index, so a later one wins only when strictly better:
    // greater, or NaN over a number. Starting from (-inf, its first index) makes an all -inf run pick
    // its first element too.
    float best = -INFINITY;
    int32_t bi = lo + t * V < hi ? int32_t(lo + t * V) : INT32_MAX;
    for (int64_t i0 = lo + t * V; i0 < hi; i0 += kArgmaxUnroll * step) {
      float v[kArgmaxUnroll][V];
#pragma unroll
      for (int u = 0; u < kArgmaxUnroll; ++u)
        if (i0 + u * step < hi) load_chunk<V>(xr, x_rows.elem_stride, n, i0 + u * step, vec, v[u]);
#pragma unroll
      for (int u = 0; u < kArgmaxUnroll; ++u) {
        const int64_t c0 = i0 + u * step;
        if (c0 >= hi) continue;
#pragma unroll
        for (int k = 0; k < V; ++k)
          if (c0 + k < n && (v[u][k] > best || (v[u][k] != v[u][k] && best == best))) {
            best = v[u][k];
            bi = int32_t(c0 + k);
          }
      }
    }
    for (int w = 16; w >= 1; w /= 2) {
      const float ov = __shfl_down_sync(0xffffffffu, best, w);
      const int32_t oi = __shfl_down_sync(0xffffffffu, bi, w);
      if (beats(ov, oi, best, bi)) {
        best = ov;
        bi = oi;
      }
    }
    if (lane == 0) {
      sv[warp] = best;
      si[warp] = bi;
    }
    __syncthreads();
    if (warp == 0) {
      constexpr int kWarps = kArgmaxThreads / 32;
      best = lane < kWarps ? sv[lane] : -INFINITY;
      bi = lane < kWarps ? si[lane] : INT32_MAX;
      for (int w = 16; w >= 1; w /= 2) {
        const float ov = __shfl_down_sync(0xffffffffu, best, w);
        const int32_t oi = __shfl_down_sync(0xffffffffu, bi, w);
        if (beats(ov, oi, best, bi)) {
          best = ov;
          bi = oi;
        }
      }
      if (lane == 0) {
        if (gridDim.x == 1)
          out[out_idx.offset(r)] = bi;
        else
          partial[r * gridDim.x + blockIdx.x] = argmax_key(best, bi);
      }
    }
    __syncthreads();  // sv/si are reused by the next row
  }
}

// One warp a row: the largest of the row's `pieces` keys.
__global__ void __launch_bounds__(256)
    argmax_fold_kernel(int32_t* out, DimIndex out_idx, const unsigned long long* partial, int64_t rows, int pieces) {
  const int lane = threadIdx.x & 31;
  const int64_t r = int64_t(blockIdx.x) * (blockDim.x / 32) + (threadIdx.x >> 5);
  if (r >= rows) return;
  unsigned long long best = 0;
  for (int p = lane; p < pieces; p += 32) {
    const unsigned long long k = partial[r * pieces + p];
    best = k > best ? k : best;
  }
  for (int w = 16; w >= 1; w /= 2) {
    const unsigned long long o = __shfl_down_sync(0xffffffffu, best, w);
    best = o > best ? o : best;
  }
  if (lane == 0) out[out_idx.offset(r)] = int32_t(0xFFFFFFFFu - uint32_t(best));
}

// An integer knob of the column kernels (docs/invariance.md), read at each call: `fallback` when unset or
// outside [lo, hi].
int cols_knob(const char* name, int fallback, int lo, int hi) {
  const char* e = std::getenv(name);
  if (e == nullptr || *e == '\0') return fallback;
  const int v = std::atoi(e);
  return v >= lo && v <= hi ? v : fallback;
}

// cudaFuncSetAttribute(NonPortableClusterSizeAllowed) once per (kernel, device): clusters of 16 CTAs.
void allow_cluster_16(const void* kernel, int device) {
  static std::mutex mu;
  static std::set<std::pair<const void*, int>> done;
  std::lock_guard<std::mutex> lock(mu);
  if (done.count({kernel, device})) return;
  BIK_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  done.insert({kernel, device});
}

std::atomic<uint64_t> g_cols_tma_launches{0};

// reduce_cols_tma_kernel for x [n, cols] when it applies: sm_90 with the kernel built for it, C = L / 16
// classes that divide n and fill whole boxes (C a multiple of 8), a 16-byte aligned view with a reduced
// stride of whole 16 bytes, and the class values and two stages in half an SM's shared memory (two CTAs an
// SM). BIK_COLS_TMA (read at each call): "0" -> never; "2" -> wherever it applies; otherwise also only when
// the tiles fill the SMs (fewer columns take the register kernel, whose classes spread over more CTAs).
// Returns false, having launched nothing, where it does not apply.
template <class Tx, class To>
bool reduce_columns_tma(const ReduceArgs& a, const DimIndex& out_idx, const Tx* x, int64_t stride, int64_t cols,
                        int64_t n, int64_t L, const DeviceInfo& dev, cudaStream_t st) {
  constexpr int64_t kCols = 128 / sizeof(Tx), es = sizeof(Tx);
  const int mode = cols_knob("BIK_COLS_TMA", 1, 0, 2);
  if (mode == 0 || dev.arch < 90 || n == 0) return false;
  const int64_t C = L / kTmaM;
  if (C < kTmaClasses || C % kTmaClasses != 0 || n % C != 0) return false;
  const int64_t tiles = (cols + kCols - 1) / kCols;
  if ((mode == 1 && tiles < dev.sms) || tiles >= (int64_t(1) << 31)) return false;
  if (!aligned16(x) || (stride * es) % 16 != 0 || stride * es * C >= (int64_t(1) << 40)) return false;
  auto kernel = reduce_cols_tma_kernel<Tx, To>;
  if (!kernel_built_for(reinterpret_cast<const void*>(kernel), dev.index, 90)) return false;
  const size_t cls_bytes = size_t(C * kCols) * sizeof(float);
  auto smem_for = [&](int stages) { return 128 + size_t(stages) * kTmaBoxBytes + cls_bytes + 16 * size_t(stages); };
  int stages = kTmaMaxStages;
  const size_t half_sm = 113 * 1024;  // two CTAs an SM (228 KiB, 1 KiB reserved for each CTA)
  while (stages > 2 && smem_for(stages) > half_sm) --stages;
  if (smem_for(stages) > half_sm) return false;
  CUtensorMap map{};
  const CUtensorMapDataType type = std::is_same_v<Tx, float>  ? CU_TENSOR_MAP_DATA_TYPE_FLOAT32
                                   : std::is_same_v<Tx, __half> ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16
                                                                : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  const cuuint64_t dims[3] = {cuuint64_t(cols), cuuint64_t(C), cuuint64_t(n / C)};
  const cuuint64_t strides[2] = {cuuint64_t(stride * es), cuuint64_t(stride * es * C)};
  const cuuint32_t box[3] = {cuuint32_t(kCols), cuuint32_t(kTmaClasses), cuuint32_t(kTmaM)};
  const cuuint32_t elem_strides[3] = {1, 1, 1};
  if (tensor_map_encoder("sum")(&map, type, 3, const_cast<Tx*>(x), dims, strides, box, elem_strides,
                                CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE,
                                CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS)
    return false;
  const int passes = int((n / C + kTmaM - 1) / kTmaM);
  allow_dynamic_smem(reinterpret_cast<const void*>(kernel), dev.index, int(half_sm));  // set once: the most any C takes
  kernel<<<unsigned(tiles), kTmaThreads, smem_for(stages), st>>>(map, a.out.ptr<To>(), out_idx, cols, n, int(C),
                                                                 passes, stages, bool(a.mean));
  BIK_CUDA_LAUNCH_CHECK();
  g_cols_tma_launches.fetch_add(1, std::memory_order_relaxed);
  return true;
}

// Sum / mean of x [n, cols] over n (reduced stride `stride`, columns contiguous) by the column kernels.
// The knobs below only move the plan's steps between threads, CTAs and kernels (see the column kernels'
// comment), never change one, so each is free for the bits (OpsCudaSmall.SumColumns* compares them):
//   BIK_COLS_NL (1, 2, 4, 8; default 8): the most lanes a thread keeps in registers, so the fewest
//     classes C = L / (16 NL); fewer lanes a thread: more classes, more CTAs, more partials.
//   BIK_COLS_CTAS_PER_SM (1..64; default 2): C then doubles while the grid has fewer CTAs than this
//     many an SM (narrow outputs: more CTAs along the reduced dim).
//   BIK_COLS_STAGE (0..4; default 0): 0 keeps reduce_cols_kernel (loads in registers); P > 0 takes
//     reduce_cols_staged_kernel, P passes of a thread's lanes in flight through shared memory (P NL 4 KiB
//     a CTA; never more passes than the reduced dim has).
//   BIK_COLS_CLUSTER (0, 1; default 0): 1 folds a tile's classes inside a cluster of C CTAs (sm_90,
//     1 < C <= 16) instead of writing partials for reduce_cols_fold_kernel: no cudaMallocAsync, no
//     second kernel. It runs the staged kernel (one pass when BIK_COLS_STAGE is 0); if the device cannot
//     place the cluster, the partials and the fold kernel.
//   BIK_COLS_WIDE (1, 2, 4; default 1): reduce_cols_kernel's tile W times wider (W x 256 contiguous bytes
//     of each reduced index a warp loads); NL is then at most 8 / W, so a thread keeps as many chunks
//     and the classes grow W-fold (W x the partials). Only with BIK_COLS_STAGE and BIK_COLS_CLUSTER at 0.
//   BIK_COLS_ORDER (0, 1; default 0): 1 launches reduce_cols_kernel on a [C, tiles] grid, so CTAs started
//     together take one tile's classes (neighbouring reduced indices, a narrow band of columns) instead
//     of one class's tiles (whole rows, every C-th reduced index).
template <class Tx, class To>
void reduce_columns(const ReduceArgs& a, const DimIndex& out_idx, int64_t stride, int64_t cols, int64_t n, Stream s) {
  constexpr int V = 16 / sizeof(Tx);
  constexpr int64_t kTile = kColTx * V;
  constexpr int kThreads = kColTx * kColTy;
  constexpr int kStaticSmem = int(kColTy * kTile * sizeof(float));  // part[][] of the column kernels
  if (cols == 0) return;
  cudaStream_t st = stream_of(s);
  const DeviceInfo& dev = use_device(a.x.device.index);
  const int64_t L = int64_t(row_threads(n, V)) * V;
  if (reduce_columns_tma<Tx, To>(a, out_idx, a.x.ptr<const Tx>(), stride, cols, n, L, dev, st)) return;
  int passes = cols_knob("BIK_COLS_STAGE", 0, 0, 4);
  const bool cluster_knob = cols_knob("BIK_COLS_CLUSTER", 0, 0, 1) == 1;
  // The tile's width in chunks a thread (a power of two; reduce_cols_kernel only).
  int wide = passes == 0 && !cluster_knob ? cols_knob("BIK_COLS_WIDE", 1, 1, kColMaxWide) : 1;
  if ((wide & (wide - 1)) != 0) wide = 1;
  const int64_t tiles = (cols + kTile * wide - 1) / (kTile * wide);
  // The fewest classes whose lanes fit the threads' registers (NL x W chunks a thread, NL a power of two),
  // then more while the grid is short of two CTAs an SM.
  int nl_max = cols_knob("BIK_COLS_NL", kColMaxNl, 1, kColMaxNl);
  while ((nl_max & (nl_max - 1)) != 0) nl_max &= nl_max - 1;
  if (nl_max > kColMaxNl / wide) nl_max = kColMaxNl / wide;
  const int per_sm = cols_knob("BIK_COLS_CTAS_PER_SM", 2, 1, 64);
  int64_t C = L / (kColTy * nl_max) > 1 ? L / (kColTy * nl_max) : 1;
  if (C > kColMaxC) C = kColMaxC;
  while (C < L / kColTy && C < kColMaxC && tiles * C < per_sm * int64_t(dev.sms)) C *= 2;
  const int nl = int(L / (C * kColTy));
  BIK_CHECK(tiles < (int64_t(1) << 31) && C <= kColMaxC && nl >= 1 && nl * wide <= kColMaxNl,
            "cuda reduce: unexpected column split");
  const Tx* x = a.x.ptr<const Tx>();
  const bool vec = aligned16(x) && (stride * int64_t(sizeof(Tx))) % 16 == 0;
  const bool cluster = cluster_knob && dev.arch >= 90 && C > 1 && C <= kColMaxCluster;
  if (cluster && passes == 0) passes = 1;
  const int64_t all_passes = (n + L - 1) / L;
  if (passes > all_passes) passes = int(all_passes);  // 0 for an empty reduced dim: reduce_cols_kernel
  const size_t slot_bytes = size_t(nl) * kThreads * 16;
  while (passes > 1 && kStaticSmem + passes * slot_bytes > size_t(dev.smem_optin)) passes /= 2;
  const dim3 grid{unsigned(tiles), unsigned(C), 1u};

  // The class values [C, cols] of the kernel that `go` launches, folded by reduce_cols_fold_kernel.
  auto with_partials = [&](auto&& go) {
    float* partial = nullptr;
    if (C > 1)
      BIK_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&partial), size_t(C * cols) * sizeof(float), st));
    go(partial);
    if (C > 1) {
      // Up to 16 classes: a column a thread in registers (BIK_COLS_FOLD_REG=0: the shared-memory fold).
      auto fold_reg = [&](auto kc) {
        constexpr int K = decltype(kc)::value;
        reduce_cols_fold_reg_kernel<To, K><<<grid_for((cols + 255) / 256), 256, 0, st>>>(a.out.ptr<To>(), out_idx,
                                                                                         partial, cols, n, a.mean);
      };
      const bool reg = env_switch_on("BIK_COLS_FOLD_REG");
      if (reg && C == 2) fold_reg(std::integral_constant<int, 2>{});
      else if (reg && C == 4) fold_reg(std::integral_constant<int, 4>{});
      else if (reg && C == 8) fold_reg(std::integral_constant<int, 8>{});
      else if (reg && C == 16) fold_reg(std::integral_constant<int, 16>{});
      else
        reduce_cols_fold_kernel<To><<<grid_for((cols + kColFoldCols - 1) / kColFoldCols), 256, 0, st>>>(
            a.out.ptr<To>(), out_idx, partial, cols, int(C), n, a.mean);
      BIK_CUDA_LAUNCH_CHECK();
      BIK_CUDA_CHECK(cudaFreeAsync(partial, st));
    }
  };
  if (passes == 0) {
    const bool classes_fast = cols_knob("BIK_COLS_ORDER", 0, 0, 1) == 1 && tiles <= 65535;
    const dim3 cols_grid = classes_fast ? dim3{unsigned(C), unsigned(tiles), 1u} : grid;
    auto launch = [&](auto wc) {
      constexpr int W = decltype(wc)::value;
      dispatch_ng<kColMaxNl / W>(nl, [&](auto ng) {
        constexpr int NL = decltype(ng)::value;
        with_partials([&](float* partial) {
          reduce_cols_kernel<Tx, To, NL, W><<<cols_grid, kThreads, 0, st>>>(
              partial, a.out.ptr<To>(), out_idx, x, stride, cols, n, L, vec, a.mean, classes_fast);
          BIK_CUDA_LAUNCH_CHECK();
        });
      });
    };
    if (wide == 4)
      launch(std::integral_constant<int, 4>{});
    else if (wide == 2)
      launch(std::integral_constant<int, 2>{});
    else
      launch(std::integral_constant<int, 1>{});
    return;
  }
  dispatch_ng<kColMaxNl>(nl, [&](auto ng) {
    constexpr int NL = decltype(ng)::value;
    auto kernel = reduce_cols_staged_kernel<Tx, To, NL>;
    allow_dynamic_smem(reinterpret_cast<const void*>(kernel), dev.index, dev.smem_optin - kStaticSmem);
    const size_t smem = size_t(passes) * slot_bytes;
    if (cluster) {
      if (C > 8) allow_cluster_16(reinterpret_cast<const void*>(kernel), dev.index);
      cudaLaunchConfig_t cfg = {};
      cfg.gridDim = grid;
      cfg.blockDim = dim3(kThreads, 1, 1);
      cfg.dynamicSmemBytes = smem;
      cfg.stream = st;
      cudaLaunchAttribute attr[1];
      attr[0].id = cudaLaunchAttributeClusterDimension;
      attr[0].val.clusterDim.x = 1;
      attr[0].val.clusterDim.y = unsigned(C);
      attr[0].val.clusterDim.z = 1;
      cfg.attrs = attr;
      cfg.numAttrs = 1;
      if (cudaLaunchKernelEx(&cfg, kernel, static_cast<float*>(nullptr), a.out.ptr<To>(), out_idx, x, stride, cols, n,
                             L, vec, bool(a.mean), passes, true) == cudaSuccess)
        return;
      (void)cudaGetLastError();  // no room for such a cluster: the partials below (the same bits)
    }
    with_partials([&](float* partial) {
      kernel<<<grid, kThreads, smem, st>>>(partial, a.out.ptr<To>(), out_idx, x, stride, cols, n, L, vec, a.mean,
                                           passes, false);
      BIK_CUDA_LAUNCH_CHECK();
    });
  });
}

}  // namespace

void reduce(const ReduceArgs& a, Stream s) {
  const TensorView& x = a.x;
  // Output element r is the r-th in row-major order over the kept dims, for x and out alike.
  DimIndex kept_x = dim_index(x.shape.data(), x.stride.data(), a.kept);
  DimIndex out_idx = dim_index(a.out.shape.data(), a.out.stride.data(), a.out.ndim);
  DimIndex red = collapse(x.shape.data() + a.kept, x.stride.data() + a.kept, x.ndim - a.kept);
  int64_t n = 1;
  for (int d = a.kept; d < x.ndim; ++d) n *= x.shape[d];
  int64_t rows = 1;
  for (int d = 0; d < a.kept; ++d) rows *= x.shape[d];

  dispatch_float(x.dtype, [&](auto xt) {
    using Tx = decltype(xt);
    constexpr int V = 16 / sizeof(Tx);
    auto launch = [&](auto ot) {
      using To = decltype(ot);
      // The reduced elements far apart and the outputs adjacent (the kept dims one contiguous run): the
      // column kernels, the same bits as the per-output kernel below. BIK_REDUCE_COLUMNS=0 forces the
      // per-output kernel (tests compare the two).
      const bool columns = env_switch_on("BIK_REDUCE_COLUMNS");
      const DimIndex kept_run = collapse(x.shape.data(), x.stride.data(), a.kept);
      if (columns && red.nd == 1 && red.stride[0] != 1 && kept_run.nd == 1 && kept_run.stride[0] == 1) {
        reduce_columns<Tx, To>(a, out_idx, red.stride[0], rows, n, s);
        return;
      }
      // Contiguous runs in the common layout: reduce_flat_kernel. BIK_REDUCE_FLAT=0 keeps them on
      // reduce_run_kernel below (the same bits: OpsCuda.SumFlatMatchesRunKernel).
      int64_t x_stride = 0;
      if (red.nd == 1 && red.stride[0] == 1 && reduce_flat_rows(x, kept_run, n, x_stride) &&
          env_switch_on("BIK_REDUCE_FLAT")) {
        if (rows == 0) return;
        const GroupShape gs = reduce_flat_shape(row_threads(n, V));
        const size_t smem = gs.W > 1 ? size_t(32 * gs.W) * V * sizeof(float) : 0;
        // One-warp rows of at least kRingMinBytes, more of them than one a warp of a full grid: the ring
        // kernel (sm_90; the same bits, OpsCuda.SumRingMatchesFlatKernel). BIK_SUM_RING=0 keeps
        // reduce_flat_kernel, =2 takes the ring for every row count (tests).
        const DeviceInfo& dev = use_device(x.device.index);
        const int ring_level = env_switch_level("BIK_SUM_RING");
        const int64_t row_bytes = n * int64_t(sizeof(Tx));
        const uint32_t stage = uint32_t((row_bytes + 127) / 128 * 128);
        const size_t ring_smem = kRingHead + size_t(kWarpRowsPerCta) * kRingStages * stage;
        // CTAs an SM: the launch bounds, or the shared memory (1 KiB of it reserved per CTA).
        int per_sm = int((int64_t(dev.smem_optin) + 1024) / int64_t(ring_smem + 1024));
        per_sm = per_sm < kRingCtasPerSm ? per_sm : kRingCtasPerSm;
        const int64_t ring_ctas = int64_t(dev.sms) * (per_sm > 0 ? per_sm : 1);
        const bool ring = dev.arch >= 90 && ring_level > 0 && gs.W == 1 && row_bytes >= kRingMinBytes &&
                          ring_smem <= size_t(dev.smem_optin) &&
                          (ring_level == 2 || rows > ring_ctas * kWarpRowsPerCta);
        dispatch_ng(gs.NG, [&](auto ng) {
          constexpr int NG = decltype(ng)::value;
          constexpr int U = kFlatChunks / NG;
          if (ring) {
            auto kernel = reduce_ring_kernel<Tx, To, NG, U>;
            allow_dynamic_smem(reinterpret_cast<const void*>(kernel), dev.index, dev.smem_optin);
            const int64_t want = (rows + kWarpRowsPerCta - 1) / kWarpRowsPerCta;
            kernel<<<unsigned(want < ring_ctas ? want : ring_ctas), 32 * kWarpRowsPerCta, ring_smem, stream_of(s)>>>(
                a.out.ptr<To>(), out_idx, x.ptr<const Tx>(), x_stride, rows, n, a.mean, stage);
            BIK_CUDA_LAUNCH_CHECK();
            return;
          }
          reduce_flat_kernel<Tx, To, NG, U><<<group_grid(rows, gs.W), gs.threads, smem, stream_of(s)>>>(
              a.out.ptr<To>(), out_idx, x.ptr<const Tx>(), x_stride, rows, n, a.mean, gs.W);
          BIK_CUDA_LAUNCH_CHECK();
        });
        return;
      }
      // Contiguous runs only: strided ones keep the per-output kernel below, as timed before.
      if (red.nd == 0 || (red.nd == 1 && red.stride[0] == 1)) {
        const GroupShape gs = group_shape(row_threads(n, V), kRunMaxNg);
        const int64_t stride = red.nd == 1 ? red.stride[0] : 1;
        dispatch_ng<kRunMaxNg>(gs.NG, [&](auto ng) {
          constexpr int NG = decltype(ng)::value;
          const size_t smem = gs.W > 1 ? size_t(32 * gs.W) * V * sizeof(float) : 0;
          reduce_run_kernel<Tx, To, NG><<<group_grid(rows, gs.W), gs.threads, smem, stream_of(s)>>>(
              a.out.ptr<To>(), out_idx, x.ptr<const Tx>(), kept_x, stride, rows, n, a.mean, gs.W);
          BIK_CUDA_LAUNCH_CHECK();
        });
        return;
      }
      int threads = row_threads(n, V);
      size_t smem = (size_t(threads) * V + 1) * sizeof(float);
      reduce_kernel<Tx, To><<<grid_for(rows), threads, smem, stream_of(s)>>>(
          a.out.ptr<To>(), out_idx, x.ptr<const Tx>(), kept_x, red, rows, n, a.mean);
      BIK_CUDA_LAUNCH_CHECK();
    };
    if (a.out.dtype == DType::F32) launch(float{});
    else launch(Tx{});
  });
}

void argmax(const TensorView& out, const TensorView& x, Stream s) {
  const int64_t n = x.size(-1), rows = x.numel() / n;
  BIK_CHECK(n <= INT32_MAX, "argmax: rows longer than 2^31 - 1 elements are not supported, got ", n);
  if (rows == 0) return;
  cudaStream_t st = stream_of(s);
  const DeviceInfo& dev = use_device(x.device.index);
  const DimIndex out_idx = dim_index(out.shape.data(), out.stride.data(), out.ndim);
  dispatch_float(x.dtype, [&](auto xt) {
    using Tx = decltype(xt);
    constexpr int V = 16 / sizeof(Tx);
    // Pieces a row: enough CTAs for four an SM, each piece at least two chunks a thread.
    const int64_t chunks = (n + V - 1) / V;
    const int64_t want = (4 * int64_t(dev.sms) + rows - 1) / rows;
    const int64_t most = (chunks + 2 * kArgmaxThreads - 1) / (2 * kArgmaxThreads);
    int64_t pieces = want < most ? want : most;
    pieces = pieces < 1 ? 1 : pieces > 65535 ? 65535 : pieces;
    const int64_t piece = (chunks + pieces - 1) / pieces * V;
    pieces = (n + piece - 1) / piece;
    unsigned long long* partial = nullptr;
    if (pieces > 1)
      BIK_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&partial),
                                     size_t(rows * pieces) * sizeof(unsigned long long), st));
    const dim3 grid(unsigned(pieces), unsigned(rows < 65535 ? rows : 65535));
    argmax_kernel<Tx><<<grid, kArgmaxThreads, 0, st>>>(out.ptr<int32_t>(), out_idx, partial, x.ptr<const Tx>(),
                                                       DevRows(x), rows, n, piece);
    BIK_CUDA_LAUNCH_CHECK();
    if (pieces > 1) {
      argmax_fold_kernel<<<grid_for((rows + 7) / 8), 256, 0, st>>>(out.ptr<int32_t>(), out_idx, partial, rows,
                                                                   int(pieces));
      BIK_CUDA_LAUNCH_CHECK();
      BIK_CUDA_CHECK(cudaFreeAsync(partial, st));
    }
  });
}

uint64_t cols_tma_launches() { return g_cols_tma_launches.load(std::memory_order_relaxed); }

}  // namespace bik::cuda

// ---- a batch-variant reduction (negative control) ---------------------------------------------------
#include "cuda/reduce_variants.h"

namespace bik::cuda {
namespace {

template <class Tx>
__global__ void split_sum_partial_kernel(float* partial, const Tx* x, int64_t xs0, int64_t xs1, int64_t n,
                                         int64_t piece) {
  __shared__ float smem[kMaxRowThreads + 1];
  const int64_t r = blockIdx.y, lo = int64_t(blockIdx.x) * piece;
  const int64_t hi = lo + piece < n ? lo + piece : n;
  float acc[1] = {0.0f};
  for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) acc[0] = __fadd_rn(acc[0], to_f32(x[r * xs0 + i * xs1]));
  const float total = block_tree<1>(acc, smem, AddOp{});
  if (threadIdx.x == 0) partial[r * gridDim.x + blockIdx.x] = total;
}

__global__ void split_sum_combine_kernel(float* out, int64_t os0, const float* partial, int64_t rows, int splits) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  float total = 0.0f;
  for (int s = 0; s < splits; ++s) total = __fadd_rn(total, partial[r * splits + s]);
  out[r * os0] = total;
}

}  // namespace

void sum_rows_split_by_m(const TensorView& out, const TensorView& x, Stream s) {
  BIK_CHECK(x.ndim == 2 && out.ndim == 1 && out.shape[0] == x.shape[0] && out.dtype == DType::F32 && x.device.is_cuda() && x.shape[0] <= 65535,
            "sum_rows_split_by_m: expects x [M <= 65535, n] and F32 out [M] on a GPU");
  const int64_t rows = x.shape[0], n = x.shape[1];
  if (rows == 0) return;
  int splits = int(264 / rows);
  splits = splits < 1 ? 1 : splits > 16 ? 16 : splits;
  const int64_t piece = (n + splits - 1) / splits;
  cudaStream_t st = stream_of(s);
  float* partial = nullptr;
  BIK_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&partial), size_t(rows * splits) * sizeof(float), st));
  dispatch_float(x.dtype, [&](auto xt) {
    using Tx = decltype(xt);
    split_sum_partial_kernel<Tx><<<dim3(unsigned(splits), unsigned(rows)), 256, 0, st>>>(
        partial, x.ptr<const Tx>(), x.stride[0], x.stride[1], n, piece);
    BIK_CUDA_LAUNCH_CHECK();
  });
  split_sum_combine_kernel<<<unsigned((rows + 127) / 128), 128, 0, st>>>(out.ptr<float>(), out.stride[0], partial,
                                                                          rows, splits);
  BIK_CUDA_LAUNCH_CHECK();
  BIK_CUDA_CHECK(cudaFreeAsync(partial, st));
}

}  // namespace bik::cuda

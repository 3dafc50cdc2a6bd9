// Sum / mean over any set of dims, and argmax over the last dim: one output element per row group
// (rows.cuh) when the reduced elements form one run, a column kernel when they lie far apart with the
// outputs adjacent, else one output element per CTA.
//
// sum/mean: the reduced dims are flattened in row-major order into one index i in [0, n), and the CTA
// tree of rows.cuh sums over i exactly as it sums a row of a norm. When the reduced dims collapse to
// one contiguous run the 16-byte path applies; otherwise each element's offset is computed from i.
// argmax is exact in any order (a strict total order on (value, index)), so only its result is fixed.
#include <cstdlib>

#include "core/backend.h"
#include "cuda/rows.cuh"

namespace bik::cuda {
namespace {

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

// ---- sum / mean with the reduced elements far apart and the outputs adjacent (e.g. over dim 0) ------------
// A thread that walked one output's elements would touch a 32-byte sector per element. Here the 32
// lanes of a warp read 32 adjacent outputs at each reduced index, and the order stays the plan's: with
// kColClasses classes (the warps of the CTA), class j computes what lane j of the plan holds once the
// halving tree has come down to width kColClasses, i.e. the tree over lanes j + m * kColClasses
// (m < M = L / kColClasses) that pairs m with m + M/2 first. Visiting m in bit-reversed order turns
// that tree into a left-to-right pairwise sum, kept as a stack of log2(M) partial sums. The classes
// then finish the tree (widths kColClasses / 2 .. 1) in shared memory.
constexpr int kColClasses = 16;   // warps a CTA
constexpr int kColOuts = 4;       // outputs a thread: a CTA covers 32 * kColOuts adjacent outputs
constexpr int kColMaxLevels = 10; // M <= 8192 lanes / kColClasses = 2^9
template <class Tx, class To>
__global__ void __launch_bounds__(32 * kColClasses)
    reduce_cols_kernel(To* out, DimIndex out_idx, const Tx* x, DimIndex kept_idx, int64_t stride, int64_t rows,
                       int64_t n, int64_t L, bool mean) {
  __shared__ float part[kColClasses][kColOuts][32];
  const int lane = threadIdx.x & 31, j = threadIdx.x >> 5;
  const int64_t M = L / kColClasses;
  int log_m = 0;
  while ((int64_t(1) << log_m) < M) ++log_m;
  constexpr int kPer = 32 * kColOuts;
  for (int64_t r0 = int64_t(blockIdx.x) * kPer; r0 < rows; r0 += int64_t(gridDim.x) * kPer) {
    const Tx* xr[kColOuts];
    bool live[kColOuts];
#pragma unroll
    for (int c = 0; c < kColOuts; ++c) {
      const int64_t r = r0 + c * 32 + lane;
      live[c] = r < rows;
      xr[c] = x + (live[c] ? kept_idx.offset(r) : 0);
    }
    float stack[kColOuts][kColMaxLevels];
#pragma unroll
    for (int c = 0; c < kColOuts; ++c)
#pragma unroll
      for (int l = 0; l < kColMaxLevels; ++l) stack[c][l] = 0.0f;
#pragma unroll 2
    for (int64_t k = 0; k < M; ++k) {
      const int64_t m = log_m == 0 ? 0 : int64_t(__brevll(uint64_t(k)) >> (64 - log_m));
      float v[kColOuts];
#pragma unroll
      for (int c = 0; c < kColOuts; ++c) v[c] = 0.0f;
      // Lane j + m * kColClasses: its elements in increasing index, from 0, as every row kernel sums a lane.
      for (int64_t i = j + m * kColClasses; i < n; i += L)
#pragma unroll
        for (int c = 0; c < kColOuts; ++c)
          if (live[c]) v[c] = __fadd_rn(v[c], to_f32(xr[c][i * stride]));
      // Push: the pairwise sum of the leaves so far, as a binary counter over k.
#pragma unroll
      for (int c = 0; c < kColOuts; ++c) {
        float a = v[c];
        bool carry = true;
#pragma unroll
        for (int l = 0; l < kColMaxLevels; ++l)
          if (carry) {
            if ((k >> l) & 1) {
              a = __fadd_rn(stack[c][l], a);
            } else {
              stack[c][l] = a;
              carry = false;
            }
          }
      }
    }
#pragma unroll
    for (int c = 0; c < kColOuts; ++c) {
      float top = 0.0f;
#pragma unroll
      for (int l = 0; l < kColMaxLevels; ++l)
        if (l == log_m) top = stack[c][l];
      part[j][c][lane] = top;
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < kPer; idx += blockDim.x) {
      float* col = &part[0][0][0] + idx;
      for (int h = kColClasses / 2; h >= 1; h /= 2)
        for (int q = 0; q < h; ++q) col[q * kPer] = __fadd_rn(col[q * kPer], col[(q + h) * kPer]);
      const int64_t r = r0 + idx;
      if (r < rows) {
        float total = col[0];
        if (mean) total = __fdiv_rn(total, float(n));
        out[out_idx.offset(r)] = from_f32<To>(total);
      }
    }
    __syncthreads();  // part is reused by the next tile
  }
}

// ---- argmax -----------------------------------------------------------------------------------------
template <class Tx>
__global__ void __launch_bounds__(kMaxRowThreads) argmax_kernel(int32_t* out, DimIndex out_idx, const Tx* x, DevRows x_rows, int64_t rows, int64_t n) {
  constexpr int V = 16 / sizeof(Tx);
  __shared__ float sv[32];
  __shared__ int64_t si[32];
  const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
  const int64_t L = int64_t(blockDim.x) * V;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const Tx* xr = x + x_rows.offset(r);
    const bool vec = x_rows.elem_stride == 1 && aligned16_dev(xr);
    float best = -INFINITY;
    int64_t bi = INT64_MAX;
    for (int64_t i0 = int64_t(t) * V; i0 < n; i0 += L) {
      float v[V];
      load_chunk<V>(xr, x_rows.elem_stride, n, i0, vec, v);
#pragma unroll
      for (int k = 0; k < V; ++k)
        if (i0 + k < n && beats(v[k], i0 + k, best, bi)) {
          best = v[k];
          bi = i0 + k;
        }
    }
    for (int w = 16; w >= 1; w /= 2) {
      float ov = __shfl_down_sync(0xffffffffu, best, w);
      int64_t oi = __shfl_down_sync(0xffffffffu, bi, w);
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
      const int nw = blockDim.x >> 5;
      best = lane < nw ? sv[lane] : -INFINITY;
      bi = lane < nw ? si[lane] : INT64_MAX;
      for (int w = 16; w >= 1; w /= 2) {
        float ov = __shfl_down_sync(0xffffffffu, best, w);
        int64_t oi = __shfl_down_sync(0xffffffffu, bi, w);
        if (beats(ov, oi, best, bi)) {
          best = ov;
          bi = oi;
        }
      }
      if (lane == 0) out[out_idx.offset(r)] = int32_t(bi);
    }
    __syncthreads();  // sv/si are reused by the next row
  }
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
      // Outputs adjacent in memory and their elements far apart: the column kernel (same bits). Opt-in
      // (BIK_REDUCE_COLUMNS=1) until it is faster than the per-output kernel: on the H100 it took 430 us
      // for a sum over dim 0 of 4096 x 16384 bf16 (13% of copy) and 408 us for 4096 x 1024, where a grid
      // of 8 CTAs leaves the GPU idle; the per-output kernel was not timed on these shapes.
      const char* columns_env = std::getenv("BIK_REDUCE_COLUMNS");
      const bool columns = columns_env != nullptr && columns_env[0] == '1';
      const bool kept_inner = kept_x.nd >= 1 && kept_x.stride[kept_x.nd - 1] == 1 && kept_x.shape[kept_x.nd - 1] >= 32;
      if (columns && red.nd == 1 && red.stride[0] != 1 && kept_inner) {
        const int64_t L = int64_t(row_threads(n, V)) * V;
        const int64_t tiles = (rows + 32 * kColOuts - 1) / (32 * kColOuts);
        reduce_cols_kernel<Tx, To><<<grid_for(tiles), 32 * kColClasses, 0, stream_of(s)>>>(
            a.out.ptr<To>(), out_idx, x.ptr<const Tx>(), kept_x, red.stride[0], rows, n, L, a.mean);
        BIK_CUDA_LAUNCH_CHECK();
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
  dispatch_float(x.dtype, [&](auto xt) {
    using Tx = decltype(xt);
    constexpr int V = 16 / sizeof(Tx);
    int threads = row_threads(n, V);
    argmax_kernel<Tx><<<grid_for(rows), threads, 0, stream_of(s)>>>(
        out.ptr<int32_t>(), dim_index(out.shape.data(), out.stride.data(), out.ndim), x.ptr<const Tx>(), DevRows(x),
        rows, n);
    BIK_CUDA_LAUNCH_CHECK();
  });
}

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

// Device-side helpers shared by the row kernels (norms, softmax, reductions, element-wise ops):
// row addressing for any strides, exact conversions between storage types and F32, 16-byte vector
// loads/stores, and the fixed reduction tree of a CTA.
//
// The invariance rule every kernel here follows: which lane owns an element, and the order in which
// a lane and then the lanes combine, depend only on the row length n and the dtype. The vector path
// (row contiguous and 16-byte aligned) and the scalar path (anything else) load the same elements
// into the same lanes in the same order, so strides and alignment never change a bit.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "bik/tensor.h"
#include "core/policy.h"
#include "core/rows.h"
#include "cuda/check.cuh"

namespace bik::cuda {

// ---- rows ----------------------------------------------------------------------------------------
// The leading dims of a [..., n] tensor, copied by value into a kernel's parameters.
struct DevRows {
  int lead = 0;
  int64_t shape[kMaxDims] = {};
  int64_t stride[kMaxDims] = {};
  int64_t elem_stride = 1;

  DevRows() = default;
  explicit DevRows(const TensorView& t) {
    Rows r(t);
    lead = r.lead;
    for (int d = 0; d < r.lead; ++d) {
      shape[d] = r.shape[d];
      stride[d] = r.stride[d];
    }
    elem_stride = r.elem_stride;
  }
  // Element offset of the first element of row r (row-major order over the leading dims), as rows.h.
  // The loop is unrolled over compile-time indices: a run-time index into a kernel parameter would
  // copy the whole struct to local memory.
  __device__ __forceinline__ int64_t offset(int64_t r) const {
    if (lead == 1) return r * stride[0];
    int64_t off = 0;
#pragma unroll
    for (int d = kMaxDims - 1; d >= 0; --d) {
      if (d < lead) {
        off += (r % shape[d]) * stride[d];
        r /= shape[d];
      }
    }
    return off;
  }
};

// Grid size for a grid-stride loop over rows: a row's result never depends on which CTA or which
// iteration computes it, so capping the grid is free of consequences for the bits.
inline unsigned grid_for(int64_t rows) { return unsigned(rows < (1 << 30) ? rows : (1 << 30)); }

inline cudaStream_t stream_of(Stream s) { return static_cast<cudaStream_t>(s.handle); }

// ---- conversions -----------------------------------------------------------------------------------
__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

// Round-to-nearest-even from F32: the one rounding of every op's output.
template <class T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// The value a float takes once stored as T and read back.
template <class T>
__device__ __forceinline__ float round_through(float v) { return to_f32(from_f32<T>(v)); }

// ---- chunks: V consecutive elements of a row -----------------------------------------------------
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }
__device__ __forceinline__ bool aligned16_dev(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Loads elements [i0, i0 + V) of a row into v (elements at or past n read as 0). `vec`: the row is
// contiguous and 16-byte aligned, so a whole chunk inside the row comes in 16-byte loads.
template <int V, class T>
__device__ __forceinline__ void load_chunk(const T* row, int64_t stride, int64_t n, int64_t i0, bool vec,
                                           float (&v)[V]) {
  static_assert((V * sizeof(T)) % 16 == 0, "a chunk is a whole number of 16-byte vectors");
  if (vec && i0 + V <= n) {
    constexpr int kPer = 16 / sizeof(T);
    const uint4* p = reinterpret_cast<const uint4*>(row + i0);
#pragma unroll
    for (int q = 0; q < V / kPer; ++q) {
      uint4 u = p[q];
      const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
      for (int k = 0; k < kPer; ++k) v[q * kPer + k] = to_f32(e[k]);
    }
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) v[k] = i0 + k < n ? to_f32(row[(i0 + k) * stride]) : 0.0f;
  }
}

// Stores elements [i0, min(i0 + V, n)) of a row, each rounded once to T.
template <int V, class T>
__device__ __forceinline__ void store_chunk(T* row, int64_t stride, int64_t n, int64_t i0, bool vec,
                                            const float (&v)[V]) {
  if (vec && i0 + V <= n) {
    constexpr int kPer = 16 / sizeof(T);
    uint4* p = reinterpret_cast<uint4*>(row + i0);
#pragma unroll
    for (int q = 0; q < V / kPer; ++q) {
      uint4 u;
      T* e = reinterpret_cast<T*>(&u);
#pragma unroll
      for (int k = 0; k < kPer; ++k) e[k] = from_f32<T>(v[q * kPer + k]);
      p[q] = u;
    }
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k)
      if (i0 + k < n) row[(i0 + k) * stride] = from_f32<T>(v[k]);
  }
}

// ---- the CTA reduction tree ------------------------------------------------------------------------
// A row of n elements is summed by L = T * V lanes (T threads, V the elements of one 16-byte vector of
// the input dtype): element i goes to lane i % L, and lane j = t * V + v lives in register v of thread
// t, so one thread's lanes are consecutive elements and load as one vector. Each lane combines its
// elements in increasing i. Lanes then combine by the halving tree of the plan in core/policy.h:
//   for (w = L / 2; w >= 1; w /= 2)  lane[j] = op(lane[j], lane[j + w])  for j < w.
// The high bits of j are the warp, then the lane within the warp, then v; so the tree runs across
// warps first (in shared memory), then across a warp (shuffles), then inside one thread.
struct AddOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return __fadd_rn(a, b); }
};
// Max that lets NaN win, so a row holding NaN normalises to NaN whatever the tree shape.
struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const {
    if (a != a) return a;
    if (b != b) return b;
    return a > b ? a : b;
  }
};

// The order of argmax and of sampling's scores: (a, ia) beats (b, ib) when a is NaN and b is not, else
// when a > b, else on equal values when ia < ib. A strict total order, so any reduction tree gives the
// same winner.
__device__ __forceinline__ bool beats(float a, int64_t ia, float b, int64_t ib) {
  const bool an = a != a, bn = b != b;
  if (an != bn) return an;
  if (!an && a != b) return a > b;
  return ia < ib;
}

// smem: at least T * V + 1 floats. Every thread of the CTA must call; all get the result.
template <int V, class Op>
__device__ __forceinline__ float block_tree(float (&acc)[V], float* smem, Op op) {
  const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
  const int T = blockDim.x, nwarps = T >> 5;
  if (nwarps > 1) {
#pragma unroll
    for (int v = 0; v < V; ++v) smem[v * T + t] = acc[v];
    __syncthreads();
    if (warp == 0) {
      // Steps w >= 32 * V: lane j pairs with j + w, held by warp j / (32 V) + w / (32 V). Each thread
      // of warp 0 folds its own column of the warps' values in place: no other thread touches it.
#pragma unroll
      for (int v = 0; v < V; ++v) {
        float* col = smem + v * T + lane;
        for (int w = nwarps / 2; w >= 1; w /= 2)
          for (int k = 0; k < w; ++k) col[k * 32] = op(col[k * 32], col[(k + w) * 32]);
        acc[v] = col[0];
      }
    }
  }
  if (warp == 0) {
    // Steps 16 V .. V: lanes of one warp (shfl_down hands thread l the lanes of thread l + w).
#pragma unroll
    for (int w = 16; w >= 1; w /= 2)
#pragma unroll
      for (int v = 0; v < V; ++v) acc[v] = op(acc[v], __shfl_down_sync(0xffffffffu, acc[v], w));
      // Steps V / 2 .. 1: inside thread 0.
#pragma unroll
    for (int w = V / 2; w >= 1; w /= 2)
#pragma unroll
      for (int v = 0; v < w; ++v) acc[v] = op(acc[v], acc[v + w]);
    if (lane == 0) smem[T * V] = acc[0];
  }
  __syncthreads();
  float r = smem[T * V];
  __syncthreads();  // the next reduction may overwrite smem
  return r;
}

// Threads per CTA for a row of n elements of `dtype`: the plan of core/policy.h (lanes = threads * V)
// is the single source of this number, so the kernels cannot drift from what the tests import.
inline int row_threads(int64_t n, int V) {
  const DType dt = V == 4 ? DType::F32 : DType::BF16;  // V is 16 bytes / element size
  const int lanes = policy::row_reduce_plan(policy::Target{policy::Backend::CUDA, 0}, dt, n).lanes;
  return lanes / V;
}

// Chunks a thread keeps in registers between the passes over a row; longer rows are read again (the
// values, hence the bits, are the same either way). Row kernels are built for up to kMaxRowThreads
// threads, which caps them at 64 registers a thread.
constexpr int kCachedChunks = 2;
constexpr int kMaxRowThreads = 1024;

// ---- dtype dispatch ----------------------------------------------------------------------------------
template <class F>
void dispatch_float(DType t, F&& f) {
  switch (t) {
    case DType::F32: f(float{}); break;
    case DType::F16: f(__half{}); break;
    case DType::BF16: f(__nv_bfloat16{}); break;
    default: throw Error("cuda: unexpected dtype " + std::string(dtype_name(t)));
  }
}

}  // namespace bik::cuda

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
#include <cstdlib>
#include <string>
#include <type_traits>
#include <utility>

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

// ---- row groups: the same tree with fewer threads -------------------------------------------------------
// The plan fixes the lanes L and the tree over them, not the threads. A row group of G = 32 W threads
// holds NG lane groups per thread: thread tg of the group owns lanes j = g * G * V + tg * V + v
// (g < NG, v < V), so L = NG * G * V, and pass p of a row is the chunks i0 = p * L + g * G * V + tg * V.
// The halving tree then runs over g inside the thread (the top bits of j), across the W warps in shared
// memory, across a warp by shuffles and inside the thread over v: the steps of the plan in the plan's
// order, whatever G and NG are. A group is one warp (W = 1, several rows per CTA, no barrier) or a whole
// CTA (W > 1, one row at a time).
struct RowGroup {
  int W, G, tg;
  int64_t first, step;  // this group's first row and the distance to its next one
};
__device__ __forceinline__ RowGroup row_group(int W) {
  RowGroup g;
  g.W = W;
  g.G = 32 * W;
  if (W == 1) {
    const int per = blockDim.x >> 5;
    g.tg = threadIdx.x & 31;
    g.first = int64_t(blockIdx.x) * per + (threadIdx.x >> 5);
    g.step = int64_t(gridDim.x) * per;
  } else {
    g.tg = threadIdx.x;
    g.first = blockIdx.x;
    g.step = gridDim.x;
  }
  return g;
}

__device__ __forceinline__ float shfl_xor(float v, int m) { return __shfl_xor_sync(0xffffffffu, v, m); }

// Folds acc[g][v] (lanes as above) to the row's result, handed to every thread of the group. smem:
// G * V values of T when W > 1 (unused otherwise). Op must be commutative to the bit (AddOp is: IEEE
// addition is, and NaN results are canonical): the shuffle steps are a butterfly, which gives every
// lane the tree's value only then.
template <int V, int NG, class T, class Op>
__device__ __forceinline__ T group_tree(T (&acc)[NG][V], T* smem, const RowGroup& rg, Op op) {
#pragma unroll
  for (int h = NG / 2; h >= 1; h /= 2)
#pragma unroll
    for (int g = 0; g < h; ++g)
#pragma unroll
      for (int v = 0; v < V; ++v) acc[g][v] = op(acc[g][v], acc[g + h][v]);
  if (rg.W > 1) {
    const int G = rg.G;
#pragma unroll
    for (int v = 0; v < V; ++v) smem[v * G + rg.tg] = acc[0][v];
    __syncthreads();
    // Column (lane l, v) of the W warps, folded by one thread in place: no other thread touches it.
    for (int c = rg.tg; c < 32 * V; c += G) {
      T* col = smem + (c >> 5) * G + (c & 31);
      for (int w = rg.W / 2; w >= 1; w /= 2)
        for (int k = 0; k < w; ++k) col[k * 32] = op(col[k * 32], col[(k + w) * 32]);
    }
    __syncthreads();
#pragma unroll
    for (int v = 0; v < V; ++v) acc[0][v] = smem[v * G + (rg.tg & 31)];
    __syncthreads();  // the next fold may overwrite smem
  }
#pragma unroll
  for (int m = 16; m >= 1; m /= 2)
#pragma unroll
    for (int v = 0; v < V; ++v) acc[0][v] = op(acc[0][v], shfl_xor(acc[0][v], m));
#pragma unroll
  for (int h = V / 2; h >= 1; h /= 2)
#pragma unroll
    for (int v = 0; v < h; ++v) acc[0][v] = op(acc[0][v], acc[0][v + h]);
  return acc[0][0];
}

// Raw chunks: V elements of T as one 16-byte value (elements at or past n read as 0), so a thread can
// keep a row in registers in its storage type.
template <class T>
__device__ __forceinline__ uint4 load_raw(const T* row, int64_t stride, int64_t n, int64_t i0, bool vec) {
  constexpr int V = 16 / sizeof(T);
  if (vec && i0 + V <= n) return *reinterpret_cast<const uint4*>(row + i0);
  uint4 u = make_uint4(0, 0, 0, 0);
  T* e = reinterpret_cast<T*>(&u);
#pragma unroll
  for (int k = 0; k < V; ++k)
    if (i0 + k < n) e[k] = row[(i0 + k) * stride];
  return u;
}
template <class T>
__device__ __forceinline__ void store_raw(T* row, int64_t stride, int64_t n, int64_t i0, bool vec, uint4 u) {
  constexpr int V = 16 / sizeof(T);
  if (vec && i0 + V <= n) {
    *reinterpret_cast<uint4*>(row + i0) = u;
    return;
  }
  const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
  for (int k = 0; k < V; ++k)
    if (i0 + k < n) row[(i0 + k) * stride] = e[k];
}
template <class T, int V>
__device__ __forceinline__ void unpack(uint4 u, float (&v)[V]) {
  static_assert(V * sizeof(T) == 16, "one chunk is one 16-byte value");
  const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
  for (int k = 0; k < V; ++k) v[k] = to_f32(e[k]);
}
template <class T, int V>
__device__ __forceinline__ uint4 pack(const float (&v)[V]) {
  uint4 u;
  T* e = reinterpret_cast<T*>(&u);
#pragma unroll
  for (int k = 0; k < V; ++k) e[k] = from_f32<T>(v[k]);
  return u;
}

// Launch shape of a row-group kernel: NG lane groups a thread, W warps a group, `threads` a CTA.
struct GroupShape {
  int NG, W, threads;
};
// rows per CTA for W = 1 groups; the most threads of a W > 1 group (the kernels' launch bounds)
constexpr int kWarpRowsPerCta = 4;
constexpr int kMaxGroupThreads = 256;
inline unsigned group_grid(int64_t rows, int W) {
  const int64_t ctas = W == 1 ? (rows + kWarpRowsPerCta - 1) / kWarpRowsPerCta : rows;
  return grid_for(ctas > 0 ? ctas : 1);
}
// BIK_ROW_MAX_NG (1, 2, 4 or 8) lowers the lane groups a thread keeps, so a benchmark can time the launch
// variants side by side: it moves lanes between threads, never a bit of a result.
inline int row_max_ng(int max_ng) {
  static const int env = [] {
    const char* e = std::getenv("BIK_ROW_MAX_NG");
    return e ? std::atoi(e) : 0;
  }();
  return (env == 1 || env == 2 || env == 4 || env == 8) && env < max_ng ? env : max_ng;
}
// plan_threads = lanes / V; max_ng: the most lane groups the kernel keeps in registers.
inline GroupShape group_shape(int plan_threads, int max_ng) {
  max_ng = row_max_ng(max_ng);
  // Row-group kernels are built for at most kMaxGroupThreads threads.
  while (max_ng < 8 && plan_threads > kMaxGroupThreads * max_ng) max_ng *= 2;
  GroupShape s;
  if (plan_threads <= 32 * max_ng) {
    s.W = 1;
    s.NG = plan_threads / 32;
  } else {
    s.NG = max_ng;
    s.W = plan_threads / (32 * max_ng);
  }
  s.threads = s.W == 1 ? 32 * kWarpRowsPerCta : 32 * s.W;
  return s;
}

// ---- the 16-byte path ------------------------------------------------------------------------------------
// The common layout, handled by kernels of their own (no per-element bounds, no scalar fallback, so a
// few hundred instructions instead of thousands): every row is contiguous, starts 16-byte aligned and
// is a whole number of 16-byte vectors, and row r starts at data + r * stride. They load the same
// elements into the same lanes as the general kernels, so which one runs never changes a bit.

// Whether row r of t (rows.h order) starts at data + r * stride for one stride, and that stride: the
// leading dims must collapse (dims of size 1 never move the address).
inline bool collapsed_row_stride(const TensorView& t, int64_t& stride) {
  const Rows r(t);
  bool have = false;
  int64_t expect = 0;
  stride = r.n;
  for (int d = r.lead - 1; d >= 0; --d) {
    if (r.shape[d] == 1) continue;
    if (!have) {
      stride = r.stride[d];
      have = true;
    } else if (r.stride[d] != expect) {
      return false;
    }
    expect = r.stride[d] * r.shape[d];
  }
  return true;
}
struct FlatRows {
  bool ok = false;
  int64_t stride = 0;  // elements from one row to the next
};
inline FlatRows flat_rows(const TensorView& t) {
  FlatRows f;
  const Rows r(t);
  const int64_t es = dtype_size(t.dtype);
  if (r.n <= 0 || (r.n > 1 && r.elem_stride != 1)) return f;
  if ((r.n * es) % 16 != 0 || !aligned16(t.data)) return f;
  f.ok = collapsed_row_stride(t, f.stride) && (f.stride * es) % 16 == 0;
  return f;
}
// A [n] parameter vector (weight, bias) on the 16-byte path.
inline bool flat_vector(const TensorView& t) {
  return (t.shape[0] <= 1 || t.stride[0] == 1) && aligned16(t.data) && (t.shape[0] * dtype_size(t.dtype)) % 16 == 0;
}

template <class T>
__device__ __forceinline__ uint4 ld16(const T* p) {
  return *reinterpret_cast<const uint4*>(p);
}
// ld16(p) when `pred`, else zeros, as one predicated load: written as `pred ? ld16(p) : 0` the compiler
// may turn each load into a branch next to its use, so a thread's loads would wait on one another; this
// way every load of a batch is issued before the first one is used. p need not be valid when !pred.
__device__ __forceinline__ uint4 ld16_if(const void* p, bool pred) {
  uint4 u;
  asm("{\n"
      "  .reg .pred q;\n"
      "  setp.ne.b32 q, %5, 0;\n"
      "  mov.b32 %0, 0;\n"
      "  mov.b32 %1, 0;\n"
      "  mov.b32 %2, 0;\n"
      "  mov.b32 %3, 0;\n"
      "  @q ld.global.v4.u32 {%0, %1, %2, %3}, [%4];\n"
      "}\n"
      : "=r"(u.x), "=r"(u.y), "=r"(u.z), "=r"(u.w)
      : "l"(p), "r"(int(pred)));
  return u;
}
template <class T>
__device__ __forceinline__ void st16(T* p, uint4 u) {
  *reinterpret_cast<uint4*>(p) = u;
}

// Launch shape of the 16-byte-path row kernels: one lane group a thread for rows of up to 2 * 64 V
// elements (one or two warps a row), else four (one to eight warps a row, at most kMaxGroupThreads
// threads). A function of the plan alone, hence of (n, dtype).
inline GroupShape flat_shape(int plan_threads) {
  GroupShape s;
  s.NG = plan_threads <= 64 ? 1 : 4;
  s.W = plan_threads / (32 * s.NG);
  s.threads = s.W == 1 ? 32 * kWarpRowsPerCta : 32 * s.W;
  return s;
}

// Calls f(std::integral_constant<int, NG>) for the lane groups of flat_shape.
template <class F>
void dispatch_flat_ng(int ng, F&& f) {
  if (ng == 1) return f(std::integral_constant<int, 1>{});
  if (ng == 4) return f(std::integral_constant<int, 4>{});
  throw Error("cuda: unexpected lane groups " + std::to_string(ng));
}

// Stores V floats, each rounded once to T, as whole 16-byte vectors (p 16-byte aligned).
template <class T, int V>
__device__ __forceinline__ void store_flat(T* p, const float (&v)[V]) {
  constexpr int kPer = 16 / sizeof(T);
  static_assert(V % kPer == 0, "a chunk is a whole number of 16-byte vectors");
#pragma unroll
  for (int q = 0; q < V / kPer; ++q) {
    uint4 u;
    T* e = reinterpret_cast<T*>(&u);
#pragma unroll
    for (int k = 0; k < kPer; ++k) e[k] = from_f32<T>(v[q * kPer + k]);
    st16(p + q * kPer, u);
  }
}

// Calls f(std::integral_constant<int, NG>) for NG in {1, 2, 4, 8} up to kMax.
template <int kMax = 8, class F>
void dispatch_ng(int ng, F&& f) {
  if (ng == 1) return f(std::integral_constant<int, 1>{});
  if constexpr (kMax >= 2) if (ng == 2) return f(std::integral_constant<int, 2>{});
  if constexpr (kMax >= 4) if (ng == 4) return f(std::integral_constant<int, 4>{});
  if constexpr (kMax >= 8) if (ng == 8) return f(std::integral_constant<int, 8>{});
  throw Error("cuda: unexpected lane groups " + std::to_string(ng));
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

// The A/B switches of kernel variants (docs/invariance.md): on unless the environment variable starts
// with '0'. Read at each call, so that tests and benchmarks can flip them between calls.
inline bool env_switch_on(const char* name) {
  const char* e = std::getenv(name);
  return e == nullptr || e[0] != '0';
}

// A switch with a third setting: 0 when the variable starts with '0', 2 when it starts with '2' (force a
// variant for every row count, so tests reach it at batch sizes where the default would not take it), 1
// otherwise (unset included: the default choice).
inline int env_switch_level(const char* name) {
  const char* e = std::getenv(name);
  if (e == nullptr) return 1;
  return e[0] == '0' ? 0 : e[0] == '2' ? 2 : 1;
}

// ---- bulk copies into shared memory (sm_90) ----------------------------------------------------------------
// A row copied global -> shared by the copy engine (cp.async.bulk), its arrival counted in bytes on an
// mbarrier, so a CTA or warp can fetch its next row while it reduces and writes the current one. Rules the
// callers keep: source address, destination address and size are multiples of 16 bytes; the barrier gets
// one arrive (bulk_expect, by the issuing thread) per phase plus the bytes of the copies of that phase;
// every phase is waited on before the kernel exits; a buffer is handed to the next copy only after every
// thread that reads it has read it (a barrier, then bulk_after_reads by the issuing thread).
__device__ __forceinline__ uint32_t bulk_smem_addr(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }
// A barrier that completes a phase after `count` arrives (and the bytes announced for it).
__device__ __forceinline__ void bulk_bar_init_count(uint64_t* bar, unsigned count) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bulk_smem_addr(bar)), "r"(count) : "memory");
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");  // visible to the copy engine
#endif
}
__device__ __forceinline__ void bulk_bar_init(uint64_t* bar) { bulk_bar_init_count(bar, 1); }
// The phase's one arrive, with the bytes its copies will bring.
__device__ __forceinline__ void bulk_expect(uint64_t* bar, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bulk_smem_addr(bar)), "r"(bytes) : "memory");
#endif
}
// Waits for the phase of parity `parity` to complete (the copies' bytes visible to the waiting thread).
__device__ __forceinline__ void bulk_wait(uint64_t* bar, uint32_t parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "{\n.reg .pred done;\n"
      "BULK_WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra BULK_WAIT;\n"
      "}\n" ::"r"(bulk_smem_addr(bar)),
      "r"(parity)
      : "memory");
#endif
}
__device__ __forceinline__ void bulk_copy_g2s(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                   bulk_smem_addr(dst)),
               "l"(src), "r"(bytes), "r"(bulk_smem_addr(bar))
               : "memory");
#endif
}
__device__ __forceinline__ void bulk_arrive(uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bulk_smem_addr(bar)) : "memory");
#endif
}
// The box at coordinates (c0, c1, c2) of a 3-D tensor map (innermost first) into dst, counted on bar.
__device__ __forceinline__ void bulk_tensor3d_g2s(void* dst, const void* map, int c0, int c1, int c2, uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], [%2];\n" ::
          "r"(bulk_smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bulk_smem_addr(bar)), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
#endif
}
// Orders this CTA's earlier generic-proxy accesses of shared memory before later copy-engine writes.
__device__ __forceinline__ void bulk_after_reads() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
// Copies `bytes` (a multiple of 16) from src to dst in pieces of at most kBulkPiece bytes, counted on bar.
constexpr uint32_t kBulkPiece = 16384;
__device__ __forceinline__ void bulk_copy_row(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  bulk_expect(bar, bytes);
  for (uint32_t off = 0; off < bytes; off += kBulkPiece)
    bulk_copy_g2s(static_cast<char*>(dst) + off, static_cast<const char*>(src) + off,
                  bytes - off < kBulkPiece ? bytes - off : kBulkPiece, bar);
}
// A 16-byte chunk from shared memory, zeros when !pred (the address need not be valid then).
__device__ __forceinline__ uint4 lds16_if(const void* p, bool pred) {
  return pred ? *reinterpret_cast<const uint4*>(p) : make_uint4(0, 0, 0, 0);
}
// A staged row's chunks this thread owns, from shared memory: pass p, lane group g at element
// p L + g GV + t0 (zeros past the row end n).
template <int P, int NG, class Tx>
__device__ __forceinline__ void lds_row_chunks(uint4 (&raw)[P][NG], const unsigned char* buf, int64_t L, int64_t GV,
                                               int64_t t0, int64_t n) {
#pragma unroll
  for (int p = 0; p < P; ++p)
#pragma unroll
    for (int g = 0; g < NG; ++g) {
      const int64_t i0 = p * L + g * GV + t0;
      raw[p][g] = lds16_if(buf + i0 * int64_t(sizeof(Tx)), i0 < n);
    }
}

// Launches `kernel` as clusters of `ctas` CTAs along x, one cluster a row (grid y: the rows, at most
// 65535; the kernels step over further rows). Returns false, with the launch error cleared, when the
// device cannot place such a cluster: the caller then runs its one-CTA-a-row kernel (the same bits).
template <class... KArgs, class... Args>
bool launch_row_clusters(void (*kernel)(KArgs...), int ctas, int threads, size_t smem, cudaStream_t stream,
                         int64_t rows, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(unsigned(ctas), unsigned(rows < 65535 ? rows : 65535), 1);
  cfg.blockDim = dim3(unsigned(threads), 1, 1);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = unsigned(ctas);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  if (cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...) == cudaSuccess) return true;
  (void)cudaGetLastError();
  return false;
}

}  // namespace bik::cuda

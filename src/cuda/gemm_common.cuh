// What every CUDA GEMM kernel shares: the problem in raw pointers and element strides, element
// conversions, and the epilogue that turns one finished F32 sum into an output element.
//
// The epilogue is part of the invariance contract: the bias is added once, after the whole K sum, and
// the result is rounded once to the output type. No kernel may fold the bias into the accumulator.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace bik::cuda::gemm_detail {

// out[b, m, n] = sum_k a[b, m, k] * w[b, n, k] (+ bias[n]). Strides are in elements; a batch stride of 0
// shares the operand across the batch. Offsets are 64-bit: out alone can exceed 2^31 elements.
struct Problem {
  const void* a = nullptr;
  const void* w = nullptr;
  void* out = nullptr;
  const void* bias = nullptr;  // null: no bias
  int batch = 1, m = 0, n = 0, k = 0;
  int64_t a_sb = 0, a_sm = 0, a_sk = 1;
  int64_t w_sb = 0, w_sn = 0, w_sk = 1;
  int64_t o_sb = 0, o_sm = 0, o_sn = 1;
  int64_t bias_s = 1;
  bool out_f32 = false;   // else out has the input dtype
  bool bias_f32 = false;  // else bias has the input dtype
  bool out_pairs = false;  // out[.., n] and out[.., n + 1] (n even) form one aligned 2-element access
  // Gated (sm_90 only, gemm_sm90.cuh): w is [gate rows; up rows], n = 2 d of them, and out [.., d] gets
  // silu_mul(round(gate sum), round(up sum)) per column (cuda/silu.cuh), no bias, out in the input dtype.
  bool glu = false;
};

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

template <typename T>
struct Pair;
template <>
struct Pair<__half> {
  using type = __half2;
  __device__ static __half2 make(float x, float y) { return __floats2half2_rn(x, y); }
};
template <>
struct Pair<__nv_bfloat16> {
  using type = __nv_bfloat162;
  __device__ static __nv_bfloat162 make(float x, float y) { return __floats2bfloat162_rn(x, y); }
};
template <>
struct Pair<float> {
  using type = float2;
  __device__ static float2 make(float x, float y) { return make_float2(x, y); }
};

template <typename T>
__device__ __forceinline__ float add_bias(const Problem& p, int n, float sum) {
  if (p.bias == nullptr) return sum;
  const float b = p.bias_f32 ? static_cast<const float*>(p.bias)[n * p.bias_s]
                             : to_f32(static_cast<const T*>(p.bias)[n * p.bias_s]);
  return sum + b;
}

template <typename O>
__device__ __forceinline__ void store_pair_as(const Problem& p, int64_t off, bool has1, float v0, float v1) {
  O* o = static_cast<O*>(p.out) + off;
  if (has1 && p.out_pairs) {
    *reinterpret_cast<typename Pair<O>::type*>(o) = Pair<O>::make(v0, v1);
  } else {
    o[0] = from_f32<O>(v0);
    if (has1) o[p.o_sn] = from_f32<O>(v1);
  }
}

// Writes the finished sums of out[b, m, n] and out[b, m, n + 1]; n is even. Anything outside [M, N]
// is dropped: tiles overhang the matrix and their overhang holds sums of zero-filled operands.
template <typename T>
__device__ __forceinline__ void store_pair(const Problem& p, int b, int m, int n, float v0, float v1) {
  if (m >= p.m || n >= p.n) return;
  const bool has1 = n + 1 < p.n;
  v0 = add_bias<T>(p, n, v0);
  if (has1) v1 = add_bias<T>(p, n + 1, v1);
  const int64_t off = int64_t(b) * p.o_sb + int64_t(m) * p.o_sm + int64_t(n) * p.o_sn;
  if (p.out_f32)
    store_pair_as<float>(p, off, has1, v0, v1);
  else
    store_pair_as<T>(p, off, has1, v0, v1);
}

// Writes one finished sum, out[b, m, n] (for kernels whose threads own scattered columns).
template <typename T>
__device__ __forceinline__ void store_one(const Problem& p, int b, int m, int n, float v) {
  if (m >= p.m || n >= p.n) return;
  v = add_bias<T>(p, n, v);
  const int64_t off = int64_t(b) * p.o_sb + int64_t(m) * p.o_sm + int64_t(n) * p.o_sn;
  if (p.out_f32)
    static_cast<float*>(p.out)[off] = v;
  else
    static_cast<T*>(p.out)[off] = from_f32<T>(v);
}

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Eight consecutive K elements of one operand row as 16 bytes, zero past `k_end`, read one by one.
// The slow path for operands whose layout forbids vector copies; it stores the same bytes the vector
// path would, so the MMA sees the same tile and the sums keep their bits.
template <typename T>
__device__ __forceinline__ uint4 load_8_scalar(const T* row, int64_t sk, int k0, int k_end) {
  union {
    uint4 v;
    T e[8];
  } u;
#pragma unroll
  for (int j = 0; j < 8; ++j) u.e[j] = k0 + j < k_end ? row[int64_t(k0 + j) * sk] : from_f32<T>(0.f);
  return u.v;
}

// Tiles in an order that keeps a band of `group` M-tiles sharing each weight tile while it is hot in
// L2; the order changes only which CTA computes which tile, never any sum.
struct TileOrder {
  int tiles_m, tiles_n, group;
  __host__ __device__ int count_per_batch() const { return tiles_m * tiles_n; }
  __device__ void coords(int t, int& b, int& tm, int& tn) const {
    const int per_batch = tiles_m * tiles_n;
    b = t / per_batch;
    t -= b * per_batch;
    const int band = group * tiles_n;
    const int first_m = (t / band) * group;
    const int rows = min(tiles_m - first_m, group);
    t -= (t / band) * band;
    tm = first_m + t % rows;
    tn = t / rows;
  }
};

}  // namespace bik::cuda::gemm_detail

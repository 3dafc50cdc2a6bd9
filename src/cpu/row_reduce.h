// Row primitives shared by the CPU kernels: loading a row of any dtype and stride as floats, storing
// floats back with one rounding, and reducing a row in exactly the order of policy::row_reduce_plan.
//
// The plan: element i of a row goes to lane i % 16; each lane adds its elements in increasing i; then
// the lanes combine by the halving tree (8, 4, 2, 1). The loops below spell that order out with a
// float[16] accumulator so the compiler can keep it in vector registers (two AVX2 or one AVX-512
// register) without changing a single bit: vector and scalar code perform the same additions.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "bik/dtype.h"
#include "bik/error.h"
#include "bik/tensor.h"
#include "core/policy.h"

namespace bik::cpu {

inline constexpr int kLanes = 16;

// The kernels hard-code 16 lanes for speed; this makes sure the policy still says so. Called once per
// op (the plan never depends on the row count, only on dtype and row length).
inline void check_row_plan(DType dtype, int64_t n) {
  int lanes = policy::row_reduce_plan({policy::Backend::CPU, 0}, dtype, n).lanes;
  BIK_CHECK(lanes == kLanes, "cpu row reduction: the policy asks for ", lanes, " lanes but the CPU kernels implement ",
            kLanes);
}

// Rows per parallel_for chunk: enough elements per chunk that handing it to a thread pays off. Rows
// are never split, so the chunking cannot change a result.
inline int64_t rows_grain(int64_t n) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(n, 1)); }

// Per-chunk scratch for one row of floats.
inline std::vector<float> row_buffer(int64_t n) { return std::vector<float>(static_cast<size_t>(n)); }

// Element offset of the element with row-major flat index `flat` among the first `nd` dims of t.
inline int64_t flat_offset(const TensorView& t, int nd, int64_t flat) {
  int64_t off = 0;
  for (int d = nd - 1; d >= 0; --d) {
    off += (flat % t.shape[d]) * t.stride[d];
    flat /= t.shape[d];
  }
  return off;
}

// ---- reductions over contiguous float rows ----------------------------------------------------------

// Adds term(i) for i in [0, n) into the lanes, i going to lane i % 16. A row fed in several calls must be
// cut at multiples of 16 so that every element keeps its lane.
template <class Term>
inline void lanes_add(float (&acc)[kLanes], int64_t n, Term&& term) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += term(i + l);
  for (int l = 0; i + l < n; ++l) acc[l] += term(i + l);
}

inline float lanes_total(float (&acc)[kLanes]) {
  for (int w = kLanes / 2; w >= 1; w /= 2)
    for (int j = 0; j < w; ++j) acc[j] += acc[j + w];
  return acc[0];
}

template <class Term>
inline float row_reduce_sum(int64_t n, Term&& term) {
  float acc[kLanes] = {};
  lanes_add(acc, n, term);
  return lanes_total(acc);
}

inline float row_sum(const float* v, int64_t n) {
  return row_reduce_sum(n, [v](int64_t i) { return v[i]; });
}

// Sum of v[i]^2 (rms_norm). A plain multiply then add: -ffp-contract=off keeps it unfused everywhere.
inline float row_sum_squares(const float* v, int64_t n) {
  return row_reduce_sum(n, [v](int64_t i) { return v[i] * v[i]; });
}

// Sum of (v[i] - mean)^2 (layer_norm's second pass).
inline float row_sum_squared_dev(const float* v, int64_t n, float mean) {
  return row_reduce_sum(n, [v, mean](int64_t i) {
    float d = v[i] - mean;
    return d * d;
  });
}

// Sum of exp(v[i] - max); also stores each term in e[i] when e is not null (e may alias v).
inline float row_sum_exp(const float* v, int64_t n, float max, float* e) {
  if (e)
    return row_reduce_sum(n, [v, max, e](int64_t i) { return e[i] = std::exp(v[i] - max); });
  return row_reduce_sum(n, [v, max](int64_t i) { return std::exp(v[i] - max); });
}

// Max of a row in the same lane layout (max is exact, but the fixed layout also fixes which zero wins
// between -0 and +0). NaNs are skipped: a NaN anywhere already poisons the softmax sum that follows.
inline float row_max(const float* v, int64_t n) {
  float acc[kLanes];
  for (int l = 0; l < kLanes; ++l) acc[l] = -INFINITY;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] = v[i + l] > acc[l] ? v[i + l] : acc[l];
  for (int l = 0; i + l < n; ++l) acc[l] = v[i + l] > acc[l] ? v[i + l] : acc[l];
  for (int w = kLanes / 2; w >= 1; w /= 2)
    for (int j = 0; j < w; ++j) acc[j] = acc[j + w] > acc[j] ? acc[j + w] : acc[j];
  return acc[0];
}

// ---- loading and storing rows -------------------------------------------------------------------------

inline float widen(float x) { return x; }
inline float widen(f16 x) { return to_float(x); }
inline float widen(bf16 x) { return to_float(x); }

template <class T>
inline T narrow(float x);
template <>
inline float narrow<float>(float x) { return x; }
template <>
inline f16 narrow<f16>(float x) { return to_f16(x); }
template <>
inline bf16 narrow<bf16>(float x) { return to_bf16(x); }

// Calls fn(T*) with the pointer cast to the storage type of a floating dtype.
template <class Fn>
inline decltype(auto) with_float_type(DType dt, const void* p, Fn&& fn) {
  switch (dt) {
    case DType::F16: return fn(static_cast<const f16*>(p));
    case DType::BF16: return fn(static_cast<const bf16*>(p));
    default: return fn(static_cast<const float*>(p));
  }
}

// dst[i] = float(src[i * stride]) for i < n. The stride-1 loop is the same conversion, only vectorisable.
template <class T>
inline void load_row(float* dst, const T* src, int64_t n, int64_t stride) {
  if (stride == 1)
    for (int64_t i = 0; i < n; ++i) dst[i] = widen(src[i]);
  else
    for (int64_t i = 0; i < n; ++i) dst[i] = widen(src[i * stride]);
}
inline void load_row(float* dst, const void* src, DType dt, int64_t n, int64_t stride) {
  with_float_type(dt, src, [&](auto* p) { load_row(dst, p, n, stride); });
}

// dst[i * stride] = round(src[i]): the single rounding of every output.
template <class T>
inline void store_row(T* dst, int64_t n, int64_t stride, const float* src) {
  if (stride == 1)
    for (int64_t i = 0; i < n; ++i) dst[i] = narrow<T>(src[i]);
  else
    for (int64_t i = 0; i < n; ++i) dst[i * stride] = narrow<T>(src[i]);
}
inline void store_row(void* dst, DType dt, int64_t n, int64_t stride, const float* src) {
  with_float_type(dt, dst, [&](auto* p) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(p)>>;
    store_row(const_cast<T*>(p), n, stride, src);
  });
}

// v[i] := round(v[i]) through dtype dt, as storing and reloading it would.
inline void round_row(float* v, int64_t n, DType dt) {
  with_float_type(dt, v, [&](auto* p) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(p)>>;
    for (int64_t i = 0; i < n; ++i) v[i] = widen(narrow<T>(v[i]));
  });
}

// Address of element `offset` (in elements) of a buffer of dtype dt.
inline void* elem_ptr(void* base, DType dt, int64_t offset) {
  return static_cast<char*>(base) + offset * dtype_size(dt);
}

// A row as contiguous floats: the row itself when it is contiguous f32, else a copy widened into scratch.
// Both give the same floats, so everything computed from them is the same bits.
inline const float* row_floats(const void* base, DType dt, int64_t offset, int64_t n, int64_t stride,
                               float* scratch) {
  const void* p = elem_ptr(const_cast<void*>(base), dt, offset);
  if (dt == DType::F32 && stride == 1) return static_cast<const float*>(p);
  load_row(scratch, p, dt, n, stride);
  return scratch;
}

// Where a kernel writes a row of float results: straight into the output when it is contiguous f32,
// else into scratch, rounded and scattered by finish().
struct RowOut {
  float* data;
  void* dst;
  DType dt;
  int64_t n, stride;
  RowOut(void* base, DType dtype, int64_t offset, int64_t len, int64_t elem_stride, float* scratch)
      : dst(elem_ptr(base, dtype, offset)), dt(dtype), n(len), stride(elem_stride) {
    data = dt == DType::F32 && stride == 1 ? static_cast<float*>(dst) : scratch;
  }
  void finish() const {
    if (data != dst) store_row(dst, dt, n, stride, data);
  }
};

}  // namespace bik::cpu

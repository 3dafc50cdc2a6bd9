// RMSNorm (optionally fused with the residual add) and LayerNorm: one row group (rows.cuh) per row.
//
// Each row is summed by the plan's tree (rows.cuh, group_tree), whose shape depends on n and the dtype
// only. A thread keeps its chunks of the row in registers between the statistics pass and the output
// pass when the row has at most 2 L elements; longer rows are read again. Both give the same bits.
// Rows in the common layouts with one dtype for x, residual and output (parameters in that dtype or in
// F32) run the short kernels of the 16-byte path (below); any other layout or dtype mix runs the general
// kernels, same lanes, same order, same bits.
#include <initializer_list>
#include <optional>
#include <type_traits>

#include "core/backend.h"
#include "cuda/head_math.cuh"
#include "cuda/launch.cuh"
#include "cuda/rows.cuh"

namespace bik::cuda {
namespace {

// Everything a row kernel needs to address a [..., n] tensor (any strides).
template <class T>
struct RowArg {
  T* data = nullptr;
  DevRows rows;
  __device__ __forceinline__ T* row(int64_t r) const { return data + rows.offset(r); }
  // The 16-byte path needs a contiguous, aligned row; decided per row, never changing the bits.
  __device__ __forceinline__ bool vec(const T* p) const { return rows.elem_stride == 1 && aligned16_dev(p); }
};
template <class T>
RowArg<T> row_arg(const TensorView& t) {
  RowArg<T> a;
  a.data = static_cast<T*>(t.data);
  a.rows = DevRows(t);
  return a;
}

// A per-column parameter vector [n] (weight, bias) in x's dtype or F32, chosen at run time: the branch
// is uniform over the CTA, and it saves a kernel instantiation per mix of parameter dtypes.
struct ParamVec {
  const void* data = nullptr;
  int64_t stride = 1;
  bool f32 = true;
  __host__ __device__ explicit operator bool() const { return data != nullptr; }
};
ParamVec param_vec(const TensorView& t) { return ParamVec{t.data, t.stride[0], t.dtype == DType::F32}; }
ParamVec param_vec(const std::optional<TensorView>& t) { return t ? param_vec(*t) : ParamVec{}; }

template <int V, class Tx>
__device__ __forceinline__ void load_param(const ParamVec& p, int64_t n, int64_t i0, float (&v)[V]) {
  const bool vec = p.stride == 1 && aligned16_dev(p.data);
  if (p.f32)
    load_chunk<V>(static_cast<const float*>(p.data), p.stride, n, i0, vec, v);
  else
    load_chunk<V>(static_cast<const Tx*>(p.data), p.stride, n, i0, vec, v);
}

// ---- RMSNorm ----------------------------------------------------------------------------------------
// out = h * (1 / sqrt(mean(h^2) + eps)) * w, with h = x, or h = round(x + residual) written back to
// the residual first. Each lane sums h*h with one fused multiply-add per element. A row group
// (rows.cuh) per row; rows of up to 2 L elements stay in registers, in x's dtype, between the passes.
template <class Tx, class To, int NG, bool has_res>
__global__ void __launch_bounds__(256) rms_norm_kernel(RowArg<To> out, RowArg<const Tx> x, RowArg<Tx> res, ParamVec w,
                                                       int64_t rows, int64_t n, float eps, int W) {
  pdl_wait();
  constexpr int V = 16 / sizeof(Tx);
  extern __shared__ float smem[];
  const RowGroup rg = row_group(W);
  const int64_t GV = int64_t(rg.G) * V, L = GV * NG, t0 = int64_t(rg.tg) * V;
  const bool cached = n <= 2 * L;

  for (int64_t r = rg.first; r < rows; r += rg.step) {
    const Tx* xr = x.row(r);
    Tx* rr = has_res ? res.row(r) : nullptr;
    const bool x_vec = x.vec(xr), r_vec = has_res && res.vec(rr);
    const int64_t xs = x.rows.elem_stride, rs = res.rows.elem_stride;

    float acc[NG][V];
#pragma unroll
    for (int g = 0; g < NG; ++g)
#pragma unroll
      for (int k = 0; k < V; ++k) acc[g][k] = 0.0f;
    // h of chunk (g, i0) from raw x and residual chunks; the rounded sum goes back to the residual.
    auto make_h = [&](int64_t i0, uint4 xraw, uint4 rraw) {
      if constexpr (!has_res) return xraw;
      float a[V], b[V];
      unpack<Tx, V>(xraw, a);
      unpack<Tx, V>(rraw, b);
#pragma unroll
      for (int k = 0; k < V; ++k) a[k] = __fadd_rn(a[k], b[k]);
      const uint4 h = pack<Tx, V>(a);
      store_raw(rr, rs, n, i0, r_vec, h);
      return h;
    };
    auto add_sq = [&](int g, int64_t i0, uint4 h) {
      float hv[V];
      unpack<Tx, V>(h, hv);
#pragma unroll
      for (int k = 0; k < V; ++k)
        if (i0 + k < n) acc[g][k] = __fmaf_rn(hv[k], hv[k], acc[g][k]);
    };

    uint4 hc[2][NG];
    if (cached) {
      // All loads of the row first, so they are in flight together.
      uint4 rc[2][NG];
#pragma unroll
      for (int p = 0; p < 2; ++p)
#pragma unroll
        for (int g = 0; g < NG; ++g) {
          const int64_t i0 = p * L + g * GV + t0;
          hc[p][g] = load_raw(xr, xs, n, i0, x_vec);
          if (has_res) rc[p][g] = load_raw(static_cast<const Tx*>(rr), rs, n, i0, r_vec);
        }
#pragma unroll
      for (int p = 0; p < 2; ++p)
#pragma unroll
        for (int g = 0; g < NG; ++g) {
          const int64_t i0 = p * L + g * GV + t0;
          if (i0 < n) {
            hc[p][g] = make_h(i0, hc[p][g], has_res ? rc[p][g] : hc[p][g]);
            add_sq(g, i0, hc[p][g]);
          }
        }
    } else {
      for (int64_t base = t0; base < n; base += L) {
        uint4 xv[NG], rv[NG];
#pragma unroll
        for (int g = 0; g < NG; ++g) {
          xv[g] = load_raw(xr, xs, n, base + g * GV, x_vec);
          if (has_res) rv[g] = load_raw(static_cast<const Tx*>(rr), rs, n, base + g * GV, r_vec);
        }
#pragma unroll
        for (int g = 0; g < NG; ++g)
          if (base + g * GV < n) add_sq(g, base + g * GV, make_h(base + g * GV, xv[g], has_res ? rv[g] : xv[g]));
      }
    }
    const float ss = group_tree<V, NG>(acc, smem, rg, AddOp{});
    const float rstd = rms_rstd(ss, float(n), eps);

    To* orow = out.row(r);
    const bool o_vec = out.vec(orow);
    auto emit = [&](int64_t i0, uint4 h) {
      float hv[V], wv[V], o[V];
      unpack<Tx, V>(h, hv);
      load_param<V, Tx>(w, n, i0, wv);
#pragma unroll
      for (int k = 0; k < V; ++k) o[k] = __fmul_rn(__fmul_rn(hv[k], rstd), wv[k]);
      store_chunk<V>(orow, out.rows.elem_stride, n, i0, o_vec, o);
    };
    if (cached) {
#pragma unroll
      for (int p = 0; p < 2; ++p)
#pragma unroll
        for (int g = 0; g < NG; ++g) {
          const int64_t i0 = p * L + g * GV + t0;
          if (i0 < n) emit(i0, hc[p][g]);
        }
    } else {
      // The residual now holds h (this thread wrote exactly these elements above).
      const Tx* hr = has_res ? static_cast<const Tx*>(rr) : xr;
      const int64_t hs = has_res ? rs : xs;
      const bool h_vec = has_res ? r_vec : x_vec;
      for (int64_t base = t0; base < n; base += L) {
        uint4 hv[NG];
#pragma unroll
        for (int g = 0; g < NG; ++g) hv[g] = load_raw(hr, hs, n, base + g * GV, h_vec);
#pragma unroll
        for (int g = 0; g < NG; ++g)
          if (base + g * GV < n) emit(base + g * GV, hv[g]);
      }
    }
  }
}

// ---- LayerNorm --------------------------------------------------------------------------------------
// mean = sum(x) / n; var = sum((x - mean)^2) / n (two passes, biased); out = (x - mean) * rstd * w + b.
template <class Tx, class To, int NG>
__global__ void __launch_bounds__(256) layer_norm_kernel(RowArg<To> out, RowArg<const Tx> x, ParamVec w, ParamVec b,
                                                         RowArg<float> mean_out, RowArg<float> rstd_out, int64_t rows,
                                                         int64_t n, float eps, int W) {
  pdl_wait();
  constexpr int V = 16 / sizeof(Tx);
  extern __shared__ float smem[];
  const RowGroup rg = row_group(W);
  const int64_t GV = int64_t(rg.G) * V, L = GV * NG, t0 = int64_t(rg.tg) * V;
  const bool cached = n <= 2 * L;

  for (int64_t r = rg.first; r < rows; r += rg.step) {
    const Tx* xr = x.row(r);
    const bool x_vec = x.vec(xr);
    const int64_t xs = x.rows.elem_stride;
    uint4 xc[2][NG];
    if (cached) {
#pragma unroll
      for (int p = 0; p < 2; ++p)
#pragma unroll
        for (int g = 0; g < NG; ++g) xc[p][g] = load_raw(xr, xs, n, p * L + g * GV + t0, x_vec);
    }
    // Calls f(g, i0, x) for every chunk of this thread, from registers or from memory.
    auto each = [&](auto&& f) {
      if (cached) {
#pragma unroll
        for (int p = 0; p < 2; ++p)
#pragma unroll
          for (int g = 0; g < NG; ++g) {
            const int64_t i0 = p * L + g * GV + t0;
            if (i0 < n) f(g, i0, xc[p][g]);
          }
      } else {
        for (int64_t base = t0; base < n; base += L) {
          uint4 xv[NG];
#pragma unroll
          for (int g = 0; g < NG; ++g) xv[g] = load_raw(xr, xs, n, base + g * GV, x_vec);
#pragma unroll
          for (int g = 0; g < NG; ++g)
            if (base + g * GV < n) f(g, base + g * GV, xv[g]);
        }
      }
    };
    float acc[NG][V];

    // Pass 1: the mean.
#pragma unroll
    for (int g = 0; g < NG; ++g)
#pragma unroll
      for (int k = 0; k < V; ++k) acc[g][k] = 0.0f;
    each([&](int g, int64_t i0, uint4 raw) {
      float xv[V];
      unpack<Tx, V>(raw, xv);
#pragma unroll
      for (int k = 0; k < V; ++k)
        if (i0 + k < n) acc[g][k] = __fadd_rn(acc[g][k], xv[k]);
    });
    const float mean = __fdiv_rn(group_tree<V, NG>(acc, smem, rg, AddOp{}), float(n));

    // Pass 2: the variance around that mean.
#pragma unroll
    for (int g = 0; g < NG; ++g)
#pragma unroll
      for (int k = 0; k < V; ++k) acc[g][k] = 0.0f;
    each([&](int g, int64_t i0, uint4 raw) {
      float xv[V];
      unpack<Tx, V>(raw, xv);
#pragma unroll
      for (int k = 0; k < V; ++k)
        if (i0 + k < n) {
          float d = __fsub_rn(xv[k], mean);
          acc[g][k] = __fmaf_rn(d, d, acc[g][k]);
        }
    });
    const float var = __fdiv_rn(group_tree<V, NG>(acc, smem, rg, AddOp{}), float(n));
    const float rstd = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var, eps)));
    if (rg.tg == 0 && mean_out.data) {  // every lane holds the same two numbers (the tree's result)
      *mean_out.row(r) = mean;
      *rstd_out.row(r) = rstd;
    }

    // Pass 3: the output.
    To* orow = out.row(r);
    const bool o_vec = out.vec(orow);
    each([&](int, int64_t i0, uint4 raw) {
      float xv[V], wv[V], bv[V], o[V];
      unpack<Tx, V>(raw, xv);
      if (w) load_param<V, Tx>(w, n, i0, wv);
      if (b) load_param<V, Tx>(b, n, i0, bv);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        float y = __fmul_rn(__fsub_rn(xv[k], mean), rstd);
        if (w) y = __fmul_rn(y, wv[k]);
        if (b) y = __fadd_rn(y, bv[k]);
        o[k] = y;
      }
      store_chunk<V>(orow, out.rows.elem_stride, n, i0, o_vec, o);
    });
  }
}

// ---- the 16-byte path ---------------------------------------------------------------------------------
// Rows of at most 2 L elements in the common layouts (RowMap), with x, the residual and the output in one
// dtype T and the parameters in T or F32 (P): the same lanes, the same per-lane order and the same
// expressions as the kernels above, so the same bits, in far fewer instructions. Chunk (p, g) of a
// thread starts at p * L + g * G V + tg * V. All loads of a row are issued before the first use, and
// all parameter loads before the first output store (the compiler must assume a store may alias a
// parameter and keeps every load after the stores written before it, so a load next to its use would
// cost a round trip per chunk): a row costs two memory round trips. The parameters are not held across the reduction: at most 128
// registers a thread keep eight 64-thread rows on an SM (rows of 4096 bf16), so 1024 rows fit one wave.
// Where row r of a tensor on the 16-byte path starts: r * stride, or, for a [outer, inner, n] view whose
// two leading dims do not collapse into one stride (the heads of q inside a fused q|k|v row),
// (r / inner) * outer + (r % inner) * stride. Only addresses change, never the arithmetic.
struct RowMap {
  int64_t stride = 0, inner = 0, outer = 0;  // inner == 0: one stride
  __device__ __forceinline__ int64_t at(int64_t r) const {
    return inner ? (r / inner) * outer + (r % inner) * stride : r * stride;
  }
};
std::optional<RowMap> row_map(const TensorView& t) {
  const FlatRows f = flat_rows(t);
  if (f.ok) return RowMap{f.stride, 0, 0};
  // [outer, inner, n] with unit element stride and 16-byte aligned rows at both levels.
  const int64_t es = dtype_size(t.dtype);
  if (t.ndim != 3 || t.shape[2] <= 0 || (t.shape[2] > 1 && t.stride[2] != 1) || t.shape[1] <= 0) return std::nullopt;
  if ((t.shape[2] * es) % 16 != 0 || !aligned16(t.data)) return std::nullopt;
  if ((t.stride[1] * es) % 16 != 0 || (t.stride[0] * es) % 16 != 0) return std::nullopt;
  return RowMap{t.stride[1], t.shape[1], t.stride[0]};
}

// One thread's chunk of a parameter vector (weight, bias) for V row elements of dtype T: the raw 16-byte
// words, held in registers until the output pass. Parameters come in T or in F32 (the engine keeps its
// norm weights in F32); either way each element is used as the float it converts to exactly.
template <class T, class P>
struct ParamChunk {
  static constexpr int V = 16 / int(sizeof(T)), kWords = V * int(sizeof(P)) / 16;
  uint4 raw[kWords];
  __device__ __forceinline__ void load(const P* p, int i0) {
#pragma unroll
    for (int q = 0; q < kWords; ++q) raw[q] = ld16(p + i0 + q * (16 / int(sizeof(P))));
  }
  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int q = 0; q < kWords; ++q) raw[q] = make_uint4(0, 0, 0, 0);
  }
  __device__ __forceinline__ void get(float (&v)[V]) const {
    if constexpr (std::is_same_v<P, float>) {
#pragma unroll
      for (int q = 0; q < kWords; ++q) {
        v[4 * q] = __uint_as_float(raw[q].x);
        v[4 * q + 1] = __uint_as_float(raw[q].y);
        v[4 * q + 2] = __uint_as_float(raw[q].z);
        v[4 * q + 3] = __uint_as_float(raw[q].w);
      }
    } else {
      unpack<T, V>(raw[0], v);
    }
  }
};

template <class T, class P, int NG, bool has_res>
__global__ void __launch_bounds__(kMaxGroupThreads, 2)
    rms_norm_flat_kernel(T* out, RowMap out_map, const T* x, RowMap x_map, T* res, RowMap res_map, const P* w,
                         int64_t rows, int n, float eps, int W) {
  pdl_wait();
  constexpr int V = 16 / sizeof(T);
  extern __shared__ float smem[];
  const RowGroup rg = row_group(W);
  const int GV = rg.G * V, L = GV * NG, t0 = rg.tg * V;

  for (int64_t r = rg.first; r < rows; r += rg.step) {
    const T* xr = x + x_map.at(r);
    T* rr = has_res ? res + res_map.at(r) : nullptr;
    uint4 hc[2][NG], rc[2][NG];
#pragma unroll
    for (int p = 0; p < 2; ++p)
#pragma unroll
      for (int g = 0; g < NG; ++g) {
        const int i0 = p * L + g * GV + t0;
        hc[p][g] = rc[p][g] = make_uint4(0, 0, 0, 0);
        if (i0 < n) {
          hc[p][g] = ld16(xr + i0);
          if (has_res) rc[p][g] = ld16(rr + i0);
        }
      }

    float acc[NG][V];
#pragma unroll
    for (int g = 0; g < NG; ++g)
#pragma unroll
      for (int k = 0; k < V; ++k) acc[g][k] = 0.0f;
#pragma unroll
    for (int p = 0; p < 2; ++p)
#pragma unroll
      for (int g = 0; g < NG; ++g) {
        const int i0 = p * L + g * GV + t0;
        if (i0 < n) {
          float hv[V];
          if constexpr (has_res) {
            // h = x + residual, rounded to T once, goes back to the residual.
            float rv[V];
            unpack<T, V>(hc[p][g], hv);
            unpack<T, V>(rc[p][g], rv);
#pragma unroll
            for (int k = 0; k < V; ++k) hv[k] = __fadd_rn(hv[k], rv[k]);
            hc[p][g] = pack<T, V>(hv);
            st16(rr + i0, hc[p][g]);
          }
          unpack<T, V>(hc[p][g], hv);
#pragma unroll
          for (int k = 0; k < V; ++k) acc[g][k] = __fmaf_rn(hv[k], hv[k], acc[g][k]);
        }
      }
    const float ss = group_tree<V, NG>(acc, smem, rg, AddOp{});
    const float rstd = rms_rstd(ss, float(n), eps);

    ParamChunk<T, P> wc[2][NG];
#pragma unroll
    for (int p = 0; p < 2; ++p)
#pragma unroll
      for (int g = 0; g < NG; ++g) {
        const int i0 = p * L + g * GV + t0;
        if (i0 < n) wc[p][g].load(w, i0);
        else wc[p][g].zero();
      }
    T* orow = out + out_map.at(r);
#pragma unroll
    for (int p = 0; p < 2; ++p)
#pragma unroll
      for (int g = 0; g < NG; ++g) {
        const int i0 = p * L + g * GV + t0;
        if (i0 < n) {
          float hv[V], wv[V], o[V];
          unpack<T, V>(hc[p][g], hv);
          wc[p][g].get(wv);
#pragma unroll
          for (int k = 0; k < V; ++k) o[k] = __fmul_rn(__fmul_rn(hv[k], rstd), wv[k]);
          st16(orow + i0, pack<T, V>(o));
        }
      }
  }
}

template <class T, class P, int NG>
__global__ void __launch_bounds__(kMaxGroupThreads, 2)
    layer_norm_flat_kernel(T* out, RowMap out_map, const T* x, RowMap x_map, const P* w, const P* b,
                           float* mean_out, float* rstd_out, int64_t stats_stride, int64_t rows, int n, float eps,
                           int W) {
  pdl_wait();
  constexpr int V = 16 / sizeof(T);
  extern __shared__ float smem[];
  const RowGroup rg = row_group(W);
  const int GV = rg.G * V, L = GV * NG, t0 = rg.tg * V;

  for (int64_t r = rg.first; r < rows; r += rg.step) {
    const T* xr = x + x_map.at(r);
    uint4 xc[2][NG];
#pragma unroll
    for (int p = 0; p < 2; ++p)
#pragma unroll
      for (int g = 0; g < NG; ++g) {
        const int i0 = p * L + g * GV + t0;
        xc[p][g] = i0 < n ? ld16(xr + i0) : make_uint4(0, 0, 0, 0);
      }
    // Calls f(g, x) for every chunk of the row this thread holds (pass p, group g), in that order.
    auto each = [&](auto&& f) {
#pragma unroll
      for (int p = 0; p < 2; ++p)
#pragma unroll
        for (int g = 0; g < NG; ++g)
          if (p * L + g * GV + t0 < n) {
            float xv[V];
            unpack<T, V>(xc[p][g], xv);
            f(g, xv);
          }
    };
    float acc[NG][V];

    // The mean.
#pragma unroll
    for (int g = 0; g < NG; ++g)
#pragma unroll
      for (int k = 0; k < V; ++k) acc[g][k] = 0.0f;
    each([&](int g, const float (&xv)[V]) {
#pragma unroll
      for (int k = 0; k < V; ++k) acc[g][k] = __fadd_rn(acc[g][k], xv[k]);
    });
    const float mean = __fdiv_rn(group_tree<V, NG>(acc, smem, rg, AddOp{}), float(n));

    // The variance around that mean.
#pragma unroll
    for (int g = 0; g < NG; ++g)
#pragma unroll
      for (int k = 0; k < V; ++k) acc[g][k] = 0.0f;
    each([&](int g, const float (&xv)[V]) {
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const float d = __fsub_rn(xv[k], mean);
        acc[g][k] = __fmaf_rn(d, d, acc[g][k]);
      }
    });
    const float var = __fdiv_rn(group_tree<V, NG>(acc, smem, rg, AddOp{}), float(n));
    const float rstd = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var, eps)));
    if (rg.tg == 0 && mean_out) {
      mean_out[r * stats_stride] = mean;
      rstd_out[r * stats_stride] = rstd;
    }

    ParamChunk<T, P> wc[2][NG], bc[2][NG];
#pragma unroll
    for (int p = 0; p < 2; ++p)
#pragma unroll
      for (int g = 0; g < NG; ++g) {
        const int i0 = p * L + g * GV + t0;
        if (w && i0 < n) wc[p][g].load(w, i0);
        else wc[p][g].zero();
        if (b && i0 < n) bc[p][g].load(b, i0);
        else bc[p][g].zero();
      }
    T* orow = out + out_map.at(r);
#pragma unroll
    for (int p = 0; p < 2; ++p)
#pragma unroll
      for (int g = 0; g < NG; ++g) {
        const int i0 = p * L + g * GV + t0;
        if (i0 < n) {
          float xv[V], wv[V], bv[V], o[V];
          unpack<T, V>(xc[p][g], xv);
          wc[p][g].get(wv);
          bc[p][g].get(bv);
#pragma unroll
          for (int k = 0; k < V; ++k) {
            float y = __fmul_rn(__fsub_rn(xv[k], mean), rstd);
            if (w) y = __fmul_rn(y, wv[k]);
            if (b) y = __fadd_rn(y, bv[k]);
            o[k] = y;
          }
          st16(orow + i0, pack<T, V>(o));
        }
      }
  }
}

// The 16-byte path applies: rows of at most 2 L elements (held in registers), x, the residual and the
// output in one dtype, each in a RowMap layout, and the parameters (weight, bias) either all in that
// dtype or, where the caller allows it (`params_f32` not null; set to the answer), all in F32.
bool flat_norm(int64_t n, DType dt, std::initializer_list<const TensorView*> rows_like,
               std::initializer_list<const TensorView*> params, bool* params_f32) {
  const int V = 16 / int(dtype_size(dt));
  if (n > 2 * int64_t(row_threads(n, V)) * V) return false;
  for (const TensorView* t : rows_like)
    if (t && (t->dtype != dt || !row_map(*t))) return false;
  bool any = false, f32 = false;
  for (const TensorView* t : params) {
    if (!t) continue;
    const bool t_f32 = t->dtype == DType::F32 && dt != DType::F32;
    if ((!t_f32 && t->dtype != dt) || !flat_vector(*t) || (any && t_f32 != f32)) return false;
    any = true;
    f32 = t_f32;
  }
  if (f32 && !params_f32) return false;
  if (params_f32) *params_f32 = f32;
  return true;
}

// Calls f(P{}) with P the parameters' element type on the 16-byte path: T or float.
template <class T, class F>
void dispatch_param(bool params_f32, F&& f) {
  if constexpr (std::is_same_v<T, float>) {
    f(float{});
  } else {
    if (params_f32) f(float{});
    else f(T{});
  }
}

// The most lane groups a thread of each kernel keeps (registers: 2 NG chunks of the row, NG * V sums).
// Measured on the H100 (bench/results/ops_h100.md, BIK_ROW_MAX_NG): 8 groups (one warp a row of 4096
// bf16, ~210 registers) ran rms_norm at 47% of copy, 4 groups (two warps a row) at 100%.
constexpr int kNormMaxNg = 4;
constexpr int kResidualMaxNg = 4;

template <class Tx>
GroupShape norm_shape(int64_t n, int max_ng) {
  return group_shape(row_threads(n, 16 / int(sizeof(Tx))), max_ng);
}
template <class Tx>
size_t norm_smem(const GroupShape& gs) {
  return gs.W > 1 ? size_t(32 * gs.W) * (16 / sizeof(Tx)) * sizeof(float) : 0;
}

}  // namespace

void rms_norm(const TensorView& out, const TensorView& x, const TensorView& weight, float eps,
              const std::optional<TensorView>& residual, Stream s) {
  const int64_t n = x.size(-1), rows = x.numel() / n;
  bool params_f32 = false;
  if (flat_norm(n, x.dtype, {&out, &x, residual ? &*residual : nullptr}, {&weight}, &params_f32)) {
    dispatch_float(x.dtype, [&](auto xt) {
      using T = decltype(xt);
      const GroupShape gs = flat_shape(row_threads(n, 16 / int(sizeof(T))));
      const RowMap res_map = residual ? *row_map(*residual) : RowMap{};
      T* res = residual ? residual->ptr<T>() : nullptr;
      dispatch_param<T>(params_f32, [&](auto pt) {
        using P = decltype(pt);
        dispatch_flat_ng(gs.NG, [&](auto ng) {
          constexpr int NG = decltype(ng)::value;
          auto kernel = residual ? rms_norm_flat_kernel<T, P, NG, true> : rms_norm_flat_kernel<T, P, NG, false>;
          launch_kernel(kernel, group_grid(rows, gs.W), gs.threads, norm_smem<T>(gs), stream_of(s), out.ptr<T>(),
                        *row_map(out), x.ptr<const T>(), *row_map(x), res, res_map, weight.ptr<const P>(), rows, int(n),
                        eps, gs.W);
          BIK_CUDA_LAUNCH_CHECK();
        });
      });
    });
    return;
  }
  dispatch_float(x.dtype, [&](auto xt) {
    using Tx = decltype(xt);
    auto launch = [&](auto ot) {
      using To = decltype(ot);
      const GroupShape gs = norm_shape<Tx>(n, residual ? kResidualMaxNg : kNormMaxNg);
      RowArg<Tx> res{};
      if (residual) res = row_arg<Tx>(*residual);
      auto go = [&](auto ng) {
        constexpr int NG = decltype(ng)::value;
        const dim3 grid = group_grid(rows, gs.W);
        const size_t smem = norm_smem<Tx>(gs);
        if (!residual) {
          launch_kernel(rms_norm_kernel<Tx, To, NG, false>, grid, gs.threads, smem, stream_of(s), row_arg<To>(out),
                        row_arg<const Tx>(x), res, param_vec(weight), rows, n, eps, gs.W);
        } else if constexpr (NG <= kResidualMaxNg) {  // dispatch_ng<kResidualMaxNg> never passes more
          launch_kernel(rms_norm_kernel<Tx, To, NG, true>, grid, gs.threads, smem, stream_of(s), row_arg<To>(out),
                        row_arg<const Tx>(x), res, param_vec(weight), rows, n, eps, gs.W);
        }
        BIK_CUDA_LAUNCH_CHECK();
      };
      if (residual) dispatch_ng<kResidualMaxNg>(gs.NG, go);
      else dispatch_ng<kNormMaxNg>(gs.NG, go);
    };
    if (out.dtype == DType::F32) launch(float{});
    else launch(Tx{});
  });
}

void layer_norm(const TensorView& out, const TensorView& x, const std::optional<TensorView>& w,
                const std::optional<TensorView>& b, float eps, const TensorView* mean, const TensorView* rstd,
                Stream s) {
  RowArg<float> mean_arg{}, rstd_arg{};
  if (mean) mean_arg = row_arg<float>(*mean);
  if (rstd) rstd_arg = row_arg<float>(*rstd);
  const int64_t n = x.size(-1), rows = x.numel() / n;
  // The statistics ([..., 1] F32) on the flat path: one stride for both, any alignment.
  int64_t mean_stride = 0, rstd_stride = 0;
  const bool flat_stats = (!mean && !rstd) || (mean && rstd && collapsed_row_stride(*mean, mean_stride) &&
                                                collapsed_row_stride(*rstd, rstd_stride) && mean_stride == rstd_stride);
  // Parameters in x's dtype only: with F32 weight and bias held as floats the flat kernel would spill.
  if (flat_stats && flat_norm(n, x.dtype, {&out, &x}, {w ? &*w : nullptr, b ? &*b : nullptr}, nullptr)) {
    dispatch_float(x.dtype, [&](auto xt) {
      using T = decltype(xt);
      const GroupShape gs = flat_shape(row_threads(n, 16 / int(sizeof(T))));
      dispatch_flat_ng(gs.NG, [&](auto ng) {
        constexpr int NG = decltype(ng)::value;
        launch_kernel(layer_norm_flat_kernel<T, T, NG>, group_grid(rows, gs.W), gs.threads, norm_smem<T>(gs),
                      stream_of(s), out.ptr<T>(), *row_map(out), x.ptr<const T>(), *row_map(x),
                      w ? w->ptr<const T>() : nullptr, b ? b->ptr<const T>() : nullptr,
                      mean ? mean->ptr<float>() : nullptr, rstd ? rstd->ptr<float>() : nullptr, mean_stride, rows,
                      int(n), eps, gs.W);
        BIK_CUDA_LAUNCH_CHECK();
      });
    });
    return;
  }
  dispatch_float(x.dtype, [&](auto xt) {
    using Tx = decltype(xt);
    auto launch = [&](auto ot) {
      using To = decltype(ot);
      const GroupShape gs = norm_shape<Tx>(n, kNormMaxNg);
      dispatch_ng(gs.NG, [&](auto ng) {
        constexpr int NG = decltype(ng)::value;
        launch_kernel(layer_norm_kernel<Tx, To, NG>, group_grid(rows, gs.W), gs.threads, norm_smem<Tx>(gs),
                      stream_of(s), row_arg<To>(out), row_arg<const Tx>(x), param_vec(w), param_vec(b), mean_arg,
                      rstd_arg, rows, n, eps, gs.W);
        BIK_CUDA_LAUNCH_CHECK();
      });
    };
    if (out.dtype == DType::F32) launch(float{});
    else launch(Tx{});
  });
}

}  // namespace bik::cuda

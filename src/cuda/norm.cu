// RMSNorm (optionally fused with the residual add) and LayerNorm: one row per CTA.
//
// Each row is summed by the CTA tree of rows.cuh, whose shape depends on n and the dtype only. A
// thread keeps its chunks of the row in registers between the statistics pass and the output pass
// when the row is short enough (kCachedChunks); longer rows are read again. Both give the same bits.
#include "core/backend.h"
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
// the residual first. Each lane sums h*h with one fused multiply-add per element.
template <class Tx, class To>
__global__ void __launch_bounds__(kMaxRowThreads) rms_norm_kernel(RowArg<To> out, RowArg<const Tx> x, RowArg<Tx> res, bool has_res, ParamVec w,
                                int64_t rows, int64_t n, float eps) {
  constexpr int V = 16 / sizeof(Tx);
  extern __shared__ float smem[];
  const int t = threadIdx.x;
  const int64_t L = int64_t(blockDim.x) * V;
  const bool cached = n <= L * kCachedChunks;

  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const Tx* xr = x.row(r);
    Tx* rr = has_res ? res.row(r) : nullptr;
    const bool x_vec = x.vec(xr), r_vec = has_res && res.vec(rr);

    // Loads a chunk of h: x, or round(x + residual) (stored back into the residual).
    auto load_h = [&](int64_t i0, float (&h)[V]) {
      load_chunk<V>(xr, x.rows.elem_stride, n, i0, x_vec, h);
      if (has_res) {
        float rv[V];
        load_chunk<V>(rr, res.rows.elem_stride, n, i0, r_vec, rv);
#pragma unroll
        for (int k = 0; k < V; ++k) h[k] = round_through<Tx>(__fadd_rn(h[k], rv[k]));
        store_chunk<V>(rr, res.rows.elem_stride, n, i0, r_vec, h);
      }
    };

    float acc[V];
#pragma unroll
    for (int k = 0; k < V; ++k) acc[k] = 0.0f;
    float h[kCachedChunks][V];
    if (cached) {
#pragma unroll
      for (int c = 0; c < kCachedChunks; ++c) {
        int64_t i0 = c * L + int64_t(t) * V;
        if (i0 < n) load_h(i0, h[c]);
#pragma unroll
        for (int k = 0; k < V; ++k)
          if (i0 + k < n) acc[k] = __fmaf_rn(h[c][k], h[c][k], acc[k]);
      }
    } else {
      for (int64_t i0 = int64_t(t) * V; i0 < n; i0 += L) {
        float hv[V];
        load_h(i0, hv);
#pragma unroll
        for (int k = 0; k < V; ++k)
          if (i0 + k < n) acc[k] = __fmaf_rn(hv[k], hv[k], acc[k]);
      }
    }
    const float ss = block_tree<V>(acc, smem, AddOp{});
    const float rstd = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(ss, float(n)), eps)));

    To* orow = out.row(r);
    const bool o_vec = out.vec(orow);
    auto emit = [&](int64_t i0, const float (&hv)[V]) {
      float wv[V], o[V];
      load_param<V, Tx>(w, n, i0, wv);
#pragma unroll
      for (int k = 0; k < V; ++k) o[k] = __fmul_rn(__fmul_rn(hv[k], rstd), wv[k]);
      store_chunk<V>(orow, out.rows.elem_stride, n, i0, o_vec, o);
    };
    if (cached) {
#pragma unroll
      for (int c = 0; c < kCachedChunks; ++c) {
        int64_t i0 = c * L + int64_t(t) * V;
        if (i0 < n) emit(i0, h[c]);
      }
    } else {
      // The residual now holds h (this thread wrote exactly these elements above).
      for (int64_t i0 = int64_t(t) * V; i0 < n; i0 += L) {
        float hv[V];
        if (has_res)
          load_chunk<V>(static_cast<const Tx*>(rr), res.rows.elem_stride, n, i0, r_vec, hv);
        else
          load_chunk<V>(xr, x.rows.elem_stride, n, i0, x_vec, hv);
        emit(i0, hv);
      }
    }
  }
}

// ---- LayerNorm --------------------------------------------------------------------------------------
// mean = sum(x) / n; var = sum((x - mean)^2) / n (two passes, biased); out = (x - mean) * rstd * w + b.
template <class Tx, class To>
__global__ void __launch_bounds__(kMaxRowThreads) layer_norm_kernel(RowArg<To> out, RowArg<const Tx> x, ParamVec w, ParamVec b, int64_t rows,
                                  int64_t n, float eps) {
  constexpr int V = 16 / sizeof(Tx);
  extern __shared__ float smem[];
  const int t = threadIdx.x;
  const int64_t L = int64_t(blockDim.x) * V;
  const bool cached = n <= L * kCachedChunks;

  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const Tx* xr = x.row(r);
    const bool x_vec = x.vec(xr);
    float xs[kCachedChunks][V];
    float acc[V];

    // Pass 1: the mean.
#pragma unroll
    for (int k = 0; k < V; ++k) acc[k] = 0.0f;
    if (cached) {
#pragma unroll
      for (int c = 0; c < kCachedChunks; ++c) {
        int64_t i0 = c * L + int64_t(t) * V;
        if (i0 < n) load_chunk<V>(xr, x.rows.elem_stride, n, i0, x_vec, xs[c]);
#pragma unroll
        for (int k = 0; k < V; ++k)
          if (i0 + k < n) acc[k] = __fadd_rn(acc[k], xs[c][k]);
      }
    } else {
      for (int64_t i0 = int64_t(t) * V; i0 < n; i0 += L) {
        float xv[V];
        load_chunk<V>(xr, x.rows.elem_stride, n, i0, x_vec, xv);
#pragma unroll
        for (int k = 0; k < V; ++k)
          if (i0 + k < n) acc[k] = __fadd_rn(acc[k], xv[k]);
      }
    }
    const float mean = __fdiv_rn(block_tree<V>(acc, smem, AddOp{}), float(n));

    // Pass 2: the variance around that mean.
#pragma unroll
    for (int k = 0; k < V; ++k) acc[k] = 0.0f;
    auto add_sq = [&](int64_t i0, const float (&xv)[V]) {
#pragma unroll
      for (int k = 0; k < V; ++k)
        if (i0 + k < n) {
          float d = __fsub_rn(xv[k], mean);
          acc[k] = __fmaf_rn(d, d, acc[k]);
        }
    };
    if (cached) {
#pragma unroll
      for (int c = 0; c < kCachedChunks; ++c) add_sq(c * L + int64_t(t) * V, xs[c]);
    } else {
      for (int64_t i0 = int64_t(t) * V; i0 < n; i0 += L) {
        float xv[V];
        load_chunk<V>(xr, x.rows.elem_stride, n, i0, x_vec, xv);
        add_sq(i0, xv);
      }
    }
    const float var = __fdiv_rn(block_tree<V>(acc, smem, AddOp{}), float(n));
    const float rstd = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var, eps)));

    // Pass 3: the output.
    To* orow = out.row(r);
    const bool o_vec = out.vec(orow);
    auto emit = [&](int64_t i0, const float (&xv)[V]) {
      float wv[V], bv[V], o[V];
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
    };
    if (cached) {
#pragma unroll
      for (int c = 0; c < kCachedChunks; ++c) {
        int64_t i0 = c * L + int64_t(t) * V;
        if (i0 < n) emit(i0, xs[c]);
      }
    } else {
      for (int64_t i0 = int64_t(t) * V; i0 < n; i0 += L) {
        float xv[V];
        load_chunk<V>(xr, x.rows.elem_stride, n, i0, x_vec, xv);
        emit(i0, xv);
      }
    }
  }
}

template <class Tx>
struct LaunchShape {
  static constexpr int V = 16 / sizeof(Tx);
  int threads;
  size_t smem;
  explicit LaunchShape(int64_t n) : threads(row_threads(n, V)), smem((size_t(threads) * V + 1) * sizeof(float)) {}
};

}  // namespace

void rms_norm(const TensorView& out, const TensorView& x, const TensorView& weight, float eps,
              const std::optional<TensorView>& residual, Stream s) {
  const int64_t n = x.size(-1), rows = x.numel() / n;
  dispatch_float(x.dtype, [&](auto xt) {
    using Tx = decltype(xt);
    auto launch = [&](auto ot) {
      using To = decltype(ot);
      LaunchShape<Tx> ls(n);
      RowArg<Tx> res{};
      if (residual) res = row_arg<Tx>(*residual);
      rms_norm_kernel<Tx, To><<<grid_for(rows), ls.threads, ls.smem, stream_of(s)>>>(
          row_arg<To>(out), row_arg<const Tx>(x), res, residual.has_value(), param_vec(weight), rows, n, eps);
      BIK_CUDA_LAUNCH_CHECK();
    };
    if (out.dtype == DType::F32) launch(float{});
    else launch(Tx{});
  });
}

void layer_norm(const TensorView& out, const TensorView& x, const std::optional<TensorView>& w,
                const std::optional<TensorView>& b, float eps, Stream s) {
  const int64_t n = x.size(-1), rows = x.numel() / n;
  dispatch_float(x.dtype, [&](auto xt) {
    using Tx = decltype(xt);
    auto launch = [&](auto ot) {
      using To = decltype(ot);
      LaunchShape<Tx> ls(n);
      layer_norm_kernel<Tx, To><<<grid_for(rows), ls.threads, ls.smem, stream_of(s)>>>(
          row_arg<To>(out), row_arg<const Tx>(x), param_vec(w), param_vec(b), rows, n, eps);
      BIK_CUDA_LAUNCH_CHECK();
    };
    if (out.dtype == DType::F32) launch(float{});
    else launch(Tx{});
  });
}

}  // namespace bik::cuda

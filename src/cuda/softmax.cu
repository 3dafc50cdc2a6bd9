// Softmax and log-softmax over the last dim: one row group (rows.cuh) per row, two passes over the row
// (the statistics, then the output) with the statistics of softmax.cuh. The max is exact in any order;
// the sum's order is the plan's halving tree, fixed by n and the dtype; row groups only move the plan's
// lanes between threads, never a bit of a result.
//
// Rows in the common layout (rows.cuh, flat_rows) run a kernel of 16-byte loads without per-element
// bounds, which keeps rows of up to U L elements (U = 4 for F32, 2 for 16-bit types) in registers
// between the passes (one read of the row); longer rows are read twice, U passes' chunks in flight
// per thread. Any other layout runs the
// general kernel, same lanes, same order, same bits.
#include "core/backend.h"
#include "cuda/rows.cuh"
#include "cuda/softmax.cuh"

namespace bik::cuda {
namespace {

template <class Tx, class To, int NG, bool kFlat>
__global__ void __launch_bounds__(kMaxGroupThreads, 2)
    softmax_kernel(To* out, DevRows out_rows, int64_t out_stride, const Tx* x, DevRows x_rows, int64_t x_stride,
                   int64_t rows, int64_t n, bool log, int W) {
  constexpr int V = 16 / sizeof(Tx);
  // Passes a thread has in flight on the flat path (chunks: U * NG, held as raw 16-byte values).
  constexpr int U = sizeof(Tx) == 4 ? 4 : 2;
  extern __shared__ float smem[];
  const RowGroup rg = row_group(W);
  // Chunk (pass p, group g) of this thread: p * L + g * GV + t0, the chunk of plan thread g * G + tg.
  const int64_t GV = int64_t(rg.G) * V, L = GV * NG, t0 = int64_t(rg.tg) * V;
  const bool cached = kFlat && n <= U * L;

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
    uint4 raw[U][NG];  // flat: U passes' chunks; the whole row when cached
    if constexpr (kFlat) {
      for (int64_t base = 0; base < n; base += U * L) {
#pragma unroll
        for (int p = 0; p < U; ++p)
#pragma unroll
          for (int g = 0; g < NG; ++g) {
            const int64_t i0 = base + p * L + g * GV + t0;
            raw[p][g] = i0 < n ? ld16(xr + i0) : make_uint4(0, 0, 0, 0);
          }
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
    const float log_sum = log ? logf(S) : 0.0f;

    // Pass 2: the output.
    auto outputs = [&](const float (&v)[V], float (&o)[V]) {
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const float d = __fsub_rn(v[k], M);
        o[k] = log ? __fsub_rn(d, log_sum) : __fdiv_rn(expf(d), S);
      }
    };
    if constexpr (kFlat) {
      for (int64_t base = 0; base < n; base += U * L) {
        if (!cached) {
#pragma unroll
          for (int p = 0; p < U; ++p)
#pragma unroll
            for (int g = 0; g < NG; ++g) {
              const int64_t i0 = base + p * L + g * GV + t0;
              raw[p][g] = i0 < n ? ld16(xr + i0) : make_uint4(0, 0, 0, 0);
            }
        }
#pragma unroll
        for (int p = 0; p < U; ++p)
#pragma unroll
          for (int g = 0; g < NG; ++g) {
            const int64_t i0 = base + p * L + g * GV + t0;
            if (i0 < n) {
              float v[V], o[V];
              unpack<Tx, V>(raw[p][g], v);
              outputs(v, o);
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
            outputs(v[g], o);
            store_chunk<V>(orow, os, n, base + g * GV, o_vec, o);
          }
      }
    }
  }
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
    auto launch = [&](auto ot) {
      using To = decltype(ot);
      dispatch_flat_ng(gs.NG, [&](auto ng) {
        constexpr int NG = decltype(ng)::value;
        auto kernel = flat ? softmax_kernel<Tx, To, NG, true> : softmax_kernel<Tx, To, NG, false>;
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

// Element-wise ops and gathers: silu_and_mul, rotary_embedding, embedding. Nothing is reduced, so
// each output element is one fixed F32 expression of its inputs, rounded once; a thread handles a
// chunk of V consecutive elements (16-byte loads when the row is contiguous and aligned).
#include <climits>

#include "core/backend.h"
#include "cuda/rows.cuh"

namespace bik::cuda {
namespace {

// Grids are 2-D: x walks the chunks of one row, y (a grid-stride loop) the rows, so no thread divides
// a 64-bit item index. Which thread handles a chunk never changes the bits of an element-wise op.
dim3 row_grid(int64_t chunks_per_row, int64_t rows, int threads) {
  const int64_t bx = (chunks_per_row + threads - 1) / threads;
  return dim3(unsigned(bx > 0 ? bx : 1), unsigned(rows < 65535 ? (rows > 0 ? rows : 1) : 65535), 1);
}

// ---- silu_and_mul -------------------------------------------------------------------------------------
// out[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g)); x = [gate | up] along the last dim.
template <class Tx, class To>
__global__ void silu_and_mul_kernel(To* out, DevRows out_rows, const Tx* x, DevRows x_rows, int64_t rows, int64_t d) {
  constexpr int V = 16 / sizeof(Tx);
  const int64_t chunks = (d + V - 1) / V;
  const int64_t xs = x_rows.elem_stride, os = out_rows.elem_stride;
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= chunks) return;
  const int64_t i0 = c * V;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const Tx* gate = x + x_rows.offset(r);
    const Tx* up = gate + d * xs;
    To* o = out + out_rows.offset(r);
    float g[V], u[V], y[V];
    load_chunk<V>(gate, xs, d, i0, xs == 1 && aligned16_dev(gate), g);
    load_chunk<V>(up, xs, d, i0, xs == 1 && aligned16_dev(up), u);
#pragma unroll
    for (int k = 0; k < V; ++k) y[k] = __fmul_rn(__fdiv_rn(g[k], __fadd_rn(1.0f, expf(-g[k]))), u[k]);
    store_chunk<V>(o, os, d, i0, os == 1 && aligned16_dev(o), y);
  }
}

// ---- rotary embedding ---------------------------------------------------------------------------------
// One item is a chunk of one head of one token. neox: V pairs (i, i + rot/2) for i in [i0, i0 + V);
// GPT-J: V elements [e0, e0 + V) holding V / 2 pairs (2j, 2j + 1). The rotation of a pair (a, b) by
// angle theta: (a cos - b sin, b cos + a sin), each product rounded, then the sum.
struct Heads {
  int64_t tokens, heads, s0, s1, s2;  // [T, H, D] strides
};
Heads heads_of(const TensorView& t) { return Heads{t.shape[0], t.shape[1], t.stride[0], t.stride[1], t.stride[2]}; }

__device__ __forceinline__ void rotate(float a, float b, float c, float s, float& ra, float& rb) {
  ra = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
  rb = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
}

template <class T>
__global__ void rope_kernel(T* q, Heads hq, const int32_t* pos, int64_t pos_stride, const float* cs, int64_t cs_s0,
                            int64_t cs_s1, int64_t max_pos, int64_t rot, bool neox) {
  constexpr int V = 16 / sizeof(T);
  const int64_t half = rot / 2;
  const int64_t chunks = neox ? (half + V - 1) / V : (rot + V - 1) / V;
  const int item = int(blockIdx.x) * blockDim.x + threadIdx.x;  // a chunk of one head of one token
  if (item >= int(hq.heads * chunks)) return;
  const int64_t h = item / int(chunks), c = item % int(chunks);
  for (int64_t tok = blockIdx.y; tok < hq.tokens; tok += gridDim.y) {
    const int64_t p = pos[tok * pos_stride];
    // Positions come from the engine and are not checked on the host for device tensors; one outside
    // the table leaves its token untouched rather than read out of bounds.
    if (p < 0 || p >= max_pos) continue;
    T* head = q + tok * hq.s0 + h * hq.s1;
    const float* cos_row = cs + p * cs_s0;
    const float* sin_row = cos_row + half * cs_s1;
    const bool contiguous = hq.s2 == 1;
    if (neox) {
      const int64_t i0 = c * V;
      T* second = head + half * hq.s2;
      const bool v1 = contiguous && aligned16_dev(head), v2 = contiguous && aligned16_dev(second);
      const bool vc = cs_s1 == 1 && aligned16_dev(cos_row) && aligned16_dev(sin_row);
      float a[V], b[V], co[V], si[V];
      load_chunk<V>(head, hq.s2, half, i0, v1, a);
      load_chunk<V>(second, hq.s2, half, i0, v2, b);
      load_chunk<V>(cos_row, cs_s1, half, i0, vc, co);
      load_chunk<V>(sin_row, cs_s1, half, i0, vc, si);
#pragma unroll
      for (int k = 0; k < V; ++k) rotate(a[k], b[k], co[k], si[k], a[k], b[k]);
      store_chunk<V>(head, hq.s2, half, i0, v1, a);
      store_chunk<V>(second, hq.s2, half, i0, v2, b);
    } else {
      const int64_t e0 = c * V;
      const bool v1 = contiguous && aligned16_dev(head);
      float e[V];
      load_chunk<V>(head, hq.s2, rot, e0, v1, e);
#pragma unroll
      for (int j = 0; j < V / 2; ++j) {
        const int64_t pair = e0 / 2 + j;
        if (2 * pair < rot) {
          float co = cos_row[pair * cs_s1], si = sin_row[pair * cs_s1];
          rotate(e[2 * j], e[2 * j + 1], co, si, e[2 * j], e[2 * j + 1]);
        }
      }
      store_chunk<V>(head, hq.s2, rot, e0, v1, e);
    }
  }
}

// ---- embedding ----------------------------------------------------------------------------------------
// out[t, :] = table[ids[t], :]. A kernel cannot throw: an id outside [0, V) writes a zero row and
// records the lowest such position in *bad (an integer atomic: exact in any order); the host checks it.
template <class Tt, class To>
__global__ void embedding_kernel(To* out, int64_t os0, int64_t os1, const int32_t* ids, int64_t ids_stride,
                                 const Tt* table, int64_t ts0, int64_t ts1, int64_t vocab, int64_t tokens, int64_t d,
                                 int* bad) {
  constexpr int V = 16 / sizeof(Tt);
  const int64_t chunks = (d + V - 1) / V;
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= chunks) return;
  const int64_t i0 = c * V;
  for (int64_t t = blockIdx.y; t < tokens; t += gridDim.y) {
    const int64_t id = ids[t * ids_stride];
    To* o = out + t * os0;
    float v[V];
    if (id < 0 || id >= vocab) {
      for (int k = 0; k < V; ++k) v[k] = 0.0f;
      if (bad != nullptr && i0 == 0) atomicMin(bad, int(t));
    } else {
      const Tt* row = table + id * ts0;
      load_chunk<V>(row, ts1, d, i0, ts1 == 1 && aligned16_dev(row), v);
    }
    store_chunk<V>(o, os1, d, i0, os1 == 1 && aligned16_dev(o), v);
  }
}

}  // namespace

void silu_and_mul(const TensorView& out, const TensorView& x, Stream s) {
  const int64_t d = out.size(-1), rows = out.numel() / d;
  dispatch_float(x.dtype, [&](auto xt) {
    using Tx = decltype(xt);
    constexpr int V = 16 / sizeof(Tx);
    auto launch = [&](auto ot) {
      using To = decltype(ot);
      const int threads = 128;
      silu_and_mul_kernel<Tx, To><<<row_grid((d + V - 1) / V, rows, threads), threads, 0, stream_of(s)>>>(
          out.ptr<To>(), DevRows(out), x.ptr<const Tx>(), DevRows(x), rows, d);
      BIK_CUDA_LAUNCH_CHECK();
    };
    if (out.dtype == DType::F32) launch(float{});
    else launch(Tx{});
  });
}

void rotary_embedding(const TensorView& q, const TensorView& k, const TensorView& positions,
                      const TensorView& cos_sin, bool neox, Stream s) {
  const int64_t rot = cos_sin.shape[1];
  const bool has_k = k.ndim != 0 || k.data != nullptr;
  dispatch_float(q.dtype, [&](auto qt) {
    using T = decltype(qt);
    constexpr int V = 16 / sizeof(T);
    const int64_t chunks = neox ? (rot / 2 + V - 1) / V : (rot + V - 1) / V;
    auto launch = [&](const TensorView& t) {
      if (t.numel() == 0) return;
      Heads h = heads_of(t);
      const int threads = 128;
      rope_kernel<T><<<row_grid(h.heads * chunks, h.tokens, threads), threads, 0, stream_of(s)>>>(
          t.ptr<T>(), h, positions.ptr<const int32_t>(), positions.stride[0], cos_sin.ptr<const float>(),
          cos_sin.stride[0], cos_sin.stride[1], cos_sin.shape[0], rot, neox);
      BIK_CUDA_LAUNCH_CHECK();
    };
    launch(q);
    if (has_k) launch(k);
  });
}

void embedding(const TensorView& out, const TensorView& ids, const TensorView& table, bool check_ids, Stream s) {
  const int64_t tokens = ids.shape[0], d = table.shape[1], vocab = table.shape[0];
  cudaStream_t st = stream_of(s);
  // The id check needs the host to wait for the kernel. Inside a CUDA graph capture it cannot, so there
  // an id outside the table only writes a zero row.
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  BIK_CUDA_CHECK(cudaStreamIsCapturing(st, &capture));
  const bool check = check_ids && capture == cudaStreamCaptureStatusNone;
  int* bad = nullptr;
  if (check) {
    BIK_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&bad), sizeof(int), st));
    BIK_CUDA_CHECK(cudaMemsetAsync(bad, 0x7f, sizeof(int), st));  // 0x7f7f7f7f: no bad position
  }
  dispatch_float(table.dtype, [&](auto tt) {
    using Tt = decltype(tt);
    constexpr int V = 16 / sizeof(Tt);
    auto launch = [&](auto ot) {
      using To = decltype(ot);
      const int threads = 128;
      embedding_kernel<Tt, To><<<row_grid((d + V - 1) / V, tokens, threads), threads, 0, st>>>(
          out.ptr<To>(), out.stride[0], out.stride[1], ids.ptr<const int32_t>(), ids.stride[0], table.ptr<const Tt>(),
          table.stride[0], table.stride[1], vocab, tokens, d, bad);
      BIK_CUDA_LAUNCH_CHECK();
    };
    if (out.dtype == DType::F32) launch(float{});
    else launch(Tt{});
  });
  if (!check) return;
  int first_bad = 0;
  BIK_CUDA_CHECK(cudaMemcpyAsync(&first_bad, bad, sizeof(int), cudaMemcpyDeviceToHost, st));
  BIK_CUDA_CHECK(cudaFreeAsync(bad, st));
  BIK_CUDA_CHECK(cudaStreamSynchronize(st));
  if (first_bad != 0x7f7f7f7f) {
    int32_t id = 0;
    BIK_CUDA_CHECK(cudaMemcpy(&id, ids.ptr<const int32_t>() + first_bad * ids.stride[0], sizeof(int32_t),
                              cudaMemcpyDeviceToHost));
    throw Error(detail::concat("embedding: ids[", first_bad, "] = ", id, " is outside the table [0, ", vocab,
                               ") (that row of out was written as zeros)"));
  }
}

}  // namespace bik::cuda

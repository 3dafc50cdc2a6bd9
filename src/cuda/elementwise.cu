// Element-wise ops and gathers: silu_and_mul, rotary_embedding, embedding. Nothing is reduced, so
// each output element is one fixed F32 expression of its inputs, rounded once; a thread handles a
// chunk of V consecutive elements (16-byte loads when the row is contiguous and aligned).
#include <climits>
#include <cstdlib>

#include "core/backend.h"
#include "cuda/device_info.h"
#include "cuda/head_math.cuh"
#include "cuda/launch.cuh"
#include "cuda/rows.cuh"
#include "cuda/silu.cuh"
#include "cuda/vec_io.cuh"

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
// A thread takes U chunks of a row, blockDim.x chunks apart, and issues all their loads before any math:
// each thread then has 2 U 16-byte loads in flight. The default launch: kSiluThreads threads, U =
// kSiluUnroll. Few rows (a decode step's handful of tokens) are one short wave of latency: a row of d =
// 14336 bf16 is 4 such CTAs on 4 SMs, each thread with 16 elements of exp and divide in a row. There
// silu_and_mul() launches U = 1 on kSiluSmallThreads-thread CTAs: 14 CTAs, 8 elements a thread. Element-
// wise, so which thread computes an element never changes its bits (OpsCudaSmall.SiluSmall*).
constexpr int kSiluThreads = 256;
constexpr int kSiluUnroll = 2;
constexpr int kSiluSmallThreads = 128;
template <class Tx, class To, int U>
__global__ void __launch_bounds__(kSiluThreads)
    silu_and_mul_kernel(To* out, DevRows out_rows, const Tx* x, DevRows x_rows, int64_t rows, int64_t d) {
  pdl_wait();
  constexpr int V = 16 / sizeof(Tx);
  const int64_t xs = x_rows.elem_stride, os = out_rows.elem_stride;
  const int64_t step = int64_t(blockDim.x) * V;
  const int64_t first = int64_t(blockIdx.x) * U * step + int64_t(threadIdx.x) * V;
  if (first >= d) return;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const Tx* gate = x + x_rows.offset(r);
    const Tx* up = gate + d * xs;
    To* o = out + out_rows.offset(r);
    const bool vg = xs == 1 && aligned16_dev(gate), vu = xs == 1 && aligned16_dev(up);
    const bool vo = os == 1 && aligned16_dev(o);
    float g[U][V], u[U][V];
#pragma unroll
    for (int q = 0; q < U; ++q) {
      const int64_t i0 = first + q * step;
      if (i0 >= d) continue;
      load_chunk<V>(gate, xs, d, i0, vg, g[q]);
      load_chunk<V>(up, xs, d, i0, vu, u[q]);
    }
#pragma unroll
    for (int q = 0; q < U; ++q) {
      const int64_t i0 = first + q * step;
      if (i0 >= d) continue;
      float y[V];
#pragma unroll
      for (int k = 0; k < V; ++k)
        y[k] = silu_mul(g[q][k], u[q][k]);
      store_chunk<V>(o, os, d, i0, vo, y);
    }
  }
}

// ---- rotary embedding ---------------------------------------------------------------------------------
// neox: a chunk is V pairs (i, i + rot/2), i in [i0, i0 + V); GPT-J: V elements [e0, e0 + V) holding V / 2
// pairs (2j, 2j + 1). The rotation of a pair (a, b) by angle theta: (a cos - b sin, b cos + a sin), each
// product rounded, then the sum.
//
// One launch covers q and k; a CTA takes a token at a time. Its threads form a grid of (chunk of a head)
// x (head lane): a thread keeps one chunk position and walks the token's heads, q's then k's, kRopeUnroll
// at a time with all their loads issued before the math. The heads' loads never wait for the position:
// only the table's do, and a position outside the table only skips the stores.
struct Heads {
  int64_t tokens, heads, s0, s1, s2;  // [T, H, D] strides
};
Heads heads_of(const TensorView& t) { return Heads{t.shape[0], t.shape[1], t.stride[0], t.stride[1], t.stride[2]}; }

constexpr int kRopeThreads = 128;
constexpr int kRopeUnroll = 2;

template <class T>
__global__ void __launch_bounds__(kRopeThreads)
    rope_kernel(T* q, Heads hq, T* k, Heads hk, const int32_t* pos, int64_t pos_stride, const float* cs,
                int64_t cs_s0, int64_t cs_s1, int64_t max_pos, int64_t rot, bool neox) {
  pdl_wait();
  constexpr int V = 16 / sizeof(T);
  const int64_t half = rot / 2;
  const int64_t chunks = neox ? (half + V - 1) / V : (rot + V - 1) / V;
  const int64_t cstep = chunks < int64_t(blockDim.x) ? chunks : int64_t(blockDim.x);  // threads across chunks
  const int64_t lanes = blockDim.x / cstep;                                            // threads across heads
  const int64_t tc = threadIdx.x % cstep, hl = threadIdx.x / cstep;
  if (hl >= lanes) return;
  const int64_t heads = hq.heads + hk.heads;
  const bool contiguous = hq.s2 == 1 && (hk.heads == 0 || hk.s2 == 1);
  for (int64_t tok = blockIdx.x; tok < hq.tokens; tok += gridDim.x) {
    const int64_t p = pos[tok * pos_stride];
    // Positions come from the engine and are not checked on the host for device tensors; one outside
    // the table leaves its token untouched rather than read out of bounds.
    const bool ok = p >= 0 && p < max_pos;
    const float* cos_row = cs + (ok ? p : 0) * cs_s0;
    const float* sin_row = cos_row + half * cs_s1;
    const bool vc = cs_s1 == 1 && aligned16_dev(cos_row) && aligned16_dev(sin_row);
    for (int64_t c = tc; c < chunks; c += cstep) {
      for (int64_t h0 = hl; h0 < heads; h0 += kRopeUnroll * lanes) {
        T* head[kRopeUnroll];
        float a[kRopeUnroll][V], b[kRopeUnroll][V];
#pragma unroll
        for (int uu = 0; uu < kRopeUnroll; ++uu) {
          const int64_t h = h0 + uu * lanes;
          head[uu] = nullptr;
          if (h >= heads) continue;
          head[uu] = h < hq.heads ? q + tok * hq.s0 + h * hq.s1 : k + tok * hk.s0 + (h - hq.heads) * hk.s1;
          const int64_t s2 = h < hq.heads ? hq.s2 : hk.s2;
          if (neox) {
            const int64_t i0 = c * V;
            T* second = head[uu] + half * s2;
            load_chunk<V>(head[uu], s2, half, i0, contiguous && aligned16_dev(head[uu]), a[uu]);
            load_chunk<V>(second, s2, half, i0, contiguous && aligned16_dev(second), b[uu]);
          } else {
            load_chunk<V>(head[uu], s2, rot, c * V, contiguous && aligned16_dev(head[uu]), a[uu]);
          }
        }
        if (neox) {
          float co[V], si[V];
          load_chunk<V>(cos_row, cs_s1, half, c * V, vc, co);
          load_chunk<V>(sin_row, cs_s1, half, c * V, vc, si);
#pragma unroll
          for (int uu = 0; uu < kRopeUnroll; ++uu) {
            if (head[uu] == nullptr || !ok) continue;
            const int64_t s2 = h0 + uu * lanes < hq.heads ? hq.s2 : hk.s2;
            const bool v1 = contiguous && aligned16_dev(head[uu]), v2 = contiguous && aligned16_dev(head[uu] + half * s2);
#pragma unroll
            for (int e = 0; e < V; ++e) rotate_pair(a[uu][e], b[uu][e], co[e], si[e], a[uu][e], b[uu][e]);
            store_chunk<V>(head[uu], s2, half, c * V, v1, a[uu]);
            store_chunk<V>(head[uu] + half * s2, s2, half, c * V, v2, b[uu]);
          }
        } else {
          const int64_t e0 = c * V;
          float co[V / 2], si[V / 2];
#pragma unroll
          for (int j = 0; j < V / 2; ++j) {
            const int64_t pair = e0 / 2 + j;
            co[j] = 2 * pair < rot ? cos_row[pair * cs_s1] : 0.0f;
            si[j] = 2 * pair < rot ? sin_row[pair * cs_s1] : 0.0f;
          }
#pragma unroll
          for (int uu = 0; uu < kRopeUnroll; ++uu) {
            if (head[uu] == nullptr || !ok) continue;
            const int64_t s2 = h0 + uu * lanes < hq.heads ? hq.s2 : hk.s2;
#pragma unroll
            for (int j = 0; j < V / 2; ++j)
              if (2 * (e0 / 2 + j) < rot)
                rotate_pair(a[uu][2 * j], a[uu][2 * j + 1], co[j], si[j], a[uu][2 * j], a[uu][2 * j + 1]);
            store_chunk<V>(head[uu], s2, rot, e0, contiguous && aligned16_dev(head[uu]), a[uu]);
          }
        }
      }
    }
  }
}

// The common layout (neox, every head's elements contiguous, the heads, both halves and the table's cos and
// sin rows on 16-byte boundaries): a flat walk over items (token, head, chunk), item i = (token * heads + h)
// * cpr + c with cpr = rot / 2 / V chunks a half. A CTA of kRopeFlatThreads threads takes kRopeFlatItems
// * kRopeFlatThreads consecutive items, a thread every kRopeFlatThreads-th of them, and issues the loads of
// all its items (both halves, then the table's cos and sin) before any math: no CTA a token, so no
// token's 40-odd heads wait on one short-lived CTA. The rotation is rope_kernel's, on the same floats,
// so the bits are the same (OpsCuda.RotaryFlatMatchesGeneral); BIK_ROPE_FLAT=0 keeps rope_kernel.
constexpr int kRopeFlatThreads = 256;
constexpr int kRopeFlatItems = 4;

template <class T>
__global__ void __launch_bounds__(kRopeFlatThreads)
    rope_flat_kernel(T* q, Heads hq, T* k, Heads hk, const int32_t* pos, int64_t pos_stride, const float* cs,
                     int64_t cs_s0, int64_t max_pos, int half, int cpr, int heads, int total) {
  pdl_wait();
  constexpr int V = 16 / sizeof(T), U = kRopeFlatItems;
  constexpr int CV = V / 4;  // 16-byte vectors of V floats of the table
  const int first = int(blockIdx.x) * (kRopeFlatThreads * U) + int(threadIdx.x);
  T* head[U];
  bool ok[U];
  uint4 a[U], b[U], co[U][CV], si[U][CV];
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int i = first + u * kRopeFlatThreads;
    const bool valid = i < total;
    const int c = valid ? i % cpr : 0, th = valid ? i / cpr : 0;
    const int h = th % heads, tok = th / heads;
    head[u] = (h < hq.heads ? q + tok * hq.s0 + h * hq.s1 : k + tok * hk.s0 + (h - hq.heads) * hk.s1) + c * V;
    a[u] = ld16_if(head[u], valid);
    b[u] = ld16_if(head[u] + half, valid);
    const int64_t p = valid ? pos[tok * pos_stride] : 0;
    // A position outside the table leaves its token untouched, as in rope_kernel.
    ok[u] = valid && p >= 0 && p < max_pos;
    const float* cos_row = cs + (ok[u] ? p : 0) * cs_s0 + c * V;
#pragma unroll
    for (int j = 0; j < CV; ++j) {
      co[u][j] = ld16_if(cos_row + 4 * j, ok[u]);
      si[u][j] = ld16_if(cos_row + half + 4 * j, ok[u]);
    }
  }
#pragma unroll
  for (int u = 0; u < U; ++u) {
    if (!ok[u]) continue;
    float x1[V], x2[V], c[V], s[V], r1[V], r2[V];
    unpack<T, V>(a[u], x1);
    unpack<T, V>(b[u], x2);
#pragma unroll
    for (int j = 0; j < CV; ++j) {
      float c4[4], s4[4];
      unpack<float, 4>(co[u][j], c4);
      unpack<float, 4>(si[u][j], s4);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        c[4 * j + e] = c4[e];
        s[4 * j + e] = s4[e];
      }
    }
#pragma unroll
    for (int e = 0; e < V; ++e) rotate_pair(x1[e], x2[e], c[e], s[e], r1[e], r2[e]);
    store_flat<T, V>(head[u], r1);
    store_flat<T, V>(head[u] + half, r2);
  }
}

// Whether rope_flat_kernel applies: neox, 16-byte chunks everywhere, and an item count that fits an int.
bool rope_flat_ok(const TensorView& q, const Heads& hq, const TensorView& k, const Heads& hk,
                  const TensorView& cos_sin, int64_t rot, bool neox) {
  const int64_t V = 16 / dtype_size(q.dtype), half = rot / 2;
  auto heads_ok = [&](const TensorView& t, const Heads& h) {
    return h.heads == 0 || (h.s2 == 1 && aligned16(t.data) && h.s0 % V == 0 && h.s1 % V == 0);
  };
  const int64_t heads = hq.heads + hk.heads;
  return neox && env_switch_on("BIK_ROPE_FLAT") && half % V == 0 && heads_ok(q, hq) && heads_ok(k, hk) &&
         cos_sin.stride[1] == 1 && aligned16(cos_sin.data) && cos_sin.stride[0] % 4 == 0 &&
         hq.tokens * heads * (half / V) < (int64_t(1) << 31) - int64_t(kRopeFlatThreads) * kRopeFlatItems;
}

// ---- embedding ----------------------------------------------------------------------------------------
// out[t, :] = table[ids[t], :]. A kernel cannot throw: an id outside [0, V) writes a zero row and
// records the lowest such position in *bad (an integer atomic: exact in any order); the host checks it.
// With out in the table's dtype a gather moves the bytes unchanged (as the CPU backend does: a round
// trip through F32 could change a NaN's payload); into F32 each element is widened exactly.
template <class Tt, class To>
__global__ void embedding_kernel(To* out, int64_t os0, int64_t os1, const int32_t* ids, int64_t ids_stride,
                                 const Tt* table, int64_t ts0, int64_t ts1, int64_t vocab, int64_t tokens, int64_t d,
                                 int* bad) {
  pdl_wait();
  constexpr int V = 16 / sizeof(Tt);
  const int64_t chunks = (d + V - 1) / V;
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= chunks) return;
  const int64_t i0 = c * V;
  for (int64_t t = blockIdx.y; t < tokens; t += gridDim.y) {
    const int64_t id = ids[t * ids_stride];
    To* o = out + t * os0;
    const bool in_table = id >= 0 && id < vocab;
    if (!in_table && bad != nullptr && i0 == 0) atomicMin(bad, int(t));
    if constexpr (std::is_same_v<Tt, To>) {
      uint4 u = make_uint4(0, 0, 0, 0);
      if (in_table) {
        const Tt* row = table + id * ts0;
        u = load_raw(row, ts1, d, i0, ts1 == 1 && aligned16_dev(row));
      }
      store_raw(o, os1, d, i0, os1 == 1 && aligned16_dev(o), u);
    } else {
      float v[V] = {};
      if (in_table) {
        const Tt* row = table + id * ts0;
        load_chunk<V>(row, ts1, d, i0, ts1 == 1 && aligned16_dev(row), v);
      }
      store_chunk<V>(o, os1, d, i0, os1 == 1 && aligned16_dev(o), v);
    }
  }
}

// Table and out rows contiguous, 16-byte aligned, whole 16-byte vectors (the common layout): a thread
// copies chunk c of U tokens at a time, all U ids and then all U rows' loads in flight before the first
// store, so a CTA of kEmbedThreads threads moves U x 2 KiB per round trip instead of 2 KiB.
constexpr int kEmbedThreads = 128;
constexpr int kEmbedTokens = 4;
template <class Tt, class To, int U>
__global__ void __launch_bounds__(kEmbedThreads)
    embedding_flat_kernel(To* out, int64_t os0, const int32_t* ids, int64_t ids_stride, const Tt* table,
                          int64_t ts0, int64_t vocab, int64_t tokens, int64_t d, int* bad) {
  pdl_wait();
  constexpr int V = 16 / sizeof(Tt);
  const int64_t c = int64_t(blockIdx.x) * kEmbedThreads + threadIdx.x;
  if (c * V >= d) return;
  const int64_t i0 = c * V;
  for (int64_t t0 = int64_t(blockIdx.y) * U; t0 < tokens; t0 += int64_t(gridDim.y) * U) {
    int64_t id[U];
#pragma unroll
    for (int u = 0; u < U; ++u) id[u] = t0 + u < tokens ? int64_t(ids[(t0 + u) * ids_stride]) : 0;
    uint4 raw[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const bool ok = t0 + u < tokens && id[u] >= 0 && id[u] < vocab;
      raw[u] = ld16_if(table + id[u] * ts0 + i0, ok);  // zeros for an id outside the table
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t t = t0 + u;
      if (t >= tokens) continue;
      if ((id[u] < 0 || id[u] >= vocab) && bad != nullptr && i0 == 0) atomicMin(bad, int(t));
      To* o = out + t * os0 + i0;
      if constexpr (std::is_same_v<Tt, To>) {
        st_global_16(o, raw[u]);  // one 16-byte store: st16 here compiled to four 4-byte ones
      } else {
        float v[V];
        unpack<Tt, V>(raw[u], v);
        store_flat<To, V>(o, v);
      }
    }
  }
}

}  // namespace

void silu_and_mul(const TensorView& out, const TensorView& x, Stream s) {
  const int64_t d = out.size(-1), rows = out.numel() / d;
  dispatch_float(x.dtype, [&](auto xt) {
    using Tx = decltype(xt);
    constexpr int V = 16 / sizeof(Tx);
    const int64_t chunks = (d + V - 1) / V;
    // Few rows: U = 1 on smaller CTAs (kSiluSmallThreads, or BIK_SILU_SMALL_THREADS = 32, 64, 128 or 256)
    // while the rows' CTAs fit the SMs one an SM. BIK_SILU_SMALL=0 keeps the default launch, =2 takes the
    // small one for every row count (tests compare the two).
    const int small_level = env_switch_level("BIK_SILU_SMALL");
    int small_threads = kSiluSmallThreads;
    if (const char* e = std::getenv("BIK_SILU_SMALL_THREADS")) {
      const int t = std::atoi(e);
      if (t == 32 || t == 64 || t == 128 || t == 256) small_threads = t;
    }
    const int64_t small_ctas = rows * ((chunks + small_threads - 1) / small_threads);
    const bool small =
        small_level == 2 || (small_level == 1 && rows > 0 && small_ctas <= use_device(x.device.index).sms);
    auto launch = [&](auto ot) {
      using To = decltype(ot);
      if (small) {
        launch_kernel(silu_and_mul_kernel<Tx, To, 1>, row_grid(chunks, rows, small_threads), small_threads, 0,
                      stream_of(s), out.ptr<To>(), DevRows(out), x.ptr<const Tx>(), DevRows(x), rows, d);
        BIK_CUDA_LAUNCH_CHECK();
        return;
      }
      launch_kernel(silu_and_mul_kernel<Tx, To, kSiluUnroll>, row_grid(chunks, rows, kSiluThreads * kSiluUnroll),
                    kSiluThreads, 0, stream_of(s), out.ptr<To>(), DevRows(out), x.ptr<const Tx>(), DevRows(x), rows, d);
      BIK_CUDA_LAUNCH_CHECK();
    };
    if (out.dtype == DType::F32) launch(float{});
    else launch(Tx{});
  });
}

void rotary_embedding(const TensorView& q, const TensorView& k, const TensorView& positions,
                      const TensorView& cos_sin, bool neox, Stream s) {
  const int64_t rot = cos_sin.shape[1];
  const bool has_k = (k.ndim != 0 || k.data != nullptr) && k.numel() != 0;
  if (rot == 0 || (q.numel() == 0 && !has_k)) return;
  dispatch_float(q.dtype, [&](auto qt) {
    using T = decltype(qt);
    const Heads hq = heads_of(q);
    Heads hk = has_k ? heads_of(k) : Heads{hq.tokens, 0, 0, 0, 1};
    const int64_t tokens = hq.tokens;
    if (tokens == 0) return;
    if (rope_flat_ok(q, hq, has_k ? k : q, hk, cos_sin, rot, neox)) {
      constexpr int V = 16 / sizeof(T);
      const int heads = int(hq.heads + hk.heads), cpr = int(rot / 2 / V);
      const int64_t total = tokens * heads * cpr;
      if (total == 0) return;
      const int64_t per_cta = int64_t(kRopeFlatThreads) * kRopeFlatItems;
      launch_kernel(rope_flat_kernel<T>, unsigned((total + per_cta - 1) / per_cta), kRopeFlatThreads, 0, stream_of(s),
                    q.ptr<T>(), hq, has_k ? k.ptr<T>() : nullptr, hk, positions.ptr<const int32_t>(),
                    positions.stride[0], cos_sin.ptr<const float>(), cos_sin.stride[0], cos_sin.shape[0], int(rot / 2),
                    cpr, heads, int(total));
      BIK_CUDA_LAUNCH_CHECK();
      return;
    }
    launch_kernel(rope_kernel<T>, grid_for(tokens), kRopeThreads, 0, stream_of(s), q.ptr<T>(), hq,
                  has_k ? k.ptr<T>() : nullptr, hk, positions.ptr<const int32_t>(), positions.stride[0],
                  cos_sin.ptr<const float>(), cos_sin.stride[0], cos_sin.stride[1], cos_sin.shape[0], rot, neox);
    BIK_CUDA_LAUNCH_CHECK();
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
      // The common layout: embedding_flat_kernel, kEmbedTokens tokens a thread once that still gives
      // four CTAs an SM. BIK_EMBEDDING_FLAT=0 keeps the general kernel (the same bytes either way).
      const int64_t ets = dtype_size(table.dtype), eos = dtype_size(out.dtype);
      const bool flat = env_switch_on("BIK_EMBEDDING_FLAT") && d > 0 && (table.stride[1] == 1 || d == 1) &&
                        (out.stride[1] == 1 || d == 1) && aligned16(table.data) && aligned16(out.data) &&
                        (d * ets) % 16 == 0 && (d * eos) % 16 == 0 && (table.stride[0] * ets) % 16 == 0 &&
                        (out.stride[0] * eos) % 16 == 0;
      if (flat) {
        if (tokens == 0) return;
        const int64_t bx = (d / V + kEmbedThreads - 1) / kEmbedThreads;
        const int sms = use_device(table.device.index).sms;
        auto go = [&](auto u) {
          constexpr int U = decltype(u)::value;
          const int64_t by = (tokens + U - 1) / U;
          const dim3 grid(unsigned(bx), unsigned(by < 65535 ? by : 65535));
          launch_kernel(embedding_flat_kernel<Tt, To, U>, grid, kEmbedThreads, 0, st, out.ptr<To>(), out.stride[0],
                        ids.ptr<const int32_t>(), ids.stride[0], table.ptr<const Tt>(), table.stride[0], vocab, tokens,
                        d, bad);
          BIK_CUDA_LAUNCH_CHECK();
        };
        if ((tokens / kEmbedTokens) * bx >= 4 * int64_t(sms)) go(std::integral_constant<int, kEmbedTokens>{});
        else go(std::integral_constant<int, 1>{});
        return;
      }
      const int threads = 128;
      launch_kernel(embedding_kernel<Tt, To>, row_grid((d + V - 1) / V, tokens, threads), threads, 0, st, out.ptr<To>(),
                    out.stride[0], out.stride[1], ids.ptr<const int32_t>(), ids.stride[0], table.ptr<const Tt>(),
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

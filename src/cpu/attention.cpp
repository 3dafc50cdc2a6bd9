// Paged causal attention on the CPU, following policy::attention_plan exactly (see core/policy.h):
// per query row and head, the splits of the plan's grid of absolute positions (core/split_grid.h), tiles
// of key_tile keys inside a split, and the split results folded in increasing order. Threads take (row,
// head) pairs only; each pair's arithmetic is one sequential program, so the thread count never changes
// a bit.
#include <cmath>
#include <limits>
#include <vector>

#include "core/backend.h"
#include "core/policy.h"
#include "cpu/parallel.h"

namespace bik::cpu {
namespace {

template <class T>
float ld(const T* p, int64_t i) {
  return to_float(p[i]);
}
template <class T>
T st(float f);
template <>
bf16 st<bf16>(float f) {
  return to_bf16(f);
}
template <>
f16 st<f16>(float f) {
  return to_f16(f);
}

// The split state (m, l, acc) and the fixed fold of the plan; A and acc have D entries.
void fold(bool first, float& M, float& L, float* A, float m, float l, const float* acc, int64_t D) {
  if (first) {
    M = m;
    L = l;
    for (int64_t d = 0; d < D; ++d) A[d] = acc[d];
    return;
  }
  const float mn = std::max(M, m);
  const float a = std::exp(M - mn), b = std::exp(m - mn);
  L = std::fma(L, a, l * b);
  for (int64_t d = 0; d < D; ++d) A[d] = std::fma(A[d], a, acc[d] * b);
  M = mn;
}

template <class T>
void attention_typed(const AttentionArgs& a) {
  const policy::AttentionPlan plan = policy::attention_plan({}, a.q.dtype, a.head_dim);
  const int64_t D = a.head_dim, group = a.q_heads / a.kv_heads, bs = a.block_size;
  const policy::SplitGrid grid = a.split_len > 0 ? policy::uniform_split_grid(a.split_len) : plan.splits;
  const int64_t BK = plan.key_tile;
  const T* kc = a.k_cache.ptr<const T>();
  const T* vc = a.v_cache.ptr<const T>();
  const int64_t tok_stride = a.kv_heads * D, blk_stride = bs * tok_stride;  // caches are contiguous
  const int32_t* bt = a.block_tables.ptr<const int32_t>();
  const int64_t bt0 = a.block_tables.stride[0], bt1 = a.block_tables.stride[1];

  // Row t -> its sequence (rows of a sequence are contiguous).
  std::vector<int32_t> seq_of(size_t(a.tokens));
  for (int64_t s = 0; s < a.num_seqs; ++s)
    for (int32_t t = a.host_query_start_loc[size_t(s)]; t < a.host_query_start_loc[size_t(s + 1)]; ++t)
      seq_of[size_t(t)] = int32_t(s);

  parallel_for(a.tokens * a.q_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> q(static_cast<size_t>(D)), acc(static_cast<size_t>(D)), A(static_cast<size_t>(D)),
        sc(static_cast<size_t>(BK));
    for (int64_t w = begin; w < end; ++w) {
      const int64_t t = w / a.q_heads, h = w % a.q_heads, kvh = h / group;
      const int64_t s = seq_of[size_t(t)];
      const int64_t q0 = a.host_query_start_loc[size_t(s)], q_len = a.host_query_start_loc[size_t(s + 1)] - q0;
      const int64_t pos = int64_t(a.host_seq_lens[size_t(s)]) - q_len + (t - q0);
      const T* qrow = a.q.ptr<const T>() + t * a.q.stride[0] + h * a.q.stride[1];
      for (int64_t d = 0; d < D; ++d) q[size_t(d)] = ld(qrow, d);
      auto key_base = [&](int64_t kp) {
        const int64_t blk = bt[s * bt0 + (kp / bs) * bt1];
        return blk * blk_stride + (kp % bs) * tok_stride + kvh * D;
      };
      float M = 0, Lsum = 0;
      for (int j = 0; grid.begin(j) <= pos; ++j) {
        float m = -std::numeric_limits<float>::infinity(), l = 0;
        std::fill(acc.begin(), acc.end(), 0.0f);
        const int64_t split_end = std::min<int64_t>(grid.begin(j + 1), pos + 1);
        for (int64_t k0 = grid.begin(j); k0 < split_end; k0 += BK) {
          const int64_t k1 = std::min(k0 + BK, split_end);
          float mt = m;
          for (int64_t kp = k0; kp < k1; ++kp) {
            const T* krow = kc + key_base(kp);
            float dot = 0;
            for (int64_t d = 0; d < D; ++d) dot = std::fma(q[size_t(d)], ld(krow, d), dot);
            const float sv = dot * a.scale;
            sc[size_t(kp - k0)] = sv;
            mt = std::max(mt, sv);
          }
          const float alpha = std::exp(m - mt);  // 0 for the first tile (m = -inf)
          float tsum = 0;
          for (int64_t d = 0; d < D; ++d) acc[size_t(d)] *= alpha;
          for (int64_t kp = k0; kp < k1; ++kp) {
            const float p = std::exp(sc[size_t(kp - k0)] - mt);
            tsum += p;
            const T* vrow = vc + key_base(kp);
            for (int64_t d = 0; d < D; ++d) acc[size_t(d)] = std::fma(p, ld(vrow, d), acc[size_t(d)]);
          }
          l = std::fma(l, alpha, tsum);
          m = mt;
        }
        fold(j == 0, M, Lsum, A.data(), m, l, acc.data(), D);
      }
      T* orow = a.out.ptr<T>() + t * a.out.stride[0] + h * a.out.stride[1];
      for (int64_t d = 0; d < D; ++d) orow[d] = st<T>(A[size_t(d)] / Lsum);
    }
  });
}

template <class T>
void write_typed(const TensorView& kc, const TensorView& vc, const TensorView& k, const TensorView& v,
                 const TensorView& sm) {
  const int64_t T_ = k.shape[0], H = k.shape[1], D = k.shape[2];
  const int32_t* slots = sm.ptr<const int32_t>();
  for (int64_t t = 0; t < T_; ++t) {
    const int32_t slot = slots[t * sm.stride[0]];
    if (slot < 0) continue;
    T* kd = kc.ptr<T>() + int64_t(slot) * H * D;
    T* vd = vc.ptr<T>() + int64_t(slot) * H * D;
    for (int64_t h = 0; h < H; ++h)
      for (int64_t d = 0; d < D; ++d) {
        kd[h * D + d] = k.ptr<const T>()[t * k.stride[0] + h * k.stride[1] + d * k.stride[2]];
        vd[h * D + d] = v.ptr<const T>()[t * v.stride[0] + h * v.stride[1] + d * v.stride[2]];
      }
  }
}

}  // namespace

void write_kv_cache(const TensorView& k_cache, const TensorView& v_cache, const TensorView& k, const TensorView& v,
                    const TensorView& slot_mapping, Stream) {
  if (k.dtype == DType::BF16)
    write_typed<bf16>(k_cache, v_cache, k, v, slot_mapping);
  else
    write_typed<f16>(k_cache, v_cache, k, v, slot_mapping);
}

void paged_attention(const AttentionArgs& a, Stream) {
  if (a.q.dtype == DType::BF16)
    attention_typed<bf16>(a);
  else
    attention_typed<f16>(a);
}

}  // namespace bik::cpu

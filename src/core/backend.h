// The interface each backend implements. src/core/ops.cpp validates every argument (shapes, dtypes,
// devices) and normalises layouts before calling here, so backends may assume valid input.
#pragma once
#include <cstdint>
#include <optional>
#include <vector>

#include "bik/attention.h"
#include "bik/ops.h"
#include "bik/sampling.h"

namespace bik {

// A 2-D view [R, C] as the 3-D [1, R, C] of a batch of one (batch stride 0); 3-D views as they are.
inline TensorView as3d(const TensorView& t) {
  if (t.ndim == 3) return t;
  TensorView v = t;
  v.ndim = 3;
  v.shape = {1, t.shape[0], t.shape[1]};
  v.stride = {0, t.stride[0], t.stride[1]};
  return v;
}

// out[b] = a[b] * b[b]^T (+ bias), every view 3-D: a [B, M, K], w [B, N, K], out [B, M, N].
struct GemmArgs {
  TensorView out, a, w;
  std::optional<TensorView> bias;  // [N]
  int64_t batch = 1, m = 0, n = 0, k = 0;
};

// The GemmArgs of a 2-D product out [M, N] = a [M, K] * w [N, K]^T, no bias.
inline GemmArgs gemm_args_2d(const TensorView& out, const TensorView& a, const TensorView& w) {
  GemmArgs g;
  g.a = as3d(a);
  g.w = as3d(w);
  g.out = as3d(out);
  g.batch = 1;
  g.m = a.shape[0];
  g.k = a.shape[1];
  g.n = w.shape[0];
  return g;
}

// x is permuted so its first `kept` dims are the kept ones (in order) and the rest are reduced, in
// their original order; out has the kept dims' shape (keepdim already dropped).
struct ReduceArgs {
  TensorView out, x;
  int kept = 0;
  bool mean = false;
};

// paged_attention, validated (include/bik/attention.h). The metadata views may be on the GPU; host_*
// hold host copies of their values, already checked (block table entries in range for every block a
// sequence uses, 0 <= q_len <= seq_len).
struct AttentionArgs {
  TensorView out, q, k_cache, v_cache, block_tables, seq_lens, query_start_loc;
  float scale = 1.0f;
  int64_t split_len = 0;  // 0: the plan's split grid (policy::attention_plan); > 0: a uniform grid of this
                          // split length, for negative controls only
  int64_t tokens = 0, num_seqs = 0, q_heads = 0, kv_heads = 0, head_dim = 0, block_size = 0;
  int64_t max_q_len = 0, max_seq_len = 0;
  std::vector<int32_t> host_seq_lens, host_query_start_loc;
};

#define BIK_BACKEND_OPS                                                                             \
  void gemm(const GemmArgs& g, Stream s);                                                           \
  /* g.n = 2 d (w = [gate rows; up rows]), g.out [B, M, d] in the inputs' dtype, no bias: validated */ \
  void gemm_silu_and_mul(const GemmArgs& g, Stream s);                                              \
  void rms_norm(const TensorView& out, const TensorView& x, const TensorView& weight, float eps,   \
                const std::optional<TensorView>& residual, Stream s);                               \
  void layer_norm(const TensorView& out, const TensorView& x, const std::optional<TensorView>& w,  \
                  const std::optional<TensorView>& b, float eps, const TensorView* mean,           \
                  const TensorView* rstd, Stream s);                                                \
  void softmax(const TensorView& out, const TensorView& x, bool log, Stream s);                    \
  void reduce(const ReduceArgs& r, Stream s);                                                       \
  void argmax(const TensorView& out, const TensorView& x, Stream s);                               \
  void silu_and_mul(const TensorView& out, const TensorView& x, Stream s);                         \
  void rotary_embedding(const TensorView& q, const TensorView& k, const TensorView& positions,      \
                        const TensorView& cos_sin, bool neox, Stream s);                            \
  /* check_ids: false when the ids were checked on the host already */                               \
  void embedding(const TensorView& out, const TensorView& ids, const TensorView& table, bool check_ids, \
                 Stream s);                                                                           \
  /* params: host array of one entry per row, already validated */                                   \
  void sample(const TensorView& tokens, const TensorView& logits, const SamplingParams* params,       \
              Stream s);                                                                            \
  void logprobs(const TensorView& chosen, const TensorView& top_ids, const TensorView& top_vals,      \
                const TensorView& logits, const TensorView& tokens, Stream s);                      \
  void write_kv_cache(const TensorView& k_cache, const TensorView& v_cache, const TensorView& k,       \
                      const TensorView& v, const TensorView& slot_mapping, Stream s);                 \
  void paged_attention(const AttentionArgs& a, Stream s);                                              \
  /* partials [P, M, N] F32 with P a power of two, out [M, N], bias [N]: validated */                  \
  void sum_partials(const TensorView& out, const TensorView& partials,                                \
                    const std::optional<TensorView>& bias, Stream s);

namespace cpu {
BIK_BACKEND_OPS
}
namespace cuda {
BIK_BACKEND_OPS
// qkv_projection (include/bik/attention.h), validated, in one kernel where one applies (sm_90); false,
// with nothing launched, elsewhere: the caller then runs the composed calls.
bool qkv_projection_fused(const QkvProjection& a, Stream s);
}

}  // namespace bik

// The interface each backend implements. src/core/ops.cpp validates every argument (shapes, dtypes,
// devices) and normalises layouts before calling here, so backends may assume valid input.
#pragma once
#include <optional>

#include "bik/ops.h"
#include "bik/sampling.h"

namespace bik {

// out[b] = a[b] * b[b]^T (+ bias), every view 3-D: a [B, M, K], w [B, N, K], out [B, M, N].
struct GemmArgs {
  TensorView out, a, w;
  std::optional<TensorView> bias;  // [N]
  int64_t batch = 1, m = 0, n = 0, k = 0;
};

// x is permuted so its first `kept` dims are the kept ones (in order) and the rest are reduced, in
// their original order; out has the kept dims' shape (keepdim already dropped).
struct ReduceArgs {
  TensorView out, x;
  int kept = 0;
  bool mean = false;
};

#define BIK_BACKEND_OPS                                                                             \
  void gemm(const GemmArgs& g, Stream s);                                                           \
  void rms_norm(const TensorView& out, const TensorView& x, const TensorView& weight, float eps,   \
                const std::optional<TensorView>& residual, Stream s);                               \
  void layer_norm(const TensorView& out, const TensorView& x, const std::optional<TensorView>& w,  \
                  const std::optional<TensorView>& b, float eps, Stream s);                        \
  void softmax(const TensorView& out, const TensorView& x, bool log, Stream s);                    \
  void reduce(const ReduceArgs& r, Stream s);                                                       \
  void argmax(const TensorView& out, const TensorView& x, Stream s);                               \
  void silu_and_mul(const TensorView& out, const TensorView& x, Stream s);                         \
  void rotary_embedding(const TensorView& q, const TensorView& k, const TensorView& positions,      \
                        const TensorView& cos_sin, bool neox, Stream s);                            \
  void embedding(const TensorView& out, const TensorView& ids, const TensorView& table, Stream s);    \
  /* params: host array of one entry per row, already validated */                                   \
  void sample(const TensorView& tokens, const TensorView& logits, const SamplingParams* params,       \
              Stream s);                                                                            \
  void logprobs(const TensorView& chosen, const TensorView& top_ids, const TensorView& top_vals,      \
                const TensorView& logits, const TensorView& tokens, Stream s);

namespace cpu {
BIK_BACKEND_OPS
}
namespace cuda {
BIK_BACKEND_OPS
}

}  // namespace bik

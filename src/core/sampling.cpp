// Argument validation and dispatch for sampling and logprobs (include/bik/sampling.h).
#include "bik/sampling.h"

#include <cmath>

#include "core/backend.h"
#include "core/philox.h"

namespace bik {
namespace {

void check_logits(const char* op, const TensorView& logits) {
  BIK_CHECK(logits.ndim == 2, op, ": logits must be [B, V], got ", logits.str());
  BIK_CHECK(is_floating(logits.dtype), op, ": logits must be f32, f16 or bf16, got ", logits.str());
  BIK_CHECK(logits.shape[1] > 0, op, ": logits has an empty vocabulary: ", logits.str());
  BIK_CHECK(logits.data != nullptr || logits.numel() == 0, op, ": logits has no data (null pointer)");
}
void check_tokens(const char* op, const char* arg, const TensorView& t, const TensorView& logits) {
  BIK_CHECK(t.ndim == 1 && t.shape[0] == logits.shape[0] && t.dtype == DType::I32, op, ": ", arg,
            " must be i32[", logits.shape[0], "] (one per row of logits), got ", t.str());
  BIK_CHECK(t.device == logits.device, op, ": ", arg, " is on ", t.device.str(), " but logits is on ",
            logits.device.str());
  BIK_CHECK(t.data != nullptr || t.numel() == 0, op, ": ", arg, " has no data (null pointer)");
}

}  // namespace

float sampling_uniform(uint64_t seed, int64_t position, int64_t index) {
  return philox::to_unit(philox::sampling_block(seed, position, index / 4).v[index % 4]);
}

void sample(const TensorView& tokens, const TensorView& logits, const std::vector<SamplingParams>& params,
            Stream s) {
  const char* op = "sample";
  check_logits(op, logits);
  check_tokens(op, "tokens", tokens, logits);
  const int64_t b = logits.shape[0];
  BIK_CHECK(int64_t(params.size()) == b, op, ": ", params.size(), " sampling params for ", b,
            " rows of logits; pass one per row");
  for (int64_t i = 0; i < b; ++i) {
    const SamplingParams& p = params[size_t(i)];
    BIK_CHECK(std::isfinite(p.temperature) && p.temperature >= 0, op, ": row ", i,
              ": temperature must be finite and >= 0, got ", p.temperature);
    BIK_CHECK(p.top_k >= 0, op, ": row ", i, ": top_k must be >= 0 (0 = off), got ", p.top_k);
    BIK_CHECK(p.top_p > 0 && p.top_p <= 1, op, ": row ", i, ": top_p must be in (0, 1], got ", p.top_p);
    BIK_CHECK(p.min_p >= 0 && p.min_p <= 1, op, ": row ", i, ": min_p must be in [0, 1], got ", p.min_p);
    BIK_CHECK(p.position >= 0, op, ": row ", i, ": position must be >= 0, got ", p.position);
  }
  if (b == 0) return;
  if (logits.device.is_cpu())
    cpu::sample(tokens, logits, params.data(), s);
  else
    cuda::sample(tokens, logits, params.data(), s);
}

void logprobs(const TensorView& chosen, const TensorView& top_ids, const TensorView& top_vals,
              const TensorView& logits, const TensorView& tokens, Stream s) {
  const char* op = "logprobs";
  check_logits(op, logits);
  check_tokens(op, "tokens", tokens, logits);
  const int64_t b = logits.shape[0];
  BIK_CHECK(chosen.ndim == 1 && chosen.shape[0] == b && chosen.dtype == DType::F32, op, ": chosen must be f32[",
            b, "], got ", chosen.str());
  BIK_CHECK(top_ids.ndim == 2 && top_ids.shape[0] == b && top_ids.dtype == DType::I32, op,
            ": top_ids must be i32[", b, ", n], got ", top_ids.str());
  const int64_t n = top_ids.shape[1];
  BIK_CHECK(top_vals.ndim == 2 && top_vals.shape[0] == b && top_vals.shape[1] == n && top_vals.dtype == DType::F32,
            op, ": top_vals must be f32[", b, ", ", n, "] like top_ids, got ", top_vals.str());
  BIK_CHECK(n <= logits.shape[1], op, ": asked for the top ", n, " of a vocabulary of ", logits.shape[1]);
  for (const TensorView* t : {&chosen, &top_ids, &top_vals})
    BIK_CHECK(t->device == logits.device, op, ": outputs must be on ", logits.device.str(), ", got ", t->str());
  if (b == 0) return;
  if (logits.device.is_cpu())
    cpu::logprobs(chosen, top_ids, top_vals, logits, tokens, s);
  else
    cuda::logprobs(chosen, top_ids, top_vals, logits, tokens, s);
}

}  // namespace bik

// Token sampling and logprobs, batch-invariant by construction.
//
// The random numbers of a row come from a counter-based generator (Philox4x32-10) keyed by the request's
// seed and counted by the absolute position of the token being sampled and the vocabulary index, never
// by the row's slot in the batch or a global stream. Sampling uses the Gumbel-max form: the token is
//   argmax over the kept tokens i of  logit_i / temperature + g_i,   g_i = -log(-log(u_i)),
// which draws exactly from softmax(logit / temperature) restricted to the kept set, with no cumulative
// sum whose order could vary. Ties resolve to the lowest index. A row without a filter (temperature > 0,
// top_k 0 or >= V, top_p 1, min_p 0) takes the same form in two steps, groups of 16 tokens first (a
// group's Gumbel score from its mass, summed by a fixed tree), then the token inside the winning group
// (src/core/plain_draw.h): the same distribution, a sixteenth of the random numbers.
#pragma once
#include <cstdint>
#include <vector>

#include "bik/ops.h"

namespace bik {

struct SamplingParams {
  float temperature = 1.0f;  // 0: greedy (argmax of the logits; the filters below are then ignored)
  int32_t top_k = 0;         // keep the k largest logits (ties: lower index first); 0 keeps all
  float top_p = 1.0f;        // then keep the smallest prefix (by probability) whose mass reaches top_p
  float min_p = 0.0f;        // then keep tokens with probability >= min_p * (largest probability)
  uint64_t seed = 0;         // the request's seed
  int64_t position = 0;      // absolute position of the token being sampled (prompt length + generated)
};

// tokens: I32 [B]; logits: [B, V] (f32, f16 or bf16, any strides); params: B entries, one per row.
// Filters apply in the order top_k, top_p (on the distribution renormalised after top_k), min_p.
void sample(const TensorView& tokens, const TensorView& logits, const std::vector<SamplingParams>& params,
            Stream s = {});

// Logprobs of the raw distribution (log_softmax of the logits, temperature 1, no filters):
// chosen: F32 [B], the logprob of tokens[b]; top_ids: I32 [B, n] and top_vals: F32 [B, n], the n most
// likely tokens: the n largest logits (NaN first; equal logits: lower index first), so in decreasing
// logprob. n may be 0. A token outside [0, V) is an error naming the first such row; on CUDA the call
// therefore waits for its kernel (the check's flag sits in mapped host memory: nothing else is queued).
void logprobs(const TensorView& chosen, const TensorView& top_ids, const TensorView& top_vals,
              const TensorView& logits, const TensorView& tokens, Stream s = {});

// The generator, exposed for tests and for other backends: the uniform in (0, 1) that token `index`
// of the vocabulary gets for (seed, position).
float sampling_uniform(uint64_t seed, int64_t position, int64_t index);

}  // namespace bik

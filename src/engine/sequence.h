// The state of one request as it moves through the engine: request -> scheduler -> runner -> sampler ->
// request. The sequence owns its token ids (prompt then generated), how many of them already have their
// keys and values in the KV cache, and its block table.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace bik::engine {

struct RequestParams {
  float temperature = 1.0f;  // 0: greedy
  int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  uint64_t seed = 0;                 // the request's seed; the token at position p draws from (seed, p)
  int32_t max_tokens = 16;           // generated tokens at most
  std::vector<int32_t> stop_ids;     // generation stops after emitting one of these (it is kept)
  int32_t top_logprobs = 0;          // how many most likely tokens to report per generated token
  bool prompt_logprobs = false;      // also report log p(prompt[i] | prompt[0..i)) for i >= 1
};

enum class SeqStatus { Waiting, Running, Finished };
// Abort: cancelled by the caller (LLMEngine::abort) before a stop token or the length limit.
enum class FinishReason { None, Stop, Length, Abort };

inline const char* finish_reason_name(FinishReason r) {
  return r == FinishReason::Stop     ? "stop"
         : r == FinishReason::Length ? "length"
         : r == FinishReason::Abort  ? "abort"
                                     : "none";
}

struct TopLogprob {
  int32_t id;
  float logprob;
};

struct Sequence {
  int64_t id = 0;
  RequestParams params;
  std::vector<int32_t> tokens;  // prompt, then generated
  int64_t num_prompt = 0;
  SeqStatus status = SeqStatus::Waiting;
  FinishReason finish = FinishReason::None;

  // Tokens whose keys and values are in the cache (computed here or found in the prefix cache).
  int64_t num_computed = 0;
  // Of those, how many came from the prefix cache on the last admission (statistics only).
  int64_t num_cached = 0;
  int32_t num_preemptions = 0;

  std::vector<int32_t> block_table;  // physical blocks, in position order
  // Blocks of block_table (a prefix) whose hash is registered in the prefix cache, and the last hash.
  int64_t num_hashed_blocks = 0;
  uint64_t last_hash = 0;

  std::vector<float> logprobs;                       // one per generated token
  std::vector<std::vector<TopLogprob>> top;          // params.top_logprobs entries per generated token
  std::vector<float> prompt_logprobs;                // [num_prompt]; entry 0 is unused (NaN)

  int64_t num_tokens() const { return int64_t(tokens.size()); }
  int64_t num_generated() const { return num_tokens() - num_prompt; }
  std::vector<int32_t> generated() const { return {tokens.begin() + num_prompt, tokens.end()}; }
  bool finished() const { return status == SeqStatus::Finished; }
};

}  // namespace bik::engine

// LLMEngine: requests in, tokens and logprobs out. One step is
//   Scheduler (which rows run) -> runner (ModelRunner::forward on the paged KV cache: a LlamaModel, or a TpModel) -> sampler (bik::sample and
//   bik::logprobs, keyed by the request's seed and the token's absolute position) -> the sequences.
// A request's tokens and logprobs do not depend on what else is in the batch, the chunk size, the prefix
// cache or preemption: tests/cpu/test_engine.cpp checks each of these bit for bit.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "engine/kv_cache.h"
#include "engine/model.h"
#include "engine/scheduler.h"
#include "engine/sequence.h"

namespace bik::engine {

struct EngineConfig {
  int64_t block_size = 16;
  int64_t num_blocks = 0;                     // 0: as many as kv_cache_bytes holds
  int64_t kv_cache_bytes = int64_t(256) << 20;
  int64_t max_num_batched_tokens = 512;       // token budget of a step = prefill chunk size
  int64_t max_num_seqs = 256;
  bool chunked_prefill = true;
  bool prefix_caching = true;
  int64_t max_model_len = 0;                  // 0: the model's rotary table, capped by the cache size
};

// What one step produced for one request: at most one new token.
struct StepOutput {
  int64_t request_id = 0;
  int32_t token = 0;
  float logprob = 0.0f;
  std::vector<TopLogprob> top;
  bool finished = false;
  FinishReason finish = FinishReason::None;
};

struct RequestOutput {
  int64_t request_id = 0;
  std::vector<int32_t> prompt, tokens;  // tokens: the generated ones
  std::vector<float> logprobs;
  std::vector<std::vector<TopLogprob>> top;
  std::vector<float> prompt_logprobs;    // when requested; entry 0 is NaN
  FinishReason finish = FinishReason::None;
  int64_t num_cached_tokens = 0;         // prompt tokens found in the prefix cache on the last admission
  int32_t num_preemptions = 0;
};

struct EngineStats {
  int64_t steps = 0, scheduled_tokens = 0, sampled_tokens = 0, preemptions = 0, prefix_cache_hit_blocks = 0;
};

class LLMEngine {
 public:
  LLMEngine(const ModelRunner& model, const EngineConfig& cfg);

  // Returns the request id (0, 1, 2, ... in order of arrival).
  int64_t add_request(const std::vector<int32_t>& prompt, const RequestParams& params);
  bool has_unfinished() const { return scheduler_->has_unfinished(); }
  std::vector<StepOutput> step();
  RequestOutput output(int64_t request_id) const;
  // Forgets a finished request (generate() does this for the requests it added).
  void erase(int64_t request_id);
  // Cancels an unfinished request between steps: it leaves the scheduler's queues, its KV blocks are
  // released (its full, computed blocks stay in the prefix cache for others) and it is finished with
  // FinishReason::Abort, keeping the tokens it produced so far; output() still answers and erase() must
  // still be called. No other request's numbers change. Aborting a request that already finished (it
  // keeps its finish reason) or an id the engine does not know (never added, or erased) does nothing: a
  // cancellation may race with the request's natural end. Not thread-safe, like every other method: call
  // it from the thread that calls step().
  void abort(int64_t request_id);
  // Adds the requests and steps until all are done; on_step (optional) sees every step's outputs.
  std::vector<RequestOutput> generate(const std::vector<std::vector<int32_t>>& prompts,
                                      const std::vector<RequestParams>& params,
                                      const std::function<void(const std::vector<StepOutput>&)>& on_step = {});

  const EngineConfig& config() const { return cfg_; }
  const EngineStats& stats() const { return stats_; }
  int64_t max_model_len() const { return max_model_len_; }
  int64_t num_blocks() const { return cache_.num_blocks; }
  int64_t num_free_blocks() const { return blocks_->num_free_blocks(); }

 private:
  // What a logit row is for: sampling the sequence's next token, or the logprob of a known prompt token.
  struct LogitRow {
    Sequence* seq;
    bool sample;
    int64_t position;  // absolute position of the token the row scores
  };
  StepBatch prepare(const ScheduleOutput& sched, std::vector<LogitRow>& uses) const;

  const ModelRunner& model_;
  EngineConfig cfg_;
  int64_t max_model_len_ = 0;
  KvCache cache_;
  std::unique_ptr<BlockManager> blocks_;
  std::unique_ptr<Scheduler> scheduler_;
  std::map<int64_t, std::unique_ptr<Sequence>> seqs_;
  Tensor sampler_store_;  // device scratch of the sampler, reused across steps
  int64_t next_id_ = 0;
  EngineStats stats_;
};

}  // namespace bik::engine

// Continuous batching. Each step gets a budget of tokens; running sequences are served first (decodes,
// then prefills in progress), then waiting ones are admitted in arrival order. A prefill longer than the
// remaining budget is cut into chunks (chunked prefill). On admission the prefix cache may supply the
// first blocks of a prompt, which are then skipped. When the KV cache runs out of blocks, the most
// recently admitted running sequence is preempted: its blocks are released and it goes back to the
// front of the queue, to be recomputed from its tokens (prompt and generated so far) when it returns.
//
// None of this can change a request's numbers: every op is batch invariant, attention splits at fixed
// positions, and sampling is keyed by (seed, position). The scheduler only decides when work happens.
#pragma once
#include <cstdint>
#include <deque>
#include <vector>

#include "engine/kv_cache.h"
#include "engine/sequence.h"

namespace bik::engine {

struct SchedulerConfig {
  int64_t max_num_batched_tokens = 512;  // the token budget of one step (the chunk size)
  int64_t max_num_seqs = 256;            // sequences in one step at most
  bool chunked_prefill = true;           // false: a prompt is scheduled whole (alone if over the budget)
};

// One sequence's share of a step: rows tokens[start, start + num_new), start = seq->num_computed.
struct ScheduledSeq {
  Sequence* seq;
  int64_t start;
  int64_t num_new;
  bool samples() const { return start + num_new == seq->num_tokens(); }  // reaches the end: sample next
};

struct ScheduleOutput {
  std::vector<ScheduledSeq> seqs;
  int64_t num_tokens = 0;
  int64_t num_preempted = 0;
  bool empty() const { return seqs.empty(); }
};

class Scheduler {
 public:
  Scheduler(const SchedulerConfig& cfg, BlockManager& blocks);

  void add(Sequence* seq);
  bool has_unfinished() const { return !waiting_.empty() || !running_.empty(); }
  ScheduleOutput schedule();
  // After the runner and sampler: advances num_computed, registers newly full blocks in the prefix cache,
  // and releases the blocks of sequences that finished.
  void finish_step(const ScheduleOutput& out);
  // Between steps: takes an unfinished sequence out of the waiting or running queue, releases its blocks
  // (full blocks already registered stay in the prefix cache, reusable by others) and marks it finished.
  void abort(Sequence* seq);

  const SchedulerConfig& config() const { return cfg_; }
  int64_t num_waiting() const { return int64_t(waiting_.size()); }
  int64_t num_running() const { return int64_t(running_.size()); }
  int64_t total_preemptions() const { return preemptions_; }

 private:
  void preempt(Sequence* seq);

  SchedulerConfig cfg_;
  BlockManager& blocks_;
  std::deque<Sequence*> waiting_;
  std::vector<Sequence*> running_;  // admission order
  int64_t preemptions_ = 0;
};

}  // namespace bik::engine

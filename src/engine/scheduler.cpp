#include "engine/scheduler.h"

#include <algorithm>

#include "bik/error.h"

namespace bik::engine {

Scheduler::Scheduler(const SchedulerConfig& cfg, BlockManager& blocks) : cfg_(cfg), blocks_(blocks) {
  BIK_CHECK(cfg.max_num_batched_tokens > 0, "scheduler: the token budget must be positive, got ",
            cfg.max_num_batched_tokens);
  BIK_CHECK(cfg.max_num_seqs > 0, "scheduler: max_num_seqs must be positive, got ", cfg.max_num_seqs);
}

void Scheduler::add(Sequence* seq) {
  BIK_CHECK(seq->num_tokens() > 0, "scheduler: request ", seq->id, " has an empty prompt");
  BIK_CHECK(blocks_.blocks_for(seq->num_tokens() + 1) <= blocks_.num_blocks(), "scheduler: request ", seq->id,
            " has ", seq->num_tokens(), " tokens, more than the KV cache holds (", blocks_.num_blocks(), " blocks of ",
            blocks_.block_size(), ")");
  seq->status = SeqStatus::Waiting;
  waiting_.push_back(seq);
}

void Scheduler::preempt(Sequence* seq) {
  blocks_.release(*seq);
  seq->num_computed = 0;
  seq->status = SeqStatus::Waiting;
  ++seq->num_preemptions;
  ++preemptions_;
  running_.erase(std::find(running_.begin(), running_.end(), seq));
  waiting_.push_front(seq);
}

ScheduleOutput Scheduler::schedule() {
  ScheduleOutput out;
  int64_t budget = cfg_.max_num_batched_tokens;
  std::vector<Sequence*> scheduled;
  auto is_scheduled = [&](Sequence* s) { return std::find(scheduled.begin(), scheduled.end(), s) != scheduled.end(); };

  // 1. Running sequences: decodes first, then prefills in progress, each group in admission order.
  std::vector<Sequence*> order;
  for (Sequence* s : running_)
    if (s->num_tokens() - s->num_computed == 1) order.push_back(s);
  for (Sequence* s : running_)
    if (s->num_tokens() - s->num_computed > 1) order.push_back(s);
  for (Sequence* s : order) {
    if (budget == 0) break;
    if (s->status != SeqStatus::Running) continue;  // preempted earlier in this loop
    const int64_t remaining = s->num_tokens() - s->num_computed;
    const int64_t n = std::min(remaining, budget);
    bool ok = true;
    while (!blocks_.grow(*s, s->num_computed + n)) {
      // Out of blocks: preempt the latest admitted sequence not yet given work this step.
      Sequence* victim = nullptr;
      for (auto it = running_.rbegin(); it != running_.rend(); ++it)
        if (!is_scheduled(*it)) {
          victim = *it;
          break;
        }
      preempt(victim);  // never null: s itself is running and not scheduled
      ++out.num_preempted;
      if (victim == s) {
        ok = false;
        break;
      }
    }
    if (!ok) continue;
    out.seqs.push_back({s, s->num_computed, n});
    scheduled.push_back(s);
    budget -= n;
  }

  // 2. Waiting sequences, in order, unless this step had to preempt (the cache is full).
  while (out.num_preempted == 0 && budget > 0 && !waiting_.empty() && int64_t(running_.size()) < cfg_.max_num_seqs) {
    Sequence* s = waiting_.front();
    if (s->num_computed == 0 && s->block_table.empty() && !s->params.prompt_logprobs) blocks_.acquire_prefix(*s);
    const int64_t remaining = s->num_tokens() - s->num_computed;
    int64_t n = std::min(remaining, budget);
    if (!cfg_.chunked_prefill && n < remaining) {
      if (!out.seqs.empty()) {
        blocks_.release(*s);
        s->num_computed = 0;
        break;
      }
      n = remaining;  // alone in the step, over the budget
    }
    if (!blocks_.grow(*s, s->num_computed + n)) {
      blocks_.release(*s);
      s->num_computed = 0;
      break;
    }
    waiting_.pop_front();
    s->status = SeqStatus::Running;
    running_.push_back(s);
    out.seqs.push_back({s, s->num_computed, n});
    budget -= n;
  }
  // Rows go to the runner in running order: a fixed rule, though no number depends on it.
  for (const auto& sc : out.seqs) out.num_tokens += sc.num_new;
  BIK_CHECK(!out.seqs.empty() || !has_unfinished(), "scheduler: no progress possible (", waiting_.size(),
            " waiting, ", running_.size(), " running, ", blocks_.num_free_blocks(), " of ", blocks_.num_blocks(),
            " blocks free); the KV cache is too small");
  return out;
}

void Scheduler::finish_step(const ScheduleOutput& out) {
  for (const auto& sc : out.seqs) {
    Sequence* s = sc.seq;
    s->num_computed = sc.start + sc.num_new;
    blocks_.register_full_blocks(*s);
  }
  for (auto it = running_.begin(); it != running_.end();) {
    if ((*it)->finished()) {
      blocks_.release(**it);
      it = running_.erase(it);
    } else {
      ++it;
    }
  }
}

void Scheduler::abort(Sequence* seq) {
  BIK_CHECK(!seq->finished(), "scheduler: request ", seq->id, " already finished");
  if (auto w = std::find(waiting_.begin(), waiting_.end(), seq); w != waiting_.end()) waiting_.erase(w);
  if (auto r = std::find(running_.begin(), running_.end(), seq); r != running_.end()) running_.erase(r);
  blocks_.release(*seq);
  seq->status = SeqStatus::Finished;
}

}  // namespace bik::engine

#include "engine/engine.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "bik/error.h"
#include "bik/sampling.h"

namespace bik::engine {

LLMEngine::LLMEngine(const ModelRunner& model, const EngineConfig& cfg) : model_(model), cfg_(cfg) {
  BIK_CHECK(cfg_.block_size > 0, "engine: block_size must be positive, got ", cfg_.block_size);
  int64_t blocks = cfg_.num_blocks;
  if (blocks <= 0)
    blocks = KvCache::blocks_for_bytes(cfg_.kv_cache_bytes, model.num_layers(), cfg_.block_size, model.kv_heads(),
                                       model.head_dim(), DType::BF16);
  BIK_CHECK(blocks > 0, "engine: the KV cache budget holds no block");
  cache_ = model.make_cache(blocks, cfg_.block_size);
  blocks_ = std::make_unique<BlockManager>(blocks, cfg_.block_size, cfg_.prefix_caching);
  max_model_len_ = cfg_.max_model_len > 0 ? std::min(cfg_.max_model_len, model.max_positions()) : model.max_positions();
  max_model_len_ = std::min(max_model_len_, blocks * cfg_.block_size);
  SchedulerConfig sc;
  sc.max_num_batched_tokens = cfg_.max_num_batched_tokens;
  sc.max_num_seqs = cfg_.max_num_seqs;
  sc.chunked_prefill = cfg_.chunked_prefill;
  scheduler_ = std::make_unique<Scheduler>(sc, *blocks_);
}

int64_t LLMEngine::add_request(const std::vector<int32_t>& prompt, const RequestParams& params) {
  BIK_CHECK(!prompt.empty(), "engine: empty prompt");
  BIK_CHECK(int64_t(prompt.size()) < max_model_len_, "engine: the prompt has ", prompt.size(),
            " tokens; at most ", max_model_len_ - 1, " fit (max model length ", max_model_len_, ")");
  BIK_CHECK(params.max_tokens >= 1, "engine: max_tokens must be >= 1, got ", params.max_tokens);
  BIK_CHECK(params.top_logprobs >= 0, "engine: top_logprobs must be >= 0, got ", params.top_logprobs);
  BIK_CHECK(params.temperature >= 0 && std::isfinite(params.temperature), "engine: temperature must be >= 0, got ",
            params.temperature);
  BIK_CHECK(params.top_k >= 0, "engine: top_k must be >= 0, got ", params.top_k);
  BIK_CHECK(params.top_p > 0 && params.top_p <= 1, "engine: top_p must be in (0, 1], got ", params.top_p);
  BIK_CHECK(params.min_p >= 0 && params.min_p <= 1, "engine: min_p must be in [0, 1], got ", params.min_p);
  for (int32_t t : prompt)
    BIK_CHECK(t >= 0 && t < model_.vocab_size(), "engine: prompt token ", t, " is outside the vocabulary [0, ",
              model_.vocab_size(), ")");
  auto seq = std::make_unique<Sequence>();
  seq->id = next_id_++;
  seq->params = params;
  seq->tokens = prompt;
  seq->num_prompt = int64_t(prompt.size());
  if (params.prompt_logprobs)
    seq->prompt_logprobs.assign(prompt.size(), std::numeric_limits<float>::quiet_NaN());
  Sequence* s = seq.get();
  seqs_[s->id] = std::move(seq);
  scheduler_->add(s);
  return s->id;
}

StepBatch LLMEngine::prepare(const ScheduleOutput& sched, std::vector<LogitRow>& uses) const {
  StepBatch b;
  const int64_t bs = cfg_.block_size;
  b.query_start_loc.push_back(0);
  std::vector<int32_t> prompt_rows;
  std::vector<LogitRow> prompt_uses;
  for (const ScheduledSeq& sc : sched.seqs) {
    const Sequence& s = *sc.seq;
    const int64_t row0 = int64_t(b.token_ids.size());
    for (int64_t p = sc.start; p < sc.start + sc.num_new; ++p) {
      b.token_ids.push_back(s.tokens[size_t(p)]);
      b.positions.push_back(int32_t(p));
      b.slot_mapping.push_back(int32_t(s.block_table[size_t(p / bs)] * bs + p % bs));
      if (s.params.prompt_logprobs && p + 1 < s.num_prompt) {
        prompt_rows.push_back(int32_t(row0 + p - sc.start));
        prompt_uses.push_back({sc.seq, false, p + 1});
      }
    }
    b.query_start_loc.push_back(int32_t(b.token_ids.size()));
    b.seq_lens.push_back(int32_t(sc.start + sc.num_new));
    b.block_tables.push_back(s.block_table);
    if (sc.samples()) {
      b.logit_rows.push_back(int32_t(b.token_ids.size() - 1));
      uses.push_back({sc.seq, true, s.num_tokens()});
    }
  }
  // Sampling rows first, then prompt-logprob rows: the sampler takes the leading rows.
  b.logit_rows.insert(b.logit_rows.end(), prompt_rows.begin(), prompt_rows.end());
  uses.insert(uses.end(), prompt_uses.begin(), prompt_uses.end());
  return b;
}

std::vector<StepOutput> LLMEngine::step() {
  std::vector<StepOutput> outs;
  const ScheduleOutput sched = scheduler_->schedule();
  if (sched.empty()) return outs;
  ++stats_.steps;
  stats_.scheduled_tokens += sched.num_tokens;
  stats_.preemptions += sched.num_preempted;

  // Runner.
  std::vector<LogitRow> uses;
  const StepBatch batch = prepare(sched, uses);
  const Tensor logits = model_.forward(batch, cache_);

  // Sampler.
  const Device dev = model_.device();
  const int64_t R = int64_t(uses.size());
  int64_t num_sampling = 0, n_top = 0;
  std::vector<SamplingParams> params;
  std::vector<int32_t> host_tokens(static_cast<size_t>(R), 0);
  for (int64_t r = 0; r < R; ++r) {
    const LogitRow& u = uses[size_t(r)];
    if (u.sample) {
      ++num_sampling;
      const RequestParams& rp = u.seq->params;
      SamplingParams sp;
      sp.temperature = rp.temperature;
      sp.top_k = rp.top_k;
      sp.top_p = rp.top_p;
      sp.min_p = rp.min_p;
      sp.seed = rp.seed;
      sp.position = u.position;
      params.push_back(sp);
      n_top = std::max<int64_t>(n_top, rp.top_logprobs);
    } else {
      host_tokens[size_t(r)] = u.seq->tokens[size_t(u.position)];
    }
  }
  // Greedy steps in one read of the logits: when every sampling row is greedy, logprobs' top 1 is the token
  // (the first maximum, NaN first, ties to the lower index: the order of sample's greedy rows and of the
  // top ids alike) and its top value the chosen logprob (the same expression as `chosen`), so sample() is
  // skipped. A row's bits are those of sample() then logprobs() either way (the engine suite's
  // GreedyRowsEqualBesideSampledRows, and Sampling.GreedyTokenIsTheTopLogprob for the ops).
  const bool greedy_step =
      num_sampling > 0 && std::all_of(params.begin(), params.end(), [](const SamplingParams& p) {
        return p.temperature == 0.0f;
      });
  const int64_t n_out = greedy_step ? std::max<int64_t>(n_top, 1) : n_top;  // top columns computed
  std::vector<float> host_chosen(static_cast<size_t>(R));
  std::vector<int32_t> host_top_ids(static_cast<size_t>(R * n_out));
  std::vector<float> host_top_vals(static_cast<size_t>(R * n_out));
  if (R > 0) {
    // One device buffer, reused across steps, holds the sampler's outputs: tokens, chosen logprobs, top ids
    // and top logprobs (4-byte elements each).
    const int64_t words = R * (2 + 2 * n_out);
    if (sampler_store_.numel() < words)
      sampler_store_ = Tensor::empty({std::max(words, 2 * sampler_store_.numel())}, DType::I32, dev);
    int32_t* base = sampler_store_.ptr<int32_t>();
    const TensorView tokens(base, DType::I32, {R}, dev), chosen(base + R, DType::F32, {R}, dev);
    const TensorView top_ids(base + 2 * R, DType::I32, {R, n_out}, dev);
    const TensorView top_vals(base + 2 * R + R * n_out, DType::F32, {R, n_out}, dev);
    // A greedy step's sampling rows hold token 0 until logprobs has found theirs (any id in the vocabulary
    // passes its check; their `chosen` is then replaced).
    memcpy_bytes(tokens.data, dev, host_tokens.data(), Device::cpu(), R * 4);
    if (num_sampling > 0 && !greedy_step)
      sample(tokens.narrow(0, 0, num_sampling), logits.view().narrow(0, 0, num_sampling), params);
    logprobs(chosen, top_ids, top_vals, logits, tokens);
    if (!greedy_step) memcpy_bytes(host_tokens.data(), Device::cpu(), tokens.data, dev, R * 4);
    memcpy_bytes(host_chosen.data(), Device::cpu(), chosen.data, dev, R * 4);
    if (n_out > 0) {
      memcpy_bytes(host_top_ids.data(), Device::cpu(), top_ids.data, dev, R * n_out * 4);
      memcpy_bytes(host_top_vals.data(), Device::cpu(), top_vals.data, dev, R * n_out * 4);
    }
    if (greedy_step) {
      for (int64_t r = 0; r < num_sampling; ++r) {
        host_tokens[size_t(r)] = host_top_ids[size_t(r * n_out)];
        host_chosen[size_t(r)] = host_top_vals[size_t(r * n_out)];
      }
    }
  }

  // Back to the sequences.
  for (int64_t r = 0; r < R; ++r) {
    const LogitRow& u = uses[size_t(r)];
    Sequence& s = *u.seq;
    if (!u.sample) {
      s.prompt_logprobs[size_t(u.position)] = host_chosen[size_t(r)];
      continue;
    }
    const int32_t tok = host_tokens[size_t(r)];
    StepOutput o;
    o.request_id = s.id;
    o.token = tok;
    o.logprob = host_chosen[size_t(r)];
    for (int64_t j = 0; j < s.params.top_logprobs; ++j)
      o.top.push_back({host_top_ids[size_t(r * n_out + j)], host_top_vals[size_t(r * n_out + j)]});
    s.tokens.push_back(tok);
    s.logprobs.push_back(o.logprob);
    s.top.push_back(o.top);
    ++stats_.sampled_tokens;
    const auto& stop = s.params.stop_ids;
    if (std::find(stop.begin(), stop.end(), tok) != stop.end())
      s.finish = FinishReason::Stop;
    else if (s.num_generated() >= s.params.max_tokens || s.num_tokens() >= max_model_len_)
      s.finish = FinishReason::Length;
    if (s.finish != FinishReason::None) s.status = SeqStatus::Finished;
    o.finished = s.finished();
    o.finish = s.finish;
    outs.push_back(std::move(o));
  }
  scheduler_->finish_step(sched);
  stats_.prefix_cache_hit_blocks = blocks_->cache_hits();
  return outs;
}

RequestOutput LLMEngine::output(int64_t request_id) const {
  auto it = seqs_.find(request_id);
  BIK_CHECK(it != seqs_.end(), "engine: no request ", request_id);
  const Sequence& s = *it->second;
  RequestOutput o;
  o.request_id = s.id;
  o.prompt.assign(s.tokens.begin(), s.tokens.begin() + s.num_prompt);
  o.tokens = s.generated();
  o.logprobs = s.logprobs;
  o.top = s.top;
  o.prompt_logprobs = s.prompt_logprobs;
  o.finish = s.finish;
  o.num_cached_tokens = s.num_cached;
  o.num_preemptions = s.num_preemptions;
  return o;
}

void LLMEngine::erase(int64_t request_id) {
  auto it = seqs_.find(request_id);
  BIK_CHECK(it != seqs_.end(), "engine: no request ", request_id);
  BIK_CHECK(it->second->finished(), "engine: request ", request_id, " is still running");
  seqs_.erase(it);
}

void LLMEngine::abort(int64_t request_id) {
  auto it = seqs_.find(request_id);
  if (it == seqs_.end() || it->second->finished()) return;
  Sequence& s = *it->second;
  scheduler_->abort(&s);
  s.finish = FinishReason::Abort;
}

std::vector<RequestOutput> LLMEngine::generate(const std::vector<std::vector<int32_t>>& prompts,
                                               const std::vector<RequestParams>& params,
                                               const std::function<void(const std::vector<StepOutput>&)>& on_step) {
  BIK_CHECK(params.size() == prompts.size() || params.size() == 1, "engine: ", prompts.size(), " prompts but ",
            params.size(), " parameter sets");
  std::vector<int64_t> ids;
  for (size_t i = 0; i < prompts.size(); ++i)
    ids.push_back(add_request(prompts[i], params[params.size() == 1 ? 0 : i]));
  while (has_unfinished()) {
    auto outs = step();
    if (on_step) on_step(outs);
  }
  std::vector<RequestOutput> res;
  for (int64_t id : ids) {
    res.push_back(output(id));
    erase(id);
  }
  return res;
}

}  // namespace bik::engine

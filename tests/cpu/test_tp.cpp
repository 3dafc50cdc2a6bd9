// Tensor parallelism on the CPU (docs/engine.md, "Tensor parallelism"): K ranks emulated as threads.
// The row-parallel layers sum a fixed binary tree of 8 K-chunks shared by the local GEMM and the
// cross-rank sum, so TP = 1 (with the tree), 2, 4 and 8 must give the same logits bit for bit, in
// prefill and decode, for batches of several sequences, and the engine the same tokens and logprobs.
// Negative control: the naive row-parallel sum (one chain per rank over its K slice) must differ.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>

#include "bik/ops.h"
#include "cli.h"
#include "engine_fixtures.h"
#include "core/policy.h"
#include "engine/engine.h"
#include "engine/model.h"
#include "engine/tp.h"
#include "engine/tp_model.h"
#include "model_args.h"

namespace bik::engine {
namespace {

// The message of the exception f() throws, or "no error".
template <class F>
std::string message(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "no error";
}

// 8 query heads and 8 kv heads (or 4 with gqa) of 64, hidden 128, MLP 256: every TP size up to 8 fits.
ModelConfig tp_config(const std::string& arch = "llama", int64_t kv_heads = 8, int64_t inter = 256) {
  ModelConfig c = test_fixtures::tiny_model_config(128, 512, 1024, arch);
  c.intermediate = inter;
  c.heads = 8;
  c.kv_heads = kv_heads;
  c.validate();
  return c;
}

// Dummy weights have zero biases; give the q/k/v biases values so that slicing them is checked too.
Weights weights_for(const ModelConfig& c, uint64_t seed = 11) {
  Weights w = Weights::dummy(c, seed);
  std::mt19937 rng{static_cast<uint32_t>(seed)};
  std::normal_distribution<float> d(0.0f, 0.5f);
  for (int64_t l = 0; l < c.layers; ++l)
    for (const char* n : {"q", "k", "v"}) {
      const std::string name = "layers." + std::to_string(l) + ".attn." + n + "_bias";
      if (!w.has(name)) continue;
      const Tensor& t = w.get(name);
      for (int64_t i = 0; i < t.numel(); ++i) {
        if (t.dtype() == DType::F32)
          t.ptr<float>()[i] = d(rng);
        else
          t.ptr<bf16>()[i] = to_bf16(d(rng));
      }
    }
  return w;
}

std::unique_ptr<ModelRunner> make_model(const ModelConfig& c, const Weights& w, int size, int chunks) {
  if (size == 1) {
    TpConfig tc;
    tc.chunks = chunks;
    return std::make_unique<LlamaModel>(c, w, Device::cpu(), true, tc);
  }
  TpOptions o;
  o.size = size;
  o.chunks = chunks;
  return std::make_unique<TpModel>(c, w, Device::cpu(), o);
}

// The rows of one step: for each sequence, tokens [start, start + n) of `tokens[s]`; sequence s owns the
// KV blocks [s * 16, s * 16 + 16) of 16 positions. Every row's logits are returned.
StepBatch make_step(const std::vector<std::vector<int32_t>>& tokens, const std::vector<int64_t>& start,
                    const std::vector<int64_t>& n) {
  StepBatch b;
  b.query_start_loc.push_back(0);
  for (size_t s = 0; s < tokens.size(); ++s) {
    std::vector<int32_t> table;
    for (int32_t i = 0; i < 16; ++i) table.push_back(int32_t(s) * 16 + i);
    for (int64_t p = start[s]; p < start[s] + n[s]; ++p) {
      b.logit_rows.push_back(int32_t(b.token_ids.size()));
      b.token_ids.push_back(tokens[s][size_t(p)]);
      b.positions.push_back(int32_t(p));
      b.slot_mapping.push_back(table[size_t(p / 16)] * 16 + int32_t(p % 16));
    }
    b.query_start_loc.push_back(int32_t(b.token_ids.size()));
    b.seq_lens.push_back(int32_t(start[s] + n[s]));
    b.block_tables.push_back(table);
  }
  return b;
}

std::vector<float> host_floats(const Tensor& t) {
  const Tensor h = t.device().is_cpu() ? t : t.to(Device::cpu());
  return std::vector<float>(h.ptr<float>(), h.ptr<float>() + h.numel());
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

// Logits of three steps (a prefill of three sequences of 7, 33 and 2 tokens, then two decode steps of
// all three) for a model, in one vector.
std::vector<float> three_steps(const ModelRunner& m, const std::vector<std::vector<int32_t>>& tokens,
                               const std::vector<int64_t>& prompt = {7, 33, 2}) {
  KvCache cache = m.make_cache(64, 16);
  std::vector<float> all;
  auto append = [&](const StepBatch& b) {
    const auto l = host_floats(m.forward(b, cache));
    all.insert(all.end(), l.begin(), l.end());
  };
  append(make_step(tokens, {0, 0, 0}, prompt));
  append(make_step(tokens, prompt, {1, 1, 1}));
  append(make_step(tokens, {prompt[0] + 1, prompt[1] + 1, prompt[2] + 1}, {1, 1, 1}));
  return all;
}

std::vector<std::vector<int32_t>> random_tokens(int64_t vocab, uint32_t seed = 5) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> d(2, int32_t(vocab - 1));
  std::vector<std::vector<int32_t>> t(3, std::vector<int32_t>(256));
  for (auto& s : t)
    for (auto& x : s) x = d(rng);
  return t;
}

// ---- sum_partials -----------------------------------------------------------------------------------------

// The tree written out by recursion: tree(lo, n) = tree(lo, n/2) + tree(lo + n/2, n/2).
float tree_ref(const std::vector<float>& leaves, size_t lo, size_t n) {
  if (n == 1) return leaves[lo];
  return tree_ref(leaves, lo, n / 2) + tree_ref(leaves, lo + n / 2, n / 2);
}

// The ranks' host barrier: all arrive -> everyone goes on; a rank that never comes -> the waiter gives up
// after the timeout with a message (and the barrier stays aborted), instead of a hang.
TEST(HostBarrier, PassesWhenAllArriveAndTimesOutOtherwise) {
  HostBarrier two(2, std::chrono::milliseconds(2000));
  std::thread other([&] { two.wait(); });
  two.wait();
  other.join();

  HostBarrier lonely(2, std::chrono::milliseconds(50));
  const auto t0 = std::chrono::steady_clock::now();
  try {
    lonely.wait();
    FAIL() << "no timeout";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("waited 0.05 s at collective 0 for the other ranks (1 of 2 had arrived)"),
              std::string::npos)
        << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  try {
    lonely.wait();
    FAIL() << "an aborted barrier let a rank through";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("another rank failed"), std::string::npos) << e.what();
  }
}

TEST(HostBarrier, TimeoutFromTheEnvironment) {
  setenv("BIK_TP_TIMEOUT_S", "1.5", 1);
  EXPECT_EQ(HostBarrier::default_timeout().count(), 1500);
  setenv("BIK_TP_TIMEOUT_S", "soon", 1);
  try {
    HostBarrier::default_timeout();
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("BIK_TP_TIMEOUT_S must be a positive number of seconds, got 'soon'"),
              std::string::npos)
        << e.what();
  }
  unsetenv("BIK_TP_TIMEOUT_S");
  EXPECT_EQ(HostBarrier::default_timeout().count(), 600000);
}

TEST(SumPartials, FollowsTheFixedTreeAndAddsBiasOnce) {
  std::mt19937 rng(3);
  std::normal_distribution<float> d(0.0f, 1.0f);
  const int64_t m = 5, n = 37;
  for (int64_t p : {1, 2, 4, 8, 16}) {
    Tensor parts = Tensor::empty({p, m, n}, DType::F32);
    // Magnitudes spread over many binades, so that a different grouping would round differently.
    for (int64_t i = 0; i < parts.numel(); ++i) parts.ptr<float>()[i] = d(rng) * std::ldexp(1.0f, int(i % 23) - 11);
    Tensor bias = Tensor::empty({n}, DType::F32);
    for (int64_t i = 0; i < n; ++i) bias.ptr<float>()[i] = d(rng);
    Tensor out32 = Tensor::empty({m, n}, DType::F32), out16 = Tensor::empty({m, n}, DType::BF16);
    sum_partials(out32, parts, bias.view());
    sum_partials(out16, parts, bias.view());
    for (int64_t r = 0; r < m; ++r)
      for (int64_t c = 0; c < n; ++c) {
        std::vector<float> leaves;
        for (int64_t j = 0; j < p; ++j) leaves.push_back(parts.ptr<float>()[(j * m + r) * n + c]);
        const float want = tree_ref(leaves, 0, size_t(p)) + bias.ptr<float>()[c];
        ASSERT_EQ(std::memcmp(&out32.ptr<float>()[r * n + c], &want, 4), 0) << "p " << p << " at " << r << ", " << c;
        ASSERT_EQ(out16.ptr<bf16>()[r * n + c].bits, to_bf16(want).bits) << "p " << p;
      }
  }
}

TEST(SumPartials, SubtreesComposeAndStridesDoNotMatter) {
  std::mt19937 rng(4);
  std::normal_distribution<float> d(0.0f, 1.0f);
  const int64_t m = 6, n = 50;
  // Leaves held with a padded row stride: the same bits as the contiguous copy.
  Tensor padded = Tensor::empty_padded({8, m, n}, n + 3, DType::F32);
  Tensor dense = Tensor::empty({8, m, n}, DType::F32);
  for (int64_t j = 0; j < 8; ++j)
    for (int64_t r = 0; r < m; ++r)
      for (int64_t c = 0; c < n; ++c) {
        const float v = d(rng) * std::ldexp(1.0f, int((j * 7 + c) % 19) - 9);
        padded.ptr<float>()[(j * m + r) * (n + 3) + c] = v;
        dense.ptr<float>()[(j * m + r) * n + c] = v;
      }
  Tensor full = Tensor::empty({m, n}, DType::F32), strided = Tensor::empty({m, n}, DType::F32);
  sum_partials(full, dense);
  sum_partials(strided, padded);
  ASSERT_TRUE(same_bits(host_floats(full), host_floats(strided)));
  // Every split of the 8 leaves into 2, 4 or 8 contiguous subtrees, summed again: the same bits.
  for (int64_t ranks : {2, 4, 8}) {
    const int64_t per = 8 / ranks;
    Tensor subs = Tensor::empty({ranks, m, n}, DType::F32);
    for (int64_t r = 0; r < ranks; ++r) sum_partials(subs.view().select(0, r), dense.view().narrow(0, r * per, per));
    Tensor top = Tensor::empty({m, n}, DType::F32);
    sum_partials(top, subs);
    EXPECT_TRUE(same_bits(host_floats(full), host_floats(top))) << ranks << " subtrees";
  }
  // A row alone gives its bits inside the batch.
  Tensor one = Tensor::empty({1, n}, DType::F32);
  sum_partials(one, dense.view().narrow(1, 3, 1));
  EXPECT_EQ(std::memcmp(one.ptr<float>(), full.ptr<float>() + 3 * n, n * 4), 0);
}

TEST(SumPartials, RejectsBadArguments) {
  Tensor p3 = Tensor::empty({3, 2, 4}, DType::F32), p2 = Tensor::empty({2, 2, 4}, DType::F32);
  Tensor out = Tensor::empty({2, 4}, DType::F32), bad_out = Tensor::empty({2, 5}, DType::F32);
  Tensor p2_bf16 = Tensor::empty({2, 2, 4}, DType::BF16), bias = Tensor::empty({5}, DType::F32);
  EXPECT_NE(message([&] { sum_partials(out, p3); }).find("power of two"), std::string::npos);
  EXPECT_NE(message([&] { sum_partials(bad_out, p2); }).find("out must be [2, 4]"), std::string::npos);
  EXPECT_NE(message([&] { sum_partials(out, p2_bf16); }).find("partials must be f32"), std::string::npos);
  EXPECT_NE(message([&] { sum_partials(out, p2, bias.view()); }).find("bias must be [4]"), std::string::npos);
  EXPECT_NE(message([&] { sum_partials(out, out); }).find("[P, M, N]"), std::string::npos);
}

// ---- the tree math of one row-parallel linear, K ranks emulated one after the other ----------------------

// y = x W^T for x [M, K] and W [N, K] (BF16) split over `ranks`: with `chunks` > 1 each rank sums its
// chunks' F32 partials by the tree and the rank results are summed by the tree; with chunks = 0 each
// rank runs one chain over its K slice (the naive reduction).
std::vector<float> row_parallel_f32(const Tensor& x, const Tensor& w, int64_t ranks, int64_t chunks) {
  const int64_t m = x.size(0), k = x.size(1), n = w.size(0);
  const int64_t local = chunks > 1 ? chunks / ranks : 1, kc = k / ranks / local;
  Tensor gathered = Tensor::empty({ranks, m, n}, DType::F32);
  for (int64_t r = 0; r < ranks; ++r) {
    Tensor leaves = Tensor::empty({local, m, n}, DType::F32);
    for (int64_t c = 0; c < local; ++c) {
      const int64_t k0 = (r * local + c) * kc;
      mm(leaves.view().select(0, c), x.view().narrow(1, k0, kc), w.view().narrow(1, k0, kc));
    }
    sum_partials(gathered.view().select(0, r), leaves);  // the all-gather is a copy: emulated by writing in place
  }
  Tensor out = Tensor::empty({m, n}, DType::F32);
  sum_partials(out, gathered);
  return host_floats(out);
}

TEST(TpTree, RowParallelLinearIsTheSameForEveryRankCount) {
  std::mt19937 rng(9);
  std::normal_distribution<float> d(0.0f, 1.0f);
  const int64_t m = 9, k = 1024, n = 96;
  Tensor x = Tensor::empty({m, k}, DType::BF16), w = Tensor::empty({n, k}, DType::BF16);
  for (int64_t i = 0; i < x.numel(); ++i) x.ptr<bf16>()[i] = to_bf16(d(rng));
  for (int64_t i = 0; i < w.numel(); ++i) w.ptr<bf16>()[i] = to_bf16(d(rng) * 0.03f);
  const auto tree1 = row_parallel_f32(x, w, 1, 8);
  for (int64_t ranks : {2, 4, 8}) EXPECT_TRUE(same_bits(tree1, row_parallel_f32(x, w, ranks, 8))) << ranks << " ranks";
  // The naive reduction changes with the rank count (negative control of the harness above).
  int differing_pairs = 0;
  const std::vector<int64_t> sizes = {1, 2, 4, 8};
  std::vector<std::vector<float>> naive;
  for (int64_t r : sizes) naive.push_back(row_parallel_f32(x, w, r, 0));
  for (size_t i = 0; i < sizes.size(); ++i)
    for (size_t j = i + 1; j < sizes.size(); ++j) differing_pairs += !same_bits(naive[i], naive[j]);
  EXPECT_EQ(differing_pairs, 6) << "the naive row-parallel sum should differ between every pair of TP sizes";
}

// On CUDA the GEMM plan must not depend on N, or a column-parallel shard (N / K outputs) would sum in
// another order than the whole layer.
TEST(TpTree, GemmPlanDoesNotDependOnN) {
  for (int arch : {0, 80, 86, 89, 90})
    for (DType dt : {DType::BF16, DType::F16, DType::F32}) {
      const policy::Target t{arch ? policy::Backend::CUDA : policy::Backend::CPU, arch};
      for (int64_t k : {64, 576, 1536, 8192}) {
        const auto full = policy::gemm_plan(t, dt, 14336, k);
        for (int64_t n : {14336 / 2, 14336 / 4, 14336 / 8, 1}) {
          const auto shard = policy::gemm_plan(t, dt, n, k);
          EXPECT_EQ(shard.k_splits, full.k_splits);
          EXPECT_EQ(shard.k_split_len, full.k_split_len);
          EXPECT_EQ(int(shard.mma), int(full.mma));
          EXPECT_EQ(shard.mma_k, full.mma_k);
        }
      }
    }
}

// ---- the thread communicator ---------------------------------------------------------------------------------

TEST(TpComm, ThreadAllGatherInRankOrder) {
  const int size = 4;
  auto comms = make_thread_comms(size);
  std::vector<Tensor> outs(size);
  std::vector<std::thread> threads;
  for (int r = 0; r < size; ++r)
    threads.emplace_back([&, r] {
      TpComm& c = *comms[size_t(r)];
      c.enter();
      Tensor in = Tensor::empty({3}, DType::F32);
      for (int i = 0; i < 3; ++i) in.ptr<float>()[i] = float(10 * r + i);
      outs[size_t(r)] = Tensor::empty({size, 3}, DType::F32);
      c.all_gather(outs[size_t(r)], in);
      c.barrier();
      c.leave();
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < size; ++r)
    for (int j = 0; j < size; ++j)
      for (int i = 0; i < 3; ++i) EXPECT_EQ(outs[size_t(r)].ptr<float>()[j * 3 + i], float(10 * j + i));
}

TEST(TpComm, AbortReleasesWaitingRanks) {
  auto comms = make_thread_comms(2);
  std::string error;
  std::thread waiter([&] {
    comms[1]->enter();
    try {
      comms[1]->barrier();
    } catch (const std::exception& e) {
      error = e.what();
    }
    comms[1]->leave();
  });
  comms[0]->abort();
  waiter.join();
  EXPECT_NE(error.find("another rank failed"), std::string::npos) << error;
}

// ---- the model: logits bitwise across TP sizes ---------------------------------------------------------------

void expect_tp_invariant(const ModelConfig& c, const std::vector<int>& sizes) {
  const Weights w = weights_for(c);
  const auto tokens = random_tokens(c.vocab);
  const auto ref = three_steps(*make_model(c, w, 1, kTpInvariantChunks), tokens);
  ASSERT_EQ(ref.size(), size_t((42 + 3 + 3) * c.vocab));
  for (int k : sizes) {
    if (k == 1) continue;
    EXPECT_TRUE(same_bits(ref, three_steps(*make_model(c, w, k, kTpInvariantChunks), tokens)))
        << c.arch << ": TP=" << k << " differs from TP=1 with the chunk tree";
  }
}

TEST(TpModel, LogitsBitwiseAcrossTpSizesPrefillAndDecode) { expect_tp_invariant(tp_config(), {1, 2, 4, 8}); }

TEST(TpModel, GqaWithBiasAndQkNorm) {
  expect_tp_invariant(tp_config("qwen2", 4), {2, 4});
  expect_tp_invariant(tp_config("qwen3", 4), {2, 4});
}

TEST(TpModel, ChunkedTreeIsCloseToThePlainModel) {
  // TP=1 with the tree and the plain single-chain model are different sums of the same products: both
  // valid, close, generally not the same bits.
  const ModelConfig c = tp_config();
  const Weights w = weights_for(c);
  const auto tokens = random_tokens(c.vocab);
  const auto plain = three_steps(*make_model(c, w, 1, 0), tokens);
  const auto tree = three_steps(*make_model(c, w, 1, kTpInvariantChunks), tokens);
  ASSERT_EQ(plain.size(), tree.size());
  double max_diff = 0;
  size_t differ = 0;
  for (size_t i = 0; i < plain.size(); ++i) {
    max_diff = std::max(max_diff, double(std::abs(plain[i] - tree[i])));
    differ += plain[i] != tree[i];
  }
  std::printf("plain vs tree: %zu of %zu logits differ, max abs diff %g, logit[0..2] %g %g %g\n", differ, plain.size(), max_diff, plain[0], plain[1], plain[2]);
  EXPECT_LT(max_diff, 0.05);
}

TEST(TpModel, NaiveRowParallelSumChangesWithTpSize) {
  // The negative control: without the chunk tree, each rank's single chain over its K slice and the
  // sum of the ranks' partials change the grouping with K, so some pair of TP sizes must differ.
  const ModelConfig c = tp_config("llama", 8, 1024);
  const Weights w = weights_for(c);
  const auto tokens = random_tokens(c.vocab);
  std::vector<std::vector<float>> logits;
  const std::vector<int> sizes = {1, 2, 4, 8};
  const std::vector<int64_t> prompt = {120, 200, 64};  // many rows: more sums whose rounding can flip
  for (int k : sizes) logits.push_back(three_steps(*make_model(c, w, k, 0), tokens, prompt));
  int differing = 0;
  for (size_t i = 0; i < sizes.size(); ++i)
    for (size_t j = i + 1; j < sizes.size(); ++j) {
      const bool d = !same_bits(logits[i], logits[j]);
      differing += d;
      std::printf("naive TP=%d vs TP=%d: %s\n", sizes[i], sizes[j], d ? "differ" : "same bits");
    }
  EXPECT_GT(differing, 0) << "the naive row-parallel reduction should not be TP-invariant";
  // And with the tree the same shapes agree.
  const auto tree1 = three_steps(*make_model(c, w, 1, kTpInvariantChunks), tokens, prompt);
  const auto tree8 = three_steps(*make_model(c, w, 8, kTpInvariantChunks), tokens, prompt);
  EXPECT_TRUE(same_bits(tree1, tree8));
}

TEST(TpModel, ClearErrors) {
  const ModelConfig c = tp_config();
  const Weights w = weights_for(c);
  TpOptions o;
  o.size = 3;
  EXPECT_NE(message([&] { TpModel m(c, w, Device::cpu(), o); }).find("--tp must be 1, 2, 4 or 8, got 3"),
            std::string::npos);
  const ModelConfig gqa = tp_config("llama", 2);
  o.size = 4;
  EXPECT_NE(message([&] { TpModel m(gqa, weights_for(gqa), Device::cpu(), o); }).find("the 2 kv heads"),
            std::string::npos);
  o.size = 2;
  o.chunks = 6;
  EXPECT_NE(message([&] { TpModel m(c, w, Device::cpu(), o); }).find("power of two"), std::string::npos);
  o.chunks = 1024;
  EXPECT_NE(message([&] { TpModel m(c, w, Device::cpu(), o); }).find("K-chunks do not divide"), std::string::npos);
}

// ---- the engine: tokens and logprobs across TP sizes, alone and in a batch -------------------------------------

RequestParams sampled(uint64_t seed) {
  RequestParams p;
  p.temperature = 0.9f;
  p.top_k = 64;
  p.seed = seed;
  p.max_tokens = 12;
  p.top_logprobs = 3;
  return p;
}

::testing::AssertionResult same_output(const RequestOutput& a, const RequestOutput& b) {
  if (a.tokens != b.tokens) return ::testing::AssertionFailure() << "tokens differ";
  if (!same_bits(a.logprobs, b.logprobs)) return ::testing::AssertionFailure() << "logprob bits differ";
  for (size_t i = 0; i < a.top.size() && i < b.top.size(); ++i)
    for (size_t j = 0; j < a.top[i].size() && j < b.top[i].size(); ++j)
      if (a.top[i][j].id != b.top[i][j].id || std::memcmp(&a.top[i][j].logprob, &b.top[i][j].logprob, 4) != 0)
        return ::testing::AssertionFailure() << "top logprobs differ at token " << i;
  return ::testing::AssertionSuccess();
}

TEST(TpEngine, SameTokensAndLogprobsForEveryTpSize) {
  const ModelConfig c = tp_config();
  const Weights w = weights_for(c);
  std::mt19937 rng(2);
  std::uniform_int_distribution<int32_t> d(2, int32_t(c.vocab - 1));
  std::vector<std::vector<int32_t>> prompts;
  for (int len : {5, 17, 1, 40}) {
    prompts.emplace_back();
    for (int i = 0; i < len; ++i) prompts.back().push_back(d(rng));
  }
  std::vector<RequestParams> params;
  for (size_t i = 0; i < prompts.size(); ++i) params.push_back(sampled(100 + i));
  EngineConfig ec;
  ec.num_blocks = 64;
  ec.max_num_batched_tokens = 16;  // chunked prefills
  std::vector<std::vector<RequestOutput>> runs;
  for (int k : {1, 2, 4, 8}) {
    const auto m = make_model(c, w, k, kTpInvariantChunks);
    LLMEngine e(*m, ec);
    runs.push_back(e.generate(prompts, params));
  }
  for (size_t r = 1; r < runs.size(); ++r)
    for (size_t i = 0; i < prompts.size(); ++i)
      EXPECT_TRUE(same_output(runs[0][i], runs[r][i])) << "TP run " << r << ", request " << i;
}

TEST(TpEngine, Tp2NeedleAloneAndInABatch) {
  const ModelConfig c = tp_config();
  const Weights w = weights_for(c);
  const auto m = make_model(c, w, 2, kTpInvariantChunks);
  std::mt19937 rng(8);
  std::uniform_int_distribution<int32_t> d(2, int32_t(c.vocab - 1));
  std::vector<int32_t> needle(23);
  for (auto& t : needle) t = d(rng);
  EngineConfig roomy;
  roomy.num_blocks = 64;
  roomy.max_num_batched_tokens = 512;
  RequestOutput alone;
  {
    LLMEngine e(*m, roomy);
    alone = e.generate({needle}, {sampled(42)})[0];
  }
  std::vector<std::vector<int32_t>> batch;
  std::vector<RequestParams> params;
  for (int i = 0; i < 7; ++i) {
    std::vector<int32_t> p(size_t(3 + 5 * i));
    for (auto& t : p) t = d(rng);
    batch.push_back(p);
    params.push_back(sampled(uint64_t(i)));
    if (i == 3) {
      batch.push_back(needle);
      params.push_back(sampled(42));
    }
  }
  EngineConfig tight;
  tight.num_blocks = 12;  // forces preemption
  tight.block_size = 8;
  tight.max_num_batched_tokens = 7;
  LLMEngine e(*m, tight);
  const auto outs = e.generate(batch, params);
  EXPECT_TRUE(same_output(alone, outs[4]));
  std::printf("needle at TP=2 in a batch of 8: %lld preemptions\n", (long long)e.stats().preemptions);
}

// ---- CLI options ------------------------------------------------------------------------------------------------

TEST(TpCli, OptionsAreChecked) {
  auto parse = [](std::vector<std::string> argv) {
    cli::Args a(argv, {}, {"tp", "tp-invariant"}, "bik generate");
    return cli::tp_option(a, "bik generate");
  };
  EXPECT_EQ(parse({}).size, 1);
  EXPECT_EQ(parse({}).chunks, 0);  // no --tp: the plain model, unchanged
  EXPECT_EQ(parse({"--tp", "1"}).chunks, kTpInvariantChunks);
  EXPECT_EQ(parse({"--tp", "4"}).size, 4);
  EXPECT_EQ(parse({"--tp", "4", "--tp-invariant", "off"}).chunks, 0);
  for (const char* bad : {"3", "0", "16", "-2"}) {
    try {
      parse({"--tp", bad});
      ADD_FAILURE() << "--tp " << bad << " accepted";
    } catch (const std::exception& e) {
      EXPECT_NE(std::string(e.what()).find("--tp must be 1, 2, 4 or 8"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(parse({"--tp-invariant", "on"}), std::exception);
  EXPECT_THROW(parse({"--tp", "2", "--tp-invariant", "maybe"}), std::exception);
}

}  // namespace
}  // namespace bik::engine

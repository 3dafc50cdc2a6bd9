// Sampling and logprobs on the CPU: the generator matches the published Philox4x32-10 answers, the
// sampled distribution is the filtered softmax, and a row samples the same token alone or anywhere in
// any batch. The negative control keys the generator by batch slot and must be caught by the same check.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <vector>

#include "bik/sampling.h"
#include "core/philox.h"
#include "cpu/parallel.h"
#include "greedy_top_case.h"
#include "plain_draw_case.h"

using namespace bik;

namespace {

using Sampler = std::function<void(const TensorView&, const TensorView&, const std::vector<SamplingParams>&)>;

Sampler library_sampler() {
  return [](const TensorView& t, const TensorView& l, const std::vector<SamplingParams>& p) { sample(t, l, p); };
}
// The bug the contract forbids: randomness keyed by the row's slot in the batch.
Sampler slot_keyed_sampler() {
  return [](const TensorView& t, const TensorView& l, const std::vector<SamplingParams>& p) {
    std::vector<SamplingParams> q = p;
    for (size_t i = 0; i < q.size(); ++i) q[i].position = int64_t(i);
    sample(t, l, q);
  };
}

SamplingParams random_params(std::mt19937_64& g, int64_t v) {
  SamplingParams p;
  const int kind = int(g() % 5);
  p.temperature = kind == 0 ? 0.0f : float(0.3 + double(g() % 1000) / 500.0);
  p.top_k = kind == 1 ? int32_t(1 + g() % uint64_t(v)) : 0;
  p.top_p = kind == 2 ? float(0.05 + double(g() % 95) / 100.0) : 1.0f;
  p.min_p = kind == 3 ? float(double(g() % 50) / 100.0) : 0.0f;
  p.seed = g();
  p.position = int64_t(g() % 100000);
  return p;
}

void fill_logits(Tensor& t, std::mt19937_64& g) {
  std::normal_distribution<float> d(0.0f, 3.0f);
  for (int64_t i = 0; i < t.numel(); ++i) t.ptr<float>()[i] = d(g);
}

// Returns the number of rows whose token differs between alone and inside a batch.
int64_t count_batch_diffs(const Sampler& sampler, int64_t v, uint64_t seed) {
  std::mt19937_64 g(seed);
  int64_t diffs = 0;
  for (int64_t b : {2, 3, 5, 7, 13, 17, 31, 32, 33, 100}) {
    const int64_t stride = v + int64_t(g() % 9);  // padded rows
    Tensor batch = Tensor::empty_padded({b, v}, stride, DType::F32);
    std::normal_distribution<float> d(0.0f, 3.0f);
    for (int64_t r = 0; r < b; ++r)
      for (int64_t i = 0; i < v; ++i) batch.ptr<float>()[r * stride + i] = d(g);
    std::vector<SamplingParams> params;
    for (int64_t r = 0; r < b; ++r) params.push_back(random_params(g, v));
    Tensor tokens = Tensor::empty({b}, DType::I32);
    sampler(tokens, batch, params);
    for (int64_t r = 0; r < b; ++r) {
      Tensor one = Tensor::empty({1, v}, DType::F32);
      copy(one, batch.view().narrow(0, r, 1));
      Tensor t1 = Tensor::empty({1}, DType::I32);
      sampler(t1, one, {params[size_t(r)]});
      diffs += t1.ptr<int32_t>()[0] != tokens.ptr<int32_t>()[r];
    }
  }
  return diffs;
}

}  // namespace

TEST(Philox, MatchesPublishedAnswers) {
  // Known-answer vectors of Philox4x32-10 (Random123's kat_vectors).
  auto r = philox::philox4x32_10({{0, 0, 0, 0}}, 0, 0);
  EXPECT_EQ(r.v[0], 0x6627e8d5u);
  EXPECT_EQ(r.v[1], 0xe169c58du);
  EXPECT_EQ(r.v[2], 0xbc57ac4cu);
  EXPECT_EQ(r.v[3], 0x9b00dbd8u);
  r = philox::philox4x32_10({{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}}, 0xffffffffu, 0xffffffffu);
  EXPECT_EQ(r.v[0], 0x408f276du);
  EXPECT_EQ(r.v[1], 0x41c83b0eu);
  EXPECT_EQ(r.v[2], 0xa20bc7c6u);
  EXPECT_EQ(r.v[3], 0x6d5451fdu);
}

TEST(Sampling, UniformsAreInTheOpenIntervalAndUnbiased) {
  double sum = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    const float u = sampling_uniform(42, i / 1000, i % 1000);
    ASSERT_GT(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    sum += u;
  }
  EXPECT_NEAR(sum / n, 0.5, 0.005);
  EXPECT_NE(sampling_uniform(1, 5, 7), sampling_uniform(2, 5, 7));  // the seed matters
  EXPECT_NE(sampling_uniform(1, 5, 7), sampling_uniform(1, 6, 7));  // so does the position
}

// The extreme words map strictly inside (0, 1), and the noise -log(-log u) stays finite there, so no
// token's Gumbel score is +inf whatever its probability.
TEST(Sampling, ExtremeWordsStayInsideTheOpenInterval) {
  for (uint32_t w : {0u, 1u, 0xFFu, 0x1FFu, 0xFFFFFE00u, 0xFFFFFEFFu, 0xFFFFFF00u, 0xFFFFFFFFu}) {
    const float u = philox::to_unit(w);
    EXPECT_GT(u, 0.0f) << w;
    EXPECT_LT(u, 1.0f) << w;
    EXPECT_TRUE(std::isfinite(-std::log(-std::log(u)))) << w;
  }
  EXPECT_LT(philox::to_unit(0xFFFFFDFFu), philox::to_unit(0xFFFFFFFFu));  // the top bits still count
}

TEST(Sampling, RowAloneEqualsRowInsideBatches) {
  EXPECT_EQ(count_batch_diffs(library_sampler(), 257, 7), 0);
}

TEST(Sampling, NegativeControlSlotKeyedGeneratorIsCaught) {
  // Same check, generator keyed by the batch slot: rows not in slot 0 sample other tokens.
  EXPECT_GT(count_batch_diffs(slot_keyed_sampler(), 257, 7), 20);
}

TEST(Sampling, ThreadCountDoesNotChangeTokens) {
  std::mt19937_64 g(3);
  Tensor logits = Tensor::empty({64, 1000}, DType::F32);
  fill_logits(logits, g);
  std::vector<SamplingParams> params;
  for (int i = 0; i < 64; ++i) params.push_back(random_params(g, 1000));
  Tensor a = Tensor::empty({64}, DType::I32), b = Tensor::empty({64}, DType::I32);
  cpu::set_num_threads(1);
  sample(a, logits, params);
  cpu::set_num_threads(7);
  sample(b, logits, params);
  cpu::set_num_threads(0);
  EXPECT_EQ(std::memcmp(a.data(), b.data(), 64 * 4), 0);
}

TEST(Sampling, HalfLogitsAndGreedy) {
  Tensor logits = Tensor::empty({3, 6}, DType::BF16);
  const float vals[3][6] = {{0, 1, 5, 5, 2, -1}, {-3, -2, -1, 0, NAN, 0}, {1, 1, 1, 1, 1, 1}};
  for (int r = 0; r < 3; ++r)
    for (int i = 0; i < 6; ++i) logits.ptr<bf16>()[r * 6 + i] = to_bf16(vals[r][i]);
  std::vector<SamplingParams> greedy(3);
  for (auto& p : greedy) p.temperature = 0;
  Tensor t = Tensor::empty({3}, DType::I32);
  sample(t, logits, greedy);
  EXPECT_EQ(t.ptr<int32_t>()[0], 2);  // first of the tied maxima
  EXPECT_EQ(t.ptr<int32_t>()[1], 4);  // NaN counts as the maximum, as in argmax
  EXPECT_EQ(t.ptr<int32_t>()[2], 0);
}

// Empirical frequencies over many positions vs the exact filtered distribution (4.5 sigma bounds).
TEST(Sampling, DistributionMatchesFilteredSoftmax) {
  const std::vector<double> probs = {0.5, 0.3, 0.15, 0.05};
  Tensor logits = Tensor::empty({1, 4}, DType::F32);
  for (int i = 0; i < 4; ++i) logits.ptr<float>()[i] = float(std::log(probs[size_t(i)]));
  struct Case {
    SamplingParams p;
    std::vector<double> expect;
  };
  auto mk = [](float temp, int k, float top_p, float min_p) {
    SamplingParams p;
    p.temperature = temp, p.top_k = k, p.top_p = top_p, p.min_p = min_p, p.seed = 1234;
    return p;
  };
  // temperature 2 flattens: p_i ~ sqrt(probs).
  std::vector<double> t2 = {std::sqrt(0.5), std::sqrt(0.3), std::sqrt(0.15), std::sqrt(0.05)};
  double t2s = t2[0] + t2[1] + t2[2] + t2[3];
  for (double& x : t2) x /= t2s;
  const std::vector<Case> cases = {
      {mk(1, 0, 1, 0), probs},
      {mk(1, 2, 1, 0), {0.625, 0.375, 0, 0}},          // top_k = 2
      {mk(1, 0, 0.7f, 0), {0.625, 0.375, 0, 0}},       // top_p: 0.5 + 0.3 reaches 0.7
      {mk(1, 0, 0.81f, 0), {0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0}},
      {mk(1, 0, 1, 0.5f), {0.625, 0.375, 0, 0}},       // min_p: keep p >= 0.25
      {mk(2, 0, 1, 0), t2},
  };
  const int n = 40000;
  for (const Case& c : cases) {
    std::vector<int> count(4, 0);
    for (int i = 0; i < n; ++i) {
      SamplingParams p = c.p;
      p.position = i;
      Tensor t = Tensor::empty({1}, DType::I32);
      sample(t, logits, {p});
      ++count[size_t(t.ptr<int32_t>()[0])];
    }
    for (int i = 0; i < 4; ++i) {
      const double e = c.expect[size_t(i)];
      if (e == 0) {
        EXPECT_EQ(count[size_t(i)], 0) << "token " << i << " must be filtered out";
      } else {
        const double sigma = std::sqrt(n * e * (1 - e));
        EXPECT_NEAR(count[size_t(i)], n * e, 4.5 * sigma)
            << "token " << i << " temp " << c.p.temperature << " top_k " << c.p.top_k << " top_p " << c.p.top_p
            << " min_p " << c.p.min_p;
      }
    }
  }
}

// The plain draw (temperature, no filter: one Gumbel score a group of 16 tokens, then the token inside
// the winning group) draws from softmax(logit / T) across groups. The same counts are also tested
// against a draw that scores each group by its largest logit alone, which they must reject.
TEST(Sampling, PlainDrawMatchesSoftmaxAcrossGroups) {
  const test::PlainDrawCase c;
  const int64_t draws = test::kPlainDrawDraws;
  Tensor logits = Tensor::empty({draws, int64_t(c.logits.size())}, DType::F32);
  std::vector<SamplingParams> ps;
  c.batch(draws, 77, logits.ptr<float>(), ps);
  Tensor t = Tensor::empty({draws}, DType::I32);
  sample(t, logits, ps);
  const test::PlainDrawCase::Fit f = c.fit(t.ptr<int32_t>(), draws);
  ASSERT_TRUE(f.in_range) << "a token outside the row";
  std::printf("plain draw: chi2 %.1f against softmax, %.1f against the group-maximum draw\n", f.right, f.wrong);
  EXPECT_LT(f.right, test::kPlainDrawChi2Limit);
  EXPECT_GT(f.wrong, 10 * test::kPlainDrawChi2Limit);
}

TEST(Logprobs, MatchFloat64AndAreBatchInvariant) {
  std::mt19937_64 g(11);
  const int64_t b = 37, v = 501, n = 5;
  Tensor logits = Tensor::empty({b, v}, DType::F32);
  fill_logits(logits, g);
  Tensor tokens = Tensor::empty({b}, DType::I32);
  for (int64_t r = 0; r < b; ++r) tokens.ptr<int32_t>()[r] = int32_t(g() % uint64_t(v));
  Tensor chosen = Tensor::empty({b}, DType::F32), ids = Tensor::empty({b, n}, DType::I32),
         vals = Tensor::empty({b, n}, DType::F32);
  logprobs(chosen, ids, vals, logits, tokens);
  for (int64_t r = 0; r < b; ++r) {
    const float* row = logits.ptr<float>() + r * v;
    double m = row[0], s = 0;
    for (int64_t i = 0; i < v; ++i) m = std::max(m, double(row[i]));
    for (int64_t i = 0; i < v; ++i) s += std::exp(double(row[i]) - m);
    const double lse = m + std::log(s);
    const int32_t t = tokens.ptr<int32_t>()[r];
    EXPECT_NEAR(chosen.ptr<float>()[r], double(row[t]) - lse, 1e-5 * std::max(1.0, std::fabs(lse)));
    for (int64_t j = 0; j < n; ++j) {
      const int32_t id = ids.ptr<int32_t>()[r * n + j];
      EXPECT_NEAR(vals.ptr<float>()[r * n + j], double(row[id]) - lse, 1e-5 * std::max(1.0, std::fabs(lse)));
      if (j > 0) EXPECT_GE(vals.ptr<float>()[r * n + j - 1], vals.ptr<float>()[r * n + j]);
    }
    // The first entry is the row's maximum.
    EXPECT_EQ(row[ids.ptr<int32_t>()[r * n]], float(m));
    // Alone: identical bits.
    Tensor one = Tensor::empty({1, v}, DType::F32);
    copy(one, logits.view().narrow(0, r, 1));
    Tensor c1 = Tensor::empty({1}, DType::F32), i1 = Tensor::empty({1, n}, DType::I32),
           v1 = Tensor::empty({1, n}, DType::F32);
    logprobs(c1, i1, v1, one, tokens.view().narrow(0, r, 1));
    EXPECT_EQ(std::memcmp(c1.data(), chosen.ptr<float>() + r, 4), 0);
    EXPECT_EQ(std::memcmp(i1.data(), ids.ptr<int32_t>() + r * n, size_t(4 * n)), 0);
    EXPECT_EQ(std::memcmp(v1.data(), vals.ptr<float>() + r * n, size_t(4 * n)), 0);
  }
}

TEST(Sampling, BadInputNamesTheProblem) {
  Tensor logits = Tensor::empty({2, 10}, DType::F32);
  for (int i = 0; i < 20; ++i) logits.ptr<float>()[i] = float(i);
  Tensor tokens = Tensor::empty({2}, DType::I32);
  auto expect_error = [](const std::function<void()>& f, const std::string& needle) {
    try {
      f();
      ADD_FAILURE() << "no error; expected one containing: " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  std::vector<SamplingParams> two(2);
  expect_error([&] { sample(tokens, logits, {SamplingParams{}}); }, "1 sampling params for 2 rows");
  two[1].top_p = 0;
  expect_error([&] { sample(tokens, logits, two); }, "row 1: top_p must be in (0, 1]");
  two[1] = {};
  two[0].temperature = -1;
  expect_error([&] { sample(tokens, logits, two); }, "row 0: temperature");
  Tensor bad_tokens = Tensor::empty({3}, DType::I32);
  expect_error([&] { sample(bad_tokens, logits, {{}, {}}); }, "tokens must be i32[2]");
  tokens.ptr<int32_t>()[0] = 0;
  tokens.ptr<int32_t>()[1] = 10;
  Tensor chosen = Tensor::empty({2}, DType::F32), ids = Tensor::empty({2, 3}, DType::I32),
         vals = Tensor::empty({2, 3}, DType::F32);
  expect_error([&] { logprobs(chosen, ids, vals, logits, tokens); }, "tokens[1] = 10 is outside the vocabulary");
  Tensor many = Tensor::empty({2, 11}, DType::I32), many_v = Tensor::empty({2, 11}, DType::F32);
  tokens.ptr<int32_t>()[1] = 1;
  expect_error([&] { logprobs(chosen, many, many_v, logits, tokens); }, "top 11 of a vocabulary of 10");
}

// The engine's greedy steps take the token and its logprob from logprobs' top 1 (greedy_top_case.h):
// the same token as sample() at temperature 0 and the same logprob bits as logprobs() given that token,
// on rows whose ties, NaNs, signed zeros and infinities exercise the rules; the last-maximum control
// differs on some of them.
TEST(Sampling, GreedyTokenIsTheTopLogprob) {
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    for (int64_t v : {int64_t(8), int64_t(501), int64_t(4099)}) {
      const test::GreedyTopCounts c = test::greedy_top_counts(test::greedy_top_tensor(24, v, 3, dt, Device::cpu()));
      EXPECT_EQ(c.token_diffs, 0) << dtype_name(dt) << " V=" << v;
      EXPECT_EQ(c.chosen_diffs, 0) << dtype_name(dt) << " V=" << v;
      EXPECT_GT(c.control_diffs, 0) << dtype_name(dt) << " V=" << v;
    }
  }
}

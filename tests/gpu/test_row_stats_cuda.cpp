// Row statistics of f32 logits over chunks of 64 columns (cuda/row_stats.h; experimental): the sm_90 GEMM's
// epilogue (gemm_row_stats) must write the entries row_chunk_stats computes from the same logits in memory,
// bit for bit, on every tile the rule picks for M = 1..520 (one and two consumers, ping-pong, clusters, a
// last M-tile kept inside the matrix) and a vocabulary with a partial last chunk; with stats_only it must
// leave the logits alone; a row's entries must not depend on the batch around it; the fold's argmax must
// be the greedy token and its log-sum-exp that of the row. The negative control reverses each lane's
// order inside the chunks: the same comparison must then find differing sums.
#include <gtest/gtest.h>

#include "gpu/gpu_env.h"
#include "gpu/gemm_test_util.h"
#include "gpu/test_util.h"

#if BIK_WITH_CUDA
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "bik/ops.h"
#include "bik/sampling.h"
#include "bik/tensor.h"
#include "core/backend.h"
#include "cuda/row_stats.h"

using namespace bik;

namespace {

using test::dev;
using test::dev_filled;
using test::differing;
using test::is_sm90;

int64_t chunks_of(int64_t n) { return (n + 63) / 64; }

Tensor stats_for(int64_t m, int64_t n) { return dev({m, chunks_of(n), 4}, DType::F32); }

// Entries whose sums (field 1) differ in their bytes.
int64_t differing_sums(const Tensor& x, const Tensor& y) {
  const Tensor hx = x.to(Device::cpu()), hy = y.to(Device::cpu());
  int64_t n = 0;
  for (int64_t i = 0; i < hx.numel() / 4; ++i) n += std::memcmp(hx.ptr<float>() + 4 * i + 1, hy.ptr<float>() + 4 * i + 1, 4) != 0;
  return n;
}

// logits with the columns of each whole chunk in another order: column 8 j + r of a chunk goes to
// 8 (7 - j) + r, so every lane meets its values in reverse order (the chunk's maximum and values stay).
Tensor reversed_in_chunks(const Tensor& logits) {
  const Tensor h = logits.to(Device::cpu());
  Tensor r = Tensor::empty(h.sizes(), DType::F32);
  const int64_t m = h.size(0), n = h.size(1);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t c = 0; c < n; ++c) {
      const int64_t base = c / 64 * 64, j = (c % 64) / 8;
      const int64_t to = base + 64 <= n ? base + 8 * (7 - j) + c % 8 : c;  // a partial last chunk stays
      r.ptr<float>()[i * n + to] = h.ptr<float>()[i * n + c];
    }
  return r.to(logits.device());
}

}  // namespace

TEST(GpuRowStats, EpilogueEqualsStatsOfTheLogits) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "the epilogue statistics run on the sm_90 wgmma kernel";
  const int64_t k = 512;
  int64_t compared = 0;
  // One product: the epilogue's entries against those of gemm()'s logits, with and without the logits.
  auto check = [&](DType dt, const Tensor& w, int64_t m, const char* env) {
    const int64_t n = w.size(0);
    const std::string what = std::string(dtype_name(dt)) + " " + test::shape_str(m, n, k) + " " + env;
    const Tensor a = dev_filled({m, k}, dt, uint64_t(m) * 11 + 1);
    Tensor ref = dev({m, n}, DType::F32);
    mm(ref, a, w);
    Tensor ref_stats = stats_for(m, n);
    cuda::row_chunk_stats(ref_stats, ref, Stream{});
    Tensor out = dev({m, n}, DType::F32), st = stats_for(m, n);
    ASSERT_TRUE(cuda::gemm_row_stats(gemm_args_2d(out, a, w), st, false, Stream{}));
    EXPECT_EQ(differing(out, ref), 0) << "logits, " << what;
    EXPECT_EQ(differing(st, ref_stats), 0) << "entries, " << what;
    Tensor poison = dev({m, n}, DType::F32), st2 = stats_for(m, n);
    fill_bytes(poison, 0x7f, Stream{});
    ASSERT_TRUE(cuda::gemm_row_stats(gemm_args_2d(poison, a, w), st2, true, Stream{}));
    EXPECT_EQ(differing(st2, ref_stats), 0) << "stats only, " << what;
    const Tensor hp = poison.to(Device::cpu());
    int64_t written = 0;
    for (int64_t i = 0; i < hp.numel(); ++i) {
      uint32_t u;
      std::memcpy(&u, hp.ptr<float>() + i, 4);
      written += u != 0x7f7f7f7fu;
    }
    EXPECT_EQ(written, 0) << "stats only wrote logits, " << what;
    ++compared;
  };
  // A vocabulary of the 8B model's size, and one with a partial last chunk under the rule's default, with
  // clusters everywhere and with the ping-pong form everywhere.
  const Tensor w_big = dev_filled({151936, k}, DType::BF16, 3);
  for (int64_t m : {1, 100, 256, 300}) check(DType::BF16, w_big, m, "");
  for (DType dt : {DType::BF16, DType::F16}) {
    const Tensor w = dev_filled({1000, k}, dt, 4);
    for (int64_t m : {1, 3, 64, 100, 129, 200, 256, 300, 520}) check(dt, w, m, "");
    {
      const test::ScopedEnv e("BIK_GEMM_CLUSTER", "2");
      for (int64_t m : {1, 100, 256, 300}) check(dt, w, m, "BIK_GEMM_CLUSTER=2");
    }
    {
      const test::ScopedEnv e("BIK_GEMM_PINGPONG", "1");
      for (int64_t m : {100, 200, 300}) check(dt, w, m, "BIK_GEMM_PINGPONG=1");
    }
  }
  std::printf("[row stats] %lld products: epilogue entries bit for bit with those of their logits\n",
              (long long)compared);
}

TEST(GpuRowStats, RowAloneEqualsRowInBatchesAndFoldIsTheGreedyToken) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "the epilogue statistics run on the sm_90 wgmma kernel";
  const int64_t n = 151936, k = 1024;
  const Tensor w = dev_filled({n, k}, DType::BF16, 5);
  const int64_t big = 300;
  const Tensor a = dev_filled({big, k}, DType::BF16, 9);
  int64_t rows_checked = 0;
  for (int64_t m : {int64_t(7), int64_t(130), int64_t(256), big}) {
    Tensor out = dev({m, n}, DType::F32), st = stats_for(m, n);
    ASSERT_TRUE(cuda::gemm_row_stats(gemm_args_2d(out, a.narrow(0, 0, m), w), st, false, Stream{}));
    for (int64_t r : {int64_t(0), int64_t(5), m - 1}) {
      Tensor o1 = dev({1, n}, DType::F32), s1 = stats_for(1, n);
      ASSERT_TRUE(cuda::gemm_row_stats(gemm_args_2d(o1, a.narrow(0, r, 1), w), s1, false, Stream{}));
      EXPECT_EQ(differing(s1, st.narrow(0, r, 1)), 0) << "row " << r << " of " << m;
      ++rows_checked;
    }
    // The fold against the greedy token and a float64 log-sum-exp.
    Tensor am = dev({m}, DType::I32), mx = dev({m}, DType::F32), sm = dev({m}, DType::F32);
    cuda::row_stats_fold(am, mx, sm, st, Stream{});
    std::vector<SamplingParams> greedy(static_cast<size_t>(m));
    for (auto& p : greedy) p.temperature = 0.0f;
    Tensor tok = dev({m}, DType::I32);
    sample(tok, out, greedy);
    const Tensor h_am = am.to(Device::cpu()), h_mx = mx.to(Device::cpu()), h_sm = sm.to(Device::cpu()),
                 h_tok = tok.to(Device::cpu()), h_out = out.to(Device::cpu());
    for (int64_t r = 0; r < m; ++r) {
      const float* row = h_out.ptr<float>() + r * n;
      EXPECT_EQ(h_am.ptr<int32_t>()[r], h_tok.ptr<int32_t>()[r]) << "row " << r << " of " << m;
      EXPECT_EQ(h_mx.ptr<float>()[r], row[h_tok.ptr<int32_t>()[r]]);
      double s = 0;
      for (int64_t i = 0; i < n; ++i) s += std::exp(double(row[i]) - double(h_mx.ptr<float>()[r]));
      EXPECT_NEAR(std::log(double(h_sm.ptr<float>()[r])), std::log(s), 1e-5) << "row " << r << " of " << m;
    }
  }
  std::printf("[row stats] %lld rows alone equal to their batches' rows\n", (long long)rows_checked);
}

// The control: the same entries from logits whose chunks hold their columns in another order (each lane
// sums its values in reverse): the comparison of EpilogueEqualsStatsOfTheLogits must see differing sums.
TEST(GpuRowStats, NegativeControlOtherSumOrderIsCaught) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "the epilogue statistics run on the sm_90 wgmma kernel";
  const int64_t m = 64, n = 1000, k = 512;
  const Tensor a = dev_filled({m, k}, DType::BF16, 1), w = dev_filled({n, k}, DType::BF16, 2);
  Tensor out = dev({m, n}, DType::F32), st = stats_for(m, n);
  ASSERT_TRUE(cuda::gemm_row_stats(gemm_args_2d(out, a, w), st, false, Stream{}));
  Tensor other = stats_for(m, n);
  cuda::row_chunk_stats(other, reversed_in_chunks(out), Stream{});
  const int64_t diffs = differing_sums(st, other);
  std::printf("[row stats] control: %lld of %lld chunk sums differ with each lane's order reversed\n",
              (long long)diffs, (long long)(m * chunks_of(n)));
  EXPECT_GT(diffs, 0);
}

TEST(GpuRowStats, BadStatsNameTheProblem) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "the epilogue statistics run on the sm_90 wgmma kernel";
  const Tensor a = dev_filled({4, 64}, DType::BF16, 1), w = dev_filled({100, 64}, DType::BF16, 2);
  Tensor out = dev({4, 100}, DType::F32), wrong = dev({4, 1, 4}, DType::F32);
  try {
    cuda::gemm_row_stats(gemm_args_2d(out, a, w), wrong, false, Stream{});
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("f32[4, 2, 4]"), std::string::npos) << e.what();
  }
  try {
    cuda::row_chunk_stats(wrong, out, Stream{});
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("f32[4, 2, 4]"), std::string::npos) << e.what();
  }
}

#else
TEST(GpuRowStats, EpilogueEqualsStatsOfTheLogits) { GTEST_SKIP() << "no GPU: this build has no CUDA backend"; }
#endif

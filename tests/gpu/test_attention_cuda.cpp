// Paged causal attention on CUDA: the CPU test's invariance checks at GPU sizes (contexts up to 32k,
// batches that switch the kernel between its split-parallel and in-kernel-fold launches), accuracy vs
// float64 and vs the CPU backend, run-to-run repeats, and the split-count-by-sequences negative control.
#include <gtest/gtest.h>

#include <random>

#include "attention_harness.h"
#include "core/attention_variants.h"
#include "gpu_env.h"

namespace bik {
namespace {

using namespace attn_test;

Device gpu() { return Device::cuda(0); }

TEST(GpuAttention, AccuracyVsFloat64) {
  BIK_REQUIRE_GPU();
  struct Case {
    DType dt;
    int64_t hq, hkv, d, bs;
  };
  uint64_t seed = 1;
  for (Case k : {Case{DType::BF16, 32, 8, 128, 16}, Case{DType::F16, 8, 2, 128, 1}, Case{DType::BF16, 4, 4, 64, 7},
                 Case{DType::F16, 16, 1, 64, 32}, Case{DType::BF16, 12, 3, 128, 5}, Case{DType::F16, 8, 8, 128, 64}}) {
    Config c{k.dt, k.hq, k.hkv, k.d, k.bs};
    const std::vector<SeqSpec> seqs = {{11, 1, 1}, {12, 700, 700}, {13, 4100, 1}, {14, 520, 9}, {15, 257, 2}};
    const double err = max_error(gpu(), c, seqs, 6, seed++);
    EXPECT_LE(err, tolerance(c.dtype)) << dtype_name(c.dtype) << " D=" << c.d << " Hq=" << c.hq << " Hkv=" << c.hkv
                                       << " block=" << c.block_size;
  }
  Config c{DType::BF16, 8, 1, 128, 16};
  EXPECT_LE(max_error(gpu(), c, {{77, 32768, 1}, {78, 20001, 3}}, 3, 5), tolerance(c.dtype));
}

// The GPU and the CPU follow different plans (mma vs FMA chains): close, not equal.
TEST(GpuAttention, CloseToCpu) {
  BIK_REQUIRE_GPU();
  for (DType dt : {DType::BF16, DType::F16}) {
    Config c{dt, 8, 2, 128, 16};
    const std::vector<SeqSpec> seqs = {{21, 300, 300}, {22, 3000, 2}, {23, 1, 1}};
    const std::vector<uint16_t> g = run_step(gpu(), c, seqs, 9), h = run_step(Device::cpu(), c, seqs, 9);
    double num = 0, den = 0;
    for (size_t i = 0; i < g.size(); ++i) {
      const double a = stored(dt, g[i]), b = stored(dt, h[i]);
      ASSERT_TRUE(std::isfinite(a)) << "element " << i << " of the GPU output";
      num += (a - b) * (a - b);
      den += b * b;
    }
    EXPECT_LE(std::sqrt(num / den), tolerance(dt)) << dtype_name(dt);
  }
}

TEST(GpuAttention, AloneEqualsBatchedLongContexts) {
  BIK_REQUIRE_GPU();
  Config c{DType::BF16, 32, 8, 128, 16};
  const std::vector<SeqSpec> targets = {{101, 1, 1}, {102, 32768, 1}, {103, 300, 300}, {104, 9001, 5}, {105, 1024, 40}};
  const Outcome o = alone_vs_batched(gpu(), c, targets, {1, 2, 5}, 32768, 600, 42);
  EXPECT_GT(o.cases, 1000);
  EXPECT_EQ(o.diffs, 0) << o.diffs << " of " << o.cases << " rows differ";
}

// The engine's path: metadata given on the host, no read-back inside the call; same bits as the
// read-back path, and as invariant.
TEST(GpuAttention, HostMetadataPathGivesTheSameBits) {
  BIK_REQUIRE_GPU();
  const Config c{DType::BF16, 32, 8, 128, 16};
  const std::vector<SeqSpec> batch{{1, 3000, 3000}, {2, 40, 1}, {3, 9000, 5}, {4, 17, 17}, {5, 600, 1}};
  EXPECT_EQ(run_step(gpu(), c, batch, 7), run_step(gpu(), c, batch, 7, attention_with_host_metadata));
  const Outcome o = alone_vs_batched(gpu(), c, {{11, 5200, 9}, {12, 33, 1}}, {1, 7, 64}, 6000, 80, 5,
                                     attention_with_host_metadata);
  EXPECT_GT(o.cases, 0);
  EXPECT_EQ(o.diffs, 0) << o.diffs << " of " << o.cases << " rows differ";
}

TEST(GpuAttention, AloneEqualsBatchedManySequences) {
  BIK_REQUIRE_GPU();
  uint64_t seed = 7;
  for (Config c : {Config{DType::BF16, 32, 8, 128, 16}, Config{DType::F16, 8, 1, 64, 3},
                   Config{DType::BF16, 16, 16, 64, 32}, Config{DType::F16, 28, 4, 128, 1}}) {
    std::mt19937_64 rng(seed);
    std::vector<SeqSpec> targets;
    for (int i = 0; i < 4; ++i) {
      const int64_t ctx = 1 + int64_t(rng() % 5000);
      targets.push_back({rng(), ctx, i % 2 ? 1 : 1 + int64_t(rng() % uint64_t(std::min<int64_t>(ctx, 200)))});
    }
    const Outcome o = alone_vs_batched(gpu(), c, targets, {17, 64, 131, 256}, 2500, 80, seed++);
    EXPECT_EQ(o.diffs, 0) << dtype_name(c.dtype) << " D=" << c.d << ": " << o.diffs << " of " << o.cases;
  }
}

TEST(GpuAttention, RunToRun) {
  BIK_REQUIRE_GPU();
  Config c{DType::BF16, 32, 8, 128, 16};
  const std::vector<SeqSpec> seqs = {{1, 5000, 1}, {2, 700, 700}, {3, 20000, 3}};
  const std::vector<uint16_t> a = run_step(gpu(), c, seqs, 3), b = run_step(gpu(), c, seqs, 4);
  EXPECT_TRUE(a == b);
}

TEST(GpuAttention, DecodeEqualsPrefill) {
  BIK_REQUIRE_GPU();
  Config c{DType::BF16, 32, 8, 128, 16};
  Outcome o = decode_vs_prefill(gpu(), c, 301, 5000, 12, 1, 1);
  EXPECT_EQ(o.diffs, 0) << o.diffs << " of " << o.cases;
  o = decode_vs_prefill(gpu(), c, 302, 1030, 6, 4, 2);
  EXPECT_EQ(o.diffs, 0) << o.diffs << " of " << o.cases;
  Config c2{DType::F16, 8, 2, 64, 1};
  o = decode_vs_prefill(gpu(), c2, 303, 2600, 8, 1, 3);
  EXPECT_EQ(o.diffs, 0) << o.diffs << " of " << o.cases;
}

TEST(GpuAttention, ChunkedPrefillEqualsWhole) {
  BIK_REQUIRE_GPU();
  for (Config c : {Config{DType::BF16, 32, 8, 128, 16}, Config{DType::F16, 8, 2, 64, 5}})
    for (int64_t chunk : {1, 7, 64, 300}) {
      const Outcome o = chunked_vs_whole(gpu(), c, 401, 1100, chunk, uint64_t(chunk));
      EXPECT_EQ(o.cases, 1100);
      EXPECT_EQ(o.diffs, 0) << dtype_name(c.dtype) << " chunk " << chunk << ": " << o.diffs << " of " << o.cases;
    }
}

TEST(GpuAttention, PrefixHitEqualsMiss) {
  BIK_REQUIRE_GPU();
  Config c{DType::BF16, 32, 8, 128, 16};
  for (int64_t cached : {1, 16, 255, 256, 2000, 4000}) {
    const Outcome o = prefix_hit_vs_miss(gpu(), c, 501, 4100, cached, uint64_t(cached));
    EXPECT_EQ(o.diffs, 0) << "cached " << cached << ": " << o.diffs << " of " << o.cases;
  }
}

TEST(GpuAttention, NegativeControlSplitBySequencesIsCaught) {
  BIK_REQUIRE_GPU();
  Config c{DType::BF16, 32, 8, 128, 16};
  const AttnOp variant = [](const TensorView& out, const TensorView& q, const TensorView& kc, const TensorView& vc,
                            const TensorView& bt, const TensorView& sl, const TensorView& qsl, float scale) {
    paged_attention_split_by_seqs(out, q, kc, vc, bt, sl, qsl, scale);
  };
  const std::vector<SeqSpec> targets = {{102, 2100, 1}, {104, 777, 5}};
  const Outcome o = alone_vs_batched(gpu(), c, targets, {2, 5, 13}, 1500, 64, 42, variant);
  EXPECT_GT(o.diffs, 0) << "the harness missed a batch-variant split count (" << o.cases << " rows)";
}

}  // namespace
}  // namespace bik

// Paged causal attention on CUDA: the CPU test's invariance checks at GPU sizes (contexts up to 32k,
// batches that switch the kernel between its split-parallel and in-kernel-fold launches), accuracy vs
// float64 and vs the CPU backend, run-to-run repeats, and the split-count-by-sequences negative control.
// These run on whichever kernel paged_attention dispatches (wgmma on sm_90, mma.sync elsewhere); the
// GpuAttentionSm90 tests pin each kernel on sm_90 through BIK_ATTENTION_SM90 (0 mma.sync, 1 wgmma,
// 2 the pipelined, 3 (the default), 4 and 5 the warp-specialised wgmma variants, which must equal 1 bit for
// bit).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>
#include <string>

#include "attention_harness.h"
#include "core/attention_variants.h"
#include "gpu_env.h"
#if BIK_WITH_CUDA
#include "cuda/attention_dispatch.h"
#include "cuda/device_info.h"
#endif

namespace bik {
namespace {

using namespace attn_test;

Device gpu() { return Device::cuda(0); }

// The negative controls' attention call: a split count that follows the number of sequences (another
// fold grouping, the same kernels).
void split_by_seqs(const TensorView& out, const TensorView& q, const TensorView& kc, const TensorView& vc,
                   const TensorView& bt, const TensorView& sl, const TensorView& qsl, float scale) {
  paged_attention_split_by_seqs(out, q, kc, vc, bt, sl, qsl, scale);
}

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

// Every query-head group size a CTA can hold (1..64 heads per KV head): a CTA's 64 rows are 64 / group
// tokens x group heads, each row's token and head taken without an integer division (row_token); a wrong
// row-to-(token, head) mapping would read another head's Q or write another row's output. Prompts long
// enough for several query blocks, the rows checked spread over all of them. More than 64 heads per KV
// head is a clear error.
TEST(GpuAttention, AccuracyAtEveryGroupSize) {
  BIK_REQUIRE_GPU();
  uint64_t seed = 31;
  for (int64_t group : {2, 3, 5, 6, 7, 9, 12, 13, 21, 32, 33, 64}) {
    const int64_t hkv = group > 16 ? 1 : 2;
    Config c{DType::BF16, group * hkv, hkv, group > 16 ? 64 : 128, 16};
    const std::vector<SeqSpec> seqs = {{41, 150, 150}, {42, 333, 67}, {43, 5, 5}};
    EXPECT_LE(max_error(gpu(), c, seqs, 24, seed++), tolerance(c.dtype)) << "group " << group;
  }
  Config c{DType::BF16, 65, 1, 64, 16};
  try {
    run_step(gpu(), c, {{44, 20, 20}}, 1);
    ADD_FAILURE() << "65 query heads on one KV head ran";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("at most 64 query heads per kv head"), std::string::npos) << e.what();
  }
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
  // Across the start of the long splits (8192) and the first long split's end (9216).
  o = decode_vs_prefill(gpu(), c, 304, 8300, 150, 1, 4);  // decodes 8150..8299
  EXPECT_EQ(o.diffs, 0) << "across 8192: " << o.diffs << " of " << o.cases;
  o = decode_vs_prefill(gpu(), c2, 305, 9300, 40, 3, 5);  // decodes 9180..9299, three rows a step
  EXPECT_EQ(o.diffs, 0) << "across 9216: " << o.diffs << " of " << o.cases;
}

TEST(GpuAttention, ChunkedPrefillEqualsWhole) {
  BIK_REQUIRE_GPU();
  for (Config c : {Config{DType::BF16, 32, 8, 128, 16}, Config{DType::F16, 8, 2, 64, 5}})
    for (int64_t chunk : {1, 7, 64, 300}) {
      const Outcome o = chunked_vs_whole(gpu(), c, 401, 1100, chunk, uint64_t(chunk));
      EXPECT_EQ(o.cases, 1100);
      EXPECT_EQ(o.diffs, 0) << dtype_name(c.dtype) << " chunk " << chunk << ": " << o.diffs << " of " << o.cases;
    }
  // Chunks crossing the start of the long splits (8192) and their ends (9216, 10240).
  const Config c{DType::BF16, 32, 8, 128, 16};
  for (int64_t chunk : {1000, 2048, 777}) {
    const Outcome o = chunked_vs_whole(gpu(), c, 402, 10400, chunk, uint64_t(chunk));
    EXPECT_EQ(o.cases, 10400);
    EXPECT_EQ(o.diffs, 0) << "chunk " << chunk << " over 10400: " << o.diffs << " of " << o.cases;
  }
}

TEST(GpuAttention, PrefixHitEqualsMiss) {
  BIK_REQUIRE_GPU();
  Config c{DType::BF16, 32, 8, 128, 16};
  for (int64_t cached : {1, 16, 255, 256, 2000, 4000}) {
    const Outcome o = prefix_hit_vs_miss(gpu(), c, 501, 4100, cached, uint64_t(cached));
    EXPECT_EQ(o.diffs, 0) << "cached " << cached << ": " << o.diffs << " of " << o.cases;
  }
  for (int64_t cached : {8000, 8192, 8700, 9216}) {  // around and inside the long splits
    const Outcome o = prefix_hit_vs_miss(gpu(), c, 502, 9600, cached, uint64_t(cached));
    EXPECT_EQ(o.diffs, 0) << "cached " << cached << " of 9600: " << o.diffs << " of " << o.cases;
  }
}

// The long splits are in effect, and nowhere else: against a uniform grid of 256-key splits (the
// split-by-sequences variant with 8 sequences), rows before 8448 (where the two grids still agree: the long
// split 8192.. and the short split 8192..8447 hold the same keys for them) are bitwise equal, and rows
// from 8448 on differ somewhere. Both launch modes: a prefill (in-kernel fold) and decodes (split-parallel).
TEST(GpuAttention, LongSplitsStartAt8192) {
  BIK_REQUIRE_GPU();
  const Config c{DType::BF16, 32, 8, 128, 16};
  std::vector<SeqSpec> prefill{{611, 9000, 9000}}, decodes{{612, 8300, 1}, {613, 8440, 1}, {614, 20000, 1}};
  for (uint64_t k = 0; k < 7; ++k) prefill.push_back({700 + k, 3, 1});
  for (uint64_t k = 0; k < 5; ++k) decodes.push_back({710 + k, 5, 1});
  const std::vector<uint16_t> plan = run_step(gpu(), c, prefill, 5),
                              uniform = run_step(gpu(), c, prefill, 5, split_by_seqs);
  int64_t early_diffs = 0, late_diffs = 0;
  for (int64_t r = 0; r < 9000; ++r)
    (r < 8448 ? early_diffs : late_diffs) += row_bytes(c, plan, r) != row_bytes(c, uniform, r);
  EXPECT_EQ(early_diffs, 0) << "prefill rows before 8448 must not see the long splits";
  EXPECT_GT(late_diffs, 0) << "prefill rows from 8448 on gave the uniform grid's bits";
  setenv("BIK_ATTENTION_SPLIT", "1", 1);
  const std::vector<uint16_t> dplan = run_step(gpu(), c, decodes, 6),
                              duniform = run_step(gpu(), c, decodes, 6, split_by_seqs);
  unsetenv("BIK_ATTENTION_SPLIT");
  EXPECT_EQ(row_bytes(c, dplan, 0), row_bytes(c, duniform, 0)) << "a decode at 8299";
  EXPECT_EQ(row_bytes(c, dplan, 1), row_bytes(c, duniform, 1)) << "a decode at 8439";
  EXPECT_NE(row_bytes(c, dplan, 2), row_bytes(c, duniform, 2)) << "a decode at 19999";
}

TEST(GpuAttention, NegativeControlSplitBySequencesIsCaught) {
  BIK_REQUIRE_GPU();
  Config c{DType::BF16, 32, 8, 128, 16};
  const std::vector<SeqSpec> targets = {{102, 2100, 1}, {104, 777, 5}};
  const Outcome o = alone_vs_batched(gpu(), c, targets, {2, 5, 13}, 1500, 64, 42, split_by_seqs);
  EXPECT_GT(o.diffs, 0) << "the harness missed a batch-variant split count (" << o.cases << " rows)";
}


#if BIK_WITH_CUDA
// Sets BIK_ATTENTION_SM90 for its lifetime (paged_attention reads it at each call), then restores it.
class EngineSwitch {
 public:
  explicit EngineSwitch(const char* value) {
    if (const char* old = std::getenv(kName)) saved_ = std::string(old);
    setenv(kName, value, 1);
  }
  ~EngineSwitch() {
    if (saved_)
      setenv(kName, saved_->c_str(), 1);
    else
      unsetenv(kName);
  }
  EngineSwitch(const EngineSwitch&) = delete;
  EngineSwitch& operator=(const EngineSwitch&) = delete;

 private:
  static constexpr const char* kName = "BIK_ATTENTION_SM90";
  std::optional<std::string> saved_;
};

// Skips off sm_90; on sm_90 the build must carry the sm_90a kernel (the default architectures do), or
// the wgmma path would silently never run.
#define BIK_REQUIRE_SM90_ATTENTION()                                                                        \
  do {                                                                                                      \
    BIK_REQUIRE_GPU();                                                                                      \
    if (cuda::use_device(0).arch != 90) GTEST_SKIP() << "the wgmma attention kernel needs an sm_90 device"; \
    ASSERT_TRUE(cuda::attention_wgmma_available(0))                                                         \
        << "sm_90 device, but this build has no loadable sm_90a attention kernel (CMAKE_CUDA_ARCHITECTURES "  \
           "without 90a?)";                                                                                 \
  } while (0)

// Norm-wise relative difference of two outputs of the same step; NaN or inf anywhere -> inf.
double relative_difference(DType dt, const std::vector<uint16_t>& a, const std::vector<uint16_t>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double x = stored(dt, a[i]), y = stored(dt, b[i]);
    if (!std::isfinite(x) || !std::isfinite(y)) return INFINITY;
    num += (x - y) * (x - y);
    den += y * y;
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

// The fixed cases of the variant comparisons: both head dims and dtypes, group sizes 1..8, block sizes
// 1..32, prefill, decode and mixed batches.
struct VariantCase {
  Config c;
  std::vector<SeqSpec> seqs;
  std::string what;
};
std::vector<VariantCase> variant_cases() {
  const std::vector<SeqSpec> decode = {{91, 1, 1}, {92, 1024, 1}, {93, 4100, 1}, {94, 257, 2}, {95, 700, 3}};
  const std::vector<SeqSpec> mixed = {{96, 3000, 3000}, {97, 6000, 1}, {98, 5000, 300}, {99, 65, 65}, {100, 1, 1}};
  return {
      {{DType::BF16, 32, 8, 128, 16}, {{81, 2000, 2000}, {82, 130, 65}}, "prefill"},
      {{DType::BF16, 32, 8, 128, 16}, decode, "decode"},
      {{DType::BF16, 32, 8, 128, 16}, mixed, "mixed"},
      {{DType::F16, 8, 2, 128, 3}, {{83, 6100, 6100}}, "prefill"},
      {{DType::F16, 8, 2, 128, 3}, decode, "decode"},
      {{DType::BF16, 16, 2, 64, 16}, {{84, 2000, 2000}, {85, 777, 1}}, "prefill"},
      {{DType::BF16, 16, 2, 64, 16}, decode, "decode"},
      {{DType::F16, 8, 8, 64, 32}, {{86, 3000, 3000}}, "prefill"},
      {{DType::F16, 8, 8, 64, 32}, mixed, "mixed"},
      {{DType::BF16, 12, 3, 128, 1}, {{87, 1500, 1500}, {88, 9000, 1}}, "prefill"},
      {{DType::F16, 4, 4, 64, 7}, decode, "decode"},
      {{DType::BF16, 8, 2, 128, 16}, {{89, 10500, 1300}, {90, 12000, 1}, {80, 9300, 2}}, "long splits"},
  };
}

std::string config_label(const Config& c) {
  return std::string(dtype_name(c.dtype)) + " D=" + std::to_string(c.d) + " Hq=" + std::to_string(c.hq) +
         " Hkv=" + std::to_string(c.hkv) + " block=" + std::to_string(c.block_size);
}

// run_step's output under BIK_ATTENTION_SM90=variant, after checking that the switch selects it.
void run_variant(int variant, const Config& c, const std::vector<SeqSpec>& seqs, uint64_t seed,
                 std::vector<uint16_t>& out) {
  EngineSwitch s(std::to_string(variant).c_str());
  ASSERT_EQ(cuda::attention_wgmma_variant(0), variant);
  out = run_step(gpu(), c, seqs, seed);
}

// Expects every element of a and b (of one length) written and finite, and their bytes equal (else says
// how many elements differ, `versus`). Returns that count.
size_t expect_same_output(DType dt, const std::vector<uint16_t>& a, const std::vector<uint16_t>& b,
                          const std::string& label, const std::string& versus) {
  size_t nonfinite = 0, differing = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    nonfinite += !std::isfinite(stored(dt, a[i])) || !std::isfinite(stored(dt, b[i]));
    differing += a[i] != b[i];
  }
  EXPECT_EQ(nonfinite, 0u) << label << ": unwritten or non-finite outputs";
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(uint16_t)), 0)
      << label << ": " << differing << " of " << a.size() << " elements differ " << versus;
  return differing;
}

// The warp-specialised variants (BIK_ATTENTION_SM90=3..6), which every test below runs alike.
const std::vector<int> kWarpSpecialized = {3, 4, 5, 6};

// The negative control of the variant comparisons: each variant under another split length (a 2000-token
// prefill alone, split length 64 instead of the plan's) must differ from variant 1's bytes under the plan,
// or the bitwise comparison could not see a change of arithmetic. With 64-key splits every tile ends a
// split: the variants must equal variant 1 under that split length too.
void expect_other_splits_differ(const std::vector<int>& variants) {
  const Config c{DType::BF16, 32, 8, 128, 16};
  const std::vector<SeqSpec> seqs = {{89, 2000, 2000}};
  std::vector<uint16_t> plan, other1;
  {
    EngineSwitch one("1");
    plan = run_step(gpu(), c, seqs, 77);
    other1 = run_step(gpu(), c, seqs, 77, split_by_seqs);
  }
  for (int v : variants) {
    std::vector<uint16_t> other;
    {
      EngineSwitch ws(std::to_string(v).c_str());
      other = run_step(gpu(), c, seqs, 77, split_by_seqs);
    }
    ASSERT_EQ(plan.size(), other.size());
    EXPECT_NE(std::memcmp(plan.data(), other.data(), plan.size() * sizeof(uint16_t)), 0)
        << "variant " << v << ": another fold grouping gave the same bytes: the bitwise comparison proves nothing";
    EXPECT_TRUE(other1 == other) << "variants 1 and " << v << " differ with one tile per split";
  }
}

TEST(GpuAttentionSm90, EnvironmentSwitchPicksTheEngine) {
  BIK_REQUIRE_SM90_ATTENTION();
  {
    EngineSwitch on("1");
    EXPECT_TRUE(cuda::attention_uses_wgmma(0));
    EXPECT_EQ(cuda::attention_wgmma_variant(0), 1);
  }
  {
    EngineSwitch piped("2");
    EXPECT_TRUE(cuda::attention_uses_wgmma(0));
    EXPECT_EQ(cuda::attention_wgmma_variant(0), 2);
  }
  for (int v : kWarpSpecialized) {
    EngineSwitch ws(std::to_string(v).c_str());
    EXPECT_TRUE(cuda::attention_uses_wgmma(0));
    EXPECT_EQ(cuda::attention_wgmma_variant(0), v);
  }
  {
    EngineSwitch off("0");
    EXPECT_FALSE(cuda::attention_uses_wgmma(0));
    EXPECT_EQ(cuda::attention_wgmma_variant(0), 0);
  }
  {
    // Any other value: the default, the ping-pong warp-specialised kernel, and for split-parallel launches
    // the same kernel without the turns.
    EngineSwitch unknown("default");
    EXPECT_TRUE(cuda::attention_uses_wgmma(0));
    EXPECT_EQ(cuda::attention_wgmma_variant(0), 5);
    EXPECT_EQ(cuda::attention_wgmma_variant(0, true), 4);
  }
  {
    EngineSwitch ping_pong("5");  // named, it holds for split launches too
    EXPECT_EQ(cuda::attention_wgmma_variant(0, true), 5);
  }
}

// The default takes variant 4 for split-parallel launches (few long decodes) and 5 otherwise; both must
// give the bytes of variant 5 pinned for every launch: decodes launched split-parallel (BIK_ATTENTION_SPLIT=1
// makes sure of it; one and three long contexts, both head dims) and a prefill launched with the in-kernel
// fold. Negative control: the same decodes under another split length differ, so the comparison can see a
// change of arithmetic.
TEST(GpuAttentionSm90, DefaultSplitLaunchEqualsPingPong) {
  BIK_REQUIRE_SM90_ATTENTION();
  const std::vector<VariantCase> cases = {
      {{DType::BF16, 32, 8, 128, 16}, {{601, 8192, 1}}, "one decode of 8192"},
      {{DType::BF16, 32, 8, 128, 16}, {{602, 20000, 1}, {603, 3000, 2}, {604, 700, 1}}, "three decodes"},
      {{DType::BF16, 32, 8, 128, 16}, {{608, 32768, 1}}, "one decode of 32768"},
      {{DType::F16, 16, 2, 64, 7}, {{605, 9000, 1}, {606, 4100, 3}}, "D = 64 decodes"},
      {{DType::BF16, 32, 8, 128, 16}, {{607, 2000, 2000}}, "a prefill (in-kernel fold)"},
  };
  uint64_t seed = 4401;
  for (const VariantCase& k : cases) {
    const bool decode = k.seqs[0].q_len <= 3;
    setenv("BIK_ATTENTION_SPLIT", decode ? "1" : "0", 1);
    std::vector<uint16_t> by_default, pinned;
    {
      EngineSwitch unset("default");
      by_default = run_step(gpu(), k.c, k.seqs, seed);
    }
    run_variant(5, k.c, k.seqs, seed, pinned);
    unsetenv("BIK_ATTENTION_SPLIT");  // before any assertion can return
    ASSERT_FALSE(testing::Test::HasFatalFailure());
    const std::string label = config_label(k.c) + " (" + k.what + ")";
    ASSERT_EQ(by_default.size(), pinned.size()) << label;
    expect_same_output(k.c.dtype, by_default, pinned, label, "between the default and variant 5");
    if (decode) {
      std::vector<uint16_t> other;
      {
        EngineSwitch unset("default");
        other = run_step(gpu(), k.c, k.seqs, seed, split_by_seqs);
      }
      EXPECT_NE(std::memcmp(other.data(), pinned.data(), pinned.size() * sizeof(uint16_t)), 0)
          << label << ": another split length gave the same bytes";
    }
    ++seed;
  }
}

// Launches whose contexts all lie within the short splits (up to 8192 keys) run the default variants' kernels
// instantiated on a uniform grid's arithmetic (attention.cu's ws_kernel); BIK_ATTENTION_LONG_GRID=2 gives
// every launch the instantiations that read the whole grid, as contexts past 8192 take. Both must give every
// output byte alike: variants 4 and 5 (the two with both instantiations), both launch modes, both head
// dims, a decode of exactly 8192 keys (the last context of the short path). Negative control: the same
// comparison sees another split length (the split-by-sequences variant) change the bytes.
TEST(GpuAttentionSm90, ShortContextKernelsEqualTheLongGridOnes) {
  BIK_REQUIRE_SM90_ATTENTION();
  const std::vector<VariantCase> cases = {
      {{DType::BF16, 32, 8, 128, 16}, {{621, 8192, 1}}, "one decode of 8192"},
      {{DType::BF16, 32, 8, 128, 16}, {{622, 1, 1}, {623, 1024, 1}, {624, 4100, 1}, {625, 257, 2}}, "decodes"},
      {{DType::F16, 16, 2, 64, 7}, {{626, 6000, 1}, {627, 3333, 3}}, "D = 64 decodes"},
      {{DType::BF16, 32, 8, 128, 16}, {{628, 2000, 2000}, {629, 130, 65}}, "prefill"},
      {{DType::F16, 8, 2, 64, 16}, {{630, 5000, 300}, {631, 65, 65}, {632, 700, 1}}, "mixed"},
  };
  uint64_t seed = 6201;
  for (const VariantCase& k : cases) {
    for (int variant : {4, 5})
      for (const char* split : {"0", "1"}) {
        const std::string label = config_label(k.c) + " (" + k.what + "), variant " + std::to_string(variant) +
                                  ", BIK_ATTENTION_SPLIT=" + split;
        setenv("BIK_ATTENTION_SPLIT", split, 1);
        std::vector<uint16_t> uniform, long_grid, other;
        run_variant(variant, k.c, k.seqs, seed, uniform);
        setenv("BIK_ATTENTION_LONG_GRID", "2", 1);
        run_variant(variant, k.c, k.seqs, seed, long_grid);
        unsetenv("BIK_ATTENTION_LONG_GRID");
        {
          EngineSwitch v(std::to_string(variant).c_str());
          other = run_step(gpu(), k.c, k.seqs, seed, split_by_seqs);
        }
        unsetenv("BIK_ATTENTION_SPLIT");  // before any assertion can return
        ASSERT_FALSE(testing::Test::HasFatalFailure()) << label;
        ASSERT_EQ(uniform.size(), long_grid.size()) << label;
        expect_same_output(k.c.dtype, uniform, long_grid, label, "between the two instantiations");
        EXPECT_NE(std::memcmp(other.data(), uniform.data(), uniform.size() * sizeof(uint16_t)), 0)
            << label << ": another split length gave the same bytes";
      }
    ++seed;
  }
}

// The pipelined wgmma kernel (BIK_ATTENTION_SM90=2) runs the default wgmma kernel's arithmetic on another
// schedule, so every output byte must be equal: both head dims and dtypes, group sizes 1..8, block sizes
// 1..32, in both launch modes (the long prefills make enough CTAs for the in-kernel fold, rows spanning
// up to 24 splits; the small decode batches run split-parallel), odd and even tile counts, a row ending
// on a split boundary (ctx 1024), a one-key context. Both outputs must be complete (NaN-poisoned
// first). Negative control: the pipelined kernel under another split length (the split-by-sequences
// variant: another fold grouping, same kernels) must differ from the default somewhere, or this
// comparison could not see a change of arithmetic. (How many elements the mma.sync kernel changes is
// printed for information: it may round like wgmma or not.)
TEST(GpuAttentionSm90, PipelinedKernelEqualsDefaultBitwise) {
  BIK_REQUIRE_SM90_ATTENTION();
  uint64_t seed = 1201;
  for (const VariantCase& k : variant_cases()) {
    const Config& c = k.c;
    std::vector<uint16_t> v1, v2, v0;
    ASSERT_NO_FATAL_FAILURE(run_variant(1, c, k.seqs, seed, v1));
    ASSERT_NO_FATAL_FAILURE(run_variant(2, c, k.seqs, seed, v2));
    ASSERT_NO_FATAL_FAILURE(run_variant(0, c, k.seqs, seed, v0));
    ++seed;
    const std::string label = config_label(c) + " (" + k.what + " batch)";
    ASSERT_EQ(v1.size(), v2.size()) << label;
    const size_t differing = expect_same_output(c.dtype, v1, v2, label, "between variants 1 and 2");
    size_t mma_sync_differs = 0;
    for (size_t i = 0; i < v1.size(); ++i) mma_sync_differs += v0[i] != v1[i];
    std::printf("[ info ] %s: variant 2 vs 1: %zu of %zu elements differ; mma.sync vs wgmma: %zu differ\n",
                label.c_str(), differing, v1.size(), mma_sync_differs);
  }
  // The pipelined kernel's deferred end of split at each step, with one tile per split.
  expect_other_splits_differ({2});
}

// The wgmma kernel against float64, in both launch modes: the first configuration's 2000-token prefill
// makes enough CTAs for the in-kernel fold (rows spanning 8 splits), the small batches run
// split-parallel. Head dims 64 and 128, both dtypes, group sizes 1..16, block sizes 1..64.
TEST(GpuAttentionSm90, WgmmaKernelAccuracyVsFloat64) {
  BIK_REQUIRE_SM90_ATTENTION();
  EngineSwitch on("1");
  struct Case {
    DType dt;
    int64_t hq, hkv, d, bs;
  };
  uint64_t seed = 31;
  for (Case k : {Case{DType::BF16, 32, 8, 128, 16}, Case{DType::F16, 8, 2, 128, 1}, Case{DType::BF16, 4, 4, 64, 7},
                 Case{DType::F16, 16, 1, 64, 32}, Case{DType::BF16, 12, 3, 128, 5}, Case{DType::F16, 8, 8, 128, 64}}) {
    Config c{k.dt, k.hq, k.hkv, k.d, k.bs};
    const std::vector<SeqSpec> prefill = {{41, 2000, 2000}, {42, 130, 65}};
    const std::vector<SeqSpec> decode = {{43, 1, 1}, {44, 700, 700}, {45, 4100, 1}, {46, 520, 9}, {47, 257, 2}};
    for (const auto& seqs : {prefill, decode}) {
      const double err = max_error(gpu(), c, seqs, 8, seed++);
      EXPECT_LE(err, tolerance(c.dtype)) << dtype_name(c.dtype) << " D=" << c.d << " Hq=" << c.hq
                                         << " Hkv=" << c.hkv << " block=" << c.block_size
                                         << (seqs.size() == 2 ? " (prefill batch)" : " (decode batch)");
    }
  }
  Config c{DType::BF16, 8, 1, 128, 16};
  EXPECT_LE(max_error(gpu(), c, {{77, 32768, 1}, {78, 20001, 3}}, 3, 5), tolerance(c.dtype));
}

// The two engines on the same steps: close (both within the dtype's tolerance of each other), not
// necessarily equal, and neither leaves an element unwritten (outputs are poisoned with NaN first).
TEST(GpuAttentionSm90, WgmmaAndMmaSyncKernelsAgree) {
  BIK_REQUIRE_SM90_ATTENTION();
  uint64_t seed = 51;
  for (Config c : {Config{DType::BF16, 32, 8, 128, 16}, Config{DType::F16, 8, 2, 128, 3},
                   Config{DType::BF16, 16, 2, 64, 16}, Config{DType::F16, 4, 4, 64, 32}}) {
    const std::vector<SeqSpec> seqs = {{61, 1500, 1500}, {62, 3000, 2}, {63, 1, 1}, {64, 300, 17}, {65, 9000, 1}};
    std::vector<uint16_t> wg, ms;
    {
      EngineSwitch on("1");
      ASSERT_TRUE(cuda::attention_uses_wgmma(0));
      wg = run_step(gpu(), c, seqs, seed);
    }
    {
      EngineSwitch off("0");
      ASSERT_FALSE(cuda::attention_uses_wgmma(0));
      ms = run_step(gpu(), c, seqs, seed);
    }
    ++seed;
    size_t differing = 0;
    for (size_t i = 0; i < wg.size(); ++i) differing += wg[i] != ms[i];
    const double diff = relative_difference(c.dtype, wg, ms);
    EXPECT_LE(diff, tolerance(c.dtype)) << dtype_name(c.dtype) << " D=" << c.d << ": " << differing << " of "
                                        << wg.size() << " elements differ";
    std::printf("[ info ] %s D=%lld Hq=%lld Hkv=%lld: wgmma vs mma.sync relative difference %.3g, %zu of %zu "
                "elements differ\n",
                dtype_name(c.dtype), static_cast<long long>(c.d), static_cast<long long>(c.hq),
                static_cast<long long>(c.hkv), diff, differing, wg.size());
  }
}

// The invariance checks on the wgmma kernel pinned explicitly (the GpuAttention tests above use it too
// on sm_90, through the default dispatch), including the launch-mode switch inside a batch.
TEST(GpuAttentionSm90, WgmmaKernelInvariance) {
  BIK_REQUIRE_SM90_ATTENTION();
  EngineSwitch on("1");
  Config c{DType::BF16, 32, 8, 128, 16};
  Outcome o = decode_vs_prefill(gpu(), c, 701, 3000, 10, 1, 1);
  EXPECT_EQ(o.diffs, 0) << "decode vs prefill: " << o.diffs << " of " << o.cases;
  o = decode_vs_prefill(gpu(), Config{DType::F16, 8, 2, 64, 5}, 702, 1300, 5, 3, 2);
  EXPECT_EQ(o.diffs, 0) << "decode vs prefill (f16, D=64): " << o.diffs << " of " << o.cases;
  o = chunked_vs_whole(gpu(), c, 703, 900, 100, 3);
  EXPECT_EQ(o.diffs, 0) << "chunked vs whole: " << o.diffs << " of " << o.cases;
  o = alone_vs_batched(gpu(), c, {{704, 5000, 3}, {705, 700, 64}, {706, 1, 1}}, {1, 3, 40}, 3000, 200, 4);
  EXPECT_GT(o.cases, 0);
  EXPECT_EQ(o.diffs, 0) << "alone vs batched: " << o.diffs << " of " << o.cases;
}

// The mma.sync kernel stays selectable on sm_90 (BIK_ATTENTION_SM90=0), and stays invariant there.
TEST(GpuAttentionSm90, MmaSyncKernelInvarianceOnSm90) {
  BIK_REQUIRE_SM90_ATTENTION();
  EngineSwitch off("0");
  Config c{DType::BF16, 32, 8, 128, 16};
  Outcome o = decode_vs_prefill(gpu(), c, 801, 3000, 10, 1, 1);
  EXPECT_EQ(o.diffs, 0) << "decode vs prefill: " << o.diffs << " of " << o.cases;
  o = alone_vs_batched(gpu(), c, {{804, 5000, 3}, {805, 700, 64}}, {1, 3, 40}, 3000, 200, 4);
  EXPECT_GT(o.cases, 0);
  EXPECT_EQ(o.diffs, 0) << "alone vs batched: " << o.diffs << " of " << o.cases;
}

// The negative control on the wgmma kernel: a split count that follows the number of sequences must be
// caught by the same harness.
TEST(GpuAttentionSm90, NegativeControlOnWgmmaKernel) {
  BIK_REQUIRE_SM90_ATTENTION();
  EngineSwitch on("1");
  Config c{DType::BF16, 32, 8, 128, 16};
  const Outcome o = alone_vs_batched(gpu(), c, {{102, 2100, 1}, {104, 777, 5}}, {2, 5, 13}, 1500, 64, 42, split_by_seqs);
  EXPECT_GT(o.diffs, 0) << "the harness missed a batch-variant split count (" << o.cases << " rows)";
}

// The warp-specialised kernel (BIK_ATTENTION_SM90=3: two 64-row query blocks per CTA sharing one K/V
// stream, a producer warpgroup filling an mbarrier ring; 4: the same with S(j + 1) issued behind
// P V(j); 5: 4 with the two consumers taking turns at the tensor cores; 6: S(j + 1) issued before the
// softmax of tile j, the fold's accumulators in shared memory) must give every output byte of
// the one-warpgroup wgmma kernel (variant 1). Fixed cases: both head dims and dtypes, group sizes 1..8
// and 7 (63-row blocks), block sizes 1..32, both launch modes, a one-key context, a row ending on a split
// boundary, a pair of blocks where only the second has keys in a split (ctx 290, 100 queries, group 1);
// the consumers' unequal tile counts that variant 5's turns must absorb without a hang: causal pairs
// (the lower block one tile short), decodes and odd last pairs (the second consumer has no block), the
// split above (the first has none); then random batches: 1..12 sequences, contexts 1..6000, query
// lengths 1, the whole context, or anything between (odd counts, not multiples of a tile or a block).
// Outputs NaN-poisoned first must be complete. Negative control: variants 3 to 6 under another split
// length must differ from the plan's bytes.
TEST(GpuAttentionSm90, WarpSpecializedKernelEqualsDefaultBitwise) {
  BIK_REQUIRE_SM90_ATTENTION();
  const std::vector<SeqSpec> mixed = {{96, 3000, 3000}, {97, 6000, 1}, {98, 5000, 300}, {99, 65, 65}, {100, 1, 1}};
  const std::vector<SeqSpec> straddle = {{110, 290, 100}, {111, 1, 1}, {112, 513, 130}, {113, 256, 129}};
  std::vector<VariantCase> cases = variant_cases();
  cases.insert(cases.end(), {
      {{DType::BF16, 4, 4, 128, 16}, straddle, "straddling blocks"},
      {{DType::F16, 8, 8, 64, 5}, straddle, "straddling blocks"},
      {{DType::BF16, 28, 4, 128, 16}, {{114, 2500, 2500}, {115, 700, 333}}, "prefill, group 7"},
      {{DType::F16, 28, 4, 64, 2}, mixed, "mixed, group 7"},
  });
  std::mt19937_64 rng(4242);
  const Config random_configs[] = {{DType::BF16, 32, 8, 128, 16}, {DType::F16, 8, 2, 128, 5},
                                   {DType::BF16, 16, 16, 64, 32}, {DType::F16, 28, 4, 64, 1},
                                   {DType::BF16, 12, 3, 128, 7}, {DType::F16, 8, 1, 128, 16}};
  for (int i = 0; i < 12; ++i) {
    std::vector<SeqSpec> seqs;
    const int nseq = 1 + int(rng() % 12);
    for (int k = 0; k < nseq; ++k) {
      const int64_t ctx = 1 + int64_t(rng() % 6000);
      const uint64_t kind = rng() % 3;
      const int64_t q = kind == 0 ? 1 : kind == 1 ? ctx : 1 + int64_t(rng() % uint64_t(ctx));
      seqs.push_back({rng(), ctx, q});
    }
    cases.push_back({random_configs[i % 6], seqs, "random batch " + std::to_string(i)});
  }
  uint64_t seed = 2201;
  for (const VariantCase& k : cases) {
    const Config& c = k.c;
    std::vector<uint16_t> v1;
    ASSERT_NO_FATAL_FAILURE(run_variant(1, c, k.seqs, seed, v1));
    for (int v : kWarpSpecialized) {
      std::vector<uint16_t> vv;
      ASSERT_NO_FATAL_FAILURE(run_variant(v, c, k.seqs, seed, vv));
      const std::string label = config_label(c) + " (" + k.what + ", " + std::to_string(k.seqs.size()) +
                                " sequences), variant " + std::to_string(v);
      ASSERT_EQ(v1.size(), vv.size()) << label;
      expect_same_output(c.dtype, v1, vv, label, "from variant 1");
    }
    ++seed;
  }
  expect_other_splits_differ(kWarpSpecialized);
}

// Variants 3 to 6 run on a persistent grid (one CTA an SM walking the work units) wherever a step has more
// units than SMs, contexts of at most 4096 (BIK_ATTENTION_PERSISTENT=2: any context) and no split launch;
// BIK_ATTENTION_PERSISTENT=0 keeps one CTA a unit. Every output byte must be the same:
// many short prefills (16 x 512, the case the persistent grid is for), ragged prefills with cached
// prefixes, decode batches of 256 sequences (2048 units), both head dims, block sizes
// that are and are not multiples of 16. Negative control: under the persistent grid another split length
// must still change the bytes (expect_other_splits_differ, whose 2000-token prefill has 504 units).
TEST(GpuAttentionSm90, PersistentGridKeepsTheBits) {
  BIK_REQUIRE_SM90_ATTENTION();
  std::vector<SeqSpec> short16, ragged, decode256;
  for (uint64_t i = 0; i < 16; ++i) short16.push_back({300 + i, 512, 512});
  for (uint64_t i = 0; i < 9; ++i) ragged.push_back({400 + i, int64_t(200 + 311 * i), int64_t(1 + 97 * i)});
  for (uint64_t i = 0; i < 256; ++i) decode256.push_back({500 + i, int64_t(1 + (i * 977) % 1500), 1});
  const std::vector<VariantCase> cases = {
      {{DType::BF16, 32, 8, 128, 16}, short16, "16 x 512 prefill"},
      {{DType::BF16, 32, 8, 128, 16}, ragged, "ragged prefill"},
      {{DType::BF16, 32, 8, 128, 16}, {{450, 6000, 6000}}, "6000-token prefill"},
      {{DType::BF16, 32, 8, 128, 16}, decode256, "decode, 256 sequences"},
      {{DType::F16, 16, 2, 64, 7}, short16, "16 x 512 prefill"},
      {{DType::F16, 16, 2, 64, 7}, decode256, "decode, 256 sequences"},
      {{DType::BF16, 12, 3, 128, 5}, ragged, "ragged prefill"},
  };
  uint64_t seed = 3301;
  for (const VariantCase& k : cases)
    for (int v : {3, 5, 6}) {  // 5 has every change of 4
      std::vector<uint16_t> persistent, per_unit;
      setenv("BIK_ATTENTION_PERSISTENT", "2", 1);  // whatever the contexts
      ASSERT_NO_FATAL_FAILURE(run_variant(v, k.c, k.seqs, seed, persistent));
      setenv("BIK_ATTENTION_PERSISTENT", "0", 1);
      run_variant(v, k.c, k.seqs, seed, per_unit);
      unsetenv("BIK_ATTENTION_PERSISTENT");
      const std::string label = config_label(k.c) + " (" + k.what + "), variant " + std::to_string(v);
      ASSERT_EQ(persistent.size(), per_unit.size()) << label;
      expect_same_output(k.c.dtype, persistent, per_unit, label, "from one CTA a unit");
      ++seed;
    }
  expect_other_splits_differ(kWarpSpecialized);
}

// The persistent grid's unit hand-out (BIK_ATTENTION_ORDER: 0 the static rounds, G >= 1 a counter over
// groups of G sequence x KV-head columns, whatever the step's size) and the output store (prefill blocks
// staged through shared memory in 16-byte chunks, decodes' few rows in 4-byte pieces) move work between
// CTAs and threads only: every order, on variants 3, 4 and 5, must give the bytes of variant 1 (one
// warpgroup, one CTA a unit, every row stored in 4-byte pieces).
TEST(GpuAttentionSm90, UnitOrderAndOutputStoreKeepTheBits) {
  BIK_REQUIRE_SM90_ATTENTION();
  std::vector<SeqSpec> short16, ragged, decode256;
  for (uint64_t i = 0; i < 16; ++i) short16.push_back({700 + i, 512 + int64_t(37 * i), 512});
  for (uint64_t i = 0; i < 9; ++i) ragged.push_back({800 + i, int64_t(200 + 311 * i), int64_t(1 + 97 * i)});
  for (uint64_t i = 0; i < 256; ++i) decode256.push_back({900 + i, int64_t(1 + (i * 977) % 1500), 1 + int64_t(i % 5)});
  const std::vector<VariantCase> cases = {
      {{DType::BF16, 32, 8, 128, 16}, short16, "16 x 512 prefill"},
      {{DType::BF16, 32, 8, 128, 16}, ragged, "ragged prefill"},
      {{DType::BF16, 32, 8, 128, 16}, decode256, "256 sequences, 1-5 queries"},
      {{DType::F16, 16, 2, 64, 7}, short16, "16 x 512 prefill"},
      {{DType::BF16, 12, 3, 128, 5}, ragged, "ragged prefill"},
  };
  uint64_t seed = 4401;
  for (const VariantCase& k : cases) {
    const std::string label = config_label(k.c) + " (" + k.what + ")";
    std::vector<uint16_t> ref;
    ASSERT_NO_FATAL_FAILURE(run_variant(1, k.c, k.seqs, seed, ref));
    setenv("BIK_ATTENTION_PERSISTENT", "2", 1);
    for (int v : {3, 4, 5})
      for (const char* order : {"0", "1", "3", "8", "100000"}) {
        if (v != 5 && std::strcmp(order, "8") != 0) continue;  // every order on the default variant
        setenv("BIK_ATTENTION_ORDER", order, 1);
        std::vector<uint16_t> got;
        ASSERT_NO_FATAL_FAILURE(run_variant(v, k.c, k.seqs, seed, got));
        ASSERT_EQ(got.size(), ref.size()) << label;
        expect_same_output(k.c.dtype, got, ref, label + ", variant " + std::to_string(v) + ", order " + order,
                           "from variant 1");
      }
    unsetenv("BIK_ATTENTION_ORDER");
    unsetenv("BIK_ATTENTION_PERSISTENT");
    ++seed;
  }
  expect_other_splits_differ({5});
}

// The hand-out rule itself (host code, runs without a GPU): static rounds while the shared K/V fit the L2,
// else groups of columns whose K/V fill at most half of it, 1 to 8 columns.
TEST(AttentionLaunchRule, OrderGroupKeepsColumnsInHalfTheL2) {
  constexpr int64_t MiB = int64_t(1) << 20, l2 = 60 * MiB;
  constexpr int64_t col = 128 * 2 * 2;  // one position's key and value for one KV head: bf16, d = 128
  EXPECT_EQ(bik::cuda::attention_order_group(32 * MiB, 32768 * col, l2), 0) << "fits the L2: static rounds";
  EXPECT_EQ(bik::cuda::attention_order_group(l2, 4 * MiB, l2), 0) << "exactly the L2 still fits";
  EXPECT_EQ(bik::cuda::attention_order_group(8 * 32768 * col, 32768 * col, l2), 1) << "1 x 32768: 16 MiB a column";
  EXPECT_EQ(bik::cuda::attention_order_group(32 * 8192 * col, 8192 * col, l2), 7) << "4 x 8192: 4 MiB a column";
  EXPECT_EQ(bik::cuda::attention_order_group(128 * 2048 * col, 2048 * col, l2), 8) << "16 x 2048: capped at 8";
  EXPECT_EQ(bik::cuda::attention_order_group(8 * l2, 2 * l2, l2), 1) << "a column larger than the L2";
  EXPECT_EQ(bik::cuda::attention_order_group(2 * l2, 0, l2), 8) << "no column size known";
}

// The invariance checks of WarpSpecializedKernelInvariance, on whichever kernel BIK_ATTENTION_SM90 selects.
void check_invariance_on_current_kernel() {
  const Config c{DType::BF16, 32, 8, 128, 16};
  const Config c64{DType::F16, 8, 2, 64, 5};
  Outcome o = decode_vs_prefill(gpu(), c, 901, 3000, 10, 1, 1);
  EXPECT_EQ(o.diffs, 0) << "decode vs prefill: " << o.diffs << " of " << o.cases;
  o = decode_vs_prefill(gpu(), c64, 902, 1300, 5, 3, 2);
  EXPECT_EQ(o.diffs, 0) << "decode vs prefill (f16, D=64): " << o.diffs << " of " << o.cases;
  for (const Config& cc : {c, c64})
    for (int64_t chunk : {1, 7, 64, 129, 300}) {
      o = chunked_vs_whole(gpu(), cc, 903, 1100, chunk, uint64_t(chunk) + 11);
      EXPECT_EQ(o.cases, 1100);
      EXPECT_EQ(o.diffs, 0) << dtype_name(cc.dtype) << " D=" << cc.d << " chunk " << chunk << ": " << o.diffs
                            << " of " << o.cases;
    }
  for (int64_t cached : {1, 16, 63, 255, 256, 2000, 4000}) {
    o = prefix_hit_vs_miss(gpu(), c, 904, 4100, cached, uint64_t(cached) + 5);
    EXPECT_EQ(o.diffs, 0) << "cached " << cached << ": " << o.diffs << " of " << o.cases;
  }
  o = alone_vs_batched(gpu(), c, {{905, 5000, 3}, {906, 700, 64}, {907, 1, 1}, {908, 2100, 2100}}, {1, 3, 17, 40},
                       3000, 300, 6);
  EXPECT_GT(o.cases, 0);
  EXPECT_EQ(o.diffs, 0) << "alone vs batched: " << o.diffs << " of " << o.cases;
  o = alone_vs_batched(gpu(), Config{DType::F16, 28, 4, 64, 3}, {{909, 3000, 250}, {910, 90, 90}}, {2, 9}, 2500,
                       200, 8);
  EXPECT_GT(o.cases, 0);
  EXPECT_EQ(o.diffs, 0) << "alone vs batched (group 7, D=64): " << o.diffs << " of " << o.cases;
}

// The invariance checks on the warp-specialised kernels (variants 3 to 6) pinned explicitly: decode
// equals prefill, chunked prefill equals whole (chunks of 1, 7, 64, 129, 300 tokens with a neighbour
// decode in each chunk's batch), prefix-cache hit equals miss (cached prefixes inside and on tile and
// split borders), a row alone equals the row in random batches. With the bitwise test above (each
// equals variant 1 on whole steps) this carries variant 1's guarantees over to every path through them.
TEST(GpuAttentionSm90, WarpSpecializedKernelInvariance) {
  BIK_REQUIRE_SM90_ATTENTION();
  for (int v : kWarpSpecialized) {
    SCOPED_TRACE("variant " + std::to_string(v));
    EngineSwitch ws(std::to_string(v).c_str());
    ASSERT_EQ(cuda::attention_wgmma_variant(0), v);
    check_invariance_on_current_kernel();
  }
}

// The negative control under the warp-specialised kernels (variant 4, which has every change of 3,
// variant 5, which has every change of 4, and variant 6): the harness must still see a split count that
// follows the number of sequences.
TEST(GpuAttentionSm90, NegativeControlOnWarpSpecializedKernel) {
  BIK_REQUIRE_SM90_ATTENTION();
  for (const char* v : {"4", "5", "6"}) {
    SCOPED_TRACE(std::string("variant ") + v);
    EngineSwitch ws(v);
    ASSERT_EQ(cuda::attention_wgmma_variant(0), std::atoi(v));
    Config c{DType::BF16, 32, 8, 128, 16};
    const Outcome o = alone_vs_batched(gpu(), c, {{102, 2100, 1}, {104, 777, 5}}, {2, 5, 13}, 1500, 64, 42, split_by_seqs);
    EXPECT_GT(o.diffs, 0) << "the harness missed a batch-variant split count (" << o.cases << " rows)";
  }
}
#endif  // BIK_WITH_CUDA

}  // namespace
}  // namespace bik

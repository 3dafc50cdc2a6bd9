// Paged causal attention on the CPU: accuracy vs float64, and bitwise invariance: a query row alone vs
// in any batch at any position, decode vs prefill, chunked prefill vs whole, prefix-cache hit vs miss,
// all over shuffled physical blocks. A split-count-by-sequences variant must be caught by the same check.
#include <gtest/gtest.h>

#include <limits>

#include "attention_harness.h"
#include "core/attention_variants.h"
#include "core/policy.h"

namespace bik {
namespace {

using namespace attn_test;

const Device kCpu = Device::cpu();

TEST(CpuAttention, PlanTakesNoBatchArgument) {
  const policy::AttentionPlan p = policy::attention_plan({}, DType::BF16, 128);
  EXPECT_EQ(p.split_len % p.key_tile, 0);
  EXPECT_GT(p.split_len, 0);
}

TEST(CpuAttention, AccuracyVsFloat64) {
  struct Case {
    DType dt;
    int64_t hq, hkv, d, bs;
  };
  uint64_t seed = 1;
  for (Case k : {Case{DType::BF16, 8, 2, 128, 16}, Case{DType::F16, 8, 2, 128, 1}, Case{DType::BF16, 4, 4, 64, 7},
                 Case{DType::F16, 8, 1, 64, 32}, Case{DType::BF16, 6, 3, 128, 5}}) {
    Config c{k.dt, k.hq, k.hkv, k.d, k.bs};
    const std::vector<SeqSpec> seqs = {{11, 1, 1}, {12, 700, 700}, {13, 1300, 1}, {14, 520, 9}, {15, 257, 2}};
    const double err = max_error(kCpu, c, seqs, 6, seed++);
    EXPECT_LE(err, tolerance(c.dtype)) << dtype_name(c.dtype) << " D=" << c.d << " Hq=" << c.hq << " Hkv=" << c.hkv
                                       << " block=" << c.block_size;
  }
}

TEST(CpuAttention, LongContextDecodeAccuracy) {
  Config c{DType::BF16, 4, 1, 128, 16};
  const double err = max_error(kCpu, c, {{77, 32768, 1}, {78, 20001, 2}}, 2, 5);
  EXPECT_LE(err, tolerance(c.dtype));
}

TEST(CpuAttention, AloneEqualsBatched) {
  Config c{DType::BF16, 8, 2, 128, 16};
  const std::vector<SeqSpec> targets = {{101, 1, 1}, {102, 2100, 1}, {103, 300, 300}, {104, 777, 5}, {105, 513, 40}};
  const Outcome o = alone_vs_batched(kCpu, c, targets, {1, 2, 5, 13}, 1500, 64, 42);
  EXPECT_GT(o.cases, 1000);
  EXPECT_EQ(o.diffs, 0) << o.diffs << " of " << o.cases << " rows differ";
}

TEST(CpuAttention, AloneEqualsBatchedF16Head64) {
  Config c{DType::F16, 4, 2, 64, 3};
  const std::vector<SeqSpec> targets = {{201, 1000, 3}, {202, 64, 64}};
  const Outcome o = alone_vs_batched(kCpu, c, targets, {3, 8}, 1200, 50, 43);
  EXPECT_EQ(o.diffs, 0) << o.diffs << " of " << o.cases << " rows differ";
}

TEST(CpuAttention, DecodeEqualsPrefill) {
  Config c{DType::BF16, 8, 2, 128, 16};
  Outcome o = decode_vs_prefill(kCpu, c, 301, 530, 12, 1, 1);  // crosses the split boundary at 512
  EXPECT_EQ(o.diffs, 0) << o.diffs << " of " << o.cases;
  o = decode_vs_prefill(kCpu, c, 302, 600, 5, 4, 2);  // a few query tokens per step (speculative decode)
  EXPECT_EQ(o.diffs, 0) << o.diffs << " of " << o.cases;
  Config c2{DType::F16, 4, 4, 64, 1};
  o = decode_vs_prefill(kCpu, c2, 303, 258, 4, 1, 3);
  EXPECT_EQ(o.diffs, 0) << o.diffs << " of " << o.cases;
}

TEST(CpuAttention, ChunkedPrefillEqualsWhole) {
  Config c{DType::BF16, 4, 2, 128, 16};
  for (int64_t chunk : {1, 7, 64, 300}) {
    const Outcome o = chunked_vs_whole(kCpu, c, 401, 650, chunk, uint64_t(chunk));
    EXPECT_EQ(o.cases, 650);
    EXPECT_EQ(o.diffs, 0) << "chunk " << chunk << ": " << o.diffs << " of " << o.cases;
  }
}

TEST(CpuAttention, PrefixHitEqualsMiss) {
  Config c{DType::BF16, 8, 2, 128, 16};
  for (int64_t cached : {1, 16, 255, 256, 500}) {
    const Outcome o = prefix_hit_vs_miss(kCpu, c, 501, 700, cached, uint64_t(cached));
    EXPECT_EQ(o.diffs, 0) << "cached " << cached << ": " << o.diffs << " of " << o.cases;
  }
}

// The same comparison must catch a variant whose split length depends on the number of sequences.
TEST(CpuAttention, NegativeControlSplitBySequencesIsCaught) {
  Config c{DType::BF16, 8, 2, 128, 16};
  const AttnOp variant = [](const TensorView& out, const TensorView& q, const TensorView& kc, const TensorView& vc,
                            const TensorView& bt, const TensorView& sl, const TensorView& qsl, float scale) {
    paged_attention_split_by_seqs(out, q, kc, vc, bt, sl, qsl, scale);
  };
  const std::vector<SeqSpec> targets = {{102, 2100, 1}, {104, 777, 5}};
  const Outcome o = alone_vs_batched(kCpu, c, targets, {2, 5, 13}, 1500, 64, 42, variant);
  EXPECT_GT(o.diffs, 0) << "the harness missed a batch-variant split count (" << o.cases << " rows)";
}

// The engine's path (metadata given on the host) is the same attention, bit for bit, and as invariant.
TEST(CpuAttention, HostMetadataPathGivesTheSameBits) {
  const Config c{DType::BF16, 8, 2, 128, 16};
  const std::vector<SeqSpec> batch{{1, 300, 300}, {2, 40, 1}, {3, 700, 5}, {4, 17, 17}};
  EXPECT_EQ(run_step(Device::cpu(), c, batch, 7), run_step(Device::cpu(), c, batch, 7, attention_with_host_metadata));
  const Outcome o = alone_vs_batched(Device::cpu(), c, {{11, 520, 9}, {12, 33, 1}}, {1, 3, 8}, 900, 40, 5,
                                     attention_with_host_metadata);
  EXPECT_GT(o.cases, 0);
  EXPECT_EQ(o.diffs, 0);
}

TEST(CpuAttention, ValidatesArguments) {
  Config c{DType::BF16, 4, 2, 64, 16};
  auto t = [](Shape s, DType d) { return Tensor::empty(s, d); };
  Tensor q = t({3, 4, 64}, DType::BF16), out = t({3, 4, 64}, DType::BF16);
  Tensor kc = t({4, 16, 2, 64}, DType::BF16), vc = t({4, 16, 2, 64}, DType::BF16);
  Tensor bt = t({1, 4}, DType::I32), sl = t({1}, DType::I32), qsl = t({2}, DType::I32);
  for (int i = 0; i < 4; ++i) bt.ptr<int32_t>()[i] = i;
  sl.ptr<int32_t>()[0] = 40;
  qsl.ptr<int32_t>()[0] = 0;
  qsl.ptr<int32_t>()[1] = 3;
  fill_bytes(kc, 0);
  fill_bytes(vc, 0);
  fill_bytes(q, 0);
  EXPECT_NO_THROW(paged_attention(out, q, kc, vc, bt, sl, qsl, 0.125f));
  auto msg = [&](auto fn) {
    try {
      fn();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  for (float bad : {0.f, -0.125f, std::numeric_limits<float>::infinity()})
    EXPECT_NE(msg([&] { paged_attention(out, q, kc, vc, bt, sl, qsl, bad); }).find("scale must be positive and finite"),
              std::string::npos)
        << bad;
  Tensor q96 = t({3, 4, 96}, DType::BF16);
  EXPECT_NE(msg([&] { paged_attention(q96, q96, kc, vc, bt, sl, qsl, 1.f); }).find("head_dim"), std::string::npos);
  Tensor q16 = t({3, 4, 64}, DType::F16);
  EXPECT_NE(msg([&] { paged_attention(q16, q16, kc, vc, bt, sl, qsl, 1.f); }).find("k_cache must be f16"),
            std::string::npos);
  Tensor q3 = t({3, 3, 64}, DType::BF16);
  EXPECT_NE(msg([&] { paged_attention(q3, q3, kc, vc, bt, sl, qsl, 1.f); }).find("multiple of num_kv_heads"),
            std::string::npos);
  bt.ptr<int32_t>()[2] = 4;
  EXPECT_NE(msg([&] { paged_attention(out, q, kc, vc, bt, sl, qsl, 1.f); }).find("block_tables[0, 2] = 4"),
            std::string::npos);
  bt.ptr<int32_t>()[2] = 2;
  bt.ptr<int32_t>()[3] = -1;  // unused by a 40-token sequence: ignored
  EXPECT_NO_THROW(paged_attention(out, q, kc, vc, bt, sl, qsl, 1.f));
  sl.ptr<int32_t>()[0] = 2;
  EXPECT_NE(msg([&] { paged_attention(out, q, kc, vc, bt, sl, qsl, 1.f); }).find("seq_lens[0] = 2"), std::string::npos);
  sl.ptr<int32_t>()[0] = 65;
  EXPECT_NE(msg([&] { paged_attention(out, q, kc, vc, bt, sl, qsl, 1.f); }).find("needs more than"), std::string::npos);
  sl.ptr<int32_t>()[0] = 40;
  qsl.ptr<int32_t>()[1] = 2;
  EXPECT_NE(msg([&] { paged_attention(out, q, kc, vc, bt, sl, qsl, 1.f); }).find("query_start_loc[1]"),
            std::string::npos);
  qsl.ptr<int32_t>()[1] = 3;
  Tensor sl2 = t({2}, DType::I32);
  EXPECT_NE(msg([&] { paged_attention(out, q, kc, vc, bt, sl2, qsl, 1.f); }).find("seq_lens must be"),
            std::string::npos);

  // The host copies are checked the same way, and must have the tensors' sizes.
  std::vector<int32_t> hbt{0, 1, 2, 3}, hsl{40}, hqsl{0, 3};
  EXPECT_NO_THROW(paged_attention(out, q, kc, vc, bt, sl, qsl, 1.f, {hbt, hsl, hqsl}));
  hbt[1] = 9;
  EXPECT_NE(msg([&] { paged_attention(out, q, kc, vc, bt, sl, qsl, 1.f, {hbt, hsl, hqsl}); })
                .find("block_tables[0, 1] = 9"),
            std::string::npos);
  hbt[1] = 1;
  const std::vector<int32_t> short_bt{0, 1};
  EXPECT_NE(msg([&] { paged_attention(out, q, kc, vc, bt, sl, qsl, 1.f, {short_bt, hsl, hqsl}); })
                .find("the host copy of block_tables has 2 values, the tensor 4"),
            std::string::npos);
  hqsl[1] = 2;
  EXPECT_NE(msg([&] { paged_attention(out, q, kc, vc, bt, sl, qsl, 1.f, {hbt, hsl, hqsl}); }).find("query_start_loc[1]"),
            std::string::npos);

  Tensor k = t({2, 2, 64}, DType::BF16), v = t({2, 2, 64}, DType::BF16), sm = t({2}, DType::I32);
  fill_bytes(k, 0);
  fill_bytes(v, 0);
  sm.ptr<int32_t>()[0] = 5;
  sm.ptr<int32_t>()[1] = -1;
  EXPECT_NO_THROW(write_kv_cache(kc, vc, k, v, sm));
  sm.ptr<int32_t>()[1] = 64;
  EXPECT_NE(msg([&] { write_kv_cache(kc, vc, k, v, sm); }).find("slot_mapping[1] = 64"), std::string::npos);
  sm.ptr<int32_t>()[1] = 5;
  EXPECT_NE(msg([&] { write_kv_cache(kc, vc, k, v, sm); }).find("repeats"), std::string::npos);
  const std::vector<int32_t> host_slots{5, 70};
  EXPECT_NE(msg([&] { write_kv_cache(kc, vc, k, v, sm, host_slots); }).find("slot_mapping[1] = 70"), std::string::npos);
  const std::vector<int32_t> one_slot{5};
  EXPECT_NE(msg([&] { write_kv_cache(kc, vc, k, v, sm, one_slot); }).find("host copy of slot_mapping has 1"),
            std::string::npos);
  Tensor k3 = t({2, 3, 64}, DType::BF16);
  EXPECT_NE(msg([&] { write_kv_cache(kc, vc, k3, k3, sm); }).find("kv heads"), std::string::npos);
}

}  // namespace
}  // namespace bik

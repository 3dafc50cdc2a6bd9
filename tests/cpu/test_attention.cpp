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
  EXPECT_GT(p.splits.len, 0);
  EXPECT_EQ(p.splits.len % p.key_tile, 0);
  EXPECT_EQ(p.splits.long_len % p.splits.len, 0);
  EXPECT_EQ(p.splits.long_from % p.splits.long_len, 0);
  // Both backends cut a context at the same positions.
  const policy::AttentionPlan g = policy::attention_plan({policy::Backend::CUDA, 90}, DType::BF16, 128);
  EXPECT_EQ(g.splits.len, p.splits.len);
  EXPECT_EQ(g.splits.long_from, p.splits.long_from);
  EXPECT_EQ(g.splits.long_len, p.splits.long_len);
}

// The plan's grid: 256-key splits up to position 8192, 1024-key splits from there; every position lies in
// exactly one split, the splits tile the positions without gaps, and the counts and lengths agree.
TEST(CpuAttention, SplitGridTilesThePositions) {
  const policy::SplitGrid g = policy::attention_plan({}, DType::BF16, 128).splits;
  EXPECT_EQ(g.len, 256);
  EXPECT_EQ(g.long_from, 8192);
  EXPECT_EQ(g.long_len, 1024);
  EXPECT_EQ(g.begin(31), 7936);
  EXPECT_EQ(g.begin(32), 8192);
  EXPECT_EQ(g.begin(33), 9216);
  EXPECT_EQ(g.index(8191), 31);
  EXPECT_EQ(g.index(8192), 32);
  EXPECT_EQ(g.index(9215), 32);
  EXPECT_EQ(g.index(9216), 33);
  EXPECT_EQ(g.count(32768), 32 + 24);
  EXPECT_EQ(g.longest(8192), 256);
  EXPECT_EQ(g.longest(8193), 1024);
  for (const policy::SplitGrid& grid : {g, policy::uniform_split_grid(192), policy::make_split_grid(64, 512, 128)}) {
    int64_t bad = 0;
    for (int pos = 0; pos < 40000; ++pos) {
      const int j = grid.index(pos);
      bad += !(grid.begin(j) <= pos && pos < grid.begin(j + 1));
      bad += grid.begin(j + 1) - grid.begin(j) != grid.length(j);
      bad += grid.starts_at(pos) != (grid.begin(j) == pos);
      bad += grid.count(pos + 1) != j + 1;
    }
    EXPECT_EQ(bad, 0) << "split length " << grid.len << ", long " << grid.long_len << " from " << grid.long_from;
  }
  EXPECT_EQ(policy::uniform_split_grid(192).count(40000), (40000 + 191) / 192);
}

TEST(CpuAttention, SplitGridRejectsBadGrids) {
  auto message = [](auto fn) {
    try {
      fn();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message([] { policy::make_split_grid(0, 8192, 1024); }).find("split length 0"), std::string::npos);
  EXPECT_NE(message([] { policy::make_split_grid(256, 8192, 1000); }).find("long split length 1000"),
            std::string::npos);
  EXPECT_NE(message([] { policy::make_split_grid(256, 9000, 1024); }).find("start 9000"), std::string::npos);
  EXPECT_NE(message([] { policy::uniform_split_grid(-64); }).find("split length -64"), std::string::npos);
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

// Around the start of the long splits (8192) and the first long split's end (9216): decode equals prefill,
// chunks crossing both equal the whole prefill, and a prefix cached up to 8192 (or inside a long split)
// gives the bits of the miss. One small head keeps the CPU's 9k-token prefills short.
TEST(CpuAttention, LongSplitsKeepDecodeChunksAndPrefixHits) {
  const Config c{DType::BF16, 2, 1, 64, 16};
  Outcome o = decode_vs_prefill(kCpu, c, 311, 8300, 150, 1, 1);  // decodes 8150..8299
  EXPECT_EQ(o.diffs, 0) << o.diffs << " of " << o.cases;
  o = decode_vs_prefill(kCpu, c, 312, 9300, 40, 3, 2);  // decodes 9180..9299, three rows a step
  EXPECT_EQ(o.diffs, 0) << o.diffs << " of " << o.cases;
  o = chunked_vs_whole(kCpu, c, 411, 9400, 1000, 3);
  EXPECT_EQ(o.cases, 9400);
  EXPECT_EQ(o.diffs, 0) << "chunk 1000: " << o.diffs << " of " << o.cases;
  for (int64_t cached : {8192, 8700}) {
    o = prefix_hit_vs_miss(kCpu, c, 511, 9400, cached, uint64_t(cached));
    EXPECT_EQ(o.diffs, 0) << "cached " << cached << ": " << o.diffs << " of " << o.cases;
  }
}

// The long splits are in effect, and nowhere else: against a uniform grid of 256-key splits (the
// split-by-sequences variant with 8 sequences), rows before 8448 (where the two grids still agree: the long
// split 8192.. and the short split 8192..8447 hold the same keys for them) are bitwise equal, and rows
// from 8448 on differ somewhere.
TEST(CpuAttention, LongSplitsStartAt8192) {
  const Config c{DType::BF16, 2, 1, 64, 16};
  std::vector<SeqSpec> batch{{611, 9000, 9000}};
  for (uint64_t k = 0; k < 7; ++k) batch.push_back({700 + k, 3, 1});
  const AttnOp uniform256 = [](const TensorView& out, const TensorView& q, const TensorView& kc,
                               const TensorView& vc, const TensorView& bt, const TensorView& sl,
                               const TensorView& qsl, float scale) {
    paged_attention_split_by_seqs(out, q, kc, vc, bt, sl, qsl, scale);  // 8 sequences: 4 tiles = 256 keys
  };
  const std::vector<uint16_t> plan = run_step(kCpu, c, batch, 5), uniform = run_step(kCpu, c, batch, 5, uniform256);
  int64_t early_diffs = 0, late_diffs = 0;
  for (int64_t r = 0; r < 9000; ++r)
    (r < 8448 ? early_diffs : late_diffs) += row_bytes(c, plan, r) != row_bytes(c, uniform, r);
  EXPECT_EQ(early_diffs, 0) << "rows before 8448 must not see the long splits";
  EXPECT_GT(late_diffs, 0) << "rows from 8448 on gave the uniform grid's bits: the long splits are not in effect";
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

// The engine's determinism suite (tests/engine_suite.h) with the model split over two tensor-parallel
// ranks (threads on the CPU, the K-chunk tree on): every property the single model has (needle alone vs
// in batches, decode == prefill, chunk and block sizes, prefix cache, preemption, aborts, run to run, and
// the batch-invariant-off control) must hold for a TpModel as well. Then: each shard's fused q|k|v and
// gate|up weights (stacked from the rank's rows) give the bits of the shards that run them apart.
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <random>
#include <string>

#include "bik/tensor.h"
#include "engine/model.h"
#include "engine/tp_model.h"
#include "engine_tp_fixture.h"

namespace bik::engine {
namespace {
Device engine_test_device() { return Device::cpu(); }
std::unique_ptr<ModelRunner> engine_test_model(const ModelConfig& c, const Weights& w, Device d, bool invariant) {
  return test_fixtures::tp2_model(c, w, d, invariant, TpTransport::Threads);
}
class EngineTp2 : public ::testing::Test {};
}  // namespace
}  // namespace bik::engine

#define BIK_ENGINE_FIXTURE EngineTp2
#include "engine_suite.h"

namespace bik::engine {
namespace {

// Two sequences prefilled together (every row's logits), then a decode step of both: the logits of both
// steps, and the row stride of rank 0's q_proj output in layer 0.
std::pair<std::vector<float>, int64_t> tp_prefill_then_decode(TpModel& m, uint32_t seed) {
  std::mt19937 rng(seed);
  const auto p0 = random_prompt(rng, 21, m.vocab_size()), p1 = random_prompt(rng, 6, m.vocab_size());
  auto add = [](StepBatch& b, const std::vector<int32_t>& ids, int64_t first_pos, std::vector<int32_t> blocks) {
    for (size_t t = 0; t < ids.size(); ++t) {
      const int64_t pos = first_pos + int64_t(t);
      b.logit_rows.push_back(int32_t(b.token_ids.size()));
      b.token_ids.push_back(ids[t]);
      b.positions.push_back(int32_t(pos));
      b.slot_mapping.push_back(blocks[size_t(pos / 16)] * 16 + int32_t(pos % 16));
    }
    b.query_start_loc.push_back(int32_t(b.token_ids.size()));
    b.seq_lens.push_back(int32_t(first_pos + int64_t(ids.size())));
    b.block_tables.push_back(blocks);
  };
  StepBatch pre, dec;
  pre.query_start_loc = dec.query_start_loc = {0};
  add(pre, p0, 0, {0, 1});
  add(pre, p1, 0, {3});
  add(dec, {5}, 21, {0, 1});
  add(dec, {7}, 6, {3});
  int64_t stride = -1;
  m.shard(0).set_tap([&](const char* name, int64_t layer, const TensorView& out) {
    if (layer == 0 && std::string(name) == "q_proj") stride = out.stride[0];
  });
  KvCache cache = m.make_cache(6, 16);
  std::vector<float> logits;
  for (const StepBatch* b : {&pre, &dec}) {
    const Tensor l = m.forward(*b, cache);
    logits.insert(logits.end(), l.ptr<float>(), l.ptr<float>() + l.numel());
  }
  m.shard(0).set_tap(nullptr);
  return {logits, stride};
}

TEST(ModelTp, FusedShardProjectionsGiveTheBitsOfSeparateOnes) {
  for (const char* arch : {"llama", "qwen3", "qwen2"}) {
    SCOPED_TRACE(arch);
    const ModelConfig c = tiny_config(64, 512, arch);
    Weights w = Weights::dummy(c, 41);
    if (c.attn_bias) {  // dummy biases are zero: values show a bias slice on the wrong rank or rows
      std::mt19937 rng(8);
      std::normal_distribution<float> nd(0.0f, 0.5f);
      for (int64_t l = 0; l < c.layers; ++l)
        for (const char* b : {"attn.q_bias", "attn.k_bias", "attn.v_bias"}) {
          const std::string name = Weights::layer_name(l, b);
          Tensor t = Tensor::empty(w.get(name).sizes(), DType::BF16);
          for (int64_t i = 0; i < t.numel(); ++i) t.ptr<bf16>()[i] = to_bf16(nd(rng));
          w.set(name, t);
        }
    }
    TpOptions o;
    o.size = 2;
    o.chunks = kTpInvariantChunks;
    o.transport = TpTransport::Threads;
    TpModel fused(c, w, Device::cpu(), o);
    o.fuse_projections = false;
    TpModel apart(c, w, Device::cpu(), o);
    const auto [f, f_stride] = tp_prefill_then_decode(fused, 3);
    const auto [a, a_stride] = tp_prefill_then_decode(apart, 3);
    ASSERT_EQ(f.size(), size_t((27 + 2) * c.vocab));
    EXPECT_EQ(std::memcmp(f.data(), a.data(), f.size() * sizeof(float)), 0);
    // A rank holds half the heads: its fused rows are (Hq / 2 + 2 Hk / 2) D wide.
    EXPECT_EQ(f_stride, (c.heads / 2 + c.kv_heads) * c.head_dim);
    EXPECT_EQ(a_stride, c.heads / 2 * c.head_dim);
  }
}

}  // namespace
}  // namespace bik::engine

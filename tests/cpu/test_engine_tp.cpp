// The engine's determinism suite (tests/engine_suite.h) with the model split over two tensor-parallel
// ranks (threads on the CPU, the K-chunk tree on): every property the single model has (needle alone vs
// in batches, decode == prefill, chunk and block sizes, prefix cache, preemption, aborts, run to run, and
// the batch-invariant-off control) must hold for a TpModel as well. Then: each shard's fused q|k|v and
// gate|up weights (stacked from the rank's rows) give the bits of the shards that run them apart.
#include <gtest/gtest.h>

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
#include "engine_fusion.h"

namespace bik::engine {
namespace {

// Two sequences (21 and 6 tokens) prefilled together with every row's logits, then a decode step of
// both: the logits of both steps, and rank 0's taps.
FusionRun tp_prefill_then_decode(TpModel& m, uint32_t seed) {
  std::mt19937 rng(seed);
  const auto p0 = random_prompt(rng, 21, m.vocab_size()), p1 = random_prompt(rng, 6, m.vocab_size());
  return run_steps(m, m.shard(0), two_sequence_steps(p0, p1, 3, 5, 7), 6);
}

TEST(ModelTp, FusedShardProjectionsGiveTheBitsOfSeparateOnes) {
  for (const char* arch : {"llama", "qwen3", "qwen2"}) {
    SCOPED_TRACE(arch);
    const ModelConfig c = tiny_config(64, 512, arch);
    // Random biases (dummy ones are zero): values show a bias slice on the wrong rank or rows.
    const Weights w = with_random_biases(c, Weights::dummy(c, 41), 8);
    TpOptions o;
    o.size = 2;
    o.chunks = kTpInvariantChunks;
    o.transport = TpTransport::Threads;
    TpModel fused(c, w, Device::cpu(), o);
    o.fuse_projections = false;
    TpModel apart(c, w, Device::cpu(), o);
    const FusionRun f = tp_prefill_then_decode(fused, 3), a = tp_prefill_then_decode(apart, 3);
    ASSERT_EQ(f.logits.size(), size_t((27 + 2) * c.vocab) * sizeof(float));
    EXPECT_TRUE(f.logits == a.logits);
    // A rank holds half the heads: its fused rows are (Hq / 2 + 2 Hk / 2) D wide.
    EXPECT_EQ(tap_stride(f, "0.q_proj"), (c.heads / 2 + c.kv_heads) * c.head_dim);
    EXPECT_EQ(tap_stride(a, "0.q_proj"), c.heads / 2 * c.head_dim);
  }
}

}  // namespace
}  // namespace bik::engine

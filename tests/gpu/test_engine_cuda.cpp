// The engine's determinism suite (tests/engine_suite.h) on CUDA: the same tests as on the CPU, with the
// model, KV cache and sampling on cuda:0 and, for the batch-invariant-off control, cuBLASLt's default
// heuristic as the variant GEMM. Skips, saying why, without a GPU.
#include "gpu_env.h"
#include "bik/tensor.h"
#include "engine/model.h"
#include "cuda/device_info.h"
#include "cuda/gemm.h"
#include "gpu/test_util.h"

#include <memory>

namespace bik::engine {
namespace {
Device engine_test_device() { return Device::cuda(0); }
std::unique_ptr<ModelRunner> engine_test_model(const ModelConfig& c, const Weights& w, Device d, bool invariant) {
  return std::make_unique<LlamaModel>(c, w, d, invariant);
}
class EngineCuda : public ::testing::Test {
 protected:
  void SetUp() override { BIK_REQUIRE_GPU(); }
};
}  // namespace
}  // namespace bik::engine

#define BIK_ENGINE_FIXTURE EngineCuda
#include "engine_suite.h"

// ---- CUDA graphs for decode steps (LlamaModel::set_cuda_graphs) -------------------------------------------
namespace bik::engine {
namespace {

class EngineCudaGraphs : public ::testing::Test {
 protected:
  void SetUp() override { BIK_REQUIRE_GPU(); }
};

struct GraphModel {
  ModelConfig config;
  Weights weights;
  std::unique_ptr<LlamaModel> model;
  GraphModel(const ModelConfig& c, bool invariant) : config(c), weights(Weights::dummy(c, 7)) {
    model = std::make_unique<LlamaModel>(c, weights, Device::cuda(0), invariant);
  }
};

// Graphs on and off give the same tokens and logprobs, for a batch whose decode steps go through several
// buckets (20 sequences finishing at different lengths: buckets 32, 16, 8, ...), and the replays happened.
TEST_F(EngineCudaGraphs, OnAndOffGiveIdenticalResults) {
  GraphModel gm(tiny_config(), true);
  std::mt19937 rng(31);
  const auto needle = random_prompt(rng, 29, gm.config.vocab);
  const RequestParams np = sampled(77, 40);
  Batch b = make_batch(rng, 20, gm.config.vocab, needle, np, 6);
  const auto off = run(*gm.model, engine_config(), b.prompts, b.params);
  gm.model->set_cuda_graphs(true);
  const auto on = run(*gm.model, engine_config(), b.prompts, b.params);
  ASSERT_EQ(on.size(), off.size());
  for (size_t i = 0; i < on.size(); ++i) EXPECT_TRUE(same_output(on[i], off[i])) << "request " << i;
  EXPECT_TRUE(gm.model->cuda_graphs()) << "a recording failed (see stderr); the steps ran op by op";
  EXPECT_GT(gm.model->graphs_recorded(), 2);
  EXPECT_GT(gm.model->graph_replays(), 20);
}

// Programmatic launches (cuda/launch.cuh: each kernel launched before the one ahead of it completes) change
// no token or logprob of a batch through prefill, chunked prefill and decode, eagerly and with graphs,
// against plain launches (BIK_PDL=0); on sm_90 the programmatic path ran (tests/gpu/test_pdl_cuda.cpp
// has the op-level chain).
TEST_F(EngineCudaGraphs, ProgrammaticLaunchesGiveThePlainLaunchResults) {
  GraphModel gm(tiny_config(256, 512, "qwen3"), true);
  std::mt19937 rng(33);
  const auto needle = random_prompt(rng, 70, gm.config.vocab);
  const RequestParams np = sampled(79, 24);
  Batch b = make_batch(rng, 12, gm.config.vocab, needle, np, 4);
  std::vector<RequestOutput> plain;
  {
    test::ScopedEnv off("BIK_PDL", "0");
    plain = run(*gm.model, engine_config(64), b.prompts, b.params);
  }
  test::ScopedEnv on("BIK_PDL", nullptr);
  const uint64_t before = cuda::programmatic_launches();
  const auto eager = run(*gm.model, engine_config(64), b.prompts, b.params);
  gm.model->set_cuda_graphs(true);
  const auto graphed = run(*gm.model, engine_config(64), b.prompts, b.params);
  if (cuda_device_props(0).arch() == 90) EXPECT_GT(cuda::programmatic_launches(), before + 100);
  ASSERT_EQ(eager.size(), plain.size());
  ASSERT_EQ(graphed.size(), plain.size());
  for (size_t i = 0; i < plain.size(); ++i) {
    EXPECT_TRUE(same_output(eager[i], plain[i])) << "request " << i;
    EXPECT_TRUE(same_output(graphed[i], plain[i])) << "request " << i;
  }
  EXPECT_GT(gm.model->graph_replays(), 10);
}

// With graphs on, the needle alone (bucket 1) and among 20 other prompts (larger buckets, padding rows)
// gives the same bits; and a second request on the same engine only replays recordings.
TEST_F(EngineCudaGraphs, NeedleAloneEqualsNeedleInBatch) {
  GraphModel gm(tiny_config(), true);
  gm.model->set_cuda_graphs(true);
  std::mt19937 rng(32);
  const auto needle = random_prompt(rng, 33, gm.config.vocab);
  const RequestParams np = sampled(78, 32);
  Batch b = make_batch(rng, 21, gm.config.vocab, needle, np, 13);
  const auto batch = run(*gm.model, engine_config(), b.prompts, b.params);
  LLMEngine engine(*gm.model, engine_config());
  const auto alone = engine.generate({needle}, {np});
  EXPECT_TRUE(same_output(alone[0], batch[13]));
  const int64_t recorded = gm.model->graphs_recorded(), replays = gm.model->graph_replays();
  const auto again = engine.generate({needle}, {np});  // the same engine and KV cache (prefix cache hit)
  EXPECT_TRUE(same_output(alone[0], again[0]));
  EXPECT_EQ(gm.model->graphs_recorded(), recorded) << "the second request should only replay";
  EXPECT_GE(gm.model->graph_replays(), replays + 30);
  EXPECT_TRUE(gm.model->cuda_graphs());
}

// The negative control: with the linear layers on cuBLASLt (batch-invariant off) and graphs on, the
// needle's numbers change with the batch (the shapes of BatchInvariantOffIsDetected on CUDA), so the
// comparison above can fail.
TEST_F(EngineCudaGraphs, BatchInvariantOffIsDetected) {
  const ModelConfig c = variant_gemm_config(true);
  GraphModel gm(c, false);
  gm.model->set_cuda_graphs(true);
  std::mt19937 rng(9);
  const auto needle = random_prompt(rng, 24, c.vocab);
  const RequestParams np = sampled(21, 12);
  Batch b = make_batch(rng, 40, c.vocab, needle, np, 10);
  const auto alone = run(*gm.model, engine_config(512), {needle}, {np});
  const auto batch = run(*gm.model, engine_config(512), b.prompts, b.params);
  EXPECT_FALSE(same_output(alone[0], batch[10])) << "cuBLASLt gave identical results: the control has no teeth";
  EXPECT_GT(gm.model->graph_replays(), 0);
}

}  // namespace
}  // namespace bik::engine

// ---- fused projections on CUDA (tests/cpu/test_engine.cpp has the CPU twin) --------------------------------
#include "engine_fusion.h"

namespace bik::engine {
namespace {

// The fused projections against the five run apart (tests/engine_fusion.h) on the CUDA kernels: the
// wgmma GEMM at the fused widths, and the strided q/k/v views through the q/k norms (the 16-byte path's
// [T, H, D] rows), rotary, the KV write and attention.
TEST(EngineCudaFusion, FusedProjectionsGiveTheBitsOfSeparateOnes) {
  BIK_REQUIRE_GPU();
  for (const char* arch : {"llama", "qwen3", "qwen2"}) {
    SCOPED_TRACE(arch);
    expect_fused_projections_give_the_bits_of_separate_ones(tiny_config(256, 512, arch), Device::cuda(0));
  }
}

// A gate|up wide enough for 64-column tiles (2 x 4096 rows): untapped, every layer of both steps runs the
// gated wgmma kernel (the launch counter), and the logits are those of the tapped run, which computes
// gate|up and silu_and_mul apart.
TEST(EngineCudaFusion, GatedMlpKernelGivesTheBitsOfTheTwoCalls) {
  BIK_REQUIRE_GPU();
  if (cuda_device_props(0).arch() != 90) GTEST_SKIP() << "the gated GEMM epilogue is the sm_90 kernel's";
  ModelConfig c = tiny_config(256, 512, "qwen3");
  c.intermediate = 4096;
  LlamaModel m(c, Weights::dummy(c, 31), Device::cuda(0));
  const FusionRun tapped = prefill_then_decode(m, 9);
  const uint64_t before = cuda::gemm_sm90_gated_launches();
  const FusionRun plain = prefill_then_decode(m, 9, false);
  EXPECT_EQ(cuda::gemm_sm90_gated_launches() - before, uint64_t(2 * c.layers));
  EXPECT_TRUE(plain.logits == tapped.logits);
}

// The control: one changed weight in the last row of v changes the fused model's logits on CUDA too.
TEST(EngineCudaFusion, ComparisonSeesOneChangedWeight) {
  BIK_REQUIRE_GPU();
  expect_fused_comparison_sees_one_changed_weight(tiny_config(256, 512, "llama"), Device::cuda(0));
}

}  // namespace
}  // namespace bik::engine

// The engine's determinism suite (tests/engine_suite.h) on CUDA with decode steps as CUDA graphs
// (LlamaModel::set_cuda_graphs): needle alone vs in batches, decode == prefill, chunk and block sizes,
// prefix cache, preemption, aborts, run to run and the batch-invariant-off control, every decode step of
// up to 256 sequences replayed from a recording. Skips, saying why, without a GPU.
#include <memory>

#include "bik/tensor.h"
#include "engine/model.h"
#include "gpu_env.h"

namespace bik::engine {
namespace {
Device engine_test_device() { return Device::cuda(0); }
std::unique_ptr<ModelRunner> engine_test_model(const ModelConfig& c, const Weights& w, Device d, bool invariant) {
  auto m = std::make_unique<LlamaModel>(c, w, d, invariant);
  m->set_cuda_graphs(true);
  return m;
}
class EngineCudaGraphsSuite : public ::testing::Test {
 protected:
  void SetUp() override { BIK_REQUIRE_GPU(); }
};
}  // namespace
}  // namespace bik::engine

#define BIK_ENGINE_FIXTURE EngineCudaGraphsSuite
#include "engine_suite.h"

// The engine's determinism suite (tests/engine_suite.h) on CUDA: the same tests as on the CPU, with the
// model, KV cache and sampling on cuda:0 and, for the batch-invariant-off control, cuBLASLt's default
// heuristic as the variant GEMM. Skips, saying why, without a GPU.
#include "gpu_env.h"
#include "bik/tensor.h"
#include "engine/model.h"

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

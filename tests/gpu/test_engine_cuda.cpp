// The engine's determinism suite (tests/engine_suite.h) on CUDA: the same tests as on the CPU, with the
// model, KV cache and sampling on cuda:0 and, for the batch-invariant-off control, cuBLASLt's default
// heuristic as the variant GEMM. Skips, saying why, without a GPU.
#include "gpu_env.h"
#include "bik/tensor.h"

namespace bik::engine {
namespace {
Device engine_test_device() { return Device::cuda(0); }
class EngineCuda : public ::testing::Test {
 protected:
  void SetUp() override { BIK_REQUIRE_GPU(); }
};
}  // namespace
}  // namespace bik::engine

#define BIK_ENGINE_FIXTURE EngineCuda
#include "engine_suite.h"

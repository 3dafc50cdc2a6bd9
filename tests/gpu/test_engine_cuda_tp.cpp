// The engine's determinism suite (tests/engine_suite.h) on two GPUs: the model split over two NCCL
// tensor-parallel ranks (cuda:0 and cuda:1, the K-chunk tree on). Skips, saying why, without two GPUs or
// without NCCL support in the build.
#include <memory>

#include "bik/tensor.h"
#include "engine/model.h"
#include "engine/tp.h"
#include "engine/tp_model.h"
#include "engine_tp_fixture.h"
#include "gpu_env.h"

namespace bik::engine {
namespace {
Device engine_test_device() { return Device::cuda(0); }
std::unique_ptr<ModelRunner> engine_test_model(const ModelConfig& c, const Weights& w, Device d, bool invariant) {
  return test_fixtures::tp2_model(c, w, d, invariant, TpTransport::Nccl);
}
class EngineCudaTp2 : public ::testing::Test {
 protected:
  void SetUp() override {
    BIK_REQUIRE_GPU();
    if (!nccl_built()) GTEST_SKIP() << "this build has no NCCL";
    if (cuda_device_count() < 2) GTEST_SKIP() << "needs 2 GPUs, found " << cuda_device_count();
  }
};
}  // namespace
}  // namespace bik::engine

#define BIK_ENGINE_FIXTURE EngineCudaTp2
#include "engine_suite.h"

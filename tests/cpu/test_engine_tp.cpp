// The engine's determinism suite (tests/engine_suite.h) with the model split over two tensor-parallel
// ranks (threads on the CPU, the K-chunk tree on): every property the single model has (needle alone vs
// in batches, decode == prefill, chunk and block sizes, prefix cache, preemption, aborts, run to run, and
// the batch-invariant-off control) must hold for a TpModel as well.
#include <gtest/gtest.h>

#include <memory>

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

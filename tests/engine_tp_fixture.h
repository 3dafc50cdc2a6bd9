// The model the determinism suite runs over two tensor-parallel ranks (tests/cpu/test_engine_tp.cpp,
// tests/gpu/test_engine_cuda_tp.cpp): the K-chunk tree on, ranks as threads or over NCCL.
#pragma once
#include <memory>

#include "engine/model.h"
#include "engine/tp_model.h"

namespace bik::test_fixtures {

inline std::unique_ptr<engine::ModelRunner> tp2_model(const engine::ModelConfig& c, const engine::Weights& w,
                                                      Device d, bool invariant, engine::TpTransport transport) {
  engine::TpOptions o;
  o.size = 2;
  o.chunks = engine::kTpInvariantChunks;
  o.transport = transport;
  return std::make_unique<engine::TpModel>(c, w, d, o, invariant);
}

}  // namespace bik::test_fixtures

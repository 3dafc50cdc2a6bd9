// Tiny Llama-family model configs shared by the engine, server and audit tests: with seeded dummy
// weights they are real models small enough to run hundreds of requests in a test.
#pragma once
#include <cstdint>
#include <string>

#include "engine/model_config.h"

namespace bik::test_fixtures {

// 2 layers, 4 query heads and 2 KV heads of 64, MLP 2 x hidden; "qwen3" adds q/k norms, "qwen2" q/k/v bias.
inline engine::ModelConfig tiny_model_config(int64_t hidden, int64_t vocab, int64_t max_position,
                                             const std::string& arch = "llama") {
  engine::ModelConfig c;
  c.arch = arch;
  c.hidden = hidden;
  c.intermediate = 2 * hidden;
  c.layers = 2;
  c.heads = 4;
  c.kv_heads = 2;
  c.head_dim = 64;
  c.vocab = vocab;
  c.max_position = max_position;
  c.rope_theta = 10000.0;
  c.rms_eps = 1e-5;
  c.qk_norm = arch == "qwen3";
  c.attn_bias = arch == "qwen2";
  c.tie_word_embeddings = false;
  c.eos_ids = {1};
  c.validate();
  return c;
}

}  // namespace bik::test_fixtures

// bik bisect (tools/bisect_cmd.cpp) and the forward's tap (LlamaModel::set_tap): with the batch-invariant
// kernels a prompt's every op is bitwise identical alone and in a batch; with the linear layers on
// OpenBLAS with split-K by the row count (check::split_k_openblas_gemm) the first op that differs is a GEMM.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine_fixtures.h"
#include "cli.h"
#include "engine/model.h"
#include "engine/model_config.h"

namespace {

namespace fs = std::filesystem;

fs::path write_config(const std::string& name, int64_t hidden, int64_t vocab) {
  const fs::path dir = fs::temp_directory_path() / ("bik_bisect_" + std::to_string(::getpid()) + "_" + name);
  fs::create_directories(dir);
  const nlohmann::json c = {{"architectures", {"LlamaForCausalLM"}},
                            {"model_type", "llama"},
                            {"hidden_size", hidden},
                            {"intermediate_size", 2 * hidden},
                            {"num_hidden_layers", 2},
                            {"num_attention_heads", 4},
                            {"num_key_value_heads", 2},
                            {"head_dim", 64},
                            {"vocab_size", vocab},
                            {"max_position_embeddings", 1024},
                            {"rms_norm_eps", 1e-5},
                            {"rope_theta", 10000.0},
                            {"tie_word_embeddings", false},
                            {"bos_token_id", 1},
                            {"eos_token_id", 2}};
  std::ofstream(dir / "config.json") << c.dump(2);
  return dir / "config.json";
}

struct Report {
  int rc = -1;
  nlohmann::json json;
};

Report bisect(const fs::path& config, const std::vector<std::string>& extra) {
  const fs::path out = config.parent_path() / "report.json";
  std::vector<std::string> args = {"--dummy-weights", config.string(), "--weights-seed", "3", "--json", out.string()};
  args.insert(args.end(), extra.begin(), extra.end());
  Report r;
  r.rc = bik::cli::cmd_bisect(args);
  if (fs::exists(out)) r.json = nlohmann::json::parse(std::ifstream(out));
  return r;
}

TEST(Bisect, BatchInvariantOnHasNoDivergence) {
  const fs::path cfg = write_config("on", 64, 512);
  for (const std::string pos : {"0", "7", "15"}) {
    const Report r = bisect(cfg, {"--prompt", "hello world, alone and in a batch", "--batch", "15", "--position", pos});
    EXPECT_EQ(r.rc, 0) << "position " << pos;
    ASSERT_TRUE(r.json.is_object());
    EXPECT_FALSE(r.json["divergence"].get<bool>());
    EXPECT_EQ(r.json["differing_tensors"].get<int>(), 0);
    // Every op of both layers and the final ones were captured, in forward order.
    const auto& ops = r.json["ops"];
    ASSERT_FALSE(ops.empty());
    EXPECT_EQ(ops.front()["name"], "embedding");
    EXPECT_EQ(ops.back()["name"], "lm_head");
    int projections = 0;
    for (const auto& op : ops) projections += op["op"].get<std::string>().find("_proj") != std::string::npos;
    EXPECT_EQ(projections, 2 * 7);
  }
  fs::remove_all(cfg.parent_path());
}

TEST(Bisect, BatchInvariantOffFindsAGemm) {
  const fs::path cfg = write_config("off", 1000, 1000);
  const Report r = bisect(cfg, {"--prompt", "a needle of some twenty-four tokens", "--batch", "19", "--seed", "4",
                                "--batch-invariant", "off"});
  EXPECT_EQ(r.rc, 1);
  ASSERT_TRUE(r.json.is_object());
  ASSERT_TRUE(r.json["divergence"].get<bool>());
  const auto& first = r.json["first_divergence"];
  const std::string op = first["op"];
  EXPECT_TRUE(op.find("_proj") != std::string::npos || op == "lm_head") << "first differing op: " << op;
  EXPECT_EQ(op.find("norm"), std::string::npos);
  EXPECT_GT(first["differing"].get<int64_t>(), 0);
  EXPECT_GT(first["max_abs_diff"].get<double>(), 0.0);
  // Everything before it is identical: the embedding and the norms are batch-invariant either way.
  for (const auto& o : r.json["ops"]) {
    if (o["name"] == first["name"]) break;
    EXPECT_EQ(o["differing"].get<int64_t>(), 0) << o["name"];
  }
  fs::remove_all(cfg.parent_path());
}

TEST(Bisect, BadInputExitsTwo) {
  const fs::path cfg = write_config("bad", 64, 512);
  EXPECT_EQ(bisect(cfg, {"--position", "16", "--batch", "15"}).rc, 2);
  EXPECT_EQ(bisect(cfg, {"--batch-invariant", "maybe"}).rc, 2);
  EXPECT_EQ(bisect(cfg, {"--device", "tpu"}).rc, 2);
  EXPECT_EQ(bisect(cfg, {"--nosuch", "1"}).rc, 2);
  fs::remove_all(cfg.parent_path());
}

// The tap sees each op once, in forward order, and leaves the logits untouched.
TEST(Bisect, TapDoesNotChangeTheForward) {
  using namespace bik;
  using namespace bik::engine;
  const ModelConfig c = test_fixtures::tiny_model_config(64, 300, 256, "qwen3");
  const Weights w = Weights::dummy(c, 5);
  LlamaModel m(c, w, Device::cpu());
  StepBatch b;
  for (int32_t t = 0; t < 9; ++t) {
    b.token_ids.push_back(3 + 7 * t);
    b.positions.push_back(t);
    b.slot_mapping.push_back(t);
  }
  b.query_start_loc = {0, 9};
  b.seq_lens = {9};
  b.block_tables = {{0}};
  b.logit_rows = {8, 2};
  auto logits = [&] {
    KvCache cache = m.make_cache(2, 16);
    Tensor l = m.forward(b, cache);
    return std::vector<float>(l.ptr<float>(), l.ptr<float>() + l.numel());
  };
  const std::vector<float> plain = logits();
  std::vector<std::string> names;
  m.set_tap([&](const char* name, int64_t layer, const TensorView& out) {
    names.push_back((layer >= 0 ? std::to_string(layer) + "." : std::string()) + name);
    EXPECT_EQ(out.size(0), std::string(name) == "lm_head" ? 2 : 9) << name;
  });
  const std::vector<float> tapped = logits();
  m.set_tap(nullptr);
  EXPECT_EQ(plain, tapped);
  ASSERT_EQ(names.size(), 1 + 2 * 17 + 3u);
  EXPECT_EQ(names[0], "embedding");
  EXPECT_EQ(names[1], "0.input_residual");
  EXPECT_EQ(names[6], "0.q_norm");
  EXPECT_EQ(names[17], "0.down_proj");
  EXPECT_EQ(names.back(), "lm_head");
}

}  // namespace

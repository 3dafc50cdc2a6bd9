#include "model_args.h"

#include <filesystem>

#include "bik/device.h"
#include "engine/gguf.h"
#include "engine/tp_model.h"

namespace bik::cli {

namespace fs = std::filesystem;

Device device_option(const Args& a, const std::string& command) {
  const std::string name = a.str("device", "cpu");
  BIK_CHECK(name == "cpu" || name == "cuda", command, ": --device must be cpu or cuda, got '", name, "'");
  if (name == "cpu") return Device::cpu();
  BIK_CHECK(cuda_built(), command, ": --device cuda: this build has no CUDA backend");
  BIK_CHECK(cuda_device_count() > 0, command, ": --device cuda: no CUDA device found");
  return Device::cuda(0);
}

bool batch_invariant_option(const Args& a, const std::string& command) {
  const std::string v = a.str("batch-invariant", "on");
  BIK_CHECK(v == "on" || v == "off", command, ": --batch-invariant must be on or off, got '", v, "'");
  return v == "on";
}

TpChoice tp_option(const Args& a, const std::string& command) {
  TpChoice t;
  BIK_CHECK(a.has("tp") || !a.has("tp-invariant"), command, ": --tp-invariant needs --tp");
  if (!a.has("tp")) return t;
  const int64_t k = a.integer("tp", 1);
  BIK_CHECK(k == 1 || k == 2 || k == 4 || k == 8, command, ": --tp must be 1, 2, 4 or 8, got ", k);
  t.size = int(k);
  const std::string inv = a.str("tp-invariant", "on");
  BIK_CHECK(inv == "on" || inv == "off", command, ": --tp-invariant must be on or off, got '", inv, "'");
  t.chunks = inv == "on" ? engine::kTpInvariantChunks : 0;
  return t;
}

bool cuda_graphs_option(const Args& a, const std::string& command, Device device, const TpChoice& tp) {
  const std::string v = a.str("cuda-graphs", "off");
  BIK_CHECK(v == "on" || v == "off", command, ": --cuda-graphs must be on or off, got '", v, "'");
  if (v == "off") return false;
  BIK_CHECK(device.is_cuda(), command, ": --cuda-graphs on needs --device cuda");
  BIK_CHECK(!a.has("tp"), command, ": --cuda-graphs on does not run with --tp yet");
  (void)tp;
  return true;
}

std::unique_ptr<engine::ModelRunner> make_runner(const engine::ModelConfig& config, const engine::Weights& weights,
                                                 Device device, bool batch_invariant, const TpChoice& tp,
                                                 const std::string& command, bool cuda_graphs) {
  engine::check_tp_size(tp.size, config, command);
  if (tp.size == 1) {
    engine::TpConfig tc;
    tc.chunks = tp.chunks;
    auto m = std::make_unique<engine::LlamaModel>(config, weights, device, batch_invariant, tc);
    if (cuda_graphs) m->set_cuda_graphs(true);
    return m;
  }
  engine::TpOptions o;
  o.size = tp.size;
  o.chunks = tp.chunks;
  return std::make_unique<engine::TpModel>(config, weights, device, o, batch_invariant);
}

ModelChoice model_option(const Args& a, const std::string& command) {
  BIK_CHECK(!(a.has("model") && a.has("dummy-weights")), command, ": give --model or --dummy-weights, not both");
  ModelChoice m;
  if (a.has("dummy-weights")) {
    m.path = a.str("dummy-weights");
    m.options.dummy_weights = true;
    m.options.seed = uint64_t(a.integer("weights-seed", 0));
  } else {
    m.path = a.str("model", engine::find_default_model());
    BIK_CHECK(!m.path.empty(), command,
              ": no --model given and the embedded SmolLM2 model is not installed "
              "(run scripts/setup.sh, or pass --dummy-weights CONFIG)");
  }
  return m;
}

std::optional<engine::Tokenizer> find_tokenizer(const std::string& path) {
  if (fs::is_regular_file(path) && fs::path(path).extension() == ".gguf") {
    engine::GgufFile f(path);
    if (f.has("tokenizer.ggml.tokens")) return engine::Tokenizer::from_gguf(f);
    return std::nullopt;
  }
  const fs::path dir = fs::is_directory(path) ? fs::path(path) : fs::path(path).parent_path();
  if (fs::is_regular_file(dir / "tokenizer.json")) return engine::Tokenizer::from_hf(dir.string());
  return std::nullopt;
}

}  // namespace bik::cli

#include "model_args.h"

#include <filesystem>

#include "bik/device.h"
#include "engine/gguf.h"

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

// Options shared by the commands that run a model (generate, serve, bisect, bench serve): which device,
// which model, whether batch invariance is on, and the tokenizer that comes with the model.
// Errors start with the command's name, e.g. "bik serve: --device must be cpu or cuda, got 'tpu'".
#pragma once
#include <optional>
#include <string>

#include "bik/tensor.h"
#include "cli.h"
#include "engine/model_config.h"
#include "engine/tokenizer.h"

namespace bik::cli {

// --device cpu|cuda (default cpu), checked against the build and the machine.
Device device_option(const Args& a, const std::string& command);

// --batch-invariant on|off (default on).
bool batch_invariant_option(const Args& a, const std::string& command);

// --model PATH | --dummy-weights CONFIG [--weights-seed S]; with neither, the embedded SmolLM2 model
// (an error saying how to install it when it is missing).
struct ModelChoice {
  std::string path;
  engine::LoadOptions options;
};
ModelChoice model_option(const Args& a, const std::string& command);

// The tokenizer that belongs with a model path (a GGUF's own vocabulary, or tokenizer.json beside the
// weights), when there is one.
std::optional<engine::Tokenizer> find_tokenizer(const std::string& path);

}  // namespace bik::cli

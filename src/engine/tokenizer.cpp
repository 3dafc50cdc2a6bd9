#include "engine/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <functional>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>

#include "bik/error.h"
#include "engine/gguf.h"

namespace bik::engine {

namespace fs = std::filesystem;
using nlohmann::json;

// ---- UTF-8, byte-level table, NFC ------------------------------------------------------------------------

namespace {

// 1: a valid sequence of *len bytes; 0: a valid but incomplete prefix reaching the end of the input;
// -1: invalid at this byte (skip 1).
int utf8_check(const uint8_t* p, size_t n, size_t* len) {
  const uint8_t b0 = p[0];
  if (b0 < 0x80) { *len = 1; return 1; }
  size_t need;
  uint8_t lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) need = 2;
  else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;  // <= U+10FFFF
  } else {
    *len = 1;
    return -1;
  }
  for (size_t k = 1; k < need; ++k) {
    if (k >= n) return 0;
    const uint8_t b = p[k];
    if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) { *len = 1; return -1; }
  }
  *len = need;
  return 1;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) out += char(cp);
  else if (cp < 0x800) { out += char(0xC0 | (cp >> 6)); out += char(0x80 | (cp & 0x3F)); }
  else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12)); out += char(0x80 | ((cp >> 6) & 0x3F)); out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18)); out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F)); out += char(0x80 | (cp & 0x3F));
  }
}

// Decodes one code point of valid UTF-8 at s[i], advancing i.
uint32_t next_cp(std::string_view s, size_t& i) {
  const uint8_t b0 = uint8_t(s[i]);
  if (b0 < 0x80) { ++i; return b0; }
  int n = b0 >= 0xF0 ? 4 : b0 >= 0xE0 ? 3 : 2;
  uint32_t cp = b0 & (0x3F >> (n - 1));
  for (int k = 1; k < n && i + k < s.size(); ++k) cp = (cp << 6) | (uint8_t(s[i + k]) & 0x3F);
  i += size_t(n);
  return cp;
}

struct ByteTable {
  uint32_t to_cp[256];
  std::unordered_map<uint32_t, int> from_cp;
  ByteTable() {
    // Printable Latin-1 bytes stand for themselves; the rest are shifted to 256 + k in byte order.
    int k = 0;
    for (int b = 0; b < 256; ++b) {
      const bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      to_cp[b] = keep ? uint32_t(b) : uint32_t(256 + k++);
      from_cp[to_cp[b]] = b;
    }
  }
};
const ByteTable& byte_table() {
  static const ByteTable t;
  return t;
}

}  // namespace

uint32_t byte_to_unicode(uint8_t b) { return byte_table().to_cp[b]; }

int byte_from_unicode(uint32_t cp) {
  auto it = byte_table().from_cp.find(cp);
  return it == byte_table().from_cp.end() ? -1 : it->second;
}

size_t utf8_valid_prefix(std::string_view s, int64_t* error_at) {
  size_t i = 0;
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  while (i < s.size()) {
    size_t len = 0;
    if (utf8_check(p + i, s.size() - i, &len) != 1) {
      if (error_at) *error_at = int64_t(i);
      return i;
    }
    i += len;
  }
  if (error_at) *error_at = -1;
  return i;
}

// NFC comes from utf8proc (Debian's libutf8proc-dev): one call, a small C library with the Unicode data
// tables built in and kept current by the distribution; a home-grown table would need the decomposition,
// composition-exclusion and combining-class data plus the Hangul rules, all to be kept in sync by hand.
std::string nfc_normalize(std::string_view s) {
  bool ascii = true;
  for (char c : s)
    if (uint8_t(c) >= 0x80) { ascii = false; break; }
  if (ascii) return std::string(s);
  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                                          utf8proc_ssize_t(s.size()), &out, utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (n < 0) throw Error(detail::concat("tokenizer: NFC failed: ", utf8proc_errmsg(n)));
  std::string r(reinterpret_cast<const char*>(out), size_t(n));
  std::free(out);
  return r;
}

// ---- regexes -----------------------------------------------------------------------------------------------

namespace {

// The Hugging Face tokenizers run their patterns with Oniguruma, whose \s is Unicode White_Space; PCRE2's
// \s (with UCP) lacks U+0085. Rewriting \s and \S to the explicit set makes both engines agree.
std::string to_pcre2(const std::string& pat) {
  static const char* kWs = "\\t-\\r\\x{85}\\p{Z}";
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pat.size(); ++i) {
    const char c = pat[i];
    if (c == '\\' && i + 1 < pat.size()) {
      const char n = pat[i + 1];
      if (n == 's') out += in_class ? std::string(kWs) : "[" + std::string(kWs) + "]";
      else if (n == 'S' && !in_class) out += "[^" + std::string(kWs) + "]";
      else { out += c; out += n; }
      ++i;
      continue;
    }
    if (c == '[' && !in_class) {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal member.
      if (i + 1 < pat.size() && pat[i + 1] == '^') { out += '^'; ++i; }
      if (i + 1 < pat.size() && pat[i + 1] == ']') { out += ']'; ++i; }
      continue;
    }
    if (c == ']' && in_class) in_class = false;
    out += c;
  }
  return out;
}

std::string escape_literal(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (std::strchr("\\^$.|?*+()[]{}", c)) out += '\\';
    out += c;
  }
  return out;
}

struct Regex {
  pcre2_code* code = nullptr;
  explicit Regex(const std::string& pattern) {
    int err = 0;
    PCRE2_SIZE off = 0;
    const std::string p = to_pcre2(pattern);
    code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(p.data()), p.size(), PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
    if (!code) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      throw Error(detail::concat("tokenizer: regex '", pattern, "' does not compile at offset ", off, ": ",
                                 reinterpret_cast<const char*>(msg)));
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // optional speed-up; matching falls back when unavailable
  }
  ~Regex() { pcre2_code_free(code); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Non-empty matches, left to right, as [start, end) byte offsets.
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view s) const {
    std::vector<std::pair<size_t, size_t>> out;
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
    size_t pos = 0;
    while (pos <= s.size()) {
      const int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        pcre2_match_data_free(md);
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        throw Error(detail::concat("tokenizer: regex match failed: ", reinterpret_cast<const char*>(msg)));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      const size_t a = ov[0], b = ov[1];
      if (b > a) {
        out.emplace_back(a, b);
        pos = b;
      } else {  // empty match: step over one character
        if (a >= s.size()) break;
        size_t i = a;
        next_cp(s, i);
        pos = i;
      }
    }
    pcre2_match_data_free(md);
    return out;
  }
};

void split_pieces(const std::string& s, const std::vector<std::pair<size_t, size_t>>& matches,
                  PreTokenizerStep::Behavior behavior, bool invert, std::vector<std::string>& out) {
  struct Span { size_t a, b; bool match; };
  std::vector<Span> spans;
  size_t prev = 0;
  for (auto [a, b] : matches) {
    if (a > prev) spans.push_back({prev, a, false});
    spans.push_back({a, b, true});
    prev = b;
  }
  if (prev < s.size()) spans.push_back({prev, s.size(), false});
  if (invert)
    for (Span& sp : spans) sp.match = !sp.match;
  using B = PreTokenizerStep;
  std::vector<std::pair<size_t, size_t>> pieces;
  switch (behavior) {
    case B::Removed:
      for (const Span& sp : spans)
        if (!sp.match) pieces.emplace_back(sp.a, sp.b);
      break;
    case B::Isolated:
      for (const Span& sp : spans) pieces.emplace_back(sp.a, sp.b);
      break;
    case B::MergedWithPrevious: {
      for (const Span& sp : spans) {
        if (sp.match && !pieces.empty() && pieces.back().second == sp.a) pieces.back().second = sp.b;
        else pieces.emplace_back(sp.a, sp.b);
      }
      break;
    }
    case B::MergedWithNext: {
      bool carry = false;
      for (const Span& sp : spans) {
        if (carry) pieces.back().second = sp.b;
        else pieces.emplace_back(sp.a, sp.b);
        carry = sp.match;
      }
      break;
    }
    case B::Contiguous: {
      bool last_match = false;
      for (const Span& sp : spans) {
        if (sp.match && last_match) pieces.back().second = sp.b;
        else pieces.emplace_back(sp.a, sp.b);
        last_match = sp.match;
      }
      break;
    }
  }
  for (auto [a, b] : pieces)
    if (b > a) out.emplace_back(s.substr(a, b - a));
}

}  // namespace

struct Tokenizer::Impl {
  std::vector<std::unique_ptr<Regex>> regexes;  // one per step (null where a step needs none)
  std::vector<std::vector<int>> added_by_byte;  // first byte -> indices into added_, longest first
};

Tokenizer::Tokenizer() : impl_(std::make_unique<Impl>()) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

const char* Tokenizer::gpt2_regex() {
  return "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
}

std::vector<std::string> Tokenizer::gguf_pre_regexes(const std::string& pre) {
  static const std::string kLlama3 =
      "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
      "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
  static const std::string kQwen2 =
      "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
      "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
  if (pre.empty() || pre == "default" || pre == "gpt-2" || pre == "gpt2") return {gpt2_regex()};
  if (pre == "llama3" || pre == "llama-v3" || pre == "llama-bpe") return {kLlama3};
  if (pre == "qwen2" || pre == "deepseek-r1-qwen") return {kQwen2};
  // SmolLM2 / StarCoder: every digit on its own, then the GPT-2 split.
  if (pre == "smollm" || pre == "starcoder" || pre == "refact") return {"\\p{N}", gpt2_regex()};
  return {};
}

// ---- loading ------------------------------------------------------------------------------------------------

namespace {

PreTokenizerStep::Behavior parse_behavior(const std::string& b, const std::string& what) {
  if (b == "Removed") return PreTokenizerStep::Removed;
  if (b == "Isolated") return PreTokenizerStep::Isolated;
  if (b == "MergedWithPrevious") return PreTokenizerStep::MergedWithPrevious;
  if (b == "MergedWithNext") return PreTokenizerStep::MergedWithNext;
  if (b == "Contiguous") return PreTokenizerStep::Contiguous;
  throw Error(detail::concat(what, ": pre_tokenizer Split behavior '", b, "' is unknown"));
}

void parse_pre_tokenizer(const json& p, std::vector<PreTokenizerStep>& steps, const std::string& what) {
  if (p.is_null()) return;
  const std::string type = p.value("type", std::string());
  if (type == "Sequence") {
    for (const json& s : p.at("pretokenizers")) parse_pre_tokenizer(s, steps, what);
    return;
  }
  PreTokenizerStep st;
  if (type == "Split") {
    st.kind = PreTokenizerStep::Split;
    const json& pat = p.at("pattern");
    if (pat.contains("Regex")) st.pattern = pat["Regex"].get<std::string>();
    else if (pat.contains("String")) st.pattern = escape_literal(pat["String"].get<std::string>());
    else throw Error(what + ": pre_tokenizer Split pattern is neither Regex nor String");
    st.behavior = parse_behavior(p.value("behavior", std::string("Isolated")), what);
    st.invert = p.value("invert", false);
  } else if (type == "Digits") {
    st.kind = PreTokenizerStep::Digits;
    st.individual_digits = p.value("individual_digits", false);
  } else if (type == "ByteLevel") {
    st.kind = PreTokenizerStep::ByteLevel;
    st.add_prefix_space = p.value("add_prefix_space", false);
    st.use_regex = p.value("use_regex", true);
  } else {
    throw Error(detail::concat(what, ": pre_tokenizer type '", type,
                               "' is not supported (Sequence, Split, Digits, ByteLevel)"));
  }
  steps.push_back(std::move(st));
}

bool parse_normalizer(const json& n, const std::string& what) {
  if (n.is_null()) return false;
  const std::string type = n.value("type", std::string());
  if (type == "NFC") return true;
  if (type == "Sequence") {
    bool nfc = false;
    for (const json& s : n.at("normalizers")) nfc = parse_normalizer(s, what) || nfc;
    return nfc;
  }
  throw Error(detail::concat(what, ": normalizer '", type, "' is not supported (NFC, Sequence)"));
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(detail::concat("tokenizer: cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string token_content(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return "";
}

}  // namespace

Tokenizer Tokenizer::from_hf_json_text(const std::string& text, const std::string& what) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(detail::concat(what, ": not valid JSON: ", e.what()));
  }
  Tokenizer t;
  t.pre_name_ = "tokenizer.json";
  try {
    const json& m = j.at("model");
    const std::string type = m.value("type", std::string("BPE"));
    if (type != "BPE") throw Error(detail::concat(what, ": model type '", type, "' is not supported (BPE only)"));
    const json& vocab = m.at("vocab");
    if (!vocab.is_object()) throw Error(what + ": model.vocab is not an object");
    int64_t max_id = -1;
    for (auto it = vocab.begin(); it != vocab.end(); ++it) max_id = std::max<int64_t>(max_id, it.value().get<int64_t>());
    if (j.contains("added_tokens") && j["added_tokens"].is_array())
      for (const json& a : j["added_tokens"]) max_id = std::max<int64_t>(max_id, a.at("id").get<int64_t>());
    if (max_id < 0 || max_id > (int64_t(1) << 24)) throw Error(detail::concat(what, ": vocabulary size ", max_id + 1, " is out of range"));
    t.id_to_token_.assign(size_t(max_id + 1), std::string());
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      const int64_t id = it.value().get<int64_t>();
      if (id < 0) throw Error(detail::concat(what, ": token '", it.key(), "' has negative id ", id));
      t.id_to_token_[size_t(id)] = it.key();
    }
    t.ignore_merges_ = m.value("ignore_merges", false);
    t.byte_fallback_ = m.value("byte_fallback", false);
    if (m.contains("unk_token") && m["unk_token"].is_string()) {
      auto it = vocab.find(m["unk_token"].get<std::string>());
      if (it != vocab.end()) t.unk_id_ = it.value().get<int32_t>();
    }
    if (j.contains("added_tokens") && j["added_tokens"].is_array()) {
      for (const json& a : j["added_tokens"]) {
        AddedToken at;
        at.id = a.at("id").get<int32_t>();
        at.content = a.at("content").get<std::string>();
        at.special = a.value("special", false);
        at.lstrip = a.value("lstrip", false);
        at.rstrip = a.value("rstrip", false);
        at.single_word = a.value("single_word", false);
        if (t.id_to_token_[size_t(at.id)].empty()) t.id_to_token_[size_t(at.id)] = at.content;
        t.added_.push_back(at);
      }
    }
    // Merges: "a b" strings (older files) or ["a", "b"] pairs.
    std::vector<std::pair<std::string, std::string>> merges;
    if (m.contains("merges") && m["merges"].is_array()) {
      for (const json& e : m["merges"]) {
        if (e.is_string()) {
          const std::string s = e.get<std::string>();
          const size_t sp = s.find(' ', 1);
          if (sp == std::string::npos) throw Error(detail::concat(what, ": merge '", s, "' is not two tokens"));
          merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
        } else if (e.is_array() && e.size() == 2) {
          merges.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
        } else {
          throw Error(detail::concat(what, ": merge entry ", e.dump(), " is neither \"a b\" nor [a, b]"));
        }
      }
    }
    t.nfc_ = parse_normalizer(j.value("normalizer", json()), what);
    parse_pre_tokenizer(j.value("pre_tokenizer", json()), t.steps_, what);
    // A post-processor template that starts with a special token adds it as BOS.
    std::function<void(const json&)> post = [&](const json& p) {
      if (p.is_null()) return;
      const std::string pt = p.value("type", std::string());
      if (pt == "Sequence") {
        for (const json& s : p.at("processors")) post(s);
      } else if (pt == "TemplateProcessing" && p.contains("single") && p["single"].is_array() && !p["single"].empty()) {
        const json& first = p["single"][0];
        if (first.contains("SpecialToken")) {
          const std::string name = first["SpecialToken"].at("id").get<std::string>();
          int32_t id = -1;
          if (p.contains("special_tokens") && p["special_tokens"].contains(name)) {
            const json& ids = p["special_tokens"][name].at("ids");
            if (ids.is_array() && !ids.empty()) id = ids[0].get<int32_t>();
          }
          if (id < 0) {
            auto it = vocab.find(name);
            if (it != vocab.end()) id = it.value().get<int32_t>();
            for (const AddedToken& a : t.added_)
              if (a.content == name) id = a.id;
          }
          if (id >= 0) {
            t.add_bos_ = true;
            t.bos_id_ = id;
          }
        }
      }
    };
    post(j.value("post_processor", json()));
    t.token_to_id_.reserve(t.id_to_token_.size());
    for (size_t id = 0; id < t.id_to_token_.size(); ++id)
      if (!t.id_to_token_[id].empty()) t.token_to_id_.emplace(t.id_to_token_[id], int32_t(id));
    int32_t rank = 0;
    for (const auto& [a, b] : merges) {
      auto ia = t.token_to_id_.find(a), ib = t.token_to_id_.find(b), im = t.token_to_id_.find(a + b);
      if (ia == t.token_to_id_.end() || ib == t.token_to_id_.end() || im == t.token_to_id_.end())
        throw Error(detail::concat(what, ": merge '", a, " ", b, "' (rank ", rank, ") uses a token not in the vocabulary"));
      t.merges_.emplace((uint64_t(uint32_t(ia->second)) << 32) | uint32_t(ib->second), std::make_pair(rank, im->second));
      ++rank;
    }
  } catch (const json::exception& e) {
    throw Error(detail::concat(what, ": unexpected structure: ", e.what()));
  }
  t.finalize();
  return t;
}

Tokenizer Tokenizer::from_hf(const std::string& path) {
  const bool dir = fs::is_directory(path);
  const std::string file = dir ? (fs::path(path) / "tokenizer.json").string() : path;
  Tokenizer t = from_hf_json_text(read_text(file), file);
  const fs::path cfg = fs::path(file).parent_path() / "tokenizer_config.json";
  if (fs::exists(cfg)) {
    json c;
    try {
      c = json::parse(read_text(cfg.string()));
    } catch (const json::exception& e) {
      throw Error(detail::concat(cfg.string(), ": not valid JSON: ", e.what()));
    }
    auto id_of = [&](const json& v) {
      const std::string s = token_content(v);
      return s.empty() ? -1 : t.token_to_id(s);
    };
    if (c.contains("bos_token") && id_of(c["bos_token"]) >= 0) t.bos_id_ = id_of(c["bos_token"]);
    if (c.contains("eos_token") && id_of(c["eos_token"]) >= 0) t.eos_id_ = id_of(c["eos_token"]);
    if (c.contains("add_bos_token") && c["add_bos_token"].is_boolean()) t.add_bos_ = c["add_bos_token"].get<bool>();
    if (c.contains("chat_template")) {
      const json& ct = c["chat_template"];
      if (ct.is_string()) t.chat_template_ = ct.get<std::string>();
      else if (ct.is_array())
        for (const json& e : ct)
          if (e.value("name", std::string()) == "default") t.chat_template_ = e.value("template", std::string());
    }
  }
  if (t.chat_template_.empty()) {
    const fs::path jinja = fs::path(file).parent_path() / "chat_template.jinja";
    if (fs::exists(jinja)) t.chat_template_ = read_text(jinja.string());
  }
  return t;
}

Tokenizer Tokenizer::from_gguf(const GgufFile& f) {
  const std::string what = "gguf: " + f.path();
  const std::string model = f.get_string("tokenizer.ggml.model");
  if (model != "gpt2")
    throw Error(detail::concat(what, ": tokenizer.ggml.model '", model, "' is not supported (byte-level BPE 'gpt2' only)"));
  Tokenizer t;
  t.id_to_token_ = f.get_string_array("tokenizer.ggml.tokens");
  if (t.id_to_token_.empty()) throw Error(what + ": tokenizer.ggml.tokens is missing or empty");
  const std::vector<int64_t> types = f.get_int_array("tokenizer.ggml.token_type");
  if (!types.empty() && types.size() != t.id_to_token_.size())
    throw Error(detail::concat(what, ": tokenizer.ggml.token_type has ", types.size(), " entries for ",
                               t.id_to_token_.size(), " tokens"));
  // Token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
  for (size_t id = 0; id < types.size(); ++id) {
    if (types[id] == 3 || types[id] == 4) {
      AddedToken a;
      a.id = int32_t(id);
      a.content = t.id_to_token_[id];
      a.special = types[id] == 3;
      t.added_.push_back(a);
    }
    if (types[id] == 2 && t.unk_id_ < 0) t.unk_id_ = int32_t(id);
  }
  t.pre_name_ = f.get_string("tokenizer.ggml.pre", "default");
  const std::vector<std::string> regexes = gguf_pre_regexes(t.pre_name_);
  if (regexes.empty())
    throw Error(detail::concat(what, ": tokenizer.ggml.pre '", t.pre_name_,
                               "' is not known (known: default, gpt2, llama-bpe, llama3, qwen2, smollm, starcoder)"));
  for (const std::string& r : regexes) {
    PreTokenizerStep st;
    st.kind = PreTokenizerStep::Split;
    st.pattern = r;
    st.behavior = PreTokenizerStep::Isolated;
    t.steps_.push_back(st);
  }
  PreTokenizerStep bl;
  bl.kind = PreTokenizerStep::ByteLevel;
  bl.use_regex = false;
  t.steps_.push_back(bl);

  t.token_to_id_.reserve(t.id_to_token_.size());
  for (size_t id = 0; id < t.id_to_token_.size(); ++id) t.token_to_id_.emplace(t.id_to_token_[id], int32_t(id));
  const std::vector<std::string> merges = f.get_string_array("tokenizer.ggml.merges");
  int32_t rank = 0;
  for (const std::string& s : merges) {
    const size_t sp = s.find(' ', 1);
    if (sp == std::string::npos) throw Error(detail::concat(what, ": merge #", rank, " '", s, "' is not two tokens"));
    const std::string a = s.substr(0, sp), b = s.substr(sp + 1);
    auto ia = t.token_to_id_.find(a), ib = t.token_to_id_.find(b), im = t.token_to_id_.find(a + b);
    if (ia == t.token_to_id_.end() || ib == t.token_to_id_.end() || im == t.token_to_id_.end())
      throw Error(detail::concat(what, ": merge #", rank, " '", s, "' uses a token not in the vocabulary"));
    t.merges_.emplace((uint64_t(uint32_t(ia->second)) << 32) | uint32_t(ib->second), std::make_pair(rank, im->second));
    ++rank;
  }
  auto id_key = [&](const char* key) -> int32_t {
    const int64_t v = f.get_int(key, -1);
    if (v >= int64_t(t.id_to_token_.size()))
      throw Error(detail::concat(what, ": ", key, " = ", v, " is outside the vocabulary (", t.id_to_token_.size(), ")"));
    return int32_t(v);
  };
  t.bos_id_ = id_key("tokenizer.ggml.bos_token_id");
  t.eos_id_ = id_key("tokenizer.ggml.eos_token_id");
  if (t.unk_id_ < 0) t.unk_id_ = id_key("tokenizer.ggml.unknown_token_id");
  t.add_bos_ = f.get_bool("tokenizer.ggml.add_bos_token", false);
  t.chat_template_ = f.get_string("tokenizer.chat_template", "");
  t.finalize();
  return t;
}

void Tokenizer::finalize() {
  const bool byte_level = std::any_of(steps_.begin(), steps_.end(),
                                      [](const PreTokenizerStep& s) { return s.kind == PreTokenizerStep::ByteLevel; });
  id_special_.assign(id_to_token_.size(), 0);
  std::vector<uint8_t> is_added(id_to_token_.size(), 0);
  for (const AddedToken& a : added_) {
    BIK_CHECK(a.id >= 0 && size_t(a.id) < id_to_token_.size(), "tokenizer: added token '", a.content, "' has id ",
              a.id, " outside the vocabulary");
    is_added[size_t(a.id)] = 1;
    if (a.special) id_special_[size_t(a.id)] = 1;
  }
  id_bytes_.assign(id_to_token_.size(), std::string());
  for (size_t id = 0; id < id_to_token_.size(); ++id) {
    const std::string& tok = id_to_token_[id];
    if (is_added[id] || !byte_level) {
      id_bytes_[id] = tok;
      continue;
    }
    // Byte-level characters back to bytes; a character outside the table (malformed vocab) stays as is.
    std::string bytes;
    size_t i = 0;
    bool ok = utf8_valid_prefix(tok) == tok.size();
    while (ok && i < tok.size()) {
      const uint32_t cp = next_cp(tok, i);
      const int b = byte_from_unicode(cp);
      if (b < 0) { ok = false; break; }
      bytes += char(b);
    }
    // Byte-fallback tokens "<0xAB>" decode to their byte.
    if (!ok && tok.size() == 6 && tok.rfind("<0x", 0) == 0 && tok[5] == '>') {
      bytes = std::string(1, char(std::stoi(tok.substr(3, 2), nullptr, 16)));
      ok = true;
    }
    id_bytes_[id] = ok ? bytes : tok;
  }
  impl_->regexes.clear();
  for (const PreTokenizerStep& s : steps_) {
    if (s.kind == PreTokenizerStep::Split) impl_->regexes.push_back(std::make_unique<Regex>(s.pattern));
    else if (s.kind == PreTokenizerStep::Digits)
      impl_->regexes.push_back(std::make_unique<Regex>(s.individual_digits ? "\\p{N}" : "\\p{N}+"));
    else if (s.use_regex) impl_->regexes.push_back(std::make_unique<Regex>(gpt2_regex()));
    else impl_->regexes.push_back(nullptr);
  }
  impl_->added_by_byte.assign(256, {});
  for (size_t k = 0; k < added_.size(); ++k)
    if (!added_[k].content.empty()) impl_->added_by_byte[uint8_t(added_[k].content[0])].push_back(int(k));
  for (auto& v : impl_->added_by_byte)
    std::stable_sort(v.begin(), v.end(), [&](int a, int b) { return added_[a].content.size() > added_[b].content.size(); });
}

// ---- encode ---------------------------------------------------------------------------------------------------

std::vector<int32_t> Tokenizer::bpe(const std::string& w) const {
  if (ignore_merges_) {
    auto it = token_to_id_.find(w);
    if (it != token_to_id_.end()) return {it->second};
  }
  struct Sym {
    int32_t id;
    int prev, next;
  };
  std::vector<Sym> syms;
  syms.reserve(w.size());
  size_t i = 0;
  while (i < w.size()) {
    const size_t start = i;
    next_cp(w, i);
    auto it = token_to_id_.find(w.substr(start, i - start));
    if (it != token_to_id_.end()) {
      syms.push_back({it->second, int(syms.size()) - 1, int(syms.size()) + 1});
      continue;
    }
    bool done = false;
    if (byte_fallback_) {
      std::vector<int32_t> ids;
      for (size_t k = start; k < i; ++k) {
        char name[8];
        std::snprintf(name, sizeof name, "<0x%02X>", unsigned(uint8_t(w[k])));
        auto b = token_to_id_.find(name);
        if (b == token_to_id_.end()) break;
        ids.push_back(b->second);
      }
      if (ids.size() == i - start) {
        for (int32_t id : ids) syms.push_back({id, int(syms.size()) - 1, int(syms.size()) + 1});
        done = true;
      }
    }
    if (!done) {
      if (unk_id_ < 0)
        throw Error(detail::concat("tokenizer: character '", w.substr(start, i - start),
                                   "' is not in the vocabulary and there is no unknown token"));
      syms.push_back({unk_id_, int(syms.size()) - 1, int(syms.size()) + 1});
    }
  }
  if (syms.empty()) return {};
  syms.back().next = -1;

  struct Cand {
    int32_t rank;
    int pos;
    int32_t left, right;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  auto consider = [&](int pos) {
    if (pos < 0 || syms[pos].next < 0) return;
    const int32_t l = syms[pos].id, r = syms[syms[pos].next].id;
    auto it = merges_.find((uint64_t(uint32_t(l)) << 32) | uint32_t(r));
    if (it != merges_.end()) heap.push({it->second.first, pos, l, r});
  };
  for (int p = 0; p + 1 < int(syms.size()); ++p) consider(p);
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    Sym& s = syms[c.pos];
    if (s.id != c.left || s.next < 0 || syms[s.next].id != c.right) continue;  // stale
    const int r = s.next;
    s.id = merges_.at((uint64_t(uint32_t(c.left)) << 32) | uint32_t(c.right)).second;
    s.next = syms[r].next;
    if (s.next >= 0) syms[s.next].prev = c.pos;
    syms[r].id = -1;
    syms[r].next = -1;
    consider(s.prev);
    consider(c.pos);
  }
  std::vector<int32_t> out;
  for (int p = 0; p >= 0; p = syms[p].next) out.push_back(syms[p].id);
  return out;
}

void Tokenizer::encode_segment(std::string_view segment, std::vector<int32_t>& out) const {
  if (segment.empty()) return;
  std::vector<std::string> pieces{nfc_ ? nfc_normalize(segment) : std::string(segment)};
  std::vector<std::string> next;
  for (size_t k = 0; k < steps_.size(); ++k) {
    const PreTokenizerStep& st = steps_[k];
    const Regex* re = impl_->regexes[k].get();
    next.clear();
    for (std::string& p : pieces) {
      if (st.kind == PreTokenizerStep::ByteLevel) {
        if (st.add_prefix_space && (p.empty() || p[0] != ' ')) p.insert(p.begin(), ' ');
        std::vector<std::string> parts;
        if (re) split_pieces(p, re->find_all(p), PreTokenizerStep::Isolated, false, parts);
        else parts.push_back(p);
        for (const std::string& part : parts) {
          std::string mapped;
          mapped.reserve(part.size() * 2);
          for (char c : part) append_utf8(mapped, byte_to_unicode(uint8_t(c)));
          next.push_back(std::move(mapped));
        }
      } else {
        const auto behavior = st.kind == PreTokenizerStep::Digits
                                  ? (st.individual_digits ? PreTokenizerStep::Isolated : PreTokenizerStep::Contiguous)
                                  : st.behavior;
        split_pieces(p, re->find_all(p), behavior, st.invert, next);
      }
    }
    pieces.swap(next);
  }
  for (const std::string& p : pieces) {
    const std::vector<int32_t> ids = bpe(p);
    out.insert(out.end(), ids.begin(), ids.end());
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool allow_special, bool add_bos) const {
  int64_t bad = -1;
  if (utf8_valid_prefix(text, &bad) != text.size())
    throw Error(detail::concat("tokenizer: input is not valid UTF-8 (byte offset ", bad, ")"));
  std::vector<int32_t> out;
  if (add_bos && bos_id_ >= 0) out.push_back(bos_id_);
  auto is_ws = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; };
  auto is_word = [](char c) { return std::isalnum(uint8_t(c)) || c == '_' || uint8_t(c) >= 0x80; };
  size_t seg_start = 0, i = 0;
  while (i < text.size()) {
    const AddedToken* hit = nullptr;
    for (int k : impl_->added_by_byte[uint8_t(text[i])]) {
      const AddedToken& a = added_[size_t(k)];
      if (a.special && !allow_special) continue;
      if (text.compare(i, a.content.size(), a.content) != 0) continue;
      if (a.single_word && ((i > 0 && is_word(text[i - 1])) ||
                            (i + a.content.size() < text.size() && is_word(text[i + a.content.size()]))))
        continue;
      hit = &a;
      break;
    }
    if (!hit) {
      ++i;
      continue;
    }
    size_t seg_end = i;
    if (hit->lstrip)
      while (seg_end > seg_start && is_ws(text[seg_end - 1])) --seg_end;
    encode_segment(text.substr(seg_start, seg_end - seg_start), out);
    out.push_back(hit->id);
    i += hit->content.size();
    if (hit->rstrip)
      while (i < text.size() && is_ws(text[i])) ++i;
    seg_start = i;
  }
  encode_segment(text.substr(seg_start), out);
  return out;
}

// ---- decode ---------------------------------------------------------------------------------------------------

const std::string& Tokenizer::token_bytes(int32_t id) const {
  BIK_CHECK(id >= 0 && size_t(id) < id_bytes_.size(), "tokenizer: token id ", id, " is outside the vocabulary (",
            id_bytes_.size(), ")");
  return id_bytes_[size_t(id)];
}

const std::string& Tokenizer::id_to_token(int32_t id) const {
  BIK_CHECK(id >= 0 && size_t(id) < id_to_token_.size(), "tokenizer: token id ", id,
            " is outside the vocabulary (", id_to_token_.size(), ")");
  return id_to_token_[size_t(id)];
}

int32_t Tokenizer::token_to_id(const std::string& token) const {
  auto it = token_to_id_.find(token);
  return it == token_to_id_.end() ? -1 : it->second;
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && size_t(id) < id_special_.size() && id_special_[size_t(id)];
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  std::string out;
  for (int32_t id : ids) {
    if (skip_special && is_special(id)) continue;
    out += token_bytes(id);
  }
  return out;
}

std::string Tokenizer::StreamDecoder::push(int32_t id) {
  if (!(skip_special_ && tok_->is_special(id))) pending_ += tok_->token_bytes(id);
  std::string out;
  size_t i = 0;
  const auto* p = reinterpret_cast<const uint8_t*>(pending_.data());
  while (i < pending_.size()) {
    size_t len = 0;
    const int r = utf8_check(p + i, pending_.size() - i, &len);
    if (r == 0) break;  // incomplete: wait for the next token
    if (r < 0) out += "\xEF\xBF\xBD";
    else out.append(pending_, i, len);
    i += len;
  }
  pending_.erase(0, i);
  return out;
}

std::string Tokenizer::StreamDecoder::finish() {
  std::string out = pending_.empty() ? "" : "\xEF\xBF\xBD";
  pending_.clear();
  return out;
}

}  // namespace bik::engine

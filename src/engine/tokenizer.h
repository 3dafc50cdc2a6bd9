// Byte-level BPE tokenizer (GPT-2 style, as used by Llama 3, Qwen2/2.5/3 and SmolLM2), loaded from a
// Hugging Face tokenizer.json or from the vocabulary embedded in a GGUF file.
//
// encode: added tokens are split off first (special ones only when allowed), each remaining segment is
// normalised (NFC when the tokenizer asks for it), pre-tokenised (Split regexes run by PCRE2, Digits,
// ByteLevel), mapped to byte-level characters and merged by BPE rank. decode: token bytes concatenated.
// StreamDecoder turns a stream of ids into text that never contains a broken UTF-8 sequence.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace bik::engine {

class GgufFile;

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;
  bool lstrip = false, rstrip = false, single_word = false;
};

// One pre-tokenizer step. Split: regex matches and the text between them become pieces per `behavior`.
struct PreTokenizerStep {
  enum Kind { Split, Digits, ByteLevel } kind = Split;
  enum Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous } behavior = Isolated;
  std::string pattern;  // PCRE2 syntax (Split); a literal pattern is escaped on load
  bool invert = false;
  bool individual_digits = false;  // Digits
  bool add_prefix_space = false;   // ByteLevel
  bool use_regex = true;           // ByteLevel: split with the GPT-2 regex first
};

class Tokenizer {
 public:
  Tokenizer();
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // `path`: a tokenizer.json, or a folder holding one (tokenizer_config.json beside it supplies the bos/eos
  // tokens and the chat template when present).
  static Tokenizer from_hf(const std::string& path);
  static Tokenizer from_hf_json_text(const std::string& text, const std::string& what = "tokenizer.json");
  static Tokenizer from_gguf(const GgufFile& f);

  // Valid UTF-8 in (throws naming the byte offset otherwise). allow_special=false treats special-token
  // text as ordinary text (for untrusted input); add_bos prepends bos_id() when the tokenizer has one.
  std::vector<int32_t> encode(std::string_view text, bool allow_special = true, bool add_bos = false) const;
  // The bytes of the tokens, concatenated (may end inside a UTF-8 sequence).
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const;
  const std::string& token_bytes(int32_t id) const;  // decoded bytes of one token
  const std::string& id_to_token(int32_t id) const;  // the vocabulary string (byte-level characters)
  int32_t token_to_id(const std::string& token) const;  // -1 when absent
  int64_t vocab_size() const { return int64_t(id_to_token_.size()); }
  bool is_special(int32_t id) const;

  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  bool add_bos_default() const { return add_bos_; }
  bool nfc() const { return nfc_; }
  const std::vector<PreTokenizerStep>& pre_tokenizer() const { return steps_; }
  const std::vector<AddedToken>& added_tokens() const { return added_; }
  const std::string& chat_template_source() const { return chat_template_; }
  const std::string& pre_name() const { return pre_name_; }  // GGUF tokenizer.ggml.pre, or "tokenizer.json"

  // Streaming decode: push ids, get the text whose UTF-8 sequences are complete; bytes that can never
  // complete a valid sequence come out as U+FFFD. finish() flushes what is left (incomplete -> U+FFFD).
  class StreamDecoder {
   public:
    explicit StreamDecoder(const Tokenizer& t, bool skip_special = false) : tok_(&t), skip_special_(skip_special) {}
    std::string push(int32_t id);
    std::string finish();

   private:
    const Tokenizer* tok_;
    bool skip_special_;
    std::string pending_;
  };

  // Pre-tokenizer regexes of the GGUF tokenizer.ggml.pre names this reader knows (empty when unknown).
  static std::vector<std::string> gguf_pre_regexes(const std::string& pre);
  static const char* gpt2_regex();

 private:
  struct Impl;
  void finalize();  // builds the lookups once the vocabulary, merges and steps are set
  std::vector<int32_t> bpe(const std::string& piece) const;
  void encode_segment(std::string_view segment, std::vector<int32_t>& out) const;

  std::vector<std::string> id_to_token_;
  std::vector<std::string> id_bytes_;
  std::vector<uint8_t> id_special_;
  std::unordered_map<std::string, int32_t> token_to_id_;
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // (left, right) -> (rank, merged id)
  std::vector<AddedToken> added_;
  std::vector<PreTokenizerStep> steps_;
  bool nfc_ = false;
  bool ignore_merges_ = false;
  bool byte_fallback_ = false;
  int32_t unk_id_ = -1;
  int32_t bos_id_ = -1, eos_id_ = -1;
  bool add_bos_ = false;
  std::string chat_template_;
  std::string pre_name_;
  std::unique_ptr<Impl> impl_;  // compiled regexes
};

// Byte <-> character table of byte-level BPE (GPT-2's bytes_to_unicode).
uint32_t byte_to_unicode(uint8_t b);
int byte_from_unicode(uint32_t cp);  // -1 when the character is not in the table
// Length of the longest prefix of `s` that is whole valid UTF-8 sequences; `*error_at` (when not null) gets
// the offset of the first invalid byte or -1.
size_t utf8_valid_prefix(std::string_view s, int64_t* error_at = nullptr);
std::string nfc_normalize(std::string_view s);  // s must be valid UTF-8

}  // namespace bik::engine

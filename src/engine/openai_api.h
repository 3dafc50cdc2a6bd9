// The OpenAI-compatible HTTP API without the sockets: request parsing and validation for /v1/completions and
// /v1/chat/completions, the text assembly of a choice (incremental decoding and stop strings), and the JSON
// of responses, stream chunks and errors. src/engine/server.cpp wires these to HTTP and the engine; the
// tests drive them directly.
//
// Every rejected request is an ApiError whose message names the offending field (and `param` holds it), in
// OpenAI's {"error": {"message", "type", "param", "code"}} shape.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/chat_template.h"
#include "engine/sequence.h"

namespace bik::engine {
class Tokenizer;
}

namespace bik::engine::api {

class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string message, std::string param = "", std::string type = "")
      : std::runtime_error(message), status(status), param(std::move(param)), type(std::move(type)) {}
  int status;
  std::string param;  // the request field at fault; empty: none
  std::string type;   // empty: derived from the status
};

// {"error": {"message", "type", "param", "code"}}; `type` defaults to invalid_request_error (4xx),
// not_found_error (404) or server_error (5xx).
nlohmann::json error_body(int status, const std::string& message, const std::string& param = "",
                          const std::string& type = "");
std::string dump(const nlohmann::json& j);  // compact, invalid UTF-8 replaced instead of throwing

struct Limits {
  int64_t max_body_bytes = 1 << 20;
  int32_t max_tokens = 4096;   // per choice
  int32_t max_n = 16;
  int32_t max_logprobs = 20;   // top logprobs per token
  int32_t max_stop = 16;       // stop strings and stop token ids, each
  int64_t max_model_len = 0;   // prompt + max_tokens must fit (0: unchecked)
  int64_t vocab = 0;           // token ids must be below (0: unchecked)
};

struct GenerationRequest {
  bool chat = false;
  std::string model;  // empty: not given

  // Completions: a string, or token ids (prompt_ids, prompt_is_ids = true). Chat: messages.
  std::string prompt;
  bool prompt_is_ids = false;
  std::vector<int32_t> prompt_ids;
  std::vector<ChatMessage> messages;

  int32_t n = 1;
  std::optional<int32_t> max_tokens;  // not given: as many as fit, capped by Limits::max_tokens
  float temperature = 1.0f;
  float top_p = 1.0f;
  int32_t top_k = 0;
  float min_p = 0.0f;
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  std::optional<int32_t> logprobs;  // how many top logprobs per token; not given: no logprobs at all
  bool stream = false;
  bool include_usage = false;      // stream_options.include_usage
  bool return_token_ids = false;   // extension: choices carry "token_ids"
};

GenerationRequest parse_completion_request(const std::string& body, const Limits& limits);
GenerationRequest parse_chat_request(const std::string& body, const Limits& limits);

// Checks the tokenised prompt against the limits and returns the max_tokens to use: the requested one, or
// when none was given, what fits in max_model_len capped by limits.max_tokens.
int32_t resolve_max_tokens(const GenerationRequest& r, int64_t prompt_tokens, const Limits& limits);

// Engine parameters of choice `index` (seed + index, so that n > 1 samples differ yet stay reproducible).
RequestParams request_params(const GenerationRequest& r, int32_t index, int32_t max_tokens, uint64_t default_seed,
                             const std::vector<int32_t>& eos_ids);

// How token ids become text: with a tokenizer its bytes; without one (dummy weights) " <id>" per token.
struct TokenText {
  const Tokenizer* tok = nullptr;
  std::string piece(int32_t id) const;  // one token alone (logprobs entries)
};

// The text of one choice, assembled token by token: complete UTF-8 only, special tokens skipped, cut
// before the first stop string. Text that could still turn into a stop string is held back until it cannot.
class ChoiceText {
 public:
  ChoiceText(const Tokenizer* tok, std::vector<std::string> stop);
  ~ChoiceText();
  ChoiceText(ChoiceText&&) noexcept;
  // Appends a token; returns the text that became final (possibly empty). Nothing after a stop.
  std::string push(int32_t id);
  // End of generation: releases what was held back (unless a stop string ended the text).
  std::string finish();
  bool stopped() const { return stopped_; }
  const std::string& text() const { return text_; }  // everything returned so far

 private:
  std::string emit(std::string s);
  const Tokenizer* tok_;
  std::vector<std::string> stop_;
  struct Decoder;
  std::unique_ptr<Decoder> dec_;
  std::string held_, text_;
  bool stopped_ = false;
};

// One choice's result, as the response builders take it.
struct ChoiceResult {
  std::vector<int32_t> ids;
  std::vector<float> logprobs;
  std::vector<std::vector<TopLogprob>> top;
  std::string text;
  std::string finish_reason;  // "stop" or "length"
};

struct ResponseMeta {
  std::string id;  // "cmpl-..." / "chatcmpl-..."
  int64_t created = 0;
  std::string model;
};

// Logprobs JSON of tokens [begin, end) of a choice (completions: tokens/token_logprobs/top_logprobs/
// text_offset; chat: content[] with bytes); null when the request asked for none.
nlohmann::json logprobs_json(const GenerationRequest& r, const TokenText& tt, const ChoiceResult& c, size_t begin,
                             size_t end, int64_t text_offset0 = 0);
nlohmann::json usage_json(int64_t prompt_tokens, int64_t completion_tokens);
nlohmann::json response_json(const GenerationRequest& r, const ResponseMeta& m, const TokenText& tt,
                             const std::vector<ChoiceResult>& choices, int64_t prompt_tokens);
// A stream chunk for one choice: `text` (delta), logprobs of tokens [begin, end), and finish_reason when
// not empty. first: the chat delta also carries the role. text_offset0: text_offset of token `begin`.
nlohmann::json chunk_json(const GenerationRequest& r, const ResponseMeta& m, const TokenText& tt, int32_t index,
                          const ChoiceResult& c, const std::string& text, size_t begin, size_t end,
                          const std::string& finish_reason, bool first, int64_t text_offset0 = 0);
nlohmann::json usage_chunk_json(const GenerationRequest& r, const ResponseMeta& m, int64_t prompt_tokens,
                                int64_t completion_tokens);
std::string sse(const nlohmann::json& j);  // "data: {...}\n\n"

}  // namespace bik::engine::api

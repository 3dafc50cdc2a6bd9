#include "engine/openai_api.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "engine/tokenizer.h"

namespace bik::engine::api {

using nlohmann::json;

namespace {

std::string default_type(int status) {
  if (status == 404) return "not_found_error";
  if (status >= 500) return "server_error";
  return "invalid_request_error";
}

[[noreturn]] void bad(const std::string& param, const std::string& message) {
  throw ApiError(400, message, param);
}

// Field accessors: absent and null both mean "not given"; a value of the wrong type names the field.
const json* field(const json& o, const char* name) {
  auto it = o.find(name);
  return it == o.end() || it->is_null() ? nullptr : &*it;
}

double number(const json& v, const std::string& name) {
  if (!v.is_number()) bad(name, "'" + name + "' must be a number, got " + std::string(v.type_name()));
  const double d = v.get<double>();
  if (!std::isfinite(d)) bad(name, "'" + name + "' must be finite");
  return d;
}

int64_t integer(const json& v, const std::string& name) {
  if (v.is_number_integer()) {
    if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max()))
      bad(name, "'" + name + "' is too large");
    return v.get<int64_t>();
  }
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e15) return int64_t(d);
  }
  bad(name, "'" + name + "' must be an integer, got " + (v.is_number() ? v.dump() : std::string(v.type_name())));
}

bool boolean(const json& v, const std::string& name) {
  if (!v.is_boolean()) bad(name, "'" + name + "' must be a boolean, got " + std::string(v.type_name()));
  return v.get<bool>();
}

std::string string(const json& v, const std::string& name) {
  if (!v.is_string()) bad(name, "'" + name + "' must be a string, got " + std::string(v.type_name()));
  return v.get<std::string>();
}

int64_t int_in(const json& o, const char* name, int64_t lo, int64_t hi, int64_t def, const std::string& hint = "") {
  const json* v = field(o, name);
  if (!v) return def;
  const int64_t x = integer(*v, name);
  if (x < lo || x > hi)
    bad(name, "'" + std::string(name) + "' must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                  "], got " + std::to_string(x) + hint);
  return x;
}

json parse_body(const std::string& body, const Limits& limits) {
  if (limits.max_body_bytes > 0 && int64_t(body.size()) > limits.max_body_bytes)
    throw ApiError(413, "the request body has " + std::to_string(body.size()) + " bytes; at most " +
                            std::to_string(limits.max_body_bytes) + " are accepted");
  json j;
  try {
    j = json::parse(body);
  } catch (const json::parse_error& e) {
    bad("", std::string("malformed JSON in the request body: ") + e.what());
  }
  if (!j.is_object()) bad("", "the request body must be a JSON object, got " + std::string(j.type_name()));
  return j;
}

// What both endpoints share: model, sampling, n, seed, stop, stream.
void parse_common(const json& j, const Limits& limits, GenerationRequest& r) {
  if (const json* v = field(j, "model")) r.model = string(*v, "model");
  r.n = int32_t(int_in(j, "n", 1, limits.max_n, 1));
  if (const json* v = field(j, "temperature")) {
    const double t = number(*v, "temperature");
    if (t < 0 || t > 2) bad("temperature", "'temperature' must be in [0, 2], got " + v->dump());
    r.temperature = float(t);
  }
  if (const json* v = field(j, "top_p")) {
    const double p = number(*v, "top_p");
    if (!(p > 0 && p <= 1)) bad("top_p", "'top_p' must be in (0, 1], got " + v->dump());
    r.top_p = float(p);
  }
  if (const json* v = field(j, "top_k")) {
    const int64_t k = integer(*v, "top_k");
    if (k < -1 || k > (int64_t(1) << 30)) bad("top_k", "'top_k' must be -1 (off), 0 (off) or positive, got " + v->dump());
    r.top_k = int32_t(std::max<int64_t>(k, 0));
  }
  if (const json* v = field(j, "min_p")) {
    const double p = number(*v, "min_p");
    if (p < 0 || p > 1) bad("min_p", "'min_p' must be in [0, 1], got " + v->dump());
    r.min_p = float(p);
  }
  if (const json* v = field(j, "seed")) r.seed = uint64_t(integer(*v, "seed"));
  if (const json* v = field(j, "stop")) {
    if (v->is_string()) {
      r.stop.push_back(v->get<std::string>());
    } else if (v->is_array()) {
      if (int64_t(v->size()) > limits.max_stop)
        bad("stop", "'stop' has " + std::to_string(v->size()) + " entries; at most " + std::to_string(limits.max_stop));
      for (const auto& s : *v) r.stop.push_back(string(s, "stop"));
    } else {
      bad("stop", "'stop' must be a string or an array of strings, got " + std::string(v->type_name()));
    }
    for (const auto& s : r.stop)
      if (s.empty()) bad("stop", "'stop' strings must not be empty");
  }
  if (const json* v = field(j, "stop_token_ids")) {
    if (!v->is_array()) bad("stop_token_ids", "'stop_token_ids' must be an array of token ids");
    if (int64_t(v->size()) > limits.max_stop)
      bad("stop_token_ids", "'stop_token_ids' has " + std::to_string(v->size()) + " entries; at most " +
                                std::to_string(limits.max_stop));
    for (const auto& t : *v) {
      const int64_t id = integer(t, "stop_token_ids");
      if (id < 0 || (limits.vocab > 0 && id >= limits.vocab))
        bad("stop_token_ids", "'stop_token_ids' entry " + std::to_string(id) + " is outside the vocabulary [0, " +
                                  std::to_string(limits.vocab) + ")");
      r.stop_token_ids.push_back(int32_t(id));
    }
  }
  if (const json* v = field(j, "ignore_eos")) r.ignore_eos = boolean(*v, "ignore_eos");
  if (const json* v = field(j, "stream")) r.stream = boolean(*v, "stream");
  if (const json* v = field(j, "stream_options")) {
    if (!v->is_object()) bad("stream_options", "'stream_options' must be an object");
    if (!r.stream) bad("stream_options", "'stream_options' is only allowed with \"stream\": true");
    if (const json* u = field(*v, "include_usage")) r.include_usage = boolean(*u, "stream_options.include_usage");
  }
  if (const json* v = field(j, "return_token_ids")) r.return_token_ids = boolean(*v, "return_token_ids");
  if (field(j, "max_tokens")) r.max_tokens = int32_t(int_in(j, "max_tokens", 1, limits.max_tokens, 0));
  // Features this server does not implement: refuse rather than silently ignore.
  for (const auto& [p, neutral] : {std::pair<const char*, double>{"presence_penalty", 0.0},
                                   {"frequency_penalty", 0.0}, {"repetition_penalty", 1.0}})
    if (const json* v = field(j, p); v && number(*v, p) != neutral)
      bad(p, "'" + std::string(p) + "' is not supported (only its neutral value " + json(neutral).dump() + ")");
  if (const json* v = field(j, "logit_bias"); v && !(v->is_object() && v->empty()))
    bad("logit_bias", "'logit_bias' is not supported");
}

int64_t count_bytes(const std::string& s) { return int64_t(s.size()); }

}  // namespace

json error_body(int status, const std::string& message, const std::string& param, const std::string& type) {
  return {{"error",
           {{"message", message},
            {"type", type.empty() ? default_type(status) : type},
            {"param", param.empty() ? json(nullptr) : json(param)},
            {"code", status}}}};
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

GenerationRequest parse_completion_request(const std::string& body, const Limits& limits) {
  const json j = parse_body(body, limits);
  GenerationRequest r;
  const json* p = field(j, "prompt");
  if (!p) bad("prompt", "'prompt' is required");
  if (p->is_array() && p->size() == 1 && (*p)[0].is_string()) p = &(*p)[0];
  if (p->is_string()) {
    r.prompt = p->get<std::string>();
    if (r.prompt.empty()) bad("prompt", "'prompt' must not be empty");
  } else if (p->is_array() && !p->empty() && (*p)[0].is_number()) {
    r.prompt_is_ids = true;
    for (const auto& t : *p) {
      const int64_t id = integer(t, "prompt");
      if (id < 0 || (limits.vocab > 0 && id >= limits.vocab))
        bad("prompt", "'prompt' token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                          std::to_string(limits.vocab) + ")");
      r.prompt_ids.push_back(int32_t(id));
    }
  } else {
    bad("prompt", "'prompt' must be a non-empty string, a one-string array or an array of token ids (batched "
                  "prompts are not supported: send one request per prompt)");
  }
  parse_common(j, limits, r);
  if (const json* v = field(j, "logprobs")) {
    if (v->is_boolean()) bad("logprobs", "'logprobs' of /v1/completions is an integer (top logprobs per token)");
    r.logprobs = int32_t(int_in(j, "logprobs", 0, limits.max_logprobs, 0));
  }
  if (const json* v = field(j, "echo"); v && boolean(*v, "echo")) bad("echo", "'echo' is not supported");
  if (const json* v = field(j, "suffix"); v && !(v->is_string() && v->get<std::string>().empty()))
    bad("suffix", "'suffix' is not supported");
  if (const json* v = field(j, "best_of"); v && integer(*v, "best_of") != r.n)
    bad("best_of", "'best_of' is not supported (it must equal n when given)");
  return r;
}

GenerationRequest parse_chat_request(const std::string& body, const Limits& limits) {
  const json j = parse_body(body, limits);
  GenerationRequest r;
  r.chat = true;
  const json* m = field(j, "messages");
  if (!m) bad("messages", "'messages' is required");
  if (!m->is_array() || m->empty()) bad("messages", "'messages' must be a non-empty array");
  for (size_t i = 0; i < m->size(); ++i) {
    const std::string where = "messages[" + std::to_string(i) + "]";
    const json& e = (*m)[i];
    if (!e.is_object()) bad(where, "'" + where + "' must be an object");
    const json* role = field(e, "role");
    if (!role) bad(where + ".role", "'" + where + ".role' is required");
    ChatMessage msg;
    msg.role = string(*role, where + ".role");
    if (msg.role == "developer") msg.role = "system";
    if (msg.role != "system" && msg.role != "user" && msg.role != "assistant")
      bad(where + ".role", "'" + where + ".role' must be system, developer, user or assistant, got '" + msg.role + "'");
    const json* content = field(e, "content");
    if (!content) bad(where + ".content", "'" + where + ".content' is required");
    if (content->is_string()) {
      msg.content = content->get<std::string>();
    } else if (content->is_array()) {
      for (const auto& part : *content) {
        const json* type = part.is_object() ? field(part, "type") : nullptr;
        const json* text = part.is_object() ? field(part, "text") : nullptr;
        if (!type || !type->is_string() || type->get<std::string>() != "text" || !text || !text->is_string())
          bad(where + ".content", "'" + where + ".content' parts must be {\"type\": \"text\", \"text\": ...}");
        msg.content += text->get<std::string>();
      }
    } else {
      bad(where + ".content", "'" + where + ".content' must be a string or an array of text parts");
    }
    r.messages.push_back(std::move(msg));
  }
  parse_common(j, limits, r);
  if (field(j, "max_completion_tokens")) {
    r.max_tokens = int32_t(int_in(j, "max_completion_tokens", 1, limits.max_tokens, 0));
  }
  bool want_logprobs = false;
  if (const json* v = field(j, "logprobs")) want_logprobs = boolean(*v, "logprobs");
  if (field(j, "top_logprobs")) {
    const int32_t k = int32_t(int_in(j, "top_logprobs", 0, limits.max_logprobs, 0));
    if (!want_logprobs) bad("top_logprobs", "'top_logprobs' needs \"logprobs\": true");
    r.logprobs = k;
  } else if (want_logprobs) {
    r.logprobs = 0;
  }
  if (const json* v = field(j, "tools"); v && !(v->is_array() && v->empty())) bad("tools", "'tools' is not supported");
  if (const json* v = field(j, "response_format")) {
    const json* t = v->is_object() ? field(*v, "type") : nullptr;
    if (!t || !t->is_string() || t->get<std::string>() != "text")
      bad("response_format", "'response_format' supports only {\"type\": \"text\"}");
  }
  return r;
}

int32_t resolve_max_tokens(const GenerationRequest& r, int64_t prompt_tokens, const Limits& limits) {
  const std::string pfield = r.chat ? "messages" : "prompt";
  if (prompt_tokens <= 0) bad(pfield, "'" + pfield + "' encodes to no tokens");
  if (limits.max_model_len > 0 && prompt_tokens >= limits.max_model_len)
    bad(pfield, "'" + pfield + "' has " + std::to_string(prompt_tokens) + " tokens; this model's maximum context " +
                    "length is " + std::to_string(limits.max_model_len) + " tokens (prompt plus completion)");
  const int64_t room = limits.max_model_len > 0 ? limits.max_model_len - prompt_tokens : limits.max_tokens;
  if (r.max_tokens) {
    if (limits.max_model_len > 0 && *r.max_tokens > room)
      bad("max_tokens", "'max_tokens' is " + std::to_string(*r.max_tokens) + " but the prompt has " +
                            std::to_string(prompt_tokens) + " tokens and this model's maximum context length is " +
                            std::to_string(limits.max_model_len) + ": at most " + std::to_string(room) + " fit");
    return *r.max_tokens;
  }
  // OpenAI's defaults: 16 for completions; chat generates until the end of the turn or the context.
  const int64_t want = r.chat ? int64_t(limits.max_tokens) : 16;
  return int32_t(std::max<int64_t>(1, std::min(want, room)));
}

RequestParams request_params(const GenerationRequest& r, int32_t index, int32_t max_tokens, uint64_t default_seed,
                             const std::vector<int32_t>& eos_ids) {
  RequestParams p;
  p.temperature = r.temperature;
  p.top_k = r.top_k;
  p.top_p = r.top_p;
  p.min_p = r.min_p;
  p.seed = r.seed.value_or(default_seed) + uint64_t(index);
  p.max_tokens = max_tokens;
  p.top_logprobs = r.logprobs.value_or(0);
  p.stop_ids = r.stop_token_ids;
  if (!r.ignore_eos)
    for (int32_t e : eos_ids)
      if (std::find(p.stop_ids.begin(), p.stop_ids.end(), e) == p.stop_ids.end()) p.stop_ids.push_back(e);
  return p;
}

std::string TokenText::piece(int32_t id) const {
  if (tok) return tok->token_bytes(id);
  return " " + std::to_string(id);
}

// ---- ChoiceText ----------------------------------------------------------------------------------------

struct ChoiceText::Decoder {
  std::optional<Tokenizer::StreamDecoder> d;
};

ChoiceText::ChoiceText(const Tokenizer* tok, std::vector<std::string> stop)
    : tok_(tok), stop_(std::move(stop)), dec_(std::make_unique<Decoder>()) {
  if (tok_) dec_->d.emplace(*tok_, /*skip_special=*/true);
}
ChoiceText::~ChoiceText() = default;
ChoiceText::ChoiceText(ChoiceText&&) noexcept = default;

std::string ChoiceText::emit(std::string s) {
  text_ += s;
  return s;
}

std::string ChoiceText::push(int32_t id) {
  if (stopped_) return "";
  held_ += dec_->d ? dec_->d->push(id) : " " + std::to_string(id);
  if (stop_.empty()) return emit(std::exchange(held_, std::string()));
  // Everything before held_ was checked: a stop string can only start inside held_.
  size_t cut = std::string::npos;
  for (const auto& s : stop_) cut = std::min(cut, held_.find(s));
  if (cut != std::string::npos) {
    stopped_ = true;
    std::string out = held_.substr(0, cut);
    held_.clear();
    return emit(std::move(out));
  }
  // Hold back the longest tail of held_ that is a proper prefix of some stop string.
  size_t keep = 0;
  for (const auto& s : stop_)
    for (size_t k = std::min(s.size() - 1, held_.size()); k > keep; --k)
      if (held_.compare(held_.size() - k, k, s, 0, k) == 0) {
        keep = k;
        break;
      }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return emit(std::move(out));
}

std::string ChoiceText::finish() {
  if (stopped_) return "";
  std::string rest = std::exchange(held_, std::string());
  if (dec_->d) rest += dec_->d->finish();
  return emit(std::move(rest));
}

// ---- responses -----------------------------------------------------------------------------------------

namespace {

json bytes_json(const std::string& s) {
  json b = json::array();
  for (unsigned char c : s) b.push_back(int(c));
  return b;
}

json float_json(float f) { return std::isfinite(f) ? json(f) : json(nullptr); }

}  // namespace

json logprobs_json(const GenerationRequest& r, const TokenText& tt, const ChoiceResult& c, size_t begin, size_t end,
                   int64_t text_offset0) {
  if (!r.logprobs) return nullptr;
  end = std::min(end, c.ids.size());
  if (r.chat) {
    json content = json::array();
    for (size_t i = begin; i < end; ++i) {
      const std::string p = tt.piece(c.ids[i]);
      json top = json::array();
      if (i < c.top.size())
        for (const auto& t : c.top[i]) {
          const std::string q = tt.piece(t.id);
          top.push_back({{"token", q}, {"logprob", float_json(t.logprob)}, {"bytes", bytes_json(q)}});
        }
      content.push_back({{"token", p}, {"logprob", float_json(c.logprobs[i])}, {"bytes", bytes_json(p)}, {"top_logprobs", top}});
    }
    return {{"content", content}};
  }
  json tokens = json::array(), lps = json::array(), tops = json::array(), offsets = json::array();
  int64_t off = text_offset0;
  for (size_t i = begin; i < end; ++i) {
    const std::string p = tt.piece(c.ids[i]);
    tokens.push_back(p);
    lps.push_back(float_json(c.logprobs[i]));
    if (*r.logprobs > 0 && i < c.top.size()) {
      json t = json::object();
      for (const auto& e : c.top[i]) {
        const std::string q = tt.piece(e.id);
        if (!t.contains(q)) t[q] = float_json(e.logprob);
      }
      tops.push_back(t);
    } else {
      tops.push_back(nullptr);
    }
    offsets.push_back(off);
    off += count_bytes(p);
  }
  return {{"tokens", tokens}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offsets}};
}

json usage_json(int64_t prompt_tokens, int64_t completion_tokens) {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens}};
}

json response_json(const GenerationRequest& r, const ResponseMeta& m, const TokenText& tt,
                   const std::vector<ChoiceResult>& choices, int64_t prompt_tokens) {
  json out = {{"id", m.id}, {"object", r.chat ? "chat.completion" : "text_completion"}, {"created", m.created},
              {"model", m.model}};
  json cs = json::array();
  int64_t completion = 0;
  for (size_t i = 0; i < choices.size(); ++i) {
    const ChoiceResult& c = choices[i];
    completion += int64_t(c.ids.size());
    json choice = {{"index", i}};
    if (r.chat)
      choice["message"] = {{"role", "assistant"}, {"content", c.text}};
    else
      choice["text"] = c.text;
    choice["logprobs"] = logprobs_json(r, tt, c, 0, c.ids.size());
    choice["finish_reason"] = c.finish_reason;
    if (r.return_token_ids) choice["token_ids"] = c.ids;
    cs.push_back(choice);
  }
  out["choices"] = cs;
  out["usage"] = usage_json(prompt_tokens, completion);
  return out;
}

json chunk_json(const GenerationRequest& r, const ResponseMeta& m, const TokenText& tt, int32_t index,
                const ChoiceResult& c, const std::string& text, size_t begin, size_t end,
                const std::string& finish_reason, bool first, int64_t text_offset0) {
  json choice = {{"index", index}};
  if (r.chat) {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (!text.empty() || first) delta["content"] = text;
    choice["delta"] = delta;
  } else {
    choice["text"] = text;
  }
  choice["logprobs"] = begin < end ? logprobs_json(r, tt, c, begin, end, text_offset0) : json(nullptr);
  choice["finish_reason"] = finish_reason.empty() ? json(nullptr) : json(finish_reason);
  if (r.return_token_ids) choice["token_ids"] = std::vector<int32_t>(c.ids.begin() + begin, c.ids.begin() + end);
  return {{"id", m.id},
          {"object", r.chat ? "chat.completion.chunk" : "text_completion"},
          {"created", m.created},
          {"model", m.model},
          {"choices", json::array({choice})}};
}

json usage_chunk_json(const GenerationRequest& r, const ResponseMeta& m, int64_t prompt_tokens,
                      int64_t completion_tokens) {
  return {{"id", m.id},
          {"object", r.chat ? "chat.completion.chunk" : "text_completion"},
          {"created", m.created},
          {"model", m.model},
          {"choices", json::array()},
          {"usage", usage_json(prompt_tokens, completion_tokens)}};
}

std::string sse(const json& j) { return "data: " + dump(j) + "\n\n"; }

}  // namespace bik::engine::api

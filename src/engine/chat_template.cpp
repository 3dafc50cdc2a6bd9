#include "engine/chat_template.h"

#include <regex>

#include "bik/error.h"
#include "engine/tokenizer.h"

namespace bik::engine {

namespace {

std::string trim(const std::string& s) {
  const char* ws = " \t\n\r\f\v";
  const size_t a = s.find_first_not_of(ws);
  if (a == std::string::npos) return "";
  return s.substr(a, s.find_last_not_of(ws) - a + 1);
}

std::string lstrip_newlines(const std::string& s) {
  const size_t a = s.find_first_not_of('\n');
  return a == std::string::npos ? "" : s.substr(a);
}

std::string rstrip_newlines(const std::string& s) {
  const size_t b = s.find_last_not_of('\n');
  return b == std::string::npos ? "" : s.substr(0, b + 1);
}

// The system prompt a ChatML template inserts when the conversation has none: the literal text between
// "<|im_start|>system\n" and "<|im_end|>" (SmolLM2), or the string the Qwen2.5 template emits in its else branch.
std::string find_default_system(const std::string& src) {
  static const std::regex inline_sys(R"(<\|im_start\|>system(?:\n|\\n)([^<'"{}]+)<\|im_end\|>)");
  std::smatch m;
  if (std::regex_search(src, m, inline_sys)) return m[1].str();
  static const std::regex else_sys(
      R"(<\|im_start\|>system(?:\n|\\n)' \}\}\s*\{%-? if messages\[0\]\['role'\] == 'system' %\}\s*\{\{-? messages\[0\]\['content'\] \}\}\s*\{%-? else %\}\s*\{\{-? '([^']+)' \}\})");
  if (std::regex_search(src, m, else_sys)) return m[1].str();
  return "";
}

}  // namespace

ChatTemplate ChatTemplate::chatml(const std::string& default_system) {
  ChatTemplate t;
  t.format_ = Format::ChatML;
  t.default_system_ = default_system;
  return t;
}

ChatTemplate ChatTemplate::llama3(bool with_date_header) {
  ChatTemplate t;
  t.format_ = Format::Llama3;
  t.llama_date_header_ = with_date_header;
  return t;
}

ChatTemplate ChatTemplate::from_source(const std::string& src) {
  if (src.find("<|start_header_id|>") != std::string::npos)
    return llama3(src.find("Cutting Knowledge Date") != std::string::npos);
  if (src.find("<|im_start|>") != std::string::npos) {
    if (src.find("<think>") != std::string::npos) {
      ChatTemplate t;
      t.format_ = Format::Qwen3;
      return t;
    }
    return chatml(find_default_system(src));
  }
  throw Error("chat template: unknown format (supported: ChatML as in SmolLM2/Qwen2/Qwen2.5/Qwen3, Llama 3)");
}

ChatTemplate ChatTemplate::for_tokenizer(const Tokenizer& tok) {
  if (!tok.chat_template_source().empty()) return from_source(tok.chat_template_source());
  if (tok.token_to_id("<|start_header_id|>") >= 0) return llama3(false);
  if (tok.token_to_id("<|im_start|>") >= 0) return chatml();
  throw Error("chat template: the tokenizer has no template and no ChatML or Llama 3 special tokens");
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const {
  std::string out;
  if (format_ == Format::Llama3) {
    out = "<|begin_of_text|>";
    size_t first = 0;
    if (llama_date_header_) {
      std::string system;
      if (!messages.empty() && messages[0].role == "system") {
        system = trim(messages[0].content);
        first = 1;
      }
      out += "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: " + date +
             "\n\n" + system + "<|eot_id|>";
    }
    for (size_t i = first; i < messages.size(); ++i)
      out += "<|start_header_id|>" + messages[i].role + "<|end_header_id|>\n\n" + trim(messages[i].content) + "<|eot_id|>";
    if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
    return out;
  }
  if (format_ == Format::ChatML) {
    if (!default_system_.empty() && (messages.empty() || messages[0].role != "system"))
      out += "<|im_start|>system\n" + default_system_ + "<|im_end|>\n";
    for (const ChatMessage& m : messages) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    if (add_generation_prompt) out += "<|im_start|>assistant\n";
    return out;
  }
  // Qwen3: assistant turns before the last user message keep only their answer (no <think> block);
  // later ones keep their reasoning, re-wrapped.
  size_t last_query = messages.size();
  for (size_t i = messages.size(); i-- > 0;)
    if (messages[i].role == "user") {
      last_query = i;
      break;
    }
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role != "assistant") {
      out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
      continue;
    }
    std::string content = m.content, reasoning;
    const size_t close = content.find("</think>");
    if (close != std::string::npos) {
      std::string before = rstrip_newlines(content.substr(0, close));
      const size_t open = before.rfind("<think>");
      reasoning = lstrip_newlines(open == std::string::npos ? before : before.substr(open + 7));
      content = lstrip_newlines(content.substr(content.rfind("</think>") + 8));
    }
    const bool keep_reasoning = last_query != messages.size() && i > last_query && !reasoning.empty();
    if (keep_reasoning)
      out += "<|im_start|>assistant\n<think>\n" + reasoning + "\n</think>\n\n" + content + "<|im_end|>\n";
    else
      out += "<|im_start|>assistant\n" + content + "<|im_end|>\n";
  }
  if (add_generation_prompt) {
    out += "<|im_start|>assistant\n";
    if (!enable_thinking) out += "<think>\n\n</think>\n\n";
  }
  return out;
}

}  // namespace bik::engine

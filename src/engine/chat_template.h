// Chat prompt formats of the supported families, written out in C++ (no Jinja engine): the format and its
// parameters (default system prompt, Llama 3.1 date header, Qwen3 thinking) are read off the model's own
// template text, so the output matches what the model's tokenizer_config / GGUF template renders.
//   ChatML (SmolLM2, Qwen2, Qwen2.5): <|im_start|>role\ncontent<|im_end|>\n ... <|im_start|>assistant\n
//   Qwen3: ChatML without a default system prompt; earlier assistant turns lose their <think> block.
//   Llama 3 / 3.1: <|begin_of_text|><|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|> ...
#pragma once
#include <string>
#include <vector>

namespace bik::engine {

class Tokenizer;

struct ChatMessage {
  std::string role;  // "system", "user", "assistant"
  std::string content;
};

class ChatTemplate {
 public:
  enum class Format { ChatML, Qwen3, Llama3 };

  // From a template's source text (GGUF tokenizer.chat_template or tokenizer_config.json chat_template).
  // Throws when the text is none of the known formats.
  static ChatTemplate from_source(const std::string& source);
  // The tokenizer's template when it has one, else from its special tokens (<|im_start|> / <|start_header_id|>).
  static ChatTemplate for_tokenizer(const Tokenizer& tok);
  static ChatTemplate chatml(const std::string& default_system = "");
  static ChatTemplate llama3(bool with_date_header = false);

  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt = true) const;

  Format format() const { return format_; }
  const std::string& default_system() const { return default_system_; }
  // Text that ends an assistant turn (<|im_end|> or <|eot_id|>).
  std::string end_of_turn() const { return format_ == Format::Llama3 ? "<|eot_id|>" : "<|im_end|>"; }
  // The rendered prompt starts with the BOS text: do not add BOS again when encoding it.
  bool includes_bos() const { return format_ == Format::Llama3; }

  bool enable_thinking = true;         // Qwen3: false appends an empty <think></think> to the prompt
  std::string date = "26 Jul 2024";    // Llama 3.1 "Today Date" (the templates' default)

 private:
  Format format_ = Format::ChatML;
  std::string default_system_;
  bool llama_date_header_ = false;
};

}  // namespace bik::engine

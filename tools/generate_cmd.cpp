// bik generate: run prompts through the engine (src/engine/engine.h) and print the completions.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bik/device.h"
#include "cli.h"
#include "model_args.h"
#include "engine/chat_template.h"
#include "engine/engine.h"
#include "engine/gguf.h"
#include "engine/model.h"
#include "engine/model_config.h"
#include "engine/tokenizer.h"

namespace bik::cli {
namespace {

namespace fs = std::filesystem;
using namespace bik::engine;

const char* kGenerateUsage =
    "usage: bik generate [--model PATH | --dummy-weights CONFIG] (--prompt TEXT | --prompts-file F) [options]\n"
    "\n"
    "Generates with the batch-invariant engine: a request's tokens and logprobs do not depend on the other\n"
    "prompts in the run, the chunk size, the prefix cache or preemption. One prompt streams its text to\n"
    "stdout; several print one completion per prompt (progress on stderr).\n"
    "\n"
    "model:\n"
    "  --model PATH            a .gguf file or a Hugging Face folder (default: the embedded SmolLM2-135M)\n"
    "  --dummy-weights CONFIG  seeded random weights for a config.json, HF folder or .gguf (no tokenizer\n"
    "                          unless one is beside it: the prompt's bytes become the token ids)\n"
    "  --weights-seed S        seed of the dummy weights (default 0)\n"
    "prompts:\n"
    "  --prompt TEXT           one prompt (repeatable through --prompts-file)\n"
    "  --prompts-file F        one prompt per line (empty lines skipped)\n"
    "  --chat                  wrap each prompt as a user turn in the model's chat template\n"
    "  --system TEXT           system message for --chat\n"
    "sampling (every request gets the same parameters; randomness is keyed by (seed, position)):\n"
    "  --max-tokens N          tokens to generate (default 64)\n"
    "  --temperature T         0 = greedy (default 0)\n"
    "  --top-k K --top-p P --min-p P --seed S\n"
    "  --logprobs N            report the N most likely tokens at each step (with --json)\n"
    "  --ignore-eos            do not stop at the end-of-sequence token\n"
    "engine:\n"
    "  --device cpu|cuda       (default cpu)\n"
    "  --batch-invariant on|off  off routes the linear layers through a batch-variant GEMM (OpenBLAS on\n"
    "                          the CPU, cuBLASLt's default heuristic on CUDA): a negative control that\n"
    "                          shows outputs changing with the batch (default on)\n"
    "  --tp K                  tensor parallelism over K ranks, K in 1, 2, 4, 8 (cpu: K threads; cuda: K\n"
    "                          GPUs over NCCL); K must divide the attention heads, kv heads, MLP size\n"
    "  --tp-invariant on|off   with --tp: sum the o/down layers as a fixed tree of 8 K-chunks, so every K\n"
    "                          (1 included) gives the same bits (default on); off: naive per-rank sums\n"
"  --cuda-graphs on|off    decode steps as recorded CUDA graphs (cuda, no --tp; default off)\n"
    "  --chunk-size N          token budget of one step = prefill chunk (default 512)\n"
    "  --block-size N          KV cache block size in tokens (default 16)\n"
    "  --num-blocks N          KV cache blocks (default: 256 MiB worth); small values force preemption\n"
    "  --max-seqs N            sequences per step at most (default 256)\n"
    "  --no-prefix-cache       disable prefix caching\n"
    "output:\n"
    "  --json                  one JSON document with ids, text, logprobs and statistics\n";

std::vector<std::string> read_prompts_file(const std::string& path) {
  std::ifstream f(path);
  BIK_CHECK(f.good(), "bik generate: cannot read --prompts-file ", path);
  std::vector<std::string> out;
  std::string line;
  while (std::getline(f, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty()) out.push_back(line);
  }
  BIK_CHECK(!out.empty(), "bik generate: --prompts-file ", path, " holds no prompt");
  return out;
}

int generate(const std::vector<std::string>& argv) {
  Args a(argv, {"json", "ignore-eos", "no-prefix-cache", "chat"},
         {"system", "model", "dummy-weights", "weights-seed", "prompt", "prompts-file", "max-tokens", "temperature",
          "top-k", "top-p", "min-p", "seed", "logprobs", "device", "batch-invariant", "tp", "tp-invariant", "chunk-size", "block-size",
          "num-blocks", "max-seqs", "cuda-graphs"},
         "bik generate");
  BIK_CHECK(a.positional().empty(), "bik generate: unexpected argument '",
            a.positional().empty() ? "" : a.positional()[0], "'");
  BIK_CHECK(a.has("prompt") != a.has("prompts-file"), "bik generate: give exactly one of --prompt and --prompts-file");

  // Device.
  const Device device = device_option(a, "bik generate");
  const TpChoice tp = tp_option(a, "bik generate");
  const bool graphs = cuda_graphs_option(a, "bik generate", device, tp);

  // Model and tokenizer.
  const ModelChoice choice = model_option(a, "bik generate");
  const std::string& path = choice.path;
  const LoadOptions& lo = choice.options;
  const auto t_load = std::chrono::steady_clock::now();
  engine::Model loaded = load_model(path, lo);
  std::optional<Tokenizer> tok = find_tokenizer(path);
  const bool invariant = batch_invariant_option(a, "bik generate");
  const std::unique_ptr<ModelRunner> runner =
      make_runner(loaded.config, loaded.weights, device, invariant, tp, "bik generate", graphs);
  const ModelRunner& model = *runner;
  loaded.weights = Weights();  // the model holds its own (converted) copies
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();

  // Prompts.
  std::vector<std::string> texts = a.has("prompt") ? std::vector<std::string>{a.str("prompt")}
                                                   : read_prompts_file(a.str("prompts-file"));
  const bool chat = a.flag("chat");
  BIK_CHECK(!chat || tok, "bik generate: --chat needs a tokenizer (none found with ", path, ")");
  BIK_CHECK(chat || !a.has("system"), "bik generate: --system needs --chat");
  std::optional<ChatTemplate> templ;
  if (chat) templ = ChatTemplate::for_tokenizer(*tok);
  std::vector<std::vector<int32_t>> prompts;
  for (const auto& t : texts) {
    std::vector<int32_t> ids;
    if (templ) {
      std::vector<ChatMessage> msgs;
      if (a.has("system")) msgs.push_back({"system", a.str("system")});
      msgs.push_back({"user", t});
      ids = tok->encode(templ->render(msgs), /*allow_special=*/true, tok->add_bos_default() && !templ->includes_bos());
    } else if (tok) {
      ids = tok->encode(t, /*allow_special=*/true, tok->add_bos_default());
    } else {
      for (unsigned char c : t) ids.push_back(int32_t(c) % int32_t(model.vocab_size()));
    }
    BIK_CHECK(!ids.empty(), "bik generate: a prompt encodes to no tokens");
    prompts.push_back(std::move(ids));
  }

  RequestParams p;
  p.max_tokens = int32_t(a.integer("max-tokens", 64));
  p.temperature = float(a.number("temperature", 0.0));
  p.top_k = int32_t(a.integer("top-k", 0));
  p.top_p = float(a.number("top-p", 1.0));
  p.min_p = float(a.number("min-p", 0.0));
  p.seed = uint64_t(a.integer("seed", 0));
  p.top_logprobs = int32_t(a.integer("logprobs", 0));
  BIK_CHECK(p.max_tokens >= 1, "bik generate: --max-tokens must be >= 1");
  BIK_CHECK(p.temperature >= 0, "bik generate: --temperature must be >= 0");
  if (!a.flag("ignore-eos")) {
    for (int64_t e : loaded.config.eos_ids) p.stop_ids.push_back(int32_t(e));
    if (tok && tok->eos_id() >= 0) p.stop_ids.push_back(tok->eos_id());
    if (templ)
      if (int32_t end = tok->token_to_id(templ->end_of_turn()); end >= 0) p.stop_ids.push_back(end);
  }

  EngineConfig ec;
  ec.max_num_batched_tokens = a.integer("chunk-size", 512);
  ec.block_size = a.integer("block-size", 16);
  ec.num_blocks = a.integer("num-blocks", 0);
  ec.max_num_seqs = a.integer("max-seqs", 256);
  ec.prefix_caching = !a.flag("no-prefix-cache");
  LLMEngine llm(model, ec);

  const bool json = a.flag("json");
  const bool stream = !json && prompts.size() == 1;
  std::optional<Tokenizer::StreamDecoder> decoder;
  if (stream && tok) decoder.emplace(*tok, /*skip_special=*/true);
  for (const auto& ids : prompts)
    BIK_CHECK(int64_t(ids.size()) < llm.max_model_len(), "bik generate: a prompt has ", ids.size(),
              " tokens; at most ", llm.max_model_len() - 1, " fit (the model's positions or the KV cache)");
  if (stream) {
    std::fputs(texts[0].c_str(), stdout);
    if (chat) std::fputs("\n", stdout);
    if (!tok) std::fputs(" =>", stdout);  // no tokenizer: the prompt's bytes were the ids; print ids back
    std::fflush(stdout);
  }
  size_t done = 0;
  const auto t0 = std::chrono::steady_clock::now();
  auto last_report = t0;
  auto on_step = [&](const std::vector<StepOutput>& outs) {
    for (const StepOutput& o : outs) {
      if (stream) {
        std::string piece = decoder ? decoder->push(o.token) : " " + std::to_string(o.token);
        std::fputs(piece.c_str(), stdout);
        std::fflush(stdout);
      }
      done += o.finished;
    }
    const auto now = std::chrono::steady_clock::now();
    if (!stream && prompts.size() > 1 && std::chrono::duration<double>(now - last_report).count() > 2.0) {
      last_report = now;
      const double s = std::chrono::duration<double>(now - t0).count();
      std::fprintf(stderr, "bik generate: %zu/%zu requests done, %lld tokens generated, %.1f tok/s\n", done,
                   prompts.size(), (long long)llm.stats().sampled_tokens, double(llm.stats().sampled_tokens) / s);
    }
  };
  const auto results = llm.generate(prompts, {p}, on_step);
  const double gen_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const EngineStats& st = llm.stats();

  auto text_of = [&](const std::vector<int32_t>& ids) {
    if (tok) return tok->decode(ids, /*skip_special=*/true);
    std::string s;
    for (int32_t id : ids) s += (s.empty() ? "" : " ") + std::to_string(id);
    return s;
  };
  if (stream) {
    if (decoder) std::fputs(decoder->finish().c_str(), stdout);
    std::fputs("\n", stdout);
    std::fflush(stdout);
  } else if (!json) {
    for (size_t i = 0; i < results.size(); ++i)
      std::printf("[%zu] %s%s%s\n", i, texts[i].c_str(), chat ? "\n" : tok ? "" : " => ",
                  text_of(results[i].tokens).c_str());
  } else {
    nlohmann::json out;
    out["model"] = path;
    out["dummy_weights"] = lo.dummy_weights;
    out["device"] = device.str();
    out["batch_invariant"] = invariant;
    out["config"] = {{"chunk_size", ec.max_num_batched_tokens}, {"block_size", ec.block_size},
                     {"num_blocks", llm.num_blocks()}, {"prefix_caching", ec.prefix_caching}};
    nlohmann::json reqs = nlohmann::json::array();
    for (size_t i = 0; i < results.size(); ++i) {
      const RequestOutput& r = results[i];
      nlohmann::json j;
      j["prompt"] = texts[i];
      j["prompt_ids"] = r.prompt;
      j["ids"] = r.tokens;
      j["text"] = text_of(r.tokens);
      j["logprobs"] = r.logprobs;  // printed with round-trip precision: equal text means equal bits
      if (p.top_logprobs > 0) {
        nlohmann::json top = nlohmann::json::array();
        for (const auto& step : r.top) {
          nlohmann::json s = nlohmann::json::array();
          for (const auto& e : step) s.push_back({{"id", e.id}, {"logprob", e.logprob}});
          top.push_back(s);
        }
        j["top_logprobs"] = top;
      }
      j["finish_reason"] = finish_reason_name(r.finish);
      j["cached_prompt_tokens"] = r.num_cached_tokens;
      j["preemptions"] = r.num_preemptions;
      reqs.push_back(j);
    }
    out["requests"] = reqs;
    out["stats"] = {{"steps", st.steps},
                    {"scheduled_tokens", st.scheduled_tokens},
                    {"generated_tokens", st.sampled_tokens},
                    {"preemptions", st.preemptions},
                    {"prefix_cache_hit_blocks", st.prefix_cache_hit_blocks},
                    {"load_s", load_s},
                    {"generate_s", gen_s}};
    std::printf("%s\n", out.dump(2).c_str());
  }
  std::fprintf(stderr,
               "bik generate: %zu request(s), %lld tokens in %.2f s (%.1f tok/s), %lld steps, %lld preemptions, "
               "%lld prefix-cache blocks reused; model loaded in %.2f s\n",
               results.size(), (long long)st.sampled_tokens, gen_s, double(st.sampled_tokens) / std::max(gen_s, 1e-9),
               (long long)st.steps, (long long)st.preemptions, (long long)st.prefix_cache_hit_blocks, load_s);
  return 0;
}

}  // namespace

int cmd_generate(const std::vector<std::string>& argv) { return run_command("generate", kGenerateUsage, argv, &generate); }

}  // namespace bik::cli

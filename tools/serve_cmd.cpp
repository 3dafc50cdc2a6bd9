// bik serve: the OpenAI-compatible HTTP server (src/engine/server.h) on the batch-invariant engine.
#include <pthread.h>

#include <csignal>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "bik/device.h"
#include "cli.h"
#include "model_args.h"
#include "engine/engine.h"
#include "engine/gguf.h"
#include "engine/model.h"
#include "engine/model_config.h"
#include "engine/server.h"
#include "engine/tokenizer.h"

namespace bik::cli {
namespace {

namespace fs = std::filesystem;
using namespace bik::engine;

const char* kServeUsage =
    "usage: bik serve [--model PATH | --dummy-weights CONFIG] [options]\n"
    "\n"
    "Serves the batch-invariant engine over HTTP with OpenAI's API: POST /v1/completions and\n"
    "/v1/chat/completions (streaming SSE, n, stop, seed, logprobs, temperature/top_p/top_k/min_p),\n"
    "GET /v1/models, /health and /metrics (Prometheus). A request's tokens and logprobs do not depend on\n"
    "the other requests being served. Ctrl-C stops it.\n"
    "\n"
    "model:\n"
    "  --model PATH            a .gguf file or a Hugging Face folder (default: the embedded SmolLM2-135M)\n"
    "  --dummy-weights CONFIG  seeded random weights for a config.json (no tokenizer unless one is beside it:\n"
    "                          prompts are bytes or token-id arrays, text is \" <id>\" per token)\n"
    "  --weights-seed S        seed of the dummy weights (default 0)\n"
    "  --served-model-name N   the model name of the API (default: the file or folder name)\n"
    "engine:\n"
    "  --device cpu|cuda       (default cpu)\n"
    "  --batch-invariant on|off  off: batch-variant GEMMs (negative control; default on)\n"
    "  --cuda-graphs on|off    decode steps as recorded CUDA graphs (cuda, no --tp; default off)\n"
    "  --tp K                  tensor parallelism over K ranks, K in 1, 2, 4, 8 (cpu: K threads; cuda: K\n"
    "                          GPUs over NCCL); K must divide the attention heads, kv heads, MLP size\n"
    "  --tp-invariant on|off   with --tp: sum the o/down layers as a fixed tree of 8 K-chunks, so every K\n"
    "                          (1 included) gives the same bits (default on); off: naive per-rank sums\n"
    "  --block-size N          KV cache block size in tokens (default 16)\n"
    "  --num-blocks N          KV cache blocks (default: --kv-cache-mib worth)\n"
    "  --kv-cache-mib N        KV cache budget when --num-blocks is not given (default 256)\n"
    "  --max-batched-tokens N  token budget of one step = prefill chunk (default 512)\n"
    "  --max-seqs N            sequences per step at most (default 256)\n"
    "  --max-model-len N       prompt + completion tokens at most (default: the model's, capped by the cache)\n"
    "  --no-prefix-cache       disable prefix caching\n"
    "http:\n"
    "  --host ADDR             address to bind (default 127.0.0.1: this machine only)\n"
    "  --port N                (default 8000; 0 picks a free one)\n"
    "  --http-threads N        requests served at once (default 128)\n"
    "  --max-body-bytes N      larger request bodies get 413 (default 1048576)\n"
    "  --max-tokens-limit N    max_tokens of a request at most (default 4096)\n"
    "  --max-n N               n of a request at most (default 16)\n"
    "  --seed S                seed of requests that give none (default 0)\n";

int serve(const std::vector<std::string>& argv) {
  Args a(argv, {"no-prefix-cache"},
         {"model", "dummy-weights", "weights-seed", "served-model-name", "device", "batch-invariant", "tp", "tp-invariant", "block-size",
          "cuda-graphs", "num-blocks", "kv-cache-mib", "max-batched-tokens", "max-seqs", "max-model-len", "host", "port",
          "http-threads", "max-body-bytes", "max-tokens-limit", "max-n", "seed"},
         "bik serve");
  BIK_CHECK(a.positional().empty(), "bik serve: unexpected argument '", a.positional().empty() ? "" : a.positional()[0], "'");

  const Device device = device_option(a, "bik serve");
  const TpChoice tp = tp_option(a, "bik serve");
  const bool graphs = cuda_graphs_option(a, "bik serve", device, tp);
  const bool invariant = batch_invariant_option(a, "bik serve");

  ServerConfig sc;
  sc.host = a.str("host", "127.0.0.1");
  const long long port = a.integer("port", 8000);
  BIK_CHECK(port >= 0 && port <= 65535, "bik serve: --port must be in [0, 65535], got ", port);
  sc.port = int(port);
  sc.http_threads = int(a.integer("http-threads", 128));
  BIK_CHECK(sc.http_threads >= 1, "bik serve: --http-threads must be >= 1");
  sc.default_seed = uint64_t(a.integer("seed", 0));
  sc.limits.max_body_bytes = a.integer("max-body-bytes", 1 << 20);
  BIK_CHECK(sc.limits.max_body_bytes >= 64, "bik serve: --max-body-bytes must be >= 64");
  sc.limits.max_tokens = int32_t(a.integer("max-tokens-limit", 4096));
  BIK_CHECK(sc.limits.max_tokens >= 1, "bik serve: --max-tokens-limit must be >= 1");
  sc.limits.max_n = int32_t(a.integer("max-n", 16));
  BIK_CHECK(sc.limits.max_n >= 1, "bik serve: --max-n must be >= 1");

  EngineConfig ec;
  ec.block_size = a.integer("block-size", 16);
  ec.num_blocks = a.integer("num-blocks", 0);
  ec.kv_cache_bytes = a.integer("kv-cache-mib", 256) << 20;
  ec.max_num_batched_tokens = a.integer("max-batched-tokens", 512);
  ec.max_num_seqs = a.integer("max-seqs", 256);
  ec.max_model_len = a.integer("max-model-len", 0);
  ec.prefix_caching = !a.flag("no-prefix-cache");
  BIK_CHECK(ec.block_size >= 1 && ec.max_num_batched_tokens >= 1 && ec.max_num_seqs >= 1 && ec.num_blocks >= 0 &&
                ec.kv_cache_bytes > 0 && ec.max_model_len >= 0,
            "bik serve: engine sizes must be positive");

  const ModelChoice choice = model_option(a, "bik serve");
  const std::string& path = choice.path;
  const LoadOptions& lo = choice.options;
  engine::Model loaded = load_model(path, lo);
  std::optional<Tokenizer> tok = find_tokenizer(path);
  const std::unique_ptr<ModelRunner> runner = make_runner(loaded.config, loaded.weights, device, invariant, tp,
                                                          "bik serve", graphs);
  const ModelRunner& model = *runner;
  loaded.weights = Weights();
  std::string name = fs::path(path).filename().string();
  if (name == "config.json") name = fs::path(path).parent_path().filename().string();
  sc.model_name = a.str("served-model-name", name.empty() ? "bik" : name);

  // SIGINT/SIGTERM are taken by sigwait below: block them before any thread starts so none inherits them.
  // A shell's background job starts with SIGINT ignored, which would hide it from sigwait: take both back.
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

  Server server(model, tok ? &*tok : nullptr, ec, sc);
  const int bound = server.start();
  std::fprintf(stderr,
               "bik serve: %s on %s, batch-invariant %s, max model length %lld, %s; listening on http://%s:%d "
               "(Ctrl-C stops)\n",
               sc.model_name.c_str(), device.str().c_str(), invariant ? "on" : "off", (long long)server.limits().max_model_len,
               tok ? "tokenizer loaded" : "no tokenizer (byte prompts, id text)", sc.host.c_str(), bound);
  int sig = 0;
  sigwait(&sigs, &sig);
  std::fprintf(stderr, "bik serve: %s received, stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
  server.stop();
  return 0;
}

}  // namespace

int cmd_serve(const std::vector<std::string>& argv) { return run_command("serve", kServeUsage, argv, &serve); }

}  // namespace bik::cli

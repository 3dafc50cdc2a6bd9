// bik bench serve: the offline serving workload of "Defeating Nondeterminism in LLM Inference" (Thinking
// Machines, 2025) on the in-process engine. N requests: most draw their prompt from a fixed set, a share of
// them repeat one and the same prompt; each generates exactly max_tokens (uniform in [min, max], end of
// sequence ignored). The same requests run with the batch-invariant kernels on, then off. Reported per mode:
// wall time, output and total tokens/s, engine steps, and how many different completions the requests of
// the repeated prompt got (batch-invariant on: exactly 1); on one GPU also its energy over the timed run,
// mean power and SM clock (NVML), since at the power limit the clock, and so the throughput, follows the
// energy the kernels spend.
//
// Completions of the repeated prompt have different lengths (their max_tokens differ), so two of them count
// as the same when one is a prefix of the other: the count is the number of distinct completions that are
// not a prefix of another one (the leaves of their prefix tree).
//
// Output: DIR/NAME.json (device, commit, date, config, per-mode results) and DIR/NAME.md (a table).
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench.h"
#include "bench_util.h"
#include "model_args.h"
#include "bik/device.h"
#include "cli.h"
#include "engine/engine.h"
#include "engine/model.h"
#include "engine/model_config.h"

namespace bik::cli {
namespace {

namespace fs = std::filesystem;
using namespace bik::engine;
using Clock = std::chrono::steady_clock;

// Engine steps grouped by the tokens they scheduled (the GEMMs' M): where the wall time goes, per mode.
struct StepBucket {
  int64_t lo = 0, hi = 0, steps = 0, tokens = 0;
  double seconds = 0;
};

// [1, 64], [65, 128], ..., [449, 512] (one bucket per 64 rows: the GEMM tiles' granularity), then
// doublings up to the token budget.
std::vector<StepBucket> step_buckets(int64_t budget) {
  std::vector<StepBucket> b;
  int64_t lo = 1;
  for (int64_t hi = 64; lo <= budget; hi = hi < 512 ? hi + 64 : hi * 2) {
    b.push_back({lo, std::min(hi, budget)});
    lo = hi + 1;
  }
  return b;
}

void add_step(std::vector<StepBucket>& b, int64_t tokens, double seconds) {
  if (b.empty()) return;
  StepBucket* k = &b.back();  // a step alone over the budget (chunked prefill off) counts in the last one
  for (StepBucket& x : b)
    if (tokens <= x.hi) {
      k = &x;
      break;
    }
  k->steps += 1;
  k->tokens += tokens;
  k->seconds += seconds;
}

const char* kServeUsage =
    "usage: bik bench serve (--model PATH | --dummy-weights CONFIG) [options]\n"
    "\n"
    "The offline serving workload: N requests, prompts drawn from a fixed set plus one prompt that many\n"
    "requests repeat, max_tokens uniform in [--min-tokens, --max-tokens], end of sequence ignored. Runs the\n"
    "same requests once per --modes entry (batch-invariant kernels on / off) and reports wall time,\n"
    "tokens/s, steps and the number of unique completions among the requests of the repeated prompt,\n"
    "then the steps grouped by the tokens they scheduled (64-token groups up to 512) with their seconds;\n"
    "on one GPU also the GPU's energy over each timed run, mean power and SM clock (NVML, where it loads).\n"
    "Where both modes ran: their median output tok/s and its ratio, and on / off - 1 for each two\n"
    "consecutive runs of different modes (an ABBA order such as on,off,off,on pairs runs 1-2 and 3-4), with\n"
    "the pairs' mean and standard deviation (JSON \"comparison\").\n"
    "Exits 1 when a batch-invariant run gives that prompt more than one completion.\n"
    "\n"
    "model:\n"
    "  --model PATH              a .gguf file or a Hugging Face folder\n"
    "  --dummy-weights CONFIG    seeded random weights for a config.json (e.g. bench/data/qwen3_8b_config.json)\n"
    "  --weights-seed S          seed of the dummy weights (default 0)\n"
    "  --device cpu|cuda         (default cpu)\n"
    "  --cuda-graphs on|off      decode steps as recorded CUDA graphs (cuda, no --tp; default off)\n"
    "  --tp K                    tensor parallelism over K ranks, K in 1, 2, 4, 8 (cpu: threads; cuda: K GPUs\n"
    "                            over NCCL); --tp-invariant on|off as for bik serve (default on)\n"
    "workload:\n"
    "  --requests N              (default 1000)\n"
    "  --shared-fraction F       share of the requests that repeat the one prompt (default 0.5)\n"
    "  --prompt-set N            distinct prompts of the other requests (default 32)\n"
    "  --min-prompt-len N --max-prompt-len N   prompt lengths in tokens (default 16, 128)\n"
    "  --min-tokens N --max-tokens N           generated tokens per request (default 90, 110)\n"
    "  --temperature T           0 = greedy (default 0); --top-p P, --top-k K\n"
    "  --seed S                  seed of the workload and of the sampling (default 0)\n"
    "engine:\n"
    "  --modes on,off            batch-invariant modes to run, in order (default on,off)\n"
    "  --max-seqs N              sequences per step at most (default 256)\n"
    "  --max-batched-tokens N    token budget of a step = prefill chunk (default 2048)\n"
    "  --kv-cache-mib N          KV cache size (default 16384 on cuda, 512 on cpu)\n"
    "  --block-size N            KV cache block size (default 16)\n"
    "  --no-prefix-cache         disable prefix caching\n"
    "  --no-warmup               skip the untimed run of the whole workload before each mode\n"
    "output:\n"
    "  --out DIR --name NAME     writes DIR/NAME.json and DIR/NAME.md (default bench/results, serve_<device>)\n"
    "  --commit SHA              recorded as the commit (default: git rev-parse HEAD, -dirty if modified)\n";

std::string cpu_model_name() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) {
      const auto p = line.find(':');
      if (p != std::string::npos) {
        std::string s = line.substr(p + 1);
        while (!s.empty() && s.front() == ' ') s.erase(s.begin());
        return s;
      }
    }
  return "unknown cpu";
}

// splitmix64: a fixed generator, so the workload is the same on every platform and standard library.
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  int64_t uniform(int64_t lo, int64_t hi) { return lo + int64_t(next() % uint64_t(hi - lo + 1)); }  // [lo, hi]
  double unit() { return double(next() >> 11) * 0x1.0p-53; }
};

struct Workload {
  std::vector<std::vector<int32_t>> prompts;
  std::vector<RequestParams> params;
  std::vector<int64_t> shared;  // indices of the requests with the repeated prompt
  int64_t prompt_tokens = 0, output_tokens = 0;
};

// Number of completions that are not a prefix of another (duplicates counted once), and the first token
// position where two of them differ (-1 when none do).
template <class T>
std::pair<int64_t, int64_t> count_unique(std::vector<std::vector<T>> seqs) {
  std::sort(seqs.begin(), seqs.end());
  seqs.erase(std::unique(seqs.begin(), seqs.end()), seqs.end());
  int64_t leaves = 0, first_diff = -1;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const bool is_prefix = i + 1 < seqs.size() && seqs[i + 1].size() > seqs[i].size() &&
                           std::equal(seqs[i].begin(), seqs[i].end(), seqs[i + 1].begin());
    if (is_prefix) continue;
    ++leaves;
  }
  // Divergence: the shortest common prefix of neighbours in sorted order that is not a prefix relation.
  for (size_t i = 0; i + 1 < seqs.size(); ++i) {
    const auto& a = seqs[i];
    const auto& b = seqs[i + 1];
    size_t p = 0;
    while (p < a.size() && p < b.size() && a[p] == b[p]) ++p;
    if (p < a.size() && p < b.size() && (first_diff < 0 || int64_t(p) < first_diff)) first_diff = int64_t(p);
  }
  return {leaves, first_diff};
}

// Batch invariance on against off, where runs of both took place: the median output tok/s of each, the ratio
// of the medians, and for each two consecutive runs of different modes (runs 2i and 2i + 1: the pairs of an
// ABBA order such as on,off,off,on, which cancel a drift of the card over the runs) on / off - 1 in percent,
// with their mean and (from two pairs on) their standard deviation. Null where a mode never ran.
nlohmann::json compare_modes(const nlohmann::json& results) {
  std::vector<double> on, off, pairs;
  for (const auto& r : results)
    (r["batch_invariant"].get<bool>() ? on : off).push_back(r["output_tok_s"].get<double>());
  if (on.empty() || off.empty()) return nullptr;
  // The mean of the two middle runs for an even count (Python's statistics.median), where bench_util's
  // median of timings takes the upper one.
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t h = v.size() / 2;
    return v.size() % 2 ? v[h] : (v[h - 1] + v[h]) / 2;
  };
  for (size_t i = 0; i + 1 < results.size(); i += 2) {
    const bool first_on = results[i]["batch_invariant"].get<bool>();
    if (first_on == results[i + 1]["batch_invariant"].get<bool>()) continue;
    const double t_on = results[first_on ? i : i + 1]["output_tok_s"].get<double>();
    const double t_off = results[first_on ? i + 1 : i]["output_tok_s"].get<double>();
    pairs.push_back(100.0 * (t_on / t_off - 1.0));
  }
  const double on_m = median(on), off_m = median(off);
  nlohmann::json c = {{"on_median_output_tok_s", on_m},
                      {"off_median_output_tok_s", off_m},
                      {"median_ratio", on_m / off_m},
                      {"pairs_pct", pairs}};
  if (!pairs.empty()) {
    double mean = 0;
    for (double x : pairs) mean += x;
    mean /= double(pairs.size());
    c["pair_mean_pct"] = mean;
    if (pairs.size() > 1) {
      double ss = 0;
      for (double x : pairs) ss += (x - mean) * (x - mean);
      c["pair_sd_pct"] = std::sqrt(ss / double(pairs.size() - 1));
    }
  }
  return c;
}

int serve_bench(const std::vector<std::string>& argv) {
  Args a(argv, {"no-prefix-cache", "no-warmup"},
         {"model", "dummy-weights", "weights-seed", "device", "requests", "shared-fraction", "prompt-set",
          "min-prompt-len", "max-prompt-len", "min-tokens", "max-tokens", "temperature", "top-p", "top-k", "seed",
          "modes", "max-seqs", "max-batched-tokens", "kv-cache-mib", "block-size", "out", "name", "commit", "tp",
          "tp-invariant", "cuda-graphs"},
         "bik bench serve");
  BIK_CHECK(a.positional().empty(), "bik bench serve: unexpected argument '",
            a.positional().empty() ? "" : a.positional()[0], "'");
  BIK_CHECK(a.has("model") != a.has("dummy-weights"), "bik bench serve: give exactly one of --model and --dummy-weights");

  const Device device = device_option(a, "bik bench serve");
  const std::string dev_name = device.is_cuda() ? "cuda" : "cpu";
  std::string hw_name;
  if (device.is_cuda()) {
    hw_name = cuda_device_props(0).name;
  } else {
    hw_name = cpu_model_name();
  }

  std::vector<bool> modes;
  for (const auto& m : split_list(a.str("modes", "on,off"))) {
    BIK_CHECK(m == "on" || m == "off", "bik bench serve: --modes entries must be on or off, got '", m, "'");
    modes.push_back(m == "on");
  }
  BIK_CHECK(!modes.empty(), "bik bench serve: --modes is empty");

  const int64_t n_req = a.integer("requests", 1000);
  const double shared_fraction = a.number("shared-fraction", 0.5);
  const int64_t prompt_set = a.integer("prompt-set", 32);
  const int64_t min_plen = a.integer("min-prompt-len", 16), max_plen = a.integer("max-prompt-len", 128);
  const int64_t min_tok = a.integer("min-tokens", 90), max_tok = a.integer("max-tokens", 110);
  const uint64_t seed = uint64_t(a.integer("seed", 0));
  BIK_CHECK(n_req >= 1, "bik bench serve: --requests must be >= 1");
  BIK_CHECK(shared_fraction >= 0 && shared_fraction <= 1, "bik bench serve: --shared-fraction must be in [0, 1]");
  BIK_CHECK(prompt_set >= 1, "bik bench serve: --prompt-set must be >= 1");
  BIK_CHECK(min_plen >= 1 && max_plen >= min_plen, "bik bench serve: need 1 <= --min-prompt-len <= --max-prompt-len");
  BIK_CHECK(min_tok >= 1 && max_tok >= min_tok, "bik bench serve: need 1 <= --min-tokens <= --max-tokens");

  RequestParams base;
  base.temperature = float(a.number("temperature", 0.0));
  base.top_p = float(a.number("top-p", 1.0));
  base.top_k = int32_t(a.integer("top-k", 0));
  base.seed = seed;  // the same for every request: requests with the same prompt must agree token for token

  EngineConfig ec;
  ec.max_num_seqs = a.integer("max-seqs", 256);
  ec.max_num_batched_tokens = a.integer("max-batched-tokens", 2048);
  const int64_t kv_mib = a.integer("kv-cache-mib", dev_name == "cuda" ? 16384 : 512);
  ec.kv_cache_bytes = kv_mib << 20;
  ec.block_size = a.integer("block-size", 16);
  ec.prefix_caching = !a.flag("no-prefix-cache");

  // Output paths, device, commit, date.
  const std::string tag = bench::name_tag(dev_name == "cuda" ? hw_name : "cpu");
  const std::string out_dir = a.str("out", "bench/results");
  const std::string name = a.str("name", "serve_" + tag);
  const std::string commit = bench::commit_of(a.str("commit", ""));
  const std::string date = bench::utc_now();

  // Model.
  const ModelChoice choice = model_option(a, "bik bench serve");
  const TpChoice tp = tp_option(a, "bik bench serve");
  const bool graphs = cuda_graphs_option(a, "bik bench serve", device, tp);
  const std::string& path = choice.path;
  const LoadOptions& lo = choice.options;
  std::fprintf(stderr, "bik bench serve: loading %s%s on %s (%s)\n", path.c_str(),
               lo.dummy_weights ? " (dummy weights)" : "", dev_name.c_str(), hw_name.c_str());
  const auto t_load = Clock::now();
  engine::Model loaded = load_model(path, lo);
  const double init_s = std::chrono::duration<double>(Clock::now() - t_load).count();
  const ModelConfig mcfg = loaded.config;
  const std::unique_ptr<ModelRunner> runner =
      make_runner(loaded.config, loaded.weights, device, modes[0], tp, "bik bench serve", graphs);
  ModelRunner& model = *runner;
  const double weight_gib = double(loaded.weights.bytes()) / double(1 << 30);
  loaded.weights = Weights();
  const double load_s = std::chrono::duration<double>(Clock::now() - t_load).count();
  std::fprintf(stderr, "bik bench serve: %s; %.2f GiB of weights, initialised in %.1f s, on the device in %.1f s\n",
               mcfg.str().c_str(), weight_gib, init_s, load_s);

  // Workload: prompt i of the set and the repeated prompt are random token ids.
  const int64_t vocab = model.vocab_size();
  Rng rng{seed ^ 0x5eed5e77e5eedull};
  auto random_prompt = [&] {
    std::vector<int32_t> p(size_t(rng.uniform(min_plen, max_plen)));
    for (auto& t : p) t = int32_t(rng.uniform(0, vocab - 1));
    return p;
  };
  std::vector<std::vector<int32_t>> set;
  for (int64_t i = 0; i < prompt_set; ++i) set.push_back(random_prompt());
  const std::vector<int32_t> repeated = random_prompt();
  Workload w;
  for (int64_t i = 0; i < n_req; ++i) {
    const bool shared = rng.unit() < shared_fraction;
    const int64_t pick = rng.uniform(0, prompt_set - 1);
    RequestParams p = base;
    p.max_tokens = int32_t(rng.uniform(min_tok, max_tok));
    w.prompts.push_back(shared ? repeated : set[size_t(pick)]);
    w.params.push_back(p);
    if (shared) w.shared.push_back(i);
    w.prompt_tokens += int64_t(w.prompts.back().size());
    w.output_tokens += p.max_tokens;
  }
  std::fprintf(stderr,
               "bik bench serve: %lld requests (%zu repeat one prompt of %zu tokens), %lld prompt tokens, %lld output "
               "tokens\n",
               (long long)n_req, w.shared.size(), repeated.size(), (long long)w.prompt_tokens,
               (long long)w.output_tokens);

  nlohmann::json j;
  j["benchmark"] = "serve";
  j["device"] = dev_name;
  if (dev_name == "cuda") j["gpu"] = hw_name;
  else j["cpu_model"] = hw_name;
  j["commit"] = commit;
  j["date"] = date;
  j["model"] = path;
  j["dummy_weights"] = lo.dummy_weights;
  j["model_config"] = mcfg.str();
  j["tp"] = {{"size", tp.size}, {"chunks", tp.chunks}};
  j["cuda_graphs"] = graphs;
  j["warmup"] = a.flag("no-warmup") ? "none" : "the whole workload once per mode, untimed";
  j["weights_gib"] = weight_gib;
  j["load_s"] = load_s;
  j["config"] = {{"requests", n_req},
                 {"shared_fraction", shared_fraction},
                 {"shared_requests", w.shared.size()},
                 {"prompt_set", prompt_set},
                 {"prompt_len", {min_plen, max_plen}},
                 {"max_tokens", {min_tok, max_tok}},
                 {"ignore_eos", true},
                 {"temperature", base.temperature},
                 {"top_p", base.top_p},
                 {"top_k", base.top_k},
                 {"seed", seed},
                 {"weights_seed", lo.seed},
                 {"max_seqs", ec.max_num_seqs},
                 {"max_batched_tokens", ec.max_num_batched_tokens},
                 {"kv_cache_mib", kv_mib},
                 {"block_size", ec.block_size},
                 {"prefix_caching", ec.prefix_caching}};
  j["workload"] = {{"prompt_tokens", w.prompt_tokens}, {"output_tokens", w.output_tokens}};
  j["results"] = nlohmann::json::array();

  std::error_code mk;
  fs::create_directories(out_dir, mk);
  const std::string json_path = out_dir + "/" + name + ".json", md_path = out_dir + "/" + name + ".md";
  auto write_out = [&] {  // after every mode, so a run cut short keeps what it measured
    if (nlohmann::json c = compare_modes(j["results"]); c.is_null())
      j.erase("comparison");
    else
      j["comparison"] = c;
    std::ofstream f(json_path);
    f << j.dump(1) << "\n";
    std::ofstream m(md_path);
    m << "# bik bench serve: " << (lo.dummy_weights ? "dummy weights, " : "") << fs::path(path).filename().string()
      << " on " << hw_name << (tp.size > 1 || tp.chunks > 0 ? ", --tp " + std::to_string(tp.size) : std::string())
      << "\n\n"
      << n_req << " requests (" << w.shared.size() << " repeat one prompt), max_tokens in [" << min_tok << ", "
      << max_tok << "], ignore EOS, temperature " << base.temperature << ", max_seqs " << ec.max_num_seqs
      << ", max_batched_tokens " << ec.max_num_batched_tokens << ", KV cache " << kv_mib << " MiB"
      << (graphs ? ", CUDA graphs for decode" : "")
      << (a.flag("no-warmup") ? ", no warm-up" : ", each mode after one untimed run of the workload") << ". Commit "
      << commit << ", " << date << ".\n\n"
      << "| batch-invariant | wall s | output tok/s | total tok/s | steps | preemptions | unique completions | "
         "unique logprob sequences |\n"
      << "|---|---:|---:|---:|---:|---:|---:|---:|\n";
    char row[512];
    for (const auto& r : j["results"]) {
      std::snprintf(row, sizeof row, "| %s | %.2f | %.0f | %.0f | %lld | %lld | %lld of %lld | %lld |\n",
                    r["batch_invariant"].get<bool>() ? "on" : "off", r["wall_s"].get<double>(),
                    r["output_tok_s"].get<double>(), r["total_tok_s"].get<double>(), r["steps"].get<long long>(),
                    r["preemptions"].get<long long>(), r["unique_completions"].get<long long>(),
                    r["shared_requests"].get<long long>(), r["unique_logprob_sequences"].get<long long>());
      m << row;
    }
    if (j.contains("comparison")) {
      const auto& c = j["comparison"];
      std::snprintf(row, sizeof row, "\nOn against off: median output tok/s %.0f against %.0f (x%.4f)",
                    c["on_median_output_tok_s"].get<double>(), c["off_median_output_tok_s"].get<double>(),
                    c["median_ratio"].get<double>());
      m << row;
      const auto& pairs = c["pairs_pct"];
      if (!pairs.empty()) {
        double lo = pairs[0].get<double>(), hi = lo;
        for (const auto& x : pairs) lo = std::min(lo, x.get<double>()), hi = std::max(hi, x.get<double>());
        std::snprintf(row, sizeof row, "; in %zu pairs of consecutive on / off runs on - off %+.2f%% on average",
                      pairs.size(), c["pair_mean_pct"].get<double>());
        m << row;
        if (c.contains("pair_sd_pct")) {
          std::snprintf(row, sizeof row, " (standard deviation %.2f%%, %+.2f%% to %+.2f%%)",
                        c["pair_sd_pct"].get<double>(), lo, hi);
          m << row;
        }
      }
      m << ".\n";
    }
    // The GPU's energy per timed run, where NVML could read it.
    bool any_energy = false;
    for (const auto& r : j["results"]) any_energy = any_energy || r.contains("gpu_energy_j");
    if (any_energy) {
      m << "\nGPU energy over each timed run (NVML's total-energy counter; SM clock sampled every 50 ms). At the\n"
           "power limit the clock follows the energy the kernels spend, and the throughput with it.\n\n"
        << "| batch-invariant | GPU J | mJ / output token | mean W | mean SM MHz |\n|---|---:|---:|---:|---:|\n";
      for (const auto& r : j["results"]) {
        if (!r.contains("gpu_energy_j")) continue;
        std::snprintf(row, sizeof row, "| %s | %.1f | %.3f | %.0f | %.0f |\n",
                      r["batch_invariant"].get<bool>() ? "on" : "off", r["gpu_energy_j"].get<double>(),
                      r["gpu_mj_per_output_token"].get<double>(), r["gpu_mean_watts"].get<double>(),
                      r["gpu_mean_sm_mhz"].get<double>());
        m << row;
      }
    }
    // Where the time goes: steps by the tokens they scheduled, seconds per mode.
    std::vector<std::pair<int64_t, int64_t>> ranges;
    for (const auto& r : j["results"])
      for (const auto& b : r["step_profile"]) {
        const std::pair<int64_t, int64_t> k{b["tokens"][0].get<int64_t>(), b["tokens"][1].get<int64_t>()};
        if (std::find(ranges.begin(), ranges.end(), k) == ranges.end()) ranges.push_back(k);
      }
    std::sort(ranges.begin(), ranges.end());
    if (!ranges.empty()) {
      m << "\nSteps by scheduled tokens (the GEMMs' M); seconds of wall time, step end to step end.\n\n| tokens |";
      std::string rule = "|---|";
      for (const auto& r : j["results"]) {
        const char* mn = r["batch_invariant"].get<bool>() ? "on" : "off";
        m << " steps " << mn << " | s " << mn << " | ms/step " << mn << " |";
        rule += "---:|---:|---:|";
      }
      m << "\n" << rule << "\n";
      for (const auto& [lo, hi] : ranges) {
        m << "| " << lo << "-" << hi << " |";
        for (const auto& r : j["results"]) {
          const nlohmann::json* hit = nullptr;
          for (const auto& b : r["step_profile"])
            if (b["tokens"][0].get<int64_t>() == lo) hit = &b;
          if (!hit) {
            m << " 0 | 0 | - |";
            continue;
          }
          const int64_t n = (*hit)["steps"].get<int64_t>();
          const double sec = (*hit)["seconds"].get<double>();
          std::snprintf(row, sizeof row, " %lld | %.3f | %.2f |", (long long)n, sec, 1e3 * sec / double(n));
          m << row;
        }
        m << "\n";
      }
    }
    if (!f || !m) {
      std::fprintf(stderr, "bik bench serve: cannot write %s\n", json_path.c_str());
      return false;
    }
    return true;
  };

  int rc = 0;
  std::vector<std::vector<int32_t>> on_tokens;  // of the first batch-invariant run, to compare the others with
  for (const bool inv : modes) {
    const char* mname = inv ? "on" : "off";
    model.set_batch_invariant(inv);
    // Every request must fit the model length of each engine, checked before that engine runs (no KV cache
    // is allocated only to read it).
    auto check_fits = [&](const LLMEngine& e) {
      for (size_t i = 0; i < w.prompts.size(); ++i)
        BIK_CHECK(int64_t(w.prompts[i].size()) + w.params[i].max_tokens <= e.max_model_len(), "bik bench serve: ",
                  "a request needs ", w.prompts[i].size() + size_t(w.params[i].max_tokens), " positions; at most ",
                  e.max_model_len(), " fit (the model's positions or the KV cache)");
    };
    // The warm-up: the whole workload once, untimed, on an engine of its own (so the timed run starts with
    // an empty prefix cache), so that every kernel the run launches, every library kernel's first load and
    // every shape's heuristic query (cuBLASLt's, with batch invariance off) is paid before timing; a short
    // warm-up left them to the first timed run of each mode.
    if (!a.flag("no-warmup")) {
      std::fprintf(stderr, "bik bench serve [%s]: warm-up (the workload once, untimed)\n", mname);
      LLMEngine warm(model, ec);
      check_fits(warm);
      warm.generate(w.prompts, w.params);
    }
    LLMEngine llm(model, ec);
    check_fits(llm);
    const EngineStats before = llm.stats();
    size_t done = 0;
    const auto t0 = Clock::now();
    auto last = t0, step_start = t0;
    int64_t tokens_seen = before.scheduled_tokens;
    std::vector<StepBucket> profile = step_buckets(ec.max_num_batched_tokens);
    auto on_step = [&](const std::vector<StepOutput>& outs) {
      for (const StepOutput& o : outs) done += o.finished;
      const auto t = Clock::now();
      const int64_t tokens = llm.stats().scheduled_tokens - tokens_seen;
      tokens_seen += tokens;
      add_step(profile, tokens, std::chrono::duration<double>(t - step_start).count());
      step_start = t;
      if (std::chrono::duration<double>(t - last).count() > 5.0) {
        last = t;
        const double s = std::chrono::duration<double>(t - t0).count();
        const long long gen = (long long)(llm.stats().sampled_tokens - before.sampled_tokens);
        std::fprintf(stderr, "bik bench serve [%s]: %zu/%lld requests done, %lld tokens, %.1f s, %.0f tok/s\n", mname,
                     done, (long long)n_req, gen, s, double(gen) / s);
      }
    };
#if BIK_WITH_CUDA
    // The GPU's energy over the timed run (NVML; one GPU only: with --tp the others are not read).
    bench::GpuMeter meter;
    if (device.is_cuda() && tp.size == 1) meter.start();
#endif
    const auto results = llm.generate(w.prompts, w.params, on_step);
    const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
    nlohmann::json energy;
#if BIK_WITH_CUDA
    bench::GpuMeter::Reading gr;
    if (device.is_cuda() && tp.size == 1 && meter.stop(gr))
      energy = {{"gpu_energy_j", gr.joules}, {"gpu_mean_watts", gr.joules / gr.seconds},
                {"gpu_mean_sm_mhz", gr.mean_sm_mhz}};
#endif
    const EngineStats& st = llm.stats();

    int64_t out_tokens = 0, short_requests = 0;
    for (size_t i = 0; i < results.size(); ++i) {
      out_tokens += int64_t(results[i].tokens.size());
      short_requests += int64_t(results[i].tokens.size()) != w.params[i].max_tokens;
    }
    std::vector<std::vector<int32_t>> shared_tokens;
    std::vector<std::vector<uint32_t>> shared_logprobs;  // bit patterns
    for (int64_t i : w.shared) {
      shared_tokens.push_back(results[size_t(i)].tokens);
      std::vector<uint32_t> bits(results[size_t(i)].logprobs.size());
      std::memcpy(bits.data(), results[size_t(i)].logprobs.data(), bits.size() * sizeof(uint32_t));
      shared_logprobs.push_back(std::move(bits));
    }
    const auto [unique, first_diff] = count_unique(shared_tokens);
    const auto [unique_lp, first_diff_lp] = count_unique(shared_logprobs);
    int64_t same_as_on = -1;
    if (!on_tokens.empty()) {
      same_as_on = 0;
      for (size_t i = 0; i < results.size(); ++i) same_as_on += results[i].tokens == on_tokens[i];
    } else if (inv) {
      for (const auto& r : results) on_tokens.push_back(r.tokens);
    }

    const double tot = double(out_tokens + w.prompt_tokens);
    nlohmann::json r = {{"batch_invariant", inv},
                        {"wall_s", wall},
                        {"output_tokens", out_tokens},
                        {"prompt_tokens", w.prompt_tokens},
                        {"output_tok_s", double(out_tokens) / wall},
                        {"total_tok_s", tot / wall},
                        {"steps", st.steps - before.steps},
                        {"scheduled_tokens", st.scheduled_tokens - before.scheduled_tokens},
                        {"preemptions", st.preemptions - before.preemptions},
                        {"prefix_cache_hit_blocks", st.prefix_cache_hit_blocks - before.prefix_cache_hit_blocks},
                        {"num_kv_blocks", llm.num_blocks()},
                        {"requests_short_of_max_tokens", short_requests},
                        {"shared_requests", int64_t(w.shared.size())},
                        {"unique_completions", unique},
                        {"unique_logprob_sequences", unique_lp},
                        {"first_divergent_token", first_diff},
                        {"first_divergent_logprob", first_diff_lp}};
    if (same_as_on >= 0) r["requests_identical_to_on"] = same_as_on;
    if (!energy.is_null() && out_tokens > 0) {
      r.update(energy);
      r["gpu_mj_per_output_token"] = energy["gpu_energy_j"].get<double>() * 1e3 / double(out_tokens);
    }
    r["step_profile"] = nlohmann::json::array();
    for (const StepBucket& b : profile)
      if (b.steps > 0)
        r["step_profile"].push_back(
            {{"tokens", {b.lo, b.hi}}, {"steps", b.steps}, {"scheduled_tokens", b.tokens}, {"seconds", b.seconds}});
    j["results"].push_back(r);
    std::printf(
        "batch-invariant %s: %lld requests, %lld output tokens in %.2f s: %.1f output tok/s, %.1f total tok/s, %lld "
        "steps, %lld preemptions; unique completions: %lld of %zu (logprob sequences: %lld)\n",
        mname, (long long)n_req, (long long)out_tokens, wall, double(out_tokens) / wall, tot / wall,
        (long long)(st.steps - before.steps), (long long)(st.preemptions - before.preemptions), (long long)unique,
        w.shared.size(), (long long)unique_lp);
    if (same_as_on >= 0)
      std::printf("batch-invariant %s: %lld of %lld requests identical to the batch-invariant run\n", mname,
                  (long long)same_as_on, (long long)n_req);
    if (r.contains("gpu_energy_j"))
      std::printf("batch-invariant %s: GPU energy %.1f J (%.3f mJ an output token), mean %.0f W, SM clock %.0f MHz\n",
                  mname, r["gpu_energy_j"].get<double>(), r["gpu_mj_per_output_token"].get<double>(),
                  r["gpu_mean_watts"].get<double>(), r["gpu_mean_sm_mhz"].get<double>());
    std::fflush(stdout);
    if (!write_out()) rc = 2;
    if (short_requests > 0) {
      std::fprintf(stderr, "bik bench serve [%s]: %lld requests stopped before max_tokens\n", mname,
                   (long long)short_requests);
      rc = rc ? rc : 1;
    }
    if (inv && (unique > 1 || unique_lp > 1)) {
      std::fprintf(stderr, "bik bench serve: batch-invariant run gave the repeated prompt %lld completions\n",
                   (long long)unique);
      rc = rc ? rc : 1;
    }
  }
  if (j.contains("comparison")) {
    const auto& c = j["comparison"];
    std::printf("on against off: median output tok/s %.1f against %.1f (x%.4f)",
                c["on_median_output_tok_s"].get<double>(), c["off_median_output_tok_s"].get<double>(),
                c["median_ratio"].get<double>());
    if (c.contains("pair_mean_pct"))
      std::printf("; %zu on / off pairs: %+.2f%% on average", c["pairs_pct"].size(), c["pair_mean_pct"].get<double>());
    std::printf("\n");
  }
  std::fprintf(stderr, "bik bench serve: wrote %s and %s\n", json_path.c_str(), md_path.c_str());
  return rc;
}

}  // namespace

int bench_serve(const std::vector<std::string>& argv) {
  for (const auto& x : argv)
    if (x == "--help" || x == "-h") {
      std::fputs(kServeUsage, stdout);
      return 0;
    }
  try {
    return serve_bench(argv);
  } catch (const Error& e) {
    const std::string what = e.what();
    std::fprintf(stderr, "%s%s\n", what.rfind("bik bench serve", 0) == 0 ? "" : "bik bench serve: ", what.c_str());
    return 2;
  }
}

}  // namespace bik::cli

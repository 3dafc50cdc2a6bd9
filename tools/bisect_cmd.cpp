// bik bisect: run one prompt alone and inside a batch of other prompts, capture every op's output for
// the prompt's rows in both runs (LlamaModel::set_tap) and report the first op, in forward order, whose
// bits differ. Exit code 0: all bits agree; 1: a divergence; 2: bad input.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bik/device.h"
#include "cli.h"
#include "engine/tp_model.h"
#include "model_args.h"
#include "engine/gguf.h"
#include "engine/model.h"
#include "engine/model_config.h"
#include "engine/tokenizer.h"

namespace bik::cli {
namespace {

namespace fs = std::filesystem;
using namespace bik::engine;

const char* kBisectUsage =
    "usage: bik bisect [--model PATH | --dummy-weights CONFIG] [options]\n"
    "\n"
    "Runs one prompt alone and at one row of a batch of other prompts (one prefill step each), captures\n"
    "the output of every op for the prompt's rows in both runs and prints the first op, in forward order,\n"
    "whose bits differ: its layer, how many elements differ, the max abs/rel difference and the first\n"
    "differing index. Exit code 0: all bits agree; 1: a divergence; 2: bad input.\n"
    "\n"
    "  --model PATH            a .gguf file or a Hugging Face folder (default: the embedded SmolLM2-135M)\n"
    "  --dummy-weights CONFIG  seeded random weights for a config.json, HF folder or .gguf\n"
    "  --weights-seed S        seed of the dummy weights (default 0)\n"
    "  --device cpu|cuda       (default cpu)\n"
    "  --prompt TEXT           the prompt under test (default: \"The quick brown fox jumps over the lazy dog\")\n"
    "  --batch N               other prompts in the batch (default 15); random ids, 3..90 tokens each\n"
    "  --position R            the prompt's row among the N + 1 prompts (default: random from --seed)\n"
    "  --seed S                seed of the other prompts and the position (default 0)\n"
    "  --batch-invariant on|off  off: linear layers on a batch-variant library GEMM (default on)\n"
    "  --json PATH             write the report (every op's comparison) as JSON\n"
    "  --dump DIR              write every captured tensor as raw .bin (alone/ and batch/) + index.json\n"
    "  --tp K                  run the model over K tensor-parallel ranks (--tp-invariant on|off as for\n"
    "                          generate) and capture rank 0's ops (its q/k/v, gate/up and attention\n"
    "                          outputs are its slices; the rest are whole)\n";

// One op's output for the target's rows, copied to a contiguous host tensor.
struct Capture {
  std::string name;  // "layers.3.q_proj", "embedding", ...
  std::string op;    // "q_proj"
  int64_t layer;
  Tensor host;
};

struct Comparison {
  int64_t numel = 0, differing = 0, first_index = -1;
  double max_abs = 0, max_rel = 0, first_alone = 0, first_batch = 0;
};

double value_at(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DType::F32: return t.ptr<float>()[i];
    case DType::BF16: return to_float(t.ptr<bf16>()[i]);
    case DType::F16: return to_float(t.ptr<f16>()[i]);
    default: return double(t.ptr<int32_t>()[i]);
  }
}

Comparison compare(const Tensor& a, const Tensor& b) {
  Comparison c;
  c.numel = a.numel();
  const int64_t es = dtype_size(a.dtype());
  const auto* pa = static_cast<const unsigned char*>(a.data());
  const auto* pb = static_cast<const unsigned char*>(b.data());
  if (c.numel == 0 || std::memcmp(pa, pb, size_t(c.numel * es)) == 0) return c;
  for (int64_t i = 0; i < c.numel; ++i) {
    if (std::memcmp(pa + i * es, pb + i * es, size_t(es)) == 0) continue;
    const double x = value_at(a, i), y = value_at(b, i);
    if (c.differing++ == 0) {
      c.first_index = i;
      c.first_alone = x;
      c.first_batch = y;
    }
    const double d = std::fabs(x - y);
    if (std::isnan(d)) {
      c.max_abs = c.max_rel = NAN;
      continue;
    }
    if (!std::isnan(c.max_abs)) c.max_abs = std::max(c.max_abs, d);
    if (!std::isnan(c.max_rel) && x != 0) c.max_rel = std::max(c.max_rel, d / std::fabs(x));
  }
  return c;
}

std::vector<int64_t> unravel(int64_t i, const Shape& shape) {
  std::vector<int64_t> idx(shape.size());
  for (size_t d = shape.size(); d-- > 0;) {
    idx[d] = shape[d] ? i % shape[d] : 0;
    i = shape[d] ? i / shape[d] : 0;
  }
  return idx;
}

std::string index_str(const std::vector<int64_t>& idx) {
  std::string s = "[";
  for (size_t i = 0; i < idx.size(); ++i) s += (i ? ", " : "") + std::to_string(idx[i]);
  return s + "]";
}

std::string shape_str(const Tensor& t) { return std::string(dtype_name(t.dtype())) + index_str(t.sizes()); }

// One prefill step of `prompts` (all rows of every prompt); captures the rows of prompts[target].
// Logits are computed for every row of the target and the last row of every other prompt.
// `tapped` is the model whose ops are captured: `model` itself, or rank 0's shard of a TpModel (whose
// row-parallel outputs, norms, residuals and logits are whole; its q/k/v, gate/up and attention outputs are
// rank 0's slices).
std::vector<Capture> run_step(ModelRunner& model, LlamaModel& tapped, const std::vector<std::vector<int32_t>>& prompts,
                              size_t target) {
  const int64_t bs = 16;
  StepBatch b;
  b.query_start_loc = {0};
  int64_t next_block = 0, row = 0, target_row = 0, target_logit = 0;
  for (size_t s = 0; s < prompts.size(); ++s) {
    const auto& p = prompts[s];
    const int64_t n = int64_t(p.size()), blocks = (n + bs - 1) / bs;
    std::vector<int32_t> table;
    for (int64_t k = 0; k < blocks; ++k) table.push_back(int32_t(next_block + k));
    if (s == target) {
      target_row = row;
      target_logit = int64_t(b.logit_rows.size());
    }
    for (int64_t t = 0; t < n; ++t) {
      b.token_ids.push_back(p[size_t(t)]);
      b.positions.push_back(int32_t(t));
      b.slot_mapping.push_back(int32_t(next_block * bs + t));
      if (s == target || t == n - 1) b.logit_rows.push_back(int32_t(row + t));
    }
    row += n;
    next_block += blocks;
    b.query_start_loc.push_back(int32_t(row));
    b.seq_lens.push_back(int32_t(n));
    b.block_tables.push_back(table);
  }
  const int64_t len = int64_t(prompts[target].size());
  std::vector<Capture> caps;
  tapped.set_tap([&](const char* op, int64_t layer, const TensorView& out) {
    const TensorView rows = out.narrow(0, std::string(op) == "lm_head" ? target_logit : target_row, len);
    Tensor host = Tensor::empty(rows.sizes(), rows.dtype);
    copy(host, rows);
    const std::string name = layer >= 0 ? "layers." + std::to_string(layer) + "." + op : std::string(op);
    caps.push_back({name, op, layer, host});
  });
  try {
    KvCache cache = model.make_cache(next_block + 1, bs);
    model.forward(b, cache);
    synchronize(model.device());
  } catch (...) {
    tapped.set_tap(nullptr);
    throw;
  }
  tapped.set_tap(nullptr);
  return caps;
}

void write_bin(const fs::path& file, const Tensor& t) {
  std::ofstream f(file, std::ios::binary);
  BIK_CHECK(f.good(), "bik bisect: cannot write ", file.string());
  f.write(static_cast<const char*>(t.data()), std::streamsize(t.numel() * dtype_size(t.dtype())));
}

int bisect(const std::vector<std::string>& argv) {
  Args a(argv, {},
         {"model", "dummy-weights", "weights-seed", "device", "prompt", "batch", "position", "seed",
          "batch-invariant", "json", "dump", "tp", "tp-invariant"},
         "bik bisect");
  BIK_CHECK(a.positional().empty(), "bik bisect: unexpected argument '",
            a.positional().empty() ? "" : a.positional()[0], "'");
  const long long n_other = a.integer("batch", 15);
  BIK_CHECK(n_other >= 0 && n_other <= 4096, "bik bisect: --batch must be in 0..4096, got ", n_other);
  const long long position = a.integer("position", -1);
  BIK_CHECK(!a.has("position") || (position >= 0 && position <= n_other), "bik bisect: --position must be in 0..",
            n_other, " (the batch holds ", n_other + 1, " prompts), got ", position);
  const uint64_t seed = uint64_t(a.integer("seed", 0));
  const bool invariant = batch_invariant_option(a, "bik bisect");
  const std::string prompt = a.str("prompt", "The quick brown fox jumps over the lazy dog");
  BIK_CHECK(!prompt.empty(), "bik bisect: --prompt is empty");

  const Device device = device_option(a, "bik bisect");

  const ModelChoice choice = model_option(a, "bik bisect");
  const std::string& path = choice.path;
  const LoadOptions& lo = choice.options;
  engine::Model loaded = load_model(path, lo);
  const std::optional<Tokenizer> tok = find_tokenizer(path);
  const TpChoice tp = tp_option(a, "bik bisect");
  std::unique_ptr<ModelRunner> runner = make_runner(loaded.config, loaded.weights, device, invariant, tp, "bik bisect");
  loaded.weights = Weights();
  ModelRunner& model = *runner;
  auto* tp_model = dynamic_cast<TpModel*>(runner.get());
  LlamaModel& tapped = tp_model ? tp_model->shard(0) : dynamic_cast<LlamaModel&>(model);
  const int64_t V = model.vocab_size();

  std::vector<int32_t> ids;
  if (tok)
    ids = tok->encode(prompt, /*allow_special=*/true, tok->add_bos_default());
  else
    for (unsigned char c : prompt) ids.push_back(int32_t(c) % int32_t(V));
  BIK_CHECK(!ids.empty(), "bik bisect: the prompt encodes to no tokens");
  const int64_t max_len = model.max_positions();
  BIK_CHECK(int64_t(ids.size()) <= max_len, "bik bisect: the prompt has ", ids.size(), " tokens; the model has ",
            max_len, " positions");

  // The batch: N other prompts of random ids and lengths, the target at `row`.
  std::mt19937_64 rng(seed);
  const size_t row = a.has("position") ? size_t(position)
                                       : size_t(std::uniform_int_distribution<long long>(0, n_other)(rng));
  std::uniform_int_distribution<int64_t> len_dist(3, std::max<int64_t>(3, std::min<int64_t>(90, max_len)));
  std::uniform_int_distribution<int32_t> id_dist(std::min<int32_t>(2, int32_t(V - 1)), int32_t(V - 1));
  std::vector<std::vector<int32_t>> batch;
  int64_t batch_rows = 0;
  for (long long i = 0; i <= n_other; ++i) {
    if (size_t(i) == row) {
      batch.push_back(ids);
    } else {
      std::vector<int32_t> p(size_t(std::min(len_dist(rng), max_len)));
      for (auto& t : p) t = id_dist(rng);
      batch.push_back(std::move(p));
    }
    batch_rows += int64_t(batch.back().size());
  }

  const std::vector<Capture> alone = run_step(model, tapped, {ids}, 0);
  const std::vector<Capture> inbatch = run_step(model, tapped, batch, row);
  BIK_CHECK(alone.size() == inbatch.size(), "bik bisect: the two runs captured ", alone.size(), " and ",
            inbatch.size(), " tensors");

  std::printf("bik bisect: %s%s on %s, batch-invariant %s%s\n", path.c_str(),
              lo.dummy_weights ? " (dummy weights)" : "", device.str().c_str(), invariant ? "on" : "off",
              tp_model ? (", --tp " + std::to_string(tp.size) + " (rank 0's ops)").c_str() : "");
  std::printf("target: %zu tokens, alone vs at row %zu of %lld prompts (%lld tokens in the batched step)\n",
              ids.size(), row, n_other + 1, (long long)batch_rows);

  nlohmann::json ops = nlohmann::json::array();
  std::optional<size_t> first;
  size_t n_diff = 0;
  std::vector<Comparison> comps;
  for (size_t i = 0; i < alone.size(); ++i) {
    const Capture &x = alone[i], &y = inbatch[i];
    BIK_CHECK(x.name == y.name && x.host.sizes() == y.host.sizes(), "bik bisect: op ", i, " is ", x.name, " ",
              shape_str(x.host), " alone but ", y.name, " ", shape_str(y.host), " in the batch");
    const Comparison c = compare(x.host, y.host);
    comps.push_back(c);
    if (c.differing > 0) {
      ++n_diff;
      if (!first) first = i;
    }
    nlohmann::json j = {{"name", x.name},         {"op", x.op},          {"layer", x.layer},
                        {"dtype", dtype_name(x.host.dtype())}, {"shape", x.host.sizes()}, {"numel", c.numel},
                        {"differing", c.differing}};
    if (c.differing > 0) {
      j["max_abs_diff"] = c.max_abs;
      j["max_rel_diff"] = c.max_rel;
      j["first_index"] = unravel(c.first_index, x.host.sizes());
      j["first_flat_index"] = c.first_index;
      j["first_alone"] = c.first_alone;
      j["first_batch"] = c.first_batch;
    }
    ops.push_back(j);
  }

  if (!first) {
    std::printf("no divergence: all %zu tensors (%lld layers) are bitwise identical\n", alone.size(),
                (long long)model.num_layers());
  } else {
    const Capture& x = alone[*first];
    const Comparison& c = comps[*first];
    std::printf("first divergence: %s (op %s, layer %lld), %s\n", x.name.c_str(), x.op.c_str(), (long long)x.layer,
                shape_str(x.host).c_str());
    std::printf("  %lld of %lld elements differ; max abs diff %.6g, max rel diff %.6g\n", (long long)c.differing,
                (long long)c.numel, c.max_abs, c.max_rel);
    std::printf("  first at %s (flat %lld): alone %.9g, batch %.9g\n",
                index_str(unravel(c.first_index, x.host.sizes())).c_str(), (long long)c.first_index, c.first_alone,
                c.first_batch);
    std::printf("%zu of %zu tensors differ; preceding op %s is identical\n", n_diff, alone.size(),
                *first ? alone[*first - 1].name.c_str() : "(none)");
  }

  if (a.has("json")) {
    nlohmann::json out;
    out["model"] = path;
    out["dummy_weights"] = lo.dummy_weights;
    out["device"] = device.str();
    out["batch_invariant"] = invariant;
    out["prompt"] = prompt;
    out["prompt_ids"] = ids;
    out["batch"] = n_other;
    out["position"] = row;
    out["seed"] = seed;
    out["batch_tokens"] = batch_rows;
    out["divergence"] = bool(first);
    out["first_divergence"] = first ? ops[*first] : nlohmann::json(nullptr);
    out["differing_tensors"] = n_diff;
    out["ops"] = ops;
    std::ofstream f(a.str("json"));
    BIK_CHECK(f.good(), "bik bisect: cannot write --json ", a.str("json"));
    f << out.dump(2) << "\n";
  }
  if (a.has("dump")) {
    const fs::path dir = a.str("dump");
    fs::create_directories(dir / "alone");
    fs::create_directories(dir / "batch");
    nlohmann::json index = nlohmann::json::array();
    for (size_t i = 0; i < alone.size(); ++i) {
      char prefix[16];
      std::snprintf(prefix, sizeof prefix, "%03zu_", i);
      const std::string file = prefix + alone[i].name + ".bin";
      write_bin(dir / "alone" / file, alone[i].host);
      write_bin(dir / "batch" / file, inbatch[i].host);
      nlohmann::json j = ops[i];
      j["alone"] = "alone/" + file;
      j["batch"] = "batch/" + file;
      index.push_back(j);
    }
    std::ofstream f(dir / "index.json");
    BIK_CHECK(f.good(), "bik bisect: cannot write ", (dir / "index.json").string());
    f << nlohmann::json{{"prompt_ids", ids}, {"position", row}, {"batch", n_other}, {"tensors", index}}.dump(2)
      << "\n";
  }
  return first ? 1 : 0;
}

}  // namespace

int cmd_bisect(const std::vector<std::string>& argv) { return run_command("bisect", kBisectUsage, argv, &bisect); }

}  // namespace bik::cli

// bik check kernels: the invariance harness (src/check/harness.h) from the command line.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "bik/device.h"
#include "bench_util.h"
#include "check/harness.h"
#include "cli.h"

namespace bik::cli {
namespace {

const char* kCheckUsage =
    "usage: bik check kernels [options]\n"
    "\n"
    "Runs every op on rows alone and inside batches of many sizes (random neighbours, strides, padding)\n"
    "and compares the bytes (memcmp); also run-to-run repeats, poisoned outputs and accuracy against a\n"
    "float64 reference. Exits 0 when everything passed, 1 on any failure (or when nothing ran), 2 on bad\n"
    "input or a missing backend.\n"
    "\n"
    "options:\n"
    "  --backend cpu|cuda   device to check (default cpu)\n"
    "  --cases N            comparisons in total, spread over the ops (default 100000)\n"
    "  --seed S             random seed (default 1); a failure names the seed and problem to replay\n"
    "  --ops a,b,...        ops or aliases (default: all). ops: %s\n"
    "                       aliases: %s\n"
    "  --variant NAME       GEMM under test: bik (default), openblas, splitk-by-m (negative controls,\n"
    "                       CPU only: they must FAIL)\n"
    "  --json PATH          write the full report as JSON\n"
    "  --per-mix            one table row per dtype mix as well\n";

void print_usage(FILE* f) {
  std::string ops, aliases;
  for (const auto& o : check::op_names()) ops += (ops.empty() ? "" : ",") + o;
  for (const auto& a : check::op_aliases()) aliases += (aliases.empty() ? "" : ",") + a.first;
  std::fprintf(f, kCheckUsage, ops.c_str(), aliases.c_str());
}

}  // namespace

static int check_kernels(const std::vector<std::string>& argv);

int cmd_check(const std::vector<std::string>& argv) {
  for (const auto& a : argv)
    if (a == "--help" || a == "-h") {
      print_usage(stdout);
      return 0;
    }
  try {
    return check_kernels(argv);
  } catch (const Error& e) {
    // Bad input: say what was wrong and exit 2 (1 means "the harness found a failure").
    const std::string what = e.what();
    std::fprintf(stderr, "%s%s\n", what.rfind("bik check", 0) == 0 ? "" : "bik check kernels: ", what.c_str());
    return 2;
  }
}

static int check_kernels(const std::vector<std::string>& argv) {
  Args args(argv, {"per-mix"}, {"backend", "cases", "seed", "ops", "variant", "json"}, "bik check kernels");
  const auto& pos = args.positional();
  if (pos.empty() || pos[0] != "kernels" || pos.size() > 1) {
    if (pos.empty() || pos[0] != "kernels")
      std::fprintf(stderr, "bik check: expected 'kernels'%s\n\n", pos.empty() ? "" : (", got '" + pos[0] + "'").c_str());
    else
      std::fprintf(stderr, "bik check kernels: unexpected argument '%s'\n\n", pos[1].c_str());
    print_usage(stderr);
    return 2;
  }

  check::CheckOptions opt;
  const std::string backend = args.str("backend", "cpu");
  if (backend == "cpu") {
    opt.device = Device::cpu();
  } else if (backend == "cuda") {
    if (!cuda_built()) {
      std::fprintf(stderr, "bik check: --backend cuda: this build of bik has no CUDA backend (reconfigure with nvcc)\n");
      return 2;
    }
    if (cuda_device_count() == 0) {
      std::fprintf(stderr, "bik check: --backend cuda: no CUDA device found (driver missing or no GPU visible)\n");
      return 2;
    }
    opt.device = Device::cuda(0);
  } else {
    throw Error("--backend must be cpu or cuda, got '" + backend + "'");
  }
  const long long cases = args.integer("cases", 100000);
  BIK_CHECK(cases > 0, "--cases must be > 0, got ", cases);
  opt.cases = cases;
  const long long seed = args.integer("seed", 1);
  opt.seed = uint64_t(seed);
  opt.ops = check::resolve_ops(split_list(args.str("ops")));  // throws on an unknown name
  opt.gemm_variant = args.str("variant", "bik");
  const check::GemmVariant variant = check::gemm_variant(opt.gemm_variant);  // throws listing the known ones
  if (opt.gemm_variant != "bik" && !opt.device.is_cpu())
    throw Error("--variant " + opt.gemm_variant + " runs on the CPU only (use --backend cpu)");

  const int64_t quota = std::max<int64_t>(1, opt.cases / int64_t(opt.ops.size()));
  std::fprintf(stderr, "bik check kernels: %s, %zu ops, %lld cases (%lld per op), seed %lld, gemm %s%s\n",
               backend.c_str(), opt.ops.size(), cases, (long long)quota, seed, variant.name.c_str(),
               variant.expect_invariant ? "" : " (a variant implementation: expected to FAIL)");

  // Progress on stderr: a line when an op starts and every few seconds while it runs.
  using Clock = std::chrono::steady_clock;
  auto last = Clock::now();
  std::string current;
  opt.progress = [&](const check::Progress& p) {
    const auto now = Clock::now();
    if (p.op != current) {
      current = p.op;
      last = now;
      std::fprintf(stderr, "[%d/%d] %s ...\n", p.op_index + 1, p.op_count, p.op.c_str());
    } else if (now - last > std::chrono::seconds(5)) {
      last = now;
      std::fprintf(stderr, "[%d/%d] %s: %lld / %lld cases\n", p.op_index + 1, p.op_count, p.op.c_str(),
                   (long long)p.cases, (long long)p.quota);
    }
  };

  const auto t0 = Clock::now();
  const std::vector<check::OpReport> reports = check::run_checks(opt);
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();

  std::fputs(check::format_table(reports, args.flag("per-mix")).c_str(), stdout);
  if (args.has("json")) {
    nlohmann::json j = check::report_json(reports);
    j["backend"] = backend;
    j["device"] = opt.device.is_cpu() ? cpu_props().name : cuda_device_props(0).name;
    j["seed"] = seed;
    j["variant"] = opt.gemm_variant;
    j["wall_seconds"] = seconds;
    j["commit"] = bench::commit_of("");
    j["date"] = bench::utc_now();
    std::ofstream f(args.str("json"));
    BIK_CHECK(f.good(), "cannot write --json ", args.str("json"));
    f << j.dump(2) << "\n";
  }

  int64_t total = 0, bad = 0, ran = 0;
  for (const auto& r : reports) {
    total += r.total.cases;
    bad += r.total.diffs + r.total.repeat_diffs;
    ran += r.status == check::Status::Pass;
  }
  const int code = check::exit_code(reports);
  if (code == 0)
    std::printf("PASS: %lld cases, 0 diffs, %.1f s\n", (long long)total, seconds);
  else if (ran == 0 && bad == 0 && std::none_of(reports.begin(), reports.end(), [](auto& r) { return r.failed(); }))
    std::printf("NOTHING RAN: every op was skipped (%.1f s)\n", seconds);
  else
    std::printf("FAIL: %lld cases, %lld diffs, %.1f s\n", (long long)total, (long long)bad, seconds);
  return code;
}

}  // namespace bik::cli

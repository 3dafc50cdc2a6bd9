// bik audit: determinism audit of an OpenAI-compatible endpoint (src/check/audit.h).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <string>
#include <vector>

#include "check/audit.h"
#include "cli.h"

namespace bik::cli {
namespace {

const char* kAuditUsage =
    "usage: bik audit --endpoint URL [options]\n"
    "\n"
    "Fires many identical requests at an OpenAI-compatible /v1/completions endpoint, concurrently and mixed\n"
    "with background requests of varied prompts and lengths, for several prompts that produce long outputs,\n"
    "greedy and with seeded sampling. PASS: one unique completion per prompt and mode, with bitwise-identical\n"
    "logprobs. Only the given URL is contacted.\n"
    "\n"
    "  --endpoint URL      the server, e.g. http://127.0.0.1:8000 (required)\n"
    "  --model M           the \"model\" of the requests (default: the first one the server lists)\n"
    "  --requests N        probe requests in total, split over prompts x modes (default 1000)\n"
    "  --concurrency C     requests in flight at once (default 64)\n"
    "  --prompts FILE      probe prompts, one per line (default: 4 built-in long-output prompts)\n"
    "  --max-tokens T      tokens per completion (default 256)\n"
    "  --timeout S         bound on the whole audit in seconds (default 600)\n"
    "  --background R      background requests per probe request (default 0.25)\n"
    "  --mode M            greedy, sampled or both (default both)\n"
    "  --temperature T     of the sampled mode (default 0.8); --seed S its seed (default 1234)\n"
    "  --json PATH         also write the report as JSON (- for stdout)\n"
    "\n"
    "exit status: 0 pass, 1 divergence, 2 usage or connection error.\n";

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream f(path);
  if (!f.good()) throw check::AuditError("cannot read --prompts " + path);
  std::vector<std::string> out;
  std::string line;
  while (std::getline(f, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty()) out.push_back(line);
  }
  if (out.empty()) throw check::AuditError("--prompts " + path + " holds no prompt");
  return out;
}

int audit(const std::vector<std::string>& argv) {
  Args a(argv, {},
         {"endpoint", "model", "requests", "concurrency", "prompts", "max-tokens", "timeout", "background", "mode",
          "temperature", "seed", "json"},
         "bik audit");
  BIK_CHECK(a.positional().empty(), "bik audit: unexpected argument '", a.positional().empty() ? "" : a.positional()[0], "'");
  BIK_CHECK(a.has("endpoint"), "bik audit: --endpoint URL is required (e.g. http://127.0.0.1:8000)");
  check::AuditOptions o;
  o.endpoint = a.str("endpoint");
  o.model = a.str("model");
  o.requests = a.integer("requests", 1000);
  o.concurrency = int(a.integer("concurrency", 64));
  o.max_tokens = int(a.integer("max-tokens", 256));
  o.timeout_s = a.number("timeout", 600);
  o.background_ratio = a.number("background", 0.25);
  o.temperature = float(a.number("temperature", 0.8));
  o.seed = uint64_t(a.integer("seed", 1234));
  const std::string mode = a.str("mode", "both");
  BIK_CHECK(mode == "both" || mode == "greedy" || mode == "sampled", "bik audit: --mode must be greedy, sampled or both, got '",
            mode, "'");
  o.greedy = mode != "sampled";
  o.sampled = mode != "greedy";
  BIK_CHECK(o.background_ratio >= 0, "bik audit: --background must be >= 0");
  if (a.has("prompts")) o.prompts = read_lines(a.str("prompts"));

  // Progress bar: redrawn in place on a terminal, a line every few seconds otherwise.
  const bool tty = isatty(2);
  std::mutex pm;
  auto last = std::chrono::steady_clock::now() - std::chrono::seconds(10);
  const auto t0 = std::chrono::steady_clock::now();
  o.progress = [&](int64_t done, int64_t total) {
    std::lock_guard<std::mutex> lk(pm);
    const auto now = std::chrono::steady_clock::now();
    if (done != total && now - last < (tty ? std::chrono::milliseconds(200) : std::chrono::milliseconds(5000))) return;
    last = now;
    const int width = 30, filled = int(width * done / std::max<int64_t>(total, 1));
    const double s = std::chrono::duration<double>(now - t0).count();
    std::fprintf(stderr, "%s[%s%s] %lld/%lld requests, %.1f s%s", tty ? "\r" : "", std::string(size_t(filled), '#').c_str(),
                 std::string(size_t(width - filled), '.').c_str(), (long long)done, (long long)total, s,
                 tty ? "" : "\n");
    if (tty && done == total) std::fputc('\n', stderr);
  };

  const check::AuditReport rep = check::run_audit(o);
  if (tty) std::fputc('\n', stderr);
  const std::string json_path = a.str("json");
  if (json_path == "-") {
    std::printf("%s\n", rep.to_json().dump(2).c_str());
    std::fputs(rep.text().c_str(), stderr);
  } else {
    std::fputs(rep.text().c_str(), stdout);
    if (!json_path.empty()) {
      std::ofstream f(json_path);
      if (!f.good()) throw check::AuditError("cannot write --json " + json_path);
      f << rep.to_json().dump(2) << "\n";
    }
  }
  return rep.pass() ? 0 : 1;
}

}  // namespace

int cmd_audit(const std::vector<std::string>& argv) { return run_command("audit", kAuditUsage, argv, &audit); }

}  // namespace bik::cli

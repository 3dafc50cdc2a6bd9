// bik: the command-line front end.
#include <cstdio>
#include <string>
#include <vector>

#include "bik/device.h"
#include "cli.h"

namespace {

const char* kUsage =
    "usage: bik <command> [options]\n"
    "\n"
    "commands:\n"
    "  check kernels   run the invariance harness over every op (see: bik check --help)\n"
    "  bench <what>    benchmarks (see: bik bench --help)\n"
    "  generate        run prompts through the batch-invariant engine (see: bik generate --help)\n"
    "  bisect          first op whose bits differ for a prompt alone vs in a batch (see: bik bisect --help)\n"
    "  serve           OpenAI-compatible HTTP server on the engine (see: bik serve --help)\n"
    "  audit           determinism audit of an OpenAI-compatible endpoint (see: bik audit --help)\n"
    "  info            build and device information\n";

}  // namespace

namespace bik::cli {

int cmd_serve(const std::vector<std::string>& args);  // tools/serve_cmd.cpp
int cmd_audit(const std::vector<std::string>& args);  // tools/audit_cmd.cpp

int cmd_info(const std::vector<std::string>& argv) {
  Args args(argv, {}, {}, "bik info");
  std::printf("bik %s\n", "0.1.0");
  std::printf("cuda backend: %s\n", cuda_built() ? "built" : "not built");
  int n = cuda_device_count();
  std::printf("cuda devices: %d\n", n);
  for (int i = 0; i < n; ++i) {
    DeviceProps p = cuda_device_props(i);
    std::printf("  cuda:%d %s sm_%d, %d SMs, %d KiB opt-in shared memory per block\n", i, p.name.c_str(), p.arch(),
                p.sm_count, p.smem_per_block_optin / 1024);
  }
  DeviceProps c = cpu_props();
  std::printf("cpu threads: %d\n", c.sm_count);
  return 0;
}

}  // namespace bik::cli

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::fputs(kUsage, args.empty() ? stderr : stdout);
    return args.empty() ? 2 : 0;
  }
  std::string cmd = args[0];
  std::vector<std::string> rest(args.begin() + 1, args.end());
  try {
    if (cmd == "check") return bik::cli::cmd_check(rest);
    if (cmd == "bench") return bik::cli::cmd_bench(rest);
    if (cmd == "info") return bik::cli::cmd_info(rest);
    if (cmd == "generate") return bik::cli::cmd_generate(rest);
    if (cmd == "bisect") return bik::cli::cmd_bisect(rest);
    if (cmd == "serve") return bik::cli::cmd_serve(rest);
    if (cmd == "audit") return bik::cli::cmd_audit(rest);
    std::fprintf(stderr, "bik: unknown command '%s'\n\n%s", cmd.c_str(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bik %s: error: %s\n", cmd.c_str(), e.what());
    return 2;
  }
}

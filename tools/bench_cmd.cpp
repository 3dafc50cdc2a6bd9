#include <cstdio>

#include "bench.h"
#include "cli.h"

namespace bik::cli {

int cmd_bench(const std::vector<std::string>& args) {
  const char* usage =
      "usage: bik bench <what> [options]\n"
      "  cpu-gemm   CPU matmul vs OpenBLAS sgemm (ratio table)\n"
      "  gemm       CUDA GEMM vs cuBLASLt (needs a GPU)\n"
      "  ops        CUDA norms, softmax, reductions, element-wise ops, sampling vs the copy ceiling\n"
      "  attention  CUDA paged attention: prefill TFLOP/s, decode GB/s of KV read (needs a GPU)\n"
      "  serve      engine serving workload (repeated prompt): tokens/s and unique completions, invariant on/off\n"
      "each accepts --help\n";
  if (args.empty() || args[0] == "--help") {
    std::fputs(usage, args.empty() ? stderr : stdout);
    return args.empty() ? 2 : 0;
  }
  std::vector<std::string> rest(args.begin() + 1, args.end());
  if (args[0] == "cpu-gemm") return bench_cpu_gemm(rest);
  if (args[0] == "gemm") return bench_gemm(rest);
  if (args[0] == "ops") return bench_ops(rest);
  if (args[0] == "attention") return bench_attention(rest);
  if (args[0] == "serve") return bench_serve(rest);
  std::fprintf(stderr, "bik bench: unknown benchmark '%s'\n%s", args[0].c_str(), usage);
  return 2;
}

}  // namespace bik::cli

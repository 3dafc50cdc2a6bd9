// Benchmark drivers behind `bik bench <what>`. Each writes JSON + a markdown table (+ a plot where
// the data has a curve) under --out (default bench/results/).
#pragma once
#include <string>
#include <vector>

namespace bik::cli {
int bench_cpu_gemm(const std::vector<std::string>& args);  // CPU matmul vs OpenBLAS
int bench_gemm(const std::vector<std::string>& args);      // CUDA GEMM vs cuBLASLt
int bench_ops(const std::vector<std::string>& args);       // CUDA memory-bound ops vs the copy ceiling
int bench_attention(const std::vector<std::string>& args); // paged attention: prefill TFLOP/s, decode GB/s
int bench_serve(const std::vector<std::string>& args);     // engine serving workload, batch-invariant on vs off
}  // namespace bik::cli

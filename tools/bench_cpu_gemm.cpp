// `bik bench cpu-gemm`: the CPU matmul (one in-order F32 FMA chain per output, batch invariant) against
// OpenBLAS sgemm (free to reorder its sums) on LLM-like shapes. OpenBLAS is the speed reference, not a
// target to match: the ratio bik/OpenBLAS says what the invariance contract costs on this CPU.
#include <cblas.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench.h"
#include "bench_util.h"
#include "bik/ops.h"
#include "cli.h"
#include "cpu/parallel.h"

namespace bik::cpu {
void gemm_force_avx2(bool on);  // src/cpu/gemm.cpp: AVX2 micro-kernels even where AVX-512 exists
}  // namespace bik::cpu

namespace bik::cli {
namespace {

using bench::shell_line;
using bench::utc_now;

const char* kUsage =
    "usage: bik bench cpu-gemm [options]\n"
    "  out[M, N] = a[M, K] * w[N, K]^T in F32: bik::mm vs OpenBLAS cblas_sgemm\n"
    "options:\n"
    "  --m LIST         batch sizes M (default 1,8,32,128,512)\n"
    "  --nk LIST        weight shapes NxK (default 1024x1024,4096x1024,1024x4096)\n"
    "  --dtype T        bik input dtype: f32, f16, bf16 (default f32; OpenBLAS always runs f32)\n"
    "  --kernels K      bik micro-kernels: auto (AVX-512 where available) or avx2 (default auto)\n"
    "  --threads N      threads for both libraries (default: all cores)\n"
    "  --repeats N      timed repeats per shape; the median is reported (default 5)\n"
    "  --min-ms X       each repeat loops the call until it lasts at least X ms (default 20)\n"
    "  --out DIR        where the default result files go (default bench/results)\n"
    "  --host NAME      host kind used in the default file names (default: from the CPU model)\n"
    "  --json PATH      JSON results (default DIR/cpu_gemm_<host>.json)\n"
    "  --md PATH        markdown table (default DIR/cpu_gemm_<host>.md)\n";

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("model name", 0) == 0) {
      auto c = line.find(':');
      std::string v = c == std::string::npos ? "" : line.substr(c + 1);
      v.erase(0, v.find_first_not_of(" \t"));
      return v;
    }
  return "unknown";
}

// "AMD EPYC" with 2 cores -> "amd_epyc_2c".
std::string host_kind(const std::string& model, int cores) {
  std::string s;
  for (char ch : model) {
    if (std::isalnum(static_cast<unsigned char>(ch)))
      s += char(std::tolower(static_cast<unsigned char>(ch)));
    else if (!s.empty() && s.back() != '_')
      s += '_';
  }
  while (!s.empty() && s.back() == '_') s.pop_back();
  if (s.empty()) s = "cpu";
  return s + "_" + std::to_string(cores) + "c";
}

// Seconds per call: median over `repeats` timed repeats, each looping the call until it lasts at least
// min_ms (the loop count is picked once, after a warm-up).
template <class Fn>
double time_call(Fn&& fn, int repeats, double min_ms) {
  using clock = std::chrono::steady_clock;
  fn();  // warm-up: page faults, thread pool start, caches
  auto t0 = clock::now();
  fn();
  double one = std::chrono::duration<double>(clock::now() - t0).count();
  int iters = std::max(1, int(std::ceil(min_ms * 1e-3 / std::max(one, 1e-9))));
  std::vector<double> per_call;
  for (int r = 0; r < repeats; ++r) {
    auto s = clock::now();
    for (int i = 0; i < iters; ++i) fn();
    per_call.push_back(std::chrono::duration<double>(clock::now() - s).count() / iters);
  }
  std::sort(per_call.begin(), per_call.end());
  return per_call[per_call.size() / 2];
}

// Share of all cores' time spent idle over one second, from /proc/stat (-1 if unreadable).
double idle_percent_over_one_second() {
  auto sample = [](uint64_t& idle, uint64_t& total) {
    std::ifstream f("/proc/stat");
    std::string cpu;
    f >> cpu;
    idle = total = 0;
    uint64_t v;
    for (int i = 0; i < 8 && (f >> v); ++i) {
      total += v;
      if (i == 3 || i == 4) idle += v;  // idle, iowait
    }
    return cpu == "cpu" && total > 0;
  };
  uint64_t i0, t0, i1, t1;
  if (!sample(i0, t0)) return -1;
  std::this_thread::sleep_for(std::chrono::seconds(1));
  if (!sample(i1, t1) || t1 <= t0) return -1;
  return 100.0 * double(i1 - i0) / double(t1 - t0);
}

void write_text(const std::string& path, const std::string& text) {
  std::filesystem::path p(path);
  if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path());
  std::ofstream f(path);
  BIK_CHECK(f.good(), "bik bench cpu-gemm: cannot write ", path);
  f << text;
}

struct Row {
  int64_t m, n, k;
  double bik_s, blas_s, max_rel_diff;
};

}  // namespace

int bench_cpu_gemm(const std::vector<std::string>& argv) {
  Args args(argv, {"help"},
            {"m", "nk", "dtype", "kernels", "threads", "repeats", "min-ms", "out", "host", "json", "md"},
            "bik bench cpu-gemm");
  if (args.flag("help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  BIK_CHECK(args.positional().empty(), "bik bench cpu-gemm: unexpected argument '", args.positional()[0], "'\n",
            kUsage);
  std::vector<int64_t> ms;
  for (auto& s : split_list(args.str("m", "1,8,32,128,512")))
    ms.push_back(positive_integer(s, "bik bench cpu-gemm: --m"));
  std::vector<std::pair<int64_t, int64_t>> nks;
  for (auto& s : split_list(args.str("nk", "1024x1024,4096x1024,1024x4096"))) {
    long long n = 0, k = 0;
    char tail = 0;
    BIK_CHECK(std::sscanf(s.c_str(), "%lldx%lld%c", &n, &k, &tail) == 2 && n > 0 && k > 0,
              "bik bench cpu-gemm: --nk expects NxK items such as 4096x1024, got '", s, "'");
    nks.emplace_back(n, k);
  }
  const DType dtype = parse_dtype(args.str("dtype", "f32"));
  BIK_CHECK(is_floating(dtype), "bik bench cpu-gemm: --dtype must be f32, f16 or bf16");
  const int threads = int(args.integer("threads", 0));
  BIK_CHECK(threads >= 0, "bik bench cpu-gemm: --threads must be >= 0");
  const int repeats = int(args.integer("repeats", 5));
  BIK_CHECK(repeats >= 1, "bik bench cpu-gemm: --repeats must be >= 1");
  const double min_ms = args.number("min-ms", 20);

  const std::string kernels_opt = args.str("kernels", "auto");
  BIK_CHECK(kernels_opt == "auto" || kernels_opt == "avx2", "bik bench cpu-gemm: --kernels must be auto or avx2, got '",
            kernels_opt, "'");
  cpu::gemm_force_avx2(kernels_opt == "avx2");
  const char* kernels = kernels_opt == "auto" && __builtin_cpu_supports("avx512f") ? "avx512f" : "avx2";
  cpu::set_num_threads(threads);
  const int used_threads = cpu::num_threads();
  openblas_set_num_threads(used_threads);
  const std::string model = cpu_model();
  const std::string host = args.str("host", host_kind(model, int(std::thread::hardware_concurrency())));
  const std::string out_dir = args.str("out", "bench/results");
  const std::string json_path = args.str("json", out_dir + "/cpu_gemm_" + host + ".json");
  const std::string md_path = args.str("md", out_dir + "/cpu_gemm_" + host + ".md");

  // Other processes on the machine skew the numbers: the load average (lagging) and the share of CPU time
  // left idle over the second before the run are recorded with them.
  const std::string load_at_start = [] {
    std::ifstream f("/proc/loadavg");
    std::string a, b, c;
    f >> a >> b >> c;
    return a + " " + b + " " + c;
  }();
  const double idle_pct_at_start = idle_percent_over_one_second();
  std::mt19937_64 rng(1);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<Row> rows;
  const size_t total = nks.size() * ms.size();
  for (auto [n, k] : nks) {
    std::vector<float> w(size_t(n * k));
    for (auto& x : w) x = u(rng);
    Tensor wt = Tensor::empty({n, k}, dtype);
    for (int64_t i = 0; i < n * k; ++i) {
      if (dtype == DType::F32)
        wt.ptr<float>()[i] = w[size_t(i)];
      else if (dtype == DType::F16)
        wt.ptr<f16>()[i] = to_f16(w[size_t(i)]), w[size_t(i)] = to_float(wt.ptr<f16>()[i]);
      else
        wt.ptr<bf16>()[i] = to_bf16(w[size_t(i)]), w[size_t(i)] = to_float(wt.ptr<bf16>()[i]);
    }
    for (int64_t m : ms) {
      std::fprintf(stderr, "[%zu/%zu] M=%lld N=%lld K=%lld ...\n", rows.size() + 1, total, (long long)m, (long long)n,
                   (long long)k);
      std::vector<float> a(size_t(m * k)), c(size_t(m * n));
      for (auto& x : a) x = u(rng);
      Tensor at = Tensor::empty({m, k}, dtype), ot = Tensor::empty({m, n}, DType::F32);
      for (int64_t i = 0; i < m * k; ++i) {
        if (dtype == DType::F32)
          at.ptr<float>()[i] = a[size_t(i)];
        else if (dtype == DType::F16)
          at.ptr<f16>()[i] = to_f16(a[size_t(i)]), a[size_t(i)] = to_float(at.ptr<f16>()[i]);
        else
          at.ptr<bf16>()[i] = to_bf16(a[size_t(i)]), a[size_t(i)] = to_float(at.ptr<bf16>()[i]);
      }
      Row r{m, n, k, 0, 0, 0};
      // OpenBLAS's worker threads keep spinning for a while after each call; timed right after it, bik's
      // own threads would share the cores with them. So bik runs first, after a pause that lets them sleep.
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      r.bik_s = time_call([&] { mm(ot, at, wt); }, repeats, min_ms);
      r.blas_s = time_call(
          [&] {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(m), int(n), int(k), 1.0f, a.data(), int(k),
                        w.data(), int(k), 0.0f, c.data(), int(n));
          },
          repeats, min_ms);
      // Sanity: both compute the same product (to rounding), relative to the largest |value|.
      double scale = 1e-30, diff = 0;
      for (int64_t i = 0; i < m * n; ++i) {
        scale = std::max(scale, double(std::fabs(c[size_t(i)])));
        diff = std::max(diff, double(std::fabs(ot.ptr<float>()[i] - c[size_t(i)])));
      }
      r.max_rel_diff = diff / scale;
      rows.push_back(r);
    }
  }

  // Table (stdout), markdown and JSON.
  auto gflops = [](const Row& r, double s) { return 2.0 * double(r.m) * double(r.n) * double(r.k) / s * 1e-9; };
  std::ostringstream md;
  md << "# CPU GEMM: bik vs OpenBLAS sgemm\n\n"
     << "out[M, N] = a[M, K] * w[N, K]^T, bik input " << dtype_name(dtype) << ", F32 out; OpenBLAS "
     << "cblas_sgemm in F32. Host: " << model << ", " << used_threads << " thread(s); median of " << repeats
     << " repeats; bik kernels " << kernels << "; before the run: load average " << load_at_start << ", CPU idle "
     << int(idle_pct_at_start + 0.5) << "%.\n\n"
     << "| M | N | K | bik GFLOP/s | OpenBLAS GFLOP/s | bik/OpenBLAS |\n|---:|---:|---:|---:|---:|---:|\n";
  std::printf("%6s %6s %6s %12s %16s %13s\n", "M", "N", "K", "bik GFLOP/s", "OpenBLAS GFLOP/s", "bik/OpenBLAS");
  nlohmann::json results = nlohmann::json::array();
  for (const Row& r : rows) {
    const double gb = gflops(r, r.bik_s), go = gflops(r, r.blas_s), ratio = gb / go;
    std::printf("%6lld %6lld %6lld %12.1f %16.1f %13.2f\n", (long long)r.m, (long long)r.n, (long long)r.k, gb, go,
                ratio);
    char line[160];
    std::snprintf(line, sizeof line, "| %lld | %lld | %lld | %.1f | %.1f | %.2f |\n", (long long)r.m, (long long)r.n,
                  (long long)r.k, gb, go, ratio);
    md << line;
    results.push_back({{"m", r.m},
                       {"n", r.n},
                       {"k", r.k},
                       {"bik_seconds", r.bik_s},
                       {"openblas_seconds", r.blas_s},
                       {"bik_gflops", gb},
                       {"openblas_gflops", go},
                       {"ratio_bik_over_openblas", ratio},
                       {"max_rel_diff", r.max_rel_diff}});
  }
  const std::string commit = [] {
    std::string c = shell_line("git rev-parse HEAD 2>/dev/null");
    return c.empty() ? std::string("unknown") : c;
  }();
  // Tracked files modified since that commit ("M path" lines); only meaningful when the commit is known.
  const bool git_dirty =
      commit != "unknown" && !shell_line("git status --porcelain --untracked-files=no 2>/dev/null").empty();
  nlohmann::json j = {
      {"benchmark", "cpu-gemm"},
      {"host", {{"kind", host}, {"cpu_model", model}, {"hardware_threads", std::thread::hardware_concurrency()}}},
      {"threads", used_threads},
      {"bik_kernels", kernels},
      {"loadavg_at_start", load_at_start},
      {"idle_percent_before_run", idle_pct_at_start},
      {"git_dirty", git_dirty},
      {"dtype", dtype_name(dtype)},
      {"repeats", repeats},
      {"min_ms_per_repeat", min_ms},
      {"openblas_config", openblas_get_config()},
      {"git_commit", commit},
      {"date_utc", utc_now()},
      {"results", results}};
  write_text(json_path, j.dump(2) + "\n");
  md << "\nbik: " << commit << (git_dirty ? " (with uncommitted changes)" : "") << ", " << utc_now() << ", "
     << openblas_get_config() << ".\n";
  write_text(md_path, md.str());
  std::fprintf(stderr, "wrote %s and %s\n", json_path.c_str(), md_path.c_str());
  return 0;
}

}  // namespace bik::cli

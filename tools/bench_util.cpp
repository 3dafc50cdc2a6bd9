#include "bench_util.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <ctime>

#include "bik/device.h"
#include "bik/error.h"
#if BIK_WITH_CUDA
#include "cuda/check.cuh"
#endif

namespace bik::cli::bench {

std::string shell_line(const char* cmd) {
  std::string out;
  if (FILE* f = popen(cmd, "r")) {
    char buf[256];
    while (std::fgets(buf, sizeof buf, f)) out += buf;
    pclose(f);
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

std::string commit_of(const std::string& given) {
  if (!given.empty()) return given;
  if (const char* env = std::getenv("BIK_COMMIT"); env && *env) return env;  // a copy of the tree without .git
  std::string c = shell_line("git rev-parse HEAD 2>/dev/null");
  if (c.empty()) return "unknown";
  if (!shell_line("git status --porcelain --untracked-files=no 2>/dev/null").empty()) c += "-dirty";
  return c;
}

std::string name_tag(const std::string& name) {
  std::string tag = name;
  for (auto& c : tag) c = std::isalnum(static_cast<unsigned char>(c)) ? char(std::tolower(c)) : '_';
  return tag;
}

double median(std::vector<float> v) {
  BIK_CHECK(!v.empty(), "median of no timings");
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

nlohmann::json gpu_report(const std::string& benchmark, const DeviceProps& props, const std::string& commit,
                          const std::string& date) {
  nlohmann::json j;
  j["benchmark"] = benchmark;
  j["gpu"] = props.name;
  j["arch"] = props.arch();
  j["sms"] = props.sm_count;
  j["l2_bytes"] = props.l2_bytes;
  j["commit"] = commit;
  j["date"] = date;
  return j;
}

bool have_cuda_device(const char* command) {
  if (cuda_device_count() > 0) return true;
  std::fprintf(stderr, "%s: no CUDA device\n", command);
  return false;
}

#if BIK_WITH_CUDA
void recover_stream(cudaStream_t st) {
  cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(st, &cap) == cudaSuccess && cap != cudaStreamCaptureStatusNone) {
    cudaGraph_t partial = nullptr;
    cudaStreamEndCapture(st, &partial);
    if (partial) cudaGraphDestroy(partial);
  }
  cudaGetLastError();
}

namespace {

// Event-timed repeats of `body`, each covering `launches` calls; returns the median per call.
double timed(const std::function<void()>& body, int launches, int repeats, cudaStream_t st) {
  cudaEvent_t e0, e1;
  BIK_CUDA_CHECK(cudaEventCreate(&e0));
  BIK_CUDA_CHECK(cudaEventCreate(&e1));
  std::vector<float> ms;
  for (int r = 0; r < repeats; ++r) {
    BIK_CUDA_CHECK(cudaEventRecord(e0, st));
    body();
    BIK_CUDA_CHECK(cudaEventRecord(e1, st));
    BIK_CUDA_CHECK(cudaEventSynchronize(e1));
    float t = 0;
    BIK_CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
    ms.push_back(t / float(launches));
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return median(ms);
}

void warm_up(const std::function<void(int, cudaStream_t)>& launch, int sets, cudaStream_t st) {
  for (int i = 0; i < std::max(3, sets); ++i) launch(i % sets, st);  // module load, plans, caches
  BIK_CUDA_CHECK(cudaStreamSynchronize(st));
}

}  // namespace

double time_graph(const std::function<void(int set, cudaStream_t)>& launch, int sets, int launches, int repeats,
                  cudaStream_t st, bool* captured) {
  if (captured) *captured = false;
  warm_up(launch, sets, st);
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  try {
    BIK_CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < launches; ++i) launch(i % sets, st);
    BIK_CUDA_CHECK(cudaStreamEndCapture(st, &graph));
    BIK_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    BIK_CUDA_CHECK(cudaGraphLaunch(exec, st));  // one untimed replay
  } catch (const Error& e) {
    std::fprintf(stderr, "bench: graph capture failed (%s); timing plain launches\n", e.what());
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
    recover_stream(st);
    return time_loop(launch, sets, launches, repeats, st);
  }
  const double t = timed([&] { BIK_CUDA_CHECK(cudaGraphLaunch(exec, st)); }, launches, repeats, st);
  if (captured) *captured = true;
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  return t;
}

double time_loop(const std::function<void(int set, cudaStream_t)>& launch, int sets, int launches, int repeats,
                 cudaStream_t st) {
  warm_up(launch, sets, st);
  return timed(
      [&] {
        for (int i = 0; i < launches; ++i) launch(i % sets, st);
      },
      launches, repeats, st);
}
#endif

}  // namespace bik::cli::bench

#include "bench_util.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <dlfcn.h>

#include <chrono>
#include <thread>

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

double check_sustain_seconds(double seconds, const char* command) {
  BIK_CHECK(seconds >= 0 && seconds <= 60, command, ": --sustain ", seconds, ": expected 0..60 seconds");
  return seconds;
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

// The few NVML entry points the sustained timing reads, from the driver's library loaded at run time (no
// link-time dependency: a machine without the driver, or without a GPU, still runs every other benchmark).
// The declarations follow NVML's C ABI: int status codes (0: success), opaque device handles.
class Nvml {
 public:
  static Nvml& get() {
    static Nvml n;
    return n;
  }
  bool ok() const { return dev_ != nullptr; }
  // The total energy the GPU has used since the driver loaded, in mJ; false on failure.
  bool energy_mj(unsigned long long& mj) const { return ok() && energy_(dev_, &mj) == 0; }
  bool sm_mhz(unsigned& mhz) const { return ok() && clock_(dev_, 1 /* NVML_CLOCK_SM */, &mhz) == 0; }

 private:
  using Device = void*;
  Nvml() {
    void* lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) return;
    auto init = reinterpret_cast<int (*)()>(dlsym(lib, "nvmlInit_v2"));
    auto by_bus = reinterpret_cast<int (*)(const char*, Device*)>(dlsym(lib, "nvmlDeviceGetHandleByPciBusId_v2"));
    energy_ = reinterpret_cast<int (*)(Device, unsigned long long*)>(dlsym(lib, "nvmlDeviceGetTotalEnergyConsumption"));
    clock_ = reinterpret_cast<int (*)(Device, int, unsigned*)>(dlsym(lib, "nvmlDeviceGetClockInfo"));
    char bus[32] = {};
    int cur = 0;
    if (init == nullptr || by_bus == nullptr || energy_ == nullptr || clock_ == nullptr || init() != 0 ||
        cudaGetDevice(&cur) != cudaSuccess || cudaDeviceGetPCIBusId(bus, sizeof bus, cur) != cudaSuccess)
      return;
    Device d = nullptr;
    unsigned long long probe = 0;
    if (by_bus(bus, &d) == 0 && energy_(d, &probe) == 0) dev_ = d;
  }
  Device dev_ = nullptr;
  int (*energy_)(Device, unsigned long long*) = nullptr;
  int (*clock_)(Device, int, unsigned*) = nullptr;
};

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

GpuMeter::~GpuMeter() {
  running_ = false;
  if (sampler_.joinable()) sampler_.join();
}

void GpuMeter::start() {
  running_ = false;  // a meter started again begins a new stretch
  if (sampler_.joinable()) sampler_.join();
  const Nvml& nvml = Nvml::get();
  have_e0_ = nvml.energy_mj(e0_);
  mhz_sum_ = 0;
  mhz_n_ = 0;
  t0_ = std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  if (!have_e0_) return;
  running_ = true;
  sampler_ = std::thread([this, &nvml] {
    while (running_) {
      unsigned mhz = 0;
      if (nvml.sm_mhz(mhz)) mhz_sum_ += mhz, ++mhz_n_;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
}

bool GpuMeter::stop(Reading& out) {
  running_ = false;
  if (sampler_.joinable()) sampler_.join();
  unsigned long long e1 = 0;
  const double t1 = std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  if (!have_e0_ || !Nvml::get().energy_mj(e1) || e1 < e0_ || mhz_n_ == 0) return false;
  out.joules = double(e1 - e0_) * 1e-3;
  out.seconds = t1 - t0_;
  out.mean_sm_mhz = mhz_sum_ / mhz_n_;
  return true;
}

Sustained sustain_graph(const std::function<void(int set, cudaStream_t)>& launch, int sets, int launches,
                        double warm, double seconds, cudaStream_t st) {
  warm_up(launch, sets, st);
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  BIK_CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < launches; ++i) launch(i % sets, st);
  BIK_CUDA_CHECK(cudaStreamEndCapture(st, &graph));
  BIK_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  // Replays per chunk: about 20 ms of work, so the host stays ahead and closes the window close to `seconds`.
  cudaEvent_t a, b;
  BIK_CUDA_CHECK(cudaEventCreate(&a));
  BIK_CUDA_CHECK(cudaEventCreate(&b));
  BIK_CUDA_CHECK(cudaEventRecord(a, st));
  BIK_CUDA_CHECK(cudaGraphLaunch(exec, st));
  BIK_CUDA_CHECK(cudaEventRecord(b, st));
  BIK_CUDA_CHECK(cudaEventSynchronize(b));
  float one = 0;
  BIK_CUDA_CHECK(cudaEventElapsedTime(&one, a, b));
  const int per_chunk = std::max(1, int(20.0 / std::max(one, 1e-3f)));
  // Chunks go in two ahead of the one the host waits for, so the GPU never idles between them.
  std::vector<cudaEvent_t> ring(3);
  for (auto& e : ring) BIK_CUDA_CHECK(cudaEventCreate(&e));
  int64_t issued = 0, done = 0;
  auto issue = [&] {
    for (int r = 0; r < per_chunk; ++r) BIK_CUDA_CHECK(cudaGraphLaunch(exec, st));
    BIK_CUDA_CHECK(cudaEventRecord(ring[size_t(issued % 3)], st));
    ++issued;
  };
  auto wait_one = [&] {
    BIK_CUDA_CHECK(cudaEventSynchronize(ring[size_t(done % 3)]));
    ++done;
  };
  issue();
  issue();
  const auto t0 = std::chrono::steady_clock::now();
  while (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < warm) {
    wait_one();
    issue();
  }
  // The window opens as the chunk waited for completes (two more are queued behind it): its time and
  // energy count from there, its calls from the next chunk on.
  wait_one();
  issue();
  GpuMeter meter;
  meter.start();
  const int64_t first = done;
  const auto w0 = std::chrono::steady_clock::now();
  while (std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count() < seconds) {
    wait_one();
    issue();
  }
  // The window closes as the last chunk waited for completes: the energy counter is read there.
  wait_one();
  GpuMeter::Reading r;
  const bool have_energy = meter.stop(r);
  const auto w1 = std::chrono::steady_clock::now();
  const int64_t chunks = done - first;
  BIK_CUDA_CHECK(cudaStreamSynchronize(st));
  const double wall_s = std::chrono::duration<double>(w1 - w0).count();
  const double calls = double(chunks) * per_chunk * launches;
  Sustained out;
  out.ms = wall_s * 1e3 / calls;
  if (have_energy && r.joules > 0) {
    out.energy = true;
    out.mj = r.joules * 1e3 / calls;
    out.watts = r.joules / r.seconds;
    out.sm_mhz = r.mean_sm_mhz;
  }
  for (auto& e : ring) cudaEventDestroy(e);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  return out;
}

std::string sustain_method(const std::string& what, double seconds) {
  char secs[32];
  std::snprintf(secs, sizeof secs, "%g", seconds);
  return what + " back to back for " + secs +
         " s after half as long of the same; time per call from the host clock between chunk completions, "
         "energy per call from NVML's total-energy counter, mean power, mean SM clock of samples every 50 ms";
}

nlohmann::json to_json(const Sustained& s) {
  nlohmann::json o = {{"ms", s.ms}, {"energy", s.energy}};
  if (s.energy) o.update({{"mj", s.mj}, {"watts", s.watts}, {"sm_mhz", s.sm_mhz}});
  return o;
}

std::string describe(const Sustained& s) {
  char line[160];
  if (s.energy)
    std::snprintf(line, sizeof line, "%.2f us %.3f mJ %.0f W %.0f MHz", s.ms * 1e3, s.mj, s.watts, s.sm_mhz);
  else
    std::snprintf(line, sizeof line, "%.2f us (no NVML energy reading)", s.ms * 1e3);
  return line;
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

// What every benchmark driver needs: provenance (commit, date, device tag) and, on CUDA, event-timed
// medians of repeated launches.
#pragma once
#include <atomic>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "bik/device.h"

#if BIK_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace bik::cli::bench {

std::string shell_line(const char* cmd);  // stdout of a shell command, trailing newlines dropped
std::string utc_now();                    // e.g. "2026-11-25T16:10:09Z"
// `given` when not empty; else $BIK_COMMIT when set; else `git rev-parse HEAD`, with "-dirty" when tracked files differ from it;
// else "unknown".
std::string commit_of(const std::string& given);
// A device name as a file-name tag: "NVIDIA H100 80GB HBM3" -> "nvidia_h100_80gb_hbm3".
std::string name_tag(const std::string& name);
double median(std::vector<float> v);
// False (after saying so on stderr, prefixed by `command`) when the machine has no CUDA device.
bool have_cuda_device(const char* command);
// A bench command's --sustain S (seconds a side runs back to back, 0: none): checked to be 0..60, else an
// error naming `command` and S. Returns S.
double check_sustain_seconds(double seconds, const char* command);
// The head of a GPU benchmark's JSON: benchmark name, GPU name, arch, SM count, L2 size, commit, date.
nlohmann::json gpu_report(const std::string& benchmark, const DeviceProps& props, const std::string& commit,
                          const std::string& date);

#if BIK_WITH_CUDA
// Median time of one launch in ms. launch(set, stream) runs one call on input set `set` (of `sets`, used
// round-robin so the inputs can exceed the L2). After max(3, sets) warm-up calls, `launches` calls are
// captured into a CUDA graph that is replayed `repeats` times between events; if the calls cannot be
// captured, plain launches are timed instead (host gaps included), with a message on stderr; `captured`,
// when given, says which.
double time_graph(const std::function<void(int set, cudaStream_t)>& launch, int sets, int launches, int repeats,
                  cudaStream_t st, bool* captured = nullptr);
// Under sustained load, as in serving, a GPU runs at its power limit and lowers its clock, so a kernel's
// energy, not only its time at full clock, sets how fast a stream of work goes. sustain_graph captures
// `launches` calls (sets round-robin) into a graph and replays it back to back, queued ahead, for `warm`
// seconds and then `seconds` more, over which it reports the time per call (the host clock between the
// completions of the window's first and last chunks of replays) and, through a GpuMeter over the window
// (`energy` false where NVML cannot be read), the energy per call, the mean power and the mean SM clock.
struct Sustained {
  double ms = 0;         // per call
  bool energy = false;   // whether the three below were measured
  double mj = 0;         // per call
  double watts = 0;      // mean over the window
  double sm_mhz = 0;     // mean of the samples
};
Sustained sustain_graph(const std::function<void(int set, cudaStream_t)>& launch, int sets, int launches,
                        double warm, double seconds, cudaStream_t st);
// A benchmark JSON's "sustain_method": `what` (e.g. "each side's calls") back to back for `seconds`, and how
// sustain_graph reads the window.
std::string sustain_method(const std::string& what, double seconds);
// A Sustained as JSON ({ms, energy} and, where measured, {mj, watts, sm_mhz}) and as one line of text
// ("12.34 us 5.678 mJ 690 W 1800 MHz", or the time and "(no NVML energy reading)").
nlohmann::json to_json(const Sustained& s);
std::string describe(const Sustained& s);
// The current GPU's energy and SM clock over a stretch of host time, through NVML (loaded at run time, as
// for sustain_graph): start() reads the total-energy counter and samples the SM clock every 50 ms on a
// thread until stop(). stop() returns false, with nothing measured, where NVML cannot be loaded or read
// (no driver library, a CPU-only machine).
class GpuMeter {
 public:
  struct Reading {
    double joules = 0, seconds = 0, mean_sm_mhz = 0;
  };
  GpuMeter() = default;
  GpuMeter(const GpuMeter&) = delete;
  GpuMeter& operator=(const GpuMeter&) = delete;
  ~GpuMeter();
  void start();
  bool stop(Reading& out);

 private:
  std::thread sampler_;
  std::atomic<bool> running_{false};
  unsigned long long e0_ = 0;
  bool have_e0_ = false;
  double mhz_sum_ = 0;
  int mhz_n_ = 0;
  double t0_ = 0;
};

// After a failed case: ends a capture the failure left open on `st` and clears the sticky error, so the
// next case starts clean.
void recover_stream(cudaStream_t st);
// The same without a graph: `launches` plain calls between events (for calls that synchronise inside).
double time_loop(const std::function<void(int set, cudaStream_t)>& launch, int sets, int launches, int repeats,
                 cudaStream_t st);
#endif

}  // namespace bik::cli::bench

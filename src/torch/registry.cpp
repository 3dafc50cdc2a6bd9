// Turning the mode on and off, the counters and the loud fallback; the "bik" op namespace that
// python/bik/torch.py calls through torch.ops.
//
// On: one torch::Library of kind IMPL for "aten" per dispatch key (CPU, and CUDA in a CUDA build) holds
// the extension's kernels; the dispatcher then prefers them over the stock kernels of that key. For ops
// that torch implements as CompositeImplicitAutograd (rms_norm, scaled_dot_product_attention), a kernel at
// the backend key also takes precedence over the decomposition. Off: the libraries are destroyed, which
// removes the kernels and restores the stock ones.
#include <array>
#include <atomic>
#include <memory>
#include <mutex>
#include <sstream>
#include <vector>

#include "torch/common.h"

namespace bik::torch_ext {
namespace {

constexpr int kOps = static_cast<int>(Op::count);
std::array<std::atomic<int64_t>, kOps> g_bik_calls{};
std::array<std::atomic<int64_t>, kOps> g_stock_calls{};
std::array<std::atomic<bool>, kOps> g_warned{};

std::mutex g_mode_mutex;
bool g_enabled = false;
// Never destroyed at exit: the dispatcher may be gone by then. Cleared by disable.
auto* g_libraries = new std::vector<std::unique_ptr<torch::Library>>();

bool set_enabled(bool on) {
  std::lock_guard<std::mutex> lock(g_mode_mutex);
  const bool previous = g_enabled;
  if (on == previous) return previous;
  if (on) {
    auto cpu = std::make_unique<torch::Library>(torch::Library::IMPL, "aten", c10::DispatchKey::CPU, __FILE__,
                                                __LINE__);
    register_cpu(*cpu);
    g_libraries->push_back(std::move(cpu));
#ifdef BIK_TORCH_CUDA
    auto cuda = std::make_unique<torch::Library>(torch::Library::IMPL, "aten", c10::DispatchKey::CUDA, __FILE__,
                                                 __LINE__);
    register_cuda(*cuda);
    g_libraries->push_back(std::move(cuda));
#endif
  } else {
    g_libraries->clear();
  }
  g_enabled = on;
  return previous;
}

bool is_enabled() {
  std::lock_guard<std::mutex> lock(g_mode_mutex);
  return g_enabled;
}

// One line per op: "<aten name> <calls on bik> <calls on the stock kernel>".
std::string counters() {
  std::ostringstream os;
  for (int i = 0; i < kOps; ++i) os << kOpNames[i] << ' ' << g_bik_calls[i].load() << ' ' << g_stock_calls[i].load() << '\n';
  return os.str();
}

void reset_counters() {
  for (int i = 0; i < kOps; ++i) {
    g_bik_calls[i] = 0;
    g_stock_calls[i] = 0;
  }
}

void reset_fallback_warnings() {
  for (auto& w : g_warned) w = false;
}

bool has_cuda() {
#ifdef BIK_TORCH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

void count_bik(Op op) { ++g_bik_calls[static_cast<int>(op)]; }
void count_stock(Op op) { ++g_stock_calls[static_cast<int>(op)]; }

void warn_fallback(Op op, const std::string& why) {
  if (g_warned[static_cast<int>(op)].exchange(true)) return;
  TORCH_WARN("bik batch-invariant mode: aten::", kOpNames[static_cast<int>(op)],
             " fell back to the stock torch kernel, which is NOT batch-invariant (", why,
             "). Warned once per op.");
}

}  // namespace bik::torch_ext

TORCH_LIBRARY(bik, m) {
  using namespace bik::torch_ext;
  m.def("_set_enabled(bool enabled) -> bool", &set_enabled);
  m.def("_is_enabled() -> bool", &is_enabled);
  m.def("_counters() -> str", &counters);
  m.def("_reset_counters() -> ()", &reset_counters);
  m.def("_reset_fallback_warnings() -> ()", &reset_fallback_warnings);
  m.def("_has_cuda() -> bool", &has_cuda);
}

#include "engine/tp.h"

#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <mutex>

#include "bik/error.h"

namespace bik::engine {

// Checks shared by the transports: out is [size, ...in] in F32, both contiguous, on the rank's device.
void check_all_gather(const TpComm& c, const TensorView& out, const TensorView& in) {
  BIK_CHECK(in.dtype == DType::F32 && out.dtype == DType::F32, "tp all_gather: F32 buffers expected, got in ",
            in.str(), ", out ", out.str());
  BIK_CHECK(in.is_contiguous() && out.is_contiguous(), "tp all_gather: buffers must be contiguous, got in ", in.str(),
            ", out ", out.str());
  BIK_CHECK(out.numel() == in.numel() * c.size(), "tp all_gather: out ", out.str(), " must hold ", c.size(),
            " x the ", in.numel(), " elements of in");
  BIK_CHECK(in.device == c.device() && out.device == c.device(), "tp all_gather: rank ", c.rank(), " works on ",
            c.device().str(), ", got in ", in.str(), ", out ", out.str());
}

std::chrono::milliseconds HostBarrier::default_timeout() {
  const char* e = std::getenv("BIK_TP_TIMEOUT_S");
  if (e && *e) {
    char* end = nullptr;
    const double s = std::strtod(e, &end);
    BIK_CHECK(end && *end == '\0' && s > 0, "tp: BIK_TP_TIMEOUT_S must be a positive number of seconds, got '", e,
              "'");
    return std::chrono::milliseconds(int64_t(s * 1000.0));
  }
  return std::chrono::seconds(600);
}

void HostBarrier::wait() {
  std::unique_lock<std::mutex> lock(mu_);
  BIK_CHECK(!aborted_, "tp: another rank failed");
  const uint64_t gen = generation_;
  if (++arrived_ == size_) {
    arrived_ = 0;
    ++generation_;
    cv_.notify_all();
    return;
  }
  if (!cv_.wait_for(lock, timeout_, [&] { return generation_ != gen || aborted_; })) {
    const int arrived = arrived_;
    aborted_ = true;
    cv_.notify_all();
    throw Error(detail::concat("tp: a rank waited ", double(timeout_.count()) / 1000.0, " s at collective ", gen,
                               " for the other ranks (", arrived, " of ", size_,
                               " had arrived); giving up (BIK_TP_TIMEOUT_S sets the limit, BIK_TP_TRACE=1 "
                               "traces each rank's collectives)"));
  }
  BIK_CHECK(!aborted_, "tp: another rank failed");
}

void HostBarrier::abort() {
  std::lock_guard<std::mutex> lock(mu_);
  aborted_ = true;
  cv_.notify_all();
}

namespace {

struct ThreadGroup {
  explicit ThreadGroup(int n) : size(n), sync(n), inputs(size_t(n), nullptr) {}
  const int size;
  std::mutex turn;  // held by the one rank that computes
  HostBarrier sync;
  std::vector<const void*> inputs;
};

class ThreadComm final : public TpComm {
 public:
  ThreadComm(std::shared_ptr<ThreadGroup> g, int rank, Device device) : g_(std::move(g)), rank_(rank), device_(device) {}
  int rank() const override { return rank_; }
  int size() const override { return g_->size; }
  Device device() const override { return device_; }

  void enter() override {
    g_->turn.lock();
    holding_ = true;
  }
  void leave() override {
    if (holding_) g_->turn.unlock();
    holding_ = false;
  }

  void barrier() override {
    leave();  // the others may compute while this rank waits
    g_->sync.wait();
    enter();
  }

  void all_gather(const TensorView& out, const TensorView& in) override {
    check_all_gather(*this, out, in);
    const int64_t bytes = in.numel() * 4;
    g_->inputs[size_t(rank_)] = in.data;
    barrier();  // every rank's input is published
    for (int r = 0; r < g_->size; ++r)
      memcpy_bytes(static_cast<char*>(out.data) + r * bytes, device_, g_->inputs[size_t(r)], device_, bytes);
    barrier();  // nobody overwrites its input before every rank has read it
  }

  void abort() override { g_->sync.abort(); }

 private:
  std::shared_ptr<ThreadGroup> g_;
  int rank_;
  Device device_;
  bool holding_ = false;
};

}  // namespace

std::vector<std::unique_ptr<TpComm>> make_thread_comms(int size, Device device) {
  BIK_CHECK(size >= 1, "tp: the number of ranks must be >= 1, got ", size);
  auto g = std::make_shared<ThreadGroup>(size);
  std::vector<std::unique_ptr<TpComm>> comms;
  for (int r = 0; r < size; ++r) comms.push_back(std::make_unique<ThreadComm>(g, r, device));
  return comms;
}

}  // namespace bik::engine

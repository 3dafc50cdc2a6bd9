// Tensor parallelism: the communicator between the ranks of one model.
//
// A rank holds a slice of every layer (docs/engine.md, "Tensor parallelism"); the only data exchanged
// is an all-gather of F32 partial sums, which moves bytes without adding them, so it is exact whatever
// algorithm, protocol or channel count the transport picks. Every rank then adds the gathered partials
// itself in one fixed order (bik::sum_partials), so no floating-point sum ever depends on the transport.
//
// Two transports:
//  - threads: the ranks are threads of one process sharing memory (any device). One rank computes at a
//    time: a rank hands the turn over while it waits in a collective. This is what `--tp K --device cpu`
//    runs, and how a single machine emulates K ranks to test the math.
//  - NCCL: one rank per GPU (devices 0..K-1), one thread per GPU in one process, ncclAllGather on a
//    stream of its own ordered after the default stream the ops run on. NVLink SHARP (NVLS) is switched
//    off before the communicators are created (NCCL_NVLS_ENABLE=0).
#pragma once
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "bik/tensor.h"

namespace bik::engine {

class TpComm {
 public:
  virtual ~TpComm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // The device this rank's tensors live on.
  virtual Device device() const = 0;
  // enter() is called by the thread that runs this rank's work before it starts (NCCL: makes the rank's
  // GPU current; threads: waits for the turn), leave() when it is done.
  virtual void enter() {}
  virtual void leave() {}
  // out (F32, contiguous, [size, ...]) receives every rank's `in` (F32, contiguous, the same number of
  // elements on every rank) in rank order. Every rank must call it, in the same order of collectives.
  virtual void all_gather(const TensorView& out, const TensorView& in) = 0;
  virtual void barrier() = 0;
  // After a failure on one rank: releases the others from any collective they wait in (they throw).
  virtual void abort() = 0;
};

// A host barrier of a fixed number of threads; abort() releases every waiter (wait() then throws) and
// makes every later wait() throw. A wait longer than `timeout` aborts the barrier and throws, naming how
// many ranks had arrived: a rank that never comes (stuck, or gone without abort) ends in an error, not a
// hang. The default timeout is $BIK_TP_TIMEOUT_S seconds, else 600.
class HostBarrier {
 public:
  explicit HostBarrier(int size, std::chrono::milliseconds timeout = default_timeout())
      : size_(size), timeout_(timeout) {}
  void wait();
  void abort();
  static std::chrono::milliseconds default_timeout();

 private:
  const int size_;
  const std::chrono::milliseconds timeout_;
  std::mutex mu_;
  std::condition_variable cv_;
  int arrived_ = 0;
  uint64_t generation_ = 0;
  bool aborted_ = false;
};

// `size` ranks as threads of one process; every rank's tensors on `device`.
std::vector<std::unique_ptr<TpComm>> make_thread_comms(int size, Device device = Device::cpu());

// True when this build can create NCCL communicators.
bool nccl_built();
// One NCCL rank per GPU, rank r on cuda:r. Throws when the build has no NCCL or fewer than `size` GPUs.
std::vector<std::unique_ptr<TpComm>> make_nccl_comms(int size);

}  // namespace bik::engine

// CUDA graphs: a sequence of ops launched on a stream, recorded once and replayed with one launch (no
// per-kernel launch cost on the host). Replays run the recorded kernels with the recorded arguments: the
// same pointers and launch shapes, whatever the data behind the pointers now holds.
#pragma once
#include "bik/ops.h"
#include "bik/tensor.h"

namespace bik {

// A stream of its own on a CUDA device (non-blocking: nothing orders it with the default stream but the
// two joins below), so it can be recorded while everything else keeps using the default stream.
class CudaStream {
 public:
  explicit CudaStream(Device device);  // throws on a CPU device or a build without CUDA
  ~CudaStream();
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  Stream stream() const { return Stream{handle_}; }
  Device device() const { return device_; }
  void wait_for_default() const;  // work queued here from now on runs after the default stream's so far
  void default_waits() const;     // work queued on the default stream from now on runs after this one's

 private:
  void* handle_ = nullptr;
  void* to_here_ = nullptr;  // events
  void* to_default_ = nullptr;
  Device device_;
};

// begin_capture(s); the calling thread's ops on s (recorded, not run); end_capture(s); then launch(s)
// replays them. Ops in a capture must not wait for the device or touch the default stream (the CUDA
// runtime refuses, and end_capture throws naming the error).
class CudaGraph {
 public:
  CudaGraph() = default;
  ~CudaGraph();
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;
  void begin_capture(Stream s);
  void end_capture(Stream s);  // instantiates the recorded graph
  void launch(Stream s) const;
  bool ready() const { return exec_ != nullptr; }

 private:
  void* graph_ = nullptr;
  void* exec_ = nullptr;
};

}  // namespace bik

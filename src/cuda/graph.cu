#include "bik/graph.h"

#include <cuda_runtime.h>

#include "cuda/check.cuh"

namespace bik {

CudaStream::CudaStream(Device device) : device_(device) {
  BIK_CHECK(device.is_cuda(), "CudaStream: needs a CUDA device, got ", device.str());
  int previous = 0;
  BIK_CUDA_CHECK(cudaGetDevice(&previous));
  BIK_CUDA_CHECK(cudaSetDevice(device.index));
  cudaStream_t s = nullptr;
  cudaEvent_t a = nullptr, b = nullptr;
  cudaError_t e = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
  if (e == cudaSuccess) e = cudaEventCreateWithFlags(&a, cudaEventDisableTiming);
  if (e == cudaSuccess) e = cudaEventCreateWithFlags(&b, cudaEventDisableTiming);
  cudaSetDevice(previous);
  handle_ = s;
  to_here_ = a;
  to_default_ = b;
  if (e != cudaSuccess) {
    this->~CudaStream();
    BIK_CUDA_CHECK(e);
  }
}

CudaStream::~CudaStream() {
  if (to_here_) cudaEventDestroy(static_cast<cudaEvent_t>(to_here_));
  if (to_default_) cudaEventDestroy(static_cast<cudaEvent_t>(to_default_));
  if (handle_) cudaStreamDestroy(static_cast<cudaStream_t>(handle_));
  to_here_ = to_default_ = handle_ = nullptr;
}

void CudaStream::wait_for_default() const {
  BIK_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(to_here_), nullptr));
  BIK_CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(handle_), static_cast<cudaEvent_t>(to_here_), 0));
}

void CudaStream::default_waits() const {
  BIK_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(to_default_), static_cast<cudaStream_t>(handle_)));
  BIK_CUDA_CHECK(cudaStreamWaitEvent(nullptr, static_cast<cudaEvent_t>(to_default_), 0));
}

CudaGraph::~CudaGraph() {
  if (exec_) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));
  if (graph_) cudaGraphDestroy(static_cast<cudaGraph_t>(graph_));
}

void CudaGraph::begin_capture(Stream s) {
  BIK_CHECK(graph_ == nullptr && exec_ == nullptr, "CudaGraph: already captured");
  BIK_CHECK(s.handle != nullptr, "CudaGraph: the default stream cannot be captured; use a CudaStream");
  // Thread-local: only this thread's calls are checked, so other threads (other models, the server) go on.
  BIK_CUDA_CHECK(cudaStreamBeginCapture(static_cast<cudaStream_t>(s.handle), cudaStreamCaptureModeThreadLocal));
}

void CudaGraph::end_capture(Stream s) {
  cudaGraph_t g = nullptr;
  const cudaError_t e = cudaStreamEndCapture(static_cast<cudaStream_t>(s.handle), &g);
  if (e != cudaSuccess) {
    cudaGetLastError();
    if (g) cudaGraphDestroy(g);
    throw Error(std::string("CudaGraph: the capture failed: ") + cudaGetErrorString(e) +
                " (an op waited for the device or used the default stream while recording)");
  }
  graph_ = g;
  cudaGraphExec_t x = nullptr;
  const cudaError_t ie = cudaGraphInstantiate(&x, g, 0);
  if (ie != cudaSuccess) {
    cudaGetLastError();
    throw Error(std::string("CudaGraph: instantiating the recorded graph failed: ") + cudaGetErrorString(ie));
  }
  exec_ = x;
}

void CudaGraph::launch(Stream s) const {
  BIK_CHECK(exec_ != nullptr, "CudaGraph: launch before a capture");
  BIK_CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec_), static_cast<cudaStream_t>(s.handle)));
}

}  // namespace bik

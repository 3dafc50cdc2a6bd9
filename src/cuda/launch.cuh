// Kernel launches that may overlap the end of the kernel before them on the stream (programmatic dependent
// launch, sm_90 and later).
//
// A kernel launched through launch_kernel on a device where it applies is launched as soon as every CTA of
// its predecessor on the stream has exited (or called griddepcontrol.launch_dependents, which none of this
// library's kernels does), without waiting for the predecessor's completion (its memory flush) and the
// launch latency after it; its CTAs then run until pdl_wait, which returns once the
// predecessor has completed and its memory operations are visible. So such a kernel must call pdl_wait
// before it touches global memory a predecessor may write or read (its outputs, its inputs, scratch); what
// it does before (shared-memory setup, barrier init) overlaps that hand-over. Only the schedule changes:
// every load and store happens after the predecessor finished, as without the attribute, so no bit of any
// output changes (tests/gpu/test_pdl_cuda.cpp compares a chain of ops both ways).
//
// No kernel calls griddepcontrol.launch_dependents to let its successor in earlier: tried at every kernel's
// start, it made serving slower (on an H200 the on mode 19193 tok/s against 20280 without it and 19435 with
// plain launches; logs_h200/83b54a3_pdl_release_*). A successor released that way has its CTAs placed on
// whatever SMs free up while the kernel still runs: the norm after a GEMM packed onto the few SMs the GEMM
// left free, a GEMM's CTAs (cluster pairs too) starting as a norm's CTAs drained
// (logs_h200/c5326fd_pdl_trace_*).
// Launched at the predecessor's exit, a grid finds every SM free.
//
// The instruction exists from sm_90 on; compiled for an older architecture pdl_wait is nothing, and the
// host never sets the attribute for a kernel whose loaded image lacks it (an sm_80 image JIT-run on a newer
// device included). BIK_PDL=0 in the environment (read at each launch) launches every kernel plainly.
#pragma once
#include <cuda_runtime.h>

#include <utility>

#include "cuda/check.cuh"
#include "cuda/device_info.h"

namespace bik::cuda {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// The launch attribute of a programmatic launch, for callers that build their own configuration.
inline cudaLaunchAttribute programmatic_attribute() {
  cudaLaunchAttribute a = {};
  a.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  a.val.programmaticStreamSerializationAllowed = 1;
  return a;
}

// kernel<<<grid, block, smem, st>>>(args...), programmatic where programmatic_launch says so.
template <typename... P, typename... A>
void launch_kernel(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t st, A&&... args) {
  cudaLaunchAttribute attr[1] = {programmatic_attribute()};
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = st;
  if (programmatic_launch(reinterpret_cast<const void*>(kernel))) {
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    count_programmatic_launch();
  }
  BIK_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<A>(args)...));
}

}  // namespace bik::cuda

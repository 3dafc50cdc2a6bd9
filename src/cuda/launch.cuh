// Kernel launches that may overlap the end of the kernel before them on the stream (programmatic dependent
// launch, sm_90 and later).
//
// A kernel launched through launch_kernel on a device where it applies may start while its predecessor on
// the stream still runs: once every CTA of the predecessor has called pdl_release (or exited), the
// kernel's CTAs are placed as resources free up, and they run until pdl_wait, which returns once the
// predecessor has completed and its memory operations are visible. So a kernel launched this way must
// call pdl_wait before it touches global memory a predecessor may write or read (its outputs, its inputs,
// scratch); what it does before (shared-memory setup, barrier init, L2 prefetches of operands that only
// warm the cache) overlaps the predecessor's tail and the launch latency. Only the schedule changes: every
// load and store of the kernel happens after its predecessor finished, as without the attribute, so no bit
// of any output changes (tests/gpu/test_pdl_cuda.cpp compares a chain of ops both ways).
//
// pdl_release lets the successor's CTAs be placed; it is called first thing by every kernel launched
// here: a successor waits in pdl_wait for the whole grid anyway, and placing it only when this grid's
// last CTAs are resident cannot starve them. The instructions exist from sm_90 on; compiled for an older
// architecture both are nothing, and the host never sets the attribute for a kernel whose loaded image
// lacks them (an sm_80 image JIT-run on a newer device included).
//
// BIK_PDL=0 in the environment (read at each launch) launches every kernel plainly, for A/B timing.
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

#ifndef BIK_PDL_RELEASE_AT_START
#define BIK_PDL_RELEASE_AT_START 1
#endif
__device__ __forceinline__ void pdl_release() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && BIK_PDL_RELEASE_AT_START
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// The first statement of a kernel launched through launch_kernel that has nothing to do before it waits.
__device__ __forceinline__ void pdl_enter() {
  pdl_release();
  pdl_wait();
}

// The launch attribute of a programmatic launch, for callers that build their own configuration.
inline cudaLaunchAttribute programmatic_attribute() {
  cudaLaunchAttribute a = {};
  a.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  a.val.programmaticStreamSerializationAllowed = 1;
  return a;
}

// kernel<<<grid, block, smem, st>>>(args...), programmatic if `programmatic` (which the caller has taken
// from programmatic_launch: a kernel without pdl_wait in its image must never be launched so).
template <typename... P, typename... A>
void launch_kernel_if(bool programmatic, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t st,
                      A&&... args) {
  cudaLaunchAttribute attr[1] = {programmatic_attribute()};
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = st;
  if (programmatic) {
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    count_programmatic_launch();
  }
  BIK_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<A>(args)...));
}

// kernel<<<grid, block, smem, st>>>(args...), programmatic where programmatic_launch says so.
template <typename... P, typename... A>
void launch_kernel(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t st, A&&... args) {
  launch_kernel_if(programmatic_launch(reinterpret_cast<const void*>(kernel)), kernel, grid, block, smem, st,
                   std::forward<A>(args)...);
}

}  // namespace bik::cuda

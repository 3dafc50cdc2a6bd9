// Hopper (sm_90a) synchronisation primitives shared by the wgmma GEMM and the wgmma attention kernels:
// CTA-scope mbarriers, the async-proxy fence, and the wgmma fence / commit / wait group. One definition
// each; gemm_detail::sm90 and attn::sm90 bring them in with using-declarations. Variants with other
// semantics (cluster-scope arrives, cp.async arrives, the row copies' barriers in rows.cuh) stay beside
// their callers under their own names.
#pragma once
#include <cstdint>

namespace bik::cuda::sm90_sync {

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)  // wgmma exists only in the sm_90a pass
// mbarriers in this CTA's shared memory (shared::cta addresses): the arrive releases, the wait acquires.
__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// Returns once the phase of parity `parity` has completed (a fresh barrier counts as having completed
// the phase of parity 1).
__device__ __forceinline__ void mbar_wait(uint32_t bar, int parity) {
  asm volatile(
      "{\n.reg .pred done;\n"
      "WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT;\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// One arrive that also announces `bytes` of copy-engine transactions for the current phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, int bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// Makes this thread's completed generic-proxy accesses of shared memory visible to (ordered before) the
// async proxy, which is where wgmma reads its shared-memory operands and the copy engine writes.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving register reads or writes across the asynchronous wgmma window.
template <int R>
__device__ __forceinline__ void pin(float (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
template <int R>
__device__ __forceinline__ void pin(uint32_t (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+r"(d[i])::"memory");
}
#endif

}  // namespace bik::cuda::sm90_sync

// Per-device facts the CUDA kernels choose their launch configuration from, cached once per device, and
// the one-time opt-in to large dynamic shared memory per kernel.
#pragma once
#include <cstdint>

namespace bik::cuda {

struct DeviceInfo {
  int index = 0;
  int arch = 0;        // compute capability x10
  int sms = 0;         // multiprocessors
  int smem_optin = 0;  // opt-in shared memory per block, bytes
  int l2_bytes = 0;    // L2 cache size, bytes
};
// Makes device `index` current and returns its (cached) facts.
const DeviceInfo& use_device(int index);

// cudaFuncSetAttribute(MaxDynamicSharedMemorySize) once per (kernel, device).
void allow_dynamic_smem(const void* kernel, int device, int bytes);

// Whether the image of `kernel` that device `device` loads was compiled for compute capability `arch` x10
// or later, from PTX of that version or later: kernels whose body exists only in those passes (sm_90
// copies, wgmma) would otherwise run empty from an older architecture's PTX, JIT-compiled. False when the
// build has no image the device can load. Cached per (kernel, device).
bool kernel_built_for(const void* kernel, int device, int arch);

// Whether a launch of `kernel` on the current device takes the programmatic attribute (launch.cuh):
// BIK_PDL (read at each call) is not "0" and the image the device loads for it was compiled for sm_90 or
// later.
bool programmatic_launch(const void* kernel);

// Launches so far that took the attribute (the tests check that the path they compare really ran).
uint64_t programmatic_launches();
void count_programmatic_launch();

}  // namespace bik::cuda

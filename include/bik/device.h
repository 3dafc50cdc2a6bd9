// What the library knows about a device: enough to pick kernel configurations.
#pragma once
#include <string>

namespace bik {

struct DeviceProps {
  std::string name;
  int cc_major = 0, cc_minor = 0;   // compute capability (0.0 for the CPU)
  int sm_count = 0;                 // multiprocessors (logical cores for the CPU)
  int smem_per_block_optin = 0;     // opt-in shared memory per block, bytes
  int smem_per_sm = 0;              // shared memory per multiprocessor, bytes
  long long global_mem = 0;         // bytes
  int l2_bytes = 0;
  int arch() const { return cc_major * 10 + cc_minor; }  // 80, 86, 89, 90
};

bool cuda_built();          // true when the library was compiled with the CUDA backend
int cuda_device_count();    // 0 when not built with CUDA or no device/driver
DeviceProps cuda_device_props(int index);  // throws bik::Error naming the index when absent
DeviceProps cpu_props();

}  // namespace bik

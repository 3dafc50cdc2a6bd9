// Linked instead of src/cuda/ when the library is built without the CUDA toolkit.
#include "bik/device.h"
#include "bik/error.h"
#include "core/backend.h"
#include "core/memory.h"

namespace bik {
namespace {
[[noreturn]] void no_cuda(const char* what) {
  throw Error(std::string(what) + ": this build of bik has no CUDA backend (configure on a machine with nvcc)");
}
}  // namespace

bool cuda_built() { return false; }
int cuda_device_count() { return 0; }
DeviceProps cuda_device_props(int index) {
  throw Error("cuda_device_props(" + std::to_string(index) + "): this build of bik has no CUDA backend");
}

namespace cuda {
void* malloc_bytes(int, int64_t) { no_cuda("cuda allocation"); }
void free_bytes(int, void*) {}
void memcpy_bytes(void*, const void*, int64_t, int) { no_cuda("cuda copy"); }
void memset_bytes(void*, uint8_t, int64_t) { no_cuda("cuda memset"); }
void synchronize(int) { no_cuda("cuda synchronize"); }

}  // namespace cuda
}  // namespace bik

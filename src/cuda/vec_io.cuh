// 16-byte global stores for the kernels' staged epilogues and row copies. A uint4 assigned through a cast
// pointer, with its four words from an inline-asm shared load, was compiled to four 4-byte stores in some
// instantiations (the sm_90 GEMM's 64- and 128-column tiles, the sm_90 attention's output rows, the
// embedding gather's rows): four times the store instructions and partial-sector writes. The same 16 bytes
// to the same address, as one instruction. The caller guarantees 16-byte alignment, as the cast pointer's
// type did.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace bik::cuda {

__device__ __forceinline__ void st_global_16(void* dst, const uint4& v) {
  asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"l"(dst), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
               : "memory");
}

}  // namespace bik::cuda

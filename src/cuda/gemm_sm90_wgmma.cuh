// wgmma.mma_async m64nNk16 with F32 accumulate, both operands K-major in shared memory (descriptors),
// for every N that is a multiple of 16 up to 256 and both 16-bit input types.
// One function per instruction shape: the accumulator registers have to be spelled out one by one in
// the inline PTX, so the macros below spell them (BIK_WGMMA_REGS_R: "%0, ..., %R-1"; BIK_WGMMA_D_R: the
// R "+f" operands) and BIK_WGMMA_SS writes the bf16 and f16 specialisations of one width from them.
// The scale-d operand is always 1: accumulators start at zero and every instruction adds to them, as
// mma.sync does, so a K step never depends on being the first one of a tile.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

// The first R accumulator registers as PTX operands, R a multiple of 8 up to 128.
#define BIK_WGMMA_REGS_8 "%0, %1, %2, %3, %4, %5, %6, %7"
#define BIK_WGMMA_REGS_16 BIK_WGMMA_REGS_8 ", %8, %9, %10, %11, %12, %13, %14, %15"
#define BIK_WGMMA_REGS_24 BIK_WGMMA_REGS_16 ", %16, %17, %18, %19, %20, %21, %22, %23"
#define BIK_WGMMA_REGS_32 BIK_WGMMA_REGS_24 ", %24, %25, %26, %27, %28, %29, %30, %31"
#define BIK_WGMMA_REGS_40 BIK_WGMMA_REGS_32 ", %32, %33, %34, %35, %36, %37, %38, %39"
#define BIK_WGMMA_REGS_48 BIK_WGMMA_REGS_40 ", %40, %41, %42, %43, %44, %45, %46, %47"
#define BIK_WGMMA_REGS_56 BIK_WGMMA_REGS_48 ", %48, %49, %50, %51, %52, %53, %54, %55"
#define BIK_WGMMA_REGS_64 BIK_WGMMA_REGS_56 ", %56, %57, %58, %59, %60, %61, %62, %63"
#define BIK_WGMMA_REGS_72 BIK_WGMMA_REGS_64 ", %64, %65, %66, %67, %68, %69, %70, %71"
#define BIK_WGMMA_REGS_80 BIK_WGMMA_REGS_72 ", %72, %73, %74, %75, %76, %77, %78, %79"
#define BIK_WGMMA_REGS_88 BIK_WGMMA_REGS_80 ", %80, %81, %82, %83, %84, %85, %86, %87"
#define BIK_WGMMA_REGS_96 BIK_WGMMA_REGS_88 ", %88, %89, %90, %91, %92, %93, %94, %95"
#define BIK_WGMMA_REGS_104 BIK_WGMMA_REGS_96 ", %96, %97, %98, %99, %100, %101, %102, %103"
#define BIK_WGMMA_REGS_112 BIK_WGMMA_REGS_104 ", %104, %105, %106, %107, %108, %109, %110, %111"
#define BIK_WGMMA_REGS_120 BIK_WGMMA_REGS_112 ", %112, %113, %114, %115, %116, %117, %118, %119"
#define BIK_WGMMA_REGS_128 BIK_WGMMA_REGS_120 ", %120, %121, %122, %123, %124, %125, %126, %127"

// The matching "+f" operands d[0 .. R) (the other arguments of an asm statement are numbered after them).
#define BIK_WGMMA_D8(i)                                                                                     \
  "+f"(d[(i)]), "+f"(d[(i) + 1]), "+f"(d[(i) + 2]), "+f"(d[(i) + 3]), "+f"(d[(i) + 4]), "+f"(d[(i) + 5]), \
      "+f"(d[(i) + 6]), "+f"(d[(i) + 7])
#define BIK_WGMMA_D_8 BIK_WGMMA_D8(0)
#define BIK_WGMMA_D_16 BIK_WGMMA_D_8, BIK_WGMMA_D8(8)
#define BIK_WGMMA_D_24 BIK_WGMMA_D_16, BIK_WGMMA_D8(16)
#define BIK_WGMMA_D_32 BIK_WGMMA_D_24, BIK_WGMMA_D8(24)
#define BIK_WGMMA_D_40 BIK_WGMMA_D_32, BIK_WGMMA_D8(32)
#define BIK_WGMMA_D_48 BIK_WGMMA_D_40, BIK_WGMMA_D8(40)
#define BIK_WGMMA_D_56 BIK_WGMMA_D_48, BIK_WGMMA_D8(48)
#define BIK_WGMMA_D_64 BIK_WGMMA_D_56, BIK_WGMMA_D8(56)
#define BIK_WGMMA_D_72 BIK_WGMMA_D_64, BIK_WGMMA_D8(64)
#define BIK_WGMMA_D_80 BIK_WGMMA_D_72, BIK_WGMMA_D8(72)
#define BIK_WGMMA_D_88 BIK_WGMMA_D_80, BIK_WGMMA_D8(80)
#define BIK_WGMMA_D_96 BIK_WGMMA_D_88, BIK_WGMMA_D8(88)
#define BIK_WGMMA_D_104 BIK_WGMMA_D_96, BIK_WGMMA_D8(96)
#define BIK_WGMMA_D_112 BIK_WGMMA_D_104, BIK_WGMMA_D8(104)
#define BIK_WGMMA_D_120 BIK_WGMMA_D_112, BIK_WGMMA_D8(112)
#define BIK_WGMMA_D_128 BIK_WGMMA_D_120, BIK_WGMMA_D8(120)

// Wgmma<N, T> for one 16-bit input type: R = N / 2 accumulators, then the two descriptors (operands R and
// I1) and the scale-d flag (I2), written out as literals because PTX names operands by number.
#define BIK_WGMMA_SS_TYPE(N, R, I1, I2, T, PTX)                                                          \
  template <>                                                                                           \
  struct Wgmma<N, T> {                                                                                  \
    static constexpr int kRegs = R;                                                                     \
    __device__ __forceinline__ static void mma(float (&d)[R], uint64_t desc_a, uint64_t desc_b) {       \
      asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #I2 ", 0;\n"                                    \
                   "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." PTX "." PTX " {" BIK_WGMMA_REGS_##R \
                   "}, %" #R ", %" #I1 ", p, 1, 1, 0, 0;\n}\n"                                           \
                   : BIK_WGMMA_D_##R                                                                    \
                   : "l"(desc_a), "l"(desc_b), "r"(1));                                                 \
    }                                                                                                   \
  };
#define BIK_WGMMA_SS(N, R, I1, I2)                               \
  BIK_WGMMA_SS_TYPE(N, R, I1, I2, __nv_bfloat16, "bf16") \
  BIK_WGMMA_SS_TYPE(N, R, I1, I2, __half, "f16")

namespace bik::cuda::gemm_detail::sm90 {

template <int N, typename T>
struct Wgmma;

BIK_WGMMA_SS(16, 8, 9, 10)
BIK_WGMMA_SS(32, 16, 17, 18)
BIK_WGMMA_SS(48, 24, 25, 26)
BIK_WGMMA_SS(64, 32, 33, 34)
BIK_WGMMA_SS(80, 40, 41, 42)
BIK_WGMMA_SS(96, 48, 49, 50)
BIK_WGMMA_SS(112, 56, 57, 58)
BIK_WGMMA_SS(128, 64, 65, 66)
BIK_WGMMA_SS(144, 72, 73, 74)
BIK_WGMMA_SS(160, 80, 81, 82)
BIK_WGMMA_SS(176, 88, 89, 90)
BIK_WGMMA_SS(192, 96, 97, 98)
BIK_WGMMA_SS(208, 104, 105, 106)
BIK_WGMMA_SS(224, 112, 113, 114)
BIK_WGMMA_SS(240, 120, 121, 122)
BIK_WGMMA_SS(256, 128, 129, 130)

// m64nNk16 for any N that is a multiple of 16 up to 256: the one instruction of that width (it was once
// composed of narrower ones; each output's sum is that of one instruction per K step either way, with the
// same operands, which the tile tests check bitwise).
template <int N, typename T>
__device__ __forceinline__ void wgmma_cols(float* d, uint64_t desc_a, uint64_t desc_b) {
  static_assert(N % 16 == 0 && N >= 16 && N <= 256, "wgmma_cols: N a multiple of 16, at most 256");
  Wgmma<N, T>::mma(*reinterpret_cast<float(*)[N / 2]>(d), desc_a, desc_b);
}

}  // namespace bik::cuda::gemm_detail::sm90

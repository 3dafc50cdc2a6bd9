// The wide swapped tiles of the Hopper GEMM, 128 or 192 weight rows: the gated ones (Config::kSwapGlu in
// gemm_sm90.cuh), the plain ones of 192 rows in pairs and the plain ones of 128 rows on one CTA a tile.
// Their kernels live in gemm_sm90_swap_wide.cu, a translation unit of their own so that they compile beside
// gemm_sm90.cu; the host side (tensor maps, the walk, the rules) is gemm_sm90.cu's.
#pragma once
#include <cuda.h>

#include "cuda/gemm_common.cuh"

namespace bik::cuda::gemm_detail::sm90 {

struct Params;

using GemmKernelFn = void (*)(Params, CUtensorMap, CUtensorMap);

struct SwapWideKernel {
  GemmKernelFn fn = nullptr;  // null: no such tile
  int threads = 0, smem = 0, bm = 0, bn = 0;
};

// The narrowest gated swapped tile of `bm` weight rows (128, or 192 in pairs only) and at least `cols`
// activation rows (BN 112 to 224 in steps of 16, then 256; with 192 rows at most 192: each one wgmma
// instruction wide, gemm_sm90_wgmma.cuh), as a one-CTA kernel or as pairs of CTAs sharing the weight
// (cluster), for bf16 or f16 operands; fn is null where there is none.
SwapWideKernel glu_swap_kernel(int bm, int cols, bool bf16, bool cluster);

// The plain swapped tile of 192 weight rows (three consumer warpgroups) by `bn` activation rows, run in
// pairs of CTAs sharing the weight tile: bn 64 to 192 in steps of 16; fn is null for any other.
SwapWideKernel swap_pair_kernel(int bn, bool bf16);

// The plain swapped tile of 128 weight rows (two consumer warpgroups) by `bn` activation rows, one CTA a
// tile: bn 112 to 256 in steps of 16; fn is null for any other.
SwapWideKernel swap_wide_kernel(int bn, bool bf16);

}  // namespace bik::cuda::gemm_detail::sm90

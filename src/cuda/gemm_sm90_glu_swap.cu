// Kernels of the gated swapped tiles (gemm_sm90_glu_swap.h): 128 interleaved weight rows (64 outputs, two
// consumer warpgroups of 64 rows each) by BN activation rows, stages filling the shared memory the
// epilogue staging leaves (at most 8).
#include "cuda/gemm_sm90.cuh"
#include "cuda/gemm_sm90_glu_swap.h"

namespace bik::cuda::gemm_detail::sm90 {
namespace {

constexpr int glu_swap_stages(int bn) {
  // less the two consumers' epilogue staging, the 1024-byte alignment slack and up to 8 stages' barriers
  constexpr int kFree = 227 * 1024 - 2 * 4 * (16 * 144) - 1024 - 256;
  const int s = kFree / ((128 + bn) * kRowBytes);
  return s < 8 ? s : 8;
}

template <int BN>
using GluSwapTile = Config<128, BN, glu_swap_stages(BN), false, true, true>;

template <int BN, typename T, bool kCluster>
GluSwapKernel kernel_of() {
  using Cfg = GluSwapTile<BN>;
  static_assert(Cfg::STAGES >= 3, "a gated swapped tile keeps at least three stages in flight");
  return GluSwapKernel{gemm_kernel<Cfg, T, kCluster>, Cfg::kThreads, Cfg::kSmemBytes, Cfg::BM, Cfg::BN};
}

template <int BN>
GluSwapKernel pick(bool bf16, bool cluster) {
  if (bf16) return cluster ? kernel_of<BN, __nv_bfloat16, true>() : kernel_of<BN, __nv_bfloat16, false>();
  return cluster ? kernel_of<BN, __half, true>() : kernel_of<BN, __half, false>();
}

}  // namespace

GluSwapKernel glu_swap_kernel(int cols, bool bf16, bool cluster) {
  if (cols <= 112) return pick<112>(bf16, cluster);
  if (cols <= 128) return pick<128>(bf16, cluster);
  if (cols <= 144) return pick<144>(bf16, cluster);
  if (cols <= 160) return pick<160>(bf16, cluster);
  if (cols <= 176) return pick<176>(bf16, cluster);
  if (cols <= 192) return pick<192>(bf16, cluster);
  if (cols <= 208) return pick<208>(bf16, cluster);
  if (cols <= 224) return pick<224>(bf16, cluster);
  if (cols <= 256) return pick<256>(bf16, cluster);
  return GluSwapKernel{};
}

}  // namespace bik::cuda::gemm_detail::sm90

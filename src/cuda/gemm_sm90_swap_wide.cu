// Kernels of the wide swapped tiles (gemm_sm90_swap_wide.h): gated, 128 or 192 interleaved weight rows (64
// or 96 outputs, two or three consumer warpgroups of 64 rows each) by BN activation rows; plain, 192
// weight rows by BN in pairs, or 128 weight rows by BN on one CTA a tile. Stages fill the shared memory the
// epilogue staging leaves (at most 8). The 192-row tiles run in pairs only.
#include "cuda/gemm_sm90.cuh"
#include "cuda/gemm_sm90_swap_wide.h"

namespace bik::cuda::gemm_detail::sm90 {
namespace {

constexpr int wide_stages(int bm, int bn) {
  // less the consumers' epilogue staging, the 1024-byte alignment slack and up to 8 stages' barriers
  const int free = 227 * 1024 - bm / 64 * 4 * kSwappedEpiWarpBytes - 1024 - 256;
  const int s = free / ((bm + bn) * kRowBytes);
  return s < 8 ? s : 8;
}

template <int BM, int BN, bool kGlu = true>
using WideTile = Config<BM, BN, wide_stages(BM, BN), false, true, kGlu>;

template <int BM, int BN, typename T, bool kCluster, bool kGlu = true>
SwapWideKernel kernel_of() {
  using Cfg = WideTile<BM, BN, kGlu>;
  static_assert(Cfg::STAGES >= 3, "a wide swapped tile keeps at least three stages in flight");
  return SwapWideKernel{gemm_kernel<Cfg, T, kCluster>, Cfg::kThreads, Cfg::kSmemBytes, Cfg::BM, Cfg::BN};
}

template <int BN>
SwapWideKernel pick(bool bf16, bool cluster) {
  if (bf16) return cluster ? kernel_of<128, BN, __nv_bfloat16, true>() : kernel_of<128, BN, __nv_bfloat16, false>();
  return cluster ? kernel_of<128, BN, __half, true>() : kernel_of<128, BN, __half, false>();
}

// The 192-row tiles: pairs only, BN up to 192 (three consumers hold at most 152 registers a thread).
template <int BN>
SwapWideKernel pick192(bool bf16) {
  return bf16 ? kernel_of<192, BN, __nv_bfloat16, true>() : kernel_of<192, BN, __half, true>();
}

// The plain 192-row tiles: pairs only.
template <int BN>
SwapWideKernel pair_of(bool bf16) {
  return bf16 ? kernel_of<192, BN, __nv_bfloat16, true, false>() : kernel_of<192, BN, __half, true, false>();
}

// The plain 128-row tiles: one CTA a tile.
template <int BN>
SwapWideKernel wide_of(bool bf16) {
  return bf16 ? kernel_of<128, BN, __nv_bfloat16, false, false>() : kernel_of<128, BN, __half, false, false>();
}

}  // namespace

SwapWideKernel glu_swap_kernel(int bm, int cols, bool bf16, bool cluster) {
  if (bm == 192) {
    if (!cluster) return SwapWideKernel{};
    if (cols <= 112) return pick192<112>(bf16);
    if (cols <= 128) return pick192<128>(bf16);
    if (cols <= 144) return pick192<144>(bf16);
    if (cols <= 160) return pick192<160>(bf16);
    if (cols <= 176) return pick192<176>(bf16);
    if (cols <= 192) return pick192<192>(bf16);
    return SwapWideKernel{};
  }
  if (bm != 128) return SwapWideKernel{};
  if (cols <= 112) return pick<112>(bf16, cluster);
  if (cols <= 128) return pick<128>(bf16, cluster);
  if (cols <= 144) return pick<144>(bf16, cluster);
  if (cols <= 160) return pick<160>(bf16, cluster);
  if (cols <= 176) return pick<176>(bf16, cluster);
  if (cols <= 192) return pick<192>(bf16, cluster);
  if (cols <= 208) return pick<208>(bf16, cluster);
  if (cols <= 224) return pick<224>(bf16, cluster);
  if (cols <= 256) return pick<256>(bf16, cluster);
  return SwapWideKernel{};
}

SwapWideKernel swap_pair_kernel(int bn, bool bf16) {
  switch (bn) {
    case 64: return pair_of<64>(bf16);
    case 80: return pair_of<80>(bf16);
    case 96: return pair_of<96>(bf16);
    case 112: return pair_of<112>(bf16);
    case 128: return pair_of<128>(bf16);
    case 144: return pair_of<144>(bf16);
    case 160: return pair_of<160>(bf16);
    case 176: return pair_of<176>(bf16);
    case 192: return pair_of<192>(bf16);
    default: return SwapWideKernel{};
  }
}

SwapWideKernel swap_wide_kernel(int bn, bool bf16) {
  switch (bn) {
    case 112: return wide_of<112>(bf16);
    case 128: return wide_of<128>(bf16);
    case 144: return wide_of<144>(bf16);
    case 160: return wide_of<160>(bf16);
    case 176: return wide_of<176>(bf16);
    case 192: return wide_of<192>(bf16);
    case 208: return wide_of<208>(bf16);
    case 224: return wide_of<224>(bf16);
    case 240: return wide_of<240>(bf16);
    case 256: return wide_of<256>(bf16);
    default: return SwapWideKernel{};
  }
}

}  // namespace bik::cuda::gemm_detail::sm90

// F32 GEMM on the CUDA cores: plain FP32 fused multiply-adds, no TF32.
//
// Reduction order: each output is one accumulator in one thread, updated as acc = fma(a[k], w[k], acc)
// for k = 0, 1, 2, ... in order: one sequential chain per output, like the CPU backend's plan. K runs
// in tiles of kBK = 16 for every configuration; the tail of the last tile is zero-filled, so a chain
// always has the same length for a given K. The CTA tile only decides which thread owns which output.
//
// Loads are element by element (any strides, any alignment): the arithmetic, not the loads, bounds
// this kernel, and one load path means one order for every layout.
#include "cuda/gemm.h"
#include "cuda/gemm_host.h"

namespace bik::cuda {
namespace gemm_detail {
namespace {

constexpr int kBK = 16;

template <int BM_, int BN_, int TM_, int TN_>
struct F32Config {
  static constexpr int BM = BM_, BN = BN_, TM = TM_, TN = TN_;
  static constexpr int MY = BM / TM, NX = BN / TN;  // threads along M and N
  static constexpr int kThreads = MY * NX;
  static constexpr int kLoadA = BM * kBK / kThreads, kLoadW = BN * kBK / kThreads;
  static_assert(BM * kBK % kThreads == 0 && BN * kBK % kThreads == 0, "whole loads per thread");
};
using Small = F32Config<32, 64, 4, 4>;     // small M: more CTAs across N
using Large = F32Config<128, 128, 8, 8>;   // 64 outputs per thread

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads) gemm_f32_kernel(const Problem p) {
  constexpr int BM = Cfg::BM, BN = Cfg::BN, TM = Cfg::TM, TN = Cfg::TN;
  // K-major tiles, padded by one column so the transposing stores spread over the banks.
  __shared__ float as[kBK][BM + 1];
  __shared__ float ws[kBK][BN + 1];

  const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN, b = blockIdx.z;
  const float* a = static_cast<const float*>(p.a) + int64_t(b) * p.a_sb;
  const float* w = static_cast<const float*>(p.w) + int64_t(b) * p.w_sb;
  const int tx = threadIdx.x % Cfg::NX, ty = threadIdx.x / Cfg::NX;

  float ra[Cfg::kLoadA], rw[Cfg::kLoadW];
  // Element i of a tile is (row i / kBK, k i % kBK): a warp reads whole 64-byte row pieces.
  auto fetch = [&](int k0) {
#pragma unroll
    for (int j = 0; j < Cfg::kLoadA; ++j) {
      const int i = threadIdx.x + j * Cfg::kThreads, r = m0 + i / kBK, k = k0 + i % kBK;
      ra[j] = r < p.m && k < p.k ? a[int64_t(r) * p.a_sm + int64_t(k) * p.a_sk] : 0.f;
    }
#pragma unroll
    for (int j = 0; j < Cfg::kLoadW; ++j) {
      const int i = threadIdx.x + j * Cfg::kThreads, r = n0 + i / kBK, k = k0 + i % kBK;
      rw[j] = r < p.n && k < p.k ? w[int64_t(r) * p.w_sn + int64_t(k) * p.w_sk] : 0.f;
    }
  };
  auto stash = [&] {
#pragma unroll
    for (int j = 0; j < Cfg::kLoadA; ++j) {
      const int i = threadIdx.x + j * Cfg::kThreads;
      as[i % kBK][i / kBK] = ra[j];
    }
#pragma unroll
    for (int j = 0; j < Cfg::kLoadW; ++j) {
      const int i = threadIdx.x + j * Cfg::kThreads;
      ws[i % kBK][i / kBK] = rw[j];
    }
  };

  float acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = 0.f;

  const int num_kb = (p.k + kBK - 1) / kBK;
  if (num_kb > 0) fetch(0);
  for (int kb = 0; kb < num_kb; ++kb) {
    stash();
    __syncthreads();
    if (kb + 1 < num_kb) fetch((kb + 1) * kBK);  // next tile's loads overlap this tile's FMAs
#pragma unroll
    for (int kk = 0; kk < kBK; ++kk) {
      float av[TM], wv[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) av[i] = as[kk][ty + i * Cfg::MY];
#pragma unroll
      for (int j = 0; j < TN; ++j) wv[j] = ws[kk][tx + j * Cfg::NX];
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = __fmaf_rn(av[i], wv[j], acc[i][j]);
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) store_one<float>(p, b, m0 + ty + i * Cfg::MY, n0 + tx + j * Cfg::NX, acc[i][j]);
}

template <class Cfg>
int64_t tiles(const Problem& p) {
  return int64_t((p.m + Cfg::BM - 1) / Cfg::BM) * ((p.n + Cfg::BN - 1) / Cfg::BN) * p.batch;
}

bool use_large(const Problem& p, const DeviceInfo& d) { return p.m > 64 && tiles<Large>(p) >= d.sms; }

template <class Cfg>
void launch(const Problem& p, cudaStream_t st) {
  const int gy = (p.n + Cfg::BN - 1) / Cfg::BN;
  BIK_CHECK(gy <= 65535, "matmul: N = ", p.n, " is too large for the f32 kernel's grid");
  const dim3 grid((p.m + Cfg::BM - 1) / Cfg::BM, gy, p.batch);
  gemm_f32_kernel<Cfg><<<grid, Cfg::kThreads, 0, st>>>(p);
  BIK_CUDA_LAUNCH_CHECK();
}

}  // namespace

std::string f32_config_name(const Problem& p, const DeviceInfo& d) {
  return use_large(p, d) ? "f32 fma 128x128" : "f32 fma 32x64";
}

}  // namespace gemm_detail

void gemm_f32(const GemmArgs& g, Stream s) {
  BIK_CHECK(g.a.dtype == DType::F32, "gemm_f32: inputs must be f32, got ", dtype_name(g.a.dtype));
  const auto& d = gemm_detail::use_device(g.a.device.index);
  const gemm_detail::Problem p = gemm_detail::make_problem(g);
  if (gemm_detail::use_large(p, d))
    gemm_detail::launch<gemm_detail::Large>(p, gemm_detail::stream_of(s));
  else
    gemm_detail::launch<gemm_detail::Small>(p, gemm_detail::stream_of(s));
}

}  // namespace bik::cuda

// Host side of the mma.sync GEMM: tile configurations and the choice among them.
//
// The configurations differ only in CTA tile, warp layout and pipeline depth; each one walks K the same
// way (see gemm_sm80.cuh), so switching between them with M keeps every output bit. All fit the 99 KB
// (101376 bytes) of opt-in shared memory of the smallest sm_8x parts (RTX 3090/4090).
#include "cuda/gemm.h"
#include "cuda/gemm_host.h"
#include "cuda/gemm_sm80.cuh"

namespace bik::cuda {
namespace gemm_detail {
namespace {

using namespace sm80;
//                      BM   BN  warps  stages
using Small = Config<16, 32, 1, 2, 6>;    // M <= 32: weight-bandwidth bound; many small CTAs keep bytes in flight
using Mid = Config<64, 64, 2, 2, 4>;      // medium M, and the scalar-load path
using Large = Config<128, 128, 2, 4, 3>;  // large M: 64x32 warp tiles, 96 KB of stages
static_assert(Large::kSmemBytes <= 101376 && Mid::kSmemBytes <= 101376 && Small::kSmemBytes <= 101376);

enum class Choice { Small, Mid, Large, MidScalar };

template <class Cfg>
int64_t tiles(const Problem& p) {
  return int64_t((p.m + Cfg::BM - 1) / Cfg::BM) * ((p.n + Cfg::BN - 1) / Cfg::BN) * p.batch;
}

bool vector_ok(const Problem& p) {
  return vector_rows(p.a, p.a_sk, p.a_sm, p.m, p.a_sb, p.batch) && vector_rows(p.w, p.w_sk, p.w_sn, p.n, p.w_sb, p.batch);
}

Choice choose(const Problem& p, const DeviceInfo& d) {
  if (!vector_ok(p)) return Choice::MidScalar;
  if (p.m <= 32) return Choice::Small;
  if (p.m > 64 && Large::kSmemBytes <= d.smem_optin && tiles<Large>(p) >= d.sms) return Choice::Large;
  return Choice::Mid;
}

template <class Cfg, typename T, bool kVec>
void launch(const Problem& p, const DeviceInfo& d, cudaStream_t st) {
  auto kernel = gemm_kernel<Cfg, T, kVec>;
  BIK_CHECK(Cfg::kSmemBytes <= d.smem_optin, "matmul: sm80 tile needs ", Cfg::kSmemBytes,
            " bytes of shared memory; the device allows ", d.smem_optin);
  const int gy = (p.n + Cfg::BN - 1) / Cfg::BN;
  BIK_CHECK(gy <= 65535, "matmul: N = ", p.n, " is too large for the sm80 kernel's grid");
  allow_dynamic_smem(reinterpret_cast<const void*>(kernel), d.index, Cfg::kSmemBytes);
  const dim3 grid((p.m + Cfg::BM - 1) / Cfg::BM, gy, p.batch);
  kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, st>>>(p);
  BIK_CUDA_LAUNCH_CHECK();
}

template <typename T>
void run(const Problem& p, const DeviceInfo& d, cudaStream_t st) {
  switch (choose(p, d)) {
    case Choice::Small: return launch<Small, T, true>(p, d, st);
    case Choice::Mid: return launch<Mid, T, true>(p, d, st);
    case Choice::Large: return launch<Large, T, true>(p, d, st);
    case Choice::MidScalar: return launch<Mid, T, false>(p, d, st);
  }
}

}  // namespace

std::string sm80_config_name(const Problem& p, const DeviceInfo& d) {
  switch (choose(p, d)) {
    case Choice::Small: return "sm80 16x32";
    case Choice::Mid: return "sm80 64x64";
    case Choice::Large: return "sm80 128x128";
    case Choice::MidScalar: return "sm80 64x64 scalar-load";
  }
  return "?";
}

}  // namespace gemm_detail

void gemm_sm80(const GemmArgs& g, Stream s) {
  const auto& d = gemm_detail::use_device(g.a.device.index);
  BIK_CHECK(d.arch >= 80, "matmul: the f16/bf16 CUDA GEMM needs sm_80 or later; device ", d.index, " is sm_", d.arch);
  const gemm_detail::Problem p = gemm_detail::make_problem(g);
  if (g.a.dtype == DType::BF16)
    gemm_detail::run<__nv_bfloat16>(p, d, gemm_detail::stream_of(s));
  else if (g.a.dtype == DType::F16)
    gemm_detail::run<__half>(p, d, gemm_detail::stream_of(s));
  else
    throw Error(detail::concat("gemm_sm80: inputs must be f16 or bf16, got ", dtype_name(g.a.dtype)));
}

}  // namespace bik::cuda

// bik::cuda::gemm: picks the kernel family from the reduction plan (dtype and architecture, never M)
// and hands over; each family then picks its tile shape, which may depend on M.
#include "cuda/gemm.h"

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>
#include <utility>
#include <vector>

#include "core/policy.h"
#include "cuda/gemm_host.h"

namespace bik::cuda {
namespace gemm_detail {

Problem make_problem(const GemmArgs& g) {
  BIK_CHECK(g.m <= (int64_t(1) << 30) && g.n <= (int64_t(1) << 30) && g.k <= (int64_t(1) << 30) &&
                g.batch <= 65535,
            "matmul: sizes out of range for the CUDA kernels (B ", g.batch, ", M ", g.m, ", N ", g.n, ", K ", g.k, ")");
  Problem p;
  p.a = g.a.data;
  p.w = g.w.data;
  p.out = g.out.data;
  p.batch = int(g.batch);
  p.m = int(g.m);
  p.n = int(g.n);
  p.k = int(g.k);
  p.a_sb = g.a.stride[0], p.a_sm = g.a.stride[1], p.a_sk = g.a.stride[2];
  p.w_sb = g.w.stride[0], p.w_sn = g.w.stride[1], p.w_sk = g.w.stride[2];
  p.o_sb = g.out.stride[0], p.o_sm = g.out.stride[1], p.o_sn = g.out.stride[2];
  p.out_f32 = g.out.dtype == DType::F32;
  if (g.bias) {
    p.bias = g.bias->data;
    p.bias_s = g.bias->stride[0];
    p.bias_f32 = g.bias->dtype == DType::F32;
  }
  const int64_t es = dtype_size(g.out.dtype);
  p.out_pairs = p.o_sn == 1 && (reinterpret_cast<uintptr_t>(p.out) % (2 * es)) == 0 && (p.m == 1 || p.o_sm % 2 == 0) &&
                (p.batch == 1 || p.o_sb % 2 == 0);
  return p;
}

}  // namespace gemm_detail

namespace {
policy::GemmPlan plan_for(const GemmArgs& g, const gemm_detail::DeviceInfo& d) {
  return policy::gemm_plan(policy::Target{policy::Backend::CUDA, d.arch}, g.a.dtype, g.n, g.k);
}
}  // namespace

void gemm(const GemmArgs& g, Stream s) {
  const auto& d = gemm_detail::use_device(g.a.device.index);
  const policy::GemmPlan plan = plan_for(g, d);
  BIK_CHECK(plan.k_splits == 1, "matmul: the CUDA kernels implement unsplit K plans only");
  switch (plan.mma) {
    case policy::Mma::FmaChain: return gemm_f32(g, s);
    case policy::Mma::WgmmaSm90: return gemm_sm90(g, s);
    case policy::Mma::MmaSyncSm80: return gemm_sm80(g, s);
  }
}

// BIK_GEMM_GLU, read at each call: "0" -> always the two calls (the A/B switch and the tests' reference);
// unset or anything else -> the fused kernel where gemm_sm90_gated takes the problem. Either way the same
// bits: the fused epilogue rounds as the two calls do.
void gemm_silu_and_mul(const GemmArgs& g, Stream s) {
  const auto& d = gemm_detail::use_device(g.a.device.index);
  const char* e = std::getenv("BIK_GEMM_GLU");
  const bool fuse = !(e != nullptr && std::strcmp(e, "0") == 0);
  if (fuse && plan_for(g, d).mma == policy::Mma::WgmmaSm90 && gemm_sm90_gated(g, s)) return;
  // The two calls, the product in stream-ordered scratch memory (so a CUDA graph capture records it too).
  const cudaStream_t st = gemm_detail::stream_of(s);
  void* buf = nullptr;
  const int64_t elems = g.batch * g.m * g.n;
  BIK_CUDA_CHECK(cudaMallocAsync(&buf, size_t(elems) * dtype_size(g.a.dtype), st));
  const TensorView product(buf, g.a.dtype, {g.batch, g.m, g.n}, g.a.device);
  GemmArgs plain = g;
  plain.out = product;
  cuda::gemm(plain, s);
  cuda::silu_and_mul(g.out, product, s);
  BIK_CUDA_CHECK(cudaFreeAsync(buf, st));
}

std::string gemm_config_name(const GemmArgs& g) {
  const auto& d = gemm_detail::use_device(g.a.device.index);
  const gemm_detail::Problem p = gemm_detail::make_problem(g);
  switch (plan_for(g, d).mma) {
    case policy::Mma::FmaChain: return gemm_detail::f32_config_name(p, d);
    case policy::Mma::WgmmaSm90: return gemm_detail::sm90_config_name(p, d);
    case policy::Mma::MmaSyncSm80: return gemm_detail::sm80_config_name(p, d);
  }
  return "?";
}

// The configuration of the gated product whose plain form ([M, 2 d]) g describes, on an sm_90 device.
std::string gemm_gated_config_name(const GemmArgs& g) {
  const auto& d = gemm_detail::use_device(g.a.device.index);
  if (plan_for(g, d).mma != policy::Mma::WgmmaSm90) return "two calls";
  return gemm_detail::sm90_gated_config_name(gemm_detail::make_problem(g), d);
}

}  // namespace bik::cuda

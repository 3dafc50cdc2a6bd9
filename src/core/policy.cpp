#include "core/policy.h"

#include <sstream>

namespace bik::policy {

RowReducePlan row_reduce_plan(Target t, DType, int64_t) {
  // CPU: 16 lanes map onto one AVX-512 register or two AVX2 registers; the plan is the same for both,
  // so the ISA a machine happens to have never changes the bits. CUDA: a warp's 32 lanes.
  return RowReducePlan{t.backend == Backend::CPU ? 16 : 32};
}

GemmPlan gemm_plan(Target t, DType, int64_t, int64_t k) {
  if (t.backend == Backend::CPU) {
    // One F32 FMA chain over all of K per output: tiling in M and N never touches the order.
    return GemmPlan{1, k, Mma::FmaChain, 1};
  }
  // CUDA plans land with the CUDA GEMM; until then one unsplit chain in the hardware MMA's order.
  return GemmPlan{1, k, t.arch >= 90 ? Mma::WgmmaSm90 : Mma::MmaSyncSm80, 16};
}

std::string describe(const GemmPlan& p) {
  std::ostringstream os;
  const char* mma = p.mma == Mma::FmaChain ? "fma-chain" : p.mma == Mma::MmaSyncSm80 ? "mma.sync" : "wgmma";
  os << "k_splits=" << p.k_splits << " k_split_len=" << p.k_split_len << " mma=" << mma << " mma_k=" << p.mma_k;
  return os.str();
}
std::string describe(const RowReducePlan& p) { return "lanes=" + std::to_string(p.lanes); }

}  // namespace bik::policy

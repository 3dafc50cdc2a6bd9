// Alternative GEMM implementations run through the invariance harness. Some are deliberately variant
// (their reduction order depends on M): the harness must catch them, or it proves nothing.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "core/backend.h"

namespace bik::check {

// Same contract as the backend gemm (GemmArgs validated, CPU tensors).
using GemmFn = std::function<void(const GemmArgs&)>;

// OpenBLAS cblas_sgemm (f16/bf16 inputs are widened to f32 first; out rounded to its dtype).
// Batch-variant: its kernel choice and blocking depend on M (e.g. M = 1 goes through a GEMV-like path).
void openblas_gemm(const GemmArgs& g);
// Deliberately variant: splits K into 4 partial sums when M < 64, one chain otherwise.
void split_k_by_m_gemm(const GemmArgs& g);
// The CPU engine's GEMM with batch invariance off: OpenBLAS with split-K chosen by the row count, the
// habit of GPU libraries for few rows (K cut into 4 pieces for M < 64, 2 for M < 256, 1 from 256 rows),
// each piece one cblas_sgemm, the later ones into a partial added to the first in order. Batch-variant on
// every CPU whatever kernels OpenBLAS picks there: with its AVX-512 kernels (OPENBLAS_CORETYPE SkylakeX,
// Cooperlake) a 35-token prompt's projections alone and among 1122 rows came out the same (tests/cpu/
// test_bisect.cpp's shapes), with its AVX2 ones (Haswell) they did not.
void split_k_openblas_gemm(const GemmArgs& g);

struct GemmVariant {
  std::string name;
  GemmFn fn;
  bool expect_invariant;
};
// "bik" (the library's own backend gemm), "openblas", "splitk-by-m".
std::vector<GemmVariant> gemm_variants();
GemmVariant gemm_variant(const std::string& name);  // throws bik::Error listing the known names

}  // namespace bik::check

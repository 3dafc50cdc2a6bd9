// Deliberately batch-variant kernels, never used by the library: the tests run them through the same
// invariance checks as the real kernels and require those checks to report differences.
#pragma once
#include "bik/ops.h"

namespace bik::cuda {

// out[r] = sum of row r of x [M, n] (f32, f16 or bf16) into F32 out [M], with each row split across a
// number of CTAs that grows as M shrinks (to fill the GPU), partial sums added in split order: the
// grouping of the sum, hence its bits, depends on M.
void sum_rows_split_by_m(const TensorView& out, const TensorView& x, Stream s = {});

}  // namespace bik::cuda

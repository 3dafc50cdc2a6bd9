// Internals of the CUDA reductions that the GPU tests check.
#pragma once
#include <cstdint>

namespace bik::cuda {

// Column-sum launches of the copy-engine kernel (reduce_cols_tma_kernel) so far in this process, so the
// tests can tell that BIK_COLS_TMA really took that path.
uint64_t cols_tma_launches();

}  // namespace bik::cuda

// The reduction policy: the single place that maps a problem to the order of its floating-point sums.
// Kernels obey these plans; tests import them. By construction no plan takes the batch size (M, number
// of rows, tokens or sequences) as an argument, so no plan can depend on it.
#pragma once
#include <cstdint>
#include <string>

#include "bik/dtype.h"
#include "core/split_grid.h"

namespace bik::policy {

enum class Backend : uint8_t { CPU, CUDA };

struct Target {
  Backend backend = Backend::CPU;
  int arch = 0;  // CUDA compute capability x10 (80, 86, 89, 90); 0 for the CPU
};

// Row reductions (norms, softmax, sums, means): element i of a row of n goes to lane i % lanes; each
// lane sums its elements in increasing i; then lanes combine by a fixed halving tree:
//   for (w = lanes / 2; w >= 1; w /= 2) lane[j] += lane[j + w]  for j < w.
// `lanes` is a power of two fixed per target.
struct RowReducePlan {
  int lanes;
};
RowReducePlan row_reduce_plan(Target t, DType dtype, int64_t n);

// GEMM: out[m, n] = sum over k. The K range is cut into `k_splits` contiguous pieces of `k_split_len`
// (the last may be shorter); inside a piece, products are accumulated in increasing k by one F32 fused
// multiply-add chain per output (or by the MMA family named in `mma`, whose internal order is fixed by
// the hardware); piece results are added in increasing piece order, starting from piece 0.
enum class Mma : uint8_t { FmaChain, MmaSyncSm80, WgmmaSm90 };
struct GemmPlan {
  int64_t k_splits;
  int64_t k_split_len;
  Mma mma;
  int mma_k;  // K step of one MMA instruction (1 for the FMA chain)
};
GemmPlan gemm_plan(Target t, DType dtype, int64_t n, int64_t k);

// Causal attention (include/bik/attention.h): for one query row at absolute position p and one head,
// the keys 0..p are cut into the splits of a fixed grid of absolute positions (SplitGrid,
// core/split_grid.h: `splits.len` keys a split up to `splits.long_from`, `splits.long_len` from there on).
// Inside a split, keys go in tiles of `key_tile` (tiles start at the split's start):
// per tile, scores in F32, the running max m, then sum l and accumulator acc rescaled by exp(m_old - m)
// and advanced in increasing key position. Split results (m, l, acc) are folded in increasing j, from
// split 0, by  m' = max(M, m), L' = L e^(M - m') + l e^(m - m'), A' = A e^(M - m') + acc e^(m - m');
// then out = A / L. CPU: the division correctly rounded, once per output; CUDA: A * r with r = 1 / L
// rounded once to F32 per row (a multiply per output instead of a division; at most 2 F32 ulps from it).
// Either way the F32 result is then rounded to the output dtype. CUDA: scores and P.V by mma.sync
// m16n8k16 (wgmma on sm_90; P rounded to q's dtype before P.V), exponents in base 2 as
// 2^fma(score, scale log2 e, -m); the CPU uses one F32 FMA chain per dot product, over d in increasing order.
// No argument is a batch size, number of queries or sequences.
struct AttentionPlan {
  SplitGrid splits;
  int64_t key_tile;  // divides splits.len
  Mma mma;
};
AttentionPlan attention_plan(Target t, DType dtype, int64_t head_dim);
// A split grid with its invariants checked (len > 0, long_len a multiple of len, long_from a multiple of
// long_len; long_from = SplitGrid::kNoLong: uniform); bik::Error naming the violated one otherwise.
SplitGrid make_split_grid(int64_t len, int64_t long_from, int64_t long_len);
SplitGrid uniform_split_grid(int64_t len);

std::string describe(const GemmPlan& p);
std::string describe(const AttentionPlan& p);
std::string describe(const RowReducePlan& p);

}  // namespace bik::policy

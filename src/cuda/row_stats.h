// Row statistics of f32 logits over chunks of 64 columns (cuda/row_stats.cuh has the definition):
// experimental, for an lm-head whose epilogue hands the sampler each row's maximum and exponential sum
// instead of a second read of the logits. Not yet used by the engine.
#pragma once
#include "bik/ops.h"
#include "core/backend.h"

namespace bik::cuda {

// The entries of logits' rows: stats f32 [M, ceil(N / 64), 4] (contiguous) from logits f32 [M, N] (unit
// column stride) on the same GPU.
void row_chunk_stats(const TensorView& stats, const TensorView& logits, Stream s);

// Per row of stats (as row_chunk_stats writes them): argmax i32 [M] (the first maximum's column), row_max
// and row_sum f32 [M] (the row's log-sum-exp is row_max + log(row_sum)).
void row_stats_fold(const TensorView& argmax, const TensorView& row_max, const TensorView& row_sum,
                    const TensorView& stats, Stream s);

// g's product (bf16 / f16 inputs, f32 out, one batch, no bias) on an unswapped sm_90 tile whose epilogue
// also writes the entries of out's rows into stats (as row_chunk_stats would from out); stats_only: out is
// not written. The bits of out are gemm()'s. false (nothing launched) where it does not apply: no sm_90
// GPU, other dtypes, a bias, more than one batch.
bool gemm_row_stats(const GemmArgs& g, const TensorView& stats, bool stats_only, Stream s);

}  // namespace bik::cuda

// Internals of the CUDA sampling and logprobs that the benchmarks use.
#pragma once
#include "bik/ops.h"
#include "bik/tensor.h"

namespace bik::cuda {

// The launch of cuda::logprobs without its wait: validated arguments as cuda::logprobs takes them; a
// token outside the vocabulary sets *bad (device-visible memory) to 1 and that row's chosen logprob to
// NaN. cuda::logprobs is this, then a wait for the stream and the check of a flag in mapped host memory;
// `bik bench ops` times the kernel alone through it, in a CUDA graph, as it times every other op.
void logprobs_launch(const TensorView& chosen, const TensorView& top_ids, const TensorView& top_vals,
                     const TensorView& logits, const TensorView& tokens, int* bad, Stream s);

}  // namespace bik::cuda

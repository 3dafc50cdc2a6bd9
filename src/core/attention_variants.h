// Deliberately batch-variant attention: the same kernels with a split length that depends on the number
// of sequences in the call (the flash-decoding habit of choosing more, shorter splits when the batch is
// small, to fill the GPU). The invariance tests must catch it; the engine runs it when batch invariance is
// off, as a non-invariant engine would.
#pragma once
#include "bik/attention.h"

namespace bik {

void paged_attention_split_by_seqs(const TensorView& out, const TensorView& q, const TensorView& k_cache,
                                   const TensorView& v_cache, const TensorView& block_tables,
                                   const TensorView& seq_lens, const TensorView& query_start_loc, float scale,
                                   Stream s = {});
void paged_attention_split_by_seqs(const TensorView& out, const TensorView& q, const TensorView& k_cache,
                                   const TensorView& v_cache, const TensorView& block_tables,
                                   const TensorView& seq_lens, const TensorView& query_start_loc, float scale,
                                   const AttentionHostMetadata& host, Stream s = {});

}  // namespace bik

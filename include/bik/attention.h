// Causal attention over a paged KV cache, batch-invariant (docs/invariance.md).
//
// KV cache, one pair per layer: k_cache and v_cache are [num_blocks, block_size, num_kv_heads, head_dim],
// in q's dtype (F16 or BF16). Position i of a sequence lives in physical block block_table[i / block_size]
// at offset i % block_size; its "slot" is that block * block_size + offset.
//
// A step's query tokens are a ragged batch: sequence s owns rows [query_start_loc[s],
// query_start_loc[s + 1]) of q and out, and those rows are its LAST q_len positions: with context length
// n = seq_lens[s] (cached + new), row i of the sequence sits at absolute position n - q_len + i and
// attends keys 0..position (causal). Prefill (many rows), decode (one or a few rows), chunked prefill and
// prefix-cache hits are all this one call, and give a query token the same bits in all of them:
//
// The reduction order (policy::attention_plan): the keys are cut into splits at fixed absolute positions
// (256 keys a split below position 8192, 1024 keys a split from 8192 on); inside a split the scores,
// running max, sum and accumulator advance tile by tile in increasing key position; the split results are
// merged in increasing split order by one fixed formula. Nothing in that order depends on how many rows,
// sequences or heads are in the call, where the row sits, or whether its keys were written in this step or earlier.
//
// Both ops validate every argument (shapes, dtypes, devices, head_dim, the metadata's values and block
// table range) and throw bik::Error naming the argument. On CUDA the metadata (block_tables, seq_lens,
// query_start_loc, slot_mapping) is read back to the host for that check and to size the launch, which
// synchronises the device once per call, unless the caller passes the values it has on the host
// (AttentionHostMetadata, below).
#pragma once
#include <cstdint>
#include <optional>

#include "bik/ops.h"
#include "bik/tensor.h"

namespace bik {

// Stores the new tokens' keys and values: k_cache[slot] = k[t], v_cache[slot] = v[t] for slot =
// slot_mapping[t] (I32 [T]); -1 skips token t (padding). k, v: [T, num_kv_heads, head_dim], the caches'
// dtype. A slot outside [0, num_blocks * block_size) is an error. Exact copies: no arithmetic.
void write_kv_cache(const TensorView& k_cache, const TensorView& v_cache, const TensorView& k, const TensorView& v,
                    const TensorView& slot_mapping, Stream s = {});

// out[t, h, :] = softmax(scale * q[t, h, :] . K^T) V over the keys visible to row t, for query head h
// reading KV head h / (Hq / Hkv) (grouped-query attention; Hq % Hkv == 0).
//   out, q:          [T, Hq, D], F16 or BF16 (same dtype), D = 64 or 128, rows contiguous in D
//   k_cache/v_cache: [num_blocks, block_size, Hkv, D], q's dtype, contiguous
//   block_tables:    I32 [S, max_blocks]; entries past a sequence's last used block are ignored
//   seq_lens:        I32 [S], context length after this step (cached + new), >= q_len of the sequence
//   query_start_loc: I32 [S + 1], non-decreasing, from 0 to T
// A sequence with no query rows is allowed (and skipped). Softmax and the accumulation run in F32; the
// accumulated row A is divided by the softmax sum L (on CUDA as A times 1 / L, the reciprocal rounded once
// per row) and the result rounded once to out's dtype. At most 64 query heads per KV head (a clear error
// beyond).
void paged_attention(const TensorView& out, const TensorView& q, const TensorView& k_cache,
                     const TensorView& v_cache, const TensorView& block_tables, const TensorView& seq_lens,
                     const TensorView& query_start_loc, float scale, Stream s = {});

// The metadata's values on the host, for callers that build them there (the engine does): the checks and
// the launch read these instead of copying the device tensors back, so the calls below never synchronise
// the device. They must hold what the device tensors hold (the caller's promise: not compared, which
// would need the copy this avoids); their sizes are checked against the tensors' shapes.
struct AttentionHostMetadata {
  HostInts block_tables;     // [S * max_blocks], row-major like the tensor
  HostInts seq_lens;         // [S]
  HostInts query_start_loc;  // [S + 1]
};
void paged_attention(const TensorView& out, const TensorView& q, const TensorView& k_cache,
                     const TensorView& v_cache, const TensorView& block_tables, const TensorView& seq_lens,
                     const TensorView& query_start_loc, float scale, const AttentionHostMetadata& host,
                     Stream s = {});
// write_kv_cache with slot_mapping's values given on the host ([T], equal to the tensor's).
void write_kv_cache(const TensorView& k_cache, const TensorView& v_cache, const TensorView& k, const TensorView& v,
                    const TensorView& slot_mapping, HostInts host_slot_mapping, Stream s = {});

// An attention block's input projection, from the activations to attention's inputs, for q, k and v
// weights stacked into one w [(Hq + 2 Hk) D, K] (q rows, then k rows, then v rows): with
// p = x w^T (+ bias), of D columns a head,
//   q heads: RMS-normalised over D by q_norm when given (rms_norm's formula and tree), then rotated by
//            positions (rotary_embedding's), into q_out [T, Hq, D];
//   k heads: the same with k_norm, then into the caches at slot_mapping (write_kv_cache's copy; -1 skips);
//   v heads: as they are, into the caches at slot_mapping.
// Every output holds the bits of those calls run one after the other (mm or addmm, rms_norm, rotary_embedding,
// write_kv_cache), which is how it runs where no fused kernel applies, with `qkv` [T, (Hq + 2 Hk) D] for the
// product and `k_normed` [T, Hk, D] (with k_norm) as scratch. On sm_90, for bf16 with D = 64 or 128 and a
// rotation of all D dims, one GEMM kernel finishes the heads in its epilogue instead (src/cuda/gemm_heads.cuh):
// the scratch is not touched and only q_out and the caches are written. BIK_QKV_FUSED=0 keeps the calls.
struct QkvProjection {
  TensorView q_out;             // [T, Hq, D], elements contiguous, heads D apart
  TensorView k_cache, v_cache;  // [num_blocks, block_size, Hk, D], as write_kv_cache
  TensorView x, w;              // [T, K], [(Hq + 2 Hk) D, K]; x's dtype throughout (f16 or bf16)
  std::optional<TensorView> bias;            // [(Hq + 2 Hk) D]
  std::optional<TensorView> q_norm, k_norm;  // [D], x's dtype or f32
  float eps = 1e-6f;
  TensorView positions, cos_sin;  // as rotary_embedding: i32 [T], f32 [P, rot_dim]
  bool neox = true;
  TensorView slot_mapping;                    // i32 [T]
  std::optional<HostInts> host_slot_mapping;  // its values on the host, as write_kv_cache's overload
  TensorView qkv, k_normed;                   // scratch of the composed calls
};
void qkv_projection(const QkvProjection& a, Stream s = {});

}  // namespace bik

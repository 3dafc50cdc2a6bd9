// Which tensor-core engine bik::cuda::paged_attention runs (kernels: cuda/attention.cuh, mma.sync, and
// cuda/attention_sm90.cuh, wgmma). Host-only: tests and benchmarks ask it which kernel they measure.
#pragma once

#include <cstdint>

namespace bik::cuda {

// The sm_90 persistent grid's unit hand-out for a step (a launch rule: never changes a bit). 0: the static
// rounds, where the K/V read by several units (`shared_kv_bytes`, sequences with more than one pair of
// query blocks) fit the L2 (`l2_bytes`); else G >= 1: a counter hands the units out in groups of G
// sequence x KV-head columns, as many (at most 8) as keep G x `column_kv_bytes` (the largest such
// sequence's K/V for one KV head) within half the L2. BIK_ATTENTION_ORDER overrides it (docs/invariance.md).
int attention_order_group(int64_t shared_kv_bytes, int64_t column_kv_bytes, int64_t l2_bytes);

// True when the next paged_attention call on `device` runs the wgmma kernel: the device is sm_90, this
// build carries the sm_90a kernel, and the environment does not say BIK_ATTENTION_SM90=0 (read at each
// call, so an A/B comparison can switch it between calls). Makes `device` current.
bool attention_uses_wgmma(int device);

// Whether this build carries the sm_90a attention kernel in a form `device` can run (false on devices
// other than sm_90). Ignores the environment switch. Makes `device` current.
bool attention_wgmma_available(int device);

// Which kernel the next paged_attention call on `device` runs: 0 the mma.sync kernel
// (BIK_ATTENTION_SM90=0), 1 the one-warpgroup wgmma kernel (BIK_ATTENTION_SM90=1), 2 its
// software-pipelined variant (BIK_ATTENTION_SM90=2), 3 its warp-specialised variant
// (BIK_ATTENTION_SM90=3), 4 the latter with S(j + 1) issued behind P V(j) (BIK_ATTENTION_SM90=4),
// 5 variant 4 with its two consumer warpgroups taking turns at the tensor cores (BIK_ATTENTION_SM90=5),
// 6 variant 3 with S(j + 1) issued before the softmax of tile j (BIK_ATTENTION_SM90=6); 2 to 6 give
// bitwise the outputs of 1. Unset (or any other value), the default depends on the launch mode alone:
// variant 4 for a split-parallel launch (`split_launch`), 5 otherwise.
// Makes `device` current.
int attention_wgmma_variant(int device, bool split_launch = false);

}  // namespace bik::cuda

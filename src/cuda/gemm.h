// The CUDA GEMM behind bik::cuda::gemm, one entry per kernel family, so that tests and the benchmark can
// run a family directly (for example the sm_80 kernel on a Hopper GPU, where gemm() picks wgmma).
//
// Family by (dtype, arch), from policy::gemm_plan, never by M:
//   f32 inputs         -> gemm_f32:  SIMT, one sequential FMA chain over k per output (no TF32)
//   f16/bf16, sm_90    -> gemm_sm90: wgmma m64nNk16, TMA + mbarrier pipeline, warp-specialised, persistent
//   f16/bf16, sm_80..89 -> gemm_sm80: mma.sync m16n8k16, cp.async multistage pipeline
// Every family walks K from 0 upwards in its MMA's K step with one accumulator per output and no
// split of K; the M/N tile shape may change with M, the K order never does.
//
// Layouts: a [B, M, K] and w [B, N, K] with any strides. The fast paths need a unit K stride and 16-byte
// aligned rows. Otherwise gemm_sm90 packs the operand into zero-padded rows in stream-ordered scratch
// memory and runs the fast path on the copy; gemm_sm80 runs the same kernel with a scalar load path. Both
// put the same tiles in shared memory and run the same MMA sequence, so the bits are the same, only the
// speed differs. Nothing is rejected for its layout.
#pragma once
#include <string>
#include <vector>

#include "core/backend.h"

namespace bik::cuda {

void gemm_sm80(const GemmArgs& g, Stream s);  // f16/bf16 only; needs sm_80 or later
void gemm_sm90(const GemmArgs& g, Stream s);  // f16/bf16 only; needs sm_90 (built for sm_90a)
void gemm_f32(const GemmArgs& g, Stream s);   // f32 only

// The wgmma kernel with a named tile shape instead of the one gemm_sm90 picks for M (for the tests, which
// check that every tile gives the same bits, and for the benchmark's tile sweep).
std::vector<std::string> gemm_sm90_tiles();  // "64x32", ..., "swap64x144", ..., "pair192x64", ... (swap/pair: no bias)
void gemm_sm90_tile(const GemmArgs& g, Stream s, const std::string& tile);
// Experimental split tiles (gemm_sm90.cu): a pair of CTAs on each tile over K pieces [0, gemm_split_len(K))
// and the rest, whose bits are the pieces' F32 sums added by sum_partials, not the unsplit chain's. Run only
// by name (gemm_sm90_tile, bik bench gemm --tiles), never by gemm(); bf16/f16, K > 64, one batch,
// 16-byte aligned output rows.
std::vector<std::string> gemm_sm90_split_tiles();  // "split64x64", "split64x128", "split128x128"
uint64_t gemm_sm90_split_launches();
int64_t gemm_split_len(int64_t k);  // ceil(ceil(K / 64) / 2) * 64: piece 0's length
// The gated product of mm_silu_and_mul (g.n = 2 d, g.out [B, M, d]) in one wgmma kernel whose epilogue
// applies silu_and_mul (gemm_sm90.cuh, store_tile_gated); false, with nothing launched, where the tile
// gemm_sm90 picks cannot take that epilogue (gemm_silu_and_mul then runs the two calls).
bool gemm_sm90_gated(const GemmArgs& g, Stream s);
uint64_t gemm_sm90_gated_launches();  // so far in this process (tests check the fused path ran)
uint64_t gemm_sm90_pair_launches();  // plain swapped tiles of 192 weight rows in pairs ("pair192x..")
uint64_t gemm_sm90_glu_swap_launches();  // gated products on the gated swapped tiles (BIK_GEMM_GLU_SWAP)
// Cluster launches of the wgmma kernel so far (BIK_GEMM_CLUSTER; tests check the switch took effect).
uint64_t gemm_sm90_cluster_launches();
// Ping-pong launches of the wgmma kernel so far (BIK_GEMM_PINGPONG; tests check the switch took effect).
uint64_t gemm_sm90_pingpong_launches();
// Swapped-tile launches so far (BIK_GEMM_SWAP and the swap64x* tiles; tests check the path was taken).
uint64_t gemm_sm90_swapped_launches();
// The q|k|v projection with its heads finished in the GEMM's epilogue (qkv_projection_fused, gemm_heads.cuh):
// launches so far, and the tile it runs [m, k] x [n, k] on with heads of head_dim (BIK_QKV_TILE included).
uint64_t gemm_sm90_heads_launches();
std::string qkv_heads_tile(int64_t m, int64_t n, int64_t k, int head_dim, int device);

// Name of the kernel configuration gemm() runs for this problem, e.g. "sm90 128x256 tma".
std::string gemm_config_name(const GemmArgs& g);
// The configuration of the gated product (mm_silu_and_mul) whose plain [M, 2 d] product g describes.
std::string gemm_gated_config_name(const GemmArgs& g);

// Test and benchmark helper: fills a contiguous or row-strided device tensor with uniform values in
// [-1, 1) from a counter-based hash of (seed, element index), rounded to the tensor's dtype.
void gemm_fill_uniform(const TensorView& t, uint64_t seed, Stream s = {});

}  // namespace bik::cuda

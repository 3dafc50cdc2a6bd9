// Hopper GEMM: wgmma (m64nNk16, F32 accumulate) fed by the tensor memory accelerator (TMA) through an
// mbarrier ring of shared-memory stages; one producer warpgroup, one or two consumer warpgroups, and a
// persistent grid that walks the output tiles in a fixed order.
//
// Why it is batch-invariant: every output element lives in one accumulator register of one consumer
// thread for the whole K range of its tile. K is walked from 0 upwards in stages of 64, four wgmma K
// steps of 16 per stage, each adding into the same registers; the part past K arrives zero-filled (the
// copy engine fills out-of-bounds boxes with zeros). Nothing splits K. The tile shape (BM x BN, and so
// the wgmma N) may change with M; it only moves outputs between threads. Every configuration uses
// wgmma, for every M, so the tensor-core arithmetic is the same instruction family throughout.
//
// Layout in shared memory: each stage holds A [BM rows][64 k] and W [BN rows][64 k], 128 bytes a row,
// in the 128-byte swizzle pattern (16-byte chunk c of row r sits at chunk c ^ (r % 8)), which is what
// the TMA box writes with CU_TENSOR_MAP_SWIZZLE_128B and what the wgmma descriptors below describe.
// When TMA cannot describe an operand (K stride != 1, rows not 16-byte aligned), the host packs it into
// zero-padded rows first (gemm_sm90.cu); should that scratch allocation fail, the producer warps write the
// very same bytes with ordinary loads and stores: same tiles, same wgmma sequence, same bits.
//
// Cluster mode (kCluster; the host's default for long-K decode-sized products, BIK_GEMM_CLUSTER in
// gemm_sm90.cu): CTAs run in clusters of two that compute two neighbouring tiles sharing one operand,
// either the same W tile for M-tiles 2i and 2i + 1 (share_w) or the same A tile for N-tiles 2j and 2j + 1.
// Each CTA copies half of the shared box from global memory and the copy engine multicasts it into the
// same shared-memory offset of both CTAs, so the shared operand crosses L2 once per pair instead of twice.
// The stage contents are the bytes the one-CTA kernel would load (rows of a tile past M or N may hold
// other rows, or in either kernel stale bytes, instead of zeros; their outputs are never stored), so
// every stored sum keeps its bits. The protocol, per stage use:
//   full[s]  (count 1):  the CTA's own producer arrives with expect_tx(the stage's bytes); its own copy and
//                        its half of the shared box, and the partner's multicast half, complete the bytes.
//   empty[s] (count 2 x consumer warps): every consumer warp of BOTH CTAs arrives, because the producer's
//                        multicast writes the partner's stage too; it may refill s only when both are done.
// Barriers are initialised before a cluster barrier that precedes any remote arrive or multicast; at the
// end, the producer waits until every stage is released by both CTAs (so no arrive is still on its way
// to this CTA's barriers) and then all threads meet at a cluster barrier before any CTA exits.
//
// Ping-pong mode (Config::kPingPong, opt-in: BIK_GEMM_PINGPONG=1, for the tiles with two consumers): the
// two consumer warpgroups no longer split one 128-row tile; each computes whole 64 x BN tiles, consumer c
// the tiles c, c + 2, c + 4, ... of its CTA's walk, and the two take turns at the tensor cores, so that
// one's drain and epilogue run while the other's main loop keeps the tensor cores busy. A stage then holds
// 64 rows of A (Config<64, BN, STAGES, true>, with more stages in the same shared memory), and the
// producer is the one-CTA producer unchanged: it fills the stages in the walk's tile order, which is the
// order the turns consume them in. Every 64-row slab of the output gets the m64nBNk16 sequence over the
// same K stages from zero accumulators, and the same epilogue, as in the 128-row tile that holds it in
// the default kernel, so every stored value keeps its bits; only the walk order of the slabs changes.
// The turns use two named barriers, kTurnBar + c for consumer c, each of 256 threads (consumer c waits
// with bar.sync, its partner arrives with bar.arrive):
//   - consumer c's turn on its tile begins with bar.sync on kTurnBar + c; it waits for, and issues the
//     wgmmas of, every K stage of the tile; then, if the CTA's walk has a next tile, it arrives on the
//     partner's barrier, before draining its own wgmmas and storing its tile;
//   - consumer 1 arrives once before everything (when the CTA has a tile), which opens consumer 0's first.
// So every tile's turn gets exactly one arrival and one bar.sync (no barrier is left partly counted when
// the CTA exits, and an arrival never meets a barrier whose previous round is still open), and the turns
// issue strictly in walk order: tile 0, 1, 2, ...
// The strict order is also what keeps the full barriers sound. Stage use u = L * num_kb + kb (tile L of
// the CTA's walk, K stage kb) runs on across both consumers; a wait on full[u % STAGES] by parity tells
// the phase of use u only from that of use u - STAGES, so use u - STAGES must have landed before the wait
// starts. It has: it belongs either to the same turn (waited for earlier in it) or to an earlier turn,
// and every earlier turn waited for all of its stages before it let the next turn begin. Each use is read
// by one warpgroup only, so empty[s] counts the 4 warps of one consumer.
// Why it cannot hang: a turn waits (a) for the arrival of the turn before it, which comes once that turn
// has issued, and (b) for its stages, which the producer fills once use u - STAGES is released: by the
// same turn earlier on (a consumer releases use u - 1 once it has issued use u and use u - 1's wgmmas
// are done, and STAGES >= 2), or by an earlier turn's consumer once its own wgmmas have drained, which
// waits on nothing but the tensor cores. So every wait is on something earlier in the walk, and consumer
// 1's opening arrival waits on nothing.
#pragma once
#include <type_traits>
#include <cuda.h>  // CUtensorMap (a plain struct; nothing from the driver library is linked)

#include "cuda/gemm_common.cuh"
#include "cuda/gemm_heads.cuh"
#include "cuda/gemm_sm90_wgmma.cuh"
#include "cuda/launch.cuh"
#include "cuda/silu.cuh"
#include "cuda/sm90_sync.cuh"
#include "cuda/vec_io.cuh"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define BIK_SM90_DEVICE_CODE 1  // wgmma, TMA and setmaxnreg exist only in the sm_90a pass
#endif

namespace bik::cuda::gemm_detail::sm90 {

constexpr int kBK = 64;  // K per stage: 64 halves = one 128-byte swizzle row
constexpr int kRowBytes = 128;
// A swapped tile's epilogue staging a consumer warp (Config::kEpiWarpBytes): store_tile_columns' 16 rows at
// a pitch of 48 bytes.
constexpr int kSwappedEpiWarpBytes = 16 * 48;
constexpr int kTurnBar = 1;  // ping-pong turns: named barriers 1 and 2 (0 is __syncthreads)

// BM x BN output tiles through a ring of STAGES stages. Default: BM / 64 consumer warpgroups share each
// tile, 64 rows x BN each. kPingPong_ (BM = 64 only): two consumer warpgroups that take turns, each
// computing whole tiles (see the top of this file).
// kSwapped_: the host hands the kernel the transposed product out^T = w a^T (the weight as A, the activations
// as W: see the swapped tiles in gemm_sm90.cu), so tile rows are output columns and tile columns output
// rows; BN, the activation rows of a tile, is any multiple of 16 (one wgmma of that width, wgmma_cols), and
// the epilogue writes tile columns as output rows (store_tile_columns).
// kSwapGlu_ (swapped only): the gated product (Problem::glu) in its transposed form. The weight's stage rows
// come interleaved by a four-dimensional tensor map (the host's make_glu_map): each group of 16 tile rows
// holds 8 gate rows and then the up rows of the same 8 outputs, so every consumer thread holds the gate
// and the up sums of its outputs (wgmma D rows r and r + 8) and the epilogue (store_tile_columns_gated)
// writes silu_mul of the two. The host hands the kernel the transposed problem with glu off: its M is the
// weight's 2 d rows in that interleaved order.
template <int BM_, int BN_, int STAGES_, bool kPingPong_ = false, bool kSwapped_ = false, bool kSwapGlu_ = false>
struct Config {
  static constexpr int BM = BM_, BN = BN_, STAGES = STAGES_;
  static constexpr bool kPingPong = kPingPong_, kSwapped = kSwapped_, kSwapGlu = kSwapGlu_;
  static_assert(!kSwapGlu || kSwapped, "the interleaved gated form is a swapped tile");
  static constexpr int kConsumers = kPingPong ? 2 : BM / 64;
  static constexpr int kStageReaders = kPingPong ? 1 : kConsumers;  // consumer warpgroups that read each stage
  static constexpr int kThreads = 128 * (kConsumers + 1);
  static constexpr int kStageA = BM * kRowBytes, kStageW = BN * kRowBytes;
  static constexpr int kStageBytes = kStageA + kStageW;
  // Epilogue staging: per consumer warp, 16 rows of 128 bytes (+16 bytes of padding against bank
  // conflicts), through which finished rows leave as whole 16-byte pieces. A swapped tile's column
  // epilogues need only 16 rows at a pitch of 48 bytes (store_tile_columns; the gated one 32 x 16 bytes),
  // so its stages take the rest (the 192 x 128 gated tile: 5 stages instead of 4).
  static constexpr int kEpiRowBytes = 144;
  static constexpr int kEpiWarpBytes = kSwapped ? kSwappedEpiWarpBytes : 16 * kEpiRowBytes;
  static constexpr int kBarBytes = (2 * STAGES * 8 + 127) / 128 * 128;
  // stages + full/empty barriers + staging + slack to align the stages to the 1024-byte swizzle period
  static constexpr int kSmemBytes = STAGES * kStageBytes + kBarBytes + kConsumers * 4 * kEpiWarpBytes + 1024;
  // Three consumers (192 rows) only for swapped tiles, run in pairs (gemm_sm90_swap_wide.cu).
  static_assert(BM == 64 || BM == 128 || (kSwapped && BM == 192), "one, two or (swapped) three consumers");
  static_assert(!kPingPong || BM == 64, "ping-pong consumers take whole 64-row tiles");
  // wgmma N is a multiple of 8 up to 256 and a TMA box has at most 256 rows; the staged epilogue walks
  // BN in chunks of 32 (f32 out) or 64 (16-bit out) columns, so BN is 32, 64, 128, 192 or 256; a swapped
  // tile's column epilogue walks 16 columns at a time, so there any multiple of 16.
  static_assert((kSwapped ? BN % 16 : BN % 32) == 0 && BN <= 256, "BN: a multiple of 32 (16 swapped), at most 256");
  // Every stage (and its W half) must start on the 1024-byte period of the 128-byte swizzle.
  static_assert(kStageA % 1024 == 0 && kStageBytes % 1024 == 0, "stages keep the swizzle period");
  static_assert(kSmemBytes <= 227 * 1024, "more shared memory than a Hopper CTA may opt in to");
};

struct Params {
  Problem p;
  TileOrder order;
  int total_tiles;
  int tma;                   // 1: the copy engine loads tiles; 0: the producer warps do
  int a_batched, w_batched;  // 0: the operand is one matrix shared by every batch (batch stride 0)
  int out_vec16;             // 1: out rows are 16-byte aligned with unit N stride (staged 16-byte stores)
  int share_w;               // cluster mode only: 1: a pair is two M-tiles sharing W; 0: two N-tiles sharing A
  int stage_tx;              // with TMA: the bytes a stage's boxes deliver to each CTA (see load_stage)
  int a_small;               // cluster mode sharing A, M <= BM / 2: each CTA copies A's M rows, for both
  HeadsEpilogue heads;       // kernels with kHeadDim > 0 only (gemm_heads.cuh)
  int split_kb;              // split mode only: K stages of piece 0 (rank 0 of a pair); rank 1 runs the rest
  int m_inside;              // cluster mode: the last M-tile's A box kept inside the matrix (m_base)
  // Batches that are pieces of one row's K (make_map's `kofs`: a [P, M, K/P] view of an [M, K] matrix):
  // batch b's K-block kb is at K coordinate b * a_kofs + kb * 64 of a two-dimensional map; 0: batch b is
  // the map's third coordinate.
  int a_kofs, w_kofs;
};

// Split mode (gemm_kernel's kSplit, experimental: bik bench gemm's split tiles, not the library's rule):
// shared memory past the tile's own for the exchange of half a tile's sums between the two CTAs of a pair:
// two barriers (padded to 128 bytes), then BN / 4 floats for every consumer thread.
template <class Cfg>
constexpr int split_smem_bytes() {
  return Cfg::kSmemBytes + 128 + Cfg::kConsumers * 128 * Cfg::BN;
}

#ifdef BIK_SM90_DEVICE_CODE
using sm90_sync::fence_proxy_async;
using sm90_sync::mbar_arrive;
using sm90_sync::mbar_arrive_expect_tx;
using sm90_sync::mbar_init;
using sm90_sync::mbar_wait;
using sm90_sync::pin;
using sm90_sync::wgmma_commit;
using sm90_sync::wgmma_fence;
using sm90_sync::wgmma_wait;

__device__ __forceinline__ void tma_load(uint32_t dst, const CUtensorMap* map, uint32_t bar, int k, int row, int b) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], [%2];\n" ::
          "r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(k), "r"(row), "r"(b)
      : "memory");
}
// The same box copied into the same shared-memory offset of every CTA of the cluster named in `mask`,
// completing bytes on the barrier at the same offset in each of them.
__device__ __forceinline__ void tma_load_multicast(uint32_t dst, const CUtensorMap* map, uint32_t bar, int k, int row,
                                                   int b, uint16_t mask) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1, {%3, %4, "
      "%5}], [%2], %6;\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(k), "r"(row), "r"(b), "h"(mask)
      : "memory");
}
// The gated swapped tile's weight boxes (Config::kSwapGlu): a four-dimensional map (K, 8 rows, gate / up,
// groups of 8 outputs), copied from group `group` on; the box lands as 16-row groups of 8 gate rows then
// 8 up rows, 128 bytes a row in the same 128-byte swizzle as a two-dimensional box of as many rows.
__device__ __forceinline__ void tma_load_glu(uint32_t dst, const CUtensorMap* map, uint32_t bar, int k, int group) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, %6}], "
      "[%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(k), "r"(0), "r"(0), "r"(group)
      : "memory");
}
__device__ __forceinline__ void tma_load_glu_multicast(uint32_t dst, const CUtensorMap* map, uint32_t bar, int k,
                                                       int group, uint16_t mask) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1, {%3, "
      "%4, %5, %6}], [%2], %7;\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(k), "r"(0), "r"(0), "r"(group), "h"(mask)
      : "memory");
}
// Arrives on the barrier at the same offset in CTA `cta` of the cluster (this CTA included). The consumers
// use it to release a stage once their wgmmas reading it have completed (wait_group), so no access of
// theirs is left to order against the refill: the arrive keeps the default CTA-scope release. A
// cluster-scope release (.release.cluster) compiles to a GPU-wide memory fence before every arrive
// (MEMBAR.ALL.GPU in the SASS), which stalled each consumer warp on the epilogue's outstanding stores
// and made the cluster kernel about twice as slow as one CTA a tile.
__device__ __forceinline__ void mbar_arrive_cluster(uint32_t bar, uint32_t cta) {
  asm volatile(
      "{\n.reg .b32 remote;\n"
      "mapa.shared::cluster.u32 remote, %0, %1;\n"
      "mbarrier.arrive.shared::cluster.b64 _, [remote];\n"
      "}\n" ::"r"(bar),
      "r"(cta)
      : "memory");
}
__device__ __forceinline__ uint32_t cluster_ctarank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return r;
}
__device__ __forceinline__ uint32_t cluster_id_x() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%clusterid.x;\n" : "=r"(r));
  return r;
}
__device__ __forceinline__ uint32_t cluster_count_x() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%nclusterid.x;\n" : "=r"(r));
  return r;
}
// The address of the same shared-memory location in CTA `cta` of the cluster.
__device__ __forceinline__ uint32_t map_to_cta(uint32_t addr, uint32_t cta) {
  uint32_t r;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(r) : "r"(addr), "r"(cta));
  return r;
}
// 16 bytes into another CTA's shared memory (both addresses from map_to_cta), counted as complete_tx bytes
// on that CTA's barrier `bar` once they have landed there.
__device__ __forceinline__ void st_async_16(uint32_t addr, float a, float b, float c, float d, uint32_t bar) {
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.b32 [%0], {%1, %2, %3, %4}, [%5];\n" ::"r"(
                   addr),
               "r"(__float_as_uint(a)), "r"(__float_as_uint(b)), "r"(__float_as_uint(c)), "r"(__float_as_uint(d)),
               "r"(bar)
               : "memory");
}
// Every thread of both CTAs (not .aligned: the producer warp reaches it from divergent paths).
__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release;\nbarrier.cluster.wait.acquire;\n" ::: "memory");
}
// Named barrier `id` of `threads` threads (a multiple of 32): bar.sync returns once that many have
// arrived, the caller included; bar.arrive counts the caller and returns at once.
__device__ __forceinline__ void named_bar_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_bar_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void st_shared_16(uint32_t dst, uint4 v) {
  asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(dst), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
               : "memory");
}
// Shared-memory matrix descriptor of a K-major tile in the 128-byte swizzle: rows of 128 bytes, groups of
// 8 rows 1024 bytes apart (stride byte offset); the leading byte offset is unused in this mode. A K step
// of 16 halves (32 bytes) inside the 64-wide stage is +2 on the 16-byte-unit start address.
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr) {
  return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t(1) << 16) | (uint64_t(1024 >> 4) << 32) | (uint64_t(1) << 62);
}
#endif

// 16 bytes from shared memory (the epilogues' staging rows).
__device__ __forceinline__ uint4 ld_shared_16(uint32_t src) {
  uint4 v;
  asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "r"(src)
               : "memory");
  return v;
}

#ifdef BIK_SM90_DEVICE_CODE
// The warp's 16 x W block (W = BN, or BN / 2 for a gated tile) when it lies wholly inside the output,
// without a bias, to a 16-bit type: the
// same roundings as store_tile_staged (one cvt of each pair of sums), moved into the staging rows by
// stmatrix (four 8 x 8 blocks per instruction, straight from the wgmma layout) and out as 16-byte
// pieces with no bounds or bias checks; about a tenth of the general path's instructions, which the
// tensor cores otherwise wait out between tiles. stmatrix .x4 takes the row addresses of block q from
// lanes 8q .. 8q + 7; block order: rows 0-7 and 8-15 of columns 0-7, then of columns 8-15. Chunks of
// 64 columns, or of 32 where W is an odd multiple of 32 (the gated 128x192 tile's 96).
template <class Cfg, typename O, int W>
__device__ __forceinline__ void store_tile_interior(const Problem& p, const float (&acc)[Cfg::BN / 2],
                                                    uint32_t staging, int b, int row0, int col0, int lane) {
  static_assert(sizeof(O) == 2 && W % 32 == 0 && W <= Cfg::BN, "16-bit outputs in chunks of 32 or 64 columns");
  constexpr int kChunk = W % 64 == 0 ? 64 : 32, kPiecesPerRow = kChunk * 2 / 16;
  const uint32_t lane_row = staging + ((lane & 7) + 8 * ((lane >> 3) & 1)) * Cfg::kEpiRowBytes + (lane >> 4) * 16;
  O* out = static_cast<O*>(p.out) + int64_t(b) * p.o_sb + int64_t(row0) * p.o_sm + col0;
  auto pack = [&](int i) {
    const typename Pair<O>::type pr = Pair<O>::make(acc[i], acc[i + 1]);
    return *reinterpret_cast<const uint32_t*>(&pr);
  };
#pragma unroll
  for (int chunk = 0; chunk < W / kChunk; ++chunk) {
#pragma unroll
    for (int jj = 0; jj < kChunk / 16; ++jj) {
      const int j = chunk * (kChunk / 8) + 2 * jj;  // the block's first group of 8 columns
      asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(lane_row + jj * 32),
                   "r"(pack(4 * j)), "r"(pack(4 * j + 2)), "r"(pack(4 * j + 4)), "r"(pack(4 * j + 6))
                   : "memory");
    }
    __syncwarp();
#pragma unroll
    for (int q = 0; q < 16 * kPiecesPerRow / 32; ++q) {
      const int i = q * 32 + lane, row = i / kPiecesPerRow, piece = i % kPiecesPerRow;
      st_global_16(out + int64_t(row) * p.o_sm + chunk * kChunk + piece * 8,
                   ld_shared_16(staging + row * Cfg::kEpiRowBytes + piece * 16));
    }
    __syncwarp();
  }
}
#endif

#ifdef BIK_SM90_DEVICE_CODE
// The warp's 16 x W block (W = BN, or BN / 2 for a split tile's half) when it lies wholly inside the output,
// without a bias, to f32: the values store_tile_staged writes (no rounding), through the staging rows in
// chunks of 32 columns (16 rows of 128 bytes) and out as 16-byte pieces, with no bounds or bias checks and
// one 64-bit address per lane (the general path spent about 66 instructions on each 16-byte store of an
// interior tile: the lm-head's epilogue took 15% of its consumers' time, ncu on an H200). The staging rows
// are 128 bytes, the 16-byte piece c of row r at piece c ^ (2 r mod 8): each half-warp's eight-byte writes
// (rows r .. r + 3, pieces 2 jj, 2 jj + 1) and each quarter-warp's 16-byte reads (one row) then meet
// every bank once.
template <class Cfg, int W>
__device__ __forceinline__ void store_tile_interior_f32(const Problem& p, const float (&acc)[Cfg::BN / 2],
                                                        uint32_t staging, int b, int row0, int col0, int lane) {
  static_assert(W % 32 == 0 && W <= Cfg::BN, "f32 outputs in chunks of 32 columns");
  static_assert(16 * 128 <= Cfg::kEpiWarpBytes, "16 staging rows of 128 bytes a warp");
  auto at = [staging](int row, int piece) { return staging + row * 128 + ((piece ^ ((row * 2) & 7)) << 4); };
  const int r = lane >> 2, c = lane & 3;         // writes: rows r and r + 8, columns 8 j + 2 c, + 1
  const int rr = lane >> 3, piece = lane & 7;    // reads: rows 4 q + rr, the 16-byte piece `piece`
  float* out = static_cast<float*>(p.out) + int64_t(b) * p.o_sb + int64_t(row0 + rr) * p.o_sm + col0 + piece * 4;
  const int64_t four_rows = 4 * p.o_sm;
#pragma unroll
  for (int chunk = 0; chunk < W / 32; ++chunk) {
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) {
      const int j = chunk * 4 + jj;  // the group of 8 columns
#pragma unroll
      for (int h = 0; h < 2; ++h)
        asm volatile("st.shared.v2.b32 [%0], {%1, %2};\n" ::"r"(at(r + 8 * h, 2 * jj + (c >> 1)) + (c & 1) * 8),
                     "r"(__float_as_uint(acc[4 * j + 2 * h])), "r"(__float_as_uint(acc[4 * j + 2 * h + 1]))
                     : "memory");
    }
    __syncwarp();
#pragma unroll
    for (int q = 0; q < 4; ++q) st_global_16(out + q * four_rows + chunk * 32, ld_shared_16(at(4 * q + rr, piece)));
    __syncwarp();
  }
}
#endif

#ifdef BIK_SM90_DEVICE_CODE
// A swapped tile's warp block (Config::kSwapped): 16 tile rows (output columns row0.., contiguous: o_sm is 1
// in the transposed problem) by BN tile columns (output rows col0.., o_sn apart), to a 16-bit output
// without a bias (Params::out_vec16 says the host checked that, the alignment included). Each group of 16
// tile columns goes through stmatrix .trans into 16 staging rows of 16 outputs (32 bytes at a pitch of 48,
// which keeps both the stmatrix rows and the 16-byte reads free of bank conflicts), then out as one
// 16-byte piece a lane: lanes c and c + 16 write the two halves of output row col0 + 16 g + c. The same
// roundings as store_pair (one cvt of each pair of sums).
template <class Cfg, typename O>
__device__ __forceinline__ void store_tile_columns(const Problem& p, const float (&acc)[Cfg::BN / 2],
                                                   uint32_t staging, int b, int row0, int col0, int lane) {
  static_assert(sizeof(O) == 2 && Cfg::BN % 16 == 0, "16-bit outputs, 16 tile columns at a time");
  constexpr int kPitch = 48;
  static_assert(16 * kPitch <= Cfg::kEpiWarpBytes, "16 staging rows of 48 bytes a warp");
  // stmatrix .x4 .trans: lanes 8q .. 8q + 7 address the stored rows of block q, and stored row i of a
  // block is its column i: blocks (rows 0-7 | 8-15) x (columns 0-7 | 8-15) land in staging rows 0-7 /
  // 8-15 at byte 0 / 16.
  const uint32_t lane_row = staging + ((lane & 7) + 8 * (lane >> 4)) * kPitch + ((lane >> 3) & 1) * 16;
  const int c = lane & 15, half = lane >> 4;
  const int r = row0 + half * 8;  // the piece's first output column
  O* out = static_cast<O*>(p.out) + int64_t(b) * p.o_sb + r;
  auto pack = [&](int i) {
    const typename Pair<O>::type pr = Pair<O>::make(acc[i], acc[i + 1]);
    return *reinterpret_cast<const uint32_t*>(&pr);
  };
#pragma unroll
  for (int g = 0; g < Cfg::BN / 16; ++g) {
    const int j = 2 * g;  // the groups of 8 tile columns j and j + 1
    asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(lane_row),
                 "r"(pack(4 * j)), "r"(pack(4 * j + 2)), "r"(pack(4 * j + 4)), "r"(pack(4 * j + 6))
                 : "memory");
    __syncwarp();
    const int col = col0 + g * 16 + c;
    if (col < p.n && r < p.m) {
      const uint4 v = ld_shared_16(staging + c * kPitch + half * 16);
      O* dst = out + int64_t(col) * p.o_sn;
      if (r + 8 <= p.m) {
        st_global_16(dst, v);
      } else {
        const O* e = reinterpret_cast<const O*>(&v);
        for (int q = 0; q < 8 && r + q < p.m; ++q) dst[q] = e[q];
      }
    }
    __syncwarp();
  }
}
#endif

#ifdef BIK_SM90_DEVICE_CODE
// A gated swapped tile's warp block (Config::kSwapGlu): tile rows row0 .. row0 + 7 hold the gate sums and
// row0 + 8 .. row0 + 15 the up sums of the 8 outputs from row0 / 2 on (o_sm is 1), by BN tile columns (the
// output rows col0.., o_sn apart). Every thread holds a gate sum and its up sum (D rows lane / 4 and
// lane / 4 + 8); each is rounded to T as a store of the plain product would round it, silu_mul takes the
// two and the result is rounded once more: the bits of store_tile_gated, and so of mm then silu_and_mul.
// The 8 x 8 blocks of results (8 outputs by 8 output rows) go through stmatrix .trans into staging rows of
// one output row's 8 outputs (16 bytes), 32 at a time, and out as one 16-byte piece a lane. The host
// checked the alignment (16-byte output rows, 2 d a multiple of BM).
template <class Cfg, typename T>
__device__ __forceinline__ void store_tile_columns_gated(const Problem& p, const float (&acc)[Cfg::BN / 2],
                                                         uint32_t staging, int b, int row0, int col0, int lane) {
  constexpr int kGroups = Cfg::BN / 8;  // groups of 8 tile columns
  static_assert(Cfg::BN % 16 == 0, "16 tile columns at a time");
  static_assert(32 * 16 <= Cfg::kEpiWarpBytes, "32 staging rows of 16 bytes a warp");
  uint32_t v[kGroups];
#pragma unroll
  for (int j = 0; j < kGroups; ++j) {
    const float s0 = silu_mul(to_f32(from_f32<T>(acc[4 * j])), to_f32(from_f32<T>(acc[4 * j + 2])));
    const float s1 = silu_mul(to_f32(from_f32<T>(acc[4 * j + 1])), to_f32(from_f32<T>(acc[4 * j + 3])));
    const typename Pair<T>::type pr = Pair<T>::make(s0, s1);
    v[j] = *reinterpret_cast<const uint32_t*>(&pr);
  }
  T* out = static_cast<T*>(p.out) + int64_t(b) * p.o_sb + row0 / 2;
  // stmatrix .trans: lanes 8q .. 8q + 7 address the stored rows of block q, and stored row i of a block is
  // its column i, so lane l's address is staging row l, the tile column 8q + i of the 32.
  const uint32_t row_at = staging + lane * 16;
#pragma unroll
  for (int g = 0; g < kGroups / 4; ++g) {
    asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(row_at),
                 "r"(v[4 * g]), "r"(v[4 * g + 1]), "r"(v[4 * g + 2]), "r"(v[4 * g + 3])
                 : "memory");
    __syncwarp();
    const int col = col0 + 32 * g + lane;
    if (col < p.n) st_global_16(out + int64_t(col) * p.o_sn, ld_shared_16(row_at));
    __syncwarp();
  }
  if constexpr (kGroups % 4 != 0) {  // the last 16 tile columns: two blocks, addressed by lanes 0 .. 15
    constexpr int g = kGroups / 4;
    asm volatile("stmatrix.sync.aligned.m8n8.x2.trans.shared.b16 [%0], {%1, %2};\n" ::"r"(staging + (lane & 15) * 16),
                 "r"(v[4 * g]), "r"(v[4 * g + 1])
                 : "memory");
    __syncwarp();
    const int col = col0 + 32 * g + lane;
    if (lane < 16 && col < p.n) st_global_16(out + int64_t(col) * p.o_sn, ld_shared_16(row_at));
    __syncwarp();
  }
}
#endif

// One warp's 16 x W block of finished sums (acc[0 .. W / 2) in the wgmma D layout; W = BN but for the
// gated epilogue) to out[b, row0.., col0..]. The bias is added and the value
// rounded once (exactly as store_pair does), written to the warp's staging rows, and copied out as
// 16-byte pieces: a warp store then covers whole 128-byte lines instead of 8 scattered 16-byte bits.
// Needs out rows 16-byte aligned with a unit N stride (Params::out_vec16); pieces that cross N are
// written element by element.
template <class Cfg, typename T, typename O, int W = Cfg::BN>
__device__ __forceinline__ void store_tile_staged(const Problem& p, const float (&acc)[Cfg::BN / 2], uint32_t staging,
                                                  int b, int row0, int col0, int lane) {
  constexpr int BN = W;  // the block's width
  constexpr int kRowMax = 128 / int(sizeof(O));  // columns of one 128-byte staging row
  constexpr int kChunk = BN <= kRowMax ? BN : BN % kRowMax == 0 ? kRowMax : 32;  // columns per pass
  constexpr int kPieceElems = 16 / int(sizeof(O));
  constexpr int kPiecesPerRow = kChunk / kPieceElems;
  constexpr int kPieces = 16 * kPiecesPerRow;
  static_assert(BN % kChunk == 0, "the staged epilogue walks BN in whole chunks");
#ifdef BIK_SM90_DEVICE_CODE
  if constexpr (sizeof(O) == 2 && (BN % 64 == 0 || BN != Cfg::BN)) {
    if (p.bias == nullptr && row0 + 16 <= p.m && col0 + BN <= p.n) {
      store_tile_interior<Cfg, O, BN>(p, acc, staging, b, row0, col0, lane);
      return;
    }
  }
  if constexpr (sizeof(O) == 4 && BN % 32 == 0) {
    if (p.bias == nullptr && row0 + 16 <= p.m && col0 + BN <= p.n) {
      store_tile_interior_f32<Cfg, BN>(p, acc, staging, b, row0, col0, lane);
      return;
    }
  }
#endif
  const int r = lane >> 2, c2 = (lane & 3) * 2;
#pragma unroll
  for (int chunk = 0; chunk < BN / kChunk; ++chunk) {
#pragma unroll
    for (int jj = 0; jj < kChunk / 8; ++jj) {
      const int j = chunk * (kChunk / 8) + jj;
      const int col = col0 + j * 8 + c2;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float v0 = acc[4 * j + 2 * h], v1 = acc[4 * j + 2 * h + 1];
        if (col < p.n) v0 = add_bias<T>(p, col, v0);
        if (col + 1 < p.n) v1 = add_bias<T>(p, col + 1, v1);
        const typename Pair<O>::type pr = Pair<O>::make(v0, v1);
        const uint32_t at = staging + (r + 8 * h) * Cfg::kEpiRowBytes + (jj * 8 + c2) * int(sizeof(O));
        if constexpr (sizeof(O) == 4) {
          asm volatile("st.shared.v2.b32 [%0], {%1, %2};\n" ::"r"(at), "r"(__float_as_uint(pr.x)),
                       "r"(__float_as_uint(pr.y))
                       : "memory");
        } else {
          asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(at), "r"(*reinterpret_cast<const uint32_t*>(&pr)) : "memory");
        }
      }
    }
    __syncwarp();
#pragma unroll
    for (int i = lane; i < kPieces; i += 32) {
      const int pr_row = i / kPiecesPerRow, piece = i % kPiecesPerRow;
      const int m = row0 + pr_row, n = col0 + chunk * kChunk + piece * kPieceElems;
      if (m < p.m && n < p.n) {
        const uint4 v = ld_shared_16(staging + pr_row * Cfg::kEpiRowBytes + piece * 16);
        O* dst = static_cast<O*>(p.out) + int64_t(b) * p.o_sb + int64_t(m) * p.o_sm + n;
        if (n + kPieceElems <= p.n) {
          st_global_16(dst, v);
        } else {
          const O* e = reinterpret_cast<const O*>(&v);
          for (int q = 0; q < kPieceElems && n + q < p.n; ++q) dst[q] = e[q];
        }
      }
    }
    __syncwarp();
  }
}

// The gated epilogue (Problem::glu): the tile's columns [0, BN / 2) hold the gate sums of output columns
// tn * BN / 2.., columns [BN / 2, BN) the up sums of the same outputs, so every thread holds both halves
// of its outputs (D-layout groups j and j + BN / 16: registers i and i + BN / 4). Each sum is rounded to
// T, exactly as a store of the plain product would round it, silu_mul takes the two (the formula of
// silu_and_mul), and the results, in the gate's registers, leave as a 16 x BN / 2 block of out [.., n / 2]
// through the same stores (the value rounded once more, as silu_and_mul's store does). So out holds the
// bits of mm then silu_and_mul; the [M, n] product never reaches memory.
template <class Cfg, typename T>
__device__ __forceinline__ void store_tile_gated(const Problem& p, bool out_vec16, float (&acc)[Cfg::BN / 2],
                                                 uint32_t staging, int b, int row0, int tn, int lane) {
  constexpr int H = Cfg::BN / 2;  // output columns of the tile
  static_assert(!Cfg::kSwapped && H % 32 == 0, "gated tiles: unswapped, BN a multiple of 64");
#pragma unroll
  for (int i = 0; i < H / 2; ++i) acc[i] = silu_mul(to_f32(from_f32<T>(acc[i])), to_f32(from_f32<T>(acc[i + H / 2])));
  Problem q = p;
  q.n = p.n / 2;
  if (out_vec16) {
    store_tile_staged<Cfg, T, T, H>(q, acc, staging, b, row0, tn * H, lane);
    return;
  }
  const int row = row0 + (lane >> 2), col0 = tn * H + (lane & 3) * 2;
#pragma unroll
  for (int j = 0; j < H / 8; ++j) {
    store_pair<T>(q, b, row, col0 + j * 8, acc[4 * j], acc[4 * j + 1]);
    store_pair<T>(q, b, row + 8, col0 + j * 8, acc[4 * j + 2], acc[4 * j + 3]);
  }
}

// kCluster: launched in clusters of two along x (see the top of this file); prm.total_tiles then counts
// pairs of tiles, prm.order walks the grid of pairs, and map_a or map_w (the shared one) has half-height boxes.
// kHeadDim > 0: the q|k|v epilogue of gemm_heads.cuh on heads of kHeadDim columns (prm.heads), nothing
// stored to p.out.
// kSplit (experimental): clusters of two along x as well, both CTAs of a pair on the same tiles, rank 0 over
// K stages [0, prm.split_kb), rank 1 over the rest; each then finishes half of the tile's columns (rank 0 the
// first half) with piece 0 + piece 1 of every sum, the partner's piece received through st.async. The bits
// are those of the two pieces as two products with F32 outputs summed by sum_partials, not the unsplit
// chain's. Shared memory: split_smem_bytes<Cfg>().
template <class Cfg, typename T, bool kCluster = false, int kHeadDim = 0, bool kSplit = false>
__global__ void __launch_bounds__(Cfg::kThreads, 1)
    gemm_kernel(const __grid_constant__ Params prm, const __grid_constant__ CUtensorMap map_a,
                const __grid_constant__ CUtensorMap map_w) {
#ifdef BIK_SM90_DEVICE_CODE
  constexpr int BM = Cfg::BM, BN = Cfg::BN, STAGES = Cfg::STAGES;
  static_assert(!(kCluster && kSplit) && !(kSplit && (Cfg::kPingPong || Cfg::kSwapped || kHeadDim > 0)),
                "split mode runs the plain tiles, without operand sharing");
  constexpr bool kPair = kCluster || kSplit;  // launched in clusters of two
  extern __shared__ uint8_t smem_raw[];
  // The same offset in both CTAs of a cluster: the multicast copies address the partner's stages by it.
  const uint32_t base = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const uint32_t bars = base + STAGES * Cfg::kStageBytes;
  auto stage_a = [&](int s) { return base + s * Cfg::kStageBytes; };
  auto stage_w = [&](int s) { return base + s * Cfg::kStageBytes + Cfg::kStageA; };
  auto full = [&](int s) { return bars + s * 8; };             // producer -> consumers: stage s landed
  auto empty = [&](int s) { return bars + (STAGES + s) * 8; };  // consumers -> producer: stage s is free

  const Problem& p = prm.p;
  const int num_kb = (p.k + kBK - 1) / kBK;
  // The first row of M-tile tm. With TMA and one CTA a tile the last M-tile's box is kept inside the
  // matrix, starting at M - BM rather than overhanging M (a box that crosses the end of the matrix loads
  // far slower: gate|up at M = 200 took 108 us against 78 at M = 256). Its first rows are then rows of
  // the tile before, computed again with the same bits (a row's sums depend on its own A row only, in
  // whichever row of the tile it sits) and stored again unchanged. In cluster mode with prm.m_inside
  // (BIK_GEMM_CLUSTER_INSIDE, the default): a tile past M (the partner of an odd count) then copies rows
  // that exist too, and stores nothing as before.
  auto m_base = [&](int tm) {
    return (!kCluster || (prm.m_inside && !Cfg::kSwapGlu)) && prm.tma && p.m >= BM ? min(tm * BM, p.m - BM)
                                                                                      : tm * BM;
  };
  // The same for a swapped tile's columns (activation rows): the last column tile of a product with more
  // than one starts at N - BN, its first columns computed and stored again with the same bits.
  auto n_base = [&](int tn) {
    return Cfg::kSwapped && prm.tma && p.n >= BN ? min(tn * BN, p.n - BN) : tn * BN;
  };
  // A gated product (Problem::glu) stacks two W boxes of BN / 2 rows in a stage: gate rows tn * BN / 2..
  // and the up rows of the same outputs, n / 2 further on. Gate boxes may run on into up rows (or up boxes
  // past n, zero-filled): they feed only outputs past n / 2, which are not stored.
  constexpr int kHalfW = BN / 2;
  auto gate_row = [&](int tn) { return tn * kHalfW; };
  auto up_row = [&](int tn) { return p.n / 2 + tn * kHalfW; };
  const int wg = threadIdx.x / 128;
  // The walk: one-CTA mode steps over tiles by CTA; cluster mode steps over pairs by cluster, and the
  // CTA of rank r takes tile r of each pair. Both CTAs of a cluster walk the same pairs with the same
  // number of K stages, so their stage counters stay equal, which the shared empty barriers rely on.
  const int rank = kPair ? int(cluster_ctarank()) : 0;
  const auto walk0 = [] {
    if constexpr (kPair)
      return cluster_id_x();
    else
      return blockIdx.x;
  }();
  const auto walk_step = [] {
    if constexpr (kPair)
      return cluster_count_x();
    else
      return gridDim.x;
  }();
  // The K stages this CTA runs on each tile: all of them, or in split mode its piece's.
  const int kb_lo = kSplit && rank == 1 ? min(prm.split_kb, num_kb) : 0;
  const int kb_hi = kSplit && rank == 0 ? min(prm.split_kb, num_kb) : num_kb;
  const int nkb = kb_hi - kb_lo;
  auto tile_coords = [&](int tile, int& b, int& tm, int& tn) {
    prm.order.coords(tile, b, tm, tn);
    if constexpr (kCluster) {
      if (prm.share_w)
        tm = 2 * tm + rank;
      else
        tn = 2 * tn + rank;
    }
  };

  // With TMA: stage s's copies of K-block kb of tile (b, tm, tn), counted on its full barrier.
  auto load_stage = [&](int s, int kb_in, int b, int tm, int tn) {
    // Pieces of K (prm.a_kofs = w_kofs > 0, the host's pieces_kofs: both operands batched): the batch moves
    // the K coordinate of two-dimensional maps instead of being their third coordinate.
    const int kb = kb_in + b * (prm.a_kofs / kBK);
    const int ab = prm.a_batched && !prm.a_kofs ? b : 0, wb = prm.w_batched && !prm.w_kofs ? b : 0;
    // The whole stage lands on the barrier (out-of-bounds box parts count too); in cluster mode that is
    // this CTA's own box of one operand plus both halves of the shared one (the partner's half may arrive
    // before this expect_tx; the phase cannot complete without this arrival, so the early bytes are
    // counted into the right phase). An operand with fewer rows than the tile (one CTA a tile: M < BM or
    // N < BN; pairs sharing A: M <= BM / 2, prm.a_small, where each CTA multicasts all M rows, the same
    // bytes to the same place) comes in a box of just its rows (prm.stage_tx counts them), because a box
    // that runs past the end of the matrix loads far slower; the stage's rows past it keep whatever they
    // held, which reaches only outputs past M or N, never stored (an output's sum reads its own A row and
    // W row only).
    mbar_arrive_expect_tx(full(s), prm.stage_tx);
    if constexpr (kCluster) {
      constexpr int kHalfA = BM / 2;  // rows of the half box each CTA copies and multicasts (kHalfW for W)
      constexpr uint16_t kBoth = 0x3;
      // Box starts are kept inside the matrix: a partner whose tile lies past M or N (odd tile count), or
      // a half box past N or M, copies rows that exist instead. Such rows only feed outputs past M or N,
      // which are not stored; K is never clamped, so the zero fill past K is as before.
      const int a_row = prm.share_w ? min(m_base(tm), p.m - 1) : min(m_base(tm) + rank * kHalfA, p.m - 1);
      // Gated: the W boxes are halves in both modes; sharing W, rank 0 copies the gate half, rank 1 the up.
      // A swapped tile's own columns (activation rows) are kept inside the matrix as n_base keeps them.
      const int w_row = p.glu ? min(rank == 0 ? gate_row(tn) : up_row(tn), p.n - 1)
                        : prm.share_w ? min(tn * BN + rank * kHalfW, p.n - 1)
                        : Cfg::kSwapped ? min(n_base(tn), p.n - 1)
                                        : min(tn * BN, p.n - 1);
      if constexpr (Cfg::kSwapGlu) {
        // Pairs of column tiles sharing the weight (the host's only pairing here): each CTA multicasts half
        // of the interleaved box (2 d is a multiple of BM, so no clamp) and copies its own columns, kept
        // inside the matrix as n_base keeps them.
        tma_load_glu_multicast(stage_a(s) + rank * kHalfA * kRowBytes, &map_a, full(s), kb * kBK,
                               (tm * BM + rank * kHalfA) / 16, kBoth);
        tma_load(stage_w(s), &map_w, full(s), kb * kBK, w_row, wb);
      } else if (prm.share_w) {
        tma_load(stage_a(s), &map_a, full(s), kb * kBK, a_row, ab);
        tma_load_multicast(stage_w(s) + rank * kHalfW * kRowBytes, &map_w, full(s), kb * kBK, w_row, wb, kBoth);
      } else {
        // prm.a_small: both CTAs copy the same M rows to the same place for both (the bytes count twice).
        tma_load_multicast(stage_a(s) + (prm.a_small ? 0 : rank * kHalfA * kRowBytes), &map_a, full(s), kb * kBK,
                           prm.a_small ? 0 : a_row, ab, kBoth);
        if (p.glu) {
          tma_load(stage_w(s), &map_w, full(s), kb * kBK, min(gate_row(tn), p.n - 1), wb);
          tma_load(stage_w(s) + kHalfW * kRowBytes, &map_w, full(s), kb * kBK, min(up_row(tn), p.n - 1), wb);
        } else {
          tma_load(stage_w(s), &map_w, full(s), kb * kBK, w_row, wb);
        }
      }
    } else {
      if constexpr (Cfg::kSwapGlu)
        tma_load_glu(stage_a(s), &map_a, full(s), kb * kBK, m_base(tm) / 16);
      else
        tma_load(stage_a(s), &map_a, full(s), kb * kBK, m_base(tm), ab);
      if (p.glu) {
        tma_load(stage_w(s), &map_w, full(s), kb * kBK, gate_row(tn), wb);
        tma_load(stage_w(s) + kHalfW * kRowBytes, &map_w, full(s), kb * kBK, up_row(tn), wb);
      } else {
        tma_load(stage_w(s), &map_w, full(s), kb * kBK, n_base(tn), wb);
      }
    }
  };
  // With TMA, the thread that creates the barriers (thread 0, a consumer's) also issues the copies of the
  // CTA's first tile's first stages, at once (cluster mode: once the partner's barriers exist). The
  // producer thread would issue them only after reaching its own code, far from the kernel's entry; the
  // entry's code is fetched by every warp anyway. On an H200 this took ~1 us off each launch, whether or
  // not other kernels ran in between (logs_h200/1e39e03_gemm_early_copies_*). The producer carries on
  // from stage `pre`. The copies, their stages and their order are the same; no bit changes.
  //
  // Launched programmatically (launch.cuh), the kernel may start before the kernel ahead of it has
  // completed: the barriers are created first, and every thread waits in pdl_wait before the first access
  // to global memory (the copies into shared memory included).
  const int pre = (kPair || prm.tma) && int(walk0) < prm.total_tiles ? min(STAGES, nkb) : 0;
  auto early_copies = [&] {
    int b, tm, tn;
    tile_coords(walk0, b, tm, tn);
    for (int kb = 0; kb < pre; ++kb) load_stage(kb, kb_lo + kb, b, tm, tn);
  };
  // Split mode: xfull counts this CTA's consumer threads receiving the partner's bytes, xempty the partner's
  // consumer threads, which arrive once they have read what this CTA sent them.
  const uint32_t xbars = bars + Cfg::kBarBytes + Cfg::kConsumers * 4 * Cfg::kEpiWarpBytes;
  const uint32_t xfull = xbars, xempty = xbars + 8, xbuf = xbars + 128;
  constexpr int kXThreads = Cfg::kConsumers * 128;
  if (threadIdx.x == 0) {
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(full(s), prm.tma ? 1 : 128);
      // lane 0 of every consumer warp that reads the stage (of both CTAs)
      mbar_init(empty(s), (kCluster ? 2 : 1) * Cfg::kStageReaders * 4);
    }
    if constexpr (kSplit) {
      mbar_init(xfull, kXThreads);
      mbar_init(xempty, kXThreads);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  pdl_wait();
  if (threadIdx.x == 0 && !kCluster && pre > 0) early_copies();
  __syncthreads();
  // No multicast, remote store or remote arrive may reach the partner before its barriers exist.
  if constexpr (kPair) cluster_sync();
  if constexpr (kCluster) {
    if (threadIdx.x == 0 && pre > 0) early_copies();
  }

  if (wg == Cfg::kConsumers) {
    // ---- producer warpgroup: fills stages in the same tile order the consumers drain them ----
    // The register file's 64 K: 128 x 40 + 256 x 232 with two consumer warpgroups, 128 x 40 + 384 x 152
    // with three.
    if constexpr (Cfg::kConsumers >= 2) asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
    const int t = threadIdx.x % 128;
    if constexpr (kPair) {
      // Cluster and split modes always copy with TMA (the host falls back otherwise); one thread drives
      // the copy engine, the others go straight to the final cluster barrier.
      if (t == 0) {
        int it = pre;  // past the early copies
        for (int tile = walk0; tile < prm.total_tiles; tile += walk_step) {
          int b, tm, tn;
          tile_coords(tile, b, tm, tn);
          for (int kb = tile == int(walk0) ? pre : 0; kb < nkb; ++kb, ++it) {
            const int s = it % STAGES, phase = (it / STAGES) & 1;
            mbar_wait(empty(s), phase ^ 1);  // the consumers (of both CTAs in cluster mode) are done with s
            load_stage(s, kb_lo + kb, b, tm, tn);
          }
        }
        // Tail: wait for the release of the last use of every stage. Each release needs the partner's
        // consumers too, so after this no remote arrive is still on its way to this CTA's barriers.
        for (int i = 0; i < STAGES; ++i, ++it) mbar_wait(empty(it % STAGES), ((it / STAGES) & 1) ^ 1);
      }
      __syncwarp();  // the copy thread's warp meets the final cluster barrier converged
    } else {
      if (prm.tma && t != 0) return;  // one thread drives the copy engine
      int it = pre;                   // stage use counter, continued across tiles (past the early copies)
      for (int tile = walk0; tile < prm.total_tiles; tile += walk_step) {
        int b, tm, tn;
        tile_coords(tile, b, tm, tn);
        for (int kb = tile == int(walk0) ? pre : 0; kb < num_kb; ++kb, ++it) {
          const int s = it % STAGES, phase = (it / STAGES) & 1;
          mbar_wait(empty(s), phase ^ 1);  // a fresh barrier counts as having completed phase "1"
          if (prm.tma) {
            load_stage(s, kb, b, tm, tn);
          } else {
            const T* a = static_cast<const T*>(p.a) + int64_t(b) * p.a_sb;
            const T* w = static_cast<const T*>(p.w) + int64_t(b) * p.w_sb;
            const int k0 = kb * kBK;
            for (int i = t; i < (BM + BN) * 8; i += 128) {
              const bool is_a = i < BM * 8;
              const int r = (is_a ? i : i - BM * 8) >> 3, c = i & 7;
              // kSwapGlu: tile row R of the interleaved order is gate row 8 (R / 16) + R % 16 for R % 16 < 8,
              // else the up row d + 8 (R / 16) + R % 16 - 8 (d = M / 2 of the transposed problem).
              const int ar = tm * BM + r;
              const int glu_r = (ar / 16) * 8 + (ar % 16 < 8 ? ar % 16 : p.m / 2 + ar % 16 - 8);
              const int gr = is_a                  ? (Cfg::kSwapGlu ? glu_r : ar)
                             : !p.glu              ? tn * BN + r
                             : r < kHalfW ? gate_row(tn) + r
                                          : up_row(tn) + r - kHalfW,
                        gk = k0 + c * 8;
              const bool live = gr < (is_a ? p.m : p.n) && gk < p.k;
              uint4 v = make_uint4(0, 0, 0, 0);
              if (live)
                v = is_a ? load_8_scalar(a + int64_t(gr) * p.a_sm, p.a_sk, gk, p.k)
                         : load_8_scalar(w + int64_t(gr) * p.w_sn, p.w_sk, gk, p.k);
              st_shared_16((is_a ? stage_a(s) : stage_w(s)) + r * kRowBytes + ((c ^ (r & 7)) << 4), v);
            }
            // Ordinary stores become visible to the wgmma (async proxy) only through this fence.
            fence_proxy_async();
            mbar_arrive(full(s));
          }
        }
      }
    }
  } else {
    // ---- consumer warpgroups: rows [64 * wg, 64 * wg + 64) of each tile, all BN columns; in ping-pong
    // mode whole tiles, the CTA's tiles wg, wg + 2, ... of its walk, in turns (the top of this file) ----
    if constexpr (Cfg::kConsumers == 2) asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
    if constexpr (Cfg::kConsumers == 3) asm volatile("setmaxnreg.inc.sync.aligned.u32 152;\n");
    constexpr bool kPingPong = Cfg::kPingPong;
    static_assert(!(kPingPong && kCluster), "ping-pong runs one CTA a tile");
    static_assert(kHeadDim == 0 || (!kCluster && !Cfg::kSwapped), "the heads epilogue: unswapped, one CTA a tile");
    const int slab = kPingPong ? 0 : wg;  // this consumer's 64-row slab of the tile and of the stage's A rows
    const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
    // A released stage may be refilled by either CTA's producer in cluster mode: tell both.
    auto release = [&](int s) {
      if constexpr (kCluster) {
        mbar_arrive_cluster(empty(s), 0);
        mbar_arrive_cluster(empty(s), 1);
      } else {
        mbar_arrive(empty(s));
      }
    };
    float acc[BN / 2];
    int it = 0;
    if constexpr (kPingPong) {
      if (wg == 1 && int(walk0) < prm.total_tiles) named_bar_arrive(kTurnBar, 256);  // opens consumer 0's first turn
    }
    int local = 0;  // the tile's place in this CTA's walk
    for (int tile = walk0; tile < prm.total_tiles; tile += walk_step, ++local) {
      if constexpr (kPingPong) {
        if ((local & 1) != wg) continue;   // the partner's tile
        it = local * nkb;                  // the partner's turns used the stages in between
        named_bar_sync(kTurnBar + wg, 256);  // the turn before has waited for and issued all of its stages
      }
      int b, tm, tn;
      tile_coords(tile, b, tm, tn);
      HeadRows head_rows_of{};  // kHeadDim > 0: the rows' slots and positions, loaded during the main loop
      if constexpr (kHeadDim > 0) head_rows_of = head_rows(p, prm.heads, m_base(tm) + slab * 64 + warp * 16, lane);
#pragma unroll
      for (int i = 0; i < BN / 2; ++i) acc[i] = 0.f;
      for (int kb = 0; kb < nkb; ++kb, ++it) {
        const int s = it % STAGES, phase = (it / STAGES) & 1;
        mbar_wait(full(s), phase);
        // The stage addresses through a broadcast from lane 0 (the same in every lane): the compiler then
        // keeps the descriptors in uniform registers instead of moving them there before every wgmma.
        const uint32_t sa = __shfl_sync(0xffffffffu, stage_a(s) + slab * 64 * kRowBytes, 0);
        const uint32_t sw = __shfl_sync(0xffffffffu, stage_w(s), 0);
        const uint64_t da = smem_desc(sa), dw = smem_desc(sw);
        pin(acc);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kBK / 16; ++kk) wgmma_cols<BN, T>(acc, da + 2 * kk, dw + 2 * kk);
        wgmma_commit();
        pin(acc);
        // Keep this stage's wgmmas in flight; the previous stage's are done once one group is pending.
        wgmma_wait<1>();
        pin(acc);
        if (kb > 0 && lane == 0) release((it - 1) % STAGES);
      }
      // Ping-pong: the next tile's turn may issue now, behind this tile's wgmmas still in flight.
      if constexpr (kPingPong) {
        if (tile + int(walk_step) < prm.total_tiles) named_bar_arrive(kTurnBar + 1 - wg, 256);
      }
      wgmma_wait<0>();
      pin(acc);
      if (nkb > 0 && lane == 0) release((it - 1) % STAGES);
      // Split mode: every consumer thread sends the sums of the partner's half of the tile's columns (its
      // registers [kGive, kGive + BN / 4)) into the partner's exchange buffer (st.async, counted on the
      // partner's xfull) once the partner has read the previous tile's (xempty), then adds the partner's
      // sums of its own half: piece 0 + piece 1 into registers [0, BN / 4) (a sum of two terms rounds the
      // same either way round). Every thread takes part for every tile, rows past M included.
      if constexpr (kSplit) {
        const int xphase = local & 1;
        const uint32_t xmine = xbuf + threadIdx.x * 16;  // then kXThreads * 16 apart
        mbar_wait(xempty, xphase ^ 1);  // a fresh barrier counts as having completed phase "1"
        const uint32_t dst = map_to_cta(xmine, rank ^ 1), bar = map_to_cta(xfull, rank ^ 1);
        // Register offsets as constants (a rank-dependent index into acc made ptxas serialize every wgmma
        // of the kernel): kGive, the half the partner finishes; kKeep, this CTA's own.
        auto exchange = [&](auto give_c) {
          constexpr int kGive = decltype(give_c)::value, kKeep = BN / 4 - kGive, kQ = BN / 16;
#pragma unroll
          for (int q = 0; q < kQ; ++q)
            st_async_16(dst + q * kXThreads * 16, acc[kGive + 4 * q], acc[kGive + 4 * q + 1], acc[kGive + 4 * q + 2],
                        acc[kGive + 4 * q + 3], bar);
          mbar_arrive_expect_tx(xfull, kQ * 16);
          mbar_wait(xfull, xphase);
#pragma unroll
          for (int q = 0; q < kQ; ++q) {
            const uint4 v = ld_shared_16(xmine + q * kXThreads * 16);
            acc[4 * q] = __fadd_rn(acc[kKeep + 4 * q], __uint_as_float(v.x));
            acc[4 * q + 1] = __fadd_rn(acc[kKeep + 4 * q + 1], __uint_as_float(v.y));
            acc[4 * q + 2] = __fadd_rn(acc[kKeep + 4 * q + 2], __uint_as_float(v.z));
            acc[4 * q + 3] = __fadd_rn(acc[kKeep + 4 * q + 3], __uint_as_float(v.w));
          }
        };
        if (rank == 0)
          exchange(std::integral_constant<int, BN / 4>{});
        else
          exchange(std::integral_constant<int, 0>{});
        pin(acc);
        mbar_arrive_cluster(xempty, rank ^ 1);
      }
      // Cluster mode: the partner of the last tile of an odd count computes on copied rows; nothing to store.
      if constexpr (kCluster) {
        if (tm * BM >= p.m || tn * BN >= p.n) continue;
      }

      // wgmma D layout: per 8 columns, registers {0,1} hold row lane/4, {2,3} row lane/4 + 8, at
      // columns 2 * (lane % 4) + {0, 1}; warp w of the warpgroup owns rows 16w..16w+15.
      const int row0 = m_base(tm) + slab * 64 + warp * 16;
      if (row0 >= p.m) continue;  // the warp's rows all lie past M (a partial last M-tile): nothing to store
      if constexpr (kHeadDim > 0) {
        store_tile_heads<Cfg, T, kHeadDim>(p, prm.heads, head_rows_of, acc, row0, tn * BN, lane);
        continue;
      }
      const uint32_t staging = bars + Cfg::kBarBytes + (wg * 4 + warp) * Cfg::kEpiWarpBytes;
      if constexpr (kSplit) {  // the host runs split mode only with staged 16-byte stores (out_vec16)
        if (p.out_f32)
          store_tile_staged<Cfg, T, float, BN / 2>(p, acc, staging, b, row0, tn * BN + rank * (BN / 2), lane);
        else
          store_tile_staged<Cfg, T, T, BN / 2>(p, acc, staging, b, row0, tn * BN + rank * (BN / 2), lane);
        continue;
      }
      if constexpr (!Cfg::kSwapped && BN % 64 == 0) {
        if (p.glu) {
          store_tile_gated<Cfg, T>(p, prm.out_vec16 != 0, acc, staging, b, row0, tn, lane);
          continue;
        }
      }
      if constexpr (Cfg::kSwapGlu) {
        store_tile_columns_gated<Cfg, T>(p, acc, staging, b, row0, n_base(tn), lane);
        continue;
      }
      if (prm.out_vec16) {
        if constexpr (Cfg::kSwapped)
          store_tile_columns<Cfg, T>(p, acc, staging, b, row0, n_base(tn), lane);
        else if (p.out_f32)
          store_tile_staged<Cfg, T, float>(p, acc, staging, b, row0, tn * BN, lane);
        else
          store_tile_staged<Cfg, T, T>(p, acc, staging, b, row0, tn * BN, lane);
      } else {
        const int row = row0 + (lane >> 2);
        const int col0 = n_base(tn) + (lane & 3) * 2;
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
          store_pair<T>(p, b, row, col0 + j * 8, acc[4 * j], acc[4 * j + 1]);
          store_pair<T>(p, b, row + 8, col0 + j * 8, acc[4 * j + 2], acc[4 * j + 3]);
        }
      }
    }
  }
  // No CTA leaves while its partner may still multicast or store into it or arrive on its barriers.
  if constexpr (kPair) cluster_sync();
#endif
}

}  // namespace bik::cuda::gemm_detail::sm90

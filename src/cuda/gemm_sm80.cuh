// mma.sync GEMM for sm_80 and later: m16n8k16 tensor-core instructions with F32 accumulate, fed by a
// cp.async multistage pipeline through XOR-swizzled shared memory.
//
// Why it is batch-invariant: every output element lives in one accumulator of one thread from the
// first K step to the last. K is walked from 0 upwards, 16 at a time (one mma per step), and the part
// of the last step past K is zero-filled, which adds exact zeros. Nothing splits K, inside a CTA or
// across CTAs. The CTA tile (BM x BN) and the warp layout only decide which thread owns which outputs,
// so they may change with M without changing a bit of any output.
//
// Both operands are K-contiguous ("TN"): a [M, K] row-major and w [N, K] row-major, which is exactly the
// row.col layout mma.sync wants, so ldmatrix needs no transpose for either.
#pragma once
#include "cuda/gemm_common.cuh"

namespace bik::cuda::gemm_detail::sm80 {

constexpr int kBK = 64;        // K per pipeline stage: 64 halves = one 128-byte row of shared memory
constexpr int kRowBytes = 128;

template <int BM_, int BN_, int WARPS_M_, int WARPS_N_, int STAGES_>
struct Config {
  static constexpr int BM = BM_, BN = BN_, WARPS_M = WARPS_M_, WARPS_N = WARPS_N_, STAGES = STAGES_;
  static constexpr int kThreads = WARPS_M * WARPS_N * 32;
  static constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;  // one warp's tile
  static constexpr int MI = WM / 16, NI = WN / 8;              // mma tiles per warp
  static constexpr int kStageBytes = (BM + BN) * kRowBytes;
  static constexpr int kSmemBytes = STAGES * kStageBytes;
  static_assert(WM % 16 == 0 && WN % 16 == 0, "a warp tile is a whole number of 16x16 blocks");
  static_assert(BM * 8 % kThreads == 0 && BN * 8 % kThreads == 0, "every thread copies whole 16-byte chunks");
};

// Byte offset of 16-byte chunk `c` (0..7) of row `r` in a stage. The XOR spreads the 8 rows that one
// ldmatrix phase reads over all 8 chunk positions, so the 32 banks serve them without conflicts.
__device__ __forceinline__ uint32_t swizzle(int r, int c) { return r * kRowBytes + ((c ^ (r & 7)) << 4); }

// 16-byte async copy; only `bytes` (0..16) are read and the rest of the 16 are zero-filled.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, int bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void st_shared_16(uint32_t dst, uint4 v) {
  asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(dst), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
               : "memory");
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Copies rows [row0, row0 + ROWS) x k [k0, k0 + 64) of a K-major operand into a swizzled stage. Rows at
// or past `rows` and k at or past K arrive as zeros. kVec: 16-byte cp.async (unit K stride, 16-byte
// aligned rows); otherwise element loads through registers, which store the same bytes.
template <int ROWS, int THREADS, bool kVec, typename T>
__device__ __forceinline__ void load_tile(uint32_t stage, const T* base, int64_t ld, int64_t sk, int rows, int row0,
                                          int k0, int k_end) {
  constexpr int kPerThread = ROWS * 8 / THREADS;
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) {
    const int i = threadIdx.x + j * THREADS;
    const int r = i >> 3, c = i & 7;
    const int gr = row0 + r, gk = k0 + c * 8;
    const bool live = gr < rows && gk < k_end;
    if constexpr (kVec) {
      const int bytes = live ? min(k_end - gk, 8) * 2 : 0;
      const T* src = live ? base + int64_t(gr) * ld + gk : base;  // any valid address when nothing is read
      cp_async_16(stage + swizzle(r, c), src, bytes);
    } else {
      const uint4 v = live ? load_8_scalar(base + int64_t(gr) * ld, sk, gk, k_end) : make_uint4(0, 0, 0, 0);
      st_shared_16(stage + swizzle(r, c), v);
    }
  }
}

template <class Cfg, typename T, bool kVec>
__global__ void __launch_bounds__(Cfg::kThreads) gemm_kernel(const Problem p) {
  extern __shared__ __align__(128) uint8_t smem[];
  constexpr int BM = Cfg::BM, BN = Cfg::BN, STAGES = Cfg::STAGES, MI = Cfg::MI, NI = Cfg::NI;

  const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN, b = blockIdx.z;
  const T* a = static_cast<const T*>(p.a) + int64_t(b) * p.a_sb;
  const T* w = static_cast<const T*>(p.w) + int64_t(b) * p.w_sb;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wm = warp / Cfg::WARPS_N, wn = warp % Cfg::WARPS_N;
  const uint32_t smem0 = smem_u32(smem);
  const int num_kb = (p.k + kBK - 1) / kBK;

  auto stage_a = [&](int s) { return smem0 + s * Cfg::kStageBytes; };
  auto stage_w = [&](int s) { return smem0 + s * Cfg::kStageBytes + BM * kRowBytes; };
  auto load_stage = [&](int s, int kb) {
    load_tile<BM, Cfg::kThreads, kVec>(stage_a(s), a, p.a_sm, p.a_sk, p.m, m0, kb * kBK, p.k);
    load_tile<BN, Cfg::kThreads, kVec>(stage_w(s), w, p.w_sn, p.w_sk, p.n, n0, kb * kBK, p.k);
  };

  float acc[MI][NI][4];
#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int j = 0; j < NI; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

  // Prologue: STAGES - 1 stages in flight. Every iteration commits one group (empty or not) so that
  // "wait until at most STAGES - 2 groups are pending" always means "stage kb has landed".
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < num_kb) load_stage(s, s);
    cp_async_commit();
  }

  for (int kb = 0; kb < num_kb; ++kb) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // stage kb is visible to all warps, and every warp is done with stage kb - 1
    const int next = kb + STAGES - 1;
    if (next < num_kb) load_stage(next % STAGES, next);  // refills the stage read in iteration kb - 1
    cp_async_commit();

    const uint32_t sa = stage_a(kb % STAGES), sw = stage_w(kb % STAGES);
#pragma unroll
    for (int kk = 0; kk < kBK / 16; ++kk) {
      uint32_t af[MI][4], bf[NI][2];
#pragma unroll
      for (int i = 0; i < MI; ++i) {
        // x4: lanes 0-15 address rows 0-15 at k 0-7, lanes 16-31 the same rows at k 8-15: the four
        // 8x8 matrices come back in the a0..a3 order of the m16n8k16 A fragment.
        const int r = wm * Cfg::WM + i * 16 + (lane & 15);
        ldmatrix_x4(af[i], sa + swizzle(r, kk * 2 + (lane >> 4)));
      }
#pragma unroll
      for (int j = 0; j < NI / 2; ++j) {
        // x4 over 16 w rows (n) x 16 k: matrices (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7),
        // (n 8-15, k 8-15) are b0, b1 of two neighbouring n8 blocks.
        const int r = wn * Cfg::WN + j * 16 + (lane & 7) + ((lane >> 4) << 3);
        uint32_t t[4];
        ldmatrix_x4(t, sw + swizzle(r, kk * 2 + ((lane >> 3) & 1)));
        bf[2 * j][0] = t[0];
        bf[2 * j][1] = t[1];
        bf[2 * j + 1][0] = t[2];
        bf[2 * j + 1][1] = t[3];
      }
#pragma unroll
      for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NI; ++j) mma_16816<T>(acc[i][j], af[i], bf[j][0], bf[j][1]);
    }
  }
  cp_async_wait<0>();

  // Accumulator layout of m16n8: c0, c1 at (row lane/4, cols 2*(lane%4) + 0/1), c2, c3 eight rows down.
#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int j = 0; j < NI; ++j) {
      const int row = m0 + wm * Cfg::WM + i * 16 + (lane >> 2);
      const int col = n0 + wn * Cfg::WN + j * 8 + (lane & 3) * 2;
      store_pair<T>(p, b, row, col, acc[i][j][0], acc[i][j][1]);
      store_pair<T>(p, b, row + 8, col, acc[i][j][2], acc[i][j][3]);
    }
}

}  // namespace bik::cuda::gemm_detail::sm80

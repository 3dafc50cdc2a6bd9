// CPU GEMM: out[b, m, n] = sum_k a[b, m, k] * w[b, n, k] (+ bias[n]).
//
// Reduction order (policy::gemm_plan for the CPU): every output is one F32 fused multiply-add chain,
//   acc = 0; for k = 0 .. K-1: acc = fma(a[m, k], w[n, k], acc)
// then acc + bias[n] in F32, then one rounding to the output dtype. Inputs are widened to F32 exactly.
// A scalar loop of std::fma gives the same bits; everything below only makes that loop fast:
//
// - Blocking (the usual packed-panel scheme): the output is cut into tiles of MC x NC (one task each,
//   run by parallel_for); K is cut into blocks of KC. For one K block, the task packs its rows of A into
//   panels of kMr rows ([k][kMr], F32) and its rows of W into panels of kNr columns ([k][kNr], F32),
//   then a register-blocked micro-kernel updates a block of kMr rows x (one or more) kNr columns per
//   call with vector FMAs.
// - The K order is never touched: K blocks run in increasing order and each carries the F32 accumulators
//   of the previous one (stored in a per-task F32 tile between blocks, which is exact); inside a block
//   the micro-kernel steps k upwards, one FMA per output per k. Vector lanes are different outputs, so
//   no lane ever adds into another. Tile sizes, the micro-kernel chosen for a panel and the thread count
//   only decide which outputs are computed together, never how one output is summed.
// - Zero padding of partial panels only feeds outputs that are never written back.
// - The micro-kernels exist twice, on 8-wide AVX2 and on 16-wide AVX-512 registers (picked at run time;
//   the build targets x86-64-v3). A lane is one output either way and an FMA is the same IEEE operation
//   in both, so the choice changes speed only; the tests hold both to the scalar loop's bits.
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/backend.h"
#include "cpu/parallel.h"

namespace bik::cpu {
namespace {

constexpr int kMr = 6;        // rows of A per micro-panel
constexpr int kNr = 16;       // columns of W per micro-panel (two AVX2 or one AVX-512 register)
constexpr int64_t kKc = 256;  // K block: a W panel of kKc x kNr floats (16 KiB) stays in L1
constexpr int64_t kMcMax = 144;
constexpr int64_t kNcMax = 256;
constexpr int64_t kPackSlack = 8;  // floats after a packed buffer that a 6-wide pack may overwrite

// ---- loading any input dtype as F32 (exact widening) ----------------------------------------------------

template <class T>
float load1(const T* p);
template <>
inline float load1<float>(const float* p) {
  return *p;
}
template <>
inline float load1<f16>(const f16* p) {
  return _cvtsh_ss(p->bits);
}
template <>
inline float load1<bf16>(const bf16* p) {
  return to_float(*p);
}

// Eight consecutive elements as eight floats.
template <class T>
__m256 load8(const T* p);
template <>
inline __m256 load8<float>(const float* p) {
  return _mm256_loadu_ps(p);
}
template <>
inline __m256 load8<f16>(const f16* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
template <>
inline __m256 load8<bf16>(const bf16* p) {
  __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

// In-register transpose of an 8 x 8 block of floats.
inline void transpose8(__m256 r[8]) {
  __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// ---- packing ---------------------------------------------------------------------------------------------
// A strided 2-D source: element (r, k) at base[r * rs + k * ks]. Packing writes dst[k * width + r] for
// r < rows, k < kc, and zeros for rows..width-1.
template <class T>
struct Src2d {
  const T* base;
  int64_t rs, ks;
};

template <class T>
void pack_panel(float* dst, int width, Src2d<T> s, int64_t r0, int rows, int64_t k0, int64_t kc) {
  const T* p = s.base + r0 * s.rs + k0 * s.ks;
  int64_t k = 0;
  if (s.ks == 1 && (width % 8 == 0 || width == kMr)) {
    // Rows contiguous in k (the usual [N, K] weight / [M, K] activation): 8 x 8 transposes, missing rows
    // read as zeros. A width of kMr = 6 stores 8 floats per k; the 2 extra land in the next k's slot and
    // are rewritten by the next store (the buffer has kPackSlack floats after the last panel).
    for (; k + 8 <= kc; k += 8) {
      for (int g = 0; g < width; g += 8) {
        __m256 r[8];
        for (int i = 0; i < 8; ++i) r[i] = g + i < rows ? load8(p + (g + i) * s.rs + k) : _mm256_setzero_ps();
        transpose8(r);
        for (int i = 0; i < 8; ++i) _mm256_storeu_ps(dst + (k + i) * width + g, r[i]);
      }
    }
  } else if (s.rs == 1 && rows == width && width % 8 == 0) {
    // Transposed views ([K, N] storage): already contiguous along the panel width.
    for (; k < kc; ++k)
      for (int g = 0; g < width; g += 8) _mm256_storeu_ps(dst + k * width + g, load8(p + k * s.ks + g));
    return;
  }
  for (; k < kc; ++k) {
    float* d = dst + k * width;
    int r = 0;
    for (; r < rows; ++r) d[r] = load1(p + r * s.rs + k * s.ks);
    for (; r < width; ++r) d[r] = 0.0f;
  }
}

// ---- micro-kernel ----------------------------------------------------------------------------------------
// Updates an MR x (16 * NP) block of F32 accumulators c (row stride ldc) over kc steps of k, where
// a is one packed A panel ([k][kMr]) and w points at NP consecutive packed W panels ([k][kNr] each,
// kc * kNr floats apart). first: the accumulators start at 0 (first K block) instead of c's values.
template <int MR, int NP>
void micro_kernel(int64_t kc, const float* a, const float* w, float* c, int64_t ldc, bool first) {
  // Fully unrolled over i and j so that GCC keeps every accumulator in a register.
  __m256 acc[MR][2 * NP];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 16
    for (int j = 0; j < 2 * NP; ++j) acc[i][j] = _mm256_setzero_ps();
  if (!first) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 16
      for (int j = 0; j < 2 * NP; ++j) acc[i][j] = _mm256_loadu_ps(c + i * ldc + 8 * j);
  }
  const int64_t pstride = kc * kNr;
  for (int64_t k = 0; k < kc; ++k) {
    __m256 b[2 * NP];
#pragma GCC unroll 16
    for (int p = 0; p < NP; ++p) {
      b[2 * p] = _mm256_loadu_ps(w + p * pstride + k * kNr);
      b[2 * p + 1] = _mm256_loadu_ps(w + p * pstride + k * kNr + 8);
    }
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m256 x = _mm256_broadcast_ss(a + k * kMr + i);
#pragma GCC unroll 16
      for (int j = 0; j < 2 * NP; ++j) acc[i][j] = _mm256_fmadd_ps(x, b[j], acc[i][j]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 16
    for (int j = 0; j < 2 * NP; ++j) _mm256_storeu_ps(c + i * ldc + 8 * j, acc[i][j]);
}

// Few rows leave the FMA units waiting on latency; those kernels take several W panels at once so that
// enough independent chains are in flight. (Which outputs share a call never changes their order.)
template <int MR>
constexpr int panels_for_rows() {
  return MR == 1 ? 4 : MR == 2 ? 3 : MR == 3 ? 2 : 1;
}
template <int MR>
void run_rows(int64_t kc, const float* a, const float* wbuf, int64_t panels, float* c, int64_t ldc, bool first) {
  constexpr int NP = panels_for_rows<MR>();
  int64_t p = 0;
  for (; p + NP <= panels; p += NP) micro_kernel<MR, NP>(kc, a, wbuf + p * kc * kNr, c + p * kNr, ldc, first);
  for (; p < panels; ++p) micro_kernel<MR, 1>(kc, a, wbuf + p * kc * kNr, c + p * kNr, ldc, first);
}
using RowsFn = void (*)(int64_t, const float*, const float*, int64_t, float*, int64_t, bool);
constexpr RowsFn kRowsAvx2[kMr + 1] = {nullptr,     run_rows<1>, run_rows<2>, run_rows<3>,
                                       run_rows<4>, run_rows<5>, run_rows<6>};

// The same micro-kernel on 16-wide AVX-512 registers, for CPUs that have them (chosen at run time).
// One register holds one packed W panel row, so the packing is shared with the AVX2 path. Each lane
// still runs its own output's chain with the same IEEE fused multiply-add, so both paths give the same
// bits (the tests compare both against a scalar std::fma loop).
template <int MR, int NP>
__attribute__((target("avx512f"))) void micro_kernel_512(int64_t kc, const float* a, const float* w, float* c,
                                                         int64_t ldc, bool first) {
  __m512 acc[MR][NP];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 16
    for (int j = 0; j < NP; ++j) acc[i][j] = _mm512_setzero_ps();
  if (!first) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 16
      for (int j = 0; j < NP; ++j) acc[i][j] = _mm512_loadu_ps(c + i * ldc + kNr * j);
  }
  const int64_t pstride = kc * kNr;
  for (int64_t k = 0; k < kc; ++k) {
    __m512 b[NP];
#pragma GCC unroll 16
    for (int p = 0; p < NP; ++p) b[p] = _mm512_loadu_ps(w + p * pstride + k * kNr);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m512 x = _mm512_set1_ps(a[k * kMr + i]);
#pragma GCC unroll 16
      for (int j = 0; j < NP; ++j) acc[i][j] = _mm512_fmadd_ps(x, b[j], acc[i][j]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 16
    for (int j = 0; j < NP; ++j) _mm512_storeu_ps(c + i * ldc + kNr * j, acc[i][j]);
}
template <int MR>
constexpr int panels_for_rows_512() {
  return MR == 1 ? 8 : MR == 2 ? 6 : MR == 3 ? 5 : 4;  // MR * NP + NP + 1 <= 32 registers
}
template <int MR>
__attribute__((target("avx512f"))) void run_rows_512(int64_t kc, const float* a, const float* wbuf, int64_t panels,
                                                     float* c, int64_t ldc, bool first) {
  constexpr int NP = panels_for_rows_512<MR>();
  int64_t p = 0;
  for (; p + NP <= panels; p += NP) micro_kernel_512<MR, NP>(kc, a, wbuf + p * kc * kNr, c + p * kNr, ldc, first);
  for (; p + 2 <= panels; p += 2) micro_kernel_512<MR, 2>(kc, a, wbuf + p * kc * kNr, c + p * kNr, ldc, first);
  for (; p < panels; ++p) micro_kernel_512<MR, 1>(kc, a, wbuf + p * kc * kNr, c + p * kNr, ldc, first);
}
constexpr RowsFn kRowsAvx512[kMr + 1] = {nullptr,         run_rows_512<1>, run_rows_512<2>, run_rows_512<3>,
                                         run_rows_512<4>, run_rows_512<5>, run_rows_512<6>};

}  // namespace

// Which micro-kernels run: AVX-512 where the CPU has it, unless forced to AVX2 (the tests do, to hold both
// paths to the same bits; `bik bench cpu-gemm --kernels avx2` does, to time them). Not declared in a
// header: it is a testing and benchmarking switch, not an API.
static std::atomic<bool> g_force_avx2{false};
void gemm_force_avx2(bool on) { g_force_avx2 = on; }

namespace {

const RowsFn* rows_kernels() {
  static const bool has_512 = __builtin_cpu_supports("avx512f");
  return has_512 && !g_force_avx2 ? kRowsAvx512 : kRowsAvx2;
}

// ---- epilogue --------------------------------------------------------------------------------------------

template <class T>
float bias_at(const TensorView& b, int64_t n) {
  return load1(b.ptr<T>() + n * b.stride[0]);
}

void store_out(const TensorView& out, int64_t off, float v) {
  char* p = static_cast<char*>(out.data) + off * dtype_size(out.dtype);
  switch (out.dtype) {
    case DType::F16:
      *reinterpret_cast<f16*>(p) = to_f16(v);
      break;
    case DType::BF16:
      *reinterpret_cast<bf16*>(p) = to_bf16(v);
      break;
    default:
      *reinterpret_cast<float*>(p) = v;
  }
}

// ---- the driver ------------------------------------------------------------------------------------------

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

struct Tiling {
  int64_t mc, nc, m_tiles, n_tiles;
};

// Output tiles: as large as the caches allow, but enough of them (4 per thread) to keep every thread
// busy. Tiles only group outputs; they never change any output's chain, so they may depend on M and on
// the thread count (the tests vary both and compare bits).
Tiling choose_tiling(int64_t batch, int64_t m, int64_t n) {
  Tiling t;
  t.m_tiles = ceil_div(m, kMcMax);
  t.mc = round_up(ceil_div(m, t.m_tiles), kMr);
  const int64_t want = 4 * int64_t(num_threads());
  int64_t nc = kNcMax;
  while (nc > 4 * kNr && batch * t.m_tiles * ceil_div(n, nc) < want) nc /= 2;
  t.n_tiles = ceil_div(n, nc);
  t.nc = round_up(ceil_div(n, t.n_tiles), kNr);
  t.m_tiles = ceil_div(m, t.mc);
  return t;
}

struct Workspace {
  std::vector<float> a, w, c;
};
Workspace& workspace() {
  thread_local Workspace ws;
  return ws;
}

template <class T>
void gemm_typed(const GemmArgs& g) {
  const int64_t M = g.m, N = g.n, K = g.k;
  const Tiling t = choose_tiling(g.batch, M, N);
  const int64_t tasks = g.batch * t.m_tiles * t.n_tiles;
  const TensorView &A = g.a, &W = g.w, &O = g.out;

  const RowsFn* kernels = rows_kernels();
  parallel_for(tasks, 1, [&](int64_t begin, int64_t end) {
    Workspace& ws = workspace();
    const int64_t kc_max = std::min(K, kKc);
    ws.a.resize(size_t(t.mc * std::max<int64_t>(kc_max, 1) + kPackSlack));
    ws.w.resize(size_t(t.nc * std::max<int64_t>(kc_max, 1)));
    ws.c.resize(size_t(t.mc * t.nc));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t mt = task % t.m_tiles, rest = task / t.m_tiles;
      const int64_t nt = rest % t.n_tiles, b = rest / t.n_tiles;
      const int64_t m0 = mt * t.mc, mc = std::min(t.mc, M - m0);
      const int64_t n0 = nt * t.nc, nc = std::min(t.nc, N - n0);
      const int64_t a_panels = ceil_div(mc, kMr), w_panels = ceil_div(nc, kNr);
      const int64_t ldc = w_panels * kNr;
      const Src2d<T> sa{A.ptr<T>() + b * A.stride[0], A.stride[1], A.stride[2]};
      const Src2d<T> sw{W.ptr<T>() + b * W.stride[0], W.stride[1], W.stride[2]};
      float* c = ws.c.data();
      if (K == 0) std::fill(c, c + a_panels * kMr * ldc, 0.0f);

      for (int64_t k0 = 0; k0 < K; k0 += kKc) {
        const int64_t kc = std::min(kKc, K - k0);
        const bool first = k0 == 0;
        for (int64_t p = 0; p < w_panels; ++p)
          pack_panel(ws.w.data() + p * kc * kNr, kNr, sw, n0 + p * kNr, int(std::min<int64_t>(kNr, nc - p * kNr)), k0,
                     kc);
        for (int64_t p = 0; p < a_panels; ++p)
          pack_panel(ws.a.data() + p * kc * kMr, kMr, sa, m0 + p * kMr, int(std::min<int64_t>(kMr, mc - p * kMr)), k0,
                     kc);
        for (int64_t p = 0; p < a_panels; ++p) {
          const int rows = int(std::min<int64_t>(kMr, mc - p * kMr));
          kernels[rows](kc, ws.a.data() + p * kc * kMr, ws.w.data(), w_panels, c + p * kMr * ldc, ldc, first);
        }
      }

      // Epilogue: bias once after the whole chain, then one rounding to the output dtype.
      for (int64_t i = 0; i < mc; ++i) {
        const float* ci = c + i * ldc;
        const int64_t orow = b * O.stride[0] + (m0 + i) * O.stride[1];
        if (O.dtype == DType::F32 && O.stride[2] == 1 && !g.bias) {
          std::copy(ci, ci + nc, O.ptr<float>() + orow + n0);
          continue;
        }
        for (int64_t j = 0; j < nc; ++j) {
          float v = ci[j];
          if (g.bias) v += g.bias->dtype == DType::F32 ? bias_at<float>(*g.bias, n0 + j) : bias_at<T>(*g.bias, n0 + j);
          store_out(O, orow + (n0 + j) * O.stride[2], v);
        }
      }
    }
  });
}

}  // namespace

void gemm(const GemmArgs& g, Stream) {
  switch (g.a.dtype) {
    case DType::F32:
      gemm_typed<float>(g);
      break;
    case DType::F16:
      gemm_typed<f16>(g);
      break;
    case DType::BF16:
      gemm_typed<bf16>(g);
      break;
    default:
      throw Error(std::string("gemm: unsupported input dtype ") + dtype_name(g.a.dtype));
  }
}

// The two calls mm_silu_and_mul stands for, through a scratch product [B, M, 2d] in the inputs' dtype
// (the CPU has no fused kernel: the bits are those of the two calls by construction).
void gemm_silu_and_mul(const GemmArgs& g, Stream s) {
  Tensor product = Tensor::empty({g.batch, g.m, g.n}, g.a.dtype);
  GemmArgs plain = g;
  plain.out = product.view();
  cpu::gemm(plain, s);
  cpu::silu_and_mul(g.out, product.view(), s);
}

}  // namespace bik::cpu

// CUDA GEMM, split tiles (gemm_sm90.cu, kernel kSplit): a pair of CTAs in a cluster computes each output
// tile, rank 0 over the first half of K's 64-wide stages, rank 1 over the rest, and the two pieces' sums
// of every output meet through the partner's shared memory (st.async) in the CTA that stores its row.
// The split point depends on K alone, so:
//   - every split tile gives the same bits as every other (the tile shape only moves outputs between threads);
//   - a row gives the same bits alone (M = 1) and at any place in a batch of any size;
//   - the result is the unsplit sum to F32 rounding (f32 outputs against the default 64x128 tile), and it
//     really is split: for long K some outputs differ from the unsplit tile's (else a silent fall-back to
//     one CTA a tile would pass the other checks).
// The negative control runs the same row check on cuBLASLt over the same batch sizes: it has to find
// differences, or the check proves nothing.
#include <gtest/gtest.h>

#include "gpu/gpu_env.h"
#include "gpu/gemm_test_util.h"
#include "gpu/test_util.h"

#if BIK_WITH_CUDA
#include <cmath>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "bik/ops.h"
#include "bik/tensor.h"
#include "core/backend.h"
#include "cuda/cublas_gemm.h"
#include "cuda/gemm.h"

using namespace bik;

namespace {

using test::dev;
using test::dev_filled;
using test::differing;
using test::is_sm90;
using test::make_args;
using test::shape_str;

std::vector<std::string> split_tiles() { return test::sm90_tiles_named("split"); }

// Largest |x - y| over the largest |y| of two f32 tensors of one shape.
double rel_diff(const Tensor& x, const Tensor& y) {
  const Tensor hx = Tensor::empty(x.sizes(), DType::F32), hy = Tensor::empty(y.sizes(), DType::F32);
  copy(hx, x);
  copy(hy, y);
  const auto* px = static_cast<const float*>(hx.data());
  const auto* py = static_cast<const float*>(hy.data());
  double d = 0, s = 0;
  for (int64_t i = 0; i < hx.numel(); ++i) {
    d = std::fmax(d, std::fabs(double(px[i]) - py[i]));
    s = std::fmax(s, std::fabs(double(py[i])));
  }
  return s > 0 ? d / s : d;
}

}  // namespace

// Every split tile against the first one, bit for bit, on 16-bit and f32 outputs, and the f32 result against
// the unsplit 64x128 tile to F32 rounding. M = 1 and 129 end inside a tile; 300 needs several M-tiles, the
// last overlapping the one before. K = 72 (two stages: one a piece, the second a zero-filled tail), 4096
// and 12288 (the down projection's K: 96 stages a piece) wrap the stage rings; N = 200 ends inside a tile.
TEST(GpuGemmSplit, EverySplitTileGivesTheSameBitsAndTheUnsplitSum) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "the split tiles are sm_90 kernels";
  const std::vector<std::string> tiles = split_tiles();
  ASSERT_EQ(tiles.size(), 4u) << "split64x64, 64x128, 128x128, 128x192";
  int64_t compared = 0, split_differs = 0;
  for (int64_t m : {1, 129, 300})
    for (int64_t n : {200, 4096})
      for (int64_t k : {72, 4096, 12288}) {
        const Tensor a = dev_filled({m, k}, DType::BF16, uint64_t(m * 7 + k));
        const Tensor w = dev_filled({n, k}, DType::BF16, uint64_t(n * 5 + k));
        const Tensor unsplit = dev({m, n}, DType::F32);
        cuda::gemm_sm90_tile(make_args(unsplit, a, w, std::nullopt), {}, "64x128");
        Tensor first16, first32;
        for (const std::string& tile : tiles) {
          const std::string what = "tile " + tile + " " + shape_str(m, n, k);
          const Tensor o16 = dev({m, n}, DType::BF16), o32 = dev({m, n}, DType::F32);
          fill_bytes(o16, 0xff);
          fill_bytes(o32, 0xff);
          cuda::gemm_sm90_tile(make_args(o16, a, w, std::nullopt), {}, tile);
          cuda::gemm_sm90_tile(make_args(o32, a, w, std::nullopt), {}, tile);
          EXPECT_LT(rel_diff(o32, unsplit), 1e-4) << what << ": not the product";
          if (first16.numel() == 0) {
            first16 = o16, first32 = o32;
            split_differs += differing(o32, unsplit);
            continue;
          }
          EXPECT_EQ(differing(o16, first16), 0) << what << " against " << tiles[0] << ", 16-bit out";
          EXPECT_EQ(differing(o32, first32), 0) << what << " against " << tiles[0] << ", f32 out";
          compared += 2;
        }
      }
  EXPECT_GT(split_differs, 0) << "no f32 output differs from the unsplit tile's: nothing was split";
  std::printf("[split] %lld split-tile runs compared bit for bit; %lld f32 outputs differ from the unsplit sum\n",
              (long long)compared, (long long)split_differs);
}

// Rows alone against the same rows in batches of every size the engine's steps take, on every split tile
// (K = 4096 and 12288, N = 4096): bit for bit. The negative control: the same check on cuBLASLt, whose
// algorithm and split-K change with M, must find differing rows.
TEST(GpuGemmSplit, RowAloneEqualsRowInAnyBatch) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "the split tiles are sm_90 kernels";
  const int64_t n = 4096;
  const int64_t batches[] = {2, 64, 129, 256, 300, 384, 512};
  for (int64_t k : {4096, 12288}) {
    const int64_t mmax = 512;
    const Tensor a = dev_filled({mmax, k}, DType::BF16, uint64_t(k + 11)), w = dev_filled({n, k}, DType::BF16, 23);
    for (const std::string& tile : split_tiles()) {
      // Row r alone, for a few rows, then the same rows inside each batch.
      for (int64_t r : {0, 1, 127, 255}) {
        const Tensor alone = dev({1, n}, DType::BF16);
        cuda::gemm_sm90_tile(make_args(alone, a.narrow(0, r, 1), w, std::nullopt), {}, tile);
        for (int64_t m : batches) {
          if (r >= m) continue;
          const Tensor o = dev({m, n}, DType::BF16);
          cuda::gemm_sm90_tile(make_args(o, a.narrow(0, 0, m), w, std::nullopt), {}, tile);
          EXPECT_EQ(differing(o.narrow(0, r, 1), alone), 0)
              << "tile " << tile << " K=" << k << ": row " << r << " alone differs from row " << r << " of M=" << m;
        }
      }
    }
    // Negative control: cuBLASLt over the same batches.
    int64_t cublas_rows_differ = 0;
    for (int64_t r : {0, 1, 127, 255}) {
      const Tensor alone = dev({1, n}, DType::BF16);
      cuda::cublaslt_gemm(make_args(alone, a.narrow(0, r, 1), w, std::nullopt), {});
      for (int64_t m : batches) {
        if (r >= m) continue;
        const Tensor o = dev({m, n}, DType::BF16);
        cuda::cublaslt_gemm(make_args(o, a.narrow(0, 0, m), w, std::nullopt), {});
        cublas_rows_differ += differing(o.narrow(0, r, 1), alone) > 0;
      }
    }
    EXPECT_GT(cublas_rows_differ, 0) << "K=" << k << ": the row check found nothing on cuBLASLt";
    std::printf("[split] K=%lld: cuBLASLt rows differing from their alone value: %lld\n", (long long)k,
                (long long)cublas_rows_differ);
  }
}

#endif  // BIK_WITH_CUDA

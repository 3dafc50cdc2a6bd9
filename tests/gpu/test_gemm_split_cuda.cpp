// CUDA GEMM, experimental split tiles (gemm_sm90.cu, gemm_kernel's kSplit): a pair of CTAs on each output
// tile over the K pieces [0, L) and [L, K) (L = gemm_split_len(K)), each CTA finishing half of the tile's
// columns with piece 0 + piece 1. Their bits must be those of the pieces computed as two products with F32
// outputs (the default tiles, one K chain each) and summed by sum_partials (then the bias, one rounding),
// for every split tile, M, output dtype, with and without a bias, K tails included; and a row's bits must
// not depend on the batch around it. The launch counter proves a split tile ran. The check has teeth: the
// unsplit chain (the default tiles over all of K) must differ from the split result somewhere.
#include <gtest/gtest.h>

#include "gpu/gpu_env.h"
#include "gpu/gemm_test_util.h"
#include "gpu/test_util.h"

#if BIK_WITH_CUDA
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "bik/ops.h"
#include "bik/tensor.h"
#include "core/backend.h"
#include "cuda/gemm.h"

using namespace bik;

namespace {

using test::dev;
using test::dev_filled;
using test::differing;
using test::is_sm90;
using test::make_args;
using test::shape_str;

// out = round(piece 0 + piece 1 (+ bias)) with the pieces as two products of the default tiles into F32.
void composed_split(const Tensor& out, const Tensor& a, const Tensor& w, const std::optional<TensorView>& bias) {
  const int64_t m = a.size(0), n = w.size(0), k = a.size(1), len = cuda::gemm_split_len(k);
  const Tensor parts = dev({2, m, n}, DType::F32);
  for (int64_t piece = 0; piece < 2; ++piece) {
    const int64_t lo = piece * len, width = piece == 0 ? len : k - len;
    cuda::gemm(make_args(parts.view().select(0, piece), a.view().narrow(1, lo, width), w.view().narrow(1, lo, width),
                         std::nullopt),
               {});
  }
  sum_partials(out, parts, bias);
}

}  // namespace

TEST(GpuGemmSplit, SplitTilesEqualThePiecesSummed) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "the wgmma kernel needs sm_90";
  int64_t compared = 0, differ_unsplit = 0;
  for (DType dt : {DType::BF16, DType::F16})
    for (const auto& [m, n, k] : std::vector<std::array<int64_t, 3>>{
             {1, 4096, 12288}, {77, 1000, 8200}, {200, 4096, 12288}, {256, 520, 4095}, {300, 2048, 1000}}) {
      const Tensor a = dev_filled({m, k}, dt, uint64_t(m * 3 + k)), w = dev_filled({n, k}, dt, uint64_t(n + k));
      // sum_partials takes a bias of the output's dtype or F32: an F32 one for the F32 outputs
      const Tensor bias = dev_filled({n}, dt, uint64_t(n) + 5), bias32 = dev_filled({n}, DType::F32, uint64_t(n) + 6);
      for (const bool with_bias : {false, true})
        for (const DType out_dt : {dt, DType::F32}) {
          std::optional<TensorView> b;
          if (with_bias) b = out_dt == DType::F32 ? bias32.view() : bias.view();
          const Tensor ref = dev({m, n}, out_dt), unsplit = dev({m, n}, out_dt), o = dev({m, n}, out_dt);
          fill_bytes(ref, 0xff);
          composed_split(ref, a, w, b);
          cuda::gemm(make_args(unsplit, a, w, b), {});
          differ_unsplit += differing(unsplit, ref);
          for (const std::string& tile : cuda::gemm_sm90_split_tiles()) {
            const std::string what = tile + " " + dtype_name(dt) + " -> " + dtype_name(out_dt) +
                                     (with_bias ? " bias " : " ") + shape_str(m, n, k);
            fill_bytes(o, 0xff);
            const uint64_t l0 = cuda::gemm_sm90_split_launches();
            cuda::gemm_sm90_tile(make_args(o, a, w, b), {}, tile);
            EXPECT_EQ(cuda::gemm_sm90_split_launches() - l0, 1u) << what;
            EXPECT_EQ(differing(o, ref), 0) << what << ": against the pieces summed";
            ++compared;
          }
        }
    }
  std::printf("[split] %lld split-tile runs bit for bit with the pieces summed; the unsplit chain differs in %lld "
              "elements\n",
              (long long)compared, (long long)differ_unsplit);
  EXPECT_GT(differ_unsplit, 0) << "the unsplit chain never differs from the split sum: the check has no teeth";
}

// Rows alone (M = 1) against the same rows inside batches of other sizes, on one split tile each time: a
// split is a function of K, so every batch size gives a row the same bits.
TEST(GpuGemmSplit, RowsAreBatchInvariant) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "the wgmma kernel needs sm_90";
  const int64_t n = 4096, k = 12288;
  const DType dt = DType::BF16;
  const Tensor w = dev_filled({n, k}, dt, 41), pool = dev_filled({512, k}, dt, 42);
  int64_t rows = 0;
  for (const std::string& tile : cuda::gemm_sm90_split_tiles())
    for (int64_t m : {2, 64, 129, 200, 256, 385, 512}) {
      const Tensor batch = dev({m, n}, dt), alone = dev({1, n}, dt);
      cuda::gemm_sm90_tile(make_args(batch, pool.view().narrow(0, 0, m), w, std::nullopt), {}, tile);
      for (int64_t r : {int64_t(0), m / 2, m - 1}) {
        cuda::gemm_sm90_tile(make_args(alone, pool.view().narrow(0, r, 1), w, std::nullopt), {}, tile);
        EXPECT_EQ(differing(alone, batch.view().narrow(0, r, 1)), 0) << tile << " row " << r << " of M=" << m;
        ++rows;
      }
    }
  std::printf("[split] %lld rows alone against in batches of 2..512\n", (long long)rows);
}

#else
TEST(GpuGemmSplit, Skipped) { GTEST_SKIP() << "no GPU: this build has no CUDA backend"; }
#endif

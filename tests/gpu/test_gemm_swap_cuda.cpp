// CUDA GEMM, swapped tiles (gemm_sm90.cu, Config::kSwapped): for 128 < M <= 448 the kernel may compute the
// transposed product out^T = w a^T, 64 weight rows by 144..256 activation rows a tile, the wgmma
// N composed of several instructions (wgmma_cols), and write tile columns as output rows. Every output
// must keep the default tiles' bits: through the column epilogue (16-bit out) and the element stores (f32
// out, unaligned rows), at M/N edges and K tails; through gemm() when BIK_GEMM_SWAP picks the tile; and a
// row must keep its bits alone and anywhere in such a batch. The negative control runs the same row check
// on cuBLASLt over the same batch sizes: it has to find differences, or the check proves nothing.
// The launch counter proves a swapped tile ran: a silent fall-back would compare the default with itself.
#include <gtest/gtest.h>

#include "gpu/gpu_env.h"
#include "gpu/gemm_test_util.h"
#include "gpu/test_util.h"

#if BIK_WITH_CUDA
#include <algorithm>
#include <array>
#include <iterator>
#include <cstdio>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "bik/ops.h"
#include "bik/tensor.h"
#include "core/backend.h"
#include "cuda/cublas_gemm.h"
#include "cuda/device_info.h"
#include "cuda/gemm.h"

using namespace bik;

namespace {

using test::dev;
using test::dev_filled;
using test::differing;
using test::gpu;
using test::is_sm90;
using test::make_args;
using test::shape_str;
using test::ScopedEnv;

std::vector<std::string> swapped_tiles() { return test::sm90_tiles_named("swap64"); }

// Every tile of `tiles` on every (M, N, K) of the lists against the default 64x128 tile, bit for bit, on
// three outputs: 16-bit (the column epilogue), f32 (element stores: the column epilogue takes 16-bit
// outputs only) and 16-bit rows of N + 1 elements (not 16-byte aligned: element stores). `launches` counts
// the tiles' own launches (three per tile and shape, or the tile fell back to another). Returns the runs.
int64_t compare_with_default(const std::vector<std::string>& tiles, uint64_t (*launches)(),
                             const std::vector<int64_t>& ms, const std::vector<int64_t>& ns,
                             const std::vector<int64_t>& ks) {
  int64_t compared = 0;
  for (DType dt : {DType::BF16, DType::F16})
    for (int64_t m : ms)
      for (int64_t n : ns)
        for (int64_t k : ks) {
          const Tensor a = dev_filled({m, k}, dt, uint64_t(m * 7 + k)), w = dev_filled({n, k}, dt, uint64_t(n * 5 + k));
          const Tensor base16 = dev({m, n}, dt), base32 = dev({m, n}, DType::F32);
          const Tensor basepad = Tensor::empty_padded({m, n}, n + 1, dt, gpu());
          const Tensor o16 = dev({m, n}, dt), o32 = dev({m, n}, DType::F32);
          const Tensor opad = Tensor::empty_padded({m, n}, n + 1, dt, gpu());
          for (const Tensor* t : {&base16, &base32, &basepad}) fill_bytes(*t, 0xff);
          cuda::gemm_sm90_tile(make_args(base16, a, w, std::nullopt), {}, "64x128");
          cuda::gemm_sm90_tile(make_args(base32, a, w, std::nullopt), {}, "64x128");
          cuda::gemm_sm90_tile(make_args(basepad, a, w, std::nullopt), {}, "64x128");
          for (const std::string& tile : tiles) {
            const std::string what = "tile " + tile + " " + dtype_name(dt) + " " + shape_str(m, n, k);
            const uint64_t launches0 = launches();
            for (const Tensor* t : {&o16, &o32, &opad}) fill_bytes(*t, 0xff);
            cuda::gemm_sm90_tile(make_args(o16, a, w, std::nullopt), {}, tile);
            cuda::gemm_sm90_tile(make_args(o32, a, w, std::nullopt), {}, tile);
            cuda::gemm_sm90_tile(make_args(opad, a, w, std::nullopt), {}, tile);
            EXPECT_EQ(launches() - launches0, 3u) << what << ": the tile's own launches";
            EXPECT_EQ(differing(o16, base16), 0) << what << ", 16-bit out (column epilogue)";
            EXPECT_EQ(differing(o32, base32), 0) << what << ", f32 out";
            EXPECT_EQ(differing(opad, basepad), 0) << what << ", 16-bit out rows of N + 1";
            compared += 3;
          }
        }
  return compared;
}

struct RowStats {
  int64_t cases = 0, diffs = 0;
};

// The row check: rows [0, 16) of `pool` each computed alone (M = 1) by `run`, then, for each batch size in
// `sizes`, a random window of the pool with those rows copied to distinct random positions, run once, and
// each target's output row compared byte for byte with its row alone. With `expect_equal` every comparison
// is also a test assertion (the negative control counts differences instead).
template <class Run>
RowStats hidden_rows(Run&& run, const Tensor& pool, int64_t n, const std::vector<int64_t>& sizes,
                     std::mt19937_64& rng, bool expect_equal) {
  const int64_t targets = 16, pool_rows = pool.size(0), k = pool.size(1);
  const DType dt = pool.dtype();
  std::vector<Tensor> alone;
  for (int64_t t = 0; t < targets; ++t) {
    alone.push_back(dev({1, n}, dt));
    run(alone.back(), pool.view().narrow(0, t, 1));
  }
  const int64_t most = *std::max_element(sizes.begin(), sizes.end());
  const Tensor a = dev({most, k}, dt), o = dev({most, n}, dt);
  RowStats st;
  for (int64_t m : sizes) {
    const TensorView av = a.view().narrow(0, 0, m), ov = o.view().narrow(0, 0, m);
    copy(av, pool.view().narrow(0, int64_t(rng() % uint64_t(pool_rows - m)), m));
    std::vector<int64_t> pos;
    for (int64_t t = 0; t < targets; ++t) {
      int64_t p;
      do p = int64_t(rng() % uint64_t(m));
      while (std::find(pos.begin(), pos.end(), p) != pos.end());
      pos.push_back(p);
      copy(av.narrow(0, p, 1), pool.view().narrow(0, t, 1));
    }
    fill_bytes(o, 0xff);
    run(ov, av);
    for (int64_t t = 0; t < targets; ++t) {
      ++st.cases;
      const int64_t d = differing(ov.narrow(0, pos[size_t(t)], 1), alone[size_t(t)]);
      st.diffs += d != 0;
      if (expect_equal) EXPECT_EQ(d, 0) << "row " << t << " at row " << pos[size_t(t)] << " of a batch of " << m;
    }
  }
  return st;
}

}  // namespace

// Every swapped tile against the default 64x128 tile, bit for bit (compare_with_default). M = 1 and 129
// leave most of a tile's columns past M; 300 needs two or three column tiles of every tile, the last
// overlapping the one before (it starts at M - BN); N = 200 and 1000 end inside a 64-row tile (its last
// output columns are a partial 16-byte piece); K = 72 is a stage and a zero-filled tail, 4096 wraps the
// stage ring within a tile. N = 4096 gives 64 tiles, so CTAs of the ping-pong walk take one or two.
TEST(GpuGemmSwap, EverySwappedTileGivesTheDefaultBits) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "the wgmma kernel needs sm_90";
  const std::vector<std::string> tiles = swapped_tiles();
  EXPECT_EQ(tiles.size(), 6u) << "swap64x144, 160, 192, 208, 224, 256";
  const ScopedEnv cluster("BIK_GEMM_CLUSTER", "0");
  const int64_t compared = compare_with_default(tiles, cuda::gemm_sm90_swapped_launches, {1, 129, 200, 256, 300},
                                                {200, 1000, 4096}, {72, 4096});
  std::printf("[swap] %lld swapped-tile runs compared bit for bit with the default 64x128 tile\n", (long long)compared);
}

// Every wide swapped tile (128 weight rows, two consumer warpgroups, one CTA a tile: "swap128x..") against the
// default 64x128 tile, bit for bit (compare_with_default). M = 1 and 129 leave most of a tile's columns past
// M; 300 and 700 need several column tiles of every tile, the last starting at M - BN; N = 200 and 1000 end
// inside a 128-row weight tile; K = 72 and 4096 as above. N = 4096 gives 32 weight tiles, so a CTA walks
// several tiles when M needs more than four column tiles.
TEST(GpuGemmSwap, EveryWideSwappedTileGivesTheDefaultBits) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "the wgmma kernel needs sm_90";
  const std::vector<std::string> tiles = test::sm90_tiles_named("swap128");
  EXPECT_EQ(tiles.size(), 10u) << "swap128x112 .. swap128x256";
  const int64_t compared = compare_with_default(tiles, cuda::gemm_sm90_swapped_launches, {1, 129, 300, 700},
                                                {200, 1000, 4096}, {72, 4096});
  std::printf("[wide] %lld wide swapped-tile runs compared bit for bit with the default 64x128 tile\n",
              (long long)compared);
}

// Every plain pair tile (192 weight rows by BN activation rows, two CTAs sharing the weight tile: "pair192x..")
// against the default 64x128 tile, bit for bit (compare_with_default). M = 1 and 129 leave one column
// tile (its partner computes on copied rows and stores nothing) or an odd count; 300 and 500 several,
// the last starting at M - BN; N = 200, 1000 and 6144 end inside a 192-row tile, or (6144) give 32 weight
// tiles, so a pair's CTAs walk several tiles; K = 72 and 4096 as above. The pair launch counter proves the
// pair kernel ran (a fall-back to the default tile would compare it with itself).
TEST(GpuGemmSwap, EveryPairTileGivesTheDefaultBits) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "the wgmma kernel needs sm_90";
  const std::vector<std::string> tiles = test::sm90_tiles_named("pair");
  EXPECT_EQ(tiles.size(), 9u) << "pair192x64 .. pair192x192";
  const int64_t compared =
      compare_with_default(tiles, cuda::gemm_sm90_pair_launches, {1, 129, 300, 500}, {200, 1000, 6144}, {72, 4096});
  std::printf("[pair] %lld pair-tile runs compared bit for bit with the default 64x128 tile\n", (long long)compared);
}

// A swapped tile's rows are output columns, so it cannot add a bias per output column: asking for one is
// an error that says so (gemm() never picks a swapped tile for a product with a bias).
TEST(GpuGemmSwap, BiasIsRefusedWithAMessage) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "the wgmma kernel needs sm_90";
  const Tensor a = dev_filled({200, 256}, DType::BF16, 1), w = dev_filled({512, 256}, DType::BF16, 2);
  const Tensor bias = dev_filled({512}, DType::BF16, 3), o = dev({200, 512}, DType::BF16);
  try {
    cuda::gemm_sm90_tile(make_args(o, a, w, bias.view()), {}, "swap64x208");
    ADD_FAILURE() << "a swapped tile accepted a bias";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("takes no bias"), std::string::npos) << e.what();
  }
  const std::string name = cuda::gemm_config_name(make_args(o, a, w, bias.view()));
  EXPECT_EQ(name.find("swap"), std::string::npos) << "gemm() would run " << name << " with a bias";
  {
    const ScopedEnv on("BIK_GEMM_SWAP", "1");
    EXPECT_EQ(cuda::gemm_config_name(make_args(o, a, w, bias.view())).find("swap"), std::string::npos);
    EXPECT_NE(cuda::gemm_config_name(make_args(o, a, w, std::nullopt)).find("swap64x208"), std::string::npos)
        << cuda::gemm_config_name(make_args(o, a, w, std::nullopt));
  }
}

namespace {

// One product through gemm() with the switch `var` at "0", "1" and unset: at "0" no tile of the family
// (`family` in the configuration name, `launches` its counter) is named or launched, and the product gives
// the reference bits; at "1" and unset one such tile is launched exactly when the configuration name has
// the family, with the reference bits. Returns the names under "1" and unset, for the caller's rule checks.
struct DispatchNames {
  std::string forced, rule;
};
DispatchNames check_dispatch(const char* var, const char* family, uint64_t (*launches)(), const Tensor& a,
                             const Tensor& w, const Tensor& base, const Tensor& o, const std::string& what) {
  fill_bytes(base, 0xff);
  {
    const ScopedEnv off(var, "0");
    EXPECT_EQ(cuda::gemm_config_name(make_args(base, a, w, std::nullopt)).find(family), std::string::npos) << what;
    const uint64_t l0 = launches();
    mm(base, a, w);
    EXPECT_EQ(launches(), l0) << what << ": " << var << "=0 ran a " << family << " tile";
  }
  DispatchNames names;
  for (const char* mode : {"1", static_cast<const char*>(nullptr)}) {
    const ScopedEnv env(var, mode);
    const std::string name = cuda::gemm_config_name(make_args(o, a, w, std::nullopt));
    const bool taken = name.find(family) != std::string::npos;
    const uint64_t l0 = launches();
    fill_bytes(o, 0xff);
    mm(o, a, w);
    EXPECT_EQ(launches() - l0, taken ? 1u : 0u) << what << ": " << name;
    EXPECT_EQ(differing(o, base), 0) << what << ": " << name << " against " << var << "=0";
    (mode ? names.forced : names.rule) = name;
  }
  return names;
}

}  // namespace

// Through gemm() on the engine's projection shapes at decode batch sizes (past 256 rows: two column tiles):
// BIK_GEMM_SWAP=1 takes the swapped tile (launch counter, configuration name), =0 never does, unset takes
// the rule's pick (swap_pays); all the same bits.
constexpr int64_t kDispatchRows[] = {129, 144, 200, 232, 256, 264, 288, 300, 352, 360, 384, 385, 400, 432, 448};
TEST(GpuGemmSwap, DispatchGivesTheSameBitsEitherWay) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "the wgmma kernel needs sm_90";
  const ScopedEnv no_pairs("BIK_GEMM_PAIRS", "0");  // the pair tiles' own test below
  int picked = 0;
  for (DType dt : {DType::BF16, DType::F16})
    for (const auto& [n, k] : std::vector<std::array<int64_t, 2>>{{6144, 4096}, {4096, 4096}, {24576, 4096}, {4096, 12288}})
      for (int64_t m : kDispatchRows) {
        const std::string what = std::string(dtype_name(dt)) + " " + shape_str(m, n, k);
        const Tensor a = dev_filled({m, k}, dt, uint64_t(m + n)), w = dev_filled({n, k}, dt, uint64_t(k + 1));
        const Tensor base = dev({m, n}, dt), o = dev({m, n}, dt);
        const DispatchNames names =
            check_dispatch("BIK_GEMM_SWAP", "swap", cuda::gemm_sm90_swapped_launches, a, w, base, o, what);
        EXPECT_NE(names.forced.find("swap"), std::string::npos) << what << ": BIK_GEMM_SWAP=1 gives " << names.forced;
        picked += names.rule.find("swap") != std::string::npos;
        std::printf("[swap] %s: %s\n", what.c_str(), names.rule.c_str());
      }
  std::printf("[swap] the default rule picked a swapped tile for %d of %zu products\n", picked,
              2 * 4 * std::size(kDispatchRows));
}

// The rule on N = 4096 (o-proj, K = 4096, and down, K = 12288) past 256 rows: two swapped column tiles of
// ceil(M / 2) rows up to M = 448 (on 132 SMs their 128 tiles fit one wave), the default tiles from 449 on
// (BIK_GEMM_SWAP=1 takes none there either); the same bits as BIK_GEMM_SWAP=0.
TEST(GpuGemmSwap, RuleTakesTwoColumnTilesUpTo448RowsAtN4096) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "the wgmma kernel needs sm_90";
  if (cuda::use_device(0).sms != 132) GTEST_SKIP() << "the rule's bounds below are those of 132 SMs";
  const ScopedEnv no_pairs("BIK_GEMM_PAIRS", "0");
  for (const int64_t k : {4096, 12288}) {
    const Tensor w = dev_filled({4096, k}, DType::BF16, uint64_t(k + 11));
    for (const auto& [m, tile] : std::vector<std::pair<int64_t, std::string>>{
             {385, "swap64x208"}, {400, "swap64x208"}, {416, "swap64x208"}, {417, "swap64x224"}, {448, "swap64x224"},
             {449, "128x128"}, {480, "128x128"}}) {
      const std::string what = shape_str(m, 4096, k);
      const Tensor a = dev_filled({m, k}, DType::BF16, uint64_t(m)), base = dev({m, 4096}, DType::BF16),
                   o = dev({m, 4096}, DType::BF16);
      const DispatchNames names =
          check_dispatch("BIK_GEMM_SWAP", "swap", cuda::gemm_sm90_swapped_launches, a, w, base, o, what);
      EXPECT_EQ(names.rule.rfind("sm90 " + tile + " ", 0), 0u) << what << ": the rule gives " << names.rule;
      EXPECT_EQ(names.forced.find("swap") != std::string::npos, m <= 448) << what << ": =1 gives " << names.forced;
    }
  }
}

// The wide rule on N = 4096 (o-proj, K = 4096, and down, K = 12288) past 448 rows, on 132 SMs: where the
// default walk leaves a part wave (M = 1637: 208 tiles of 128x256) eight column tiles of 208 rows fill two
// (256 tiles); at M = 1300 eight of 176 rows (not twelve of 112, less work in three waves); against
// 128x256 at equal work the wide tile (M = 2048); where the default fills its waves with less work
// (M = 456 on 128x128, M = 1500 on 128x192) the default stays. BIK_GEMM_WIDE=1 takes a wide tile at every
// one of these M, =0 at none; all the same bits.
TEST(GpuGemmSwap, WideRuleFillsThePartWave) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "the wgmma kernel needs sm_90";
  if (cuda::use_device(0).sms != 132) GTEST_SKIP() << "the rule's choices below are those of 132 SMs";
  for (const int64_t k : {4096, 12288}) {
    const Tensor w = dev_filled({4096, k}, DType::BF16, uint64_t(k + 13));
    for (const auto& [m, tile] : std::vector<std::pair<int64_t, std::string>>{
             {456, "128x128"}, {1300, "swap128x176"}, {1500, "128x192"}, {1637, "swap128x208"},
             {2048, "swap128x256"}}) {
      const std::string what = shape_str(m, 4096, k);
      const Tensor a = dev_filled({m, k}, DType::BF16, uint64_t(m + 1)), base = dev({m, 4096}, DType::BF16),
                   o = dev({m, 4096}, DType::BF16);
      const DispatchNames names =
          check_dispatch("BIK_GEMM_WIDE", "swap128", cuda::gemm_sm90_swapped_launches, a, w, base, o, what);
      EXPECT_EQ(names.rule.rfind("sm90 " + tile + " ", 0), 0u) << what << ": the rule gives " << names.rule;
      EXPECT_NE(names.forced.find("swap128"), std::string::npos) << what << ": BIK_GEMM_WIDE=1 gives " << names.forced;
    }
  }
}

// BIK_GEMM_PAIRS=1 takes a pair tile for 256 < M <= 512 (launch counter, configuration name), =0 never does,
// unset takes the rule's pick; all the same bits. On a 132-SM part (H100 SXM, H200) the rule takes one for
// q|k|v (6144 x 4096) at M = 352 and 448, not at 264 or 320, nor for o-proj (4096 x 4096).
TEST(GpuGemmSwap, PairDispatchGivesTheSameBits) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "the wgmma kernel needs sm_90";
  const bool sms132 = cuda::use_device(0).sms == 132;
  struct Case {
    int64_t m, n;
    bool rule_pairs;
  };
  for (DType dt : {DType::BF16, DType::F16})
    for (const Case& c : {Case{264, 6144, false}, Case{320, 6144, false}, Case{352, 6144, true}, Case{448, 6144, true},
                          Case{512, 6144, false}, Case{352, 4096, false}, Case{200, 6144, false}}) {
      const int64_t k = 4096;
      const std::string what = std::string(dtype_name(dt)) + " " + shape_str(c.m, c.n, k);
      const Tensor a = dev_filled({c.m, k}, dt, uint64_t(c.m + c.n)), w = dev_filled({c.n, k}, dt, uint64_t(k + 7));
      const Tensor base = dev({c.m, c.n}, dt), o = dev({c.m, c.n}, dt);
      const DispatchNames names =
          check_dispatch("BIK_GEMM_PAIRS", "pair", cuda::gemm_sm90_pair_launches, a, w, base, o, what);
      const bool applies = c.m > 256;  // M <= 512 in every case
      EXPECT_EQ(names.forced.find("pair") != std::string::npos, applies)
          << what << ": BIK_GEMM_PAIRS=1 gives " << names.forced;
      if (sms132)
        EXPECT_EQ(names.rule.find("pair") != std::string::npos, c.rule_pairs) << what << ": the rule gives " << names.rule;
    }
}

// Rows alone (M = 1, the default tiles) against the same rows hidden in batches of 257..512 run on pair
// tiles (BIK_GEMM_PAIRS=1; q|k|v's 6144 x 4096): every row keeps its bits.
TEST(GpuGemmSwap, PairRowsAreBatchInvariant) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "the wgmma kernel needs sm_90";
  const int64_t n = 6144, k = 4096;
  const DType dt = DType::BF16;
  const Tensor pool = dev_filled({1024, k}, dt, 191), w = dev_filled({n, k}, dt, 192);
  std::mt19937_64 rng(193);
  const ScopedEnv on("BIK_GEMM_PAIRS", "1");  // M = 1 (the rows alone) is no pair tile's
  const uint64_t l0 = cuda::gemm_sm90_pair_launches();
  const std::vector<int64_t> sizes = {257, 264, 300, 333, 352, 383, 400, 448, 479, 512};
  const RowStats st = hidden_rows([&](const TensorView& out, const TensorView& a) { mm(out, a, w); }, pool, n, sizes,
                                  rng, true);
  std::printf("[pair] %lld rows in batches of 257..512 on pair tiles compared with the row alone\n",
              (long long)st.cases);
  EXPECT_EQ(cuda::gemm_sm90_pair_launches() - l0, sizes.size()) << "every batch on a pair tile";
}

namespace {

// The row check (hidden_rows) on a 4096 x 4096 product through gemm() with `var` = "1" (and `var2` = `val2`
// where given), every batch of `sizes` on a swapped tile (the swapped launch counter); then the same check
// on cuBLASLt, the negative control, whose kernels change with M: it must find rows that differ. Pool, weight
// and positions come from seeds `seed`, + 1 and + 2; `tag` prefixes the printed counts.
void swapped_rows_and_cublas_control(const char* tag, const char* var, const char* var2, const char* val2,
                                     int64_t pool_rows, uint64_t seed, const std::vector<int64_t>& sizes) {
  const int64_t n = 4096, k = 4096;
  const DType dt = DType::BF16;
  const Tensor pool = dev_filled({pool_rows, k}, dt, seed), w = dev_filled({n, k}, dt, seed + 1);
  std::mt19937_64 rng(seed + 2);
  for (const bool cublas : {false, true}) {
    auto run = [&](const TensorView& out, const TensorView& a) {
      if (cublas) cuda::cublaslt_gemm(make_args(out, a, w, std::nullopt), {});
      else mm(out, a, w);
    };
    const ScopedEnv on(var, "1");  // M = 1 (the rows alone) is no swapped tile's
    std::optional<ScopedEnv> second;
    if (var2) second.emplace(var2, val2);
    const uint64_t l0 = cuda::gemm_sm90_swapped_launches();
    const RowStats st = hidden_rows(run, pool, n, sizes, rng, !cublas);
    std::printf("[%s] %s: %lld of %lld rows differ from the row computed alone\n", tag, cublas ? "cublaslt" : "bik",
                (long long)st.diffs, (long long)st.cases);
    if (cublas) EXPECT_GT(st.diffs, 0) << "the row check found no variance in cuBLASLt: it has no teeth";
    else EXPECT_EQ(cuda::gemm_sm90_swapped_launches() - l0, sizes.size()) << "every batch on a swapped tile";
  }
}

}  // namespace

// Rows alone (M = 1, the default tiles) against the same rows inside batches of 129..448 rows that run on
// swapped tiles (BIK_GEMM_SWAP=1, pair tiles off: one column tile up to 256 rows, two past it, the second
// one starting at M - BN), at random positions among random neighbours, 16-bit out as in the engine.
// Negative control: the same check on cuBLASLt, whose kernels change with M, must find rows that differ.
TEST(GpuGemmSwap, RowsAreBatchInvariantAndCublasLtIsCaught) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "the wgmma kernel needs sm_90";
  swapped_rows_and_cublas_control("swap", "BIK_GEMM_SWAP", "BIK_GEMM_PAIRS", "0", 1024, 91,
                                  {129, 130, 143, 144, 145, 160, 177, 200, 208, 231, 232, 240, 255, 256, 257, 264,
                                   288, 301, 333, 352, 353, 370, 384, 385, 400, 417, 447, 448});
}

// The same on wide swapped tiles (BIK_GEMM_WIDE=1) in batches of 449..2048 rows.
TEST(GpuGemmSwap, WideRowsAreBatchInvariantAndCublasLtIsCaught) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "the wgmma kernel needs sm_90";
  swapped_rows_and_cublas_control("wide", "BIK_GEMM_WIDE", nullptr, nullptr, 2304, 94,
                                  {449, 456, 512, 600, 777, 1000, 1024, 1100, 1500, 1637, 1900, 2048});
}

#else
TEST(GpuGemmSwap, Skipped) { GTEST_SKIP() << "no GPU: this build has no CUDA backend"; }
#endif

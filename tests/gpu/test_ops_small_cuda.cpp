// Launch variants of three CUDA memory-bound ops for small problems, each selected by an environment
// switch next to the default so that one device run can time both:
//   softmax       BIK_SOFTMAX_CLUSTER2  rows of the largest plan on a cluster of two 512-thread CTAs
//   sum over dim0 BIK_COLS_TMA (the copy-engine kernel), and for the register kernels BIK_COLS_NL,
//                 BIK_COLS_CTAS_PER_SM, BIK_COLS_STAGE, BIK_COLS_CLUSTER, BIK_COLS_WIDE, BIK_COLS_ORDER
//   silu_and_mul  BIK_SILU_SMALL, BIK_SILU_SMALL_THREADS  one chunk a thread on small CTAs
// Every variant must give the default's bytes (memcmp) on the benchmark shapes, odd sizes and strided or
// misaligned layouts; the new softmax path must keep a row's bits alone and among 64 or 100 neighbours.
// Negative controls: one changed input element must show through the same comparisons.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "bik/device.h"
#include "bik/ops.h"
#include "bik/tensor.h"
#include "cuda/reduce.h"
#include "gpu_env.h"
#include "test_util.h"

namespace bik {
namespace {

// ---- helpers ---------------------------------------------------------------------------------------------
// Sets environment switches for its lifetime (nullptr unsets one), then restores what was there.
class ScopedEnv {
 public:
  explicit ScopedEnv(const std::vector<std::pair<const char*, const char*>>& vars) {
    for (const auto& [name, value] : vars) {
      const char* old = std::getenv(name);
      saved_.push_back({name, old ? std::optional<std::string>(old) : std::nullopt});
      if (value)
        setenv(name, value, 1);
      else
        unsetenv(name);
    }
  }
  ~ScopedEnv() {
    for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) {
      if (it->second)
        setenv(it->first, it->second->c_str(), 1);
      else
        unsetenv(it->first);
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::vector<std::pair<const char*, std::optional<std::string>>> saved_;
};
using Env = std::vector<std::pair<const char*, const char*>>;

std::string env_str(const Env& env) {
  std::string s;
  for (const auto& [name, value] : env)
    s += std::string(s.empty() ? "" : " ") + name + "=" + (value ? value : "(unset)");
  return s.empty() ? "(defaults)" : s;
}

using test::get;
using test::put;

using test::hashed_host;

// Element `at` (flat index into a host tensor) raised by 1.
void bump(Tensor& h, int64_t at) {
  uint8_t* e = static_cast<uint8_t*>(h.data()) + at * dtype_size(h.dtype());
  put(e, h.dtype(), get(e, h.dtype()) + 1.0);
}

// The bytes of a (possibly strided) [rows, n] GPU view, row by row.
std::vector<uint8_t> bytes_of(const TensorView& v) {
  Tensor c = Tensor::empty(v.sizes(), v.dtype, v.device);
  copy(c, v);
  Tensor h = c.to(Device::cpu());
  const uint8_t* p = static_cast<const uint8_t*>(h.data());
  return std::vector<uint8_t>(p, p + h.numel() * dtype_size(h.dtype()));
}

// Row r of a host [rows, n] byte image.
std::vector<uint8_t> row_of(const std::vector<uint8_t>& all, int64_t r, int64_t n, DType t) {
  const size_t rb = size_t(n * dtype_size(t));
  return std::vector<uint8_t>(all.begin() + std::ptrdiff_t(size_t(r) * rb),
                              all.begin() + std::ptrdiff_t(size_t(r + 1) * rb));
}

const char* dn(DType t) { return dtype_name(t); }

// ---- softmax on a cluster of two CTAs a row ------------------------------------------------------------------
struct SoftmaxCase {
  DType t, o;  // input, output
  int64_t n;
  bool log;
};

std::vector<uint8_t> run_softmax(const SoftmaxCase& c, const TensorView& x, const Env& env) {
  ScopedEnv scoped(env);
  Tensor out = Tensor::empty({x.shape[0], c.n}, c.o, Device::cuda(0));
  fill_bytes(out, 0xFF);  // poison: an unwritten element shows as NaN bytes
  if (c.log)
    log_softmax(out, x);
  else
    softmax(out, x);
  return bytes_of(out);
}

// The switch settings every softmax case runs under; [0] is the reference (the choice before the two-CTA
// cluster), the others must give its bytes.
const Env kSoftmaxEnvs[] = {
    {{"BIK_SOFTMAX_CLUSTER2", "0"}},  // resident, prefetch, 4-CTA cluster or one-CTA kernels
    {{"BIK_SOFTMAX_CLUSTER2", "2"}},  // the two-CTA cluster for every row count
    {{"BIK_SOFTMAX_CLUSTER2", nullptr}},  // the default choice
    {{"BIK_SOFTMAX_CLUSTER", "0"}},  // no cluster at all
};

// The two-CTA cluster (forced, and in the default choice for SMs / 4 < rows <= SMs / 2) against the
// kernels it replaces, bit for bit: the benchmark shape (f32 n = 32000 at 64 rows), the ends of the
// resident range per dtype, rows below it (n = 8192) and rows read twice (n > 65536), softmax and
// log_softmax, row counts around the SMs / 4 and SMs / 2 boundaries and past them.
TEST(OpsCudaSmall, SoftmaxCluster2MatchesOtherKernels) {
  BIK_REQUIRE_GPU();
  const int sms = cuda_device_props(0).sm_count;
  const SoftmaxCase cases[] = {{DType::F32, DType::F32, 32000, false},   {DType::F32, DType::F32, 16388, true},
                               {DType::F32, DType::F32, 32768, false},   {DType::BF16, DType::F32, 65536, true},
                               {DType::BF16, DType::BF16, 16392, false}, {DType::F16, DType::F16, 40000, false},
                               {DType::F32, DType::F32, 8192, false},    {DType::F32, DType::F32, 100000, true},
                               {DType::BF16, DType::F32, 151936, true}};
  std::vector<int64_t> row_counts = {1, 2, 7, 64, 100, 133, sms / 4, sms / 4 + 1, sms / 2, sms / 2 + 1};
  std::sort(row_counts.begin(), row_counts.end());
  row_counts.erase(std::unique(row_counts.begin(), row_counts.end()), row_counts.end());
  for (const SoftmaxCase& c : cases)
    for (int64_t m : row_counts) {
      if (m < 1 || m * c.n > (int64_t(1) << 25)) continue;
      const Tensor x = hashed_host(m, c.n, c.t, 3.0, uint64_t(c.n * 7 + m)).to(Device::cuda(0));
      const std::vector<uint8_t> ref = run_softmax(c, x, kSoftmaxEnvs[0]);
      for (size_t e = 1; e < std::size(kSoftmaxEnvs); ++e)
        EXPECT_TRUE(run_softmax(c, x, kSoftmaxEnvs[e]) == ref)
            << dn(c.t) << "->" << dn(c.o) << " n=" << c.n << (c.log ? " log" : "") << " rows " << m << ": "
            << env_str(kSoftmaxEnvs[e]);
    }
  // Negative control: one changed element of the last row, through the same comparison.
  const SoftmaxCase& c = cases[0];
  const int64_t m = 64;
  Tensor xh = hashed_host(m, c.n, c.t, 3.0, uint64_t(c.n * 7 + m));
  const Tensor x = xh.to(Device::cuda(0));
  bump(xh, m * c.n - 1);
  const Tensor xb = xh.to(Device::cuda(0));
  EXPECT_FALSE(run_softmax(c, xb, kSoftmaxEnvs[1]) == run_softmax(c, x, kSoftmaxEnvs[0]))
      << "the comparison missed a changed input";
}

// A row's bits alone (one row: the 4-CTA cluster by default) and at several positions among 64 and 100
// random neighbours (by default the two-CTA cluster and the resident kernel on 132 SMs; forced, the
// two-CTA cluster throughout), contiguous, with padded rows (the same kernels through a row stride) and
// misaligned (the general kernel). Checks with teeth: a changed element of a neighbour must leave the row
// as it was; a changed element of the row itself must show. Accuracy of the row against float64.
TEST(OpsCudaSmall, SoftmaxCluster2RowInvariance) {
  BIK_REQUIRE_GPU();
  const Device gpu = Device::cuda(0);
  const SoftmaxCase cases[] = {{DType::F32, DType::F32, 32000, false},
                               {DType::BF16, DType::F32, 50000, true},
                               {DType::F32, DType::F32, 20000, false}};
  for (size_t ci = 0; ci < std::size(cases); ++ci) {
    const SoftmaxCase& c = cases[ci];
    const bool masked = ci == 2;  // -inf before the first finite chunk and at every 7th element
    const int64_t es = dtype_size(c.t);
    Tensor target = hashed_host(1, c.n, c.t, 3.0, 4242 + ci);
    if (masked)
      for (int64_t j = 0; j < c.n; ++j)
        if (j < c.n / 3 || j % 7 == 0) put(static_cast<uint8_t*>(target.data()) + j * es, c.t, -INFINITY);
    const std::vector<uint8_t> alone = run_softmax(c, target.to(gpu), {});

    // Accuracy of the row alone against float64 (norm-wise relative error; -inf inputs give exact 0).
    {
      std::vector<double> xv(size_t(c.n));
      for (int64_t j = 0; j < c.n; ++j) xv[size_t(j)] = get(static_cast<const uint8_t*>(target.data()) + j * es, c.t);
      const double mx = *std::max_element(xv.begin(), xv.end());
      double s = 0;
      for (double v : xv) s += std::exp(v - mx);
      double num = 0, den = 0;
      for (int64_t j = 0; j < c.n; ++j) {
        const double want = c.log ? xv[size_t(j)] - mx - std::log(s) : std::exp(xv[size_t(j)] - mx) / s;
        const double got = get(alone.data() + j * dtype_size(c.o), c.o);
        if (std::isinf(want)) {
          EXPECT_EQ(got, want) << "element " << j;
          continue;
        }
        num += (got - want) * (got - want);
        den += want * want;
      }
      EXPECT_LT(std::sqrt(num / den), 2e-6) << dn(c.t) << " n=" << c.n;
    }

    // One batch: m rows of random neighbours (`base`: m rows of rs elements) with the target at `pos`
    // (and one element of row `bump_row` raised), the view starting `offset` elements into each row.
    auto batch_row = [&](const Tensor& base, int64_t pos, int64_t offset, int64_t bump_row, const Env& env) {
      const int64_t m = base.size(0), rs = base.size(1);
      Tensor h = Tensor::empty({m, rs}, c.t);
      std::memcpy(h.data(), base.data(), size_t(m * rs * es));
      std::memcpy(static_cast<uint8_t*>(h.data()) + (pos * rs + offset) * es, target.data(), size_t(c.n * es));
      if (bump_row >= 0) bump(h, bump_row * rs + offset + c.n / 2 + 1);
      const Tensor d = h.to(gpu);
      const TensorView x(static_cast<uint8_t*>(d.data()) + offset * es, c.t, {m, c.n}, {rs, 1}, gpu);
      return row_of(run_softmax(c, x, env), pos, c.n, c.o);
    };
    struct Layout {
      int64_t pad, offset;
      const char* name;
    };
    const Layout layouts[] = {{0, 0, "contiguous"}, {8, 0, "padded rows"}, {3, 1, "misaligned"}};
    for (int64_t m : {int64_t(64), int64_t(100)})
      for (const Layout& lay : layouts) {
        const Tensor base = hashed_host(m, c.n + lay.pad + lay.offset, c.t, 3.0, uint64_t(9000 + m * 31 + lay.pad));
        for (const Env& env : {Env{}, Env{{"BIK_SOFTMAX_CLUSTER2", "2"}}})
          for (int64_t pos : {int64_t(0), m / 2 + 1, m - 1}) {
            const std::string what = std::string(dn(c.t)) + " n=" + std::to_string(c.n) + " rows " + std::to_string(m) +
                                     " at " + std::to_string(pos) + ", " + lay.name + ", " + env_str(env);
            EXPECT_TRUE(batch_row(base, pos, lay.offset, -1, env) == alone) << what;
            // A neighbour changed: the row must not change.
            const int64_t neighbour = pos == 0 ? 1 : pos - 1;
            EXPECT_TRUE(batch_row(base, pos, lay.offset, neighbour, env) == alone) << what << ", neighbour changed";
          }
        if (m != 64 || lay.pad != 0) continue;
        // The row itself changed: the same comparison must see it (forced two-CTA cluster, 64 rows).
        EXPECT_FALSE(batch_row(base, 5, 0, 5, {{"BIK_SOFTMAX_CLUSTER2", "2"}}) == alone)
            << dn(c.t) << " n=" << c.n << ": the comparison missed a changed row";
      }
  }
}

// ---- sum / mean over dim 0: the column kernels' knobs ------------------------------------------------------
struct ColsCase {
  DType t;
  int64_t n, cols;  // x [n, cols], reduced over n
  int64_t pad;      // elements after each row of x (the reduced dim's stride is cols + pad)
  int64_t offset;   // the view starts this many elements into the allocation (1: not 16-byte aligned)
};

const Env kColsEnvs[] = {
    {{"BIK_COLS_NL", "1"}},
    {{"BIK_COLS_NL", "2"}},
    {{"BIK_COLS_NL", "4"}},
    {{"BIK_COLS_CTAS_PER_SM", "1"}},
    {{"BIK_COLS_CTAS_PER_SM", "8"}},
    {{"BIK_COLS_CTAS_PER_SM", "64"}, {"BIK_COLS_NL", "2"}},
    {{"BIK_COLS_STAGE", "1"}},
    {{"BIK_COLS_STAGE", "2"}},
    {{"BIK_COLS_STAGE", "4"}},
    {{"BIK_COLS_STAGE", "3"}, {"BIK_COLS_NL", "4"}},
    {{"BIK_COLS_STAGE", "2"}, {"BIK_COLS_NL", "1"}, {"BIK_COLS_CTAS_PER_SM", "4"}},
    {{"BIK_COLS_CLUSTER", "1"}},
    {{"BIK_COLS_CLUSTER", "1"}, {"BIK_COLS_STAGE", "2"}},
    {{"BIK_COLS_CLUSTER", "1"}, {"BIK_COLS_NL", "4"}},
    {{"BIK_COLS_CLUSTER", "1"}, {"BIK_COLS_CTAS_PER_SM", "8"}},
    {{"BIK_COLS_WIDE", "2"}},
    {{"BIK_COLS_WIDE", "4"}},
    {{"BIK_COLS_WIDE", "2"}, {"BIK_COLS_NL", "1"}},
    {{"BIK_COLS_WIDE", "4"}, {"BIK_COLS_NL", "1"}, {"BIK_COLS_CTAS_PER_SM", "8"}},
    {{"BIK_COLS_WIDE", "2"}, {"BIK_COLS_NL", "3"}},  // NL rounded down to a power of two
    {{"BIK_COLS_ORDER", "1"}},
    {{"BIK_COLS_ORDER", "1"}, {"BIK_COLS_WIDE", "4"}},
    {{"BIK_COLS_ORDER", "1"}, {"BIK_COLS_WIDE", "2"}, {"BIK_COLS_NL", "2"}, {"BIK_COLS_CTAS_PER_SM", "64"}},
    {{"BIK_COLS_FOLD_REG", "0"}},   // the shared-memory fold of the classes
    {{"BIK_COLS_FOLD_REG", "0"}, {"BIK_COLS_NL", "4"}},
    {{"BIK_REDUCE_COLUMNS", "0"}},  // one CTA per output: the row kernels' lanes and tree
    {{"BIK_COLS_TMA", "0"}},        // the register kernel where the copy-engine kernel is the default
    {{"BIK_COLS_TMA", "2"}},        // the copy-engine kernel wherever it applies, however few the tiles
};

// The knobs of the register kernels act only where the copy-engine kernel is off: each setting of
// kColsEnvs runs with BIK_COLS_TMA=0 unless it names BIK_COLS_TMA itself.
Env register_kernels(Env env) {
  for (const auto& [name, value] : env)
    if (std::string(name) == "BIK_COLS_TMA") return env;
  env.push_back({"BIK_COLS_TMA", "0"});
  return env;
}

// x as a GPU view plus its host image.
struct ColsInput {
  Tensor host, dev;
  TensorView view;
};
ColsInput cols_input(const ColsCase& c, uint64_t seed, int64_t bump_at = -1) {
  ColsInput in;
  const int64_t rs = c.cols + c.pad;
  in.host = hashed_host(1, c.offset + c.n * rs, c.t, 1.0, seed);
  if (bump_at >= 0) bump(in.host, bump_at);
  in.dev = in.host.to(Device::cuda(0));
  in.view = TensorView(static_cast<uint8_t*>(in.dev.data()) + c.offset * dtype_size(c.t), c.t, {c.n, c.cols}, {rs, 1},
                       Device::cuda(0));
  return in;
}

std::vector<uint8_t> run_cols(const TensorView& x, DType o, bool is_mean, const Env& env) {
  ScopedEnv scoped(env);
  Tensor out = Tensor::empty({x.shape[1]}, o, Device::cuda(0));
  fill_bytes(out, 0xFF);
  if (is_mean)
    mean(out, x, {0}, false);
  else
    sum(out, x, {0}, false);
  return bytes_of(out);
}

// Every knob setting of the column kernels gives the default's bytes: the benchmark shapes (bf16 4096 x
// 16384 and 4096 x 1024), shapes that take 1 to 256 classes and a single one, a partial last tile (odd
// column counts; with BIK_COLS_WIDE a tile whose later chunks lie wholly past the last column), padded rows (a reduced stride of cols + pad, 16-byte multiple or not) and a view that
// starts off a 16-byte boundary (element loads); sum and mean, F32 output and the input's dtype. On sm_90
// the copy-engine kernel is the default for bf16 4096 x 16384, bf16 1024 x 34000, f32 200 x 20000 and f16
// 2176 x 9001 (the last two with a last pass that ends inside a box: reduced indices past n arrive as
// zeros), and runs the padded bf16 4096 x 2048 and 4096 x 8200 and f32 65536 x 40 (256 classes) under
// BIK_COLS_TMA=2. Accuracy of the default against float64.
// Negative control: one changed input element must show.
TEST(OpsCudaSmall, SumColumnsKnobsKeepBits) {
  BIK_REQUIRE_GPU();
  const ColsCase cases[] = {{DType::BF16, 4096, 16384, 0, 0}, {DType::BF16, 4096, 1024, 0, 0},
                            {DType::BF16, 4096, 300, 0, 0},   {DType::F32, 1001, 64, 0, 0},
                            {DType::F16, 37, 129, 0, 0},      {DType::BF16, 40000, 33, 0, 0},
                            {DType::BF16, 1024, 34000, 0, 0}, {DType::F32, 200, 20000, 0, 0},
                            {DType::BF16, 4096, 2048, 8, 0},  {DType::BF16, 777, 520, 3, 0},
                            {DType::F32, 3000, 257, 0, 1},    {DType::BF16, 3, 4096, 0, 0},
                            {DType::F32, 65536, 40, 4, 0},    {DType::F16, 2176, 9001, 0, 0},
                            {DType::BF16, 4096, 8200, 8, 0}};
  for (size_t ci = 0; ci < std::size(cases); ++ci) {
    const ColsCase& c = cases[ci];
    const ColsInput in = cols_input(c, 100 + ci);
    for (bool is_mean : {false, true})
      for (DType o : {DType::F32, c.t}) {
        if (o == c.t && (is_mean || ci % 3 != 0)) continue;  // the input's dtype on a few sums
        const std::vector<uint8_t> ref = run_cols(in.view, o, is_mean, {});
        const std::string what = std::string(dn(c.t)) + "->" + dn(o) + " n=" + std::to_string(c.n) + " cols=" +
                                 std::to_string(c.cols) + " pad " + std::to_string(c.pad) + " offset " +
                                 std::to_string(c.offset) + (is_mean ? " mean" : " sum");
        for (const Env& env : kColsEnvs)
          EXPECT_TRUE(run_cols(in.view, o, is_mean, register_kernels(env)) == ref)
              << what << ": " << env_str(register_kernels(env));
        if (o != DType::F32) continue;
        // Accuracy: error relative to the sum of magnitudes, what an F32 pairwise sum bounds.
        double worst = 0;
        const int64_t rs = c.cols + c.pad, es = dtype_size(c.t);
        const uint8_t* hp = static_cast<const uint8_t*>(in.host.data()) + c.offset * es;
        std::vector<double> acc(size_t(c.cols), 0.0), mag(size_t(c.cols), 0.0);
        for (int64_t i = 0; i < c.n; ++i)
          for (int64_t k = 0; k < c.cols; ++k) {
            const double v = get(hp + (i * rs + k) * es, c.t);
            acc[size_t(k)] += v;
            mag[size_t(k)] += std::fabs(v);
          }
        for (int64_t k = 0; k < c.cols; ++k) {
          double got = get(ref.data() + k * 4, DType::F32);
          if (is_mean) got *= double(c.n);
          if (mag[size_t(k)] > 0) worst = std::max(worst, std::fabs(got - acc[size_t(k)]) / mag[size_t(k)]);
        }
        EXPECT_LT(worst, 1e-6) << what;
      }
  }
  // Negative control: one element of the last reduced index changed, the staged kernel in a cluster
  // against the default on the original input.
  const ColsCase& c = cases[0];
  const ColsInput a = cols_input(c, 100), b = cols_input(c, 100, (c.n - 1) * c.cols + 777);
  EXPECT_FALSE(run_cols(b.view, DType::F32, false, {{"BIK_COLS_CLUSTER", "1"}}) ==
               run_cols(a.view, DType::F32, false, {}))
      << "the comparison missed a changed input";
  // The same through the copy-engine kernel against the register kernel.
  EXPECT_FALSE(run_cols(b.view, DType::F32, false, {{"BIK_COLS_TMA", "2"}}) ==
               run_cols(a.view, DType::F32, false, {{"BIK_COLS_TMA", "0"}}))
      << "the comparison missed a changed input (BIK_COLS_TMA=2 against 0)";
  // The same through the widest tile on the class-major grid.
  EXPECT_FALSE(run_cols(b.view, DType::F32, false, {{"BIK_COLS_WIDE", "4"}, {"BIK_COLS_ORDER", "1"}}) ==
               run_cols(a.view, DType::F32, false, {}))
      << "the comparison missed a changed input (BIK_COLS_WIDE=4, BIK_COLS_ORDER=1)";
}

// The copy-engine column kernel runs where the comments say it does (sm_90 only): by default for the
// benchmark shape, never under BIK_COLS_TMA=0, under BIK_COLS_TMA=2 for few tiles, and nowhere it cannot
// apply (a class count that does not divide n, a view off a 16-byte boundary), even when forced.
TEST(OpsCudaSmall, SumColumnsTmaTakesItsPath) {
  BIK_REQUIRE_GPU();
  if (cuda_device_props(0).arch() != 90) GTEST_SKIP() << "the copy-engine column kernel is sm_90 only";
  auto launches = [](const ColsCase& c, const Env& env) {
    const ColsInput in = cols_input(c, 7);
    const uint64_t l0 = cuda::cols_tma_launches();
    run_cols(in.view, DType::F32, false, env);
    return cuda::cols_tma_launches() - l0;
  };
  const ColsCase bench{DType::BF16, 4096, 16384, 0, 0}, narrow{DType::BF16, 4096, 2048, 8, 0},
      odd{DType::BF16, 777, 520, 3, 0}, misaligned{DType::F32, 3000, 257, 0, 1};
  EXPECT_EQ(launches(bench, {}), 1u);
  EXPECT_EQ(launches(bench, {{"BIK_COLS_TMA", "0"}}), 0u);
  EXPECT_EQ(launches(narrow, {}), 0u);
  EXPECT_EQ(launches(narrow, {{"BIK_COLS_TMA", "2"}}), 1u);
  EXPECT_EQ(launches(odd, {{"BIK_COLS_TMA", "2"}}), 0u);
  EXPECT_EQ(launches(misaligned, {{"BIK_COLS_TMA", "2"}}), 0u);
}

// ---- silu_and_mul on small CTAs -----------------------------------------------------------------------------
struct SiluCase {
  DType t, o;
  int64_t d;
};

// silu_and_mul of m rows of x [m, 2d] laid out with `pad` elements after each row, starting `offset`
// elements in.
std::vector<uint8_t> run_silu(const SiluCase& c, const Tensor& xd, int64_t m, int64_t pad, int64_t offset,
                              const Env& env) {
  ScopedEnv scoped(env);
  const int64_t rs = 2 * c.d + pad;
  const TensorView x(static_cast<uint8_t*>(xd.data()) + offset * dtype_size(c.t), c.t, {m, 2 * c.d}, {rs, 1},
                     Device::cuda(0));
  Tensor out = Tensor::empty({m, c.d}, c.o, Device::cuda(0));
  fill_bytes(out, 0xFF);
  silu_and_mul(out, x);
  return bytes_of(out);
}

// The small launch (forced for every row count, at each CTA size, and the default choice) against the
// default launch: one row of the benchmark shape (d = 14336 bf16) and a few, up to 64 rows, F32 output,
// F32 and F16 inputs, d not a multiple of a CTA's elements or of a chunk, padded and misaligned rows.
// Accuracy against float64. Negative control: one changed element must show.
TEST(OpsCudaSmall, SiluSmallMatchesDefault) {
  BIK_REQUIRE_GPU();
  const SiluCase cases[] = {{DType::BF16, DType::BF16, 14336}, {DType::BF16, DType::F32, 14336},
                            {DType::F32, DType::F32, 1000},    {DType::F16, DType::F16, 4100},
                            {DType::BF16, DType::BF16, 13},    {DType::BF16, DType::BF16, 11008}};
  const Env envs[] = {{{"BIK_SILU_SMALL", "2"}},
                      {{"BIK_SILU_SMALL", "2"}, {"BIK_SILU_SMALL_THREADS", "32"}},
                      {{"BIK_SILU_SMALL", "2"}, {"BIK_SILU_SMALL_THREADS", "64"}},
                      {{"BIK_SILU_SMALL", "2"}, {"BIK_SILU_SMALL_THREADS", "256"}},
                      {{"BIK_SILU_SMALL", nullptr}}};
  struct Layout {
    int64_t pad, offset;
  };
  for (size_t ci = 0; ci < std::size(cases); ++ci) {
    const SiluCase& c = cases[ci];
    for (int64_t m : {int64_t(1), int64_t(2), int64_t(9), int64_t(10), int64_t(64)})
      for (Layout lay : {Layout{0, 0}, Layout{8, 0}, Layout{3, 1}}) {
        const int64_t rs = 2 * c.d + lay.pad;
        const Tensor xh = hashed_host(1, lay.offset + m * rs, c.t, 2.0, 500 + ci * 7 + uint64_t(m));
        const Tensor xd = xh.to(Device::cuda(0));
        const std::vector<uint8_t> ref = run_silu(c, xd, m, lay.pad, lay.offset, {{"BIK_SILU_SMALL", "0"}});
        for (const Env& env : envs)
          EXPECT_TRUE(run_silu(c, xd, m, lay.pad, lay.offset, env) == ref)
              << dn(c.t) << "->" << dn(c.o) << " d=" << c.d << " rows " << m << " pad " << lay.pad << " offset "
              << lay.offset << ": " << env_str(env);
        if (m != 1 || lay.pad != 0) continue;
        // Accuracy of the row against float64 (norm-wise relative error).
        const uint8_t* hp = static_cast<const uint8_t*>(xh.data());
        const int64_t es = dtype_size(c.t);
        double num = 0, den = 0;
        for (int64_t j = 0; j < c.d; ++j) {
          const double g = get(hp + (lay.offset + j) * es, c.t), u = get(hp + (lay.offset + c.d + j) * es, c.t);
          const double want = g / (1.0 + std::exp(-g)) * u, got = get(ref.data() + j * dtype_size(c.o), c.o);
          num += (got - want) * (got - want);
          den += want * want;
        }
        EXPECT_LT(std::sqrt(num / den), c.o == DType::F32 ? 2e-6 : c.o == DType::F16 ? 1e-3 : 8e-3)
            << dn(c.t) << "->" << dn(c.o) << " d=" << c.d;
      }
  }
  // Negative control: one changed gate element of the row.
  const SiluCase& c = cases[0];
  Tensor xh = hashed_host(1, 2 * c.d, c.t, 2.0, 501);
  const Tensor xd = xh.to(Device::cuda(0));
  bump(xh, c.d - 1);
  const Tensor xb = xh.to(Device::cuda(0));
  EXPECT_FALSE(run_silu(c, xb, 1, 0, 0, {{"BIK_SILU_SMALL", "2"}}) ==
               run_silu(c, xd, 1, 0, 0, {{"BIK_SILU_SMALL", "0"}}))
      << "the comparison missed a changed input";
}

}  // namespace
}  // namespace bik

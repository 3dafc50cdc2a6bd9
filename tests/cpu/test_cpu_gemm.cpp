// The CPU GEMM (mm, addmm, bmm): the exact reduction order of the plan (bits equal a scalar std::fma
// chain), accuracy against float64 for every dtype mix, odd shapes, strided and transposed views, batch
// stride 0, row alone vs inside batches, thread counts; and the negative controls that prove the row
// comparison can fail (OpenBLAS, a split-K-by-M GEMM).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "view_access.h"
#include "bik/ops.h"
#include "check/variants.h"
#include "core/backend.h"
#include "cpu/parallel.h"

using namespace bik;

namespace bik::cpu {
// Defined in src/cpu/gemm.cpp: runs the AVX2 micro-kernels even where AVX-512 is available, so that
// both paths are held to the same bits on a machine that has both.
void gemm_force_avx2(bool on);
}  // namespace bik::cpu

namespace {

// Runs `body` once per micro-kernel family the machine can execute.
template <class Fn>
void for_each_isa(Fn&& body) {
  for (bool avx2 : {false, true}) {
    SCOPED_TRACE(avx2 ? "forced AVX2 kernels" : "default kernels");
    cpu::gemm_force_avx2(avx2);
    body();
    cpu::gemm_force_avx2(false);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

constexpr DType kInTypes[] = {DType::F32, DType::F16, DType::BF16};

// ---- element access on strided views -------------------------------------------------------------------

using test_fixtures::addr;
using test_fixtures::bits_at;
float getf(const TensorView& t, int64_t flat) { return float(test_fixtures::get(t, flat)); }
void setf(const TensorView& t, int64_t flat, float v) { test_fixtures::set(t, flat, v); }


Tensor random_tensor(const Shape& shape, DType dt, std::mt19937_64& rng, float scale = 1.0f) {
  Tensor t = Tensor::empty(shape, dt);
  std::uniform_real_distribution<float> u(-scale, scale);
  for (int64_t i = 0; i < t.numel(); ++i) setf(t, i, u(rng));
  return t;
}
// Copies values (not bytes) from src into dst of the same shape, any layouts and dtypes.
void copy_values(const TensorView& dst, const TensorView& src) {
  for (int64_t i = 0; i < src.numel(); ++i) setf(dst, i, getf(src, i));
}

// ---- references ------------------------------------------------------------------------------------------

// The plan, written as plainly as possible: one std::fma chain over k in order, bias after, one rounding.
// The backend must match it bit for bit.
void reference_chain(const TensorView& out, const TensorView& a, const TensorView& w,
                     const std::optional<TensorView>& bias) {
  const int64_t M = a.shape[0], K = a.shape[1], N = w.shape[0];
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      float acc = 0.0f;
      for (int64_t k = 0; k < K; ++k) acc = std::fma(getf(a, m * K + k), getf(w, n * K + k), acc);
      if (bias) acc += getf(*bias, n);
      setf(out, m * N + n, acc);
    }
}

struct AccuracyStats {
  int64_t failures = 0;
  double max_rel = 0;
};
// Float64 reference with a rigorous bound for a K-long F32 chain: |err| <= (K + 1) u32 sum|a w| plus the
// output's rounding (half a unit of its last place) and the F32 bias add.
AccuracyStats check_accuracy(const TensorView& out, const TensorView& a, const TensorView& w,
                             const std::optional<TensorView>& bias) {
  const int64_t M = a.shape[0], K = a.shape[1], N = w.shape[0];
  const double u32 = std::ldexp(1.0, -24);
  const double u_out = out.dtype == DType::F32   ? 0.0
                       : out.dtype == DType::F16 ? std::ldexp(1.0, -11)
                                                 : std::ldexp(1.0, -8);
  AccuracyStats s;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double ref = 0, mag = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double p = double(getf(a, m * K + k)) * double(getf(w, n * K + k));
        ref += p;
        mag += std::fabs(p);
      }
      if (bias) {
        ref += getf(*bias, n);
        mag += std::fabs(getf(*bias, n));
      }
      const double got = getf(out, m * N + n);
      const double bound = double(K + 2) * u32 * mag + (u_out + u32) * std::fabs(ref) + 1e-30;
      const double err = std::fabs(got - ref);
      if (!(err <= bound)) ++s.failures;
      if (mag > 0) s.max_rel = std::max(s.max_rel, err / mag);
    }
  return s;
}

// GemmArgs for 2-D views (a [M, K], w [N, K], out [M, N]) as the backend sees them.
GemmArgs args2d(const TensorView& out, const TensorView& a, const TensorView& w,
                const std::optional<TensorView>& bias = std::nullopt) {
  GemmArgs g;
  g.out = as3d(out);
  g.a = as3d(a);
  g.w = as3d(w);
  g.bias = bias;
  g.batch = 1;
  g.m = a.shape[0];
  g.k = a.shape[1];
  g.n = w.shape[0];
  return g;
}

std::string mix_name(DType in, DType out, const char* bias) {
  return std::string(dtype_name(in)) + "->" + dtype_name(out) + " bias=" + bias;
}

// ---- exact order and accuracy -----------------------------------------------------------------------------

TEST(CpuGemm, EqualsScalarFmaChainAndFloat64ForEveryDtypeMix) {
  for_each_isa([] {
    std::mt19937_64 rng(11);
    const int64_t shapes[][3] = {{1, 1, 1}, {3, 5, 7}, {7, 19, 300}, {13, 33, 257}, {37, 16, 513}, {64, 48, 1024}};
    for (DType in : kInTypes)
      for (DType out_dt : {in, DType::F32})
        for (int bias_kind = 0; bias_kind < 3; ++bias_kind) {  // none, input dtype, f32
          if (in == DType::F32 && bias_kind == 2) continue;
          const char* bname = bias_kind == 0 ? "none" : bias_kind == 1 ? dtype_name(in) : "f32";
          for (auto& s : shapes) {
            const int64_t M = s[0], N = s[1], K = s[2];
            SCOPED_TRACE(mix_name(in, out_dt, bname) + " M=" + std::to_string(M) + " N=" + std::to_string(N) +
                         " K=" + std::to_string(K));
            Tensor a = random_tensor({M, K}, in, rng), w = random_tensor({N, K}, in, rng);
            std::optional<Tensor> bias;
            if (bias_kind) bias = random_tensor({N}, bias_kind == 1 ? in : DType::F32, rng);
            Tensor out = Tensor::empty({M, N}, out_dt), ref = Tensor::empty({M, N}, out_dt);
            fill_bytes(out, 0xFF);  // poison: an unwritten element stays NaN
            if (bias)
              addmm(out, *bias, a, w);
            else
              mm(out, a, w);
            std::optional<TensorView> bv;
            if (bias) bv = bias->view();
            reference_chain(ref, a, w, bv);
            ASSERT_EQ(std::memcmp(out.data(), ref.data(), size_t(M * N * dtype_size(out_dt))), 0)
                << "bits differ from the scalar fma chain";
            AccuracyStats st = check_accuracy(out, a, w, bv);
            EXPECT_EQ(st.failures, 0) << "max error / sum|a*w| = " << st.max_rel;
          }
        }
  });
}

TEST(CpuGemm, OddShapesMatchTheChainBitwise) {
  for_each_isa([] {
    std::mt19937_64 rng(12);
    const int64_t dims[] = {1, 2, 5, 6, 7, 13, 16, 17, 31, 97, 149, 257, 263};
    std::uniform_int_distribution<int> pick(0, int(std::size(dims)) - 1);
    for (int trial = 0; trial < 60; ++trial) {
      const int64_t M = dims[pick(rng)], N = dims[pick(rng)], K = dims[pick(rng)];
      const DType in = kInTypes[trial % 3];
      SCOPED_TRACE(std::string(dtype_name(in)) + " M=" + std::to_string(M) + " N=" + std::to_string(N) +
                   " K=" + std::to_string(K));
      Tensor a = random_tensor({M, K}, in, rng), w = random_tensor({N, K}, in, rng);
      Tensor out = Tensor::empty({M, N}, in), ref = Tensor::empty({M, N}, in);
      fill_bytes(out, 0xFF);
      mm(out, a, w);
      reference_chain(ref, a, w, std::nullopt);
      ASSERT_EQ(std::memcmp(out.data(), ref.data(), size_t(M * N * dtype_size(in))), 0);
    }
  });
}

TEST(CpuGemm, EmptyKGivesBiasOnly) {
  std::mt19937_64 rng(13);
  Tensor a = Tensor::empty({3, 0}, DType::F32), w = Tensor::empty({5, 0}, DType::F32);
  Tensor bias = random_tensor({5}, DType::F32, rng), out = Tensor::empty({3, 5}, DType::F32);
  fill_bytes(out, 0xFF);
  addmm(out, bias, a, w);
  for (int64_t m = 0; m < 3; ++m)
    for (int64_t n = 0; n < 5; ++n) EXPECT_EQ(getf(out, m * 5 + n), getf(bias, n));
}

// ---- layouts ---------------------------------------------------------------------------------------------

TEST(CpuGemm, StridedAndTransposedViewsGiveTheSameBits) {
  std::mt19937_64 rng(14);
  for (DType in : kInTypes) {
    SCOPED_TRACE(dtype_name(in));
    const int64_t M = 29, N = 45, K = 300;
    Tensor a = random_tensor({M, K}, in, rng), w = random_tensor({N, K}, in, rng);
    Tensor bias = random_tensor({N}, in, rng);
    Tensor want = Tensor::empty({M, N}, in);
    addmm(want, bias, a, w);

    // a, w and out stored transposed ([K, M], [K, N], [N, M]) and passed as transpose views.
    Tensor at = Tensor::empty({K, M}, in), wt = Tensor::empty({K, N}, in), ot = Tensor::empty({N, M}, in);
    copy_values(at.view().transpose(0, 1), a);
    copy_values(wt.view().transpose(0, 1), w);
    fill_bytes(ot, 0xFF);
    addmm(ot.view().transpose(0, 1), bias, at.view().transpose(0, 1), wt.view().transpose(0, 1));
    // Padded rows everywhere.
    Tensor ap = Tensor::empty_padded({M, K}, K + 3, in), wp = Tensor::empty_padded({N, K}, K + 17, in);
    Tensor op = Tensor::empty_padded({M, N}, N + 5, in);
    copy_values(ap, a);
    copy_values(wp, w);
    fill_bytes(op, 0xFF);
    addmm(op, bias, ap, wp);
    // Column-strided a (every other element of a wider buffer).
    Tensor wide = Tensor::empty({M, 2 * K}, in);
    TensorView as(wide.data(), in, {M, K}, {2 * K, 2});
    copy_values(as, a);
    Tensor os = Tensor::empty({M, N}, in);
    addmm(os, bias, as, w);

    for (int64_t i = 0; i < M * N; ++i) {
      const uint32_t b = bits_at(want, i);
      ASSERT_EQ(bits_at(ot.view().transpose(0, 1), i), b) << "transposed views, element " << i;
      ASSERT_EQ(bits_at(op, i), b) << "padded rows, element " << i;
      ASSERT_EQ(bits_at(os, i), b) << "strided columns, element " << i;
    }
    // Padding bytes of the padded output untouched.
    const uint8_t* raw = static_cast<const uint8_t*>(op.data());
    for (int64_t m = 0; m + 1 < M; ++m)  // the last row has no padding after it
      for (int64_t j = N; j < N + 5; ++j)
        for (int64_t byte = 0; byte < dtype_size(in); ++byte)
          ASSERT_EQ(raw[(m * (N + 5) + j) * dtype_size(in) + byte], 0xFF) << "padding written at row " << m;
  }
}

TEST(CpuGemm, BmmWithSharedWeightMatchesMmPerBatch) {
  std::mt19937_64 rng(15);
  for (DType in : kInTypes) {
    SCOPED_TRACE(dtype_name(in));
    const int64_t B = 4, M = 11, N = 37, K = 290;
    Tensor a = random_tensor({B, M, K}, in, rng), w = random_tensor({N, K}, in, rng);
    TensorView w3(w.data(), in, {B, N, K}, {0, K, 1});  // batch stride 0: one weight for every batch
    Tensor out = Tensor::empty({B, M, N}, DType::F32);
    fill_bytes(out, 0xFF);
    bmm(out, a, w3);
    // And a distinct weight per batch.
    Tensor wb = random_tensor({B, N, K}, in, rng), outb = Tensor::empty({B, M, N}, DType::F32);
    bmm(outb, a, wb);
    for (int64_t b = 0; b < B; ++b) {
      Tensor one = Tensor::empty({M, N}, DType::F32), oneb = Tensor::empty({M, N}, DType::F32);
      mm(one, a.view().select(0, b), w);
      mm(oneb, a.view().select(0, b), wb.view().select(0, b));
      EXPECT_EQ(std::memcmp(one.data(), static_cast<char*>(out.data()) + b * M * N * 4, size_t(M * N * 4)), 0)
          << "batch " << b << " (shared weight)";
      EXPECT_EQ(std::memcmp(oneb.data(), static_cast<char*>(outb.data()) + b * M * N * 4, size_t(M * N * 4)), 0)
          << "batch " << b << " (own weight)";
    }
  }
}

// ---- row alone vs row inside a batch -----------------------------------------------------------------------

const std::vector<int64_t> kBatchSizes = {1,  2,  3,  4,  5,  6,  7,  8,  9,  10,  11,
                                          12, 13, 14, 15, 16, 17, 31, 32, 33, 100, 1000};

struct RowReport {
  int64_t cases = 0, diffs = 0;
  std::vector<int64_t> diff_batch_sizes;  // batch sizes with at least one differing case
};

// The row comparison used for bik and the negative controls alike: a few target rows computed alone
// (M = 1), then placed at random positions in batches of every size in `ms` with random neighbours
// (rows padded by a random amount); each placement is one case, compared with memcmp.
RowReport row_alone_vs_batched(const check::GemmFn& gemm, DType in, DType out_dt, int64_t N, int64_t K, bool with_bias,
                               const std::vector<int64_t>& ms, uint64_t seed, int targets = 3) {
  std::mt19937_64 rng(seed);
  Tensor w = random_tensor({N, K}, in, rng);
  std::optional<TensorView> bias;
  Tensor bias_t;
  if (with_bias) {
    bias_t = random_tensor({N}, in, rng);
    bias = bias_t.view();
  }
  const int64_t row_bytes = N * dtype_size(out_dt);
  std::vector<Tensor> rows;
  std::vector<std::vector<uint8_t>> alone;
  for (int t = 0; t < targets; ++t) {
    rows.push_back(random_tensor({1, K}, in, rng));
    Tensor o = Tensor::empty({1, N}, out_dt);
    fill_bytes(o, 0xFF);
    gemm(args2d(o, rows.back(), w, bias));
    const uint8_t* p = static_cast<const uint8_t*>(o.data());
    alone.emplace_back(p, p + row_bytes);
  }
  RowReport r;
  for (int64_t M : ms) {
    const int64_t pad_a = int64_t(rng() % 9), pad_o = int64_t(rng() % 9);
    Tensor a = Tensor::empty_padded({M, K}, K + pad_a, in);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (int64_t i = 0; i < M * K; ++i) setf(a, i, u(rng));  // random neighbours
    std::vector<int64_t> pos(static_cast<size_t>(M));
    for (int64_t i = 0; i < M; ++i) pos[size_t(i)] = i;
    std::shuffle(pos.begin(), pos.end(), rng);
    const int placed = int(std::min<int64_t>(M, targets));
    for (int t = 0; t < placed; ++t)
      for (int64_t k = 0; k < K; ++k) setf(a, pos[size_t(t)] * K + k, getf(rows[size_t(t)], k));
    Tensor o = Tensor::empty_padded({M, N}, N + pad_o, out_dt);
    fill_bytes(o, 0xFF);
    gemm(args2d(o, a, w, bias));
    bool any = false;
    for (int t = 0; t < placed; ++t) {
      ++r.cases;
      const uint8_t* got = static_cast<const uint8_t*>(o.data()) + pos[size_t(t)] * (N + pad_o) * dtype_size(out_dt);
      if (std::memcmp(got, alone[size_t(t)].data(), size_t(row_bytes)) != 0) {
        ++r.diffs;
        any = true;
      }
    }
    if (any) r.diff_batch_sizes.push_back(M);
  }
  return r;
}

std::string list(const std::vector<int64_t>& v) {
  std::string s;
  for (int64_t x : v) s += (s.empty() ? "" : ",") + std::to_string(x);
  return s.empty() ? "none" : s;
}

TEST(CpuGemm, RowAloneEqualsRowInAnyBatch) {
  const check::GemmFn bik_gemm = check::gemm_variant("bik").fn;
  struct Case {
    DType in, out;
    int64_t n, k;
    bool bias;
  };
  const Case cases[] = {{DType::F32, DType::F32, 7, 64, false},
                        {DType::F32, DType::F32, 300, 1000, true},
                        {DType::BF16, DType::BF16, 129, 515, true},
                        {DType::F16, DType::F32, 64, 257, false},
                        {DType::BF16, DType::F32, 1000, 1000, false}};
  uint64_t seed = 100;
  for (const Case& c : cases) {
    SCOPED_TRACE(mix_name(c.in, c.out, c.bias ? "yes" : "none") + " N=" + std::to_string(c.n) +
                 " K=" + std::to_string(c.k));
    for_each_isa([&] {
      RowReport r = row_alone_vs_batched(bik_gemm, c.in, c.out, c.n, c.k, c.bias, kBatchSizes, seed);
      EXPECT_GT(r.cases, 40);
      EXPECT_EQ(r.diffs, 0) << "batch sizes with diffs: " << list(r.diff_batch_sizes);
    });
    ++seed;
  }
}

TEST(CpuGemm, ThreadCountNeverChangesBits) {
  std::mt19937_64 rng(16);
  const int64_t M = 100, N = 300, K = 700;
  Tensor a = random_tensor({M, K}, DType::BF16, rng), w = random_tensor({N, K}, DType::BF16, rng);
  Tensor bias = random_tensor({N}, DType::F32, rng);
  std::vector<Tensor> outs;
  for (int threads : {1, 2, 7, 2}) {
    cpu::set_num_threads(threads);
    outs.push_back(Tensor::empty({M, N}, DType::BF16));
    addmm(outs.back(), bias, a, w);
  }
  cpu::set_num_threads(0);
  for (size_t i = 1; i < outs.size(); ++i)
    EXPECT_EQ(std::memcmp(outs[0].data(), outs[i].data(), size_t(M * N * 2)), 0) << "run " << i;
}

// ---- negative controls: the same comparison must catch batch-variant GEMMs ----------------------------------

TEST(CpuGemmNegativeControl, SplitKByMIsCaught) {
  const check::GemmFn variant = check::split_k_by_m_gemm;
  RowReport r = row_alone_vs_batched(variant, DType::F32, DType::F32, 16, 64, false, kBatchSizes, 200);
  EXPECT_GT(r.diffs, 0) << "the row comparison failed to catch a GEMM whose K split depends on M";
  // M >= 64 runs one chain, like the alone row (M = 1 < 64 runs 4 pieces): the diffs are exactly there.
  EXPECT_EQ(list(r.diff_batch_sizes), "100,1000");
  // The same comparison passes the library's gemm on the same problem.
  RowReport ok =
      row_alone_vs_batched(check::gemm_variant("bik").fn, DType::F32, DType::F32, 16, 64, false, kBatchSizes, 200);
  EXPECT_EQ(ok.diffs, 0);
}

// OpenBLAS (Debian 0.3.21, Haswell kernels, on the 2-core AMD EPYC build machine) changes kernels and
// blocking with M, and inside a batch a row's bits also depend on its position. Observed with this
// comparison (random data, 4 positions per batch size):
//   N = 16 or 64, K = 64: rows differ for M >= 4 at some positions (M = 1..3 agree with the row alone);
//   N = 1000, K = 1000:   rows differ for M >= 16 with 2 threads (M >= 4 with OPENBLAS_NUM_THREADS=1);
//   N = 7, K = 64:        no diff at any M (the N edge kernel keeps one in-order chain per output).
// The exact sets depend on the OpenBLAS build, its thread count and the CPU it dispatches for, so the
// test requires only that some batch size differs for each shape, and prints which ones did.
TEST(CpuGemmNegativeControl, OpenBlasIsCaught) {
  const check::GemmFn variant = check::openblas_gemm;
  const std::vector<int64_t> ms = {1, 2, 3, 4, 5, 8, 16, 17, 33, 100};
  for (auto [n, k] : {std::pair<int64_t, int64_t>{16, 64}, {1000, 1000}}) {
    RowReport r = row_alone_vs_batched(variant, DType::F32, DType::F32, n, k, false, ms, 300 + uint64_t(n), 4);
    std::printf("[ openblas ] N=%lld K=%lld: %lld of %lld cases differ; batch sizes: %s\n", (long long)n, (long long)k,
                (long long)r.diffs, (long long)r.cases, list(r.diff_batch_sizes).c_str());
    EXPECT_GT(r.diffs, 0) << "N=" << n << " K=" << k;
  }
}

// ---- the variant registry -----------------------------------------------------------------------------------

TEST(CpuGemmVariants, RegistryNamesAndErrors) {
  auto vs = check::gemm_variants();
  ASSERT_EQ(vs.size(), 3u);
  EXPECT_EQ(vs[0].name, "bik");
  EXPECT_TRUE(vs[0].expect_invariant);
  EXPECT_FALSE(check::gemm_variant("openblas").expect_invariant);
  EXPECT_FALSE(check::gemm_variant("splitk-by-m").expect_invariant);
  try {
    check::gemm_variant("cublas-magic");
    FAIL() << "no error for an unknown name";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("cublas-magic"), std::string::npos) << msg;
    for (const char* n : {"bik", "openblas", "splitk-by-m"}) EXPECT_NE(msg.find(n), std::string::npos) << msg;
  }
}

TEST(CpuGemmVariants, VariantsAgreeWithTheReferenceWithinTolerance) {
  std::mt19937_64 rng(17);
  for (DType in : kInTypes) {
    const int64_t M = 9, N = 21, K = 130;
    Tensor a = random_tensor({M, K}, in, rng), w = random_tensor({N, K}, in, rng), bias = random_tensor({N}, in, rng);
    for (auto& v : check::gemm_variants()) {
      SCOPED_TRACE(v.name + " " + dtype_name(in));
      Tensor out = Tensor::empty({M, N}, DType::F32);
      fill_bytes(out, 0xFF);
      v.fn(args2d(out, a, w, bias.view()));
      AccuracyStats st = check_accuracy(out, a, w, bias.view());
      EXPECT_EQ(st.failures, 0) << "max error / sum|a*w| = " << st.max_rel;
    }
  }
}

TEST(CpuGemmVariants, CpuOnlyVariantsRejectGpuTensors) {
  std::vector<float> buf(64, 0.0f);
  TensorView a(buf.data(), DType::F32, {2, 4}, Device::cuda(0)), w(buf.data(), DType::F32, {3, 4}, Device::cuda(0));
  TensorView o(buf.data(), DType::F32, {2, 3}, Device::cuda(0));
  for (const char* name : {"openblas", "splitk-by-m"}) {
    try {
      check::gemm_variant(name).fn(args2d(o, a, w));
      FAIL() << name << " accepted CUDA tensors";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("CPU only"), std::string::npos) << e.what();
    }
  }
}

// mm_silu_and_mul is mm then silu_and_mul, bit for bit, for every input dtype and for strided views; bad
// arguments name the problem.
TEST(CpuGemmGated, IsMmThenSiluAndMul) {
  std::mt19937_64 rng(23);
  for (DType in : kInTypes) {
    SCOPED_TRACE(dtype_name(in));
    const int64_t M = 13, d = 37, K = 70;
    Tensor a = random_tensor({M, K}, in, rng), w = random_tensor({2 * d, K}, in, rng, 0.5f);
    Tensor product = Tensor::empty({M, 2 * d}, in), ref = Tensor::empty({M, d}, in), out = Tensor::empty({M, d}, in);
    mm(product, a, w);
    silu_and_mul(ref, product);
    fill_bytes(out, 0xFF);
    mm_silu_and_mul(out, a, w);
    EXPECT_EQ(std::memcmp(out.data(), ref.data(), size_t(out.numel()) * dtype_size(in)), 0);
    // a transposed (its K stride is M), out a column window of a wider buffer
    Tensor at = Tensor::empty({K, M}, in), wide = Tensor::empty({M, d + 5}, in);
    TensorView a_t = at.view();
    std::swap(a_t.shape[0], a_t.shape[1]);
    std::swap(a_t.stride[0], a_t.stride[1]);
    copy(a_t, a);
    fill_bytes(wide, 0xFF);
    const TensorView o = wide.view().narrow(1, 3, d);
    mm_silu_and_mul(o, a_t, w);
    for (int64_t i = 0; i < M * d; ++i) EXPECT_EQ(bits_at(o, i), bits_at(ref, i)) << "element " << i;
  }
}

TEST(CpuGemmGated, BadArgumentsNameTheProblem) {
  auto t = [](const Shape& s, DType dt = DType::BF16) { return Tensor::empty(s, dt); };
  auto expect_message = [](auto&& f, const std::string& needle) {
    try {
      f();
      FAIL() << "no error; wanted one mentioning '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  const Tensor a = t({4, 8}), w = t({6, 8});
  expect_message([&] { mm_silu_and_mul(t({4, 3}), a, t({7, 8})); }, "odd row count");
  expect_message([&] { mm_silu_and_mul(t({4, 6}), a, w); }, "out must be [M, d] = [4, 3]");
  expect_message([&] { mm_silu_and_mul(t({4, 3}, DType::F32), a, w); }, "out must be bf16 (a's dtype)");
  expect_message([&] { mm_silu_and_mul(t({4, 3}), a, t({6, 9})); }, "has K = 8");
  expect_message([&] { mm_silu_and_mul(t({4, 3}), a, t({6, 8}, DType::F16)); }, "both must share one dtype");
  expect_message([&] { mm_silu_and_mul(t({4, 3}), t({4, 8}, DType::I32), t({6, 8}, DType::I32)); }, "mm_silu_and_mul");
}

}  // namespace

// The invariance harness itself: the library's ops pass it, and known variant or broken implementations
// run through the very same procedure are caught (a harness that never fails proves nothing).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "bik/ops.h"
#include "check/harness.h"
#include "check/op_checks.h"
#include "check/rng.h"
#include "check/variants.h"
#include "core/backend.h"

using namespace bik;
using namespace bik::check;

namespace {

OpReport run_one(const std::string& op, int64_t cases, const Impls& impls = {}, uint64_t seed = 1) {
  CheckOptions o;
  o.seed = seed;
  o.impls = impls;
  return check_op(op, o, cases);
}

int64_t total_failures(const MixReport& m) {
  return m.diffs + m.repeat_diffs + m.unwritten + m.overwritten + m.accuracy_failures;
}

std::string failures_of(const OpReport& r) {
  std::string s = r.note;
  for (const auto& f : r.failures) s += "\n  " + f;
  return s;
}

// Element (b, m, n) of a 3-D view.
uint8_t* at(const TensorView& t, int64_t b, int64_t m, int64_t n) {
  return static_cast<uint8_t*>(t.data) + (b * t.stride[0] + m * t.stride[1] + n * t.stride[2]) * dtype_size(t.dtype);
}

// The library's GEMM on a sub-problem: rows [m0, m0 + rows) and columns [0, cols) of every batch.
void library_gemm_part(GemmArgs g, int64_t m0, int64_t rows, int64_t cols) {
  if (rows <= 0 || cols <= 0) return;
  g.a = g.a.narrow(1, m0, rows);
  g.out = g.out.narrow(1, m0, rows).narrow(2, 0, cols);
  g.w = g.w.narrow(1, 0, cols);
  if (g.bias) g.bias = g.bias->narrow(0, 0, cols);
  g.m = rows;
  g.n = cols;
  cpu::gemm(g, {});
}

}  // namespace

// ---- the library passes -----------------------------------------------------------------------------------

TEST(Harness, LibraryOpsPassOnCpu) {
  CheckOptions o;
  o.cases = int64_t(op_names().size()) * 400;
  const auto reports = run_checks(o);
  ASSERT_EQ(reports.size(), op_names().size());
  for (const OpReport& r : reports) {
    SCOPED_TRACE(r.op);
    EXPECT_EQ(r.status, Status::Pass) << failures_of(r);
    EXPECT_GE(r.total.cases, 400);
    EXPECT_EQ(total_failures(r.total), 0);
    EXPECT_GT(r.total.checked, 0);
    EXPECT_GT(r.total.batches, 17);
    EXPECT_LE(r.total.max_rel_err, r.total.tol) << r.total.dtypes;
    // Batches of every size 1..17 and beyond 33 were run.
    for (int64_t b = 1; b <= 17; ++b) EXPECT_TRUE(std::count(r.batch_sizes.begin(), r.batch_sizes.end(), b)) << b;
    EXPECT_GT(r.batch_sizes.back(), 33);
  }
  EXPECT_EQ(exit_code(reports), 0);
  const nlohmann::json j = report_json(reports);
  EXPECT_EQ(j["status"], "PASS");
  EXPECT_EQ(j["ops"].size(), reports.size());
  const std::string table = format_table(reports, true);
  EXPECT_NE(table.find("rotary_embedding"), std::string::npos);
  EXPECT_NE(table.find("PASS"), std::string::npos);
}

TEST(Harness, SameSeedSameCases) {
  const OpReport a = run_one("rms_norm", 300, {}, 7), b = run_one("rms_norm", 300, {}, 7);
  EXPECT_EQ(a.total.cases, b.total.cases);
  EXPECT_EQ(a.total.problems, b.total.problems);
  EXPECT_EQ(a.total.dtypes, b.total.dtypes);
  EXPECT_EQ(a.batch_sizes, b.batch_sizes);
  EXPECT_EQ(a.total.max_rel_err, b.total.max_rel_err);
}

TEST(Harness, LargeBatchesForCheapOps) {
  const OpReport r = run_one("argmax", 2000);
  EXPECT_EQ(r.status, Status::Pass) << failures_of(r);
  EXPECT_TRUE(std::count(r.batch_sizes.begin(), r.batch_sizes.end(), 4096));
  EXPECT_TRUE(std::count(r.batch_sizes.begin(), r.batch_sizes.end(), 1000));
}

// ---- negative controls: known batch-variant implementations must be reported -----------------------------

TEST(HarnessNegative, OpenBlasIsCaught) {
  // The first mm problems are K = N = 64 and K = N = 1000, where OpenBLAS 0.3.21 changes its kernel and
  // blocking with M (from M = 4 and M = 16 on).
  Impls impls;
  impls.gemm = openblas_gemm;
  for (const char* op : {"mm", "addmm", "bmm"}) {
    const OpReport r = run_one(op, 600, impls);
    SCOPED_TRACE(op);
    EXPECT_EQ(r.status, Status::Fail);
    EXPECT_GT(r.total.diffs, 0);
    EXPECT_FALSE(r.failures.empty());
    EXPECT_EQ(r.total.accuracy_failures, 0) << "OpenBLAS is accurate, only variant";
    EXPECT_EQ(exit_code({r}), 1);
  }
}

TEST(HarnessNegative, SplitKByMIsCaught) {
  Impls impls;
  impls.gemm = split_k_by_m_gemm;
  const OpReport r = run_one("mm", 600, impls);
  EXPECT_EQ(r.status, Status::Fail);
  EXPECT_GT(r.total.diffs, 0);
  EXPECT_EQ(r.total.accuracy_failures, 0);
}

TEST(HarnessNegative, VariantsByName) {
  CheckOptions o;
  o.ops = {"mm"};
  o.cases = 400;
  o.gemm_variant = "openblas";
  EXPECT_EQ(exit_code(run_checks(o)), 1);
  o.gemm_variant = "bik";
  EXPECT_EQ(exit_code(run_checks(o)), 0);
  EXPECT_THROW(gemm_variant("cublas-default-on-cpu"), Error);
}

namespace {

// An RMSNorm whose sum of squares is ordered by the number of rows in the call: sequential for small
// batches, pairwise for large ones. Each alone result is right; batches of 8 or more differ.
void batch_size_dependent_rms_norm(const TensorView& out, const TensorView& x, const TensorView& weight, float eps,
                                   const std::optional<TensorView>& residual) {
  ASSERT_FALSE(residual.has_value());
  const int64_t rows = x.ndim == 1 ? 1 : x.shape[0], n = x.shape[x.ndim - 1];
  const int64_t xs = x.ndim == 1 ? 0 : x.stride[0], xe = x.stride[x.ndim - 1];
  const int64_t os = out.ndim == 1 ? 0 : out.stride[0], oe = out.stride[out.ndim - 1];
  const auto* xp = static_cast<const uint8_t*>(x.data);
  auto* op = static_cast<uint8_t*>(out.data);
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < n; ++i) v[size_t(i)] = float(check::detail::load(x.dtype, xp, r * xs + i * xe));
    float ss = 0;
    if (rows < 8) {
      for (float f : v) ss += f * f;
    } else {
      std::vector<float> t(v.size());
      for (size_t i = 0; i < v.size(); ++i) t[i] = v[i] * v[i];
      for (size_t w = 1; w < t.size(); w *= 2)
        for (size_t i = 0; i + w < t.size(); i += 2 * w) t[i] += t[i + w];
      ss = t[0];
    }
    const float rstd = 1.0f / std::sqrt(ss / float(n) + eps);
    for (int64_t i = 0; i < n; ++i)
      check::detail::store(out.dtype, op, r * os + i * oe,
                    v[size_t(i)] * rstd * float(check::detail::load(weight.dtype, static_cast<const uint8_t*>(weight.data),
                                                             i * weight.stride[0])));
  }
}

}  // namespace

TEST(HarnessNegative, BatchSizeDependentNormIsCaught) {
  Impls impls;
  impls.rms_norm = batch_size_dependent_rms_norm;
  const OpReport r = run_one("rms_norm", 1000, impls);
  EXPECT_EQ(r.status, Status::Fail);
  EXPECT_GT(r.total.diffs, 0);
  EXPECT_EQ(r.total.accuracy_failures, 0) << failures_of(r);
  EXPECT_EQ(r.total.unwritten, 0);
}

// ---- negative controls: broken implementations -------------------------------------------------------------

TEST(HarnessNegative, UnwrittenElementIsReported) {
  // Correct everywhere except the last element of the last row, which is never written.
  Impls impls;
  impls.gemm = [](const GemmArgs& g) {
    library_gemm_part(g, 0, g.m - 1, g.n);
    library_gemm_part(g, g.m - 1, 1, g.n - 1);
  };
  const OpReport r = run_one("mm", 300, impls);
  EXPECT_EQ(r.status, Status::Fail);
  EXPECT_GT(r.total.unwritten, 0);
}

TEST(HarnessNegative, WrongResultIsAnAccuracyFailure) {
  // Batch-invariant but wrong: the last k is dropped from every sum.
  Impls impls;
  impls.gemm = [](const GemmArgs& g) {
    if (g.k == 1) {  // nothing left to sum: write zeros
      for (int64_t b = 0; b < g.batch; ++b)
        for (int64_t m = 0; m < g.m; ++m)
          for (int64_t n = 0; n < g.n; ++n) check::detail::store(g.out.dtype, at(g.out, b, m, n), 0, 0.0);
      return;
    }
    GemmArgs h = g;
    h.k = g.k - 1;
    h.a = g.a.narrow(2, 0, h.k);
    h.w = g.w.narrow(2, 0, h.k);
    cpu::gemm(h, {});
  };
  const OpReport r = run_one("mm", 300, impls);
  EXPECT_EQ(r.status, Status::Fail);
  EXPECT_GT(r.total.accuracy_failures, 0);
  EXPECT_EQ(r.total.diffs, 0);
  EXPECT_GT(r.total.max_rel_err, r.total.tol);
}

TEST(HarnessNegative, ModifiedInputIsReported) {
  Impls impls;
  impls.gemm = [](const GemmArgs& g) {
    cpu::gemm(g, {});
    check::detail::store(g.a.dtype, at(g.a, 0, 0, 0), 0, 12345.0);  // scribbles on its input
  };
  const OpReport r = run_one("mm", 200, impls);
  EXPECT_EQ(r.status, Status::Fail);
  EXPECT_GT(r.total.overwritten, 0);
}

TEST(HarnessNegative, NondeterministicRunsAreReported) {
  // Right on the first call of each shape, off by one unit in the last place on later calls: the
  // run-to-run repeat of a batch must see it.
  Impls impls;
  impls.gemm = [calls = 0](const GemmArgs& g) mutable {
    cpu::gemm(g, {});
    if (g.m > 1 && (++calls % 2 == 0)) {
      uint8_t* p = at(g.out, 0, g.m - 1, 0);
      if (g.out.dtype == DType::F32) {
        uint32_t u;
        std::memcpy(&u, p, 4);
        u ^= 1;
        std::memcpy(p, &u, 4);
      } else {
        p[0] ^= 1;
      }
    }
  };
  const OpReport r = run_one("mm", 600, impls);
  EXPECT_EQ(r.status, Status::Fail);
  EXPECT_GT(r.total.repeat_diffs, 0);
}

TEST(Harness, NoKernelIsSkippedAndNotAPass) {
  Impls impls;
  impls.gemm = [](const GemmArgs&) { throw Error("gemm: no kernel for this dtype yet"); };
  const OpReport r = run_one("mm", 100, impls);
  EXPECT_EQ(r.status, Status::Skipped);
  EXPECT_EQ(r.total.cases, 0);
  EXPECT_NE(r.note.find("no kernel"), std::string::npos);
  EXPECT_EQ(exit_code({r}), 1) << "nothing ran: the run must not claim PASS";
  EXPECT_EQ(std::string(status_name(r.status)), "SKIPPED(no kernel)");
  // Skipped next to a passing op: the pass stands.
  EXPECT_EQ(exit_code({r, run_one("sum", 100)}), 0);
}

TEST(Harness, OtherErrorsAreErrors) {
  Impls impls;
  impls.gemm = [](const GemmArgs&) { throw Error("gemm: something broke"); };
  const OpReport r = run_one("mm", 100, impls);
  EXPECT_EQ(r.status, Status::Error);
  EXPECT_NE(r.note.find("something broke"), std::string::npos);
  EXPECT_EQ(exit_code({r}), 1);
}

// ---- building blocks -------------------------------------------------------------------------------------

TEST(Harness, RngIsDeterministic) {
  Rng a(42), b(42), c(43);
  std::vector<uint64_t> va, vb, vc;
  for (int i = 0; i < 100; ++i) va.push_back(a.next()), vb.push_back(b.next()), vc.push_back(c.next());
  EXPECT_EQ(va, vb);
  EXPECT_NE(va, vc);
  // Forks are keyed by name, independent of each other, and reproducible.
  Rng f1 = Rng(5).fork("mm"), f2 = Rng(5).fork("mm"), f3 = Rng(5).fork("bmm");
  const uint64_t x1 = f1.next(), x2 = f2.next(), x3 = f3.next();
  EXPECT_EQ(x1, x2);
  EXPECT_NE(x1, x3);
  // Known first value: the stream must not change across compilers or platforms.
  Rng z(0);
  const uint64_t first = z.next();
  Rng z2(0);
  EXPECT_EQ(first, z2.next());
  for (int i = 0; i < 1000; ++i) {
    const int64_t r = a.range(-3, 5);
    EXPECT_GE(r, -3);
    EXPECT_LE(r, 5);
    const double u = a.uniform();
    EXPECT_GE(u, 0.0);
    EXPECT_LT(u, 1.0);
  }
}

TEST(Harness, ResolveOps) {
  EXPECT_EQ(resolve_ops({}), op_names());
  EXPECT_EQ(resolve_ops({"matmul"}), (std::vector<std::string>{"mm", "addmm", "bmm"}));
  EXPECT_EQ(resolve_ops({"softmax", "mm", "mm"}), (std::vector<std::string>{"mm", "softmax"}));
  EXPECT_EQ(resolve_ops({"all"}), op_names());
  try {
    resolve_ops({"mm", "nosuchop"});
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("nosuchop"), std::string::npos);
    EXPECT_NE(what.find("rms_norm"), std::string::npos) << "lists the known ops";
  }
  EXPECT_THROW(check_op("nosuchop", CheckOptions{}, 10), Error);
  EXPECT_EQ(op_names().size(), 15u);
}

TEST(Harness, ElementHelpersRoundTrip) {
  uint8_t buf[16];
  for (DType t : {DType::F32, DType::F16, DType::BF16}) {
    check::detail::store(t, buf, 1, 1.5);
    EXPECT_EQ(check::detail::load(t, buf, 1), 1.5);
    EXPECT_GT(check::detail::eps_of(t), 0);
  }
  check::detail::store(DType::I32, buf, 2, 77);
  EXPECT_EQ(check::detail::load(DType::I32, buf, 2), 77);
  EXPECT_EQ(check::detail::eps_of(DType::I32), 0);
}

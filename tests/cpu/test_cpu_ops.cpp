// The CPU backend's non-GEMM ops: accuracy against float64 references for every dtype mix, the exact
// reduction order of the row plan, layout independence (padded and transposed views give the same
// bits), rows alone vs inside batches of many sizes with random neighbours, one thread vs many, in-place
// calls, and error messages.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "view_access.h"
#include "bik/ops.h"
#include "core/policy.h"
#include "cpu/parallel.h"

using namespace bik;

namespace {

constexpr DType kFloatTypes[] = {DType::F32, DType::F16, DType::BF16};

// Relative tolerance for results stored in `dt`: a few units of its rounding, plus F32 accumulation.
double rtol(DType dt) { return dt == DType::F32 ? 2e-5 : dt == DType::F16 ? 1.5e-3 : 1e-2; }
// Smallest normal number of `dt`. Below it a result is subnormal and only good to an absolute step, so a
// relative check must not ask for more than rtol * min_normal there.
double min_normal(DType dt) { return dt == DType::F16 ? 6.103515625e-05 : 1.1754943508222875e-38; }

// ---- element access on views of any layout ------------------------------------------------------------

using test_fixtures::addr;
using test_fixtures::get;
using test_fixtures::offset_of;
using test_fixtures::set;

std::vector<double> values(const TensorView& t) {
  std::vector<double> v(size_t(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) v[size_t(i)] = get(t, i);
  return v;
}

// Element-by-element byte comparison of two views of one shape and dtype (layouts may differ).
bool same_bits(const TensorView& a, const TensorView& b) {
  if (a.sizes() != b.sizes() || a.dtype != b.dtype) return false;
  for (int64_t i = 0; i < a.numel(); ++i)
    if (std::memcmp(addr(a, i), addr(b, i), size_t(dtype_size(a.dtype))) != 0) return false;
  return true;
}

// An element whose bytes are all 0xff is the poison every buffer starts with: never written. No op
// produces it (computed NaNs are the default NaN, argmax never returns -1).
bool is_poison(const TensorView& t, int64_t flat) {
  const unsigned char* p = reinterpret_cast<const unsigned char*>(addr(t, flat));
  for (int64_t b = 0; b < dtype_size(t.dtype); ++b)
    if (p[b] != 0xff) return false;
  return true;
}
int64_t unwritten(const TensorView& t) {
  int64_t n = 0;
  for (int64_t i = 0; i < t.numel(); ++i) n += is_poison(t, i);
  return n;
}

// ---- buffers in several layouts ---------------------------------------------------------------------

enum class Layout { Contiguous, Padded, Reversed };
const char* layout_name(Layout l) {
  return l == Layout::Contiguous ? "contiguous" : l == Layout::Padded ? "padded" : "reversed";
}

// A view plus the tensor that owns its memory. Padded: each innermost row padded (1-D: stride 3).
// Reversed: memory laid out with the dims in reverse order (2-D: a transposed matrix), so the last
// dim has the largest stride. Every byte of the allocation starts as 0xff (NaN for floats).
struct Buf {
  Tensor owner;
  TensorView v;
};
Buf alloc(const Shape& shape, DType dt, Layout layout = Layout::Contiguous) {
  Buf b;
  if (layout == Layout::Padded && shape.size() == 1) {
    b.owner = Tensor::empty({shape[0], 3}, dt);
    b.v = b.owner.view().select(1, 0);
  } else if (layout == Layout::Padded) {
    b.owner = Tensor::empty_padded(shape, shape.back() + 7, dt);
    b.v = b.owner.view();
  } else if (layout == Layout::Reversed) {
    b.owner = Tensor::empty(Shape(shape.rbegin(), shape.rend()), dt);
    b.v = b.owner.view();
    std::reverse(b.v.shape.begin(), b.v.shape.begin() + b.v.ndim);
    std::reverse(b.v.stride.begin(), b.v.stride.begin() + b.v.ndim);
  } else {
    b.owner = Tensor::empty(shape, dt);
    b.v = b.owner.view();
  }
  std::memset(b.owner.data(), 0xff, size_t(b.owner.alloc_bytes()));
  return b;
}
Buf random(const Shape& shape, DType dt, std::mt19937& rng, double lo = -2, double hi = 2,
           Layout layout = Layout::Contiguous) {
  Buf b = alloc(shape, dt, layout);
  std::uniform_real_distribution<double> u(lo, hi);
  for (int64_t i = 0; i < b.v.numel(); ++i) set(b.v, i, u(rng));
  return b;
}
// Every byte of the allocation outside the view's elements (row padding) still holds the 0xff poison:
// nothing was written out of bounds.
bool padding_intact(const Buf& b) {
  const unsigned char* base = static_cast<const unsigned char*>(b.owner.data());
  std::vector<char> covered(size_t(b.owner.alloc_bytes()), 0);
  for (int64_t i = 0; i < b.v.numel(); ++i) {
    int64_t at = offset_of(b.v, i) * dtype_size(b.v.dtype) + (static_cast<char*>(b.v.data) - static_cast<char*>(b.owner.data()));
    for (int64_t k = 0; k < dtype_size(b.v.dtype); ++k) covered[size_t(at + k)] = 1;
  }
  for (size_t i = 0; i < covered.size(); ++i)
    if (!covered[i] && base[i] != 0xff) return false;
  return true;
}
Buf copy_of(const TensorView& src, Layout layout) {
  Buf b = alloc(src.sizes(), src.dtype, layout);
  copy(b.v, src);
  return b;
}

// |got - ref| <= tol * max(|ref|, floor) for every element; infinities must match exactly.
void expect_close(const TensorView& got, const std::vector<double>& ref, double tol, double floor) {
  ASSERT_EQ(got.numel(), int64_t(ref.size()));
  int bad = 0;
  for (int64_t i = 0; i < got.numel(); ++i) {
    double g = get(got, i), r = ref[size_t(i)];
    bool ok = std::isfinite(r) ? std::abs(g - r) <= tol * std::max(std::abs(r), floor) : g == r;
    if (!ok && ++bad <= 5) ADD_FAILURE() << "element " << i << ": got " << g << ", want " << r;
  }
  EXPECT_EQ(bad, 0) << "of " << got.numel() << " elements";
}

template <class F>
void expect_error(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected a bik::Error mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << "message: " << e.what();
  }
}

// The row plan spelled out naively: lane i % lanes sums in increasing i, then the halving tree.
float plan_sum(const std::vector<float>& v) {
  int lanes = policy::row_reduce_plan({policy::Backend::CPU, 0}, DType::F32, int64_t(v.size())).lanes;
  std::vector<float> acc(size_t(lanes), 0.0f);
  for (size_t i = 0; i < v.size(); ++i) acc[i % size_t(lanes)] += v[i];
  for (int w = lanes / 2; w >= 1; w /= 2)
    for (int j = 0; j < w; ++j) acc[size_t(j)] += acc[size_t(j + w)];
  return acc[0];
}

// ---- float64 references, row by row -------------------------------------------------------------------

std::vector<double> ref_rms_norm(const std::vector<double>& x, const std::vector<double>& w, int64_t n, double eps) {
  std::vector<double> out(x.size());
  for (size_t r = 0; r < x.size() / size_t(n); ++r) {
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += x[r * n + i] * x[r * n + i];
    double rstd = 1 / std::sqrt(ss / double(n) + eps);
    for (int64_t i = 0; i < n; ++i) out[r * n + i] = x[r * n + i] * rstd * w[size_t(i)];
  }
  return out;
}

std::vector<double> ref_softmax(const std::vector<double>& x, int64_t n, bool log) {
  std::vector<double> out(x.size());
  for (size_t r = 0; r < x.size() / size_t(n); ++r) {
    double m = -INFINITY, s = 0;
    for (int64_t i = 0; i < n; ++i) m = std::max(m, x[r * n + i]);
    for (int64_t i = 0; i < n; ++i) s += std::exp(x[r * n + i] - m);
    for (int64_t i = 0; i < n; ++i)
      out[r * n + i] = log ? x[r * n + i] - m - std::log(s) : std::exp(x[r * n + i] - m) / s;
  }
  return out;
}

}  // namespace

// ---- rms_norm ---------------------------------------------------------------------------------------

TEST(CpuOpsRmsNorm, MatchesFloat64ReferenceEveryDtype) {
  std::mt19937 rng(1);
  const int64_t n = 203;
  for (DType dt : kFloatTypes)
    for (DType wdt : {dt, DType::F32})
      for (DType odt : {dt, DType::F32}) {
        SCOPED_TRACE(std::string(dtype_name(dt)) + " weight " + dtype_name(wdt) + " out " + dtype_name(odt));
        Buf x = random({2, 4, n}, dt, rng), w = random({n}, wdt, rng, 0.5, 1.5), out = alloc({2, 4, n}, odt);
        rms_norm(out.v, x.v, w.v, 1e-5f);
        expect_close(out.v, ref_rms_norm(values(x.v), values(w.v), n, 1e-5), rtol(odt), 1e-3);
      }
}

TEST(CpuOpsRmsNorm, FusedResidualIsRoundedSumAndNormReadsIt) {
  std::mt19937 rng(2);
  const int64_t n = 77;
  for (DType dt : kFloatTypes) {
    SCOPED_TRACE(dtype_name(dt));
    Buf x = random({9, n}, dt, rng), res = random({9, n}, dt, rng), w = random({n}, dt, rng, 0.5, 1.5);
    Buf out = alloc({9, n}, dt);
    std::vector<double> x0 = values(x.v), r0 = values(res.v);
    rms_norm(out.v, x.v, w.v, 1e-6f, res.v);
    for (int64_t i = 0; i < res.v.numel(); ++i)
      ASSERT_EQ(get(res.v, i), round_to(dt, float(x0[size_t(i)]) + float(r0[size_t(i)]))) << "element " << i;
    EXPECT_EQ(values(x.v), x0);  // x is only read
    expect_close(out.v, ref_rms_norm(values(res.v), values(w.v), n, 1e-6), rtol(dt), 1e-3);

    // The same call on padded and transposed x, residual and out: the same bits in both outputs.
    for (Layout l : {Layout::Padded, Layout::Reversed}) {
      SCOPED_TRACE(layout_name(l));
      Buf xs = copy_of(x.v, l), rs = alloc({9, n}, dt, l), os = alloc({9, n}, dt, l);
      Buf rc = alloc({9, n}, dt), oc = alloc({9, n}, dt);
      for (int64_t i = 0; i < rs.v.numel(); ++i) set(rs.v, i, r0[size_t(i)]), set(rc.v, i, r0[size_t(i)]);
      rms_norm(oc.v, x.v, w.v, 1e-6f, rc.v);
      rms_norm(os.v, xs.v, w.v, 1e-6f, rs.v);
      EXPECT_TRUE(same_bits(rc.v, rs.v));
      EXPECT_TRUE(same_bits(oc.v, os.v));
    }
  }
}

TEST(CpuOpsRmsNorm, SumOfSquaresFollowsTheRowPlan) {
  // With weight 1 and eps 0 the output is x * rstd, rstd taken from the sum of squares in the plan's
  // order: recomputing it that way must give the same bits.
  std::mt19937 rng(3);
  const int64_t n = 1000;
  Buf x = random({1, n}, DType::F32, rng), w = alloc({n}, DType::F32), out = alloc({1, n}, DType::F32);
  for (int64_t i = 0; i < n; ++i) set(w.v, i, 1.0);
  rms_norm(out.v, x.v, w.v, 0.0f);
  std::vector<float> sq(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) sq[size_t(i)] = float(get(x.v, i)) * float(get(x.v, i));
  const float rstd = 1.0f / std::sqrt(plan_sum(sq) / float(n));
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(float(get(out.v, i)), float(get(x.v, i)) * rstd * 1.0f) << i;
}

// ---- layer_norm -------------------------------------------------------------------------------------

TEST(CpuOpsLayerNorm, MatchesFloat64ReferenceWithAndWithoutAffine) {
  std::mt19937 rng(4);
  const int64_t n = 300;
  for (DType dt : kFloatTypes)
    for (int affine = 0; affine < 4; ++affine) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + " affine " + std::to_string(affine));
      // A mean far from zero: a one-pass variance would lose most of its digits here.
      Buf x = random({6, n}, dt, rng, 20, 24), out = alloc({6, n}, dt);
      Buf w = random({n}, dt, rng, 0.5, 1.5), b = random({n}, DType::F32, rng, -1, 1);
      std::optional<TensorView> wv, bv;
      if (affine & 1) wv = w.v;
      if (affine & 2) bv = b.v;
      layer_norm(out.v, x.v, wv, bv, 1e-5f);
      std::vector<double> xs = values(x.v), ref(xs.size());
      for (int64_t r = 0; r < 6; ++r) {
        double mean = 0, var = 0;
        for (int64_t i = 0; i < n; ++i) mean += xs[size_t(r * n + i)];
        mean /= double(n);
        for (int64_t i = 0; i < n; ++i) var += (xs[size_t(r * n + i)] - mean) * (xs[size_t(r * n + i)] - mean);
        double rstd = 1 / std::sqrt(var / double(n) + 1e-5);
        for (int64_t i = 0; i < n; ++i)
          ref[size_t(r * n + i)] = (xs[size_t(r * n + i)] - mean) * rstd * (wv ? get(w.v, i) : 1.0) + (bv ? get(b.v, i) : 0.0);
      }
      // The output's error is absolute (relative to the unit spread), hence the floor of 1.
      expect_close(out.v, ref, rtol(dt) * 4, 1.0);
    }
}

// ---- softmax ------------------------------------------------------------------------------------------

TEST(CpuOpsSoftmax, MatchesFloat64ReferenceIncludingMaskedEntries) {
  std::mt19937 rng(5);
  const int64_t n = 129;
  for (DType dt : kFloatTypes)
    for (DType odt : {dt, DType::F32})
      for (bool log : {false, true}) {
        SCOPED_TRACE(std::string(log ? "log_softmax " : "softmax ") + dtype_name(dt) + " -> " + dtype_name(odt));
        Buf x = random({5, n}, dt, rng, -8, 8), out = alloc({5, n}, odt);
        for (int64_t i = 3; i < x.v.numel(); i += 11) set(x.v, i, -INFINITY);  // masked positions
        (log ? log_softmax : softmax)(out.v, x.v, Stream{});
        std::vector<double> ref = ref_softmax(values(x.v), n, log);
        // Probabilities that land in f16's subnormal range carry an absolute error of half a subnormal
        // step, hence the floor at the smallest normal.
        expect_close(out.v, ref, rtol(odt), log ? 1.0 : min_normal(odt));
        if (!log) {
          for (int64_t i = 3; i < x.v.numel(); i += 11) ASSERT_EQ(get(out.v, i), 0.0);
        }
      }
}

TEST(CpuOpsSoftmax, SumOfExponentialsFollowsTheRowPlan) {
  std::mt19937 rng(6);
  const int64_t n = 517;
  Buf x = random({1, n}, DType::F32, rng, -5, 5), out = alloc({1, n}, DType::F32);
  softmax(out.v, x.v);
  float m = -INFINITY;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, float(get(x.v, i)));
  std::vector<float> e(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) e[size_t(i)] = std::exp(float(get(x.v, i)) - m);
  const float s = plan_sum(e);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(float(get(out.v, i)), e[size_t(i)] / s) << i;
}

// ---- sum / mean ---------------------------------------------------------------------------------------

TEST(CpuOpsReduce, SumAndMeanOverAnyDimsMatchFloat64Reference) {
  std::mt19937 rng(7);
  const Shape shape = {4, 6, 35};
  const std::vector<std::vector<int>> dim_sets = {{}, {-1}, {0}, {1}, {0, 2}, {2, 0}, {0, 1}, {0, 1, 2}};
  for (DType dt : kFloatTypes)
    for (DType odt : {dt, DType::F32})
      for (const auto& dims : dim_sets)
        for (int is_mean = 0; is_mean < 2; ++is_mean)
          for (bool keepdim : {false, true}) {
            std::string dims_str;
            for (int d : dims) dims_str += std::to_string(d) + " ";
            SCOPED_TRACE(std::string(is_mean ? "mean " : "sum ") + dtype_name(dt) + " -> " + dtype_name(odt) +
                         " dims " + dims_str + (keepdim ? "keepdim" : ""));
            Buf x = random(shape, dt, rng);
            bool red[3] = {dims.empty(), dims.empty(), dims.empty()};
            for (int d : dims) red[d < 0 ? d + 3 : d] = true;
            Shape out_shape, kept_shape;
            for (int d = 0; d < 3; ++d) {
              if (!red[d]) kept_shape.push_back(shape[size_t(d)]);
              if (!red[d] || keepdim) out_shape.push_back(red[d] ? 1 : shape[size_t(d)]);
            }
            Buf out = alloc(out_shape, odt);
            (is_mean ? mean : sum)(out.v, x.v, dims, keepdim, Stream{});
            // Reference: accumulate every x element into its output slot (row-major over kept dims).
            std::vector<double> ref(size_t(out.v.numel()), 0.0), mag(ref.size(), 0.0);
            int64_t count = x.v.numel() / out.v.numel();
            for (int64_t i = 0; i < x.v.numel(); ++i) {
              int64_t idx[3] = {i / (shape[1] * shape[2]), i / shape[2] % shape[1], i % shape[2]};
              int64_t o = 0;
              for (int d = 0; d < 3; ++d)
                if (!red[d]) o = o * shape[size_t(d)] + idx[d];
              ref[size_t(o)] += get(x.v, i) / (is_mean ? double(count) : 1.0);
              mag[size_t(o)] += std::abs(get(x.v, i)) / (is_mean ? double(count) : 1.0);
            }
            ASSERT_EQ(out.v.numel(), int64_t(ref.size()));
            for (int64_t o = 0; o < out.v.numel(); ++o) {
              double g = get(out.v, o);
              ASSERT_LE(std::abs(g - ref[size_t(o)]), rtol(odt) * std::max(std::abs(ref[size_t(o)]), mag[size_t(o)]))
                  << "output " << o;
            }
          }
}

TEST(CpuOpsReduce, FollowsTheRowPlanOverTheFlattenedReducedDims) {
  // Sum over dims {0, 2} of [5000, 3, 2]: each output walks 10000 strided elements (several gather
  // chunks), in row-major order of (dim 0, dim 2); the bits must be the plan's over that order.
  std::mt19937 rng(8);
  Buf x = random({5000, 3, 2}, DType::F32, rng);
  Buf out = alloc({3}, DType::F32);
  sum(out.v, x.v, {0, 2});
  for (int64_t j = 0; j < 3; ++j) {
    std::vector<float> v;
    for (int64_t a = 0; a < 5000; ++a)
      for (int64_t c = 0; c < 2; ++c) v.push_back(float(get(x.v, (a * 3 + j) * 2 + c)));
    EXPECT_EQ(f32_bits(float(get(out.v, j))), f32_bits(plan_sum(v))) << "output " << j;
  }
  // Contiguous fast path, and the same reduction seen through a transposed view: the same bits.
  Buf row = random({1, 4099}, DType::F32, rng), total = alloc({1}, DType::F32);
  sum(total.v, row.v, {-1});
  EXPECT_EQ(f32_bits(float(get(total.v, 0))), f32_bits(plan_sum(std::vector<float>(
                                                  row.owner.ptr<float>(), row.owner.ptr<float>() + 4099))));
  Buf xt = copy_of(x.v, Layout::Reversed), out_t = alloc({3}, DType::F32, Layout::Padded);
  sum(out_t.v, xt.v, {0, 2});
  EXPECT_TRUE(same_bits(out.v, out_t.v));
}

// ---- argmax -------------------------------------------------------------------------------------------

TEST(CpuOpsArgmax, FirstMaxWinsAndNanCountsAsMax) {
  std::mt19937 rng(9);
  const int64_t n = 100;
  for (DType dt : kFloatTypes) {
    SCOPED_TRACE(dtype_name(dt));
    Buf x = random({2, 4, n}, dt, rng), out = alloc({2, 4}, DType::I32);
    auto row = [&](int64_t r, int64_t i) { return r * n + i; };
    set(x.v, row(1, 10), 5), set(x.v, row(1, 20), 5);                     // tie: first wins
    set(x.v, row(2, 40), NAN), set(x.v, row(2, 30), NAN), set(x.v, row(2, 5), 9);  // first NaN wins
    for (int64_t i = 0; i < n; ++i) set(x.v, row(3, i), -INFINITY);      // all -inf: index 0
    for (int64_t i = 0; i < n; ++i) set(x.v, row(4, i), i == 7 ? -0.0 : i == 9 ? 0.0 : -1.0);  // -0 == +0
    argmax(out.v, x.v);
    std::vector<double> xs = values(x.v);
    for (int64_t r = 0; r < 8; ++r) {
      int64_t best = 0;
      for (int64_t i = 1; i < n; ++i) {
        double b = xs[size_t(row(r, best))], v = xs[size_t(row(r, i))];
        if (!std::isnan(b) && (std::isnan(v) || v > b)) best = i;
      }
      EXPECT_EQ(get(out.v, r), double(best)) << "row " << r;
    }
    EXPECT_EQ(get(out.v, 1), 10.0);
    EXPECT_EQ(get(out.v, 2), 30.0);
    EXPECT_EQ(get(out.v, 3), 0.0);
    EXPECT_EQ(get(out.v, 4), 7.0);
  }
}

// ---- silu_and_mul -------------------------------------------------------------------------------------

TEST(CpuOpsSiluAndMul, MatchesFloat64Reference) {
  std::mt19937 rng(10);
  const int64_t d = 37;
  for (DType dt : kFloatTypes)
    for (DType odt : {dt, DType::F32}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + " -> " + dtype_name(odt));
      Buf x = random({3, 5, 2 * d}, dt, rng, -6, 6), out = alloc({3, 5, d}, odt);
      silu_and_mul(out.v, x.v);
      std::vector<double> xs = values(x.v), ref(size_t(15 * d));
      for (int64_t r = 0; r < 15; ++r)
        for (int64_t i = 0; i < d; ++i) {
          double g = xs[size_t(r * 2 * d + i)], u = xs[size_t(r * 2 * d + d + i)];
          ref[size_t(r * d + i)] = g / (1 + std::exp(-g)) * u;
        }
      expect_close(out.v, ref, rtol(odt), 1e-3);
    }
}

// ---- rotary embedding -------------------------------------------------------------------------------

namespace {
// Rotates a [T, H, D] tensor's values in float64 with the f32 table's cos/sin.
std::vector<double> ref_rotary(const TensorView& x, const std::vector<int>& pos, const TensorView& cs, bool neox) {
  std::vector<double> v = values(x), out = v;
  const int64_t heads = x.shape[1], d = x.shape[2], rot = cs.shape[1], half = rot / 2;
  for (int64_t t = 0; t < x.shape[0]; ++t)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < half; ++i) {
        int64_t base = (t * heads + h) * d;
        int64_t i1 = neox ? i : 2 * i, i2 = neox ? i + half : 2 * i + 1;
        double c = get(cs, pos[size_t(t)] * rot + i), s = get(cs, pos[size_t(t)] * rot + half + i);
        out[size_t(base + i1)] = v[size_t(base + i1)] * c - v[size_t(base + i2)] * s;
        out[size_t(base + i2)] = v[size_t(base + i2)] * c + v[size_t(base + i1)] * s;
      }
  return out;
}
}  // namespace

TEST(CpuOpsRotary, NeoxAndGptjFullAndPartialMatchFloat64Reference) {
  std::mt19937 rng(11);
  const int64_t tokens = 5, d = 24;
  for (DType dt : kFloatTypes)
    for (bool neox : {true, false})
      for (int64_t rot : {24, 16})
        for (bool with_k : {true, false}) {
          SCOPED_TRACE(std::string(dtype_name(dt)) + (neox ? " neox" : " gptj") + " rot " + std::to_string(rot) +
                       (with_k ? " q,k" : " q only"));
          Tensor cs = rope_cos_sin_table(64, rot, 10000.0);
          Buf q = random({tokens, 4, d}, dt, rng), k = random({tokens, 2, d}, dt, rng);
          Buf pos = alloc({tokens}, DType::I32);
          std::vector<int> p = {0, 63, 17, 17, 5};
          for (int64_t t = 0; t < tokens; ++t) set(pos.v, t, p[size_t(t)]);
          std::vector<double> q_ref = ref_rotary(q.v, p, cs, neox), k_ref = ref_rotary(k.v, p, cs, neox);
          std::vector<double> k0 = values(k.v);
          rotary_embedding(q.v, with_k ? k.v : TensorView{}, pos.v, cs, neox);
          expect_close(q.v, q_ref, rtol(dt), 1e-2);
          if (with_k)
            expect_close(k.v, k_ref, rtol(dt), 1e-2);
          else
            EXPECT_EQ(values(k.v), k0);
          // Dims past rot_dim pass through untouched (exactly: ref copies them from the input).
          if (rot < d)
            for (int64_t i = 0; i < q.v.numel(); ++i)
              if (i % d >= rot) ASSERT_EQ(get(q.v, i), q_ref[size_t(i)]);
        }
}

TEST(CpuOpsRotary, CosSinTableIsDoublePrecisionRoundedOnce) {
  Tensor cs = rope_cos_sin_table(4096, 64, 500000.0);
  ASSERT_EQ(cs.sizes(), (Shape{4096, 64}));
  for (int64_t p : {0, 1, 1000, 4095})
    for (int64_t i : {0, 7, 31}) {
      double angle = double(p) / std::pow(500000.0, double(2 * i) / 64.0);
      EXPECT_EQ(get(cs, p * 64 + i), double(float(std::cos(angle))));
      EXPECT_EQ(get(cs, p * 64 + 32 + i), double(float(std::sin(angle))));
    }
  expect_error([] { rope_cos_sin_table(16, 7, 10000.0); }, "rot_dim");
  expect_error([] { rope_cos_sin_table(16, 8, -1.0); }, "theta");
}

TEST(CpuOpsRotary, StridedHeadsGiveTheSameBits) {
  // q as a slice of a fused qkv buffer [T, (4 + 2 + 2) * D], k padded, and both in reversed layout.
  std::mt19937 rng(12);
  const int64_t tokens = 6, d = 32;
  Tensor cs = rope_cos_sin_table(32, 24, 10000.0);
  Buf pos = alloc({tokens}, DType::I32);
  for (int64_t t = 0; t < tokens; ++t) set(pos.v, t, double((t * 7) % 32));
  for (DType dt : kFloatTypes)
    for (bool neox : {true, false}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + (neox ? " neox" : " gptj"));
      Buf q = random({tokens, 4, d}, dt, rng), k = random({tokens, 2, d}, dt, rng);
      Buf qkv = random({tokens, 8 * d}, dt, rng);
      TensorView q_slice = qkv.v.narrow(1, 0, 4 * d);
      q_slice.ndim = 3;
      q_slice.shape = {tokens, 4, d};
      q_slice.stride = {8 * d, d, 1};
      copy(q_slice, q.v);
      Buf k_pad = copy_of(k.v, Layout::Padded), q_rev = copy_of(q.v, Layout::Reversed),
          k_rev = copy_of(k.v, Layout::Reversed);
      rotary_embedding(q.v, k.v, pos.v, cs, neox);
      rotary_embedding(q_slice, k_pad.v, pos.v, cs, neox);
      rotary_embedding(q_rev.v, k_rev.v, pos.v, cs, neox);
      EXPECT_TRUE(same_bits(q.v, q_slice));
      EXPECT_TRUE(same_bits(k.v, k_pad.v));
      EXPECT_TRUE(same_bits(q.v, q_rev.v));
      EXPECT_TRUE(same_bits(k.v, k_rev.v));
    }
}

// ---- embedding ----------------------------------------------------------------------------------------

TEST(CpuOpsEmbedding, GathersRowsExactly) {
  std::mt19937 rng(13);
  for (DType dt : kFloatTypes)
    for (DType odt : {dt, DType::F32})
      for (Layout l : {Layout::Contiguous, Layout::Reversed}) {
        SCOPED_TRACE(std::string(dtype_name(dt)) + " -> " + dtype_name(odt) + " " + layout_name(l));
        Buf table = random({11, 19}, dt, rng, -2, 2, l), ids = alloc({6}, DType::I32), out = alloc({6, 19}, odt, l);
        std::vector<int> id = {3, 0, 10, 3, 7, 1};
        for (int64_t t = 0; t < 6; ++t) set(ids.v, t, id[size_t(t)]);
        embedding(out.v, ids.v, table.v);
        for (int64_t t = 0; t < 6; ++t)
          for (int64_t i = 0; i < 19; ++i) ASSERT_EQ(get(out.v, t * 19 + i), get(table.v, id[size_t(t)] * 19 + i));
      }
}

// The engine's form: the ids also given on the host. Same rows; a bad host id or a host copy of the wrong
// size is an error naming it, and out is left as it was.
TEST(CpuOpsEmbedding, HostIdsFormGathersTheSameAndChecksThem) {
  std::mt19937 rng(14);
  Buf table = random({11, 19}, DType::BF16, rng, -2, 2), ids = alloc({4}, DType::I32);
  Buf a = alloc({4, 19}, DType::BF16), b = alloc({4, 19}, DType::BF16);
  const std::vector<int32_t> id = {3, 0, 10, 3};
  for (int64_t t = 0; t < 4; ++t) set(ids.v, t, id[size_t(t)]);
  embedding(a.v, ids.v, table.v);
  embedding(b.v, ids.v, table.v, id);
  for (int64_t i = 0; i < 4 * 19; ++i) ASSERT_EQ(get(a.v, i), get(b.v, i));
  auto msg = [](auto f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::vector<int32_t> bad = {3, 0, 11, 3}, short_ids = {3, 0};
  EXPECT_NE(msg([&] { embedding(b.v, ids.v, table.v, bad); }).find("ids[2] = 11 is outside"), std::string::npos);
  EXPECT_NE(msg([&] { embedding(b.v, ids.v, table.v, short_ids); }).find("host copy of ids has 2 values"),
            std::string::npos);
}

// ---- edge rows and the remaining plans ----------------------------------------------------------------

TEST(CpuOpsSoftmax, EdgeRowsAndLongRows) {
  std::mt19937 rng(16);
  for (DType dt : kFloatTypes) {
    SCOPED_TRACE(dtype_name(dt));
    // n = 1: probability exactly 1, log-probability exactly 0.
    Buf x1 = random({3, 1}, dt, rng, -50, 50), p1 = alloc({3, 1}, dt), l1 = alloc({3, 1}, DType::F32);
    softmax(p1.v, x1.v);
    log_softmax(l1.v, x1.v);
    for (int64_t r = 0; r < 3; ++r) {
      EXPECT_EQ(get(p1.v, r), 1.0);
      EXPECT_EQ(get(l1.v, r), 0.0);
    }
    // One finite entry among -inf: exactly one-hot.
    Buf xm = alloc({1, 40}, dt), pm = alloc({1, 40}, dt);
    for (int64_t i = 0; i < 40; ++i) set(xm.v, i, i == 21 ? 3.0 : -INFINITY);
    softmax(pm.v, xm.v);
    for (int64_t i = 0; i < 40; ++i) ASSERT_EQ(get(pm.v, i), i == 21 ? 1.0 : 0.0) << i;
    // A long row (many full lane blocks plus a tail) against float64.
    const int64_t n = 5003;
    Buf x = random({2, n}, dt, rng, -12, 12), p = alloc({2, n}, DType::F32), l = alloc({2, n}, dt);
    softmax(p.v, x.v);
    log_softmax(l.v, x.v);
    expect_close(p.v, ref_softmax(values(x.v), n, false), rtol(DType::F32) * 4, min_normal(DType::F32));
    expect_close(l.v, ref_softmax(values(x.v), n, true), rtol(dt), 1.0);
  }
}

TEST(CpuOpsRmsNorm, LongRowsAndOutputDtypesMatchFloat64Reference) {
  std::mt19937 rng(17);
  for (int64_t n : {1, 15, 16, 17, 4099})
    for (DType dt : kFloatTypes)
      for (DType odt : {dt, DType::F32}) {
        SCOPED_TRACE(std::string(dtype_name(dt)) + " -> " + dtype_name(odt) + " n " + std::to_string(n));
        Buf x = random({3, n}, dt, rng, -3, 3), w = random({n}, DType::F32, rng, 0.5, 1.5), out = alloc({3, n}, odt);
        rms_norm(out.v, x.v, w.v, 1e-6f);
        expect_close(out.v, ref_rms_norm(values(x.v), values(w.v), n, 1e-6), rtol(odt), 1e-3);
      }
}

TEST(CpuOpsLayerNorm, MeanAndVarianceFollowTheRowPlan) {
  std::mt19937 rng(18);
  const int64_t n = 777;
  Buf x = random({1, n}, DType::F32, rng, 3, 5), out = alloc({1, n}, DType::F32);
  layer_norm(out.v, x.v, std::nullopt, std::nullopt, 1e-5f);
  std::vector<float> v(static_cast<size_t>(n)), d2(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[size_t(i)] = float(get(x.v, i));
  const float mean = plan_sum(v) / float(n);
  for (int64_t i = 0; i < n; ++i) d2[size_t(i)] = (v[size_t(i)] - mean) * (v[size_t(i)] - mean);
  const float rstd = 1.0f / std::sqrt(plan_sum(d2) / float(n) + 1e-5f);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(f32_bits(float(get(out.v, i))), f32_bits((v[size_t(i)] - mean) * rstd)) << i;
}

TEST(CpuOpsLayerNorm, WithStatsWritesTheMeanAndRstdItUsed) {
  std::mt19937 rng(23);
  const int64_t rows = 6, n = 300;
  Buf x = random({rows, n}, DType::BF16, rng, -2, 6), w = random({n}, DType::F32, rng, 0.5, 1.5);
  Buf out = alloc({rows, n}, DType::BF16), plain = alloc({rows, n}, DType::BF16);
  Buf mean = alloc({rows, 1}, DType::F32), rstd = alloc({rows, 1}, DType::F32);
  layer_norm_with_stats(out.v, mean.v, rstd.v, x.v, w.v, std::nullopt, 1e-5f);
  layer_norm(plain.v, x.v, w.v, std::nullopt, 1e-5f);
  for (int64_t i = 0; i < rows * n; ++i) ASSERT_EQ(get(out.v, i), get(plain.v, i)) << i;
  std::vector<double> xs = values(x.v);
  for (int64_t r = 0; r < rows; ++r) {
    double m = 0, var = 0;
    for (int64_t i = 0; i < n; ++i) m += xs[size_t(r * n + i)] / double(n);
    for (int64_t i = 0; i < n; ++i) var += std::pow(xs[size_t(r * n + i)] - m, 2) / double(n);
    EXPECT_NEAR(get(mean.v, r), m, 1e-5 * (1 + std::fabs(m))) << r;
    EXPECT_NEAR(get(rstd.v, r), 1 / std::sqrt(var + 1e-5), 1e-5 / std::sqrt(var + 1e-5)) << r;
  }
  // Row 4 alone (as a 1-D tensor): the same two numbers, bit for bit.
  Buf m1 = alloc({1}, DType::F32), r1 = alloc({1}, DType::F32), o1 = alloc({n}, DType::BF16);
  layer_norm_with_stats(o1.v, m1.v, r1.v, x.v.select(0, 4), w.v, std::nullopt, 1e-5f);
  EXPECT_EQ(f32_bits(float(get(m1.v, 0))), f32_bits(float(get(mean.v, 4))));
  EXPECT_EQ(f32_bits(float(get(r1.v, 0))), f32_bits(float(get(rstd.v, 4))));
  // Strided stats (every other element of a [rows, 2] buffer) land where their views say.
  Buf wide = alloc({rows, 2}, DType::F32), wide2 = alloc({rows, 2}, DType::F32);
  layer_norm_with_stats(out.v, wide.v.narrow(1, 0, 1), wide2.v.narrow(1, 1, 1), x.v, w.v, std::nullopt, 1e-5f);
  for (int64_t r = 0; r < rows; ++r) {
    EXPECT_EQ(f32_bits(float(get(wide.v, 2 * r))), f32_bits(float(get(mean.v, r))));
    EXPECT_EQ(f32_bits(float(get(wide2.v, 2 * r + 1))), f32_bits(float(get(rstd.v, r))));
  }
  expect_error([&] { layer_norm_with_stats(out.v, alloc({rows}, DType::F32).v, rstd.v, x.v, w.v, std::nullopt, 1e-5f); },
               "mean must have x's shape with the last dim 1");
  expect_error([&] { layer_norm_with_stats(out.v, mean.v, alloc({rows, 1}, DType::BF16).v, x.v, w.v, std::nullopt,
                                           1e-5f); },
               "rstd must be F32");
}

TEST(CpuOpsLayerNorm, EveryWeightBiasAndOutputDtypeMix) {
  std::mt19937 rng(19);
  const int64_t n = 130;
  for (DType dt : kFloatTypes)
    for (DType pdt : {dt, DType::F32})
      for (DType odt : {dt, DType::F32}) {
        SCOPED_TRACE(std::string(dtype_name(dt)) + " params " + dtype_name(pdt) + " out " + dtype_name(odt));
        Buf x = random({4, n}, dt, rng, -3, 3), out = alloc({4, n}, odt);
        Buf w = random({n}, pdt, rng, 0.5, 1.5), b = random({n}, pdt, rng, -1, 1);
        layer_norm(out.v, x.v, w.v, b.v, 1e-5f);
        std::vector<double> xs = values(x.v), ref(xs.size());
        for (int64_t r = 0; r < 4; ++r) {
          double mean = 0, var = 0;
          for (int64_t i = 0; i < n; ++i) mean += xs[size_t(r * n + i)] / double(n);
          for (int64_t i = 0; i < n; ++i) var += std::pow(xs[size_t(r * n + i)] - mean, 2) / double(n);
          for (int64_t i = 0; i < n; ++i)
            ref[size_t(r * n + i)] = (xs[size_t(r * n + i)] - mean) / std::sqrt(var + 1e-5) * get(w.v, i) + get(b.v, i);
        }
        expect_close(out.v, ref, rtol(odt) * 4, 1.0);
      }
}

TEST(CpuOpsReduce, MeanOfARowIsThePlanSumDividedByN) {
  std::mt19937 rng(20);
  const int64_t n = 1234;
  Buf x = random({2, n}, DType::F32, rng), out = alloc({2, 1}, DType::F32);
  mean(out.v, x.v, {1}, /*keepdim=*/true);
  for (int64_t r = 0; r < 2; ++r) {
    std::vector<float> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) v[size_t(i)] = float(get(x.v, r * n + i));
    EXPECT_EQ(f32_bits(float(get(out.v, r))), f32_bits(plan_sum(v) / float(n))) << "row " << r;
  }
}

TEST(CpuOpsReduce, EmptyReductionsGiveZeroSumAndNanMean) {
  for (DType dt : kFloatTypes) {
    SCOPED_TRACE(dtype_name(dt));
    TensorView x(nullptr, dt, {3, 0});  // no data: nothing may be read
    Buf s = alloc({3}, dt), m = alloc({3, 1}, DType::F32);
    sum(s.v, x, {1});
    mean(m.v, x, {-1}, /*keepdim=*/true);
    for (int64_t r = 0; r < 3; ++r) {
      EXPECT_EQ(get(s.v, r), 0.0);
      EXPECT_TRUE(std::isnan(get(m.v, r)));
    }
  }
}

// ---- layout independence, batch invariance, threads ---------------------------------------------------

namespace {
// x [M, n] seen as [M, n / 2, 2] (n even), whatever x's layout.
TensorView split_last(const TensorView& x) {
  TensorView v = x;
  v.ndim = 3;
  v.shape = {x.shape[0], x.shape[1] / 2, 2};
  v.stride = {x.stride[0], 2 * x.stride[1], x.stride[1]};
  return v;
}

// One row op: x [M, n] -> out [M, n / out_div] (out_div == 0: out is [M]).
struct RowOp {
  std::string name;
  int64_t out_div;
  bool out_i32;
  bool masks_ok;  // -inf entries in a row are meaningful input (softmax masks)
  std::function<void(const TensorView& out, const TensorView& x)> run;
};

// w and b have x's dtype, w32 is F32.
std::vector<RowOp> row_ops(const TensorView& w, const TensorView& w32, const TensorView& b) {
  using V = const TensorView&;
  return {
      {"rms_norm", 1, false, false, [w](V o, V x) { rms_norm(o, x, w, 1e-5f); }},
      {"rms_norm(f32 weight)", 1, false, false, [w32](V o, V x) { rms_norm(o, x, w32, 1e-5f); }},
      {"layer_norm", 1, false, false, [w, b](V o, V x) { layer_norm(o, x, w, b, 1e-5f); }},
      {"layer_norm(f32 weight, no bias)", 1, false, false,
       [w32](V o, V x) { layer_norm(o, x, w32, std::nullopt, 1e-5f); }},
      {"layer_norm(no affine)", 1, false, false,
       [](V o, V x) { layer_norm(o, x, std::nullopt, std::nullopt, 1e-5f); }},
      {"softmax", 1, false, true, [](V o, V x) { softmax(o, x); }},
      {"log_softmax", 1, false, true, [](V o, V x) { log_softmax(o, x); }},
      {"silu_and_mul", 2, false, false, [](V o, V x) { silu_and_mul(o, x); }},
      {"sum", 0, false, false, [](V o, V x) { sum(o, x, {-1}); }},
      {"mean", 0, false, false, [](V o, V x) { mean(o, x, {1}); }},
      {"sum over dims {2, 1} of [M, n/2, 2]", 0, false, false, [](V o, V x) { sum(o, split_last(x), {2, 1}); }},
      {"argmax", 0, true, true, [](V o, V x) { argmax(o, x); }},
  };
}
Shape out_shape(const RowOp& op, int64_t m, int64_t n) { return op.out_div == 0 ? Shape{m} : Shape{m, n / op.out_div}; }
std::vector<DType> out_dtypes(const RowOp& op, DType dt) {
  if (op.out_i32) return {DType::I32};
  if (dt == DType::F32) return {dt};
  return {dt, DType::F32};
}

// Row r of x gets content of one of several kinds: ordinary, wide, tiny, constant, or (masks) with -inf.
void fill_row(const TensorView& x, int64_t r, int kind, bool masks, std::mt19937& rng) {
  const int64_t n = x.shape[1];
  std::uniform_real_distribution<double> u(-1, 1);
  for (int64_t i = 0; i < n; ++i) {
    double v = kind == 0 ? 4 * u(rng) : kind == 1 ? 300 * u(rng) : kind == 2 ? 1e-3 * u(rng) : 1.5;
    if (kind == 3 && masks) v = i % 5 == 2 ? -INFINITY : 8 * u(rng);
    set(x, r * n + i, v);
  }
}

const Layout kLayouts[] = {Layout::Contiguous, Layout::Padded, Layout::Reversed};

// Resets the thread pool to its default size when a test ends, however it ends.
struct ThreadsGuard {
  ~ThreadsGuard() { cpu::set_num_threads(0); }
};
}  // namespace

TEST(CpuOpsLayout, PaddedAndTransposedViewsGiveTheSameBits) {
  std::mt19937 rng(14);
  const int64_t m = 9, n = 250;
  for (DType dt : kFloatTypes) {
    Buf w = random({n}, dt, rng, 0.5, 1.5), w32 = random({n}, DType::F32, rng, 0.5, 1.5), b = random({n}, dt, rng);
    for (const RowOp& op : row_ops(w.v, w32.v, b.v))
      for (DType odt : out_dtypes(op, dt)) {
        Buf x = random({m, n}, dt, rng);
        Buf ref = alloc(out_shape(op, m, n), odt);
        op.run(ref.v, x.v);
        ASSERT_EQ(unwritten(ref.v), 0) << op.name;
        for (Layout xl : kLayouts)
          for (Layout ol : kLayouts) {
            SCOPED_TRACE(op.name + " " + dtype_name(dt) + " -> " + dtype_name(odt) + " x " + layout_name(xl) +
                         " out " + layout_name(ol));
            Buf xs = copy_of(x.v, xl), out = alloc(out_shape(op, m, n), odt, ol);
            op.run(out.v, xs.v);
            EXPECT_TRUE(same_bits(ref.v, out.v));
            EXPECT_TRUE(padding_intact(out));
            EXPECT_TRUE(same_bits(x.v, xs.v));  // x is only read
          }
      }
  }
}

TEST(CpuOpsBatch, RowsAloneEqualRowsInsideBatchesOfManySizes) {
  // Three target rows (ordinary, wide range, constant or masked) are computed alone, then hidden at random
  // positions of batches of many sizes, among neighbours of every kind, in every layout; their output
  // bytes must not change. Each batch also runs twice (run-to-run).
  const int64_t kBatchSizes[] = {1, 2, 3, 5, 8, 13, 16, 17, 31, 32, 33, 64, 97, 128, 257};
  std::mt19937 rng(15);
  for (int64_t n : {6, 250, 1030})
    for (DType dt : kFloatTypes) {
      Buf w = random({n}, dt, rng, 0.5, 1.5), w32 = random({n}, DType::F32, rng, 0.5, 1.5), b = random({n}, dt, rng);
      for (const RowOp& op : row_ops(w.v, w32.v, b.v))
        for (DType odt : out_dtypes(op, dt)) {
          SCOPED_TRACE(op.name + " " + dtype_name(dt) + " -> " + dtype_name(odt) + " n " + std::to_string(n));
          const int kinds[3] = {0, 1, 3};
          Buf targets = alloc({3, n}, dt);
          std::vector<Buf> alone;
          for (int t = 0; t < 3; ++t) {
            fill_row(targets.v, t, kinds[t], op.masks_ok, rng);
            Buf x1 = copy_of(targets.v.narrow(0, t, 1), Layout::Contiguous);
            alone.push_back(alloc(out_shape(op, 1, n), odt));
            op.run(alone.back().v, x1.v);
            ASSERT_EQ(unwritten(alone.back().v), 0);
          }
          int64_t cases = 0;
          std::vector<int64_t> sizes(std::begin(kBatchSizes), std::end(kBatchSizes));
          if (n <= 250) sizes.insert(sizes.end(), {1031, 4096});  // large batches where rows are cheap
          for (size_t bi = 0; bi < sizes.size(); ++bi) {
            const int64_t m = sizes[bi];
            const Layout xl = kLayouts[bi % 3], ol = kLayouts[(bi / 3) % 3];
            SCOPED_TRACE("batch " + std::to_string(m) + " x " + layout_name(xl) + " out " + layout_name(ol));
            Buf x = alloc({m, n}, dt, xl);
            for (int64_t r = 0; r < m; ++r) fill_row(x.v, r, int(rng() % 4), op.masks_ok, rng);
            std::vector<int64_t> pos(static_cast<size_t>(m));
            for (int64_t r = 0; r < m; ++r) pos[size_t(r)] = r;
            std::shuffle(pos.begin(), pos.end(), rng);
            const int64_t hidden = std::min<int64_t>(3, m);
            for (int64_t t = 0; t < hidden; ++t) copy(x.v.narrow(0, pos[size_t(t)], 1), targets.v.narrow(0, t, 1));
            Buf out = alloc(out_shape(op, m, n), odt, ol), again = alloc(out_shape(op, m, n), odt);
            op.run(out.v, x.v);
            op.run(again.v, x.v);
            ASSERT_EQ(unwritten(out.v), 0);
            EXPECT_TRUE(padding_intact(out));
            EXPECT_TRUE(same_bits(out.v, again.v)) << "run-to-run";
            for (int64_t t = 0; t < hidden; ++t, ++cases)
              EXPECT_TRUE(same_bits(out.v.narrow(0, pos[size_t(t)], 1), alone[size_t(t)].v))
                  << "target " << t << " at row " << pos[size_t(t)];
          }
          EXPECT_GT(cases, 30);
        }
    }
}

TEST(CpuOpsBatch, FusedResidualRotaryAndEmbeddingRowsAloneEqualRowsInsideBatches) {
  const int64_t kBatchSizes[] = {1, 2, 7, 16, 37, 101, 256};
  std::mt19937 rng(21);
  const int64_t n = 520, heads_q = 6, heads_k = 2, d = 64, vocab = 300;
  for (DType dt : kFloatTypes) {
    SCOPED_TRACE(dtype_name(dt));
    Buf w = random({n}, dt, rng, 0.5, 1.5);
    Tensor cs = rope_cos_sin_table(512, 48, 10000.0);
    Buf table = random({vocab, d}, dt, rng);
    // The target token, alone.
    Buf tx = random({1, n}, dt, rng), tr = random({1, n}, dt, rng, -30, 30), tq = random({1, heads_q, d}, dt, rng);
    Buf tk = random({1, heads_k, d}, dt, rng);
    const int32_t tpos = 301, tid = 123;
    Buf r1 = copy_of(tr.v, Layout::Contiguous), o1 = alloc({1, n}, dt);
    rms_norm(o1.v, tx.v, w.v, 1e-5f, r1.v);
    Buf q1 = copy_of(tq.v, Layout::Contiguous), k1 = copy_of(tk.v, Layout::Contiguous), p1 = alloc({1}, DType::I32);
    Buf q1g = copy_of(tq.v, Layout::Contiguous), k1g = copy_of(tk.v, Layout::Contiguous);
    set(p1.v, 0, tpos);
    rotary_embedding(q1.v, k1.v, p1.v, cs, true);
    rotary_embedding(q1g.v, k1g.v, p1.v, cs, false);
    Buf i1 = alloc({1}, DType::I32), e1 = alloc({1, d}, DType::F32);
    set(i1.v, 0, tid);
    embedding(e1.v, i1.v, table.v);
    ASSERT_EQ(unwritten(o1.v) + unwritten(r1.v) + unwritten(e1.v), 0);

    for (int64_t m : kBatchSizes) {
      SCOPED_TRACE("batch " + std::to_string(m));
      const int64_t at = int64_t(rng() % uint64_t(m));
      const Layout l = kLayouts[m % 3];
      Buf x = random({m, n}, dt, rng, -8, 8, l), res = random({m, n}, dt, rng, -30, 30, l), out = alloc({m, n}, dt, l);
      copy(x.v.narrow(0, at, 1), tx.v);
      copy(res.v.narrow(0, at, 1), tr.v);
      rms_norm(out.v, x.v, w.v, 1e-5f, res.v);
      EXPECT_TRUE(same_bits(out.v.narrow(0, at, 1), o1.v));
      EXPECT_TRUE(same_bits(res.v.narrow(0, at, 1), r1.v));
      EXPECT_TRUE(padding_intact(out));

      Buf q = random({m, heads_q, d}, dt, rng, -2, 2, l), k = random({m, heads_k, d}, dt, rng, -2, 2, l);
      Buf pos = alloc({m}, DType::I32);
      for (int64_t t = 0; t < m; ++t) set(pos.v, t, double(rng() % 512));
      copy(q.v.narrow(0, at, 1), tq.v);
      copy(k.v.narrow(0, at, 1), tk.v);
      set(pos.v, at, tpos);
      Buf qg = copy_of(q.v, l), kg = copy_of(k.v, l);
      rotary_embedding(q.v, k.v, pos.v, cs, true);
      rotary_embedding(qg.v, kg.v, pos.v, cs, false);
      EXPECT_TRUE(same_bits(q.v.narrow(0, at, 1), q1.v));
      EXPECT_TRUE(same_bits(k.v.narrow(0, at, 1), k1.v));
      EXPECT_TRUE(same_bits(qg.v.narrow(0, at, 1), q1g.v));
      EXPECT_TRUE(same_bits(kg.v.narrow(0, at, 1), k1g.v));

      Buf ids = alloc({m}, DType::I32), emb = alloc({m, d}, DType::F32, l);
      for (int64_t t = 0; t < m; ++t) set(ids.v, t, double(rng() % vocab));
      set(ids.v, at, tid);
      embedding(emb.v, ids.v, table.v);
      EXPECT_TRUE(same_bits(emb.v.narrow(0, at, 1), e1.v));
      EXPECT_EQ(unwritten(emb.v), 0);
    }
  }
}

TEST(CpuOpsThreads, OneThreadAndManyThreadsGiveIdenticalBits) {
  // Every op runs on the same inputs under each thread count (the pool is resized once per count); all
  // outputs must match the single-thread ones byte for byte.
  ThreadsGuard guard;
  std::mt19937 rng(22);
  const int64_t m = 301, n = 1000;
  const int kThreadCounts[] = {1, 3, 16};

  struct Case {
    std::string name;
    std::function<std::vector<Buf>()> run;  // computes fresh outputs
  };
  std::vector<Case> cases;
  std::vector<Buf> keep;  // inputs, alive for the whole test
  Tensor cs = rope_cos_sin_table(1024, 64, 10000.0);
  for (DType dt : kFloatTypes) {
    Buf w = random({n}, dt, rng, 0.5, 1.5), w32 = random({n}, DType::F32, rng, 0.5, 1.5), b = random({n}, dt, rng);
    keep.insert(keep.end(), {w, w32, b});
    for (const RowOp& op : row_ops(w.v, w32.v, b.v)) {
      Buf x = alloc({m, n}, dt);
      for (int64_t r = 0; r < m; ++r) fill_row(x.v, r, int(rng() % 4), op.masks_ok, rng);
      const DType odt = op.out_i32 ? DType::I32 : dt;
      cases.push_back({op.name + " " + dtype_name(dt), [op, x, odt, m, n] {
                         Buf out = alloc(out_shape(op, m, n), odt);
                         op.run(out.v, x.v);
                         return std::vector<Buf>{out};
                       }});
    }
    // The ops outside the row-op list: fused residual, rotary, embedding, a sum over the leading dim
    // (many outputs, each reducing down a column).
    Buf x = random({m, n}, dt, rng), res0 = random({m, n}, dt, rng), q0 = random({m, 8, 64}, dt, rng);
    Buf k0 = random({m, 2, 64}, dt, rng), pos = alloc({m}, DType::I32), ids = alloc({m}, DType::I32);
    Buf table = random({500, 64}, dt, rng), cols = random({64, 2000}, dt, rng);
    for (int64_t t = 0; t < m; ++t) set(pos.v, t, double(rng() % 1024)), set(ids.v, t, double(rng() % 500));
    cases.push_back({std::string("rms_norm + residual ") + dtype_name(dt), [=] {
                       Buf res = copy_of(res0.v, Layout::Contiguous), out = alloc({m, n}, dt);
                       rms_norm(out.v, x.v, w.v, 1e-5f, res.v);
                       return std::vector<Buf>{out, res};
                     }});
    cases.push_back({std::string("rotary ") + dtype_name(dt), [=] {
                       Buf q = copy_of(q0.v, Layout::Contiguous), k = copy_of(k0.v, Layout::Contiguous);
                       Buf qn = copy_of(q0.v, Layout::Contiguous), kn = copy_of(k0.v, Layout::Contiguous);
                       rotary_embedding(q.v, k.v, pos.v, cs, false);
                       rotary_embedding(qn.v, kn.v, pos.v, cs, true);
                       return std::vector<Buf>{q, k, qn, kn};
                     }});
    cases.push_back({std::string("embedding ") + dtype_name(dt), [=] {
                       Buf emb = alloc({m, 64}, DType::F32), same = alloc({m, 64}, dt);
                       embedding(emb.v, ids.v, table.v);
                       embedding(same.v, ids.v, table.v);
                       return std::vector<Buf>{emb, same};
                     }});
    cases.push_back({std::string("column sum / mean ") + dtype_name(dt), [=] {
                       Buf s = alloc({2000}, DType::F32), mn = alloc({2000}, dt);
                       sum(s.v, cols.v, {0});
                       mean(mn.v, cols.v, {0});
                       return std::vector<Buf>{s, mn};
                     }});
  }
  cases.push_back({"rope_cos_sin_table", [] {
                     Tensor t = rope_cos_sin_table(4096, 128, 1e6);
                     return std::vector<Buf>{Buf{t, t.view()}};
                   }});

  std::vector<std::vector<std::vector<Buf>>> got;  // [thread count][case][output]
  for (int threads : kThreadCounts) {
    cpu::set_num_threads(threads);
    ASSERT_EQ(cpu::num_threads(), threads);
    got.emplace_back();
    for (const Case& c : cases) got.back().push_back(c.run());
  }
  for (size_t c = 0; c < cases.size(); ++c) {
    SCOPED_TRACE(cases[c].name);
    for (size_t o = 0; o < got[0][c].size(); ++o) {
      ASSERT_EQ(unwritten(got[0][c][o].v), 0) << "output " << o;
      for (size_t t = 1; t < got.size(); ++t)
        EXPECT_TRUE(same_bits(got[0][c][o].v, got[t][c][o].v)) << "output " << o << ", " << kThreadCounts[t] << " threads";
    }
  }
}

TEST(CpuOpsInPlace, OutAliasingXGivesTheSameBits) {
  std::mt19937 rng(23);
  const int64_t m = 7, n = 333;
  using Fn = std::function<void(const TensorView&, const TensorView&)>;
  for (DType dt : kFloatTypes) {
    Buf w = random({n}, dt, rng, 0.5, 1.5), b = random({n}, dt, rng);
    const std::pair<std::string, Fn> ops[] = {
        {"rms_norm", [&](const TensorView& o, const TensorView& x) { rms_norm(o, x, w.v, 1e-5f); }},
        {"layer_norm", [&](const TensorView& o, const TensorView& x) { layer_norm(o, x, w.v, b.v, 1e-5f); }},
        {"softmax", [](const TensorView& o, const TensorView& x) { softmax(o, x); }},
        {"log_softmax", [](const TensorView& o, const TensorView& x) { log_softmax(o, x); }},
    };
    for (const auto& [name, run] : ops)
      for (Layout l : kLayouts) {
        SCOPED_TRACE(name + " " + dtype_name(dt) + " " + layout_name(l));
        Buf x = random({m, n}, dt, rng, -5, 5, l), out = alloc({m, n}, dt);
        run(out.v, x.v);
        run(x.v, x.v);
        EXPECT_TRUE(same_bits(out.v, x.v));
      }
    // Fused add & norm writing the normalised row over x (the residual is updated in its own buffer).
    SCOPED_TRACE(std::string("rms_norm + residual ") + dtype_name(dt));
    Buf x = random({m, n}, dt, rng), res = random({m, n}, dt, rng), out = alloc({m, n}, dt);
    Buf res2 = copy_of(res.v, Layout::Contiguous);
    rms_norm(out.v, x.v, w.v, 1e-5f, res.v);
    rms_norm(x.v, x.v, w.v, 1e-5f, res2.v);
    EXPECT_TRUE(same_bits(out.v, x.v));
    EXPECT_TRUE(same_bits(res.v, res2.v));
  }
}

// ---- errors -------------------------------------------------------------------------------------------

TEST(CpuOpsErrors, BadArgumentsThrowNamingTheProblem) {
  Tensor x = Tensor::empty({4, 8}, DType::BF16), out = Tensor::empty({4, 8}, DType::BF16);
  Tensor w8 = Tensor::empty({8}, DType::BF16), w9 = Tensor::empty({9}, DType::BF16);
  std::memset(x.data(), 0, size_t(x.alloc_bytes()));
  expect_error([&] { rms_norm(out, x, w9, 1e-5f); }, "weight must be [8]");
  expect_error([&] { rms_norm(Tensor::empty({4, 8}, DType::F16), x, w8, 1e-5f); }, "out must be bf16 or f32");
  expect_error([&] { rms_norm(Tensor::empty({4, 7}, DType::BF16), x, w8, 1e-5f); }, "same shape");
  expect_error([&] { rms_norm(out, x, w8, 1e-5f, Tensor::empty({4, 8}, DType::F32).view()); }, "residual must be bf16");
  expect_error([&] { layer_norm(out, x, w9.view(), std::nullopt, 1e-5f); }, "weight must be [8]");
  expect_error([&] { softmax(out, Tensor::empty({4, 8}, DType::I32)); }, "must be f32, f16 or bf16");
  expect_error([&] { sum(Tensor::empty({4}, DType::F32), x, {5}); }, "dim 5 is out of range");
  expect_error([&] { argmax(Tensor::empty({4}, DType::F32), x); }, "out must be i32");
  expect_error([&] { silu_and_mul(Tensor::empty({4, 3}, DType::BF16), Tensor::empty({4, 7}, DType::BF16)); },
               "must be even");

  // Embedding ids are checked against the table and the bad position is named.
  Tensor table = Tensor::empty({10, 8}, DType::BF16), ids = Tensor::empty({5}, DType::I32);
  for (int t = 0; t < 5; ++t) ids.ptr<int32_t>()[t] = t == 3 ? 100 : t;
  expect_error([&] { embedding(Tensor::empty({5, 8}, DType::BF16), ids, table); }, "ids[3] = 100");
  ids.ptr<int32_t>()[3] = -1;
  expect_error([&] { embedding(Tensor::empty({5, 8}, DType::BF16), ids, table); }, "ids[3] = -1");

  // Rotary positions must lie inside the cos/sin table.
  Tensor cs = rope_cos_sin_table(16, 8, 10000.0);
  Tensor q = Tensor::empty({2, 2, 8}, DType::F16), pos = Tensor::empty({2}, DType::I32);
  pos.ptr<int32_t>()[0] = 3, pos.ptr<int32_t>()[1] = 16;
  expect_error([&] { rotary_embedding(q, TensorView{}, pos, cs, true); }, "positions[1] = 16");
  pos.ptr<int32_t>()[1] = 1;
  expect_error([&] { rotary_embedding(q, Tensor::empty({2, 2, 4}, DType::F16), pos, cs, true); }, "k must be");
  expect_error([&] { rotary_embedding(q, TensorView{}, pos, rope_cos_sin_table(16, 10, 1e4), true); }, "rot_dim");
  expect_error([&] { rotary_embedding(Tensor::empty({2, 16}, DType::F16), TensorView{}, pos, cs, true); },
               "q must be [T, H, D]");
  expect_error([&] { rotary_embedding(q, TensorView{}, Tensor::empty({3}, DType::I32), cs, true); },
               "positions must be i32[2]");
}

TEST(CpuOpsErrors, MoreBadArgumentsNameTheArgument) {
  Tensor x = Tensor::empty({4, 8}, DType::BF16), out = Tensor::empty({4, 8}, DType::BF16);
  std::memset(x.data(), 0, size_t(x.alloc_bytes()));
  Tensor w8 = Tensor::empty({8}, DType::BF16);
  expect_error([&] { rms_norm(out, x, w8, -1.0f); }, "eps must be >= 0");
  expect_error([&] { rms_norm(out, x, Tensor::empty({8}, DType::F16), 1e-5f); }, "weight must be bf16 or f32");
  expect_error([&] { layer_norm(out, x, std::nullopt, Tensor::empty({8}, DType::F16).view(), 1e-5f); },
               "bias must be bf16 or f32");
  expect_error([&] { log_softmax(Tensor::empty({4, 8}, DType::F16), x); }, "out must be bf16 or f32");
  expect_error([&] { sum(Tensor::empty({4}, DType::F32), x, {1, -1}); }, "appears twice");
  expect_error([&] { mean(Tensor::empty({8}, DType::F32), x, {1}); }, "out must have shape");
  expect_error([&] { sum(Tensor::empty({4, 1}, DType::F32), x, {1}); }, "out must have shape");
  expect_error([&] { argmax(Tensor::empty({8}, DType::I32), x); }, "leading shape");
  expect_error([&] { argmax(Tensor::empty({4, 1}, DType::I32), x); }, "leading shape");
  expect_error([&] { silu_and_mul(Tensor::empty({4, 8}, DType::BF16), x); }, "out must be");
  Tensor table = Tensor::empty({10, 8}, DType::BF16), ids = Tensor::empty({5}, DType::I32);
  expect_error([&] { embedding(Tensor::empty({5, 9}, DType::BF16), ids, table); }, "out must be [5, 8]");
  expect_error([&] { embedding(Tensor::empty({5, 8}, DType::BF16), Tensor::empty({5}, DType::F32), table); },
               "ids must be i32[T]");
}

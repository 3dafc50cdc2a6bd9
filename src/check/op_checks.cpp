// One adapter per op of include/bik/ops.h: what a row is, how problems are drawn, how the op is called
// (with per-call variations of layout and form), and the float64 reference with its tolerance.
//
// Tolerances are bounds, not guesses: the error of an element is measured relative to the magnitude its
// rounding errors are proportional to (Expected::scale), and the tolerance is the output rounding plus
// the worst-case growth of F32 rounding errors for a summation of that length in any order (n units of
// 2^-24). A wrong formula is off by orders of magnitude more; a reordered sum stays inside.
#include "check/op_checks.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "bik/ops.h"
#include "core/backend.h"

namespace bik::check::detail {

// ---- element helpers ----------------------------------------------------------------------------------

double load(DType t, const uint8_t* p, int64_t i) {
  switch (t) {
    case DType::F16: {
      f16 h;
      std::memcpy(&h, p + 2 * i, 2);
      return to_float(h);
    }
    case DType::BF16: {
      bf16 h;
      std::memcpy(&h, p + 2 * i, 2);
      return to_float(h);
    }
    case DType::I32: {
      int32_t v;
      std::memcpy(&v, p + 4 * i, 4);
      return v;
    }
    default: {
      float f;
      std::memcpy(&f, p + 4 * i, 4);
      return f;
    }
  }
}

void store(DType t, uint8_t* p, int64_t i, double v) {
  const float f = float(v);
  switch (t) {
    case DType::F16: {
      f16 h = to_f16(f);
      std::memcpy(p + 2 * i, &h, 2);
      break;
    }
    case DType::BF16: {
      bf16 h = to_bf16(f);
      std::memcpy(p + 2 * i, &h, 2);
      break;
    }
    case DType::I32: {
      int32_t x = int32_t(v);
      std::memcpy(p + 4 * i, &x, 4);
      break;
    }
    default: std::memcpy(p + 4 * i, &f, 4);
  }
}

double eps_of(DType t) {
  switch (t) {
    case DType::F16: return 0x1.0p-10;
    case DType::BF16: return 0x1.0p-7;
    case DType::I32: return 0;
    default: return 0x1.0p-23;
  }
}

double min_normal(DType t) {
  switch (t) {
    case DType::F16: return 0x1.0p-14;
    case DType::I32: return 1;
    default: return 0x1.0p-126;
  }
}

namespace {

constexpr double kU = 0x1.0p-24;  // unit roundoff of F32 accumulation
const std::vector<DType> kFloats = {DType::F32, DType::F16, DType::BF16};

std::string mix_name(DType in, DType out) {
  return in == out ? dtype_name(in) : std::string(dtype_name(in)) + "->" + dtype_name(out);
}

double huge_of(DType t) { return t == DType::F16 ? 6.0e4 : 3.0e38; }

// A row of `n` values of dtype t. Targets and ordinary neighbours are uniform in offset +- scale; wild
// rows are zeros, huge values, or random values salted with infinities and NaNs.
void fill_floats(Rng& rng, RowKind kind, DType t, int64_t n, double scale, std::vector<uint8_t>& out,
                 double offset = 0) {
  out.assign(size_t(n * dtype_size(t)), 0);
  uint8_t* p = out.data();
  if (kind != RowKind::Wild) {
    for (int64_t i = 0; i < n; ++i) store(t, p, i, offset + rng.symmetric() * scale);
    return;
  }
  const double inf = std::numeric_limits<double>::infinity(), nan = std::numeric_limits<double>::quiet_NaN();
  const int pattern = int(rng.below(5));
  for (int64_t i = 0; i < n; ++i) {
    double v = rng.symmetric() * scale;
    switch (pattern) {
      case 0: v = rng.chance(0.5) ? 0.0 : -0.0; break;
      case 1: v = rng.chance(0.5) ? huge_of(t) : -huge_of(t); break;
      case 2: if (rng.chance(0.3)) v = rng.chance(0.5) ? inf : -inf; break;
      case 3: if (rng.chance(0.3)) v = nan; break;
      default: {
        const double pick[] = {0.0, -0.0, huge_of(t), -huge_of(t), inf, -inf, nan, 1e-40, v};
        v = pick[rng.below(9)];
      }
    }
    store(t, p, i, v);
  }
}

void put_i32(std::vector<uint8_t>& out, int32_t v) {
  out.resize(4);
  std::memcpy(out.data(), &v, 4);
}
int32_t get_i32(const std::vector<uint8_t>& b) {
  int32_t v;
  std::memcpy(&v, b.data(), 4);
  return v;
}

// A host tensor filled with uniform values (rounded to its dtype), and the values as doubles.
Tensor random_tensor(Rng& rng, const Shape& shape, DType t, double scale, std::vector<double>& values) {
  Tensor h = Tensor::empty(shape, t);
  values.resize(size_t(h.numel()));
  auto* p = static_cast<uint8_t*>(h.data());
  for (int64_t i = 0; i < h.numel(); ++i) {
    store(t, p, i, rng.symmetric() * scale);
    values[size_t(i)] = load(t, p, i);
  }
  return h;
}
Tensor upload(const Tensor& host, Device d) { return d.is_cpu() ? host : host.to(d); }

// A copy of a 2-D host tensor [r, c] stored column-major, returned as its [r, c] (transposed) view.
Tensor transposed_copy(const Tensor& h, Device d, TensorView& view) {
  const int64_t r = h.size(-2), c = h.size(-1), lead = h.numel() / std::max<int64_t>(r * c, 1);
  const int64_t es = dtype_size(h.dtype());
  Shape ts = h.sizes();
  std::swap(ts[ts.size() - 1], ts[ts.size() - 2]);
  Tensor t = Tensor::empty(ts, h.dtype());
  const auto* src = static_cast<const uint8_t*>(h.data());
  auto* dst = static_cast<uint8_t*>(t.data());
  for (int64_t b = 0; b < lead; ++b)
    for (int64_t i = 0; i < r; ++i)
      for (int64_t j = 0; j < c; ++j)
        std::memcpy(dst + ((b * c + j) * r + i) * es, src + ((b * r + i) * c + j) * es, size_t(es));
  Tensor on = upload(t, d);
  view = on.view().transpose(-1, -2);
  return on;
}

// [M, inner...] -> the same view without its leading (row) dim, for the "alone" forms.
TensorView first_row(const TensorView& v) { return v.select(0, 0); }

// ---- mm / addmm / bmm -------------------------------------------------------------------------------------

enum class GemmMode { Mm, Addmm, Bmm };


class GemmCheck final : public OpCheck {
 public:
  GemmCheck(GemmMode mode, const Impls& impls) : mode_(mode), gemm_(impls.gemm) {}

  Problem draw(Rng& rng, const Context& ctx) override {
    // The first draws are shapes where common libraries are known to change their order with M (OpenBLAS
    // 0.3.21 on x86-64: K = 64, N = 64 from M = 4 on; K = N = 1000 from M = 16 on); later draws mix such
    // shapes with random odd ones.
    struct Shape2 {
      int64_t k, n;
    };
    static const std::vector<Shape2> curated = {{64, 64}, {1000, 1000}, {64, 7},   {4096, 32}, {128, 128},
                                                {1, 1},   {17, 300},    {512, 64}, {2048, 5}};
    in_ = rng.pick(kFloats);
    out_ = rng.chance(0.5) ? in_ : DType::F32;
    Shape2 s;
    if (draws_ < 2) {
      s = curated[size_t(draws_)];
      in_ = out_ = DType::F32;
    } else if (rng.chance(0.15)) {
      s = rng.pick(curated);
    } else {
      s.k = rng.chance(0.75) ? rng.range(1, 96) : rng.range(97, 700);
      s.n = rng.chance(0.75) ? rng.range(1, 48) : rng.range(49, 300);
    }
    ++draws_;
    k_ = s.k;
    n_ = s.n;
    groups_ = mode_ == GemmMode::Bmm ? rng.range(2, 4) : 1;
    shared_ = mode_ == GemmMode::Bmm && rng.chance(0.3);

    // Weights: [G, N, K] (one group when shared), stored both as [N, K] and as a [K, N] buffer viewed
    // transposed; each call picks one.
    const int64_t stored = shared_ ? 1 : groups_;
    Shape ws = mode_ == GemmMode::Bmm ? Shape{stored, n_, k_} : Shape{n_, k_};
    std::vector<double> wv;
    Tensor wh = random_tensor(rng, ws, in_, 1.0, wv);
    w_values_.resize(size_t(groups_ * n_ * k_));
    for (int64_t g = 0; g < groups_; ++g)
      std::copy_n(wv.begin() + (shared_ ? 0 : g * n_ * k_), n_ * k_, w_values_.begin() + g * n_ * k_);
    w_nk_ = upload(wh, ctx.device);
    w_nk_view_ = w_nk_.view();
    w_kn_ = transposed_copy(wh, ctx.device, w_kn_view_);
    if (shared_) {
      for (TensorView* v : {&w_nk_view_, &w_kn_view_}) {
        v->shape[0] = groups_;
        v->stride[0] = 0;
      }
    }
    bias_.reset();
    std::string bias_desc;
    if (mode_ == GemmMode::Addmm) {
      const DType bt = rng.chance(0.5) ? in_ : DType::F32;
      bias_ = upload(random_tensor(rng, {n_}, bt, 1.0, bias_values_), ctx.device);
      bias_desc = std::string(" bias=") + dtype_name(bt);
    }

    Problem p;
    p.dtypes = mix_name(in_, out_);
    p.shape = "K=" + std::to_string(k_) + " N=" + std::to_string(n_) + bias_desc +
              (groups_ > 1 ? " G=" + std::to_string(groups_) + (shared_ ? " shared-weight" : "") : "");
    p.groups = groups_;
    p.row_cost = double(k_ + n_) + double(k_) * double(n_) / 4;
    Operand a{"a", in_, {k_}, Role::In, 0, 0.15};
    // Any order of a K-term F32 sum is within K units of sum |a_k b_k|; MMA units may truncate, hence x2.
    Operand out{"out", out_, {n_}, Role::Out, eps_of(out_) + 2 * double(k_ + 2) * kU, 0.1};
    p.operands = {a, out};
    return p;
  }

  void fill_row(Rng& rng, RowKind kind, RowData& row) override { fill_floats(rng, kind, in_, k_, 1.0, row[0]); }

  void run(const std::vector<TensorView>& v, bool, Rng& rng) override {
    const TensorView& w = rng.chance(0.5) ? w_kn_view_ : w_nk_view_;
    const TensorView &a = v[0], &out = v[1];
    if (gemm_) {
      GemmArgs g;
      g.a = as3d(a);
      g.w = as3d(w);
      g.out = as3d(out);
      if (bias_) g.bias = bias_->view();
      g.batch = g.a.shape[0];
      g.m = g.a.shape[1];
      g.k = k_;
      g.n = n_;
      gemm_(g);
      return;
    }
    switch (mode_) {
      case GemmMode::Mm: mm(out, a, w); break;
      case GemmMode::Addmm: addmm(out, *bias_, a, w); break;
      case GemmMode::Bmm: bmm(out, a, w); break;
    }
  }

  void reference(const RowData& row, int64_t g, std::vector<Expected>& expected) override {
    std::vector<double> a(static_cast<size_t>(k_));
    for (int64_t k = 0; k < k_; ++k) a[size_t(k)] = load(in_, row[0].data(), k);
    Expected& e = expected[1];
    e.value.assign(size_t(n_), 0);
    e.scale.assign(size_t(n_), 0);
    for (int64_t n = 0; n < n_; ++n) {
      const double* w = &w_values_[size_t((g * n_ + n) * k_)];
      double s = 0, sc = 0;
      for (int64_t k = 0; k < k_; ++k) {
        const double p = a[size_t(k)] * w[k];
        s += p;
        sc += std::fabs(p);
      }
      if (bias_) {
        s += bias_values_[size_t(n)];
        sc += std::fabs(bias_values_[size_t(n)]);
      }
      e.value[size_t(n)] = s;
      e.scale[size_t(n)] = sc;
    }
  }

 private:
  GemmMode mode_;
  GemmFn gemm_;
  int draws_ = 0;
  DType in_ = DType::F32, out_ = DType::F32;
  int64_t k_ = 1, n_ = 1, groups_ = 1;
  bool shared_ = false;
  Tensor w_nk_, w_kn_;
  TensorView w_nk_view_, w_kn_view_;
  std::optional<Tensor> bias_;
  std::vector<double> w_values_, bias_values_;
};

// ---- rms_norm / rms_norm with residual / layer_norm -------------------------------------------------------

enum class NormKind { Rms, RmsResidual, Layer };

int64_t draw_row_len(Rng& rng) {
  const double r = rng.uniform();
  if (r < 0.7) return rng.range(1, 256);
  if (r < 0.9) return rng.range(257, 2048);
  return rng.pick(std::vector<int64_t>{4096, 5120, 8191, 8192});
}

class NormCheck final : public OpCheck {
 public:
  NormCheck(NormKind kind, const Impls& impls) : kind_(kind), rms_(impls.rms_norm) {}

  Problem draw(Rng& rng, const Context& ctx) override {
    x_ = rng.pick(kFloats);
    out_ = rng.chance(0.5) ? x_ : DType::F32;
    n_ = draw_row_len(rng);
    eps_ = float(rng.pick(std::vector<double>{1e-6, 1e-5, 1e-3, 0.0}));
    scale_ = rng.pick(std::vector<double>{1.0, 0.01, 30.0});
    offset_ = kind_ == NormKind::Layer && rng.chance(0.3) ? 3.0 * scale_ : 0.0;
    const DType wt = rng.chance(0.5) ? x_ : DType::F32;
    has_w_ = kind_ != NormKind::Layer || rng.chance(0.7);
    has_b_ = kind_ == NormKind::Layer && rng.chance(0.6);
    w_.reset();
    b_.reset();
    if (has_w_) w_ = upload(random_tensor(rng, {n_}, wt, 1.5, w_values_), ctx.device);
    if (has_b_) b_ = upload(random_tensor(rng, {n_}, wt, 1.0, b_values_), ctx.device);

    Problem p;
    p.dtypes = mix_name(x_, out_);
    p.shape = "n=" + std::to_string(n_) + " eps=" + std::to_string(eps_) + (has_w_ ? " w=" : "") +
              (has_w_ ? dtype_name(wt) : "") + (has_b_ ? " bias" : "");
    p.row_cost = 4.0 * double(n_);
    // Sums of n terms: within n units of the sum of magnitudes, whatever the order.
    const double tol = eps_of(out_) + double(n_ + 16) * kU;
    p.operands.push_back({"x", x_, {n_}, Role::In, 0, 0.1});
    if (kind_ == NormKind::RmsResidual) p.operands.push_back({"residual", x_, {n_}, Role::InOut, eps_of(x_), 0.1});
    p.operands.push_back({"out", out_, {n_}, Role::Out, tol, 0.1});
    return p;
  }

  void fill_row(Rng& rng, RowKind kind, RowData& row) override {
    fill_floats(rng, kind, x_, n_, scale_, row[0], offset_);
    if (kind_ == NormKind::RmsResidual) fill_floats(rng, kind, x_, n_, scale_, row[1]);
  }

  void run(const std::vector<TensorView>& v, bool alone, Rng& rng) override {
    std::vector<TensorView> u = v;
    if (alone && rng.chance(0.5))  // a single row may be passed as a 1-D tensor
      for (auto& t : u) t = first_row(t);
    const TensorView &x = u[0], &out = u.back();
    switch (kind_) {
      case NormKind::Rms:
      case NormKind::RmsResidual: {
        std::optional<TensorView> res;
        if (kind_ == NormKind::RmsResidual) res = u[1];
        if (rms_)
          rms_(out, x, w_->view(), eps_, res);
        else
          rms_norm(out, x, w_->view(), eps_, res);
        break;
      }
      case NormKind::Layer: {
        std::optional<TensorView> w, b;
        if (w_) w = w_->view();
        if (b_) b = b_->view();
        layer_norm(out, x, w, b, eps_);
        break;
      }
    }
  }

  void reference(const RowData& row, int64_t, std::vector<Expected>& expected) override {
    std::vector<double> s(static_cast<size_t>(n_));
    for (int64_t i = 0; i < n_; ++i) s[size_t(i)] = load(x_, row[0].data(), i);
    if (kind_ == NormKind::RmsResidual) {
      Expected& r = expected[1];
      r.value.resize(size_t(n_));
      r.scale.resize(size_t(n_));
      for (int64_t i = 0; i < n_; ++i) {
        // residual := round(x + residual) through F32, and the norm reads the rounded value.
        const double sum = double(round_to(x_, float(s[size_t(i)] + load(x_, row[1].data(), i))));
        s[size_t(i)] = r.value[size_t(i)] = sum;
        r.scale[size_t(i)] = std::fabs(sum);
      }
    }
    Expected& e = expected.back();
    e.value.resize(size_t(n_));
    e.scale.resize(size_t(n_));
    auto w = [&](int64_t i) { return has_w_ ? w_values_[size_t(i)] : 1.0; };
    if (kind_ == NormKind::Layer) {
      double mean = 0, mean_abs = 0;
      for (double x : s) mean += x, mean_abs += std::fabs(x);
      mean /= double(n_);
      mean_abs /= double(n_);
      double var = 0;
      for (double x : s) var += (x - mean) * (x - mean);
      var /= double(n_);
      const double rstd = 1.0 / std::sqrt(var + double(eps_));
      for (int64_t i = 0; i < n_; ++i) {
        const double d = s[size_t(i)] - mean, b = has_b_ ? b_values_[size_t(i)] : 0.0;
        e.value[size_t(i)] = d * rstd * w(i) + b;
        e.scale[size_t(i)] = (std::fabs(d) + mean_abs) * rstd * std::fabs(w(i)) + std::fabs(b);
      }
    } else {
      double ss = 0;
      for (double x : s) ss += x * x;
      const double rstd = 1.0 / std::sqrt(ss / double(n_) + double(eps_));
      for (int64_t i = 0; i < n_; ++i) {
        e.value[size_t(i)] = s[size_t(i)] * rstd * w(i);
        e.scale[size_t(i)] = std::fabs(e.value[size_t(i)]);
      }
    }
  }

 private:
  NormKind kind_;
  std::function<void(const TensorView&, const TensorView&, const TensorView&, float,
                     const std::optional<TensorView>&)>
      rms_;
  DType x_ = DType::F32, out_ = DType::F32;
  int64_t n_ = 1;
  float eps_ = 0;
  double scale_ = 1, offset_ = 0;
  bool has_w_ = true, has_b_ = false;
  std::optional<Tensor> w_, b_;
  std::vector<double> w_values_, b_values_;
};

// ---- softmax / log_softmax --------------------------------------------------------------------------------

class SoftmaxCheck final : public OpCheck {
 public:
  explicit SoftmaxCheck(bool log) : log_(log) {}

  Problem draw(Rng& rng, const Context&) override {
    x_ = rng.pick(kFloats);
    out_ = rng.chance(0.5) ? x_ : DType::F32;
    n_ = rng.chance(0.05) ? rng.pick(std::vector<int64_t>{32000, 50257}) : draw_row_len(rng);
    scale_ = rng.pick(std::vector<double>{1.0, 4.0, 20.0});
    Problem p;
    p.dtypes = mix_name(x_, out_);
    p.shape = "n=" + std::to_string(n_) + " range=" + std::to_string(int(scale_));
    p.row_cost = 6.0 * double(n_);
    p.operands = {{"x", x_, {n_}, Role::In, 0, 0.1},
                  {"out", out_, {n_}, Role::Out, eps_of(out_) + double(n_ + 16) * kU, 0.1}};
    return p;
  }

  void fill_row(Rng& rng, RowKind kind, RowData& row) override { fill_floats(rng, kind, x_, n_, scale_, row[0]); }

  void run(const std::vector<TensorView>& v, bool alone, Rng& rng) override {
    const bool one = alone && rng.chance(0.5);
    const TensorView x = one ? first_row(v[0]) : v[0], out = one ? first_row(v[1]) : v[1];
    if (log_)
      log_softmax(out, x);
    else
      softmax(out, x);
  }

  void reference(const RowData& row, int64_t, std::vector<Expected>& expected) override {
    std::vector<double> x(static_cast<size_t>(n_));
    double max = -std::numeric_limits<double>::infinity();
    for (int64_t i = 0; i < n_; ++i) max = std::max(max, x[size_t(i)] = load(x_, row[0].data(), i));
    double sum = 0;
    for (double v : x) sum += std::exp(v - max);
    const double log_sum = std::log(sum);
    Expected& e = expected[1];
    e.value.resize(size_t(n_));
    e.scale.resize(size_t(n_));
    for (int64_t i = 0; i < n_; ++i) {
      const double d = x[size_t(i)] - max;
      if (log_) {
        e.value[size_t(i)] = d - log_sum;
        e.scale[size_t(i)] = std::fabs(d) + std::fabs(log_sum) + 1.0;
      } else {
        // exp of a rounded argument: the relative error grows with |x - max|.
        e.value[size_t(i)] = std::exp(d) / sum;
        e.scale[size_t(i)] = e.value[size_t(i)] * (1.0 + std::fabs(d));
      }
    }
  }

 private:
  bool log_;
  DType x_ = DType::F32, out_ = DType::F32;
  int64_t n_ = 1;
  double scale_ = 1;
};

// ---- sum / mean (the row is the kept index; the reduced dims are its inner shape) --------------------------

class ReduceCheck final : public OpCheck {
 public:
  explicit ReduceCheck(bool mean) : mean_(mean) {}

  Problem draw(Rng& rng, const Context&) override {
    x_ = rng.pick(kFloats);
    out_ = rng.chance(0.5) ? x_ : DType::F32;
    const double r = rng.uniform();
    if (r < 0.6)
      inner_ = {draw_row_len(rng)};
    else if (r < 0.9)
      inner_ = {rng.range(1, 40), rng.range(1, 70)};
    else
      inner_ = {rng.range(1, 9), rng.range(1, 12), rng.range(1, 20)};
    len_ = 1;
    for (int64_t d : inner_) len_ *= d;
    Problem p;
    p.dtypes = mix_name(x_, out_);
    p.shape = "reduced=[";
    for (size_t i = 0; i < inner_.size(); ++i) {
      if (i) p.shape += ",";
      p.shape += std::to_string(inner_[i]);
    }
    p.shape += "]";
    p.row_cost = 2.0 * double(len_);
    p.operands = {{"x", x_, inner_, Role::In, 0, 0.2},
                  {"out", out_, {}, Role::Out, eps_of(out_) + double(len_ + 16) * kU, 0}};
    return p;
  }

  void fill_row(Rng& rng, RowKind kind, RowData& row) override { fill_floats(rng, kind, x_, len_, 1.0, row[0]); }

  void run(const std::vector<TensorView>& v, bool alone, Rng& rng) override {
    const TensorView &x = v[0], &out = v[1];
    const int nd = int(inner_.size());
    const bool keepdim = rng.chance(0.3);
    auto call = [&](const TensorView& o, const TensorView& xi, const std::vector<int>& dims, bool keep) {
      if (mean_)
        mean(o, xi, dims, keep);
      else
        sum(o, xi, dims, keep);
    };
    // A view of `o` with size-1 dims inserted where the reduced dims were (keepdim's output shape).
    auto keep_view = [&](const TensorView& o, int rows_at) {
      TensorView k = o;
      const bool has_rows = o.ndim == 1;
      k.ndim = nd + (has_rows ? 1 : 0);
      for (int d = 0; d < k.ndim; ++d) {
        const bool is_row = has_rows && d == rows_at;
        k.shape[d] = is_row ? o.shape[0] : 1;
        k.stride[d] = is_row ? o.stride[0] : 1;
      }
      return k;
    };
    if (alone && rng.chance(0.5)) {
      // The single row reduced as a whole tensor: every dim reduced, given as {} or listed.
      const TensorView x1 = first_row(x), o1 = first_row(out);
      std::vector<int> dims;
      if (rng.chance(0.5))
        for (int d = 0; d < nd; ++d) dims.push_back(rng.chance(0.5) ? d : d - nd);
      call(keepdim ? keep_view(o1, -1) : o1, x1, dims, keepdim);
      return;
    }
    std::vector<int> dims;
    if (rng.chance(0.5)) {
      // [M, inner...], reducing dims 1..nd.
      for (int d = 1; d <= nd; ++d) dims.push_back(rng.chance(0.5) ? d : d - (nd + 1));
      call(keepdim ? keep_view(out, 0) : out, x, dims, keepdim);
    } else {
      // [inner..., M]: the kept dim last, the reduced dims in their original order.
      TensorView xt = x;
      for (int d = 0; d < nd; ++d) {
        xt.shape[d] = x.shape[d + 1];
        xt.stride[d] = x.stride[d + 1];
      }
      xt.shape[nd] = x.shape[0];
      xt.stride[nd] = x.stride[0];
      for (int d = 0; d < nd; ++d) dims.push_back(rng.chance(0.5) ? d : d - (nd + 1));
      call(keepdim ? keep_view(out, nd) : out, xt, dims, keepdim);
    }
  }

  void reference(const RowData& row, int64_t, std::vector<Expected>& expected) override {
    double s = 0, sc = 0;
    for (int64_t i = 0; i < len_; ++i) {
      const double v = load(x_, row[0].data(), i);
      s += v;
      sc += std::fabs(v);
    }
    if (mean_) s /= double(len_), sc /= double(len_);
    expected[1].value = {s};
    expected[1].scale = {sc};
  }

 private:
  bool mean_;
  DType x_ = DType::F32, out_ = DType::F32;
  Shape inner_;
  int64_t len_ = 1;
};

// ---- argmax ----------------------------------------------------------------------------------------------

class ArgmaxCheck final : public OpCheck {
 public:
  Problem draw(Rng& rng, const Context&) override {
    x_ = rng.pick(kFloats);
    n_ = rng.chance(0.05) ? 32000 : draw_row_len(rng);
    ties_ = rng.chance(0.4);
    Problem p;
    p.dtypes = mix_name(x_, DType::I32);
    p.shape = "n=" + std::to_string(n_) + (ties_ ? " ties" : "");
    p.row_cost = 2.0 * double(n_);
    p.operands = {{"x", x_, {n_}, Role::In, 0, 0.1}, {"out", DType::I32, {}, Role::Out, 0, 0}};
    return p;
  }

  void fill_row(Rng& rng, RowKind kind, RowData& row) override {
    if (kind == RowKind::Wild || !ties_) return fill_floats(rng, kind, x_, n_, 1.0, row[0]);
    // Few distinct values (including both zeros): ties everywhere, the first index must win.
    static const double values[] = {-1.0, -0.0, 0.0, 0.5, 1.0, 2.0};
    row[0].assign(size_t(n_ * dtype_size(x_)), 0);
    for (int64_t i = 0; i < n_; ++i) store(x_, row[0].data(), i, values[rng.below(6)]);
  }

  void run(const std::vector<TensorView>& v, bool alone, Rng& rng) override {
    if (alone && rng.chance(0.5))
      argmax(first_row(v[1]), first_row(v[0]));
    else
      argmax(v[1], v[0]);
  }

  void reference(const RowData& row, int64_t, std::vector<Expected>& expected) override {
    int64_t best = 0;
    double bv = load(x_, row[0].data(), 0);
    for (int64_t i = 1; i < n_ && bv == bv; ++i) {
      const double v = load(x_, row[0].data(), i);
      if (v != v || v > bv) best = i, bv = v;
    }
    expected[1].value = {double(best)};
    expected[1].scale = {1.0};
  }

 private:
  DType x_ = DType::F32;
  int64_t n_ = 1;
  bool ties_ = false;
};

// ---- silu_and_mul ------------------------------------------------------------------------------------------

class SiluAndMulCheck final : public OpCheck {
 public:
  Problem draw(Rng& rng, const Context&) override {
    x_ = rng.pick(kFloats);
    out_ = rng.chance(0.5) ? x_ : DType::F32;
    d_ = rng.chance(0.05) ? rng.pick(std::vector<int64_t>{11008, 14336}) : draw_row_len(rng);
    Problem p;
    p.dtypes = mix_name(x_, out_);
    p.shape = "d=" + std::to_string(d_);
    p.row_cost = 6.0 * double(d_);
    p.operands = {{"x", x_, {2 * d_}, Role::In, 0, 0.1},
                  {"out", out_, {d_}, Role::Out, eps_of(out_) + 16 * kU, 0.1}};
    return p;
  }

  void fill_row(Rng& rng, RowKind kind, RowData& row) override {
    fill_floats(rng, kind, x_, 2 * d_, 8.0, row[0]);
  }

  void run(const std::vector<TensorView>& v, bool alone, Rng& rng) override {
    if (alone && rng.chance(0.5))
      silu_and_mul(first_row(v[1]), first_row(v[0]));
    else
      silu_and_mul(v[1], v[0]);
  }

  void reference(const RowData& row, int64_t, std::vector<Expected>& expected) override {
    Expected& e = expected[1];
    e.value.resize(size_t(d_));
    e.scale.resize(size_t(d_));
    for (int64_t i = 0; i < d_; ++i) {
      const double g = load(x_, row[0].data(), i), u = load(x_, row[0].data(), d_ + i);
      e.value[size_t(i)] = g / (1.0 + std::exp(-g)) * u;
      e.scale[size_t(i)] = std::fabs(e.value[size_t(i)]);
    }
  }

 private:
  DType x_ = DType::F32, out_ = DType::F32;
  int64_t d_ = 1;
};

// ---- sum_partials (the tensor-parallel K-chunk tree; the row is an output row) -------------------------------

class SumPartialsCheck final : public OpCheck {
 public:
  Problem draw(Rng& rng, const Context& ctx) override {
    out_ = rng.pick(kFloats);
    p_ = rng.pick(std::vector<int64_t>{1, 2, 4, 8, 8, 16});
    n_ = draw_row_len(rng);
    has_bias_ = rng.chance(0.5);
    bias_.reset();
    const DType bt = rng.chance(0.5) ? DType::F32 : out_;
    if (has_bias_) bias_ = upload(random_tensor(rng, {n_}, bt, 2.0, bias_values_), ctx.device);
    Problem p;
    p.dtypes = mix_name(DType::F32, out_);
    p.shape = "P=" + std::to_string(p_) + " n=" + std::to_string(n_) + (has_bias_ ? " bias=" : "") +
              (has_bias_ ? dtype_name(bt) : "");
    p.row_cost = double(p_ + 1) * double(n_);
    // log2(P) + 1 F32 additions, then one rounding to the output's dtype.
    const double tol = eps_of(out_) + double(std::bit_width(uint64_t(p_)) + 1) * kU;
    p.operands = {{"partials", DType::F32, {p_, n_}, Role::In, 0, 0.1},
                  {"out", out_, {n_}, Role::Out, tol, 0.1}};
    return p;
  }

  void fill_row(Rng& rng, RowKind kind, RowData& row) override {
    fill_floats(rng, kind, DType::F32, p_ * n_, 4.0, row[0]);
  }

  void run(const std::vector<TensorView>& v, bool, Rng&) override {
    // The operand is [M, P, N]; the op takes [P, M, N] (any strides).
    std::optional<TensorView> bias;
    if (bias_) bias = bias_->view();
    sum_partials(v[1], v[0].transpose(0, 1), bias);
  }

  void reference(const RowData& row, int64_t, std::vector<Expected>& expected) override {
    Expected& e = expected[1];
    e.value.assign(size_t(n_), 0.0);
    e.scale.assign(size_t(n_), 0.0);
    for (int64_t i = 0; i < n_; ++i) {
      for (int64_t j = 0; j < p_; ++j) {
        const double x = load(DType::F32, row[0].data(), j * n_ + i);
        e.value[size_t(i)] += x;
        e.scale[size_t(i)] += std::fabs(x);
      }
      if (has_bias_) {
        e.value[size_t(i)] += bias_values_[size_t(i)];
        e.scale[size_t(i)] += std::fabs(bias_values_[size_t(i)]);
      }
    }
  }

 private:
  DType out_ = DType::F32;
  int64_t p_ = 1, n_ = 1;
  bool has_bias_ = false;
  std::optional<Tensor> bias_;
  std::vector<double> bias_values_;
};

// ---- rotary_embedding (in place on q and k; the row is a token) ------------------------------------------

class RotaryCheck final : public OpCheck {
 public:
  Problem draw(Rng& rng, const Context& ctx) override {
    dt_ = rng.pick(kFloats);
    d_ = rng.chance(0.5) ? rng.pick(std::vector<int64_t>{64, 128, 80, 96}) : rng.range(2, 160);
    rot_ = d_ % 2 == 0 && rng.chance(0.7) ? d_ : 2 * rng.range(1, d_ / 2);
    hq_ = rng.range(1, 8);
    hk_ = rng.chance(0.2) ? 0 : rng.range(1, 4);
    neox_ = rng.chance(0.5);
    positions_ = rng.chance(0.2) ? rng.range(1, 16) : rng.range(17, 8192);
    const double theta = rng.pick(std::vector<double>{10000.0, 500000.0, 1e6});
    Tensor table = rope_cos_sin_table(positions_, rot_, theta);
    table_values_.assign(table.ptr<float>(), table.ptr<float>() + table.numel());
    table_ = upload(table, ctx.device);
    Problem p;
    p.dtypes = dtype_name(dt_);
    p.shape = "Hq=" + std::to_string(hq_) + " Hk=" + std::to_string(hk_) + " D=" + std::to_string(d_) +
              " rot=" + std::to_string(rot_) + (neox_ ? " neox" : " gptj") + " P=" + std::to_string(positions_);
    p.row_cost = 3.0 * double((hq_ + hk_) * d_);
    const double tol = eps_of(dt_) + 4 * kU;
    p.operands.push_back({"q", dt_, {hq_, d_}, Role::InOut, tol, 0});
    if (hk_) p.operands.push_back({"k", dt_, {hk_, d_}, Role::InOut, tol, 0});
    p.operands.push_back({"positions", DType::I32, {}, Role::In, 0, 0});
    return p;
  }

  void fill_row(Rng& rng, RowKind kind, RowData& row) override {
    fill_floats(rng, kind, dt_, hq_ * d_, 2.0, row[0]);
    if (hk_) fill_floats(rng, kind, dt_, hk_ * d_, 2.0, row[1]);
    const int64_t pos = kind == RowKind::Wild ? (rng.chance(0.5) ? 0 : positions_ - 1) : rng.range(0, positions_ - 1);
    put_i32(row.back(), int32_t(pos));
  }

  void run(const std::vector<TensorView>& v, bool, Rng&) override {
    const TensorView k = hk_ ? v[1] : TensorView();
    rotary_embedding(v[0], k, v.back(), table_.view(), neox_);
  }

  void reference(const RowData& row, int64_t, std::vector<Expected>& expected) override {
    const int64_t pos = get_i32(row.back()), half = rot_ / 2;
    const float* cs = &table_values_[size_t(pos * rot_)];
    for (int i = 0; i < (hk_ ? 2 : 1); ++i) {
      const int64_t heads = i == 0 ? hq_ : hk_;
      Expected& e = expected[size_t(i)];
      e.value.resize(size_t(heads * d_));
      e.scale.resize(size_t(heads * d_));
      for (int64_t h = 0; h < heads; ++h) {
        const uint8_t* x = row[size_t(i)].data();
        const int64_t base = h * d_;
        for (int64_t j = 0; j < d_; ++j) {
          e.value[size_t(base + j)] = load(dt_, x, base + j);
          e.scale[size_t(base + j)] = std::fabs(e.value[size_t(base + j)]);
        }
        for (int64_t j = 0; j < half; ++j) {
          const int64_t i1 = neox_ ? j : 2 * j, i2 = neox_ ? j + half : 2 * j + 1;
          const double x1 = load(dt_, x, base + i1), x2 = load(dt_, x, base + i2);
          const double c = cs[j], s = cs[half + j];
          e.value[size_t(base + i1)] = x1 * c - x2 * s;
          e.value[size_t(base + i2)] = x2 * c + x1 * s;
          const double sc = std::fabs(x1 * c) + std::fabs(x2 * s) + std::fabs(x2 * c) + std::fabs(x1 * s);
          e.scale[size_t(base + i1)] = e.scale[size_t(base + i2)] = sc;
        }
      }
    }
  }

 private:
  DType dt_ = DType::F32;
  int64_t d_ = 2, rot_ = 2, hq_ = 1, hk_ = 0, positions_ = 1;
  bool neox_ = true;
  Tensor table_;
  std::vector<float> table_values_;
};

// ---- embedding -----------------------------------------------------------------------------------------------

class EmbeddingCheck final : public OpCheck {
 public:
  Problem draw(Rng& rng, const Context& ctx) override {
    dt_ = rng.pick(kFloats);
    out_ = rng.chance(0.5) ? dt_ : DType::F32;
    dim_ = rng.chance(0.7) ? rng.range(1, 300) : rng.range(301, 2048);
    vocab_ = std::max<int64_t>(1, std::min<int64_t>(rng.range(1, 50000), (1 << 21) / dim_));
    Tensor table = random_tensor(rng, {vocab_, dim_}, dt_, 1.0, values_);
    table_ = upload(table, ctx.device);
    table_t_ = transposed_copy(table, ctx.device, table_t_view_);
    Problem p;
    p.dtypes = mix_name(dt_, out_);
    p.shape = "V=" + std::to_string(vocab_) + " D=" + std::to_string(dim_);
    p.row_cost = 2.0 * double(dim_);
    p.operands = {{"ids", DType::I32, {}, Role::In, 0, 0}, {"out", out_, {dim_}, Role::Out, 0, 0.1}};
    return p;
  }

  void fill_row(Rng& rng, RowKind kind, RowData& row) override {
    const int64_t id = kind == RowKind::Wild ? (rng.chance(0.5) ? 0 : vocab_ - 1) : rng.range(0, vocab_ - 1);
    put_i32(row[0], int32_t(id));
  }

  void run(const std::vector<TensorView>& v, bool, Rng& rng) override {
    const TensorView table = rng.chance(0.3) ? table_t_view_ : table_.view();
    if (rng.chance(0.5)) {
      embedding(v[1], v[0], table);
      return;
    }
    // The engine's form: the ids' values also given on the host (checked there, no device wait).
    Tensor host = Tensor::empty(v[0].sizes(), DType::I32);
    copy(host, v[0]);
    embedding(v[1], v[0], table, HostInts(host.ptr<int32_t>(), size_t(host.numel())));
  }

  void reference(const RowData& row, int64_t, std::vector<Expected>& expected) override {
    const int64_t id = get_i32(row[0]);
    Expected& e = expected[1];
    e.value.assign(values_.begin() + id * dim_, values_.begin() + (id + 1) * dim_);
    e.scale.resize(size_t(dim_));
    for (int64_t i = 0; i < dim_; ++i) e.scale[size_t(i)] = std::fabs(e.value[size_t(i)]);
  }

 private:
  DType dt_ = DType::F32, out_ = DType::F32;
  int64_t dim_ = 1, vocab_ = 1;
  Tensor table_, table_t_;
  TensorView table_t_view_;
  std::vector<double> values_;
};

template <class T, class... A>
std::function<std::unique_ptr<OpCheck>(const Impls&)> plain(A... a) {
  return [=](const Impls&) { return std::unique_ptr<OpCheck>(new T(a...)); };
}

}  // namespace

const std::vector<OpEntry>& op_table() {
  static const std::vector<OpEntry> table = {
      {"mm", [](const Impls& i) { return std::unique_ptr<OpCheck>(new GemmCheck(GemmMode::Mm, i)); }},
      {"addmm", [](const Impls& i) { return std::unique_ptr<OpCheck>(new GemmCheck(GemmMode::Addmm, i)); }},
      {"bmm", [](const Impls& i) { return std::unique_ptr<OpCheck>(new GemmCheck(GemmMode::Bmm, i)); }},
      {"rms_norm", [](const Impls& i) { return std::unique_ptr<OpCheck>(new NormCheck(NormKind::Rms, i)); }},
      {"rms_norm_residual",
       [](const Impls& i) { return std::unique_ptr<OpCheck>(new NormCheck(NormKind::RmsResidual, i)); }},
      {"layer_norm", [](const Impls& i) { return std::unique_ptr<OpCheck>(new NormCheck(NormKind::Layer, i)); }},
      {"softmax", plain<SoftmaxCheck>(false)},
      {"log_softmax", plain<SoftmaxCheck>(true)},
      {"sum", plain<ReduceCheck>(false)},
      {"mean", plain<ReduceCheck>(true)},
      {"argmax", plain<ArgmaxCheck>()},
      {"silu_and_mul", plain<SiluAndMulCheck>()},
      {"sum_partials", plain<SumPartialsCheck>()},
      {"rotary_embedding", plain<RotaryCheck>()},
      {"embedding", plain<EmbeddingCheck>()},
  };
  return table;
}

}  // namespace bik::check::detail

// CUDA memory-bound ops and sampling: batch invariance (a row alone vs the same row at random positions
// in batches of many sizes, with random neighbours, padded, misaligned and strided layouts), run-to-run
// repeats, accuracy against float64, poisoned outputs, untouched padding, and a negative control that
// the same procedure must catch.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "bik/device.h"
#include "bik/ops.h"
#include "bik/sampling.h"
#include "bik/tensor.h"
#include "gpu_env.h"
#include "test_util.h"
#include "greedy_top_case.h"
#include "plain_draw_case.h"
#if BIK_WITH_CUDA
#include "cuda/reduce_variants.h"
#endif

namespace bik {
namespace {

enum class Role { In, Out, InOut };

// One tensor with one slice of `width` elements per row.
struct Buf {
  std::string name;
  DType dtype;
  int64_t width;
  Role role;
  double tol = 0;  // outputs: largest norm-wise relative error vs float64 (0: exact)
  // Inputs: the row's values for a key (as doubles; rounded to dtype by the harness).
  std::function<void(uint64_t key, std::vector<double>& row)> gen;
};

using Rows = std::vector<std::vector<double>>;  // per buffer, one row's values as stored

struct OpSpec {
  std::string name;
  std::vector<Buf> bufs;
  // views: one per buffer, [M, width] with any strides, on the GPU; keys: the key of each row.
  std::function<void(const std::vector<TensorView>& views, const std::vector<uint64_t>& keys)> run;
  // float64 expected values of the output buffers of one row (entries of input buffers ignored).
  std::function<void(const Rows& in, Rows& out, uint64_t key)> ref;
  int64_t max_rows = 4096;
};

struct Report {
  int64_t cases = 0, diffs = 0, padding = 0, run_to_run = 0;
  double max_err = 0;
  bool accurate = true;
};

// Layouts of a batch: element offset of the view from the allocation (1 breaks 16-byte alignment),
// padding added to each row, stride between a row's elements.
struct Layout {
  int64_t offset, pad, es;
};
const Layout kLayouts[] = {{0, 0, 1}, {1, 3, 1}, {0, 1, 2}};

std::vector<double> gen_row(const Buf& b, uint64_t key) {
  std::vector<double> v(static_cast<size_t>(b.width));
  b.gen(key, v);
  for (double& x : v) x = b.dtype == DType::I32 ? x : double(round_to(b.dtype, float(x)));
  return v;
}

using test::get;
using test::put;

struct Batch {
  // per output/inout buffer: each row's bytes
  std::vector<std::vector<std::vector<uint8_t>>> rows;
  int64_t padding_violations = 0;
};

Batch run_batch(const OpSpec& op, const std::vector<uint64_t>& keys, const Layout& lay, std::mt19937_64& rng,
                std::map<uint64_t, std::vector<std::vector<double>>>& cache) {
  const int64_t m = int64_t(keys.size());
  std::vector<Tensor> dev;
  std::vector<std::vector<uint8_t>> host;
  std::vector<TensorView> views;
  std::vector<int64_t> row_stride, es;
  for (size_t b = 0; b < op.bufs.size(); ++b) {
    const Buf& buf = op.bufs[b];
    const int64_t e = buf.width == 1 ? 1 : lay.es, rs = buf.width * e + lay.pad, sz = dtype_size(buf.dtype);
    const int64_t elems = lay.offset + m * rs + 1;
    std::vector<uint8_t> h(static_cast<size_t>(elems * sz));
    if (buf.role == Role::Out) {
      std::fill(h.begin(), h.end(), 0xFF);  // poison: NaN in every float dtype, -1 as i32
    } else {
      for (auto& x : h) x = uint8_t(rng());  // junk in the padding, never read
      for (int64_t r = 0; r < m; ++r) {
        auto& rows = cache[keys[size_t(r)]];
        if (rows.empty()) rows.resize(op.bufs.size());
        if (rows[b].empty()) rows[b] = gen_row(buf, keys[size_t(r)]);
        for (int64_t j = 0; j < buf.width; ++j)
          put(h.data() + (lay.offset + r * rs + j * e) * sz, buf.dtype, rows[b][size_t(j)]);
      }
    }
    Tensor t = Tensor::empty({elems}, buf.dtype, Device::cuda(0));
    memcpy_bytes(t.data(), t.device(), h.data(), Device::cpu(), int64_t(h.size()));
    views.push_back(TensorView(static_cast<uint8_t*>(t.data()) + lay.offset * sz, buf.dtype, {m, buf.width}, {rs, e},
                               Device::cuda(0)));
    dev.push_back(t);
    host.push_back(std::move(h));
    row_stride.push_back(rs);
    es.push_back(e);
  }
  op.run(views, keys);
  synchronize(Device::cuda(0));
  Batch out;
  for (size_t b = 0; b < op.bufs.size(); ++b) {
    const Buf& buf = op.bufs[b];
    if (buf.role == Role::In) continue;
    const int64_t sz = dtype_size(buf.dtype);
    std::vector<uint8_t> got(host[b].size());
    memcpy_bytes(got.data(), Device::cpu(), dev[b].data(), dev[b].device(), int64_t(got.size()));
    std::vector<uint8_t> is_elem(got.size(), 0);
    std::vector<std::vector<uint8_t>> rows(static_cast<size_t>(m));
    for (int64_t r = 0; r < m; ++r)
      for (int64_t j = 0; j < buf.width; ++j) {
        const int64_t at = (lay.offset + r * row_stride[b] + j * es[b]) * sz;
        for (int64_t k = 0; k < sz; ++k) {
          rows[size_t(r)].push_back(got[size_t(at + k)]);
          is_elem[size_t(at + k)] = 1;
        }
      }
    for (size_t i = 0; i < got.size(); ++i)
      if (!is_elem[i] && got[i] != host[b][i]) ++out.padding_violations;
    out.rows.push_back(std::move(rows));
  }
  return out;
}

// Norm-wise relative error of one output row against float64; exact comparison when tol == 0.
double row_error(const Buf& buf, const std::vector<uint8_t>& bytes, const std::vector<double>& want) {
  const int64_t sz = dtype_size(buf.dtype);
  double num = 0, den = 0;
  for (int64_t j = 0; j < buf.width; ++j) {
    const double g = get(bytes.data() + j * sz, buf.dtype), w = want[size_t(j)];
    if (std::isnan(g) != std::isnan(w)) return INFINITY;
    if (std::isnan(g)) continue;
    // An infinity (a masked logit's log_softmax) must be met by the same infinity; it adds no error.
    if (std::isinf(g) || std::isinf(w)) {
      if (g != w) return INFINITY;
      continue;
    }
    if (buf.tol == 0) {
      if (g != w) return INFINITY;
      continue;
    }
    num += (g - w) * (g - w);
    den += w * w;
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

Report check_op(const OpSpec& op, bool verbose = true) {
  Report rep;
  std::mt19937_64 rng(12345);
  std::map<uint64_t, std::vector<std::vector<double>>> cache;
  const std::vector<uint64_t> targets = {1, 2, 3};
  // Alone: each target in a batch of one, contiguous and aligned.
  std::vector<std::vector<std::vector<uint8_t>>> alone;  // [target][out buffer] bytes
  for (uint64_t key : targets) {
    Batch b = run_batch(op, {key}, kLayouts[0], rng, cache);
    rep.padding += b.padding_violations;
    std::vector<std::vector<uint8_t>> per;
    for (auto& rows : b.rows) per.push_back(rows[0]);
    alone.push_back(per);
    // Accuracy against float64.
    Rows in(op.bufs.size()), want(op.bufs.size());
    for (size_t i = 0; i < op.bufs.size(); ++i) {
      if (op.bufs[i].role != Role::Out) in[i] = cache[key][i];
      want[i].assign(size_t(op.bufs[i].width), 0.0);
    }
    op.ref(in, want, key);
    size_t o = 0;
    for (size_t i = 0; i < op.bufs.size(); ++i) {
      if (op.bufs[i].role == Role::In) continue;
      const double err = row_error(op.bufs[i], per[o++], want[i]);
      const double tol = op.bufs[i].tol;
      if (tol > 0) rep.max_err = std::max(rep.max_err, err);
      if (!(err <= tol)) {
        rep.accurate = false;
        std::printf("  %s: target %llu, %s: error %.3g > tolerance %.3g\n", op.name.c_str(), (unsigned long long)key,
                    op.bufs[i].name.c_str(), err, tol);
      }
    }
  }
  // Batches: targets at random positions among neighbours drawn from a pool.
  std::vector<int64_t> sizes = {1, 2, 3, 4, 5, 7, 8, 13, 16, 17, 31, 32, 33, 64, 100, 257, 1000, 4096};
  int64_t width_sum = 0;
  for (const Buf& b : op.bufs) width_sum += b.width;
  const int64_t cap = std::min<int64_t>(op.max_rows, std::max<int64_t>(8, (int64_t(1) << 24) / width_sum));
  int li = 0;
  std::vector<uint64_t> last_keys;
  Layout last_layout{};
  for (int64_t m : sizes) {
    if (m > cap) continue;
    std::vector<uint64_t> keys(static_cast<size_t>(m));
    for (auto& k : keys) k = 1000 + rng() % 48;
    std::vector<int64_t> pos(static_cast<size_t>(m));
    for (int64_t i = 0; i < m; ++i) pos[size_t(i)] = i;
    std::shuffle(pos.begin(), pos.end(), rng);
    const int64_t placed = std::min<int64_t>(m, int64_t(targets.size()));
    for (int64_t t = 0; t < placed; ++t) keys[size_t(pos[size_t(t)])] = targets[size_t(t)];
    const Layout& lay = kLayouts[li++ % 3];
    Batch b = run_batch(op, keys, lay, rng, cache);
    rep.padding += b.padding_violations;
    for (int64_t t = 0; t < placed; ++t)
      for (size_t o = 0; o < b.rows.size(); ++o) {
        ++rep.cases;
        if (b.rows[o][size_t(pos[size_t(t)])] != alone[size_t(t)][o]) ++rep.diffs;
      }
    last_keys = keys;
    last_layout = lay;
  }
  // Run to run: the largest batch again, same placement and layout.
  {
    Batch a = run_batch(op, last_keys, last_layout, rng, cache);
    Batch b = run_batch(op, last_keys, last_layout, rng, cache);
    for (size_t o = 0; o < a.rows.size(); ++o)
      if (a.rows[o] != b.rows[o]) ++rep.run_to_run;
  }
  if (verbose)
    std::printf("%-34s cases %5lld  diffs %3lld  run-to-run %lld  padding %lld  max rel err %.2e%s\n", op.name.c_str(),
                (long long)rep.cases, (long long)rep.diffs, (long long)rep.run_to_run, (long long)rep.padding,
                rep.max_err, rep.accurate ? "" : "  INACCURATE");
  return rep;
}

void expect_clean(const OpSpec& op) {
  const Report r = check_op(op);
  EXPECT_GT(r.cases, 0) << op.name;
  EXPECT_EQ(r.diffs, 0) << op.name << ": rows differ between alone and in a batch";
  EXPECT_EQ(r.run_to_run, 0) << op.name << ": two identical runs differ";
  EXPECT_EQ(r.padding, 0) << op.name << ": bytes outside the output elements were written";
  EXPECT_TRUE(r.accurate) << op.name;
}

// ---- generators and float64 helpers -----------------------------------------------------------------------
std::mt19937_64 key_rng(uint64_t key, uint64_t salt) { return std::mt19937_64(key * 0x9E3779B97F4A7C15ull + salt); }
std::function<void(uint64_t, std::vector<double>&)> normal(double scale, uint64_t salt) {
  return [=](uint64_t key, std::vector<double>& v) {
    auto g = key_rng(key, salt);
    std::normal_distribution<double> d(0.0, scale);
    for (double& x : v) x = d(g);
  };
}
std::function<void(uint64_t, std::vector<double>&)> integers(int64_t lo, int64_t hi, uint64_t salt) {
  return [=](uint64_t key, std::vector<double>& v) {
    auto g = key_rng(key, salt);
    std::uniform_int_distribution<int64_t> d(lo, hi);
    for (double& x : v) x = double(d(g));
  };
}
double tol_of(DType t) { return t == DType::F32 ? 2e-6 : t == DType::F16 ? 1e-3 : 8e-3; }
const char* dn(DType t) { return dtype_name(t); }

// A GPU tensor of random values (rounded to its dtype) and the same values as doubles on the host.
struct Shared {
  Tensor dev;
  std::vector<double> host;
};
Shared shared_tensor(const Shape& shape, DType t, double scale, double offset, uint64_t seed) {
  Shared s;
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::mt19937_64 g(seed);
  std::normal_distribution<double> d(0.0, scale);
  std::vector<uint8_t> bytes(size_t(n * dtype_size(t)));
  for (int64_t i = 0; i < n; ++i) {
    const double v = double(round_to(t, float(offset + d(g))));
    s.host.push_back(v);
    put(bytes.data() + i * dtype_size(t), t, v);
  }
  s.dev = Tensor::empty(shape, t, Device::cuda(0));
  memcpy_bytes(s.dev.data(), s.dev.device(), bytes.data(), Device::cpu(), int64_t(bytes.size()));
  return s;
}

// ---- op specs ------------------------------------------------------------------------------------------
OpSpec rms_norm_spec(DType xt, DType ot, DType wt, int64_t n, bool residual) {
  auto w = std::make_shared<Shared>(shared_tensor({n}, wt, 0.3, 1.0, 7));
  OpSpec op;
  op.name = std::string(residual ? "rms_norm+res " : "rms_norm ") + dn(xt) + "->" + dn(ot) + " w" + dn(wt) +
            " n=" + std::to_string(n);
  op.bufs.push_back({"x", xt, n, Role::In, 0, normal(1.0, 1)});
  if (residual) op.bufs.push_back({"residual", xt, n, Role::InOut, 0, normal(2.0, 2)});
  op.bufs.push_back({"out", ot, n, Role::Out, tol_of(ot), {}});
  op.run = [=](const std::vector<TensorView>& v, const std::vector<uint64_t>&) {
    if (residual)
      rms_norm(v[2], v[0], w->dev, 1e-6f, v[1]);
    else
      rms_norm(v[1], v[0], w->dev, 1e-6f);
  };
  op.ref = [=](const Rows& in, Rows& out, uint64_t) {
    std::vector<double> h = in[0];
    if (residual)
      for (int64_t j = 0; j < n; ++j) h[size_t(j)] = round_to(xt, float(in[0][size_t(j)] + in[1][size_t(j)]));
    double ss = 0;
    for (double x : h) ss += x * x;
    const double rstd = 1.0 / std::sqrt(ss / double(n) + 1e-6);
    Rows& o = out;
    const size_t oi = residual ? 2 : 1;
    for (int64_t j = 0; j < n; ++j) o[oi][size_t(j)] = h[size_t(j)] * rstd * w->host[size_t(j)];
    if (residual) o[1] = h;
  };
  return op;
}

// A row's mean and 1 / sqrt(biased variance + eps) in float64 (two passes).
std::pair<double, double> mean_rstd64(const std::vector<double>& row, double eps) {
  double mean = 0, var = 0;
  for (double x : row) mean += x;
  mean /= double(row.size());
  for (double x : row) var += (x - mean) * (x - mean);
  var /= double(row.size());
  return {mean, 1.0 / std::sqrt(var + eps)};
}

OpSpec layer_norm_spec(DType xt, DType ot, int64_t n, bool weight, bool bias, DType bt = DType::F32) {
  auto w = std::make_shared<Shared>(shared_tensor({n}, xt, 0.3, 1.0, 8));
  auto b = std::make_shared<Shared>(shared_tensor({n}, bt, 0.5, 0.0, 9));
  OpSpec op;
  op.name = std::string("layer_norm ") + dn(xt) + "->" + dn(ot) + (weight ? " w" : "") +
            (bias ? std::string(" b") + dn(bt) : "") + " n=" + std::to_string(n);
  op.bufs.push_back({"x", xt, n, Role::In, 0, normal(1.5, 3)});
  op.bufs.push_back({"out", ot, n, Role::Out, tol_of(ot), {}});
  op.run = [=](const std::vector<TensorView>& v, const std::vector<uint64_t>&) {
    layer_norm(v[1], v[0], weight ? std::optional<TensorView>(w->dev.view()) : std::nullopt,
               bias ? std::optional<TensorView>(b->dev.view()) : std::nullopt, 1e-5f);
  };
  op.ref = [=](const Rows& in, Rows& out, uint64_t) {
    const auto [mean, rstd] = mean_rstd64(in[0], 1e-5);
    for (int64_t j = 0; j < n; ++j) {
      double y = (in[0][size_t(j)] - mean) * rstd;
      if (weight) y *= w->host[size_t(j)];
      if (bias) y += b->host[size_t(j)];
      out[1][size_t(j)] = y;
    }
  };
  return op;
}

// layer_norm_with_stats: the output as layer_norm_spec, plus each row's mean and rstd ([M, 1] F32).
OpSpec layer_norm_stats_spec(DType xt, int64_t n) {
  OpSpec op;
  op.name = std::string("layer_norm_with_stats ") + dn(xt) + " n=" + std::to_string(n);
  op.bufs.push_back({"x", xt, n, Role::In, 0, normal(1.5, 3)});
  // The mean of a zero-centred row is small next to the rounding of an F32 sum of n terms: relative 1e-4.
  op.bufs.push_back({"mean", DType::F32, 1, Role::Out, 1e-4, {}});
  op.bufs.push_back({"rstd", DType::F32, 1, Role::Out, 1e-5, {}});
  op.bufs.push_back({"out", xt, n, Role::Out, tol_of(xt), {}});
  op.run = [=](const std::vector<TensorView>& v, const std::vector<uint64_t>&) {
    layer_norm_with_stats(v[3], v[1], v[2], v[0], std::nullopt, std::nullopt, 1e-5f);
  };
  op.ref = [=](const Rows& in, Rows& out, uint64_t) {
    const auto [mean, rstd] = mean_rstd64(in[0], 1e-5);
    out[1][0] = mean;
    out[2][0] = rstd;
    for (int64_t j = 0; j < n; ++j) out[3][size_t(j)] = (in[0][size_t(j)] - mean) * rstd;
  };
  return op;
}

// masked: -inf at the start of the row and at every 7th element (masked logits), so a lane's running
// maximum starts at -inf and the statistics rescale when the first finite chunk arrives.
OpSpec softmax_spec(DType xt, DType ot, int64_t n, bool log, bool masked = false) {
  OpSpec op;
  op.name = std::string(log ? "log_softmax " : "softmax ") + dn(xt) + "->" + dn(ot) + " n=" + std::to_string(n) +
            (masked ? " masked" : "");
  auto gen = normal(3.0, 4);
  if (masked)
    gen = [gen](uint64_t key, std::vector<double>& v) {
      gen(key, v);
      for (size_t j = 0; j < v.size(); ++j)
        if (j < v.size() / 3 || j % 7 == 0) v[j] = -INFINITY;
    };
  op.bufs.push_back({"x", xt, n, Role::In, 0, gen});
  op.bufs.push_back({"out", ot, n, Role::Out, tol_of(ot), {}});
  op.run = [=](const std::vector<TensorView>& v, const std::vector<uint64_t>&) {
    if (log)
      log_softmax(v[1], v[0]);
    else
      softmax(v[1], v[0]);
  };
  op.ref = [=](const Rows& in, Rows& out, uint64_t) {
    const double mx = *std::max_element(in[0].begin(), in[0].end());
    double s = 0;
    for (double x : in[0]) s += std::exp(x - mx);
    for (int64_t j = 0; j < n; ++j)
      out[1][size_t(j)] = log ? in[0][size_t(j)] - mx - std::log(s) : std::exp(in[0][size_t(j)] - mx) / s;
  };
  return op;
}

// x viewed as [M, a, b]; reduce over `dims` of {1, 2}; out [M, kept].
OpSpec reduce_spec(DType xt, DType ot, int64_t a, int64_t b, std::vector<int> dims, bool is_mean, bool keepdim) {
  const bool r1 = std::count(dims.begin(), dims.end(), 1) > 0, r2 = std::count(dims.begin(), dims.end(), 2) > 0;
  const int64_t kept = (r1 ? 1 : a) * (r2 ? 1 : b);
  OpSpec op;
  op.name = std::string(is_mean ? "mean " : "sum ") + dn(xt) + "->" + dn(ot) + " [M," + std::to_string(a) + "," +
            std::to_string(b) + "] dims" + (r1 ? " 1" : "") + (r2 ? " 2" : "") + (keepdim ? " keepdim" : "");
  op.bufs.push_back({"x", xt, a * b, Role::In, 0, normal(1.0, 5)});
  op.bufs.push_back({"out", ot, kept, Role::Out, ot == DType::F32 ? 1e-5 : tol_of(ot), {}});
  op.run = [=](const std::vector<TensorView>& v, const std::vector<uint64_t>&) {
    const TensorView& x2 = v[0];
    const int64_t m = x2.shape[0], es = x2.stride[1];
    TensorView x3(x2.data, xt, {m, a, b}, {x2.stride[0], b * es, es}, x2.device);
    const TensorView& o2 = v[1];
    const int64_t oes = o2.stride[1];
    Shape os = {m}, ost = {o2.stride[0]};
    if (!r1) { os.push_back(a); ost.push_back((r2 ? 1 : b) * oes); }
    else if (keepdim) { os.push_back(1); ost.push_back(oes); }
    if (!r2) { os.push_back(b); ost.push_back(oes); }
    else if (keepdim) { os.push_back(1); ost.push_back(oes); }
    TensorView o(o2.data, ot, os, ost, o2.device);
    if (is_mean)
      mean(o, x3, dims, keepdim);
    else
      sum(o, x3, dims, keepdim);
  };
  op.ref = [=](const Rows& in, Rows& out, uint64_t) {
    std::vector<double> acc(size_t(kept), 0.0);
    for (int64_t i = 0; i < a; ++i)
      for (int64_t j = 0; j < b; ++j) acc[size_t((r1 ? 0 : i) * (r2 ? 1 : b) + (r2 ? 0 : j))] += in[0][size_t(i * b + j)];
    const double cnt = double((r1 ? a : 1) * (r2 ? b : 1));
    for (int64_t k = 0; k < kept; ++k) out[1][size_t(k)] = is_mean ? acc[size_t(k)] / cnt : acc[size_t(k)];
  };
  return op;
}

OpSpec argmax_spec(DType xt, int64_t n, bool ties) {
  OpSpec op;
  op.name = std::string("argmax ") + dn(xt) + " n=" + std::to_string(n) + (ties ? " (ties)" : "");
  op.bufs.push_back({"x", xt, n, Role::In, 0, ties ? integers(-3, 3, 6) : normal(2.0, 6)});
  op.bufs.push_back({"out", DType::I32, 1, Role::Out, 0, {}});
  op.run = [=](const std::vector<TensorView>& v, const std::vector<uint64_t>&) {
    argmax(TensorView(v[1].data, DType::I32, {v[1].shape[0]}, {v[1].stride[0]}, v[1].device), v[0]);
  };
  op.ref = [=](const Rows& in, Rows& out, uint64_t) {
    out[1][0] = double(std::max_element(in[0].begin(), in[0].end()) - in[0].begin());  // first maximum
  };
  return op;
}

OpSpec silu_spec(DType xt, DType ot, int64_t d) {
  OpSpec op;
  op.name = std::string("silu_and_mul ") + dn(xt) + "->" + dn(ot) + " d=" + std::to_string(d);
  op.bufs.push_back({"x", xt, 2 * d, Role::In, 0, normal(2.0, 7)});
  op.bufs.push_back({"out", ot, d, Role::Out, tol_of(ot), {}});
  op.run = [=](const std::vector<TensorView>& v, const std::vector<uint64_t>&) { silu_and_mul(v[1], v[0]); };
  op.ref = [=](const Rows& in, Rows& out, uint64_t) {
    for (int64_t j = 0; j < d; ++j) {
      const double g = in[0][size_t(j)], u = in[0][size_t(d + j)];
      out[1][size_t(j)] = g / (1.0 + std::exp(-g)) * u;
    }
  };
  return op;
}

OpSpec rope_spec(DType t, int64_t hq, int64_t hk, int64_t d, int64_t rot, bool neox) {
  const int64_t max_pos = 4096;
  auto table = std::make_shared<Tensor>(rope_cos_sin_table(max_pos, rot, 10000.0, Device::cpu()));
  auto table_dev = std::make_shared<Tensor>(table->to(Device::cuda(0)));
  OpSpec op;
  op.name = std::string("rotary ") + dn(t) + (neox ? " neox" : " gptj") + " H=" + std::to_string(hq) + "/" +
            std::to_string(hk) + " D=" + std::to_string(d) + " rot=" + std::to_string(rot);
  op.bufs.push_back({"positions", DType::I32, 1, Role::In, 0, integers(0, max_pos - 1, 8)});
  op.bufs.push_back({"q", t, hq * d, Role::InOut, tol_of(t), normal(1.0, 9)});
  op.bufs.push_back({"k", t, hk * d, Role::InOut, tol_of(t), normal(1.0, 10)});
  auto heads = [=](const TensorView& v, int64_t h) {
    return TensorView(v.data, t, {v.shape[0], h, d}, {v.stride[0], d * v.stride[1], v.stride[1]}, v.device);
  };
  op.run = [=](const std::vector<TensorView>& v, const std::vector<uint64_t>&) {
    TensorView pos(v[0].data, DType::I32, {v[0].shape[0]}, {v[0].stride[0]}, v[0].device);
    rotary_embedding(heads(v[1], hq), heads(v[2], hk), pos, *table_dev, neox);
  };
  op.ref = [=](const Rows& in, Rows& out, uint64_t) {
    const int64_t p = int64_t(in[0][0]), half = rot / 2;
    const float* cs = table->ptr<float>() + p * rot;
    for (int b = 1; b <= 2; ++b) {
      const int64_t h = b == 1 ? hq : hk;
      out[size_t(b)] = in[size_t(b)];
      for (int64_t hh = 0; hh < h; ++hh)
        for (int64_t i = 0; i < half; ++i) {
          const int64_t ia = hh * d + (neox ? i : 2 * i), ib = hh * d + (neox ? i + half : 2 * i + 1);
          const double a = in[size_t(b)][size_t(ia)], bb = in[size_t(b)][size_t(ib)], c = cs[i], s = cs[half + i];
          out[size_t(b)][size_t(ia)] = a * c - bb * s;
          out[size_t(b)][size_t(ib)] = bb * c + a * s;
        }
    }
  };
  return op;
}

OpSpec embedding_spec(DType tt, DType ot, int64_t vocab, int64_t d) {
  auto table = std::make_shared<Shared>(shared_tensor({vocab, d}, tt, 1.0, 0.0, 11));
  OpSpec op;
  op.name = std::string("embedding ") + dn(tt) + "->" + dn(ot) + " V=" + std::to_string(vocab) + " D=" +
            std::to_string(d);
  op.bufs.push_back({"ids", DType::I32, 1, Role::In, 0, integers(0, vocab - 1, 12)});
  op.bufs.push_back({"out", ot, d, Role::Out, 0, {}});
  op.run = [=](const std::vector<TensorView>& v, const std::vector<uint64_t>&) {
    embedding(v[1], TensorView(v[0].data, DType::I32, {v[0].shape[0]}, {v[0].stride[0]}, v[0].device), table->dev);
  };
  op.ref = [=](const Rows& in, Rows& out, uint64_t) {
    const int64_t id = int64_t(in[0][0]);
    for (int64_t j = 0; j < d; ++j) out[1][size_t(j)] = table->host[size_t(id * d + j)];
  };
  return op;
}

SamplingParams params_for(uint64_t key, int variant) {
  auto g = key_rng(key, 99);
  SamplingParams p;
  p.seed = g();
  p.position = int64_t(g() % 100000);
  p.temperature = variant == 0 ? 0.0f : 0.5f + float(g() % 100) / 100.0f;
  if (variant == 2 || variant == 4) p.top_k = 1 + int32_t(g() % 64);
  if (variant == 3 || variant == 4) p.top_p = 0.5f + float(g() % 45) / 100.0f;
  if (variant == 5) p.min_p = 0.02f + float(g() % 20) / 100.0f;
  return p;
}
const char* variant_name(int v) {
  static const char* n[] = {"greedy", "temperature", "top_k", "top_p", "top_k+top_p", "min_p"};
  return n[v];
}

// The CPU backend's answer for one row.
int32_t cpu_sample(const std::vector<double>& row, DType t, const SamplingParams& p) {
  Tensor x = Tensor::empty({1, int64_t(row.size())}, t);
  for (size_t i = 0; i < row.size(); ++i) put(static_cast<uint8_t*>(x.data()) + i * dtype_size(t), t, row[i]);
  Tensor tok = Tensor::empty({1}, DType::I32);
  sample(tok, x, {p});
  return tok.ptr<int32_t>()[0];
}

OpSpec sample_spec(DType t, int64_t vocab, int variant) {
  OpSpec op;
  op.name = std::string("sample ") + variant_name(variant) + " " + dn(t) + " V=" + std::to_string(vocab);
  op.bufs.push_back({"logits", t, vocab, Role::In, 0, normal(3.0, 13)});
  op.bufs.push_back({"token", DType::I32, 1, Role::Out, 0, {}});
  op.max_rows = 1000;
  op.run = [=](const std::vector<TensorView>& v, const std::vector<uint64_t>& keys) {
    std::vector<SamplingParams> ps;
    for (uint64_t k : keys) ps.push_back(params_for(k, variant));
    sample(TensorView(v[1].data, DType::I32, {v[1].shape[0]}, {v[1].stride[0]}, v[1].device), v[0], ps);
  };
  op.ref = [=](const Rows& in, Rows& out, uint64_t key) { out[1][0] = cpu_sample(in[0], t, params_for(key, variant)); };
  return op;
}

OpSpec logprobs_spec(DType t, int64_t vocab, int64_t top_n) {
  OpSpec op;
  op.name = std::string("logprobs ") + dn(t) + " V=" + std::to_string(vocab) + " n=" + std::to_string(top_n);
  op.bufs.push_back({"logits", t, vocab, Role::In, 0, normal(3.0, 14)});
  op.bufs.push_back({"token", DType::I32, 1, Role::In, 0, integers(0, vocab - 1, 15)});
  op.bufs.push_back({"chosen", DType::F32, 1, Role::Out, 1e-5, {}});
  op.bufs.push_back({"top_ids", DType::I32, top_n, Role::Out, 0, {}});
  op.bufs.push_back({"top_vals", DType::F32, top_n, Role::Out, 1e-5, {}});
  op.max_rows = 1000;
  op.run = [=](const std::vector<TensorView>& v, const std::vector<uint64_t>&) {
    const int64_t m = v[0].shape[0];
    logprobs(TensorView(v[2].data, DType::F32, {m}, {v[2].stride[0]}, v[2].device), v[3], v[4], v[0],
             TensorView(v[1].data, DType::I32, {m}, {v[1].stride[0]}, v[1].device));
  };
  op.ref = [=](const Rows& in, Rows& out, uint64_t) {
    const auto& x = in[0];
    const double mx = *std::max_element(x.begin(), x.end());
    double s = 0;
    for (double v : x) s += std::exp(v - mx);
    auto lp = [&](size_t i) { return x[i] - mx - std::log(s); };
    out[2][0] = lp(size_t(in[1][0]));
    std::vector<int32_t> idx(x.size());
    for (size_t i = 0; i < idx.size(); ++i) idx[i] = int32_t(i);
    std::partial_sort(idx.begin(), idx.begin() + top_n, idx.end(),
                      [&](int32_t a, int32_t b) { return x[size_t(a)] != x[size_t(b)] ? x[size_t(a)] > x[size_t(b)] : a < b; });
    for (int64_t j = 0; j < top_n; ++j) {
      out[3][size_t(j)] = idx[size_t(j)];
      out[4][size_t(j)] = lp(size_t(idx[size_t(j)]));
    }
  };
  return op;
}

// ---- tests -----------------------------------------------------------------------------------------------
TEST(OpsCuda, RmsNorm) {
  BIK_REQUIRE_GPU();
  expect_clean(rms_norm_spec(DType::BF16, DType::BF16, DType::BF16, 4096, false));
  expect_clean(rms_norm_spec(DType::BF16, DType::BF16, DType::F32, 4096, true));
  expect_clean(rms_norm_spec(DType::F16, DType::F32, DType::F32, 7, false));
  expect_clean(rms_norm_spec(DType::F32, DType::F32, DType::F32, 5123, true));
  expect_clean(rms_norm_spec(DType::BF16, DType::F32, DType::BF16, 20000, true));  // longer than the cached chunks
  // One dtype throughout: aligned rows take the 16-byte path, the misaligned and strided layouts of the
  // same batches the general kernel, so any difference between the two shows as a diff. Sizes cover
  // the path's launch shapes (1 lane group a thread with 1 or 2 warps a row, 4 with 1 to 8 warps).
  expect_clean(rms_norm_spec(DType::BF16, DType::BF16, DType::BF16, 4096, true));
  expect_clean(rms_norm_spec(DType::F16, DType::F16, DType::F16, 512, true));
  expect_clean(rms_norm_spec(DType::F32, DType::F32, DType::F32, 512, false));
  expect_clean(rms_norm_spec(DType::F32, DType::F32, DType::F32, 1000, true));  // chunks past n
  expect_clean(rms_norm_spec(DType::BF16, DType::BF16, DType::BF16, 16384, false));
}

TEST(OpsCuda, LayerNorm) {
  BIK_REQUIRE_GPU();
  expect_clean(layer_norm_spec(DType::BF16, DType::BF16, 4096, true, true));
  expect_clean(layer_norm_spec(DType::F32, DType::F32, 777, false, false));
  expect_clean(layer_norm_spec(DType::F16, DType::F32, 20000, true, false));
  expect_clean(layer_norm_stats_spec(DType::BF16, 4096));
  expect_clean(layer_norm_stats_spec(DType::F32, 20000));
  // The 16-byte path (see RmsNorm): weight and bias in x's dtype.
  expect_clean(layer_norm_spec(DType::BF16, DType::BF16, 4096, true, true, DType::BF16));
  expect_clean(layer_norm_spec(DType::F16, DType::F16, 1024, true, true, DType::F16));
  expect_clean(layer_norm_spec(DType::F32, DType::F32, 1000, false, true, DType::F32));
  expect_clean(layer_norm_spec(DType::BF16, DType::BF16, 16384, true, false));
}

TEST(OpsCuda, Softmax) {
  BIK_REQUIRE_GPU();
  expect_clean(softmax_spec(DType::F32, DType::F32, 1000, false));
  expect_clean(softmax_spec(DType::BF16, DType::F32, 32000, false));
  expect_clean(softmax_spec(DType::F16, DType::F16, 33, false));
  expect_clean(softmax_spec(DType::BF16, DType::F32, 151936, true));
  expect_clean(softmax_spec(DType::F32, DType::F32, 4097, true));
  // The 16-byte path (aligned rows) against the general kernel (the other layouts of the same batches):
  // rows held in registers with 1 or 4 lane groups a thread, 1 to 8 warps a row, and rows read twice.
  expect_clean(softmax_spec(DType::F32, DType::F32, 32000, false));
  expect_clean(softmax_spec(DType::F32, DType::F32, 8192, true));
  expect_clean(softmax_spec(DType::F32, DType::F32, 512, false));
  expect_clean(softmax_spec(DType::F16, DType::F16, 64, false));
  expect_clean(softmax_spec(DType::BF16, DType::BF16, 4096, false, true));
  expect_clean(softmax_spec(DType::F32, DType::F32, 32000, false, true));
  expect_clean(softmax_spec(DType::F32, DType::F32, 1000, false, true));
}

// Rows of the largest plan held on chip by one CTA (softmax_resident_kernel: F32 16384 < n <= 32768,
// 16-bit 16384 < n <= 65536, 16-byte path), next to the lengths that take the other kernels: each row
// alone (the 16-byte path) against float64 and against the same row in batches of many sizes, where the
// misaligned and strided layouts run the general kernel. n = 1 and 31 and the odd lengths never take the
// 16-byte path; 32772 and 65544 are the first 16-byte-path lengths past the resident range.
TEST(OpsCuda, SoftmaxResidentBoundaries) {
  BIK_REQUIRE_GPU();
  for (int64_t n : {int64_t(1), int64_t(31), int64_t(16384), int64_t(16388), int64_t(32000), int64_t(32768),
                    int64_t(32769), int64_t(32772)})
    expect_clean(softmax_spec(DType::F32, DType::F32, n, false));
  for (int64_t n : {int64_t(1), int64_t(31), int64_t(16392), int64_t(32000), int64_t(65536), int64_t(65544)})
    expect_clean(softmax_spec(DType::BF16, DType::F32, n, n % 2 == 0));
  for (int64_t n : {int64_t(16384), int64_t(16392), int64_t(40000), int64_t(65536)})
    expect_clean(softmax_spec(DType::F16, DType::F16, n, false));
  expect_clean(softmax_spec(DType::BF16, DType::BF16, 32000, false));
  // Masked rows: -inf chunks before the first finite one, on the resident path.
  expect_clean(softmax_spec(DType::F32, DType::F32, 20000, true, true));
  expect_clean(softmax_spec(DType::BF16, DType::F32, 50000, false, true));
}

// log_softmax and logprobs share the row statistics (softmax.cuh): the chosen token's logprob has the
// bits of log_softmax's output at that token, whichever kernel layout each runs.
TEST(OpsCuda, LogSoftmaxMatchesLogprobs) {
  BIK_REQUIRE_GPU();
  for (DType t : {DType::BF16, DType::F32})
    for (int64_t n : {int64_t(1000), int64_t(20000), int64_t(32000), int64_t(65536), int64_t(151936)}) {
      const int64_t m = 5;
      Shared x = shared_tensor({m, n}, t, 3.0, 0.0, 21);
      Tensor out = Tensor::empty({m, n}, DType::F32, Device::cuda(0));
      log_softmax(out, x.dev);
      Tensor tok_h = Tensor::empty({m}, DType::I32);
      for (int64_t r = 0; r < m; ++r) tok_h.ptr<int32_t>()[r] = int32_t((r * 7919 + 13) % n);
      Tensor tok = tok_h.to(Device::cuda(0));
      Tensor chosen = Tensor::empty({m}, DType::F32, Device::cuda(0));
      Tensor ids = Tensor::empty({m, 1}, DType::I32, Device::cuda(0));
      Tensor vals = Tensor::empty({m, 1}, DType::F32, Device::cuda(0));
      logprobs(chosen, ids, vals, x.dev, tok);
      const Tensor out_h = out.to(Device::cpu()), chosen_h = chosen.to(Device::cpu());
      for (int64_t r = 0; r < m; ++r) {
        const float a = out_h.ptr<float>()[r * n + tok_h.ptr<int32_t>()[r]], b = chosen_h.ptr<float>()[r];
        EXPECT_EQ(std::memcmp(&a, &b, 4), 0) << dn(t) << " n=" << n << " row " << r << ": " << a << " vs " << b;
      }
    }
}

// The row maximum's order on signed zeros and NaN (SoftmaxMaxOp: NaN above all, +0 above -0), which the
// f32 chunks reach through fmaxf and the 16-bit chunks through SoftmaxMaxOp's fold (softmax.cuh), on rows
// held in registers (4096) and rows read twice (151936). Row 0: -inf everywhere but one -0, so M = -0 and
// that element's log_softmax is (-0 - -0) - log 1 = +0 (with M = +0 it would be -0) and its softmax 1.
// Row 1: a -0 and a +0 in different chunks, M = +0: both log_softmax values -log 2, the same bits. Row 2:
// random values and one NaN: every output NaN. Row 3: random values with the maximum given twice, as a
// value and again 3000 elements later: softmax equal at both, as log_softmax.
TEST(OpsCuda, SoftmaxSignedZerosAndNan) {
  BIK_REQUIRE_GPU();
  for (DType t : {DType::F32, DType::BF16})
    for (int64_t n : {int64_t(4096), int64_t(151936)}) {
      const int64_t m = 4;
      Tensor xh = test::hashed_host(m, n, t, 3.0, 5);
      const int64_t es = dtype_size(t);
      auto at = [&](int64_t r, int64_t i) { return static_cast<uint8_t*>(xh.data()) + (r * n + i) * es; };
      for (int64_t i = 0; i < n; ++i) {
        put(at(0, i), t, -INFINITY);
        put(at(1, i), t, -INFINITY);
      }
      put(at(0, 17), t, -0.0);
      put(at(1, 17), t, -0.0);
      put(at(1, n - 5), t, 0.0);
      put(at(2, n / 2 + 3), t, NAN);
      put(at(3, 101), t, 100.0);
      put(at(3, 3101), t, 100.0);
      const Tensor x = xh.to(Device::cuda(0));
      Tensor lo = Tensor::empty({m, n}, DType::F32, Device::cuda(0));
      Tensor so = Tensor::empty({m, n}, DType::F32, Device::cuda(0));
      log_softmax(lo, x);
      softmax(so, x);
      const Tensor lh = lo.to(Device::cpu()), sh = so.to(Device::cpu());
      const float* l = lh.ptr<float>();
      const float* p = sh.ptr<float>();
      const std::string what = std::string(dn(t)) + " n=" + std::to_string(n);
      uint32_t bits = 0xFFFFFFFFu;
      std::memcpy(&bits, &l[17], 4);
      EXPECT_EQ(bits, 0u) << what << ": log_softmax of the lone -0 must be +0, got " << l[17];
      EXPECT_EQ(p[17], 1.0f) << what;
      EXPECT_EQ(l[18], -INFINITY) << what;
      EXPECT_EQ(std::memcmp(&l[n + 17], &l[n + n - 5], 4), 0) << what << ": " << l[n + 17] << " vs " << l[2 * n - 5];
      EXPECT_NEAR(l[n + 17], -std::log(2.0), 1e-6) << what;
      int64_t not_nan = 0;
      for (int64_t i = 0; i < n; ++i) not_nan += !std::isnan(l[2 * n + i]) + !std::isnan(p[2 * n + i]);
      EXPECT_EQ(not_nan, 0) << what << ": a NaN in the row must make every output NaN";
      EXPECT_EQ(std::memcmp(&l[3 * n + 101], &l[3 * n + 3101], 4), 0) << what;
      EXPECT_EQ(std::memcmp(&p[3 * n + 101], &p[3 * n + 3101], 4), 0) << what;
      EXPECT_EQ(l[3 * n + 101], l[3 * n + 101]) << what;  // not NaN
    }
}

struct SoftmaxCase {
  DType t, o;  // input, output
  int64_t m, n;
  bool log;
};

// softmax (or log_softmax) of x with the switch `var` set to `value` for the call; the output on the host.
Tensor softmax_under(const char* var, const char* value, const SoftmaxCase& c, const Tensor& x) {
  setenv(var, value, 1);
  Tensor out = Tensor::empty({c.m, c.n}, c.o, Device::cuda(0));
  if (c.log)
    log_softmax(out, x);
  else
    softmax(out, x);
  unsetenv(var);
  return out.to(Device::cpu());
}

// Every case gives the same bits with the switch `var` at 1 and at 0. Negative control: the same
// comparison against an input that differs in one element of the last row must see a difference (on
// cases[1], which must have F32 input and output).
void expect_softmax_switch_keeps_bits(const char* var, const std::vector<SoftmaxCase>& cases) {
  for (const SoftmaxCase& c : cases) {
    Shared x = shared_tensor({c.m, c.n}, c.t, 3.0, 0.0, uint64_t(c.n + c.m));
    const Tensor a = softmax_under(var, "1", c, x.dev), b = softmax_under(var, "0", c, x.dev);
    const size_t bytes = size_t(c.m * c.n) * dtype_size(c.o);
    EXPECT_EQ(std::memcmp(a.data(), b.data(), bytes), 0) << dn(c.t) << " n=" << c.n << " rows " << c.m;
  }
  const SoftmaxCase& c = cases[1];
  ASSERT_TRUE(c.t == DType::F32 && c.o == DType::F32);
  Shared x = shared_tensor({c.m, c.n}, c.t, 3.0, 0.0, uint64_t(c.n + c.m));
  Tensor xh = x.dev.to(Device::cpu());
  float* last = xh.ptr<float>() + c.m * c.n - 1;
  *last = *last + 1.0f;
  const Tensor a = softmax_under(var, "1", c, xh.to(Device::cuda(0))), b = softmax_under(var, "0", c, x.dev);
  EXPECT_NE(std::memcmp(a.data(), b.data(), size_t(c.m * c.n) * 4), 0) << "the comparison missed a changed input";
}

// On sm_90 rows of the largest plan run on a cluster of four CTAs a row; BIK_SOFTMAX_CLUSTER=0 keeps them
// on one CTA. Both must give the same bits: rows held in registers and rows read twice (F32 n > 65536,
// BF16 151936), one row and batches of several. Negative control: the same comparison against an input
// that differs in one element of the last row must see a difference.
TEST(OpsCuda, SoftmaxClusterMatchesOneCta) {
  BIK_REQUIRE_GPU();
  expect_softmax_switch_keeps_bits(
      "BIK_SOFTMAX_CLUSTER",
      {{DType::F32, DType::F32, 1, 32000, false}, {DType::F32, DType::F32, 64, 32000, true},
       {DType::F32, DType::F32, 3, 4100, false}, {DType::F32, DType::F32, 2, 100000, false},
       {DType::BF16, DType::F32, 2, 151936, true}, {DType::BF16, DType::BF16, 5, 8200, false},
       {DType::F16, DType::F32, 1, 70000, true}, {DType::BF16, DType::F32, 300, 32000, true}});
}

// BIK_SOFTMAX_RESIDENT=0 sends the rows of softmax_resident_kernel back to the cluster kernel (rows that
// fit the SMs, sm_90) or the one-CTA kernel reading the row twice: the bits must not change. One row and
// batches of several, every input dtype, softmax and log_softmax. Negative control: an input that differs
// in one element of the last row must show.
TEST(OpsCuda, SoftmaxResidentMatchesOtherKernels) {
  BIK_REQUIRE_GPU();
  expect_softmax_switch_keeps_bits(
      "BIK_SOFTMAX_RESIDENT",
      {{DType::F32, DType::F32, 1, 32000, false}, {DType::F32, DType::F32, 64, 32000, true},
       {DType::F32, DType::F32, 3, 16388, false}, {DType::F32, DType::F32, 5, 32768, false},
       {DType::F32, DType::F32, 700, 20000, true}, {DType::BF16, DType::F32, 2, 65536, true},
       {DType::BF16, DType::BF16, 9, 16392, false}, {DType::F16, DType::F32, 300, 40000, false},
       {DType::BF16, DType::F32, 200, 32000, true}});
}

// A [rows, n] tensor on the GPU whose values come from a hash of (seed, index) (test::hashed_host).
Tensor hashed_tensor(int64_t rows, int64_t n, DType t, double scale, uint64_t seed) {
  return test::hashed_host(rows, n, t, scale, seed).to(Device::cuda(0));
}

// Copy of a GPU tensor with element `at` (flat index) raised by 1: the negative controls' input.
Tensor bumped(const Tensor& x, int64_t at) {
  Tensor h = x.to(Device::cpu());
  uint8_t* e = static_cast<uint8_t*>(h.data()) + at * dtype_size(x.dtype());
  put(e, x.dtype(), get(e, x.dtype()) + 1.0);
  return h.to(Device::cuda(0));
}

// 16-bit rows that softmax_kernel reads twice may run with one pass in flight and three CTAs an SM
// (BIK_SOFTMAX_THREE=2 for every row count) instead of two passes and two CTAs (=0): the same chunks in
// the same order, so the same bits. Rows longer than the resident range and too many for the cluster
// kernel, 16-bit in and F32 or 16-bit out, softmax and log_softmax. Negative control: an input that
// differs in one element of the last row must show.
TEST(OpsCuda, SoftmaxThreeCtasKeepsBits) {
  BIK_REQUIRE_GPU();
  const SoftmaxCase cases[] = {{DType::BF16, DType::F32, 200, 151936, true},
                               {DType::F16, DType::F32, 140, 70000, false},
                               {DType::BF16, DType::BF16, 150, 100000, false},
                               {DType::F16, DType::F16, 300, 65544, true}};
  for (const SoftmaxCase& c : cases) {
    Shared x = shared_tensor({c.m, c.n}, c.t, 3.0, 0.0, uint64_t(c.n + 3 * c.m));
    const Tensor a = softmax_under("BIK_SOFTMAX_THREE", "2", c, x.dev);
    const Tensor b = softmax_under("BIK_SOFTMAX_THREE", "0", c, x.dev);
    const size_t bytes = size_t(c.m * c.n) * dtype_size(c.o);
    EXPECT_EQ(std::memcmp(a.data(), b.data(), bytes), 0) << dn(c.t) << "->" << dn(c.o) << " n=" << c.n << " rows "
                                                         << c.m;
  }
  const SoftmaxCase& c = cases[0];
  Shared x = shared_tensor({c.m, c.n}, c.t, 3.0, 0.0, uint64_t(c.n + 3 * c.m));
  const Tensor a = softmax_under("BIK_SOFTMAX_THREE", "2", c, bumped(x.dev, c.m * c.n - 1));
  const Tensor b = softmax_under("BIK_SOFTMAX_THREE", "0", c, x.dev);
  EXPECT_NE(std::memcmp(a.data(), b.data(), size_t(c.m * c.n) * 4), 0) << "the comparison missed a changed input";
}

// The persistent softmax kernel that prefetches each CTA's next row into shared memory (sm_90;
// BIK_SOFTMAX_PREFETCH=2 forces it for every row count) against the kernels it replaces
// (BIK_SOFTMAX_PREFETCH=0: softmax_resident_kernel, or the cluster kernel while every row's cluster has SMs
// of its own): the same bytes for 1, 7, 133, 1000 and 4097 rows (CTAs of one row, of two, of many; more
// rows than CTAs by every remainder), every input dtype and the ends of the resident range, softmax and
// log_softmax, and the default choice (which takes the prefetching kernel past one row an SM). Negative
// control: one changed element of the last row must show.
TEST(OpsCuda, SoftmaxPrefetchMatchesResident) {
  BIK_REQUIRE_GPU();
  struct Case {
    DType t, o;
    int64_t n;
    bool log;
  };
  const Case cases[] = {{DType::F32, DType::F32, 32000, false},  {DType::F32, DType::F32, 16388, true},
                        {DType::F32, DType::F32, 32768, false},  {DType::BF16, DType::F32, 65536, true},
                        {DType::BF16, DType::BF16, 16392, false}, {DType::F16, DType::F16, 40000, false},
                        {DType::BF16, DType::F32, 32000, true}};
  const Device gpu = Device::cuda(0);
  auto run = [&](const Case& c, int64_t m, const Tensor& x, const char* level) {
    if (level) setenv("BIK_SOFTMAX_PREFETCH", level, 1);
    Tensor out = Tensor::empty({m, c.n}, c.o, gpu);
    if (c.log)
      log_softmax(out, x);
    else
      softmax(out, x);
    unsetenv("BIK_SOFTMAX_PREFETCH");
    return out.to(Device::cpu());
  };
  for (const Case& c : cases)
    for (int64_t m : {int64_t(1), int64_t(7), int64_t(133), int64_t(1000), int64_t(4097)}) {
      if (m * c.n > (int64_t(1) << 27)) continue;  // at most 128M elements a tensor
      const Tensor x = hashed_tensor(m, c.n, c.t, 3.0, uint64_t(c.n * 7 + m));
      const Tensor a = run(c, m, x, "2"), b = run(c, m, x, "0"), d = run(c, m, x, nullptr);
      const size_t bytes = size_t(m * c.n) * dtype_size(c.o);
      EXPECT_EQ(std::memcmp(a.data(), b.data(), bytes), 0) << dn(c.t) << "->" << dn(c.o) << " n=" << c.n << " rows " << m;
      EXPECT_EQ(std::memcmp(d.data(), b.data(), bytes), 0)
          << dn(c.t) << "->" << dn(c.o) << " n=" << c.n << " rows " << m << " (default choice)";
    }
  // Negative control.
  const Case& c = cases[0];
  const int64_t m = 133;
  const Tensor x = hashed_tensor(m, c.n, c.t, 3.0, uint64_t(c.n * 7 + m));
  const Tensor a = run(c, m, bumped(x, m * c.n - 1), "2"), b = run(c, m, x, "0");
  EXPECT_NE(std::memcmp(a.data(), b.data(), size_t(m * c.n) * 4), 0) << "the comparison missed a changed input";
}

// The invariance harness on the prefetching kernel alone (forced for every batch size, so a row alone and
// the same row in a batch of 257 both take it; the misaligned and strided layouts run the general kernel):
// the ends of the resident range for each input dtype, masked rows.
TEST(OpsCuda, SoftmaxPrefetchInvariance) {
  BIK_REQUIRE_GPU();
  setenv("BIK_SOFTMAX_PREFETCH", "2", 1);
  for (int64_t n : {int64_t(16388), int64_t(32000), int64_t(32768)}) expect_clean(softmax_spec(DType::F32, DType::F32, n, false));
  for (int64_t n : {int64_t(16392), int64_t(65536)}) expect_clean(softmax_spec(DType::BF16, DType::F32, n, n % 2 == 0));
  expect_clean(softmax_spec(DType::F16, DType::F16, 40000, false));
  expect_clean(softmax_spec(DType::BF16, DType::BF16, 32000, false));
  expect_clean(softmax_spec(DType::F32, DType::F32, 20000, true, true));
  expect_clean(softmax_spec(DType::BF16, DType::F32, 50000, false, true));
  unsetenv("BIK_SOFTMAX_PREFETCH");
}

TEST(OpsCuda, SumMean) {
  BIK_REQUIRE_GPU();
  expect_clean(reduce_spec(DType::BF16, DType::F32, 8, 512, {1, 2}, false, false));
  expect_clean(reduce_spec(DType::F32, DType::F32, 3, 1001, {2}, false, true));
  expect_clean(reduce_spec(DType::F16, DType::F32, 64, 24, {1}, true, false));  // strided reduced dim
  expect_clean(reduce_spec(DType::BF16, DType::BF16, 1, 8192, {1, 2}, true, true));
  // The reduced dim far apart and the outputs adjacent: the per-output kernel (forced), then the column
  // kernels (the default).
  for (const char* columns : {"0", "1"}) {
    setenv("BIK_REDUCE_COLUMNS", columns, 1);
    expect_clean(reduce_spec(DType::BF16, DType::F32, 300, 48, {1}, false, false));
    expect_clean(reduce_spec(DType::F32, DType::F32, 1001, 40, {1}, false, true));
  }
  unsetenv("BIK_REDUCE_COLUMNS");
}

// Sums over the last dim in the common layout (reduce_flat_kernel): one warp a row with 1 to 8 lane groups
// (bf16 n <= 4096, f32 n <= 2048), 4 lane groups on 4 or 8 warps for longer rows, several passes of 16
// chunks for the longest. Each row alone against float64 and in batches, where the misaligned and strided
// layouts run the other kernels.
TEST(OpsCuda, SumFlatRows) {
  BIK_REQUIRE_GPU();
  unsetenv("BIK_REDUCE_FLAT");
  expect_clean(reduce_spec(DType::BF16, DType::F32, 1, 4096, {1, 2}, false, false));
  expect_clean(reduce_spec(DType::BF16, DType::F32, 1, 64, {2}, false, true));
  expect_clean(reduce_spec(DType::F32, DType::F32, 1, 2048, {2}, true, false));
  expect_clean(reduce_spec(DType::F32, DType::F32, 1, 1000, {2}, false, false));
  expect_clean(reduce_spec(DType::F16, DType::F16, 1, 8192, {1, 2}, false, false));
  expect_clean(reduce_spec(DType::BF16, DType::BF16, 1, 100000, {2}, true, false));
  expect_clean(reduce_spec(DType::F32, DType::F32, 1, 40000, {2}, false, false));
}

// BIK_REDUCE_FLAT=0 keeps rows in the common layout on reduce_run_kernel: the same bits for every launch
// shape of reduce_flat_kernel, one row and many. Negative control: one changed element must show.
TEST(OpsCuda, SumFlatMatchesRunKernel) {
  BIK_REQUIRE_GPU();
  struct Case {
    DType t;
    int64_t m, n;
    bool is_mean;
  };
  const Case cases[] = {{DType::BF16, 1, 4096, false},   {DType::BF16, 4096, 4096, false}, {DType::BF16, 333, 8, false},
                        {DType::F16, 100, 256, true},     {DType::F32, 1000, 2048, false},   {DType::F32, 7, 4, false},
                        {DType::BF16, 65, 8192, true},    {DType::F32, 3, 100000, false},    {DType::BF16, 2, 151936, false},
                        {DType::F32, 513, 1000, true}};
  const Device gpu = Device::cuda(0);
  auto run = [&](const Case& c, const Tensor& x, const char* flat) {
    setenv("BIK_REDUCE_FLAT", flat, 1);
    Tensor out = Tensor::empty({c.m}, DType::F32, gpu);
    if (c.is_mean)
      mean(out, x, {1}, false);
    else
      sum(out, x, {1}, false);
    unsetenv("BIK_REDUCE_FLAT");
    return out.to(Device::cpu());
  };
  for (const Case& c : cases) {
    Shared x = shared_tensor({c.m, c.n}, c.t, 1.0, 0.25, uint64_t(c.n * 3 + c.m));
    const Tensor a = run(c, x.dev, "1"), b = run(c, x.dev, "0");
    EXPECT_EQ(std::memcmp(a.data(), b.data(), size_t(c.m) * 4), 0) << dn(c.t) << " n=" << c.n << " rows " << c.m;
    // Accuracy of every row against float64, relative to the sum of magnitudes.
    double worst = 0;
    for (int64_t r = 0; r < c.m; ++r) {
      double ref = 0, mag = 0;
      for (int64_t i = 0; i < c.n; ++i) {
        ref += x.host[size_t(r * c.n + i)];
        mag += std::fabs(x.host[size_t(r * c.n + i)]);
      }
      if (c.is_mean) {
        ref /= double(c.n);
        mag /= double(c.n);
      }
      worst = std::max(worst, std::fabs(double(a.ptr<float>()[r]) - ref) / mag);
    }
    EXPECT_LT(worst, 1e-6) << dn(c.t) << " n=" << c.n << " rows " << c.m;
  }
  // Negative control.
  const Case& c = cases[1];
  Shared x = shared_tensor({c.m, c.n}, c.t, 1.0, 0.25, uint64_t(c.n * 3 + c.m));
  Tensor xh = x.dev.to(Device::cpu());
  put(static_cast<uint8_t*>(xh.data()) + (c.m * c.n - 1) * 2, c.t, x.host.back() + 1.0);
  const Tensor a = run(c, xh.to(gpu), "1"), b = run(c, x.dev, "0");
  EXPECT_NE(std::memcmp(a.data(), b.data(), size_t(c.m) * 4), 0) << "the comparison missed a changed input";
}

// The ring kernel for one-warp rows (sm_90; BIK_SUM_RING=2 forces it for every row count) against
// reduce_flat_kernel (BIK_SUM_RING=0): the same bytes for 1, 7, 133, 1000 and 4097 rows and the bench shape
// 16384 x 4096 (warps of one row, of two, of many; the ring's stages wrapping), the shortest rows it takes
// (2048 bytes) and the longest (8 KiB), rows not a multiple of 128 bytes, F32 and 16-bit inputs, sum and
// mean, and the default choice. Negative control: one changed element of the last row must show.
TEST(OpsCuda, SumRingMatchesFlatKernel) {
  BIK_REQUIRE_GPU();
  struct Case {
    DType t;
    int64_t n;
    bool is_mean;
  };
  const Case cases[] = {{DType::BF16, 4096, false}, {DType::BF16, 1024, false}, {DType::BF16, 1032, true},
                        {DType::F16, 2056, false},  {DType::F32, 2048, false},  {DType::F32, 512, true},
                        {DType::F32, 1000, false},  {DType::BF16, 3000, false}};
  const Device gpu = Device::cuda(0);
  auto run = [&](const Case& c, int64_t m, const Tensor& x, const char* level) {
    if (level) setenv("BIK_SUM_RING", level, 1);
    Tensor out = Tensor::empty({m}, DType::F32, gpu);
    if (c.is_mean)
      mean(out, x, {1}, false);
    else
      sum(out, x, {1}, false);
    unsetenv("BIK_SUM_RING");
    return out.to(Device::cpu());
  };
  for (const Case& c : cases)
    for (int64_t m : {int64_t(1), int64_t(7), int64_t(133), int64_t(1000), int64_t(4097), int64_t(16384)}) {
      if (m == 16384 && !(c.t == DType::BF16 && c.n == 4096)) continue;
      const Tensor x = hashed_tensor(m, c.n, c.t, 1.0, uint64_t(c.n * 5 + m));
      const Tensor a = run(c, m, x, "2"), b = run(c, m, x, "0"), d = run(c, m, x, nullptr);
      EXPECT_EQ(std::memcmp(a.data(), b.data(), size_t(m) * 4), 0) << dn(c.t) << " n=" << c.n << " rows " << m;
      EXPECT_EQ(std::memcmp(d.data(), b.data(), size_t(m) * 4), 0)
          << dn(c.t) << " n=" << c.n << " rows " << m << " (default choice)";
    }
  // Negative control.
  const Case& c = cases[0];
  const int64_t m = 4097;
  const Tensor x = hashed_tensor(m, c.n, c.t, 1.0, uint64_t(c.n * 5 + m));
  const Tensor a = run(c, m, bumped(x, m * c.n - 1), "2"), b = run(c, m, x, "0");
  EXPECT_NE(std::memcmp(a.data(), b.data(), size_t(m) * 4), 0) << "the comparison missed a changed input";
}

// The invariance harness on the ring kernel alone (forced for every batch size): its shortest and longest
// rows per dtype, and the lengths just outside (2032 bytes, and bf16 4104, which takes 4 warps a row).
TEST(OpsCuda, SumRingInvariance) {
  BIK_REQUIRE_GPU();
  setenv("BIK_SUM_RING", "2", 1);
  expect_clean(reduce_spec(DType::BF16, DType::F32, 1, 4096, {1, 2}, false, false));
  expect_clean(reduce_spec(DType::BF16, DType::F32, 1, 1024, {2}, false, true));
  expect_clean(reduce_spec(DType::BF16, DType::BF16, 1, 1016, {2}, true, false));
  expect_clean(reduce_spec(DType::BF16, DType::F32, 1, 4104, {2}, false, false));
  expect_clean(reduce_spec(DType::F32, DType::F32, 1, 512, {2}, false, false));
  expect_clean(reduce_spec(DType::F32, DType::F32, 1, 2048, {2}, true, false));
  expect_clean(reduce_spec(DType::F16, DType::F32, 1, 3000, {1, 2}, false, false));
  unsetenv("BIK_SUM_RING");
}

// A sum over dim 0 of x [n, cols] (the column kernels) must give the bits of the row kernel on the
// contiguous transpose [cols, n], and of each column alone (a batch of one output, which takes the
// per-output kernel). The shapes reach the column kernels' variants on a GPU of ~132 SMs: classes folded
// by the second kernel with 1, 2 and 8 lanes a thread (4096 x 300, 40000 x 33, 1024 x 34000), a single
// class (200 x 20000, f32), and the element loads (a view one column in, not 16-byte aligned).
TEST(OpsCuda, SumOverDim0MatchesRows) {
  BIK_REQUIRE_GPU();
  unsetenv("BIK_REDUCE_COLUMNS");
  struct Shape2 {
    DType t;
    int64_t n, cols;
  };
  const Device gpu = Device::cuda(0);
  std::mt19937_64 rng(99);
  std::normal_distribution<double> nd(0.0, 1.0);
  for (Shape2 c : {Shape2{DType::BF16, 4096, 300}, Shape2{DType::F32, 1001, 64}, Shape2{DType::F16, 37, 129},
                   Shape2{DType::BF16, 40000, 33}, Shape2{DType::BF16, 1024, 34000}, Shape2{DType::F32, 200, 20000}}) {
    const int64_t es = int64_t(dtype_size(c.t));
    Tensor xh = Tensor::empty({c.n, c.cols}, c.t), th = Tensor::empty({c.cols, c.n}, c.t);
    for (int64_t i = 0; i < c.n; ++i)
      for (int64_t k = 0; k < c.cols; ++k) {
        const double v = nd(rng);
        put(static_cast<uint8_t*>(xh.data()) + (i * c.cols + k) * es, c.t, v);
        put(static_cast<uint8_t*>(th.data()) + (k * c.n + i) * es, c.t, v);
      }
    Tensor x = xh.to(gpu), xt = th.to(gpu);
    for (bool is_mean : {false, true}) {
      Tensor o1 = Tensor::empty({c.cols}, DType::F32, gpu), o2 = Tensor::empty({c.cols}, DType::F32, gpu);
      Tensor o3 = Tensor::empty({c.cols}, DType::F32, gpu);
      auto red = [&](const TensorView& o, const TensorView& in, int dim) {
        if (is_mean) mean(o, in, {dim}, false);
        else sum(o, in, {dim}, false);
      };
      red(o1, x, 0);
      red(o2, xt, 1);
      // Each column alone: every column of the narrow shapes, a sample of the wide ones.
      const int64_t every = c.cols > 1000 ? 97 : 1;
      o3 = o1.to(Device::cpu()).to(gpu);
      for (int64_t k = 0; k < c.cols; k += every) red(o3.view().narrow(0, k, 1), x.view().narrow(1, k, 1), 0);
      // Columns 1.. of x: a view whose rows start off 16-byte boundaries.
      Tensor o4 = Tensor::empty({c.cols - 1}, DType::F32, gpu);
      red(o4, x.view().narrow(1, 1, c.cols - 1), 0);
      Tensor h1 = o1.to(Device::cpu()), h2 = o2.to(Device::cpu()), h3 = o3.to(Device::cpu());
      Tensor h4 = o4.to(Device::cpu());
      EXPECT_EQ(0, std::memcmp(h1.ptr<float>() + 1, h4.data(), size_t(c.cols - 1) * 4))
          << dtype_name(c.t) << " n=" << c.n << " cols=" << c.cols << (is_mean ? " mean" : " sum")
          << ": unaligned view";
      EXPECT_EQ(0, std::memcmp(h1.data(), h2.data(), size_t(c.cols) * 4))
          << dtype_name(c.t) << " n=" << c.n << " cols=" << c.cols << (is_mean ? " mean" : " sum")
          << ": dim 0 vs rows";
      EXPECT_EQ(0, std::memcmp(h1.data(), h3.data(), size_t(c.cols) * 4))
          << dtype_name(c.t) << " n=" << c.n << " cols=" << c.cols << (is_mean ? " mean" : " sum")
          << ": batch vs alone";
      double worst = 0;
      for (int64_t k = 0; k < c.cols; ++k) {
        double ref = 0, mag = 0;
        for (int64_t i = 0; i < c.n; ++i) {
          const double v = get(static_cast<const uint8_t*>(xh.data()) + (i * c.cols + k) * es, c.t);
          ref += v;
          mag += std::fabs(v);
        }
        if (is_mean) {
          ref /= double(c.n);
          mag /= double(c.n);
        }
        // Error relative to the sum of magnitudes: what an F32 pairwise sum bounds.
        worst = std::max(worst, std::fabs(double(h1.ptr<float>()[k]) - ref) / mag);
      }
      EXPECT_LT(worst, 1e-6) << dtype_name(c.t) << " n=" << c.n << " cols=" << c.cols;
    }
  }
}

TEST(OpsCuda, Argmax) {
  BIK_REQUIRE_GPU();
  expect_clean(argmax_spec(DType::BF16, 151936, false));
  expect_clean(argmax_spec(DType::F32, 100, true));
  expect_clean(argmax_spec(DType::F16, 5000, true));
  // Long rows of few distinct values: ties between the pieces a row is cut into when the batch is small.
  expect_clean(argmax_spec(DType::BF16, 151936, true));
  expect_clean(argmax_spec(DType::F32, 70001, true));
}

TEST(OpsCuda, SiluAndMul) {
  BIK_REQUIRE_GPU();
  expect_clean(silu_spec(DType::BF16, DType::BF16, 14336));
  expect_clean(silu_spec(DType::F32, DType::F32, 11));
  expect_clean(silu_spec(DType::F16, DType::F32, 4096));
}

TEST(OpsCuda, Rotary) {
  BIK_REQUIRE_GPU();
  expect_clean(rope_spec(DType::BF16, 32, 8, 128, 128, true));
  expect_clean(rope_spec(DType::F32, 4, 2, 64, 32, false));
  expect_clean(rope_spec(DType::F16, 3, 1, 80, 80, true));
}

// BIK_ROPE_FLAT=0 keeps the common layout on rope_kernel (a CTA a token): the flat walk must give the same
// bytes, for q and k as column blocks of one fused qkv row (the engine's layout), partial rotation, F32
// without k, and a position outside the table (its token untouched). Negative control: a changed position
// must show.
TEST(OpsCuda, RotaryFlatMatchesGeneral) {
  BIK_REQUIRE_GPU();
  struct Case {
    DType t;
    int64_t hq, hk, d, rot, tokens;
  };
  const Case cases[] = {{DType::BF16, 32, 8, 128, 128, 1000},
                        {DType::F16, 4, 2, 128, 64, 77},
                        {DType::F32, 3, 0, 64, 64, 50},
                        {DType::BF16, 16, 4, 64, 64, 1}};
  const Device gpu = Device::cuda(0);
  const int64_t max_pos = 2048;
  for (const Case& c : cases) {
    const Tensor table = rope_cos_sin_table(max_pos, c.rot, 10000.0, gpu);
    const int64_t width = (c.hq + 2 * c.hk) * c.d;  // q | k | v of one token
    Shared qkv = shared_tensor({c.tokens, width}, c.t, 1.0, 0.0, uint64_t(width + c.tokens));
    Tensor pos_h = Tensor::empty({c.tokens}, DType::I32);
    for (int64_t t = 0; t < c.tokens; ++t) pos_h.ptr<int32_t>()[t] = int32_t((t * 7919 + 3) % max_pos);
    if (c.tokens > 2) pos_h.ptr<int32_t>()[c.tokens / 2] = int32_t(max_pos);  // outside the table
    const Tensor orig = qkv.dev.to(Device::cpu());  // the bytes before any rotation
    const int64_t es = dtype_size(c.t);
    auto run = [&](const char* flat, const Tensor& pos) {
      Tensor x = orig.to(gpu);
      const TensorView q(x.data(), c.t, {c.tokens, c.hq, c.d}, {width, c.d, 1}, gpu);
      const TensorView k = c.hk == 0 ? TensorView()
                                     : TensorView(static_cast<uint8_t*>(x.data()) + c.hq * c.d * es, c.t,
                                                  {c.tokens, c.hk, c.d}, {width, c.d, 1}, gpu);
      const Tensor pos_dev = pos.to(gpu);
      setenv("BIK_ROPE_FLAT", flat, 1);
      rotary_embedding(q, k, pos_dev, table, true);
      unsetenv("BIK_ROPE_FLAT");
      return x.to(Device::cpu());
    };
    const Tensor a = run("1", pos_h), b = run("0", pos_h);
    const size_t bytes = size_t(c.tokens * width * es);
    EXPECT_EQ(std::memcmp(a.data(), b.data(), bytes), 0) << dn(c.t) << " H=" << c.hq << "/" << c.hk << " rot=" << c.rot;
    // The token outside the table is unchanged; the others' rotated elements moved.
    if (c.tokens > 2) {
      const int64_t off = c.tokens / 2 * width * es;
      EXPECT_EQ(std::memcmp(static_cast<const uint8_t*>(a.data()) + off, static_cast<const uint8_t*>(orig.data()) + off,
                            size_t(width * es)),
                0)
          << dn(c.t) << ": the token outside the table changed";
    }
    EXPECT_NE(std::memcmp(a.data(), orig.data(), bytes), 0) << dn(c.t) << ": nothing rotated";
    if (&c == &cases[0]) {
      // Negative control: the last token at another position must differ.
      Tensor moved = pos_h.to(Device::cpu());
      moved.ptr<int32_t>()[c.tokens - 1] = (moved.ptr<int32_t>()[c.tokens - 1] + 1) % int32_t(max_pos);
      const Tensor m = run("1", moved);
      EXPECT_NE(std::memcmp(m.data(), b.data(), bytes), 0) << "the comparison missed a moved position";
    }
  }
}

TEST(OpsCuda, Embedding) {
  BIK_REQUIRE_GPU();
  expect_clean(embedding_spec(DType::BF16, DType::BF16, 5000, 4096));
  expect_clean(embedding_spec(DType::F32, DType::F32, 100, 7));
  expect_clean(embedding_spec(DType::F16, DType::F32, 300, 1000));
}

// BIK_EMBEDDING_FLAT=0 keeps the common layout on the general kernel: the same bytes, for few tokens (one a
// thread) and many (four a thread), copies and widening to F32, ids outside the table (zero rows, checked
// and reported by the call). Negative control: a changed table element must show.
TEST(OpsCuda, EmbeddingFlatMatchesGeneral) {
  BIK_REQUIRE_GPU();
  struct Case {
    DType t, o;
    int64_t vocab, d, tokens;
  };
  const Case cases[] = {{DType::BF16, DType::BF16, 5000, 4096, 1},   {DType::BF16, DType::BF16, 5000, 4096, 4096},
                        {DType::BF16, DType::F32, 300, 4096, 1024},  {DType::F16, DType::F16, 300, 1000, 3000},
                        {DType::F32, DType::F32, 100, 12, 777},      {DType::F32, DType::F32, 100, 7, 50},
                        {DType::F16, DType::F32, 64, 8, 5}};
  const Device gpu = Device::cuda(0);
  auto ids_for = [](const Case& c, bool with_bad) {
    Tensor h = Tensor::empty({c.tokens}, DType::I32);
    for (int64_t t = 0; t < c.tokens; ++t) h.ptr<int32_t>()[t] = int32_t((t * 7919 + 11) % c.vocab);
    if (with_bad) h.ptr<int32_t>()[c.tokens / 2] = int32_t(c.vocab);  // outside the table: a zero row
    return h.to(Device::cuda(0));
  };
  // An id outside the table: the kernel writes its zero row, then the call throws.
  auto run = [&](const Case& c, const Tensor& table, const Tensor& ids, const char* flat, bool with_bad = false) {
    setenv("BIK_EMBEDDING_FLAT", flat, 1);
    Tensor out = Tensor::empty({c.tokens, c.d}, c.o, gpu);
    bool threw = false;
    try {
      embedding(out, ids, table);
    } catch (const Error&) {
      threw = true;
    }
    unsetenv("BIK_EMBEDDING_FLAT");
    EXPECT_EQ(threw, with_bad) << dn(c.t) << " d=" << c.d << " tokens " << c.tokens << " flat " << flat;
    return out.to(Device::cpu());
  };
  for (const Case& c : cases)
    for (bool with_bad : {false, true}) {
      Shared table = shared_tensor({c.vocab, c.d}, c.t, 1.0, 0.0, uint64_t(c.vocab + c.d));
      const Tensor ids = ids_for(c, with_bad);
      const Tensor a = run(c, table.dev, ids, "1", with_bad), b = run(c, table.dev, ids, "0", with_bad);
      const size_t bytes = size_t(c.tokens * c.d) * dtype_size(c.o);
      EXPECT_EQ(std::memcmp(a.data(), b.data(), bytes), 0)
          << dn(c.t) << "->" << dn(c.o) << " d=" << c.d << " tokens " << c.tokens << (with_bad ? " (bad id)" : "");
      // The rows' values: the table's row, or zeros for the id outside it.
      const Tensor ids_h = ids.to(Device::cpu());
      int64_t wrong = 0;
      for (int64_t t = 0; t < c.tokens; ++t) {
        const int64_t id = ids_h.ptr<int32_t>()[t];
        for (int64_t j = 0; j < c.d; ++j) {
          const double want = id < c.vocab ? table.host[size_t(id * c.d + j)] : 0.0;
          wrong += get(static_cast<const uint8_t*>(a.data()) + (t * c.d + j) * dtype_size(c.o), c.o) != want;
        }
      }
      EXPECT_EQ(wrong, 0) << dn(c.t) << "->" << dn(c.o) << " d=" << c.d << " tokens " << c.tokens;
    }
  // Negative control: the token whose row changed must differ.
  const Case& c = cases[1];
  Shared table = shared_tensor({c.vocab, c.d}, c.t, 1.0, 0.0, uint64_t(c.vocab + c.d));
  const Tensor ids = ids_for(c, false);
  Tensor th = table.dev.to(Device::cpu());
  const int64_t id0 = ids.to(Device::cpu()).ptr<int32_t>()[c.tokens - 1];
  put(static_cast<uint8_t*>(th.data()) + (id0 * c.d + c.d - 1) * 2, c.t, table.host[size_t(id0 * c.d + c.d - 1)] + 1.0);
  const Tensor a = run(c, th.to(gpu), ids, "1"), b = run(c, table.dev, ids, "0");
  EXPECT_NE(std::memcmp(a.data(), b.data(), size_t(c.tokens * c.d) * 2), 0) << "the comparison missed a changed row";
}

TEST(OpsCuda, EmbeddingRejectsBadId) {
  BIK_REQUIRE_GPU();
  Tensor table = Tensor::empty({10, 16}, DType::F32, Device::cuda(0));
  Tensor out = Tensor::empty({3, 16}, DType::F32, Device::cuda(0));
  int32_t ids_h[3] = {1, 12, 2};
  Tensor ids = Tensor::empty({3}, DType::I32, Device::cuda(0));
  memcpy_bytes(ids.data(), ids.device(), ids_h, Device::cpu(), sizeof ids_h);
  EXPECT_THROW(embedding(out, ids, table), Error);
  // The host-ids form checks on the host (no device wait) and gathers the same rows.
  const std::vector<int32_t> bad(ids_h, ids_h + 3), good = {1, 9, 2};
  EXPECT_THROW(embedding(out, ids, table, bad), Error);
  memcpy_bytes(ids.data(), ids.device(), good.data(), Device::cpu(), 3 * sizeof(int32_t));
  std::vector<float> values(160);
  for (size_t i = 0; i < values.size(); ++i) values[i] = float(i) * 0.25f - 7.0f;
  memcpy_bytes(table.data(), table.device(), values.data(), Device::cpu(), int64_t(values.size() * sizeof(float)));
  Tensor a = Tensor::empty({3, 16}, DType::F32, Device::cuda(0)), b = Tensor::empty({3, 16}, DType::F32, Device::cuda(0));
  embedding(a, ids, table);
  embedding(b, ids, table, good);
  const Tensor ha = a.to(Device::cpu()), hb = b.to(Device::cpu());
  EXPECT_EQ(std::memcmp(ha.data(), hb.data(), 3 * 16 * sizeof(float)), 0);
}

TEST(OpsCuda, Sample) {
  BIK_REQUIRE_GPU();
  for (int variant = 0; variant < 6; ++variant) {
    expect_clean(sample_spec(DType::F32, 32000, variant));
    expect_clean(sample_spec(DType::BF16, 151936, variant));
  }
  expect_clean(sample_spec(DType::F16, 37, 4));
}

// The same rows with the same params sample the same token as the CPU backend (the float math of
// log/exp may differ by an ulp, so a rare mismatch is allowed, not expected).
// Rows of 151936 span many tiles of the streaming kernel (and its plain draw's groups across them).
TEST(OpsCuda, SampleMatchesCpu) {
  BIK_REQUIRE_GPU();
  for (auto [rows, vocab] : {std::pair<int64_t, int64_t>{384, 4099}, std::pair<int64_t, int64_t>{66, 151936}}) {
    std::vector<SamplingParams> ps;
    std::vector<uint8_t> bytes(static_cast<size_t>(rows * vocab * 4));
    for (int64_t r = 0; r < rows; ++r) {
      std::vector<double> row(static_cast<size_t>(vocab));
      normal(2.0, 16)(uint64_t(r), row);
      for (int64_t j = 0; j < vocab; ++j) put(bytes.data() + (r * vocab + j) * 4, DType::F32, row[size_t(j)]);
      ps.push_back(params_for(uint64_t(r) + 5000, int(r % 6)));
    }
    Tensor x = Tensor::empty({rows, vocab}, DType::F32);
    std::memcpy(x.data(), bytes.data(), bytes.size());
    Tensor tc = Tensor::empty({rows}, DType::I32), tg = Tensor::empty({rows}, DType::I32, Device::cuda(0));
    sample(tc, x, ps);
    Tensor xg = x.to(Device::cuda(0));
    sample(tg, xg, ps);
    Tensor tg_h = tg.to(Device::cpu());
    int64_t same = 0;
    for (int64_t r = 0; r < rows; ++r) same += tc.ptr<int32_t>()[r] == tg_h.ptr<int32_t>()[r];
    std::printf("sample: GPU matches CPU on %lld of %lld rows of %lld\n", (long long)same, (long long)rows,
                (long long)vocab);
    EXPECT_GE(same, rows - 2) << "V=" << vocab;
  }
}

// The cluster-a-row kernel (sm_90) and the one-CTA-a-row kernel (BIK_SAMPLE_CLUSTER=0) follow one exact
// definition, so they must pick the same token for every row: rows with NaN and -inf logits, rows of only
// -inf, every filter variant, vocabularies shorter than the cluster's slices, params in the launch (up to
// 48 rows) and from memory (more).
TEST(OpsCuda, SampleClusterMatchesRowKernel) {
  BIK_REQUIRE_GPU();
  struct Case {
    DType t;
    int64_t vocab, rows;
  };
  const Device gpu = Device::cuda(0);
  std::mt19937_64 rng(31);
  std::normal_distribution<double> nd(0.0, 3.0);
  for (Case c : {Case{DType::BF16, 151936, 5}, Case{DType::F32, 32000, 48}, Case{DType::F32, 32000, 49},
                 Case{DType::F16, 4099, 300}, Case{DType::F32, 37, 20}}) {
    const int64_t es = int64_t(dtype_size(c.t));
    Tensor xh = Tensor::empty({c.rows, c.vocab}, c.t);
    std::vector<SamplingParams> ps;
    for (int64_t r = 0; r < c.rows; ++r) {
      for (int64_t i = 0; i < c.vocab; ++i) {
        double v = nd(rng);
        if (r % 11 == 5) v = -INFINITY;
        else if (r % 7 == 3 && i % 97 == 0) v = i % 2 ? NAN : -INFINITY;
        put(static_cast<uint8_t*>(xh.data()) + (r * c.vocab + i) * es, c.t, v);
      }
      ps.push_back(params_for(uint64_t(r) * 31 + uint64_t(c.vocab), int(r % 6)));
    }
    Tensor x = xh.to(gpu);
    Tensor a = Tensor::empty({c.rows}, DType::I32, gpu), b = Tensor::empty({c.rows}, DType::I32, gpu);
    setenv("BIK_SAMPLE_CLUSTER", "0", 1);
    sample(a, x, ps);
    unsetenv("BIK_SAMPLE_CLUSTER");
    sample(b, x, ps);
    Tensor ha = a.to(Device::cpu()), hb = b.to(Device::cpu());
    int64_t diff = 0;
    for (int64_t r = 0; r < c.rows; ++r) diff += ha.ptr<int32_t>()[r] != hb.ptr<int32_t>()[r];
    EXPECT_EQ(diff, 0) << dtype_name(c.t) << " V=" << c.vocab << " rows=" << c.rows;
  }
}

// Logits for the streaming tests: normal rows, rows with NaN / -inf / +inf entries, rows of only -inf,
// and rows quantised to a few levels (long runs of equal values: the ties go by index, across the cuts
// of the streaming buffer and across the cluster's slices).
Tensor stress_logits(DType t, int64_t rows, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0.0, 3.0);
  const int64_t es = int64_t(dtype_size(t));
  Tensor xh = Tensor::empty({rows, vocab}, t);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < vocab; ++i) {
      double v = nd(rng);
      if (r % 11 == 5) v = -INFINITY;
      else if (r % 7 == 3 && i % 97 == 0) v = i % 2 ? NAN : -INFINITY;
      else if (r % 13 == 6) v = std::floor(v);               // ~15 levels, thousands of equal values each
      else if (r % 17 == 8 && i == vocab / 2) v = INFINITY;  // +inf dominates
      put(static_cast<uint8_t*>(xh.data()) + (r * vocab + i) * es, t, v);
    }
  return xh.to(Device::cuda(0));
}

std::vector<int32_t> tokens_of(const Tensor& x, const std::vector<SamplingParams>& ps) {
  Tensor tok = Tensor::empty({x.size(0)}, DType::I32, Device::cuda(0));
  sample(tok, x, ps);
  Tensor h = tok.to(Device::cpu());
  return std::vector<int32_t>(h.ptr<int32_t>(), h.ptr<int32_t>() + x.size(0));
}

int64_t count_diffs(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  int64_t d = 0;
  for (size_t i = 0; i < a.size(); ++i) d += a[i] != b[i];
  return d;
}

// The streaming kernel (one read of the row; greedy, top-k up to 1024 with top-p / min-p after it, plain
// temperature) against the kernels that read the row once per pass, for every CTA count a row: the same
// token for every row. Negative control: the same comparison catches a kernel whose top-k keeps one
// more token than asked.
TEST(OpsCuda, SampleStreamMatchesOtherKernels) {
  BIK_REQUIRE_GPU();
  struct Case {
    DType t;
    int64_t vocab, rows;
  };
  int64_t control_diffs = 0;
  for (Case c : {Case{DType::F32, 151936, 40}, Case{DType::BF16, 151936, 7}, Case{DType::F32, 32000, 100},
                 Case{DType::F16, 4099, 60}, Case{DType::F32, 1029, 30}, Case{DType::F32, 37, 20}}) {
    const Tensor x = stress_logits(c.t, c.rows, c.vocab, uint64_t(c.vocab) + uint64_t(c.rows));
    std::vector<SamplingParams> ps;
    for (int64_t r = 0; r < c.rows; ++r) {
      const int v = int(r % 8);
      SamplingParams p = params_for(uint64_t(r) * 7 + uint64_t(c.vocab), v < 3 ? v : 4);  // greedy, plain, k, k+p
      if (v == 4) p.top_k = 1;
      if (v == 5) p.top_k = int32_t(std::min<int64_t>(1024, c.vocab - 1));  // the largest streamed k
      if (v == 6) p.top_k = int32_t(c.vocab - 1);                           // streamed only when <= 1024
      if (v == 7) {
        p.top_k = 40;
        p.min_p = 0.05f;
      }
      ps.push_back(p);
    }
    setenv("BIK_SAMPLE_STREAM", "0", 1);
    const std::vector<int32_t> want = tokens_of(x, ps);
    setenv("BIK_SAMPLE_CLUSTER", "0", 1);
    EXPECT_EQ(count_diffs(want, tokens_of(x, ps)), 0) << "cluster vs row kernel, V=" << c.vocab;
    unsetenv("BIK_SAMPLE_CLUSTER");
    unsetenv("BIK_SAMPLE_STREAM");
    EXPECT_EQ(count_diffs(want, tokens_of(x, ps)), 0) << dtype_name(c.t) << " V=" << c.vocab << " default CTAs";
    for (const char* ctas : {"1", "2", "4", "8"}) {
      setenv("BIK_SAMPLE_STREAM_CTAS", ctas, 1);
      EXPECT_EQ(count_diffs(want, tokens_of(x, ps)), 0) << dtype_name(c.t) << " V=" << c.vocab << " CTAs=" << ctas;
      // The control: the same streamed run with k + 1 for the top-k rows.
      std::vector<SamplingParams> more = ps;
      for (SamplingParams& p : more)
        if (p.temperature > 0 && p.top_k > 0 && p.top_k < std::min<int64_t>(1024, c.vocab - 1)) p.top_k += 1;
      control_diffs += count_diffs(want, tokens_of(x, more));
    }
    unsetenv("BIK_SAMPLE_STREAM_CTAS");
  }
  EXPECT_GT(control_diffs, 0) << "the comparison did not notice a top-k keeping one token too many";
}

// The plain draw's distribution on the device, through each kernel that takes such rows (streaming, the
// cluster slices, one CTA a row): the check of the CPU's Sampling.PlainDrawMatchesSoftmaxAcrossGroups,
// which also rejects a draw scoring each group by its largest logit alone.
TEST(OpsCuda, PlainDrawMatchesSoftmaxAcrossGroups) {
  BIK_REQUIRE_GPU();
  const test::PlainDrawCase c;
  const int64_t draws = test::kPlainDrawDraws;
  Tensor xh = Tensor::empty({draws, int64_t(c.logits.size())}, DType::F32);
  std::vector<SamplingParams> ps;
  c.batch(draws, 78, xh.ptr<float>(), ps);
  const Tensor x = xh.to(Device::cuda(0));
  const char* kernels[] = {"streaming", "cluster", "row"};
  for (int kernel = 0; kernel < 3; ++kernel) {
    if (kernel >= 1) setenv("BIK_SAMPLE_STREAM", "0", 1);
    if (kernel == 2) setenv("BIK_SAMPLE_CLUSTER", "0", 1);
    const std::vector<int32_t> tok = tokens_of(x, ps);
    unsetenv("BIK_SAMPLE_STREAM");
    unsetenv("BIK_SAMPLE_CLUSTER");
    const test::PlainDrawCase::Fit f = c.fit(tok.data(), draws);
    ASSERT_TRUE(f.in_range) << kernels[kernel] << ": a token outside the row";
    std::printf("plain draw (%s): chi2 %.1f against softmax, %.1f against the group-maximum draw\n",
                kernels[kernel], f.right, f.wrong);
    EXPECT_LT(f.right, test::kPlainDrawChi2Limit) << kernels[kernel];
    EXPECT_GT(f.wrong, 10 * test::kPlainDrawChi2Limit) << kernels[kernel];
  }
}

// Pruning the Gumbel draw (a score that surely loses to the best so far is not formed) leaves every
// token as it is: each kernel that draws over a kept set, pruned against BIK_SAMPLE_PRUNE=0, on rows of
// every filter and of temperatures from 0.05 (scores far apart: most elements pruned) to 8 (none skipped
// by the bound), NaN / +-inf rows included. Negative control: pruning elements that may still win by up to 8.0
// (BIK_SAMPLE_PRUNE=loose) changes tokens, and this comparison sees it.
TEST(OpsCuda, SamplePruneKeepsTheToken) {
  BIK_REQUIRE_GPU();
  struct Case {
    DType t;
    int64_t vocab, rows;
  };
  int64_t control_diffs = 0;
  for (Case c : {Case{DType::F32, 151936, 96}, Case{DType::BF16, 151936, 24}, Case{DType::F32, 4099, 300}}) {
    const Tensor x = stress_logits(c.t, c.rows, c.vocab, uint64_t(c.vocab) * 5 + uint64_t(c.rows));
    std::vector<SamplingParams> ps;
    const float temps[] = {0.05f, 0.3f, 0.8f, 1.0f, 2.0f, 8.0f};
    for (int64_t r = 0; r < c.rows; ++r) {
      SamplingParams p = params_for(uint64_t(r) * 13 + uint64_t(c.vocab), r % 4 == 0 ? 1 + int(r / 4 % 5) : 1);
      p.temperature = temps[(r / 2) % 6];
      ps.push_back(p);
    }
    // Every row keeping nearly every token (min-p 1e-6: a draw over most of the row, where the prune
    // skips the most; the plain draw, without a filter, scores groups and has nothing to prune), then
    // the mix (other paths and kernels).
    std::vector<SamplingParams> plain = ps;
    for (SamplingParams& p : plain) p.top_k = 0, p.top_p = 1.0f, p.min_p = 1e-6f;
    // The kernels: streaming (default), the cluster-slice kernel (no streaming), one CTA a row (neither).
    const char* kernels[] = {"streaming", "cluster", "row"};
    for (const std::vector<SamplingParams>* set : {&plain, &ps})
      for (int kernel = 0; kernel < 3; ++kernel) {
        if (kernel >= 1) setenv("BIK_SAMPLE_STREAM", "0", 1);
        if (kernel == 2) setenv("BIK_SAMPLE_CLUSTER", "0", 1);
        setenv("BIK_SAMPLE_PRUNE", "0", 1);
        const std::vector<int32_t> want = tokens_of(x, *set);
        unsetenv("BIK_SAMPLE_PRUNE");
        EXPECT_EQ(count_diffs(want, tokens_of(x, *set)), 0) << dtype_name(c.t) << " V=" << c.vocab << " "
                                                            << kernels[kernel] << (set == &plain ? " min-p" : " mixed");
        setenv("BIK_SAMPLE_PRUNE", "loose", 1);
        control_diffs += count_diffs(want, tokens_of(x, *set));
        unsetenv("BIK_SAMPLE_PRUNE");
        unsetenv("BIK_SAMPLE_STREAM");
        unsetenv("BIK_SAMPLE_CLUSTER");
      }
  }
  EXPECT_GT(control_diffs, 0) << "the comparison did not notice a draw that prunes possible winners";
}

// A row samples the same token alone and inside batches of every size the streaming kernel splits
// differently (CTAs a row: 8 for few rows, fewer for many), at every position in the batch.
TEST(OpsCuda, SampleStreamRowAloneEqualsRowInBatches) {
  BIK_REQUIRE_GPU();
  const int64_t vocab = 151936, rows = 300;
  const Tensor x = stress_logits(DType::F32, rows, vocab, 77);
  std::vector<SamplingParams> ps;
  for (int64_t r = 0; r < rows; ++r) ps.push_back(params_for(uint64_t(r) + 900, int(r % 3) == 0 ? 4 : int(r % 3)));
  const std::vector<int32_t> all = tokens_of(x, ps);
  for (int64_t m : {int64_t(1), int64_t(3), int64_t(17), int64_t(64), int64_t(133)}) {
    for (int64_t r0 = 0; r0 + m <= rows; r0 += 97) {
      const Tensor part = x.narrow(0, r0, m);
      const std::vector<SamplingParams> pp(ps.begin() + r0, ps.begin() + r0 + m);
      const std::vector<int32_t> got = tokens_of(part, pp);
      for (int64_t r = 0; r < m; ++r) EXPECT_EQ(got[size_t(r)], all[size_t(r0 + r)]) << "row " << r0 + r << " in " << m;
    }
  }
}

// A batch whose rows all take one path of the streaming kernel (the plain draw; top-k, with or without
// top-p) runs a kernel compiled for that path alone. Each row's token is the one the general streaming
// kernel gives it in a mixed batch (a greedy row appended) and the one the pass kernels give, at a few
// rows a batch (a cluster of CTAs a row) and at many (one CTA a row, parameters of the large form).
// Control: the same comparison sees the tokens of the rows with their seeds moved by one.
TEST(OpsCuda, SampleStreamPathKernelsMatchTheGeneralKernel) {
  BIK_REQUIRE_GPU();
  const int64_t vocab = 151936;
  int64_t control_diffs = 0;
  for (DType t : {DType::F32, DType::BF16})
    for (int64_t rows : {int64_t(5), int64_t(300)})
      for (int variant : {1, 2, 4}) {  // temperature alone, top-k, top-k + top-p
        const Tensor x = stress_logits(t, rows + 1, vocab, uint64_t(rows) * 11 + uint64_t(variant));
        const Tensor head = x.narrow(0, 0, rows);
        std::vector<SamplingParams> ps;
        for (int64_t r = 0; r < rows; ++r) ps.push_back(params_for(uint64_t(r) * 31 + uint64_t(variant), variant));
        const std::string what = std::string(dtype_name(t)) + " rows=" + std::to_string(rows) + " " +
                                 variant_name(variant);
        const std::vector<int32_t> uniform = tokens_of(head, ps);
        std::vector<SamplingParams> mixed = ps;
        mixed.push_back(params_for(7, 0));  // a greedy row: the batch takes the general kernel
        std::vector<int32_t> general = tokens_of(x, mixed);
        general.resize(size_t(rows));
        EXPECT_EQ(count_diffs(uniform, general), 0) << what << ": path kernel vs general kernel";
        setenv("BIK_SAMPLE_STREAM", "0", 1);
        EXPECT_EQ(count_diffs(uniform, tokens_of(head, ps)), 0) << what << ": path kernel vs pass kernels";
        unsetenv("BIK_SAMPLE_STREAM");
        std::vector<SamplingParams> moved = ps;
        for (SamplingParams& p : moved) p.seed += 1;
        control_diffs += count_diffs(uniform, tokens_of(head, moved));
      }
  EXPECT_GT(control_diffs, 0) << "the comparison did not notice other seeds";
}

// A token outside the vocabulary is an error naming the first such row, from each logprobs kernel (a
// cluster a row for few rows, the 512-thread kernel for many f32 rows, the 1024-thread streaming kernel
// for 16-bit rows, the pass kernel for short rows), with the tokens a strided column; the next call with
// good tokens succeeds and gives the logprobs of a call that never saw a bad token.
TEST(OpsCuda, LogprobsNamesTheFirstTokenOutsideTheVocabulary) {
  BIK_REQUIRE_GPU();
  struct Case {
    DType t;
    int64_t vocab, rows, top_n;
  };
  const Device gpu = Device::cuda(0);
  for (Case c : {Case{DType::F32, 151936, 5, 20}, Case{DType::F32, 151936, 300, 20}, Case{DType::BF16, 151936, 100, 5},
                 Case{DType::F32, 50, 9, 0}}) {
    const Tensor x = stress_logits(c.t, c.rows, c.vocab, uint64_t(c.rows) + 3);
    // The tokens are column 1 of an i32 [rows, 2] tensor (column 0 holds -7 everywhere).
    Tensor tok_h = Tensor::empty({c.rows, 2}, DType::I32);
    for (int64_t r = 0; r < c.rows; ++r) {
      tok_h.ptr<int32_t>()[2 * r] = -7;
      tok_h.ptr<int32_t>()[2 * r + 1] = int32_t((r * 131) % c.vocab);
    }
    const int64_t bad1 = c.rows / 2, bad2 = c.rows - 1;
    Tensor good_h = tok_h.to(Device::cpu());
    tok_h.ptr<int32_t>()[2 * bad1 + 1] = int32_t(c.vocab);
    tok_h.ptr<int32_t>()[2 * bad2 + 1] = -1;
    const Tensor tok = tok_h.to(gpu), good = good_h.to(gpu);
    auto column = [&](const Tensor& tk) {
      return TensorView(static_cast<int32_t*>(tk.data()) + 1, DType::I32, {c.rows}, {2}, gpu);
    };
    Tensor ch = Tensor::empty({c.rows}, DType::F32, gpu), ids = Tensor::empty({c.rows, c.top_n}, DType::I32, gpu),
           vals = Tensor::empty({c.rows, c.top_n}, DType::F32, gpu);
    const std::string what = std::string(dtype_name(c.t)) + " V=" + std::to_string(c.vocab) +
                             " rows=" + std::to_string(c.rows);
    const std::string want = "logprobs: tokens[" + std::to_string(bad1) + "] = " + std::to_string(c.vocab) +
                             " is outside the vocabulary [0, " + std::to_string(c.vocab) + ")";
    logprobs(ch, ids, vals, x, column(good));
    const Tensor before = ch.to(Device::cpu());
    try {
      logprobs(ch, ids, vals, x, column(tok));
      ADD_FAILURE() << what << ": no error for a token outside the vocabulary";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << what << ": " << e.what();
    }
    logprobs(ch, ids, vals, x, column(good));
    const Tensor after = ch.to(Device::cpu());
    EXPECT_EQ(std::memcmp(before.data(), after.data(), size_t(c.rows) * 4), 0) << what;
    for (int64_t r = 0; r < c.rows; ++r) {
      const float v = after.ptr<float>()[r];
      EXPECT_TRUE(v <= 0.0f || std::isnan(v)) << what << " row " << r << ": " << v;  // NaN rows of the stress set
    }
  }
}

// Logprobs from the one-read kernel against the pass-per-select kernel, bit for bit (chosen, ids,
// values), and the ids against the CPU backend's (an exact order of the logits, no float math). The
// control: the same comparison notices the top n of a different row.
TEST(OpsCuda, LogprobsStreamMatchesPassKernel) {
  BIK_REQUIRE_GPU();
  struct Case {
    DType t;
    int64_t vocab, rows, top_n;
  };
  for (Case c : {Case{DType::F32, 151936, 24, 20}, Case{DType::BF16, 151936, 9, 1024}, Case{DType::F32, 32000, 70, 1},
                 Case{DType::F16, 50000, 13, 5}, Case{DType::F32, 4099, 40, 20}, Case{DType::F32, 151936, 5, 0}}) {
    const Tensor x = stress_logits(c.t, c.rows, c.vocab, uint64_t(c.vocab) * 3 + uint64_t(c.top_n));
    Tensor tok_h = Tensor::empty({c.rows}, DType::I32);
    for (int64_t r = 0; r < c.rows; ++r) tok_h.ptr<int32_t>()[r] = int32_t((r * 7919) % c.vocab);
    const Tensor tok = tok_h.to(Device::cuda(0));
    auto run = [&](const Tensor& xs) {
      const Device gpu = Device::cuda(0);
      Tensor ch = Tensor::empty({c.rows}, DType::F32, gpu), ids = Tensor::empty({c.rows, c.top_n}, DType::I32, gpu),
             vals = Tensor::empty({c.rows, c.top_n}, DType::F32, gpu);
      logprobs(ch, ids, vals, xs, tok);
      return std::vector<Tensor>{ch.to(Device::cpu()), ids.to(Device::cpu()), vals.to(Device::cpu())};
    };
    setenv("BIK_LOGPROBS_STREAM", "0", 1);
    const std::vector<Tensor> want = run(x);
    unsetenv("BIK_LOGPROBS_STREAM");
    std::vector<Tensor> got;
    // The cluster kernels (default 4 CTAs a row, 2) and the one-CTA streaming kernels (0): for F32 rows of
    // the largest plan the 512-thread kernel, and with BIK_LOGPROBS_HALF=0 the 1024-thread one.
    for (const char* cl : {"0", "0 half=0", "2", "4"}) {
      const bool full = std::string(cl) == "0 half=0";
      setenv("BIK_LOGPROBS_CLUSTER", full ? "0" : cl, 1);
      if (full) setenv("BIK_LOGPROBS_HALF", "0", 1);
      got = run(x);
      unsetenv("BIK_LOGPROBS_HALF");
      const std::string what = std::string(dtype_name(c.t)) + " V=" + std::to_string(c.vocab) +
                               " n=" + std::to_string(c.top_n) + " cluster=" + cl;
      EXPECT_EQ(std::memcmp(want[0].data(), got[0].data(), size_t(c.rows) * 4), 0) << what << " chosen";
      EXPECT_EQ(std::memcmp(want[1].data(), got[1].data(), size_t(c.rows * c.top_n) * 4), 0) << what << " ids";
      EXPECT_EQ(std::memcmp(want[2].data(), got[2].data(), size_t(c.rows * c.top_n) * 4), 0) << what << " values";
    }
    unsetenv("BIK_LOGPROBS_CLUSTER");
    const std::string what = std::string(dtype_name(c.t)) + " V=" + std::to_string(c.vocab) + " n=" + std::to_string(c.top_n);
    if (c.top_n == 0) continue;
    // The CPU backend's ids.
    const Tensor xc = x.to(Device::cpu());
    Tensor ch = Tensor::empty({c.rows}, DType::F32), ids = Tensor::empty({c.rows, c.top_n}, DType::I32),
           vals = Tensor::empty({c.rows, c.top_n}, DType::F32);
    logprobs(ch, ids, vals, xc, tok_h);
    EXPECT_EQ(std::memcmp(ids.data(), got[1].data(), size_t(c.rows * c.top_n) * 4), 0) << what << " ids vs CPU";
    // Control: row 0's ids against row 1's must differ.
    EXPECT_NE(std::memcmp(got[1].ptr<int32_t>(), got[1].ptr<int32_t>() + c.top_n, size_t(c.top_n) * 4), 0) << what;
  }
}

// A top value is taken from its key where the key holds the logit exactly (finite, not zero) and read
// from the row otherwise; the chosen token's logprob always reads the row. So asking for each top token
// as the chosen one must give the top value's bits, on every kernel, for rows whose top holds +0 and -0
// (a key keeps no zero sign), NaNs (nor their payload), +inf, and ordinary values. The control: the
// same comparison against the next rank's value notices the difference on the ordinary row.
TEST(OpsCuda, LogprobsTopValuesEqualTheChosenTokensLogprobs) {
  BIK_REQUIRE_GPU();
  const int64_t rows = 4, vocab = 151936, top_n = 8;
  const Device gpu = Device::cuda(0);
  Tensor xh = Tensor::empty({rows, vocab}, DType::F32);
  std::mt19937_64 rng(77);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < vocab; ++i) {
      float v = nd(rng);
      if (r == 0) v = i % 5000 == 7 ? (i % 2 ? -0.0f : 0.0f) : -std::fabs(v) - 1.0f;  // zeros on top
      if (r == 1 && i % 40000 == 3) v = std::bit_cast<float>(0x7fc00000u | uint32_t(i));  // NaN payloads
      if (r == 2 && i == 1234) v = INFINITY;
      xh.ptr<float>()[r * vocab + i] = v;
    }
  const Tensor x = xh.to(gpu);
  Tensor ch = Tensor::empty({rows}, DType::F32, gpu), ids = Tensor::empty({rows, top_n}, DType::I32, gpu),
         vals = Tensor::empty({rows, top_n}, DType::F32, gpu);
  Tensor tok_h = Tensor::empty({rows}, DType::I32);
  for (const char* kernel : {"cluster", "half", "stream 1024", "passes"}) {
    const std::string k = kernel;
    if (k == "half" || k == "stream 1024") setenv("BIK_LOGPROBS_CLUSTER", "0", 1);
    if (k == "stream 1024") setenv("BIK_LOGPROBS_HALF", "0", 1);
    if (k == "passes") setenv("BIK_LOGPROBS_STREAM", "0", 1);
    for (int64_t r = 0; r < rows; ++r) tok_h.ptr<int32_t>()[r] = 0;
    logprobs(ch, ids, vals, x, tok_h.to(gpu));
    const Tensor ids_h = ids.to(Device::cpu()), vals_h = vals.to(Device::cpu());
    int64_t zeros = 0, nans = 0, next_differs = 0;
    for (int64_t j = 0; j < top_n; ++j) {
      for (int64_t r = 0; r < rows; ++r) tok_h.ptr<int32_t>()[r] = ids_h.ptr<int32_t>()[r * top_n + j];
      logprobs(ch, ids, vals, x, tok_h.to(gpu));
      const Tensor ch_h = ch.to(Device::cpu());
      for (int64_t r = 0; r < rows; ++r) {
        const float top = vals_h.ptr<float>()[r * top_n + j], got = ch_h.ptr<float>()[r];
        const float logit = xh.ptr<float>()[r * vocab + tok_h.ptr<int32_t>()[r]];
        zeros += logit == 0.0f;
        nans += std::isnan(logit);
        EXPECT_EQ(std::bit_cast<uint32_t>(top), std::bit_cast<uint32_t>(got))
            << kernel << ": row " << r << " rank " << j << " (logit " << logit << "): top value " << top
            << ", chosen " << got;
        if (r == 3 && j + 1 < top_n)
          next_differs += std::bit_cast<uint32_t>(vals_h.ptr<float>()[r * top_n + j + 1]) != std::bit_cast<uint32_t>(got);
      }
    }
    unsetenv("BIK_LOGPROBS_CLUSTER");
    unsetenv("BIK_LOGPROBS_HALF");
    unsetenv("BIK_LOGPROBS_STREAM");
    EXPECT_GT(zeros, 0) << kernel << ": no zero logit among the top values";
    EXPECT_GT(nans, 0) << kernel << ": no NaN logit among the top values";
    EXPECT_GT(next_differs, 0) << kernel << ": the comparison cannot tell one rank's value from the next";
  }
}

TEST(OpsCuda, Logprobs) {
  BIK_REQUIRE_GPU();
  expect_clean(logprobs_spec(DType::F32, 32000, 5));
  expect_clean(logprobs_spec(DType::BF16, 151936, 20));
  expect_clean(logprobs_spec(DType::F16, 50, 0));
}

// Negative control: a row sum whose split across CTAs depends on M must be caught by the same procedure.
TEST(OpsCuda, NegativeControlSplitByM) {
  BIK_REQUIRE_GPU();
#if BIK_WITH_CUDA
  OpSpec op;
  op.name = "negative control: sum split by M";
  op.bufs.push_back({"x", DType::BF16, 8192, Role::In, 0, normal(1.0, 17)});
  op.bufs.push_back({"out", DType::F32, 1, Role::Out, 1e-4, {}});
  op.run = [](const std::vector<TensorView>& v, const std::vector<uint64_t>&) {
    const int64_t m = v[0].shape[0];
    cuda::sum_rows_split_by_m(TensorView(v[1].data, DType::F32, {m}, {v[1].stride[0]}, v[1].device), v[0]);
  };
  op.ref = [](const Rows& in, Rows& out, uint64_t) {
    double s = 0;
    for (double x : in[0]) s += x;
    out[1][0] = s;
  };
  const Report r = check_op(op);
  EXPECT_GT(r.diffs, 0) << "the harness did not detect a reduction whose split depends on M";
  EXPECT_TRUE(r.accurate);  // it is accurate, only not invariant
#endif
}

// The engine's greedy steps take the token and its logprob from logprobs' top 1 (greedy_top_case.h): on
// the GPU's kernels (the streaming ones over rows of 151936, the pass kernels on short rows; 300 rows take
// the launches in batches) the same token as sample() at temperature 0 and the same logprob bits as
// logprobs() given that token; the last-maximum control differs on some rows.
TEST(OpsCuda, GreedyTokenIsTheTopLogprob) {
  BIK_REQUIRE_GPU();
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    for (auto [rows, v] : {std::pair<int64_t, int64_t>{24, 8}, {24, 501}, {24, 32000}, {24, 151936}, {300, 151936}}) {
      const test::GreedyTopCounts c = test::greedy_top_counts(test::greedy_top_tensor(rows, v, 5, dt, Device::cuda(0)));
      EXPECT_EQ(c.token_diffs, 0) << dtype_name(dt) << " " << rows << " x " << v;
      EXPECT_EQ(c.chosen_diffs, 0) << dtype_name(dt) << " " << rows << " x " << v;
      EXPECT_GT(c.control_diffs, 0) << dtype_name(dt) << " " << rows << " x " << v;
    }
  }
}

}  // namespace
}  // namespace bik

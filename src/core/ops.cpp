// Argument validation and dispatch for every op. Errors name the op, the argument and its shape.
#include "bik/ops.h"

#include <algorithm>
#include <type_traits>

#include "core/backend.h"
#include "core/memory.h"

namespace bik {
namespace {

void check_float(const char* op, const char* arg, const TensorView& t) {
  BIK_CHECK(is_floating(t.dtype), op, ": ", arg, " must be f32, f16 or bf16, got ", t.str());
}
void check_same_device(const char* op, const TensorView& ref, const char* arg, const TensorView& t) {
  BIK_CHECK(t.device == ref.device, op, ": ", arg, " is on ", t.device.str(), " but the other operands are on ",
            ref.device.str());
}
void check_data(const char* op, const char* arg, const TensorView& t) {
  BIK_CHECK(t.data != nullptr || t.numel() == 0, op, ": ", arg, " has no data (null pointer) for ", t.str());
}
void check_out_dtype(const char* op, const TensorView& out, DType in) {
  BIK_CHECK(out.dtype == in || out.dtype == DType::F32, op, ": out must be ", dtype_name(in), " or f32, got ",
            out.str());
}
void check_same_shape(const char* op, const char* a_name, const TensorView& a, const char* b_name,
                      const TensorView& b) {
  BIK_CHECK(a.sizes() == b.sizes(), op, ": ", a_name, " ", a.str(), " and ", b_name, " ", b.str(),
            " must have the same shape");
}
void check_min_dims(const char* op, const char* arg, const TensorView& t, int n) {
  BIK_CHECK(t.ndim >= n, op, ": ", arg, " needs at least ", n, " dims, got ", t.str());
}
void check_vector(const char* op, const char* arg, const TensorView& t, int64_t n, DType x_dtype) {
  BIK_CHECK(t.ndim == 1 && t.shape[0] == n, op, ": ", arg, " must be [", n, "], got ", t.str());
  BIK_CHECK(t.dtype == x_dtype || t.dtype == DType::F32, op, ": ", arg, " must be ", dtype_name(x_dtype),
            " or f32, got ", t.str());
}

template <class... Args>
void dispatch_device(const TensorView& ref, void (*cpu_fn)(Args...), void (*cuda_fn)(Args...),
                     std::type_identity_t<Args>... args) {
  if (ref.device.is_cpu())
    cpu_fn(args...);
  else
    cuda_fn(args...);
}


// The validated GemmArgs of a product (mm, addmm, bmm) or, gated, of mm_silu_and_mul (b holds 2 d rows,
// out has d columns in a's dtype); nullopt when there is nothing to compute.
std::optional<GemmArgs> checked_gemm_args(const char* op, const TensorView& out, const std::optional<TensorView>& bias,
                                          const TensorView& a, const TensorView& b, int dims, bool gated = false) {
  BIK_CHECK(a.ndim == dims, op, ": a must have ", dims, " dims, got ", a.str());
  BIK_CHECK(b.ndim == dims, op, ": b must have ", dims, " dims ([", dims == 3 ? "B, " : "", gated ? "2d" : "N",
            ", K]), got ", b.str());
  BIK_CHECK(out.ndim == dims, op, ": out must have ", dims, " dims, got ", out.str());
  check_float(op, "a", a);
  BIK_CHECK(b.dtype == a.dtype, op, ": a is ", dtype_name(a.dtype), " but b is ", dtype_name(b.dtype),
            "; both must share one dtype");
  if (gated)
    BIK_CHECK(out.dtype == a.dtype, op, ": out must be ", dtype_name(a.dtype), " (a's dtype), got ", out.str());
  else
    check_out_dtype(op, out, a.dtype);
  check_same_device(op, a, "b", b);
  check_same_device(op, a, "out", out);
  GemmArgs g;
  g.a = as3d(a);
  g.w = as3d(b);
  g.out = as3d(out);
  g.batch = g.a.shape[0];
  g.m = g.a.shape[1];
  g.k = g.a.shape[2];
  g.n = g.w.shape[1];
  BIK_CHECK(g.w.shape[2] == g.k, op, ": a ", a.str(), " has K = ", g.k, " but b ", b.str(), " has K = ", g.w.shape[2],
            " (b is [N, K], the nn.Linear weight layout)");
  BIK_CHECK(g.w.shape[0] == g.batch, op, ": batch of a (", g.batch, ") and b (", g.w.shape[0], ") differ");
  if (gated)
    BIK_CHECK(g.n % 2 == 0, op, ": b must stack gate and up rows ([2d, K]), got an odd row count in ", b.str());
  const int64_t n_out = gated ? g.n / 2 : g.n;
  BIK_CHECK(g.out.shape[0] == g.batch && g.out.shape[1] == g.m && g.out.shape[2] == n_out, op, ": out must be ",
            dims == 3 ? "[B, M, N] = [" : gated ? "[M, d] = [" : "[M, N] = [",
            dims == 3 ? detail::concat(g.batch, ", ") : "", g.m, ", ", n_out, "], got ", out.str());
  if (bias) {
    check_same_device(op, a, "bias", *bias);
    check_vector(op, "bias", *bias, g.n, a.dtype);
    g.bias = bias;
  }
  check_data(op, "a", a);
  check_data(op, "b", b);
  check_data(op, "out", out);
  if (g.m == 0 || g.n == 0 || g.batch == 0) return std::nullopt;
  return g;
}

void gemm_checked(const char* op, const TensorView& out, const std::optional<TensorView>& bias, const TensorView& a,
                  const TensorView& b, int dims, Stream s) {
  if (const std::optional<GemmArgs> g = checked_gemm_args(op, out, bias, a, b, dims))
    dispatch_device(a, &cpu::gemm, &cuda::gemm, *g, s);
}

// Validates a row op's x/out pair: same shape, float, out dtype x's or F32, same device, >= 1 dim.
void check_rows(const char* op, const TensorView& out, const TensorView& x, bool out_may_be_f32 = true) {
  check_min_dims(op, "x", x, 1);
  check_float(op, "x", x);
  check_same_shape(op, "out", out, "x", x);
  if (out_may_be_f32)
    check_out_dtype(op, out, x.dtype);
  else
    BIK_CHECK(out.dtype == x.dtype, op, ": out must be ", dtype_name(x.dtype), ", got ", out.str());
  check_same_device(op, x, "out", out);
  check_data(op, "x", x);
  check_data(op, "out", out);
}

}  // namespace

void mm(const TensorView& out, const TensorView& a, const TensorView& b, Stream s) {
  gemm_checked("mm", out, std::nullopt, a, b, 2, s);
}
void addmm(const TensorView& out, const TensorView& bias, const TensorView& a, const TensorView& b, Stream s) {
  gemm_checked("addmm", out, bias, a, b, 2, s);
}
void bmm(const TensorView& out, const TensorView& a, const TensorView& b, Stream s) {
  gemm_checked("bmm", out, std::nullopt, a, b, 3, s);
}
void mm_silu_and_mul(const TensorView& out, const TensorView& a, const TensorView& b, Stream s) {
  if (const std::optional<GemmArgs> g = checked_gemm_args("mm_silu_and_mul", out, std::nullopt, a, b, 2, true))
    dispatch_device(a, &cpu::gemm_silu_and_mul, &cuda::gemm_silu_and_mul, *g, s);
}

void sum_partials(const TensorView& out, const TensorView& partials, const std::optional<TensorView>& bias,
                  Stream s) {
  const char* op = "sum_partials";
  BIK_CHECK(partials.ndim == 3, op, ": partials must be [P, M, N], got ", partials.str());
  BIK_CHECK(partials.dtype == DType::F32, op, ": partials must be f32, got ", partials.str());
  const int64_t p = partials.shape[0], m = partials.shape[1], n = partials.shape[2];
  BIK_CHECK(p >= 1 && (p & (p - 1)) == 0, op, ": the number of partials must be a power of two (1, 2, 4, ...), got ",
            p, " in ", partials.str());
  BIK_CHECK(out.ndim == 2 && out.shape[0] == m && out.shape[1] == n, op, ": out must be [", m, ", ", n, "], got ",
            out.str());
  check_float(op, "out", out);
  check_same_device(op, partials, "out", out);
  if (bias) {
    check_same_device(op, partials, "bias", *bias);
    check_vector(op, "bias", *bias, n, out.dtype);
  }
  check_data(op, "partials", partials);
  check_data(op, "out", out);
  if (m == 0 || n == 0) return;
  dispatch_device(out, &cpu::sum_partials, &cuda::sum_partials, out, partials, bias, s);
}

void rms_norm(const TensorView& out, const TensorView& x, const TensorView& weight, float eps,
              const std::optional<TensorView>& residual, Stream s) {
  check_rows("rms_norm", out, x);
  check_same_device("rms_norm", x, "weight", weight);
  check_vector("rms_norm", "weight", weight, x.size(-1), x.dtype);
  BIK_CHECK(eps >= 0, "rms_norm: eps must be >= 0, got ", eps);
  if (residual) {
    check_same_shape("rms_norm", "residual", *residual, "x", x);
    BIK_CHECK(residual->dtype == x.dtype, "rms_norm: residual must be ", dtype_name(x.dtype), ", got ",
              residual->str());
    check_same_device("rms_norm", x, "residual", *residual);
  }
  if (x.numel() == 0) return;
  dispatch_device(x, &cpu::rms_norm, &cuda::rms_norm, out, x, weight, eps, residual, s);
}

namespace {
void check_layer_norm(const TensorView& out, const TensorView& x, const std::optional<TensorView>& weight,
                      const std::optional<TensorView>& bias, float eps) {
  check_rows("layer_norm", out, x);
  if (weight) {
    check_same_device("layer_norm", x, "weight", *weight);
    check_vector("layer_norm", "weight", *weight, x.size(-1), x.dtype);
  }
  if (bias) {
    check_same_device("layer_norm", x, "bias", *bias);
    check_vector("layer_norm", "bias", *bias, x.size(-1), x.dtype);
  }
  BIK_CHECK(eps >= 0, "layer_norm: eps must be >= 0, got ", eps);
}
}  // namespace

void layer_norm(const TensorView& out, const TensorView& x, const std::optional<TensorView>& weight,
                const std::optional<TensorView>& bias, float eps, Stream s) {
  check_layer_norm(out, x, weight, bias, eps);
  if (x.numel() == 0) return;
  const TensorView* none = nullptr;
  dispatch_device(x, &cpu::layer_norm, &cuda::layer_norm, out, x, weight, bias, eps, none, none, s);
}

void layer_norm_with_stats(const TensorView& out, const TensorView& mean, const TensorView& rstd, const TensorView& x,
                           const std::optional<TensorView>& weight, const std::optional<TensorView>& bias, float eps,
                           Stream s) {
  check_layer_norm(out, x, weight, bias, eps);
  for (const auto& [name, t] : {std::pair<const char*, const TensorView&>{"mean", mean}, {"rstd", rstd}}) {
    BIK_CHECK(t.dtype == DType::F32, "layer_norm: ", name, " must be F32, got ", t.str());
    Shape want = x.sizes();
    want.back() = 1;
    BIK_CHECK(t.sizes() == want, "layer_norm: ", name, " must have x's shape with the last dim 1, got ", t.str(),
              " for x ", x.str());
    check_same_device("layer_norm", x, name, t);
    check_data("layer_norm", name, t);
  }
  if (x.numel() == 0) return;
  const TensorView* m = &mean;
  const TensorView* r = &rstd;
  dispatch_device(x, &cpu::layer_norm, &cuda::layer_norm, out, x, weight, bias, eps, m, r, s);
}

void softmax(const TensorView& out, const TensorView& x, Stream s) {
  check_rows("softmax", out, x);
  if (x.numel() == 0) return;
  dispatch_device(x, &cpu::softmax, &cuda::softmax, out, x, false, s);
}
void log_softmax(const TensorView& out, const TensorView& x, Stream s) {
  check_rows("log_softmax", out, x);
  if (x.numel() == 0) return;
  dispatch_device(x, &cpu::softmax, &cuda::softmax, out, x, true, s);
}

namespace {
void reduce_checked(const char* op, const TensorView& out, const TensorView& x, const std::vector<int>& dims,
                    bool keepdim, bool is_mean, Stream s) {
  check_float(op, "x", x);
  check_out_dtype(op, out, x.dtype);
  check_same_device(op, x, "out", out);
  check_data(op, "x", x);
  check_data(op, "out", out);
  std::array<bool, kMaxDims> reduced{};
  if (dims.empty()) {
    for (int d = 0; d < x.ndim; ++d) reduced[d] = true;
  }
  for (int d : dims) {
    BIK_CHECK(d >= -x.ndim && d < x.ndim, op, ": dim ", d, " is out of range for ", x.str());
    int nd = d < 0 ? d + x.ndim : d;
    BIK_CHECK(!reduced[nd], op, ": dim ", d, " appears twice in dims");
    reduced[nd] = true;
  }
  Shape expect;
  TensorView xp = x;
  int kept = 0, pos = 0;
  for (int d = 0; d < x.ndim; ++d) {
    if (reduced[d]) {
      if (keepdim) expect.push_back(1);
      continue;
    }
    expect.push_back(x.shape[d]);
    xp.shape[pos] = x.shape[d];
    xp.stride[pos] = x.stride[d];
    ++pos;
  }
  kept = pos;
  for (int d = 0; d < x.ndim; ++d) {
    if (!reduced[d]) continue;
    xp.shape[pos] = x.shape[d];
    xp.stride[pos] = x.stride[d];
    ++pos;
  }
  BIK_CHECK(out.sizes() == expect, op, ": out must have shape ", TensorView(nullptr, out.dtype, expect).str(),
            " for x ", x.str(), ", got ", out.str());
  ReduceArgs r;
  r.x = xp;
  r.kept = kept;
  r.mean = is_mean;
  r.out = out;
  // Drop keepdim's size-1 dims from out so backends see exactly the kept dims.
  if (keepdim) {
    TensorView o = out;
    int p = 0;
    for (int d = 0; d < x.ndim; ++d)
      if (!reduced[d]) {
        o.shape[p] = out.shape[d];
        o.stride[p] = out.stride[d];
        ++p;
      }
    o.ndim = p;
    r.out = o;
  }
  if (out.numel() == 0) return;
  if (x.device.is_cpu())
    cpu::reduce(r, s);
  else
    cuda::reduce(r, s);
}
}  // namespace

void sum(const TensorView& out, const TensorView& x, const std::vector<int>& dims, bool keepdim, Stream s) {
  reduce_checked("sum", out, x, dims, keepdim, false, s);
}
void mean(const TensorView& out, const TensorView& x, const std::vector<int>& dims, bool keepdim, Stream s) {
  reduce_checked("mean", out, x, dims, keepdim, true, s);
}

void argmax(const TensorView& out, const TensorView& x, Stream s) {
  check_min_dims("argmax", "x", x, 1);
  check_float("argmax", "x", x);
  BIK_CHECK(x.size(-1) > 0, "argmax: the last dim of x is empty: ", x.str());
  BIK_CHECK(out.dtype == DType::I32, "argmax: out must be i32, got ", out.str());
  const Shape xs = x.sizes();
  Shape lead(xs.begin(), xs.end() - 1);
  BIK_CHECK(out.sizes() == lead, "argmax: out must have x's leading shape ",
            TensorView(nullptr, DType::I32, lead).str(), ", got ", out.str());
  check_same_device("argmax", x, "out", out);
  check_data("argmax", "x", x);
  check_data("argmax", "out", out);
  if (out.numel() == 0) return;
  dispatch_device(x, &cpu::argmax, &cuda::argmax, out, x, s);
}

void silu_and_mul(const TensorView& out, const TensorView& x, Stream s) {
  const char* op = "silu_and_mul";
  check_min_dims(op, "x", x, 1);
  check_float(op, "x", x);
  BIK_CHECK(x.size(-1) % 2 == 0, op, ": the last dim of x must be even ([..., 2d]), got ", x.str());
  Shape expect = x.sizes();
  expect.back() /= 2;
  BIK_CHECK(out.sizes() == expect, op, ": out must be ", TensorView(nullptr, out.dtype, expect).str(), ", got ",
            out.str());
  check_out_dtype(op, out, x.dtype);
  check_same_device(op, x, "out", out);
  check_data(op, "x", x);
  check_data(op, "out", out);
  if (out.numel() == 0) return;
  dispatch_device(x, &cpu::silu_and_mul, &cuda::silu_and_mul, out, x, s);
}

void rotary_embedding(const TensorView& q, const TensorView& k, const TensorView& positions,
                      const TensorView& cos_sin, bool neox, Stream s) {
  const char* op = "rotary_embedding";
  BIK_CHECK(q.ndim == 3, op, ": q must be [T, H, D], got ", q.str());
  check_float(op, "q", q);
  int64_t t = q.shape[0], d = q.shape[2];
  bool has_k = k.ndim != 0 || k.data != nullptr;
  if (has_k) {
    BIK_CHECK(k.ndim == 3 && k.shape[0] == t && k.shape[2] == d, op, ": k must be [", t, ", Hk, ", d, "], got ",
              k.str());
    BIK_CHECK(k.dtype == q.dtype, op, ": k must be ", dtype_name(q.dtype), ", got ", k.str());
    check_same_device(op, q, "k", k);
  }
  BIK_CHECK(positions.ndim == 1 && positions.shape[0] == t && positions.dtype == DType::I32, op,
            ": positions must be i32[", t, "], got ", positions.str());
  BIK_CHECK(cos_sin.ndim == 2 && cos_sin.dtype == DType::F32, op, ": cos_sin must be f32[P, rot_dim], got ",
            cos_sin.str());
  int64_t rot = cos_sin.shape[1];
  BIK_CHECK(rot > 0 && rot % 2 == 0 && rot <= d, op, ": rot_dim (cos_sin's last dim) must be even and in [2, ", d,
            "], got ", rot);
  check_same_device(op, q, "positions", positions);
  check_same_device(op, q, "cos_sin", cos_sin);
  check_data(op, "q", q);
  check_data(op, "positions", positions);
  check_data(op, "cos_sin", cos_sin);
  if (t == 0) return;
  if (q.device.is_cpu()) {
    // Positions are checked on the host; the CUDA kernel clamps nothing and trusts the engine.
    const int32_t* p = positions.ptr<int32_t>();
    for (int64_t i = 0; i < t; ++i)
      BIK_CHECK(p[i * positions.stride[0]] >= 0 && p[i * positions.stride[0]] < cos_sin.shape[0], op, ": positions[",
                i, "] = ", p[i * positions.stride[0]], " is outside the cos_sin table [0, ", cos_sin.shape[0], ")");
    cpu::rotary_embedding(q, k, positions, cos_sin, neox, s);
  } else {
    cuda::rotary_embedding(q, k, positions, cos_sin, neox, s);
  }
}

namespace {
void check_embedding(const TensorView& out, const TensorView& ids, const TensorView& table) {
  const char* op = "embedding";
  BIK_CHECK(ids.ndim == 1 && ids.dtype == DType::I32, op, ": ids must be i32[T], got ", ids.str());
  BIK_CHECK(table.ndim == 2, op, ": table must be [V, D], got ", table.str());
  check_float(op, "table", table);
  BIK_CHECK(out.ndim == 2 && out.shape[0] == ids.shape[0] && out.shape[1] == table.shape[1], op, ": out must be [",
            ids.shape[0], ", ", table.shape[1], "], got ", out.str());
  BIK_CHECK(out.dtype == table.dtype || out.dtype == DType::F32, op, ": out must be ", dtype_name(table.dtype),
            " or f32, got ", out.str());
  check_same_device(op, table, "ids", ids);
  check_same_device(op, table, "out", out);
  check_data(op, "ids", ids);
  check_data(op, "table", table);
  check_data(op, "out", out);
}
}  // namespace

void fill_bytes(const TensorView& dst, uint8_t byte, Stream s) {
  if (dst.device.is_cpu()) {
    fill_bytes(dst, byte);
    return;
  }
  const int64_t span = dst.span_bytes();
  if (span > 0) cuda::memset_bytes_async(dst.data, dst.device.index, byte, span, s.handle);
}

void embedding(const TensorView& out, const TensorView& ids, const TensorView& table, Stream s) {
  check_embedding(out, ids, table);
  if (ids.shape[0] == 0) return;
  dispatch_device(table, &cpu::embedding, &cuda::embedding, out, ids, table, true, s);
}

void embedding(const TensorView& out, const TensorView& ids, const TensorView& table,
               HostInts host_ids, Stream s) {
  check_embedding(out, ids, table);
  BIK_CHECK(int64_t(host_ids.size()) == ids.shape[0], "embedding: the host copy of ids has ", host_ids.size(),
            " values, ids ", ids.str(), " has ", ids.shape[0]);
  const int64_t vocab = table.shape[0];
  for (size_t t = 0; t < host_ids.size(); ++t)
    BIK_CHECK(host_ids[t] >= 0 && host_ids[t] < vocab, "embedding: ids[", t, "] = ", host_ids[t],
              " is outside the table's rows [0, ", vocab, ") of ", table.str());
  if (ids.shape[0] == 0) return;
  dispatch_device(table, &cpu::embedding, &cuda::embedding, out, ids, table, false, s);
}

}  // namespace bik

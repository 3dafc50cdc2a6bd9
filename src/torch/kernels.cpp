// The aten kernels of the extension: each op validates what bik can take, runs bik's kernel into a
// freshly allocated output with torch's output shape and dtype, and otherwise calls the stock kernel of
// the same device directly (at::cpu::..., at::cuda::..., never through the dispatcher, so a fallback
// never re-enters the override).
//
// Routing (docs/torch.md):
//   f32 / f16 / bf16 strided tensors of at most 6 dims -> bik (any strides bik accepts go straight in;
//     views bik cannot take are reshaped or copied first: copies are exact, so still invariant)
//   integer and bool inputs -> the stock kernel without a warning (integer sums are exact in any order)
//   anything else (float64, complex, sparse, > 6 dims, dropout, a bik::Error) -> a warning naming the op,
//     once per op, then the stock kernel
// Invalid arguments also go to the stock kernel, which raises torch's own error.
#include <ATen/CPUFunctions.h>
#include <ATen/CompositeImplicitAutogradFunctions.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/SymIntArrayRef.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <optional>
#include <vector>

#include "bik/attention.h"
#include "torch/common.h"
#ifdef BIK_TORCH_CUDA
#include <ATen/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace bik::torch_ext {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

enum class Dev { cpu, cuda };

// ---- conversion ---------------------------------------------------------------------------------------
bool is_bik_type(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}
DType bik_type(at::ScalarType t) {
  return t == at::kFloat ? DType::F32 : t == at::kHalf ? DType::F16 : t == at::kInt ? DType::I32 : DType::BF16;
}

TensorView view(const Tensor& t) {
  Device dev = t.is_cuda() ? Device::cuda(t.get_device()) : Device::cpu();
  Shape shape(t.sizes().begin(), t.sizes().end());
  Shape strides(t.strides().begin(), t.strides().end());
  return TensorView(t.numel() == 0 ? nullptr : t.data_ptr(), bik_type(t.scalar_type()), shape, strides, dev);
}

Stream stream_of(const Tensor& t) {
#ifdef BIK_TORCH_CUDA
  if (t.is_cuda()) return Stream{c10::cuda::getCurrentCUDAStream(t.get_device()).stream()};
#endif
  (void)t;
  return {};
}

// ---- routing ------------------------------------------------------------------------------------------
enum class Route { bik, silent, loud };

// Decides from the tensors' dtypes and layouts; `why` names the reason of a loud fallback.
Route route_for(std::initializer_list<const Tensor*> ts, std::string* why) {
  for (const Tensor* t : ts) {
    if (t == nullptr || !t->defined()) continue;
    if (t->layout() != at::kStrided) {
      *why = "layout " + c10::str(t->layout()) + " is not strided";
      return Route::loud;
    }
    at::ScalarType st = t->scalar_type();
    if (!is_bik_type(st)) {
      if (at::isIntegralType(st, /*includeBool=*/true)) return Route::silent;
      *why = std::string("dtype ") + c10::toString(st) + " is not float32, float16 or bfloat16";
      return Route::loud;
    }
    if (t->dim() > kMaxDims) {
      *why = "a tensor has " + std::to_string(t->dim()) + " dims (bik takes at most " + std::to_string(kMaxDims) + ")";
      return Route::loud;
    }
  }
  return Route::bik;
}
const Tensor* opt_ptr(const OptTensor& t) { return t && t->defined() ? &*t : nullptr; }

// The stock kernels of each device, called directly (at::cpu::, at::cuda::), so a fallback never
// re-enters the override.
template <Dev D>
struct Stock;
#define BIK_STOCK_KERNELS(DEV, NS)                                                                          \
  template <>                                                                                               \
  struct Stock<Dev::DEV> {                                                                                  \
    static Tensor mm(const Tensor& a, const Tensor& b) { return NS::mm(a, b); }                             \
    static Tensor addmm(const Tensor& s, const Tensor& a, const Tensor& b, const at::Scalar& beta,          \
                        const at::Scalar& alpha) {                                                          \
      return NS::addmm(s, a, b, beta, alpha);                                                               \
    }                                                                                                       \
    static Tensor bmm(const Tensor& a, const Tensor& b) { return NS::bmm(a, b); }                           \
    static Tensor baddbmm(const Tensor& s, const Tensor& a, const Tensor& b, const at::Scalar& beta,        \
                          const at::Scalar& alpha) {                                                        \
      return NS::baddbmm(s, a, b, beta, alpha);                                                             \
    }                                                                                                       \
    static Tensor softmax(const Tensor& x, int64_t d, bool h) { return NS::_softmax(x, d, h); }             \
    static Tensor log_softmax(const Tensor& x, int64_t d, bool h) { return NS::_log_softmax(x, d, h); }     \
    static Tensor mean(const Tensor& x, at::OptionalIntArrayRef d, bool k, std::optional<at::ScalarType> t) { \
      return NS::mean(x, d, k, t);                                                                          \
    }                                                                                                       \
    static Tensor sum(const Tensor& x, at::OptionalIntArrayRef d, bool k, std::optional<at::ScalarType> t) {  \
      return NS::sum(x, d, k, t);                                                                           \
    }                                                                                                       \
    static std::tuple<Tensor, Tensor, Tensor> layer_norm(const Tensor& x, c10::SymIntArrayRef ns,           \
                                                         const OptTensor& w, const OptTensor& b, double eps) { \
      return NS::native_layer_norm_symint(x, ns, w, b, eps);                                                \
    }                                                                                                       \
  };
BIK_STOCK_KERNELS(cpu, at::cpu)
#ifdef BIK_TORCH_CUDA
BIK_STOCK_KERNELS(cuda, at::cuda)
#endif
#undef BIK_STOCK_KERNELS

// Runs `body` (the bik path) when the route allows it; falls back (loudly when the route or a bik::Error
// says so) to `stock` otherwise.
template <class Body, class StockFn>
auto run_routed(Op op, Route route, std::string why, bool args_ok, Body&& body, StockFn&& stock) -> decltype(stock()) {
  if (route == Route::bik && args_ok) {
    try {
      auto result = body();
      count_bik(op);
      return result;
    } catch (const bik::Error& e) {
      route = Route::loud;
      why = e.what();
    }
  }
  if (route == Route::loud) warn_fallback(op, why);
  count_stock(op);
  return stock();
}

// ---- matrix multiply ----------------------------------------------------------------------------------
// out = a @ bt^T (+ bias): bt is [N, K] (or [B, N, K]); K = 0 gives zeros (plus the bias).
void gemm_into(const Tensor& out, const Tensor& a, const Tensor& bt, const Tensor* bias) {
  if (a.size(-1) == 0) {
    out.zero_();
    if (bias) out.add_(*bias);
    return;
  }
  c10::OptionalDeviceGuard guard(a.device());
  if (a.dim() == 3)
    bik::bmm(view(out), view(a), view(bt), stream_of(a));
  else if (bias)
    bik::addmm(view(out), view(*bias), view(a), view(bt), stream_of(a));
  else
    bik::mm(view(out), view(a), view(bt), stream_of(a));
}

bool mm_args_ok(const Tensor& a, const Tensor& b, int dims) {
  return a.dim() == dims && b.dim() == dims && a.size(-1) == b.size(-2) && a.scalar_type() == b.scalar_type() &&
         a.device() == b.device() && (dims == 2 || a.size(0) == b.size(0));
}

template <Dev D>
Tensor k_mm(const Tensor& a, const Tensor& b) {
  std::string why;
  Route r = route_for({&a, &b}, &why);
  return run_routed(
      Op::mm, r, why, mm_args_ok(a, b, 2),
      [&] {
        Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
        gemm_into(out, a, b.t(), nullptr);
        return out;
      },
      [&] { return Stock<D>::mm(a, b); });
}

template <Dev D>
Tensor k_bmm(const Tensor& a, const Tensor& b) {
  std::string why;
  Route r = route_for({&a, &b}, &why);
  return run_routed(
      Op::bmm, r, why, mm_args_ok(a, b, 3),
      [&] {
        Tensor out = at::empty({a.size(0), a.size(1), b.size(2)}, a.options());
        gemm_into(out, a, b.transpose(1, 2), nullptr);
        return out;
      },
      [&] { return Stock<D>::bmm(a, b); });
}

// addmm: out = beta * self + alpha * (a @ b). beta = alpha = 1 with a bias row ([N], [1, N] or a
// row-broadcast [M, N]) is bik's fused bias; every other case computes a @ b in F32 with bik, then
// alpha * p + beta * self element-wise in F32 (a product and a plain add, each exact-rounded the same way
// in vector and scalar code) and rounds once to the output dtype.
template <Dev D>
Tensor k_addmm(const Tensor& self, const Tensor& a, const Tensor& b, const at::Scalar& beta, const at::Scalar& alpha) {
  std::string why;
  Route r = route_for({&self, &a, &b}, &why);
  bool ok = mm_args_ok(a, b, 2) && self.device() == a.device() && self.dim() <= 2;
  int64_t m = ok ? a.size(0) : 0, n = ok ? b.size(1) : 0;
  if (ok) {  // self must broadcast to [M, N]
    auto sz = self.sizes();
    if (sz.size() >= 1 && sz.back() != n && sz.back() != 1) ok = false;
    if (sz.size() == 2 && sz[0] != m && sz[0] != 1) ok = false;
  }
  if (ok && r == Route::bik && self.scalar_type() != a.scalar_type()) {
    r = Route::loud;
    why = std::string("self is ") + c10::toString(self.scalar_type()) + " but mat1 is " + c10::toString(a.scalar_type());
  }
  return run_routed(
      Op::addmm, r, why, ok,
      [&] {
        Tensor out = at::empty({m, n}, a.options());
        const bool unit = !beta.isComplex() && !alpha.isComplex() && beta.toDouble() == 1.0 && alpha.toDouble() == 1.0;
        std::optional<Tensor> bias_row;
        if (self.dim() == 1 && self.size(0) == n)
          bias_row = self;
        else if (self.dim() == 2 && self.size(1) == n && (self.size(0) == 1 || (m > 0 && self.stride(0) == 0)))
          bias_row = self.select(0, 0);
        if (unit && bias_row) {
          gemm_into(out, a, b.t(), &*bias_row);
          return out;
        }
        Tensor acc = a.scalar_type() == at::kFloat ? out : at::empty({m, n}, a.options().dtype(at::kFloat));
        gemm_into(acc, a, b.t(), nullptr);
        if (alpha.toDouble() != 1.0) acc.mul_(alpha);
        if (beta.toDouble() != 0.0) acc.add_(self.to(at::kFloat).mul(beta));
        if (!acc.is_same(out)) out.copy_(acc);
        return out;
      },
      [&] { return Stock<D>::addmm(self, a, b, beta, alpha); });
}

// baddbmm: out = beta * self + alpha * (a @ b) per batch, self broadcast to [B, M, N] (attention code
// adds its mask this way). a @ b in F32 with bik's bmm, then the two element-wise terms in F32 and one
// rounding; beta = 0 ignores self (NaN included), as torch does.
template <Dev D>
Tensor k_baddbmm(const Tensor& self, const Tensor& a, const Tensor& b, const at::Scalar& beta,
                 const at::Scalar& alpha) {
  std::string why;
  Route r = route_for({&self, &a, &b}, &why);
  bool ok = mm_args_ok(a, b, 3) && self.device() == a.device() && self.dim() <= 3;
  std::vector<int64_t> shape;
  if (ok) {
    shape = {a.size(0), a.size(1), b.size(2)};
    auto sz = self.sizes();  // right-aligned broadcast to [B, M, N]
    for (size_t i = 0; i < sz.size(); ++i) {
      const int64_t want = shape[3 - sz.size() + i];
      if (sz[i] != want && sz[i] != 1) ok = false;
    }
  }
  if (ok && r == Route::bik && self.scalar_type() != a.scalar_type()) {
    r = Route::loud;
    why = std::string("self is ") + c10::toString(self.scalar_type()) + " but batch1 is " +
          c10::toString(a.scalar_type());
  }
  return run_routed(
      Op::baddbmm, r, why, ok,
      [&] {
        Tensor out = at::empty(shape, a.options());
        Tensor acc = a.scalar_type() == at::kFloat ? out : at::empty(shape, a.options().dtype(at::kFloat));
        gemm_into(acc, a, b.transpose(1, 2), nullptr);
        if (alpha.toDouble() != 1.0) acc.mul_(alpha);
        if (beta.toDouble() != 0.0) acc.add_(self.to(at::kFloat).mul(beta));
        if (!acc.is_same(out)) out.copy_(acc);
        return out;
      },
      [&] { return Stock<D>::baddbmm(self, a, b, beta, alpha); });
}

// ---- softmax ------------------------------------------------------------------------------------------
// Over any dim: the dim is moved last in a strided view of the input and of the output (no copies).
template <Dev D, bool Log>
Tensor k_softmax(const Tensor& x, int64_t dim, bool half_to_float) {
  const Op op = Log ? Op::log_softmax : Op::softmax;
  std::string why;
  Route r = route_for({&x}, &why);
  const int64_t nd = std::max<int64_t>(x.dim(), 1);
  bool ok = dim >= -nd && dim < nd && (!half_to_float || x.scalar_type() != at::kFloat);
  return run_routed(
      op, r, why, ok,
      [&] {
        Tensor xx = x.dim() == 0 ? x.reshape({1}) : x;
        const int d = static_cast<int>(dim < 0 ? dim + nd : dim), last = static_cast<int>(nd - 1);
        Tensor out = at::empty(xx.sizes(), xx.options().dtype(half_to_float ? at::kFloat : x.scalar_type()));
        c10::OptionalDeviceGuard guard(x.device());
        TensorView xv = view(xx).transpose(d, last), ov = view(out).transpose(d, last);
        if (Log)
          bik::log_softmax(ov, xv, stream_of(x));
        else
          bik::softmax(ov, xv, stream_of(x));
        return x.dim() == 0 ? out.reshape({}) : out;
      },
      [&] { return Log ? Stock<D>::log_softmax(x, dim, half_to_float) : Stock<D>::softmax(x, dim, half_to_float); });
}

// ---- sum / mean ---------------------------------------------------------------------------------------
// torch's dtype argument casts the input first; a cast from f16/bf16 to f32 is exact, so bik reads the
// half input and writes F32 directly in that case.
template <Dev D, bool Mean>
Tensor k_reduce(const Tensor& x, at::OptionalIntArrayRef dim, bool keepdim, std::optional<at::ScalarType> dtype) {
  const Op op = Mean ? Op::mean_dim : Op::sum_dim;
  std::string why;
  Route r = Route::bik;
  const at::ScalarType target = dtype.value_or(x.scalar_type());
  if (x.layout() != at::kStrided) {
    r = Route::loud;
    why = "layout " + c10::str(x.layout()) + " is not strided";
  } else if (!is_bik_type(target)) {
    if (at::isIntegralType(target, true) && at::isIntegralType(x.scalar_type(), true)) {
      r = Route::silent;
    } else {
      r = Route::loud;
      why = std::string("dtype ") + c10::toString(target) + " is not float32, float16 or bfloat16";
    }
  } else if (!is_bik_type(x.scalar_type()) && !at::isIntegralType(x.scalar_type(), true)) {
    r = Route::loud;
    why = std::string("dtype ") + c10::toString(x.scalar_type()) + " is not float32, float16 or bfloat16";
  } else if (x.dim() > kMaxDims) {
    r = Route::loud;
    why = "x has " + std::to_string(x.dim()) + " dims (bik takes at most " + std::to_string(kMaxDims) + ")";
  }
  // Valid, distinct dims (the stock kernel raises torch's error otherwise).
  const int64_t nd = std::max<int64_t>(x.dim(), 1);
  std::vector<int> dims;
  std::vector<bool> reduced(nd, false);
  bool ok = true;
  if (dim && !dim->empty()) {
    for (int64_t d : *dim) {
      if (d < -nd || d >= nd) {
        ok = false;
        break;
      }
      int64_t w = d < 0 ? d + nd : d;
      if (reduced[w]) ok = false;
      reduced[w] = true;
      dims.push_back(static_cast<int>(w));
    }
  } else {
    std::fill(reduced.begin(), reduced.end(), true);
  }
  return run_routed(
      op, r, why, ok,
      [&] {
        Tensor xin = x;
        if (x.scalar_type() != target && !(target == at::kFloat && is_bik_type(x.scalar_type())))
          xin = x.to(target);
        if (x.dim() == 0) xin = xin.reshape({1});
        std::vector<int64_t> shape;
        int64_t count = 1;
        for (int64_t d = 0; d < x.dim(); ++d) {
          if (reduced[d]) {
            count *= x.size(d);
            if (keepdim) shape.push_back(1);
          } else {
            shape.push_back(x.size(d));
          }
        }
        Tensor out = at::empty(shape, x.options().dtype(target));
        if (out.numel() == 0) return out;
        if (count == 0) return Mean ? out.fill_(std::numeric_limits<double>::quiet_NaN()) : out.zero_();
        const bool kd = keepdim && x.dim() > 0;
        c10::OptionalDeviceGuard guard(x.device());
        if (Mean)
          bik::mean(view(out), view(xin), dims, kd, stream_of(x));
        else
          bik::sum(view(out), view(xin), dims, kd, stream_of(x));
        return out;
      },
      [&] { return Mean ? Stock<D>::mean(x, dim, keepdim, dtype) : Stock<D>::sum(x, dim, keepdim, dtype); });
}

// ---- norms --------------------------------------------------------------------------------------------
// The trailing `ns` dims of x flattened into one: x as [..., n] (a view when the dims merge, else a copy).
bool norm_shape_ok(const Tensor& x, at::IntArrayRef ns, const Tensor* w, const Tensor* b) {
  if (ns.empty() || static_cast<int64_t>(ns.size()) > x.dim()) return false;
  for (size_t i = 0; i < ns.size(); ++i)
    if (x.size(x.dim() - ns.size() + i) != ns[i]) return false;
  for (const Tensor* p : {w, b})
    if (p && (p->sizes() != ns || p->device() != x.device())) return false;
  int64_t n = 1;
  for (int64_t s : ns) n *= s;
  return n > 0;
}
Tensor as_rows(const Tensor& x, int64_t n, size_t norm_dims) {
  if (norm_dims == 1 && x.dim() <= kMaxDims) return x;
  return x.reshape({-1, n});
}
// A weight or bias bik can take with x: x's dtype or F32 ([n]).
Tensor param_for(const Tensor& p, const Tensor& x, int64_t n) {
  Tensor q = p.reshape({n});
  return q.scalar_type() == x.scalar_type() || q.scalar_type() == at::kFloat ? q : q.to(at::kFloat);
}

// rms_norm: bik computes x * rsqrt(mean(x^2) + eps) * w in F32 and rounds once to x's dtype (torch's
// result dtype whatever the weight's). The default eps is torch's: the F32 machine epsilon.
template <Dev D>
Tensor k_rms_norm(const Tensor& x, c10::SymIntArrayRef normalized_shape, const OptTensor& weight,
                  std::optional<double> eps) {
  std::string why;
  Route r = route_for({&x, opt_ptr(weight)}, &why);
  auto ns = C10_AS_INTARRAYREF_SLOW(normalized_shape);
  bool ok = norm_shape_ok(x, ns, opt_ptr(weight), nullptr);
  return run_routed(
      Op::rms_norm, r, why, ok,
      [&] {
        int64_t n = c10::multiply_integers(ns);
        Tensor x2 = as_rows(x, n, ns.size());
        const at::ScalarType out_t = x.scalar_type();
        Tensor w = weight && weight->defined() ? param_for(*weight, x, n) : at::ones({n}, x.options());
        Tensor out = at::empty(x2.sizes(), x.options().dtype(out_t));
        c10::OptionalDeviceGuard guard(x.device());
        bik::rms_norm(view(out), view(x2), view(w), static_cast<float>(eps.value_or(std::numeric_limits<float>::epsilon())),
                      std::nullopt, stream_of(x));
        return out.view(x.sizes());
      },
      [&] { return at::compositeimplicitautograd::rms_norm_symint(x, normalized_shape, weight, eps); });
}

// native_layer_norm: bik's layer_norm gives the output and, from the same pass, each row's mean and rstd
// (which only the backward reads), with torch's shapes and dtypes: F32 on CUDA, and on the CPU x's dtype
// unless x is half and a parameter F32.
template <Dev D>
std::tuple<Tensor, Tensor, Tensor> k_layer_norm(const Tensor& x, c10::SymIntArrayRef normalized_shape,
                                                const OptTensor& weight, const OptTensor& bias, double eps) {
  std::string why;
  Route r = route_for({&x, opt_ptr(weight), opt_ptr(bias)}, &why);
  auto ns = C10_AS_INTARRAYREF_SLOW(normalized_shape);
  bool ok = norm_shape_ok(x, ns, opt_ptr(weight), opt_ptr(bias));
  return run_routed(
      Op::native_layer_norm, r, why, ok,
      [&] {
        int64_t n = c10::multiply_integers(ns);
        Tensor x2 = x.reshape({-1, n});
        const int64_t rows = x2.size(0);
        std::optional<Tensor> w, b;
        if (weight && weight->defined()) w = param_for(*weight, x, n);
        if (bias && bias->defined()) b = param_for(*bias, x, n);
        Tensor out = at::empty({rows, n}, x.options());
        Tensor mean = at::empty({rows, 1}, x.options().dtype(at::kFloat));
        Tensor rstd = at::empty({rows, 1}, x.options().dtype(at::kFloat));
        c10::OptionalDeviceGuard guard(x.device());
        std::optional<TensorView> wv, bv;
        if (w) wv = view(*w);
        if (b) bv = view(*b);
        bik::layer_norm_with_stats(view(out), view(mean), view(rstd), view(x2), wv, bv, static_cast<float>(eps),
                                   stream_of(x));
        const bool half = x.scalar_type() != at::kFloat;
        const bool mixed = half && ((w && w->scalar_type() == at::kFloat) || (b && b->scalar_type() == at::kFloat));
        at::ScalarType stat_t = D == Dev::cuda || mixed ? at::kFloat : x.scalar_type();
        std::vector<int64_t> stat_shape(x.sizes().begin(), x.sizes().end() - ns.size());
        stat_shape.insert(stat_shape.end(), ns.size(), 1);
        return std::make_tuple(out.view(x.sizes()), mean.to(stat_t).view(stat_shape), rstd.to(stat_t).view(stat_shape));
      },
      [&] { return Stock<D>::layer_norm(x, normalized_shape, weight, bias, eps); });
}

// ---- attention ----------------------------------------------------------------------------------------
// softmax(scale * q k^T + mask) v, composed from bik ops per leading index b:
//   scores[h, l, s] = bik bmm (F32 out; one chain over the head dim per score)
//   scale, causal/boolean/additive mask: element-wise in F32 (exact, order-free)
//   probs = bik softmax over s (F32); rows that the mask removes entirely give zeros (torch's rule)
//   out = bik bmm of probs (rounded to q's dtype for f16/bf16, as flash attention does) and v, one chain
//         over s per output, rounded once.
// A query row's bits depend only on its key length and head dim, never on the other rows or heads.
// BIK_TORCH_PAGED_ATTENTION=1 (read at every call) lets SDPA take paged_sdpa below.
bool paged_attention_enabled() {
  const char* v = std::getenv("BIK_TORCH_PAGED_ATTENTION");
  return v && std::string(v) == "1";
}

// Causal attention in the shape of a prefill (L == S, is_causal) or of one decode row (L == 1, no
// causal flag), no mask, f16/bf16, head size 64 or 128: bik's paged attention kernel, the engine's, with
// the keys and values copied into a cache of 16-token blocks (sequence b owns blocks [b * nb, (b + 1) *
// nb)). Its order is fixed by positions alone, like the matrix path's; which path a call takes depends on
// L, S, the head size, the dtype and the mask, never on the batch. q4/k4/v4: [B, H, ., E]; k4, v4 with the
// kv heads (grouped-query attention is native). Returns [B, Hq, L, E] (a transposed view) or an undefined
// tensor when the call does not have that shape (or its scale is not positive: the kernel needs one).
Tensor paged_sdpa(const Tensor& q4, const Tensor& k4, const Tensor& v4, bool is_causal, bool has_mask, double scale) {
  const int64_t B = q4.size(0), Hq = q4.size(1), L = q4.size(2), E = q4.size(3), Hk = k4.size(1), S = k4.size(2);
  const bool shape_ok = !has_mask && scale > 0 && std::isfinite(scale) && (E == 64 || E == 128) && v4.size(3) == E &&
                        L >= 1 && S >= 1 &&
                        (is_causal ? L == S : L == 1) && Hk >= 1 && Hq % Hk == 0 && Hq / Hk <= 64 &&
                        (q4.scalar_type() == at::kHalf || q4.scalar_type() == at::kBFloat16) &&
                        k4.size(0) == B && v4.size(0) == B && v4.size(1) == Hk && v4.size(2) == S;
  if (!shape_ok) return Tensor();
  constexpr int64_t kBlock = 16;
  const int64_t nb = (S + kBlock - 1) / kBlock;
  auto opts = q4.options();
  // [B * nb, 16, Hk, E]: token-major with the heads inside, as the kernel reads it.
  Tensor kc = at::zeros({B * nb, kBlock, Hk, E}, opts), vc = at::zeros({B * nb, kBlock, Hk, E}, opts);
  kc.view({B, nb * kBlock, Hk, E}).narrow(1, 0, S).copy_(k4.transpose(1, 2));
  vc.view({B, nb * kBlock, Hk, E}).narrow(1, 0, S).copy_(v4.transpose(1, 2));
  Tensor qf = q4.transpose(1, 2).reshape({B * L, Hq, E}).contiguous();
  Tensor of = at::empty({B * L, Hq, E}, opts);
  std::vector<int32_t> bt(static_cast<size_t>(B * nb)), sl(static_cast<size_t>(B), int32_t(S)),
      qsl(static_cast<size_t>(B + 1));
  for (int64_t i = 0; i < B * nb; ++i) bt[size_t(i)] = int32_t(i);
  for (int64_t b = 0; b <= B; ++b) qsl[size_t(b)] = int32_t(b * L);
  auto i32 = [&](const std::vector<int32_t>& h, std::vector<int64_t> shape) {
    return at::tensor(h, at::TensorOptions().dtype(at::kInt)).view(shape).to(q4.device(), at::kInt);
  };
  const Tensor btt = i32(bt, {B, nb}), slt = i32(sl, {B}), qslt = i32(qsl, {B + 1});
  bik::paged_attention(view(of), view(qf), view(kc), view(vc), view(btt), view(slt), view(qslt),
                       static_cast<float>(scale), bik::AttentionHostMetadata{bt, sl, qsl}, stream_of(q4));
  return of.view({B, L, Hq, E}).transpose(1, 2);
}

template <Dev D>
Tensor k_sdpa(const Tensor& q, const Tensor& k, const Tensor& v, const OptTensor& attn_mask, double dropout_p,
              bool is_causal, std::optional<double> scale, bool enable_gqa) {
  std::string why;
  Route r = route_for({&q, &k, &v}, &why);
  const Tensor* mask = opt_ptr(attn_mask);
  if (r == Route::silent) r = Route::loud, why = "integer query, key or value";
  if (mask && mask->scalar_type() != at::kBool && !is_bik_type(mask->scalar_type()))
    r = Route::loud, why = std::string("attn_mask dtype ") + c10::toString(mask->scalar_type());
  if (r == Route::bik && dropout_p > 0) r = Route::loud, why = "dropout_p > 0";
  const int64_t nd = q.dim();
  bool ok = nd >= 2 && k.dim() == nd && v.dim() == nd && q.scalar_type() == k.scalar_type() &&
            q.scalar_type() == v.scalar_type() && k.device() == q.device() && v.device() == q.device() &&
            q.size(-1) == k.size(-1) && k.size(-2) == v.size(-2) && !(is_causal && mask);
  int64_t groups = 1;
  if (ok && enable_gqa && nd >= 3 && q.size(-3) != k.size(-3)) {
    ok = k.size(-3) > 0 && q.size(-3) % k.size(-3) == 0 && v.size(-3) == k.size(-3);
    if (ok) groups = q.size(-3) / k.size(-3);
  }
  for (int64_t d = 0; ok && d < nd - 2; ++d) {
    int64_t qs = q.size(d), ks = k.size(d) * (d == nd - 3 ? groups : 1), vs = v.size(d) * (d == nd - 3 ? groups : 1);
    ok = (ks == qs || k.size(d) == 1) && (vs == qs || v.size(d) == 1);
  }
  if (ok && mask) {  // the mask must broadcast to [..., L, S]
    ok = mask->dim() <= nd && mask->device() == q.device();
    for (int64_t i = 1; ok && i <= mask->dim(); ++i) {
      int64_t want = i == 1 ? k.size(-2) : q.size(-i);
      ok = mask->size(-i) == want || mask->size(-i) == 1;
    }
  }
  return run_routed(
      Op::sdpa, r, why, ok,
      [&] {
        const int64_t L = q.size(-2), E = q.size(-1), S = k.size(-2), Ev = v.size(-1);
        std::vector<int64_t> lead(q.sizes().begin(), q.sizes().end() - 2);
        auto full = [&](int64_t a, int64_t b) {
          std::vector<int64_t> s = lead;
          s.push_back(a);
          s.push_back(b);
          return s;
        };
        // k, v with their own (kv) head count and the query's leading dims.
        auto full_kv = [&](int64_t a, int64_t b) {
          std::vector<int64_t> s = lead;
          if (nd >= 3) s.back() = k.size(-3);
          s.push_back(a);
          s.push_back(b);
          return s;
        };
        Tensor kk = k, vv = v;
        if (groups > 1) {
          kk = k.repeat_interleave(groups, nd - 3);
          vv = v.repeat_interleave(groups, nd - 3);
        }
        kk = kk.expand(full(S, E));
        vv = vv.expand(full(S, Ev));
        // As [B, H, ., .]: a view for the usual 4-D case, whatever the strides (bik takes them all).
        auto as4 = [&](const Tensor& t) {
          if (t.dim() == 4) return t;
          if (t.dim() == 3) return t.unsqueeze(0);
          if (t.dim() == 2) return t.unsqueeze(0).unsqueeze(0);
          return t.reshape({-1, t.size(-3), t.size(-2), t.size(-1)});
        };
        const double sc = scale.value_or(1.0 / std::sqrt(static_cast<double>(E)));
        // The engine's attention kernel when the call has its shape, if asked for: it orders the sums
        // differently from the path below, and callers such as HF models pass a mask or not depending on
        // the other rows (padding), so by default every call takes the one path below.
        if (paged_attention_enabled() && k.dim() == nd && E == Ev) {
          const Tensor qp = as4(q), kp = as4(k.expand(full_kv(S, E))), vp = as4(v.expand(full_kv(S, Ev)));
          Tensor o = paged_sdpa(qp, kp, vp, is_causal, mask != nullptr, sc);
          if (o.defined()) {
            count_bik(Op::sdpa_paged);
            std::vector<int64_t> out_shape = full(L, Ev);
            return o.reshape(out_shape);
          }
        }
        Tensor q4 = as4(q), k4 = as4(kk), v4 = as4(vv);
        Tensor m4;
        if (mask) m4 = as4(mask->expand(full(L, S)));
        const int64_t B = q4.size(0), H = q4.size(1);
        Tensor out = at::empty({B, H, L, Ev}, q.options());
        const bool half = q.scalar_type() != at::kFloat;
        auto f32 = q.options().dtype(at::kFloat);
        Tensor causal_off;
        if (is_causal) causal_off = at::ones({L, S}, q.options().dtype(at::kBool)).triu(1);
        c10::OptionalDeviceGuard guard(q.device());
        Stream st = stream_of(q);
        for (int64_t b = 0; b < B; ++b) {
          Tensor scores = at::empty({H, L, S}, f32);
          if (E == 0)
            scores.zero_();
          else
            bik::bmm(view(scores), view(q4[b]), view(k4[b]), st);
          scores.mul_(sc);
          Tensor dead;
          if (is_causal) scores.masked_fill_(causal_off, -std::numeric_limits<float>::infinity());
          if (mask) {
            Tensor mb = m4[b];
            if (mb.scalar_type() == at::kBool)
              scores.masked_fill_(mb.logical_not(), -std::numeric_limits<float>::infinity());
            else
              scores.add_(mb.to(at::kFloat));
            dead = scores.isneginf().all(-1, /*keepdim=*/true);
          }
          Tensor probs = at::empty({H, L, S}, f32);
          bik::softmax(view(probs), view(scores), st);
          if (dead.defined()) probs.masked_fill_(dead, 0.0);
          if (half) probs = probs.to(q.scalar_type());
          Tensor ob = out[b];
          if (S == 0)
            ob.zero_();
          else
            bik::bmm(view(ob), view(probs), view(v4[b].transpose(1, 2)), st);
        }
        std::vector<int64_t> out_shape = full(L, Ev);
        return out.view(out_shape);
      },
      [&] {
        return at::compositeimplicitautograd::scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal,
                                                                            scale, enable_gqa);
      });
}

template <Dev D>
void register_all(torch::Library& lib) {
  lib.impl("mm", &k_mm<D>);
  lib.impl("addmm", &k_addmm<D>);
  lib.impl("bmm", &k_bmm<D>);
  lib.impl("baddbmm", &k_baddbmm<D>);
  lib.impl("_softmax", &k_softmax<D, false>);
  lib.impl("_log_softmax", &k_softmax<D, true>);
  lib.impl("mean.dim", &k_reduce<D, true>);
  lib.impl("sum.dim_IntList", &k_reduce<D, false>);
  lib.impl("rms_norm", &k_rms_norm<D>);
  lib.impl("native_layer_norm", &k_layer_norm<D>);
  lib.impl("scaled_dot_product_attention", &k_sdpa<D>);
}

}  // namespace

void register_cpu(torch::Library& lib) { register_all<Dev::cpu>(lib); }
#ifdef BIK_TORCH_CUDA
void register_cuda(torch::Library& lib) { register_all<Dev::cuda>(lib); }
#endif

}  // namespace bik::torch_ext

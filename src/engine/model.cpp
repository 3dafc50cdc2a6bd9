#include "engine/model.h"

#include <cmath>

#include "bik/attention.h"
#include "bik/ops.h"
#include "check/variants.h"
#include "core/backend.h"
#include "engine/tp.h"
#ifdef BIK_WITH_CUDA
#include "cuda/cublas_gemm.h"
#endif

namespace bik::engine {
namespace {

// A contiguous host copy of `t` in `dtype` (F32 or BF16); the conversions are exact or round once.
Tensor host_as(const Tensor& t, DType dtype) {
  Tensor src = t.device().is_cpu() ? t : t.to(Device::cpu());
  if (src.dtype() == dtype && src.view().is_contiguous()) return src;
  BIK_CHECK(is_floating(src.dtype()), "model: weight ", src.view().str(), " is not floating point");
  Tensor c = src.view().is_contiguous() ? src : Tensor();
  if (!c.data()) {
    c = Tensor::empty(src.sizes(), src.dtype());
    copy(c, src);
  }
  Tensor out = Tensor::empty(c.sizes(), dtype);
  const int64_t n = c.numel();
  for (int64_t i = 0; i < n; ++i) {
    float f = c.dtype() == DType::F32 ? c.ptr<float>()[i]
              : c.dtype() == DType::BF16 ? to_float(c.ptr<bf16>()[i])
                                         : to_float(c.ptr<f16>()[i]);
    if (dtype == DType::F32)
      out.ptr<float>()[i] = f;
    else
      out.ptr<bf16>()[i] = to_bf16(f);
  }
  return out;
}

// Rows [r0, r0 + nr) and columns [c0, c0 + nc) of a 2-D weight as a contiguous host tensor of its dtype.
Tensor host_slice(const Tensor& t, int64_t r0, int64_t nr, int64_t c0, int64_t nc) {
  Tensor src = t.device().is_cpu() ? t : t.to(Device::cpu());
  if (r0 == 0 && c0 == 0 && nr == src.size(0) && nc == src.size(1)) return src;
  Tensor out = Tensor::empty({nr, nc}, src.dtype());
  copy(out, src.view().narrow(0, r0, nr).narrow(1, c0, nc));
  return out;
}

Tensor host_slice(const Tensor& t, int64_t e0, int64_t ne) {
  Tensor src = t.device().is_cpu() ? t : t.to(Device::cpu());
  if (e0 == 0 && ne == src.numel()) return src;
  Tensor out = Tensor::empty({ne}, src.dtype());
  copy(out, src.view().narrow(0, e0, ne));
  return out;
}

bool power_of_two(int64_t n) { return n >= 1 && (n & (n - 1)) == 0; }

}  // namespace

Tensor rotary_table(const ModelConfig& c, int64_t max_pos, const std::vector<double>& freq_factors) {
  const RopeScaling& rs = c.rope_scaling;
  if (freq_factors.empty() && (rs.type == "none" || rs.type.empty()))
    return rope_cos_sin_table(max_pos, c.head_dim, c.rope_theta);
  BIK_CHECK(freq_factors.empty() || rs.type == "none" || rs.type == "llama3" || rs.type.empty(),
            "model: rope_freqs together with rope scaling '", rs.type, "'");
  BIK_CHECK(rs.type == "none" || rs.type.empty() || rs.type == "linear" || rs.type == "llama3",
            "model: rope scaling '", rs.type, "' is not supported (none, linear, llama3)");
  // Inverse frequencies in F64, adjusted, then cos/sin rounded once to F32.
  const int64_t half = c.head_dim / 2;
  std::vector<double> inv(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) inv[size_t(i)] = 1.0 / std::pow(c.rope_theta, double(2 * i) / double(c.head_dim));
  if (!freq_factors.empty()) {
    for (int64_t i = 0; i < half; ++i) inv[size_t(i)] /= freq_factors[size_t(i)];
  } else if (rs.type == "llama3") {
    const double pi = 3.14159265358979323846, old = double(rs.original_max_position);
    const double low_wl = old / rs.low_freq_factor, high_wl = old / rs.high_freq_factor;
    for (double& f : inv) {
      const double wl = 2 * pi / f;
      if (wl > low_wl) {
        f /= rs.factor;
      } else if (wl >= high_wl) {
        const double smooth = (old / wl - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
        f = (1 - smooth) * f / rs.factor + smooth * f;
      }
    }
  }
  const double pos_scale = rs.type == "linear" ? 1.0 / rs.factor : 1.0;
  Tensor t = Tensor::empty({max_pos, c.head_dim}, DType::F32);
  for (int64_t p = 0; p < max_pos; ++p)
    for (int64_t i = 0; i < half; ++i) {
      const double a = double(p) * pos_scale * inv[size_t(i)];
      t.ptr<float>()[p * c.head_dim + i] = float(std::cos(a));
      t.ptr<float>()[p * c.head_dim + half + i] = float(std::sin(a));
    }
  return t;
}

LlamaModel::LlamaModel(const ModelConfig& config, const Weights& weights, Device device, bool batch_invariant,
                       const TpConfig& tp)
    : cfg_(config), device_(device), batch_invariant_(batch_invariant), tp_(tp) {
  hidden_ = cfg_.hidden;
  inter_ = cfg_.intermediate;
  heads_ = cfg_.heads;
  kv_heads_ = cfg_.kv_heads;
  head_dim_ = cfg_.head_dim;
  vocab_ = cfg_.vocab;
  eps_ = float(cfg_.rms_eps);
  BIK_CHECK(heads_ > 0 && kv_heads_ > 0 && heads_ % kv_heads_ == 0, "model: ", heads_,
            " attention heads is not a multiple of ", kv_heads_, " kv heads");

  // Tensor parallelism: this rank's share of the heads and of the MLP (see TpConfig).
  const int64_t tp_size = tp_.size, rank = tp_.rank;
  BIK_CHECK(tp_size >= 1 && rank >= 0 && rank < tp_size, "model: tensor-parallel rank ", rank, " of ", tp_size,
            " ranks");
  BIK_CHECK(tp_size == 1 || (tp_.comm && tp_.comm->size() == tp_size && tp_.comm->rank() == rank),
            "model: tensor-parallel rank ", rank, " of ", tp_size, " needs a communicator of that size and rank");
  BIK_CHECK(tp_.chunks >= 0 && (tp_.chunks <= 1 || (power_of_two(tp_.chunks) && tp_.chunks % tp_size == 0)),
            "model: tp chunks must be 0, 1 or a power of two that is a multiple of the TP size ", tp_size, ", got ",
            tp_.chunks);
  BIK_CHECK(heads_ % tp_size == 0 && kv_heads_ % tp_size == 0, "model: tensor parallelism over ", tp_size,
            " ranks needs the ", heads_, " attention heads and the ", kv_heads_, " kv heads to be multiples of ",
            tp_size);
  BIK_CHECK(inter_ % tp_size == 0, "model: tensor parallelism over ", tp_size,
            " ranks needs the intermediate size ", inter_, " to be a multiple of ", tp_size);
  if (tp_.chunks > 1) {
    BIK_CHECK(heads_ * head_dim_ % tp_.chunks == 0, "model: ", tp_.chunks, " K-chunks do not divide the ",
              heads_ * head_dim_, " inputs (heads x head_dim) of the o projection");
    BIK_CHECK(inter_ % tp_.chunks == 0, "model: ", tp_.chunks, " K-chunks do not divide the ", inter_,
              " inputs (intermediate size) of the down projection");
  }

  // Split::Rows keeps the rank's slice of the output rows (column-parallel), Split::Cols its slice of
  // the K columns (row-parallel; the bias is kept whole and added once after the cross-rank sum).
  enum class Split { None, Rows, Cols };
  auto matrix = [&](const std::string& name, int64_t n, int64_t k, Split split) {
    const Tensor& t = weights.get(name);
    BIK_CHECK(t.view().ndim == 2 && t.size(0) == n && t.size(1) == k, "model: weight ", name, " must be [", n, ", ",
              k, "], got ", t.view().str());
    const int64_t nr = split == Split::Rows ? n / tp_size : n, nc = split == Split::Cols ? k / tp_size : k;
    const Tensor part = host_slice(t, split == Split::Rows ? rank * nr : 0, nr, split == Split::Cols ? rank * nc : 0, nc);
    return host_as(part, DType::BF16).to(device_);
  };
  auto vec = [&](const std::string& name, int64_t n, Split split = Split::None) {
    const Tensor& t = weights.get(name);
    BIK_CHECK(t.view().ndim == 1 && t.numel() == n, "model: weight ", name, " must be [", n, "], got ",
              t.view().str());
    const int64_t ne = split == Split::Rows ? n / tp_size : n;
    return host_as(host_slice(t, split == Split::Rows ? rank * ne : 0, ne), DType::F32).to(device_);
  };
  auto lin = [&](const std::string& name, int64_t n, int64_t k, Split split = Split::None) {
    Linear l{matrix(name, n, k, split), std::nullopt};
    if (weights.has(name + "_bias")) l.bias = vec(name + "_bias", n, split);
    return l;
  };

  embed_ = matrix("embed", vocab_, hidden_, Split::None);
  final_norm_ = vec("final_norm", hidden_);
  const bool tied = cfg_.tie_word_embeddings || !weights.has("lm_head") ||
                    weights.get("lm_head").data() == weights.get("embed").data();
  if (tied)
    lm_head_ = Linear{embed_, std::nullopt};  // one copy on the device
  else
    lm_head_ = lin("lm_head", vocab_, hidden_);
  const int64_t qd = heads_ * head_dim_, kd = kv_heads_ * head_dim_;
  for (int64_t i = 0; i < cfg_.layers; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    Layer L;
    L.input_norm = vec(p + "input_norm", hidden_);
    L.post_attn_norm = vec(p + "post_attn_norm", hidden_);
    if (weights.has(p + "q_norm")) L.q_norm = vec(p + "q_norm", head_dim_);
    if (weights.has(p + "k_norm")) L.k_norm = vec(p + "k_norm", head_dim_);
    L.q = lin(p + "attn.q", qd, hidden_, Split::Rows);
    L.k = lin(p + "attn.k", kd, hidden_, Split::Rows);
    L.v = lin(p + "attn.v", kd, hidden_, Split::Rows);
    L.o = lin(p + "attn.o", hidden_, qd, Split::Cols);
    L.gate = lin(p + "mlp.gate", inter_, hidden_, Split::Rows);
    L.up = lin(p + "mlp.up", inter_, hidden_, Split::Rows);
    L.down = lin(p + "mlp.down", hidden_, inter_, Split::Cols);
    layers_.push_back(std::move(L));
  }
  // From here on the sizes are the rank's own.
  heads_ /= tp_size;
  kv_heads_ /= tp_size;
  inter_ /= tp_size;
  const int64_t max_pos = std::max<int64_t>(cfg_.max_position, 1);
  std::vector<double> freq_factors;
  if (weights.has("rope_freqs")) {
    const Tensor f = host_as(weights.get("rope_freqs"), DType::F32);
    BIK_CHECK(f.numel() == head_dim_ / 2, "model: rope_freqs must have head_dim / 2 = ", head_dim_ / 2,
              " entries, got ", f.view().str());
    for (int64_t i = 0; i < f.numel(); ++i) freq_factors.push_back(f.ptr<float>()[i]);
  }
  cos_sin_ = rotary_table(cfg_, max_pos, freq_factors).to(device_);
}

KvCache LlamaModel::make_cache(int64_t num_blocks, int64_t block_size) const {
  return KvCache(num_layers(), num_blocks, block_size, kv_heads_, head_dim_, DType::BF16, device_);
}

void LlamaModel::linear(const TensorView& out, const TensorView& x, const Linear& w) const {
  if (w.bias)
    gemm(out, x, w.w, &w.bias->view());
  else
    gemm(out, x, w.w, nullptr);
}

void LlamaModel::gemm(const TensorView& out, const TensorView& x, const TensorView& w, const TensorView* bias) const {
  if (batch_invariant_) {
    if (bias)
      addmm(out, *bias, x, w);
    else
      mm(out, x, w);
    return;
  }
  // The negative control: a library GEMM whose blocking and kernel choice depend on the row count.
  GemmArgs g;
  g.a = as3d(x);
  g.w = as3d(w);
  g.out = as3d(out);
  g.batch = 1;
  g.m = x.shape[0];
  g.k = x.shape[1];
  g.n = w.shape[0];
  if (bias) g.bias = *bias;
  if (g.m == 0) return;
  if (device_.is_cpu()) {
    check::openblas_gemm(g);
  } else {
#ifdef BIK_WITH_CUDA
    cuda::cublaslt_gemm(g, {});
#else
    throw Error("model: CUDA tensors in a build without CUDA");
#endif
  }
}

void LlamaModel::row_parallel(const TensorView& out, const TensorView& x, const Linear& w) const {
  const int64_t size = tp_.size;
  if (size == 1 && tp_.chunks <= 1) {
    linear(out, x, w);  // the default: one chain over all of K
    return;
  }
  const int64_t T = x.shape[0], N = out.shape[1], K = x.shape[1];
  const int64_t local = tp_.chunks > 1 ? tp_.chunks / size : 1;  // this rank's leaves of the tree
  const int64_t kc = K / local;
  // F32 scratch: the leaves [local, T, N], their subtree sum [T, N] (when local > 1), the gathered
  // subtree sums of every rank [size, T, N] (when size > 1).
  const int64_t tn = T * N, need = (local + (local > 1 ? 1 : 0) + (size > 1 ? size : 0)) * tn;
  if (partial_store_.numel() < need)
    partial_store_ = Tensor::empty({std::max(need, partial_store_.numel() * 3 / 2)}, DType::F32, device_);
  float* base = partial_store_.ptr<float>();
  const TensorView leaves(base, DType::F32, {local, T, N}, device_);
  for (int64_t c = 0; c < local; ++c)
    gemm(leaves.select(0, c), x.narrow(1, c * kc, kc), w.w.view().narrow(1, c * kc, kc), nullptr);
  TensorView sub = leaves.select(0, 0);
  if (local > 1) {
    sub = TensorView(base + local * tn, DType::F32, {T, N}, device_);
    sum_partials(sub, leaves);
  }
  std::optional<TensorView> bias;
  if (w.bias) bias = w.bias->view();
  if (size == 1) {
    sum_partials(out, sub.reshape({1, T, N}), bias);
    return;
  }
  const TensorView gathered(base + (local + (local > 1 ? 1 : 0)) * tn, DType::F32, {size, T, N}, device_);
  tp_.comm->all_gather(gathered, sub);
  sum_partials(out, gathered, bias);
}

Tensor LlamaModel::forward(const StepBatch& b, KvCache& cache) const {
  const int64_t T = int64_t(b.token_ids.size()), S = int64_t(b.seq_lens.size());
  const int64_t R = int64_t(b.logit_rows.size());
  BIK_CHECK(int64_t(b.positions.size()) == T && int64_t(b.slot_mapping.size()) == T &&
                int64_t(b.query_start_loc.size()) == S + 1 && int64_t(b.block_tables.size()) == S,
            "model: inconsistent step batch (", T, " tokens, ", S, " sequences)");
  BIK_CHECK(int64_t(cache.k.size()) == num_layers(), "model: the KV cache has ", cache.k.size(), " layers, the model ",
            num_layers());
  const Device dev = device_;
  const bool want_logits = tp_.rank == 0;  // tensor parallelism: the lm_head is replicated, rank 0 runs it
  Tensor logits = want_logits ? Tensor::empty({R, vocab_}, DType::F32, dev) : Tensor();
  if (T == 0) return logits;  // (R == 0 still runs the layers: they write the KV cache)

  int64_t max_blocks = 1;
  for (const auto& t : b.block_tables) max_blocks = std::max<int64_t>(max_blocks, int64_t(t.size()));
  std::vector<int32_t> bt_host(size_t(S * max_blocks), 0);
  for (int64_t s = 0; s < S; ++s)
    std::copy(b.block_tables[size_t(s)].begin(), b.block_tables[size_t(s)].end(), bt_host.begin() + s * max_blocks);
  // Metadata: one host buffer, one copy to the device, views into it.
  std::vector<int32_t> meta;
  std::vector<std::pair<int64_t, Shape>> meta_views;
  auto add_meta = [&](const std::vector<int32_t>& v, const Shape& shape) {
    while (meta.size() % 4) meta.push_back(0);  // 16-byte aligned views
    meta_views.push_back({int64_t(meta.size()), shape});
    meta.insert(meta.end(), v.begin(), v.end());
  };
  add_meta(b.token_ids, {T});
  add_meta(b.positions, {T});
  add_meta(b.slot_mapping, {T});
  add_meta(b.query_start_loc, {S + 1});
  add_meta(b.seq_lens, {S});
  add_meta(bt_host, {S, max_blocks});
  add_meta(b.logit_rows, {R});
  if (meta_store_.numel() < int64_t(meta.size()))
    meta_store_ = Tensor::empty({std::max<int64_t>(int64_t(meta.size()), 2 * meta_store_.numel())}, DType::I32, dev);
  memcpy_bytes(meta_store_.data(), dev, meta.data(), Device::cpu(), int64_t(meta.size()) * 4);
  auto meta_view = [&](int i) {
    const auto& [offset, shape] = meta_views[size_t(i)];
    return TensorView(meta_store_.ptr<int32_t>() + offset, DType::I32, shape, dev);
  };
  const TensorView ids = meta_view(0), pos = meta_view(1), slots = meta_view(2), qsl = meta_view(3),
                   lens = meta_view(4), bt = meta_view(5), rows = meta_view(6);
  const AttentionHostMetadata host_meta{bt_host, b.seq_lens, b.query_start_loc};

  // Activations: views into one scratch buffer kept across steps (grown on demand).
  const DType dt = DType::BF16;
  const int64_t H = hidden_, Hq = heads_, Hk = kv_heads_, D = head_dim_, I = inter_;
  const std::vector<Shape> shapes = {{T, H},      {T, H},     {T, H}, {T, Hq * D}, {T, Hk * D}, {T, Hk * D},
                                     {T, Hq * D}, {T, 2 * I}, {T, I}, {T, Hq, D},  {T, Hk, D},  {R, H}};
  auto aligned = [](int64_t n) { return (n + 63) / 64 * 64; };  // 128-byte aligned views
  int64_t need = 0;
  for (const Shape& sh : shapes) need += aligned(TensorView(nullptr, dt, sh).numel());
  if (scratch_.numel() < need) scratch_ = Tensor::empty({std::max(need, scratch_.numel() * 3 / 2)}, dt, dev);
  std::vector<TensorView> buf;
  int64_t off = 0;
  for (const Shape& sh : shapes) {
    buf.emplace_back(scratch_.ptr<bf16>() + off, dt, sh, dev);
    off += aligned(buf.back().numel());
  }
  const TensorView x = buf[0];         // a sub-block's output (the residual branch)
  const TensorView residual = buf[1];  // the residual stream
  const TensorView h = buf[2];         // a sub-block's normalised input
  const TensorView q = buf[3], k = buf[4], v = buf[5], attn = buf[6], gate_up = buf[7], act = buf[8];
  const TensorView qn = buf[9], kn = buf[10], picked = buf[11];
  const TensorView gate_out = gate_up.narrow(1, 0, I), up_out = gate_up.narrow(1, I, I);
  const float scale = float(1.0 / std::sqrt(double(D)));

  auto tap = [this](const char* name, int64_t layer, const TensorView& t) {
    if (tap_) tap_(name, layer, t);
  };
  embedding(x, ids, embed_, b.token_ids);  // ids checked on the host: no wait for the device
  tap("embedding", -1, x);
  fill_bytes(residual, 0);  // the first add-and-norm then sets residual = x exactly
  for (const Layer& L : layers_) {
    const size_t li = size_t(&L - layers_.data());
    const int64_t l = int64_t(li);
    rms_norm(h, x, L.input_norm, eps_, residual);
    tap("input_residual", l, residual);
    tap("input_norm", l, h);
    linear(q, h, L.q);
    tap("q_proj", l, q);
    linear(k, h, L.k);
    tap("k_proj", l, k);
    linear(v, h, L.v);
    tap("v_proj", l, v);
    TensorView q3 = q.reshape({T, Hq, D}), k3 = k.reshape({T, Hk, D});
    if (L.q_norm) {
      rms_norm(qn.reshape({T * Hq, D}), q.reshape({T * Hq, D}), *L.q_norm, eps_);
      q3 = qn;
      tap("q_norm", l, qn);
    }
    if (L.k_norm) {
      rms_norm(kn.reshape({T * Hk, D}), k.reshape({T * Hk, D}), *L.k_norm, eps_);
      k3 = kn;
      tap("k_norm", l, kn);
    }
    rotary_embedding(q3, k3, pos, cos_sin_, neox_);
    tap("rotary_q", l, q3);
    tap("rotary_k", l, k3);
    // The metadata's host copies go along, so that neither call reads the device tensors back (which
    // would synchronise the device twice per layer).
    write_kv_cache(cache.k[li], cache.v[li], k3, v.reshape({T, Hk, D}), slots, b.slot_mapping);
    paged_attention(attn.reshape({T, Hq, D}), q3, cache.k[li], cache.v[li], bt, lens, qsl, scale, host_meta);
    tap("attention", l, attn);
    row_parallel(x, attn, L.o);
    tap("o_proj", l, x);
    rms_norm(h, x, L.post_attn_norm, eps_, residual);
    tap("post_attn_residual", l, residual);
    tap("post_attn_norm", l, h);
    linear(gate_out, h, L.gate);
    tap("gate_proj", l, gate_out);
    linear(up_out, h, L.up);
    tap("up_proj", l, up_out);
    silu_and_mul(act, gate_up);
    tap("silu_and_mul", l, act);
    row_parallel(x, act, L.down);
    tap("down_proj", l, x);
  }
  if (R == 0 || !want_logits) return logits;
  rms_norm(h, x, final_norm_, eps_, residual);
  tap("final_residual", -1, residual);
  tap("final_norm", -1, h);
  // Only the rows that need logits go through the lm_head: gather them (an exact copy; `embedding`
  // with the hidden states as the table is a row gather).
  embedding(picked, rows, h, b.logit_rows);
  linear(logits, picked, lm_head_);
  tap("lm_head", -1, logits);
  return logits;
}

}  // namespace bik::engine

#include "engine/model.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "bik/attention.h"
#include "bik/ops.h"
#include "check/variants.h"
#include "core/attention_variants.h"
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
                       const TpConfig& tp, bool fuse_projections)
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
  auto host_matrix = [&](const std::string& name, int64_t n, int64_t k, Split split) {
    const Tensor& t = weights.get(name);
    BIK_CHECK(t.view().ndim == 2 && t.size(0) == n && t.size(1) == k, "model: weight ", name, " must be [", n, ", ",
              k, "], got ", t.view().str());
    const int64_t nr = split == Split::Rows ? n / tp_size : n, nc = split == Split::Cols ? k / tp_size : k;
    const Tensor part = host_slice(t, split == Split::Rows ? rank * nr : 0, nr, split == Split::Cols ? rank * nc : 0, nc);
    return host_as(part, DType::BF16);
  };
  auto host_vec = [&](const std::string& name, int64_t n, Split split) {
    const Tensor& t = weights.get(name);
    BIK_CHECK(t.view().ndim == 1 && t.numel() == n, "model: weight ", name, " must be [", n, "], got ",
              t.view().str());
    const int64_t ne = split == Split::Rows ? n / tp_size : n;
    return host_as(host_slice(t, split == Split::Rows ? rank * ne : 0, ne), DType::F32);
  };
  auto matrix = [&](const std::string& name, int64_t n, int64_t k, Split split) {
    return host_matrix(name, n, k, split).to(device_);
  };
  auto vec = [&](const std::string& name, int64_t n, Split split = Split::None) {
    return host_vec(name, n, split).to(device_);
  };
  auto lin = [&](const std::string& name, int64_t n, int64_t k, Split split = Split::None) {
    Linear l{matrix(name, n, k, split), std::nullopt};
    if (weights.has(name + "_bias")) l.bias = vec(name + "_bias", n, split);
    return l;
  };
  // Column-parallel layers that read the same input, stacked by rows into one weight (each part the
  // rank's slice, in the order given) and their biases end to end: one GEMM computes them all, and each
  // output element is the same single K chain it is in its own GEMM (gemm_plan depends on K only), so
  // the bits are those of the separate GEMMs. Only when every part has a bias or none has: a zero bias
  // for a missing one would turn a -0 output into +0.
  using Part = std::pair<std::string, int64_t>;  // weight name, its rows in the whole model
  auto biases = [&](const std::vector<Part>& parts) {
    int n = 0;
    for (const auto& p : parts) n += weights.has(p.first + "_bias") ? 1 : 0;
    return n;
  };
  auto can_stack = [&](const std::vector<Part>& parts) {
    return fuse_projections && (biases(parts) == 0 || biases(parts) == int(parts.size()));
  };
  auto stacked = [&](const std::vector<Part>& parts, int64_t k) {
    std::vector<Tensor> ws;
    int64_t rows = 0;
    for (const auto& [name, n] : parts) {
      ws.push_back(host_matrix(name, n, k, Split::Rows));
      rows += ws.back().size(0);
    }
    Tensor w = Tensor::empty({rows, k}, DType::BF16);
    int64_t r = 0;
    for (const Tensor& part : ws) {
      copy(w.view().narrow(0, r, part.size(0)), part);
      r += part.size(0);
    }
    Linear l{device_.is_cpu() ? w : w.to(device_), std::nullopt};
    if (biases(parts) > 0) {
      Tensor b = Tensor::empty({rows}, DType::F32);
      r = 0;
      for (const auto& [name, n] : parts) {
        const Tensor part = host_vec(name + "_bias", n, Split::Rows);
        copy(b.view().narrow(0, r, part.numel()), part);
        r += part.numel();
      }
      l.bias = device_.is_cpu() ? b : b.to(device_);
    }
    return l;
  };
  // Column-parallel layers of the hidden state: stacked into `fused` when they can be (returns true),
  // else each part into its own Linear of `apart` (the same order).
  auto stack_or_apart = [&](const std::vector<Part>& parts, Linear& fused, const std::vector<Linear*>& apart) {
    if (can_stack(parts)) {
      fused = stacked(parts, hidden_);
      return true;
    }
    for (size_t j = 0; j < parts.size(); ++j) *apart[j] = lin(parts[j].first, parts[j].second, hidden_, Split::Rows);
    return false;
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
    const std::vector<Part> qkv = {{p + "attn.q", qd}, {p + "attn.k", kd}, {p + "attn.v", kd}};
    const std::vector<Part> gate_up = {{p + "mlp.gate", inter_}, {p + "mlp.up", inter_}};
    L.qkv_fused = stack_or_apart(qkv, L.qkv, {&L.q, &L.k, &L.v});
    L.o = lin(p + "attn.o", hidden_, qd, Split::Cols);
    L.gate_up_fused = stack_or_apart(gate_up, L.gate_up, {&L.gate, &L.up});
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

void LlamaModel::set_batch_invariant(bool on) {
  // A recorded decode graph holds the kernels of the mode it was recorded in: replaying one of the other
  // mode would run cuBLAS under batch-invariant on (or the reverse), so the recordings go.
  if (on != batch_invariant_ && !graphs_.empty()) {
    synchronize(device_);
    graphs_.clear();
  }
  batch_invariant_ = on;
}

KvCache LlamaModel::make_cache(int64_t num_blocks, int64_t block_size) const {
  return KvCache(num_layers(), num_blocks, block_size, kv_heads_, head_dim_, DType::BF16, device_);
}

void LlamaModel::linear(const TensorView& out, const TensorView& x, const Linear& w, Stream s) const {
  if (w.bias)
    gemm(out, x, w.w, &w.bias->view(), s);
  else
    gemm(out, x, w.w, nullptr, s);
}

void LlamaModel::gemm(const TensorView& out, const TensorView& x, const TensorView& w, const TensorView* bias,
                      Stream s) const {
  if (batch_invariant_) {
    if (bias)
      addmm(out, *bias, x, w, s);
    else
      mm(out, x, w, s);
    return;
  }
  // The negative control: a library GEMM whose blocking and kernel choice depend on the row count (on the
  // CPU, OpenBLAS with split-K chosen by the row count: OpenBLAS's own kernels vary with M on some CPUs
  // only).
  GemmArgs g = gemm_args_2d(out, x, w);
  if (bias) g.bias = *bias;
  if (g.m == 0) return;
  if (device_.is_cpu()) {
    check::split_k_openblas_gemm(g);
  } else {
#ifdef BIK_WITH_CUDA
    cuda::cublaslt_gemm(g, s);
#else
    throw Error("model: CUDA tensors in a build without CUDA");
#endif
  }
}

void LlamaModel::row_parallel(const TensorView& out, const TensorView& x, const Linear& w, Stream s) const {
  const int64_t size = tp_.size;
  if (size == 1 && tp_.chunks <= 1) {
    linear(out, x, w, s);  // the default: one chain over all of K
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
  const TensorView wv = w.w.view();
  if (batch_invariant_ && local > 1 && x.strides(1) == 1 && wv.strides(1) == 1) {
    // The leaves in one launch: a bmm over the chunks as batches of [local, T, kc] / [local, N, kc] views
    // (each batch a chunk's columns), with the bits of the chunk-by-chunk products (a bmm batch is the
    // plain product of its slices) and without their `local` launches of 1 / local of the work each.
    const TensorView xs(x.data, x.dtype, {local, T, kc}, {kc, x.strides(0), 1}, x.device);
    const TensorView ws(wv.data, wv.dtype, {local, N, kc}, {kc, wv.strides(0), 1}, wv.device);
    bmm(leaves, xs, ws, s);
  } else {
    for (int64_t c = 0; c < local; ++c)
      gemm(leaves.select(0, c), x.narrow(1, c * kc, kc), wv.narrow(1, c * kc, kc), nullptr, s);
  }
  TensorView sub = leaves.select(0, 0);
  if (local > 1) {
    sub = TensorView(base + local * tn, DType::F32, {T, N}, device_);
    sum_partials(sub, leaves, std::nullopt, s);
  }
  std::optional<TensorView> bias;
  if (w.bias) bias = w.bias->view();
  if (size == 1) {
    sum_partials(out, sub.reshape({1, T, N}), bias, s);
    return;
  }
  const TensorView gathered(base + (local + (local > 1 ? 1 : 0)) * tn, DType::F32, {size, T, N}, device_);
  tp_.comm->all_gather(gathered, sub);
  sum_partials(out, gathered, bias, s);
}

namespace {

// A step's metadata in one host buffer (16-byte aligned parts, in StepViews order) and the block table
// as a [S, width] matrix (also kept apart: the attention launch reads it on the host).
struct PackedMeta {
  std::vector<int32_t> data;
  std::vector<std::pair<int64_t, Shape>> parts;
  std::vector<int32_t> bt_host;
};

PackedMeta pack_meta(const StepBatch& b, int64_t width) {
  const int64_t T = int64_t(b.token_ids.size()), S = int64_t(b.seq_lens.size()), R = int64_t(b.logit_rows.size());
  PackedMeta m;
  m.bt_host.assign(size_t(S * width), 0);
  for (int64_t s = 0; s < S; ++s)
    std::copy(b.block_tables[size_t(s)].begin(), b.block_tables[size_t(s)].end(), m.bt_host.begin() + s * width);
  auto add = [&](const std::vector<int32_t>& v, const Shape& shape) {
    while (m.data.size() % 4) m.data.push_back(0);
    m.parts.push_back({int64_t(m.data.size()), shape});
    m.data.insert(m.data.end(), v.begin(), v.end());
  };
  add(b.token_ids, {T});
  add(b.positions, {T});
  add(b.slot_mapping, {T});
  add(b.query_start_loc, {S + 1});
  add(b.seq_lens, {S});
  add(m.bt_host, {S, width});
  add(b.logit_rows, {R});
  return m;
}

// Views of the packed metadata once it is in `store` (I32, on `dev`), in StepViews order.
std::vector<TensorView> meta_views(const PackedMeta& pm, const Tensor& store, Device dev) {
  std::vector<TensorView> v;
  for (const auto& [offset, shape] : pm.parts) v.emplace_back(store.ptr<int32_t>() + offset, DType::I32, shape, dev);
  return v;
}

}  // namespace

// One recorded decode step: its bucket, the KV cache it was recorded with (every layer's pointers are in
// the graph), its metadata buffer (read at a fixed address), and the graph. Logits go to the model's
// graph_logits_ (graphs run one at a time).
struct LlamaModel::DecodeGraph {
  int64_t seqs = 0, width = 0;
  std::vector<const void*> cache;
  Tensor meta;
  CudaGraph graph;
};

namespace {
std::vector<const void*> cache_pointers(const KvCache& c) {
  std::vector<const void*> p{reinterpret_cast<const void*>(intptr_t(c.num_blocks)),
                             reinterpret_cast<const void*>(intptr_t(c.block_size))};
  for (const auto& t : c.k) p.push_back(t.data());
  for (const auto& t : c.v) p.push_back(t.data());
  return p;
}
}  // namespace

LlamaModel::~LlamaModel() = default;

std::vector<Shape> LlamaModel::scratch_shapes(int64_t T, int64_t R) const {
  const int64_t H = hidden_, Hq = heads_, Hk = kv_heads_, D = head_dim_, I = inter_;
  // x, residual, h, qkv, attn, gate_up, act, qn, kn, picked (run_step names them).
  return {{T, H}, {T, H}, {T, H}, {T, (Hq + 2 * Hk) * D}, {T, Hq * D}, {T, 2 * I}, {T, I}, {T, Hq, D}, {T, Hk, D},
          {R, H}};
}

int64_t LlamaModel::scratch_elems(int64_t T, int64_t R) const {
  int64_t need = 0;
  for (const Shape& sh : scratch_shapes(T, R)) {
    int64_t n = 1;
    for (int64_t e : sh) n *= e;
    need += (n + 63) / 64 * 64;  // 128-byte aligned views
  }
  return need;
}

Tensor LlamaModel::forward(const StepBatch& b, KvCache& cache) const {
  const int64_t T = int64_t(b.token_ids.size()), S = int64_t(b.seq_lens.size());
  const int64_t R = int64_t(b.logit_rows.size());
  BIK_CHECK(int64_t(b.positions.size()) == T && int64_t(b.slot_mapping.size()) == T &&
                int64_t(b.query_start_loc.size()) == S + 1 && int64_t(b.block_tables.size()) == S,
            "model: inconsistent step batch (", T, " tokens, ", S, " sequences)");
  BIK_CHECK(int64_t(cache.k.size()) == num_layers(), "model: the KV cache has ", cache.k.size(), " layers, the model ",
            num_layers());
  if (graphs_on_ && graphable(b)) return forward_graph(b, cache);
  const Device dev = device_;
  const bool want_logits = tp_.rank == 0;  // tensor parallelism: the lm_head is replicated, rank 0 runs it
  Tensor logits = want_logits ? Tensor::empty({R, vocab_}, DType::F32, dev) : Tensor();
  if (T == 0) return logits;  // (R == 0 still runs the layers: they write the KV cache)

  int64_t width = 1;
  for (const auto& t : b.block_tables) width = std::max<int64_t>(width, int64_t(t.size()));
  const PackedMeta pm = pack_meta(b, width);
  if (meta_store_.numel() < int64_t(pm.data.size()))
    meta_store_ = Tensor::empty({std::max<int64_t>(int64_t(pm.data.size()), 2 * meta_store_.numel())}, DType::I32, dev);
  memcpy_bytes(meta_store_.data(), dev, pm.data.data(), Device::cpu(), int64_t(pm.data.size()) * 4);
  const std::vector<TensorView> v = meta_views(pm, meta_store_, dev);
  const StepViews m{v[0], v[1], v[2], v[3], v[4], v[5], v[6]};
  const AttentionHostMetadata host{pm.bt_host, b.seq_lens, b.query_start_loc};
  const int64_t need = scratch_elems(T, R);
  if (scratch_.numel() < need) scratch_ = Tensor::empty({std::max(need, scratch_.numel() * 3 / 2)}, DType::BF16, dev);
  run_step(b, cache, m, host, scratch_.ptr<bf16>(), want_logits ? logits.view() : TensorView(), Stream{});
  return logits;
}

void LlamaModel::run_step(const StepBatch& b, KvCache& cache, const StepViews& m, const AttentionHostMetadata& host,
                          bf16* scratch, const TensorView& logits, Stream s) const {
  const int64_t T = int64_t(b.token_ids.size()), R = int64_t(b.logit_rows.size());
  const Device dev = device_;
  // Activations: views into the scratch buffer.
  const DType dt = DType::BF16;
  const int64_t Hq = heads_, Hk = kv_heads_, D = head_dim_, I = inter_;
  std::vector<TensorView> buf;
  int64_t off = 0;
  for (const Shape& sh : scratch_shapes(T, R)) {
    buf.emplace_back(scratch + off, dt, sh, dev);
    off += (buf.back().numel() + 63) / 64 * 64;
  }
  const TensorView x = buf[0];         // a sub-block's output (the residual branch)
  const TensorView residual = buf[1];  // the residual stream
  const TensorView h = buf[2];         // a sub-block's normalised input
  const TensorView qkv = buf[3], attn = buf[4], gate_up = buf[5], act = buf[6];
  const TensorView qn = buf[7], kn = buf[8], picked = buf[9];
  // q, k and v: with the fused projection, column blocks of every row of qkv [T, (Hq + 2 Hk) D] (row
  // stride (Hq + 2 Hk) D); run apart, three contiguous matrices one after the other in the same memory.
  // Every op downstream takes strided views, and a row's bits do not depend on its strides.
  const int64_t qd = Hq * D, kd = Hk * D;
  const TensorView q_cols = qkv.narrow(1, 0, qd), k_cols = qkv.narrow(1, qd, kd), v_cols = qkv.narrow(1, qd + kd, kd);
  const TensorView q_apart(qkv.ptr<bf16>(), dt, {T, qd}, dev), k_apart(qkv.ptr<bf16>() + T * qd, dt, {T, kd}, dev),
      v_apart(qkv.ptr<bf16>() + T * (qd + kd), dt, {T, kd}, dev);
  // [T, n * D] (any row stride) as heads [T, n, D].
  auto heads = [&](const TensorView& cols, int64_t n) {
    return TensorView(cols.data, dt, {T, n, D}, {cols.stride[0], D, 1}, dev);
  };
  const TensorView gate_out = gate_up.narrow(1, 0, I), up_out = gate_up.narrow(1, I, I);
  const float scale = float(1.0 / std::sqrt(double(D)));

  auto tap = [this](const char* name, int64_t layer, const TensorView& t) {
    if (tap_) tap_(name, layer, t);
  };
  embedding(x, m.ids, embed_, b.token_ids, s);  // ids checked on the host: no wait for the device
  tap("embedding", -1, x);
  fill_bytes(residual, 0, s);  // the first add-and-norm then sets residual = x exactly
  for (const Layer& L : layers_) {
    const size_t li = size_t(&L - layers_.data());
    const int64_t l = int64_t(li);
    rms_norm(h, x, L.input_norm, eps_, residual, s);
    tap("input_residual", l, residual);
    tap("input_norm", l, h);
    const TensorView q = L.qkv_fused ? q_cols : q_apart, k = L.qkv_fused ? k_cols : k_apart,
                     v = L.qkv_fused ? v_cols : v_apart;
    TensorView q3 = heads(q, Hq);
    if (batch_invariant_ && L.qkv_fused && !tap_) {
      // One call: on sm_90 the q|k|v GEMM's epilogue normalises and rotates the heads and writes k and v into
      // the cache; the [T, (Hq + 2 Hk) D] product never reaches memory. The same bits as the calls below
      // (qkv_projection runs them itself where no fused kernel applies), which run whenever a tap is set.
      QkvProjection p;
      p.q_out = qn;
      p.k_cache = cache.k[li], p.v_cache = cache.v[li];
      p.x = h, p.w = L.qkv.w;
      if (L.qkv.bias) p.bias = L.qkv.bias->view();
      if (L.q_norm) p.q_norm = L.q_norm->view();
      if (L.k_norm) p.k_norm = L.k_norm->view();
      p.eps = eps_;
      p.positions = m.pos, p.cos_sin = cos_sin_;
      p.neox = neox_;
      p.slot_mapping = m.slots, p.host_slot_mapping = HostInts(b.slot_mapping);
      p.qkv = qkv, p.k_normed = kn;
      qkv_projection(p, s);
      q3 = qn;
    } else {
      if (L.qkv_fused) {
        linear(qkv, h, L.qkv, s);
      } else {
        linear(q, h, L.q, s);
        linear(k, h, L.k, s);
        linear(v, h, L.v, s);
      }
      tap("q_proj", l, q);
      tap("k_proj", l, k);
      tap("v_proj", l, v);
      TensorView k3 = heads(k, Hk);
      const TensorView v3 = heads(v, Hk);
      if (L.q_norm) {
        rms_norm(qn, q3, *L.q_norm, eps_, std::nullopt, s);
        q3 = qn;
        tap("q_norm", l, qn);
      }
      if (L.k_norm) {
        rms_norm(kn, k3, *L.k_norm, eps_, std::nullopt, s);
        k3 = kn;
        tap("k_norm", l, kn);
      }
      rotary_embedding(q3, k3, m.pos, cos_sin_, neox_, s);
      tap("rotary_q", l, q3);
      tap("rotary_k", l, k3);
      // The metadata's host copies go along, so that neither call reads the device tensors back (which
      // would synchronise the device twice per layer).
      write_kv_cache(cache.k[li], cache.v[li], k3, v3, m.slots, b.slot_mapping, s);
    }
    if (batch_invariant_)
      paged_attention(attn.reshape({T, Hq, D}), q3, cache.k[li], cache.v[li], m.bt, m.lens, m.qsl, scale, host, s);
    else  // the flash-decoding habit: the split length follows the number of sequences in the step
      paged_attention_split_by_seqs(attn.reshape({T, Hq, D}), q3, cache.k[li], cache.v[li], m.bt, m.lens, m.qsl,
                                    scale, host, s);
    tap("attention", l, attn);
    row_parallel(x, attn, L.o, s);
    tap("o_proj", l, x);
    rms_norm(h, x, L.post_attn_norm, eps_, residual, s);
    tap("post_attn_residual", l, residual);
    tap("post_attn_norm", l, h);
    if (batch_invariant_ && L.gate_up_fused && !L.gate_up.bias && !tap_) {
      // One call: on sm_90 the activation runs in the GEMM's epilogue and the [T, 2I] product never
      // reaches memory. The same bits as the path below (mm_silu_and_mul rounds as the two calls do),
      // which runs whenever the gate and up outputs are tapped.
      mm_silu_and_mul(act, h, L.gate_up.w, s);
    } else {
      if (L.gate_up_fused) {
        linear(gate_up, h, L.gate_up, s);
      } else {
        linear(gate_out, h, L.gate, s);
        linear(up_out, h, L.up, s);
      }
      tap("gate_proj", l, gate_out);
      tap("up_proj", l, up_out);
      silu_and_mul(act, gate_up, s);
    }
    tap("silu_and_mul", l, act);
    row_parallel(x, act, L.down, s);
    tap("down_proj", l, x);
  }
  if (R == 0 || logits.data == nullptr) return;
  rms_norm(h, x, final_norm_, eps_, residual, s);
  tap("final_residual", -1, residual);
  tap("final_norm", -1, h);
  // Only the rows that need logits go through the lm_head: gather them (an exact copy; `embedding`
  // with the hidden states as the table is a row gather).
  embedding(picked, m.rows, h, b.logit_rows, s);
  linear(logits, picked, lm_head_, s);
  tap("lm_head", -1, logits);
}

// ---- CUDA graphs for decode steps ---------------------------------------------------------------------

StepBatch pad_decode_step(const StepBatch& b, int64_t seqs) {
  const int64_t S = int64_t(b.seq_lens.size());
  BIK_CHECK(int64_t(b.token_ids.size()) == S && int64_t(b.logit_rows.size()) == S && seqs >= S,
            "pad_decode_step: needs a decode step (one token and one logit row per sequence) of at most ", seqs,
            " sequences, got ", b.token_ids.size(), " tokens, ", S, " sequences, ", b.logit_rows.size(), " logit rows");
  StepBatch p = b;
  for (int64_t i = S; i < seqs; ++i) {
    p.token_ids.push_back(0);
    p.positions.push_back(0);
    p.slot_mapping.push_back(-1);
    p.query_start_loc.push_back(int32_t(i + 1));
    p.seq_lens.push_back(1);
    p.block_tables.push_back({0});
    p.logit_rows.push_back(int32_t(i));
  }
  return p;
}

void LlamaModel::set_cuda_graphs(bool on) {
  if (on) {
    BIK_CHECK(device_.is_cuda(), "model: CUDA graphs need a CUDA device, the model is on ", device_.str());
    BIK_CHECK(tp_.size == 1 && tp_.chunks <= 1, "model: CUDA graphs do not run with tensor parallelism yet");
  }
  graphs_on_ = on;
  if (!on) graphs_.clear();
}

bool LlamaModel::graphable(const StepBatch& b) const {
  const int64_t T = int64_t(b.token_ids.size()), S = int64_t(b.seq_lens.size());
  if (tap_ || T == 0 || T != S || S > kMaxGraphSeqs || int64_t(b.logit_rows.size()) != S) return false;
  for (int64_t i = 0; i < S; ++i)
    if (b.query_start_loc[size_t(i + 1)] != i + 1 || b.logit_rows[size_t(i)] != i) return false;
  return true;
}

Tensor LlamaModel::forward_graph(const StepBatch& b, KvCache& cache) const {
  const int64_t S = int64_t(b.seq_lens.size());
  int64_t seqs = 1;
  while (seqs < S) seqs *= 2;
  const int64_t max_pos = max_positions();
  for (int32_t len : b.seq_lens)
    BIK_CHECK(len <= max_pos, "model: a context of ", len, " tokens is longer than the model's ", max_pos,
              " positions");
  // The block-table width is bucketed too (a power of two of blocks, at most the model's longest context):
  // a fixed full width would copy and read max_positions / block_size entries per sequence every step.
  const int64_t max_width = (max_pos + cache.block_size - 1) / cache.block_size;
  int64_t longest_table = 1;
  for (const auto& t : b.block_tables) longest_table = std::max<int64_t>(longest_table, int64_t(t.size()));
  int64_t width = 1;
  while (width < longest_table) width *= 2;
  width = std::min(width, max_width);

  const StepBatch p = pad_decode_step(b, seqs);
  const PackedMeta pm = pack_meta(p, width);

  const std::vector<const void*> cache_ptrs = cache_pointers(cache);
  DecodeGraph* g = nullptr;
  for (auto& x : graphs_)
    if (x->seqs == seqs && x->width == width && x->cache == cache_ptrs) g = x.get();
  const bool record = g == nullptr;
  if (record) {
    // Recordings of another KV cache (an engine that is gone, as a rule) are dropped: one cache's set at most.
    if (!graphs_.empty() && graphs_.front()->cache != cache_ptrs) {
      synchronize(device_);
      graphs_.clear();
    }
    if (!graph_stream_) graph_stream_ = std::make_unique<CudaStream>(device_);
    if (!graph_scratch_.data()) {
      graph_scratch_ = Tensor::empty({scratch_elems(kMaxGraphSeqs, kMaxGraphSeqs)}, DType::BF16, device_);
      graph_logits_ = Tensor::empty({kMaxGraphSeqs, vocab_}, DType::F32, device_);
    }
    auto fresh = std::make_unique<DecodeGraph>();
    fresh->seqs = seqs;
    fresh->width = width;
    fresh->cache = cache_ptrs;
    fresh->meta = Tensor::empty({int64_t(pm.data.size())}, DType::I32, device_);
    graphs_.push_back(std::move(fresh));
    g = graphs_.back().get();
  }
  const TensorView logits = graph_logits_.view().narrow(0, 0, seqs);
  // On the default stream, after the previous graph step (whose end the default stream waits for) and
  // before this one (the graph stream waits for the default stream's work so far).
  memcpy_bytes(g->meta.data(), device_, pm.data.data(), Device::cpu(), int64_t(pm.data.size()) * 4);
  const Stream s = graph_stream_->stream();
  graph_stream_->wait_for_default();
  if (!record) {
    g->graph.launch(s);
    graph_stream_->default_waits();  // the sampler (default stream) reads the logits
    ++graph_replays_;
    return graph_logits_.narrow(0, 0, S);
  }

  const std::vector<TensorView> v = meta_views(pm, g->meta, device_);
  const StepViews m{v[0], v[1], v[2], v[3], v[4], v[5], v[6]};
  // The attention launch is planned for the longest context the block tables can hold, so the recording
  // serves every later step of the bucket (the kernel reads each sequence's real length on the device;
  // splits past it exit).
  std::vector<int32_t> plan_lens = p.seq_lens;
  *std::max_element(plan_lens.begin(), plan_lens.end()) = int32_t(std::min(max_pos, width * cache.block_size));
  const AttentionHostMetadata host{pm.bt_host, plan_lens, p.query_start_loc};
  // This step: the ops run on the graph stream (which also loads every kernel and sets its attributes
  // before the recording), then the same ops are recorded for the bucket's later steps.
  run_step(p, cache, m, host, graph_scratch_.ptr<bf16>(), logits, s);
  try {
    g->graph.begin_capture(s);
    try {
      run_step(p, cache, m, host, graph_scratch_.ptr<bf16>(), logits, s);
    } catch (...) {
      try {
        g->graph.end_capture(s);
      } catch (const Error&) {
      }
      throw;
    }
    g->graph.end_capture(s);
  } catch (const Error& e) {
    std::fprintf(stderr, "bik: recording a CUDA graph failed (%s); decode steps run op by op from here\n", e.what());
    graph_stream_->default_waits();
    synchronize(device_);
    graphs_.clear();
    graphs_on_ = false;
    return graph_logits_.narrow(0, 0, S);  // this step's logits, from the ops run above
  }
  graph_stream_->default_waits();
  return graph_logits_.narrow(0, 0, S);
}

}  // namespace bik::engine

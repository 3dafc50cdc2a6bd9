// Argument validation and dispatch for the paged KV cache ops (include/bik/attention.h). Errors name
// the op, the argument, and the offending shape or value.
#include "bik/attention.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

#include "core/attention_variants.h"
#include "core/backend.h"
#include "core/policy.h"

namespace bik {
namespace {

// The values of a 1-D or 2-D I32 view, read on the host (the device is synchronised first when the view
// lives on a GPU, so values written on any stream are visible).
std::vector<int32_t> host_i32(const TensorView& t) {
  std::vector<int32_t> h(size_t(t.numel()));
  if (h.empty()) return h;
  if (t.is_contiguous()) {
    if (t.device.is_cuda()) synchronize(t.device);
    memcpy_bytes(h.data(), Device::cpu(), t.data, t.device, t.numel() * 4);
    return h;
  }
  Tensor c = Tensor::empty(t.sizes(), DType::I32, t.device);
  copy(c, t);
  if (t.device.is_cuda()) synchronize(t.device);
  memcpy_bytes(h.data(), Device::cpu(), c.data(), c.device(), t.numel() * 4);
  return h;
}

void check_i32(const char* op, const char* arg, const TensorView& t, const Shape& shape) {
  BIK_CHECK(t.dtype == DType::I32, op, ": ", arg, " must be i32, got ", t.str());
  BIK_CHECK(t.sizes() == shape, op, ": ", arg, " must be ", TensorView(nullptr, DType::I32, shape).str(),
            " (shape), got ", t.str());
  BIK_CHECK(t.data != nullptr || t.numel() == 0, op, ": ", arg, " has no data (null pointer)");
}

void check_device(const char* op, const TensorView& ref, const char* arg, const TensorView& t) {
  BIK_CHECK(t.device == ref.device, op, ": ", arg, " is on ", t.device.str(), " but q is on ", ref.device.str());
}

// k_cache / v_cache: [num_blocks, block_size, Hkv, D], contiguous, in `dtype`.
void check_cache(const char* op, const char* arg, const TensorView& c, DType dtype, int64_t d) {
  BIK_CHECK(c.ndim == 4, op, ": ", arg, " must be [num_blocks, block_size, num_kv_heads, head_dim], got ", c.str());
  BIK_CHECK(c.dtype == dtype, op, ": ", arg, " must be ", dtype_name(dtype), " (q's dtype), got ", c.str());
  BIK_CHECK(c.is_contiguous(), op, ": ", arg, " must be contiguous, got ", c.str());
  BIK_CHECK(c.shape[3] == d, op, ": ", arg, " has head_dim ", c.shape[3], " but the tokens have ", d, ": ", c.str());
  BIK_CHECK(c.shape[1] >= 1 && c.shape[0] >= 1, op, ": ", arg, " has no blocks or an empty block: ", c.str());
  BIK_CHECK(c.data != nullptr, op, ": ", arg, " has no data (null pointer)");
}

}  // namespace

namespace {
// slot_mapping's values (host_slots when the caller has them on the host, else read back here): each -1
// or in [0, slots), no slot twice.
void check_slots(const char* op, const TensorView& slot_mapping, int64_t slots, std::optional<HostInts> host_slots) {
  const int64_t T = slot_mapping.shape[0];
  std::vector<int32_t> read_back;
  if (host_slots)
    BIK_CHECK(int64_t(host_slots->size()) == T, op, ": the host copy of slot_mapping has ", host_slots->size(),
              " values, slot_mapping ", slot_mapping.str(), " has ", T);
  else
    read_back = host_i32(slot_mapping);
  const HostInts sm = host_slots ? *host_slots : HostInts(read_back);
  // (slot, token) of the tokens that write: sorted, a repeated slot sits next to its first use. This costs
  // O(T log T) per call rather than a flag per cache slot (the call runs for every layer of every step).
  std::vector<std::pair<int32_t, size_t>> writes;
  writes.reserve(sm.size());
  for (size_t t = 0; t < sm.size(); ++t) {
    if (sm[t] == -1) continue;
    BIK_CHECK(sm[t] >= 0 && sm[t] < slots, op, ": slot_mapping[", t, "] = ", sm[t], " is outside [0, ", slots,
              ") (num_blocks * block_size) and is not -1 (skip)");
    writes.push_back({sm[t], t});
  }
  std::sort(writes.begin(), writes.end());
  for (size_t i = 1; i < writes.size(); ++i)
    // Two tokens writing one slot would race on a GPU: the bits would depend on timing.
    BIK_CHECK(writes[i].first != writes[i - 1].first, op, ": slot_mapping[", writes[i].second, "] = ",
              writes[i].first, " repeats an earlier token's slot");
}

// host_slots: slot_mapping's values when the caller has them on the host, else nullopt (read back here).
void write_kv_cache_checked(const TensorView& k_cache, const TensorView& v_cache, const TensorView& k,
                            const TensorView& v, const TensorView& slot_mapping,
                            std::optional<HostInts> host_slots, Stream s) {
  const char* op = "write_kv_cache";
  BIK_CHECK(k.ndim == 3, op, ": k must be [T, num_kv_heads, head_dim], got ", k.str());
  BIK_CHECK(v.sizes() == k.sizes(), op, ": v ", v.str(), " must have k's shape ", k.str());
  BIK_CHECK(is_half(k.dtype), op, ": k must be f16 or bf16, got ", k.str());
  BIK_CHECK(v.dtype == k.dtype, op, ": v must be ", dtype_name(k.dtype), " (k's dtype), got ", v.str());
  check_cache(op, "k_cache", k_cache, k.dtype, k.shape[2]);
  check_cache(op, "v_cache", v_cache, k.dtype, k.shape[2]);
  BIK_CHECK(v_cache.sizes() == k_cache.sizes(), op, ": v_cache ", v_cache.str(), " and k_cache ", k_cache.str(),
            " must have the same shape");
  BIK_CHECK(k_cache.shape[2] == k.shape[1], op, ": k has ", k.shape[1], " kv heads but k_cache has ",
            k_cache.shape[2], ": ", k_cache.str());
  check_i32(op, "slot_mapping", slot_mapping, {k.shape[0]});
  for (auto [name, t] : {std::pair{"v", &v}, {"k_cache", &k_cache}, {"v_cache", &v_cache}, {"slot_mapping", &slot_mapping}})
    check_device(op, k, name, *t);
  BIK_CHECK(k.data != nullptr || k.numel() == 0, op, ": k has no data (null pointer)");
  BIK_CHECK(v.data != nullptr || v.numel() == 0, op, ": v has no data (null pointer)");
  if (k.numel() == 0) return;
  check_slots(op, slot_mapping, k_cache.shape[0] * k_cache.shape[1], host_slots);
  if (k.device.is_cpu())
    cpu::write_kv_cache(k_cache, v_cache, k, v, slot_mapping, s);
  else
    cuda::write_kv_cache(k_cache, v_cache, k, v, slot_mapping, s);
}
}  // namespace

void write_kv_cache(const TensorView& k_cache, const TensorView& v_cache, const TensorView& k, const TensorView& v,
                    const TensorView& slot_mapping, Stream s) {
  write_kv_cache_checked(k_cache, v_cache, k, v, slot_mapping, std::nullopt, s);
}

void write_kv_cache(const TensorView& k_cache, const TensorView& v_cache, const TensorView& k, const TensorView& v,
                    const TensorView& slot_mapping, HostInts host_slot_mapping, Stream s) {
  write_kv_cache_checked(k_cache, v_cache, k, v, slot_mapping, host_slot_mapping, s);
}

void qkv_projection(const QkvProjection& a, Stream s) {
  const char* op = "qkv_projection";
  BIK_CHECK(a.q_out.ndim == 3, op, ": q_out must be [T, Hq, D], got ", a.q_out.str());
  const int64_t T = a.q_out.shape[0], Hq = a.q_out.shape[1], D = a.q_out.shape[2];
  BIK_CHECK(Hq >= 1 && D >= 1, op, ": q_out has no heads or an empty head: ", a.q_out.str());
  BIK_CHECK(a.x.ndim == 2 && a.x.shape[0] == T, op, ": x must be [", T, ", K] (T from q_out), got ", a.x.str());
  const DType dt = a.x.dtype;
  const Device dev = a.x.device;
  BIK_CHECK(is_half(dt), op, ": x must be f16 or bf16, got ", a.x.str());
  BIK_CHECK(a.k_cache.dtype == dt && a.v_cache.dtype == dt, op, ": k_cache and v_cache must be ", dtype_name(dt),
            " (x's dtype), got ", a.k_cache.str(), " and ", a.v_cache.str());
  check_cache(op, "k_cache", a.k_cache, dt, D);
  check_cache(op, "v_cache", a.v_cache, dt, D);
  BIK_CHECK(a.v_cache.sizes() == a.k_cache.sizes(), op, ": v_cache ", a.v_cache.str(), " and k_cache ",
            a.k_cache.str(), " must have the same shape");
  const int64_t Hk = a.k_cache.shape[2], K = a.x.shape[1], qd = Hq * D, kd = Hk * D, N = qd + 2 * kd;
  BIK_CHECK(a.w.ndim == 2 && a.w.dtype == dt && a.w.shape[0] == N && a.w.shape[1] == K, op, ": w must be ",
            dtype_name(dt), "[", N, ", ", K, "] ((Hq + 2 Hk) D = (", Hq, " + 2 x ", Hk, ") x ", D,
            " rows, x's K), got ", a.w.str());
  BIK_CHECK(a.q_out.dtype == dt && a.q_out.stride[2] == 1 && a.q_out.stride[1] == D, op, ": q_out must be ",
            dtype_name(dt), " with contiguous heads (strides [*, ", D, ", 1]), got ", a.q_out.str());
  auto check_vec = [&](const char* arg, const std::optional<TensorView>& v, int64_t n) {
    if (!v) return;
    BIK_CHECK(v->ndim == 1 && v->shape[0] == n && (v->dtype == dt || v->dtype == DType::F32), op, ": ", arg,
              " must be ", dtype_name(dt), " or f32 [", n, "], got ", v->str());
    check_device(op, a.x, arg, *v);
    BIK_CHECK(v->data != nullptr, op, ": ", arg, " has no data (null pointer)");
  };
  check_vec("bias", a.bias, N);
  check_vec("q_norm", a.q_norm, D);
  check_vec("k_norm", a.k_norm, D);
  BIK_CHECK(a.qkv.ndim == 2 && a.qkv.dtype == dt && a.qkv.shape[0] == T && a.qkv.shape[1] == N, op,
            ": qkv (scratch) must be ", dtype_name(dt), "[", T, ", ", N, "], got ", a.qkv.str());
  if (a.k_norm)
    BIK_CHECK(a.k_normed.sizes() == Shape({T, Hk, D}) && a.k_normed.dtype == dt, op, ": k_normed (scratch) must be ",
              dtype_name(dt), "[", T, ", ", Hk, ", ", D, "] with k_norm, got ", a.k_normed.str());
  check_i32(op, "positions", a.positions, {T});
  check_i32(op, "slot_mapping", a.slot_mapping, {T});
  BIK_CHECK(a.cos_sin.ndim == 2 && a.cos_sin.dtype == DType::F32, op, ": cos_sin must be f32[P, rot_dim], got ",
            a.cos_sin.str());
  const int64_t rot = a.cos_sin.shape[1];
  BIK_CHECK(rot > 0 && rot % 2 == 0 && rot <= D, op, ": rot_dim (cos_sin's last dim) must be even and in [2, ", D,
            "], got ", rot);
  for (auto [name, t] : {std::pair{"q_out", &a.q_out}, {"k_cache", &a.k_cache}, {"v_cache", &a.v_cache},
                         {"w", &a.w}, {"qkv", &a.qkv}, {"positions", &a.positions}, {"cos_sin", &a.cos_sin},
                         {"slot_mapping", &a.slot_mapping}})
    check_device(op, a.x, name, *t);
  if (a.k_norm) check_device(op, a.x, "k_normed", a.k_normed);
  if (T == 0) return;
  // Before any work (the fused kernel writes the caches itself): the slots as write_kv_cache checks them,
  // and on the CPU the positions as rotary_embedding checks them there.
  check_slots(op, a.slot_mapping, a.k_cache.shape[0] * a.k_cache.shape[1], a.host_slot_mapping);
  if (dev.is_cpu()) {
    const int32_t* p = a.positions.ptr<int32_t>();
    for (int64_t i = 0; i < T; ++i)
      BIK_CHECK(p[i * a.positions.stride[0]] >= 0 && p[i * a.positions.stride[0]] < a.cos_sin.shape[0], op,
                ": positions[", i, "] = ", p[i * a.positions.stride[0]], " is outside the cos_sin table [0, ",
                a.cos_sin.shape[0], ")");
  } else if (cuda::qkv_projection_fused(a, s)) {
    return;
  }
  auto linear = [&](const TensorView& out, const TensorView& w, int64_t first, int64_t rows) {
    if (a.bias)
      addmm(out, a.bias->narrow(0, first, rows), a.x, w.narrow(0, first, rows), s);
    else
      mm(out, a.x, w.narrow(0, first, rows), s);
  };
  // [T, n * D] columns (any row stride) as heads [T, n, D].
  auto heads = [&](const TensorView& cols, int64_t n) {
    return TensorView(cols.data, dt, {T, n, D}, {cols.stride[0], D, 1}, dev);
  };
  if (a.q_norm) {
    linear(a.qkv, a.w, 0, N);
    rms_norm(a.q_out, heads(a.qkv.narrow(1, 0, qd), Hq), *a.q_norm, a.eps, std::nullopt, s);
  } else {
    // q straight into q_out: a product's element does not depend on the other rows of w in its call.
    linear(TensorView(a.q_out.data, dt, {T, qd}, {a.q_out.stride[0], 1}, dev), a.w, 0, qd);
    linear(a.qkv.narrow(1, qd, 2 * kd), a.w, qd, 2 * kd);
  }
  TensorView k3 = heads(a.qkv.narrow(1, qd, kd), Hk);
  const TensorView v3 = heads(a.qkv.narrow(1, qd + kd, kd), Hk);
  if (a.k_norm) {
    rms_norm(a.k_normed, k3, *a.k_norm, a.eps, std::nullopt, s);
    k3 = a.k_normed;
  }
  // The rotation and the KV write straight on the backend: their arguments are views checked above, and the
  // positions (CPU) and slots have been checked once already (the slots' check sorts T values, every layer).
  if (dev.is_cpu()) {
    cpu::rotary_embedding(a.q_out, k3, a.positions, a.cos_sin, a.neox, s);
    cpu::write_kv_cache(a.k_cache, a.v_cache, k3, v3, a.slot_mapping, s);
  } else {
    cuda::rotary_embedding(a.q_out, k3, a.positions, a.cos_sin, a.neox, s);
    cuda::write_kv_cache(a.k_cache, a.v_cache, k3, v3, a.slot_mapping, s);
  }
}

namespace {
// host: the metadata's values when the caller has them on the host, else nullptr (read back here).
AttentionArgs check_attention(const char* op, const TensorView& out, const TensorView& q, const TensorView& k_cache,
                              const TensorView& v_cache, const TensorView& block_tables, const TensorView& seq_lens,
                              const TensorView& query_start_loc, float scale,
                              const AttentionHostMetadata* host = nullptr) {
  BIK_CHECK(q.ndim == 3, op, ": q must be [T, num_heads, head_dim], got ", q.str());
  BIK_CHECK(is_half(q.dtype), op, ": q must be f16 or bf16, got ", q.str());
  BIK_CHECK(out.sizes() == q.sizes(), op, ": out ", out.str(), " must have q's shape ", q.str());
  BIK_CHECK(out.dtype == q.dtype, op, ": out must be ", dtype_name(q.dtype), " (q's dtype), got ", out.str());
  const int64_t d = q.shape[2];
  BIK_CHECK(d == 64 || d == 128, op, ": head_dim must be 64 or 128, got ", d, " (q ", q.str(), ")");
  BIK_CHECK(q.stride[2] == 1 || q.shape[0] * q.shape[1] == 0, op, ": q must be contiguous along head_dim, got ",
            q.str());
  BIK_CHECK(out.stride[2] == 1 || out.numel() == 0, op, ": out must be contiguous along head_dim, got ", out.str());
  check_cache(op, "k_cache", k_cache, q.dtype, d);
  check_cache(op, "v_cache", v_cache, q.dtype, d);
  BIK_CHECK(v_cache.sizes() == k_cache.sizes(), op, ": v_cache ", v_cache.str(), " and k_cache ", k_cache.str(),
            " must have the same shape");
  const int64_t hq = q.shape[1], hkv = k_cache.shape[2];
  BIK_CHECK(hq % hkv == 0, op, ": num_heads ", hq, " (q ", q.str(), ") is not a multiple of num_kv_heads ", hkv,
            " (k_cache ", k_cache.str(), ")");
  BIK_CHECK(hq / hkv <= 64, op, ": at most 64 query heads per kv head, got ", hq / hkv);
  BIK_CHECK(block_tables.ndim == 2, op, ": block_tables must be i32 [num_seqs, max_blocks], got ",
            block_tables.str());
  const int64_t S = block_tables.shape[0], max_blocks = block_tables.shape[1];
  check_i32(op, "block_tables", block_tables, {S, max_blocks});
  check_i32(op, "seq_lens", seq_lens, {S});
  check_i32(op, "query_start_loc", query_start_loc, {S + 1});
  for (auto [name, t] : {std::pair{"out", &out}, {"k_cache", &k_cache}, {"v_cache", &v_cache},
                         {"block_tables", &block_tables}, {"seq_lens", &seq_lens}, {"query_start_loc", &query_start_loc}})
    check_device(op, q, name, *t);
  BIK_CHECK(q.data != nullptr || q.numel() == 0, op, ": q has no data (null pointer)");
  BIK_CHECK(out.data != nullptr || out.numel() == 0, op, ": out has no data (null pointer)");
  // Positive: the CUDA kernels take the running max of the raw scores and scale it once (rounding is
  // monotonic only for a positive factor).
  BIK_CHECK(std::isfinite(scale) && scale > 0.f, op, ": scale must be positive and finite, got ", scale);
  if (q.device.is_cuda()) {
    // The kernel reads q rows and writes out rows as 16-byte vectors.
    for (auto [name, t] : {std::pair{"q", &q}, {"out", &out}})
      BIK_CHECK((reinterpret_cast<uintptr_t>(t->data) & 15) == 0 && t->stride[0] % 8 == 0 && t->stride[1] % 8 == 0,
                op, ": on CUDA, ", name, " must be 16-byte aligned with row strides that are multiples of 8, got ",
                t->str());
  }

  AttentionArgs a;
  a.out = out;
  a.q = q;
  a.k_cache = k_cache;
  a.v_cache = v_cache;
  a.block_tables = block_tables;
  a.seq_lens = seq_lens;
  a.query_start_loc = query_start_loc;
  a.scale = scale;
  a.tokens = q.shape[0];
  a.num_seqs = S;
  a.q_heads = hq;
  a.kv_heads = hkv;
  a.head_dim = d;
  a.block_size = k_cache.shape[1];
  std::vector<int32_t> bt_read_back;
  if (host) {
    auto check_size = [&](const char* arg, size_t got, int64_t want) {
      BIK_CHECK(int64_t(got) == want, op, ": the host copy of ", arg, " has ", got, " values, the tensor ", want);
    };
    check_size("block_tables", host->block_tables.size(), S * max_blocks);
    check_size("seq_lens", host->seq_lens.size(), S);
    check_size("query_start_loc", host->query_start_loc.size(), S + 1);
    a.host_seq_lens.assign(host->seq_lens.begin(), host->seq_lens.end());
    a.host_query_start_loc.assign(host->query_start_loc.begin(), host->query_start_loc.end());
  } else {
    a.host_seq_lens = host_i32(seq_lens);
    a.host_query_start_loc = host_i32(query_start_loc);
    bt_read_back = host_i32(block_tables);
  }
  const HostInts bt = host ? host->block_tables : HostInts(bt_read_back);
  const std::vector<int32_t>& sl = a.host_seq_lens;
  const std::vector<int32_t>& qsl = a.host_query_start_loc;
  BIK_CHECK(qsl[0] == 0, op, ": query_start_loc[0] must be 0, got ", qsl[0]);
  BIK_CHECK(qsl[size_t(S)] == a.tokens, op, ": query_start_loc[", S, "] = ", qsl[size_t(S)],
            " must equal the number of query rows T = ", a.tokens, " (q ", q.str(), ")");
  const int64_t num_blocks = k_cache.shape[0];
  for (int64_t i = 0; i < S; ++i) {
    const int64_t q_len = int64_t(qsl[size_t(i + 1)]) - qsl[size_t(i)], n = sl[size_t(i)];
    BIK_CHECK(q_len >= 0, op, ": query_start_loc must be non-decreasing, but query_start_loc[", i + 1, "] = ",
              qsl[size_t(i + 1)], " < query_start_loc[", i, "] = ", qsl[size_t(i)]);
    BIK_CHECK(n >= q_len, op, ": seq_lens[", i, "] = ", n, " is less than the sequence's ", q_len,
              " query rows (seq_lens counts cached + new tokens)");
    BIK_CHECK(n <= max_blocks * a.block_size, op, ": seq_lens[", i, "] = ", n, " needs more than the ", max_blocks,
              " blocks of block_tables' row (block_size ", a.block_size, ")");
    const int64_t used = (n + a.block_size - 1) / a.block_size;
    for (int64_t b = 0; b < used; ++b) {
      const int32_t blk = bt[size_t(i * max_blocks + b)];
      BIK_CHECK(blk >= 0 && blk < num_blocks, op, ": block_tables[", i, ", ", b, "] = ", blk,
                " is outside the cache's blocks [0, ", num_blocks, ") (sequence ", i, " uses ", used, " blocks)");
    }
    a.max_q_len = std::max(a.max_q_len, q_len);
    a.max_seq_len = std::max(a.max_seq_len, n);
  }
  return a;
}

void dispatch(const AttentionArgs& a, Stream s) {
  if (a.tokens == 0) return;
  if (a.q.device.is_cpu())
    cpu::paged_attention(a, s);
  else
    cuda::paged_attention(a, s);
}
}  // namespace

void paged_attention(const TensorView& out, const TensorView& q, const TensorView& k_cache,
                     const TensorView& v_cache, const TensorView& block_tables, const TensorView& seq_lens,
                     const TensorView& query_start_loc, float scale, Stream s) {
  dispatch(check_attention("paged_attention", out, q, k_cache, v_cache, block_tables, seq_lens, query_start_loc,
                           scale),
           s);
}

void paged_attention(const TensorView& out, const TensorView& q, const TensorView& k_cache,
                     const TensorView& v_cache, const TensorView& block_tables, const TensorView& seq_lens,
                     const TensorView& query_start_loc, float scale, const AttentionHostMetadata& host, Stream s) {
  dispatch(check_attention("paged_attention", out, q, k_cache, v_cache, block_tables, seq_lens, query_start_loc,
                           scale, &host),
           s);
}

namespace {
// The split length of the variant: one key tile per split up to 2 sequences, then a tile more for every
// 2 sequences (1 sequence: 64 keys, 13 sequences: 384 with 64-key tiles).
AttentionArgs split_by_seqs(AttentionArgs a) {
  const int64_t tile = policy::attention_plan({}, a.q.dtype, a.head_dim).key_tile;
  a.split_len = tile * std::max<int64_t>(1, a.num_seqs / 2);
  return a;
}
}  // namespace

void paged_attention_split_by_seqs(const TensorView& out, const TensorView& q, const TensorView& k_cache,
                                   const TensorView& v_cache, const TensorView& block_tables,
                                   const TensorView& seq_lens, const TensorView& query_start_loc, float scale,
                                   Stream s) {
  dispatch(split_by_seqs(check_attention("paged_attention_split_by_seqs", out, q, k_cache, v_cache, block_tables,
                                         seq_lens, query_start_loc, scale)),
           s);
}

void paged_attention_split_by_seqs(const TensorView& out, const TensorView& q, const TensorView& k_cache,
                                   const TensorView& v_cache, const TensorView& block_tables,
                                   const TensorView& seq_lens, const TensorView& query_start_loc, float scale,
                                   const AttentionHostMetadata& host, Stream s) {
  dispatch(split_by_seqs(check_attention("paged_attention_split_by_seqs", out, q, k_cache, v_cache, block_tables,
                                         seq_lens, query_start_loc, scale, &host)),
           s);
}

}  // namespace bik

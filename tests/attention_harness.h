// Shared by the CPU and CUDA attention tests: a paged KV cache with shuffled physical blocks, sequences
// whose q/k/v values are a pure function of (sequence key, position, head, dim), steps that write KV
// through write_kv_cache and run paged_attention on a ragged batch, and a float64 reference.
//
// Because a token's values depend only on its sequence key and position, "the same token" can be
// computed alone, inside any batch, in prefill, in decode, in any chunk, or on a prefix-cache hit, and
// its output bytes compared with memcmp.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "bik/attention.h"
#include "bik/tensor.h"

namespace bik::attn_test {

struct Config {
  DType dtype = DType::BF16;
  int64_t hq = 8, hkv = 2, d = 128, block_size = 16;
  float scale() const { return float(1.0 / std::sqrt(double(d))); }
};

inline uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
// which: 0 = q, 1 = k, 2 = v. Values as stored (rounded to the dtype).
inline float value(const Config& c, uint64_t key, int64_t pos, int64_t head, int64_t d, int which) {
  const uint64_t h = mix(mix(mix(key * 3 + uint64_t(which)) ^ uint64_t(pos)) ^ (uint64_t(head) << 20 | uint64_t(d)));
  const double u = double(h >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0;  // [-1, 1)
  const double amp = which == 0 ? 5.0 : which == 1 ? 1.5 : 1.0;
  return round_to(c.dtype, float(u * amp));
}

inline void put(DType t, void* base, int64_t i, float v) {
  if (t == DType::BF16)
    static_cast<bf16*>(base)[i] = to_bf16(v);
  else
    static_cast<f16*>(base)[i] = to_f16(v);
}

// A paged KV cache on one device. Sequences get physical blocks from a shuffled free list.
class Paged {
 public:
  Paged(Device dev, Config c, int64_t num_blocks, uint64_t seed) : dev_(dev), c_(c), rng_(seed) {
    kc_ = Tensor::empty({num_blocks, c.block_size, c.hkv, c.d}, c.dtype, dev);
    vc_ = Tensor::empty({num_blocks, c.block_size, c.hkv, c.d}, c.dtype, dev);
    fill_bytes(kc_, 0xFF);  // NaN: a kernel reading a slot nobody wrote poisons its output
    fill_bytes(vc_, 0xFF);
    free_.resize(size_t(num_blocks));
    std::iota(free_.begin(), free_.end(), 0);
    std::shuffle(free_.begin(), free_.end(), rng_);
  }
  const Config& config() const { return c_; }
  int add_seq(uint64_t key) {
    seqs_.push_back({key, 0, {}});
    return int(seqs_.size() - 1);
  }
  int64_t len(int id) const { return seqs_[size_t(id)].len; }

  // Writes KV of positions [len, len + n) of each listed sequence, in one write_kv_cache call.
  void write(const std::vector<std::pair<int, int64_t>>& what) {
    std::vector<int32_t> slots;
    int64_t T = 0;
    for (auto [id, n] : what) T += n;
    if (T == 0) return;
    Tensor k = Tensor::empty({T, c_.hkv, c_.d}, c_.dtype), v = Tensor::empty({T, c_.hkv, c_.d}, c_.dtype);
    int64_t t = 0;
    for (auto [id, n] : what) {
      Seq& s = seqs_[size_t(id)];
      for (int64_t i = 0; i < n; ++i, ++t) {
        const int64_t pos = s.len + i;
        while (int64_t(s.blocks.size()) * c_.block_size <= pos) {
          if (free_.empty()) throw Error("attention test: the cache ran out of blocks");
          s.blocks.push_back(free_.back());
          free_.pop_back();
        }
        slots.push_back(int32_t(s.blocks[size_t(pos / c_.block_size)] * c_.block_size + pos % c_.block_size));
        for (int64_t h = 0; h < c_.hkv; ++h)
          for (int64_t d = 0; d < c_.d; ++d) {
            put(c_.dtype, k.data(), (t * c_.hkv + h) * c_.d + d, value(c_, s.key, pos, h, d, 1));
            put(c_.dtype, v.data(), (t * c_.hkv + h) * c_.d + d, value(c_, s.key, pos, h, d, 2));
          }
      }
      s.len += n;
    }
    Tensor sm = Tensor::empty({T}, DType::I32);
    std::memcpy(sm.data(), slots.data(), slots.size() * 4);
    write_kv_cache(kc_, vc_, k.to(dev_), v.to(dev_), sm.to(dev_));
  }

  // One attention step over the listed sequences, in this order; each one's query rows are its last
  // q_len written positions. Returns out's bytes ([T, Hq, D], row-major, on the host).
  std::vector<uint16_t> attend(const std::vector<std::pair<int, int64_t>>& what,
                               const std::function<void(const TensorView&, const TensorView&, const TensorView&,
                                                        const TensorView&, const TensorView&, const TensorView&,
                                                        const TensorView&, float)>& op = {}) {
    const int64_t S = int64_t(what.size());
    int64_t T = 0, max_blocks = 1;
    for (auto [id, n] : what) {
      T += n;
      max_blocks = std::max<int64_t>(max_blocks, int64_t(seqs_[size_t(id)].blocks.size()) + 1 + int64_t(id % 3));
    }
    Tensor q = Tensor::empty({T, c_.hq, c_.d}, c_.dtype);
    Tensor bt = Tensor::empty({S, max_blocks}, DType::I32), sl = Tensor::empty({S}, DType::I32),
           qsl = Tensor::empty({S + 1}, DType::I32);
    int64_t t = 0;
    qsl.ptr<int32_t>()[0] = 0;
    for (int64_t i = 0; i < S; ++i) {
      const auto [id, n] = what[size_t(i)];
      const Seq& s = seqs_[size_t(id)];
      for (int64_t b = 0; b < max_blocks; ++b)  // entries past the used blocks are junk the op must ignore
        bt.ptr<int32_t>()[i * max_blocks + b] = b < int64_t(s.blocks.size()) ? int32_t(s.blocks[size_t(b)]) : -12345;
      sl.ptr<int32_t>()[i] = int32_t(s.len);
      for (int64_t r = 0; r < n; ++r, ++t)
        for (int64_t h = 0; h < c_.hq; ++h)
          for (int64_t d = 0; d < c_.d; ++d)
            put(c_.dtype, q.data(), (t * c_.hq + h) * c_.d + d, value(c_, s.key, s.len - n + r, h, d, 0));
      qsl.ptr<int32_t>()[i + 1] = int32_t(t);
    }
    Tensor out = Tensor::empty({T, c_.hq, c_.d}, c_.dtype, dev_);
    fill_bytes(out, 0xFF);
    Tensor qd = q.to(dev_), btd = bt.to(dev_), sld = sl.to(dev_), qsld = qsl.to(dev_);
    if (op)
      op(out, qd, kc_, vc_, btd, sld, qsld, c_.scale());
    else
      paged_attention(out, qd, kc_, vc_, btd, sld, qsld, c_.scale());
    Tensor h = out.to(Device::cpu());
    std::vector<uint16_t> bytes(size_t(h.numel()));
    std::memcpy(bytes.data(), h.data(), bytes.size() * 2);
    return bytes;
  }

 private:
  struct Seq {
    uint64_t key;
    int64_t len;
    std::vector<int64_t> blocks;
  };
  Device dev_;
  Config c_;
  std::mt19937_64 rng_;
  Tensor kc_, vc_;
  std::vector<int64_t> free_;
  std::vector<Seq> seqs_;
};

inline int64_t blocks_for(const Config& c, int64_t tokens) { return (tokens + c.block_size - 1) / c.block_size; }

// float64 reference for the query of sequence `key` at position `pos`, head h: D values.
inline std::vector<double> reference(const Config& c, uint64_t key, int64_t pos, int64_t h) {
  const int64_t kvh = h / (c.hq / c.hkv);
  std::vector<double> q(static_cast<size_t>(c.d)), s(static_cast<size_t>(pos + 1)), o(static_cast<size_t>(c.d), 0.0);
  for (int64_t d = 0; d < c.d; ++d) q[size_t(d)] = value(c, key, pos, h, d, 0);
  double m = -1e300;
  for (int64_t k = 0; k <= pos; ++k) {
    double dot = 0;
    for (int64_t d = 0; d < c.d; ++d) dot += q[size_t(d)] * value(c, key, k, kvh, d, 1);
    s[size_t(k)] = dot * double(c.scale());
    m = std::max(m, s[size_t(k)]);
  }
  double l = 0;
  for (int64_t k = 0; k <= pos; ++k) {
    const double p = std::exp(s[size_t(k)] - m);
    l += p;
    for (int64_t d = 0; d < c.d; ++d) o[size_t(d)] += p * value(c, key, k, kvh, d, 2);
  }
  for (double& x : o) x /= l;
  return o;
}

inline float stored(DType t, uint16_t bits) {
  if (t == DType::BF16) return to_float(bf16{bits});
  return to_float(f16{bits});
}

// Norm-wise relative error of one output row (D values starting at `row`) vs the reference; NaN -> inf.
inline double row_error(const Config& c, const uint16_t* row, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (int64_t d = 0; d < c.d; ++d) {
    const double x = stored(c.dtype, row[d]);
    if (!std::isfinite(x)) return INFINITY;
    num += (x - ref[size_t(d)]) * (x - ref[size_t(d)]);
    den += ref[size_t(d)] * ref[size_t(d)];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

// Bytes of one query row (all heads) of an attend() result.
inline std::vector<uint16_t> row_bytes(const Config& c, const std::vector<uint16_t>& out, int64_t row) {
  const size_t w = size_t(c.hq * c.d);
  return std::vector<uint16_t>(out.begin() + ptrdiff_t(size_t(row) * w), out.begin() + ptrdiff_t(size_t(row + 1) * w));
}

// ---- the checks, shared by the CPU and CUDA tests ---------------------------------------------------
using AttnOp = std::function<void(const TensorView&, const TensorView&, const TensorView&, const TensorView&,
                                  const TensorView&, const TensorView&, const TensorView&, float)>;

// paged_attention given the metadata's host copies (AttentionHostMetadata: no read-back inside the call),
// the path the engine takes. The copies are made here from the tensors, outside the op.
inline void attention_with_host_metadata(const TensorView& out, const TensorView& q, const TensorView& kc,
                                         const TensorView& vc, const TensorView& bt, const TensorView& sl,
                                         const TensorView& qsl, float scale) {
  auto host = [](const TensorView& t) {
    const Tensor h = Tensor::empty(t.sizes(), DType::I32, Device::cpu());
    copy(h, t);
    return std::vector<int32_t>(h.ptr<int32_t>(), h.ptr<int32_t>() + h.numel());
  };
  const std::vector<int32_t> hbt = host(bt), hsl = host(sl), hqsl = host(qsl);
  paged_attention(out, q, kc, vc, bt, sl, qsl, scale, AttentionHostMetadata{hbt, hsl, hqsl});
}

struct Outcome {
  int64_t cases = 0, diffs = 0;
};

struct SeqSpec {
  uint64_t key;
  int64_t ctx, q_len;
};

// One step over `seqs` in a fresh cache (shuffled blocks): each sequence's whole context is written,
// then its last q_len positions are the queries. Returns out's bytes.
inline std::vector<uint16_t> run_step(Device dev, const Config& c, const std::vector<SeqSpec>& seqs, uint64_t seed,
                                      const AttnOp& op = {}) {
  int64_t blocks = 4;
  for (const SeqSpec& s : seqs) blocks += blocks_for(c, s.ctx) + 1;
  Paged p(dev, c, blocks, seed);
  std::vector<std::pair<int, int64_t>> w, a;
  for (const SeqSpec& s : seqs) {
    const int id = p.add_seq(s.key);
    w.push_back({id, s.ctx});
    a.push_back({id, s.q_len});
  }
  p.write(w);
  return p.attend(a, op);
}

// Each target alone, then inside batches of the given sizes at random positions among random
// neighbours (contexts up to max_ctx); every target row's bytes must equal its bytes alone.
inline Outcome alone_vs_batched(Device dev, const Config& c, const std::vector<SeqSpec>& targets,
                                const std::vector<int>& batch_sizes, int64_t max_ctx, int64_t max_q, uint64_t seed,
                                const AttnOp& op = {}) {
  Outcome o;
  std::mt19937_64 rng(seed);
  std::vector<std::vector<uint16_t>> alone;
  for (const SeqSpec& t : targets) alone.push_back(run_step(dev, c, {t}, rng(), op));
  for (int bsz : batch_sizes) {
    std::vector<SeqSpec> batch;
    for (int i = 0; i < bsz; ++i) {
      const int64_t ctx = 1 + int64_t(rng() % uint64_t(max_ctx));
      const int64_t q = rng() % 3 == 0 ? 1 : 1 + int64_t(rng() % uint64_t(std::min(ctx, max_q)));
      batch.push_back({rng(), ctx, q});
    }
    std::vector<size_t> where;
    for (size_t t = 0; t < targets.size(); ++t) {
      const size_t at = size_t(rng() % (batch.size() + 1));
      batch.insert(batch.begin() + ptrdiff_t(at), targets[t]);
      for (size_t& w : where)
        if (w >= at) ++w;
      where.push_back(at);
    }
    const std::vector<uint16_t> out = run_step(dev, c, batch, rng(), op);
    for (size_t t = 0; t < targets.size(); ++t) {
      int64_t row0 = 0;
      for (size_t i = 0; i < where[t]; ++i) row0 += batch[i].q_len;
      for (int64_t r = 0; r < targets[t].q_len; ++r) {
        ++o.cases;
        if (row_bytes(c, out, row0 + r) != row_bytes(c, alone[t], r)) ++o.diffs;
      }
    }
  }
  return o;
}

// Prefill of n tokens in one step vs the engine's path: prefill of the first n - decode_steps tokens,
// then decode steps of `q_per_step` tokens each. Rows compared: the decoded positions.
inline Outcome decode_vs_prefill(Device dev, const Config& c, uint64_t key, int64_t n, int64_t decode_steps,
                                 int64_t q_per_step, uint64_t seed) {
  Outcome o;
  const std::vector<uint16_t> full = run_step(dev, c, {{key, n, n}}, seed);
  Paged p(dev, c, blocks_for(c, n) + 2, seed + 1);
  const int id = p.add_seq(key);
  const int64_t first = n - decode_steps * q_per_step;
  p.write({{id, first}});
  if (first > 0) p.attend({{id, first}});
  for (int64_t st = 0; st < decode_steps; ++st) {
    p.write({{id, q_per_step}});
    const std::vector<uint16_t> out = p.attend({{id, q_per_step}});
    for (int64_t r = 0; r < q_per_step; ++r) {
      ++o.cases;
      if (row_bytes(c, out, r) != row_bytes(c, full, first + st * q_per_step + r)) ++o.diffs;
    }
  }
  return o;
}

// Prefill in chunks of `chunk` tokens vs in one step, with a neighbour decode in every chunk's batch.
inline Outcome chunked_vs_whole(Device dev, const Config& c, uint64_t key, int64_t n, int64_t chunk, uint64_t seed) {
  Outcome o;
  const std::vector<uint16_t> full = run_step(dev, c, {{key, n, n}}, seed);
  Paged p(dev, c, blocks_for(c, n) + blocks_for(c, n + 1 + n / chunk) + 4, seed + 7);
  const int id = p.add_seq(key), other = p.add_seq(key ^ 0x5555);
  p.write({{other, 1 + (n % 97)}});
  for (int64_t done = 0; done < n; done += chunk) {
    const int64_t len = std::min(chunk, n - done);
    p.write({{other, 1}, {id, len}});
    const bool first = (done / chunk) % 2 == 0;  // the chunk sits before or after the neighbour
    const std::vector<uint16_t> out =
        first ? p.attend({{id, len}, {other, 1}}) : p.attend({{other, 1}, {id, len}});
    for (int64_t r = 0; r < len; ++r) {
      ++o.cases;
      if (row_bytes(c, out, (first ? 0 : 1) + r) != row_bytes(c, full, done + r)) ++o.diffs;
    }
  }
  return o;
}

// Prefix-cache hit (the first `cached` tokens' KV written by an earlier step, only the suffix queried)
// vs miss (all n tokens written and queried in one step).
inline Outcome prefix_hit_vs_miss(Device dev, const Config& c, uint64_t key, int64_t n, int64_t cached,
                                  uint64_t seed) {
  Outcome o;
  const std::vector<uint16_t> miss = run_step(dev, c, {{key, n, n}}, seed);
  Paged p(dev, c, blocks_for(c, n) + 3, seed + 3);
  const int id = p.add_seq(key);
  p.write({{id, cached}});
  p.write({{id, n - cached}});
  const std::vector<uint16_t> hit = p.attend({{id, n - cached}});
  for (int64_t r = 0; r < n - cached; ++r) {
    ++o.cases;
    if (row_bytes(c, hit, r) != row_bytes(c, miss, cached + r)) ++o.diffs;
  }
  return o;
}

// Largest norm-wise relative error (over `checks` sampled (row, head) pairs) of one step vs float64.
inline double max_error(Device dev, const Config& c, const std::vector<SeqSpec>& seqs, int checks, uint64_t seed) {
  const std::vector<uint16_t> out = run_step(dev, c, seqs, seed);
  std::mt19937_64 rng(seed);
  double worst = 0;
  int64_t row0 = 0;
  for (const SeqSpec& s : seqs) {
    for (int i = 0; i < checks; ++i) {
      const int64_t r = i == 0 ? s.q_len - 1 : int64_t(rng() % uint64_t(s.q_len));
      const int64_t h = int64_t(rng() % uint64_t(c.hq));
      const std::vector<double> ref = reference(c, s.key, s.ctx - s.q_len + r, h);
      worst = std::max(worst, row_error(c, out.data() + (row0 + r) * c.hq * c.d + h * c.d, ref));
    }
    row0 += s.q_len;
  }
  return worst;
}

inline double tolerance(DType t) { return t == DType::BF16 ? 1.2e-2 : 2.5e-3; }

}  // namespace bik::attn_test

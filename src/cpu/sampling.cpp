// CPU sampling and logprobs. One row at a time, threads over rows; nothing a row computes reads another
// row, and the random numbers come from (seed, position, vocabulary index) alone.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "bik/sampling.h"
#include "core/backend.h"
#include "core/philox.h"
#include "core/plain_draw.h"
#include "cpu/parallel.h"

namespace bik::cpu {
namespace {

float load(const TensorView& t, int64_t r, int64_t i) {
  const int64_t off = r * t.stride[0] + i * t.stride[1];
  switch (t.dtype) {
    case DType::F32: return static_cast<const float*>(t.data)[off];
    case DType::F16: return to_float(static_cast<const f16*>(t.data)[off]);
    case DType::BF16: return to_float(static_cast<const bf16*>(t.data)[off]);
    default: return 0;
  }
}

// Order used for "the k largest": larger value first, NaN above everything, ties by lower index.
// A strict weak order even with NaNs (plain `>` is not).
struct Descending {
  const float* v;
  bool operator()(int32_t a, int32_t b) const {
    const float x = v[a], y = v[b];
    const bool nx = std::isnan(x), ny = std::isnan(y);
    if (nx != ny) return nx;
    if (!nx && x != y) return x > y;
    return a < b;
  }
};

int32_t first_max(const float* v, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i) {
    if (std::isnan(v[best])) break;
    if (std::isnan(v[i]) || v[i] > v[best]) best = i;
  }
  return int32_t(best);
}

// The logits as z = x / T in place, NaN as -inf (its probability is 0; so is -inf's).
void to_z(std::vector<float>& z, float temperature) {
  for (float& x : z) x = std::isnan(x) ? -INFINITY : x / temperature;
}

// The plain draw of core/plain_draw.h on the raw logits x (overwritten only by the fallback).
int32_t plain_row(std::vector<float>& x, const SamplingParams& p) {
  using plain_draw::kGroup;
  const int64_t v = int64_t(x.size());
  const float c = plain_draw::scale(p.temperature);
  float xmax = -INFINITY;
  for (float xi : x) xmax = std::fmax(xmax, xi);  // fmax passes over NaN
  if (!std::isfinite(xmax * c)) {
    to_z(x, p.temperature);
    return first_max(x.data(), v);
  }
  auto counts = [&](int64_t i) { return i < v && std::isfinite(x[size_t(i)]); };
  int64_t best_g = -1;
  float best_score = -INFINITY;
  for (int64_t g = 0; g * kGroup < v; ++g) {
    float xm = -INFINITY;
    for (int64_t i = g * kGroup; i < g * kGroup + kGroup; ++i)
      if (counts(i)) xm = std::fmax(xm, x[size_t(i)]);
    if (xm == -INFINITY) continue;
    float e[kGroup];
    for (int k = 0; k < kGroup; ++k) {
      const int64_t i = g * kGroup + k;
      e[k] = counts(i) ? std::exp2((x[size_t(i)] - xm) * c) : 0.0f;
    }
    const float s = plain_draw::tree16(e);
    const float u = philox::to_unit(philox::group_block(p.seed, p.position, g).v[0]);
    const float score = (xm * c + std::log2(s)) + -std::log2(-std::log(u));
    if (best_g < 0 || score > best_score) best_g = g, best_score = score;
  }
  int32_t best = -1;
  float best_z = -INFINITY;
  for (int64_t i = best_g * kGroup; i < best_g * kGroup + kGroup; ++i) {
    if (!counts(i)) continue;
    const float u = philox::to_unit(philox::sampling_block(p.seed, p.position, i / 4).v[i % 4]);
    const float score = x[size_t(i)] / p.temperature + -std::log(-std::log(u));
    if (best < 0 || score > best_z) best = int32_t(i), best_z = score;
  }
  return best;
}

int32_t sample_row(std::vector<float>& z, std::vector<int32_t>& idx, const SamplingParams& p) {
  const int64_t v = int64_t(z.size());
  if (p.temperature == 0) return first_max(z.data(), v);
  if (!(p.top_k > 0 && p.top_k < v) && p.top_p >= 1.0f && !(p.min_p > 0)) return plain_row(z, p);
  to_z(z, p.temperature);  // NaN logits are never sampled; neither is -inf

  // The kept set, as indices in `idx[0, kept)`.
  idx.resize(size_t(v));
  std::iota(idx.begin(), idx.end(), 0);
  int64_t kept = v;
  const Descending desc{z.data()};
  const bool need_sorted = p.top_p < 1.0f;
  if (p.top_k > 0 && p.top_k < v) {
    std::nth_element(idx.begin(), idx.begin() + p.top_k, idx.end(), desc);
    kept = p.top_k;
  }
  if (need_sorted) std::sort(idx.begin(), idx.begin() + kept, desc);
  const float zmax = need_sorted ? z[size_t(idx[0])] : z[size_t(*std::min_element(idx.begin(), idx.begin() + kept, desc))];
  if (!std::isfinite(zmax)) return first_max(z.data(), v);  // nothing has a positive probability
  if (need_sorted) {
    // Smallest prefix in decreasing probability whose mass reaches top_p; sums in that fixed order.
    double total = 0;
    for (int64_t i = 0; i < kept; ++i) total += std::exp(double(z[size_t(idx[size_t(i)])]) - zmax);
    const double target = double(p.top_p) * total;
    double cum = 0;
    int64_t keep = 0;
    while (keep < kept) {
      cum += std::exp(double(z[size_t(idx[size_t(keep)])]) - zmax);
      ++keep;
      if (cum >= target) break;
    }
    kept = keep;
  }
  const double log_min_p = p.min_p > 0 ? std::log(double(p.min_p)) : -INFINITY;

  // Gumbel-max over the kept set; ties by lower index.
  int32_t best = -1;
  float best_score = -INFINITY;
  for (int64_t i = 0; i < kept; ++i) {
    const int32_t t = idx[size_t(i)];
    const float zt = z[size_t(t)];
    if (zt == -INFINITY || double(zt) - zmax < log_min_p) continue;
    const float u = philox::to_unit(philox::sampling_block(p.seed, p.position, t / 4).v[t % 4]);
    const float score = zt + -std::log(-std::log(u));
    if (best < 0 || score > best_score || (score == best_score && t < best)) {
      best = t;
      best_score = score;
    }
  }
  return best >= 0 ? best : first_max(z.data(), v);
}

}  // namespace

void sample(const TensorView& tokens, const TensorView& logits, const SamplingParams* params, Stream) {
  const int64_t rows = logits.shape[0], v = logits.shape[1];
  parallel_for(rows, 1, [&](int64_t r0, int64_t r1) {
    std::vector<float> z(static_cast<size_t>(v));
    std::vector<int32_t> idx;
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t i = 0; i < v; ++i) z[size_t(i)] = load(logits, r, i);
      static_cast<int32_t*>(tokens.data)[r * tokens.stride[0]] = sample_row(z, idx, params[r]);
    }
  });
}

void logprobs(const TensorView& chosen, const TensorView& top_ids, const TensorView& top_vals,
              const TensorView& logits, const TensorView& tokens, Stream s) {
  const int64_t rows = logits.shape[0], v = logits.shape[1], n = top_ids.shape[1];
  // The row's log_softmax through the library's own op, so logprobs carry its reduction order.
  Tensor lp = Tensor::empty({rows, v}, DType::F32);
  softmax(lp, logits, /*log=*/true, s);
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t t = static_cast<const int32_t*>(tokens.data)[r * tokens.stride[0]];
    BIK_CHECK(t >= 0 && t < v, "logprobs: tokens[", r, "] = ", t, " is outside the vocabulary [0, ", v, ")");
  }
  // The top n are the n largest logits (NaN first, ties by lower index): log_softmax is monotone, so their
  // logprobs come out in decreasing order too, and no tie made by rounding the logprobs reorders them.
  parallel_for(rows, 1, [&](int64_t r0, int64_t r1) {
    std::vector<int32_t> idx(static_cast<size_t>(v));
    std::vector<float> x(static_cast<size_t>(v));
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = lp.ptr<float>() + r * v;
      const int32_t t = static_cast<const int32_t*>(tokens.data)[r * tokens.stride[0]];
      static_cast<float*>(chosen.data)[r * chosen.stride[0]] = row[t];
      if (n == 0) continue;
      for (int64_t i = 0; i < v; ++i) x[size_t(i)] = load(logits, r, i);
      std::iota(idx.begin(), idx.end(), 0);
      std::partial_sort(idx.begin(), idx.begin() + n, idx.end(), Descending{x.data()});
      for (int64_t j = 0; j < n; ++j) {
        static_cast<int32_t*>(top_ids.data)[r * top_ids.stride[0] + j * top_ids.stride[1]] = idx[size_t(j)];
        static_cast<float*>(top_vals.data)[r * top_vals.stride[0] + j * top_vals.stride[1]] = row[idx[size_t(j)]];
      }
    }
  });
}

}  // namespace bik::cpu

// Greedy rows two ways, shared by the CPU and CUDA tests: the token sample() gives a row at temperature 0
// and logprobs() for it, against logprobs()' top 1 with any token passed in (the engine's greedy steps,
// src/engine/engine.cpp, read the token and its logprob from there). Rows with tied maxima, NaNs, -0 / +0
// maxima, -inf and rows of one value make the tie rules count; the control, a last-maximum argmax (ties to
// the higher index), must differ from the top 1 on some of them, or the rows would not test the rule.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "bik/sampling.h"
#include "bik/tensor.h"
#include "view_access.h"

namespace bik::test {

struct GreedyTopCounts {
  int64_t rows = 0;
  int64_t token_diffs = 0;    // sample's greedy token != logprobs' top id 0 (with 1 and with 3 top columns)
  int64_t chosen_diffs = 0;   // logprobs' chosen value of that token != its top value 0 (bits; both ways)
  int64_t control_diffs = 0;  // the last-maximum argmax != logprobs' top id 0
};

// Host logits, f32 [rows, v] (v >= 8): special rows first, then random rows rounded to halves (ties).
inline std::vector<float> greedy_top_logits(int64_t rows, int64_t v, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> d(0.0f, 3.0f);
  std::vector<float> x(static_cast<size_t>(rows * v));
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x.data() + r * v;
    for (int64_t i = 0; i < v; ++i) row[i] = r < 8 ? -1.0f - float(g() % 1000) / 100.0f : std::round(d(g) * 2) / 2;
    const int64_t a = int64_t(g() % uint64_t(v / 2)), b = v / 2 + int64_t(g() % uint64_t(v / 2));  // a < b
    switch (r) {
      case 0: row[a] = row[b] = 7.5f; break;           // tied maxima
      case 1: row[b] = NAN; break;                      // one NaN: it wins
      case 2: row[a] = row[b] = NAN; break;             // two NaNs: the first wins
      case 3: row[a] = -0.0f, row[b] = 0.0f; break;     // -0 first, +0 later: equal, the first wins
      case 4: row[a] = 0.0f, row[b] = -0.0f; break;
      case 5: for (int64_t i = 0; i < v; ++i) row[i] = 2.0f; break;          // one value
      case 6: for (int64_t i = 0; i < v; ++i) row[i] = -INFINITY; break;     // nothing finite
      case 7: row[a] = INFINITY, row[b] = INFINITY; break;                   // tied +inf
      default: break;
    }
  }
  return x;
}

// greedy_top_logits as a tensor of `dtype` (f32, bf16 or f16: rounded from the f32 values) on `dev`.
inline Tensor greedy_top_tensor(int64_t rows, int64_t v, uint64_t seed, DType dtype, Device dev) {
  const std::vector<float> x = greedy_top_logits(rows, v, seed);
  Tensor h = Tensor::empty({rows, v}, dtype);
  for (size_t i = 0; i < x.size(); ++i) test_fixtures::set(h, int64_t(i), x[i]);
  return h.to(dev);
}

// logits: the rows of greedy_top_logits on `dev` in `dtype` (f32, or bf16 / f16 rounded from them).
inline GreedyTopCounts greedy_top_counts(const Tensor& logits) {
  const int64_t rows = logits.size(0), v = logits.size(1);
  const Device dev = logits.device();
  std::vector<SamplingParams> greedy(static_cast<size_t>(rows));
  for (auto& p : greedy) p.temperature = 0.0f;
  Tensor tok = Tensor::empty({rows}, DType::I32, dev);
  sample(tok, logits, greedy);
  // The engine's other path with no top logprobs asked for: logprobs() of that token, no top columns.
  Tensor chosen = Tensor::empty({rows}, DType::F32, dev);
  logprobs(chosen, Tensor::empty({rows, 0}, DType::I32, dev), Tensor::empty({rows, 0}, DType::F32, dev), logits, tok);
  const Tensor tok_h = tok.to(Device::cpu()), chosen_h = chosen.to(Device::cpu()), x = logits.to(Device::cpu());
  // The engine's greedy call: token 0 in, the top 1 out; with one top column (no top logprobs asked for) and
  // with three (top_logprobs = 3).
  Tensor zeros_h = Tensor::empty({rows}, DType::I32);
  std::memset(zeros_h.data(), 0, size_t(rows) * 4);
  const Tensor zeros = zeros_h.to(dev);
  Tensor unused = Tensor::empty({rows}, DType::F32, dev);
  std::vector<Tensor> ids_h, vals_h;
  for (int64_t n : {1, 3}) {
    Tensor ids = Tensor::empty({rows, n}, DType::I32, dev), vals = Tensor::empty({rows, n}, DType::F32, dev);
    logprobs(unused, ids, vals, logits, zeros);
    ids_h.push_back(ids.to(Device::cpu()));
    vals_h.push_back(vals.to(Device::cpu()));
  }
  GreedyTopCounts c;
  c.rows = rows;
  for (int64_t r = 0; r < rows; ++r) {
    for (size_t q = 0; q < ids_h.size(); ++q) {
      const int64_t n = ids_h[q].size(1);
      c.token_diffs += tok_h.ptr<int32_t>()[r] != ids_h[q].ptr<int32_t>()[r * n];
      c.chosen_diffs += std::memcmp(chosen_h.ptr<float>() + r, vals_h[q].ptr<float>() + r * n, 4) != 0;
    }
    const int32_t top = ids_h[0].ptr<int32_t>()[r];
    // The control: the last of the maxima (NaN first, then larger; equal values, -0 and +0 included,
    // to the higher index).
    auto at = [&](int64_t i) { return float(test_fixtures::get(x, r * v + i)); };
    int64_t last = 0;
    for (int64_t i = 1; i < v; ++i) {
      const float a = at(i), b = at(last);
      const bool an = std::isnan(a), bn = std::isnan(b);
      if (an != bn ? an : (an || a >= b)) last = i;
    }
    c.control_diffs += last != top;
  }
  return c;
}

}  // namespace bik::test

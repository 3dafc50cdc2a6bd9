// A row for testing the plain draw's distribution (core/plain_draw.h): 40 tokens in three groups of the
// draw (the last one partial) whose masses differ far more than their largest logits do, with a NaN and
// a -inf that must never be drawn. Shared by the CPU and CUDA tests.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "bik/sampling.h"

namespace bik::test {

struct PlainDrawCase {
  std::vector<float> logits;
  float temperature = 0.7f;
  std::vector<double> expect;  // softmax(logits / T), NaN and -inf as 0
  std::vector<double> by_max;  // what a draw that scored each group by its largest logit alone would give

  PlainDrawCase() : logits(40) {
    for (int i = 0; i < 16; ++i) logits[size_t(i)] = 1.0f;                    // group 0: fifteen at the top
    for (int i = 16; i < 32; ++i) logits[size_t(i)] = i == 16 ? 1.0f : -3.0f;  // group 1: one at the top
    for (int i = 32; i < 40; ++i) logits[size_t(i)] = i == 37 ? 1.5f : 0.0f;   // group 2: partial
    logits[3] = NAN;
    logits[20] = -INFINITY;
    std::vector<double> w(logits.size(), 0.0);
    double total = 0;
    for (size_t i = 0; i < w.size(); ++i)
      if (std::isfinite(logits[i])) total += w[i] = std::exp(double(logits[i]) / temperature);
    for (double& x : w) expect.push_back(x / total);
    // The wrong draw: group g wins with probability proportional to exp(max of g / T), then a token of it
    // with its share of the group's mass.
    by_max.assign(w.size(), 0.0);
    double gsum = 0;
    std::vector<double> gmax(3, 0.0), gmass(3, 0.0);
    for (size_t i = 0; i < w.size(); ++i) {
      gmax[i / 16] = std::max(gmax[i / 16], w[i]);
      gmass[i / 16] += w[i];
    }
    for (double m : gmax) gsum += m;
    for (size_t i = 0; i < w.size(); ++i) by_max[i] = gmax[i / 16] / gsum * w[i] / gmass[i / 16];
  }

  // `draws` copies of the row into rows [draws, 40], one a position (0, 1, ...), all with one seed.
  void batch(int64_t draws, uint64_t seed, float* rows, std::vector<SamplingParams>& ps) const {
    ps.assign(size_t(draws), SamplingParams{});
    for (int64_t r = 0; r < draws; ++r) {
      std::copy(logits.begin(), logits.end(), rows + r * int64_t(logits.size()));
      ps[size_t(r)].temperature = temperature;
      ps[size_t(r)].seed = seed;
      ps[size_t(r)].position = r;
    }
  }

  // Pearson's statistics of sampled tokens against `expect` (right) and `by_max` (wrong); in_range is
  // false when a token lies outside the row (the statistics are then not formed).
  struct Fit {
    double right = INFINITY, wrong = INFINITY;
    bool in_range = false;
  };
  Fit fit(const int32_t* tokens, int64_t draws) const {
    Fit f;
    std::vector<int64_t> count(logits.size(), 0);
    for (int64_t r = 0; r < draws; ++r) {
      if (tokens[r] < 0 || size_t(tokens[r]) >= logits.size()) return f;
      ++count[size_t(tokens[r])];
    }
    f.in_range = true;
    f.right = chi2(count, expect, draws);
    f.wrong = chi2(count, by_max, draws);
    return f;
  }

  // Pearson's statistic of the counts against a distribution (tokens of probability 0 must have none:
  // any such count makes it infinite).
  static double chi2(const std::vector<int64_t>& count, const std::vector<double>& p, int64_t draws) {
    double s = 0;
    for (size_t i = 0; i < p.size(); ++i) {
      if (p[i] == 0) {
        if (count[i] != 0) return INFINITY;
        continue;
      }
      const double e = double(draws) * p[i];
      s += (double(count[i]) - e) * (double(count[i]) - e) / e;
    }
    return s;
  }
};

// 37 degrees of freedom (38 tokens of positive probability): the statistic exceeds 90 with probability
// below 1e-5 under the right distribution; the wrong one, at 60000 draws, lands in the thousands.
constexpr double kPlainDrawChi2Limit = 90.0;
constexpr int64_t kPlainDrawDraws = 60000;

}  // namespace bik::test

// Reproducible random numbers for the harness: xoshiro256** seeded through splitmix64. The standard
// library's distributions are implementation-defined, so a seed would not replay the same cases across
// compilers; these few functions do.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace bik::check {

class Rng {
 public:
  explicit Rng(uint64_t seed) {
    for (auto& w : s_) w = splitmix(seed);
  }
  // An independent stream keyed by a name: each op draws from its own stream, so checking a subset of
  // the ops replays exactly the cases the full run gives those ops.
  Rng fork(const std::string& key) const {
    uint64_t h = 1469598103934665603ull;  // FNV-1a
    for (unsigned char c : key) h = (h ^ c) * 1099511628211ull;
    return Rng(s_[0] ^ h);
  }

  uint64_t next() {
    const uint64_t r = rotl(s_[1] * 5, 7) * 9, t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return r;
  }
  // Uniform in [0, n); n > 0. The modulo bias (< n / 2^64) is irrelevant here.
  uint64_t below(uint64_t n) { return next() % n; }
  int64_t range(int64_t lo, int64_t hi) { return lo + int64_t(below(uint64_t(hi - lo + 1))); }  // [lo, hi]
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }                                  // [0, 1)
  double symmetric() { return 2.0 * uniform() - 1.0; }                                           // [-1, 1)
  bool chance(double p) { return uniform() < p; }
  template <class T>
  const T& pick(const std::vector<T>& v) {
    return v[below(v.size())];
  }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  static uint64_t splitmix(uint64_t& x) {
    uint64_t z = (x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  uint64_t s_[4];
};

}  // namespace bik::check

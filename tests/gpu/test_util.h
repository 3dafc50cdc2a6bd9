// Small helpers shared by the GPU tests: an environment variable set for one scope, the sm_90 check, and
// one element of a dtype written to or read from raw bytes.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>

#include "bik/device.h"
#include "bik/dtype.h"
#include "bik/tensor.h"

namespace bik::test {

// Sets (or, with nullptr, clears) an environment variable for one scope and restores it after.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    set(value);
  }
  ~ScopedEnv() { set(old_ ? old_->c_str() : nullptr); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  void set(const char* v) {
    if (v)
      setenv(name_.c_str(), v, 1);
    else
      unsetenv(name_.c_str());
  }
  std::string name_;
  std::optional<std::string> old_;
};

inline bool is_sm90() { return cuda_device_props(0).arch() == 90; }

inline void put(uint8_t* p, DType t, double v) {
  switch (t) {
    case DType::F32: { float f = float(v); std::memcpy(p, &f, 4); break; }
    case DType::F16: { f16 h = to_f16(float(v)); std::memcpy(p, &h, 2); break; }
    case DType::BF16: { bf16 h = to_bf16(float(v)); std::memcpy(p, &h, 2); break; }
    case DType::I32: { int32_t i = int32_t(v); std::memcpy(p, &i, 4); break; }
  }
}
inline double get(const uint8_t* p, DType t) {
  switch (t) {
    case DType::F32: { float f; std::memcpy(&f, p, 4); return f; }
    case DType::F16: { f16 h; std::memcpy(&h, p, 2); return to_float(h); }
    case DType::BF16: { bf16 h; std::memcpy(&h, p, 2); return to_float(h); }
    case DType::I32: { int32_t i; std::memcpy(&i, p, 4); return i; }
  }
  return 0;
}

// A host [rows, n] tensor whose values come from a hash of (seed, index), about N(0, scale^2)-sized and
// rounded to the dtype: cheap for the hundred-megabyte benchmark shapes (no host copy as doubles).
inline Tensor hashed_host(int64_t rows, int64_t n, DType t, double scale, uint64_t seed) {
  Tensor h = Tensor::empty({rows, n}, t);
  const int64_t es = dtype_size(t);
  uint8_t* p = static_cast<uint8_t*>(h.data());
  for (int64_t i = 0; i < rows * n; ++i) {
    uint64_t z = seed * 0x9E3779B97F4A7C15ull + uint64_t(i) + 1;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    double u = 0;  // sum of four uniforms in [-0.5, 0.5): mean 0, variance 1/3
    for (int k = 0; k < 4; ++k) u += double((z >> (16 * k)) & 0xFFFF) / 65536.0 - 0.5;
    put(p + i * es, t, u * scale * 1.7320508);
  }
  return h;
}

}  // namespace bik::test

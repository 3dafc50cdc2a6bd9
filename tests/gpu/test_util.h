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

}  // namespace bik::test

#include "bik/dtype.h"

#include <cmath>

#include "bik/error.h"

namespace bik {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::F16: return "f16";
    case DType::BF16: return "bf16";
    case DType::I32: return "i32";
  }
  return "?";
}

DType parse_dtype(const std::string& s) {
  if (s == "f32" || s == "fp32" || s == "float32" || s == "float") return DType::F32;
  if (s == "f16" || s == "fp16" || s == "float16" || s == "half") return DType::F16;
  if (s == "bf16" || s == "bfloat16") return DType::BF16;
  if (s == "i32" || s == "int32") return DType::I32;
  throw Error("unknown dtype '" + s + "' (expected f32, f16, bf16 or i32)");
}

float to_float(f16 h) {
  uint32_t sign = uint32_t(h.bits & 0x8000u) << 16;
  uint32_t exp = (h.bits >> 10) & 0x1fu;
  uint32_t man = h.bits & 0x3ffu;
  if (exp == 0x1f) return f32_from_bits(sign | 0x7f800000u | (man << 13));  // inf / nan
  if (exp != 0) return f32_from_bits(sign | ((exp + 112) << 23) | (man << 13));
  if (man == 0) return f32_from_bits(sign);
  // Subnormal: value = man * 2^-24, exact in f32.
  float v = float(man) * 5.9604644775390625e-08f;
  return sign ? -v : v;
}

f16 to_f16(float f) {
  uint32_t u = f32_bits(f);
  uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return f16{uint16_t(sign | 0x7e00u | ((a >> 13) & 0x3ffu))};  // nan
  if (a >= 0x477ff000u) return f16{uint16_t(sign | 0x7c00u)};  // rounds to >= 65520: inf
  if (a < 0x38800000u) {
    // Result is subnormal (or zero): round a * 2^24 to an integer, ties to even.
    float v = f32_from_bits(a) * 16777216.0f;  // exact scaling by a power of two
    float r = std::nearbyint(v);                 // default rounding mode: nearest even
    return f16{uint16_t(sign | uint16_t(r))};
  }
  // Normal: rebias exponent, round mantissa from 23 to 10 bits, ties to even (carry may bump exponent).
  uint32_t rebased = a - (112u << 23);
  uint32_t rounded = rebased + 0xfffu + ((rebased >> 13) & 1u);
  return f16{uint16_t(sign | (rounded >> 13))};
}

float round_to(DType t, float f) {
  switch (t) {
    case DType::F16: return to_float(to_f16(f));
    case DType::BF16: return to_float(to_bf16(f));
    default: return f;
  }
}

}  // namespace bik

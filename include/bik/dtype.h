// Element types and exact host-side conversions between them.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

namespace bik {

enum class DType : uint8_t { F32, F16, BF16, I32 };

constexpr int64_t dtype_size(DType t) { return t == DType::F16 || t == DType::BF16 ? 2 : 4; }
constexpr bool is_floating(DType t) { return t != DType::I32; }
constexpr bool is_half(DType t) { return t == DType::F16 || t == DType::BF16; }
const char* dtype_name(DType t);
// Parses "f32"/"fp32"/"float32", "f16"/"fp16"/"float16"/"half", "bf16"/"bfloat16", "i32"/"int32".
DType parse_dtype(const std::string& s);

// 16-bit storage types. Bit layouts match CUDA's __half / __nv_bfloat16.
struct f16 { uint16_t bits; };
struct bf16 { uint16_t bits; };

inline uint32_t f32_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float f32_from_bits(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

inline float to_float(bf16 h) { return f32_from_bits(uint32_t(h.bits) << 16); }
// Round to nearest even; NaN stays NaN (quiet).
inline bf16 to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{uint16_t(u >> 16)};
}
float to_float(f16 h);
f16 to_f16(float f);  // round to nearest even, overflow to inf

// Rounds a float through a storage type and back (identity for F32).
float round_to(DType t, float f);

}  // namespace bik

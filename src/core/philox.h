// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11): a counter-based
// generator, so the numbers of a (key, counter) pair never depend on what else was drawn. Shared by the
// CPU and CUDA backends, which therefore draw identical numbers.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define BIK_HD __host__ __device__ __forceinline__
#else
#define BIK_HD inline
#endif

namespace bik::philox {

struct U32x4 {
  uint32_t v[4];
};

BIK_HD U32x4 philox4x32_10(U32x4 ctr, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u, kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
#if defined(__CUDA_ARCH__)
    // The same halves of the same products; written this way the device code has no register moves
    // between the rounds (about 60 instead of 80 instructions a block on sm_90).
    const uint32_t hi0 = __umulhi(kM0, ctr.v[0]), lo0 = kM0 * ctr.v[0];
    const uint32_t hi1 = __umulhi(kM1, ctr.v[2]), lo1 = kM1 * ctr.v[2];
#else
    const uint64_t p0 = uint64_t(kM0) * ctr.v[0], p1 = uint64_t(kM1) * ctr.v[2];
    const uint32_t hi0 = uint32_t(p0 >> 32), lo0 = uint32_t(p0), hi1 = uint32_t(p1 >> 32), lo1 = uint32_t(p1);
#endif
    ctr = U32x4{{hi1 ^ ctr.v[1] ^ k0, lo1, hi0 ^ ctr.v[3] ^ k1, lo0}};
    k0 += kW0;
    k1 += kW1;
  }
  return ctr;
}

// Tag in the last counter word: keeps sampling's stream apart from any other use of the same seed.
constexpr uint32_t kSamplingTag = 0x53414D50u;  // "SAMP"

// Uniform in (0, 1), never 0 or 1: 23 random bits, centred in their cell, so every value (2k + 1) 2^-24
// is exact in a float. (With 24 bits the top cell's centre 1 - 2^-25 rounds to 1.0, whose Gumbel noise
// -log(-log u) is +inf: that token would win whatever its probability.)
BIK_HD float to_unit(uint32_t x) { return float(x >> 9) * 0x1.0p-23f + 0x1.0p-24f; }

// Tag of the plain draw's group stream (core/plain_draw.h): one block a group of vocabulary indices.
constexpr uint32_t kGroupTag = 0x47525550u;  // "GRUP"

// The 4 uniforms of vocabulary indices [4j, 4j + 4) for (seed, position).
BIK_HD U32x4 sampling_block(uint64_t seed, int64_t position, int64_t j) {
  const uint64_t pos = uint64_t(position);
  return philox4x32_10(U32x4{{uint32_t(pos), uint32_t(pos >> 32), uint32_t(uint64_t(j)), kSamplingTag}},
                       uint32_t(seed), uint32_t(seed >> 32));
}

// The words of group g of the plain draw for (seed, position); word 0 draws the group's Gumbel noise.
BIK_HD U32x4 group_block(uint64_t seed, int64_t position, int64_t g) {
  const uint64_t pos = uint64_t(position);
  return philox4x32_10(U32x4{{uint32_t(pos), uint32_t(pos >> 32), uint32_t(uint64_t(g)), kGroupTag}},
                       uint32_t(seed), uint32_t(seed >> 32));
}

}  // namespace bik::philox

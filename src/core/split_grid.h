// The attention plan's key splits (core/policy.h, policy::attention_plan), shared by the CPU backend, the
// CUDA kernels and their host-side launch planning, so that all of them cut a context at the same places.
//
// Key positions are cut at fixed absolute positions: splits of `len` keys from position 0 up to
// `long_from`, then splits of `long_len` keys. Split j covers [begin(j), begin(j + 1)). Nothing here depends
// on a batch, a query or a sequence: only on the key position, so a token's splits are the same in
// prefill, decode, any chunk and on a prefix-cache hit. A uniform grid has long_from = kNoLong.
// Invariants (make() checks them): len > 0; long_len a multiple of len; long_from a multiple of long_len.
#pragma once
#include <climits>

#if defined(__CUDACC__)
#define BIK_SPLIT_HD __host__ __device__ __forceinline__
#else
#define BIK_SPLIT_HD inline
#endif

namespace bik::policy {

struct SplitGrid {
  static constexpr int kNoLong = INT_MAX;
  int len = 0;              // keys a split below long_from
  int long_from = kNoLong;  // first position of the long splits
  int long_len = 0;         // keys a split from long_from on
  int short_count = 0;      // long_from / len: the number of short splits

  // The split holding key position pos (>= 0).
  BIK_SPLIT_HD int index(int pos) const {
    return pos < long_from ? pos / len : short_count + (pos - long_from) / long_len;
  }
  // Split j's first key position.
  BIK_SPLIT_HD int begin(int j) const { return j < short_count ? j * len : long_from + (j - short_count) * long_len; }
  // Split j's key count.
  BIK_SPLIT_HD int length(int j) const { return j < short_count ? len : long_len; }
  // Whether a split starts at key position pos.
  BIK_SPLIT_HD bool starts_at(int pos) const {
    return pos < long_from ? pos % len == 0 : (pos - long_from) % long_len == 0;
  }
  // The first split starting at key position pos or later.
  BIK_SPLIT_HD int first_from(int pos) const {
    const int j = index(pos);
    return begin(j) < pos ? j + 1 : j;
  }
  // The splits of a context of n keys (0..n - 1).
  BIK_SPLIT_HD int count(int n) const { return n <= 0 ? 0 : index(n - 1) + 1; }
  // The longest split that a context of n keys uses.
  BIK_SPLIT_HD int longest(int n) const { return n > long_from ? long_len : len; }
};

// The grid as one kernel instantiation reads it. kLong = true: the whole grid. kLong = false: the
// arithmetic of a uniform grid of `len`-key splits, for launches whose key positions all lie below
// long_from (or on a uniform grid), where the two cut the keys at the same places; the CUDA kernels are
// instantiated both ways so that launches within the short splits run none of the long splits' code.
template <bool kLong>
struct SplitView {
  const SplitGrid& g;  // read by the kLong instantiation
  int len;             // g.len, read by the other one (a kernel parameter of its own: cuda/attention.cuh)
  BIK_SPLIT_HD int index(int pos) const {
    if constexpr (kLong)
      return g.index(pos);
    else
      return pos / len;
  }
  BIK_SPLIT_HD int begin(int j) const {
    if constexpr (kLong)
      return g.begin(j);
    else
      return j * len;
  }
  BIK_SPLIT_HD int length(int j) const {
    if constexpr (kLong)
      return g.length(j);
    else
      return len;
  }
  BIK_SPLIT_HD bool starts_at(int pos) const {
    if constexpr (kLong)
      return g.starts_at(pos);
    else
      return pos % len == 0;
  }
};

// A grid with its invariants checked by the caller (policy.cpp's make_split_grid throws on a bad one).
BIK_SPLIT_HD SplitGrid split_grid_unchecked(int len, int long_from, int long_len) {
  SplitGrid g;
  g.len = len;
  g.long_from = long_from;
  g.long_len = long_len;
  g.short_count = long_from / len;
  return g;
}

}  // namespace bik::policy

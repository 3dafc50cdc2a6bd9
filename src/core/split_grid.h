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

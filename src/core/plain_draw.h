// The plain draw: how a row with temperature T > 0 and no filter (top_k 0 or >= V, top_p 1, min_p 0) is
// sampled, on every backend. Every token takes part in such a row, and a Gumbel score per token (two
// logarithms and a quarter of a Philox block each) made the draw the cost of reading the row several
// times over. The plain draw needs one Philox block and one Gumbel score per group of 16 tokens:
//
//   1. c = min(log2(e) / T, FLT_MAX), one float division. A logit x counts when it is finite (NaN and
//      -inf have probability 0; +inf: see 5).
//   2. The vocabulary is cut into groups of kGroup = 16 indices [16 g, 16 g + 16). A group with a
//      counted logit has xm, its largest counted logit, the weights e_i = 2^((x_i - xm) c) (0 for an
//      index that does not count or lies past the vocabulary), s, the sum of its 16 weights by the
//      adjacent-pairs tree (tree16), and the score
//        score_g = xm c + log2(s) + N(u_g),   N(u) = -log2(-ln u),
//      u_g from word 0 of philox::group_block(seed, position, g), each step rounded once in this order.
//   3. The group of the largest score wins (equal scores: the lower g). The token is the Gumbel-max
//      inside it with the per-token stream: argmax over its counted logits of x_i / T - ln(-ln u_i),
//      u_i = philox::sampling_block(seed, position, i / 4)[i % 4], equal scores to the lower index.
//   4. That draws exactly from softmax(x / T) but for rounding: in base-2 units a token's Gumbel score
//      is y_i + N(u) with y_i = x_i c, the largest of a group's scores is a Gumbel variable located at
//      log2 of the group's mass (xm c + log2 s) and independent of which token reaches it, so a group
//      wins with probability (its mass) / (the row's mass) and, inside it, a token with probability
//      (its weight) / s.
//   5. When xmax c is not finite, xmax the row's largest logit with NaN skipped (a +inf logit, a row of
//      only NaN and -inf, or a product that overflows), the token is the first maximum of x / T (NaN as
//      -inf), as for every other kind of row.
// The weights come from a hardware exponential on CUDA and exp2f on the CPU, so the two backends can
// differ where two scores are within such a rounding of each other; CUDA's kernels all form the same
// values in the same order and agree bit for bit.
#pragma once
#include <cfloat>
#include <cstdint>

#include "core/philox.h"

namespace bik::plain_draw {

constexpr int kGroup = 16;

// c of step 1 (T finite and > 0).
BIK_HD float scale(float temperature) {
  const float c = 1.4426950408889634f / temperature;
  return c < FLT_MAX ? c : FLT_MAX;
}

// The adjacent-pairs tree over 16 slots: ((e0 + e1) + (e2 + e3)) + ... (e is overwritten). A thread
// holding 4 or 8 adjacent slots forms the same subtrees first, so lanes sharing a group by shuffles add
// the same values in the same order.
BIK_HD float tree16(float (&e)[kGroup]) {
  for (int w = 1; w < kGroup; w *= 2)
    for (int k = 0; k < kGroup; k += 2 * w) e[k] = e[k] + e[k + w];
  return e[0];
}

}  // namespace bik::plain_draw

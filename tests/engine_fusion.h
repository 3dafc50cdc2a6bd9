// Helpers of the fused-projection tests (q|k|v and gate|up as one GEMM each) and the steps they run,
// shared by the CPU, tensor-parallel and CUDA test files. Include after engine_suite.h (random_prompt).
#pragma once
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "bik/tensor.h"
#include "engine/model.h"

namespace bik::engine {
namespace {

// A contiguous host copy of any view, and its bytes.
std::vector<uint8_t> bytes_of(const TensorView& v) {
  Tensor c = Tensor::empty(v.sizes(), v.dtype);
  copy(c, v);
  const auto* p = static_cast<const uint8_t*>(c.data());
  return std::vector<uint8_t>(p, p + c.numel() * int64_t(dtype_size(c.dtype())));
}

// The config's weights with random values in its biases (dummy biases are zero, which would hide a bias
// added to the wrong rows).
Weights with_random_biases(const ModelConfig& c, const Weights& w, uint32_t seed) {
  Weights out = w;
  if (!c.attn_bias) return out;
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 0.5f);
  for (int64_t l = 0; l < c.layers; ++l)
    for (const char* b : {"attn.q_bias", "attn.k_bias", "attn.v_bias"}) {
      const std::string name = Weights::layer_name(l, b);
      Tensor t = Tensor::empty(w.get(name).sizes(), DType::BF16);
      for (int64_t i = 0; i < t.numel(); ++i) t.ptr<bf16>()[i] = to_bf16(nd(rng));
      out.set(name, t);
    }
  return out;
}

struct TapCapture {
  std::string name;  // "0.q_proj", ...
  std::vector<uint8_t> bytes;
  int64_t row_stride;
};

struct FusionRun {
  std::vector<uint8_t> logits;  // both steps' logits, one after the other
  std::vector<TapCapture> taps;
};

// Appends one sequence to a step (whose query_start_loc starts at {0}): the tokens `ids` at positions
// first_pos.., their KV slots in `blocks` (16 tokens a block), and the logits of every row or of the last.
void add_sequence(StepBatch& b, const std::vector<int32_t>& ids, int64_t first_pos, const std::vector<int32_t>& blocks,
                  bool every_row = true) {
  for (size_t t = 0; t < ids.size(); ++t) {
    const int64_t pos = first_pos + int64_t(t);
    if (every_row) b.logit_rows.push_back(int32_t(b.token_ids.size()));
    b.token_ids.push_back(ids[t]);
    b.positions.push_back(int32_t(pos));
    b.slot_mapping.push_back(blocks[size_t(pos / 16)] * 16 + int32_t(pos % 16));
  }
  if (!every_row) b.logit_rows.push_back(int32_t(b.token_ids.size() - 1));
  b.query_start_loc.push_back(int32_t(b.token_ids.size()));
  b.seq_lens.push_back(int32_t(first_pos + int64_t(ids.size())));
  b.block_tables.push_back(blocks);
}

struct PrefillDecode {
  StepBatch prefill, decode;
};

// Two prompts prefilled together (p0 in blocks 0 and 1, p1 in block `block1`), then one decode step of
// both (the tokens next0 and next1).
PrefillDecode two_sequence_steps(const std::vector<int32_t>& p0, const std::vector<int32_t>& p1, int32_t block1,
                                 int32_t next0, int32_t next1, bool every_row = true) {
  PrefillDecode s;
  s.prefill.query_start_loc = s.decode.query_start_loc = {0};
  add_sequence(s.prefill, p0, 0, {0, 1}, every_row);
  add_sequence(s.prefill, p1, 0, {block1}, every_row);
  add_sequence(s.decode, {next0}, int64_t(p0.size()), {0, 1}, every_row);
  add_sequence(s.decode, {next1}, int64_t(p1.size()), {block1}, every_row);
  return s;
}

// Both steps on a fresh cache of `cache_blocks` blocks: the logits of both steps and every op's output
// (the tap) of `tapped` (the model itself, or one rank of a tensor-parallel one). tap = false: the logits
// only, with no tap set (a tap makes the model run gate|up and silu_and_mul apart, to show both).
FusionRun run_steps(const ModelRunner& m, LlamaModel& tapped, const PrefillDecode& steps, int64_t cache_blocks,
                    bool tap = true) {
  FusionRun r;
  if (tap)
    tapped.set_tap([&](const char* name, int64_t layer, const TensorView& out) {
      const std::string prefix = layer >= 0 ? std::to_string(layer) + "." : std::string();
      r.taps.push_back({prefix + name, bytes_of(out), out.stride[0]});
    });
  KvCache cache = m.make_cache(cache_blocks, 16);
  for (const StepBatch* b : {&steps.prefill, &steps.decode}) {
    const std::vector<uint8_t> l = bytes_of(m.forward(*b, cache));
    r.logits.insert(r.logits.end(), l.begin(), l.end());
  }
  tapped.set_tap(nullptr);
  return r;
}

// Two sequences (23 and 9 tokens) prefilled together with every row's logits, then one decode step of
// both: the logits of both steps and every op's output (the tap) of both.
FusionRun prefill_then_decode(LlamaModel& m, uint32_t seed, bool tap = true) {
  std::mt19937 rng(seed);
  const auto p0 = random_prompt(rng, 23, m.vocab_size()), p1 = random_prompt(rng, 9, m.vocab_size());
  return run_steps(m, m, two_sequence_steps(p0, p1, 4, 17, 23), 8, tap);
}

int64_t tap_stride(const FusionRun& r, const std::string& name) {
  for (const auto& t : r.taps)
    if (t.name == name) return t.row_stride;
  ADD_FAILURE() << "no tap " << name;
  return -1;
}

// One GEMM over [q; k; v] rows (and one over [gate; up]) gives every output element the same K chain as
// its own GEMM, so on `d` the fused model's logits and every op's output are those of the model that
// runs the five projections apart (whose q, k, v are contiguous matrices: the fused model's are column
// views of one [T, (Hq + 2 Hk) D] buffer, so the strided paths of rms_norm, rotary, the KV write and
// attention are compared with the contiguous ones too).
void expect_fused_projections_give_the_bits_of_separate_ones(const ModelConfig& c, Device d) {
  const Weights w = with_random_biases(c, Weights::dummy(c, 31), 5);
  LlamaModel fused(c, w, d), apart(c, w, d, true, {}, false);
  const FusionRun f = prefill_then_decode(fused, 9), a = prefill_then_decode(apart, 9);
  ASSERT_EQ(f.logits.size(), size_t((32 + 2) * c.vocab) * sizeof(float));
  EXPECT_TRUE(f.logits == a.logits) << "the fused projections changed the logits";
  // Untapped, the fused model runs gate|up and the activation as one mm_silu_and_mul.
  EXPECT_TRUE(prefill_then_decode(fused, 9, false).logits == a.logits) << "mm_silu_and_mul changed the logits";
  ASSERT_EQ(f.taps.size(), a.taps.size());
  for (size_t i = 0; i < f.taps.size(); ++i) {
    ASSERT_EQ(f.taps[i].name, a.taps[i].name);
    EXPECT_TRUE(f.taps[i].bytes == a.taps[i].bytes) << f.taps[i].name;
  }
  // Both paths ran: the fused q/k/v taps are column views of the q|k|v rows, the others whole matrices.
  const int64_t qd = c.heads * c.head_dim, wide = (c.heads + 2 * c.kv_heads) * c.head_dim;
  for (const char* l : {"0.", "1."}) {
    EXPECT_EQ(tap_stride(f, std::string(l) + "q_proj"), wide);
    EXPECT_EQ(tap_stride(f, std::string(l) + "v_proj"), wide);
    EXPECT_EQ(tap_stride(a, std::string(l) + "q_proj"), qd);
    EXPECT_EQ(tap_stride(f, std::string(l) + "up_proj"), 2 * c.intermediate);
  }
}

// The control of the comparison above: one changed weight in the last row of v (the end of the stacked
// rows) changes the fused model's logits on `d`.
void expect_fused_comparison_sees_one_changed_weight(const ModelConfig& c, Device d) {
  const Weights w = Weights::dummy(c, 31);
  Weights changed = w;
  const std::string name = Weights::layer_name(1, "attn.v");
  Tensor v = Tensor::empty(w.get(name).sizes(), DType::BF16);
  copy(v, w.get(name));
  bf16& e = v.ptr<bf16>()[v.numel() - 1];
  e = to_bf16(to_float(e) + 0.25f);
  changed.set(name, v);
  LlamaModel fused(c, changed, d), apart(c, w, d, true, {}, false);
  EXPECT_FALSE(prefill_then_decode(fused, 9).logits == prefill_then_decode(apart, 9).logits);
}

}  // namespace
}  // namespace bik::engine

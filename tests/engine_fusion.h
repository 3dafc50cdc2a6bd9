// Helpers of the fused-projection tests (q|k|v and gate|up as one GEMM each), shared by the CPU and CUDA
// test files. Include after engine_suite.h (random_prompt), inside namespace bik::engine.
#pragma once
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

// Two sequences (23 and 9 tokens) prefilled together with every row's logits, then one decode step of
// both: the logits of both steps and every op's output (the tap) of both.
FusionRun prefill_then_decode(LlamaModel& m, uint32_t seed) {
  std::mt19937 rng(seed);
  const auto p0 = random_prompt(rng, 23, m.vocab_size()), p1 = random_prompt(rng, 9, m.vocab_size());
  auto add = [](StepBatch& b, const std::vector<int32_t>& ids, int64_t first_pos, std::vector<int32_t> blocks) {
    for (size_t t = 0; t < ids.size(); ++t) {
      const int64_t pos = first_pos + int64_t(t);
      b.logit_rows.push_back(int32_t(b.token_ids.size()));
      b.token_ids.push_back(ids[t]);
      b.positions.push_back(int32_t(pos));
      b.slot_mapping.push_back(blocks[size_t(pos / 16)] * 16 + int32_t(pos % 16));
    }
    b.query_start_loc.push_back(int32_t(b.token_ids.size()));
    b.seq_lens.push_back(int32_t(first_pos + int64_t(ids.size())));
    b.block_tables.push_back(blocks);
  };
  StepBatch pre, dec;
  pre.query_start_loc = dec.query_start_loc = {0};
  add(pre, p0, 0, {0, 1});
  add(pre, p1, 0, {4});
  add(dec, {17}, 23, {0, 1});
  add(dec, {23}, 9, {4});
  FusionRun r;
  m.set_tap([&](const char* name, int64_t layer, const TensorView& out) {
    r.taps.push_back({(layer >= 0 ? std::to_string(layer) + "." : std::string()) + name, bytes_of(out), out.stride[0]});
  });
  KvCache cache = m.make_cache(8, 16);
  for (const StepBatch* b : {&pre, &dec}) {
    const std::vector<uint8_t> l = bytes_of(m.forward(*b, cache));
    r.logits.insert(r.logits.end(), l.begin(), l.end());
  }
  m.set_tap(nullptr);
  return r;
}

int64_t tap_stride(const FusionRun& r, const std::string& name) {
  for (const auto& t : r.taps)
    if (t.name == name) return t.row_stride;
  ADD_FAILURE() << "no tap " << name;
  return -1;
}

}  // namespace
}  // namespace bik::engine

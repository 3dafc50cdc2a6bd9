// Tensor parallelism on CUDA. One GPU: sum_partials against the CPU, and K ranks emulated as threads on
// the one GPU give the same logits for TP = 1 (with the chunk tree), 2, 4 and 8. Two or more GPUs: the
// NCCL ranks (one per GPU) give the same logits as TP = 1 on cuda:0, for prefill and decode.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <random>

#include "bik/ops.h"
#include "engine/engine.h"
#include "engine/model.h"
#include "engine/tp.h"
#include "engine/tp_model.h"
#include "engine_fixtures.h"
#include "gpu_env.h"

namespace bik::engine {
namespace {

// NCCL tensor parallelism needs this build's NCCL support and two GPUs at least.
#define BIK_REQUIRE_NCCL_GPUS()                                                                           \
  do {                                                                                                    \
    BIK_REQUIRE_GPU();                                                                                    \
    if (!nccl_built()) GTEST_SKIP() << "this build has no NCCL";                                          \
    if (cuda_device_count() < 2)                                                                          \
      GTEST_SKIP() << "needs 2 GPUs for NCCL tensor parallelism, found " << cuda_device_count();           \
  } while (0)

ModelConfig tp_config() {
  ModelConfig c = test_fixtures::tiny_model_config(256, 1024, 2048);  // intermediate 512
  c.heads = 8;  // every TP size up to 8 divides the heads
  c.kv_heads = 8;
  c.validate();
  return c;
}

std::vector<float> host_floats(const Tensor& t) {
  const Tensor h = t.to(Device::cpu());
  return std::vector<float>(h.ptr<float>(), h.ptr<float>() + h.numel());
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * 4) == 0);
}

// A prefill of three sequences (9, 40, 3 tokens) then one decode step of each; all rows' logits.
std::vector<float> two_steps(const ModelRunner& m) {
  KvCache cache = m.make_cache(64, 16);
  std::mt19937 rng(5);
  std::uniform_int_distribution<int32_t> d(2, int32_t(m.vocab_size() - 1));
  const std::vector<int64_t> len = {9, 40, 3};
  std::vector<float> all;
  for (int step = 0; step < 2; ++step) {
    StepBatch b;
    b.query_start_loc.push_back(0);
    for (size_t s = 0; s < len.size(); ++s) {
      std::vector<int32_t> table;
      for (int32_t i = 0; i < 16; ++i) table.push_back(int32_t(s) * 16 + i);
      const int64_t start = step == 0 ? 0 : len[s], n = step == 0 ? len[s] : 1;
      for (int64_t p = start; p < start + n; ++p) {
        b.logit_rows.push_back(int32_t(b.token_ids.size()));
        b.token_ids.push_back(d(rng));
        b.positions.push_back(int32_t(p));
        b.slot_mapping.push_back(table[size_t(p / 16)] * 16 + int32_t(p % 16));
      }
      b.query_start_loc.push_back(int32_t(b.token_ids.size()));
      b.seq_lens.push_back(int32_t(start + n));
      b.block_tables.push_back(table);
    }
    const auto l = host_floats(m.forward(b, cache));
    all.insert(all.end(), l.begin(), l.end());
  }
  return all;
}

std::unique_ptr<ModelRunner> tree_model(const ModelConfig& c, const Weights& w, int size, TpTransport transport) {
  if (size == 1) {
    TpConfig tc;
    tc.chunks = kTpInvariantChunks;
    return std::make_unique<LlamaModel>(c, w, Device::cuda(0), true, tc);
  }
  TpOptions o;
  o.size = size;
  o.chunks = kTpInvariantChunks;
  o.transport = transport;
  return std::make_unique<TpModel>(c, w, Device::cuda(0), o);
}

TEST(GpuTp, SumPartialsMatchesTheCpu) {
  BIK_REQUIRE_GPU();
  std::mt19937 rng(1);
  std::normal_distribution<float> d(0.0f, 1.0f);
  for (int64_t p : {1, 2, 8}) {
    Tensor parts = Tensor::empty({p, 7, 300}, DType::F32);
    for (int64_t i = 0; i < parts.numel(); ++i) parts.ptr<float>()[i] = d(rng) * std::ldexp(1.0f, int(i % 21) - 10);
    Tensor bias = Tensor::empty({300}, DType::F32);
    for (int64_t i = 0; i < 300; ++i) bias.ptr<float>()[i] = d(rng);
    for (DType dt : {DType::F32, DType::BF16}) {
      Tensor cpu_out = Tensor::empty({7, 300}, dt), gpu_out = Tensor::empty({7, 300}, dt, Device::cuda(0));
      sum_partials(cpu_out, parts, bias.view());
      const Tensor gp = parts.to(Device::cuda(0)), gb = bias.to(Device::cuda(0));
      sum_partials(gpu_out, gp, gb.view());
      const Tensor back = gpu_out.to(Device::cpu());
      EXPECT_EQ(std::memcmp(back.data(), cpu_out.data(), size_t(cpu_out.numel() * dtype_size(dt))), 0) << "p " << p;
    }
  }
}

TEST(GpuTp, EmulatedRanksOnOneGpuGiveTheSameLogits) {
  BIK_REQUIRE_GPU();
  const ModelConfig c = tp_config();
  const Weights w = Weights::dummy(c, 3);
  const auto ref = two_steps(*tree_model(c, w, 1, TpTransport::Threads));
  for (int k : {2, 4, 8})
    EXPECT_TRUE(same_bits(ref, two_steps(*tree_model(c, w, k, TpTransport::Threads)))) << "TP=" << k;
}

TEST(GpuTp, NcclRanksGiveTheSameLogitsAsOneGpu) {
  BIK_REQUIRE_NCCL_GPUS();
  const int gpus = cuda_device_count();
  const ModelConfig c = tp_config();
  const Weights w = Weights::dummy(c, 3);
  const auto ref = two_steps(*tree_model(c, w, 1, TpTransport::Nccl));
  for (int k : {2, 4, 8}) {
    if (k > gpus) break;
    EXPECT_TRUE(same_bits(ref, two_steps(*tree_model(c, w, k, TpTransport::Nccl)))) << "NCCL TP=" << k;
  }
}

TEST(GpuTp, NcclEngineTokensAndThroughput) {
  BIK_REQUIRE_NCCL_GPUS();
  const int gpus = cuda_device_count();
  const ModelConfig c = tp_config();
  const Weights w = Weights::dummy(c, 3);
  std::mt19937 rng(4);
  std::uniform_int_distribution<int32_t> d(2, int32_t(c.vocab - 1));
  std::vector<std::vector<int32_t>> prompts(32, std::vector<int32_t>(64));
  for (auto& p : prompts)
    for (auto& t : p) t = d(rng);
  RequestParams rp;
  rp.temperature = 0.8f;
  rp.max_tokens = 32;
  rp.seed = 9;
  EngineConfig ec;
  ec.num_blocks = 512;
  std::vector<RequestOutput> ref;
  for (int k : {1, 2, 4, 8}) {
    if (k > gpus) break;
    const auto m = tree_model(c, w, k, TpTransport::Nccl);
    LLMEngine e(*m, ec);
    const auto t0 = std::chrono::steady_clock::now();
    const auto outs = e.generate(prompts, {rp});
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("TP=%d: %lld tokens in %.3f s (%.0f tok/s)\n", k, (long long)e.stats().sampled_tokens, s,
                double(e.stats().sampled_tokens) / s);
    if (ref.empty()) {
      ref = outs;
      continue;
    }
    for (size_t i = 0; i < outs.size(); ++i) {
      EXPECT_EQ(outs[i].tokens, ref[i].tokens) << "TP=" << k << " request " << i;
      EXPECT_TRUE(same_bits(outs[i].logprobs, ref[i].logprobs)) << "TP=" << k << " request " << i;
    }
  }
}

}  // namespace
}  // namespace bik::engine

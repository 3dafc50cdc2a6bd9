// qkv_projection on CUDA: the q|k|v GEMM whose epilogue normalises and rotates the heads and writes k and v
// into the cache (sm_90, src/cuda/gemm_heads.cuh) against the composed calls it stands for (mm or addmm,
// rms_norm, rotary_embedding, write_kv_cache; BIK_QKV_FUSED=0), bit for bit, for head sizes 64 and 128,
// with and without norms and biases, both rotations, every heads tile, rows past the rotary table and
// tokens that skip the cache; rows alone against the same rows in batches of many sizes; and the negative
// control: the same row check applied to cuBLASLt's product followed by the composed calls must find
// differences.
#include <gtest/gtest.h>

#include "gpu/gpu_env.h"
#include "gpu/gemm_test_util.h"
#include "gpu/test_util.h"

#if BIK_WITH_CUDA
#include <algorithm>
#include <cstdio>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "bik/attention.h"
#include "bik/ops.h"
#include "bik/tensor.h"
#include "cuda/cublas_gemm.h"
#include "cuda/gemm.h"

using namespace bik;

namespace {

using test::dev;
using test::dev_filled;
using test::differing;
using test::gpu;
using test::is_sm90;
using test::make_args;
using test::ScopedEnv;

struct Heads {
  int64_t hq, hk, d, k;
  bool norms, bias, neox;
  DType param_dt;  // the norms' and the bias's dtype
};
std::string describe(const Heads& h, int64_t m) {
  return "M=" + std::to_string(m) + " Hq=" + std::to_string(h.hq) + " Hk=" + std::to_string(h.hk) +
         " D=" + std::to_string(h.d) + " K=" + std::to_string(h.k) + (h.norms ? " norms" : "") +
         (h.bias ? " bias" : "") + (h.neox ? " neox" : " interleaved") + " " + dtype_name(h.param_dt);
}

constexpr int64_t kTable = 4096;  // positions in the rotary table

// The weights of one layer and the inputs of one call of M rows.
struct Layer {
  Heads h;
  Tensor w, bias, q_norm, k_norm, cos_sin;
  Layer(const Heads& hh, uint64_t seed) : h(hh) {
    const int64_t n = (h.hq + 2 * h.hk) * h.d;
    w = dev_filled({n, h.k}, DType::BF16, seed);
    if (h.bias) bias = dev_filled({n}, h.param_dt, seed + 1);
    if (h.norms) {
      q_norm = dev_filled({h.d}, h.param_dt, seed + 2);
      k_norm = dev_filled({h.d}, h.param_dt, seed + 3);
    }
    cos_sin = rope_cos_sin_table(kTable, h.d, 1e6, gpu());
  }
  int64_t n() const { return (h.hq + 2 * h.hk) * h.d; }
};
struct Inputs {
  Tensor x, pos, slots;
  int64_t m, slot_count;
};
Tensor i32_dev(const std::vector<int32_t>& v) {
  Tensor t = Tensor::empty({int64_t(v.size())}, DType::I32);
  std::copy(v.begin(), v.end(), t.ptr<int32_t>());
  return t.to(gpu());
}
// Random positions (row 2 past the table: left unrotated) and a random permutation of the cache slots
// (row 1 skips the cache with -1).
Inputs make_inputs(const Layer& l, int64_t m, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Inputs in;
  in.m = m;
  in.slot_count = 2 * m + 16;
  in.x = dev_filled({m, l.h.k}, DType::BF16, seed);
  std::vector<int32_t> pos(static_cast<size_t>(m)), slots(static_cast<size_t>(in.slot_count));
  for (auto& p : pos) p = int32_t(rng() % uint64_t(kTable));
  if (m > 2) pos[2] = int32_t(kTable + 5);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  slots.resize(size_t(m));
  if (m > 1) slots[1] = -1;
  in.pos = i32_dev(pos);
  in.slots = i32_dev(slots);
  return in;
}

struct Outputs {
  Tensor q, k_cache, v_cache;
};
Outputs empty_outputs(const Layer& l, const Inputs& in) {
  Outputs o{dev({in.m, l.h.hq, l.h.d}, DType::BF16), dev({in.slot_count / 8 + 1, 8, l.h.hk, l.h.d}, DType::BF16),
            dev({in.slot_count / 8 + 1, 8, l.h.hk, l.h.d}, DType::BF16)};
  fill_bytes(o.q, 0xff);  // poison: an element left unwritten shows
  fill_bytes(o.k_cache, 0x5a);
  fill_bytes(o.v_cache, 0x5a);
  return o;
}
QkvProjection args(const Layer& l, const Inputs& in, const Outputs& o, const Tensor& qkv, const Tensor& k_normed) {
  QkvProjection p;
  p.q_out = o.q, p.k_cache = o.k_cache, p.v_cache = o.v_cache;
  p.x = in.x, p.w = l.w;
  if (l.h.bias) p.bias = l.bias.view();
  if (l.h.norms) p.q_norm = l.q_norm.view(), p.k_norm = l.k_norm.view();
  p.eps = 1e-6f;
  p.positions = in.pos, p.cos_sin = l.cos_sin, p.neox = l.h.neox;
  p.slot_mapping = in.slots;
  p.qkv = qkv, p.k_normed = k_normed;
  return p;
}

enum class Impl { Bik, CublasThenCalls };

// One call on `impl`: BIK's qkv_projection (fused unless BIK_QKV_FUSED=0), or cuBLASLt's product followed
// by the composed calls (the negative control).
Outputs run(Impl impl, const Layer& l, const Inputs& in) {
  Outputs o = empty_outputs(l, in);
  const Tensor qkv = dev({in.m, l.n()}, DType::BF16), kn = dev({in.m, l.h.hk, l.h.d}, DType::BF16);
  fill_bytes(qkv, 0xff);
  if (impl == Impl::Bik) {
    qkv_projection(args(l, in, o, qkv, kn));
    return o;
  }
  cuda::cublaslt_gemm(make_args(qkv, in.x, l.w, l.h.bias ? std::optional<TensorView>(l.bias.view()) : std::nullopt),
                      {});
  const int64_t qd = l.h.hq * l.h.d, kd = l.h.hk * l.h.d;
  auto heads = [&](int64_t first, int64_t count) {
    return TensorView(qkv.ptr<bf16>() + first, DType::BF16, {in.m, count, l.h.d}, {l.n(), l.h.d, 1}, gpu());
  };
  TensorView k3 = heads(qd, l.h.hk);
  if (l.h.norms) {
    rms_norm(o.q, heads(0, l.h.hq), l.q_norm, 1e-6f);
    rms_norm(kn, k3, l.k_norm, 1e-6f);
    k3 = kn;
  } else {
    copy(o.q, heads(0, l.h.hq));
  }
  rotary_embedding(o.q, k3, in.pos, l.cos_sin, l.h.neox);
  write_kv_cache(o.k_cache, o.v_cache, k3, heads(qd + kd, l.h.hk), in.slots);
  return o;
}

int64_t differing_outputs(const Outputs& a, const Outputs& b) {
  return differing(a.q, b.q) + differing(a.k_cache, b.k_cache) + differing(a.v_cache, b.v_cache);
}

const std::vector<Heads>& heads_cases() {
  static const std::vector<Heads> c = {
      {32, 8, 128, 256, true, false, true, DType::F32},    // Qwen3-8B's heads
      {12, 2, 128, 320, false, true, true, DType::F32},    // Qwen2.5 (biases, no norms), K not a multiple of 64
      {9, 3, 64, 576, false, false, true, DType::BF16},    // SmolLM2-135M
      {4, 4, 64, 200, true, true, false, DType::BF16},     // interleaved pairs, bf16 norms and bias
      {2, 1, 128, 64, true, true, false, DType::F32},      // one column tile for N = 512
      {4, 4, 128, 320, true, true, false, DType::F32}};    // interleaved pairs at D = 128
  return c;
}
// The heads tiles BIK_QKV_TILE may name for heads of d.
std::vector<const char*> heads_tiles(int64_t d) {
  if (d == 128) return {"64x128", "128x128", "128x256"};
  return {"64x64", "64x128", "64x192", "128x128", "128x192"};
}

TEST(GpuQkvHeads, FusedGivesTheBitsOfTheCalls) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "the heads epilogue is the sm_90 kernel's (elsewhere qkv_projection is the calls)";
  int64_t compared = 0;
  const uint64_t before = cuda::gemm_sm90_heads_launches();
  for (const Heads& h : heads_cases()) {
    const Layer l(h, 11 + uint64_t(h.d + h.hq));
    for (int64_t m : {1, 2, 5, 64, 65, 100, 129, 200, 256, 300, 513}) {
      const Inputs in = make_inputs(l, m, uint64_t(m) * 7 + 3);
      Outputs ref;
      {
        const ScopedEnv calls("BIK_QKV_FUSED", "0");
        ref = run(Impl::Bik, l, in);
      }
      std::vector<const char*> tiles = {nullptr};
      for (const char* t : heads_tiles(h.d)) tiles.push_back(t);
      for (const char* tile : tiles) {
        const ScopedEnv env("BIK_QKV_TILE", tile);
        EXPECT_EQ(differing_outputs(run(Impl::Bik, l, in), ref), 0) << describe(h, m) << " tile "
                                                                     << (tile ? tile : "by the rule");
        ++compared;
      }
    }
  }
  const uint64_t fused = cuda::gemm_sm90_heads_launches() - before;
  std::printf("[qkv heads] %lld calls compared bit for bit with the composed calls, %llu fused\n", (long long)compared,
              (unsigned long long)fused);
  EXPECT_EQ(fused, uint64_t(compared)) << "a call that should have run fused did not";
}

// Where the fused kernel does not apply (a partial rotation, BIK_QKV_FUSED=0, the sizes where the calls are
// faster) the composed calls run: no fused launch, and still the bits of the calls.
TEST(GpuQkvHeads, ComposedWhereTheKernelDoesNotApply) {
  BIK_REQUIRE_GPU();
  const Heads h{8, 2, 128, 256, true, false, true, DType::F32};
  const Layer l(h, 5);
  const Inputs in = make_inputs(l, 40, 9);
  {
    const ScopedEnv calls("BIK_QKV_FUSED", "0");
    const uint64_t before = cuda::gemm_sm90_heads_launches();
    run(Impl::Bik, l, in);
    EXPECT_EQ(cuda::gemm_sm90_heads_launches(), before) << "BIK_QKV_FUSED=0 still fused";
  }
  // A rotation of half the dims: the kernel rotates all of D, so the calls run (and rotate the first 64).
  Layer half = l;
  half.cos_sin = rope_cos_sin_table(kTable, h.d / 2, 1e6, gpu());
  const uint64_t before = cuda::gemm_sm90_heads_launches();
  const Outputs partial = run(Impl::Bik, half, in);
  EXPECT_EQ(cuda::gemm_sm90_heads_launches(), before) << "a partial rotation ran fused";
  EXPECT_GT(differing_outputs(partial, run(Impl::Bik, l, in)), 0) << "the partial rotation changed nothing";
  if (is_sm90()) EXPECT_EQ(cuda::gemm_sm90_heads_launches(), before + 1) << "the full rotation did not run fused";
  // Qwen3-8B's heads at 320 < M <= 416, where the calls are faster on an H200: the calls, the same bits; with
  // BIK_QKV_TILE the fused kernel.
  const Layer q3(Heads{32, 8, 128, 256, true, false, true, DType::F32}, 8);
  for (int64_t m : {320, 352, 416, 417}) {
    const Inputs in8 = make_inputs(q3, m, 4);
    Outputs ref;
    {
      const ScopedEnv calls("BIK_QKV_FUSED", "0");
      ref = run(Impl::Bik, q3, in8);
    }
    const uint64_t at = cuda::gemm_sm90_heads_launches();
    EXPECT_EQ(differing_outputs(run(Impl::Bik, q3, in8), ref), 0) << "M=" << m;
    const bool fused = m <= 320 || m > 416;
    if (is_sm90()) EXPECT_EQ(cuda::gemm_sm90_heads_launches() - at, fused ? 1u : 0u) << "M=" << m;
    const ScopedEnv tile("BIK_QKV_TILE", "128x256");
    EXPECT_EQ(differing_outputs(run(Impl::Bik, q3, in8), ref), 0) << "M=" << m << " on 128x256";
    if (is_sm90()) EXPECT_EQ(cuda::gemm_sm90_heads_launches() - at, fused ? 2u : 1u) << "M=" << m;
  }
}

struct RowStats {
  int64_t cases = 0, diffs = 0;
};

// The row check: rows of a random pool alone (M = 1, at their own position and slot), then hidden at random
// places among random neighbours in calls of many sizes; each row's q and its cache slots compared byte for
// byte with the row alone.
RowStats row_check(Impl impl, const Heads& h, uint64_t seed) {
  const Layer l(h, seed);
  const int targets = 16, pool_rows = 1024;
  std::mt19937_64 rng(seed);
  const Tensor pool = dev_filled({pool_rows, h.k}, DType::BF16, seed + 1);
  std::vector<int32_t> target_pos(targets);
  for (auto& p : target_pos) p = int32_t(rng() % uint64_t(kTable));
  std::vector<Outputs> alone;
  for (int t = 0; t < targets; ++t) {
    Inputs in{dev({1, h.k}, DType::BF16), i32_dev({target_pos[size_t(t)]}), i32_dev({0}), 1, 1};
    copy(in.x, pool.view().narrow(0, t, 1));
    alone.push_back(run(impl, l, in));
  }
  auto slot_bytes = [&](const Tensor& cache, int64_t slot) {
    const int64_t bs = cache.view().shape[1];
    return cache.view().select(0, slot / bs).narrow(0, slot % bs, 1);
  };
  RowStats st;
  for (int64_t m : {1, 2, 3, 7, 16, 17, 63, 64, 65, 127, 128, 129, 200, 255, 256, 257, 300, 509, 1000}) {
    Inputs in = make_inputs(l, m, seed + uint64_t(m));
    for (int64_t r0 = 0; r0 < m; r0 += 256) {
      const int64_t len = std::min<int64_t>(256, m - r0);
      copy(in.x.view().narrow(0, r0, len), pool.view().narrow(0, int64_t(rng() % uint64_t(pool_rows - len)), len));
    }
    Tensor pos_host = Tensor::empty({m}, DType::I32), slot_host = Tensor::empty({m}, DType::I32);
    copy(pos_host, in.pos);
    copy(slot_host, in.slots);
    std::vector<std::pair<int64_t, int>> at;  // (row, target), distinct rows that write the cache
    std::set<int64_t> used;
    // Row 1 of a call skips the cache (make_inputs), so m - 1 rows of m > 1 write it.
    while (at.size() < size_t(std::min<int64_t>(m > 1 ? m - 1 : m, 6))) {
      const int64_t row = int64_t(rng() % uint64_t(m));
      if (slot_host.ptr<int32_t>()[row] < 0 || !used.insert(row).second) continue;
      const int who = int(rng() % uint64_t(targets));
      copy(in.x.view().narrow(0, row, 1), pool.view().narrow(0, who, 1));
      pos_host.ptr<int32_t>()[row] = target_pos[size_t(who)];
      at.emplace_back(row, who);
    }
    in.pos = pos_host.to(gpu());
    const Outputs out = run(impl, l, in);
    for (const auto& [row, who] : at) {
      const int32_t slot = slot_host.ptr<int32_t>()[row];
      const Outputs& a = alone[size_t(who)];
      ++st.cases;
      const int64_t d = differing(out.q.view().narrow(0, row, 1), a.q) +
                        differing(slot_bytes(out.k_cache, slot), slot_bytes(a.k_cache, 0)) +
                        differing(slot_bytes(out.v_cache, slot), slot_bytes(a.v_cache, 0));
      st.diffs += d != 0;
    }
  }
  return st;
}

// 16 q heads and 8 k and v heads of 128: a [4096, 4096] product, a shape where cuBLASLt's choice is known
// to change the bits with M on an H200 (GpuGemm.NegativeControlCublasLtIsCaught).
const Heads kRowHeads{16, 8, 128, 4096, true, false, true, DType::F32};

TEST(GpuQkvHeads, RowsAreBatchInvariant) {
  BIK_REQUIRE_GPU();
  // Qwen3-8B's heads: rows move between the 64x128, 128x128 and 128x256 heads tiles with M.
  for (const Heads& h : {kRowHeads, Heads{32, 8, 128, 4096, true, false, true, DType::F32},
                         Heads{9, 3, 64, 576, false, true, true, DType::BF16}}) {
    const uint64_t before = cuda::gemm_sm90_heads_launches();
    const RowStats st = row_check(Impl::Bik, h, 101);
    std::printf("[qkv heads rows] %s: %lld of %lld rows differ from the row alone (%llu fused launches)\n",
                describe(h, 0).c_str(), (long long)st.diffs, (long long)st.cases,
                (unsigned long long)(cuda::gemm_sm90_heads_launches() - before));
    EXPECT_GT(st.cases, 50);
    EXPECT_EQ(st.diffs, 0) << describe(h, 0);
  }
}

TEST(GpuQkvHeads, NegativeControlCublasLtIsCaught) {
  BIK_REQUIRE_GPU();
  const RowStats st = row_check(Impl::CublasThenCalls, kRowHeads, 101);
  std::printf("[qkv heads rows] cublaslt + the calls, %s: %lld of %lld rows differ from the row alone\n",
              describe(kRowHeads, 0).c_str(), (long long)st.diffs, (long long)st.cases);
  EXPECT_GT(st.diffs, 0) << "the row check found no variance in cuBLASLt: it has no teeth";
}

}  // namespace
#endif

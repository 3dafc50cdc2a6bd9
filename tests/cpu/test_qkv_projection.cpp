// qkv_projection on the CPU: the calls it stands for (mm or addmm over the stacked q|k|v rows, rms_norm of
// each q and k head, rotary_embedding, write_kv_cache), run one by one here, give the same bytes in q_out
// and in both caches, with and without norms and biases (without a q norm, q goes straight from the
// product into q_out); a changed norm weight shows in the comparison; bad arguments are errors that name
// the argument.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bik/attention.h"
#include "bik/ops.h"
#include "bik/tensor.h"

namespace bik {
namespace {

Tensor random_tensor(const Shape& s, DType dt, std::mt19937& rng) {
  Tensor t = Tensor::empty(s, dt);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (dt == DType::F32)
      t.ptr<float>()[i] = u(rng);
    else
      t.ptr<bf16>()[i] = to_bf16(u(rng));
  }
  return t;
}
Tensor i32(const std::vector<int32_t>& v) {
  Tensor t = Tensor::empty({int64_t(v.size())}, DType::I32);
  std::memcpy(t.data(), v.data(), v.size() * 4);
  return t;
}
bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.numel() == b.numel() && a.dtype() == b.dtype() &&
         std::memcmp(a.data(), b.data(), size_t(a.numel()) * dtype_size(a.dtype())) == 0;
}

struct Case {
  int64_t t = 7, hq = 4, hk = 2, d = 64, k = 48;
  bool norms = true, bias = true;
};

struct QkvSetup {
  Case c;
  Tensor x, w, bias, q_norm, k_norm, pos, slots, cos_sin;
  explicit QkvSetup(const Case& cc, uint32_t seed = 3) : c(cc) {
    std::mt19937 rng(seed);
    const int64_t n = (c.hq + 2 * c.hk) * c.d;
    x = random_tensor({c.t, c.k}, DType::BF16, rng);
    w = random_tensor({n, c.k}, DType::BF16, rng);
    bias = random_tensor({n}, DType::F32, rng);
    q_norm = random_tensor({c.d}, DType::F32, rng);
    k_norm = random_tensor({c.d}, DType::F32, rng);
    std::vector<int32_t> p, s;
    for (int64_t i = 0; i < c.t; ++i) p.push_back(int32_t(5 + 3 * i)), s.push_back(int32_t(2 * i + 1));
    s[1] = -1;  // skips the cache
    pos = i32(p);
    slots = i32(s);
    cos_sin = rope_cos_sin_table(64, c.d, 10000.0);
  }
  Tensor cache() const {
    Tensor t = Tensor::empty({4, 8, c.hk, c.d}, DType::BF16);
    fill_bytes(t, 0x5a);
    return t;
  }
};

struct Result {
  Tensor q, kc, vc;
};

Result by_qkv_projection(const QkvSetup& s) {
  const Case& c = s.c;
  Result r{Tensor::empty({c.t, c.hq, c.d}, DType::BF16), s.cache(), s.cache()};
  fill_bytes(r.q, 0xff);
  QkvProjection p;
  p.q_out = r.q, p.k_cache = r.kc, p.v_cache = r.vc;
  p.x = s.x, p.w = s.w;
  if (c.bias) p.bias = s.bias.view();
  if (c.norms) p.q_norm = s.q_norm.view(), p.k_norm = s.k_norm.view();
  p.positions = s.pos, p.cos_sin = s.cos_sin;
  p.slot_mapping = s.slots;
  const Tensor qkv = Tensor::empty({c.t, (c.hq + 2 * c.hk) * c.d}, DType::BF16);
  const Tensor kn = Tensor::empty({c.t, c.hk, c.d}, DType::BF16);
  p.qkv = qkv, p.k_normed = kn;
  qkv_projection(p);
  return r;
}

Result by_the_calls(const QkvSetup& s) {
  const Case& c = s.c;
  Result r{Tensor::empty({c.t, c.hq, c.d}, DType::BF16), s.cache(), s.cache()};
  const int64_t n = (c.hq + 2 * c.hk) * c.d;
  const Tensor qkv = Tensor::empty({c.t, n}, DType::BF16);
  if (c.bias)
    addmm(qkv, s.bias, s.x, s.w);
  else
    mm(qkv, s.x, s.w);
  auto heads = [&](int64_t first, int64_t count) {
    return TensorView(qkv.ptr<bf16>() + first, DType::BF16, {c.t, count, c.d}, {n, c.d, 1}, Device::cpu());
  };
  const Tensor kn = Tensor::empty({c.t, c.hk, c.d}, DType::BF16);
  TensorView k3 = heads(c.hq * c.d, c.hk);
  if (c.norms) {
    rms_norm(r.q, heads(0, c.hq), s.q_norm, 1e-6f);
    rms_norm(kn, k3, s.k_norm, 1e-6f);
    k3 = kn;
  } else {
    copy(r.q, heads(0, c.hq));
  }
  rotary_embedding(r.q, k3, s.pos, s.cos_sin, true);
  write_kv_cache(r.kc, r.vc, k3, heads((c.hq + c.hk) * c.d, c.hk), s.slots);
  return r;
}

TEST(CpuQkvProjection, GivesTheBitsOfTheCalls) {
  for (bool norms : {true, false})
    for (bool bias : {true, false}) {
      Case c;
      c.norms = norms, c.bias = bias;
      const QkvSetup s(c);
      const Result a = by_qkv_projection(s), b = by_the_calls(s);
      const std::string what = std::string(norms ? "norms" : "no norms") + (bias ? ", bias" : ", no bias");
      EXPECT_TRUE(same_bytes(a.q, b.q)) << what;
      EXPECT_TRUE(same_bytes(a.kc, b.kc)) << what;
      EXPECT_TRUE(same_bytes(a.vc, b.vc)) << what;
    }
}

// The comparison's control: one changed element of the k norm's weight changes the k cache.
TEST(CpuQkvProjection, ComparisonSeesAChangedNormWeight) {
  const QkvSetup s(Case{});
  QkvSetup changed = s;
  changed.k_norm = Tensor::empty({s.c.d}, DType::F32);
  std::memcpy(changed.k_norm.data(), s.k_norm.data(), size_t(s.c.d) * 4);
  changed.k_norm.ptr<float>()[5] += 0.5f;
  const Result a = by_qkv_projection(changed), b = by_the_calls(s);
  EXPECT_TRUE(same_bytes(a.q, b.q));
  EXPECT_FALSE(same_bytes(a.kc, b.kc));
}

TEST(CpuQkvProjection, ValidatesArguments) {
  const QkvSetup s(Case{});
  const Case& c = s.c;
  auto msg = [&](auto change) {
    Result r{Tensor::empty({c.t, c.hq, c.d}, DType::BF16), s.cache(), s.cache()};
    QkvProjection p;
    p.q_out = r.q, p.k_cache = r.kc, p.v_cache = r.vc;
    p.x = s.x, p.w = s.w, p.bias = s.bias.view(), p.q_norm = s.q_norm.view(), p.k_norm = s.k_norm.view();
    p.positions = s.pos, p.cos_sin = s.cos_sin, p.slot_mapping = s.slots;
    const Tensor qkv = Tensor::empty({c.t, (c.hq + 2 * c.hk) * c.d}, DType::BF16);
    const Tensor kn = Tensor::empty({c.t, c.hk, c.d}, DType::BF16);
    p.qkv = qkv, p.k_normed = kn;
    change(p);
    try {
      qkv_projection(p);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(msg([](QkvProjection&) {}), "no error");
  const Tensor w_short = Tensor::empty({(c.hq + 2 * c.hk) * c.d - 64, c.k}, DType::BF16);
  EXPECT_NE(msg([&](QkvProjection& p) { p.w = w_short; }).find("w must be bf16[512, 48]"), std::string::npos);
  const Tensor q_wide = Tensor::empty({c.t, c.hq, 2 * c.d}, DType::BF16);
  const TensorView q_gaps = q_wide.view().narrow(2, 0, c.d);
  EXPECT_NE(msg([&](QkvProjection& p) { p.q_out = q_gaps; }).find("contiguous heads"), std::string::npos);
  EXPECT_NE(msg([&](QkvProjection& p) { p.k_normed = TensorView(); }).find("k_normed (scratch)"), std::string::npos);
  const Tensor norm_long = Tensor::empty({c.d + 1}, DType::F32);
  EXPECT_NE(msg([&](QkvProjection& p) { p.q_norm = norm_long.view(); }).find("q_norm must be"), std::string::npos);
  const Tensor pos_f = Tensor::empty({c.t}, DType::F32);
  EXPECT_NE(msg([&](QkvProjection& p) { p.positions = pos_f; }).find("positions must be i32"), std::string::npos);
  const Tensor bad_slots = i32({0, 1, 2, 3, 4, 5, 32});
  EXPECT_NE(msg([&](QkvProjection& p) { p.slot_mapping = bad_slots; }).find("slot_mapping[6] = 32"),
            std::string::npos);
  const Tensor far = i32({0, 1, 2, 3, 4, 5, 64});
  EXPECT_NE(msg([&](QkvProjection& p) { p.positions = far; }).find("positions[6] = 64 is outside the cos_sin table"),
            std::string::npos);
  const Tensor cs_odd = Tensor::empty({64, 3}, DType::F32);
  EXPECT_NE(msg([&](QkvProjection& p) { p.cos_sin = cs_odd; }).find("rot_dim"), std::string::npos);
  const Tensor x_f16 = Tensor::empty({c.t, c.k}, DType::F16);
  EXPECT_NE(msg([&](QkvProjection& p) { p.x = x_f16; }).find("k_cache and v_cache must be f16 (x's dtype)"),
            std::string::npos);
}

}  // namespace
}  // namespace bik

// The RMSNorm layouts the engine feeds the CUDA backend: norm weights in F32 with bf16 activations, and
// the per-head q/k norms reading heads straight out of a fused q|k|v row ([T, H, D] views whose two
// leading dims do not collapse into one row stride). Both take the 16-byte path; each must give the
// bits of the same rows laid out contiguously with the weights in bf16.
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "bik/ops.h"
#include "bik/tensor.h"
#include "gpu/gpu_env.h"

using namespace bik;

namespace {

Tensor random_bf16(const Shape& shape, uint32_t seed, float scale = 1.0f) {
  Tensor t = Tensor::empty(shape, DType::BF16);
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  for (int64_t i = 0; i < t.numel(); ++i) t.ptr<bf16>()[i] = to_bf16(d(g));
  return t;
}

// Weights that bf16 holds exactly, as bf16 and as F32.
std::pair<Tensor, Tensor> weights(int64_t n, uint32_t seed) {
  Tensor w16 = random_bf16({n}, seed, 0.5f);
  Tensor w32 = Tensor::empty({n}, DType::F32);
  for (int64_t i = 0; i < n; ++i) w32.ptr<float>()[i] = to_float(w16.ptr<bf16>()[i]);
  return {w16, w32};
}

std::vector<uint16_t> bits_of(const TensorView& dev) {
  Tensor h = Tensor::empty(dev.sizes(), dev.dtype);
  copy(h, dev);
  synchronize(dev.device);
  std::vector<uint16_t> out(size_t(h.numel()));
  std::memcpy(out.data(), h.data(), out.size() * 2);
  return out;
}

// float64 RMSNorm of contiguous bf16 rows, for a sanity bound on the shared bits.
double max_err_vs_f64(const Tensor& x, const Tensor& w32, const std::vector<uint16_t>& got, double eps) {
  const int64_t n = x.size(-1), rows = x.numel() / n;
  double worst = 0;
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double v = to_float(x.ptr<bf16>()[r * n + i]);
      ss += v * v;
    }
    const double rstd = 1.0 / std::sqrt(ss / double(n) + eps);
    for (int64_t i = 0; i < n; ++i) {
      const double ref = double(to_float(x.ptr<bf16>()[r * n + i])) * rstd * w32.ptr<float>()[i];
      const double v = to_float(bf16{got[size_t(r * n + i)]});
      worst = std::max(worst, std::abs(v - ref) / (std::abs(ref) + 1e-2));
    }
  }
  return worst;
}

}  // namespace

TEST(GpuNormLayouts, F32WeightsGiveTheBitsOfBf16Weights) {
  BIK_REQUIRE_GPU();
  const Device dev = Device::cuda(0);
  for (int64_t n : {128, 4096, 5120}) {
    for (int64_t rows : {1, 37, 256}) {
      const Tensor x = random_bf16({rows, n}, uint32_t(n + rows));
      const Tensor res = random_bf16({rows, n}, uint32_t(n * 3 + rows));
      auto [w16, w32] = weights(n, uint32_t(n));
      const Tensor dx = x.to(dev), dw16 = w16.to(dev), dw32 = w32.to(dev);
      for (bool with_res : {false, true}) {
        Tensor o16 = Tensor::empty({rows, n}, DType::BF16, dev), o32 = Tensor::empty({rows, n}, DType::BF16, dev);
        Tensor r16 = res.to(dev), r32 = res.to(dev);
        rms_norm(o16, dx, dw16, 1e-6f, with_res ? std::optional<TensorView>(r16.view()) : std::nullopt);
        rms_norm(o32, dx, dw32, 1e-6f, with_res ? std::optional<TensorView>(r32.view()) : std::nullopt);
        const std::vector<uint16_t> a = bits_of(o16), b = bits_of(o32);
        EXPECT_EQ(a, b) << "n=" << n << " rows=" << rows << " residual=" << with_res;
        if (with_res) EXPECT_EQ(bits_of(r16), bits_of(r32)) << "residual written back, n=" << n;
        if (!with_res) EXPECT_LT(max_err_vs_f64(x, w32, b, 1e-6), 2e-2) << "n=" << n << " rows=" << rows;
      }
    }
  }
}

TEST(GpuNormLayouts, HeadsOfAFusedQkvRowGiveTheBitsOfContiguousHeads) {
  BIK_REQUIRE_GPU();
  const Device dev = Device::cuda(0);
  const int64_t D = 128, Hq = 4, Hk = 2, width = (Hq + 2 * Hk) * D;
  for (int64_t T : {1, 13, 300}) {
    const Tensor qkv = random_bf16({T, width}, uint32_t(T));
    auto [w16, w32] = weights(D, 7);
    const Tensor dqkv = qkv.to(dev), dw32 = w32.to(dev);
    for (auto [start, H] : {std::pair<int64_t, int64_t>{0, Hq}, {Hq * D, Hk}}) {
      // The heads as a [T, H, D] view of the fused rows (row stride `width`, head stride D).
      const TensorView heads(static_cast<bf16*>(dqkv.data()) + start, DType::BF16, {T, H, D}, {width, D, 1}, dev);
      Tensor out = Tensor::empty({T * H, D}, DType::BF16, dev);
      rms_norm(out.view().reshape({T, H, D}), heads, dw32, 1e-6f);
      // The same heads copied out contiguously first.
      Tensor packed = Tensor::empty({T, H, D}, DType::BF16, dev);
      copy(packed, heads);
      Tensor ref = Tensor::empty({T * H, D}, DType::BF16, dev);
      rms_norm(ref, packed.view().reshape({T * H, D}), dw32, 1e-6f);
      const std::vector<uint16_t> got = bits_of(out);
      EXPECT_EQ(got, bits_of(ref)) << "T=" << T << " heads from column " << start;
      // Not two copies of the same mistake: against float64 on the host copy of the heads.
      Tensor host = Tensor::empty({T * H, D}, DType::BF16);
      copy(host, packed.view().reshape({T * H, D}));
      synchronize(dev);
      EXPECT_LT(max_err_vs_f64(host, w32, got, 1e-6), 2e-2) << "T=" << T;
    }
  }
}

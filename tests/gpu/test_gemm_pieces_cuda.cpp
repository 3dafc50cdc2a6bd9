// CUDA GEMM, the two-piece plan (policy::gemm_plan on sm_90: K >= 8192, a multiple of 128, is cut into two
// pieces of K/2): out = round((piece 0 + piece 1) + bias), each piece one wgmma chain from zero. Two ways
// compute it (src/cuda/gemm_sm90.cu, run_two_pieces): the pieces as a batch of two plus a fold kernel (decode
// sizes), and one tile's two accumulator sets (otherwise). Checked here: the plan itself; that the result
// is exactly the plan's arithmetic (each piece computed as its own unsplit GEMM of K/2, added on the host);
// that both ways give the same bits on every output kind, at M/N edges; and that a row keeps its bits alone
// and in batches whose size switches the way. The negative control runs the same row check on cuBLASLt
// (split-K by M) and has to find rows that differ.
#include <gtest/gtest.h>

#include "gpu/gpu_env.h"
#include "gpu/gemm_test_util.h"
#include "gpu/test_util.h"

#if BIK_WITH_CUDA
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "bik/ops.h"
#include "bik/tensor.h"
#include "core/backend.h"
#include "core/policy.h"
#include "cuda/cublas_gemm.h"
#include "cuda/gemm.h"

using namespace bik;

namespace {

using test::dev;
using test::dev_filled;
using test::gpu;
using test::is_sm90;
using test::make_args;
using test::ScopedEnv;

int64_t differing(const TensorView& x, const TensorView& y) {
  const Tensor hx = Tensor::empty(x.sizes(), x.dtype), hy = Tensor::empty(y.sizes(), y.dtype);
  copy(hx, x);
  copy(hy, y);
  const size_t es = size_t(dtype_size(x.dtype));
  const auto* px = static_cast<const unsigned char*>(hx.data());
  const auto* py = static_cast<const unsigned char*>(hy.data());
  int64_t n = 0;
  for (int64_t i = 0; i < hx.numel(); ++i) n += std::memcmp(px + size_t(i) * es, py + size_t(i) * es, es) != 0;
  return n;
}

std::vector<float> host_f32(const TensorView& x) {
  const Tensor h = Tensor::empty(x.sizes(), DType::F32);
  copy(h, x);
  return std::vector<float>(h.ptr<float>(), h.ptr<float>() + h.numel());
}

std::string shape_str(int64_t m, int64_t n, int64_t k) {
  return "M=" + std::to_string(m) + " N=" + std::to_string(n) + " K=" + std::to_string(k);
}

}  // namespace

TEST(GpuGemmPieces, PlanCutsLongKInTwoOnSm90Only) {
  for (int arch : {80, 86, 89, 90})
    for (DType dt : {DType::BF16, DType::F16, DType::F32})
      for (int64_t k : {4096, 8064, 8191, 8192, 8200, 12288, 16384}) {
        const policy::GemmPlan p = policy::gemm_plan(policy::Target{policy::Backend::CUDA, arch}, dt, 4096, k);
        const bool two = arch == 90 && dt != DType::F32 && k >= 8192 && k % 128 == 0;
        EXPECT_EQ(p.k_splits, two ? 2 : 1) << "sm_" << arch << " " << dtype_name(dt) << " K=" << k;
        EXPECT_EQ(p.k_split_len, two ? k / 2 : k) << "sm_" << arch << " " << dtype_name(dt) << " K=" << k;
      }
}

// The plan's arithmetic, bit for bit: each piece as its own GEMM over K/2 (an unsplit plan: K/2 < 8192 here),
// F32 out, added on the host in piece order, the bias added after, rounded once to the 16-bit type; against
// both ways of the two-piece GEMM on the whole K.
TEST(GpuGemmPieces, OutputIsPieceZeroPlusPieceOne) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "the two-piece plan is sm_90's";
  for (DType dt : {DType::BF16, DType::F16})
    for (const auto& [m, n, k] : std::vector<std::array<int64_t, 3>>{{1, 4096, 12288}, {200, 1000, 8192}, {600, 512, 12288}}) {
      const std::string what = std::string(dtype_name(dt)) + " " + shape_str(m, n, k);
      const Tensor a = dev_filled({m, k}, dt, uint64_t(m + k)), w = dev_filled({n, k}, dt, uint64_t(n + 7));
      const Tensor bias = dev_filled({n}, dt, 5);
      const Tensor p0 = dev({m, n}, DType::F32), p1 = dev({m, n}, DType::F32);
      mm(p0, a.view().narrow(1, 0, k / 2), w.view().narrow(1, 0, k / 2));
      mm(p1, a.view().narrow(1, k / 2, k / 2), w.view().narrow(1, k / 2, k / 2));
      const std::vector<float> h0 = host_f32(p0), h1 = host_f32(p1);
      const Tensor hbias = Tensor::empty({n}, dt);
      copy(hbias, bias);
      // The expected outputs: p0 + p1 in F32; round(p0 + p1) and round((p0 + p1) + b) to dt, to nearest even.
      const Tensor want32 = Tensor::empty({m, n}, DType::F32);
      const Tensor want16 = Tensor::empty({m, n}, dt), want16b = Tensor::empty({m, n}, dt);
      auto to16 = [&](float v) {
        return dt == DType::BF16 ? to_bf16(v).bits : to_f16(v).bits;
      };
      auto from16 = [&](uint16_t b) { return dt == DType::BF16 ? to_float(bf16{b}) : to_float(f16{b}); };
      for (int64_t i = 0; i < m * n; ++i) {
        const float s = h0[size_t(i)] + h1[size_t(i)];
        want32.ptr<float>()[i] = s;
        want16.ptr<uint16_t>()[i] = to16(s);
        want16b.ptr<uint16_t>()[i] = to16(s + from16(hbias.ptr<uint16_t>()[i % n]));
      }
      for (const char* mode : {"batch", "inline"}) {
        const ScopedEnv env("BIK_GEMM_PIECES", mode);
        const Tensor o32 = dev({m, n}, DType::F32), o16 = dev({m, n}, dt), o16b = dev({m, n}, dt);
        fill_bytes(o32, 0xff);
        fill_bytes(o16, 0xff);
        fill_bytes(o16b, 0xff);
        mm(o32, a, w);
        mm(o16, a, w);
        addmm(o16b, bias, a, w);
        EXPECT_EQ(differing(o32, want32), 0) << what << " " << mode << ": f32 out against p0 + p1";
        EXPECT_EQ(differing(o16, want16), 0) << what << " " << mode << ": 16-bit out against round(p0 + p1)";
        EXPECT_EQ(differing(o16b, want16b), 0) << what << " " << mode << ": 16-bit out + bias against round(p0 + p1 + b)";
      }
    }
}

// Both ways, every output kind, against each other: M = 1, 17, 136, 256 (batch by default), 257, 1000
// (inline by default), N = 1000 (partial tiles) and 4096, K = 8192 and 12288; f32 out, 16-bit out, 16-bit
// out with a bias, f32 rows of N + 1 (unaligned), and a bmm (two batches: always inline). The counter shows
// which way ran.
TEST(GpuGemmPieces, BatchAndInlineGiveTheSameBits) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "the two-piece plan is sm_90's";
  int64_t compared = 0;
  for (DType dt : {DType::BF16, DType::F16})
    for (int64_t m : {1, 17, 136, 256, 257, 1000})
      for (int64_t n : {1000, 4096})
        for (int64_t k : {8192, 12288}) {
          const std::string what = std::string(dtype_name(dt)) + " " + shape_str(m, n, k);
          const Tensor a = dev_filled({m, k}, dt, uint64_t(m * 3 + k)), w = dev_filled({n, k}, dt, uint64_t(n + k));
          const Tensor bias = dev_filled({n}, dt, uint64_t(n));
          struct Outs {
            Tensor f32, half, half_bias, pad;
          };
          auto outs = [&] {
            return Outs{dev({m, n}, DType::F32), dev({m, n}, dt), dev({m, n}, dt),
                        Tensor::empty_padded({m, n}, n + 1, DType::F32, gpu())};
          };
          const Outs ob = outs(), oi = outs(), od = outs();
          auto run = [&](const Outs& o, const char* mode) {
            const ScopedEnv env("BIK_GEMM_PIECES", mode);
            for (const Tensor* t : {&o.f32, &o.half, &o.half_bias, &o.pad}) fill_bytes(*t, 0xff);
            const uint64_t b0 = cuda::gemm_sm90_piece_batches();
            mm(o.f32, a, w);
            mm(o.half, a, w);
            addmm(o.half_bias, bias, a, w);
            mm(o.pad, a, w);
            return cuda::gemm_sm90_piece_batches() - b0;
          };
          EXPECT_EQ(run(ob, "batch"), 4u) << what << ": BIK_GEMM_PIECES=batch did not run the pieces as a batch";
          EXPECT_EQ(run(oi, "inline"), 0u) << what << ": BIK_GEMM_PIECES=inline ran a batch";
          EXPECT_EQ(run(od, nullptr), m <= 256 ? 4u : 0u) << what << ": the default way";
          for (const Outs* o : {&oi, &od}) {
            EXPECT_EQ(differing(o->f32, ob.f32), 0) << what << ": f32 out";
            EXPECT_EQ(differing(o->half, ob.half), 0) << what << ": 16-bit out";
            EXPECT_EQ(differing(o->half_bias, ob.half_bias), 0) << what << ": 16-bit out + bias";
            EXPECT_EQ(differing(o->pad, ob.pad), 0) << what << ": f32 out rows of N + 1";
            compared += 4;
          }
        }
  // bmm: always inline, against the batches one by one (each a single product: the batch way for M <= 256).
  for (DType dt : {DType::BF16, DType::F16}) {
    const int64_t B = 2, m = 100, n = 1000, k = 8192;
    const test::BatchedOperands ops = test::batched_operands(dt, B, m, n, k);
    const Tensor o = dev({B, m, n}, DType::F32);
    fill_bytes(o, 0xff);
    const uint64_t b0 = cuda::gemm_sm90_piece_batches();
    bmm(o, ops.a, ops.w);
    EXPECT_EQ(cuda::gemm_sm90_piece_batches() - b0, 0u) << "a bmm ran its pieces as a batch";
    for (int64_t b = 0; b < B; ++b) {
      const Tensor ob = dev({m, n}, DType::F32);
      mm(ob, ops.a.view().select(0, b), ops.w.view().select(0, b));
      EXPECT_EQ(differing(o.view().select(0, b), ob), 0) << dtype_name(dt) << " bmm batch " << b;
    }
  }
  std::printf("[pieces] %lld outputs compared bit for bit between the two ways\n", (long long)compared);
}

// Rows alone against the same rows in batches of 1..2048 (the way switches at M = 256), the down
// projection's shape, 16-bit out as in the engine; then the same check on cuBLASLt must find differences.
TEST(GpuGemmPieces, RowsAreBatchInvariantAndCublasLtIsCaught) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "the two-piece plan is sm_90's";
  const int64_t n = 4096, k = 12288, pool_rows = 2048, targets = 12;
  const DType dt = DType::BF16;
  const Tensor pool = dev_filled({pool_rows, k}, dt, 31), w = dev_filled({n, k}, dt, 32);
  std::mt19937_64 rng(33);
  const std::vector<int64_t> sizes = {1, 2, 16, 64, 129, 136, 200, 255, 256, 257, 300, 512, 1000, 2048};
  for (const bool cublas : {false, true}) {
    auto run = [&](const TensorView& out, const TensorView& a) {
      if (cublas) cuda::cublaslt_gemm(make_args(out, a, w, std::nullopt), {});
      else mm(out, a, w);
    };
    std::vector<Tensor> alone;
    for (int64_t t = 0; t < targets; ++t) {
      alone.push_back(dev({1, n}, dt));
      run(alone.back(), pool.view().narrow(0, t, 1));
    }
    int64_t cases = 0, diffs = 0;
    const Tensor a = dev({pool_rows, k}, dt), o = dev({pool_rows, n}, dt);
    for (int64_t m : sizes) {
      const TensorView av = a.view().narrow(0, 0, m), ov = o.view().narrow(0, 0, m);
      copy(av, pool.view().narrow(0, int64_t(rng() % uint64_t(pool_rows - m + 1)), m));
      std::vector<int64_t> pos;
      for (int64_t t = 0; t < std::min(targets, m); ++t) {
        int64_t p;
        do p = int64_t(rng() % uint64_t(m));
        while (std::find(pos.begin(), pos.end(), p) != pos.end());
        pos.push_back(p);
        copy(av.narrow(0, p, 1), pool.view().narrow(0, t, 1));
      }
      fill_bytes(o, 0xff);
      run(ov, av);
      for (size_t t = 0; t < pos.size(); ++t) {
        ++cases;
        const int64_t d = differing(ov.narrow(0, pos[t], 1), alone[t]);
        diffs += d != 0;
        if (!cublas) EXPECT_EQ(d, 0) << "row " << t << " at row " << pos[t] << " of a batch of " << m;
      }
    }
    std::printf("[pieces] %s: %lld of %lld rows differ from the row computed alone\n", cublas ? "cublaslt" : "bik",
                (long long)diffs, (long long)cases);
    if (cublas) EXPECT_GT(diffs, 0) << "the row check found no variance in cuBLASLt: it has no teeth";
  }
}

#else
TEST(GpuGemmPieces, Skipped) { GTEST_SKIP() << "no GPU: this build has no CUDA backend"; }
#endif

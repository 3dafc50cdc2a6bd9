// CUDA GEMM: accuracy against a float64 CPU reference, batch invariance of rows (alone vs hidden at
// random positions among random neighbours in batches of many sizes), run-to-run repeats, layout
// invariance (the scalar-load fallbacks give the bits of the fast paths), and a negative control:
// the same row check applied to cuBLASLt must find differences, or the check proves nothing.
#include <gtest/gtest.h>

#include "gpu/gpu_env.h"
#include "gpu/gemm_test_util.h"
#include "gpu/test_util.h"

#if BIK_WITH_CUDA
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <random>
#include <set>
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

enum class Impl { Dispatch, Sm80, Cublas };
const char* impl_name(Impl i) { return i == Impl::Dispatch ? "bik" : i == Impl::Sm80 ? "bik-sm80" : "cublaslt"; }

using test::dev;
using test::dev_filled;
using test::gpu;
using test::make_args;

void run(Impl impl, const TensorView& out, const TensorView& a, const TensorView& w,
         const std::optional<TensorView>& bias = std::nullopt) {
  switch (impl) {
    case Impl::Dispatch:
      if (a.ndim == 3)
        bmm(out, a, w);
      else if (bias)
        addmm(out, *bias, a, w);
      else
        mm(out, a, w);
      break;
    case Impl::Sm80: cuda::gemm_sm80(make_args(out, a, w, bias), {}); break;
    case Impl::Cublas: cuda::cublaslt_gemm(make_args(out, a, w, bias), {}); break;
  }
}

double as_double(const void* base, DType t, int64_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(base)[i];
    case DType::F16: return to_float(static_cast<const f16*>(base)[i]);
    case DType::BF16: return to_float(static_cast<const bf16*>(base)[i]);
    default: return 0;
  }
}

// Any view (device or host, any strides) as doubles in row-major order of its shape.
std::vector<double> host_f64(const TensorView& t) {
  Tensor h = Tensor::empty(t.sizes(), t.dtype);
  copy(h, t);
  std::vector<double> v(size_t(h.numel()));
  for (int64_t i = 0; i < h.numel(); ++i) v[size_t(i)] = as_double(h.data(), t.dtype, i);
  return v;
}

// Relative error ||out - ref|| / ||ref|| over a [B, M, N] result; NaN (an unwritten, poisoned element)
// makes it NaN, which fails every comparison.
double rel_error(const TensorView& out, const TensorView& a, const TensorView& w, const std::optional<TensorView>& bias) {
  const TensorView a3 = as3d(a), w3 = as3d(w);
  const int64_t B = a3.shape[0], M = a3.shape[1], K = a3.shape[2], N = w3.shape[1];
  const std::vector<double> ha = host_f64(a3), hw = host_f64(w3), ho = host_f64(as3d(out));
  const std::vector<double> hb = bias ? host_f64(*bias) : std::vector<double>(size_t(N), 0.0);
  double num = 0, den = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double ref = hb[size_t(n)];
        const double* ar = &ha[size_t((b * M + m) * K)];
        const double* wr = &hw[size_t((b * N + n) * K)];
        for (int64_t k = 0; k < K; ++k) ref += ar[k] * wr[k];
        const double got = ho[size_t((b * M + m) * N + n)];
        if (!std::isfinite(got)) return NAN;
        num += (got - ref) * (got - ref);
        den += ref * ref;
      }
  return std::sqrt(num / std::max(den, 1e-300));
}

double tolerance(DType out) { return out == DType::F32 ? 5e-5 : out == DType::F16 ? 2e-3 : 8e-3; }

bool bits_equal(const TensorView& x, const TensorView& y) {
  const Tensor hx = Tensor::empty(x.sizes(), x.dtype), hy = Tensor::empty(y.sizes(), y.dtype);
  copy(hx, x);
  copy(hy, y);
  return std::memcmp(hx.data(), hy.data(), size_t(hx.numel() * dtype_size(x.dtype))) == 0;
}

using test::is_sm90;
using test::ScopedEnv;

// ---- the row-invariance harness -----------------------------------------------------------------------

struct RowStats {
  int64_t cases = 0, diffs = 0, batches = 0;
  double max_rel_err = 0;  // alone rows vs float64
  bool repeat_identical = true;
};

const std::vector<int>& batch_sizes() {
  static const std::vector<int> ms = {1,   2,   3,   4,    5,    6,    7,    8,    9,    10,   11,   12,    13,
                                      14,  15,  16,  17,   31,   32,   33,   63,   64,   65,   97,   127,   128,
                                      129, 255, 256, 257,  509,  1000, 1024, 2039, 3001, 4096, 6007, 8191, 12289,
                                      16384};
  return ms;
}

// Rows [0, targets) of a random pool are computed alone (M = 1); then, for every batch size, `trials`
// batches are built from random slices of the pool with min(M, targets) target rows written at random
// distinct positions, and each of those rows of the batch result is compared byte for byte with the
// row computed alone. Output is F32, so no rounding to 16 bits can hide a change in the sum.
RowStats row_harness(Impl impl, DType dt, int64_t K, int64_t N, int max_m, int targets, int trials, uint64_t seed,
                     bool repeat_check) {
  RowStats st;
  std::mt19937_64 rng(seed);
  const int64_t es = dtype_size(dt);
  const Tensor w = dev_filled({N, K}, dt, seed * 7 + 1);
  const int64_t pool_rows = std::clamp<int64_t>((int64_t(256) << 20) / (K * es), 1024, 4096);
  const Tensor pool = dev_filled({pool_rows, K}, dt, seed * 7 + 2);

  std::vector<std::vector<float>> alone(static_cast<size_t>(targets), std::vector<float>(static_cast<size_t>(N)));
  const Tensor out1 = dev({1, N}, DType::F32);
  for (int t = 0; t < targets; ++t) {
    fill_bytes(out1, 0xff);
    run(impl, out1, pool.view().narrow(0, t, 1), w);
    memcpy_bytes(alone[size_t(t)].data(), Device::cpu(), out1.data(), gpu(), N * 4);
    if (t < 2) st.max_rel_err = std::max(st.max_rel_err, rel_error(out1, pool.view().narrow(0, t, 1), w, std::nullopt));
  }

  const Tensor a = dev({int64_t(max_m), K}, dt);
  const Tensor o = dev({int64_t(max_m), N}, DType::F32);
  std::vector<float> row(static_cast<size_t>(N));
  for (int m : batch_sizes()) {
    if (m > max_m) continue;
    for (int trial = 0; trial < trials; ++trial) {
      const TensorView av = a.view().narrow(0, 0, m), ov = o.view().narrow(0, 0, m);
      for (int r0 = 0; r0 < m; r0 += 512) {  // neighbours: random slices of the pool
        const int64_t len = std::min(512, m - r0);
        const int64_t off = int64_t(rng() % uint64_t(pool_rows - len + 1));
        copy(av.narrow(0, r0, len), pool.view().narrow(0, off, len));
      }
      const int npos = std::min(m, targets);
      std::vector<int> pos;
      if (m <= 4 * npos) {
        pos.resize(size_t(m));
        for (int i = 0; i < m; ++i) pos[size_t(i)] = i;
        std::shuffle(pos.begin(), pos.end(), rng);
        pos.resize(size_t(npos));
      } else {
        std::set<int> seen;
        while (int(seen.size()) < npos) seen.insert(int(rng() % uint64_t(m)));
        pos.assign(seen.begin(), seen.end());
      }
      std::vector<int> who(pos.size());
      for (size_t i = 0; i < pos.size(); ++i) {
        who[i] = int(rng() % uint64_t(targets));
        copy(av.narrow(0, pos[i], 1), pool.view().narrow(0, who[i], 1));
      }
      run(impl, ov, av, w);
      ++st.batches;
      for (size_t i = 0; i < pos.size(); ++i) {
        memcpy_bytes(row.data(), Device::cpu(), static_cast<const float*>(o.data()) + int64_t(pos[i]) * N, gpu(), N * 4);
        ++st.cases;
        if (std::memcmp(row.data(), alone[size_t(who[i])].data(), size_t(N) * 4) != 0) ++st.diffs;
      }
    }
  }

  if (repeat_check) {  // run to run: the same batch twice, every byte
    const int m = std::min(max_m, 1024);
    const TensorView av = a.view().narrow(0, 0, m), ov = o.view().narrow(0, 0, m);
    const Tensor first = dev({int64_t(m), N}, DType::F32);
    run(impl, first, av, w);
    run(impl, ov, av, w);
    st.repeat_identical = bits_equal(first, ov);
  }
  return st;
}

struct HarnessShape {
  int64_t k, n;
  int max_m;
};
const std::vector<HarnessShape>& harness_shapes() {
  static const std::vector<HarnessShape> s = {{4096, 6144, 16384}, {4096, 4096, 16384}, {4096, 24576, 16384},
                                              {12288, 4096, 16384}, {1024, 151936, 4096}, {4095, 1000, 16384}};
  return s;
}

void report(const char* what, DType dt, const HarnessShape& s, const RowStats& st) {
  std::printf("[rows] %-9s %-4s K=%-5lld N=%-6lld batches=%-4lld cases=%-6lld diffs=%-5lld alone-vs-f64=%.2e%s\n", what,
              dtype_name(dt), (long long)s.k, (long long)s.n, (long long)st.batches, (long long)st.cases,
              (long long)st.diffs, st.max_rel_err, st.repeat_identical ? "" : "  RUN-TO-RUN DIFFERS");
}

void invariance_suite(Impl impl, const std::vector<DType>& dtypes, const std::vector<HarnessShape>& shapes,
                      int targets, int trials) {
  for (const auto& s : shapes)
    for (DType dt : dtypes) {
      const int t = s.n > 100000 ? targets : targets;
      const RowStats st = row_harness(impl, dt, s.k, s.n, s.max_m, t, s.n > 100000 ? trials + 1 : trials,
                                      uint64_t(s.k * 131 + s.n) ^ uint64_t(dt), true);
      report(impl_name(impl), dt, s, st);
      EXPECT_EQ(st.diffs, 0) << impl_name(impl) << " " << dtype_name(dt) << " K=" << s.k << " N=" << s.n;
      EXPECT_TRUE(st.repeat_identical) << impl_name(impl) << " " << dtype_name(dt) << " K=" << s.k << " N=" << s.n;
      EXPECT_LT(st.max_rel_err, tolerance(DType::F32)) << dtype_name(dt) << " K=" << s.k << " N=" << s.n;
    }
}

}  // namespace

TEST(GpuGemm, PlanNamesOneFamilyForEveryM) {
  BIK_REQUIRE_GPU();
  const int arch = cuda_device_props(0).arch();
  const policy::Target tgt{policy::Backend::CUDA, arch};
  for (DType dt : {DType::BF16, DType::F16, DType::F32}) {
    const policy::GemmPlan p = policy::gemm_plan(tgt, dt, 4096, 4096);
    EXPECT_EQ(p.k_splits, 1);
    if (dt == DType::F32)
      EXPECT_EQ(p.mma, policy::Mma::FmaChain);
    else
      EXPECT_EQ(p.mma, arch == 90 ? policy::Mma::WgmmaSm90 : policy::Mma::MmaSyncSm80);
    // The kernel configuration may change with M; its family (the name's first word) may not.
    const Tensor w = dev({4096, 4096}, dt);
    std::string family;
    for (int m : batch_sizes()) {
      const Tensor a = dev({int64_t(m), 4096}, dt), o = dev({int64_t(m), 4096}, DType::F32);
      const std::string name = cuda::gemm_config_name(make_args(o, a, w, std::nullopt));
      const std::string f = name.substr(0, name.find(' '));
      if (family.empty()) family = f;
      EXPECT_EQ(f, family) << "M=" << m << ": " << name;
      if (m == 1 || m == 4096) std::printf("[plan] %s M=%d: %s (%s)\n", dtype_name(dt), m, name.c_str(),
                                           policy::describe(p).c_str());
    }
  }
}

TEST(GpuGemm, AccuracyAgainstFloat64) {
  BIK_REQUIRE_GPU();
  struct Case {
    int64_t b, m, n, k;
  };
  const std::vector<Case> cases = {{1, 1, 1, 1},     {1, 3, 7, 5},       {1, 17, 33, 100},  {1, 64, 64, 64},
                                   {1, 65, 130, 129}, {1, 130, 200, 1000}, {1, 300, 520, 257}, {1, 1, 300, 4095},
                                   {1, 257, 72, 0},   {3, 33, 70, 136}};
  std::vector<Impl> impls = {Impl::Dispatch, Impl::Sm80};
  uint64_t seed = 1;
  for (Impl impl : impls)
    for (DType dt : {DType::BF16, DType::F16, DType::F32}) {
      if (impl == Impl::Sm80 && dt == DType::F32) continue;
      for (const Case& c : cases)
        for (int variant = 0; variant < 4; ++variant) {
          // variant 0: out = input dtype; 1: out f32; 2: + bias of the input dtype; 3: + f32 bias, out f32
          const DType out_t = variant == 1 || variant == 3 ? DType::F32 : dt;
          const bool batched = c.b > 1;
          if (batched && variant >= 2) continue;  // bmm has no bias
          const Shape as = batched ? Shape{c.b, c.m, c.k} : Shape{c.m, c.k};
          const Shape ws = batched ? Shape{c.b, c.n, c.k} : Shape{c.n, c.k};
          const Shape os = batched ? Shape{c.b, c.m, c.n} : Shape{c.m, c.n};
          const Tensor a = dev_filled(as, dt, ++seed), w = dev_filled(ws, dt, ++seed), o = dev(os, out_t);
          std::optional<Tensor> bias;
          if (variant >= 2) bias = dev_filled({c.n}, variant == 3 ? DType::F32 : dt, ++seed);
          std::optional<TensorView> bv;
          if (bias) bv = bias->view();
          fill_bytes(o, 0xff);  // NaN everywhere: an element the kernel skips fails the check
          run(impl, o, a, w, bv);
          const double err = rel_error(o, a, w, bv);
          EXPECT_LT(err, tolerance(out_t)) << impl_name(impl) << " " << dtype_name(dt) << " -> " << dtype_name(out_t)
                                           << " B=" << c.b << " M=" << c.m << " N=" << c.n << " K=" << c.k
                                           << " variant " << variant;
        }
    }
  // A shared weight across the batch (batch stride 0).
  for (Impl impl : impls) {
    const Tensor a = dev_filled({4, 19, 264}, DType::BF16, 99), w2 = dev_filled({1, 45, 264}, DType::BF16, 98);
    TensorView w = w2.view();
    w.shape[0] = 4;
    w.stride[0] = 0;
    const Tensor o = dev({4, 19, 45}, DType::F32);
    fill_bytes(o, 0xff);
    run(impl, o, a, w);
    EXPECT_LT(rel_error(o, a, w, std::nullopt), tolerance(DType::F32)) << impl_name(impl) << " shared weight";
  }
}

// The fast paths (16-byte copies, TMA) and the scalar-load fallbacks must give the same bits, and so
// must every stride, offset and batch arrangement of the same numbers.
TEST(GpuGemm, LayoutsGiveTheSameBits) {
  BIK_REQUIRE_GPU();
  for (Impl impl : {Impl::Dispatch, Impl::Sm80})
    for (DType dt : {DType::BF16, DType::F16, DType::F32}) {
      if (impl == Impl::Sm80 && dt == DType::F32) continue;
      for (int64_t K : {1000, 4095, 64}) {
        const int64_t M = 37, N = 300;
        const Tensor a = dev_filled({M, K}, dt, uint64_t(K) + 5), w = dev_filled({N, K}, dt, uint64_t(K) + 6);
        const Tensor base = dev({M, N}, DType::F32);
        run(impl, base, a, w);
        auto check = [&](const TensorView& av, const TensorView& wv, const char* what) {
          const Tensor o = dev({M, N}, DType::F32);
          run(impl, o, av, wv);
          EXPECT_TRUE(bits_equal(o, base)) << impl_name(impl) << " " << dtype_name(dt) << " K=" << K << ": " << what;
        };
        for (int64_t pad : {1, 3, 8}) {
          const Tensor ap = Tensor::empty_padded({M, K}, K + pad, dt, gpu());
          copy(ap, a);
          check(ap, w, "a rows padded");
          const Tensor wp = Tensor::empty_padded({N, K}, K + pad, dt, gpu());
          copy(wp, w);
          check(a, wp, "w rows padded");
        }
        {  // a base one element off 16-byte alignment
          const Tensor big = dev({M * K + 8}, dt);
          TensorView av(static_cast<char*>(big.data()) + dtype_size(dt), dt, {M, K}, gpu());
          copy(av, a);
          check(av, w, "a misaligned by one element");
        }
        {  // w stored as [K, N] and passed transposed: K stride N
          const Tensor wt = dev({K, N}, dt);
          copy(wt.view().transpose(0, 1), w);
          check(a, wt.view().transpose(0, 1), "w transposed view");
        }
        {  // each row alone, from a view into the batch
          const Tensor o = dev({1, N}, DType::F32);
          for (int64_t r : {int64_t(0), M / 2, M - 1}) {
            run(impl, o, a.view().narrow(0, r, 1), w);
            EXPECT_TRUE(bits_equal(o, base.view().narrow(0, r, 1))) << impl_name(impl) << " row " << r;
          }
        }
        {  // out with padded rows
          const Tensor op = Tensor::empty_padded({M, N}, N + 5, DType::F32, gpu());
          run(impl, op, a, w);
          EXPECT_TRUE(bits_equal(op, base)) << impl_name(impl) << " out padded";
        }
        {  // batched: batch 1 of a bmm equals the plain product of its slices, for shared and own weights
          const Tensor a3 = dev_filled({3, M, K}, dt, 7), o3 = dev({3, M, N}, DType::F32);
          copy(a3.view().select(0, 1), a);
          TensorView w_shared = as3d(w);
          w_shared.shape[0] = 3;
          run(impl, o3, a3, w_shared);
          EXPECT_TRUE(bits_equal(o3.view().select(0, 1), base)) << impl_name(impl) << " bmm shared weight";
          const Tensor w3 = dev_filled({3, N, K}, dt, 8);
          copy(w3.view().select(0, 1), w);
          run(impl, o3, a3, w3);
          EXPECT_TRUE(bits_equal(o3.view().select(0, 1), base)) << impl_name(impl) << " bmm";
        }
      }
    }
}

// The wgmma tile shape may change with M (see gemm_sm90.cu); every tile must give the same bits, through
// every epilogue: f32 out (staged 16-byte stores), 16-bit out with a bias (a 64-column staging chunk, so
// BN = 192 takes three), and out rows that are not 16-byte aligned (element-pair stores). Shapes leave
// partial tiles in M, N and K for every tile, and {600, 6144, 520} gives the 128x192 tile 160 tiles, so
// its CTAs walk more than one tile (the stage ring carries over between tiles).
// Each tile also runs in the cluster mode (BIK_GEMM_CLUSTER), sharing A ("2a": pairs of N-tiles) and
// sharing W ("2w": pairs of M-tiles), against the one-CTA gemm() bit for bit. The shapes give odd tile
// counts along both pairings (M = 1, 77 and 300 leave the partner of the last pair past M; N = 520 and
// 1000 past N), half boxes wholly past N (N = 520 with BN = 256), and walks of many pairs a cluster. Both
// cluster modes run with the last M-tile's A box kept inside the matrix (the default) and with
// BIK_GEMM_CLUSTER_INSIDE=0 (the box overhanging M: M = 77, 300, 1025 and 600 end in partial M-tiles).
// The launch counter proves the cluster kernel ran: a silent fall-back would compare gemm() with itself.
TEST(GpuGemm, EverySm90TileGivesTheSameBits) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "the wgmma kernel needs sm_90";
  const std::vector<std::string> tiles = cuda::gemm_sm90_tiles();
  for (const char* want : {"64x32", "64x192", "128x192", "128x256"})
    EXPECT_NE(std::find(tiles.begin(), tiles.end(), want), tiles.end()) << "no tile " << want;
  int64_t compared = 0, compared_cluster = 0;
  for (DType dt : {DType::BF16, DType::F16})
    for (const auto& [m, n, k] : std::vector<std::array<int64_t, 3>>{
             {1, 1000, 4095}, {77, 4096, 1024}, {300, 520, 257}, {1025, 2048, 4096}, {600, 6144, 520}}) {
      const Tensor a = dev_filled({m, k}, dt, uint64_t(m + n)), w = dev_filled({n, k}, dt, uint64_t(k));
      const Tensor bias = dev_filled({n}, dt, uint64_t(n) + 3);
      const Tensor base = dev({m, n}, DType::F32), o = dev({m, n}, DType::F32);
      const Tensor base16 = dev({m, n}, dt), o16 = dev({m, n}, dt);
      const Tensor opad = Tensor::empty_padded({m, n}, n + 1, DType::F32, gpu());
      fill_bytes(base, 0xff);
      fill_bytes(base16, 0xff);
      {
        const ScopedEnv one_cta("BIK_GEMM_CLUSTER", "0");
        run(Impl::Dispatch, base, a, w);
        run(Impl::Dispatch, base16, a, w, bias.view());
      }
      EXPECT_LT(rel_error(base, a, w, std::nullopt), tolerance(DType::F32));
      if (m * n * k < 5'000'000'000)  // the float64 reference is a host loop
        EXPECT_LT(rel_error(base16, a, w, bias.view()), tolerance(dt));
      // Unset: none of these shapes meets the default cluster rule, so one CTA a tile.
      for (const std::string& tile : tiles)
        for (const auto& [mode, in] : std::vector<std::pair<const char*, bool>>{
                 {nullptr, false}, {"2a", false}, {"2w", false}, {"2a", true}, {"2w", true}}) {
          // no bias, no cluster mode (pairs: their own): test_gemm_swap_cuda.cpp
          if (tile.rfind("swap", 0) == 0 || tile.rfind("pair", 0) == 0) continue;
          const ScopedEnv cluster("BIK_GEMM_CLUSTER", mode);
          // BIK_GEMM_CLUSTER_INSIDE=0: the last M-tile's A box overhanging M
          const ScopedEnv inside("BIK_GEMM_CLUSTER_INSIDE", in ? nullptr : "0");
          const std::string cl = mode ? std::string(" cluster ") + mode + (in ? "" : " overhanging") : std::string();
          const std::string what = "tile " + tile + cl + " " + dtype_name(dt) + " M=" + std::to_string(m) +
                                   " N=" + std::to_string(n) + " K=" + std::to_string(k);
          const uint64_t launches0 = cuda::gemm_sm90_cluster_launches();
          fill_bytes(o, 0xff);
          cuda::gemm_sm90_tile(make_args(o, a, w, std::nullopt), {}, tile);
          EXPECT_TRUE(bits_equal(o, base)) << what << ", f32 out";
          fill_bytes(o16, 0xff);
          cuda::gemm_sm90_tile(make_args(o16, a, w, bias.view()), {}, tile);
          EXPECT_TRUE(bits_equal(o16, base16)) << what << ", 16-bit out + bias";
          fill_bytes(opad, 0xff);
          cuda::gemm_sm90_tile(make_args(opad, a, w, std::nullopt), {}, tile);
          EXPECT_TRUE(bits_equal(opad, base)) << what << ", f32 out rows of N + 1";
          EXPECT_EQ(cuda::gemm_sm90_cluster_launches() - launches0, mode ? 3u : 0u) << what << ": cluster launches";
          compared += 3;
          if (mode) compared_cluster += 3;
        }
    }
  // Batched (bmm, own and shared weights) through gemm() in every cluster mode, against the one-CTA bits.
  for (DType dt : {DType::BF16, DType::F16}) {
    const int64_t B = 3, m = 133, n = 200, k = 520;
    const test::BatchedOperands ops = test::batched_operands(dt, B, m, n, k);
    const Tensor &a = ops.a, &w = ops.w;
    const TensorView& w_shared = ops.w_shared;
    const Tensor base = dev({B, m, n}, DType::F32), base_shared = dev({B, m, n}, DType::F32), o = dev({B, m, n}, DType::F32);
    {
      const ScopedEnv one_cta("BIK_GEMM_CLUSTER", "0");
      run(Impl::Dispatch, base, a, w);
      run(Impl::Dispatch, base_shared, a, w_shared);
    }
    EXPECT_LT(rel_error(base, a, w, std::nullopt), tolerance(DType::F32));
    for (const char* mode : {"2", "2a", "2w"}) {
      const ScopedEnv cluster("BIK_GEMM_CLUSTER", mode);
      const uint64_t launches0 = cuda::gemm_sm90_cluster_launches();
      fill_bytes(o, 0xff);
      run(Impl::Dispatch, o, a, w);
      EXPECT_TRUE(bits_equal(o, base)) << "bmm cluster " << mode << " " << dtype_name(dt);
      fill_bytes(o, 0xff);
      run(Impl::Dispatch, o, a, w_shared);
      EXPECT_TRUE(bits_equal(o, base_shared)) << "bmm shared weight cluster " << mode << " " << dtype_name(dt);
      EXPECT_EQ(cuda::gemm_sm90_cluster_launches() - launches0, 2u) << "bmm cluster " << mode;
      compared_cluster += 2;
    }
  }
  std::printf("[tiles] %lld tile runs compared bit for bit with gemm(), %lld of them in cluster mode\n",
              (long long)compared, (long long)compared_cluster);
}

// Pieces of K: bmm over a [P, M, K/P] view of an [M, K] matrix and of the weight (the fixed K split into
// F32 partials that sum_partials then folds). The copy engine reads such operands in place (one map over
// each row, the batch moving the K coordinate; before, every call packed both operands into scratch), so
// the configuration must say "tma", not "tma-packed", and every tile, in each cluster mode, must give the
// bits of the same product on contiguous copies of the pieces. Pieces whose K is not a whole number of
// 64-deep stages would read the next piece's elements where the zero fill belongs: they are packed, with
// the same bits.
TEST(GpuGemm, PiecesOfKStayInPlace) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "the wgmma kernel needs sm_90";
  int64_t compared = 0;
  for (const auto& [m, n, k, P] : std::vector<std::array<int64_t, 4>>{
           {1, 300, 1024, 2}, {77, 520, 1536, 3}, {256, 1000, 1024, 2}, {300, 256, 1000, 2}}) {
    const int64_t kc = k / P;
    const Tensor a = dev_filled({m, k}, DType::BF16, uint64_t(m + 11));
    const Tensor w = dev_filled({n, k}, DType::BF16, uint64_t(k));
    const TensorView ap(a.data(), DType::BF16, {P, m, kc}, {kc, k, 1}, gpu());
    const TensorView wp(w.data(), DType::BF16, {P, n, kc}, {kc, k, 1}, gpu());
    const Tensor ac = dev({P, m, kc}, DType::BF16), wc = dev({P, n, kc}, DType::BF16);
    copy(ac, ap);
    copy(wc, wp);
    const Tensor base = dev({P, m, n}, DType::F32), o = dev({P, m, n}, DType::F32);
    fill_bytes(base, 0xff);
    bmm(base, ac, wc);
    EXPECT_LT(rel_error(base, ac, wc, std::nullopt), tolerance(DType::F32));
    const std::string what = test::shape_str(m, n, k) + " in " + std::to_string(P) + " pieces";
    const std::string cfg = cuda::gemm_config_name(make_args(o, ap, wp, std::nullopt));
    const bool whole_stages = kc % 64 == 0;
    EXPECT_EQ(cfg.find("tma-packed") == std::string::npos, whole_stages) << what << ": " << cfg;
    fill_bytes(o, 0xff);
    bmm(o, ap, wp);
    EXPECT_TRUE(bits_equal(o, base)) << what << ", gemm()";
    for (const std::string& tile : cuda::gemm_sm90_tiles()) {
      if (tile.rfind("swap", 0) == 0 || tile.rfind("pair", 0) == 0) continue;  // one batch only
      for (const char* mode : {static_cast<const char*>(nullptr), "2a", "2w"}) {
        const ScopedEnv cluster("BIK_GEMM_CLUSTER", mode);
        fill_bytes(o, 0xff);
        cuda::gemm_sm90_tile(make_args(o, ap, wp, std::nullopt), {}, tile);
        EXPECT_TRUE(bits_equal(o, base)) << what << ", tile " << tile << (mode ? std::string(" cluster ") + mode : "");
        ++compared;
      }
    }
  }
  std::printf("[pieces] %lld tile runs on pieces of K compared bit for bit\n", (long long)compared);
}

// With BIK_GEMM_CLUSTER unset, gemm() runs decode-sized products with N <= 4096 and K >= 8192 (M <= 128, one
// batch), and two full 128-row M-tiles over N >= 16384 columns with K >= 4096 (M = 256), as clusters of two
// CTAs and everything else on one CTA a tile. The rule must pick the path it
// says (launch counter) and the path must not change a bit: every M on both sides of the M bound, a row
// alone against the same row in the batch, against BIK_GEMM_CLUSTER=0.
TEST(GpuGemm, DefaultClusterRuleKeepsTheBits) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "the wgmma kernel needs sm_90";
  struct Case {
    int64_t m, n, k;
    bool cluster;
  };
  // The cluster rule of the default tiles; the pair tiles (cluster launches of their own, BIK_GEMM_PAIRS)
  // would take M = 257 with N = 24576: GpuGemmSwap.Pair* test them.
  const ScopedEnv no_pairs("BIK_GEMM_PAIRS", "0");
  const std::vector<Case> cases = {{1, 1024, 8192, true},     {64, 4096, 12288, true},  {128, 4096, 12288, true},
                                   {129, 4096, 12288, false}, {256, 4096, 12288, false}, {257, 4096, 12288, false}, {200, 4097, 8192, false}, {128, 4096, 8191, false},
                                   {64, 4096, 4096, false},   {256, 24576, 4096, true}, {256, 16384, 4096, true},
                                   {128, 24576, 4096, false}, {257, 24576, 4096, false}, {200, 24576, 4096, false},
                                   {256, 16383, 4096, false}, {256, 16384, 4095, false}};
  for (DType dt : {DType::BF16, DType::F16})
    for (const Case& c : cases) {
      const std::string what = std::string(dtype_name(dt)) + " M=" + std::to_string(c.m) +
                               " N=" + std::to_string(c.n) + " K=" + std::to_string(c.k);
      const Tensor a = dev_filled({c.m, c.k}, dt, uint64_t(c.m * 7 + c.k)), w = dev_filled({c.n, c.k}, dt, uint64_t(c.n));
      const Tensor base = dev({c.m, c.n}, dt), o = dev({c.m, c.n}, dt), row = dev({1, c.n}, dt);
      fill_bytes(base, 0xff);
      {
        const ScopedEnv one_cta("BIK_GEMM_CLUSTER", "0");
        run(Impl::Dispatch, base, a, w);
      }
      const ScopedEnv unset("BIK_GEMM_CLUSTER", nullptr);
      const uint64_t launches0 = cuda::gemm_sm90_cluster_launches();
      fill_bytes(o, 0xff);
      run(Impl::Dispatch, o, a, w);
      EXPECT_EQ(cuda::gemm_sm90_cluster_launches() - launches0, c.cluster ? 1u : 0u) << what << ": cluster launches";
      EXPECT_TRUE(bits_equal(o, base)) << what << ": default rule against one CTA a tile";
      // The last row alone (M = 1 meets the rule whenever N and K do) against its bits in the batch.
      fill_bytes(row, 0xff);
      run(Impl::Dispatch, row, a.view().narrow(0, c.m - 1, 1), w);
      EXPECT_TRUE(bits_equal(row, base.view().narrow(0, c.m - 1, 1))) << what << ": last row alone against the batch";
    }
}

// The tile table (gemm_sm90.cu) must not leave most SMs idle when a smaller tile would fill them: the
// engine's small projections (N = 1024 for k and v) once ran as 32 CTAs of 64x128 on 132 SMs. For every
// M > 64 the chosen tile must give at least half as many CTAs as min(SMs, tiles of the smallest tile).
TEST(GpuGemm, Sm90TileChoiceFillsTheGpu) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "the wgmma tile table is sm_90's";
  const int sms = cuda_device_props(0).sm_count;
  const int64_t k = 4096;
  for (int64_t n : {1024, 4096, 6144, 12288, 24576}) {
    const Tensor w = dev({n, k}, DType::BF16);
    std::string line;
    for (int64_t m : {65, 128, 129, 192, 256, 257, 384, 512, 1024, 2048}) {
      const Tensor a = dev({m, k}, DType::BF16), o = dev({m, n}, DType::BF16);
      // "sm90 128x192 tma", or "sm90 swap64x208 tma": 64 output columns by 208 rows a tile ("pair192x96":
      // 192 by 96, in pairs)
      const std::string name = cuda::gemm_config_name(make_args(o, a, w, std::nullopt));
      const bool swapped = name.find(" swap") != std::string::npos || name.find(" pair") != std::string::npos;
      const size_t s0 = name.find(' ') + (swapped ? 4 : 0), s1 = name.find(' ', s0 + 1), x = name.find('x', s0);
      ASSERT_TRUE(s0 != std::string::npos && x != std::string::npos && x < s1) << name;
      const int64_t bm = std::stoll(name.substr(s0 + 1, x - s0 - 1)), bn = std::stoll(name.substr(x + 1, s1 - x - 1));
      const int64_t tiles = swapped ? (n + bm - 1) / bm * ((m + bn - 1) / bn) : (m + bm - 1) / bm * ((n + bn - 1) / bn);
      const int64_t most = std::min<int64_t>(sms, (m + 63) / 64 * ((n + 31) / 32));
      EXPECT_GE(2 * tiles, most) << "M=" << m << " N=" << n << " K=" << k << ": " << name << " gives " << tiles
                                 << " CTAs on " << sms << " SMs";
      line += " " + std::to_string(m) + ":" + name.substr(s0 + 1, s1 - s0 - 1);
    }
    std::printf("[tiles] N=%-5lld K=%lld%s\n", (long long)n, (long long)k, line.c_str());
  }
}

// Past 256 rows with N >= 6144 the rule takes 64x128 where its tiles fit two waves instead of the one-wave
// 128x192 walk (q|k|v at M = 264..320), and keeps 128x192 from three waves on; the rule's tile gives the
// bits of the 128x192 tile it replaces.
TEST(GpuGemm, Sm90TwoWavesOf64x128PastM256) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "the wgmma tile table is sm_90's";
  if (cuda_device_props(0).sm_count != 132) GTEST_SKIP() << "the M bounds below are those of 132 SMs";
  const ScopedEnv no_pairs("BIK_GEMM_PAIRS", "0");  // which take M = 336..448 (GpuGemmSwap.PairDispatch*)
  const int64_t n = 6144, k = 4096;
  const Tensor w = dev_filled({n, k}, DType::BF16, 5);
  for (const auto& [m, tile] : std::vector<std::pair<int64_t, std::string>>{
           {257, "64x128"}, {264, "64x128"}, {320, "64x128"}, {321, "128x192"}, {384, "128x192"}}) {
    const Tensor a = dev_filled({m, k}, DType::BF16, uint64_t(m)), o = dev({m, n}, DType::BF16),
                 ref = dev({m, n}, DType::BF16);
    const std::string name = cuda::gemm_config_name(make_args(o, a, w, std::nullopt));
    EXPECT_EQ(name.rfind("sm90 " + tile + " ", 0), 0u) << "M=" << m << ": " << name;
    mm(o, a, w);
    cuda::gemm_sm90_tile(make_args(ref, a, w, std::nullopt), {}, "128x192");
    EXPECT_TRUE(bits_equal(o, ref)) << "M=" << m << ": " << name << " against 128x192";
  }
}

// BIK_GEMM_TRIALS (default 2) scales the batches per size; 2 gives about 5000 (M, position) cases per
// shape and dtype, 4 about 10000.
static int trials_from_env() {
  const char* e = std::getenv("BIK_GEMM_TRIALS");
  const int t = e ? std::atoi(e) : 2;
  return t > 0 ? t : 2;
}

TEST(GpuGemm, RowsAreBatchInvariantHalf) {
  BIK_REQUIRE_GPU();
  invariance_suite(Impl::Dispatch, {DType::BF16, DType::F16}, harness_shapes(), 96, trials_from_env());
}

TEST(GpuGemm, RowsAreBatchInvariantF32) {
  BIK_REQUIRE_GPU();
  invariance_suite(Impl::Dispatch, {DType::F32}, {{4096, 4096, 4096}, {4095, 1000, 16384}}, 96, 2);
}

// On Hopper gemm() runs wgmma; the sm_80 kernel (what an A100 or RTX 3090 runs) is checked here too.
TEST(GpuGemm, RowsAreBatchInvariantSm80Kernel) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "gemm() already runs the sm_80 kernel here (RowsAreBatchInvariantHalf)";
  invariance_suite(Impl::Sm80, {DType::BF16}, {{4096, 4096, 16384}, {4095, 1000, 16384}}, 64, 1);
}

// Negative control: cuBLASLt's default heuristic changes kernels (and split-K) with M; the same harness
// has to see it. If this finds nothing, the row checks above prove nothing either.
TEST(GpuGemm, NegativeControlCublasLtIsCaught) {
  BIK_REQUIRE_GPU();
  int64_t diffs = 0, cases = 0;
  for (const HarnessShape& s : {HarnessShape{4096, 4096, 4096}, HarnessShape{4096, 6144, 4096},
                                HarnessShape{1024, 151936, 1024}}) {
    const RowStats st = row_harness(Impl::Cublas, DType::BF16, s.k, s.n, s.max_m, 32, 1, 4242 + uint64_t(s.n), false);
    report("cublaslt", DType::BF16, s, st);
    diffs += st.diffs;
    cases += st.cases;
  }
  std::printf("[rows] cublaslt negative control: %lld of %lld rows differ from the row computed alone\n",
              (long long)diffs, (long long)cases);
  EXPECT_GT(diffs, 0) << "the row check found no variance in cuBLASLt: it has no teeth";
}

#else
TEST(GpuGemm, Skipped) { GTEST_SKIP() << "no GPU: this build has no CUDA backend"; }
#endif

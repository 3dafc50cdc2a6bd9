// CUDA GEMM, ping-pong schedule (BIK_GEMM_PINGPONG=1; gemm_sm90.cuh): the two consumer warpgroups of the
// 128-row wgmma tiles compute alternate 64-row tiles and take turns at the tensor cores. Every output must
// keep the default kernel's bits, for every such tile, through every epilogue, at M/N edges and K tails;
// a row must keep its bits alone and anywhere in a batch; and the comparison must catch a kernel that sums
// K in another order (the negative control: split-K), or the checks prove nothing.
// The launch counter proves the ping-pong kernel ran: a silent fall-back would compare the default kernel
// with itself. An error in the turn protocol hangs rather than fails, so every launch is waited for with
// a deadline and a hang ends the process with a message (a hung kernel cannot be cancelled).
#include <gtest/gtest.h>

#include "gpu/gpu_env.h"
#include "gpu/gemm_test_util.h"
#include "gpu/test_util.h"

#if BIK_WITH_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "bik/ops.h"
#include "bik/tensor.h"
#include "core/backend.h"
#include "cuda/gemm.h"

using namespace bik;

namespace {

using test::dev;
using test::dev_filled;
using test::differing;
using test::gpu;
using test::make_args;
using test::shape_str;

using test::is_sm90;
using test::ScopedEnv;

// Waits for everything queued on the default stream (where these tests launch) with a deadline instead of
// blocking: the GEMMs here take milliseconds, so a minute means a deadlocked turn protocol. Call it right
// after the launches, before any copy (a copy would block on the hung kernel first).
void finish_or_die(const std::string& what) {
  constexpr double kDeadlineS = 60;
  const auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    const cudaError_t e = cudaStreamQuery(nullptr);
    if (e == cudaSuccess) return;
    if (e != cudaErrorNotReady) {
      ADD_FAILURE() << what << ": " << cudaGetErrorString(e);
      return;
    }
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > kDeadlineS) {
      std::fprintf(stderr, "[pingpong] FAILED: %s has not finished after %.0f s: the kernel hangs\n", what.c_str(),
                   kDeadlineS);
      std::fflush(stderr);
      std::_Exit(3);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

// The tiles with two consumer warpgroups, the ones the ping-pong schedule applies to ("128x32" .. "128x256").
std::vector<std::string> two_consumer_tiles() { return test::sm90_tiles_named("128x"); }

// The three epilogues of one problem: f32 out (staged 16-byte stores), 16-bit out with a bias (64-column
// staging chunks), and f32 out in rows of N + 1 (not 16-byte aligned: element-pair stores).
struct Outs {
  Tensor f32, half, f32_pad;
  Outs(int64_t m, int64_t n, DType dt)
      : f32(dev({m, n}, DType::F32)), half(dev({m, n}, dt)),
        f32_pad(Tensor::empty_padded({m, n}, n + 1, DType::F32, gpu())) {}
};

// Runs `tile` on the three epilogues, the ping-pong form or the default kernel, into outputs filled with
// NaN first (an element no kernel writes fails the comparison), and waits with the deadline. Returns the
// ping-pong launches it made.
uint64_t run_three(const std::string& tile, bool pingpong, const TensorView& a, const TensorView& w,
                   const TensorView& bias, const Outs& o, const std::string& what) {
  const ScopedEnv cluster("BIK_GEMM_CLUSTER", "0");  // cluster mode would go first
  const ScopedEnv env("BIK_GEMM_PINGPONG", pingpong ? "1" : "0");
  const uint64_t launches0 = cuda::gemm_sm90_pingpong_launches();
  fill_bytes(o.f32, 0xff);
  fill_bytes(o.half, 0xff);
  fill_bytes(o.f32_pad, 0xff);
  cuda::gemm_sm90_tile(make_args(o.f32, a, w, std::nullopt), {}, tile);
  cuda::gemm_sm90_tile(make_args(o.half, a, w, bias), {}, tile);
  cuda::gemm_sm90_tile(make_args(o.f32_pad, a, w, std::nullopt), {}, tile);
  finish_or_die(what);
  return cuda::gemm_sm90_pingpong_launches() - launches0;
}

}  // namespace

// Every two-consumer tile, ping-pong against the default kernel, bit for bit. M = 1, 17, 64, 65, 200, 1000
// leave partial 64-row tiles and CTAs with one tile (consumer 1 idle) or an odd count; N = 200 and 1000
// are multiples of no BN; K = 64 is one stage, 72 a stage and a zero-filled tail, 4096 many stages (the
// ring wraps inside a tile and the stage uses run on across the consumers). M = 2000, N = 6000 give every
// tile hundreds to thousands of 64-row tiles, so on 132 SMs each CTA walks several, some CTAs an even and
// some an odd number (the turn order over many rounds, and the last turn falling to either consumer).
TEST(GpuGemmPingPong, EveryTwoConsumerTileGivesTheDefaultBits) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "the wgmma kernel needs sm_90";
  const std::vector<std::string> tiles = two_consumer_tiles();
  EXPECT_EQ(tiles.size(), 5u) << "the tiles with two consumer warpgroups";
  std::vector<std::array<int64_t, 3>> shapes;
  for (int64_t m : {1, 17, 64, 65, 200, 1000})
    for (int64_t n : {200, 1000})
      for (int64_t k : {64, 72, 4096}) shapes.push_back({m, n, k});
  shapes.push_back({2000, 6000, 72});
  shapes.push_back({2000, 6000, 4096});
  int64_t compared = 0;
  for (DType dt : {DType::BF16, DType::F16})
    for (const auto& [m, n, k] : shapes) {
      const Tensor a = dev_filled({m, k}, dt, uint64_t(m * 7 + k)), w = dev_filled({n, k}, dt, uint64_t(n * 5 + k));
      const Tensor bias = dev_filled({n}, dt, uint64_t(n) + 3);
      const Outs base(m, n, dt), pp(m, n, dt);
      for (const std::string& tile : tiles) {
        const std::string what = "tile " + tile + " " + dtype_name(dt) + " " + shape_str(m, n, k);
        EXPECT_EQ(run_three(tile, false, a, w, bias, base, what + " (default)"), 0u) << what;
        EXPECT_EQ(run_three(tile, true, a, w, bias, pp, what + " (ping-pong)"), 3u)
            << what << ": ping-pong launches (BIK_GEMM_PINGPONG=1 did not take the ping-pong kernel)";
        EXPECT_EQ(differing(pp.f32, base.f32), 0) << what << ", f32 out";
        EXPECT_EQ(differing(pp.half, base.half), 0) << what << ", 16-bit out + bias";
        EXPECT_EQ(differing(pp.f32_pad, base.f32_pad), 0) << what << ", f32 out rows of N + 1";
        compared += 3;
      }
    }
  std::printf("[pingpong] %lld tile runs compared bit for bit with the default kernel\n", (long long)compared);
}

// Through gemm() (the tile gemm() picks for M: the switch applies where it picks a 128-row tile, and the
// configuration name says so), batched products with own and shared (batch stride 0) weights, and an
// operand the copy engine cannot describe (a transposed weight view, packed before the launch).
TEST(GpuGemmPingPong, DispatchBatchedAndPackedGiveTheDefaultBits) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "the wgmma kernel needs sm_90";
  const ScopedEnv cluster("BIK_GEMM_CLUSTER", "0");
  int pingpong_shapes = 0;
  for (DType dt : {DType::BF16, DType::F16})
    for (const auto& [m, n, k] : std::vector<std::array<int64_t, 3>>{
             {300, 4096, 1024}, {1000, 6144, 4096}, {4096, 4096, 4096}, {1025, 1000, 4095}}) {
      const Tensor a = dev_filled({m, k}, dt, uint64_t(m + n)), w = dev_filled({n, k}, dt, uint64_t(k));
      const Tensor base = dev({m, n}, DType::F32), o = dev({m, n}, DType::F32);
      const std::string what = std::string(dtype_name(dt)) + " " + shape_str(m, n, k);
      fill_bytes(base, 0xff);
      {
        const ScopedEnv env("BIK_GEMM_PINGPONG", "0");
        mm(base, a, w);
        finish_or_die(what + " (default)");
      }
      const ScopedEnv env("BIK_GEMM_PINGPONG", "1");
      const std::string name = cuda::gemm_config_name(make_args(o, a, w, std::nullopt));
      const bool pingpong = name.find(" pingpong") != std::string::npos;
      pingpong_shapes += pingpong;
      const uint64_t launches0 = cuda::gemm_sm90_pingpong_launches();
      fill_bytes(o, 0xff);
      mm(o, a, w);
      finish_or_die(what + " (" + name + ")");
      EXPECT_EQ(cuda::gemm_sm90_pingpong_launches() - launches0, pingpong ? 1u : 0u) << what << ": " << name;
      EXPECT_EQ(differing(o, base), 0) << what << ": " << name;
      std::printf("[pingpong] %s: %s\n", what.c_str(), name.c_str());
    }
  EXPECT_GT(pingpong_shapes, 0) << "gemm() never picked a 128-row tile here: nothing was tested through it";

  // Batched, every two-consumer tile forced, own and shared weights; and a transposed weight (packed).
  for (DType dt : {DType::BF16, DType::F16}) {
    const int64_t B = 3, m = 133, n = 200, k = 520;
    const test::BatchedOperands ops = test::batched_operands(dt, B, m, n, k);
    const Tensor &a = ops.a, &w = ops.w;
    const TensorView& w_shared = ops.w_shared;
    const Tensor wt = dev({k, n}, dt);  // the weight of batch 0 stored [K, N], passed as a transposed view
    copy(wt.view().transpose(0, 1), w.view().select(0, 0));
    const TensorView a0 = a.view().select(0, 0);
    const Tensor base = dev({B, m, n}, DType::F32), o = dev({B, m, n}, DType::F32);
    const Tensor base_shared = dev({B, m, n}, DType::F32), base_t = dev({m, n}, DType::F32), o_t = dev({m, n}, DType::F32);
    for (const std::string& tile : two_consumer_tiles()) {
      const std::string what = "tile " + tile + " " + dtype_name(dt);
      {
        const ScopedEnv env("BIK_GEMM_PINGPONG", "0");
        cuda::gemm_sm90_tile(make_args(base, a, w, std::nullopt), {}, tile);
        cuda::gemm_sm90_tile(make_args(base_shared, a, w_shared, std::nullopt), {}, tile);
        cuda::gemm_sm90_tile(make_args(base_t, a0, wt.view().transpose(0, 1), std::nullopt), {}, tile);
        finish_or_die(what + " batched (default)");
      }
      const ScopedEnv env("BIK_GEMM_PINGPONG", "1");
      const uint64_t launches0 = cuda::gemm_sm90_pingpong_launches();
      fill_bytes(o, 0xff);
      cuda::gemm_sm90_tile(make_args(o, a, w, std::nullopt), {}, tile);
      finish_or_die(what + " batched (ping-pong)");
      EXPECT_EQ(differing(o, base), 0) << what << " bmm";
      fill_bytes(o, 0xff);
      cuda::gemm_sm90_tile(make_args(o, a, w_shared, std::nullopt), {}, tile);
      finish_or_die(what + " batched, shared weight (ping-pong)");
      EXPECT_EQ(differing(o, base_shared), 0) << what << " bmm shared weight";
      fill_bytes(o_t, 0xff);
      cuda::gemm_sm90_tile(make_args(o_t, a0, wt.view().transpose(0, 1), std::nullopt), {}, tile);
      finish_or_die(what + " transposed weight (ping-pong)");
      EXPECT_EQ(differing(o_t, base_t), 0) << what << " transposed (packed) weight";
      EXPECT_EQ(cuda::gemm_sm90_pingpong_launches() - launches0, 3u) << what;
    }
  }
}

// Row invariance under the ping-pong kernel: a row computed alone (M = 1: one 64-row tile, consumer 1
// idle), by the ping-pong kernel and by the default gemm(), has the bits it gets inside batches that put
// it at other rows of other tiles: the pool itself (M = 1000), the pool from row 400 on (M = 600, every
// row 16 rows off its place in the 64-row tiles) and 17 rows around row 500.
TEST(GpuGemmPingPong, RowsAreBatchInvariant) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "the wgmma kernel needs sm_90";
  const ScopedEnv cluster("BIK_GEMM_CLUSTER", "0");
  const int64_t rows = 1000, n = 1000, k = 4096;
  const std::vector<int64_t> targets = {0, 1, 63, 64, 65, 127, 128, 129, 400, 463, 464, 500, 501, 507, 999};
  struct Batch {
    int64_t first, m;  // pool rows [first, first + m)
  };
  const std::vector<Batch> batches = {{0, rows}, {400, 600}, {492, 17}};
  int64_t cases = 0, diffs = 0;
  for (DType dt : {DType::BF16, DType::F16}) {
    const Tensor pool = dev_filled({rows, k}, dt, 77), w = dev_filled({n, k}, dt, 78);
    // Alone, by gemm() with the switch off (the default kernel gemm() runs for M = 1).
    std::vector<Tensor> alone;
    for (int64_t t : targets) {
      alone.push_back(dev({1, n}, DType::F32));
      const ScopedEnv env("BIK_GEMM_PINGPONG", "0");
      mm(alone.back(), pool.view().narrow(0, t, 1), w);
    }
    finish_or_die("rows alone");
    for (const std::string& tile : two_consumer_tiles()) {
      const ScopedEnv env("BIK_GEMM_PINGPONG", "1");
      const std::string what = "tile " + tile + " " + dtype_name(dt);
      const uint64_t launches0 = cuda::gemm_sm90_pingpong_launches();
      const Tensor o1 = dev({1, n}, DType::F32);
      for (size_t i = 0; i < targets.size(); ++i) {
        fill_bytes(o1, 0xff);
        cuda::gemm_sm90_tile(make_args(o1, pool.view().narrow(0, targets[i], 1), w, std::nullopt), {}, tile);
        finish_or_die(what + " row alone");
        ++cases;
        const int64_t d = differing(o1, alone[i]);
        diffs += d != 0;
        EXPECT_EQ(d, 0) << what << ": row " << targets[i] << " alone, ping-pong vs default";
      }
      for (const Batch& bt : batches) {
        const Tensor o = dev({bt.m, n}, DType::F32);
        fill_bytes(o, 0xff);
        cuda::gemm_sm90_tile(make_args(o, pool.view().narrow(0, bt.first, bt.m), w, std::nullopt), {}, tile);
        finish_or_die(what + " batch");
        for (size_t i = 0; i < targets.size(); ++i) {
          if (targets[i] < bt.first || targets[i] >= bt.first + bt.m) continue;
          ++cases;
          const int64_t d = differing(o.view().narrow(0, targets[i] - bt.first, 1), alone[i]);
          diffs += d != 0;
          EXPECT_EQ(d, 0) << what << ": row " << targets[i] << " at row " << targets[i] - bt.first << " of a batch of "
                          << bt.m;
        }
      }
      EXPECT_EQ(cuda::gemm_sm90_pingpong_launches() - launches0, targets.size() + batches.size()) << what;
    }
  }
  std::printf("[pingpong] rows: %lld cases (row alone vs in a batch, ping-pong vs default), %lld differ\n",
              (long long)cases, (long long)diffs);
}

// With BIK_GEMM_PINGPONG unset the 128x192 tile takes the ping-pong form for N >= 6144 when M is not a
// multiple of 128, and so does the 128x256 tile there for M < 256 (M <= 192 with an f32 output); the
// default form otherwise (gemm_sm90.cu, pingpong_for); either way the bits are those of BIK_GEMM_PINGPONG=0.
TEST(GpuGemmPingPong, DefaultRuleTakesPingPongFor128x192AtWideN) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "the wgmma kernel needs sm_90";
  const ScopedEnv cluster("BIK_GEMM_CLUSTER", "0");
  int ruled = 0, ruled_256 = 0, ruled_f32 = 0, unruled_f32 = 0;
  struct Case {
    int64_t m, n, k;
    bool f32_out;
  };
  for (const auto& [m, n, k, f32_out] : std::vector<Case>{{2100, 6144, 4096, false},
                                                          {768, 6144, 4096, false},
                                                          {1088, 4096, 4096, false},
                                                          {144, 151936, 1024, false},
                                                          {200, 151936, 1024, false},
                                                          {240, 151936, 1024, false},
                                                          {520, 151936, 1024, false},
                                                          {160, 151936, 4096, true},
                                                          {192, 151936, 4096, true},
                                                          {200, 151936, 4096, true},
                                                          {240, 151936, 4096, true}}) {
    const DType dt = DType::BF16, out_t = f32_out ? DType::F32 : dt;
    const Tensor a = dev_filled({m, k}, dt, uint64_t(m + 7)), w = dev_filled({n, k}, dt, uint64_t(n + k));
    const Tensor base = dev({m, n}, out_t), o = dev({m, n}, out_t);
    const std::string what = shape_str(m, n, k) + (f32_out ? " f32 out" : "");
    fill_bytes(base, 0xff);
    {
      const ScopedEnv env("BIK_GEMM_PINGPONG", "0");
      mm(base, a, w);
      finish_or_die(what + " (off)");
    }
    const ScopedEnv env("BIK_GEMM_PINGPONG", nullptr);
    const std::string name = cuda::gemm_config_name(make_args(o, a, w, std::nullopt));
    const bool wide_192 = n >= 6144 && m % 128 != 0 &&
                          (name.find("128x192") != std::string::npos ||
                           (name.find("128x256") != std::string::npos && m < (f32_out ? 193 : 256)));
    ruled += wide_192;
    ruled_256 += wide_192 && name.find("128x256") != std::string::npos;
    if (f32_out && name.find("128x256") != std::string::npos) (wide_192 ? ruled_f32 : unruled_f32) += 1;
    const uint64_t launches0 = cuda::gemm_sm90_pingpong_launches();
    fill_bytes(o, 0xff);
    mm(o, a, w);
    finish_or_die(what + " (" + name + ")");
    EXPECT_EQ(name.find(" pingpong") != std::string::npos, wide_192) << what << ": " << name;
    EXPECT_EQ(cuda::gemm_sm90_pingpong_launches() - launches0, wide_192 ? 1u : 0u) << what << ": " << name;
    EXPECT_EQ(differing(o, base), 0) << what << ": " << name;
    std::printf("[pingpong rule] %s: %s\n", what.c_str(), name.c_str());
  }
  EXPECT_GT(ruled, 0) << "no shape here ran the 128x192 tile at N >= 6144 and M % 128 != 0: the rule was not "
                          "exercised";
  EXPECT_GT(ruled_256, 0) << "no shape here ran the 128x256 tile at N >= 6144, M < 256 and M % 128 != 0: that part "
                             "of the rule was not exercised";
  EXPECT_GT(ruled_f32, 0) << "no f32 output ran the 128x256 tile at M <= 192: the f32 bound was not exercised";
  EXPECT_GT(unruled_f32, 0) << "no f32 output ran the 128x256 tile at M = 193..255: the f32 bound was not exercised";
}

// Negative control: the same comparison applied to a split-K product (the two K halves computed apart
// and added, a correct product summed in another order) must find differences against both kernels,
// while the split result stays as accurate; if it found none, the checks above would prove nothing.
TEST(GpuGemmPingPong, NegativeControlSplitKIsCaught) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "the wgmma kernel needs sm_90";
  const ScopedEnv cluster("BIK_GEMM_CLUSTER", "0");
  const int64_t m = 200, n = 1000, k = 4096, h = k / 2;
  const Tensor a = dev_filled({m, k}, DType::BF16, 91), w = dev_filled({n, k}, DType::BF16, 92);
  const Tensor base = dev({m, n}, DType::F32), pp = dev({m, n}, DType::F32);
  const Tensor lo = dev({m, n}, DType::F32), hi = dev({m, n}, DType::F32);
  {
    const ScopedEnv env("BIK_GEMM_PINGPONG", "0");
    cuda::gemm_sm90_tile(make_args(base, a, w, std::nullopt), {}, "128x128");
    mm(lo, a.view().narrow(1, 0, h), w.view().narrow(1, 0, h));
    mm(hi, a.view().narrow(1, h, h), w.view().narrow(1, h, h));
    finish_or_die("split-K halves");
  }
  {
    const ScopedEnv env("BIK_GEMM_PINGPONG", "1");
    cuda::gemm_sm90_tile(make_args(pp, a, w, std::nullopt), {}, "128x128");
    finish_or_die("ping-pong 128x128");
  }
  const Tensor hlo = lo.to(Device::cpu()), hhi = hi.to(Device::cpu()), hbase = base.to(Device::cpu());
  const Tensor split = Tensor::empty({m, n}, DType::F32);
  double num = 0, den = 0;
  for (int64_t i = 0; i < m * n; ++i) {
    const float s = hlo.ptr<float>()[i] + hhi.ptr<float>()[i];
    split.ptr<float>()[i] = s;
    const double r = hbase.ptr<float>()[i];
    num += (double(s) - r) * (double(s) - r);
    den += r * r;
  }
  const double rel = std::sqrt(num / std::max(den, 1e-300));
  const int64_t d_base = differing(split, base), d_pp = differing(split, pp);
  std::printf("[pingpong] split-K negative control: %lld of %lld elements differ from the default kernel, %lld from "
              "ping-pong (relative difference %.2e)\n",
              (long long)d_base, (long long)(m * n), (long long)d_pp, rel);
  EXPECT_GT(d_base, 0) << "the comparison found no difference in a split-K product: it has no teeth";
  EXPECT_GT(d_pp, 0) << "the comparison found no difference in a split-K product: it has no teeth";
  EXPECT_LT(rel, 5e-5) << "the split-K product should be as accurate, only summed in another order";
  EXPECT_EQ(differing(pp, base), 0) << "ping-pong vs default, 128x128";
}

#else
TEST(GpuGemmPingPong, Skipped) { GTEST_SKIP() << "no GPU: this build has no CUDA backend"; }
#endif

// Programmatic dependent launch (cuda/launch.cuh): on sm_90 the engine's kernels (norms, rotary, the KV
// write, attention, the wgmma GEMM, silu_and_mul, embedding) are launched as soon as the kernel before
// them on the stream has no CTA left, before it has completed, and wait in pdl_wait for its results. Only
// the schedule may change: a chain of dependent ops, each reading what the one before wrote (and
// overwriting what an earlier one read), must give the bits of plain launches (BIK_PDL=0), run eagerly on
// the default stream and recorded in a CUDA graph (replays start from cleared outputs). The GEMM shapes
// take the sm_90 paths that start differently: the gated epilogue, clusters of two (gate|up at M = 256,
// the long-K down projection at M <= 256), the swapped tile (down at M = 200) and the one-CTA tiles. The launch counter proves the programmatic path ran: a silent fall-back to plain launches
// would compare plain launches with themselves.
#include <gtest/gtest.h>

#include "gpu/gpu_env.h"
#include "gpu/gemm_test_util.h"
#include "gpu/test_util.h"

#if BIK_WITH_CUDA
#include <vector>

#include "bik/graph.h"
#include "bik/ops.h"
#include "bik/tensor.h"
#include "cuda/device_info.h"

using namespace bik;

namespace {

using test::dev;
using test::dev_filled;
using test::differing;
using test::is_sm90;
using test::ScopedEnv;

constexpr int64_t kHidden = 4096, kInter = 8192, kHeads = 24, kKvHeads = 8, kDim = 128;  // 32 heads of 128

struct Weights {
  Tensor norm = dev_filled({kHidden}, DType::BF16, 1);
  Tensor gate_up = dev_filled({2 * kInter, kHidden}, DType::BF16, 2);
  Tensor down = dev_filled({kHidden, kInter}, DType::BF16, 3);
  Tensor o = dev_filled({kHidden, kHidden}, DType::BF16, 4);
  Tensor cos_sin = rope_cos_sin_table(4096, kDim, 10000.0, Device::cuda(0));
};

// Every intermediate of the chain, compared one by one.
struct Outputs {
  Tensor x, hn, g, y;
  explicit Outputs(int64_t m)
      : x(dev({m, kHidden}, DType::BF16)),
        hn(dev({m, kHidden}, DType::BF16)),
        g(dev({m, kInter}, DType::BF16)),
        y(dev({m, kHidden}, DType::BF16)) {}
};

// x = o-proj(x0), then three rounds of: norm, gated gate|up, down, add & norm, rotary on the normed rows
// (as q and k heads of one row, the engine's strided views), o-proj back into x. Every op reads what the
// one before wrote; x0 is only read, so a chain may run again at once with the same result.
void run_chain(const Weights& w, Outputs& o, const Tensor& x0, const Tensor& pos, Stream s) {
  const int64_t m = x0.size(0);
  const TensorView heads = o.hn.view().reshape({m, kHeads + kKvHeads, kDim});
  mm(o.x, x0, w.o, s);
  for (int round = 0; round < 3; ++round) {
    rms_norm(o.hn, o.x, w.norm, 1e-6f, std::nullopt, s);
    mm_silu_and_mul(o.g, o.hn, w.gate_up, s);
    mm(o.y, o.g, w.down, s);
    rms_norm(o.hn, o.y, w.norm, 1e-6f, o.x, s);  // x := round(x + y), hn = norm(x)
    rotary_embedding(heads.narrow(1, 0, kHeads), heads.narrow(1, kHeads, kKvHeads), pos, w.cos_sin, true, s);
    mm(o.x, o.hn, w.o, s);
  }
}
constexpr int kChainOps = 1 + 3 * 6;

int64_t differences(const Outputs& a, const Outputs& b) {
  return differing(a.x, b.x) + differing(a.hn, b.hn) + differing(a.g, b.g) + differing(a.y, b.y);
}

Tensor positions(int64_t m, int64_t first, int64_t step) {
  Tensor pos = Tensor::empty({m}, DType::I32);
  for (int64_t i = 0; i < m; ++i) pos.ptr<int32_t>()[i] = int32_t((first + i * step) % 4096);
  return pos.to(Device::cuda(0));
}

}  // namespace

// Eager, on the default stream: plain launches against programmatic ones, at M = 1, 64, 200 and 256, each
// chain run twice back to back so that the second's first kernels are launched behind the first's last.
TEST(GpuPdl, ChainOfOpsGivesThePlainLaunchBits) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "programmatic dependent launch is used on sm_90 only";
  const Weights w;
  for (int64_t m : {1, 64, 200, 256}) {
    SCOPED_TRACE("M = " + std::to_string(m));
    const Tensor x0 = dev_filled({m, kHidden}, DType::BF16, 10 + uint64_t(m));
    const Tensor pos = positions(m, 0, 37);
    Outputs plain(m), first(m), second(m);
    {
      ScopedEnv off("BIK_PDL", "0");
      const uint64_t before = cuda::programmatic_launches();
      run_chain(w, plain, x0, pos, Stream{});
      synchronize(Device::cuda(0));
      EXPECT_EQ(cuda::programmatic_launches(), before) << "BIK_PDL=0 still launched programmatically";
    }
    ScopedEnv on("BIK_PDL", nullptr);
    const uint64_t before = cuda::programmatic_launches();
    run_chain(w, first, x0, pos, Stream{});
    run_chain(w, second, x0, pos, Stream{});
    synchronize(Device::cuda(0));
    EXPECT_GE(cuda::programmatic_launches() - before, uint64_t(2 * kChainOps)) << "the programmatic path did not run";
    EXPECT_EQ(differences(plain, first), 0);
    EXPECT_EQ(differences(plain, second), 0);
  }
}

// Recorded in a CUDA graph on a stream of its own (the launches become programmatic edges), replayed three
// times: the bits of the eager plain launches.
TEST(GpuPdl, GraphOfProgrammaticLaunchesGivesThePlainLaunchBits) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "programmatic dependent launch is used on sm_90 only";
  const Weights w;
  const int64_t m = 256;
  const Tensor x0 = dev_filled({m, kHidden}, DType::BF16, 31);
  const Tensor pos = positions(m, 1000, 1);
  Outputs plain(m), graphed(m);
  {
    ScopedEnv off("BIK_PDL", "0");
    run_chain(w, plain, x0, pos, Stream{});
    synchronize(Device::cuda(0));
  }
  ScopedEnv on("BIK_PDL", nullptr);
  CudaStream cs(Device::cuda(0));
  cs.wait_for_default();
  const uint64_t before = cuda::programmatic_launches();
  CudaGraph g;
  g.begin_capture(cs.stream());
  run_chain(w, graphed, x0, pos, cs.stream());
  g.end_capture(cs.stream());
  EXPECT_GE(cuda::programmatic_launches() - before, uint64_t(kChainOps)) << "the recording has no programmatic launch";
  for (int i = 0; i < 3; ++i) {
    fill_bytes(graphed.x, 0);
    fill_bytes(graphed.hn, 0);
    cs.wait_for_default();
    g.launch(cs.stream());
    cs.default_waits();
    synchronize(Device::cuda(0));
    EXPECT_EQ(differences(plain, graphed), 0) << "replay " << i;
  }
}

#endif  // BIK_WITH_CUDA

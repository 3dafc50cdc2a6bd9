// mm_add on CUDA: the product with a residual added in the sm_90 GEMM's epilogue against the two steps it
// stands for (mm, then the add), bit for bit, on every tile family the rule picks (one CTA a tile, clusters
// sharing A or W, ping-pong, swapped, pair and wide swapped tiles, rows past a tile's end) and for a
// residual whose strides are not out's (the two steps then run); the sum against one written out on the
// host from mm's product; the control: one residual element changed changes that output alone.
#include <gtest/gtest.h>

#include "gpu/gpu_env.h"
#include "gpu/gemm_test_util.h"
#include "gpu/test_util.h"

#if BIK_WITH_CUDA
#include <cstdio>
#include <string>
#include <vector>

#include "bik/ops.h"
#include "bik/tensor.h"
#include "cuda/gemm.h"

using namespace bik;

namespace {

using test::dev;
using test::dev_filled;
using test::differing;
using test::is_sm90;
using test::ScopedEnv;

// The two steps mm_add stands for (BIK_GEMM_ADD=0 takes them on every device).
void two_steps(const TensorView& out, const TensorView& a, const TensorView& w, const TensorView& res) {
  const ScopedEnv plain("BIK_GEMM_ADD", "0");
  mm_add(out, a, w, res);
}

// round(p + r) element by element on the host, in out's dtype: the add written out.
Tensor host_sum(const Tensor& product, const Tensor& res) {
  const Tensor p = Tensor::empty(product.sizes(), product.dtype()), r = Tensor::empty(res.sizes(), res.dtype());
  copy(p, product);
  copy(r, res);
  Tensor s = Tensor::empty(product.sizes(), product.dtype());
  for (int64_t i = 0; i < s.numel(); ++i) {
    if (s.dtype() == DType::BF16)
      s.ptr<bf16>()[i] = to_bf16(to_float(p.ptr<bf16>()[i]) + to_float(r.ptr<bf16>()[i]));
    else
      s.ptr<f16>()[i] = to_f16(to_float(p.ptr<f16>()[i]) + to_float(r.ptr<f16>()[i]));
  }
  return s;
}

struct AddCase {
  int64_t m, n, k;
};

// Decode sizes (64-row tiles; N = 4096 with K >= 8192 in clusters), 129-448 rows (swapped and pair tiles),
// past 448 (wide swapped tiles, 128x256), N that no tile divides, K not a multiple of 64.
const std::vector<AddCase>& add_cases() {
  static const std::vector<AddCase> c = {{1, 4096, 256},   {17, 1000, 136},  {64, 4096, 8192},  {100, 4096, 512},
                                         {129, 4096, 320}, {200, 4096, 1024}, {256, 4096, 4096}, {300, 4096, 512},
                                         {449, 4096, 256}, {700, 1000, 200},  {1637, 4096, 128}, {2048, 1024, 72}};
  return c;
}

TEST(GpuGemmAdd, FusedGivesTheBitsOfTheTwoSteps) {
  BIK_REQUIRE_GPU();
  if (!is_sm90()) GTEST_SKIP() << "the residual epilogue is the sm_90 kernel's (elsewhere mm_add is the two steps)";
  struct Mode {
    const char* env;
    const char* value;
  };
  const std::vector<Mode> modes = {{"BIK_GEMM_CLUSTER", nullptr}, {"BIK_GEMM_CLUSTER", "0"}, {"BIK_GEMM_CLUSTER", "2a"},
                                   {"BIK_GEMM_CLUSTER", "2w"},    {"BIK_GEMM_PINGPONG", "1"}, {"BIK_GEMM_SWAP", "0"},
                                   {"BIK_GEMM_SWAP", "1"},        {"BIK_GEMM_PAIRS", "1"},    {"BIK_GEMM_WIDE", "1"}};
  int64_t compared = 0, fused = 0;
  for (DType dt : {DType::BF16, DType::F16})
    for (const AddCase& c : add_cases()) {
      const Tensor a = dev_filled({c.m, c.k}, dt, uint64_t(c.m * 7 + c.k));
      const Tensor w = dev_filled({c.n, c.k}, dt, uint64_t(c.n + 3));
      const Tensor res = dev_filled({c.m, c.n}, dt, uint64_t(c.m + 11));
      const Tensor product = dev({c.m, c.n}, dt), ref = dev({c.m, c.n}, dt), out = dev({c.m, c.n}, dt);
      mm(product, a, w);
      fill_bytes(ref, 0xff);
      two_steps(ref, a, w, res);
      const std::string shape = std::string(dtype_name(dt)) + " " + test::shape_str(c.m, c.n, c.k);
      EXPECT_EQ(differing(ref, host_sum(product, res)), 0) << shape << ": the two steps against the host's add";
      for (const Mode& mode : modes) {
        const ScopedEnv env(mode.env, mode.value);
        const std::string what = shape + " " + mode.env + "=" + (mode.value ? mode.value : "unset");
        const uint64_t before = cuda::gemm_sm90_add_launches();
        fill_bytes(out, 0xff);
        mm_add(out, a, w, res);
        fused += int64_t(cuda::gemm_sm90_add_launches() - before);
        EXPECT_EQ(differing(out, ref), 0) << what;
        ++compared;
      }
    }
  std::printf("[add] %lld products compared bit for bit with the two steps, %lld of them fused\n",
              (long long)compared, (long long)fused);
  EXPECT_EQ(fused, compared) << "every case here takes the fused epilogue";
}

// A residual whose strides are not out's (a column window of a wider buffer) runs the two steps; out a
// window too, with the residual's strides, takes the fused epilogue; both give the same bits. The control:
// one residual element changed changes that output alone.
TEST(GpuGemmAdd, StridesAndTheControl) {
  BIK_REQUIRE_GPU();
  const DType dt = DType::BF16;
  const int64_t M = 200, N = 512, K = 256;
  const Tensor a = dev_filled({M, K}, dt, 1), w = dev_filled({N, K}, dt, 2), res = dev_filled({M, N}, dt, 3);
  const Tensor ref = dev({M, N}, dt), out = dev({M, N}, dt);
  two_steps(ref, a, w, res);
  const Tensor wide_res = dev({M, N + 64}, dt), wide_out = dev({M, N + 64}, dt);
  const TensorView rv = wide_res.view().narrow(1, 64, N), ov = wide_out.view().narrow(1, 64, N);
  copy(rv, res);
  uint64_t before = cuda::gemm_sm90_add_launches();
  mm_add(out, a, w, rv);  // strides differ from out's: the two steps
  EXPECT_EQ(cuda::gemm_sm90_add_launches(), before);
  EXPECT_EQ(differing(out, ref), 0);
  mm_add(ov, a, w, rv);  // equal strides: fused on sm_90
  if (is_sm90()) EXPECT_EQ(cuda::gemm_sm90_add_launches(), before + 1);
  EXPECT_EQ(differing(ov, ref), 0);
  // The control.
  const Tensor h = Tensor::empty({M, N}, dt);
  copy(h, res);
  h.ptr<bf16>()[7 * N + 5] = to_bf16(to_float(h.ptr<bf16>()[7 * N + 5]) + 1.0f);
  const Tensor res2 = dev({M, N}, dt);
  copy(res2, h);
  mm_add(out, a, w, res2);
  EXPECT_EQ(differing(out, ref), 1);
  try {
    mm_add(out, a, w, out);
    ADD_FAILURE() << "mm_add accepted the residual in out's memory";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("share memory"), std::string::npos) << e.what();
  }
}

}  // namespace
#endif

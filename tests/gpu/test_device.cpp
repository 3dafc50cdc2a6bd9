#include <cstring>

#include "bik/tensor.h"
#include "gpu/gpu_env.h"

using namespace bik;

TEST(GpuDevice, PropsAreSane) {
  BIK_REQUIRE_GPU();
  DeviceProps p = cuda_device_props(0);
  EXPECT_GT(p.sm_count, 0);
  EXPECT_GE(p.arch(), 80) << p.name;
  EXPECT_GE(p.smem_per_block_optin, 48 * 1024);
  EXPECT_THROW(cuda_device_props(cuda_device_count()), Error);
}

TEST(GpuDevice, StridedCopyRoundTrip) {
  BIK_REQUIRE_GPU();
  Tensor h = Tensor::empty({5, 7}, DType::F32);
  for (int i = 0; i < 35; ++i) h.ptr<float>()[i] = float(i) * 0.5f;
  Tensor d = Tensor::empty_padded({5, 7}, 9, DType::F32, Device::cuda(0));
  copy(d, h);
  Tensor back = Tensor::empty({5, 7}, DType::F32);
  copy(back, d);
  EXPECT_EQ(std::memcmp(back.data(), h.data(), 35 * 4), 0);
}

#include <gtest/gtest.h>

#include <cmath>

#include "bik/tensor.h"

using namespace bik;

TEST(DType, Bf16RoundsToNearestEven) {
  EXPECT_EQ(to_bf16(1.0f).bits, 0x3f80);
  // 1 + 2^-8 is exactly half way between two bf16 values: ties go to the even mantissa (1.0).
  EXPECT_EQ(to_bf16(1.00390625f).bits, 0x3f80);
  // 1 + 3 * 2^-8 is half way again: rounds up to the even neighbour 1 + 2^-6... (mantissa 2).
  EXPECT_EQ(to_bf16(1.01171875f).bits, 0x3f82);
  EXPECT_TRUE(std::isnan(to_float(to_bf16(NAN))));
  EXPECT_EQ(to_float(to_bf16(-2.5f)), -2.5f);
}

TEST(DType, F16RoundTripsEveryValue) {
  for (uint32_t b = 0; b < 0x10000; ++b) {
    f16 h{uint16_t(b)};
    float f = to_float(h);
    if (std::isnan(f)) continue;
    EXPECT_EQ(to_f16(f).bits, h.bits) << "bits " << b;
  }
}

TEST(DType, F16RoundsToNearestEvenAndOverflows) {
  EXPECT_EQ(to_f16(65504.0f).bits, 0x7bff);
  EXPECT_EQ(to_f16(65520.0f).bits, 0x7c00);  // half way to the next power: rounds to inf
  EXPECT_EQ(to_f16(65519.0f).bits, 0x7bff);
  EXPECT_EQ(to_f16(1.0f + 1.0f / 2048).bits, 0x3c00);  // tie -> even
  EXPECT_EQ(to_f16(1.0f + 3.0f / 2048).bits, 0x3c02);  // tie -> even (up)
  EXPECT_EQ(to_f16(5.9604644775390625e-08f).bits, 0x0001);  // smallest subnormal
  EXPECT_EQ(to_f16(2.98023223876953125e-08f).bits, 0x0000);  // half of it: tie -> even (0)
}

TEST(DType, ParseNamesAndRejectsUnknown) {
  EXPECT_EQ(parse_dtype("bfloat16"), DType::BF16);
  EXPECT_EQ(parse_dtype("fp16"), DType::F16);
  try {
    parse_dtype("f8");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("f8"), std::string::npos);
  }
}

TEST(Tensor, ViewsShareStorageAndReportShape) {
  Tensor t = Tensor::empty({4, 6}, DType::F32);
  float* p = t.ptr<float>();
  for (int i = 0; i < 24; ++i) p[i] = float(i);
  TensorView r = t.view().select(0, 2);
  EXPECT_EQ(r.ndim, 1);
  EXPECT_EQ(r.ptr<float>()[3], 15.0f);
  TensorView c = t.view().narrow(1, 2, 3);
  EXPECT_FALSE(c.is_contiguous());
  EXPECT_EQ(c.str(), "f32[4, 3] stride [6, 1]");
  TensorView tr = t.view().transpose(0, 1);
  EXPECT_EQ(tr.size(0), 6);
  EXPECT_EQ(tr.ptr<float>()[tr.strides(0) * 5 + tr.strides(1) * 1], 11.0f);
}

TEST(Tensor, PaddedRowsAndStridedCopy) {
  Tensor t = Tensor::empty_padded({3, 5}, 8, DType::F32);
  EXPECT_EQ(t.view().strides(0), 8);
  EXPECT_EQ(t.alloc_bytes(), 3 * 8 * 4);
  fill_bytes(t, 0xff);
  Tensor src = Tensor::empty({3, 5}, DType::F32);
  for (int i = 0; i < 15; ++i) src.ptr<float>()[i] = float(i);
  copy(t, src);
  EXPECT_EQ(t.ptr<float>()[8 * 2 + 4], 14.0f);
  EXPECT_TRUE(std::isnan(t.ptr<float>()[5]));  // padding untouched
}

TEST(Tensor, ErrorsNameTheProblem) {
  Tensor t = Tensor::empty({2, 3}, DType::BF16);
  try {
    t.view().reshape({4, 2});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bf16[2, 3]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(t.view().select(0, 2), Error);
  EXPECT_THROW(TensorView(nullptr, DType::F32, {2, -1}), Error);
}

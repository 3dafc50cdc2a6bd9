// GPU tests skip, saying why, when the build has no CUDA backend or the machine has no GPU.
#pragma once
#include <gtest/gtest.h>

#include "bik/device.h"

#define BIK_REQUIRE_GPU()                                                                      \
  do {                                                                                         \
    if (!::bik::cuda_built()) GTEST_SKIP() << "no GPU: this build has no CUDA backend";        \
    if (::bik::cuda_device_count() == 0) GTEST_SKIP() << "no GPU: no CUDA device is present";  \
  } while (0)

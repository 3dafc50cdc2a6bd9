// Every CUDA runtime call is checked; the error names the call, the file and line.
#pragma once
#include <cuda_runtime.h>

#include "bik/error.h"

#define BIK_CUDA_CHECK(expr)                                                                       \
  do {                                                                                             \
    cudaError_t bik_err_ = (expr);                                                                 \
    if (bik_err_ != cudaSuccess)                                                                   \
      throw ::bik::Error(::bik::detail::concat("CUDA error in ", #expr, " at ", __FILE__, ":",      \
                                               __LINE__, ": ", cudaGetErrorString(bik_err_)));     \
  } while (0)

// After a kernel launch: catches bad configurations at once (not asynchronous faults).
#define BIK_CUDA_LAUNCH_CHECK() BIK_CUDA_CHECK(cudaGetLastError())

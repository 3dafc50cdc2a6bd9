// sum_partials on CUDA: one thread per output element walks the P partials in increasing index and
// folds them into the fixed adjacent-pairs tree with a small stack (a binary counter): after leaf j is
// pushed, the two top entries are combined while they cover equally many leaves. For a power-of-two P
// this performs exactly the additions ((p0 + p1) + (p2 + p3)) + ... of the CPU's level-by-level loop,
// so both backends give the same bits; which thread handles an element never matters.
#include "core/backend.h"
#include "cuda/device_info.h"
#include "cuda/rows.cuh"

namespace bik::cuda {
namespace {

constexpr int kMaxLevels = 32;  // P < 2^31

template <class To, class Tb>
__global__ void sum_partials_kernel(To* out, int64_t os0, int64_t os1, const float* part, int64_t ps0, int64_t ps1,
                                    int64_t ps2, int64_t p, int64_t m, int64_t n, const Tb* bias, int64_t bs) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  for (int64_t r = blockIdx.y; r < m; r += gridDim.y) {
    float stack[kMaxLevels];
    int64_t leaves[kMaxLevels];
    int top = 0;
    for (int64_t j = 0; j < p; ++j) {
      float v = part[j * ps0 + r * ps1 + i * ps2];
      int64_t count = 1;
      while (top > 0 && leaves[top - 1] == count) {
        v = __fadd_rn(stack[top - 1], v);
        count *= 2;
        --top;
      }
      stack[top] = v;
      leaves[top] = count;
      ++top;
    }
    float y = stack[0];
    if (bias) y = __fadd_rn(y, to_f32(bias[i * bs]));
    out[r * os0 + i * os1] = from_f32<To>(y);
  }
}

}  // namespace

void sum_partials(const TensorView& out, const TensorView& partials, const std::optional<TensorView>& bias, Stream s) {
  use_device(out.device.index);
  const int64_t p = partials.shape[0], m = partials.shape[1], n = partials.shape[2];
  const int threads = 128;
  const dim3 grid(unsigned((n + threads - 1) / threads), unsigned(m < 65535 ? m : 65535), 1);
  dispatch_float(out.dtype, [&](auto ot) {
    using To = decltype(ot);
    auto launch = [&](auto bt) {
      using Tb = decltype(bt);
      const Tb* b = bias ? bias->ptr<const Tb>() : nullptr;
      const int64_t bs = bias ? bias->stride[0] : 0;
      sum_partials_kernel<To, Tb><<<grid, threads, 0, stream_of(s)>>>(
          out.ptr<To>(), out.stride[0], out.stride[1], partials.ptr<const float>(), partials.stride[0],
          partials.stride[1], partials.stride[2], p, m, n, b, bs);
      BIK_CUDA_LAUNCH_CHECK();
    };
    if (!bias || bias->dtype == DType::F32) launch(float{});
    else launch(To{});
  });
}

}  // namespace bik::cuda

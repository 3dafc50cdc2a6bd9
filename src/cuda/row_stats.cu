// Row statistics of f32 logits (cuda/row_stats.h, row_stats.cuh): the kernels that compute them from
// logits in memory and fold them per row, and their host checks.
#include "cuda/row_stats.h"

#include <cuda_runtime.h>

#include "bik/error.h"
#include "cuda/check.cuh"
#include "cuda/row_stats.cuh"

namespace bik::cuda {
namespace row_stats {

// The same entries from logits in memory: one thread a (row, chunk), the four lanes in turn.
__global__ void row_chunk_stats_kernel(const float* x, int64_t ldx, int m_rows, int n_cols, float4* stats,
                                       int64_t ld) {
  const int chunks = (n_cols + kChunk - 1) / kChunk;
  const int64_t id = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (id >= int64_t(m_rows) * chunks) return;
  const int row = int(id / chunks), c0 = int(id % chunks) * kChunk;
  const float* xr = x + int64_t(row) * ldx;
  Best b{-INFINITY, INT_MAX};
  for (int t = 0; t < 4; ++t)
    for (int jj = 0; jj < 8; ++jj)
      for (int e = 0; e < 2; ++e) {
        const int col = c0 + 8 * jj + 2 * t + e;
        if (col < n_cols) offer(b, xr[col], col);
      }
  float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  if (b.v != -INFINITY)
    for (int t = 0; t < 4; ++t)
      for (int jj = 0; jj < 8; ++jj)
        for (int e = 0; e < 2; ++e) {
          const int col = c0 + 8 * jj + 2 * t + e;
          if (col < n_cols) s[t] = __fadd_rn(s[t], term(xr[col], b.v));
        }
  stats[int64_t(row) * ld + c0 / kChunk] =
      make_float4(b.v, __fadd_rn(__fadd_rn(s[0], s[1]), __fadd_rn(s[2], s[3])), __int_as_float(b.i), 0.0f);
}

// A warp a row: its first maximum's column and value, and S (the file's top).
__global__ void row_stats_fold_kernel(const float4* stats, int64_t ld, int m_rows, int chunks, int32_t* argmax,
                                      float* row_max, float* row_sum) {
  const int row = int((int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32), lane = threadIdx.x & 31;
  if (row >= m_rows) return;  // the whole warp
  const float4* sr = stats + int64_t(row) * ld;
  Best b{-INFINITY, INT_MAX};
  for (int c = lane; c < chunks; c += 32) {
    const float4 v = sr[c];
    offer(b, v.x, __float_as_int(v.z));
  }
  for (int off = 16; off >= 1; off >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, b.v, off);
    const int oi = __shfl_xor_sync(0xffffffffu, b.i, off);
    offer(b, ov, oi);
  }
  float s = 0.0f;
  if (b.v != -INFINITY)
    for (int c = lane; c < chunks; c += 32) {
      const float4 v = sr[c];
      s = __fadd_rn(s, __fmul_rn(v.y, term(v.x, b.v)));
    }
  for (int off = 16; off >= 1; off >>= 1) s = __fadd_rn(s, __shfl_xor_sync(0xffffffffu, s, off));
  if (lane == 0) {
    argmax[row] = b.i;
    row_max[row] = b.v;
    row_sum[row] = s;
  }
}

}  // namespace row_stats

namespace {

cudaStream_t stream_of(Stream s) { return static_cast<cudaStream_t>(s.handle); }

int64_t chunks_of(int64_t n) { return (n + row_stats::kChunk - 1) / row_stats::kChunk; }

void check_stats(const char* op, const TensorView& stats, int64_t m, int64_t n, Device dev) {
  BIK_CHECK(stats.dtype == DType::F32 && stats.ndim == 3 && stats.shape[0] == m && stats.shape[1] == chunks_of(n) &&
                stats.shape[2] == 4 && stats.is_contiguous(),
            op, ": stats must be contiguous f32[", m, ", ", chunks_of(n), ", 4] (64 columns a chunk), got ", stats.str());
  BIK_CHECK(stats.device == dev, op, ": stats must be on ", dev.str(), ", got ", stats.str());
  BIK_CHECK(reinterpret_cast<uintptr_t>(stats.data) % 16 == 0, op, ": stats must be 16-byte aligned");
}

}  // namespace

void row_chunk_stats(const TensorView& stats, const TensorView& logits, Stream s) {
  const char* op = "row_chunk_stats";
  BIK_CHECK(logits.device.is_cuda() && logits.dtype == DType::F32 && logits.ndim == 2 && logits.strides(1) == 1,
            op, ": logits must be f32[M, N] on a GPU with unit column stride, got ", logits.str());
  const int64_t m = logits.shape[0], n = logits.shape[1];
  BIK_CHECK(n < (int64_t(1) << 31) && m < (int64_t(1) << 31), op, ": ", logits.str(), " is too large");
  check_stats(op, stats, m, n, logits.device);
  const int64_t total = m * chunks_of(n);
  if (total == 0) return;
  constexpr int kThreads = 256;
  row_stats::row_chunk_stats_kernel<<<unsigned((total + kThreads - 1) / kThreads), kThreads, 0, stream_of(s)>>>(
      logits.ptr<const float>(), logits.strides(0), int(m), int(n), static_cast<float4*>(stats.data), chunks_of(n));
  BIK_CUDA_LAUNCH_CHECK();
}

void row_stats_fold(const TensorView& argmax, const TensorView& row_max, const TensorView& row_sum,
                    const TensorView& stats, Stream s) {
  const char* op = "row_stats_fold";
  BIK_CHECK(stats.device.is_cuda() && stats.dtype == DType::F32 && stats.ndim == 3 && stats.shape[2] == 4 &&
                stats.is_contiguous() && reinterpret_cast<uintptr_t>(stats.data) % 16 == 0,
            op, ": stats must be contiguous, 16-byte aligned f32[M, chunks, 4] on a GPU, got ", stats.str());
  const int64_t m = stats.shape[0], chunks = stats.shape[1];
  for (const TensorView* t : {&argmax, &row_max, &row_sum})
    BIK_CHECK(t->ndim == 1 && t->shape[0] == m && t->strides(0) == 1 && t->device == stats.device &&
                  t->dtype == (t == &argmax ? DType::I32 : DType::F32),
              op, ": argmax (i32), row_max and row_sum (f32) must be [", m, "] on ", stats.device.str(), ", got ",
              t->str());
  if (m == 0) return;
  constexpr int kThreads = 256;
  row_stats::row_stats_fold_kernel<<<unsigned((m * 32 + kThreads - 1) / kThreads), kThreads, 0, stream_of(s)>>>(
      static_cast<const float4*>(stats.data), chunks, int(m), int(chunks), argmax.ptr<int32_t>(),
      row_max.ptr<float>(), row_sum.ptr<float>());
  BIK_CUDA_LAUNCH_CHECK();
}

}  // namespace bik::cuda

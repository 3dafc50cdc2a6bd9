// cuBLASLt reference GEMM (see cublas_gemm.h).
//
// cuBLASLt is column-major. Row-major out [M, N] is column-major out^T [N, M], and
//   out^T = w * a^T,  w row-major [N, K] = column-major [K, N] used transposed,
//                     a row-major [M, K] = column-major [K, M] used as is,
// so the call is m = N, n = M, k = K with op(A) = T on w and op(B) = N on a. The bias then runs along
// the rows of the column-major result, which is what CUBLASLT_EPILOGUE_BIAS adds.
#include "cuda/cublas_gemm.h"

#include <cublasLt.h>

#include <map>
#include <mutex>
#include <tuple>

#include "cuda/check.cuh"

namespace bik::cuda {
namespace {

#define BIK_CUBLAS_CHECK(expr)                                                                      \
  do {                                                                                              \
    cublasStatus_t st_ = (expr);                                                                    \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                                               \
      throw ::bik::Error(::bik::detail::concat("cuBLASLt error ", int(st_), " in ", #expr));                 \
  } while (0)

constexpr size_t kWorkspaceBytes = size_t(32) << 20;

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::F32: return CUDA_R_32F;
    case DType::F16: return CUDA_R_16F;
    case DType::BF16: return CUDA_R_16BF;
    default: throw Error("cublaslt_gemm: float tensors only");
  }
}

// One prepared problem: descriptors and the heuristic's first algorithm. Preparing costs tens of
// microseconds of host time, so prepared problems are kept for the life of the process.
struct Prepared {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t lw = nullptr, la = nullptr, lo = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

struct PerDevice {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  std::map<std::tuple<int, int, int, int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                      int64_t, int64_t>,
           Prepared>
      prepared;
};

cublasLtMatrixLayout_t layout(cudaDataType_t t, int64_t rows, int64_t cols, int64_t ld, int batch, int64_t sb) {
  cublasLtMatrixLayout_t l = nullptr;
  BIK_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l, t, uint64_t(rows), uint64_t(cols), ld));
  if (batch > 1) {
    int32_t count = batch;
    BIK_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
    BIK_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &sb, sizeof(sb)));
  }
  return l;
}

}  // namespace

void cublaslt_gemm(const GemmArgs& g, Stream s) {
  BIK_CHECK(g.a.stride[2] == 1 && g.w.stride[2] == 1 && g.out.stride[2] == 1 && (!g.bias || g.bias->stride[0] == 1),
            "cublaslt_gemm: a and w need a contiguous K dimension, out and bias a contiguous N dimension");
  static std::mutex mu;
  static std::map<int, PerDevice> devices;
  const int dev = g.a.device.index;
  BIK_CUDA_CHECK(cudaSetDevice(dev));
  std::lock_guard<std::mutex> lock(mu);
  PerDevice& pd = devices[dev];
  if (pd.handle == nullptr) {
    BIK_CUBLAS_CHECK(cublasLtCreate(&pd.handle));
    // From the stream-ordered pool, like every tensor (src/cuda/memory.cu says why: plain cudaMalloc can
    // wait on a peer GPU whose all-gather waits for this rank).
    BIK_CUDA_CHECK(cudaMallocAsync(&pd.workspace, kWorkspaceBytes, nullptr));
  }
  const int batch = int(g.batch);
  // Leading dimensions of extent-1 dims are free; cuBLASLt still wants ld >= rows.
  const int64_t lda = g.m > 1 ? g.a.stride[1] : g.k, ldw = g.n > 1 ? g.w.stride[1] : g.k,
                ldo = g.m > 1 ? g.out.stride[1] : g.n;
  const int bias_code = g.bias ? 1 + int(g.bias->dtype) : 0;
  auto key = std::make_tuple(int(g.a.dtype), int(g.out.dtype), bias_code, batch, g.m, g.n, g.k, lda, ldw, ldo,
                             batch > 1 ? g.a.stride[0] : 0, batch > 1 ? g.w.stride[0] : 0,
                             batch > 1 ? g.out.stride[0] : 0, int64_t(0));
  auto it = pd.prepared.find(key);
  if (it == pd.prepared.end()) {
    Prepared pr;
    const cudaDataType_t in_t = cuda_type(g.a.dtype), out_t = cuda_type(g.out.dtype);
    BIK_CUBLAS_CHECK(cublasLtMatmulDescCreate(&pr.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t trans = CUBLAS_OP_T, no_trans = CUBLAS_OP_N;
    BIK_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(pr.op, CUBLASLT_MATMUL_DESC_TRANSA, &trans, sizeof(trans)));
    BIK_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(pr.op, CUBLASLT_MATMUL_DESC_TRANSB, &no_trans, sizeof(no_trans)));
    if (g.bias) {
      const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
      const cudaDataType_t bt = cuda_type(g.bias->dtype);
      BIK_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(pr.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
      BIK_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(pr.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)));
    }
    pr.lw = layout(in_t, g.k, g.n, ldw, batch, g.w.stride[0]);
    pr.la = layout(in_t, g.k, g.m, lda, batch, g.a.stride[0]);
    pr.lo = layout(out_t, g.n, g.m, ldo, batch, g.out.stride[0]);
    cublasLtMatmulPreference_t pref = nullptr;
    BIK_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const size_t ws = kWorkspaceBytes;
    BIK_CUBLAS_CHECK(
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    cublasLtMatmulHeuristicResult_t res{};
    int found = 0;
    BIK_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(pd.handle, pr.op, pr.lw, pr.la, pr.lo, pr.lo, pref, 1, &res, &found));
    cublasLtMatmulPreferenceDestroy(pref);
    BIK_CHECK(found > 0, "cublaslt_gemm: no cuBLASLt algorithm for this problem");
    pr.algo = res.algo;
    it = pd.prepared.emplace(key, pr).first;
  }
  Prepared& pr = it->second;
  if (g.bias) {
    const void* bp = g.bias->data;
    BIK_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(pr.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp, sizeof(bp)));
  }
  const float alpha = 1.f, beta = 0.f;
  BIK_CUBLAS_CHECK(cublasLtMatmul(pd.handle, pr.op, &alpha, g.w.data, pr.lw, g.a.data, pr.la, &beta, g.out.data, pr.lo,
                                  g.out.data, pr.lo, &pr.algo, pd.workspace, kWorkspaceBytes,
                                  static_cast<cudaStream_t>(s.handle)));
}

}  // namespace bik::cuda

// Does a GEMM kernel run slower when other kernels run between its launches (as in serving) than back to
// back (as in `bik bench gemm`), and which property of the kernel in between matters: its shared memory
// (a carveout change), its constants (the constant caches) or its code size (the instruction caches)?
// Each run captures 4 x 16 steps into a CUDA graph: a step is the q|k|v product of an 8B model
// (M x 4096 by 6144 x 4096, bf16, its own weights per step) after the kernel SEQ names:
//   gemm: nothing; tiny: a one-line kernel; tinysmem: the same with 200 KB of shared memory;
//   bigcode / bigcodesmem: 8192 straight-line FMAs (128 KB of code), without / with 200 KB of shared memory;
//   bigconst: 64 KB of constants read; norm: bik's rms_norm; oproj: the o-proj product (4096 x 4096).
// IMPL: bik (bik::mm) or cublas (cuBLASLt's default heuristic). It prints the graph's time per step; run it
// under bench/trace/ktrace.cpp for each kernel's own time.
// Build (after the CUDA build of libbik in build/):
//   nvcc -O2 -std=c++17 -Iinclude -Isrc -DBIK_WITH_CUDA=1 -gencode=arch=compute_90a,code=sm_90a \
//        -c bench/trace/mixexp.cu -o mixexp.o
//   g++ -o mixexp mixexp.o build/libbik.a -lopenblas -lpcre2-8 -lutf8proc -lcpp-httplib \
//       /usr/local/cuda/lib/libcudart_static.a /usr/local/cuda/lib/libcublasLt.so -ldl -lrt -lpthread
// usage: mixexp SEQ IMPL M
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bik/device.h"
#include "bik/ops.h"
#include "bik/tensor.h"
#include "core/backend.h"
#include "cuda/cublas_gemm.h"
#include "cuda/gemm.h"

using namespace bik;

__global__ void tiny_kernel(float* p) {
  if (threadIdx.x == 0) p[blockIdx.x] += 1.f;
}
__global__ void tiny_smem_kernel(float* p) {
  extern __shared__ float sm[];
  sm[threadIdx.x] = p[blockIdx.x];
  __syncthreads();
  if (threadIdx.x == 0) p[blockIdx.x] = sm[5] + 1.f;
}
#define F8(i) x = fmaf(x, 1.0001f + (i) * 1e-7f, (i) * 1e-3f);
#define F64(i) F8(i) F8(i + 1) F8(i + 2) F8(i + 3) F8(i + 4) F8(i + 5) F8(i + 6) F8(i + 7)
#define F512(i) F64(i) F64(i + 8) F64(i + 16) F64(i + 24) F64(i + 32) F64(i + 40) F64(i + 48) F64(i + 56)
#define F4096(i) F512(i) F512(i + 64) F512(i + 128) F512(i + 192) F512(i + 256) F512(i + 320) F512(i + 384) F512(i + 448)
// 8192 straight-line FFMAs: 128 KB of code, each instruction executed once per thread.
__global__ void bigcode_kernel(float* p) {
  float x = p[blockIdx.x];
  F4096(0) F4096(1) F4096(2) F4096(3) F4096(4) F4096(5) F4096(6) F4096(7) F4096(8) F4096(9) F4096(10) F4096(11) F4096(12) F4096(13) F4096(14) F4096(15)
  if (threadIdx.x == 0) p[blockIdx.x] = x;
}
__global__ void bigcode_smem_kernel(float* p) {
  extern __shared__ float sm[];
  float x = p[blockIdx.x];
  F4096(0) F4096(1) F4096(2) F4096(3) F4096(4) F4096(5) F4096(6) F4096(7) F4096(8) F4096(9) F4096(10) F4096(11) F4096(12) F4096(13) F4096(14) F4096(15)
  sm[threadIdx.x] = x;
  __syncthreads();
  if (threadIdx.x == 0) p[blockIdx.x] = sm[3];
}

// 64 KB of constants, one word read from every 64-byte line: evicts the constant caches, little code.
__constant__ float cbig[16384];
__global__ void bigconst_kernel(float* p) {
  float x = p[blockIdx.x];
#pragma unroll 64
  for (int i = 0; i < 16384; i += 16) x += cbig[i];
  if (threadIdx.x == 0) p[blockIdx.x] = x;
}

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: mixexp SEQ IMPL M\n");
    return 2;
  }
  const std::string seq = argv[1], impl = argv[2];
  const int64_t m = std::atoll(argv[3]);
  const Device gpu = Device::cuda(0);
  const int layers = 16;
  cudaStream_t st;
  cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
  std::vector<Tensor> wq, wo, xs;
  for (int i = 0; i < layers; ++i) {
    wq.push_back(Tensor::empty({6144, 4096}, DType::BF16, gpu));
    cuda::gemm_fill_uniform(wq.back(), 100 + i);
    wo.push_back(Tensor::empty({4096, 4096}, DType::BF16, gpu));
    cuda::gemm_fill_uniform(wo.back(), 200 + i);
    xs.push_back(Tensor::empty({m, 4096}, DType::BF16, gpu));
    cuda::gemm_fill_uniform(xs.back(), 300 + i);
  }
  const Tensor nw = Tensor::empty({4096}, DType::BF16, gpu);
  cuda::gemm_fill_uniform(nw, 7);
  const Tensor xn = Tensor::empty({m, 4096}, DType::BF16, gpu);
  const Tensor oq = Tensor::empty({m, 6144}, DType::BF16, gpu);
  const Tensor oo = Tensor::empty({m, 4096}, DType::BF16, gpu);
  float* scratch = nullptr;
  cudaMalloc(&scratch, 4096 * sizeof(float));
  cudaMemset(scratch, 0, 4096 * sizeof(float));
  const int smem = 200 * 1024;
  cudaFuncSetAttribute(tiny_smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  cudaFuncSetAttribute(bigcode_smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  const bool cublas = impl == "cublas";
  auto gemm = [&](const Tensor& out, const Tensor& a, const Tensor& w) {
    if (cublas)
      cuda::cublaslt_gemm(gemm_args_2d(out.view(), a.view(), w.view()), Stream{st});
    else
      mm(out.view(), a.view(), w.view(), Stream{st});
  };
  auto step = [&](int i) {
    if (seq == "tiny") tiny_kernel<<<132, 128, 0, st>>>(scratch);
    if (seq == "tinysmem") tiny_smem_kernel<<<132, 128, smem, st>>>(scratch);
    if (seq == "bigcode") bigcode_kernel<<<132, 128, 0, st>>>(scratch);
    if (seq == "bigcodesmem") bigcode_smem_kernel<<<132, 128, smem, st>>>(scratch);
    if (seq == "bigconst") bigconst_kernel<<<132, 128, 0, st>>>(scratch);
    if (seq == "norm") rms_norm(xn.view(), xs[i].view(), nw.view(), 1e-6f, std::nullopt, Stream{st});
    if (seq == "oproj") gemm(oo, xs[i], wo[i]);
    gemm(oq, xs[i], wq[i]);
  };
  for (int i = 0; i < layers; ++i) step(i);  // warm-up, outside the graph
  cudaStreamSynchronize(st);
  cudaGraph_t g;
  cudaGraphExec_t ex;
  cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal);
  for (int r = 0; r < 4; ++r)
    for (int i = 0; i < layers; ++i) step(i);
  cudaStreamEndCapture(st, &g);
  cudaGraphInstantiate(&ex, g, 0);
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  std::vector<float> ts;
  for (int rep = 0; rep < 30; ++rep) {
    cudaEventRecord(e0, st);
    cudaGraphLaunch(ex, st);
    cudaEventRecord(e1, st);
    cudaEventSynchronize(e1);
    float ms;
    cudaEventElapsedTime(&ms, e0, e1);
    ts.push_back(ms);
  }
  std::sort(ts.begin(), ts.end());
  const cudaError_t err = cudaGetLastError();
  std::printf("seq %-12s impl %-6s M %lld: graph %.1f us per step (%s)\n", seq.c_str(), impl.c_str(), (long long)m,
              ts[ts.size() / 2] * 1e3 / (4 * layers), cudaGetErrorString(err));
  return err == cudaSuccess ? 0 : 1;
}

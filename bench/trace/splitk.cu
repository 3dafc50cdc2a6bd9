// Row-parallel and decode-sized products outside serving: bik::mm against cuBLASLt's default heuristic,
// and (without arguments) the o-proj / down / q|k|v products as S = 2, 4, 8 fixed K-chunks in one batched
// launch (bmm into F32 partials [S, M, N]) plus the fixed-tree sum_partials: a split of K that depends on
// the shape alone, which the invariance contract allows. `splitk down` times only the down projection
// (4096 x 12288) at 128 <= M <= 256, for A/B runs of the GEMM rules' environment switches.
// Each time is a CUDA graph of 16 products with their own weights (first calls made outside the capture),
// median of 7 replays, in us a product.
// Build (after the CUDA build of libbik in build/):
//   nvcc -O2 -std=c++17 -Iinclude -Isrc -DBIK_WITH_CUDA=1 -gencode=arch=compute_90a,code=sm_90a \
//        -c bench/trace/splitk.cu -o splitk.o
//   g++ -o splitk splitk.o build/libbik.a -lopenblas -lpcre2-8 -lutf8proc -lcpp-httplib \
//       /usr/local/cuda/lib64/libcudart_static.a /usr/local/cuda/lib64/libcublasLt.so -ldl -lrt -lpthread
// usage: splitk [down | pieces]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "bik/device.h"
#include "bik/ops.h"
#include "bik/tensor.h"
#include "core/backend.h"
#include "cuda/cublas_gemm.h"
#include "cuda/gemm.h"

using namespace bik;

// us a layer: `step(i)` for the layers 0 .. layers-1 once outside a CUDA graph (first calls: workspaces,
// tensor maps), then captured in one graph, the median of 7 replays after 2.
template <class Step>
static double time_layers(cudaStream_t st, int layers, Step&& step) {
  for (int i = 0; i < layers; ++i) step(i);
  cudaStreamSynchronize(st);
  cudaGraph_t g;
  cudaGraphExec_t ge;
  cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal);
  for (int i = 0; i < layers; ++i) step(i);
  cudaStreamEndCapture(st, &g);
  cudaGraphInstantiate(&ge, g, 0);
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  std::vector<float> t;
  for (int r = 0; r < 9; ++r) {
    cudaEventRecord(e0, st);
    cudaGraphLaunch(ge, st);
    cudaEventRecord(e1, st);
    cudaEventSynchronize(e1);
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    if (r >= 2) t.push_back(ms);
  }
  std::sort(t.begin(), t.end());
  cudaGraphExecDestroy(ge);
  cudaGraphDestroy(g);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return double(t[t.size() / 2]) * 1000.0 / layers;
}

// `splitk pieces`: the down projection and o-proj as P = 2 fixed K pieces (one bmm into F32 partials, then
// sum_partials) with the bmm on the rule's tile and on each named tile, against mm and cuBLASLt; prints the
// bmm's configuration (whether its operands stay in place) and checks that every tile gives the bits of the
// rule's tile (one mismatch fails the run).
static int pieces_mode(cudaStream_t st, const Device& gpu, int layers) {
  std::printf("%-6s %5s %8s %8s %8s  %-28s | pieces on tile (us)\n", "shape", "M", "mm", "cublas", "split2",
              "bmm config");
  const std::vector<std::string> tiles = {"64x64", "64x128", "128x64", "128x128", "128x192", "128x256"};
  int bad = 0;
  struct Shape {
    const char* name;
    int64_t k, n;
  };
  for (Shape sh : {Shape{"down", 12288, 4096}, Shape{"o-proj", 4096, 4096}}) {
    std::vector<Tensor> ws;
    for (int i = 0; i < layers; ++i) {
      ws.push_back(Tensor::empty({sh.n, sh.k}, DType::BF16, gpu));
      cuda::gemm_fill_uniform(ws.back(), 100 + i);
    }
    for (int64_t m : {64, 100, 128, 160, 192, 224, 256, 320, 384, 512, 1024, 2048}) {
      Tensor x = Tensor::empty({m, sh.k}, DType::BF16, gpu);
      cuda::gemm_fill_uniform(x, 7);
      Tensor out = Tensor::empty({m, sh.n}, DType::BF16, gpu), ref = Tensor::empty({m, sh.n}, DType::BF16, gpu);
      const int64_t S = 2, kc = sh.k / S;
      Tensor part = Tensor::empty({S, m, sh.n}, DType::F32, gpu);
      auto args = [&](const TensorView& w) {
        GemmArgs g;
        g.a = TensorView(x.data(), DType::BF16, {S, m, kc}, {kc, sh.k, 1}, gpu);
        g.w = TensorView(w.data, DType::BF16, {S, sh.n, kc}, {kc, sh.k, 1}, gpu);
        g.out = part.view();
        g.batch = S, g.m = m, g.n = sh.n, g.k = kc;
        return g;
      };
      auto time = [&](auto&& step) { return time_layers(st, layers, step); };
      const double t_mm = time([&](int i) { mm(out.view(), x.view(), ws[size_t(i)].view(), Stream{st}); });
      const double t_cub = time(
          [&](int i) { cuda::cublaslt_gemm(gemm_args_2d(out.view(), x.view(), ws[size_t(i)].view()), Stream{st}); });
      const double t_s = time([&](int i) {
        bmm(part.view(), args(ws[size_t(i)].view()).a, args(ws[size_t(i)].view()).w, Stream{st});
        sum_partials(out.view(), part.view(), std::nullopt, Stream{st});
      });
      const std::string cfg = cuda::gemm_config_name(args(ws[0].view()));
      // the rule's bits for layer 0, then each tile's
      cuda::gemm_sm90(args(ws[0].view()), Stream{st});
      sum_partials(ref.view(), part.view(), std::nullopt, Stream{st});
      cudaStreamSynchronize(st);
      std::vector<uint16_t> want(size_t(m * sh.n)), got(size_t(m * sh.n));
      cudaMemcpy(want.data(), ref.data(), want.size() * 2, cudaMemcpyDeviceToHost);
      std::printf("%-6s %5lld %8.2f %8.2f %8.2f  %-28s |", sh.name, (long long)m, t_mm, t_cub, t_s, cfg.c_str());
      for (const std::string& tile : tiles) {
        const double tt = time([&](int i) {
          cuda::gemm_sm90_tile(args(ws[size_t(i)].view()), Stream{st}, tile);
          sum_partials(out.view(), part.view(), std::nullopt, Stream{st});
        });
        cuda::gemm_sm90_tile(args(ws[0].view()), Stream{st}, tile);
        sum_partials(out.view(), part.view(), std::nullopt, Stream{st});
        cudaStreamSynchronize(st);
        cudaMemcpy(got.data(), out.data(), got.size() * 2, cudaMemcpyDeviceToHost);
        const bool same = got == want;
        bad += same ? 0 : 1;
        std::printf(" %s %.2f%s", tile.c_str(), tt, same ? "" : " (BITS DIFFER)");
      }
      std::printf("\n");
      std::fflush(stdout);
    }
  }
  cudaError_t e = cudaDeviceSynchronize();
  std::printf("status: %s, %d tile(s) with other bits\n", cudaGetErrorString(e), bad);
  return e == cudaSuccess && bad == 0 ? 0 : 1;
}

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "pieces") {
    cudaStream_t st;
    cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
    return pieces_mode(st, Device::cuda(0), 16);
  }
  const bool only_down = argc > 1 && std::string(argv[1]) == "down";
  const Device gpu = Device::cuda(0);
  cudaStream_t st;
  cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
  const int layers = 16;
  struct Shape {
    const char* name;
    int64_t k, n;
  };
  std::printf("%-6s %5s %9s %9s %9s %9s %9s\n", "shape", "M", "mm", "cublas", "split2", "split4", "split8");
  for (Shape sh : {Shape{"down", 12288, 4096}, Shape{"o-proj", 4096, 4096}, Shape{"qkv", 4096, 6144}}) {
    if (only_down && std::string(sh.name) != "down") continue;
    std::vector<Tensor> ws;
    for (int i = 0; i < layers; ++i) {
      ws.push_back(Tensor::empty({sh.n, sh.k}, DType::BF16, gpu));
      cuda::gemm_fill_uniform(ws.back(), 100 + i);
    }
    const std::vector<int64_t> ms = only_down ? std::vector<int64_t>{128, 136, 160, 192, 200, 208, 216, 224, 240, 248, 256}
                                               : std::vector<int64_t>{1, 16, 64, 128, 200, 256, 320, 384, 512, 1024, 2048};
    for (int64_t m : ms) {
      Tensor x = Tensor::empty({m, sh.k}, DType::BF16, gpu);
      cuda::gemm_fill_uniform(x, 7);
      Tensor out = Tensor::empty({m, sh.n}, DType::BF16, gpu);
      Tensor part = Tensor::empty({8 * m * sh.n}, DType::F32, gpu);
      auto time = [&](auto&& step) { return time_layers(st, layers, step); };
      const double t_mm = time([&](int i) { mm(out.view(), x.view(), ws[size_t(i)].view(), Stream{st}); });
      const double t_cub =
          time([&](int i) { cuda::cublaslt_gemm(gemm_args_2d(out.view(), x.view(), ws[size_t(i)].view()), Stream{st}); });
      double t_s[3] = {0, 0, 0};
      for (int si = 0; si < (only_down ? 0 : 3); ++si) {
        const int64_t S = int64_t(2) << si, kc = sh.k / S;
        const TensorView pv(part.ptr<float>(), DType::F32, {S, m, sh.n}, gpu);
        t_s[si] = time([&](int i) {
          const TensorView w = ws[size_t(i)].view();
          const TensorView av(x.data(), DType::BF16, {S, m, kc}, {kc, sh.k, 1}, gpu);
          const TensorView wv(w.data, DType::BF16, {S, sh.n, kc}, {kc, sh.k, 1}, gpu);
          bmm(pv, av, wv, Stream{st});
          sum_partials(out.view(), pv, std::nullopt, Stream{st});
        });
      }
      std::printf("%-6s %5lld %9.2f %9.2f %9.2f %9.2f %9.2f\n", sh.name, (long long)m, t_mm, t_cub, t_s[0], t_s[1],
                  t_s[2]);
      std::fflush(stdout);
    }
  }
  cudaError_t e = cudaDeviceSynchronize();
  std::printf("status: %s\n", cudaGetErrorString(e));
  return e == cudaSuccess ? 0 : 1;
}

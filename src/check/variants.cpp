// Alternative GEMMs for the invariance harness: OpenBLAS (a fast library that makes no batch-invariance
// promise) and a split-K GEMM whose split count depends on M. Both are reference points, never used by
// the library's ops.
#include "check/variants.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "bik/error.h"

namespace bik::check {
namespace {

float load_any(const TensorView& t, int64_t off) {
  const char* p = static_cast<const char*>(t.data) + off * dtype_size(t.dtype);
  switch (t.dtype) {
    case DType::F16:
      return to_float(*reinterpret_cast<const f16*>(p));
    case DType::BF16:
      return to_float(*reinterpret_cast<const bf16*>(p));
    default:
      return *reinterpret_cast<const float*>(p);
  }
}
void store_any(const TensorView& t, int64_t off, float v) {
  char* p = static_cast<char*>(t.data) + off * dtype_size(t.dtype);
  switch (t.dtype) {
    case DType::F16:
      *reinterpret_cast<f16*>(p) = to_f16(v);
      break;
    case DType::BF16:
      *reinterpret_cast<bf16*>(p) = to_bf16(v);
      break;
    default:
      *reinterpret_cast<float*>(p) = v;
  }
}

void require_cpu(const GemmArgs& g, const char* name) {
  BIK_CHECK(g.a.device.is_cpu() && g.w.device.is_cpu() && g.out.device.is_cpu() && (!g.bias || g.bias->device.is_cpu()),
            "gemm variant '", name, "' runs on the CPU only, got a ", g.a.str(), ", w ", g.w.str(), ", out ",
            g.out.str());
}

// Copies rows x cols of a strided 2-D matrix (element (r, c) at base + r * rs + c * cs) into a dense F32
// row-major buffer; exact for every input dtype.
void widen(const TensorView& t, int64_t base, int64_t rows, int64_t cols, int64_t rs, int64_t cs, float* dst) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[r * cols + c] = load_any(t, base + r * rs + c * cs);
}

// Writes out[b] from a dense F32 [M, N] result: bias added once in F32, one rounding to out's dtype.
void write_out(const GemmArgs& g, int64_t b, const float* res) {
  for (int64_t m = 0; m < g.m; ++m)
    for (int64_t n = 0; n < g.n; ++n) {
      float v = res[m * g.n + n];
      if (g.bias) v += load_any(*g.bias, n * g.bias->stride[0]);
      store_any(g.out, b * g.out.stride[0] + m * g.out.stride[1] + n * g.out.stride[2], v);
    }
}

// OpenBLAS cblas_sgemm over K in `splits` contiguous pieces: the first into the result, each later one
// into a partial added to it. Widening to dense F32 also normalises any strides; it is exact, so the only
// rounding that differs from the contract is OpenBLAS's own order of summation (and the pieces').
void openblas_in_pieces(const GemmArgs& g, int64_t splits) {
  const int64_t piece = (g.k + splits - 1) / splits;
  std::vector<float> a(size_t(g.m * g.k)), w(size_t(g.n * g.k)), res(size_t(g.m * g.n));
  std::vector<float> part(splits > 1 ? res.size() : 0);
  for (int64_t b = 0; b < g.batch; ++b) {
    widen(g.a, b * g.a.stride[0], g.m, g.k, g.a.stride[1], g.a.stride[2], a.data());
    widen(g.w, b * g.w.stride[0], g.n, g.k, g.w.stride[1], g.w.stride[2], w.data());
    if (g.k == 0) std::fill(res.begin(), res.end(), 0.0f);
    for (int64_t s = 0; s * piece < g.k; ++s) {
      const int64_t k0 = s * piece, kn = std::min(g.k, k0 + piece) - k0;
      float* dst = s == 0 ? res.data() : part.data();
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(g.m), int(g.n), int(kn), 1.0f, a.data() + k0,
                  int(g.k), w.data() + k0, int(g.k), 0.0f, dst, int(g.n));
      if (s > 0)
        for (size_t i = 0; i < res.size(); ++i) res[i] += part[i];
    }
    write_out(g, b, res.data());
  }
}

}  // namespace

void openblas_gemm(const GemmArgs& g) {
  require_cpu(g, "openblas");
  openblas_in_pieces(g, 1);
}

void split_k_openblas_gemm(const GemmArgs& g) {
  require_cpu(g, "split-k openblas");
  openblas_in_pieces(g, std::max<int64_t>(1, std::min<int64_t>(g.k, g.m < 64 ? 4 : g.m < 256 ? 2 : 1)));
}

void split_k_by_m_gemm(const GemmArgs& g) {
  require_cpu(g, "splitk-by-m");
  // The deliberate flaw: the number of K partial sums depends on the batch size M.
  const int64_t splits = g.m < 64 ? 4 : 1;
  const int64_t piece = (g.k + splits - 1) / std::max<int64_t>(splits, 1);
  std::vector<float> res(size_t(g.m * g.n));
  for (int64_t b = 0; b < g.batch; ++b) {
    for (int64_t m = 0; m < g.m; ++m)
      for (int64_t n = 0; n < g.n; ++n) {
        const int64_t ao = b * g.a.stride[0] + m * g.a.stride[1];
        const int64_t wo = b * g.w.stride[0] + n * g.w.stride[1];
        float total = 0.0f;
        for (int64_t s = 0; s < splits; ++s) {
          float part = 0.0f;
          const int64_t k1 = std::min(g.k, (s + 1) * piece);
          for (int64_t k = s * piece; k < k1; ++k)
            part = std::fma(load_any(g.a, ao + k * g.a.stride[2]), load_any(g.w, wo + k * g.w.stride[2]), part);
          total += part;
        }
        res[size_t(m * g.n + n)] = total;
      }
    write_out(g, b, res.data());
  }
}

std::vector<GemmVariant> gemm_variants() {
  return {
      {"bik",
       [](const GemmArgs& g) {
         if (g.a.device.is_cuda())
           cuda::gemm(g, Stream{});
         else
           cpu::gemm(g, Stream{});
       },
       true},
      {"openblas", openblas_gemm, false},
      {"splitk-by-m", split_k_by_m_gemm, false},
  };
}

GemmVariant gemm_variant(const std::string& name) {
  std::string known;
  for (auto& v : gemm_variants()) {
    if (v.name == name) return v;
    known += (known.empty() ? "" : ", ") + v.name;
  }
  throw Error("unknown gemm variant '" + name + "'; known variants: " + known);
}

}  // namespace bik::check

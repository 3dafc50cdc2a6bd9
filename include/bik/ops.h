// The ops API. Every op writes into caller-allocated outputs and dispatches on the tensors' device.
// Every op obeys the invariance contract in docs/invariance.md: the bits of one output row never depend
// on how many other rows are in the call, where the row sits, what its neighbours hold, or the strides.
//
// Shape notation: M = rows (tokens), the batched dimension; the last dimension is the reduced one.
// Leading dimensions may be flattened: any tensor [..., n] is treated as rows of n elements.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "bik/tensor.h"

namespace bik {

// Read-only int32 values on the host: a pointer and a count (a std::span that the C++17 CUDA sources can
// include too). Made from a std::vector, or from a pointer and a size.
struct HostInts {
  HostInts() = default;
  HostInts(const int32_t* data, size_t size) : data_(data), size_(size) {}
  HostInts(const std::vector<int32_t>& v) : data_(v.data()), size_(v.size()) {}  // NOLINT: implicit on purpose
  const int32_t* data() const { return data_; }
  size_t size() const { return size_; }
  const int32_t& operator[](size_t i) const { return data_[i]; }
  const int32_t* begin() const { return data_; }
  const int32_t* end() const { return data_ + size_; }

 private:
  const int32_t* data_ = nullptr;
  size_t size_ = 0;
};

// A CUDA stream (cudaStream_t) as an opaque handle; nullptr is the default stream. Ignored on the CPU.
struct Stream {
  void* handle = nullptr;
};

// fill_bytes (bik/tensor.h) ordered on stream s: every byte of dst's span set to `byte`.
void fill_bytes(const TensorView& dst, uint8_t byte, Stream s);

// ---- matrix multiply ------------------------------------------------------------------------------
// Weight layout: b is [N, K] (the layout of a torch.nn.Linear weight, "out_features x in_features"), so
//   out[m, n] = sum_k a[m, k] * b[n, k]  (+ bias[n])
// Inputs a and b share one dtype (F32, F16, BF16); accumulation is always F32; out is the input dtype or
// F32; bias (optional, [N]) is the input dtype or F32 and is added once, after the full K sum.
// Any strides are accepted (a [K, N] matrix passes as its transpose view).
void mm(const TensorView& out, const TensorView& a, const TensorView& b, Stream s = {});
void addmm(const TensorView& out, const TensorView& bias, const TensorView& a, const TensorView& b,
           Stream s = {});
// Batched: a [B, M, K], b [B, N, K] (batch stride 0 shares one weight), out [B, M, N].
void bmm(const TensorView& out, const TensorView& a, const TensorView& b, Stream s = {});
// A gated MLP's first half in one call: out = silu_and_mul(mm(a, b)) bit for bit, where b = [gate rows;
// up rows] is [2d, K] (the stacked gate|up weight), a [M, K], out [M, d] in a's dtype (F32, F16, BF16):
// each product is rounded to a's dtype before silu(gate) * up, as the two calls round it. On sm_90 (F16 /
// BF16) one GEMM kernel computes a tile's gate and up columns together and applies the activation in its
// epilogue, so the [M, 2d] product never reaches memory (BIK_GEMM_GLU=0: the two calls there too);
// elsewhere it is the two calls, through scratch memory.
void mm_silu_and_mul(const TensorView& out, const TensorView& a, const TensorView& b, Stream s = {});

// ---- fixed-order sum of partial results (tensor parallelism) --------------------------------------------
// out[m, n] = round(tree(partials[0, m, n], ..., partials[P-1, m, n]) (+ bias[n])), in F32, where P is a
// power of two and the tree adds adjacent pairs level by level:
//   P = 8: ((p0 + p1) + (p2 + p3)) + ((p4 + p5) + (p6 + p7)).
// A subtree over partials [j * 2^l, (j + 1) * 2^l) therefore has the same value wherever it is computed,
// which is what lets K ranks each sum their own leaves and then sum the K results (docs/engine.md,
// "Tensor parallelism"). P = 1 copies (and rounds). partials: F32 [P, M, N], any strides; out: [M, N],
// F32, F16 or BF16; bias (optional): [N], F32 or out's dtype, added once after the whole tree.
void sum_partials(const TensorView& out, const TensorView& partials,
                  const std::optional<TensorView>& bias = std::nullopt, Stream s = {});

// ---- normalisation ----------------------------------------------------------------------------------
// out = x * rsqrt(mean(x^2) + eps) * weight, computed in F32, rounded once to out's dtype.
// x, out: [..., n] (same shape); weight: [n], x's dtype or F32.
// With `residual` ([..., n], x's dtype): first residual := round(x + residual), then out = norm(residual).
// This is the fused "add & norm" of a transformer block; the updated residual is written in place.
void rms_norm(const TensorView& out, const TensorView& x, const TensorView& weight, float eps,
              const std::optional<TensorView>& residual = std::nullopt, Stream s = {});
// out = (x - mean) * rsqrt(var + eps) * weight + bias (biased variance, two passes in F32).
// weight and bias are optional ([n]).
void layer_norm(const TensorView& out, const TensorView& x, const std::optional<TensorView>& weight,
                const std::optional<TensorView>& bias, float eps, Stream s = {});
// layer_norm that also writes, per row, the mean and rstd = 1 / sqrt(var + eps) it normalised with (what
// torch's native_layer_norm returns for its backward), from the same pass over the row.
// mean, rstd: F32, x's shape with the last dim 1 (any strides).
void layer_norm_with_stats(const TensorView& out, const TensorView& mean, const TensorView& rstd, const TensorView& x,
                           const std::optional<TensorView>& weight, const std::optional<TensorView>& bias, float eps,
                           Stream s = {});

// ---- softmax ----------------------------------------------------------------------------------------
// Over the last dim. out has x's shape and x's dtype or F32 (F16/BF16 -> F32 is torch's half_to_float).
void softmax(const TensorView& out, const TensorView& x, Stream s = {});
void log_softmax(const TensorView& out, const TensorView& x, Stream s = {});

// ---- reductions -------------------------------------------------------------------------------------
// Sum / mean over `dims` (any subset, negative allowed; empty = all). out's shape is x's shape with the
// reduced dims removed (or kept as 1 when keepdim). out dtype: x's dtype or F32. Accumulates in F32.
void sum(const TensorView& out, const TensorView& x, const std::vector<int>& dims, bool keepdim = false,
         Stream s = {});
void mean(const TensorView& out, const TensorView& x, const std::vector<int>& dims, bool keepdim = false,
          Stream s = {});
// Index of the largest value of each row of x [..., n]; ties and NaNs resolve to the first index.
// out: I32 with x's leading shape.
void argmax(const TensorView& out, const TensorView& x, Stream s = {});

// ---- elementwise and gathers ------------------------------------------------------------------------
// x: [..., 2d] = [gate | up]; out: [..., d] = silu(gate) * up, in F32, rounded once.
void silu_and_mul(const TensorView& out, const TensorView& x, Stream s = {});
// Rotary position embedding, in place on q [T, Hq, D] and k [T, Hk, D] (k may be empty).
// positions: I32 [T]; cos_sin: F32 [P, rot_dim] holding cos in the first rot_dim/2 columns and sin in
// the rest; rot_dim <= D is the number of leading dims rotated. neox = true rotates pairs (i, i + rot/2)
// (GPT-NeoX / Llama in HF), false rotates interleaved pairs (2i, 2i + 1) (GPT-J).
void rotary_embedding(const TensorView& q, const TensorView& k, const TensorView& positions,
                      const TensorView& cos_sin, bool neox, Stream s = {});
// Builds the cos_sin table above for positions [0, max_pos) and base theta (F32 computed via F64).
Tensor rope_cos_sin_table(int64_t max_pos, int64_t rot_dim, double theta, Device device = Device::cpu());
// out [T, D] = table[ids[t], :]; ids: I32 [T]; an id outside [0, V) is an error naming the position.
void embedding(const TensorView& out, const TensorView& ids, const TensorView& table, Stream s = {});
// The same with ids' values given on the host (equal to the tensor's; the caller's promise): they are
// checked there, so on CUDA the call does not wait for the device to report a bad id (no synchronisation).
void embedding(const TensorView& out, const TensorView& ids, const TensorView& table,
               HostInts host_ids, Stream s = {});

}  // namespace bik

// Shared by the extension's two files: the op list, counters, the loud fallback and tensor conversion.
#pragma once
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>

#include "bik/ops.h"

namespace bik::torch_ext {

// Every aten op the extension registers, in the order of kOpNames.
enum class Op : int {
  mm, addmm, bmm, baddbmm, softmax, log_softmax, mean_dim, sum_dim, rms_norm, native_layer_norm, sdpa,
  sdpa_paged, count
};
// sdpa_paged is not an aten op: it counts the scaled_dot_product_attention calls that took the paged
// attention kernel (a subset of "scaled_dot_product_attention").
inline constexpr const char* kOpNames[] = {
    "mm", "addmm", "bmm", "baddbmm", "_softmax", "_log_softmax", "mean.dim", "sum.dim_IntList",
    "rms_norm", "native_layer_norm", "scaled_dot_product_attention", "scaled_dot_product_attention[paged]"};

// Counts calls that ran on bik kernels and calls that went to the stock kernel.
void count_bik(Op op);
void count_stock(Op op);
// The loud fallback: warns once per op (a Python UserWarning) that the stock, batch-variant kernel ran.
void warn_fallback(Op op, const std::string& why);

// Registers the extension's kernels on `lib` (a torch::Library of kind IMPL for "aten" at CPU or CUDA).
void register_cpu(torch::Library& lib);
#ifdef BIK_TORCH_CUDA
void register_cuda(torch::Library& lib);
#endif

}  // namespace bik::torch_ext

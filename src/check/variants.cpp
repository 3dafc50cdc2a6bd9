// PLACEHOLDER: replaced by the real implementation.
#include "core/backend.h"
#include "check/variants.h"
namespace bik::check { void openblas_gemm(const GemmArgs&) { throw Error("todo"); } void split_k_by_m_gemm(const GemmArgs&) { throw Error("todo"); }
std::vector<GemmVariant> gemm_variants() { return {}; } GemmVariant gemm_variant(const std::string&) { throw Error("todo"); } }

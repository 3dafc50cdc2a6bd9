// PLACEHOLDER: replaced by the real implementation.
#include "core/backend.h"
namespace bik::cpu { void gemm(const GemmArgs&, Stream) { throw Error("todo"); } }

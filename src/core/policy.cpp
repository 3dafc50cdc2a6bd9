#include "core/policy.h"

#include <sstream>

#include "bik/error.h"

namespace bik::policy {

RowReducePlan row_reduce_plan(Target t, DType dtype, int64_t n) {
  // CPU: 16 lanes map onto one AVX-512 register or two AVX2 registers; the plan is the same for both,
  // so the ISA a machine happens to have never changes the bits.
  if (t.backend == Backend::CPU) return RowReducePlan{16};
  // CUDA (src/cuda/rows.cuh): one CTA per row. A thread holds V = 16 bytes / element size consecutive
  // lanes, so its elements of one pass over the row arrive as one 16-byte load; the CTA has the power
  // of two in [32, 1024] threads that gives each thread about two such chunks of the row. Lanes =
  // threads * V: a function of (dtype, n) alone, the same on every architecture. The kernels may run
  // these lanes on fewer threads (a thread holding several lane groups: rows.cuh, RowGroup); the lanes,
  // each lane's order and the tree over them stay exactly these.
  const int64_t v = 16 / dtype_size(dtype);
  const int64_t want = (n + 2 * v - 1) / (2 * v);
  int64_t threads = 32;
  while (threads < want && threads < 1024) threads *= 2;
  return RowReducePlan{int(threads * v)};
}

GemmPlan gemm_plan(Target t, DType dtype, int64_t, int64_t k) {
  if (t.backend == Backend::CPU) {
    // One F32 FMA chain over all of K per output: tiling in M and N never touches the order.
    return GemmPlan{1, k, Mma::FmaChain, 1};
  }
  // CUDA (src/cuda/gemm*.cu). F32 inputs: one F32 FMA chain per output in a SIMT kernel (no TF32).
  // F16/BF16: K is never split; each output is one F32 accumulator fed by the tensor-core MMA in K steps
  // of 16 from k = 0 (tail zero-filled). The MMA family is fixed per architecture for every M: wgmma on
  // sm_90 (the library ships sm_90a code), mma.sync m16n8k16 on sm_80..sm_89.
  if (dtype == DType::F32) return GemmPlan{1, k, Mma::FmaChain, 1};
  return GemmPlan{1, k, t.arch == 90 ? Mma::WgmmaSm90 : Mma::MmaSyncSm80, 16};
}

SplitGrid make_split_grid(int64_t len, int64_t long_from, int64_t long_len) {
  const SplitGrid uniform = uniform_split_grid(len);  // checks len
  if (long_from == SplitGrid::kNoLong) return uniform;
  BIK_CHECK(long_len > 0 && long_len < (int64_t(1) << 30) && long_len % len == 0,
            "attention split grid: long split length ", long_len, " is not a positive multiple of the split length ",
            len);
  BIK_CHECK(long_from > 0 && long_from < (int64_t(1) << 30) && long_from % long_len == 0,
            "attention split grid: the long splits' start ", long_from, " is not a positive multiple of their length ",
            long_len);
  return split_grid_unchecked(int(len), int(long_from), int(long_len));
}

SplitGrid uniform_split_grid(int64_t len) {
  BIK_CHECK(len > 0 && len < (int64_t(1) << 30), "attention split grid: split length ", len, " is out of range");
  return split_grid_unchecked(int(len), SplitGrid::kNoLong, int(len));
}

AttentionPlan attention_plan(Target t, DType, int64_t) {
  // 256-key splits up to position 8192: enough independent pieces for a single decode to fill a GPU (an
  // 8192-token context = 32 splits per KV head), and short enough that the split partials cost ~1% of the
  // KV bytes read. From 8192 on, 1024-key splits: a long context has splits to spare (32k keys = 32 + 24
  // splits per KV head), and every split costs a long prefill a fold (on an H200 1024-key splits took
  // prefill 1 x 32768 from 18680 to 18311 us while making decodes of 8192 keys or fewer slower:
  // logs_h200/85cdca7_attention_splitlen_ab.log).
  // 64-key tiles: one tile of K and V (64 x 128 halves each) fills a pipeline stage of the CUDA kernel.
  const SplitGrid splits = make_split_grid(256, 8192, 1024);
  if (t.backend == Backend::CPU) return AttentionPlan{splits, 64, Mma::FmaChain};
  return AttentionPlan{splits, 64, Mma::MmaSyncSm80};
}

std::string describe(const AttentionPlan& p) {
  const char* mma = p.mma == Mma::FmaChain ? "fma-chain" : p.mma == Mma::MmaSyncSm80 ? "mma.sync" : "wgmma";
  const SplitGrid& g = p.splits;
  std::string splits = "split_len=" + std::to_string(g.len);
  if (g.long_from != SplitGrid::kNoLong)
    splits += " long_split_len=" + std::to_string(g.long_len) + " from " + std::to_string(g.long_from);
  return splits + " key_tile=" + std::to_string(p.key_tile) + " mma=" + mma;
}

std::string describe(const GemmPlan& p) {
  std::ostringstream os;
  const char* mma = p.mma == Mma::FmaChain ? "fma-chain" : p.mma == Mma::MmaSyncSm80 ? "mma.sync" : "wgmma";
  os << "k_splits=" << p.k_splits << " k_split_len=" << p.k_split_len << " mma=" << mma << " mma_k=" << p.mma_k;
  return os.str();
}
std::string describe(const RowReducePlan& p) { return "lanes=" + std::to_string(p.lanes); }

}  // namespace bik::policy

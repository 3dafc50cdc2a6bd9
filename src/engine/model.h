// The Llama-family forward pass (Llama, SmolLM2, Qwen2 with q/k/v bias, Qwen3 with per-head q/k norms)
// on the ops API, so the same code runs on the CPU backend and on CUDA.
//
// Activations and weights are BF16; every op accumulates in F32 inside; the logits are F32 (the lm_head
// GEMM writes F32). One forward takes a ragged batch of rows (tokens) from any number of sequences,
// prefill chunks and decodes mixed, and returns the logits of only the rows that need them.
//
// With batch_invariant = false the linear layers go through a GEMM whose summation order changes with
// the number of rows (OpenBLAS with split-K by the row count on the CPU, check::split_k_openblas_gemm;
// cuBLASLt's default heuristic on CUDA). This is a negative
// control: it shows that the engine's determinism comes from the kernels, not from luck.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bik/attention.h"
#include "bik/graph.h"
#include "bik/tensor.h"
#include "engine/kv_cache.h"
#include "engine/model_config.h"

namespace bik::engine {

// Host-side description of one forward. Rows of a sequence are contiguous and in position order.
struct StepBatch {
  std::vector<int32_t> token_ids;        // [T]
  std::vector<int32_t> positions;        // [T] absolute positions
  std::vector<int32_t> slot_mapping;     // [T] block * block_size + offset in the KV cache
  std::vector<int32_t> query_start_loc;  // [S + 1]
  std::vector<int32_t> seq_lens;         // [S] context length after this step
  std::vector<std::vector<int32_t>> block_tables;  // [S][blocks]
  std::vector<int32_t> logit_rows;       // rows whose logits are returned, in this order
};

// A decode step (one token per sequence, every row's logits) padded to `seqs` sequences, as a CUDA graph
// bucket runs it: each added sequence has token 0 at position 0, slot -1 (writes no KV), a context of one
// token read from block 0, and its own logit row after the step's.
StepBatch pad_decode_step(const StepBatch& b, int64_t seqs);

// The rotary cos/sin table ([max_pos, head_dim], F32, CPU) for the config's theta and scaling; GGUF
// rope_freqs factors (when given) divide the frequencies.
Tensor rotary_table(const ModelConfig& c, int64_t max_pos, const std::vector<double>& freq_factors = {});

// What the engine needs of a model: sizes, a paged KV cache of the right shape, and the forward.
// LlamaModel is one; TpModel (engine/tp_model.h) runs K tensor-parallel shards of one.
class ModelRunner {
 public:
  virtual ~ModelRunner() = default;
  virtual const ModelConfig& config() const = 0;
  virtual Device device() const = 0;  // where forward() returns the logits
  virtual int64_t vocab_size() const = 0;
  virtual int64_t num_layers() const = 0;
  virtual int64_t kv_heads() const = 0;  // of the whole model (all shards together)
  virtual int64_t head_dim() const = 0;
  virtual int64_t max_positions() const = 0;
  virtual KvCache make_cache(int64_t num_blocks, int64_t block_size) const = 0;
  virtual Tensor forward(const StepBatch& batch, KvCache& cache) const = 0;
  // Off: the linear layers take a batch-variant library GEMM (the negative control, see above).
  virtual bool batch_invariant() const = 0;
  virtual void set_batch_invariant(bool on) = 0;
  // CUDA graphs for decode steps (LlamaModel says which steps); a model that has none refuses `on`.
  virtual void set_cuda_graphs(bool on) {
    BIK_CHECK(!on, "model: CUDA graphs are not available for this model (one CUDA model without --tp)");
  }
  virtual bool cuda_graphs() const { return false; }
};

class TpComm;

// Tensor parallelism of one LlamaModel shard (docs/engine.md, "Tensor parallelism"). The rank holds
// q/k/v heads [rank * heads / size, ...), the same slice of the kv heads, the same slice of the MLP's
// intermediate size (column-parallel q/k/v and gate/up), the matching K columns of o and down
// (row-parallel), and replicated embedding, norms and lm_head.
//
// `chunks` splits the K of the row-parallel layers (o, down) into equal chunks summed by the fixed
// adjacent-pairs tree of bik::sum_partials; the rank holds chunks [rank * chunks / size, ...), sums its
// subtree, all-gathers the subtree results and every rank finishes the tree in the same order. So with
// the same `chunks`, any size gives the same bits. chunks = 0 or 1 with size 1 is the plain single-chain
// GEMM (the default, unchanged); chunks = 0 or 1 with size > 1 is the naive row-parallel reduction (one
// chain per rank over its K slice, then the ranks' partials added), which is NOT invariant across sizes.
struct TpConfig {
  int rank = 0, size = 1;
  int chunks = 0;          // 0/1, or a power of two that is a multiple of size
  TpComm* comm = nullptr;  // needed when size > 1
};

class LlamaModel : public ModelRunner {
 public:
  // Takes the weights it needs (converted to BF16, norms and biases to F32) onto `device`; with `tp`,
  // only the rank's slices of the sharded weights. q, k and v are stacked into one weight and run as one
  // GEMM, and so are gate and up (docs/engine.md, "Fused projections"); the bits are those of separate
  // GEMMs. fuse_projections = false keeps them apart: the reference that the tests compare with.
  LlamaModel(const ModelConfig& config, const Weights& weights, Device device, bool batch_invariant = true,
             const TpConfig& tp = {}, bool fuse_projections = true);
  ~LlamaModel() override;

  const ModelConfig& config() const override { return cfg_; }
  Device device() const override { return device_; }
  bool batch_invariant() const override { return batch_invariant_; }
  void set_batch_invariant(bool on) override;
  int64_t vocab_size() const override { return vocab_; }
  int64_t num_layers() const override { return int64_t(layers_.size()); }
  int64_t kv_heads() const override { return kv_heads_; }  // a shard's own kv heads under tensor parallelism
  int64_t head_dim() const override { return head_dim_; }
  int64_t max_positions() const override { return cos_sin_.size(0); }
  const TpConfig& tp() const { return tp_; }

  KvCache make_cache(int64_t num_blocks, int64_t block_size) const override;

  // Logits F32 [batch.logit_rows.size(), vocab] on the model's device. Not reentrant: the activations
  // live in scratch buffers the model keeps between calls (one forward at a time per model). A
  // tensor-parallel shard of rank > 0 returns an empty tensor (rank 0 computes the logits); all ranks
  // must run the same step together. A step run as a CUDA graph returns a view of a buffer the next
  // graph step overwrites (valid until the next forward).
  Tensor forward(const StepBatch& batch, KvCache& cache) const override;

  // An observation hook for debugging (bik bisect): when set, forward() calls it after each op with the
  // op's name, its layer (-1 outside the layers) and its output, a view on the model's device that is only
  // valid during the call. Row i of the view is row i of the step, except for "lm_head", whose rows are
  // the step's logit_rows in order; "q_proj", "k_proj" and "v_proj" are column views of the fused q|k|v
  // output (row stride (heads + 2 kv_heads) * head_dim; contiguous in a layer run apart), "gate_proj" and
  // "up_proj" the two halves of each gate|up row. Names in forward order: "embedding"; per layer "input_residual",
  // "input_norm", "q_proj", "k_proj", "v_proj", ["q_norm", "k_norm"], "rotary_q", "rotary_k", "attention",
  // "o_proj", "post_attn_residual", "post_attn_norm", "gate_proj", "up_proj", "silu_and_mul",
  // "down_proj"; then "final_residual", "final_norm", "lm_head". Unset by default; it never changes the
  // math, and an unset hook costs one branch per op.
  using Tap = std::function<void(const char* name, int64_t layer, const TensorView& out)>;
  void set_tap(Tap tap) { tap_ = std::move(tap); }

  // CUDA graphs for decode steps (docs/engine.md, "CUDA graphs"). A step in which every sequence brings
  // one token and wants its logits runs as a recorded graph: one per bucket of sequences (1, 2, 4, ...,
  // kMaxGraphSeqs; the rows past the step's own are padding that writes no KV), of block-table width (a
  // power of two of blocks) and KV cache, with the attention launch planned for the longest context that
  // width holds. A bucket's first step runs the ops on the
  // stream and records them; later steps replay the recording. The bits are those without graphs: every
  // op is batch-invariant, and padding rows are rows like any other. Other steps (prefill, more
  // sequences, a tap set, tensor parallelism) run op by op. CUDA only; off by default.
  static constexpr int64_t kMaxGraphSeqs = 256;
  void set_cuda_graphs(bool on) override;
  bool cuda_graphs() const override { return graphs_on_; }
  int64_t graph_replays() const { return graph_replays_; }  // decode steps served by a replay
  int64_t graphs_recorded() const { return int64_t(graphs_.size()); }

 private:
  struct Linear {
    Tensor w;                   // [N, K] BF16
    std::optional<Tensor> bias;  // [N] F32
  };
  struct Layer {
    Tensor input_norm, post_attn_norm;    // [H] F32
    std::optional<Tensor> q_norm, k_norm;  // [head_dim] F32 (Qwen3)
    // Fused: qkv = [q rows; k rows; v rows] and gate_up = [gate rows; up rows] (the rank's rows of each),
    // and q, k, v, gate, up stay empty. Apart (fuse_projections off, or biases on only some of q, k, v):
    // the reverse.
    bool qkv_fused = false, gate_up_fused = false;
    Linear qkv, gate_up;
    Linear q, k, v, gate, up;
    Linear o, down;
  };
  void linear(const TensorView& out, const TensorView& x, const Linear& w, Stream s) const;
  void gemm(const TensorView& out, const TensorView& x, const TensorView& w, const TensorView* bias, Stream s) const;
  // o and down: the K-chunk tree and the cross-rank sum when tensor parallelism or chunks are on, else linear().
  void row_parallel(const TensorView& out, const TensorView& x, const Linear& w, Stream s) const;

  // A step's metadata on the device: views into one I32 buffer.
  struct StepViews {
    TensorView ids, pos, slots, qsl, lens, bt, rows;
  };
  // The ops of one step on stream s: activations in `scratch` (BF16, at least scratch_elems(T, R)),
  // logits (rank 0) into `logits` [R, vocab] F32; `attn` plans the attention launch.
  void run_step(const StepBatch& b, KvCache& cache, const StepViews& m, const AttentionHostMetadata& attn,
                bf16* scratch, const TensorView& logits, Stream s) const;
  std::vector<Shape> scratch_shapes(int64_t T, int64_t R) const;  // the activation views, in run_step's order
  int64_t scratch_elems(int64_t T, int64_t R) const;
  bool graphable(const StepBatch& b) const;
  Tensor forward_graph(const StepBatch& b, KvCache& cache) const;

  ModelConfig cfg_;
  Device device_;
  bool batch_invariant_;
  int64_t hidden_, inter_, heads_, kv_heads_, head_dim_, vocab_;
  float eps_;
  Tensor embed_;            // [V, H] BF16
  Tensor final_norm_;       // [H] F32
  Linear lm_head_;          // the embedding when tied
  Tensor cos_sin_;          // rotary table, F32 [max_pos, head_dim]
  bool neox_ = true;
  std::vector<Layer> layers_;
  mutable Tensor scratch_;     // BF16 activations of a step, reused
  mutable Tensor meta_store_;  // I32 step metadata, reused
  mutable Tensor partial_store_;  // F32 partial sums of the row-parallel layers, reused
  TpConfig tp_;
  Tap tap_;                    // see set_tap

  struct DecodeGraph;
  mutable bool graphs_on_ = false;  // cleared when a recording fails
  mutable std::vector<std::unique_ptr<DecodeGraph>> graphs_;
  mutable std::unique_ptr<CudaStream> graph_stream_;
  mutable Tensor graph_scratch_;  // activations of every graph (they run one at a time)
  mutable Tensor graph_logits_;   // [kMaxGraphSeqs, vocab] F32: the logits of every graph
  mutable int64_t graph_replays_ = 0;
};

}  // namespace bik::engine

// TpModel: a Llama-family model split over K tensor-parallel ranks (docs/engine.md, "Tensor
// parallelism"). It owns the K shards (LlamaModel with a TpConfig, each holding only its slices of the
// weights) and their communicators; one forward runs the K shards' forwards in parallel threads on the
// same StepBatch, each on its own slice of the KV cache, and returns rank 0's logits.
#pragma once
#include <memory>
#include <vector>

#include "engine/model.h"
#include "engine/tp.h"

namespace bik::engine {

enum class TpTransport {
  Auto,     // threads on the CPU, NCCL (one GPU per rank) on CUDA
  Threads,  // ranks as threads sharing `device` (also how one GPU emulates K ranks)
  Nccl,
};

struct TpOptions {
  int size = 1;     // 1, 2, 4 or 8
  int chunks = 8;   // K-chunks of o and down (TpConfig::chunks); 0 = naive row-parallel sums
  TpTransport transport = TpTransport::Auto;
  bool fuse_projections = true;  // each shard stacks its q/k/v and gate/up rows (LlamaModel's constructor)
};

// The K-chunk count that makes every TP size up to 8 give the same bits.
constexpr int kTpInvariantChunks = 8;

class TpModel : public ModelRunner {
 public:
  // `device` is rank 0's device (CPU, or cuda:0 with NCCL; with Threads every rank uses it).
  TpModel(const ModelConfig& config, const Weights& weights, Device device, const TpOptions& options,
          bool batch_invariant = true);
  ~TpModel() override;

  const ModelConfig& config() const override { return shards_[0]->config(); }
  Device device() const override { return shards_[0]->device(); }
  int64_t vocab_size() const override { return shards_[0]->vocab_size(); }
  int64_t num_layers() const override { return shards_[0]->num_layers(); }
  int64_t kv_heads() const override { return shards_[0]->kv_heads() * size(); }
  int64_t head_dim() const override { return shards_[0]->head_dim(); }
  int64_t max_positions() const override { return shards_[0]->max_positions(); }
  int size() const { return int(shards_.size()); }
  int chunks() const { return options_.chunks; }
  const LlamaModel& shard(int rank) const { return *shards_[size_t(rank)]; }
  LlamaModel& shard(int rank) { return *shards_[size_t(rank)]; }  // e.g. to set a tap on rank 0
  bool batch_invariant() const override { return shards_[0]->batch_invariant(); }
  void set_batch_invariant(bool on) override {
    for (auto& s : shards_) s->set_batch_invariant(on);
  }

  // One KvCache holding every shard's layers: shard r's are k[r * layers, (r + 1) * layers) (same for v).
  KvCache make_cache(int64_t num_blocks, int64_t block_size) const override;
  Tensor forward(const StepBatch& batch, KvCache& cache) const override;

 private:
  TpOptions options_;
  std::vector<std::unique_ptr<TpComm>> comms_;
  std::vector<std::unique_ptr<LlamaModel>> shards_;
};

// Checks a --tp value (1, 2, 4 or 8) against the model's heads, kv heads and intermediate size; the
// message starts with `command`.
void check_tp_size(int size, const ModelConfig& config, const std::string& command);

}  // namespace bik::engine

#include "engine/tp_model.h"

#include <atomic>
#include <exception>
#include <thread>

#include "bik/error.h"

namespace bik::engine {

void check_tp_size(int size, const ModelConfig& c, const std::string& command) {
  BIK_CHECK(size == 1 || size == 2 || size == 4 || size == 8, command, ": --tp must be 1, 2, 4 or 8, got ", size);
  BIK_CHECK(c.heads % size == 0 && c.kv_heads % size == 0, command, ": --tp ", size, " must divide the ", c.heads,
            " attention heads and the ", c.kv_heads, " kv heads of the model");
  BIK_CHECK(c.intermediate % size == 0, command, ": --tp ", size, " must divide the intermediate size ",
            c.intermediate);
}

TpModel::TpModel(const ModelConfig& config, const Weights& weights, Device device, const TpOptions& options,
                 bool batch_invariant)
    : options_(options) {
  check_tp_size(options.size, config, "tp");
  TpTransport transport = options.transport;
  if (transport == TpTransport::Auto) transport = device.is_cpu() ? TpTransport::Threads : TpTransport::Nccl;
  if (transport == TpTransport::Nccl) {
    BIK_CHECK(device.is_cuda() && device.index == 0, "tp: NCCL ranks run on cuda:0..", options.size - 1,
              ", got rank 0 on ", device.str());
    comms_ = make_nccl_comms(options.size);
  } else {
    comms_ = make_thread_comms(options.size, device);
  }
  for (int r = 0; r < options.size; ++r) {
    TpConfig tc;
    tc.rank = r;
    tc.size = options.size;
    tc.chunks = options.chunks;
    tc.comm = comms_[size_t(r)].get();
    shards_.push_back(std::make_unique<LlamaModel>(config, weights, comms_[size_t(r)]->device(), batch_invariant, tc,
                                                   options.fuse_projections));
  }
  if (device.is_cuda()) comms_[0]->enter(), comms_[0]->leave();  // rank 0's device current again
}

TpModel::~TpModel() {
  shards_.clear();  // device memory before the communicators
  comms_.clear();
}

KvCache TpModel::make_cache(int64_t num_blocks, int64_t block_size) const {
  KvCache all;
  all.num_blocks = num_blocks;
  all.block_size = block_size;
  for (const auto& s : shards_) {
    KvCache c = s->make_cache(num_blocks, block_size);
    all.k.insert(all.k.end(), c.k.begin(), c.k.end());
    all.v.insert(all.v.end(), c.v.begin(), c.v.end());
  }
  return all;
}

Tensor TpModel::forward(const StepBatch& batch, KvCache& cache) const {
  const int n = size();
  const int64_t layers = num_layers();
  BIK_CHECK(int64_t(cache.k.size()) == layers * n && int64_t(cache.v.size()) == layers * n, "tp: the KV cache has ",
            cache.k.size(), " layers, ", n, " shards of ", layers, " layers need ", layers * n,
            " (make it with TpModel::make_cache)");
  std::vector<KvCache> caches(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) {
    KvCache& c = caches[size_t(r)];
    c.num_blocks = cache.num_blocks;
    c.block_size = cache.block_size;
    c.k.assign(cache.k.begin() + r * layers, cache.k.begin() + (r + 1) * layers);
    c.v.assign(cache.v.begin() + r * layers, cache.v.begin() + (r + 1) * layers);
  }
  std::vector<Tensor> logits(static_cast<size_t>(n));
  std::vector<std::exception_ptr> errors(static_cast<size_t>(n));
  std::atomic<int> first_error{-1};  // the rank that failed first (the others then fail waiting for it)
  auto run = [&](int r) {
    TpComm& comm = *comms_[size_t(r)];
    try {
      comm.enter();
      logits[size_t(r)] = shards_[size_t(r)]->forward(batch, caches[size_t(r)]);
      comm.leave();
    } catch (...) {
      errors[size_t(r)] = std::current_exception();
      int none = -1;
      first_error.compare_exchange_strong(none, r);
      comm.leave();
      comm.abort();  // the other ranks stop waiting for this one
    }
  };
  std::vector<std::thread> threads;
  for (int r = 1; r < n; ++r) threads.emplace_back(run, r);
  run(0);  // rank 0 on the calling thread, which keeps its device current for the sampler
  for (auto& t : threads) t.join();
  if (first_error.load() >= 0) std::rethrow_exception(errors[size_t(first_error.load())]);
  return logits[0];
}

}  // namespace bik::engine

// The paged KV cache: the per-layer key/value tensors, and the BlockManager that hands out their blocks.
//
// A block holds block_size consecutive positions of one sequence. Blocks are reference counted so that
// sequences sharing a prompt prefix share its blocks. Prefix caching: a full block whose keys and values
// are computed is registered under a hash of its token ids chained with the hash of the block before it,
// so the hash names the whole prefix up to the block's end. A block whose last reference goes away keeps
// its content and hash on the free list and is only forgotten when it is handed out again (oldest first);
// a later request with the same prefix takes it back instead of recomputing it. Reusing cached keys and
// values never changes a bit of the result: a key at position p depends on tokens 0..p only, and every op
// computes it the same way whatever the batch, chunk or step it was computed in.
#pragma once
#include <cstdint>
#include <list>
#include <unordered_map>
#include <vector>

#include "bik/tensor.h"
#include "engine/sequence.h"

namespace bik::engine {

struct KvCache {
  KvCache() = default;
  KvCache(int64_t num_layers, int64_t num_blocks, int64_t block_size, int64_t kv_heads, int64_t head_dim,
          DType dtype, Device device);
  // Per layer: [num_blocks, block_size, kv_heads, head_dim].
  std::vector<Tensor> k, v;
  int64_t num_blocks = 0, block_size = 0;
  // Blocks that fit in `bytes` for this shape (both caches of every layer).
  static int64_t blocks_for_bytes(int64_t bytes, int64_t num_layers, int64_t block_size, int64_t kv_heads,
                                  int64_t head_dim, DType dtype);
};

// Hash of one full block: its token ids chained with the previous block's hash (0 for the first block).
uint64_t block_hash(uint64_t prev, const int32_t* ids, int64_t n);

class BlockManager {
 public:
  BlockManager(int64_t num_blocks, int64_t block_size, bool prefix_caching);

  int64_t block_size() const { return block_size_; }
  int64_t num_blocks() const { return int64_t(blocks_.size()); }
  int64_t num_free_blocks() const { return int64_t(free_.size()); }
  int64_t blocks_for(int64_t num_tokens) const { return (num_tokens + block_size_ - 1) / block_size_; }
  bool prefix_caching() const { return prefix_caching_; }

  // On admission of a sequence with nothing computed: takes the longest run of cached full blocks that
  // match its tokens, leaving at least one token to compute (its logits are needed). Sets block_table,
  // num_computed and the hash chain; returns the number of tokens found.
  int64_t acquire_prefix(Sequence& seq);
  // Grows seq.block_table to cover `num_tokens` positions. Returns false, changing nothing, when there
  // are not enough free blocks.
  bool grow(Sequence& seq, int64_t num_tokens);
  // Registers the hashes of seq's blocks that are full and computed (no-op without prefix caching).
  void register_full_blocks(Sequence& seq);
  // Drops seq's references and clears its block table and hash chain.
  void release(Sequence& seq);

  // Statistics.
  int64_t cache_hits() const { return hits_; }          // blocks taken from the prefix cache
  int32_t ref_count(int32_t block) const { return blocks_[size_t(block)].ref; }

 private:
  struct Block {
    int32_t ref = 0;
    bool hashed = false;
    uint64_t hash = 0, parent = 0;
    std::vector<int32_t> tokens;  // the ids the hash was computed from (checked on a hit)
  };
  int32_t take_free();              // oldest free block, its old hash forgotten
  void take_cached(int32_t block);  // a ref-0 cached block revived from the free list
  void put_free(int32_t block);

  int64_t block_size_;
  bool prefix_caching_;
  std::vector<Block> blocks_;
  std::list<int32_t> free_;  // blocks with no reference; front = handed out first
  std::vector<std::list<int32_t>::iterator> free_pos_;
  std::vector<bool> in_free_;
  std::unordered_map<uint64_t, int32_t> cached_;
  int64_t hits_ = 0;
};

}  // namespace bik::engine

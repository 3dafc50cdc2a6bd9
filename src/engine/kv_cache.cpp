#include "engine/kv_cache.h"

#include <algorithm>

#include "bik/error.h"

namespace bik::engine {

KvCache::KvCache(int64_t num_layers, int64_t num_blocks_, int64_t block_size_, int64_t kv_heads, int64_t head_dim,
                 DType dtype, Device device)
    : num_blocks(num_blocks_), block_size(block_size_) {
  BIK_CHECK(num_blocks > 0 && block_size > 0, "KvCache: num_blocks (", num_blocks, ") and block_size (", block_size,
            ") must be positive");
  for (int64_t l = 0; l < num_layers; ++l) {
    k.push_back(Tensor::empty({num_blocks, block_size, kv_heads, head_dim}, dtype, device));
    v.push_back(Tensor::empty({num_blocks, block_size, kv_heads, head_dim}, dtype, device));
    // Unwritten slots are never read (attention reads positions < seq_len only); zero them anyway so a
    // bug shows as a wrong number rather than garbage from an earlier allocation.
    fill_bytes(k.back(), 0);
    fill_bytes(v.back(), 0);
  }
}

int64_t KvCache::blocks_for_bytes(int64_t bytes, int64_t num_layers, int64_t block_size, int64_t kv_heads,
                                  int64_t head_dim, DType dtype) {
  const int64_t per_block = 2 * num_layers * block_size * kv_heads * head_dim * dtype_size(dtype);
  return per_block > 0 ? bytes / per_block : 0;
}

uint64_t block_hash(uint64_t prev, const int32_t* ids, int64_t n) {
  // FNV-1a over the previous hash and the ids, then a splitmix64 finaliser to spread the bits.
  uint64_t h = 0xcbf29ce484222325ull;
  auto mix = [&](uint64_t x) {
    for (int i = 0; i < 8; ++i) {
      h ^= (x >> (8 * i)) & 0xffu;
      h *= 0x100000001b3ull;
    }
  };
  mix(prev);
  mix(uint64_t(n));
  for (int64_t i = 0; i < n; ++i) mix(uint64_t(uint32_t(ids[i])));
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return h;
}

BlockManager::BlockManager(int64_t num_blocks, int64_t block_size, bool prefix_caching)
    : block_size_(block_size), prefix_caching_(prefix_caching) {
  BIK_CHECK(num_blocks > 0 && block_size > 0, "BlockManager: num_blocks (", num_blocks, ") and block_size (",
            block_size, ") must be positive");
  blocks_.resize(size_t(num_blocks));
  free_pos_.resize(size_t(num_blocks));
  in_free_.assign(size_t(num_blocks), false);
  for (int32_t b = 0; b < int32_t(num_blocks); ++b) put_free(b);
}

void BlockManager::put_free(int32_t b) {
  free_pos_[size_t(b)] = free_.insert(free_.end(), b);
  in_free_[size_t(b)] = true;
}

int32_t BlockManager::take_free() {
  BIK_CHECK(!free_.empty(), "BlockManager: no free block");
  const int32_t b = free_.front();
  free_.pop_front();
  in_free_[size_t(b)] = false;
  Block& blk = blocks_[size_t(b)];
  if (blk.hashed) {
    auto it = cached_.find(blk.hash);
    if (it != cached_.end() && it->second == b) cached_.erase(it);
    blk.hashed = false;
    blk.tokens.clear();
  }
  blk.ref = 1;
  return b;
}

void BlockManager::take_cached(int32_t b) {
  Block& blk = blocks_[size_t(b)];
  if (blk.ref == 0) {
    BIK_CHECK(in_free_[size_t(b)], "BlockManager: block ", b, " has no reference but is not free");
    free_.erase(free_pos_[size_t(b)]);
    in_free_[size_t(b)] = false;
  }
  ++blk.ref;
}

int64_t BlockManager::acquire_prefix(Sequence& seq) {
  BIK_CHECK(seq.block_table.empty() && seq.num_computed == 0, "acquire_prefix: sequence ", seq.id,
            " already holds blocks");
  seq.num_hashed_blocks = 0;
  seq.last_hash = 0;
  seq.num_cached = 0;
  if (!prefix_caching_) return 0;
  const int64_t max_blocks = (seq.num_tokens() - 1) / block_size_;  // leave >= 1 token to compute
  uint64_t prev = 0;
  for (int64_t i = 0; i < max_blocks; ++i) {
    const int32_t* ids = seq.tokens.data() + i * block_size_;
    const uint64_t h = block_hash(prev, ids, block_size_);
    auto it = cached_.find(h);
    if (it == cached_.end()) break;
    const Block& blk = blocks_[size_t(it->second)];
    if (blk.parent != prev || !std::equal(blk.tokens.begin(), blk.tokens.end(), ids)) break;  // a collision
    take_cached(it->second);
    seq.block_table.push_back(it->second);
    prev = h;
    ++hits_;
  }
  seq.num_hashed_blocks = int64_t(seq.block_table.size());
  seq.last_hash = prev;
  seq.num_computed = seq.num_hashed_blocks * block_size_;
  seq.num_cached = seq.num_computed;
  return seq.num_computed;
}

bool BlockManager::grow(Sequence& seq, int64_t num_tokens) {
  const int64_t need = blocks_for(num_tokens) - int64_t(seq.block_table.size());
  if (need <= 0) return true;
  if (need > num_free_blocks()) return false;
  for (int64_t i = 0; i < need; ++i) seq.block_table.push_back(take_free());
  return true;
}

void BlockManager::register_full_blocks(Sequence& seq) {
  if (!prefix_caching_) return;
  const int64_t full = std::min<int64_t>(seq.num_computed / block_size_, int64_t(seq.block_table.size()));
  for (int64_t i = seq.num_hashed_blocks; i < full; ++i) {
    const int32_t* ids = seq.tokens.data() + i * block_size_;
    const uint64_t h = block_hash(seq.last_hash, ids, block_size_);
    const int32_t b = seq.block_table[size_t(i)];
    Block& blk = blocks_[size_t(b)];
    if (!cached_.count(h) && !blk.hashed) {  // another block may already hold this prefix: keep that one
      blk.hashed = true;
      blk.hash = h;
      blk.parent = seq.last_hash;
      blk.tokens.assign(ids, ids + block_size_);
      cached_[h] = b;
    }
    seq.last_hash = h;
    seq.num_hashed_blocks = i + 1;
  }
}

void BlockManager::release(Sequence& seq) {
  // Last block first, so that a sequence's tail is evicted before its (more shareable) head.
  for (auto it = seq.block_table.rbegin(); it != seq.block_table.rend(); ++it) {
    Block& blk = blocks_[size_t(*it)];
    BIK_CHECK(blk.ref > 0, "BlockManager: block ", *it, " released twice");
    if (--blk.ref == 0) put_free(*it);
  }
  seq.block_table.clear();
  seq.num_hashed_blocks = 0;
  seq.last_hash = 0;
}

}  // namespace bik::engine

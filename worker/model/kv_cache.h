// The paged KV cache: fixed-size blocks of token slots in one backend allocation, a free
// list, and a block table per sequence. Running out of blocks is reported to the caller
// (ResourceExhausted), never a crash or an overwrite.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace ember::worker {

struct KvCacheShape {
  int num_layers = 0;
  int kv_heads = 0;
  int head_dim = 0;
  int block_size = 16;  // tokens per block
  kernels::ScalarType type = kernels::ScalarType::kF32;

  // K and V of every layer for one block.
  uint64_t BytesPerBlock() const {
    return 2ull * num_layers * block_size * kv_heads * head_dim * kernels::ScalarBytes(type);
  }
};

// How many blocks to allocate: `fraction` of the backend's free memory, but no more than
// `max_useful` (enough for every sequence at full context) and at least one.
int64_t PlanKvBlocks(const KvCacheShape& shape, uint64_t free_bytes, double fraction,
                     int64_t max_useful);

// The block ids a sequence owns, in position order: position p lives in block
// blocks[p / block_size] at offset p % block_size.
struct BlockTable {
  std::vector<int32_t> blocks;
};

class KvCache {
 public:
  // Allocates num_blocks blocks for every layer in `backend`.
  static absl::StatusOr<KvCache> Create(kernels::Backend& backend, const KvCacheShape& shape,
                                        int64_t num_blocks);

  const KvCacheShape& shape() const { return shape_; }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t free_blocks() const { return static_cast<int64_t>(free_.size()); }
  // Blocks a table needs to hold `tokens` tokens.
  int64_t BlocksFor(int64_t tokens) const { return (tokens + shape_.block_size - 1) / shape_.block_size; }

  // Grows `table` to hold `tokens` tokens. All or nothing: ResourceExhausted (naming how
  // many blocks were needed and free) leaves the table and the free list unchanged.
  absl::Status Reserve(BlockTable& table, int64_t tokens);
  // Returns every block of `table` to the free list and empties it.
  void Release(BlockTable& table);

  // Layer `layer`'s K and V arrays: [num_blocks * block_size, kv_heads, head_dim].
  kernels::KvLayer Layer(int layer) const;

 private:
  KvCacheShape shape_;
  int64_t num_blocks_ = 0;
  kernels::Buffer storage_;      // [num_layers, 2, num_blocks * block_size, kv_heads, head_dim]
  std::vector<int32_t> free_;    // a stack: the most recently freed block is reused first
};

}  // namespace ember::worker

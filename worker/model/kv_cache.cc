// Paged KV cache: block allocation and the per-layer views of the storage.
#include "worker/model/kv_cache.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace ember::worker {

int64_t PlanKvBlocks(const KvCacheShape& shape, uint64_t free_bytes, double fraction,
                     int64_t max_useful) {
  const double budget = static_cast<double>(free_bytes) * fraction;
  const int64_t fit = static_cast<int64_t>(budget / static_cast<double>(shape.BytesPerBlock()));
  return std::max<int64_t>(1, std::min(fit, max_useful));
}

absl::StatusOr<KvCache> KvCache::Create(kernels::Backend& backend, const KvCacheShape& shape,
                                        int64_t num_blocks) {
  if (num_blocks <= 0 || num_blocks > INT32_MAX / shape.block_size) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache: bad block count ", num_blocks));
  }
  KvCache cache;
  cache.shape_ = shape;
  cache.num_blocks_ = num_blocks;
  auto storage = backend.Allocate(shape.BytesPerBlock() * num_blocks,
                                  absl::StrCat("the KV cache (", num_blocks, " blocks of ",
                                               shape.block_size, " tokens)"));
  if (!storage.ok()) return storage.status();
  cache.storage_ = std::move(*storage);
  cache.free_.resize(num_blocks);
  // Lowest ids on top of the stack, so a fresh cache hands out blocks 0, 1, 2, ...
  for (int64_t i = 0; i < num_blocks; ++i) cache.free_[i] = static_cast<int32_t>(num_blocks - 1 - i);
  return cache;
}

absl::Status KvCache::Reserve(BlockTable& table, int64_t tokens) {
  const int64_t needed = BlocksFor(tokens) - static_cast<int64_t>(table.blocks.size());
  if (needed <= 0) return absl::OkStatus();
  if (needed > free_blocks()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV cache full: ", needed, " more blocks of ", shape_.block_size, " tokens needed, ",
        free_blocks(), " of ", num_blocks_, " free"));
  }
  for (int64_t i = 0; i < needed; ++i) {
    table.blocks.push_back(free_.back());
    free_.pop_back();
  }
  return absl::OkStatus();
}

void KvCache::Release(BlockTable& table) {
  free_.insert(free_.end(), table.blocks.rbegin(), table.blocks.rend());
  table.blocks.clear();
}

kernels::KvLayer KvCache::Layer(int layer) const {
  const uint64_t half = static_cast<uint64_t>(num_blocks_) * shape_.block_size * shape_.kv_heads *
                        shape_.head_dim * kernels::ScalarBytes(shape_.type);
  auto* base = static_cast<uint8_t*>(storage_.data()) + 2 * half * layer;
  kernels::KvLayer l;
  l.k = base;
  l.v = base + half;
  l.type = shape_.type;
  l.block_size = shape_.block_size;
  l.kv_heads = shape_.kv_heads;
  l.head_dim = shape_.head_dim;
  return l;
}

}  // namespace ember::worker

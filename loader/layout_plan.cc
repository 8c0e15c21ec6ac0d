// Layout planning and range-to-arena mapping.
#include "loader/layout_plan.h"

#include <algorithm>

namespace ember::loader {

LayoutPlan::LayoutPlan(const std::vector<const SafetensorsHeader*>& files, uint64_t alignment) {
  uint64_t cursor = 0;
  per_file_.resize(files.size());
  for (size_t f = 0; f < files.size(); ++f) {
    for (const TensorInfo& t : files[f]->tensors) {  // already sorted by begin
      cursor = (cursor + alignment - 1) / alignment * alignment;
      per_file_[f].push_back({&t, files[f]->data_start() + t.begin, cursor});
      cursor += t.nbytes();
    }
  }
  arena_bytes_ = cursor;
}

void LayoutPlan::ForEachPiece(int file, uint64_t offset, uint64_t length,
                              const std::function<void(size_t, uint64_t, uint64_t, uint64_t)>& fn) const {
  const std::vector<PlacedTensor>& placed = per_file_[file];
  const uint64_t end = offset + length;
  // First tensor that ends after `offset`.
  auto it = std::upper_bound(placed.begin(), placed.end(), offset,
                             [](uint64_t pos, const PlacedTensor& t) {
                               return pos < t.file_begin + t.info->nbytes();
                             });
  for (; it != placed.end() && it->file_begin < end; ++it) {
    const uint64_t t_end = it->file_begin + it->info->nbytes();
    const uint64_t lo = std::max(offset, it->file_begin);
    const uint64_t hi = std::min(end, t_end);
    if (hi <= lo) continue;
    fn(static_cast<size_t>(it - placed.begin()), it->arena_offset + (lo - it->file_begin), lo - offset,
       hi - lo);
  }
}

}  // namespace ember::loader

// The layout planner: assigns every tensor of every safetensors file a 256-byte-aligned
// place in one arena, and maps any byte range of a file to the arena places it fills.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "loader/safetensors.h"

namespace ember::loader {

// 256 bytes: enough for 16-byte vector loads, cuBLAS and TMA-friendly base addresses,
// whatever the file's own (often odd) offsets are.
inline constexpr uint64_t kTensorAlignment = 256;

struct PlacedTensor {
  const TensorInfo* info = nullptr;
  uint64_t file_begin = 0;  // absolute file offset of the first byte
  uint64_t arena_offset = 0;
};

class LayoutPlan {
 public:
  // `files` must outlive the plan.
  explicit LayoutPlan(const std::vector<const SafetensorsHeader*>& files,
                      uint64_t alignment = kTensorAlignment);

  uint64_t arena_bytes() const { return arena_bytes_; }
  const std::vector<PlacedTensor>& tensors(int file) const { return per_file_[file]; }
  int files() const { return static_cast<int>(per_file_.size()); }

  // For the bytes [offset, offset + length) of `file`, calls
  // fn(tensor, arena_offset, offset_in_range, bytes) once per tensor piece they contain,
  // `tensor` being the piece's index in tensors(file). Header bytes (before the data
  // section) map to nothing.
  void ForEachPiece(int file, uint64_t offset, uint64_t length,
                    const std::function<void(size_t, uint64_t, uint64_t, uint64_t)>& fn) const;

 private:
  std::vector<std::vector<PlacedTensor>> per_file_;  // sorted by file_begin
  uint64_t arena_bytes_ = 0;
};

}  // namespace ember::loader

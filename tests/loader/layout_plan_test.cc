// Layout planning: 256-byte-aligned arena places and correct range-to-piece mapping.
#include "loader/layout_plan.h"

#include <gtest/gtest.h>

#include <numeric>

namespace ember::loader {
namespace {

SafetensorsHeader HeaderWithSizes(std::vector<uint64_t> sizes, uint64_t header_bytes) {
  SafetensorsHeader h;
  h.header_bytes = header_bytes;
  uint64_t offset = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    h.tensors.push_back({"t" + std::to_string(i), Dtype::kU8, {sizes[i]}, offset, offset + sizes[i]});
    offset += sizes[i];
  }
  h.data_bytes = offset;
  return h;
}

TEST(LayoutPlan, AlignsEveryTensorTo256Bytes) {
  SafetensorsHeader a = HeaderWithSizes({3, 1000, 0, 17}, 77);
  SafetensorsHeader b = HeaderWithSizes({5, 256}, 13);
  LayoutPlan plan({&a, &b});
  uint64_t end = 0;
  for (int f = 0; f < plan.files(); ++f) {
    for (const PlacedTensor& t : plan.tensors(f)) {
      EXPECT_EQ(t.arena_offset % 256, 0u) << t.info->name;
      EXPECT_GE(t.arena_offset, end);  // no overlap
      end = t.arena_offset + t.info->nbytes();
    }
  }
  EXPECT_EQ(plan.arena_bytes(), end);
}

// Reassembling a file from arbitrary chunks through ForEachPiece puts every data byte
// at its tensor's place, whatever the chunk boundaries.
TEST(LayoutPlan, ChunksOfAnySizeFillEveryTensorExactly) {
  SafetensorsHeader h = HeaderWithSizes({3, 1000, 0, 17, 4096, 1}, 45);
  const uint64_t file_size = h.data_start() + h.data_bytes;
  std::vector<uint8_t> file(file_size);
  for (uint64_t i = 0; i < file_size; ++i) file[i] = static_cast<uint8_t>(i * 7 + 3);
  LayoutPlan plan({&h});
  for (uint64_t chunk : {1ull, 7ull, 64ull, 1000ull, 100000ull}) {
    std::vector<uint8_t> arena(plan.arena_bytes(), 0);
    std::vector<int> writes(plan.arena_bytes(), 0);
    for (uint64_t off = 0; off < file_size; off += chunk) {
      const uint64_t len = std::min(chunk, file_size - off);
      plan.ForEachPiece(0, off, len, [&](size_t, uint64_t dst, uint64_t in_chunk, uint64_t bytes) {
        ASSERT_LE(in_chunk + bytes, len);
        for (uint64_t i = 0; i < bytes; ++i) {
          arena[dst + i] = file[off + in_chunk + i];
          ++writes[dst + i];
        }
      });
    }
    for (const PlacedTensor& t : plan.tensors(0)) {
      for (uint64_t i = 0; i < t.info->nbytes(); ++i) {
        ASSERT_EQ(arena[t.arena_offset + i], file[t.file_begin + i]) << "chunk " << chunk;
        ASSERT_EQ(writes[t.arena_offset + i], 1) << "chunk " << chunk;
      }
    }
  }
}

}  // namespace
}  // namespace ember::loader

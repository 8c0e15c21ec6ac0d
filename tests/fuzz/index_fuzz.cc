// libFuzzer target: model.safetensors.index.json parsing never crashes and never
// accepts a shard name that could leave the model directory.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "loader/model_index.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  auto index = ember::loader::ParseShardIndex(text, "fuzz.index.json");
  if (!index.ok()) return 0;
  for (const std::string& shard : index->shards) {
    if (shard.empty() || shard.find('/') != std::string::npos || shard == "..") std::abort();
  }
  return 0;
}

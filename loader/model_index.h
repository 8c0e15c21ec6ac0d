// model.safetensors.index.json: which shard holds which tensor, and the check that the
// shards hold exactly the tensors the index names.
#pragma once

#include <map>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"
#include "loader/safetensors.h"

namespace ember::loader {

struct ShardIndex {
  std::map<std::string, std::string> weight_map;  // tensor name -> shard file name
  std::vector<std::string> shards;                // distinct shard names, sorted
};

// Parses the index JSON. Shard names must be plain file names inside the model
// directory (no '/', no "..", not empty): an index must not point outside the model.
absl::StatusOr<ShardIndex> ParseShardIndex(absl::string_view json, absl::string_view where);

// Checks that every tensor of every shard is named in the weight map for that shard and
// that every weight-map entry exists in its shard. Reports all differences at once.
absl::Status CheckIndexMatchesShards(const ShardIndex& index,
                                     const std::map<std::string, SafetensorsHeader>& shards,
                                     absl::string_view where);

}  // namespace ember::loader

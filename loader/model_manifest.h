// A model's manifest: which files make up the model, their small files' contents, and
// every safetensors header, read with at most two small range requests per file.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "loader/model_index.h"
#include "loader/object_store.h"
#include "loader/safetensors.h"

namespace ember::loader {

// Bytes read from the start of each safetensors file in the first request. Headers of
// real checkpoints are tens to hundreds of KiB; a larger one costs one more request.
inline constexpr uint64_t kHeaderProbeBytes = 256 << 10;

struct ModelManifest {
  std::map<std::string, std::string> small_files;  // name -> contents
  std::vector<ObjectInfo> weight_objects;           // the version being loaded
  std::vector<SafetensorsHeader> headers;           // headers[i] belongs to weight_objects[i]
  std::vector<std::string> prefixes;  // the bytes before each file's data section (length + JSON)
  std::optional<ShardIndex> index;
  bool weights_only = false;  // the source named one .safetensors object
};

// Discovers and validates the model at the store's root. A model directory must hold
// config.json, tokenizer.json and model.safetensors or model.safetensors.index.json
// with every shard it names. With `all_files`, the other small files of the model
// (tokenizer_config.json, special_tokens_map.json, ...) are fetched too. Without
// `require_tokenizer`, tokenizer.json is fetched when present but may be absent (a
// model driven by token ids alone, as ember-generate --prompt-ids does).
absl::StatusOr<ModelManifest> ReadManifest(ObjectStore& store, bool all_files,
                                           bool require_tokenizer);

}  // namespace ember::loader

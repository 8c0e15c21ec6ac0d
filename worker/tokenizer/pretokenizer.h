// tokenizer.json's "pre_tokenizer": splits normalized text into the words the BPE model
// encodes one by one (Split, ByteLevel, Metaspace, Digits, Sequence).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace ember::worker {

// A run of text on its way to the model.
struct TextPiece {
  std::string text;
  // Whether the piece begins at offset 0 of the original input (Metaspace's "first"
  // prepend scheme adds its "▁" to that piece only).
  bool at_input_start = false;
};

class PreTokenizer {
 public:
  // Builds the pre-tokenizer at `path` of tokenizer.json; an unknown type is an
  // Unimplemented error naming it and the path.
  static absl::StatusOr<std::unique_ptr<PreTokenizer>> FromJson(const nlohmann::json& j,
                                                                const std::string& path);

  virtual ~PreTokenizer() = default;
  // Splits each piece of `pieces` further, in order; empty pieces are dropped.
  virtual void Apply(std::vector<TextPiece>& pieces) const = 0;
};

}  // namespace ember::worker

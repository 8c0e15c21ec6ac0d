// tokenizer.json's "normalizer": the text rewriting applied before pre-tokenization
// (Unicode normal forms, Prepend, Replace, Sequence). Offsets are not tracked: the
// worker needs ids, not alignments.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace ember::worker {

class Normalizer {
 public:
  // Builds the normalizer at `path` ("normalizer", "normalizer.normalizers[0]", ...) of
  // tokenizer.json; an unknown type is an Unimplemented error naming it and the path.
  static absl::StatusOr<std::unique_ptr<Normalizer>> FromJson(const nlohmann::json& j,
                                                              const std::string& path);

  virtual ~Normalizer() = default;
  // Rewrites `text` (well-formed UTF-8) in place.
  virtual void Apply(std::string& text) const = 0;
};

}  // namespace ember::worker

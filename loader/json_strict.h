// JSON parsing that refuses duplicate object keys at any depth. nlohmann::json keeps
// the last of two equal keys silently; for checkpoint headers that would hide a
// conflicting tensor entry, so the parser callback tracks the keys of each open object.
#pragma once

#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace ember::loader {

// Parses `text` as one JSON value. Errors name `where`, the parser's byte position,
// or the duplicated key.
absl::StatusOr<nlohmann::json> ParseJsonStrict(absl::string_view text, absl::string_view where);

}  // namespace ember::loader

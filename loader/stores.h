// Constructors of the three ObjectStore implementations (used by OpenObjectStore).
#pragma once

#include <memory>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"
#include "loader/object_store.h"

namespace ember::loader {

absl::StatusOr<std::unique_ptr<ObjectStore>> OpenS3Store(absl::string_view uri);
absl::StatusOr<std::unique_ptr<ObjectStore>> OpenHttpStore(absl::string_view uri);
absl::StatusOr<std::unique_ptr<ObjectStore>> OpenFileStore(absl::string_view path);

// Whether a name is a single weights file rather than a model directory.
bool IsSafetensorsName(absl::string_view name);

// Percent-encodes for an S3 canonical URI or query value: RFC 3986 unreserved
// characters stay, '/' stays only when keep_slash is set.
std::string UriEncode(absl::string_view text, bool keep_slash);

}  // namespace ember::loader

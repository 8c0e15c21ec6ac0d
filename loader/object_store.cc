// Source URI dispatch.
#include "loader/object_store.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "loader/stores.h"

namespace ember::loader {

bool IsSafetensorsName(absl::string_view name) { return absl::EndsWith(name, ".safetensors"); }

std::string UriEncode(absl::string_view text, bool keep_slash) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : text) {
    if (absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' ||
        (keep_slash && c == '/')) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

bool IsLocalRoot(absl::string_view root) {
  return absl::StartsWith(root, "file://") || absl::StartsWith(root, "/");
}

absl::StatusOr<std::unique_ptr<ObjectStore>> OpenObjectStore(absl::string_view uri) {
  if (uri.empty()) return absl::InvalidArgumentError("empty model source");
  if (absl::StartsWith(uri, "s3://")) return OpenS3Store(uri);
  if (absl::StartsWith(uri, "http://") || absl::StartsWith(uri, "https://")) {
    return OpenHttpStore(uri);
  }
  if (absl::StartsWith(uri, "file://")) return OpenFileStore(uri.substr(7));
  if (uri.find("://") != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported source scheme in \"", uri.substr(0, uri.find("://") + 3),
                     "...\": use s3://, https://, http://, file:// or a path"));
  }
  return OpenFileStore(uri);
}

}  // namespace ember::loader

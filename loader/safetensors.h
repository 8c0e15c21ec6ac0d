// Parsing and validation of safetensors headers, with the checks of the format's
// reference implementation (huggingface/safetensors, Metadata::validate).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"
#include "loader/dtype.h"

namespace ember::loader {

// The reference implementation refuses headers above 100 MB: a header that large
// is a malformed or hostile file, not a model.
inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct TensorInfo {
  std::string name;
  Dtype dtype;
  std::vector<uint64_t> shape;
  uint64_t begin = 0;  // byte offsets relative to the start of the data section
  uint64_t end = 0;

  uint64_t nbytes() const { return end - begin; }
};

struct SafetensorsHeader {
  uint64_t header_bytes = 0;  // N, the JSON header's length (after the 8-byte prefix)
  uint64_t data_bytes = 0;    // size of the data section
  std::vector<TensorInfo> tensors;  // sorted by begin
  std::map<std::string, std::string> metadata;  // "__metadata__"

  // File offset of the data section's first byte.
  uint64_t data_start() const { return 8 + header_bytes; }
};

// Reads the little-endian u64 header length from the file's first 8 bytes and checks it
// against the limit and the file's size. `where` names the file in errors.
absl::StatusOr<uint64_t> ParseHeaderLength(absl::string_view first8, uint64_t file_bytes,
                                           absl::string_view where);

// Parses and validates the JSON header of a file of `file_bytes` bytes: dtypes, shapes
// and element counts, data_offsets sorted from 0, contiguous, ending at the file's end;
// "__metadata__" string-to-string; no duplicate names.
absl::StatusOr<SafetensorsHeader> ParseHeaderJson(absl::string_view json, uint64_t file_bytes,
                                                  absl::string_view where);

// Both steps on a buffer that holds at least the file's first 8 + N bytes.
absl::StatusOr<SafetensorsHeader> ParseSafetensorsPrefix(absl::string_view prefix,
                                                         uint64_t file_bytes,
                                                         absl::string_view where);

}  // namespace ember::loader

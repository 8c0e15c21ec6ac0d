// Safetensors header validation. Every error names the file and, where there is one,
// the tensor and the field, so a user can find the fault without a hex editor.
#include "loader/safetensors.h"

#include <algorithm>
#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "loader/json_strict.h"

namespace ember::loader {
namespace {

using nlohmann::json;

absl::Status Invalid(absl::string_view where, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", what));
}

// A JSON number that is a non-negative integer representable as u64.
bool AsU64(const json& value, uint64_t* out) {
  if (value.is_number_unsigned()) {
    *out = value.get<uint64_t>();
    return true;
  }
  if (value.is_number_integer() && value.get<int64_t>() >= 0) {
    *out = static_cast<uint64_t>(value.get<int64_t>());
    return true;
  }
  return false;
}

absl::StatusOr<TensorInfo> ParseTensor(const std::string& name, const json& entry,
                                       absl::string_view where) {
  const std::string tensor = absl::StrCat("tensor \"", name, "\"");
  if (!entry.is_object()) return Invalid(where, absl::StrCat(tensor, " is not an object"));
  for (const auto& [key, unused] : entry.items()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets") {
      return Invalid(where, absl::StrCat(tensor, " has unknown field \"", key, "\""));
    }
  }
  TensorInfo info;
  info.name = name;

  auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end() || !dtype_it->is_string()) {
    return Invalid(where, absl::StrCat(tensor, ": \"dtype\" missing or not a string"));
  }
  auto dtype = ParseDtype(dtype_it->get<std::string>());
  if (!dtype) {
    return Invalid(where, absl::StrCat(tensor, ": unknown dtype \"", dtype_it->get<std::string>(),
                                       "\""));
  }
  info.dtype = *dtype;

  auto shape_it = entry.find("shape");
  if (shape_it == entry.end() || !shape_it->is_array()) {
    return Invalid(where, absl::StrCat(tensor, ": \"shape\" missing or not an array"));
  }
  for (const json& dim : *shape_it) {
    uint64_t d;
    if (!AsU64(dim, &d)) {
      return Invalid(where, absl::StrCat(tensor, ": shape entry ", dim.dump(),
                                         " is not a non-negative integer"));
    }
    info.shape.push_back(d);
  }

  auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2 ||
      !AsU64((*offsets_it)[0], &info.begin) || !AsU64((*offsets_it)[1], &info.end)) {
    return Invalid(where,
                   absl::StrCat(tensor, ": \"data_offsets\" must be [begin, end] of integers"));
  }
  if (info.end < info.begin) {
    return Invalid(where, absl::StrCat(tensor, ": data_offsets [", info.begin, ", ", info.end,
                                       "] end before they begin"));
  }

  // Element count and byte size, with overflow checks: a hostile shape must not wrap.
  uint64_t elements = 1;
  for (uint64_t d : info.shape) {
    if (d != 0 && elements > UINT64_MAX / d) {
      return Invalid(where, absl::StrCat(tensor, ": shape [", absl::StrJoin(info.shape, ", "),
                                         "] overflows the element count"));
    }
    elements *= d;
  }
  const uint64_t bits = static_cast<uint64_t>(DtypeBits(info.dtype));
  if (elements > UINT64_MAX / bits) {
    return Invalid(where, absl::StrCat(tensor, ": shape overflows the byte size"));
  }
  if ((elements * bits) % 8 != 0) {
    return Invalid(where, absl::StrCat(tensor, ": ", elements, " elements of ",
                                       DtypeName(info.dtype), " do not fill whole bytes"));
  }
  const uint64_t expected = elements * bits / 8;
  if (info.nbytes() != expected) {
    return Invalid(where, absl::StrCat(tensor, ": shape [", absl::StrJoin(info.shape, ", "),
                                       "] of ", DtypeName(info.dtype), " needs ", expected,
                                       " bytes but data_offsets span ", info.nbytes()));
  }
  return info;
}

}  // namespace

absl::StatusOr<uint64_t> ParseHeaderLength(absl::string_view first8, uint64_t file_bytes,
                                           absl::string_view where) {
  if (first8.size() < 8 || file_bytes < 8) {
    return Invalid(where, absl::StrCat("file of ", file_bytes,
                                       " bytes is too short for a safetensors header"));
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(first8[i]);
  if (n > kMaxHeaderBytes) {
    return Invalid(where, absl::StrCat("header length ", n, " exceeds the limit of ",
                                       kMaxHeaderBytes, " bytes"));
  }
  if (n > file_bytes - 8) {
    return Invalid(where, absl::StrCat("header length ", n, " runs past the end of the ",
                                       file_bytes, "-byte file"));
  }
  return n;
}

absl::StatusOr<SafetensorsHeader> ParseHeaderJson(absl::string_view text, uint64_t file_bytes,
                                                  absl::string_view where) {
  if (text.empty() || text[0] != '{') {
    return Invalid(where, "header does not start with '{'");
  }
  auto parsed = ParseJsonStrict(text, where);
  if (!parsed.ok()) return parsed.status();
  const json& root = *parsed;
  if (!root.is_object()) return Invalid(where, "header is not a JSON object");

  SafetensorsHeader header;
  header.header_bytes = text.size();
  header.data_bytes = file_bytes - 8 - text.size();
  for (const auto& [name, entry] : root.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) return Invalid(where, "\"__metadata__\" is not an object");
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          return Invalid(where, absl::StrCat("\"__metadata__\" value of \"", key,
                                             "\" is not a string"));
        }
        header.metadata[key] = value.get<std::string>();
      }
      continue;
    }
    auto tensor = ParseTensor(name, entry, where);
    if (!tensor.ok()) return tensor.status();
    header.tensors.push_back(*std::move(tensor));
  }

  // Sorted by begin (ties by end, so empty tensors sit before a tensor at the same
  // offset), the tensors must tile the data section exactly.
  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const TensorInfo& a, const TensorInfo& b) {
              return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
            });
  uint64_t cursor = 0;
  for (const TensorInfo& t : header.tensors) {
    if (t.begin != cursor) {
      return Invalid(where, absl::StrCat("tensor \"", t.name, "\" data_offsets [", t.begin, ", ",
                                         t.end, "] ",
                                         t.begin > cursor ? "leave a gap after" : "overlap",
                                         " the previous tensor, which ends at ", cursor));
    }
    cursor = t.end;
  }
  if (cursor != header.data_bytes) {
    return Invalid(where, absl::StrCat("tensors cover ", cursor, " bytes but the data section has ",
                                       header.data_bytes, " bytes"));
  }
  return header;
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsPrefix(absl::string_view prefix,
                                                         uint64_t file_bytes,
                                                         absl::string_view where) {
  auto n = ParseHeaderLength(prefix, file_bytes, where);
  if (!n.ok()) return n.status();
  if (prefix.size() < 8 + *n) {
    return absl::InternalError(absl::StrCat(where, ": need ", 8 + *n, " header bytes, have ",
                                            prefix.size()));
  }
  return ParseHeaderJson(prefix.substr(8, *n), file_bytes, where);
}

}  // namespace ember::loader

// Reading tokenizer.json's components: typed field access whose errors name the file and
// the JSON path ("tokenizer.json: pre_tokenizer.pretokenizers[1].behavior: ...").
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "loader/status_macros.h"
#include "nlohmann/json.hpp"

namespace ember::worker::tokenizer_json {

using nlohmann::json;

// An InvalidArgument error: "tokenizer.json: <path>: <problem>".
absl::Status Error(absl::string_view path, absl::string_view problem);

// An Unimplemented error for a component "type" this tokenizer does not support.
absl::Status UnsupportedType(absl::string_view path, absl::string_view kind, absl::string_view type,
                             absl::string_view supported);

std::string Child(absl::string_view path, absl::string_view field);
std::string Element(absl::string_view path, size_t index);

// The field `field` of the object `j`; nullptr when `j` is not an object or the field is
// absent or null.
const json* Find(const json& j, const char* field);

// The object's "type" field.
absl::StatusOr<std::string> Type(const json& j, absl::string_view path);

// Fields; `fallback` is used when the field is absent or null (nullopt: required).
absl::StatusOr<std::string> String(const json& j, absl::string_view path, const char* field,
                                   std::optional<std::string> fallback = std::nullopt);
absl::StatusOr<bool> Bool(const json& j, absl::string_view path, const char* field,
                          std::optional<bool> fallback = std::nullopt);
absl::StatusOr<int64_t> Int(const json& j, absl::string_view path, const char* field,
                            std::optional<int64_t> fallback = std::nullopt);
// A string field holding exactly one character.
absl::StatusOr<char32_t> Char(const json& j, absl::string_view path, const char* field,
                              char32_t fallback);
// A required field holding a list, or an object.
absl::StatusOr<const json*> Array(const json& j, absl::string_view path, const char* field);
absl::StatusOr<const json*> Object(const json& j, absl::string_view path, const char* field);

// Calls `fn` with each element of the required list `field` and the element's path
// ("<path>.<field>[i]"), in order, until it returns an error, which ForEach returns.
absl::Status ForEach(const json& j, absl::string_view path, const char* field,
                     absl::FunctionRef<absl::Status(const json&, const std::string&)> fn);

// Each element of the required list `field` parsed by `parse(element, element_path)`, which
// returns absl::StatusOr<std::unique_ptr<T>> (a Sequence's steps); the first error wins.
template <class T, class Parse>
absl::StatusOr<std::vector<std::unique_ptr<T>>> ParseEach(const json& j, absl::string_view path,
                                                          const char* field, Parse parse) {
  std::vector<std::unique_ptr<T>> out;
  EMBER_RETURN_IF_ERROR(ForEach(j, path, field, [&](const json& e, const std::string& e_path) {
    auto item = parse(e, e_path);
    if (!item.ok()) return item.status();
    out.push_back(*std::move(item));
    return absl::OkStatus();
  }));
  return out;
}

// A token id: an integer in [0, 2^31); nullopt for any other value.
std::optional<int32_t> Id(const json& v);

// Metaspace's (pre-tokenizer and decoder) "prepend_scheme", which defaults to "always" or
// "never" by the older "add_prefix_space".
enum class PrependScheme { kAlways, kFirst, kNever };
absl::StatusOr<PrependScheme> ParsePrependScheme(const json& j, absl::string_view path);

}  // namespace ember::worker::tokenizer_json

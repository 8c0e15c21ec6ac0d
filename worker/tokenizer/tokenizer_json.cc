// Typed field access for tokenizer.json with errors that name the JSON path.
#include "worker/tokenizer/tokenizer_json.h"

#include <type_traits>

#include "absl/strings/str_cat.h"
#include "common/utf8.h"

namespace ember::worker::tokenizer_json {
namespace {

// A field of the JSON type that `is` tests, else the error `problem`. When absent or null:
// `fallback`, else "is missing" (a list or an object, T = const json*: `problem` too).
template <typename T>
absl::StatusOr<T> Field(const json& j, absl::string_view path, const char* field,
                        std::optional<T> fallback, bool (json::*is)() const noexcept,
                        absl::string_view problem) {
  constexpr bool kContainer = std::is_same_v<T, const json*>;
  const json* v = Find(j, field);
  if (v == nullptr && fallback) return *std::move(fallback);
  if (v == nullptr && !kContainer) return Error(Child(path, field), "is missing");
  if (v == nullptr || !(v->*is)()) return Error(Child(path, field), problem);
  if constexpr (kContainer) {
    return v;
  } else {
    return v->get<T>();
  }
}

}  // namespace

const json* Find(const json& j, const char* field) {
  if (!j.is_object()) return nullptr;
  auto it = j.find(field);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

absl::Status Error(absl::string_view path, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: ", path, ": ", problem));
}

absl::Status UnsupportedType(absl::string_view path, absl::string_view kind, absl::string_view type,
                             absl::string_view supported) {
  return absl::UnimplementedError(absl::StrCat("tokenizer.json: ", path, ": ", kind, " type \"",
                                               type, "\" is not supported (supported: ", supported,
                                               ")"));
}

std::string Child(absl::string_view path, absl::string_view field) {
  return path.empty() ? std::string(field) : absl::StrCat(path, ".", field);
}

std::string Element(absl::string_view path, size_t index) {
  return absl::StrCat(path, "[", index, "]");
}

absl::StatusOr<std::string> Type(const json& j, absl::string_view path) {
  if (!j.is_object()) return Error(path, absl::StrCat("must be an object, got ", j.dump()));
  return String(j, path, "type");
}

absl::StatusOr<std::string> String(const json& j, absl::string_view path, const char* field,
                                   std::optional<std::string> fallback) {
  return Field(j, path, field, std::move(fallback), &json::is_string, "must be a string");
}

absl::StatusOr<bool> Bool(const json& j, absl::string_view path, const char* field,
                          std::optional<bool> fallback) {
  return Field(j, path, field, fallback, &json::is_boolean, "must be true or false");
}

absl::StatusOr<int64_t> Int(const json& j, absl::string_view path, const char* field,
                            std::optional<int64_t> fallback) {
  return Field(j, path, field, fallback, &json::is_number_integer, "must be an integer");
}

absl::StatusOr<char32_t> Char(const json& j, absl::string_view path, const char* field,
                              char32_t fallback) {
  if (Find(j, field) == nullptr) return fallback;
  std::string s;
  EMBER_ASSIGN_OR_RETURN(s, String(j, path, field));
  if (s.empty() || utf8::SequenceLength(s, 0) != s.size()) {
    return Error(Child(path, field), "must be one character");
  }
  size_t pos = 0;
  return utf8::Next(s, pos);
}

absl::StatusOr<const json*> Array(const json& j, absl::string_view path, const char* field) {
  return Field<const json*>(j, path, field, std::nullopt, &json::is_array, "must be a list");
}

absl::StatusOr<const json*> Object(const json& j, absl::string_view path, const char* field) {
  return Field<const json*>(j, path, field, std::nullopt, &json::is_object, "must be an object");
}

absl::Status ForEach(const json& j, absl::string_view path, const char* field,
                     absl::FunctionRef<absl::Status(const json&, const std::string&)> fn) {
  const json* list;
  EMBER_ASSIGN_OR_RETURN(list, Array(j, path, field));
  const std::string list_path = Child(path, field);
  for (size_t i = 0; i < list->size(); ++i) {
    EMBER_RETURN_IF_ERROR(fn((*list)[i], Element(list_path, i)));
  }
  return absl::OkStatus();
}

std::optional<int32_t> Id(const json& v) {
  if (!v.is_number_unsigned() || v.get<uint64_t>() >= (uint64_t{1} << 31)) return std::nullopt;
  return static_cast<int32_t>(v.get<uint64_t>());
}

absl::StatusOr<PrependScheme> ParsePrependScheme(const json& j, absl::string_view path) {
  bool add_prefix_space;
  EMBER_ASSIGN_OR_RETURN(add_prefix_space, Bool(j, path, "add_prefix_space", true));
  std::string scheme;
  EMBER_ASSIGN_OR_RETURN(scheme,
                         String(j, path, "prepend_scheme", add_prefix_space ? "always" : "never"));
  if (scheme == "always") return PrependScheme::kAlways;
  if (scheme == "first") return PrependScheme::kFirst;
  if (scheme == "never") return PrependScheme::kNever;
  return Error(Child(path, "prepend_scheme"), "must be always, first or never");
}

}  // namespace ember::worker::tokenizer_json

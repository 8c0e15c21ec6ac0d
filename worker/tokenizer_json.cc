// Typed field access for tokenizer.json with errors that name the JSON path.
#include "worker/tokenizer_json.h"

#include "absl/strings/str_cat.h"

namespace ember::worker::tokenizer_json {
namespace {

const json* Find(const json& j, const char* field) {
  if (!j.is_object()) return nullptr;
  auto it = j.find(field);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

}  // namespace

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
  const json* v = Find(j, field);
  if (v == nullptr) {
    if (fallback) return *fallback;
    return Error(Child(path, field), "is missing");
  }
  if (!v->is_string()) return Error(Child(path, field), "must be a string");
  return v->get<std::string>();
}

absl::StatusOr<bool> Bool(const json& j, absl::string_view path, const char* field,
                          std::optional<bool> fallback) {
  const json* v = Find(j, field);
  if (v == nullptr) {
    if (fallback) return *fallback;
    return Error(Child(path, field), "is missing");
  }
  if (!v->is_boolean()) return Error(Child(path, field), "must be true or false");
  return v->get<bool>();
}

absl::StatusOr<int64_t> Int(const json& j, absl::string_view path, const char* field,
                            std::optional<int64_t> fallback) {
  const json* v = Find(j, field);
  if (v == nullptr) {
    if (fallback) return *fallback;
    return Error(Child(path, field), "is missing");
  }
  if (!v->is_number_integer()) return Error(Child(path, field), "must be an integer");
  return v->get<int64_t>();
}

absl::StatusOr<const json*> Array(const json& j, absl::string_view path, const char* field) {
  const json* v = Find(j, field);
  if (v == nullptr || !v->is_array()) return Error(Child(path, field), "must be a list");
  return v;
}

absl::StatusOr<const json*> Object(const json& j, absl::string_view path, const char* field) {
  const json* v = Find(j, field);
  if (v == nullptr || !v->is_object()) return Error(Child(path, field), "must be an object");
  return v;
}

}  // namespace ember::worker::tokenizer_json

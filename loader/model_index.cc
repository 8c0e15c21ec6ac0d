// Shard index parsing and cross-checking against the shards' headers.
#include "loader/model_index.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "loader/json_strict.h"

namespace ember::loader {
namespace {

bool IsPlainFileName(absl::string_view name) {
  return !name.empty() && name != "." && name != ".." &&
         name.find('/') == absl::string_view::npos && name.find('\\') == absl::string_view::npos &&
         name.find('\0') == absl::string_view::npos;
}

// At most this many names in one error message; the count says how many more.
constexpr size_t kMaxNamesInError = 10;

std::string NameList(const std::vector<std::string>& names) {
  std::vector<std::string> shown(names.begin(),
                                 names.begin() + std::min(names.size(), kMaxNamesInError));
  std::string out = absl::StrJoin(shown, ", ");
  if (names.size() > shown.size()) absl::StrAppend(&out, " and ", names.size() - shown.size(), " more");
  return out;
}

}  // namespace

absl::StatusOr<ShardIndex> ParseShardIndex(absl::string_view text, absl::string_view where) {
  auto parsed = ParseJsonStrict(text, where);
  if (!parsed.ok()) return parsed.status();
  const nlohmann::json& root = *parsed;
  if (!root.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, ": not a JSON object"));
  auto map_it = root.find("weight_map");
  if (map_it == root.end() || !map_it->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": \"weight_map\" missing or not an object"));
  }
  ShardIndex index;
  std::set<std::string> shards;
  for (const auto& [tensor, shard] : map_it->items()) {
    if (!shard.is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": weight_map entry \"", tensor,
                                                     "\" is not a string"));
    }
    const std::string name = shard.get<std::string>();
    if (!IsPlainFileName(name)) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": weight_map entry \"", tensor, "\" names shard \"", name,
          "\", which is not a plain file name in the model directory"));
    }
    index.weight_map[tensor] = name;
    shards.insert(name);
  }
  if (index.weight_map.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": weight_map is empty"));
  }
  index.shards.assign(shards.begin(), shards.end());
  return index;
}

absl::Status CheckIndexMatchesShards(const ShardIndex& index,
                                     const std::map<std::string, SafetensorsHeader>& shards,
                                     absl::string_view where) {
  std::vector<std::string> unlisted;   // in a shard, absent from the weight map
  std::vector<std::string> misplaced;  // listed for another shard
  std::vector<std::string> missing;    // listed, absent from its shard
  std::set<std::pair<std::string, std::string>> present;
  for (const auto& [shard, header] : shards) {
    for (const TensorInfo& t : header.tensors) {
      present.emplace(t.name, shard);
      auto it = index.weight_map.find(t.name);
      if (it == index.weight_map.end()) {
        unlisted.push_back(absl::StrCat(t.name, " (in ", shard, ")"));
      } else if (it->second != shard) {
        misplaced.push_back(absl::StrCat(t.name, " (in ", shard, ", index says ", it->second, ")"));
      }
    }
  }
  for (const auto& [tensor, shard] : index.weight_map) {
    if (!shards.count(shard)) continue;  // the caller reports a missing shard file
    if (!present.count({tensor, shard})) missing.push_back(absl::StrCat(tensor, " (", shard, ")"));
  }
  if (unlisted.empty() && misplaced.empty() && missing.empty()) return absl::OkStatus();
  std::vector<std::string> parts;
  if (!missing.empty()) {
    parts.push_back(absl::StrCat(missing.size(), " tensor(s) named by the index but absent from their shard: ",
                                 NameList(missing)));
  }
  if (!unlisted.empty()) {
    parts.push_back(absl::StrCat(unlisted.size(), " tensor(s) in shards but not in the index: ",
                                 NameList(unlisted)));
  }
  if (!misplaced.empty()) {
    parts.push_back(absl::StrCat(misplaced.size(), " tensor(s) in a different shard than the index says: ",
                                 NameList(misplaced)));
  }
  return absl::InvalidArgumentError(
      absl::StrCat(where, ": weight_map does not match the shards: ", absl::StrJoin(parts, "; ")));
}

}  // namespace ember::loader

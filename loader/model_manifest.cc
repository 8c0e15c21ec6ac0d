// Model discovery: listing (or probing, for HTTP), small files, safetensors headers.
#include "loader/model_manifest.h"

#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "loader/stores.h"

namespace ember::loader {
namespace {

constexpr char kConfig[] = "config.json";
constexpr char kTokenizer[] = "tokenizer.json";
constexpr char kSingleWeights[] = "model.safetensors";
constexpr char kIndex[] = "model.safetensors.index.json";
const char* const kOptionalFiles[] = {"tokenizer_config.json", "generation_config.json",
                                     "chat_template.jinja"};

// Weight formats other than safetensors, never fetched: a repository often carries
// the same weights as PyTorch pickles or GGUF beside the safetensors.
bool IsOtherWeightFormat(absl::string_view name) {
  for (const char* ext : {".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx",
                          ".ot", ".safetensors"}) {
    if (absl::EndsWith(name, ext)) return true;
  }
  return false;
}

// Reads the headers of `objects` (two rounds at most) and checks each response agrees
// with the listing.
absl::Status ReadHeaders(ObjectStore& store, ModelManifest& m) {
  std::vector<SmallRead> probes;
  for (const ObjectInfo& o : m.weight_objects) probes.push_back({o.name, 0, kHeaderProbeBytes, false});
  auto first = store.ReadSmall(probes);
  if (!first.ok()) return first.status();

  std::vector<SmallRead> rest;
  std::vector<size_t> rest_of;
  for (size_t i = 0; i < first->size(); ++i) {
    SmallReadResult& r = (*first)[i];
    ObjectInfo& listed = m.weight_objects[i];
    if (listed.size != 0 && r.info.size != listed.size) {
      return absl::AbortedError(absl::StrCat(store.Describe(listed.name), ": size changed from ",
                                             listed.size, " to ", r.info.size,
                                             " while the load started; retry"));
    }
    listed.size = r.info.size;
    if (!r.info.etag.empty()) listed.etag = r.info.etag;
    if (!r.info.last_modified.empty()) listed.last_modified = r.info.last_modified;
    auto n = ParseHeaderLength(r.bytes, listed.size, store.Describe(listed.name));
    if (!n.ok()) return n.status();
    if (8 + *n > r.bytes.size()) {
      rest.push_back({listed.name, r.bytes.size(), 8 + *n - r.bytes.size(), false});
      rest_of.push_back(i);
    }
  }
  if (!rest.empty()) {
    auto second = store.ReadSmall(rest);
    if (!second.ok()) return second.status();
    for (size_t j = 0; j < rest.size(); ++j) {
      SmallReadResult& r = (*second)[j];
      const ObjectInfo& listed = m.weight_objects[rest_of[j]];
      if (r.info.size != listed.size || (!listed.etag.empty() && r.info.etag != listed.etag)) {
        return absl::AbortedError(absl::StrCat(store.Describe(listed.name),
                                               ": the object changed while its header was read; retry"));
      }
      (*first)[rest_of[j]].bytes += r.bytes;
    }
  }
  for (size_t i = 0; i < first->size(); ++i) {
    auto header = ParseSafetensorsPrefix((*first)[i].bytes, m.weight_objects[i].size,
                                         store.Describe(m.weight_objects[i].name));
    if (!header.ok()) return header.status();
    m.prefixes.push_back((*first)[i].bytes.substr(0, header->data_start()));
    m.headers.push_back(*std::move(header));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelManifest> ReadManifest(ObjectStore& store, bool all_files,
                                           bool require_tokenizer) {
  ModelManifest m;
  auto listing = store.List();
  if (!listing.ok()) return listing.status();

  std::map<std::string, ObjectInfo> listed;
  if (*listing) {
    for (const ObjectInfo& o : **listing) listed[o.name] = o;
    if (listed.size() == 1 && IsSafetensorsName(listed.begin()->first) &&
        IsSafetensorsName(store.Root())) {
      m.weights_only = true;
      m.weight_objects.push_back(listed.begin()->second);
      if (absl::Status s = ReadHeaders(store, m); !s.ok()) return s;
      return m;
    }
  }

  // Small files: the required two, the optional ones, and the index.
  std::vector<SmallRead> reads;
  auto want = [&](const std::string& name, bool optional) {
    if (*listing && !listed.count(name)) return;
    reads.push_back({name, 0, std::nullopt, optional || !*listing});
  };
  std::vector<std::string> required = {kConfig};
  if (require_tokenizer) required.push_back(kTokenizer);
  for (const std::string& name : required) want(name, false);
  if (!require_tokenizer) want(kTokenizer, true);
  for (const char* name : kOptionalFiles) want(name, true);
  want(kIndex, true);
  if (all_files && *listing) {
    for (const auto& [name, info] : listed) {
      if (IsOtherWeightFormat(name) || name == kIndex || name == kConfig || name == kTokenizer) continue;
      if (std::find_if(reads.begin(), reads.end(), [&](const SmallRead& r) { return r.name == name; }) ==
          reads.end()) {
        reads.push_back({name, 0, std::nullopt, false});
      }
    }
  }
  auto fetched = store.ReadSmall(reads);
  if (!fetched.ok()) return fetched.status();
  for (size_t i = 0; i < reads.size(); ++i) {
    if ((*fetched)[i].found) m.small_files[reads[i].name] = std::move((*fetched)[i].bytes);
  }

  std::vector<std::string> missing;
  for (const std::string& name : required) {
    if (!m.small_files.count(name)) missing.push_back(name);
  }
  auto index_it = m.small_files.find(kIndex);
  std::vector<std::string> weight_names;
  if (index_it != m.small_files.end()) {
    auto index = ParseShardIndex(index_it->second, store.Describe(kIndex));
    if (!index.ok()) return index.status();
    m.index = *std::move(index);
    for (const std::string& shard : m.index->shards) {
      if (*listing && !listed.count(shard)) missing.push_back(shard);
      weight_names.push_back(shard);
    }
  } else if (!*listing || listed.count(kSingleWeights)) {
    weight_names.push_back(kSingleWeights);
  } else {
    missing.push_back("model.safetensors (or model.safetensors.index.json)");
  }
  if (!missing.empty()) {
    std::string present = "nothing";
    if (*listing && !listed.empty()) {
      std::vector<std::string> names;
      for (const auto& [name, unused] : listed) names.push_back(name);
      present = absl::StrJoin(names, ", ");
    }
    return absl::NotFoundError(absl::StrCat(store.Root(), ": not a model: missing ",
                                            absl::StrJoin(missing, ", "), " (found: ", present,
                                            ")"));
  }

  for (const std::string& name : weight_names) {
    ObjectInfo info;
    info.name = name;
    if (*listing) info = listed[name];
    m.weight_objects.push_back(info);
  }
  if (absl::Status s = ReadHeaders(store, m); !s.ok()) {
    if (!*listing && absl::IsNotFound(s)) {
      return absl::NotFoundError(absl::StrCat(store.Root(), ": not a model: ", s.message()));
    }
    return s;
  }
  if (m.index) {
    std::map<std::string, SafetensorsHeader> shards;
    for (size_t i = 0; i < m.headers.size(); ++i) shards[m.weight_objects[i].name] = m.headers[i];
    if (absl::Status s = CheckIndexMatchesShards(*m.index, shards, store.Describe(kIndex)); !s.ok()) {
      return s;
    }
  }
  return m;
}

}  // namespace ember::loader

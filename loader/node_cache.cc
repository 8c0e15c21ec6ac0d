#include "loader/node_cache.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "loader/log.h"
#include "loader/object_store.h"
#include "loader/peer.h"
#include "nlohmann/json.hpp"

namespace ember::loader {
namespace {

constexpr char kManifestName[] = "ember-cache.json";
constexpr int kManifestVersion = 1;

// An advisory lock on the entry (flock: released when the descriptor closes, also when the
// process dies, so a killed worker never leaves the entry locked).
class EntryLock {
 public:
  explicit EntryLock(const std::string& path)
      : fd_(open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644)) {}
  ~EntryLock() {
    if (fd_ >= 0) close(fd_);
  }
  bool Shared() { return fd_ >= 0 && flock(fd_, LOCK_SH) == 0; }
  bool TryExclusive() { return fd_ >= 0 && flock(fd_, LOCK_EX | LOCK_NB) == 0; }
  void Unlock() {
    if (fd_ >= 0) flock(fd_, LOCK_UN);
  }

 private:
  int fd_;
};

// FNV-1a: a stable name for a source's entry, the same in every build.
uint64_t StableHash(absl::string_view text) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : text) h = (h ^ c) * 1099511628211ull;
  return h;
}

bool MakeDirs(const std::string& path) {
  std::string partial;
  for (size_t i = 0; i <= path.size(); ++i) {
    if (i == path.size() || (path[i] == '/' && i > 0)) {
      partial = path.substr(0, i);
      if (mkdir(partial.c_str(), 0755) != 0 && errno != EEXIST) return false;
    }
  }
  return true;
}

int64_t FileSize(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) ? st.st_size : -1;
}

// Why the entry does not hold the listed version of the model ("" when it does).
std::string Mismatch(const std::string& entry, const std::string& source,
                     const std::vector<ObjectInfo>& listing) {
  std::ifstream in(entry + "/" + kManifestName);
  if (!in) return "no complete entry";
  std::stringstream text;
  text << in.rdbuf();
  const nlohmann::json manifest = nlohmann::json::parse(text.str(), nullptr, false);
  if (!manifest.is_object() || manifest.value("version", 0) != kManifestVersion ||
      manifest.value("source", "") != source || !manifest.contains("files") ||
      !manifest["files"].is_object()) {
    return "the entry's manifest is unreadable or for another source";
  }
  std::map<std::string, const ObjectInfo*> listed;
  for (const ObjectInfo& o : listing) listed[o.name] = &o;
  for (const auto& [name, file] : manifest["files"].items()) {
    auto it = listed.find(name);
    if (it == listed.end()) return absl::StrCat(name, " is gone from the source");
    const uint64_t size = file.value("size", uint64_t{0});
    const std::string etag = file.value("etag", "");
    if (it->second->size != size || it->second->etag != etag) {
      return absl::StrCat(name, " changed upstream (size ", size, " -> ", it->second->size,
                          ", ETag '", etag, "' -> '", it->second->etag, "')");
    }
    const int64_t on_disk = FileSize(entry + "/" + name);
    if (on_disk != static_cast<int64_t>(size)) {
      return absl::StrCat(name, " in the cache has ", on_disk < 0 ? 0 : on_disk, " of ", size,
                          " bytes");
    }
  }
  if (manifest["files"].empty()) return "the entry's manifest lists no files";
  return "";
}

// The manifest of a filled entry: every listed object that the mirror wrote.
absl::Status WriteManifest(const std::string& entry, const std::string& source,
                           const std::vector<ObjectInfo>& listing) {
  nlohmann::json files = nlohmann::json::object();
  for (const ObjectInfo& o : listing) {
    if (FileSize(entry + "/" + o.name) == static_cast<int64_t>(o.size)) {
      files[o.name] = {{"size", o.size}, {"etag", o.etag}};
    }
  }
  const nlohmann::json manifest = {
      {"version", kManifestVersion}, {"source", source}, {"files", files}};
  const std::string temp = absl::StrCat(entry, "/.", kManifestName, ".partial");
  const std::string final_path = absl::StrCat(entry, "/", kManifestName);
  const int fd = open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::PermissionDeniedError(absl::StrCat(temp, ": ", std::strerror(errno)));
  const std::string text = manifest.dump(1);
  const bool written = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
                       fsync(fd) == 0;
  close(fd);
  if (!written || rename(temp.c_str(), final_path.c_str()) != 0) {
    unlink(temp.c_str());
    return absl::DataLossError(absl::StrCat(final_path, ": cannot write the cache manifest"));
  }
  return absl::OkStatus();
}

}  // namespace

const char* CacheOutcomeName(CacheOutcome outcome) {
  switch (outcome) {
    case CacheOutcome::kDisabled: return "disabled";
    case CacheOutcome::kHit: return "hit";
    case CacheOutcome::kFilled: return "filled";
    case CacheOutcome::kBypassed: return "bypassed";
  }
  return "unknown";
}

absl::StatusOr<LoadedModel> LoadModelCached(absl::string_view uri, const LoadOptions& options,
                                            const std::string& cache_dir, CacheReport* report) {
  *report = CacheReport();
  if (cache_dir.empty()) return LoadModel(uri, options);
  auto store = OpenModelStore(uri, options);
  if (!store.ok()) return store.status();
  const std::string source = (*store)->Root();
  auto bypass = [&](std::string reason) {
    report->outcome = CacheOutcome::kBypassed;
    report->reason = std::move(reason);
    return LoadModelFrom(**store, options);
  };
  if (IsLocalRoot(source)) return bypass("the source is already local");
  auto listing = (*store)->List();
  if (!listing.ok()) return listing.status();
  if (!listing->has_value()) return bypass("the source cannot be listed, so a copy cannot be validated");

  // One entry per source, named by a hash of the source (the manifest records the source).
  report->entry_dir = absl::StrFormat("%s/%016x", cache_dir, StableHash(source));
  if (!MakeDirs(report->entry_dir)) {
    return bypass(absl::StrCat(report->entry_dir, ": cannot create: ", std::strerror(errno)));
  }
  EntryLock lock(report->entry_dir + ".lock");

  // A reader's shared lock waits for a filler to finish; the entry is then checked again.
  std::string mismatch = Mismatch(report->entry_dir, source, **listing);
  if (mismatch.empty() && lock.Shared()) {
    mismatch = Mismatch(report->entry_dir, source, **listing);
    if (mismatch.empty()) {
      // No computing while this copy arrives: should it fail to load, the source follows
      // into a new arena, and a caller computing on the first would have to start over.
      LoadOptions local_options = options;
      local_options.on_layout = nullptr;
      local_options.on_tensor = nullptr;
      local_options.on_abandon = nullptr;
      local_options.tensor_rank = nullptr;
      auto local = LoadModel(report->entry_dir, local_options);
      if (local.ok()) {
        report->outcome = CacheOutcome::kHit;
        local->source = source;
        // Peers know the model by its source and the source's versions, not the entry's.
        if (local->served) local->served = local->served->FromOrigin(source, **listing);
        return local;
      }
      mismatch = absl::StrCat("the cached copy failed to load: ", local.status().message());
    }
    lock.Unlock();
  }
  report->reason = mismatch;
  if (!lock.TryExclusive()) {
    return bypass(absl::StrCat(mismatch, "; another worker holds the entry, so this one streams "
                                         "from the source without writing"));
  }
  // Filling: the manifest goes first, so a fill that dies leaves an entry that never validates.
  unlink((report->entry_dir + "/" + kManifestName).c_str());
  LoadOptions fill = options;
  fill.mirror_dir = report->entry_dir;
  auto model = LoadModelFrom(**store, fill);  // reuses the listing made above
  if (!model.ok()) return model.status();
  if (absl::Status s = WriteManifest(report->entry_dir, source, **listing); !s.ok()) {
    LogWarning("cache", "the model loaded but the cache entry could not be completed",
               {{"entry", report->entry_dir}, {"error", std::string(s.message())}});
  }
  report->outcome = CacheOutcome::kFilled;
  return model;
}

}  // namespace ember::loader

// The node cache: a directory on the node's local disk (an emptyDir or hostPath on NVMe)
// holding byte-identical copies of models loaded from object storage.
//
// A load through the cache lists the source (names, sizes, ETags: one request) and compares
// the listing with the entry's manifest. A valid entry is loaded as a local file source at
// disk speed. Otherwise the model is streamed from the source as usual and written through
// to the entry at the same time (the loader's mirror: files appear under their final names
// only once complete and verified), and the manifest is written last, atomically. So an
// entry killed mid-write, truncated, or whose object changed upstream never matches its
// listing and is fetched again; a local load that fails validation falls back to the source.
//
// Two workers starting at once on one node: the one that fills takes an exclusive lock
// (flock) on the entry; readers take a shared one. A worker that finds the entry invalid
// and cannot take the exclusive lock streams from the source without writing.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "loader/model_loader.h"

namespace ember::loader {

enum class CacheOutcome {
  kDisabled,  // no cache directory
  kHit,       // loaded from the cache
  kFilled,    // loaded from the source and written to the cache
  kBypassed,  // loaded from the source only (see reason)
};
const char* CacheOutcomeName(CacheOutcome outcome);

struct CacheReport {
  CacheOutcome outcome = CacheOutcome::kDisabled;
  std::string entry_dir;  // the entry for this source
  std::string reason;     // why it missed or bypassed, for the log
};

// LoadModel through the node cache at `cache_dir` (empty: no cache). `options.mirror_dir`
// must be empty (the cache sets it).
absl::StatusOr<LoadedModel> LoadModelCached(absl::string_view uri, const LoadOptions& options,
                                            const std::string& cache_dir, CacheReport* report);

}  // namespace ember::loader

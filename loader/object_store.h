// Where a model's bytes come from: an S3 bucket, an HTTP(S) server or a local path,
// behind one interface: list the model's files, read small pieces, and stream chunks of
// large files into the staging ring.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"
#include "loader/retry_policy.h"
#include "loader/staging_ring.h"

namespace ember::loader {

// One file of the model. `size`, `etag` and `last_modified` identify the version being
// loaded: a response that disagrees means the object changed during the load.
struct ObjectInfo {
  std::string name;  // relative to the model root ("config.json")
  uint64_t size = 0;
  std::string etag;
  std::string last_modified;
};

// A small read: a byte range of one object, or the whole object when `length` is empty.
struct SmallRead {
  std::string name;
  uint64_t offset = 0;
  std::optional<uint64_t> length;
  bool optional = false;  // a missing object is not an error: `found` is false
};

struct SmallReadResult {
  bool found = true;
  std::string bytes;
  ObjectInfo info;  // size/etag as the response reported them
};

// Bytes [offset, offset + length) of objects[file].
struct ChunkJob {
  int file = 0;
  uint64_t offset = 0;
  uint64_t length = 0;
};

struct StreamOptions {
  int connections = 8;           // parallel connections (or pread threads)
  RetryPolicy retry;
  long connect_timeout_s = 10;
};

// Called by the streamer for each filled chunk (slot holds job.length bytes). The
// consumer owns the slot from then on and must release it to the ring.
using ChunkConsumer = std::function<void(const ChunkJob&, StagingSlot*)>;

// Counters a streamer updates while it runs (read by progress reporting).
struct StreamCounters {
  std::atomic<uint64_t> bytes_received{0};
  std::atomic<uint64_t> retries{0};
  std::atomic<int64_t> first_byte_ns{0};  // steady-clock ns of the first data byte; 0 = none yet
  std::atomic<uint64_t> bytes_from_peers{0};  // of the chunks delivered, those a peer sent
};

class ObjectStore {
 public:
  virtual ~ObjectStore() = default;

  // "s3://bucket/prefix/name": how errors name an object (never with secrets).
  virtual std::string Describe(absl::string_view name) const = 0;
  // The root itself, for messages.
  virtual std::string Root() const = 0;

  // The objects directly under the model root; for a source that names a single object,
  // that object alone. Sources that cannot list (plain HTTP) return nullopt.
  virtual absl::StatusOr<std::optional<std::vector<ObjectInfo>>> List() = 0;

  // Reads small ranges or objects concurrently.
  virtual absl::StatusOr<std::vector<SmallReadResult>> ReadSmall(
      const std::vector<SmallRead>& reads) = 0;

  // Streams every job into slots taken from `ring`, handing each filled slot to
  // `consume`. Transient faults are retried (resuming at the last byte received);
  // the first permanent fault, or `cancel`, stops the stream and is returned.
  virtual absl::Status Stream(const std::vector<ObjectInfo>& objects,
                              const std::vector<ChunkJob>& jobs, StagingRing& ring,
                              const ChunkConsumer& consume, const StreamOptions& options,
                              StreamCounters& counters, std::atomic<bool>& cancel) = 0;
};

// Opens the store for a source URI: s3://bucket/prefix, http(s)://..., file://path or a
// plain path. S3 credentials, region and endpoint come from the AWS_* environment,
// the Hub token from HF_TOKEN.
absl::StatusOr<std::unique_ptr<ObjectStore>> OpenObjectStore(absl::string_view uri);

// Whether a store's Root() is on this machine (file:// or a path): no node cache or peer
// can make it faster.
bool IsLocalRoot(absl::string_view root);

}  // namespace ember::loader

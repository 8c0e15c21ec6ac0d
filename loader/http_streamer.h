// Streams byte ranges of HTTP(S)/S3 objects into the staging ring over N keep-alive
// connections on one curl multi handle, with resume-from-last-byte retries.
#pragma once

#include <vector>

#include "loader/http_client.h"
#include "loader/object_store.h"

namespace ember::loader {

// objects[i] is where ObjectInfo infos[i] lives. See ObjectStore::Stream.
absl::Status StreamOverHttp(const std::vector<HttpObject>& objects,
                            const std::vector<ObjectInfo>& infos,
                            const std::vector<ChunkJob>& jobs, StagingRing& ring,
                            const ChunkConsumer& consume, const HttpAuth& auth,
                            const StreamOptions& options, StreamCounters& counters,
                            std::atomic<bool>& cancel);

// Small reads (whole small objects, header ranges) for HTTP-based stores; objects[i] is
// where reads[i] lives. 404 (or S3's 403 for a missing key) on an optional read gives
// found = false; any other failure is an error naming the object.
absl::StatusOr<std::vector<SmallReadResult>> ReadSmallOverHttp(
    const std::vector<SmallRead>& reads, const std::vector<HttpObject>& objects,
    const HttpAuth& auth);

}  // namespace ember::loader

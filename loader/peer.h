// Peer fetch: a worker that holds a model hands its files to workers starting with the same
// model, so a scale-out does not ask the object store for the whole model once per pod.
//
// The serving side (ServedModel) answers byte ranges of the model's weight files from what
// the worker holds: the header bytes it read and the tensors in its arena (host memory, or
// read back from the device). It also publishes a manifest: the source URI, each file's
// size, ETag and Last-Modified as the store listed them, and CRC-32 checksums of the file in
// blocks of kPeerBlockBytes from each file's data section, computed from the bytes as they
// arrived at its own load.
//
// The fetching side (OpenWithPeers) wraps the origin store. Listing and small reads go to the
// origin, which stays the authority on what the model is. A peer is used only when its
// manifest names the same source and every weight file with the same size and ETag (or
// Last-Modified) as the origin's listing. Weight ranges are then striped across the peers and
// the origin; every range from a peer is checked against the peer's checksums before the
// loader sees it. A range that fails the check, and every range of a peer that fails, stalls
// or disappears, is fetched again from the origin, so what is loaded is always what the store
// holds.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "loader/layout_plan.h"
#include "loader/object_store.h"
#include "loader/safetensors.h"
#include "nlohmann/json.hpp"

namespace ember::loader {

// The checksum grid: blocks of this size from each file's data section start (header bytes
// always come from the origin).
inline constexpr uint64_t kPeerBlockBytes = 1ull << 20;

// zlib's CRC-32 (what libcurl's own zlib provides; Debian's Abseil predates absl::crc).
uint32_t Crc32(const uint8_t* data, uint64_t length, uint32_t crc = 0);

// Collects the checksum blocks of a set of files from pieces that arrive in any order and
// may straddle blocks (a mirrored load's chunks start at byte 0, the blocks at the data
// section). Thread-safe.
class BlockDigests {
 public:
  explicit BlockDigests(std::vector<uint64_t> data_start, std::vector<uint64_t> file_size);
  // Bytes [offset, offset + length) of `file`; only data-section bytes count.
  void Add(int file, uint64_t offset, const uint8_t* data, uint64_t length);
  // One CRC per block of each file; an error if a block is not exactly covered.
  absl::StatusOr<std::vector<std::vector<uint32_t>>> Finish();

 private:
  struct Piece {
    uint64_t offset;  // within the block
    uint64_t length;
    uint32_t crc;
  };
  std::vector<uint64_t> data_start_, file_size_;
  std::mutex mu_;
  std::vector<std::vector<std::vector<Piece>>> pieces_;  // [file][block]
};

struct PeerObject {
  ObjectInfo info;
  uint64_t data_start = 0;
  std::vector<uint32_t> block_crc;  // of [data_start + i * kPeerBlockBytes, ...)
};

nlohmann::json PeerManifestJson(const std::string& source, const std::vector<PeerObject>& objects);
// Parses a peer's manifest; an error names what is wrong.
absl::StatusOr<std::vector<PeerObject>> ParsePeerManifest(const nlohmann::json& manifest,
                                                           std::string* source);

class Arena;  // loader/model_loader.h

// What a loaded model offers its peers: the weight files' bytes, rebuilt from the header
// bytes and the arena. Holds the arena alive.
class ServedModel {
 public:
  ServedModel(std::string source, std::vector<PeerObject> objects,
              std::vector<SafetensorsHeader> headers, std::vector<std::string> prefixes,
              std::shared_ptr<const Arena> arena);

  const std::vector<PeerObject>& objects() const { return objects_; }
  // The index of the weight file called `name`, or -1.
  int Find(absl::string_view name) const;
  // Copies bytes [offset, offset + length) of file `file` into `out`.
  absl::Status Read(int file, uint64_t offset, uint64_t length, uint8_t* out) const;
  nlohmann::json Manifest() const { return PeerManifestJson(source_, objects_); }
  // The same bytes named as `source` lists them (a model loaded from the node cache).
  std::shared_ptr<const ServedModel> FromOrigin(std::string source,
                                                const std::vector<ObjectInfo>& listing) const;

 private:
  std::string source_;
  std::vector<PeerObject> objects_;
  std::vector<SafetensorsHeader> headers_;
  std::vector<std::string> prefixes_;
  LayoutPlan plan_;
  std::shared_ptr<const Arena> arena_;
};

struct PeerOptions {
  // "HOST:PORT" entries, and "dns:NAME:PORT" entries resolved to every address of NAME (a
  // headless Service lists the ready workers).
  std::vector<std::string> peers;
  std::string token;                // sent as a bearer token
  double manifest_timeout_s = 2;    // a peer slower than this to answer is skipped
  double stall_timeout_s = 3;       // a peer range that moves no byte this long goes to the store
};

// The token peers share: the first line of `file`, else the EMBER_PEER_TOKEN variable; at
// least 16 characters.
absl::StatusOr<std::string> ReadPeerToken(const std::string& file);

// Splits "a:1,b:2" into entries; a malformed entry is an error naming it.
absl::StatusOr<std::vector<std::string>> ParsePeerList(absl::string_view list);

// The origin store, fetching weight ranges from peers where one holds the same version.
std::unique_ptr<ObjectStore> OpenWithPeers(std::unique_ptr<ObjectStore> origin,
                                           PeerOptions options);

}  // namespace ember::loader

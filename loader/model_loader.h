// Loading a model: find its files, read and validate the safetensors headers, plan the
// arena, and stream every tensor's bytes through the staging ring into host or device
// memory. The result is the weight map the engine binds to.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "loader/dtype.h"
#include "loader/retry_policy.h"

namespace ember::loader {

class ObjectStore;  // loader/object_store.h
class ServedModel;  // loader/peer.h
struct WeightView;  // below

enum class Target { kHost, kDevice, kNone };

struct LoadProgress {
  uint64_t bytes_done = 0;   // bytes that reached their destination
  uint64_t bytes_total = 0;
  double seconds = 0;        // since the load started
  uint64_t retries = 0;
};

struct LoadOptions {
  Target target = Target::kHost;
  int connections = 8;                      // parallel ranged GETs (or pread threads)
  uint64_t chunk_bytes = 16ull << 20;       // one ranged GET fills one staging slot
  uint64_t staging_bytes = 256ull << 20;    // the whole staging ring, whatever the model's size
  int copy_threads = 2;
  RetryPolicy retry;
  long connect_timeout_s = 10;
  // When set, every file of the model is also written here, byte-identical to the
  // source (files appear only once complete and verified).
  std::string mirror_dir;
  // A model directory must hold tokenizer.json unless this is false.
  bool require_tokenizer = true;
  // Called about ten times a second from the loading thread, and once at the end.
  std::function<void(const LoadProgress&)> on_progress;
  // Called once from the loading thread with the model's small files (config.json,
  // tokenizer.json, ...) as soon as they and every header have been read, before the weights
  // stream: a caller can parse them while the weights arrive. Must not block for long.
  std::function<void(const std::map<std::string, std::string>&)> on_files;
  // Called once from the loading thread right after the memory for the weights (host or
  // device arena) is allocated, before any weight byte moves: a caller can size and allocate
  // what else it needs from the memory left while the weights stream.
  std::function<void(uint64_t arena_bytes)> on_arena;
  // Computing while the weights arrive (a worker's first request runs layer by layer as
  // each layer lands). Only for a load with an arena (target host or device), and not for a
  // node cache's copy (LoadModelCached: the source may follow it):
  //   on_layout: called once from the loading thread right after the arena is allocated,
  //     before any weight byte moves, with every tensor's final place (the views
  //     LoadedModel::weights will hold).
  //   on_tensor: called once per tensor, from a loading thread, when its last byte is in
  //     place (on a device: the copy has completed). Must not block.
  //   on_abandon: when a load that called on_layout fails, called with the error before the
  //     arena is freed; the caller must have stopped reading the views when it returns.
  //   tensor_rank: the order the caller wants tensors in: chunks are fetched by the lowest
  //     rank among the tensors they hold (ties in file order). Unset: file order, which is
  //     alphabetical in most checkpoints ("layers.10." before "layers.2.").
  std::function<void(const std::map<std::string, WeightView>&)> on_layout;
  std::function<void(const std::string& tensor)> on_tensor;
  std::function<void(const absl::Status& error)> on_abandon;
  std::function<int(const std::string& tensor)> tensor_rank;
  // With Target::kDevice: whether the caller will compute on the device, asked once the
  // headers are read (so a slow driver start overlaps the listing) and only when a GPU is
  // usable at all. False loads into host memory, as without a GPU. Unset: yes.
  std::function<bool()> device_wanted;
  // Peers to fetch weight ranges from ("HOST:PORT" or "dns:NAME:PORT", see loader/peer.h),
  // and the token they want. Empty: the store alone.
  std::vector<std::string> peers;
  std::string peer_token;
  // Checksum the weights as they arrive and keep what peers need (LoadedModel::served).
  bool serve_to_peers = false;
};

// One tensor in the arena.
struct WeightView {
  std::string name;
  Dtype dtype;
  std::vector<uint64_t> shape;
  void* data = nullptr;  // 256-byte aligned; device memory when on_device
  uint64_t nbytes = 0;
  bool on_device = false;
  std::string file;  // the shard it came from
};

// Seconds since the load started at which each phase ended.
struct LoadTimings {
  double headers_s = 0;       // model files and every safetensors header read and validated
  double first_byte_s = 0;    // first tensor byte received
  double network_done_s = 0;  // last byte received
  double copy_done_s = 0;     // last byte in its destination (host or device)
  double total_s = 0;
};

// Host or device memory holding all tensors; frees itself.
class Arena {
 public:
  static absl::StatusOr<std::unique_ptr<Arena>> Allocate(uint64_t bytes, bool on_device);
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  uint8_t* data() const { return data_; }
  uint64_t bytes() const { return bytes_; }
  bool on_device() const { return on_device_; }

 private:
  Arena() = default;
  uint8_t* data_ = nullptr;
  uint64_t bytes_ = 0;
  bool on_device_ = false;
};

struct LoadedModel {
  std::string source;
  std::map<std::string, std::string> files;  // small files by name: config.json, tokenizer.json...
  std::vector<std::string> weight_files;     // the safetensors files, in load order
  std::map<std::string, WeightView> weights;
  std::shared_ptr<Arena> arena;              // null for Target::kNone
  Target target = Target::kHost;
  uint64_t bytes_streamed = 0;               // safetensors bytes moved through the ring
  uint64_t staging_bytes = 0;                // the ring's actual size
  uint64_t retries = 0;
  uint64_t bytes_from_peers = 0;             // of bytes_streamed, those peers sent
  LoadTimings timings;
  // With LoadOptions::serve_to_peers and an arena: what this model offers other workers.
  std::shared_ptr<const ServedModel> served;

  const WeightView* Find(const std::string& name) const {
    auto it = weights.find(name);
    return it == weights.end() ? nullptr : &it->second;
  }
};

// Loads the model at `uri` (s3://, http(s)://, file:// or a path: a model directory or
// one .safetensors file). Fails with one error naming the source, the object and the
// fault; a model is returned only when every byte has arrived and been checked.
absl::StatusOr<LoadedModel> LoadModel(absl::string_view uri, const LoadOptions& options);

// The store for `uri` (OpenObjectStore), fetching from options.peers as well when given and
// the source is not local.
absl::StatusOr<std::unique_ptr<ObjectStore>> OpenModelStore(absl::string_view uri,
                                                            const LoadOptions& options);

// The same from a store already opened (OpenModelStore), e.g. one already listed.
absl::StatusOr<LoadedModel> LoadModelFrom(ObjectStore& store, const LoadOptions& options);

}  // namespace ember::loader

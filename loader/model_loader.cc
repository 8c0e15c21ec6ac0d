// The load pipeline: network (or disk) -> staging ring -> copy threads -> arena, all
// stages running at once, plus the optional byte-identical mirror of the files.
#include "loader/model_loader.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <deque>
#include <limits>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "loader/device_memory.h"
#include "loader/layout_plan.h"
#include "loader/log.h"
#include "loader/model_manifest.h"
#include "loader/object_store.h"
#include "loader/peer.h"
#include "loader/status_macros.h"

namespace ember::loader {

absl::StatusOr<std::unique_ptr<Arena>> Arena::Allocate(uint64_t bytes, bool on_device) {
  std::unique_ptr<Arena> arena(new Arena());
  arena->bytes_ = bytes;
  arena->on_device_ = on_device;
  if (on_device) {
    auto ptr = AllocDevice(bytes);
    if (!ptr.ok()) return ptr.status();
    arena->data_ = static_cast<uint8_t*>(*ptr);
  } else {
    // Page-aligned, so every 256-byte-aligned arena offset is aligned in memory.
    auto ptr = AllocHostPages(bytes, "host arena");
    if (!ptr.ok()) return ptr.status();
    arena->data_ = static_cast<uint8_t*>(*ptr);
  }
  return arena;
}

Arena::~Arena() {
  if (on_device_) {
    FreeDevice(data_);
  } else {
    FreeHostPages(data_, bytes_);
  }
}

namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Files written next to their final name and renamed only once complete, so a reader
// never sees a partial file and a failed load leaves nothing behind.
class Mirror {
 public:
  absl::Status Open(const std::string& dir, const std::vector<ObjectInfo>& objects) {
    dir_ = dir;
    if (mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
      return absl::PermissionDeniedError(absl::StrCat(dir, ": cannot create: ", std::strerror(errno)));
    }
    for (const ObjectInfo& o : objects) {
      const std::string path = Partial(o.name);
      const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (fd < 0) return absl::PermissionDeniedError(absl::StrCat(path, ": ", std::strerror(errno)));
      fds_.push_back(fd);
      names_.push_back(o.name);
      if (ftruncate(fd, static_cast<off_t>(o.size)) != 0) {
        return absl::ResourceExhaustedError(absl::StrCat(path, ": ", std::strerror(errno)));
      }
    }
    return absl::OkStatus();
  }
  absl::Status Write(int file, uint64_t offset, const uint8_t* data, uint64_t length) {
    uint64_t done = 0;
    while (done < length) {
      const ssize_t n = pwrite(fds_[file], data + done, length - done, offset + done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        return absl::ResourceExhaustedError(
            absl::StrCat(Partial(names_[file]), ": write failed: ", std::strerror(errno)));
      }
      done += n;
    }
    return absl::OkStatus();
  }
  absl::Status WriteWhole(const std::string& name, const std::string& bytes) {
    const std::string path = Partial(name);
    const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return absl::PermissionDeniedError(absl::StrCat(path, ": ", std::strerror(errno)));
    fds_.push_back(fd);
    names_.push_back(name);
    return Write(static_cast<int>(fds_.size()) - 1, 0, reinterpret_cast<const uint8_t*>(bytes.data()),
                 bytes.size());
  }
  // Makes every file visible under its final name.
  absl::Status Commit() {
    for (size_t i = 0; i < fds_.size(); ++i) {
      if (fsync(fds_[i]) != 0 || close(fds_[i]) != 0) {
        return absl::DataLossError(absl::StrCat(Partial(names_[i]), ": ", std::strerror(errno)));
      }
      fds_[i] = -1;
      const std::string final_path = absl::StrCat(dir_, "/", names_[i]);
      if (rename(Partial(names_[i]).c_str(), final_path.c_str()) != 0) {
        return absl::DataLossError(absl::StrCat(final_path, ": ", std::strerror(errno)));
      }
    }
    names_.clear();
    fds_.clear();
    return absl::OkStatus();
  }
  ~Mirror() {  // not committed: remove the partial files
    for (size_t i = 0; i < fds_.size(); ++i) {
      if (fds_[i] >= 0) close(fds_[i]);
      unlink(Partial(names_[i]).c_str());
    }
  }

 private:
  std::string Partial(const std::string& name) const {
    return absl::StrCat(dir_, "/.", name, ".partial");
  }
  std::string dir_;
  std::vector<int> fds_;
  std::vector<std::string> names_;
};

// A staging slot and the chunk it holds: filled and waiting for a copy thread, or (device
// loads) with its copies enqueued and waiting for them to finish.
struct FilledSlot {
  ChunkJob job;
  StagingSlot* slot = nullptr;
};

// Slots between two stages, in order. Bounded by the ring: each item holds a slot.
class SlotQueue {
 public:
  void Push(const FilledSlot& item) {
    absl::MutexLock lock(&mu_);
    items_.push_back(item);
  }
  // Blocks until an item arrives or the queue is closed and empty.
  bool Pop(FilledSlot* item) {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](SlotQueue* q) ABSL_EXCLUSIVE_LOCKS_REQUIRED(q->mu_) {
          return q->closed_ || !q->items_.empty();
        },
        this));
    if (items_.empty()) return false;
    *item = items_.front();
    items_.pop_front();
    return true;
  }
  void Close() {
    absl::MutexLock lock(&mu_);
    closed_ = true;
  }

 private:
  absl::Mutex mu_;
  std::deque<FilledSlot> items_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ObjectStore>> OpenModelStore(absl::string_view uri,
                                                            const LoadOptions& options) {
  std::unique_ptr<ObjectStore> store;
  EMBER_ASSIGN_OR_RETURN(store, OpenObjectStore(uri));
  if (options.peers.empty() || IsLocalRoot(store->Root())) return store;
  return OpenWithPeers(std::move(store), PeerOptions{options.peers, options.peer_token});
}

absl::StatusOr<LoadedModel> LoadModel(absl::string_view uri, const LoadOptions& options) {
  auto store = OpenModelStore(uri, options);
  if (!store.ok()) return store.status();
  return LoadModelFrom(**store, options);
}

absl::StatusOr<LoadedModel> LoadModelFrom(ObjectStore& store, const LoadOptions& options) {
  const Clock::time_point start = Clock::now();
  if (options.chunk_bytes == 0 || options.staging_bytes < options.chunk_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("staging bytes (", options.staging_bytes,
                     ") must hold at least one chunk of ", options.chunk_bytes, " bytes"));
  }

  const bool mirroring = !options.mirror_dir.empty();
  auto manifest_or = ReadManifest(store, mirroring, options.require_tokenizer);
  if (!manifest_or.ok()) return manifest_or.status();
  ModelManifest& manifest = *manifest_or;

  LoadedModel model;
  model.source = store.Root();
  model.files = manifest.small_files;
  model.timings.headers_s = SecondsSince(start);
  if (options.on_files) options.on_files(model.files);

  Target target = options.target;
  if (target == Target::kDevice && !CudaAvailable()) {
    LogWarning("loader", "no usable GPU: loading into host memory instead of the device");
    target = Target::kHost;
  } else if (target == Target::kDevice && options.device_wanted && !options.device_wanted()) {
    LogInfo("loader", "the GPU is not used for compute: loading into host memory");
    target = Target::kHost;
  }
  model.target = target;

  std::vector<const SafetensorsHeader*> headers;
  for (const SafetensorsHeader& h : manifest.headers) headers.push_back(&h);
  const LayoutPlan plan(headers);
  if (target != Target::kNone) {
    auto arena = Arena::Allocate(plan.arena_bytes(), target == Target::kDevice);
    if (!arena.ok()) return arena.status();
    model.arena = *std::move(arena);
  }
  if (options.on_arena) options.on_arena(plan.arena_bytes());
  for (size_t f = 0; f < manifest.weight_objects.size(); ++f) {
    model.weight_files.push_back(manifest.weight_objects[f].name);
    for (const PlacedTensor& t : plan.tensors(static_cast<int>(f))) {
      WeightView view;
      view.name = t.info->name;
      view.dtype = t.info->dtype;
      view.shape = t.info->shape;
      view.nbytes = t.info->nbytes();
      view.on_device = target == Target::kDevice;
      view.data = model.arena ? model.arena->data() + t.arena_offset : nullptr;
      view.file = manifest.weight_objects[f].name;
      model.weights[view.name] = std::move(view);
    }
  }
  // A caller computing while the weights arrive gets their places now, each tensor as it
  // lands, and, should the load fail, word before the arena goes.
  const bool announced = model.arena != nullptr && options.on_layout;
  if (announced) options.on_layout(model.weights);
  std::vector<std::unique_ptr<std::atomic<uint64_t>[]>> tensor_left;  // bytes still to land
  if (announced) {
    for (int f = 0; f < plan.files(); ++f) {
      const std::vector<PlacedTensor>& placed = plan.tensors(f);
      tensor_left.emplace_back(new std::atomic<uint64_t>[placed.size()]);
      for (size_t t = 0; t < placed.size(); ++t) tensor_left[f][t].store(placed[t].info->nbytes());
    }
  }
  // The bytes of `job` are in place: tensors whose last bytes they were are announced.
  auto arrived = [&](const ChunkJob& job) {
    if (!announced || !options.on_tensor) return;
    plan.ForEachPiece(job.file, job.offset, job.length, [&](size_t t, uint64_t, uint64_t, uint64_t bytes) {
      if (tensor_left[job.file][t].fetch_sub(bytes) == bytes) {
        options.on_tensor(plan.tensors(job.file)[t].info->name);
      }
    });
  };

  StreamCounters counters;
  uint64_t total = 0;
  std::optional<BlockDigests> digests;
  // Streaming and copying, as one call so that any failure is announced (on_abandon) before
  // the arena goes.
  const absl::Status stream_result = [&]() -> absl::Status {
    Mirror mirror;
    if (mirroring) {
      if (absl::Status s = mirror.Open(options.mirror_dir, manifest.weight_objects); !s.ok())
        return s;
      for (const auto& [name, bytes] : manifest.small_files) {
        if (absl::Status s = mirror.WriteWhole(name, bytes); !s.ok()) return s;
      }
    }

    // Chunks: the data sections (and, when mirroring, the headers too).
    std::vector<ChunkJob> jobs;
    for (size_t f = 0; f < manifest.weight_objects.size(); ++f) {
      const uint64_t size = manifest.weight_objects[f].size;
      for (uint64_t off = mirroring ? 0 : manifest.headers[f].data_start(); off < size;
           off += options.chunk_bytes) {
        const uint64_t len = std::min(options.chunk_bytes, size - off);
        jobs.push_back({static_cast<int>(f), off, len});
        total += len;
      }
    }

    // In the order the caller wants the tensors (a chunk goes by its most wanted tensor).
    if (announced && options.tensor_rank) {
      std::vector<std::pair<int, size_t>> order;  // rank, position in file order
      for (size_t i = 0; i < jobs.size(); ++i) {
        int rank = std::numeric_limits<int>::min();  // header bytes only (a mirror's): first
        bool any = false;
        plan.ForEachPiece(jobs[i].file, jobs[i].offset, jobs[i].length,
                          [&](size_t t, uint64_t, uint64_t, uint64_t) {
                            const int r =
                                options.tensor_rank(plan.tensors(jobs[i].file)[t].info->name);
                            rank = any ? std::min(rank, r) : r;
                            any = true;
                          });
        order.emplace_back(rank, i);
      }
      std::stable_sort(order.begin(), order.end());
      std::vector<ChunkJob> sorted;
      for (const auto& [rank, i] : order) sorted.push_back(jobs[i]);
      jobs = std::move(sorted);
    }

    const int slots = static_cast<int>(std::min<uint64_t>(
        options.staging_bytes / options.chunk_bytes, std::max<uint64_t>(jobs.size(), 1)));
    auto ring_or = StagingRing::Create(options.chunk_bytes, std::max(1, slots));
    if (!ring_or.ok()) return ring_or.status();
    StagingRing& ring = **ring_or;
    model.staging_bytes = ring.total_bytes();

    std::atomic<bool> cancel{false};
    std::atomic<uint64_t> bytes_done{0};
    absl::Mutex error_mu;
    absl::Status copy_error;
    auto fail = [&](absl::Status s) {
      absl::MutexLock lock(&error_mu);
      if (copy_error.ok()) copy_error = std::move(s);
      cancel.store(true);
      ring.Close();
    };

    // Device loads: a copy thread enqueues a chunk's copies, records the slot's event and
    // moves on to the next chunk; the releaser thread frees each slot once its event says the
    // copies out of it finished. So no copy thread waits for its stream, and no slot is
    // reused while a copy may still read it, on the error paths too.
    std::vector<CopyEvent> slot_events;
    if (target == Target::kDevice) {
      for (int i = 0; i < ring.slots(); ++i) {
        auto event = CopyEvent::Create();
        if (!event.ok()) return event.status();
        slot_events.push_back(*std::move(event));
      }
    }
    // Checksums for peers, from the bytes as they arrive.
    if (options.serve_to_peers && target != Target::kNone) {
      std::vector<uint64_t> data_start, sizes;
      for (size_t f = 0; f < manifest.headers.size(); ++f) {
        data_start.push_back(manifest.headers[f].data_start());
        sizes.push_back(manifest.weight_objects[f].size);
      }
      digests.emplace(std::move(data_start), std::move(sizes));
    }
    SlotQueue queue, in_flight;
    auto copy_worker = [&] {
      std::optional<CopyStream> stream;
      if (target == Target::kDevice) {
        auto s = CopyStream::Create();
        if (!s.ok()) return fail(s.status());
        stream.emplace(*std::move(s));
      }
      FilledSlot filled;
      while (queue.Pop(&filled)) {
        const ChunkJob& job = filled.job;
        StagingSlot* slot = filled.slot;
        absl::Status status;
        if (digests) digests->Add(job.file, job.offset, slot->data, job.length);
        if (mirroring) status = mirror.Write(job.file, job.offset, slot->data, job.length);
        if (status.ok() && target != Target::kNone) {
          plan.ForEachPiece(job.file, job.offset, job.length,
                            [&](size_t, uint64_t arena_offset, uint64_t in_chunk, uint64_t bytes) {
                              if (!status.ok()) return;
                              uint8_t* dst = model.arena->data() + arena_offset;
                              if (stream) {
                                status = stream->CopyToDevice(dst, slot->data + in_chunk, bytes);
                              } else {
                                std::memcpy(dst, slot->data + in_chunk, bytes);
                              }
                            });
        }
        if (!stream) {
          ring.Release(slot);
          if (!status.ok()) return fail(status);
          bytes_done.fetch_add(job.length);
          arrived(job);
          continue;
        }
        // The event covers whatever was enqueued, also when a later copy failed. Should the
        // record itself fail, the slot stays taken: the load fails, and the ring is freed only
        // after the device is idle.
        const absl::Status recorded = stream->Record(slot_events[slot->index]);
        if (recorded.ok()) {
          // After a failed copy the chunk's bytes do not count as landed: length 0.
          in_flight.Push({status.ok() ? job : ChunkJob{job.file, job.offset, 0}, slot});
        }
        if (status.ok()) status = recorded;
        if (!status.ok()) return fail(status);
      }
    };
    std::thread releaser;
    if (target == Target::kDevice) {
      releaser = std::thread([&] {
        FilledSlot landed;
        while (in_flight.Pop(&landed)) {
          const absl::Status copied = slot_events[landed.slot->index].Wait();
          if (!copied.ok()) {
            fail(copied);
            continue;  // the slot stays taken, as above
          }
          ring.Release(landed.slot);
          bytes_done.fetch_add(landed.job.length);
          arrived(landed.job);
        }
      });
    }

    StreamOptions stream_options;
    stream_options.connections = options.connections;
    stream_options.retry = options.retry;
    stream_options.connect_timeout_s = options.connect_timeout_s;
    absl::Status stream_status;
    absl::Notification streamed;
    std::thread streamer([&] {
      stream_status = store.Stream(
          manifest.weight_objects, jobs, ring,
          [&](const ChunkJob& job, StagingSlot* slot) {
            queue.Push({job, slot});
          },
          stream_options, counters, cancel);
      if (!stream_status.ok()) {
        cancel.store(true);
        ring.Close();
      }
      model.timings.network_done_s = SecondsSince(start);
      queue.Close();
      streamed.Notify();
    });
    std::vector<std::thread> copiers;
    for (int i = 0; i < std::max(1, options.copy_threads); ++i) copiers.emplace_back(copy_worker);

    auto report = [&] {
      if (!options.on_progress) return;
      options.on_progress({bytes_done.load(), total, SecondsSince(start), counters.retries.load()});
    };
    while (!streamed.WaitForNotificationWithTimeout(absl::Milliseconds(100))) report();
    streamer.join();
    for (std::thread& t : copiers) t.join();
    in_flight.Close();
    if (releaser.joinable()) releaser.join();
    report();

    if (!stream_status.ok() && !absl::IsCancelled(stream_status)) return stream_status;
    {
      absl::MutexLock lock(&error_mu);
      if (!copy_error.ok()) return copy_error;
    }
    if (!stream_status.ok()) return stream_status;
    if (bytes_done.load() != total) {
      return absl::DataLossError(absl::StrCat(store.Root(), ": ", bytes_done.load(), " of ", total,
                                              " bytes arrived; the load is incomplete"));
    }
    if (mirroring) {
      if (absl::Status s = mirror.Commit(); !s.ok()) return s;
    }

    return absl::OkStatus();
  }();
  if (!stream_result.ok()) {
    if (announced && options.on_abandon) options.on_abandon(stream_result);
    return stream_result;
  }
  model.timings.copy_done_s = SecondsSince(start);
  const int64_t first_ns = counters.first_byte_ns.load();
  model.timings.first_byte_s =
      first_ns == 0 ? 0
                    : std::chrono::duration<double>(Clock::time_point(std::chrono::nanoseconds(first_ns)) - start)
                          .count();
  model.bytes_streamed = total;
  model.retries = counters.retries.load();
  model.bytes_from_peers = counters.bytes_from_peers.load();
  if (digests) {  // last: the plan above points into manifest.headers, moved here
    absl::StatusOr<std::vector<std::vector<uint32_t>>> blocks = digests->Finish();
    if (!blocks.ok()) return blocks.status();
    std::vector<PeerObject> offered;
    for (size_t f = 0; f < manifest.weight_objects.size(); ++f) {
      offered.push_back({manifest.weight_objects[f], manifest.headers[f].data_start(),
                         std::move((*blocks)[f])});
    }
    model.served = std::make_shared<ServedModel>(store.Root(), std::move(offered),
                                                 std::move(manifest.headers),
                                                 std::move(manifest.prefixes), model.arena);
  }
  model.timings.total_s = SecondsSince(start);
  return model;
}

}  // namespace ember::loader

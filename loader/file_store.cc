// Local files as a model source (NVMe, a node cache, a mounted volume): a directory or
// one .safetensors file, read with large parallel preads into the staging ring.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "loader/stores.h"

namespace ember::loader {
namespace {

std::string ErrnoText(int err) { return std::strerror(err); }

// Identity of a file version: size plus modification time in nanoseconds.
std::string MtimeTag(const struct stat& st) {
  return absl::StrCat(st.st_mtim.tv_sec, ".", st.st_mtim.tv_nsec);
}

class FileStore : public ObjectStore {
 public:
  FileStore(std::string dir, std::string single) : dir_(std::move(dir)), single_(std::move(single)) {}

  std::string Root() const override { return single_.empty() ? dir_ : Path(single_); }
  std::string Describe(absl::string_view name) const override { return Path(name); }

  absl::StatusOr<std::optional<std::vector<ObjectInfo>>> List() override {
    std::vector<ObjectInfo> objects;
    if (!single_.empty()) {
      auto info = Stat(single_);
      if (!info.ok()) return info.status();
      objects.push_back(*info);
      return std::optional<std::vector<ObjectInfo>>(std::move(objects));
    }
    DIR* dir = opendir(dir_.c_str());
    if (!dir) {
      return absl::NotFoundError(absl::StrCat(dir_, ": cannot open the model directory: ",
                                              ErrnoText(errno)));
    }
    while (dirent* entry = readdir(dir)) {
      const std::string name = entry->d_name;
      if (name == "." || name == "..") continue;
      auto info = Stat(name);
      if (info.ok()) objects.push_back(*info);  // skips subdirectories and specials
    }
    closedir(dir);
    return std::optional<std::vector<ObjectInfo>>(std::move(objects));
  }

  absl::StatusOr<std::vector<SmallReadResult>> ReadSmall(const std::vector<SmallRead>& reads) override {
    std::vector<SmallReadResult> results;
    for (const SmallRead& r : reads) {
      SmallReadResult out;
      out.info.name = r.name;
      auto info = Stat(r.name);
      if (!info.ok()) {
        if (r.optional && absl::IsNotFound(info.status())) {
          out.found = false;
          results.push_back(std::move(out));
          continue;
        }
        return info.status();
      }
      out.info = *info;
      const uint64_t begin = std::min(r.offset, info->size);
      const uint64_t length = std::min(r.length.value_or(info->size), info->size - begin);
      out.bytes.resize(length);
      const int fd = open(Path(r.name).c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) return absl::NotFoundError(absl::StrCat(Path(r.name), ": ", ErrnoText(errno)));
      absl::Status status = ReadFully(fd, out.bytes.data(), length, begin, r.name);
      close(fd);
      if (!status.ok()) return status;
      results.push_back(std::move(out));
    }
    return results;
  }

  absl::Status Stream(const std::vector<ObjectInfo>& objects, const std::vector<ChunkJob>& jobs,
                      StagingRing& ring, const ChunkConsumer& consume,
                      const StreamOptions& options, StreamCounters& counters,
                      std::atomic<bool>& cancel) override {
    std::vector<int> fds;
    absl::Status status;
    for (const ObjectInfo& o : objects) {
      const int fd = open(Path(o.name).c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) {
        status = absl::NotFoundError(absl::StrCat(Path(o.name), ": ", ErrnoText(errno)));
        break;
      }
      posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
      fds.push_back(fd);
    }
    if (status.ok()) status = CheckUnchanged(objects, fds);
    if (status.ok()) {
      std::atomic<size_t> next{0};
      absl::Mutex mu;
      auto worker = [&] {
        while (!cancel.load()) {
          const size_t i = next.fetch_add(1);
          if (i >= jobs.size()) return;
          const ChunkJob& job = jobs[i];
          StagingSlot* slot = ring.Acquire();
          if (!slot) return;  // closed: the load is stopping
          absl::Status s = ReadFully(fds[job.file], slot->data, job.length, job.offset,
                                     objects[job.file].name);
          if (!s.ok()) {
            ring.Release(slot);
            absl::MutexLock lock(&mu);
            if (status.ok()) status = s;
            cancel.store(true);
            return;
          }
          counters.bytes_received.fetch_add(job.length);
          int64_t zero = 0;
          counters.first_byte_ns.compare_exchange_strong(
              zero, std::chrono::duration_cast<std::chrono::nanoseconds>(
                        std::chrono::steady_clock::now().time_since_epoch())
                        .count());
          consume(job, slot);
        }
      };
      std::vector<std::thread> threads;
      for (int t = 0; t < std::max(1, options.connections); ++t) threads.emplace_back(worker);
      for (std::thread& t : threads) t.join();
      if (status.ok() && cancel.load()) status = absl::CancelledError("load cancelled");
      if (status.ok()) status = CheckUnchanged(objects, fds);
    }
    for (int fd : fds) close(fd);
    return status;
  }

 private:
  std::string Path(absl::string_view name) const {
    return dir_ == "/" ? absl::StrCat("/", name) : absl::StrCat(dir_, "/", name);
  }

  absl::StatusOr<ObjectInfo> Stat(absl::string_view name) const {
    struct stat st;
    if (stat(Path(name).c_str(), &st) != 0) {
      const int err = errno;
      return absl::Status(err == ENOENT ? absl::StatusCode::kNotFound
                                        : absl::StatusCode::kPermissionDenied,
                          absl::StrCat(Path(name), ": ", ErrnoText(err)));
    }
    if (!S_ISREG(st.st_mode)) {
      return absl::FailedPreconditionError(absl::StrCat(Path(name), ": not a regular file"));
    }
    return ObjectInfo{std::string(name), static_cast<uint64_t>(st.st_size), "", MtimeTag(st)};
  }

  // The file must still be the version the headers were read from.
  absl::Status CheckUnchanged(const std::vector<ObjectInfo>& objects, const std::vector<int>& fds) const {
    for (size_t i = 0; i < objects.size(); ++i) {
      struct stat st;
      if (fstat(fds[i], &st) != 0) return absl::InternalError(ErrnoText(errno));
      if (static_cast<uint64_t>(st.st_size) != objects[i].size ||
          MtimeTag(st) != objects[i].last_modified) {
        return absl::AbortedError(absl::StrCat(Path(objects[i].name),
                                               ": the file changed during the load; nothing was "
                                               "loaded: retry once it is written"));
      }
    }
    return absl::OkStatus();
  }

  absl::Status ReadFully(int fd, uint8_t* dst, uint64_t length, uint64_t offset,
                         absl::string_view name) const {
    uint64_t done = 0;
    while (done < length) {
      // Large reads (up to 64 MiB each) keep NVMe queues deep with few syscalls.
      const size_t want = static_cast<size_t>(std::min<uint64_t>(length - done, 64 << 20));
      const ssize_t n = pread(fd, dst + done, want, static_cast<off_t>(offset + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return absl::DataLossError(absl::StrCat(Path(name), ": read at byte ", offset + done,
                                                " failed: ", ErrnoText(errno)));
      }
      if (n == 0) {
        return absl::AbortedError(absl::StrCat(Path(name), ": file ended at byte ", offset + done,
                                               "; it changed during the load"));
      }
      done += static_cast<uint64_t>(n);
    }
    return absl::OkStatus();
  }
  absl::Status ReadFully(int fd, char* dst, uint64_t length, uint64_t offset,
                         absl::string_view name) const {
    return ReadFully(fd, reinterpret_cast<uint8_t*>(dst), length, offset, name);
  }

  std::string dir_;
  std::string single_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ObjectStore>> OpenFileStore(absl::string_view path_view) {
  std::string path(path_view);
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat(path, ": ", ErrnoText(errno)));
  }
  if (S_ISDIR(st.st_mode)) return std::unique_ptr<ObjectStore>(new FileStore(path, ""));
  const size_t cut = path.rfind('/');
  std::string dir = cut == std::string::npos ? "." : path.substr(0, cut == 0 ? 1 : cut);
  std::string name = cut == std::string::npos ? path : path.substr(cut + 1);
  if (!IsSafetensorsName(name)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": a model source is a directory or a .safetensors file"));
  }
  return std::unique_ptr<ObjectStore>(new FileStore(std::move(dir), std::move(name)));
}

}  // namespace ember::loader

// The CUDA runtime calls the loader needs (pinned host memory, a device arena, async
// copies with events), behind functions that also build and run without CUDA: with no
// toolkit, no driver or no GPU, CudaAvailable() is false (said once in the log) and the
// host path is used.
#pragma once

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ember::loader {

// True when a CUDA device can be used. The first call probes the runtime and logs the
// outcome once; later calls return the cached answer.
bool CudaAvailable();

// Name and memory of device 0, for reports ("NVIDIA H100 80GB HBM3, 79.1 GiB").
std::string CudaDeviceDescription();

// Anonymous, page-aligned host pages backed lazily, as transparent huge pages where the
// kernel allows (a 1 GiB buffer then takes 512 page faults instead of 262,144 while it is
// first written). `what` names the buffer in the error. Zero bytes is allowed.
absl::StatusOr<void*> AllocHostPages(size_t bytes, absl::string_view what);
void FreeHostPages(void* ptr, size_t bytes);

// Page-locked host memory: cudaHostAlloc when CUDA is up, otherwise aligned memory
// locked with mlock where the limit allows (plain aligned memory where it does not).
absl::StatusOr<void*> AllocStaging(size_t bytes);
void FreeStaging(void* ptr, size_t bytes);

absl::StatusOr<void*> AllocDevice(size_t bytes);
void FreeDevice(void* ptr);

class CopyStream;

// A CUDA event marking how far a copy stream has got: recorded after the copies out of a
// staging slot, waited for before the slot is reused.
class CopyEvent {
 public:
  static absl::StatusOr<CopyEvent> Create();
  CopyEvent(CopyEvent&& other) noexcept;
  CopyEvent& operator=(CopyEvent&& other) noexcept;
  ~CopyEvent();

  // Blocks until the work before the latest Record() has finished (at once if never
  // recorded).
  absl::Status Wait();

 private:
  friend class CopyStream;
  CopyEvent() = default;
  void* event_ = nullptr;  // cudaEvent_t
};

// A non-blocking CUDA stream for host-to-device copies; each copy thread owns one.
class CopyStream {
 public:
  static absl::StatusOr<CopyStream> Create();
  CopyStream(CopyStream&& other) noexcept;
  CopyStream& operator=(CopyStream&& other) noexcept;
  ~CopyStream();

  // Enqueues a host-to-device copy (src must be staging memory to be truly async).
  absl::Status CopyToDevice(void* device_dst, const void* host_src, size_t bytes);
  // Marks the copies enqueued so far in `event` (replacing what it marked before).
  absl::Status Record(CopyEvent& event);

 private:
  CopyStream() = default;
  void* stream_ = nullptr;  // cudaStream_t
};

// Device -> host copy, synchronous; for verification and tests.
absl::Status CopyToHost(void* host_dst, const void* device_src, size_t bytes);

}  // namespace ember::loader

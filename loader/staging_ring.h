// A bounded ring of page-locked staging buffers between the network (or disk) and the
// destination arena. Its size is set by configuration, never by the model's size: a
// fetcher blocks in Acquire() until the copy stage has released a slot.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace ember::loader {

struct StagingSlot {
  uint8_t* data = nullptr;  // [capacity] bytes of staging memory
  size_t capacity = 0;
  int index = 0;
};

class StagingRing {
 public:
  // `slots` buffers of `slot_bytes` each, in one staging allocation.
  static absl::StatusOr<std::unique_ptr<StagingRing>> Create(size_t slot_bytes, int slots);
  ~StagingRing();
  StagingRing(const StagingRing&) = delete;
  StagingRing& operator=(const StagingRing&) = delete;

  // Blocks until a slot is free; nullptr once the ring is closed.
  StagingSlot* Acquire();
  // Non-blocking: nullptr when no slot is free (or closed).
  StagingSlot* TryAcquire();
  void Release(StagingSlot* slot);
  // Wakes every waiter; Acquire returns nullptr from now on.
  void Close();

  int slots() const { return static_cast<int>(slots_.size()); }
  size_t slot_bytes() const { return slot_bytes_; }
  size_t total_bytes() const { return slot_bytes_ * slots_.size(); }

 private:
  StagingRing() = default;

  size_t slot_bytes_ = 0;
  uint8_t* memory_ = nullptr;
  std::vector<StagingSlot> slots_;
  absl::Mutex mu_;
  std::vector<StagingSlot*> free_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace ember::loader

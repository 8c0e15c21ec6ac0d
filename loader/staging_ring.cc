// Staging ring: one staging allocation cut into equal slots, handed out from a free list.
#include "loader/staging_ring.h"

#include "absl/strings/str_cat.h"
#include "loader/device_memory.h"

namespace ember::loader {

absl::StatusOr<std::unique_ptr<StagingRing>> StagingRing::Create(size_t slot_bytes, int slots) {
  if (slot_bytes == 0 || slots <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("staging ring needs slots > 0 and slot bytes > 0 (got ", slots, " x ",
                     slot_bytes, ")"));
  }
  std::unique_ptr<StagingRing> ring(new StagingRing());
  ring->slot_bytes_ = slot_bytes;
  auto memory = AllocStaging(slot_bytes * static_cast<size_t>(slots));
  if (!memory.ok()) return memory.status();
  ring->memory_ = static_cast<uint8_t*>(*memory);
  ring->slots_.resize(slots);
  absl::MutexLock lock(&ring->mu_);
  for (int i = 0; i < slots; ++i) {
    ring->slots_[i] = StagingSlot{ring->memory_ + slot_bytes * i, slot_bytes, i};
    ring->free_.push_back(&ring->slots_[i]);
  }
  return ring;
}

StagingRing::~StagingRing() { FreeStaging(memory_, total_bytes()); }

StagingSlot* StagingRing::Acquire() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](StagingRing* r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(r->mu_) {
        return r->closed_ || !r->free_.empty();
      },
      this));
  if (closed_) return nullptr;
  StagingSlot* slot = free_.back();
  free_.pop_back();
  return slot;
}

StagingSlot* StagingRing::TryAcquire() {
  absl::MutexLock lock(&mu_);
  if (closed_ || free_.empty()) return nullptr;
  StagingSlot* slot = free_.back();
  free_.pop_back();
  return slot;
}

void StagingRing::Release(StagingSlot* slot) {
  absl::MutexLock lock(&mu_);
  free_.push_back(slot);
}

void StagingRing::Close() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
}

}  // namespace ember::loader

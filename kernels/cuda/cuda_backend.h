// The CUDA backend: device memory, one non-blocking stream on which every op is enqueued,
// Ember's kernels (kernels/cuda/*.cu) for the ops and cuBLAS for prefill-sized GEMMs.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace ember::kernels {

// The backend on GPU 0. Unavailable, with the CUDA runtime's reason, where no GPU can be
// used (no driver, no device, a device older than compute capability 8.0).
absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend();

// MakeCudaBackend's hardware check alone: device 0 exists and has compute capability 8.0
// or newer.
absl::Status CheckCudaDevice();

}  // namespace ember::kernels

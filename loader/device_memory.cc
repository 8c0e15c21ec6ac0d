// CUDA runtime wrappers for the loader; compiled with or without the toolkit.
#include "loader/device_memory.h"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "loader/log.h"

#ifdef EMBER_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace ember::loader {

#ifdef EMBER_HAVE_CUDA
namespace {
absl::Status CudaError(cudaError_t e, absl::string_view what) {
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}
}  // namespace
#endif

bool CudaAvailable() {
  static bool available = [] {
#ifdef EMBER_HAVE_CUDA
    int count = 0;
    const cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
      LogInfo("cuda", absl::StrCat("no usable GPU (",
                                   e != cudaSuccess ? cudaGetErrorString(e) : "0 devices",
                                   "): using the host path"));
      return false;
    }
    LogInfo("cuda", absl::StrCat("using GPU 0 of ", count));
    return true;
#else
    LogInfo("cuda", "built without CUDA: using the host path");
    return false;
#endif
  }();
  return available;
}

std::string CudaDeviceDescription() {
#ifdef EMBER_HAVE_CUDA
  if (CudaAvailable()) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) {
      return absl::StrFormat("%s, %.1f GiB", prop.name,
                             static_cast<double>(prop.totalGlobalMem) / (1 << 30));
    }
  }
#endif
  return "none";
}

absl::StatusOr<void*> AllocHostPages(size_t bytes, absl::string_view what) {
  const size_t length = std::max<size_t>(bytes, 1);  // mmap refuses zero
  void* ptr = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (ptr == MAP_FAILED) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot map ", bytes, " bytes for the ", what, ": ", std::strerror(errno)));
  }
  madvise(ptr, length, MADV_HUGEPAGE);
  return ptr;
}

void FreeHostPages(void* ptr, size_t bytes) {
  if (ptr) munmap(ptr, std::max<size_t>(bytes, 1));
}

absl::StatusOr<void*> AllocStaging(size_t bytes) {
#ifdef EMBER_HAVE_CUDA
  if (CudaAvailable()) {
    void* ptr = nullptr;
    const cudaError_t e = cudaHostAlloc(&ptr, bytes, cudaHostAllocPortable);
    if (e != cudaSuccess) {
      return CudaError(e, absl::StrCat("cudaHostAlloc of ", bytes, " staging bytes"));
    }
    return ptr;
  }
#endif
  // Without CUDA nothing DMAs from the ring, so it needs no pinning; locking it (mlock)
  // would fault in every page before the first byte arrives, which cost up to a second of
  // cold start for a 256 MiB ring on a busy 2-core machine. Pages fault in as chunks land.
  return AllocHostPages(bytes, "staging ring");
}

void FreeStaging(void* ptr, size_t bytes) {
  if (!ptr) return;
#ifdef EMBER_HAVE_CUDA
  if (CudaAvailable()) {
    cudaFreeHost(ptr);
    return;
  }
#endif
  FreeHostPages(ptr, bytes);
}

absl::StatusOr<void*> AllocDevice(size_t bytes) {
#ifdef EMBER_HAVE_CUDA
  if (CudaAvailable()) {
    void* ptr = nullptr;
    const cudaError_t e = cudaMalloc(&ptr, bytes == 0 ? 1 : bytes);
    if (e != cudaSuccess) {
      size_t free_bytes = 0, total = 0;
      cudaMemGetInfo(&free_bytes, &total);
      return absl::ResourceExhaustedError(absl::StrCat(
          "cudaMalloc of a ", bytes, "-byte device arena failed (", cudaGetErrorString(e), "; ",
          free_bytes, " of ", total, " bytes free)"));
    }
    return ptr;
  }
#endif
  return absl::FailedPreconditionError("no usable GPU for a device target; use the host target");
}

void FreeDevice(void* ptr) {
#ifdef EMBER_HAVE_CUDA
  if (ptr) cudaFree(ptr);
#endif
}

absl::StatusOr<CopyStream> CopyStream::Create() {
  CopyStream stream;
#ifdef EMBER_HAVE_CUDA
  if (!CudaAvailable()) return absl::FailedPreconditionError("no usable GPU");
  cudaStream_t s;
  const cudaError_t e = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
  if (e != cudaSuccess) return CudaError(e, "cudaStreamCreate");
  stream.stream_ = s;
  return stream;
#else
  return absl::FailedPreconditionError("built without CUDA");
#endif
}

CopyStream::CopyStream(CopyStream&& other) noexcept : stream_(other.stream_) {
  other.stream_ = nullptr;
}

CopyStream& CopyStream::operator=(CopyStream&& other) noexcept {
  std::swap(stream_, other.stream_);
  return *this;
}

CopyStream::~CopyStream() {
#ifdef EMBER_HAVE_CUDA
  if (stream_) cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
#endif
}

absl::Status CopyStream::CopyToDevice(void* device_dst, const void* host_src, size_t bytes) {
#ifdef EMBER_HAVE_CUDA
  const cudaError_t e = cudaMemcpyAsync(device_dst, host_src, bytes, cudaMemcpyHostToDevice,
                                        static_cast<cudaStream_t>(stream_));
  if (e != cudaSuccess) return CudaError(e, "cudaMemcpyAsync host-to-device");
  return absl::OkStatus();
#else
  return absl::FailedPreconditionError("built without CUDA");
#endif
}

absl::Status CopyStream::Record(CopyEvent& event) {
#ifdef EMBER_HAVE_CUDA
  const cudaError_t e = cudaEventRecord(static_cast<cudaEvent_t>(event.event_),
                                        static_cast<cudaStream_t>(stream_));
  if (e != cudaSuccess) return CudaError(e, "cudaEventRecord");
  return absl::OkStatus();
#else
  return absl::FailedPreconditionError("built without CUDA");
#endif
}

absl::StatusOr<CopyEvent> CopyEvent::Create() {
  CopyEvent event;
#ifdef EMBER_HAVE_CUDA
  if (!CudaAvailable()) return absl::FailedPreconditionError("no usable GPU");
  cudaEvent_t e;
  const cudaError_t err = cudaEventCreateWithFlags(&e, cudaEventDisableTiming);
  if (err != cudaSuccess) return CudaError(err, "cudaEventCreate");
  event.event_ = e;
  return event;
#else
  return absl::FailedPreconditionError("built without CUDA");
#endif
}

CopyEvent::CopyEvent(CopyEvent&& other) noexcept : event_(other.event_) { other.event_ = nullptr; }

CopyEvent& CopyEvent::operator=(CopyEvent&& other) noexcept {
  std::swap(event_, other.event_);
  return *this;
}

CopyEvent::~CopyEvent() {
#ifdef EMBER_HAVE_CUDA
  if (event_) cudaEventDestroy(static_cast<cudaEvent_t>(event_));
#endif
}

absl::Status CopyEvent::Wait() {
#ifdef EMBER_HAVE_CUDA
  const cudaError_t e = cudaEventSynchronize(static_cast<cudaEvent_t>(event_));
  if (e != cudaSuccess) return CudaError(e, "cudaEventSynchronize");
  return absl::OkStatus();
#else
  return absl::FailedPreconditionError("built without CUDA");
#endif
}

absl::Status CopyToHost(void* host_dst, const void* device_src, size_t bytes) {
#ifdef EMBER_HAVE_CUDA
  const cudaError_t e = cudaMemcpy(host_dst, device_src, bytes, cudaMemcpyDeviceToHost);
  if (e != cudaSuccess) return CudaError(e, "cudaMemcpy device-to-host");
  return absl::OkStatus();
#else
  return absl::FailedPreconditionError("built without CUDA");
#endif
}

}  // namespace ember::loader

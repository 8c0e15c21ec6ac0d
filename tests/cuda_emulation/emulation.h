// Internals shared by the emulation's runtime (runtime.cc), its kernel scheduler
// (scheduler.cc) and its cuBLAS (cublas.cc). Not included by project code.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "cuda_runtime.h"

namespace cuda_emulation {

// Settings from the environment, read once:
//   EMBER_CUDA_EMULATION_SEED       schedule and copy-delay seed (default: drawn at start;
//                                   printed once on stderr either way)
//   EMBER_CUDA_EMULATION_MEMORY_MB  device memory (default 2048)
//   EMBER_CUDA_EMULATION_CC         compute capability, e.g. "7.5" (default "9.0")
//   EMBER_CUDA_EMULATION_DEVICES    0 for a machine with no GPU (default 1)
// and, read at every copy so that a test may set them for a scope:
//   EMBER_CUDA_EMULATION_COPY_DELAY_US  mean delay of an asynchronous copy (default 300)
//   EMBER_CUDA_EMULATION_FAIL_COPY  N > 0: the Nth cudaMemcpyAsync since the variable took
//                                   this value fails (cudaErrorLaunchFailure): a fault a
//                                   GPU does not make on demand (default: none)
struct Settings {
  uint64_t seed = 0;
  size_t memory_bytes = 0;
  int major = 9, minor = 0;
  int devices = 1;
};
const Settings& GetSettings();

// A fresh seed for one kernel launch or copy, derived from the run's seed.
uint64_t NextSeed();

// Prints "cuda emulation: <message> (seed N)" and aborts: what a GPU would report as a
// fault, hang or undefined behaviour.
[[noreturn]] void Fatal(const std::string& message);

// Records `error` as the calling host thread's last error, says why on stderr, returns it.
cudaError_t Fail(cudaError_t error, const std::string& why);

// "(x, y, z)", for messages.
inline std::string Dims(dim3 d) {
  return "(" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " + std::to_string(d.z) + ")";
}

// Whether [p, p + bytes) lies inside one live device allocation.
bool IsDeviceRange(const void* p, size_t bytes);

// An emulated stream: its operations run in order on a host thread of its own.
class Stream {
 public:
  explicit Stream(bool blocking);
  ~Stream();  // waits for the queued work
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  void Enqueue(std::function<void()> op);
  void Synchronize();
  bool Idle();
  bool blocking() const { return blocking_; }
  // Operations enqueued so far, and a wait until that many have run.
  uint64_t enqueued();
  void WaitFor(uint64_t count);

 private:
  void Run();

  const bool blocking_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> ops_;
  uint64_t enqueued_ = 0, completed_ = 0;
  bool stopping_ = false;
  std::thread worker_;
};

// The stream `s` names: the legacy default stream for nullptr. Null when `s` is not live.
Stream* Resolve(cudaStream_t s);

// Enqueues `op` on `s` (cudaErrorInvalidResourceHandle when it is not live), ordered as
// CUDA orders the legacy default stream against blocking streams.
cudaError_t Submit(cudaStream_t s, std::function<void()> op);

// Adds `name` to LaunchedKernels() (kernels, and cuBLAS routines by their type signature).
void NoteLaunched(const std::string& name);

// Runs every block of `launch` (on the calling host thread, the stream's).
void RunKernel(const KernelLaunch& launch, uint64_t seed);

}  // namespace cuda_emulation

// The emulated CUDA runtime: one H100-like device whose memory is guarded host memory,
// streams that run their work in order on host threads of their own, events, and copies
// that complete after a delay, so host code that reuses a buffer before its copy finished,
// or reads a result without waiting, sees the wrong bytes in a test.
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "emulation.h"

namespace cuda_emulation {

// ---- settings, errors -----------------------------------------------------------------

namespace {

long EnvLong(const char* name, long fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  const long parsed = std::strtol(v, &end, 10);
  if (*end != '\0') Fatal(std::string(name) + "=" + v + ": not a whole number");
  return parsed;
}

thread_local cudaError_t t_last_error = cudaSuccess;

}  // namespace

const Settings& GetSettings() {
  static const Settings settings = [] {
    Settings s;
    const char* seed = std::getenv("EMBER_CUDA_EMULATION_SEED");
    s.seed = seed != nullptr && *seed != '\0' ? std::strtoull(seed, nullptr, 10)
                                             : std::random_device{}() % 1000000;
    s.memory_bytes = static_cast<size_t>(EnvLong("EMBER_CUDA_EMULATION_MEMORY_MB", 2048)) << 20;
    s.devices = static_cast<int>(EnvLong("EMBER_CUDA_EMULATION_DEVICES", 1));
    if (const char* cc = std::getenv("EMBER_CUDA_EMULATION_CC"); cc != nullptr && *cc != '\0') {
      if (std::sscanf(cc, "%d.%d", &s.major, &s.minor) != 2) {
        Fatal(std::string("EMBER_CUDA_EMULATION_CC=") + cc + ": expected MAJOR.MINOR");
      }
    }
    std::fprintf(stderr,
                 "cuda emulation: seed %llu (EMBER_CUDA_EMULATION_SEED=%llu repeats this run)\n",
                 static_cast<unsigned long long>(s.seed), static_cast<unsigned long long>(s.seed));
    return s;
  }();
  return settings;
}

uint64_t NextSeed() {
  static std::atomic<uint64_t> counter{0};
  return GetSettings().seed * 0x9e3779b97f4a7c15ull + counter.fetch_add(1) + 1;
}

void Fatal(const std::string& message) {
  std::fprintf(stderr, "cuda emulation: %s (EMBER_CUDA_EMULATION_SEED=%llu)\n", message.c_str(),
               static_cast<unsigned long long>(GetSettings().seed));
  std::fflush(stderr);
  std::abort();
}

cudaError_t Fail(cudaError_t error, const std::string& why) {
  std::fprintf(stderr, "cuda emulation: %s: %s\n", cudaGetErrorName(error), why.c_str());
  t_last_error = error;
  return error;
}

}  // namespace cuda_emulation

using cuda_emulation::Fail;
using cuda_emulation::GetSettings;

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
#define EMBER_ERROR_NAME(e) \
  case e:                   \
    return #e;
    EMBER_ERROR_NAME(cudaSuccess)
    EMBER_ERROR_NAME(cudaErrorInvalidValue)
    EMBER_ERROR_NAME(cudaErrorMemoryAllocation)
    EMBER_ERROR_NAME(cudaErrorInitializationError)
    EMBER_ERROR_NAME(cudaErrorInvalidConfiguration)
    EMBER_ERROR_NAME(cudaErrorInvalidDevicePointer)
    EMBER_ERROR_NAME(cudaErrorInvalidMemcpyDirection)
    EMBER_ERROR_NAME(cudaErrorNoDevice)
    EMBER_ERROR_NAME(cudaErrorInvalidDevice)
    EMBER_ERROR_NAME(cudaErrorInvalidResourceHandle)
    EMBER_ERROR_NAME(cudaErrorNotReady)
    EMBER_ERROR_NAME(cudaErrorIllegalAddress)
    EMBER_ERROR_NAME(cudaErrorLaunchOutOfResources)
    EMBER_ERROR_NAME(cudaErrorLaunchFailure)
#undef EMBER_ERROR_NAME
  }
  return "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInitializationError: return "initialization error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unknown error";
}

cudaError_t cudaGetLastError() { return std::exchange(cuda_emulation::t_last_error, cudaSuccess); }
cudaError_t cudaPeekAtLastError() { return cuda_emulation::t_last_error; }

// ---- the device -----------------------------------------------------------------------

cudaError_t cudaGetDeviceCount(int* count) {
  *count = GetSettings().devices;
  return *count > 0 ? cudaSuccess : Fail(cudaErrorNoDevice, "EMBER_CUDA_EMULATION_DEVICES=0");
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device < 0 || device >= GetSettings().devices) {
    return Fail(cudaErrorInvalidDevice, "device " + std::to_string(device));
  }
  // An H100 SXM's figures, but the emulation's memory size and compute capability.
  *prop = cudaDeviceProp{};
  std::snprintf(prop->name, sizeof(prop->name), "NVIDIA H100 80GB HBM3 (CUDA emulation, sm_%d%d)",
                GetSettings().major, GetSettings().minor);
  prop->totalGlobalMem = GetSettings().memory_bytes;
  prop->sharedMemPerBlock = 48 << 10;
  prop->sharedMemPerBlockOptin = 227 << 10;
  prop->sharedMemPerMultiprocessor = 228 << 10;
  prop->regsPerBlock = 65536;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = 1024;
  prop->maxThreadsDim[0] = prop->maxThreadsDim[1] = 1024;
  prop->maxThreadsDim[2] = 64;
  prop->maxGridSize[0] = 0x7fffffff;
  prop->maxGridSize[1] = prop->maxGridSize[2] = 65535;
  prop->clockRate = 1980000;
  prop->memoryClockRate = 2619000;
  prop->memoryBusWidth = 5120;
  prop->l2CacheSize = 50 << 20;
  prop->multiProcessorCount = 132;
  prop->maxThreadsPerMultiProcessor = 2048;
  prop->major = GetSettings().major;
  prop->minor = GetSettings().minor;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  return device >= 0 && device < GetSettings().devices
             ? cudaSuccess
             : Fail(cudaErrorInvalidDevice, "device " + std::to_string(device));
}
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

// ---- memory ---------------------------------------------------------------------------

namespace cuda_emulation {
namespace {

enum class Kind { kDevice, kPinned };

// Every live allocation by start address. Device memory comes from malloc so that
// AddressSanitizer guards each one; pinned memory likewise.
class Allocations {
 public:
  void Add(void* p, size_t bytes, Kind kind) {
    std::lock_guard<std::mutex> lock(mu_);
    map_[reinterpret_cast<uintptr_t>(p)] = {bytes, kind};
    if (kind == Kind::kDevice) device_bytes_ += bytes;
  }
  // The allocation's size, or false when p does not start one of `kind`.
  bool Remove(void* p, Kind kind) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = map_.find(reinterpret_cast<uintptr_t>(p));
    if (it == map_.end() || it->second.kind != kind) return false;
    if (kind == Kind::kDevice) device_bytes_ -= it->second.bytes;
    map_.erase(it);
    return true;
  }
  // Whether [p, p + bytes) lies in one allocation of `kind`.
  bool Contains(const void* p, size_t bytes, Kind kind) {
    std::lock_guard<std::mutex> lock(mu_);
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    auto it = map_.upper_bound(a);
    if (it == map_.begin()) return false;
    --it;
    return it->second.kind == kind && a + bytes <= it->first + it->second.bytes;
  }
  size_t device_bytes() {
    std::lock_guard<std::mutex> lock(mu_);
    return device_bytes_;
  }

 private:
  struct Entry {
    size_t bytes;
    Kind kind;
  };
  std::mutex mu_;
  std::map<uintptr_t, Entry> map_;
  size_t device_bytes_ = 0;
};

Allocations& Live() {
  static Allocations* allocations = new Allocations();
  return *allocations;
}

}  // namespace

bool IsDeviceRange(const void* p, size_t bytes) { return Live().Contains(p, bytes, Kind::kDevice); }

}  // namespace cuda_emulation

using cuda_emulation::Kind;
using cuda_emulation::Live;

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  *total_bytes = GetSettings().memory_bytes;
  *free_bytes = *total_bytes - std::min(*total_bytes, Live().device_bytes());
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  *ptr = nullptr;
  const size_t in_use = Live().device_bytes();
  if (bytes > GetSettings().memory_bytes - std::min(in_use, GetSettings().memory_bytes)) {
    return Fail(cudaErrorMemoryAllocation,
                "cudaMalloc of " + std::to_string(bytes) + " bytes with " +
                    std::to_string(GetSettings().memory_bytes - in_use) + " free");
  }
  // cudaMalloc's 256-byte alignment; the size is not rounded, so a read past the end
  // lands in AddressSanitizer's red zone.
  if (posix_memalign(ptr, 256, std::max<size_t>(bytes, 1)) != 0) {
    return Fail(cudaErrorMemoryAllocation, "host memory for " + std::to_string(bytes) + " bytes");
  }
  // New device memory holds garbage on a GPU: 0xFF bytes (NaN as floats) here.
  std::memset(*ptr, 0xff, std::min<size_t>(bytes, 64 << 20));
  Live().Add(*ptr, bytes, Kind::kDevice);
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  cudaDeviceSynchronize();  // as on a GPU, cudaFree waits for the device
  if (!Live().Remove(ptr, Kind::kDevice)) {
    return Fail(cudaErrorInvalidValue, "cudaFree of a pointer cudaMalloc did not return");
  }
  std::free(ptr);
  return cudaSuccess;
}

cudaError_t cudaHostAlloc(void** ptr, size_t bytes, unsigned flags) {
  if (posix_memalign(ptr, 4096, std::max<size_t>(bytes, 1)) != 0) {
    *ptr = nullptr;
    return Fail(cudaErrorMemoryAllocation, "pinned host memory of " + std::to_string(bytes));
  }
  Live().Add(*ptr, bytes, Kind::kPinned);
  return cudaSuccess;
}

cudaError_t cudaMallocHost(void** ptr, size_t bytes) {
  return cudaHostAlloc(ptr, bytes, cudaHostAllocDefault);
}

cudaError_t cudaFreeHost(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  cudaDeviceSynchronize();
  if (!Live().Remove(ptr, Kind::kPinned)) {
    return Fail(cudaErrorInvalidValue, "cudaFreeHost of a pointer cudaHostAlloc did not return");
  }
  std::free(ptr);
  return cudaSuccess;
}

// ---- streams --------------------------------------------------------------------------

namespace cuda_emulation {

Stream::Stream(bool blocking) : blocking_(blocking), worker_([this] { Run(); }) {}

Stream::~Stream() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  worker_.join();
}

void Stream::Enqueue(std::function<void()> op) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ops_.push_back(std::move(op));
    ++enqueued_;
  }
  cv_.notify_all();
}

uint64_t Stream::enqueued() {
  std::lock_guard<std::mutex> lock(mu_);
  return enqueued_;
}

void Stream::WaitFor(uint64_t count) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return completed_ >= count; });
}

void Stream::Synchronize() { WaitFor(enqueued()); }

bool Stream::Idle() {
  std::lock_guard<std::mutex> lock(mu_);
  return completed_ == enqueued_;
}

void Stream::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stopping_ || !ops_.empty(); });
    if (ops_.empty()) return;  // stopping, and everything ran
    std::function<void()> op = std::move(ops_.front());
    ops_.pop_front();
    lock.unlock();
    op();
    lock.lock();
    ++completed_;
    cv_.notify_all();
  }
}

namespace {

struct Streams {
  std::mutex mu;
  std::set<Stream*> live;
};
Streams& AllStreams() {
  static Streams* streams = new Streams();
  return *streams;
}
Stream& LegacyStream() {
  static Stream* stream = new Stream(true);
  return *stream;
}

}  // namespace

// The legacy default stream's ordering: work on the default stream waits for the work
// already queued on every blocking stream, and work on a blocking stream waits for the
// work already queued on the default stream.
cudaError_t Submit(cudaStream_t s, std::function<void()> op) {
  Stream* stream = Resolve(s);
  if (stream == nullptr) return Fail(cudaErrorInvalidResourceHandle, "not a live stream");
  std::vector<std::pair<Stream*, uint64_t>> before;
  if (stream == &LegacyStream()) {
    std::lock_guard<std::mutex> lock(AllStreams().mu);
    for (Stream* other : AllStreams().live) {
      if (other->blocking()) before.emplace_back(other, other->enqueued());
    }
  } else if (stream->blocking()) {
    before.emplace_back(&LegacyStream(), LegacyStream().enqueued());
  }
  if (before.empty()) {
    stream->Enqueue(std::move(op));
  } else {
    stream->Enqueue([before = std::move(before), op = std::move(op)] {
      for (const auto& [other, count] : before) other->WaitFor(count);
      op();
    });
  }
  return cudaSuccess;
}

namespace {

// The delay of one asynchronous copy: uniform in [0, 2 * the configured mean).
std::chrono::microseconds CopyDelay() {
  std::mt19937_64 rng(NextSeed());
  const long mean = EnvLong("EMBER_CUDA_EMULATION_COPY_DELAY_US", 300);
  return std::chrono::microseconds(mean > 0 ? rng() % (2 * mean) : 0);
}

// Whether this copy is the one EMBER_CUDA_EMULATION_FAIL_COPY names.
bool CopyShouldFail() {
  static std::mutex mu;
  static std::string armed;  // the value the count started at
  static long count = 0;
  const char* v = std::getenv("EMBER_CUDA_EMULATION_FAIL_COPY");
  const std::string value = v != nullptr ? v : "";
  std::lock_guard<std::mutex> lock(mu);
  if (value != armed) armed = value, count = 0;
  return !value.empty() && ++count == EnvLong("EMBER_CUDA_EMULATION_FAIL_COPY", 0);
}

bool IsPinned(const void* p, size_t bytes) { return Live().Contains(p, bytes, Kind::kPinned); }

}  // namespace

Stream* Resolve(cudaStream_t s) {
  if (s == nullptr) return &LegacyStream();
  std::lock_guard<std::mutex> lock(AllStreams().mu);
  return AllStreams().live.count(s) ? s : nullptr;
}

}  // namespace cuda_emulation

using cuda_emulation::Resolve;
using cuda_emulation::Stream;

cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  return cudaStreamCreateWithFlags(stream, cudaStreamDefault);
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags) {
  *stream = new Stream((flags & cudaStreamNonBlocking) == 0);
  std::lock_guard<std::mutex> lock(cuda_emulation::AllStreams().mu);
  cuda_emulation::AllStreams().live.insert(*stream);
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  {
    std::lock_guard<std::mutex> lock(cuda_emulation::AllStreams().mu);
    if (stream == nullptr || cuda_emulation::AllStreams().live.erase(stream) == 0) {
      return Fail(cudaErrorInvalidResourceHandle, "cudaStreamDestroy of a stream that is not live");
    }
  }
  delete stream;  // runs what is queued first, as a GPU does
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  Stream* s = Resolve(stream);
  if (s == nullptr) return Fail(cudaErrorInvalidResourceHandle, "cudaStreamSynchronize");
  s->Synchronize();
  return cudaSuccess;
}

cudaError_t cudaStreamQuery(cudaStream_t stream) {
  Stream* s = Resolve(stream);
  if (s == nullptr) return Fail(cudaErrorInvalidResourceHandle, "cudaStreamQuery");
  return s->Idle() ? cudaSuccess : cudaErrorNotReady;
}

cudaError_t cudaDeviceSynchronize() {
  std::vector<std::pair<Stream*, uint64_t>> targets;
  {
    std::lock_guard<std::mutex> lock(cuda_emulation::AllStreams().mu);
    for (Stream* s : cuda_emulation::AllStreams().live) targets.emplace_back(s, s->enqueued());
  }
  for (const auto& [s, count] : targets) s->WaitFor(count);
  cuda_emulation::LegacyStream().Synchronize();
  return cudaSuccess;
}

// ---- events ---------------------------------------------------------------------------

namespace cuda_emulation {

// Record n is complete once the stream reached it; a wait or query concerns the latest
// record at the time of the call, as in CUDA.
class Event {
 public:
  uint64_t Record() {
    std::lock_guard<std::mutex> lock(mu_);
    return ++recorded_;
  }
  void Complete(uint64_t record) {
    std::lock_guard<std::mutex> lock(mu_);
    completed_ = std::max(completed_, record);
    time_ = std::chrono::steady_clock::now();
    cv_.notify_all();
  }
  uint64_t recorded() {
    std::lock_guard<std::mutex> lock(mu_);
    return recorded_;
  }
  void WaitFor(uint64_t record) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return completed_ >= record; });
  }
  bool Reached(uint64_t record) {
    std::lock_guard<std::mutex> lock(mu_);
    return completed_ >= record;
  }
  std::chrono::steady_clock::time_point time() {
    std::lock_guard<std::mutex> lock(mu_);
    return time_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t recorded_ = 0, completed_ = 0;
  std::chrono::steady_clock::time_point time_;
};

namespace {
std::mutex events_mu;
std::set<Event*>& LiveEvents() {
  static std::set<Event*>* events = new std::set<Event*>();
  return *events;
}
bool IsLive(Event* e) {
  std::lock_guard<std::mutex> lock(events_mu);
  return LiveEvents().count(e) > 0;
}
}  // namespace

}  // namespace cuda_emulation

using cuda_emulation::Event;

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  return cudaEventCreateWithFlags(event, cudaEventDefault);
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned flags) {
  *event = new Event();
  std::lock_guard<std::mutex> lock(cuda_emulation::events_mu);
  cuda_emulation::LiveEvents().insert(*event);
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  {
    std::lock_guard<std::mutex> lock(cuda_emulation::events_mu);
    if (cuda_emulation::LiveEvents().erase(event) == 0) {
      return Fail(cudaErrorInvalidResourceHandle, "cudaEventDestroy of an event that is not live");
    }
  }
  // A record still queued completes into the event: keep it until its stream is idle.
  cudaDeviceSynchronize();
  delete event;
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  if (!cuda_emulation::IsLive(event)) {
    return Fail(cudaErrorInvalidResourceHandle, "cudaEventRecord of an event that is not live");
  }
  const uint64_t record = event->Record();
  return cuda_emulation::Submit(stream, [event, record] { event->Complete(record); });
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  if (!cuda_emulation::IsLive(event)) {
    return Fail(cudaErrorInvalidResourceHandle, "cudaEventSynchronize of an event that is not live");
  }
  event->WaitFor(event->recorded());
  return cudaSuccess;
}

cudaError_t cudaEventQuery(cudaEvent_t event) {
  if (!cuda_emulation::IsLive(event)) {
    return Fail(cudaErrorInvalidResourceHandle, "cudaEventQuery of an event that is not live");
  }
  return event->Reached(event->recorded()) ? cudaSuccess : cudaErrorNotReady;
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  if (!cuda_emulation::IsLive(start) || !cuda_emulation::IsLive(end)) {
    return Fail(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime");
  }
  if (!start->Reached(start->recorded()) || !end->Reached(end->recorded())) return cudaErrorNotReady;
  *ms = std::chrono::duration<float, std::milli>(end->time() - start->time()).count();
  return cudaSuccess;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags) {
  if (!cuda_emulation::IsLive(event)) {
    return Fail(cudaErrorInvalidResourceHandle, "cudaStreamWaitEvent on an event that is not live");
  }
  const uint64_t record = event->recorded();
  return cuda_emulation::Submit(stream, [event, record] { event->WaitFor(record); });
}

// ---- copies ---------------------------------------------------------------------------

namespace {

// Checks that the copy's ends are where `kind` says; the error names the end that is not.
cudaError_t CheckCopy(const char* api, void* dst, const void* src, size_t bytes,
                      cudaMemcpyKind* kind) {
  const bool dst_device = cuda_emulation::IsDeviceRange(dst, bytes);
  const bool src_device = cuda_emulation::IsDeviceRange(src, bytes);
  if (*kind == cudaMemcpyDefault) {
    *kind = src_device ? (dst_device ? cudaMemcpyDeviceToDevice : cudaMemcpyDeviceToHost)
                       : (dst_device ? cudaMemcpyHostToDevice : cudaMemcpyHostToHost);
  }
  const bool want_dst_device = *kind == cudaMemcpyHostToDevice || *kind == cudaMemcpyDeviceToDevice;
  const bool want_src_device = *kind == cudaMemcpyDeviceToHost || *kind == cudaMemcpyDeviceToDevice;
  if (want_dst_device != dst_device) {
    return Fail(cudaErrorInvalidValue,
                std::string(api) + ": the destination of " + std::to_string(bytes) + " bytes is " +
                    (want_dst_device ? "not inside one device allocation" : "device memory"));
  }
  if (want_src_device != src_device) {
    return Fail(cudaErrorInvalidValue,
                std::string(api) + ": the source of " + std::to_string(bytes) + " bytes is " +
                    (want_src_device ? "not inside one device allocation" : "device memory"));
  }
  return cudaSuccess;
}

// A 64-bit hash of the bytes (FNV-1a over 8-byte words, then the tail).
uint64_t HashBytes(const void* p, size_t bytes) {
  const unsigned char* b = static_cast<const unsigned char*>(p);
  uint64_t h = 0xcbf29ce484222325ull;
  size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    uint64_t word;
    std::memcpy(&word, b + i, 8);
    h = (h ^ word) * 0x100000001b3ull;
  }
  for (; i < bytes; ++i) h = (h ^ b[i]) * 0x100000001b3ull;
  return h;
}

}  // namespace

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream) {
  if (bytes == 0) return cudaSuccess;
  if (cudaError_t e = CheckCopy("cudaMemcpyAsync", dst, src, bytes, &kind); e != cudaSuccess) {
    return e;
  }
  if (cuda_emulation::CopyShouldFail()) {
    return Fail(cudaErrorLaunchFailure, "EMBER_CUDA_EMULATION_FAIL_COPY: this copy fails");
  }
  // Pageable host memory makes the copy synchronous, as on a GPU: the call returns once the
  // source was read (host to device) or the destination written (device to host).
  const bool pinned_source = kind == cudaMemcpyHostToDevice && cuda_emulation::IsPinned(src, bytes);
  const bool pageable = (kind == cudaMemcpyHostToDevice && !pinned_source) ||
                        (kind == cudaMemcpyDeviceToHost && !cuda_emulation::IsPinned(dst, bytes));
  const auto delay = cuda_emulation::CopyDelay();
  // A pinned source is read when the copy runs, not now: if the host writes to it in
  // between (a staging buffer reused before its copy finished), a GPU copies either bytes.
  // The hash taken now and again when the copy runs tells.
  const uint64_t queued_hash = pinned_source ? HashBytes(src, bytes) : 0;
  cudaError_t e = cuda_emulation::Submit(stream, [=] {
    std::this_thread::sleep_for(delay);
    if (pinned_source && HashBytes(src, bytes) != queued_hash) {
      cuda_emulation::Fatal("cudaMemcpyAsync of " + std::to_string(bytes) +
                            " bytes from pinned host memory: the host wrote to the source after "
                            "the copy was queued and before it ran (a buffer reused before its "
                            "copy finished)");
    }
    std::memcpy(dst, src, bytes);
  });
  if (e == cudaSuccess && pageable) e = cudaStreamSynchronize(stream);
  return e;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  if (bytes == 0) return cudaSuccess;
  if (cudaError_t e = CheckCopy("cudaMemcpy", dst, src, bytes, &kind); e != cudaSuccess) return e;
  cudaError_t e = cuda_emulation::Submit(nullptr, [=] { std::memcpy(dst, src, bytes); });
  if (e == cudaSuccess) e = cudaStreamSynchronize(nullptr);
  return e;
}

cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream) {
  if (bytes == 0) return cudaSuccess;
  if (!cuda_emulation::IsDeviceRange(ptr, bytes)) {
    return Fail(cudaErrorInvalidValue, "cudaMemset of " + std::to_string(bytes) +
                                           " bytes not inside one device allocation");
  }
  return cuda_emulation::Submit(stream, [=] { std::memset(ptr, value, bytes); });
}

cudaError_t cudaMemset(void* ptr, int value, size_t bytes) {
  return cudaMemsetAsync(ptr, value, bytes, nullptr);
}

// ---- kernels --------------------------------------------------------------------------

namespace cuda_emulation {
namespace {

// Shared memory limits of the architectures Ember builds for: 48 KiB of dynamic shared
// memory without the opt-in attribute, up to the opt-in maximum with it.
constexpr int kDefaultDynamicShared = 48 << 10;
constexpr int kOptinShared80 = 163 << 10;  // sm_80 (A100)
constexpr int kOptinShared90 = 227 << 10;  // sm_90 (H100)

std::mutex attributes_mu;
std::map<const void*, int>& MaxDynamicShared() {
  static std::map<const void*, int>* m = new std::map<const void*, int>();
  return *m;
}

std::set<std::string>& Launched() {
  static std::set<std::string>* names = new std::set<std::string>();
  return *names;
}

}  // namespace

cudaError_t Enqueue(KernelLaunch launch, cudaStream_t stream) {
  // "... [with auto Kernel = ember::kernels::{anonymous}::rope_kernel]" -> "ember::...".
  if (const size_t at = launch.name.find("Kernel = "); at != std::string::npos) {
    launch.name = launch.name.substr(at + 9, launch.name.rfind(']') - at - 9);
  }
  const dim3 b = launch.block, g = launch.grid;
  const uint64_t threads = static_cast<uint64_t>(b.x) * b.y * b.z;
  if (b.x == 0 || b.y == 0 || b.z == 0 || b.x > 1024 || b.y > 1024 || b.z > 64 || threads > 1024) {
    return Fail(cudaErrorInvalidConfiguration,
                launch.name + ": block " + Dims(b) +
                    " is outside sm_80/sm_90's limits (x, y <= 1024, z <= 64, at most 1024 threads)");
  }
  if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > 0x7fffffffu || g.y > 65535 || g.z > 65535) {
    return Fail(cudaErrorInvalidConfiguration,
                launch.name + ": grid " + Dims(g) +
                    " is outside sm_80/sm_90's limits (x <= 2^31 - 1, y, z <= 65535, none 0)");
  }
  int allowed = kDefaultDynamicShared;
  {
    std::lock_guard<std::mutex> lock(attributes_mu);
    auto it = MaxDynamicShared().find(launch.function);
    if (it != MaxDynamicShared().end()) allowed = it->second;
  }
  if (launch.dynamic_shared_bytes > static_cast<size_t>(allowed)) {
    return Fail(cudaErrorInvalidValue,
                launch.name + ": " + std::to_string(launch.dynamic_shared_bytes) +
                    " bytes of dynamic shared memory, but the kernel allows " +
                    std::to_string(allowed) +
                    (allowed == kDefaultDynamicShared
                         ? " (above 48 KiB needs cudaFuncSetAttribute(..., "
                           "cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) first)"
                         : ""));
  }
  NoteLaunched(launch.name);
  const uint64_t seed = NextSeed();
  return Submit(stream, [launch = std::move(launch), seed] { RunKernel(launch, seed); });
}

void NoteLaunched(const std::string& name) {
  std::lock_guard<std::mutex> lock(attributes_mu);
  Launched().insert(name);
}

std::set<std::string> LaunchedKernels() {
  std::lock_guard<std::mutex> lock(attributes_mu);
  return Launched();
}

}  // namespace cuda_emulation

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaSuccess;
  if (value < 0 || value > cuda_emulation::kOptinShared80) {
    return Fail(cudaErrorInvalidValue,
                "cudaFuncSetAttribute(MaxDynamicSharedMemorySize, " + std::to_string(value) +
                    "): above sm_80's opt-in maximum of " +
                    std::to_string(cuda_emulation::kOptinShared80) + " bytes (sm_90: " +
                    std::to_string(cuda_emulation::kOptinShared90) + ")");
  }
  std::lock_guard<std::mutex> lock(cuda_emulation::attributes_mu);
  cuda_emulation::MaxDynamicShared()[func] = value;
  return cudaSuccess;
}

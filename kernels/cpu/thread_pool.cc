#include "kernels/cpu/thread_pool.h"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <mutex>
#include <thread>
#include <vector>

namespace ember::kernels::cpu {
namespace {

constexpr auto kSpin = std::chrono::microseconds(200);

// Waits until `a` differs from `old`: spins for kSpin, then sleeps on the futex.
template <typename T>
T AwaitChange(const std::atomic<T>& a, T old) {
  const auto until = std::chrono::steady_clock::now() + kSpin;
  for (int i = 0;; ++i) {
    const T now = a.load(std::memory_order_acquire);
    if (now != old) return now;
    if ((i & 63) == 63 && std::chrono::steady_clock::now() > until) break;
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
  }
  for (;;) {
    a.wait(old, std::memory_order_acquire);
    const T now = a.load(std::memory_order_acquire);
    if (now != old) return now;
  }
}

// ceil(quota / period) from cgroup v2's cpu.max or v1's cfs files; 0 when unlimited.
int CgroupCpuLimit() {
  long long quota = -1, period = 0;
  if (FILE* f = std::fopen("/sys/fs/cgroup/cpu.max", "r")) {
    char q[32] = "";
    if (std::fscanf(f, "%31s %lld", q, &period) == 2 && std::string_view(q) != "max") {
      quota = std::atoll(q);
    }
    std::fclose(f);
  } else if (FILE* fq = std::fopen("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "r")) {
    if (std::fscanf(fq, "%lld", &quota) != 1) quota = -1;
    std::fclose(fq);
    if (FILE* fp = std::fopen("/sys/fs/cgroup/cpu/cpu.cfs_period_us", "r")) {
      if (std::fscanf(fp, "%lld", &period) != 1) period = 0;
      std::fclose(fp);
    }
  }
  if (quota <= 0 || period <= 0) return 0;
  return static_cast<int>((quota + period - 1) / period);
}

class Pool {
 public:
  explicit Pool(int threads) : threads_(threads) {
    for (int i = 1; i < threads_; ++i) workers_.emplace_back([this] { Work(); });
  }
  ~Pool() {
    stop_.store(true);
    generation_.fetch_add(1, std::memory_order_release);
    generation_.notify_all();
    for (std::thread& t : workers_) t.join();
  }

  int threads() const { return threads_; }

  void Run(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
    if (threads_ == 1 || n <= 1) {
      if (n > 0) fn(0, n);
      return;
    }
    std::lock_guard<std::mutex> lock(dispatch_);
    const uint32_t gen = generation_.load(std::memory_order_relaxed) + 1;
    const int64_t chunk = std::max<int64_t>(1, (n + threads_ * kChunksPerThread - 1) /
                                                   (threads_ * kChunksPerThread));
    const uint32_t chunks = static_cast<uint32_t>((n + chunk - 1) / chunk);
    fn_.store(&fn, std::memory_order_relaxed);
    n_.store(n, std::memory_order_relaxed);
    chunk_.store(chunk, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    next_.store(Pack(gen, 0), std::memory_order_relaxed);
    generation_.store(gen, std::memory_order_release);
    generation_.notify_all();  // no system call while every worker is still spinning
    RunChunks(gen);
    for (uint32_t finished = done_.load(std::memory_order_acquire); finished != chunks;) {
      finished = AwaitChange(done_, finished);
    }
  }

 private:
  // Chunks are claimed, not assigned: a thread still asleep or descheduled when a loop starts
  // (the cores are shared) leaves its chunk to the others instead of holding up the step.
  // One chunk per thread: smaller ones cost about 10% of decode speed on a quiet machine
  // (each thread's weight rows no longer one stream) and gained nothing measurable here.
  static constexpr int kChunksPerThread = 1;

  static uint64_t Pack(uint32_t gen, uint32_t index) { return uint64_t{gen} << 32 | index; }

  void RunChunks(uint32_t gen) {
    const auto* fn = fn_.load(std::memory_order_relaxed);
    const int64_t n = n_.load(std::memory_order_relaxed), chunk = chunk_.load(std::memory_order_relaxed);
    const uint32_t chunks = static_cast<uint32_t>((n + chunk - 1) / chunk);
    uint64_t claim = next_.load(std::memory_order_acquire);
    for (;;) {
      // A claim belongs to one loop: a thread that wakes late finds the generation moved on.
      if (static_cast<uint32_t>(claim >> 32) != gen) return;
      const uint32_t index = static_cast<uint32_t>(claim);
      if (index >= chunks) return;
      if (!next_.compare_exchange_weak(claim, claim + 1, std::memory_order_acq_rel)) continue;
      const int64_t begin = index * chunk;
      (*fn)(begin, std::min(n, begin + chunk));
      if (done_.fetch_add(1, std::memory_order_acq_rel) + 1 == chunks) done_.notify_one();
      claim = next_.load(std::memory_order_acquire);
    }
  }

  void Work() {
    uint32_t seen = 0;
    for (;;) {
      seen = AwaitChange(generation_, seen);
      if (stop_.load()) return;
      RunChunks(seen);
    }
  }

  const int threads_;
  std::vector<std::thread> workers_;
  std::mutex dispatch_;
  // Each on a cache line of its own: the claims would otherwise slow every read of the others.
  alignas(64) std::atomic<uint32_t> generation_{0};
  alignas(64) std::atomic<uint64_t> next_{0};  // generation << 32 | next chunk to claim
  alignas(64) std::atomic<uint32_t> done_{0};  // chunks finished in this loop
  std::atomic<bool> stop_{false};
  // The loop's parameters; atomics because a thread that wakes late may read them while the
  // next loop sets them (it then claims nothing).
  alignas(64) std::atomic<const std::function<void(int64_t, int64_t)>*> fn_{nullptr};
  std::atomic<int64_t> n_{0};
  std::atomic<int64_t> chunk_{1};
};

std::mutex config_mu;
int configured = 0;
Pool* pool = nullptr;

Pool& GetPool() {
  static std::once_flag once;
  std::call_once(once, [] {
    std::lock_guard<std::mutex> lock(config_mu);
    pool = new Pool(configured > 0 ? configured : AvailableCpus());  // lives as long as the process
  });
  return *pool;
}

}  // namespace

int AvailableCpus() {
  int cpus = 0;
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) cpus = CPU_COUNT(&set);
  if (cpus <= 0) cpus = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (const int limit = CgroupCpuLimit(); limit > 0) cpus = std::min(cpus, limit);
  return std::max(1, cpus);
}

bool SetThreads(int threads) {
  std::lock_guard<std::mutex> lock(config_mu);
  if (pool != nullptr) return false;
  configured = threads;
  return true;
}

int Threads() { return GetPool().threads(); }

void ParallelFor(int64_t n, const std::function<void(int64_t, int64_t)>& fn) { GetPool().Run(n, fn); }

}  // namespace ember::kernels::cpu

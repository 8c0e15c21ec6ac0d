// Runs a kernel's blocks one after another on the stream's host thread, every CUDA thread
// of a block as a fiber (Boost.Context's fcontext switch, with AddressSanitizer told of
// every stack switch). A fiber runs until a synchronization point; then the scheduler
// resumes the fibers that may run in an order drawn from the launch's seed, so a missing
// __syncthreads, or a lane that reads what another has not written yet, reads stale data.
//
// Semantics kept from the hardware (Volta and newer, independent thread scheduling):
//   - __syncthreads releases once every thread of the block that has not exited waits at
//     one; threads that exited count as arrived.
//   - A warp operation is a rendezvous of exactly the lanes in its mask, all calling the
//     same operation with the same mask; a lane in the mask that exited, or waits at
//     __syncthreads, or at another operation, is reported (on a GPU: a hang or undefined).
//   - Shuffles read the source lane's value as the toolkit documents, including the width
//     segments and the "own value" cases of up/down/xor at the edges.
#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <boost/context/detail/fcontext.hpp>

#include "emulation.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EMBER_ASAN_FIBERS 1
#endif

namespace cuda_emulation {
namespace {

namespace bctx = boost::context::detail;

constexpr size_t kStackBytes = 256 << 10;  // AddressSanitizer's red zones make frames large
constexpr size_t kGuardBytes = 16 << 10;   // PROT_NONE below each stack: overflow faults

enum class State : uint8_t { kRunnable, kBarrier, kWarp, kDone };

struct CudaThread {
  ThreadIndex index;
  int linear = 0;
  State state = State::kRunnable;
  bctx::fcontext_t context = nullptr;
  // The pending warp operation, and its result.
  WarpOp op = WarpOp::kSync;
  unsigned mask = 0;
  uint64_t value = 0, result = 0;
  int param = 0, width = 32;
};

struct Block {
  const KernelLaunch* launch = nullptr;
  std::vector<CudaThread> threads;
  CudaThread* running = nullptr;
  bctx::fcontext_t scheduler = nullptr;
  void* dynamic_shared = nullptr;
  const void* scheduler_stack = nullptr;  // for AddressSanitizer's fiber switches
  size_t scheduler_stack_bytes = 0;
};

thread_local Block* t_block = nullptr;

// Fiber stacks of this host thread, reused by every block it runs.
struct Stacks {
  std::vector<char*> bases;  // each kGuardBytes of guard, then kStackBytes of stack
  ~Stacks() {
    for (char* b : bases) {
#ifdef EMBER_ASAN_FIBERS
      // Frames of fibers that never return (FiberMain's) leave poison in the shadow; the
      // next mapping at this address must not inherit it.
      __asan_unpoison_memory_region(b + kGuardBytes, kStackBytes);
#endif
      munmap(b, kGuardBytes + kStackBytes);
    }
  }
  char* Top(size_t i) {
    while (bases.size() <= i) {
      void* p = mmap(nullptr, kGuardBytes + kStackBytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) Fatal("cannot map a fiber stack");
      mprotect(p, kGuardBytes, PROT_NONE);
      bases.push_back(static_cast<char*>(p));
    }
    return bases[i] + kGuardBytes + kStackBytes;
  }
};
thread_local Stacks t_stacks;

[[noreturn]] void BlockFatal(const Block& b, const std::string& what) {
  Fatal(b.launch->name + " block " + Dims(b.threads[0].index.block_idx) + ": " + what);
}

std::string Hex(unsigned mask) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%08x", mask);
  return buf;
}

const char* OpName(WarpOp op) {
  switch (op) {
    case WarpOp::kShfl: return "__shfl_sync";
    case WarpOp::kShflUp: return "__shfl_up_sync";
    case WarpOp::kShflDown: return "__shfl_down_sync";
    case WarpOp::kShflXor: return "__shfl_xor_sync";
    case WarpOp::kBallot: return "__ballot_sync";
    case WarpOp::kAny: return "__any_sync";
    case WarpOp::kAll: return "__all_sync";
    case WarpOp::kMatchAny: return "__match_any_sync";
    case WarpOp::kSync: return "__syncwarp";
  }
  return "?";
}

// ---- switching ------------------------------------------------------------------------

void FiberMain(bctx::transfer_t from) {
  Block* b = t_block;
  b->scheduler = from.fctx;
#ifdef EMBER_ASAN_FIBERS
  __sanitizer_finish_switch_fiber(nullptr, &b->scheduler_stack, &b->scheduler_stack_bytes);
#endif
  b->launch->body();
  b->running->state = State::kDone;
#ifdef EMBER_ASAN_FIBERS
  __sanitizer_start_switch_fiber(nullptr, b->scheduler_stack, b->scheduler_stack_bytes);
#endif
  bctx::jump_fcontext(b->scheduler, nullptr);  // never resumed
}

// From a fiber: back to the block's scheduler until resumed.
void Yield() {
  Block* b = t_block;
#ifdef EMBER_ASAN_FIBERS
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(&fake_stack, b->scheduler_stack, b->scheduler_stack_bytes);
#endif
  const bctx::transfer_t back = bctx::jump_fcontext(b->scheduler, nullptr);
#ifdef EMBER_ASAN_FIBERS
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
  t_block->scheduler = back.fctx;
}

// From the scheduler: runs thread t until it reaches a synchronization point or ends.
void Resume(Block& b, CudaThread& t) {
  b.running = &t;
#ifdef EMBER_ASAN_FIBERS
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(&fake_stack, t_stacks.Top(t.linear) - kStackBytes, kStackBytes);
#endif
  const bctx::transfer_t back = bctx::jump_fcontext(t.context, nullptr);
#ifdef EMBER_ASAN_FIBERS
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
  t.context = back.fctx;
  b.running = nullptr;
}

CudaThread& Running() {
  if (t_block == nullptr || t_block->running == nullptr) {
    Fatal("a device function (threadIdx, __syncthreads, a warp intrinsic) was called outside a kernel");
  }
  return *t_block->running;
}

// ---- warp rendezvous ------------------------------------------------------------------

// Every lane of the group (the lanes of `mask` in the warp starting at thread `first`) gets
// its result.
void CompleteWarpOp(Block& b, int first, unsigned mask) {
  CudaThread* lanes = &b.threads[first];
  const CudaThread& leader = lanes[__builtin_ctz(mask)];
  const auto in_group = [&](int lane) { return lane >= 0 && lane < 32 && (mask >> lane & 1u); };
  uint64_t ballot = 0;
  for (int l = 0; l < 32; ++l) {
    if (in_group(l) && lanes[l].value != 0) ballot |= 1ull << l;
  }
  for (int l = 0; l < 32; ++l) {
    if (!in_group(l)) continue;
    CudaThread& t = lanes[l];
    const int width = t.width, segment = l / width * width;
    int src = l;
    switch (t.op) {
      case WarpOp::kShfl:
        src = segment + ((t.param % width) + width) % width;
        break;
      case WarpOp::kShflUp:
        src = l - t.param >= segment ? l - t.param : l;
        break;
      case WarpOp::kShflDown:
        src = l + t.param < segment + width ? l + t.param : l;
        break;
      case WarpOp::kShflXor:
        src = (l ^ t.param) / width == l / width ? (l ^ t.param) : l;
        break;
      case WarpOp::kBallot:
        t.result = ballot;
        break;
      case WarpOp::kAny:
        t.result = ballot != 0;
        break;
      case WarpOp::kAll:
        t.result = ballot == mask;
        break;
      case WarpOp::kMatchAny: {
        uint64_t same = 0;
        for (int o = 0; o < 32; ++o) {
          if (in_group(o) && lanes[o].value == t.value) same |= 1ull << o;
        }
        t.result = same;
        break;
      }
      case WarpOp::kSync:
        break;
    }
    if (t.op <= WarpOp::kShflXor) {
      // A source lane outside the mask: undefined on a GPU; all ones here (NaN, -1).
      t.result = in_group(src) ? lanes[src].value : ~uint64_t{0};
    }
    t.state = State::kRunnable;
  }
  (void)leader;
}

// Completes every warp operation whose lanes have all arrived; the woken threads go to
// `woken`. Reports lanes that can never arrive or that disagree.
void ResolveWarpOps(Block& b, std::vector<int>& woken) {
  const int n = static_cast<int>(b.threads.size());
  for (int first = 0; first < n; first += 32) {
    const int lanes_here = std::min(32, n - first);
    for (int l = 0; l < lanes_here; ++l) {
      CudaThread& t = b.threads[first + l];
      if (t.state != State::kWarp) continue;
      const std::string who = std::string(OpName(t.op)) + " with mask " + Hex(t.mask) +
                              " in thread " + Dims(t.index.thread_idx) + " (warp " +
                              std::to_string(first / 32) + ", lane " + std::to_string(l) + ")";
      if ((t.mask >> l & 1u) == 0) BlockFatal(b, who + ": the calling lane is not in the mask");
      if (lanes_here < 32 && (t.mask >> lanes_here) != 0) {
        BlockFatal(b, who + ": the mask names lanes past the block's last thread");
      }
      if (t.width <= 0 || t.width > 32 || (t.width & (t.width - 1)) != 0) {
        BlockFatal(b, who + ": width " + std::to_string(t.width) + " is not a power of 2 <= 32");
      }
      bool ready = true;
      for (int o = 0; o < lanes_here; ++o) {
        if ((t.mask >> o & 1u) == 0) continue;
        const CudaThread& other = b.threads[first + o];
        if (other.state == State::kDone) {
          BlockFatal(b, who + ": lane " + std::to_string(o) + " of the mask has exited");
        }
        if (other.state != State::kWarp) {
          ready = false;  // still running or at __syncthreads: perhaps a deadlock, below
          continue;
        }
        if (other.op != t.op || other.mask != t.mask) {
          BlockFatal(b, who + ": lane " + std::to_string(o) + " of the mask is at " +
                            OpName(other.op) + " with mask " + Hex(other.mask));
        }
      }
      if (!ready) continue;
      CompleteWarpOp(b, first, t.mask);
      for (int o = 0; o < lanes_here; ++o) {
        if (t.mask >> o & 1u) woken.push_back(first + o);
      }
    }
  }
}

[[noreturn]] void Deadlock(const Block& b) {
  int at_barrier = 0, done = 0;
  std::string warp_waits;
  for (const CudaThread& t : b.threads) {
    if (t.state == State::kBarrier) ++at_barrier;
    if (t.state == State::kDone) ++done;
    if (t.state == State::kWarp && warp_waits.size() < 300) {
      warp_waits += " thread " + Dims(t.index.thread_idx) + " at " + OpName(t.op) + " (mask " +
                    Hex(t.mask) + ");";
    }
  }
  BlockFatal(b, "deadlock: " + std::to_string(at_barrier) + " threads wait at __syncthreads, " +
                    std::to_string(done) + " exited, and" +
                    (warp_waits.empty() ? std::string(" none at a warp operation") : warp_waits) +
                    " (a __syncthreads or warp operation some threads skip)");
}

void RunBlock(const KernelLaunch& launch, dim3 block_idx, std::mt19937_64& rng) {
  const dim3 bd = launch.block;
  const int n = static_cast<int>(bd.x * bd.y * bd.z);
  Block b;
  b.launch = &launch;
  b.threads.resize(n);
  std::vector<char> dynamic_shared;
  if (launch.dynamic_shared_bytes > 0) {
    // Its own allocation, so AddressSanitizer bounds it; garbage as on a GPU.
    b.dynamic_shared = std::aligned_alloc(16, (launch.dynamic_shared_bytes + 15) / 16 * 16);
    std::memset(b.dynamic_shared, 0xff, launch.dynamic_shared_bytes);
  }
  for (int i = 0; i < n; ++i) {
    CudaThread& t = b.threads[i];
    t.linear = i;
    t.index.thread_idx = dim3(i % bd.x, i / bd.x % bd.y, i / (bd.x * bd.y));
    t.index.block_idx = block_idx;
    t.index.block_dim = bd;
    t.index.grid_dim = launch.grid;
    t.context = bctx::make_fcontext(t_stacks.Top(i), kStackBytes, FiberMain);
  }
  t_block = &b;
  std::vector<int> runnable(n);
  std::iota(runnable.begin(), runnable.end(), 0);
  for (;;) {
    std::shuffle(runnable.begin(), runnable.end(), rng);
    for (int i : runnable) Resume(b, b.threads[i]);
    runnable.clear();
    ResolveWarpOps(b, runnable);
    if (!runnable.empty()) continue;
    bool all_done = true, all_waiting = true;
    for (const CudaThread& t : b.threads) {
      all_done &= t.state == State::kDone;
      all_waiting &= t.state == State::kDone || t.state == State::kBarrier;
    }
    if (all_done) break;
    if (!all_waiting) Deadlock(b);
    for (CudaThread& t : b.threads) {
      if (t.state == State::kBarrier) {
        t.state = State::kRunnable;
        runnable.push_back(t.linear);
      }
    }
  }
  t_block = nullptr;
  std::free(b.dynamic_shared);
}

}  // namespace

// ---- the device functions' entry points -----------------------------------------------

const ThreadIndex& Current() { return Running().index; }

void SyncThreads() {
  Running().state = State::kBarrier;
  Yield();
}

uint64_t WarpExchange(WarpOp op, unsigned mask, uint64_t value, int param, int width) {
  CudaThread& t = Running();
  t.op = op;
  t.mask = mask;
  t.value = value;
  t.param = param;
  t.width = width;
  t.state = State::kWarp;
  Yield();
  return t.result;
}

unsigned ActiveLanes() {
  const CudaThread& t = Running();
  const int first = t.linear / 32 * 32;
  const int lanes = std::min<int>(32, static_cast<int>(t_block->threads.size()) - first);
  unsigned mask = 0;
  for (int l = 0; l < lanes; ++l) {
    if (t_block->threads[first + l].state != State::kDone) mask |= 1u << l;
  }
  return mask;
}

void* DynamicShared() {
  Running();
  return t_block->dynamic_shared;
}

void RunKernel(const KernelLaunch& launch, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const dim3 g = launch.grid;
  const uint64_t blocks = static_cast<uint64_t>(g.x) * g.y * g.z;
  // Blocks in a shuffled order too: no kernel may rely on blocks running in index order.
  std::vector<uint64_t> order(blocks);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  for (uint64_t i : order) {
    RunBlock(launch, dim3(i % g.x, i / g.x % g.y, i / (static_cast<uint64_t>(g.x) * g.y)), rng);
  }
}

}  // namespace cuda_emulation

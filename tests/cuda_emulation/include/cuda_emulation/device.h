// The device side of the CUDA emulation: CUDA's keywords, vector types, built-in
// variables, warp intrinsics and atomics, for kernels compiled by the host compiler.
//
// Every CUDA thread of a block is a fiber on one host thread (see scheduler.cc). A fiber
// runs until it reaches a synchronization point (__syncthreads, a warp operation, its end),
// then the block's scheduler picks, in an order drawn from the seed, the next fiber that
// may run. `__shared__` variables are `thread_local`: all fibers of a block share the host
// thread, and a host thread runs one block at a time, so each block sees one copy.
#pragma once

#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

// ---- keywords -------------------------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ thread_local
#define __constant__

// ---- vector types (with their device alignment, so a misaligned vector access is
//      reported by -fsanitize=alignment as it would fault on a GPU) -----------------------

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};
using uint3 = dim3;
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

namespace cuda_emulation {

class Stream;
class Event;

// The CUDA thread the calling fiber is (aborts with a message outside a kernel).
struct ThreadIndex {
  dim3 thread_idx, block_idx, block_dim, grid_dim;
};
const ThreadIndex& Current();

// Synchronization points; each yields to the block's scheduler.
void SyncThreads();
enum class WarpOp : uint8_t { kShfl, kShflUp, kShflDown, kShflXor, kBallot, kAny, kAll, kMatchAny, kSync };
// Rendezvous of the lanes in `mask` (the caller's lane included) at the same warp
// operation; returns this lane's result.
uint64_t WarpExchange(WarpOp op, unsigned mask, uint64_t value, int param, int width);
unsigned ActiveLanes();
void* DynamicShared();

template <typename T>
uint64_t ToBits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}
template <typename T>
T FromBits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

}  // namespace cuda_emulation

// ---- built-in variables ---------------------------------------------------------------

#define threadIdx (::cuda_emulation::Current().thread_idx)
#define blockIdx (::cuda_emulation::Current().block_idx)
#define blockDim (::cuda_emulation::Current().block_dim)
#define gridDim (::cuda_emulation::Current().grid_dim)
constexpr int warpSize = 32;

// ---- synchronization and warp intrinsics ----------------------------------------------

inline void __syncthreads() { cuda_emulation::SyncThreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  cuda_emulation::WarpExchange(cuda_emulation::WarpOp::kSync, mask, 0, 0, 32);
}
inline unsigned __activemask() { return cuda_emulation::ActiveLanes(); }

template <typename T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
  return cuda_emulation::FromBits<T>(cuda_emulation::WarpExchange(
      cuda_emulation::WarpOp::kShfl, mask, cuda_emulation::ToBits(v), src_lane, width));
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return cuda_emulation::FromBits<T>(
      cuda_emulation::WarpExchange(cuda_emulation::WarpOp::kShflUp, mask,
                                   cuda_emulation::ToBits(v), static_cast<int>(delta), width));
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return cuda_emulation::FromBits<T>(
      cuda_emulation::WarpExchange(cuda_emulation::WarpOp::kShflDown, mask,
                                   cuda_emulation::ToBits(v), static_cast<int>(delta), width));
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return cuda_emulation::FromBits<T>(cuda_emulation::WarpExchange(
      cuda_emulation::WarpOp::kShflXor, mask, cuda_emulation::ToBits(v), lane_mask, width));
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  return static_cast<unsigned>(cuda_emulation::WarpExchange(cuda_emulation::WarpOp::kBallot, mask,
                                                            predicate != 0, 0, 32));
}
inline int __any_sync(unsigned mask, int predicate) {
  return static_cast<int>(
      cuda_emulation::WarpExchange(cuda_emulation::WarpOp::kAny, mask, predicate != 0, 0, 32));
}
inline int __all_sync(unsigned mask, int predicate) {
  return static_cast<int>(
      cuda_emulation::WarpExchange(cuda_emulation::WarpOp::kAll, mask, predicate != 0, 0, 32));
}
template <typename T>
unsigned __match_any_sync(unsigned mask, T value) {
  return static_cast<unsigned>(cuda_emulation::WarpExchange(
      cuda_emulation::WarpOp::kMatchAny, mask, cuda_emulation::ToBits(value), 0, 32));
}

// ---- bit and number intrinsics --------------------------------------------------------

inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline unsigned __float_as_uint(float f) { return std::bit_cast<unsigned>(f); }
inline float __uint_as_float(unsigned u) { return std::bit_cast<float>(u); }
inline int __float_as_int(float f) { return std::bit_cast<int>(f); }
inline float __int_as_float(int i) { return std::bit_cast<float>(i); }
inline float __expf(float x) { return expf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }

// CUDA's min and max: overloaded for every arithmetic pair (the usual conversions decide
// the type), fminf / fmaxf for floating point.
template <typename A, typename B,
          typename = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
inline std::common_type_t<A, B> min(A a, B b) {
  using T = std::common_type_t<A, B>;
  if constexpr (std::is_floating_point_v<T>) {
    return std::fmin(static_cast<T>(a), static_cast<T>(b));
  } else {
    return static_cast<T>(b) < static_cast<T>(a) ? static_cast<T>(b) : static_cast<T>(a);
  }
}
template <typename A, typename B,
          typename = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
inline std::common_type_t<A, B> max(A a, B b) {
  using T = std::common_type_t<A, B>;
  if constexpr (std::is_floating_point_v<T>) {
    return std::fmax(static_cast<T>(a), static_cast<T>(b));
  } else {
    return static_cast<T>(a) < static_cast<T>(b) ? static_cast<T>(b) : static_cast<T>(a);
  }
}

// ---- atomics: real host atomics, since blocks of kernels on different streams run on
//      different host threads ----------------------------------------------------------

template <typename T>
T atomicAdd(T* address, std::type_identity_t<T> value) {
  return std::atomic_ref<T>(*address).fetch_add(value, std::memory_order_relaxed);
}
namespace cuda_emulation {
// Stores `value` while it beats the current one (per `beats`); returns the value before.
template <typename T, typename Beats>
T AtomicStoreIf(T* address, T value, Beats beats) {
  std::atomic_ref<T> a(*address);
  T old = a.load(std::memory_order_relaxed);
  while (beats(value, old) && !a.compare_exchange_weak(old, value, std::memory_order_relaxed)) {
  }
  return old;
}
}  // namespace cuda_emulation
template <typename T>
T atomicMax(T* address, std::type_identity_t<T> value) {
  return cuda_emulation::AtomicStoreIf(address, value, [](T v, T old) { return old < v; });
}
template <typename T>
T atomicMin(T* address, std::type_identity_t<T> value) {
  return cuda_emulation::AtomicStoreIf(address, value, [](T v, T old) { return v < old; });
}
template <typename T>
T atomicExch(T* address, std::type_identity_t<T> value) {
  return std::atomic_ref<T>(*address).exchange(value, std::memory_order_relaxed);
}
template <typename T>
T atomicCAS(T* address, std::type_identity_t<T> compare, std::type_identity_t<T> value) {
  std::atomic_ref<T>(*address).compare_exchange_strong(compare, value, std::memory_order_relaxed);
  return compare;
}

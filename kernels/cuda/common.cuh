// Device helpers shared by the kernels: element conversion to and from float, 16-byte vector
// loads, and warp / block reductions. Included by the .cu files only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>

#include "kernels/cuda/ops.h"

namespace ember::kernels {

constexpr unsigned kFullMask = 0xffffffffu;

// ---- launch helpers (host) ---------------------------------------------------------------

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<T>{}) with the C++ type of `type`: float, __half or __nv_bfloat16.
template <typename F>
cudaError_t DispatchScalarType(ScalarType type, F&& f) {
  switch (type) {
    case ScalarType::kF32:
      return f(TypeTag<float>{});
    case ScalarType::kF16:
      return f(TypeTag<__half>{});
    case ScalarType::kBF16:
      return f(TypeTag<__nv_bfloat16>{});
  }
  return cudaErrorInvalidValue;
}

// kernel<<<grid, block, shared_bytes, stream>>>(args...), then the launch's error. Every
// launch goes through here, so that the tests' host emulation of CUDA
// (tests/cuda_emulation, -DEMBER_CUDA_EMULATION=ON) runs the same kernels on fibers.
template <auto Kernel, typename... Args>
cudaError_t LaunchKernel(dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream,
                         Args&&... args) {
#ifdef EMBER_CUDA_EMULATION
  cuda_emulation::Launch<Kernel>(grid, block, shared_bytes, stream, std::forward<Args>(args)...);
#else
  auto* kernel = Kernel;
  kernel<<<grid, block, shared_bytes, stream>>>(std::forward<Args>(args)...);
#endif
  return cudaGetLastError();
}

// The kernel's dynamic shared memory (extern __shared__) as a T*, named `name`.
#ifdef EMBER_CUDA_EMULATION
#define EMBER_DYNAMIC_SHARED(T, name) T* name = static_cast<T*>(::cuda_emulation::DynamicShared())
#else
#define EMBER_DYNAMIC_SHARED(T, name) extern __shared__ __align__(16) T name[]
#endif

// Blocks for a grid-stride loop over `count` items: enough to fill the GPU, capped because
// each thread loops.
inline unsigned GridStrideBlocks(int64_t count, int threads) {
  return static_cast<unsigned>(std::clamp<int64_t>((count + threads - 1) / threads, 1, 1 << 16));
}

__device__ __forceinline__ int64_t GlobalThreadIndex() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t GlobalThreadCount() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// ---- element conversion ------------------------------------------------------------------

__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float ToFloat(__half v) { return __half2float(v); }

// Round to nearest even, bit-exact with FloatToBf16 / FloatToF16 in kernels/types.h except
// NaN payloads.
template <typename T>
__device__ __forceinline__ T FromFloat(float v);
template <>
__device__ __forceinline__ float FromFloat<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half FromFloat<__half>(float v) {
  return __float2half_rn(v);
}

// Elements of T in one 16-byte load: 8 for BF16 / F16, 4 for F32.
template <typename T>
constexpr int kVectorElems = 16 / sizeof(T);

// One 16-byte load at p (16-byte aligned) converted to float. The 16-bit types are unpacked
// by bit manipulation from the loaded words: element 2i is the low half of word i.
__device__ __forceinline__ void LoadVector(const __nv_bfloat16* p, float (&out)[8]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    out[2 * i] = __uint_as_float(words[i] << 16);
    out[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
  }
}

__device__ __forceinline__ void LoadVector(const __half* p, float (&out)[8]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    out[2 * i] = __half2float(__ushort_as_half(static_cast<unsigned short>(words[i] & 0xffffu)));
    out[2 * i + 1] = __half2float(__ushort_as_half(static_cast<unsigned short>(words[i] >> 16)));
  }
}

__device__ __forceinline__ void LoadVector(const float* p, float (&out)[4]) {
  const float4 raw = *reinterpret_cast<const float4*>(p);
  out[0] = raw.x;
  out[1] = raw.y;
  out[2] = raw.z;
  out[3] = raw.w;
}

// Eight consecutive elements at p (16-byte aligned) as float: one load for 16-bit types,
// two for F32.
template <typename T>
__device__ __forceinline__ void Load8(const T* p, float (&out)[8]) {
  if constexpr (kVectorElems<T> == 8) {
    LoadVector(p, out);
  } else {
    float a[4], b[4];
    LoadVector(p, a);
    LoadVector(p + 4, b);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      out[i] = a[i];
      out[i + 4] = b[i];
    }
  }
}

// ---- reductions and scans ---------------------------------------------------------------
// Butterfly (xor) reductions: every lane ends with the result, and the order of operations
// is fixed, so float sums are the same from run to run.

// The reductions' operators, each with its identity (for max and min the lowest and highest
// value, -inf and +inf for floating point); max and min are CUDA's, fmaxf / fminf for float.
template <typename T>
struct SumOp {
  using Value = T;
  static constexpr T kIdentity = T{0};
  __device__ T operator()(T a, T b) const { return a + b; }
};
template <typename T>
struct MaxOp {
  using Value = T;
  static constexpr T kIdentity = std::numeric_limits<T>::has_infinity
                                     ? -std::numeric_limits<T>::infinity()
                                     : std::numeric_limits<T>::lowest();
  __device__ T operator()(T a, T b) const { return max(a, b); }
};
template <typename T>
struct MinOp {
  using Value = T;
  static constexpr T kIdentity = std::numeric_limits<T>::has_infinity
                                     ? std::numeric_limits<T>::infinity()
                                     : std::numeric_limits<T>::max();
  __device__ T operator()(T a, T b) const { return min(a, b); }
};

template <typename Op>
__device__ __forceinline__ typename Op::Value WarpReduce(typename Op::Value v, Op op) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v = op(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}
__device__ __forceinline__ float WarpSum(float v) { return WarpReduce(v, SumOp<float>{}); }
__device__ __forceinline__ float WarpMax(float v) { return WarpReduce(v, MaxOp<float>{}); }

// Reduction over the whole block, returned to every thread. Every thread must call it;
// blockDim.x a multiple of 32; scratch holds 32 values and may be reused once it returns.
template <typename Op>
__device__ typename Op::Value BlockReduce(typename Op::Value v, Op op,
                                          typename Op::Value* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = WarpReduce(v, op);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < static_cast<int>(blockDim.x / 32) ? scratch[lane] : Op::kIdentity;
  v = WarpReduce(v, op);
  __syncthreads();
  return v;
}

// Inclusive prefix sum over the warp in lane order (every lane of the warp calls it).
template <typename T>
__device__ __forceinline__ T WarpInclusiveScan(T v) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int offset = 1; offset < 32; offset *= 2) {
    const T up = __shfl_up_sync(kFullMask, v, offset);
    if (lane >= offset) v += up;
  }
  return v;
}

// Inclusive prefix sum over the block in thread order; *total gets the block's sum. Same
// calling rules as BlockReduce.
template <typename T>
__device__ T BlockInclusiveScan(T v, T* scratch, T* total) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int warps = static_cast<int>(blockDim.x / 32);
  v = WarpInclusiveScan(v);
  if (lane == 31) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {  // scan of the warp totals
    T w = WarpInclusiveScan(lane < warps ? scratch[lane] : T{});
    if (lane < warps) scratch[lane] = w;
  }
  __syncthreads();
  if (warp > 0) v += scratch[warp - 1];
  *total = scratch[warps - 1];
  __syncthreads();
  return v;
}

}  // namespace ember::kernels

// SwiGLU, the Llama MLP's activation: out = silu(gate) * up, elementwise.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace ember::kernels {
namespace {

// g / (1 + e^-g) as the CPU reference writes it; expf, not __expf, for its accuracy.
__device__ __forceinline__ float SiluMul(float g, float u) { return g / (1.0f + expf(-g)) * u; }

// Grid-stride; with `vectorized` (all pointers 16-byte aligned) the body moves float4s and
// the last count % 4 elements go one per thread. Each element is read and written by one
// thread, so out may alias gate or up (hence no __restrict__).
__global__ void swiglu_kernel(const float* gate,  // [count]
                              const float* up,    // [count]
                              int64_t count, bool vectorized,
                              float* out) {  // [count]
  int64_t done = 0;
  if (vectorized) {
    const int64_t n4 = count / 4;
    const auto* g4 = reinterpret_cast<const float4*>(gate);
    const auto* u4 = reinterpret_cast<const float4*>(up);
    auto* o4 = reinterpret_cast<float4*>(out);
    for (int64_t i = GlobalThreadIndex(); i < n4; i += GlobalThreadCount()) {
      const float4 g = g4[i], u = u4[i];
      o4[i] =
          make_float4(SiluMul(g.x, u.x), SiluMul(g.y, u.y), SiluMul(g.z, u.z), SiluMul(g.w, u.w));
    }
    done = n4 * 4;
  }
  for (int64_t i = done + GlobalThreadIndex(); i < count; i += GlobalThreadCount()) {
    out[i] = SiluMul(gate[i], up[i]);
  }
}

}  // namespace

// ---- launcher ----------------------------------------------------------------------------

cudaError_t LaunchSwiGlu(const float* gate, const float* up, int64_t count, float* out,
                         cudaStream_t stream) {
  if (count < 0) return cudaErrorInvalidValue;
  if (count == 0) return cudaSuccess;
  const bool vectorized = ((reinterpret_cast<uintptr_t>(gate) | reinterpret_cast<uintptr_t>(up) |
                            reinterpret_cast<uintptr_t>(out)) %
                           16) == 0;
  constexpr int kThreads = 256;
  const int64_t items = vectorized ? (count + 3) / 4 : count;
  return LaunchKernel<swiglu_kernel>(GridStrideBlocks(items, kThreads), kThreads, 0, stream, gate,
                                     up, count, vectorized, out);
}

}  // namespace ember::kernels

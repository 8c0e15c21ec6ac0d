// Element conversions: ToF32 (norm weights and biases to F32, done once at load) and the
// cuBLAS prefill path's activations (F32 to the weights' 16-bit type).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace ember::kernels {
namespace {

// out[i] = in[i] as To, through float (exact for the widening direction).
template <typename From, typename To>
__global__ void convert_kernel(const From* __restrict__ in,  // [count]
                               int64_t count,
                               To* __restrict__ out) {  // [count]
  for (int64_t i = GlobalThreadIndex(); i < count; i += GlobalThreadCount()) {
    out[i] = FromFloat<To>(ToFloat(in[i]));
  }
}

template <typename From, typename To>
cudaError_t LaunchConvert(const From* in, int64_t count, To* out, cudaStream_t stream) {
  constexpr int kThreads = 256;
  return LaunchKernel<convert_kernel<From, To>>(GridStrideBlocks(count, kThreads), kThreads, 0,
                                                stream, in, count, out);
}

}  // namespace

// ---- launchers ---------------------------------------------------------------------------

cudaError_t LaunchToF32(const void* in, ScalarType type, int64_t count, float* out,
                        cudaStream_t stream) {
  if (count < 0) return cudaErrorInvalidValue;
  if (count == 0) return cudaSuccess;
  return DispatchScalarType(type, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return LaunchConvert(static_cast<const T*>(in), count, out, stream);
  });
}

// F16 or BF16 only (F32 weights multiply the F32 activations directly).
cudaError_t LaunchConvertActivations(const float* x, int64_t count, ScalarType type, void* out,
                                     cudaStream_t stream) {
  if (count < 0 || type == ScalarType::kF32) return cudaErrorInvalidValue;
  if (count == 0) return cudaSuccess;
  return DispatchScalarType(type, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return LaunchConvert(x, count, static_cast<T*>(out), stream);
  });
}

}  // namespace ember::kernels

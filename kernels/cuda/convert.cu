// Small conversions and copies: ToF32 (norm weights and biases to F32, done once at load)
// and GatherRows (e.g. the last hidden state of each sequence before the logits).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace ember::kernels {
namespace {

template <typename T>
__global__ void to_f32_kernel(const T* __restrict__ in,  // [count]
                              int64_t count,
                              float* __restrict__ out) {  // [count]
  for (int64_t i = GlobalThreadIndex(); i < count; i += GlobalThreadCount())
    out[i] = ToFloat(in[i]);
}

// One block per gathered row.
__global__ void gather_rows_kernel(const float* __restrict__ in,      // [*, width]
                                   const int32_t* __restrict__ rows,  // [n_rows]
                                   int width,
                                   float* __restrict__ out) {  // [n_rows, width]
  const float* src = in + static_cast<int64_t>(rows[blockIdx.x]) * width;
  float* dst = out + static_cast<int64_t>(blockIdx.x) * width;
  for (int i = threadIdx.x; i < width; i += blockDim.x) dst[i] = src[i];
}

}  // namespace

// ---- launchers ---------------------------------------------------------------------------

cudaError_t LaunchToF32(const void* in, ElementType type, int64_t count, float* out,
                        cudaStream_t stream) {
  if (count < 0) return cudaErrorInvalidValue;
  if (count == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  return DispatchElementType(type, [&](auto tag) {
    using T = typename decltype(tag)::type;
    to_f32_kernel<T><<<GridStrideBlocks(count, kThreads), kThreads, 0, stream>>>(
        static_cast<const T*>(in), count, out);
    return cudaGetLastError();
  });
}

// Assumes every rows[i] is a valid row of `in`; n_rows up to 2^31 - 1.
cudaError_t LaunchGatherRows(const float* in, const int32_t* rows, int n_rows, int width,
                             float* out, cudaStream_t stream) {
  if (n_rows < 0 || width < 0) return cudaErrorInvalidValue;
  if (n_rows == 0 || width == 0) return cudaSuccess;
  gather_rows_kernel<<<n_rows, 256, 0, stream>>>(in, rows, width, out);
  return cudaGetLastError();
}

}  // namespace ember::kernels

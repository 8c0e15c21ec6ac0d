// Embedding lookup: gathers one table row per token and converts it to F32.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace ember::kernels {
namespace {

// One block per token; consecutive threads read consecutive elements of the row.
template <typename T>
__global__ void embed_kernel(const T* __restrict__ table,      // [vocab, hidden]
                             const int32_t* __restrict__ ids,  // [n]
                             int64_t hidden,
                             float* __restrict__ out) {  // [n, hidden]
  const T* row = table + static_cast<int64_t>(ids[blockIdx.x]) * hidden;
  float* dst = out + static_cast<int64_t>(blockIdx.x) * hidden;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = ToFloat(row[i]);
}

}  // namespace

// ---- launcher ----------------------------------------------------------------------------

// Assumes ids are valid rows (the tokenizer's range is checked where ids enter the worker).
cudaError_t LaunchEmbed(const void* table, ElementType type, int64_t hidden, const int32_t* ids,
                        int n, float* out, cudaStream_t stream) {
  if (n < 0 || hidden < 0) return cudaErrorInvalidValue;
  if (n == 0 || hidden == 0) return cudaSuccess;
  return DispatchElementType(type, [&](auto tag) {
    using T = typename decltype(tag)::type;
    embed_kernel<T><<<n, 256, 0, stream>>>(static_cast<const T*>(table), ids, hidden, out);
    return cudaGetLastError();
  });
}

}  // namespace ember::kernels

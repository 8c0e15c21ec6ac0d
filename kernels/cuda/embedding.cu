// Row gathers: the embedding lookup (one table row per token, converted to F32) and
// GatherRows (e.g. the last hidden state of each sequence before the logits), the same
// kernel over an F32 table.
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

// ---- launchers ---------------------------------------------------------------------------

// Assumes ids are valid rows (the tokenizer's range is checked where ids enter the worker);
// n up to 2^31 - 1.
cudaError_t LaunchEmbed(const void* table, ScalarType type, int64_t hidden, const int32_t* ids,
                        int n, float* out, cudaStream_t stream) {
  if (n < 0 || hidden < 0) return cudaErrorInvalidValue;
  if (n == 0 || hidden == 0) return cudaSuccess;
  return DispatchScalarType(type, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return LaunchKernel<embed_kernel<T>>(n, 256, 0, stream, static_cast<const T*>(table), ids,
                                         hidden, out);
  });
}

// Assumes every rows[i] is a valid row of `in`.
cudaError_t LaunchGatherRows(const float* in, const int32_t* rows, int n_rows, int width,
                             float* out, cudaStream_t stream) {
  return LaunchEmbed(in, ScalarType::kF32, width, rows, n_rows, out, stream);
}

}  // namespace ember::kernels

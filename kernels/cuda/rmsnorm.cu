// RMSNorm fused with the residual add that precedes it (Llama's pre-norm blocks): one read
// and one write of the residual stream per layer instead of two.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace ember::kernels {
namespace {

constexpr int kRmsNormThreads = 256;

// One block per row, FP32 throughout as in Hugging Face's LlamaRMSNorm. Each thread
// touches the same indices in both passes, so out may alias x or residual.
__global__ void __launch_bounds__(kRmsNormThreads)
    add_rms_norm_kernel(const float* x,       // [n, hidden] or null
                        float* residual,      // [n, hidden]
                        const float* weight,  // [hidden]
                        int hidden, float eps,
                        float* out) {  // [n, hidden]
  __shared__ float scratch[32];
  const int64_t base = static_cast<int64_t>(blockIdx.x) * hidden;
  float sum = 0;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    float r = residual[base + i];
    if (x != nullptr) {
      r += x[base + i];
      residual[base + i] = r;
    }
    sum += r * r;
  }
  sum = BlockReduce(sum, SumOp<float>{}, scratch);
  // 1/sqrtf rather than rsqrtf: correctly rounded, once per row.
  const float inv = 1.0f / sqrtf(sum / static_cast<float>(hidden) + eps);
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    out[base + i] = residual[base + i] * inv * weight[i];
  }
}

}  // namespace

// ---- launcher ----------------------------------------------------------------------------

// n rows (up to 2^31 - 1) of `hidden` floats.
cudaError_t LaunchAddRmsNorm(const float* x, float* residual, const float* weight, int n,
                             int hidden, float eps, float* out, cudaStream_t stream) {
  if (n < 0 || hidden < 0) return cudaErrorInvalidValue;
  if (n == 0 || hidden == 0) return cudaSuccess;
  return LaunchKernel<add_rms_norm_kernel>(n, kRmsNormThreads, 0, stream, x, residual, weight,
                                           hidden, eps, out);
}

}  // namespace ember::kernels

// Rotary position embedding in Hugging Face's rotate-half layout, applied in place to the
// query and key heads of each token.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace ember::kernels {
namespace {

constexpr int kRopeThreads = 128;
constexpr int kRopeMaxHalf = 512;

// One block per token. The angles are computed once per token into shared memory, then every
// (head, i) pair of q and k turns by them. The angle is float(pos) * inv_freq[i] in FP32 as
// transformers computes it, and sincosf (not __sincosf): angles reach thousands of radians,
// where the fast intrinsic's range reduction loses the result.
__global__ void __launch_bounds__(kRopeThreads)
    rope_kernel(float* __restrict__ q,                  // [n, q_heads, head_dim]
                float* __restrict__ k,                  // [n, kv_heads, head_dim]
                const int32_t* __restrict__ positions,  // [n]
                const float* __restrict__ inv_freq,     // [head_dim / 2]
                int q_heads, int kv_heads, int head_dim) {
  __shared__ float cos_s[kRopeMaxHalf], sin_s[kRopeMaxHalf];
  const int half = head_dim / 2;
  const float pos = static_cast<float>(positions[blockIdx.x]);
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    sincosf(pos * inv_freq[i], &sin_s[i], &cos_s[i]);
  }
  __syncthreads();
  float* qt = q + static_cast<int64_t>(blockIdx.x) * q_heads * head_dim;
  float* kt = k + static_cast<int64_t>(blockIdx.x) * kv_heads * head_dim;
  const int pairs = (q_heads + kv_heads) * half;
  for (int j = threadIdx.x; j < pairs; j += blockDim.x) {
    const int h = j / half, i = j % half;
    float* v = h < q_heads ? qt + h * head_dim : kt + (h - q_heads) * head_dim;
    const float a = v[i], b = v[i + half];
    v[i] = a * cos_s[i] - b * sin_s[i];
    v[i + half] = b * cos_s[i] + a * sin_s[i];
  }
}

}  // namespace

// ---- launcher ----------------------------------------------------------------------------

// head_dim even, at most 2 * kRopeMaxHalf; n up to 2^31 - 1 tokens.
cudaError_t LaunchRope(float* q, float* k, const int32_t* positions, const float* inv_freq, int n,
                       int q_heads, int kv_heads, int head_dim, cudaStream_t stream) {
  if (n < 0 || q_heads < 0 || kv_heads < 0 || head_dim < 0 || head_dim % 2 != 0 ||
      head_dim / 2 > kRopeMaxHalf) {
    return cudaErrorInvalidValue;
  }
  if (n == 0 || head_dim == 0 || q_heads + kv_heads == 0) return cudaSuccess;
  return LaunchKernel<rope_kernel>(n, kRopeThreads, 0, stream, q, k, positions, inv_freq, q_heads,
                                   kv_heads, head_dim);
}

}  // namespace ember::kernels

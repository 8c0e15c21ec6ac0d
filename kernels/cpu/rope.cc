// CPU rotary position embedding, Hugging Face's rotate-half layout.
#include <cmath>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/thread_pool.h"

namespace ember::kernels::cpu {
namespace {

void RotateHeads(float* x, int heads, int head_dim, const float* cos_t, const float* sin_t) {
  const int half = head_dim / 2;
  for (int h = 0; h < heads; ++h) {
    float* v = x + h * head_dim;
    for (int i = 0; i < half; ++i) {
      const float a = v[i], b = v[i + half];
      v[i] = a * cos_t[i] - b * sin_t[i];
      v[i + half] = b * cos_t[i] + a * sin_t[i];
    }
  }
}

}  // namespace

void Rope(float* q, float* k, const int32_t* positions, const float* inv_freq, int n,
          int q_heads, int kv_heads, int head_dim) {
  const int half = head_dim / 2;
  ParallelFor(n, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      // The angle in FP32, as transformers computes it (inv_freq · position in float32).
      float cos_t[512], sin_t[512];
      for (int i = 0; i < half; ++i) {
        const float angle = static_cast<float>(positions[t]) * inv_freq[i];
        cos_t[i] = std::cos(angle);
        sin_t[i] = std::sin(angle);
      }
      RotateHeads(q + t * q_heads * head_dim, q_heads, head_dim, cos_t, sin_t);
      RotateHeads(k + t * kv_heads * head_dim, kv_heads, head_dim, cos_t, sin_t);
    }
  });
}

}  // namespace ember::kernels::cpu

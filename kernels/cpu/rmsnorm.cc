// CPU RMSNorm fused with the residual add, FP32 as in Hugging Face's LlamaRMSNorm.
#include <cmath>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/thread_pool.h"

namespace ember::kernels::cpu {

void AddRmsNorm(const float* x, float* residual, const float* weight, int n, int hidden,
                float eps, float* out) {
  ParallelFor(n, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      float* r = residual + t * hidden;
      if (x != nullptr) {
        const float* xr = x + t * hidden;
        for (int i = 0; i < hidden; ++i) r[i] += xr[i];
      }
      // Sum of squares in double: hidden sizes reach 8192 and the reference is exact-ish.
      double sum = 0;
      for (int i = 0; i < hidden; ++i) sum += static_cast<double>(r[i]) * r[i];
      const float inv = 1.0f / std::sqrt(static_cast<float>(sum / hidden) + eps);
      float* o = out + t * hidden;
      for (int i = 0; i < hidden; ++i) o[i] = r[i] * inv * weight[i];
    }
  });
}

}  // namespace ember::kernels::cpu

// CPU RMSNorm fused with the residual add, FP32 as in Hugging Face's LlamaRMSNorm.
#include <cmath>

#include "kernels/cpu/ops.h"

namespace ember::kernels::cpu {

void AddRmsNorm(const float* x, float* residual, const float* weight, int n, int hidden,
                float eps, float* out) {
#pragma omp parallel for schedule(static)
  for (int t = 0; t < n; ++t) {
    float* r = residual + static_cast<int64_t>(t) * hidden;
    if (x != nullptr) {
      const float* xr = x + static_cast<int64_t>(t) * hidden;
      for (int i = 0; i < hidden; ++i) r[i] += xr[i];
    }
    // Sum of squares in double: hidden sizes reach 8192 and the reference is exact-ish.
    double sum = 0;
    for (int i = 0; i < hidden; ++i) sum += static_cast<double>(r[i]) * r[i];
    const float inv = 1.0f / std::sqrt(static_cast<float>(sum / hidden) + eps);
    float* o = out + static_cast<int64_t>(t) * hidden;
    for (int i = 0; i < hidden; ++i) o[i] = r[i] * inv * weight[i];
  }
}

}  // namespace ember::kernels::cpu

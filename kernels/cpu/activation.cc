// CPU SwiGLU: silu(gate) * up, the Llama MLP's activation.
#include <cmath>

#include "kernels/cpu/ops.h"

namespace ember::kernels::cpu {

void SwiGlu(const float* gate, const float* up, int64_t count, float* out) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

}  // namespace ember::kernels::cpu

// CPU SwiGLU: silu(gate) * up, the Llama MLP's activation.
#include <cmath>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/thread_pool.h"

namespace ember::kernels::cpu {

void SwiGlu(const float* gate, const float* up, int64_t count, float* out) {
  ParallelFor(count, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float g = gate[i];
      out[i] = g / (1.0f + std::exp(-g)) * up[i];
    }
  });
}

}  // namespace ember::kernels::cpu

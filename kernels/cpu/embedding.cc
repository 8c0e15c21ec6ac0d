// CPU embedding gather and the small F32 conversions (norm weights, biases).
#include "kernels/cpu/ops.h"
#include "kernels/cpu/thread_pool.h"

namespace ember::kernels::cpu {

void ToF32(const Matrix& m, float* out) { RowToF32(m.data, m.type, m.rows * m.cols, out); }

void Embed(const Matrix& table, const int32_t* ids, int n, float* out) {
  const int64_t hidden = table.cols;
  const size_t row_bytes = static_cast<size_t>(hidden) * ScalarBytes(table.type);
  ParallelFor(n, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const auto* row = static_cast<const uint8_t*>(table.data) + ids[t] * row_bytes;
      RowToF32(row, table.type, hidden, out + t * hidden);
    }
  });
}

void GatherRows(const float* in, const int32_t* rows, int n_rows, int width, float* out) {
  for (int i = 0; i < n_rows; ++i) {
    const float* src = in + static_cast<int64_t>(rows[i]) * width;
    float* dst = out + static_cast<int64_t>(i) * width;
    for (int j = 0; j < width; ++j) dst[j] = src[j];
  }
}

}  // namespace ember::kernels::cpu

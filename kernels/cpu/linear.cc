// CPU linear layer y = x · Wᵀ (+ bias) over BF16/F16/F32 weights with FP32 accumulation.
// Decode is bound by reading the weights, so each weight row is read from memory once
// per step: a block of rows is converted to F32 into a per-thread buffer that stays in
// cache, then used for every token of the step.
#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/ops.h"

namespace ember::kernels::cpu {
namespace {

constexpr int kRowBlock = 8;      // weight rows converted together (fits L2 for cols <= 16k)
constexpr int kTokenTile = 64;    // tokens per pass over a row block (prefill)

// 16 independent accumulators so the loop vectorizes without reassociating one sum.
EMBER_CPU_CLONES
float Dot(const float* a, const float* b, int64_t n) {
  float acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    for (int l = 0; l < 16; ++l) acc[l] += a[i + l] * b[i + l];
  }
  float sum = 0;
  for (int l = 0; l < 16; ++l) sum += acc[l];
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

EMBER_CPU_CLONES
void Bf16RowToF32(const uint16_t* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t bits = static_cast<uint32_t>(src[i]) << 16;
    std::memcpy(dst + i, &bits, 4);
  }
}

EMBER_CPU_CLONES
void F16RowToF32(const _Float16* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

}  // namespace

void RowToF32(const void* src, ScalarType type, int64_t count, float* dst) {
  switch (type) {
    case ScalarType::kF32:
      std::memcpy(dst, src, count * sizeof(float));
      return;
    case ScalarType::kBF16:
      Bf16RowToF32(static_cast<const uint16_t*>(src), count, dst);
      return;
    case ScalarType::kF16:
      F16RowToF32(static_cast<const _Float16*>(src), count, dst);
      return;
  }
}

void Linear(const float* x, int n, const Matrix& w, const float* bias, float* y) {
  const int64_t rows = w.rows, cols = w.cols;
  const int64_t blocks = (rows + kRowBlock - 1) / kRowBlock;
  const size_t row_bytes = static_cast<size_t>(cols) * ScalarBytes(w.type);
#pragma omp parallel
  {
    std::vector<float> converted(w.type == ScalarType::kF32 ? 0 : kRowBlock * cols);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t r0 = b * kRowBlock;
      const int64_t r1 = std::min(rows, r0 + kRowBlock);
      const float* block;  // [r1 - r0, cols]
      if (w.type == ScalarType::kF32) {
        block = static_cast<const float*>(w.data) + r0 * cols;
      } else {
        const auto* src = static_cast<const uint8_t*>(w.data) + r0 * row_bytes;
        RowToF32(src, w.type, (r1 - r0) * cols, converted.data());
        block = converted.data();
      }
      for (int t0 = 0; t0 < n; t0 += kTokenTile) {
        const int t1 = std::min(n, t0 + kTokenTile);
        for (int64_t r = r0; r < r1; ++r) {
          const float* wrow = block + (r - r0) * cols;
          const float add = bias != nullptr ? bias[r] : 0.0f;
          for (int t = t0; t < t1; ++t) {
            y[t * rows + r] = Dot(x + t * cols, wrow, cols) + add;
          }
        }
      }
    }
  }
}

}  // namespace ember::kernels::cpu

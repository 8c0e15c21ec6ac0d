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

// 32 independent accumulators: the loop vectorizes into two (AVX-512) or four (AVX2)
// FMA chains without reassociating one sum.
EMBER_CPU_CLONES
float Dot(const float* a, const float* b, int64_t n) {
  float acc[32] = {};
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    for (int l = 0; l < 32; ++l) acc[l] += a[i + l] * b[i + l];
  }
  float sum = 0;
  for (int l = 0; l < 32; ++l) sum += acc[l];
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// Four tokens against one weight row: each weight vector is loaded once for four FMA
// chains, which is what makes a batched decode step cost little more than batch 1.
EMBER_CPU_CLONES
void Dot4(const float* x, int64_t stride, const float* w, int64_t n, float* out) {
  float acc[4][16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    for (int t = 0; t < 4; ++t) {
      for (int l = 0; l < 16; ++l) acc[t][l] += x[t * stride + i + l] * w[i + l];
    }
  }
  for (int t = 0; t < 4; ++t) {
    float sum = 0;
    for (int l = 0; l < 16; ++l) sum += acc[t][l];
    for (int64_t j = i; j < n; ++j) sum += x[t * stride + j] * w[j];
    out[t] = sum;
  }
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
          int t = t0;
          for (; t + 4 <= t1; t += 4) {
            float out[4];
            Dot4(x + t * cols, cols, wrow, cols, out);
            for (int j = 0; j < 4; ++j) y[(t + j) * rows + r] = out[j] + add;
          }
          for (; t < t1; ++t) y[t * rows + r] = Dot(x + t * cols, wrow, cols) + add;
        }
      }
    }
  }
}

}  // namespace ember::kernels::cpu

// CPU linear layer y = x · Wᵀ (+ bias) over BF16/F16/F32 weights with FP32 accumulation.
// Decode is bound by reading the weights, so each weight row is read from memory once
// per step and converted in registers, four tokens sharing every load.
#include <algorithm>
#include <cstring>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/thread_pool.h"

namespace ember::kernels::cpu {
namespace {

constexpr int kTokenTile = 4;  // tokens sharing each weight load (four FMA chains)

// More GCC vectors beside ops.h's V16f: the 16-bit weights before widening.
typedef uint16_t V16u16 __attribute__((vector_size(32)));
typedef uint32_t V16u32 __attribute__((vector_size(64)));
typedef _Float16 V16f16 __attribute__((vector_size(32)));

template <ScalarType T>
__attribute__((always_inline)) inline V16f Load16(const void* base, int64_t i) {
  V16f out;
  if constexpr (T == ScalarType::kF32) {
    std::memcpy(&out, static_cast<const float*>(base) + i, 64);
  } else if constexpr (T == ScalarType::kBF16) {
    V16u16 h;
    std::memcpy(&h, static_cast<const uint16_t*>(base) + i, 32);
    const V16u32 bits = __builtin_convertvector(h, V16u32) << 16;
    std::memcpy(&out, &bits, 64);
  } else {
    V16f16 h;
    std::memcpy(&h, static_cast<const _Float16*>(base) + i, 32);
    out = __builtin_convertvector(h, V16f);
  }
  return out;
}

template <ScalarType T>
__attribute__((always_inline)) inline float LoadOne(const void* base, int64_t i) {
  if constexpr (T == ScalarType::kF32) return static_cast<const float*>(base)[i];
  if constexpr (T == ScalarType::kBF16) return Bf16ToFloat(static_cast<const uint16_t*>(base)[i]);
  return static_cast<float>(static_cast<const _Float16*>(base)[i]);
}

// out[t] = x[t] · w for NT tokens (rows of x `stride` apart) against one weight row of
// `n` elements: the row is read from memory once, converted in registers, and used for
// every token. FP32 accumulation in 16-lane vectors.
template <ScalarType T, int NT>
__attribute__((always_inline)) inline void RowDots(const float* x, int64_t stride, const void* w, int64_t n, float* out) {
  V16f acc[NT] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const V16f wv = Load16<T>(w, i);
    for (int t = 0; t < NT; ++t) acc[t] += LoadV16f(x + t * stride + i) * wv;
  }
  for (int t = 0; t < NT; ++t) {
    float sum = 0;
    for (int l = 0; l < 16; ++l) sum += acc[t][l];
    for (int64_t j = i; j < n; ++j) sum += x[t * stride + j] * LoadOne<T>(w, j);
    out[t] = sum;
  }
}

// Weight rows [begin, end) of the layer (one thread's part).
template <ScalarType T>
EMBER_CPU_CLONES void LinearRows(const float* x, int n, const Matrix& w, const float* bias,
                                 float* y, int64_t begin, int64_t end) {
  const int64_t rows = w.rows, cols = w.cols;
  const size_t row_bytes = static_cast<size_t>(cols) * ScalarBytes(T);
  for (int64_t r = begin; r < end; ++r) {
    const void* wrow = static_cast<const uint8_t*>(w.data) + r * row_bytes;
    const float add = bias != nullptr ? bias[r] : 0.0f;
    float out[kTokenTile];
    int t = 0;
    for (; t + kTokenTile <= n; t += kTokenTile) {
      RowDots<T, kTokenTile>(x + t * cols, cols, wrow, cols, out);
      for (int j = 0; j < kTokenTile; ++j) y[(t + j) * rows + r] = out[j] + add;
    }
    const int left = n - t;
    if (left == 3) RowDots<T, 3>(x + t * cols, cols, wrow, cols, out);
    if (left == 2) RowDots<T, 2>(x + t * cols, cols, wrow, cols, out);
    if (left == 1) RowDots<T, 1>(x + t * cols, cols, wrow, cols, out);
    for (int j = 0; j < left; ++j) y[(t + j) * rows + r] = out[j] + add;
  }
}

template <ScalarType T>
void LinearTyped(const float* x, int n, const Matrix& w, const float* bias, float* y) {
  // The part is a target-cloned function of its own: code inlined into a lambda would be
  // compiled for the baseline instruction set only.
  ParallelFor(w.rows, [&](int64_t begin, int64_t end) { LinearRows<T>(x, n, w, bias, y, begin, end); });
}

// Row conversion for the small users (embedding rows, norm weights, a KV row), with the
// same vector loads as the matmul.
template <ScalarType T>
EMBER_CPU_CLONES void RowToF32Typed(const void* src, int64_t count, float* dst) {
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    const V16f v = Load16<T>(src, i);
    std::memcpy(dst + i, &v, 64);
  }
  for (; i < count; ++i) dst[i] = LoadOne<T>(src, i);
}

}  // namespace

void RowToF32(const void* src, ScalarType type, int64_t count, float* dst) {
  switch (type) {
    case ScalarType::kF32: return RowToF32Typed<ScalarType::kF32>(src, count, dst);
    case ScalarType::kBF16: return RowToF32Typed<ScalarType::kBF16>(src, count, dst);
    case ScalarType::kF16: return RowToF32Typed<ScalarType::kF16>(src, count, dst);
  }
}

void Linear(const float* x, int n, const Matrix& w, const float* bias, float* y) {
  const LinearOut out{&w, bias, y};
  if (w.type == ScalarType::kBF16 && UsesBf16Compute()) return LinearBf16(x, n, {&out, 1});
  switch (w.type) {
    case ScalarType::kF32: return LinearTyped<ScalarType::kF32>(x, n, w, bias, y);
    case ScalarType::kBF16: return LinearTyped<ScalarType::kBF16>(x, n, w, bias, y);
    case ScalarType::kF16: return LinearTyped<ScalarType::kF16>(x, n, w, bias, y);
  }
}

void Linears(const float* x, int n, std::span<const LinearOut> outs) {
  const bool together = UsesBf16Compute() && std::all_of(outs.begin(), outs.end(), [&](const LinearOut& o) {
    return o.w->type == ScalarType::kBF16 && o.w->cols == outs[0].w->cols;
  });
  if (together) return LinearBf16(x, n, outs);
  for (const LinearOut& o : outs) Linear(x, n, *o.w, o.bias, o.y);
}

}  // namespace ember::kernels::cpu

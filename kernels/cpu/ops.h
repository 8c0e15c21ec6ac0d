// The CPU reference ops, one file per op family (embedding.cc, rmsnorm.cc, ...), each
// multithreaded on the backend's thread pool (thread_pool.h) and written as plain loops the compiler vectorizes. The
// semantics of every op are those documented in kernels/backend.h.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>

#include "kernels/backend.h"

// Hot loops are compiled for AVX-512, AVX2+FMA and baseline x86-64, picked at load time,
// so one binary runs anywhere and still uses the machine's vector width.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define EMBER_CPU_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define EMBER_CPU_CLONES
#endif

namespace ember::kernels::cpu {

// 16 floats as a GCC vector: one zmm (AVX-512) or two ymm (AVX2); each target clone picks
// its instructions. (-Wpsabi: used only inside the clones, never passed across an ABI.)
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float V16f __attribute__((vector_size(64)));
__attribute__((always_inline)) inline V16f LoadV16f(const float* p) {
  V16f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

void ToF32(const Matrix& m, float* out);
void Embed(const Matrix& table, const int32_t* ids, int n, float* out);
void AddRmsNorm(const float* x, float* residual, const float* weight, int n, int hidden,
                float eps, float* out);
void Linear(const float* x, int n, const Matrix& w, const float* bias, float* y);
void Rope(float* q, float* k, const int32_t* positions, const float* inv_freq, int n,
          int q_heads, int kv_heads, int head_dim);
void SwiGlu(const float* gate, const float* up, int64_t count, float* out);
void KvStore(const KvLayer& cache, const float* k, const float* v, const int32_t* slots, int n);
void Attention(const AttentionArgs& args);
void GatherRows(const float* in, const int32_t* rows, int n_rows, int width, float* out);
void Sample(const float* logits, int n_rows, int vocab, const SamplingRow* rows,
            int32_t* tokens);

void Linears(const float* x, int n, std::span<const LinearOut> outs);
// y = x · Wᵀ for every output, BF16 weights of one width, x rounded to BF16 once
// (linear_bf16.cc); only where HasBf16DotProducts().
void LinearBf16(const float* x, int n, std::span<const LinearOut> outs);
bool HasBf16DotProducts();

// Converts `count` elements of a BF16/F16/F32 row to F32 (vectorized).
void RowToF32(const void* src, ScalarType type, int64_t count, float* dst);

}  // namespace ember::kernels::cpu

// Launchers of Ember's CUDA kernels, one group per .cu file, over the interface's own types
// (kernels/types.h, plain C++17 that nvcc compiles too). Every launcher enqueues on `stream`
// and returns cudaGetLastError(); a shape it does not support returns cudaErrorInvalidValue
// with nothing enqueued. All pointers are device pointers.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/types.h"

namespace ember::kernels {

// ---- convert.cu ------------------------------------------------------------------------
// out[count] = in[count] converted to F32.
cudaError_t LaunchToF32(const void* in, ScalarType type, int64_t count, float* out,
                        cudaStream_t stream);
// out[count] = x[count] rounded to `type` (F16 or BF16): the cuBLAS path's activations.
cudaError_t LaunchConvertActivations(const float* x, int64_t count, ScalarType type, void* out,
                                     cudaStream_t stream);

// ---- embedding.cu ----------------------------------------------------------------------
// out[n, hidden] = table[ids[t], hidden] in F32; ids must be valid rows of the table.
cudaError_t LaunchEmbed(const void* table, ScalarType type, int64_t hidden, const int32_t* ids,
                        int n, float* out, cudaStream_t stream);
// out[i, width] = in[rows[i], width] for i < n_rows.
cudaError_t LaunchGatherRows(const float* in, const int32_t* rows, int n_rows, int width,
                             float* out, cudaStream_t stream);

// ---- rmsnorm.cu ------------------------------------------------------------------------
// residual[n, hidden] += x (x may be null); out = residual * rsqrt(mean(residual²) + eps) *
// weight[hidden].
cudaError_t LaunchAddRmsNorm(const float* x, float* residual, const float* weight, int n,
                             int hidden, float eps, float* out, cudaStream_t stream);

// ---- rope.cu ---------------------------------------------------------------------------
// Rotate-half rotary embedding in place: q[n, q_heads, head_dim], k[n, kv_heads, head_dim],
// positions[n], inv_freq[head_dim / 2]; head_dim even and <= 1024.
cudaError_t LaunchRope(float* q, float* k, const int32_t* positions, const float* inv_freq, int n,
                       int q_heads, int kv_heads, int head_dim, cudaStream_t stream);

// ---- activation.cu ---------------------------------------------------------------------
// out[count] = silu(gate) * up; out may alias gate or up.
cudaError_t LaunchSwiGlu(const float* gate, const float* up, int64_t count, float* out,
                         cudaStream_t stream);

// ---- linear.cu -------------------------------------------------------------------------
// Up to this many tokens Linear runs Ember's skinny GEMM (weights streamed once per tile of
// 8 tokens); beyond it the backend uses cuBLAS, which wins once the tile count grows.
constexpr int kGemvMaxTokens = 16;
// y[n, rows] = x[n, cols] · w[rows, cols]ᵀ (+ bias[rows] when not null), FP32 accumulation.
// Any n works; rows and cols up to 2^31 - 1.
cudaError_t LaunchLinearGemv(const float* x, int n, const void* w, ScalarType type, int64_t rows,
                             int64_t cols, const float* bias, float* y, cudaStream_t stream);
// y[n, rows] += bias[rows].
cudaError_t LaunchAddBias(float* y, const float* bias, int n, int64_t rows, cudaStream_t stream);

// ---- attention.cu ----------------------------------------------------------------------
// Writes k, v [n, kv_heads, head_dim] (F32) into the cache at slots[n], converting to its
// type.
cudaError_t LaunchKvStore(const KvLayer& cache, const float* k, const float* v,
                          const int32_t* slots, int n, cudaStream_t stream);

// Bytes of workspace that let every batch of up to max_tokens tokens use split-K. With less
// (or none), Attention still runs, one block per token and kv head over the whole context.
size_t PagedAttentionWorkspaceBytes(int max_tokens, int q_heads, int head_dim);
// Supports head_dim a multiple of 8 up to 256, q_heads / kv_heads (a whole number) up to 16,
// and n up to 2^31 - 1 tokens; caches 16-byte aligned. Split-K partials go in p.workspace.
cudaError_t LaunchPagedAttention(const AttentionArgs& p, cudaStream_t stream);

// ---- sampling.cu -----------------------------------------------------------------------
// Opts the sampling kernel into the shared memory it needs (above the default 48 KiB), on
// the current device. Once, before any LaunchSample; fails where the device cannot run it.
cudaError_t PrepareSampleKernel();
// tokens[s] = the token chosen from logits[s, vocab] by rows[s] (SamplingRow semantics).
cudaError_t LaunchSample(const float* logits, int n_rows, int vocab, const SamplingRow* rows,
                         int32_t* tokens, cudaStream_t stream);

}  // namespace ember::kernels

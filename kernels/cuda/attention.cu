// Attention over the paged KV cache: KvStore writes each step's keys and values into their
// slots; Attention runs one block per (token, kv head, split), split-K (flash-decoding) for
// long contexts, and a combine kernel that merges the splits.
#include <climits>
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace ember::kernels {
namespace {

constexpr int kAttnThreads = 128;
constexpr int kAttnTile = kAttnThreads;  // keys per tile: one per thread while scoring
constexpr int kAttnMaxGroup = 16;        // query heads per kv head
constexpr int kAttnMaxHeadDim = 256;
constexpr int kAttnDimsPerThread = kAttnMaxHeadDim / kAttnThreads;

// The split rule. Decode batches (n <= kMaxSplitTokens) cut each token's visible keys into
// partitions of kSplitPartition keys, one block each, so a single long sequence still fills
// the GPU; at most kMaxSplits per token, beyond kMaxSplits * kSplitPartition keys the
// partition grows instead (in whole tiles). Larger batches have blocks enough: one split.
constexpr int kSplitPartition = 512;
constexpr int kMaxSplits = 32;  // == warp size: the combine kernel merges with one warp
constexpr int kMaxSplitTokens = 64;

// Splits of a token that sees `len` keys; the grid has max_splits of them, and the last
// split of a token runs to its position, so every key is covered whatever the plan was.
__device__ __forceinline__ int SplitsForToken(int len, int partition, int max_splits) {
  return min(1 + (len - 1) / partition, max_splits);
}

__device__ __forceinline__ int FirstVisibleKey(int pos, int sliding_window) {
  return sliding_window > 0 ? max(0, pos - sliding_window + 1) : 0;
}

template <typename T>
__global__ void kv_store_kernel(const float* __restrict__ k,        // [n, width]
                                const float* __restrict__ v,        // [n, width]
                                const int32_t* __restrict__ slots,  // [n]
                                int width,                          // kv_heads * head_dim
                                T* __restrict__ k_cache,            // [slots, width]
                                T* __restrict__ v_cache) {          // [slots, width]
  const int64_t src = static_cast<int64_t>(blockIdx.x) * width;
  const int64_t dst = static_cast<int64_t>(slots[blockIdx.x]) * width;
  for (int i = threadIdx.x; i < width; i += blockDim.x) {
    k_cache[dst + i] = FromFloat<T>(k[src + i]);
    v_cache[dst + i] = FromFloat<T>(v[src + i]);
  }
}

// Block (t, kv head, split) handles every query head of the kv head's group, so each K and
// V row is read from memory once for the group. Keys go in tiles of 128:
//   1. thread i scores key i of the tile against all G query heads (q staged in shared
//      memory, K row read with 16-byte loads);
//   2. warp w updates the running max and sum of heads w, w + 4, ... (online softmax, FP32,
//      the maximum subtracted) and turns the scores into weights;
//   3. thread i accumulates dims i and i + 128 of the output of every head from the tile's
//      V rows (consecutive threads read consecutive elements).
// A token with one split writes its output; otherwise each split writes its unnormalised
// accumulator and (max, sum) for combine_splits_kernel.
template <typename KV>
__global__ void __launch_bounds__(kAttnThreads)
    paged_attention_kernel(AttentionArgs p, int partition,
                           float* __restrict__ partial_acc,    // [n, q_heads, splits, head_dim]
                           float2* __restrict__ partial_ml) {  // [n, q_heads, splits]
  const int t = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int head_dim = p.cache.head_dim;
  const int group = p.q_heads / p.cache.kv_heads;
  const int pos = p.token_pos[t];
  const int first = FirstVisibleKey(pos, p.sliding_window);
  const int splits = SplitsForToken(pos + 1 - first, partition, gridDim.z);
  if (split >= splits) return;  // the whole block: no barrier is skipped
  const int begin = first + split * partition;
  const int end = split == splits - 1 ? pos + 1 : begin + partition;

  __shared__ __align__(16) float q_s[kAttnMaxGroup * kAttnMaxHeadDim];  // [group, head_dim]
  __shared__ float weight_s[kAttnMaxGroup][kAttnTile];  // the tile's scores, then weights
  __shared__ int slot_s[kAttnTile];
  __shared__ float max_s[kAttnMaxGroup], sum_s[kAttnMaxGroup], rescale_s[kAttnMaxGroup];

  const int h0 = kvh * group;  // the group's first query head
  const float* q = p.q + (static_cast<int64_t>(t) * p.q_heads + h0) * head_dim;
  for (int i = tid; i < group * head_dim; i += kAttnThreads) q_s[i] = q[i];
  if (tid < group) {
    max_s[tid] = -INFINITY;
    sum_s[tid] = 0;
  }
  __syncthreads();

  const int64_t slot_stride = static_cast<int64_t>(p.cache.kv_heads) * head_dim;
  const KV* k_head = static_cast<const KV*>(p.cache.k) + static_cast<int64_t>(kvh) * head_dim;
  const KV* v_head = static_cast<const KV*>(p.cache.v) + static_cast<int64_t>(kvh) * head_dim;
  const int32_t* table =
      p.block_tables + static_cast<int64_t>(p.token_seq[t]) * p.max_blocks_per_seq;
  const int block_size = p.cache.block_size;

  float acc[kAttnMaxGroup][kAttnDimsPerThread] = {};
  for (int tile = begin; tile < end; tile += kAttnTile) {
    const int count = min(kAttnTile, end - tile);

    // 1. Scores.
    if (tid < count) {
      const int key = tile + tid;
      const int slot = table[key / block_size] * block_size + key % block_size;
      slot_s[tid] = slot;
      const KV* krow = k_head + slot * slot_stride;
      float s[kAttnMaxGroup] = {};
      for (int c = 0; c < head_dim; c += 8) {
        float kf[8];
        Load8(krow + c, kf);
#pragma unroll
        for (int g = 0; g < kAttnMaxGroup; ++g) {
          if (g < group) {
            const float4 qa = *reinterpret_cast<const float4*>(q_s + g * head_dim + c);
            const float4 qb = *reinterpret_cast<const float4*>(q_s + g * head_dim + c + 4);
            s[g] += qa.x * kf[0] + qa.y * kf[1] + qa.z * kf[2] + qa.w * kf[3] + qb.x * kf[4] +
                    qb.y * kf[5] + qb.z * kf[6] + qb.w * kf[7];
          }
        }
      }
#pragma unroll
      for (int g = 0; g < kAttnMaxGroup; ++g) {
        if (g < group) weight_s[g][tid] = s[g] * p.scale;
      }
    } else {
      for (int g = 0; g < group; ++g) weight_s[g][tid] = -INFINITY;
    }
    __syncthreads();

    // 2. Online softmax. A tile holds at least one visible key, so its max is finite.
    for (int g = warp; g < group; g += kAttnThreads / 32) {
      float score[kAttnTile / 32];
      float tile_max = -INFINITY;
#pragma unroll
      for (int i = 0; i < kAttnTile / 32; ++i) {
        score[i] = weight_s[g][lane + 32 * i];
        tile_max = fmaxf(tile_max, score[i]);
      }
      const float old_max = max_s[g];
      const float new_max = fmaxf(old_max, WarpMax(tile_max));
      float sum = 0;
#pragma unroll
      for (int i = 0; i < kAttnTile / 32; ++i) {
        const float e = expf(score[i] - new_max);  // 0 for the -inf of keys past the end
        weight_s[g][lane + 32 * i] = e;
        sum += e;
      }
      sum = WarpSum(sum);
      __syncwarp();  // every lane has read max_s[g] before lane 0 replaces it
      if (lane == 0) {
        const float rescale = expf(old_max - new_max);  // 0 on the first tile
        rescale_s[g] = rescale;
        sum_s[g] = sum_s[g] * rescale + sum;
        max_s[g] = new_max;
      }
    }
    __syncthreads();

    // 3. Weighted values.
#pragma unroll
    for (int g = 0; g < kAttnMaxGroup; ++g) {
      if (g < group) {
        const float rescale = rescale_s[g];
#pragma unroll
        for (int k = 0; k < kAttnDimsPerThread; ++k) acc[g][k] *= rescale;
      }
    }
#pragma unroll 4
    for (int j = 0; j < count; ++j) {
      const KV* vrow = v_head + slot_s[j] * slot_stride;
      float v[kAttnDimsPerThread];
#pragma unroll
      for (int k = 0; k < kAttnDimsPerThread; ++k) {
        const int d = tid + k * kAttnThreads;
        v[k] = d < head_dim ? ToFloat(vrow[d]) : 0.0f;
      }
#pragma unroll
      for (int g = 0; g < kAttnMaxGroup; ++g) {
        if (g < group) {
          const float w = weight_s[g][j];
#pragma unroll
          for (int k = 0; k < kAttnDimsPerThread; ++k) acc[g][k] = fmaf(w, v[k], acc[g][k]);
        }
      }
    }
    __syncthreads();  // the next tile overwrites weight_s and slot_s
  }

#pragma unroll
  for (int g = 0; g < kAttnMaxGroup; ++g) {
    if (g >= group) continue;
    const int64_t row = static_cast<int64_t>(t) * p.q_heads + h0 + g;  // [token, head]
#pragma unroll
    for (int k = 0; k < kAttnDimsPerThread; ++k) {
      const int d = tid + k * kAttnThreads;
      if (d >= head_dim) continue;
      if (splits == 1) {
        p.out[row * head_dim + d] = acc[g][k] / sum_s[g];
      } else {
        partial_acc[(row * gridDim.z + split) * head_dim + d] = acc[g][k];
      }
    }
  }
  if (splits > 1 && tid < group) {
    const int64_t row = static_cast<int64_t>(t) * p.q_heads + h0 + tid;
    partial_ml[row * gridDim.z + split] = make_float2(max_s[tid], sum_s[tid]);
  }
}

// Block (t, head): merges the token's splits, out = Σ acc_s e^(m_s - M) / Σ l_s e^(m_s - M).
// Tokens with one split were written by the attention kernel.
__global__ void __launch_bounds__(kAttnThreads)
    combine_splits_kernel(const int32_t* __restrict__ token_pos,  // [n]
                          int sliding_window, int q_heads, int head_dim, int partition,
                          int max_splits,
                          const float* __restrict__ partial_acc,  // [n, q_heads, splits, head_dim]
                          const float2* __restrict__ partial_ml,  // [n, q_heads, splits]
                          float* __restrict__ out) {              // [n, q_heads, head_dim]
  const int pos = token_pos[blockIdx.x];
  const int splits =
      SplitsForToken(pos + 1 - FirstVisibleKey(pos, sliding_window), partition, max_splits);
  if (splits == 1) return;
  __shared__ float weight_s[kMaxSplits];
  const int64_t row = static_cast<int64_t>(blockIdx.x) * q_heads + blockIdx.y;
  if (threadIdx.x < 32) {
    const int s = threadIdx.x;
    const float2 ml = s < splits ? partial_ml[row * max_splits + s] : make_float2(-INFINITY, 0);
    const float global_max = WarpMax(ml.x);
    const float scale = s < splits ? expf(ml.x - global_max) : 0.0f;
    const float total = WarpSum(ml.y * scale);
    weight_s[s] = scale / total;
  }
  __syncthreads();
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float o = 0;
    for (int s = 0; s < splits; ++s) {
      o = fmaf(weight_s[s], partial_acc[(row * max_splits + s) * head_dim + d], o);
    }
    out[row * head_dim + d] = o;
  }
}

size_t PartialBytes(int64_t n, int q_heads, int head_dim, int splits) {
  return static_cast<size_t>(n) * q_heads * splits * (head_dim + 2) * sizeof(float);
}

struct SplitPlan {
  int partition;
  int splits;
};

// Falls back to one split when the workspace is missing, too small or not 16-byte aligned.
SplitPlan PlanSplits(const AttentionArgs& p) {
  const int64_t max_context = static_cast<int64_t>(p.max_blocks_per_seq) * p.cache.block_size;
  const int64_t span =
      p.sliding_window > 0 ? std::min<int64_t>(max_context, p.sliding_window) : max_context;
  // One split runs from the first visible key to the token; the partition only has to be
  // positive.
  constexpr SplitPlan single{INT_MAX, 1};
  if (p.n > kMaxSplitTokens || span <= kSplitPartition) return single;
  int64_t partition = kSplitPartition;
  if (span > static_cast<int64_t>(kMaxSplits) * partition) {
    const int64_t per_split = (span + kMaxSplits - 1) / kMaxSplits;
    partition = (per_split + kAttnTile - 1) / kAttnTile * kAttnTile;
  }
  const int splits = static_cast<int>((span + partition - 1) / partition);
  if (p.workspace == nullptr || reinterpret_cast<uintptr_t>(p.workspace) % 16 != 0 ||
      p.workspace_bytes < PartialBytes(p.n, p.q_heads, p.cache.head_dim, splits)) {
    return single;
  }
  return {static_cast<int>(partition), splits};
}

}  // namespace

// ---- launchers ---------------------------------------------------------------------------

// One block per token; slots must be distinct and inside the cache.
cudaError_t LaunchKvStore(const KvLayer& cache, const float* k, const float* v,
                          const int32_t* slots, int n, cudaStream_t stream) {
  if (n < 0 || cache.kv_heads < 0 || cache.head_dim < 0) return cudaErrorInvalidValue;
  const int width = cache.kv_heads * cache.head_dim;
  if (n == 0 || width == 0) return cudaSuccess;
  return DispatchScalarType(cache.type, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return LaunchKernel<kv_store_kernel<T>>(n, 256, 0, stream, k, v, slots, width,
                                            static_cast<T*>(cache.k), static_cast<T*>(cache.v));
  });
}

size_t PagedAttentionWorkspaceBytes(int max_tokens, int q_heads, int head_dim) {
  return PartialBytes(std::min(max_tokens, kMaxSplitTokens), q_heads, head_dim, kMaxSplits);
}

// Assumes every token_pos >= 0 and its keys [FirstVisibleKey, pos] mapped by its row of
// block_tables (KvStore has run). Shapes: head_dim % 8 == 0 and <= 256; q_heads a multiple
// of kv_heads with a group of at most 16; kv_heads <= 65535; caches 16-byte aligned.
cudaError_t LaunchPagedAttention(const AttentionArgs& p, cudaStream_t stream) {
  const KvLayer& c = p.cache;
  if (p.n < 0 || c.head_dim <= 0 || c.head_dim % 8 != 0 || c.head_dim > kAttnMaxHeadDim ||
      c.kv_heads <= 0 || c.kv_heads > 65535 || p.q_heads % c.kv_heads != 0 ||
      p.q_heads / c.kv_heads < 1 || p.q_heads / c.kv_heads > kAttnMaxGroup || c.block_size <= 0 ||
      p.max_blocks_per_seq <= 0 ||
      (reinterpret_cast<uintptr_t>(c.k) | reinterpret_cast<uintptr_t>(c.v)) % 16 != 0) {
    return cudaErrorInvalidValue;
  }
  if (p.n == 0) return cudaSuccess;
  const SplitPlan plan = PlanSplits(p);
  float* partial_acc = nullptr;
  float2* partial_ml = nullptr;
  if (plan.splits > 1) {
    partial_acc = static_cast<float*>(p.workspace);
    partial_ml = reinterpret_cast<float2*>(partial_acc + static_cast<int64_t>(p.n) * p.q_heads *
                                                             plan.splits * c.head_dim);
  }
  const dim3 grid(p.n, c.kv_heads, plan.splits);
  cudaError_t err = DispatchScalarType(c.type, [&](auto tag) {
    using KV = typename decltype(tag)::type;
    return LaunchKernel<paged_attention_kernel<KV>>(grid, kAttnThreads, 0, stream, p,
                                                    plan.partition, partial_acc, partial_ml);
  });
  if (err != cudaSuccess || plan.splits == 1) return err;
  return LaunchKernel<combine_splits_kernel>(dim3(p.n, p.q_heads), kAttnThreads, 0, stream,
                                             p.token_pos, p.sliding_window, p.q_heads, c.head_dim,
                                             plan.partition, plan.splits, partial_acc, partial_ml,
                                             p.out);
}

}  // namespace ember::kernels

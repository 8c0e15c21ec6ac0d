// CPU attention over the paged KV cache (the reference for the CUDA kernel): for each
// token and query head, scores over its sequence's visible positions, an FP32 softmax
// with the maximum subtracted, and the weighted sum of values.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/thread_pool.h"

namespace ember::kernels::cpu {
namespace {

// The CPU backend keeps its cache in F32 (Backend::KvType); other types are read by
// converting one row, which only the CUDA tests' cross-checks use.
const float* KvRow(const void* base, ScalarType type, int64_t index, int width,
                   float* scratch) {
  if (type == ScalarType::kF32) return static_cast<const float*>(base) + index * width;
  const auto* p = static_cast<const uint8_t*>(base) + index * width * ScalarBytes(type);
  RowToF32(p, type, width, scratch);
  return scratch;
}

}  // namespace

void KvStore(const KvLayer& cache, const float* k, const float* v, const int32_t* slots,
             int n) {
  const int width = cache.kv_heads * cache.head_dim;
  const int64_t row_bytes = width * static_cast<int64_t>(ScalarBytes(cache.type));
  for (int t = 0; t < n; ++t) {
    const int64_t at = slots[t] * row_bytes, from = static_cast<int64_t>(t) * width;
    RowFromF32(k + from, cache.type, width, static_cast<uint8_t*>(cache.k) + at);
    RowFromF32(v + from, cache.type, width, static_cast<uint8_t*>(cache.v) + at);
  }
}

void Attention(const AttentionArgs& a) {
  const int hd = a.cache.head_dim;
  const int kv_heads = a.cache.kv_heads;
  const int group = a.q_heads / kv_heads;
  const int block_size = a.cache.block_size;
  const int width = kv_heads * hd;
  // One (token, head) pair per item.
  ParallelFor(static_cast<int64_t>(a.n) * a.q_heads, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    std::vector<float> acc(hd);
    std::vector<float> scratch(width);
    for (int64_t item = begin; item < end; ++item) {
      const int t = static_cast<int>(item / a.q_heads), h = static_cast<int>(item % a.q_heads);
      const int pos = a.token_pos[t];
      const int first = a.sliding_window > 0 ? std::max(0, pos - a.sliding_window + 1) : 0;
      const int32_t* table =
          a.block_tables + static_cast<int64_t>(a.token_seq[t]) * a.max_blocks_per_seq;
      const float* q = a.q + (static_cast<int64_t>(t) * a.q_heads + h) * hd;
      const int kvh = h / group;
      scores.resize(pos - first + 1);
      float max_score = -INFINITY;
      for (int p = first; p <= pos; ++p) {
        const int64_t slot =
            static_cast<int64_t>(table[p / block_size]) * block_size + p % block_size;
        const float* krow = KvRow(a.cache.k, a.cache.type, slot, width, scratch.data()) + kvh * hd;
        float s = 0;
        for (int i = 0; i < hd; ++i) s += q[i] * krow[i];
        s *= a.scale;
        scores[p - first] = s;
        max_score = std::max(max_score, s);
      }
      float denom = 0;
      for (float& s : scores) {
        s = std::exp(s - max_score);
        denom += s;
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int p = first; p <= pos; ++p) {
        const int64_t slot =
            static_cast<int64_t>(table[p / block_size]) * block_size + p % block_size;
        const float* vrow = KvRow(a.cache.v, a.cache.type, slot, width, scratch.data()) + kvh * hd;
        const float w = scores[p - first];
        for (int i = 0; i < hd; ++i) acc[i] += w * vrow[i];
      }
      float* out = a.out + (static_cast<int64_t>(t) * a.q_heads + h) * hd;
      for (int i = 0; i < hd; ++i) out[i] = acc[i] / denom;
    }
  });
}

}  // namespace ember::kernels::cpu

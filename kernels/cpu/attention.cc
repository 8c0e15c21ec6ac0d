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

namespace {

// The query heads of one KV head (GQA's group) attend together: each key and value row is
// read once for the whole group, and the dot products run in 16-lane vectors. (A float sum
// is not reassociated by the compiler, so the plain loop stayed scalar: at 512 prompt tokens
// attention took about 40% of the prefill once the matmuls ran on oneDNN.)
EMBER_CPU_CLONES void AttendGroup(const AttentionArgs& a, int t, int kvh, int group,
                                  std::vector<float>& scores, float* acc, float* scratch) {
  const int hd = a.cache.head_dim, width = a.cache.kv_heads * hd, block_size = a.cache.block_size;
  const int pos = a.token_pos[t];
  const int first = a.sliding_window > 0 ? std::max(0, pos - a.sliding_window + 1) : 0;
  const int len = pos - first + 1;
  const int32_t* table = a.block_tables + static_cast<int64_t>(a.token_seq[t]) * a.max_blocks_per_seq;
  const float* q = a.q + (static_cast<int64_t>(t) * a.q_heads + kvh * group) * hd;  // [group, hd]
  const int vec = hd / 16 * 16;
  scores.resize(static_cast<size_t>(group) * len);
  auto slot_of = [&](int p) {
    return static_cast<int64_t>(table[p / block_size]) * block_size + p % block_size;
  };
  for (int p = first; p <= pos; ++p) {
    const float* krow = KvRow(a.cache.k, a.cache.type, slot_of(p), width, scratch) + kvh * hd;
    for (int g = 0; g < group; ++g) {
      const float* qg = q + g * hd;
      V16f sum = {};
      for (int i = 0; i < vec; i += 16) sum += LoadV16f(qg + i) * LoadV16f(krow + i);
      float s = 0;
      for (int l = 0; l < 16; ++l) s += sum[l];
      for (int i = vec; i < hd; ++i) s += qg[i] * krow[i];
      scores[g * len + (p - first)] = s * a.scale;
    }
  }
  std::vector<float> denom(group);
  for (int g = 0; g < group; ++g) {
    float* row = scores.data() + g * len;
    const float max_score = *std::max_element(row, row + len);
    float total = 0;
    for (int i = 0; i < len; ++i) {
      row[i] = std::exp(row[i] - max_score);
      total += row[i];
    }
    denom[g] = total;
  }
  std::fill(acc, acc + group * hd, 0.0f);
  for (int p = first; p <= pos; ++p) {
    const float* vrow = KvRow(a.cache.v, a.cache.type, slot_of(p), width, scratch) + kvh * hd;
    for (int g = 0; g < group; ++g) {
      const float w = scores[g * len + (p - first)];
      float* accg = acc + g * hd;
      for (int i = 0; i < hd; ++i) accg[i] += w * vrow[i];
    }
  }
  for (int g = 0; g < group; ++g) {
    float* out = a.out + (static_cast<int64_t>(t) * a.q_heads + kvh * group + g) * hd;
    for (int i = 0; i < hd; ++i) out[i] = acc[g * hd + i] / denom[g];
  }
}

}  // namespace

void Attention(const AttentionArgs& a) {
  const int kv_heads = a.cache.kv_heads;
  const int group = a.q_heads / kv_heads;
  // One (token, KV head) pair per item.
  ParallelFor(static_cast<int64_t>(a.n) * kv_heads, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    std::vector<float> acc(static_cast<size_t>(group) * a.cache.head_dim);
    std::vector<float> scratch(static_cast<size_t>(kv_heads) * a.cache.head_dim);
    for (int64_t item = begin; item < end; ++item) {
      AttendGroup(a, static_cast<int>(item / kv_heads), static_cast<int>(item % kv_heads), group,
                  scores, acc.data(), scratch.data());
    }
  });
}

}  // namespace ember::kernels::cpu

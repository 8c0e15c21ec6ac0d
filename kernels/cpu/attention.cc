// CPU attention over the paged KV cache (the reference for the CUDA kernel): for each
// token and query head, scores over its sequence's visible positions, an FP32 softmax
// with the maximum subtracted (online, tile by tile), and the weighted sum of values.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/thread_pool.h"

namespace ember::kernels::cpu {

void KvStore(const KvLayer& cache, const float* k, const float* v, const int32_t* slots, int n) {
  const int width = cache.kv_heads * cache.head_dim;
  const int64_t row_bytes = width * static_cast<int64_t>(ScalarBytes(cache.type));
  for (int t = 0; t < n; ++t) {
    const int64_t at = slots[t] * row_bytes, from = static_cast<int64_t>(t) * width;
    RowFromF32(k + from, cache.type, width, static_cast<uint8_t*>(cache.k) + at);
    RowFromF32(v + from, cache.type, width, static_cast<uint8_t*>(cache.v) + at);
  }
}

namespace {

// The CPU backend keeps its cache in F32 (Backend::KvType); other types are read by
// converting one row, which only the CUDA tests' cross-checks use.
const float* KvRow(const void* base, ScalarType type, int64_t index, int width, float* scratch) {
  if (type == ScalarType::kF32) return static_cast<const float*>(base) + index * width;
  const auto* p = static_cast<const uint8_t*>(base) + index * width * ScalarBytes(type);
  RowToF32(p, type, width, scratch);
  return scratch;
}

constexpr int kKeyTile = 16;   // key positions scored together: one V16f of scores
constexpr int kQueryRun = 16;  // consecutive tokens of one sequence attending together

// Scratch of one thread: the transposed key tile and every query row's running state.
struct Scratch {
  std::vector<float> kt;        // [head_dim][kKeyTile]
  std::vector<float> vt;        // [kKeyTile][head_dim]
  std::vector<float> acc;       // [rows][head_dim]
  std::vector<float> max, sum;  // [rows]
  std::vector<float> row;       // one converted KV row (non-F32 caches)
};

// Tokens [t0, t1) of one sequence (a run) and the `group` query heads of KV head `kvh`:
// flash-style attention over key tiles of 16 positions. Each key tile is transposed once
// for every query row of the run, so a tile's 16 scores are 16-lane FMAs over head_dim
// with no horizontal sums; the softmax is online (running maximum and sum, the
// accumulators rescaled when the maximum grows), so no score row is kept. A float sum is not
// reassociated by the compiler, so the earlier one-dot-per-key loop stayed scalar: with the
// matmuls on oneDNN it was 40% of a 512-token prefill of SmolLM2-135M's shape.
EMBER_CPU_CLONES void AttendRun(const AttentionArgs& a, int t0, int t1, int kvh, int group,
                                Scratch& s) {
  const int hd = a.cache.head_dim, width = a.cache.kv_heads * hd, block_size = a.cache.block_size;
  const int rows = (t1 - t0) * group;
  const int32_t* table =
      a.block_tables + static_cast<int64_t>(a.token_seq[t0]) * a.max_blocks_per_seq;
  auto first_of = [&](int t) {
    return a.sliding_window > 0 ? std::max(0, a.token_pos[t] - a.sliding_window + 1) : 0;
  };
  auto kv_row = [&](const void* base, int p) {
    const int64_t slot = static_cast<int64_t>(table[p / block_size]) * block_size + p % block_size;
    return KvRow(base, a.cache.type, slot, width, s.row.data()) + kvh * hd;
  };
  int lo = a.token_pos[t0], hi = 0;
  for (int t = t0; t < t1; ++t) {
    lo = std::min(lo, first_of(t));
    hi = std::max(hi, a.token_pos[t]);
  }
  s.kt.resize(static_cast<size_t>(hd) * kKeyTile);
  s.vt.resize(static_cast<size_t>(kKeyTile) * hd);
  s.acc.assign(static_cast<size_t>(rows) * hd, 0.0f);
  s.max.assign(rows, -INFINITY);
  s.sum.assign(rows, 0.0f);
  s.row.resize(width);
  for (int p0 = lo / kKeyTile * kKeyTile; p0 <= hi; p0 += kKeyTile) {
    // The tile's keys transposed and its values as rows; positions outside [lo, hi] zero.
    for (int j = 0; j < kKeyTile; ++j) {
      const int p = p0 + j;
      const bool stored = p >= lo && p <= hi;
      const float* k = stored ? kv_row(a.cache.k, p) : nullptr;
      for (int i = 0; i < hd; ++i) s.kt[i * kKeyTile + j] = stored ? k[i] : 0.0f;
      const float* v = stored ? kv_row(a.cache.v, p) : nullptr;
      for (int i = 0; i < hd; ++i) s.vt[j * hd + i] = stored ? v[i] : 0.0f;
    }
    for (int r = 0; r < rows; ++r) {
      const int t = t0 + r / group, g = r % group;
      const int pos = a.token_pos[t], first = first_of(t);
      if (p0 > pos || p0 + kKeyTile <= first) continue;  // the whole tile is masked
      const float* q = a.q + (static_cast<int64_t>(t) * a.q_heads + kvh * group + g) * hd;
      // Four partial sums: one FMA chain would wait on the previous FMA's result.
      V16f part[4] = {};
      int i = 0;
      for (; i + 4 <= hd; i += 4) {
        for (int u = 0; u < 4; ++u) part[u] += q[i + u] * LoadV16f(&s.kt[(i + u) * kKeyTile]);
      }
      for (; i < hd; ++i) part[0] += q[i] * LoadV16f(&s.kt[i * kKeyTile]);
      const V16f score = (part[0] + part[1]) + (part[2] + part[3]);
      float e[kKeyTile];
      float tile_max = -INFINITY;
      for (int j = 0; j < kKeyTile; ++j) {
        const bool visible = p0 + j >= first && p0 + j <= pos;
        e[j] = visible ? score[j] * a.scale : -INFINITY;
        tile_max = std::max(tile_max, e[j]);
      }
      float* acc = &s.acc[static_cast<size_t>(r) * hd];
      if (tile_max > s.max[r]) {
        const float rescale = std::exp(s.max[r] - tile_max);  // 0 for the first tile
        s.sum[r] *= rescale;
        for (int i = 0; i < hd; ++i) acc[i] *= rescale;
        s.max[r] = tile_max;
      }
      // Each 16-float slice of the accumulator takes the whole tile's values while it sits
      // in a register (masked keys weigh exp(-inf) = 0).
      float w[kKeyTile];
      for (int j = 0; j < kKeyTile; ++j) {
        w[j] = std::exp(e[j] - s.max[r]);
        s.sum[r] += w[j];
      }
      int c = 0;
      for (; c + 16 <= hd; c += 16) {
        V16f sum = LoadV16f(acc + c);
        for (int j = 0; j < kKeyTile; ++j) sum += w[j] * LoadV16f(&s.vt[j * hd + c]);
        std::memcpy(acc + c, &sum, sizeof sum);
      }
      for (; c < hd; ++c) {
        for (int j = 0; j < kKeyTile; ++j) acc[c] += w[j] * s.vt[j * hd + c];
      }
    }
  }
  for (int r = 0; r < rows; ++r) {
    const int t = t0 + r / group, g = r % group;
    float* out = a.out + (static_cast<int64_t>(t) * a.q_heads + kvh * group + g) * hd;
    const float* acc = &s.acc[static_cast<size_t>(r) * hd];
    for (int i = 0; i < hd; ++i) out[i] = acc[i] / s.sum[r];
  }
}

}  // namespace

void Attention(const AttentionArgs& a) {
  const int kv_heads = a.cache.kv_heads;
  const int group = a.q_heads / kv_heads;
  // Runs: up to kQueryRun consecutive tokens of one sequence (a prefill chunk's tokens share
  // every key tile; a decode step's tokens are runs of one).
  absl::InlinedVector<std::pair<int, int>, 64> runs;  // on the stack for a decode step
  for (int t = 0; t < a.n;) {
    int end = t + 1;
    while (end < a.n && end - t < kQueryRun && a.token_seq[end] == a.token_seq[t]) ++end;
    runs.emplace_back(t, end);
    t = end;
  }
  // One (run, KV head) pair per item.
  ParallelFor(static_cast<int64_t>(runs.size()) * kv_heads, [&](int64_t begin, int64_t end) {
    thread_local Scratch scratch;  // kept between calls: no allocation per layer and step
    for (int64_t item = begin; item < end; ++item) {
      const auto [t0, t1] = runs[item / kv_heads];
      AttendRun(a, t0, t1, static_cast<int>(item % kv_heads), group, scratch);
    }
  });
}

}  // namespace ember::kernels::cpu

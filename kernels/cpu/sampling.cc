// CPU sampling: greedy, temperature, top-k, top-p, min-p and inverse-CDF draws, exactly
// as SamplingRow in kernels/types.h specifies (the CUDA kernel follows the same rules).
#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/thread_pool.h"

namespace ember::kernels::cpu {
namespace {

int32_t Argmax(const float* logits, int vocab) {
  int32_t best = 0;
  for (int i = 1; i < vocab; ++i) {
    if (logits[i] > logits[best]) best = i;
  }
  return best;
}

int32_t SampleRow(const float* logits, int vocab, const SamplingRow& row) {
  if (row.temperature <= 0) return Argmax(logits, vocab);
  std::vector<float> z(logits, logits + vocab);
  for (float& v : z) v /= row.temperature;

  // keep[i]: still a candidate after the filters so far.
  std::vector<char> keep(vocab, 1);
  if (row.top_k > 0 && row.top_k < vocab) {
    std::vector<float> sorted = z;
    std::nth_element(sorted.begin(), sorted.begin() + (row.top_k - 1), sorted.end(),
                     std::greater<float>());
    const float kth = sorted[row.top_k - 1];
    for (int i = 0; i < vocab; ++i) keep[i] = z[i] >= kth;
  }
  float max_z = -INFINITY;
  for (int i = 0; i < vocab; ++i) {
    if (keep[i]) max_z = std::max(max_z, z[i]);
  }
  std::vector<float> p(vocab, 0.0f);
  double total = 0;
  for (int i = 0; i < vocab; ++i) {
    if (keep[i]) {
      p[i] = std::exp(z[i] - max_z);
      total += p[i];
    }
  }
  if (row.top_p < 1) {
    // The largest threshold t whose kept mass sum(p >= t) still reaches top_p: walk the
    // candidates from the most likely down until the running mass reaches it.
    std::vector<float> sorted;
    for (int i = 0; i < vocab; ++i) {
      if (keep[i]) sorted.push_back(p[i]);
    }
    std::sort(sorted.begin(), sorted.end(), std::greater<float>());
    const double target = row.top_p * total;
    double mass = 0;
    float threshold = sorted.back();
    for (float v : sorted) {
      mass += v;
      if (mass >= target) {
        threshold = v;
        break;
      }
    }
    for (int i = 0; i < vocab; ++i) keep[i] = keep[i] && p[i] >= threshold;
  }
  if (row.min_p > 0) {
    // max(p) is exp(0) = 1 before normalisation, so the bound is min_p itself.
    for (int i = 0; i < vocab; ++i) keep[i] = keep[i] && p[i] >= row.min_p;
  }
  double kept = 0;
  int32_t last = -1;
  for (int i = 0; i < vocab; ++i) {
    if (keep[i]) {
      kept += p[i];
      last = i;
    }
  }
  const double target = row.uniform * kept;
  double running = 0;
  for (int i = 0; i < vocab; ++i) {
    if (!keep[i]) continue;
    running += p[i];
    if (running > target) return i;
  }
  return last;  // rounding left the target at the very end
}

}  // namespace

void Sample(const float* logits, int n_rows, int vocab, const SamplingRow* rows,
            int32_t* tokens) {
  ParallelFor(n_rows, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) tokens[s] = SampleRow(logits + s * vocab, vocab, rows[s]);
  });
}

}  // namespace ember::kernels::cpu

// Token sampling on the device, one block per sequence, following SamplingRow's rules in
// kernels/types.h: greedy, temperature, top-k, top-p, min-p, then an inverse-CDF draw in
// vocabulary order. Every sum has a fixed order, so a row's token never depends on timing.
#include <climits>
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace ember::kernels {
namespace {

constexpr int kSampleThreads = 1024;
// Top-p works on the tokens that can still be in its set (TopPFloor), compacted into shared
// memory (token, weight) when they fit: 11264 of them, 88 KiB. More than that (a very flat
// distribution) falls back to passes over the row. TopPFloor's per-warp histograms use the
// same bytes first: 32 warps x 256 u64, 64 KiB, so the cap stays at least 8192.
constexpr int kCandidateCap = 11264;
constexpr size_t kCandidateBytes = kCandidateCap * (sizeof(int) + sizeof(float));
static_assert(kCandidateBytes >= (kSampleThreads / 32) * 256 * sizeof(unsigned long long),
              "TopPFloor's histograms live in the candidate buffer");

// Shared memory every phase uses.
struct SampleShared {
  double dscratch[32];
  float fscratch[32];
  int iscratch[32];
  unsigned hist[256];            // top-k: key byte counts
  unsigned long long mass[256];  // top-p: fixed-point mass per weight exponent
  int found_bin;                 // HighestBinReaching's answer
  unsigned found_above;
};
// Dynamic plus static shared memory within the 99 KiB per block of sm_86, sm_89 and sm_120
// GPUs (A10, A40, L4, L40S, RTX 30xx-50xx); sm_80 and sm_90 allow more.
static_assert(kCandidateBytes + sizeof(SampleShared) <= 99 * 1024,
              "the sampling kernel's shared memory must fit sm_86/89/120's 99 KiB per block");

// ---- greedy --------------------------------------------------------------------------------

// Largest logit, lowest index on ties (as the CPU's strict `>` scan): each thread keeps its
// first maximum, then pairs merge by value, then index.
__device__ int Argmax(const float* row, int vocab, SampleShared& sh) {
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  float best = -INFINITY;
  int index = INT_MAX;
  for (int j = tid; j < vocab; j += blockDim.x) {
    if (j == tid || row[j] > best) {
      best = row[j];
      index = j;
    }
  }
  auto merge = [&](float other_best, int other_index) {
    if (other_best > best || (other_best == best && other_index < index)) {
      best = other_best, index = other_index;
    }
  };
  for (int offset = 16; offset > 0; offset /= 2) {
    merge(__shfl_xor_sync(kFullMask, best, offset), __shfl_xor_sync(kFullMask, index, offset));
  }
  if (lane == 0) {
    sh.fscratch[warp] = best;
    sh.iscratch[warp] = index;
  }
  __syncthreads();
  best = lane < static_cast<int>(blockDim.x / 32) ? sh.fscratch[lane] : -INFINITY;
  index = lane < static_cast<int>(blockDim.x / 32) ? sh.iscratch[lane] : INT_MAX;
  for (int offset = 16; offset > 0; offset /= 2) {
    merge(__shfl_xor_sync(kFullMask, best, offset), __shfl_xor_sync(kFullMask, index, offset));
  }
  __syncthreads();
  return index;
}

// ---- histograms: the highest bin that reaches a target -------------------------------------

// Warp 0 only, every lane: into *bin the highest b with bins[b] + ... + bins[255] >= need
// (-1 when the whole histogram falls short), into *above (when not null) the sum of the bins
// above b. Lane l holds bins 255 - 8l down to 248 - 8l; a scan over lanes sums from the top.
template <typename T>
__device__ void HighestBinReaching(const T* bins, T need, int* bin, T* above) {
  const int lane = threadIdx.x % 32;
  T count[8], own = 0;
#pragma unroll
  for (int q = 0; q < 8; ++q) own += count[q] = bins[255 - 8 * lane - q];
  T before = WarpInclusiveScan(own) - own;  // exclusive: the sum of the bins above this lane's
  if (lane == 0) *bin = -1;
  __syncwarp();
  if (before < need && need <= before + own) {
    bool found = false;
#pragma unroll
    for (int q = 0; q < 8; ++q) {  // unrolled, so count[] stays in registers
      if (!found && before + count[q] >= need) {
        found = true;
        *bin = 255 - 8 * lane - q;
        if (above != nullptr) *above = before;
      }
      before += count[q];
    }
  }
}

// ---- top-k: radix select over the scores' bits ---------------------------------------------

// Unsigned keys in the order of the floats.
__device__ __forceinline__ uint32_t OrderedKey(float f) {
  const uint32_t b = __float_as_uint(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float FromOrderedKey(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// The k-th largest score (duplicates counted), one byte of its key per pass: a histogram of
// the next byte among the keys that match the bytes found so far (integer counts, so the
// result is exact and deterministic), then the bin where the count from the top reaches k.
// Lanes with the same bin add once per warp (__match_any_sync): scores cluster in few bins.
__device__ float KthLargestScore(const float* row, int vocab, float temperature, int k,
                                 SampleShared& sh) {
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  uint32_t prefix = 0;  // the key's bytes found so far, in place
  unsigned rank = k;    // rank of the target among the keys that match prefix
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = tid; i < 256; i += blockDim.x) sh.hist[i] = 0;
    __syncthreads();
    const uint32_t high_mask = shift == 24 ? 0u : ~0u << (shift + 8);
    for (int base = 0; base < vocab; base += blockDim.x) {  // same trip count for every lane
      const int j = base + tid;
      int bin = 256;  // none
      if (j < vocab) {
        const uint32_t key = OrderedKey(row[j] / temperature);
        if ((key & high_mask) == prefix) bin = static_cast<int>((key >> shift) & 255u);
      }
      const unsigned peers = __match_any_sync(kFullMask, bin);
      if (bin < 256 && lane == __ffs(peers) - 1) atomicAdd(&sh.hist[bin], __popc(peers));
    }
    __syncthreads();
    if (warp == 0) HighestBinReaching(sh.hist, rank, &sh.found_bin, &sh.found_above);
    __syncthreads();
    prefix |= static_cast<uint32_t>(sh.found_bin) << shift;
    rank -= sh.found_above;
    __syncthreads();  // read before the next pass may overwrite
  }
  return FromOrderedKey(prefix);
}

// ---- the tokens a pass runs over -------------------------------------------------------------

// The whole row. An item's weight is exp(s - max s) with s = logit / temperature, the
// unnormalised probability (max weight exactly 1), or 0 when top-k removed the token.
struct VocabView {
  const float* logits;
  int vocab;
  float temperature;
  float max_score;
  float top_k_min;  // -inf without top-k

  __device__ int size() const { return vocab; }
  __device__ int token(int i) const { return i; }
  __device__ float weight(int i) const {
    const float s = logits[i] / temperature;
    return s >= top_k_min ? expf(s - max_score) : 0.0f;
  }
};

// Candidates compacted into shared memory, in vocabulary order, with their weights.
struct CandidateView {
  const int* tokens;
  const float* weights;
  int count;

  __device__ int size() const { return count; }
  __device__ int token(int i) const { return tokens[i]; }
  __device__ float weight(int i) const { return weights[i]; }
};

// Sums of weights are kept in double: the CPU reference sums in double, and a float running
// sum over 10^5 tokens drifts by a good fraction of one token's weight, enough to move the
// drawn token.
template <typename View>
__device__ double SumWeights(const View& view, float at_least, SampleShared& sh) {
  double sum = 0;
  for (int i = threadIdx.x; i < view.size(); i += blockDim.x) {
    const float w = view.weight(i);
    if (w >= at_least) sum += w;
  }
  return BlockReduce(sum, SumOp<double>{}, sh.dscratch);
}

// A lower bound on the top-p threshold t*, from one pass, to keep the candidates few: each
// weight, in fixed point (units of 2^-32, rounded down), goes to the bin of its float exponent
// by integer atomics (exact, hence order-free and deterministic), one histogram per warp to
// spread collisions, then merged. The highest 2^e whose tokens (w >= 2^e) hold `target` even
// in the rounded-down sums has 2^e <= t*; the 1e-9 relative margin covers the rounding of the
// double sums the exact search makes. 0 when no bin qualifies.
__device__ float TopPFloor(const VocabView& all, double target,
                           unsigned long long* warp_mass,  // [32 warps, 256 exponents]
                           SampleShared& sh) {
  const int tid = threadIdx.x, warp = tid / 32, warps = blockDim.x / 32;
  for (int i = tid; i < warps * 256; i += blockDim.x) warp_mass[i] = 0;
  __syncthreads();
  for (int j = tid; j < all.size(); j += blockDim.x) {
    const float w = all.weight(j);
    if (w > 0) {
      atomicAdd(&warp_mass[warp * 256 + (__float_as_uint(w) >> 23)],
                static_cast<unsigned long long>(w * 4294967296.0));
    }
  }
  __syncthreads();
  for (int b = tid; b < 256; b += blockDim.x) {
    unsigned long long m = 0;
    for (int v = 0; v < warps; ++v) m += warp_mass[v * 256 + b];
    sh.mass[b] = m;
  }
  __syncthreads();
  const unsigned long long need =
      max(static_cast<unsigned long long>(ceil(target * (1 + 1e-9) * 4294967296.0)), 1ull);
  if (warp == 0) HighestBinReaching<unsigned long long>(sh.mass, need, &sh.found_bin, nullptr);
  __syncthreads();
  const int e = sh.found_bin;
  return e > 0 ? __uint_as_float(static_cast<uint32_t>(e) << 23) : 0.0f;
}

// Top-p: the largest t with sum(w >= t) >= target, by binary search over the bits of t
// (positive floats order as their bits; t <= 1, the largest weight). Sums in a fixed order.
template <typename View>
__device__ float TopPThreshold(const View& view, double target, SampleShared& sh) {
  constexpr uint32_t kOne = 0x3f800000u;
  uint32_t t = 0;
  for (int bit = 29; bit >= 0; --bit) {
    const uint32_t candidate = t | (1u << bit);
    if (candidate > kOne) continue;
    if (SumWeights(view, __uint_as_float(candidate), sh) >= target) t = candidate;
  }
  return __uint_as_float(t);
}

// The first item, in view order, whose running sum of kept weights (w > 0, w >= threshold)
// exceeds uniform * their total: tiles of one item per thread, a block scan per tile.
template <typename View>
__device__ int DrawToken(const View& view, float threshold, float uniform, SampleShared& sh) {
  const int tid = threadIdx.x;
  double total = 0;
  int last = -1;
  for (int i = tid; i < view.size(); i += blockDim.x) {
    const float w = view.weight(i);
    if (w > 0 && w >= threshold) {
      total += w;
      last = i;
    }
  }
  total = BlockReduce(total, SumOp<double>{}, sh.dscratch);
  last = BlockReduce(last, MaxOp<int>{}, sh.iscratch);
  const double target = static_cast<double>(uniform) * total;
  double running = 0;  // kept weight before the tile
  for (int base = 0; base < view.size(); base += blockDim.x) {
    const int i = base + tid;
    double w = i < view.size() ? view.weight(i) : 0.0f;
    if (!(w >= threshold)) w = 0;
    double tile_total;
    const double prefix = BlockInclusiveScan(w, sh.dscratch, &tile_total);
    const int hit =
        BlockReduce(w > 0 && running + prefix > target ? i : INT_MAX, MinOp<int>{}, sh.iscratch);
    if (hit != INT_MAX) return view.token(hit);
    running += tile_total;
  }
  return last >= 0 ? view.token(last) : 0;  // rounding left the target at the very end
}

// Top-p, min-p and the draw over one view.
template <typename View>
__device__ int FinishTopP(const View& view, double target, float min_weight, float uniform,
                          SampleShared& sh) {
  const float top_p_min = TopPThreshold(view, target, sh);
  return DrawToken(view, fmaxf(top_p_min, min_weight), uniform, sh);
}

// ---- the kernel ----------------------------------------------------------------------------

// One block per row. Passes over the row (L2-resident): the max; top-k's radix select (4,
// with top-k); with top-p < 1, the total weight, TopPFloor and the compaction of the tokens
// that can be in the top-p set; the draw (2, over the candidates when compacted). A block per SM is
// plenty (rows are sequences, tens of them): the minimum of 1 lets ptxas use 64 registers
// per thread instead of spilling to fit two blocks.
__global__ void __launch_bounds__(kSampleThreads, 1)
    sample_kernel(const float* __restrict__ logits,  // [n_rows, vocab]
                  int vocab,
                  const SamplingRow* __restrict__ rows,  // [n_rows]
                  int32_t* __restrict__ tokens) {        // [n_rows]
  // The compacted top-p candidates: int tokens[kCandidateCap], then float weights[...].
  EMBER_DYNAMIC_SHARED(unsigned char, candidate_bytes);
  __shared__ SampleShared sh;
  const SamplingRow r = rows[blockIdx.x];
  const float* row = logits + static_cast<int64_t>(blockIdx.x) * vocab;
  const int tid = threadIdx.x;

  int token;
  if (r.temperature <= 0) {
    token = Argmax(row, vocab, sh);
  } else {
    float max_score = -INFINITY;
    for (int j = tid; j < vocab; j += blockDim.x) {
      max_score = fmaxf(max_score, row[j] / r.temperature);
    }
    max_score = BlockReduce(max_score, MaxOp<float>{}, sh.fscratch);
    const float top_k_min = (r.top_k > 0 && r.top_k < vocab)
                                ? KthLargestScore(row, vocab, r.temperature, r.top_k, sh)
                                : -INFINITY;
    const VocabView all{row, vocab, r.temperature, max_score, top_k_min};
    // min-p keeps p >= min_p * max p; the largest weight is exactly 1.
    const float min_weight = r.min_p > 0 ? r.min_p : 0.0f;
    if (r.top_p < 1) {
      const double total = SumWeights(all, 0.0f, sh);
      const double target = r.top_p * total;
      int* cand_tokens = reinterpret_cast<int*>(candidate_bytes);
      float* cand_weights = reinterpret_cast<float*>(cand_tokens + kCandidateCap);
      // The histograms use the candidate buffer before the candidates do.
      const float floor =
          TopPFloor(all, target, reinterpret_cast<unsigned long long*>(candidate_bytes), sh);
      // The tokens that can be in the top-p set, compacted in vocabulary order.
      int count = 0;
      for (int base = 0; base < vocab; base += blockDim.x) {
        const int j = base + tid;
        const float w = j < vocab ? all.weight(j) : 0.0f;
        const int keep = w > 0 && w >= floor ? 1 : 0;
        int tile_count;
        const int at = count + BlockInclusiveScan(keep, sh.iscratch, &tile_count) - 1;
        if (keep && at < kCandidateCap) {
          cand_tokens[at] = j;
          cand_weights[at] = w;
        }
        count += tile_count;
      }
      __syncthreads();
      if (count <= kCandidateCap) {
        token = FinishTopP(CandidateView{cand_tokens, cand_weights, count}, target, min_weight,
                           r.uniform, sh);
      } else {
        token = FinishTopP(all, target, min_weight, r.uniform, sh);
      }
    } else {
      token = DrawToken(all, min_weight, r.uniform, sh);
    }
  }
  if (tid == 0) tokens[blockIdx.x] = token;
}

}  // namespace

// ---- launchers -----------------------------------------------------------------------------

// Above 48 KiB of dynamic shared memory needs an opt-in, once per device.
cudaError_t PrepareSampleKernel() {
  return cudaFuncSetAttribute(sample_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(kCandidateBytes));
}

// Any vocab >= 1; n_rows up to 2^31 - 1.
cudaError_t LaunchSample(const float* logits, int n_rows, int vocab, const SamplingRow* rows,
                         int32_t* tokens, cudaStream_t stream) {
  if (n_rows < 0 || vocab <= 0) return cudaErrorInvalidValue;
  if (n_rows == 0) return cudaSuccess;
  return LaunchKernel<sample_kernel>(n_rows, kSampleThreads, kCandidateBytes, stream, logits, vocab,
                                     rows, tokens);
}

}  // namespace ember::kernels

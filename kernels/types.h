// The element types and argument structs the op interface speaks: weights are BF16, F16
// or F32 matrices in the backend's memory; activations are always F32. Plain C++17 with no
// dependencies, so the CUDA kernels (compiled by nvcc) take these same structs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace ember::kernels {

enum class ScalarType : uint8_t { kF32, kF16, kBF16 };

inline size_t ScalarBytes(ScalarType t) { return t == ScalarType::kF32 ? 4 : 2; }

inline const char* ScalarName(ScalarType t) {
  switch (t) {
    case ScalarType::kF32: return "F32";
    case ScalarType::kF16: return "F16";
    case ScalarType::kBF16: return "BF16";
  }
  return "?";
}

// A row-major matrix in the backend's memory: [rows, cols]. Linear layers are stored as
// Hugging Face does, [out_features, in_features], so y = x · Wᵀ reads W one row per
// output. A vector (norm weight, bias) is rows == 1.
struct Matrix {
  const void* data = nullptr;
  ScalarType type = ScalarType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;

  size_t bytes() const { return static_cast<size_t>(rows * cols) * ScalarBytes(type); }
};

// One output of Backend::Linears: y[n, w->rows] = x · w->ᵀ (+ bias when not null).
struct LinearOut {
  const Matrix* w = nullptr;
  const float* bias = nullptr;
  float* y = nullptr;
};

// One layer's slice of the paged KV cache. Slot s (= block * block_size + offset)
// holds one token: k[s] is [kv_heads, head_dim], likewise v.
struct KvLayer {
  void* k = nullptr;  // [num_blocks * block_size, kv_heads, head_dim] of `type`
  void* v = nullptr;  // same shape
  ScalarType type = ScalarType::kF32;
  int block_size = 16;
  int kv_heads = 0;
  int head_dim = 0;
};

// Attention of a mixed batch (prefill chunks and decode tokens of different sequences)
// over the paged cache. Each token t belongs to sequence token_seq[t], sits at absolute
// position token_pos[t], and attends to its sequence's positions
// [max(0, pos - sliding_window + 1), pos]; those keys and values (its own included) are
// already in the cache (KvStore runs first). GQA: query head h reads kv head
// h / (q_heads / kv_heads).
struct AttentionArgs {
  const float* q = nullptr;             // [n, q_heads, head_dim], rotary already applied
  float* out = nullptr;                 // [n, q_heads, head_dim]
  KvLayer cache;
  const int32_t* block_tables = nullptr;  // [num_seqs, max_blocks_per_seq] block ids
  int max_blocks_per_seq = 0;
  const int32_t* token_seq = nullptr;   // [n] row of block_tables
  const int32_t* token_pos = nullptr;   // [n]
  int n = 0;
  int q_heads = 0;
  float scale = 0;                      // usually 1/sqrt(head_dim)
  int sliding_window = 0;               // 0: unlimited
  // Scratch for split-K (flash-decoding) partial results; AttentionWorkspaceBytes() says
  // how much. May be null for backends that need none.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

// How one sequence's next token is chosen from its logits row. Applied in Hugging Face's
// order: temperature, top-k, top-p, min-p; then inverse-CDF sampling with `uniform`.
//   temperature <= 0: greedy (argmax, lowest index on ties); the other fields are ignored.
//   top_k > 0: keep tokens whose logit is >= the k-th largest (ties at the edge kept).
//   top_p < 1: keep the smallest set of most likely tokens whose mass reaches top_p, i.e.
//     p_i >= t for the largest t with sum(p_j >= t) >= top_p.
//   min_p > 0: keep p_i >= min_p * max(p).
//   Then the token is the first index, in vocabulary order, whose running sum of kept
//   probabilities exceeds uniform * (their total).
// `uniform` in [0, 1) comes from the caller (a hash of the sequence's seed and position),
// so a result depends only on the sequence, never on what else is in the batch.
struct SamplingRow {
  float temperature = 0;
  int32_t top_k = 0;
  float top_p = 1;
  float min_p = 0;
  float uniform = 0;
};

// Host-side conversions, bit-exact with the device's (round-to-nearest-even) except NaN
// payloads.
inline float Bf16ToFloat(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t FloatToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);  // NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

// IEEE half by bit manipulation so this header also compiles under nvcc's front end
// (which does not take GCC's _Float16); the CPU matmul uses _Float16 directly.
inline float F16ToFloat(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf / NaN
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal: normalize
    int shift = 0;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      ++shift;
    }
    bits = sign | (static_cast<uint32_t>(113 - shift) << 23) | ((mant & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t FloatToF16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  uint32_t sign = (bits >> 16) & 0x8000u;
  uint32_t abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to inf
  if (abs < 0x38800000u) {  // subnormal or zero in half: scale into the mantissa
    if (abs < 0x33000000u) return static_cast<uint16_t>(sign);
    uint32_t exp = abs >> 23;
    uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - exp;  // 14 + (112 - exp) ... position of the half's LSB
    uint32_t half = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1);
    uint32_t mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1u))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  abs += 0xfffu + ((abs >> 13) & 1u);  // round to nearest even at bit 13
  return static_cast<uint16_t>(sign | ((abs - 0x38000000u) >> 13));
}

// Writes `count` floats as `type` (rounded as above) to dst: the host's F32 row -> typed row,
// counterpart of cpu::RowToF32. dst need not be aligned.
inline void RowFromF32(const float* src, ScalarType type, int64_t count, void* dst) {
  if (type == ScalarType::kF32) {
    std::memcpy(dst, src, static_cast<size_t>(count) * sizeof(float));
    return;
  }
  auto* out = static_cast<uint8_t*>(dst);
  for (int64_t i = 0; i < count; ++i) {
    const uint16_t h = type == ScalarType::kBF16 ? FloatToBf16(src[i]) : FloatToF16(src[i]);
    std::memcpy(out + 2 * i, &h, 2);
  }
}

}  // namespace ember::kernels

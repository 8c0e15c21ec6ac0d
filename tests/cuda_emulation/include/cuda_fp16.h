// Host emulation of CUDA's half type (tests only): IEEE binary16 bits with the toolkit's
// conversions, rounding to nearest even, written from the format's definition rather than
// shared with kernels/types.h so the two check each other.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

struct __half {
  uint16_t bits;
};

inline __half __ushort_as_half(unsigned short bits) { return {bits}; }
inline unsigned short __half_as_ushort(__half h) { return h.bits; }

inline float __half2float(__half h) {
  const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  const uint32_t exponent = (h.bits >> 10) & 0x1fu, mantissa = h.bits & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
  return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

inline __half __float2half_rn(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t magnitude = x & 0x7fffffffu;
  if (magnitude > 0x7f800000u) {  // NaN: quiet, keeping the payload's top bits
    return {static_cast<uint16_t>(sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu))};
  }
  if (magnitude < 0x38800000u) {  // below 2^-14: a subnormal half (or zero)
    const float scaled = std::fabs(f) * 16777216.0f;  // in units of 2^-24, exact
    return {static_cast<uint16_t>(sign | static_cast<uint16_t>(std::nearbyint(scaled)))};
  }
  // Rebias the exponent, then round the 13 dropped bits to nearest even; a carry out of
  // the mantissa moves to the exponent, and past 65504 that reaches infinity (0x7c00).
  const uint32_t rebiased = std::min(magnitude, 0x47800000u) - 0x38000000u;
  const uint32_t rounded = (rebiased + 0xfffu + ((rebiased >> 13) & 1u)) >> 13;
  return {static_cast<uint16_t>(sign | std::min(rounded, 0x7c00u))};
}

// Element types of the safetensors format, with their names and bit widths.
#pragma once

#include <cstdint>
#include <optional>
#include "absl/strings/string_view.h"

namespace ember::loader {

// Every dtype of the safetensors specification (safetensors/src/tensor.rs).
enum class Dtype : uint8_t {
  kBool,
  kF4,       // 4-bit float (e2m1), packed two per byte
  kF6E2M3,   // 6-bit floats, packed four per three bytes
  kF6E3M2,
  kU8,
  kI8,
  kF8E5M2,
  kF8E4M3,
  kF8E8M0,
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kC64,  // complex64: two f32
  kF64,
  kI64,
  kU64,
};

inline constexpr Dtype kAllDtypes[] = {
    Dtype::kBool,  Dtype::kF4,     Dtype::kF6E2M3, Dtype::kF6E3M2, Dtype::kU8,
    Dtype::kI8,    Dtype::kF8E5M2, Dtype::kF8E4M3, Dtype::kF8E8M0, Dtype::kI16,
    Dtype::kU16,   Dtype::kF16,    Dtype::kBF16,   Dtype::kI32,    Dtype::kU32,
    Dtype::kF32,   Dtype::kC64,    Dtype::kF64,    Dtype::kI64,    Dtype::kU64,
};

// The name used in safetensors headers ("BF16", "F8_E4M3", ...).
absl::string_view DtypeName(Dtype dtype);

// Parses a header dtype name; nullopt for a name the specification does not define.
std::optional<Dtype> ParseDtype(absl::string_view name);

// Width of one element in bits (4 for F4, 6 for F6_*, 8 for U8, ...).
int DtypeBits(Dtype dtype);

}  // namespace ember::loader

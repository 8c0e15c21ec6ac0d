// libFuzzer target: the safetensors header parser must reject or accept any bytes
// without crashing, hanging or reading out of bounds, and what it accepts must be
// self-consistent (tensors tile the data section exactly).
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "loader/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view file(reinterpret_cast<const char*>(data), size);
  auto header = ember::loader::ParseSafetensorsPrefix(file, size, "fuzz.safetensors");
  if (!header.ok()) return 0;
  uint64_t cursor = 0;
  for (const auto& t : header->tensors) {
    if (t.begin != cursor || t.end < t.begin) std::abort();
    cursor = t.end;
  }
  if (cursor != header->data_bytes || header->data_start() + header->data_bytes != size) std::abort();
  return 0;
}

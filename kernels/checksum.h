// A position-weighted byte checksum, computed on the host (the reference) or on the
// device, so a test can verify bytes in VRAM without copying gigabytes back.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ember::kernels {

// sum over i of byte[i] * (i % 65521 + 1), modulo 2^64: moved, swapped or dropped
// bytes change it, and it parallelizes as a plain reduction.
inline uint64_t ByteChecksumHost(const uint8_t* data, size_t n) {
  uint64_t sum = 0;
  for (size_t i = 0; i < n; ++i) sum += static_cast<uint64_t>(data[i]) * (i % 65521 + 1);
  return sum;
}

// Device version of ByteChecksumHost over `n` bytes at `device_data`. Returns false
// (and leaves *out unset) on a CUDA error. Synchronous. Defined in kernels/cuda/checksum.cu,
// so only CUDA builds can call it.
bool ByteChecksumDevice(const void* device_data, size_t n, uint64_t* out);

}  // namespace ember::kernels

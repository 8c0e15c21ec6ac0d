// Writing NumPy .npy files (format 1.0, little-endian float32), so logits can be
// checked against any other implementation with numpy.load.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace ember::worker {

// Writes `data` (row-major, product(shape) floats) to `path` as a .npy array of `shape`.
// The format is a 10-byte preamble and a Python-dict header; no Debian package offers a
// maintained C++ writer, and the specification fits in a dozen lines.
absl::Status WriteNpyFloat32(const std::string& path, const std::vector<int64_t>& shape,
                             const std::vector<float>& data);

}  // namespace ember::worker

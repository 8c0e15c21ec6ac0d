// Test expectations on a loaded model, checked against the source files on disk.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "loader/model_loader.h"
#include "loader/safetensors.h"

namespace ember::testing {

// For every tensor of every weight file of `model` (read back from `model_dir`), checks
// the weight map has it with the right file, dtype, shape, size and 256-byte alignment,
// then calls `check` with its view and its bytes in the source file.
void ForEachLoadedTensor(
    const loader::LoadedModel& model, const std::string& model_dir,
    const std::function<void(const loader::WeightView&, const loader::TensorInfo&,
                             const uint8_t* source)>& check);

// Every tensor, in host memory, equals its bytes in the source file.
void ExpectByteExact(const loader::LoadedModel& model, const std::string& model_dir);

// What the model offers peers (LoadOptions::serve_to_peers): every weight file read back
// through ServedModel::Read in uneven pieces equals the source file, and every block
// checksum equals one computed from the source file.
void ExpectServedByteExact(const loader::LoadedModel& model, const std::string& model_dir);

}  // namespace ember::testing

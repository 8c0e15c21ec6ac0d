// Binding the loader's weight map to the model: every tensor found by its Hugging Face
// name, its shape and dtype checked, and every problem reported at once.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "loader/model_loader.h"
#include "worker/model/model_config.h"

namespace ember::worker {

struct LayerWeights {
  kernels::Matrix q, k, v, o;       // [q_width, hidden], [kv_width, hidden] x2, [hidden, q_width]
  kernels::Matrix gate, up, down;   // [inter, hidden] x2, [hidden, inter]
  // Small tensors, converted to F32 in the backend's memory (null when absent).
  float* input_norm = nullptr;      // [hidden]
  float* post_attention_norm = nullptr;  // [hidden]
  float* q_bias = nullptr;          // [q_width]
  float* k_bias = nullptr;          // [kv_width]
  float* v_bias = nullptr;          // [kv_width]
  float* o_bias = nullptr;          // [hidden]
  float* gate_bias = nullptr;       // [inter]
  float* up_bias = nullptr;         // [inter]
  float* down_bias = nullptr;       // [hidden]
  float* q_norm = nullptr;          // [head_dim], Qwen3
  float* k_norm = nullptr;          // [head_dim], Qwen3
};

// A small tensor's conversion to F32 that waits for its bytes (BindWeights before the
// weights are in place); the engine runs it once the tensor's stage has landed.
struct PendingConversion {
  std::string name;
  kernels::Matrix source;
  float* destination = nullptr;
};

struct ModelWeights {
  kernels::Matrix embed;    // [vocab, hidden]
  kernels::Matrix lm_head;  // [vocab, hidden]; the embedding itself when tied
  float* final_norm = nullptr;  // [hidden]
  std::vector<LayerWeights> layers;
  kernels::ScalarType dtype = kernels::ScalarType::kF32;  // of the large matrices
  std::vector<kernels::Buffer> f32_buffers;  // owns the converted small tensors
  std::vector<PendingConversion> pending;    // with in_place false: not converted yet
};

// Binds `weights` (in the backend's memory: host for cpu, device for cuda). One error lists
// every missing, unexpected, mis-shaped or mistyped tensor by name. The small tensors are
// converted to F32 now, or, with `in_place` false (the bytes are still arriving), listed in
// ModelWeights::pending for the engine to convert as they land.
absl::StatusOr<ModelWeights> BindWeights(const ModelConfig& config,
                                         const std::map<std::string, loader::WeightView>& weights,
                                         kernels::Backend& backend, bool in_place = true);

}  // namespace ember::worker

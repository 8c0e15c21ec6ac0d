// A Llama-family model with random weights built in host memory, for engine tests that
// need no files: the weight map the loader would produce, and the config it matches.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "loader/model_loader.h"
#include "worker/model/model_config.h"

namespace ember::testing {

struct RandomModel {
  worker::ModelConfig config;
  std::map<std::string, loader::WeightView> weights;
  std::vector<std::vector<uint8_t>> storage;  // owns the tensors' bytes
};

// A small Llama config: hidden 64, 2 layers, 4 heads over 2 KV heads, vocab 97.
worker::ModelConfig SmallLlamaConfig();

// Every tensor `config` needs, in `dtype` (F32, F16 or BF16), values ~ N(0, scale).
RandomModel MakeRandomModel(const worker::ModelConfig& config, loader::Dtype dtype,
                            uint64_t seed = 1, float scale = 0.2f);

}  // namespace ember::testing

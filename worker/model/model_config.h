// The model's shape and options, read from a Hugging Face config.json for the Llama
// family: LlamaForCausalLM (Llama 2/3.x, SmolLM2), MistralForCausalLM, Qwen2ForCausalLM.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/types.h"

namespace ember::worker {

enum class Architecture { kLlama, kMistral, kQwen2, kQwen3 };

struct RopeConfig {
  float theta = 10000.0f;
  // rope_scaling of type "llama3" (Llama 3.1+); false for plain RoPE.
  bool llama3 = false;
  float factor = 1.0f;
  float low_freq_factor = 1.0f;
  float high_freq_factor = 4.0f;
  int original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string architecture;  // as written in config.json, e.g. "LlamaForCausalLM"
  Architecture arch = Architecture::kLlama;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  float rms_norm_eps = 1e-6f;
  RopeConfig rope;
  int max_position_embeddings = 0;
  int vocab_size = 0;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;    // Qwen2 always; Llama's and Qwen3's attention_bias
  bool qk_norm = false;     // Qwen3: RMSNorm of each query and key head before RoPE
  bool o_bias = false;      // Llama's attention_bias also covers o_proj
  bool mlp_bias = false;    // Llama's mlp_bias
  int sliding_window = 0;   // Mistral's sliding_window; 0 = full attention
  std::string torch_dtype;  // "bfloat16", "float16", "float32" or "" when absent
  std::vector<int> eos_token_ids;
  int bos_token_id = -1;

  int q_width() const { return num_heads * head_dim; }
  int kv_width() const { return num_kv_heads * head_dim; }
};

// Parses config.json's text. Errors name the file and the field: an unsupported
// architecture or rope_scaling type, a missing or mistyped field, inconsistent sizes.
absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text);

// The config.json among a model's files (as the loader returns them); errors begin with
// `source`, and a missing config.json is NotFound.
absl::StatusOr<ModelConfig> ModelConfigFromFiles(const std::map<std::string, std::string>& files,
                                                 absl::string_view source);

// Rotary inverse frequencies [head_dim / 2] in FP32, as transformers computes them
// (including the llama3 rescaling of low frequencies).
std::vector<float> RopeInverseFrequencies(const ModelConfig& config);

}  // namespace ember::worker

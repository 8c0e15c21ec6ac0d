// Random in-memory models for the engine tests.
#include "tests/engine/random_model.h"

#include <random>

#include "absl/strings/str_cat.h"
#include "kernels/types.h"

namespace ember::testing {

worker::ModelConfig SmallLlamaConfig() {
  worker::ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 16;
  c.vocab_size = 97;
  c.max_position_embeddings = 256;
  c.rms_norm_eps = 1e-5f;
  return c;
}

RandomModel MakeRandomModel(const worker::ModelConfig& c, loader::Dtype dtype, uint64_t seed,
                            float scale) {
  RandomModel m;
  m.config = c;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  const kernels::ScalarType type = dtype == loader::Dtype::kF32    ? kernels::ScalarType::kF32
                                   : dtype == loader::Dtype::kBF16 ? kernels::ScalarType::kBF16
                                                                   : kernels::ScalarType::kF16;
  auto add = [&](const std::string& name, std::vector<uint64_t> shape, float offset) {
    uint64_t count = 1;
    for (uint64_t d : shape) count *= d;
    std::vector<float> values(count);
    for (float& v : values) v = offset + normal(rng);
    std::vector<uint8_t> bytes(count * kernels::ScalarBytes(type));
    kernels::RowFromF32(values.data(), type, static_cast<int64_t>(count), bytes.data());
    m.storage.push_back(std::move(bytes));
    loader::WeightView w;
    w.name = name;
    w.dtype = dtype;
    w.shape = shape;
    w.data = m.storage.back().data();
    w.nbytes = m.storage.back().size();
    m.weights[name] = w;
  };
  const uint64_t H = c.hidden_size, I = c.intermediate_size, Q = c.q_width(), KV = c.kv_width();
  add("model.embed_tokens.weight", {static_cast<uint64_t>(c.vocab_size), H}, 0);
  if (!c.tie_word_embeddings) add("lm_head.weight", {static_cast<uint64_t>(c.vocab_size), H}, 0);
  add("model.norm.weight", {H}, 1);
  for (int l = 0; l < c.num_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    add(p + "self_attn.q_proj.weight", {Q, H}, 0);
    add(p + "self_attn.k_proj.weight", {KV, H}, 0);
    add(p + "self_attn.v_proj.weight", {KV, H}, 0);
    add(p + "self_attn.o_proj.weight", {H, Q}, 0);
    add(p + "mlp.gate_proj.weight", {I, H}, 0);
    add(p + "mlp.up_proj.weight", {I, H}, 0);
    add(p + "mlp.down_proj.weight", {H, I}, 0);
    add(p + "input_layernorm.weight", {H}, 1);
    add(p + "post_attention_layernorm.weight", {H}, 1);
    if (c.qkv_bias) {
      add(p + "self_attn.q_proj.bias", {Q}, 0);
      add(p + "self_attn.k_proj.bias", {KV}, 0);
      add(p + "self_attn.v_proj.bias", {KV}, 0);
    }
  }
  return m;
}

}  // namespace ember::testing

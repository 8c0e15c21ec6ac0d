// config.json parsing and weight binding: the accepted layouts and the errors that name
// what is wrong.
#include "worker/model/model_config.h"

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "kernels/backend.h"
#include "nlohmann/json.hpp"
#include "tests/engine/random_model.h"
#include "worker/model/model_weights.h"

namespace ember::worker {
namespace {

nlohmann::json LlamaJson() {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"hidden_size", 64},
          {"intermediate_size", 96},
          {"num_hidden_layers", 2},
          {"num_attention_heads", 4},
          {"num_key_value_heads", 2},
          {"vocab_size", 97},
          {"max_position_embeddings", 256},
          {"rms_norm_eps", 1e-5},
          {"rope_theta", 500000.0},
          {"torch_dtype", "bfloat16"},
          {"eos_token_id", {128001, 128009}},
          {"hidden_act", "silu"}};
}

std::string Error(const nlohmann::json& j) {
  auto c = ParseModelConfig(j.dump());
  EXPECT_FALSE(c.ok());
  return std::string(c.status().message());
}

TEST(ModelConfigTest, ReadsALlamaConfig) {
  auto c = ParseModelConfig(LlamaJson().dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->arch, Architecture::kLlama);
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_EQ(c->num_kv_heads, 2);
  EXPECT_FLOAT_EQ(c->rope.theta, 500000.0f);
  EXPECT_FALSE(c->rope.llama3);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int>{128001, 128009}));
  EXPECT_EQ(c->torch_dtype, "bfloat16");
  EXPECT_FALSE(c->qkv_bias);
}

TEST(ModelConfigTest, ReadsLlama3RopeScalingInBothLayouts) {
  auto v4 = LlamaJson();
  v4["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                        {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  auto v5 = LlamaJson();
  v5.erase("rope_theta");
  v5["rope_parameters"] = v4["rope_scaling"];
  v5["rope_parameters"]["rope_theta"] = 500000.0;
  for (const auto& j : {v4, v5}) {
    auto c = ParseModelConfig(j.dump());
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_TRUE(c->rope.llama3);
    EXPECT_FLOAT_EQ(c->rope.factor, 8.0f);
    EXPECT_FLOAT_EQ(c->rope.theta, 500000.0f);
    EXPECT_EQ(c->rope.original_max_position_embeddings, 8192);
    // Low frequencies are divided by the factor, the highest is untouched.
    auto scaled = RopeInverseFrequencies(*c);
    auto plain_config = *c;
    plain_config.rope.llama3 = false;
    auto plain = RopeInverseFrequencies(plain_config);
    EXPECT_FLOAT_EQ(scaled[0], plain[0]);
    EXPECT_FLOAT_EQ(scaled.back(), plain.back() / 8.0f);
  }
}

TEST(ModelConfigTest, QwenHasQkvBiasAndMistralItsWindow) {
  auto q = LlamaJson();
  q["architectures"] = {"Qwen2ForCausalLM"};
  auto c = ParseModelConfig(q.dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->qkv_bias);
  EXPECT_FALSE(c->o_bias);
  auto m = LlamaJson();
  m["architectures"] = {"MistralForCausalLM"};
  m["sliding_window"] = 4096;
  c = ParseModelConfig(m.dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->sliding_window, 4096);
  // Qwen3: per-head q/k norms, biases only with attention_bias (then on o_proj too).
  auto q3 = LlamaJson();
  q3["architectures"] = {"Qwen3ForCausalLM"};
  c = ParseModelConfig(q3.dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->qk_norm);
  EXPECT_FALSE(c->qkv_bias);
  q3["attention_bias"] = true;
  c = ParseModelConfig(q3.dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->qkv_bias && c->o_bias);
  q3["use_sliding_window"] = true;
  EXPECT_NE(ParseModelConfig(q3.dump()).status().message().find("Qwen3ForCausalLM with use_sliding_window"),
            std::string::npos);
}

TEST(ModelConfigTest, ErrorsNameTheCause) {
  auto j = LlamaJson();
  j["architectures"] = {"GPT2LMHeadModel"};
  EXPECT_NE(Error(j).find("architecture 'GPT2LMHeadModel' is not supported"), std::string::npos);

  j = LlamaJson();
  j["rope_scaling"] = {{"type", "yarn"}, {"factor", 4.0}};
  EXPECT_NE(Error(j).find("rope_scaling type 'yarn' is not supported (supported: default, llama3)"),
            std::string::npos);

  j = LlamaJson();
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
  EXPECT_NE(Error(j).find("rope_scaling.low_freq_factor' is missing"), std::string::npos) << Error(j);

  j = LlamaJson();
  j.erase("hidden_size");
  EXPECT_NE(Error(j).find("field 'hidden_size' is missing"), std::string::npos);

  j = LlamaJson();
  j["num_attention_heads"] = "4";
  EXPECT_NE(Error(j).find("'num_attention_heads' must be an integer"), std::string::npos);

  j = LlamaJson();
  j["num_key_value_heads"] = 3;
  EXPECT_NE(Error(j).find("must be a multiple of num_key_value_heads (3)"), std::string::npos);

  j = LlamaJson();
  j["hidden_act"] = "gelu";
  EXPECT_NE(Error(j).find("hidden_act \"gelu\" is not supported"), std::string::npos);

  for (const char* method : {"awq", "gptq", "fp8", "compressed-tensors", "modelopt", "mxfp4"}) {
    j = LlamaJson();
    j["quantization_config"] = {{"quant_method", method}, {"bits", 4}};
    EXPECT_NE(Error(j).find(absl::StrCat("quantization_config.quant_method \"", method,
                                         "\" is not supported")),
              std::string::npos)
        << Error(j);
  }
  j = LlamaJson();
  j["quantization_config"] = {{"bits", 4}};  // no method named: the whole value is quoted
  EXPECT_NE(Error(j).find("quantization_config.quant_method {\"bits\":4} is not supported"),
            std::string::npos)
      << Error(j);

  j = LlamaJson();
  j["architectures"] = {"Qwen2ForCausalLM"};
  j["use_sliding_window"] = true;
  EXPECT_NE(Error(j).find("use_sliding_window"), std::string::npos);

  EXPECT_NE(ParseModelConfig("{\"a\": 1, \"a\": 2}").status().message().find("config.json"),
            std::string::npos);
}

TEST(WeightBindingTest, ReportsEveryMissingMisShapedAndUnexpectedTensorAtOnce) {
  auto backend = *kernels::MakeBackend("cpu");
  auto model = testing::MakeRandomModel(testing::SmallLlamaConfig(), loader::Dtype::kF32);
  model.weights.erase("model.layers.1.mlp.up_proj.weight");
  model.weights.erase("model.norm.weight");
  model.weights["model.layers.0.self_attn.k_proj.weight"].shape = {64, 64};
  model.weights["model.layers.0.mlp.down_proj.weight"].dtype = loader::Dtype::kI32;
  model.weights["model.layers.5.self_attn.q_proj.weight"] = model.weights["lm_head.weight"];
  model.weights["model.layers.0.self_attn.rotary_emb.inv_freq"] = model.weights["lm_head.weight"];
  auto bound = BindWeights(model.config, model.weights, *backend);
  ASSERT_FALSE(bound.ok());
  const std::string m(bound.status().message());
  EXPECT_NE(m.find("2 missing: model.norm.weight [64], model.layers.1.mlp.up_proj.weight [96, 64]"),
            std::string::npos) << m;
  EXPECT_NE(m.find("model.layers.0.self_attn.k_proj.weight has shape [64, 64], expected [32, 64]"),
            std::string::npos) << m;
  EXPECT_NE(m.find("model.layers.0.mlp.down_proj.weight has dtype I32"), std::string::npos) << m;
  EXPECT_NE(m.find("1 unexpected: model.layers.5.self_attn.q_proj.weight"), std::string::npos) << m;
  EXPECT_EQ(m.find("inv_freq"), std::string::npos) << m;
}

TEST(WeightBindingTest, TiedEmbeddingsNeedNoHead) {
  auto backend = *kernels::MakeBackend("cpu");
  auto config = testing::SmallLlamaConfig();
  config.tie_word_embeddings = true;
  auto model = testing::MakeRandomModel(config, loader::Dtype::kBF16);
  auto bound = BindWeights(model.config, model.weights, *backend);
  ASSERT_TRUE(bound.ok()) << bound.status();
  EXPECT_EQ(bound->lm_head.data, bound->embed.data);
  EXPECT_EQ(bound->dtype, kernels::ScalarType::kBF16);
}

TEST(WeightBindingTest, DeviceWeightsOnTheCpuBackendAreRefused) {
  auto backend = *kernels::MakeBackend("cpu");
  auto model = testing::MakeRandomModel(testing::SmallLlamaConfig(), loader::Dtype::kF32);
  for (auto& [name, w] : model.weights) w.on_device = true;
  auto bound = BindWeights(model.config, model.weights, *backend);
  ASSERT_FALSE(bound.ok());
  EXPECT_NE(bound.status().message().find("weights are in device memory but the cpu backend"),
            std::string::npos) << bound.status();
}

}  // namespace
}  // namespace ember::worker

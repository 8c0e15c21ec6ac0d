// config.json for the Llama family, read field by field with errors that name the field.
// Both layouts transformers has written are accepted: rope_theta + rope_scaling (v4 and
// most checkpoints on the Hub) and rope_parameters (v5).
#include "worker/model/model_config.h"

#include <cmath>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "loader/json_strict.h"
#include "loader/status_macros.h"

namespace ember::worker {
namespace {

using nlohmann::json;

constexpr absl::string_view kWhere = "config.json";

absl::Status FieldError(absl::string_view field, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat(kWhere, ": field '", field, "' ", problem));
}

// An integer field; `fallback` when absent or null (nullopt: required).
absl::StatusOr<int> GetInt(const json& j, absl::string_view field, std::optional<int> fallback) {
  auto it = j.find(std::string(field));
  if (it == j.end() || it->is_null()) {
    if (fallback) return *fallback;
    return FieldError(field, "is missing");
  }
  if (!it->is_number_integer()) return FieldError(field, absl::StrCat("must be an integer, got ", it->dump()));
  const int64_t v = it->get<int64_t>();
  if (v < 0 || v > (1ll << 30)) return FieldError(field, absl::StrCat("is out of range: ", v));
  return static_cast<int>(v);
}

absl::StatusOr<double> GetNumber(const json& j, absl::string_view field, double fallback) {
  auto it = j.find(std::string(field));
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_number()) return FieldError(field, absl::StrCat("must be a number, got ", it->dump()));
  return it->get<double>();
}

absl::StatusOr<bool> GetBool(const json& j, absl::string_view field, bool fallback) {
  auto it = j.find(std::string(field));
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) return FieldError(field, absl::StrCat("must be true or false, got ", it->dump()));
  return it->get<bool>();
}

absl::StatusOr<Architecture> ParseArchitecture(const json& j, std::string* name) {
  static constexpr std::pair<absl::string_view, Architecture> kKnown[] = {
      {"LlamaForCausalLM", Architecture::kLlama},
      {"MistralForCausalLM", Architecture::kMistral},
      {"Qwen2ForCausalLM", Architecture::kQwen2},
      {"Qwen3ForCausalLM", Architecture::kQwen3},
  };
  auto it = j.find("architectures");
  if (it == j.end() || !it->is_array() || it->empty() || !(*it)[0].is_string()) {
    return FieldError("architectures",
                      "is missing or not a list of names (expected e.g. [\"LlamaForCausalLM\"])");
  }
  *name = (*it)[0].get<std::string>();
  for (const auto& [known, arch] : kKnown) {
    if (*name == known) return arch;
  }
  return absl::UnimplementedError(absl::StrCat(
      kWhere, ": architecture '", *name,
      "' is not supported (supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, "
      "Qwen3ForCausalLM)"));
}

// rope_theta and rope scaling from either layout.
absl::Status ParseRope(const json& j, RopeConfig* rope) {
  const json* params = nullptr;
  absl::string_view params_field;
  if (auto it = j.find("rope_parameters"); it != j.end() && !it->is_null()) {
    params = &*it;
    params_field = "rope_parameters";
  } else if (auto it2 = j.find("rope_scaling"); it2 != j.end() && !it2->is_null()) {
    params = &*it2;
    params_field = "rope_scaling";
  }
  double theta = 10000.0;
  EMBER_ASSIGN_OR_RETURN(theta, GetNumber(j, "rope_theta", theta));
  if (params == nullptr) {
    rope->theta = static_cast<float>(theta);
    return absl::OkStatus();
  }
  if (!params->is_object()) return FieldError(params_field, "must be an object");
  EMBER_ASSIGN_OR_RETURN(theta, GetNumber(*params, "rope_theta", theta));
  rope->theta = static_cast<float>(theta);
  std::string type = "default";
  for (const char* key : {"rope_type", "type"}) {
    if (auto t = params->find(key); t != params->end() && t->is_string()) {
      type = t->get<std::string>();
      break;
    }
  }
  if (type == "default") return absl::OkStatus();
  if (type != "llama3") {
    return absl::UnimplementedError(absl::StrCat(
        kWhere, ": ", params_field, " type '", type,
        "' is not supported (supported: default, llama3)"));
  }
  rope->llama3 = true;
  for (const char* key : {"factor", "low_freq_factor", "high_freq_factor",
                          "original_max_position_embeddings"}) {
    if (!params->contains(key)) {
      return FieldError(absl::StrCat(params_field, ".", key), "is missing (required for llama3)");
    }
  }
  double v = 0;
  EMBER_ASSIGN_OR_RETURN(v, GetNumber(*params, "factor", 1));
  rope->factor = static_cast<float>(v);
  EMBER_ASSIGN_OR_RETURN(v, GetNumber(*params, "low_freq_factor", 1));
  rope->low_freq_factor = static_cast<float>(v);
  EMBER_ASSIGN_OR_RETURN(v, GetNumber(*params, "high_freq_factor", 4));
  rope->high_freq_factor = static_cast<float>(v);
  EMBER_ASSIGN_OR_RETURN(rope->original_max_position_embeddings,
               GetInt(*params, "original_max_position_embeddings", std::nullopt));
  if (rope->factor <= 0 || rope->high_freq_factor <= rope->low_freq_factor ||
      rope->low_freq_factor <= 0 || rope->original_max_position_embeddings <= 0) {
    return FieldError(params_field,
                      "has inconsistent llama3 values (need factor > 0 and "
                      "0 < low_freq_factor < high_freq_factor)");
  }
  return absl::OkStatus();
}

absl::Status ParseTokenIds(const json& j, ModelConfig* c) {
  if (auto it = j.find("eos_token_id"); it != j.end() && !it->is_null()) {
    if (it->is_number_integer()) {
      c->eos_token_ids.push_back(it->get<int>());
    } else if (it->is_array()) {
      for (const auto& v : *it) {
        if (!v.is_number_integer()) return FieldError("eos_token_id", "must hold integers");
        c->eos_token_ids.push_back(v.get<int>());
      }
    } else {
      return FieldError("eos_token_id", "must be an integer or a list of integers");
    }
  }
  EMBER_ASSIGN_OR_RETURN(c->bos_token_id, GetInt(j, "bos_token_id", -1));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text) {
  auto parsed = loader::ParseJsonStrict(json_text, kWhere);
  if (!parsed.ok()) return parsed.status();
  const json& j = *parsed;
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(kWhere, ": not a JSON object"));

  ModelConfig c;
  EMBER_ASSIGN_OR_RETURN(c.arch, ParseArchitecture(j, &c.architecture));
  EMBER_ASSIGN_OR_RETURN(c.hidden_size, GetInt(j, "hidden_size", std::nullopt));
  EMBER_ASSIGN_OR_RETURN(c.intermediate_size, GetInt(j, "intermediate_size", std::nullopt));
  EMBER_ASSIGN_OR_RETURN(c.num_layers, GetInt(j, "num_hidden_layers", std::nullopt));
  EMBER_ASSIGN_OR_RETURN(c.num_heads, GetInt(j, "num_attention_heads", std::nullopt));
  EMBER_ASSIGN_OR_RETURN(c.num_kv_heads, GetInt(j, "num_key_value_heads", c.num_heads));
  EMBER_ASSIGN_OR_RETURN(c.vocab_size, GetInt(j, "vocab_size", std::nullopt));
  if (c.num_heads == 0 || c.hidden_size == 0 || c.num_layers == 0 || c.vocab_size == 0 ||
      c.intermediate_size == 0 || c.num_kv_heads == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        kWhere, ": hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, "
                "num_key_value_heads and vocab_size must all be positive"));
  }
  const int default_head_dim = c.hidden_size / c.num_heads;
  EMBER_ASSIGN_OR_RETURN(c.head_dim, GetInt(j, "head_dim", default_head_dim));
  double eps = 1e-6;
  EMBER_ASSIGN_OR_RETURN(eps, GetNumber(j, "rms_norm_eps", eps));
  c.rms_norm_eps = static_cast<float>(eps);
  if (absl::Status s = ParseRope(j, &c.rope); !s.ok()) return s;
  const int default_max_pos =
      c.arch == Architecture::kQwen2 || c.arch == Architecture::kQwen3 ? 32768 : 4096;
  EMBER_ASSIGN_OR_RETURN(c.max_position_embeddings, GetInt(j, "max_position_embeddings", default_max_pos));
  EMBER_ASSIGN_OR_RETURN(c.tie_word_embeddings, GetBool(j, "tie_word_embeddings", false));
  if (absl::Status s = ParseTokenIds(j, &c); !s.ok()) return s;

  for (const char* key : {"torch_dtype", "dtype"}) {
    if (auto it = j.find(key); it != j.end() && it->is_string()) {
      c.torch_dtype = it->get<std::string>();
      break;
    }
  }
  if (!c.torch_dtype.empty() && c.torch_dtype != "bfloat16" && c.torch_dtype != "float16" &&
      c.torch_dtype != "float32") {
    return FieldError("torch_dtype", absl::StrCat("'", c.torch_dtype,
                                                  "' is not supported (bfloat16, float16 or float32)"));
  }
  // A quantized checkpoint's weights are not tensors the engine binds (AWQ and GPTQ pack
  // integers, FP8 and NVFP4/MXFP4 carry scales): refused here by method, before any byte of
  // them is read as something else.
  if (auto it = j.find("quantization_config"); it != j.end() && !it->is_null()) {
    const auto method = it->is_object() ? it->find("quant_method") : it->end();
    const std::string name = it->is_object() && method != it->end() && method->is_string()
                                 ? "\"" + method->get<std::string>() + "\""
                                 : it->dump();
    return absl::UnimplementedError(absl::StrCat(
        kWhere, ": quantization_config.quant_method ", name,
        " is not supported: Ember serves unquantized BF16, F16 and F32 checkpoints"));
  }
  if (auto it = j.find("hidden_act"); it != j.end() && !it->is_null()) {
    if (!it->is_string() || it->get<std::string>() != "silu") {
      return absl::UnimplementedError(absl::StrCat(
          kWhere, ": hidden_act ", it->dump(), " is not supported (only \"silu\")"));
    }
  }

  switch (c.arch) {
    case Architecture::kLlama: {
      bool attention_bias = false;
      EMBER_ASSIGN_OR_RETURN(attention_bias, GetBool(j, "attention_bias", false));
      c.qkv_bias = c.o_bias = attention_bias;
      EMBER_ASSIGN_OR_RETURN(c.mlp_bias, GetBool(j, "mlp_bias", false));
      break;
    }
    case Architecture::kMistral:
      EMBER_ASSIGN_OR_RETURN(c.sliding_window, GetInt(j, "sliding_window", 0));
      break;
    case Architecture::kQwen2:
    case Architecture::kQwen3: {
      if (c.arch == Architecture::kQwen2) {
        c.qkv_bias = true;
      } else {
        bool attention_bias = false;
        EMBER_ASSIGN_OR_RETURN(attention_bias, GetBool(j, "attention_bias", false));
        c.qkv_bias = c.o_bias = attention_bias;
        c.qk_norm = true;
      }
      bool sliding = false;
      EMBER_ASSIGN_OR_RETURN(sliding, GetBool(j, "use_sliding_window", false));
      bool sliding_layers = false;
      if (auto it = j.find("layer_types"); it != j.end() && it->is_array()) {
        for (const auto& t : *it) sliding_layers |= t != "full_attention";
      }
      if (sliding || sliding_layers) {
        return absl::UnimplementedError(absl::StrCat(
            kWhere, ": ", c.architecture,
            " with use_sliding_window (per-layer sliding attention) is not supported"));
      }
      break;
    }
  }

  if (c.num_heads % c.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        kWhere, ": num_attention_heads (", c.num_heads, ") must be a multiple of num_key_value_heads (",
        c.num_kv_heads, ")"));
  }
  if (c.head_dim <= 0 || c.head_dim % 2 != 0 || c.head_dim > 512) {
    return FieldError("head_dim", absl::StrCat("must be even and at most 512, got ", c.head_dim));
  }
  if (c.max_position_embeddings <= 0) {
    return FieldError("max_position_embeddings", "must be positive");
  }
  return c;
}

std::vector<float> RopeInverseFrequencies(const ModelConfig& c) {
  const int half = c.head_dim / 2;
  std::vector<float> inv(half);
  for (int i = 0; i < half; ++i) {
    // float32 like torch: 1 / base ** (arange(0, dim, 2).float() / dim)
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(c.head_dim);
    inv[i] = 1.0f / std::pow(c.rope.theta, exponent);
  }
  if (!c.rope.llama3) return inv;
  const RopeConfig& r = c.rope;
  const float old_ctx = static_cast<float>(r.original_max_position_embeddings);
  const float low_freq_wavelen = old_ctx / r.low_freq_factor;
  const float high_freq_wavelen = old_ctx / r.high_freq_factor;
  for (float& f : inv) {
    const float wavelen = 2.0f * static_cast<float>(M_PI) / f;
    if (wavelen < high_freq_wavelen) continue;  // high frequencies: unchanged
    if (wavelen > low_freq_wavelen) {           // low frequencies: scaled down
      f = f / r.factor;
      continue;
    }
    const float smooth =
        (old_ctx / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
    f = (1 - smooth) * f / r.factor + smooth * f;
  }
  return inv;
}

absl::StatusOr<ModelConfig> ModelConfigFromFiles(const std::map<std::string, std::string>& files,
                                                 absl::string_view source) {
  auto file = files.find("config.json");
  if (file == files.end()) return absl::NotFoundError(absl::StrCat(source, ": no config.json"));
  auto config = ParseModelConfig(file->second);
  if (!config.ok()) {
    return absl::Status(config.status().code(), absl::StrCat(source, ": ", config.status().message()));
  }
  return config;
}

}  // namespace ember::worker

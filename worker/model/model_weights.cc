// Weight binding by Hugging Face tensor names (model.layers.N.self_attn.q_proj.weight,
// ...), with all problems collected into one error.
#include "worker/model/model_weights.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/match.h"

namespace ember::worker {
namespace {

using kernels::Matrix;
using kernels::ScalarType;

std::string ShapeString(const std::vector<uint64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Accumulates the binding's findings, then reports them together.
class Binder {
 public:
  Binder(const std::map<std::string, loader::WeightView>& weights, kernels::Backend& backend,
         bool in_place)
      : weights_(weights), backend_(backend), in_place_(in_place) {}

  // A tensor of exactly `shape`; a placeholder Matrix when it is missing or wrong.
  Matrix Bind(const std::string& name, std::vector<uint64_t> shape) {
    used_.insert(name);
    auto it = weights_.find(name);
    if (it == weights_.end()) {
      missing_.push_back(absl::StrCat(name, " ", ShapeString(shape)));
      return {};
    }
    const loader::WeightView& w = it->second;
    std::optional<ScalarType> type;
    switch (w.dtype) {
      case loader::Dtype::kF32: type = ScalarType::kF32; break;
      case loader::Dtype::kF16: type = ScalarType::kF16; break;
      case loader::Dtype::kBF16: type = ScalarType::kBF16; break;
      default: break;
    }
    if (!type) {
      wrong_.push_back(absl::StrCat(name, " has dtype ", loader::DtypeName(w.dtype),
                                    " (expected BF16, F16 or F32)"));
      return {};
    }
    if (w.shape != shape) {
      wrong_.push_back(absl::StrCat(name, " has shape ", ShapeString(w.shape), ", expected ",
                                    ShapeString(shape)));
      return {};
    }
    if (w.on_device != backend_.is_device()) {
      placement_ = absl::StrCat("the weights are in ", w.on_device ? "device" : "host",
                                " memory but the ", backend_.name(), " backend needs them in ",
                                backend_.is_device() ? "device" : "host", " memory");
      return {};
    }
    Matrix m;
    m.data = w.data;
    m.type = *type;
    m.rows = shape.size() == 1 ? 1 : static_cast<int64_t>(shape[0]);  // a vector is one row
    m.cols = static_cast<int64_t>(shape.back());
    return m;
  }

  // A vector converted to F32 in the backend's memory.
  float* BindF32(const std::string& name, uint64_t size, ModelWeights& out) {
    Matrix m = Bind(name, {size});
    if (m.data == nullptr) return nullptr;
    auto buffer = backend_.Allocate(size * sizeof(float), name);
    if (!buffer.ok()) {
      alloc_error_ = buffer.status();
      return nullptr;
    }
    if (in_place_) {
      backend_.ToF32(m, buffer->as<float>());
    } else {
      out.pending.push_back({name, m, buffer->as<float>()});
    }
    out.f32_buffers.push_back(std::move(*buffer));
    return out.f32_buffers.back().as<float>();
  }

  void Ignore(const std::string& name) { used_.insert(name); }

  absl::Status Finish() {
    if (!alloc_error_.ok()) return alloc_error_;
    std::vector<std::string> unexpected;
    for (const auto& [name, w] : weights_) {
      // Old checkpoints carry the rotary table as a buffer; it is recomputed, not read.
      if (used_.count(name) == 0 && !absl::EndsWith(name, "rotary_emb.inv_freq")) {
        unexpected.push_back(name);
      }
    }
    if (missing_.empty() && wrong_.empty() && unexpected.empty() && placement_.empty()) {
      return absl::OkStatus();
    }
    std::vector<std::string> parts;
    auto add = [&](absl::string_view what, const std::vector<std::string>& names) {
      if (names.empty()) return;
      constexpr size_t kShown = 12;
      std::vector<std::string> shown(names.begin(),
                                     names.begin() + std::min(names.size(), kShown));
      std::string line = absl::StrCat(names.size(), " ", what, ": ", absl::StrJoin(shown, ", "));
      if (names.size() > kShown) absl::StrAppend(&line, ", ... (", names.size() - kShown, " more)");
      parts.push_back(line);
    };
    add("missing", missing_);
    add("mis-shaped or mistyped", wrong_);
    add("unexpected", unexpected);
    if (!placement_.empty()) parts.push_back(placement_);
    return absl::InvalidArgumentError(
        absl::StrCat("the checkpoint does not match config.json: ", absl::StrJoin(parts, "; ")));
  }

 private:
  const std::map<std::string, loader::WeightView>& weights_;
  kernels::Backend& backend_;
  const bool in_place_;
  std::set<std::string> used_;
  std::vector<std::string> missing_, wrong_;
  std::string placement_;
  absl::Status alloc_error_;
};

}  // namespace

absl::StatusOr<ModelWeights> BindWeights(const ModelConfig& c,
                                         const std::map<std::string, loader::WeightView>& weights,
                                         kernels::Backend& backend, bool in_place) {
  Binder b(weights, backend, in_place);
  ModelWeights out;
  const uint64_t hidden = c.hidden_size, inter = c.intermediate_size;
  const uint64_t qw = c.q_width(), kvw = c.kv_width(), vocab = c.vocab_size;
  out.embed = b.Bind("model.embed_tokens.weight", {vocab, hidden});
  if (c.tie_word_embeddings) {
    out.lm_head = out.embed;
    // Some tied checkpoints still store the head; it must then match the embedding.
    if (weights.count("lm_head.weight") > 0) b.Bind("lm_head.weight", {vocab, hidden});
  } else {
    out.lm_head = b.Bind("lm_head.weight", {vocab, hidden});
  }
  out.final_norm = b.BindF32("model.norm.weight", hidden, out);
  out.layers.resize(c.num_layers);
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    LayerWeights& l = out.layers[i];
    l.q = b.Bind(p + "self_attn.q_proj.weight", {qw, hidden});
    l.k = b.Bind(p + "self_attn.k_proj.weight", {kvw, hidden});
    l.v = b.Bind(p + "self_attn.v_proj.weight", {kvw, hidden});
    l.o = b.Bind(p + "self_attn.o_proj.weight", {hidden, qw});
    l.gate = b.Bind(p + "mlp.gate_proj.weight", {inter, hidden});
    l.up = b.Bind(p + "mlp.up_proj.weight", {inter, hidden});
    l.down = b.Bind(p + "mlp.down_proj.weight", {hidden, inter});
    l.input_norm = b.BindF32(p + "input_layernorm.weight", hidden, out);
    l.post_attention_norm = b.BindF32(p + "post_attention_layernorm.weight", hidden, out);
    if (c.qkv_bias) {
      l.q_bias = b.BindF32(p + "self_attn.q_proj.bias", qw, out);
      l.k_bias = b.BindF32(p + "self_attn.k_proj.bias", kvw, out);
      l.v_bias = b.BindF32(p + "self_attn.v_proj.bias", kvw, out);
    }
    if (c.o_bias) l.o_bias = b.BindF32(p + "self_attn.o_proj.bias", hidden, out);
    if (c.qk_norm) {
      l.q_norm = b.BindF32(p + "self_attn.q_norm.weight", c.head_dim, out);
      l.k_norm = b.BindF32(p + "self_attn.k_norm.weight", c.head_dim, out);
    }
    if (c.mlp_bias) {
      l.gate_bias = b.BindF32(p + "mlp.gate_proj.bias", inter, out);
      l.up_bias = b.BindF32(p + "mlp.up_proj.bias", inter, out);
      l.down_bias = b.BindF32(p + "mlp.down_proj.bias", hidden, out);
    }
  }
  if (absl::Status s = b.Finish(); !s.ok()) return s;
  out.dtype = out.layers.empty() ? out.embed.type : out.layers[0].q.type;
  if (absl::Status s = backend.Synchronize(); !s.ok()) return s;
  return out;
}

}  // namespace ember::worker

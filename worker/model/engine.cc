// The batched forward pass of the Llama family over the op interface, and the step
// bookkeeping around it (validation, KV block reservation, step metadata).
#include "worker/model/engine.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "loader/log.h"
#include "loader/status_macros.h"

namespace ember::worker {
namespace {

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

float SamplingUniform(uint64_t seed, int64_t position) {
  const uint64_t bits = SplitMix64(SplitMix64(seed) ^ static_cast<uint64_t>(position));
  return static_cast<float>(bits >> 40) * (1.0f / 16777216.0f);  // 24 bits: exact in float
}

kernels::SamplingRow SamplingRowFor(const SamplingParams& params, int64_t position) {
  kernels::SamplingRow row;
  row.temperature = params.temperature;
  row.top_k = params.top_k;
  row.top_p = params.top_p;
  row.min_p = params.min_p;
  row.uniform = SamplingUniform(params.seed, position);
  return row;
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const ModelConfig& config,
                                                       ModelWeights weights,
                                                       kernels::Backend* backend,
                                                       const EngineOptions& options) {
  auto resources = Reserve(config, weights.dtype, backend, options);
  if (!resources.ok()) return resources.status();
  return Create(config, std::move(weights), backend, options, std::move(*resources));
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const ModelConfig& config,
                                                       ModelWeights weights,
                                                       kernels::Backend* backend,
                                                       const EngineOptions& options,
                                                       Resources resources) {
  if (backend->KvType(weights.dtype) != resources.kv_type) {
    resources = Resources();  // free first: the new cache is sized from free memory
    auto again = Reserve(config, weights.dtype, backend, options);
    if (!again.ok()) return again.status();
    resources = std::move(*again);
  }
  return std::unique_ptr<Engine>(new Engine(config, std::move(weights), backend, options,
                                            std::move(resources.cache),
                                            std::move(resources.workspace), resources.max_context));
}

absl::StatusOr<Engine::Resources> Engine::Reserve(const ModelConfig& config,
                                                  kernels::ScalarType weight_type,
                                                  kernels::Backend* backend,
                                                  const EngineOptions& options) {
  if (options.max_step_tokens <= 0 || options.max_sequences <= 0 || options.block_size <= 0) {
    return absl::InvalidArgumentError(
        "engine: max_step_tokens, max_sequences and block_size must be positive");
  }
  if (options.kv_memory_fraction <= 0 || options.kv_memory_fraction > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "engine: kv_memory_fraction must be in (0, 1], got ", options.kv_memory_fraction));
  }
  const int max_context = options.max_context > 0
                              ? std::min(options.max_context, config.max_position_embeddings)
                              : config.max_position_embeddings;
  const uint64_t T = options.max_step_tokens, S = options.max_sequences;
  const uint64_t H = config.hidden_size, I = config.intermediate_size;

  // Workspace first, so the KV cache gets what is left.
  Workspace ws;
  struct Want {
    kernels::Buffer* buffer;
    uint64_t bytes;
    const char* what;
  };
  const int max_blocks_per_seq = (max_context + options.block_size - 1) / options.block_size;
  // The largest step's metadata: 4 ints per token, a full block table per sequence and an
  // output row per sequence (see Step).
  const int64_t meta_ints = 4ll * T + static_cast<int64_t>(S) * max_blocks_per_seq + S;
  const Want wants[] = {
      {&ws.residual, T * H * 4, "the residual stream"},
      {&ws.x, T * H * 4, "layer outputs"},
      {&ws.h, T * H * 4, "normed activations"},
      {&ws.q, 4ull * T * config.q_width(), "queries"},
      {&ws.k, 4ull * T * config.kv_width(), "keys"},
      {&ws.v, 4ull * T * config.kv_width(), "values"},
      {&ws.attn, 4ull * T * config.q_width(), "attention outputs"},
      {&ws.gate, T * I * 4, "MLP gate"},
      {&ws.up, T * I * 4, "MLP up"},
      {&ws.logits, 4ull * S * config.vocab_size, "logits"},
      {&ws.meta, static_cast<uint64_t>(meta_ints) * 4, "step metadata"},
      {&ws.sampling, S * sizeof(kernels::SamplingRow), "sampling parameters"},
      {&ws.tokens, S * 4ull, "sampled tokens"},
      {&ws.attention, backend->AttentionWorkspaceBytes(static_cast<int>(T), config.num_heads, config.head_dim),
       "attention scratch"},
      {&ws.inv_freq, 4ull * config.head_dim / 2, "rotary frequencies"},
  };
  for (const Want& w : wants) {
    if (w.bytes == 0) continue;
    auto buffer = backend->Allocate(w.bytes, absl::StrCat("engine workspace: ", w.what));
    if (!buffer.ok()) return buffer.status();
    *w.buffer = std::move(*buffer);
  }
  const std::vector<float> inv_freq = RopeInverseFrequencies(config);
  if (absl::Status s = backend->Upload(ws.inv_freq.data(), inv_freq.data(), inv_freq.size() * 4);
      !s.ok()) {
    return s;
  }

  KvCacheShape shape;
  shape.num_layers = config.num_layers;
  shape.kv_heads = config.num_kv_heads;
  shape.head_dim = config.head_dim;
  shape.block_size = options.block_size;
  shape.type = backend->KvType(weight_type);
  const int64_t max_useful = static_cast<int64_t>(S) * max_blocks_per_seq;
  const uint64_t free_bytes = backend->FreeMemoryBytes();
  const int64_t blocks =
      options.kv_blocks > 0
          ? options.kv_blocks
          : PlanKvBlocks(shape, free_bytes - std::min(free_bytes, options.pending_bytes),
                         options.kv_memory_fraction, max_useful);
  auto cache = KvCache::Create(*backend, shape, blocks);
  if (!cache.ok()) return cache.status();
  return Resources{std::move(ws), std::move(*cache), max_context, shape.type};
}

Engine::Engine(const ModelConfig& config, ModelWeights weights, kernels::Backend* backend,
               const EngineOptions& options, KvCache cache, Workspace workspace, int max_context)
    : config_(config),
      weights_(std::move(weights)),
      backend_(backend),
      options_(options),
      cache_(std::move(cache)),
      ws_(std::move(workspace)),
      max_context_(max_context) {}

absl::Status Engine::AddSequence(uint64_t id) {
  if (sequences_.count(id) > 0) {
    return absl::AlreadyExistsError(absl::StrCat("sequence ", id, " already exists"));
  }
  if (static_cast<int>(sequences_.size()) >= options_.max_sequences) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the engine already holds its maximum of ", options_.max_sequences, " sequences"));
  }
  sequences_[id];
  return absl::OkStatus();
}

void Engine::RemoveSequence(uint64_t id) {
  auto it = sequences_.find(id);
  if (it == sequences_.end()) return;
  cache_.Release(it->second.table);
  sequences_.erase(it);
}

int Engine::SequenceLength(uint64_t id) const {
  auto it = sequences_.find(id);
  return it == sequences_.end() ? 0 : it->second.length;
}

absl::Status Engine::Validate(std::span<const StepInput> inputs) const {
  if (inputs.empty()) return absl::InvalidArgumentError("step: no inputs");
  int64_t total = 0;
  std::set<uint64_t> seen;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const StepInput& in = inputs[i];
    auto it = sequences_.find(in.sequence);
    if (it == sequences_.end()) {
      return absl::NotFoundError(absl::StrCat("step: input ", i, ": unknown sequence ", in.sequence));
    }
    if (!seen.insert(in.sequence).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("step: sequence ", in.sequence, " appears twice in one step"));
    }
    if (in.tokens.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("step: sequence ", in.sequence, " has no tokens"));
    }
    for (size_t t = 0; t < in.tokens.size(); ++t) {
      if (in.tokens[t] < 0 || in.tokens[t] >= config_.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            "step: sequence ", in.sequence, ": token ", t, " is ", in.tokens[t],
            ", outside the vocabulary [0, ", config_.vocab_size, ")"));
      }
    }
    if (it->second.length + static_cast<int64_t>(in.tokens.size()) > max_context_) {
      return absl::InvalidArgumentError(absl::StrCat(
          "step: sequence ", in.sequence, " would reach ", it->second.length + in.tokens.size(),
          " tokens, beyond the context limit of ", max_context_));
    }
    const SamplingParams& sp = in.sampling;
    if (!(sp.temperature >= 0) || sp.top_k < 0 || !(sp.top_p > 0 && sp.top_p <= 1) ||
        !(sp.min_p >= 0 && sp.min_p <= 1)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "step: sequence ", in.sequence,
          ": sampling needs temperature >= 0, top_k >= 0, 0 < top_p <= 1, 0 <= min_p <= 1"));
    }
    total += static_cast<int64_t>(in.tokens.size());
  }
  if (static_cast<int>(inputs.size()) > options_.max_sequences) {
    return absl::InvalidArgumentError(absl::StrCat("step: ", inputs.size(),
                                                   " sequences, more than max_sequences ",
                                                   options_.max_sequences));
  }
  if (total > options_.max_step_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("step: ", total, " tokens, more than max_step_tokens ",
                                                   options_.max_step_tokens));
  }
  return absl::OkStatus();
}

absl::Status Engine::WarmUp() {
  constexpr uint64_t kWarmUpSequence = ~uint64_t{0};
  const int block_size = options_.block_size;
  for (int n : backend_->WarmUpTokenCounts()) {
    const int64_t blocks = (n + block_size - 1) / block_size;
    if (n > options_.max_step_tokens || n > max_context_ || blocks > cache_.free_blocks()) break;
    const std::vector<int32_t> tokens(n, 0);
    StepInput in;
    in.sequence = kWarmUpSequence;
    in.tokens = tokens;
    if (absl::Status s = AddSequence(kWarmUpSequence); !s.ok()) return s;
    auto step = Step(std::span<const StepInput>(&in, 1));
    RemoveSequence(kWarmUpSequence);
    if (!step.ok()) return step.status();
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<StepOutput>> Engine::Step(std::span<const StepInput> inputs) {
  if (absl::Status s = Validate(inputs); !s.ok()) return s;
  std::vector<Sequence*> seqs;
  for (const StepInput& in : inputs) seqs.push_back(&sequences_.at(in.sequence));

  // Reserve KV blocks for the whole step, all or nothing.
  int64_t needed = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    needed += cache_.BlocksFor(seqs[i]->length + inputs[i].tokens.size()) -
              static_cast<int64_t>(seqs[i]->table.blocks.size());
  }
  if (needed > cache_.free_blocks()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV cache full: this step needs ", needed, " more blocks of ", options_.block_size,
        " tokens, ", cache_.free_blocks(), " of ", cache_.num_blocks(),
        " are free; finish or remove a sequence, or step fewer tokens"));
  }
  int table_width = 0;  // the longest block table in the step: the row stride below
  for (size_t i = 0; i < inputs.size(); ++i) {
    absl::Status s = cache_.Reserve(seqs[i]->table, seqs[i]->length + inputs[i].tokens.size());
    if (!s.ok()) return s;  // cannot happen: checked above
    table_width = std::max<int>(table_width, seqs[i]->table.blocks.size());
  }

  // Step metadata, laid out for this step only so that one small upload carries it:
  // per token its id, position, sequence row and cache slot; per sequence its block
  // table; per output the token row it reads.
  int n_tokens = 0;
  for (const StepInput& in : inputs) n_tokens += static_cast<int>(in.tokens.size());
  StepLayout layout;
  layout.n_tokens = n_tokens;
  layout.table_width = table_width;
  layout.pos = n_tokens;
  layout.seq = 2 * n_tokens;
  layout.slots = 3 * n_tokens;
  layout.tables = 4 * n_tokens;
  layout.out_rows = layout.tables + static_cast<int64_t>(inputs.size()) * table_width;
  host_meta_.assign(layout.out_rows + inputs.size(), 0);
  int32_t* meta = host_meta_.data();
  const int bs = options_.block_size;
  std::vector<kernels::SamplingRow> sampling;
  int t_all = 0;
  for (size_t s = 0; s < inputs.size(); ++s) {
    const StepInput& in = inputs[s];
    const Sequence& seq = *seqs[s];
    std::copy(seq.table.blocks.begin(), seq.table.blocks.end(), meta + layout.tables + s * table_width);
    for (size_t t = 0; t < in.tokens.size(); ++t, ++t_all) {
      const int pos = seq.length + static_cast<int>(t);
      meta[layout.ids + t_all] = in.tokens[t];
      meta[layout.pos + t_all] = pos;
      meta[layout.seq + t_all] = static_cast<int32_t>(s);
      meta[layout.slots + t_all] = seq.table.blocks[pos / bs] * bs + pos % bs;
    }
    if (in.sample || in.want_logits) {
      meta[layout.out_rows + sampling.size()] = t_all - 1;
      // The token being chosen sits at position length + tokens.
      sampling.push_back(SamplingRowFor(in.sampling, seq.length + in.tokens.size()));
    }
  }
  layout.n_out = static_cast<int>(sampling.size());
  const int n_out = layout.n_out;
  const size_t meta_used = layout.out_rows + n_out;
  if (absl::Status s = backend_->Upload(ws_.meta.data(), host_meta_.data(), meta_used * 4); !s.ok()) {
    return s;
  }
  if (n_out > 0) {
    if (absl::Status s = backend_->Upload(ws_.sampling.data(), sampling.data(),
                                          sampling.size() * sizeof(kernels::SamplingRow));
        !s.ok()) {
      return s;
    }
  }

  // A step waiting for the weights holds them from its first stage to its last download.
  // Once the load has succeeded and every small tensor is converted, the engine stops asking.
  absl::Cleanup release = [this] {
    if (arrival_ == nullptr) return;
    arrival_->Release();
    if (weights_.pending.empty() && arrival_->complete()) arrival_ = nullptr;
  };
  if (absl::Status s = Forward(layout); !s.ok()) {
    (void)backend_->Synchronize();  // the stages before it may still run on a device
    return s;
  }

  // Results come back before any sequence changes, so a failed download leaves none
  // half-advanced.
  const int64_t V = config_.vocab_size;
  std::vector<int32_t> tokens(n_out);
  std::vector<float> logits;
  const bool any_logits = std::any_of(inputs.begin(), inputs.end(),
                                      [](const StepInput& in) { return in.want_logits; });
  if (any_logits) {
    logits.resize(static_cast<size_t>(n_out) * V);
    if (absl::Status s = backend_->Download(logits.data(), ws_.logits.data(), logits.size() * 4);
        !s.ok()) {
      return s;
    }
  }
  if (n_out > 0) {
    if (absl::Status s = backend_->Download(tokens.data(), ws_.tokens.data(), n_out * 4); !s.ok()) {
      return s;
    }
  } else if (absl::Status s = backend_->Synchronize(); !s.ok()) {
    return s;
  }
  std::vector<StepOutput> outputs;
  int out = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const StepInput& in = inputs[i];
    seqs[i]->length += static_cast<int>(in.tokens.size());
    if (!in.sample && !in.want_logits) continue;
    StepOutput o;
    o.sequence = in.sequence;
    if (in.sample) o.token = tokens[out];
    if (in.want_logits) o.logits.assign(logits.begin() + out * V, logits.begin() + (out + 1) * V);
    outputs.push_back(std::move(o));
    ++out;
  }
  return outputs;
}

absl::Status Engine::Forward(const StepLayout& layout) {
  kernels::Backend& b = *backend_;
  const ModelConfig& c = config_;
  const int T = layout.n_tokens;
  const int H = c.hidden_size;
  const float eps = c.rms_norm_eps;
  const int32_t* meta = ws_.meta.as<int32_t>();
  const int32_t* ids = meta + layout.ids;
  const int32_t* pos = meta + layout.pos;
  float* residual = ws_.residual.as<float>();  // [T, H] the residual stream
  float* x = ws_.x.as<float>();                // [T, H] a sublayer's output
  float* h = ws_.h.as<float>();                // [T, H] normed input of a sublayer
  float* q = ws_.q.as<float>();                // [T, heads, head_dim]
  float* k = ws_.k.as<float>();                // [T, kv_heads, head_dim]
  float* v = ws_.v.as<float>();                // [T, kv_heads, head_dim]
  float* attn = ws_.attn.as<float>();          // [T, heads, head_dim]
  float* gate = ws_.gate.as<float>();          // [T, intermediate]
  float* up = ws_.up.as<float>();              // [T, intermediate]

  kernels::AttentionArgs attention;
  attention.q = q;
  attention.out = attn;
  attention.block_tables = meta + layout.tables;
  attention.max_blocks_per_seq = layout.table_width;
  attention.token_seq = meta + layout.seq;
  attention.token_pos = pos;
  attention.n = T;
  attention.q_heads = c.num_heads;
  attention.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  attention.sliding_window = c.sliding_window;
  attention.workspace = ws_.attention.data();
  attention.workspace_bytes = ws_.attention.bytes();

  // Waits for a stage's weights, then converts its small tensors that were bound before
  // their bytes arrived.
  auto weights_for = [this, &b](int stage) -> absl::Status {
    if (arrival_ == nullptr) return absl::OkStatus();
    EMBER_RETURN_IF_ERROR(arrival_->Await(stage));
    std::vector<PendingConversion>& pending = weights_.pending;
    for (auto it = pending.begin(); it != pending.end();) {
      if (WeightArrival::StageOf(it->name) != stage) {
        ++it;
        continue;
      }
      b.ToF32(it->source, it->destination);
      it = pending.erase(it);
    }
    return absl::OkStatus();
  };
  EMBER_RETURN_IF_ERROR(weights_for(0));
  b.Embed(weights_.embed, ids, T, residual);
  for (int l = 0; l < c.num_layers; ++l) {
    EMBER_RETURN_IF_ERROR(weights_for(l + 1));
    const LayerWeights& w = weights_.layers[l];
    b.AddRmsNorm(l == 0 ? nullptr : x, residual, w.input_norm, T, H, eps, h);
    const kernels::LinearOut qkv[] = {{&w.q, w.q_bias, q}, {&w.k, w.k_bias, k}, {&w.v, w.v_bias, v}};
    b.Linears(h, T, qkv);
    if (c.qk_norm) {  // each head's query and key normalized over head_dim, in place
      b.AddRmsNorm(nullptr, q, w.q_norm, T * c.num_heads, c.head_dim, eps, q);
      b.AddRmsNorm(nullptr, k, w.k_norm, T * c.num_kv_heads, c.head_dim, eps, k);
    }
    b.Rope(q, k, pos, ws_.inv_freq.as<float>(), T, c.num_heads, c.num_kv_heads, c.head_dim);
    attention.cache = cache_.Layer(l);
    b.KvStore(attention.cache, k, v, meta + layout.slots, T);
    b.Attention(attention);
    b.Linear(attn, T, w.o, w.o_bias, x);
    b.AddRmsNorm(x, residual, w.post_attention_norm, T, H, eps, h);
    const kernels::LinearOut gate_up[] = {{&w.gate, w.gate_bias, gate}, {&w.up, w.up_bias, up}};
    b.Linears(h, T, gate_up);
    b.SwiGlu(gate, up, static_cast<int64_t>(T) * c.intermediate_size, gate);
    b.Linear(gate, T, w.down, w.down_bias, x);
  }
  if (layout.n_out == 0) return absl::OkStatus();
  // The final norm is cheap for every row; only the rows that produce a token get the
  // vocabulary projection.
  EMBER_RETURN_IF_ERROR(weights_for(WeightArrival::kHead));
  b.AddRmsNorm(x, residual, weights_.final_norm, T, H, eps, h);
  b.GatherRows(h, meta + layout.out_rows, layout.n_out, H, x);
  b.Linear(x, layout.n_out, weights_.lm_head, nullptr, ws_.logits.as<float>());
  b.Sample(ws_.logits.as<float>(), layout.n_out, c.vocab_size,
           ws_.sampling.as<kernels::SamplingRow>(), ws_.tokens.as<int32_t>());
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<kernels::Backend>> ChooseBackend(absl::string_view choice) {
  if (choice != "auto") return kernels::MakeBackend(choice);
  auto cuda = kernels::MakeBackend("cuda");
  if (cuda.ok()) return cuda;
  LogInfo("engine", "using the CPU backend", {{"reason", std::string(cuda.status().message())}});
  return kernels::MakeBackend("cpu");
}

loader::Target LoadTargetFor(absl::string_view choice) {
  if (choice == "cuda") return loader::Target::kDevice;
  if (choice == "auto" && kernels::CheckBackendHardware("cuda").ok()) return loader::Target::kDevice;
  return loader::Target::kHost;
}

}  // namespace ember::worker

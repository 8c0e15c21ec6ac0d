// The engine: one batched forward step over a mixed batch (prefill chunks and single
// decode tokens of different sequences) on any backend, with the paged KV cache. The
// continuous-batching scheduler in the worker decides what goes into each step.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "worker/model/kv_cache.h"
#include "worker/model/model_config.h"
#include "worker/model/model_weights.h"
#include "worker/model/weight_arrival.h"

namespace ember::worker {

struct EngineOptions {
  int max_step_tokens = 512;   // tokens in one forward (bounds prefill chunks)
  int max_sequences = 64;      // sequences alive at once (and per step)
  int block_size = 16;         // tokens per KV block
  double kv_memory_fraction = 0.9;  // of the memory free after weights and workspace
  int64_t kv_blocks = 0;       // > 0: exactly this many blocks instead
  int max_context = 0;         // 0: the model's max_position_embeddings
  // Memory about to be used that the backend's free memory does not show yet (host pages
  // of weights still streaming in); the KV cache is sized without it.
  uint64_t pending_bytes = 0;
};

struct SamplingParams {
  float temperature = 0;  // 0: greedy
  int top_k = 0;
  float top_p = 1;
  float min_p = 0;
  uint64_t seed = 0;
};

// One sequence's part of a step: `tokens` are appended at the sequence's current length.
struct StepInput {
  uint64_t sequence = 0;
  std::span<const int32_t> tokens;
  bool sample = true;        // choose the next token after the last of `tokens`
  bool want_logits = false;  // also return the logits after the last of `tokens`
  SamplingParams sampling;
};

struct StepOutput {
  uint64_t sequence = 0;
  int32_t token = -1;          // when sampled
  std::vector<float> logits;   // [vocab] when asked for
};

class Engine {
 public:
  struct Resources;  // the workspace and KV cache, allocated before the weights are bound

  static absl::StatusOr<std::unique_ptr<Engine>> Create(const ModelConfig& config,
                                                        ModelWeights weights,
                                                        kernels::Backend* backend,
                                                        const EngineOptions& options);

  // Allocates the per-step workspace and the KV cache (sized from the backend's free memory
  // now, so call it once the weights' memory is taken) for weights of `weight_type`. It needs
  // no weights, so a server runs it while the weights still stream in, then passes the result
  // to the Create below.
  static absl::StatusOr<Resources> Reserve(const ModelConfig& config,
                                           kernels::ScalarType weight_type,
                                           kernels::Backend* backend, const EngineOptions& options);
  // As Create, with resources from Reserve for the same config, backend and options. If
  // they were reserved for another weight type than `weights` has (its KV type differs),
  // they are released and reserved again.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const ModelConfig& config,
                                                        ModelWeights weights,
                                                        kernels::Backend* backend,
                                                        const EngineOptions& options,
                                                        Resources resources);

  const ModelConfig& config() const { return config_; }
  const EngineOptions& options() const { return options_; }
  int max_context() const { return max_context_; }
  const KvCache& kv_cache() const { return cache_; }
  kernels::Backend& backend() const { return *backend_; }

  // Sequence lifetime: a sequence holds KV blocks from its first step until removed
  // (finished or cancelled).
  absl::Status AddSequence(uint64_t id);
  void RemoveSequence(uint64_t id);
  bool HasSequence(uint64_t id) const { return sequences_.count(id) > 0; }
  int SequenceLength(uint64_t id) const;

  // Runs one forward. Fails without changing any sequence when an input is invalid
  // (InvalidArgument naming it) or the KV cache cannot hold the step (ResourceExhausted).
  // Outputs come in the order of `inputs`, one per input that sampled or asked for logits.
  absl::StatusOr<std::vector<StepOutput>> Step(std::span<const StepInput> inputs);

  // Computing while the weights arrive: from now on each step waits at every stage of the
  // forward pass (embedding, each layer, the LM head) until `arrival` says that stage's
  // weights are in place, and fails with the load's error if it failed; after the first step
  // that ends with the load complete, steps no longer ask. Set before the first step;
  // `arrival` must outlive that step.
  void SetWeightArrival(WeightArrival* arrival) { arrival_ = arrival; }

  // One throwaway step of each size the backend runs different code for
  // (Backend::WarmUpTokenCounts) that this engine's limits and free KV blocks allow, so no
  // request pays for lazy kernel loading. Leaves no sequence behind.
  absl::Status WarmUp();

 private:
  struct Sequence {
    BlockTable table;
    int length = 0;  // tokens whose K and V are in the cache
  };
  // Per-step scratch in the backend's memory, sized once for max_step_tokens.
  struct Workspace {
    kernels::Buffer residual, x, h, q, k, v, attn, gate, up;  // [T, width] activations
    kernels::Buffer logits;                                   // [S, vocab]
    kernels::Buffer meta;                                     // the int32 step metadata
    kernels::Buffer sampling, tokens;                         // [S] SamplingRow, [S] int32
    kernels::Buffer attention;                                // split-K scratch
    kernels::Buffer inv_freq;                                 // [head_dim / 2]
  };

  Engine(const ModelConfig& config, ModelWeights weights, kernels::Backend* backend,
         const EngineOptions& options, KvCache cache, Workspace workspace, int max_context);
  // Where each array of one step's metadata sits in ws_.meta (int32 offsets).
  struct StepLayout {
    int n_tokens = 0, n_out = 0;
    int table_width = 0;  // blocks per block-table row: the longest table in the step
    int64_t ids = 0, pos = 0, seq = 0, slots = 0, tables = 0, out_rows = 0;
  };

  absl::Status Validate(std::span<const StepInput> inputs) const;
  absl::Status Forward(const StepLayout& layout);

  ModelConfig config_;
  ModelWeights weights_;
  kernels::Backend* backend_;
  EngineOptions options_;
  KvCache cache_;
  Workspace ws_;
  int max_context_;
  std::map<uint64_t, Sequence> sequences_;
  std::vector<int32_t> host_meta_;  // staging for ws_.meta, reused from step to step
  WeightArrival* arrival_ = nullptr;
};

struct Engine::Resources {
  Workspace workspace;
  KvCache cache;
  int max_context = 0;
  kernels::ScalarType kv_type = kernels::ScalarType::kF32;
};

// The backend for `choice`: "cpu", "cuda", or "auto" (CUDA when a GPU is usable, else the
// CPU, with the reason logged).
absl::StatusOr<std::unique_ptr<kernels::Backend>> ChooseBackend(absl::string_view choice);

// Where a model served by ChooseBackend(choice) keeps its weights, decided before the
// backend exists (it comes up while the weights stream): device memory for "cuda", and for
// "auto" exactly when the hardware check that ChooseBackend's fallback follows passes, so
// a GPU the CUDA backend refuses (compute capability below 8.0) gets no weights.
loader::Target LoadTargetFor(absl::string_view choice);

// The `uniform` for sampling the token at `position` of a sequence seeded `seed`: a
// counter-based hash, so a draw never depends on the batch or on earlier draws' order.
float SamplingUniform(uint64_t seed, int64_t position);

// The backend's sampling row for choosing the token at `position` with `params` (what Step
// uses; a caller that samples logits itself gets the same draw).
kernels::SamplingRow SamplingRowFor(const SamplingParams& params, int64_t position);

}  // namespace ember::worker

// Offline generation on the engine alone (what ember-generate runs): several prompts
// together, prefill chunks first, then one decode token per running sequence per step,
// greedy or sampled, until max_tokens or an end-of-sequence token. The worker's scheduler
// (worker/serve/scheduler.h) interleaves prefill and decode instead and streams.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/model/engine.h"

namespace ember::worker {

struct GenerateOptions {
  SamplingParams sampling;      // prompt i samples with seed sampling.seed + i
  int max_tokens = 32;          // per prompt
  std::vector<int32_t> eos_ids;
  bool ignore_eos = false;      // keep generating after an end-of-sequence token
  bool want_logits = false;     // keep the logits of every generated position
};

struct Generation {
  std::vector<int32_t> prompt;
  std::vector<int32_t> output;
  std::vector<std::vector<float>> logits;  // [generated][vocab] with want_logits
};

struct GenerateResult {
  std::vector<Generation> generations;  // one per prompt, in order
  int64_t steps = 0;
  int64_t generated = 0;
  double first_token_s = 0;  // from the start to the first sampled token
  double total_s = 0;        // from the start to the last step's end
};

// Runs `prompts` to the end on `engine`, whose max_sequences must allow them all at once.
absl::StatusOr<GenerateResult> GenerateAll(Engine& engine,
                                           const std::vector<std::vector<int32_t>>& prompts,
                                           const GenerateOptions& options);

// The logits of every generation as one float32 array: [rows, vocab] for one prompt,
// [prompts, rows, vocab] for several, rows being the longest output (NaN past a
// generation's end). `shape` receives the dimensions.
std::vector<float> StackLogits(const std::vector<Generation>& generations, int64_t vocab,
                               std::vector<int64_t>* shape);

}  // namespace ember::worker

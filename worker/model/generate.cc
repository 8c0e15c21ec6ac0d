#include "worker/model/generate.h"

#include <algorithm>
#include <chrono>
#include <limits>
#include <span>

namespace ember::worker {

absl::StatusOr<GenerateResult> GenerateAll(Engine& engine,
                                           const std::vector<std::vector<int32_t>>& prompts,
                                           const GenerateOptions& options) {
  using Clock = std::chrono::steady_clock;
  const Clock::time_point start = Clock::now();
  auto since_start = [&] { return std::chrono::duration<double>(Clock::now() - start).count(); };
  GenerateResult result;
  result.generations.resize(prompts.size());
  std::vector<int> prefilled(prompts.size(), 0);
  std::vector<bool> done(prompts.size(), false);
  for (size_t i = 0; i < prompts.size(); ++i) {
    result.generations[i].prompt = prompts[i];
    if (absl::Status s = engine.AddSequence(i); !s.ok()) return s;
  }
  const int max_step_tokens = engine.options().max_step_tokens;
  std::vector<int32_t> last_token(prompts.size());
  while (true) {
    std::vector<StepInput> inputs;
    int budget = max_step_tokens;
    for (size_t i = 0; i < prompts.size() && budget > 0; ++i) {
      if (done[i]) continue;
      Generation& g = result.generations[i];
      StepInput in;
      in.sequence = i;
      in.sampling = options.sampling;
      in.sampling.seed = options.sampling.seed + i;
      in.want_logits = options.want_logits;
      if (prefilled[i] < static_cast<int>(g.prompt.size())) {
        const int n = std::min<int>(budget, g.prompt.size() - prefilled[i]);
        in.tokens = std::span<const int32_t>(g.prompt.data() + prefilled[i], n);
        in.sample = prefilled[i] + n == static_cast<int>(g.prompt.size());
        in.want_logits = in.sample && options.want_logits;
        prefilled[i] += n;
        budget -= n;
      } else {
        last_token[i] = g.output.back();
        in.tokens = std::span<const int32_t>(&last_token[i], 1);
        budget -= 1;
      }
      inputs.push_back(in);
    }
    if (inputs.empty()) break;
    auto outputs = engine.Step(inputs);
    if (!outputs.ok()) return outputs.status();
    ++result.steps;
    for (StepOutput& o : *outputs) {
      if (o.token < 0) continue;
      Generation& g = result.generations[o.sequence];
      if (result.generated == 0) result.first_token_s = since_start();
      g.output.push_back(o.token);
      if (options.want_logits) g.logits.push_back(std::move(o.logits));
      ++result.generated;
      const bool is_eos =
          std::find(options.eos_ids.begin(), options.eos_ids.end(), o.token) != options.eos_ids.end();
      if (static_cast<int>(g.output.size()) >= options.max_tokens || (is_eos && !options.ignore_eos)) {
        done[o.sequence] = true;
        engine.RemoveSequence(o.sequence);
      }
    }
  }
  result.total_s = since_start();
  return result;
}

std::vector<float> StackLogits(const std::vector<Generation>& generations, int64_t vocab,
                               std::vector<int64_t>* shape) {
  size_t rows = 0;
  for (const Generation& g : generations) rows = std::max(rows, g.logits.size());
  std::vector<float> data;
  data.reserve(generations.size() * rows * vocab);
  for (const Generation& g : generations) {
    for (size_t r = 0; r < rows; ++r) {
      if (r < g.logits.size()) {
        data.insert(data.end(), g.logits[r].begin(), g.logits[r].end());
      } else {
        data.insert(data.end(), vocab, std::numeric_limits<float>::quiet_NaN());
      }
    }
  }
  *shape = {static_cast<int64_t>(rows), vocab};
  if (generations.size() > 1) shape->insert(shape->begin(), static_cast<int64_t>(generations.size()));
  return data;
}

}  // namespace ember::worker

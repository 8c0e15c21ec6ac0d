// ember-generate: the engine alone. Loads a model through the loader from any source it
// takes, generates from token ids, prints the ids and the speed, and can write every
// step's logits as a .npy file for comparison with another implementation.
#include <chrono>
#include <cstdio>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "loader/aws_credentials.h"
#include "loader/cli_args.h"
#include "loader/log.h"
#include "loader/model_loader.h"
#include "loader/progress_bar.h"
#include "nlohmann/json.hpp"
#include "worker/model/engine.h"
#include "worker/model/generate.h"
#include "worker/model/model_config.h"
#include "worker/model/model_weights.h"
#include "worker/model/npy.h"
#include "worker/tokenizer/tokenizer.h"

ABSL_FLAG(std::string, model, "", "Model source: s3://BUCKET/PREFIX, https://..., file://PATH or a path");
ABSL_FLAG(std::string, prompt_ids, "",
          "Prompt token ids, comma-separated (\"1,2,3\"); several prompts separated by ';' "
          "run together in one batch");
ABSL_FLAG(std::string, prompt, "", "Prompt text, tokenized with the model's tokenizer.json (instead of --prompt-ids)");
ABSL_FLAG(int, max_tokens, 32, "Tokens to generate per prompt");
ABSL_FLAG(double, temperature, 0, "Sampling temperature; 0 is greedy");
ABSL_FLAG(int, top_k, 0, "Keep the k most likely tokens (0: off)");
ABSL_FLAG(double, top_p, 1, "Nucleus sampling mass (1: off)");
ABSL_FLAG(double, min_p, 0, "Drop tokens below min_p times the top probability (0: off)");
ABSL_FLAG(uint64_t, seed, 0, "Sampling seed (prompt i of a batch uses seed + i)");
ABSL_FLAG(int, batch, 1, "Run this many copies of a single prompt together (benchmarking)");
ABSL_FLAG(bool, ignore_eos, false, "Keep generating after an end-of-sequence token");
ABSL_FLAG(std::string, backend, "auto", "cpu, cuda, or auto (cuda when a GPU is usable)");
ABSL_FLAG(int, threads, 0, EMBER_THREADS_HELP);
ABSL_FLAG(std::string, compute_precision, "bf16", EMBER_COMPUTE_PRECISION_HELP);
ABSL_FLAG(std::string, logits_out, "",
          "Write the float32 logits of every generated position to this .npy file: shape "
          "[steps, vocab] for one prompt (row 0: after the prompt), [prompts, steps, vocab] "
          "for several (rows after an early stop are NaN)");
ABSL_FLAG(int, max_step_tokens, 512, "Tokens per forward step (prefill chunk size)");
ABSL_FLAG(int64_t, kv_blocks, 0, "KV cache blocks (0: from free memory)");
ABSL_FLAG(double, kv_memory_fraction, 0.9, "Fraction of free memory for the KV cache");
ABSL_FLAG(bool, json, false, "Print one JSON object with ids and timings on stdout");
ABSL_FLAG(bool, quiet, false, "No progress bar and no log lines below warnings");
ABSL_FLAG(bool, no_sign_request, false, EMBER_NO_SIGN_REQUEST_HELP);

namespace {

constexpr char kUsage[] =
    "ember-generate --model SOURCE (--prompt-ids 1,2,3 | --prompt TEXT) [--max-tokens N] [flags]\n\n"
    "Loads a Llama, Mistral, Qwen2 or Qwen3 model (config.json + safetensors) through Ember's\n"
    "loader, generates with Ember's engine and prints the token ids and tokens/s.\n"
    "Flags may be spelled with dashes or underscores.\n"
    EMBER_S3_CREDENTIALS_USAGE "\n"
    "Exit status: 0 on success; 1 when loading or generating failed; 2 for bad usage.";

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int Usage(const std::string& message) {
  std::fprintf(stderr, "ember-generate: %s (see --help)\n", message.c_str());
  return 2;
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "ember-generate: %s\n", std::string(status.message()).c_str());
  return 1;
}

// "1,2,3;4,5" -> {{1,2,3},{4,5}}.
bool ParsePrompts(const std::string& text, std::vector<std::vector<int32_t>>* prompts,
                  std::string* error) {
  for (absl::string_view part : absl::StrSplit(text, ';', absl::SkipWhitespace())) {
    std::vector<int32_t> ids;
    for (absl::string_view item : absl::StrSplit(part, ',', absl::SkipWhitespace())) {
      int32_t id;
      if (!absl::SimpleAtoi(item, &id)) {
        *error = absl::StrCat("--prompt-ids: '", item, "' is not a token id");
        return false;
      }
      ids.push_back(id);
    }
    if (ids.empty()) {
      *error = "--prompt-ids: empty prompt";
      return false;
    }
    prompts->push_back(std::move(ids));
  }
  if (prompts->empty()) {
    *error = "--prompt-ids is required";
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> args = ember::ParseCli(argc, argv, kUsage, "ember_generate_main");
  if (args.size() != 1) return Usage("unexpected positional argument");
  const std::string prompt_text = absl::GetFlag(FLAGS_prompt);
  if (!prompt_text.empty() && !absl::GetFlag(FLAGS_prompt_ids).empty()) {
    return Usage("pass --prompt or --prompt-ids, not both");
  }
  const std::string source = absl::GetFlag(FLAGS_model);
  if (source.empty()) return Usage("--model is required");
  ember::loader::SetS3Anonymous(absl::GetFlag(FLAGS_no_sign_request));
  std::vector<std::vector<int32_t>> prompts;
  std::string error;
  if (prompt_text.empty() && !ParsePrompts(absl::GetFlag(FLAGS_prompt_ids), &prompts, &error)) {
    return Usage(error);
  }
  if (!prompt_text.empty()) prompts.emplace_back();  // filled once the tokenizer is loaded
  const int batch = absl::GetFlag(FLAGS_batch);
  if (batch < 1) return Usage("--batch must be at least 1");
  if (batch > 1) {
    if (prompts.size() != 1) return Usage("--batch needs exactly one prompt");
    prompts.assign(batch, prompts[0]);
  }
  const int max_tokens = absl::GetFlag(FLAGS_max_tokens);
  if (max_tokens < 1) return Usage("--max-tokens must be at least 1");
  const bool quiet = absl::GetFlag(FLAGS_quiet);
  if (quiet) ember::SetLogLevel(ember::LogLevel::kWarning);

  // Backend.
  if (absl::Status s = ember::kernels::cpu::Configure(absl::GetFlag(FLAGS_threads),
                                                       absl::GetFlag(FLAGS_compute_precision));
      !s.ok()) {
    return Usage(std::string(s.message()));
  }
  auto backend = ember::worker::ChooseBackend(absl::GetFlag(FLAGS_backend));
  if (!backend.ok()) return Fail(backend.status());

  // Load.
  const double t_start = Now();
  ember::loader::LoadOptions load;
  load.target = (*backend)->is_device() ? ember::loader::Target::kDevice : ember::loader::Target::kHost;
  load.require_tokenizer = !prompt_text.empty();  // token ids alone need no tokenizer
  ember::loader::ProgressBar bar("load");
  if (!quiet) {
    load.on_progress = [&](const ember::loader::LoadProgress& p) {
      bar.Update(p.bytes_done, p.bytes_total, p.seconds);
    };
  }
  auto model = ember::loader::LoadModel(source, load);
  bar.Finish();
  if (!model.ok()) return Fail(model.status());
  auto config = ember::worker::ModelConfigFromFiles(model->files, source);
  if (!config.ok()) return Fail(config.status());
  auto tokenizer_files = ember::worker::Tokenizer::FromFiles(model->files);
  if (!tokenizer_files.ok()) return Fail(tokenizer_files.status());
  const std::optional<ember::worker::Tokenizer> tokenizer = std::move(*tokenizer_files);
  if (!prompt_text.empty()) {
    auto ids = tokenizer->Encode(prompt_text, /*add_special_tokens=*/true);
    if (!ids.ok()) return Fail(ids.status());
    if (ids->empty()) return Usage("--prompt encodes to no tokens");
    for (auto& p : prompts) p = *ids;
  }
  auto weights = ember::worker::BindWeights(*config, model->weights, **backend);
  if (!weights.ok()) return Fail(absl::Status(weights.status().code(),
                                              absl::StrCat(source, ": ", weights.status().message())));
  ember::worker::EngineOptions options;
  options.max_step_tokens = absl::GetFlag(FLAGS_max_step_tokens);
  options.max_sequences = std::max<int>(1, prompts.size());
  options.kv_blocks = absl::GetFlag(FLAGS_kv_blocks);
  options.kv_memory_fraction = absl::GetFlag(FLAGS_kv_memory_fraction);
  auto engine = ember::worker::Engine::Create(*config, std::move(*weights), backend->get(), options);
  if (!engine.ok()) return Fail(engine.status());
  const double t_ready = Now();

  ember::worker::GenerateOptions generate;
  generate.sampling.temperature = static_cast<float>(absl::GetFlag(FLAGS_temperature));
  generate.sampling.top_k = absl::GetFlag(FLAGS_top_k);
  generate.sampling.top_p = static_cast<float>(absl::GetFlag(FLAGS_top_p));
  generate.sampling.min_p = static_cast<float>(absl::GetFlag(FLAGS_min_p));
  generate.sampling.seed = absl::GetFlag(FLAGS_seed);
  generate.max_tokens = max_tokens;
  generate.eos_ids = config->eos_token_ids;
  if (tokenizer && tokenizer->eos_id()) generate.eos_ids.push_back(*tokenizer->eos_id());
  generate.ignore_eos = absl::GetFlag(FLAGS_ignore_eos);
  generate.want_logits = !absl::GetFlag(FLAGS_logits_out).empty();
  auto result = ember::worker::GenerateAll(**engine, prompts, generate);
  if (!result.ok()) return Fail(result.status());
  const std::vector<ember::worker::Generation>& gens = result->generations;
  if (generate.want_logits) {
    std::vector<int64_t> shape;
    const std::vector<float> data = ember::worker::StackLogits(gens, config->vocab_size, &shape);
    if (absl::Status s = ember::worker::WriteNpyFloat32(absl::GetFlag(FLAGS_logits_out), shape, data);
        !s.ok()) {
      return Fail(s);
    }
  }
  int64_t prompt_tokens = 0;
  for (const auto& p : prompts) prompt_tokens += p.size();
  const int64_t generated = result->generated;

  // Decode speed: tokens after each sequence's first, over the time after the first token.
  const double decode_s = result->total_s - result->first_token_s;
  const int64_t decode_tokens = generated - static_cast<int64_t>(gens.size());
  const double tps = decode_s > 0 && decode_tokens > 0 ? decode_tokens / decode_s : 0;
  if (absl::GetFlag(FLAGS_json)) {
    nlohmann::json out;
    out["backend"] = std::string((*backend)->name());
    if (!(*backend)->is_device()) out["compute_precision"] = ember::kernels::cpu::ComputePrecisionDescription();
    out["outputs"] = nlohmann::json::array();
    for (const auto& g : gens) out["outputs"].push_back(g.output);
    if (tokenizer) {
      out["texts"] = nlohmann::json::array();
      for (const auto& g : gens) out["texts"].push_back(tokenizer->Decode(g.output, true));
    }
    out["prompt_tokens"] = prompt_tokens;
    out["generated_tokens"] = generated;
    out["steps"] = result->steps;
    out["load_s"] = t_ready - t_start;
    out["time_to_first_token_s"] = result->first_token_s;
    out["decode_s"] = decode_s;
    out["decode_tokens_per_s"] = tps;
    out["batch"] = gens.size();
    out["kv_blocks"] = (*engine)->kv_cache().num_blocks();
    std::cout << out.dump() << std::endl;
  } else {
    for (size_t i = 0; i < gens.size(); ++i) {
      if (gens.size() > 1) std::cout << "[" << i << "] ";
      std::cout << absl::StrJoin(gens[i].output, ",") << "\n";
      if (tokenizer) std::cout << tokenizer->Decode(gens[i].output, true) << "\n";
    }
    std::cout << absl::StrFormat(
        "backend %s: loaded and ready in %.2f s; prompt %d tokens, first token after %.1f ms; "
        "%d tokens generated, decode %.1f tokens/s at batch %d\n",
        (*backend)->name(), t_ready - t_start, prompt_tokens, result->first_token_s * 1e3, generated,
        tps, gens.size());
  }
  return 0;
}

// A model made ready to serve: loaded through the loader, its config, tokenizer and chat
// template parsed, its weights bound, the engine and its KV cache created and the
// scheduler running.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "ember/v1/inference.pb.h"
#include "kernels/backend.h"
#include "loader/model_loader.h"
#include "worker/tokenizer/chat_template.h"
#include "worker/model/engine.h"
#include "worker/model/model_config.h"
#include "worker/model/weight_arrival.h"
#include "worker/serve/metrics.h"
#include "worker/serve/request_builder.h"
#include "worker/serve/scheduler.h"
#include "worker/tokenizer/tokenizer.h"

namespace ember::worker {

class ServingModel;

struct ServingOptions {
  std::string source;            // model URI
  std::string backend = "auto";  // cpu, cuda or auto
  int max_batch = 64;
  int max_queue = 256;
  int max_step_tokens = 512;
  double kv_memory_fraction = 0.9;
  int64_t kv_blocks = 0;  // > 0: exactly this many
  std::string cache_dir;  // optional node cache (mirror of the source)
  std::vector<std::string> peers;  // workers to fetch weight ranges from (loader/peer.h)
  std::string peer_token;
  bool serve_to_peers = false;     // keep checksums and what peers need (served())
  // When the process started: load timings are seconds after it.
  Clock::time_point process_start = Clock::now();
  std::function<void(const loader::LoadProgress&)> on_progress;
  std::function<void(Clock::time_point, Clock::time_point)> on_first_token;  // see SchedulerOptions
  // Called once, from a loading thread, as soon as the engine and scheduler exist: usually
  // while the weights still stream (the loader announced their places), else right after
  // the last byte. Requests submitted from then on run (layer by layer as the weights land)
  // and produce nothing before the load has succeeded; the warm-up runs only if none is
  // there by the end of the load.
  std::function<void(ServingModel*)> on_engine_ready;
};

// One phase of the cold start, in seconds after process start.
struct Phase {
  std::string name;
  double start_s = 0;
  double end_s = 0;
};

class ServingModel {
 public:
  // Loads options.source into *model, which the caller owns from the start: after
  // on_engine_ready, calls may hold its scheduler, so a model whose load then failed stays
  // until the caller has stopped serving (its requests fail with the load's error).
  static absl::Status Load(const ServingOptions& options, Metrics* metrics,
                           std::unique_ptr<ServingModel>* model);
  ~ServingModel();

  // Whether the engine and scheduler exist (always once Load succeeded).
  bool started() const { return scheduler_ != nullptr; }
  Scheduler& scheduler() { return *scheduler_; }
  const ModelLimits& limits() const { return limits_; }
  const Tokenizer* tokenizer() const { return tokenizer_ ? &*tokenizer_ : nullptr; }
  const v1::ModelInfo& info() const { return info_; }
  v1::ModelInfo& mutable_info() { return info_; }
  // How the node cache served the load: disabled, hit, filled or bypassed.
  const std::string& cache_outcome() const { return cache_outcome_; }
  // What other workers may fetch (with ServingOptions::serve_to_peers), else null.
  std::shared_ptr<const loader::ServedModel> served() const { return loaded_.served; }
  // Of the weight bytes, those peers sent.
  uint64_t bytes_from_peers() const { return loaded_.bytes_from_peers; }
  // backend (CUDA context), headers, weights (first byte to last byte in place), kv_cache,
  // warmup.
  const std::vector<Phase>& phases() const { return phases_; }

 private:
  ServingModel() = default;
  // config.json, tokenizer.json and the chat template, from the loader's small files.
  absl::Status ParseFiles(const std::map<std::string, std::string>& files, const std::string& source);
  // Binds the weights at `views`, builds the engine on `resources` and starts the scheduler.
  absl::Status Start(const std::map<std::string, loader::WeightView>& views,
                     Engine::Resources resources, const EngineOptions& engine_options,
                     const ServingOptions& options, Metrics* metrics);

  std::unique_ptr<kernels::Backend> backend_;
  loader::LoadedModel loaded_;
  std::optional<ModelConfig> config_;
  std::optional<Tokenizer> tokenizer_;
  std::optional<ChatTemplate> chat_template_;
  std::unique_ptr<WeightArrival> arrival_;  // when the engine was built before the bytes
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<Scheduler> scheduler_;
  std::vector<int32_t> eos_;
  ModelLimits limits_;
  v1::ModelInfo info_;
  std::string cache_outcome_;
  std::vector<Phase> phases_;
};

}  // namespace ember::worker

#include "worker/serve/serving_model.h"

#include <algorithm>
#include <chrono>
#include <future>

#include "absl/strings/str_cat.h"
#include "loader/log.h"
#include "loader/node_cache.h"
#include "loader/status_macros.h"
#include "worker/model/model_weights.h"

namespace ember::worker {
namespace {

absl::Status WithSource(const std::string& source, const absl::Status& status) {
  return absl::Status(status.code(), absl::StrCat(source, ": ", status.message()));
}

// The element type of the embedding (mixes are allowed; this is the one most weights use).
std::string DtypeName(const loader::LoadedModel& model) {
  const loader::WeightView* embed = model.Find("model.embed_tokens.weight");
  if (embed == nullptr) return "unknown";
  switch (embed->dtype) {
    case loader::Dtype::kBF16: return "bfloat16";
    case loader::Dtype::kF16: return "float16";
    case loader::Dtype::kF32: return "float32";
    default: return "unknown";
  }
}

// The weights' element type as config.json states it (the KV cache follows it on a GPU);
// Engine::Create reserves again in the rare case the tensors say otherwise.
kernels::ScalarType WeightTypeOf(const ModelConfig& config) {
  if (config.torch_dtype == "float16") return kernels::ScalarType::kF16;
  if (config.torch_dtype == "float32") return kernels::ScalarType::kF32;
  return kernels::ScalarType::kBF16;
}

}  // namespace

absl::Status ServingModel::Load(const ServingOptions& options, Metrics* metrics,
                                std::unique_ptr<ServingModel>* out) {
  *out = std::unique_ptr<ServingModel>(new ServingModel());
  ServingModel* model = out->get();
  const std::string& source = options.source;

  // The backend (CUDA context creation on a GPU: hundreds of ms) comes up on its own thread
  // while the loader lists the source, reads the headers and streams the weights.
  const Clock::time_point t0 = options.process_start;
  auto since = [t0](Clock::time_point t) { return std::chrono::duration<double>(t - t0).count(); };
  Clock::time_point backend_start = Clock::now(), backend_end;
  std::shared_future<absl::Status> backend_ready =
      std::async(std::launch::async, [model, &options, &backend_end]() -> absl::Status {
        auto backend = ChooseBackend(options.backend);
        backend_end = Clock::now();
        if (!backend.ok()) return backend.status();
        model->backend_ = std::move(*backend);
        return absl::OkStatus();
      }).share();

  EngineOptions engine_options;
  engine_options.max_sequences = options.max_batch;
  engine_options.max_step_tokens = std::max(options.max_step_tokens, options.max_batch);
  engine_options.kv_memory_fraction = options.kv_memory_fraction;
  engine_options.kv_blocks = options.kv_blocks;

  loader::LoadOptions load;
  // Into device memory unless the CPU backend was asked for; the loader asks LoadTargetFor
  // (the backend's own hardware check) once the headers are read, off the start-up path,
  // so a GPU the CUDA backend refuses gets no weights (they go to host memory, as the
  // backend falls back to the CPU).
  load.target = options.backend == "cpu" ? loader::Target::kHost : loader::Target::kDevice;
  load.device_wanted = [choice = options.backend] {
    return LoadTargetFor(choice) == loader::Target::kDevice;
  };
  load.require_tokenizer = false;  // a model without one serves token ids
  load.peers = options.peers;
  load.peer_token = options.peer_token;
  load.serve_to_peers = options.serve_to_peers;
  load.on_progress = options.on_progress;
  // config.json, the tokenizer and the chat template are parsed while the weights stream.
  std::shared_future<absl::Status> parsed;
  Clock::time_point files_start, files_end;
  std::future<absl::StatusOr<Engine::Resources>> reserved;
  load.on_files = [&](const std::map<std::string, std::string>& files) {
    // Called again if the node cache falls back to the source: the files then win, once
    // whatever still reads the first ones is done.
    if (reserved.valid()) reserved.wait();
    if (parsed.valid()) parsed.wait();
    parsed = std::async(std::launch::async, [model, files, &source, &files_start, &files_end] {
      files_start = Clock::now();
      absl::Status parsed = model->ParseFiles(files, source);
      files_end = Clock::now();
      return parsed;
    }).share();
  };
  // Once the weights' memory is taken, the engine's workspace and KV cache are allocated
  // (sized from what is left) while the weights stream into it.
  Clock::time_point kv_start, kv_end;
  load.on_arena = [&](uint64_t arena_bytes) {
    if (reserved.valid()) reserved.wait();  // a second load (node-cache fallback) redoes it
    reserved = std::async(std::launch::async, [&, arena_bytes,
                                               files = parsed]() -> absl::StatusOr<Engine::Resources> {
      EMBER_RETURN_IF_ERROR(files.valid() ? files.get()
                                          : absl::InternalError("the loader gave no model files"));
      EMBER_RETURN_IF_ERROR(backend_ready.get());
      kv_start = Clock::now();
      EngineOptions reserve_options = engine_options;
      // Host pages of the arena are taken as the weights land, after this runs: count them
      // as used already. (A device arena is allocated up front and already counted.)
      if (!model->backend_->is_device()) reserve_options.pending_bytes = arena_bytes;
      auto resources = Engine::Reserve(*model->config_, WeightTypeOf(*model->config_),
                                       model->backend_.get(), reserve_options);
      kv_end = Clock::now();
      return resources;
    });
  };
  // Computing while the weights arrive: once the loader knows where every tensor goes, the
  // engine is built on those places and the scheduler started, so a request that arrives
  // now runs layer by layer as the layers land (fetched in the order the forward pass reads
  // them). Health stays NOT_SERVING until the load succeeds.
  Clock::time_point engine_start, engine_end;
  std::future<absl::Status> built;
  load.tensor_rank = [](const std::string& name) { return WeightArrival::StageOf(name); };
  load.on_layout = [&](const std::map<std::string, loader::WeightView>& views) {
    model->arrival_ = std::make_unique<WeightArrival>(views);
    built = std::async(std::launch::async, [&, views, resources = std::move(reserved)]() mutable {
      EMBER_RETURN_IF_ERROR(parsed.get());
      absl::StatusOr<Engine::Resources> reserve = resources.get();
      if (!reserve.ok()) return reserve.status();
      engine_start = Clock::now();
      EMBER_RETURN_IF_ERROR(model->Start(views, std::move(*reserve), engine_options, options, metrics));
      engine_end = Clock::now();
      return absl::OkStatus();
    });
  };
  load.on_tensor = [model](const std::string& name) { model->arrival_->Landed(name); };
  load.on_abandon = [model](const absl::Status& error) { model->arrival_->Abandon(error); };

  loader::CacheReport cache;
  const Clock::time_point load_start = Clock::now();
  auto load_result = loader::LoadModelCached(source, load, options.cache_dir, &cache);
  if (model->arrival_ != nullptr) model->arrival_->Finish(load_result.status());
  const absl::Status parse_status = parsed.valid() ? parsed.get()
                                                  : absl::InternalError("the loader gave no model files");
  EMBER_RETURN_IF_ERROR(backend_ready.get());
  const absl::Status built_status = built.valid() ? built.get() : absl::OkStatus();
  // The reservation, unless the early start took it.
  absl::StatusOr<Engine::Resources> resources =
      reserved.valid() ? reserved.get() : absl::InternalError("the loader allocated no memory");
  if (!load_result.ok()) return load_result.status();
  if (!parse_status.ok()) return parse_status;
  if (!built_status.ok()) return built_status;
  if (model->engine_ == nullptr && !resources.ok()) return resources.status();
  model->loaded_ = std::move(*load_result);
  if (cache.outcome != loader::CacheOutcome::kDisabled) {
    LogInfo("cache", loader::CacheOutcomeName(cache.outcome),
            {{"entry", cache.entry_dir}, {"reason", cache.reason}});
  }
  model->cache_outcome_ = loader::CacheOutcomeName(cache.outcome);
  const loader::LoadedModel& loaded = model->loaded_;
  if (model->backend_->is_device() != (loaded.target == loader::Target::kDevice)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the weights were loaded into ", loaded.target == loader::Target::kDevice ? "device" : "host",
        " memory but the backend is ", model->backend_->name(), "; pass --backend explicitly"));
  }
  const double load_start_s = since(load_start);
  auto& phases = model->phases_;
  phases.push_back({"backend", since(backend_start), since(backend_end)});
  phases.push_back({"headers", load_start_s, load_start_s + loaded.timings.headers_s});
  phases.push_back({"weights", load_start_s + loaded.timings.first_byte_s,
                    load_start_s + loaded.timings.copy_done_s});
  phases.push_back({"files", since(files_start), since(files_end)});
  phases.push_back({"kv_cache", since(kv_start), since(kv_end)});

  if (model->engine_ == nullptr) {  // the loader gave no places before the bytes (a node cache's copy)
    engine_start = Clock::now();
    EMBER_RETURN_IF_ERROR(
        model->Start(loaded.weights, std::move(*resources), engine_options, options, metrics));
    engine_end = Clock::now();
  }
  phases.push_back({"engine", since(engine_start), since(engine_end)});
  // Warm-up: a step of each size the backend runs different kernels for, so no request
  // pays for first-touch costs (lazy kernel loading, page faults, lazy allocations). Not when
  // a request is queued or running (on_engine_ready handed the waiting ones over): the
  // warm-up would delay it by its whole length, while its own first step pays only the
  // first-touch costs.
  Clock::time_point warm_start;
  absl::StatusOr<bool> warmed = model->scheduler_->WarmUpIfIdle(&warm_start);
  if (!warmed.ok()) return warmed.status();
  if (*warmed) {
    phases.push_back({"warmup", since(warm_start), since(Clock::now())});
  } else {
    LogInfo("worker", "warm-up skipped", {{"reason", "a request is queued or running"}});
  }

  v1::ModelInfo& info = model->info_;
  info.set_source(loaded.source);
  info.set_architecture(model->config_->architecture);
  info.set_context_length(model->limits_.max_context);
  info.set_vocab_size(model->limits_.vocab_size);
  info.set_dtype(DtypeName(loaded));
  info.set_backend(std::string(model->backend_->name()));
  info.set_weight_bytes(loaded.bytes_streamed);
  info.set_max_batch(options.max_batch);
  info.set_kv_cache_tokens(model->engine_->kv_cache().num_blocks() *
                           model->engine_->options().block_size);
  for (int32_t id : model->eos_) info.add_eos_token_ids(id);
  info.set_chat_template(model->limits_.chat_template != nullptr);
  v1::LoadTimings* timings = info.mutable_timings();
  timings->set_headers_s(load_start_s + loaded.timings.headers_s);
  timings->set_first_byte_s(load_start_s + loaded.timings.first_byte_s);
  timings->set_weights_s(load_start_s + loaded.timings.copy_done_s);
  return absl::OkStatus();
}

absl::Status ServingModel::Start(const std::map<std::string, loader::WeightView>& views,
                                 Engine::Resources resources, const EngineOptions& engine_options,
                                 const ServingOptions& options, Metrics* metrics) {
  const bool arriving = arrival_ != nullptr && !arrival_->complete();
  auto weights = BindWeights(*config_, views, *backend_, /*in_place=*/!arriving);
  if (!weights.ok()) return WithSource(options.source, weights.status());
  EMBER_ASSIGN_OR_RETURN(engine_, Engine::Create(*config_, std::move(*weights), backend_.get(),
                                                 engine_options, std::move(resources)));
  if (arriving) engine_->SetWeightArrival(arrival_.get());

  eos_ = config_->eos_token_ids;
  if (tokenizer_ && tokenizer_->eos_id() &&
      std::find(eos_.begin(), eos_.end(), *tokenizer_->eos_id()) == eos_.end()) {
    eos_.push_back(*tokenizer_->eos_id());
  }
  limits_.vocab_size = static_cast<int32_t>(config_->vocab_size);
  limits_.max_context = engine_->max_context();
  limits_.tokenizer = tokenizer();
  limits_.chat_template = chat_template_ ? &*chat_template_ : nullptr;
  SchedulerOptions scheduler_options;
  scheduler_options.max_batch = options.max_batch;
  scheduler_options.max_queue = options.max_queue;
  scheduler_options.on_first_token = options.on_first_token;
  scheduler_ = std::make_unique<Scheduler>(engine_.get(), tokenizer(), eos_, scheduler_options, metrics);
  if (arriving) LogInfo("worker", "computing while loading");
  if (options.on_engine_ready) options.on_engine_ready(this);
  return absl::OkStatus();
}

absl::Status ServingModel::ParseFiles(const std::map<std::string, std::string>& files,
                                      const std::string& source) {
  EMBER_ASSIGN_OR_RETURN(config_, ModelConfigFromFiles(files, source));
  auto tokenizer = Tokenizer::FromFiles(files);
  if (!tokenizer.ok()) return WithSource(source, tokenizer.status());
  tokenizer_ = std::move(*tokenizer);
  if (!tokenizer_) {
    limits_.chat_template_error =
        absl::FailedPreconditionError("the model has no tokenizer.json, so it takes token ids only");
    return absl::OkStatus();
  }
  auto chat = ChatTemplate::Load(tokenizer_->chat_template(), tokenizer_->template_tokens());
  if (chat.ok()) {
    chat_template_ = std::move(*chat);
  } else {
    limits_.chat_template_error = chat.status();
    LogInfo("worker", "chat messages are not accepted",
            {{"reason", std::string(chat.status().message())}});
  }
  return absl::OkStatus();
}

ServingModel::~ServingModel() {
  scheduler_.reset();  // before the engine it drives
  engine_.reset();
}

}  // namespace ember::worker

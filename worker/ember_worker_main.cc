// ember-worker: the inference server. Opens its gRPC port at once (health NOT_SERVING),
// loads the model in the background, turns SERVING when a request can be answered, and on
// SIGTERM drains: NOT_SERVING, no new admissions, in-flight requests finish (up to the
// drain timeout), exit 0.
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/thread_pool.h"
#include "loader/aws_credentials.h"
#include "loader/peer.h"
#include "loader/cli_args.h"
#include "loader/log.h"
#include "google/protobuf/stubs/logging.h"
#include "nlohmann/json.hpp"
#include "worker/serve/metrics.h"
#include "worker/serve/peer_server.h"
#include "worker/serve/service.h"
#include "worker/serve/coldstart.h"
#include "worker/serve/serving_model.h"

ABSL_FLAG(std::string, model, "", "Model source: s3://BUCKET/PREFIX, https://..., file://PATH or a path [EMBER_MODEL]");
ABSL_FLAG(int, grpc_port, 50051, "gRPC port, 0 for a free one [EMBER_GRPC_PORT, else PORT as Knative sets it]");
ABSL_FLAG(int, metrics_port, 9090, "Prometheus /metrics HTTP port, 0 for a free one, -1 to disable [EMBER_METRICS_PORT]");
ABSL_FLAG(std::string, listen_address, "0.0.0.0", "Address the gRPC port listens on (/metrics listens on all) [EMBER_LISTEN_ADDRESS]");
ABSL_FLAG(int, max_batch, 64, "Sequences generating at once [EMBER_MAX_BATCH]");
ABSL_FLAG(int, max_queue, 256, "Requests waiting for admission before RESOURCE_EXHAUSTED [EMBER_MAX_QUEUE]");
ABSL_FLAG(int, max_step_tokens, 512, "Tokens per forward step: the prefill chunk size [EMBER_MAX_STEP_TOKENS]");
ABSL_FLAG(double, kv_memory_fraction, 0.9, "Fraction of the memory left after the weights used for the KV cache [EMBER_KV_MEMORY_FRACTION]");
ABSL_FLAG(int64_t, kv_blocks, 0, "KV cache blocks of 16 tokens (0: from --kv_memory_fraction) [EMBER_KV_BLOCKS]");
ABSL_FLAG(double, drain_timeout_s, 30, "Seconds in-flight requests may take to finish after SIGTERM [EMBER_DRAIN_TIMEOUT_S]");
ABSL_FLAG(std::string, cache_dir, "", "Node cache directory for model files (optional) [EMBER_CACHE_DIR]");
ABSL_FLAG(std::string, backend, "auto", "cpu, cuda, or auto (cuda when a GPU is usable) [EMBER_BACKEND]");
ABSL_FLAG(int, threads, 0, EMBER_THREADS_HELP " [EMBER_THREADS]");
ABSL_FLAG(std::string, compute_precision, "bf16", EMBER_COMPUTE_PRECISION_HELP " [EMBER_COMPUTE_PRECISION]");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warning, error or off [EMBER_LOG_LEVEL]");
ABSL_FLAG(bool, no_sign_request, false, EMBER_NO_SIGN_REQUEST_HELP " [EMBER_NO_SIGN_REQUEST]");
ABSL_FLAG(int, peer_port, -1, "Serve the loaded model's files to other workers on this HTTP port, 0 for a free one, -1 not at all; needs the peer token [EMBER_PEER_PORT]");
ABSL_FLAG(std::string, peers, "", "Workers to fetch weight ranges from while loading: HOST:PORT or dns:NAME:PORT (every address of NAME), comma-separated; needs the peer token [EMBER_PEERS]");
ABSL_FLAG(std::string, peer_token_file, "", "File holding the token peers share (else the EMBER_PEER_TOKEN variable) [EMBER_PEER_TOKEN_FILE]");

namespace {

constexpr char kUsage[] =
    "ember-worker --model SOURCE [flags]\n\n"
    "Serves ember.v1.Inference (streaming generation, tokenize, model info, abort), the\n"
    "standard grpc.health.v1.Health and server reflection over gRPC (h2c), and Prometheus\n"
    "metrics on HTTP /metrics. Every flag has the environment variable shown in brackets;\n"
    "a flag given on the command line wins. Logs are JSON lines on stderr.\n"
    EMBER_S3_CREDENTIALS_USAGE "\n"
    "Exit status: 0 after a drain (SIGTERM/SIGINT); 1 when the model failed to load or a\n"
    "port could not be opened; 2 for bad usage.";

const std::pair<const char*, const char*> kEnvFlags[] = {
    {"model", "EMBER_MODEL"},
    {"grpc_port", "EMBER_GRPC_PORT"},
    {"metrics_port", "EMBER_METRICS_PORT"},
    {"listen_address", "EMBER_LISTEN_ADDRESS"},
    {"max_batch", "EMBER_MAX_BATCH"},
    {"max_queue", "EMBER_MAX_QUEUE"},
    {"max_step_tokens", "EMBER_MAX_STEP_TOKENS"},
    {"kv_memory_fraction", "EMBER_KV_MEMORY_FRACTION"},
    {"kv_blocks", "EMBER_KV_BLOCKS"},
    {"drain_timeout_s", "EMBER_DRAIN_TIMEOUT_S"},
    {"cache_dir", "EMBER_CACHE_DIR"},
    {"backend", "EMBER_BACKEND"},
    {"threads", "EMBER_THREADS"},
    {"compute_precision", "EMBER_COMPUTE_PRECISION"},
    {"log_level", "EMBER_LOG_LEVEL"},
    {"no_sign_request", "EMBER_NO_SIGN_REQUEST"},
    {"peer_port", "EMBER_PEER_PORT"},
    {"peers", "EMBER_PEERS"},
    {"peer_token_file", "EMBER_PEER_TOKEN_FILE"},
};

int Usage(const std::string& message) {
  std::fprintf(stderr, "ember-worker: %s (see --help)\n", message.c_str());
  return 2;
}

// Environment variables set the flags before the command line is parsed, so a flag given
// there wins. Knative's PORT comes first so that EMBER_GRPC_PORT overrides it.
bool ApplyEnvironment(std::string* error) {
  auto apply = [error](const char* flag_name, const char* env) {
    const char* value = std::getenv(env);
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(flag_name);
    if (value == nullptr || flag == nullptr) return true;
    std::string parse_error;
    if (!flag->ParseFrom(value, &parse_error)) {
      *error = absl::StrCat(env, "='", value, "': ", parse_error);
      return false;
    }
    return true;
  };
  if (!apply("grpc_port", "PORT")) return false;
  for (const auto& [flag_name, env] : kEnvFlags) {
    if (!apply(flag_name, env)) return false;
  }
  return true;
}

// protobuf's own log lines (e.g. "String field ... contains invalid UTF-8" for a request the
// service then refuses) go into the JSON log: client mistakes at debug level, the rest as
// warnings.
void ProtobufLog(google::protobuf::LogLevel level, const char* file, int line,
                 const std::string& message) {
  const bool client_mistake = message.find("invalid UTF-8") != std::string::npos;
  ember::Log(level <= google::protobuf::LOGLEVEL_WARNING || client_mistake ? ember::LogLevel::kDebug
                                                                           : ember::LogLevel::kWarning,
             "protobuf", message, {{"file", file}, {"line", line}});
}

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  // The timeline starts when the kernel started the process: loading the shared libraries
  // before main() is part of the cold start.
  const double before_main_s = ember::SecondsSinceProcessStart();
  const auto process_start =
      std::chrono::steady_clock::now() -
      std::chrono::duration_cast<std::chrono::steady_clock::duration>(
          std::chrono::duration<double>(before_main_s));
  if (std::string error; !ApplyEnvironment(&error)) return Usage(error);
  const std::vector<std::string> args = ember::ParseCli(argc, argv, kUsage, "ember_worker_main");
  if (args.size() != 1) return Usage("unexpected positional argument");
  const std::optional<ember::LogLevel> level = ember::ParseLogLevel(absl::GetFlag(FLAGS_log_level));
  if (!level.has_value()) return Usage("--log_level must be debug, info, warning, error or off");
  ember::SetLogLevel(*level);
  ember::loader::SetS3Anonymous(absl::GetFlag(FLAGS_no_sign_request));

  ember::worker::ServingOptions serving;
  serving.source = absl::GetFlag(FLAGS_model);
  if (serving.source.empty()) return Usage("--model (or EMBER_MODEL) is required");
  serving.backend = absl::GetFlag(FLAGS_backend);
  serving.max_batch = absl::GetFlag(FLAGS_max_batch);
  serving.max_queue = absl::GetFlag(FLAGS_max_queue);
  serving.max_step_tokens = absl::GetFlag(FLAGS_max_step_tokens);
  serving.kv_memory_fraction = absl::GetFlag(FLAGS_kv_memory_fraction);
  serving.kv_blocks = absl::GetFlag(FLAGS_kv_blocks);
  serving.cache_dir = absl::GetFlag(FLAGS_cache_dir);
  const double drain_timeout_s = absl::GetFlag(FLAGS_drain_timeout_s);
  if (serving.max_batch < 1) return Usage("--max_batch must be at least 1");
  if (serving.max_queue < 0) return Usage("--max_queue must be >= 0");
  if (serving.max_step_tokens < 1) return Usage("--max_step_tokens must be at least 1");
  if (!(serving.kv_memory_fraction > 0 && serving.kv_memory_fraction <= 1)) {
    return Usage("--kv_memory_fraction must be in (0, 1]");
  }
  if (!(drain_timeout_s >= 0)) return Usage("--drain_timeout_s must be >= 0");
  if (absl::Status s = ember::kernels::cpu::Configure(absl::GetFlag(FLAGS_threads),
                                                       absl::GetFlag(FLAGS_compute_precision));
      !s.ok()) {
    return Usage(std::string(s.message()));
  }
  const int grpc_port = absl::GetFlag(FLAGS_grpc_port);
  const int metrics_port = absl::GetFlag(FLAGS_metrics_port);
  if (grpc_port < 0 || grpc_port > 65535) return Usage("--grpc_port must be in [0, 65535]");
  if (metrics_port < -1 || metrics_port > 65535) return Usage("--metrics_port must be in [-1, 65535]");
  const int peer_port = absl::GetFlag(FLAGS_peer_port);
  if (peer_port < -1 || peer_port > 65535) return Usage("--peer_port must be in [-1, 65535]");
  {
    auto peers = ember::loader::ParsePeerList(absl::GetFlag(FLAGS_peers));
    if (!peers.ok()) return Usage(std::string(peers.status().message()));
    serving.peers = *std::move(peers);
  }
  serving.serve_to_peers = peer_port >= 0;
  if (serving.serve_to_peers || !serving.peers.empty()) {
    auto token = ember::loader::ReadPeerToken(absl::GetFlag(FLAGS_peer_token_file));
    if (!token.ok()) return Usage(std::string(token.status().message()));
    serving.peer_token = *std::move(token);
  }

  // SIGTERM and SIGINT are taken by one thread with sigwait; every other thread inherits
  // the blocked mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  google::protobuf::SetLogHandler(&ProtobufLog);
  ember::worker::Metrics metrics;
  std::unique_ptr<ember::worker::MetricsServer> metrics_server;
  if (metrics_port >= 0) {
    auto started = ember::worker::MetricsServer::Start(&metrics, metrics_port);
    if (!started.ok()) {
      ember::Log(ember::LogLevel::kError, "worker", started.status().message());
      return 1;
    }
    metrics_server = std::move(*started);
  }

  std::unique_ptr<ember::worker::PeerServer> peer_server;
  if (serving.serve_to_peers) {
    auto started = ember::worker::PeerServer::Start(peer_port, serving.peer_token);
    if (!started.ok()) {
      ember::Log(ember::LogLevel::kError, "worker", started.status().message());
      return 1;
    }
    peer_server = std::move(*started);
  }

  // The gRPC server opens first; health says NOT_SERVING until the model is ready.
  ember::worker::InferenceService service(&metrics);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int bound_port = 0;
  builder.AddListeningPort(absl::StrCat(absl::GetFlag(FLAGS_listen_address), ":", grpc_port),
                           grpc::InsecureServerCredentials(), &bound_port);
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(64 << 20);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || bound_port == 0) {
    ember::Log(ember::LogLevel::kError, "worker",
               absl::StrCat("cannot listen on ", absl::GetFlag(FLAGS_listen_address), ":", grpc_port,
                            " (in use, or not permitted)"));
    return 1;
  }
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  const char* kServiceName = "ember.v1.Inference";
  health->SetServingStatus(false);
  health->SetServingStatus(kServiceName, false);
  ember::LogInfo("worker", "listening",
                 {{"grpc_port", bound_port},
                  {"metrics_port", metrics_server ? metrics_server->port() : -1},
                  {"peer_port", peer_server ? peer_server->port() : -1},
                  {"model", serving.source},
                  {"t_s", SecondsSince(process_start)}});

  // Load in the background; the port is already answering.
  std::unique_ptr<ember::worker::ServingModel> model;
  std::atomic<bool> draining{false};
  int exit_code = 0;  // written by the loading thread, read after it is joined
  serving.process_start = process_start;
  ember::worker::ColdStartRecord coldstart(&metrics, before_main_s, SecondsSince(process_start));
  serving.on_first_token = [&](std::chrono::steady_clock::time_point arrival,
                               std::chrono::steady_clock::time_point first) {
    auto at = [&](std::chrono::steady_clock::time_point t) {
      return std::chrono::duration<double>(t - process_start).count();
    };
    coldstart.FirstToken(at(arrival), at(first));
  };
  double last_logged = -1;
  serving.on_progress = [&](const ember::loader::LoadProgress& p) {
    if (p.seconds - last_logged < 2 && p.bytes_done < p.bytes_total) return;
    last_logged = p.seconds;
    ember::LogInfo("worker", "loading",
                   {{"bytes_done", p.bytes_done}, {"bytes_total", p.bytes_total}, {"t_s", SecondsSince(process_start)}});
  };
  serving.on_engine_ready = [&](ember::worker::ServingModel* early) { service.SetEarlyModel(early); };
  std::thread loader([&] {
    const absl::Status loaded = ember::worker::ServingModel::Load(serving, &metrics, &model);
    if (!loaded.ok()) {
      ember::Log(ember::LogLevel::kError, "worker", "the model failed to load",
                 {{"error", std::string(loaded.message())}});
      service.SetFailed(loaded);
      exit_code = 1;
      kill(getpid(), SIGTERM);  // exit through the drain path (what started fails at once)
      return;
    }
    const double serving_s = SecondsSince(process_start);
    model->mutable_info().mutable_timings()->set_serving_s(serving_s);
    coldstart.Serving(*model, serving_s);
    service.SetModel(model.get());
    if (peer_server) peer_server->SetModel(model->served());
    if (!draining.load()) {  // a SIGTERM during the load keeps it NOT_SERVING
      health->SetServingStatus(true);
      health->SetServingStatus(kServiceName, true);
    }
    ember::LogInfo("worker", "serving",
                   {{"t_s", serving_s},
                    {"backend", model->info().backend()},
                    {"cpu_threads", model->info().backend() == "cpu" ? ember::kernels::cpu::Threads() : 0},
                    {"compute_precision", model->info().backend() == "cpu"
                                              ? ember::kernels::cpu::ComputePrecisionDescription()
                                              : std::string("n/a")},
                    {"weight_bytes", model->info().weight_bytes()},
                    {"bytes_from_peers", model->bytes_from_peers()},
                    {"kv_cache_tokens", model->info().kv_cache_tokens()},
                    {"context_length", model->info().context_length()}});
  });

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  draining.store(true);
  const auto drain_start = std::chrono::steady_clock::now();
  ember::LogInfo("worker", "draining", {{"signal", signal_number}, {"drain_timeout_s", drain_timeout_s}});
  health->SetServingStatus(kServiceName, false);
  health->SetServingStatus(false);
  loader.join();  // a drain during the load waits for it to settle
  health->SetServingStatus(kServiceName, false);  // in case the load ended as the signal came
  health->SetServingStatus(false);
  bool drained = true;
  if (model != nullptr && model->started()) {
    ember::worker::Scheduler& scheduler = model->scheduler();
    scheduler.StopAdmitting();
    drained = scheduler.WaitIdle(absl::Seconds(drain_timeout_s - SecondsSince(drain_start)));
    if (!drained) {
      ember::LogWarning("worker", "drain timeout: aborting the requests still running");
      scheduler.AbortAll(ember::worker::FinishReason::kAborted);
      scheduler.WaitIdle(absl::Seconds(5));
    }
  }
  // Gives streams a moment to send their last message, then closes every call.
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  health->Shutdown();
  peer_server.reset();
  model.reset();
  ember::LogInfo("worker", "stopped", {{"drained", drained}, {"drain_s", SecondsSince(drain_start)}});
  return exit_code;
}

#include "worker/serve/metrics.h"

#include <microhttpd.h>

#include <cmath>
#include <cstring>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace ember::worker {
namespace {

std::string Number(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  return absl::StrFormat("%.17g", v);
}

void Header(std::string* out, const char* name, const char* type, const char* help) {
  absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
}

// Latency buckets from 1 ms to 2 min; batch sizes by powers of two.
std::vector<double> LatencyBounds() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
}

}  // namespace

void Histogram::Observe(double v) {
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += v;
  ++count_;
}

void Histogram::Render(const std::string& name, std::string* out) const {
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    absl::StrAppend(out, name, "_bucket{le=\"", Number(bounds_[i]), "\"} ", cumulative, "\n");
  }
  absl::StrAppend(out, name, "_bucket{le=\"+Inf\"} ", count_, "\n", name, "_sum ", Number(sum_),
                  "\n", name, "_count ", count_, "\n");
}

Metrics::Metrics()
    : ttft_(LatencyBounds()),
      itl_(LatencyBounds()),
      batch_({1, 2, 4, 8, 16, 32, 64, 128, 256}) {
  for (const char* outcome : kOutcomes) requests_[outcome] = 0;
}

void Metrics::RequestFinished(const std::string& outcome) {
  absl::MutexLock lock(&mu_);
  ++requests_[outcome];
}
void Metrics::SetLoad(int running, int queued) {
  absl::MutexLock lock(&mu_);
  running_ = running;
  queued_ = queued;
}
void Metrics::SetKvBlocks(int64_t used, int64_t free) {
  absl::MutexLock lock(&mu_);
  kv_used_ = used;
  kv_free_ = free;
}
void Metrics::Step(int batch_size, int tokens_generated) {
  absl::MutexLock lock(&mu_);
  ++steps_;
  batch_.Observe(batch_size);
  tokens_generated_ += tokens_generated;
}
void Metrics::PromptTokens(int n) {
  absl::MutexLock lock(&mu_);
  prompt_tokens_ += n;
}
void Metrics::TimeToFirstToken(double seconds) {
  absl::MutexLock lock(&mu_);
  ttft_.Observe(seconds);
}
void Metrics::InterTokenLatency(double seconds) {
  absl::MutexLock lock(&mu_);
  itl_.Observe(seconds);
}
void Metrics::ColdStartPhase(const std::string& phase, double seconds) {
  absl::MutexLock lock(&mu_);
  coldstart_[phase] = seconds;
}

void Metrics::LoadBytes(uint64_t from_peers, uint64_t from_store) {
  absl::MutexLock lock(&mu_);
  load_bytes_["peer"] = from_peers;
  load_bytes_["store"] = from_store;
}

int64_t Metrics::requests(const std::string& outcome) const {
  absl::MutexLock lock(&mu_);
  auto it = requests_.find(outcome);
  return it == requests_.end() ? 0 : it->second;
}

std::string Metrics::Render() const {
  absl::MutexLock lock(&mu_);
  std::string out;
  Header(&out, "ember_requests_total", "counter",
         "Generate requests by how they ended (rejected: refused at admission).");
  for (const auto& [outcome, n] : requests_) {
    absl::StrAppend(&out, "ember_requests_total{outcome=\"", outcome, "\"} ", n, "\n");
  }
  const std::tuple<const char*, const char*, const char*, int64_t> scalars[] = {
      {"ember_requests_in_flight", "gauge", "Requests admitted and generating.", running_},
      {"ember_queue_depth", "gauge", "Requests waiting for admission.", queued_},
      {"ember_generated_tokens_total", "counter", "Tokens generated.", tokens_generated_},
      {"ember_prompt_tokens_total", "counter", "Prompt tokens of admitted requests.", prompt_tokens_},
      {"ember_steps_total", "counter", "Forward steps run.", steps_},
      {"ember_kv_blocks_used", "gauge", "KV cache blocks held by sequences.", kv_used_},
      {"ember_kv_blocks_free", "gauge", "KV cache blocks free.", kv_free_},
  };
  for (const auto& [name, type, help, value] : scalars) {
    Header(&out, name, type, help);
    absl::StrAppend(&out, name, " ", value, "\n");
  }
  Header(&out, "ember_time_to_first_token_seconds", "histogram",
         "From a request's arrival to its first token.");
  ttft_.Render("ember_time_to_first_token_seconds", &out);
  Header(&out, "ember_inter_token_latency_seconds", "histogram",
         "Between consecutive tokens of one request.");
  itl_.Render("ember_inter_token_latency_seconds", &out);
  Header(&out, "ember_batch_size", "histogram", "Sequences in each forward step.");
  batch_.Render("ember_batch_size", &out);
  Header(&out, "ember_coldstart_phase_seconds", "gauge",
         "Seconds after process start at which each cold-start phase ended.");
  for (const auto& [phase, seconds] : coldstart_) {
    absl::StrAppend(&out, "ember_coldstart_phase_seconds{phase=\"", phase, "\"} ", Number(seconds),
                    "\n");
  }
  if (!load_bytes_.empty()) {
    Header(&out, "ember_load_bytes", "gauge",
           "Weight bytes the load fetched, by source (peer: another worker; store: the origin).");
    for (const auto& [source, bytes] : load_bytes_) {
      absl::StrAppend(&out, "ember_load_bytes{source=\"", source, "\"} ", bytes, "\n");
    }
  }
  return out;
}

struct MetricsServer::Daemon {
  MHD_Daemon* daemon = nullptr;
  const Metrics* metrics = nullptr;
  ~Daemon() {
    if (daemon != nullptr) MHD_stop_daemon(daemon);
  }
};

namespace {

MHD_Result Answer(void* cls, MHD_Connection* connection, const char* url, const char* method,
                  const char* /*version*/, const char* /*upload_data*/, size_t* upload_size,
                  void** /*state*/) {
  const Metrics* metrics = static_cast<const Metrics*>(cls);
  std::string body;
  unsigned status = MHD_HTTP_OK;
  const char* type = "text/plain; version=0.0.4; charset=utf-8";
  if (std::strcmp(method, "GET") != 0 && std::strcmp(method, "HEAD") != 0) {
    status = MHD_HTTP_METHOD_NOT_ALLOWED;
    body = "only GET\n";
  } else if (std::strcmp(url, "/metrics") == 0) {
    body = metrics->Render();
  } else if (std::strcmp(url, "/healthz") == 0) {
    body = "ok\n";
  } else {
    status = MHD_HTTP_NOT_FOUND;
    body = "not found: try /metrics\n";
  }
  *upload_size = 0;
  MHD_Response* response =
      MHD_create_response_from_buffer(body.size(), body.data(), MHD_RESPMEM_MUST_COPY);
  MHD_add_response_header(response, "Content-Type", type);
  const MHD_Result result = MHD_queue_response(connection, status, response);
  MHD_destroy_response(response);
  return result;
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const Metrics* metrics,
                                                                    int port) {
  auto server = std::unique_ptr<MetricsServer>(new MetricsServer());
  server->daemon_ = std::make_unique<Daemon>();
  server->daemon_->metrics = metrics;
  server->daemon_->daemon = MHD_start_daemon(
      MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, static_cast<uint16_t>(port), nullptr,
      nullptr, &Answer, const_cast<Metrics*>(metrics), MHD_OPTION_CONNECTION_LIMIT, 64u,
      MHD_OPTION_CONNECTION_TIMEOUT, 10u, MHD_OPTION_END);
  if (server->daemon_->daemon == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("metrics: cannot listen on port ", port, " (in use, or not permitted)"));
  }
  const MHD_DaemonInfo* info =
      MHD_get_daemon_info(server->daemon_->daemon, MHD_DAEMON_INFO_BIND_PORT);
  server->port_ = info != nullptr ? info->port : port;
  return server;
}

MetricsServer::~MetricsServer() = default;

}  // namespace ember::worker

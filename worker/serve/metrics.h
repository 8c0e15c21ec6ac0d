// The worker's Prometheus metrics and the HTTP endpoint that serves them.
//
// The text exposition format is written here: Debian packages no Prometheus client library
// for C++ (prometheus-cpp is not in the archive), and the handful of counters, gauges and
// histograms the worker keeps need nothing more than a mutex and a formatter. HTTP is
// libmicrohttpd's.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace ember::worker {

// How a request ended, the label of ember_requests_total.
inline constexpr const char* kOutcomes[] = {"ok", "cancelled", "deadline", "aborted", "error",
                                            "rejected"};

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1) {}
  void Observe(double v);
  void Render(const std::string& name, std::string* out) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket, not cumulative; the last is +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

class Metrics {
 public:
  Metrics();

  void RequestFinished(const std::string& outcome);
  void SetLoad(int running, int queued);
  void SetKvBlocks(int64_t used, int64_t free);
  void Step(int batch_size, int tokens_generated);
  void PromptTokens(int n);
  void TimeToFirstToken(double seconds);
  void InterTokenLatency(double seconds);
  void ColdStartPhase(const std::string& phase, double seconds);
  // Where the model's weight bytes came from at the load.
  void LoadBytes(uint64_t from_peers, uint64_t from_store);

  // The Prometheus text exposition (version 0.0.4).
  std::string Render() const;

  // Test and log access.
  int64_t requests(const std::string& outcome) const;

 private:
  mutable absl::Mutex mu_;
  std::map<std::string, int64_t> requests_ ABSL_GUARDED_BY(mu_);
  int running_ ABSL_GUARDED_BY(mu_) = 0;
  int queued_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t kv_used_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t kv_free_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t tokens_generated_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t prompt_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t steps_ ABSL_GUARDED_BY(mu_) = 0;
  Histogram ttft_ ABSL_GUARDED_BY(mu_);
  Histogram itl_ ABSL_GUARDED_BY(mu_);
  Histogram batch_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, double> coldstart_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, uint64_t> load_bytes_ ABSL_GUARDED_BY(mu_);
};

// GET /metrics (and /healthz, a plain liveness check for HTTP-only tooling) on a port.
class MetricsServer {
 public:
  // Listens on `port` (0: a free one) on all interfaces.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const Metrics* metrics, int port);
  ~MetricsServer();
  int port() const { return port_; }

 private:
  MetricsServer() = default;
  struct Daemon;
  std::unique_ptr<Daemon> daemon_;
  int port_ = 0;
};

}  // namespace ember::worker

// The worker's cold-start record: every phase from process start to the first token of the
// first request, as [start, end] seconds after the process started, logged once as one line
// ("coldstart", which tools/coldstart-report draws) and exported as metrics.
#pragma once

#include <optional>
#include <utility>

#include "absl/synchronization/mutex.h"
#include "nlohmann/json.hpp"
#include "worker/serve/metrics.h"
#include "worker/serve/serving_model.h"

namespace ember::worker {

class ColdStartRecord {
 public:
  // `exec_s`: time before main(); `listening_s`: when the gRPC port opened.
  ColdStartRecord(Metrics* metrics, double exec_s, double listening_s);

  // The model serves from `serving_s` on: its load phases, bytes and backend join the record.
  void Serving(const ServingModel& model, double serving_s);
  // A request's arrival and first token (seconds after process start). The first call
  // completes the record, logged once Serving has been called too (a request run while the
  // weights arrived can have its first token just before); later calls do nothing.
  void FirstToken(double arrival_s, double first_token_s);

 private:
  void Log() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Metrics* metrics_;
  absl::Mutex mu_;
  nlohmann::json record_ ABSL_GUARDED_BY(mu_);
  bool serving_ ABSL_GUARDED_BY(mu_) = false;
  bool logged_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<std::pair<double, double>> first_token_ ABSL_GUARDED_BY(mu_);  // arrival, token
};

}  // namespace ember::worker

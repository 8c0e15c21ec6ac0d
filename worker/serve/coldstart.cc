#include "worker/serve/coldstart.h"

#include "loader/log.h"

namespace ember::worker {

ColdStartRecord::ColdStartRecord(Metrics* metrics, double exec_s, double listening_s)
    : metrics_(metrics), record_({{"phases", nlohmann::json::array()}}) {
  record_["phases"].push_back({{"name", "exec"}, {"start_s", 0.0}, {"end_s", exec_s}});
  record_["phases"].push_back({{"name", "listening"}, {"start_s", exec_s}, {"end_s", listening_s}});
  metrics_->ColdStartPhase("exec", exec_s);
  metrics_->ColdStartPhase("listening", listening_s);
}

void ColdStartRecord::Serving(const ServingModel& model, double serving_s) {
  absl::MutexLock lock(&mu_);
  const v1::ModelInfo& info = model.info();
  for (const Phase& p : model.phases()) {
    record_["phases"].push_back({{"name", p.name}, {"start_s", p.start_s}, {"end_s", p.end_s}});
    metrics_->ColdStartPhase(p.name, p.end_s);
  }
  metrics_->ColdStartPhase("first_byte", info.timings().first_byte_s());
  metrics_->ColdStartPhase("serving", serving_s);
  record_["first_byte_s"] = info.timings().first_byte_s();
  record_["serving_s"] = serving_s;
  record_["cache"] = model.cache_outcome();
  record_["weight_bytes"] = info.weight_bytes();
  const uint64_t from_peers = model.bytes_from_peers();
  const uint64_t from_store = info.weight_bytes() - from_peers;
  record_["bytes_from_peers"] = from_peers;
  record_["bytes_from_store"] = from_store;
  metrics_->LoadBytes(from_peers, from_store);
  record_["backend"] = info.backend();
  record_["model"] = info.source();
  serving_ = true;
  if (first_token_) Log();  // the first request's token came while the load was finishing
}

void ColdStartRecord::FirstToken(double arrival_s, double first_token_s) {
  absl::MutexLock lock(&mu_);
  if (logged_ || first_token_) return;
  first_token_ = {arrival_s, first_token_s};
  if (serving_) Log();
}

void ColdStartRecord::Log() {
  logged_ = true;
  const auto [arrival_s, first_token_s] = *first_token_;
  record_["phases"].push_back({{"name", "first_request"}, {"start_s", arrival_s}, {"end_s", first_token_s}});
  record_["first_token_s"] = first_token_s;
  metrics_->ColdStartPhase("first_token", first_token_s);
  LogInfo("worker", "coldstart", record_);
}

}  // namespace ember::worker

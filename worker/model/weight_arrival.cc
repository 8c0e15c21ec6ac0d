#include "worker/model/weight_arrival.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"

namespace ember::worker {

int WeightArrival::StageOf(absl::string_view name) {
  if (absl::StrContains(name, "embed_tokens")) return 0;
  const size_t at = name.find("layers.");
  if (at == absl::string_view::npos) return kHead;
  absl::string_view rest = name.substr(at + 7);
  int layer = 0;
  if (!absl::SimpleAtoi(rest.substr(0, rest.find('.')), &layer) || layer < 0 || layer + 1 >= kHead) {
    return kHead;
  }
  return layer + 1;
}

WeightArrival::WeightArrival(const std::map<std::string, loader::WeightView>& weights) {
  absl::MutexLock lock(&mu_);
  for (const auto& [name, view] : weights) {
    const int stage = StageOf(name);
    stage_of_[name] = stage;
    ++missing_[stage];
  }
}

void WeightArrival::Landed(const std::string& name) {
  auto it = stage_of_.find(name);
  if (it == stage_of_.end()) return;
  absl::MutexLock lock(&mu_);
  --missing_[it->second];
}

void WeightArrival::Finish(const absl::Status& load) {
  absl::MutexLock lock(&mu_);
  finished_ = true;
  if (error_.ok()) error_ = load;
}

void WeightArrival::Abandon(const absl::Status& error) {
  absl::MutexLock lock(&mu_);
  if (error_.ok()) error_ = error;
  mu_.Await(absl::Condition(+[](bool* in_use) { return !*in_use; }, &in_use_));
}

absl::Status WeightArrival::Await(int stage) {
  absl::MutexLock lock(&mu_);
  auto ready = [this, stage]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!error_.ok()) return true;
    if (stage == kHead) return finished_;
    auto it = missing_.find(stage);
    return it == missing_.end() || it->second == 0;
  };
  mu_.Await(absl::Condition(&ready));
  if (!error_.ok()) {
    in_use_ = false;
    return error_;
  }
  in_use_ = true;
  return absl::OkStatus();
}

void WeightArrival::Release() {
  absl::MutexLock lock(&mu_);
  in_use_ = false;
}

bool WeightArrival::complete() {
  absl::MutexLock lock(&mu_);
  return finished_ && error_.ok();
}

}  // namespace ember::worker

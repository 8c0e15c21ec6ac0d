// Computing while the weights arrive: which tensors each stage of the forward pass reads,
// which of them have landed, and a wait for a stage's. The loader announces tensors as they
// land (LoadOptions::on_tensor) and fetches them in the order the forward pass reads them
// (StageOf as LoadOptions::tensor_rank); the engine waits at each stage
// (Engine::SetWeightArrival), so a request that arrives during the load runs layer by layer
// behind the stream and its first token comes right after the last byte.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "loader/model_loader.h"

namespace ember::worker {

class WeightArrival {
 public:
  // Stages: 0 the embedding, l + 1 decoder layer l, kHead the final norm and the LM head
  // (and any tensor of no layer).
  static constexpr int kHead = 1 << 20;
  // The stage that reads the tensor named `name` ("model.layers.7.mlp.up_proj.weight": 8).
  static int StageOf(absl::string_view name);

  explicit WeightArrival(const std::map<std::string, loader::WeightView>& weights);
  WeightArrival(const WeightArrival&) = delete;
  WeightArrival& operator=(const WeightArrival&) = delete;

  // The loader put the tensor in place (each tensor once).
  void Landed(const std::string& name);
  // The load ended: OK once every byte arrived and was checked, else the error (steps waiting
  // and every later wait fail with it).
  void Finish(const absl::Status& load);
  // The load failed and its memory is about to be freed: waits fail from now on, and this
  // returns once no step is between a successful Await and its Release.
  void Abandon(const absl::Status& error);

  // Blocks until every tensor of `stage` is in place; for kHead, until the load finished
  // OK (nothing reaches a client before every byte is checked). The load's error otherwise.
  absl::Status Await(int stage);
  // The step that awaited is done with the weights (the end of a forward pass).
  void Release();
  // Whether the load finished OK: waits return at once from then on.
  bool complete();

 private:
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, int> stage_of_;      // every tensor's stage
  absl::flat_hash_map<int, int> missing_ ABSL_GUARDED_BY(mu_);  // stage -> tensors not landed
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status error_ ABSL_GUARDED_BY(mu_);
  bool in_use_ ABSL_GUARDED_BY(mu_) = false;  // a step is between Await and Release
};

}  // namespace ember::worker

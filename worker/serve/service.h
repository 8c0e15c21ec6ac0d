// ember.v1.Inference over gRPC's callback API. The service exists before the model: the
// port opens at start-up, Generate calls that arrive while the model loads wait for it
// (within their deadline), and the other calls answer UNAVAILABLE until it is ready.
//
// Every method is registered raw (ByteBuffer in and out) and parses its request itself:
// gRPC's generated callback handlers answer a body that does not parse with UNIMPLEMENTED
// and no message, where a client must learn that its request is invalid.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "ember/v1/inference.grpc.pb.h"
#include "worker/serve/metrics.h"
#include "worker/serve/serving_model.h"

namespace ember::worker {

class GenerateCall;  // one Generate stream (service.cc)

using RawInferenceService = v1::Inference::WithRawCallbackMethod_Generate<
    v1::Inference::WithRawCallbackMethod_Tokenize<v1::Inference::WithRawCallbackMethod_GetModelInfo<
        v1::Inference::WithRawCallbackMethod_Abort<v1::Inference::Service>>>>;

class InferenceService final : public RawInferenceService {
 public:
  explicit InferenceService(Metrics* metrics) : metrics_(metrics) {}

  // The model is ready: waiting Generate calls are submitted now.
  void SetModel(ServingModel* model);
  // The model's engine runs, its weights possibly still loading: Generate calls (those
  // waiting and new ones) go to it from now on; the other methods still wait for SetModel.
  void SetEarlyModel(ServingModel* model);
  // The model failed to load: waiting and later calls get UNAVAILABLE with `status`.
  void SetFailed(const absl::Status& status);

  grpc::ServerWriteReactor<grpc::ByteBuffer>* Generate(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Abort(grpc::CallbackServerContext* context,
                                  const grpc::ByteBuffer* request,
                                  grpc::ByteBuffer* response) override;

 private:
  // The unary methods on parsed messages.
  grpc::Status Tokenize(const v1::TokenizeRequest& request, v1::TokenizeResponse* response);
  grpc::Status GetModelInfo(const v1::GetModelInfoRequest& request, v1::ModelInfo* response);
  grpc::Status Abort(const v1::AbortRequest& request, v1::AbortResponse* response);
  // Parses the raw request, runs `method` and serializes its response.
  template <typename Request, typename Response>
  grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* context,
                                  const grpc::ByteBuffer* raw_request, grpc::ByteBuffer* raw_response,
                                  grpc::Status (InferenceService::*method)(const Request&, Response*));

  // Settles the model's state once: ready (`model`) or failed; runs the waiting calls.
  void Settle(ServingModel* model, const absl::Status& failed);
  // Validates and queues one Generate call, or ends it with the load's failure.
  void Submit(const std::shared_ptr<GenerateCall>& call, const v1::GenerateRequest& request,
              Clock::time_point arrival, ServingModel* model, const absl::Status& failed);
  // The ready model, or an UNAVAILABLE status saying why there is none.
  absl::StatusOr<ServingModel*> Ready();

  Metrics* metrics_;
  absl::Mutex mu_;
  ServingModel* model_ ABSL_GUARDED_BY(mu_) = nullptr;
  ServingModel* early_ ABSL_GUARDED_BY(mu_) = nullptr;  // SetEarlyModel's
  absl::Status failed_ ABSL_GUARDED_BY(mu_);
  std::vector<std::function<void(ServingModel*, const absl::Status&)>> waiting_ ABSL_GUARDED_BY(mu_);
};

// absl::Status -> grpc::Status, same code and message.
grpc::Status ToGrpc(const absl::Status& status);

}  // namespace ember::worker

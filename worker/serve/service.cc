#include "worker/serve/service.h"

#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "ember/v1/request_reader.h"
#include "worker/serve/request_builder.h"

namespace ember::worker {
namespace {

v1::FinishReason ToProto(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength: return v1::FINISH_REASON_LENGTH;
    case FinishReason::kStop: return v1::FINISH_REASON_STOP;
    case FinishReason::kStopSequence: return v1::FINISH_REASON_STOP_SEQUENCE;
    case FinishReason::kContextLength: return v1::FINISH_REASON_CONTEXT_LENGTH;
    case FinishReason::kDeadline: return v1::FINISH_REASON_DEADLINE;
    case FinishReason::kAborted:
    case FinishReason::kCancelled:
    case FinishReason::kError: return v1::FINISH_REASON_ABORTED;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

void Append(const TokenChunk& chunk, v1::GenerateResponse* out) {
  for (int32_t id : chunk.ids) out->add_token_ids(id);
  out->mutable_text()->append(chunk.text);
  for (const TokenLogprobs& lp : chunk.logprobs) {
    v1::Logprobs* entry = out->add_logprobs();
    entry->mutable_chosen()->set_token_id(lp.token);
    entry->mutable_chosen()->set_logprob(lp.logprob);
    for (const auto& [id, logprob] : lp.top) {
      v1::TokenLogprob* top = entry->add_top();
      top->set_token_id(id);
      top->set_logprob(logprob);
    }
  }
}

}  // namespace

// One Generate call. The scheduler delivers tokens from its thread into `pending_`; at
// most one write is in flight, and tokens that arrive meanwhile are merged into the next
// response, so a slow reader costs one growing message, never a growing queue. The
// reactor frees itself in OnDone; the scheduler may hold this object (as the request's
// sink) a little longer, so it is shared and forgets the call on OnDone.
class GenerateCall final : public grpc::ServerWriteReactor<grpc::ByteBuffer>,
                           public RequestSink {
 public:
  GenerateCall(grpc::CallbackServerContext* context, Metrics* metrics)
      : context_(context), metrics_(metrics) {}

  void Start(std::shared_ptr<GenerateCall> self) { self_ = std::move(self); }

  void SetRequestId(const std::string& id) {
    absl::MutexLock lock(&mu_);
    request_id_ = id;
    pending_.set_request_id(id);
  }

  // Before submission: the call's deadline, for the scheduler.
  Clock::time_point Deadline() const {
    const auto deadline = context_->deadline();
    if (deadline == std::chrono::system_clock::time_point::max()) return Clock::time_point::max();
    return Clock::now() + std::chrono::duration_cast<Clock::duration>(
                              deadline - std::chrono::system_clock::now());
  }
  // gRPC does not say why a call was cancelled. Its deadline timer may fire a little before
  // the deadline as this clock reads it, so a cancel in the last 100 ms counts as the deadline.
  bool DeadlinePassed() const {
    return std::chrono::system_clock::now() + std::chrono::milliseconds(100) >= context_->deadline();
  }

  void OnTokens(TokenChunk chunk) override {
    {
      absl::MutexLock lock(&mu_);
      Append(chunk, &pending_);
      has_pending_ = true;
    }
    Pump();
  }

  void OnFinish(TokenChunk tail, FinishReason reason, const RequestUsage& usage,
                const absl::Status& status) override {
    {
      absl::MutexLock lock(&mu_);
      Append(tail, &pending_);
      pending_.set_finish_reason(ToProto(reason));
      v1::Usage* u = pending_.mutable_usage();
      u->set_prompt_tokens(usage.prompt_tokens);
      u->set_completion_tokens(usage.completion_tokens);
      u->set_time_to_first_token_s(usage.time_to_first_token_s);
      u->set_total_time_s(usage.total_time_s);
      u->set_queue_time_s(usage.queue_time_s);
      has_pending_ = true;
      finished_ = true;
      if (!status.ok()) {
        final_status_ = grpc::Status(grpc::StatusCode::INTERNAL, std::string(status.message()));
      } else if (reason == FinishReason::kDeadline) {
        final_status_ = grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                                     "the deadline expired during generation");
      } else if (reason == FinishReason::kCancelled) {
        final_status_ = grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client");
      }
    }
    Pump();
  }

  // Ends the call with an error before anything was generated.
  void Fail(const grpc::Status& status) {
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      finished_ = true;
      has_pending_ = false;
      final_status_ = status;
    }
    Pump();
  }

  bool finished() {
    absl::MutexLock lock(&mu_);
    return finished_;
  }
  // After a successful Submit: from now on OnCancel goes through the scheduler. True when
  // the client cancelled in between (the caller then aborts the request).
  bool MarkSubmitted(Scheduler* scheduler) {
    absl::MutexLock lock(&mu_);
    submitted_ = true;
    scheduler_ = scheduler;
    return cancelled_;
  }

  void OnWriteDone(bool ok) override {
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (!ok) write_failed_ = true;  // the client went away: finish without more writes
    }
    Pump();
  }

  void OnCancel() override {
    Scheduler* scheduler;
    std::string id;
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      scheduler = submitted_ ? scheduler_ : nullptr;
      id = request_id_;
    }
    const FinishReason reason = DeadlinePassed() ? FinishReason::kDeadline : FinishReason::kCancelled;
    if (scheduler != nullptr) {
      scheduler->Abort(id, reason);  // the scheduler's OnFinish ends the call
    } else {
      metrics_->RequestFinished(reason == FinishReason::kDeadline ? "deadline" : "cancelled");
      Fail(reason == FinishReason::kDeadline
               ? grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "the deadline expired while "
                                                                    "the model was loading")
               : grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client"));
    }
  }

  void OnDone() override {
    {
      absl::MutexLock lock(&mu_);
      done_ = true;
    }
    self_.reset();  // may delete this
  }

 private:
  // Starts the next write, or finishes the call once everything is written. The gRPC
  // calls are made outside the lock: a reaction may run inline.
  void Pump() {
    enum { kNothing, kWrite, kFinish } action = kNothing;
    grpc::Status status;
    {
      absl::MutexLock lock(&mu_);
      if (done_ || finish_called_ || writing_) return;
      if (has_pending_ && !write_failed_) {
        in_flight_ = std::move(pending_);
        pending_.Clear();
        pending_.set_request_id(request_id_);
        has_pending_ = false;
        writing_ = true;
        action = kWrite;
      } else if (finished_) {  // after a failed write, OnFinish still comes (the cancel reaches it)
        finish_called_ = true;
        status = final_status_;
        action = kFinish;
      }
    }
    if (action == kWrite) {
      bool own;
      in_flight_bytes_.Clear();  // the serializer wants an empty buffer
      grpc::SerializationTraits<v1::GenerateResponse>::Serialize(in_flight_, &in_flight_bytes_, &own);
      StartWrite(&in_flight_bytes_);
    }
    if (action == kFinish) Finish(status);
  }

  grpc::CallbackServerContext* context_;
  Metrics* metrics_;
  std::shared_ptr<GenerateCall> self_;  // keeps the reactor alive until OnDone

  absl::Mutex mu_;
  std::string request_id_;
  v1::GenerateResponse pending_;
  v1::GenerateResponse in_flight_;
  grpc::ByteBuffer in_flight_bytes_;  // in_flight_ serialized, alive until OnWriteDone
  bool has_pending_ = false;
  bool writing_ = false;
  bool write_failed_ = false;
  bool finished_ = false;
  bool finish_called_ = false;
  bool cancelled_ = false;
  bool submitted_ = false;
  bool done_ = false;
  Scheduler* scheduler_ = nullptr;
  grpc::Status final_status_;
};

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

void InferenceService::SetModel(ServingModel* model) { Settle(model, absl::OkStatus()); }

void InferenceService::SetEarlyModel(ServingModel* model) {
  std::vector<std::function<void(ServingModel*, const absl::Status&)>> waiting;
  {
    absl::MutexLock lock(&mu_);
    if (model_ != nullptr || !failed_.ok()) return;  // settled already
    early_ = model;
    waiting.swap(waiting_);
  }
  for (auto& fn : waiting) fn(model, absl::OkStatus());
}

void InferenceService::SetFailed(const absl::Status& status) {
  Settle(nullptr, absl::UnavailableError(absl::StrCat("the model failed to load: ", status.message())));
}

void InferenceService::Settle(ServingModel* model, const absl::Status& failed) {
  std::vector<std::function<void(ServingModel*, const absl::Status&)>> waiting;
  {
    absl::MutexLock lock(&mu_);
    model_ = model;
    failed_ = failed;
    waiting.swap(waiting_);
  }
  for (auto& fn : waiting) fn(model, failed);
}

absl::StatusOr<ServingModel*> InferenceService::Ready() {
  absl::MutexLock lock(&mu_);
  if (model_ != nullptr) return model_;
  if (!failed_.ok()) return failed_;
  return absl::UnavailableError("the model is still loading; retry (or call Generate, which waits)");
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* InferenceService::Generate(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw_request) {
  const Clock::time_point arrival = Clock::now();  // usage and TTFT count the wait for the model
  auto call = std::make_shared<GenerateCall>(context, metrics_);
  call->Start(call);
  v1::GenerateRequest parsed;
  if (grpc::Status read = v1::DeserializeRequest(*raw_request, &parsed); !read.ok()) {
    metrics_->RequestFinished("rejected");
    call->Fail(read);
    return call.get();
  }
  const v1::GenerateRequest* request = &parsed;
  call->SetRequestId(request->request_id());
  ServingModel* model;
  absl::Status failed;
  {
    absl::MutexLock lock(&mu_);
    if (model_ == nullptr && failed_.ok() && early_ == nullptr) {
      // The model is still loading: the call waits for it with a copy of the request (the
      // handler's copy dies when this returns), unless the client gives up first.
      std::weak_ptr<GenerateCall> weak = call;
      waiting_.push_back([this, weak, copy = *request, arrival](ServingModel* model,
                                                                const absl::Status& failed) {
        if (std::shared_ptr<GenerateCall> call = weak.lock()) {
          Submit(call, copy, arrival, model, failed);
        }
      });
      return call.get();
    }
    model = model_ != nullptr || !failed_.ok() ? model_ : early_;
    failed = failed_;
  }
  Submit(call, *request, arrival, model, failed);
  return call.get();
}

void InferenceService::Submit(const std::shared_ptr<GenerateCall>& sink,
                              const v1::GenerateRequest& request, Clock::time_point arrival,
                              ServingModel* model, const absl::Status& failed) {
  GenerateCall& call = *sink;
  if (call.finished()) return;  // cancelled or timed out while waiting for the model
  if (model == nullptr) {
    metrics_->RequestFinished("error");
    call.Fail(ToGrpc(failed));
    return;
  }
  auto built = BuildGenerationRequest(request, model->limits());
  if (!built.ok()) {
    metrics_->RequestFinished("rejected");
    call.Fail(ToGrpc(built.status()));
    return;
  }
  call.SetRequestId(built->id);
  built->arrival = arrival;
  built->deadline = call.Deadline();
  built->sink = sink;
  const std::string id = built->id;
  if (absl::Status s = model->scheduler().Submit(std::move(*built)); !s.ok()) {
    call.Fail(ToGrpc(s));
    return;
  }
  if (call.MarkSubmitted(&model->scheduler())) {
    model->scheduler().Abort(id, FinishReason::kCancelled);
  }
}

template <typename Request, typename Response>
grpc::ServerUnaryReactor* InferenceService::Unary(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw_request,
    grpc::ByteBuffer* raw_response,
    grpc::Status (InferenceService::*method)(const Request&, Response*)) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  Request request;
  if (grpc::Status read = v1::DeserializeRequest(*raw_request, &request); !read.ok()) {
    reactor->Finish(read);
    return reactor;
  }
  Response response;
  grpc::Status status = (this->*method)(request, &response);
  if (status.ok()) {
    bool own;
    status = grpc::SerializationTraits<Response>::Serialize(response, raw_response, &own);
  }
  reactor->Finish(status);
  return reactor;
}

grpc::ServerUnaryReactor* InferenceService::Tokenize(grpc::CallbackServerContext* context,
                                                     const grpc::ByteBuffer* request,
                                                     grpc::ByteBuffer* response) {
  return Unary(context, request, response, &InferenceService::Tokenize);
}

grpc::ServerUnaryReactor* InferenceService::GetModelInfo(grpc::CallbackServerContext* context,
                                                         const grpc::ByteBuffer* request,
                                                         grpc::ByteBuffer* response) {
  return Unary(context, request, response, &InferenceService::GetModelInfo);
}

grpc::ServerUnaryReactor* InferenceService::Abort(grpc::CallbackServerContext* context,
                                                  const grpc::ByteBuffer* request,
                                                  grpc::ByteBuffer* response) {
  return Unary(context, request, response, &InferenceService::Abort);
}

grpc::Status InferenceService::Tokenize(const v1::TokenizeRequest& request,
                                        v1::TokenizeResponse* response) {
  auto model = Ready();
  if (!model.ok()) return ToGrpc(model.status());
  auto ids = TokenizeIds(request, (*model)->limits());
  if (!ids.ok()) return ToGrpc(ids.status());
  const Tokenizer* tokenizer = (*model)->tokenizer();
  for (int32_t id : *ids) {
    response->add_token_ids(id);
    response->add_tokens(tokenizer->Decode({id}, /*skip_special_tokens=*/false));
  }
  return grpc::Status::OK;
}

grpc::Status InferenceService::GetModelInfo(const v1::GetModelInfoRequest& /*request*/,
                                            v1::ModelInfo* response) {
  auto model = Ready();
  if (!model.ok()) return ToGrpc(model.status());
  *response = (*model)->info();
  return grpc::Status::OK;
}

grpc::Status InferenceService::Abort(const v1::AbortRequest& request, v1::AbortResponse* response) {
  if (request.request_id().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "request_id: empty");
  }
  auto model = Ready();
  if (model.ok()) {
    response->set_found((*model)->scheduler().Abort(request.request_id(), FinishReason::kAborted));
  }
  return grpc::Status::OK;
}

}  // namespace ember::worker

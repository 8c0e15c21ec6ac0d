// The continuous-batching scheduler: one thread that owns the engine and runs step after
// step. Each step carries one decode token for every running sequence and, in the token
// budget left, chunks of prompts being prefilled, so a long prompt never stalls the
// decodes beside it. New requests join at the next step.
//
// Admission reserves KV blocks for a request's whole budget (prompt + max_tokens) before it
// runs, so a running sequence never has to be preempted; requests wait in a bounded FIFO
// queue until their blocks can be had. Abort, client cancellation and deadlines take effect
// at the next step and return the blocks.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "worker/model/engine.h"
#include "worker/serve/metrics.h"
#include "worker/tokenizer/tokenizer.h"

namespace ember::worker {

using Clock = std::chrono::steady_clock;

enum class FinishReason {
  kLength,         // max_tokens reached
  kStop,           // an end-of-sequence token or one of stop_token_ids
  kStopSequence,   // a stop string appeared
  kContextLength,  // the model's context is full
  kAborted,        // Abort, or a drain that ran out of time
  kCancelled,      // the client cancelled the call
  kDeadline,       // the client's deadline expired
  kError,          // the engine failed
};
const char* FinishReasonName(FinishReason reason);

struct GenerationParams {
  SamplingParams sampling;  // temperature, top_k, top_p, min_p, seed
  float repetition_penalty = 1;
  float frequency_penalty = 0;
  float presence_penalty = 0;
  int max_tokens = 1;              // > 0 (the service resolves "up to the context")
  bool max_tokens_is_context = false;  // max_tokens was resolved from the context length
  int min_tokens = 0;
  std::vector<std::string> stop;  // well-formed UTF-8, non-empty
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  int top_logprobs = 0;
  bool stream_text = true;
};

struct TokenLogprobs {
  int32_t token = 0;
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;  // most likely first
};

// Tokens produced since the last delivery, with their text and logprobs.
struct TokenChunk {
  std::vector<int32_t> ids;
  std::string text;
  std::vector<TokenLogprobs> logprobs;
};

struct RequestUsage {
  int prompt_tokens = 0;
  int completion_tokens = 0;
  double time_to_first_token_s = 0;
  double total_time_s = 0;
  double queue_time_s = 0;
};

// Where a request's output goes. Called on the scheduler's thread: must not block.
class RequestSink {
 public:
  virtual ~RequestSink() = default;
  virtual void OnTokens(TokenChunk chunk) = 0;
  // The last call: `tail` holds any tokens and text not yet delivered. `status` is OK
  // unless the engine failed.
  virtual void OnFinish(TokenChunk tail, FinishReason reason, const RequestUsage& usage,
                        const absl::Status& status) = 0;
};

struct GenerationRequest {
  std::string id;
  std::vector<int32_t> prompt;  // valid ids, prompt + max_tokens within the context
  GenerationParams params;
  Clock::time_point arrival = Clock::now();
  Clock::time_point deadline = Clock::time_point::max();
  std::shared_ptr<RequestSink> sink;
};

struct SchedulerOptions {
  int max_batch = 64;   // sequences running at once (the engine's max_sequences)
  int max_queue = 256;  // requests waiting for admission before RESOURCE_EXHAUSTED
  // Called on the scheduler's thread with each request's arrival and first-token times
  // (the worker reports its first request's in the cold-start line). Must not block.
  std::function<void(Clock::time_point arrival, Clock::time_point first_token)> on_first_token;
};

class Scheduler {
 public:
  // `tokenizer` may be null (token ids only: no text, no stop strings). `eos_ids`: the
  // model's end-of-sequence tokens.
  Scheduler(Engine* engine, const Tokenizer* tokenizer, std::vector<int32_t> eos_ids,
            const SchedulerOptions& options, Metrics* metrics);
  // Stops the thread; requests still queued or running finish as kAborted.
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a request. ResourceExhausted when the queue is full or the request needs more
  // KV blocks than the cache holds; Unavailable while draining; AlreadyExists for the id
  // of a request still queued or running. On error the sink is not called.
  absl::Status Submit(GenerationRequest request);

  // Stops a queued or running request at the next step; false if no such request.
  bool Abort(absl::string_view id, FinishReason reason);

  // Drain: Submit refuses new requests from now on; accepted ones run to the end.
  void StopAdmitting();
  // Waits until nothing is queued or running; false if `timeout` passed first.
  bool WaitIdle(absl::Duration timeout);
  // Aborts every queued and running request.
  void AbortAll(FinishReason reason);
  // Runs the engine's warm-up on the scheduler's thread if no request is queued or running
  // (one that is would only wait for it, and its own first step does the warm-up's work);
  // returns whether it ran, and when it started in `started`.
  absl::StatusOr<bool> WarmUpIfIdle(Clock::time_point* started);

  int64_t kv_blocks_total() const { return engine_->kv_cache().num_blocks(); }

 private:
  struct Active;
  void Loop();
  // One forward over the running requests; false when none had anything to run.
  void RunStep();
  // A generated token for `a`: deliver it, and finish `a` if a stop condition holds.
  void AcceptToken(Active* a, int32_t token, const TokenLogprobs* logprobs);
  int32_t HostSample(Active* a, std::vector<float>& logits, int64_t position,
                     TokenLogprobs* logprobs);
  void Finish(Active* a, FinishReason reason, TokenChunk tail, const absl::Status& status);
  void PublishLoad() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PublishKv();  // scheduler thread (or before it starts)

  Engine* engine_;
  const Tokenizer* tokenizer_;
  std::vector<int32_t> eos_ids_;
  SchedulerOptions options_;
  Metrics* metrics_;

  absl::Mutex mu_;
  std::deque<std::unique_ptr<Active>> queue_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<Active>> running_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, Active*> by_id_ ABSL_GUARDED_BY(mu_);
  int64_t reserved_blocks_ ABSL_GUARDED_BY(mu_) = 0;
  int delivering_ ABSL_GUARDED_BY(mu_) = 0;  // finished, OnFinish not yet returned
  bool admitting_ ABSL_GUARDED_BY(mu_) = true;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  // WarmUpIfIdle's request to the thread, and its answer.
  bool warm_up_asked_ ABSL_GUARDED_BY(mu_) = false;
  Clock::time_point* warm_up_started_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::optional<absl::StatusOr<bool>> warm_up_result_ ABSL_GUARDED_BY(mu_);
  uint64_t next_sequence_ = 1;  // scheduler thread only
  std::thread thread_;
};

}  // namespace ember::worker

#include "worker/serve/scheduler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/ops.h"
#include "loader/log.h"
#include "worker/serve/text_stream.h"

namespace ember::worker {
namespace {

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// The metrics label of a finished request.
const char* Outcome(FinishReason reason) {
  switch (reason) {
    case FinishReason::kAborted: return "aborted";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kDeadline: return "deadline";
    case FinishReason::kError: return "error";
    default: return "ok";
  }
}

bool Contains(const std::vector<int32_t>& ids, int32_t id) {
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}

}  // namespace

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength: return "length";
    case FinishReason::kStop: return "stop";
    case FinishReason::kStopSequence: return "stop_sequence";
    case FinishReason::kContextLength: return "context_length";
    case FinishReason::kAborted: return "aborted";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kDeadline: return "deadline";
    case FinishReason::kError: return "error";
  }
  return "unknown";
}

struct Scheduler::Active {
  GenerationRequest request;
  int64_t blocks = 0;              // KV blocks reserved for the whole budget
  uint64_t sequence = 0;           // engine sequence id once admitted (0: queued)
  std::vector<int32_t> tokens;     // prompt, then the output
  int prompt_len = 0;
  int fed = 0;                     // tokens whose K/V are in the cache
  int generated = 0;
  // Kept only when sampling on the host: output token occurrences (frequency and presence
  // penalties) and every token of prompt and output (repetition penalty).
  absl::flat_hash_map<int32_t, int> counts;
  absl::flat_hash_set<int32_t> seen;
  std::optional<StopTextStream> text;
  bool host_sampling = false;      // penalties, logprobs or min_tokens: sample on the host
  std::optional<FinishReason> abort;  // set under mu_ by Abort
  bool done = false;
  Clock::time_point admitted, first_token, last_token;
};

Scheduler::Scheduler(Engine* engine, const Tokenizer* tokenizer, std::vector<int32_t> eos_ids,
                     const SchedulerOptions& options, Metrics* metrics)
    : engine_(engine),
      tokenizer_(tokenizer),
      eos_ids_(std::move(eos_ids)),
      options_(options),
      metrics_(metrics) {
  PublishKv();
  thread_ = std::thread([this] { Loop(); });
}

Scheduler::~Scheduler() {
  AbortAll(FinishReason::kAborted);
  WaitIdle(absl::Seconds(10));
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

absl::Status Scheduler::Submit(GenerationRequest request) {
  const int64_t budget = static_cast<int64_t>(request.prompt.size()) + request.params.max_tokens;
  const int64_t blocks = engine_->kv_cache().BlocksFor(budget);
  absl::MutexLock lock(&mu_);
  if (!admitting_) {
    metrics_->RequestFinished("rejected");
    return absl::UnavailableError("the worker is draining and accepts no new requests; retry "
                                  "on another replica");
  }
  if (by_id_.contains(request.id)) {
    return absl::AlreadyExistsError(
        absl::StrCat("request_id '", request.id, "' is already queued or running"));
  }
  if (blocks > engine_->kv_cache().num_blocks()) {
    metrics_->RequestFinished("rejected");
    return absl::ResourceExhaustedError(absl::StrCat(
        "the request needs ", blocks, " KV cache blocks (", request.prompt.size(),
        " prompt tokens + max_tokens ", request.params.max_tokens, "), more than the cache holds (",
        engine_->kv_cache().num_blocks(), "); lower stopping.max_tokens"));
  }
  // Requests the next step can admit (free batch slots) do not count as waiting.
  const int free_slots = std::max(0, options_.max_batch - static_cast<int>(running_.size()));
  if (static_cast<int>(queue_.size()) >= options_.max_queue + free_slots) {
    metrics_->RequestFinished("rejected");
    return absl::ResourceExhaustedError(absl::StrCat(
        "the waiting queue is full (max_queue ", options_.max_queue, " requests); retry later"));
  }
  auto a = std::make_unique<Active>();
  a->blocks = blocks;
  a->prompt_len = static_cast<int>(request.prompt.size());
  a->tokens = request.prompt;
  const GenerationParams& p = request.params;
  if (tokenizer_ != nullptr && (p.stream_text || !p.stop.empty())) {
    a->text.emplace(*tokenizer_, p.stop);
  }
  a->host_sampling = p.repetition_penalty != 1 || p.frequency_penalty != 0 ||
                     p.presence_penalty != 0 || p.top_logprobs > 0 ||
                     (p.min_tokens > 0 && (!p.ignore_eos || !p.stop_token_ids.empty()));
  if (p.repetition_penalty != 1) a->seen.insert(a->tokens.begin(), a->tokens.end());
  a->request = std::move(request);
  by_id_[a->request.id] = a.get();
  queue_.push_back(std::move(a));
  PublishLoad();
  return absl::OkStatus();
}

bool Scheduler::Abort(absl::string_view id, FinishReason reason) {
  absl::MutexLock lock(&mu_);
  auto it = by_id_.find(id);
  if (it == by_id_.end() || it->second->abort.has_value()) return false;
  it->second->abort = reason;
  return true;
}

void Scheduler::StopAdmitting() {
  absl::MutexLock lock(&mu_);
  admitting_ = false;
}

bool Scheduler::WaitIdle(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return queue_.empty() && running_.empty() && delivering_ == 0;
  };
  return mu_.AwaitWithTimeout(absl::Condition(&idle), timeout);
}

void Scheduler::AbortAll(FinishReason reason) {
  absl::MutexLock lock(&mu_);
  for (auto& [id, a] : by_id_) {
    if (!a->abort.has_value()) a->abort = reason;
  }
}

absl::StatusOr<bool> Scheduler::WarmUpIfIdle(Clock::time_point* started) {
  absl::MutexLock lock(&mu_);
  warm_up_asked_ = true;
  warm_up_started_ = started;
  warm_up_result_.reset();
  auto answered = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return warm_up_result_.has_value(); };
  mu_.Await(absl::Condition(&answered));
  return *warm_up_result_;
}

void Scheduler::PublishLoad() {
  metrics_->SetLoad(static_cast<int>(running_.size()), static_cast<int>(queue_.size()));
}

void Scheduler::Loop() {
  while (true) {
    std::vector<Active*> aborted;
    {
      absl::MutexLock lock(&mu_);
      auto has_work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stop_ || !queue_.empty() || !running_.empty() || warm_up_asked_;
      };
      mu_.Await(absl::Condition(&has_work));
      if (stop_) return;
      if (warm_up_asked_) {
        warm_up_asked_ = false;
        const bool idle = queue_.empty() && running_.empty();
        absl::Status warmed;
        if (idle) {
          *warm_up_started_ = Clock::now();
          mu_.Unlock();  // Submit may queue meanwhile; the next pass admits it
          warmed = engine_->WarmUp();
          mu_.Lock();
        }
        warm_up_result_ = warmed.ok() ? absl::StatusOr<bool>(idle) : absl::StatusOr<bool>(warmed);
        continue;
      }
      const Clock::time_point now = Clock::now();
      // Queued requests that were aborted or ran out of time leave the queue here;
      // running ones are finished below, outside the lock.
      for (auto it = queue_.begin(); it != queue_.end();) {
        Active* a = it->get();
        if (!a->abort && now >= a->request.deadline) a->abort = FinishReason::kDeadline;
        if (a->abort) {
          running_.push_back(std::move(*it));  // finished like a running one (never admitted)
          aborted.push_back(a);
          it = queue_.erase(it);
        } else {
          ++it;
        }
      }
      for (auto& a : running_) {
        if (!a->abort && now >= a->request.deadline) a->abort = FinishReason::kDeadline;
        if (a->abort && std::find(aborted.begin(), aborted.end(), a.get()) == aborted.end()) {
          aborted.push_back(a.get());
        }
      }
      // Admission in arrival order: the head waits until its blocks can be had, and
      // nothing overtakes it (no starvation of long requests).
      const int64_t total = engine_->kv_cache().num_blocks();
      while (!queue_.empty() && static_cast<int>(running_.size() - aborted.size()) <
                                    options_.max_batch) {
        Active* head = queue_.front().get();
        if (reserved_blocks_ + head->blocks > total) break;
        reserved_blocks_ += head->blocks;
        head->admitted = now;
        head->sequence = next_sequence_++;
        running_.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
      PublishLoad();
    }
    for (Active* a : aborted) Finish(a, *a->abort, {}, absl::OkStatus());
    RunStep();
  }
}

void Scheduler::RunStep() {
  std::vector<Active*> running;
  {
    absl::MutexLock lock(&mu_);
    for (auto& a : running_) running.push_back(a.get());
  }
  // Decodes first (one token each), then prompt chunks in admission order with the
  // budget left.
  std::vector<StepInput> inputs;
  std::vector<Active*> owners;
  int budget = engine_->options().max_step_tokens;
  auto add = [&](Active* a, int n) {
    if (a->sequence != 0 && !engine_->HasSequence(a->sequence)) {
      if (absl::Status s = engine_->AddSequence(a->sequence); !s.ok()) {
        Finish(a, FinishReason::kError, {}, s);
        return;
      }
    }
    StepInput in;
    in.sequence = a->sequence;
    in.tokens = std::span<const int32_t>(a->tokens.data() + a->fed, n);
    const bool completes = a->fed + n == static_cast<int>(a->tokens.size());
    in.sample = completes && !a->host_sampling;
    in.want_logits = completes && a->host_sampling;
    in.sampling = a->request.params.sampling;
    inputs.push_back(in);
    owners.push_back(a);
    budget -= n;
  };
  for (Active* a : running) {
    if (!a->done && a->sequence != 0 && a->fed >= a->prompt_len) add(a, 1);
  }
  for (Active* a : running) {
    if (budget <= 0) break;
    if (!a->done && a->sequence != 0 && a->fed < a->prompt_len) {
      add(a, std::min(budget, a->prompt_len - a->fed));
    }
  }
  if (inputs.empty()) return;

  auto outputs = engine_->Step(inputs);
  if (!outputs.ok()) {
    LogWarning("scheduler", "step failed; finishing its requests",
               {{"error", std::string(outputs.status().message())}});
    for (Active* a : owners) Finish(a, FinishReason::kError, {}, outputs.status());
    return;
  }
  PublishKv();  // before any token reaches a client
  int generated = 0;
  size_t out = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    Active* a = owners[i];
    const int64_t position = a->fed + static_cast<int64_t>(inputs[i].tokens.size());
    a->fed = static_cast<int>(position);
    if (!inputs[i].sample && !inputs[i].want_logits) continue;
    StepOutput& o = (*outputs)[out++];
    TokenLogprobs logprobs;
    const int32_t token = inputs[i].sample ? o.token : HostSample(a, o.logits, position, &logprobs);
    ++generated;
    AcceptToken(a, token, a->request.params.top_logprobs > 0 ? &logprobs : nullptr);
  }
  metrics_->Step(static_cast<int>(inputs.size()), generated);
}

void Scheduler::PublishKv() {
  const int64_t free = engine_->kv_cache().free_blocks();
  metrics_->SetKvBlocks(engine_->kv_cache().num_blocks() - free, free);
}

int32_t Scheduler::HostSample(Active* a, std::vector<float>& z, int64_t position,
                              TokenLogprobs* logprobs) {
  const GenerationParams& p = a->request.params;
  const int vocab = static_cast<int>(z.size());
  if (p.repetition_penalty != 1) {
    // Hugging Face's rule over prompt and output: shrink positive logits, grow negative.
    for (int32_t t : a->seen) {
      if (t >= 0 && t < vocab) z[t] = z[t] > 0 ? z[t] / p.repetition_penalty : z[t] * p.repetition_penalty;
    }
  }
  for (const auto& [t, count] : a->counts) {  // OpenAI's rule over the output only
    if (t >= 0 && t < vocab) z[t] -= p.frequency_penalty * count + p.presence_penalty;
  }
  if (a->generated < p.min_tokens) {
    const float off = -std::numeric_limits<float>::infinity();
    if (!p.ignore_eos) {
      for (int32_t t : eos_ids_) {
        if (t >= 0 && t < vocab) z[t] = off;
      }
    }
    for (int32_t t : p.stop_token_ids) {
      if (t >= 0 && t < vocab) z[t] = off;
    }
  }
  const kernels::SamplingRow row = SamplingRowFor(p.sampling, position);
  int32_t token = 0;
  kernels::cpu::Sample(z.data(), 1, vocab, &row, &token);
  if (p.top_logprobs > 0) {
    float max_z = -std::numeric_limits<float>::infinity();
    for (float v : z) max_z = std::max(max_z, v);
    double sum = 0;
    for (float v : z) sum += std::exp(static_cast<double>(v) - max_z);
    const float log_norm = max_z + static_cast<float>(std::log(sum));
    logprobs->token = token;
    logprobs->logprob = z[token] - log_norm;
    std::vector<int32_t> order(vocab);
    for (int i = 0; i < vocab; ++i) order[i] = i;
    const int k = std::min(p.top_logprobs, vocab);
    std::partial_sort(order.begin(), order.begin() + k, order.end(),
                      [&](int32_t x, int32_t y) { return z[x] > z[y] || (z[x] == z[y] && x < y); });
    for (int i = 0; i < k; ++i) logprobs->top.emplace_back(order[i], z[order[i]] - log_norm);
  }
  return token;
}

void Scheduler::AcceptToken(Active* a, int32_t token, const TokenLogprobs* logprobs) {
  const GenerationParams& p = a->request.params;
  const Clock::time_point now = Clock::now();
  if (a->generated == 0) {
    a->first_token = now;
    metrics_->TimeToFirstToken(Seconds(now - a->request.arrival));
    if (options_.on_first_token) options_.on_first_token(a->request.arrival, now);
  } else {
    metrics_->InterTokenLatency(Seconds(now - a->last_token));
  }
  a->last_token = now;
  ++a->generated;
  a->tokens.push_back(token);
  if (a->host_sampling) {
    ++a->counts[token];
    if (p.repetition_penalty != 1) a->seen.insert(token);
  }

  // End-of-sequence tokens and stop strings count once min_tokens came before them.
  const bool may_stop = a->generated > p.min_tokens;
  TokenChunk chunk;
  chunk.ids.push_back(token);
  if (logprobs != nullptr) chunk.logprobs.push_back(*logprobs);
  std::optional<FinishReason> reason;
  if (a->text) {
    StopTextStream::Delta delta = a->text->Push(token, may_stop);
    if (p.stream_text) chunk.text = std::move(delta.text);
    if (delta.stopped) reason = FinishReason::kStopSequence;
  }
  if (!reason && may_stop) {
    if ((!p.ignore_eos && Contains(eos_ids_, token)) || Contains(p.stop_token_ids, token)) {
      reason = FinishReason::kStop;
    }
  }
  if (!reason && a->generated >= p.max_tokens) {
    reason = p.max_tokens_is_context ? FinishReason::kContextLength : FinishReason::kLength;
  }
  if (!reason && static_cast<int>(a->tokens.size()) >= engine_->max_context()) {
    reason = FinishReason::kContextLength;
  }
  if (reason) {
    if (a->text && *reason != FinishReason::kStopSequence && p.stream_text) {
      chunk.text += a->text->Finish();
    }
    Finish(a, *reason, std::move(chunk), absl::OkStatus());
    return;
  }
  a->request.sink->OnTokens(std::move(chunk));
}

void Scheduler::Finish(Active* a, FinishReason reason, TokenChunk tail, const absl::Status& status) {
  if (a->done) return;
  a->done = true;
  if (a->sequence != 0 && engine_->HasSequence(a->sequence)) {
    engine_->RemoveSequence(a->sequence);
    PublishKv();
  }
  const Clock::time_point now = Clock::now();
  const GenerationRequest& r = a->request;
  RequestUsage usage;
  usage.prompt_tokens = a->prompt_len;
  usage.completion_tokens = a->generated;
  usage.time_to_first_token_s = a->generated > 0 ? Seconds(a->first_token - r.arrival) : 0;
  usage.total_time_s = Seconds(now - r.arrival);
  usage.queue_time_s = Seconds((a->sequence != 0 ? a->admitted : now) - r.arrival);
  // Forget the id before the client hears the end, so it may reuse the id at once.
  std::unique_ptr<Active> owned;
  {
    absl::MutexLock lock(&mu_);
    if (a->sequence != 0) reserved_blocks_ -= a->blocks;
    by_id_.erase(r.id);
    for (auto it = running_.begin(); it != running_.end(); ++it) {
      if (it->get() == a) {
        owned = std::move(*it);
        running_.erase(it);
        break;
      }
    }
    ++delivering_;
    PublishLoad();
  }
  if (a->sequence != 0) metrics_->PromptTokens(a->prompt_len);
  metrics_->RequestFinished(Outcome(reason));
  LogInfo("request", "finished",
          {{"request_id", r.id},
           {"finish_reason", FinishReasonName(reason)},
           {"prompt_tokens", usage.prompt_tokens},
           {"completion_tokens", usage.completion_tokens},
           {"ttft_s", usage.time_to_first_token_s},
           {"total_s", usage.total_time_s},
           {"queue_s", usage.queue_time_s},
           {"error", status.ok() ? "" : std::string(status.message())}});
  r.sink->OnFinish(std::move(tail), reason, usage, status);
  absl::MutexLock lock(&mu_);
  --delivering_;
}

}  // namespace ember::worker

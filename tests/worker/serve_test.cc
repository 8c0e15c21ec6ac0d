// The worker's serving parts without a network: stop strings over streamed text, request
// validation (including requests whose text is not UTF-8 on the wire), and the scheduler's
// admission by KV blocks, queue bound, abort and drain on an in-memory model.
#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "ember/v1/request_reader.h"
#include "grpcpp/support/slice.h"
#include "kernels/backend.h"
#include "nlohmann/json.hpp"
#include "tests/engine/random_model.h"
#include "worker/model/engine.h"
#include "worker/model/model_weights.h"
#include "worker/serve/metrics.h"
#include "worker/serve/request_builder.h"
#include "worker/serve/scheduler.h"
#include "worker/serve/text_stream.h"

namespace ember::worker {
namespace {

// A byte-level BPE with one token per character below (no merges). In byte-level form
// 'Ã' is the byte 0xC3 and '©' the byte 0xA9: together they spell "é".
Tokenizer SmallTokenizer() {
  const char* chars[] = {"a", "b", "c", "S", "T", "O", "P", "Ã", "©", "Ġ"};
  nlohmann::json vocab = nlohmann::json::object();
  for (int i = 0; i < 10; ++i) vocab[chars[i]] = i;
  nlohmann::json level = {{"type", "ByteLevel"}, {"add_prefix_space", false},
                          {"trim_offsets", true}, {"use_regex", true}};
  nlohmann::json j = {
      {"version", "1.0"},
      {"added_tokens", nlohmann::json::array()},
      {"normalizer", nullptr},
      {"pre_tokenizer", level},
      {"post_processor", nullptr},
      {"decoder", level},
      {"model",
       {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()},
        {"byte_fallback", false}, {"fuse_unk", false}, {"unk_token", nullptr}}}};
  auto tokenizer = Tokenizer::Load(j.dump(), "");
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return *tokenizer;
}

enum : int32_t { a, b, c, S, T, O, P, kC3, kA9, kSpace };

std::vector<std::string> Texts(StopTextStream& stream, std::vector<int32_t> ids) {
  std::vector<std::string> out;
  for (int32_t id : ids) out.push_back(stream.Push(id).text);
  return out;
}

using V = std::vector<std::string>;

TEST(StopTextStreamTest, ReleasesWholeCharactersOnly) {
  Tokenizer tok = SmallTokenizer();
  StopTextStream stream(tok, {});
  EXPECT_EQ(Texts(stream, {a, kC3, kA9, kSpace, b}), (V{"a", "", "é", " ", "b"}));
  EXPECT_EQ(stream.Finish(), "");
}

TEST(StopTextStreamTest, HoldsBackWhatCouldStartAStopStringThenReleasesIt) {
  Tokenizer tok = SmallTokenizer();
  StopTextStream stream(tok, {"STOP"});
  EXPECT_EQ(Texts(stream, {a, S, T, b}), (V{"a", "", "", "STb"}));
  EXPECT_EQ(Texts(stream, {S, T, O}), (V{"", "", ""}));
  StopTextStream::Delta last = stream.Push(P);
  EXPECT_TRUE(last.stopped);
  EXPECT_EQ(last.text, "");
  EXPECT_EQ(stream.Push(a).text, "");  // nothing after a stop
  EXPECT_EQ(stream.Finish(), "");
}

TEST(StopTextStreamTest, CutsAtTheEarliestStopStringInsideOneToken) {
  Tokenizer tok = SmallTokenizer();
  StopTextStream stream(tok, {"TO", "bS"});
  EXPECT_EQ(stream.Push(a).text, "a");
  EXPECT_EQ(stream.Push(b).text, "");  // could begin "bS"
  StopTextStream::Delta d = stream.Push(S);
  EXPECT_TRUE(d.stopped);
  EXPECT_EQ(d.text, "");
}

TEST(StopTextStreamTest, StopStringsWithMultiByteCharacters) {
  Tokenizer tok = SmallTokenizer();
  StopTextStream stream(tok, {"é"});
  EXPECT_EQ(stream.Push(a).text, "a");
  EXPECT_EQ(stream.Push(kC3).text, "");
  StopTextStream::Delta d = stream.Push(kA9);
  EXPECT_TRUE(d.stopped);
  EXPECT_EQ(d.text, "");
}

TEST(StopTextStreamTest, BeforeMinTokensNothingIsHeldOrMatched) {
  Tokenizer tok = SmallTokenizer();
  StopTextStream stream(tok, {"ST"});
  EXPECT_EQ(stream.Push(S, /*match_stops=*/false).text, "S");
  StopTextStream::Delta d = stream.Push(T, /*match_stops=*/false);
  EXPECT_FALSE(d.stopped);
  EXPECT_EQ(d.text, "T");
  EXPECT_EQ(stream.Push(S).text, "");
  EXPECT_TRUE(stream.Push(T).stopped);
}

TEST(StopTextStreamTest, FinishFlushesHeldText) {
  Tokenizer tok = SmallTokenizer();
  StopTextStream stream(tok, {"STOP"});
  EXPECT_EQ(Texts(stream, {a, S, T, kC3}), (V{"a", "", "", ""}));
  EXPECT_EQ(stream.Finish(), "ST\xEF\xBF\xBD");  // the broken character becomes U+FFFD
}

// --- request validation ------------------------------------------------------------------

ModelLimits Limits(const Tokenizer* tokenizer) {
  ModelLimits limits;
  limits.vocab_size = 10;
  limits.max_context = 64;
  limits.tokenizer = tokenizer;
  limits.chat_template_error = ChatTemplate::Load("", nlohmann::ordered_json::object()).status();
  return limits;
}

TEST(RequestBuilderTest, DefaultsFillTheContextAndDrawASeed) {
  Tokenizer tok = SmallTokenizer();
  v1::GenerateRequest request;
  request.mutable_token_ids()->add_ids(a);
  request.mutable_token_ids()->add_ids(b);
  auto built = BuildGenerationRequest(request, Limits(&tok));
  ASSERT_TRUE(built.ok()) << built.status();
  EXPECT_EQ(built->params.max_tokens, 62);
  EXPECT_TRUE(built->params.max_tokens_is_context);
  EXPECT_EQ(built->params.sampling.top_p, 1.0f);
  EXPECT_EQ(built->params.repetition_penalty, 1.0f);
  EXPECT_TRUE(built->params.stream_text);
  EXPECT_EQ(built->id.rfind("req-", 0), 0u);
  auto again = BuildGenerationRequest(request, Limits(&tok));
  EXPECT_NE(built->params.sampling.seed, again->params.sampling.seed);
  request.mutable_sampling()->set_seed(5);
  EXPECT_EQ(BuildGenerationRequest(request, Limits(&tok))->params.sampling.seed, 5u);
}

TEST(RequestBuilderTest, TextInputWithoutATokenizerIsAFailedPrecondition) {
  v1::GenerateRequest request;
  request.set_prompt("abc");
  auto built = BuildGenerationRequest(request, Limits(nullptr));
  EXPECT_EQ(built.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(built.status().message().find("send token_ids"), std::string::npos);
  request.mutable_token_ids()->add_ids(3);
  request.mutable_stopping()->add_stop("x");
  built = BuildGenerationRequest(request, Limits(nullptr));
  EXPECT_EQ(built.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(built.status().message().rfind("stopping.stop[0]:", 0), 0u);
}

TEST(RequestBuilderTest, ChatWithoutATemplateSaysToSendAPrompt) {
  Tokenizer tok = SmallTokenizer();
  v1::GenerateRequest request;
  auto* m = request.mutable_chat()->add_messages();
  m->set_role("user");
  m->set_content("abc");
  auto built = BuildGenerationRequest(request, Limits(&tok));
  EXPECT_EQ(built.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(built.status().message().rfind("chat: ", 0), 0u) << built.status();
  EXPECT_NE(built.status().message().find("send a text prompt"), std::string::npos) << built.status();
}

TEST(RequestBuilderTest, NonUtf8TextOnTheWireIsNamedByItsField) {
  v1::GenerateRequest request;
  auto* first = request.mutable_chat()->add_messages();
  first->set_role("user");
  first->set_content("fine");
  auto* second = request.mutable_chat()->add_messages();
  second->set_role("user");
  second->set_content("ab\x01\x01");
  std::string wire = request.SerializeAsString();
  wire.replace(wire.find("\x01\x01"), 2, "\xC3\x28");  // 0xC3 then a non-continuation byte
  grpc::Slice slice(wire);
  grpc::ByteBuffer buffer(&slice, 1);
  v1::GenerateRequest parsed;
  ASSERT_TRUE(v1::DeserializeRequest(buffer, &parsed).ok());
  auto built = BuildGenerationRequest(parsed, Limits(nullptr));
  EXPECT_EQ(built.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(built.status().message(), "chat.messages[1].content: not valid UTF-8 (byte offset 2)");

  grpc::Slice garbage(std::string("\xFF\xFF\xFF"));
  grpc::ByteBuffer bad(&garbage, 1);
  EXPECT_EQ(v1::DeserializeRequest(bad, &parsed).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

// --- the scheduler -----------------------------------------------------------------------

// Records what the scheduler delivers for one request.
class RecordingSink : public RequestSink {
 public:
  void OnTokens(TokenChunk chunk) override {
    absl::MutexLock lock(&mu_);
    ids_.insert(ids_.end(), chunk.ids.begin(), chunk.ids.end());
  }
  void OnFinish(TokenChunk tail, FinishReason reason, const RequestUsage& usage,
                const absl::Status& status) override {
    {
      absl::MutexLock lock(&mu_);
      ids_.insert(ids_.end(), tail.ids.begin(), tail.ids.end());
      reason_ = reason;
      usage_ = usage;
      finish_order_ = next_order_++;
    }
    done_.Notify();
  }
  void Wait() { done_.WaitForNotification(); }
  bool done() { return done_.HasBeenNotified(); }
  std::vector<int32_t> ids() {
    absl::MutexLock lock(&mu_);
    return ids_;
  }
  FinishReason reason() {
    absl::MutexLock lock(&mu_);
    return reason_;
  }
  RequestUsage usage() {
    absl::MutexLock lock(&mu_);
    return usage_;
  }
  int order() {
    absl::MutexLock lock(&mu_);
    return finish_order_;
  }

 private:
  static inline std::atomic<int> next_order_{0};
  absl::Mutex mu_;
  std::vector<int32_t> ids_;
  FinishReason reason_ = FinishReason::kError;
  RequestUsage usage_;
  int finish_order_ = -1;
  absl::Notification done_;
};

class SchedulerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = testing::MakeRandomModel(testing::SmallLlamaConfig(), loader::Dtype::kF32);
    auto backend = kernels::MakeBackend("cpu");
    ASSERT_TRUE(backend.ok());
    backend_ = std::move(*backend);
  }
  void Start(int64_t kv_blocks, int max_batch, int max_queue) {
    auto weights = BindWeights(model_.config, model_.weights, *backend_);
    ASSERT_TRUE(weights.ok()) << weights.status();
    EngineOptions options;
    options.kv_blocks = kv_blocks;
    options.max_sequences = max_batch;
    options.max_step_tokens = 32;
    auto engine = Engine::Create(model_.config, std::move(*weights), backend_.get(), options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(*engine);
    SchedulerOptions s;
    s.max_batch = max_batch;
    s.max_queue = max_queue;
    scheduler_ = std::make_unique<Scheduler>(engine_.get(), nullptr, std::vector<int32_t>{},
                                             s, &metrics_);
  }
  void TearDown() override {
    scheduler_.reset();
    engine_.reset();
  }

  GenerationRequest Request(const std::string& id, int prompt_len, int max_tokens,
                            std::shared_ptr<RecordingSink> sink) {
    GenerationRequest r;
    r.id = id;
    for (int i = 0; i < prompt_len; ++i) r.prompt.push_back((i * 7 + 3) % 97);
    r.params.max_tokens = max_tokens;
    r.params.ignore_eos = true;
    r.sink = std::move(sink);
    return r;
  }

  testing::RandomModel model_;
  std::unique_ptr<kernels::Backend> backend_;
  std::unique_ptr<Engine> engine_;
  Metrics metrics_;
  std::unique_ptr<Scheduler> scheduler_;
};

TEST_F(SchedulerTest, AdmitsInArrivalOrderOnlyWhenTheBlocksCanBeHad) {
  Start(/*kv_blocks=*/10, /*max_batch=*/8, /*max_queue=*/8);
  // 16 + 100 tokens: 8 of the 10 blocks. The next two need 4 each, so they wait for the first
  // and then run together.
  auto first = std::make_shared<RecordingSink>();
  auto second = std::make_shared<RecordingSink>();
  auto third = std::make_shared<RecordingSink>();
  GenerationRequest r1 = Request("first", 16, 100, first), r2 = Request("second", 16, 40, second);
  const Clock::time_point first_arrival = r1.arrival, second_arrival = r2.arrival;
  ASSERT_TRUE(scheduler_->Submit(std::move(r1)).ok());
  ASSERT_TRUE(scheduler_->Submit(std::move(r2)).ok());
  ASSERT_TRUE(scheduler_->Submit(Request("third", 16, 40, third)).ok());
  third->Wait();
  second->Wait();
  first->Wait();
  EXPECT_LT(first->order(), second->order());
  EXPECT_LT(first->order(), third->order());
  // The second was admitted only once the first had finished (its blocks were needed). On
  // one clock: compared as durations from each request's own arrival, a test thread
  // descheduled between the two Submits made the second's wait look short.
  const double second_after_first = std::chrono::duration<double>(second_arrival - first_arrival).count();
  EXPECT_GE(second_after_first + second->usage().queue_time_s + 1e-6, first->usage().total_time_s);
  EXPECT_EQ(first->ids().size(), 100u);
  EXPECT_EQ(second->ids().size(), 40u);
  EXPECT_EQ(engine_->kv_cache().free_blocks(), 10);
}

TEST_F(SchedulerTest, RefusesWhatCanNeverFitAndAFullQueue) {
  Start(/*kv_blocks=*/40, /*max_batch=*/1, /*max_queue=*/1);
  auto sink = std::make_shared<RecordingSink>();
  absl::Status too_big = scheduler_->Submit(Request("big", 16, 700, sink));  // 45 blocks
  EXPECT_EQ(too_big.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(too_big.message().find("more than the cache holds (40)"), std::string::npos) << too_big;

  auto running = std::make_shared<RecordingSink>();
  auto queued = std::make_shared<RecordingSink>();
  auto refused = std::make_shared<RecordingSink>();
  // r holds 38 of the 40 blocks for hundreds of steps; q waits for them; the queue (one
  // place, no free batch slot) is then full.
  ASSERT_TRUE(scheduler_->Submit(Request("r", 8, 600, running)).ok());
  while (running->ids().empty()) absl::SleepFor(absl::Milliseconds(1));  // admitted
  ASSERT_TRUE(scheduler_->Submit(Request("q", 8, 600, queued)).ok());
  absl::Status full = scheduler_->Submit(Request("x", 8, 50, refused));
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(full.message().find("max_queue 1"), std::string::npos) << full;
  EXPECT_EQ(scheduler_->Submit(Request("q", 8, 5, std::make_shared<RecordingSink>())).code(),
            absl::StatusCode::kAlreadyExists);
  scheduler_->AbortAll(FinishReason::kAborted);
  ASSERT_TRUE(scheduler_->WaitIdle(absl::Seconds(30)));
  EXPECT_GE(metrics_.requests("rejected"), 2);
}

TEST_F(SchedulerTest, AbortStopsARunningRequestAndFreesItsBlocks) {
  Start(/*kv_blocks=*/64, /*max_batch=*/4, /*max_queue=*/4);
  auto sink = std::make_shared<RecordingSink>();
  ASSERT_TRUE(scheduler_->Submit(Request("long", 8, 900, sink)).ok());
  while (sink->ids().empty()) absl::SleepFor(absl::Milliseconds(1));
  EXPECT_TRUE(scheduler_->Abort("long", FinishReason::kAborted));
  sink->Wait();
  EXPECT_EQ(sink->reason(), FinishReason::kAborted);
  EXPECT_LT(sink->ids().size(), 900u);
  EXPECT_FALSE(scheduler_->Abort("long", FinishReason::kAborted));
  ASSERT_TRUE(scheduler_->WaitIdle(absl::Seconds(10)));
  EXPECT_EQ(engine_->kv_cache().free_blocks(), 64);
  EXPECT_EQ(metrics_.requests("aborted"), 1);
}

TEST_F(SchedulerTest, DrainRefusesNewRequestsAndFinishesAccepted) {
  Start(/*kv_blocks=*/64, /*max_batch=*/2, /*max_queue=*/4);
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  for (int i = 0; i < 3; ++i) {
    sinks.push_back(std::make_shared<RecordingSink>());
    ASSERT_TRUE(scheduler_->Submit(Request("d" + std::to_string(i), 5, 30, sinks.back())).ok());
  }
  scheduler_->StopAdmitting();
  EXPECT_EQ(scheduler_->Submit(Request("late", 5, 3, std::make_shared<RecordingSink>())).code(),
            absl::StatusCode::kUnavailable);
  ASSERT_TRUE(scheduler_->WaitIdle(absl::Seconds(30)));
  for (auto& sink : sinks) {
    EXPECT_EQ(sink->reason(), FinishReason::kLength);
    EXPECT_EQ(sink->ids().size(), 30u);
  }
}

}  // namespace
}  // namespace ember::worker

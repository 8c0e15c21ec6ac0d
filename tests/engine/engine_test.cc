// The engine's batching contract on the CPU backend: a sequence's results do not depend
// on what else is in its step, sequences can join a running batch, KV exhaustion is a
// reported condition that changes nothing, and finished sequences give their blocks back.
#include "worker/model/engine.h"

#include <gtest/gtest.h>

#include <numeric>
#include <algorithm>
#include <chrono>
#include <thread>
#include <atomic>

#include "kernels/backend.h"
#include "tests/engine/random_model.h"
#include "worker/model/model_weights.h"
#include "worker/model/weight_arrival.h"

namespace ember::worker {
namespace {

using ::ember::testing::MakeRandomModel;
using ::ember::testing::RandomModel;
using ::ember::testing::SmallLlamaConfig;

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    backend_ = *kernels::MakeBackend("cpu");
    model_ = MakeRandomModel(SmallLlamaConfig(), loader::Dtype::kBF16);
  }

  // `in_place` false: bound as while the weights still arrive (small tensors converted by the
  // engine as their stage lands).
  std::unique_ptr<Engine> NewEngine(EngineOptions options = {}, bool in_place = true) {
    auto weights = BindWeights(model_.config, model_.weights, *backend_, in_place);
    EXPECT_TRUE(weights.ok()) << weights.status();
    if (options.kv_blocks == 0) options.kv_blocks = 64;
    auto engine = Engine::Create(model_.config, std::move(*weights), backend_.get(), options);
    EXPECT_TRUE(engine.ok()) << engine.status();
    return std::move(*engine);
  }

  static std::vector<int32_t> Prompt(int length, int salt) {
    std::vector<int32_t> ids(length);
    for (int i = 0; i < length; ++i) ids[i] = (i * 31 + salt * 17 + 5) % 97;
    return ids;
  }

  // Greedy generation of `steps` tokens for one sequence alone; returns tokens and the
  // logits of every step.
  std::pair<std::vector<int32_t>, std::vector<std::vector<float>>> Alone(
      const std::vector<int32_t>& prompt, int steps, SamplingParams sampling = {}) {
    auto engine = NewEngine();
    EXPECT_TRUE(engine->AddSequence(7).ok());
    std::vector<int32_t> tokens;
    std::vector<std::vector<float>> logits;
    int32_t last = 0;
    for (int s = 0; s < steps; ++s) {
      StepInput in;
      in.sequence = 7;
      in.tokens = s == 0 ? std::span<const int32_t>(prompt) : std::span<const int32_t>(&last, 1);
      in.want_logits = true;
      in.sampling = sampling;
      auto out = engine->Step(std::span<const StepInput>(&in, 1));
      EXPECT_TRUE(out.ok()) << out.status();
      last = (*out)[0].token;
      tokens.push_back(last);
      logits.push_back((*out)[0].logits);
    }
    return {tokens, logits};
  }

  std::unique_ptr<kernels::Backend> backend_;
  RandomModel model_;
};

StepInput In(uint64_t sequence, std::span<const int32_t> tokens) {
  StepInput in;
  in.sequence = sequence;
  in.tokens = tokens;
  return in;
}

float MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

TEST_F(EngineTest, StaggeredBatchGivesEachSequenceItsAloneResult) {
  constexpr int kSteps = 40;
  const std::vector<std::vector<int32_t>> prompts = {Prompt(3, 1), Prompt(21, 2), Prompt(9, 3)};
  const int joins_at[] = {0, 5, 12};  // sequence i joins the running batch at step joins_at[i]
  SamplingParams sampled;
  sampled.temperature = 0.8f;
  sampled.top_k = 20;
  sampled.top_p = 0.9f;
  sampled.seed = 1234;
  const SamplingParams params[] = {SamplingParams{}, sampled, SamplingParams{}};

  std::vector<std::vector<int32_t>> alone_tokens;
  std::vector<std::vector<std::vector<float>>> alone_logits;
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto [t, l] = Alone(prompts[i], kSteps, params[i]);
    alone_tokens.push_back(t);
    alone_logits.push_back(l);
  }

  auto engine = NewEngine();
  std::vector<std::vector<int32_t>> tokens(prompts.size());
  std::vector<int32_t> last(prompts.size());
  for (int step = 0; step < kSteps + 12; ++step) {
    std::vector<StepInput> inputs;
    for (size_t i = 0; i < prompts.size(); ++i) {
      if (step < joins_at[i] || static_cast<int>(tokens[i].size()) == kSteps) continue;
      if (step == joins_at[i]) {
        ASSERT_TRUE(engine->AddSequence(i).ok());
      }
      StepInput in;
      in.sequence = i;
      in.tokens = step == joins_at[i] ? std::span<const int32_t>(prompts[i])
                                      : std::span<const int32_t>(&last[i], 1);
      in.want_logits = true;
      in.sampling = params[i];
      inputs.push_back(in);
    }
    if (inputs.empty()) break;
    auto out = engine->Step(inputs);
    ASSERT_TRUE(out.ok()) << out.status();
    for (const StepOutput& o : *out) {
      const size_t k = tokens[o.sequence].size();
      EXPECT_LT(MaxAbsDiff(o.logits, alone_logits[o.sequence][k]), 1e-4f)
          << "sequence " << o.sequence << " step " << k;
      last[o.sequence] = o.token;
      tokens[o.sequence].push_back(o.token);
    }
  }
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(tokens[i], alone_tokens[i]) << "sequence " << i;
}

TEST_F(EngineTest, KvExhaustionIsReportedAndChangesNothing) {
  EngineOptions options;
  options.kv_blocks = 3;  // 48 tokens
  auto engine = NewEngine(options);
  ASSERT_TRUE(engine->AddSequence(1).ok());
  ASSERT_TRUE(engine->AddSequence(2).ok());
  const auto p1 = Prompt(30, 1), p2 = Prompt(30, 2);
  StepInput a = In(1, p1);
  ASSERT_TRUE(engine->Step(std::span<const StepInput>(&a, 1)).ok());
  EXPECT_EQ(engine->kv_cache().free_blocks(), 1);

  StepInput b = In(2, p2);
  auto full = engine->Step(std::span<const StepInput>(&b, 1));
  ASSERT_EQ(full.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(full.status().message().find("KV cache full"), std::string::npos) << full.status();
  EXPECT_EQ(engine->SequenceLength(2), 0);
  EXPECT_EQ(engine->kv_cache().free_blocks(), 1);
  EXPECT_EQ(engine->SequenceLength(1), 30);

  // Finishing sequence 1 returns its blocks; sequence 2 now fits.
  engine->RemoveSequence(1);
  EXPECT_EQ(engine->kv_cache().free_blocks(), 3);
  auto ok = engine->Step(std::span<const StepInput>(&b, 1));
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(engine->SequenceLength(2), 30);
}

TEST_F(EngineTest, ReusedBlocksGiveTheSameResultsAsFreshOnes) {
  // Blocks freed by a cancelled sequence hold its stale K/V; a new sequence on them must
  // see none of it.
  const auto prompt = Prompt(20, 4);
  auto [fresh_tokens, fresh_logits] = Alone(prompt, 6);
  EngineOptions options;
  options.kv_blocks = 2;
  auto engine = NewEngine(options);
  ASSERT_TRUE(engine->AddSequence(1).ok());
  const auto other = Prompt(31, 9);
  StepInput junk = In(1, other);
  ASSERT_TRUE(engine->Step(std::span<const StepInput>(&junk, 1)).ok());
  engine->RemoveSequence(1);

  ASSERT_TRUE(engine->AddSequence(2).ok());
  int32_t last = 0;
  for (int s = 0; s < 6; ++s) {
    StepInput in = In(2, s == 0 ? std::span<const int32_t>(prompt) : std::span<const int32_t>(&last, 1));
    in.want_logits = true;
    auto out = engine->Step(std::span<const StepInput>(&in, 1));
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_LT(MaxAbsDiff((*out)[0].logits, fresh_logits[s]), 1e-5f) << "step " << s;
    last = (*out)[0].token;
  }
}

TEST_F(EngineTest, RejectsInvalidStepsWithoutSideEffects) {
  EngineOptions options;
  options.max_step_tokens = 16;
  options.max_context = 40;
  auto engine = NewEngine(options);
  ASSERT_TRUE(engine->AddSequence(1).ok());
  EXPECT_EQ(engine->AddSequence(1).code(), absl::StatusCode::kAlreadyExists);

  const std::vector<int32_t> bad_token = {1, 97};
  StepInput in = In(1, bad_token);
  auto s = engine->Step(std::span<const StepInput>(&in, 1));
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("outside the vocabulary"), std::string::npos) << s.status();

  const auto two = Prompt(2, 1);
  StepInput unknown = In(99, two);
  EXPECT_EQ(engine->Step(std::span<const StepInput>(&unknown, 1)).status().code(),
            absl::StatusCode::kNotFound);

  const auto too_many = Prompt(17, 1);
  StepInput big = In(1, too_many);
  s = engine->Step(std::span<const StepInput>(&big, 1));
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("max_step_tokens 16"), std::string::npos) << s.status();

  // Fill to 32 tokens, then 9 more would pass the context limit of 40.
  const auto chunk = Prompt(16, 2);
  StepInput fill = In(1, chunk);
  ASSERT_TRUE(engine->Step(std::span<const StepInput>(&fill, 1)).ok());
  ASSERT_TRUE(engine->Step(std::span<const StepInput>(&fill, 1)).ok());
  const auto nine = Prompt(9, 3);
  StepInput over = In(1, nine);
  s = engine->Step(std::span<const StepInput>(&over, 1));
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("context limit of 40"), std::string::npos) << s.status();
  EXPECT_EQ(engine->SequenceLength(1), 32);

  SamplingParams bad_sampling;
  bad_sampling.top_p = 0;
  const auto one = Prompt(1, 1);
  StepInput sampled = In(1, one);
  sampled.sampling = bad_sampling;
  EXPECT_EQ(engine->Step(std::span<const StepInput>(&sampled, 1)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(EngineTest, SeededSamplingIsReproducibleAndSeedsDiffer) {
  SamplingParams p;
  p.temperature = 1.5f;
  p.seed = 42;
  const auto prompt = Prompt(5, 5);
  auto a = Alone(prompt, 30, p).first;
  auto b = Alone(prompt, 30, p).first;
  EXPECT_EQ(a, b);
  p.seed = 43;
  auto c = Alone(prompt, 30, p).first;
  EXPECT_NE(a, c);
}

// Computing while the weights arrive: a step waits at each stage until its tensors have
// landed (and at the LM head until the load finished), then gives what the ungated engine
// gives; a load that fails fails the waiting step and changes no sequence.
TEST_F(EngineTest, AStepWaitsForEachStagesWeightsThenMatchesTheUngatedStep) {
  const std::vector<int32_t> prompt = Prompt(19, 3);
  auto [expected, expected_logits] = Alone(prompt, 1);

  auto engine = NewEngine({}, /*in_place=*/false);
  WeightArrival arrival(model_.weights);
  engine->SetWeightArrival(&arrival);
  ASSERT_TRUE(engine->AddSequence(7).ok());
  std::vector<std::string> names;
  for (const auto& [name, view] : model_.weights) names.push_back(name);
  // Landed in stage order; all but the head (final norm, LM head) before the step starts.
  std::sort(names.begin(), names.end(), [](const std::string& a, const std::string& b) {
    return WeightArrival::StageOf(a) < WeightArrival::StageOf(b);
  });
  std::atomic<bool> stepped{false};
  absl::StatusOr<std::vector<StepOutput>> out;
  std::thread step([&] {
    StepInput in;
    in.sequence = 7;
    in.tokens = prompt;
    in.want_logits = true;
    out = engine->Step(std::span<const StepInput>(&in, 1));
    stepped = true;
  });
  for (const std::string& name : names) {
    if (WeightArrival::StageOf(name) == WeightArrival::kHead) continue;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    EXPECT_FALSE(stepped) << "the step ended before " << name << " landed";
    arrival.Landed(name);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_FALSE(stepped) << "the LM head ran before the load finished";
  for (const std::string& name : names) {
    if (WeightArrival::StageOf(name) == WeightArrival::kHead) arrival.Landed(name);
  }
  arrival.Finish(absl::OkStatus());
  step.join();
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ((*out)[0].token, expected[0]);
  EXPECT_EQ((*out)[0].logits, expected_logits[0]);
  EXPECT_EQ(engine->SequenceLength(7), 19);
}

TEST_F(EngineTest, AFailedLoadFailsTheWaitingStepAndAbandonWaitsForIt) {
  auto engine = NewEngine({}, /*in_place=*/false);
  WeightArrival arrival(model_.weights);
  engine->SetWeightArrival(&arrival);
  ASSERT_TRUE(engine->AddSequence(7).ok());
  for (const auto& [name, view] : model_.weights) {
    if (WeightArrival::StageOf(name) <= 1) arrival.Landed(name);  // embedding and layer 0
  }
  const std::vector<int32_t> prompt = Prompt(5, 1);
  absl::StatusOr<std::vector<StepOutput>> out;
  std::thread step([&] {
    StepInput in;
    in.sequence = 7;
    in.tokens = prompt;
    out = engine->Step(std::span<const StepInput>(&in, 1));
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // the step waits at layer 1
  arrival.Abandon(absl::DataLossError("shard 2: connection reset"));  // returns once it let go
  step.join();
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().message(), "shard 2: connection reset");
  EXPECT_EQ(engine->SequenceLength(7), 0);
  EXPECT_FALSE(arrival.complete());
}

TEST(WeightArrivalTest, StagesFollowTheForwardPass) {
  EXPECT_EQ(WeightArrival::StageOf("model.embed_tokens.weight"), 0);
  EXPECT_EQ(WeightArrival::StageOf("model.layers.0.self_attn.q_proj.weight"), 1);
  EXPECT_EQ(WeightArrival::StageOf("model.layers.11.mlp.down_proj.weight"), 12);
  EXPECT_EQ(WeightArrival::StageOf("model.norm.weight"), WeightArrival::kHead);
  EXPECT_EQ(WeightArrival::StageOf("lm_head.weight"), WeightArrival::kHead);
  EXPECT_EQ(WeightArrival::StageOf("model.layers.x.weight"), WeightArrival::kHead);
}

}  // namespace
}  // namespace ember::worker

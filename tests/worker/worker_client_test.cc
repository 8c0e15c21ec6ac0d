// ember-worker with a C++ grpc++ client over TCP: the worker serves a model (made by
// transformers, with a trained tokenizer) from the local S3 server. Streaming and its text
// against Ember's own offline decode, 32 concurrent requests against each alone, errors
// naming the field, Tokenize and GetModelInfo.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <future>
#include <string>
#include <thread>
#include <vector>

#include "ember/v1/inference.grpc.pb.h"
#include "tests/loader/test_servers.h"
#include "worker/tokenizer/tokenizer.h"

namespace ember {
namespace {

using testing::ChildProcess;
using testing::LocalS3;
using testing::ReadFile;
using testing::RunCommand;
using testing::ScopedEnv;
using testing::SourceDir;
using testing::TempDir;

constexpr int kVocab = 1000;

class WorkerClientTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    model_dir_ = dir_->path() + "/root/models/tiny";
    ASSERT_EQ(RunCommand({"python3", SourceDir() + "/tools/make_hf_model.py", "llama-gqa", model_dir_,
                          "--chat-tokenizer"}),
              0);
    s3_ = new LocalS3(dir_->path() + "/root");
    ASSERT_TRUE(s3_->ok()) << "rclone serve s3 did not start";
    ScopedEnv env({{"AWS_ACCESS_KEY_ID", s3_->access_key()},
                   {"AWS_SECRET_ACCESS_KEY", s3_->secret_key()},
                   {"AWS_ENDPOINT_URL", s3_->endpoint()},
                   {"AWS_REGION", "us-east-1"}});
    worker_ = new ChildProcess({"python3", SourceDir() + "/tools/worker_process.py", "serve",
                                "--model", "s3://models/tiny", "--", "--backend=cpu",
                                "--max_step_tokens=32", "--kv_blocks=1024"});
    ASSERT_TRUE(worker_->ok()) << "ember-worker did not start";
    channel_ = new std::shared_ptr<grpc::Channel>(grpc::CreateChannel(
        "127.0.0.1:" + std::to_string(worker_->hello()["grpc_port"].get<int>()),
        grpc::InsecureChannelCredentials()));
  }
  static void TearDownTestSuite() {
    delete channel_;
    delete worker_;
    delete s3_;
    delete dir_;
  }

  struct Result {
    grpc::Status status;
    std::vector<int32_t> ids;
    std::string text;
    std::vector<v1::GenerateResponse> responses;
  };

  static Result Generate(const v1::GenerateRequest& request) {
    auto stub = v1::Inference::NewStub(*channel_);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    Result result;
    auto reader = stub->Generate(&context, request);
    v1::GenerateResponse response;
    while (reader->Read(&response)) {
      result.ids.insert(result.ids.end(), response.token_ids().begin(), response.token_ids().end());
      result.text += response.text();
      result.responses.push_back(response);
    }
    result.status = reader->Finish();
    return result;
  }

  static v1::GenerateRequest TokenRequest(std::vector<int32_t> ids, int max_tokens) {
    v1::GenerateRequest request;
    *request.mutable_token_ids()->mutable_ids() = {ids.begin(), ids.end()};
    request.mutable_stopping()->set_max_tokens(max_tokens);
    request.mutable_stopping()->set_ignore_eos(true);
    return request;
  }

  static TempDir* dir_;
  static std::string model_dir_;
  static LocalS3* s3_;
  static ChildProcess* worker_;
  static std::shared_ptr<grpc::Channel>* channel_;
};

TempDir* WorkerClientTest::dir_ = nullptr;
std::string WorkerClientTest::model_dir_;
LocalS3* WorkerClientTest::s3_ = nullptr;
ChildProcess* WorkerClientTest::worker_ = nullptr;
std::shared_ptr<grpc::Channel>* WorkerClientTest::channel_ = nullptr;

TEST_F(WorkerClientTest, StreamsTokensWhoseTextIsTheirDecode) {
  v1::GenerateRequest request;
  request.set_request_id("cpp-stream");
  request.set_prompt("Grüße aus München! 日本語 🙂");
  request.mutable_stopping()->set_max_tokens(40);
  request.mutable_stopping()->set_ignore_eos(true);
  Result r = Generate(request);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  ASSERT_EQ(r.ids.size(), 40u);
  auto tokenizer = worker::Tokenizer::Load(ReadFile(model_dir_ + "/tokenizer.json"),
                                           ReadFile(model_dir_ + "/tokenizer_config.json"));
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ(r.text, tokenizer->Decode(r.ids, /*skip_special_tokens=*/true));
  const v1::GenerateResponse& last = r.responses.back();
  EXPECT_EQ(last.request_id(), "cpp-stream");
  EXPECT_EQ(last.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(last.usage().completion_tokens(), 40);
  auto prompt_ids = tokenizer->Encode(request.prompt(), true);
  ASSERT_TRUE(prompt_ids.ok());
  EXPECT_EQ(last.usage().prompt_tokens(), static_cast<int>(prompt_ids->size()));
}

TEST_F(WorkerClientTest, ThirtyTwoConcurrentRequestsEqualEachAlone) {
  std::vector<v1::GenerateRequest> requests;
  for (int i = 0; i < 32; ++i) {
    std::vector<int32_t> prompt;
    const int length = 1 + (i * 37) % 90;  // crosses the 32-token prefill chunks
    for (int t = 0; t < length; ++t) prompt.push_back((i * 131 + t * 17) % kVocab);
    v1::GenerateRequest request = TokenRequest(prompt, 4 + (i * 7) % 29);
    request.set_request_id("cpp-" + std::to_string(i));
    if (i % 3 == 1) {
      request.mutable_sampling()->set_temperature(0.9f);
      request.mutable_sampling()->set_top_k(40);
      request.mutable_sampling()->set_seed(77 + i);
    }
    requests.push_back(request);
  }
  std::vector<std::vector<int32_t>> alone;
  for (const auto& request : requests) {
    Result r = Generate(request);
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    alone.push_back(r.ids);
  }
  std::vector<std::future<Result>> together;
  for (const auto& request : requests) {
    together.push_back(std::async(std::launch::async, [&request] { return Generate(request); }));
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    Result r = together[i].get();
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.ids, alone[i]) << requests[i].request_id();
    EXPECT_EQ(static_cast<int>(r.ids.size()), requests[i].stopping().max_tokens());
  }
}

TEST_F(WorkerClientTest, BadFieldsAreInvalidArgumentNamingTheField) {
  Result r = Generate(TokenRequest({1, 2, kVocab}, 4));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(r.status.error_message().rfind("token_ids.ids[2]:", 0), 0u) << r.status.error_message();

  v1::GenerateRequest request = TokenRequest({1, 2}, 4);
  request.mutable_sampling()->set_top_p(0);
  r = Generate(request);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(r.status.error_message().rfind("sampling.top_p:", 0), 0u) << r.status.error_message();

  request = TokenRequest({1, 2}, 511);  // 2 + 511 > the 512-token context
  r = Generate(request);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(r.status.error_message().find("context length of 512"), std::string::npos)
      << r.status.error_message();
}

TEST_F(WorkerClientTest, TokenizeAndModelInfo) {
  auto stub = v1::Inference::NewStub(*channel_);
  grpc::ClientContext context;
  v1::TokenizeRequest request;
  request.set_text("hello 日本語");
  v1::TokenizeResponse response;
  ASSERT_TRUE(stub->Tokenize(&context, request, &response).ok());
  EXPECT_GT(response.token_ids_size(), 0);
  EXPECT_EQ(response.tokens_size(), response.token_ids_size());

  grpc::ClientContext info_context;
  v1::ModelInfo info;
  ASSERT_TRUE(stub->GetModelInfo(&info_context, v1::GetModelInfoRequest(), &info).ok());
  EXPECT_EQ(info.architecture(), "LlamaForCausalLM");
  EXPECT_EQ(info.vocab_size(), kVocab);
  EXPECT_EQ(info.backend(), "cpu");
  EXPECT_TRUE(info.chat_template());
}

}  // namespace
}  // namespace ember

// Loads from a real S3-compatible server (rclone serve s3 on loopback with SigV4
// credentials), directly and through a fault-injecting proxy, checking every byte.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdio>
#include <filesystem>

#include "loader/model_loader.h"
#include "loader/safetensors.h"
#include "tests/loader/load_expectations.h"
#include "tests/loader/test_servers.h"

namespace ember::loader {
namespace {

using ::ember::testing::ExpectByteExact;
using ::ember::testing::FaultProxy;
using ::ember::testing::LocalS3;
using ::ember::testing::MakeTestModel;
using ::ember::testing::ReadFile;
using ::ember::testing::ScopedEnv;
using ::ember::testing::TempDir;
namespace fs = std::filesystem;

class S3LoadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::create_directories(root_.path() + "/models");
    server_ = std::make_unique<LocalS3>(root_.path());
    ASSERT_TRUE(server_->ok()) << "the local S3 server did not start (is rclone installed? run tools/bootstrap)";
  }

  // A generated model at s3://models/NAME, also on disk at the returned path.
  std::string MakeModel(const std::string& name, const std::vector<std::string>& args) {
    const std::string dir = root_.path() + "/models/" + name;
    EXPECT_TRUE(MakeTestModel(dir, args)) << "make_test_model.py failed for " << name;
    return dir;
  }

  std::map<std::string, std::string> Env(const std::string& endpoint = "") const {
    return {{"AWS_ACCESS_KEY_ID", server_->access_key()},
            {"AWS_SECRET_ACCESS_KEY", server_->secret_key()},
            {"AWS_SESSION_TOKEN", ""},
            {"AWS_REGION", "us-east-1"},
            {"AWS_ENDPOINT_URL_S3", ""},
            {"AWS_ENDPOINT_URL", endpoint.empty() ? server_->endpoint() : endpoint}};
  }

  static LoadOptions SmallRing() {
    LoadOptions o;
    o.chunk_bytes = 1 << 20;
    o.staging_bytes = 4 << 20;  // far smaller than the model
    o.connections = 4;
    o.retry.base_delay_s = 0.02;
    o.retry.max_delay_s = 0.2;
    return o;
  }

  TempDir root_;
  std::unique_ptr<LocalS3> server_;
};

TEST_F(S3LoadTest, LoadsSingleFileModelByteExact) {
  const std::string dir = MakeModel("single", {"--layout", "single", "--total-mb", "8"});
  ScopedEnv env(Env());
  auto model = LoadModel("s3://models/single", SmallRing());
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->weight_files, std::vector<std::string>{"model.safetensors"});
  EXPECT_TRUE(model->files.count("config.json"));
  EXPECT_TRUE(model->files.count("tokenizer.json"));
  EXPECT_EQ(model->files.at("config.json"), ReadFile(dir + "/config.json"));
  ExpectByteExact(*model, dir);
}

TEST_F(S3LoadTest, LoadsShardedMisalignedEveryDtypeThroughASmallRing) {
  const std::string dir = MakeModel(
      "sharded", {"--layout", "sharded", "--shards", "3", "--dtypes", "all", "--misaligned", "--total-mb", "24"});
  ScopedEnv env(Env());
  auto model = LoadModel("s3://models/sharded/", SmallRing());
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->weight_files.size(), 3u);
  EXPECT_LE(model->staging_bytes, 4u << 20);
  EXPECT_GT(model->bytes_streamed, 20u << 20);  // the model is 5x the ring
  ExpectByteExact(*model, dir);
}

TEST_F(S3LoadTest, LoadsOneSafetensorsObject) {
  const std::string dir = MakeModel("one", {"--layout", "single", "--total-mb", "3"});
  ScopedEnv env(Env());
  auto model = LoadModel("s3://models/one/model.safetensors", SmallRing());
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_TRUE(model->files.empty());
  ExpectByteExact(*model, dir);
}

TEST_F(S3LoadTest, MirrorsThePrefixByteIdentical) {
  const std::string dir = MakeModel("mirror", {"--layout", "sharded", "--shards", "2", "--misaligned"});
  TempDir out;
  ScopedEnv env(Env());
  LoadOptions options = SmallRing();
  options.target = Target::kNone;
  options.mirror_dir = out.path() + "/copy";
  auto model = LoadModel("s3://models/mirror", options);
  ASSERT_TRUE(model.ok()) << model.status();
  size_t files = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename();
    EXPECT_EQ(ReadFile(options.mirror_dir + "/" + name), ReadFile(entry.path())) << name;
    ++files;
  }
  size_t copied = std::distance(fs::directory_iterator(options.mirror_dir), fs::directory_iterator());
  EXPECT_EQ(copied, files);  // nothing more, no leftover partial files
}

TEST_F(S3LoadTest, RefusesAWrongSecretWithoutRevealingIt) {
  MakeModel("private", {"--layout", "single"});
  auto env_vars = Env();
  env_vars["AWS_SECRET_ACCESS_KEY"] = "not-the-secret-4f1c9a";
  ScopedEnv env(env_vars);
  auto model = LoadModel("s3://models/private", SmallRing());
  ASSERT_FALSE(model.ok());
  const std::string msg(model.status().message());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kPermissionDenied) << msg;
  EXPECT_NE(msg.find("SignatureDoesNotMatch"), std::string::npos) << msg;
  EXPECT_NE(msg.find("s3://models/private"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("not-the-secret-4f1c9a"), std::string::npos) << msg;
  EXPECT_EQ(msg.find(server_->secret_key()), std::string::npos) << msg;
}

TEST_F(S3LoadTest, NamesWhatIsMissingFromAPrefixThatIsNotAModel) {
  const std::string dir = MakeModel("broken", {"--layout", "single"});
  fs::remove(dir + "/config.json");
  ScopedEnv env(Env());
  auto model = LoadModel("s3://models/broken", SmallRing());
  ASSERT_FALSE(model.ok());
  const std::string msg(model.status().message());
  EXPECT_NE(msg.find("missing config.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;  // lists what is there
}

TEST_F(S3LoadTest, ReportsAMissingPrefix) {
  ScopedEnv env(Env());
  auto model = LoadModel("s3://models/nothing-here", SmallRing());
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kNotFound) << model.status();
}

TEST_F(S3LoadTest, RejectsAShardedModelWhoseIndexDisagreesWithItsShards) {
  const std::string dir = MakeModel("badindex", {"--layout", "sharded", "--shards", "2"});
  std::string index = ReadFile(dir + "/model.safetensors.index.json");
  const size_t at = index.find("\"weight_map\": {");
  ASSERT_NE(at, std::string::npos) << index;
  index.insert(at + 15, "\"ghost.weight\": \"model-00001-of-00002.safetensors\", ");
  FILE* f = fopen((dir + "/model.safetensors.index.json").c_str(), "w");
  fwrite(index.data(), 1, index.size(), f);
  fclose(f);
  ScopedEnv env(Env());
  auto model = LoadModel("s3://models/badindex", SmallRing());
  ASSERT_FALSE(model.ok());
  EXPECT_NE(model.status().message().find("ghost.weight"), std::string::npos) << model.status();
}

TEST_F(S3LoadTest, LoadsThroughAPresignedHttpUrlWithoutShowingItsSignature) {
  const std::string dir = MakeModel("presigned", {"--layout", "single", "--total-mb", "2"});
  std::string url;
  ASSERT_EQ(0, ::ember::testing::RunCommand(
                   {"python3", ::ember::testing::SourceDir() + "/tools/objstore.py", "presign",
                    "--endpoint", server_->endpoint(), "--access-key", server_->access_key(),
                    "--secret-key", server_->secret_key(), "s3://models/presigned/model.safetensors"},
                   &url));
  while (!url.empty() && url.back() == '\n') url.pop_back();
  ASSERT_NE(url.find("X-Amz-Signature="), std::string::npos) << url;
  ScopedEnv env({{"AWS_ACCESS_KEY_ID", ""}, {"AWS_SECRET_ACCESS_KEY", ""}});
  auto model = LoadModel(url, SmallRing());
  ASSERT_TRUE(model.ok()) << model.status();
  ExpectByteExact(*model, dir);
  EXPECT_EQ(model->source.find("Signature"), std::string::npos) << model->source;

  // A tampered signature is refused, and the error does not echo the query.
  std::string bad = url;
  bad.replace(bad.find("X-Amz-Signature=") + 16, 4, "0000");
  auto refused = LoadModel(bad, SmallRing());
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().message().find("X-Amz-Signature"), std::string::npos) << refused.status();
  EXPECT_NE(refused.status().message().find("403"), std::string::npos) << refused.status();
}

// --- Faults, injected by a proxy between the loader and the real server -------------

class S3FaultTest : public S3LoadTest {
 protected:
  absl::StatusOr<LoadedModel> LoadThroughProxy(const std::string& name,
                                               const std::vector<std::string>& faults,
                                               LoadOptions options = SmallRing()) {
    FaultProxy proxy(server_->endpoint(), faults);
    EXPECT_TRUE(proxy.ok()) << "fault proxy did not start";
    ScopedEnv env(Env(proxy.endpoint()));
    return LoadModel("s3://models/" + name, options);
  }
};

TEST_F(S3FaultTest, ResumesRangesAfterConnectionResets) {
  const std::string dir = MakeModel("reset", {"--layout", "single", "--total-mb", "8", "--misaligned"});
  // Header reads pass (skip 1); the next 3 data ranges die after 100 kB.
  auto model = LoadThroughProxy("reset", {"--fault-skip", "1", "--fault-requests", "3",
                                          "--reset-after-bytes", "100000"});
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_GE(model->retries, 3u);
  ExpectByteExact(*model, dir);
}

TEST_F(S3FaultTest, BacksOffOnSlowDownAndRecovers) {
  const std::string dir = MakeModel("slowdown", {"--layout", "single", "--total-mb", "4"});
  auto model = LoadThroughProxy("slowdown", {"--fault-skip", "1", "--slowdown", "4"});
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_GE(model->retries, 4u);
  ExpectByteExact(*model, dir);
}

TEST_F(S3FaultTest, RetriesServerErrors) {
  for (const char* status : {"500", "502", "504", "429"}) {
    const std::string name = std::string("status") + status;
    const std::string dir = MakeModel(name, {"--layout", "single", "--total-mb", "2"});
    auto model = LoadThroughProxy(name, {"--fault-skip", "1", "--status", status, "--fault-requests", "2"});
    ASSERT_TRUE(model.ok()) << status << ": " << model.status();
    EXPECT_GE(model->retries, 2u) << status;
    ExpectByteExact(*model, dir);
  }
}

TEST_F(S3FaultTest, RecoversFromAStalledConnection) {
  const std::string dir = MakeModel("stall", {"--layout", "single", "--total-mb", "4"});
  LoadOptions options = SmallRing();
  options.retry.stall_timeout_s = 1;
  auto model = LoadThroughProxy("stall", {"--fault-skip", "1", "--stall-after-bytes", "50000",
                                          "--stall-seconds", "8"},
                                options);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_GE(model->retries, 1u);
  ExpectByteExact(*model, dir);
}

TEST_F(S3FaultTest, StopsOnAPermanentErrorWithAClearMessage) {
  MakeModel("denied", {"--layout", "single", "--total-mb", "2"});
  auto model = LoadThroughProxy("denied", {"--fault-skip", "1", "--status", "403", "--fault-requests", "1000"});
  ASSERT_FALSE(model.ok());
  const std::string msg(model.status().message());
  EXPECT_NE(msg.find("s3://models/denied/model.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("HTTP 403"), std::string::npos) << msg;
  EXPECT_NE(msg.find("AccessDenied"), std::string::npos) << msg;
  EXPECT_NE(msg.find("check"), std::string::npos) << msg;
}

// A caller computing while the weights arrive hears of the failure before the arena goes.
TEST_F(S3FaultTest, AnnouncesAFailedLoadBeforeFreeingItsMemory) {
  MakeModel("abandoned", {"--layout", "single", "--total-mb", "2"});
  LoadOptions options = SmallRing();
  int layouts = 0, abandons = 0;
  absl::Status abandoned;
  options.on_layout = [&](const std::map<std::string, WeightView>&) { ++layouts; };
  options.on_abandon = [&](const absl::Status& s) {
    ++abandons;
    abandoned = s;
  };
  auto model = LoadThroughProxy("abandoned", {"--fault-skip", "1", "--status", "403", "--fault-requests", "1000"},
                                options);
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(layouts, 1);
  EXPECT_EQ(abandons, 1);
  EXPECT_EQ(abandoned, model.status());
}

TEST_F(S3FaultTest, GivesUpWhenTransientErrorsOutlastTheBudget) {
  MakeModel("flaky", {"--layout", "single", "--total-mb", "2"});
  LoadOptions options = SmallRing();
  options.retry.max_attempts = 3;
  auto model = LoadThroughProxy("flaky", {"--fault-skip", "1", "--slowdown", "1000"}, options);
  ASSERT_FALSE(model.ok());
  EXPECT_NE(model.status().message().find("still failing after 3 attempts"), std::string::npos)
      << model.status();
}

TEST_F(S3FaultTest, DetectsAnObjectReplacedMidLoad) {
  const std::string dir = MakeModel("swap", {"--layout", "single", "--total-mb", "8"});
  TempDir other;
  ASSERT_TRUE(MakeTestModel(other.path() + "/m", {"--layout", "single", "--total-mb", "8", "--seed", "7"}));
  auto model = LoadThroughProxy(
      "swap", {"--swap-after-requests", "3", "--swap-path", dir + "/model.safetensors", "--swap-with",
               other.path() + "/m/model.safetensors"});
  ASSERT_FALSE(model.ok()) << "a load across two versions of an object must fail";
  EXPECT_EQ(model.status().code(), absl::StatusCode::kAborted) << model.status();
  EXPECT_NE(model.status().message().find("changed during the load"), std::string::npos)
      << model.status();
}

}  // namespace
}  // namespace ember::loader

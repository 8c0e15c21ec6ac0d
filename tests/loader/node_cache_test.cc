// The node cache against a real S3 server: a first load fills the entry, a second is served
// from it; a truncated file, a fill killed midway (no manifest), an object changed upstream
// and a corrupted header are each detected and fetched again, never used; two loads at
// once on one node both succeed and leave a valid entry.
#include "loader/node_cache.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "tests/loader/load_expectations.h"
#include "tests/loader/test_servers.h"

namespace ember::loader {
namespace {

using ::ember::testing::ExpectByteExact;
using ::ember::testing::LocalS3;
using ::ember::testing::MakeTestModel;
using ::ember::testing::ScopedEnv;
using ::ember::testing::TempDir;
namespace fs = std::filesystem;

class NodeCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_dir_ = root_.path() + "/models/m";
    ASSERT_TRUE(MakeTestModel(model_dir_, {"--layout", "sharded", "--total-mb", "6"}));
    server_ = std::make_unique<LocalS3>(root_.path());
    ASSERT_TRUE(server_->ok()) << "the local S3 server did not start (run tools/bootstrap)";
    env_ = std::make_unique<ScopedEnv>(std::map<std::string, std::string>{
        {"AWS_ACCESS_KEY_ID", server_->access_key()},
        {"AWS_SECRET_ACCESS_KEY", server_->secret_key()},
        {"AWS_SESSION_TOKEN", ""},
        {"AWS_REGION", "us-east-1"},
        {"AWS_ENDPOINT_URL_S3", ""},
        {"AWS_ENDPOINT_URL", server_->endpoint()}});
  }

  CacheReport Load() {
    CacheReport report;
    LoadOptions options;
    options.chunk_bytes = 1 << 20;
    options.staging_bytes = 4 << 20;
    auto model = LoadModelCached("s3://models/m", options, cache_.path(), &report);
    EXPECT_TRUE(model.ok()) << model.status();
    if (model.ok()) {
      ExpectByteExact(*model, model_dir_);
      EXPECT_EQ(model->source, "s3://models/m/");
    }
    return report;
  }

  // The entry's copy of the first weights shard.
  std::string Shard(const CacheReport& report) {
    for (const auto& e : fs::directory_iterator(report.entry_dir)) {
      const std::string name = e.path().filename();
      if (name.find(".safetensors") != std::string::npos && name[0] != '.' &&
          name.find("index") == std::string::npos) {
        return e.path();
      }
    }
    return "";
  }

  TempDir root_, cache_;
  std::string model_dir_;
  std::unique_ptr<LocalS3> server_;
  std::unique_ptr<ScopedEnv> env_;
};

TEST_F(NodeCacheTest, FillsThenServesFromTheEntry) {
  CacheReport first = Load();
  EXPECT_EQ(first.outcome, CacheOutcome::kFilled);
  EXPECT_EQ(first.reason, "no complete entry");
  EXPECT_TRUE(fs::exists(first.entry_dir + "/ember-cache.json"));
  CacheReport second = Load();
  EXPECT_EQ(second.outcome, CacheOutcome::kHit);
  EXPECT_EQ(second.entry_dir, first.entry_dir);
}

TEST_F(NodeCacheTest, ATruncatedFileIsFetchedAgain) {
  CacheReport first = Load();
  const std::string shard = Shard(first);
  ASSERT_FALSE(shard.empty());
  fs::resize_file(shard, fs::file_size(shard) / 2);
  CacheReport second = Load();
  EXPECT_EQ(second.outcome, CacheOutcome::kFilled);
  EXPECT_NE(second.reason.find("in the cache has"), std::string::npos) << second.reason;
  EXPECT_EQ(Load().outcome, CacheOutcome::kHit);
}

TEST_F(NodeCacheTest, AFillKilledMidwayIsNeverUsed) {
  CacheReport first = Load();
  // What a fill killed before its end leaves: files, partial files, and no manifest.
  fs::remove(first.entry_dir + "/ember-cache.json");
  std::ofstream(first.entry_dir + "/.model-00001-of-00002.safetensors.partial") << "junk";
  CacheReport second = Load();
  EXPECT_EQ(second.outcome, CacheOutcome::kFilled);
  EXPECT_EQ(second.reason, "no complete entry");
}

TEST_F(NodeCacheTest, AnObjectChangedUpstreamIsFetchedAgain) {
  CacheReport first = Load();
  // The same model rewritten with another seed: same names and sizes, new bytes and ETags.
  ASSERT_TRUE(MakeTestModel(model_dir_, {"--layout", "sharded", "--total-mb", "6", "--seed", "9"}));
  CacheReport second = Load();  // byte-exact against the new files
  EXPECT_EQ(second.outcome, CacheOutcome::kFilled);
  EXPECT_NE(second.reason.find("changed upstream"), std::string::npos) << second.reason;
}

TEST_F(NodeCacheTest, ACorruptedCopyFallsBackToTheSource) {
  CacheReport first = Load();
  const std::string shard = Shard(first);
  ASSERT_FALSE(shard.empty());
  {  // same size, broken header length: only loading the copy can tell
    std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
    const char bad[8] = {'\xff', '\xff', '\xff', '\xff', '\xff', '\xff', '\xff', '\x7f'};
    f.write(bad, 8);
  }
  CacheReport second = Load();
  EXPECT_EQ(second.outcome, CacheOutcome::kFilled);
  EXPECT_NE(second.reason.find("the cached copy failed to load"), std::string::npos) << second.reason;
  EXPECT_EQ(Load().outcome, CacheOutcome::kHit);
}

TEST_F(NodeCacheTest, TwoLoadsAtOnceBothSucceedAndLeaveAValidEntry) {
  CacheReport a, b;
  std::thread ta([&] { a = Load(); });
  std::thread tb([&] { b = Load(); });
  ta.join();
  tb.join();
  EXPECT_TRUE(a.outcome == CacheOutcome::kFilled || b.outcome == CacheOutcome::kFilled);
  EXPECT_EQ(Load().outcome, CacheOutcome::kHit);
}

}  // namespace
}  // namespace ember::loader

// Loads from local paths (file:// and plain), the node-cache and mounted-volume case.
#include <gtest/gtest.h>

#include <filesystem>

#include "loader/model_loader.h"
#include "tests/loader/load_expectations.h"
#include "tests/loader/test_servers.h"

namespace ember::loader {
namespace {

using ::ember::testing::ExpectByteExact;
using ::ember::testing::MakeTestModel;
using ::ember::testing::TempDir;

TEST(FileLoad, LoadsADirectoryByteExactWithParallelReads) {
  TempDir dir;
  const std::string model_dir = dir.path() + "/m";
  ASSERT_TRUE(MakeTestModel(model_dir, {"--layout", "sharded", "--shards", "2", "--misaligned", "--total-mb", "6"}));
  LoadOptions options;
  options.chunk_bytes = 1 << 20;
  options.staging_bytes = 3 << 20;
  options.connections = 3;
  for (const std::string& uri : {model_dir, "file://" + model_dir + "/"}) {
    auto model = LoadModel(uri, options);
    ASSERT_TRUE(model.ok()) << model.status();
    ExpectByteExact(*model, model_dir);
  }
}

TEST(FileLoad, ServesWhatItLoadedToPeersByteExact) {
  TempDir dir;
  const std::string model_dir = dir.path() + "/m";
  ASSERT_TRUE(MakeTestModel(model_dir, {"--layout", "sharded", "--shards", "2", "--misaligned",
                                        "--dtypes", "all", "--total-mb", "6"}));
  LoadOptions options;
  options.chunk_bytes = 1 << 20;
  options.staging_bytes = 3 << 20;
  options.serve_to_peers = true;
  auto model = LoadModel(model_dir, options);
  ASSERT_TRUE(model.ok()) << model.status();
  ::ember::testing::ExpectServedByteExact(*model, model_dir);
  // Mirrored loads (a node-cache fill) stream from byte 0: chunks straddle checksum blocks.
  options.mirror_dir = dir.path() + "/mirror";
  options.chunk_bytes = (1 << 20) + 4097;
  model = LoadModel(model_dir, options);
  ASSERT_TRUE(model.ok()) << model.status();
  ::ember::testing::ExpectServedByteExact(*model, model_dir);
}

TEST(FileLoad, RejectsATruncatedShardWithoutLoadingAnything) {
  TempDir dir;
  const std::string model_dir = dir.path() + "/m";
  ASSERT_TRUE(MakeTestModel(model_dir, {"--layout", "single", "--total-mb", "1"}));
  std::filesystem::resize_file(model_dir + "/model.safetensors",
                               std::filesystem::file_size(model_dir + "/model.safetensors") - 100);
  auto model = LoadModel(model_dir, LoadOptions{});
  ASSERT_FALSE(model.ok());
  EXPECT_NE(model.status().message().find("model.safetensors"), std::string::npos) << model.status();
  EXPECT_NE(model.status().message().find("data section"), std::string::npos) << model.status();
}

TEST(FileLoad, ReportsAMissingPath) {
  auto model = LoadModel("/nonexistent/ember/model", LoadOptions{});
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(model.status().message().find("/nonexistent/ember/model"), std::string::npos);
}

TEST(FileLoad, RejectsAnUnknownScheme) {
  auto model = LoadModel("gs://bucket/model", LoadOptions{});
  ASSERT_FALSE(model.ok());
  EXPECT_NE(model.status().message().find("gs://"), std::string::npos) << model.status();
}

TEST(FileLoad, RejectsAStagingRingSmallerThanAChunk) {
  LoadOptions options;
  options.chunk_bytes = 8 << 20;
  options.staging_bytes = 1 << 20;
  auto model = LoadModel("/tmp", options);
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ember::loader

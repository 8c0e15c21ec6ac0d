// Loads from local paths (file:// and plain), the node-cache and mounted-volume case.
#include <gtest/gtest.h>

#include <filesystem>
#include <vector>
#include <mutex>
#include <map>

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

// Computing while the weights arrive: the places of all tensors come before any byte, each
// tensor is announced once with all its bytes already in place, and chunks are fetched in
// the order asked for (here layer 1 before layer 0, against the files' order).
TEST(FileLoad, AnnouncesEachTensorInPlaceOnceInTheOrderAsked) {
  TempDir dir;
  const std::string model_dir = dir.path() + "/m";
  ASSERT_TRUE(MakeTestModel(model_dir, {"--layout", "sharded", "--shards", "2", "--misaligned", "--total-mb", "6"}));
  auto rank = [](const std::string& name) {
    if (name.find("layers.1.") != std::string::npos) return 0;
    if (name.find("layers.0.") != std::string::npos) return 1;
    return 2;
  };
  LoadOptions options;
  options.chunk_bytes = 256 << 10;
  options.staging_bytes = 1 << 20;
  options.connections = 1;
  options.copy_threads = 1;
  std::map<std::string, WeightView> layout;
  std::map<std::string, std::vector<uint8_t>> at_announce;
  std::vector<std::string> order;
  std::mutex mu;
  options.tensor_rank = rank;
  options.on_layout = [&](const std::map<std::string, WeightView>& weights) {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_TRUE(order.empty()) << "a tensor was announced before the layout";
    layout = weights;
  };
  options.on_tensor = [&](const std::string& name) {
    std::lock_guard<std::mutex> lock(mu);
    const WeightView& view = layout.at(name);
    EXPECT_FALSE(at_announce.count(name)) << name << " announced twice";
    const auto* bytes = static_cast<const uint8_t*>(view.data);
    at_announce[name].assign(bytes, bytes + view.nbytes);
    order.push_back(name);
  };
  options.on_abandon = [](const absl::Status& s) { ADD_FAILURE() << "abandoned: " << s; };
  auto model = LoadModel(model_dir, options);
  ASSERT_TRUE(model.ok()) << model.status();
  ExpectByteExact(*model, model_dir);
  ASSERT_EQ(at_announce.size(), model->weights.size());
  for (const auto& [name, view] : model->weights) {
    EXPECT_EQ(layout.at(name).data, view.data) << name;
    const auto* bytes = static_cast<const uint8_t*>(view.data);
    EXPECT_EQ(at_announce.at(name), std::vector<uint8_t>(bytes, bytes + view.nbytes))
        << name << " was announced before all its bytes were in place";
  }
  // One connection and one copy thread: chunks go by the lowest rank they hold, so layer 1
  // is complete before layer 0 (in file order layer 0 would be), and the first tensor
  // announced is layer 1's. (A chunk shared with a lower rank brings a tensor early: the
  // small tensors beside layer 1's may come before layer 0's.)
  std::map<int, size_t> last;
  for (size_t i = 0; i < order.size(); ++i) last[rank(order[i])] = i;
  EXPECT_LT(last.at(0), last.at(1));
  EXPECT_EQ(rank(order.front()), 0) << order.front();
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

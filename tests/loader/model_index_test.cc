// Shard index parsing and its cross-check against the shards' headers.
#include "loader/model_index.h"

#include <gtest/gtest.h>

namespace ember::loader {
namespace {

SafetensorsHeader HeaderWith(std::vector<std::string> names) {
  SafetensorsHeader h;
  uint64_t offset = 0;
  for (const std::string& n : names) {
    h.tensors.push_back({n, Dtype::kU8, {1}, offset, offset + 1});
    ++offset;
  }
  h.data_bytes = offset;
  return h;
}

TEST(ShardIndex, ParsesWeightMapAndShards) {
  auto index = ParseShardIndex(
      R"({"metadata":{"total_size":3},"weight_map":{"a":"s1.safetensors","b":"s2.safetensors","c":"s1.safetensors"}})",
      "index.json");
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_EQ(index->weight_map.size(), 3u);
  EXPECT_EQ(index->shards, (std::vector<std::string>{"s1.safetensors", "s2.safetensors"}));
}

TEST(ShardIndex, RejectsShardNamesOutsideTheModel) {
  for (const char* bad : {"../x.safetensors", "/etc/passwd", "a/b.safetensors", "", ".."}) {
    auto index = ParseShardIndex(
        std::string(R"({"weight_map":{"a":")") + bad + R"("}})", "index.json");
    ASSERT_FALSE(index.ok()) << bad;
    EXPECT_NE(index.status().message().find("plain file name"), std::string::npos)
        << index.status().message();
  }
}

TEST(ShardIndex, RejectsMissingOrEmptyWeightMap) {
  EXPECT_FALSE(ParseShardIndex(R"({"metadata":{}})", "index.json").ok());
  EXPECT_FALSE(ParseShardIndex(R"({"weight_map":{}})", "index.json").ok());
  EXPECT_FALSE(ParseShardIndex(R"({"weight_map":{"a":3}})", "index.json").ok());
  EXPECT_FALSE(ParseShardIndex(R"([1,2])", "index.json").ok());
}

TEST(ShardIndex, RejectsDuplicateWeightMapKeys) {
  auto index = ParseShardIndex(R"({"weight_map":{"a":"s1","a":"s2"}})", "index.json");
  ASSERT_FALSE(index.ok());
  EXPECT_NE(index.status().message().find("duplicate key \"a\""), std::string::npos);
}

TEST(ShardIndex, AcceptsIndexMatchingShards) {
  auto index = ParseShardIndex(R"({"weight_map":{"a":"s1","b":"s2","c":"s1"}})", "index.json");
  ASSERT_TRUE(index.ok());
  std::map<std::string, SafetensorsHeader> shards{{"s1", HeaderWith({"a", "c"})},
                                                  {"s2", HeaderWith({"b"})}};
  EXPECT_TRUE(CheckIndexMatchesShards(*index, shards, "index.json").ok());
}

TEST(ShardIndex, ReportsEveryMismatchByName) {
  auto index = ParseShardIndex(R"({"weight_map":{"a":"s1","b":"s2","gone":"s1"}})", "index.json");
  ASSERT_TRUE(index.ok());
  std::map<std::string, SafetensorsHeader> shards{{"s1", HeaderWith({"a", "extra", "b"})},
                                                  {"s2", HeaderWith({})}};
  absl::Status s = CheckIndexMatchesShards(*index, shards, "index.json");
  ASSERT_FALSE(s.ok());
  const std::string msg(s.message());
  EXPECT_NE(msg.find("gone (s1)"), std::string::npos) << msg;          // missing from shard
  EXPECT_NE(msg.find("extra (in s1)"), std::string::npos) << msg;      // not in index
  EXPECT_NE(msg.find("b (in s1, index says s2)"), std::string::npos) << msg;  // misplaced
}

}  // namespace
}  // namespace ember::loader

// A peer's manifest is untrusted input: every malformed one is an error naming the fault,
// never an exception, and a well-formed one round-trips.
#include <gtest/gtest.h>

#include <string>

#include "loader/peer.h"

namespace ember::loader {
namespace {

nlohmann::json Valid() {
  PeerObject o;
  o.info = {"model.safetensors", 8 + 100 + 3 * kPeerBlockBytes, "abc", "Mon, 07 Dec 2026 10:00:00 GMT"};
  o.data_start = 108;
  o.block_crc = {1, 2, 3};
  return PeerManifestJson("s3://b/m/", {o});
}

TEST(PeerManifest, RoundTrips) {
  std::string source;
  auto parsed = ParsePeerManifest(Valid(), &source);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(source, "s3://b/m/");
  ASSERT_EQ(parsed->size(), 1u);
  EXPECT_EQ((*parsed)[0].info.etag, "abc");
  EXPECT_EQ((*parsed)[0].block_crc, (std::vector<uint32_t>{1, 2, 3}));
}

TEST(PeerManifest, MalformedIsAnErrorNeverAnException) {
  const auto error = [](const nlohmann::json& m) {
    std::string source;
    absl::StatusOr<std::vector<PeerObject>> parsed;
    EXPECT_NO_THROW(parsed = ParsePeerManifest(m, &source));
    EXPECT_FALSE(parsed.ok());
    return std::string(parsed.status().message());
  };
  nlohmann::json m = Valid();
  m["block_bytes"] = "1048576";
  EXPECT_NE(error(m).find("block_bytes"), std::string::npos);
  m = Valid();
  m["objects"][0]["etag"] = 7;
  EXPECT_NE(error(m).find("etag is not a string"), std::string::npos);
  m = Valid();
  m["objects"][0]["block_crc32"][1] = uint64_t{1} << 40;
  EXPECT_NE(error(m).find("not a 32-bit number"), std::string::npos);
  m = Valid();
  m["objects"][0]["block_crc32"].erase(0);
  EXPECT_NE(error(m).find("2 checksums for 3 blocks"), std::string::npos);
  m = Valid();
  m["objects"][0]["data_start"] = -1;
  EXPECT_NE(error(m).find("lacks name, size, data_start"), std::string::npos);
  EXPECT_NE(error(nlohmann::json::array()).find("no source"), std::string::npos);
}

}  // namespace
}  // namespace ember::loader

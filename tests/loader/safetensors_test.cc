// Safetensors header parsing: valid files parse; each kind of malformed file fails with
// an error that names the fault.
#include "loader/safetensors.h"

#include <dirent.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "nlohmann/json.hpp"

namespace ember::loader {
namespace {

// A file: 8-byte little-endian length, the header, `data_bytes` bytes of data.
std::string MakeFile(const std::string& header, uint64_t data_bytes) {
  std::string file(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) file[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  file += header;
  file.append(data_bytes, '\x5a');
  return file;
}

absl::StatusOr<SafetensorsHeader> Parse(const std::string& file) {
  return ParseSafetensorsPrefix(file, file.size(), "test.safetensors");
}

void ExpectError(const std::string& file, const std::string& fragment) {
  auto parsed = Parse(file);
  ASSERT_FALSE(parsed.ok()) << "expected an error containing: " << fragment;
  EXPECT_NE(parsed.status().message().find(fragment), std::string::npos)
      << "error was: " << parsed.status().message();
  EXPECT_NE(parsed.status().message().find("test.safetensors"), std::string::npos)
      << "error does not name the file: " << parsed.status().message();
}

TEST(Safetensors, ParsesValidHeader) {
  const std::string header = R"({"__metadata__":{"format":"pt"},)"
                             R"("b":{"dtype":"F32","shape":[2,3],"data_offsets":[4,28]},)"
                             R"("a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}})";
  auto parsed = Parse(MakeFile(header, 28));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ASSERT_EQ(parsed->tensors.size(), 2u);
  EXPECT_EQ(parsed->tensors[0].name, "a");  // sorted by offset
  EXPECT_EQ(parsed->tensors[0].dtype, Dtype::kBF16);
  EXPECT_EQ(parsed->tensors[1].name, "b");
  EXPECT_EQ(parsed->tensors[1].shape, (std::vector<uint64_t>{2, 3}));
  EXPECT_EQ(parsed->tensors[1].nbytes(), 24u);
  EXPECT_EQ(parsed->metadata.at("format"), "pt");
  EXPECT_EQ(parsed->data_start(), 8 + header.size());
  EXPECT_EQ(parsed->data_bytes, 28u);
}

TEST(Safetensors, AcceptsTrailingSpacePadding) {
  auto parsed = Parse(MakeFile(R"({"a":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}}     )", 3));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
}

TEST(Safetensors, AcceptsEmptyFileWithNoTensors) {
  auto parsed = Parse(MakeFile("{}", 0));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(parsed->tensors.empty());
}

TEST(Safetensors, AcceptsScalarsAndEmptyTensors) {
  const std::string header = R"({"s":{"dtype":"F64","shape":[],"data_offsets":[0,8]},)"
                             R"("e":{"dtype":"F16","shape":[0,4],"data_offsets":[8,8]}})";
  auto parsed = Parse(MakeFile(header, 8));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->tensors.size(), 2u);
}

TEST(Safetensors, AcceptsEveryDtypeOfTheSpec) {
  nlohmann::json header = nlohmann::json::object();
  uint64_t offset = 0;
  for (Dtype d : kAllDtypes) {
    // 8 elements fill whole bytes for every width, sub-byte ones included.
    const uint64_t bytes = 8 * DtypeBits(d) / 8;
    header[std::string(DtypeName(d))] = {
        {"dtype", DtypeName(d)}, {"shape", {8}}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  auto parsed = Parse(MakeFile(header.dump(), offset));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->tensors.size(), std::size(kAllDtypes));
  for (const TensorInfo& t : parsed->tensors) EXPECT_EQ(DtypeName(t.dtype), t.name);
}

TEST(Safetensors, RejectsFileShorterThanLengthPrefix) {
  auto parsed = ParseSafetensorsPrefix("abc", 3, "test.safetensors");
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.status().message().find("too short"), std::string::npos);
}

TEST(Safetensors, RejectsHeaderLengthPastEndOfFile) {
  std::string file = MakeFile(R"({})", 0);
  file[0] = 100;  // claims a 100-byte header in a 10-byte file
  ExpectError(file, "runs past the end");
}

TEST(Safetensors, RejectsAbsurdlyLargeHeaderLength) {
  std::string file = MakeFile(R"({})", 0);
  for (int i = 0; i < 8; ++i) file[i] = '\xff';
  ExpectError(file, "exceeds the limit");
}

TEST(Safetensors, RejectsHeaderNotStartingWithBrace) {
  ExpectError(MakeFile(R"( {"a":1})", 0), "does not start with '{'");
}

TEST(Safetensors, RejectsInvalidJson) {
  ExpectError(MakeFile(R"({"a":{"dtype":"U8",)", 0), "invalid JSON");
}

TEST(Safetensors, RejectsInvalidUtf8) {
  ExpectError(MakeFile("{\"\xff\":{}}", 0), "invalid JSON");
}

TEST(Safetensors, RejectsUnknownDtypeByName) {
  ExpectError(MakeFile(R"({"w":{"dtype":"Q4_K","shape":[2],"data_offsets":[0,2]}})", 2),
              "unknown dtype \"Q4_K\"");
}

TEST(Safetensors, RejectsOverlappingOffsets) {
  ExpectError(MakeFile(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                       R"("b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})",
                       6),
              "overlap");
}

TEST(Safetensors, RejectsGappedOffsets) {
  ExpectError(MakeFile(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                       R"("b":{"dtype":"U8","shape":[4],"data_offsets":[6,10]}})",
                       10),
              "gap");
}

TEST(Safetensors, RejectsOffsetsNotStartingAtZero) {
  ExpectError(MakeFile(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})", 6), "gap");
}

TEST(Safetensors, RejectsDataNotEndingAtFileEnd) {
  ExpectError(MakeFile(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})", 9),
              "data section has 9 bytes");
}

TEST(Safetensors, RejectsShapeSizeMismatch) {
  ExpectError(MakeFile(R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})", 12),
              "needs 16 bytes but data_offsets span 12");
}

TEST(Safetensors, RejectsEndBeforeBegin) {
  ExpectError(MakeFile(R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}})", 4),
              "end before they begin");
}

TEST(Safetensors, RejectsElementCountOverflow) {
  ExpectError(MakeFile(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,4]}})",
                       4),
              "overflows");
}

TEST(Safetensors, RejectsSubByteDtypeNotFillingBytes) {
  ExpectError(MakeFile(R"({"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}})", 2),
              "do not fill whole bytes");
}

TEST(Safetensors, RejectsNonStringMetadata) {
  ExpectError(MakeFile(R"({"__metadata__":{"step":10}})", 0), "is not a string");
}

TEST(Safetensors, RejectsDuplicateTensorNames) {
  ExpectError(MakeFile(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
                       R"("a":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}})",
                       4),
              "duplicate key \"a\"");
}

TEST(Safetensors, RejectsNegativeShape) {
  ExpectError(MakeFile(R"({"a":{"dtype":"U8","shape":[-2],"data_offsets":[0,2]}})", 2),
              "not a non-negative integer");
}

TEST(Safetensors, RejectsUnknownTensorField) {
  ExpectError(MakeFile(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2],"x":1}})", 2),
              "unknown field \"x\"");
}

TEST(Safetensors, RejectsMalformedDataOffsets) {
  ExpectError(MakeFile(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0]}})", 2),
              "data_offsets");
}

// Every file of the malformed corpus (tests/fuzz/corpus, shared with the fuzzer as
// seeds) fails with the error fragment its manifest names; the good ones parse.
TEST(Safetensors, CorpusFilesGiveTheirExpectedOutcome) {
  const char* dir = std::getenv("EMBER_TEST_CORPUS");
  ASSERT_NE(dir, nullptr) << "EMBER_TEST_CORPUS is not set";
  std::ifstream manifest_file(std::string(dir) + "/EXPECTED.json");
  ASSERT_TRUE(manifest_file) << "no EXPECTED.json in " << dir;
  const nlohmann::json manifest = nlohmann::json::parse(manifest_file);
  ASSERT_GE(manifest.size(), 10u);
  for (const auto& [name, expected] : manifest.items()) {
    std::ifstream in(std::string(dir) + "/" + name, std::ios::binary);
    ASSERT_TRUE(in) << name;
    std::stringstream buffer;
    buffer << in.rdbuf();
    const std::string file = buffer.str();
    auto parsed = ParseSafetensorsPrefix(file, file.size(), name);
    const std::string want = expected.get<std::string>();
    if (want == "ok") {
      EXPECT_TRUE(parsed.ok()) << name << ": " << parsed.status();
    } else {
      ASSERT_FALSE(parsed.ok()) << name << " parsed but should fail with: " << want;
      EXPECT_NE(parsed.status().message().find(want), std::string::npos)
          << name << ": " << parsed.status().message();
    }
  }
}

}  // namespace
}  // namespace ember::loader

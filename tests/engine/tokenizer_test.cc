// The tokenizer's parts on small hand-made tokenizer.json files: the regex translation and
// its lookahead emulation, BPE merge order, byte fallback, added-token rules, errors that
// name the component and the JSON path, and streaming decode across split characters.
// (Agreement with Hugging Face tokenizers on real layouts: test_tokenizer_reference.py.)
#include "worker/tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <random>
#include <thread>

#include "nlohmann/json.hpp"
#include "worker/tokenizer/byte_level.h"
#include "worker/tokenizer/tokenizer_regex.h"

namespace ember::worker {
namespace {

using nlohmann::json;

constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr char kLlama3Pattern[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

std::vector<std::string> Pieces(const char* pattern, absl::string_view text) {
  auto re = TokenizerRegex::FromRegex(pattern, "test");
  EXPECT_TRUE(re.ok()) << re.status();
  std::vector<std::string> out;
  size_t prev = 0;
  for (const auto& [b, e] : re->FindAll(text)) {
    if (b > prev) out.emplace_back(text.substr(prev, b - prev));
    out.emplace_back(text.substr(b, e - b));
    prev = e;
  }
  if (prev < text.size()) out.emplace_back(text.substr(prev));
  return out;
}

using V = std::vector<std::string>;

// Expected splits are those of tokenizers' Split(Regex(...), "isolated") (Oniguruma).
TEST(TokenizerRegexTest, GivesBackTheLastSpaceOfARunBeforeAWord) {
  EXPECT_EQ(Pieces(kGpt2Pattern, "a   b"), (V{"a", "  ", " b"}));
  EXPECT_EQ(Pieces(kGpt2Pattern, "a \t\n b"), (V{"a", " \t\n", " b"}));
  EXPECT_EQ(Pieces(kGpt2Pattern, "a\n\n  b"), (V{"a", "\n\n ", " b"}));
  EXPECT_EQ(Pieces(kLlama3Pattern, "a\n\n  b"), (V{"a", "\n\n", " ", " b"}));
  EXPECT_EQ(Pieces(kLlama3Pattern, "  \n\n\t z  "), (V{"  \n\n", "\t", " z", "  "}));
}

TEST(TokenizerRegexTest, KeepsAWholeRunAtTheEndOrBeforeASingleSpaceMatch) {
  EXPECT_EQ(Pieces(kGpt2Pattern, "a   "), (V{"a", "   "}));
  EXPECT_EQ(Pieces(kGpt2Pattern, "\t\tx"), (V{"\t", "\t", "x"}));  // n == 1: the plain \s+
  EXPECT_EQ(Pieces(kGpt2Pattern, "x  1"), (V{"x", " ", " 1"}));
  EXPECT_EQ(Pieces(kLlama3Pattern, "x  1"), (V{"x", " ", " ", "1"}));
  // The lookahead alternative alone: where it fails nothing else matches.
  EXPECT_EQ(Pieces(R"(\s+(?!\S))", "a  b"), (V{"a", " ", " b"}));
  EXPECT_EQ(Pieces(R"(\s+(?!\S))", "a b  "), (V{"a b", "  "}));
}

TEST(TokenizerRegexTest, TreatsUnicodeWhiteSpaceAsOnigurumaDoes) {
  EXPECT_EQ(Pieces(kGpt2Pattern, "a\u3000\u3000b"), (V{"a", "\u3000", "\u3000", "b"}));
  EXPECT_EQ(Pieces(kLlama3Pattern, "a\u3000\u3000b"), (V{"a", "\u3000", "\u3000b"}));
  EXPECT_EQ(Pieces(kLlama3Pattern, "12345 6"), (V{"123", "45", " ", "6"}));
}

TEST(TokenizerRegexTest, RefusesOtherLookaroundsNamingThePattern) {
  for (const char* pattern : {"a(?=b)", "(?<=a)b", "(?<!a)b", "x|(\\s+(?!\\S))", "\\s+(?!\\S)x"}) {
    auto re = TokenizerRegex::FromRegex(pattern, "pre_tokenizer.pattern");
    ASSERT_FALSE(re.ok()) << pattern;
    EXPECT_NE(re.status().message().find("pre_tokenizer.pattern"), absl::string_view::npos);
    EXPECT_NE(re.status().message().find(pattern), absl::string_view::npos) << re.status();
  }
}

// ---------------------------------------------------------------------------------------
// Hand-made tokenizer.json files.

// A byte-level BPE whose vocabulary is the 256 byte characters (ids 0..255 in byte order)
// plus `extra` tokens made by `merges` (each "a b" over byte-level strings).
json ByteLevelTokenizer(const std::vector<std::pair<std::string, std::string>>& merges = {}) {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) {
    std::string c;
    byte_level::AppendEncoded(std::string(1, static_cast<char>(b)), c);
    vocab[c] = b;
  }
  json merge_list = json::array();
  for (const auto& [a, b] : merges) {
    if (!vocab.contains(a + b)) vocab[a + b] = static_cast<int>(vocab.size());
    merge_list.push_back({a, b});
  }
  return {
      {"added_tokens", json::array()},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merge_list}}},
  };
}

// A Llama 2 style byte-fallback BPE: <unk> <s> </s>, <0x00>..<0xFF>, then `tokens`.
json ByteFallbackTokenizer(const std::vector<std::string>& tokens, const json& merges) {
  json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  char name[8];
  for (int b = 0; b < 256; ++b) {
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    vocab[name] = 3 + b;
  }
  for (const std::string& t : tokens) vocab[t] = static_cast<int>(vocab.size());
  json special = {{"single_word", false},
                  {"lstrip", false},
                  {"rstrip", false},
                  {"normalized", false},
                  {"special", true}};
  json added = json::array();
  for (int id = 0; id < 3; ++id) {
    json t = special;
    t["id"] = id;
    t["content"] = std::vector<std::string>{"<unk>", "<s>", "</s>"}[id];
    added.push_back(t);
  }
  return {
      {"added_tokens", added},
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers",
         {{{"type", "Prepend"}, {"prepend", "\u2581"}},
          {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\u2581"}}}}}},
      {"pre_tokenizer", nullptr},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single",
         {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
          {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders",
         {{{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}},
          {{"type", "ByteFallback"}},
          {{"type", "Fuse"}},
          {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}}},
      {"model",
       {{"type", "BPE"},
        {"unk_token", "<unk>"},
        {"fuse_unk", true},
        {"byte_fallback", true},
        {"vocab", vocab},
        {"merges", merges}}},
  };
}

Tokenizer Load(const json& j, const json& config = nullptr) {
  auto t = Tokenizer::Load(j.dump(), config.is_null() ? "" : config.dump());
  EXPECT_TRUE(t.ok()) << t.status();
  return *std::move(t);
}

std::vector<int32_t> Encode(const Tokenizer& t, absl::string_view text, bool special = false) {
  auto ids = t.Encode(text, special);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? *ids : std::vector<int32_t>{};
}

absl::Status LoadError(const json& j) {
  auto t = Tokenizer::Load(j.dump(), "");
  EXPECT_FALSE(t.ok());
  return t.ok() ? absl::OkStatus() : t.status();
}

void ExpectMentions(const absl::Status& s, std::initializer_list<absl::string_view> parts) {
  for (absl::string_view part : parts) {
    EXPECT_NE(s.message().find(part), absl::string_view::npos) << s << " lacks '" << part << "'";
  }
}

// ---------------------------------------------------------------------------------------

TEST(TokenizerLoadTest, UnsupportedComponentsNameTheirTypeAndPath) {
  json j = ByteLevelTokenizer();
  j["normalizer"] = {{"type", "Sequence"},
                     {"normalizers", {{{"type", "NFC"}}, {{"type", "Lowercase"}}}}};
  absl::Status s = LoadError(j);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  ExpectMentions(s, {"tokenizer.json", "normalizer.normalizers[1]", "\"Lowercase\""});

  j = ByteLevelTokenizer();
  j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", {{{"type", "Whitespace"}}}}};
  ExpectMentions(LoadError(j), {"pre_tokenizer.pretokenizers[0]", "\"Whitespace\""});

  j = ByteLevelTokenizer();
  j["decoder"] = {{"type", "WordPiece"}};
  ExpectMentions(LoadError(j), {"decoder", "\"WordPiece\""});

  j = ByteLevelTokenizer();
  j["post_processor"] = {{"type", "RobertaProcessing"}};
  ExpectMentions(LoadError(j), {"post_processor", "\"RobertaProcessing\""});

  j = ByteLevelTokenizer();
  j["model"]["type"] = "Unigram";
  ExpectMentions(LoadError(j), {"model.type", "\"Unigram\""});
}

TEST(TokenizerLoadTest, BadFieldsNameTheirPath) {
  json j = ByteLevelTokenizer({{"a", "b"}});
  j["model"]["merges"].push_back({"a", "zz-not-a-token"});
  ExpectMentions(LoadError(j), {"model.merges[1]", "zz-not-a-token"});

  j = ByteLevelTokenizer();
  j["model"]["merges"] = {"a b c"};
  ExpectMentions(LoadError(j), {"model.merges[0]"});

  j = ByteLevelTokenizer();
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "\\s"}}}, {"behavior", "Bogus"}};
  ExpectMentions(LoadError(j), {"pre_tokenizer.behavior"});

  j = ByteLevelTokenizer();
  j["pre_tokenizer"] = {
      {"type", "Split"}, {"pattern", {{"Regex", "(?<=x)y"}}}, {"behavior", "Isolated"}};
  ExpectMentions(LoadError(j), {"pre_tokenizer.pattern", "(?<=x)y", "lookaround"});

  j = ByteLevelTokenizer();
  j["model"]["dropout"] = 0.1;
  ExpectMentions(LoadError(j), {"model.dropout"});

  auto bad_json = Tokenizer::Load("{\"model\": ", "");
  ASSERT_FALSE(bad_json.ok());
  ExpectMentions(bad_json.status(), {"tokenizer.json", "invalid JSON"});
}

TEST(TokenizerTest, RefusesInvalidUtf8NamingTheByteOffset) {
  Tokenizer t = Load(ByteLevelTokenizer());
  auto ids = t.Encode("abc\xE2\x82 def", false);  // a truncated euro sign
  ASSERT_FALSE(ids.ok());
  EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
  ExpectMentions(ids.status(), {"byte offset 3", "0xe2"});
  EXPECT_FALSE(t.Encode("\xC0\xAF", false).ok());      // overlong
  EXPECT_FALSE(t.Encode("\xED\xA0\x80", false).ok());  // surrogate
}

TEST(BpeTest, MergesTheLowestRankedPairFirst) {
  // "b c" outranks "a b", so "abc" becomes a + bc and "ab c" never applies.
  Tokenizer t = Load(ByteLevelTokenizer({{"b", "c"}, {"a", "b"}, {"ab", "c"}}));
  const int32_t bc = *t.TokenToId("bc"), ab = *t.TokenToId("ab");
  EXPECT_EQ(Encode(t, "abc"), (std::vector<int32_t>{'a', bc}));
  EXPECT_EQ(Encode(t, "abab"), (std::vector<int32_t>{ab, ab}));
  // The same merges written as "a b" strings give the same ids.
  json j = ByteLevelTokenizer({{"b", "c"}, {"a", "b"}, {"ab", "c"}});
  j["model"]["merges"] = {"b c", "a b", "ab c"};
  EXPECT_EQ(Encode(Load(j), "abc"), (std::vector<int32_t>{'a', bc}));
}

TEST(BpeTest, IgnoreMergesTakesAWholeWordFromTheVocabulary) {
  json j = ByteLevelTokenizer({{"b", "c"}, {"a", "b"}, {"ab", "c"}});
  j["model"]["ignore_merges"] = true;
  Tokenizer t = Load(j);
  EXPECT_EQ(Encode(t, "abc"), (std::vector<int32_t>{*t.TokenToId("abc")}));
}

TEST(BpeTest, FallsBackToBytesThenToTheUnknownToken) {
  json merges = json::array({"\u2581 h", "\u2581h i"});
  Tokenizer t = Load(ByteFallbackTokenizer({"\u2581", "h", "i", "\u2581h", "\u2581hi"}, merges));
  const int32_t hi = *t.TokenToId("\u2581hi");
  // "€" is not in the vocabulary: its three bytes are <0xE2> <0x82> <0xAC>.
  EXPECT_EQ(Encode(t, "hi €", true),
            (std::vector<int32_t>{1, hi, *t.TokenToId("\u2581"), 3 + 0xE2, 3 + 0x82, 3 + 0xAC}));
  // Without byte tokens, unknown characters become one fused <unk>.
  json j = ByteFallbackTokenizer({"\u2581", "h", "i", "\u2581h", "\u2581hi"}, merges);
  j["model"]["byte_fallback"] = false;
  EXPECT_EQ(Encode(Load(j), "hi €€"), (std::vector<int32_t>{hi, *t.TokenToId("\u2581"), 0}));
}

TEST(TokenizerTest, AddedTokensHonourLstripRstripAndSingleWord) {
  json j = ByteLevelTokenizer();
  j["added_tokens"] = {
      {{"id", 300},
       {"content", "<mask>"},
       {"lstrip", true},
       {"rstrip", false},
       {"single_word", false},
       {"normalized", false},
       {"special", true}},
      {{"id", 301},
       {"content", "<sep>"},
       {"lstrip", false},
       {"rstrip", true},
       {"single_word", false},
       {"normalized", false},
       {"special", false}},
      {{"id", 302},
       {"content", "cat"},
       {"lstrip", false},
       {"rstrip", false},
       {"single_word", true},
       {"normalized", true},
       {"special", false}},
  };
  Tokenizer t = Load(j);
  const int32_t space = *t.TokenToId("\u0120");  // "Ġ", the byte-level space
  EXPECT_EQ(Encode(t, "a  <mask>"), (std::vector<int32_t>{'a', 300}));
  EXPECT_EQ(Encode(t, "<sep>  b"), (std::vector<int32_t>{301, 'b'}));
  EXPECT_EQ(Encode(t, "a cat"), (std::vector<int32_t>{'a', space, 302}));
  EXPECT_EQ(Encode(t, "cats"), (std::vector<int32_t>{'c', 'a', 't', 's'}));
  EXPECT_EQ(t.vocab_size(), 303);
  EXPECT_TRUE(t.IsSpecial(300));
  EXPECT_FALSE(t.IsSpecial(301));
  EXPECT_EQ(t.Decode(std::vector<int32_t>{'a', 300, 'b'}, /*skip_special_tokens=*/true), "ab");
}

TEST(TokenizerTest, BosAndEosComeFromTheConfigOrThePostProcessor) {
  json j = ByteFallbackTokenizer({}, json::array());
  Tokenizer from_template = Load(j);
  EXPECT_EQ(from_template.bos_id(), 1);
  EXPECT_EQ(from_template.bos_token(), "<s>");
  EXPECT_FALSE(from_template.eos_id().has_value());
  Tokenizer from_config = Load(j, {{"bos_token", {{"content", "<s>"}, {"__type", "AddedToken"}}},
                                   {"eos_token", "</s>"},
                                   {"chat_template", "{{ bos_token }}"}});
  EXPECT_EQ(from_config.eos_id(), 2);
  EXPECT_EQ(from_config.chat_template(), "{{ bos_token }}");
  EXPECT_EQ(Encode(from_config, "", /*special=*/true), (std::vector<int32_t>{1}));
}

TEST(TokenizerTest, EncodesTheSameFromManyThreads) {
  // The BPE word cache is the only shared mutable state; it must not change results.
  Tokenizer t = Load(ByteLevelTokenizer({{"a", "b"}, {"ab", "c"}, {"\u0120", "ab"}}));
  std::vector<std::string> texts;
  for (int i = 0; i < 200; ++i) texts.push_back("abc ab " + std::to_string(i) + " abcabc x");
  std::vector<std::vector<int32_t>> expected;
  for (const std::string& text : texts) expected.push_back(Encode(t, text));
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&, k] {
      for (int round = 0; round < 20; ++round) {
        for (size_t i = 0; i < texts.size(); ++i) {
          auto ids = t.Encode(texts[(i + k * 17) % texts.size()], false);
          if (!ids.ok() || *ids != expected[(i + k * 17) % texts.size()]) ++mismatches[k];
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(mismatches, std::vector<int>(4, 0));
}

// ---------------------------------------------------------------------------------------
// Streaming decode.

std::vector<std::string> Stream(const Tokenizer& t, const std::vector<int32_t>& ids,
                                bool skip_special = false) {
  TokenStreamDecoder d(t, skip_special);
  std::vector<std::string> deltas;
  for (int32_t id : ids) deltas.push_back(d.Push(id));
  deltas.push_back(d.Finish());
  return deltas;
}

TEST(TokenStreamDecoderTest, HoldsByteLevelBytesUntilTheCharacterIsComplete) {
  Tokenizer t = Load(ByteLevelTokenizer());
  const std::vector<int32_t> euro_x = {0xE2, 0x82, 0xAC, 'x'};
  EXPECT_EQ(Encode(t, "\u20acx"), euro_x);  // no merges: one token per byte
  EXPECT_EQ(Stream(t, euro_x), (V{"", "", "\u20ac", "x", ""}));
  // A character cut off by the end of the stream becomes one U+FFFD, as in Decode.
  EXPECT_EQ(Stream(t, {'a', 0xF0, 0x9F}), (V{"a", "", "", "\uFFFD"}));
  EXPECT_EQ(t.Decode(std::vector<int32_t>{'a', 0xF0, 0x9F}, false), "a\uFFFD");
  // A byte that cannot continue the sequence ends it: one U+FFFD per maximal subpart.
  EXPECT_EQ(Stream(t, {0xE2, 0x82, 'y', 0x80}), (V{"", "", "\uFFFDy", "\uFFFD", ""}));
}

TEST(TokenStreamDecoderTest, HoldsAByteFallbackRunUntilItEnds) {
  Tokenizer t = Load(ByteFallbackTokenizer({"\u2581x", "\u2581"}, json::array()));
  const int32_t x = *t.TokenToId("\u2581x");
  // <0xE2> <0x82> <0xAC> is "€"; the run is released by the next ordinary token, since a
  // later invalid byte would turn the whole run into U+FFFD.
  EXPECT_EQ(Stream(t, {3 + 0xE2, 3 + 0x82, 3 + 0xAC, x}), (V{"", "", "", "\u20ac x", ""}));
  EXPECT_EQ(Stream(t, {3 + 0xE2, 3 + 0x82, x}), (V{"", "", "\uFFFD\uFFFD x", ""}));
  EXPECT_EQ(Stream(t, {x, 3 + 0xE2, 3 + 0x82, 3 + 0xAC}), (V{"x", "", "", "", "\u20ac"}));
  // Strip removes the first leading space only: the prepended "▁" of the first word.
  EXPECT_EQ(t.Decode(Encode(t, " x x", true), /*skip_special_tokens=*/true), " x x");
  EXPECT_EQ(Stream(t, {1, x, x}, /*skip_special=*/true), (V{"", "x", " x", ""}));
}

TEST(TokenStreamDecoderTest, DeltasAddUpToDecodeForRandomIds) {
  Tokenizer byte_level = Load(ByteLevelTokenizer({{"a", "b"}, {"\u0120", "a"}}));
  Tokenizer fallback = Load(ByteFallbackTokenizer({"\u2581x", "\u2581", "y"}, json::array()));
  std::mt19937 rng(42);
  for (const Tokenizer* t : {&byte_level, &fallback}) {
    for (int trial = 0; trial < 500; ++trial) {
      std::vector<int32_t> ids(1 + rng() % 12);
      for (int32_t& id : ids) id = static_cast<int32_t>(rng() % (t->vocab_size() + 3));
      for (bool skip : {false, true}) {
        std::string joined;
        for (const std::string& delta : Stream(*t, ids, skip)) joined += delta;
        EXPECT_EQ(joined, t->Decode(ids, skip));
      }
    }
  }
}

}  // namespace
}  // namespace ember::worker

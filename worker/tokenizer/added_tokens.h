// tokenizer.json's "added_tokens": tokens matched in the text before anything else
// (special tokens such as <|eot_id|>, and user-added words), with Hugging Face's
// lstrip / rstrip / single_word / normalized rules.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"

namespace ember::worker {

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool single_word = false;  // match only where no word character touches it
  bool lstrip = false;       // also take the whitespace before it
  bool rstrip = false;       // also take the whitespace after it
  bool normalized = true;    // matched in normalized text (else in the raw input)
  bool special = false;      // skipped by decode with skip_special_tokens
};

// A run of text after the added tokens were split out: either an added token's id or
// text still to be tokenized.
struct TextSegment {
  std::optional<int32_t> token_id;
  std::string text;
  bool at_input_start = false;  // the run begins at offset 0 of the original input
};

class AddedVocabulary {
 public:
  // `content_for_matching` is the content as it appears in the text being searched: the
  // content itself, or for a normalized token the content normalized.
  void Add(const AddedToken& token, const std::string& content_for_matching);

  // Splits `text` at the leftmost-longest matches of the tokens with normalized ==
  // `normalized` (as Aho-Corasick's LeftmostLongest does for HF), applying each token's
  // rules; `at_input_start` says whether `text` begins the input. Empty runs are dropped.
  std::vector<TextSegment> Split(absl::string_view text, bool normalized,
                                 bool at_input_start) const;

 private:
  // A byte trie of the patterns; node 0 is the root (without edges: no patterns).
  struct Trie {
    absl::flat_hash_map<uint64_t, int32_t> edges;  // (node << 8 | byte) -> child
    std::vector<int32_t> token_at;                 // index into tokens_, or -1
  };
  const Trie& trie(bool normalized) const { return normalized ? normalized_ : raw_; }
  // The longest pattern that starts at `pos`: (end, token index), or nullopt.
  std::optional<std::pair<size_t, int32_t>> LongestAt(const Trie& trie, absl::string_view text,
                                                      size_t pos) const;

  std::vector<AddedToken> tokens_;
  Trie raw_{{}, {-1}};
  Trie normalized_{{}, {-1}};
};

}  // namespace ember::worker

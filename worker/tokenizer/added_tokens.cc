// Added-token matching as Hugging Face's AddedVocabulary::find_matches does it.
#include "worker/tokenizer/added_tokens.h"

#include <algorithm>

#include "common/utf8.h"

namespace ember::worker {

void AddedVocabulary::Add(const AddedToken& token, const std::string& content_for_matching) {
  if (content_for_matching.empty()) return;
  Trie& t = token.normalized ? normalized_ : raw_;
  int32_t node = 0;
  for (char c : content_for_matching) {
    const uint64_t key = (static_cast<uint64_t>(node) << 8) | static_cast<uint8_t>(c);
    auto [it, inserted] = t.edges.try_emplace(key, static_cast<int32_t>(t.token_at.size()));
    if (inserted) t.token_at.push_back(-1);
    node = it->second;
  }
  // A repeated content keeps its first token, as the first pattern wins in Aho-Corasick.
  if (t.token_at[node] < 0) {
    t.token_at[node] = static_cast<int32_t>(tokens_.size());
    tokens_.push_back(token);
  }
}

std::optional<std::pair<size_t, int32_t>> AddedVocabulary::LongestAt(const Trie& trie,
                                                                     absl::string_view text,
                                                                     size_t pos) const {
  std::optional<std::pair<size_t, int32_t>> best;
  int32_t node = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    auto it = trie.edges.find((static_cast<uint64_t>(node) << 8) | static_cast<uint8_t>(text[i]));
    if (it == trie.edges.end()) break;
    node = it->second;
    if (trie.token_at[node] >= 0) best = {i + 1, trie.token_at[node]};
  }
  return best;
}

std::vector<TextSegment> AddedVocabulary::Split(absl::string_view text, bool normalized,
                                                bool at_input_start) const {
  const Trie& t = trie(normalized);
  std::vector<TextSegment> out;
  auto push_text = [&](size_t begin, size_t end) {
    if (end > begin) {
      out.push_back({std::nullopt, std::string(text.substr(begin, end - begin)),
                     at_input_start && begin == 0});
    }
  };
  size_t done = 0;  // end of the last split emitted
  for (size_t pos = 0; !t.edges.empty() && pos < text.size();) {
    const auto match = LongestAt(t, text, pos);
    if (!match) {
      ++pos;
      continue;
    }
    size_t start = pos;
    size_t stop = match->first;
    const AddedToken& token = tokens_[match->second];
    pos = stop;  // the search resumes after the match, whatever the rules below decide
    if (token.single_word) {
      size_t p = start;
      const bool word_before = start > 0 && utf8::IsWordChar(utf8::Prev(text, p));
      p = stop;
      const bool word_after = stop < text.size() && utf8::IsWordChar(utf8::Next(text, p));
      if (word_before || word_after) continue;
    }
    if (token.lstrip) {
      size_t s = start;
      for (size_t p = s; s > 0 && utf8::IsWhiteSpace(utf8::Prev(text, p)); s = p) {
      }
      start = std::max(s, done);
    }
    if (token.rstrip) {
      while (stop < text.size()) {
        size_t p = stop;
        if (!utf8::IsWhiteSpace(utf8::Next(text, p))) break;
        stop = p;
      }
    }
    push_text(done, start);
    out.push_back(
        {token.id, std::string(text.substr(start, stop - start)), at_input_start && start == 0});
    done = stop;
  }
  push_text(done, text.size());
  return out;
}

}  // namespace ember::worker

// The regexes of tokenizer.json's pre-tokenizers and normalizers, written for Oniguruma
// (which Hugging Face tokenizers uses), run through RE2 with the translation and the one
// lookahead they need.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace re2 {
class RE2;
}

namespace ember::worker {

// An Oniguruma pattern translated for RE2 (which has no lookaround and whose classes are
// ASCII-only):
//   \s \S      -> Unicode White_Space and its complement (what Oniguruma matches)
//   \d \w      -> \p{Nd} and [\p{L}\p{M}\p{Nd}\p{Pc}] (Oniguruma's Unicode classes)
//   ( and (?<name>  -> (?: (only our own group captures)
// and the negative lookahead of the GPT-2 / Llama 3 / Qwen2 patterns, `\s+(?!\S)`, as a
// whole top-level alternative. Oniguruma tries the alternatives in order at each start
// position; for a whitespace run of n characters followed by a non-space that alternative
// matches n-1 characters (backtracking until the lookahead holds), and for n == 1 it
// fails, so the later alternatives are tried at the same position. RE2 runs the pattern
// with the lookahead dropped and the alternative captured; when the capture matched a run
// followed by a non-space, the match is shortened by the run's last character (n >= 2),
// or (n == 1) the pattern without that alternative is tried anchored at the same
// position and, if it fails too, the search resumes one character later. Dropping the
// lookahead only admits more matches, so no earlier start position is missed: the result
// is Oniguruma's. Any other lookaround is an error.
class TokenizerRegex {
 public:
  // `pattern` is a regex in Oniguruma syntax; `where` names it in errors.
  static absl::StatusOr<TokenizerRegex> FromRegex(absl::string_view pattern,
                                                  absl::string_view where);
  // tokenizer.json's {"String": ...} or {"Regex": ...} pattern object at `path`.
  static absl::StatusOr<TokenizerRegex> FromJson(const nlohmann::json& j, const std::string& path);

  TokenizerRegex(TokenizerRegex&&) noexcept;
  TokenizerRegex& operator=(TokenizerRegex&&) noexcept;
  ~TokenizerRegex();

  // The non-overlapping matches in `text` as [begin, end) byte offsets, in order, as
  // Oniguruma's search iterator yields them (an empty match right at the end of the
  // previous match is skipped). `text` must be well-formed UTF-8.
  std::vector<std::pair<size_t, size_t>> FindAll(absl::string_view text) const;

  // `text` with every match replaced by `content` (a copy of `text` when none matches).
  std::string ReplaceAll(absl::string_view text, absl::string_view content) const;

  // The string of a {"String": ...} pattern; nullopt for a regex.
  const std::optional<std::string>& literal() const { return literal_; }

 private:
  TokenizerRegex() = default;
  // A literal string: found by plain search; an empty one goes through RE2 (empty
  // matches, as an empty regex gives).
  static absl::StatusOr<TokenizerRegex> FromLiteral(absl::string_view literal,
                                                    absl::string_view where);

  std::optional<std::string> literal_;
  std::unique_ptr<re2::RE2> regex_;  // null for a non-empty literal
  // The pattern without its `\s+(?!\S)` alternative; null when it has none.
  std::unique_ptr<re2::RE2> without_lookahead_;
};

// tokenizer.json's Replace (a normalizer and a decoder): every match of "pattern" becomes
// "content".
struct Replacement {
  TokenizerRegex regex;
  std::string content;
};
absl::StatusOr<Replacement> ParseReplace(const nlohmann::json& j, const std::string& path);

}  // namespace ember::worker

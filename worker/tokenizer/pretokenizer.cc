// The pre-tokenizers of tokenizer.json that the supported model families use, with the
// split semantics of Hugging Face tokenizers (NormalizedString::split and the
// pre_tokenizers/{split,byte_level,metaspace,digits,sequence}.rs components).
#include "worker/tokenizer/pretokenizer.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "worker/tokenizer/byte_level.h"
#include "worker/tokenizer/tokenizer_json.h"
#include "worker/tokenizer/tokenizer_regex.h"
#include "common/utf8.h"

namespace ember::worker {
namespace {

namespace tj = tokenizer_json;
using nlohmann::json;

// GPT-2's pre-tokenization pattern (ByteLevel with use_regex).
constexpr absl::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// A run of the piece's text, [begin, end), and whether the pattern matched it.
struct Span {
  size_t begin, end;
  bool is_match;
};

// The spans covering a text of `size` bytes, given the pattern's matches.
std::vector<Span> SpansOfMatches(size_t size, const std::vector<std::pair<size_t, size_t>>& matches,
                                 bool invert) {
  std::vector<Span> spans;
  size_t prev = 0;
  for (const auto& [begin, end] : matches) {
    if (prev != begin) spans.push_back({prev, begin, invert});
    spans.push_back({begin, end, !invert});
    prev = end;
  }
  if (prev != size) spans.push_back({prev, size, invert});
  return spans;
}

// The spans of a character predicate: each matching character is a match of its own.
template <typename Predicate>
std::vector<Span> SpansOfChars(absl::string_view text, Predicate matches) {
  std::vector<Span> spans;
  size_t prev = 0;
  for (size_t pos = 0; pos < text.size();) {
    const size_t begin = pos;
    const char32_t c = utf8::Next(text, pos);
    if (!matches(c)) continue;
    if (prev < begin) spans.push_back({prev, begin, false});
    spans.push_back({begin, pos, true});
    prev = pos;
  }
  if (prev < text.size()) spans.push_back({prev, text.size(), false});
  return spans;
}

// Whether `behavior` keeps the span `a` and the span `b` that follows it in one piece.
bool Joined(Behavior behavior, const Span& a, const Span& b) {
  switch (behavior) {
    case Behavior::kContiguous:
      return a.is_match == b.is_match;
    case Behavior::kMergedWithPrevious:
      return !a.is_match && b.is_match;
    case Behavior::kMergedWithNext:
      return a.is_match && !b.is_match;
    case Behavior::kRemoved:
    case Behavior::kIsolated:
      break;
  }
  return false;
}

// Cuts `piece` along `spans` as `behavior` says (HF's NormalizedString::split): each piece
// is a run of joined spans; kRemoved drops the matches.
void SplitSpans(const TextPiece& piece, const std::vector<Span>& spans, Behavior behavior,
                std::vector<TextPiece>& out) {
  size_t begin = 0;  // where the current piece begins
  for (size_t i = 0; i < spans.size(); ++i) {
    const Span& s = spans[i];
    if (i == 0 || !Joined(behavior, spans[i - 1], s)) begin = s.begin;
    if (i + 1 < spans.size() && Joined(behavior, s, spans[i + 1])) continue;
    if (begin == s.end || (behavior == Behavior::kRemoved && s.is_match)) continue;
    out.push_back({piece.text.substr(begin, s.end - begin), piece.at_input_start && begin == 0});
  }
}

// A pre-tokenizer that splits each piece by itself.
class PieceSplitter : public PreTokenizer {
 public:
  void Apply(std::vector<TextPiece>& pieces) const final {
    std::vector<TextPiece> out;
    out.reserve(pieces.size());
    for (const TextPiece& piece : pieces) Split(piece, out);
    std::erase_if(out, [](const TextPiece& p) { return p.text.empty(); });
    pieces = std::move(out);
  }

 protected:
  // Appends the pieces `piece` splits into to `out`.
  virtual void Split(const TextPiece& piece, std::vector<TextPiece>& out) const = 0;
};

class SplitPreTokenizer : public PieceSplitter {
 public:
  SplitPreTokenizer(TokenizerRegex pattern, Behavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}

 protected:
  void Split(const TextPiece& piece, std::vector<TextPiece>& out) const override {
    SplitSpans(piece, SpansOfMatches(piece.text.size(), pattern_.FindAll(piece.text), invert_),
               behavior_, out);
  }

 private:
  TokenizerRegex pattern_;
  Behavior behavior_;
  bool invert_;
};

// GPT-2's pre-tokenizer: optionally a leading space and the GPT-2 split, then every byte
// shown in the byte-level alphabet.
class ByteLevelPreTokenizer : public PieceSplitter {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::optional<TokenizerRegex> regex)
      : add_prefix_space_(add_prefix_space), regex_(std::move(regex)) {}

 protected:
  void Split(const TextPiece& piece, std::vector<TextPiece>& out) const override {
    TextPiece spaced = piece;
    if (add_prefix_space_ && !absl::StartsWith(spaced.text, " "))
      spaced.text = absl::StrCat(" ", spaced.text);
    std::vector<TextPiece> words;
    if (regex_) {
      SplitSpans(spaced, SpansOfMatches(spaced.text.size(), regex_->FindAll(spaced.text), false),
                 Behavior::kIsolated, words);
    } else {
      words.push_back(std::move(spaced));
    }
    for (TextPiece& word : words) {
      TextPiece encoded{std::string(), word.at_input_start};
      byte_level::AppendEncoded(word.text, encoded.text);
      out.push_back(std::move(encoded));
    }
  }

 private:
  bool add_prefix_space_;
  std::optional<TokenizerRegex> regex_;
};

using tj::PrependScheme;

// SentencePiece's convention: spaces become "▁", a "▁" is prepended, and (with `split`)
// every "▁" starts a new word.
class MetaspacePreTokenizer : public PieceSplitter {
 public:
  MetaspacePreTokenizer(char32_t replacement, PrependScheme scheme, bool split)
      : replacement_char_(replacement), scheme_(scheme), split_(split) {
    utf8::Append(replacement, replacement_);
  }

 protected:
  void Split(const TextPiece& piece, std::vector<TextPiece>& out) const override {
    TextPiece p{absl::StrReplaceAll(piece.text, {{" ", replacement_}}), piece.at_input_start};
    const bool prepend = scheme_ == PrependScheme::kAlways ||
                         (scheme_ == PrependScheme::kFirst && piece.at_input_start);
    if (prepend && !absl::StartsWith(p.text, replacement_)) p.text.insert(0, replacement_);
    if (!split_) {
      out.push_back(std::move(p));
      return;
    }
    SplitSpans(p, SpansOfChars(p.text, [&](char32_t c) { return c == replacement_char_; }),
               Behavior::kMergedWithNext, out);
  }

 private:
  char32_t replacement_char_;
  std::string replacement_;  // its UTF-8
  PrependScheme scheme_;
  bool split_;
};

// Numbers apart from the rest: each digit alone, or runs of digits.
class DigitsPreTokenizer : public PieceSplitter {
 public:
  explicit DigitsPreTokenizer(bool individual) : individual_(individual) {}

 protected:
  void Split(const TextPiece& piece, std::vector<TextPiece>& out) const override {
    SplitSpans(piece, SpansOfChars(piece.text, utf8::IsNumeric),
               individual_ ? Behavior::kIsolated : Behavior::kContiguous, out);
  }

 private:
  bool individual_;
};

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}
  void Apply(std::vector<TextPiece>& pieces) const override {
    for (const auto& step : steps_) step->Apply(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

absl::StatusOr<Behavior> ParseBehavior(const json& j, const std::string& path) {
  static constexpr std::pair<absl::string_view, Behavior> kNames[] = {
      {"Removed", Behavior::kRemoved},
      {"Isolated", Behavior::kIsolated},
      {"MergedWithPrevious", Behavior::kMergedWithPrevious},
      {"MergedWithNext", Behavior::kMergedWithNext},
      {"Contiguous", Behavior::kContiguous},
  };
  std::string name;
  EMBER_ASSIGN_OR_RETURN(name, tj::String(j, path, "behavior"));
  for (const auto& [known, behavior] : kNames) {
    if (name == known) return behavior;
  }
  return tj::Error(tj::Child(path, "behavior"),
                   "must be Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous");
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> ParseMetaspace(const json& j,
                                                             const std::string& path) {
  char32_t replacement;
  EMBER_ASSIGN_OR_RETURN(replacement, tj::Char(j, path, "replacement", U'\u2581'));
  PrependScheme scheme;
  EMBER_ASSIGN_OR_RETURN(scheme, tj::ParsePrependScheme(j, path));
  bool split;
  EMBER_ASSIGN_OR_RETURN(split, tj::Bool(j, path, "split", true));
  return std::make_unique<MetaspacePreTokenizer>(replacement, scheme, split);
}

}  // namespace

absl::StatusOr<std::unique_ptr<PreTokenizer>> PreTokenizer::FromJson(const json& j,
                                                                     const std::string& path) {
  std::string type;
  EMBER_ASSIGN_OR_RETURN(type, tj::Type(j, path));
  if (type == "Split") {
    const json* pattern_json;
    EMBER_ASSIGN_OR_RETURN(pattern_json, tj::Object(j, path, "pattern"));
    std::optional<TokenizerRegex> pattern;
    EMBER_ASSIGN_OR_RETURN(pattern,
                           TokenizerRegex::FromJson(*pattern_json, tj::Child(path, "pattern")));
    Behavior behavior;
    EMBER_ASSIGN_OR_RETURN(behavior, ParseBehavior(j, path));
    bool invert;
    EMBER_ASSIGN_OR_RETURN(invert, tj::Bool(j, path, "invert", false));
    return std::make_unique<SplitPreTokenizer>(*std::move(pattern), behavior, invert);
  }
  if (type == "ByteLevel") {
    bool add_prefix_space, use_regex;
    EMBER_ASSIGN_OR_RETURN(add_prefix_space, tj::Bool(j, path, "add_prefix_space", true));
    EMBER_ASSIGN_OR_RETURN(use_regex, tj::Bool(j, path, "use_regex", true));
    std::optional<TokenizerRegex> regex;
    if (use_regex) {
      EMBER_ASSIGN_OR_RETURN(regex, TokenizerRegex::FromRegex(kGpt2Pattern, path));
    }
    return std::make_unique<ByteLevelPreTokenizer>(add_prefix_space, std::move(regex));
  }
  if (type == "Metaspace") return ParseMetaspace(j, path);
  if (type == "Digits") {
    bool individual;
    EMBER_ASSIGN_OR_RETURN(individual, tj::Bool(j, path, "individual_digits", false));
    return std::make_unique<DigitsPreTokenizer>(individual);
  }
  if (type == "Sequence") {
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    EMBER_ASSIGN_OR_RETURN(steps, tj::ParseEach<PreTokenizer>(j, path, "pretokenizers", &FromJson));
    return std::make_unique<SequencePreTokenizer>(std::move(steps));
  }
  return tj::UnsupportedType(path, "pre-tokenizer", type,
                             "Split, ByteLevel, Metaspace, Digits, Sequence");
}

}  // namespace ember::worker

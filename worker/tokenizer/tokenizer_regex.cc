// Oniguruma-to-RE2 translation of pre-tokenizer patterns and the match iterator with the
// `\s+(?!\S)` emulation described in tokenizer_regex.h.
#include "worker/tokenizer/tokenizer_regex.h"

#include <re2/re2.h>

#include <algorithm>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "worker/tokenizer/tokenizer_json.h"
#include "common/utf8.h"

namespace ember::worker {
namespace {

// Unicode White_Space as an RE2 class body: Oniguruma's \s on UTF-8 text.
constexpr absl::string_view kWhiteSpace =
    "\\t-\\r\\x20\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}"
    "\\x{205F}\\x{3000}";
// Oniguruma's Unicode \w: letters, marks, decimal digits, connector punctuation.
constexpr absl::string_view kWord = "\\p{L}\\p{M}\\p{Nd}\\p{Pc}";
constexpr absl::string_view kLookaheadAlternative = "\\s+(?!\\S)";

struct Translation {
  std::string pattern;
  std::string without_lookahead;  // empty when there is no lookahead alternative
  bool has_lookahead = false;
};

absl::Status PatternError(absl::string_view where, absl::string_view pattern,
                          absl::string_view problem) {
  return tokenizer_json::Error(where, absl::StrCat("regex \"", pattern, "\": ", problem));
}

// Copies an escape with a braced argument (\p{L}, \x{200B}) or a plain one (\n, \x41).
size_t CopyEscape(absl::string_view p, size_t i, std::string& out) {
  const char e = p[i + 1];
  size_t end = i + 2;
  if ((e == 'p' || e == 'P' || e == 'x') && end < p.size() && p[end] == '{') {
    const size_t close = p.find('}', end);
    end = close == absl::string_view::npos ? p.size() : close + 1;
  } else if (e == 'x') {
    end = std::min(p.size(), end + 2);
  }
  absl::StrAppend(&out, p.substr(i, end - i));
  return end;
}

absl::StatusOr<Translation> Translate(absl::string_view p, absl::string_view where) {
  Translation t;
  std::string& out = t.pattern;
  int depth = 0;
  bool in_class = false;
  size_t alternative_start = 0;  // where the current top-level alternative begins in `out`
  size_t lookahead_begin = 0, lookahead_end = 0;
  for (size_t i = 0; i < p.size();) {
    const char c = p[i];
    if (in_class) {
      if (c == '\\' && i + 1 < p.size()) {
        const char e = p[i + 1];
        if (e == 's') {
          absl::StrAppend(&out, kWhiteSpace);
        } else if (e == 'd') {
          out.append("\\p{Nd}");
        } else if (e == 'w') {
          absl::StrAppend(&out, kWord);
        } else if (e == 'S' || e == 'D' || e == 'W') {
          return PatternError(
              where, p,
              absl::StrCat("\\", std::string(1, e), " inside a character class is not supported"));
        } else {
          i = CopyEscape(p, i, out);
          continue;
        }
        i += 2;
      } else if (c == '[' && i + 1 < p.size() && p[i + 1] == ':') {
        const size_t close = p.find(":]", i + 2);  // POSIX class such as [:alpha:]
        if (close == absl::string_view::npos)
          return PatternError(where, p, "unterminated [:class:]");
        absl::StrAppend(&out, p.substr(i, close + 2 - i));
        i = close + 2;
      } else if (c == '[') {
        return PatternError(where, p, "nested character classes are not supported");
      } else {
        if (c == ']') in_class = false;
        out += c;
        ++i;
      }
      continue;
    }
    if (absl::StartsWith(p.substr(i), kLookaheadAlternative)) {
      const size_t next = i + kLookaheadAlternative.size();
      if (depth != 0 || out.size() != alternative_start || t.has_lookahead ||
          (next < p.size() && p[next] != '|')) {
        return PatternError(where, p,
                            "\\s+(?!\\S) is supported only as a whole top-level alternative, once");
      }
      t.has_lookahead = true;
      lookahead_begin = out.size();
      absl::StrAppend(&out, "([", kWhiteSpace, "]+)");
      lookahead_end = out.size();
      i = next;
      continue;
    }
    switch (c) {
      case '\\': {
        if (i + 1 >= p.size()) return PatternError(where, p, "trailing backslash");
        const char e = p[i + 1];
        if (e == 's' || e == 'S') {
          absl::StrAppend(&out, e == 's' ? "[" : "[^", kWhiteSpace, "]");
        } else if (e == 'd' || e == 'D') {
          out.append(e == 'd' ? "\\p{Nd}" : "\\P{Nd}");
        } else if (e == 'w' || e == 'W') {
          absl::StrAppend(&out, e == 'w' ? "[" : "[^", kWord, "]");
        } else {
          i = CopyEscape(p, i, out);
          continue;
        }
        i += 2;
        continue;
      }
      case '[':
        in_class = true;
        out += '[';
        ++i;
        if (i < p.size() && p[i] == '^') out += p[i++];
        if (i < p.size() && p[i] == ']') out += p[i++];  // a leading ']' is literal
        continue;
      case '(':
        ++depth;
        if (i + 1 < p.size() && p[i + 1] == '?') {
          const absl::string_view rest = p.substr(i + 2);
          if (absl::StartsWith(rest, "=") || absl::StartsWith(rest, "!") ||
              absl::StartsWith(rest, "<=") || absl::StartsWith(rest, "<!")) {
            return PatternError(where, p, "lookaround other than \\s+(?!\\S) is not supported");
          }
          if (absl::StartsWith(rest, "<")) {  // named group: only our own group captures
            const size_t close = p.find('>', i);
            if (close == absl::string_view::npos) return PatternError(where, p, "bad group name");
            out.append("(?:");
            i = close + 1;
            continue;
          }
          out.append("(?");
          i += 2;
          continue;
        }
        out.append("(?:");
        ++i;
        continue;
      case ')':
        --depth;
        break;
      case '|':
        if (depth == 0) alternative_start = out.size() + 1;
        break;
      default:
        break;
    }
    out += c;
    ++i;
  }
  if (t.has_lookahead) {
    t.without_lookahead = out;
    if (lookahead_begin > 0) {
      t.without_lookahead.erase(lookahead_begin - 1, lookahead_end - lookahead_begin + 1);
    } else if (lookahead_end < out.size()) {
      t.without_lookahead.erase(0, lookahead_end + 1);
    } else {
      t.without_lookahead = "[^\\x00-\\x{10FFFF}]";  // the lone alternative: never matches
    }
  }
  return t;
}

absl::StatusOr<std::unique_ptr<RE2>> Compile(const std::string& pattern, absl::string_view where,
                                             absl::string_view original) {
  RE2::Options options;
  options.set_log_errors(false);
  auto re = std::make_unique<RE2>(pattern, options);
  if (!re->ok()) {
    return PatternError(where, original, absl::StrCat("RE2 rejects it: ", re->error()));
  }
  return re;
}

}  // namespace

TokenizerRegex::TokenizerRegex(TokenizerRegex&&) noexcept = default;
TokenizerRegex& TokenizerRegex::operator=(TokenizerRegex&&) noexcept = default;
TokenizerRegex::~TokenizerRegex() = default;

absl::StatusOr<TokenizerRegex> TokenizerRegex::FromRegex(absl::string_view pattern,
                                                         absl::string_view where) {
  Translation t;
  EMBER_ASSIGN_OR_RETURN(t, Translate(pattern, where));
  TokenizerRegex r;
  EMBER_ASSIGN_OR_RETURN(r.regex_, Compile(t.pattern, where, pattern));
  if (t.has_lookahead) {
    EMBER_ASSIGN_OR_RETURN(r.without_lookahead_, Compile(t.without_lookahead, where, pattern));
  }
  return r;
}

absl::StatusOr<TokenizerRegex> TokenizerRegex::FromLiteral(absl::string_view literal,
                                                           absl::string_view where) {
  TokenizerRegex r;
  r.literal_ = std::string(literal);
  if (literal.empty()) EMBER_ASSIGN_OR_RETURN(r.regex_, Compile("", where, literal));
  return r;
}

absl::StatusOr<TokenizerRegex> TokenizerRegex::FromJson(const nlohmann::json& j,
                                                        const std::string& path) {
  if (const auto* s = tokenizer_json::Find(j, "String"); s != nullptr && s->is_string()) {
    return FromLiteral(s->get<std::string>(), path);
  }
  if (const auto* r = tokenizer_json::Find(j, "Regex"); r != nullptr && r->is_string()) {
    return FromRegex(r->get<std::string>(), path);
  }
  return tokenizer_json::Error(path, "must be {\"String\": ...} or {\"Regex\": ...}");
}

std::vector<std::pair<size_t, size_t>> TokenizerRegex::FindAll(absl::string_view text) const {
  std::vector<std::pair<size_t, size_t>> matches;
  if (!regex_) {  // a non-empty literal: plain search
    const size_t n = literal_->size();
    for (size_t k = 0; (k = text.find(*literal_, k)) != absl::string_view::npos; k += n) {
      matches.emplace_back(k, k + n);
    }
    return matches;
  }
  const int groups = without_lookahead_ ? 2 : 1;
  re2::StringPiece found[2];
  const re2::StringPiece input(text.data(), text.size());
  std::optional<size_t> last_end;
  size_t pos = 0;
  while (pos <= text.size() &&
         regex_->Match(input, pos, text.size(), RE2::UNANCHORED, found, groups)) {
    const size_t begin = found[0].data() - text.data();
    size_t end = begin + found[0].size();
    if (groups == 2 && found[1].data() != nullptr && end < text.size()) {
      // The \s+(?!\S) alternative matched a run that a non-space follows.
      const size_t last = utf8::PreviousStart(text, end);
      if (last > begin) {
        end = last;  // give the run's last character back
      } else {
        re2::StringPiece later;
        if (!without_lookahead_->Match(input, begin, text.size(), RE2::ANCHOR_START, &later, 1)) {
          pos = begin + utf8::SequenceLength(text, begin);
          continue;
        }
        end = begin + later.size();
      }
    }
    if (begin == end) {
      if (!(last_end && *last_end == begin)) {
        matches.emplace_back(begin, end);
        last_end = end;
      }
      if (begin >= text.size()) break;
      pos = begin + utf8::SequenceLength(text, begin);
      continue;
    }
    matches.emplace_back(begin, end);
    last_end = end;
    pos = end;
  }
  return matches;
}

std::string TokenizerRegex::ReplaceAll(absl::string_view text, absl::string_view content) const {
  const auto matches = FindAll(text);
  if (matches.empty()) return std::string(text);
  std::string out;
  out.reserve(text.size());
  size_t done = 0;
  for (const auto& [begin, end] : matches) {
    absl::StrAppend(&out, text.substr(done, begin - done), content);
    done = end;
  }
  absl::StrAppend(&out, text.substr(done));
  return out;
}

absl::StatusOr<Replacement> ParseReplace(const nlohmann::json& j, const std::string& path) {
  const nlohmann::json* pattern;
  EMBER_ASSIGN_OR_RETURN(pattern, tokenizer_json::Object(j, path, "pattern"));
  std::optional<TokenizerRegex> regex;
  EMBER_ASSIGN_OR_RETURN(
      regex, TokenizerRegex::FromJson(*pattern, tokenizer_json::Child(path, "pattern")));
  std::string content;
  EMBER_ASSIGN_OR_RETURN(content, tokenizer_json::String(j, path, "content"));
  return Replacement{*std::move(regex), std::move(content)};
}

}  // namespace ember::worker

// Jinja2's lexer (jinja2/lexer.py) for the default delimiters, with trim_blocks,
// lstrip_blocks and keep_trailing_newline=False, as transformers configures it.
#include "worker/tokenizer/jinja/lexer.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "common/utf8.h"

namespace ember::jinja {
namespace {

bool IsWhitespace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}
bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsNameStart(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool IsNameChar(char c) { return IsNameStart(c) || IsDigit(c); }

// Python's string escapes (Jinja decodes literals with "unicode-escape"); an unknown escape
// keeps its backslash.
std::string Unescape(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\' || i + 1 == s.size()) {
      out += s[i];
      continue;
    }
    const char c = s[++i];
    const size_t hex_digits = c == 'x' ? 2 : c == 'u' ? 4 : c == 'U' ? 8 : 0;
    if (hex_digits && i + hex_digits < s.size() &&
        std::all_of(s.begin() + i + 1, s.begin() + i + 1 + hex_digits,
                    [](char h) { return std::isxdigit(static_cast<unsigned char>(h)); })) {
      ember::worker::utf8::Append(
          std::strtoul(std::string(s.substr(i + 1, hex_digits)).c_str(), nullptr, 16), out);
      i += hex_digits;
      continue;
    }
    // \n \t \r \b \f \v \a \0 \\ \' \"; a backslash before a newline continues the line.
    constexpr std::string_view kEscapes = "ntrbfva0\\'\"";
    constexpr char kValues[] = "\n\t\r\b\f\v\a\0\\'\"";
    if (const size_t k = kEscapes.find(c); k != std::string_view::npos) {
      out += kValues[k];
    } else if (c != '\n') {
      out += '\\';
      out += c;
    }
  }
  return out;
}

class Lexer {
 public:
  explicit Lexer(std::string_view source) {
    // Jinja2 normalizes newlines to "\n" and drops one trailing newline.
    for (size_t i = 0; i < source.size(); ++i) {
      if (source[i] != '\r') {
        src_ += source[i];
      } else {
        src_ += '\n';
        if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
      }
    }
    if (!src_.empty() && src_.back() == '\n') src_.pop_back();
    line_starts_.push_back(0);
    for (size_t i = 0; i < src_.size(); ++i) {
      if (src_[i] == '\n') line_starts_.push_back(i + 1);
    }
  }

  absl::StatusOr<std::vector<Token>> Run() {
    while (pos_ < src_.size()) {
      const size_t open = FindTagStart(pos_);
      if (open == std::string::npos) {
        Emit(TokenKind::kText, src_.substr(pos_), pos_);
        break;
      }
      const char kind = src_[open + 1];
      size_t inner = open + 2;
      const char sign =
          inner < src_.size() && (src_[inner] == '-' || src_[inner] == '+') ? src_[inner] : 0;
      if (sign) ++inner;
      EmitTextBeforeTag(std::string_view(src_).substr(pos_, open - pos_), sign, kind != '{', pos_);
      absl::Status status;
      size_t raw_body = 0;
      if (kind == '#') {
        status = LexComment(open, inner);
      } else if (kind == '%' && (raw_body = RawBeginEnd(inner)) != 0) {
        status = LexRaw(open, raw_body);
      } else {
        status = LexTag(open, inner, kind == '%');
      }
      if (!status.ok()) return status;
    }
    Emit(TokenKind::kEnd, "", src_.size());
    return std::move(tokens_);
  }

 private:
  Position PositionOf(size_t offset) const {
    const auto line = std::upper_bound(line_starts_.begin(), line_starts_.end(), offset) - 1;
    return {static_cast<int>(line - line_starts_.begin()) + 1,
            static_cast<int>(offset - *line) + 1};
  }

  absl::Status Error(size_t offset, std::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s at %s", what, FormatPosition(PositionOf(offset))));
  }

  Token& Emit(TokenKind kind, std::string text, size_t offset) {
    tokens_.push_back(Token{kind, std::move(text), 0, 0, PositionOf(offset)});
    return tokens_.back();
  }

  size_t FindTagStart(size_t from) const {
    for (size_t i = src_.find('{', from); i != std::string::npos; i = src_.find('{', i + 1)) {
      if (i + 1 < src_.size() && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) {
        return i;
      }
    }
    return std::string::npos;
  }

  // The text before a tag: "-" strips all whitespace before it; otherwise a block or comment
  // tag alone on its line (after spaces or tabs only) takes that indentation away, unless "+".
  void EmitTextBeforeTag(std::string_view text, char sign, bool lstrip, size_t offset) {
    if (sign == '-') {
      while (!text.empty() && IsWhitespace(text.back())) text.remove_suffix(1);
    } else if (sign != '+' && lstrip) {
      const size_t newline = text.rfind('\n');
      const size_t line = newline == std::string_view::npos ? 0 : newline + 1;
      if ((line > 0 || line_starting_) && line < text.size() &&
          std::all_of(text.begin() + line, text.end(), IsWhitespace)) {
        text = text.substr(0, line);
      }
    }
    if (!text.empty()) Emit(TokenKind::kText, std::string(text), offset);
  }

  // Consumes the whitespace control after a tag's end ("-": all whitespace; none: one newline,
  // trim_blocks; "+": nothing) and notes whether the next text starts a line.
  void EndTag(size_t after_end, char sign, bool trim) {
    pos_ = after_end;
    if (sign == '-') {
      while (pos_ < src_.size() && IsWhitespace(src_[pos_])) ++pos_;
    } else if (sign != '+' && trim && pos_ < src_.size() && src_[pos_] == '\n') {
      ++pos_;
    }
    line_starting_ = src_[pos_ - 1] == '\n';
  }

  absl::Status LexComment(size_t open, size_t inner) {
    const size_t close = src_.find("#}", inner);
    if (close == std::string::npos) return Error(open, "missing end of comment tag");
    const char sign =
        close > inner && (src_[close - 1] == '-' || src_[close - 1] == '+') ? src_[close - 1] : 0;
    EndTag(close + 2, sign, /*trim=*/true);
    return absl::OkStatus();
  }

  // Where `{% raw %}` ends when the tag at `inner` is one, else 0. Jinja2 does not apply
  // trim_blocks after it.
  size_t RawBeginEnd(size_t inner) const {
    size_t i = inner;
    while (i < src_.size() && IsWhitespace(src_[i])) ++i;
    if (src_.compare(i, 3, "raw") != 0) return 0;
    i += 3;
    while (i < src_.size() && IsWhitespace(src_[i])) ++i;
    if (src_.compare(i, 3, "-%}") == 0) {
      i += 3;
      while (i < src_.size() && IsWhitespace(src_[i])) ++i;
      return i;
    }
    return src_.compare(i, 2, "%}") == 0 ? i + 2 : 0;
  }

  // The raw block's text up to the first `{% endraw %}`, which ends like any block tag.
  absl::Status LexRaw(size_t open, size_t body) {
    line_starting_ = src_[body - 1] == '\n';
    for (size_t at = src_.find("{%", body); at != std::string::npos; at = src_.find("{%", at + 1)) {
      size_t i = at + 2;
      const char sign = i < src_.size() && (src_[i] == '-' || src_[i] == '+') ? src_[i] : 0;
      if (sign) ++i;
      while (i < src_.size() && IsWhitespace(src_[i])) ++i;
      if (src_.compare(i, 6, "endraw") != 0) continue;
      i += 6;
      while (i < src_.size() && IsWhitespace(src_[i])) ++i;
      const char end_sign = i < src_.size() && (src_[i] == '-' || src_[i] == '+') ? src_[i] : 0;
      if (src_.compare(i + (end_sign ? 1 : 0), 2, "%}") != 0) continue;
      EmitTextBeforeTag(std::string_view(src_).substr(body, at - body), sign, true, body);
      EndTag(i + (end_sign ? 3 : 2), end_sign, /*trim=*/true);
      return absl::OkStatus();
    }
    return Error(open, "missing end of raw directive");
  }

  // The tokens of a {{ }} or {% %} tag. An end delimiter inside brackets is operators, as in
  // Jinja2 ({{ {'a': {'b': 1}} }}).
  absl::Status LexTag(size_t open, size_t inner, bool block) {
    Emit(block ? TokenKind::kBlockBegin : TokenKind::kVariableBegin, "", open);
    std::string brackets;
    size_t i = inner;
    while (true) {
      while (i < src_.size() && IsWhitespace(src_[i])) ++i;
      if (i >= src_.size()) {
        return Error(open, block ? "unterminated block tag" : "unterminated variable tag");
      }
      if (brackets.empty()) {
        const std::string_view end = block ? "%}" : "}}";
        const char sign = src_[i] == '-' || (block && src_[i] == '+') ? src_[i] : 0;
        if (src_.compare(i + (sign ? 1 : 0), 2, end) == 0) {
          Emit(block ? TokenKind::kBlockEnd : TokenKind::kVariableEnd, "", i);
          EndTag(i + (sign ? 3 : 2), sign, /*trim=*/block);
          return absl::OkStatus();
        }
      }
      absl::StatusOr<size_t> next = LexToken(i, brackets);
      if (!next.ok()) return next.status();
      i = *next;
    }
  }

  // One token at `i`; returns where the next may start.
  absl::StatusOr<size_t> LexToken(size_t i, std::string& brackets) {
    const char c = src_[i];
    if (IsDigit(c)) return LexNumber(i);
    if (IsNameStart(c)) {
      size_t end = i;
      while (end < src_.size() && IsNameChar(src_[end])) ++end;
      Emit(TokenKind::kName, src_.substr(i, end - i), i);
      return end;
    }
    if (c == '\'' || c == '"') {
      for (size_t end = i + 1; end < src_.size(); ++end) {
        if (src_[end] == '\\') {
          ++end;
        } else if (src_[end] == c) {
          Emit(TokenKind::kString, Unescape(std::string_view(src_).substr(i + 1, end - i - 1)), i);
          return end + 1;
        }
      }
      return Error(i, "unterminated string literal");
    }
    static constexpr std::string_view kTwoCharOperators[] = {"//", "**", "==", "!=", ">=", "<="};
    for (std::string_view op : kTwoCharOperators) {
      if (src_.compare(i, 2, op) == 0) {
        Emit(TokenKind::kOperator, std::string(op), i);
        return i + 2;
      }
    }
    if (std::string_view("+-/*%~[](){}><=.:|,").find(c) == std::string_view::npos) {
      return Error(i, absl::StrFormat("unexpected character '%c'", c));
    }
    if (c == '(' || c == '[' || c == '{') {
      brackets += c;
    } else if (c == ')' || c == ']' || c == '}') {
      const char expected = c == ')' ? '(' : c == ']' ? '[' : '{';
      if (brackets.empty() || brackets.back() != expected) {
        return Error(i, absl::StrFormat("unexpected '%c'", c));
      }
      brackets.pop_back();
    }
    Emit(TokenKind::kOperator, std::string(1, c), i);
    return i + 1;
  }

  // Integers and floats with optional '_' separators (1_000, 1.5, 2e-3). After a '.', only an
  // integer: x.0.1 is two subscripts, as in Jinja2.
  absl::StatusOr<size_t> LexNumber(size_t i) {
    auto digits = [&](size_t at) {
      while (at < src_.size() && (IsDigit(src_[at]) || (src_[at] == '_' && at + 1 < src_.size() &&
                                                        IsDigit(src_[at + 1]))))
        ++at;
      return at;
    };
    size_t end = digits(i);
    bool is_float = false;
    if (i == 0 || src_[i - 1] != '.') {
      if (end + 1 < src_.size() && src_[end] == '.' && IsDigit(src_[end + 1])) {
        end = digits(end + 1);
        is_float = true;
      }
      size_t exp = end + 1;
      if (exp < src_.size() && (src_[exp] == '+' || src_[exp] == '-')) ++exp;
      if (end < src_.size() && (src_[end] == 'e' || src_[end] == 'E') && exp < src_.size() &&
          IsDigit(src_[exp])) {
        end = digits(exp);
        is_float = true;
      }
    }
    std::string text = src_.substr(i, end - i);
    text.erase(std::remove(text.begin(), text.end(), '_'), text.end());
    Token& token = Emit(is_float ? TokenKind::kFloat : TokenKind::kInteger, text, i);
    if (is_float) {
      token.number = std::strtod(text.c_str(), nullptr);
    } else {
      errno = 0;
      token.integer = std::strtoll(text.c_str(), nullptr, 10);
      if (errno == ERANGE) return Error(i, "integer literal too large");
    }
    return end;
  }

  std::string src_;
  std::vector<size_t> line_starts_;  // offsets where each line begins
  size_t pos_ = 0;
  // Whether the text after the last tag starts a line (lstrip_blocks then applies to it).
  bool line_starting_ = true;
  std::vector<Token> tokens_;
};

}  // namespace

std::string FormatPosition(Position p) {
  return absl::StrFormat("line %d, column %d", p.line, p.column);
}

absl::StatusOr<std::vector<Token>> Tokenize(std::string_view source) { return Lexer(source).Run(); }

}  // namespace ember::jinja

// The tokens of a Jinja template: the text between tags, and the names, literals and
// operators inside {{ }} and {% %}. Whitespace control is applied here, as Jinja2's lexer
// does it with trim_blocks and lstrip_blocks on (transformers' settings); comments and raw
// blocks never become tokens (a raw block is text).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace ember::jinja {

// 1-based; columns count bytes.
struct Position {
  int line = 1;
  int column = 1;
};
// "line 3, column 5", as every error message locates its cause.
std::string FormatPosition(Position p);

enum class TokenKind {
  kText,           // template text, whitespace control applied
  kVariableBegin,  // {{
  kVariableEnd,    // }}
  kBlockBegin,     // {%
  kBlockEnd,       // %}
  kName,
  kString,
  kInteger,
  kFloat,
  kOperator,
  kEnd,  // end of the template
};

struct Token {
  TokenKind kind;
  std::string text;  // text, name, operator, or a string literal's decoded value
  int64_t integer = 0;
  double number = 0;
  Position pos;
};

// The template's tokens, ending with kEnd. An unterminated tag, comment, raw block or
// string, or a character no token starts with, is an InvalidArgument error with its position.
absl::StatusOr<std::vector<Token>> Tokenize(std::string_view source);

}  // namespace ember::jinja

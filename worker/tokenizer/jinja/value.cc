// Python's semantics for Jinja values, as CPython implements them where a chat template can
// see the difference (float printing, floor division, str.split without a separator, ...).
// Letter case is ASCII-only: upper()/lower()/title() leave other letters as they are.
#include "worker/tokenizer/jinja/value.h"

#include <algorithm>
#include <charconv>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "loader/status_macros.h"
#include "nlohmann/json.hpp"

namespace ember::jinja {
namespace {

using absl::InvalidArgumentError;

// A string nested deeper than this prints as "..."; only namespaces holding one another reach
// it (lists and dicts are bounded when built), where Python would fail with a RecursionError.
constexpr int kMaxReprDepth = 256;

absl::Status TooLarge(size_t bytes, size_t max_bytes) {
  return absl::ResourceExhaustedError(absl::StrFormat(
      "a value of %d bytes or items would exceed max_output_bytes (%d)", bytes, max_bytes));
}

// The byte length of the UTF-8 sequence at s[pos]; 1 for a byte that starts none.
size_t CharLength(std::string_view s, size_t pos) {
  const auto lead = static_cast<unsigned char>(s[pos]);
  const size_t n = lead < 0x80           ? 1
                   : (lead >> 5) == 0x6  ? 2
                   : (lead >> 4) == 0xE  ? 3
                   : (lead >> 3) == 0x1E ? 4
                                         : 1;
  if (pos + n > s.size()) return 1;
  for (size_t i = 1; i < n; ++i) {
    if ((static_cast<unsigned char>(s[pos + i]) & 0xC0) != 0x80) return 1;
  }
  return n;
}

// The code point of the sequence at s[pos] (U+FFFD for a stray byte); advances pos.
char32_t DecodeChar(std::string_view s, size_t& pos) {
  const size_t n = CharLength(s, pos);
  const auto lead = static_cast<unsigned char>(s[pos]);
  if (n == 1) {
    ++pos;
    return lead < 0x80 ? lead : 0xFFFD;
  }
  char32_t c = lead & (0x7F >> n);
  for (size_t i = 1; i < n; ++i) c = (c << 6) | (static_cast<unsigned char>(s[pos + i]) & 0x3F);
  pos += n;
  return c;
}

bool IsSpace(char c) {
  return std::string_view(" \t\n\r\v\f\x1c\x1d\x1e\x1f").find(c) != std::string_view::npos;
}
bool IsAlpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
char ToUpper(char c) { return c >= 'a' && c <= 'z' ? c - 32 : c; }
char ToLower(char c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

// Python's float repr: the shortest digits that round-trip, exponent form outside [1e-4, 1e16).
std::string FloatRepr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  char buf[32];
  const auto result = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string_view s(buf, result.ptr - buf);  // "-d.ddde+XX"
  std::string out;
  if (s[0] == '-') {
    out = "-";
    s.remove_prefix(1);
  }
  const size_t e = s.find('e');
  std::string digits;
  for (char c : s.substr(0, e)) {
    if (c != '.') digits += c;
  }
  int exp = 0;
  std::from_chars(s.data() + e + (s[e + 1] == '+' ? 2 : 1), s.data() + s.size(), exp);
  if (exp < -4 || exp >= 16) {
    out += digits[0];
    if (digits.size() > 1) absl::StrAppend(&out, ".", digits.substr(1));
    absl::StrAppendFormat(&out, "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
  } else if (exp < 0) {
    absl::StrAppend(&out, "0.", std::string(-exp - 1, '0'), digits);
  } else if (digits.size() <= static_cast<size_t>(exp) + 1) {
    absl::StrAppend(&out, digits, std::string(exp + 1 - digits.size(), '0'), ".0");
  } else {
    absl::StrAppend(&out, digits.substr(0, exp + 1), ".", digits.substr(exp + 1));
  }
  return out;
}

// Python's repr of a str: single quotes unless the text has ' and no ".
void AppendStringRepr(std::string_view s, std::string& out) {
  const char quote =
      s.find('\'') != std::string_view::npos && s.find('"') == std::string_view::npos ? '"' : '\'';
  out += quote;
  for (char c : s) {
    if (c == quote || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (static_cast<unsigned char>(c) < 0x20 || c == 0x7F) {
      absl::StrAppendFormat(&out, "\\x%02x", c);
    } else {
      out += c;
    }
  }
  out += quote;
}

void AppendRepr(const Value& v, int depth, size_t max_bytes, std::string& out);

void AppendDictRepr(const Dict& d, int depth, size_t max_bytes, std::string& out) {
  out += '{';
  for (size_t i = 0; i < d.items().size() && out.size() <= max_bytes; ++i) {
    if (i) out += ", ";
    AppendRepr(d.items()[i].first, depth + 1, max_bytes, out);
    out += ": ";
    AppendRepr(d.items()[i].second, depth + 1, max_bytes, out);
  }
  out += '}';
}

void AppendRepr(const Value& v, int depth, size_t max_bytes, std::string& out) {
  if (depth > kMaxReprDepth) {
    out += "...";
    return;
  }
  switch (v.kind()) {
    case Value::Kind::kString:
      return AppendStringRepr(v.as_string(), out);
    case Value::Kind::kList: {
      const auto& items = v.as_list();
      out += v.is_tuple() ? '(' : '[';
      for (size_t i = 0; i < items.size() && out.size() <= max_bytes; ++i) {
        if (i) out += ", ";
        AppendRepr(items[i], depth + 1, max_bytes, out);
      }
      if (v.is_tuple() && items.size() == 1) out += ',';
      out += v.is_tuple() ? ')' : ']';
      return;
    }
    case Value::Kind::kDict:
      return AppendDictRepr(v.as_dict(), depth, max_bytes, out);
    case Value::Kind::kNamespace:
      out += "<Namespace ";
      AppendDictRepr(v.namespace_attributes(), depth, max_bytes, out);
      out += '>';
      return;
    case Value::Kind::kUndefined:
      out += "Undefined";
      return;
    default:
      out += Str(v);
  }
}

void AppendJsonString(std::string_view s, bool ensure_ascii, std::string& out) {
  out += '"';
  for (size_t pos = 0; pos < s.size();) {
    const char c = s[pos];
    const std::string_view escape = c == '"'    ? "\\\""
                                    : c == '\\' ? "\\\\"
                                    : c == '\n' ? "\\n"
                                    : c == '\r' ? "\\r"
                                    : c == '\t' ? "\\t"
                                    : c == '\b' ? "\\b"
                                    : c == '\f' ? "\\f"
                                                : "";
    if (!escape.empty()) {
      out += escape;
    } else if (static_cast<unsigned char>(c) < 0x20 || (ensure_ascii && c == 0x7F)) {
      absl::StrAppendFormat(&out, "\\u%04x", c);
    } else if (ensure_ascii && static_cast<unsigned char>(c) >= 0x80) {
      char32_t cp = DecodeChar(s, pos);
      if (cp > 0xFFFF) {  // a surrogate pair, as Python writes it
        cp -= 0x10000;
        absl::StrAppendFormat(&out, "\\u%04x", 0xD800 + (cp >> 10));
        cp = 0xDC00 + (cp & 0x3FF);
      }
      absl::StrAppendFormat(&out, "\\u%04x", cp);
      continue;
    } else {
      out += c;
    }
    ++pos;
  }
  out += '"';
}

absl::StatusOr<bool> Less(const Value& a, const Value& b);

absl::Status AppendJson(const Value& v, const JsonOptions& o, int level, std::string& out) {
  // With an indent, each item goes on its own line, indented one level deeper.
  auto newline = [&](int at) {
    if (!o.indent) return;
    out += '\n';
    for (int i = 0; i < at; ++i) out += *o.indent;
  };
  switch (v.kind()) {
    case Value::Kind::kNone:
      out += "null";
      return absl::OkStatus();
    case Value::Kind::kBool:
      out += v.as_bool() ? "true" : "false";
      return absl::OkStatus();
    case Value::Kind::kInt:
      absl::StrAppend(&out, v.as_int());
      return absl::OkStatus();
    case Value::Kind::kFloat: {
      const double d = v.as_float();
      out += std::isnan(d)   ? "NaN"
             : std::isinf(d) ? (d > 0 ? "Infinity" : "-Infinity")
                             : FloatRepr(d);
      return absl::OkStatus();
    }
    case Value::Kind::kString:
      AppendJsonString(v.as_string(), o.ensure_ascii, out);
      return absl::OkStatus();
    case Value::Kind::kList: {
      if (v.as_list().empty()) {
        out += "[]";
        return absl::OkStatus();
      }
      out += '[';
      for (size_t i = 0; i < v.as_list().size(); ++i) {
        if (out.size() > o.max_bytes) return TooLarge(out.size(), o.max_bytes);
        if (i) out += o.item_separator;
        newline(level + 1);
        EMBER_RETURN_IF_ERROR(AppendJson(v.as_list()[i], o, level + 1, out));
      }
      newline(level);
      out += ']';
      return absl::OkStatus();
    }
    case Value::Kind::kDict: {
      // json.dumps sorts the keys themselves (1 before 10 before 9 only for strings), then
      // writes them as strings: 1 as "1", True as "true", None as "null".
      std::vector<const std::pair<Value, Value>*> items;
      for (const auto& item : v.as_dict().items()) items.push_back(&item);
      if (items.empty()) {
        out += "{}";
        return absl::OkStatus();
      }
      if (o.sort_keys) {
        absl::Status status;
        std::stable_sort(items.begin(), items.end(), [&](auto* a, auto* b) {
          absl::StatusOr<bool> less = Less(a->first, b->first);
          if (!less.ok()) status.Update(less.status());
          return less.value_or(false);
        });
        EMBER_RETURN_IF_ERROR(status);
      }
      out += '{';
      for (size_t i = 0; i < items.size(); ++i) {
        if (out.size() > o.max_bytes) return TooLarge(out.size(), o.max_bytes);
        if (i) out += o.item_separator;
        newline(level + 1);
        const Value& key = items[i]->first;
        if (key.is_string()) {
          AppendJsonString(key.as_string(), o.ensure_ascii, out);
        } else {
          out += '"';
          EMBER_RETURN_IF_ERROR(AppendJson(key, o, level, out));
          out += '"';
        }
        out += o.key_separator;
        EMBER_RETURN_IF_ERROR(AppendJson(items[i]->second, o, level + 1, out));
      }
      newline(level);
      out += '}';
      return absl::OkStatus();
    }
    default:
      return InvalidArgumentError(
          absl::StrFormat("Object of type %s is not JSON serializable", v.type_name()));
  }
}

absl::StatusOr<bool> Less(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.is_integer() && b.is_integer()) return a.as_int() < b.as_int();
    return a.as_float() < b.as_float();
  }
  if (a.is_string() && b.is_string()) return a.as_string() < b.as_string();
  if (a.is_list() && b.is_list()) {
    const auto &x = a.as_list(), &y = b.as_list();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (!Equals(x[i], y[i])) return Less(x[i], y[i]);
    }
    return x.size() < y.size();
  }
  return InvalidArgumentError(absl::StrFormat(
      "'<' not supported between instances of '%s' and '%s'", a.type_name(), b.type_name()));
}

absl::StatusOr<Value> Compare(BinaryOp op, const Value& a, const Value& b) {
  // Python derives >, <= and >= from < with the operands swapped or the result negated,
  // which is exact for the orders above.
  const bool swap = op == BinaryOp::kGt || op == BinaryOp::kLe;
  bool less;
  EMBER_ASSIGN_OR_RETURN(less, swap ? Less(b, a) : Less(a, b));
  const bool negate = op == BinaryOp::kLe || op == BinaryOp::kGe;
  return Value::Bool(less != negate);
}

absl::StatusOr<Value> Contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case Value::Kind::kUndefined:
      return Value::Bool(false);
    case Value::Kind::kString:
      if (!item.is_string()) {
        return InvalidArgumentError(absl::StrFormat(
            "'in <string>' requires string as left operand, not %s", item.type_name()));
      }
      return Value::Bool(container.as_string().find(item.as_string()) != std::string::npos);
    case Value::Kind::kList:
      return Value::Bool(std::any_of(container.as_list().begin(), container.as_list().end(),
                                     [&](const Value& v) { return Equals(v, item); }));
    case Value::Kind::kDict:
      return Value::Bool(container.as_dict().Find(item) != nullptr);
    default:
      return InvalidArgumentError(
          absl::StrFormat("argument of type '%s' is not iterable", container.type_name()));
  }
}

// Python's floor division and modulo on integers (the quotient rounds toward -infinity).
absl::StatusOr<Value> IntDivMod(BinaryOp op, int64_t a, int64_t b) {
  if (b == 0) return InvalidArgumentError("integer division or modulo by zero");
  if (a == INT64_MIN && b == -1) return InvalidArgumentError("integer overflow");
  int64_t q = a / b, r = a % b;
  if (r != 0 && ((r < 0) != (b < 0))) {
    --q;
    r += b;
  }
  return Value::Int(op == BinaryOp::kFloorDiv ? q : r);
}

absl::StatusOr<Value> IntPow(int64_t base, int64_t exp) {
  if (exp < 0) {
    if (base == 0) return InvalidArgumentError("0.0 cannot be raised to a negative power");
    return Value::Float(std::pow(static_cast<double>(base), static_cast<double>(exp)));
  }
  int64_t result = 1;
  while (exp > 0) {
    if ((exp & 1) && __builtin_mul_overflow(result, base, &result)) {
      return InvalidArgumentError("integer overflow in '**'");
    }
    exp >>= 1;
    // The highest bit is still to come, so a square that overflows makes the result overflow.
    if (exp > 0 && __builtin_mul_overflow(base, base, &base)) {
      return InvalidArgumentError("integer overflow in '**'");
    }
  }
  return Value::Int(result);
}

absl::StatusOr<Value> Arithmetic(BinaryOp op, const Value& a, const Value& b) {
  if (a.is_integer() && b.is_integer()) {
    const int64_t x = a.as_int(), y = b.as_int();
    int64_t r = 0;
    switch (op) {
      case BinaryOp::kAdd:
        if (__builtin_add_overflow(x, y, &r)) break;
        return Value::Int(r);
      case BinaryOp::kSub:
        if (__builtin_sub_overflow(x, y, &r)) break;
        return Value::Int(r);
      case BinaryOp::kMul:
        if (__builtin_mul_overflow(x, y, &r)) break;
        return Value::Int(r);
      case BinaryOp::kFloorDiv:
      case BinaryOp::kMod:
        return IntDivMod(op, x, y);
      case BinaryOp::kPow:
        return IntPow(x, y);
      default:
        break;  // '/' is float division
    }
    if (op != BinaryOp::kDiv) {
      return InvalidArgumentError(absl::StrFormat("integer overflow in '%s'", OperatorSymbol(op)));
    }
  }
  const double x = a.as_float(), y = b.as_float();
  switch (op) {
    case BinaryOp::kAdd:
      return Value::Float(x + y);
    case BinaryOp::kSub:
      return Value::Float(x - y);
    case BinaryOp::kMul:
      return Value::Float(x * y);
    case BinaryOp::kPow:
      if (x == 0 && y < 0) return InvalidArgumentError("0.0 cannot be raised to a negative power");
      return Value::Float(std::pow(x, y));
    default:
      break;
  }
  if (y == 0) return InvalidArgumentError("float division by zero");
  if (op == BinaryOp::kDiv) return Value::Float(x / y);
  if (op == BinaryOp::kFloorDiv) return Value::Float(std::floor(x / y));
  double r = std::fmod(x, y);  // Python's modulo takes the divisor's sign
  if (r != 0 && ((r < 0) != (y < 0))) r += y;
  return Value::Float(r);
}

// str * n, list * n (either order).
absl::StatusOr<Value> Repeat(const Value& seq, int64_t n, size_t max_bytes) {
  const size_t count = std::max<int64_t>(n, 0);
  const size_t unit = seq.is_string() ? seq.as_string().size() : seq.as_list().size();
  if (unit != 0 && count > max_bytes / unit) return TooLarge(unit * count, max_bytes);
  if (seq.is_string()) {
    std::string out;
    out.reserve(unit * count);
    for (size_t i = 0; i < count; ++i) out += seq.as_string();
    return Value::String(std::move(out));
  }
  std::vector<Value> out;
  out.reserve(unit * count);
  for (size_t i = 0; i < count; ++i) {
    out.insert(out.end(), seq.as_list().begin(), seq.as_list().end());
  }
  return Value::List(std::move(out), seq.is_tuple());
}

absl::StatusOr<Value> Concatenate(const Value& a, const Value& b, size_t max_bytes) {
  if (a.is_string()) {
    const bool markup = a.is_markup() || b.is_markup();
    const auto text = [&](const Value& v) {
      return markup && !v.is_markup() ? HtmlEscape(v.as_string()) : v.as_string();
    };
    std::string sum = absl::StrCat(text(a), text(b));
    if (sum.size() > max_bytes) return TooLarge(sum.size(), max_bytes);
    return markup ? Value::Markup(std::move(sum)) : Value::String(std::move(sum));
  }
  std::vector<Value> items = a.as_list();
  items.insert(items.end(), b.as_list().begin(), b.as_list().end());
  return Value::List(std::move(items), a.is_tuple());
}

// Python's str.split: on runs of whitespace (and no empty parts) without a separator.
std::vector<Value> Split(std::string_view s, const std::optional<std::string>& sep,
                         int64_t maxsplit) {
  std::vector<Value> parts;
  if (sep) {
    size_t start = 0;
    for (size_t at; (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit) &&
                    (at = s.find(*sep, start)) != std::string_view::npos;
         start = at + sep->size()) {
      parts.push_back(Value::String(std::string(s.substr(start, at - start))));
    }
    parts.push_back(Value::String(std::string(s.substr(start))));
    return parts;
  }
  size_t i = 0;
  while (true) {
    while (i < s.size() && IsSpace(s[i])) ++i;
    if (i == s.size()) break;
    if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
      parts.push_back(Value::String(std::string(s.substr(i))));  // trailing whitespace stays
      break;
    }
    const size_t start = i;
    while (i < s.size() && !IsSpace(s[i])) ++i;
    parts.push_back(Value::String(std::string(s.substr(start, i - start))));
  }
  return parts;
}

// str.strip/lstrip/rstrip; `chars` is a set of characters, whitespace when unset.
std::string Strip(std::string_view s, const std::optional<std::string>& chars, bool left,
                  bool right) {
  std::vector<std::string_view> cs = Characters(s);
  const std::vector<std::string_view> set =
      chars ? Characters(*chars) : std::vector<std::string_view>{};
  auto strip = [&](std::string_view c) {
    return chars ? std::find(set.begin(), set.end(), c) != set.end()
                 : c.size() == 1 && IsSpace(c[0]);
  };
  size_t begin = 0, end = cs.size();
  while (left && begin < end && strip(cs[begin])) ++begin;
  while (right && end > begin && strip(cs[end - 1])) --end;
  if (begin == end) return "";
  return std::string(cs[begin].data(), cs[end - 1].data() + cs[end - 1].size());
}

// str.title(): a letter following a letter is lowercased, any other uppercased.
std::string Title(std::string_view s) {
  std::string out(s);
  for (size_t i = 0; i < out.size(); ++i) {
    out[i] = i > 0 && IsAlpha(out[i - 1]) ? ToLower(out[i]) : ToUpper(out[i]);
  }
  return out;
}

absl::StatusOr<std::string> Replace(std::string_view s, std::string_view old,
                                    std::string_view replacement, int64_t count, size_t max_bytes) {
  // Python inserts the replacement around every character when `old` is empty.
  const std::vector<std::string_view> pieces =
      old.empty() ? Characters(s) : std::vector<std::string_view>{};
  std::vector<size_t> at;  // where `old` occurs
  for (size_t pos = 0, i = 0; count < 0 || static_cast<int64_t>(at.size()) < count;) {
    if (old.empty()) {
      if (i > pieces.size()) break;
      at.push_back(pos);
      if (i < pieces.size()) pos += pieces[i].size();
      ++i;
    } else {
      pos = s.find(old, pos);
      if (pos == std::string_view::npos) break;
      at.push_back(pos);
      pos += old.size();
    }
  }
  const size_t size = s.size() + at.size() * replacement.size() - at.size() * old.size();
  if (size > max_bytes) return TooLarge(size, max_bytes);
  std::string out;
  out.reserve(size);
  size_t done = 0;
  for (size_t pos : at) {
    out.append(s.substr(done, pos - done)).append(replacement);
    done = pos + old.size();
  }
  out += s.substr(done);
  return out;
}

// A string argument or none; anything else is an error naming `what`.
absl::StatusOr<std::optional<std::string>> OptionalString(const Value& v, std::string_view what) {
  if (v.is_undefined() || v.is_none()) return std::nullopt;
  if (!v.is_string()) {
    return InvalidArgumentError(
        absl::StrFormat("%s must be a string, not %s", what, v.type_name()));
  }
  return v.as_string();
}

absl::StatusOr<int64_t> IntArgument(const Value& v, int64_t fallback, std::string_view what) {
  if (v.is_undefined() || v.is_none()) return fallback;
  if (!v.is_integer()) {
    return InvalidArgumentError(
        absl::StrFormat("%s must be an integer, not %s", what, v.type_name()));
  }
  return v.as_int();
}

// startswith/endswith take one prefix or a tuple of them.
absl::StatusOr<bool> AffixMatch(std::string_view s, const Value& affixes, bool prefix) {
  const std::vector<Value> options =
      affixes.is_list() ? affixes.as_list() : std::vector<Value>{affixes};
  for (const Value& option : options) {
    if (!option.is_string()) {
      return InvalidArgumentError(
          absl::StrFormat("%s first arg must be str or a tuple of str, not %s",
                          prefix ? "startswith" : "endswith", option.type_name()));
    }
    const std::string& a = option.as_string();
    if (a.size() <= s.size() && s.substr(prefix ? 0 : s.size() - a.size(), a.size()) == a) {
      return true;
    }
  }
  return false;
}

// str.format with plain fields: {}, {0}, {name}, and {{ }} escapes (no format specs).
absl::StatusOr<Value> Format(const std::string& s, const CallArgs& args, size_t max_bytes) {
  std::string out;
  size_t auto_index = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '}' && i + 1 < s.size() && s[i + 1] == '}') {
      out += '}', ++i;
    } else if (s[i] != '{') {
      out += s[i];
    } else if (i + 1 < s.size() && s[i + 1] == '{') {
      out += '{', ++i;
    } else {
      const size_t close = s.find('}', i);
      if (close == std::string::npos) {
        return InvalidArgumentError("Single '{' encountered in format string");
      }
      const std::string field = s.substr(i + 1, close - i - 1);
      const Value* v = nullptr;
      if (field.empty() || std::all_of(field.begin(), field.end(), ::isdigit)) {
        const size_t index = field.empty() ? auto_index++ : std::stoul(field);
        if (index < args.positional.size()) v = &args.positional[index];
      } else {
        for (const auto& [key, value] : args.keyword) {
          if (key == field) v = &value;
        }
      }
      if (v == nullptr) {
        return InvalidArgumentError(absl::StrFormat("format: no argument for '{%s}'", field));
      }
      out += Str(*v, max_bytes);
      i = close;
    }
    if (out.size() > max_bytes) return TooLarge(out.size(), max_bytes);
  }
  return Value::String(std::move(out));
}

absl::StatusOr<Value> StringMethod(const std::string& s, std::string_view name,
                                   const CallArgs& args, size_t max_bytes) {
  const std::string fn = absl::StrFormat("str.%s", name);
  std::vector<Value> a;
  std::optional<std::string> text;
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    EMBER_ASSIGN_OR_RETURN(a, BindArguments(fn, args, {"chars"}));
    EMBER_ASSIGN_OR_RETURN(text, OptionalString(a[0], "strip chars"));
    return Value::String(Strip(s, text, name != "rstrip", name != "lstrip"));
  }
  if (name == "split") {
    int64_t maxsplit;
    EMBER_ASSIGN_OR_RETURN(a, BindArguments(fn, args, {"sep", "maxsplit"}));
    EMBER_ASSIGN_OR_RETURN(text, OptionalString(a[0], "separator"));
    EMBER_ASSIGN_OR_RETURN(maxsplit, IntArgument(a[1], -1, "maxsplit"));
    if (text && text->empty()) return InvalidArgumentError("empty separator");
    return Value::List(Split(s, text, maxsplit));
  }
  if (name == "format") return Format(s, args, max_bytes);
  if (name == "startswith" || name == "endswith") {
    bool match;
    EMBER_ASSIGN_OR_RETURN(a, BindArguments(fn, args, {"affix"}, 1));
    EMBER_ASSIGN_OR_RETURN(match, AffixMatch(s, a[0], name == "startswith"));
    return Value::Bool(match);
  }
  if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
    EMBER_ASSIGN_OR_RETURN(a, BindArguments(fn, args, {}));
    if (name == "title") return Value::String(Title(s));
    std::string out = s;
    for (size_t i = 0; i < out.size(); ++i) {
      const bool upper = name == "upper" || (name == "capitalize" && i == 0);
      out[i] = upper ? ToUpper(out[i]) : ToLower(out[i]);
    }
    return Value::String(std::move(out));
  }
  if (name == "replace") {
    int64_t count;
    std::string out;
    EMBER_ASSIGN_OR_RETURN(a, BindArguments(fn, args, {"old", "new", "count"}, 2));
    if (!a[0].is_string() || !a[1].is_string()) {
      return InvalidArgumentError(absl::StrFormat("%s needs strings", fn));
    }
    EMBER_ASSIGN_OR_RETURN(count, IntArgument(a[2], -1, "count"));
    EMBER_ASSIGN_OR_RETURN(out, Replace(s, a[0].as_string(), a[1].as_string(), count, max_bytes));
    return Value::String(std::move(out));
  }
  if (name == "find" || name == "count") {  // counted in characters, as Python does
    EMBER_ASSIGN_OR_RETURN(a, BindArguments(fn, args, {"sub"}, 1));
    if (!a[0].is_string()) return InvalidArgumentError(absl::StrFormat("%s needs a string", fn));
    const std::string& sub = a[0].as_string();
    if (name == "find") {
      const size_t at = s.find(sub);
      if (at == std::string::npos) return Value::Int(-1);
      return Value::Int(Characters(std::string_view(s).substr(0, at)).size());
    }
    if (sub.empty()) return Value::Int(Characters(s).size() + 1);
    int64_t n = 0;
    for (size_t at = s.find(sub); at != std::string::npos; at = s.find(sub, at + sub.size())) ++n;
    return Value::Int(n);
  }
  // join
  std::vector<Value> items;
  EMBER_ASSIGN_OR_RETURN(a, BindArguments(fn, args, {"iterable"}, 1));
  EMBER_ASSIGN_OR_RETURN(items, Iterate(a[0]));
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (!items[i].is_string()) {
      return InvalidArgumentError(absl::StrFormat(
          "sequence item %d: expected str instance, %s found", i, items[i].type_name()));
    }
    absl::StrAppend(&out, i ? s : "", items[i].as_string());
    if (out.size() > max_bytes) return TooLarge(out.size(), max_bytes);
  }
  return Value::String(std::move(out));
}

absl::StatusOr<Value> DictMethod(const Dict& d, std::string_view name, const CallArgs& args) {
  const std::string fn = absl::StrFormat("dict.%s", name);
  std::vector<Value> a;
  if (name == "get") {
    EMBER_ASSIGN_OR_RETURN(a, BindArguments(fn, args, {"key", "default"}, 1));
    if (const Value* found = d.Find(a[0])) return *found;
    return a[1].is_undefined() ? Value::None() : a[1];
  }
  EMBER_ASSIGN_OR_RETURN(a, BindArguments(fn, args, {}));
  std::vector<Value> out;
  for (const auto& [key, value] : d.items()) {
    out.push_back(name == "keys"     ? key
                  : name == "values" ? value
                                     : Value::List({key, value}, /*tuple=*/true));
  }
  return Value::List(std::move(out));
}

absl::StatusOr<Value> ListMethod(const std::vector<Value>& items, std::string_view name,
                                 const CallArgs& args) {
  std::vector<Value> a;
  EMBER_ASSIGN_OR_RETURN(a, BindArguments(absl::StrFormat("list.%s", name), args, {"value"}, 1));
  const auto match = [&](const Value& v) { return Equals(v, a[0]); };
  if (name == "count") return Value::Int(std::count_if(items.begin(), items.end(), match));
  const auto it = std::find_if(items.begin(), items.end(), match);
  if (it == items.end()) return InvalidArgumentError(absl::StrCat(Repr(a[0]), " is not in list"));
  return Value::Int(it - items.begin());
}

}  // namespace

namespace {

// The text that identifies a non-string key, equal for keys Python holds equal (1, 1.0, True).
std::string NumberKey(const Value& key) {
  if (key.is_none()) return "None";
  if (key.is_integer()) return absl::StrCat(key.as_int());
  const double d = key.as_float();
  if (std::trunc(d) == d && std::abs(d) < 0x1p63) return absl::StrCat(static_cast<int64_t>(d));
  return FloatRepr(d);
}

}  // namespace

bool Dict::Hashable(const Value& key) {
  return key.is_string() || key.is_number() || key.is_none();
}

void Dict::Set(Value key, Value value) {
  depth_ = std::max(depth_, 1 + value.depth());
  Index& index = key.is_string() ? strings_ : others_;
  std::string text = key.is_string() ? key.as_string() : NumberKey(key);
  if (auto it = index.find(text); it != index.end()) {
    items_[it->second].second = std::move(value);  // the first key stays, as in Python
    return;
  }
  index.emplace(std::move(text), items_.size());
  items_.emplace_back(std::move(key), std::move(value));
}

void Dict::Set(std::string key, Value value) { Set(Value::String(std::move(key)), std::move(value)); }

const Value* Dict::Find(std::string_view key) const {
  const auto it = strings_.find(key);
  return it == strings_.end() ? nullptr : &items_[it->second].second;
}

const Value* Dict::Find(const Value& key) const {
  if (key.is_string()) return Find(std::string_view(key.as_string()));
  if (!Hashable(key)) return nullptr;
  const auto it = others_.find(NumberKey(key));
  return it == others_.end() ? nullptr : &items_[it->second].second;
}

Value Value::Markup(std::string s) {
  Value v(std::move(s));
  v.markup_ = true;
  return v;
}

std::string HtmlEscape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&#34;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

Value Value::List(std::vector<Value> items, bool tuple) {
  int depth = 1;
  for (const Value& item : items) depth = std::max(depth, 1 + item.depth());
  return Value(std::make_shared<const ListData>(ListData{std::move(items), tuple, depth}));
}

int64_t Value::as_int() const {
  return kind() == Kind::kBool ? static_cast<int64_t>(as_bool()) : std::get<int64_t>(data_);
}

double Value::as_float() const {
  return kind() == Kind::kFloat ? std::get<double>(data_) : static_cast<double>(as_int());
}

int Value::depth() const {
  switch (kind()) {
    case Kind::kList:
      return std::get<ListPtr>(data_)->depth;
    case Kind::kDict:
      return as_dict().depth();
    case Kind::kNamespace:
      return 1;
    default:
      return 0;
  }
}

std::string_view Value::type_name() const {
  static constexpr std::string_view kNames[] = {"Undefined", "NoneType", "bool", "int",
                                                "float",     "str",      "list", "dict",
                                                "Namespace", "function"};
  if (kind() == Kind::kList && is_tuple()) return "tuple";
  return kNames[data_.index()];
}

Value FromJson(const nlohmann::ordered_json& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::null:
      return Value::None();
    case nlohmann::json::value_t::boolean:
      return Value::Bool(j.get<bool>());
    case nlohmann::json::value_t::number_integer:
      return Value::Int(j.get<int64_t>());
    case nlohmann::json::value_t::number_unsigned: {
      const uint64_t u = j.get<uint64_t>();
      return u <= INT64_MAX ? Value::Int(static_cast<int64_t>(u))
                            : Value::Float(static_cast<double>(u));
    }
    case nlohmann::json::value_t::number_float:
      return Value::Float(j.get<double>());
    case nlohmann::json::value_t::string:
      return Value::String(j.get<std::string>());
    case nlohmann::json::value_t::array: {
      std::vector<Value> items;
      for (const auto& item : j) items.push_back(FromJson(item));
      return Value::List(std::move(items));
    }
    case nlohmann::json::value_t::object: {
      Dict d;
      for (const auto& [key, value] : j.items()) d.Set(key, FromJson(value));
      return Value::FromDict(std::move(d));
    }
    default:
      return Value::None();  // binary and discarded values do not occur in JSON text
  }
}

bool Truthy(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone:
      return false;
    case Value::Kind::kBool:
      return v.as_bool();
    case Value::Kind::kInt:
      return v.as_int() != 0;
    case Value::Kind::kFloat:
      return v.as_float() != 0;
    case Value::Kind::kString:
      return !v.as_string().empty();
    case Value::Kind::kList:
      return !v.as_list().empty();
    case Value::Kind::kDict:
      return v.as_dict().size() != 0;
    default:
      return true;
  }
}

bool Equals(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.is_integer() && b.is_integer()) return a.as_int() == b.as_int();
    return a.as_float() == b.as_float();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case Value::Kind::kString:
      return a.as_string() == b.as_string();
    case Value::Kind::kList:
      return a.is_tuple() == b.is_tuple() &&
             std::equal(a.as_list().begin(), a.as_list().end(), b.as_list().begin(),
                        b.as_list().end(), Equals);
    case Value::Kind::kDict: {
      if (a.as_dict().size() != b.as_dict().size()) return false;
      for (const auto& [key, value] : a.as_dict().items()) {
        const Value* other = b.as_dict().Find(key);
        if (!other || !Equals(value, *other)) return false;
      }
      return true;
    }
    case Value::Kind::kNamespace:
      return &a.namespace_attributes() == &b.namespace_attributes();
    case Value::Kind::kCallable:
      return &a.function() == &b.function();
    default:
      return true;  // undefined, none
  }
}

std::string_view OperatorSymbol(BinaryOp op) {
  static constexpr std::string_view kSymbols[] = {
      "+", "-", "*", "/", "//", "%", "**", "~", "==", "!=", "<", "<=", ">", ">=", "in", "not in"};
  return kSymbols[static_cast<int>(op)];
}

absl::StatusOr<Value> ApplyBinary(BinaryOp op, const Value& a, const Value& b, size_t max_bytes) {
  switch (op) {
    case BinaryOp::kEq:
      return Value::Bool(Equals(a, b));
    case BinaryOp::kNe:
      return Value::Bool(!Equals(a, b));
    case BinaryOp::kIn:
      return Contains(b, a);
    case BinaryOp::kNotIn: {
      Value in;
      EMBER_ASSIGN_OR_RETURN(in, Contains(b, a));
      return Value::Bool(!in.as_bool());
    }
    case BinaryOp::kConcat:
      return Concatenate(Value::String(Str(a, max_bytes)), Value::String(Str(b, max_bytes)),
                         max_bytes);
    default:
      break;
  }
  // Beyond equality, membership and '~', an undefined operand is an error.
  if (a.is_undefined()) return InvalidArgumentError(a.undefined_hint());
  if (b.is_undefined()) return InvalidArgumentError(b.undefined_hint());
  switch (op) {
    case BinaryOp::kLt:
    case BinaryOp::kLe:
    case BinaryOp::kGt:
    case BinaryOp::kGe:
      return Compare(op, a, b);
    default:
      break;
  }
  if (a.is_number() && b.is_number()) return Arithmetic(op, a, b);
  const bool sequences = (a.is_string() && b.is_string()) || (a.is_list() && b.is_list());
  if (op == BinaryOp::kAdd && sequences) return Concatenate(a, b, max_bytes);
  if (op == BinaryOp::kMul && (a.is_string() || a.is_list()) && b.is_integer()) {
    return Repeat(a, b.as_int(), max_bytes);
  }
  if (op == BinaryOp::kMul && (b.is_string() || b.is_list()) && a.is_integer()) {
    return Repeat(b, a.as_int(), max_bytes);
  }
  return InvalidArgumentError(absl::StrFormat("unsupported operand type(s) for %s: '%s' and '%s'",
                                              OperatorSymbol(op), a.type_name(), b.type_name()));
}

absl::StatusOr<Value> Negate(const Value& v) {
  if (v.is_undefined()) return InvalidArgumentError(v.undefined_hint());
  if (v.kind() == Value::Kind::kFloat) return Value::Float(-v.as_float());
  if (!v.is_integer()) {
    return InvalidArgumentError(
        absl::StrFormat("bad operand type for unary -: '%s'", v.type_name()));
  }
  if (v.as_int() == INT64_MIN) return InvalidArgumentError("integer overflow in unary -");
  return Value::Int(-v.as_int());
}

std::string Str(const Value& v, size_t max_bytes) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return "";
    case Value::Kind::kNone:
      return "None";
    case Value::Kind::kBool:
      return v.as_bool() ? "True" : "False";
    case Value::Kind::kInt:
      return absl::StrCat(v.as_int());
    case Value::Kind::kFloat:
      return FloatRepr(v.as_float());
    case Value::Kind::kString:
      return v.as_string();
    case Value::Kind::kCallable:
      return absl::StrCat("<function ", v.callable_name(), ">");
    default:
      return Repr(v, max_bytes);
  }
}

std::string Repr(const Value& v, size_t max_bytes) {
  std::string out;
  AppendRepr(v, 0, max_bytes, out);
  return out;
}

absl::StatusOr<std::string> ToJson(const Value& v, const JsonOptions& options) {
  std::string out;
  EMBER_RETURN_IF_ERROR(AppendJson(v, options, 0, out));
  if (out.size() > options.max_bytes) return TooLarge(out.size(), options.max_bytes);
  return out;
}

absl::StatusOr<int64_t> Length(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return 0;
    case Value::Kind::kString:
      return Characters(v.as_string()).size();
    case Value::Kind::kList:
      return v.as_list().size();
    case Value::Kind::kDict:
      return v.as_dict().size();
    default:
      return InvalidArgumentError(
          absl::StrFormat("object of type '%s' has no len()", v.type_name()));
  }
}

absl::StatusOr<std::vector<Value>> Iterate(const Value& v) {
  std::vector<Value> items;
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return items;
    case Value::Kind::kList:
      return v.as_list();
    case Value::Kind::kDict:
      for (const auto& item : v.as_dict().items()) items.push_back(item.first);
      return items;
    case Value::Kind::kString:
      for (std::string_view c : Characters(v.as_string())) {
        items.push_back(Value::String(std::string(c)));
      }
      return items;
    default:
      return InvalidArgumentError(absl::StrFormat("'%s' object is not iterable", v.type_name()));
  }
}

Value GetItem(const Value& obj, const Value& key) {
  if (obj.is_undefined()) return obj;
  if (obj.is_dict() && !key.is_string()) {
    if (const Value* found = obj.as_dict().Find(key)) return *found;
  }
  if (key.is_string()) {
    const Value* found = obj.is_dict() ? obj.as_dict().Find(key.as_string())
                         : obj.kind() == Value::Kind::kNamespace
                             ? obj.namespace_attributes().Find(key.as_string())
                             : nullptr;
    if (found) return *found;
    return Value::Undefined(
        absl::StrFormat("'%s object' has no attribute '%s'", obj.type_name(), key.as_string()));
  }
  if (key.is_integer() && (obj.is_list() || obj.is_string())) {
    const std::vector<std::string_view> chars =
        obj.is_string() ? Characters(obj.as_string()) : std::vector<std::string_view>{};
    const int64_t size = obj.is_list() ? obj.as_list().size() : chars.size();
    const int64_t i = key.as_int() < 0 ? key.as_int() + size : key.as_int();
    if (i >= 0 && i < size) {
      return obj.is_list() ? obj.as_list()[i] : Value::String(std::string(chars[i]));
    }
  }
  return Value::Undefined(
      absl::StrFormat("'%s object' has no element %s", obj.type_name(), Repr(key)));
}

absl::StatusOr<Value> Slice(const Value& obj, const Value& start, const Value& stop,
                            const Value& step) {
  for (const Value* bound : {&start, &stop, &step}) {
    if (!bound->is_undefined() && !bound->is_none() && !bound->is_integer()) {
      return InvalidArgumentError("slice indices must be integers or None");
    }
  }
  if (!obj.is_string() && !obj.is_list()) {
    return Value::Undefined(absl::StrFormat("'%s' object is not subscriptable", obj.type_name()));
  }
  const int64_t by = step.is_integer() ? step.as_int() : 1;
  if (by == 0) return InvalidArgumentError("slice step cannot be zero");
  const std::vector<std::string_view> chars =
      obj.is_string() ? Characters(obj.as_string()) : std::vector<std::string_view>{};
  const int64_t n = obj.is_list() ? obj.as_list().size() : chars.size();
  // Python's PySlice_AdjustIndices.
  auto adjust = [&](const Value& bound, int64_t fallback) {
    if (!bound.is_integer()) return fallback;
    int64_t i = bound.as_int();
    if (i < 0) {
      i += n;
      if (i < 0) i = by < 0 ? -1 : 0;
    } else if (i >= n) {
      i = by < 0 ? n - 1 : n;
    }
    return i;
  };
  const int64_t from = adjust(start, by < 0 ? n - 1 : 0), to = adjust(stop, by < 0 ? -1 : n);
  std::vector<Value> items;
  std::string text;
  for (int64_t i = from; by > 0 ? i < to : i > to; i += by) {
    if (obj.is_list()) {
      items.push_back(obj.as_list()[i]);
    } else {
      text += chars[i];
    }
  }
  return obj.is_list() ? Value::List(std::move(items), obj.is_tuple())
                       : Value::String(std::move(text));
}

bool HasMethod(const Value& self, std::string_view name) {
  static constexpr std::string_view kString[] = {
      "strip", "lstrip", "rstrip",     "split",   "startswith", "endswith", "upper",
      "lower", "title",  "capitalize", "replace", "find",       "count",    "join", "format"};
  static constexpr std::string_view kDict[] = {"items", "keys", "values", "get"};
  static constexpr std::string_view kList[] = {"index", "count"};
  auto in = [&](const auto& names) {
    return std::find(std::begin(names), std::end(names), name) != std::end(names);
  };
  return (self.is_string() && in(kString)) || (self.is_dict() && in(kDict)) ||
         (self.is_list() && in(kList));
}

absl::StatusOr<Value> CallMethod(const Value& self, std::string_view name, const CallArgs& args,
                                 size_t max_bytes) {
  if (self.is_string()) {
    absl::StatusOr<Value> result = StringMethod(self.as_string(), name, args, max_bytes);
    // Markup's methods that give a string give a Markup (their arguments are not escaped here).
    if (self.is_markup() && result.ok() && result->is_string()) {
      return Value::Markup(result->as_string());
    }
    return result;
  }
  if (self.is_dict()) return DictMethod(self.as_dict(), name, args);
  return ListMethod(self.as_list(), name, args);
}

absl::StatusOr<std::vector<Value>> BindArguments(std::string_view function, const CallArgs& args,
                                                 const std::vector<std::string_view>& names,
                                                 size_t required) {
  if (args.positional.size() > names.size()) {
    return InvalidArgumentError(absl::StrFormat("%s() takes at most %d argument(s) (%d given)",
                                                function, names.size(), args.positional.size()));
  }
  std::vector<Value> bound = args.positional;
  bound.resize(names.size());
  for (const auto& [key, value] : args.keyword) {
    const auto it = std::find(names.begin(), names.end(), key);
    if (it == names.end()) {
      return InvalidArgumentError(
          absl::StrFormat("%s() got an unexpected keyword argument '%s'", function, key));
    }
    if (static_cast<size_t>(it - names.begin()) < args.positional.size()) {
      return InvalidArgumentError(
          absl::StrFormat("%s() got multiple values for argument '%s'", function, key));
    }
    bound[it - names.begin()] = value;
  }
  for (size_t i = 0; i < required; ++i) {
    if (bound[i].is_undefined()) {
      return InvalidArgumentError(
          absl::StrFormat("%s() missing required argument '%s'", function, names[i]));
    }
  }
  return bound;
}

std::vector<std::string_view> Characters(std::string_view s) {
  std::vector<std::string_view> chars;
  for (size_t pos = 0; pos < s.size();) {
    const size_t n = CharLength(s, pos);
    chars.push_back(s.substr(pos, n));
    pos += n;
  }
  return chars;
}

}  // namespace ember::jinja

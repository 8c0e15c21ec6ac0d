// The evaluator: statements and expressions over Values with Jinja2's scoping (a for loop's
// body and a macro's body assign into their own frame; namespaces carry state out), the
// filters, tests and globals chat templates use, and the limits that bound one render.
#include "worker/tokenizer/jinja/template.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <unordered_map>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "loader/status_macros.h"
#include "worker/tokenizer/jinja/parser.h"

namespace ember::jinja {
namespace {

using absl::InvalidArgumentError;

// The sandbox's MAX_RANGE: a larger range() is an error in Jinja2's sandbox too.
constexpr int64_t kMaxRange = 100000;

// Marks an error that already says where it happened (or must not say it: raise_exception), so
// that the expressions around it pass it on unchanged.
constexpr char kLocated[] = "ember.jinja/located";

absl::Status Locate(const absl::Status& status, Position pos) {
  if (status.ok() || status.GetPayload(kLocated)) return status;
  absl::Status located(status.code(), absl::StrCat(status.message(), " at ", FormatPosition(pos)));
  located.SetPayload(kLocated, absl::Cord());
  return located;
}

absl::Status TooLarge(std::string_view what, size_t max_bytes) {
  return absl::ResourceExhaustedError(
      absl::StrFormat("%s would exceed max_output_bytes (%d)", what, max_bytes));
}

bool Given(const Value& v) { return !v.is_undefined() && !v.is_none(); }

// str(v), refusing a text longer than max_bytes.
absl::StatusOr<std::string> Text(const Value& v, size_t max_bytes) {
  std::string text = Str(v, max_bytes);
  if (text.size() > max_bytes) return TooLarge("the string", max_bytes);
  return text;
}

absl::StatusOr<Value> TextValue(const Value& v, size_t max_bytes) {
  std::string text;
  EMBER_ASSIGN_OR_RETURN(text, Text(v, max_bytes));
  return Value::String(std::move(text));
}

// --- Filters and tests --------------------------------------------------------------------
// A filter gets its input, its arguments, and the limit on the strings it may build.
using FilterFn = absl::StatusOr<Value> (*)(const Value&, const CallArgs&, size_t max_bytes);
using TestFn = absl::StatusOr<bool> (*)(const Value&, const CallArgs&);

absl::StatusOr<Value> ApplyFilter(std::string_view name, const Value& input, const CallArgs& args,
                                  size_t max_bytes);
absl::StatusOr<bool> ApplyTest(std::string_view name, const Value& v, const CallArgs& args);

// Jinja2's make_attrgetter: "a.b.0" looks up a, then b, then index 0.
Value GetPath(Value v, std::string_view path) {
  for (size_t start = 0; start <= path.size();) {
    const size_t dot = std::min(path.find('.', start), path.size());
    const std::string_view part = path.substr(start, dot - start);
    int64_t index;
    const auto [end, error] = std::from_chars(part.data(), part.data() + part.size(), index);
    const bool is_index =
        !part.empty() && part[0] != '-' && error == std::errc() && end == part.data() + part.size();
    v = GetItem(v, is_index ? Value::Int(index) : Value::String(std::string(part)));
    start = dot + 1;
  }
  return v;
}

// The `attribute=` argument's path, or empty.
absl::StatusOr<std::string> AttributeArgument(const Value& v) {
  if (!Given(v)) return std::string();
  if (v.is_integer()) return absl::StrCat(v.as_int());
  if (!v.is_string()) return InvalidArgumentError("attribute must be a string");
  return v.as_string();
}

// The string filters that are str methods on str(input).
absl::StatusOr<Value> AsMethod(std::string_view method, const Value& input, const CallArgs& args,
                               size_t max_bytes) {
  Value text;
  EMBER_ASSIGN_OR_RETURN(text, TextValue(input, max_bytes));
  return CallMethod(text, method, args, max_bytes);
}

absl::StatusOr<Value> FilterToJson(const Value& input, const CallArgs& args, size_t max_bytes) {
  // transformers' tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)
  std::vector<Value> a;
  EMBER_ASSIGN_OR_RETURN(
      a, BindArguments("tojson", args, {"ensure_ascii", "indent", "separators", "sort_keys"}));
  JsonOptions options;
  options.ensure_ascii = Truthy(a[0]);
  options.sort_keys = Truthy(a[3]);
  options.max_bytes = max_bytes;
  if (a[1].is_integer()) {
    if (a[1].as_int() > static_cast<int64_t>(max_bytes)) return TooLarge("the indent", max_bytes);
    options.indent = std::string(std::max<int64_t>(a[1].as_int(), 0), ' ');
  } else if (a[1].is_string()) {
    options.indent = a[1].as_string();
  } else if (Given(a[1])) {
    return InvalidArgumentError("tojson indent must be an integer or a string");
  }
  // json.dumps's default separators are ", " and ": ", but "," and ": " with an indent.
  if (options.indent) options.item_separator = std::string(",");
  if (Given(a[2])) {
    const Value& s = a[2];
    if (!s.is_list() || s.as_list().size() != 2 || !s.as_list()[0].is_string() ||
        !s.as_list()[1].is_string()) {
      return InvalidArgumentError("tojson separators must be two strings");
    }
    options.item_separator = s.as_list()[0].as_string();
    options.key_separator = s.as_list()[1].as_string();
  }
  std::string json;
  EMBER_ASSIGN_OR_RETURN(json, ToJson(input, options));
  return Value::String(std::move(json));
}

absl::StatusOr<Value> FilterJoin(const Value& input, const CallArgs& args, size_t max_bytes) {
  std::vector<Value> a, items;
  std::string attribute;
  EMBER_ASSIGN_OR_RETURN(a, BindArguments("join", args, {"d", "attribute"}));
  EMBER_ASSIGN_OR_RETURN(attribute, AttributeArgument(a[1]));
  EMBER_ASSIGN_OR_RETURN(items, Iterate(input));
  std::string separator;
  EMBER_ASSIGN_OR_RETURN(separator, Text(a[0], max_bytes));
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    absl::StrAppend(&out, i ? separator : "",
                    Str(attribute.empty() ? items[i] : GetPath(items[i], attribute), max_bytes));
    if (out.size() > max_bytes) return TooLarge("the joined string", max_bytes);
  }
  return Value::String(std::move(out));
}

absl::StatusOr<Value> FilterDefault(const Value& input, const CallArgs& args, size_t) {
  std::vector<Value> a;
  EMBER_ASSIGN_OR_RETURN(a, BindArguments("default", args, {"default_value", "boolean"}));
  const bool use_default = input.is_undefined() || (Truthy(a[1]) && !Truthy(input));
  if (!use_default) return input;
  return a[0].is_undefined() ? Value::String("") : a[0];
}

absl::StatusOr<Value> FilterFirstOrLast(const Value& input, bool last) {
  std::vector<Value> items;
  EMBER_ASSIGN_OR_RETURN(items, Iterate(input));
  if (items.empty()) {
    return Value::Undefined(
        absl::StrFormat("No %s item, sequence was empty.", last ? "last" : "first"));
  }
  return last ? items.back() : items.front();
}

absl::StatusOr<Value> FilterItems(const Value& input, const CallArgs& args, size_t max_bytes) {
  if (input.is_undefined()) return Value::List({});
  if (!input.is_dict()) return InvalidArgumentError("Can only get item pairs from a mapping.");
  return CallMethod(input, "items", args, max_bytes);
}

// select, reject, selectattr, rejectattr: (attribute,) test name, test arguments.
absl::StatusOr<Value> Select(const Value& input, const CallArgs& args, bool by_attribute,
                             bool keep) {
  size_t next = 0;
  std::string attribute, test;
  if (by_attribute) {
    if (args.positional.empty()) return InvalidArgumentError("missing attribute to select by");
    EMBER_ASSIGN_OR_RETURN(attribute, AttributeArgument(args.positional[next++]));
  }
  if (next < args.positional.size()) {
    if (!args.positional[next].is_string()) {
      return InvalidArgumentError("the test name must be a string");
    }
    test = args.positional[next++].as_string();
  }
  const CallArgs test_args{{args.positional.begin() + next, args.positional.end()}, args.keyword};
  std::vector<Value> items, selected;
  if (!Truthy(input)) return Value::List({});  // jinja2 skips a falsy sequence (None too)
  EMBER_ASSIGN_OR_RETURN(items, Iterate(input));
  for (const Value& item : items) {
    const Value v = by_attribute ? GetPath(item, attribute) : item;
    bool passed = Truthy(v);
    if (!test.empty()) EMBER_ASSIGN_OR_RETURN(passed, ApplyTest(test, v, test_args));
    if (passed == keep) selected.push_back(item);
  }
  return Value::List(std::move(selected));
}

// map(attribute='x', default=...) or map('filter', args...).
absl::StatusOr<Value> FilterMap(const Value& input, const CallArgs& args, size_t max_bytes) {
  std::vector<Value> items, out;
  if (!Truthy(input)) return Value::List({});  // jinja2 skips a falsy sequence (None too)
  EMBER_ASSIGN_OR_RETURN(items, Iterate(input));
  if (args.positional.empty()) {
    std::vector<Value> a;
    std::string attribute;
    EMBER_ASSIGN_OR_RETURN(a, BindArguments("map", args, {"attribute", "default"}, 1));
    EMBER_ASSIGN_OR_RETURN(attribute, AttributeArgument(a[0]));
    for (const Value& item : items) {
      const Value v = GetPath(item, attribute);
      out.push_back(v.is_undefined() && !a[1].is_undefined() ? a[1] : v);
    }
    return Value::List(std::move(out));
  }
  if (!args.positional[0].is_string()) {
    return InvalidArgumentError("map needs a filter name or attribute=");
  }
  const CallArgs filter_args{{args.positional.begin() + 1, args.positional.end()}, args.keyword};
  for (const Value& item : items) {
    Value v;
    EMBER_ASSIGN_OR_RETURN(
        v, ApplyFilter(args.positional[0].as_string(), item, filter_args, max_bytes));
    out.push_back(std::move(v));
  }
  return Value::List(std::move(out));
}

// The key sort, unique, min and max compare by: the attribute, lowercased unless case_sensitive.
Value SortKey(const Value& item, const std::string& attribute, bool case_sensitive) {
  Value key = attribute.empty() ? item : GetPath(item, attribute);
  if (!case_sensitive && key.is_string()) {
    std::string lower = key.as_string();
    for (char& c : lower) c = c >= 'A' && c <= 'Z' ? c + 32 : c;
    key = Value::String(std::move(lower));
  }
  return key;
}

// The items of `input` and their keys, for sort/unique/min/max(case_sensitive, attribute).
struct KeyedItems {
  std::vector<Value> items, keys;
};
absl::StatusOr<KeyedItems> Keyed(const Value& input, const Value& case_sensitive,
                                 const Value& attribute) {
  KeyedItems k;
  std::string path;
  EMBER_ASSIGN_OR_RETURN(path, AttributeArgument(attribute));
  EMBER_ASSIGN_OR_RETURN(k.items, Iterate(input));
  for (const Value& item : k.items) k.keys.push_back(SortKey(item, path, Truthy(case_sensitive)));
  return k;
}

absl::StatusOr<Value> FilterSort(const Value& input, const CallArgs& args, size_t) {
  std::vector<Value> a;
  KeyedItems k;
  EMBER_ASSIGN_OR_RETURN(a,
                         BindArguments("sort", args, {"reverse", "case_sensitive", "attribute"}));
  EMBER_ASSIGN_OR_RETURN(k, Keyed(input, a[1], a[2]));
  std::vector<size_t> order(k.items.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  absl::Status error;  // the first comparison that failed (Python's TypeError)
  const bool reverse = Truthy(a[0]);
  std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) {
    absl::StatusOr<Value> less =
        ApplyBinary(BinaryOp::kLt, k.keys[reverse ? y : x], k.keys[reverse ? x : y], 0);
    if (!less.ok()) error.Update(less.status());
    return less.ok() && less->as_bool();
  });
  EMBER_RETURN_IF_ERROR(error);
  std::vector<Value> sorted;
  for (size_t i : order) sorted.push_back(k.items[i]);
  return Value::List(std::move(sorted));
}

// dictsort(case_sensitive=False, by='key', reverse=False): the (key, value) pairs, sorted.
absl::StatusOr<Value> FilterDictSort(const Value& input, const CallArgs& args, size_t max_bytes) {
  std::vector<Value> a;
  EMBER_ASSIGN_OR_RETURN(a, BindArguments("dictsort", args, {"case_sensitive", "by", "reverse"}));
  if (!input.is_dict()) return InvalidArgumentError("dictsort needs a mapping");
  const std::string by = a[1].is_string() ? a[1].as_string() : "key";
  if (by != "key" && by != "value") {
    return InvalidArgumentError("You can only sort by either \"key\" or \"value\"");
  }
  std::vector<Value> pairs;
  for (const auto& [key, value] : input.as_dict().items()) {
    pairs.push_back(Value::List({key, value}, /*tuple=*/true));
  }
  const CallArgs sort_args{{}, {{"reverse", a[2]}, {"case_sensitive", a[0]},
                                {"attribute", Value::String(by == "key" ? "0" : "1")}}};
  return FilterSort(Value::List(std::move(pairs)), sort_args, max_bytes);
}

absl::StatusOr<Value> FilterUnique(const Value& input, const CallArgs& args, size_t) {
  std::vector<Value> a, out, seen;
  KeyedItems k;
  EMBER_ASSIGN_OR_RETURN(a, BindArguments("unique", args, {"case_sensitive", "attribute"}));
  EMBER_ASSIGN_OR_RETURN(k, Keyed(input, a[0], a[1]));
  for (size_t i = 0; i < k.items.size(); ++i) {
    const auto equal = [&](const Value& s) { return Equals(s, k.keys[i]); };
    if (std::any_of(seen.begin(), seen.end(), equal)) continue;
    seen.push_back(k.keys[i]);
    out.push_back(k.items[i]);
  }
  return Value::List(std::move(out));
}

absl::StatusOr<Value> FilterMinMax(const Value& input, const CallArgs& args, bool max) {
  std::vector<Value> a;
  KeyedItems k;
  EMBER_ASSIGN_OR_RETURN(a,
                         BindArguments(max ? "max" : "min", args, {"case_sensitive", "attribute"}));
  EMBER_ASSIGN_OR_RETURN(k, Keyed(input, a[0], a[1]));
  if (k.items.empty()) return Value::Undefined("No aggregated item, sequence was empty.");
  size_t best = 0;
  for (size_t i = 1; i < k.items.size(); ++i) {
    Value better;
    EMBER_ASSIGN_OR_RETURN(
        better, ApplyBinary(max ? BinaryOp::kGt : BinaryOp::kLt, k.keys[i], k.keys[best], 0));
    if (better.as_bool()) best = i;
  }
  return k.items[best];
}

absl::StatusOr<Value> FilterSum(const Value& input, const CallArgs& args, size_t max_bytes) {
  std::vector<Value> a, items;
  std::string attribute;
  EMBER_ASSIGN_OR_RETURN(a, BindArguments("sum", args, {"attribute", "start"}));
  EMBER_ASSIGN_OR_RETURN(attribute, AttributeArgument(a[0]));
  EMBER_ASSIGN_OR_RETURN(items, Iterate(input));
  Value total = a[1].is_undefined() ? Value::Int(0) : a[1];
  for (const Value& item : items) {
    EMBER_ASSIGN_OR_RETURN(
        total, ApplyBinary(BinaryOp::kAdd, total,
                           attribute.empty() ? item : GetPath(item, attribute), max_bytes));
  }
  return total;
}

absl::StatusOr<Value> FilterReverse(const Value& input, const CallArgs& args, size_t) {
  EMBER_RETURN_IF_ERROR(BindArguments("reverse", args, {}).status());
  if (input.is_string()) {
    std::vector<std::string_view> chars = Characters(input.as_string());
    std::string out;
    for (auto it = chars.rbegin(); it != chars.rend(); ++it) out += *it;
    return Value::String(std::move(out));
  }
  std::vector<Value> items;
  EMBER_ASSIGN_OR_RETURN(items, Iterate(input));
  std::reverse(items.begin(), items.end());
  return Value::List(std::move(items));
}

// Jinja2 3.x's indent: lines after the first (and the first with first=True) are indented;
// blank lines only with blank=True.
absl::StatusOr<Value> FilterIndent(const Value& input, const CallArgs& args, size_t max_bytes) {
  std::vector<Value> a;
  EMBER_ASSIGN_OR_RETURN(a, BindArguments("indent", args, {"width", "first", "blank"}));
  std::string indentation = "    ";
  if (a[0].is_string()) {
    indentation = a[0].as_string();
  } else if (a[0].is_integer()) {
    if (a[0].as_int() > static_cast<int64_t>(max_bytes)) return TooLarge("the indent", max_bytes);
    indentation = std::string(std::max<int64_t>(a[0].as_int(), 0), ' ');
  } else if (Given(a[0])) {
    return InvalidArgumentError("indent width must be an integer or a string");
  }
  std::string text;
  EMBER_ASSIGN_OR_RETURN(text, Text(input, max_bytes));
  std::vector<std::string_view> lines;  // str.splitlines() of text + "\n"
  for (size_t start = 0; start <= text.size();) {
    size_t end = text.find_first_of("\r\n", start);
    if (end == std::string::npos) end = text.size();
    lines.push_back(std::string_view(text).substr(start, end - start));
    start = end + (text.compare(end, 2, "\r\n") == 0 ? 2 : 1);
  }
  if (lines.size() * indentation.size() + text.size() > max_bytes) {
    return TooLarge("the indented string", max_bytes);
  }
  std::string out = Truthy(a[1]) ? indentation : "";
  for (size_t i = 0; i < lines.size(); ++i) {
    if (i) out += '\n';
    if (i && (Truthy(a[2]) || !lines[i].empty())) out += indentation;
    out += lines[i];
  }
  return Value::String(std::move(out));
}

// Jinja2's title: words start after '-', whitespace or an opening bracket.
absl::StatusOr<Value> FilterTitle(const Value& input, const CallArgs& args, size_t max_bytes) {
  EMBER_RETURN_IF_ERROR(BindArguments("title", args, {}).status());
  std::string s;
  EMBER_ASSIGN_OR_RETURN(s, Text(input, max_bytes));
  bool word_start = true;
  for (char& c : s) {
    const bool separator = std::string_view("- \t\n\r\f\v({[<").find(c) != std::string_view::npos;
    if (!separator) {
      c = word_start ? (c >= 'a' && c <= 'z' ? c - 32 : c) : (c >= 'A' && c <= 'Z' ? c + 32 : c);
    }
    word_start = separator;
  }
  return Value::String(std::move(s));
}

absl::StatusOr<Value> FilterRound(const Value& input, const CallArgs& args, size_t) {
  std::vector<Value> a;
  EMBER_ASSIGN_OR_RETURN(a, BindArguments("round", args, {"precision", "method"}));
  const int64_t precision = a[0].is_integer() ? a[0].as_int() : 0;
  const std::string method = a[1].is_string() ? a[1].as_string() : "common";
  if (method != "common" && method != "ceil" && method != "floor") {
    return InvalidArgumentError("method must be common, ceil or floor");
  }
  if (!input.is_number()) {
    return InvalidArgumentError(absl::StrFormat("cannot round a %s", input.type_name()));
  }
  const double x = input.as_float(), scale = std::pow(10.0, static_cast<double>(precision));
  if (method != "common") {
    return Value::Float((method == "ceil" ? std::ceil(x * scale) : std::floor(x * scale)) / scale);
  }
  if (precision <= 0) {  // ties to even; Python keeps an int an int
    const double rounded = std::nearbyint(x / (1 / scale)) * (1 / scale);
    if (!input.is_integer()) return Value::Float(rounded);
    if (precision == 0) return Value::Int(input.as_int());
    if (std::fabs(rounded) >= 9.2e18) return InvalidArgumentError("integer overflow in round");
    return Value::Int(static_cast<int64_t>(rounded));
  }
  if (input.is_integer()) return Value::Int(input.as_int());
  // Python rounds the exact binary value to `precision` decimals, as printf does; past 400
  // decimals no double changes.
  const int digits = static_cast<int>(std::min<int64_t>(precision, 400));
  std::string text(std::snprintf(nullptr, 0, "%.*f", digits, x) + 1, '\0');
  std::snprintf(text.data(), text.size(), "%.*f", digits, x);
  return Value::Float(std::strtod(text.c_str(), nullptr));
}

std::string_view TrimSpace(std::string_view s) {
  constexpr std::string_view kSpace = " \t\n\r\f\v";
  const size_t begin = s.find_first_not_of(kSpace);
  if (begin == std::string_view::npos) return {};
  return s.substr(begin, s.find_last_not_of(kSpace) - begin + 1);
}

// Python's int(s) or float(s) of a decimal string: surrounding whitespace is allowed.
template <typename Number>
std::optional<Number> ParseNumber(std::string_view s) {
  s = TrimSpace(s);
  if (!s.empty() && s[0] == '+') s.remove_prefix(1);
  Number n;
  const auto [end, error] = std::from_chars(s.data(), s.data() + s.size(), n);
  if (s.empty() || error != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return n;
}

// Jinja2's int and float filters: numbers and numeric strings convert, anything else is the
// default.
absl::StatusOr<Value> FilterInt(const Value& input, const CallArgs& args, size_t) {
  std::vector<Value> a;
  EMBER_ASSIGN_OR_RETURN(a, BindArguments("int", args, {"default", "base"}));
  const Value fallback = a[0].is_undefined() ? Value::Int(0) : a[0];
  if (input.is_integer()) return Value::Int(input.as_int());
  std::optional<double> d =
      input.kind() == Value::Kind::kFloat ? std::optional(input.as_float()) : std::nullopt;
  if (input.is_string()) {
    if (std::optional<int64_t> i = ParseNumber<int64_t>(input.as_string())) return Value::Int(*i);
    d = ParseNumber<double>(input.as_string());
  }
  if (!d || std::isnan(*d)) return fallback;
  if (std::fabs(*d) >= 9.2e18) return InvalidArgumentError("cannot convert float to an int64");
  return Value::Int(static_cast<int64_t>(*d));
}

absl::StatusOr<Value> FilterFloat(const Value& input, const CallArgs& args, size_t) {
  std::vector<Value> a;
  EMBER_ASSIGN_OR_RETURN(a, BindArguments("float", args, {"default"}));
  if (input.is_number()) return Value::Float(input.as_float());
  if (input.is_string()) {
    if (std::optional<double> d = ParseNumber<double>(input.as_string())) return Value::Float(*d);
  }
  return a[0].is_undefined() ? Value::Float(0) : a[0];
}

absl::StatusOr<Value> FilterAbs(const Value& input, const CallArgs& args, size_t) {
  EMBER_RETURN_IF_ERROR(BindArguments("abs", args, {}).status());
  if (input.kind() == Value::Kind::kFloat) return Value::Float(std::fabs(input.as_float()));
  if (input.is_integer() && input.as_int() < 0) return Negate(input);
  if (input.is_integer()) return Value::Int(input.as_int());
  return InvalidArgumentError(
      absl::StrFormat("bad operand type for abs(): '%s'", input.type_name()));
}

absl::StatusOr<Value> FilterEscape(const Value& input, const CallArgs& args, size_t max_bytes) {
  EMBER_RETURN_IF_ERROR(BindArguments("escape", args, {}).status());
  if (input.is_markup()) return input;
  std::string text;
  EMBER_ASSIGN_OR_RETURN(text, Text(input, max_bytes));
  text = HtmlEscape(text);
  if (text.size() > max_bytes) return TooLarge("the escaped string", max_bytes);
  return Value::Markup(std::move(text));
}

absl::StatusOr<Value> FilterSafe(const Value& input, const CallArgs& args, size_t max_bytes) {
  EMBER_RETURN_IF_ERROR(BindArguments("safe", args, {}).status());
  std::string text;
  EMBER_ASSIGN_OR_RETURN(text, Text(input, max_bytes));
  return Value::Markup(std::move(text));
}

absl::StatusOr<Value> FilterWordcount(const Value& input, const CallArgs& args, size_t max_bytes) {
  EMBER_RETURN_IF_ERROR(BindArguments("wordcount", args, {}).status());
  // Runs of \w; bytes of non-ASCII characters count as word characters.
  std::string text;
  EMBER_ASSIGN_OR_RETURN(text, Text(input, max_bytes));
  int64_t words = 0;
  bool in_word = false;
  for (char c : text) {
    const bool word = std::isalnum(static_cast<unsigned char>(c)) || c == '_' ||
                      static_cast<unsigned char>(c) >= 0x80;
    words += word && !in_word;
    in_word = word;
  }
  return Value::Int(words);
}

struct Filter {
  std::string_view name;
  FilterFn fn;
};

#define EMBER_JINJA_LAMBDA(body)                                \
  [](const Value& input, [[maybe_unused]] const CallArgs& args, \
     [[maybe_unused]] size_t max_bytes) -> absl::StatusOr<Value> { body; }

const Filter kFilters[] = {
    {"abs", FilterAbs},
    {"capitalize", EMBER_JINJA_LAMBDA(return AsMethod("capitalize", input, args, max_bytes))},
    {"count",
     EMBER_JINJA_LAMBDA(int64_t n; EMBER_ASSIGN_OR_RETURN(n, Length(input)); return Value::Int(n))},
    {"d", FilterDefault},
    {"default", FilterDefault},
    {"dictsort", FilterDictSort},
    {"e", FilterEscape},
    {"escape", FilterEscape},
    {"first", EMBER_JINJA_LAMBDA(return FilterFirstOrLast(input, /*last=*/false))},
    {"float", FilterFloat},
    {"indent", FilterIndent},
    {"int", FilterInt},
    {"items", FilterItems},
    {"join", FilterJoin},
    {"last", EMBER_JINJA_LAMBDA(return FilterFirstOrLast(input, /*last=*/true))},
    {"length",
     EMBER_JINJA_LAMBDA(int64_t n; EMBER_ASSIGN_OR_RETURN(n, Length(input)); return Value::Int(n))},
    {"list",
     EMBER_JINJA_LAMBDA(std::vector<Value> items; EMBER_ASSIGN_OR_RETURN(items, Iterate(input));
                        return Value::List(std::move(items)))},
    {"lower", EMBER_JINJA_LAMBDA(return AsMethod("lower", input, args, max_bytes))},
    {"map", FilterMap},
    {"max", EMBER_JINJA_LAMBDA(return FilterMinMax(input, args, /*max=*/true))},
    {"min", EMBER_JINJA_LAMBDA(return FilterMinMax(input, args, /*max=*/false))},
    {"reject",
     EMBER_JINJA_LAMBDA(return Select(input, args, /*by_attribute=*/false, /*keep=*/false))},
    {"rejectattr",
     EMBER_JINJA_LAMBDA(return Select(input, args, /*by_attribute=*/true, /*keep=*/false))},
    {"replace", EMBER_JINJA_LAMBDA(return AsMethod("replace", input, args, max_bytes))},
    {"reverse", FilterReverse},
    {"round", FilterRound},
    {"safe", FilterSafe},
    {"select",
     EMBER_JINJA_LAMBDA(return Select(input, args, /*by_attribute=*/false, /*keep=*/true))},
    {"selectattr",
     EMBER_JINJA_LAMBDA(return Select(input, args, /*by_attribute=*/true, /*keep=*/true))},
    {"sort", FilterSort},
    // str() of a Markup keeps it one (jinja2's soft_str).
    {"string", EMBER_JINJA_LAMBDA(return input.is_markup() ? input : TextValue(input, max_bytes))},
    {"sum", FilterSum},
    {"title", FilterTitle},
    {"tojson", FilterToJson},
    {"trim", EMBER_JINJA_LAMBDA(return AsMethod("strip", input, args, max_bytes))},
    {"unique", FilterUnique},
    {"upper", EMBER_JINJA_LAMBDA(return AsMethod("upper", input, args, max_bytes))},
    {"wordcount", FilterWordcount},
};
#undef EMBER_JINJA_LAMBDA

// The single argument of a test such as divisibleby(3) or eq(x).
absl::StatusOr<Value> TestArgument(std::string_view test, const CallArgs& args) {
  std::vector<Value> a;
  EMBER_ASSIGN_OR_RETURN(a, BindArguments(test, args, {"other"}, 1));
  return a[0];
}

absl::StatusOr<bool> TestCompare(const Value& v, const CallArgs& args, BinaryOp op) {
  Value other, result;
  EMBER_ASSIGN_OR_RETURN(other, TestArgument(OperatorSymbol(op), args));
  EMBER_ASSIGN_OR_RETURN(result, ApplyBinary(op, v, other, 0));
  return result.as_bool();
}

// Python's `value % by == remainder`, which floats pass too.
absl::StatusOr<bool> TestRemainder(const Value& v, const Value& by, int64_t remainder) {
  Value r;
  EMBER_ASSIGN_OR_RETURN(r, ApplyBinary(BinaryOp::kMod, v, by, 0));
  return Equals(r, Value::Int(remainder));
}

struct Test {
  std::string_view name;
  TestFn fn;
};

#define EMBER_JINJA_LAMBDA(body) \
  [](const Value& v, [[maybe_unused]] const CallArgs& args) -> absl::StatusOr<bool> { body; }
#define EMBER_JINJA_COMPARE(op) EMBER_JINJA_LAMBDA(return TestCompare(v, args, op))

const Test kTests[] = {
    {"boolean", EMBER_JINJA_LAMBDA(return v.kind() == Value::Kind::kBool)},
    {"callable", EMBER_JINJA_LAMBDA(return v.kind() == Value::Kind::kCallable)},
    {"defined", EMBER_JINJA_LAMBDA(return !v.is_undefined())},
    {"divisibleby",
     EMBER_JINJA_LAMBDA(Value n; EMBER_ASSIGN_OR_RETURN(n, TestArgument("divisibleby", args));
                        return TestRemainder(v, n, 0))},
    {"eq", EMBER_JINJA_COMPARE(BinaryOp::kEq)},
    {"equalto", EMBER_JINJA_COMPARE(BinaryOp::kEq)},
    {"==", EMBER_JINJA_COMPARE(BinaryOp::kEq)},
    {"ne", EMBER_JINJA_COMPARE(BinaryOp::kNe)},
    {"!=", EMBER_JINJA_COMPARE(BinaryOp::kNe)},
    {"lt", EMBER_JINJA_COMPARE(BinaryOp::kLt)},
    {"<", EMBER_JINJA_COMPARE(BinaryOp::kLt)},
    {"le", EMBER_JINJA_COMPARE(BinaryOp::kLe)},
    {"<=", EMBER_JINJA_COMPARE(BinaryOp::kLe)},
    {"gt", EMBER_JINJA_COMPARE(BinaryOp::kGt)},
    {">", EMBER_JINJA_COMPARE(BinaryOp::kGt)},
    {"ge", EMBER_JINJA_COMPARE(BinaryOp::kGe)},
    {">=", EMBER_JINJA_COMPARE(BinaryOp::kGe)},
    {"in", EMBER_JINJA_COMPARE(BinaryOp::kIn)},
    {"even", EMBER_JINJA_LAMBDA(return TestRemainder(v, Value::Int(2), 0))},
    {"odd", EMBER_JINJA_LAMBDA(return TestRemainder(v, Value::Int(2), 1))},
    {"false", EMBER_JINJA_LAMBDA(return v.kind() == Value::Kind::kBool && !v.as_bool())},
    {"true", EMBER_JINJA_LAMBDA(return v.kind() == Value::Kind::kBool && v.as_bool())},
    {"float", EMBER_JINJA_LAMBDA(return v.kind() == Value::Kind::kFloat)},
    {"integer", EMBER_JINJA_LAMBDA(return v.kind() == Value::Kind::kInt)},
    {"number", EMBER_JINJA_LAMBDA(return v.is_number())},
    {"string", EMBER_JINJA_LAMBDA(return v.is_string())},
    {"mapping", EMBER_JINJA_LAMBDA(return v.is_dict())},
    {"none", EMBER_JINJA_LAMBDA(return v.is_none())},
    {"undefined", EMBER_JINJA_LAMBDA(return v.is_undefined())},
    // Undefined iterates as empty and has a length, so Jinja2 counts it as both.
    {"iterable",
     EMBER_JINJA_LAMBDA(return v.is_string() || v.is_list() || v.is_dict() || v.is_undefined())},
    {"sequence",
     EMBER_JINJA_LAMBDA(return v.is_string() || v.is_list() || v.is_dict() || v.is_undefined())},
};
#undef EMBER_JINJA_COMPARE
#undef EMBER_JINJA_LAMBDA

absl::StatusOr<Value> ApplyFilter(std::string_view name, const Value& input, const CallArgs& args,
                                  size_t max_bytes) {
  for (const Filter& f : kFilters) {
    if (f.name == name) return f.fn(input, args, max_bytes);
  }
  return InvalidArgumentError(absl::StrFormat("no filter named '%s'", name));
}

absl::StatusOr<bool> ApplyTest(std::string_view name, const Value& v, const CallArgs& args) {
  for (const Test& t : kTests) {
    if (t.name == name) return t.fn(v, args);
  }
  return InvalidArgumentError(absl::StrFormat("no test named '%s'", name));
}

// --- Globals ------------------------------------------------------------------------------

absl::StatusOr<Value> Range(const CallArgs& args) {
  if (!args.keyword.empty() || args.positional.empty() || args.positional.size() > 3) {
    return InvalidArgumentError("range() takes 1 to 3 integer arguments");
  }
  for (const Value& v : args.positional) {
    if (!v.is_integer()) {
      return InvalidArgumentError(absl::StrFormat("range() needs integers, not %s", v.type_name()));
    }
  }
  const auto& p = args.positional;
  const int64_t start = p.size() > 1 ? p[0].as_int() : 0,
                stop = p.size() > 1 ? p[1].as_int() : p[0].as_int();
  const int64_t step = p.size() > 2 ? p[2].as_int() : 1;
  if (step == 0) return InvalidArgumentError("range() arg 3 must not be zero");
  const double count = std::ceil((static_cast<double>(stop) - static_cast<double>(start)) /
                                 static_cast<double>(step));
  if (count > kMaxRange) {
    return InvalidArgumentError(
        absl::StrFormat("range too big: the sandbox allows at most %d items", kMaxRange));
  }
  std::vector<Value> items;
  for (int64_t i = 0; i < count; ++i) items.push_back(Value::Int(start + i * step));
  return Value::List(std::move(items));
}

// The keyword arguments (after an optional dict) as a Dict, as dict() and namespace() take them.
absl::StatusOr<Dict> KeywordDict(std::string_view function, const CallArgs& args) {
  Dict d;
  if (args.positional.size() > 1 ||
      (args.positional.size() == 1 && !args.positional[0].is_dict())) {
    return InvalidArgumentError(
        absl::StrFormat("%s() takes one optional dict and keyword arguments", function));
  }
  if (!args.positional.empty()) d = args.positional[0].as_dict();
  for (const auto& [key, value] : args.keyword) d.Set(key, value);
  return d;
}

absl::StatusOr<Value> StrftimeNow(const CallArgs& args) {
  std::vector<Value> a;
  EMBER_ASSIGN_OR_RETURN(a, BindArguments("strftime_now", args, {"format"}, 1));
  const std::string format = Str(a[0]);
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char text[256];  // a longer result comes out empty, as strftime gives nothing then
  return Value::String(std::string(text, std::strftime(text, sizeof text, format.c_str(), &local)));
}

// --- The evaluator ------------------------------------------------------------------------

// Variables assigned in one template, for-loop iteration or macro call; lookups continue in
// the parent.
struct Frame {
  Frame* parent;
  std::unordered_map<std::string, Value> vars;
};

enum class Flow { kNormal, kBreak, kContinue };

class Renderer {
 public:
  Renderer(const Dict& context, const Limits& limits) : context_(context), limits_(limits) {
    const auto add = [this](std::string name, Function fn) {
      builtins_.emplace(name, Value::Callable(name, std::move(fn)));
    };
    add("range", Range);
    add("dict", [](const CallArgs& args) -> absl::StatusOr<Value> {
      Dict d;
      EMBER_ASSIGN_OR_RETURN(d, KeywordDict("dict", args));
      return Value::FromDict(std::move(d));
    });
    add("namespace", [this](const CallArgs& args) -> absl::StatusOr<Value> {
      Dict d;
      EMBER_ASSIGN_OR_RETURN(d, KeywordDict("namespace", args));
      namespaces_.push_back(Value::Namespace(std::move(d)));
      return namespaces_.back();
    });
    add("raise_exception", [](const CallArgs& args) -> absl::StatusOr<Value> {
      absl::Status raised =
          InvalidArgumentError(args.positional.empty() ? "" : Str(args.positional[0]));
      raised.SetPayload(kLocated, absl::Cord());
      return raised;
    });
    add("strftime_now", StrftimeNow);
  }

  // Namespaces can hold each other (and so never be freed) or chain deeply (and be freed by
  // deep recursion); emptying each one here avoids both.
  ~Renderer() {
    for (const Value& ns : namespaces_) ns.namespace_attributes() = Dict();
  }

  absl::StatusOr<std::string> Run(const Body& body) {
    const absl::StatusOr<Flow> flow = ExecBody(body, root_);
    if (!flow.ok()) return absl::Status(flow.status().code(), flow.status().message());
    return std::move(out_);
  }

 private:
  absl::Status Step(Position pos) {
    if (++steps_ <= limits_.max_steps) return absl::OkStatus();
    return Locate(absl::ResourceExhaustedError(
                      absl::StrFormat("the template exceeded max_steps (%d)", limits_.max_steps)),
                  pos);
  }

  absl::Status Emit(std::string_view text) {
    if (out_.size() + text.size() > limits_.max_output_bytes) {
      return TooLarge("the output", limits_.max_output_bytes);
    }
    out_ += text;
    return absl::OkStatus();
  }

  // Runs `body` into a string of its own (macro calls, block sets).
  absl::StatusOr<std::string> Capture(const Body& body, Frame& frame, Flow* flow) {
    std::string saved = std::exchange(out_, std::string());
    absl::StatusOr<Flow> result = ExecBody(body, frame);
    std::string captured = std::exchange(out_, std::move(saved));
    if (!result.ok()) return result.status();
    if (flow) *flow = *result;
    return captured;
  }

  Value Lookup(const std::string& name, const Frame& frame) const {
    for (const Frame* f = &frame; f; f = f->parent) {
      if (auto it = f->vars.find(name); it != f->vars.end()) return it->second;
    }
    if (const Value* v = context_.Find(name)) return *v;
    if (auto it = builtins_.find(name); it != builtins_.end()) return it->second;
    return Value::Undefined(absl::StrFormat("'%s' is undefined", name));
  }

  // The values `for a, b in ...` and `set a, b = ...` assign.
  static absl::StatusOr<std::vector<Value>> Unpack(const Value& v, size_t n) {
    if (n == 1) return std::vector<Value>{v};
    std::vector<Value> items;
    EMBER_ASSIGN_OR_RETURN(items, Iterate(v));
    if (items.size() != n) {
      return InvalidArgumentError(
          items.size() > n ? absl::StrFormat("too many values to unpack (expected %d)", n)
                           : absl::StrFormat("not enough values to unpack (expected %d, got %d)", n,
                                             items.size()));
    }
    return items;
  }

  // --- Statements ---

  absl::StatusOr<Flow> ExecBody(const Body& body, Frame& frame) {
    for (const Stmt& stmt : body) {
      EMBER_RETURN_IF_ERROR(Step(stmt.pos));
      absl::StatusOr<Flow> flow =
          std::visit([&](const auto& node) { return Exec(node, stmt.pos, frame); }, stmt.node);
      if (!flow.ok()) return Locate(flow.status(), stmt.pos);
      if (*flow != Flow::kNormal) return flow;
    }
    return Flow::kNormal;
  }

  absl::StatusOr<Flow> Exec(const TextStmt& node, Position, Frame&) {
    EMBER_RETURN_IF_ERROR(Emit(node.text));
    return Flow::kNormal;
  }

  absl::StatusOr<Flow> Exec(const OutputStmt& node, Position, Frame& frame) {
    Value v;
    EMBER_ASSIGN_OR_RETURN(v, Eval(*node.expr, frame));
    EMBER_RETURN_IF_ERROR(Emit(Str(v, limits_.max_output_bytes)));
    return Flow::kNormal;
  }

  absl::StatusOr<Flow> Exec(const IfStmt& node, Position, Frame& frame) {
    for (const auto& [condition, body] : node.branches) {
      Value v;
      EMBER_ASSIGN_OR_RETURN(v, Eval(*condition, frame));
      if (Truthy(v)) return ExecBody(body, frame);
    }
    return ExecBody(node.otherwise, frame);
  }

  absl::StatusOr<Flow> Exec(const ForStmt& node, Position pos, Frame& frame) {
    Value iterable;
    std::vector<Value> all, items;
    EMBER_ASSIGN_OR_RETURN(iterable, Eval(*node.iterable, frame));
    EMBER_ASSIGN_OR_RETURN(all, Iterate(iterable));
    for (const Value& item : all) {  // `if` filters before `loop` counts, as in Jinja2
      if (!node.filter) {
        items.push_back(item);
        continue;
      }
      Frame scope{&frame, {}};
      EMBER_RETURN_IF_ERROR(Assign(node.targets, item, scope));
      Value keep;
      EMBER_ASSIGN_OR_RETURN(keep, Eval(*node.filter, scope));
      if (Truthy(keep)) items.push_back(item);
    }
    if (items.empty()) {  // a break in `else` belongs to an enclosing loop
      Frame scope{&frame, {}};
      return ExecBody(node.otherwise, scope);
    }
    Frame scope{&frame, {}};
    for (size_t i = 0; i < items.size(); ++i) {
      EMBER_RETURN_IF_ERROR(Step(pos));  // an iteration costs a step even with an empty body
      scope.vars.clear();                // each iteration starts from the enclosing variables
      EMBER_RETURN_IF_ERROR(Assign(node.targets, items[i], scope));
      if (node.uses_loop) scope.vars["loop"] = LoopObject(items, i);
      Flow flow;
      EMBER_ASSIGN_OR_RETURN(flow, ExecBody(node.body, scope));
      if (flow == Flow::kBreak) break;
    }
    return Flow::kNormal;
  }

  absl::Status Assign(const std::vector<std::string>& names, const Value& v, Frame& frame) {
    if (names.size() == 1) {
      frame.vars[names[0]] = v;
      return absl::OkStatus();
    }
    std::vector<Value> values;
    EMBER_ASSIGN_OR_RETURN(values, Unpack(v, names.size()));
    for (size_t i = 0; i < names.size(); ++i) frame.vars[names[i]] = values[i];
    return absl::OkStatus();
  }

  static Value LoopObject(const std::vector<Value>& items, size_t i) {
    const int64_t n = items.size(), index = i;
    Dict loop;
    loop.Set("index0", Value::Int(index));
    loop.Set("index", Value::Int(index + 1));
    loop.Set("revindex", Value::Int(n - index));
    loop.Set("revindex0", Value::Int(n - index - 1));
    loop.Set("first", Value::Bool(index == 0));
    loop.Set("last", Value::Bool(index == n - 1));
    loop.Set("length", Value::Int(n));
    loop.Set("depth", Value::Int(1));
    loop.Set("depth0", Value::Int(0));
    loop.Set("previtem", index > 0 ? items[i - 1] : Value::Undefined("there is no previous item"));
    loop.Set("nextitem", index < n - 1 ? items[i + 1] : Value::Undefined("there is no next item"));
    loop.Set("cycle",
             Value::Callable("loop.cycle", [i](const CallArgs& args) -> absl::StatusOr<Value> {
               if (args.positional.empty()) {
                 return InvalidArgumentError("no items for cycling given");
               }
               return args.positional[i % args.positional.size()];
             }));
    return Value::FromDict(std::move(loop));
  }

  absl::StatusOr<Flow> Exec(const SetStmt& node, Position, Frame& frame) {
    Value v;
    std::vector<Value> values;
    EMBER_ASSIGN_OR_RETURN(v, Eval(*node.value, frame));
    EMBER_ASSIGN_OR_RETURN(values, Unpack(v, node.targets.size()));
    for (size_t i = 0; i < values.size(); ++i) {
      const SetTarget& target = node.targets[i];
      if (target.attribute.empty()) {
        frame.vars[target.name] = values[i];
        continue;
      }
      const Value ns = Lookup(target.name, frame);
      if (ns.kind() != Value::Kind::kNamespace) {
        return InvalidArgumentError(
            absl::StrFormat("cannot assign attribute on non-namespace object '%s'", target.name));
      }
      ns.namespace_attributes().Set(target.attribute, values[i]);
    }
    return Flow::kNormal;
  }

  absl::StatusOr<Flow> Exec(const SetBlockStmt& node, Position, Frame& frame) {
    Flow flow = Flow::kNormal;
    std::string text;
    EMBER_ASSIGN_OR_RETURN(text, Capture(node.body, frame, &flow));
    frame.vars[node.name] = Value::String(std::move(text));
    return flow;
  }

  absl::StatusOr<Flow> Exec(const MacroStmt& node, Position, Frame& frame) {
    frame.vars[node.name] = Value::Callable(
        node.name, [this, &node](const CallArgs& args) { return CallMacro(node, args); });
    return Flow::kNormal;
  }

  absl::StatusOr<Flow> Exec(const LoopControlStmt& node, Position, Frame&) {
    return node.is_break ? Flow::kBreak : Flow::kContinue;
  }

  // A macro runs in a frame of its own over the template's top level: it sees its parameters
  // and the template's variables, not its caller's. Parameters not passed are undefined.
  absl::StatusOr<Value> CallMacro(const MacroStmt& node, const CallArgs& args) {
    if (depth_ >= limits_.max_depth) {
      return absl::ResourceExhaustedError(
          absl::StrFormat("macro calls nested deeper than max_depth (%d)", limits_.max_depth));
    }
    if (args.positional.size() > node.params.size()) {
      return InvalidArgumentError(absl::StrFormat("macro '%s' takes not more than %d argument(s)",
                                                  node.name, node.params.size()));
    }
    for (const auto& [key, value] : args.keyword) {
      const auto param = std::find(node.params.begin(), node.params.end(), key);
      if (param == node.params.end()) {
        return InvalidArgumentError(
            absl::StrFormat("macro '%s' takes no keyword argument '%s'", node.name, key));
      }
      if (static_cast<size_t>(param - node.params.begin()) < args.positional.size()) {
        return InvalidArgumentError(
            absl::StrFormat("macro '%s' got multiple values for argument '%s'", node.name, key));
      }
    }
    Frame frame{&root_, {}};
    for (size_t i = 0; i < node.params.size(); ++i) {
      const auto given = std::find_if(args.keyword.begin(), args.keyword.end(),
                                      [&](const auto& kw) { return kw.first == node.params[i]; });
      Value v = i < args.positional.size() ? args.positional[i]
                : given != args.keyword.end()
                    ? given->second
                    : Value::Undefined(
                          absl::StrFormat("parameter '%s' was not provided", node.params[i]));
      if (v.is_undefined() && node.defaults[i]) {  // defaults may use the parameters before them
        EMBER_ASSIGN_OR_RETURN(v, Eval(*node.defaults[i], frame));
      }
      frame.vars[node.params[i]] = std::move(v);
    }
    ++depth_;
    absl::StatusOr<std::string> text = Capture(node.body, frame, nullptr);
    --depth_;
    if (!text.ok()) return text.status();
    return Value::String(*std::move(text));
  }

  // --- Expressions ---

  absl::StatusOr<Value> Eval(const Expr& expr, Frame& frame) {
    EMBER_RETURN_IF_ERROR(Step(expr.pos));
    absl::StatusOr<Value> v =
        std::visit([&](const auto& node) { return EvalNode(node, frame); }, expr.node);
    if (!v.ok()) return Locate(v.status(), expr.pos);
    // Values chain only through variables, which every use evaluates: bounding each value's
    // nesting here bounds the recursion that prints, compares and frees them.
    if (v->depth() > limits_.max_depth) {
      return Locate(absl::ResourceExhaustedError(absl::StrFormat(
                        "a value nests deeper than max_depth (%d)", limits_.max_depth)),
                    expr.pos);
    }
    return v;
  }

  absl::StatusOr<CallArgs> EvalArgs(const Args& args, Frame& frame) {
    CallArgs out;
    for (const ExprPtr& e : args.positional) {
      Value v;
      EMBER_ASSIGN_OR_RETURN(v, Eval(*e, frame));
      out.positional.push_back(std::move(v));
    }
    for (const auto& [key, e] : args.keyword) {
      Value v;
      EMBER_ASSIGN_OR_RETURN(v, Eval(*e, frame));
      out.keyword.emplace_back(key, std::move(v));
    }
    return out;
  }

  absl::StatusOr<Value> EvalNode(const LiteralExpr& node, Frame&) { return node.value; }
  absl::StatusOr<Value> EvalNode(const NameExpr& node, Frame& frame) {
    return Lookup(node.name, frame);
  }

  absl::StatusOr<Value> EvalNode(const ListExpr& node, Frame& frame) {
    std::vector<Value> items;
    for (const ExprPtr& e : node.items) {
      Value v;
      EMBER_ASSIGN_OR_RETURN(v, Eval(*e, frame));
      items.push_back(std::move(v));
    }
    return Value::List(std::move(items), node.tuple);
  }

  absl::StatusOr<Value> EvalNode(const DictExpr& node, Frame& frame) {
    Dict d;
    for (const auto& [key_expr, value_expr] : node.items) {
      Value key, value;
      EMBER_ASSIGN_OR_RETURN(key, Eval(*key_expr, frame));
      EMBER_ASSIGN_OR_RETURN(value, Eval(*value_expr, frame));
      if (!Dict::Hashable(key)) {
        return InvalidArgumentError(absl::StrFormat("unhashable type: '%s'", key.type_name()));
      }
      d.Set(std::move(key), std::move(value));
    }
    return Value::FromDict(std::move(d));
  }

  // Jinja2 tries the Python attribute first: `d.items` is dict.items even when d has a key
  // "items".
  absl::StatusOr<Value> EvalNode(const AttributeExpr& node, Frame& frame) {
    Value object;
    EMBER_ASSIGN_OR_RETURN(object, Eval(*node.object, frame));
    if (!HasMethod(object, node.name)) return GetItem(object, Value::String(node.name));
    const size_t max_bytes = limits_.max_output_bytes;
    return Value::Callable(node.name, [object, name = node.name, max_bytes](const CallArgs& args) {
      return CallMethod(object, name, args, max_bytes);
    });
  }

  absl::StatusOr<Value> EvalNode(const SubscriptExpr& node, Frame& frame) {
    Value object, index;
    EMBER_ASSIGN_OR_RETURN(object, Eval(*node.object, frame));
    EMBER_ASSIGN_OR_RETURN(index, Eval(*node.index, frame));
    return GetItem(object, index);
  }

  absl::StatusOr<Value> EvalNode(const SliceExpr& node, Frame& frame) {
    Value object, bounds[3];
    EMBER_ASSIGN_OR_RETURN(object, Eval(*node.object, frame));
    const ExprPtr* parts[3] = {&node.start, &node.stop, &node.step};
    for (int i = 0; i < 3; ++i) {
      if (*parts[i]) EMBER_ASSIGN_OR_RETURN(bounds[i], Eval(**parts[i], frame));
    }
    return Slice(object, bounds[0], bounds[1], bounds[2]);
  }

  absl::StatusOr<Value> EvalNode(const CallExpr& node, Frame& frame) {
    Value callee;
    CallArgs args;
    EMBER_ASSIGN_OR_RETURN(callee, Eval(*node.callee, frame));
    EMBER_ASSIGN_OR_RETURN(args, EvalArgs(node.args, frame));
    if (callee.is_undefined()) return InvalidArgumentError(callee.undefined_hint());
    if (callee.kind() != Value::Kind::kCallable) {
      return InvalidArgumentError(
          absl::StrFormat("'%s' object is not callable", callee.type_name()));
    }
    return callee.function()(args);
  }

  absl::StatusOr<Value> EvalNode(const FilterExpr& node, Frame& frame) {
    Value input;
    CallArgs args;
    EMBER_ASSIGN_OR_RETURN(input, Eval(*node.operand, frame));
    EMBER_ASSIGN_OR_RETURN(args, EvalArgs(node.args, frame));
    return ApplyFilter(node.name, input, args, limits_.max_output_bytes);
  }

  absl::StatusOr<Value> EvalNode(const TestExpr& node, Frame& frame) {
    Value operand;
    CallArgs args;
    bool passed;
    EMBER_ASSIGN_OR_RETURN(operand, Eval(*node.operand, frame));
    EMBER_ASSIGN_OR_RETURN(args, EvalArgs(node.args, frame));
    EMBER_ASSIGN_OR_RETURN(passed, ApplyTest(node.name, operand, args));
    return Value::Bool(passed != node.negated);
  }

  absl::StatusOr<Value> EvalNode(const UnaryExpr& node, Frame& frame) {
    Value v;
    EMBER_ASSIGN_OR_RETURN(v, Eval(*node.operand, frame));
    switch (node.op) {
      case UnaryExpr::Op::kNot:
        return Value::Bool(!Truthy(v));
      case UnaryExpr::Op::kMinus:
        return Negate(v);
      case UnaryExpr::Op::kPlus:
        if (v.is_undefined()) return InvalidArgumentError(v.undefined_hint());
        if (!v.is_number()) {
          return InvalidArgumentError(
              absl::StrFormat("bad operand type for unary +: '%s'", v.type_name()));
        }
        return v;
    }
    return v;
  }

  absl::StatusOr<Value> EvalNode(const BinaryExpr& node, Frame& frame) {
    Value left, right;
    EMBER_ASSIGN_OR_RETURN(left, Eval(*node.left, frame));
    EMBER_ASSIGN_OR_RETURN(right, Eval(*node.right, frame));
    return ApplyBinary(node.op, left, right, limits_.max_output_bytes);
  }

  absl::StatusOr<Value> EvalNode(const LogicalExpr& node, Frame& frame) {
    Value left;
    EMBER_ASSIGN_OR_RETURN(left, Eval(*node.left, frame));
    if (Truthy(left) != node.is_and) return left;
    return Eval(*node.right, frame);
  }

  absl::StatusOr<Value> EvalNode(const ConditionalExpr& node, Frame& frame) {
    Value condition;
    EMBER_ASSIGN_OR_RETURN(condition, Eval(*node.condition, frame));
    if (Truthy(condition)) return Eval(*node.then, frame);
    if (node.otherwise) return Eval(*node.otherwise, frame);
    return Value::Undefined(
        "the inline if-expression evaluated to false and no else section was defined");
  }

  const Dict& context_;
  const Limits& limits_;
  std::unordered_map<std::string, Value> builtins_;
  std::vector<Value> namespaces_;  // every namespace() made, emptied at the end
  Frame root_{nullptr, {}};
  std::string out_;
  int64_t steps_ = 0;
  int depth_ = 0;  // macro calls in progress
};

}  // namespace

absl::StatusOr<Template> Template::Parse(std::string_view source) {
  Body body;
  EMBER_ASSIGN_OR_RETURN(body, jinja::Parse(source));
  return Template(std::make_shared<const Body>(std::move(body)));
}

absl::StatusOr<std::string> Template::Render(const Value& context, const Limits& limits) const {
  if (!context.is_dict()) return InvalidArgumentError("the context of a render must be a dict");
  return Renderer(context.as_dict(), limits).Run(*body_);
}

}  // namespace ember::jinja

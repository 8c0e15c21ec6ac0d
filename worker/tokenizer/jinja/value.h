// The values a Jinja chat template computes with, and Python's semantics for them: truthiness,
// ==, ordering, arithmetic, str()/repr(), json.dumps and the str/dict/list methods templates
// call. Lists and dicts are immutable once built (the sandbox forbids mutation) and shared;
// namespaces are the one mutable object.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json_fwd.hpp"

namespace ember::jinja {

class Value;

// The arguments of a call, as written: f(a, b, key=c).
struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
};

// A builtin function, bound method or macro. Errors it returns are located at the call site.
using Function = std::function<absl::StatusOr<Value>(const CallArgs&)>;

// Python's dict in insertion order. Keys are hashable scalars (None, bool, int, float, str)
// and compare as Python's do: 1, 1.0 and True are one key.
class Dict {
 public:
  static bool Hashable(const Value& key);
  // Replaces the value of an existing key in place, as Python does. `key` must be Hashable.
  void Set(Value key, Value value);
  void Set(std::string key, Value value);
  const Value* Find(const Value& key) const;
  const Value* Find(std::string_view key) const;
  const std::vector<std::pair<Value, Value>>& items() const { return items_; }
  size_t size() const;  // defined below Value, which must be complete (clang)
  // Nesting depth of the values held (see Value::depth).
  int depth() const { return depth_; }

 private:
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  using Index = std::unordered_map<std::string, size_t, Hash, std::equal_to<>>;
  std::vector<std::pair<Value, Value>> items_;
  Index strings_;  // str keys
  Index others_;   // other keys, by NumberKey()'s text
  int depth_ = 1;
};

class Value {
 public:
  enum class Kind {
    kUndefined,
    kNone,
    kBool,
    kInt,
    kFloat,
    kString,
    kList,
    kDict,
    kNamespace,
    kCallable
  };

  // Undefined; `hint` is what an error on it says ("'foo' is undefined").
  Value() = default;
  static Value Undefined(std::string hint) { return Value(UndefinedData{std::move(hint)}); }
  static Value None() { return Value(std::monostate{}); }
  static Value Bool(bool b) { return Value(b); }
  static Value Int(int64_t i) { return Value(i); }
  static Value Float(double d) { return Value(d); }
  static Value String(std::string s) { return Value(std::move(s)); }
  // markupsafe's Markup, which `|safe` and `|escape` return: a string that `+` joins by
  // HTML-escaping the other, plain string (transformers turns autoescaping off, so only `+`
  // and `|escape` see the difference: output, `~`, filters and methods treat it as text).
  static Value Markup(std::string s);
  // A list; `tuple` only changes how it prints and compares ("(1, 2)").
  static Value List(std::vector<Value> items, bool tuple = false);
  static Value FromDict(Dict dict) { return Value(std::make_shared<const Dict>(std::move(dict))); }
  static Value Namespace(Dict attributes) {
    return Value(std::make_shared<NamespaceData>(NamespaceData{std::move(attributes)}));
  }
  static Value Callable(std::string name, Function fn) {
    return Value(
        std::make_shared<const CallableData>(CallableData{std::move(name), std::move(fn)}));
  }

  Kind kind() const { return static_cast<Kind>(data_.index()); }
  bool is_undefined() const { return kind() == Kind::kUndefined; }
  bool is_none() const { return kind() == Kind::kNone; }
  bool is_string() const { return kind() == Kind::kString; }
  bool is_markup() const { return markup_; }
  bool is_list() const { return kind() == Kind::kList; }
  bool is_dict() const { return kind() == Kind::kDict; }
  // int or bool: Python's bool is an int.
  bool is_integer() const { return kind() == Kind::kInt || kind() == Kind::kBool; }
  bool is_number() const { return is_integer() || kind() == Kind::kFloat; }

  const std::string& undefined_hint() const { return std::get<UndefinedData>(data_).hint; }
  bool as_bool() const { return std::get<bool>(data_); }
  int64_t as_int() const;   // int or bool
  double as_float() const;  // any number
  const std::string& as_string() const { return std::get<std::string>(data_); }
  const std::vector<Value>& as_list() const { return std::get<ListPtr>(data_)->items; }
  bool is_tuple() const { return std::get<ListPtr>(data_)->tuple; }
  const Dict& as_dict() const { return *std::get<DictPtr>(data_); }
  // The namespace's attributes; mutable through a const Value, as namespaces are shared.
  Dict& namespace_attributes() const { return std::get<NamespacePtr>(data_)->attributes; }
  const std::string& callable_name() const { return std::get<CallablePtr>(data_)->name; }
  const Function& function() const { return std::get<CallablePtr>(data_)->fn; }

  // How deeply lists and dicts nest in this value (0 for scalars, 1 for a flat list). A
  // namespace counts as 1 whatever it holds, as its attributes change after it is built.
  int depth() const;
  // Python's type name, for error messages ("str", "NoneType", ...).
  std::string_view type_name() const;

 private:
  struct UndefinedData {
    std::string hint;
  };
  struct ListData {
    std::vector<Value> items;
    bool tuple;
    int depth;
  };
  struct NamespaceData {
    Dict attributes;
  };
  struct CallableData {
    std::string name;
    Function fn;
  };
  template <typename T>
  explicit Value(T data) : data_(std::move(data)) {}

  using ListPtr = std::shared_ptr<const ListData>;
  using DictPtr = std::shared_ptr<const Dict>;
  using NamespacePtr = std::shared_ptr<NamespaceData>;
  using CallablePtr = std::shared_ptr<const CallableData>;
  // In Kind's order.
  std::variant<UndefinedData, std::monostate, bool, int64_t, double, std::string, ListPtr, DictPtr,
               NamespacePtr, CallablePtr>
      data_;
  bool markup_ = false;
};

// JSON (as received in a request) to a Value: object key order is kept and integers stay
// integers.
Value FromJson(const nlohmann::ordered_json& j);

bool Truthy(const Value& v);
// Python's ==: 1 == 1.0 == True, lists and dicts by content.
bool Equals(const Value& a, const Value& b);

// The operators that evaluate both operands ('and'/'or' short-circuit in the evaluator).
enum class BinaryOp {
  kAdd,
  kSub,
  kMul,
  kDiv,
  kFloorDiv,
  kMod,
  kPow,
  kConcat,
  kEq,
  kNe,
  kLt,
  kLe,
  kGt,
  kGe,
  kIn,
  kNotIn
};
std::string_view OperatorSymbol(BinaryOp op);
// `a op b` as Python computes it (`~` is str(a) + str(b)); a string or list longer than
// `max_bytes` bytes or items is refused before it is built (ResourceExhausted).
absl::StatusOr<Value> ApplyBinary(BinaryOp op, const Value& a, const Value& b, size_t max_bytes);
absl::StatusOr<Value> Negate(const Value& v);

// Python's str() and repr() (floats as Python prints them: 1.0, 0.1, 1e+16). They stop soon
// after the text passes `max_bytes`; callers that pass a limit refuse a longer result.
std::string Str(const Value& v, size_t max_bytes = SIZE_MAX);
std::string Repr(const Value& v, size_t max_bytes = SIZE_MAX);

// json.dumps(v, ensure_ascii=..., indent=..., separators=..., sort_keys=...).
struct JsonOptions {
  std::optional<std::string> indent;  // one level of indentation; set means multi-line
  std::string item_separator = ", ";
  std::string key_separator = ": ";
  bool sort_keys = false;
  bool ensure_ascii = false;
  size_t max_bytes = SIZE_MAX;  // a longer result is a ResourceExhausted error
};
absl::StatusOr<std::string> ToJson(const Value& v, const JsonOptions& options);

// len(): characters of a string, items of a list, keys of a dict; 0 for undefined.
absl::StatusOr<int64_t> Length(const Value& v);
// The items `for x in v` visits: a string's characters, a dict's keys; none for undefined.
absl::StatusOr<std::vector<Value>> Iterate(const Value& v);
// obj[key] as Jinja's getitem: a dict's value, a list's or string's element (negative
// indexes count from the end); undefined when there is none.
Value GetItem(const Value& obj, const Value& key);
// obj[start:stop:step] on a string or list; unset bounds are undefined or none.
absl::StatusOr<Value> Slice(const Value& obj, const Value& start, const Value& stop,
                            const Value& step);

// The str, dict and list methods templates use (strip, split, startswith, items, get, ...).
bool HasMethod(const Value& self, std::string_view name);
absl::StatusOr<Value> CallMethod(const Value& self, std::string_view name, const CallArgs& args,
                                 size_t max_bytes);

// Binds `args` to parameter `names` as Python does; returns one value per name, undefined where
// not given. Fewer than `required` given, too many positional ones or an unknown keyword is an
// InvalidArgument error naming `function`.
absl::StatusOr<std::vector<Value>> BindArguments(std::string_view function, const CallArgs& args,
                                                 const std::vector<std::string_view>& names,
                                                 size_t required = 0);

// markupsafe's escape: & < > " ' as HTML entities.
std::string HtmlEscape(std::string_view s);

// The characters (UTF-8 sequences) of `s`; a stray byte counts as one character.
std::vector<std::string_view> Characters(std::string_view s);

inline size_t Dict::size() const { return items_.size(); }

}  // namespace ember::jinja
